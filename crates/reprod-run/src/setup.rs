//! Setup steps: the requests a real service needs before load — an admin user, a login whose
//! token comes back in a cookie, a user and a fixture per key — run once the services are ready
//! and before the load clock starts, in file order. Each answer must have an expected status;
//! the values captured from it (JSON pointer, header, cookie, regex) become `{setup.NAME}` (a
//! step run once) or `{key.NAME}` (a step run per key) for later steps and the callers.
//!
//! Setup requests are recorded in the history's `setup_requests`, never as operations; a step
//! that fails stops the run before any load, naming the step, the key, the status and the start
//! of the answer.

use std::collections::HashMap;
use std::sync::Arc;

use reprod_engine::{KeySampler, SetupValues, Target};
use reprod_history::{Event, Recorder, RunClock, SetupRecord};
use reprod_scenario::{Capture, Scenario, SetupStep, Template, Var};

/// Why setup failed: a sentence naming the step, the key, the status and the answer.
pub type SetupError = String;

/// What setup did.
#[derive(Debug, Default)]
pub struct SetupDone {
    /// What it captured.
    pub values: SetupValues,
    /// Requests sent.
    pub requests: u64,
}

/// Runs every setup step of `scenario` against the first replica of its service.
pub async fn run(
    scenario: &Scenario,
    targets: &[Vec<Target>],
    clock: RunClock,
    recorder: &Recorder,
) -> Result<SetupDone, SetupError> {
    let mut done = SetupDone {
        values: key_file_values(scenario),
        requests: 0,
    };
    for step in &scenario.setup {
        let Some(target) = targets.get(step.service).and_then(|t| t.first()) else {
            return Err(format!(
                "setup step {:?}: its service has no replica",
                step.name
            ));
        };
        let pool = Arc::new(reprod_http::Pool::for_url(&target.url).await);
        match &step.for_each {
            None => {
                let captured = once(step, &pool, None, &done.values, clock, recorder).await?;
                done.requests += 1;
                done.values.once.extend(captured);
            }
            Some((keys, concurrency)) => {
                let sampler = KeySampler::new(keys);
                let all: Vec<String> = (0..sampler.count()).map(|i| keys.name(i)).collect();
                for chunk in all.chunks((*concurrency).max(1)) {
                    let mut runs = Vec::with_capacity(chunk.len());
                    for key in chunk {
                        runs.push(once(step, &pool, Some(key), &done.values, clock, recorder));
                    }
                    // A chunk's requests run at once; the next chunk waits for them.
                    let results = join_all(runs).await;
                    for (key, result) in chunk.iter().zip(results) {
                        done.requests += 1;
                        let captured = result?;
                        done.values
                            .per_key
                            .entry(key.clone())
                            .or_default()
                            .extend(captured);
                    }
                }
            }
        }
    }
    Ok(done)
}

/// The columns of every key file the callers and per-key steps use, as `{key.COLUMN}` values:
/// what setup starts from, and what captures add to.
pub fn key_file_values(scenario: &Scenario) -> SetupValues {
    let mut values = SetupValues::default();
    let key_spaces = scenario.callers.iter().map(|c| &c.keys).chain(
        scenario
            .setup
            .iter()
            .filter_map(|s| s.for_each.as_ref().map(|(k, _)| k)),
    );
    let mut seen = std::collections::HashSet::new();
    for keys in key_spaces {
        let Some(file) = &keys.file else { continue };
        if !seen.insert(Arc::as_ptr(file)) || file.columns.is_empty() {
            continue;
        }
        for (key, row) in file.keys.iter().zip(&file.values) {
            let entry = values.per_key.entry(key.clone()).or_default();
            for (column, value) in file.columns.iter().zip(row) {
                entry.insert(column.clone(), value.clone());
            }
        }
    }
    values
}

/// Awaits every future, in order, concurrently.
async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in pinned.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *output = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// One request of `step` (for `key`, in a per-key step): its captures.
async fn once(
    step: &SetupStep,
    pool: &reprod_http::Pool,
    key: Option<&str>,
    values: &SetupValues,
    clock: RunClock,
    recorder: &Recorder,
) -> Result<HashMap<String, String>, SetupError> {
    let on = |what: String| match key {
        Some(k) => format!("setup step {:?} for key {k}: {what}", step.name),
        None => format!("setup step {:?}: {what}", step.name),
    };
    let request = build(step, pool.host(), key, values).map_err(on)?;
    let sent_us = clock.now_us();
    let answer =
        tokio::time::timeout(step.timeout, pool.exchange_with(&request, false, true)).await;
    let done_us = clock.now_us();
    let (status, error) = match &answer {
        Ok(Ok(r)) => (Some(i64::from(r.status)), None),
        Ok(Err(e)) => (None, Some(format!("{e:?}"))),
        Err(_) => (None, Some(format!("no answer within {:?}", step.timeout))),
    };
    recorder
        .record(Event::Setup(Box::new(SetupRecord {
            step: step.name.clone(),
            key: key.map(str::to_string),
            sent_us,
            done_us,
            status,
            error: error.clone(),
        })))
        .await;
    let response = match answer {
        Ok(Ok(r)) => r,
        _ => return Err(on(error.unwrap_or_default())),
    };
    let body = String::from_utf8_lossy(&response.body).into_owned();
    let snippet = |b: &str| {
        let one: String = b.chars().take(200).collect::<String>().replace('\n', " ");
        if one.is_empty() {
            "(empty)".to_string()
        } else {
            one
        }
    };
    if !step.expect.status(response.status) {
        return Err(on(format!(
            "answered {} (expected {}): {}",
            response.status,
            expected(&step.expect),
            snippet(&body)
        )));
    }
    let mut captured = HashMap::new();
    for (name, capture) in &step.captures {
        let value = match capture {
            Capture::Json(pointer) => serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.pointer(pointer).cloned())
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)),
            Capture::Header(header) => response
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(header))
                .map(|(_, v)| String::from_utf8_lossy(v).trim().to_string()),
            Capture::Cookie(cookie) => response
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
                .find_map(|(_, v)| {
                    let text = String::from_utf8_lossy(v);
                    let pair = text.split(';').next()?.trim().to_string();
                    let (n, value) = pair.split_once('=')?;
                    (n.trim() == cookie).then(|| value.trim().to_string())
                }),
            Capture::Regex(re) => regex_lite::Regex::new(re).ok().and_then(|re| {
                re.captures(&body).map(|c| {
                    c.get(1)
                        .or_else(|| c.get(0))
                        .map_or_else(String::new, |m| m.as_str().to_string())
                })
            }),
        };
        let Some(value) = value else {
            let place = match capture {
                Capture::Json(p) => format!("no {p} in the JSON body"),
                Capture::Header(h) => format!("no {h} header"),
                Capture::Cookie(c) => format!("no {c} cookie set"),
                Capture::Regex(r) => format!("nothing in the body matches {r:?}"),
            };
            return Err(on(format!(
                "cannot capture {name}: {place}; the answer ({}) was: {}",
                response.status,
                snippet(&body)
            )));
        };
        captured.insert(name.clone(), value);
    }
    Ok(captured)
}

fn expected(statuses: &reprod_scenario::RetryOn) -> String {
    let mut names: Vec<String> = statuses.classes.iter().map(|c| format!("{c}xx")).collect();
    names.extend(statuses.statuses.iter().map(u16::to_string));
    names.join(" or ")
}

/// The request bytes of one setup request.
fn build(
    step: &SetupStep,
    host: &str,
    key: Option<&str>,
    values: &SetupValues,
) -> Result<Vec<u8>, String> {
    use std::fmt::Write as _;
    let mut rng = fastrand::Rng::new();
    let uuid = reprod_engine::uuid(&mut rng);
    let render = |t: &Template| -> Result<String, String> {
        t.render(|var, out| {
            match var {
                Var::Key => out.push_str(key.unwrap_or("")),
                Var::Uuid => out.push_str(&uuid),
                Var::Choice(options) => out.push_str(&options[0]),
                Var::Setup(name) => out.push_str(values.once.get(name).map_or("", String::as_str)),
                Var::KeyValue(name) => out.push_str(
                    key.and_then(|k| values.per_key.get(k))
                        .and_then(|m| m.get(name))
                        .map_or("", String::as_str),
                ),
                _ => return false,
            }
            true
        })
        .map_err(|v| format!("cannot fill {v}"))
    };
    let request = &step.request;
    let path = render(&request.path)?;
    let clean = |s: &str| !s.bytes().any(|b| b == b'\r' || b == b'\n');
    if !clean(&path) || path.contains(' ') {
        return Err(format!(
            "the rendered path {path:?} contains spaces or line breaks"
        ));
    }
    let mut out = format!("{} {path} HTTP/1.1\r\nhost: {host}\r\n", request.method);
    let mut has_content_type = false;
    for (name, value) in &request.headers {
        let value = render(value)?;
        if !clean(&value) {
            return Err(format!(
                "header {name} renders to a value with a line break"
            ));
        }
        has_content_type |= name == "content-type";
        let _ = write!(out, "{name}: {value}\r\n");
    }
    match &request.body {
        Some(body) => {
            let body = render(body)?;
            if !has_content_type {
                out.push_str("content-type: application/json\r\n");
            }
            let _ = write!(out, "content-length: {}\r\n\r\n{body}", body.len());
        }
        None => out.push_str("content-length: 0\r\n\r\n"),
    }
    Ok(out.into_bytes())
}

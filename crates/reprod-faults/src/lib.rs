//! The fault layer: what reprod stands in for or in front of while the service runs.
//!
//! Each dependency and each sink gets its own HTTP listener on a loopback port. A dependency
//! either answers from a stub or forwards to a real upstream, after a delay drawn from its
//! latency shape; a sink records every delivery and answers with a set status. Every call is
//! recorded — dependency, `traceparent`, extracted key, drawn delay, fault, status — so it joins
//! back to the attempt that caused it. Draws come from the run's seed, per endpoint and per call
//! index. This crate and the load engine do not know each other; both only emit history events.

#![deny(missing_docs)]

mod extract;
pub mod latency;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use reprod_history::{DependencyCallRecord, Event, Recorder, RunClock, SinkDeliveryRecord};
use reprod_scenario::{
    AmbiguousMode, DependencyMode, FaultKind, FaultRule, Scenario, Template, Var,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use extract::{KeyRule, extract_key};
use latency::Sampler;

/// Largest request body a dependency or sink reads.
const MAX_BODY_BYTES: usize = 1 << 20;
/// Bytes of a sink delivery body kept in the history.
const KEPT_BODY_BYTES: usize = 1024;
/// Idempotency keys a deduplicating sink remembers.
const MAX_REMEMBERED_KEYS: usize = 1_000_000;
/// Timeout of a proxied upstream exchange.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a hang (or a dropped answer) lasts at most before the connection is closed.
const MAX_HANG: Duration = Duration::from_secs(60);

/// Why the fault layer could not start.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    /// A listener could not be bound.
    #[error("cannot listen for {what} {name:?}: {source}")]
    Bind {
        /// `dependency` or `sink`.
        what: &'static str,
        /// Its name.
        name: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The running dependencies and sinks.
#[derive(Debug)]
pub struct FaultLayer {
    /// When the load started (run clock µs; `i64::MAX` until then): fault windows count from it.
    load_start_us: Arc<AtomicI64>,
    dependency_urls: BTreeMap<String, String>,
    sink_urls: BTreeMap<String, String>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl FaultLayer {
    /// Binds every dependency and sink of `scenario` and starts serving.
    pub async fn start(
        scenario: &Scenario,
        clock: RunClock,
        recorder: Recorder,
    ) -> Result<FaultLayer, FaultError> {
        let (stop, stopped) = watch::channel(false);
        let load_start_us = Arc::new(AtomicI64::new(i64::MAX));
        let mut tasks = JoinSet::new();
        let mut dependency_urls = BTreeMap::new();
        let mut sink_urls = BTreeMap::new();
        for (index, dep) in scenario.dependencies.iter().enumerate() {
            let endpoint = Arc::new(Endpoint {
                name: dep.name.clone(),
                role: Role::Dependency(dep.mode.clone()),
                buckets: dep
                    .faults
                    .iter()
                    .map(|_| Mutex::new(Bucket::default()))
                    .collect(),
                faults: dep.faults.clone(),
                sampler: dep.latency.as_ref().map(Sampler::new),
                key: dep.key.as_ref().map(KeyRule::new),
                dedupe: false,
                seen_keys: Mutex::default(),
                idempotency_header: String::new(),
                status: 200,
                seed: mix(scenario.seed, 1_000 + index as u64),
                calls: AtomicU64::new(0),
                clock,
                load_start_us: Arc::clone(&load_start_us),
                recorder: recorder.clone(),
                upstream: match &dep.mode {
                    DependencyMode::Proxy { upstream } => {
                        Some(reprod_http::Pool::for_url(upstream).await)
                    }
                    DependencyMode::Stub { .. } => None,
                },
            });
            let addr = serve(
                &mut tasks,
                Arc::clone(&endpoint),
                stopped.clone(),
                "dependency",
            )
            .await?;
            dependency_urls.insert(dep.name.clone(), format!("http://{addr}"));
        }
        for (index, sink) in scenario.sinks.iter().enumerate() {
            let endpoint = Arc::new(Endpoint {
                name: sink.name.clone(),
                role: Role::Sink,
                faults: Vec::new(),
                buckets: Vec::new(),
                sampler: sink.latency.as_ref().map(Sampler::new),
                key: sink.key.as_ref().map(KeyRule::new),
                dedupe: sink.dedupe,
                seen_keys: Mutex::default(),
                idempotency_header: sink.idempotency_header.clone(),
                status: sink.status,
                seed: mix(scenario.seed, 2_000 + index as u64),
                calls: AtomicU64::new(0),
                clock,
                load_start_us: Arc::clone(&load_start_us),
                recorder: recorder.clone(),
                upstream: None,
            });
            let addr = serve(&mut tasks, endpoint, stopped.clone(), "sink").await?;
            sink_urls.insert(sink.name.clone(), format!("http://{addr}"));
        }
        Ok(FaultLayer {
            load_start_us,
            dependency_urls,
            sink_urls,
            stop,
            tasks,
        })
    }

    /// Marks the start of the load: fault windows (`from`, `to`) count from here, and no
    /// fault applies before it (start-up, readiness probes and setup requests are left alone).
    pub fn set_load_start(&self, at_us: i64) {
        self.load_start_us.store(at_us, Ordering::Release);
    }

    /// Where dependency `name` is served.
    pub fn dependency_url(&self, name: &str) -> Option<&str> {
        self.dependency_urls.get(name).map(String::as_str)
    }

    /// Where sink `name` is served.
    pub fn sink_url(&self, name: &str) -> Option<&str> {
        self.sink_urls.get(name).map(String::as_str)
    }

    /// Stops accepting and abandons calls still in progress (they are recorded as cut short).
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        tokio::time::sleep(Duration::from_millis(10)).await;
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

#[derive(Debug)]
enum Role {
    Dependency(DependencyMode),
    Sink,
}

/// Token bucket state of a throttle rule.
#[derive(Debug, Default)]
struct Bucket {
    tokens: f64,
    last_us: Option<i64>,
}

/// The connection is closed without an answer (hyper does that when the service fails).
#[derive(Debug)]
struct CloseConnection;

impl std::fmt::Display for CloseConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection closed by a reprod fault")
    }
}

impl std::error::Error for CloseConnection {}

#[derive(Debug)]
struct Endpoint {
    name: String,
    role: Role,
    faults: Vec<FaultRule>,
    buckets: Vec<Mutex<Bucket>>,
    sampler: Option<Sampler>,
    key: Option<KeyRule>,
    /// Sinks only: answer a repeated idempotency key with the first answer.
    dedupe: bool,
    /// Idempotency keys seen (bounded), for `dedupe`.
    seen_keys: Mutex<std::collections::HashSet<String>>,
    idempotency_header: String,
    status: u16,
    seed: u64,
    calls: AtomicU64,
    clock: RunClock,
    load_start_us: Arc<AtomicI64>,
    recorder: Recorder,
    /// Pooled connections to the upstream of a proxy.
    upstream: Option<reprod_http::Pool>,
}

use reprod_scenario::seed::mix;

async fn serve(
    tasks: &mut JoinSet<()>,
    endpoint: Arc<Endpoint>,
    mut stopped: watch::Receiver<bool>,
    what: &'static str,
) -> Result<SocketAddr, FaultError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|source| FaultError::Bind {
            what,
            name: endpoint.name.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| FaultError::Bind {
        what,
        name: endpoint.name.clone(),
        source,
    })?;
    tasks.spawn(async move {
        let mut connections = JoinSet::new();
        let mut anchor = timer_anchor();
        loop {
            tokio::select! {
                _ = anchor.tick() => {}
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else {
                        // Out of file descriptors or similar: back off instead of spinning.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let endpoint = Arc::clone(&endpoint);
                    connections.spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let endpoint = Arc::clone(&endpoint);
                            async move { endpoint.handle(req).await }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .keep_alive(true)
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                _ = stopped.changed() => break,
            }
        }
        connections.abort_all();
    });
    Ok(addr)
}

/// A timer that fires every second and does nothing, so that the runtime always has a timer due
/// sooner than a call's upstream timeout. Tokio's timer wheel wakes the I/O driver (an eventfd
/// write and an extra `epoll_wait`) whenever a timer is registered earlier than every pending
/// one, which without this is every proxied call on an idle connection: measured in
/// `bench/proxy.py` as one extra `write` syscall per call.
fn timer_anchor() -> tokio::time::Interval {
    let mut anchor = tokio::time::interval(Duration::from_secs(1));
    anchor.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    anchor
}

/// Records a dependency call when dropped, so a call the service gave up on mid-delay is still
/// in the history (with no status).
struct CallGuard<'a> {
    recorder: &'a Recorder,
    clock: RunClock,
    record: Option<DependencyCallRecord>,
}

impl CallGuard<'_> {
    /// Records the call as ended now, with what the caller was sent and what was applied.
    async fn finish(&mut self, status: Option<i64>, applied_status: Option<i64>) {
        if let Some(mut record) = self.record.take() {
            record.status = status;
            record.applied_status = applied_status;
            record.done_us = self.clock.now_us();
            self.recorder
                .record(Event::DependencyCall(Box::new(record)))
                .await;
        }
    }
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            record.done_us = self.clock.now_us();
            record.fault = Some(record.fault.unwrap_or_else(|| "caller_gone".to_string()));
            self.recorder
                .try_record(Event::DependencyCall(Box::new(record)));
        }
    }
}

impl Endpoint {
    async fn handle(
        &self,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, CloseConnection> {
        let received_us = self.clock.now_us();
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let mut rng = fastrand::Rng::with_seed(mix(self.seed, n));
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let header = |name: &str| header_text(&parts.headers, name);
        let traceparent = header("traceparent");
        let path = parts.uri.path_and_query().map_or_else(
            || parts.uri.path().to_string(),
            |pq| pq.as_str().to_string(),
        );
        let key = self
            .key
            .as_ref()
            .and_then(|k| k.extract(parts.uri.path(), &parts.headers, &body));
        let delay = self
            .sampler
            .as_ref()
            .map_or(Duration::ZERO, |s| s.sample(rng.f64()));

        match &self.role {
            Role::Sink => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let kept = &body[..body.len().min(KEPT_BODY_BYTES)];
                let idempotency_key = header(&self.idempotency_header);
                let duplicate = self.dedupe
                    && idempotency_key.as_ref().is_some_and(|k| {
                        let mut seen = self.seen_keys.lock().unwrap_or_else(|p| p.into_inner());
                        // Bounded like a provider's retention window: forget all past the cap.
                        if seen.len() >= MAX_REMEMBERED_KEYS {
                            seen.clear();
                        }
                        !seen.insert(k.clone())
                    });
                self.recorder
                    .record(Event::SinkDelivery(Box::new(SinkDeliveryRecord {
                        sink: self.name.clone(),
                        traceparent,
                        key,
                        idempotency_key,
                        received_us,
                        status: i64::from(self.status),
                        duplicate,
                        headers: headers_text(&parts.headers),
                        body: String::from_utf8_lossy(kept).into_owned(),
                    })))
                    .await;
                Ok(respond(self.status, &[], Bytes::from_static(b"{}")))
            }
            Role::Dependency(mode) => {
                let decided = self.decide(&parts, key.as_deref(), received_us, &mut rng);
                let fault = decided.map(|(_, kind)| kind);
                let mut guard = CallGuard {
                    recorder: &self.recorder,
                    clock: self.clock,
                    record: Some(DependencyCallRecord {
                        dependency: self.name.clone(),
                        traceparent,
                        key: key.clone(),
                        method: parts.method.to_string(),
                        path: path.clone(),
                        received_us,
                        delay_us: delay.as_micros() as i64,
                        fault: fault.map(fault_label),
                        fault_rule: decided.map(|(index, _)| index as i64),
                        status: None,
                        applied_status: None,
                        done_us: received_us,
                    }),
                };
                // Throttling answers at once: the point of a 429 is that no work was done.
                if let Some(FaultKind::Throttle { retry_after, .. }) = fault {
                    let secs = retry_after.as_secs().max(1).to_string();
                    let response = respond(
                        429,
                        &[("retry-after".to_string(), secs)],
                        Bytes::from_static(b"{\"error\":\"throttled by reprod\"}"),
                    );
                    guard.finish(Some(429), None).await;
                    return Ok(response);
                }
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                match fault {
                    Some(FaultKind::Hang) => {
                        tokio::time::sleep(MAX_HANG).await;
                        guard.finish(None, None).await;
                        return Err(CloseConnection);
                    }
                    Some(FaultKind::Reset) => {
                        guard.finish(None, None).await;
                        return Err(CloseConnection);
                    }
                    Some(FaultKind::Error { status, body }) => {
                        guard.finish(Some(i64::from(*status)), None).await;
                        return Ok(respond(*status, &[], Bytes::from(body.clone())));
                    }
                    _ => {}
                }
                let response = match mode {
                    DependencyMode::Stub {
                        status,
                        headers,
                        body: template,
                    } => {
                        let rendered = render_stub(template, key.as_deref(), &mut rng);
                        respond(*status, headers, Bytes::from(rendered))
                    }
                    DependencyMode::Proxy { .. } => {
                        if matches!(fault, Some(FaultKind::Duplicate)) {
                            let _first = self.forward(&parts, &path, body.clone()).await;
                        }
                        self.forward(&parts, &path, body).await
                    }
                };
                let applied = Some(i64::from(response.status().as_u16()));
                match fault {
                    Some(FaultKind::Ambiguous {
                        mode: AmbiguousMode::Reset,
                    }) => {
                        guard.finish(None, applied).await;
                        Err(CloseConnection)
                    }
                    Some(FaultKind::Ambiguous {
                        mode: AmbiguousMode::Drop,
                    }) => {
                        guard.finish(None, applied).await;
                        tokio::time::sleep(MAX_HANG).await;
                        Err(CloseConnection)
                    }
                    Some(FaultKind::Ambiguous {
                        mode: AmbiguousMode::Delay(late),
                    }) => {
                        // Applied already: a caller that gives up during the wait leaves a record
                        // that says so (no status sent, applied status kept).
                        if let Some(record) = guard.record.as_mut() {
                            record.applied_status = applied;
                        }
                        tokio::time::sleep(*late).await;
                        guard.finish(applied, applied).await;
                        Ok(response)
                    }
                    _ => {
                        guard.finish(applied, applied).await;
                        Ok(response)
                    }
                }
            }
        }
    }

    /// The first fault rule that matches this call, is in its window and fires, with its index
    /// among the dependency's rules.
    fn decide(
        &self,
        parts: &hyper::http::request::Parts,
        key: Option<&str>,
        now_us: i64,
        rng: &mut fastrand::Rng,
    ) -> Option<(usize, &FaultKind)> {
        let header = |name: &str| header_text(&parts.headers, name);
        let load_start = self.load_start_us.load(Ordering::Acquire);
        if now_us < load_start {
            return None;
        }
        let load_us = now_us - load_start;
        for (index, (rule, bucket)) in self.faults.iter().zip(&self.buckets).enumerate() {
            let in_window = load_us >= rule.from.as_micros() as i64
                && rule.to.is_none_or(|to| load_us < to.as_micros() as i64);
            if !in_window
                || !rule
                    .matcher
                    .matches(parts.method.as_str(), parts.uri.path(), header, key)
            {
                continue;
            }
            if let FaultKind::Throttle {
                rate_per_s, burst, ..
            } = &rule.kind
            {
                let mut b = bucket.lock().unwrap_or_else(|p| p.into_inner());
                let elapsed_s = b.last_us.map_or(f64::from(*burst) / rate_per_s, |last| {
                    (now_us - last) as f64 / 1e6
                });
                b.tokens = (b.tokens + elapsed_s * rate_per_s).min(f64::from(*burst));
                b.last_us = Some(now_us);
                if b.tokens >= 1.0 {
                    b.tokens -= 1.0;
                    continue;
                }
            }
            if rng.f64() < rule.probability {
                return Some((index, &rule.kind));
            }
        }
        None
    }

    async fn forward(
        &self,
        parts: &hyper::http::request::Parts,
        path: &str,
        body: Bytes,
    ) -> Response<Full<Bytes>> {
        use std::io::Write as _;
        let unreachable = || {
            respond(
                502,
                &[],
                Bytes::from_static(b"{\"error\":\"upstream unreachable\"}"),
            )
        };
        let Some(pool) = &self.upstream else {
            return unreachable();
        };
        let mut request = Vec::with_capacity(256 + body.len());
        let _ = write!(
            request,
            "{} {path} HTTP/1.1\r\nhost: {}\r\n",
            parts.method,
            pool.host()
        );
        for (name, value) in &parts.headers {
            if !is_hop_by_hop(name.as_str()) {
                request.extend_from_slice(name.as_str().as_bytes());
                request.extend_from_slice(b": ");
                request.extend_from_slice(value.as_bytes());
                request.extend_from_slice(b"\r\n");
            }
        }
        let _ = write!(request, "content-length: {}\r\n\r\n", body.len());
        request.extend_from_slice(&body);
        let head_only = parts.method == hyper::Method::HEAD;
        match tokio::time::timeout(
            UPSTREAM_TIMEOUT,
            pool.exchange_with(&request, head_only, true),
        )
        .await
        {
            Ok(Ok(answer)) => {
                let mut response = Response::new(Full::new(Bytes::from(answer.body)));
                *response.status_mut() =
                    StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
                for (name, value) in &answer.headers {
                    if is_hop_by_hop(&name.to_ascii_lowercase()) {
                        continue;
                    }
                    if let (Ok(n), Ok(v)) = (
                        hyper::header::HeaderName::from_bytes(name.as_bytes()),
                        hyper::header::HeaderValue::from_bytes(value),
                    ) {
                        response.headers_mut().append(n, v);
                    }
                }
                response
            }
            _ => unreachable(),
        }
    }
}

fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "host"
            | "proxy-connection"
            | "content-length"
    )
}

fn respond(status: u16, headers: &[(String, String)], body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let h = response.headers_mut();
    h.insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(value),
        ) {
            h.insert(n, v);
        }
    }
    response
}

fn render_stub(template: &Template, key: Option<&str>, rng: &mut fastrand::Rng) -> String {
    template
        .render(|var, out| {
            match var {
                Var::Key => out.push_str(key.unwrap_or("")),
                Var::Uuid => out.push_str(&reprod_history::ids::uuid(rng.u64(..), rng.u64(..))),
                Var::Choice(options) => out.push_str(&options[rng.usize(..options.len())]),
                _ => return false,
            }
            true
        })
        .unwrap_or_default()
}

/// How a fault is named in `dependency_calls.fault`.
fn fault_label(kind: &FaultKind) -> String {
    match kind {
        FaultKind::Error { status, .. } => format!("error {status}"),
        FaultKind::Throttle { .. } => "throttle".to_string(),
        FaultKind::Hang => "hang".to_string(),
        FaultKind::Reset => "reset".to_string(),
        FaultKind::Ambiguous {
            mode: AmbiguousMode::Drop,
        } => "ambiguous drop".to_string(),
        FaultKind::Ambiguous {
            mode: AmbiguousMode::Reset,
        } => "ambiguous reset".to_string(),
        FaultKind::Ambiguous {
            mode: AmbiguousMode::Delay(_),
        } => "ambiguous delay".to_string(),
        FaultKind::Duplicate => "duplicate".to_string(),
    }
}

/// Request headers as `name: value` lines, at most 2 KiB, for the history.
fn headers_text(headers: &hyper::HeaderMap) -> String {
    let mut out = String::new();
    for (name, value) in headers {
        let line = format!("{}: {}\n", name, String::from_utf8_lossy(value.as_bytes()));
        if out.len() + line.len() > 2048 {
            break;
        }
        out.push_str(&line);
    }
    out
}

/// A header's value as text, when present and valid UTF-8.
fn header_text(headers: &hyper::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

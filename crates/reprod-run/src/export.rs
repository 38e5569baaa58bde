//! `reprod export`: a stored run in other tools' formats.
//!
//! **OTLP** (`otlp`): the run as OpenTelemetry traces in OTLP/JSON, for any trace backend
//! (Jaeger, Tempo, Honeycomb, an OpenTelemetry Collector). Each operation is a trace (its trace
//! id is the one its attempts carried in `traceparent`) with an INTERNAL root span; each
//! attempt is a CLIENT span under it with `http.request.resend_count`,
//! `http.response.status_code` and `error.type`; each dependency call and sink delivery reprod
//! recorded is a SERVER span (reprod stood in for that server) under the attempt it happened
//! during; each violation is an event on the root span of the first operation on its key.
//! Times are the run's wall-clock start (to the second) plus reprod's microsecond clock.
//!
//! The export is streamed: operations are read in chunks of [`OPS_PER_REQUEST`], each chunk one
//! `ExportTraceServiceRequest`, written one per line (the OpenTelemetry Collector's file format)
//! or POSTed to `{endpoint}/v1/traces` as OTLP/HTTP JSON.
//!
//! **HTML** (`html`): `report.html` drawn again from a run directory's `summary.json` and history.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use reprod_history::query::{ChunkQuery, Reader};
use serde_json::{Value, json};

/// Operations per `ExportTraceServiceRequest`.
pub const OPS_PER_REQUEST: i64 = 1_000;

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The directory is not a run directory.
    #[error("{0}")]
    NotARun(String),
    /// Reading the history failed.
    #[error(transparent)]
    Read(reprod_history::HistoryError),
    /// Writing the output failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The output.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The endpoint refused or could not be reached.
    #[error("sending to {endpoint}: {reason}")]
    Send {
        /// The endpoint.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
}

/// Where the OTLP goes.
#[derive(Clone, Debug)]
pub enum Destination {
    /// A file of OTLP/JSON requests, one per line.
    File(PathBuf),
    /// An OTLP/HTTP endpoint (`http://host:port`, `/v1/traces` appended).
    Endpoint(String),
}

/// What an export wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exported {
    /// Traces (operations).
    pub traces: u64,
    /// Spans, roots included.
    pub spans: u64,
    /// Requests written or sent.
    pub requests: u64,
}

fn history_of(run_dir: &Path) -> Result<PathBuf, ExportError> {
    let history = run_dir.join("history.sqlite");
    if history.is_file() {
        Ok(history)
    } else {
        Err(ExportError::NotARun(format!(
            "{} has no history.sqlite, so it is not a reprod run directory",
            run_dir.display()
        )))
    }
}

/// Exports the run in `run_dir` as OTLP traces to `to`.
pub async fn otlp(run_dir: &Path, to: &Destination) -> Result<Exported, ExportError> {
    let history = history_of(run_dir)?;
    // Reads by operation and trace id: index the history as `explain` does (best effort).
    let _ = reprod_history::read::index(&history);
    let reader = Reader::open(&history).map_err(|e| ExportError::NotARun(e.to_string()))?;
    let run = reader.run().map_err(ExportError::Read)?;
    let epoch_ns =
        u128::from(crate::time::parse_rfc3339(&run.started_at).unwrap_or(0)) * 1_000_000_000;
    let nanos = |us: i64| (epoch_ns + u128::from(us.max(0) as u64) * 1_000).to_string();
    let resource = json!({"attributes": [
        attr("service.name", json!({"stringValue": "reprod"})),
        attr("reprod.run_id", json!({"stringValue": run.run_id})),
        attr("reprod.scenario", json!({"stringValue": run.scenario})),
        attr("reprod.seed", json!({"intValue": run.seed.to_string()})),
    ]});
    let first_op_of_key = reader.violations_by_first_op().map_err(ExportError::Read)?;
    let max_op = reader.max_op_id().map_err(ExportError::Read)?;
    let mut sink = Sink::open(to)?;
    let mut exported = Exported::default();
    let mut from = 0;
    while from <= max_op {
        let to_op = from + OPS_PER_REQUEST;
        let spans = chunk(&reader, from, to_op, &nanos, &first_op_of_key)?;
        from = to_op;
        if spans.traces == 0 {
            continue;
        }
        exported.traces += spans.traces;
        exported.spans += spans.spans.len() as u64;
        let request = json!({"resourceSpans": [{
            "resource": resource,
            "scopeSpans": [{
                "scope": {"name": "reprod", "version": env!("CARGO_PKG_VERSION")},
                "spans": spans.spans,
            }],
        }]});
        sink.send(&request.to_string()).await?;
        exported.requests += 1;
    }
    sink.finish()?;
    Ok(exported)
}

fn attr(key: &str, value: Value) -> Value {
    json!({"key": key, "value": value})
}

fn string(v: &str) -> Value {
    json!({"stringValue": v})
}

fn int(v: i64) -> Value {
    json!({"intValue": v.to_string()})
}

/// A violation as a span event: (invariant, detail, when found).
type ViolationEvent = (String, String, i64);

/// Per trace id: its root span id, and its attempts as (span id, sent, done).
type TraceSpans = BTreeMap<String, (String, Vec<(String, i64, i64)>)>;

struct Chunk {
    traces: u64,
    spans: Vec<Value>,
}

/// The spans of the operations with `from <= op_id < to`.
fn chunk(
    reader: &Reader,
    from: i64,
    to: i64,
    nanos: &dyn Fn(i64) -> String,
    violations: &BTreeMap<i64, Vec<ViolationEvent>>,
) -> Result<Chunk, ExportError> {
    let mut spans = Vec::new();
    // Operations: (trace id, root span id, its attempts' (span id, sent, done)).
    let mut traces: TraceSpans = BTreeMap::new();
    reader
        .for_each_row_between(ChunkQuery::Ops, from, to, |r| {
            let op: i64 = r.get(0)?;
            let caller: String = r.get(1)?;
            let key: String = r.get(2)?;
            let intended: i64 = r.get(3)?;
            let done: i64 = r.get(5)?;
            let outcome: String = r.get(6)?;
            let trace: String = r.get(8)?;
            // The root's span id: derived from the operation, distinct from every attempt's.
            let root = format!("{:016x}", (op as u64) | (1 << 63));
            let events: Vec<Value> = violations
                .get(&op)
                .into_iter()
                .flatten()
                .map(|(invariant, detail, found)| {
                    json!({
                        "timeUnixNano": nanos(*found),
                        "name": "invariant violated",
                        "attributes": [
                            attr("reprod.invariant", string(invariant)),
                            attr("reprod.violation", string(detail)),
                        ],
                    })
                })
                .collect();
            let mut span = json!({
                "traceId": trace,
                "spanId": root,
                "name": format!("{caller} operation"),
                "kind": 1,
                "startTimeUnixNano": nanos(intended),
                "endTimeUnixNano": nanos(done.max(intended)),
                "attributes": [
                    attr("reprod.op_id", int(op)),
                    attr("reprod.caller", string(&caller)),
                    attr("reprod.key", string(&key)),
                    attr("reprod.outcome", string(&outcome)),
                    attr("reprod.attempts", int(r.get(7)?)),
                    attr("reprod.schedule_lag_us", int(r.get::<_, i64>(4)? - intended)),
                ],
                "status": match outcome.as_str() {
                    "ok" => json!({"code": 1}),
                    other => json!({"code": 2, "message": format!("operation {other}")}),
                },
            });
            if !events.is_empty() {
                span["events"] = Value::Array(events);
            }
            spans.push(span);
            traces.insert(trace, (root, Vec::new()));
            Ok(())
        })
        .map_err(ExportError::Read)?;
    let count = traces.len() as u64;
    reader
        .for_each_row_between(ChunkQuery::Attempts, from, to, |r| {
        let traceparent: String = r.get(2)?;
        let mut parts = traceparent.split('-').skip(1);
        let (Some(trace), Some(span_id)) = (parts.next(), parts.next()) else {
            return Ok(());
        };
        let Some((root, attempts)) = traces.get_mut(trace) else {
            return Ok(());
        };
        let n: i64 = r.get(1)?;
        let sent: i64 = r.get(5)?;
        let done: i64 = r.get(6)?;
        let status: Option<i64> = r.get(7)?;
        let error: Option<String> = r.get(8)?;
        attempts.push((span_id.to_string(), sent, done));
        let mut attributes = vec![
            attr("http.request.resend_count", int(n - 1)),
            attr("reprod.instance", string(&r.get::<_, String>(3)?)),
            attr("service.version", string(&r.get::<_, String>(4)?)),
        ];
        if let Some(s) = status {
            attributes.push(attr("http.response.status_code", int(s)));
        }
        if let Some(k) = r.get::<_, Option<String>>(9)? {
            attributes.push(attr("reprod.idempotency_key", string(&k)));
        }
        let failed = status.is_none_or(|s| s >= 400);
        if failed {
            let kind = match (&error, status) {
                (Some(e), _) if e.starts_with("timeout") => "timeout".to_string(),
                (Some(_), _) => "transport".to_string(),
                (None, Some(s)) => s.to_string(),
                (None, None) => "no_answer".to_string(),
            };
            attributes.push(attr("error.type", string(&kind)));
        }
        spans.push(json!({
            "traceId": trace,
            "spanId": span_id,
            "parentSpanId": root,
            "name": format!("attempt {n}"),
            "kind": 3,
            "startTimeUnixNano": nanos(sent),
            "endTimeUnixNano": nanos(done.max(sent)),
            "attributes": attributes,
            "status": if failed {
                json!({"code": 2, "message": error.unwrap_or_else(|| status.map(|s| format!("answered {s}")).unwrap_or_default())})
            } else {
                json!({"code": 0})
            },
        }));
        Ok(())
    })
    .map_err(ExportError::Read)?;
    for (query, what) in [
        (ChunkQuery::DependencyCalls, "dependency"),
        (ChunkQuery::Deliveries, "sink"),
    ] {
        reader
            .for_each_row_between(query, from, to, |r| {
                let id: i64 = r.get(0)?;
                let trace: String = r.get(1)?;
                let Some((root, attempts)) = traces.get(&trace) else {
                    return Ok(());
                };
                let name: String = r.get(2)?;
                let received: i64 = r.get(3)?;
                let done: i64 = r.get(4)?;
                let status: Option<i64> = r.get(5)?;
                // Under the attempt it happened during, else under the operation.
                let parent = attempts
                    .iter()
                    .find(|(_, sent, end)| *sent <= received && received <= *end)
                    .map_or(root.clone(), |(span, _, _)| span.clone());
                let mut attributes = vec![
                    attr(&format!("reprod.{what}"), string(&name)),
                    attr(
                        if what == "dependency" {
                            "reprod.request"
                        } else {
                            "reprod.idempotency_key"
                        },
                        string(&r.get::<_, String>(9)?),
                    ),
                    attr("reprod.injected_delay_us", int(r.get(7)?)),
                ];
                if let Some(s) = status {
                    attributes.push(attr("http.response.status_code", int(s)));
                }
                if let Some(k) = r.get::<_, Option<String>>(8)? {
                    attributes.push(attr("reprod.key", string(&k)));
                }
                if let Some(f) = r.get::<_, Option<String>>(6)? {
                    attributes.push(attr("reprod.fault", string(&f)));
                }
                let salt: u64 = if what == "dependency" {
                    1 << 62
                } else {
                    1 << 61
                };
                spans.push(json!({
                    "traceId": trace,
                    "spanId": format!("{:016x}", (id as u64) | salt),
                    "parentSpanId": parent,
                    "name": format!("{what} {name}"),
                    "kind": 2,
                    "startTimeUnixNano": nanos(received),
                    "endTimeUnixNano": nanos(done.max(received)),
                    "attributes": attributes,
                }));
                Ok(())
            })
            .map_err(ExportError::Read)?;
    }
    Ok(Chunk {
        traces: count,
        spans,
    })
}

/// Where requests go, one at a time.
enum Sink {
    File(PathBuf, std::io::BufWriter<std::fs::File>),
    Endpoint(String, reprod_http::Pool),
}

impl Sink {
    fn open(to: &Destination) -> Result<Sink, ExportError> {
        match to {
            Destination::File(path) => {
                let file = std::fs::File::create(path).map_err(|source| ExportError::Write {
                    path: path.clone(),
                    source,
                })?;
                Ok(Sink::File(path.clone(), std::io::BufWriter::new(file)))
            }
            Destination::Endpoint(url) => {
                let base = url.trim_end_matches('/').to_string();
                Ok(Sink::Endpoint(base.clone(), futures_pool(&base)))
            }
        }
    }

    async fn send(&mut self, body: &str) -> Result<(), ExportError> {
        match self {
            Sink::File(path, file) => {
                writeln!(file, "{body}").map_err(|source| ExportError::Write {
                    path: path.clone(),
                    source,
                })
            }
            Sink::Endpoint(base, pool) => {
                let request = format!(
                    "POST /v1/traces HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    pool.host(),
                    body.len()
                );
                let answer = tokio::time::timeout(
                    std::time::Duration::from_secs(30),
                    pool.exchange(request.as_bytes(), false),
                )
                .await
                .map_err(|_| ExportError::Send {
                    endpoint: base.clone(),
                    reason: "no answer within 30 s".to_string(),
                })?
                .map_err(|e| ExportError::Send {
                    endpoint: base.clone(),
                    reason: format!("{e:?}"),
                })?;
                if (200..300).contains(&answer.status) {
                    Ok(())
                } else {
                    Err(ExportError::Send {
                        endpoint: base.clone(),
                        reason: format!(
                            "answered {}: {}",
                            answer.status,
                            String::from_utf8_lossy(&answer.body[..answer.body.len().min(300)])
                        ),
                    })
                }
            }
        }
    }

    fn finish(self) -> Result<(), ExportError> {
        match self {
            Sink::File(path, mut file) => file
                .flush()
                .map_err(|source| ExportError::Write { path, source }),
            Sink::Endpoint(..) => Ok(()),
        }
    }
}

/// A connection pool for `base` (`http://host:port`); name resolution happens on first use.
fn futures_pool(base: &str) -> reprod_http::Pool {
    let authority = base.strip_prefix("http://").unwrap_or(base);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    reprod_http::Pool::new(addr, authority.to_string())
}

/// `report.html` drawn again from `run_dir`'s `summary.json` and history, written to `to`.
pub fn html(run_dir: &Path, to: &Path) -> Result<(), ExportError> {
    history_of(run_dir)?;
    let summary_path = run_dir.join("summary.json");
    let text = std::fs::read_to_string(&summary_path).map_err(|e| {
        ExportError::NotARun(format!("cannot read {}: {e}", summary_path.display()))
    })?;
    let summary: reprod_report::Summary = serde_json::from_str(&text).map_err(|e| {
        ExportError::NotARun(format!(
            "{} is not a reprod summary: {e}",
            summary_path.display()
        ))
    })?;
    let finished = crate::Finished {
        explanation: summary.explanation.clone(),
        summary,
        run_dir: run_dir.to_path_buf(),
        series: Vec::new(),
    };
    crate::session::write_whole(to, &crate::session::html(&finished)).map_err(|source| {
        ExportError::Write {
            path: to.to_path_buf(),
            source,
        }
    })
}

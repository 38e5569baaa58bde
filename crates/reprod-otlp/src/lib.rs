//! reprod's OTLP/HTTP receiver. During a run, the services reprod starts can send their
//! OpenTelemetry spans and logs here (`OTEL_EXPORTER_OTLP_ENDPOINT = "{otlp.url}"`): spans go
//! to the history's `spans`, logs to `service_logs`, beside the operations they belong to.
//!
//! Each replica's `{otlp.url}` has its own path (`/r/<service>/<replica>`), under which the
//! exporters add `/v1/traces` and `/v1/logs`: what arrives names the replica that sent it.
//! Requests are protobuf or JSON (OTLP's two HTTP encodings, decoded with the OpenTelemetry
//! project's own message types), uncompressed, at most [`MAX_BODY_BYTES`]; `/v1/metrics` is
//! accepted and dropped.

#![deny(missing_docs)]

use reprod_history::bounded;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use reprod_history::{Event, Recorder, RunClock, ServiceLogRecord, SpanRecord};
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Largest request body taken (an exporter's batch is far smaller).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Spans and log records kept per run; later ones are counted, not stored.
pub const MAX_RECORDS: u64 = 500_000;
/// Most bytes of a span's or log record's attributes kept (as JSON).
const MAX_ATTRIBUTES_BYTES: usize = 4096;
/// Longest text kept of any one value.
const MAX_VALUE_CHARS: usize = 512;

/// What the receiver took in.
#[derive(Debug, Default)]
pub struct OtlpCounts {
    /// Spans recorded.
    pub spans: AtomicU64,
    /// Log records recorded.
    pub logs: AtomicU64,
    /// Spans and log records received past [`MAX_RECORDS`], or malformed (no trace id).
    pub dropped: AtomicU64,
    /// Requests refused (not OTLP, compressed, too large), with the last reason.
    pub rejected: AtomicU64,
    /// Why the last refused request was refused.
    pub last_rejection: std::sync::Mutex<Option<String>>,
}

/// The running receiver; [`Receiver::stop`] ends it.
#[derive(Debug)]
pub struct Receiver {
    url: String,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    counts: Arc<OtlpCounts>,
}

/// What a request is about, from its path.
#[derive(Debug, PartialEq, Eq)]
enum Signal {
    Traces,
    Logs,
    Metrics,
}

struct State {
    /// Version label per (service, replica).
    versions: HashMap<(String, i64), String>,
    clock: RunClock,
    recorder: Recorder,
    counts: Arc<OtlpCounts>,
}

impl Receiver {
    /// Listens on a free loopback port. `versions` gives each (service, replica) its version
    /// label, for what a replica sends.
    pub async fn start(
        versions: HashMap<(String, i64), String>,
        clock: RunClock,
        recorder: Recorder,
    ) -> std::io::Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let counts = Arc::new(OtlpCounts::default());
        let state = Arc::new(State {
            versions,
            clock,
            recorder,
            counts: Arc::clone(&counts),
        });
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        };
                        let state = Arc::clone(&state);
                        connections.spawn(async move {
                            let service = hyper::service::service_fn(move |req| {
                                let state = Arc::clone(&state);
                                async move { Ok::<_, Infallible>(handle(&state, req).await) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
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
        Ok(Receiver {
            url: format!("http://{addr}"),
            stop,
            task,
            counts,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// What it took in so far.
    pub fn counts(&self) -> &OtlpCounts {
        &self.counts
    }

    /// Stops listening; requests in flight are cut.
    pub async fn stop(self) -> Arc<OtlpCounts> {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.counts
    }
}

/// `/v1/traces`, or `/r/<service>/<replica>/v1/traces` from a replica's `{otlp.url}`.
fn route(path: &str) -> Option<(Option<(String, i64)>, Signal)> {
    let (who, rest) = match path.strip_prefix("/r/") {
        Some(tail) => {
            let mut parts = tail.splitn(3, '/');
            let service = parts.next()?.to_string();
            let replica: i64 = parts.next()?.parse().ok()?;
            (
                Some((service, replica)),
                &tail[tail.len() - parts.next()?.len() - 1..],
            )
        }
        None => (None, path),
    };
    let signal = match rest.trim_end_matches('/') {
        "/v1/traces" => Signal::Traces,
        "/v1/logs" => Signal::Logs,
        "/v1/metrics" => Signal::Metrics,
        _ => return None,
    };
    Some((who, signal))
}

fn answer(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let refuse = |status: StatusCode, why: String| {
        state.counts.rejected.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = state.counts.last_rejection.lock() {
            *last = Some(why.clone());
        }
        answer(status, "text/plain", format!("{why}\n"))
    };
    let Some((who, signal)) = route(req.uri().path()) else {
        return refuse(
            StatusCode::NOT_FOUND,
            format!(
                "reprod's OTLP receiver serves POST /v1/traces, /v1/logs and /v1/metrics, not {}",
                req.uri().path()
            ),
        );
    };
    if req.method() != hyper::Method::POST {
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "OTLP/HTTP requests are POSTs".to_string(),
        );
    }
    let header = |name: hyper::header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase()
    };
    let encoding = header(hyper::header::CONTENT_ENCODING);
    if !encoding.is_empty() && encoding != "identity" {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "reprod's OTLP receiver takes uncompressed requests, not {encoding}: set OTEL_EXPORTER_OTLP_COMPRESSION=none"
            ),
        );
    }
    let json = header(hyper::header::CONTENT_TYPE).starts_with("application/json");
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body could not be read whole (at most {MAX_BODY_BYTES} bytes): {e}"
                ),
            );
        }
    };
    let received_us = state.clock.now_us();
    let decoded = match signal {
        Signal::Metrics => Ok(()),
        Signal::Traces => decode::<ExportTraceServiceRequest>(&body, json)
            .map(|request| spans(state, who.as_ref(), request, received_us)),
        Signal::Logs => decode::<ExportLogsServiceRequest>(&body, json)
            .map(|request| logs(state, who.as_ref(), request, received_us)),
    };
    if let Err(why) = decoded {
        return refuse(StatusCode::BAD_REQUEST, why);
    }
    if json {
        answer(StatusCode::OK, "application/json", "{}")
    } else {
        answer(StatusCode::OK, "application/x-protobuf", Bytes::new())
    }
}

fn decode<T: prost::Message + Default + serde::de::DeserializeOwned>(
    body: &[u8],
    json: bool,
) -> Result<T, String> {
    if json {
        serde_json::from_slice(body).map_err(|e| format!("not OTLP/JSON: {e}"))
    } else {
        T::decode(body).map_err(|e| format!("not OTLP protobuf: {e}"))
    }
}

/// The version label and `service.name` of what arrived from `who` with `resource`.
fn origin(
    state: &State,
    who: Option<&(String, i64)>,
    resource: &[KeyValue],
) -> (String, Option<i64>, String) {
    let attr = |name: &str| {
        resource
            .iter()
            .find(|kv| kv.key == name)
            .and_then(|kv| kv.value.as_ref())
            .map(text)
    };
    let service = attr("service.name")
        .filter(|s| !s.is_empty() && !s.starts_with("unknown_service"))
        .or_else(|| who.map(|(s, _)| s.clone()))
        .unwrap_or_else(|| "otlp".to_string());
    let version = who
        .and_then(|w| state.versions.get(w).cloned())
        .or_else(|| attr("service.version"))
        .unwrap_or_default();
    (service, who.map(|(_, r)| *r), version)
}

/// Takes one more record within [`MAX_RECORDS`], or counts it dropped.
fn within_bound(counts: &OtlpCounts) -> bool {
    let taken = counts.spans.load(Ordering::Relaxed) + counts.logs.load(Ordering::Relaxed);
    if taken >= MAX_RECORDS {
        counts.dropped.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    true
}

fn record(state: &State, event: Event, counter: &AtomicU64) {
    // Never wait: an exporter's request is answered at once, and a history that cannot take
    // the record now loses it, counted.
    if state.recorder.try_record(event) {
        counter.fetch_add(1, Ordering::Relaxed);
    } else {
        state.counts.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

fn spans(
    state: &State,
    who: Option<&(String, i64)>,
    request: ExportTraceServiceRequest,
    received_us: i64,
) {
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| r.attributes)
            .unwrap_or_default();
        let (service, replica, version) = origin(state, who, &resource);
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                if !within_bound(&state.counts) {
                    continue;
                }
                let (Some(trace_id), Some(span_id)) =
                    (id(&span.trace_id, 16), id(&span.span_id, 8))
                else {
                    state.counts.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let status = span.status.as_ref().and_then(|s| match s.code {
                    1 => Some("ok"),
                    2 => Some("error"),
                    _ => None,
                });
                let status_message = span
                    .status
                    .as_ref()
                    .map(|s| s.message.clone())
                    .filter(|m| !m.is_empty());
                let event = Event::Span(Box::new(SpanRecord {
                    service: service.clone(),
                    replica,
                    version: version.clone(),
                    trace_id,
                    span_id,
                    parent_span_id: id(&span.parent_span_id, 8),
                    name: bounded(&span.name, MAX_VALUE_CHARS),
                    kind: match span.kind {
                        1 => "internal",
                        2 => "server",
                        3 => "client",
                        4 => "producer",
                        5 => "consumer",
                        _ => "unspecified",
                    },
                    start_us: state
                        .clock
                        .from_wall_us(nanos_to_us(span.start_time_unix_nano)),
                    end_us: state
                        .clock
                        .from_wall_us(nanos_to_us(span.end_time_unix_nano)),
                    status,
                    status_message,
                    attributes: attributes(&span.attributes),
                    received_us,
                }));
                record(state, event, &state.counts.spans);
            }
        }
    }
}

fn logs(
    state: &State,
    who: Option<&(String, i64)>,
    request: ExportLogsServiceRequest,
    received_us: i64,
) {
    for resource_logs in request.resource_logs {
        let resource = resource_logs
            .resource
            .map(|r| r.attributes)
            .unwrap_or_default();
        let (service, replica, version) = origin(state, who, &resource);
        let (service, version): (Arc<str>, Arc<str>) = (service.into(), version.into());
        for scope in resource_logs.scope_logs {
            for log in scope.log_records {
                if !within_bound(&state.counts) {
                    continue;
                }
                let time = if log.time_unix_nano > 0 {
                    log.time_unix_nano
                } else {
                    log.observed_time_unix_nano
                };
                let message = log.body.as_ref().map(text).unwrap_or_default();
                let level = if log.severity_text.is_empty() {
                    severity(log.severity_number).map(str::to_string)
                } else {
                    Some(log.severity_text.clone())
                };
                let event = Event::ServiceLog(Box::new(ServiceLogRecord {
                    service: Arc::clone(&service),
                    replica: replica.unwrap_or(-1),
                    version: Arc::clone(&version),
                    received_us,
                    at_us: (time > 0)
                        .then(|| state.clock.from_wall_us(nanos_to_us(time)).min(received_us)),
                    trace_id: id(&log.trace_id, 16),
                    key: None,
                    level,
                    message: bounded(&message, MAX_VALUE_CHARS),
                    fields: attributes(&log.attributes),
                }));
                record(state, event, &state.counts.logs);
            }
        }
    }
}

/// OTLP's severity numbers, by range.
fn severity(n: i32) -> Option<&'static str> {
    Some(match n {
        1..=4 => "trace",
        5..=8 => "debug",
        9..=12 => "info",
        13..=16 => "warn",
        17..=20 => "error",
        21..=24 => "fatal",
        _ => return None,
    })
}

fn nanos_to_us(nanos: u64) -> i64 {
    (nanos / 1_000).min(i64::MAX as u64) as i64
}

/// Lowercase hex of an id of `len` bytes; `None` when it is absent, the wrong length or zero.
fn id(bytes: &[u8], len: usize) -> Option<String> {
    if bytes.len() != len || bytes.iter().all(|b| *b == 0) {
        return None;
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(len * 2);
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
    Some(out)
}

/// An attribute value as JSON.
fn json(value: &AnyValue) -> Value {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => Value::String(bounded(s, MAX_VALUE_CHARS)),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
        Some(any_value::Value::IntValue(i)) => Value::from(*i),
        Some(any_value::Value::DoubleValue(d)) => Value::from(*d),
        Some(any_value::Value::ArrayValue(a)) => Value::Array(a.values.iter().map(json).collect()),
        Some(any_value::Value::KvlistValue(kv)) => Value::Object(
            kv.values
                .iter()
                .map(|kv| (kv.key.clone(), kv.value.as_ref().map_or(Value::Null, json)))
                .collect(),
        ),
        Some(any_value::Value::BytesValue(b)) => Value::String(format!("({} bytes)", b.len())),
        Some(any_value::Value::StringValueStrindex(_)) | None => Value::Null,
    }
}

/// An attribute value as text: a string as it is, anything else as JSON.
fn text(value: &AnyValue) -> String {
    match json(value) {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

/// Attributes as a JSON object, at most [`MAX_ATTRIBUTES_BYTES`] (the rest counted in
/// `_cut`).
fn attributes(kvs: &[KeyValue]) -> String {
    let mut map = Map::new();
    let mut size = 2;
    let mut cut = 0u64;
    for kv in kvs {
        let value = kv.value.as_ref().map_or(Value::Null, json);
        let cost = kv.key.len() + value.to_string().len() + 4;
        if size + cost > MAX_ATTRIBUTES_BYTES {
            cut += 1;
            continue;
        }
        size += cost;
        map.insert(kv.key.clone(), value);
    }
    if cut > 0 {
        map.insert("_cut".to_string(), Value::from(cut));
    }
    Value::Object(map).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_name_the_replica() {
        assert_eq!(route("/v1/traces"), Some((None, Signal::Traces)));
        assert_eq!(
            route("/r/invoices/1/v1/logs"),
            Some((Some(("invoices".to_string(), 1)), Signal::Logs))
        );
        assert_eq!(
            route("/r/invoices/0/v1/metrics"),
            Some((Some(("invoices".to_string(), 0)), Signal::Metrics))
        );
        assert_eq!(route("/r/invoices/x/v1/traces"), None);
        assert_eq!(route("/r/invoices/0"), None);
        assert_eq!(route("/v2/traces"), None);
    }

    #[test]
    fn ids_are_hex_of_the_right_length() {
        assert_eq!(id(&[0xab; 8], 8).as_deref(), Some("abababababababab"));
        assert_eq!(id(&[0; 8], 8), None);
        assert_eq!(id(&[1; 7], 8), None);
        assert_eq!(severity(17), Some("error"));
    }

    #[test]
    fn attributes_are_bounded_json() {
        let kvs: Vec<KeyValue> = (0..500)
            .map(|i| KeyValue {
                key: format!("k{i}"),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue("v".repeat(40))),
                }),
                ..KeyValue::default()
            })
            .collect();
        let text = attributes(&kvs);
        assert!(text.len() <= MAX_ATTRIBUTES_BYTES + 32, "{}", text.len());
        let parsed: Value = serde_json::from_str(&text).expect("JSON");
        assert!(parsed["_cut"].as_u64().unwrap_or(0) > 0);
    }
}

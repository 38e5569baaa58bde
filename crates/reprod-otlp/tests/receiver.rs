//! The receiver over a real socket: OTLP/JSON traces (hex ids, numbers as strings, as the
//! specification writes them) and protobuf logs land in a real history; what is not OTLP is
//! refused with a reason.

use std::collections::HashMap;
use std::path::PathBuf;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;
use reprod_history::{History, RunClock, RunInfo};
use reprod_otlp::Receiver;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const TRACE_ID: &str = "5b8efff798038103d269b633813fc60c";

fn history_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("reprod-otlp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

/// POSTs `body` to `url` + `path`; the status and the body of the answer.
async fn post(url: &str, path: &str, headers: &str, body: &[u8]) -> (u16, String) {
    let addr = url.strip_prefix("http://").expect("http url");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n{headers}\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    stream.write_all(body).await.expect("write");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn json_traces_and_protobuf_logs_reach_the_history() {
    let dir = history_dir();
    let path = dir.join("history.sqlite");
    let info = RunInfo {
        run_id: "r".into(),
        scenario: "t".into(),
        scenario_path: "t.toml".into(),
        seed: 1,
        started_at: "now".into(),
        conditions: String::new(),
        params: String::new(),
        dimensions: String::new(),
        callers: String::new(),
    };
    let (history, recorder) = History::create(&path, &info).expect("history");
    let clock = RunClock::start();
    let versions = HashMap::from([(("api".to_string(), 1), "v2".to_string())]);
    let receiver = Receiver::start(versions, clock, recorder)
        .await
        .expect("listen");
    let url = receiver.url().to_string();

    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    let traces = format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"api"}}}}]}},
        "scopeSpans":[{{"spans":[{{"traceId":"{TRACE_ID}","spanId":"eee19b7ec3c1b174","parentSpanId":"eee19b7ec3c1b173",
        "name":"SELECT invoices","kind":3,"startTimeUnixNano":"{}","endTimeUnixNano":"{}",
        "status":{{"code":2,"message":"boom"}},
        "attributes":[{{"key":"db.query.text","value":{{"stringValue":"SELECT * FROM invoices"}}}},
                      {{"key":"db.response.returned_rows","value":{{"intValue":"0"}}}}]}}]}}]}}]}}"#,
        now_ns,
        now_ns + 2_000_000
    );
    let (status, body) = post(
        &url,
        "/r/api/1/v1/traces",
        "content-type: application/json\r\n",
        traces.as_bytes(),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "{}"));

    let trace_bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&TRACE_ID[i * 2..i * 2 + 2], 16).expect("hex"))
        .collect();
    let logs = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("worker".into())),
                    }),
                    ..KeyValue::default()
                }],
                ..Resource::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    time_unix_nano: now_ns,
                    severity_number: 17,
                    body: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("job 17 claimed".into())),
                    }),
                    trace_id: trace_bytes,
                    ..LogRecord::default()
                }],
                ..ScopeLogs::default()
            }],
            ..ResourceLogs::default()
        }],
    };
    let (status, _) = post(
        &url,
        "/v1/logs",
        "content-type: application/x-protobuf\r\n",
        &logs.encode_to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = post(
        &url,
        "/v1/metrics",
        "content-type: application/x-protobuf\r\n",
        b"",
    )
    .await;
    assert_eq!(status, 200, "metrics are taken and dropped");

    let (status, why) = post(
        &url,
        "/v1/traces",
        "content-type: application/x-protobuf\r\ncontent-encoding: gzip\r\n",
        b"\x1f\x8b",
    )
    .await;
    assert_eq!(status, 415);
    assert!(why.contains("OTEL_EXPORTER_OTLP_COMPRESSION=none"), "{why}");
    let (status, why) = post(
        &url,
        "/v1/traces",
        "content-type: application/json\r\n",
        b"{",
    )
    .await;
    assert_eq!(status, 400);
    assert!(why.contains("not OTLP/JSON"), "{why}");
    let (status, why) = post(&url, "/api/traces", "", b"").await;
    assert_eq!(status, 404);
    assert!(why.contains("/v1/traces"), "{why}");

    let counts = receiver.stop().await;
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(counts.spans.load(Relaxed), 1);
    assert_eq!(counts.logs.load(Relaxed), 1);
    assert_eq!(counts.rejected.load(Relaxed), 3);
    history
        .finish("completed", clock.now_us())
        .await
        .expect("finish");

    let conn = rusqlite::Connection::open(&path).expect("open");
    let span = |sql: &str| -> Vec<Option<String>> {
        conn.query_row(sql, [TRACE_ID], |r| {
            (0..4)
                .map(|i| {
                    r.get::<_, rusqlite::types::Value>(i).map(|v| match v {
                        rusqlite::types::Value::Text(t) => Some(t),
                        rusqlite::types::Value::Integer(n) => Some(n.to_string()),
                        _ => None,
                    })
                })
                .collect()
        })
        .expect("the span")
    };
    let some = |v: &[&str]| v.iter().map(|s| Some(s.to_string())).collect::<Vec<_>>();
    assert_eq!(
        span("SELECT service, replica, version, kind FROM spans WHERE trace_id = ?1"),
        some(&["api", "1", "v2", "client"])
    );
    assert_eq!(
        span(
            "SELECT status, parent_span_id, end_us - start_us,
                    json_extract(attributes, '$.\"db.query.text\"') FROM spans WHERE trace_id = ?1"
        ),
        some(&[
            "error",
            "eee19b7ec3c1b173",
            "2000",
            "SELECT * FROM invoices"
        ])
    );
    let (service, replica, level, message): (String, i64, String, String) = conn
        .query_row(
            "SELECT service, replica, level, message FROM service_logs WHERE trace_id = ?1",
            [TRACE_ID],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .expect("the log record");
    assert_eq!(
        (service.as_str(), replica, level.as_str(), message.as_str()),
        ("worker", -1, "error", "job 17 claimed")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

//! The fault layer over real sockets: stub answers and latency, every fault kind, windows and
//! matches, a proxy in front of a real upstream, sinks, and what the history records.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reprod_faults::FaultLayer;
use reprod_history::{History, RunClock, RunInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir() -> Dir {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "reprod-faults-it-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("dir");
    Dir(d)
}

/// Starts the fault layer of a scenario made of `deps` (TOML) and returns it with its history,
/// its load started.
async fn start(deps: &str) -> (FaultLayer, History, Dir, RunClock) {
    let started = start_before_load(deps).await;
    started.0.set_load_start(0);
    started
}

/// [`start`], the load not started yet.
async fn start_before_load(deps: &str) -> (FaultLayer, History, Dir, RunClock) {
    let text = format!(
        "[[service]]\nname = \"s\"\nurl = \"http://127.0.0.1:1\"\n[[caller]]\nname = \"c\"\nrequest = {{ path = \"/\" }}\nrate = 1\n{deps}"
    );
    let scenario = reprod_scenario::parse("t.toml", &text, &[]).unwrap_or_else(|e| panic!("{e}"));
    let d = dir();
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
    let (history, recorder) = History::create(&d.0.join("history.sqlite"), &info).expect("history");
    let clock = RunClock::start();
    let layer = FaultLayer::start(&scenario, clock, recorder)
        .await
        .expect("start");
    (layer, history, d, clock)
}

/// One raw HTTP/1.1 exchange on a fresh connection; `None` when the connection closed without an
/// answer, or nothing came within `within`.
async fn call(url: &str, path: &str, headers: &str, within: Duration) -> Option<(u16, String)> {
    let addr = url.strip_prefix("http://").expect("http url");
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    match tokio::time::timeout(within, stream.read_to_end(&mut buf)).await {
        Ok(Ok(_)) if !buf.is_empty() => {
            let text = String::from_utf8_lossy(&buf).into_owned();
            let status = text.split(' ').nth(1)?.parse().ok()?;
            Some((status, text))
        }
        _ => None,
    }
}

async fn rows(history: History, d: &Dir, sql: &str) -> Vec<String> {
    history.finish("completed", 0).await.expect("finish");
    let conn = rusqlite::Connection::open(d.0.join("history.sqlite")).expect("open");
    let mut stmt = conn.prepare(sql).expect("prepare");
    let n = stmt.column_count();
    stmt.query_map([], |r| {
        Ok((0..n)
            .map(|i| match r.get_ref(i).expect("cell") {
                rusqlite::types::ValueRef::Null => "NULL".to_string(),
                rusqlite::types::ValueRef::Integer(i) => i.to_string(),
                rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                other => format!("{other:?}"),
            })
            .collect::<Vec<_>>()
            .join("|"))
    })
    .expect("query")
    .collect::<Result<_, _>>()
    .expect("rows")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stub_answers_with_its_body_latency_and_key() {
    let (layer, history, d, _) = start(
        r#"
[[dependency]]
name = "usage"
stub = { status = 200, body = '{"totalCents": 4200, "account": "{key}"}' }
latency = { fixed = "30ms" }
key = { path_regex = "^/usage/([^/]+)/" }
"#,
    )
    .await;
    let url = layer.dependency_url("usage").expect("url").to_string();
    let started = std::time::Instant::now();
    let (status, text) = call(
        &url,
        "/usage/acct_7/2026-01",
        "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n",
        Duration::from_secs(5),
    )
    .await
    .expect("answer");
    assert!(started.elapsed() >= Duration::from_millis(30));
    assert_eq!(status, 200);
    assert!(
        text.ends_with(r#"{"totalCents": 4200, "account": "acct_7"}"#),
        "{text}"
    );
    layer.stop().await;
    let recorded = rows(
        history,
        &d,
        "SELECT key, delay_us, fault, status, applied_status, trace_id FROM dependency_calls",
    )
    .await;
    assert_eq!(
        recorded,
        ["acct_7|30000|NULL|200|200|0af7651916cd43dd8448eb211c80319c"]
    );
}

/// Faults are about the load: calls a service makes while it starts (readiness, warm-up, setup
/// requests) get the real answer, and fault windows count from the load's start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_fault_applies_before_the_load_starts() {
    let (layer, history, d, clock) = start_before_load(
        r#"
[[dependency]]
name = "usage"
stub = { status = 200, body = '{}' }
[[dependency.fault]]
kind = "error"
status = 503
to = "300ms"
"#,
    )
    .await;
    let url = layer.dependency_url("usage").expect("url").to_string();
    let t = Duration::from_secs(5);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        call(&url, "/u", "", t).await.map(|r| r.0),
        Some(200),
        "before the load"
    );
    layer.set_load_start(clock.now_us());
    assert_eq!(
        call(&url, "/u", "", t).await.map(|r| r.0),
        Some(503),
        "the window counts from the load's start, not the run's"
    );
    layer.stop().await;
    let recorded = rows(
        history,
        &d,
        "SELECT status FROM dependency_calls ORDER BY call_id",
    )
    .await;
    assert_eq!(recorded, ["200", "503"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_faults_follow_their_match_and_window() {
    let (layer, history, d, _) = start(
        r#"
[[dependency]]
name = "usage"
stub = { status = 200, body = '{}' }
key = { path_segment = 1 }
[[dependency.fault]]
kind = "error"
status = 503
match = { key = "acct_bad", path = "/usage/*" }
[[dependency.fault]]
kind = "error"
status = 500
from = "400ms"
"#,
    )
    .await;
    let url = layer.dependency_url("usage").expect("url").to_string();
    let t = Duration::from_secs(5);
    assert_eq!(
        call(&url, "/usage/acct_bad/1", "", t).await.map(|r| r.0),
        Some(503)
    );
    assert_eq!(
        call(&url, "/usage/acct_ok/1", "", t).await.map(|r| r.0),
        Some(200),
        "before the window"
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(
        call(&url, "/usage/acct_ok/1", "", t).await.map(|r| r.0),
        Some(500),
        "inside the window"
    );
    layer.stop().await;
    let recorded = rows(
        history,
        &d,
        "SELECT key, fault, fault_rule, status, applied_status FROM dependency_calls ORDER BY call_id",
    )
    .await;
    assert_eq!(
        recorded,
        [
            "acct_bad|error 503|0|503|NULL",
            "acct_ok|NULL|NULL|200|200",
            "acct_ok|error 500|1|500|NULL"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_a_token_bucket_with_retry_after() {
    let (layer, history, d, _) = start(
        r#"
[[dependency]]
name = "payments"
stub = { status = 200 }
[[dependency.fault]]
kind = "throttle"
rate = 2
burst = 3
retry_after = "2s"
"#,
    )
    .await;
    let url = layer.dependency_url("payments").expect("url").to_string();
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let (status, text) = call(&url, "/charge", "", Duration::from_secs(5))
            .await
            .expect("answer");
        if status == 429 {
            assert!(
                text.to_ascii_lowercase().contains("retry-after: 2"),
                "{text}"
            );
        }
        statuses.push(status);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        3,
        "the burst gets through: {statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        5,
        "{statuses:?}"
    );
    layer.stop().await;
    let throttled = rows(
        history,
        &d,
        "SELECT COUNT(*) FROM dependency_calls WHERE fault = 'throttle' AND status = 429",
    )
    .await;
    assert_eq!(throttled, ["5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_hang_and_ambiguous_outcomes_are_recorded_as_such() {
    let (layer, history, d, _) = start(
        r#"
[[dependency]]
name = "d"
stub = { status = 201, body = '{"ok": true}' }
[[dependency.fault]]
kind = "reset"
match = { path = "/reset" }
[[dependency.fault]]
kind = "hang"
match = { path = "/hang" }
[[dependency.fault]]
kind = "ambiguous"
mode = "reset"
match = { path = "/lost" }
[[dependency.fault]]
kind = "ambiguous"
mode = "delay"
delay = "300ms"
match = { path = "/late", header = "x-tenant=acme" }
"#,
    )
    .await;
    let url = layer.dependency_url("d").expect("url").to_string();
    let short = Duration::from_millis(150);
    assert_eq!(
        call(&url, "/reset", "", Duration::from_secs(5)).await,
        None,
        "closed without an answer"
    );
    assert_eq!(
        call(&url, "/hang", "", short).await,
        None,
        "no answer before the caller gives up"
    );
    assert_eq!(call(&url, "/lost", "", Duration::from_secs(5)).await, None);
    assert_eq!(
        call(&url, "/late", "x-tenant: acme\r\n", short).await,
        None,
        "too late for a 150 ms caller"
    );
    assert_eq!(
        call(&url, "/late", "x-tenant: other\r\n", short)
            .await
            .map(|r| r.0),
        Some(201),
        "header does not match"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    layer.stop().await;
    let recorded = rows(
        history,
        &d,
        "SELECT path, fault, status, applied_status FROM dependency_calls ORDER BY received_us",
    )
    .await;
    assert_eq!(
        recorded,
        [
            "/reset|reset|NULL|NULL",
            "/hang|hang|NULL|NULL",
            "/lost|ambiguous reset|NULL|201",
            "/late|ambiguous delay|NULL|201",
            "/late|NULL|201|201",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_forwards_duplicates_and_survives_a_dead_upstream() {
    let upstream = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstream_addr = upstream.local_addr().expect("addr");
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = upstream.accept().await else {
                return;
            };
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {
                            counter.fetch_add(1, Ordering::SeqCst);
                            let _ = s
                                .write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\nup")
                                .await;
                        }
                    }
                }
            });
        }
    });
    let dead = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dead_addr = dead.local_addr().expect("addr");
    drop(dead);
    let (layer, history, d, _) = start(&format!(
        r#"
[[dependency]]
name = "pay"
upstream = "http://{upstream_addr}"
[[dependency.fault]]
kind = "duplicate"
match = {{ method = "GET", path = "/twice" }}

[[dependency]]
name = "gone"
upstream = "http://{dead_addr}"
"#
    ))
    .await;
    let pay = layer.dependency_url("pay").expect("url").to_string();
    let t = Duration::from_secs(5);
    let (status, text) = call(&pay, "/once", "", t).await.expect("answer");
    assert_eq!((status, text.ends_with("up")), (202, true));
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    assert_eq!(call(&pay, "/twice", "", t).await.map(|r| r.0), Some(202));
    assert_eq!(
        seen.load(Ordering::SeqCst),
        3,
        "the duplicate reached the upstream twice"
    );
    let gone = layer.dependency_url("gone").expect("url").to_string();
    assert_eq!(
        call(&gone, "/x", "", t).await.map(|r| r.0),
        Some(502),
        "an unreachable upstream is a 502"
    );
    assert_eq!(
        call(&pay, "/once", "", t).await.map(|r| r.0),
        Some(202),
        "still serving"
    );
    layer.stop().await;
    let recorded = rows(
        history,
        &d,
        "SELECT dependency, path, fault, status FROM dependency_calls ORDER BY received_us",
    )
    .await;
    assert_eq!(
        recorded,
        [
            "pay|/once|NULL|202",
            "pay|/twice|duplicate|202",
            "gone|/x|NULL|502",
            "pay|/once|NULL|202"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_record_every_delivery_with_key_and_idempotency_key() {
    let (layer, history, d, _) = start(
        r#"
[[sink]]
name = "email"
status = 202
key = { json = "/accountId" }
dedupe = true
"#,
    )
    .await;
    let url = layer.sink_url("email").expect("url").to_string();
    let addr = url.strip_prefix("http://").expect("url");
    for idem in ["inv_1", "inv_1"] {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let body = r#"{"invoiceId": "inv_1", "accountId": "acct_3"}"#;
        let req = format!(
            "POST /emails HTTP/1.1\r\nhost: x\r\nconnection: close\r\nidempotency-key: {idem}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("read");
        assert!(out.starts_with(b"HTTP/1.1 202"));
    }
    layer.stop().await;
    let recorded = rows(
        history,
        &d,
        "SELECT sink, key, idempotency_key, status FROM sink_deliveries",
    )
    .await;
    assert_eq!(
        recorded,
        ["email|acct_3|inv_1|202", "email|acct_3|inv_1|202"]
    );
}

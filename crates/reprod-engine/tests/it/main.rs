//! The engine against a real HTTP server on a loopback port: the in-flight bound, the
//! wall-clock cut, timeouts with retries, and stopping mid-run, each read back from the history
//! the engine recorded.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reprod_engine::{Input, Live, Stats, Target};
use reprod_history::{History, RunClock, RunInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Requests the test server is answering right now, and the most it ever answered at once.
#[derive(Debug, Default)]
struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

/// A keep-alive HTTP server: `/slow` answers after 20 ms, `/hang` never answers, anything else
/// answers at once.
async fn serve() -> (String, Arc<Gauge>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let gauge = Arc::new(Gauge::default());
    let served = Arc::clone(&gauge);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let gauge = Arc::clone(&served);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&seen[..end]).into_owned();
                    seen.drain(..end + 4);
                    let path = head.split(' ').nth(1).unwrap_or("").to_string();
                    let now = gauge.now.fetch_add(1, Ordering::SeqCst) + 1;
                    gauge.max.fetch_max(now, Ordering::SeqCst);
                    match path.as_str() {
                        "/hang" => std::future::pending::<()>().await,
                        "/slow" => tokio::time::sleep(Duration::from_millis(20)).await,
                        _ => {}
                    }
                    gauge.now.fetch_sub(1, Ordering::SeqCst);
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, gauge)
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("reprod-engine-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What one engine run against the test server left.
struct Ran {
    stats: Stats,
    /// When the load started, in the history's clock.
    load_start_us: i64,
    history: PathBuf,
    gauge: Arc<Gauge>,
    _dir: TempDir,
}

/// Runs a scenario of `settings` and one caller against a fresh test server, stopping after
/// `stop_after` if given, and finishes its history.
async fn run(name: &str, settings: &str, caller: &str, stop_after: Option<Duration>) -> Ran {
    let dir = TempDir::new(name);
    let (url, gauge) = serve().await;
    let text = format!(
        "seed = 3\n{settings}\n[[service]]\nname = \"svc\"\nurl = \"{url}\"\n[[caller]]\n{caller}"
    );
    let scenario =
        reprod_scenario::parse("test.toml", &text, &[]).unwrap_or_else(|e| panic!("{e}"));
    let history = dir.0.join("history.sqlite");
    let info = RunInfo {
        run_id: "test".into(),
        scenario: scenario.name.clone(),
        scenario_path: "test.toml".into(),
        seed: scenario.seed,
        started_at: "2026-12-01T00:00:00Z".into(),
        conditions: String::new(),
        params: String::new(),
        dimensions: String::new(),
        callers: String::new(),
    };
    let (writer, recorder) = History::create(&history, &info).expect("history");
    let targets = vec![vec![Target {
        url,
        instance: "svc/0".into(),
        version: "v1".into(),
    }]];
    let (stop_tx, stop) = watch::channel(false);
    if let Some(after) = stop_after {
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = stop_tx.send(true);
        });
    }
    // The load starts a little after the clock, as it does after services start.
    let clock = RunClock::start();
    let load_start_us = clock.now_us() + 150_000;
    let stats = reprod_engine::run(Input {
        scenario: &scenario,
        targets: &targets,
        clock,
        recorder,
        live: Arc::new(Live::default()),
        stop,
        load_start_us,
        setup: Arc::default(),
    })
    .await;
    writer.finish("completed", 0).await.expect("finish");
    Ran {
        stats,
        load_start_us,
        history,
        gauge,
        _dir: dir,
    }
}

fn query(path: &Path, sql: &str) -> Vec<Vec<String>> {
    let conn = rusqlite::Connection::open(path).expect("open history");
    let mut statement = conn.prepare(sql).expect("prepare");
    let width = statement.column_count();
    statement
        .query_map([], |row| {
            (0..width)
                .map(|i| {
                    row.get::<_, rusqlite::types::Value>(i).map(|v| match v {
                        rusqlite::types::Value::Null => "null".to_string(),
                        rusqlite::types::Value::Integer(n) => n.to_string(),
                        rusqlite::types::Value::Text(t) => t,
                        other => format!("{other:?}"),
                    })
                })
                .collect()
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

fn count(path: &Path, sql: &str) -> u64 {
    query(path, sql)[0][0].parse().expect("a count")
}

/// The load clock starts when the load can start: no operation is intended before it, none is
/// sent before it, and the first ones are not released in a burst (their intended times keep the
/// schedule's spacing from the load's start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_intended_or_sent_before_the_load_starts() {
    let ran = run(
        "load-start",
        r#"duration = "300ms""#,
        r#"name = "steady"
request = { path = "/" }
rate = 100"#,
        None,
    )
    .await;
    let start = ran.load_start_us;
    let rows = query(
        &ran.history,
        "SELECT MIN(o.intended_start_us), MIN(a.sent_us), COUNT(DISTINCT o.op_id),
                MIN(a.sent_us - o.intended_start_us)
         FROM ops o JOIN attempts a USING (op_id)",
    );
    let [first_intended, first_sent, ops, min_lead]: [i64; 4] =
        [0, 1, 2, 3].map(|i| rows[0][i].parse().expect("a number"));
    assert_eq!(
        first_intended, start,
        "the first operation is intended at the load's start"
    );
    assert!(
        first_sent >= start,
        "sent {first_sent} before the load started at {start}"
    );
    assert!(min_lead >= 0, "no attempt is sent before its intended time");
    assert_eq!(ops, 30, "100/s for 300 ms");
    let spacing = query(
        &ran.history,
        "SELECT intended_start_us FROM ops ORDER BY intended_start_us LIMIT 3",
    );
    let times: Vec<i64> = spacing
        .iter()
        .map(|r| r[0].parse().expect("time"))
        .collect();
    assert_eq!(times, [start, start + 10_000, start + 20_000]);
    assert_eq!(ran.stats.first_intended_us, start);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_in_flight_never_exceed_max_in_flight() {
    // 100 operations of 20 ms at 500/s: four at a time can do 200/s, so the bound is reached
    // and operations start late rather than beside the others.
    let ran = run(
        "in-flight",
        r#"duration = "200ms"
max_in_flight = 4"#,
        r#"name = "load"
request = { path = "/slow" }
rate = 500"#,
        None,
    )
    .await;
    let (stats, history) = (&ran.stats, &ran.history);
    assert_eq!(
        ran.gauge.max.load(Ordering::SeqCst),
        4,
        "the bound is reached, never passed"
    );
    assert_eq!((stats.ops, stats.ok, stats.unsent), (100, 100, 0));
    assert!(
        stats.lag.max() >= 100_000,
        "late starts are lag: {} µs",
        stats.lag.max()
    );
    assert_eq!(
        count(history, "SELECT COUNT(*) FROM ops WHERE outcome = 'ok'"),
        100
    );
    assert_eq!(
        count(history, "SELECT COUNT(*) FROM attempts WHERE status = 200"),
        100
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_that_cannot_start_before_the_deadline_are_counted_not_sent() {
    // 100 operations of 20 ms one at a time need 2 s; the run may take 0.5 s and a second more.
    let ran = run(
        "deadline",
        r#"duration = "500ms"
max_in_flight = 1"#,
        r#"name = "load"
request = { path = "/slow" }
rate = 200"#,
        None,
    )
    .await;
    let stats = &ran.stats;
    assert!(stats.unsent > 0 && stats.ops > 0, "{stats:?}");
    assert_eq!(stats.ops + stats.unsent, 100);
    assert_eq!(count(&ran.history, "SELECT COUNT(*) FROM ops"), stats.ops);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_time_out_retry_after_backoff_and_end_ambiguous() {
    let ran = run(
        "timeouts",
        r#"duration = "100ms""#,
        r#"name = "load"
request = { path = "/hang" }
rate = 20
timeout = "50ms"
retry = { attempts = 3, backoff = "constant", base = "10ms", jitter = "none", on = ["timeout"] }"#,
        None,
    )
    .await;
    let (stats, history) = (&ran.stats, &ran.history);
    assert_eq!(
        (stats.ops, stats.ambiguous, stats.attempts, stats.retries),
        (2, 2, 6, 4)
    );
    let attempts = query(
        history,
        "SELECT op_id, n, sent_us, done_us, status, error FROM attempts ORDER BY op_id, n",
    );
    assert_eq!(attempts.len(), 6);
    for (i, a) in attempts.iter().enumerate() {
        assert_eq!(a[1], ((i % 3) + 1).to_string());
        assert_eq!(
            (a[4].as_str(), a[5].as_str()),
            ("null", "timeout after 50 ms")
        );
        let (sent, done): (i64, i64) = (a[2].parse().expect("sent"), a[3].parse().expect("done"));
        assert!(done - sent >= 50_000, "a timeout never ends early: {a:?}");
        if i % 3 > 0 {
            let previous_done: i64 = attempts[i - 1][3].parse().expect("done");
            assert!(
                sent - previous_done >= 10_000,
                "backoff between attempts: {a:?}"
            );
        }
    }
    assert_eq!(
        count(
            history,
            "SELECT COUNT(*) FROM ops WHERE outcome = 'ambiguous' AND attempts = 3"
        ),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_interrupts_attempts_in_flight_and_sends_nothing_more() {
    // Every attempt would wait 30 s for an answer that never comes; the stop ends them.
    let started = std::time::Instant::now();
    let ran = run(
        "stop",
        r#"duration = "10s""#,
        r#"name = "load"
request = { path = "/hang" }
rate = 50
timeout = "30s""#,
        Some(Duration::from_millis(300)),
    )
    .await;
    let (stats, history) = (&ran.stats, &ran.history);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the stop ended the run early"
    );
    assert!(stats.ops > 0, "{stats:?}");
    assert_eq!(
        stats.ops, stats.ambiguous,
        "an interrupted operation may have happened"
    );
    assert_eq!(stats.unsent, 0, "a stopped run counts nothing as unsent");
    assert_eq!(
        count(
            history,
            "SELECT COUNT(*) FROM attempts WHERE error = 'interrupted'"
        ),
        stats.attempts
    );
    assert_eq!(count(history, "SELECT COUNT(*) FROM ops"), stats.ops);
    assert!(ran.gauge.max.load(Ordering::SeqCst) as u64 <= stats.attempts);
}

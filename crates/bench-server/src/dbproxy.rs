//! `bench-dbproxy HOST:PORT [P50 P95 P99]`: reprod's PostgreSQL proxy on its own, as `reprod
//! run` runs it (every statement recorded to a temporary history), in front of the server at
//! HOST:PORT, so `bench/dbproxy.py` can measure it against a direct connection and PgBouncer.
//! With three durations, every statement is held a latency drawn from that percentile shape
//! (the injected-latency fidelity check). Prints `listening on PORT` and, when stdin ends, the
//! statements recorded and the injected delays' percentiles.

use reprod_dbproxy::{DbProxy, ProxyConfig};
use reprod_history::{History, RunClock, RunInfo};
use reprod_scenario::{DbFault, DbFaultKind, Latency, parse_duration};
use tokio::io::AsyncReadExt;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (upstream, faults) = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [upstream] => (upstream.to_string(), Vec::new()),
        [upstream, p50, p95, p99] => {
            let d = |s: &str| {
                parse_duration(s).unwrap_or_else(|e| {
                    eprintln!("{s}: {e}");
                    std::process::exit(2)
                })
            };
            let fault = DbFault {
                kind: DbFaultKind::Latency(Latency::Percentiles {
                    p50: d(p50),
                    p95: Some(d(p95)),
                    p99: Some(d(p99)),
                    p999: None,
                }),
                probability: 1.0,
                statement: None,
                text: None,
                key: None,
                from: std::time::Duration::ZERO,
                to: None,
            };
            (upstream.to_string(), vec![fault])
        }
        _ => {
            eprintln!("usage: bench-dbproxy HOST:PORT [P50 P95 P99]");
            std::process::exit(2);
        }
    };
    let dir = std::env::temp_dir().join(format!("bench-dbproxy-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("history.sqlite");
    let info = RunInfo {
        run_id: "bench".into(),
        scenario: "bench-dbproxy".into(),
        scenario_path: "bench-dbproxy".into(),
        seed: 1,
        started_at: String::new(),
        conditions: String::new(),
        params: String::new(),
        dimensions: String::new(),
        callers: String::new(),
    };
    let (history, recorder) = match History::create(&path, &info) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let config = ProxyConfig {
        upstream,
        key: None,
        faults,
        seed: 1,
        port: None,
    };
    let clock = RunClock::start();
    let proxy = match DbProxy::start(config, clock, recorder).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    proxy.set_load_start(0);
    println!("listening on {}", proxy.port());
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    let counts = proxy.stop().await;
    let _ = history.finish("completed", clock.now_us()).await;
    println!(
        "statements {} dropped {}",
        counts.statements.load(std::sync::atomic::Ordering::Relaxed),
        counts.dropped.load(std::sync::atomic::Ordering::Relaxed)
    );
    println!("history {}", path.display());
}

//! `bench-proxy proxy UPSTREAM_URL` or `bench-proxy stub P50 P95 P99`: reprod's fault layer on
//! its own, as `reprod run` runs it (history recorded to a temporary file), so `bench/proxy.py`
//! can measure the pass-through proxy against a direct connection and nginx, and the latency
//! fidelity of a percentile-shaped stub. Prints `listening on URL`; stops at end of stdin.

use reprod_faults::FaultLayer;
use reprod_history::{History, RunClock, RunInfo};
use tokio::io::AsyncReadExt;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dependency = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["proxy", upstream] => format!("[[dependency]]\nname = \"d\"\nupstream = \"{upstream}\"\n"),
        ["stub", p50, p95, p99] => format!(
            "[[dependency]]\nname = \"d\"\nstub = {{ status = 200, body = '{{}}' }}\nlatency = {{ p50 = \"{p50}\", p95 = \"{p95}\", p99 = \"{p99}\" }}\n"
        ),
        _ => {
            eprintln!("usage: bench-proxy proxy UPSTREAM_URL | bench-proxy stub P50 P95 P99");
            std::process::exit(2);
        }
    };
    let text = format!(
        "[[service]]\nname = \"s\"\nurl = \"http://127.0.0.1:1\"\n[[caller]]\nname = \"c\"\nrequest = {{ path = \"/\" }}\nrate = 1\n{dependency}"
    );
    let scenario = match reprod_scenario::parse("bench-proxy", &text, &[]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let dir = std::env::temp_dir().join(format!("bench-proxy-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let info = RunInfo {
        run_id: "bench".into(),
        scenario: "bench-proxy".into(),
        scenario_path: "bench-proxy".into(),
        seed: 1,
        started_at: String::new(),
        conditions: String::new(),
        params: String::new(),
        dimensions: String::new(),
        callers: String::new(),
    };
    let (history, recorder) = match History::create(&dir.join("history.sqlite"), &info) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let layer = match FaultLayer::start(&scenario, RunClock::start(), recorder).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    layer.set_load_start(0);
    println!(
        "listening on {}",
        layer.dependency_url("d").unwrap_or_default()
    );
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    layer.stop().await;
    let _ = history.finish("completed", 0).await;
    let _ = std::fs::remove_dir_all(&dir);
}

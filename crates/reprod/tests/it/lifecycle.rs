//! Services never outlive reprod: a replica dying mid-run ends the run with exit 3 naming it, a
//! Ctrl-C stops everything and keeps the history readable, and a killed reprod takes its
//! services with it.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::{TempDir, invoices, processes_mentioning, reprod, run, run_dir, scalar, text};

#[test]
fn a_service_dying_mid_run_exits_3_with_its_last_lines() {
    let dir = TempDir::new();
    let scenario = dir.write(
        "dies.toml",
        r#"
duration = "20s"
drain = "0s"

[[service]]
name = "flaky"
command = ["sh", "-c", "echo listening on http://127.0.0.1:9; sleep 1; echo 'out of memory, goodbye' >&2; exit 7"]
ready = { stdout_prefix = "listening on " }

[[caller]]
name = "api"
request = { path = "/" }
rate = 20
timeout = "200ms"
"#,
    );
    let out = dir.path().join("runs");
    let started = Instant::now();
    let output = run(&[
        "run",
        scenario.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("service flaky replica 0 exited during the run"),
        "{stderr}"
    );
    assert!(
        stderr.contains("out of memory, goodbye"),
        "the last log lines are quoted: {stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the run stopped early"
    );
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run_dir(&out).join("summary.json")).expect("summary"),
    )
    .expect("json");
    assert_eq!(summary["status"], "service_failed", "{summary}");
    assert_eq!(summary["verdict"], "incomplete", "{summary}");
    assert!(
        summary["status_reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("service flaky replica 0 exited during the run"),
        "{summary}"
    );
    assert!(
        summary["ops"]["total"].as_u64().unwrap_or(0) > 0,
        "the summary counts what the history holds: {summary}"
    );
}

/// Starts `reprod run` on the fixed invoice scenario and waits until load is running.
fn start_load(out: &std::path::Path) -> (std::process::Child, std::path::PathBuf) {
    let scenario = invoices();
    let mut child = reprod(&[
        "run",
        scenario.to_str().expect("utf-8"),
        "--set",
        "variant=fixed",
        "--duration",
        "30s",
        "--out",
        out.to_str().expect("utf-8"),
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn reprod");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = lines.next().expect("reprod said something").expect("line");
        if line.contains("reprod: load for up to") {
            break;
        }
        assert!(Instant::now() < deadline, "load never started");
    }
    std::thread::spawn(move || for _ in lines {});
    std::thread::sleep(Duration::from_millis(1500));
    (child, run_dir(out))
}

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

fn wait_gone(needle: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_mentioning(needle);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Ctrl-C (and SIGTERM) mid-load: exit 3, every service stopped, the history kept, and a summary
/// that counts what the history holds, checks what it can, and never says pass.
#[test]
fn ctrl_c_stops_services_and_keeps_the_history() {
    for sig in ["-INT", "-TERM"] {
        interrupted_run(sig);
    }
}

fn interrupted_run(sig: &str) {
    let dir = TempDir::new();
    let out = dir.path().join("runs");
    let (mut child, run_dir) = start_load(&out);
    let needle = run_dir.display().to_string();
    assert!(
        !processes_mentioning(&needle).is_empty(),
        "services run during the load"
    );
    signal(child.id(), sig);
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(3), "{sig}");
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run_dir.join("summary.json")).expect("summary"),
    )
    .expect("json");
    assert_eq!(summary["status"], "interrupted", "{summary}");
    assert_eq!(summary["verdict"], "incomplete", "{summary}");
    let ops = summary["ops"]["total"].as_i64().unwrap_or(0);
    assert!(ops > 0, "{summary}");
    assert_eq!(
        ops,
        scalar(&run_dir.join("history.sqlite"), "SELECT COUNT(*) FROM ops"),
        "the summary counts what the history holds"
    );
    let invariants = summary["invariants"].as_array().expect("invariants");
    assert_eq!(
        invariants.len(),
        2,
        "checked on what the run left: {summary}"
    );
    assert!(invariants.iter().all(|i| i["partial"] == true), "{summary}");
    let report = std::fs::read_to_string(run_dir.join("report.txt")).expect("report");
    assert!(
        report.contains("verdict: INCOMPLETE") && !report.contains("PASS"),
        "{report}"
    );
    let explained = crate::support::run(&["explain", run_dir.to_str().expect("utf-8")]);
    let explained = text(&explained.stdout);
    assert!(
        !explained.contains("no invariant was violated") && explained.contains("that is no pass"),
        "{explained}"
    );
    assert_eq!(
        wait_gone(&needle),
        Vec::<String>::new(),
        "services outlived the run"
    );
    let history = run_dir.join("history.sqlite");
    assert_eq!(
        scalar(
            &history,
            "SELECT COUNT(*) FROM run WHERE status = 'interrupted'"
        ),
        1
    );
    assert!(
        scalar(&history, "SELECT COUNT(*) FROM ops") > 0,
        "what was recorded stays"
    );
    assert!(
        scalar(
            &history,
            "SELECT COUNT(*) FROM service_events WHERE event = 'stopped'"
        ) == 2
    );
}

#[test]
fn services_die_with_a_killed_reprod() {
    let dir = TempDir::new();
    let out = dir.path().join("runs");
    let (mut child, run_dir) = start_load(&out);
    let needle = run_dir.display().to_string();
    assert_eq!(processes_mentioning(&needle).len(), 2, "two replicas run");
    signal(child.id(), "-KILL");
    let _ = child.wait();
    assert_eq!(
        wait_gone(&needle),
        Vec::<String>::new(),
        "services outlived a killed reprod"
    );
    // Even a killed run leaves a readable history of what it committed.
    assert!(scalar(&run_dir.join("history.sqlite"), "SELECT COUNT(*) FROM ops") > 0);
}

#[test]
fn ports_hands_each_replica_its_own_port_from_the_range() {
    // A service whose ports must be known in advance (a firewall rule, a proxy's upstream list):
    // `{port}` comes from `ports`, one free port per replica.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let low = probe.local_addr().expect("addr").port().min(65000);
    drop(probe);
    let high = low + 30;
    let dir = TempDir::new();
    let scenario = dir.write(
        "ports.toml",
        &format!(
            r#"
duration = "1s"
drain = "0s"

[[service]]
name = "files"
command = ["python3", "-m", "http.server", "{{port}}", "--bind", "127.0.0.1"]
replicas = 3
ports = "{low}-{high}"
ready = {{ path = "/", timeout = "20s" }}

[[caller]]
name = "readers"
request = {{ path = "/" }}
rate = 10
"#
        ),
    );
    let out = dir.path().join("runs");
    let output = run(&[
        "run",
        scenario.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let conn = rusqlite::Connection::open(run_dir(&out).join("history.sqlite")).expect("history");
    let mut ports: Vec<u16> = conn
        .prepare("SELECT detail FROM service_events WHERE event = 'ready' ORDER BY replica")
        .expect("query")
        .query_map([], |r| r.get::<_, String>(0))
        .expect("rows")
        .map(|url| {
            let url = url.expect("row");
            url.rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .expect("a port")
        })
        .collect();
    assert_eq!(ports.len(), 3, "{ports:?}");
    assert!(
        ports.iter().all(|p| (low..=high).contains(p)),
        "{ports:?} within {low}-{high}"
    );
    ports.dedup();
    assert_eq!(ports.len(), 3, "one port per replica: {ports:?}");
}

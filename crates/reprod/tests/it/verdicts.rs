//! Verdicts that never lie: every way a run can fail to test what it seems to — a start-up
//! failure, a full disk, a caller the service refuses, a caller that starts after the load, no
//! operation at all, a condition named that is not on, a service that prints garbage, a closed
//! stdout — ends with the verdict and exit code that say so.

use std::process::Stdio;

use serde_json::Value;

use crate::support::{TempDir, invoices, run, run_json, text};

fn warnings(summary: &Value) -> Vec<(String, String)> {
    summary["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .map(|w| {
            (
                w["kind"].as_str().unwrap_or_default().to_string(),
                w["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// A service that never becomes ready: nothing ran, and the report never says PASS.
#[test]
fn a_start_up_failure_is_incomplete_never_pass() {
    let dir = TempDir::new();
    let scenario = dir.write(
        "never-ready.toml",
        r#"
duration = "2s"
[[service]]
name = "broken"
command = ["sh", "-c", "echo 'config error: no such table' >&2; exit 4"]
ready = { stdout_prefix = "listening on " }
[[caller]]
name = "api"
request = { path = "/" }
rate = 10
[[invariant]]
name = "no 5xx"
no_status = ["5xx"]
"#,
    );
    let out = dir.path().join("runs");
    let (code, summary, stderr) = run_json("run", &scenario, &out, &[]);
    assert_eq!(code, Some(3), "{stderr}");
    assert_eq!(summary["status"], "start_failed", "{summary}");
    assert_eq!(summary["verdict"], "incomplete");
    assert!(
        summary["status_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("did not become ready"),
        "{summary}"
    );
    let inv = &summary["invariants"][0];
    assert!(
        inv["error"]
            .as_str()
            .unwrap_or_default()
            .contains("the load never started"),
        "{inv}"
    );
    let report =
        std::fs::read_to_string(crate::support::run_dir(&out).join("report.txt")).expect("report");
    assert!(!report.contains("PASS"), "{report}");
    assert!(
        report.starts_with("reprod run") && report.contains("verdict: INCOMPLETE"),
        "{report}"
    );
    assert!(
        report.contains("latency     - (no operation was sent)") && !report.contains("p50 0.0"),
        "no latency is shown as zeros: {report}"
    );
}

/// A caller whose every request the service refuses (400) exercises nothing: the run says so
/// in its first lines, with the status and the start of the answer.
#[test]
fn a_caller_whose_requests_all_fail_is_flagged() {
    let dir = TempDir::new();
    let mut toml = std::fs::read_to_string(invoices()).expect("scenario");
    toml = toml.replace(
        r#"body = '{"account_id": "{key}", "period": "{param.period}"}'"#,
        r#"body = '{"account_id": "{key}", "period": "January"}'"#,
    );
    let scenario = dir.write("refused.toml", &toml);
    let out = dir.path().join("runs");
    let (code, summary, stderr) = run_json(
        "run",
        &scenario,
        &out,
        &["--set", "variant=fixed", "--duration", "2s"],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let found = warnings(&summary);
    let api = found
        .iter()
        .find(|(kind, m)| kind == "caller_failing" && m.contains("caller api"))
        .unwrap_or_else(|| panic!("no warning for the refused caller: {found:?}"));
    assert!(
        api.1.contains("answered 400") && api.1.contains("period"),
        "{api:?}"
    );
    let report =
        std::fs::read_to_string(crate::support::run_dir(&out).join("report.txt")).expect("report");
    let head: Vec<&str> = report.lines().take(8).collect();
    assert!(
        head.iter()
            .any(|l| l.starts_with("warning:") && l.contains("caller api")),
        "{report}"
    );
}

/// A batch that starts after the load ends sends nothing; alone, the run sent no operation and
/// cannot pass.
#[test]
fn a_run_that_sends_nothing_is_incomplete() {
    let dir = TempDir::new();
    let scenario = dir.write(
        "late.toml",
        r#"
duration = "1s"
drain = "0s"
[[service]]
name = "api"
command = ["bench-server"]
ready = { stdout_prefix = "listening on " }
[[caller]]
name = "nightly"
request = { path = "/" }
arrival = "batch"
at = "5s"
keys = { count = 10 }
"#,
    );
    let (code, summary, stderr) = run_json("run", &scenario, &dir.path().join("runs"), &[]);
    assert_eq!(code, Some(3), "{stderr}");
    assert_eq!(summary["status"], "completed");
    assert_eq!(summary["verdict"], "incomplete");
    assert_eq!(summary["ops"]["total"], 0);
    let kinds: Vec<String> = warnings(&summary).into_iter().map(|w| w.0).collect();
    assert!(
        kinds.contains(&"caller_after_load".to_string()),
        "{kinds:?}"
    );
    assert!(kinds.contains(&"no_operations".to_string()), "{kinds:?}");
}

#[test]
fn flags_that_would_make_a_vacuous_run_exit_2() {
    let scenario = invoices();
    let s = scenario.to_str().expect("utf-8");
    for (args, needle) in [
        (
            vec!["run", s, "--only", "queue_delay"],
            "does not switch queue_delay on",
        ),
        (
            vec!["run", s, "--without", "mixed_versions"],
            "its active conditions are: overlap, slow_dependency, retries, hot_keys, instances",
        ),
        (
            vec!["run", s, "--duration", "0s"],
            "more than 0 and at most 24h",
        ),
        (
            vec!["run", s, "--duration", "25h"],
            "more than 0 and at most 24h",
        ),
        (vec!["isolate", s, "--trials", "0"], "--trials"),
        (
            vec!["isolate", s, "--duration", "500ms"],
            "shorter than caller worker's start (1s)",
        ),
    ] {
        let output = run(&args);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

/// A service whose output is not UTF-8 and has a 10 MB line still starts, runs and is read
/// to the end: the pipe is always drained, long lines are cut where reprod reads them.
#[test]
fn a_service_printing_garbage_and_huge_lines_is_never_blocked() {
    let dir = TempDir::new();
    dir.write(
        "noisy.py",
        r#"
import http.server, sys
sys.stdout.buffer.write(b"\xff\xfe not utf-8 \xc3\x28\n")
sys.stdout.buffer.write(b"x" * 10_000_000 + b"\n")
sys.stdout.flush()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        sys.stderr.buffer.write(b"\xff" * 70_000 + b"\n")
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(f"listening on http://127.0.0.1:{server.server_port}", flush=True)
server.serve_forever()
"#,
    );
    let scenario = dir.write(
        "noisy.toml",
        r#"
duration = "1s"
drain = "0s"
[[service]]
name = "noisy"
command = ["python3", "{run_dir}/../../noisy.py"]
ready = { stdout_prefix = "listening on ", timeout = "20s" }
[[caller]]
name = "api"
request = { path = "/" }
rate = 20
[[invariant]]
name = "no 5xx"
no_status = ["5xx"]
"#,
    );
    let out = dir.path().join("runs");
    let (code, summary, stderr) = run_json("run", &scenario, &out, &[]);
    assert_eq!(code, Some(0), "{stderr}\n{summary}");
    assert!(
        summary["ops"]["ok"].as_u64().unwrap_or(0) >= 15,
        "{summary}"
    );
    let kinds: Vec<String> = warnings(&summary).into_iter().map(|w| w.0).collect();
    assert!(
        kinds.contains(&"service_output_cut".to_string()),
        "{kinds:?}"
    );
    let log = crate::support::run_dir(&out).join("services/noisy-0.log");
    let size = std::fs::metadata(&log).expect("log").len();
    assert!(size > 10_000_000, "the log keeps every byte: {size}");
}

/// Output to a closed stdout, a full stdout or a closed stderr never panics, and the exit code
/// is still the run's.
#[test]
fn closed_or_full_output_keeps_the_exit_code() {
    let dir = TempDir::new();
    let out = dir.path().join("runs");
    let scenario = invoices();
    let exe = env!("CARGO_BIN_EXE_reprod");
    for redirect in [">&-", "> /dev/full", "2>&- >&-", "2> /dev/full"] {
        let command = format!(
            "exec '{exe}' run '{}' --set variant=fixed --duration 1s --json --out '{}' {redirect}",
            scenario.display(),
            out.display()
        );
        let output = std::process::Command::new("sh")
            .args(["-c", &command])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("sh");
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{redirect}: {stderr}");
        assert!(!stderr.contains("panicked"), "{redirect}: {stderr}");
    }
}

/// Unmounts a tmpfs when dropped.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A full disk during the run (a 600 KB tmpfs as `--out`): the history cannot be written, the
/// run stops and says so (`history_failed`, exit 3), and the invariants judged from the history
/// are reported unchecked, never held.
#[test]
fn a_full_disk_ends_the_run_as_history_failed() {
    let dir = TempDir::new();
    let mount = dir.path().join("tiny");
    std::fs::create_dir_all(&mount).expect("dir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=600k", "tmpfs"])
        .arg(&mount)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED (full disk): cannot mount a tmpfs here (needs root)");
        if std::env::var_os("REPROD_CI").is_some() {
            panic!("REPROD_CI is set, so the full-disk test must run: mount a tmpfs as root");
        }
        return;
    }
    let _unmount = Mount(mount.clone());
    let scenario = dir.write(
        "fast.toml",
        r#"
duration = "20s"
drain = "0s"
max_ops = 200000
[[service]]
name = "api"
command = ["bench-server"]
ready = { stdout_prefix = "listening on " }
[[sink]]
name = "email"
[[caller]]
name = "api"
request = { path = "/" }
rate = 3000
[[invariant]]
name = "one email per key"
sink = "email"
rule = "at_most_once"
"#,
    );
    let (code, summary, stderr) = run_json("run", &scenario, &mount, &[]);
    assert_eq!(code, Some(3), "{stderr}\n{summary}");
    assert_eq!(summary["status"], "history_failed", "{summary}");
    assert_eq!(summary["verdict"], "incomplete");
    let inv = &summary["invariants"][0];
    assert_eq!(inv["held"], false, "never held on a lost history: {inv}");
    assert!(
        inv["error"]
            .as_str()
            .unwrap_or_default()
            .contains("history could not be written"),
        "{inv}"
    );
    assert!(
        stderr.contains("full"),
        "the reason names the disk: {stderr}"
    );
    let run_dir = crate::support::run_dir(&mount);
    assert!(
        std::fs::metadata(run_dir.join("summary.json")).map_or(true, |m| m.len() > 0),
        "never an empty summary.json"
    );
}

/// Isolate's trials run the scenario's own duration unless told otherwise: a caller that starts
/// 3 s into a 4 s load is reached (the old 2 s default sent nothing and called it "never
/// reproduced"), and the trial counts.
#[test]
fn isolate_trials_run_the_scenarios_own_duration() {
    let dir = TempDir::new();
    let scenario = dir.write(
        "late-start.toml",
        r#"
duration = "4s"
drain = "0s"
[[service]]
name = "api"
command = ["bench-server"]
ready = { stdout_prefix = "listening on " }
[[caller]]
name = "late"
request = { path = "/" }
rate = 20
start = "3s"
[[invariant]]
name = "no 5xx"
no_status = ["5xx"]
"#,
    );
    let (code, json, stderr) = run_json(
        "isolate",
        &scenario,
        &dir.path().join("runs"),
        &["--trials", "1"],
    );
    assert_eq!(code, Some(1), "{stderr}\n{json}");
    assert!(
        stderr.contains("the baseline never reproduced in 1 trial(s)"),
        "{stderr}"
    );
    assert_eq!(json["baseline"]["trials"], 1, "{json}");
    assert_eq!(json["baseline"]["incomplete"], 0, "{json}");
    assert_eq!(json["incomplete_trials"].as_array().map(Vec::len), Some(0));
}

/// A caller says which statuses mean success: a login that answers 302 succeeds with
/// `ok = ["2xx", 302]`, and without it every operation failed and nothing was tested. Its form
/// body is built with the |url filter from a secret parameter, which no report shows.
#[test]
fn a_redirect_counts_as_success_when_the_caller_says_so() {
    let dir = TempDir::new();
    dir.write(
        "redirects.py",
        r#"
import http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        print("got", body.decode(), self.headers.get("content-type"), flush=True)
        self.send_response(302)
        self.send_header("location", "/home")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(f"listening on http://127.0.0.1:{server.server_port}", flush=True)
server.serve_forever()
"#,
    );
    let scenario = |ok: &str| {
        format!(
            r#"
duration = "1s"
drain = "0s"
[[service]]
name = "web"
# cwd is relative to this file: the script sits beside it.
command = ["python3", "redirects.py"]
cwd = "."
ready = {{ stdout_prefix = "listening on ", timeout = "20s" }}
[params]
password = {{ default = "p@ss word&1", secret = true }}
[[caller]]
name = "login"
request = {{ method = "POST", path = "/login", body = "user={{key|url}}&password={{param.password|url}}", headers = {{ content-type = "application/x-www-form-urlencoded" }} }}
rate = 20
{ok}
"#
        )
    };
    let with = dir.write("with-ok.toml", &scenario(r#"ok = ["2xx", 302]"#));
    let (code, summary, stderr) = run_json("run", &with, &dir.path().join("with"), &[]);
    assert_eq!(code, Some(0), "{stderr}\n{summary}");
    assert_eq!(summary["ops"]["ok"], summary["ops"]["total"], "{summary}");
    // The form body was encoded by the |url filter.
    let log = std::fs::read_to_string(
        crate::support::run_dir(&dir.path().join("with")).join("services/web-0.log"),
    )
    .expect("log");
    assert!(
        log.contains("&password=p%40ss%20word%261 application/x-www-form-urlencoded"),
        "{log}"
    );
    // ... while the secret is shown nowhere reprod writes it.
    assert_eq!(summary["params"]["password"], "…", "{summary}");
    let run = crate::support::run_dir(&dir.path().join("with"));
    for file in ["summary.json", "report.txt", "report.html", "junit.xml"] {
        let text = std::fs::read_to_string(run.join(file)).expect(file);
        assert!(
            !text.contains("p@ss") && !text.contains("p%40ss"),
            "{file} shows the secret"
        );
    }
    let conn = rusqlite::Connection::open(run.join("history.sqlite")).expect("history");
    let params: String = conn
        .query_row("SELECT params FROM run", [], |r| r.get(0))
        .expect("params");
    assert_eq!(params, "password=…");
    let without = dir.write("without-ok.toml", &scenario(""));
    let (code, summary, stderr) = run_json("run", &without, &dir.path().join("without"), &[]);
    assert_eq!(code, Some(3), "{stderr}\n{summary}");
    assert_eq!(summary["ops"]["ok"], 0);
    let found = warnings(&summary);
    assert!(
        found
            .iter()
            .any(|(k, m)| k == "caller_failing" && m.contains("answered 302")),
        "{found:?}"
    );
}

/// A service configured by parts gets them: `{database.name}`, `{database.path}` and friends
/// from the scenario's database URL, in its env; and a readiness line that does not start with
/// the URL is read with a regular expression.
#[test]
fn services_get_the_database_url_in_parts() {
    let dir = TempDir::new();
    dir.write(
        "by_parts.py",
        r#"
import http.server, os, sys
print("db parts:", os.environ["DB_NAME"], os.environ["DB_PATH"], os.environ["DB_URL"], flush=True)
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(f"2026-12-02 17:00:01 INFO web: listening on http://127.0.0.1:{server.server_port}", flush=True)
server.serve_forever()
"#,
    );
    let scenario = dir.write(
        "parts.toml",
        r#"
duration = "500ms"
drain = "0s"
[database]
url = "sqlite:{run_dir}/shop.db"
[[service]]
name = "web"
command = ["python3", "by_parts.py"]
cwd = "."
env = { DB_NAME = "{database.name}", DB_PATH = "{database.path}", DB_URL = "sqlite:///{database.path}" }
# Once, before any replica starts: the migration, with the same env and cwd.
prepare = ["python3", "-c", "import os, sqlite3; c = sqlite3.connect(os.environ['DB_PATH']); c.execute('CREATE TABLE orders (id INTEGER)'); c.commit(); print('migrated', os.getcwd())"]
# The readiness line starts with a timestamp: a regular expression finds the URL in it.
ready = { stdout = 'INFO web: listening on (http://\S+)', timeout = "20s" }
[[caller]]
name = "c"
request = { path = "/" }
rate = 10
"#,
    );
    let out = dir.path().join("runs");
    let (code, summary, stderr) = run_json("run", &scenario, &out, &[]);
    assert_eq!(code, Some(0), "{stderr}\n{summary}");
    let run = crate::support::run_dir(&out);
    let log = std::fs::read_to_string(run.join("services/web-0.log")).expect("log");
    let db = run.join("shop.db").display().to_string();
    assert!(
        log.contains(&format!("db parts: shop {db} sqlite:///{db}")),
        "{log}"
    );
    let prepared =
        std::fs::read_to_string(run.join("services/web-prepare.log")).expect("prepare log");
    assert!(
        prepared.contains(&format!(
            "migrated {}",
            dir.path().canonicalize().expect("dir").display()
        )),
        "prepare ran in the service's cwd: {prepared}"
    );
    assert_eq!(
        crate::support::scalar(
            &run.join("history.sqlite"),
            "SELECT COUNT(*) FROM service_events WHERE event = 'prepared'"
        ),
        1
    );
    let db = rusqlite::Connection::open(run.join("shop.db")).expect("db");
    let tables: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'orders'",
            [],
            |r| r.get(0),
        )
        .expect("query");
    assert_eq!(tables, 1, "the migration made its table");
}

/// A failing `prepare` stops the run before any replica starts, quoting its output.
#[test]
fn a_failing_prepare_is_a_start_failure_that_quotes_it() {
    let dir = TempDir::new();
    let scenario = dir.write(
        "bad-migration.toml",
        r#"
duration = "1s"
[[service]]
name = "app"
command = ["bench-server"]
prepare = ["sh", "-c", "echo 'migration 0003 failed: column exists' >&2; exit 2"]
ready = { stdout_prefix = "listening on " }
[[caller]]
name = "c"
request = { path = "/" }
rate = 10
"#,
    );
    let (code, summary, stderr) = run_json("run", &scenario, &dir.path().join("runs"), &[]);
    assert_eq!(code, Some(3), "{stderr}");
    assert_eq!(summary["status"], "start_failed");
    let reason = summary["status_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("prepare command failed: it exited exit status: 2")
            && reason.contains("migration 0003 failed"),
        "{reason}"
    );
    assert_eq!(summary["ops"]["total"], 0);
}

/// `--stop-at-violation` ends the load at the first violation a mid-run check finds: the
/// verdict is fail, the status says why the load was cut, and held invariants are partial. A
/// run that finds nothing runs to the end and passes; a scenario with no mid-run check is
/// refused with what to write.
#[test]
fn stop_at_violation_cuts_the_load_at_the_first_violation() {
    let out = TempDir::new();
    let (code, json, stderr) = run_json(
        "run",
        &invoices(),
        out.path(),
        &["--set", "variant=naive", "--stop-at-violation"],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(json["verdict"], "fail", "{json}");
    assert_eq!(json["status"], "stopped_at_violation", "{json}");
    let reason = json["status_reason"].as_str().expect("status_reason");
    assert!(
        reason.contains("\"one invoice per account and period\" violated"),
        "{reason}"
    );
    let planned = 6.0;
    let duration = json["duration_s"].as_f64().expect("duration_s");
    assert!(duration < planned, "stopped before the 6 s of load: {json}");
    assert!(
        !stderr.contains("did not complete"),
        "stopping as asked is no problem: {stderr}"
    );

    let (code, json, stderr) = run_json(
        "run",
        &invoices(),
        out.path(),
        &[
            "--set",
            "variant=fixed",
            "--stop-at-violation",
            "--duration",
            "2s",
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(json["status"], "completed", "{json}");

    let shortener = crate::support::root().join("scenarios/examples/shortener/shortener.toml");
    let output = run(&[
        "run",
        shortener.to_str().expect("utf-8"),
        "--stop-at-violation",
    ]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("every = \"1s\""), "{stderr}");
}

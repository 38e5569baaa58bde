//! A service reprod does not start (`url`), backed by a SQLite file that outlives every run: the
//! test starts it itself, as a user's already-running service. Without a reset, a second run
//! finds the first run's duplicates before its load and says so; with `reset_sql` or a `reset`
//! command each run (and each isolate trial) starts from a clean table.

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::support::{TempDir, run_json};

/// A find-then-insert race on `orders`, in Python's standard library: nothing shared with reprod.
const ORDERS: &str = r#"
import http.server, sqlite3, sys, time
DB = sys.argv[1]
db = sqlite3.connect(DB)
db.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL)")
db.commit()
db.close()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_POST(self):
        customer = self.path.rsplit("/", 1)[-1]
        db = sqlite3.connect(DB, timeout=10)
        found = db.execute("SELECT id FROM orders WHERE customer = ?", (customer,)).fetchone()
        if found is None:
            time.sleep(0.005)
            db.execute("INSERT INTO orders (customer) VALUES (?)", (customer,))
            db.commit()
        db.close()
        self.send_response(201 if found is None else 200)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(f"http://127.0.0.1:{server.server_port}", flush=True)
server.serve_forever()
"#;

/// The service, stopped on drop.
struct Running {
    child: Child,
    url: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_orders(dir: &TempDir, db: &Path) -> Running {
    let script = dir.write("orders.py", ORDERS);
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(db)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is needed for this test");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the service prints its URL");
    Running {
        child,
        url: line.trim().to_string(),
    }
}

fn scenario(url: &str, db: &Path, reset: &str) -> String {
    format!(
        r#"
name = "orders"
duration = "1s"
drain = "300ms"

[database]
url = "sqlite:{db}"

[[service]]
name = "orders"
url = "{url}"
{reset}

[[caller]]
name = "buyers"
request = {{ method = "POST", path = "/orders/{{key}}" }}
keys = {{ count = 10, prefix = "c" }}
rate = 20
overlap = {{ k = 2, window = "0ms" }}

[[invariant]]
name = "one order per customer"
sql = "SELECT customer, COUNT(*) AS n FROM orders GROUP BY customer HAVING COUNT(*) > 1"
key_column = "customer"
"#,
        db = db.display()
    )
}

fn stale(summary: &serde_json::Value) -> bool {
    summary["warnings"]
        .as_array()
        .is_some_and(|w| w.iter().any(|w| w["kind"] == "state_before_load"))
}

#[test]
fn a_second_run_on_a_url_service_says_the_database_held_state_before_it() {
    let dir = TempDir::new();
    let db = dir.path().join("orders.db");
    let service = start_orders(&dir, &db);
    let path = dir.write("orders.toml", &scenario(&service.url, &db, ""));
    let (code, first, stderr) = run_json("run", &path, &dir.path().join("one"), &[]);
    assert_eq!(code, Some(1), "the race is found: {stderr}\n{first}");
    assert!(!stale(&first), "the first run starts clean: {first}");
    let (_, second, stderr) = run_json("run", &path, &dir.path().join("two"), &[]);
    assert!(
        stale(&second),
        "the first run's duplicates are there before the second run's load: {stderr}\n{second}"
    );
    // isolate refuses, before any trial, a scenario it cannot give fresh state.
    let iso = dir.path().join("iso");
    let output = crate::support::run(&[
        "isolate",
        path.to_str().expect("utf-8"),
        "--out",
        iso.to_str().expect("utf-8"),
    ]);
    let stderr = crate::support::text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("reset_sql"), "says what to add: {stderr}");
}

#[test]
fn reset_sql_gives_each_run_and_trial_a_clean_table() {
    let dir = TempDir::new();
    let db = dir.path().join("orders.db");
    let service = start_orders(&dir, &db);
    dir.write("reset.sql", "DELETE FROM orders;\n");
    let path = dir.write(
        "orders.toml",
        &scenario(&service.url, &db, r#"reset_sql = "reset.sql""#),
    );
    for round in ["one", "two"] {
        let (code, summary, stderr) = run_json("run", &path, &dir.path().join(round), &[]);
        assert_eq!(code, Some(1), "{round}: {stderr}\n{summary}");
        assert!(!stale(&summary), "{round} starts clean: {summary}");
    }
    let (code, json, stderr) = run_json(
        "isolate",
        &path,
        &dir.path().join("iso"),
        &["--trials", "2"],
    );
    assert_eq!(code, Some(0), "isolate runs its trials: {stderr}\n{json}");
    assert!(
        json["incomplete"].as_array().is_none_or(|a| a.is_empty()),
        "{json}"
    );
}

#[test]
fn a_reset_command_runs_before_each_run_with_its_log() {
    let dir = TempDir::new();
    let db = dir.path().join("orders.db");
    let service = start_orders(&dir, &db);
    let reset = r#"reset = ["python3", "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('DELETE FROM orders'); c.commit(); print('emptied')", "{database.path}"]"#;
    let path = dir.write("orders.toml", &scenario(&service.url, &db, reset));
    for round in ["one", "two"] {
        let out = dir.path().join(round);
        let (code, summary, stderr) = run_json("run", &path, &out, &[]);
        assert_eq!(code, Some(1), "{round}: {stderr}\n{summary}");
        assert!(!stale(&summary), "{round} starts clean: {summary}");
        let log = crate::support::run_dir(&out).join("services/orders-reset.log");
        assert_eq!(
            std::fs::read_to_string(&log)
                .expect("the reset's log")
                .trim(),
            "emptied"
        );
    }
    // A reset that fails stops the run before the load, quoting its output.
    let failing =
        r#"reset = ["python3", "-c", "import sys; print('no database here'); sys.exit(3)"]"#;
    let path = dir.write("failing.toml", &scenario(&service.url, &db, failing));
    let (code, summary, _) = run_json("run", &path, &dir.path().join("three"), &[]);
    assert_eq!(code, Some(3), "{summary}");
    assert_eq!(summary["status"], "start_failed", "{summary}");
    let reason = summary["status_reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("reset command failed") && reason.contains("no database here"),
        "{reason}"
    );
}

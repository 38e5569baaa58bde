//! Synchronised overlap (`overlap.sync = "last_byte"`) against a Python service that shares
//! nothing with reprod: every member of a group reaches the service, on its own connection, and
//! the run reports how tightly each caller's groups landed.

use serde_json::Value;

use crate::support::{TempDir, run_dir, run_json, scalar};

/// Answers each `POST /hit/KEY` with how many requests for KEY it has seen.
const COUNTER: &str = r#"
import http.server, json, sys, threading
PORT = int(sys.argv[1])
seen, lock = {}, threading.Lock()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_POST(self):
        key = self.path.rsplit("/", 1)[-1]
        with lock:
            seen[key] = seen.get(key, 0) + 1
            n = seen[key]
        body = json.dumps({"n": n}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", PORT), H)
print("listening", flush=True)
server.serve_forever()
"#;

const SCENARIO: &str = r#"
name = "sync"
duration = "1s"
drain = "500ms"

[[service]]
name = "counter"
command = ["python3", "-u", "counter.py", "{port}"]
cwd = "."
ready = { path = "/health", timeout = "20s" }

[[caller]]
name = "synced"
request = { method = "POST", path = "/hit/{key}" }
keys = { count = 100000, prefix = "s" }
rate = 8
overlap = { k = 8, sync = "last_byte" }
timeout = "5s"

[[caller]]
name = "spread"
request = { method = "POST", path = "/hit/{key}" }
keys = { count = 100000, prefix = "w" }
rate = 8
overlap = { k = 8, window = "30ms" }
timeout = "5s"
"#;

#[test]
fn every_member_of_a_synchronised_group_reaches_the_service_and_the_landing_is_measured() {
    let dir = TempDir::new();
    dir.write("counter.py", COUNTER);
    let path = dir.write("sync.toml", SCENARIO);
    let out = dir.path().join("runs");
    let (code, summary, stderr) = run_json("run", &path, &out, &[]);
    assert_eq!(code, Some(0), "{stderr}\n{summary}");
    assert_eq!(summary["ops"]["failed"], 0, "{summary}");
    let landing = |caller: &str| -> Value {
        summary["overlap"]
            .as_array()
            .and_then(|o| o.iter().find(|l| l["caller"] == caller))
            .cloned()
            .unwrap_or_else(|| panic!("{caller} in {summary}"))
    };
    let (synced, spread) = (landing("synced"), landing("spread"));
    assert_eq!(synced["sync"], "last_byte");
    assert_eq!(spread["sync"], "window");
    let history = run_dir(&out).join("history.sqlite");
    for l in [&synced, &spread] {
        let caller = l["caller"].as_str().expect("caller");
        let groups = l["groups"].as_i64().expect("groups");
        let ops = scalar(
            &history,
            &format!("SELECT COUNT(*) FROM ops WHERE caller = '{caller}'"),
        );
        assert!(
            groups > 0 && ops == groups * 8,
            "{caller}: {ops} ops in {groups} groups"
        );
        let s = &l["spread_us"];
        assert!(
            s["p50"].as_i64() <= s["p99"].as_i64() && s["p99"].as_i64() <= s["max"].as_i64(),
            "{l}"
        );
    }
    // Each member was a request of its own that the service counted: the eight answers of a
    // group on one key say 1 to 8, each once.
    assert_eq!(
        scalar(
            &history,
            "SELECT COUNT(*) FROM (
                 SELECT o.group_id FROM ops o JOIN attempts a ON a.op_id = o.op_id AND a.n = 1
                 WHERE o.caller = 'synced'
                 GROUP BY o.group_id
                 HAVING COUNT(DISTINCT json_extract(a.response, '$.n')) != 8)"
        ),
        0,
        "every group's eight requests reached the service"
    );
    let report = std::fs::read_to_string(run_dir(&out).join("report.txt")).expect("report");
    assert!(
        report.contains("overlap     synced: ") && report.contains("(last_byte), sent within p50 "),
        "{report}"
    );
}

/// A pass whose load never had two requests on one key in flight says so: with overlap off
/// (`--staging`) every group runs one member at a time.
#[test]
fn a_pass_that_never_raced_says_so() {
    let dir = TempDir::new();
    dir.write("counter.py", COUNTER);
    let path = dir.write("sync.toml", SCENARIO);
    let out = dir.path().join("runs");
    let (code, summary, stderr) = run_json("run", &path, &out, &["--staging"]);
    assert_eq!(code, Some(0), "{stderr}\n{summary}");
    let requests = summary["exercised"]
        .as_array()
        .and_then(|e| e.iter().find(|p| p["place"] == "requests"))
        .unwrap_or_else(|| panic!("{summary}"));
    assert_eq!(requests["overlapped_keys"], 0, "{requests}");
    assert!(requests["keys"].as_u64().unwrap_or(0) > 0, "{requests}");
    let warning = summary["warnings"]
        .as_array()
        .and_then(|w| w.iter().find(|w| w["kind"] == "never_raced"))
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(
        warning["message"]
            .as_str()
            .is_some_and(|m| m.contains("sync = \"last_byte\"")),
        "{warning}"
    );
    let report = std::fs::read_to_string(run_dir(&out).join("report.txt")).expect("report");
    assert!(
        report.contains("same key    requests: no key had two at once"),
        "{report}"
    );
}

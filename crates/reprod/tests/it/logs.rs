//! Service logs into the history: a Python service (nothing shared with reprod) that writes
//! logfmt lines with the trace id of each request's `traceparent`; its lines land in
//! `service_logs`, join the operations they belong to in the timeline, and its fields become
//! comparison dimensions.

use crate::support::{TempDir, run_dir, run_json, scalar};

/// A find-then-insert race on `orders`, logging each decision as logfmt on stdout.
const ORDERS: &str = r#"
import http.server, sqlite3, sys, time
DB, PORT = sys.argv[1], int(sys.argv[2])
db = sqlite3.connect(DB)
db.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL)")
db.commit()
db.close()
def log(**fields):
    parts = []
    for k, v in fields.items():
        v = str(v)
        parts.append(f'{k}="{v}"' if " " in v else f"{k}={v}")
    # One write per line: print() writes the text and the newline separately, and two
    # threads' lines would interleave.
    sys.stdout.write(" ".join(parts) + "\n")
    sys.stdout.flush()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_POST(self):
        customer = self.path.rsplit("/", 1)[-1]
        tp = self.headers.get("traceparent", "")
        trace = tp.split("-")[1] if tp.count("-") == 3 else ""
        start = time.time()
        db = sqlite3.connect(DB, timeout=10)
        found = db.execute("SELECT id FROM orders WHERE customer = ?", (customer,)).fetchone()
        log(time=f"{time.time():.6f}", level="info", trace_id=trace, customer=customer,
            cache="miss" if found is None else "hit", msg=f"looked up {customer}: {'none' if found is None else 'found'}")
        if found is None:
            time.sleep(0.005)
            db.execute("INSERT INTO orders (customer) VALUES (?)", (customer,))
            db.commit()
            log(time=f"{time.time():.6f}", level="info", trace_id=trace, customer=customer,
                db_wait_ms=round((time.time() - start) * 1000, 1), msg=f"inserted order for {customer}")
        db.close()
        self.send_response(201 if found is None else 200)
        self.send_header("content-length", "0")
        self.end_headers()
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
print("starting up, not logfmt", flush=True)
server = http.server.ThreadingHTTPServer(("127.0.0.1", PORT), H)
server.serve_forever()
"#;

fn scenario(dir: &TempDir, logs: &str) -> std::path::PathBuf {
    dir.write("orders.py", ORDERS);
    dir.write(
        "orders.toml",
        &format!(
            r#"
name = "orders"
duration = "1s"
drain = "300ms"
dimensions = ["cache", "db_wait_ms"]

[database]
url = "sqlite:{{run_dir}}/orders.db"

[[service]]
name = "orders"
command = ["python3", "orders.py", "{{database.path}}", "{{port}}"]
cwd = "."
ready = {{ path = "/health", timeout = "20s" }}
{logs}

[[caller]]
name = "buyers"
request = {{ method = "POST", path = "/orders/{{key}}" }}
keys = {{ count = 10, prefix = "c" }}
rate = 20
overlap = {{ k = 2, window = "0ms" }}

# One request at a time per key: the clean keys to compare against.
[[caller]]
name = "browsers"
request = {{ method = "POST", path = "/orders/{{key}}" }}
keys = {{ count = 5, prefix = "d" }}
rate = 10

[[invariant]]
name = "one order per customer"
sql = "SELECT customer, COUNT(*) AS n FROM orders GROUP BY customer HAVING COUNT(*) > 1"
key_column = "customer"
"#
        ),
    )
}

#[test]
fn logfmt_lines_join_their_operations_in_the_timeline() {
    let dir = TempDir::new();
    let path = scenario(
        &dir,
        r#"logs = { format = "logfmt", trace = "trace_id", key = "customer" }"#,
    );
    let out = dir.path().join("runs");
    let (code, summary, stderr) = run_json("run", &path, &out, &[]);
    assert_eq!(code, Some(1), "the race is found: {stderr}\n{summary}");
    let counts = &summary["service_logs"][0];
    assert_eq!(counts["service"], "orders", "{summary}");
    assert_eq!(counts["unparsable"], 1, "the start-up line: {counts}");
    assert_eq!(counts["dropped"], 0, "{counts}");
    let kept = counts["kept"].as_i64().expect("kept");
    let history = run_dir(&out).join("history.sqlite");
    assert_eq!(
        scalar(&history, "SELECT COUNT(*) FROM service_logs"),
        kept,
        "every kept line is a row"
    );
    assert_eq!(
        scalar(
            &history,
            "SELECT COUNT(*) FROM service_logs WHERE trace_id NOT IN (SELECT trace_id FROM ops)"
        ),
        0,
        "every line carries the trace of the operation it served"
    );
    assert_eq!(
        scalar(
            &history,
            "SELECT COUNT(*) FROM service_logs WHERE at_us IS NULL OR at_us > received_us"
        ),
        0,
        "the service's own time places each line, never after reprod read it"
    );

    let timeline: Vec<String> = summary["explanation"]["timeline"]
        .as_array()
        .expect("a timeline")
        .iter()
        .filter(|e| e["kind"] == "log")
        .filter_map(|e| e["text"].as_str().map(str::to_string))
        .collect();
    let key = summary["explanation"]["key"].as_str().expect("a key");
    let none = format!("looked up {key}: none");
    let inserted = format!("inserted order for {key}");
    assert!(
        timeline
            .iter()
            .filter(|l| l.starts_with("orders/0 (v1), buyers op ") && l.ends_with(&none))
            .count()
            >= 2,
        "both lookups found nothing, each joined to its operation: {timeline:#?}"
    );
    assert!(
        timeline.iter().filter(|l| l.ends_with(&inserted)).count() >= 2,
        "{timeline:#?}"
    );

    let comparison = summary["explanation"]["comparison"]
        .as_array()
        .expect("a comparison");
    let cache = comparison
        .iter()
        .find(|d| d["name"] == "cache")
        .unwrap_or_else(|| panic!("the log field is a dimension: {comparison:#?}"));
    assert!(
        cache["sentence"]
            .as_str()
            .is_some_and(|s| s.contains("logged cache=")),
        "{cache}"
    );
    let wait = comparison
        .iter()
        .find(|d| d["name"] == "db_wait_ms")
        .expect("the numeric field is a dimension");
    assert!(
        wait["sentence"]
            .as_str()
            .is_some_and(|s| s.contains("logged db_wait_ms of ")),
        "{wait}"
    );
}

#[test]
fn a_wrong_format_is_said_and_the_run_goes_on() {
    let dir = TempDir::new();
    let path = scenario(&dir, r#"logs = { format = "json" }"#);
    let (code, summary, stderr) = run_json("run", &path, &dir.path().join("runs"), &[]);
    assert_eq!(code, Some(1), "{stderr}\n{summary}");
    let warning = summary["warnings"]
        .as_array()
        .and_then(|w| w.iter().find(|w| w["kind"] == "service_logs_unread"))
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(
        warning["message"]
            .as_str()
            .is_some_and(|m| m.contains("logs.format")),
        "says what to fix: {warning}"
    );
}

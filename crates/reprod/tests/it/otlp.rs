//! `{otlp.url}`: a Python service instrumented with the OpenTelemetry SDK and its OTLP/HTTP
//! exporter (nothing shared with reprod) sends its spans to reprod during the run; they land in
//! the history's `spans` and in the timeline of the key whose operation they belong to.

use crate::support::{TempDir, run_dir, run_json, scalar};

/// A find-then-insert race, each request a server span (continuing the `traceparent` reprod
/// sent) with a client span per statement.
const ORDERS: &str = r#"
import http.server, signal, sqlite3, sys, time
from opentelemetry import trace, propagate
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

provider = TracerProvider(resource=Resource.create({"service.name": "orders"}))
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("orders")

def stop(*_):
    provider.shutdown()
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)

DB, PORT = sys.argv[1], int(sys.argv[2])
db = sqlite3.connect(DB)
db.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL)")
db.commit()
db.close()

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
    def do_POST(self):
        customer = self.path.rsplit("/", 1)[-1]
        parent = propagate.extract(dict(self.headers))
        with tracer.start_as_current_span("POST /orders/{customer}", context=parent,
                                          kind=trace.SpanKind.SERVER):
            db = sqlite3.connect(DB, timeout=10)
            with tracer.start_as_current_span("SELECT orders", kind=trace.SpanKind.CLIENT) as s:
                s.set_attribute("db.query.text", "SELECT id FROM orders WHERE customer = ?")
                found = db.execute("SELECT id FROM orders WHERE customer = ?", (customer,)).fetchone()
                s.set_attribute("db.response.returned_rows", 0 if found is None else 1)
            if found is None:
                time.sleep(0.005)
                with tracer.start_as_current_span("INSERT orders", kind=trace.SpanKind.CLIENT) as s:
                    s.set_attribute("db.query.text", "INSERT INTO orders (customer) VALUES (?)")
                    db.execute("INSERT INTO orders (customer) VALUES (?)", (customer,))
                    db.commit()
            db.close()
            self.send_response(201 if found is None else 200)
            self.send_header("content-length", "0")
            self.end_headers()
    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", PORT), H).serve_forever()
"#;

const SCENARIO: &str = r#"
name = "orders"
duration = "1s"
drain = "500ms"
# A span attribute as a comparison dimension.
dimensions = ["db.response.returned_rows"]

[database]
url = "sqlite:{run_dir}/orders.db"

[[service]]
name = "orders"
command = ["python3", "-u", "orders.py", "{database.path}", "{port}"]
cwd = "."
ready = { path = "/health", timeout = "30s" }
env = { OTEL_EXPORTER_OTLP_ENDPOINT = "{otlp.url}", OTEL_BSP_SCHEDULE_DELAY = "100" }

[[caller]]
name = "buyers"
request = { method = "POST", path = "/orders/{key}" }
keys = { count = 10, prefix = "c" }
rate = 20
overlap = { k = 2, window = "0ms" }

# One request at a time per key: the clean keys to compare against.
[[caller]]
name = "browsers"
request = { method = "POST", path = "/orders/{key}" }
keys = { count = 5, prefix = "d" }
rate = 10

[[invariant]]
name = "one order per customer"
sql = "SELECT customer, COUNT(*) AS n FROM orders GROUP BY customer HAVING COUNT(*) > 1"
key_column = "customer"
"#;

/// Whether Python has the SDK and its exporter; under `REPROD_CI` a missing one fails.
fn sdk_installed() -> bool {
    let ok = std::process::Command::new("python3")
        .args([
            "-c",
            "import opentelemetry.sdk, opentelemetry.exporter.otlp.proto.http",
        ])
        .status()
        .is_ok_and(|s| s.success());
    let fix = "python3 -m pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-http";
    assert!(
        ok || std::env::var_os("REPROD_CI").is_none(),
        "REPROD_CI is set but Python's OpenTelemetry SDK is missing: {fix}"
    );
    if !ok {
        eprintln!("SKIPPED: Python's OpenTelemetry SDK is not installed ({fix})");
    }
    ok
}

#[test]
fn spans_from_an_instrumented_python_service_join_the_timeline() {
    if !sdk_installed() {
        return;
    }
    let dir = TempDir::new();
    dir.write("orders.py", ORDERS);
    let path = dir.write("orders.toml", SCENARIO);
    let out = dir.path().join("runs");
    let (code, summary, stderr) = run_json("run", &path, &out, &[]);
    assert_eq!(code, Some(1), "the race is found: {stderr}\n{summary}");
    let otlp = &summary["otlp"];
    let spans = otlp["spans"].as_i64().unwrap_or(0);
    assert!(spans > 0, "spans arrived: {summary}");
    assert_eq!(otlp["rejected"], 0, "{otlp}");
    let history = run_dir(&out).join("history.sqlite");
    assert_eq!(scalar(&history, "SELECT COUNT(*) FROM spans"), spans);
    assert_eq!(
        scalar(
            &history,
            "SELECT COUNT(*) FROM spans WHERE replica IS NOT 0 OR service != 'orders'"
        ),
        0,
        "each span names the replica whose {{otlp.url}} it came to"
    );
    assert_eq!(
        scalar(
            &history,
            "SELECT COUNT(*) FROM spans WHERE kind = 'server'
             AND trace_id NOT IN (SELECT trace_id FROM ops)"
        ),
        0,
        "every request's span continues the trace reprod sent"
    );
    let timeline: Vec<String> = summary["explanation"]["timeline"]
        .as_array()
        .expect("a timeline")
        .iter()
        .filter(|e| e["kind"] == "log")
        .filter_map(|e| e["text"].as_str().map(str::to_string))
        .collect();
    let selects = timeline
        .iter()
        .filter(|l| {
            l.starts_with("orders/0 (v1), buyers op ")
                && l.contains("span \"SELECT orders\" (client, ")
                && l.ends_with(": SELECT id FROM orders WHERE customer = ? → 0 rows")
        })
        .count();
    let inserts = timeline
        .iter()
        .filter(|l| l.contains("span \"INSERT orders\""))
        .count();
    let comparison = summary["explanation"]["comparison"]
        .as_array()
        .expect("a comparison");
    assert!(
        comparison
            .iter()
            .any(|d| d["name"] == "db.response.returned_rows"
                && d["sentence"]
                    .as_str()
                    .is_some_and(|s| s.contains("logged db.response.returned_rows"))),
        "a span attribute is a dimension: {comparison:#?}"
    );
    assert!(
        selects >= 2 && inserts >= 2,
        "both operations' SELECT finding nothing and their INSERTs, joined to them: {timeline:#?}"
    );
}

#[test]
fn a_service_that_sends_nothing_is_said() {
    let dir = TempDir::new();
    dir.write(
        "quiet.py",
        r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#,
    );
    let path = dir.write(
        "quiet.toml",
        r#"
duration = "300ms"
drain = "0s"
[[service]]
name = "quiet"
command = ["python3", "quiet.py", "{port}"]
cwd = "."
ready = { path = "/", timeout = "20s" }
env = { OTEL_EXPORTER_OTLP_ENDPOINT = "{otlp.url}" }
[[caller]]
name = "c"
request = { path = "/" }
rate = 10
"#,
    );
    let (code, summary, stderr) = run_json("run", &path, &dir.path().join("runs"), &[]);
    assert_eq!(code, Some(0), "{stderr}\n{summary}");
    let silent = summary["warnings"]
        .as_array()
        .and_then(|w| w.iter().find(|w| w["kind"] == "otlp_silent"))
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(
        silent["message"]
            .as_str()
            .is_some_and(|m| m.contains("OTEL_EXPORTER_OTLP_PROTOCOL")),
        "{silent}"
    );
}

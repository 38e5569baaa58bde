//! The database proxy on PostgreSQL: the invoice service (sqlx, the extended query protocol,
//! pipelined) reaches its database through reprod; its statements join the timeline, a
//! `slow_database` latency on the invoice lookup reproduces the duplicate without a slow
//! dependency, the fixed variant's unique index shows as `INSERT 0 0`, an injected serialization
//! failure answers in an INSERT's place while the connection goes on, and a service reprod
//! does not start is seen through a fixed `proxy_port`.

use serde_json::Value;

use crate::support::{PgDb, TempDir, invoices, run_dir, run_json, scalar};

/// `scenarios/invoices.toml` with statement faults added to its `[database]`.
fn with_faults(dir: &TempDir, faults: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(invoices()).expect("invoices.toml");
    let at = text.find("\n[[service]]").expect("a service");
    let (head, tail) = text.split_at(at);
    dir.write("invoices.toml", &format!("{head}\n{faults}\n{tail}"))
}

/// `reprod run SCENARIO --json --set database=<db> EXTRA...`, off the async threads.
async fn run_on(
    db: &PgDb,
    scenario: &std::path::Path,
    out: &std::path::Path,
    extra: &[&str],
) -> (Option<i32>, Value, String) {
    let database = format!("database={}", db.url);
    let mut args = vec!["--set".to_string(), database];
    args.extend(extra.iter().map(|a| a.to_string()));
    let (scenario, out) = (scenario.to_path_buf(), out.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_json("run", &scenario, &out, &args)
    })
    .await
    .expect("join")
}

fn timeline(summary: &Value) -> Vec<String> {
    summary["explanation"]["timeline"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter(|e| e["kind"] == "statement")
                .filter_map(|e| e["text"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_database_reproduces_the_duplicate_and_the_timeline_shows_each_decision() {
    let Some(db) = PgDb::fresh().await else {
        return;
    };
    let dir = TempDir::new();
    let path = with_faults(
        &dir,
        r#"[[database.fault]]
kind = "latency"
match = { statement = "select", text = "FROM invoices" }
latency = { fixed = "40ms" }"#,
    );
    let out = dir.path().join("runs");
    let (code, summary, stderr) = run_on(
        &db,
        &path,
        &out,
        &["--without", "slow_dependency", "--duration", "3s"],
    )
    .await;
    db.drop_now().await;
    assert_eq!(code, Some(1), "the duplicate is found: {stderr}\n{summary}");
    let conditions: Vec<&str> = summary["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        conditions.contains(&"slow_database") && !conditions.contains(&"slow_dependency"),
        "{conditions:?}"
    );
    let proxy = &summary["db_proxy"];
    assert!(proxy["statements"].as_u64().unwrap_or(0) > 100, "{proxy}");
    assert!(proxy["faults"].as_u64().unwrap_or(0) > 10, "{proxy}");
    assert_eq!(proxy["upstream_failures"], 0, "{proxy}");

    let lines = timeline(&summary);
    let selects: Vec<&String> = lines
        .iter()
        .filter(|l| {
            l.contains(", api op ")
                && l.contains(": SELECT invoices → 0 rows")
                && l.ends_with("held 40 ms by a slow_database fault")
        })
        .collect();
    let inserts = lines
        .iter()
        .filter(|l| l.contains(", api op ") && l.contains(": INSERT invoices → 1 row"))
        .count();
    assert!(
        selects.len() >= 2 && inserts >= 2,
        "both lookups found nothing and both inserted, each joined to its operation: {lines:#?}"
    );
    let history = run_dir(&out).join("history.sqlite");
    assert!(
        scalar(
            &history,
            "SELECT COUNT(*) FROM db_statements WHERE trace_id IN (SELECT trace_id FROM ops)"
        ) > 100,
        "the service's sqlcommenter comments join statements to operations"
    );
    assert_eq!(
        scalar(
            &history,
            "SELECT COUNT(*) FROM db_statements WHERE replica NOT IN ('invoices/0', 'invoices/1')"
        ),
        0,
        "each connection names its replica"
    );
    // The proxy's own dimensions are compared, as conditions that were on.
    let comparison = summary["explanation"]["comparison"]
        .as_array()
        .expect("a comparison");
    for name in ["slow_database", "db_wait"] {
        let d = comparison
            .iter()
            .find(|d| d["name"] == name)
            .unwrap_or_else(|| panic!("{name} is compared: {comparison:#?}"));
        assert_ne!(d["status"], "inactive", "{d}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fixed_variant_shows_the_unique_index_deciding() {
    let Some(db) = PgDb::fresh().await else {
        return;
    };
    let dir = TempDir::new();
    let out = dir.path().join("runs");
    let (code, summary, stderr) = run_on(
        &db,
        &invoices(),
        &out,
        &["--set", "variant=fixed", "--duration", "3s"],
    )
    .await;
    db.drop_now().await;
    assert_eq!(code, Some(0), "{stderr}\n{summary}");
    let history = run_dir(&out).join("history.sqlite");
    assert!(
        scalar(
            &history,
            "SELECT COUNT(*) FROM db_statements
             WHERE kind = 'insert' AND table_name = 'invoices' AND tag = 'INSERT 0 0'"
        ) > 0,
        "a second create's INSERT ... ON CONFLICT inserted nothing"
    );
    assert!(
        scalar(
            &history,
            "SELECT COUNT(DISTINCT tx) FROM db_statements WHERE tx IS NOT NULL"
        ) > 10,
        "the fixed variant's transactions are told apart"
    );
    // The seed's "duplicate key conflicts appear", counted per key, and each replica's pool.
    let proxy = &summary["db_proxy"];
    let conflicts = &proxy["conflicts"];
    assert!(
        conflicts["noop_inserts"].as_u64().unwrap_or(0) > 0,
        "{proxy}"
    );
    assert!(conflicts["keys"].as_u64().unwrap_or(0) > 0, "{proxy}");
    let replicas: Vec<&str> = proxy["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .filter(|r| {
            r["connections"].as_u64().unwrap_or(0) > 0 && r["max_open"].as_u64().unwrap_or(0) > 0
        })
        .filter_map(|r| r["replica"].as_str())
        .collect();
    assert_eq!(replicas, ["invoices/0", "invoices/1"], "{proxy}");
    // Where the service side saw the API's overlap groups: at the database, every group two
    // or more of whose members sent a statement, and how tightly their first statements came.
    let api = summary["overlap"]
        .as_array()
        .and_then(|o| o.iter().find(|l| l["caller"] == "api"))
        .unwrap_or_else(|| panic!("{summary}"));
    let at_database = api["reached"]
        .as_array()
        .and_then(|r| r.iter().find(|p| p["place"] == "database"))
        .unwrap_or_else(|| panic!("{api}"));
    let groups_with_two = scalar(
        &history,
        "SELECT COUNT(*) FROM (
             SELECT o.group_id FROM ops o
             WHERE o.caller = 'api' AND EXISTS (SELECT 1 FROM db_statements s WHERE s.trace_id = o.trace_id)
             GROUP BY o.group_id HAVING COUNT(*) > 1)",
    );
    assert!(groups_with_two > 0);
    assert_eq!(
        at_database["groups"].as_i64(),
        Some(groups_with_two),
        "{api}"
    );
    let s = &at_database["spread_us"];
    assert!(
        s["p50"].as_i64() <= s["p99"].as_i64() && s["p99"].as_i64() <= s["max"].as_i64(),
        "{at_database}"
    );
    let report = std::fs::read_to_string(run_dir(&out).join("report.txt")).expect("report");
    assert!(report.contains("reached database in "), "{report}");
    assert!(
        report.contains("duplicate key conflicts: ")
            && report.contains("inserts that inserted nothing"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_serialization_failure_answers_in_place_of_the_insert() {
    let Some(db) = PgDb::fresh().await else {
        return;
    };
    let dir = TempDir::new();
    let path = with_faults(
        &dir,
        r#"[[database.fault]]
kind = "error"
sqlstate = "40001"
match = { statement = "insert", text = "INTO invoices" }"#,
    );
    let out = dir.path().join("runs");
    let (code, summary, stderr) = run_on(
        &db,
        &path,
        &out,
        &["--only", "database_faults", "--duration", "2s"],
    )
    .await;
    db.drop_now().await;
    assert_ne!(code, Some(2), "{stderr}\n{summary}");
    let history = run_dir(&out).join("history.sqlite");
    let injected = scalar(
        &history,
        "SELECT COUNT(*) FROM db_statements WHERE sqlstate = '40001' AND fault = 'error'",
    );
    assert!(injected > 10, "{summary}");
    assert_eq!(
        scalar(
            &history,
            "SELECT COUNT(*) FROM db_statements WHERE tag LIKE 'INSERT%' AND table_name = 'invoices'"
        ),
        0,
        "no invoice insert reached the server"
    );
    // The same connections go on: statements after an injected error were answered.
    assert!(
        scalar(
            &history,
            "SELECT COUNT(*) FROM db_statements s WHERE s.tag IS NOT NULL AND EXISTS
             (SELECT 1 FROM db_statements e WHERE e.conn = s.conn AND e.fault = 'error'
              AND e.received_us < s.received_us)"
        ) > 0,
        "the connection is usable after the injected error"
    );
    // The service answered each create with its own error, promptly: no attempt timed out.
    assert_eq!(
        scalar(
            &history,
            "SELECT COUNT(*) FROM attempts WHERE error LIKE '%timeout%'"
        ),
        0
    );
    assert!(
        scalar(
            &history,
            "SELECT COUNT(*) FROM attempts WHERE status >= 500"
        ) > 0,
        "{summary}"
    );
}

/// A service the test starts itself (a `url` service): on each POST it asks PostgreSQL, with
/// `psql`, whether the customer has an order and adds one if not, through the database URL it
/// was given — reprod's proxy, on the port the scenario fixes with `proxy_port`.
const ORDERS: &str = r#"
import http.server, subprocess, sys
DB = sys.argv[1]
def sql(q):
    return subprocess.run(["psql", DB, "-X", "-A", "-t", "-c", q], capture_output=True, text=True).stdout.strip()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        customer = self.path.rsplit("/", 1)[-1]
        if sql(f"SELECT count(*) FROM orders WHERE customer = '{customer}'") == "0":
            sql(f"INSERT INTO orders (customer) VALUES ('{customer}')")
        self.send_response(201)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(f"http://127.0.0.1:{server.server_port}", flush=True)
server.serve_forever()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_reprod_does_not_start_is_seen_through_a_fixed_proxy_port() {
    use std::io::BufRead as _;
    let Some(db) = PgDb::fresh().await else {
        return;
    };
    let pool = sqlx::PgPool::connect(&db.url).await.expect("connect");
    sqlx::query("CREATE TABLE orders (id serial PRIMARY KEY, customer text NOT NULL)")
        .execute(&pool)
        .await
        .expect("table");
    pool.close().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let name = db.url.rsplit('/').next().unwrap_or_default().to_string();
    let dir = TempDir::new();
    let script = dir.write("orders.py", ORDERS);
    let mut child = std::process::Command::new("python3")
        .arg(&script)
        .arg(format!("postgres://postgres@127.0.0.1:{port}/{name}"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("its URL");
    let path = dir.write(
        "orders.toml",
        &format!(
            r#"
duration = "1s"
drain = "300ms"
[database]
url = "{url}"
proxy = true
proxy_port = {port}
key = {{ column = "customer" }}
[[service]]
name = "orders"
url = "{service}"
reset_sql = "reset.sql"
[[caller]]
name = "buyers"
request = {{ method = "POST", path = "/orders/{{key}}" }}
keys = {{ count = 5, prefix = "c" }}
rate = 10
[[invariant]]
name = "one order per customer"
sql = "SELECT customer, COUNT(*) AS n FROM orders GROUP BY customer HAVING COUNT(*) > 1"
key_column = "customer"
"#,
            url = db.url,
            service = line.trim()
        ),
    );
    dir.write("reset.sql", "DELETE FROM orders;");
    let out = dir.path().join("runs");
    let (code, summary, stderr) = tokio::task::spawn_blocking({
        let out = out.clone();
        move || run_json("run", &path, &out, &[])
    })
    .await
    .expect("join");
    let _ = child.kill();
    let _ = child.wait();
    db.drop_now().await;
    assert!(matches!(code, Some(0 | 1)), "{stderr}\n{summary}");
    assert!(
        summary["db_proxy"]["connections"].as_u64().unwrap_or(0) > 0,
        "the service's connections came through the proxy: {summary}"
    );
    let history = run_dir(&out).join("history.sqlite");
    assert!(
        scalar(
            &history,
            "SELECT COUNT(*) FROM db_statements WHERE key LIKE 'c%' AND table_name = 'orders'"
        ) > 5,
        "its statements are recorded with their keys"
    );
}

//! Whole runs of the shipped invoice scenario: the naive variant violates both invariants and
//! exits 1, the fixed one holds under the same load and exits 0, the run directory matches the
//! contract, and the same seed gives the same schedule.

use serde_json::Value;

use crate::support::{PgDb, TempDir, invoices, run, run_dir, run_json, scalar, text};

fn json_run(out: &TempDir, extra: &[&str]) -> (Option<i32>, Value, String) {
    run_json("run", &invoices(), out.path(), extra)
}

fn invariant<'a>(summary: &'a Value, name: &str) -> &'a Value {
    summary["invariants"]
        .as_array()
        .and_then(|all| all.iter().find(|i| i["name"] == name))
        .unwrap_or_else(|| panic!("no invariant {name:?} in {summary}"))
}

#[test]
fn naive_invoices_violate_both_invariants_and_exit_1() {
    let out = TempDir::new();
    let (code, summary, stderr) = json_run(&out, &["--set", "variant=naive", "--duration", "3s"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(summary["verdict"], "fail");
    let first =
        invariant(&summary, "one invoice per account and period")["first_violation_s"].as_f64();
    assert!(
        first.is_some_and(|s| s > 0.0 && s < 6.0),
        "the first duplicate is seen during the load: {first:?}"
    );
    for name in [
        "one invoice per account and period",
        "one email per invoice",
    ] {
        let inv = invariant(&summary, name);
        assert_eq!(inv["held"], false, "{inv}");
        assert!(inv["violations"].as_u64().unwrap_or(0) > 0);
        assert!(!inv["examples"].as_array().expect("examples").is_empty());
    }
    // The summary.json contract.
    for field in [
        "run_id",
        "scenario",
        "seed",
        "conditions",
        "duration_s",
        "retry_amplification",
        "throughput_rps",
        "goodput_rps",
    ] {
        assert!(!summary[field].is_null(), "summary lacks {field}");
    }
    for (obj, fields) in [
        ("ops", &["total", "ok", "failed", "ambiguous"][..]),
        ("attempts", &["total", "retries"][..]),
        ("latency_ms", &["p50", "p95", "p99", "p999", "max"][..]),
        ("schedule_lag_ms", &["p99", "max"][..]),
    ] {
        for f in fields {
            assert!(
                summary[obj][f].is_number(),
                "summary.{obj}.{f}: {}",
                summary[obj]
            );
        }
    }
    let conditions: Vec<&str> = summary["conditions"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        conditions,
        [
            "overlap",
            "slow_dependency",
            "retries",
            "hot_keys",
            "instances",
            "concurrent_callers"
        ]
    );

    // The run directory contract.
    let dir = run_dir(out.path());
    for file in [
        "history.sqlite",
        "summary.json",
        "report.txt",
        "services/invoices-0.log",
        "services/invoices-1.log",
    ] {
        assert!(
            dir.join(file).exists(),
            "{file} missing in {}",
            dir.display()
        );
    }
    let report = std::fs::read_to_string(dir.join("report.txt")).expect("report");
    assert!(
        report.contains("VIOLATED  one invoice per account and period"),
        "{report}"
    );
    let history = dir.join("history.sqlite");
    let ops = summary["ops"]["total"].as_i64().expect("ops");
    assert_eq!(scalar(&history, "SELECT COUNT(*) FROM ops"), ops);
    assert_eq!(
        scalar(
            &history,
            "SELECT COUNT(*) FROM run WHERE status = 'completed'"
        ),
        1
    );
    assert!(scalar(&history, "SELECT COUNT(*) FROM attempts") >= ops);
    // Every usage call joins back to the operation (and so the attempts) whose request caused
    // it, by trace id.
    let calls = scalar(
        &history,
        "SELECT COUNT(*) FROM dependency_calls WHERE dependency = 'usage'",
    );
    let joined = scalar(
        &history,
        "SELECT COUNT(*) FROM dependency_calls d WHERE EXISTS (
             SELECT 1 FROM ops o JOIN attempts a USING (op_id)
             WHERE o.trace_id = d.trace_id AND substr(a.traceparent, 4, 32) = d.trace_id)",
    );
    assert!(
        calls > 0 && joined == calls,
        "{joined} of {calls} usage calls joined to an operation and its attempt"
    );
    assert!(
        scalar(
            &history,
            "SELECT COUNT(*) FROM sink_deliveries WHERE sink = 'email' AND key IS NOT NULL"
        ) > 0
    );
    assert!(
        scalar(&history, "SELECT COUNT(DISTINCT instance) FROM attempts") == 2,
        "both replicas served"
    );
    assert!(
        scalar(
            &history,
            "SELECT COUNT(*) FROM violations WHERE invariant = 'one invoice per account and period'"
        ) > 0
    );
    // The duplicates are in the service's own database, not only in reprod's view of it.
    let db = rusqlite::Connection::open(dir.join("invoices.db")).expect("service db");
    let duplicated: i64 = db
        .query_row("SELECT COUNT(*) FROM (SELECT 1 FROM invoices GROUP BY account_id, period HAVING COUNT(*) > 1)", [], |r| r.get(0))
        .expect("query");
    assert_eq!(
        duplicated as u64,
        invariant(&summary, "one invoice per account and period")["violations"]
            .as_u64()
            .unwrap_or(0)
    );
}

#[test]
fn fixed_invoices_hold_under_the_same_load_and_exit_0() {
    let out = TempDir::new();
    let (code, summary, stderr) = json_run(&out, &["--set", "variant=fixed", "--duration", "3s"]);
    assert_eq!(code, Some(0), "{stderr}\n{summary}");
    assert_eq!(summary["verdict"], "pass");
    for name in [
        "one invoice per account and period",
        "one email per invoice",
    ] {
        assert_eq!(invariant(&summary, name)["held"], true);
    }
    assert!(
        summary["ops"]["ok"].as_u64().unwrap_or(0) > 100,
        "{summary}"
    );
}

#[test]
fn the_same_seed_gives_the_same_schedule_keys_and_bodies() {
    let schedule = |out: &TempDir| {
        let (code, _, stderr) = json_run(
            out,
            &["--set", "variant=fixed", "--duration", "1s", "--seed", "99"],
        );
        assert_eq!(code, Some(0), "{stderr}");
        let conn = rusqlite::Connection::open(run_dir(out.path()).join("history.sqlite"))
            .expect("history");
        let mut stmt = conn
            .prepare(
                "SELECT op_id, caller, key, group_id,
                        intended_start_us - (SELECT load_started_us FROM run), trace_id
                 FROM ops ORDER BY op_id",
            )
            .expect("prepare");
        stmt.query_map([], |r| {
            Ok(format!(
                "{} {} {} {} {} {}",
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, String>(5)?
            ))
        })
        .expect("query")
        .collect::<Result<Vec<_>, _>>()
        .expect("rows")
    };
    let (a, b) = (TempDir::new(), TempDir::new());
    let first = schedule(&a);
    let second = schedule(&b);
    assert!(first.len() > 20, "{}", first.len());
    assert_eq!(first, second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naive_invoices_violate_on_postgres_too() {
    let Some(db) = PgDb::fresh().await else {
        return;
    };
    let out = TempDir::new();
    let url = format!("database={}", db.url);
    // Invariant queries run as the least privileged role the server offers: the superuser the
    // URL names drops to pg_read_all_data for them.
    let mut toml = std::fs::read_to_string(invoices()).expect("scenario");
    toml.push_str(
        r#"
[[invariant]]
name = "checks run with least privilege"
sql = "SELECT current_user AS who WHERE current_user <> 'pg_read_all_data'"
key_column = "who"
"#,
    );
    let scenario = out.write("invoices-pg.toml", &toml);
    let (code, summary, stderr) = tokio::task::spawn_blocking({
        let runs = out.path().join("runs");
        move || {
            run_json(
                "run",
                &scenario,
                &runs,
                &["--set", "variant=naive", "--set", &url, "--duration", "3s"],
            )
        }
    })
    .await
    .expect("join");
    db.drop_now().await;
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        invariant(&summary, "one invoice per account and period")["held"],
        false
    );
    assert_eq!(
        invariant(&summary, "checks run with least privilege")["held"],
        true,
        "{summary}"
    );
}

/// Response invariants on top of the shipped scenario: all successful answers for one account
/// carry one invoice id (the naive race hands out two), and no attempt got a 5xx.
#[test]
fn response_invariants_catch_two_ids_for_one_account() {
    let dir = TempDir::new();
    let mut text = std::fs::read_to_string(invoices()).expect("scenario");
    text.push_str(
        r#"
[[invariant]]
name = "one invoice id per account"
agree = "/id"
caller = "api"

[[invariant]]
name = "no 5xx"
no_status = ["5xx"]
"#,
    );
    let scenario = dir.write("invoices-plus.toml", &text);
    let check = |variant: &str| {
        let out = dir.path().join(variant);
        let output = run(&[
            "run",
            scenario.to_str().expect("utf-8"),
            "--set",
            &format!("variant={variant}"),
            "--duration",
            "2s",
            "--json",
            "--out",
            out.to_str().expect("utf-8"),
        ]);
        let summary: Value = serde_json::from_slice(&output.stdout).expect("summary");
        (output.status.code(), summary)
    };
    let (code, naive) = check("naive");
    assert_eq!(code, Some(1));
    let ids = invariant(&naive, "one invoice id per account");
    assert_eq!(ids["held"], false, "{ids}");
    assert!(
        ids["examples"][0]
            .as_str()
            .unwrap_or_default()
            .contains("2 different values at /id"),
        "{ids}"
    );
    assert_eq!(invariant(&naive, "no 5xx")["held"], true);
    let (code, fixed) = check("fixed");
    assert_eq!(code, Some(0), "{fixed}");
    assert_eq!(
        invariant(&fixed, "one invoice id per account")["held"],
        true
    );
}

/// Invariant SQL only reads: a query that would write is refused when the scenario loads, at
/// its line and column, and nothing runs.
#[test]
fn invariant_sql_that_writes_is_refused_before_anything_runs() {
    let dir = TempDir::new();
    let mut toml = std::fs::read_to_string(invoices()).expect("scenario");
    toml.push_str(
        r#"
[[invariant]]
name = "sneaky cleanup"
sql = "DELETE FROM invoices RETURNING account_id"
key_column = "account_id"
"#,
    );
    let scenario = dir.write("invoices-sneaky.toml", &toml);
    let out = dir.path().join("runs");
    let output = run(&[
        "run",
        scenario.to_str().expect("utf-8"),
        "--set",
        "variant=fixed",
        "--duration",
        "1s",
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("invariant \"sneaky cleanup\": DELETE is not a read"),
        "{stderr}"
    );
    assert!(stderr.contains("invoices-sneaky.toml:"), "{stderr}");
    assert!(!out.exists(), "nothing ran");
}

/// Jepsen's counter check on real data: every reconcile request the worker caller sent enqueued
/// one job per account, so each account's job count lies between its confirmed and attempted
/// reconcile operations; a query that doubles the count falls outside and is reported.
#[test]
fn counter_invariants_bound_values_by_confirmed_and_attempted_operations() {
    let dir = TempDir::new();
    let mut toml = std::fs::read_to_string(invoices()).expect("scenario");
    toml.push_str(
        r#"
[[invariant]]
name = "one job per reconcile request"
counter = "SELECT account_id, COUNT(*) AS jobs FROM jobs GROUP BY account_id"
key_column = "account_id"
caller = "worker"

[[invariant]]
name = "doubled on purpose"
counter = "SELECT account_id, COUNT(*) * 2 AS jobs FROM jobs GROUP BY account_id"
key_column = "account_id"
caller = "worker"
"#,
    );
    let scenario = dir.write("invoices-counter.toml", &toml);
    let (code, summary, stderr) = run_json(
        "run",
        &scenario,
        &dir.path().join("runs"),
        &["--set", "variant=fixed", "--duration", "3s"],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        invariant(&summary, "one job per reconcile request")["held"],
        true,
        "{summary}"
    );
    let doubled = invariant(&summary, "doubled on purpose");
    assert_eq!(doubled["held"], false);
    assert!(
        doubled["examples"][0]
            .as_str()
            .unwrap_or_default()
            .contains("value 2 outside [1, 1]"),
        "{doubled}"
    );
}

/// `fresh = true` on PostgreSQL: every run gets a scratch database of its own, made through the
/// server's maintenance database (the database the URL names need not exist), set up by the
/// schema file, used by the services and the invariants, and dropped afterwards. A second run
/// sees nothing of the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_run_gets_a_fresh_postgres_database() {
    let Some(db) = PgDb::fresh().await else {
        return;
    };
    let dir = TempDir::new();
    dir.write(
        "schema.sql",
        "CREATE TABLE marks (k TEXT NOT NULL);\nINSERT INTO marks VALUES ('seed');\n",
    );
    let mut named = url::Url::parse(&db.url).expect("url");
    named.set_path("/reprod_never_created_xyz");
    let prefix = format!("reprod_fresh_{}_", std::process::id());
    let scenario = dir.write(
        "fresh.toml",
        &format!(
            r#"
duration = "500ms"
drain = "0s"
[database]
url = "{named}"
fresh = true
schema = "schema.sql"
scratch_prefix = "{prefix}"
[[service]]
name = "api"
command = ["bench-server"]
prepare = ["psql", "{{database.url}}", "-qc", "INSERT INTO marks VALUES ('run')"]
ready = {{ stdout_prefix = "listening on " }}
[[caller]]
name = "c"
request = {{ path = "/" }}
rate = 10
[[invariant]]
name = "one mark per run"
sql = "SELECT k, COUNT(*) AS n FROM marks GROUP BY k HAVING COUNT(*) > 1"
key_column = "k"
"#
        ),
    );
    for round in ["first", "second"] {
        let out = dir.path().join(round);
        let scenario = scenario.clone();
        let (code, summary, stderr) =
            tokio::task::spawn_blocking(move || run_json("run", &scenario, &out, &[]))
                .await
                .expect("join");
        assert_eq!(code, Some(0), "{round}: {stderr}\n{summary}");
        assert_eq!(invariant(&summary, "one mark per run")["held"], true);
    }
    let admin = sqlx::PgPool::connect(&db.url).await.expect("admin");
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pg_database WHERE datname LIKE $1")
        .bind(format!("{prefix}%"))
        .fetch_one(&admin)
        .await
        .expect("count");
    admin.close().await;
    db.drop_now().await;
    assert_eq!(left, 0, "every scratch database was dropped");
}

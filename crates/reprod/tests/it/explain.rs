//! `reprod explain` on stored runs, `reprod demo` end to end.

use serde_json::Value;

use crate::support::{TempDir, invoices, run, run_dir, run_json, text};

#[test]
fn explain_renders_a_stored_naive_run() {
    let out = TempDir::new();
    let scenario = invoices();
    let output = run(&[
        "run",
        scenario.to_str().expect("utf-8"),
        "--duration",
        "3s",
        "--out",
        out.path().to_str().expect("utf-8"),
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("timeline of acct_"),
        "the run's report carries a timeline:\n{stdout}"
    );
    let dir = run_dir(out.path());
    let dir_s = dir.to_str().expect("utf-8");

    let explained = run(&["explain", dir_s]);
    assert_eq!(
        explained.status.code(),
        Some(0),
        "{}",
        text(&explained.stderr)
    );
    let t = text(&explained.stdout);
    assert!(
        t.contains("\"one invoice per account and period\" was violated"),
        "{t}"
    );
    assert!(
        t.contains("usage called by api op"),
        "dependency calls join to operations:\n{t}"
    );
    assert!(
        t.contains("email delivery caused by"),
        "sink deliveries join to operations:\n{t}"
    );
    // Each answer in its own words: both racing creates answered 201, each with its own id.
    assert!(
        t.lines()
            .any(|l| l.contains(" answered 201 after ") && l.contains(": {\"id\":\"inv_")),
        "answers carry the start of their body:\n{t}"
    );
    // The service's own decisions, from its JSON lines, joined to the operation by trace.
    assert!(
        t.lines().any(|l| l.contains("invoices/")
            && l.contains(", api op ")
            && l.contains(": find invoice acct_")
            && l.ends_with(": none")),
        "the service's decisions join to operations:\n{t}"
    );
    assert!(
        t.lines()
            .any(|l| l.contains(", api op ") && l.contains(": inserted invoice inv_")),
        "{t}"
    );
    let top = t
        .lines()
        .skip_while(|l| !l.starts_with("violating keys"))
        .nth(1)
        .unwrap_or_default();
    assert!(
        top.trim_start().starts_with("overlap"),
        "overlap separates best:\n{t}"
    );

    let json = run(&["explain", dir_s, "--json", "--key", "acct_0"]);
    assert_eq!(json.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(v["key"], "acct_0");
    assert!(v["timeline"].as_array().is_some_and(|t| !t.is_empty()));
    assert!(
        v["comparison"]
            .as_array()
            .is_some_and(|c| c.iter().any(|d| d["name"] == "overlap"))
    );

    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).expect("summary"))
            .expect("json");
    let logs = &summary["service_logs"][0];
    assert_eq!(logs["service"], "invoices", "{summary}");
    assert!(logs["kept"].as_u64().unwrap_or(0) > 100, "{logs}");
    assert_eq!(logs["dropped"], 0, "{logs}");
    // The "listening on" line of each replica is not JSON.
    assert_eq!(logs["unparsable"], 2, "{logs}");
    assert!(
        summary["explanation"]["timeline"].is_array(),
        "summary.json carries the explanation"
    );
    // The timeline is in time order, violations included, each saying who found it: the check
    // during the run (at the moment it first saw it) or the final check (at the end).
    let timeline = summary["explanation"]["timeline"]
        .as_array()
        .expect("timeline");
    let times: Vec<f64> = timeline.iter().filter_map(|e| e["t_ms"].as_f64()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    let violations: Vec<&str> = timeline
        .iter()
        .filter(|e| e["kind"] == "violation")
        .filter_map(|e| e["text"].as_str())
        .collect();
    assert!(!violations.is_empty(), "{timeline:?}");
    assert!(
        violations
            .iter()
            .all(|t| t.contains("first seen by the check during the run")
                || t.contains("(found by the final check)")),
        "{violations:?}"
    );
}

/// A second caller reading keys of its own is no evidence about the race: its keys are left out, the
/// ranked dimensions are the conditions that were on, and each carries the interval of its
/// difference.
#[test]
fn the_comparison_leaves_out_an_unrelated_caller_and_ranks_only_what_separates() {
    let dir = TempDir::new();
    let base = std::fs::read_to_string(invoices()).expect("scenario");
    let scenario = dir.write(
        "two-callers.toml",
        &base.replace(
            "[[caller]]\nname = \"worker\"",
            r#"[[caller]]
name = "other"
request = { method = "GET", path = "/invoices?account_id={key}&period={param.period}" }
arrival = "poisson"
rate = 30
keys = { count = 60, prefix = "solo_" }
timeout = "1s"

[[caller]]
name = "worker""#,
        ),
    );
    assert!(
        base.contains("[[caller]]\nname = \"worker\""),
        "the scenario changed"
    );
    let (code, summary, stderr) = run_json(
        "run",
        &scenario,
        &dir.path().join("runs"),
        &["--duration", "3s"],
    );
    assert_eq!(code, Some(1), "{stderr}\n{summary}");
    let e = &summary["explanation"];
    let unrelated = e["unrelated_keys"].as_u64().unwrap_or(0);
    assert!(
        unrelated > 10,
        "the other caller's keys are left out: {e:#}"
    );
    let dims = e["comparison"].as_array().expect("a comparison");
    let status = |name: &str| {
        dims.iter()
            .find(|d| d["name"] == name)
            .map(|d| d["status"].as_str().unwrap_or("").to_string())
            .unwrap_or_else(|| panic!("{name} is compared: {dims:#?}"))
    };
    assert_eq!(dims[0]["name"], "overlap", "{dims:#?}");
    assert_eq!(status("overlap"), "separates");
    // Off in this scenario: shown apart, never ranked.
    for off in ["queue_delay", "mixed_versions", "dependency_faults"] {
        assert_eq!(status(off), "inactive", "{dims:#?}");
    }
    for d in dims {
        let (lo, hi) = (
            d["difference_ci"][0].as_f64().expect("interval"),
            d["difference_ci"][1].as_f64().expect("interval"),
        );
        let diff =
            d["violating_share"].as_f64().unwrap_or(0.0) - d["clean_share"].as_f64().unwrap_or(0.0);
        assert!(lo <= diff && diff <= hi, "{d}");
        match d["status"].as_str() {
            Some("separates") | Some("goes_with") => assert!(lo > 0.0 || hi < 0.0, "{d}"),
            Some("does_not_separate") => assert!(lo <= 0.0 && hi >= 0.0, "{d}"),
            _ => {}
        }
    }
    // Two replicas serve most overlapping requests: `instances` comes with overlap.
    let instances = dims
        .iter()
        .find(|d| d["name"] == "instances")
        .expect("instances");
    if instances["status"] == "goes_with" {
        assert_eq!(instances["goes_with"], "overlap", "{instances}");
    }
    let text = std::fs::read_to_string(run_dir(&dir.path().join("runs")).join("report.txt"))
        .expect("report");
    assert!(
        text.contains("keys of callers that touched no violating key left out")
            && text.contains("conditions off in this run, not ranked: "),
        "{text}"
    );
}

#[test]
fn explain_says_what_is_wrong_with_a_directory() {
    let dir = TempDir::new();
    let missing = dir.path().join("nope");
    let output = run(&["explain", missing.to_str().expect("utf-8")]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("is not a directory"));
    dir.write("notes.txt", "hello");
    let output = run(&["explain", dir.path().to_str().expect("utf-8")]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("has no history.sqlite") && stderr.contains("notes.txt"),
        "{stderr}"
    );
}

#[test]
fn demo_shows_naive_breaking_and_fixed_holding() {
    let out = TempDir::new();
    let output = run(&["demo", "--out", out.path().to_str().expect("utf-8")]);
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&output.stderr)
    );
    assert!(stdout.contains("As expected"), "{stdout}");
    assert!(stdout.contains("timeline of acct_"), "{stdout}");
    let row = stdout
        .lines()
        .find(|l| l.starts_with("one invoice per account and period"))
        .expect("row");
    assert!(
        row.contains("violations") && row.trim_end().ends_with("held"),
        "{row}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_on_postgres_leaves_no_scratch_database() {
    let admin = match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => url,
        _ => {
            eprintln!("SKIPPED (PostgreSQL half): DATABASE_URL is not set to a postgres:// URL");
            return;
        }
    };
    let out = TempDir::new();
    let out_s = out.path().to_str().expect("utf-8").to_string();
    let admin_arg = admin.clone();
    let output = tokio::task::spawn_blocking(move || {
        run(&["demo", "--database", &admin_arg, "--out", &out_s])
    })
    .await
    .expect("join");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    let pool = sqlx::PgPool::connect(&admin).await.expect("admin");
    let left: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM pg_database WHERE datname LIKE 'reprod_demo_%'")
            .fetch_one(&pool)
            .await
            .expect("query");
    pool.close().await;
    assert_eq!(left, 0, "the demo drops its scratch databases");
}

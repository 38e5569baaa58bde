//! The gallery's reference bugs, each through the binary: the naive variant breaks its
//! invariant (exit 1), the fixed one holds (exit 0), on SQLite and on PostgreSQL, and `isolate`
//! names the condition the bug needs.

use serde_json::Value;

use crate::support::{PgDb, TempDir, root, run_json};

fn gallery(name: &str) -> std::path::PathBuf {
    root()
        .join("scenarios/gallery")
        .join(format!("{name}.toml"))
}

/// Violating keys over all invariants, plus one per exceeded threshold.
fn violations(summary: &Value) -> u64 {
    let keys: u64 = summary["invariants"]
        .as_array()
        .map(|i| i.iter().filter_map(|i| i["violations"].as_u64()).sum())
        .unwrap_or(0);
    let thresholds = summary["thresholds"]
        .as_array()
        .map(|t| t.iter().filter(|t| t["held"] == false).count() as u64)
        .unwrap_or(0);
    keys + thresholds
}

/// Runs gallery scenario `name` naive and fixed (with `extra` arguments): naive must exit 1
/// with violations, fixed exit 0. The naive summary, for the row's own checks.
fn naive_breaks_and_fixed_holds(name: &str, extra: &[String]) -> Value {
    let out = TempDir::new();
    let mut summaries = Vec::new();
    for (variant, expected) in [("naive", 1), ("fixed", 0)] {
        let mut args = vec!["--set".to_string(), format!("variant={variant}")];
        args.extend(extra.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, summary, stderr) = run_json("run", &gallery(name), out.path(), &args);
        assert_eq!(
            code,
            Some(expected),
            "{name} {variant}: {stderr}\n{summary}"
        );
        assert_eq!(summary["ops"]["failed"], 0, "{name} {variant}: {summary}");
        summaries.push(summary);
    }
    assert!(violations(&summaries[0]) > 0, "{}", summaries[0]);
    summaries.swap_remove(0)
}

/// The same on PostgreSQL, a fresh database per run; `None` when `DATABASE_URL` is not set.
async fn naive_breaks_and_fixed_holds_on_postgres(name: &'static str) -> Option<()> {
    // Each variant gets its own empty database: fixed must not see naive's rows.
    let naive = PgDb::fresh().await?;
    let fixed = PgDb::fresh().await?;
    let urls = [naive.url.clone(), fixed.url.clone()];
    let checked = tokio::task::spawn_blocking(move || {
        let out = TempDir::new();
        for ((variant, expected), url) in [("naive", 1), ("fixed", 0)].into_iter().zip(urls) {
            let database = format!("database={url}");
            let args =
                ["--set", &database, "--set", &format!("variant={variant}")].map(str::to_string);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (code, summary, stderr) = run_json("run", &gallery(name), out.path(), &args);
            assert_eq!(
                code,
                Some(expected),
                "{name} {variant}: {stderr}\n{summary}"
            );
            if variant == "naive" {
                assert!(violations(&summary) > 0, "{summary}");
            }
        }
    })
    .await;
    naive.drop_now().await;
    fixed.drop_now().await;
    checked.expect("the runs");
    Some(())
}

/// `reprod isolate` on gallery scenario `name`'s naive variant, without the swarm: its JSON.
fn isolate_naive(name: &str) -> Value {
    let out = TempDir::new();
    let (code, json, stderr) = run_json(
        "isolate",
        &gallery(name),
        out.path(),
        &["--set", "variant=naive", "--swarm", "0"],
    );
    assert_eq!(code, Some(0), "{name}: {stderr}\n{json}");
    json
}

/// Asserts that `isolate` called exactly `needed` necessary (and `not_needed` not necessary),
/// and that the minimal set is `needed`.
fn assert_needs(json: &Value, needed: &[&str], not_needed: &[&str]) {
    let verdict = |name: &str| {
        json["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == name))
            .map(|c| c["verdict"].as_str().unwrap_or("").to_string())
            .unwrap_or_else(|| panic!("{name} in {json}"))
    };
    for name in needed {
        assert_eq!(verdict(name), "necessary", "{name}: {json}");
    }
    for name in not_needed {
        assert_eq!(verdict(name), "not necessary", "{name}: {json}");
    }
    assert_eq!(json["minimal"], serde_json::json!(needed), "{json}");
}

/// Overlapping updates: concurrent credits on one balance lose one of two on naive.
#[test]
fn lost_update_naive_loses_credits_and_fixed_keeps_them_on_sqlite() {
    let naive = naive_breaks_and_fixed_holds("lost-update", &[]);
    let example = naive["invariants"][0]["examples"][0].as_str().unwrap_or("");
    assert!(
        example.contains("outside ["),
        "a balance below its confirmed credits: {example}"
    );
}

#[tokio::test]
async fn lost_update_naive_loses_credits_and_fixed_keeps_them_on_postgres() {
    naive_breaks_and_fixed_holds_on_postgres("lost-update").await;
}

/// Cache divergence: a replica that did not serve a plan change keeps billing the old price.
#[test]
fn stale_cache_naive_bills_old_prices_and_fixed_does_not_on_sqlite() {
    let naive = naive_breaks_and_fixed_holds("stale-cache", &[]);
    let example = naive["invariants"][0]["examples"][0].as_str().unwrap_or("");
    assert!(
        example.contains("billed=1000, plan_price=2000"),
        "{example}"
    );
}

#[tokio::test]
async fn stale_cache_naive_bills_old_prices_and_fixed_does_not_on_postgres() {
    naive_breaks_and_fixed_holds_on_postgres("stale-cache").await;
}

/// Queue delay changing state: send jobs that waited past a void email voided documents.
#[test]
fn stale_send_naive_sends_voided_documents_and_fixed_skips_them_on_sqlite() {
    let naive = naive_breaks_and_fixed_holds("stale-send", &[]);
    assert_eq!(
        naive["invariants"][0]["violations"], 30,
        "every account: {naive}"
    );
    // The timeline says how long the job waited.
    let timeline: Vec<&str> = naive["explanation"]["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|e| e["text"].as_str())
        .collect();
    assert!(
        timeline
            .iter()
            .any(|t| t.contains("sent to documents/0 (v1), after 1500 ms in the queue")),
        "{timeline:?}"
    );
}

#[tokio::test]
async fn stale_send_naive_sends_voided_documents_and_fixed_skips_them_on_postgres() {
    naive_breaks_and_fixed_holds_on_postgres("stale-send").await;
}

/// `isolate` on the naive stale send: the queue delay is what lets the job outlive the void.
#[test]
fn isolate_names_queue_delay_for_the_stale_send() {
    assert_needs(&isolate_naive("stale-send"), &["queue_delay"], &[]);
}

/// Mixed deployment state: a refund on the other release refunds cents as dollars, or dollars
/// as cents.
#[test]
fn mixed_rollout_naive_refunds_wrong_amounts_and_fixed_does_not_on_sqlite() {
    let naive = naive_breaks_and_fixed_holds("mixed-rollout", &[]);
    for example in naive["invariants"][0]["examples"]
        .as_array()
        .expect("examples")
    {
        let e = example.as_str().unwrap_or("");
        assert!(
            e.contains("paid_on=v1, refunded_on=v2") || e.contains("paid_on=v2, refunded_on=v1"),
            "only a refund on the other release is wrong: {e}"
        );
    }
}

#[tokio::test]
async fn mixed_rollout_naive_refunds_wrong_amounts_and_fixed_does_not_on_postgres() {
    naive_breaks_and_fixed_holds_on_postgres("mixed-rollout").await;
}

/// `isolate` on the naive rollout: two replicas, and two releases among them.
#[test]
fn isolate_names_instances_and_mixed_versions_for_the_rollout() {
    assert_needs(
        &isolate_naive("mixed-rollout"),
        &["instances", "mixed_versions"],
        &[],
    );
}

/// Resource contention: requests that queued for a held connection are retried, and the
/// abandoned ones still store their receipt.
#[test]
fn pool_pressure_naive_duplicates_receipts_and_fixed_does_not_on_sqlite() {
    let naive = naive_breaks_and_fixed_holds("pool-pressure", &[]);
    assert!(
        naive["attempts"]["retries"].as_u64().unwrap_or(0) > 0,
        "the clients retried: {naive}"
    );
    // More receipts than the one operation could have asked for: "value 2 outside [1, 1]",
    // or 3 for an operation whose every attempt timed out ("outside [0, 1]").
    let example = naive["invariants"][0]["examples"][0].as_str().unwrap_or("");
    assert!(
        example.contains("outside [1, 1]") || example.contains("outside [0, 1]"),
        "{example}"
    );
}

#[tokio::test]
async fn pool_pressure_naive_duplicates_receipts_and_fixed_does_not_on_postgres() {
    naive_breaks_and_fixed_holds_on_postgres("pool-pressure").await;
}

/// Retries multiplying work: after a half-second slowdown the naive service's goodput never
/// recovers, while it sends more attempts than ever; the fixed one recovers at once.
#[test]
fn retry_storm_naive_collapses_and_fixed_recovers_on_sqlite() {
    let naive = naive_breaks_and_fixed_holds("retry-storm", &[]);
    let goodput = naive["goodput_rps"].as_f64().expect("goodput");
    let throughput = naive["throughput_rps"].as_f64().expect("throughput");
    assert!(goodput < 45.0 && throughput > goodput, "{naive}");
    assert!(
        naive["attempts"]["total"].as_u64() > naive["ops"]["total"].as_u64(),
        "retries multiplied the work: {naive}"
    );
}

#[tokio::test]
async fn retry_storm_naive_collapses_and_fixed_recovers_on_postgres() {
    naive_breaks_and_fixed_holds_on_postgres("retry-storm").await;
}

/// `isolate` on the naive lost update: overlap is necessary, retries are not.
#[test]
fn isolate_names_overlap_for_the_lost_update() {
    assert_needs(&isolate_naive("lost-update"), &["overlap"], &["retries"]);
}

/// `isolate` on the naive stale cache: the bug needs two instances and the plan changes
/// arriving while charges go on; each alone is necessary.
#[test]
fn isolate_names_instances_and_concurrent_callers_for_the_stale_cache() {
    assert_needs(
        &isolate_naive("stale-cache"),
        &["instances", "concurrent_callers"],
        &[],
    );
}

/// `reprod demo --gallery` runs every gallery scenario, naive and fixed; an unknown demo name
/// is refused with the names there are.
#[test]
fn demo_gallery_runs_each_reference_bug_and_says_it_went_as_expected() {
    let out = TempDir::new();
    let output = crate::support::run(&[
        "demo",
        "--gallery",
        "--json",
        "--quiet",
        "--out",
        out.path().to_str().expect("utf-8"),
    ]);
    let stderr = crate::support::text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let json: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(json["as_expected"], true, "{json}");
    let names: Vec<&str> = json["demos"]
        .as_array()
        .expect("demos")
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "lost-update",
            "stale-cache",
            "stale-send",
            "mixed-rollout",
            "pool-pressure",
            "retry-storm"
        ]
    );
    for d in json["demos"].as_array().expect("demos") {
        assert_eq!(d["naive"]["verdict"], "fail", "{d}");
        assert_eq!(d["fixed"]["verdict"], "pass", "{d}");
    }
    let output = crate::support::run(&["demo", "no-such-bug"]);
    let stderr = crate::support::text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "invoices, lost-update, stale-cache, stale-send, mixed-rollout, pool-pressure, retry-storm"
        ),
        "{stderr}"
    );
}

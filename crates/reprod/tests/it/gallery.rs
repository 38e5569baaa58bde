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

fn violations(summary: &Value) -> u64 {
    summary["invariants"]
        .as_array()
        .map(|i| i.iter().filter_map(|i| i["violations"].as_u64()).sum())
        .unwrap_or(0)
}

/// Overlapping updates: concurrent credits on one balance lose one of two on naive.
#[test]
fn lost_update_naive_loses_credits_and_fixed_keeps_them_on_sqlite() {
    let out = TempDir::new();
    let (code, summary, stderr) = run_json(
        "run",
        &gallery("lost-update"),
        out.path(),
        &["--set", "variant=naive"],
    );
    assert_eq!(code, Some(1), "{stderr}\n{summary}");
    assert!(violations(&summary) > 0, "{summary}");
    let example = summary["invariants"][0]["examples"][0]
        .as_str()
        .unwrap_or("");
    assert!(
        example.contains("outside ["),
        "a balance below its confirmed credits: {example}"
    );
    let (code, summary, stderr) = run_json(
        "run",
        &gallery("lost-update"),
        out.path(),
        &["--set", "variant=fixed"],
    );
    assert_eq!(code, Some(0), "{stderr}\n{summary}");
    assert_eq!(summary["ops"]["failed"], 0, "{summary}");
}

#[tokio::test]
async fn lost_update_naive_loses_credits_and_fixed_keeps_them_on_postgres() {
    for (variant, expected) in [("naive", 1), ("fixed", 0)] {
        let Some(db) = PgDb::fresh().await else {
            return;
        };
        let out = TempDir::new();
        let args = [
            "--set".to_string(),
            format!("database={}", db.url),
            "--set".to_string(),
            format!("variant={variant}"),
        ];
        let (path, dir) = (gallery("lost-update"), out.path().to_path_buf());
        let (code, summary, stderr) = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_json("run", &path, &dir, &args)
        })
        .await
        .expect("join");
        db.drop_now().await;
        assert_eq!(code, Some(expected), "{variant}: {stderr}\n{summary}");
        if variant == "naive" {
            assert!(violations(&summary) > 0, "{summary}");
        }
    }
}

/// `isolate` on the naive lost update: overlap is necessary, retries are not.
#[test]
fn isolate_names_overlap_for_the_lost_update() {
    let out = TempDir::new();
    let (code, json, stderr) = run_json(
        "isolate",
        &gallery("lost-update"),
        out.path(),
        &["--set", "variant=naive", "--swarm", "0"],
    );
    assert_eq!(code, Some(0), "{stderr}\n{json}");
    let verdict = |name: &str| {
        json["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == name))
            .map(|c| c["verdict"].as_str().unwrap_or("").to_string())
            .unwrap_or_else(|| panic!("{name} in {json}"))
    };
    assert_eq!(verdict("overlap"), "necessary", "{json}");
    assert_eq!(verdict("retries"), "not necessary", "{json}");
    assert_eq!(json["minimal"], serde_json::json!(["overlap"]), "{json}");
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
    assert!(names.contains(&"lost-update"), "{names:?}");
    for d in json["demos"].as_array().expect("demos") {
        assert_eq!(d["naive"]["verdict"], "fail", "{d}");
        assert_eq!(d["fixed"]["verdict"], "pass", "{d}");
    }
    let output = crate::support::run(&["demo", "no-such-bug"]);
    let stderr = crate::support::text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("invoices, lost-update"), "{stderr}");
}

//! `reprod isolate` on the shipped scenario: the JSON contract, the fixed variant's baseline that
//! never reproduces, and the naive variant's conditions told apart.

use serde_json::Value;

use crate::support::{TempDir, invoices, run_json};

/// Runs `reprod isolate --json` on the invoice scenario: (exit code, JSON, stderr, the directory
/// that holds the trials).
fn isolate(extra: &[&str]) -> (Option<i32>, Value, String, TempDir) {
    let out = TempDir::new();
    let (code, json, stderr) = run_json("isolate", &invoices(), out.path(), extra);
    (code, json, stderr, out)
}

#[test]
fn isolate_says_when_the_baseline_never_reproduces() {
    let (code, json, stderr, _out) = isolate(&[
        "--set",
        "variant=fixed",
        "--trials",
        "2",
        "--duration",
        "2s",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("the baseline never reproduced in 2 trial(s)"),
        "{stderr}"
    );
    assert_eq!(json["baseline"]["trials"], 2);
    assert_eq!(json["baseline"]["failures"], 0);
}

#[test]
fn isolate_tells_the_naive_conditions_apart() {
    let (code, json, stderr, _out) = isolate(&[
        "--set",
        "variant=naive",
        "--trials",
        "2",
        "--swarm",
        "6",
        "--duration",
        "2s",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(json["baseline"]["failures"], 2, "{json}");
    // Staging runs the callers one after another (concurrent_callers off): a reconciliation
    // job, which runs after its `POST /reconcile` was answered 202, can no longer meet an API
    // create on the same account, so with every condition off nothing breaks.
    let baseline_rate = json["baseline"]["key_rate"].as_f64().expect("rate");
    assert_eq!(json["staging"]["failures"], 0, "{json}");
    let conditions = json["conditions"].as_array().expect("conditions");
    let names: Vec<&str> = conditions
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "overlap",
            "slow_dependency",
            "retries",
            "hot_keys",
            "instances",
            "concurrent_callers"
        ]
    );
    for c in conditions {
        for field in ["trials", "failures", "necessary"] {
            assert!(!c[field].is_null(), "{field} missing in {c}");
        }
    }
    let rate = |c: &Value| c["key_rate"].as_f64().expect("key_rate");
    assert!(
        rate(&conditions[0]) < baseline_rate / 2.0,
        "without overlap far fewer keys break: {json}"
    );
    let minimal: Vec<&str> = json["minimal"]
        .as_array()
        .expect("minimal")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let command = json["command"].as_str().expect("command");
    // The naive race needs two requests on one account at once. Overlap is what usually
    // supplies them, but it amplifies rather than being necessary (retries, hot keys and the
    // batch running beside the API put requests on one key together too), so the greedy search
    // may drop it when one trial without it still reproduces. The minimal set must keep
    // something that makes same-key concurrency.
    assert!(
        ["overlap", "retries", "hot_keys", "concurrent_callers"]
            .iter()
            .any(|c| minimal.contains(c)),
        "{json}"
    );
    assert!(
        command.ends_with(&format!("--set variant=naive --only {}", minimal.join(","))),
        "the command reruns the minimal set: {command}"
    );
    // Each member of the minimal set the bug did not need has its alternative: the minimal set
    // found without it, which never contains it.
    for alt in json["alternatives"].as_array().expect("alternatives") {
        let without = alt["without"].as_str().expect("without");
        assert!(minimal.contains(&without), "{alt}");
        let other: Vec<&str> = alt["minimal"]
            .as_array()
            .expect("minimal")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(!other.contains(&without), "{alt}");
        assert!(
            alt["command"]
                .as_str()
                .is_some_and(|c| c.contains("--set variant=naive")),
            "{alt}"
        );
    }
    // The swarm: six seeded random subsets, each condition on in some and off in others; the
    // counts add up, and overlap (without which all but a trace of the keys stay clean) shows
    // a higher per-key rate with it on, never a significantly lower one (six trials seldom
    // make the difference significant: its interval is over trials, not keys).
    let swarm = &json["swarm"];
    let swarm_trials = swarm["trials"].as_u64().expect("swarm trials");
    let swarm_failures = swarm["failures"].as_u64().expect("swarm failures");
    assert!(swarm_trials <= 6 && swarm_trials > 0, "{swarm}");
    let swarm_conditions = swarm["conditions"].as_array().expect("swarm conditions");
    assert_eq!(swarm_conditions.len(), 6, "{swarm}");
    for c in swarm_conditions {
        let n = |side: &str, f: &str| c[side][f].as_u64().expect("count");
        assert_eq!(
            n("with", "trials") + n("without", "trials"),
            swarm_trials,
            "{c}"
        );
        assert_eq!(
            n("with", "failures") + n("without", "failures"),
            swarm_failures,
            "{c}"
        );
        assert!(
            ["trigger", "suppressor", "irrelevant", "undecided"]
                .contains(&c["class"].as_str().expect("class")),
            "{c}"
        );
        for other in c["confounded_with"].as_array().expect("confounded_with") {
            let twin = swarm_conditions
                .iter()
                .find(|d| &d["name"] == other)
                .expect("a confounded condition is a condition");
            assert!(
                twin["confounded_with"]
                    .as_array()
                    .is_some_and(|t| t.contains(&c["name"])),
                "confounding is mutual: {c} {twin}"
            );
        }
    }
    let swarm_overlap = &swarm_conditions[0];
    assert_eq!(swarm_overlap["name"], "overlap");
    let rate_of = |side: &str| swarm_overlap[side]["key_rate"].as_f64().expect("key_rate");
    if swarm_overlap["with"]["trials"] != 0 && swarm_overlap["without"]["trials"] != 0 {
        assert!(rate_of("with") > rate_of("without"), "{swarm_overlap}");
    }
    assert_ne!(swarm_overlap["key_rate"], "lowers", "{swarm_overlap}");
    // Groups and swarm trials, whose rates are reported, ran to the end; a trial that stopped
    // at its first violation (the minimal-set searches') did so with a violation to show.
    let status = |dir: &Value| -> (String, String) {
        let dir = std::path::PathBuf::from(dir.as_str().expect("run dir"));
        let text = std::fs::read_to_string(dir.join("summary.json")).expect("summary.json");
        let summary: Value = serde_json::from_str(&text).expect("summary JSON");
        (
            summary["status"].as_str().unwrap_or_default().to_string(),
            summary["verdict"].as_str().unwrap_or_default().to_string(),
        )
    };
    let mut reported: Vec<&Value> = Vec::new();
    for group in std::iter::once(&json["baseline"])
        .chain(conditions.iter())
        .chain([&json["staging"], swarm])
    {
        reported.extend(group["run_dirs"].as_array().expect("run_dirs"));
    }
    for dir in &reported {
        assert_eq!(status(dir).0, "completed", "{dir}");
    }
    let isolate_dir = std::path::PathBuf::from(json["isolate_dir"].as_str().expect("dir"));
    for entry in std::fs::read_dir(&isolate_dir)
        .expect("isolate dir")
        .flatten()
    {
        let summary = entry.path().join("summary.json");
        if summary.exists() {
            let dir = Value::String(entry.path().display().to_string());
            let (status, verdict) = status(&dir);
            if status == "stopped_at_violation" {
                assert_eq!(verdict, "fail", "{dir}");
            }
        }
    }
    // Each invariant gets its own answer from the same trials.
    let per_invariant: Vec<&str> = json["invariants"]
        .as_array()
        .expect("invariants")
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert_eq!(
        per_invariant,
        [
            "one invoice per account and period",
            "one email per invoice"
        ]
    );
    assert!(
        json["trials_run"].as_u64() <= json["trials_bound"].as_u64(),
        "the announced bound holds: {json}"
    );
    // isolate.html as a browser shows it.
    let dir = std::path::PathBuf::from(json["isolate_dir"].as_str().expect("isolate_dir"));
    assert!(dir.join("junit.xml").exists() && dir.join("isolation.json").exists());
    if let Some(dom) =
        crate::outputs::render_in_chromium(&dir.join("isolate.html"), &dir.join("isolate.png"))
    {
        for id in ["share-0", "rate-0", "share-1", "share-2"] {
            assert!(dom.contains(&format!("<svg id=\"{id}\"")), "no {id} plot");
        }
        assert!(
            dom.matches("class=\"bar\"").count() >= 7 * 2,
            "a bar per group"
        );
    }
}

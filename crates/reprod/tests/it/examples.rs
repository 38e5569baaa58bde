//! The examples under `scenarios/examples/` run as shipped: each is a service nobody here wrote
//! (its own language, its own schema) with a real bug, and the scenario must find that bug
//! without a wrapper script — and must not find it where the service is correct.

use std::path::PathBuf;

use crate::support::{TempDir, run_json, scalar};

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../scenarios/examples")
        .join(name)
}

#[test]
fn the_shortener_example_finds_duplicate_links_with_no_wrapper_script() {
    let dir = TempDir::new();
    let out = dir.path().join("runs");
    let scenario = example("shortener/shortener.toml");
    let (code, summary, stderr) = run_json("run", &scenario, &out, &[]);
    assert_eq!(code, Some(1), "the race is found: {stderr}\n{summary}");
    assert_eq!(summary["status"], "completed", "{summary}");
    assert_eq!(
        summary["setup"]["requests"], 90,
        "register, log in and make a fixture link for each of 30 users: {summary}"
    );
    let ops = summary["ops"]["total"].as_u64().unwrap_or(0);
    assert_eq!(
        summary["ops"]["ok"].as_u64(),
        Some(ops),
        "every create carried its user's token and every visit followed a fixture link: {summary}"
    );
    let history = crate::support::run_dir(&out).join("history.sqlite");
    let violating = scalar(
        &history,
        "SELECT COUNT(DISTINCT key) FROM violations WHERE key LIKE 'user_%'",
    );
    assert!(
        violating > 0,
        "duplicates are reported by user, the scenario's key: {summary}"
    );
    assert_eq!(
        scalar(
            &history,
            "SELECT COUNT(*) FROM violations v WHERE NOT EXISTS \
             (SELECT 1 FROM ops o WHERE o.key = v.key AND o.caller = 'creators')"
        ),
        0,
        "each duplicate belongs to a user the creators caller touched"
    );
}

#[test]
fn the_shortener_example_passes_once_the_service_takes_a_lock() {
    // The same service with its check-then-insert in one write transaction (BEGIN IMMEDIATE takes
    // SQLite's write lock before the check): the identical load must now pass, with every create
    // answered, so the failure above is the race and not the harness.
    let dir = TempDir::new();
    let mut fixed =
        std::fs::read_to_string(example("shortener/shortener.py")).expect("the example");
    for (before, after) in [
        (
            "            alias = body.get(\"alias\")\n",
            "            alias = body.get(\"alias\")\n            db.execute(\"BEGIN IMMEDIATE\")\n",
        ),
        (
            "            if existing:\n",
            "            if existing:\n                db.execute(\"COMMIT\")\n",
        ),
        (
            "            return self.answer(201, {\"id\": cur.lastrowid, \"alias\": alias})\n",
            "            db.execute(\"COMMIT\")\n            return self.answer(201, {\"id\": cur.lastrowid, \"alias\": alias})\n",
        ),
    ] {
        assert!(
            fixed.contains(before),
            "the example's create handler changed; update this test: {before}"
        );
        fixed = fixed.replace(before, after);
    }
    dir.write("shortener.py", &fixed);
    let toml = std::fs::read_to_string(example("shortener/shortener.toml")).expect("example");
    let scenario = dir.write("shortener.toml", &toml);
    let out = dir.path().join("runs");
    let (code, summary, stderr) = run_json("run", &scenario, &out, &[]);
    assert_eq!(code, Some(0), "{stderr}\n{summary}");
    assert_eq!(summary["verdict"], "pass", "{summary}");
    let ops = summary["ops"]["total"].as_u64().unwrap_or(0);
    assert!(ops >= 100, "{summary}");
    assert_eq!(summary["ops"]["ok"].as_u64(), Some(ops), "{summary}");
}

#[test]
fn the_shortener_example_reads_its_users_from_a_file() {
    // users.csv holds a name and a password per user (one with quotes and a comma in it): the
    // names are the keys — in requests, in the history and in the violations — and each
    // password reaches that user's register and login as {key.password}.
    let dir = TempDir::new();
    let out = dir.path().join("runs");
    let scenario = example("shortener/from-file.toml");
    let (code, summary, stderr) = run_json("run", &scenario, &out, &[]);
    assert_eq!(code, Some(1), "the race is found: {stderr}\n{summary}");
    let users = std::fs::read_to_string(example("shortener/users.csv")).expect("users.csv");
    let names: Vec<&str> = users
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').next())
        .collect();
    assert_eq!(names.len(), 30);
    assert_eq!(
        summary["setup"]["requests"], 60,
        "a register and a login per user in the file: {summary}"
    );
    let ops = summary["ops"]["total"].as_u64().unwrap_or(0);
    assert_eq!(
        summary["ops"]["ok"].as_u64(),
        Some(ops),
        "every create carried the token its user's password got: {summary}"
    );
    let history = crate::support::run_dir(&out).join("history.sqlite");
    let listed = names
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        scalar(
            &history,
            &format!("SELECT COUNT(*) FROM ops WHERE key NOT IN ({listed})")
        ),
        0,
        "operations are recorded under the file's keys"
    );
    assert!(
        scalar(
            &history,
            &format!("SELECT COUNT(DISTINCT key) FROM ops WHERE key IN ({listed})")
        ) > 20,
        "the load spread over the file's users"
    );
    let violating = scalar(
        &history,
        &format!("SELECT COUNT(DISTINCT key) FROM violations WHERE key IN ({listed})"),
    );
    assert!(
        violating > 0,
        "duplicates are reported by user name: {summary}"
    );
    assert_eq!(
        scalar(&history, "SELECT COUNT(*) FROM violations"),
        scalar(
            &history,
            &format!("SELECT COUNT(*) FROM violations WHERE key IN ({listed})")
        ),
        "every violation is a user from the file"
    );
}

//! Data-driven scenario tests: every `test_data/ok/*.toml` must load (and `test_data/ok/NAME.txt`
//! holds what it loads to, in short), every `test_data/err/*.toml` must fail with exactly the
//! text in `test_data/err/NAME.err` — the message a user sees. `UPDATE_EXPECT=1` rewrites the
//! expected files from the current output.

use std::path::{Path, PathBuf};

fn cases(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("test_data")
        .join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("test_data dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no cases in {}", dir.display());
    files
}

fn relative(path: &Path) -> String {
    path.strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .expect("under the crate")
        .display()
        .to_string()
}

fn check(expected_path: &Path, actual: &str) -> Result<(), String> {
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(expected_path, actual).expect("write expectation");
        return Ok(());
    }
    let expected = std::fs::read_to_string(expected_path).unwrap_or_default();
    if expected == actual {
        Ok(())
    } else {
        Err(format!(
            "{}\n--- expected ---\n{expected}\n--- actual ---\n{actual}",
            expected_path.display()
        ))
    }
}

fn load(path: &Path) -> Result<reprod_scenario::Scenario, reprod_scenario::ScenarioError> {
    let text = std::fs::read_to_string(path).expect("read case");
    reprod_scenario::parse(&relative(path), &text, &[])
}

fn describe(s: &reprod_scenario::Scenario) -> String {
    let conditions: Vec<&str> = s.active_conditions().iter().map(|c| c.name()).collect();
    let callers: Vec<String> = s
        .callers
        .iter()
        .map(|c| {
            format!(
                "{} -> {} {:?} keys={}x{:?} overlap={} attempts={}",
                c.name,
                s.services[c.service].name,
                c.arrival,
                c.keys.count,
                c.keys.distribution,
                c.overlap.k,
                c.retry.attempts
            )
        })
        .collect();
    format!(
        "name: {}\nseed: {}\nduration: {:?}\nmax_ops: {}\nconditions: {}\ncallers:\n  {}\n",
        s.name,
        s.seed,
        s.duration,
        s.max_ops,
        conditions.join(", "),
        callers.join("\n  ")
    )
}

#[test]
fn ok_scenarios_load() {
    let mut failures = Vec::new();
    for case in cases("ok") {
        match load(&case) {
            Ok(s) => {
                if let Err(e) = check(&case.with_extension("txt"), &describe(&s)) {
                    failures.push(e);
                }
            }
            Err(e) => failures.push(format!("{}: unexpected error:\n{e}", case.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn bad_scenarios_are_reported_where_they_are_wrong() {
    let mut failures = Vec::new();
    for case in cases("err") {
        match load(&case) {
            Ok(_) => failures.push(format!("{}: loaded, but should not", case.display())),
            Err(e) => {
                // Every problem says what to write instead, not only what is wrong.
                for d in e.diagnostics.iter().filter(|d| d.hint.is_none()) {
                    failures.push(format!(
                        "{}:{}:{}: {:?} has no hint",
                        case.display(),
                        d.line,
                        d.column,
                        d.message
                    ));
                }
                if let Err(e) = check(&case.with_extension("err"), &format!("{e}\n")) {
                    failures.push(e);
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_shipped_invoice_scenario_loads_with_its_contract() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios/invoices.toml");
    let s = reprod_scenario::load(&path, &[("variant".into(), "fixed".into())]).expect("loads");
    let params: Vec<&str> = s.params.iter().map(|(k, _)| k.as_str()).collect();
    assert!(params.contains(&"variant") && params.contains(&"database"));
    let names: Vec<&str> = s.invariants.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "one invoice per account and period",
            "one email per invoice"
        ]
    );
    let active: Vec<&str> = s.active_conditions().iter().map(|c| c.name()).collect();
    for c in [
        "overlap",
        "retries",
        "hot_keys",
        "instances",
        "slow_dependency",
        "concurrent_callers",
    ] {
        assert!(active.contains(&c), "{c} should be on: {active:?}");
    }
    let err =
        reprod_scenario::load(&path, &[("nope".into(), "1".into())]).expect_err("unknown param");
    assert!(
        err.to_string().contains("declares no parameter \"nope\""),
        "{err}"
    );
}

#[test]
fn staging_and_without_neutralise_conditions() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios/invoices.toml");
    let mut s = reprod_scenario::load(&path, &[]).expect("loads");
    s.neutralize(reprod_scenario::Condition::HotKeys);
    assert!(!s.is_active(reprod_scenario::Condition::HotKeys));
    assert!(s.is_active(reprod_scenario::Condition::Overlap));
    s.keep_only(&[]);
    assert!(s.active_conditions().is_empty());
    assert!(
        s.serialize_keys,
        "staging runs one operation per key at a time"
    );
    assert!(s.services.iter().all(|svc| svc.replicas == 1));
    assert!(s.callers.iter().all(|c| c.retry.attempts == 1));
    assert!(s.dependencies.iter().all(|d| d.latency.is_none()));
}

/// `concurrent_callers` off: the API's 6 s of traffic, then the scenario's 3 s drain, then the
/// batch, still spread over 2 s; the duration holds both.
#[test]
fn callers_one_after_another_keep_their_operations_in_slices_of_their_own() {
    use reprod_scenario::{Arrival, Condition};
    use std::time::Duration;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios/invoices.toml");
    let mut s = reprod_scenario::load(&path, &[]).expect("loads");
    let before = s.clone();
    s.neutralize(Condition::ConcurrentCallers);
    assert!(!s.is_active(Condition::ConcurrentCallers));
    let secs = Duration::from_secs;
    match (&s.callers[0].arrival, &s.callers[1].arrival) {
        (Arrival::Poisson { start, stop, .. }, Arrival::Batch { at, spread }) => {
            assert_eq!((*start, *stop), (Duration::ZERO, None));
            // The API's 6 s (its last overlap window cut where the run cut it), the 3 s drain,
            // then the batch, cut where the run would have cut it.
            assert_eq!(*at, secs(9));
            assert_eq!(*spread, secs(2));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.callers[0].until, Some(secs(6)));
    assert_eq!(s.callers[1].until, Some(secs(11)));
    assert_eq!(s.duration, secs(11));
    // Nothing else changed: the same callers, keys, rates and the other conditions.
    let mut same = s.clone();
    same.callers = before.callers.clone();
    same.duration = before.duration;
    assert_eq!(format!("{same:?}"), format!("{before:?}"));
    for c in Condition::ALL
        .into_iter()
        .filter(|c| *c != Condition::ConcurrentCallers)
    {
        assert_eq!(s.is_active(c), before.is_active(c), "{c}");
    }
    // Callers on different keys never ran "together" in the sense that matters: nothing moves.
    let mut apart = before.clone();
    apart.callers[1].keys.prefix = "other_".to_string();
    assert!(!apart.is_active(Condition::ConcurrentCallers));
    let unchanged = apart.clone();
    apart.neutralize(Condition::ConcurrentCallers);
    assert_eq!(format!("{apart:?}"), format!("{unchanged:?}"));
}

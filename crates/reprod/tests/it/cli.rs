//! The command line's contract for bad input: exit 2, nothing run, the file and the place named.

use crate::support::{TempDir, invoices, run, text};

#[test]
fn a_malformed_scenario_exits_2_with_file_line_column() {
    let dir = TempDir::new();
    let bad = dir.write("bad.toml", "[[service]]\nname = \"api\"\nurl = \"http://127.0.0.1:1\"\n\n[[caller]]\nname = \"x\"\nrequest = { path = \"/\" }\nrate = \"fast\"\n");
    let out = dir.path().join("runs");
    for args in [
        vec![
            "run",
            bad.to_str().expect("utf-8"),
            "--out",
            out.to_str().expect("utf-8"),
        ],
        vec!["check", bad.to_str().expect("utf-8")],
    ] {
        let output = run(&args);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("bad.toml:8:8: rate must be a number"),
            "{stderr}"
        );
        assert!(stderr.contains("nothing was run"), "{stderr}");
    }
    assert!(!out.exists(), "nothing ran, so no run directory");
}

#[test]
fn bad_flags_exit_2() {
    let scenario = invoices();
    let s = scenario.to_str().expect("utf-8");
    for (args, needle) in [
        (
            vec!["run", s, "--set", "nope=1"],
            "declares no parameter \"nope\"",
        ),
        (
            vec!["run", s, "--only", "overlap,telepathy"],
            "unknown condition \"telepathy\"",
        ),
        (
            vec!["run", s, "--set", "novalue"],
            "must look like name=value",
        ),
        (
            vec!["run", "/no/such/scenario.toml"],
            "cannot read the scenario",
        ),
        (vec!["frobnicate"], "unrecognized subcommand"),
    ] {
        let output = run(&args);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn check_accepts_the_shipped_scenario() {
    let scenario = invoices();
    let output = run(&[
        "check",
        scenario.to_str().expect("utf-8"),
        "--set",
        "variant=fixed",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("conditions: overlap, slow_dependency, retries, hot_keys, instances"),
        "{stdout}"
    );
}

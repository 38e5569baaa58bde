//! The outputs CI systems read: JUnit XML (validated by a parser from another ecosystem,
//! Python's `junitparser`) and the Markdown appended to `GITHUB_STEP_SUMMARY`.

use std::process::Command;

use crate::support::{TempDir, invoices, reprod, run_dir, text};

/// A Python 3 that can import `module`, or `None` (and a plain SKIPPED line) when there is none;
/// under `REPROD_CI` a missing module fails the test instead.
pub fn python_with(module: &str) -> Option<String> {
    let python = std::env::var("REPROD_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let found = Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some(python);
    }
    assert!(
        std::env::var_os("REPROD_CI").is_none(),
        "REPROD_CI is set but {python} cannot import {module}: pip install it (.ci/run does)"
    );
    eprintln!("SKIPPED ({module} half): {python} cannot import {module} (pip install {module})");
    None
}

const READ_JUNIT: &str = r#"
import sys, junitparser
xml = junitparser.JUnitXml.fromfile(sys.argv[1])
for suite in xml:
    print("suite", suite.name, suite.tests, suite.failures, suite.errors)
    for case in suite:
        print("case", case.classname, "|", case.name, "|", ",".join(type(r).__name__ for r in case.result))
"#;

#[test]
fn junit_and_the_step_summary_say_what_the_run_found() {
    let dir = TempDir::new();
    let out = dir.path().join("runs");
    let junit = dir.path().join("report.xml");
    let markdown = dir.path().join("step-summary.md");
    let scenario = invoices();
    let output = reprod(&[
        "run",
        scenario.to_str().expect("utf-8"),
        "--duration",
        "3s",
        "--quiet",
        "--out",
        out.to_str().expect("utf-8"),
        "--junit",
        junit.to_str().expect("utf-8"),
    ])
    .env("GITHUB_STEP_SUMMARY", &markdown)
    .output()
    .expect("run");
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    assert!(
        !text(&output.stderr).contains("reprod: starting services"),
        "--quiet keeps phase notes off"
    );
    let in_run_dir = std::fs::read_to_string(run_dir(&out).join("junit.xml")).expect("junit.xml");
    assert_eq!(
        in_run_dir,
        std::fs::read_to_string(&junit).expect("--junit file")
    );
    let md = std::fs::read_to_string(&markdown).expect("step summary");
    assert!(
        md.contains("FAIL") && md.contains("timeline of acct_"),
        "{md}"
    );
    assert!(md.contains("**violated**"), "{md}");

    let Some(python) = python_with("junitparser") else {
        return;
    };
    let parsed = Command::new(python)
        .args(["-c", READ_JUNIT])
        .arg(&junit)
        .output()
        .expect("python");
    let listing = text(&parsed.stdout);
    assert!(
        parsed.status.success(),
        "{}\n{listing}",
        text(&parsed.stderr)
    );
    assert!(
        listing.contains("suite reprod run invoices 3 2 0"),
        "{listing}"
    );
    assert!(
        listing.contains("case invariants | one invoice per account and period | Failure"),
        "{listing}"
    );
    assert!(
        listing.contains("case run | the run completed and tested something | \n"),
        "{listing}"
    );
}

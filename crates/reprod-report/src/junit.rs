//! JUnit XML for CI systems: one test case per invariant and per threshold, and one for the run
//! itself. A violated invariant or an exceeded threshold is a `<failure>` carrying its examples;
//! an invariant that could not be checked, or held only on what an incomplete run left, is an
//! `<error>`; a run that did not complete (or tested nothing) is an `<error>` of the `run` case,
//! never a pass. The schema is the common one (Jenkins/Surefire) that GitLab, GitHub Actions
//! reporters and `junitparser` read.

use std::fmt::Write as _;

use crate::{Summary, Verdict};

/// `text` safe inside XML text and attribute values: markup escaped, and the control
/// characters XML 1.0 cannot hold dropped.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => {}
            c => out.push(c),
        }
    }
    out
}

/// One test case of a JUnit document.
pub(crate) struct Case {
    pub(crate) classname: &'static str,
    pub(crate) name: String,
    /// (element, type, message, body): `failure` or `error`.
    pub(crate) outcome: Option<(&'static str, &'static str, String, String)>,
}

/// The JUnit XML of a run.
pub fn render(summary: &Summary) -> String {
    let mut cases = Vec::new();
    let run_problem = if let Some(reason) = summary.incomplete_reason() {
        Some((summary.status.as_str(), format!("the run {reason}")))
    } else if summary.verdict == Verdict::Incomplete && summary.ops.total == 0 {
        Some((
            "no_operations",
            "the run sent no operation, so it tested nothing".to_string(),
        ))
    } else if summary.verdict == Verdict::Incomplete && summary.ops.ok == 0 {
        Some((
            "no_successful_operations",
            "no operation succeeded, so nothing the service did was tested".to_string(),
        ))
    } else {
        None
    };
    cases.push(Case {
        classname: "run",
        name: "the run completed and tested something".to_string(),
        outcome: run_problem.map(|(kind, message)| ("error", kind, message, String::new())),
    });
    for i in &summary.invariants {
        let outcome = match (&i.error, i.held, i.partial) {
            (Some(e), _, _) => Some((
                "error",
                "unchecked",
                format!("not checked: {e}"),
                String::new(),
            )),
            (None, false, _) => Some((
                "failure",
                "violation",
                format!("{} violating key(s)", i.violations),
                i.examples.join("\n"),
            )),
            (None, true, true) => Some((
                "error",
                "partial",
                "held on what an incomplete run left: that proves nothing".to_string(),
                String::new(),
            )),
            (None, true, false) => None,
        };
        cases.push(Case {
            classname: "invariants",
            name: i.name.clone(),
            outcome,
        });
    }
    for t in &summary.thresholds {
        cases.push(Case {
            classname: "thresholds",
            name: t.name.clone(),
            outcome: (!t.held).then(|| {
                (
                    "failure",
                    "threshold",
                    format!("{:.3} against a limit of {:.3}", t.actual, t.limit),
                    String::new(),
                )
            }),
        });
    }
    let warnings: Vec<String> = summary
        .warnings
        .iter()
        .map(|w| format!("warning: {}", w.message))
        .collect();
    document(
        &format!("reprod run {}", summary.scenario),
        summary.duration_s,
        &[
            ("run_id", summary.run_id.clone()),
            ("seed", summary.seed.to_string()),
            ("status", summary.status.as_str().to_string()),
            ("verdict", summary.verdict.as_str().to_string()),
            ("conditions", summary.conditions.join(",")),
            ("run_dir", summary.run_dir.clone()),
        ],
        &cases,
        &warnings.join("\n"),
    )
}

/// A JUnit document of one suite: its properties, its cases, and text for `<system-out>`
/// (left out when empty).
pub(crate) fn document(
    suite: &str,
    time_s: f64,
    properties: &[(&str, String)],
    cases: &[Case],
    system_out: &str,
) -> String {
    let count = |element: &str| {
        cases
            .iter()
            .filter(|c| c.outcome.as_ref().is_some_and(|o| o.0 == element))
            .count()
    };
    let (failures, errors) = (count("failure"), count("error"));
    let mut out = String::new();
    let _ = writeln!(out, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        out,
        r#"<testsuites name="reprod" tests="{}" failures="{failures}" errors="{errors}" time="{time_s:.3}">"#,
        cases.len()
    );
    let _ = writeln!(
        out,
        r#"  <testsuite name="{}" tests="{}" failures="{failures}" errors="{errors}" skipped="0" time="{time_s:.3}">"#,
        escape(suite),
        cases.len()
    );
    if !properties.is_empty() {
        let _ = writeln!(out, "    <properties>");
        for (name, value) in properties {
            let _ = writeln!(
                out,
                r#"      <property name="{name}" value="{}"/>"#,
                escape(value)
            );
        }
        let _ = writeln!(out, "    </properties>");
    }
    for case in cases {
        let attributes = format!(
            r#"classname="{}" name="{}" time="0""#,
            case.classname,
            escape(&case.name)
        );
        match &case.outcome {
            None => {
                let _ = writeln!(out, "    <testcase {attributes}/>");
            }
            Some((element, kind, message, body)) => {
                let _ = writeln!(out, "    <testcase {attributes}>");
                let _ = writeln!(
                    out,
                    r#"      <{element} type="{kind}" message="{}">{}</{element}>"#,
                    escape(message),
                    escape(body)
                );
                let _ = writeln!(out, "    </testcase>");
            }
        }
    }
    if !system_out.is_empty() {
        let _ = writeln!(out, "    <system-out>{}</system-out>", escape(system_out));
    }
    let _ = writeln!(out, "  </testsuite>");
    let _ = writeln!(out, "</testsuites>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{InvariantResult, Status, ThresholdResult};

    #[test]
    fn escapes_markup_and_drops_what_xml_cannot_hold() {
        assert_eq!(escape(r#"a<b>&"c'"#), "a&lt;b&gt;&amp;&quot;c&apos;");
        assert_eq!(escape("x\u{1}y\nz"), "xy\nz");
    }

    #[test]
    fn a_violation_fails_and_an_incomplete_run_is_an_error() {
        let mut summary = Summary {
            scenario: "invoices".into(),
            invariants: vec![
                InvariantResult {
                    name: "one <invoice>".into(),
                    held: false,
                    violations: 2,
                    examples: vec!["acct_1: 2 rows".into()],
                    ..InvariantResult::default()
                },
                InvariantResult {
                    name: "held".into(),
                    held: true,
                    ..InvariantResult::default()
                },
            ],
            thresholds: vec![ThresholdResult {
                name: "p99_ms".into(),
                limit: 10.0,
                actual: 20.0,
                held: false,
            }],
            ..Summary::default()
        };
        summary.ops.total = 5;
        summary.ops.ok = 5;
        summary.decide();
        let xml = render(&summary);
        assert!(
            xml.contains(r#"tests="4" failures="2" errors="0""#),
            "{xml}"
        );
        assert!(xml.contains(r#"name="one &lt;invoice&gt;""#), "{xml}");
        assert!(xml.contains("acct_1: 2 rows"), "{xml}");
        summary.status = Status::Interrupted;
        summary.invariants[0].held = true;
        summary.invariants[0].partial = true;
        let xml = render(&summary);
        assert!(xml.contains(r#"<error type="interrupted""#), "{xml}");
        assert!(xml.contains(r#"<error type="partial""#), "{xml}");
    }
}

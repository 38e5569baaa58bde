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

/// Renders `page` in headless Chromium: its DOM as the browser built it, and a screenshot kept
/// at `screenshot` (an artifact to look at). `None` (SKIPPED) without Chromium, unless
/// `REPROD_CI` is set.
pub fn render_in_chromium(page: &std::path::Path, screenshot: &std::path::Path) -> Option<String> {
    let chromium = std::env::var("REPROD_CHROMIUM").unwrap_or_else(|_| "chromium".to_string());
    let profile = page.with_extension("chromium-profile");
    let flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1000,2600",
    ];
    let url = format!("file://{}", page.canonicalize().expect("page").display());
    let dom = Command::new(&chromium)
        .args(flags)
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--dump-dom", &url])
        .output();
    let Ok(dom) = dom else {
        assert!(
            std::env::var_os("REPROD_CI").is_none(),
            "REPROD_CI is set but {chromium} is not installed (apt-get install chromium)"
        );
        eprintln!("SKIPPED (browser half): {chromium} is not installed (apt-get install chromium)");
        return None;
    };
    assert!(dom.status.success(), "{}", text(&dom.stderr));
    let shot = Command::new(&chromium)
        .args(flags)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg(&url)
        .output()
        .expect("chromium");
    assert!(shot.status.success(), "{}", text(&shot.stderr));
    let size = std::fs::metadata(screenshot).map_or(0, |m| m.len());
    assert!(
        size > 20_000,
        "a screenshot with something in it: {size} bytes"
    );
    let _ = std::fs::remove_dir_all(&profile);
    Some(text(&dom.stdout))
}

/// The `d` attribute of each plotted series in a DOM, with how many points it has.
fn plotted_points(dom: &str) -> Vec<usize> {
    dom.split("class=\"series\"")
        .skip(1)
        .filter_map(|rest| {
            let d = rest.split(" d=\"").nth(1)?.split('"').next()?;
            Some(d.matches(['M', 'L']).count())
        })
        .collect()
}

/// Decodes an OTLP/JSON export with the OpenTelemetry project's own protobuf messages. Its
/// JSON parser follows protobuf's mapping (bytes as base64), while OTLP/JSON writes trace and
/// span ids as hex, so ids are converted first; every other field must be known to the messages.
const READ_OTLP: &str = r#"
import sys, json, base64
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
traces, spans, events, kinds, orphans, resends = set(), 0, 0, {}, 0, 0
for line in open(sys.argv[1]):
    doc = json.loads(line)
    for rs in doc["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for sp in ss["spans"]:
                for f in ("traceId", "spanId", "parentSpanId"):
                    if f in sp:
                        sp[f] = base64.b64encode(bytes.fromhex(sp[f])).decode()
    request = json_format.Parse(json.dumps(doc), trace_service_pb2.ExportTraceServiceRequest())
    ids = set()
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for sp in ss.spans:
                assert len(sp.trace_id) == 16 and len(sp.span_id) == 8, sp
                assert sp.end_time_unix_nano >= sp.start_time_unix_nano > 1_700_000_000 * 10**9
                ids.add((sp.trace_id, sp.span_id))
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for sp in ss.spans:
                traces.add(sp.trace_id)
                spans += 1
                events += len(sp.events)
                kinds[sp.kind] = kinds.get(sp.kind, 0) + 1
                if sp.parent_span_id and (sp.trace_id, sp.parent_span_id) not in ids:
                    orphans += 1
                for a in sp.attributes:
                    if a.key == "http.request.resend_count" and a.value.int_value > 0:
                        resends += 1
print("traces", len(traces))
print("spans", spans)
print("kinds", ",".join(f"{k}={v}" for k, v in sorted(kinds.items())))
print("events", events)
print("orphans", orphans)
"#;

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
    let dir_of_run = run_dir(&out);
    let in_run_dir = std::fs::read_to_string(dir_of_run.join("junit.xml")).expect("junit.xml");
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

    // report.html as a browser shows it: every plot drawn, the swimlanes of the violating key.
    let page = dir_of_run.join("report.html");
    let size = std::fs::metadata(&page).expect("report.html").len();
    assert!(size < 5_000_000, "{size}");
    if let Some(dom) = render_in_chromium(&page, &dir_of_run.join("report.png")) {
        for id in [
            "rates",
            "latency",
            "retries-errors",
            "violations",
            "swimlanes",
            "comparison",
        ] {
            assert!(
                dom.contains(&format!("<svg id=\"{id}\"")),
                "no {id} plot in the page"
            );
        }
        let points = plotted_points(&dom);
        assert!(
            points.len() >= 8 && points.iter().all(|n| *n >= 10),
            "{points:?}"
        );
        assert!(
            dom.matches("class=\"span\"").count() >= 4,
            "the swimlanes hold spans"
        );
        assert!(dom.contains("timeline of acct_"), "the page names the key");
    }

    // The run as OTLP traces, decoded by the OpenTelemetry project's protobuf messages.
    let exported = reprod(&["export", "otlp", dir_of_run.to_str().expect("utf-8")])
        .output()
        .expect("export");
    assert_eq!(
        exported.status.code(),
        Some(0),
        "{}",
        text(&exported.stderr)
    );
    let ops = crate::support::scalar(
        &dir_of_run.join("history.sqlite"),
        "SELECT COUNT(*) FROM ops",
    );
    assert!(
        text(&exported.stdout).starts_with(&format!("exported {ops} traces")),
        "{}",
        text(&exported.stdout)
    );
    // Sent over OTLP/HTTP to a server on this machine (one that answers 200 to every POST);
    // elsewhere only when asked.
    let mut server = Command::new(
        std::path::PathBuf::from(env!("CARGO_BIN_EXE_reprod")).with_file_name("bench-server"),
    )
    .stdout(std::process::Stdio::piped())
    .spawn()
    .expect("bench-server");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("listening line");
    let endpoint = line.trim().trim_start_matches("listening on ").to_string();
    let sent = reprod(&[
        "export",
        "otlp",
        dir_of_run.to_str().expect("utf-8"),
        "--endpoint",
        &endpoint,
    ])
    .output()
    .expect("export");
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(sent.status.code(), Some(0), "{}", text(&sent.stderr));
    assert!(
        text(&sent.stdout).contains(&format!("to {endpoint}/v1/traces")),
        "{}",
        text(&sent.stdout)
    );
    let remote = reprod(&[
        "export",
        "otlp",
        dir_of_run.to_str().expect("utf-8"),
        "--endpoint",
        "http://10.1.2.3:4318",
    ])
    .output()
    .expect("export");
    assert_eq!(remote.status.code(), Some(2));
    assert!(
        text(&remote.stderr).contains("--allow-remote"),
        "{}",
        text(&remote.stderr)
    );
    if let Some(python) = python_with("opentelemetry.proto") {
        let decoded = Command::new(python)
            .args(["-c", READ_OTLP])
            .arg(dir_of_run.join("traces.otlp.jsonl"))
            .output()
            .expect("python");
        let listing = text(&decoded.stdout);
        assert!(
            decoded.status.success(),
            "{}\n{listing}",
            text(&decoded.stderr)
        );
        assert!(listing.contains(&format!("traces {ops}\n")), "{listing}");
        assert!(
            listing.contains("kinds 1=") && listing.contains("2=") && listing.contains("3="),
            "{listing}"
        );
        assert!(listing.contains("orphans 0\n"), "{listing}");
        assert!(
            !listing.contains("events 0\n"),
            "violations are span events: {listing}"
        );
    }

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

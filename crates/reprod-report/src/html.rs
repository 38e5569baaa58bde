//! `report.html`: one self-contained page (no script, no fonts, no CDN: it opens offline) with
//! the run's rates, latencies, retries, errors and violations over time, the violating key's
//! timeline as swimlanes, the violating-vs-clean comparison as bars with their 95% intervals,
//! and the run's verdict, conditions, warnings and checks. Every plot is inline SVG drawn here
//! from typed values; nothing is loaded.

use std::fmt::Write as _;

use crate::junit::escape;
use crate::{EntryKind, Explanation, Summary, Verdict, wilson};

/// One interval of the run, for the plots over time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TimePoint {
    /// Seconds from the load's start to the interval's start.
    pub start_s: f64,
    /// Operations intended to start in it.
    pub offered: u64,
    /// Operations that ended in it.
    pub done: u64,
    /// ... ok.
    pub ok: u64,
    /// ... failed or ambiguous.
    pub not_ok: u64,
    /// Retries of those operations.
    pub retries: u64,
    /// Median latency from intended start, ms.
    pub p50_ms: f64,
    /// p99 latency from intended start, ms.
    pub p99_ms: f64,
    /// Violations first seen in it by a check during the run.
    pub violations_seen: u64,
}

/// What the page shows besides the summary.
#[derive(Clone, Debug, Default)]
pub struct Page<'a> {
    /// The run's intervals, in order.
    pub series: &'a [TimePoint],
    /// Violations only the final check found (they have no time of their own).
    pub final_only_violations: u64,
}

const WIDTH: f64 = 900.0;
const CHART_HEIGHT: f64 = 220.0;
const MARGIN_LEFT: f64 = 60.0;
const MARGIN_RIGHT: f64 = 20.0;
const MARGIN_TOP: f64 = 30.0;
const MARGIN_BOTTOM: f64 = 30.0;

pub(crate) const STYLE: &str = "
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 960px; color: #1d2330; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.verdict { display: inline-block; padding: 2px 10px; border-radius: 4px; color: #fff; font-weight: 600; }
.pass { background: #2e7d32; } .fail { background: #c62828; } .incomplete { background: #b26a00; }
.warning { background: #fff4e5; border-left: 4px solid #b26a00; padding: 6px 10px; margin: 6px 0; }
table { border-collapse: collapse; } td, th { padding: 3px 10px; border-bottom: 1px solid #e3e6ec; text-align: left; }
svg { display: block; margin: 6px 0 18px; } .axis { stroke: #9aa3b2; stroke-width: 1; }
.grid { stroke: #eef0f4; stroke-width: 1; } text { font: 11px system-ui, sans-serif; fill: #4a5262; }
.legend text { font-size: 12px; } code { background: #f3f4f7; padding: 1px 4px; border-radius: 3px; }
";

/// Colours of series and span kinds.
const COLORS: [&str; 4] = ["#1565c0", "#ef6c00", "#6a1b9a", "#c62828"];

fn kind_color(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::Attempt | EntryKind::Response => "#1565c0",
        EntryKind::Dependency => "#ef6c00",
        EntryKind::Delivery => "#2e7d32",
        EntryKind::Log => "#6a1b9a",
        EntryKind::Statement => "#00838f",
        EntryKind::Violation => "#c62828",
        EntryKind::More => "#9aa3b2",
    }
}

/// The page of a run.
pub fn render(summary: &Summary, page: &Page<'_>) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>reprod {}: {}</title><style>{STYLE}</style></head><body>\n",
        escape(&summary.scenario),
        summary.verdict.as_str()
    );
    header(&mut out, summary);
    over_time(&mut out, page);
    if let Some(e) = &summary.explanation {
        swimlanes(&mut out, e);
        comparison(&mut out, e);
    }
    checks(&mut out, summary);
    out.push_str("</body></html>\n");
    out
}

fn header(out: &mut String, s: &Summary) {
    let class = match s.verdict {
        Verdict::Pass => "pass",
        Verdict::Fail => "fail",
        Verdict::Incomplete => "incomplete",
    };
    let _ = writeln!(
        out,
        "<h1>reprod run {} <span class=\"verdict {class}\">{}</span></h1>",
        escape(&s.scenario),
        s.verdict.as_str().to_uppercase()
    );
    let _ = writeln!(
        out,
        "<p>run <code>{}</code>, seed {}, status <b>{}</b>{}<br>conditions: {}<br>{} operations ({} ok, {} failed, {} ambiguous), {} attempts ({} retries); offered {:.1}/s, throughput {:.1}/s, goodput {:.1}/s over {:.1} s; latency p50 {:.1} ms, p99 {:.1} ms; schedule lag p99 {:.2} ms</p>",
        escape(&s.run_id),
        s.seed,
        s.status.as_str(),
        s.status_reason
            .as_deref()
            .map(|r| format!(" — {}", escape(r.lines().next().unwrap_or(""))))
            .unwrap_or_default(),
        if s.conditions.is_empty() {
            "none (staging)".to_string()
        } else {
            escape(&s.conditions.join(", "))
        },
        s.ops.total,
        s.ops.ok,
        s.ops.failed,
        s.ops.ambiguous,
        s.attempts.total,
        s.attempts.retries,
        s.offered_rps,
        s.throughput_rps,
        s.goodput_rps,
        s.duration_s,
        s.latency_ms.p50,
        s.latency_ms.p99,
        s.schedule_lag_ms.p99
    );
    for w in &s.warnings {
        let _ = writeln!(out, "<div class=\"warning\">{}</div>", escape(&w.message));
    }
}

/// A line chart of `series` over `x` (seconds).
fn line_chart(
    out: &mut String,
    id: &str,
    title: &str,
    x: &[f64],
    series: &[(&str, Vec<f64>)],
    unit: &str,
) {
    let x_max = x.last().copied().unwrap_or(0.0).max(1e-9);
    let y_max = series
        .iter()
        .flat_map(|(_, ys)| ys.iter().copied())
        .fold(0.0_f64, f64::max);
    // A series that stayed at zero gets an axis of 0 to 1, not five labels of 0.
    let y_max = if y_max > 0.0 { y_max * 1.05 } else { 1.0 };
    let plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let plot_h = CHART_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
    let px = |v: f64| MARGIN_LEFT + v / x_max * plot_w;
    let py = |v: f64| MARGIN_TOP + plot_h - v / y_max * plot_h;
    let _ = writeln!(
        out,
        "<svg id=\"{id}\" class=\"chart\" viewBox=\"0 0 {WIDTH} {CHART_HEIGHT}\" width=\"{WIDTH}\" height=\"{CHART_HEIGHT}\" role=\"img\" aria-label=\"{}\">",
        escape(title)
    );
    let _ = writeln!(
        out,
        "<text x=\"{MARGIN_LEFT}\" y=\"16\" style=\"font-size:13px;font-weight:600\">{}</text>",
        escape(title)
    );
    for i in 0..=4 {
        let v = y_max * f64::from(i) / 4.0;
        let y = py(v);
        let _ = writeln!(
            out,
            "<line class=\"grid\" x1=\"{MARGIN_LEFT}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            WIDTH - MARGIN_RIGHT,
            MARGIN_LEFT - 6.0,
            y + 4.0,
            short_number(v)
        );
    }
    let _ = writeln!(
        out,
        "<line class=\"axis\" x1=\"{MARGIN_LEFT}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\"/>",
        WIDTH - MARGIN_RIGHT,
        MARGIN_TOP + plot_h,
        MARGIN_TOP + plot_h
    );
    for i in 0..=5 {
        let v = x_max * f64::from(i) / 5.0;
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{v:.1} s</text>",
            px(v),
            CHART_HEIGHT - 8.0
        );
    }
    for (n, (name, ys)) in series.iter().enumerate() {
        let color = COLORS[n % COLORS.len()];
        let mut d = String::new();
        for (i, (xv, yv)) in x.iter().zip(ys).enumerate() {
            let _ = write!(
                d,
                "{}{:.1} {:.1} ",
                if i == 0 { "M" } else { "L" },
                px(*xv),
                py(*yv)
            );
        }
        let _ = writeln!(
            out,
            "<path class=\"series\" data-series=\"{}\" d=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.6\"/>",
            escape(name),
            d.trim_end()
        );
        let lx = MARGIN_LEFT + 10.0 + n as f64 * 170.0;
        let _ = writeln!(
            out,
            "<g class=\"legend\"><rect x=\"{lx:.1}\" y=\"{:.1}\" width=\"12\" height=\"3\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{:.1}\">{} ({unit})</text></g>",
            MARGIN_TOP - 2.0,
            lx + 16.0,
            MARGIN_TOP + 2.0,
            escape(name)
        );
    }
    out.push_str("</svg>\n");
}

/// One bar of [`interval_bars`].
pub(crate) struct Bar<'a> {
    pub(crate) label: String,
    /// In 0..1.
    pub(crate) value: f64,
    /// Its 95% interval, in 0..1.
    pub(crate) interval: (f64, f64),
    pub(crate) color: &'a str,
    /// Shown after the whisker.
    pub(crate) note: String,
}

/// Horizontal bars, each with its 95% interval as a whisker.
pub(crate) fn interval_bars(out: &mut String, id: &str, title: &str, rows: &[Bar<'_>]) {
    let row_h = 24.0;
    let label_w = 200.0;
    let height = MARGIN_TOP + row_h * rows.len() as f64 + 10.0;
    let plot_w = WIDTH - label_w - MARGIN_RIGHT - 160.0;
    let px = |v: f64| label_w + v.clamp(0.0, 1.0) * plot_w;
    let _ = writeln!(
        out,
        "<svg id=\"{id}\" class=\"chart\" viewBox=\"0 0 {WIDTH} {height}\" width=\"{WIDTH}\" height=\"{height}\" role=\"img\" aria-label=\"{}\"><text x=\"{label_w}\" y=\"16\" style=\"font-size:13px;font-weight:600\">{}</text>",
        escape(title),
        escape(title)
    );
    for (i, bar) in rows.iter().enumerate() {
        let Bar {
            label,
            value,
            interval: (lo, hi),
            color,
            note,
        } = bar;
        let y = MARGIN_TOP + i as f64 * row_h;
        let _ = writeln!(
            out,
            "<g class=\"row\"><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text><rect class=\"bar\" x=\"{label_w}\" y=\"{:.1}\" width=\"{:.1}\" height=\"12\" fill=\"{color}\"/><line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#1d2330\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text></g>",
            label_w - 8.0,
            y + 11.0,
            escape(label),
            y + 2.0,
            (value.clamp(0.0, 1.0) * plot_w).max(1.0),
            px(*lo),
            px(*hi),
            y + 8.0,
            y + 8.0,
            px(*hi) + 6.0,
            y + 12.0,
            escape(note)
        );
    }
    out.push_str("</svg>\n");
}

fn short_number(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.1}k", v / 1000.0)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn over_time(out: &mut String, page: &Page<'_>) {
    let series = page.series;
    if series.is_empty() {
        return;
    }
    let width_s = if series.len() > 1 {
        series[1].start_s - series[0].start_s
    } else {
        1.0
    }
    .max(1e-6);
    let x: Vec<f64> = series.iter().map(|p| p.start_s).collect();
    let per_s = |f: &dyn Fn(&TimePoint) -> u64| -> Vec<f64> {
        series.iter().map(|p| f(p) as f64 / width_s).collect()
    };
    out.push_str("<h2>Over time</h2>\n");
    line_chart(
        out,
        "rates",
        "offered vs achieved rate",
        &x,
        &[
            ("offered", per_s(&|p| p.offered)),
            ("achieved", per_s(&|p| p.done)),
            ("goodput", per_s(&|p| p.ok)),
        ],
        "ops/s",
    );
    line_chart(
        out,
        "latency",
        "latency from intended start",
        &x,
        &[
            ("p50", series.iter().map(|p| p.p50_ms).collect()),
            ("p99", series.iter().map(|p| p.p99_ms).collect()),
        ],
        "ms",
    );
    line_chart(
        out,
        "retries-errors",
        "retries and errors",
        &x,
        &[
            ("retries", per_s(&|p| p.retries)),
            ("not ok", per_s(&|p| p.not_ok)),
        ],
        "per s",
    );
    let mut total = 0;
    let cumulative: Vec<f64> = series
        .iter()
        .map(|p| {
            total += p.violations_seen;
            total as f64
        })
        .collect();
    line_chart(
        out,
        "violations",
        "violating keys first seen (checks during the run)",
        &x,
        &[("seen so far", cumulative)],
        "keys",
    );
    if page.final_only_violations > 0 {
        let _ = writeln!(
            out,
            "<p>{} violation(s) were found only by the check after the run and have no time of their own.</p>",
            page.final_only_violations
        );
    }
}

fn swimlanes(out: &mut String, e: &Explanation) {
    let Some(key) = &e.key else { return };
    if e.swimlanes.is_empty() {
        return;
    }
    let start = e
        .swimlanes
        .iter()
        .flat_map(|l| l.spans.iter().map(|s| s.start_us))
        .min()
        .unwrap_or(0);
    // The axis spans what happened to the key; a violation found by the check after the run is
    // drawn at the right edge rather than stretching the axis to the time of that check.
    let happened = e
        .swimlanes
        .iter()
        .flat_map(|l| l.spans.iter())
        .filter(|s| s.kind != EntryKind::Violation)
        .map(|s| s.end_us.max(s.start_us))
        .max()
        .unwrap_or(start);
    let end = start + ((happened - start) as f64 * 1.08) as i64 + 1;
    let label_w = 190.0;
    let lane_h = 26.0;
    let height = MARGIN_TOP + lane_h * e.swimlanes.len() as f64 + MARGIN_BOTTOM;
    let plot_w = WIDTH - label_w - MARGIN_RIGHT;
    let px = |us: i64| label_w + (us - start) as f64 / (end - start) as f64 * plot_w;
    let _ = writeln!(out, "<h2>Timeline of {}</h2>", escape(key));
    let _ = writeln!(
        out,
        "<svg id=\"swimlanes\" class=\"chart\" viewBox=\"0 0 {WIDTH} {height}\" width=\"{WIDTH}\" height=\"{height}\" role=\"img\" aria-label=\"timeline of {}\">",
        escape(key)
    );
    for (i, lane) in e.swimlanes.iter().enumerate() {
        let y = MARGIN_TOP + i as f64 * lane_h;
        let _ = writeln!(
            out,
            "<g class=\"lane\"><line class=\"grid\" x1=\"{label_w}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            WIDTH - MARGIN_RIGHT,
            y + lane_h / 2.0,
            y + lane_h / 2.0,
            label_w - 8.0,
            y + lane_h / 2.0 + 4.0,
            escape(&lane.name)
        );
        for span in &lane.spans {
            let from = span.start_us.min(end);
            let to = span.end_us.max(span.start_us).min(end).max(from);
            let x0 = px(from);
            let w = (px(to) - x0).max(3.0);
            let color = kind_color(span.kind);
            let at_ms = (span.start_us - start) as f64 / 1e3;
            let _ = writeln!(
                out,
                "<rect class=\"span\" x=\"{x0:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{:.1}\" rx=\"2\" fill=\"{color}\" fill-opacity=\"0.75\"><title>T+{at_ms:.0}ms {}</title></rect>",
                y + 5.0,
                lane_h - 10.0,
                escape(&span.label)
            );
        }
        out.push_str("</g>\n");
    }
    let total_ms = (end - start) as f64 / 1e3;
    for i in 0..=5 {
        let ms = total_ms * f64::from(i) / 5.0;
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">T+{ms:.0}ms</text>",
            label_w + plot_w * f64::from(i) / 5.0,
            height - 8.0
        );
    }
    out.push_str("</svg>\n<details><summary>the timeline as text</summary><pre>");
    for event in &e.timeline {
        let _ = writeln!(out, "T+{:06.0}ms {}", event.t_ms, escape(&event.text));
    }
    out.push_str("</pre></details>\n");
}

fn comparison(out: &mut String, e: &Explanation) {
    // Dimensions of conditions that were off are no candidates; the text report lists them.
    let shown: Vec<&crate::Dimension> = e
        .comparison
        .iter()
        .filter(|d| d.status != crate::DimensionStatus::Inactive)
        .collect();
    if shown.is_empty() {
        return;
    }
    let row_h = 38.0;
    let label_w = 170.0;
    let height = MARGIN_TOP + row_h * shown.len() as f64 + 10.0;
    let plot_w = WIDTH - label_w - MARGIN_RIGHT - 60.0;
    let px = |share: f64| label_w + share * plot_w;
    let _ = writeln!(
        out,
        "<h2>Violating keys ({}) against clean keys ({})</h2>",
        e.violating_keys, e.clean_keys
    );
    let _ = writeln!(
        out,
        "<svg id=\"comparison\" class=\"chart\" viewBox=\"0 0 {WIDTH} {height}\" width=\"{WIDTH}\" height=\"{height}\" role=\"img\" aria-label=\"comparison\">"
    );
    let _ = writeln!(
        out,
        "<g class=\"legend\"><rect x=\"{label_w}\" y=\"8\" width=\"12\" height=\"8\" fill=\"{}\"/><text x=\"{}\" y=\"16\">violating keys</text><rect x=\"{}\" y=\"8\" width=\"12\" height=\"8\" fill=\"{}\"/><text x=\"{}\" y=\"16\">clean keys (whiskers: 95% intervals)</text></g>",
        COLORS[3],
        label_w + 16.0,
        label_w + 130.0,
        COLORS[0],
        label_w + 146.0
    );
    for (i, d) in shown.into_iter().enumerate() {
        let y = MARGIN_TOP + i as f64 * row_h;
        let verdict = match (d.status, &d.goes_with) {
            (crate::DimensionStatus::GoesWith, Some(with)) => format!(" (comes with {with})"),
            (crate::DimensionStatus::DoesNotSeparate, _) => " (not separating)".to_string(),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "<g class=\"dimension\"><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}{}<title>{}</title></text>",
            label_w - 8.0,
            y + 16.0,
            escape(&d.name),
            if verdict.is_empty() { "" } else { "*" },
            escape(&format!("{}{verdict}", d.sentence))
        );
        for (j, (share, n, color)) in [
            (d.violating_share, e.violating_keys, COLORS[3]),
            (d.clean_share, e.clean_keys, COLORS[0]),
        ]
        .into_iter()
        .enumerate()
        {
            let by = y + 4.0 + j as f64 * 14.0;
            let k = (share * n as f64).round() as u64;
            let (lo, hi) = wilson(k, n as u64);
            let _ = writeln!(
                out,
                "<rect class=\"bar\" x=\"{label_w}\" y=\"{by:.1}\" width=\"{:.1}\" height=\"10\" fill=\"{color}\"/><line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#1d2330\"/><text x=\"{:.1}\" y=\"{:.1}\">{:.0}%</text>",
                (share * plot_w).max(1.0),
                px(lo),
                px(hi),
                by + 5.0,
                by + 5.0,
                px(hi) + 6.0,
                by + 9.0,
                share * 100.0
            );
        }
        out.push_str("</g>\n");
    }
    out.push_str("</svg>\n");
}

fn checks(out: &mut String, s: &Summary) {
    if s.invariants.is_empty() && s.thresholds.is_empty() {
        return;
    }
    out.push_str(
        "<h2>Checks</h2>\n<table><tr><th>check</th><th>result</th><th>examples</th></tr>\n",
    );
    for i in &s.invariants {
        let result = match (&i.error, i.held) {
            (Some(e), _) => format!("not checked: {e}"),
            (None, true) if i.partial => "held on what an incomplete run left".to_string(),
            (None, true) => "held".to_string(),
            (None, false) => format!("<b>violated</b> for {} key(s)", i.violations),
        };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&i.name),
            if i.error.is_some() {
                escape(&result)
            } else {
                result
            },
            escape(&i.examples.join("; "))
        );
    }
    for t in &s.thresholds {
        let _ = writeln!(
            out,
            "<tr><td>threshold {}</td><td>{} ({:.3}, limit {:.3})</td><td></td></tr>",
            escape(&t.name),
            if t.held { "held" } else { "<b>exceeded</b>" },
            t.actual,
            t.limit
        );
    }
    out.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Lane, Span};

    #[test]
    fn the_page_has_every_plot_and_escapes_what_it_shows() {
        let series: Vec<TimePoint> = (0..10)
            .map(|i| TimePoint {
                start_s: f64::from(i),
                offered: 40,
                done: 39,
                ok: 38,
                not_ok: 1,
                retries: 2,
                p50_ms: 20.0,
                p99_ms: 150.0,
                violations_seen: u64::from(i == 3),
            })
            .collect();
        let mut summary = Summary {
            scenario: "<invoices>".into(),
            ..Summary::default()
        };
        summary.explanation = Some(Explanation {
            run_id: "r".into(),
            status: "completed".into(),
            invariants: vec![],
            key: Some("acct_1".into()),
            timeline: vec![],
            swimlanes: vec![Lane {
                name: "api → invoices/0".into(),
                spans: vec![Span {
                    start_us: 10,
                    end_us: 2_000,
                    kind: EntryKind::Attempt,
                    label: "op 1".into(),
                }],
            }],
            violating_keys: 5,
            clean_keys: 20,
            unrelated_keys: 0,
            comparison: vec![crate::Dimension {
                name: "overlap".into(),
                condition: Some("overlap".into()),
                violating_share: 1.0,
                clean_share: 0.1,
                separation: 0.9,
                difference_ci: (0.6, 0.97),
                status: crate::DimensionStatus::Separates,
                goes_with: None,
                within: None,
                sentence: "s".into(),
            }],
        });
        let html = render(
            &summary,
            &Page {
                series: &series,
                final_only_violations: 2,
            },
        );
        for id in [
            "rates",
            "latency",
            "retries-errors",
            "violations",
            "swimlanes",
            "comparison",
        ] {
            assert!(html.contains(&format!("<svg id=\"{id}\"")), "{id}");
        }
        assert!(html.contains("&lt;invoices&gt;") && !html.contains("<invoices>"));
        assert!(
            !html.contains("<script") && !html.contains("http://") && !html.contains("https://")
        );
        assert!(html.contains("class=\"span\""));
    }
}

//! The explanation of a run — a violating key's timeline and the violating-vs-clean
//! comparison — as typed values, and their text. `reprod_check::explain` builds them from the
//! history; `summary.json`, `reprod explain --json` and `report.txt` render them.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// Where a timeline line comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// An attempt was sent.
    Attempt,
    /// An attempt was answered, failed or was abandoned.
    Response,
    /// A dependency call arrived or was answered.
    Dependency,
    /// A sink received a delivery.
    #[serde(rename = "sink")]
    Delivery,
    /// A service's own log line (its decision, in its words).
    Log,
    /// A statement the database proxy saw.
    Statement,
    /// An invariant was violated for the key.
    Violation,
    /// The timeline was cut; this many more events happened.
    More,
}

/// One line of a timeline.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TimelineEvent {
    /// When, in µs since the run started (the history's clock).
    pub at_us: i64,
    /// Milliseconds after the key's first event.
    pub t_ms: f64,
    /// Where it comes from.
    pub kind: EntryKind,
    /// The line, in words.
    pub text: String,
}

/// One lane of the swimlane timeline: a caller's attempts to one replica, a dependency, a sink,
/// the violations.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Lane {
    /// `api → invoices/0`, `usage`, `email`, `violations`.
    pub name: String,
    /// What happened on it.
    pub spans: Vec<Span>,
}

/// One thing on a lane, from its start to its end (equal for an instant).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Span {
    /// Start, µs since the run started.
    pub start_us: i64,
    /// End, µs since the run started.
    pub end_us: i64,
    /// Where it comes from.
    pub kind: EntryKind,
    /// In words.
    pub label: String,
}

/// What the comparison concluded of one dimension.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DimensionStatus {
    /// The 95% interval of the difference between violating and clean keys excludes zero.
    #[default]
    Separates,
    /// It separates, but no further among the keys that had the best separating dimension:
    /// it comes with that one (two replicas serve most overlapping requests, so `instances`
    /// rides on `overlap`).
    GoesWith,
    /// The interval of the difference contains zero: the keys do not tell it apart.
    DoesNotSeparate,
    /// Its condition was off in this run: shown, never ranked as a cause.
    Inactive,
}

/// One dimension of the comparison.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Dimension {
    /// Short name.
    pub name: String,
    /// The condition it measures, when it measures one (`overlap`); `None` for the log
    /// fields, `db_wait` and `caller_mix`.
    #[serde(default)]
    pub condition: Option<String>,
    /// Share of violating keys that had it.
    pub violating_share: f64,
    /// Share of clean keys that had it.
    pub clean_share: f64,
    /// |violating − clean|: how well it separates the groups.
    pub separation: f64,
    /// 95% interval of violating − clean (Newcombe's hybrid score interval).
    #[serde(default)]
    pub difference_ci: (f64, f64),
    /// What the comparison concluded.
    #[serde(default)]
    pub status: DimensionStatus,
    /// For [`DimensionStatus::GoesWith`]: the dimension it comes with.
    #[serde(default)]
    pub goes_with: Option<String>,
    /// For [`DimensionStatus::GoesWith`]: the shares among the keys that had that one.
    #[serde(default)]
    pub within: Option<String>,
    /// The finding in words.
    pub sentence: String,
}

/// What `reprod explain` prints.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Explanation {
    /// The run.
    pub run_id: String,
    /// `completed`, `interrupted`, `running` (a crash) ...
    pub status: String,
    /// Violating keys per invariant.
    pub invariants: Vec<(String, u64)>,
    /// The key the timeline is about.
    pub key: Option<String>,
    /// The timeline.
    pub timeline: Vec<TimelineEvent>,
    /// The same key's history as swimlanes (for `report.html`).
    pub swimlanes: Vec<Lane>,
    /// Keys with a violation / without.
    pub violating_keys: usize,
    /// Keys operations touched that have no violation, in the violating keys' key space (the
    /// keys of the callers that touched a violating key).
    pub clean_keys: usize,
    /// Keys left out of the comparison: only callers that touched no violating key touched
    /// them.
    #[serde(default)]
    pub unrelated_keys: usize,
    /// The comparison, best separating first.
    pub comparison: Vec<Dimension>,
}

impl Explanation {
    /// The text `reprod explain` and `report.txt` show.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        if self.status == "stopped_at_violation" {
            let _ = writeln!(
                out,
                "note: the load stopped at the first violation (--stop-at-violation); what follows is what it recorded until then"
            );
        } else if self.status != "completed" {
            let _ = writeln!(
                out,
                "note: this run did not complete (status {}); what follows is what it recorded",
                self.status
            );
        }
        if self.invariants.is_empty() && self.status == "completed" {
            let _ = writeln!(out, "no invariant was violated in run {}", self.run_id);
        } else if self.invariants.is_empty() {
            let _ = writeln!(
                out,
                "no violation was found in what run {} recorded before it stopped ({}): that is no pass, the run did not test everything it planned",
                self.run_id, self.status
            );
        }
        for (name, n) in &self.invariants {
            let _ = writeln!(out, "{name:?} was violated for {n} key(s)");
        }
        if let Some(key) = &self.key {
            let _ = writeln!(out, "\ntimeline of {key}:");
            for e in &self.timeline {
                let _ = writeln!(out, "  T+{:06.0}ms {}", e.t_ms, e.text);
            }
            if self.timeline.is_empty() {
                let _ = writeln!(out, "  (nothing recorded for this key)");
            }
        }
        if !self.comparison.is_empty() {
            let _ = writeln!(
                out,
                "\nviolating keys ({}) against clean keys ({}), best separating first{}:",
                self.violating_keys,
                self.clean_keys,
                if self.unrelated_keys > 0 {
                    format!(
                        " ({} keys of callers that touched no violating key left out)",
                        self.unrelated_keys
                    )
                } else {
                    String::new()
                }
            );
            let shown = |status: DimensionStatus| {
                self.comparison.iter().filter(move |d| d.status == status)
            };
            for d in self.comparison.iter().filter(|d| {
                matches!(
                    d.status,
                    DimensionStatus::Separates | DimensionStatus::GoesWith
                )
            }) {
                let _ = write!(
                    out,
                    "  {:<19} {} ({:+.0} points, 95% CI {:+.0} to {:+.0})",
                    d.name,
                    d.sentence,
                    100.0 * (d.violating_share - d.clean_share),
                    100.0 * d.difference_ci.0,
                    100.0 * d.difference_ci.1
                );
                match (&d.goes_with, &d.within) {
                    (Some(with), Some(within)) if d.status == DimensionStatus::GoesWith => {
                        let _ = writeln!(out, "\n  {:<19} but {within}: it comes with {with}", "");
                    }
                    _ => out.push('\n'),
                }
            }
            if shown(DimensionStatus::Separates).next().is_none() {
                let _ = writeln!(
                    out,
                    "  (no dimension separates them beyond chance: try more load or `reprod isolate`)"
                );
            }
            let names = |status: DimensionStatus| {
                shown(status)
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if shown(DimensionStatus::DoesNotSeparate).next().is_some() {
                let _ = writeln!(
                    out,
                    "  not separating (the 95% interval of the difference contains 0):"
                );
                for d in shown(DimensionStatus::DoesNotSeparate) {
                    let _ = writeln!(out, "    {:<17} {}", d.name, d.sentence);
                }
            }
            let off = names(DimensionStatus::Inactive);
            if !off.is_empty() {
                let _ = writeln!(out, "  conditions off in this run, not ranked: {off}");
            }
        } else if self.violating_keys > 0 {
            let _ = writeln!(
                out,
                "\n(no clean keys to compare against: every key touched was violated; `reprod isolate` tells which conditions are needed)"
            );
        }
        out
    }
}

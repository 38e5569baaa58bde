//! The run summary — the `summary.json` contract — and its renderings.
//!
//! Pure: values in, text out. The same [`Summary`] becomes `summary.json`, the `--json` output
//! and the top of `report.txt`, so the three never disagree.

#![deny(missing_docs)]

use std::fmt::Write as _;

use serde::Serialize;

/// Operation counts by outcome.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OpCounts {
    /// All operations dispatched.
    pub total: u64,
    /// Ended ok.
    pub ok: u64,
    /// Ended failed (definitely did not happen).
    pub failed: u64,
    /// Ended ambiguous (may or may not have happened).
    pub ambiguous: u64,
    /// Scheduled but never sent: the run's time was up before the generator could send them.
    pub unsent: u64,
}

/// Attempt counts.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AttemptCounts {
    /// All attempts sent.
    pub total: u64,
    /// Attempts after the first of their operation.
    pub retries: u64,
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

/// Schedule lag in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Lag {
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

/// One invariant's verdict.
#[derive(Clone, Debug, Default, Serialize)]
pub struct InvariantResult {
    /// Name from the scenario.
    pub name: String,
    /// Whether it held.
    pub held: bool,
    /// Violating keys.
    pub violations: u64,
    /// Up to five examples, as text.
    pub examples: Vec<String>,
    /// Why it could not be checked, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Seconds into the run when a violation was first seen (invariants checked during the run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_violation_s: Option<f64>,
}

/// One threshold's verdict.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ThresholdResult {
    /// `p99`, `error_rate` or `min_goodput_rps`.
    pub name: String,
    /// The limit.
    pub limit: f64,
    /// What was measured.
    pub actual: f64,
    /// Whether it held.
    pub held: bool,
}

/// Requested vs achieved latency of a dependency or sink.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DependencyResult {
    /// Name.
    pub name: String,
    /// Calls received.
    pub calls: u64,
    /// Requested percentiles (ms), where the scenario set them.
    pub requested_ms: serde_json::Map<String, serde_json::Value>,
    /// Injected delay percentiles (ms) actually drawn.
    pub achieved_ms: serde_json::Map<String, serde_json::Value>,
}

/// The run summary (`summary.json`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// Run id (the run directory's name).
    pub run_id: String,
    /// Scenario name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// Active conditions.
    pub conditions: Vec<String>,
    /// Final parameter values.
    pub params: serde_json::Map<String, serde_json::Value>,
    /// `completed`, `interrupted`, or `failed: reason`.
    pub status: String,
    /// Load phase length in seconds (run start to last operation done).
    pub duration_s: f64,
    /// Operations.
    pub ops: OpCounts,
    /// Attempts.
    pub attempts: AttemptCounts,
    /// Attempts per operation.
    pub retry_amplification: f64,
    /// Rate the schedule asked for (operations per second).
    pub offered_rps: f64,
    /// Operations completed per second.
    pub throughput_rps: f64,
    /// Ok operations per second.
    pub goodput_rps: f64,
    /// Operation latency from intended start.
    pub latency_ms: Latency,
    /// Intended → actual start.
    pub schedule_lag_ms: Lag,
    /// Dependencies and sinks: requested vs achieved delay.
    pub dependencies: Vec<DependencyResult>,
    /// Invariants.
    pub invariants: Vec<InvariantResult>,
    /// Thresholds.
    pub thresholds: Vec<ThresholdResult>,
    /// `pass` or `fail`.
    pub verdict: String,
    /// For a failed run: the first violating key's timeline and the violating-vs-clean
    /// comparison (the same as `reprod explain --json`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explanation: Option<serde_json::Value>,
    /// The run directory.
    pub run_dir: String,
}

impl Summary {
    /// `pass` when every invariant and threshold held and the run completed.
    pub fn decide(&mut self) {
        let held = self.invariants.iter().all(|i| i.held) && self.thresholds.iter().all(|t| t.held);
        self.verdict = if held { "pass" } else { "fail" }.to_string();
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// The human-readable summary that opens `report.txt`.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "reprod run {} — scenario {} (seed {})",
            self.run_id, self.scenario, self.seed
        );
        let _ = writeln!(
            out,
            "conditions: {}",
            if self.conditions.is_empty() {
                "none (staging)".to_string()
            } else {
                self.conditions.join(", ")
            }
        );
        if !self.params.is_empty() {
            let params: Vec<String> = self
                .params
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{k}={}",
                        v.as_str().map_or_else(|| v.to_string(), str::to_string)
                    )
                })
                .collect();
            let _ = writeln!(out, "params: {}", params.join(" "));
        }
        let _ = writeln!(out, "status: {}", self.status);
        let _ = writeln!(out);
        let o = &self.ops;
        let _ = writeln!(
            out,
            "operations  {} total: {} ok, {} failed, {} ambiguous",
            o.total, o.ok, o.failed, o.ambiguous
        );
        if o.unsent > 0 {
            let _ = writeln!(
                out,
                "            {} scheduled operations were not sent: the generator could not keep up \
                 (see the schedule lag)",
                o.unsent
            );
        }
        let _ = writeln!(
            out,
            "attempts    {} total, {} retries ({:.2} attempts per operation)",
            self.attempts.total, self.attempts.retries, self.retry_amplification
        );
        let _ = writeln!(
            out,
            "rate        offered {:.1}/s, throughput {:.1}/s, goodput {:.1}/s over {:.1} s",
            self.offered_rps, self.throughput_rps, self.goodput_rps, self.duration_s
        );
        let l = &self.latency_ms;
        let _ = writeln!(
            out,
            "latency     p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms (from intended start)",
            l.p50, l.p95, l.p99, l.p999, l.max
        );
        let _ = writeln!(
            out,
            "lag         p99 {:.2} ms, max {:.2} ms (intended → actual start)",
            self.schedule_lag_ms.p99, self.schedule_lag_ms.max
        );
        for d in &self.dependencies {
            let fmt = |m: &serde_json::Map<String, serde_json::Value>| {
                m.iter()
                    .map(|(k, v)| {
                        format!(
                            "{k} {}",
                            v.as_f64().map_or("-".to_string(), |x| format!("{x:.1}"))
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let requested = if d.requested_ms.is_empty() {
                "none".to_string()
            } else {
                fmt(&d.requested_ms)
            };
            let _ = writeln!(
                out,
                "dependency  {}: {} calls; delay requested {requested}; achieved {}",
                d.name,
                d.calls,
                if d.achieved_ms.is_empty() {
                    "-".to_string()
                } else {
                    fmt(&d.achieved_ms)
                }
            );
        }
        if !self.invariants.is_empty() {
            let _ = writeln!(out);
        }
        for i in &self.invariants {
            let mark = if i.held { "held    " } else { "VIOLATED" };
            let _ = write!(out, "{mark}  {}", i.name);
            if let Some(e) = &i.error {
                let _ = write!(out, " — could not be checked: {e}");
            } else if !i.held {
                let _ = write!(out, " — {} violating key(s)", i.violations);
                if let Some(s) = i.first_violation_s {
                    let _ = write!(out, ", the first seen {s:.1} s into the run");
                }
            }
            let _ = writeln!(out);
            for ex in &i.examples {
                let _ = writeln!(out, "            e.g. {ex}");
            }
        }
        for t in &self.thresholds {
            let mark = if t.held { "held    " } else { "EXCEEDED" };
            let _ = writeln!(
                out,
                "{mark}  threshold {}: {:.3} (limit {:.3})",
                t.name, t.actual, t.limit
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "verdict: {}", self.verdict.to_uppercase());
        out
    }
}

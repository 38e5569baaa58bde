//! The run summary — the `summary.json` contract — and its renderings.
//!
//! Pure: values in, text out. The same [`Summary`] becomes `summary.json`, the `--json` output
//! and the top of `report.txt`, so the three never disagree.

#![deny(missing_docs)]

mod explanation;
pub mod html;
pub mod isolation;
pub mod junit;

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

pub use explanation::{
    Dimension, DimensionStatus, EntryKind, Explanation, Lane, Span, TimelineEvent,
};

/// Operation counts by outcome.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
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

/// What the setup steps did before the load.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SetupSummary {
    /// Requests sent.
    pub requests: u64,
    /// Seconds they took, all steps.
    pub seconds: f64,
}

/// What became of one service's log lines (`logs = {...}`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ServiceLogCounts {
    /// The service.
    pub service: String,
    /// Lines recorded in the history's `service_logs`.
    pub kept: u64,
    /// Lines read but not recorded: past `logs.max_lines`, or the history was behind.
    pub dropped: u64,
    /// Lines not in the format (not a JSON object, no `k=v` pair, no match, cut).
    pub unparsable: u64,
}

/// What reprod's database proxy saw (`[database] proxy`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DbProxySummary {
    /// Connections the services opened through it.
    pub connections: u64,
    /// The most open at once.
    pub max_open: u64,
    /// Statements recorded in `db_statements`.
    pub statements: u64,
    /// Statements not recorded (past the bound).
    pub dropped: u64,
    /// Statement faults injected.
    pub faults: u64,
    /// Connections it could not take to the server.
    pub upstream_failures: u64,
    /// Why the last one failed.
    pub last_upstream_failure: Option<String>,
    /// Per replica, its connections as the database saw them.
    #[serde(default)]
    pub replicas: Vec<DbReplicaConnections>,
    /// The seed's "duplicate key conflicts appear": what the database refused or skipped.
    #[serde(default)]
    pub conflicts: DbConflicts,
}

/// One replica's connections through the database proxy.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DbReplicaConnections {
    /// `invoices/0` (the `application_name` reprod gave it; `""` when a connection gave none).
    pub replica: String,
    /// Connections opened over the run.
    pub connections: u64,
    /// The most open at once.
    pub max_open: u64,
}

/// Duplicate key conflicts at the database, over the run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DbConflicts {
    /// Statements refused with a unique violation (SQLSTATE 23505).
    pub unique_violations: u64,
    /// Inserts that inserted nothing (`INSERT 0 0`).
    pub noop_inserts: u64,
    /// Keys with at least one.
    pub keys: u64,
    /// The keys with the most, most first (at most 5).
    pub top: Vec<KeyConflict>,
}

/// One key's duplicate key conflicts.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct KeyConflict {
    /// The key (`null` when no key rule or trace tied the statements to one).
    pub key: Option<String>,
    /// Unique violations (23505).
    pub unique_violations: u64,
    /// Inserts that inserted nothing.
    pub noop_inserts: u64,
}

/// How one caller's overlap groups landed: the spread of their sends and whether the members
/// were ever in flight together.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OverlapLanding {
    /// The caller.
    pub caller: String,
    /// `window` or `last_byte`.
    pub sync: String,
    /// Groups of two or more operations sent.
    pub groups: u64,
    /// First member's send to the last's (a synchronised group: the final bytes), µs.
    pub spread_us: Spread,
    /// Groups whose members were all in flight at one moment.
    pub together: u64,
    /// For those, how long, µs.
    pub together_us: Spread,
    /// Where the service side saw the groups: per dependency (and `database`, when proxied),
    /// the groups two or more of whose members reached it and how tightly.
    #[serde(default)]
    pub reached: Vec<OverlapReach>,
}

/// How tightly an overlap group's members reached one place inside the service.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OverlapReach {
    /// A dependency's name, or `database`.
    pub place: String,
    /// Groups two or more of whose members reached it.
    pub groups: u64,
    /// The first member's first call there to the last member's, µs.
    pub spread_us: Spread,
}

/// What a run's load exercised at one place: how many keys had two or more of their requests
/// (calls, statements) in flight at once.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Exercised {
    /// `requests` (reprod's attempts), a dependency's name, or `database` (the proxy).
    pub place: String,
    /// Keys seen there.
    pub keys: u64,
    /// Keys with two or more under way at once.
    pub overlapped_keys: u64,
    /// Per such key, how long two or more were under way at once, µs.
    pub together_us: Spread,
}

/// Median, 99th percentile and maximum, µs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// Median.
    pub p50: i64,
    /// 99th percentile.
    pub p99: i64,
    /// Largest.
    pub max: i64,
}

impl Spread {
    /// Of `values` (all zero when there are none).
    pub fn of(mut values: Vec<i64>) -> Spread {
        values.sort_unstable();
        let at = |q: f64| {
            values
                .get(((values.len() as f64 * q).ceil() as usize).saturating_sub(1))
                .copied()
                .unwrap_or(0)
        };
        Spread {
            p50: at(0.5),
            p99: at(0.99),
            max: values.last().copied().unwrap_or(0),
        }
    }
}

/// What reprod's OTLP receiver took in (`{otlp.url}`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OtlpSummary {
    /// Spans recorded in the history's `spans`.
    pub spans: u64,
    /// Log records recorded in `service_logs`.
    pub logs: u64,
    /// Spans and log records not recorded (past the bound, without a trace id).
    pub dropped: u64,
    /// Requests refused (not OTLP, compressed, too large).
    pub rejected: u64,
    /// Why the last refused request was refused.
    pub last_rejection: Option<String>,
}

/// Attempt counts.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AttemptCounts {
    /// All attempts sent.
    pub total: u64,
    /// Attempts after the first of their operation.
    pub retries: u64,
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
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
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Lag {
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

/// How a run ended: the one fact every verdict starts from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Load ran its course and the drain finished.
    #[default]
    Completed,
    /// Ctrl-C or SIGTERM stopped it.
    Interrupted,
    /// A service replica died, or a service could not be reached, during the run.
    ServiceFailed,
    /// It never got to load: a dependency, a service or the database could not be started.
    StartFailed,
    /// The history could not be written (a full disk, an I/O error): what it holds is partial.
    HistoryFailed,
    /// reprod's own load engine failed (a bug in reprod): the operation is recorded as failed.
    EngineFailed,
    /// `--stop-at-violation`: a mid-run check found a violation and the load stopped there,
    /// without its drain. The violation decides the verdict (fail); the load it did not send
    /// tested nothing, so an invariant that held is partial.
    StoppedAtViolation,
}

impl Status {
    /// The name `summary.json` and `history.sqlite` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Completed => "completed",
            Status::Interrupted => "interrupted",
            Status::ServiceFailed => "service_failed",
            Status::StartFailed => "start_failed",
            Status::HistoryFailed => "history_failed",
            Status::EngineFailed => "engine_failed",
            Status::StoppedAtViolation => "stopped_at_violation",
        }
    }
}

/// What a run proved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// A completed run, operations sent, every invariant checked and held, every threshold met.
    Pass,
    /// An invariant was violated or a threshold exceeded (a violation found in an incomplete
    /// run is still real evidence).
    Fail,
    /// Nothing was found, but the run did not complete, sent no operation, or could not check
    /// every invariant: no conclusion.
    #[default]
    Incomplete,
}

impl Verdict {
    /// `pass`, `fail`, `incomplete`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Incomplete => "incomplete",
        }
    }
}

/// Something a reader of the verdict must know: the run may not have tested what it seems to.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Warning {
    /// Machine-readable kind: `caller_failing`, `caller_after_load`, `no_operations`,
    /// `history_incomplete`, `service_output_cut`, `state_before_load`, ... (PRODUCT.md and
    /// docs list them all).
    pub kind: String,
    /// The caller, service or invariant it is about, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The warning in words.
    pub message: String,
}

/// One invariant's verdict.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
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
    /// Seconds after the load started when a violation was first seen (invariants checked
    /// during the run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_violation_s: Option<f64>,
    /// Checked on what an incomplete run left (the database and sinks as they were when it
    /// stopped): a violation is real, a hold proves nothing.
    pub partial: bool,
}

/// One threshold's verdict.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
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
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
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

/// The run summary (`summary.json`). Read back leniently: a field missing from the file takes
/// its default.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
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
    /// How the run ended.
    pub status: Status,
    /// Why it did not complete, when it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// Seconds from the run's start (history clock zero) to the load's start: services
    /// started and ready before it. Intended times count from here.
    pub load_started_s: f64,
    /// Load phase length in seconds (load start to last operation done).
    pub duration_s: f64,
    /// Setup requests sent before the load (not operations), and how long setup took.
    pub setup: SetupSummary,
    /// Per service that reads its lines (`logs`): lines kept, dropped and unparsable.
    #[serde(default)]
    pub service_logs: Vec<ServiceLogCounts>,
    /// What the OTLP receiver took in, when a service used `{otlp.url}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp: Option<OtlpSummary>,
    /// What the database proxy saw, when the services reached the database through it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_proxy: Option<DbProxySummary>,
    /// Per caller with `overlap`: how tightly its groups landed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overlap: Vec<OverlapLanding>,
    /// The same-key concurrency the load reached: requests, each dependency, the database.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exercised: Vec<Exercised>,
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
    /// `pass`, `fail` or `incomplete`.
    pub verdict: Verdict,
    /// What the reader must know about what this run did and did not exercise.
    pub warnings: Vec<Warning>,
    /// For a failed run: the first violating key's timeline and the violating-vs-clean
    /// comparison (the same as `reprod explain --json`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explanation: Option<Explanation>,
    /// The run directory.
    pub run_dir: String,
}

impl Summary {
    /// Decides the verdict: `fail` when any invariant was violated or a threshold exceeded;
    /// otherwise `pass` only for a completed run that sent operations and checked every
    /// invariant, and `incomplete` for anything less.
    pub fn decide(&mut self) {
        self.verdict = verdict(
            self.status,
            (self.ops.total, self.ops.ok),
            &self.invariants,
            &self.thresholds,
        );
    }

    /// `did not complete (interrupted): <the first line of the reason>`, for runs that did not.
    /// A run `--stop-at-violation` stopped at a violation that the check after it confirmed
    /// did what was asked of it.
    pub fn incomplete_reason(&self) -> Option<String> {
        let stopped_as_asked = self.status == Status::StoppedAtViolation && self.violated();
        (self.status != Status::Completed && !stopped_as_asked).then(|| {
            format!(
                "did not complete ({}): {}",
                self.status.as_str(),
                first_line(self.status_reason.as_deref().unwrap_or(""))
            )
        })
    }

    /// Whether any invariant was violated (as opposed to not checked).
    pub fn violated(&self) -> bool {
        self.invariants.iter().any(|i| !i.held && i.error.is_none())
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
        let _ = writeln!(
            out,
            "verdict: {}{}",
            self.verdict.as_str().to_uppercase(),
            self.verdict_note()
        );
        let _ = writeln!(
            out,
            "status: {}{}",
            self.status.as_str(),
            self.status_reason
                .as_deref()
                .map(|r| format!(" — {}", first_line(r)))
                .unwrap_or_default()
        );
        for w in &self.warnings {
            let _ = writeln!(out, "warning: {}", w.message);
        }
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
        if self.setup.requests > 0 {
            let _ = writeln!(
                out,
                "setup       {} requests in {:.1} s, before the load",
                self.setup.requests, self.setup.seconds
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
        if self.ops.total == 0 {
            // Zeros here would read as a measurement; there was none.
            let _ = writeln!(out, "latency     - (no operation was sent)");
        } else {
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
        }
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
        let ms = |us: i64| us as f64 / 1e3;
        let places: Vec<String> = self
            .exercised
            .iter()
            .map(|e| match e.overlapped_keys {
                0 => format!("{}: no key had two at once", e.place),
                n => format!(
                    "{}: {n} of {} keys had two or more at once (for p50 {:.1} ms, p99 {:.1} ms)",
                    e.place,
                    e.keys,
                    ms(e.together_us.p50),
                    ms(e.together_us.p99)
                ),
            })
            .collect();
        if !places.is_empty() {
            let _ = writeln!(out, "same key    {}", places.join("; "));
        }
        let raced = self
            .exercised
            .iter()
            .any(|e| e.place == "requests" && e.overlapped_keys > 0);
        if raced && self.verdict == Verdict::Pass {
            let _ = writeln!(
                out,
                "            same-key requests were in flight together and every invariant held: a race window, if there is one, lies outside what this load reached (a narrower window: try overlap.sync = \"last_byte\"; a dependency reprod does not stand in for: see docs/real-services.md)"
            );
        }
        for o in &self.overlap {
            let together = match o.together {
                0 => "none of them all in flight at once".to_string(),
                n => format!(
                    "{n} of them all in flight at once (for p50 {:.1} ms, p99 {:.1} ms)",
                    ms(o.together_us.p50),
                    ms(o.together_us.p99)
                ),
            };
            let _ = writeln!(
                out,
                "overlap     {}: {} groups ({}), sent within p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {together}",
                o.caller,
                o.groups,
                o.sync,
                ms(o.spread_us.p50),
                ms(o.spread_us.p99),
                ms(o.spread_us.max),
            );
            for r in &o.reached {
                let _ = writeln!(
                    out,
                    "              reached {} in {} groups, within p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                    r.place,
                    r.groups,
                    ms(r.spread_us.p50),
                    ms(r.spread_us.p99),
                    ms(r.spread_us.max),
                );
            }
        }
        if let Some(p) = &self.db_proxy {
            let pools: Vec<String> = p
                .replicas
                .iter()
                .map(|r| {
                    let name = if r.replica.is_empty() {
                        "unnamed"
                    } else {
                        &r.replica
                    };
                    format!("{name} {} (at most {} open)", r.connections, r.max_open)
                })
                .collect();
            let _ = writeln!(
                out,
                "database    {} statements through the proxy, {} injected faults; connections {}",
                p.statements,
                p.faults,
                if pools.is_empty() {
                    "none".to_string()
                } else {
                    pools.join(", ")
                }
            );
            let c = &p.conflicts;
            if c.unique_violations + c.noop_inserts > 0 {
                let mut what = Vec::new();
                if c.unique_violations > 0 {
                    what.push(format!("{} unique violations (23505)", c.unique_violations));
                }
                if c.noop_inserts > 0 {
                    what.push(format!("{} inserts that inserted nothing", c.noop_inserts));
                }
                let count = |k: &KeyConflict| k.unique_violations + k.noop_inserts;
                // Which keys had most, when some had more than one.
                let most: Vec<String> = c
                    .top
                    .iter()
                    .filter(|k| count(k) > 1)
                    .map(|k| format!("{} {}", k.key.as_deref().unwrap_or("(no key)"), count(k)))
                    .collect();
                let _ = writeln!(
                    out,
                    "            duplicate key conflicts: {} on {} keys{}",
                    what.join(" and "),
                    c.keys,
                    if most.is_empty() {
                        String::new()
                    } else {
                        format!(" (most: {})", most.join(", "))
                    }
                );
            }
        }
        if !self.invariants.is_empty() {
            let _ = writeln!(out);
        }
        for i in &self.invariants {
            let mark = match (i.held, &i.error) {
                (_, Some(_)) => "UNCHECKED",
                (true, None) if i.partial => "held*   ",
                (true, None) => "held    ",
                (false, None) => "VIOLATED",
            };
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
        if self.invariants.iter().any(|i| i.partial && i.held) {
            let _ = writeln!(
                out,
                "            * checked on what the incomplete run left: a hold proves nothing"
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "verdict: {}{}",
            self.verdict.as_str().to_uppercase(),
            self.verdict_note()
        );
        out
    }

    /// A Markdown summary for CI pages (GitHub's `GITHUB_STEP_SUMMARY`): the verdict, the
    /// invariants, the warnings and the first lines of the violating key's timeline.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let icon = match self.verdict {
            Verdict::Pass => "✅",
            Verdict::Fail => "❌",
            Verdict::Incomplete => "⚠️",
        };
        let _ = writeln!(
            out,
            "### {icon} reprod {}: {}{}\n",
            self.scenario,
            self.verdict.as_str().to_uppercase(),
            self.verdict_note()
        );
        let _ = writeln!(
            out,
            "status `{}`, seed {}, conditions: {}; {} operations ({} ok, {} failed, {} ambiguous)\n",
            self.status.as_str(),
            self.seed,
            if self.conditions.is_empty() {
                "none (staging)".to_string()
            } else {
                self.conditions.join(", ")
            },
            self.ops.total,
            self.ops.ok,
            self.ops.failed,
            self.ops.ambiguous
        );
        for w in &self.warnings {
            let _ = writeln!(out, "> warning: {}\n", w.message.replace('|', "\\|"));
        }
        if !self.invariants.is_empty() || !self.thresholds.is_empty() {
            let _ = writeln!(out, "| check | result |\n|---|---|");
            for i in &self.invariants {
                let result = match (&i.error, i.held) {
                    (Some(e), _) => format!("not checked: {e}"),
                    (None, true) if i.partial => "held on a partial run".to_string(),
                    (None, true) => "held".to_string(),
                    (None, false) => format!("**violated** for {} key(s)", i.violations),
                };
                let _ = writeln!(
                    out,
                    "| {} | {} |",
                    i.name.replace('|', "\\|"),
                    result.replace('|', "\\|")
                );
            }
            for t in &self.thresholds {
                let _ = writeln!(
                    out,
                    "| threshold {} | {} ({:.3}, limit {:.3}) |",
                    t.name,
                    if t.held { "held" } else { "**exceeded**" },
                    t.actual,
                    t.limit
                );
            }
            let _ = writeln!(out);
        }
        if let Some(e) = &self.explanation
            && let Some(key) = &e.key
        {
            let _ = writeln!(out, "<details><summary>timeline of {key}</summary>\n\n```");
            for event in e.timeline.iter().take(30) {
                let _ = writeln!(out, "T+{:06.0}ms {}", event.t_ms, event.text);
            }
            let _ = writeln!(out, "```\n</details>\n");
        }
        let _ = writeln!(out, "run directory: `{}`\n", self.run_dir);
        out
    }

    /// Why the verdict is what it is, when it is not a plain pass or fail.
    fn verdict_note(&self) -> String {
        match self.verdict {
            Verdict::Incomplete if self.status != Status::Completed => format!(
                " — the run did not complete ({}), and nothing it checked was violated",
                self.status.as_str()
            ),
            Verdict::Incomplete if self.ops.total == 0 => {
                " — no operation was sent, so nothing was tested".to_string()
            }
            Verdict::Incomplete if self.ops.ok == 0 => {
                " — no operation succeeded, so nothing the service did was tested".to_string()
            }
            Verdict::Incomplete => " — an invariant could not be checked".to_string(),
            Verdict::Fail if self.status == Status::StoppedAtViolation => {
                " (the load stopped at the first violation, as --stop-at-violation asked)"
                    .to_string()
            }
            Verdict::Fail if self.status != Status::Completed => {
                format!(" (found before the run stopped: {})", self.status.as_str())
            }
            _ => String::new(),
        }
    }
}

/// The verdict of a run with this status, (operations, of them ok), invariants and thresholds.
pub fn verdict(
    status: Status,
    (ops, ok): (u64, u64),
    invariants: &[InvariantResult],
    thresholds: &[ThresholdResult],
) -> Verdict {
    let violated = invariants.iter().any(|i| !i.held && i.error.is_none())
        || thresholds.iter().any(|t| !t.held);
    let unchecked = invariants.iter().any(|i| i.error.is_some());
    if violated {
        Verdict::Fail
    } else if status != Status::Completed || ops == 0 || ok == 0 || unchecked {
        Verdict::Incomplete
    } else {
        Verdict::Pass
    }
}

/// What a run's outcome can be rendered as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `report.txt` and `reprod run`'s output: the summary, then the explanation.
    Text,
    /// `summary.json` and `--json` (the contract).
    Json,
    /// `junit.xml` and `--junit`.
    Junit,
    /// `report.html`.
    Html,
    /// The GitHub step summary.
    Markdown,
}

/// The one rendering entry point for a run: its summary (with the explanation it carries) as
/// `format`. `page` holds what only the HTML needs (the run over time).
pub fn render(summary: &Summary, format: Format, page: &html::Page<'_>) -> String {
    match format {
        Format::Text => {
            let mut text = summary.to_text();
            if let Some(explanation) = &summary.explanation {
                text.push('\n');
                text.push_str(&explanation.to_text());
            }
            text
        }
        Format::Json => summary.to_json() + "\n",
        Format::Junit => junit::render(summary),
        Format::Html => html::render(summary, page),
        Format::Markdown => summary.to_markdown(),
    }
}

/// z for a two-sided 95% interval.
const Z95: f64 = 1.959_964;

/// Wilson score interval (95%) for `k` successes in `n` trials (`(0, 1)` when `n` is 0).
pub fn wilson(k: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, n) = (k as f64, n as f64);
    let p = k / n;
    let z2 = Z95 * Z95;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z95 * ((p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt()) / (1.0 + z2 / n);
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// 95% interval of the difference `k1/n1 − k2/n2` of two proportions: Newcombe's hybrid score
/// interval (his method 10, built from the two Wilson intervals), which stays inside [−1, 1]
/// and behaves at 0% and 100%, where the textbook interval collapses to a point.
pub fn newcombe(k1: u64, n1: u64, k2: u64, n2: u64) -> (f64, f64) {
    let share = |k: u64, n: u64| if n == 0 { 0.0 } else { k as f64 / n as f64 };
    let (p1, p2) = (share(k1, n1), share(k2, n2));
    let ((l1, u1), (l2, u2)) = (wilson(k1, n1), wilson(k2, n2));
    let d = p1 - p2;
    (
        (d - ((p1 - l1).powi(2) + (u2 - p2).powi(2)).sqrt()).max(-1.0),
        (d + ((u1 - p1).powi(2) + (p2 - l2).powi(2)).sqrt()).min(1.0),
    )
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newcombe_matches_his_worked_examples() {
        // Newcombe (1998), table II, method 10: 56/70 − 48/80 is 0.2000 (0.0524, 0.3339);
        // 9/10 − 3/10 is 0.6000 (0.1705, 0.8090); 10/10 − 0/20 is 1 (0.6791, 1).
        let near =
            |a: (f64, f64), b: (f64, f64)| (a.0 - b.0).abs() < 5e-4 && (a.1 - b.1).abs() < 5e-4;
        assert!(
            near(newcombe(56, 70, 48, 80), (0.0524, 0.3339)),
            "{:?}",
            newcombe(56, 70, 48, 80)
        );
        assert!(
            near(newcombe(9, 10, 3, 10), (0.1705, 0.8090)),
            "{:?}",
            newcombe(9, 10, 3, 10)
        );
        assert!(
            near(newcombe(10, 10, 0, 20), (0.6791, 1.0)),
            "{:?}",
            newcombe(10, 10, 0, 20)
        );
        // Equal shares: an interval around zero.
        let (lo, hi) = newcombe(5, 10, 10, 20);
        assert!(lo < 0.0 && hi > 0.0);
    }

    fn inv(held: bool, error: Option<&str>) -> InvariantResult {
        InvariantResult {
            name: "i".into(),
            held,
            error: error.map(str::to_string),
            ..InvariantResult::default()
        }
    }

    #[test]
    fn only_a_complete_checked_run_with_operations_passes() {
        let held = [inv(true, None)];
        assert_eq!(
            verdict(Status::Completed, (10, 10), &held, &[]),
            Verdict::Pass
        );
        assert_eq!(
            verdict(Status::Completed, (10, 0), &held, &[]),
            Verdict::Incomplete,
            "nothing succeeded, nothing was tested"
        );
        for status in [
            Status::Interrupted,
            Status::ServiceFailed,
            Status::StartFailed,
            Status::HistoryFailed,
            Status::EngineFailed,
            Status::StoppedAtViolation,
        ] {
            assert_eq!(verdict(status, (10, 10), &held, &[]), Verdict::Incomplete);
            assert_eq!(
                verdict(status, (10, 10), &[inv(false, None)], &[]),
                Verdict::Fail,
                "a violation found before the run stopped is real"
            );
        }
        assert_eq!(
            verdict(Status::Completed, (0, 0), &held, &[]),
            Verdict::Incomplete
        );
        assert_eq!(
            verdict(
                Status::Completed,
                (10, 10),
                &[inv(true, None), inv(false, Some("x"))],
                &[]
            ),
            Verdict::Incomplete
        );
        assert_eq!(
            verdict(Status::Completed, (10, 10), &[], &[]),
            Verdict::Pass
        );
        let exceeded = ThresholdResult {
            held: false,
            ..ThresholdResult::default()
        };
        assert_eq!(
            verdict(Status::Completed, (10, 10), &held, &[exceeded]),
            Verdict::Fail
        );
    }
}

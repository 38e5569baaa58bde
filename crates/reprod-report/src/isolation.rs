//! `reprod isolate`'s answer as typed values, and its renderings: the table it prints, the JSON
//! (`isolate --json`, a documented contract), JUnit XML and `isolate.html`.

use std::fmt::Write as _;

use serde::Serialize;

use crate::html::Bar;
use crate::junit::{Case, escape};

/// One group as `isolate --json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct GroupOut {
    /// Completed trials.
    pub trials: u64,
    /// Trials in which it reproduced.
    pub failures: u64,
    /// 95% interval of the reproduction share.
    pub failure_ci: (f64, f64),
    /// Violating keys over keys touched, pooled over the trials.
    pub key_rate: f64,
    /// 95% interval of the per-key rate.
    pub key_rate_ci: (f64, f64),
    /// Trials that did not complete or sent no operation (not counted above).
    pub incomplete: u64,
    /// The trials' run directories.
    pub run_dirs: Vec<String>,
}

/// A condition's verdict.
#[derive(Clone, Debug, Serialize)]
pub struct ConditionResult {
    /// Condition name.
    pub name: String,
    /// Its trials with the condition off.
    #[serde(flatten)]
    pub without: GroupOut,
    /// Switching it off drops reproduction significantly.
    pub necessary: bool,
    /// `necessary`, `amplifies`, `not necessary` or `undecided`.
    pub verdict: String,
}

/// The answer to one question: any invariant, or one invariant.
#[derive(Clone, Debug, Serialize)]
pub struct Answer {
    /// Every active condition on.
    pub baseline: GroupOut,
    /// One per active condition, switched off.
    pub conditions: Vec<ConditionResult>,
    /// Everything off.
    pub staging: GroupOut,
    /// The smallest set found that still reproduces.
    pub minimal: Vec<String>,
    /// A `reprod run` command that reproduces with only that set.
    pub command: Option<String>,
    /// Other ways to the bug: for a member of the minimal set without which it still
    /// reproduced, the minimal set found without it ("any invariant" only).
    #[serde(default)]
    pub alternatives: Vec<Alternative>,
    /// What the swarm's random subsets say of each condition (absent with `--swarm 0`, or
    /// when the baseline never reproduced).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swarm: Option<Swarm>,
}

/// The swarm's answer to one question: seeded random subsets of the active conditions, each
/// condition on in about half of them.
#[derive(Clone, Debug, Serialize)]
pub struct Swarm {
    /// Trials that completed and count.
    pub trials: u64,
    /// Of them, how many reproduced.
    pub failures: u64,
    /// Per active condition.
    pub conditions: Vec<SwarmCondition>,
    /// Pairs of conditions the swarm saw as alternative ways to the bug: it reproduced with
    /// either on and the other off, never with both off.
    pub alternatives: Vec<[String; 2]>,
    /// The trials' run directories.
    pub run_dirs: Vec<String>,
}

/// One side of a swarm comparison: the trials a condition was on (or off) in.
#[derive(Clone, Debug, Serialize)]
pub struct SwarmSide {
    /// Trials.
    pub trials: u64,
    /// Of them, how many reproduced.
    pub failures: u64,
    /// Violating keys over keys touched, pooled.
    pub key_rate: f64,
}

/// What the swarm says of one condition.
#[derive(Clone, Debug, Serialize)]
pub struct SwarmCondition {
    /// Condition name.
    pub name: String,
    /// `trigger`, `suppressor`, `irrelevant` or `undecided`, by reproduction.
    pub class: String,
    /// The trials it was on in.
    pub with: SwarmSide,
    /// The trials it was off in.
    pub without: SwarmSide,
    /// The share of reproducing trials it was on in, and its 95% interval.
    pub share_in_reproducing: f64,
    /// That share's 95% Wilson interval.
    pub share_in_reproducing_ci: (f64, f64),
    /// The share of all trials it was on in (what the share above is when it plays no part).
    pub share_in_all: f64,
    /// Mean per-trial per-key rate with it on minus off, 95% Welch interval over trials
    /// (`null`: fewer than two trials on a side).
    pub key_rate_difference_ci: Option<(f64, f64)>,
    /// `raises`, `lowers` or `no effect` (`too few trials`): the per-key rate with it on, at 95%.
    pub key_rate: String,
    /// Conditions that were on in exactly the same swarm trials: the swarm cannot tell them
    /// apart.
    pub confounded_with: Vec<String>,
}

impl Swarm {
    /// The alternatives in words: "overlap and concurrent_callers are alternative ways to the
    /// bug: it reproduced with either on and the other off, never with both off".
    pub fn alternatives_in_words(&self) -> Vec<String> {
        self.alternatives
            .iter()
            .map(|[a, b]| {
                format!(
                    "{a} and {b} are alternative ways to the bug: it reproduced with either on and the other off, never with both off"
                )
            })
            .collect()
    }
}

/// Another minimal set: the bug's way when one condition of the first is off.
#[derive(Clone, Debug, Serialize)]
pub struct Alternative {
    /// The condition of the first minimal set left off.
    pub without: String,
    /// The smallest set found without it that still reproduces.
    pub minimal: Vec<String>,
    /// A `reprod run` command that reproduces with only that set.
    pub command: String,
}

impl Answer {
    /// The alternatives in words: "reproduces with overlap alone, and without overlap with
    /// concurrent_callers, slow_dependency: neither set is necessary, one of them is".
    pub fn alternatives_in_words(&self) -> Option<String> {
        if self.alternatives.is_empty() {
            return None;
        }
        let set = |s: &[String]| match s.len() {
            0 => "no condition at all".to_string(),
            1 => format!("{} alone", s[0]),
            _ => s.join(" + "),
        };
        let ways: Vec<String> = self
            .alternatives
            .iter()
            .map(|a| format!("without {} with {}", a.without, set(&a.minimal)))
            .collect();
        Some(format!(
            "reproduces with {}, and {}: neither is necessary on its own, one of them is",
            set(&self.minimal),
            ways.join("; ")
        ))
    }
}

/// One invariant's answer.
#[derive(Clone, Debug, Serialize)]
pub struct InvariantAnswer {
    /// The invariant.
    pub name: String,
    /// Its answer.
    #[serde(flatten)]
    pub answer: Answer,
}

/// A trial that did not complete.
#[derive(Clone, Debug, Serialize)]
pub struct IncompleteTrial {
    /// The conditions it ran with.
    pub conditions: Vec<String>,
    /// Its run directory.
    pub run_dir: String,
    /// Why it does not count.
    pub reason: String,
}

/// What `isolate --json` prints: the answer for "any invariant" at the top level (the
/// contract), each invariant's under `invariants`.
#[derive(Clone, Debug, Serialize)]
pub struct Isolation {
    /// The answer for any invariant.
    #[serde(flatten)]
    pub any: Answer,
    /// Per invariant.
    pub invariants: Vec<InvariantAnswer>,
    /// Whether the baseline reproduced at all (when not, there was nothing to isolate).
    pub baseline_reproduced: bool,
    /// Trials that did not complete or sent nothing, not counted anywhere.
    pub incomplete_trials: Vec<IncompleteTrial>,
    /// Trials run, and the most that could have been run.
    pub trials_run: u64,
    /// The announced upper bound.
    pub trials_bound: u64,
    /// Where the trials' run directories are.
    pub isolate_dir: String,
    /// Wall-clock seconds.
    pub elapsed_s: f64,
}

impl Isolation {
    /// The table `reprod isolate` prints.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        if self.invariants.is_empty() {
            answer_text(&mut text, None, &self.any);
        } else {
            answer_text(&mut text, Some("any invariant"), &self.any);
            for i in &self.invariants {
                answer_text(&mut text, Some(&i.name), &i.answer);
            }
        }
        if !self.incomplete_trials.is_empty() {
            let _ = writeln!(
                text,
                "\n{} trial(s) did not count (not completed, or no operation sent):",
                self.incomplete_trials.len()
            );
            for t in &self.incomplete_trials {
                let _ = writeln!(text, "  {}: {}", t.run_dir, t.reason);
            }
        }
        let _ = writeln!(
            text,
            "{} trials (at most {} announced) in {} ({:.0} s)",
            self.trials_run, self.trials_bound, self.isolate_dir, self.elapsed_s
        );
        text
    }
}

fn answer_text(out: &mut String, title: Option<&str>, a: &Answer) {
    let share = |g: &GroupOut| {
        format!(
            "{}/{} ({:.0}%)",
            g.failures,
            g.trials,
            100.0 * g.failures as f64 / g.trials.max(1) as f64
        )
    };
    let pct = |x: f64| format!("{:.1}%", x * 100.0);
    if let Some(title) = title {
        let _ = writeln!(out, "\n== {title}");
    }
    if a.conditions.is_empty() && a.baseline.failures == 0 {
        let _ = writeln!(
            out,
            "baseline: {} — the bug did not reproduce with every condition on",
            share(&a.baseline)
        );
        return;
    }
    let _ = writeln!(
        out,
        "{:<18} {:<14} {:<14} {:<22} verdict",
        "condition", "with", "without", "per-key rate (without)"
    );
    for c in &a.conditions {
        let _ = writeln!(
            out,
            "{:<18} {:<14} {:<14} {:<22} {}",
            c.name,
            share(&a.baseline),
            share(&c.without),
            format!("{} → {}", pct(a.baseline.key_rate), pct(c.without.key_rate)),
            c.verdict
        );
    }
    let _ = writeln!(
        out,
        "{:<18} {:<14} {:<14} {:<22}",
        "staging (all off)",
        share(&a.baseline),
        share(&a.staging),
        format!("{} → {}", pct(a.baseline.key_rate), pct(a.staging.key_rate))
    );
    if let Some(command) = &a.command {
        let _ = writeln!(
            out,
            "minimal set: {}",
            if a.minimal.is_empty() {
                "none (reproduces in staging)".to_string()
            } else {
                a.minimal.join(", ")
            }
        );
        let _ = writeln!(out, "reproduce with: {command}");
        if let Some(words) = a.alternatives_in_words() {
            let _ = writeln!(out, "alternatives: {words}");
            for alt in &a.alternatives {
                let _ = writeln!(out, "  without {}: {}", alt.without, alt.command);
            }
        }
    }
    if let Some(swarm) = &a.swarm {
        swarm_text(out, swarm);
    }
}

fn swarm_text(out: &mut String, swarm: &Swarm) {
    let pct = |x: f64| format!("{:.0}%", x * 100.0);
    let _ = writeln!(
        out,
        "swarm: {} random subsets of the conditions, {} reproduced",
        swarm.trials, swarm.failures
    );
    let _ = writeln!(
        out,
        "  {:<18} {:<11} {:<34} per-key rate with it on",
        "condition", "class", "on in reproducing trials (95% CI)"
    );
    for c in &swarm.conditions {
        let interval = c
            .key_rate_difference_ci
            .map(|(lo, hi)| format!("{:+.1} to {:+.1} points; ", lo * 100.0, hi * 100.0))
            .unwrap_or_default();
        let confounded = if c.confounded_with.is_empty() {
            String::new()
        } else {
            format!(
                "; on in the same trials as {}: not told apart",
                c.confounded_with.join(", ")
            )
        };
        let _ = writeln!(
            out,
            "  {:<18} {:<11} {:<34} {} ({interval}{:.1}% on, {:.1}% off){confounded}",
            c.name,
            c.class,
            format!(
                "{}/{} ({}–{}) vs {} of all",
                c.with.failures,
                c.with.failures + c.without.failures,
                pct(c.share_in_reproducing_ci.0),
                pct(c.share_in_reproducing_ci.1),
                pct(c.share_in_all)
            ),
            c.key_rate,
            c.with.key_rate * 100.0,
            c.without.key_rate * 100.0,
        );
    }
    for words in swarm.alternatives_in_words() {
        let _ = writeln!(out, "  {words}");
    }
}

impl Isolation {
    /// The one rendering entry point of an isolation, as `format` (`Markdown` is its text).
    pub fn render(&self, scenario: &str, format: crate::Format) -> String {
        match format {
            crate::Format::Text | crate::Format::Markdown => self.to_text(),
            crate::Format::Json => serde_json::to_string_pretty(self).unwrap_or_default() + "\n",
            crate::Format::Junit => self.to_junit(scenario),
            crate::Format::Html => self.to_html(scenario),
        }
    }

    /// `isolate.html`: per question, the reproduction share and the per-key rate of every group
    /// with their 95% intervals, the verdicts, the minimal set and its command. Self-contained.
    pub fn to_html(&self, scenario: &str) -> String {
        let mut out = String::new();
        let _ = write!(
            out,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>reprod isolate {}</title><style>{}</style></head><body>\n<h1>reprod isolate {}</h1>\n<p>{} trials (at most {} announced), {:.0} s; trials in <code>{}</code></p>\n",
            escape(scenario),
            crate::html::STYLE,
            escape(scenario),
            self.trials_run,
            self.trials_bound,
            self.elapsed_s,
            escape(&self.isolate_dir)
        );
        let mut questions = vec![("any invariant".to_string(), &self.any)];
        questions.extend(self.invariants.iter().map(|i| (i.name.clone(), &i.answer)));
        for (n, (name, a)) in questions.iter().enumerate() {
            let _ = writeln!(out, "<h2>{}</h2>", escape(name));
            let mut groups: Vec<(String, &GroupOut, &str)> =
                vec![("baseline (all on)".to_string(), &a.baseline, "#c62828")];
            for c in &a.conditions {
                groups.push((format!("without {}", c.name), &c.without, "#1565c0"));
            }
            groups.push(("staging (all off)".to_string(), &a.staging, "#2e7d32"));
            let share: Vec<Bar<'_>> = groups
                .iter()
                .map(|(label, g, color)| Bar {
                    label: label.clone(),
                    value: g.failures as f64 / g.trials.max(1) as f64,
                    interval: g.failure_ci,
                    color,
                    note: format!("{}/{} trials", g.failures, g.trials),
                })
                .collect();
            crate::html::interval_bars(
                &mut out,
                &format!("share-{n}"),
                "share of trials that reproduced",
                &share,
            );
            let rate_max = groups
                .iter()
                .map(|(_, g, _)| g.key_rate_ci.1)
                .fold(0.0_f64, f64::max)
                .max(1e-6);
            let rate: Vec<Bar<'_>> = groups
                .iter()
                .map(|(label, g, color)| Bar {
                    label: label.clone(),
                    value: g.key_rate / rate_max,
                    interval: (g.key_rate_ci.0 / rate_max, g.key_rate_ci.1 / rate_max),
                    color,
                    note: format!("{:.1}% of keys", g.key_rate * 100.0),
                })
                .collect();
            crate::html::interval_bars(
                &mut out,
                &format!("rate-{n}"),
                "violating keys per key touched (scaled to the largest interval)",
                &rate,
            );
            out.push_str("<table><tr><th>condition</th><th>verdict</th></tr>\n");
            for c in &a.conditions {
                let _ = writeln!(
                    out,
                    "<tr><td>{}</td><td>{}</td></tr>",
                    escape(&c.name),
                    escape(&c.verdict)
                );
            }
            out.push_str("</table>\n");
            if let Some(command) = &a.command {
                let _ = writeln!(
                    out,
                    "<p>minimal set: <b>{}</b><br>reproduce with: <code>{}</code></p>",
                    if a.minimal.is_empty() {
                        "none (reproduces in staging)".to_string()
                    } else {
                        escape(&a.minimal.join(", "))
                    },
                    escape(command)
                );
            }
            if let Some(words) = a.alternatives_in_words() {
                let _ = writeln!(out, "<p>alternatives: {}</p>", escape(&words));
            }
            if let Some(swarm) = &a.swarm {
                let _ = writeln!(
                    out,
                    "<h3>Swarm: {} random subsets, {} reproduced</h3>\n<table><tr><th>condition</th><th>class</th><th>on in reproducing trials</th><th>on in all trials</th><th>per-key rate with it on</th></tr>",
                    swarm.trials, swarm.failures
                );
                for c in &swarm.conditions {
                    let _ = writeln!(
                        out,
                        "<tr><td>{}</td><td>{}</td><td>{}/{} ({:.0}–{:.0}%)</td><td>{:.0}%</td><td>{}{}</td></tr>",
                        escape(&c.name),
                        escape(&c.class),
                        c.with.failures,
                        c.with.failures + c.without.failures,
                        c.share_in_reproducing_ci.0 * 100.0,
                        c.share_in_reproducing_ci.1 * 100.0,
                        c.share_in_all * 100.0,
                        escape(&c.key_rate),
                        c.key_rate_difference_ci
                            .map(|(lo, hi)| format!(
                                " ({:+.1} to {:+.1} points)",
                                lo * 100.0,
                                hi * 100.0
                            ))
                            .unwrap_or_default()
                    );
                }
                out.push_str("</table>\n");
                for words in swarm.alternatives_in_words() {
                    let _ = writeln!(out, "<p>{}</p>", escape(&words));
                }
            }
        }
        if !self.incomplete_trials.is_empty() {
            out.push_str("<h2>Trials that did not count</h2><ul>\n");
            for t in &self.incomplete_trials {
                let _ = writeln!(
                    out,
                    "<li><code>{}</code>: {}</li>",
                    escape(&t.run_dir),
                    escape(&t.reason)
                );
            }
            out.push_str("</ul>\n");
        }
        out.push_str("</body></html>\n");
        out
    }

    /// JUnit XML: whether the baseline reproduced, one case per question naming what it needs,
    /// and an error case when trials did not count.
    pub fn to_junit(&self, scenario: &str) -> String {
        let case = |name: String, outcome: Option<(&'static str, &'static str, String)>| Case {
            classname: "isolate",
            name,
            outcome: outcome
                .map(|(element, kind, message)| (element, kind, message, String::new())),
        };
        let mut cases = vec![case(
            "the baseline reproduces".to_string(),
            (!self.baseline_reproduced).then(|| {
                (
                    "failure",
                    "not_reproduced",
                    "no invariant was violated with every condition on".to_string(),
                )
            }),
        )];
        let mut questions = vec![("any invariant".to_string(), &self.any)];
        questions.extend(self.invariants.iter().map(|i| (i.name.clone(), &i.answer)));
        for (name, a) in questions {
            if a.command.is_some() {
                let needs = if a.minimal.is_empty() {
                    "nothing (staging reproduces)".to_string()
                } else {
                    a.minimal.join(", ")
                };
                cases.push(case(format!("{name}: needs {needs}"), None));
            }
        }
        cases.push(case(
            "every trial completed".to_string(),
            (!self.incomplete_trials.is_empty()).then(|| {
                (
                    "error",
                    "incomplete_trials",
                    format!("{} trial(s) did not count", self.incomplete_trials.len()),
                )
            }),
        ));
        crate::junit::document(
            &format!("reprod isolate {scenario}"),
            self.elapsed_s,
            &[],
            &cases,
            &self.to_text(),
        )
    }
}

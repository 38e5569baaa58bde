//! `reprod isolate`: which conditions are necessary for the bug, with reproduction rates.
//!
//! Runs the scenario N times with every active condition on (baseline), N times with each one
//! switched off in turn, and N times in staging (all off). Trial i of every group uses the same
//! derived seed, so groups differ only in the condition. Each trial starts from fresh database
//! state: a SQLite URL that depends on `{run_dir}` is a new file per trial; a PostgreSQL URL gets
//! a scratch database per trial, dropped afterwards. A condition is necessary when switching it
//! off drops reproduction significantly (95% Wilson intervals apart); it amplifies when
//! reproduction holds but the per-key violation rate falls significantly.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use reprod_scenario::{Condition, Scenario, Template, Var};
use serde::Serialize;

use crate::run::{QUIET, perform};
use crate::{IsolateArgs, exit};

/// z for a two-sided 95% interval.
const Z95: f64 = 1.959_964;

/// Wilson score interval for `k` successes in `n` trials.
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

/// One group of trials.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Group {
    /// Trials run.
    pub trials: u64,
    /// Trials in which an invariant was violated (the bug reproduced).
    pub failures: u64,
    /// 95% interval of the reproduction share.
    pub failure_ci: (f64, f64),
    /// Violating keys over keys touched, pooled over the trials.
    pub key_rate: f64,
    /// 95% interval of the per-key rate.
    pub key_rate_ci: (f64, f64),
    #[serde(skip)]
    violating_keys: u64,
    #[serde(skip)]
    keys: u64,
    /// The trials' run directories.
    pub run_dirs: Vec<String>,
}

impl Group {
    fn add(&mut self, reproduced: bool, violating: u64, keys: u64, dir: &Path) {
        self.trials += 1;
        self.failures += u64::from(reproduced);
        self.violating_keys += violating;
        self.keys += keys;
        self.failure_ci = wilson(self.failures, self.trials);
        self.key_rate = if self.keys == 0 {
            0.0
        } else {
            self.violating_keys as f64 / self.keys as f64
        };
        self.key_rate_ci = wilson(self.violating_keys, self.keys);
        self.run_dirs.push(dir.display().to_string());
    }

    fn share(&self) -> String {
        format!(
            "{}/{} ({:.0}%)",
            self.failures,
            self.trials,
            100.0 * self.failures as f64 / self.trials.max(1) as f64
        )
    }
}

/// A condition's verdict.
#[derive(Clone, Debug, Serialize)]
pub struct ConditionResult {
    /// Condition name.
    pub name: String,
    /// Its trials with the condition off.
    #[serde(flatten)]
    pub without: Group,
    /// Switching it off drops reproduction significantly.
    pub necessary: bool,
    /// `necessary`, `amplifies` or `not necessary`.
    pub verdict: String,
}

/// What `isolate --json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct Isolation {
    /// Every active condition on.
    pub baseline: Group,
    /// One per active condition, switched off.
    pub conditions: Vec<ConditionResult>,
    /// Everything off.
    pub staging: Group,
    /// The smallest set found that still reproduces.
    pub minimal: Vec<String>,
    /// A `reprod run` command that reproduces with only that set.
    pub command: Option<String>,
    /// Where the trials' run directories are.
    pub isolate_dir: String,
    /// Wall-clock seconds.
    pub elapsed_s: f64,
}

pub fn main(args: IsolateArgs) -> u8 {
    let Some(scenario) = crate::load(&args.scenario) else {
        return exit::USAGE;
    };
    crate::run::on_runtime(isolate(scenario, args))
}

/// How each trial gets fresh database state.
enum Fresh {
    /// No database, or a SQLite file under `{run_dir}`: nothing to do.
    Nothing,
    /// A scratch database per trial on this server.
    Postgres(String),
}

fn fresh_state(scenario: &Scenario) -> Result<Fresh, String> {
    let Some(db) = &scenario.database else {
        return Ok(Fresh::Nothing);
    };
    if db.url.uses(|v| *v == Var::RunDir) {
        return Ok(Fresh::Nothing);
    }
    match db.url.as_literal() {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(Fresh::Postgres(url))
        }
        Some(url) => Err(format!(
            "the database URL {url:?} names one fixed SQLite file, so trials would share its state; \
             put it under {{run_dir}} (for example sqlite:{{run_dir}}/db.sqlite)"
        )),
        None => Ok(Fresh::Nothing),
    }
}

struct Trials<'a> {
    scenario: &'a Scenario,
    shown: String,
    out: PathBuf,
    fresh: Fresh,
    run_counter: u64,
}

impl Trials<'_> {
    /// Runs trial `i` with only `on` switched on; returns (reproduced, violating keys, keys).
    async fn run(&mut self, on: &[Condition], i: u64) -> Result<(bool, u64, u64, PathBuf), u8> {
        let mut s = self.scenario.clone();
        s.keep_only(on);
        s.seed = reprod_engine::mix(self.scenario.seed, i + 1);
        self.run_counter += 1;
        let scratch = match &self.fresh {
            Fresh::Postgres(admin) => {
                let name = format!("reprod_isolate_{}_{}", std::process::id(), self.run_counter);
                let url = reprod_check::scratch::create(admin, &name)
                    .await
                    .map_err(|e| {
                        eprintln!("reprod: {e}");
                        exit::INCOMPLETE
                    })?;
                if let Some(db) = &mut s.database {
                    db.url = Template::literal(&url);
                }
                Some((admin.clone(), name))
            }
            Fresh::Nothing => None,
        };
        let finished = perform(&s, &self.shown, &self.out).await;
        if let Some((admin, name)) = scratch
            && let Err(e) = reprod_check::scratch::drop(&admin, &name).await
        {
            eprintln!("reprod: {e}");
        }
        let finished = finished?;
        if finished.code == exit::INCOMPLETE {
            eprintln!(
                "reprod: trial in {} did not complete: {}",
                finished.run_dir.display(),
                finished.summary.status
            );
            return Err(exit::INCOMPLETE);
        }
        if let Some(i) = finished
            .summary
            .invariants
            .iter()
            .find(|i| i.error.is_some())
        {
            eprintln!(
                "reprod: invariant {:?} could not be checked: {}",
                i.name,
                i.error.as_deref().unwrap_or("")
            );
            return Err(exit::INCOMPLETE);
        }
        let reproduced = finished.summary.invariants.iter().any(|i| !i.held);
        let (violating, keys) =
            reprod_history::read::key_counts(&finished.run_dir.join("history.sqlite"))
                .unwrap_or((0, 0));
        Ok((reproduced, violating, keys, finished.run_dir))
    }
}

/// Switching a condition off decisively lowers reproduction.
fn lower(without: &Group, baseline: &Group) -> bool {
    without.failure_ci.1 < baseline.failure_ci.0
}

/// Reproduction held, but the per-key rate fell significantly.
fn amplifies(without: &Group, baseline: &Group) -> bool {
    without.failures > 0 && without.key_rate_ci.1 < baseline.key_rate_ci.0
}

async fn isolate(scenario: Scenario, args: IsolateArgs) -> u8 {
    let started = Instant::now();
    let mut scenario = scenario;
    if let Some(d) = args.duration {
        scenario.duration = d;
    }
    let fresh = match fresh_state(&scenario) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("reprod: {e}");
            return exit::USAGE;
        }
    };
    let active = scenario.active_conditions();
    let n = args.trials.max(1);
    let out = args.out.join(format!(
        "isolate-{}-{}",
        scenario.name,
        crate::time::compact_now()
    ));
    let per_trial_s = scenario.duration.as_secs_f64() + scenario.drain.as_secs_f64() + 1.5;
    let total = n as usize * (active.len() + 2);
    eprintln!(
        "reprod isolate: {} active condition(s) ({}); up to {total} trials of ~{per_trial_s:.0} s: at most ~{:.0} s, less when a condition is decided early",
        active.len(),
        active
            .iter()
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join(", "),
        total as f64 * per_trial_s
    );
    QUIET.store(true, Ordering::Relaxed);
    let mut trials = Trials {
        scenario: &scenario,
        shown: args.scenario.scenario.display().to_string(),
        out: out.clone(),
        fresh,
        run_counter: 0,
    };
    let mut done = 0;
    let mut progress = |label: &str, g: &Group| {
        done += 1;
        eprintln!(
            "[{:>4.0}s] {done:>3} trials  {label:<22} {}",
            started.elapsed().as_secs_f64(),
            g.share()
        );
    };

    let mut baseline = Group::default();
    for i in 0..n {
        match trials.run(&active, i).await {
            Ok((r, v, k, dir)) => baseline.add(r, v, k, &dir),
            Err(code) => return code,
        }
        progress("baseline", &baseline);
    }
    if baseline.failures == 0 {
        QUIET.store(false, Ordering::Relaxed);
        eprintln!(
            "reprod isolate: the baseline never reproduced in {n} trial(s): no invariant was violated with every condition on, so there is nothing to isolate"
        );
        let result = Isolation {
            baseline,
            conditions: Vec::new(),
            staging: Group::default(),
            minimal: Vec::new(),
            command: None,
            isolate_dir: out.display().to_string(),
            elapsed_s: started.elapsed().as_secs_f64(),
        };
        print(&args, &result);
        return exit::VIOLATED;
    }

    let mut conditions = Vec::new();
    for c in &active {
        let on: Vec<Condition> = active.iter().copied().filter(|x| x != c).collect();
        let mut g = Group::default();
        for i in 0..n {
            match trials.run(&on, i).await {
                Ok((r, v, k, dir)) => g.add(r, v, k, &dir),
                Err(code) => return code,
            }
            progress(&format!("without {}", c.name()), &g);
            // Decided early: clearly lower, or reproducing every time like the baseline.
            let all_like_baseline = g.failures == g.trials && baseline.failures == baseline.trials;
            if g.trials >= 3
                && (lower(&g, &baseline)
                    || (all_like_baseline && !amplifies(&g, &baseline) && g.trials >= n.min(3)))
            {
                break;
            }
        }
        let necessary = lower(&g, &baseline);
        let verdict = if necessary {
            "necessary"
        } else if amplifies(&g, &baseline) {
            "amplifies"
        } else {
            "not necessary"
        };
        conditions.push(ConditionResult {
            name: c.name().to_string(),
            without: g,
            necessary,
            verdict: verdict.to_string(),
        });
    }

    let mut staging = Group::default();
    for i in 0..n {
        match trials.run(&[], i).await {
            Ok((r, v, k, dir)) => staging.add(r, v, k, &dir),
            Err(code) => return code,
        }
        progress("staging", &staging);
        if staging.trials >= 3 && lower(&staging, &baseline) {
            break;
        }
    }

    // Greedy minimal set: drop conditions that are not necessary, weakest first, keeping a drop
    // when one fresh trial of the smaller set still reproduces; then re-verify the final set.
    let mut minimal: Vec<Condition> = active.clone();
    let mut order: Vec<&ConditionResult> = conditions.iter().filter(|c| !c.necessary).collect();
    order.sort_by(|a, b| b.without.key_rate.total_cmp(&a.without.key_rate));
    let mut seed_index = n + 100;
    for candidate in order {
        let Ok(c) = candidate.name.parse::<Condition>() else {
            continue;
        };
        let trial_set: Vec<Condition> = minimal.iter().copied().filter(|x| *x != c).collect();
        seed_index += 1;
        let still = match trials.run(&trial_set, seed_index).await {
            Ok((r, _, _, _)) => r,
            Err(code) => return code,
        };
        done += 1;
        eprintln!(
            "[{:>4.0}s] {done:>3} trials  minimal set without {}: {}",
            started.elapsed().as_secs_f64(),
            c.name(),
            if still {
                "still reproduces"
            } else {
                "does not reproduce"
            }
        );
        if still {
            minimal = trial_set;
        }
    }
    let mut verified = 0;
    for _ in 0..2 {
        seed_index += 1;
        match trials.run(&minimal, seed_index).await {
            Ok((r, _, _, _)) => verified += u64::from(r),
            Err(code) => return code,
        }
        done += 1;
    }
    eprintln!(
        "[{:>4.0}s] {done:>3} trials  minimal set re-verified: reproduced {verified}/2",
        started.elapsed().as_secs_f64()
    );
    if verified == 0 {
        // The greedy path ended somewhere that does not reproduce after all: keep every
        // condition that is necessary or amplifies, which the groups above did measure.
        minimal = active
            .iter()
            .copied()
            .filter(|c| {
                conditions
                    .iter()
                    .any(|r| r.name == c.name() && r.verdict != "not necessary")
            })
            .collect();
    }
    QUIET.store(false, Ordering::Relaxed);
    let minimal_names: Vec<String> = minimal.iter().map(|c| c.name().to_string()).collect();
    let mut command = format!("reprod run {}", args.scenario.scenario.display());
    for (k, v) in &args.scenario.sets {
        let _ = write!(command, " --set {k}={v}");
    }
    if minimal_names.is_empty() {
        command.push_str(" --staging");
    } else {
        let _ = write!(command, " --only {}", minimal_names.join(","));
    }
    let result = Isolation {
        baseline,
        conditions,
        staging,
        minimal: minimal_names,
        command: Some(command),
        isolate_dir: out.display().to_string(),
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    print(&args, &result);
    exit::PASS
}

fn print(args: &IsolateArgs, r: &Isolation) {
    if args.json {
        println!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
        return;
    }
    let pct = |x: f64| format!("{:.1}%", x * 100.0);
    println!(
        "{:<18} {:<14} {:<14} {:<22} verdict",
        "condition", "with", "without", "per-key rate (without)"
    );
    for c in &r.conditions {
        println!(
            "{:<18} {:<14} {:<14} {:<22} {}",
            c.name,
            r.baseline.share(),
            c.without.share(),
            format!("{} → {}", pct(r.baseline.key_rate), pct(c.without.key_rate)),
            c.verdict
        );
    }
    if r.staging.trials > 0 {
        println!(
            "{:<18} {:<14} {:<14} {:<22}",
            "staging (all off)",
            r.baseline.share(),
            r.staging.share(),
            format!("{} → {}", pct(r.baseline.key_rate), pct(r.staging.key_rate))
        );
    }
    if r.conditions.is_empty() && r.baseline.failures == 0 {
        println!(
            "baseline: {} — the bug did not reproduce with every condition on",
            r.baseline.share()
        );
    }
    if let Some(command) = &r.command {
        println!(
            "\nminimal set: {}",
            if r.minimal.is_empty() {
                "none (reproduces in staging)".to_string()
            } else {
                r.minimal.join(", ")
            }
        );
        println!("reproduce with: {command}");
    }
    println!("trials in {} ({:.0} s)", r.isolate_dir, r.elapsed_s);
}

#[cfg(test)]
mod tests {
    use super::wilson;

    #[test]
    fn wilson_matches_known_intervals() {
        let (lo, hi) = wilson(5, 5);
        assert!((lo - 0.566).abs() < 0.001 && hi == 1.0, "{lo} {hi}");
        let (lo, hi) = wilson(0, 5);
        assert!(lo == 0.0 && (hi - 0.434).abs() < 0.001, "{lo} {hi}");
        let (lo, hi) = wilson(50, 100);
        assert!(
            (lo - 0.404).abs() < 0.001 && (hi - 0.596).abs() < 0.001,
            "{lo} {hi}"
        );
    }
}

//! `reprod isolate`: which conditions are necessary for the bug, with reproduction rates.
//!
//! Runs the scenario N times with every active condition on (baseline), N times with each one
//! switched off in turn, and N times in staging (all off). Trial i of every group uses the same
//! derived seed, so groups differ only in the condition. Each trial starts from fresh database
//! state: a SQLite URL that depends on `{run_dir}` is a new file per trial; a PostgreSQL URL gets
//! a scratch database per trial, dropped afterwards.
//!
//! Verdicts are given for "any invariant" and for each invariant on its own (a scenario with two
//! races learns which conditions each needs), each with its own minimal set: a greedy search
//! that drops one condition at a time, weakest first, and keeps a drop when N trials of the
//! smaller set still reproduce not significantly less often than the baseline. Every set is run
//! at most once (N trials), whichever question asked for it. A trial that did not complete, or
//! sent no operation, is named and counted apart — never as "did not reproduce". The statistics
//! are `reprod_check::stats`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use reprod_check::stats::{self, ConditionVerdict, Tally};
use reprod_report::Verdict;
pub use reprod_report::isolation::{
    Alternative, Answer, ConditionResult, GroupOut, IncompleteTrial, InvariantAnswer, Isolation,
};
use reprod_scenario::{Condition, Scenario, Template, Var};

use crate::session::perform;
use crate::{Interrupt, Observer, Progress, RunError};

/// What `isolate` is asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    /// Trials per group (at least 1).
    pub trials: u64,
    /// Where the trials' run directories go (a directory of their own is made under it).
    pub out: PathBuf,
    /// The scenario file as the user named it, for run records and the printed command.
    pub scenario_path: String,
    /// The `--set` overrides, for the printed command.
    pub sets: Vec<(String, String)>,
    /// Parameters whose values the printed command must not show.
    pub secret_params: Vec<String>,
}

/// Why an isolation could not answer.
#[derive(Debug, thiserror::Error)]
pub enum IsolateError {
    /// The scenario cannot be isolated as it is (nothing ran).
    #[error("{0}")]
    Unfit(String),
    /// No baseline trial completed: nothing can be concluded.
    #[error("no baseline trial completed ({0} did not count; see above): nothing can be concluded")]
    NoBaseline(usize),
    /// A stop was asked for.
    #[error("interrupted; the trials so far are in {0}")]
    Interrupted(String),
    /// A trial could not even be set up.
    #[error(transparent)]
    Setup(#[from] RunError),
}

/// Passes a trial's problems on and keeps its notes and progress to itself: `isolate` shows one
/// line per trial instead.
struct Quiet<'a>(&'a dyn Observer);

impl Observer for Quiet<'_> {
    fn note(&self, _text: &str) {}
    fn problem(&self, text: &str) {
        self.0.problem(text);
    }
    fn progress(&self, _progress: &Progress) {}
}

/// The question a tally answers: any invariant, or one by name.
type Question = Option<String>;

/// What N trials of one set of conditions came to.
#[derive(Clone, Debug, Default)]
struct GroupRun {
    /// Per question.
    tallies: BTreeMap<Question, Tally>,
    /// Trials that did not complete or sent nothing: (run directory, why).
    incomplete: Vec<(String, String)>,
    run_dirs: Vec<String>,
}

impl GroupRun {
    fn tally(&self, q: &Question) -> Tally {
        self.tallies.get(q).cloned().unwrap_or_default()
    }
}

fn group_out(run: &GroupRun, q: &Question) -> GroupOut {
    let t = run.tally(q);
    GroupOut {
        trials: t.trials,
        failures: t.failures,
        failure_ci: t.failure_ci(),
        key_rate: t.key_rate(),
        key_rate_ci: t.key_rate_ci(),
        incomplete: run.incomplete.len() as u64,
        run_dirs: run.run_dirs.clone(),
    }
}

/// Checks that `scenario` can be isolated with trials of `duration`: no caller may start after
/// the load ends (its trials would send it nothing).
pub fn check_duration(scenario: &Scenario) -> Result<(), IsolateError> {
    let d = scenario.duration;
    if let Some(late) = scenario.callers.iter().find(|c| c.first_arrival() >= d) {
        return Err(IsolateError::Unfit(format!(
            "--duration {} is shorter than caller {}'s start ({}): its trials would send it nothing; give at least --duration {}",
            reprod_scenario::format_duration(d),
            late.name,
            reprod_scenario::format_duration(late.first_arrival()),
            reprod_scenario::format_duration(
                late.first_arrival() + std::time::Duration::from_secs(1)
            )
        )));
    }
    Ok(())
}

/// How each trial gets fresh database state.
enum Fresh {
    /// No database, or a SQLite file under `{run_dir}`: nothing to do.
    Nothing,
    /// A scratch database per trial on this server.
    Postgres(String),
}

fn fresh_state(scenario: &Scenario) -> Result<Fresh, IsolateError> {
    let Some(db) = &scenario.database else {
        return Ok(Fresh::Nothing);
    };
    let external: Vec<&reprod_scenario::Service> = scenario
        .services
        .iter()
        .filter(|s| matches!(s.kind, reprod_scenario::ServiceKind::External { .. }))
        .collect();
    if let Some(service) = external.iter().find(|s| s.reset.is_none()) {
        return Err(IsolateError::Unfit(format!(
            "service {:?} is already running at a url, so reprod cannot give its trials fresh database state: each trial would see what the ones before it left; give it reset_sql = \"reset.sql\" (run in [database] before each trial) or reset = [\"./reset.sh\"], or start it with command = [...] (it then gets {{database.url}}, new for every trial)",
            service.name
        )));
    }
    // The services at a url are reset before every trial, in the database they use.
    if !external.is_empty() {
        return Ok(Fresh::Nothing);
    }
    // Every run makes its own (`fresh = true`), and a SQLite file under `{run_dir}` is new.
    if db.fresh.is_some() || db.url.uses(|v| *v == Var::RunDir) {
        return Ok(Fresh::Nothing);
    }
    match db.url.as_literal() {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(Fresh::Postgres(
                reprod_check::scratch::maintenance_url(&url)
                    .map_err(|e| IsolateError::Unfit(e.to_string()))?,
            ))
        }
        // Without `fresh`, a trial gets a scratch database made here, empty: said in the docs.
        Some(url) => Err(IsolateError::Unfit(format!(
            "the database URL {url:?} names one fixed SQLite file, so trials would share its state; \
             put it under {{run_dir}} (for example sqlite:{{run_dir}}/db.sqlite)"
        ))),
        None => Ok(Fresh::Nothing),
    }
}

/// How one trial ended, for the tallies.
enum TrialEnd {
    /// It completed: which invariants broke, and the key counts.
    Counted {
        broke: BTreeSet<String>,
        keys: reprod_history::read::KeyCounts,
    },
    /// It does not count, and why.
    Incomplete(String),
}

struct Trials<'a> {
    obs: &'a dyn Observer,
    interrupt: &'a Interrupt,
    scenario: &'a Scenario,
    shown: String,
    out: PathBuf,
    fresh: Fresh,
    questions: Vec<Question>,
    cache: BTreeMap<Vec<Condition>, GroupRun>,
    incomplete: Vec<IncompleteTrial>,
    run_counter: u64,
    started: Instant,
    bound: u64,
}

impl Trials<'_> {
    /// Runs trial `i` with only `on` switched on.
    async fn trial(
        &mut self,
        on: &[Condition],
        i: u64,
    ) -> Result<(TrialEnd, PathBuf), IsolateError> {
        if self.interrupt.is_requested() {
            return Err(IsolateError::Interrupted(self.out.display().to_string()));
        }
        let mut s = self.scenario.clone();
        s.keep_only(on);
        s.seed = reprod_engine::mix(self.scenario.seed, i + 1);
        self.run_counter += 1;
        let scratch = match &self.fresh {
            Fresh::Postgres(admin) => {
                let name = format!("reprod_isolate_{}_{}", std::process::id(), self.run_counter);
                let url = reprod_check::scratch::create(admin, &name)
                    .await
                    .map_err(RunError::from)?;
                if let Some(db) = &mut s.database {
                    db.url = Template::literal(&url);
                }
                Some((admin.clone(), name))
            }
            Fresh::Nothing => None,
        };
        let finished = perform(&s, &self.shown, &self.out, &Quiet(self.obs), self.interrupt).await;
        if let Some((admin, name)) = scratch
            && let Err(e) = reprod_check::scratch::drop(&admin, &name).await
        {
            self.obs.problem(&format!("reprod: {e}"));
        }
        let finished = finished?;
        if self.interrupt.is_requested() {
            return Err(IsolateError::Interrupted(self.out.display().to_string()));
        }
        let summary = &finished.summary;
        let unchecked = summary.invariants.iter().find(|i| i.error.is_some());
        let end = if let Some(reason) = summary.incomplete_reason() {
            TrialEnd::Incomplete(format!("it {reason}"))
        } else if summary.ops.total == 0 {
            TrialEnd::Incomplete("it sent no operation".to_string())
        } else if let Some(i) = unchecked {
            TrialEnd::Incomplete(format!(
                "invariant {:?} could not be checked: {}",
                i.name,
                i.error.as_deref().unwrap_or("")
            ))
        } else {
            let broke = summary
                .invariants
                .iter()
                .filter(|i| !i.held)
                .map(|i| i.name.clone())
                .collect();
            debug_assert!(summary.verdict != Verdict::Incomplete);
            let keys = reprod_history::read::key_counts(&finished.run_dir.join("history.sqlite"))
                .unwrap_or_default();
            TrialEnd::Counted { broke, keys }
        };
        Ok((end, finished.run_dir))
    }

    /// The group of `on`: run (N trials, fewer when decided early against `baseline`) unless
    /// some question already had it run.
    async fn group(
        &mut self,
        on: &[Condition],
        label: &str,
        n: u64,
        baseline: Option<&GroupRun>,
    ) -> Result<GroupRun, IsolateError> {
        let key: Vec<Condition> = on.to_vec();
        if let Some(run) = self.cache.get(&key) {
            return Ok(run.clone());
        }
        let mut run = GroupRun::default();
        for i in 0..n {
            let (end, dir) = self.trial(on, i).await?;
            let shown_dir = dir.display().to_string();
            run.run_dirs.push(shown_dir.clone());
            match end {
                TrialEnd::Counted { broke, keys } => {
                    for q in &self.questions {
                        let (reproduced, violating) = match q {
                            None => (!broke.is_empty(), keys.any),
                            Some(name) => (
                                broke.contains(name),
                                keys.per_invariant.get(name).copied().unwrap_or(0),
                            ),
                        };
                        run.tallies.entry(q.clone()).or_default().add(
                            reproduced,
                            violating,
                            keys.touched,
                        );
                    }
                }
                TrialEnd::Incomplete(reason) => {
                    self.obs.problem(&format!(
                        "reprod isolate: trial in {shown_dir} does not count: {reason}"
                    ));
                    run.incomplete.push((shown_dir.clone(), reason.clone()));
                    self.incomplete.push(IncompleteTrial {
                        conditions: on.iter().map(|c| c.name().to_string()).collect(),
                        run_dir: shown_dir,
                        reason,
                    });
                }
            }
            let any = run.tally(&None);
            self.obs.note(&format!(
                "[{:>4.0}s] {:>3}/{} trials  {label:<30} {}{}",
                self.started.elapsed().as_secs_f64(),
                self.run_counter,
                self.bound,
                any.share(),
                if run.incomplete.is_empty() {
                    String::new()
                } else {
                    format!(", {} incomplete", run.incomplete.len())
                }
            ));
            // Decided early (on every question): clearly lower, or reproducing every time.
            if let Some(baseline) = baseline
                && self
                    .questions
                    .iter()
                    .all(|q| stats::decided_early(&run.tally(q), &baseline.tally(q), n))
            {
                break;
            }
        }
        self.cache.insert(key, run.clone());
        Ok(run)
    }
}

/// Runs `reprod isolate` on `scenario` (its duration already what the trials should run).
pub async fn isolate(
    scenario: Scenario,
    options: Options,
    obs: &dyn Observer,
    interrupt: &Interrupt,
) -> Result<Isolation, IsolateError> {
    check_duration(&scenario)?;
    let fresh = fresh_state(&scenario)?;
    let started = Instant::now();
    let active = scenario.active_conditions();
    let n = options.trials.max(1);
    let names: Vec<String> = scenario.invariants.iter().map(|i| i.name.clone()).collect();
    let mut questions: Vec<Question> = vec![None];
    if names.len() > 1 {
        questions.extend(names.iter().cloned().map(Some));
    }
    let out = options.out.join(format!(
        "isolate-{}-{}",
        scenario.name,
        crate::time::compact_now()
    ));
    let a = active.len() as u64;
    // Groups: baseline, one per condition, staging. Each question's greedy search then tries at
    // most one new set per condition after its first step (whose set is a one-off group).
    // The alternatives' searches ("any invariant" only): for each member of its minimal set, at
    // most one new set per remaining condition after the first step (a one-off group).
    let bound =
        n * (2 + a + questions.len() as u64 * a.saturating_sub(1) + a * a.saturating_sub(2));
    let per_trial_s = scenario.duration.as_secs_f64() + scenario.drain.as_secs_f64() + 1.5;
    obs.note(&format!(
        "reprod isolate: {} active condition(s) ({}); at most {bound} trials of ~{per_trial_s:.0} s ({} each): at most ~{:.0} s, less when groups are decided early or sets repeat",
        active.len(),
        active.iter().map(|c| c.name()).collect::<Vec<_>>().join(", "),
        reprod_scenario::format_duration(scenario.duration),
        bound as f64 * per_trial_s
    ));
    let mut trials = Trials {
        obs,
        interrupt,
        scenario: &scenario,
        shown: options.scenario_path.clone(),
        out: out.clone(),
        fresh,
        questions: questions.clone(),
        cache: BTreeMap::new(),
        incomplete: Vec::new(),
        run_counter: 0,
        started,
        bound,
    };
    let (answers, reproduced) = search(&mut trials, &active, n, &options, &questions).await?;
    let mut answers = answers.into_iter();
    let any = answers.next().ok_or(IsolateError::NoBaseline(0))?;
    let result = Isolation {
        any,
        invariants: names
            .iter()
            .zip(answers)
            .map(|(name, answer)| InvariantAnswer {
                name: name.clone(),
                answer,
            })
            .collect(),
        baseline_reproduced: reproduced,
        incomplete_trials: trials.incomplete,
        trials_run: trials.run_counter,
        trials_bound: bound,
        isolate_dir: out.display().to_string(),
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    debug_assert!(result.trials_run <= result.trials_bound);
    let _ = std::fs::create_dir_all(&out);
    for (file, format) in [
        ("isolate.html", reprod_report::Format::Html),
        ("junit.xml", reprod_report::Format::Junit),
        ("isolation.json", reprod_report::Format::Json),
    ] {
        let text = result.render(&scenario.name, format);
        if let Err(e) = crate::session::write_whole(&out.join(file), &text) {
            obs.problem(&format!(
                "reprod: cannot write {file} in {}: {e}",
                out.display()
            ));
        }
    }
    Ok(result)
}

/// Runs the groups and each question's minimal-set search; the answers in question order, and
/// whether the baseline reproduced at all.
async fn search(
    trials: &mut Trials<'_>,
    active: &[Condition],
    n: u64,
    options: &Options,
    questions: &[Question],
) -> Result<(Vec<Answer>, bool), IsolateError> {
    let baseline = trials.group(active, "baseline", n, None).await?;
    let any = baseline.tally(&None);
    if any.trials == 0 {
        return Err(IsolateError::NoBaseline(baseline.incomplete.len()));
    }
    if any.failures == 0 {
        trials.obs.problem(&format!(
            "reprod isolate: the baseline never reproduced in {} trial(s): no invariant was violated with every condition on, so there is nothing to isolate",
            any.trials
        ));
        let answer = Answer {
            baseline: group_out(&baseline, &None),
            conditions: Vec::new(),
            staging: group_out(&GroupRun::default(), &None),
            minimal: Vec::new(),
            command: None,
            alternatives: Vec::new(),
        };
        let answers = questions.iter().map(|_| answer.clone()).collect();
        return Ok((answers, false));
    }
    let mut without: Vec<(Condition, GroupRun)> = Vec::new();
    for c in active {
        let on: Vec<Condition> = active.iter().copied().filter(|x| x != c).collect();
        let run = trials
            .group(&on, &format!("without {}", c.name()), n, Some(&baseline))
            .await?;
        without.push((*c, run));
    }
    let staging = trials.group(&[], "staging", n, Some(&baseline)).await?;

    let mut answers = Vec::new();
    for q in questions {
        let base = baseline.tally(q);
        let conditions: Vec<ConditionResult> = without
            .iter()
            .map(|(c, run)| {
                let v = stats::verdict(&run.tally(q), &base);
                ConditionResult {
                    name: c.name().to_string(),
                    without: group_out(run, q),
                    necessary: v == ConditionVerdict::Necessary,
                    verdict: v.words().to_string(),
                }
            })
            .collect();
        let minimal = if base.failures == 0 {
            Vec::new()
        } else {
            minimal_set(trials, active, &without, &baseline, q, n).await?
        };
        // Alternatives: a member of the minimal set that was not necessary (the bug reproduced
        // without it) left another way to the bug; the same search, started without it, finds
        // that way's own minimal set. Asked for "any invariant" only, which bounds the trials.
        let mut alternatives = Vec::new();
        if q.is_none() && base.failures > 0 {
            for c in &minimal {
                let Some((_, run)) = without.iter().find(|(x, _)| x == c) else {
                    continue;
                };
                if !stats::still_reproduces(&run.tally(q), &base) {
                    continue;
                }
                let start: Vec<Condition> = active.iter().copied().filter(|x| x != c).collect();
                let other = minimal_set(trials, &start, &without, &baseline, q, n).await?;
                let names: Vec<String> = other.iter().map(|c| c.name().to_string()).collect();
                alternatives.push(Alternative {
                    without: c.name().to_string(),
                    command: command(options, &names),
                    minimal: names,
                });
            }
        }
        let minimal_names: Vec<String> = minimal.iter().map(|c| c.name().to_string()).collect();
        answers.push(Answer {
            baseline: group_out(&baseline, q),
            conditions,
            staging: group_out(&staging, q),
            command: (base.failures > 0).then(|| command(options, &minimal_names)),
            minimal: minimal_names,
            alternatives,
        });
    }
    Ok((answers, true))
}

/// Greedy: drop the conditions that are not necessary for `q`, weakest first, keeping a drop
/// when the smaller set's N trials still reproduce (`stats::still_reproduces`).
async fn minimal_set(
    trials: &mut Trials<'_>,
    start: &[Condition],
    without: &[(Condition, GroupRun)],
    baseline: &GroupRun,
    q: &Question,
    n: u64,
) -> Result<Vec<Condition>, IsolateError> {
    let base = baseline.tally(q);
    let mut order: Vec<(Condition, f64)> = without
        .iter()
        .filter(|(c, run)| start.contains(c) && !stats::lower(&run.tally(q), &base))
        .map(|(c, run)| (*c, run.tally(q).key_rate()))
        .collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut minimal: Vec<Condition> = start.to_vec();
    for (c, _) in order {
        let candidate: Vec<Condition> = minimal.iter().copied().filter(|x| *x != c).collect();
        let label = format!(
            "minimal set {}",
            if candidate.is_empty() {
                "(none)".to_string()
            } else {
                candidate
                    .iter()
                    .map(|c| c.name())
                    .collect::<Vec<_>>()
                    .join(",")
            }
        );
        let run = trials.group(&candidate, &label, n, None).await?;
        if stats::still_reproduces(&run.tally(q), &base) {
            minimal = candidate;
        }
    }
    Ok(minimal)
}

fn command(options: &Options, minimal: &[String]) -> String {
    let mut command = format!("reprod run {}", options.scenario_path);
    for (k, v) in &options.sets {
        let shown = if options.secret_params.contains(k) {
            reprod_scenario::REDACTED
        } else {
            v
        };
        let _ = write!(command, " --set {k}={shown}");
    }
    if minimal.is_empty() {
        command.push_str(" --staging");
    } else {
        let _ = write!(command, " --only {}", minimal.join(","));
    }
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_out_counts_only_completed_trials() {
        let mut run = GroupRun::default();
        run.tallies.entry(None).or_default().add(true, 3, 10);
        run.incomplete.push(("d".into(), "interrupted".into()));
        let g = group_out(&run, &None);
        assert_eq!((g.trials, g.failures, g.incomplete), (1, 1, 1));
    }
}

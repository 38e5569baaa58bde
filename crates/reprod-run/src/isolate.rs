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

use reprod_check::stats::{self, ConditionVerdict, SwarmTrial, Tally};
use reprod_report::Verdict;
pub use reprod_report::isolation::{
    Alternative, Answer, ConditionResult, GroupOut, IncompleteTrial, InvariantAnswer, Isolation,
    Swarm, SwarmCondition, SwarmSide,
};
use reprod_scenario::{Condition, Scenario, Template, Var};

use crate::session::perform;
use crate::{Interrupt, Observer, Progress, RunError};

/// What `isolate` is asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    /// Trials per group (at least 1).
    pub trials: u64,
    /// Swarm trials (seeded random subsets of the active conditions); `None`: 12 or two per
    /// active condition, whichever is more (none with fewer than two).
    pub swarm: Option<u64>,
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
    /// Whether some trials stopped at their first violation (`--stop-at-violation`): then the
    /// tallies answer "any invariant" only, and the per-key rates are of the trials that ran
    /// to the end.
    stopped_early: bool,
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

/// What a trial that ran to the end says to question `q`: whether it reproduced, and how many
/// keys violated.
fn answer(
    q: &Question,
    broke: &BTreeSet<String>,
    keys: &reprod_history::read::KeyCounts,
) -> (bool, u64) {
    match q {
        None => (!broke.is_empty(), keys.any),
        Some(name) => (
            broke.contains(name),
            keys.per_invariant.get(name).copied().unwrap_or(0),
        ),
    }
}

/// How one trial ended, for the tallies.
enum TrialEnd {
    /// It completed: which invariants broke, and the key counts (none when it stopped at its
    /// first violation: a cut run's rate is no rate).
    Counted {
        broke: BTreeSet<String>,
        keys: Option<reprod_history::read::KeyCounts>,
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
    /// Runs trial `i` with only `on` switched on; with `early`, it stops at the first violation
    /// a mid-run check finds.
    async fn trial(
        &mut self,
        on: &[Condition],
        i: u64,
        early: bool,
    ) -> Result<(TrialEnd, PathBuf), IsolateError> {
        if self.interrupt.is_requested() {
            return Err(IsolateError::Interrupted(self.out.display().to_string()));
        }
        let mut s = self.scenario.clone();
        s.keep_only(on);
        s.stop_at_violation = early;
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
            // An exceeded threshold reproduces too (a goodput collapse is the bug there), for
            // "any invariant"; it has no keys, so it adds nothing to a per-key rate.
            let broke = summary
                .invariants
                .iter()
                .filter(|i| !i.held)
                .map(|i| i.name.clone())
                .chain(
                    summary
                        .thresholds
                        .iter()
                        .filter(|t| !t.held)
                        .map(|t| format!("threshold {}", t.name)),
                )
                .collect();
            debug_assert!(summary.verdict != Verdict::Incomplete);
            let stopped = summary.status == reprod_report::Status::StoppedAtViolation;
            let keys = (!stopped).then(|| {
                reprod_history::read::key_counts(&finished.run_dir.join("history.sqlite"))
                    .unwrap_or_default()
            });
            TrialEnd::Counted { broke, keys }
        };
        Ok((end, finished.run_dir))
    }

    /// The group of `on`: run (N trials, fewer when decided early against `baseline`) unless
    /// some question already had it run. With `early` (asked only by the "any invariant"
    /// question, and only when the scenario checks an invariant mid-run) its trials stop at
    /// their first violation; a group run that way serves no other question.
    async fn group(
        &mut self,
        on: &[Condition],
        label: &str,
        n: u64,
        baseline: Option<&GroupRun>,
        early: bool,
    ) -> Result<GroupRun, IsolateError> {
        let key: Vec<Condition> = on.to_vec();
        let early = early && self.scenario.checks_mid_run();
        if let Some(run) = self.cache.get(&key)
            && (early || !run.stopped_early)
        {
            return Ok(run.clone());
        }
        let mut run = GroupRun::default();
        for i in 0..n {
            let (end, dir) = self.trial(on, i, early).await?;
            let shown_dir = dir.display().to_string();
            run.run_dirs.push(shown_dir.clone());
            match end {
                TrialEnd::Counted { broke, keys: None } => {
                    // Stopped at its first violation: it answers "any invariant", no rate.
                    run.stopped_early = true;
                    run.tallies
                        .entry(None)
                        .or_default()
                        .add(!broke.is_empty(), 0, 0);
                }
                TrialEnd::Counted {
                    broke,
                    keys: Some(keys),
                } => {
                    for q in &self.questions {
                        let (reproduced, violating) = answer(q, &broke, &keys);
                        run.tallies.entry(q.clone()).or_default().add(
                            reproduced,
                            violating,
                            keys.touched,
                        );
                    }
                }
                TrialEnd::Incomplete(reason) => {
                    run.incomplete.push((shown_dir.clone(), reason.clone()));
                    self.not_counted(on, shown_dir, reason);
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

/// A set of conditions on a progress line: `overlap,retries`, or `(none)`.
fn set_label(on: &[Condition]) -> String {
    if on.is_empty() {
        "(none)".to_string()
    } else {
        on.iter().map(|c| c.name()).collect::<Vec<_>>().join(",")
    }
}

/// The conditions swarm trial `j` switches on: each active one with probability ½, from the
/// scenario's seed.
fn swarm_subset(seed: u64, j: u64, active: &[Condition]) -> Vec<bool> {
    let bits = reprod_engine::mix(seed ^ 0x5357_4152_4d00_0000, j + 1);
    (0..active.len())
        .map(|i| (bits >> (i % 64)) & 1 == 1)
        .collect()
}

impl Trials<'_> {
    /// Names a trial that does not count, on stderr and in the isolation's `incomplete_trials`.
    fn not_counted(&mut self, on: &[Condition], run_dir: String, reason: String) {
        self.obs.problem(&format!(
            "reprod isolate: trial in {run_dir} does not count: {reason}"
        ));
        self.incomplete.push(IncompleteTrial {
            conditions: on.iter().map(|c| c.name().to_string()).collect(),
            run_dir,
            reason,
        });
    }

    /// Runs `count` swarm trials, each a seeded random subset of `active`, to the end; per
    /// question, what each came to.
    async fn swarm(
        &mut self,
        active: &[Condition],
        count: u64,
        first_index: u64,
    ) -> Result<(BTreeMap<Question, Vec<SwarmTrial>>, Vec<String>), IsolateError> {
        let mut out: BTreeMap<Question, Vec<SwarmTrial>> = BTreeMap::new();
        let mut dirs = Vec::new();
        let mut reproduced = 0;
        for j in 0..count {
            let mask = swarm_subset(self.scenario.seed, j, active);
            let on: Vec<Condition> = active
                .iter()
                .zip(&mask)
                .filter(|(_, m)| **m)
                .map(|(c, _)| *c)
                .collect();
            let (end, dir) = self.trial(&on, first_index + j, false).await?;
            let shown_dir = dir.display().to_string();
            dirs.push(shown_dir.clone());
            let label = set_label(&on);
            let result = match end {
                TrialEnd::Counted {
                    broke,
                    keys: Some(keys),
                } => {
                    for q in &self.questions {
                        let (r, violating) = answer(q, &broke, &keys);
                        out.entry(q.clone()).or_default().push(SwarmTrial {
                            on: mask.clone(),
                            reproduced: r,
                            violating_keys: violating,
                            keys: keys.touched,
                        });
                    }
                    reproduced += u64::from(!broke.is_empty());
                    if broke.is_empty() {
                        "did not reproduce"
                    } else {
                        "reproduced"
                    }
                }
                TrialEnd::Counted { keys: None, .. } => "stopped early (not counted)",
                TrialEnd::Incomplete(reason) => {
                    self.not_counted(&on, shown_dir, reason);
                    "did not count"
                }
            };
            self.obs.note(&format!(
                "[{:>4.0}s] {:>3}/{} trials  swarm {}/{count} {label:<30} {result} ({reproduced} so far)",
                self.started.elapsed().as_secs_f64(),
                self.run_counter,
                self.bound,
                j + 1,
            ));
        }
        Ok((out, dirs))
    }
}

/// The swarm's answer for one question.
fn swarm_out(active: &[Condition], trials: &[SwarmTrial], run_dirs: &[String]) -> Swarm {
    let conditions = active
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let e = stats::swarm_effect(trials, i);
            let side = |t: &Tally| SwarmSide {
                trials: t.trials,
                failures: t.failures,
                key_rate: t.key_rate(),
            };
            SwarmCondition {
                name: c.name().to_string(),
                class: e.class.words().to_string(),
                with: side(&e.with),
                without: side(&e.without),
                share_in_reproducing: e.share_in_reproducing,
                share_in_reproducing_ci: e.share_in_reproducing_ci,
                share_in_all: e.share_in_all,
                key_rate_difference_ci: e.key_rate_difference_ci,
                key_rate: match (e.key_rate_difference_ci, e.key_rate_effect()) {
                    (None, _) => "too few trials",
                    (_, 1) => "raises",
                    (_, -1) => "lowers",
                    _ => "no effect",
                }
                .to_string(),
                confounded_with: active
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| {
                        *k != i && !trials.is_empty() && trials.iter().all(|t| t.on[*k] == t.on[i])
                    })
                    .map(|(_, other)| other.name().to_string())
                    .collect(),
            }
        })
        .collect();
    Swarm {
        trials: trials.len() as u64,
        failures: trials.iter().filter(|t| t.reproduced).count() as u64,
        conditions,
        alternatives: stats::swarm_alternatives(trials, SWARM_MIN_BOTH_OFF)
            .into_iter()
            .map(|(a, b)| [active[a].name().to_string(), active[b].name().to_string()])
            .collect(),
        run_dirs: run_dirs.to_vec(),
    }
}

/// Trials with both of two conditions off, at least, before the swarm calls them alternatives.
const SWARM_MIN_BOTH_OFF: u64 = 2;

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
    // The swarm: its own trials, once.
    let swarm = options
        .swarm
        .unwrap_or(if a >= 2 { (2 * a).max(12) } else { 0 });
    let bound = n
        * (2 + a + questions.len() as u64 * a.saturating_sub(1) + a * a.saturating_sub(2))
        + swarm;
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
    let (answers, reproduced) =
        search(&mut trials, &active, n, swarm, &options, &questions).await?;
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
    swarm: u64,
    options: &Options,
    questions: &[Question],
) -> Result<(Vec<Answer>, bool), IsolateError> {
    let baseline = trials.group(active, "baseline", n, None, false).await?;
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
            swarm: None,
        };
        let answers = questions.iter().map(|_| answer.clone()).collect();
        return Ok((answers, false));
    }
    let mut without: Vec<(Condition, GroupRun)> = Vec::new();
    for c in active {
        let on: Vec<Condition> = active.iter().copied().filter(|x| x != c).collect();
        let run = trials
            .group(
                &on,
                &format!("without {}", c.name()),
                n,
                Some(&baseline),
                false,
            )
            .await?;
        without.push((*c, run));
    }
    let staging = trials
        .group(&[], "staging", n, Some(&baseline), false)
        .await?;
    // The swarm's seeds follow the groups' (trial i of a group has seed index i).
    let (swarm_trials, swarm_dirs) = trials.swarm(active, swarm, n).await?;

    // Each invariant's search first: their groups run to the end and serve "any invariant"
    // too, whose search (and its alternatives') may then stop trials at their first violation.
    let mut answers = Vec::new();
    for q in questions.iter().rev() {
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
            swarm: (swarm > 0).then(|| {
                swarm_out(
                    active,
                    swarm_trials.get(q).map(Vec::as_slice).unwrap_or_default(),
                    &swarm_dirs,
                )
            }),
        });
    }
    answers.reverse();
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
        let label = format!("minimal set {}", set_label(&candidate));
        let run = trials
            .group(&candidate, &label, n, None, q.is_none())
            .await?;
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

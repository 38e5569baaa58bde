//! The statistics of `reprod isolate`, as pure functions over trial tallies: reproduction shares
//! and per-key violation rates with 95% Wilson intervals, a condition's verdict, and the rule
//! that decides whether a smaller set of conditions still reproduces.
//!
//! Nothing here runs a trial; the CLI runs them and feeds the tallies in, so every rule is
//! tested with hand-made numbers.

use serde::Serialize;

pub use reprod_report::wilson;

/// What the completed trials of one group (one set of conditions) came to, for one question
/// ("did any invariant break", or "did this invariant break").
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Tally {
    /// Completed trials (a trial that did not complete or sent nothing is not counted).
    pub trials: u64,
    /// Trials in which it reproduced.
    pub failures: u64,
    /// Violating keys, summed over the trials.
    pub violating_keys: u64,
    /// Keys operations touched, summed over the trials.
    pub keys: u64,
}

impl Tally {
    /// Adds one completed trial.
    pub fn add(&mut self, reproduced: bool, violating_keys: u64, keys: u64) {
        self.trials += 1;
        self.failures += u64::from(reproduced);
        self.violating_keys += violating_keys;
        self.keys += keys;
    }

    /// 95% interval of the reproduction share.
    pub fn failure_ci(&self) -> (f64, f64) {
        wilson(self.failures, self.trials)
    }

    /// Violating keys over keys touched.
    pub fn key_rate(&self) -> f64 {
        if self.keys == 0 {
            0.0
        } else {
            self.violating_keys as f64 / self.keys as f64
        }
    }

    /// 95% interval of the per-key rate.
    pub fn key_rate_ci(&self) -> (f64, f64) {
        wilson(self.violating_keys, self.keys)
    }

    /// `3/4 (75%)`.
    pub fn share(&self) -> String {
        format!(
            "{}/{} ({:.0}%)",
            self.failures,
            self.trials,
            100.0 * self.failures as f64 / self.trials.max(1) as f64
        )
    }
}

/// What switching a condition off showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConditionVerdict {
    /// Without it, reproduction drops significantly.
    Necessary,
    /// Without it, it still reproduces, but the per-key rate falls significantly.
    Amplifies,
    /// Without it, it reproduces as before.
    NotNecessary,
    /// No trial without it completed: nothing can be said.
    Undecided,
}

impl ConditionVerdict {
    /// As printed: `necessary`, `amplifies`, `not necessary`, `undecided`.
    pub fn words(self) -> &'static str {
        match self {
            ConditionVerdict::Necessary => "necessary",
            ConditionVerdict::Amplifies => "amplifies",
            ConditionVerdict::NotNecessary => "not necessary",
            ConditionVerdict::Undecided => "undecided",
        }
    }
}

/// Switching a condition off decisively lowers reproduction: the intervals do not overlap.
pub fn lower(without: &Tally, baseline: &Tally) -> bool {
    without.trials > 0 && baseline.trials > 0 && without.failure_ci().1 < baseline.failure_ci().0
}

/// Reproduction held, but the per-key rate fell significantly.
pub fn amplifies(without: &Tally, baseline: &Tally) -> bool {
    without.failures > 0 && without.key_rate_ci().1 < baseline.key_rate_ci().0
}

/// The verdict on a condition from its group's tally against the baseline's.
pub fn verdict(without: &Tally, baseline: &Tally) -> ConditionVerdict {
    if without.trials == 0 || baseline.trials == 0 {
        ConditionVerdict::Undecided
    } else if lower(without, baseline) {
        ConditionVerdict::Necessary
    } else if amplifies(without, baseline) {
        ConditionVerdict::Amplifies
    } else {
        ConditionVerdict::NotNecessary
    }
}

/// Whether a smaller set of conditions still reproduces, for the minimal-set search: it
/// reproduced at least once in its trials, and not significantly less often than the baseline.
/// The empty set is held to the same rule, so a minimal set is never empty unless staging
/// itself reproduced.
pub fn still_reproduces(candidate: &Tally, baseline: &Tally) -> bool {
    candidate.failures > 0 && !lower(candidate, baseline)
}

/// Whether a group already says enough after its trials so far: clearly lower than the
/// baseline, or reproducing every time as the baseline did (at least three trials either way).
pub fn decided_early(group: &Tally, baseline: &Tally, planned: u64) -> bool {
    if group.trials < 3 || group.trials >= planned {
        return false;
    }
    let all_like_baseline = group.failures == group.trials && baseline.failures == baseline.trials;
    lower(group, baseline) || (all_like_baseline && !amplifies(group, baseline))
}

/// One swarm trial, for one question: which conditions were on, and what it came to.
#[derive(Clone, Debug, PartialEq)]
pub struct SwarmTrial {
    /// Per condition (in the isolation's order), whether it was on.
    pub on: Vec<bool>,
    /// Whether it reproduced.
    pub reproduced: bool,
    /// Violating keys.
    pub violating_keys: u64,
    /// Keys operations touched.
    pub keys: u64,
}

/// What the swarm says of one condition's part in reproducing (Groce et al., "Swarm testing",
/// ISSTA 2012; suppressors: ISSRE 2013).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SwarmClass {
    /// It was on in significantly more of the reproducing trials than of all trials.
    Trigger,
    /// It was on in significantly fewer of them: with it on, the bug hides.
    Suppressor,
    /// Neither, at 95%.
    Irrelevant,
    /// No trial reproduced, or it was on (or off) in every trial: nothing can be said.
    Undecided,
}

impl SwarmClass {
    /// `trigger`, `suppressor`, `irrelevant`, `undecided`.
    pub fn words(self) -> &'static str {
        match self {
            SwarmClass::Trigger => "trigger",
            SwarmClass::Suppressor => "suppressor",
            SwarmClass::Irrelevant => "irrelevant",
            SwarmClass::Undecided => "undecided",
        }
    }
}

/// One condition over all swarm trials.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SwarmEffect {
    /// The trials it was on in.
    pub with: Tally,
    /// The trials it was off in.
    pub without: Tally,
    /// The share of the reproducing trials it was on in, with its 95% Wilson interval.
    pub share_in_reproducing: f64,
    /// That share's interval.
    pub share_in_reproducing_ci: (f64, f64),
    /// The share of all trials it was on in: what the share above would be if it had no part.
    pub share_in_all: f64,
    /// Its class by reproduction.
    pub class: SwarmClass,
    /// The mean per-trial per-key rate with it on minus with it off, 95% Welch interval over
    /// trials (`None`: fewer than two trials with keys on a side). Trials, not keys, are the
    /// units: the keys of one trial share its schedule and its luck.
    pub key_rate_difference_ci: Option<(f64, f64)>,
}

impl SwarmEffect {
    /// +1 when the per-key rate is significantly higher with it on, −1 lower, 0 neither (or
    /// too few trials to say).
    pub fn key_rate_effect(&self) -> i8 {
        match self.key_rate_difference_ci {
            Some((lo, _)) if lo > 0.0 => 1,
            Some((_, hi)) if hi < 0.0 => -1,
            _ => 0,
        }
    }
}

/// The two-sided 95% quantile of Student's t with `df` degrees of freedom (rounded down to a
/// tabulated value, which widens the interval).
fn t975(df: f64) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df.floor() as usize {
        0 | 1 => TABLE[0],
        d @ 2..=30 => TABLE[d - 1],
        31..=39 => 2.042,
        40..=59 => 2.021,
        60..=119 => 2.000,
        120..=999 => 1.980,
        _ => 1.960,
    }
}

/// The difference of the means of `a` and `b` with its 95% Welch interval; `None` when a side
/// has fewer than two values.
pub fn welch(a: &[f64], b: &[f64]) -> Option<(f64, f64)> {
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let stats = |x: &[f64]| {
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var / n, n)
    };
    let ((ma, va, na), (mb, vb, nb)) = (stats(a), stats(b));
    let d = ma - mb;
    let se2 = va + vb;
    if se2 == 0.0 {
        return Some((d, d));
    }
    let df = se2.powi(2) / (va.powi(2) / (na - 1.0) + vb.powi(2) / (nb - 1.0));
    let half = t975(df) * se2.sqrt();
    Some((d - half, d + half))
}

/// Condition `index`'s effect over the swarm's `trials`. Its class compares the share of the
/// reproducing trials it was on in (Wilson interval) with the share of all trials it was on in:
/// the interval above it, a trigger; below it, a suppressor; containing it, irrelevant.
pub fn swarm_effect(trials: &[SwarmTrial], index: usize) -> SwarmEffect {
    let mut with = Tally::default();
    let mut without = Tally::default();
    let (mut rates_with, mut rates_without) = (Vec::new(), Vec::new());
    for t in trials {
        let (side, rates) = if t.on[index] {
            (&mut with, &mut rates_with)
        } else {
            (&mut without, &mut rates_without)
        };
        side.add(t.reproduced, t.violating_keys, t.keys);
        if t.keys > 0 {
            rates.push(t.violating_keys as f64 / t.keys as f64);
        }
    }
    let reproducing = with.failures + without.failures;
    let all = with.trials + without.trials;
    let share_in_all = with.trials as f64 / all.max(1) as f64;
    let ci = wilson(with.failures, reproducing);
    let class = if reproducing == 0 || with.trials == 0 || without.trials == 0 {
        SwarmClass::Undecided
    } else if ci.0 > share_in_all {
        SwarmClass::Trigger
    } else if ci.1 < share_in_all {
        SwarmClass::Suppressor
    } else {
        SwarmClass::Irrelevant
    };
    SwarmEffect {
        share_in_reproducing: with.failures as f64 / reproducing.max(1) as f64,
        share_in_reproducing_ci: ci,
        share_in_all,
        class,
        key_rate_difference_ci: welch(&rates_with, &rates_without),
        with,
        without,
    }
}

/// Pairs of conditions that the swarm saw as alternative ways to the bug: it reproduced with
/// the first on and the second off, and with the second on and the first off, but in none of
/// the (at least `min_both_off`) trials with both off. Indices into the conditions, first < second.
pub fn swarm_alternatives(trials: &[SwarmTrial], min_both_off: u64) -> Vec<(usize, usize)> {
    let Some(width) = trials.first().map(|t| t.on.len()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for a in 0..width {
        for b in a + 1..width {
            let count = |on_a: bool, on_b: bool| {
                let mut tally = Tally::default();
                for t in trials.iter().filter(|t| t.on[a] == on_a && t.on[b] == on_b) {
                    tally.add(t.reproduced, 0, 0);
                }
                tally
            };
            let (only_a, only_b, neither) =
                (count(true, false), count(false, true), count(false, false));
            if only_a.failures > 0
                && only_b.failures > 0
                && neither.trials >= min_both_off
                && neither.failures == 0
            {
                out.push((a, b));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(trials: u64, failures: u64, violating_keys: u64, keys: u64) -> Tally {
        Tally {
            trials,
            failures,
            violating_keys,
            keys,
        }
    }

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
        assert_eq!(wilson(0, 0), (0.0, 1.0));
    }

    #[test]
    fn verdicts_from_hand_made_groups() {
        let baseline = tally(8, 8, 200, 1000);
        assert_eq!(
            verdict(&tally(8, 0, 0, 1000), &baseline),
            ConditionVerdict::Necessary
        );
        assert_eq!(
            verdict(&tally(8, 8, 20, 1000), &baseline),
            ConditionVerdict::Amplifies
        );
        assert_eq!(
            verdict(&tally(8, 8, 190, 1000), &baseline),
            ConditionVerdict::NotNecessary
        );
        assert_eq!(
            verdict(&Tally::default(), &baseline),
            ConditionVerdict::Undecided
        );
        // Two trials each cannot tell 0/2 from 2/2 apart: the intervals overlap.
        assert_eq!(
            verdict(&tally(2, 0, 0, 400), &tally(2, 2, 40, 400)),
            ConditionVerdict::NotNecessary
        );
    }

    #[test]
    fn a_minimal_set_step_needs_reproduction_not_worse_than_the_baseline() {
        let baseline = tally(4, 4, 80, 800);
        assert!(still_reproduces(&tally(4, 3, 10, 800), &baseline));
        assert!(
            !still_reproduces(&tally(4, 0, 0, 800), &baseline),
            "never an empty hit"
        );
        assert!(!still_reproduces(
            &tally(8, 1, 1, 1600),
            &tally(8, 8, 80, 1600)
        ));
    }

    #[test]
    fn groups_stop_early_only_when_decided() {
        let baseline = tally(8, 8, 200, 1000);
        assert!(
            !decided_early(&tally(2, 0, 0, 10), &baseline, 8),
            "too few trials"
        );
        assert!(decided_early(&tally(3, 3, 75, 375), &baseline, 8));
        assert!(
            !decided_early(&tally(3, 3, 75, 375), &baseline, 3),
            "planned count reached"
        );
        assert!(!decided_early(&tally(3, 2, 30, 375), &baseline, 8));
    }

    fn swarm(rows: &[(&[bool], bool, u64)]) -> Vec<SwarmTrial> {
        rows.iter()
            .map(|(on, reproduced, violating)| SwarmTrial {
                on: on.to_vec(),
                reproduced: *reproduced,
                violating_keys: *violating,
                keys: 100,
            })
            .collect()
    }

    #[test]
    fn welch_matches_a_hand_computed_interval() {
        // Means 2.5 and 5, standard errors² 0.4167 and 1.6667: se 1.4434, df 4.41 → t(4) 2.776.
        let (lo, hi) = welch(&[1.0, 2.0, 3.0, 4.0], &[2.0, 4.0, 6.0, 8.0]).expect("interval");
        assert!(
            (lo + 6.507).abs() < 0.005 && (hi - 1.507).abs() < 0.005,
            "{lo} {hi}"
        );
        assert_eq!(welch(&[0.2], &[0.0, 0.0]), None, "one trial has no spread");
        assert_eq!(welch(&[0.2, 0.2], &[0.0, 0.0]), Some((0.2, 0.2)));
    }

    #[test]
    fn swarm_classes_triggers_suppressors_and_the_rest() {
        // Condition 0 is needed; condition 1 hides the bug; condition 2 does nothing.
        let mut rows: Vec<(&[bool], bool, u64)> = Vec::new();
        let patterns: [&[bool]; 8] = [
            &[true, false, false],
            &[true, false, true],
            &[true, true, false],
            &[true, true, true],
            &[false, false, false],
            &[false, false, true],
            &[false, true, false],
            &[false, true, true],
        ];
        for _ in 0..4 {
            for p in patterns {
                let reproduced = p[0] && !p[1];
                rows.push((p, reproduced, if reproduced { 10 } else { 0 }));
            }
        }
        let trials = swarm(&rows);
        let classes: Vec<SwarmClass> = (0..3).map(|i| swarm_effect(&trials, i).class).collect();
        assert_eq!(
            classes,
            [
                SwarmClass::Trigger,
                SwarmClass::Suppressor,
                SwarmClass::Irrelevant
            ]
        );
        let e = swarm_effect(&trials, 0);
        assert_eq!((e.with.trials, e.with.failures), (16, 8));
        assert_eq!(e.share_in_reproducing, 1.0);
        assert_eq!(e.key_rate_effect(), 1);
        assert_eq!(swarm_effect(&trials, 1).key_rate_effect(), -1);
        assert_eq!(swarm_effect(&trials, 2).key_rate_effect(), 0);
    }

    #[test]
    fn a_swarm_without_failures_or_without_contrast_decides_nothing() {
        let none = swarm(&[(&[true], false, 0), (&[false], false, 0)]);
        assert_eq!(swarm_effect(&none, 0).class, SwarmClass::Undecided);
        let always_on = swarm(&[(&[true], true, 1), (&[true], true, 1)]);
        assert_eq!(swarm_effect(&always_on, 0).class, SwarmClass::Undecided);
    }

    #[test]
    fn swarm_alternatives_need_each_alone_and_never_neither() {
        // Either 0 or 1 suffices; 2 is noise.
        let mut rows: Vec<(&[bool], bool, u64)> = Vec::new();
        let patterns: [&[bool]; 8] = [
            &[true, false, false],
            &[true, false, true],
            &[false, true, false],
            &[false, true, true],
            &[true, true, false],
            &[true, true, true],
            &[false, false, false],
            &[false, false, true],
        ];
        for p in patterns {
            rows.push((p, p[0] || p[1], 1));
        }
        let trials = swarm(&rows);
        assert_eq!(swarm_alternatives(&trials, 2), vec![(0, 1)]);
        assert!(
            swarm_alternatives(&trials, 3).is_empty(),
            "two trials with both off, three asked for"
        );
        // One failure with both off: they are not the only ways.
        let mut rows = rows.clone();
        rows.push((&[false, false, true], true, 1));
        assert!(swarm_alternatives(&swarm(&rows), 2).is_empty());
    }
}

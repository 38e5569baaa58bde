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
}

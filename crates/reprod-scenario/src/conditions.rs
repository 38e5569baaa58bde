//! Conditions: the named dimensions of production pressure a scenario switches on, and their
//! neutral (staging) values. `--staging`, `--only` and `--without` work by neutralising.

use std::fmt;
use std::str::FromStr;

use std::time::Duration;

use crate::model::{Arrival, KeyDistribution, Scenario};

/// A dimension of production pressure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Condition {
    /// Concurrent operations on the same key.
    Overlap,
    /// Dependency latency shape.
    SlowDependency,
    /// Dependency errors, throttling, hangs, ambiguous outcomes, duplicates.
    DependencyFaults,
    /// Client retry policy.
    Retries,
    /// Skewed key distribution.
    HotKeys,
    /// Caller delay (queue age).
    QueueDelay,
    /// More than one replica.
    Instances,
    /// Replicas of different versions.
    MixedVersions,
    /// Small pools / concurrency caps passed to the service.
    PoolPressure,
    /// Two or more callers load the same keys at the same time (the batch starts with the API
    /// traffic).
    ConcurrentCallers,
    /// Statement latency injected by the database proxy.
    SlowDatabase,
    /// Statement errors, resets and ambiguous commits injected by the database proxy.
    DatabaseFaults,
}

impl Condition {
    /// Every condition, in report order.
    pub const ALL: [Condition; 12] = [
        Condition::Overlap,
        Condition::SlowDependency,
        Condition::DependencyFaults,
        Condition::Retries,
        Condition::HotKeys,
        Condition::QueueDelay,
        Condition::Instances,
        Condition::MixedVersions,
        Condition::PoolPressure,
        Condition::ConcurrentCallers,
        Condition::SlowDatabase,
        Condition::DatabaseFaults,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Condition::Overlap => "overlap",
            Condition::SlowDependency => "slow_dependency",
            Condition::DependencyFaults => "dependency_faults",
            Condition::Retries => "retries",
            Condition::HotKeys => "hot_keys",
            Condition::QueueDelay => "queue_delay",
            Condition::Instances => "instances",
            Condition::MixedVersions => "mixed_versions",
            Condition::PoolPressure => "pool_pressure",
            Condition::ConcurrentCallers => "concurrent_callers",
            Condition::SlowDatabase => "slow_database",
            Condition::DatabaseFaults => "database_faults",
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Condition {
    type Err = String;

    fn from_str(s: &str) -> Result<Condition, String> {
        Condition::ALL
            .into_iter()
            .find(|c| c.name() == s.trim())
            .ok_or_else(|| {
                let names: Vec<&str> = Condition::ALL.iter().map(|c| c.name()).collect();
                format!("unknown condition {s:?}; known: {}", names.join(", "))
            })
    }
}

impl Scenario {
    /// The conditions this scenario switches on, in report order.
    pub fn active_conditions(&self) -> Vec<Condition> {
        Condition::ALL
            .into_iter()
            .filter(|c| self.is_active(*c))
            .collect()
    }

    /// Whether the scenario sets `condition` to something other than its neutral value.
    pub fn is_active(&self, condition: Condition) -> bool {
        match condition {
            Condition::Overlap => {
                !self.serialize_keys && self.callers.iter().any(|c| c.overlap.k > 1)
            }
            Condition::SlowDependency => {
                self.dependencies.iter().any(|d| d.latency.is_some())
                    || self.sinks.iter().any(|s| s.latency.is_some())
            }
            Condition::DependencyFaults => self.dependencies.iter().any(|d| !d.faults.is_empty()),
            Condition::Retries => self.callers.iter().any(|c| c.retry.attempts > 1),
            Condition::HotKeys => self
                .callers
                .iter()
                .any(|c| c.keys.distribution != KeyDistribution::Uniform),
            Condition::QueueDelay => self.callers.iter().any(|c| !c.delay.is_zero()),
            Condition::Instances => self.services.iter().any(|s| s.replicas > 1),
            Condition::MixedVersions => self.services.iter().any(|s| {
                let used = &s.versions[..s.versions.len().min(s.replicas as usize)];
                used.iter().any(|v| *v != used[0])
            }),
            Condition::PoolPressure => self
                .services
                .iter()
                .any(|s| !s.pressure_args.is_empty() || !s.pressure_env.is_empty()),
            Condition::ConcurrentCallers => {
                let windows: Vec<(i64, i64)> =
                    (0..self.callers.len()).map(|i| self.window(i)).collect();
                (0..self.callers.len()).any(|i| {
                    (i + 1..self.callers.len()).any(|j| {
                        self.callers[i].keys.prefix == self.callers[j].keys.prefix
                            && windows[i].0 < windows[j].1
                            && windows[j].0 < windows[i].1
                    })
                })
            }
            Condition::SlowDatabase => self.database_faults().any(|f| f.is_latency()),
            Condition::DatabaseFaults => self.database_faults().any(|f| !f.is_latency()),
        }
    }

    /// When caller `index` sends, in µs of load time: from its first possible arrival to the
    /// end of its last one's overlap window, cut where the run cuts it (end exclusive).
    fn window(&self, index: usize) -> (i64, i64) {
        let c = &self.callers[index];
        let us = |d: &Duration| d.as_micros() as i64;
        let cut = us(&c.until.map_or(self.duration, |u| u.min(self.duration)));
        let (start, end) = match &c.arrival {
            Arrival::Constant { start, stop, .. } | Arrival::Poisson { start, stop, .. } => {
                (us(start), stop.as_ref().map_or(cut, us))
            }
            Arrival::Burst { at, .. } => (us(at), us(at) + 1),
            Arrival::Batch { at, spread } => (us(at), us(at) + us(spread).max(1)),
        };
        (start, (end.max(start) + us(&c.overlap.window)).min(cut))
    }

    /// `concurrent_callers` off: each caller's load in its own time slice, in order of their
    /// first arrivals, the scenario's drain between one slice and the next; the run's duration
    /// grows to hold them all. The same operations on the same keys (each caller is cut where
    /// the run would have cut it), never two callers at once.
    fn callers_one_after_another(&mut self) {
        let windows: Vec<(i64, i64)> = (0..self.callers.len()).map(|i| self.window(i)).collect();
        let mut order: Vec<usize> = (0..self.callers.len()).collect();
        order.sort_by_key(|i| windows[*i].0);
        let drain = self.drain.as_micros() as i64;
        let at = |us: i64| Duration::from_micros(us.max(0) as u64);
        let mut next = order.first().map_or(0, |i| windows[*i].0);
        let mut end = 0i64;
        for i in order {
            let (start, stop) = windows[i];
            let shift = next - start;
            let moved = |d: Duration| at(d.as_micros() as i64 + shift);
            let caller = &mut self.callers[i];
            match &mut caller.arrival {
                Arrival::Constant { start, stop: s, .. }
                | Arrival::Poisson { start, stop: s, .. } => {
                    *start = moved(*start);
                    *s = s.map(moved);
                }
                Arrival::Burst { at, .. } | Arrival::Batch { at, .. } => *at = moved(*at),
            }
            caller.until = Some(at(stop + shift));
            end = end.max(stop + shift);
            next = stop + shift + drain;
        }
        self.duration = self.duration.max(at(end));
    }

    /// Sets `condition` to its neutral (staging) value.
    pub fn neutralize(&mut self, condition: Condition) {
        match condition {
            // Same operations, same keys, same intended times, but never two at once on a key:
            // what "one operation at a time" means without changing the workload.
            Condition::Overlap => self.serialize_keys = true,
            Condition::SlowDependency => {
                for d in &mut self.dependencies {
                    d.latency = None;
                }
                for s in &mut self.sinks {
                    s.latency = None;
                }
            }
            Condition::DependencyFaults => {
                for d in &mut self.dependencies {
                    d.faults.clear();
                }
            }
            Condition::Retries => {
                for c in &mut self.callers {
                    c.retry.attempts = 1;
                }
            }
            Condition::HotKeys => {
                for c in &mut self.callers {
                    c.keys.distribution = KeyDistribution::Uniform;
                }
            }
            Condition::QueueDelay => {
                for c in &mut self.callers {
                    c.delay = std::time::Duration::ZERO;
                }
            }
            Condition::Instances => {
                for s in &mut self.services {
                    s.replicas = 1;
                }
            }
            Condition::MixedVersions => {
                for s in &mut self.services {
                    let first = s.versions[0].clone();
                    s.versions = vec![first];
                }
            }
            Condition::PoolPressure => {
                for s in &mut self.services {
                    s.pressure_args.clear();
                    s.pressure_env.clear();
                }
            }
            Condition::ConcurrentCallers => {
                if self.is_active(Condition::ConcurrentCallers) {
                    self.callers_one_after_another();
                }
            }
            Condition::SlowDatabase => {
                if let Some(db) = &mut self.database {
                    db.faults.retain(|f| !f.is_latency());
                }
            }
            Condition::DatabaseFaults => {
                if let Some(db) = &mut self.database {
                    db.faults.retain(crate::model::DbFault::is_latency);
                }
            }
        }
    }

    /// The statement faults the database proxy will inject.
    fn database_faults(&self) -> impl Iterator<Item = &crate::model::DbFault> {
        self.database
            .iter()
            .filter(|db| db.proxy == crate::model::ProxyMode::On)
            .flat_map(|db| db.faults.iter())
    }

    /// Keeps only `keep` switched on (`--only`).
    pub fn keep_only(&mut self, keep: &[Condition]) {
        for c in Condition::ALL {
            if !keep.contains(&c) {
                self.neutralize(c);
            }
        }
    }
}

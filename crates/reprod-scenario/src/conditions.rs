//! Conditions: the named dimensions of production pressure a scenario switches on, and their
//! neutral (staging) values. `--staging`, `--only` and `--without` work by neutralising.

use std::fmt;
use std::str::FromStr;

use crate::model::{KeyDistribution, Scenario};

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
    /// Statement latency injected by the database proxy.
    SlowDatabase,
    /// Statement errors, resets and ambiguous commits injected by the database proxy.
    DatabaseFaults,
}

impl Condition {
    /// Every condition, in report order.
    pub const ALL: [Condition; 11] = [
        Condition::Overlap,
        Condition::SlowDependency,
        Condition::DependencyFaults,
        Condition::Retries,
        Condition::HotKeys,
        Condition::QueueDelay,
        Condition::Instances,
        Condition::MixedVersions,
        Condition::PoolPressure,
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
            Condition::SlowDatabase => self.database_faults().any(|f| f.is_latency()),
            Condition::DatabaseFaults => self.database_faults().any(|f| !f.is_latency()),
        }
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

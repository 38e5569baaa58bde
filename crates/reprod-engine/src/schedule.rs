//! The seeded open-model schedule: every operation's intended start, caller, key and overlap
//! group, in time order, computed before (and independently of) anything the service does.
//!
//! Each caller draws from its own RNG seeded from the run seed and its index, so adding a
//! caller never shifts another caller's schedule, and the same seed always yields the same
//! schedule. Generation is lazy: memory is bounded by the overlap in flight, not by the run.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use reprod_scenario::{Arrival, Scenario};

use crate::keys::KeySampler;
use crate::mix;

/// One planned operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedOp {
    /// Run-wide id, 1-based, in schedule order.
    pub op_id: u64,
    /// Caller index.
    pub caller: usize,
    /// Sequence number within the caller, 1-based.
    pub seq: u64,
    /// Operations from one arrival share a group (run-wide id).
    pub group: u64,
    /// Key index within the caller's key space.
    pub key_index: u64,
    /// Intended start: microseconds since the run started, queue delay included.
    pub at_us: i64,
    /// The caller's queue delay.
    pub queue_delay_us: i64,
}

struct CallerGen {
    rng: fastrand::Rng,
    arrival: Arrival,
    sampler: KeySampler,
    k: u32,
    window_us: u64,
    delay_us: i64,
    end_us: i64,
    /// Next arrival time, or None when the arrival process is exhausted.
    next_arrival: Option<i64>,
    arrivals: u64,
    /// (time, insertion order, key index, arrival number)
    pending: BinaryHeap<Reverse<(i64, u64, u64, u64)>>,
    pending_seq: u64,
}

impl CallerGen {
    fn new(scenario: &Scenario, index: usize) -> CallerGen {
        let caller = &scenario.callers[index];
        let end_us = caller
            .until
            .map_or(scenario.duration, |u| u.min(scenario.duration))
            .as_micros() as i64;
        let mut generator = CallerGen {
            rng: fastrand::Rng::with_seed(mix(scenario.seed, index as u64 + 1)),
            arrival: caller.arrival.clone(),
            sampler: KeySampler::new(&caller.keys),
            k: caller.overlap.k.max(1),
            window_us: caller.overlap.window.as_micros() as u64,
            delay_us: caller.delay.as_micros() as i64,
            end_us,
            next_arrival: None,
            arrivals: 0,
            pending: BinaryHeap::new(),
            pending_seq: 0,
        };
        generator.next_arrival = generator.arrival_time(0, None);
        generator
    }

    /// Time of arrival number `n` (0-based), given the previous one.
    fn arrival_time(&mut self, n: u64, previous: Option<i64>) -> Option<i64> {
        let t = match &self.arrival {
            Arrival::Constant {
                rate_per_s, start, ..
            } => start.as_micros() as i64 + (n as f64 * 1e6 / rate_per_s) as i64,
            Arrival::Poisson {
                rate_per_s, start, ..
            } => {
                let gap = -(1.0 - self.rng.f64()).ln() / rate_per_s * 1e6;
                previous.unwrap_or(start.as_micros() as i64) + gap as i64
            }
            Arrival::Burst { count, at } => {
                if n >= *count {
                    return None;
                }
                at.as_micros() as i64
            }
            Arrival::Batch { at, spread } => {
                let count = self.sampler.count();
                if n >= count {
                    return None;
                }
                at.as_micros() as i64
                    + (spread.as_micros() * u128::from(n) / u128::from(count)) as i64
            }
        };
        let stop = match &self.arrival {
            Arrival::Constant { stop: Some(s), .. } | Arrival::Poisson { stop: Some(s), .. } => {
                (s.as_micros() as i64).min(self.end_us)
            }
            _ => self.end_us,
        };
        (t < stop).then_some(t)
    }

    fn generate_arrival(&mut self, t: i64) {
        let arrival = self.arrivals;
        let mut pending = std::mem::take(&mut self.pending);
        let mut seq = self.pending_seq;
        self.draw_arrival(t, |at, key| {
            seq += 1;
            pending.push(Reverse((at, seq, key, arrival)));
        });
        self.pending = pending;
        self.pending_seq = seq;
    }

    /// Draws the arrival at `t` (its key and its overlap offsets) and hands each of its
    /// operations that starts within the run to `each` as (time, key index); then moves on to
    /// the next arrival. The one place that consumes the caller's RNG, so counting the rest of
    /// a schedule draws exactly what generating it would.
    fn draw_arrival(&mut self, t: i64, mut each: impl FnMut(i64, u64)) {
        let key = match self.arrival {
            Arrival::Batch { .. } => self.arrivals,
            _ => self.sampler.sample(&mut self.rng),
        };
        for j in 0..self.k {
            let offset = if j == 0 || self.window_us == 0 {
                0
            } else {
                self.rng.u64(0..=self.window_us) as i64
            };
            let at = t + offset;
            if at < self.end_us {
                each(at, key);
            }
        }
        self.arrivals += 1;
        self.next_arrival = self.arrival_time(self.arrivals, Some(t));
    }

    /// How many operations this caller has left, and the intended start of the latest,
    /// without building them.
    fn count_rest(&mut self) -> (u64, Option<i64>) {
        let mut count = self.pending.len() as u64;
        let mut last = self.pending.iter().map(|Reverse((at, ..))| *at).max();
        self.pending.clear();
        while let Some(t) = self.next_arrival {
            self.draw_arrival(t, |at, _| {
                count += 1;
                last = last.max(Some(at));
            });
        }
        (count, last.map(|at| at + self.delay_us))
    }

    /// Next op of this caller in time order: (time, key index, arrival number).
    fn next(&mut self) -> Option<(i64, u64, u64)> {
        while let Some(t) = self.next_arrival {
            match self.pending.peek() {
                Some(Reverse((p, _, _, _))) if *p < t => break,
                _ => self.generate_arrival(t),
            }
        }
        let Reverse((at, _, key, arrival)) = self.pending.pop()?;
        Some((at + self.delay_us, key, arrival))
    }
}

/// The whole run's schedule, merged across callers in time order, bounded by `max_ops`.
pub struct Schedule {
    callers: Vec<CallerGen>,
    heads: BinaryHeap<Reverse<(i64, usize, u64, u64)>>,
    seqs: Vec<u64>,
    groups: std::collections::HashMap<(usize, u64), u64>,
    next_group: u64,
    emitted: u64,
    max_ops: u64,
}

impl std::fmt::Debug for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schedule")
            .field("emitted", &self.emitted)
            .finish()
    }
}

impl Schedule {
    /// The schedule of `scenario`.
    pub fn new(scenario: &Scenario) -> Schedule {
        let mut callers: Vec<CallerGen> = (0..scenario.callers.len())
            .map(|i| CallerGen::new(scenario, i))
            .collect();
        let mut heads = BinaryHeap::new();
        for (i, c) in callers.iter_mut().enumerate() {
            if let Some((at, key, arrival)) = c.next() {
                heads.push(Reverse((at, i, key, arrival)));
            }
        }
        Schedule {
            seqs: vec![0; callers.len()],
            callers,
            heads,
            groups: std::collections::HashMap::new(),
            next_group: 0,
            emitted: 0,
            max_ops: scenario.max_ops,
        }
    }

    fn planned(&self, caller: usize, group: u64, key_index: u64, at_us: i64) -> PlannedOp {
        PlannedOp {
            op_id: self.emitted,
            caller,
            seq: self.seqs[caller],
            group,
            key_index,
            at_us,
            queue_delay_us: self.callers[caller].delay_us,
        }
    }

    /// Consumes the rest of the schedule, returning how many operations it still held and the
    /// intended start of the latest (`None` when it held none, or when `max_ops` cut it). Much
    /// cheaper than iterating: a run cut short at full speed may leave millions.
    pub fn count_rest(&mut self) -> (u64, Option<i64>) {
        let mut count = self.heads.len() as u64;
        let mut last = self.heads.iter().map(|Reverse((at, ..))| *at).max();
        self.heads.clear();
        for caller in &mut self.callers {
            let (n, at) = caller.count_rest();
            count += n;
            last = last.max(at);
        }
        let left = self.max_ops.saturating_sub(self.emitted);
        // Cut by `max_ops`, the latest of those left is not known without ordering them.
        let last = last.filter(|_| count <= left);
        let count = count.min(left);
        self.emitted += count;
        (count, last)
    }
}

impl Iterator for Schedule {
    type Item = PlannedOp;

    fn next(&mut self) -> Option<PlannedOp> {
        if self.emitted >= self.max_ops {
            return None;
        }
        let Reverse((at, caller, key_index, arrival)) = self.heads.pop()?;
        if let Some((next_at, key, next_arrival)) = self.callers[caller].next() {
            self.heads
                .push(Reverse((next_at, caller, key, next_arrival)));
        }
        self.emitted += 1;
        self.seqs[caller] += 1;
        // Run-wide group ids in order of first appearance; entries are dropped once all k
        // operations of a group were emitted, so the map stays as small as the overlap.
        let k = self.callers[caller].k;
        if k == 1 {
            // Every arrival is a group of its own: no bookkeeping.
            self.next_group += 1;
            return Some(self.planned(caller, self.next_group, key_index, at));
        }
        let entry = self.groups.entry((caller, arrival));
        let group = match entry {
            std::collections::hash_map::Entry::Occupied(mut o) => {
                let (g, left) = (*o.get() >> 8, (*o.get() & 0xFF) - 1);
                if left == 0 {
                    o.remove();
                } else {
                    o.insert(g << 8 | left);
                }
                g
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                self.next_group += 1;
                v.insert(self.next_group << 8 | u64::from(k - 1));
                self.next_group
            }
        };
        Some(self.planned(caller, group, key_index, at))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    use crate::test_scenario as scenario;

    const API: &str = r#"
[[caller]]
name = "api"
request = { path = "/x/{key}" }
arrival = "poisson"
rate = 200
keys = { count = 50, distribution = "zipf", s = 1.1 }
overlap = { k = 3, window = "20ms" }
delay = "5ms"
"#;

    #[test]
    fn counting_the_rest_matches_iterating_it() {
        let two_callers = format!(
            "{API}\n[[caller]]\nname = \"worker\"\nrequest = {{ path = \"/y\" }}\nrate = 50\ndelay = \"1s\"\n"
        );
        for (text, taken) in [(API, 0), (API, 777), (two_callers.as_str(), 500)] {
            let s = scenario(text);
            let mut counted = Schedule::new(&s);
            let mut iterated = Schedule::new(&s);
            for _ in 0..taken {
                assert_eq!(counted.next(), iterated.next());
            }
            let rest: Vec<PlannedOp> = iterated.collect();
            assert!(rest.len() > 100);
            let (n, last) = counted.count_rest();
            assert_eq!(n, rest.len() as u64);
            assert_eq!(last, rest.iter().map(|op| op.at_us).max());
            assert_eq!(counted.next(), None);
        }
        let mut capped = scenario(API);
        capped.max_ops = 1000;
        let mut counted = Schedule::new(&capped);
        let _ = counted.by_ref().take(400).count();
        assert_eq!(counted.count_rest(), (600, None));
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let s = scenario(API);
        let a: Vec<PlannedOp> = Schedule::new(&s).collect();
        let b: Vec<PlannedOp> = Schedule::new(&s).collect();
        assert!(a.len() > 1000, "{}", a.len());
        assert_eq!(a, b);
        let mut other = s.clone();
        other.seed = 43;
        let c: Vec<PlannedOp> = Schedule::new(&other).collect();
        assert_ne!(a, c);
    }

    #[test]
    fn the_schedule_is_ordered_bounded_and_overlapping() {
        let s = scenario(API);
        let ops: Vec<PlannedOp> = Schedule::new(&s).collect();
        assert!(ops.windows(2).all(|w| w[0].at_us <= w[1].at_us));
        assert!(
            ops.iter()
                .all(|o| o.at_us < 10_000_000 + 5_000 && o.queue_delay_us == 5_000)
        );
        let mut groups: BTreeMap<u64, Vec<&PlannedOp>> = BTreeMap::new();
        for op in &ops {
            groups.entry(op.group).or_default().push(op);
        }
        let full = groups.values().filter(|g| g.len() == 3).count();
        assert!(
            full as f64 > groups.len() as f64 * 0.99,
            "{full} of {}",
            groups.len()
        );
        for g in groups.values() {
            assert!(
                g.iter().all(|o| o.key_index == g[0].key_index),
                "one key per group"
            );
            let span =
                g.iter().map(|o| o.at_us).max().unwrap() - g.iter().map(|o| o.at_us).min().unwrap();
            assert!(span <= 20_000, "within the window: {span}");
        }
        // ~200 arrivals/s for 10 s, 3 ops each.
        assert!((5_000..7_000).contains(&ops.len()), "{}", ops.len());

        let mut bounded = s.clone();
        bounded.max_ops = 100;
        assert_eq!(Schedule::new(&bounded).count(), 100);
    }

    /// `concurrent_callers` off moves each caller to a slice of its own: every caller sends the
    /// same operations on the same keys, each at its old time plus one shift per caller, even
    /// where the run cut a caller short (the batch below ends after the run did).
    #[test]
    fn callers_one_after_another_send_the_same_operations_shifted() {
        let text = format!(
            "{API}\n[[caller]]\nname = \"batch\"\nrequest = {{ path = \"/y\" }}\narrival = \"batch\"\nat = \"8s\"\nspread = \"4s\"\nkeys = {{ count = 50 }}\n"
        );
        let together = scenario(&text);
        let mut apart = together.clone();
        apart.neutralize(reprod_scenario::Condition::ConcurrentCallers);
        assert!(apart.duration > together.duration);
        let per_caller = |s: &Scenario, c: usize| -> Vec<(u64, u64, i64)> {
            Schedule::new(s)
                .filter(|o| o.caller == c)
                .map(|o| (o.seq, o.key_index, o.at_us))
                .collect()
        };
        for c in 0..2 {
            let (a, b) = (per_caller(&together, c), per_caller(&apart, c));
            assert!(a.len() > 20, "{c}: {}", a.len());
            assert_eq!(a.len(), b.len(), "caller {c} sends as many operations");
            let shift = b[0].2 - a[0].2;
            for (x, y) in a.iter().zip(&b) {
                assert_eq!((x.0, x.1, x.2 + shift), *y, "caller {c}");
            }
        }
        // The batch (cut at 10 s, halfway) starts after the API's 10 s and the drain.
        let batch = per_caller(&apart, 1);
        let api_end = per_caller(&apart, 0).iter().map(|o| o.2).max().unwrap_or(0);
        assert!(batch[0].2 >= api_end + apart.drain.as_micros() as i64 - 30_000);
        assert_eq!(batch.len(), 25, "the half of the batch the run sent");
    }

    #[test]
    fn constant_rate_and_batch_arrivals() {
        let s = scenario(
            r#"
[[caller]]
name = "steady"
request = { path = "/" }
rate = 100
stop = "2s"

[[caller]]
name = "batch"
request = { path = "/" }
arrival = "batch"
at = "1s"
spread = "500ms"
keys = { count = 20 }
"#,
        );
        let ops: Vec<PlannedOp> = Schedule::new(&s).collect();
        let steady: Vec<_> = ops.iter().filter(|o| o.caller == 0).collect();
        assert_eq!(steady.len(), 200);
        assert!(steady.windows(2).all(|w| w[1].at_us - w[0].at_us == 10_000));
        let mut batch: Vec<u64> = ops
            .iter()
            .filter(|o| o.caller == 1)
            .map(|o| o.key_index)
            .collect();
        batch.sort();
        assert_eq!(batch, (0..20).collect::<Vec<_>>(), "every key once");
        assert!(
            ops.iter()
                .filter(|o| o.caller == 1)
                .all(|o| (1_000_000..1_500_000).contains(&o.at_us))
        );
    }
}

//! The run over time, kept while it runs: per interval of the load, the operations intended and
//! ended, their outcomes and retries, and a coarse latency histogram, so `report.html` can plot
//! rates and percentiles without reading every operation back from the history afterwards
//! (which cost more than a tenth of a run's instructions: callgrind, `bench/README`).
//!
//! Fixed memory: at most [`MAX_INTERVALS`] intervals of ~1.4 KiB, whatever the run's length.

/// Most intervals a run is cut into.
pub const MAX_INTERVALS: usize = 300;
/// Sub-buckets per power of two of the latency histograms (about 12% precision: plots only).
const SUB: usize = 8;
/// Powers of two covered (2^40 µs ≈ 12.7 days).
const POWERS: usize = 40;
const SLOTS: usize = SUB * (POWERS + 1);

pub use reprod_history::read::Bucket as SeriesPoint;

#[derive(Clone, Debug)]
struct Interval {
    offered: u64,
    done: u64,
    ok: u64,
    retries: u64,
    latency: Box<[u32; SLOTS]>,
}

/// The intervals of one run.
#[derive(Clone, Debug)]
pub(crate) struct Series {
    start_us: i64,
    interval_us: i64,
    intervals: Vec<Interval>,
}

fn slot(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let power = 63 - v.leading_zeros() as usize; // ≥ 3
    let sub = ((v >> (power - 3)) as usize) - SUB; // 0..8
    ((power - 2) * SUB + sub).min(SLOTS - 1)
}

fn value_of(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let power = i / SUB + 2;
    let sub = (i % SUB) as u64;
    let shift = power - 3;
    ((SUB as u64 + sub) << shift) + ((1u64 << shift) >> 1)
}

impl Series {
    /// Intervals for a load starting at `start_us` that lasts about `span_us`.
    pub(crate) fn new(start_us: i64, span_us: i64) -> Series {
        let interval_us = (span_us.max(1) / MAX_INTERVALS as i64 + 1).max(100_000);
        let n = ((span_us.max(1) / interval_us) as usize + 1).min(MAX_INTERVALS);
        Series {
            start_us,
            interval_us,
            intervals: (0..n)
                .map(|_| Interval {
                    offered: 0,
                    done: 0,
                    ok: 0,
                    retries: 0,
                    latency: Box::new([0; SLOTS]),
                })
                .collect(),
        }
    }

    fn index(&self, us: i64) -> usize {
        (((us - self.start_us).max(0) / self.interval_us) as usize).min(self.intervals.len() - 1)
    }

    /// Counts one operation intended at `intended_us` that ended at `done_us`.
    pub(crate) fn record(&mut self, intended_us: i64, done_us: i64, ok: bool, retries: u64) {
        let at = self.index(intended_us);
        self.intervals[at].offered += 1;
        let i = self.index(done_us);
        let interval = &mut self.intervals[i];
        interval.done += 1;
        interval.ok += u64::from(ok);
        interval.retries += retries;
        let latency = (done_us - intended_us).max(0) as u64;
        let slot = slot(latency);
        interval.latency[slot] = interval.latency[slot].saturating_add(1);
    }

    /// The intervals up to the last with anything in it.
    pub(crate) fn points(&self) -> Vec<SeriesPoint> {
        let last = self
            .intervals
            .iter()
            .rposition(|i| i.offered > 0 || i.done > 0)
            .map_or(0, |i| i + 1);
        self.intervals[..last]
            .iter()
            .enumerate()
            .map(|(n, i)| {
                let quantile = |q: f64| -> f64 {
                    if i.done == 0 {
                        return 0.0;
                    }
                    let rank = ((i.done as f64 * q).ceil() as u64).max(1);
                    let mut seen = 0u64;
                    for (s, c) in i.latency.iter().enumerate() {
                        seen += u64::from(*c);
                        if seen >= rank {
                            return value_of(s) as f64 / 1e3;
                        }
                    }
                    0.0
                };
                SeriesPoint {
                    start_s: (n as i64 * self.interval_us) as f64 / 1e6,
                    offered: i.offered,
                    done: i.done,
                    ok: i.ok,
                    not_ok: i.done - i.ok,
                    retries: i.retries,
                    p50_ms: quantile(0.5),
                    p99_ms: quantile(0.99),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_land_in_their_intervals_with_coarse_percentiles() {
        let mut s = Series::new(1_000_000, 10_000_000);
        for k in 0..100 {
            // Intended in the first second, ended 20 ms later (one slow at 400 ms).
            let latency = if k == 99 { 400_000 } else { 20_000 };
            s.record(
                1_000_000 + k * 10_000,
                1_000_000 + k * 10_000 + latency,
                k % 10 != 0,
                0,
            );
        }
        let points = s.points();
        let offered: u64 = points.iter().map(|p| p.offered).sum();
        let done: u64 = points.iter().map(|p| p.done).sum();
        assert_eq!((offered, done), (100, 100));
        assert_eq!(points[0].start_s, 0.0);
        let p = &points[0];
        assert!(p.p50_ms > 17.0 && p.p50_ms < 23.0, "{p:?}");
        assert_eq!(p.not_ok, p.done - p.ok);
        for v in [0u64, 7, 8, 100, 20_000, 1 << 39] {
            let back = value_of(slot(v)) as f64;
            assert!(
                (back - v as f64).abs() <= v as f64 * 0.13 + 1.0,
                "{v} -> {back}"
            );
        }
    }
}

//! Key distributions: uniform, Zipf(s) and a hot set, drawn from a seeded RNG.

use reprod_scenario::{KeyDistribution, Keys};

/// Largest key space for which Zipf uses an exact cumulative table.
const ZIPF_TABLE_MAX: u64 = 200_000;

/// Draws key indexes in `0..count`.
#[derive(Clone, Debug)]
pub struct KeySampler {
    count: u64,
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    Uniform,
    ZipfTable(Vec<f64>),
    ZipfContinuous(f64),
    Hot { hot: u64, share: f64 },
}

impl KeySampler {
    /// A sampler for `keys`.
    pub fn new(keys: &Keys) -> KeySampler {
        let count = keys.count.max(1);
        let kind = match keys.distribution {
            KeyDistribution::Uniform => Kind::Uniform,
            KeyDistribution::Zipf { s } if count <= ZIPF_TABLE_MAX => {
                let mut cdf = Vec::with_capacity(count as usize);
                let mut acc = 0.0;
                for rank in 1..=count {
                    acc += 1.0 / (rank as f64).powf(s);
                    cdf.push(acc);
                }
                for c in &mut cdf {
                    *c /= acc;
                }
                Kind::ZipfTable(cdf)
            }
            KeyDistribution::Zipf { s } => Kind::ZipfContinuous(s),
            KeyDistribution::Hot { fraction, share } => Kind::Hot {
                hot: ((count as f64 * fraction).ceil() as u64).clamp(1, count),
                share,
            },
        };
        KeySampler { count, kind }
    }

    /// One key index.
    pub fn sample(&self, rng: &mut fastrand::Rng) -> u64 {
        match &self.kind {
            Kind::Uniform => rng.u64(..self.count),
            Kind::ZipfTable(cdf) => {
                let u = rng.f64();
                (cdf.partition_point(|c| *c < u) as u64).min(self.count - 1)
            }
            Kind::ZipfContinuous(s) => {
                // Inverse of the continuous approximation of the Zipf CDF over [1, N+1).
                let n = self.count as f64 + 1.0;
                let u = rng.f64();
                let x = if (*s - 1.0).abs() < 1e-9 {
                    n.powf(u)
                } else {
                    ((n.powf(1.0 - s) - 1.0) * u + 1.0).powf(1.0 / (1.0 - s))
                };
                ((x.floor() as u64).saturating_sub(1)).min(self.count - 1)
            }
            Kind::Hot { hot, share } => {
                if *hot == self.count || rng.f64() < *share {
                    rng.u64(..*hot)
                } else {
                    *hot + rng.u64(..self.count - *hot)
                }
            }
        }
    }

    /// Number of keys.
    pub fn count(&self) -> u64 {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(distribution: KeyDistribution) -> Keys {
        Keys {
            count: 100,
            prefix: "k".into(),
            file: None,
            distribution,
        }
    }

    fn shares(sampler: &KeySampler) -> Vec<f64> {
        let mut rng = fastrand::Rng::with_seed(1);
        let mut counts = vec![0u64; 100];
        for _ in 0..100_000 {
            counts[sampler.sample(&mut rng) as usize] += 1;
        }
        counts.iter().map(|c| *c as f64 / 100_000.0).collect()
    }

    #[test]
    fn zipf_favours_low_ranks() {
        let s = shares(&KeySampler::new(&keys(KeyDistribution::Zipf { s: 1.0 })));
        // H(100) ≈ 5.187: rank 1 gets about 19%.
        assert!((s[0] - 0.193).abs() < 0.01, "{}", s[0]);
        assert!(s[0] > 5.0 * s[9]);
    }

    #[test]
    fn hot_set_gets_its_share() {
        let s = shares(&KeySampler::new(&keys(KeyDistribution::Hot {
            fraction: 0.1,
            share: 0.9,
        })));
        let hot: f64 = s[..10].iter().sum();
        assert!((hot - 0.9).abs() < 0.01, "{hot}");
    }

    #[test]
    fn uniform_is_flat() {
        let s = shares(&KeySampler::new(&keys(KeyDistribution::Uniform)));
        assert!(s.iter().all(|x| (x - 0.01).abs() < 0.003));
    }
}

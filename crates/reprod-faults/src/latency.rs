//! Latency shapes: fixed, uniform, or percentiles met exactly by a piecewise log-normal.
//!
//! Given p50, p95, p99 and p999 (any that are set), the sampler draws a standard normal z and
//! interpolates ln(latency) linearly in z between the given points, extending the outer segments.
//! Each segment is a log-normal, so the shape keeps the long right tail real dependencies have,
//! and every requested percentile is hit by construction — a single log-normal fitted to three
//! points could only approximate them. With only p50 given, the latency is p50.

use std::time::Duration;

use reprod_scenario::Latency;

/// Upper bound on any drawn delay, however wild the tail.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// A ready-to-draw latency shape.
#[derive(Clone, Debug)]
pub struct Sampler {
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    Fixed(f64),
    Uniform(f64, f64),
    /// (z, ln seconds) points, increasing in z.
    Piecewise(Vec<(f64, f64)>),
}

impl Sampler {
    /// A sampler for `latency`.
    pub fn new(latency: &Latency) -> Sampler {
        let kind = match latency {
            Latency::Fixed(d) => Kind::Fixed(d.as_secs_f64()),
            Latency::Uniform { min, max } => Kind::Uniform(min.as_secs_f64(), max.as_secs_f64()),
            Latency::Percentiles {
                p50,
                p95,
                p99,
                p999,
            } => {
                let mut points = vec![(0.0, ln(*p50))];
                for (q, d) in [(0.95, p95), (0.99, p99), (0.999, p999)] {
                    if let Some(d) = d {
                        points.push((inverse_normal_cdf(q), ln(*d)));
                    }
                }
                if points.len() == 1 {
                    Kind::Fixed(p50.as_secs_f64())
                } else {
                    Kind::Piecewise(points)
                }
            }
        };
        Sampler { kind }
    }

    /// Draws one delay with `u` uniform in [0, 1).
    pub fn sample(&self, u: f64) -> Duration {
        let seconds = match &self.kind {
            Kind::Fixed(s) => *s,
            Kind::Uniform(lo, hi) => lo + (hi - lo) * u,
            Kind::Piecewise(points) => {
                let z = inverse_normal_cdf(u.clamp(1e-12, 1.0 - 1e-12));
                interpolate(points, z).exp()
            }
        };
        Duration::from_secs_f64(seconds.max(0.0)).min(MAX_DELAY)
    }
}

fn ln(d: Duration) -> f64 {
    d.as_secs_f64().max(1e-7).ln()
}

/// Linear in z through `points`, extended past both ends with the nearest segment's slope.
fn interpolate(points: &[(f64, f64)], z: f64) -> f64 {
    let i = points
        .windows(2)
        .position(|w| z <= w[1].0)
        .unwrap_or(points.len() - 2);
    let (z0, y0) = points[i];
    let (z1, y1) = points[i + 1];
    y0 + (y1 - y0) * (z - z0) / (z1 - z0)
}

/// Φ⁻¹(p) by Acklam's rational approximation (relative error below 1.2e-9).
pub fn inverse_normal_cdf(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.383_577_518_672_69e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    const LOW: f64 = 0.02425;
    if p < LOW {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - LOW {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        -inverse_normal_cdf(1.0 - p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn requested_percentiles_are_met() {
        let sampler = Sampler::new(&Latency::Percentiles {
            p50: ms(20),
            p95: Some(ms(150)),
            p99: Some(ms(400)),
            p999: None,
        });
        let mut rng = fastrand::Rng::with_seed(7);
        let mut draws: Vec<Duration> = (0..200_000).map(|_| sampler.sample(rng.f64())).collect();
        draws.sort();
        let at = |q: f64| draws[(q * draws.len() as f64) as usize].as_secs_f64() * 1e3;
        for (q, want) in [(0.5, 20.0), (0.95, 150.0), (0.99, 400.0)] {
            let got = at(q);
            assert!(
                (got - want).abs() / want < 0.05,
                "p{q}: wanted {want} ms, got {got:.1} ms"
            );
        }
    }

    #[test]
    fn inverse_normal_matches_known_quantiles() {
        assert!(inverse_normal_cdf(0.5).abs() < 1e-9);
        assert!((inverse_normal_cdf(0.95) - 1.644_853_6).abs() < 1e-6);
        assert!((inverse_normal_cdf(0.001) + 3.090_232_3).abs() < 1e-6);
    }

    #[test]
    fn other_shapes() {
        assert_eq!(Sampler::new(&Latency::Fixed(ms(5))).sample(0.9), ms(5));
        let u = Sampler::new(&Latency::Uniform {
            min: ms(10),
            max: ms(20),
        });
        assert_eq!(u.sample(0.5), ms(15));
        let only_median = Sampler::new(&Latency::Percentiles {
            p50: ms(7),
            p95: None,
            p99: None,
            p999: None,
        });
        assert_eq!(only_median.sample(0.99), ms(7));
    }
}

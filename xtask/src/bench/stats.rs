//! Summaries of repeated measurements: median and spread, and percentiles of latency samples.
//!
//! Timings on shared machines are noisy, so every figure the bench publishes is a summary of
//! several runs, never one run. Percentiles use the nearest-rank method (the median is the
//! 50th percentile), so every reported value is one that was actually measured.

use serde::Serialize;

/// Median and spread of repeated measurements, in the unit of the samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// How many samples.
    pub n: usize,
    /// The 50th percentile.
    pub median: f64,
    /// The smallest sample.
    pub min: f64,
    /// The largest sample.
    pub max: f64,
}

impl Summary {
    /// Summarizes `samples`; `None` when there are none (or any is not a number).
    pub fn of(samples: &[f64]) -> Option<Summary> {
        let sorted = sorted(samples)?;
        Some(Summary {
            n: sorted.len(),
            median: nearest_rank(&sorted, 50.0),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        })
    }
}

/// The `p`th percentiles (0 < p <= 100) of `samples`, in the order asked; `None` when empty.
pub fn percentiles(samples: &[f64], ps: &[f64]) -> Option<Vec<f64>> {
    let sorted = sorted(samples)?;
    Some(ps.iter().map(|p| nearest_rank(&sorted, *p)).collect())
}

fn sorted(samples: &[f64]) -> Option<Vec<f64>> {
    if samples.is_empty() || samples.iter().any(|s| s.is_nan()) {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    Some(sorted)
}

/// The smallest sample with at least `p` percent of the samples at or below it.
fn nearest_rank(sorted: &[f64], p: f64) -> f64 {
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        let summary = Summary::of(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!(
            summary,
            Summary {
                n: 3,
                median: 3.0,
                min: 1.0,
                max: 5.0
            }
        );
        assert_eq!(Summary::of(&[2.0, 1.0, 4.0, 3.0]).unwrap().median, 2.0);
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(
            percentiles(&samples, &[50.0, 99.0, 100.0]).unwrap(),
            [50.0, 99.0, 100.0]
        );
        assert_eq!(percentiles(&[7.0], &[1.0, 99.0]).unwrap(), [7.0, 7.0]);
        assert_eq!(percentiles(&[], &[50.0]), None);
    }
}

//! Latency histograms an engine keeps while it runs (time to first token, time between
//! tokens), cheap enough to update on the engine thread at every token: one atomic add per
//! bucket hit and one for the sum, no lock. Workers send snapshots in their heartbeats and
//! the head exports them as Prometheus histograms.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) for the time from a request reaching the engine to its first
/// token: queueing and prefill, from a cached prompt on a GPU to a long prompt on a busy CPU.
pub const TIME_TO_FIRST_TOKEN_BOUNDS: [f64; 16] =
    [0.005, 0.01, 0.02, 0.04, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0];

/// Upper bounds (seconds) for the time between two tokens of one sequence: one decode step,
/// longer when prompt chunks of other sequences share it.
pub const INTER_TOKEN_BOUNDS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0];

/// A histogram of durations over fixed bounds, updated without a lock.
#[derive(Debug)]
pub struct LatencyHistogram {
    bounds: &'static [f64],
    /// One count per bound, then one for everything above the last.
    counts: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

/// A histogram's figures at one moment: `counts[i]` observations in `(bounds[i - 1],
/// bounds[i]]`, the last count above every bound; the sum of all of them in seconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Latencies {
    pub bounds: Vec<f64>,
    pub counts: Vec<u64>,
    pub sum_seconds: f64,
}

impl LatencyHistogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Self { bounds, counts, sum_ns: AtomicU64::new(0) }
    }

    pub fn observe(&self, d: Duration) {
        let seconds = d.as_secs_f64();
        let bucket = self.bounds.partition_point(|&b| b < seconds);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Latencies {
        Latencies {
            bounds: self.bounds.to_vec(),
            counts: self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect(),
            sum_seconds: self.sum_ns.load(Ordering::Relaxed) as f64 * 1e-9,
        }
    }
}

impl Latencies {
    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds `other`'s observations (two engines serving one model); histograms over other
    /// bounds than this one's are left out rather than mixed.
    pub fn merge(&mut self, other: &Latencies) {
        if self.counts.is_empty() {
            *self = other.clone();
        } else if self.bounds == other.bounds && self.counts.len() == other.counts.len() {
            for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
                *mine += theirs;
            }
            self.sum_seconds += other.sum_seconds;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_bucket_of_their_upper_bound() {
        let h = LatencyHistogram::new(&[0.01, 0.1, 1.0]);
        for ms in [1, 10, 11, 100, 999, 5000] {
            h.observe(Duration::from_millis(ms));
        }
        let s = h.snapshot();
        // 1 ms and exactly 10 ms at or below 0.01; 11 and 100 ms at or below 0.1; 999 ms
        // at or below 1; 5 s above every bound.
        assert_eq!(s.counts, [2, 2, 1, 1]);
        assert_eq!(s.count(), 6);
        assert!((s.sum_seconds - 6.121).abs() < 1e-9, "{}", s.sum_seconds);
    }

    #[test]
    fn merging_adds_counts_over_the_same_bounds_only() {
        let (a, b) = (LatencyHistogram::new(&[0.1]), LatencyHistogram::new(&[0.1]));
        a.observe(Duration::from_millis(50));
        b.observe(Duration::from_millis(500));
        let mut total = Latencies::default();
        total.merge(&a.snapshot());
        total.merge(&b.snapshot());
        assert_eq!(total.counts, [1, 1]);
        let other = LatencyHistogram::new(&[0.2]);
        other.observe(Duration::from_millis(50));
        total.merge(&other.snapshot());
        assert_eq!(total.count(), 2);
    }
}

//! The heartbeat interval workers are told, stretched as the cluster grows.
//!
//! Each heartbeat costs the head a few microseconds of HTTP/2 and protobuf work whatever it
//! carries: 10,000 simulated workers at the default 500 ms sent 20,000 a second and took
//! 16% of a core from an idle head. So the head keeps all workers' heartbeats together
//! under a rate (`--max-heartbeats-per-second`, as Nomad's servers stretch their clients'
//! TTLs): past `rate × interval` workers, every worker is told a longer interval. It never
//! passes a third of the worker timeout, so a silent worker is still declared dead after
//! three missed beats and no sooner; a cluster that needs more than that is told to raise
//! the timeout, once, in the log.
//!
//! A joining worker hears the interval in its welcome; the others hear a change with their
//! next heartbeat (`Command::HeartbeatEvery`, worker protocol 3), one message each and no
//! burst. A cluster at the edge of a step does not flap: the interval grows as soon as the
//! count needs it, and shrinks only once the cluster is a fifth smaller than a step needs.

use std::time::Duration;

/// Intervals are told in steps of this much, so that a cluster that grows by a worker does
/// not retell every worker its interval.
const STEP: Duration = Duration::from_millis(100);

/// The interval for each cluster size.
#[derive(Debug, Clone)]
pub(super) struct HeartbeatPace {
    /// The configured interval: the shortest told.
    shortest: Duration,
    /// A third of the worker timeout: the longest told.
    longest: Duration,
    per_second: u32,
}

impl HeartbeatPace {
    pub(super) fn new(interval: Duration, per_second: u32, worker_timeout: Duration) -> Self {
        Self { shortest: interval, longest: (worker_timeout / 3).max(interval), per_second }
    }

    /// The interval that keeps `workers` under the rate, in whole steps, within bounds.
    pub(super) fn interval(&self, workers: usize) -> Duration {
        let needed = Duration::from_secs_f64(workers as f64 / f64::from(self.per_second.max(1)));
        let steps = needed.as_nanos().div_ceil(STEP.as_nanos());
        let needed = STEP.saturating_mul(u32::try_from(steps).unwrap_or(u32::MAX));
        needed.clamp(self.shortest, self.longest)
    }

    /// Whether the rate needs more than the longest interval: the worker timeout is too
    /// short for this many workers.
    pub(super) fn saturated(&self, workers: usize) -> bool {
        workers as f64 / f64::from(self.per_second.max(1)) > self.longest.as_secs_f64()
    }

    /// What to tell a worker that was told `told`, now that there are `workers`: a longer
    /// interval as soon as it is needed, a shorter one once the cluster is a fifth smaller
    /// than `told` needs.
    pub(super) fn retell(&self, told: Duration, workers: usize) -> Option<Duration> {
        let now = self.interval(workers);
        if now > told || self.interval(workers.saturating_mul(5) / 4) < told {
            Some(now)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn the_interval_grows_with_the_cluster_in_steps_up_to_a_third_of_the_timeout() {
        let pace = HeartbeatPace::new(MS(500), 10_000, Duration::from_secs(3));
        assert_eq!(pace.interval(0), MS(500));
        assert_eq!(pace.interval(5_000), MS(500));
        assert_eq!(pace.interval(5_001), MS(600));
        assert_eq!(pace.interval(7_777), MS(800));
        assert_eq!(pace.interval(10_000), MS(1_000));
        // Past the timeout's third, beats stay at three per timeout.
        assert_eq!(pace.interval(30_000), MS(1_000));
        assert!(!pace.saturated(10_000) && pace.saturated(10_001));
        // A short timeout never lets the interval fall below the configured one.
        let tight = HeartbeatPace::new(MS(500), 100, MS(900));
        assert_eq!(tight.interval(1_000), MS(500));
    }

    #[test]
    fn a_worker_is_retold_when_the_cluster_grows_and_when_it_shrinks_by_a_fifth() {
        let pace = HeartbeatPace::new(MS(500), 10_000, Duration::from_secs(3));
        assert_eq!(pace.retell(MS(500), 4_000), None);
        assert_eq!(pace.retell(MS(500), 5_001), Some(MS(600)));
        // At the edge of a step, a worker leaving does not shorten it back.
        assert_eq!(pace.retell(MS(600), 5_000), None);
        assert_eq!(pace.retell(MS(600), 4_500), None);
        assert_eq!(pace.retell(MS(600), 4_000), Some(MS(500)));
        assert_eq!(pace.retell(MS(1_000), 7_000), Some(MS(700)));
        assert_eq!(pace.retell(MS(1_000), 9_000), None);
    }
}

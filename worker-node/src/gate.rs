//! A limit on how many run at once with a bounded line of waiters: the shape of every
//! bound on agent calls (an agent's `max_concurrency`, a worker's slots). Past the line's
//! length an arrival is refused at once as busy instead of joining an ever longer queue,
//! and a waiter gives up at its caller's deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::time::Instant;

/// Why a gate was not passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shut {
    /// All running, and the line of waiters full.
    Busy,
    /// Waited until the deadline.
    TimedOut,
    /// The gate was closed (its agent stopped).
    Closed,
}

/// At most `running` at once, and at most `max_waiting` waiting for their turn.
#[derive(Debug)]
pub struct Gate {
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
}

impl Gate {
    pub fn new(running: usize, max_waiting: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(running)),
            waiting: AtomicUsize::new(0),
            max_waiting,
        }
    }

    /// A turn, held until the permit is dropped: at once if one is free, else after waiting
    /// in line until `deadline`.
    pub async fn enter(&self, deadline: Instant) -> Result<OwnedSemaphorePermit, Shut> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => return Ok(permit),
            Err(TryAcquireError::Closed) => return Err(Shut::Closed),
            Err(TryAcquireError::NoPermits) => {}
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Shut::Busy);
        }
        let _in_line = InLine(&self.waiting);
        match tokio::time::timeout_at(deadline, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(Shut::Closed),
            Err(_) => Err(Shut::TimedOut),
        }
    }

    /// Waiters and later arrivals are refused as [`Shut::Closed`]; running turns end as
    /// they will.
    pub fn close(&self) {
        self.permits.close();
    }

    /// How many wait in line now.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

/// A place in a gate's line, given back however the wait ends.
struct InLine<'a>(&'a AtomicUsize);

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_full_line_is_refused_at_once_and_a_waiter_gets_the_next_turn() {
        let gate = Arc::new(Gate::new(1, 1));
        let far = Instant::now() + Duration::from_secs(30);
        let first = gate.enter(far).await.expect("a free turn");
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.enter(far).await.map(drop) }
        });
        while gate.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(gate.enter(far).await.err(), Some(Shut::Busy), "the line holds one");
        drop(first);
        assert_eq!(waiter.await.expect("joined"), Ok(()));
        assert_eq!(gate.waiting(), 0);
    }

    #[tokio::test]
    async fn a_waiter_gives_up_at_its_deadline_and_a_closed_gate_refuses() {
        let gate = Gate::new(1, 4);
        let _held = gate.enter(Instant::now() + Duration::from_secs(1)).await.expect("free");
        let soon = Instant::now() + Duration::from_millis(20);
        assert_eq!(gate.enter(soon).await.err(), Some(Shut::TimedOut));
        assert_eq!(gate.waiting(), 0, "the place in line is given back");
        gate.close();
        assert_eq!(gate.enter(soon).await.err(), Some(Shut::Closed));
    }
}

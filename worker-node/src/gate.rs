//! A limit on how many run at once with a bounded line of waiters: the shape of every
//! bound on agent calls (an agent's `max_concurrency`, a worker's slots). Past the line's
//! length an arrival is refused at once as busy instead of joining an ever longer queue,
//! and a waiter gives up at its caller's deadline.
//!
//! A run holds its turns in a [`Lease`], which lends them back while the run waits on a
//! call of its own, as Ray lends a task blocked on its children's results its CPU: a run
//! holding its agent's only turn that calls the same agent (directly, or through others)
//! would otherwise wait on itself.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
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

    /// A turn again for a run already admitted (its lease lent it back): it waits without
    /// a place in the line and without a deadline (its caller's cancel ends the wait);
    /// `None` once the gate is closed.
    async fn reenter(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().acquire_owned().await.ok()
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

/// The turns one run holds, each at its gate, and the count of runs holding it (a worker's
/// calls in its slots) where one is kept.
#[derive(Default)]
pub struct Lease {
    held: Mutex<Vec<Held>>,
}

struct Held {
    gate: Arc<Gate>,
    permit: Option<OwnedSemaphorePermit>,
    count: Option<Arc<AtomicUsize>>,
}

impl Held {
    fn give_back(&mut self) {
        if self.permit.take().is_some()
            && let Some(count) = &self.count
        {
            count.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn hold(&mut self, permit: OwnedSemaphorePermit) {
        if let Some(count) = &self.count {
            count.fetch_add(1, Ordering::AcqRel);
        }
        self.permit = Some(permit);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.give_back();
    }
}

impl Lease {
    /// Takes a turn at `gate` (see [`Gate::enter`]) and holds it until the lease is dropped;
    /// `count` goes up while it is held.
    pub async fn take(
        &self,
        gate: &Arc<Gate>,
        deadline: Instant,
        count: Option<Arc<AtomicUsize>>,
    ) -> Result<(), Shut> {
        let permit = gate.enter(deadline).await?;
        let mut held = Held { gate: gate.clone(), permit: None, count };
        held.hold(permit);
        self.held.lock().push(held);
        Ok(())
    }

    /// Runs `wait` with the turns given back, then takes them again (in the order first
    /// taken, so two runs cannot hold one each and wait for the other's). Dropped midway
    /// (the run canceled), the turns stay given back.
    pub async fn lend<T>(&self, wait: impl Future<Output = T>) -> T {
        let mut held = std::mem::take(&mut *self.held.lock());
        held.iter_mut().for_each(Held::give_back);
        let out = wait.await;
        for h in &mut held {
            if let Some(permit) = h.gate.reenter().await {
                h.hold(permit);
            }
        }
        *self.held.lock() = held;
        out
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
    async fn a_lease_lends_its_turn_while_its_run_waits_and_takes_it_again() {
        let gate = Arc::new(Gate::new(1, 1));
        let count = Arc::new(AtomicUsize::new(0));
        let far = Instant::now() + Duration::from_secs(30);
        let lease = Lease::default();
        lease.take(&gate, far, Some(count.clone())).await.expect("a free turn");
        assert_eq!(count.load(Ordering::Acquire), 1);
        // The run calls its own agent: the inner call gets the turn the outer one lent.
        let inner = lease.lend(async {
            let inner = Lease::default();
            inner
                .take(&gate, far, Some(count.clone()))
                .await
                .map(|()| count.load(Ordering::Acquire))
        });
        assert_eq!(inner.await, Ok(1), "the inner call ran on the lent turn, counted once");
        assert_eq!(count.load(Ordering::Acquire), 1, "the outer run holds its turn again");
        assert_eq!(gate.enter(Instant::now()).await.err(), Some(Shut::TimedOut));
        drop(lease);
        assert_eq!(count.load(Ordering::Acquire), 0);
        assert!(gate.enter(far).await.is_ok(), "the turn was given back with the lease");
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

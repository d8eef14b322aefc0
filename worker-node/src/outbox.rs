//! Task events on their way to the head, kept until the head has stored them. They outlive
//! a connection: when the head restarts or the stream breaks, the worker's tasks go on, their
//! events wait here, and after rejoining the worker sends those the head does not have.
//!
//! Each event gets the worker's own running number in `seq`; the head acknowledges stored
//! events by number (`Acked`) and says at rejoin which it has (`Welcome.resume_after`), so
//! nothing is lost and nothing arrives twice. At most [`MAX_UNACKED`] events wait: beyond
//! that the task runners wait too (generation pauses) until the head is back. A runner that
//! must not go on before its event is stored (a tool's result: a retry must not call the tool
//! again) is told when the head acknowledges it.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use fleet_proto::{TaskEvent, TaskId};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};

use crate::runner::Outgoing;

/// Events the head has not confirmed stored, at most.
pub const MAX_UNACKED: usize = 65_536;

/// About the most bytes one batch of events to the head carries (the head takes messages of
/// up to 16 MiB; one event alone may be bigger than this, up to an artifact's limit).
pub const MAX_BATCH_BYTES: usize = 4 << 20;

#[derive(Debug)]
pub struct Outbox {
    /// Numbered, oldest first.
    events: Mutex<VecDeque<TaskEvent>>,
    /// Who waits for which event to be stored, by number, oldest first.
    waiters: Mutex<VecDeque<(u64, oneshot::Sender<()>)>>,
    /// The last number given.
    added: watch::Sender<u64>,
    /// The last number the head confirmed.
    acked: watch::Sender<u64>,
}

impl Outbox {
    /// An empty outbox fed by `events` (the task runners' sink) until every sender is gone.
    pub fn start(events: mpsc::Receiver<Outgoing>, limit: usize) -> Arc<Self> {
        let outbox = Arc::new(Self {
            events: Mutex::new(VecDeque::new()),
            waiters: Mutex::new(VecDeque::new()),
            added: watch::Sender::new(0),
            acked: watch::Sender::new(0),
        });
        tokio::spawn(outbox.clone().pump(events, limit));
        outbox
    }

    /// Numbers and keeps the runners' events while there is room.
    async fn pump(self: Arc<Self>, mut events: mpsc::Receiver<Outgoing>, limit: usize) {
        let mut acked = self.acked.subscribe();
        let mut batch = Vec::with_capacity(1024);
        loop {
            acked.borrow_and_update();
            while self.events.lock().len() >= limit {
                // Full: the runners wait on the channel until the head confirms some.
                if acked.changed().await.is_err() {
                    return;
                }
            }
            if events.recv_many(&mut batch, 1024).await == 0 {
                return;
            }
            let mut kept = self.events.lock();
            let mut last = *self.added.borrow();
            for Outgoing { mut event, stored } in batch.drain(..) {
                last += 1;
                event.seq = last;
                kept.push_back(event);
                if let Some(stored) = stored {
                    self.waiters.lock().push_back((last, stored));
                }
            }
            drop(kept);
            self.added.send_replace(last);
        }
    }

    /// The head stored everything up to `up_to`: forget it.
    pub fn ack(&self, up_to: u64) {
        let mut events = self.events.lock();
        while events.front().is_some_and(|e| e.seq <= up_to) {
            events.pop_front();
        }
        drop(events);
        let mut waiters = self.waiters.lock();
        while waiters.front().is_some_and(|(seq, _)| *seq <= up_to) {
            if let Some((_, stored)) = waiters.pop_front() {
                let _ = stored.send(());
            }
        }
        drop(waiters);
        self.acked.send_if_modified(|acked| {
            let moved = up_to > *acked;
            *acked = (*acked).max(up_to);
            moved
        });
    }

    /// A watcher of new events, for [`Outbox::after`].
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.added.subscribe()
    }

    /// Up to `max` events after number `cursor` (fewer when they carry more than
    /// [`MAX_BATCH_BYTES`]), waiting until there are some; empty once the outbox is gone.
    pub async fn after(
        &self,
        cursor: u64,
        max: usize,
        added: &mut watch::Receiver<u64>,
    ) -> Vec<TaskEvent> {
        loop {
            added.borrow_and_update();
            {
                let events = self.events.lock();
                let first = events.front().map_or(u64::MAX, |e| e.seq);
                let skip = (cursor + 1).saturating_sub(first) as usize;
                if skip < events.len() {
                    let mut bytes = 0;
                    let batch = events.iter().skip(skip).take(max).take_while(|e| {
                        let first = bytes == 0;
                        bytes += e.kind.payload_bytes().max(1);
                        first || bytes <= MAX_BATCH_BYTES
                    });
                    return batch.cloned().collect();
                }
            }
            if added.changed().await.is_err() {
                return Vec::new();
            }
        }
    }

    /// The tasks (with attempts) that have events waiting: the head must hear about them.
    pub fn tasks(&self) -> HashSet<(TaskId, u32)> {
        self.events.lock().iter().map(|e| (e.task_id.clone(), e.attempt)).collect()
    }

    /// Events waiting, for tests and status.
    pub fn len(&self) -> usize {
        self.events.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::EventKind;

    fn out(event: TaskEvent) -> Outgoing {
        Outgoing { event, stored: None }
    }

    fn event(task: &str) -> TaskEvent {
        TaskEvent {
            task_id: TaskId::new(task),
            seq: 0,
            attempt: 1,
            timestamp_us: 0,
            kind: EventKind::text("x"),
        }
    }

    #[tokio::test]
    async fn events_are_numbered_kept_until_acked_and_bounded() {
        let (tx, rx) = mpsc::channel(4);
        let outbox = Outbox::start(rx, 3);
        let mut added = outbox.watch();
        for _ in 0..3 {
            tx.send(out(event("t"))).await.expect("send");
        }
        let first = outbox.after(0, 10, &mut added).await;
        let seqs: Vec<u64> = first.iter().map(|e| e.seq).collect();
        // The pump may have taken them in more than one batch.
        assert!(!seqs.is_empty() && seqs.iter().copied().eq(1..=seqs.len() as u64), "{seqs:?}");
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while outbox.len() < 3 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("three kept");
        // Full: a fourth waits in the channel until the head confirms some.
        tx.send(out(event("t"))).await.expect("send");
        tokio::task::yield_now().await;
        assert_eq!(outbox.len(), 3);
        assert_eq!(
            outbox.after(1, 10, &mut added).await.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [2, 3]
        );
        outbox.ack(2);
        let next = outbox.after(3, 10, &mut added).await;
        assert_eq!(next.iter().map(|e| e.seq).collect::<Vec<_>>(), [4]);
        assert_eq!(outbox.len(), 2);
        assert_eq!(outbox.tasks().len(), 1);
    }

    #[tokio::test]
    async fn a_batch_carries_at_most_its_bytes_but_always_one_event() {
        let (tx, rx) = mpsc::channel(16);
        let outbox = Outbox::start(rx, 16);
        let mut added = outbox.watch();
        let sized =
            |bytes: usize| TaskEvent { kind: EventKind::text("x".repeat(bytes)), ..event("t") };
        for bytes in [MAX_BATCH_BYTES + 1, 1 << 20, 1 << 20, 1 << 20, 1 << 20, 1 << 20] {
            tx.send(out(sized(bytes))).await.expect("send");
        }
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while outbox.len() < 6 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("six kept");
        let seqs = |batch: Vec<TaskEvent>| batch.iter().map(|e| e.seq).collect::<Vec<_>>();
        // Bigger than a batch alone: sent alone, not held back forever.
        assert_eq!(seqs(outbox.after(0, 100, &mut added).await), [1]);
        assert_eq!(seqs(outbox.after(1, 100, &mut added).await), [2, 3, 4, 5]);
        assert_eq!(seqs(outbox.after(5, 100, &mut added).await), [6]);
    }

    #[tokio::test]
    async fn a_waiter_hears_once_its_event_is_acked() {
        let (tx, rx) = mpsc::channel(4);
        let outbox = Outbox::start(rx, 16);
        tx.send(out(event("t"))).await.expect("send");
        let (stored, mut heard) = oneshot::channel();
        tx.send(Outgoing { event: event("t"), stored: Some(stored) }).await.expect("send");
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while outbox.len() < 2 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("two kept");
        outbox.ack(1);
        assert!(heard.try_recv().is_err(), "told before its own event was stored");
        outbox.ack(2);
        assert_eq!(heard.try_recv(), Ok(()));
    }
}

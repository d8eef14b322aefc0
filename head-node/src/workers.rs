//! The worker registry: who is in the cluster, what each worker has and runs, and when each
//! was last heard from (failure detection); with the indexes placement walks instead of
//! every worker ([`crate::placement_index`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::{Command, Heartbeat, Registration, Resources, TaskId};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::placement_index::PlacementIndex;

/// Commands waiting for one worker at most. A worker reading its stream keeps this near
/// empty (the scheduler sends at most `slots` tasks, a cancel each, a place per agent);
/// only one that stopped reading while acknowledgements, lookups' answers and peer lists
/// pile up gets here.
pub const COMMAND_BUFFER: usize = 65_536;

/// The worker's queue of commands, shared by both ends so that either can drop what waits.
type Queue = Arc<Mutex<Option<mpsc::Receiver<Command>>>>;

/// The head's side of one worker's `Join` stream: commands are queued without waiting
/// (the cluster's lock is held), into a buffer of [`COMMAND_BUFFER`]. A worker that lets it
/// fill is cut off rather than sent a partial stream: what was queued is dropped at once
/// (its stalled HTTP/2 stream would otherwise keep it until the connection closes), `cut`
/// fires (the `Join` handler then ends the stream with RESOURCE_EXHAUSTED, and the worker is
/// handled as lost: its tasks are retried, it rejoins with an empty buffer), and nothing
/// more is queued for this connection. A worker removed from the registry for any other
/// reason (its stream ended, no heartbeat) has its queue dropped the same way, its stream
/// ending cleanly.
#[derive(Clone, Debug)]
pub struct CommandSender {
    tx: Arc<Mutex<Option<mpsc::Sender<Command>>>>,
    queue: Queue,
    cut: CancellationToken,
}

/// The worker's side: its commands, and the signal that the head cut it off.
#[derive(Clone, Debug)]
pub struct CommandStream {
    queue: Queue,
    pub cut: CancellationToken,
}

impl CommandStream {
    /// Up to `max` waiting commands into `buf`; `Ready(0)` once the queue closed or was
    /// dropped. The lock is held only while polling, never across a wait.
    pub fn poll_recv_many(
        &self,
        cx: &mut std::task::Context<'_>,
        buf: &mut Vec<Command>,
        max: usize,
    ) -> std::task::Poll<usize> {
        match self.queue.lock().as_mut() {
            Some(rx) => rx.poll_recv_many(cx, buf, max),
            None => std::task::Poll::Ready(0),
        }
    }

    /// A command if one is waiting (tests).
    pub fn try_recv(&self) -> Option<Command> {
        self.queue.lock().as_mut()?.try_recv().ok()
    }

    /// The queue itself, for an in-process worker that reads it directly.
    pub fn into_receiver(self) -> Option<mpsc::Receiver<Command>> {
        self.queue.lock().take()
    }
}

impl CommandSender {
    pub fn channel() -> (CommandSender, CommandStream) {
        Self::with_capacity(COMMAND_BUFFER)
    }

    fn with_capacity(capacity: usize) -> (CommandSender, CommandStream) {
        let (tx, rx) = mpsc::channel(capacity);
        let cut = CancellationToken::new();
        let queue: Queue = Arc::new(Mutex::new(Some(rx)));
        let sender = CommandSender {
            tx: Arc::new(Mutex::new(Some(tx))),
            queue: queue.clone(),
            cut: cut.clone(),
        };
        (sender, CommandStream { queue, cut })
    }

    /// Whether the worker was cut off.
    pub fn is_cut(&self) -> bool {
        self.cut.is_cancelled()
    }

    /// Nothing more is queued for this connection, and what waits is dropped; returns how
    /// many commands that was. (An in-process worker holding the queue itself reads what is
    /// left, then sees it closed.)
    pub fn close(&self) -> usize {
        *self.tx.lock() = None;
        let Some(queue) = self.queue.lock().take() else { return 0 };
        let dropped = queue.len();
        // Freeing up to 65,536 commands is not work for the cluster's lock, which callers
        // hold: it is done beside it.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || drop(queue))),
            Err(_) => drop(queue),
        }
        dropped
    }

    /// Queues `command`; false when the worker is gone or was cut off (this one too).
    pub fn send(&self, command: Command) -> bool {
        let mut tx = self.tx.lock();
        let Some(sender) = tx.as_ref() else { return false };
        match sender.try_send(command) {
            Ok(()) => true,
            Err(TrySendError::Closed(_)) => false,
            Err(TrySendError::Full(_)) => {
                *tx = None;
                drop(tx);
                let dropped = self.close();
                warn!(dropped, "a worker stopped reading its commands; cut off, its queue dropped");
                self.cut.cancel();
                false
            }
        }
    }
}

/// One live worker.
#[derive(Debug)]
pub struct WorkerEntry {
    pub id: String,
    /// Tells this connection apart from an earlier or later one of the same worker id.
    pub connection: u64,
    pub registration: Registration,
    pub address: String,
    pub commands: CommandSender,
    pub last_heartbeat: Instant,
    pub heartbeat: Heartbeat,
    /// Resources not reserved by running tasks.
    pub free: Resources,
    pub running: HashSet<TaskId>,
    /// Running tasks waiting on agents they called (sub-tasks), with how many. Each lends
    /// its slot to one of its own sub-tasks at a time, so that callers filling every slot
    /// cannot leave the agents they wait on queued behind them (a deadlock). A subset of
    /// `running`.
    pub lent: HashMap<TaskId, u32>,
    /// Sub-tasks running in the slot their caller lends (the caller's id for each): they
    /// take no slot of their own. A subset of `running`, at most one per lender, so a
    /// worker runs at most its slots times `MAX_TOOL_DEPTH + 1` tasks.
    pub borrowing: HashMap<TaskId, TaskId>,
    /// Agents with an actor on this worker, by spec version.
    pub placed: HashMap<String, (u64, u64)>,
    /// Running tasks per agent, for spreading an agent's tasks.
    pub running_per_agent: HashMap<String, u32>,
    pub tasks_assigned: u64,
    /// The prompt prefixes of the tasks it ran last, likely still in its prefix cache.
    /// Changed only through [`WorkerRegistry::touch_warm`], which keeps the index of warm
    /// workers by prefix.
    pub warm: WarmPrefixes,
    /// It said it is stopping (`Drain`): nothing new goes there; it leaves once its tasks end.
    pub draining: bool,
    /// The heartbeat interval it was last told.
    pub heartbeat_every: Duration,
}

/// The prefix keys ([`crate::scheduler::Prefixes`]) of a worker's latest tasks, most recent
/// last. Bounded: a worker's prefix cache holds a few dozen prompts' worth of KV memory, and
/// older keys would only mislead.
#[derive(Debug, Default)]
pub struct WarmPrefixes(std::collections::VecDeque<u64>);

impl WarmPrefixes {
    const MAX: usize = 64;

    /// Notes a task's prefixes as run here; returns the keys that made room for them.
    fn touch(&mut self, prefixes: &crate::scheduler::Prefixes) -> Vec<u64> {
        let mut evicted = Vec::new();
        for key in [Some(prefixes.agent), prefixes.conversation].into_iter().flatten() {
            self.0.retain(|k| *k != key);
            if self.0.len() == Self::MAX {
                evicted.extend(self.0.pop_front());
            }
            self.0.push_back(key);
        }
        evicted
    }

    pub fn contains(&self, key: u64) -> bool {
        self.0.contains(&key)
    }

    fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.iter().copied()
    }
}

impl WorkerEntry {
    pub fn new(
        registration: Registration,
        connection: u64,
        address: String,
        commands: CommandSender,
        now: Instant,
    ) -> Self {
        Self {
            id: registration.worker_id.clone(),
            connection,
            free: registration.resources,
            registration,
            address,
            commands,
            last_heartbeat: now,
            heartbeat: Heartbeat::default(),
            running: HashSet::new(),
            lent: HashMap::new(),
            borrowing: HashMap::new(),
            placed: HashMap::new(),
            running_per_agent: HashMap::new(),
            tasks_assigned: 0,
            warm: WarmPrefixes::default(),
            draining: false,
            heartbeat_every: Duration::ZERO,
        }
    }

    /// Whether a task may go here: a slot is free, and the worker was not cut off for not
    /// reading its commands (it is about to be dropped; a task sent now would be lost).
    pub fn has_free_slot(&self) -> bool {
        self.slots_taken() < self.registration.slots && !self.commands.is_cut()
    }

    /// Whether a new task may go here now: a free slot, and not draining.
    pub fn takes_tasks(&self) -> bool {
        !self.draining && self.has_free_slot()
    }

    /// Slots its tasks take (sub-tasks in their caller's slot take none), and the calls
    /// from the mesh it runs (as its last heartbeat said: calls go worker to worker, the
    /// head sees only their count).
    pub fn slots_taken(&self) -> u32 {
        let holding = self.running.len().saturating_sub(self.borrowing.len()) as u32;
        holding.saturating_add(self.heartbeat.mesh_calls)
    }

    /// Whether the worker has `model` on disk (built-in and remote models are everywhere).
    pub fn has_model(&self, model: &str) -> bool {
        match model.strip_prefix(fleet_proto::PYTHON_PREFIX) {
            Some(name) => self.registration.hosts_python_agent(name),
            None => {
                crate::agents::runs_everywhere(model)
                    || self.registration.models.iter().any(|m| m.id == model)
            }
        }
    }

    pub fn has_model_loaded(&self, model: &str) -> bool {
        self.heartbeat.models_loaded.iter().any(|m| m == model)
    }
}

/// All live workers by id.
#[derive(Debug, Default)]
pub struct WorkerRegistry {
    workers: HashMap<String, WorkerEntry>,
    next_connection: u64,
    index: PlacementIndex,
}

impl WorkerRegistry {
    /// A fresh connection number for a joining worker.
    pub fn next_connection(&mut self) -> u64 {
        self.next_connection += 1;
        self.next_connection
    }

    /// Adds a worker; returns the entry it replaced (an older connection of the same id,
    /// whose command queue is closed).
    pub fn insert(&mut self, entry: WorkerEntry) -> Option<WorkerEntry> {
        let id = entry.id.clone();
        let replaced = self.workers.insert(id.clone(), entry);
        if let Some(old) = &replaced {
            old.commands.close();
            self.forget(old_index_keys(old));
        }
        if let Some(new) = self.workers.get(&id) {
            for model in &new.heartbeat.models_loaded {
                self.index.loaded(&id, model);
            }
        }
        self.index.maybe_free(&id);
        replaced
    }

    fn forget(&mut self, (id, models, keys): (String, Vec<String>, Vec<u64>)) {
        self.index.forget(&id, models.iter().map(String::as_str), keys);
    }

    /// Removes a worker if `connection` is still its current one, closing its command queue
    /// (see [`CommandSender`]).
    pub fn remove(&mut self, id: &str, connection: u64) -> Option<WorkerEntry> {
        match self.workers.get(id) {
            Some(w) if w.connection == connection => {
                let entry = self.workers.remove(id)?;
                entry.commands.close();
                self.forget(old_index_keys(&entry));
                Some(entry)
            }
            _ => None,
        }
    }

    pub fn get(&self, id: &str) -> Option<&WorkerEntry> {
        self.workers.get(id)
    }

    /// The worker, to change: it may have a slot free afterwards (see
    /// [`crate::placement_index`]).
    pub fn get_mut(&mut self, id: &str) -> Option<&mut WorkerEntry> {
        let worker = self.workers.get_mut(id)?;
        self.index.maybe_free(id);
        Some(worker)
    }

    /// Records a heartbeat from the current connection of a worker.
    pub fn heartbeat(&mut self, id: &str, connection: u64, beat: Heartbeat, now: Instant) {
        let Some(w) = self.workers.get_mut(id).filter(|w| w.connection == connection) else {
            return;
        };
        w.last_heartbeat = now;
        let before = std::mem::replace(&mut w.heartbeat, beat);
        let after = &w.heartbeat.models_loaded;
        if before.models_loaded != *after {
            for model in before.models_loaded.iter().filter(|m| !after.contains(m)) {
                self.index.unloaded(id, model);
            }
            for model in after.iter().filter(|m| !before.models_loaded.contains(m)) {
                self.index.loaded(id, model);
            }
        }
        // Its calls from the mesh may have ended.
        self.index.maybe_free(id);
    }

    /// Notes a task's prompt prefixes as warm on a worker (and the index of them).
    pub fn touch_warm(&mut self, id: &str, prefixes: &crate::scheduler::Prefixes) {
        let Some(w) = self.workers.get_mut(id) else { return };
        for key in w.warm.touch(prefixes) {
            self.index.cooled(id, key);
        }
        for key in [Some(prefixes.agent), prefixes.conversation].into_iter().flatten() {
            self.index.warmed(id, key);
        }
    }

    /// Up to `k` workers that can take a task now (a free slot, not draining), a different
    /// few each time.
    pub fn free_workers(&mut self, k: usize) -> Vec<String> {
        let workers = &self.workers;
        self.index.free_workers(k, |id| workers.get(id).is_some_and(WorkerEntry::takes_tasks))
    }

    /// Whether any worker can take a task now.
    pub fn any_free_slot(&mut self) -> bool {
        let workers = &self.workers;
        self.index.any_free(|id| workers.get(id).is_some_and(WorkerEntry::takes_tasks))
    }

    /// Up to `k` workers with `model` loaded.
    pub fn with_model_loaded(&self, model: &str, k: usize) -> impl Iterator<Item = &str> {
        self.index.with_model_loaded(model, k)
    }

    /// Up to `k` workers whose recent tasks had the prefix `key`.
    pub fn warm_for(&self, key: u64, k: usize) -> impl Iterator<Item = &str> {
        self.index.warm_for(key, k)
    }

    /// Marks a worker as heard from (any message counts).
    pub fn touch(&mut self, id: &str, connection: u64, now: Instant) {
        if let Some(w) = self.workers.get_mut(id)
            && w.connection == connection
        {
            w.last_heartbeat = now;
        }
    }

    /// Workers not heard from within `timeout`, as (id, connection).
    pub fn expired(&self, now: Instant, timeout: Duration) -> Vec<(String, u64)> {
        self.workers
            .values()
            .filter(|w| now.saturating_duration_since(w.last_heartbeat) > timeout)
            .map(|w| (w.id.clone(), w.connection))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &WorkerEntry> {
        self.workers.values()
    }

    /// Every worker, to change (each may have a slot free afterwards).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut WorkerEntry> {
        for id in self.workers.keys() {
            self.index.maybe_free(id);
        }
        self.workers.values_mut()
    }
}

/// What the index holds of a worker: its id, its loaded models, its warm prefixes.
fn old_index_keys(w: &WorkerEntry) -> (String, Vec<String>, Vec<u64>) {
    (w.id.clone(), w.heartbeat.models_loaded.clone(), w.warm.keys().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(registry: &mut WorkerRegistry, id: &str, now: Instant) -> WorkerEntry {
        let registration = Registration { worker_id: id.into(), slots: 4, ..Default::default() };
        let (tx, _rx) = CommandSender::channel();
        WorkerEntry::new(registration, registry.next_connection(), "peer".into(), tx, now)
    }

    #[tokio::test]
    async fn a_full_command_buffer_cuts_the_worker_off_and_drops_its_queue() {
        let (tx, stream) = CommandSender::with_capacity(3);
        let body = stream.clone(); // the Join stream's body, which nobody polls (stalled)
        let ack = |up_to| Command::Acked { up_to };
        assert!(tx.send(ack(1)) && tx.send(ack(2)) && tx.send(ack(3)));
        assert!(!stream.cut.is_cancelled());
        let clone = tx.clone();
        assert!(!clone.send(ack(4)), "a command past the buffer was queued");
        assert!(stream.cut.is_cancelled());
        assert!(!tx.send(ack(5)), "a cut-off worker was sent more");
        // The three queued were dropped at the cut, not when the stalled connection closes:
        // the body ends when next polled, and the channel is gone (no clone holds it).
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut buf = Vec::new();
        assert_eq!(body.poll_recv_many(&mut cx, &mut buf, 8), std::task::Poll::Ready(0));
        assert!(buf.is_empty());
        assert!(stream.into_receiver().is_none(), "the queue outlived the cut");
    }

    #[tokio::test]
    async fn a_removed_workers_queue_is_dropped_and_its_stream_ends() {
        let mut registry = WorkerRegistry::default();
        let (tx, stream) = CommandSender::with_capacity(8);
        let registration = Registration { worker_id: "w".into(), slots: 4, ..Default::default() };
        let connection = registry.next_connection();
        registry.insert(WorkerEntry::new(registration, connection, "p".into(), tx, Instant::now()));
        let sender = registry.get("w").map(|w| w.commands.clone()).expect("registered");
        assert!(sender.send(Command::Acked { up_to: 1 }));
        // Silent past the failure detector's timeout (or its stream ended): removed.
        assert!(registry.remove("w", connection).is_some());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut buf = Vec::new();
        assert_eq!(stream.poll_recv_many(&mut cx, &mut buf, 8), std::task::Poll::Ready(0));
        assert!(buf.is_empty(), "a lost worker's queue was kept");
        assert!(!stream.cut.is_cancelled(), "a lost worker is not told it stopped reading");
        assert!(!sender.send(Command::Acked { up_to: 2 }), "a removed worker was sent more");
    }

    #[tokio::test]
    async fn calls_from_the_mesh_take_slots() {
        let mut registry = WorkerRegistry::default();
        let w = entry(&mut registry, "w", Instant::now());
        let connection = w.connection;
        registry.insert(w);
        let beat = |mesh_calls| Heartbeat { mesh_calls, ..Default::default() };
        registry.heartbeat("w", connection, beat(3), Instant::now());
        let w = registry.get("w").map(WorkerEntry::has_free_slot);
        assert_eq!(w, Some(true), "3 calls of 4 slots leave one");
        registry.heartbeat("w", connection, beat(4), Instant::now());
        let w = registry.get("w").map(|w| (w.has_free_slot(), w.slots_taken()));
        assert_eq!(w, Some((false, 4)), "4 calls take the 4 slots");
    }

    #[tokio::test(start_paused = true)]
    async fn silent_workers_expire_and_heartbeats_keep_them() {
        let mut registry = WorkerRegistry::default();
        let timeout = Duration::from_secs(3);
        let a = entry(&mut registry, "a", Instant::now());
        let b = entry(&mut registry, "b", Instant::now());
        let (a_conn, b_conn) = (a.connection, b.connection);
        registry.insert(a);
        registry.insert(b);

        tokio::time::advance(Duration::from_secs(2)).await;
        registry.heartbeat("a", a_conn, Heartbeat::default(), Instant::now());
        assert!(registry.expired(Instant::now(), timeout).is_empty());

        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(registry.expired(Instant::now(), timeout), [("b".to_owned(), b_conn)]);

        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(registry.expired(Instant::now(), timeout).len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_connection_cannot_remove_or_refresh_its_successor() {
        let mut registry = WorkerRegistry::default();
        let old = entry(&mut registry, "a", Instant::now());
        let old_conn = old.connection;
        registry.insert(old);
        let new = entry(&mut registry, "a", Instant::now());
        let new_conn = new.connection;
        assert!(registry.insert(new).is_some());

        tokio::time::advance(Duration::from_secs(5)).await;
        registry.touch("a", old_conn, Instant::now());
        assert_eq!(registry.expired(Instant::now(), Duration::from_secs(3)).len(), 1);
        assert!(registry.remove("a", old_conn).is_none());
        assert!(registry.remove("a", new_conn).is_some());
    }
}

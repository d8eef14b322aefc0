//! Group commit: records are appended without waiting (under the cluster's lock) and a
//! writer stores what has gathered in one transaction, then reports what became durable so
//! that the events can go to their subscribers.
//!
//! The writer is a task on the head's runtime: a quick write (the file store's append to
//! the OS's cache) is made in place, anything slower on the blocking pool. Handing every
//! write to a thread of its own and the result back cost two thread wake-ups per commit,
//! most of what the file store added to a task's round trip. Without a runtime (a journal
//! started outside one, as unit tests do) the writer has a thread of its own.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use fleet_proto::{AgentSpec, TaskEvent, TaskId};
use parking_lot::Mutex;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tracing::{error, info};

use super::{
    Batch, Store, StoreError, TaskRecord, WorkerMark, encode_actor, encode_agent,
    encode_conversation, encode_events, encode_topic_message,
};
use crate::conversations;

/// Records waiting beyond which new work is refused: the store is not keeping up.
const MAX_BACKLOG: usize = 1 << 20;
/// How long a failed write waits before it is tried again.
const RETRY: Duration = Duration::from_millis(500);

/// What a commit made durable: each task it touched and its last stored event, and each
/// worker's last stored event number.
#[derive(Debug, Default)]
pub struct Commit {
    pub tasks: Vec<(TaskId, u64)>,
    pub workers: Vec<WorkerMark>,
}

enum Record {
    Task(Box<TaskRecord>),
    Event(u64, Arc<TaskEvent>),
    Removed(u64),
    Agent(Arc<AgentSpec>),
    Worker(WorkerMark),
    /// A task's push configs, encoded (all of them).
    Push(u64, Vec<u8>),
    /// A conversation as it is now (none: deleted), under its key; encoded by the writer.
    Conversation(String, Option<Box<conversations::Record>>),
    /// An actor's state as it is now (none: deleted), under its key.
    Actor(String, Option<Box<crate::actor_state::Record>>),
    /// Messages appended to a topic.
    TopicMessages(String, Vec<Arc<crate::topics::Message>>),
    /// A topic's first offset kept.
    TopicTrim(String, u64),
    /// A consumer group of a topic and the offset it resumes at.
    TopicGroup(String, String, u64),
    /// Store what came before, close the store and say so.
    Close(mpsc::SyncSender<()>),
    /// Say when what came before is stored.
    Stored(tokio::sync::oneshot::Sender<()>),
}

struct Shared {
    /// Held while a group of records that must be stored together is appended (a
    /// worker's events and its mark), and by the writer while it takes records: a
    /// transaction never holds part of a group.
    group: Mutex<()>,
    backlog: AtomicUsize,
    /// Why the last write failed, until one succeeds.
    failure: Mutex<Option<String>>,
}

/// The sending side of the journal; cheap to clone (one per task).
#[derive(Clone)]
pub struct Journal {
    tx: UnboundedSender<Record>,
    shared: Arc<Shared>,
    /// Seals secrets before the store sees them (none: the operator gave no key to a shared
    /// store, which then takes no secrets: see `Cluster::register_agent`).
    sealer: Option<super::Sealer>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("backlog", &self.shared.backlog.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Where the writer runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    /// A task on the head's runtime: only quick writes are made in place.
    Runtime,
    /// A thread of its own: every write is made in place.
    Thread,
}

type OnCommit = Box<dyn Fn(Commit) + Send>;

impl Journal {
    /// Starts the writer on `store` (on the current runtime if there is one); `on_commit`
    /// is called after each commit. The writer ends once every `Journal` is dropped and all
    /// is written.
    pub fn start(
        store: Box<dyn Store>,
        sealer: Option<super::Sealer>,
        on_commit: OnCommit,
    ) -> std::io::Result<Self> {
        let (tx, rx) = unbounded_channel();
        let shared = Arc::new(Shared {
            group: Mutex::new(()),
            backlog: AtomicUsize::new(0),
            failure: Mutex::new(None),
        });
        let writer = shared.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(write(rx, store, on_commit, writer, Place::Runtime));
        } else {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
            std::thread::Builder::new().name("fleet-store".into()).spawn(move || {
                runtime.block_on(write(rx, store, on_commit, writer, Place::Thread));
            })?;
        }
        Ok(Self { tx, shared, sealer })
    }

    fn append(&self, record: Record) {
        self.shared.backlog.fetch_add(1, Ordering::Relaxed);
        // Gone only if the writer stopped, which `check` reports.
        let _ = self.tx.send(record);
    }

    /// Holds the writer off while the records appended under the guard are appended, so
    /// that they are stored in one transaction.
    pub fn group(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.shared.group.lock()
    }

    /// A new task's submission record (before its first event).
    pub fn task(&self, record: TaskRecord) {
        self.append(Record::Task(Box::new(record)));
    }

    /// An event of the task numbered `number`.
    pub fn event(&self, number: u64, event: Arc<TaskEvent>) {
        self.append(Record::Event(number, event));
    }

    /// A task retention let go.
    pub fn removed(&self, number: u64) {
        self.append(Record::Removed(number));
    }

    /// The events of a worker's incarnation applied up to a number.
    pub fn worker(&self, mark: WorkerMark) {
        self.append(Record::Worker(mark));
    }

    /// The push configs of the task numbered `number` now (all of them), their secrets
    /// sealed.
    pub fn push(&self, number: u64, mut configs: fleet_proto::pb::StoredPushConfigs) {
        if let Some(sealer) = &self.sealer {
            sealer.seal_push(&mut configs);
        }
        self.append(Record::Push(number, prost::Message::encode_to_vec(&configs)));
    }

    /// The changes to conversations (each as it is now, or deleted).
    pub fn conversations(&self, changes: Vec<conversations::Change>) {
        for (key, record) in changes {
            self.append(Record::Conversation(key, record.map(Box::new)));
        }
    }

    /// The changes to actors' states (each as it is now, or deleted).
    pub fn actors(&self, changes: Vec<crate::actor_state::Change>) {
        for (key, record) in changes {
            self.append(Record::Actor(key, record.map(Box::new)));
        }
    }

    /// Messages appended to `topic`.
    pub fn topic_messages(&self, topic: &str, messages: Vec<Arc<crate::topics::Message>>) {
        self.append(Record::TopicMessages(topic.to_owned(), messages));
    }

    /// Retention let the messages of `topic` before `first` go.
    pub fn topic_trim(&self, topic: &str, first: u64) {
        self.append(Record::TopicTrim(topic.to_owned(), first));
    }

    /// Consumer group `group` of `topic` resumes at `committed`.
    pub fn topic_group(&self, topic: &str, group: &str, committed: u64) {
        self.append(Record::TopicGroup(topic.to_owned(), group.to_owned(), committed));
    }

    /// An agent registered or changed, its secrets sealed.
    pub fn agent(&self, spec: Arc<AgentSpec>) {
        let spec = match &self.sealer {
            Some(sealer) if spec.has_secrets() => Arc::new(sealer.seal_spec(&spec)),
            _ => spec,
        };
        self.append(Record::Agent(spec));
    }

    /// Whether secrets are sealed before they are stored.
    pub fn seals(&self) -> bool {
        self.sealer.is_some()
    }

    /// Resolves once everything appended before it is stored; an error when the writer
    /// stops first (the store refuses this head, or it closed).
    pub fn stored(&self) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.append(Record::Stored(tx));
        rx
    }

    /// Stores what was appended so far and closes the store (a later append is lost);
    /// waits up to `timeout` for it. Blocking: call it off the runtime, where the writer
    /// may be a task.
    pub fn close(&self, timeout: Duration) -> bool {
        let (done, closed) = mpsc::sync_channel(1);
        self.append(Record::Close(done));
        // Disconnected: the writer has ended already (its store refused this head).
        !matches!(closed.recv_timeout(timeout), Err(mpsc::RecvTimeoutError::Timeout))
    }

    /// Whether new work may be accepted: not while writes fail or the writer is far behind.
    pub fn check(&self) -> Result<(), String> {
        if let Some(failure) = self.shared.failure.lock().clone() {
            return Err(failure);
        }
        if self.tx.is_closed() {
            return Err("the store's writer has stopped".into());
        }
        let backlog = self.shared.backlog.load(Ordering::Relaxed);
        if backlog > MAX_BACKLOG {
            return Err(format!("the store is {backlog} records behind"));
        }
        Ok(())
    }
}

/// The writer: takes what has gathered, stores it in one batch (again and again while the
/// store fails), reports the commit; ends when every sender is gone or on a close.
async fn write(
    mut rx: UnboundedReceiver<Record>,
    mut store: Box<dyn Store>,
    on_commit: OnCommit,
    shared: Arc<Shared>,
    place: Place,
) {
    let mut records = Vec::new();
    while let Some(first) = rx.recv().await {
        records.push(first);
        // Everything waiting, and the rest of a group `first` may have begun.
        {
            let _group = shared.group.lock();
            while let Ok(record) = rx.try_recv() {
                records.push(record);
            }
        }
        let mut closed = None;
        if let Some(at) = records.iter().position(|r| matches!(r, Record::Close(_))) {
            // What came after the close is not for this store.
            if let Record::Close(done) = records.swap_remove(at) {
                closed = Some(done);
            }
            records.truncate(at);
        }
        let (mut batch, commit) = build(&records);
        // A close alone has nothing to store.
        while !batch.is_empty() {
            let written;
            (store, batch, written) = match write_once(store, batch, place).await {
                Ok(done) => done,
                Err(e) => {
                    error!(error = %e, "the store's writer panicked; new work is refused");
                    *shared.failure.lock() = Some(format!("the store's writer stopped: {e}"));
                    return;
                }
            };
            let Err(e) = written else { break };
            if e.fenced {
                // Another head leads now: nothing of this one may be stored, and it is
                // stopping (see `crate::leader`). Refuse everything.
                error!(error = %e, "the store refuses this head's writes");
                *shared.failure.lock() = Some(e.to_string());
                return;
            }
            {
                let mut failure = shared.failure.lock();
                if failure.is_none() {
                    error!(error = %e, "the store failed; new work is refused until it recovers");
                }
                *failure = Some(e.to_string());
            }
            tokio::time::sleep(RETRY).await;
        }
        if shared.failure.lock().take().is_some() {
            info!(store = store.describe(), "the store recovered");
        }
        shared.backlog.fetch_sub(records.len(), Ordering::Relaxed);
        for record in records.drain(..) {
            if let Record::Stored(done) = record {
                let _ = done.send(());
            }
        }
        if !commit.tasks.is_empty() || !commit.workers.is_empty() {
            on_commit(commit);
        }
        if let Some(done) = closed {
            drop(store);
            let _ = done.send(());
            return;
        }
    }
}

/// Writes `batch` in place when the writer may (its own thread, or a quick write), else
/// on the blocking pool; gives the store and the batch back for another try.
async fn write_once(
    mut store: Box<dyn Store>,
    batch: Batch,
    place: Place,
) -> Result<(Box<dyn Store>, Batch, Result<(), StoreError>), tokio::task::JoinError> {
    if place == Place::Thread || store.quick(&batch) {
        let written = store.write(&batch);
        return Ok((store, batch, written));
    }
    tokio::task::spawn_blocking(move || {
        let written = store.write(&batch);
        (store, batch, written)
    })
    .await
}

/// Encodes records into one batch (a task's consecutive events into one value) and notes
/// the last event of each task it stores.
fn build(records: &[Record]) -> (Batch, Commit) {
    let mut batch = Batch::default();
    // Task number -> its events in this batch, in the order tasks first appear.
    let mut runs: HashMap<u64, Vec<Arc<TaskEvent>>> = HashMap::new();
    let mut order = Vec::new();
    // The latest mark of each worker.
    let mut workers: HashMap<String, (u64, u64)> = HashMap::new();
    // Each topic's latest trim, and each group's latest offset.
    let mut trims: HashMap<String, u64> = HashMap::new();
    let mut groups: HashMap<(String, String), u64> = HashMap::new();
    for record in records {
        match record {
            Record::Task(task) => {
                // Written again (a cancel asked for): one row per key and write.
                batch.tasks.retain(|(n, _)| *n != task.number);
                batch.tasks.push((task.number, task.encode()));
            }
            Record::Event(number, event) => {
                let run = runs.entry(*number).or_default();
                if run.is_empty() {
                    order.push(*number);
                }
                run.push(event.clone());
            }
            Record::Push(number, configs) => {
                batch.push.retain(|(n, _)| n != number);
                batch.push.push((*number, configs.clone()));
            }
            Record::Removed(number) => {
                batch.tasks.retain(|(n, _)| n != number);
                batch.push.retain(|(n, _)| n != number);
                runs.remove(number);
                batch.removed.push(*number);
            }
            Record::Agent(spec) => {
                // The last change of an agent wins (one row per key and write).
                batch.agents.retain(|(name, _)| *name != spec.name);
                batch.agents.push((spec.name.clone(), encode_agent(spec)));
            }
            Record::Worker((id, mark)) => {
                workers.insert(id.clone(), *mark);
            }
            Record::Conversation(key, record) => {
                // The last change of a conversation wins (one row per key and write).
                batch.conversations.retain(|(k, _)| k != key);
                batch.conversations.push((key.clone(), record.as_deref().map(encode_conversation)));
            }
            Record::Actor(key, record) => {
                batch.actors.retain(|(k, _)| k != key);
                batch.actors.push((key.clone(), record.as_deref().map(encode_actor)));
            }
            Record::TopicMessages(topic, messages) => {
                for m in messages {
                    batch.topic_messages.push(((topic.clone(), m.offset), encode_topic_message(m)));
                }
            }
            Record::TopicTrim(topic, first) => {
                trims.insert(topic.clone(), *first);
            }
            Record::TopicGroup(topic, group, committed) => {
                groups.insert((topic.clone(), group.clone()), *committed);
            }
            // Taken out before, and answered after the write (see the writer loop).
            Record::Close(_) | Record::Stored(_) => {}
        }
    }
    batch.workers = workers.into_iter().collect();
    // A message let go in the batch that appended it is not written at all.
    batch
        .topic_messages
        .retain(|((topic, offset), _)| trims.get(topic).is_none_or(|f| offset >= f));
    batch.topic_trims = trims.into_iter().collect();
    batch.topic_groups = groups.into_iter().collect();
    let mut commit =
        Commit { tasks: Vec::with_capacity(order.len()), workers: batch.workers.clone() };
    for number in order {
        let Some(run) = runs.remove(&number) else { continue };
        let (Some(first), Some(last)) = (run.first(), run.last()) else { continue };
        batch.events.push(((number, first.seq), encode_events(&run)));
        commit.tasks.push((last.task_id.clone(), last.seq));
    }
    (batch, commit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Snapshot, StoreError, TaskRecord};

    /// A task written twice in one batch (a cancel asked for just after its submission) is
    /// one row, the later one: PostgreSQL refuses a statement that updates a row twice.
    #[test]
    fn a_task_written_twice_in_a_batch_is_one_row_the_later() {
        let record = |cancel_requested| TaskRecord {
            number: 7,
            id: TaskId::new("t".to_owned()),
            agent: "a".into(),
            input: "x".into(),
            context_id: String::new(),
            tenant: "default".into(),
            options: None,
            parent: None,
            depth: 0,
            submitted_at_us: 1,
            cancel_requested,
        };
        let records = [Record::Task(Box::new(record(false))), Record::Task(Box::new(record(true)))];
        let (batch, _) = build(&records);
        assert_eq!(batch.tasks, [(7, record(true).encode())]);
    }

    /// A store whose writes wait until the test opens it, counting what it stored.
    struct Held {
        open: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
        written: Arc<AtomicUsize>,
    }

    impl Store for Held {
        fn load(&mut self) -> Result<Snapshot, StoreError> {
            Ok(Snapshot::default())
        }

        fn write(&mut self, batch: &Batch) -> Result<(), StoreError> {
            let (open, opened) = &*self.open;
            let mut is_open = open.lock().map_err(|e| StoreError {
                what: "test".into(),
                message: e.to_string(),
                fenced: false,
            })?;
            while !*is_open {
                is_open = opened.wait(is_open).map_err(|e| StoreError {
                    what: "test".into(),
                    message: e.to_string(),
                    fenced: false,
                })?;
            }
            self.written.fetch_add(batch.removed.len(), Ordering::Relaxed);
            Ok(())
        }

        fn describe(&self) -> String {
            "held".into()
        }
    }

    /// A store that notes the thread of each write.
    struct Noted {
        quick: bool,
        threads: Arc<Mutex<Vec<std::thread::ThreadId>>>,
    }

    impl Store for Noted {
        fn load(&mut self) -> Result<Snapshot, StoreError> {
            Ok(Snapshot::default())
        }

        fn write(&mut self, _: &Batch) -> Result<(), StoreError> {
            self.threads.lock().push(std::thread::current().id());
            Ok(())
        }

        fn quick(&self, _: &Batch) -> bool {
            self.quick
        }

        fn describe(&self) -> String {
            "noted".into()
        }
    }

    /// On a runtime the writer is a task: a quick write is made on the runtime's thread
    /// (no hand-over to another thread and back), a slow one on the blocking pool; both
    /// commit, and the journal closes when asked from off the runtime.
    #[test]
    fn on_a_runtime_quick_writes_are_made_in_place_and_slow_ones_elsewhere() {
        for quick in [true, false] {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let threads = Arc::new(Mutex::new(Vec::new()));
            let store = Noted { quick, threads: threads.clone() };
            let on_runtime = runtime.block_on(async {
                let (tx, mut commits) = tokio::sync::mpsc::unbounded_channel();
                let journal = Journal::start(
                    Box::new(store),
                    None,
                    Box::new(move |commit| {
                        let _ = tx.send(commit);
                    }),
                )
                .expect("writer");
                let id = TaskId::new("t1");
                journal.event(
                    1,
                    Arc::new(TaskEvent {
                        task_id: id.clone(),
                        seq: 1,
                        attempt: 1,
                        timestamp_us: 0,
                        kind: fleet_proto::EventKind::Working,
                    }),
                );
                let commit = commits.recv().await.expect("a commit");
                assert_eq!(commit.tasks, [(id, 1)]);
                let closing = journal.clone();
                let closed =
                    tokio::task::spawn_blocking(move || closing.close(Duration::from_secs(10)));
                assert!(closed.await.expect("close"), "the journal did not close");
                std::thread::current().id()
            });
            let threads = threads.lock();
            assert_eq!(threads.len(), 1, "one write");
            assert_eq!(threads[0] == on_runtime, quick, "quick: {quick}");
        }
    }

    /// `stored` resolves only once what was appended before it is written: while the
    /// store's write waits, so does the barrier (RegisterAgent, push configs and CancelTask
    /// answer after it).
    #[test]
    fn a_barrier_resolves_once_what_came_before_is_stored() {
        let open = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let written = Arc::new(AtomicUsize::new(0));
        let store = Held { open: open.clone(), written: written.clone() };
        let journal =
            Journal::start(Box::new(store), None, Box::new(|_| {})).expect("writer thread");
        journal.removed(7);
        let mut barrier = journal.stored();
        std::thread::sleep(Duration::from_millis(50));
        assert!(barrier.try_recv().is_err(), "resolved before the write");
        assert_eq!(written.load(Ordering::Relaxed), 0);
        {
            let (is_open, opened) = &*open;
            *is_open.lock().expect("lock") = true;
            opened.notify_all();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while barrier.try_recv().is_err() {
            assert!(std::time::Instant::now() < deadline, "the barrier never resolved");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(written.load(Ordering::Relaxed), 1, "resolved before its record was written");
    }

    /// A store that falls more than `MAX_BACKLOG` records behind refuses new work (the
    /// check fails, saying how far behind) and takes it again once it has caught up.
    #[test]
    fn a_store_far_behind_refuses_new_work_until_it_catches_up() {
        let open = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let written = Arc::new(AtomicUsize::new(0));
        let store = Held { open: open.clone(), written: written.clone() };
        let journal =
            Journal::start(Box::new(store), None, Box::new(|_| {})).expect("writer thread");
        for number in 0..MAX_BACKLOG as u64 {
            journal.removed(number);
        }
        // The writer holds one record (its write waits); the rest wait behind it.
        assert_eq!(journal.check(), Ok(()), "refused at the bound, not past it");
        journal.removed(u64::MAX);
        journal.removed(u64::MAX - 1);
        let refused = journal.check().expect_err("a store far behind took new work");
        assert!(refused.contains("records behind"), "{refused}");
        {
            let (is_open, opened) = &*open;
            *is_open.lock().expect("gate") = true;
            opened.notify_all();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while journal.check().is_err() {
            assert!(std::time::Instant::now() < deadline, "the store never caught up");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(journal.close(Duration::from_secs(30)), "the journal did not close");
        assert_eq!(written.load(Ordering::Relaxed), MAX_BACKLOG + 2, "records were lost");
    }
}

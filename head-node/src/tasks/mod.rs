//! The task table: every task's state and its ordered event log, the subscribers following
//! it, and the bounded retention of finished tasks. With a store, each new task and event
//! goes to the [`Journal`], and events reach subscribers once stored
//! ([`TaskEntry::stored_up_to`]); without one, at once.

mod index;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fleet_proto::{
    Artifact, EventKind, IllegalTransition, Resources, TaskEvent, TaskId, TaskState, Usage,
};
use tokio::sync::mpsc;

use crate::search::contains;
use crate::store::{Journal, RestoredTask, TaskRecord};
use index::{Filed, TaskIndex};

/// What a subscriber stream receives.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// A task submitted on a multiplexed stream was accepted under this id; sent before any
    /// of its events. `existing`: it was submitted before under the same idempotency key,
    /// and none of its events follow on this stream.
    Accepted {
        client_ref: u64,
        task_id: TaskId,
        existing: bool,
    },
    Event(Arc<TaskEvent>),
    /// A task submitted on a multiplexed stream was refused.
    Rejected {
        client_ref: u64,
        error: Arc<crate::Error>,
    },
    /// A task a multiplexed stream asked to follow cannot be followed.
    WatchRefused {
        task_id: String,
        error: Arc<crate::Error>,
    },
}

/// One subscriber stream, possibly following many tasks. Bounded: a subscriber that falls
/// `capacity` deliveries behind is cut off (it gets nothing more and its stream ends with an
/// error telling it to resume from its last seq), so one slow reader never stalls the head
/// and never sees a gap.
#[derive(Debug, Clone)]
pub struct Subscriber {
    tx: mpsc::Sender<Delivery>,
    cut: Arc<AtomicBool>,
}

/// The receiving end of a [`Subscriber`].
#[derive(Debug)]
pub struct Subscription {
    pub rx: mpsc::Receiver<Delivery>,
    cut: Arc<AtomicBool>,
}

impl Subscription {
    /// Whether the head cut this subscription off for falling behind.
    pub fn was_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }
}

/// A new subscriber and its subscription.
pub fn subscriber(capacity: usize) -> (Subscriber, Subscription) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let cut = Arc::new(AtomicBool::new(false));
    (Subscriber { tx, cut: cut.clone() }, Subscription { rx, cut })
}

impl Subscriber {
    /// Delivers without waiting; false once the subscriber is gone or cut off.
    pub fn deliver(&self, delivery: Delivery) -> bool {
        if self.cut.load(Ordering::Acquire) {
            return false;
        }
        match self.tx.try_send(delivery) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.cut.store(true, Ordering::Release);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Waits until the buffer has room for `n` more deliveries, so that a submitter that
    /// does not read its stream is slowed down instead of cut off. False if it is gone.
    pub async fn wait_for_room(&self, n: usize) -> bool {
        let n = n.min(self.tx.max_capacity());
        self.tx.reserve_many(n).await.is_ok() && !self.cut.load(Ordering::Acquire)
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed() || self.cut.load(Ordering::Acquire)
    }
}

/// One task.
#[derive(Debug)]
pub struct TaskEntry {
    pub id: TaskId,
    /// Submission order, for listing and paging.
    pub number: u64,
    pub agent: String,
    pub input: Arc<str>,
    pub context_id: String,
    /// The tenant whose task it is (its submitter's; a sub-task's caller's).
    pub tenant: Arc<str>,
    pub state: TaskState,
    /// The state the table's index files the task under (it catches up with `state` on
    /// the table's next call: see `TaskTable::settle`).
    indexed: TaskState,
    pub attempt: u32,
    pub worker: Option<String>,
    /// What the running attempt holds on its worker.
    pub reserved: Resources,
    pub events: Vec<Arc<TaskEvent>>,
    pub error: String,
    pub usage: Usage,
    pub submitted_at_us: u64,
    /// When the first event from a worker arrived (0: none yet, or restored from a store).
    pub first_event_us: u64,
    pub finished_at_us: u64,
    pub cancel_requested: bool,
    /// Events up to this seq are stored and have gone to the subscribers.
    pub durable: u64,
    subscribers: Vec<Follower>,
    /// Where the task's events are stored (none: they are not).
    journal: Option<Journal>,
    /// Per-task settings (OpenAI requests), handed to the worker with the task.
    pub options: Option<Arc<fleet_proto::TaskOptions>>,
    /// The task that called this one as a tool, and the call's id.
    pub parent: Option<(TaskId, String)>,
    /// Tasks this one called as tools.
    pub children: Vec<TaskId>,
    /// Tool calls between this task and the one a client submitted.
    pub depth: u32,
    /// The attempt of the caller (`parent`) that made the call; 0 when not known (a task
    /// restored from a store). The answer and the slot go back only to that attempt.
    pub caller_attempt: u32,
    /// About how much memory the task holds (input, output, events), for retention.
    pub bytes: usize,
    /// What its submission holds (input and options) while it is unfinished: counted in
    /// the table's `unfinished_bytes` (the queue's byte budget).
    held: usize,
    /// The task's `invoke_agent` span on the head, from submission to its end (empty while
    /// the head does not trace, and for tasks restored from a store).
    pub span: fleet_telemetry::Span,
    /// The `traceparent` the task was submitted under (a client's request, or the calling
    /// task's span): handed on to the worker when the head itself does not trace.
    pub traceparent: String,
}

/// A subscriber following one task from an event on.
#[derive(Debug)]
struct Follower {
    sub: Subscriber,
    /// The first seq it wants.
    from: u64,
    /// Told `Accepted { client_ref }` before the first event it gets (a multiplexed
    /// submitter: the task is accepted once it is stored).
    accepted: Option<u64>,
}

impl Follower {
    fn deliver(&mut self, event: &Arc<TaskEvent>) -> bool {
        if event.seq < self.from {
            return true;
        }
        if let Some(client_ref) = self.accepted.take() {
            let task_id = event.task_id.clone();
            if !self.sub.deliver(Delivery::Accepted { client_ref, task_id, existing: false }) {
                return false;
            }
        }
        self.sub.deliver(Delivery::Event(event.clone()))
    }
}

/// What a task's submission holds: its input and options (the queue's byte budget).
pub fn submission_bytes(task: &TaskEntry) -> usize {
    task.input.len() + task.options.as_deref().map_or(0, options_bytes)
}

/// About how much memory a task's options hold: its history, texts to embed, client tools
/// and files, which can be far larger than its input.
pub fn options_bytes(o: &fleet_proto::TaskOptions) -> usize {
    std::mem::size_of::<fleet_proto::TaskOptions>()
        + o.history
            .iter()
            .map(|t| {
                let calls =
                    t.tool_calls.iter().map(|c| c.id.len() + c.name.len() + c.arguments.len());
                64 + t.content.len() + t.tool_call_id.len() + calls.sum::<usize>()
            })
            .sum::<usize>()
        + o.embed.iter().map(String::len).sum::<usize>()
        + o.tools.iter().map(|t| t.to_string().len()).sum::<usize>()
        + o.files.iter().map(fleet_proto::FilePart::size).sum::<usize>()
}

/// About how much memory an event holds: its fixed part plus its payload.
fn event_bytes(kind: &EventKind) -> usize {
    std::mem::size_of::<TaskEvent>() + std::mem::size_of::<Arc<TaskEvent>>() + kind.payload_bytes()
}

impl TaskEntry {
    /// The most of a task's input a search looks at: a search passes over every retained
    /// task, and inputs may be megabytes.
    pub const SEARCHED_INPUT_BYTES: usize = 4096;

    /// Whether one search word matches this task: `#N` (or `N`) its number, else a part of
    /// its id, agent, worker, context, caller's id or the start of its input (ASCII case
    /// ignored).
    pub fn matches(&self, word: &str) -> bool {
        let number = word.strip_prefix('#').unwrap_or(word);
        if !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) {
            if number.parse::<u64>().is_ok_and(|n| n == self.number) {
                return true;
            }
            if word.starts_with('#') {
                return false;
            }
        }
        let input = &self.input.as_bytes()[..self.input.len().min(Self::SEARCHED_INPUT_BYTES)];
        let parent = self.parent.as_ref().map_or("", |(id, _)| id.as_str());
        let fields = [self.id.as_str(), &self.agent, &self.context_id, parent];
        fields.iter().any(|f| contains(f, word))
            || self.worker.as_deref().is_some_and(|w| contains(w, word))
            || contains(input, word)
    }

    /// Appends an event: assigns its seq, updates the state, and tells the subscribers
    /// (once it is stored, when there is a store). An event the task's state cannot take
    /// (the state machine's table, [`TaskState::after`]) is refused and logs nothing.
    pub fn push(
        &mut self,
        kind: EventKind,
        timestamp_us: u64,
    ) -> Result<Arc<TaskEvent>, IllegalTransition> {
        match self.events.is_empty() {
            true => TaskState::first(&kind)?,
            false => self.state.after(&kind)?,
        };
        let event = Arc::new(TaskEvent {
            task_id: self.id.clone(),
            seq: self.events.len() as u64 + 1,
            attempt: self.attempt,
            timestamp_us,
            kind,
        });
        self.apply(event.clone());
        match &self.journal {
            Some(journal) => {
                if event.seq == 1 {
                    // The submission record goes before the first event.
                    journal.task(self.record());
                }
                journal.event(self.number, event.clone());
            }
            None => self.stored_up_to(event.seq),
        }
        Ok(event)
    }

    /// Appends an event of the head's own making ([`push`](Self::push)), which the caller
    /// made sure the task's state takes: a refusal is a bug of the head, logged as an error,
    /// and the event is dropped rather than logged out of order.
    pub fn push_own(&mut self, kind: EventKind, timestamp_us: u64) -> Option<Arc<TaskEvent>> {
        match self.push(kind, timestamp_us) {
            Ok(event) => Some(event),
            Err(refused) => {
                tracing::error!(task_id = %self.id, %refused, "the head made an event its task cannot take");
                None
            }
        }
    }

    /// Takes an event into the log and the task's state (new or replayed from the store).
    fn apply(&mut self, event: Arc<TaskEvent>) {
        let kind = &event.kind;
        if let Some(state) = kind.state_after() {
            self.state = state;
        }
        self.bytes += event_bytes(kind);
        match kind {
            EventKind::Completed { usage } => self.usage = *usage,
            EventKind::Failed { error, .. } => self.error.clone_from(error),
            EventKind::Scheduled { worker_id } => self.worker = Some(worker_id.clone()),
            _ => {}
        }
        if kind.is_terminal() {
            self.finished_at_us = event.timestamp_us;
        }
        self.attempt = event.attempt;
        self.events.push(event);
    }

    /// The events up to `seq` are stored: they go to the subscribers.
    pub fn stored_up_to(&mut self, seq: u64) {
        let seq = seq.min(self.events.len() as u64);
        while self.durable < seq {
            let event = &self.events[self.durable as usize];
            self.durable += 1;
            self.subscribers.retain_mut(|f| f.deliver(event));
        }
        if self.state.is_terminal() && self.durable == self.events.len() as u64 {
            self.subscribers.clear();
        }
    }

    /// Adds a subscriber for the events from `from` on that are not stored yet (the
    /// stored ones are the caller's to send); none when the task has ended and all its
    /// events are stored.
    pub fn follow(&mut self, sub: Subscriber, from: u64) {
        if !(self.state.is_terminal() && self.durable == self.events.len() as u64) {
            // Followers that went away are dropped here too, not only at the next event: a
            // quiet task followed and left again and again holds only the live ones.
            self.subscribers.retain(|f| !f.sub.is_closed());
            self.subscribers.push(Follower { sub, from, accepted: None });
        }
    }

    /// How many follow the task (for tests: closed followers must not pile up).
    #[cfg(test)]
    pub fn followers(&self) -> usize {
        self.subscribers.len()
    }

    /// Adds the subscriber of the client submitting this task, before its first event;
    /// told `Accepted { client_ref }` first when a ref is given.
    pub fn follow_submitted(&mut self, sub: Subscriber, client_ref: Option<u64>) {
        // Most tasks only ever have their submitter: room for one, not the four a first
        // push makes (120 bytes a task, with a million queued).
        self.subscribers.reserve_exact(1);
        self.subscribers.push(Follower { sub, from: 1, accepted: client_ref });
    }

    /// The text of the current attempt: its deltas since the last retry, joined. The text
    /// lives only in the events (a copy beside them doubled what a task holds).
    pub fn output(&self) -> String {
        let mut text = String::new();
        for e in self.current_attempt() {
            if let EventKind::TextDelta { text: delta, .. } = &e.kind {
                text.push_str(delta);
            }
        }
        text
    }

    /// The reasoning of the current attempt (a thinking model's), joined.
    pub fn reasoning(&self) -> String {
        let mut text = String::new();
        for e in self.current_attempt() {
            if let EventKind::ReasoningDelta { text: delta } = &e.kind {
                text.push_str(delta);
            }
        }
        text
    }

    /// The files and data the current attempt returned beside its text, in order.
    pub fn artifacts(&self) -> Vec<Arc<Artifact>> {
        let artifacts = self.current_attempt().iter().filter_map(|e| match &e.kind {
            EventKind::Artifact(artifact) => Some(artifact.clone()),
            _ => None,
        });
        artifacts.collect()
    }

    /// The events since the last retry.
    pub fn current_attempt(&self) -> &[Arc<TaskEvent>] {
        let retry = self.events.iter().rposition(|e| matches!(e.kind, EventKind::Retrying { .. }));
        &self.events[retry.map_or(0, |i| i + 1)..]
    }

    /// The steps a retry goes on from: those of the earlier attempt that got furthest (an
    /// attempt replays the steps it was given before adding its own, so a later attempt
    /// lost before it replayed them all recorded fewer).
    pub fn recorded_steps(&self) -> Vec<fleet_proto::Turn> {
        let mut best = Vec::new();
        for attempt in self.events.split(|e| matches!(e.kind, EventKind::Retrying { .. })) {
            let steps = crate::conversations::steps(attempt);
            if steps.len() >= best.len() {
                best = steps;
            }
        }
        best
    }

    /// What the task was submitted with, for the store.
    fn record(&self) -> TaskRecord {
        TaskRecord {
            number: self.number,
            id: self.id.clone(),
            agent: self.agent.clone(),
            input: self.input.clone(),
            context_id: self.context_id.clone(),
            tenant: self.tenant.clone(),
            options: self.options.clone(),
            parent: self.parent.clone(),
            depth: self.depth,
            submitted_at_us: self.submitted_at_us,
            cancel_requested: self.cancel_requested,
        }
    }

    /// Asks for the task's end (see `cluster::lifecycle::cancel_in`), on record: a head
    /// restarted on the store before its worker said it ended asks that worker again, and
    /// cancels rather than retries the task if the worker is lost.
    pub fn request_cancel(&mut self) {
        self.cancel_requested = true;
        if let Some(journal) = &self.journal
            && !self.events.is_empty()
        {
            journal.task(self.record());
        }
    }

    /// The stored events from `from_seq` on (seq starts at 1).
    pub fn stored_events_from(&self, from_seq: u64) -> &[Arc<TaskEvent>] {
        let start = (from_seq.max(1) - 1) as usize;
        self.events.get(start..self.durable as usize).unwrap_or(&[])
    }
}

/// Totals since the head started.
#[derive(Debug, Default, Clone, Copy)]
pub struct TaskCounters {
    pub completed: u64,
    pub failed: u64,
    pub canceled: u64,
}

/// Called with the id of each task retention evicts, under the cluster's lock: keep it short.
pub type EvictionHook = Box<dyn Fn(&str) + Send + Sync>;

/// All known tasks: the unfinished ones and the most recent finished ones.
pub struct TaskTable {
    /// Hashed with foldhash (seeded per process): the default SipHash was 7% of the head's
    /// time at 30,000 tasks/s.
    /// Boxed: the table's slots (twice the tasks, as it grows by doubling) hold a pointer
    /// each rather than a whole task: with a million tasks queued that was 1.5 GB.
    tasks: HashMap<TaskId, Box<TaskEntry>, foldhash::fast::RandomState>,
    by_number: BTreeMap<u64, TaskId>,
    /// The tasks by agent, state and context, for listing.
    index: TaskIndex,
    /// The task last handed out mutably, whose state the index may not have seen yet.
    pending: Option<TaskId>,
    finished: VecDeque<TaskId>,
    next_number: u64,
    max_retained: usize,
    /// Bytes the finished tasks in `finished` hold, and the most they may.
    retained_bytes: usize,
    max_retained_bytes: usize,
    on_evicted: Vec<EvictionHook>,
    pub counters: TaskCounters,
    journal: Option<Journal>,
    /// Bumped on every change that may show (a new task, each mutable access to one: every
    /// event comes through one), so that a live view can tell cheaply whether to look again.
    changes: u64,
    /// What the submissions of unfinished tasks hold (see [`TaskTable::hold`]).
    unfinished_bytes: usize,
}

impl std::fmt::Debug for TaskTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskTable")
            .field("tasks", &self.tasks.len())
            .field("max_retained", &self.max_retained)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl TaskTable {
    /// A table keeping at most `max_retained` finished tasks holding at most
    /// `max_retained_bytes` (the newest finished task stays whatever its size, so that its
    /// submitter can still read it).
    pub fn new(max_retained: usize, max_retained_bytes: usize) -> Self {
        Self {
            tasks: HashMap::default(),
            by_number: BTreeMap::new(),
            index: TaskIndex::default(),
            pending: None,
            finished: VecDeque::new(),
            next_number: 0,
            max_retained,
            retained_bytes: 0,
            max_retained_bytes,
            on_evicted: Vec::new(),
            counters: TaskCounters::default(),
            journal: None,
            changes: 0,
            unfinished_bytes: 0,
        }
    }

    /// Stores new tasks and their events through `journal` from now on.
    pub fn store_in(&mut self, journal: Journal) {
        self.journal = Some(journal);
    }

    /// The journal new work is stored through, if any.
    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    /// Takes back a task from the store with its events (all of them stored). A finished
    /// one joins the retained tasks (not the counters: they count since the head started).
    pub fn restore(&mut self, restored: RestoredTask) {
        let RestoredTask { record, events } = restored;
        self.next_number = self.next_number.max(record.number);
        let id = record.id.clone();
        let entry = self.new_entry(record);
        for event in events {
            entry.apply(Arc::new(event));
        }
        entry.durable = entry.events.len() as u64;
        if let Some(EventKind::Retrying { failed_attempt, .. }) =
            entry.events.last().map(|e| &e.kind)
        {
            // Retried and not placed again yet.
            entry.attempt = failed_attempt + 1;
            entry.worker = None;
        }
        if entry.state.is_terminal() {
            let bytes = entry.bytes;
            self.finished.push_back(id);
            self.retained_bytes += bytes;
        } else {
            let held = submission_bytes(entry);
            self.hold(id.as_str(), held);
        }
    }

    /// Calls `hook` with each task evicted from now on (state kept beside the table, such
    /// as push configs, goes with its task).
    pub fn on_evicted(&mut self, hook: EvictionHook) {
        self.on_evicted.push(hook);
    }

    /// Creates a queued task.
    pub fn insert(
        &mut self,
        id: TaskId,
        agent: String,
        input: Arc<str>,
        context_id: String,
        tenant: Arc<str>,
    ) -> &mut TaskEntry {
        self.next_number += 1;
        self.changes = self.changes.wrapping_add(1);
        let record = TaskRecord {
            number: self.next_number,
            id,
            agent,
            input,
            context_id,
            tenant,
            options: None,
            parent: None,
            depth: 0,
            submitted_at_us: fleet_proto::now_us(),
            cancel_requested: false,
        };
        self.new_entry(record)
    }

    fn new_entry(&mut self, record: TaskRecord) -> &mut TaskEntry {
        let TaskRecord {
            number,
            id,
            agent,
            input,
            context_id,
            tenant,
            options,
            parent,
            depth,
            submitted_at_us,
            cancel_requested,
        } = record;
        self.settle();
        self.by_number.insert(number, id.clone());
        let state = TaskState::Queued;
        self.index.add(Filed {
            number,
            agent: &agent,
            context: &context_id,
            tenant: &tenant,
            state,
        });
        self.pending = Some(id.clone());
        let bytes = std::mem::size_of::<TaskEntry>()
            + input.len()
            + agent.len()
            + context_id.len()
            + options.as_deref().map_or(0, options_bytes);
        let entry = TaskEntry {
            bytes,
            id: id.clone(),
            number,
            agent,
            input,
            context_id,
            tenant,
            state,
            indexed: state,
            attempt: 1,
            worker: None,
            reserved: Resources::default(),
            events: Vec::new(),
            error: String::new(),
            usage: Usage::default(),
            submitted_at_us,
            first_event_us: 0,
            span: fleet_telemetry::Span::none(),
            traceparent: String::new(),
            finished_at_us: 0,
            cancel_requested,
            durable: 0,
            subscribers: Vec::new(),
            journal: self.journal.clone(),
            options,
            parent,
            children: Vec::new(),
            depth,
            caller_attempt: 0,
            held: 0,
        };
        self.tasks.entry(id).insert_entry(Box::new(entry)).into_mut()
    }

    pub fn get(&self, id: &str) -> Option<&TaskEntry> {
        self.tasks.get(id).map(|t| &**t)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut TaskEntry> {
        self.changes = self.changes.wrapping_add(1);
        self.settle();
        let entry = self.tasks.get_mut(id)?;
        self.pending = Some(entry.id.clone());
        Some(entry)
    }

    /// Files the task last handed out mutably under the state it is in now. A state only
    /// changes through a `&mut TaskEntry`, and the table hands out one at a time, so
    /// settling that one before each use of the index keeps the whole index true.
    pub fn settle(&mut self) {
        if let Some(id) = self.pending.take()
            && let Some(entry) = self.tasks.get_mut(&id)
            && entry.state != entry.indexed
        {
            let filed = Filed {
                number: entry.number,
                agent: &entry.agent,
                context: &entry.context_id,
                tenant: &entry.tenant,
                state: entry.indexed,
            };
            self.index.moved(filed, entry.state);
            entry.indexed = entry.state;
        }
    }

    /// A number that moves whenever a task may have changed (see `changes`).
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Counts `bytes` (what task `id`'s submission holds) in [`TaskTable::unfinished_bytes`]
    /// until the task finishes.
    pub fn hold(&mut self, id: &str, bytes: usize) {
        if let Some(task) = self.tasks.get_mut(id) {
            self.unfinished_bytes = self.unfinished_bytes - task.held + bytes;
            task.held = bytes;
        }
    }

    /// What the submissions of the tasks not finished yet hold, in bytes.
    pub fn unfinished_bytes(&self) -> usize {
        self.unfinished_bytes
    }

    /// Records that a task reached a terminal state and evicts the oldest finished tasks
    /// beyond the retention limit.
    pub fn finished(&mut self, id: &TaskId, state: TaskState) {
        match state {
            TaskState::Completed => self.counters.completed += 1,
            TaskState::Failed => self.counters.failed += 1,
            TaskState::Canceled => self.counters.canceled += 1,
            _ => return,
        }
        if let Some(task) = self.tasks.get_mut(id.as_str()) {
            self.unfinished_bytes -= std::mem::take(&mut task.held);
        }
        self.settle();
        self.finished.push_back(id.clone());
        self.retained_bytes += self.tasks.get(id.as_str()).map_or(0, |t| t.bytes);
        while self.finished.len() > self.max_retained
            || (self.retained_bytes > self.max_retained_bytes && self.finished.len() > 1)
        {
            if let Some(old) = self.finished.pop_front()
                && let Some(mut entry) = self.tasks.remove(&old)
            {
                // Its subscribers get the rest now: the task is going.
                entry.stored_up_to(u64::MAX);
                if let Some(journal) = &self.journal {
                    journal.removed(entry.number);
                }
                self.retained_bytes = self.retained_bytes.saturating_sub(entry.bytes);
                self.by_number.remove(&entry.number);
                self.index.remove(Filed {
                    number: entry.number,
                    agent: &entry.agent,
                    context: &entry.context_id,
                    tenant: &entry.tenant,
                    state: entry.indexed,
                });
                for hook in &self.on_evicted {
                    hook(old.as_str());
                }
            }
        }
    }

    /// Tasks in submission order, starting after `after` (a task number).
    pub fn iter_from(&self, after: u64) -> impl DoubleEndedIterator<Item = &TaskEntry> {
        self.by_number.range(after + 1..).filter_map(|(_, id)| self.get(id.as_str()))
    }

    /// One page of the tasks `filter` matches, in submission order (or newest first),
    /// with how many match in all. Reads the page's tasks only, however many are retained.
    /// The most tasks one listing by worker or search looks at (see [`TaskTable::list`]).
    pub const SEARCH_SCAN: usize = 20_000;

    pub fn list(&mut self, filter: &TaskFilter) -> Listed<'_> {
        self.settle();
        let this = &*self;
        let size = filter.page_size.clamp(1, 1000);
        let entry = |number: u64| this.by_number.get(&number).and_then(|id| this.get(id.as_str()));
        // Past the cursor, in the listing's order.
        let range = match (filter.newest_first, filter.after) {
            (false, after) => (Bound::Excluded(after), Bound::Unbounded),
            (true, 0) => (Bound::Unbounded, Bound::Unbounded),
            (true, after) => (Bound::Unbounded, Bound::Excluded(after)),
        };
        let set = this.index.matching(
            filter.tenant.as_deref(),
            filter.context_id.as_deref(),
            filter.agent.as_deref(),
            filter.state,
        );
        let numbers = set.range(range);
        let numbers: Box<dyn Iterator<Item = u64>> =
            if filter.newest_first { Box::new(numbers.rev()) } else { Box::new(numbers) };
        if filter.worker.is_none() && filter.search.is_empty() {
            let mut tasks: Vec<&TaskEntry> = numbers.filter_map(entry).take(size + 1).collect();
            let next_after = (tasks.len() > size).then(|| {
                tasks.truncate(size);
                tasks.last().map_or(0, |t| t.number)
            });
            return Listed { tasks, next_after, total: set.len(), complete: true };
        }
        // A worker and a search are not indexed: they are looked for in the tasks the index
        // gives, at most `SEARCH_SCAN` of them a page (under the cluster's lock: a look at
        // 100,000 tasks would stop the head for a quarter of a second). The total counts
        // the matches among those; a page that stopped short continues after the last task
        // it looked at.
        let wanted = |t: &TaskEntry| {
            filter.worker.as_deref().is_none_or(|w| t.worker.as_deref() == Some(w))
                && filter.search.all(|word| t.matches(word))
        };
        let (mut tasks, mut total, mut scanned, mut last) = (Vec::new(), 0, 0, None);
        let mut numbers = numbers.peekable();
        for number in numbers.by_ref() {
            scanned += 1;
            last = Some(number);
            if let Some(t) = entry(number).filter(|t| wanted(t)) {
                total += 1;
                if tasks.len() <= size {
                    tasks.push(t);
                }
            }
            if scanned == Self::SEARCH_SCAN {
                break;
            }
        }
        let complete = numbers.peek().is_none();
        let next_after = if tasks.len() > size {
            tasks.truncate(size);
            tasks.last().map(|t| t.number)
        } else if complete {
            None
        } else {
            last
        };
        Listed { tasks, next_after, total, complete }
    }

    /// How many of `tenant`'s tasks are in one of `states`.
    pub fn count(&mut self, tenant: &str, states: &[TaskState]) -> usize {
        self.settle();
        states.iter().map(|s| self.index.matching(Some(tenant), None, None, Some(*s)).len()).sum()
    }

    /// How many of `tenant`'s tasks of `agent` are in one of `states`.
    pub fn count_of(&mut self, tenant: &str, agent: &str, states: &[TaskState]) -> usize {
        self.settle();
        let index = &self.index;
        states.iter().map(|s| index.matching(Some(tenant), None, Some(agent), Some(*s)).len()).sum()
    }

    /// How many retained tasks `agent` has in `state`, and those tasks, newest first.
    pub fn newest_of(
        &mut self,
        agent: &str,
        state: TaskState,
    ) -> (usize, impl Iterator<Item = &TaskEntry>) {
        self.settle();
        let this = &*self;
        let numbers = this.index.matching(None, None, Some(agent), Some(state));
        let count = numbers.len();
        let tasks = numbers
            .iter()
            .rev()
            .filter_map(|n| this.by_number.get(&n))
            .filter_map(|id| this.get(id.as_str()));
        (count, tasks)
    }

    /// The finished tasks retained, the last to finish first.
    pub fn finished_newest_first(&self) -> impl Iterator<Item = &TaskEntry> {
        self.finished.iter().rev().filter_map(|id| self.get(id.as_str()))
    }

    /// The tasks not finished yet: the queued ones, then those on a worker (each in
    /// submission order). Settle the table first: the task it last handed out mutably may
    /// still be filed under its former state.
    pub fn unfinished(&self) -> impl Iterator<Item = &TaskEntry> {
        TaskState::ALL
            .into_iter()
            .filter(|s| !s.is_terminal())
            .flat_map(|s| self.index.matching(None, None, None, Some(s)).iter())
            .filter_map(|n| self.by_number.get(&n))
            .filter_map(|id| self.get(id.as_str()))
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

/// Which tasks a listing shows, and where its page starts.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    /// Only this tenant's tasks (a context id names a conversation within a tenant: the
    /// default tenant's when none is named).
    pub tenant: Option<String>,
    pub agent: Option<String>,
    pub context_id: Option<String>,
    pub state: Option<TaskState>,
    /// Only the tasks whose latest attempt ran (or runs) on this worker.
    pub worker: Option<String>,
    /// Only the tasks every word of this search matches ([`TaskEntry::matches`]).
    pub search: crate::search::Words,
    pub page_size: usize,
    /// The task number to continue after, in the listing's order (0: from its start).
    pub after: u64,
    /// The newest tasks first.
    pub newest_first: bool,
}

/// One page of a listing.
#[derive(Debug)]
pub struct Listed<'a> {
    pub tasks: Vec<&'a TaskEntry>,
    /// The task number to continue after, when there are more.
    pub next_after: Option<u64>,
    /// Tasks matching the filter, on every page; with a worker or a search, those from the
    /// page's start among the tasks looked at ([`TaskTable::SEARCH_SCAN`] at most).
    pub total: usize,
    /// Every task the filter's index gives past the cursor was looked at.
    pub complete: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_with_task(max_retained: usize) -> (TaskTable, TaskId) {
        let mut table = TaskTable::new(max_retained, usize::MAX);
        let id = TaskId::new("t1");
        table.insert(id.clone(), "a".into(), "hi".into(), String::new(), "default".into());
        (table, id)
    }

    #[test]
    fn followers_that_left_are_dropped_when_others_come() {
        let (mut table, _) = table_with_task(10);
        let task = table.get_mut("t1").expect("task");
        task.push(EventKind::Submitted { agent: "a".into() }, 1).expect("first");
        for _ in 0..1000 {
            let (sub, subscription) = subscriber(8);
            task.follow(sub, 1);
            drop(subscription);
        }
        assert!(task.followers() <= 1, "{} followers kept", task.followers());
    }

    #[test]
    fn events_get_gapless_seqs_and_drive_the_state() {
        let (mut table, id) = table_with_task(10);
        let task = table.get_mut("t1").expect("task");
        let mut push = |kind, at| task.push(kind, at).expect("a legal event");
        push(EventKind::Submitted { agent: "a".into() }, 1);
        push(EventKind::Scheduled { worker_id: "w".into() }, 2);
        push(EventKind::Working, 3);
        push(EventKind::text("hi"), 4);
        // A retried attempt's text starts over.
        push(EventKind::Retrying { reason: "lost".into(), failed_attempt: 1 }, 5);
        push(EventKind::Scheduled { worker_id: "w2".into() }, 6);
        push(EventKind::text("again"), 7);
        let last = push(EventKind::Completed { usage: Usage::default() }, 8);
        assert_eq!(last.seq, 8);
        assert_eq!(task.state, TaskState::Completed);
        assert_eq!(task.output(), "again");
        assert_eq!(task.stored_events_from(7).len(), 2);
        assert!(task.stored_events_from(9).is_empty());
        assert_eq!(id.as_str(), "t1");
    }

    #[test]
    fn an_event_the_state_cannot_take_is_refused_and_not_logged() {
        let (mut table, _) = table_with_task(10);
        let task = table.get_mut("t1").expect("task");
        let refused = task.push(EventKind::Working, 1).expect_err("not submitted yet");
        assert_eq!(refused.from, None);
        task.push(EventKind::Submitted { agent: "a".into() }, 1).expect("first");
        // Not on a worker yet: no text, no completion.
        task.push(EventKind::text("early"), 2).expect_err("queued");
        task.push(EventKind::Completed { usage: Usage::default() }, 2).expect_err("queued");
        task.push(EventKind::Canceled { reason: "no".into() }, 2).expect("cancel a queued task");
        // Ended: nothing more, not even a second end.
        task.push(EventKind::text("late"), 3).expect_err("canceled");
        task.push(EventKind::failed(fleet_proto::ErrorKind::Internal, "x"), 3).expect_err("ended");
        assert_eq!(task.events.len(), 2);
        assert_eq!(task.state, TaskState::Canceled);
        // What the head makes itself is refused the same way (and logged as its bug).
        assert!(task.push_own(EventKind::Working, 3).is_none());
        assert_eq!(task.events.len(), 2);
    }

    #[test]
    fn a_slow_subscriber_is_cut_off_without_gaps() {
        let (mut table, _) = table_with_task(10);
        let (sub, mut subscription) = subscriber(2);
        let task = table.get_mut("t1").expect("task");
        task.follow(sub, 1);
        task.push(EventKind::Submitted { agent: "a".into() }, 0).expect("first");
        task.push(EventKind::Scheduled { worker_id: "w".into() }, 0).expect("placed");
        for _ in 0..2 {
            task.push(EventKind::text("x"), 0).expect("on a worker");
        }
        assert!(task.subscribers.is_empty());
        assert!(subscription.was_cut());
        let mut seqs = Vec::new();
        while let Ok(Delivery::Event(e)) = subscription.rx.try_recv() {
            seqs.push(e.seq);
        }
        assert_eq!(seqs, [1, 2]);
    }

    #[test]
    fn retention_evicts_the_oldest_finished_tasks() {
        let mut table = TaskTable::new(2, usize::MAX);
        let evicted = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let seen = evicted.clone();
        table.on_evicted(Box::new(move |id| seen.lock().push(id.to_owned())));
        for i in 0..5 {
            let id = TaskId::new(format!("t{i}"));
            table.insert(
                id.clone(),
                "a".into(),
                "x".into(),
                if i < 3 { "c".into() } else { String::new() },
                "default".into(),
            );
            table.finished(&id, TaskState::Completed);
        }
        assert_eq!(table.len(), 2);
        assert!(table.get("t0").is_none() && table.get("t4").is_some());
        assert_eq!(table.iter_from(0).count(), 2);
        assert!(table.index.is_tidy(), "evicted tasks left traces in the index");
        assert_eq!(table.index.filed(), 2);
        let in_context = TaskFilter { context_id: Some("c".into()), ..Default::default() };
        assert_eq!(table.list(&in_context).total, 0);
        assert_eq!(table.counters.completed, 5);
        assert_eq!(*evicted.lock(), ["t0", "t1", "t2"], "the eviction hook missed tasks");
    }

    /// What listing must answer, worked out by reading every task.
    fn listed_by_scan(table: &TaskTable, filter: &TaskFilter) -> (Vec<u64>, usize) {
        let matching: Vec<u64> = table
            .iter_from(0)
            .filter(|t| {
                // A context is a tenant's: the default tenant's when none is named.
                let tenant = match (&filter.tenant, &filter.context_id) {
                    (Some(tenant), _) => Some(tenant.as_str()),
                    (None, Some(_)) => Some(crate::auth::DEFAULT_TENANT),
                    (None, None) => None,
                };
                filter.agent.as_ref().is_none_or(|a| *a == t.agent)
                    && tenant.is_none_or(|tenant| *tenant == *t.tenant)
                    && filter.context_id.as_ref().is_none_or(|c| *c == t.context_id)
                    && filter.state.is_none_or(|s| s == t.state)
                    && filter.worker.as_ref().is_none_or(|w| t.worker.as_ref() == Some(w))
                    && filter.search.all(|word| t.matches(word))
            })
            .map(|t| t.number)
            .collect();
        let total = matching.len();
        let mut ordered = matching;
        if filter.newest_first {
            ordered.reverse();
        }
        (ordered, total)
    }

    proptest::proptest! {
        /// The index answers every listing as a scan of every task would, page by page,
        /// while tasks arrive, change state, finish and are evicted.
        #[test]
        fn listing_from_the_index_agrees_with_a_scan(
            steps in proptest::collection::vec((0u8..6, 0usize..40, 0u8..3, 0u8..3), 1..120),
            filters in proptest::collection::vec(
                (0u8..4, 0u8..4, 0u8..8, 1usize..5, proptest::bool::ANY, 0u8..4, 0u8..4), 1..12),
        ) {
            let mut table = TaskTable::new(12, usize::MAX);
            let mut ids: Vec<TaskId> = Vec::new();
            for (op, pick, agent, context) in steps {
                let target = (!ids.is_empty()).then(|| ids[pick % ids.len()].clone());
                let kind = match (op, target) {
                    (0, _) | (_, None) => {
                        let id = TaskId::new(format!("t{}", ids.len()));
                        let context =
                            if context == 0 { String::new() } else { format!("c{context}") };
                        let tenant = if ids.len().is_multiple_of(3) { "t0" } else { "t1" };
                        let task = table.insert(id.clone(), format!("a{agent}"), "x".into(), context, tenant.into());
                        task.push(EventKind::Submitted { agent: task.agent.clone() }, 0).expect("first");
                        ids.push(id);
                        continue;
                    }
                    (1, Some(id)) => (id, EventKind::Scheduled { worker_id: format!("w{}", pick % 3) }),
                    (2, Some(id)) => (id, EventKind::Working),
                    (3, Some(id)) => (id, EventKind::InputRequired {
                        prompt: String::new(),
                        call_id: String::new(),
                        tool: String::new(),
                        arguments: String::new(),
                        deadline_us: 0,
                    }),
                    (4, Some(id)) => (id, EventKind::Completed { usage: Usage::default() }),
                    (_, Some(id)) => (id, EventKind::Canceled { reason: String::new() }),
                };
                let (id, kind) = kind;
                let Some(task) = table.get_mut(id.as_str()) else { continue };
                if task.state.is_terminal() {
                    continue;
                }
                // Events the task's state cannot take are refused (the table in fleet_proto).
                let Ok(event) = task.push(kind, 0) else { continue };
                if let Some(state) = event.kind.state_after().filter(|s| s.is_terminal()) {
                    table.finished(&id, state);
                }
            }
            for (agent, context, state, size, newest_first, tenant, narrow) in filters {
                // Neither indexed: a worker, and searches for a number and a part of an id.
                let (worker, search) = match narrow {
                    1 => (Some("w1".to_owned()), ""),
                    2 => (None, "#3"),
                    3 => (None, "T1"),
                    _ => (None, ""),
                };
                let mut filter = TaskFilter {
                    tenant: [None, Some("t0"), Some("t1"), Some("default")][tenant as usize]
                        .map(str::to_owned),
                    agent: (agent > 0).then(|| format!("a{}", agent - 1)),
                    context_id: (context > 0).then(|| format!("c{context}")),
                    state: TaskState::ALL.get(state as usize).copied(),
                    worker,
                    search: crate::search::Words::parse(search).expect("a search"),
                    page_size: size,
                    after: 0,
                    newest_first,
                };
                let (expected, expected_total) = listed_by_scan(&table, &filter);
                let mut paged = Vec::new();
                let narrowed = filter.worker.is_some() || !filter.search.is_empty();
                loop {
                    let page = table.list(&filter);
                    // By worker or search, the matches from the page's start on.
                    let total = if narrowed { expected_total - paged.len() } else { expected_total };
                    proptest::prop_assert_eq!(page.total, total);
                    proptest::prop_assert!(page.complete);
                    proptest::prop_assert!(page.tasks.len() <= size);
                    paged.extend(page.tasks.iter().map(|t| t.number));
                    match page.next_after {
                        Some(after) => filter.after = after,
                        None => break,
                    }
                }
                proptest::prop_assert_eq!(&paged, &expected);
            }
            proptest::prop_assert!(table.index.is_tidy());
            table.settle();
            proptest::prop_assert_eq!(table.index.filed(), table.len());
        }
    }

    /// A search looks at `SEARCH_SCAN` tasks a page at most, says so, and its next page
    /// goes on where it stopped.
    #[test]
    fn a_search_stops_after_a_bounded_look_and_its_next_page_goes_on() {
        let n = TaskTable::SEARCH_SCAN + 10;
        let mut table = TaskTable::new(n, usize::MAX);
        for i in 0..n {
            let input = if i == 3 || i == n - 1 { "the needle" } else { "hay" };
            table.insert(
                TaskId::new(format!("t{i}")),
                "a".into(),
                input.into(),
                String::new(),
                "t".into(),
            );
        }
        let mut filter = TaskFilter {
            search: crate::search::Words::parse("NEEDLE").expect("words"),
            page_size: 5,
            newest_first: true,
            ..Default::default()
        };
        let first = table.list(&filter);
        let found: Vec<&str> = first.tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(
            (found, first.total, first.complete),
            (vec![format!("t{}", n - 1).as_str()], 1, false)
        );
        // It stopped after the newest SEARCH_SCAN, numbered from 1: the next page goes on.
        assert_eq!(first.next_after, Some(11));
        filter.after = 11;
        let second = table.list(&filter);
        let found: Vec<&str> = second.tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(
            (found, second.total, second.complete, second.next_after),
            (vec!["t3"], 1, true, None)
        );
    }

    #[test]
    fn retention_is_bounded_in_bytes_too() {
        let mut table = TaskTable::new(1000, 100 << 10);
        let complete = |table: &mut TaskTable, id: &TaskId| {
            if let Some(task) = table.get_mut(id.as_str()) {
                task.push(EventKind::Completed { usage: Usage::default() }, 0).expect("running");
            }
            table.finished(id, TaskState::Completed);
        };
        for i in 0..20 {
            let id = TaskId::new(format!("t{i}"));
            let task =
                table.insert(id.clone(), "a".into(), "x".into(), String::new(), "default".into());
            task.push(EventKind::Submitted { agent: "a".into() }, 0).expect("first");
            task.push(EventKind::Scheduled { worker_id: "w".into() }, 0).expect("placed");
            for _ in 0..10 {
                task.push(EventKind::text("y".repeat(1000)), 0).expect("on a worker");
            }
            complete(&mut table, &id);
        }
        // Each task holds its 10,000 bytes of deltas once (in its events, not again as its
        // output), plus the events' fixed parts.
        let per_task = table.get("t19").map_or(0, |t| t.bytes);
        assert!((10_000..15_000).contains(&per_task), "{per_task} bytes for 10,000 of text");
        assert!(table.retained_bytes <= 100 << 10, "{} bytes retained", table.retained_bytes);
        let fit = (100 << 10) / per_task;
        assert!((fit - 1..=fit).contains(&table.len()), "{} tasks retained", table.len());
        assert!(table.get("t19").is_some() && table.get("t0").is_none());
        // One task over the whole budget is still kept until the next one finishes.
        let big = TaskId::new("big");
        let task = table.insert(
            big.clone(),
            "a".into(),
            "x".repeat(200 << 10).into(),
            String::new(),
            "default".into(),
        );
        task.push(EventKind::Submitted { agent: "a".into() }, 0).expect("first");
        task.push(EventKind::Scheduled { worker_id: "w".into() }, 0).expect("placed");
        complete(&mut table, &big);
        assert!(table.get("big").is_some());
        assert_eq!(table.len(), 1);
    }
}

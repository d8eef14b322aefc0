//! The head's state machine: agents, workers, tasks and the queue behind one lock, and every
//! transition between them (submit, dispatch, worker events, worker loss, cancel, retry).
//!
//! One `parking_lot` mutex guards it all: each operation is short and non-blocking (channel
//! sends never wait), so a single lock is both fast and easy to reason about.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::local::LocalHead;
use fleet_proto::{
    AgentSpec, Command, EventKind, Heartbeat, LoadedModel, LocateRequest, MeshPeer, Registration,
    TaskAssignment, TaskEvent, TaskId, TaskOptions, TaskState, TopicMessage, now_us,
};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::agents::{AgentRegistry, Registered};
use crate::config::HeadConfig;
use crate::scheduler::{self, Placement};
use crate::store::{Commit, Journal, Restored};
use crate::tasks::{Delivery, Subscriber, Subscription, TaskEntry, TaskTable, subscriber};
use crate::topics::{PublishOutcome, TopicRelays};
use crate::workers::{WorkerEntry, WorkerRegistry};
use crate::{Error, Result};

/// How many queued tasks one drain looks at past tasks that must keep waiting.
const QUEUE_SCAN_LIMIT: usize = 256;
/// How long a restarted head waits for a worker to rejoin and claim the tasks it ran:
/// past a worker's longest reconnect backoff (5 s) plus the worker timeout.
const REJOIN_GRACE: Duration = Duration::from_secs(6);
/// Workers whose event numbers are remembered (one entry per worker id).
const MAX_WORKER_SEQS: usize = 65_536;
/// Conversations remembered for placing a context's next turn on the same worker.
const MAX_CONTEXT_AFFINITY: usize = 100_000;

/// Tool calls deep a chain of agents calling agents may go (a loop of agents ends here).
const MAX_TOOL_DEPTH: u32 = 4;
/// Texts one embedding task may carry (OpenAI's own limit).
const MAX_EMBED_TEXTS: usize = 2048;

/// A task to submit.
#[derive(Debug, Clone, Default)]
pub struct NewTask {
    pub agent: String,
    pub input: String,
    pub context_id: String,
    /// History, sampling overrides or texts to embed (the OpenAI API sets these).
    pub options: Option<Arc<TaskOptions>>,
}

/// A model the cluster serves, for `GET /v1/models`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub id: String,
    /// `gguf`, `hf` or `builtin`.
    pub format: String,
    pub size_bytes: u64,
    /// Workers with it on disk, and those with it loaded.
    pub workers: u32,
    pub loaded_on: u32,
}

/// A snapshot of one task for GetTask/ListTasks.
#[derive(Debug, Clone)]
pub struct TaskInfo {
    pub task_id: TaskId,
    /// Submission order on this head.
    pub number: u64,
    pub agent: String,
    pub input: Arc<str>,
    pub state: TaskState,
    pub attempt: u32,
    pub worker_id: String,
    pub context_id: String,
    pub output: String,
    pub error: String,
    pub events: u64,
    pub submitted_at_us: u64,
    pub finished_at_us: u64,
    pub usage: fleet_proto::Usage,
}

impl From<&TaskEntry> for TaskInfo {
    fn from(t: &TaskEntry) -> Self {
        Self {
            task_id: t.id.clone(),
            number: t.number,
            agent: t.agent.clone(),
            input: t.input.clone(),
            state: t.state,
            attempt: t.attempt,
            worker_id: t.worker.clone().unwrap_or_default(),
            context_id: t.context_id.clone(),
            output: t.output.clone(),
            error: t.error.clone(),
            events: t.events.len() as u64,
            submitted_at_us: t.submitted_at_us,
            finished_at_us: t.finished_at_us,
            usage: t.usage,
        }
    }
}

impl From<&crate::agents::AgentEntry> for AgentInfo {
    fn from(e: &crate::agents::AgentEntry) -> Self {
        // Views leave the cluster (ListAgents, cards, /v1/models): no secrets in them.
        let spec = if e.spec.has_secrets() { Arc::new(e.spec.redacted()) } else { e.spec.clone() };
        Self { spec, version: e.version, tasks_submitted: e.tasks_submitted }
    }
}

/// One page of ListTasks.
#[derive(Debug, Clone, Default)]
pub struct TaskPage {
    pub tasks: Vec<TaskInfo>,
    /// The task number to continue after, when there are more.
    pub next_after: Option<u64>,
    /// Tasks matching the filter, on every page.
    pub total: usize,
}

/// A registered agent, for listing.
#[derive(Debug, Clone)]
pub struct AgentInfo {
    pub spec: Arc<AgentSpec>,
    pub version: u64,
    pub tasks_submitted: u64,
}

/// One worker, for the cluster status.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    pub registration: Registration,
    pub address: String,
    pub free: fleet_proto::Resources,
    pub running_tasks: u32,
    pub tasks_assigned: u64,
    pub models_loaded: Vec<String>,
    /// Loaded models with their engines' figures.
    pub loaded: Vec<LoadedModel>,
    pub actors: u32,
    pub last_heartbeat_ago: Duration,
}

/// The whole cluster at a glance.
#[derive(Debug, Clone)]
pub struct ClusterStatus {
    pub workers: Vec<WorkerInfo>,
    pub agents: usize,
    pub queued_tasks: usize,
    pub running_tasks: usize,
    pub retained_tasks: usize,
    pub counters: crate::tasks::TaskCounters,
    pub calls_relayed: u64,
    pub agents_located: u64,
}

/// Filters and paging for ListTasks.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub agent: Option<String>,
    pub context_id: Option<String>,
    pub state: Option<TaskState>,
    pub page_size: usize,
    /// The task number to continue after.
    pub after: u64,
}

/// The limits the state machine enforces.
#[derive(Debug, Clone)]
struct Limits {
    heartbeat_interval: Duration,
    max_queued_tasks: usize,
    max_input_bytes: usize,
    subscriber_buffer: usize,
}

struct State {
    agents: AgentRegistry,
    workers: WorkerRegistry,
    tasks: TaskTable,
    queue: VecDeque<TaskId>,
    /// (agent, context id) -> the worker that ran its last turn.
    context_workers: HashMap<(String, String), String>,
    /// Agent calls run as sub-tasks here (callers not on the mesh).
    calls_relayed: u64,
    /// Lookups answered for callers on the mesh.
    agents_located: u64,
    topics: TopicRelays,
    /// Each worker's incarnation and the number of the last of its events applied: a
    /// rejoining worker sends the ones after it again (see the worker's outbox).
    worker_seqs: HashMap<String, (u64, u64)>,
    /// Tasks that ran on a worker when the head restarted, by worker, until it rejoins
    /// (and they are adopted) or `orphans_until` passes (and they are retried).
    orphans: HashMap<String, Vec<TaskId>>,
    orphans_until: Option<Instant>,
}

/// The head's cluster state, shared by every API handler.
pub struct Cluster {
    state: Mutex<State>,
    limits: Limits,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl Cluster {
    /// A cluster with the config's limits and agents, and the state its store holds (tasks
    /// running when the head stopped are retried, queued ones queued again).
    pub fn start(config: &HeadConfig) -> Result<Arc<Self>> {
        let store = crate::store::open(&config.store).map_err(Error::Store)?;
        Self::start_with(config, store)
    }

    /// [`Cluster::start`] on a store already open (none: keep nothing).
    pub(crate) fn start_with(
        config: &HeadConfig,
        store: Option<Box<dyn crate::store::Store>>,
    ) -> Result<Arc<Self>> {
        let cluster = Arc::new(Self::new(config)?);
        if let Some(mut store) = store {
            let what = store.describe();
            let snapshot = store.load().map_err(Error::Store)?;
            let restored = Restored::decode(snapshot, &what).map_err(Error::Store)?;
            let weak = Arc::downgrade(&cluster);
            let on_commit = Box::new(move |commit: Commit| {
                if let Some(cluster) = weak.upgrade() {
                    cluster.committed(commit);
                }
            });
            let journal = Journal::start(store, on_commit)?;
            cluster.restore(journal, restored, config)?;
        }
        Ok(cluster)
    }

    /// Takes back what the store holds; new work is stored through `journal` from now on.
    fn restore(&self, journal: Journal, restored: Restored, config: &HeadConfig) -> Result<()> {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let (agents, tasks) = (restored.agents.len(), restored.tasks.len());
        for spec in restored.agents {
            if let Err(e) = state.agents.register(spec) {
                warn!(error = %e, "a stored agent was not restored");
            }
        }
        // The config file says what its agents are now.
        for spec in &config.agents {
            state.agents.register(spec.clone())?;
        }
        state.tasks.store_in(journal);
        let mut open = Vec::new();
        for task in restored.tasks {
            let id = task.record.id.clone();
            let parent = task.record.parent.clone();
            state.tasks.restore(task);
            if let Some((parent, _)) = parent
                && let Some(parent) = state.tasks.get_mut(parent.as_str())
            {
                parent.children.push(id.clone());
            }
            if let Some(task) = state.tasks.get(id.as_str())
                && !task.state.is_terminal()
            {
                open.push(id);
            }
        }
        let open_count = open.len();
        for id in open {
            let Some(task) = state.tasks.get(id.as_str()) else { continue };
            match task.worker.clone() {
                // Its worker may still run it: it claims it when it rejoins.
                Some(worker) => state.orphans.entry(worker).or_default().push(id),
                None => state.queue.push_back(id),
            }
        }
        if !state.orphans.is_empty() {
            state.orphans_until = Some(Instant::now() + REJOIN_GRACE + config.worker_timeout);
        }
        state.worker_seqs.extend(restored.workers);
        info!(agents, tasks, unfinished = open_count, "state restored from the store");
        Ok(())
    }

    /// Stores what is pending and closes the store (the head is stopping), so that another
    /// head may open it; waits up to `timeout`. Blocking.
    pub fn close_store(&self, timeout: Duration) {
        let journal = self.state.lock().tasks.journal().cloned();
        if let Some(journal) = journal
            && !journal.close(timeout)
        {
            warn!(?timeout, "the store did not close in time");
        }
    }

    /// A commit stored these events: they go to their subscribers.
    fn committed(&self, commit: Commit) {
        let mut state = self.state.lock();
        for (id, seq) in commit.tasks {
            if let Some(task) = state.tasks.get_mut(id.as_str()) {
                task.stored_up_to(seq);
            }
        }
        for (worker, (incarnation, up_to)) in commit.workers {
            if let Some(w) = state.workers.get(&worker)
                && w.registration.incarnation == incarnation
            {
                let _ = w.commands.send(Command::Acked { up_to });
            }
        }
    }

    /// A cluster with the config's limits and agents, keeping nothing.
    pub fn new(config: &HeadConfig) -> Result<Self> {
        let mut agents = AgentRegistry::new(config.max_agents);
        for spec in &config.agents {
            agents.register(spec.clone())?;
        }
        Ok(Self {
            state: Mutex::new(State {
                agents,
                workers: WorkerRegistry::default(),
                tasks: TaskTable::new(config.max_retained_tasks, config.max_retained_bytes),
                queue: VecDeque::new(),
                context_workers: HashMap::new(),
                calls_relayed: 0,
                agents_located: 0,
                topics: TopicRelays::default(),
                worker_seqs: HashMap::new(),
                orphans: HashMap::new(),
                orphans_until: None,
            }),
            limits: Limits {
                heartbeat_interval: config.heartbeat_interval,
                max_queued_tasks: config.max_queued_tasks,
                max_input_bytes: config.max_input_bytes,
                subscriber_buffer: config.subscriber_buffer,
            },
        })
    }

    /// Calls `hook` with the id of every task retention evicts from now on.
    pub fn on_task_evicted(&self, hook: crate::tasks::EvictionHook) {
        self.state.lock().tasks.on_evicted(hook);
    }

    /// A new subscriber with the configured buffer.
    pub fn subscriber(&self) -> (Subscriber, Subscription) {
        subscriber(self.limits.subscriber_buffer)
    }

    // ---- agents ----

    pub fn register_agent(&self, spec: AgentSpec) -> Result<AgentInfo> {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        if let Some(journal) = state.tasks.journal() {
            journal.check().map_err(Error::StoreUnavailable)?;
        }
        let (outcome, entry) = state.agents.register(spec)?;
        let info = AgentInfo::from(entry);
        if outcome != Registered::Unchanged
            && let Some(journal) = state.tasks.journal()
        {
            journal.agent(entry.spec.clone());
        }
        if outcome == Registered::Replaced {
            // Actors of the old spec hold state built for it (conversations, model).
            for w in state.workers.iter_mut() {
                if w.placed.remove(&info.spec.name).is_some() {
                    let _ = w.commands.send(Command::StopActor { agent: info.spec.name.clone() });
                }
            }
        }
        info!(agent = %info.spec.name, model = %info.spec.model, version = info.version, ?outcome, "agent registered");
        Ok(info)
    }

    pub fn agents(&self) -> Vec<AgentInfo> {
        let state = self.state.lock();
        let mut agents: Vec<_> = state.agents.iter().map(AgentInfo::from).collect();
        agents.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        agents
    }

    /// One agent, if it is registered.
    pub fn agent(&self, name: &str) -> Option<AgentInfo> {
        self.state.lock().agents.get(name).ok().map(AgentInfo::from)
    }

    // ---- tasks ----

    /// Validates and accepts a task; `subscriber` (if any) is attached before its first
    /// event, and told `Accepted { client_ref }` first when a ref is given.
    pub fn submit(
        &self,
        task: NewTask,
        subscriber: Option<(Subscriber, Option<u64>)>,
    ) -> Result<TaskId> {
        self.validate(&task)?;
        let mut guard = self.state.lock();
        if let Some(journal) = guard.tasks.journal() {
            journal.check().map_err(Error::StoreUnavailable)?;
        }
        submit_in(&mut guard, &self.limits, task, subscriber, None)
    }

    /// The name of the agent that serves `model` directly (`model:<id>`), registered on
    /// first use; an error when no live worker has the model.
    pub fn model_agent(&self, model: &str) -> Result<String> {
        let mut state = self.state.lock();
        if !state.workers.iter().any(|w| w.has_model(model)) {
            return Err(Error::UnknownModel(model.to_owned()));
        }
        Ok(state.agents.model_agent(model).spec.name.clone())
    }

    /// The models live workers have on disk, plus the built-in ones.
    pub fn models(&self) -> Vec<ModelInfo> {
        let state = self.state.lock();
        let mut models: std::collections::BTreeMap<String, ModelInfo> = Default::default();
        let builtin = format!("{}echo", crate::agents::BUILTIN_PREFIX);
        models.insert(
            builtin.clone(),
            ModelInfo {
                id: builtin,
                format: "builtin".into(),
                size_bytes: 0,
                workers: 0,
                loaded_on: 0,
            },
        );
        for w in state.workers.iter() {
            for m in &w.registration.models {
                let entry = models.entry(m.id.clone()).or_insert_with(|| ModelInfo {
                    id: m.id.clone(),
                    format: m.format.clone(),
                    size_bytes: m.size_bytes,
                    workers: 0,
                    loaded_on: 0,
                });
                entry.workers += 1;
            }
            for (id, entry) in &mut models {
                if entry.format == "builtin" {
                    entry.workers += 1;
                }
                if w.has_model_loaded(id) {
                    entry.loaded_on += 1;
                }
            }
        }
        models.into_values().collect()
    }
}

/// Accepts a task (see [`Cluster::submit`]); `parent` is the task that called it as a tool.
fn submit_in(
    state: &mut State,
    limits: &Limits,
    task: NewTask,
    subscriber: Option<(Subscriber, Option<u64>)>,
    parent: Option<(TaskId, String, u32)>,
) -> Result<TaskId> {
    let spec = state.agents.get(&task.agent)?.spec.clone();
    let context_worker = context_worker(state, &task.agent, &task.context_id);
    let placement = match scheduler::place(&spec, &state.workers, context_worker.as_deref()) {
        Placement::Never(reason) => {
            return Err(Error::Unschedulable { agent: task.agent, reason });
        }
        Placement::Worker(w) => Some(w.to_owned()),
        Placement::Wait => None,
    };
    let at_capacity =
        spec.max_concurrency > 0 && state.agents.get(&task.agent)?.running >= spec.max_concurrency;
    let placement = placement.filter(|_| !at_capacity);
    if placement.is_none() && state.queue.len() >= limits.max_queued_tasks {
        return Err(Error::QueueFull { limit: limits.max_queued_tasks });
    }
    state.agents.get_mut(&task.agent)?.tasks_submitted += 1;

    let id = TaskId::new(uuid::Uuid::new_v4().to_string());
    let entry = state.tasks.insert(id.clone(), task.agent, task.input.into(), task.context_id);
    entry.options = task.options;
    if let Some((parent, call_id, depth)) = parent {
        entry.parent = Some((parent, call_id));
        entry.depth = depth;
    }
    if let Some((sub, client_ref)) = subscriber {
        // `Accepted` goes with the first event, once the task is stored.
        entry.follow_submitted(sub, client_ref);
    }
    entry.push(EventKind::Submitted { agent: entry.agent.clone() }, now_us());
    debug!(task_id = %id, agent = %entry.agent, "task submitted");
    match placement {
        Some(worker) => dispatch(state, &id, &worker),
        None => state.queue.push_back(id.clone()),
    }
    Ok(id)
}

impl Cluster {
    fn validate(&self, task: &NewTask) -> Result<()> {
        if task.agent.is_empty() {
            return Err(Error::InvalidArgument("agent is empty: name the agent to run".into()));
        }
        let embed = task.options.as_ref().map_or(&[][..], |o| &o.embed[..]);
        if task.input.trim().is_empty() && embed.is_empty() {
            return Err(Error::InvalidArgument(
                "input is empty: give the agent something to do".into(),
            ));
        }
        if embed.len() > MAX_EMBED_TEXTS {
            return Err(Error::InvalidArgument(format!(
                "{} texts to embed; at most {MAX_EMBED_TEXTS} per request",
                embed.len()
            )));
        }
        let extra: usize = task.options.as_ref().map_or(0, |o| {
            o.embed.iter().map(String::len).sum::<usize>()
                + o.history.iter().map(|t| t.content.len()).sum::<usize>()
        });
        if task.input.len() + extra > self.limits.max_input_bytes {
            return Err(Error::InvalidArgument(format!(
                "the input is {} bytes with its history or texts, over the limit of {} bytes",
                task.input.len() + extra,
                self.limits.max_input_bytes
            )));
        }
        if task.input.len() > self.limits.max_input_bytes {
            return Err(Error::InvalidArgument(format!(
                "input is {} bytes, over the limit of {} bytes",
                task.input.len(),
                self.limits.max_input_bytes
            )));
        }
        if task.context_id.len() > 256 {
            return Err(Error::InvalidArgument("context_id must be at most 256 bytes".into()));
        }
        Ok(())
    }

    /// Submits tasks for a multiplexed subscriber: each is acknowledged (`Accepted` before
    /// its events) or refused (`Rejected`) on `sub`. Waits while the subscriber's buffer is
    /// nearly full, so a submitter that does not read is slowed, not cut off. False once the
    /// subscriber is gone.
    pub async fn submit_for(
        &self,
        sub: &Subscriber,
        items: impl IntoIterator<Item = (u64, Result<NewTask>)>,
    ) -> bool {
        for (client_ref, task) in items {
            if !sub.wait_for_room(64).await {
                return false;
            }
            let outcome =
                task.and_then(|task| self.submit(task, Some((sub.clone(), Some(client_ref)))));
            if let Err(error) = outcome {
                sub.deliver(Delivery::Rejected { client_ref, error: Arc::new(error) });
            }
        }
        true
    }

    /// Waits until a task's submission is stored (at once without a store): a caller that
    /// answers with the task id promises it survives a restart.
    pub async fn stored(&self, task_id: &str) -> Result<()> {
        let mut subscription = self.watch(task_id, 1)?;
        let _ = subscription.rx.recv().await;
        Ok(())
    }

    /// Follows a task from `from_seq`: the events stored so far, then the others as they
    /// are stored.
    pub fn watch(&self, task_id: &str, from_seq: u64) -> Result<Subscription> {
        let mut state = self.state.lock();
        let task =
            state.tasks.get_mut(task_id).ok_or_else(|| Error::UnknownTask(task_id.to_owned()))?;
        let backlog = task.stored_events_from(from_seq);
        let (sub, subscription) = subscriber(backlog.len() + self.limits.subscriber_buffer);
        for event in backlog {
            sub.deliver(Delivery::Event(event.clone()));
        }
        let next = from_seq.max(task.durable + 1);
        task.follow(sub, next);
        Ok(subscription)
    }

    /// The task as it is now and its events from here on, taken together so that nothing
    /// falls between them (A2A streams start with the task, then its updates).
    pub fn snapshot_and_watch(&self, task_id: &str) -> Result<(TaskInfo, Subscription)> {
        let mut state = self.state.lock();
        let task =
            state.tasks.get_mut(task_id).ok_or_else(|| Error::UnknownTask(task_id.to_owned()))?;
        let (sub, subscription) = subscriber(self.limits.subscriber_buffer);
        // The snapshot shows every event so far: the stream goes on after them.
        let next = task.events.len() as u64 + 1;
        task.follow(sub, next);
        Ok((TaskInfo::from(&*task), subscription))
    }

    /// Cancels a task: a queued one at once, a running one through its worker.
    pub fn cancel(&self, task_id: &str) -> Result<TaskInfo> {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let id = state
            .tasks
            .get(task_id)
            .map(|t| t.id.clone())
            .ok_or_else(|| Error::UnknownTask(task_id.to_owned()))?;
        cancel_in(state, &id, "canceled by the client");
        let task =
            state.tasks.get(task_id).ok_or_else(|| Error::UnknownTask(task_id.to_owned()))?;
        Ok(TaskInfo::from(task))
    }

    pub fn task(&self, task_id: &str) -> Result<TaskInfo> {
        let state = self.state.lock();
        state
            .tasks
            .get(task_id)
            .map(TaskInfo::from)
            .ok_or_else(|| Error::UnknownTask(task_id.to_owned()))
    }

    /// Tasks in submission order matching `filter`, one page of them.
    pub fn list_tasks(&self, filter: &TaskFilter) -> TaskPage {
        let state = self.state.lock();
        let size = filter.page_size.clamp(1, 1000);
        let mut page =
            TaskPage { tasks: Vec::with_capacity(size.min(64)), next_after: None, total: 0 };
        // A context's tasks come from its index: conversations stay cheap with many tasks.
        let tasks: Box<dyn Iterator<Item = &TaskEntry>> = match &filter.context_id {
            Some(context) => Box::new(state.tasks.iter_context(context)),
            None => Box::new(state.tasks.iter_from(0)),
        };
        for t in tasks {
            let matches = filter.agent.as_ref().is_none_or(|a| *a == t.agent)
                && filter.context_id.as_ref().is_none_or(|c| *c == t.context_id)
                && filter.state.is_none_or(|s| s == t.state);
            if !matches {
                continue;
            }
            page.total += 1;
            if t.number <= filter.after {
                continue;
            }
            if page.tasks.len() < size {
                page.tasks.push(TaskInfo::from(t));
            } else if page.next_after.is_none() {
                page.next_after = page.tasks.last().map(|t| t.number);
            }
        }
        page
    }

    pub fn status(&self) -> ClusterStatus {
        let state = self.state.lock();
        let now = Instant::now();
        let mut workers: Vec<_> = state
            .workers
            .iter()
            .map(|w| WorkerInfo {
                registration: w.registration.clone(),
                address: w.address.clone(),
                free: w.free,
                running_tasks: w.running.len() as u32,
                tasks_assigned: w.tasks_assigned,
                models_loaded: w.heartbeat.models_loaded.clone(),
                loaded: w.heartbeat.models.clone(),
                actors: w.heartbeat.actors,
                last_heartbeat_ago: now.saturating_duration_since(w.last_heartbeat),
            })
            .collect();
        workers.sort_by(|a, b| a.registration.worker_id.cmp(&b.registration.worker_id));
        ClusterStatus {
            running_tasks: workers.iter().map(|w| w.running_tasks as usize).sum(),
            workers,
            agents: state.agents.len(),
            queued_tasks: state.queue.len(),
            retained_tasks: state.tasks.len(),
            counters: state.tasks.counters,
            calls_relayed: state.calls_relayed,
            agents_located: state.agents_located,
        }
    }

    pub fn worker_count(&self) -> usize {
        self.state.lock().workers.len()
    }

    // ---- workers ----

    /// Adds a worker that joined; returns its connection number, its command stream and
    /// the number of the last of its events the head has. The tasks it reports running
    /// that the head still has on it are adopted; the others it is told to cancel.
    pub fn worker_joined(
        &self,
        registration: Registration,
        address: String,
    ) -> (u64, mpsc::UnboundedReceiver<Command>, u64) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let connection = state.workers.next_connection();
        let id = registration.worker_id.clone();
        let on_mesh = registration.mesh.is_some();
        let incarnation = registration.incarnation;
        let reported: HashMap<TaskId, u32> = registration.running.iter().cloned().collect();
        let resume_after = match state.worker_seqs.get(&id) {
            Some(&(known, applied)) if known == incarnation && incarnation != 0 => applied,
            _ => {
                remember_worker_seq(state, &id, (incarnation, 0));
                0
            }
        };
        let entry = WorkerEntry::new(registration, connection, address, tx, Instant::now());
        let replaced = state.workers.insert(entry);
        let was_on_mesh = replaced.as_ref().is_some_and(|w| w.registration.mesh.is_some());
        // The tasks the head has on this worker: of its previous connection (not noticed
        // gone yet) and those it ran when the head restarted.
        let mut candidates: Vec<TaskId> = state.orphans.remove(&id).unwrap_or_default();
        if let Some(old) = replaced {
            for task in &old.running {
                if let Some(t) = state.tasks.get(task.as_str())
                    && let Ok(agent) = state.agents.get_mut(&t.agent)
                {
                    agent.running = agent.running.saturating_sub(1);
                }
            }
            candidates.extend(old.running);
        }
        let (mut adopted, mut retried) = (0, Vec::new());
        for task in candidates {
            let still_runs = state
                .tasks
                .get(task.as_str())
                .is_some_and(|t| !t.state.is_terminal() && reported.get(&t.id) == Some(&t.attempt));
            if still_runs {
                adopt(state, &task, &id);
                adopted += 1;
            } else if lost_attempt(state, &task, &id, "the worker rejoined without it") {
                retried.push(task);
            }
        }
        for task in retried.into_iter().rev() {
            state.queue.push_front(task);
        }
        // Dispatched just before a crash, its `Scheduled` not stored: queued again here, but
        // the worker has it. It stays there.
        for (task, attempt) in &reported {
            let queued = state.tasks.get(task.as_str()).is_some_and(|t| {
                t.worker.is_none() && t.state == TaskState::Queued && t.attempt == *attempt
            });
            if queued && let Some(at) = state.queue.iter().position(|q| q == task) {
                state.queue.remove(at);
                adopt(state, task, &id);
                if let Some(t) = state.tasks.get_mut(task.as_str()) {
                    t.push(EventKind::Scheduled { worker_id: id.clone() }, now_us());
                }
                adopted += 1;
            }
        }
        // What it runs that is no longer its to run (retried elsewhere, canceled, unknown).
        if let Some(worker) = state.workers.get(&id) {
            for (task, attempt) in &reported {
                let current = state.tasks.get(task.as_str()).is_some_and(|t| {
                    t.worker.as_deref() == Some(&id)
                        && t.attempt == *attempt
                        && worker.running.contains(task)
                });
                if !current {
                    let _ = worker.commands.send(Command::CancelTask {
                        task_id: task.clone(),
                        reason: "the head no longer runs this attempt on this worker".into(),
                    });
                }
            }
        }
        info!(worker_id = %id, connection, workers = state.workers.len(), on_mesh, adopted, resume_after, "worker joined");
        if on_mesh || was_on_mesh {
            announce_mesh(state);
        }
        drain_queue(state);
        (connection, rx, resume_after)
    }

    pub fn heartbeat(&self, worker_id: &str, connection: u64, beat: Heartbeat) {
        self.state.lock().workers.heartbeat(worker_id, connection, beat, Instant::now());
    }

    /// Applies a batch of events a worker sent about its tasks.
    pub fn worker_events(&self, worker_id: &str, connection: u64, events: Vec<TaskEvent>) {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        state.workers.touch(worker_id, connection, Instant::now());
        // Workers on the mesh call agents themselves; their ToolCall events are for the log.
        let calls_direct =
            state.workers.get(worker_id).is_some_and(|w| w.registration.mesh.is_some());
        // Events a worker sends again after a rejoin carry numbers the head has seen.
        let incarnation = state
            .workers
            .get(worker_id)
            .filter(|w| w.connection == connection)
            .map_or(0, |w| w.registration.incarnation);
        let mut applied = match state.worker_seqs.get(worker_id) {
            Some(&(known, applied)) if known == incarnation && incarnation != 0 => Some(applied),
            _ => None,
        };
        let numbered = applied.is_some();
        let mut freed = false;
        let mut calls = Vec::new();
        for event in events {
            if let Some(applied) = &mut applied
                && event.seq > 0
            {
                if event.seq <= *applied {
                    continue;
                }
                *applied = event.seq;
            }
            let Some(task) = state.tasks.get_mut(event.task_id.as_str()) else {
                debug!(task_id = %event.task_id, worker_id, "event for an unknown task dropped");
                continue;
            };
            let current =
                task.worker.as_deref() == Some(worker_id) && task.attempt == event.attempt;
            if !current || task.state.is_terminal() {
                debug!(task_id = %event.task_id, worker_id, attempt = event.attempt, "stale event dropped");
                continue;
            }
            match &event.kind {
                EventKind::Submitted { .. }
                | EventKind::Scheduled { .. }
                | EventKind::Retrying { .. } => {
                    warn!(task_id = %event.task_id, worker_id, "worker sent a head-only event; dropped");
                }
                kind if kind.is_terminal() => {
                    finish(state, &event.task_id, event.kind);
                    freed = true;
                }
                EventKind::ToolCall { call_id, name, arguments } if !calls_direct => {
                    calls.push((
                        event.task_id.clone(),
                        call_id.clone(),
                        name.clone(),
                        arguments.clone(),
                    ));
                    task.push(event.kind, event.timestamp_us);
                }
                _ => {
                    task.push(event.kind, event.timestamp_us);
                }
            }
        }
        if let (true, Some(applied)) = (numbered, applied) {
            let mark = (worker_id.to_owned(), (incarnation, applied));
            remember_worker_seq(state, worker_id, mark.1);
            match state.tasks.journal() {
                // Acknowledged once stored (see `committed`).
                Some(journal) => journal.worker(mark),
                None => {
                    if let Some(w) = state.workers.get(worker_id) {
                        let _ = w.commands.send(Command::Acked { up_to: applied });
                    }
                }
            }
        }
        for (task_id, call_id, name, arguments) in calls {
            call_agent(state, &self.limits, &task_id, call_id, &name, &arguments);
        }
        if freed {
            drain_queue(state);
        }
    }

    /// A worker is gone (its stream ended or it stopped heartbeating): retry or fail its
    /// tasks. Ignored if `connection` is no longer the worker's current one.
    pub fn worker_lost(&self, worker_id: &str, connection: u64, reason: &str) {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        if let Some(entry) = state.workers.remove(worker_id, connection) {
            warn!(worker_id, reason, tasks = entry.running.len(), "worker lost");
            let on_mesh = entry.registration.mesh.is_some();
            fail_over(state, entry, reason);
            if on_mesh {
                announce_mesh(state);
                state.topics.worker_lost(&state.workers, worker_id);
            }
            drain_queue(state);
        }
    }

    /// Answers a worker that wants to call `request.agent` over the mesh: the worker hosting
    /// its actor, placed now if none does.
    pub fn locate(&self, worker_id: &str, connection: u64, request: LocateRequest) {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let Some(caller) = state.workers.get(worker_id).filter(|w| w.connection == connection)
        else {
            return;
        };
        let reply_to = caller.commands.clone();
        let result = locate_in(state, &request.agent, &request.context_id);
        match &result {
            Ok(peer) => {
                debug!(agent = %request.agent, caller_task = %request.caller_task, worker_id = %peer.worker_id, "agent located")
            }
            Err(e) => {
                debug!(agent = %request.agent, caller_task = %request.caller_task, error = %e, "agent not located")
            }
        }
        state.agents_located += 1;
        let _ = reply_to.send(Command::Located { request_id: request.request_id, result });
    }

    // ---- topics ----

    /// The messages on `topic` from now on, through `worker`'s subscription (any worker on
    /// the mesh when empty).
    pub fn follow_topic(
        &self,
        topic: &str,
        worker: &str,
    ) -> Result<tokio::sync::broadcast::Receiver<Arc<TopicMessage>>> {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        state.topics.follow(&state.workers, topic, worker)
    }

    /// Publishes a client's message through a worker on the mesh.
    pub fn publish(
        &self,
        topic: String,
        publisher: String,
        body: String,
    ) -> Result<tokio::sync::oneshot::Receiver<PublishOutcome>> {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        state.topics.publish(&state.workers, topic, publisher, body)
    }

    /// Messages a worker forwarded on topics the head follows through it.
    pub fn topic_messages(
        &self,
        worker_id: &str,
        connection: u64,
        mut messages: Vec<TopicMessage>,
    ) {
        let mut state = self.state.lock();
        if state.workers.get(worker_id).is_none_or(|w| w.connection != connection) {
            return;
        }
        for m in &mut messages {
            m.worker_id = worker_id.to_owned();
        }
        state.topics.deliver(worker_id, messages);
    }

    /// A worker's answer to a client's publish.
    pub fn published(
        &self,
        worker_id: &str,
        request_id: u64,
        result: std::result::Result<u64, String>,
    ) {
        self.state.lock().topics.published(worker_id, request_id, result);
    }

    /// Declares dead every worker silent for longer than `timeout`.
    pub fn sweep_silent_workers(&self, timeout: Duration) {
        self.retry_orphans(Instant::now());
        let expired = self.state.lock().workers.expired(Instant::now(), timeout);
        for (id, connection) in expired {
            let reason = format!("no heartbeat for {} ms", timeout.as_millis());
            self.worker_lost(&id, connection, &reason);
        }
    }
}

impl Cluster {
    /// Retries the tasks of workers that did not rejoin the restarted head in time.
    fn retry_orphans(&self, now: Instant) {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        if state.orphans_until.is_none_or(|until| now < until) {
            return;
        }
        state.orphans_until = None;
        let mut retried = 0;
        for (worker, tasks) in std::mem::take(&mut state.orphans) {
            for task in tasks {
                if lost_attempt(state, &task, &worker, "it did not rejoin the restarted head") {
                    state.queue.push_back(task);
                    retried += 1;
                }
            }
        }
        warn!(retried, "tasks of workers that did not come back retried");
        drain_queue(state);
    }
}

/// Remembers a worker's event numbers (bounded: the oldest go when it is full).
fn remember_worker_seq(state: &mut State, worker: &str, mark: (u64, u64)) {
    if state.worker_seqs.len() >= MAX_WORKER_SEQS && !state.worker_seqs.contains_key(worker) {
        let Some(any) = state.worker_seqs.keys().next().cloned() else { return };
        state.worker_seqs.remove(&any);
    }
    state.worker_seqs.insert(worker.to_owned(), mark);
}

/// Takes on a task a rejoining worker still runs: it holds its share there again.
fn adopt(state: &mut State, id: &TaskId, worker_id: &str) {
    let (Some(task), Some(worker)) =
        (state.tasks.get_mut(id.as_str()), state.workers.get_mut(worker_id))
    else {
        return;
    };
    let Ok(agent) = state.agents.get_mut(&task.agent) else { return };
    agent.running += 1;
    worker.running.insert(id.clone());
    *worker.running_per_agent.entry(task.agent.clone()).or_default() += 1;
    worker.free.sub(&agent.spec.resources);
    task.reserved = agent.spec.resources;
    task.worker = Some(worker_id.to_owned());
}

/// The worker on the mesh hosting `agent` (for `context_id`), its actor placed there first
/// if it was not.
fn locate_in(
    state: &mut State,
    agent: &str,
    context_id: &str,
) -> std::result::Result<MeshPeer, String> {
    let spec = match state.agents.get(agent) {
        Ok(entry) => entry.spec.clone(),
        Err(e) => return Err(e.to_string()),
    };
    let context = context_worker(state, agent, context_id);
    let worker_id = scheduler::locate(&spec, &state.workers, context.as_deref())?.to_owned();
    if !context_id.is_empty() {
        state.context_workers.insert((agent.to_owned(), context_id.to_owned()), worker_id.clone());
    }
    let (Ok(entry), Some(worker)) = (state.agents.get(agent), state.workers.get_mut(&worker_id))
    else {
        return Err(format!("agent {agent:?} has no worker"));
    };
    place_actor(worker, &entry.spec, entry.version);
    let address = worker.registration.mesh.clone().unwrap_or_default();
    Ok(MeshPeer { worker_id, address })
}

/// Tells every worker on the mesh who is on it (itself included), after a join or a leave.
fn announce_mesh(state: &State) {
    let peers: Vec<MeshPeer> = state
        .workers
        .iter()
        .filter_map(|w| {
            let address = w.registration.mesh.clone()?;
            Some(MeshPeer { worker_id: w.id.clone(), address })
        })
        .collect();
    debug!(peers = peers.len(), "mesh peers announced");
    for w in state.workers.iter().filter(|w| w.registration.mesh.is_some()) {
        let _ = w.commands.send(Command::MeshPeers(peers.clone()));
    }
}

/// Sends the agent's spec to a worker that does not host this version of it yet.
fn place_actor(worker: &mut WorkerEntry, spec: &Arc<AgentSpec>, version: u64) {
    if worker.placed.get(&spec.name) != Some(&version) {
        worker.placed.insert(spec.name.clone(), version);
        let _ = worker.commands.send(Command::PlaceActor { spec: spec.clone(), version });
    }
}

fn context_worker(state: &State, agent: &str, context_id: &str) -> Option<String> {
    if context_id.is_empty() {
        return None;
    }
    state.context_workers.get(&(agent.to_owned(), context_id.to_owned())).cloned()
}

/// Puts a task on a worker: reserves its share, logs `Scheduled`, sends the commands.
fn dispatch(state: &mut State, id: &TaskId, worker_id: &str) {
    let (Some(task), Some(worker)) =
        (state.tasks.get_mut(id.as_str()), state.workers.get_mut(worker_id))
    else {
        return;
    };
    let Ok(agent) = state.agents.get_mut(&task.agent) else {
        return;
    };
    let spec = agent.spec.clone();
    place_actor(worker, &spec, agent.version);
    agent.running += 1;
    worker.running.insert(id.clone());
    *worker.running_per_agent.entry(spec.name.clone()).or_default() += 1;
    worker.free.sub(&spec.resources);
    worker.tasks_assigned += 1;
    task.reserved = spec.resources;
    task.worker = Some(worker_id.to_owned());
    let _ = worker.commands.send(Command::RunTask(TaskAssignment {
        task_id: id.clone(),
        agent: task.agent.clone(),
        attempt: task.attempt,
        input: task.input.to_string(),
        context_id: task.context_id.clone(),
        options: task.options.clone(),
        depth: task.depth,
    }));
    task.push(EventKind::Scheduled { worker_id: worker_id.to_owned() }, now_us());
    if !task.context_id.is_empty() {
        if state.context_workers.len() >= MAX_CONTEXT_AFFINITY {
            state.context_workers.clear();
        }
        state
            .context_workers
            .insert((task.agent.clone(), task.context_id.clone()), worker_id.to_owned());
    }
    debug!(task_id = %id, worker_id, attempt = task.attempt, "task scheduled");
}

/// Frees what the running attempt of a task holds on its worker.
fn release(state: &mut State, id: &TaskId) {
    let Some(task) = state.tasks.get_mut(id.as_str()) else { return };
    let Some(worker_id) = task.worker.take() else { return };
    if let Ok(agent) = state.agents.get_mut(&task.agent) {
        agent.running = agent.running.saturating_sub(1);
    }
    if let Some(worker) = state.workers.get_mut(&worker_id)
        && worker.running.remove(id)
    {
        worker.free.add(&task.reserved);
        if let Some(n) = worker.running_per_agent.get_mut(&task.agent) {
            *n = n.saturating_sub(1);
        }
    }
    // Keep the worker id for GetTask: the task ran there.
    task.worker = Some(worker_id);
}

/// Ends a task with a terminal event.
fn finish(state: &mut State, id: &TaskId, kind: EventKind) {
    release(state, id);
    let Some(task) = state.tasks.get_mut(id.as_str()) else { return };
    task.push(kind, now_us());
    let final_state = task.state;
    debug!(task_id = %id, state = final_state.as_str(), "task finished");
    ended(state, id, final_state);
}

/// Cancels a task: on its worker, or at once when it is queued.
fn cancel_in(state: &mut State, id: &TaskId, reason: &str) {
    let Some(task) = state.tasks.get_mut(id.as_str()) else { return };
    if task.state.is_terminal() || task.cancel_requested {
        return;
    }
    task.cancel_requested = true;
    match task.worker.clone() {
        Some(worker) => {
            if let Some(w) = state.workers.get(&worker) {
                let _ = w
                    .commands
                    .send(Command::CancelTask { task_id: id.clone(), reason: reason.to_owned() });
            }
        }
        None => {
            state.queue.retain(|q| q != id);
            finish(state, id, EventKind::Canceled { reason: reason.to_owned() });
        }
    }
    info!(task_id = %id, reason, "task cancel requested");
}

/// Retires a task that reached `final_state`: a task some agent called as a tool answers
/// it, and the tasks it called itself are no longer needed.
fn ended(state: &mut State, id: &TaskId, final_state: TaskState) {
    let Some(task) = state.tasks.get(id.as_str()) else { return };
    for child in task.children.clone() {
        cancel_in(state, &child, "the task that called it ended");
    }
    let Some(task) = state.tasks.get(id.as_str()) else { return };
    if let Some((parent, call_id)) = task.parent.clone() {
        let (output, is_error) = match final_state {
            TaskState::Completed => (task.output.clone(), false),
            TaskState::Canceled => (format!("agent {} was canceled", task.agent), true),
            _ => (format!("agent {} failed: {}", task.agent, task.error), true),
        };
        reply_to_call(state, &parent, call_id, output, is_error);
    }
    state.tasks.finished(id, final_state);
}

/// Sends the result of a tool call to the worker running the calling task (if it still is).
fn reply_to_call(state: &State, task_id: &TaskId, call_id: String, output: String, is_error: bool) {
    let Some(task) = state.tasks.get(task_id.as_str()) else { return };
    if task.state.is_terminal() {
        return;
    }
    let Some(worker) = task.worker.as_deref().and_then(|w| state.workers.get(w)) else {
        return;
    };
    let _ = worker.commands.send(Command::ToolReply {
        task_id: task_id.clone(),
        call_id,
        output,
        is_error,
    });
}

/// Runs the agent a task called as a tool as a sub-task of it; its result goes back to the
/// caller's worker when it ends. Calls of names that are not among the caller's tools are
/// the worker's to answer.
fn call_agent(
    state: &mut State,
    limits: &Limits,
    caller: &TaskId,
    call_id: String,
    name: &str,
    arguments: &str,
) {
    let Some(task) = state.tasks.get(caller.as_str()) else { return };
    let Ok(agent) = state.agents.get(&task.agent) else { return };
    if !agent.spec.tools.iter().any(|t| t == name) {
        return;
    }
    let depth = task.depth + 1;
    let refused = if depth > MAX_TOOL_DEPTH {
        Some(format!(
            "agent {name} not called: agents called agents {MAX_TOOL_DEPTH} deep, the most allowed"
        ))
    } else {
        let sub = NewTask {
            agent: name.to_owned(),
            input: fleet_proto::call_input(arguments),
            ..Default::default()
        };
        match submit_in(state, limits, sub, None, Some((caller.clone(), call_id.clone(), depth))) {
            Ok(id) => {
                debug!(task_id = %id, caller = %caller, agent = name, "agent called as a tool");
                state.calls_relayed += 1;
                if let Some(caller) = state.tasks.get_mut(caller.as_str()) {
                    caller.children.push(id);
                }
                None
            }
            Err(e) => Some(format!("agent {name} not called: {e}")),
        }
    };
    if let Some(error) = refused {
        reply_to_call(state, caller, call_id, error, true);
    }
}

/// Retries or fails the tasks that were running on a lost worker.
fn fail_over(state: &mut State, worker: WorkerEntry, reason: &str) {
    let mut retry = Vec::new();
    for id in worker.running {
        if let Some(task) = state.tasks.get(id.as_str())
            && let Ok(agent) = state.agents.get_mut(&task.agent)
        {
            agent.running = agent.running.saturating_sub(1);
        }
        if lost_attempt(state, &id, &worker.id, reason) {
            retry.push(id);
        }
    }
    // Retries go first: they were accepted before anything still queued.
    for id in retry.into_iter().rev() {
        state.queue.push_front(id);
    }
    state.context_workers.retain(|_, w| *w != worker.id);
}

/// A task's attempt on `worker` is lost: it is retried (true: the caller queues it) while
/// its agent allows, canceled if that was asked, failed otherwise.
fn lost_attempt(state: &mut State, id: &TaskId, worker: &str, reason: &str) -> bool {
    let Some(task) = state.tasks.get_mut(id.as_str()) else { return false };
    let max_retries = state.agents.get(&task.agent).map(|a| a.spec.max_retries).unwrap_or(0);
    let failed_attempt = task.attempt;
    if task.cancel_requested {
        task.push(
            EventKind::Canceled { reason: format!("canceled; worker {worker} lost: {reason}") },
            now_us(),
        );
    } else if failed_attempt <= max_retries {
        task.push(
            EventKind::Retrying {
                reason: format!("worker {worker} lost: {reason}"),
                failed_attempt,
            },
            now_us(),
        );
        task.attempt += 1;
        task.worker = None;
        return true;
    } else {
        let error = format!(
            "worker {worker} lost while running the task ({reason}); attempt {failed_attempt} of {}",
            max_retries + 1
        );
        task.push(EventKind::Failed { error, worker_id: worker.to_owned() }, now_us());
    }
    let final_state = task.state;
    ended(state, id, final_state);
    false
}

/// Places queued tasks on free capacity, oldest first.
fn drain_queue(state: &mut State) {
    let mut index = 0;
    let mut waited = 0;
    while index < state.queue.len() && waited < QUEUE_SCAN_LIMIT {
        if !state.workers.iter().any(WorkerEntry::has_free_slot) {
            return;
        }
        let id = state.queue[index].clone();
        let Some(task) = state.tasks.get(id.as_str()) else {
            state.queue.remove(index);
            continue;
        };
        let Ok(agent) = state.agents.get(&task.agent) else {
            state.queue.remove(index);
            continue;
        };
        let spec = agent.spec.clone();
        if spec.max_concurrency > 0 && agent.running >= spec.max_concurrency {
            index += 1;
            waited += 1;
            continue;
        }
        let context = context_worker(state, &task.agent, &task.context_id);
        match scheduler::place(&spec, &state.workers, context.as_deref()) {
            Placement::Worker(w) => {
                let w = w.to_owned();
                state.queue.remove(index);
                dispatch(state, &id, &w);
            }
            Placement::Wait => {
                index += 1;
                waited += 1;
            }
            Placement::Never(reason) => {
                state.queue.remove(index);
                let error = format!("no worker can run agent {:?}: {reason}", spec.name);
                finish(state, &id, EventKind::Failed { error, worker_id: String::new() });
            }
        }
    }
}

/// In-process workers join the cluster directly (see `fleet_proto::local`).
impl LocalHead for Cluster {
    fn join(
        &self,
        registration: Registration,
    ) -> (u64, Duration, mpsc::UnboundedReceiver<Command>) {
        let (connection, commands, _) = self.worker_joined(registration, "in-process".to_owned());
        (connection, self.limits.heartbeat_interval, commands)
    }

    fn heartbeat(&self, worker_id: &str, connection: u64, beat: Heartbeat) {
        Cluster::heartbeat(self, worker_id, connection, beat);
    }

    fn events(&self, worker_id: &str, connection: u64, events: Vec<TaskEvent>) {
        self.worker_events(worker_id, connection, events);
    }

    fn leave(&self, worker_id: &str, connection: u64, reason: &str) {
        self.worker_lost(worker_id, connection, reason);
    }
}

//! The head's state machine: agents, workers, tasks and the queue behind one lock, and every
//! transition between them (submit, dispatch, worker events, worker loss, cancel, retry).
//!
//! One `parking_lot` mutex guards it all: each operation is short and non-blocking (channel
//! sends and store appends never wait), so a single lock is both fast and easy to reason
//! about. [`Cluster`] is the handle the front doors share; its methods live by concern:
//! `submit` (agents and tasks in, following and canceling), `views` (snapshots and queries),
//! `membership` (workers joining, sending events, leaving), `calls` (agents calling agents,
//! mesh lookups, topics), `lifecycle` (a task's transitions on `State`), `durable` (replay
//! from the store, events out once stored), `inspect` (what the inspector's pages show).
//! `tests` exercises `State` directly.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::local::LocalHead;
use fleet_proto::{
    AgentSpec, Command, ErrorKind, EventKind, Heartbeat, LoadedModel, LocateRequest, MeshPeer,
    Registration, TaskEvent, TaskId, TaskOptions, TaskState, TopicMessage, now_us,
};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::agents::{AgentRegistry, Registered};
use crate::auth::Principal;
use crate::config::HeadConfig;
use crate::metrics::TaskMetrics;
use crate::scheduler::{self, Affinity, Placement, Prefixes};
use crate::store::{Commit, Journal, Restored};
use crate::tasks::{Delivery, Subscriber, Subscription, TaskEntry, TaskTable, subscriber};
use crate::tools::HostedTools;
use crate::topics::{PublishOutcome, TopicRelays};
use crate::workers::{CommandSender, CommandStream, WorkerEntry, WorkerRegistry};
use crate::{Error, Result};

mod call_graph;
mod calls;
mod contexts;
mod durable;
mod follow;
mod heartbeats;
mod hosted;
mod input;
mod inspect;
mod lifecycle;
mod membership;
mod mesh_grace;
mod placement;
mod queue;
mod roster;
mod submit;
mod timeline;
mod topics;
mod traced;
mod views;

pub use follow::Follow;
use queue::TaskQueue;
pub use topics::Follower;

use calls::*;
// The transitions and the placement, for the modules of `Cluster`'s methods.
pub use call_graph::{CallCount, CallGraph, Callee, GraphCall, GraphTask, MAX_GRAPH_TASKS};
pub use hosted::{ToolCalls, ToolHost};
pub use inspect::{AgentFigures, Moments, Percentiles, Recent, SubTask, TaskDetail};
use lifecycle::{
    actor_key, adopt, cancel_in, dispatch, fail_over, finish, lost_attempt, never_reached,
    send_again, take_key, waits_for_key,
};
use placement::{context_worker, dequeue, drain_queue, enqueue, enqueue_first, place_actor};
pub use roster::{Roster, WorkerGroup, WorkerGroups, WorkerOrder, WorkerQuery};
pub use timeline::{AttemptEnd, Bar, Density, Timeline, TimelineQuery, TimelineRow, TimelineRows};

use submit::*;
pub use views::{
    AgentInfo, AgentLoad, ClusterStatus, Exchange, ModelInfo, NewTask, TaskFilter, TaskInfo,
    TaskPage, WorkerInfo,
};

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

/// The limits the state machine enforces.
#[derive(Debug, Clone)]
struct Limits {
    heartbeats: heartbeats::HeartbeatPace,
    max_queued_tasks: usize,
    max_queued_bytes: usize,
    max_input_bytes: usize,
    subscriber_buffer: usize,
}

struct State {
    agents: AgentRegistry,
    workers: WorkerRegistry,
    tasks: TaskTable,
    queue: TaskQueue,
    /// (agent, context id) -> the worker that ran its last turn.
    context_workers: HashMap<(String, String), String>,
    /// The turns of each context, handed with its next task; stored.
    conversations: crate::conversations::Conversations,
    /// The states of actors (Python agents' `ctx.state`) and which task holds each key;
    /// stored.
    actors: crate::actor_state::Actors,
    /// Whether placement prefers workers whose prefix caches likely hold a task's prompt
    /// start ([`scheduler::Prefixes`]).
    prefix_affinity: bool,
    /// Agent calls run as sub-tasks here (callers not on the mesh).
    calls_relayed: u64,
    /// Lookups answered for callers on the mesh.
    agents_located: u64,
    /// Which agents called which, for the inspector.
    call_counts: call_graph::CallCounts,
    topics: TopicRelays,
    /// Mesh workers whose stream broke, still on the mesh's peer lists for the worker
    /// timeout (they may be back in a moment).
    mesh_grace: mesh_grace::MeshGrace,
    /// The workers outnumber what the heartbeat rate allows at the longest interval (said
    /// once in the log, until they no longer do).
    heartbeats_saturated: bool,
    /// Tools client processes host, and their calls waiting for answers.
    tools: HostedTools,
    /// Calls of hosted functions announced by workers, sent to their hosts once their
    /// `ToolCall` events are stored (with a store): a call is made only once it is on
    /// record, so a head restarted before the record never made it, and a worker sending
    /// the event again after the restart does not make it twice. Each with its event's
    /// number and attempt.
    calls_to_route: Vec<(u64, u32, ToolCallSeen)>,
    /// Each worker's incarnation and the number of the last of its events applied: a
    /// rejoining worker sends the ones after it again (see the worker's outbox).
    worker_seqs: HashMap<String, (u64, u64)>,
    /// Each worker's incarnation and the number of the last of its events on record (with
    /// a store): a rejoining worker keeps, and sends again, the events after it, which the
    /// head may have taken but a crash could still lose.
    worker_stored: HashMap<String, (u64, u64)>,
    /// Tasks that ran on a worker when the head restarted, by worker, until it rejoins
    /// (and they are adopted) or `orphans_until` passes (and they are retried).
    orphans: HashMap<String, Vec<TaskId>>,
    orphans_until: Option<Instant>,
    /// The end of this head's leader lease (a shared store); none: it always leads.
    lease: Option<Arc<LeaseDeadline>>,
    /// Push configs restored from the store, until the A2A front door takes them.
    stored_push: Vec<(TaskId, fleet_proto::pb::StoredPushConfigs)>,
    /// Counted at the transitions, read by `/metrics`.
    metrics: Arc<TaskMetrics>,
    /// Each tenant's quotas, and its tokens this minute.
    quotas: crate::quotas::Quotas,
}

impl State {
    /// Whether this head may put tasks on workers: not past the end of its lease, when
    /// another head may lead (it is stopping then; its queue is the next leader's).
    fn leading(&self) -> bool {
        self.lease.as_ref().is_none_or(|lease| !lease.passed())
    }
}

/// Until when a head on a shared store leads: moved on by each renewal of its lease.
#[derive(Debug)]
pub struct LeaseDeadline {
    base: Instant,
    until_us: std::sync::atomic::AtomicU64,
}

impl LeaseDeadline {
    pub fn new(until: Instant) -> Arc<Self> {
        let base = Instant::now();
        let until_us = (until.saturating_duration_since(base).as_micros() as u64).into();
        Arc::new(Self { base, until_us })
    }

    /// The lease now lasts until `until`.
    pub fn extend(&self, until: Instant) {
        let us = until.saturating_duration_since(self.base).as_micros() as u64;
        self.until_us.fetch_max(us, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn passed(&self) -> bool {
        let now = self.base.elapsed().as_micros() as u64;
        now >= self.until_us.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The head's cluster state, shared by every API handler.
pub struct Cluster {
    state: Mutex<State>,
    /// Topics' logs and consumer groups; a lock of their own, so that publishing and
    /// following never wait for the task state's.
    topic_log: Arc<Mutex<crate::topics::TopicLog>>,
    limits: Limits,
    /// The same as the state's, read without its lock.
    metrics: Arc<TaskMetrics>,
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
        let store = crate::store::open(&config.store, config.fsync).map_err(Error::Store)?;
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
            let sealer = sealer(config)?;
            let snapshot = store.load().map_err(Error::Store)?;
            let restored =
                Restored::decode(snapshot, &what, sealer.as_ref()).map_err(Error::Store)?;
            let weak = Arc::downgrade(&cluster);
            let on_commit = Box::new(move |commit: Commit| {
                if let Some(cluster) = weak.upgrade() {
                    cluster.committed(commit);
                }
            });
            let journal = Journal::start(store, sealer, on_commit)?;
            cluster.restore(journal, restored, config)?;
        }
        Ok(cluster)
    }

    /// A cluster with the config's limits and agents, keeping nothing.
    pub fn new(config: &HeadConfig) -> Result<Self> {
        let mut agents = AgentRegistry::new(config.max_agents);
        for spec in &config.agents {
            agents.register(spec.clone())?;
        }
        let metrics = Arc::new(TaskMetrics::default());
        Ok(Self {
            state: Mutex::new(State {
                agents,
                workers: WorkerRegistry::default(),
                tasks: TaskTable::new(config.max_retained_tasks, config.max_retained_bytes),
                queue: TaskQueue::default(),
                context_workers: HashMap::new(),
                conversations: Default::default(),
                actors: Default::default(),
                prefix_affinity: config.prefix_affinity,
                calls_relayed: 0,
                agents_located: 0,
                call_counts: Default::default(),
                topics: TopicRelays::default(),
                tools: HostedTools::default(),
                worker_seqs: HashMap::new(),
                worker_stored: HashMap::new(),
                orphans: HashMap::new(),
                orphans_until: None,
                lease: None,
                stored_push: Vec::new(),
                metrics: metrics.clone(),
                quotas: crate::quotas::Quotas::new(&config.tenants),
                calls_to_route: Vec::new(),
                mesh_grace: Default::default(),
                heartbeats_saturated: false,
            }),
            metrics,
            topic_log: Arc::new(Mutex::new(crate::topics::TopicLog::new(config.topics.clone()))),
            limits: Limits {
                heartbeats: heartbeats::HeartbeatPace::new(
                    config.heartbeat_interval,
                    config.max_heartbeats_per_second,
                    config.worker_timeout,
                ),
                max_queued_tasks: config.max_queued_tasks,
                max_queued_bytes: config.max_queued_bytes,
                max_input_bytes: config.max_input_bytes,
                subscriber_buffer: config.subscriber_buffer,
            },
        })
    }

    /// Calls `hook` with the id of every task retention evicts from now on.
    pub fn on_task_evicted(&self, hook: crate::tasks::EvictionHook) {
        self.state.lock().tasks.on_evicted(hook);
    }

    /// What the cluster counts as tasks move, for `/metrics`.
    pub(crate) fn task_metrics(&self) -> &TaskMetrics {
        &self.metrics
    }

    /// A new subscriber with the configured buffer.
    pub fn subscriber(&self) -> (Subscriber, Subscription) {
        subscriber(self.limits.subscriber_buffer)
    }
}

/// What seals the secrets a store keeps: the operator's key (`--secrets-key-file`), else a
/// file store's own (`secrets.key` beside `head.redb`); none for a shared store without one.
fn sealer(config: &HeadConfig) -> Result<Option<crate::store::Sealer>> {
    use crate::store::{Sealer, StoreConfig};
    let sealer = match (&config.secrets_key_file, &config.store) {
        (Some(path), _) => Some(Sealer::read(path)),
        (None, StoreConfig::Dir(dir)) => Some(Sealer::in_dir(dir)),
        (None, _) => None,
    };
    sealer.transpose().map_err(Error::InvalidConfig)
}

/// The task, if `who` sees it: another tenant's is as unknown as one that never was.
fn visible<'a>(state: &'a State, who: &Principal, task_id: &str) -> Result<&'a TaskEntry> {
    state
        .tasks
        .get(task_id)
        .filter(|t| who.sees(&t.tenant))
        .ok_or_else(|| Error::UnknownTask(task_id.to_owned()))
}

/// [`visible`], to change the task.
fn visible_mut<'a>(
    state: &'a mut State,
    who: &Principal,
    task_id: &str,
) -> Result<&'a mut TaskEntry> {
    state
        .tasks
        .get_mut(task_id)
        .filter(|t| who.sees(&t.tenant))
        .ok_or_else(|| Error::UnknownTask(task_id.to_owned()))
}

/// In-process workers join the cluster directly (see `fleet_proto::local`).
impl LocalHead for Cluster {
    fn join(&self, registration: Registration) -> (u64, Duration, mpsc::Receiver<Command>) {
        // Cut off, its channel closes after what was queued: the worker sees its commands
        // end and joins again.
        let id = registration.worker_id.clone();
        let (connection, commands, _) = self.worker_joined(registration, "in-process".to_owned());
        let rx = commands.into_receiver().unwrap_or_else(|| mpsc::channel(1).1);
        (connection, self.heartbeat_interval_of(&id), rx)
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

    fn store_topic_message(
        &self,
        worker_id: &str,
        connection: u64,
        request: fleet_proto::PublishRequest,
        seq: u64,
        more: Vec<String>,
    ) {
        self.store_agent_message(worker_id, connection, request, seq, more);
    }

    fn stored(&self) -> futures::future::BoxFuture<'static, ()> {
        let barrier = self.state.lock().tasks.journal().map(crate::store::Journal::stored);
        Box::pin(async move {
            if let Some(barrier) = barrier {
                // An error: the store stopped, and nothing more will be stored.
                let _ = barrier.await;
            }
        })
    }
}

#[cfg(test)]
mod tests;

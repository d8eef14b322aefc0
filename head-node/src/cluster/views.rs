//! What the cluster shows of itself: snapshots of tasks, agents, workers and models for
//! the front doors (GetTask, ListTasks, cluster status, `/v1/models`), and their queries.

use super::*;

/// A task to submit.
#[derive(Debug, Clone, Default)]
pub struct NewTask {
    pub agent: String,
    pub input: String,
    pub context_id: String,
    /// History, sampling overrides or texts to embed (the OpenAI API sets these).
    pub options: Option<Arc<TaskOptions>>,
    /// A W3C `traceparent` the task's trace continues (from the request's header or gRPC
    /// metadata; empty: a new trace).
    pub traceparent: String,
    /// The client's key for this submission (empty: none): the task's id is made from it,
    /// so the same key sent again finds the task it made (see `Cluster::submit_keyed`).
    pub idempotency_key: String,
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
    /// The tenant whose task it is.
    pub tenant: Arc<str>,
    pub output: String,
    /// A thinking model's reasoning before its answer (not part of `output`).
    pub reasoning: String,
    /// The files and data it returned beside its text.
    pub artifacts: Vec<Arc<fleet_proto::Artifact>>,
    pub error: String,
    pub events: u64,
    pub submitted_at_us: u64,
    pub finished_at_us: u64,
    pub usage: fleet_proto::Usage,
    /// The answer follows a JSON output format (the agent's output schema or the task's).
    pub structured: bool,
    /// The task that called this one as a tool.
    pub parent: Option<TaskId>,
    /// What the task asked its client, and the replies, in order (of its latest attempt).
    pub exchanges: Vec<Exchange>,
}

/// A question (or a request for approval) a task asked its client, and the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub prompt: String,
    /// `None` while the task waits.
    pub reply: Option<String>,
    pub rejected: bool,
}

/// The exchanges with the client in `events` (those of the last attempt).
fn exchanges(events: &[Arc<fleet_proto::TaskEvent>]) -> Vec<Exchange> {
    let mut exchanges = Vec::new();
    for e in events {
        match &e.kind {
            EventKind::InputRequired { prompt, .. } => {
                exchanges.push(Exchange { prompt: prompt.clone(), reply: None, rejected: false });
            }
            EventKind::InputReceived { text, rejected, .. } => {
                if let Some(last) = exchanges.last_mut() {
                    last.reply = Some(text.clone());
                    last.rejected = *rejected;
                }
            }
            EventKind::Retrying { .. } => exchanges.clear(),
            _ => {}
        }
    }
    exchanges
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
            tenant: t.tenant.clone(),
            output: t.output(),
            reasoning: t.reasoning(),
            artifacts: t.artifacts(),
            error: t.error.clone(),
            events: t.events.len() as u64,
            submitted_at_us: t.submitted_at_us,
            finished_at_us: t.finished_at_us,
            usage: t.usage,
            structured: t.options.as_ref().is_some_and(|o| {
                matches!(
                    o.sampling.format,
                    Some(
                        fleet_proto::OutputFormat::JsonObject
                            | fleet_proto::OutputFormat::JsonSchema(_)
                    )
                )
            }),
            parent: t.parent.as_ref().map(|(id, _)| id.clone()),
            exchanges: exchanges(&t.events),
        }
    }
}

impl TaskInfo {
    /// The task as its first `seq` events left it: what its subscribers have been told
    /// when later events are not stored yet. (The same fold as `TaskEntry`'s own, over a
    /// prefix of the log.)
    pub fn as_of(t: &TaskEntry, seq: u64) -> Self {
        let mut info = Self::from(t);
        let Some(events) = t.events.get(..seq as usize).filter(|e| e.len() < t.events.len()) else {
            return info;
        };
        (info.state, info.attempt, info.events) = (TaskState::Queued, 1, seq);
        info.output.clear();
        info.reasoning.clear();
        info.artifacts.clear();
        info.error.clear();
        info.worker_id.clear();
        (info.usage, info.finished_at_us) = (Default::default(), 0);
        info.exchanges = exchanges(events);
        for e in events {
            if let Some(state) = e.kind.state_after() {
                info.state = state;
            }
            info.attempt = e.attempt;
            match &e.kind {
                EventKind::TextDelta { text, .. } => info.output.push_str(text),
                EventKind::ReasoningDelta { text } => info.reasoning.push_str(text),
                EventKind::Artifact(artifact) => info.artifacts.push(artifact.clone()),
                EventKind::Completed { usage } => info.usage = *usage,
                EventKind::Failed { error, .. } => info.error.clone_from(error),
                EventKind::Scheduled { worker_id } => info.worker_id.clone_from(worker_id),
                EventKind::Retrying { failed_attempt, .. } => {
                    info.output.clear();
                    info.reasoning.clear();
                    info.artifacts.clear();
                    info.attempt = failed_attempt + 1;
                }
                _ => {}
            }
            if e.kind.is_terminal() {
                info.finished_at_us = e.timestamp_us;
            }
        }
        info
    }
}

impl From<&crate::agents::AgentEntry> for AgentInfo {
    fn from(e: &crate::agents::AgentEntry) -> Self {
        // Views leave the cluster (ListAgents, cards, /v1/models): no secrets in them.
        let spec = if e.spec.has_secrets() { Arc::new(e.spec.redacted()) } else { e.spec.clone() };
        Self {
            spec,
            version: e.version,
            changed_at: e.changed_at,
            tasks_submitted: e.tasks_submitted,
        }
    }
}

/// One page of ListTasks.
#[derive(Debug, Clone, Default)]
pub struct TaskPage {
    pub tasks: Vec<TaskInfo>,
    /// The task number to continue after, when there are more.
    pub next_after: Option<u64>,
    /// Tasks matching the filter, on every page (with a worker or a search, among those a
    /// page looks at: see `complete`).
    pub total: usize,
    /// False when a listing by worker or search stopped looking before the oldest task:
    /// `total` is then a lower bound, and `next_after` continues the search.
    pub complete: bool,
}

/// A registered agent, for listing.
#[derive(Debug, Clone)]
pub struct AgentInfo {
    pub spec: Arc<AgentSpec>,
    pub version: u64,
    /// When the head last took a new spec for it.
    pub changed_at: std::time::SystemTime,
    pub tasks_submitted: u64,
}

impl AgentInfo {
    /// What the agent does, for the cards and tool lists clients read: its description,
    /// else its name and model.
    pub fn description(&self) -> String {
        let spec = &self.spec;
        if spec.description.is_empty() {
            format!("agent {} on model {}", spec.name, spec.model)
        } else {
            spec.description.clone()
        }
    }
}

/// One agent's tasks now, for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentLoad {
    pub agent: String,
    pub running: u32,
    pub queued: usize,
}

/// One worker, for the cluster status.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    pub registration: Registration,
    pub address: String,
    pub free: fleet_proto::Resources,
    pub running_tasks: u32,
    /// Calls from the mesh it runs, as its last heartbeat said.
    pub mesh_calls: u32,
    /// It is stopping: it finishes its tasks and takes no new ones.
    pub draining: bool,
    pub tasks_assigned: u64,
    pub models_loaded: Vec<String>,
    /// Loaded models with their engines' figures.
    pub loaded: Vec<LoadedModel>,
    pub actors: u32,
    pub last_heartbeat_ago: Duration,
}

/// The cluster's figures, with `workers` as its list of them.
fn status_of(state: &State, workers: Vec<WorkerInfo>) -> ClusterStatus {
    ClusterStatus {
        running_tasks: state.workers.iter().map(|w| w.running.len()).sum(),
        workers,
        agents: state.agents.len(),
        queued_tasks: state.queue.len(),
        retained_tasks: state.tasks.len(),
        counters: state.tasks.counters,
        calls_relayed: state.calls_relayed,
        agents_located: state.agents_located,
    }
}

/// A worker as the views show it.
pub(super) fn worker_info(w: &WorkerEntry, now: Instant) -> WorkerInfo {
    WorkerInfo {
        registration: w.registration.clone(),
        address: w.address.clone(),
        free: w.free,
        running_tasks: w.running.len() as u32,
        mesh_calls: w.heartbeat.mesh_calls,
        draining: w.draining,
        tasks_assigned: w.tasks_assigned,
        models_loaded: w.heartbeat.models_loaded.clone(),
        loaded: w.heartbeat.models.clone(),
        actors: w.heartbeat.actors,
        last_heartbeat_ago: now.saturating_duration_since(w.last_heartbeat),
    }
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

pub use crate::tasks::TaskFilter;

impl Cluster {
    /// The agents `who` sees: its tenant's and the shared ones (all, for an admin).
    pub fn agents(&self, who: &Principal) -> Vec<AgentInfo> {
        let state = self.state.lock();
        let mut agents: Vec<_> =
            state.agents.iter().filter(|a| who.sees_agent(&a.spec)).map(AgentInfo::from).collect();
        agents.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        agents
    }

    /// The agents anyone may see, without a credential: those marked public.
    pub fn public_agents(&self) -> Vec<AgentInfo> {
        let state = self.state.lock();
        let mut agents: Vec<_> =
            state.agents.iter().filter(|a| a.spec.public).map(AgentInfo::from).collect();
        agents.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        agents
    }

    /// One agent, if it is registered and `who` sees it.
    pub fn agent(&self, who: &Principal, name: &str) -> Option<AgentInfo> {
        let state = self.state.lock();
        state.agents.get(name).ok().filter(|a| who.sees_agent(&a.spec)).map(AgentInfo::from)
    }

    /// Whether agent `name` takes files of any type as they are: a Python agent, or a model
    /// agent with a tool that takes files (else a model reads only text).
    pub fn takes_files(&self, name: &str) -> bool {
        let state = self.state.lock();
        let Ok(agent) = state.agents.get(name) else { return false };
        super::submit::takes_files(&state, &agent.spec)
    }

    /// A task as its first `seq` events left it (see [`TaskInfo::as_of`]).
    pub fn task_as_of(&self, who: &Principal, task_id: &str, seq: u64) -> Result<TaskInfo> {
        let state = self.state.lock();
        visible(&state, who, task_id).map(|t| TaskInfo::as_of(t, seq))
    }

    pub fn task(&self, who: &Principal, task_id: &str) -> Result<TaskInfo> {
        let state = self.state.lock();
        visible(&state, who, task_id).map(TaskInfo::from)
    }

    /// Tasks in submission order (or newest first) matching `filter`, one page of them;
    /// only `who`'s tenant's, unless an admin (who may name a tenant).
    pub fn list_tasks(&self, who: &Principal, filter: &TaskFilter) -> TaskPage {
        let mut state = self.state.lock();
        let scoped;
        let filter = if who.is_admin() {
            filter
        } else {
            scoped = TaskFilter { tenant: Some(who.tenant().to_owned()), ..filter.clone() };
            &scoped
        };
        let listed = state.tasks.list(filter);
        TaskPage {
            tasks: listed.tasks.into_iter().map(TaskInfo::from).collect(),
            next_after: listed.next_after,
            total: listed.total,
            complete: listed.complete,
        }
    }

    /// Every agent's running and queued tasks, by name.
    pub fn agent_loads(&self) -> Vec<AgentLoad> {
        let state = self.state.lock();
        let mut queued: HashMap<&str, usize> = HashMap::new();
        for id in state.queue.iter() {
            if let Some(task) = state.tasks.get(id.as_str()) {
                *queued.entry(task.agent.as_str()).or_default() += 1;
            }
        }
        let mut loads: Vec<AgentLoad> = state
            .agents
            .iter()
            .map(|a| AgentLoad {
                agent: a.spec.name.clone(),
                running: a.running,
                queued: queued.get(a.spec.name.as_str()).copied().unwrap_or(0),
            })
            .collect();
        loads.sort_by(|a, b| a.agent.cmp(&b.agent));
        loads
    }

    /// The agents `who` sees (its tenant's and shared ones) with its tenant's tasks
    /// waiting and running on each: a tenant's share of [`agent_loads`](Self::agent_loads).
    pub fn tenant_agent_loads(&self, who: &Principal) -> Vec<AgentLoad> {
        let mut state = self.state.lock();
        let state = &mut *state;
        let (agents, tasks, tenant) = (&state.agents, &mut state.tasks, who.tenant());
        let mut loads: Vec<AgentLoad> = agents
            .iter()
            .filter(|a| who.sees_agent(&a.spec))
            .map(|a| {
                let name = a.spec.name.as_str();
                let mut count = |states: &[TaskState]| tasks.count_of(tenant, name, states);
                AgentLoad {
                    agent: a.spec.name.clone(),
                    running: u32::try_from(count(&crate::quotas::RUNNING)).unwrap_or(u32::MAX),
                    queued: count(&[TaskState::Queued]),
                }
            })
            .collect();
        loads.sort_by(|a, b| a.agent.cmp(&b.agent));
        loads
    }

    /// The status as `who` may see it: all of it for an admin; for anyone else the workers
    /// (the capacity every tenant shares) with its own tenant's agents and tasks, not other
    /// tenants' figures or the mesh's counters.
    pub fn status_for(&self, who: &Principal) -> ClusterStatus {
        let mut status = self.status();
        if !who.is_admin() {
            self.scope_to(who, &mut status);
        }
        status
    }

    /// `status`'s figures for a non-admin: its tenant's agents and tasks only.
    fn scope_to(&self, who: &Principal, status: &mut ClusterStatus) {
        let tenant = who.tenant();
        let mut state = self.state.lock();
        let state = &mut *state;
        status.agents = state.agents.iter().filter(|a| who.sees_agent(&a.spec)).count();
        status.queued_tasks = state.tasks.count(tenant, &[TaskState::Queued]);
        status.running_tasks = state.tasks.count(tenant, &crate::quotas::RUNNING);
        status.retained_tasks = state.tasks.count(tenant, &TaskState::ALL);
        status.counters = state.metrics.totals_of(tenant).1;
        (status.calls_relayed, status.agents_located) = (0, 0);
    }

    pub fn status(&self) -> ClusterStatus {
        let state = self.state.lock();
        let now = Instant::now();
        let mut workers: Vec<_> = state.workers.iter().map(|w| worker_info(w, now)).collect();
        workers.sort_by(|a, b| a.registration.worker_id.cmp(&b.registration.worker_id));
        status_of(&state, workers)
    }

    /// [`Cluster::status_for`] without copying a worker: its `workers` is empty (a page of
    /// them is [`Cluster::roster`]'s), its other figures the same.
    pub fn totals_for(&self, who: &Principal) -> ClusterStatus {
        let mut totals = status_of(&self.state.lock(), Vec::new());
        if !who.is_admin() {
            self.scope_to(who, &mut totals);
        }
        totals
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

    pub fn worker_count(&self) -> usize {
        self.state.lock().workers.len()
    }
}

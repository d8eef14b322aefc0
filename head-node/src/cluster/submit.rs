//! Taking work in: registering agents, validating and accepting tasks (one or many over a
//! multiplexed stream), following and canceling them.

use super::*;

impl Cluster {
    /// Registers (or replaces) an agent as `who`: a user's agents are its tenant's, and
    /// only admins make or replace shared ones (see [`Principal::may_register`]).
    pub fn register_agent(&self, who: &Principal, mut spec: AgentSpec) -> Result<AgentInfo> {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let existing = state.agents.get(&spec.name).ok().map(|a| a.spec.clone());
        who.may_register(&mut spec, existing.as_deref())?;
        if !who.is_admin()
            && let Some(topic) = spec.topics.iter().find(|t| !who.may_use_topic(t))
        {
            return Err(Error::PermissionDenied(format!(
                "topic {topic:?} is not tenant {:?}'s: its topics are named {:?}",
                who.tenant(),
                format!("{}.NAME", who.tenant())
            )));
        }
        if let Some(journal) = state.tasks.journal() {
            journal.check().map_err(Error::StoreUnavailable)?;
            if spec.has_secrets() && !journal.seals() {
                return Err(Error::InvalidAgent(
                    "this head keeps agents in a shared store without a secrets key, so it \
                     takes no api_key: start it with --secrets-key-file (the same file on \
                     every head)"
                        .into(),
                ));
            }
        }
        if state.tools.contains(&spec.name) {
            return Err(Error::InvalidAgent(format!(
                "a hosted tool is named {:?}; tools and agents share one namespace",
                spec.name
            )));
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

    /// Validates and accepts a task; `subscriber` (if any) is attached before its first
    /// event, and told `Accepted { client_ref }` first when a ref is given.
    pub fn submit(
        &self,
        who: &Principal,
        task: NewTask,
        subscriber: Option<(Subscriber, Option<u64>)>,
    ) -> Result<TaskId> {
        self.submit_keyed(who, task, subscriber).map(|(id, _)| id)
    }

    /// [`Cluster::submit`], and whether the task existed already: submitted before under
    /// the same idempotency key (a client sending it again after a broken connection or a
    /// failover). Then nothing new is made, a multiplexed subscriber is told
    /// `Accepted { existing: true }` and no events (it follows the task itself), and any
    /// other subscriber is dropped (the caller watches the task from its first event).
    pub fn submit_keyed(
        &self,
        who: &Principal,
        task: NewTask,
        subscriber: Option<(Subscriber, Option<u64>)>,
    ) -> Result<(TaskId, bool)> {
        who.may_act()?;
        self.validate(&task)?;
        let mut guard = self.state.lock();
        let spec = match guard.agents.get(&task.agent) {
            Ok(agent) if who.sees_agent(&agent.spec) => agent.spec.clone(),
            _ => return Err(Error::UnknownAgent(task.agent)),
        };
        // A tenant's agent runs its tenant's tasks (an admin's too); a shared agent runs
        // each submitter's own.
        let tenant: Arc<str> =
            if spec.tenant.is_empty() { who.tenant().into() } else { spec.tenant.as_str().into() };
        if let Some(id) = submitted_before(&guard, &tenant, &task)? {
            if let Some((sub, Some(client_ref))) = subscriber {
                sub.deliver(Delivery::Accepted { client_ref, task_id: id.clone(), existing: true });
            }
            return Ok((id, true));
        }
        if let Some(journal) = guard.tasks.journal() {
            journal.check().map_err(Error::StoreUnavailable)?;
        }
        let state = &mut *guard;
        state.quotas.admit(&tenant, &mut state.tasks)?;
        submit_in(&mut guard, &self.limits, task, subscriber, None, tenant).map(|id| (id, false))
    }

    /// The name of the agent that serves `model` directly (`model:<id>`), registered on
    /// first use; an error when no live worker has the model.
    pub fn model_agent(&self, who: &Principal, model: &str) -> Result<String> {
        who.may_act()?;
        let mut state = self.state.lock();
        if !state.workers.iter().any(|w| w.has_model(model)) {
            return Err(Error::UnknownModel(model.to_owned()));
        }
        Ok(state.agents.model_agent(model)?.spec.name.clone())
    }

    fn validate(&self, task: &NewTask) -> Result<()> {
        if task.agent.is_empty() {
            return Err(Error::InvalidArgument("agent is empty: name the agent to run".into()));
        }
        if task.idempotency_key.chars().any(char::is_control) {
            // A tenant's keys are qualified with U+001F (see `new_task_id`).
            return Err(Error::InvalidArgument(
                "idempotency_key must not hold control characters (a UUID is plenty)".into(),
            ));
        }
        if task.idempotency_key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
            return Err(Error::InvalidArgument(format!(
                "idempotency_key is {} bytes: at most {MAX_IDEMPOTENCY_KEY_BYTES} (a UUID is plenty)",
                task.idempotency_key.len()
            )));
        }
        let embed = task.options.as_ref().map_or(&[][..], |o| &o.embed[..]);
        // A conversation given whole (OpenAI's, ending in a tool's result) needs no input.
        let history = task.options.as_ref().is_some_and(|o| !o.history.is_empty());
        let files = task.options.as_ref().is_some_and(|o| !o.files.is_empty());
        if task.input.trim().is_empty() && embed.is_empty() && !history && !files {
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
                + o.files.iter().map(fleet_proto::FilePart::size).sum::<usize>()
        });
        let files = task.options.as_ref().map_or(&[][..], |o| &o.files[..]);
        let web = |url: &str| url.starts_with("http://") || url.starts_with("https://");
        if let Some(f) = files.iter().find(|f| !f.url.is_empty() && !web(&f.url)) {
            return Err(Error::InvalidArgument(format!(
                "file {:?}: a file's URL is http:// or https://, not {:?}",
                f.name, f.url
            )));
        }
        if task.input.len() + extra > self.limits.max_input_bytes {
            return Err(Error::InvalidArgument(format!(
                "the input is {} bytes with its history, texts or files, over the limit of {} \
                 bytes (the head's --max-input-bytes)",
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
        if let Some(format) = task.options.as_ref().and_then(|o| o.sampling.format.as_ref()) {
            crate::agents::check_format(format).map_err(Error::InvalidArgument)?;
        }
        if task.context_id.len() > 256 {
            return Err(Error::InvalidArgument("context_id must be at most 256 bytes".into()));
        }
        if task.context_id.chars().any(char::is_control) {
            return Err(Error::InvalidArgument(
                "context_id must not hold control characters".into(),
            ));
        }
        Ok(())
    }

    /// Submits tasks for a multiplexed subscriber: each is acknowledged (`Accepted` before
    /// its events) or refused (`Rejected`) on `sub`. Waits while the subscriber's buffer is
    /// nearly full, so a submitter that does not read is slowed, not cut off. False once the
    /// subscriber is gone.
    pub async fn submit_for(
        &self,
        who: &Principal,
        sub: &Subscriber,
        items: impl IntoIterator<Item = (u64, Result<NewTask>)>,
    ) -> bool {
        for (client_ref, task) in items {
            if !sub.wait_for_room(64).await {
                return false;
            }
            let outcome =
                task.and_then(|task| self.submit(who, task, Some((sub.clone(), Some(client_ref)))));
            if let Err(error) = outcome {
                sub.deliver(Delivery::Rejected { client_ref, error: Arc::new(error) });
            }
        }
        true
    }

    /// Follows tasks for a multiplexed subscriber, each from its `from_seq`: the events
    /// stored so far, then the others as they are stored, on `sub` as a submitted task's
    /// are; a task that cannot be followed comes back as `WatchRefused`. Waits while the
    /// buffer lacks room for a task's backlog (as [`submit_for`](Self::submit_for) does).
    /// False once the subscriber is gone.
    pub async fn watch_for(
        &self,
        who: &Principal,
        sub: &Subscriber,
        watches: impl IntoIterator<Item = (String, u64)>,
    ) -> bool {
        for (task_id, from_seq) in watches {
            // Counted first, delivered under the lock after the wait: events stored
            // between the two only make the wait shorter than it might be.
            let backlog = visible(&self.state.lock(), who, &task_id)
                .map_or(0, |task| task.stored_events_from(from_seq).len());
            if !sub.wait_for_room(backlog + 64).await {
                return false;
            }
            let mut state = self.state.lock();
            match visible_mut(&mut state, who, &task_id) {
                Ok(task) => follow_from(task, sub.clone(), from_seq),
                Err(error) => {
                    sub.deliver(Delivery::WatchRefused { task_id, error: Arc::new(error) });
                }
            }
        }
        true
    }

    /// Waits until a task's submission is stored (at once without a store): a caller that
    /// answers with the task id promises it survives a restart.
    pub async fn stored(&self, task_id: &str) -> Result<()> {
        self.stored_up_to(task_id, 1).await
    }

    /// Returns once the task's event `seq` is stored (or the task is no longer followed).
    pub async fn stored_up_to(&self, task_id: &str, seq: u64) -> Result<()> {
        let mut subscription = self.watch(&Principal::operator(), task_id, seq)?;
        let _ = subscription.rx.recv().await;
        Ok(())
    }

    /// Follows a task from `from_seq`: the events stored so far, then the others as they
    /// are stored.
    pub fn watch(&self, who: &Principal, task_id: &str, from_seq: u64) -> Result<Subscription> {
        let mut state = self.state.lock();
        let task = visible_mut(&mut state, who, task_id)?;
        let backlog = task.stored_events_from(from_seq).len();
        let (sub, subscription) = subscriber(backlog + self.limits.subscriber_buffer);
        follow_from(task, sub, from_seq);
        Ok(subscription)
    }

    /// The task as it is now and its events from here on, taken together so that nothing
    /// falls between them (A2A streams start with the task, then its updates).
    pub fn snapshot_and_watch(
        &self,
        who: &Principal,
        task_id: &str,
    ) -> Result<(TaskInfo, Subscription)> {
        let mut state = self.state.lock();
        let task = visible_mut(&mut state, who, task_id)?;
        let (sub, subscription) = subscriber(self.limits.subscriber_buffer);
        // The snapshot shows what subscribers were told (the stored events); the stream
        // goes on after them.
        let next = task.durable + 1;
        task.follow(sub, next);
        Ok((TaskInfo::as_of(task, task.durable), subscription))
    }

    /// Cancels a task: a queued one at once, a running one through its worker.
    pub fn cancel(&self, who: &Principal, task_id: &str) -> Result<TaskInfo> {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let id = visible(state, who, task_id)?.id.clone();
        who.may_act()?;
        cancel_in(state, &id, "canceled by the client");
        // A queued task canceled may have held an actor's key: the next task of the key,
        // woken, goes now rather than at the next event.
        drain_queue(state);
        let task =
            state.tasks.get(task_id).ok_or_else(|| Error::UnknownTask(task_id.to_owned()))?;
        Ok(TaskInfo::from(task))
    }
}

/// Gives `sub` the task's stored events from `from_seq` on, then follows it for the rest.
fn follow_from(task: &mut TaskEntry, sub: Subscriber, from_seq: u64) {
    for event in task.stored_events_from(from_seq) {
        sub.deliver(Delivery::Event(event.clone()));
    }
    task.follow(sub, from_seq.max(task.durable + 1));
}

/// The longest idempotency key a client may give.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;

/// Task ids made from idempotency keys: UUIDs (version 5) in a namespace of their own, so
/// they look like every other task id and a restarted or standby head, which has the ids in
/// its store, finds a key's task without keeping keys anywhere.
const KEYED_TASKS: uuid::Uuid = uuid::Uuid::from_u128(0x6c0b_1f5e_3a7d_4e2b_9c41_08d2_f7a9_5e13);

/// A new task's id: from its idempotency key (within its tenant: two tenants' keys never
/// meet) when it has one, else random.
fn new_task_id(tenant: &str, key: &str) -> TaskId {
    let id = if key.is_empty() {
        uuid::Uuid::new_v4()
    } else if tenant == crate::auth::DEFAULT_TENANT {
        uuid::Uuid::new_v5(&KEYED_TASKS, key.as_bytes())
    } else {
        uuid::Uuid::new_v5(&KEYED_TASKS, format!("{tenant}\u{1f}{key}").as_bytes())
    };
    TaskId::new(id.to_string())
}

/// The task an earlier submission with `task`'s idempotency key made, if the head retains
/// it; an error when that task is not this one (another agent or input under the key).
fn submitted_before(state: &State, tenant: &str, task: &NewTask) -> Result<Option<TaskId>> {
    if task.idempotency_key.is_empty() {
        return Ok(None);
    }
    let id = new_task_id(tenant, &task.idempotency_key);
    let Some(existing) = state.tasks.get(id.as_str()) else { return Ok(None) };
    if existing.agent != task.agent || *existing.input != *task.input {
        return Err(Error::InvalidArgument(format!(
            "idempotency_key {:?} was given before with another task (agent {}, task {id}): \
             use a new key for each task",
            task.idempotency_key, existing.agent
        )));
    }
    Ok(Some(id))
}

/// Whether tasks of `spec` may carry files: a Python agent takes them, a model agent when
/// one of its tools does (the tool gets them; the model reads their names and types).
pub(super) fn takes_files(state: &State, spec: &AgentSpec) -> bool {
    spec.model.starts_with(fleet_proto::PYTHON_PREFIX)
        || state.tools.of(spec).0.iter().any(|f| f.takes_files)
}

/// Accepts a task (see [`Cluster::submit`]); `parent` is the task that called it as a tool.
pub(super) fn submit_in(
    state: &mut State,
    limits: &Limits,
    task: NewTask,
    subscriber: Option<(Subscriber, Option<u64>)>,
    parent: Option<(TaskId, String, u32)>,
    tenant: Arc<str>,
) -> Result<TaskId> {
    let spec = state.agents.get(&task.agent)?.spec.clone();
    if !spec.tenant.is_empty() && *spec.tenant != *tenant {
        return Err(Error::UnknownAgent(task.agent));
    }
    let files = task.options.as_ref().map_or(0, |o| o.files.len());
    if files > 0 && !takes_files(state, &spec) {
        return Err(Error::InvalidArgument(format!(
            "agent {} runs a model, which reads text: give its files' text in the input, the \
             files to a Python agent, or the agent a tool that takes files",
            spec.name
        )));
    }
    let context_worker = context_worker(state, &task.agent, &tenant, &task.context_id);
    let prefixes = state
        .prefix_affinity
        .then(|| Prefixes::of(&spec, &task.input, task.options.as_deref()))
        .flatten();
    let affinity = Affinity { context_worker: context_worker.as_deref(), prefixes };
    let placement = match scheduler::place(&spec, &mut state.workers, &affinity) {
        Placement::Never(reason) => {
            return Err(Error::Unschedulable { agent: task.agent, reason });
        }
        Placement::Worker(w) => Some(w),
        Placement::Wait => None,
    };
    // A sub-task runs in the slot its caller lends when it can: beside its caller, taking
    // no slot another task could have.
    let lender = parent.as_ref().and_then(|(caller, _, _)| {
        calls::lender(state, &spec, caller).map(|worker| (worker, caller.clone()))
    });
    // A task of an actor whose key another task holds waits (parked by the drain); one
    // whose caller holds it would wait for itself.
    let held = crate::actor_state::key_of(&spec, &tenant, &task.context_id)
        .and_then(|key| lifecycle::actor_holder(state, &key, None).map(|holder| (key, holder)));
    if let (Some((key, holder)), Some((caller, _, _))) = (&held, &parent)
        && (holder == caller || lifecycle::called_by(state, caller, holder))
    {
        return Err(Error::InvalidArgument(lifecycle::self_call_error(&spec.name, key, holder)));
    }
    let actor_held = held.is_some();
    let at_capacity = (spec.max_concurrency > 0
        && state.agents.get(&task.agent)?.running >= spec.max_concurrency)
        || actor_held
        || !state.quotas.may_run(&tenant, &mut state.tasks);
    let placement = placement.filter(|_| !at_capacity && lender.is_none());
    let lender = lender.filter(|_| !at_capacity);
    if placement.is_none() && lender.is_none() && state.queue.len() >= limits.max_queued_tasks {
        return Err(Error::QueueFull { limit: limits.max_queued_tasks });
    }
    let more = task.input.len() + task.options.as_deref().map_or(0, crate::tasks::options_bytes);
    let held = state.tasks.unfinished_bytes();
    if held + more > limits.max_queued_bytes {
        return Err(Error::QueueBytes { held, more, limit: limits.max_queued_bytes });
    }
    state.agents.get_mut(&task.agent)?.tasks_submitted += 1;

    let id = new_task_id(&tenant, &task.idempotency_key);
    let entry =
        state.tasks.insert(id.clone(), task.agent, task.input.into(), task.context_id, tenant);
    state.metrics.submitted(&entry.tenant, &entry.agent);
    entry.options = with_agent_format(task.options, &spec);
    entry.bytes += entry.options.as_deref().map_or(0, crate::tasks::options_bytes);
    let held = crate::tasks::submission_bytes(entry);
    traced::start(entry, &spec, task.traceparent, parent.is_some());
    if let Some((parent, call_id, depth)) = parent {
        entry.parent = Some((parent, call_id));
        entry.depth = depth;
    }
    let caller = entry.parent.as_ref().map(|(caller, _)| caller.clone());
    state.tasks.hold(id.as_str(), held);
    if let Some(caller) = caller.and_then(|c| state.tasks.get(c.as_str())) {
        let attempt = caller.attempt;
        if let Some(entry) = state.tasks.get_mut(id.as_str()) {
            entry.caller_attempt = attempt;
        }
    }
    let Some(entry) = state.tasks.get_mut(id.as_str()) else { return Ok(id) };
    if let Some((sub, client_ref)) = subscriber {
        // `Accepted` goes with the first event, once the task is stored.
        entry.follow_submitted(sub, client_ref);
    }
    entry.push_own(EventKind::Submitted { agent: entry.agent.clone() }, now_us());
    debug!(task_id = %id, agent = %entry.agent, "task submitted");
    match (lender, placement) {
        (Some((worker, caller)), _) if state.leading() => {
            calls::dispatch_borrowing(state, &id, &worker, &caller);
        }
        (None, Some(worker)) if state.leading() => dispatch(state, &id, &worker),
        _ => enqueue(state, id.clone()),
    }
    Ok(id)
}

/// A task's options with its agent's output format when it sets none itself: the task
/// keeps the format it was submitted under (for its A2A answer, and through restarts).
fn with_agent_format(
    options: Option<Arc<fleet_proto::TaskOptions>>,
    spec: &fleet_proto::AgentSpec,
) -> Option<Arc<fleet_proto::TaskOptions>> {
    let Some(format) = &spec.sampling.format else { return options };
    if options.as_ref().is_some_and(|o| o.sampling.format.is_some()) {
        return options;
    }
    let mut options = options.map(|o| fleet_proto::TaskOptions::clone(&o)).unwrap_or_default();
    options.sampling.format = Some(format.clone());
    Some(Arc::new(options))
}

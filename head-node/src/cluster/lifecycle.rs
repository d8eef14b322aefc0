//! A task's transitions on `State`: dispatch to a worker, release, finish, cancel, end
//! (answering a calling task), fail-over of a lost worker's tasks, and draining the queue.

use super::*;
use crate::conversations::Key;

/// Sends the agent's spec to a worker that does not host this version of it yet.
/// Places the agent's actor on the worker unless it holds this version already, with the
/// definitions of its hosted tools as they are now (a changed definition places it again).
pub(super) fn place_actor(
    worker: &mut WorkerEntry,
    spec: &Arc<AgentSpec>,
    version: u64,
    tools: &HostedTools,
) {
    let (functions, generation) = tools.of(spec);
    if worker.placed.get(&spec.name) != Some(&(version, generation)) {
        worker.placed.insert(spec.name.clone(), (version, generation));
        let _ =
            worker.commands.send(Command::PlaceActor { spec: spec.clone(), version, functions });
    }
}

pub(super) fn context_worker(
    state: &State,
    agent: &str,
    tenant: &str,
    context_id: &str,
) -> Option<String> {
    if context_id.is_empty() {
        return None;
    }
    let placed = state.context_workers.get(&(agent.to_owned(), worker_context(tenant, context_id)));
    // A head started again knows only the stored worker of the last exchange.
    placed.cloned().or_else(|| {
        let key = Key {
            tenant: tenant.into(),
            agent: agent.to_owned(),
            context_id: context_id.to_owned(),
        };
        state.conversations.worker(&key).map(str::to_owned)
    })
}

/// The conversation a task continues.
fn conversation_key(task: &TaskEntry) -> Key {
    Key {
        tenant: task.tenant.clone(),
        agent: task.agent.clone(),
        context_id: task.context_id.clone(),
    }
}

/// Whether the head keeps the task's conversation: it has a context, and the client does
/// not carry the conversation itself (nor sends a raw prompt, which is no conversation).
fn keeps_conversation(task: &TaskEntry) -> bool {
    !task.context_id.is_empty()
        && task.options.as_ref().is_none_or(|o| o.history.is_empty() && !o.raw_prompt)
}

/// Adds a completed task's exchange to its conversation. Appended to the store before the
/// task's `Completed` (the journal keeps order): a client that has the answer finds it in
/// the next turn's conversation, even after a head crash.
fn remember_exchange(state: &mut State, id: &TaskId) {
    let Some(task) = state.tasks.get(id.as_str()) else { return };
    if !keeps_conversation(task) {
        return;
    }
    let exchange = crate::conversations::exchange(&task.input, task.current_attempt());
    let worker = task.worker.as_deref().unwrap_or_default();
    let changes =
        state.conversations.add(&conversation_key(task), id.as_str(), exchange, worker, now_us());
    if let Some(journal) = state.tasks.journal() {
        journal.conversations(changes);
    }
}

/// The conversation a worker keeps for a task's context: context ids are the client's, so
/// two tenants may pick the same one; on a shared agent they must not share a memory. The
/// default tenant's keep theirs as they are (a context id holds no U+001F: see `validate`).
pub(super) fn worker_context(tenant: &str, context_id: &str) -> String {
    if tenant == crate::auth::DEFAULT_TENANT || context_id.is_empty() {
        context_id.to_owned()
    } else {
        format!("{tenant}\u{1f}{context_id}")
    }
}

/// The prompt prefixes of a task of `spec`, when the head places by them.
pub(super) fn prefixes(state: &State, spec: &AgentSpec, task: &TaskEntry) -> Option<Prefixes> {
    if !state.prefix_affinity {
        return None;
    }
    Prefixes::of(spec, &task.input, task.options.as_deref())
}

/// Puts a task on a worker: reserves its share, logs `Scheduled`, sends the commands.
pub(super) fn dispatch(state: &mut State, id: &TaskId, worker_id: &str) {
    let (Some(task), Some(worker)) =
        (state.tasks.get_mut(id.as_str()), state.workers.get_mut(worker_id))
    else {
        return;
    };
    let scheduled = EventKind::Scheduled { worker_id: worker_id.to_owned() };
    if let Err(refused) = task.state.after(&scheduled) {
        error!(task_id = %id, worker_id, %refused, "dispatch of a task that is not queued");
        return;
    }
    let Ok(agent) = state.agents.get_mut(&task.agent) else {
        return;
    };
    let spec = agent.spec.clone();
    let warmed = state
        .prefix_affinity
        .then(|| Prefixes::of(&spec, &task.input, task.options.as_deref()))
        .flatten();
    place_actor(worker, &spec, agent.version, &state.tools);
    let key = crate::actor_state::key_of(&spec, &task.tenant, &task.context_id);
    let actor = key.as_ref().map(|key| state.actors.state(key));
    agent.running += 1;
    worker.running.insert(id.clone());
    *worker.running_per_agent.entry(spec.name.clone()).or_default() += 1;
    worker.free.sub(&spec.resources);
    worker.tasks_assigned += 1;
    task.reserved = spec.resources;
    task.worker = Some(worker_id.to_owned());
    state.queue.served(&task.tenant);
    let _ =
        worker.commands.send(Command::RunTask(assignment(id, task, &state.conversations, actor)));
    traced::scheduled(task, worker_id);
    task.push_own(scheduled, now_us());
    if !task.context_id.is_empty() {
        if state.context_workers.len() >= MAX_CONTEXT_AFFINITY {
            state.context_workers.clear();
        }
        state.context_workers.insert(
            (task.agent.clone(), worker_context(&task.tenant, &task.context_id)),
            worker_id.to_owned(),
        );
    }
    debug!(task_id = %id, worker_id, attempt = task.attempt, "task scheduled");
    if let Some(prefixes) = warmed {
        state.workers.touch_warm(worker_id, &prefixes);
    }
    if let Some(key) = key {
        take_key(state, key, id);
    }
}

/// The command that runs a task's current attempt on a worker, with its conversation so
/// far and the state of its actor.
pub(super) fn assignment(
    id: &TaskId,
    task: &TaskEntry,
    conversations: &crate::conversations::Conversations,
    actor: Option<fleet_proto::StoredState>,
) -> TaskAssignment {
    let conversation = if keeps_conversation(task) {
        conversations.turns(&conversation_key(task))
    } else {
        Vec::new()
    };
    TaskAssignment {
        task_id: id.clone(),
        agent: task.agent.clone(),
        attempt: task.attempt,
        input: task.input.to_string(),
        context_id: worker_context(&task.tenant, &task.context_id),
        options: task.options.clone(),
        depth: task.depth,
        traceparent: traced::parent_of(task),
        conversation,
        // A retry goes on from what the lost attempts recorded, calling no tool twice.
        steps: if task.attempt > 1 { task.recorded_steps() } else { Vec::new() },
        actor,
    }
}

/// The key of a task's actor, when its agent keeps state (see `crate::actor_state`).
pub(super) fn actor_key(state: &State, task: &TaskEntry) -> Option<Key> {
    let agent = state.agents.get(&task.agent).ok()?;
    crate::actor_state::key_of(&agent.spec, &task.tenant, &task.context_id)
}

/// The task other than `id` that holds `key` now: placed or woken, and not ended.
pub(super) fn actor_holder(state: &State, key: &Key, id: Option<&TaskId>) -> Option<TaskId> {
    let holder = state.actors.holder(key)?;
    let live = state.tasks.get(holder.as_str()).is_some_and(|t| !t.state.is_terminal());
    (live && Some(holder) != id).then(|| holder.clone())
}

/// Whether `holder` is among the tasks that called `id` (through agent calls): `id` waiting
/// for it would wait forever.
pub(super) fn called_by(state: &State, id: &TaskId, holder: &TaskId) -> bool {
    let parent_of = |t: &TaskId| {
        state.tasks.get(t.as_str()).and_then(|t| t.parent.as_ref()).map(|p| p.0.clone())
    };
    let mut at = parent_of(id);
    for _ in 0..=MAX_TOOL_DEPTH {
        match at {
            Some(p) if &p == holder => return true,
            Some(p) => at = parent_of(&p),
            None => return false,
        }
    }
    false
}

/// The key task `id` held is free: the next task parked for it is woken (to the front of
/// its tenant's line) and holds it from now on, so the key's tasks go in order.
fn let_go_of_actor(state: &mut State, id: &TaskId) {
    let Some(key) = state.actors.let_go(id) else { return };
    if let Some(next) = state.queue.wake(&key.stored()) {
        state.actors.hold(key, &next);
    }
}

/// Task `id` holds `key` from now on (placed on a worker). A key it held before (its
/// agent registered again, keeping state per agent now rather than per conversation) is
/// let go, so the tasks parked for that key are not left there.
pub(super) fn take_key(state: &mut State, key: Key, id: &TaskId) {
    if state.actors.holding(id).is_some_and(|held| *held != key) {
        let_go_of_actor(state, id);
    }
    state.actors.hold(key, id);
}

/// Whether task `id` must wait for its actor's key: another live task holds it. A task
/// whose caller (or its caller's caller) holds it would wait for itself: it fails at once,
/// naming the holder (then true as well: it is not to be placed).
pub(super) fn waits_for_key(state: &mut State, id: &TaskId) -> bool {
    let Some(task) = state.tasks.get(id.as_str()) else { return false };
    let Some(key) = actor_key(state, task) else { return false };
    let Some(holder) = actor_holder(state, &key, Some(id)) else { return false };
    if called_by(state, id, &holder) {
        let error = self_call_error(&task.agent, &key, &holder);
        dequeue(state, id);
        finish(state, id, EventKind::failed(ErrorKind::InvalidRequest, error));
    }
    true
}

/// Why a task cannot wait for the key its caller holds.
pub(super) fn self_call_error(agent: &str, key: &Key, holder: &TaskId) -> String {
    format!(
        "agent {agent} keeps its state per {}, and task {holder}, which called this one, \
         holds that state: an actor's task cannot call its own actor (it would wait for \
         itself); call it with another context, or do the work in the same task",
        if key.context_id.is_empty() { "agent" } else { "conversation" },
    )
}

/// Frees what the running attempt of a task holds on its worker.
pub(super) fn release(state: &mut State, id: &TaskId) {
    let Some(task) = state.tasks.get_mut(id.as_str()) else { return };
    let Some(worker_id) = task.worker.take() else { return };
    if let Ok(agent) = state.agents.get_mut(&task.agent) {
        agent.running = agent.running.saturating_sub(1);
    }
    if let Some(worker) = state.workers.get_mut(&worker_id)
        && worker.running.remove(id)
    {
        worker.lent.remove(id);
        worker.borrowing.remove(id);
        worker.free.add(&task.reserved);
        if let Some(n) = worker.running_per_agent.get_mut(&task.agent) {
            *n = n.saturating_sub(1);
        }
    }
    // Keep the worker id for GetTask: the task ran there.
    task.worker = Some(worker_id);
}

/// Ends a task with a terminal event.
pub(super) fn finish(state: &mut State, id: &TaskId, kind: EventKind) {
    // A task ends once: a second end would answer its caller twice.
    let Some(task) = state.tasks.get(id.as_str()) else { return };
    if let Err(refused) = task.state.after(&kind) {
        debug!(task_id = %id, %refused, "task already ended");
        return;
    }
    release(state, id);
    if matches!(kind, EventKind::Completed { .. }) {
        remember_exchange(state, id);
    }
    let Some(task) = state.tasks.get_mut(id.as_str()) else { return };
    task.push_own(kind, now_us());
    let final_state = task.state;
    debug!(task_id = %id, state = final_state.as_str(), "task finished");
    ended(state, id, final_state);
}

/// Cancels a task: on its worker, or at once when it is queued.
pub(super) fn cancel_in(state: &mut State, id: &TaskId, reason: &str) {
    let Some(task) = state.tasks.get_mut(id.as_str()) else { return };
    if task.state.is_terminal() || task.cancel_requested {
        return;
    }
    match task.worker.clone() {
        Some(worker) => {
            task.request_cancel();
            if let Some(w) = state.workers.get(&worker) {
                let _ = w
                    .commands
                    .send(Command::CancelTask { task_id: id.clone(), reason: reason.to_owned() });
            }
        }
        None => {
            task.cancel_requested = true;
            let tenant = task.tenant.clone();
            state.queue.remove(&tenant, id);
            finish(state, id, EventKind::Canceled { reason: reason.to_owned() });
        }
    }
    info!(task_id = %id, reason, "task cancel requested");
}

/// Retires a task that reached `final_state`: a task some agent called as a tool answers
/// it, and the tasks it called itself are no longer needed.
pub(super) fn ended(state: &mut State, id: &TaskId, final_state: TaskState) {
    let_go_of_actor(state, id);
    let Some(task) = state.tasks.get(id.as_str()) else { return };
    for child in task.children.clone() {
        cancel_in(state, &child, "the task that called it ended");
    }
    let Some(task) = state.tasks.get(id.as_str()) else { return };
    if let Some((parent, call_id)) = task.parent.clone() {
        let (output, is_error) = match final_state {
            TaskState::Completed => (task.output(), false),
            TaskState::Canceled => (format!("agent {} was canceled", task.agent), true),
            _ => (format!("agent {} failed: {}", task.agent, task.error), true),
        };
        // Only the attempt that made the call hears the answer and takes its slot back; a
        // caller retried since calls again.
        let made_the_call = task.caller_attempt;
        let current = state
            .tasks
            .get(parent.as_str())
            .is_some_and(|p| made_the_call == 0 || p.attempt == made_the_call);
        if current {
            super::calls::take_back_slot(state, &parent);
            super::calls::lend_to_a_queued_call(state, &parent);
            reply_to_call(state, &parent, call_id, output, is_error);
        }
    }
    if let Some(task) = state.tasks.get_mut(id.as_str()) {
        traced::ended(task, final_state);
        let took = task.finished_at_us.saturating_sub(task.submitted_at_us);
        state.metrics.ended(&task.tenant, &task.agent, final_state, Duration::from_micros(took));
        state.quotas.generated(&task.tenant, task.usage.completion_tokens.into());
    }
    state.tools.task_ended(id);
    state.tasks.finished(id, final_state);
}

/// Retries or fails the tasks that were running on a lost worker.
pub(super) fn fail_over(state: &mut State, worker: WorkerEntry, reason: &str) {
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
        enqueue_first(state, id);
    }
    state.context_workers.retain(|_, w| *w != worker.id);
}

/// A task's attempt on `worker` is lost: it is retried (true: the caller queues it) while
/// its agent allows, canceled if that was asked, failed otherwise.
pub(super) fn lost_attempt(state: &mut State, id: &TaskId, worker: &str, reason: &str) -> bool {
    let Some(task) = state.tasks.get_mut(id.as_str()) else { return false };
    // Only an attempt on a worker can be lost.
    if !task.state.is_on_worker() {
        debug!(task_id = %id, worker, state = task.state.as_str(), "no attempt to lose");
        return false;
    }
    let max_retries = state.agents.get(&task.agent).map(|a| a.spec.max_retries).unwrap_or(0);
    let failed_attempt = task.attempt;
    traced::worker_lost(task, worker, reason);
    if task.cancel_requested {
        task.push_own(
            EventKind::Canceled { reason: format!("canceled; worker {worker} lost: {reason}") },
            now_us(),
        );
    } else if failed_attempt <= max_retries {
        task.push_own(
            EventKind::Retrying {
                reason: format!("worker {worker} lost: {reason}"),
                failed_attempt,
            },
            now_us(),
        );
        task.attempt += 1;
        task.worker = None;
        // The new attempt calls again what it needs.
        for child in task.children.clone() {
            cancel_in(state, &child, "the task that called it is retried");
        }
        return true;
    } else {
        let error = format!(
            "worker {worker} lost while running the task ({reason}); attempt {failed_attempt} of {}",
            max_retries + 1
        );
        let kind = ErrorKind::Unavailable;
        task.push_own(EventKind::Failed { error, worker_id: worker.to_owned(), kind }, now_us());
    }
    let final_state = task.state;
    ended(state, id, final_state);
    false
}

/// Queues a task behind its tenant's others.
pub(super) fn enqueue(state: &mut State, id: TaskId) {
    if let Some(tenant) = state.tasks.get(id.as_str()).map(|t| t.tenant.clone()) {
        state.queue.push_back(&tenant, id);
    }
}

/// Queues a task before its tenant's others (a retry: it was accepted before them).
pub(super) fn enqueue_first(state: &mut State, id: TaskId) {
    if let Some(tenant) = state.tasks.get(id.as_str()).map(|t| t.tenant.clone()) {
        state.queue.push_front(&tenant, id);
    }
}

/// Takes a task out of the queue; false when it was not queued.
pub(super) fn dequeue(state: &mut State, id: &TaskId) -> bool {
    match state.tasks.get(id.as_str()).map(|t| t.tenant.clone()) {
        Some(tenant) => state.queue.remove(&tenant, id),
        None => false,
    }
}

/// Places queued tasks while workers have room: one task per tenant a round, the tenants
/// with the fewest tasks running first (see `queue`), until a round places nothing. A tenant at its running quota is
/// passed over whole; in a tenant's line, tasks that must wait (their agent at its
/// concurrency, or no room that fits) are passed over, at most [`QUEUE_SCAN_LIMIT`] a
/// tenant, so one drain costs a bounded amount however long the lines are.
pub(super) fn drain_queue(state: &mut State) {
    if !state.leading() {
        return;
    }
    loop {
        let mut placed = false;
        // Fewest tasks running first, ties in turn: a tenant with a slot busy does not get
        // a second while another waits with none.
        let mut tenants = state.queue.tenants();
        if tenants.len() > 1 {
            let tasks = &mut state.tasks;
            tenants.sort_by_cached_key(|t| tasks.count(t, &crate::quotas::RUNNING));
        }
        for tenant in tenants {
            if !state.workers.any_free_slot() {
                return;
            }
            if !state.quotas.may_run(&tenant, &mut state.tasks) {
                continue;
            }
            placed |= place_one_of(state, &tenant);
        }
        if !placed {
            return;
        }
    }
}

/// Places the first task of `tenant`'s line that can go now; false when none could.
fn place_one_of(state: &mut State, tenant: &str) -> bool {
    let (mut index, mut waited) = (0, 0);
    while waited < QUEUE_SCAN_LIMIT {
        let Some(id) = state.queue.get(tenant, index).cloned() else { return false };
        let Some(task) = state.tasks.get(id.as_str()) else {
            state.queue.take(tenant, index);
            continue;
        };
        let Ok(agent) = state.agents.get(&task.agent) else {
            state.queue.take(tenant, index);
            continue;
        };
        let spec = agent.spec.clone();
        if spec.max_concurrency > 0 && agent.running >= spec.max_concurrency {
            index += 1;
            waited += 1;
            continue;
        }
        // One task of an actor's key at a time: the others wait parked, off the line.
        if let Some(key) = crate::actor_state::key_of(&spec, &task.tenant, &task.context_id)
            && let Some(holder) = actor_holder(state, &key, Some(&id))
        {
            let task_tenant = task.tenant.clone();
            state.queue.take(tenant, index);
            waited += 1;
            if called_by(state, &id, &holder) {
                let error = self_call_error(&spec.name, &key, &holder);
                finish(state, &id, EventKind::failed(ErrorKind::InvalidRequest, error));
                // Its end may have woken a task of another key at the front of a line.
                return true;
            }
            state.queue.park(key.stored(), &task_tenant, id);
            continue;
        }
        let context = context_worker(state, &task.agent, &task.tenant, &task.context_id);
        let affinity =
            Affinity { context_worker: context.as_deref(), prefixes: prefixes(state, &spec, task) };
        match scheduler::place(&spec, &mut state.workers, &affinity) {
            Placement::Worker(w) => {
                state.queue.take(tenant, index);
                dispatch(state, &id, &w);
                return true;
            }
            Placement::Wait => {
                index += 1;
                waited += 1;
            }
            Placement::Never(reason) => {
                state.queue.take(tenant, index);
                let error = format!("no worker can run agent {:?}: {reason}", spec.name);
                finish(state, &id, EventKind::failed(ErrorKind::Unsupported, error));
                // Its end may have woken the next task of its actor's key to the front of
                // the line, before where this scan is: the drain goes round again.
                return true;
            }
        }
    }
    false
}

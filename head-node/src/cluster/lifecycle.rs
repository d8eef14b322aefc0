//! A task's transitions on `State`, each with what it does beside logging its event:
//! dispatch to a worker (its share reserved, its actor's key taken), finish and cancel,
//! end (answering a calling task, letting go of its key), lose an attempt (retry, cancel or
//! fail), fail-over of a lost worker's tasks, and adopt on a worker's rejoin. Which event
//! may happen in which state is `fleet_proto::task_state`'s table; `TaskEntry::push`
//! refuses the rest. Where a queued task goes is `placement`'s.

use std::time::Duration;

use fleet_proto::{Command, ErrorKind, EventKind, TaskAssignment, TaskId, TaskState, now_us};
use tracing::{debug, error, info};

use super::calls::reply_to_call;
use super::placement::{dequeue, enqueue_first, place_actor};
use super::{MAX_CONTEXT_AFFINITY, MAX_TOOL_DEPTH, State, traced};
use crate::conversations::Key;
use crate::scheduler::Prefixes;
use crate::tasks::TaskEntry;
use crate::workers::WorkerEntry;

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

/// Whether a task's current attempt never reached `worker_id`, whose same process rejoined
/// without it: the head's last event of it is still its dispatch there. Had the worker got
/// the `RunTask`, the task would be running there, or have events in the worker's outbox
/// (kept until the head stores them, and reported at the join), or the head would hold its
/// events. A task canceled meanwhile is left to `lost_attempt`, which ends it.
pub(super) fn never_reached(state: &State, id: &TaskId, worker_id: &str) -> bool {
    let Some(task) = state.tasks.get(id.as_str()) else { return false };
    let dispatched_there = task.events.last().is_some_and(|e| {
        e.attempt == task.attempt
            && matches!(&e.kind, EventKind::Scheduled { worker_id: w } if w == worker_id)
    });
    dispatched_there
        && !task.state.is_terminal()
        && !task.cancel_requested
        && task.worker.as_deref() == Some(worker_id)
        && state.agents.get(&task.agent).is_ok()
}

/// Runs a task's attempt that never reached its worker (see [`never_reached`]) there after
/// all: its share held there again, its agent placed (this connection has placed nothing
/// yet) and its `RunTask` sent, the same attempt under the same `Scheduled`.
pub(super) fn send_again(state: &mut State, id: &TaskId, worker_id: &str) {
    adopt(state, id, worker_id);
    let (Some(task), Some(worker)) =
        (state.tasks.get(id.as_str()), state.workers.get_mut(worker_id))
    else {
        return;
    };
    let Ok(agent) = state.agents.get(&task.agent) else { return };
    place_actor(worker, &agent.spec, agent.version, &state.tools);
    // The key is still this task's: it held it when it was dispatched.
    let actor = crate::actor_state::key_of(&agent.spec, &task.tenant, &task.context_id)
        .map(|key| state.actors.state(&key));
    let command = Command::RunTask(assignment(id, task, &state.conversations, actor));
    let _ = worker.commands.send(command);
}

/// Takes on a task a rejoining worker still runs: it holds its share there again.
pub(super) fn adopt(state: &mut State, id: &TaskId, worker_id: &str) {
    // Calls it still waits on: it lends its slot again (the lending was the old
    // connection's).
    let waiting = state.tasks.get(id.as_str()).map_or(0, |t| {
        let open =
            |c: &&TaskId| state.tasks.get(c.as_str()).is_some_and(|c| !c.state.is_terminal());
        t.children.iter().filter(open).count()
    });
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
    if let Some(reply) = super::input::reply_to_resend(task) {
        let _ = worker.commands.send(reply);
    }
    // Canceled while the head was away from it (or before a restart): asked again.
    if task.cancel_requested {
        let _ = worker.commands.send(Command::CancelTask {
            task_id: id.clone(),
            reason: "canceled while the head was away from this worker".into(),
        });
    }
    if waiting > 0 {
        worker.lent.insert(id.clone(), waiting as u32);
        super::calls::lend_to_a_queued_call(state, id);
    }
}

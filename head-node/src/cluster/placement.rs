//! Where a queued task goes: the queue's lines (`enqueue`, `dequeue`), the drain that places
//! their tasks on workers with room, one tenant at a time, and what a placement weighs (the
//! worker holding the task's conversation, warm prefixes). A placed task goes on through
//! [`super::lifecycle::dispatch`].

use std::sync::Arc;

use fleet_proto::{AgentSpec, Command, ErrorKind, EventKind, TaskId};

use super::State;
use super::lifecycle::{
    actor_holder, called_by, dispatch, finish, self_call_error, worker_context,
};
use crate::conversations::Key;
use crate::scheduler::{self, Affinity, Placement, Prefixes};
use crate::tasks::TaskEntry;
use crate::tools::HostedTools;
use crate::workers::WorkerEntry;

/// How many of a tenant's queued tasks that must keep waiting one drain passes over before
/// it turns to the next tenant.
const QUEUE_SCAN_LIMIT: usize = 256;

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

/// The prompt prefixes of a task of `spec`, when the head places by them.
pub(super) fn prefixes(state: &State, spec: &AgentSpec, task: &TaskEntry) -> Option<Prefixes> {
    if !state.prefix_affinity {
        return None;
    }
    Prefixes::of(spec, &task.input, task.options.as_deref())
}

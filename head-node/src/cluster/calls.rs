//! Agents calling agents and topics: relayed tool calls for workers off the mesh, agent
//! lookups for workers on it, mesh peer lists, and topics relayed to clients.

use fleet_proto::{MESH_CHANGES_PROTOCOL, MeshPeers};

use super::*;

impl Cluster {
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
        // An agent of another tenant than the calling task's is not there for it.
        let tenant = state.tasks.get(&request.caller_task).map(|t| t.tenant.clone());
        let foreign = state.agents.get(&request.agent).is_ok_and(|a| {
            !a.spec.tenant.is_empty() && tenant.as_deref() != Some(a.spec.tenant.as_str())
        });
        let result = if foreign {
            Err(Error::UnknownAgent(request.agent.clone()).to_string())
        } else {
            locate_in(state, &request.agent, &request.context_id)
        };
        match &result {
            Ok(peer) => {
                debug!(agent = %request.agent, caller_task = %request.caller_task, worker_id = %peer.worker_id, "agent located")
            }
            Err(e) => {
                debug!(agent = %request.agent, caller_task = %request.caller_task, error = %e, "agent not located")
            }
        }
        state.agents_located += 1;
        if let (Some(tenant), Some(caller)) = (tenant, state.tasks.get(&request.caller_task)) {
            state.call_counts.count(&tenant, &caller.agent, &request.agent, false);
        }
        let _ = reply_to.send(Command::Located { request_id: request.request_id, result });
    }

    /// The messages on `topic` from now on, through `worker`'s subscription (any worker on
    /// the mesh when empty).
    pub fn follow_topic(
        &self,
        who: &Principal,
        topic: &str,
        worker: &str,
    ) -> Result<tokio::sync::broadcast::Receiver<Arc<TopicMessage>>> {
        check_topic(who, topic)?;
        let mut guard = self.state.lock();
        let state = &mut *guard;
        state.topics.follow(&state.workers, topic, worker)
    }

    /// Publishes a client's message through a worker on the mesh.
    pub fn publish(
        &self,
        who: &Principal,
        topic: String,
        publisher: String,
        body: String,
    ) -> Result<tokio::sync::oneshot::Receiver<PublishOutcome>> {
        who.may_act()?;
        check_topic(who, &topic)?;
        let mut guard = self.state.lock();
        let state = &mut *guard;
        state.topics.publish(&state.workers, topic, publisher, body)
    }

    /// Whether any worker is on the mesh (client messages go to it as well as the log).
    pub fn has_mesh(&self) -> bool {
        self.state.lock().workers.iter().any(|w| w.registration.mesh.is_some())
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
        result: std::result::Result<u64, (fleet_proto::ErrorKind, String)>,
    ) {
        self.state.lock().topics.published(worker_id, request_id, result);
    }
}

/// Refuses a topic of another tenant than `who`'s (as if it did not exist, it has no
/// messages for them: the error says how their own are named).
pub(super) fn check_topic(who: &Principal, topic: &str) -> Result<()> {
    if who.may_use_topic(topic) {
        return Ok(());
    }
    Err(Error::PermissionDenied(format!(
        "topic {topic:?} is not tenant {:?}'s: its topics are named {}.NAME",
        who.tenant(),
        who.tenant()
    )))
}

/// The worker on the mesh hosting `agent` (for `context_id`), its actor placed there first
/// if it was not.
pub(super) fn locate_in(
    state: &mut State,
    agent: &str,
    context_id: &str,
) -> std::result::Result<MeshPeer, String> {
    let spec = match state.agents.get(agent) {
        Ok(entry) => entry.spec.clone(),
        Err(e) => return Err(e.to_string()),
    };
    if spec.actor_state != fleet_proto::ActorState::None {
        return Err(format!(
            "agent {agent} keeps actor state (ctx.state), whose tasks the head runs one per key \
             at a time: it is not called over the mesh; call it from an agent on a worker \
             without --mesh, or from a client"
        ));
    }
    // The caller's context id, already the worker's (see `lifecycle::worker_context`).
    let context = (!context_id.is_empty())
        .then(|| state.context_workers.get(&(agent.to_owned(), context_id.to_owned())).cloned())
        .flatten();
    let worker_id = scheduler::locate(&spec, &state.workers, context.as_deref())?.to_owned();
    if !context_id.is_empty() {
        state.context_workers.insert((agent.to_owned(), context_id.to_owned()), worker_id.clone());
    }
    let (Ok(entry), Some(worker)) = (state.agents.get(agent), state.workers.get_mut(&worker_id))
    else {
        return Err(format!("agent {agent:?} has no worker"));
    };
    place_actor(worker, &entry.spec, entry.version, &state.tools);
    let address = worker.registration.mesh.clone().unwrap_or_default();
    Ok(MeshPeer { worker_id, address })
}

/// The mesh's members: the workers on it, and those lost within their grace (see
/// [`super::mesh_grace`]).
fn mesh_members(state: &State) -> Vec<MeshPeer> {
    let connected = state.workers.iter().filter_map(|w| {
        let address = w.registration.mesh.clone()?;
        Some(MeshPeer { worker_id: w.id.clone(), address })
    });
    let kept = state
        .mesh_grace
        .iter()
        .filter(|(id, _)| state.workers.get(id).is_none())
        .map(|(id, address)| MeshPeer { worker_id: id.to_owned(), address: address.clone() });
    connected.chain(kept).collect()
}

/// Sends `worker_id` the mesh's whole list (it rejoined, and the others have it already).
pub(super) fn send_mesh_list(state: &State, worker_id: &str) {
    if let Some(w) = state.workers.get(worker_id) {
        let _ = w.commands.send(Command::MeshPeers(MeshPeers::All(mesh_members(state))));
    }
}

/// Tells the workers on the mesh that `worker_id` joined it (or, when it is no longer on
/// the mesh, left): the worker itself gets the whole list, the others what changed. That is
/// one small message per worker for each join or leave; the whole list to each, as before
/// protocol 2 (and still for older workers), made a thousand workers' joins a billion
/// entries, all built under the cluster's lock.
pub(super) fn announce_mesh(state: &State, worker_id: &str) {
    let joined = state.workers.get(worker_id).and_then(|w| {
        let address = w.registration.mesh.clone()?;
        Some(MeshPeer { worker_id: w.id.clone(), address })
    });
    let mut everyone: Option<Vec<MeshPeer>> = None;
    let mut all = || everyone.get_or_insert_with(|| mesh_members(state)).clone();
    let changes = match &joined {
        Some(peer) => MeshPeers::Changes { joined: vec![peer.clone()], left: Vec::new() },
        None => MeshPeers::Changes { joined: Vec::new(), left: vec![worker_id.to_owned()] },
    };
    let mut told = 0usize;
    for w in state.workers.iter().filter(|w| w.registration.mesh.is_some()) {
        let peers = if w.id == worker_id || w.registration.protocol < MESH_CHANGES_PROTOCOL {
            MeshPeers::All(all())
        } else {
            changes.clone()
        };
        let _ = w.commands.send(Command::MeshPeers(peers));
        told += 1;
    }
    debug!(worker_id, joined = joined.is_some(), told, "mesh change announced");
}

/// Sends the result of a tool call to the worker running the calling task (if it still is).
pub(super) fn reply_to_call(
    state: &State,
    task_id: &TaskId,
    call_id: String,
    output: String,
    is_error: bool,
) {
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

/// The caller of a sub-task lends its worker slot while it waits (see
/// [`crate::workers::WorkerEntry::lent`]).
fn lend_slot(state: &mut State, caller: &TaskId) {
    let Some(worker) = state.tasks.get(caller.as_str()).and_then(|t| t.worker.clone()) else {
        return;
    };
    if let Some(worker) = state.workers.get_mut(&worker)
        && worker.running.contains(caller)
    {
        *worker.lent.entry(caller.clone()).or_default() += 1;
    }
}

/// The worker where a sub-task of `spec` may run in the slot `caller` lends: the caller
/// waits on a call there, lends to no other sub-task now, and the worker could run it.
pub(super) fn lender(state: &State, spec: &AgentSpec, caller: &TaskId) -> Option<String> {
    let worker_id = state.tasks.get(caller.as_str())?.worker.clone()?;
    let w = state.workers.get(&worker_id)?;
    let free = w.lent.contains_key(caller) && !w.borrowing.values().any(|c| c == caller);
    (free && scheduler::can_borrow(spec, w)).then_some(worker_id)
}

/// Runs sub-task `id` on `worker` in the slot its caller lends there.
pub(super) fn dispatch_borrowing(state: &mut State, id: &TaskId, worker: &str, caller: &TaskId) {
    dispatch(state, id, worker);
    if let Some(w) = state.workers.get_mut(worker)
        && w.running.contains(id)
    {
        w.borrowing.insert(id.clone(), caller.clone());
    }
}

/// Gives the slot `caller` lends to one of its sub-tasks still queued, if any may take it
/// (a caller waiting on several calls at once, whose first sub-task ended).
pub(super) fn lend_to_a_queued_call(state: &mut State, caller: &TaskId) {
    let Some(children) = state.tasks.get(caller.as_str()).map(|t| t.children.clone()) else {
        return;
    };
    for child in children {
        let Some(task) = state.tasks.get(child.as_str()) else { continue };
        if task.state != TaskState::Queued {
            continue;
        }
        let Ok(agent) = state.agents.get(&task.agent) else { continue };
        let spec = agent.spec.clone();
        if spec.max_concurrency > 0 && agent.running >= spec.max_concurrency {
            continue;
        }
        // One task per actor key: a call of an actor whose key is held waits its turn.
        if waits_for_key(state, &child) {
            continue;
        }
        if let Some(worker) = lender(state, &spec, caller) {
            dequeue(state, &child);
            dispatch_borrowing(state, &child, &worker, caller);
            return;
        }
    }
}

/// A sub-task ended (or was never started): its caller takes its slot back once it waits
/// on none.
pub(super) fn take_back_slot(state: &mut State, caller: &TaskId) {
    let Some(worker) = state.tasks.get(caller.as_str()).and_then(|t| t.worker.clone()) else {
        return;
    };
    let Some(worker) = state.workers.get_mut(&worker) else { return };
    if let Some(waiting) = worker.lent.get_mut(caller) {
        *waiting = waiting.saturating_sub(1);
        if *waiting == 0 {
            worker.lent.remove(caller);
        }
    }
}

/// A tool call a worker announced, for the head to run as a sub-task or send to the process
/// hosting the tool.
#[derive(Clone)]
pub(super) struct ToolCallSeen {
    pub caller: TaskId,
    pub call_id: String,
    pub name: String,
    pub arguments: String,
    /// The caller's `execute_tool` span, the sub-task's parent (empty: not traced).
    pub traceparent: String,
}

/// Sends a task's tool call on: to a process hosting the tool, or (an agent) runs the agent
/// as a sub-task of it; the result goes back to the caller's worker when it comes. Calls of
/// names that are not among the caller's tools are the worker's to answer (`ask_user`, MCP
/// tools, a client's tools), except a Python agent's calls of other agents.
pub(super) fn route_call(state: &mut State, limits: &Limits, call: ToolCallSeen) {
    let ToolCallSeen { caller, call_id, name, arguments, traceparent } = call;
    let (caller, name, arguments) = (&caller, name.as_str(), arguments.as_str());
    let Some(task) = state.tasks.get(caller.as_str()) else { return };
    let Ok(agent) = state.agents.get(&task.agent) else { return };
    if !agent.spec.tools.iter().any(|t| t == name) {
        // A Python agent's code may call any agent, but only the hosted functions its agent
        // lists (whose approvals its worker asks for).
        let python = agent.spec.model.starts_with(fleet_proto::PYTHON_PREFIX);
        if python && state.tools.contains(name) {
            let error = format!(
                "{name} is not one of agent {}'s tools: list it in the agent's tools to call it",
                agent.spec.name
            );
            reply_to_call(state, caller, call_id, error, true);
            return;
        }
        if !python {
            return;
        }
    }
    if state.tools.contains(name) {
        if !state.tools.serves(name, &task.tenant) {
            let error = format!("tool {name} is not hosted by any process");
            reply_to_call(state, caller, call_id, error, true);
            return;
        }
        let context_id = task.context_id.clone();
        let files = match &task.options {
            Some(options) if state.tools.takes_files(name) => options.files.clone(),
            _ => Vec::new(),
        };
        let invoked = state.tools.invoke(name, caller, &context_id, &call_id, arguments, files);
        if let Err(error) = invoked {
            reply_to_call(state, caller, call_id, error, true);
        }
        return;
    }
    let depth = task.depth + 1;
    let (tenant, caller_agent) = (task.tenant.clone(), task.agent.clone());
    let refused = if depth > MAX_TOOL_DEPTH {
        Some(format!(
            "agent {name} not called: agents called agents {MAX_TOOL_DEPTH} deep, the most allowed"
        ))
    } else {
        let sub = NewTask {
            agent: name.to_owned(),
            input: fleet_proto::call_input(arguments),
            // Under the caller's `execute_tool` span on its worker, else its task's span.
            traceparent: match fleet_telemetry::normalized(&traceparent) {
                caller if caller.is_empty() => traced::parent_of(task),
                caller => caller,
            },
            ..Default::default()
        };
        // Lent before the sub-task is placed, so that it may take the caller's slot.
        lend_slot(state, caller);
        let parent = Some((caller.clone(), call_id.clone(), depth));
        match submit_in(state, limits, sub, None, parent, tenant.clone()) {
            Ok(id) => {
                debug!(task_id = %id, caller = %caller, agent = name, "agent called as a tool");
                state.calls_relayed += 1;
                state.call_counts.count(&tenant, &caller_agent, name, true);
                if let Some(caller) = state.tasks.get_mut(caller.as_str()) {
                    caller.children.push(id);
                }
                None
            }
            Err(e) => {
                take_back_slot(state, caller);
                Some(format!("agent {name} not called: {e}"))
            }
        }
    };
    if let Some(error) = refused {
        reply_to_call(state, caller, call_id, error, true);
    }
}

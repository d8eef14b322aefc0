//! Agents calling agents over the mesh: the caller's side. A call goes straight to the
//! worker that hosts the callee; only the lookup of where that is goes through the head
//! (a `Locate` up the `Join` stream, answered by `Located`), and its answer is cached until
//! the peer leaves the mesh or a call to it fails. A callee on this very worker is run here
//! without touching the network.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fleet_inference::ToolCall;
use fleet_mesh::{AgentCall, Mesh, MeshError, MeshRequest, MeshResponse, Peer};
use fleet_proto::{LocateRequest, MeshPeer, MeshPeers, WorkerUpdate};
use futures::FutureExt;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::callee::{Call, LocalCalls, Refused};
use crate::tool::{CallContext, TOOL_CALL_TIMEOUT, ToolCaller, ToolOutcome};
use crate::tool_calls;

/// How long the head may take to say where an agent runs.
const LOCATE_TIMEOUT: Duration = Duration::from_secs(10);
/// Agents calling agents calling agents...: at most this deep over the mesh (the head
/// bounds calls it relays the same way).
pub const MAX_CALL_DEPTH: u32 = 4;

/// Where a call goes: the worker's id and its peer id on the mesh.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Location {
    worker_id: String,
    peer_id: String,
}

/// An agent and the conversation it is called in.
type Callee = (String, String);

/// A call that was not sent: its cached peer is no longer on the mesh.
struct Unsent;

/// The caller's side of agent calls on this worker; shared by every actor.
pub struct AgentCaller {
    mesh: Mesh,
    local: LocalCalls,
    locations: Mutex<HashMap<Callee, Location>>,
    /// The workers on the mesh by worker id, as the head's lists and changes leave them.
    members: Mutex<HashMap<String, MeshPeer>>,
    /// One lookup at a time per callee: the callers of one wait for its answer.
    locating: Mutex<HashMap<Callee, Arc<tokio::sync::Mutex<()>>>>,
    lookups: Mutex<HashMap<u64, oneshot::Sender<Result<MeshPeer, String>>>>,
    next_lookup: AtomicU64,
    to_head: mpsc::Sender<WorkerUpdate>,
}

impl std::fmt::Debug for AgentCaller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentCaller").field("peer_id", &self.mesh.peer_id()).finish_non_exhaustive()
    }
}

impl AgentCaller {
    /// A caller on `mesh` whose lookups go up to the head through `to_head`.
    pub fn new(mesh: Mesh, local: LocalCalls, to_head: mpsc::Sender<WorkerUpdate>) -> Arc<Self> {
        let caller = Self {
            mesh,
            local,
            locations: Mutex::default(),
            members: Mutex::default(),
            locating: Mutex::default(),
            lookups: Mutex::default(),
            next_lookup: AtomicU64::new(1),
            to_head,
        };
        Arc::new(caller)
    }

    /// Calls `call.agent` wherever it runs and returns its answer (or an error the calling
    /// model can read). A call that never left because its cached peer had left the mesh
    /// is sent again to wherever the head places the agent now.
    pub async fn call(&self, call: Call) -> ToolOutcome {
        match self.call_once(&call).await {
            Err(Unsent) => self.call_once(&call).await.unwrap_or_else(|Unsent| {
                ToolOutcome::error(format!(
                    "agent {} cannot be called: its worker left the mesh",
                    call.agent
                ))
            }),
            Ok(outcome) => outcome,
        }
    }

    async fn call_once(&self, call: &Call) -> Result<ToolOutcome, Unsent> {
        let location = match self.locate(call).await {
            Ok(location) => location,
            Err(e) => {
                return Ok(ToolOutcome::error(format!(
                    "agent {} cannot be called: {e}",
                    call.agent
                )));
            }
        };
        if location.peer_id == self.mesh.peer_id() {
            return Ok(match self.local.call(call.clone()).await {
                Ok(outcome) => outcome,
                Err(Refused(reason)) => {
                    self.forget(call, &location);
                    ToolOutcome::error(format!("agent {} refused the call: {reason}", call.agent))
                }
            });
        }
        let request = MeshRequest::Call(AgentCall {
            agent: call.agent.clone(),
            context_id: call.context_id.clone(),
            input: call.input.clone(),
            caller_task: call.caller_task.clone(),
            trace: call.traceparent.clone(),
            timeout_ms: u64::try_from(call.timeout.as_millis()).unwrap_or(u64::MAX),
            depth: call.depth,
        });
        let answer = tokio::time::timeout(call.timeout, self.mesh.ask(&location.peer_id, request));
        Ok(match answer.await {
            Ok(Ok(MeshResponse::Reply { output, is_error })) => ToolOutcome { output, is_error },
            Ok(Ok(MeshResponse::Refused { reason })) => {
                self.forget(call, &location);
                ToolOutcome::error(format!(
                    "agent {} on worker {} refused the call: {reason}",
                    call.agent, location.worker_id
                ))
            }
            Ok(Ok(other)) => {
                ToolOutcome::error(format!("agent {} answered the call with {other:?}", call.agent))
            }
            Ok(Err(MeshError::UnknownPeer(_))) => {
                self.forget(call, &location);
                return Err(Unsent);
            }
            Ok(Err(e)) => {
                if matches!(e, MeshError::PeerGone(_) | MeshError::Timeout { .. }) {
                    self.forget(call, &location);
                }
                ToolOutcome::error(format!(
                    "the call to agent {} on worker {} failed: {e}",
                    call.agent, location.worker_id
                ))
            }
            Err(_) => {
                self.forget(call, &location);
                let secs = call.timeout.as_secs_f64();
                ToolOutcome::error(format!(
                    "agent {} on worker {} did not answer within {secs} s",
                    call.agent, location.worker_id
                ))
            }
        })
    }

    /// The cached location of the callee, or the head's answer. Concurrent first calls of
    /// one agent (and context) share one lookup.
    async fn locate(&self, call: &Call) -> Result<Location, String> {
        let key = (call.agent.clone(), call.context_id.clone());
        if let Some(location) = self.locations.lock().get(&key) {
            return Ok(location.clone());
        }
        let turn = self.locating.lock().entry(key.clone()).or_default().clone();
        let _turn = turn.lock().await;
        if let Some(location) = self.locations.lock().get(&key) {
            return Ok(location.clone());
        }
        let found = self.ask_head(call).await;
        self.locating.lock().remove(&key);
        let location = found?;
        self.locations.lock().insert(key, location.clone());
        Ok(location)
    }

    async fn ask_head(&self, call: &Call) -> Result<Location, String> {
        let request_id = self.next_lookup.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lookups.lock().insert(request_id, tx);
        let request = LocateRequest {
            request_id,
            agent: call.agent.clone(),
            context_id: call.context_id.clone(),
            caller_task: call.caller_task.clone(),
        };
        if self.to_head.send(WorkerUpdate::Locate(request)).await.is_err() {
            self.lookups.lock().remove(&request_id);
            return Err("the worker is shutting down".into());
        }
        let answer = tokio::time::timeout(LOCATE_TIMEOUT, rx).await;
        self.lookups.lock().remove(&request_id);
        let peer = match answer {
            Ok(Ok(result)) => result?,
            Ok(Err(_)) => {
                return Err("the connection to the head was lost during the lookup".into());
            }
            Err(_) => {
                return Err(format!(
                    "the head did not say where it runs within {} s",
                    LOCATE_TIMEOUT.as_secs()
                ));
            }
        };
        let location = Location { worker_id: peer.worker_id, peer_id: peer.address.peer_id };
        debug!(agent = %call.agent, worker_id = %location.worker_id, "agent located");
        Ok(location)
    }

    fn forget(&self, call: &Call, location: &Location) {
        let key = (call.agent.clone(), call.context_id.clone());
        let mut locations = self.locations.lock();
        if locations.get(&key) == Some(location) {
            locations.remove(&key);
        }
    }

    /// The head's answer to a lookup.
    pub fn located(&self, request_id: u64, result: Result<MeshPeer, String>) {
        if let Some(waiting) = self.lookups.lock().remove(&request_id) {
            let _ = waiting.send(result);
        }
    }

    /// The head's list of the workers on the mesh, or what changed in it: the only peers
    /// accepted and called. Cached locations on workers that left are dropped.
    pub fn mesh_peers(&self, update: MeshPeers) {
        let own = self.mesh.peer_id();
        let peer = |p: &MeshPeer| Peer {
            peer_id: p.address.peer_id.clone(),
            addrs: p.address.addrs.clone(),
        };
        let mut members = self.members.lock();
        match update {
            MeshPeers::All(peers) => {
                *members = peers.into_iter().map(|p| (p.worker_id.clone(), p)).collect();
                let on_mesh: std::collections::HashSet<&str> =
                    members.values().map(|p| p.address.peer_id.as_str()).collect();
                self.locations
                    .lock()
                    .retain(|_, location| on_mesh.contains(location.peer_id.as_str()));
                let others = members.values().filter(|p| p.address.peer_id != own);
                self.mesh.set_peers(others.map(peer).collect());
            }
            MeshPeers::Changes { joined, left } => {
                // Peer ids no longer on the mesh: the workers that left, and the old ids of
                // those that came back as a new process.
                let mut gone: Vec<String> = left
                    .iter()
                    .filter_map(|id| members.remove(id))
                    .map(|p| p.address.peer_id)
                    .collect();
                let mut added = Vec::with_capacity(joined.len());
                for p in joined {
                    if p.address.peer_id != own {
                        added.push(peer(&p));
                    }
                    let new_id = p.address.peer_id.clone();
                    if let Some(old) = members.insert(p.worker_id.clone(), p)
                        && old.address.peer_id != new_id
                    {
                        gone.push(old.address.peer_id);
                    }
                }
                self.locations.lock().retain(|_, location| !gone.contains(&location.peer_id));
                self.mesh.change_peers(added, &gone);
            }
        }
    }

    /// The connection to the head is gone: lookups in flight will not be answered.
    pub fn head_lost(&self) {
        let waiting: Vec<_> = self.lookups.lock().drain().collect();
        if !waiting.is_empty() {
            warn!(lookups = waiting.len(), "the head went away during agent lookups");
        }
    }
}

/// Another agent of the cluster, called straight on the worker that hosts it.
pub struct MeshCall {
    pub agent: String,
    pub caller: Arc<AgentCaller>,
}

impl ToolCaller for MeshCall {
    fn definition(&self) -> serde_json::Value {
        tool_calls::agent_definition(&self.agent)
    }

    fn call(&self, call: &ToolCall, context: CallContext) -> BoxFuture<'static, ToolOutcome> {
        if context.depth >= MAX_CALL_DEPTH {
            let refused = ToolOutcome::error(format!(
                "agent {} not called: agents called agents {MAX_CALL_DEPTH} deep, the most allowed",
                self.agent
            ));
            return futures::future::ready(refused).boxed();
        }
        let request = Call {
            agent: self.agent.clone(),
            context_id: context.context_id,
            input: fleet_proto::call_input(&call.arguments),
            caller_task: context.task_id.to_string(),
            depth: context.depth + 1,
            timeout: TOOL_CALL_TIMEOUT,
            traceparent: context.traceparent,
        };
        let caller = self.caller.clone();
        async move {
            match &context.lease {
                Some(lease) => lease.lend(caller.call(request)).await,
                None => caller.call(request).await,
            }
        }
        .boxed()
    }
}

//! Agent calls: the callee's side. A call (from the mesh, or from an agent on this same
//! worker) runs on the local actor of the called agent like a task, but its events stay
//! here: the text becomes the answer and nothing goes to the head. A call that arrives just
//! before the head's `PlaceActor` waits briefly for the actor.
//!
//! Calls are bounded like tasks, each bound a [`Gate`] whose waiters are bounded too: at
//! most the agent's `max_concurrency` of its calls run at once on this worker (at most
//! [`TURN_WAITERS`] more wait their turn), and at most `--slots` calls from the mesh run at
//! once (as many again wait for a slot), at most [`CALLS_IN_PROGRESS`] in all. A call past a
//! full line is refused at once as busy, and one that waited until its caller's deadline is
//! refused too, so its caller looks for the agent again rather than queueing here. The
//! calls from the mesh running here are in the heartbeat, and the head counts them against
//! this worker's slots. A caller that stops waiting (canceled, timed out, gone) cancels the
//! run.
//!
//! A call's run lends its turn and slot back while it waits on a call of its own (see
//! [`Lease`]): agent A calling A under `max_concurrency = 1`, or a chain bouncing between
//! two one-slot workers, would otherwise wait on itself until its timeout. So the bounds
//! count calls running, not those waiting on their own calls (bounded by
//! [`CALLS_IN_PROGRESS`] and the call depth).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fleet_mesh::{IncomingCall, MeshResponse};
use fleet_proto::{EventKind, TaskAssignment, TaskId};
use kameo::actor::ActorRef;
use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::actor::{AgentActor, Run};
use crate::gate::{Gate, Lease, Shut};
use crate::tool::ToolOutcome;

/// How long a call waits for its agent's actor to be placed here.
const PLACEMENT_WAIT: Duration = Duration::from_secs(5);
/// Events of one call's run buffered at most (the collector reads them at once).
const CALL_EVENTS: usize = 256;
/// Calls that wait for one agent's turn at most (beyond its `max_concurrency` running).
pub const TURN_WAITERS: usize = 64;
/// Calls from the mesh in progress on a worker at most: waiting to be placed, for a turn or
/// a slot, or running (nested ones included).
pub const CALLS_IN_PROGRESS: usize = 1024;

/// One call of an agent by a running task.
#[derive(Clone, Debug)]
pub struct Call {
    pub agent: String,
    pub context_id: String,
    pub input: String,
    pub caller_task: String,
    /// Tool calls between the caller's task and a client's (the callee runs one deeper).
    pub depth: u32,
    pub timeout: Duration,
    /// W3C `traceparent` of the caller's `execute_tool` span (empty: not traced).
    pub traceparent: String,
}

/// Why a call did not run (busy, waited out, the agent not here or stopped): its caller
/// should forget where it looked for the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

/// A placed agent: its actor, and the turns its calls take when its spec limits how many
/// run at once (`max_concurrency`; `None`: no limit).
#[derive(Clone)]
struct Placed {
    actor: ActorRef<AgentActor>,
    turns: Option<Arc<Gate>>,
}

/// The agents' actors on this worker, by agent: the host places and stops them here, and
/// both its tasks and agent calls reach them through it.
#[derive(Clone, Default)]
pub struct LocalCalls {
    actors: Arc<Mutex<HashMap<String, Placed>>>,
    placed: Arc<Notify>,
    /// Calls from the mesh holding a slot now (in heartbeats: the head counts them as taken
    /// slots).
    from_mesh: Arc<AtomicUsize>,
}

impl LocalCalls {
    /// The agent's actor is placed here; at most `max_concurrency` calls of it run at once
    /// (0: no limit).
    pub fn placed(&self, agent: &str, actor: ActorRef<AgentActor>, max_concurrency: u32) {
        let turns = (max_concurrency > 0)
            .then(|| Arc::new(Gate::new(max_concurrency as usize, TURN_WAITERS)));
        let replaced = self.actors.lock().insert(agent.to_owned(), Placed { actor, turns });
        if let Some(Placed { turns: Some(turns), .. }) = replaced {
            turns.close();
        }
        self.placed.notify_waiters();
    }

    /// Takes the agent's actor out (to stop it); calls waiting for its turn are refused.
    pub fn removed(&self, agent: &str) -> Option<ActorRef<AgentActor>> {
        let placed = self.actors.lock().remove(agent)?;
        if let Some(turns) = &placed.turns {
            turns.close();
        }
        Some(placed.actor)
    }

    /// The agent's actor, if it is placed here.
    pub fn get(&self, agent: &str) -> Option<ActorRef<AgentActor>> {
        self.actors.lock().get(agent).map(|p| p.actor.clone())
    }

    /// Calls from the mesh holding one of this worker's slots now.
    pub fn calls_from_mesh(&self) -> usize {
        self.from_mesh.load(Ordering::Relaxed)
    }

    /// The agent as placed, waiting up to [`PLACEMENT_WAIT`] for the head's placement.
    async fn placement(&self, agent: &str) -> Option<Placed> {
        let deadline = tokio::time::Instant::now() + PLACEMENT_WAIT;
        loop {
            let placed = self.placed.notified();
            if let Some(placed) = self.actors.lock().get(agent).cloned() {
                return Some(placed);
            }
            if tokio::time::timeout_at(deadline, placed).await.is_err() {
                return None;
            }
        }
    }

    /// Runs one call of an agent on this worker and returns the callee's answer, or why it
    /// did not run. Dropping the future (the caller went away) cancels the run.
    pub async fn call(&self, call: Call) -> Result<ToolOutcome, Refused> {
        self.call_within(call, None).await
    }

    /// Runs one call: its turn under the agent's `max_concurrency` first, then (a call from
    /// the mesh) one of this worker's `slots`, both within the caller's time, held by the
    /// run's lease.
    async fn call_within(
        &self,
        call: Call,
        slots: Option<&Arc<Gate>>,
    ) -> Result<ToolOutcome, Refused> {
        let Some(Placed { actor, turns }) = self.placement(&call.agent).await else {
            return Err(Refused(format!("agent {} is not hosted on this worker", call.agent)));
        };
        let deadline = tokio::time::Instant::now() + call.timeout;
        let shut = |shut: Shut, what: &str| {
            let agent = &call.agent;
            Refused(match shut {
                Shut::Busy => format!(
                    "agent {agent} is busy: {what} are all taken and as many calls wait; retry later"
                ),
                Shut::TimedOut => format!(
                    "agent {agent} waited all of {} s for one of {what}",
                    call.timeout.as_secs_f64()
                ),
                Shut::Closed => format!("agent {agent} was stopped"),
            })
        };
        let lease = Arc::new(Lease::default());
        if let Some(turns) = &turns {
            let turn = lease.take(turns, deadline, None).await;
            turn.map_err(|s| shut(s, "its turns (max_concurrency)"))?;
        }
        if let Some(slots) = slots {
            let slot = lease.take(slots, deadline, Some(self.from_mesh.clone())).await;
            slot.map_err(|s| shut(s, "its worker's slots"))?;
        }
        // No actor state: the head locates no agent that keeps one, its calls go through it.
        let task = TaskAssignment {
            context_id: call.context_id,
            depth: call.depth,
            // The callee's spans go under the caller's `execute_tool` span.
            traceparent: call.traceparent,
            ..TaskAssignment::new(
                TaskId::new(format!("call-{}", uuid::Uuid::new_v4())),
                call.agent.clone(),
                call.input,
            )
        };
        let (sink, mut events) = mpsc::channel(CALL_EVENTS);
        let cancel = CancellationToken::new();
        // Canceled however this call ends early: the caller gone, the timeout below.
        let _cancel_on_drop = cancel.clone().drop_guard();
        let run = Run { task, sink, cancel: cancel.clone(), lease: Some(lease) };
        if let Err(e) = actor.ask(run).await {
            return Ok(ToolOutcome::error(format!(
                "the actor of agent {} failed ({e})",
                call.agent
            )));
        }
        let collect = async {
            let mut output = String::new();
            // Nobody keeps a record of a call over the mesh: `stored` waiters are dropped.
            while let Some(out) = events.recv().await {
                match out.event.kind {
                    EventKind::TextDelta { text, .. } => output.push_str(&text),
                    EventKind::Completed { .. } => return ToolOutcome::ok(output),
                    EventKind::Failed { error, .. } => return ToolOutcome::error(error),
                    EventKind::Canceled { reason } => return ToolOutcome::error(reason),
                    _ => {}
                }
            }
            ToolOutcome::error(format!("agent {} stopped before answering", call.agent))
        };
        Ok(match tokio::time::timeout_at(deadline, collect).await {
            Ok(outcome) => outcome,
            Err(_) => {
                let secs = call.timeout.as_secs_f64();
                ToolOutcome::error(format!("agent {} did not answer within {secs} s", call.agent))
            }
        })
    }

    /// Answers the calls that arrive over the mesh, each in its own task, until the mesh
    /// stops. Taking a call never waits, so the mesh's queue keeps moving: a call past the
    /// bounds (see the module's doc) is refused at once.
    pub async fn serve(self, mut incoming: mpsc::Receiver<IncomingCall>, slots: usize) {
        let slots = Arc::new(Gate::new(slots.max(1), slots.max(1)));
        let in_progress = Arc::new(Semaphore::new(CALLS_IN_PROGRESS));
        while let Some(IncomingCall { from, call, reply }) = incoming.recv().await {
            let Ok(admission) = in_progress.clone().try_acquire_owned() else {
                warn!(agent = %call.agent, from = %from, "refusing a call: {CALLS_IN_PROGRESS} calls are in progress here");
                let reason = format!(
                    "the called worker is busy ({CALLS_IN_PROGRESS} calls in progress); retry later"
                );
                let _ = reply.send(MeshResponse::Refused { reason });
                continue;
            };
            let (local, slots) = (self.clone(), slots.clone());
            tokio::spawn(async move {
                let _admission = admission;
                local.answer(from, call, reply, &slots).await;
            });
        }
    }

    /// Runs one call from the mesh and answers it, unless its caller stops waiting first.
    async fn answer(
        &self,
        from: String,
        call: fleet_mesh::AgentCall,
        mut reply: tokio::sync::oneshot::Sender<MeshResponse>,
        slots: &Arc<Gate>,
    ) {
        debug!(agent = %call.agent, from = %from, caller_task = %call.caller_task, trace = %call.trace, "call from the mesh");
        let call = Call {
            agent: call.agent,
            context_id: call.context_id,
            input: call.input,
            caller_task: call.caller_task,
            depth: call.depth,
            timeout: Duration::from_millis(call.timeout_ms.clamp(1, 3_600_000)),
            traceparent: fleet_telemetry::normalized(&call.trace),
        };
        // Waiting or running, the call ends when its caller stops waiting.
        let outcome = tokio::select! {
            outcome = self.call_within(call, Some(slots)) => outcome,
            () = reply.closed() => {
                debug!(from = %from, "the caller canceled the call; its run is canceled");
                return;
            }
        };
        let response = match outcome {
            Ok(ToolOutcome { output, is_error }) => MeshResponse::Reply { output, is_error },
            Err(Refused(reason)) => MeshResponse::Refused { reason },
        };
        if reply.send(response).is_err() {
            warn!(from = %from, "the caller went away before the answer");
        }
    }
}

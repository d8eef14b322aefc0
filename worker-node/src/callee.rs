//! Agent calls: the callee's side. A call (from the mesh, or from an agent on this same
//! worker) runs on the local actor of the called agent like a task, but its events stay
//! here: the text becomes the answer and nothing goes to the head. A call that arrives just
//! before the head's `PlaceActor` waits briefly for the actor.
//!
//! Calls are bounded like tasks: at most the agent's `max_concurrency` of them run at once
//! on this worker (the rest wait their turn), at most `--slots` calls from the mesh run at
//! once and as many again wait; past that this worker stops taking calls off the mesh, whose
//! own bounded queue then refuses callers as busy. The calls from the mesh running here are
//! in the heartbeat, and the head counts them against this worker's slots. A caller that
//! stops waiting (canceled, timed out, gone) cancels the run.

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
use crate::agent_calls::Call;
use crate::host::ToolOutcome;

/// How long a call waits for its agent's actor to be placed here.
const PLACEMENT_WAIT: Duration = Duration::from_secs(5);
/// Events of one call's run buffered at most (the collector reads them at once).
const CALL_EVENTS: usize = 256;

/// A placed agent: its actor, and the turns its calls take when its spec limits how many
/// run at once (`max_concurrency`; `None`: no limit).
#[derive(Clone)]
struct Placed {
    actor: ActorRef<AgentActor>,
    turns: Option<Arc<Semaphore>>,
}

/// The agents' actors on this worker, by agent: the host places and stops them here, and
/// both its tasks and agent calls reach them through it.
#[derive(Clone, Default)]
pub struct LocalCalls {
    actors: Arc<Mutex<HashMap<String, Placed>>>,
    placed: Arc<Notify>,
    /// Calls from the mesh running now (in heartbeats: the head counts them as taken slots).
    from_mesh: Arc<AtomicUsize>,
}

impl LocalCalls {
    /// The agent's actor is placed here; at most `max_concurrency` calls of it run at once
    /// (0: no limit).
    pub fn placed(&self, agent: &str, actor: ActorRef<AgentActor>, max_concurrency: u32) {
        let turns =
            (max_concurrency > 0).then(|| Arc::new(Semaphore::new(max_concurrency as usize)));
        self.actors.lock().insert(agent.to_owned(), Placed { actor, turns });
        self.placed.notify_waiters();
    }

    /// Takes the agent's actor out (to stop it).
    pub fn removed(&self, agent: &str) -> Option<ActorRef<AgentActor>> {
        self.actors.lock().remove(agent).map(|p| p.actor)
    }

    /// The agent's actor, if it is placed here.
    pub fn get(&self, agent: &str) -> Option<ActorRef<AgentActor>> {
        self.actors.lock().get(agent).map(|p| p.actor.clone())
    }

    /// Calls from the mesh running on this worker now.
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

    /// Runs one call of an agent on this worker and returns the callee's answer. Dropping
    /// the future (the caller went away) cancels the run.
    pub async fn call(&self, call: Call) -> ToolOutcome {
        self.call_within(call, None).await
    }

    /// Runs one call: its turn under the agent's `max_concurrency` first, then (a call from
    /// the mesh) one of this worker's `slots`, both within the caller's time.
    async fn call_within(&self, call: Call, slots: Option<Arc<Semaphore>>) -> ToolOutcome {
        let Some(Placed { actor, turns }) = self.placement(&call.agent).await else {
            return (format!("agent {} is not hosted on this worker", call.agent), true);
        };
        let deadline = tokio::time::Instant::now() + call.timeout;
        let waited_out = |what: &str| {
            let secs = call.timeout.as_secs_f64();
            (format!("agent {} waited all of {secs} s for {what}", call.agent), true)
        };
        let _turn = match turns {
            Some(turns) => match tokio::time::timeout_at(deadline, turns.acquire_owned()).await {
                Ok(Ok(turn)) => Some(turn),
                Ok(Err(_)) => return (format!("agent {} was stopped", call.agent), true),
                Err(_) => return waited_out("its turn (its max_concurrency of calls ran)"),
            },
            None => None,
        };
        let _slot = match slots {
            Some(slots) => match tokio::time::timeout_at(deadline, slots.acquire_owned()).await {
                Ok(Ok(slot)) => {
                    self.from_mesh.fetch_add(1, Ordering::Relaxed);
                    Some((slot, Counted(self.from_mesh.clone())))
                }
                Ok(Err(_)) => return (format!("agent {} was stopped", call.agent), true),
                Err(_) => return waited_out("a free slot on its worker"),
            },
            None => None,
        };
        let task = TaskAssignment {
            task_id: TaskId::new(format!("call-{}", uuid::Uuid::new_v4())),
            agent: call.agent.clone(),
            attempt: 1,
            input: call.input,
            context_id: call.context_id,
            options: None,
            depth: call.depth,
            // The callee's spans go under the caller's `execute_tool` span.
            traceparent: call.traceparent,
        };
        let (sink, mut events) = mpsc::channel(CALL_EVENTS);
        let cancel = CancellationToken::new();
        // Canceled however this call ends early: the caller gone, the timeout below.
        let _cancel_on_drop = cancel.clone().drop_guard();
        let run = Run { task, sink, cancel: cancel.clone() };
        if let Err(e) = actor.ask(run).await {
            return (format!("the actor of agent {} failed ({e})", call.agent), true);
        }
        let collect = async {
            let mut output = String::new();
            while let Some(event) = events.recv().await {
                match event.kind {
                    EventKind::TextDelta { text, .. } => output.push_str(&text),
                    EventKind::Completed { .. } => return (output, false),
                    EventKind::Failed { error, .. } => return (error, true),
                    EventKind::Canceled { reason } => return (reason, true),
                    _ => {}
                }
            }
            (format!("agent {} stopped before answering", call.agent), true)
        };
        match tokio::time::timeout_at(deadline, collect).await {
            Ok(outcome) => outcome,
            Err(_) => {
                let secs = call.timeout.as_secs_f64();
                (format!("agent {} did not answer within {secs} s", call.agent), true)
            }
        }
    }

    /// Answers the calls that arrive over the mesh, each in its own task, until the mesh
    /// stops: at most `slots` run at once and as many again wait; past that no more calls
    /// are taken off the mesh until one ends.
    pub async fn serve(self, mut incoming: mpsc::Receiver<IncomingCall>, slots: usize) {
        let running = Arc::new(Semaphore::new(slots.max(1)));
        let admitted = Arc::new(Semaphore::new(slots.max(1) * 2));
        loop {
            let Ok(admission) = admitted.clone().acquire_owned().await else { return };
            let Some(IncomingCall { from, call, mut reply }) = incoming.recv().await else {
                return;
            };
            let (local, running) = (self.clone(), running.clone());
            tokio::spawn(async move {
                let _admission = admission;
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
                let (output, is_error) = tokio::select! {
                    outcome = local.call_within(call, Some(running)) => outcome,
                    () = reply.closed() => {
                        debug!(from = %from, "the caller canceled the call; its run is canceled");
                        return;
                    }
                };
                if reply.send(MeshResponse::Reply { output, is_error }).is_err() {
                    warn!(from = %from, "the caller went away before the answer");
                }
            });
        }
    }
}

/// One count of a call in progress, taken back when the call ends however it ends.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

//! Agent calls: the callee's side. A call (from the mesh, or from an agent on this same
//! worker) runs on the local actor of the called agent like a task, but its events stay
//! here: the text becomes the answer and nothing goes to the head. A call that arrives just
//! before the head's `PlaceActor` waits briefly for the actor.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fleet_mesh::{IncomingCall, MeshResponse};
use fleet_proto::{EventKind, TaskAssignment, TaskId};
use kameo::actor::ActorRef;
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::actor::{AgentActor, Run};
use crate::agent_calls::Call;
use crate::host::ToolOutcome;

/// How long a call waits for its agent's actor to be placed here.
const PLACEMENT_WAIT: Duration = Duration::from_secs(5);
/// Events of one call's run buffered at most (the collector reads them at once).
const CALL_EVENTS: usize = 256;

/// The agents' actors on this worker, by agent: the host places and stops them here, and
/// both its tasks and agent calls reach them through it.
#[derive(Clone, Default)]
pub struct LocalCalls {
    actors: Arc<Mutex<HashMap<String, ActorRef<AgentActor>>>>,
    placed: Arc<Notify>,
}

impl LocalCalls {
    pub fn placed(&self, agent: &str, actor: ActorRef<AgentActor>) {
        self.actors.lock().insert(agent.to_owned(), actor);
        self.placed.notify_waiters();
    }

    /// Takes the agent's actor out (to stop it).
    pub fn removed(&self, agent: &str) -> Option<ActorRef<AgentActor>> {
        self.actors.lock().remove(agent)
    }

    /// The agent's actor, if it is placed here.
    pub fn get(&self, agent: &str) -> Option<ActorRef<AgentActor>> {
        self.actors.lock().get(agent).cloned()
    }

    /// The agent's actor, waiting up to [`PLACEMENT_WAIT`] for the head's placement.
    async fn actor(&self, agent: &str) -> Option<ActorRef<AgentActor>> {
        let deadline = tokio::time::Instant::now() + PLACEMENT_WAIT;
        loop {
            let placed = self.placed.notified();
            if let Some(actor) = self.get(agent) {
                return Some(actor);
            }
            if tokio::time::timeout_at(deadline, placed).await.is_err() {
                return None;
            }
        }
    }

    /// Runs one call on this worker and returns the callee's answer.
    pub async fn call(&self, call: Call) -> ToolOutcome {
        let Some(actor) = self.actor(&call.agent).await else {
            return (format!("agent {} is not hosted on this worker", call.agent), true);
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
        match tokio::time::timeout(call.timeout, collect).await {
            Ok(outcome) => outcome,
            Err(_) => {
                cancel.cancel();
                let secs = call.timeout.as_secs_f64();
                (format!("agent {} did not answer within {secs} s", call.agent), true)
            }
        }
    }

    /// Answers the calls that arrive over the mesh, each in its own task, until the mesh
    /// stops.
    pub async fn serve(self, mut incoming: mpsc::Receiver<IncomingCall>) {
        while let Some(IncomingCall { from, call, reply }) = incoming.recv().await {
            let local = self.clone();
            tokio::spawn(async move {
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
                let (output, is_error) = local.call(call).await;
                if reply.send(MeshResponse::Reply { output, is_error }).is_err() {
                    warn!(from = %from, "the caller went away before the answer");
                }
            });
        }
    }
}

//! `AgentActor`: one kameo actor per agent on this worker. It owns the agent's spec, its
//! (shared) model and its conversation memory; each task it is given runs as its own tokio
//! task so one agent serves many tasks at once.

use std::sync::Arc;

use fleet_inference::{ChatMessage, GenerateRequest, Model, Role};
use fleet_proto::{AgentSpec, TaskAssignment};
use kameo::actor::{Actor, ActorRef};
use kameo::error::Infallible;
use kameo::message::{Context, Message};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

use crate::memory::ConversationMemory;
use crate::runner::{self, EventSink};

/// What an agent actor is started (and restarted) with.
#[derive(Clone)]
pub struct AgentArgs {
    pub spec: Arc<AgentSpec>,
    pub model: Arc<dyn Model>,
    pub running: crate::host::RunningTasks,
}

pub struct AgentActor {
    spec: Arc<AgentSpec>,
    model: Arc<dyn Model>,
    memory: ConversationMemory,
    running: crate::host::RunningTasks,
}

impl Actor for AgentActor {
    type Args = AgentArgs;
    type Error = Infallible;

    async fn on_start(args: Self::Args, _actor_ref: ActorRef<Self>) -> Result<Self, Self::Error> {
        Ok(Self {
            spec: args.spec,
            model: args.model,
            memory: ConversationMemory::default(),
            running: args.running,
        })
    }
}

/// Run a task of this agent.
pub struct Run {
    pub task: TaskAssignment,
    pub sink: EventSink,
    pub cancel: CancellationToken,
}

/// Remember a finished turn of a conversation.
struct Remember {
    context_id: String,
    user: String,
    assistant: String,
}

impl AgentActor {
    fn request(&self, task: &TaskAssignment) -> GenerateRequest {
        let mut messages = Vec::new();
        if !self.spec.instructions.is_empty() {
            messages.push(ChatMessage::new(Role::System, self.spec.instructions.clone()));
        }
        messages.extend(self.memory.history(&task.context_id).cloned());
        messages.push(ChatMessage::new(Role::User, task.input.clone()));
        let s = &self.spec.sampling;
        GenerateRequest {
            messages,
            max_tokens: s.max_tokens,
            temperature: s.temperature,
            top_p: s.top_p,
            seed: s.seed,
            ..Default::default()
        }
    }
}

impl Message<Run> for AgentActor {
    type Reply = ();

    async fn handle(&mut self, msg: Run, ctx: &mut Context<Self, Self::Reply>) -> Self::Reply {
        let generation = self.model.generate(self.request(&msg.task));
        let actor = ctx.actor_ref().clone();
        let running = self.running.clone();
        let span = info_span!("task", task_id = %msg.task.task_id, agent = %self.spec.name, attempt = msg.task.attempt);
        tokio::spawn(
            async move {
                let Run { task, sink, cancel } = msg;
                let finished = runner::run(&task, generation, &sink, &cancel).await;
                running.lock().remove(&task.task_id);
                if let Some(finished) = finished
                    && !task.context_id.is_empty()
                {
                    let remember = Remember {
                        context_id: task.context_id,
                        user: task.input,
                        assistant: finished.output,
                    };
                    // The actor may have been stopped meanwhile; the memory goes with it.
                    let _ = actor.tell(remember).await;
                }
            }
            .instrument(span),
        );
    }
}

impl Message<Remember> for AgentActor {
    type Reply = ();

    async fn handle(
        &mut self,
        msg: Remember,
        _ctx: &mut Context<Self, Self::Reply>,
    ) -> Self::Reply {
        self.memory.remember(&msg.context_id, msg.user, msg.assistant);
    }
}

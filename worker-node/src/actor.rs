//! `AgentActor`: one kameo actor per agent on this worker. It owns the agent's spec, its
//! (shared) model and its conversation memory; each task it is given runs the agent loop
//! ([`crate::agent_loop`]) as its own tokio task so one agent serves many tasks at once.

use std::collections::HashMap;
use std::sync::Arc;

use fleet_inference::{ChatMessage, Role, ToolCall};
use fleet_proto::{AgentSpec, TaskAssignment, TaskId};
use kameo::actor::{Actor, ActorRef};
use kameo::error::Infallible;
use kameo::message::{Context, Message};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

use crate::agent_loop::{self, TaskRun};
use crate::gate::Lease;
use crate::memory::ConversationMemory;
use crate::models::ModelHandle;
use crate::runner::EventSink;
use crate::toolbox::ToolboxSource;
use crate::topics::{self, TopicBoard};

/// The tasks running on this worker's actors, each with its attempt and what cancels it.
pub type RunningTasks = Arc<Mutex<HashMap<TaskId, (u32, CancellationToken)>>>;

/// What an agent actor is started (and restarted) with.
#[derive(Clone)]
pub struct AgentArgs {
    pub spec: Arc<AgentSpec>,
    pub model: ModelHandle,
    pub running: RunningTasks,
    /// The agent's tools, each routed where it runs.
    pub tools: ToolboxSource,
    /// The mesh's topics, for agents with `topics` (their latest messages go in the prompt).
    pub board: Option<Arc<TopicBoard>>,
}

pub struct AgentActor {
    args: AgentArgs,
    memory: ConversationMemory,
}

impl Actor for AgentActor {
    type Args = AgentArgs;
    type Error = Infallible;

    async fn on_start(args: Self::Args, _actor_ref: ActorRef<Self>) -> Result<Self, Self::Error> {
        Ok(Self { args, memory: ConversationMemory::default() })
    }
}

/// Run a task of this agent.
pub struct Run {
    pub task: TaskAssignment,
    pub sink: EventSink,
    pub cancel: CancellationToken,
    /// The turn and slot a call's run holds, lent back while it waits on its own calls
    /// (`None` for a task: the head's slots bound those).
    pub lease: Option<Arc<Lease>>,
}

/// Remember a finished turn of a conversation.
struct Remember {
    context_id: String,
    user: String,
    assistant: String,
}

impl AgentActor {
    /// Instructions, then the conversation so far (given with the task, or remembered for
    /// its context), then the input.
    fn messages(&self, task: &TaskAssignment) -> Vec<ChatMessage> {
        let mut messages = Vec::new();
        if !self.args.spec.instructions.is_empty() {
            messages.push(ChatMessage::new(Role::System, self.args.spec.instructions.clone()));
        }
        if let Some(board) = &self.args.board {
            let recent = board.recent(&self.args.spec.topics);
            if !recent.is_empty() {
                messages.push(ChatMessage::new(Role::System, topics::prompt_text(&recent)));
            }
        }
        match &task.options {
            Some(options) if !options.history.is_empty() => {
                messages.extend(options.history.iter().map(turn_message));
            }
            _ => messages.extend(self.memory.history(&task.context_id).cloned()),
        }
        // No input: the conversation given with the task ends where the model answers (a
        // tool's result, or only a system message).
        let answers_history =
            task.input.is_empty() && task.options.as_ref().is_some_and(|o| !o.history.is_empty());
        if !answers_history {
            messages.push(ChatMessage::new(Role::User, task.input.clone()));
        }
        messages
    }
}

/// An earlier turn given with a task as the model's message, with its tool calls.
fn turn_message(t: &fleet_proto::Turn) -> ChatMessage {
    ChatMessage {
        tool_calls: t
            .tool_calls
            .iter()
            .map(|c| ToolCall {
                id: c.id.clone(),
                name: c.name.clone(),
                arguments: c.arguments.clone(),
            })
            .collect(),
        tool_call_id: (!t.tool_call_id.is_empty()).then(|| t.tool_call_id.clone()),
        ..ChatMessage::new(role(&t.role), &t.content)
    }
}

fn role(name: &str) -> Role {
    match name {
        "system" | "developer" => Role::System,
        "assistant" => Role::Assistant,
        "tool" => Role::Tool,
        _ => Role::User,
    }
}

impl Message<Run> for AgentActor {
    type Reply = ();

    async fn handle(&mut self, msg: Run, ctx: &mut Context<Self, Self::Reply>) -> Self::Reply {
        let messages = self.messages(&msg.task);
        let actor = ctx.actor_ref().clone();
        let running = self.args.running.clone();
        let span = info_span!("task", task_id = %msg.task.task_id, agent = %self.args.spec.name, attempt = msg.task.attempt);
        // A conversation the client carries itself is not the agent's to remember.
        let remember = msg.task.options.as_ref().is_none_or(|o| o.history.is_empty());
        let run = TaskRun {
            spec: self.args.spec.clone(),
            model: self.args.model.clone(),
            messages,
            tools: self.args.tools.clone(),
            task: msg.task,
            sink: msg.sink,
            cancel: msg.cancel,
            lease: msg.lease,
        };
        tokio::spawn(
            async move {
                let task_id = run.task.task_id.clone();
                let context_id = run.task.context_id.clone();
                let input = run.task.input.clone();
                let finished = agent_loop::run(run).await;
                running.lock().remove(&task_id);
                if let Some(finished) = finished
                    && remember
                    && !context_id.is_empty()
                {
                    let remember = Remember { context_id, user: input, assistant: finished.output };
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

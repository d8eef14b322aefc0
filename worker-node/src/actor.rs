//! `AgentActor`: one kameo actor per agent on this worker. It owns the agent's spec, its
//! (shared) model and its conversation memory; each task it is given runs the agent loop
//! ([`crate::agent_loop`]) as its own tokio task so one agent serves many tasks at once.

use std::collections::HashMap;
use std::sync::Arc;

use fleet_inference::{ChatMessage, Role, ToolCall};
use fleet_proto::{AgentSpec, TaskAssignment, TaskId};
use futures::FutureExt;
use kameo::actor::{Actor, ActorRef};
use kameo::error::Infallible;
use kameo::message::{Context, Message};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

use crate::agent_loop::{self, TaskRun};
use crate::code_agents::{self, CodeHost};
use crate::gate::Lease;
use crate::memory::ConversationMemory;
use crate::models::ModelHandle;
use crate::runner::EventSink;
use crate::toolbox::ToolboxSource;
use crate::topics::{self, TopicBoard};

/// The tasks running on this worker's actors, each with its attempt and what cancels it.
pub type RunningTasks = Arc<Mutex<HashMap<TaskId, (u32, CancellationToken)>>>;

/// What answers an agent's tasks: a model, or code this process hosts.
#[derive(Clone)]
pub enum Brain {
    Model(ModelHandle),
    Code(CodeHost),
}

/// What an agent actor is started (and restarted) with.
#[derive(Clone)]
pub struct AgentArgs {
    pub spec: Arc<AgentSpec>,
    pub brain: Brain,
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
    /// Instructions, then the conversation so far (see [`Self::history`]), then the input.
    fn messages(&self, task: &TaskAssignment, from_head: bool) -> Vec<ChatMessage> {
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
        messages.extend(self.history(task, from_head));
        // No input: the conversation given with the task ends where the model answers (a
        // tool's result, or only a system message).
        let answers_history =
            task.input.is_empty() && task.options.as_ref().is_some_and(|o| !o.history.is_empty());
        if !answers_history {
            let files = task.options.as_ref().map_or(&[][..], |o| &o.files[..]);
            messages.push(ChatMessage::new(Role::User, with_file_list(&task.input, files)));
        }
        messages
    }

    /// The conversation before the task: the client's, given with it; for a task from the
    /// head, its context's turns the head stores and sent with it (any worker continues any
    /// conversation); for a call over the mesh, what this actor remembers of its context.
    fn history(&self, task: &TaskAssignment, from_head: bool) -> Vec<ChatMessage> {
        match &task.options {
            Some(options) if !options.history.is_empty() => {
                options.history.iter().map(turn_message).collect()
            }
            _ if from_head => task.conversation.iter().map(turn_message).collect(),
            _ => self.memory.history(&task.context_id).cloned().collect(),
        }
    }
}

/// An earlier turn given with a task as the model's message, with its tool calls.
pub(crate) fn turn_message(t: &fleet_proto::Turn) -> ChatMessage {
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
        let actor = ctx.actor_ref().clone();
        let running = self.args.running.clone();
        let span = info_span!("task", task_id = %msg.task.task_id, agent = %self.args.spec.name, attempt = msg.task.attempt);
        // The head remembers the conversations of its tasks; the actor those of calls over
        // the mesh, which the head does not see. A conversation the client carries itself
        // is not the agent's to remember.
        let from_head = msg.lease.is_none();
        let remember = !from_head && msg.task.options.as_ref().is_none_or(|o| o.history.is_empty());
        let (task_id, context_id, input) =
            (msg.task.task_id.clone(), msg.task.context_id.clone(), msg.task.input.clone());
        let brain = self.args.brain.clone();
        // What the brain reads before the task moves into the run.
        let conversation = match &brain {
            Brain::Model(_) => self.messages(&msg.task, from_head),
            Brain::Code(_) => self.history(&msg.task, from_head),
        };
        let run = TaskRun {
            spec: self.args.spec.clone(),
            tools: self.args.tools.clone(),
            task: msg.task,
            sink: msg.sink,
            cancel: msg.cancel,
            lease: msg.lease,
        };
        let work = match brain {
            Brain::Model(model) => agent_loop::run(run, model, conversation).boxed(),
            Brain::Code(host) => code_agents::run(run, host, conversation).boxed(),
        };
        tokio::spawn(
            async move {
                let finished = work.await;
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

/// A model's input with the files given with its task named after it: the model reads no
/// file, but its tools that take files get them all, and it should know they are there.
fn with_file_list(input: &str, files: &[fleet_proto::FilePart]) -> String {
    if files.is_empty() {
        return input.to_owned();
    }
    let mut text = format!(
        "{input}\n\nFiles given with this message (your tools that take files receive them):"
    );
    for f in files {
        let name = if f.name.is_empty() { "unnamed" } else { f.name.as_str() };
        if f.url.is_empty() {
            text.push_str(&format!("\n- {name} ({}, {} bytes)", f.media_type, f.data.len()));
        } else {
            text.push_str(&format!("\n- {name} ({}) at {}", f.media_type, f.url));
        }
    }
    text
}

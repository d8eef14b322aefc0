//! Agents whose logic is code this process hosts instead of a model's answers: Python agents
//! (the Python package implements [`CodeAgents`]; this crate knows no Python). Such an
//! agent's model is `python:NAME`; the worker tells the head which NAMEs it hosts when it
//! joins, so their tasks are placed only here and on workers like it. [`run`] drives one
//! task: the code streams its answer (text, and files or data as artifacts) through a
//! [`CodeContext`], which also lets it chat with the worker's models, call other agents and
//! the agent's tools (each call and result shows in the task's events, as a model's would),
//! ask its user, and publish on its topics.
//!
//! An agent with `actor_state` gets its key's stored state with each task
//! ([`CodeTask::state`]); the code saves it ([`CodeContext::save_state`]) when it asks to
//! and, changed, when it ends well: the head keeps it for the key's next task.
//!
//! A retried task's code runs again from the start; a call that repeats one of the lost
//! attempts' (the same tool with the same arguments) is answered from their record, as
//! Temporal replays a workflow, so no finished call, question or publication is made twice.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fleet_inference::{ChatMessage, GenerateRequest, Generation, GenerationEvent, ToolCall};
use fleet_proto::{
    AgentSpec, Artifact, CallMade, ErrorKind, EventKind, TaskAssignment, Turn, Usage,
};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::agent_loop::{Finished, TaskRun};
use crate::ask::Asking;
use crate::gate::Lease;
use crate::models::ModelStore;
use crate::runner::{self, EventSink, emit, failed};
use crate::spans;
use crate::tool::{CallContext, ToolCaller, ToolOutcome};
use crate::tool_calls::ToolCallParser;
use crate::toolbox::ToolboxSource;

/// The worker's models, shared by its actors and the code agents that chat with them.
pub type SharedModels = Arc<Mutex<ModelStore>>;

/// One task as the code of its agent sees it.
#[derive(Clone, Debug, Default)]
pub struct CodeTask {
    /// The code's name: the `NAME` of the agent's model `python:NAME`.
    pub program: String,
    /// The cluster agent the task was sent to (one program may serve several agents).
    pub agent: String,
    pub task_id: String,
    pub context_id: String,
    pub attempt: u32,
    pub input: String,
    /// The conversation before this task: the client's, or what the agent remembers of it.
    pub history: Vec<ChatMessage>,
    pub instructions: String,
    /// Files given with the task (A2A file parts).
    pub files: Vec<fleet_proto::FilePart>,
    /// The stored state of its actor (a JSON object), for an agent that keeps one; none
    /// for others, and for a per-context agent's task without a context (its state starts
    /// empty and is not stored).
    pub state: Option<Arc<str>>,
}

/// How a code agent's run ended: `Err` carries what failed (the task fails with it).
pub type CodeResult = Result<(), String>;

/// The code agents this process hosts.
pub trait CodeAgents: Send + Sync + 'static {
    /// The programs hosted ([`fleet_proto::ANY_PYTHON_AGENT`]: whatever the process defines).
    fn names(&self) -> Vec<String>;

    /// Runs one task; ends when the code does. Dropping the future cancels the run.
    fn run(&self, task: CodeTask, context: CodeContext) -> BoxFuture<'static, CodeResult>;
}

/// How this worker reaches an agent called as a tool (through the head, or over the mesh).
pub type AgentRoute = Arc<dyn Fn(&str) -> Arc<dyn ToolCaller> + Send + Sync>;

/// What the actors of code agents share on one worker.
#[derive(Clone)]
pub struct CodeHost {
    pub agents: Arc<dyn CodeAgents>,
    pub models: SharedModels,
    /// Agents the code calls that are not among its agent's tools.
    pub route: AgentRoute,
}

/// A running task's handle for its code: stream text, chat, call, publish.
#[derive(Clone)]
pub struct CodeContext(Arc<Shared>);

struct Shared {
    host: CodeHost,
    task: TaskAssignment,
    spec: Arc<AgentSpec>,
    sink: EventSink,
    cancel: CancellationToken,
    tools: ToolboxSource,
    lease: Option<Arc<Lease>>,
    traceparent: String,
    next_call: AtomicU64,
    next_artifact: AtomicU64,
    /// The text streamed so far (the answer the agent's memory keeps).
    output: Mutex<String>,
    /// Tokens of the models it chatted with.
    usage: Mutex<Usage>,
    /// How the task ends whatever the code does (a question left unanswered too long).
    ended: Mutex<Option<EventKind>>,
    /// The calls the lost attempts of a retried task made, not yet made again.
    recorded: Mutex<Recorded>,
}

/// A call a lost attempt made, with its stored result (none: in flight when it was lost).
struct RecordedCall {
    made: CallMade,
    result: Option<ToolOutcome>,
}

/// The calls a retried task's lost attempts made, oldest first: the code's calls are
/// answered from them while it repeats them.
#[derive(Default)]
struct Recorded(VecDeque<RecordedCall>);

impl Recorded {
    fn of(steps: &[Turn]) -> Self {
        let results: HashMap<&str, &Turn> = steps
            .iter()
            .filter(|s| s.role == "tool")
            .map(|s| (s.tool_call_id.as_str(), s))
            .collect();
        let calls = steps.iter().filter(|s| s.role == "assistant").flat_map(|s| &s.tool_calls);
        Self(
            calls
                .map(|made| RecordedCall {
                    made: made.clone(),
                    result: results
                        .get(made.id.as_str())
                        .map(|r| ToolOutcome { output: r.content.clone(), is_error: r.is_error }),
                })
                .collect(),
        )
    }

    /// The recorded call that a call of `tool` with `arguments` repeats: the oldest one not
    /// yet repeated of the same tool with the same arguments. Calls that repeat none (the
    /// code took another path, or a person refused the call before it was made) are made;
    /// the record stays for the calls after them, in whatever order they come (calls
    /// awaited together finish in any order).
    fn repeated(&mut self, tool: &str, arguments: &str) -> Option<RecordedCall> {
        let parse = |text: &str| serde_json::from_str::<serde_json::Value>(text).ok();
        let wanted = parse(arguments);
        let same = |made: &CallMade| {
            made.name == tool
                && (made.arguments == arguments
                    || (wanted.is_some() && parse(&made.arguments) == wanted))
        };
        let found = self.0.iter().position(|r| same(&r.made));
        if found.is_none() && !self.0.is_empty() {
            debug!(tool, "a call of the retried code repeats none of the record's");
        }
        self.0.remove(found?)
    }
}

/// The most text one `chat` answers with before it is cut (a runaway generation).
const MAX_CHAT_TOKENS: u32 = 4096;

impl CodeContext {
    pub fn task_id(&self) -> &str {
        self.0.task.task_id.as_str()
    }

    /// Streams `text` as part of the task's answer.
    pub async fn text(&self, text: String) {
        if text.is_empty() {
            return;
        }
        self.0.output.lock().push_str(&text);
        emit(&self.0.sink, &self.0.task, EventKind::TextDelta { text, logprobs: Vec::new() }).await;
    }

    /// Returns a file or JSON data beside the task's text. One without an id gets
    /// `artifact-N` (N counts the task's artifacts from 1): a retried attempt returning the
    /// same artifacts gives them the same ids.
    pub async fn artifact(&self, mut artifact: Artifact) {
        if artifact.id.is_empty() {
            let n = self.0.next_artifact.fetch_add(1, Ordering::Relaxed);
            artifact.id = format!("artifact-{n}");
        }
        emit(&self.0.sink, &self.0.task, EventKind::Artifact(Arc::new(artifact))).await;
    }

    /// Has model `model` of this worker answer `request` (its messages, sampling); returns
    /// the answer's text. A model is loaded on first use, as for an agent of its own.
    pub async fn chat(
        &self,
        model: &str,
        request: GenerateRequest,
    ) -> Result<String, (ErrorKind, String)> {
        let generation = self.start_generation(model, request).await?;
        Ok(self.drain(generation, false, |_| {}).await?.text)
    }

    /// Starts model `model` of this worker on `request` (tools and output formats
    /// included, as OpenAI's API takes them: `af.openai_client()`); a request the model
    /// cannot follow fails here, before any output. Drain it with [`CodeContext::drain`].
    pub async fn start_generation(
        &self,
        model: &str,
        mut request: GenerateRequest,
    ) -> Result<Generation, (ErrorKind, String)> {
        if model.starts_with(fleet_proto::PYTHON_PREFIX) {
            let error = format!("{model} is an agent, not a model: call it with ctx.call");
            return Err((ErrorKind::InvalidRequest, error));
        }
        let handle = self.0.host.models.lock().get(model, &Default::default());
        let loaded = tokio::select! {
            biased;
            () = self.0.cancel.cancelled() => return Err((ErrorKind::Unavailable, "canceled".into())),
            loaded = handle => loaded,
        };
        let model_ref =
            loaded.map_err(|e| (e.kind, format!("cannot load model {model:?}: {e}")))?;
        if model_ref.is_embedder() {
            let error = format!("model {model} embeds texts and cannot chat");
            return Err((ErrorKind::InvalidRequest, error));
        }
        request.max_tokens = Some(request.max_tokens.unwrap_or(MAX_CHAT_TOKENS));
        crate::agent_loop::start_generation(&model_ref, request)
            .await
            .map_err(|_| {
                (ErrorKind::Internal, "the model panicked while reading the prompt".into())
            })?
            .map_err(|e| (crate::error::model_error_kind(&e), e.to_string()))
    }

    /// Runs `generation` to its end, handing each piece to `on_piece` as it comes; with
    /// `find_tool_calls` the calls a local model writes as text are taken out of its text
    /// (they come whole, once the text before them is out). Its tokens count in the task's
    /// usage. Stops, as failed, when the task is canceled.
    pub async fn drain(
        &self,
        mut generation: Generation,
        find_tool_calls: bool,
        mut on_piece: impl FnMut(Piece),
    ) -> Result<Generated, (ErrorKind, String)> {
        let mut parser = find_tool_calls.then(ToolCallParser::default);
        let mut made = Generated::default();
        let mut calls = Vec::new();
        loop {
            let next = tokio::select! {
                biased;
                () = self.0.cancel.cancelled() => return Err((ErrorKind::Unavailable, "canceled".into())),
                next = generation.next() => next,
            };
            match next {
                Some(Ok(GenerationEvent::Delta(delta))) => {
                    let shown = match &mut parser {
                        Some(p) => p.push(&delta),
                        None => delta,
                    };
                    if !shown.is_empty() {
                        made.text.push_str(&shown);
                        on_piece(Piece::Text(shown));
                    }
                }
                Some(Ok(GenerationEvent::Reasoning(delta))) => {
                    made.reasoning.push_str(&delta);
                    on_piece(Piece::Reasoning(delta));
                }
                Some(Ok(GenerationEvent::ToolCall(call))) => calls.push(call),
                Some(Ok(GenerationEvent::Logprobs(_))) => {}
                Some(Ok(GenerationEvent::Done(usage))) => {
                    if let Some(parser) = parser {
                        let (rest, found) = parser.finish();
                        if !rest.is_empty() {
                            made.text.push_str(&rest);
                            on_piece(Piece::Text(rest));
                        }
                        calls.extend(found);
                    }
                    for mut call in calls {
                        // The parser numbers a reply's calls from 0: unique in the task
                        // instead, as a conversation's call ids must be.
                        call.id = self.next_call_id("call");
                        on_piece(Piece::ToolCall(call.clone()));
                        made.tool_calls.push(call);
                    }
                    let mut total = self.0.usage.lock();
                    total.prompt_tokens += usage.prompt_tokens;
                    total.cached_tokens += usage.cached_tokens;
                    total.completion_tokens += usage.completion_tokens;
                    total.reasoning_tokens += usage.reasoning_tokens;
                    made.usage = usage;
                    return Ok(made);
                }
                Some(Err(e)) => return Err((crate::error::model_error_kind(&e), e.to_string())),
                None => {
                    return Err((
                        ErrorKind::Internal,
                        "the model stopped without finishing".into(),
                    ));
                }
            }
        }
    }

    /// A call id unique across the task's attempts (an answer to a lost attempt's call is
    /// not this one's).
    fn next_call_id(&self, prefix: &str) -> String {
        let n = self.0.next_call.fetch_add(1, Ordering::Relaxed);
        format!(
            "{prefix}_{}_{}_{n}",
            self.0.task.task_id.as_str().replace('-', ""),
            self.0.task.attempt
        )
    }

    /// A tool the code runs itself (a framework's tool, in the agent's process) starts: the
    /// call (its id from [`CodeContext::local_call_id`]) shows in the task's events as a
    /// model's does. Not replayed on a retry: the code runs it again.
    pub async fn local_call_started(&self, call: ToolCall) {
        self.announce(&call, self.0.traceparent.clone()).await;
    }

    /// The id for a call the code runs itself ([`CodeContext::local_call_started`]).
    pub fn local_call_id(&self) -> String {
        self.next_call_id("local")
    }

    /// The result of a tool the code ran itself, as the task's event.
    pub async fn local_call_ended(&self, call_id: String, outcome: ToolOutcome) {
        self.report(call_id, &outcome).await;
    }

    /// Calls `tool` with JSON `arguments`: one of the agent's tools (a Python tool, an MCP
    /// tool, `publish`), or any agent of the cluster. The call and its result are the task's
    /// events, as a model's calls are; an error is an outcome with `is_error`, as a model
    /// would read it.
    pub async fn call(&self, tool: &str, arguments: String) -> ToolOutcome {
        let toolbox = tokio::select! {
            biased;
            () = self.0.cancel.cancelled() => return ToolOutcome::error("canceled"),
            toolbox = self.0.tools.get() => toolbox,
        };
        let toolbox = match toolbox {
            Ok(toolbox) => toolbox,
            Err((_, reason)) => {
                return ToolOutcome::error(format!("agent {}'s tools: {reason}", self.0.spec.name));
            }
        };
        let recorded = self.0.recorded.lock().repeated(tool, &arguments);
        if let Some(recorded) = recorded {
            match recorded.result {
                Some(outcome) => return self.replay(recorded.made, outcome).await,
                None if toolbox.calls_once(&self.0.spec.call_once, tool) => {
                    let ended = crate::agent_loop::not_called_again(tool, &recorded.made.id);
                    let error = match &ended {
                        EventKind::Failed { error, .. } => error.clone(),
                        _ => String::new(),
                    };
                    // The task fails with this, whatever the code does with the outcome.
                    self.0.ended.lock().get_or_insert(ended);
                    self.0.cancel.cancel();
                    return ToolOutcome::error(error);
                }
                // In flight when the attempt was lost: made again, under a new id.
                None => {}
            }
        }
        let call = ToolCall { id: self.next_call_id("code"), name: tool.to_owned(), arguments };
        if tool == fleet_proto::ASK_USER_TOOL {
            return self.ask_user(toolbox.human.as_ref(), call).await;
        }
        // Asked before the call is announced, as for a model's call: nothing runs unapproved.
        if let Some(human) = &toolbox.human
            && human.needs_approval(tool)
        {
            let asking = Asking { task: &self.0.task, sink: &self.0.sink, cancel: &self.0.cancel };
            match human.approve(asking, &self.0.spec.name, &call.id, tool, &call.arguments).await {
                Ok(None) => {}
                Ok(Some(refused)) => return refused,
                Err(EventKind::Failed { error, .. }) => return ToolOutcome::error(error),
                Err(_) => return ToolOutcome::error("canceled"),
            }
        }
        // Not one of its tools: another agent, however agents are reached here.
        let caller = toolbox.get(tool).cloned().unwrap_or_else(|| (self.0.host.route)(tool));
        let mut span = spans::tool(&self.0.traceparent, &call);
        let traceparent = span.traceparent_or(&self.0.traceparent);
        let context = CallContext {
            task_id: self.0.task.task_id.clone(),
            context_id: self.0.task.context_id.clone(),
            depth: self.0.task.depth,
            traceparent: traceparent.clone(),
            lease: self.0.lease.clone(),
        };
        // Started before it is announced: the announcement starts calls through the head.
        let answer = caller.call(&call, context);
        if toolbox.calls_once(&self.0.spec.call_once, tool) {
            // On record before it is made: a retry knows it may have been.
            let stored = self.announce_stored(&call, traceparent).await;
            tokio::select! {
                biased;
                () = self.0.cancel.cancelled() => return ToolOutcome::error("canceled"),
                _ = stored => {}
            }
        } else {
            self.announce(&call, traceparent).await;
        }
        let outcome = tokio::select! {
            biased;
            () = self.0.cancel.cancelled() => ToolOutcome::error("canceled"),
            outcome = answer => outcome,
        };
        spans::tool_ended(&mut span, &outcome.output, outcome.is_error);
        self.report(call.id, &outcome).await;
        outcome
    }

    /// The call as the task's event, as a model's call shows.
    async fn announce(&self, call: &ToolCall, traceparent: String) {
        emit(&self.0.sink, &self.0.task, announcement(call, traceparent, false)).await;
    }

    /// The call as the task's event; the receiver hears once it is stored.
    async fn announce_stored(
        &self,
        call: &ToolCall,
        traceparent: String,
    ) -> tokio::sync::oneshot::Receiver<()> {
        let announce = announcement(call, traceparent, false);
        runner::emit_stored(&self.0.sink, &self.0.task, announce).await
    }

    /// The call's outcome as the task's event, stored before the code goes on (a retry
    /// answers the call from it instead of making it again).
    async fn report(&self, call_id: String, outcome: &ToolOutcome) {
        let result = EventKind::ToolResult {
            call_id,
            output: outcome.output.clone(),
            is_error: outcome.is_error,
        };
        let stored = runner::emit_stored(&self.0.sink, &self.0.task, result).await;
        tokio::select! {
            biased;
            () = self.0.cancel.cancelled() => {}
            _ = stored => {}
        }
    }

    /// Answers a call the code repeats from the lost attempt's record, and puts it into
    /// this attempt's record as replayed (not made again).
    async fn replay(&self, made: CallMade, outcome: ToolOutcome) -> ToolOutcome {
        let call = ToolCall { id: made.id, name: made.name, arguments: made.arguments };
        let announce = announcement(&call, String::new(), true);
        emit(&self.0.sink, &self.0.task, announce).await;
        let result = EventKind::ToolResult {
            call_id: call.id,
            output: outcome.output.clone(),
            is_error: outcome.is_error,
        };
        emit(&self.0.sink, &self.0.task, result).await;
        outcome
    }

    /// Asks the task's user the question in `call`'s arguments (`ask_user`, as a model
    /// would): the task is input-required until the reply, which is the outcome. A task that
    /// waits past the agent's input timeout gets an error outcome saying so.
    async fn ask_user(
        &self,
        human: Option<&crate::ask::HumanInput>,
        call: ToolCall,
    ) -> ToolOutcome {
        let Some(human) = human.filter(|h| h.asks_user()) else {
            return ToolOutcome::error(format!(
                "agent {} does not ask its user: register it with ask_user=True",
                self.0.spec.name
            ));
        };
        self.announce(&call, self.0.traceparent.clone()).await;
        let asking = Asking { task: &self.0.task, sink: &self.0.sink, cancel: &self.0.cancel };
        let outcome = match human.ask_user(asking, &call.id, &call.arguments).await {
            Ok(outcome) => outcome,
            Err(ended) => {
                // No reply in time: the task fails with this, whatever the code does next.
                let error = match &ended {
                    EventKind::Failed { error, .. } => error.clone(),
                    _ => "canceled".to_owned(),
                };
                self.0.ended.lock().get_or_insert(ended);
                ToolOutcome::error(error)
            }
        };
        self.report(call.id, &outcome).await;
        outcome
    }

    /// Stores `state` (the actor's state, a JSON object) for its key's next task: once
    /// stored (`wait`: the call returns then), a crash after it keeps it. An error when the
    /// task keeps no state, or the state is too big.
    pub async fn save_state(&self, state: String, wait: bool) -> Result<(), String> {
        if self.0.task.actor.is_none() {
            return Err(format!(
                "agent {} keeps no stored state for this task: register it from a Python agent \
                 with state=True (and give the task a context_id, for per_context=True)",
                self.0.spec.name
            ));
        }
        if state.len() > fleet_proto::MAX_ACTOR_STATE_BYTES {
            return Err(format!(
                "the state is {} bytes as JSON, more than the {} KiB an actor keeps: keep less \
                 in ctx.state",
                state.len(),
                fleet_proto::MAX_ACTOR_STATE_BYTES >> 10
            ));
        }
        let saved = EventKind::StateSaved { state: state.into() };
        if !wait {
            emit(&self.0.sink, &self.0.task, saved).await;
            return Ok(());
        }
        let stored = runner::emit_stored(&self.0.sink, &self.0.task, saved).await;
        tokio::select! {
            biased;
            () = self.0.cancel.cancelled() => Err("canceled".into()),
            done = stored => done.map_err(|_| "the head did not store the state: the task \
                will run again elsewhere".to_owned()),
        }
    }

    /// Posts `message` on `topic`, one of the agent's topics (its `publish` tool).
    /// Posts `messages` on `topic` (one tool step; several are stored in one write).
    pub async fn publish(&self, topic: &str, messages: &[String]) -> ToolOutcome {
        let arguments = match messages {
            [one] => serde_json::json!({ "topic": topic, "message": one }),
            many => serde_json::json!({ "topic": topic, "messages": many }),
        }
        .to_string();
        if !self.0.spec.topics.iter().any(|t| t == topic) {
            let known = self.0.spec.topics.join(", ");
            return ToolOutcome::error(format!(
                "topic {topic:?} is not one of agent {}'s topics ({known}): register it with \
                 topics=[...]",
                self.0.spec.name
            ));
        }
        self.call(fleet_proto::PUBLISH_TOOL, arguments).await
    }
}

/// The model's request for a chat completion in OpenAI's terms as the head reads them
/// (`options` of a `/v1/chat/completions` body, `input` its last user message): the
/// conversation with its tool calls and results, sampling, output format and the client's
/// tools. Errs, saying why, for an output format the engine cannot follow.
pub fn completion_request(
    options: &fleet_proto::TaskOptions,
    input: &str,
) -> Result<GenerateRequest, String> {
    let mut messages: Vec<ChatMessage> =
        options.history.iter().map(crate::actor::turn_message).collect();
    if !input.is_empty() {
        messages.push(ChatMessage::new(fleet_inference::Role::User, input));
    }
    let sampling = &options.sampling;
    let format = sampling.format.as_ref().map(crate::agent_loop::output_format).transpose()?;
    let tool_choice = match &options.tool_choice {
        _ if options.tools.is_empty() => fleet_inference::ToolChoice::Auto,
        fleet_proto::ClientToolChoice::Auto => fleet_inference::ToolChoice::Auto,
        fleet_proto::ClientToolChoice::Required => fleet_inference::ToolChoice::Required,
        fleet_proto::ClientToolChoice::Function(name) => {
            fleet_inference::ToolChoice::Function(name.clone())
        }
    };
    Ok(GenerateRequest {
        messages,
        max_tokens: sampling.max_tokens,
        temperature: sampling.temperature,
        top_p: sampling.top_p,
        presence_penalty: sampling.presence_penalty,
        frequency_penalty: sampling.frequency_penalty,
        seed: sampling.seed,
        stop: sampling.stop.clone(),
        tools: options.tools.clone(),
        tool_choice,
        parallel_tool_calls: options.parallel_tool_calls,
        format,
        thinking: sampling.thinking,
        ..Default::default()
    })
}

/// A piece of a generation the code streams ([`CodeContext::drain`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Piece {
    Text(String),
    /// A thinking model's reasoning, before its answer.
    Reasoning(String),
    /// A call the model made, whole, after the text before it.
    ToolCall(ToolCall),
}

/// What one generation of the code's made.
#[derive(Clone, Debug, Default)]
pub struct Generated {
    /// The answer's text (tool-call markup taken out).
    pub text: String,
    pub reasoning: String,
    pub tool_calls: Vec<ToolCall>,
    pub usage: fleet_inference::Usage,
}

/// A call as the task's `ToolCall` event.
fn announcement(call: &ToolCall, traceparent: String, replayed: bool) -> EventKind {
    EventKind::ToolCall {
        call_id: call.id.clone(),
        name: call.name.clone(),
        arguments: call.arguments.clone(),
        traceparent,
        replayed,
    }
}

/// Runs one task of a code agent to its end: Working, what the code streams and calls, and
/// exactly one terminal event; returns its output when it completed.
pub async fn run(run: TaskRun, host: CodeHost, history: Vec<ChatMessage>) -> Option<Finished> {
    emit(&run.sink, &run.task, EventKind::Working).await;
    let mut span = spans::agent(&run.task, &run.spec);
    let traceparent = span.traceparent_or(&run.task.traceparent);
    let program = run.spec.model.strip_prefix(fleet_proto::PYTHON_PREFIX).unwrap_or_default();
    let task = CodeTask {
        program: program.to_owned(),
        agent: run.spec.name.clone(),
        task_id: run.task.task_id.as_str().to_owned(),
        context_id: run.task.context_id.clone(),
        attempt: run.task.attempt,
        input: run.task.input.clone(),
        history,
        instructions: run.spec.instructions.clone(),
        files: run.task.options.as_ref().map(|o| o.files.clone()).unwrap_or_default(),
        state: run.task.actor.as_ref().map(|a| a.state.clone()),
    };
    let context = CodeContext(Arc::new(Shared {
        host: host.clone(),
        task: run.task.clone(),
        spec: run.spec.clone(),
        sink: run.sink.clone(),
        cancel: run.cancel.clone(),
        tools: run.tools,
        lease: run.lease,
        traceparent,
        next_call: AtomicU64::new(0),
        next_artifact: AtomicU64::new(1),
        output: Mutex::new(String::new()),
        usage: Mutex::new(Usage::default()),
        ended: Mutex::new(None),
        recorded: Mutex::new(Recorded::of(&run.task.steps)),
    }));
    let running = AssertUnwindSafe(host.agents.run(task, context.clone())).catch_unwind();
    let ended = tokio::select! {
        biased;
        () = run.cancel.cancelled() => Err(EventKind::Canceled { reason: "canceled".into() }),
        ended = running => match ended {
            Ok(Ok(())) => Ok(()),
            // The code's own words (`TypeName: message`); whoever relays it names the agent.
            Ok(Err(error)) => Err(failed(ErrorKind::Internal, error)),
            Err(_) => Err(failed(ErrorKind::Internal, format!("agent {}'s host panicked", run.spec.name))),
        },
    };
    let usage = *context.0.usage.lock();
    let ended = match context.0.ended.lock().take() {
        Some(terminal) => Err(terminal),
        None => ended,
    };
    let (terminal, finished) = match ended {
        Ok(()) => {
            let output = std::mem::take(&mut *context.0.output.lock());
            (EventKind::Completed { usage }, Some(Finished { output }))
        }
        Err(terminal) => (terminal, None),
    };
    spans::agent_ended(&mut span, &usage, &terminal);
    debug!(task_id = %run.task.task_id, "code agent's task ended");
    emit(&run.sink, &run.task, terminal).await;
    finished
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(role: &str, id: &str, name: &str, arguments: &str) -> Turn {
        match role {
            "tool" => Turn {
                role: "tool".into(),
                content: format!("result of {id}"),
                tool_call_id: id.into(),
                ..Turn::default()
            },
            _ => Turn {
                role: "assistant".into(),
                tool_calls: vec![CallMade {
                    id: id.into(),
                    name: name.into(),
                    arguments: arguments.into(),
                }],
                ..Turn::default()
            },
        }
    }

    #[test]
    fn a_repeated_call_is_answered_from_the_record_in_any_order_and_others_are_made() {
        let steps = [
            step("assistant", "c1", "count", r#"{"n": 1}"#),
            step("tool", "c1", "", ""),
            step("assistant", "c2", "count", r#"{"n": 2}"#),
            step("tool", "c2", "", ""),
            step("assistant", "c3", "pay", "{}"),
        ];
        let mut recorded = Recorded::of(&steps);
        // Calls awaited together finish in another order; the same JSON written otherwise.
        let second = recorded.repeated("count", r#"{"n":2}"#).expect("c2");
        assert_eq!(second.result.map(|r| r.output), Some("result of c2".into()));
        // A call the lost attempt did not make is made, and the record stays.
        assert!(recorded.repeated("count", r#"{"n": 9}"#).is_none());
        assert_eq!(recorded.repeated("count", r#"{"n": 1}"#).map(|r| r.made.id), Some("c1".into()));
        assert!(recorded.repeated("count", r#"{"n": 1}"#).is_none(), "answered once");
        // In flight when the attempt was lost: no result.
        let in_flight = recorded.repeated("pay", "{}").expect("c3");
        assert!(in_flight.result.is_none());
    }
}

//! The agent loop of one task: wait for the agent's model, then either embed the task's
//! texts or generate; when the model calls tools (its agent's [`Toolbox`]), run each call,
//! feed the results back and generate again, up to [`MAX_TOOL_ROUNDS`]. Emits Working, text
//! deltas, tool calls and results, and exactly one terminal event; a panic anywhere fails
//! the task instead of leaving it hanging.
//!
//! Tool steps are durable: each call's result is stored by the head before the model goes
//! on (and a call of a tool that is called once is stored before it is made), and a retried
//! task replays the steps its lost attempts recorded instead of making their calls again.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use fleet_inference::{
    ChatMessage, GenerateRequest, Model, OutputFormat, Role, ToolCall, ToolChoice,
};
use fleet_proto::{AgentSpec, ClientToolChoice, ErrorKind, EventKind, TaskAssignment, Usage};
use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::ask::Asking;
use crate::gate::Lease;
use crate::models::ModelHandle;
use crate::runner::{self, EventSink, emit, failed};
use crate::spans;
use crate::tool::{CallContext, ToolOutcome};
use crate::toolbox::{Toolbox, ToolboxSource};

/// Generations with tool calls one task may make before it must answer.
pub const MAX_TOOL_ROUNDS: usize = 8;

/// What one task's run needs whatever its agent's brain (a model's loop here, or code:
/// `code_agents::run`).
pub struct TaskRun {
    pub task: TaskAssignment,
    pub spec: Arc<AgentSpec>,
    pub sink: EventSink,
    pub cancel: CancellationToken,
    /// The agent's tools, each routed where it runs.
    pub tools: ToolboxSource,
    /// A call's run: the turn and slot it holds, lent back while it waits on its own calls.
    pub lease: Option<Arc<Lease>>,
}

/// How a task ended well, for the actor's conversation memory.
pub struct Finished {
    pub output: String,
}

/// Runs the task on `model` to its end, from `messages` (instructions, the conversation so
/// far and the input); returns its output when it completed.
pub async fn run(run: TaskRun, model: ModelHandle, messages: Vec<ChatMessage>) -> Option<Finished> {
    emit(&run.sink, &run.task, EventKind::Working).await;
    let mut span = spans::agent(&run.task, &run.spec);
    let parent = span.traceparent_or(&run.task.traceparent);
    let guarded = AssertUnwindSafe(drive(&run, model, messages, &parent)).catch_unwind().await;
    let (terminal, finished) = match guarded {
        Ok(Ok((usage, output))) => (EventKind::Completed { usage }, Some(Finished { output })),
        Ok(Err(terminal)) => (terminal, None),
        Err(_) => (failed(ErrorKind::Internal, "the model panicked while generating"), None),
    };
    let usage = match &terminal {
        EventKind::Completed { usage } => *usage,
        _ => Usage::default(),
    };
    spans::agent_ended(&mut span, &usage, &terminal);
    debug!(task_id = %run.task.task_id, "task ended");
    emit(&run.sink, &run.task, terminal).await;
    finished
}

/// Runs the task; `parent` is the `traceparent` its spans go under.
async fn drive(
    run: &TaskRun,
    model: ModelHandle,
    messages: Vec<ChatMessage>,
    parent: &str,
) -> Result<(Usage, String), EventKind> {
    let model = until_canceled(run, model).await?.map_err(|e| {
        failed(
            e.kind,
            format!("cannot load model {:?} for agent {:?}: {e}", run.spec.model, run.spec.name),
        )
    })?;
    if let Some(options) = &run.task.options
        && !options.embed.is_empty()
    {
        return embed(run, model, options.embed.clone(), parent).await;
    }
    if model.is_embedder() {
        return Err(failed(
            ErrorKind::InvalidRequest,
            format!(
                "invalid request: model {} embeds texts and cannot chat; send it embedding requests",
                run.spec.model
            ),
        ));
    }
    let sampling = match &run.task.options {
        Some(options) => run.spec.sampling.overridden_by(&options.sampling),
        None => run.spec.sampling.clone(),
    };
    // A format the grammar engine cannot follow fails before the tools are awaited (an MCP
    // server may take seconds to connect).
    let format = sampling
        .format
        .as_ref()
        .map(output_format)
        .transpose()
        .map_err(|e| failed(ErrorKind::InvalidRequest, e))?;
    let toolbox = until_canceled(run, run.tools.get())
        .await?
        .map_err(|(kind, reason)| failed(kind, reason))?;
    let plan = Plan::of(run, &toolbox, sampling, format)?;
    rounds(run, &model, &toolbox, plan, messages, parent).await
}

/// `work`'s result, unless the task is canceled first.
async fn until_canceled<T>(
    run: &TaskRun,
    work: impl std::future::Future<Output = T>,
) -> Result<T, EventKind> {
    tokio::select! {
        biased;
        () = run.cancel.cancelled() => Err(EventKind::Canceled { reason: "canceled".into() }),
        done = work => Ok(done),
    }
}

/// How a task's rounds of generation run: what they sample, in what format, with which
/// tools and who runs their calls.
struct Plan {
    sampling: fleet_proto::Sampling,
    format: Option<OutputFormat>,
    tools: Vec<serde_json::Value>,
    /// The first round's choice: the agent's own binds its first reply; later ones choose
    /// freely.
    tool_choice: ToolChoice,
    parallel_tool_calls: bool,
    /// The names of the client's tools (OpenAI and AG-UI requests): their calls end the
    /// task, the client runs them. The agent's own tools beside them run here.
    client_tools: Vec<String>,
    /// A raw prompt (OpenAI's legacy completions), continued as it is in one round.
    raw_prompt: bool,
}

impl Plan {
    /// The task's tools and how they are called, over its agent's; refuses what cannot run
    /// together.
    fn of(
        run: &TaskRun,
        toolbox: &Toolbox,
        sampling: fleet_proto::Sampling,
        format: Option<OutputFormat>,
    ) -> Result<Self, EventKind> {
        let invalid = |reason: String| failed(ErrorKind::InvalidRequest, reason);
        let options = run.task.options.as_ref();
        let mut tools = toolbox.definitions();
        let client_tools = options.filter(|o| !o.tools.is_empty());
        let mut tool_choice = match run.spec.tool_choice.as_str() {
            "" | "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            name => ToolChoice::Function(name.to_owned()),
        };
        if let ToolChoice::Function(name) = &tool_choice
            && !toolbox.offers(name)
            && client_tools.is_none()
        {
            return Err(invalid(format!(
                "agent {}'s tool_choice names {name}, which is not one of its tools ({})",
                run.spec.name,
                toolbox.names()
            )));
        }
        // An agent makes one call per round and sees its result before the next.
        let mut parallel_tool_calls = false;
        let mut client_names = Vec::new();
        if let Some(options) = client_tools {
            parallel_tool_calls = options.parallel_tool_calls;
            // The client's tools join the agent's own; a name both have would be ambiguous.
            let own = toolbox.names();
            for tool in &options.tools {
                let name = tool.pointer("/function/name").and_then(|n| n.as_str()).unwrap_or("");
                if toolbox.offers(name) {
                    return Err(invalid(format!(
                        "invalid request: agent {} has a tool of its own named {name} ({own}); \
                         name the client's tool differently",
                        run.spec.name
                    )));
                }
                client_names.push(name.to_owned());
            }
            // The agent's own choice stands unless the client makes one.
            let mixed = !tools.is_empty();
            tools.extend(options.tools.iter().cloned());
            tool_choice = match &options.tool_choice {
                ClientToolChoice::Auto if mixed => tool_choice,
                ClientToolChoice::Auto => ToolChoice::Auto,
                ClientToolChoice::Required => ToolChoice::Required,
                ClientToolChoice::Function(name) => ToolChoice::Function(name.clone()),
            };
        }
        let raw_prompt = options.is_some_and(|o| o.raw_prompt);
        if raw_prompt && !tools.is_empty() {
            return Err(invalid(format!(
                "invalid request: agent {} has tools and answers conversations: continue raw \
                 text on a model, or send chat messages",
                run.spec.name
            )));
        }
        if tools.is_empty() {
            tool_choice = ToolChoice::Auto;
        }
        Ok(Self {
            sampling,
            format,
            tools,
            tool_choice,
            parallel_tool_calls,
            client_tools: client_names,
            raw_prompt,
        })
    }

    /// The model's request for a round over `messages`.
    fn request(&self, run: &TaskRun, messages: &[ChatMessage]) -> GenerateRequest {
        let sampling = &self.sampling;
        GenerateRequest {
            messages: messages.to_vec(),
            prompt: self.raw_prompt.then(|| run.task.input.clone()),
            max_tokens: sampling.max_tokens,
            temperature: sampling.temperature,
            top_p: sampling.top_p,
            presence_penalty: sampling.presence_penalty,
            frequency_penalty: sampling.frequency_penalty,
            logprobs: sampling.logprobs,
            seed: sampling.seed,
            stop: sampling.stop.clone(),
            tools: self.tools.clone(),
            tool_choice: self.tool_choice.clone(),
            parallel_tool_calls: self.parallel_tool_calls,
            format: self.format.clone(),
            thinking: sampling.thinking,
            ..Default::default()
        }
    }
}

/// Generates, runs the calls the model makes and feeds their results back, until it answers
/// (or its calls go to the client), at most [`MAX_TOOL_ROUNDS`] rounds of calls. A retried
/// task first replays what its lost attempts recorded (see [`replay`]).
async fn rounds(
    run: &TaskRun,
    model: &Arc<dyn Model>,
    toolbox: &Toolbox,
    mut plan: Plan,
    mut messages: Vec<ChatMessage>,
    parent: &str,
) -> Result<(Usage, String), EventKind> {
    let mut usage = Usage::default();
    let mut ids = CallIds::of(&run.task);
    let Replayed { rounds: replayed, mut output, handed } =
        replay(run, toolbox, &plan.client_tools, &mut messages, &mut ids, parent).await?;
    if handed {
        return Ok((usage, output));
    }
    if replayed > 0 {
        plan.tool_choice = ToolChoice::Auto;
    }
    // A recorded turn is counted as a round; several calls of one round (a remote model's
    // parallel calls) are turns of their own, so the retry keeps at least one round.
    let replayed = replayed.min(MAX_TOOL_ROUNDS - 1);
    for round in replayed..=MAX_TOOL_ROUNDS {
        let request = plan.request(run, &messages);
        let mut span = spans::chat(parent, &run.spec, &plan.sampling, plan.raw_prompt);
        let turn = match generate(run, model, request, !plan.tools.is_empty()).await {
            Ok(turn) => turn,
            Err(terminal) => {
                spans::interrupted(&mut span, &terminal);
                return Err(terminal);
            }
        };
        spans::chat_ended(&mut span, &turn.usage);
        usage.prompt_tokens += turn.usage.prompt_tokens;
        usage.cached_tokens += turn.usage.cached_tokens;
        usage.completion_tokens += turn.usage.completion_tokens;
        usage.reasoning_tokens += turn.usage.reasoning_tokens;
        usage.truncated = runner::truncated(&turn.usage);
        output.push_str(&turn.text);
        if turn.tool_calls.is_empty() {
            return Ok((usage, output));
        }
        // The client's calls end the task once the agent's own calls of the turn are made.
        // With the client's tools offered, any call not of the agent's own is the client's
        // (a name the model made up included, as when the client's tools were all it had).
        let (to_client, own): (Vec<ToolCall>, Vec<ToolCall>) = turn
            .tool_calls
            .into_iter()
            .partition(|call| !plan.client_tools.is_empty() && !toolbox.offers(&call.name));
        if to_client.is_empty() && round == MAX_TOOL_ROUNDS {
            break;
        }
        plan.tool_choice = ToolChoice::Auto;
        let calls: Vec<ToolCall> =
            own.into_iter().map(|call| ToolCall { id: ids.next(), ..call }).collect();
        if !calls.is_empty() {
            messages.push(ChatMessage {
                tool_calls: calls.clone(),
                ..ChatMessage::new(Role::Assistant, turn.text)
            });
        }
        for call in calls {
            make_call(run, toolbox, call, &mut messages, parent).await?;
        }
        if !to_client.is_empty() {
            hand_calls_to_client(run, to_client).await;
            return Ok((usage, output));
        }
    }
    Err(failed(
        ErrorKind::Internal,
        format!(
            "agent {} kept calling tools for {MAX_TOOL_ROUNDS} rounds without answering",
            run.spec.name
        ),
    ))
}

/// How a retry ends that would have to call a tool that is called once again: its call was
/// sent by a lost attempt, and whether it took effect is not known.
pub(crate) fn not_called_again(tool: &str, call_id: &str) -> EventKind {
    failed(
        ErrorKind::Unavailable,
        format!(
            "tool {tool} was called (call {call_id}) by an attempt of this task whose worker was \
             lost before the call's result was stored; {tool} is called at most once, so the \
             retry does not call it again: find out whether the call took effect before \
             submitting the task again"
        ),
    )
}

/// Names a task's tool calls: unique across its attempts, so that an answer to a lost
/// attempt's call never reaches the retry's call of the same number.
struct CallIds {
    attempt: u32,
    made: usize,
}

impl CallIds {
    fn of(task: &TaskAssignment) -> Self {
        Self { attempt: task.attempt, made: 0 }
    }

    fn next(&mut self) -> String {
        self.made += 1;
        format!("call_{}_{}", self.attempt, self.made)
    }
}

/// Makes one call of the model's and feeds its result back: into the conversation, and
/// into the task's record, where it is stored before the task goes on, so that a retry
/// after a crash never makes the call again.
async fn make_call(
    run: &TaskRun,
    toolbox: &Toolbox,
    call: ToolCall,
    messages: &mut Vec<ChatMessage>,
    parent: &str,
) -> Result<(), EventKind> {
    let mut span = spans::tool(parent, &call);
    let ToolOutcome { output, is_error } =
        match call_tool(run, toolbox, &call, &span.traceparent_or(parent)).await {
            Ok(outcome) => outcome,
            Err(terminal) => {
                spans::interrupted(&mut span, &terminal);
                return Err(terminal);
            }
        };
    spans::tool_ended(&mut span, &output, is_error);
    messages.push(ChatMessage::tool_result(call.id.clone(), output.clone()));
    let event = EventKind::ToolResult { call_id: call.id, output, is_error };
    let stored = runner::emit_stored(&run.sink, &run.task, event).await;
    // Dropped (no head keeps this task's record): nothing to wait for.
    let _ = until_canceled(run, stored).await?;
    Ok(())
}

/// What replaying a retried task's recorded steps gave back.
struct Replayed {
    /// Rounds of calls the lost attempts made.
    rounds: usize,
    /// The text they said.
    output: String,
    /// A lost attempt's calls of the client's tools were handed out again: the task ends.
    handed: bool,
}

/// Replays a retried task's recorded steps (`task.steps`): each goes back into the
/// conversation and into this attempt's record, its calls marked replayed (made by a lost
/// attempt, not made again). A call that was sent but whose result was not stored is made
/// again, under a new id, unless its tool is called once: then the task fails, naming it.
async fn replay(
    run: &TaskRun,
    toolbox: &Toolbox,
    client_tools: &[String],
    messages: &mut Vec<ChatMessage>,
    ids: &mut CallIds,
    parent: &str,
) -> Result<Replayed, EventKind> {
    let steps = &run.task.steps;
    let mut replayed = Replayed { rounds: 0, output: String::new(), handed: false };
    if steps.is_empty() {
        return Ok(replayed);
    }
    let answered: std::collections::HashSet<&str> =
        steps.iter().filter(|s| s.role == "tool").map(|s| s.tool_call_id.as_str()).collect();
    let mut unanswered = Vec::new();
    let mut to_client = Vec::new();
    for step in steps {
        if step.role == "tool" {
            messages
                .push(ChatMessage::tool_result(step.tool_call_id.clone(), step.content.clone()));
            let event = EventKind::ToolResult {
                call_id: step.tool_call_id.clone(),
                output: step.content.clone(),
                is_error: step.is_error,
            };
            emit(&run.sink, &run.task, event).await;
            continue;
        }
        replayed.rounds += 1;
        if !step.content.is_empty() {
            replayed.output.push_str(&step.content);
            let text = EventKind::TextDelta { text: step.content.clone(), logprobs: Vec::new() };
            emit(&run.sink, &run.task, text).await;
        }
        let mut calls = Vec::with_capacity(step.tool_calls.len());
        for made in &step.tool_calls {
            let mut call = ToolCall {
                id: made.id.clone(),
                name: made.name.clone(),
                arguments: made.arguments.clone(),
            };
            if answered.contains(made.id.as_str()) {
                let event = EventKind::ToolCall {
                    call_id: call.id.clone(),
                    name: call.name.clone(),
                    arguments: call.arguments.clone(),
                    traceparent: String::new(),
                    replayed: true,
                };
                emit(&run.sink, &run.task, event).await;
            } else if client_tools.contains(&call.name) {
                // The client's to run: handed out again, as the lost attempt did.
                to_client.push(call.clone());
            } else {
                if toolbox.calls_once(&run.spec.call_once, &call.name) {
                    return Err(not_called_again(&call.name, &call.id));
                }
                // Asked again under a new id: an answer to the lost call is not this one's.
                call.id = ids.next();
                unanswered.push(call.clone());
            }
            calls.push(call);
        }
        messages.push(ChatMessage {
            tool_calls: calls,
            ..ChatMessage::new(Role::Assistant, step.content.clone())
        });
    }
    for call in unanswered {
        make_call(run, toolbox, call, messages, parent).await?;
    }
    if !to_client.is_empty() {
        hand_calls_to_client(run, to_client).await;
        replayed.handed = true;
    }
    Ok(replayed)
}

/// The model's calls of the client's tools, as the task's `ToolCall` events: the client runs
/// them and continues the conversation.
async fn hand_calls_to_client(run: &TaskRun, calls: Vec<ToolCall>) {
    for (i, call) in calls.into_iter().enumerate() {
        // Unique across the turns of a conversation, as clients keep them.
        let call_id = format!("call_{}_{i}", run.task.task_id.as_str().replace('-', ""));
        let event = EventKind::ToolCall {
            call_id,
            name: call.name,
            arguments: call.arguments,
            traceparent: String::new(),
            replayed: false,
        };
        emit(&run.sink, &run.task, event).await;
    }
}

/// One generation: the request to the model, its stream into events.
async fn generate(
    run: &TaskRun,
    model: &Arc<dyn Model>,
    request: GenerateRequest,
    find_tool_calls: bool,
) -> Result<runner::Turn, EventKind> {
    let generation = start_generation(model, request)
        .await
        .map_err(|_| failed(ErrorKind::Internal, "the model panicked while reading the prompt"))?
        .map_err(|e| runner::model_failed(&e))?;
    runner::generate(&run.task, generation, &run.sink, &run.cancel, find_tool_calls).await
}

/// [`Model::generate`] off this runtime when it takes time: rendering the chat template and
/// tokenizing a long prompt take milliseconds of CPU, which go on the blocking pool, not on
/// this runtime (single-threaded on small machines). `Err` when the model panicked.
pub async fn start_generation(
    model: &Arc<dyn Model>,
    request: GenerateRequest,
) -> Result<fleet_inference::Result<fleet_inference::Generation>, tokio::task::JoinError> {
    if model.generates_in_place() {
        return Ok(model.generate(request));
    }
    let generating = model.clone();
    tokio::task::spawn_blocking(move || generating.generate(request)).await
}

/// The engine's form of a task's output format.
pub(crate) fn output_format(format: &fleet_proto::OutputFormat) -> Result<OutputFormat, String> {
    Ok(match format {
        fleet_proto::OutputFormat::JsonObject => OutputFormat::JsonObject,
        fleet_proto::OutputFormat::JsonSchema(schema) => {
            OutputFormat::json_schema_text(schema).map_err(|e| format!("invalid request: {e}"))?
        }
        fleet_proto::OutputFormat::Regex(regex) => OutputFormat::Regex(regex.clone()),
        fleet_proto::OutputFormat::Lark(lark) => OutputFormat::Lark(lark.clone()),
    })
}

/// Starts a tool call, announces it (the task's `ToolCall` event) and waits for its answer,
/// unless the task is canceled first. `traceparent` is the call's span, for the callee's
/// spans to go under.
async fn call_tool(
    run: &TaskRun,
    toolbox: &Toolbox,
    call: &ToolCall,
    traceparent: &str,
) -> Result<ToolOutcome, EventKind> {
    let announce = EventKind::ToolCall {
        call_id: call.id.clone(),
        name: call.name.clone(),
        arguments: call.arguments.clone(),
        traceparent: traceparent.to_owned(),
        replayed: false,
    };
    let asking = || Asking { task: &run.task, sink: &run.sink, cancel: &run.cancel };
    if let Some(human) = &toolbox.human {
        if call.name == fleet_proto::ASK_USER_TOOL && human.asks_user() {
            emit(&run.sink, &run.task, announce).await;
            return human.ask_user(asking(), &call.id, &call.arguments).await;
        }
        // Asked before the call is announced: the announcement starts calls through the head.
        if human.needs_approval(&call.name) && toolbox.get(&call.name).is_some() {
            let approval =
                human.approve(asking(), &run.spec.name, &call.id, &call.name, &call.arguments);
            if let Some(refused) = approval.await? {
                return Ok(refused);
            }
        }
    }
    let Some(tool) = toolbox.get(&call.name) else {
        emit(&run.sink, &run.task, announce).await;
        let known = toolbox.names();
        return Ok(ToolOutcome::error(format!(
            "unknown tool {:?}: the tools are {known}",
            call.name
        )));
    };
    let context = CallContext {
        task_id: run.task.task_id.clone(),
        context_id: run.task.context_id.clone(),
        depth: run.task.depth,
        traceparent: traceparent.to_owned(),
        lease: run.lease.clone(),
    };
    let answer = tool.call(call, context);
    if toolbox.calls_once(&run.spec.call_once, &call.name) {
        // On record before it is made: a retry after a crash knows it may have been, and
        // does not make it again.
        let stored = runner::emit_stored(&run.sink, &run.task, announce).await;
        let _ = until_canceled(run, stored).await?;
    } else {
        emit(&run.sink, &run.task, announce).await;
    }
    until_canceled(run, answer).await
}

/// Embeds the task's texts on a blocking thread (the forward pass is CPU-bound).
async fn embed(
    run: &TaskRun,
    model: Arc<dyn Model>,
    texts: Vec<String>,
    parent: &str,
) -> Result<(Usage, String), EventKind> {
    let mut span = spans::embeddings(parent, &run.spec, texts.len());
    let embedded = tokio::task::spawn_blocking(move || {
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        model.embed(&texts)
    })
    .await
    .map_err(|_| failed(ErrorKind::Internal, "the model panicked while embedding"))
    .and_then(|embedded| embedded.map_err(|e| runner::model_failed(&e)));
    let embedded = match embedded {
        Ok(embedded) => embedded,
        Err(terminal) => {
            spans::interrupted(&mut span, &terminal);
            return Err(terminal);
        }
    };
    let usage = Usage {
        prompt_tokens: u32::try_from(embedded.prompt_tokens).unwrap_or(u32::MAX),
        ..Usage::default()
    };
    span.set(fleet_telemetry::attr::GEN_AI_USAGE_INPUT_TOKENS, i64::from(usage.prompt_tokens));
    span.end();
    emit(&run.sink, &run.task, EventKind::Embeddings { vectors: embedded.vectors }).await;
    Ok((usage, String::new()))
}

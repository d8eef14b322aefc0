//! The agent loop of one task: wait for the agent's model, then either embed the task's
//! texts or generate; when the model calls tools (other agents of the cluster), run each
//! call through the head as a sub-task, feed the results back and generate again, up to
//! [`MAX_TOOL_ROUNDS`]. Emits Working, text deltas, tool calls and results, and exactly
//! one terminal event; a panic anywhere fails the task instead of leaving it hanging.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use fleet_inference::{
    ChatMessage, GenerateRequest, Model, OutputFormat, Role, ToolCall, ToolChoice,
};
use fleet_proto::{AgentSpec, ClientToolChoice, ErrorKind, EventKind, TaskAssignment, Usage};
use futures::FutureExt;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::agent_calls::{AgentCaller, Call};
use crate::gate::Lease;
use crate::host::{PendingCalls, ToolOutcome};
use crate::models::ModelHandle;
use crate::runner::{self, EventSink, emit, failed};
use crate::spans;
use crate::tool_calls;
use crate::topics::{self, TopicBoard};

/// Generations with tool calls one task may make before it must answer.
pub const MAX_TOOL_ROUNDS: usize = 8;
/// How long a tool call (another agent's task) may take.
pub const TOOL_CALL_TIMEOUT: Duration = Duration::from_secs(600);
/// Agents calling agents calling agents...: at most this deep over the mesh (the head
/// bounds calls it relays the same way).
pub const MAX_CALL_DEPTH: u32 = 4;

/// Everything one task's loop needs.
pub struct TaskRun {
    pub task: TaskAssignment,
    pub spec: Arc<AgentSpec>,
    pub model: ModelHandle,
    /// Instructions, the conversation so far and the input.
    pub messages: Vec<ChatMessage>,
    pub sink: EventSink,
    pub cancel: CancellationToken,
    pub calls: PendingCalls,
    /// Calls agents over the mesh; without it they go through the head.
    pub caller: Option<Arc<AgentCaller>>,
    /// The mesh's topics, for agents with `topics`.
    pub board: Option<Arc<TopicBoard>>,
    /// A call's run: the turn and slot it holds, lent back while it waits on its own calls.
    pub lease: Option<Arc<Lease>>,
}

/// How a task ended well, for the actor's conversation memory.
pub struct Finished {
    pub output: String,
}

/// Runs the task to its end; returns its output when it completed.
pub async fn run(run: TaskRun) -> Option<Finished> {
    emit(&run.sink, &run.task, EventKind::Working).await;
    let mut span = spans::agent(&run.task, &run.spec);
    let parent = span.traceparent_or(&run.task.traceparent);
    let guarded = AssertUnwindSafe(drive(&run, &parent)).catch_unwind().await;
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
async fn drive(run: &TaskRun, parent: &str) -> Result<(Usage, String), EventKind> {
    let model = tokio::select! {
        biased;
        () = run.cancel.cancelled() => return Err(EventKind::Canceled { reason: "canceled".into() }),
        model = run.model.clone() => model.map_err(|e| failed(e.kind, format!(
            "cannot load model {:?} for agent {:?}: {e}", run.spec.model, run.spec.name
        )))?,
    };
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
    let format = sampling
        .format
        .as_ref()
        .map(output_format)
        .transpose()
        .map_err(|e| failed(ErrorKind::InvalidRequest, e))?;
    let mut tools = tool_calls::definitions(&run.spec.tools);
    if !run.spec.topics.is_empty() {
        tools.push(topics::publish_definition(&run.spec.topics));
    }
    // The client's tools (OpenAI requests): their calls end the task, the client runs them.
    let client_tools = run.task.options.as_ref().filter(|o| !o.tools.is_empty());
    let mut tool_choice = ToolChoice::Auto;
    // An agent makes one call per round and sees its result before the next.
    let mut parallel_tool_calls = false;
    if let Some(options) = client_tools {
        parallel_tool_calls = options.parallel_tool_calls;
        if !tools.is_empty() {
            return Err(failed(
                ErrorKind::InvalidRequest,
                format!(
                    "invalid request: agent {} calls tools of its own; send tools to a model, or \
                 to an agent without tools",
                    run.spec.name
                ),
            ));
        }
        tools.clone_from(&options.tools);
        tool_choice = match &options.tool_choice {
            ClientToolChoice::Auto => ToolChoice::Auto,
            ClientToolChoice::Required => ToolChoice::Required,
            ClientToolChoice::Function(name) => ToolChoice::Function(name.clone()),
        };
    }
    // A raw prompt (OpenAI's legacy completions) is continued as it is, in one round.
    let raw_prompt = run.task.options.as_ref().is_some_and(|o| o.raw_prompt);
    if raw_prompt && !tools.is_empty() {
        return Err(failed(
            ErrorKind::InvalidRequest,
            format!(
                "invalid request: agent {} has tools and answers conversations: continue raw text \
             on a model, or send chat messages",
                run.spec.name
            ),
        ));
    }
    let mut messages = run.messages.clone();
    let mut usage = Usage::default();
    let mut output = String::new();
    for round in 0..=MAX_TOOL_ROUNDS {
        let request = GenerateRequest {
            messages: messages.clone(),
            prompt: raw_prompt.then(|| run.task.input.clone()),
            max_tokens: sampling.max_tokens,
            temperature: sampling.temperature,
            top_p: sampling.top_p,
            presence_penalty: sampling.presence_penalty,
            frequency_penalty: sampling.frequency_penalty,
            logprobs: sampling.logprobs,
            seed: sampling.seed,
            stop: sampling.stop.clone(),
            tools: tools.clone(),
            tool_choice: tool_choice.clone(),
            parallel_tool_calls,
            format: format.clone(),
            ..Default::default()
        };
        let mut span = spans::chat(parent, &run.spec, &sampling, raw_prompt);
        let turn = match generate(run, &model, request, !tools.is_empty()).await {
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
        usage.truncated = runner::truncated(&turn.usage);
        output.push_str(&turn.text);
        if turn.tool_calls.is_empty() {
            return Ok((usage, output));
        }
        if client_tools.is_some() {
            for (i, call) in turn.tool_calls.into_iter().enumerate() {
                // Unique across the turns of a conversation, as clients keep them.
                let call_id = format!("call_{}_{i}", run.task.task_id.as_str().replace('-', ""));
                let event = EventKind::ToolCall {
                    call_id,
                    name: call.name,
                    arguments: call.arguments,
                    traceparent: String::new(),
                };
                emit(&run.sink, &run.task, event).await;
            }
            return Ok((usage, output));
        }
        if round == MAX_TOOL_ROUNDS {
            break;
        }
        messages.push(ChatMessage {
            tool_calls: turn.tool_calls.clone(),
            ..ChatMessage::new(Role::Assistant, turn.text)
        });
        for call in turn.tool_calls {
            let mut span = spans::tool(parent, &call);
            let (result, is_error) = match call_tool(run, &call, &span.traceparent_or(parent)).await
            {
                Ok(outcome) => outcome,
                Err(terminal) => {
                    spans::interrupted(&mut span, &terminal);
                    return Err(terminal);
                }
            };
            spans::tool_ended(&mut span, &result, is_error);
            messages.push(ChatMessage::tool_result(call.id.clone(), result.clone()));
            let event = EventKind::ToolResult { call_id: call.id, output: result, is_error };
            emit(&run.sink, &run.task, event).await;
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

/// One generation: the request to the model, its stream into events.
async fn generate(
    run: &TaskRun,
    model: &Arc<dyn Model>,
    request: GenerateRequest,
    find_tool_calls: bool,
) -> Result<runner::Turn, EventKind> {
    // Rendering the chat template and tokenizing a long prompt take milliseconds of CPU:
    // on the blocking pool, not on this runtime (single-threaded on small machines).
    let generating = model.clone();
    let generation = tokio::task::spawn_blocking(move || generating.generate(request))
        .await
        .map_err(|_| failed(ErrorKind::Internal, "the model panicked while reading the prompt"))?
        .map_err(|e| runner::model_failed(&e))?;
    runner::generate(&run.task, generation, &run.sink, &run.cancel, find_tool_calls).await
}

/// The engine's form of a task's output format.
fn output_format(format: &fleet_proto::OutputFormat) -> Result<OutputFormat, String> {
    Ok(match format {
        fleet_proto::OutputFormat::JsonObject => OutputFormat::JsonObject,
        fleet_proto::OutputFormat::JsonSchema(schema) => {
            OutputFormat::json_schema_text(schema).map_err(|e| format!("invalid request: {e}"))?
        }
        fleet_proto::OutputFormat::Regex(regex) => OutputFormat::Regex(regex.clone()),
        fleet_proto::OutputFormat::Lark(lark) => OutputFormat::Lark(lark.clone()),
    })
}

/// Announces a tool call and waits for its result: over the mesh when the worker is on
/// one, else from the head, which runs the called agent as a sub-task when it sees the call.
/// `traceparent` is the call's span, for the callee's spans to go under.
async fn call_tool(
    run: &TaskRun,
    call: &ToolCall,
    traceparent: &str,
) -> Result<ToolOutcome, EventKind> {
    let announce = EventKind::ToolCall {
        call_id: call.id.clone(),
        name: call.name.clone(),
        arguments: call.arguments.clone(),
        traceparent: traceparent.to_owned(),
    };
    if call.name == fleet_proto::PUBLISH_TOOL && !run.spec.topics.is_empty() {
        emit(&run.sink, &run.task, announce).await;
        return Ok(publish(run, &call.arguments).await);
    }
    if !run.spec.tools.contains(&call.name) {
        emit(&run.sink, &run.task, announce).await;
        let known = run.spec.tools.join(", ");
        return Ok((format!("unknown tool {:?}: the tools are {known}", call.name), true));
    }
    if let Some(caller) = &run.caller {
        emit(&run.sink, &run.task, announce).await;
        return call_over_mesh(run, caller, call, traceparent).await;
    }
    let key = (run.task.task_id.clone(), call.id.clone());
    let (tx, rx) = oneshot::channel();
    // Waiting before announcing, so a fast reply always finds its waiter.
    run.calls.lock().insert(key.clone(), tx);
    emit(&run.sink, &run.task, announce).await;
    let outcome = tokio::select! {
        biased;
        () = run.cancel.cancelled() => Err(EventKind::Canceled { reason: "canceled".into() }),
        reply = rx => Ok(reply.unwrap_or_else(|_| {
            ("the connection to the head was lost during the call".to_owned(), true)
        })),
        () = tokio::time::sleep(TOOL_CALL_TIMEOUT) => Ok((
            format!("agent {} did not answer within {} s", call.name, TOOL_CALL_TIMEOUT.as_secs()),
            true,
        )),
    };
    run.calls.lock().remove(&key);
    outcome
}

/// The agent's `publish` tool: posts `message` on one of its topics.
async fn publish(run: &TaskRun, arguments: &str) -> ToolOutcome {
    let Some(board) = &run.board else {
        return ("cannot publish: this worker is not on the mesh".into(), true);
    };
    let args: serde_json::Value = serde_json::from_str(arguments).unwrap_or_default();
    let (Some(topic), Some(message)) =
        (args.get("topic").and_then(|t| t.as_str()), args.get("message").and_then(|m| m.as_str()))
    else {
        return ("publish needs {\"topic\": ..., \"message\": ...}".into(), true);
    };
    if !run.spec.topics.iter().any(|t| t == topic) {
        let known = run.spec.topics.join(", ");
        return (format!("topic {topic:?} is not one of this agent's topics ({known})"), true);
    }
    match board.publish(topic, &run.spec.name, message.to_owned()).await {
        Ok(seq) => (format!("published on {topic} as message {seq}"), false),
        Err(e) => (format!("not published on {topic}: {e}"), true),
    }
}

/// Calls the agent straight on the worker that hosts it.
async fn call_over_mesh(
    run: &TaskRun,
    caller: &AgentCaller,
    call: &ToolCall,
    traceparent: &str,
) -> Result<ToolOutcome, EventKind> {
    if run.task.depth >= MAX_CALL_DEPTH {
        return Ok((
            format!(
                "agent {} not called: agents called agents {MAX_CALL_DEPTH} deep, the most allowed",
                call.name
            ),
            true,
        ));
    }
    let request = Call {
        agent: call.name.clone(),
        context_id: run.task.context_id.clone(),
        input: fleet_proto::call_input(&call.arguments),
        caller_task: run.task.task_id.to_string(),
        depth: run.task.depth + 1,
        timeout: TOOL_CALL_TIMEOUT,
        traceparent: traceparent.to_owned(),
    };
    let call = async {
        match &run.lease {
            Some(lease) => lease.lend(caller.call(request)).await,
            None => caller.call(request).await,
        }
    };
    tokio::select! {
        biased;
        () = run.cancel.cancelled() => Err(EventKind::Canceled { reason: "canceled".into() }),
        outcome = call => Ok(outcome),
    }
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

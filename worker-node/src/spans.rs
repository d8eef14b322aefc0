//! The worker's spans of a task, named and filled after the GenAI semantic conventions:
//! `invoke_agent {agent}` for the agent's run here (under the head's span of the task, or
//! the calling agent's `execute_tool` span for a call over the mesh), and under it
//! `chat {model}` (or `text_completion`) per generation with its token usage,
//! `embeddings {model}`, and `execute_tool {agent}` per tool call, whose `traceparent`
//! travels with the call. Empty spans (no cost) while this worker does not trace.

use fleet_inference::{FinishReason, ToolCall};
use fleet_proto::{AgentSpec, EventKind, Sampling, TaskAssignment, Usage};
use fleet_telemetry::{KeyValue, Span, SpanKind, attr, op};

/// The agent's run of `task` on this worker.
pub fn agent(task: &TaskAssignment, spec: &AgentSpec) -> Span {
    if !Span::enabled() {
        return Span::none();
    }
    let mut attributes = vec![
        KeyValue::new(attr::GEN_AI_OPERATION_NAME, op::INVOKE_AGENT),
        KeyValue::new(attr::GEN_AI_PROVIDER_NAME, attr::PROVIDER),
        KeyValue::new(attr::GEN_AI_AGENT_NAME, spec.name.clone()),
        KeyValue::new(attr::GEN_AI_REQUEST_MODEL, spec.model.clone()),
        KeyValue::new(attr::TASK_ID, task.task_id.to_string()),
        KeyValue::new(attr::ATTEMPT, i64::from(task.attempt)),
    ];
    if !task.context_id.is_empty() {
        attributes.push(KeyValue::new(attr::GEN_AI_CONVERSATION_ID, task.context_id.clone()));
    }
    let name = format!("{} {}", op::INVOKE_AGENT, spec.name);
    Span::start(name, SpanKind::Internal, &task.traceparent, attributes)
}

/// Ends the agent's run with its usage and how it ended.
pub fn agent_ended(span: &mut Span, usage: &Usage, terminal: &EventKind) {
    if !span.is_recording() {
        return;
    }
    set_usage(span, usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens);
    match terminal {
        EventKind::Failed { error, .. } => span.fail("task_failed", error.clone()),
        EventKind::Canceled { reason } => span.fail("task_canceled", reason.clone()),
        _ => {}
    }
    span.end();
}

/// One generation of the agent's model; `raw` for a prompt continued as it is.
pub fn chat(parent: &str, spec: &AgentSpec, sampling: &Sampling, raw: bool) -> Span {
    if !Span::enabled() {
        return Span::none();
    }
    let operation = if raw { op::TEXT_COMPLETION } else { op::CHAT };
    let mut attributes = vec![
        KeyValue::new(attr::GEN_AI_OPERATION_NAME, operation),
        KeyValue::new(attr::GEN_AI_PROVIDER_NAME, attr::PROVIDER),
        KeyValue::new(attr::GEN_AI_REQUEST_MODEL, spec.model.clone()),
    ];
    if let Some(max_tokens) = sampling.max_tokens {
        attributes.push(KeyValue::new(attr::GEN_AI_REQUEST_MAX_TOKENS, i64::from(max_tokens)));
    }
    if let Some(temperature) = sampling.temperature {
        let temperature = f64::from(temperature);
        attributes.push(KeyValue::new(attr::GEN_AI_REQUEST_TEMPERATURE, temperature));
    }
    Span::start(format!("{operation} {}", spec.model), SpanKind::Internal, parent, attributes)
}

/// Ends a generation with its token counts and finish reason.
pub fn chat_ended(span: &mut Span, usage: &fleet_inference::Usage) {
    if !span.is_recording() {
        return;
    }
    set_usage(span, usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens);
    let reason = match usage.finish_reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    };
    span.set(attr::GEN_AI_RESPONSE_FINISH_REASONS, string_list(reason));
    span.end();
}

/// Marks a span that ended with the task's terminal event instead (failed or canceled).
pub fn interrupted(span: &mut Span, terminal: &EventKind) {
    match terminal {
        EventKind::Failed { error, .. } => span.fail("generation_failed", error.clone()),
        EventKind::Canceled { reason } => span.fail("canceled", reason.clone()),
        _ => {}
    }
    span.end();
}

/// Embedding `texts` texts with the agent's model.
pub fn embeddings(parent: &str, spec: &AgentSpec, texts: usize) -> Span {
    if !Span::enabled() {
        return Span::none();
    }
    let attributes = vec![
        KeyValue::new(attr::GEN_AI_OPERATION_NAME, op::EMBEDDINGS),
        KeyValue::new(attr::GEN_AI_PROVIDER_NAME, attr::PROVIDER),
        KeyValue::new(attr::GEN_AI_REQUEST_MODEL, spec.model.clone()),
        KeyValue::new("agentfleet.embeddings.texts", i64::try_from(texts).unwrap_or(i64::MAX)),
    ];
    let name = format!("{} {}", op::EMBEDDINGS, spec.model);
    Span::start(name, SpanKind::Internal, parent, attributes)
}

/// One tool call (an agent of the cluster, or the `publish` tool).
pub fn tool(parent: &str, call: &ToolCall) -> Span {
    if !Span::enabled() {
        return Span::none();
    }
    let attributes = vec![
        KeyValue::new(attr::GEN_AI_OPERATION_NAME, op::EXECUTE_TOOL),
        KeyValue::new(attr::GEN_AI_TOOL_NAME, call.name.clone()),
        KeyValue::new(attr::GEN_AI_TOOL_CALL_ID, call.id.clone()),
        KeyValue::new(attr::GEN_AI_TOOL_TYPE, "function"),
    ];
    let name = format!("{} {}", op::EXECUTE_TOOL, call.name);
    Span::start(name, SpanKind::Internal, parent, attributes)
}

/// Ends a tool call; an error answer marks it failed.
pub fn tool_ended(span: &mut Span, output: &str, is_error: bool) {
    if is_error {
        span.fail("tool_error", output.to_owned());
    }
    span.end();
}

fn set_usage(span: &mut Span, input: u32, output: u32, cached: u32) {
    span.set(attr::GEN_AI_USAGE_INPUT_TOKENS, i64::from(input));
    span.set(attr::GEN_AI_USAGE_OUTPUT_TOKENS, i64::from(output));
    span.set(attr::CACHED_TOKENS, i64::from(cached));
}

fn string_list(value: &'static str) -> fleet_telemetry::Value {
    fleet_telemetry::Value::Array(vec![fleet_telemetry::StringValue::from(value)].into())
}

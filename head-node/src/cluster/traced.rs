//! A task's span on the head: `invoke_agent {agent}` from submission to its end, under the
//! request's `traceparent` (or the calling task's span for a sub-task), with the moments
//! of its life as span events: scheduled on a worker, its first event, a lost worker.
//! Workers put their spans under it (`RunTask.traceparent`). Everything here is a no-op
//! while the head does not trace.

use fleet_telemetry::{KeyValue, Span, SpanKind, attr, op};

use super::*;

/// Opens the span of a task just accepted; `parent` is the request's `traceparent` or the
/// calling task's span, `called` whether an agent called it as a tool.
pub(super) fn start(task: &mut TaskEntry, spec: &AgentSpec, parent: String, called: bool) {
    if Span::enabled() {
        let mut attributes = vec![
            KeyValue::new(attr::GEN_AI_OPERATION_NAME, op::INVOKE_AGENT),
            KeyValue::new(attr::GEN_AI_PROVIDER_NAME, attr::PROVIDER),
            KeyValue::new(attr::GEN_AI_AGENT_NAME, task.agent.clone()),
            KeyValue::new(attr::GEN_AI_REQUEST_MODEL, spec.model.clone()),
            KeyValue::new(attr::TASK_ID, task.id.to_string()),
        ];
        if !task.context_id.is_empty() {
            attributes.push(KeyValue::new(attr::GEN_AI_CONVERSATION_ID, task.context_id.clone()));
        }
        let kind = if called { SpanKind::Internal } else { SpanKind::Server };
        let name = format!("{} {}", op::INVOKE_AGENT, task.agent);
        task.span = Span::start(name, kind, &parent, attributes);
    }
    task.traceparent = parent;
}

/// The `traceparent` the task's worker (or a sub-task) continues from.
pub(super) fn parent_of(task: &TaskEntry) -> String {
    task.span.traceparent_or(&task.traceparent)
}

pub(super) fn scheduled(task: &mut TaskEntry, worker: &str) {
    task.span.event(
        "scheduled",
        vec![
            KeyValue::new(attr::WORKER, worker.to_owned()),
            KeyValue::new(attr::ATTEMPT, i64::from(task.attempt)),
        ],
    );
}

pub(super) fn first_event(task: &mut TaskEntry) {
    task.span.event("first_event", vec![]);
}

pub(super) fn worker_lost(task: &mut TaskEntry, worker: &str, reason: &str) {
    task.span.event(
        "worker_lost",
        vec![
            KeyValue::new(attr::WORKER, worker.to_owned()),
            KeyValue::new(attr::ATTEMPT, i64::from(task.attempt)),
            KeyValue::new("reason", reason.to_owned()),
        ],
    );
}

/// Closes the span of a task that reached its end, with its usage and how it ended.
pub(super) fn ended(task: &mut TaskEntry, final_state: TaskState) {
    if !task.span.is_recording() {
        return;
    }
    let usage = task.usage;
    task.span.set(attr::GEN_AI_USAGE_INPUT_TOKENS, i64::from(usage.prompt_tokens));
    task.span.set(attr::GEN_AI_USAGE_OUTPUT_TOKENS, i64::from(usage.completion_tokens));
    task.span.set(attr::CACHED_TOKENS, i64::from(usage.cached_tokens));
    task.span.set(attr::TASK_STATE, final_state.as_str());
    if let Some(worker) = &task.worker {
        task.span.set(attr::WORKER, worker.clone());
    }
    match final_state {
        TaskState::Failed => task.span.fail("task_failed", task.error.clone()),
        TaskState::Canceled => task.span.fail("task_canceled", "canceled"),
        _ => {}
    }
    task.span.end();
}

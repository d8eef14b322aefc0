//! The `Event` class: one entry of a task's event log, as Python sees it.

use fleet_client::{EventKind, TaskEvent};
use pyo3::prelude::*;

/// One event of a task. `kind` is one of: submitted, scheduled, working, text_delta,
/// tool_call, tool_result, embeddings, completed, failed, canceled, input_required,
/// input_received, retrying.
/// (An embeddings event's `text` only counts its vectors: `agent.embed` returns them.)
#[pyclass(module = "agentfleet", frozen, get_all)]
#[derive(Clone, Debug)]
pub struct Event {
    pub task_id: String,
    pub seq: u64,
    pub attempt: u32,
    pub kind: &'static str,
    /// The text of a text_delta; the output of a tool_result; the prompt of input_required;
    /// the reply of input_received.
    pub text: String,
    /// The worker of a scheduled or failed event.
    pub worker_id: String,
    /// Why a task failed, was canceled or retried.
    pub error: String,
    /// What kind of failure a failed event is (`busy`, `invalid_request`, `unavailable`,
    /// `internal`, ...); empty for other events.
    pub error_kind: &'static str,
    /// The tool of a tool_call, with its arguments in `text`; the tool whose call waits for
    /// approval in input_required, with its arguments in `arguments`.
    pub tool: String,
    pub arguments: String,
    /// The call an input_required or input_received is about.
    pub call_id: String,
    /// An input_received that rejected the approval (or declined the question).
    pub rejected: bool,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub timestamp_us: u64,
}

#[pymethods]
impl Event {
    fn __repr__(&self) -> String {
        let detail = match self.kind {
            "text_delta" | "tool_result" | "input_required" | "input_received" => {
                format!(", text={:?}", self.text)
            }
            "scheduled" => format!(", worker_id={:?}", self.worker_id),
            "failed" | "canceled" | "retrying" => format!(", error={:?}", self.error),
            "tool_call" => format!(", tool={:?}, text={:?}", self.tool, self.text),
            "completed" => format!(", completion_tokens={}", self.completion_tokens),
            _ => String::new(),
        };
        format!("Event(kind={:?}, seq={}, attempt={}{detail})", self.kind, self.seq, self.attempt)
    }

    /// Whether this event ends its task.
    #[getter]
    pub fn is_final(&self) -> bool {
        matches!(self.kind, "completed" | "failed" | "canceled")
    }
}

impl From<&TaskEvent> for Event {
    fn from(e: &TaskEvent) -> Self {
        let mut event = Event {
            task_id: e.task_id.to_string(),
            seq: e.seq,
            attempt: e.attempt,
            kind: "",
            text: String::new(),
            worker_id: String::new(),
            error: String::new(),
            error_kind: "",
            tool: String::new(),
            arguments: String::new(),
            call_id: String::new(),
            rejected: false,
            prompt_tokens: 0,
            completion_tokens: 0,
            timestamp_us: e.timestamp_us,
        };
        event.kind = match &e.kind {
            EventKind::Submitted { .. } => "submitted",
            EventKind::Scheduled { worker_id } => {
                event.worker_id.clone_from(worker_id);
                "scheduled"
            }
            EventKind::Working => "working",
            EventKind::TextDelta { text, .. } => {
                event.text.clone_from(text);
                "text_delta"
            }
            EventKind::ToolCall { call_id, name, arguments, .. } => {
                event.call_id.clone_from(call_id);
                event.tool.clone_from(name);
                event.text.clone_from(arguments);
                "tool_call"
            }
            EventKind::ToolResult { output, is_error, .. } => {
                event.text.clone_from(output);
                if *is_error {
                    event.error.clone_from(output);
                }
                "tool_result"
            }
            EventKind::Completed { usage } => {
                event.prompt_tokens = usage.prompt_tokens;
                event.completion_tokens = usage.completion_tokens;
                "completed"
            }
            EventKind::Failed { error, worker_id, kind } => {
                event.error.clone_from(error);
                event.error_kind = kind.as_str();
                event.worker_id.clone_from(worker_id);
                "failed"
            }
            EventKind::Canceled { reason } => {
                event.error.clone_from(reason);
                "canceled"
            }
            EventKind::Embeddings { vectors } => {
                event.text = format!("{} vectors", vectors.len());
                "embeddings"
            }
            EventKind::InputRequired { prompt, call_id, tool, arguments, .. } => {
                event.text.clone_from(prompt);
                event.call_id.clone_from(call_id);
                event.tool.clone_from(tool);
                event.arguments.clone_from(arguments);
                "input_required"
            }
            EventKind::InputReceived { call_id, text, rejected } => {
                event.text.clone_from(text);
                event.call_id.clone_from(call_id);
                event.rejected = *rejected;
                "input_received"
            }
            EventKind::Retrying { reason, .. } => {
                event.error.clone_from(reason);
                "retrying"
            }
        };
        event
    }
}

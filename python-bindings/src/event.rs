//! The `Event` class: one entry of a task's event log, as Python sees it.

use std::sync::Arc;

use fleet_client::{Artifact, ArtifactPart, EventKind, FilePart, TaskEvent};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

/// One event of a task. `kind` is one of: submitted, scheduled, working, text_delta,
/// reasoning_delta (a thinking model's reasoning, before and apart from its answer), tool_call, tool_result, embeddings, artifact, completed, failed, canceled,
/// input_required, input_received, retrying, state_saved (a Python actor stored its
/// `ctx.state`: `text` is the state's JSON).
/// (An embeddings event's `text` only counts its vectors: `agent.embed` returns them.)
#[pyclass(module = "agentfleet", frozen)]
#[derive(Clone, Debug)]
pub struct Event {
    #[pyo3(get)]
    pub task_id: String,
    #[pyo3(get)]
    pub seq: u64,
    #[pyo3(get)]
    pub attempt: u32,
    #[pyo3(get)]
    pub kind: &'static str,
    /// The text of a text_delta or reasoning_delta; the output of a tool_result; the prompt of input_required;
    /// the reply of input_received.
    #[pyo3(get)]
    pub text: String,
    /// The worker of a scheduled or failed event.
    #[pyo3(get)]
    pub worker_id: String,
    /// Why a task failed, was canceled or retried.
    #[pyo3(get)]
    pub error: String,
    /// What kind of failure a failed event is (`busy`, `invalid_request`, `unavailable`,
    /// `internal`, ...); empty for other events.
    #[pyo3(get)]
    pub error_kind: &'static str,
    /// The tool of a tool_call, with its arguments in `text`; the tool whose call waits for
    /// approval in input_required, with its arguments in `arguments`.
    #[pyo3(get)]
    pub tool: String,
    #[pyo3(get)]
    pub arguments: String,
    /// The call an input_required or input_received is about.
    #[pyo3(get)]
    pub call_id: String,
    /// An input_received that rejected the approval (or declined the question).
    #[pyo3(get)]
    pub rejected: bool,
    /// A tool_call an earlier attempt made and whose result was stored, repeated by the
    /// retried attempt: not made again.
    #[pyo3(get)]
    pub replayed: bool,
    #[pyo3(get)]
    pub prompt_tokens: u32,
    #[pyo3(get)]
    pub completion_tokens: u32,
    /// Of `completion_tokens`, a thinking model's reasoning (its markers included).
    #[pyo3(get)]
    pub reasoning_tokens: u32,
    #[pyo3(get)]
    pub timestamp_us: u64,
    /// The file or data of an artifact event.
    pub artifact: Option<Arc<Artifact>>,
}

#[pymethods]
impl Event {
    fn __repr__(&self) -> String {
        let detail = match self.kind {
            "text_delta" | "reasoning_delta" | "tool_result" | "input_required"
            | "input_received" => {
                format!(", text={:?}", self.text)
            }
            "scheduled" => format!(", worker_id={:?}", self.worker_id),
            "failed" | "canceled" | "retrying" => format!(", error={:?}", self.error),
            "tool_call" => format!(", tool={:?}, text={:?}", self.tool, self.text),
            "completed" if self.reasoning_tokens > 0 => format!(
                ", completion_tokens={}, reasoning_tokens={}",
                self.completion_tokens, self.reasoning_tokens
            ),
            "completed" => format!(", completion_tokens={}", self.completion_tokens),
            _ => String::new(),
        };
        format!("Event(kind={:?}, seq={}, attempt={}{detail})", self.kind, self.seq, self.attempt)
    }

    /// An artifact event's file or data (`agentfleet.Artifact`); None for other events.
    #[getter]
    fn artifact(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.artifact.as_deref().map(|a| artifact_object(py, a)).transpose()
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
            replayed: false,
            prompt_tokens: 0,
            completion_tokens: 0,
            reasoning_tokens: 0,
            timestamp_us: e.timestamp_us,
            artifact: None,
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
            EventKind::ReasoningDelta { text } => {
                event.text.clone_from(text);
                "reasoning_delta"
            }
            EventKind::ToolCall { call_id, name, arguments, replayed, .. } => {
                event.call_id.clone_from(call_id);
                event.tool.clone_from(name);
                event.text.clone_from(arguments);
                event.replayed = *replayed;
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
                event.reasoning_tokens = usage.reasoning_tokens;
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
            EventKind::StateSaved { state } => {
                event.text = state.to_string();
                "state_saved"
            }
            EventKind::Artifact(artifact) => {
                event.text =
                    if artifact.name.is_empty() { &artifact.id } else { &artifact.name }.clone();
                event.artifact = Some(artifact.clone());
                "artifact"
            }
        };
        event
    }
}

/// `artifact` as an `agentfleet.Artifact` (its file an `agentfleet.AgentFile`, its data the
/// JSON value).
pub fn artifact_object(py: Python<'_>, artifact: &Artifact) -> PyResult<Py<PyAny>> {
    let agents = py.import("agentfleet.agents")?;
    let (file, data) = match &artifact.part {
        ArtifactPart::File(f) => {
            let data = PyBytes::new(py, &f.data);
            let file = agents.getattr("AgentFile")?.call1((
                f.name.as_str(),
                f.media_type.as_str(),
                data,
                f.url.as_str(),
            ))?;
            (file, py.None().into_bound(py))
        }
        ArtifactPart::Data(json) => {
            let data = py.import("json")?.getattr("loads")?.call1((json.as_str(),))?;
            (py.None().into_bound(py), data)
        }
    };
    let object = agents.getattr("Artifact")?.call1((
        artifact.id.as_str(),
        artifact.name.as_str(),
        artifact.description.as_str(),
        file,
        data,
    ))?;
    Ok(object.unbind())
}

/// Files as Python tuples `(name, media_type, data, url)`, as `agentfleet`'s readers take
/// them.
pub fn file_tuples<'py>(py: Python<'py>, files: &[FilePart]) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for f in files {
        let data = PyBytes::new(py, &f.data);
        list.append((f.name.as_str(), f.media_type.as_str(), data, f.url.as_str()))?;
    }
    Ok(list)
}

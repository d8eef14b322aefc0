//! Events as Python sees them: the base class `Event` (what every event has) and one
//! subclass per kind (`TextDelta`, `ToolCall`, `Failed`, ...), each with only the fields of
//! its kind, so `isinstance` and `match` tell them apart and type checkers know the fields.

use std::sync::Arc;

use fleet_client::{Artifact, ArtifactPart, EventKind, FilePart, TaskEvent};
use pyo3::exceptions::PyAttributeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

/// One event of a task. Each kind is a subclass (`af.TextDelta`, `af.ToolCall`, ...) with
/// the fields of its kind; every event has these.
#[pyclass(module = "agentfleet", frozen, subclass)]
pub struct Event {
    #[pyo3(get)]
    task_id: String,
    #[pyo3(get)]
    seq: u64,
    /// Which run of the task (1, then 2 after a retry, ...).
    #[pyo3(get)]
    attempt: u32,
    /// The kind's name (`text_delta`, `tool_call`, ...; `af.EventKind`).
    #[pyo3(get)]
    kind: &'static str,
    /// When the head logged it, in microseconds since the epoch.
    #[pyo3(get)]
    timestamp_us: u64,
}

#[pymethods]
impl Event {
    /// Whether this event ends its task (completed, failed or canceled).
    #[getter]
    fn is_final(&self) -> bool {
        matches!(self.kind, "completed" | "failed" | "canceled")
    }

    /// `TextDelta(text='Hello', seq=3, attempt=1)`: the kind's fields, then where it is.
    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let class = slf.get_type().name()?.to_string();
        let mut parts = Vec::new();
        for field in fields_of(slf)? {
            parts.push(format!("{field}={}", slf.getattr(field.as_str())?.repr()?));
        }
        let this = slf.get();
        parts.push(format!("seq={}, attempt={}", this.seq, this.attempt));
        Ok(format!("{class}({})", parts.join(", ")))
    }

    /// Only reached for a name no class of the event has: says which fields this kind has
    /// (an old spelling such as a tool call's `text`, now `arguments`).
    fn __getattr__(slf: &Bound<'_, Self>, name: &str) -> PyResult<Py<PyAny>> {
        let class = slf.get_type().name()?.to_string();
        let fields = fields_of(slf)?;
        let has = if fields.is_empty() {
            "no fields of its own".to_owned()
        } else {
            format!("the fields {}", fields.join(", "))
        };
        Err(PyAttributeError::new_err(format!(
            "{class} has no attribute '{name}': a {class} event ({} kind) has {has}, besides \
             task_id, seq, attempt, kind, timestamp_us and is_final",
            slf.get().kind
        )))
    }
}

/// The names of the fields of an event's kind (its class's `__match_args__`).
fn fields_of(event: &Bound<'_, Event>) -> PyResult<Vec<String>> {
    match event.get_type().getattr("__match_args__") {
        Ok(fields) => fields.extract(),
        Err(_) => Ok(Vec::new()),
    }
}

/// Declares the class of one kind: its docstring, its fields (read-only, in `match` order).
macro_rules! event_class {
    ($(#[doc = $doc:literal])* $class:ident { $( $(#[doc = $fdoc:literal])* $field:ident : $ty:ty ),* $(,)? }) => {
        $(#[doc = $doc])*
        #[pyclass(module = "agentfleet", frozen, extends = Event)]
        pub struct $class {
            $( $(#[doc = $fdoc])* #[pyo3(get)] $field: $ty, )*
        }

        #[pymethods]
        impl $class {
            #[classattr]
            fn __match_args__(py: Python<'_>) -> PyResult<Py<PyTuple>> {
                let fields: &[&str] = &[$(stringify!($field)),*];
                Ok(PyTuple::new(py, fields)?.unbind())
            }
        }
    };
}

event_class! {
    /// The head accepted the task (`submitted`).
    Submitted {
        /// The agent it was submitted to.
        agent: String,
    }
}
event_class! {
    /// A worker took the task (`scheduled`).
    Scheduled { worker_id: String }
}
event_class! {
    /// The worker started running it (`working`).
    Working {}
}
event_class! {
    /// A piece of the answer (`text_delta`).
    TextDelta { text: String }
}
event_class! {
    /// A piece of a thinking model's reasoning, before and apart from its answer
    /// (`reasoning_delta`).
    ReasoningDelta { text: String }
}
event_class! {
    /// The agent called a tool (`tool_call`).
    ToolCall {
        call_id: String,
        tool: String,
        /// The call's arguments, as JSON text.
        arguments: String,
        /// A call an earlier attempt made and whose result was stored, repeated by the retried
        /// attempt: not made again.
        replayed: bool,
    }
}
event_class! {
    /// A tool's answer to a call (`tool_result`).
    ToolResult {
        call_id: String,
        output: String,
        /// The tool reported an error (its message is `output`).
        is_error: bool,
    }
}
event_class! {
    /// An embedding model's vectors (`embeddings`): `agent.embed` returns them.
    Embeddings {
        /// How many vectors.
        count: usize,
    }
}
event_class! {
    /// A file or data the task returned beside its text (`artifact`).
    ArtifactEvent {
        name: String,
        /// The file or data (`af.Artifact`).
        artifact: Py<PyAny>,
    }
}
event_class! {
    /// The task completed (`completed`); its answer is the text deltas of its last attempt.
    Completed {
        prompt_tokens: u32,
        completion_tokens: u32,
        /// Of `completion_tokens`, a thinking model's reasoning (its markers included); 0 for
        /// other models.
        reasoning_tokens: u32,
    }
}
event_class! {
    /// The task failed (`failed`).
    Failed {
        error: String,
        /// The kind of failure (`busy`, `invalid_request`, `unavailable`, `internal`, ...):
        /// the class `result()` raises is named for it.
        error_kind: &'static str,
        /// The worker it failed on, if it ran.
        worker_id: String,
    }
}
event_class! {
    /// The task was canceled (`canceled`).
    Canceled { reason: String }
}
event_class! {
    /// The task waits for a person (`input_required`): a question, or a tool call to approve
    /// (then `tool` and `arguments` are set). Answer with `task.reply`, `approve`, `reject`.
    InputRequired {
        /// The question.
        prompt: String,
        call_id: String,
        tool: String,
        arguments: String,
    }
}
event_class! {
    /// The task got its answer and goes on (`input_received`).
    InputReceived {
        call_id: String,
        reply: String,
        /// The approval was rejected (or the question declined).
        rejected: bool,
    }
}
event_class! {
    /// The attempt failed and the task goes back to the queue (`retrying`).
    Retrying { reason: String }
}
event_class! {
    /// A Python actor stored its `ctx.state` (`state_saved`).
    StateSaved {
        /// The state as stored (a dict).
        state: Py<PyAny>,
    }
}

/// `e` as an object of its kind's class; `kind` names the kind as `af.EventKind` does.
pub fn to_py(py: Python<'_>, e: &TaskEvent) -> PyResult<Py<PyAny>> {
    // The event as an object of class `$this`, which extends `Event`.
    macro_rules! of_class {
        ($kind:literal, $this:expr) => {{
            let base = Event {
                task_id: e.task_id.to_string(),
                seq: e.seq,
                attempt: e.attempt,
                kind: $kind,
                timestamp_us: e.timestamp_us,
            };
            let object = PyClassInitializer::from(base).add_subclass($this);
            Ok(Bound::new(py, object)?.into_any().unbind())
        }};
    }
    match &e.kind {
        EventKind::Submitted { agent } => {
            of_class!("submitted", Submitted { agent: agent.clone() })
        }
        EventKind::Scheduled { worker_id } => {
            of_class!("scheduled", Scheduled { worker_id: worker_id.clone() })
        }
        EventKind::Working => of_class!("working", Working {}),
        EventKind::TextDelta { text, .. } => {
            of_class!("text_delta", TextDelta { text: text.clone() })
        }
        EventKind::ReasoningDelta { text } => {
            of_class!("reasoning_delta", ReasoningDelta { text: text.clone() })
        }
        EventKind::ToolCall { call_id, name, arguments, replayed, .. } => of_class!(
            "tool_call",
            ToolCall {
                call_id: call_id.clone(),
                tool: name.clone(),
                arguments: arguments.clone(),
                replayed: *replayed,
            }
        ),
        EventKind::ToolResult { call_id, output, is_error } => of_class!(
            "tool_result",
            ToolResult { call_id: call_id.clone(), output: output.clone(), is_error: *is_error }
        ),
        EventKind::Completed { usage } => of_class!(
            "completed",
            Completed {
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
                reasoning_tokens: usage.reasoning_tokens,
            }
        ),
        EventKind::Failed { error, worker_id, kind } => of_class!(
            "failed",
            Failed {
                error: error.clone(),
                error_kind: kind.as_str(),
                worker_id: worker_id.clone(),
            }
        ),
        EventKind::Canceled { reason } => {
            of_class!("canceled", Canceled { reason: reason.clone() })
        }
        EventKind::Embeddings { vectors } => {
            of_class!("embeddings", Embeddings { count: vectors.len() })
        }
        EventKind::InputRequired { prompt, call_id, tool, arguments, .. } => {
            of_class!(
                "input_required",
                InputRequired {
                    prompt: prompt.clone(),
                    call_id: call_id.clone(),
                    tool: tool.clone(),
                    arguments: arguments.clone(),
                }
            )
        }
        EventKind::InputReceived { call_id, text, rejected } => of_class!(
            "input_received",
            InputReceived { call_id: call_id.clone(), reply: text.clone(), rejected: *rejected }
        ),
        EventKind::Retrying { reason, .. } => {
            of_class!("retrying", Retrying { reason: reason.clone() })
        }
        EventKind::StateSaved { state } => {
            let state = py.import("json")?.call_method1("loads", (&**state,))?.unbind();
            of_class!("state_saved", StateSaved { state })
        }
        EventKind::Artifact(artifact) => {
            let name = if artifact.name.is_empty() { &artifact.id } else { &artifact.name };
            let artifact = artifact_object(py, artifact)?;
            of_class!("artifact", ArtifactEvent { name: name.clone(), artifact })
        }
    }
}

/// Adds the event classes to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Event>()?;
    m.add_class::<Submitted>()?;
    m.add_class::<Scheduled>()?;
    m.add_class::<Working>()?;
    m.add_class::<TextDelta>()?;
    m.add_class::<ReasoningDelta>()?;
    m.add_class::<ToolCall>()?;
    m.add_class::<ToolResult>()?;
    m.add_class::<Embeddings>()?;
    m.add_class::<ArtifactEvent>()?;
    m.add_class::<Completed>()?;
    m.add_class::<Failed>()?;
    m.add_class::<Canceled>()?;
    m.add_class::<InputRequired>()?;
    m.add_class::<InputReceived>()?;
    m.add_class::<Retrying>()?;
    m.add_class::<StateSaved>()?;
    Ok(())
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

/// Shared events of a task's log, as the log keeps them.
pub type Logged = Arc<TaskEvent>;

//! Exceptions: `FleetError` and one subclass per kind of failure (`fleet_client::ErrorKind`,
//! and `canceled`), named as the kinds are. A call the head refused and a task that ended in
//! failure raise the same class for the same kind; `kind` names it and `task_id` says which
//! task, when a task failed.

use fleet_client::{Code, ErrorKind};
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyType;

pyo3::create_exception!(
    agentfleet,
    FleetError,
    PyException,
    "Base class of agentfleet's errors: `kind` names the kind of failure, `task_id` the task \
     that failed (None when the cluster refused a call)."
);

/// One exception class per kind: `(class name, kind, docstring)`, declared once here and
/// registered, mapped and documented from this list.
macro_rules! kinds {
    ($( $class:ident = $kind:literal : $doc:literal ; )*) => {
        $( pyo3::create_exception!(agentfleet, $class, FleetError, $doc); )*

        /// The class of failures of kind `kind`; `FleetError` for a kind this build does not
        /// know (a newer head's).
        fn class_of<'py>(py: Python<'py>, kind: &str) -> Bound<'py, PyType> {
            match kind {
                $( $kind => py.get_type::<$class>(), )*
                _ => py.get_type::<FleetError>(),
            }
        }

        /// Adds the classes to the module, each with its `kind`.
        fn register_kinds(m: &Bound<'_, PyModule>) -> PyResult<()> {
            let py = m.py();
            $(
                let class = py.get_type::<$class>();
                class.setattr("kind", $kind)?;
                m.add(stringify!($class), class)?;
            )*
            Ok(())
        }
    };
}

kinds! {
    InternalError = "internal": "Something broke on the cluster's side (a worker's fault, a bug).";
    InvalidRequestError = "invalid_request":
        "The request was malformed or cannot be served as given: change it (a prompt over the \
         model's context, a bad argument).";
    UnknownTaskError = "unknown_task": "No task of that id (or it is past its retention).";
    UnknownAgentError = "unknown_agent": "No agent (or model) of that name.";
    BusyError = "busy": "Out of room for now (a full queue, a tenant's quota): retry later.";
    UnavailableError = "unavailable":
        "The cluster cannot be reached, or a part of it is gone for now (a lost worker, the \
         store).";
    UnsupportedError = "unsupported":
        "Valid, but not something this cluster can do (no worker can run the agent).";
    NotCancelableError = "not_cancelable": "The task has already ended.";
    ContentTypeNotSupportedError = "content_type_not_supported":
        "A message part of a type the agent cannot take (a file for a model agent).";
    UnauthenticatedError = "unauthenticated": "The cluster token is missing or wrong.";
    PermissionDeniedError = "permission_denied":
        "The key is known, but its role does not allow this (a reader submitting, a user \
         replacing a shared agent).";
    CanceledError = "canceled": "The task was canceled.";
}

/// The exception for a failure of kind `kind` (an [`ErrorKind`]'s name, or `canceled`),
/// with the task it ended, if a task failed.
pub fn of_kind(kind: &str, message: String, task_id: Option<&str>) -> PyErr {
    Python::attach(|py| {
        let error = PyErr::from_type(class_of(py, kind), message);
        // `kind` for a kind this build has no class for; setting attributes on a fresh
        // exception instance cannot fail short of memory.
        let value = error.value(py);
        let _ = value.setattr("kind", kind);
        if let Some(id) = task_id {
            let _ = value.setattr("task_id", id);
        }
        error
    })
}

/// A task that ended in failure of `kind`.
pub fn task_failed(kind: &str, task_id: &str, message: String) -> PyErr {
    of_kind(kind, message, Some(task_id))
}

/// A failure of `kind` that no one task had (a refused call, a check of ours).
pub fn kind(kind: ErrorKind, message: impl Into<String>) -> PyErr {
    of_kind(kind.as_str(), message.into(), None)
}

/// The cluster cannot be reached, or is shutting down.
pub fn unavailable(message: impl Into<String>) -> PyErr {
    kind(ErrorKind::Unavailable, message)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let base = py.get_type::<FleetError>();
    // Every error has a kind and a task id: one raised without its own reads the class's.
    base.setattr("kind", ErrorKind::Internal.as_str())?;
    base.setattr("task_id", py.None())?;
    m.add("FleetError", base)?;
    register_kinds(m)
}

/// The Python exception for a client error: the class of the kind the head said.
pub fn to_py(e: fleet_client::Error) -> PyErr {
    let message = e.to_string();
    if e.code() == Code::Cancelled {
        return of_kind("canceled", message, None);
    }
    kind(e.kind(), message)
}

/// The Python exception for a gRPC code and message (as in a rejected submission).
pub fn from_code(code: Code, message: String) -> PyErr {
    to_py(fleet_client::Error::Status(fleet_client::Status::new(code, message)))
}

//! Exceptions: `FleetError` and one subclass per kind of failure, carrying the server's
//! message.

use fleet_client::Code;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

pyo3::create_exception!(agentfleet, FleetError, PyException, "Base class of agentfleet errors.");
pyo3::create_exception!(
    agentfleet,
    Unavailable,
    FleetError,
    "The cluster cannot be reached or is shutting down."
);
pyo3::create_exception!(
    agentfleet,
    Unauthenticated,
    FleetError,
    "The cluster token is missing or wrong."
);
pyo3::create_exception!(
    agentfleet,
    PermissionDenied,
    FleetError,
    "The key is known, but its role does not allow this (a reader submitting, a user replacing \
     a shared agent)."
);
pyo3::create_exception!(agentfleet, NotFound, FleetError, "No such agent or task.");
pyo3::create_exception!(agentfleet, InvalidArgument, FleetError, "The request was malformed.");
pyo3::create_exception!(agentfleet, ResourceExhausted, FleetError, "The cluster's queue is full.");
pyo3::create_exception!(
    agentfleet,
    FailedPrecondition,
    FleetError,
    "Not possible in the state things are in: no worker can run the agent, the task has ended."
);
pyo3::create_exception!(agentfleet, TaskFailed, FleetError, "A task ended in failure.");
pyo3::create_exception!(agentfleet, Cancelled, FleetError, "A task was canceled.");

/// `TaskFailed(message)` with `kind` set to the failure's kind (`"busy"`, `"invalid_request"`,
/// `"unavailable"`, ...: `fleet_client::ErrorKind::as_str`), so callers can retry what is
/// worth retrying without reading the message.
pub fn task_failed(kind: &str, message: String) -> PyErr {
    let error = TaskFailed::new_err(message);
    Python::attach(|py| {
        // Setting an attribute on a fresh exception instance cannot fail short of memory.
        let _ = error.value(py).setattr("kind", kind);
    });
    error
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("FleetError", py.get_type::<FleetError>())?;
    m.add("Unavailable", py.get_type::<Unavailable>())?;
    m.add("Unauthenticated", py.get_type::<Unauthenticated>())?;
    m.add("PermissionDenied", py.get_type::<PermissionDenied>())?;
    m.add("NotFound", py.get_type::<NotFound>())?;
    m.add("InvalidArgument", py.get_type::<InvalidArgument>())?;
    m.add("ResourceExhausted", py.get_type::<ResourceExhausted>())?;
    m.add("FailedPrecondition", py.get_type::<FailedPrecondition>())?;
    let task_failed = py.get_type::<TaskFailed>();
    // Every TaskFailed has a kind: one raised without its own reads the class's.
    task_failed.setattr("kind", "internal")?;
    m.add("TaskFailed", task_failed)?;
    m.add("Cancelled", py.get_type::<Cancelled>())?;
    Ok(())
}

/// The Python exception for a client error.
pub fn to_py(e: fleet_client::Error) -> PyErr {
    let message = e.to_string();
    match e.code() {
        Code::Unauthenticated => Unauthenticated::new_err(message),
        Code::PermissionDenied => PermissionDenied::new_err(message),
        Code::NotFound => NotFound::new_err(message),
        Code::InvalidArgument => InvalidArgument::new_err(message),
        Code::ResourceExhausted => ResourceExhausted::new_err(message),
        Code::FailedPrecondition => FailedPrecondition::new_err(message),
        Code::Unavailable | Code::DeadlineExceeded => Unavailable::new_err(message),
        Code::Cancelled => Cancelled::new_err(message),
        _ => FleetError::new_err(message),
    }
}

/// The Python exception for a gRPC code and message (as in a rejected submission).
pub fn from_code(code: Code, message: String) -> PyErr {
    to_py(fleet_client::Error::Status(fleet_client::Status::new(code, message)))
}

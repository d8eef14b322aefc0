//! The worker's one error type.

use fleet_proto::ErrorKind;

/// Why the worker cannot run, or cannot run a task.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A malformed head address or an unusable CA file.
    #[error("{0}")]
    InvalidHead(String),
    #[error("the head rejected this worker: {0}")]
    Rejected(String),
    #[error("cannot reach the head: {0}")]
    Unreachable(String),
    #[error("the head broke the protocol: {0}")]
    Protocol(String),
    #[error("invalid worker setting: {0}")]
    InvalidConfig(String),
    #[error("cannot read the models dir {path}: {source}")]
    ModelsDir { path: std::path::PathBuf, source: std::io::Error },
    #[error("{0}")]
    UnknownModel(String),
    #[error("cannot preload model {model:?}: {reason}")]
    Preload { model: String, reason: String },
    /// An `openai:MODEL` agent's endpoint settings are missing or invalid.
    #[error("cannot use remote model {model:?}: {reason}")]
    RemoteModel { model: String, reason: String },
    /// A bug of ours met while serving a task (a panic caught at its thread's edge).
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Model(#[from] fleet_inference::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// What kind of failure a task that met this error ended with.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidConfig(_) | Self::RemoteModel { .. } => ErrorKind::InvalidRequest,
            Self::UnknownModel(_) => ErrorKind::UnknownAgent,
            Self::Model(e) => model_error_kind(e),
            _ => ErrorKind::Internal,
        }
    }
}

/// What kind of failure a model's error is: a request (or option) the model refuses is the
/// caller's to fix, a full engine queue is busy, the rest is ours.
pub fn model_error_kind(e: &fleet_inference::Error) -> ErrorKind {
    use fleet_inference::Error as E;
    match e {
        E::InvalidRequest(_) | E::InvalidOption { .. } => ErrorKind::InvalidRequest,
        E::UnknownModel { .. } => ErrorKind::UnknownAgent,
        E::Busy(_) => ErrorKind::Busy,
        E::Unavailable(_) => ErrorKind::Unavailable,
        _ => ErrorKind::Internal,
    }
}

//! The worker's one error type.

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
    #[error(transparent)]
    Model(#[from] fleet_inference::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

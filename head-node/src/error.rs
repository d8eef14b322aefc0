//! The head's one error type and its mapping to gRPC status codes and HTTP statuses.

use std::path::PathBuf;

/// Everything that can go wrong in the head, each variant saying what to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {message}", location(path, *line))]
    Config { path: PathBuf, line: Option<usize>, message: String },
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    #[error("invalid agent spec: {0}")]
    InvalidAgent(String),
    #[error("unknown agent {0:?}: register it first or check the name")]
    UnknownAgent(String),
    #[error("unknown model {0:?}: no worker has it; GET /v1/models lists the models served")]
    UnknownModel(String),
    #[error("unknown task {0:?}")]
    UnknownTask(String),
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    #[error("the task queue is full ({limit} tasks waiting): retry later or add workers")]
    QueueFull { limit: usize },
    #[error(
        "the head holds its limit of {limit} agents: reuse an agent's name (registering a \
         name again replaces its spec) or raise --max-agents"
    )]
    TooManyAgents { limit: usize },
    #[error("no worker can ever run agent {agent:?}: {reason}")]
    Unschedulable { agent: String, reason: String },
    #[error("mesh unavailable: {0}")]
    Mesh(String),
    #[error("TLS: {}: {message}", path.display())]
    Tls { path: PathBuf, message: String },
    #[error("store {0}")]
    Store(crate::store::StoreError),
    #[error(
        "the head cannot store new work ({0}); it accepts none until its store is writable \
         again"
    )]
    StoreUnavailable(String),
    #[error(
        "this head lost the leader lease ({0}): it stops so that only one head dispatches; \
         start it again to stand by"
    )]
    LostLease(String),
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
}

fn location(path: &std::path::Path, line: Option<usize>) -> String {
    match line {
        Some(line) => format!("{}:{line}", path.display()),
        None => path.display().to_string(),
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The gRPC code clients see for this error.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Self::Config { .. }
            | Self::InvalidConfig(_)
            | Self::InvalidAgent(_)
            | Self::Tls { .. } => Code::InvalidArgument,
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::UnknownAgent(_) | Self::UnknownTask(_) | Self::UnknownModel(_) => Code::NotFound,
            Self::QueueFull { .. } | Self::TooManyAgents { .. } => Code::ResourceExhausted,
            Self::Unschedulable { .. } => Code::FailedPrecondition,
            Self::Mesh(_) | Self::StoreUnavailable(_) | Self::LostLease(_) => Code::Unavailable,
            Self::Store(_) => Code::Internal,
            Self::Io(_) => Code::Internal,
        }
    }

    /// The HTTP status for this error on the HTTP APIs.
    pub fn http_status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self.code() {
            tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
            tonic::Code::NotFound => StatusCode::NOT_FOUND,
            tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            tonic::Code::FailedPrecondition => StatusCode::CONFLICT,
            tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        tonic::Status::new(e.code(), e.to_string())
    }
}

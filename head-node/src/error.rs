//! The head's one error type, and the one table ([`codes`]) from a kind of failure to the
//! gRPC code, HTTP status, JSON-RPC code and OpenAI error type each front door answers with.

use std::path::PathBuf;

use fleet_proto::ErrorKind;

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
    #[error("{0}")]
    Unsupported(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("the task queue is full ({limit} tasks waiting): retry later or add workers")]
    QueueFull { limit: usize },
    #[error(
        "the tasks waiting or running hold {held} bytes of input, and this one's {more} would \
         pass the head's budget of {limit} (--max-queued-bytes): retry later or add workers"
    )]
    QueueBytes { held: usize, more: usize, limit: usize },
    #[error(
        "the head holds its limit of {limit} agents: reuse an agent's name (registering a \
         name again replaces its spec) or raise --max-agents"
    )]
    TooManyAgents { limit: usize },
    #[error("{limit} client publishes are waiting for their workers to answer: retry later")]
    TooManyPublishes { limit: usize },
    #[error("{0}")]
    TopicsFull(String),
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
    #[error("{0}")]
    Unauthenticated(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("the name {0:?} is taken: choose another")]
    NameTaken(String),
    #[error(
        "tenant {tenant:?} is at its quota of {limit} {what}: retry in {retry_after_s} s, or \
         ask the operator to raise the tenant's {setting}"
    )]
    Quota {
        tenant: String,
        what: &'static str,
        setting: &'static str,
        limit: u64,
        retry_after_s: u64,
    },
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
    /// What kind of failure this is; [`codes`] says how each door answers it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Config { .. }
            | Self::InvalidConfig(_)
            | Self::InvalidAgent(_)
            | Self::Tls { .. }
            | Self::InvalidArgument(_) => ErrorKind::InvalidRequest,
            Self::UnknownAgent(_) | Self::UnknownModel(_) => ErrorKind::UnknownAgent,
            Self::UnknownTask(_) => ErrorKind::UnknownTask,
            Self::QueueFull { .. }
            | Self::QueueBytes { .. }
            | Self::TooManyAgents { .. }
            | Self::TooManyPublishes { .. }
            | Self::TopicsFull(_)
            | Self::Quota { .. } => ErrorKind::Busy,
            Self::NameTaken(_) => ErrorKind::InvalidRequest,
            Self::Unauthenticated(_) => ErrorKind::Unauthenticated,
            Self::PermissionDenied(_) => ErrorKind::PermissionDenied,
            Self::Unschedulable { .. } | Self::Unsupported(_) => ErrorKind::Unsupported,
            Self::Mesh(_)
            | Self::StoreUnavailable(_)
            | Self::LostLease(_)
            | Self::Unavailable(_) => ErrorKind::Unavailable,
            Self::Store(_) | Self::Io(_) => ErrorKind::Internal,
        }
    }

    /// Seconds after which a refused request may succeed (HTTP `Retry-After`), where known.
    pub fn retry_after_s(&self) -> Option<u64> {
        match self {
            Self::Quota { retry_after_s, .. } => Some(*retry_after_s),
            Self::QueueFull { .. }
            | Self::QueueBytes { .. }
            | Self::TooManyPublishes { .. }
            | Self::TopicsFull(_) => Some(1),
            _ => None,
        }
    }

    /// The gRPC code clients see for this error.
    pub fn code(&self) -> tonic::Code {
        codes(self.kind()).grpc
    }

    /// The HTTP status for this error on the HTTP APIs.
    pub fn http_status(&self) -> axum::http::StatusCode {
        codes(self.kind()).http
    }
}

/// How every front door answers one kind of failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Codes {
    pub grpc: tonic::Code,
    pub http: axum::http::StatusCode,
    /// The JSON-RPC `error.code` (A2A's codes where A2A has one; -32050.. are ours).
    pub jsonrpc: i64,
    /// google.rpc.ErrorInfo's `reason` (A2A's error name in UPPER_SNAKE_CASE).
    pub reason: &'static str,
    /// OpenAI's error `type` and `code`.
    pub openai_type: &'static str,
    pub openai_code: Option<&'static str>,
}

/// The one table from a kind of failure to what each protocol answers with: the gRPC API,
/// A2A (JSON-RPC and HTTP+JSON) and the OpenAI API all read it, for errors of the head and
/// for tasks that failed on a worker alike.
#[rustfmt::skip]
pub fn codes(kind: ErrorKind) -> Codes {
    use axum::http::StatusCode as H;
    use tonic::Code as G;
    use ErrorKind as K;
    let (grpc, http, jsonrpc, reason, openai_type, openai_code) = match kind {
        K::Internal =>       (G::Internal, H::INTERNAL_SERVER_ERROR, -32603, "INTERNAL", "server_error", None),
        K::InvalidRequest => (G::InvalidArgument, H::BAD_REQUEST, -32602, "INVALID_PARAMS", "invalid_request_error", Some("invalid_value")),
        K::UnknownTask =>    (G::NotFound, H::NOT_FOUND, -32001, "TASK_NOT_FOUND", "invalid_request_error", Some("not_found")),
        K::UnknownAgent =>   (G::NotFound, H::NOT_FOUND, -32051, "AGENT_NOT_FOUND", "invalid_request_error", Some("model_not_found")),
        K::Busy =>           (G::ResourceExhausted, H::TOO_MANY_REQUESTS, -32050, "RESOURCE_EXHAUSTED", "requests", Some("rate_limit_exceeded")),
        K::Unavailable =>    (G::Unavailable, H::SERVICE_UNAVAILABLE, -32052, "UNAVAILABLE", "server_error", Some("service_unavailable")),
        K::Unsupported =>    (G::FailedPrecondition, H::BAD_REQUEST, -32004, "UNSUPPORTED_OPERATION", "invalid_request_error", Some("unsupported")),
        K::NotCancelable =>  (G::FailedPrecondition, H::BAD_REQUEST, -32002, "TASK_NOT_CANCELABLE", "invalid_request_error", Some("not_cancelable")),
        K::ContentTypeNotSupported =>
                             (G::InvalidArgument, H::BAD_REQUEST, -32005, "CONTENT_TYPE_NOT_SUPPORTED", "invalid_request_error", Some("unsupported_content_type")),
        K::Unauthenticated => (G::Unauthenticated, H::UNAUTHORIZED, -32053, "UNAUTHENTICATED", "invalid_request_error", Some("invalid_api_key")),
        K::PermissionDenied => (G::PermissionDenied, H::FORBIDDEN, -32054, "PERMISSION_DENIED", "invalid_request_error", Some("permission_denied")),
    };
    Codes { grpc, http, jsonrpc, reason, openai_type, openai_code }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let mut status = tonic::Status::new(e.code(), e.to_string());
        status.metadata_mut().insert(
            fleet_proto::ERROR_KIND_METADATA,
            tonic::metadata::MetadataValue::from_static(e.kind().as_str()),
        );
        if let Some(s) = e.retry_after_s() {
            status.metadata_mut().insert("retry-after", s.into());
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_distinct_codes_where_protocols_tell_them_apart() {
        let mut jsonrpc = std::collections::HashSet::new();
        for kind in ErrorKind::ALL {
            let c = codes(kind);
            assert!(jsonrpc.insert(c.jsonrpc), "{kind}: JSON-RPC code {} twice", c.jsonrpc);
            // The request's fault is a 4xx everywhere, ours a 5xx, and OpenAI clients read
            // the same split from `type`.
            let client = c.http.is_client_error();
            assert_eq!(client, c.openai_type != "server_error", "{kind}");
            assert_eq!(
                client,
                !matches!(c.grpc, tonic::Code::Internal | tonic::Code::Unavailable),
                "{kind}"
            );
        }
    }

    #[test]
    fn head_errors_take_their_kinds_codes() {
        let busy = Error::QueueFull { limit: 1 };
        assert_eq!(
            (busy.code(), busy.http_status().as_u16()),
            (tonic::Code::ResourceExhausted, 429)
        );
        let lost = Error::StoreUnavailable("disk full".into());
        assert_eq!((lost.code(), lost.http_status().as_u16()), (tonic::Code::Unavailable, 503));
        assert_eq!(Error::UnknownModel("m".into()).kind(), ErrorKind::UnknownAgent);
    }
}

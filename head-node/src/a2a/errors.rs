//! A2A errors as JSON-RPC errors and as google.rpc.Status JSON.
//!
//! A failure of the cluster's (an unknown task, a full queue, ...) takes its codes from the
//! head's one table ([`crate::error::codes`]); failures the spec has no code for use codes
//! of JSON-RPC's server-error range with an ErrorInfo of domain `agentfleet` (-32050 out
//! of room, -32051 no such agent, -32052 unavailable, -32053 unauthenticated). Only the
//! protocol's own errors (a body that is not JSON-RPC, an unknown method, an A2A-Version
//! not served, ...) are listed here.

use axum::http::StatusCode;
use fleet_proto::ErrorKind;
use serde_json::{Value, json};
use tonic::Code;

use crate::error::{Codes, codes};

/// The A2A protocol's own errors, which are not failures of the cluster:
/// (JSON-RPC code, ErrorInfo reason, HTTP status, gRPC code).
const PROTOCOL: [(i64, &str, StatusCode, Code); 8] = [
    (-32700, "PARSE_ERROR", StatusCode::BAD_REQUEST, Code::InvalidArgument),
    (-32600, "INVALID_REQUEST", StatusCode::BAD_REQUEST, Code::InvalidArgument),
    (-32601, "METHOD_NOT_FOUND", StatusCode::NOT_FOUND, Code::NotFound),
    (-32003, "PUSH_NOTIFICATION_NOT_SUPPORTED", StatusCode::BAD_REQUEST, Code::FailedPrecondition),
    (-32006, "INVALID_AGENT_RESPONSE", StatusCode::INTERNAL_SERVER_ERROR, Code::Internal),
    (
        -32007,
        "EXTENDED_AGENT_CARD_NOT_CONFIGURED",
        StatusCode::BAD_REQUEST,
        Code::FailedPrecondition,
    ),
    (-32008, "EXTENSION_SUPPORT_REQUIRED", StatusCode::BAD_REQUEST, Code::FailedPrecondition),
    (-32009, "VERSION_NOT_SUPPORTED", StatusCode::BAD_REQUEST, Code::FailedPrecondition),
];

/// An error to answer an A2A request with.
#[derive(Debug, Clone, PartialEq)]
pub struct A2aError {
    pub code: i64,
    pub message: String,
    /// Seconds after which the request may succeed (HTTP `Retry-After`), where known.
    pub retry_after_s: Option<u64>,
}

impl A2aError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), retry_after_s: None }
    }

    pub fn parse(message: impl Into<String>) -> Self {
        Self::new(-32700, message)
    }
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(-32600, message)
    }
    pub fn method_not_found(message: impl Into<String>) -> Self {
        Self::new(-32601, message)
    }
    /// A failure of the cluster's kind, with the code the one table gives it.
    pub fn of(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::new(codes(kind).jsonrpc, message)
    }
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::of(ErrorKind::InvalidRequest, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::of(ErrorKind::Internal, message)
    }
    pub fn task_not_found(id: &str) -> Self {
        Self::of(ErrorKind::UnknownTask, format!("task {id:?} not found"))
    }
    pub fn not_cancelable(id: &str, state: &str) -> Self {
        Self::of(
            ErrorKind::NotCancelable,
            format!("task {id:?} is {state} and can no longer be canceled"),
        )
    }
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::of(ErrorKind::Unsupported, message)
    }
    pub fn content_type(message: impl Into<String>) -> Self {
        Self::of(ErrorKind::ContentTypeNotSupported, message)
    }
    pub fn extended_card_not_configured() -> Self {
        Self::new(-32007, "this agent has no extended agent card")
    }
    pub fn agent_not_found(message: impl Into<String>) -> Self {
        Self::of(ErrorKind::UnknownAgent, message)
    }
    pub fn version_not_supported(version: &str) -> Self {
        Self::new(
            -32009,
            format!("A2A-Version {version:?} is not supported: use 1.0 (or no header for 0.3)"),
        )
    }

    /// The cluster's kind of failure this error is, if it is one.
    fn kind(&self) -> Option<Codes> {
        ErrorKind::ALL.into_iter().map(codes).find(|c| c.jsonrpc == self.code)
    }

    /// The protocol's own error this is, if it is one.
    fn protocol(&self) -> Option<(i64, &'static str, StatusCode, Code)> {
        PROTOCOL.into_iter().find(|p| p.0 == self.code)
    }

    /// The reason string of google.rpc.ErrorInfo.
    fn reason(&self) -> &'static str {
        match (self.kind(), self.protocol()) {
            (Some(c), _) => c.reason,
            (None, Some(p)) => p.1,
            (None, None) => "INTERNAL",
        }
    }

    /// ErrorInfo's `domain`: A2A's for its own errors, ours for the codes we added.
    fn domain(&self) -> &'static str {
        if self.code <= -32050 && self.code > -32100 { "agentfleet" } else { "a2a-protocol.org" }
    }

    fn error_info(&self) -> Value {
        json!({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": self.reason(), "domain": self.domain()})
    }

    /// The `error` member of a JSON-RPC response.
    pub fn to_jsonrpc(&self) -> Value {
        json!({"code": self.code, "message": self.message, "data": [self.error_info()]})
    }

    /// The HTTP status of the HTTP+JSON binding (and of JSON-RPC transport-level failures).
    pub fn http_status(&self) -> StatusCode {
        match (self.kind(), self.protocol()) {
            (Some(c), _) => c.http,
            (None, Some(p)) => p.2,
            (None, None) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The HTTP+JSON binding's answer: the status, google.rpc.Status JSON and, for a
    /// refusal that passes, `Retry-After`.
    pub fn to_response(&self) -> axum::response::Response {
        use axum::response::IntoResponse;
        let mut response = (self.http_status(), axum::Json(self.to_status_json())).into_response();
        if let Some(s) = self.retry_after_s {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, s.into());
        }
        response
    }

    /// The gRPC code of the gRPC binding (and, by its name, of google.rpc.Status JSON).
    fn grpc_code(&self) -> Code {
        match (self.kind(), self.protocol()) {
            (Some(c), _) => c.grpc,
            (None, Some(p)) => p.3,
            (None, None) => Code::Internal,
        }
    }

    /// The gRPC binding's answer: the code, the message, and google.rpc.Status with the
    /// ErrorInfo in `grpc-status-details-bin`, which the SDKs' clients read the error from.
    pub fn to_grpc_status(&self) -> tonic::Status {
        use fleet_proto::google_rpc::{ErrorInfo, Status};
        use prost::Message as _;
        let (domain, reason) = (self.domain(), self.reason());
        let info = ErrorInfo {
            reason: reason.to_owned(),
            domain: domain.to_owned(),
            ..Default::default()
        };
        let details = Status {
            code: self.grpc_code() as i32,
            message: self.message.clone(),
            details: vec![prost_types::Any {
                type_url: "type.googleapis.com/google.rpc.ErrorInfo".to_owned(),
                value: info.encode_to_vec(),
            }],
        };
        let mut status = tonic::Status::with_details(
            self.grpc_code(),
            &self.message,
            details.encode_to_vec().into(),
        );
        if let Some(s) = self.retry_after_s
            && let Ok(value) = s.to_string().parse()
        {
            status.metadata_mut().insert("retry-after", value);
        }
        status
    }

    /// google.rpc.Status as JSON (the HTTP+JSON binding's error body).
    pub fn to_status_json(&self) -> Value {
        let status = grpc_name(self.grpc_code());
        json!({"error": {"code": self.http_status().as_u16(), "status": status, "message": self.message, "details": [self.error_info()]}})
    }
}

/// google.rpc.Code's name for a gRPC code.
fn grpc_name(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::NotFound => "NOT_FOUND",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Unavailable => "UNAVAILABLE",
        Code::Unauthenticated => "UNAUTHENTICATED",
        Code::PermissionDenied => "PERMISSION_DENIED",
        _ => "INTERNAL",
    }
}

impl From<crate::Error> for A2aError {
    fn from(e: crate::Error) -> Self {
        let retry_after_s = e.retry_after_s();
        let error = match e {
            crate::Error::UnknownTask(id) => Self::task_not_found(&id),
            crate::Error::InvalidArgument(m) => Self::invalid_params(m),
            other => Self::of(other.kind(), other.to_string()),
        };
        Self { retry_after_s, ..error }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_failures_and_protocol_errors_map_as_the_spec_says() {
        let cases = [
            (A2aError::task_not_found("t"), -32001, 404, "NOT_FOUND", "TASK_NOT_FOUND"),
            (
                A2aError::not_cancelable("t", "completed"),
                -32002,
                400,
                "FAILED_PRECONDITION",
                "TASK_NOT_CANCELABLE",
            ),
            (
                A2aError::content_type("file"),
                -32005,
                400,
                "INVALID_ARGUMENT",
                "CONTENT_TYPE_NOT_SUPPORTED",
            ),
            (
                A2aError::from(crate::Error::QueueFull { limit: 1 }),
                -32050,
                429,
                "RESOURCE_EXHAUSTED",
                "RESOURCE_EXHAUSTED",
            ),
            (
                A2aError::from(crate::Error::UnknownAgent("a".into())),
                -32051,
                404,
                "NOT_FOUND",
                "AGENT_NOT_FOUND",
            ),
            (
                A2aError::of(ErrorKind::Unavailable, "worker lost"),
                -32052,
                503,
                "UNAVAILABLE",
                "UNAVAILABLE",
            ),
            (
                A2aError::version_not_supported("9"),
                -32009,
                400,
                "FAILED_PRECONDITION",
                "VERSION_NOT_SUPPORTED",
            ),
            (A2aError::method_not_found("m"), -32601, 404, "NOT_FOUND", "METHOD_NOT_FOUND"),
            (A2aError::parse("p"), -32700, 400, "INVALID_ARGUMENT", "PARSE_ERROR"),
        ];
        for (e, code, http, status, reason) in cases {
            let body = e.to_status_json();
            assert_eq!(e.code, code, "{e:?}");
            assert_eq!(body["error"]["code"], http, "{e:?}");
            assert_eq!(body["error"]["status"], status, "{e:?}");
            assert_eq!(body["error"]["details"][0]["reason"], reason, "{e:?}");
        }
    }
}

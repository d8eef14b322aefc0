//! A2A errors: the codes the spec lists, as JSON-RPC errors and as google.rpc.Status JSON.
//!
//! Two failures the spec has no code for use codes of JSON-RPC's server-error range, with
//! an ErrorInfo of domain `agentfleet`: -32050 the cluster is out of room (HTTP 429,
//! RESOURCE_EXHAUSTED: retry later) and -32051 no such agent (HTTP 404, NOT_FOUND).

use axum::http::StatusCode;
use serde_json::{Value, json};

/// An error to answer an A2A request with.
#[derive(Debug, Clone, PartialEq)]
pub struct A2aError {
    pub code: i64,
    pub message: String,
}

impl A2aError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
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
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(-32602, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(-32603, message)
    }
    pub fn task_not_found(id: &str) -> Self {
        Self::new(-32001, format!("task {id:?} not found"))
    }
    pub fn not_cancelable(id: &str, state: &str) -> Self {
        Self::new(-32002, format!("task {id:?} is {state} and can no longer be canceled"))
    }
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(-32004, message)
    }
    pub fn content_type(message: impl Into<String>) -> Self {
        Self::new(-32005, message)
    }
    pub fn extended_card_not_configured() -> Self {
        Self::new(-32007, "this agent has no extended agent card")
    }
    pub fn resource_exhausted(message: impl Into<String>) -> Self {
        Self::new(-32050, message)
    }
    pub fn agent_not_found(message: impl Into<String>) -> Self {
        Self::new(-32051, message)
    }
    pub fn version_not_supported(version: &str) -> Self {
        Self::new(
            -32009,
            format!("A2A-Version {version:?} is not supported: use 1.0 (or no header for 0.3)"),
        )
    }

    /// The reason string of google.rpc.ErrorInfo.
    fn reason(&self) -> &'static str {
        match self.code {
            -32700 => "PARSE_ERROR",
            -32600 => "INVALID_REQUEST",
            -32601 => "METHOD_NOT_FOUND",
            -32602 => "INVALID_PARAMS",
            -32001 => "TASK_NOT_FOUND",
            -32002 => "TASK_NOT_CANCELABLE",
            -32003 => "PUSH_NOTIFICATION_NOT_SUPPORTED",
            -32004 => "UNSUPPORTED_OPERATION",
            -32005 => "CONTENT_TYPE_NOT_SUPPORTED",
            -32006 => "INVALID_AGENT_RESPONSE",
            -32007 => "EXTENDED_AGENT_CARD_NOT_CONFIGURED",
            -32008 => "EXTENSION_SUPPORT_REQUIRED",
            -32009 => "VERSION_NOT_SUPPORTED",
            -32050 => "RESOURCE_EXHAUSTED",
            -32051 => "AGENT_NOT_FOUND",
            _ => "INTERNAL",
        }
    }

    fn error_info(&self) -> Value {
        let domain = if self.code <= -32050 && self.code > -32100 {
            "agentfleet"
        } else {
            "a2a-protocol.org"
        };
        json!({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": self.reason(), "domain": domain})
    }

    /// The `error` member of a JSON-RPC response.
    pub fn to_jsonrpc(&self) -> Value {
        json!({"code": self.code, "message": self.message, "data": [self.error_info()]})
    }

    /// The HTTP status of the HTTP+JSON binding (and of JSON-RPC transport-level failures).
    pub fn http_status(&self) -> StatusCode {
        match self.code {
            -32700 | -32600 | -32602 | -32005 => StatusCode::BAD_REQUEST,
            -32601 | -32001 | -32051 => StatusCode::NOT_FOUND,
            -32050 => StatusCode::TOO_MANY_REQUESTS,
            -32002 | -32004 | -32003 | -32007 | -32008 | -32009 => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// google.rpc.Status as JSON (the HTTP+JSON binding's error body).
    pub fn to_status_json(&self) -> Value {
        let status = match self.http_status() {
            StatusCode::NOT_FOUND => "NOT_FOUND",
            StatusCode::BAD_REQUEST if self.code == -32002 || self.code == -32004 => {
                "FAILED_PRECONDITION"
            }
            StatusCode::BAD_REQUEST => "INVALID_ARGUMENT",
            StatusCode::TOO_MANY_REQUESTS => "RESOURCE_EXHAUSTED",
            _ => "INTERNAL",
        };
        json!({"error": {"code": self.http_status().as_u16(), "status": status, "message": self.message, "details": [self.error_info()]}})
    }
}

impl From<crate::Error> for A2aError {
    fn from(e: crate::Error) -> Self {
        match e {
            crate::Error::UnknownTask(id) => Self::task_not_found(&id),
            crate::Error::InvalidArgument(m) => Self::invalid_params(m),
            crate::Error::Unschedulable { .. } => Self::unsupported(e.to_string()),
            crate::Error::QueueFull { .. } | crate::Error::TooManyAgents { .. } => {
                Self::resource_exhausted(e.to_string())
            }
            crate::Error::UnknownAgent(_) => Self::agent_not_found(e.to_string()),
            other => Self::internal(other.to_string()),
        }
    }
}

//! Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the HTTP
//! status OpenAI gives each kind, so that OpenAI clients raise their usual exceptions
//! (`openai.BadRequestError`, `NotFoundError`, ...).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fleet_proto::ErrorKind;
use serde_json::{Value, json};

use crate::error::codes;

/// One rejection or failure of an OpenAI API request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `server_error`, ...
    pub kind: &'static str,
    /// The request field at fault, e.g. `max_tokens` or `messages[1].content`.
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds after which the request may succeed (`Retry-After`), where known.
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), kind, param: None, code: None, retry_after_s: None }
    }

    fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// A field with a wrong type or value (400).
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
            .with_param(param)
            .with_code("invalid_value")
    }

    /// A field this server does not implement (400).
    pub fn unsupported(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
            .with_param(param)
            .with_code("unsupported_parameter")
    }

    /// A body that is not a JSON object (400).
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
            .with_code("invalid_json")
    }

    /// A body not declared JSON (415): web pages' form and `text/plain` posts among them.
    pub fn not_json(headers: &axum::http::HeaderMap) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            crate::browsers::not_json_message(headers),
        )
        .with_code("unsupported_content_type")
    }

    /// A body over the limit (413).
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is over the limit of {limit} bytes: send less text"),
        )
        .with_code("request_too_large")
    }

    /// No agent and no model of that name (404).
    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!(
                "the model {model:?} does not exist: GET /v1/models lists the models and agents \
                 served"
            ),
        )
        .with_param("model")
        .with_code("model_not_found")
    }

    /// A missing or wrong API key (401).
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "missing or wrong API key: send Authorization: Bearer <the head's --token or --api-key>",
        )
        .with_code("invalid_api_key")
    }

    /// A path this API does not serve (404).
    pub fn unknown_url(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!(
                "unknown url {method} {path}: this server offers GET /v1/models, \
                 POST /v1/chat/completions, POST /v1/responses, POST /v1/completions and \
                 POST /v1/embeddings"
            ),
        )
        .with_code("unknown_url")
    }

    /// A known path with the wrong method (405).
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            format!("{path} does not take {method} requests"),
        )
        .with_code("method_not_allowed")
    }

    /// Something went wrong on our side (500).
    pub fn server(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// A failure of the cluster's kind, answered as the one table says (a request the model
    /// refused is a 400, a busy model a 429 that OpenAI clients retry, a lost worker a 503).
    pub fn of(kind: ErrorKind, message: impl Into<String>) -> Self {
        let c = codes(kind);
        Self {
            status: c.http,
            message: message.into(),
            kind: c.openai_type,
            param: None,
            code: c.openai_code,
            retry_after_s: None,
        }
    }

    /// The task ended with `Failed { error, kind }`.
    pub fn task_failed(kind: ErrorKind, error: &str) -> Self {
        Self::of(kind, error)
    }

    /// The JSON body (also the `data:` of an error chunk in a stream).
    pub fn to_json(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> Self {
        match &e {
            crate::Error::UnknownModel(model) | crate::Error::UnknownAgent(model) => {
                Self::model_not_found(model)
            }
            _ => Self { retry_after_s: e.retry_after_s(), ..Self::of(e.kind(), e.to_string()) },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.to_json())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(s) = self.retry_after_s {
            response.headers_mut().insert(header::RETRY_AFTER, s.into());
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_have_openais_shape() {
        let e = ApiError::model_not_found("nope").to_json();
        assert_eq!(e["error"]["type"], "invalid_request_error");
        assert_eq!(e["error"]["param"], "model");
        assert_eq!(e["error"]["code"], "model_not_found");
        assert!(e["error"]["message"].as_str().is_some_and(|m| m.contains("nope")));
        let e = ApiError::server("boom").to_json();
        assert_eq!(e["error"]["param"], Value::Null);
        assert_eq!(e["error"]["code"], Value::Null);
    }

    #[test]
    fn statuses_follow_the_cause() {
        let cases = [
            (ApiError::from(crate::Error::UnknownModel("m".into())), 404),
            (ApiError::from(crate::Error::QueueFull { limit: 1 }), 429),
            (ApiError::from(crate::Error::InvalidArgument("x".into())), 400),
            (ApiError::task_failed(ErrorKind::InvalidRequest, "the prompt is too long"), 400),
            (ApiError::task_failed(ErrorKind::Busy, "the model is busy"), 429),
            (ApiError::task_failed(ErrorKind::Unavailable, "worker w1 lost"), 503),
            (ApiError::task_failed(ErrorKind::Internal, "the model panicked"), 500),
            (ApiError::too_large(10), 413),
            (ApiError::unauthorized(), 401),
        ];
        for (e, status) in cases {
            assert_eq!(e.status.as_u16(), status, "{e:?}");
        }
    }
}

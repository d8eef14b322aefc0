//! The HTTP+JSON binding (A2A 1.0) under `/a2a/{agent}`: `/message:send`, `/message:stream`,
//! `/tasks`, `/tasks/{id}`, `/tasks/{id}:cancel`, `/tasks/{id}:subscribe` (GET or POST),
//! `/extendedAgentCard`. Errors are google.rpc.Status JSON.

use std::collections::HashMap;
use std::convert::Infallible;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde_json::{Value, json};

use super::errors::A2aError;
use super::{A2a, Caller, Version, ops};

/// The binding speaks A2A 1.0 only: a request that names another version in `A2A-Version`
/// gets VersionNotSupportedError (400) instead of being read as 1.0.
pub async fn require_v1(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    match super::jsonrpc::version(request.headers()) {
        Ok(Version::V1) => next.run(request).await,
        _ if !request.headers().contains_key("a2a-version") => next.run(request).await,
        Ok(Version::V03) => error(A2aError::version_not_supported("0.3")),
        Err(e) => error(e),
    }
}

fn error(e: A2aError) -> Response {
    e.to_response()
}

fn answer(outcome: Result<Value, A2aError>) -> Response {
    match outcome {
        Ok(v) => Json(v).into_response(),
        Err(e) => error(e),
    }
}

fn sse(items: impl Stream<Item = Value> + Send + 'static) -> Response {
    let events = items.map(|item| Ok::<_, Infallible>(Event::default().data(item.to_string())));
    Sse::new(events).keep_alive(super::jsonrpc::keep_alive()).into_response()
}

/// A body not declared JSON: ContentTypeNotSupportedError with HTTP 415 (the request's own
/// media type; a message part's unsupported type stays the binding's 400).
fn not_json(headers: &HeaderMap) -> Option<Response> {
    if crate::browsers::is_json(headers) {
        return None;
    }
    let e = A2aError::content_type(crate::browsers::not_json_message(headers));
    Some((StatusCode::UNSUPPORTED_MEDIA_TYPE, Json(e.to_status_json())).into_response())
}

/// The request's JSON object, within the size limit.
async fn json_body(a2a: &A2a, body: Body) -> Result<Value, A2aError> {
    let bytes = super::jsonrpc::read_body(a2a, body).await.map_err(|(e, _)| e)?;
    let mut value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| A2aError::parse(format!("the body is not JSON: {e}")))?;
    if value.is_object() {
        super::names::accept_proto_names(&mut value);
        Ok(value)
    } else {
        Err(A2aError::invalid_params("the body must be a JSON object"))
    }
}

pub async fn send(
    crate::auth::Caller(a2a): Caller,
    Path(agent): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Some(refused) = not_json(&headers) {
        return refused;
    }
    let outcome = async {
        let params = json_body(&a2a, body).await?;
        ops::send(&a2a, &agent, &params, Version::V1).await
    };
    answer(outcome.await)
}

pub async fn stream(
    crate::auth::Caller(a2a): Caller,
    Path(agent): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Some(refused) = not_json(&headers) {
        return refused;
    }
    let params = match json_body(&a2a, body).await {
        Ok(p) => p,
        Err(e) => return error(e),
    };
    match ops::stream(&a2a, &agent, &params, Version::V1).await {
        Ok(items) => sse(items),
        Err(e) => error(e),
    }
}

/// Query parameters as JSON values (numbers and booleans parsed), for the shared operations.
fn query_params(query: HashMap<String, String>) -> Value {
    let map = query
        .into_iter()
        .map(|(k, v)| {
            let value = v
                .parse::<u64>()
                .map(Value::from)
                .or_else(|_| v.parse::<bool>().map(Value::from))
                .unwrap_or(Value::from(v));
            (k, value)
        })
        .collect();
    Value::Object(map)
}

pub async fn list(
    crate::auth::Caller(a2a): Caller,
    Path(agent): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    answer(ops::list(&a2a, &agent, &query_params(query), Version::V1))
}

/// `GET /tasks/{id}` and `GET /tasks/{id}:subscribe`.
pub async fn get_or_subscribe(
    crate::auth::Caller(a2a): Caller,
    Path((agent, task)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    match task.split_once(':') {
        None => {
            let mut params = query_params(query);
            params["id"] = json!(task);
            answer(ops::get(&a2a, &agent, &params, Version::V1))
        }
        Some((id, "subscribe")) => subscribe(&a2a, &agent, id),
        Some((_, action)) => error(A2aError::method_not_found(format!(
            "unknown task action {action:?}: use GET :subscribe"
        ))),
    }
}

fn subscribe(a2a: &A2a, agent: &str, id: &str) -> Response {
    match ops::subscribe(a2a, agent, id, Version::V1) {
        Ok(items) => sse(items),
        Err(e) => error(e),
    }
}

/// `POST /tasks/{id}:cancel` and `POST /tasks/{id}:subscribe`.
pub async fn post_action(
    crate::auth::Caller(a2a): Caller,
    Path((agent, task)): Path<(String, String)>,
) -> Response {
    match task.split_once(':') {
        Some((id, "cancel")) => {
            answer(ops::cancel(&a2a, &agent, &json!({"id": id}), Version::V1).await)
        }
        Some((id, "subscribe")) => subscribe(&a2a, &agent, id),
        _ => error(A2aError::method_not_found(format!(
            "unknown task action in {task:?}: use :cancel or :subscribe"
        ))),
    }
}

pub async fn extended_card(
    crate::auth::Caller(a2a): Caller,
    Path(agent): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    answer(super::card::extended_card_json(&a2a, &agent, &headers))
}

pub async fn push_create(
    crate::auth::Caller(a2a): Caller,
    Path((agent, task)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Some(refused) = not_json(&headers) {
        return refused;
    }
    let outcome = async {
        let mut params = json_body(&a2a, body).await?;
        params["taskId"] = json!(task);
        ops::push_create(&a2a, &agent, &params, Version::V1).await
    };
    answer(outcome.await)
}

pub async fn push_list(
    crate::auth::Caller(a2a): Caller,
    Path((agent, task)): Path<(String, String)>,
) -> Response {
    answer(ops::push_list(&a2a, &agent, &json!({"taskId": task}), Version::V1))
}

pub async fn push_get(
    crate::auth::Caller(a2a): Caller,
    Path((agent, task, config)): Path<(String, String, String)>,
) -> Response {
    answer(ops::push_get(&a2a, &agent, &json!({"taskId": task, "id": config}), Version::V1))
}

pub async fn push_delete(
    crate::auth::Caller(a2a): Caller,
    Path((agent, task, config)): Path<(String, String, String)>,
) -> Response {
    let params = json!({"taskId": task, "id": config});
    answer(ops::push_delete(&a2a, &agent, &params, Version::V1).await)
}

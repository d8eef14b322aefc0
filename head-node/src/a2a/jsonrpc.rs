//! The JSON-RPC binding at `POST /a2a/{agent}`: A2A 1.0 methods, and their 0.3
//! counterparts for requests without an `A2A-Version` header. Streaming methods answer with
//! server-sent events, one JSON-RPC response per event.

use std::convert::Infallible;

use axum::Json;
use axum::body::Body;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde_json::{Value, json};

use super::errors::A2aError;
use super::{A2a, Caller, Version, ops};

/// Comment pings on quiet streams, well inside clients' read timeouts (a2a-sdk: 5 s).
pub fn keep_alive() -> KeepAlive {
    KeepAlive::new().interval(std::time::Duration::from_secs(2))
}

/// The protocol version a request asks for: `A2A-Version: 1.0` (or 1.0.x), or none for 0.3.
pub fn version(headers: &HeaderMap) -> Result<Version, A2aError> {
    let Some(raw) = headers.get("a2a-version") else { return Ok(Version::V03) };
    let raw = raw.to_str().unwrap_or("").trim();
    match raw {
        "" | "0.3" | "0.3.0" => Ok(Version::V03),
        v if v == "1" || v == "1.0" || v.starts_with("1.0.") => Ok(Version::V1),
        other => Err(A2aError::version_not_supported(other)),
    }
}

fn reply(id: &Value, outcome: Result<Value, A2aError>) -> Response {
    match outcome {
        Ok(result) => Json(json!({"jsonrpc": "2.0", "id": id, "result": result})).into_response(),
        Err(e) => error_reply(id, &e),
    }
}

/// JSON-RPC errors go with HTTP 200: clients read the body only then (a2a-sdk does).
fn error_reply(id: &Value, e: &A2aError) -> Response {
    Json(json!({"jsonrpc": "2.0", "id": id, "error": e.to_jsonrpc()})).into_response()
}

fn sse(id: Value, items: impl Stream<Item = Value> + Send + 'static) -> Response {
    let events = items.map(move |result| {
        let body = json!({"jsonrpc": "2.0", "id": id, "result": result});
        Ok::<_, Infallible>(Event::default().data(body.to_string()))
    });
    Sse::new(events).keep_alive(keep_alive()).into_response()
}

/// Reads the body with the configured limit; an oversized body is a JSON-RPC error (413).
pub async fn read_body(a2a: &A2a, body: Body) -> Result<axum::body::Bytes, (A2aError, StatusCode)> {
    axum::body::to_bytes(body, a2a.max_body_bytes).await.map_err(|_| {
        let e = A2aError::invalid_request(format!(
            "the request body is over the limit of {} bytes",
            a2a.max_body_bytes
        ));
        (e, StatusCode::PAYLOAD_TOO_LARGE)
    })
}

pub async fn handle(
    crate::auth::Caller(a2a): Caller,
    Path(agent): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let null = Value::Null;
    if !crate::browsers::is_json(&headers) {
        let e = A2aError::content_type(crate::browsers::not_json_message(&headers));
        let body = json!({"jsonrpc": "2.0", "id": null, "error": e.to_jsonrpc()});
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, Json(body)).into_response();
    }
    let body = match read_body(&a2a, body).await {
        Ok(b) => b,
        Err((e, _)) => return error_reply(&null, &e),
    };
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error_reply(&null, &A2aError::parse(format!("the body is not JSON: {e}")));
        }
    };
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    if !matches!(id, Value::Null | Value::String(_) | Value::Number(_)) {
        return error_reply(
            &Value::Null,
            &A2aError::invalid_request("id must be a string, a number or null"),
        );
    }
    if request.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return error_reply(&id, &A2aError::invalid_request("jsonrpc must be \"2.0\""));
    }
    let Some(method) = request.get("method").and_then(Value::as_str) else {
        return error_reply(&id, &A2aError::invalid_request("method is missing"));
    };
    let mut params = request.get("params").cloned().unwrap_or_else(|| json!({}));
    if !params.is_object() {
        return error_reply(&id, &A2aError::invalid_params("params must be an object"));
    }
    super::names::accept_proto_names(&mut params);
    let v = match version(&headers) {
        Ok(v) => v,
        Err(e) => return error_reply(&id, &e),
    };
    tracing::debug!(agent, method, version = ?v, "a2a json-rpc request");
    let op = match (v, method) {
        (Version::V1, "SendMessage") | (Version::V03, "message/send") => Op::Send,
        (Version::V1, "SendStreamingMessage") | (Version::V03, "message/stream") => Op::Stream,
        (Version::V1, "GetTask") | (Version::V03, "tasks/get") => Op::Get,
        (Version::V1, "ListTasks") | (Version::V03, "tasks/list") => Op::List,
        (Version::V1, "CancelTask") | (Version::V03, "tasks/cancel") => Op::Cancel,
        (Version::V1, "SubscribeToTask") | (Version::V03, "tasks/resubscribe") => Op::Subscribe,
        (Version::V1, "GetExtendedAgentCard")
        | (Version::V03, "agent/getAuthenticatedExtendedCard") => Op::ExtendedCard,
        (Version::V1, "CreateTaskPushNotificationConfig")
        | (Version::V03, "tasks/pushNotificationConfig/set") => Op::PushCreate,
        (Version::V1, "GetTaskPushNotificationConfig")
        | (Version::V03, "tasks/pushNotificationConfig/get") => Op::PushGet,
        (Version::V1, "ListTaskPushNotificationConfigs")
        | (Version::V03, "tasks/pushNotificationConfig/list") => Op::PushList,
        (Version::V1, "DeleteTaskPushNotificationConfig")
        | (Version::V03, "tasks/pushNotificationConfig/delete") => Op::PushDelete,
        _ => {
            let hint = match v {
                Version::V1 => {
                    "this request says A2A-Version 1.0: methods are SendMessage, GetTask, ..."
                }
                Version::V03 => {
                    "without an A2A-Version header this is A2A 0.3: methods are message/send, tasks/get, ... (send A2A-Version: 1.0 for SendMessage, ...)"
                }
            };
            return error_reply(
                &id,
                &A2aError::method_not_found(format!("unknown method {method:?}: {hint}")),
            );
        }
    };
    if let Err(e) = ops::check_tenant(&a2a, &params) {
        return error_reply(&id, &e);
    }
    let streaming = matches!(op, Op::Stream | Op::Subscribe);
    if !streaming && let Err(e) = ops::check_agent(&a2a, &agent) {
        return error_reply(&id, &e);
    }
    match op {
        Op::Send => reply(&id, ops::send(&a2a, &agent, &params, v).await),
        Op::Stream => match ops::stream(&a2a, &agent, &params, v).await {
            Ok(items) => sse(id, items),
            Err(e) => reply(&id, Err(e)),
        },
        Op::Get => reply(&id, ops::get(&a2a, &agent, &params, v)),
        Op::List => reply(&id, ops::list(&a2a, &agent, &params, v)),
        Op::Cancel => reply(&id, ops::cancel(&a2a, &agent, &params, v).await),
        Op::Subscribe => {
            let task = params.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
            match ops::subscribe(&a2a, &agent, &task, v) {
                Ok(items) => sse(id, items),
                Err(e) => reply(&id, Err(e)),
            }
        }
        Op::ExtendedCard => reply(&id, super::card::extended_card_json(&a2a, &agent, &headers)),
        Op::PushCreate => reply(&id, ops::push_create(&a2a, &agent, &params, v).await),
        Op::PushGet => reply(&id, ops::push_get(&a2a, &agent, &params, v)),
        Op::PushList => reply(&id, ops::push_list(&a2a, &agent, &params, v)),
        Op::PushDelete => reply(&id, ops::push_delete(&a2a, &agent, &params, v).await),
    }
}

enum Op {
    Send,
    Stream,
    Get,
    List,
    Cancel,
    Subscribe,
    ExtendedCard,
    PushCreate,
    PushGet,
    PushList,
    PushDelete,
}

//! The Vercel AI SDK door: `POST /ai-sdk/{agent}` takes what `useChat`'s default transport
//! sends and answers with the AI SDK's UI message stream (SSE, `x-vercel-ai-ui-message-stream:
//! v1`), so a React app on the AI SDK talks to any agent of the cluster by pointing its
//! transport's `api` at this URL.
//!
//! A thin adapter to the cluster's one task API ([`TaskRun`], followed by
//! [`crate::run::translated`] as the AG-UI door is): the request's UI messages become the
//! task's conversation ([`input`]), the task's events the stream's chunks ([`events`]).
//! The client sends the whole chat every time, so the head keeps no copy of it. A client
//! that goes away cancels the task. Questions and approvals are declined, as on the OpenAI
//! door (the stream has no way to ask); use AG-UI or A2A for humans in the loop.
//! `GET /ai-sdk/{agent}/{chat}/stream` (the transport's resume) answers 204: no stream is
//! kept to resume.

pub mod events;
pub mod input;

use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::{StreamExt, stream};

use crate::agui::{Agui, data, sse};
use crate::openai::errors::ApiError;
use crate::openai::{JsonBody, or_405};
use events::Translator;
use input::ChatInput;

/// The routes (sharing the AG-UI door's state: the same cluster, keys and body limit),
/// behind the API key when one is set.
pub fn router(door: Agui) -> Router {
    let routes = Router::new()
        .route("/ai-sdk/{agent}", or_405(post(chat)))
        .route("/ai-sdk/{agent}/{chat}/stream", or_405(get(no_stream_to_resume)));
    door.behind_auth(routes, "ai-sdk")
}

async fn no_stream_to_resume() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// `POST /ai-sdk/{agent}`: one answer of `agent` to the chat.
async fn chat(
    crate::auth::Caller(door): crate::auth::Caller<Agui>,
    Path(agent): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let chat = ChatInput::parse(&body)?;
    let run = door.start(agent, chat.input.clone(), chat.history.clone(), chat.tools.clone())?;
    tracing::debug!(task_id = %run.task_id, chat_id = %chat.chat_id, "AI SDK chat");
    let client_tools = chat
        .tools
        .iter()
        .filter_map(|t| t.pointer("/function/name").and_then(|n| n.as_str()).map(str::to_owned))
        .collect();
    let translator = Translator::new(run.task_id.as_str(), client_tools);
    let started = translator.started(chat.continues);
    let chunks = stream::iter(started)
        .chain(crate::run::translated(run, translator))
        .map(|chunk| data(&chunk))
        .chain(stream::once(async { Event::default().data("[DONE]") }));
    let headers = [("x-vercel-ai-ui-message-stream", "v1"), ("x-accel-buffering", "no")];
    Ok((headers, sse(chunks)).into_response())
}

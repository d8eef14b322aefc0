//! The OpenAI-compatible front door on the head's address: `GET /v1/models`,
//! `GET /v1/models/{id}`, `POST /v1/chat/completions`, `POST /v1/responses` and the legacy
//! `POST /v1/completions` (streaming and not) and `POST /v1/embeddings`.
//!
//! A request's `model` names a registered agent (its instructions, tools and sampling
//! defaults apply) or else a model some live worker serves, run by the hidden agent
//! `model:<id>` ([`Cluster::model_agent`]). The request becomes one task whose
//! [`fleet_proto::TaskOptions`] carry the conversation, the sampling overrides or the texts
//! to embed; [`crate::run::TaskRun`] follows its events and cancels it if the client goes away.
//!
//! - [`wire`]: request parsing and validation (every rejection names its field) and the
//!   response bodies;
//! - [`chat`], [`responses`], [`completions`], [`embeddings`], [`models`]: the endpoints;
//! - [`errors`]: OpenAI's error JSON with the matching HTTP status. Every rejection has that
//!   shape: the body is read by [`JsonBody`], never by axum's `Json` (whose rejections are
//!   plain text), and unknown `/v1` paths and wrong methods answer in it too.
//!
//! Not offered (400 with what to do instead): `n` over 8, logit bias, audio, images,
//! token ids as embeddings input, stored responses (`previous_response_id`), tools other
//! than functions.

pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod errors;
pub mod models;
pub mod responses;
pub mod wire;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any, get, post};
use http_body_util::BodyExt;
use serde_json::Value;

use crate::cluster::Cluster;
use errors::ApiError;

/// Shared by the OpenAI handlers.
#[derive(Clone, Debug)]
pub struct OpenAi {
    pub cluster: Arc<Cluster>,
    /// Client credentials, required as `Authorization: Bearer KEY` (or `X-API-Key`).
    pub clients: crate::auth::Principals,
    /// Who the request is from (a handler's state acts as the request's principal).
    pub who: crate::auth::Principal,
    /// The largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Unix seconds when the head started: the `created` of every model listed.
    pub started_at: u64,
}

impl crate::auth::ActsAs for OpenAi {
    fn acting_as(&self, who: crate::auth::Principal) -> Self {
        Self { who, ..self.clone() }
    }
}

/// The OpenAI state acting as the request's principal.
pub type Caller = crate::auth::Caller<OpenAi>;

impl OpenAi {
    /// The agent for a request that sends `tools`: one with tools of its own (other agents,
    /// MCP servers, its questions) takes none here, since this API shows every call the
    /// agent makes as one for the client to run. AG-UI and the AI SDK's chat, which show
    /// the agent's own calls apart, take both.
    pub fn agent_with_tools(&self, model: &str, tools: &[Value]) -> Result<String, ApiError> {
        let agent = self.agent_for(model)?;
        if tools.is_empty() {
            return Ok(agent);
        }
        let own = self
            .cluster
            .agent(&self.who, &agent)
            .is_some_and(|a| !a.spec.tools.is_empty() || !a.spec.mcp.is_empty() || a.spec.ask_user);
        if own {
            return Err(ApiError::invalid(
                "tools",
                format!(
                    "agent {agent} calls tools of its own; send tools to a model, or to an agent \
                     without tools (or use the AG-UI door, /agui/{agent}, which runs both)"
                ),
            ));
        }
        Ok(agent)
    }

    /// The agent that serves a request's `model`: the agent of that name, else the hidden
    /// agent of the model; 404 when neither exists.
    pub fn agent_for(&self, model: &str) -> Result<String, ApiError> {
        if self.cluster.agent(&self.who, model).is_some() {
            return Ok(model.to_owned());
        }
        // Every worker "has" every builtin: the list of real ones is the cluster's.
        let unknown_builtin = model.starts_with(crate::agents::BUILTIN_PREFIX)
            && !self.cluster.models().iter().any(|m| m.id == model);
        if unknown_builtin {
            return Err(ApiError::model_not_found(model));
        }
        Ok(self.cluster.model_agent(&self.who, model)?)
    }
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    fleet_proto::now_us() / 1_000_000
}

/// The routes, all behind the API key when one is set.
pub fn router(api: OpenAi) -> Router {
    Router::new()
        .route("/v1/models", or_405(get(models::list)))
        .route("/v1/models/{*id}", or_405(get(models::get)))
        .route("/v1/chat/completions", or_405(post(chat::completions)))
        .route("/v1/responses", or_405(post(responses::create)))
        .route("/v1/completions", or_405(post(completions::create)))
        .route("/v1/embeddings", or_405(post(embeddings::create)))
        .route("/v1/{*rest}", any(unknown_url))
        .route_layer(middleware::from_fn_with_state(
            crate::auth::HttpAuth {
                principals: api.clients.clone(),
                door: "openai",
                render: refusal,
            },
            crate::auth::http,
        ))
        .with_state(api)
}

/// `route`, answering the methods it does not take with a 405 in OpenAI's shape (also the
/// AG-UI and AI SDK doors').
pub(crate) fn or_405<S: Clone + Send + Sync + 'static>(route: MethodRouter<S>) -> MethodRouter<S> {
    route.fallback(|request: Request| async move {
        ApiError::method_not_allowed(request.method().as_str(), request.uri().path())
    })
}

async fn unknown_url(request: Request) -> ApiError {
    ApiError::unknown_url(request.method().as_str(), request.uri().path())
}

/// How the auth layer refuses an OpenAI request: OpenAI's error shape (also the AG-UI and
/// AI SDK doors').
pub(crate) fn refusal(e: crate::Error) -> Response {
    ApiError::from(e).into_response()
}

/// Bodies over the limit are still read (and dropped) up to this size before the 413 goes
/// out: a client still sending when the server answers and closes gets a reset connection
/// instead of the error.
const DRAIN_LIMIT_BYTES: usize = 64 << 20;

/// A door's state that bounds its request bodies.
pub trait BodyLimit {
    /// The largest request body accepted, in bytes.
    fn max_body_bytes(&self) -> usize;
}

impl BodyLimit for OpenAi {
    fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }
}

/// A JSON object request body, read up to the door's [`BodyLimit`]: not declared JSON is
/// a 415, too large a 413, anything but a JSON object a 400, all in OpenAI's shape (which
/// the AG-UI door answers in too, its protocol defining no error body of its own).
#[derive(Debug)]
pub struct JsonBody(pub Value);

impl<S: BodyLimit + Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, api: &S) -> Result<Self, ApiError> {
        if !crate::browsers::is_json(request.headers()) {
            return Err(ApiError::not_json(request.headers()));
        }
        let declared = request
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let bytes = read_body(request.into_body(), declared, api.max_body_bytes()).await?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::malformed(format!("the body is not valid JSON ({e}): send a JSON object"))
        })?;
        if !value.is_object() {
            return Err(ApiError::malformed("the body must be a JSON object"));
        }
        Ok(Self(value))
    }
}

/// The body if it is at most `limit` bytes (`declared`: its Content-Length, if given).
async fn read_body(
    mut body: Body,
    declared: Option<usize>,
    limit: usize,
) -> Result<Vec<u8>, ApiError> {
    if declared.is_some_and(|n| n > DRAIN_LIMIT_BYTES) {
        return Err(ApiError::too_large(limit));
    }
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0).min(limit));
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::malformed(format!("cannot read the request body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        seen = seen.saturating_add(data.len());
        if seen <= limit {
            bytes.extend_from_slice(&data);
        } else if seen > DRAIN_LIMIT_BYTES {
            break;
        }
    }
    if seen > limit {
        return Err(ApiError::too_large(limit));
    }
    Ok(bytes)
}

//! The A2A front door: every agent registered on the cluster is an A2A agent.
//!
//! - [`card`]: agent cards (the cluster's and each agent's), advertising A2A 1.0 (JSON-RPC
//!   and HTTP+JSON) and the 0.3 fields older clients read;
//! - [`jsonrpc`]: the JSON-RPC binding at `/a2a/{agent}`, 1.0 methods and their 0.3
//!   counterparts on the same endpoint (no `A2A-Version` header means 0.3);
//! - [`rest`]: the HTTP+JSON binding under `/a2a/{agent}/...`;
//! - [`grpc`]: the gRPC binding, `lf.a2a.v1.A2AService` on the head's port (the agent is
//!   the request's `tenant`);
//! - [`render`]: cluster tasks and events as A2A JSON, in either version's dialect;
//! - [`message`]: reading the client's messages;
//! - [`names`]: the `.proto` field names accepted beside the camelCase ones;
//! - [`errors`]: A2A error codes and their JSON-RPC and google.rpc.Status forms;
//! - [`ops`]: the operations both bindings share (send, get, list, cancel, subscribe, push
//!   configs);
//! - [`push`]: push-notification configs and their delivery to webhooks, with retries, to
//!   public addresses unless the operator allows others (`fleet_outbound`);
//! - [`signing`]: cards signed with the operator's key (JWS over the canonical card), and
//!   its public key at `/.well-known/jwks.json`.

pub mod card;
pub mod errors;
pub mod grpc;
pub mod jsonrpc;
pub mod message;
mod names;
pub mod ops;
pub mod push;
pub mod render;
pub mod rest;
pub mod signing;

use std::sync::Arc;

use axum::Router;
use axum::middleware;
use axum::response::Response;
use axum::routing::{get, post};

use crate::cluster::Cluster;

/// Shared by the A2A handlers.
#[derive(Clone, Debug)]
pub struct A2a {
    pub cluster: Arc<Cluster>,
    /// Client credentials, required as `Authorization: Bearer KEY` or `X-API-Key: KEY`.
    pub clients: crate::auth::Principals,
    /// Who the request is from (the operator in the router's state, and for webhooks'
    /// deliveries; a request's own principal in its handler: see [`Caller`]).
    pub who: crate::auth::Principal,
    /// The largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    pub webhooks: push::Webhooks,
    /// Whether the head serves TLS (cards then name `https://` URLs).
    pub tls: bool,
    /// Signs cards, when the operator gave a key.
    pub signer: Option<Arc<signing::CardSigner>>,
}

impl crate::auth::ActsAs for A2a {
    fn acting_as(&self, who: crate::auth::Principal) -> Self {
        Self { who, ..self.clone() }
    }
}

/// The A2A state acting as the request's principal.
pub type Caller = crate::auth::Caller<A2a>;

/// Which dialect a request speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V03,
    V1,
}

/// The A2A routes. Agent cards are public; everything else needs the API key when one is set.
pub fn router(a2a: A2a) -> Router {
    let rest = Router::new()
        .route("/a2a/{agent}/message:send", post(rest::send))
        .route("/a2a/{agent}/message:stream", post(rest::stream))
        .route("/a2a/{agent}/tasks", get(rest::list))
        .route("/a2a/{agent}/tasks/{task}", get(rest::get_or_subscribe).post(rest::post_action))
        .route(
            "/a2a/{agent}/tasks/{task}/pushNotificationConfigs",
            post(rest::push_create).get(rest::push_list),
        )
        .route(
            "/a2a/{agent}/tasks/{task}/pushNotificationConfigs/{config}",
            get(rest::push_get).delete(rest::push_delete),
        )
        .route("/a2a/{agent}/extendedAgentCard", get(rest::extended_card))
        .route_layer(middleware::from_fn(rest::require_v1));
    let protected = Router::new()
        .route("/a2a/{agent}", post(jsonrpc::handle))
        // `httpx.Client(base_url=".../a2a/NAME/")` posts to the trailing slash.
        .route("/a2a/{agent}/", post(jsonrpc::handle))
        .merge(rest)
        .route_layer(middleware::from_fn_with_state(
            crate::auth::HttpAuth { principals: a2a.clients.clone(), door: "a2a", render: refusal },
            crate::auth::http,
        ));
    Router::new()
        .route("/.well-known/agent-card.json", get(card::cluster_card))
        .route("/.well-known/jwks.json", get(card::jwks))
        .route("/a2a/{agent}/.well-known/agent-card.json", get(card::agent_card))
        .route("/a2a/{agent}/v0.3/.well-known/agent-card.json", get(card::agent_card_v03))
        .merge(protected)
        .with_state(a2a)
}

/// How the auth layer refuses an A2A request: google.rpc.Status JSON with the table's
/// status (before any JSON-RPC is read, for both bindings).
fn refusal(e: crate::Error) -> Response {
    errors::A2aError::from(e).to_response()
}

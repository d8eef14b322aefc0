//! The agentfleet head node: the cluster's control plane and front door.
//!
//! A request's path through the crate:
//! - [`server`] binds one listener for gRPC and HTTP (over TLS with `--tls-cert`, see
//!   `tls`) and runs the failure detector;
//! - [`auth`] resolves who the caller is (a [`auth::Principal`]: name, tenant, role) at
//!   every door, gRPC and HTTP, and every operation on the cluster is done as it; [`quotas`]
//!   holds each tenant to its own; `browsers` refuses web pages of other origins (and
//!   DNS-rebinding `Host` names) at every HTTP door;
//! - [`api`] is the gRPC edge: the client API (`FleetService`) and the workers' `Join`
//!   stream, converting wire types to domain types;
//! - [`cluster`] is the state machine behind one lock: it owns the [`agents`] registry, the
//!   [`workers`] registry, the [`tasks`] table with its per-task event logs, and the queue,
//!   and asks the [`scheduler`] where each task goes (and, for workers on the mesh, where
//!   an agent to call runs); [`topics`] relays the mesh's topics to clients; [`store`]
//!   keeps tasks, their event logs and registered agents across restarts (in a file, or
//!   in PostgreSQL shared by a leader and standbys: `leader`), with the [`conversations`]
//!   of contexts and the [`actor_state`] of Python agents' actors;
//! - [`http`] serves `/healthz`, `metrics` (Prometheus, `/metrics`) and mounts [`a2a`], the A2A front door (JSON-RPC and
//!   HTTP+JSON bindings, agent cards, SSE streams), [`openai`], the OpenAI-compatible
//!   API (`/v1/models`, `/v1/chat/completions`, `/v1/responses`, `/v1/completions`,
//!   `/v1/embeddings`), [`agui`], the AG-UI door (`/agui/{agent}`), [`aisdk`], the
//!   Vercel AI SDK's UI message stream (`/ai-sdk/{agent}`), `mcp`, the agents as
//!   an MCP server's tools (`/mcp`), and `inspector`, the live view of the cluster in a
//!   browser (`/ui`, its search boxes read by [`search`]); `run` follows one HTTP request's task for the OpenAI API, AG-UI, the AI SDK and MCP;
//! - [`config`] reads the TOML file (`[[agent]]` tables); [`cli`] is the `fleet-head`
//!   command line (also run by `python -m agentfleet head`).
//!
//! The head never runs models: it does not link candle.

pub mod a2a;
pub mod actor_state;
pub mod agents;
pub mod agui;
pub mod aisdk;
pub mod api;
pub mod auth;
pub mod browsers;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod conversations;
pub mod error;
pub mod http;
mod inspector;
mod leader;
mod mcp;
mod metrics;
pub mod openai;
pub mod placement_index;
pub mod quotas;
mod run;
pub mod scheduler;
pub mod search;
pub mod server;
pub mod store;
pub mod tasks;
mod tls;
pub mod tools;
pub mod topics;
mod traceparent;
pub mod workers;

pub use cluster::Cluster;
pub use config::HeadConfig;
pub use error::{Error, Result};
pub use server::{HeadHandle, spawn};
pub use tls::{MAX_HANDSHAKES, PEER_HANDSHAKES, PEER_HANDSHAKES_AT_ONCE};

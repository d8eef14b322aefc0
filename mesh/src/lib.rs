//! The worker-to-worker mesh of agentfleet: agent actors on different workers ask each other
//! and publish on topics directly, not through the head.
//!
//! A [`Mesh`] is one worker's node: a libp2p swarm (TCP, noise, yamux) whose behaviour
//! (`behaviour`) combines an allow list (only the peers the head listed may connect),
//! identify, request-response, gossipsub for topics and libp2p-stream. The swarm runs in one
//! task (`node`) that the cloneable handle (`mesh`) drives over a command channel.
//!
//! - `calls`: asks between nodes, on one long-lived stream per peer with numbered frames
//!   (the fast path: no stream opening and protocol negotiation per ask). The node still
//!   answers the request-response protocol (one stream per ask) that it used first.
//! - `messages`: the wire types ([`MeshRequest`], [`MeshResponse`], [`TopicMessage`]).
//! - [`codec`]: the one place that knows the wire format (bincode 2, length-prefixed frames).
//! - `reorder`: puts topic messages back in publishing order per publisher.
//! - `counters`, `error`: what went through the node ([`MeshCounters`]) and what can go
//!   wrong ([`MeshError`]).
//!
//! This crate depends on none of the other agentfleet crates; the worker converts at its edge.

mod activity;
pub mod codec;
mod counters;
mod error;
#[cfg(test)]
mod fuzz;
mod mesh;
mod messages;

mod behaviour;
mod calls;
mod node;
mod overlay;
mod reorder;

pub use counters::MeshCounters;
pub use error::{MeshError, Result};
pub use mesh::{IncomingCall, Mesh, MeshConfig, Peer};
pub use messages::{AgentCall, MeshRequest, MeshResponse, TopicMessage};
pub use node::MAX_PUBLISHERS;

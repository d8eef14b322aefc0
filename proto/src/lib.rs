//! The agentfleet wire format and the domain types the rest of the workspace works with.
//!
//! - [`pb`]: tonic/prost code generated from `proto/fleet/v1/*.proto` by `build.rs` (protox,
//!   no system `protoc`); [`a2a`] and [`google_rpc`]: A2A 1.0's gRPC binding, generated
//!   from `proto/a2a/v1/a2a.proto` the same way.
//! - [`types`]: domain types (agents, tasks, events, worker reports) used by the head, the
//!   worker and the client.
//! - [`task_state`]: the task state machine: states, and which event may happen in which.
//! - [`convert`]: the one place where wire types become domain types and back.
//! - [`local`]: the same protocol over in-memory pipes for clusters embedded in one process.
//! - [`endpoint`]: reaching a head over the network, in clear or over TLS.
//!
//! Only this crate knows the wire format; the other crates convert at their edges.

pub mod convert;
pub mod endpoint;
pub mod local;
pub mod task_state;
pub mod types;

/// Generated protobuf and gRPC code (package `fleet.v1`).
#[allow(clippy::all, missing_docs, unreachable_pub)]
pub mod pb {
    tonic::include_proto!("fleet.v1");
}

/// A2A 1.0's gRPC binding (package `lf.a2a.v1`): its messages, and the server and client
/// of `A2AService` (the head serves it; benchmarks call it), from `proto/a2a/v1/a2a.proto`.
#[allow(clippy::all, missing_docs, unreachable_pub)]
pub mod a2a {
    tonic::include_proto!("lf.a2a.v1");

    /// The encoded `FileDescriptorSet` of `a2a.proto` and its imports, for mapping its
    /// messages to JSON by reflection.
    pub const DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/a2a_descriptor_set.bin"));
}

/// google.rpc's `Status` and `ErrorInfo`: the error details gRPC clients of A2A read.
#[allow(clippy::all, missing_docs, unreachable_pub)]
pub mod google_rpc {
    tonic::include_proto!("google.rpc");
}

pub use convert::WireError;
pub use task_state::{IllegalTransition, TaskState};
pub use types::*;

/// The worker protocol this build speaks: what a worker's `Join` stream carries and means.
/// Bumped when a head needs a worker to understand something new; a head serves workers
/// from [`OLDEST_WORKER_PROTOCOL`] up to this one, so heads are upgraded before workers.
/// - 2: mesh peer lists come as changes after the first ([`MeshPeers::Changes`]).
pub const WORKER_PROTOCOL: u32 = 2;
/// The first worker protocol that takes mesh peer lists as changes.
pub const MESH_CHANGES_PROTOCOL: u32 = 2;
/// The oldest worker protocol a head of this build serves: 0 is the workers released before
/// the protocol was numbered (they send none), which speak what protocol 1 does.
pub const OLDEST_WORKER_PROTOCOL: u32 = 0;

/// The metadata key carrying the cluster token on every request.
pub const TOKEN_METADATA_KEY: &str = "authorization";

/// Formats a token the way [`TOKEN_METADATA_KEY`] carries it.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The tool agents with topics publish on them with; no agent may be called so.
pub const PUBLISH_TOOL: &str = "publish";
/// The built-in tool of agents with `ask_user`: asks the client a question.
pub const ASK_USER_TOOL: &str = "ask_user";
/// The model of an agent written in Python: `python:NAME` runs the Python agent `NAME` on
/// the workers that host it.
pub const PYTHON_PREFIX: &str = "python:";
/// A worker's `python_agents` entry for "whatever Python agents its process defines".
pub const ANY_PYTHON_AGENT: &str = "*";

/// What an agent called as a tool is asked: the call's `input` argument, or the arguments
/// as given (the head relaying a call and a worker calling over the mesh agree on this).
pub fn call_input(arguments: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(arguments) {
        Ok(serde_json::Value::Object(map)) => match map.get("input") {
            Some(serde_json::Value::String(s)) => s.clone(),
            _ => arguments.to_owned(),
        },
        Ok(serde_json::Value::String(s)) => s,
        _ => arguments.to_owned(),
    }
}

//! The wire types exchanged between workers: asks and their answers over request-response,
//! topic messages over gossipsub.
//!
//! They go through bincode (see [`crate::codec`]), which is not self-describing: no
//! `#[serde(untagged)]`, `flatten` or `skip_serializing_if` here, and adding a field or a
//! variant changes the format for every node.

use serde::{Deserialize, Serialize};

/// What one worker asks another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MeshRequest {
    /// Run a call on an agent hosted by the asked worker.
    Call(AgentCall),
    /// Liveness check, answered by the mesh itself with [`MeshResponse::Pong`].
    Ping,
}

/// A call from an agent on one worker to an agent on another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentCall {
    /// The agent to run.
    pub agent: String,
    /// The conversation the call belongs to (empty for none).
    pub context_id: String,
    /// The input message.
    pub input: String,
    /// The task on the calling side, for logs and cancellation.
    pub caller_task: String,
    /// W3C `traceparent` of the caller, or empty.
    pub trace: String,
    /// How long the caller is prepared to wait, in milliseconds.
    pub timeout_ms: u64,
    /// Calls between the task a client submitted and this one (the callee refuses to call
    /// further past a limit).
    pub depth: u32,
}

/// The answer to a [`MeshRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MeshResponse {
    /// The agent's output; `is_error` when the agent itself failed.
    Reply {
        /// The output text (or the error message).
        output: String,
        /// Whether `output` is an error.
        is_error: bool,
    },
    /// Answer to [`MeshRequest::Ping`].
    Pong,
    /// The asked node did not run the call (busy, unknown agent, dropped without answering).
    Refused {
        /// Why, for the caller's error message.
        reason: String,
    },
}

/// A message on a pub/sub topic as subscribers receive it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMessage {
    /// The topic it was published on.
    pub topic: String,
    /// Who published it on the publishing node (an agent or worker name).
    pub publisher: String,
    /// Per-(topic, publisher) sequence number on the publishing node, starting at 1.
    pub seq: u64,
    /// The payload.
    pub body: String,
    /// Peer id of the publishing node. Not sent: the receiving mesh fills it in from the
    /// gossipsub signature, so it cannot be forged.
    #[serde(skip)]
    pub node: String,
}

/// What a gossipsub message carries: the topic message plus the publishing node's
/// incarnation, so a restarted node (same peer id, seq back at 1) is told apart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct GossipFrame {
    /// Start time of the publishing mesh in nanoseconds since the unix epoch.
    pub(crate) epoch: u64,
    pub(crate) message: TopicMessage,
}

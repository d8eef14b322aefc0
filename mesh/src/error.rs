//! The one error type of this crate: what went wrong and what to do about it.

use std::time::Duration;

/// Errors from starting the mesh, asking peers and publishing on topics.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// The peer id is not in this node's allow list (or is not a peer id at all).
    #[error(
        "peer {0} is not in this node's peer list; it must be passed to set_peers (from the head's peer list) before it can be asked"
    )]
    UnknownPeer(String),

    /// The peer was removed from the allow list or its connection closed before it answered.
    #[error(
        "peer {0} left the mesh before answering (removed from the peer list or disconnected); the call may or may not have run there"
    )]
    PeerGone(String),

    /// No answer within the request timeout (including the wait for a connection).
    #[error(
        "no answer from peer {peer} within {after:?}; the peer may be down, unreachable or not listing this node yet, or the call is slower than the request timeout"
    )]
    Timeout {
        /// The peer that was asked.
        peer: String,
        /// How long the ask waited.
        after: Duration,
    },

    /// The peer failed to answer: it refused the stream or the stream broke.
    #[error("peer failed to answer: {0}")]
    Remote(String),

    /// A frame could not be encoded or decoded (too large or malformed).
    #[error("wire format error: {0}")]
    Codec(String),

    /// Published locally, but the node had no connected peer to pass it on to, so nothing
    /// went over the mesh. Local subscribers did get the message.
    #[error(
        "message {seq} on topic {topic} was delivered locally only: the node is connected to no other node of the mesh (or none had connected within the grace period)"
    )]
    NoSubscribers {
        /// The topic published on.
        topic: String,
        /// The sequence number the message was given.
        seq: u64,
    },

    /// gossipsub refused the message (queues full, signing failed, ...). Local subscribers did
    /// get the message.
    #[error("message {seq} on topic {topic} was delivered locally but not over the mesh: {reason}")]
    Publish {
        /// The topic published on.
        topic: String,
        /// The sequence number the message was given.
        seq: u64,
        /// What gossipsub said.
        reason: String,
    },

    /// This node already numbers the messages of [`MAX_PUBLISHERS`](crate::MAX_PUBLISHERS)
    /// (topic, publisher) pairs: a new pair is refused (known ones go on publishing).
    #[error(
        "this node already numbers the messages of {limit} (topic, publisher) pairs, the most it keeps: publish under a publisher name already used"
    )]
    TooManyPublishers {
        /// The limit.
        limit: usize,
    },

    /// A listen address in the configuration is not a valid multiaddr or cannot be bound.
    #[error("cannot listen on {addr}: {reason}; use a multiaddr such as /ip4/0.0.0.0/tcp/0")]
    Listen {
        /// The configured address.
        addr: String,
        /// Why it failed.
        reason: String,
    },

    /// The configuration cannot work (for example a frame limit of zero).
    #[error("invalid mesh configuration: {0}")]
    Config(String),

    /// The swarm could not be built (transport or behaviour setup failed).
    #[error("cannot start the mesh: {0}")]
    Start(String),

    /// The mesh was shut down (or its task ended); create a new one with `Mesh::start`.
    #[error("the mesh is shut down")]
    Stopped,
}

/// Result alias for this crate.
pub type Result<T, E = MeshError> = std::result::Result<T, E>;

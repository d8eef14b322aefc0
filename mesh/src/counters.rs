//! Counters of what went through the mesh, shared by the handle, the swarm task and the codec.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a node's counters (see [`crate::Mesh::counters`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeshCounters {
    /// Calls this node sent to peers (asks of [`crate::MeshRequest::Call`]).
    pub calls_sent: u64,
    /// Calls peers sent to this node.
    pub calls_received: u64,
    /// Calls peers sent to this node and then canceled before the answer.
    pub calls_canceled: u64,
    /// Messages this node published.
    pub messages_published: u64,
    /// Messages from other nodes accepted on subscribed topics.
    pub messages_received: u64,
    /// Frames from peers that were dropped as oversized or malformed.
    pub frames_rejected: u64,
    /// Topic messages a local subscriber missed because its queue was full.
    pub messages_dropped: u64,
    /// Sequence numbers given up on after a gap did not fill in time.
    pub gaps_skipped: u64,
    /// Connections this node closed because nobody used them (idle, or over its bound).
    pub connections_closed: u64,
}

/// The live atomics behind [`MeshCounters`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) calls_sent: AtomicU64,
    pub(crate) calls_received: AtomicU64,
    pub(crate) calls_canceled: AtomicU64,
    pub(crate) messages_published: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) frames_rejected: AtomicU64,
    pub(crate) messages_dropped: AtomicU64,
    pub(crate) gaps_skipped: AtomicU64,
    pub(crate) connections_closed: AtomicU64,
}

/// Adds `n` to a counter. Relaxed: the counters are statistics, nothing synchronises on them.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self) -> MeshCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MeshCounters {
            calls_sent: get(&self.calls_sent),
            calls_received: get(&self.calls_received),
            calls_canceled: get(&self.calls_canceled),
            messages_published: get(&self.messages_published),
            messages_received: get(&self.messages_received),
            frames_rejected: get(&self.frames_rejected),
            messages_dropped: get(&self.messages_dropped),
            gaps_skipped: get(&self.gaps_skipped),
            connections_closed: get(&self.connections_closed),
        }
    }
}

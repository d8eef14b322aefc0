//! Puts topic messages from other nodes back in publishing order.
//!
//! gossipsub neither orders nor guarantees delivery, so every message carries a sequence
//! number per (topic, publisher) on its node plus the node's incarnation (`epoch`). Each
//! (topic, node, publisher) stream delivers in sequence: early arrivals wait in a buffer until
//! the gap before them fills, and a gap that stays open longer than the gap timeout is given up
//! on with a warning. A stream starts at the first message seen from it (a subscriber that
//! joins late does not wait for history), and a newer epoch from the same node restarts it.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use crate::TopicMessage;

/// Early arrivals buffered per stream before the gap is given up on without waiting.
const MAX_BUFFERED: usize = 10_000;

/// A stream with nothing buffered and no message for this long is forgotten (its next
/// message starts it afresh).
const IDLE_STREAM: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct StreamKey {
    topic: String,
    node: String,
    publisher: String,
}

#[derive(Debug)]
struct Stream {
    epoch: u64,
    next: u64,
    buffered: BTreeMap<u64, TopicMessage>,
    /// When the current gap opened (set while `buffered` is not empty).
    gap_since: Option<Instant>,
    last_seen: Instant,
}

impl Stream {
    fn new(epoch: u64, next: u64, now: Instant) -> Self {
        Self { epoch, next, buffered: BTreeMap::new(), gap_since: None, last_seen: now }
    }

    /// Moves every message that is next in line to `out`.
    fn drain(&mut self, out: &mut Vec<TopicMessage>) {
        while let Some(entry) = self.buffered.first_entry() {
            if *entry.key() != self.next {
                break;
            }
            out.push(entry.remove());
            self.next += 1;
        }
    }

    /// Gives up on the current gap: jumps to the first buffered message. Returns how many
    /// sequence numbers were skipped.
    fn skip_gap(&mut self, out: &mut Vec<TopicMessage>) -> u64 {
        let Some(&first) = self.buffered.keys().next() else { return 0 };
        let skipped = first.saturating_sub(self.next);
        self.next = first;
        self.drain(out);
        skipped
    }
}

/// The ordering state of every (topic, node, publisher) stream this node receives.
#[derive(Debug)]
pub(crate) struct Reorder {
    gap_timeout: Duration,
    streams: HashMap<StreamKey, Stream>,
}

/// What [`Reorder::expire`] gave up on, for the counters.
#[derive(Debug, Default)]
pub(crate) struct Expired {
    pub(crate) skipped: u64,
}

impl Reorder {
    pub(crate) fn new(gap_timeout: Duration) -> Self {
        Self { gap_timeout, streams: HashMap::new() }
    }

    /// Takes a message (with `node` filled in) and appends to `out` whatever can now be
    /// delivered in order. Returns how many sequence numbers were skipped on the way.
    pub(crate) fn accept(
        &mut self,
        epoch: u64,
        message: TopicMessage,
        now: Instant,
        out: &mut Vec<TopicMessage>,
    ) -> u64 {
        let key = StreamKey {
            topic: message.topic.clone(),
            node: message.node.clone(),
            publisher: message.publisher.clone(),
        };
        let stream =
            self.streams.entry(key).or_insert_with(|| Stream::new(epoch, message.seq, now));
        stream.last_seen = now;
        let mut skipped = 0;
        if epoch < stream.epoch {
            tracing::debug!(topic = %message.topic, node = %message.node, "dropping a message from an earlier incarnation of its node");
            return 0;
        }
        if epoch > stream.epoch {
            // The node restarted: what is left of the old incarnation will not be completed.
            while !stream.buffered.is_empty() {
                skipped += stream.skip_gap(out);
            }
            *stream = Stream::new(epoch, message.seq, now);
        }
        if message.seq < stream.next {
            tracing::debug!(topic = %message.topic, node = %message.node, seq = message.seq, "dropping a duplicate or late message");
            return skipped;
        }
        let seq = message.seq;
        let was_in_gap = !stream.buffered.is_empty();
        let next_before = stream.next;
        stream.buffered.insert(seq, message);
        stream.drain(out);
        if stream.buffered.len() > MAX_BUFFERED {
            tracing::warn!(
                buffered = stream.buffered.len(),
                "too many messages waiting for a gap to fill; skipping it"
            );
            skipped += stream.skip_gap(out);
        }
        if stream.buffered.is_empty() {
            stream.gap_since = None;
        } else if !was_in_gap || stream.next != next_before {
            // A new gap opened (or the old one filled and the next one is now waited on).
            stream.gap_since = Some(now);
        }
        skipped
    }

    /// Gives up on gaps older than the gap timeout, appending what becomes deliverable to
    /// `out`, and forgets idle streams.
    pub(crate) fn expire(&mut self, now: Instant, out: &mut Vec<TopicMessage>) -> Expired {
        let mut expired = Expired::default();
        for (key, stream) in &mut self.streams {
            let Some(since) = stream.gap_since else { continue };
            if now.duration_since(since) < self.gap_timeout {
                continue;
            }
            let missing_from = stream.next;
            let skipped = stream.skip_gap(out);
            tracing::warn!(
                topic = %key.topic,
                node = %key.node,
                publisher = %key.publisher,
                missing_from,
                skipped,
                "messages did not arrive within the gap timeout; delivering what came after them"
            );
            expired.skipped += skipped;
            stream.gap_since = (!stream.buffered.is_empty()).then_some(now);
        }
        self.streams
            .retain(|_, s| !s.buffered.is_empty() || now.duration_since(s.last_seen) < IDLE_STREAM);
        expired
    }

    /// Forgets every stream of a topic nobody here subscribes to any more.
    pub(crate) fn forget_topic(&mut self, topic: &str) {
        self.streams.retain(|key, _| key.topic != topic);
    }

    /// Whether any stream is waiting on a gap (the node then checks expiry often).
    #[cfg(test)]
    fn waiting(&self) -> bool {
        self.streams.values().any(|s| s.gap_since.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(node: &str, seq: u64) -> TopicMessage {
        TopicMessage {
            topic: "t".into(),
            publisher: "p".into(),
            seq,
            body: format!("{seq}"),
            node: node.into(),
        }
    }

    fn seqs(out: &[TopicMessage]) -> Vec<u64> {
        out.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn buffers_until_the_gap_fills() {
        let now = Instant::now();
        let mut r = Reorder::new(Duration::from_secs(2));
        let mut out = Vec::new();
        r.accept(1, msg("a", 1), now, &mut out);
        r.accept(1, msg("a", 3), now, &mut out);
        r.accept(1, msg("a", 4), now, &mut out);
        assert_eq!(seqs(&out), [1]);
        assert!(r.waiting());
        r.accept(1, msg("a", 2), now, &mut out);
        assert_eq!(seqs(&out), [1, 2, 3, 4]);
        assert!(!r.waiting());
        // Duplicates are dropped.
        r.accept(1, msg("a", 3), now, &mut out);
        assert_eq!(out.len(), 4);
    }

    #[test]
    fn skips_a_gap_that_does_not_fill() {
        let now = Instant::now();
        let mut r = Reorder::new(Duration::from_secs(2));
        let mut out = Vec::new();
        r.accept(1, msg("a", 1), now, &mut out);
        r.accept(1, msg("a", 4), now, &mut out);
        assert_eq!(r.expire(now + Duration::from_secs(1), &mut out).skipped, 0);
        assert_eq!(seqs(&out), [1]);
        assert_eq!(r.expire(now + Duration::from_secs(3), &mut out).skipped, 2);
        assert_eq!(seqs(&out), [1, 4]);
        // The late ones are now duplicates.
        r.accept(1, msg("a", 2), now, &mut out);
        assert_eq!(seqs(&out), [1, 4]);
    }

    #[test]
    fn streams_are_per_node_and_restart_with_a_new_epoch() {
        let now = Instant::now();
        let mut r = Reorder::new(Duration::from_secs(2));
        let mut out = Vec::new();
        r.accept(1, msg("a", 5), now, &mut out);
        r.accept(1, msg("b", 1), now, &mut out);
        r.accept(1, msg("a", 6), now, &mut out);
        assert_eq!(seqs(&out), [5, 1, 6]);
        // Node a restarted: seq 1 again, with a newer epoch.
        r.accept(2, msg("a", 1), now, &mut out);
        assert_eq!(seqs(&out), [5, 1, 6, 1]);
        // A straggler from the old incarnation is dropped.
        r.accept(1, msg("a", 7), now, &mut out);
        assert_eq!(out.len(), 4);
    }
}

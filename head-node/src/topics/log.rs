//! The topics' logs. Every message published on a topic, by a client or an agent, gets the
//! topic's next offset and is stored with the head's other records; followers see it once
//! it is stored, so a follower resuming from an offset after a head restart finds the same
//! messages at the same offsets. Retention lets a topic's oldest messages go by count,
//! bytes and age; the offsets of those kept never change, and an offset is never used
//! twice (a topic's first kept offset is stored with its messages).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::TopicMessage;
use tokio::sync::{oneshot, watch};

use super::group::{Group, MemberId};
use crate::store::Journal;
use crate::{Error, Result};

/// What the head keeps of topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Messages kept per topic, the newest.
    pub messages: usize,
    /// Bytes of messages kept per topic.
    pub bytes: usize,
    /// How long a message is kept.
    pub age: Duration,
    /// Bytes of messages kept over all topics: past it, publishing is refused.
    pub max_bytes: usize,
    /// Topics the head keeps.
    pub max_topics: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            messages: 100_000,
            bytes: 64 << 20,
            age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 1 << 30,
            max_topics: 10_000,
        }
    }
}

impl Retention {
    /// Whether a topic holding `kept` messages of `bytes` lets its oldest one go.
    fn lets_go(&self, kept: usize, bytes: usize, oldest: &Message, now_us: u64) -> bool {
        let age_us = u64::try_from(self.age.as_micros()).unwrap_or(u64::MAX);
        kept > self.messages
            || bytes > self.bytes
            || now_us.saturating_sub(oldest.published_at_us) > age_us
    }
}

/// Consumer groups a topic may have.
pub const MAX_GROUPS: usize = 100;
/// Messages one publish may hold.
pub const MAX_BATCH: usize = 10_000;

/// A message in a topic's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub offset: u64,
    pub publisher: String,
    /// Its number among the publisher's on the mesh (0: not published on the mesh).
    pub seq: u64,
    pub body: String,
    pub published_at_us: u64,
}

impl Message {
    /// What it counts against retention's bytes.
    fn size(&self) -> usize {
        self.body.len() + self.publisher.len() + 32
    }

    pub fn to_wire(&self, topic: &str) -> TopicMessage {
        TopicMessage {
            topic: topic.to_owned(),
            publisher: self.publisher.clone(),
            seq: self.seq,
            body: self.body.clone(),
            worker_id: String::new(),
            offset: Some(self.offset),
            published_at_us: self.published_at_us,
        }
    }
}

/// A topic as the store holds it.
#[derive(Debug, Default)]
pub struct StoredTopic {
    pub name: String,
    /// The first offset kept (retention let the ones before go).
    pub first: u64,
    /// In offset order.
    pub messages: Vec<Message>,
    /// Consumer groups and where each resumes.
    pub groups: Vec<(String, u64)>,
}

struct Topic {
    /// Offsets `first..next`, oldest first.
    messages: VecDeque<Arc<Message>>,
    first: u64,
    next: u64,
    /// Messages before it are stored: followers see them.
    visible: u64,
    bytes: usize,
    groups: HashMap<String, Group>,
    /// Bumped when followers may have something new: messages stored, acknowledgements
    /// (room for more), a member leaving (its messages to hand out again).
    changed: watch::Sender<u64>,
}

impl Topic {
    fn new(first: u64) -> Self {
        Self {
            messages: VecDeque::new(),
            first,
            next: first,
            visible: first,
            bytes: 0,
            groups: HashMap::new(),
            changed: watch::Sender::new(0),
        }
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    fn get(&self, offset: u64) -> Option<&Arc<Message>> {
        let index = offset.checked_sub(self.first)?;
        self.messages.get(usize::try_from(index).ok()?)
    }
}

/// A publish appended to its topic, to wait for before answering.
pub struct Appended {
    pub topic: String,
    /// The first message's offset, and the offset after the last.
    pub offsets: (u64, u64),
    /// Resolves once stored (none: no store, visible already).
    pub stored: Option<oneshot::Receiver<()>>,
}

/// Every topic's log and consumer groups.
pub struct TopicLog {
    topics: HashMap<String, Topic>,
    retention: Retention,
    /// Bytes of messages over all topics.
    bytes: usize,
    journal: Option<Journal>,
    next_member: MemberId,
    last_sweep_us: u64,
}

impl std::fmt::Debug for TopicLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicLog")
            .field("topics", &self.topics.len())
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl TopicLog {
    pub fn new(retention: Retention) -> Self {
        Self {
            topics: HashMap::new(),
            retention,
            bytes: 0,
            journal: None,
            next_member: 0,
            last_sweep_us: 0,
        }
    }

    /// Takes the store's topics back, and stores what changes from now on.
    pub fn restore(&mut self, journal: Journal, stored: Vec<StoredTopic>) {
        for t in stored {
            let mut topic = Topic::new(t.first);
            for m in t.messages.into_iter().filter(|m| m.offset >= t.first) {
                if m.offset != topic.next {
                    // A gap the store should never hold: keep what follows it, from there.
                    topic.messages.clear();
                    self.bytes -= topic.bytes;
                    topic.bytes = 0;
                    topic.first = m.offset;
                }
                topic.next = m.offset + 1;
                topic.bytes += m.size();
                self.bytes += m.size();
                topic.messages.push_back(Arc::new(m));
            }
            topic.visible = topic.next;
            for (name, committed) in t.groups {
                topic.groups.insert(name, Group::new(committed));
            }
            self.topics.insert(t.name, topic);
        }
        self.journal = Some(journal);
    }

    /// Whether the store takes writes (none: always).
    fn check_store(&self) -> Result<()> {
        match &self.journal {
            Some(journal) => journal.check().map_err(Error::StoreUnavailable),
            None => Ok(()),
        }
    }

    fn topic(&mut self, name: &str) -> Result<&mut Topic> {
        if !self.topics.contains_key(name) && self.topics.len() >= self.retention.max_topics {
            return Err(Error::TopicsFull(format!(
                "the head keeps {} topics, its limit (topics.max_topics): use fewer topics",
                self.retention.max_topics
            )));
        }
        Ok(self.topics.entry(name.to_owned()).or_insert_with(|| Topic::new(0)))
    }

    /// Appends `bodies` to `topic` (each with its number on the mesh, 0 if none); lets the
    /// oldest messages go as retention says.
    pub fn append(
        &mut self,
        topic: &str,
        publisher: &str,
        bodies: Vec<(String, u64)>,
        now_us: u64,
    ) -> Result<Appended> {
        if bodies.len() > MAX_BATCH {
            return Err(Error::InvalidArgument(format!(
                "{} messages in one publish; at most {MAX_BATCH}",
                bodies.len()
            )));
        }
        self.check_store()?;
        let size: usize = bodies.iter().map(|(b, _)| b.len() + publisher.len() + 32).sum();
        // What the topic's own retention lets go to make room counts as free: a full topic
        // takes new messages however full the head is.
        let freeing = self
            .topics
            .get(topic)
            .map_or(0, |t| would_free(t, &self.retention, bodies.len(), size, now_us));
        if (self.bytes + size).saturating_sub(freeing) > self.retention.max_bytes {
            return Err(Error::TopicsFull(format!(
                "topics hold {} bytes and the head keeps at most {} (topics.max_bytes): \
                 retry later, or lower the topics' retention",
                self.bytes, self.retention.max_bytes
            )));
        }
        let retention = self.retention.clone();
        let t = self.topic(topic)?;
        let start = t.next;
        let mut appended = Vec::with_capacity(bodies.len());
        for (body, seq) in bodies {
            let message = Arc::new(Message {
                offset: t.next,
                publisher: publisher.to_owned(),
                seq,
                body,
                published_at_us: now_us,
            });
            t.next += 1;
            t.bytes += message.size();
            appended.push(message.clone());
            t.messages.push_back(message);
        }
        let end = t.next;
        let (trimmed, freed) = trim(t, &retention, now_us);
        self.bytes = self.bytes + size - freed;
        let stored = match &self.journal {
            Some(journal) => {
                journal.topic_messages(topic, appended);
                if let Some(first) = trimmed {
                    journal.topic_trim(topic, first);
                }
                Some(journal.stored())
            }
            None => {
                self.visible(topic, end);
                None
            }
        };
        Ok(Appended { topic: topic.to_owned(), offsets: (start, end), stored })
    }

    /// Messages before `end` are stored: followers may have them.
    pub fn visible(&mut self, topic: &str, end: u64) {
        if let Some(t) = self.topics.get_mut(topic)
            && end > t.visible
        {
            t.visible = end;
            t.bump();
        }
    }

    /// Lets messages older than retention's age go, over all topics (at most once a second).
    pub fn sweep(&mut self, now_us: u64) {
        if now_us.saturating_sub(self.last_sweep_us) < 1_000_000 {
            return;
        }
        self.last_sweep_us = now_us;
        let retention = self.retention.clone();
        let mut freed_all = 0;
        for (name, t) in &mut self.topics {
            let (trimmed, freed) = trim(t, &retention, now_us);
            freed_all += freed;
            if let (Some(first), Some(journal)) = (trimmed, &self.journal) {
                journal.topic_trim(name, first);
            }
        }
        self.bytes -= freed_all;
        // A topic only followed, never published on, goes with its last follower (it has
        // no offsets to keep); one that had messages keeps its place in the numbering.
        self.topics
            .retain(|_, t| t.next > 0 || !t.groups.is_empty() || t.changed.receiver_count() > 0);
    }

    /// Starts following `topic`: what changes it, and the offset to read from (`from`,
    /// clamped to what is kept; none: the next message published).
    pub fn follow(
        &mut self,
        topic: &str,
        from: Option<u64>,
    ) -> Result<(watch::Receiver<u64>, u64)> {
        let t = self.topic(topic)?;
        let at = from.map_or(t.next, |from| from.max(t.first));
        Ok((t.changed.subscribe(), at))
    }

    /// The offset the next message of `topic` will get (0 for a topic never published on).
    pub fn end(&self, topic: &str) -> u64 {
        self.topics.get(topic).map_or(0, |t| t.next)
    }

    /// Stored messages of `topic` from `at` (moved past those retention let go), at most
    /// `max`; where to read next.
    pub fn read(&self, topic: &str, at: u64, max: usize) -> (Vec<Arc<Message>>, u64) {
        let Some(t) = self.topics.get(topic) else { return (Vec::new(), at) };
        let mut at = at.max(t.first);
        let mut messages = Vec::new();
        while at < t.visible && messages.len() < max {
            match t.get(at) {
                Some(m) => messages.push(m.clone()),
                None => break,
            }
            at += 1;
        }
        (messages, at)
    }

    /// Joins `group` of `topic` (a new group starts at `from`, else at the oldest message
    /// kept): the member's id, what changes the topic, and the store's write of a new
    /// group to wait for.
    pub fn join(
        &mut self,
        topic: &str,
        group: &str,
        from: Option<u64>,
    ) -> Result<(MemberId, watch::Receiver<u64>, Option<oneshot::Receiver<()>>)> {
        self.check_store()?;
        self.next_member += 1;
        let member = self.next_member;
        let journal = self.journal.clone();
        let t = self.topic(topic)?;
        let mut stored = None;
        if !t.groups.contains_key(group) && t.groups.len() >= MAX_GROUPS {
            return Err(Error::InvalidArgument(format!(
                "topic {topic:?} has {MAX_GROUPS} consumer groups, the most it may have: reuse \
                 a group's name"
            )));
        }
        let (first, next) = (t.first, t.next);
        let g = t.groups.entry(group.to_owned()).or_insert_with(|| {
            let start = from.map_or(first, |from| from.clamp(first, next));
            if let Some(journal) = &journal {
                journal.topic_group(topic, group, start);
                stored = Some(journal.stored());
            }
            Group::new(start)
        });
        g.join(member);
        Ok((member, t.changed.subscribe(), stored))
    }

    /// The next messages for a member of a group, at most `max`.
    pub fn take(
        &mut self,
        topic: &str,
        group: &str,
        member: MemberId,
        max: usize,
    ) -> Vec<Arc<Message>> {
        let Some(t) = self.topics.get_mut(topic) else { return Vec::new() };
        let (first, visible) = (t.first, t.visible);
        let Some(g) = t.groups.get_mut(group) else { return Vec::new() };
        let offsets = g.take(member, first, visible, max);
        offsets.into_iter().filter_map(|o| t.get(o).cloned()).collect()
    }

    /// A member's stream ended: its unacknowledged messages go to the others.
    pub fn leave(&mut self, topic: &str, group: &str, member: MemberId) {
        if let Some(t) = self.topics.get_mut(topic)
            && let Some(g) = t.groups.get_mut(group)
            && g.leave(member)
        {
            t.bump();
        }
    }

    /// Acknowledges messages of `group`: the group's committed offset, and the store's
    /// write of it to wait for when it moved.
    pub fn ack(
        &mut self,
        topic: &str,
        group: &str,
        offsets: &[u64],
    ) -> Result<(u64, Option<oneshot::Receiver<()>>)> {
        self.check_store()?;
        let unknown = || {
            Error::InvalidArgument(format!(
                "topic {topic:?} has no consumer group {group:?}: follow it with that group first"
            ))
        };
        let t = self.topics.get_mut(topic).ok_or_else(unknown)?;
        let (first, end) = (t.first, t.visible);
        let g = t.groups.get_mut(group).ok_or_else(unknown)?;
        let moved = g.ack(offsets, first, end).map_err(Error::InvalidArgument)?;
        let committed = g.committed();
        t.bump();
        let stored = match (&self.journal, moved) {
            (Some(journal), true) => {
                journal.topic_group(topic, group, committed);
                Some(journal.stored())
            }
            _ => None,
        };
        Ok((committed, stored))
    }
}

/// The bytes [`trim`] would let go of `t`'s messages kept now, were `count` messages of
/// `size` bytes added.
fn would_free(t: &Topic, retention: &Retention, count: usize, size: usize, now_us: u64) -> usize {
    let (mut kept, mut bytes, mut freed) = (t.messages.len() + count, t.bytes + size, 0);
    for oldest in &t.messages {
        if !retention.lets_go(kept, bytes, oldest, now_us) {
            break;
        }
        kept -= 1;
        bytes -= oldest.size();
        freed += oldest.size();
    }
    freed
}

/// Lets `t`'s oldest messages go while it holds more than retention keeps; the new first
/// offset if any went, and the bytes freed.
fn trim(t: &mut Topic, retention: &Retention, now_us: u64) -> (Option<u64>, usize) {
    let mut freed = 0;
    let before = t.first;
    while let Some(oldest) = t.messages.front() {
        if !retention.lets_go(t.messages.len(), t.bytes, oldest, now_us) {
            break;
        }
        t.bytes -= oldest.size();
        freed += oldest.size();
        t.messages.pop_front();
        t.first += 1;
    }
    ((t.first != before).then_some(t.first), freed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bodies(n: usize) -> Vec<(String, u64)> {
        (0..n).map(|i| (format!("m{i}"), 0)).collect()
    }

    #[test]
    fn offsets_follow_each_other_and_retention_lets_the_oldest_go() {
        let retention = Retention { messages: 5, ..Default::default() };
        let mut log = TopicLog::new(retention);
        let a = log.append("t", "p", bodies(3), 1).expect("append");
        assert_eq!(a.offsets, (0, 3));
        let b = log.append("t", "p", bodies(4), 2).expect("append");
        assert_eq!(b.offsets, (3, 7));
        let (messages, next) = log.read("t", 0, 100);
        let offsets: Vec<u64> = messages.iter().map(|m| m.offset).collect();
        assert_eq!(offsets, [2, 3, 4, 5, 6], "the 5 newest, from the oldest kept");
        assert_eq!(next, 7);
        let (_, from) = log.follow("t", Some(0)).expect("follow");
        assert_eq!(from, 2, "an offset let go reads from the oldest kept");
        let (_, live) = log.follow("t", None).expect("follow");
        assert_eq!(live, 7, "no offset: from the next message");
    }

    #[test]
    fn a_topic_at_its_retention_takes_messages_however_full_the_head_is() {
        let size = Message {
            offset: 0,
            publisher: "p".into(),
            seq: 0,
            body: "m0".into(),
            published_at_us: 0,
        }
        .size();
        let retention = Retention { messages: 4, max_bytes: 4 * size, ..Default::default() };
        let mut log = TopicLog::new(retention);
        log.append("t", "p", bodies(4), 1).expect("room");
        assert!(log.append("u", "p", bodies(1), 1).is_err(), "the head is full");
        assert_eq!(log.append("t", "p", bodies(1), 1).expect("t frees its oldest").offsets, (4, 5));
        // A topic only followed goes with its follower; one published on stays.
        let (follower, _) = log.follow("v", None).expect("follow");
        log.sweep(2_000_000);
        assert!(log.topics.contains_key("v"));
        drop(follower);
        log.sweep(4_000_000);
        assert!(!log.topics.contains_key("v") && log.topics.contains_key("t"));
    }

    #[test]
    fn age_and_bytes_bound_what_is_kept() {
        let retention =
            Retention { age: Duration::from_secs(10), max_bytes: 1000, ..Default::default() };
        let mut log = TopicLog::new(retention);
        log.append("t", "p", bodies(2), 1_000_000).expect("append");
        log.sweep(20_000_000);
        assert!(log.read("t", 0, 10).0.is_empty(), "older than the age");
        let big = vec![("x".repeat(2000), 0)];
        let refused = log.append("t", "p", big, 20_000_000).err();
        assert!(matches!(refused, Some(Error::TopicsFull(_))), "{refused:?}");
        assert_eq!(log.append("t", "p", bodies(1), 20_000_000).expect("append").offsets, (2, 3));
    }
}

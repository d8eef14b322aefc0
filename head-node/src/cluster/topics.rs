//! Topics' logs as clients and workers use them: publishing (answered once stored),
//! following from an offset or in a consumer group, acknowledging. The log has a lock of
//! its own ([`crate::topics::TopicLog`]); nothing here holds it while taking the state's.

use std::sync::Arc;

use fleet_proto::{Command, PublishRequest, TopicMessage};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::{Cluster, calls::check_topic};
use crate::auth::Principal;
use crate::topics::TopicLog;
use crate::topics::group::MemberId;
use crate::topics::log::{Appended, MAX_BATCH};
use crate::{Error, Result};

/// The largest topic message.
pub const MAX_BODY: usize = 1 << 20;
/// Messages a follower reads from the log at a time.
const READ_BATCH: usize = 256;

impl Cluster {
    /// Publishes `bodies` on `topic` as `publisher` (empty: "client"), for a client: the
    /// first message's offset once all are stored.
    pub async fn publish_to_log(
        &self,
        who: &Principal,
        topic: &str,
        publisher: &str,
        bodies: Vec<String>,
    ) -> Result<u64> {
        who.may_act()?;
        check_name("topic", topic)?;
        check_topic(who, topic)?;
        let publisher = if publisher.is_empty() { "client" } else { publisher };
        check_name("publisher", publisher)?;
        if let Some(big) = bodies.iter().find(|b| b.len() > MAX_BODY) {
            return Err(Error::InvalidArgument(format!(
                "a message is {} bytes; a topic message is at most {MAX_BODY}",
                big.len()
            )));
        }
        let bodies = bodies.into_iter().map(|b| (b, 0)).collect();
        let appended =
            self.topic_log.lock().append(topic, publisher, bodies, fleet_proto::now_us())?;
        when_stored(&self.topic_log, appended).await
    }

    /// Stores a message an agent on `worker_id` published (and `more` after it) and
    /// answers the worker with its offset. The agent's topics were checked against its
    /// tenant when it was registered.
    pub fn store_agent_message(
        &self,
        worker_id: &str,
        connection: u64,
        request: PublishRequest,
        seq: u64,
        more: Vec<String>,
    ) {
        let reply_to = {
            let state = self.state.lock();
            let worker = state.workers.get(worker_id).filter(|w| w.connection == connection);
            match worker {
                Some(w) => w.commands.clone(),
                None => return,
            }
        };
        let request_id = request.request_id;
        let mut bodies = Vec::with_capacity(1 + more.len());
        bodies.push((request.body, seq));
        bodies.extend(more.into_iter().map(|b| (b, 0)));
        let appended = if bodies.iter().any(|(b, _)| b.len() > MAX_BODY) {
            Err(Error::InvalidArgument(format!("a topic message is at most {MAX_BODY} bytes")))
        } else {
            self.topic_log.lock().append(
                &request.topic,
                &request.publisher,
                bodies,
                fleet_proto::now_us(),
            )
        };
        let log = self.topic_log.clone();
        tokio::spawn(async move {
            let result = match appended {
                Ok(appended) => when_stored(&log, appended).await,
                Err(e) => Err(e),
            };
            let result = result.map_err(|e| (e.kind(), e.to_string()));
            reply_to.send(Command::TopicMessageStored { request_id, result });
        });
    }

    /// Lets topics' messages older than their retention go (at most once a second).
    pub fn sweep_topics(&self) {
        self.topic_log.lock().sweep(fleet_proto::now_us());
    }

    /// Follows `topic`'s log from `from` (none: the next message published), or as a member
    /// of consumer `group` (a new group starts at `from`, else at the oldest message kept).
    pub async fn follow_log(
        &self,
        who: &Principal,
        topic: &str,
        from: Option<u64>,
        group: Option<String>,
    ) -> Result<Follower> {
        check_name("topic", topic)?;
        check_topic(who, topic)?;
        let (mode, changed) = match group {
            None => {
                let (changed, at) = self.topic_log.lock().follow(topic, from)?;
                (Mode::All { at }, changed)
            }
            Some(group) => {
                // A member takes messages from the others: a reader may only watch.
                who.may_act()?;
                check_name("group", &group)?;
                let (member, changed, stored) = self.topic_log.lock().join(topic, &group, from)?;
                let follower = Follower {
                    log: self.topic_log.clone(),
                    topic: topic.to_owned(),
                    mode: Mode::Group { group, member },
                    changed,
                };
                if let Some(stored) = stored {
                    stored.await.map_err(|_| {
                        Error::StoreUnavailable(
                            "the store stopped before the group was stored".into(),
                        )
                    })?;
                }
                return Ok(follower);
            }
        };
        Ok(Follower { log: self.topic_log.clone(), topic: topic.to_owned(), mode, changed })
    }

    /// The offset the next message of `topic` will get.
    pub fn topic_end(&self, who: &Principal, topic: &str) -> Result<u64> {
        check_topic(who, topic)?;
        Ok(self.topic_log.lock().end(topic))
    }

    /// Acknowledges messages of consumer `group`: the group's committed offset once stored.
    pub async fn ack_topic(
        &self,
        who: &Principal,
        topic: &str,
        group: &str,
        offsets: &[u64],
    ) -> Result<u64> {
        who.may_act()?;
        check_name("topic", topic)?;
        check_topic(who, topic)?;
        if offsets.len() > MAX_BATCH {
            return Err(Error::InvalidArgument(format!(
                "{} offsets in one ack; at most {MAX_BATCH}",
                offsets.len()
            )));
        }
        let (committed, stored) = self.topic_log.lock().ack(topic, group, offsets)?;
        if let Some(stored) = stored {
            stored.await.map_err(|_| {
                Error::StoreUnavailable("the store stopped before the ack was stored".into())
            })?;
        }
        Ok(committed)
    }
}

/// Refuses a topic, group or publisher name the doors do not take.
fn check_name(what: &str, name: &str) -> Result<()> {
    if crate::agents::valid_name(name) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{what} must be 1 to 64 letters, digits, '-', '_' or '.' (not {name:?})"
        )))
    }
}

/// The first offset of `appended` once it is stored (and visible to followers).
async fn when_stored(log: &Mutex<TopicLog>, appended: Appended) -> Result<u64> {
    let Appended { topic, offsets: (first, end), stored } = appended;
    if let Some(stored) = stored {
        stored.await.map_err(|_| {
            Error::StoreUnavailable("the store stopped before the message was stored".into())
        })?;
        log.lock().visible(&topic, end);
    }
    Ok(first)
}

enum Mode {
    /// Every message, from this offset.
    All { at: u64 },
    /// A share of the messages, as a member of a consumer group.
    Group { group: String, member: MemberId },
}

/// A follower of a topic's log; a group member leaves its group when dropped (its
/// unacknowledged messages go to the others).
pub struct Follower {
    log: Arc<Mutex<TopicLog>>,
    topic: String,
    mode: Mode,
    changed: watch::Receiver<u64>,
}

impl Follower {
    /// The next messages, once there are some.
    pub async fn next(&mut self) -> Vec<TopicMessage> {
        loop {
            // Seen before reading: a change after the read wakes the wait below.
            self.changed.borrow_and_update();
            let messages = {
                let mut log = self.log.lock();
                match &mut self.mode {
                    Mode::All { at } => {
                        let (messages, next) = log.read(&self.topic, *at, READ_BATCH);
                        *at = next;
                        messages
                    }
                    Mode::Group { group, member } => {
                        log.take(&self.topic, group, *member, READ_BATCH)
                    }
                }
            };
            if !messages.is_empty() {
                return messages.iter().map(|m| m.to_wire(&self.topic)).collect();
            }
            if self.changed.changed().await.is_err() {
                // The topic's sender lives as long as the log: not before the head stops.
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if let Mode::Group { group, member } = &self.mode {
            self.log.lock().leave(&self.topic, group, *member);
        }
    }
}

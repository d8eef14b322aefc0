//! Topics of the workers' mesh as clients see them through the head. The head is not on
//! the mesh: to let clients follow a topic it asks one worker to forward that topic's
//! messages up its `Join` stream (`FollowTopic`), and fans them out to the followers; to
//! publish for a client it hands the message to a worker (`Publish`) and waits for its
//! answer. Each (topic, worker asked for) has one relay; a relay whose worker is lost moves
//! to another worker when the follower asked for none in particular, else it ends.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use fleet_proto::{Command, ErrorKind, PublishRequest, TopicMessage};
use tokio::sync::{broadcast, oneshot};
use tracing::{debug, warn};

use crate::workers::{WorkerEntry, WorkerRegistry};
use crate::{Error, Result};

/// Messages a follower may fall behind by before its stream is cut.
pub const FOLLOWER_BUFFER: usize = 4096;

/// A published message's number and the worker that published it, or what kind of failure
/// kept it from going out and why.
pub type PublishOutcome = std::result::Result<(u64, String), (ErrorKind, String)>;

struct Relay {
    worker_id: String,
    tx: broadcast::Sender<Arc<TopicMessage>>,
}

/// Client publishes waiting for their workers' answers at most; past it (after forgetting
/// those whose client stopped waiting) a publish is refused as busy.
pub const MAX_PUBLISHES_IN_FLIGHT: usize = 4096;

struct PendingPublish {
    worker_id: String,
    reply: oneshot::Sender<PublishOutcome>,
}

/// The head's relays of topics and the client publishes in flight.
#[derive(Default)]
pub struct TopicRelays {
    /// (topic, worker the follower asked for or "") -> the relay.
    relays: HashMap<(String, String), Relay>,
    publishes: HashMap<u64, PendingPublish>,
    next_publish: u64,
}

impl std::fmt::Debug for TopicRelays {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicRelays")
            .field("relays", &self.relays.len())
            .field("publishes", &self.publishes.len())
            .finish()
    }
}

fn on_mesh(w: &WorkerEntry) -> bool {
    w.registration.mesh.is_some()
}

impl TopicRelays {
    /// A receiver of `topic`'s messages through `worker` (or any worker on the mesh when
    /// empty).
    pub fn follow(
        &mut self,
        workers: &WorkerRegistry,
        topic: &str,
        worker: &str,
    ) -> Result<broadcast::Receiver<Arc<TopicMessage>>> {
        self.prune(workers);
        let key = (topic.to_owned(), worker.to_owned());
        if let Some(relay) = self.relays.get(&key) {
            return Ok(relay.tx.subscribe());
        }
        let worker_id = if worker.is_empty() {
            self.least_busy(workers).ok_or_else(no_mesh)?
        } else {
            match workers.get(worker) {
                Some(w) if on_mesh(w) => worker.to_owned(),
                Some(_) => {
                    return Err(Error::Mesh(format!("worker {worker:?} is not on the mesh")));
                }
                None => return Err(Error::InvalidArgument(format!("no worker {worker:?}"))),
            }
        };
        self.start_relay(workers, topic, &worker_id);
        let (tx, rx) = broadcast::channel(FOLLOWER_BUFFER);
        self.relays.insert(key, Relay { worker_id, tx });
        Ok(rx)
    }

    /// Hands messages a worker forwarded to the followers of their topics through it.
    pub fn deliver(&mut self, from: &str, messages: Vec<TopicMessage>) {
        for message in messages {
            let message = Arc::new(message);
            for ((topic, _), relay) in &self.relays {
                if relay.worker_id == from && *topic == message.topic {
                    // No receiver: the last follower left; pruned on the next follow.
                    let _ = relay.tx.send(message.clone());
                }
            }
        }
    }

    /// Moves or ends the relays of a lost worker; fails its publishes in flight.
    pub fn worker_lost(&mut self, workers: &WorkerRegistry, worker_id: &str) {
        let lost: Vec<_> = self
            .relays
            .iter()
            .filter(|(_, r)| r.worker_id == worker_id)
            .map(|(key, _)| key.clone())
            .collect();
        for key in lost {
            let moved = if key.1.is_empty() { self.least_busy(workers) } else { None };
            match moved {
                Some(to) => {
                    debug!(topic = %key.0, from = worker_id, to = %to, "topic relay moved");
                    self.start_relay(workers, &key.0, &to);
                    if let Some(relay) = self.relays.get_mut(&key) {
                        relay.worker_id = to;
                    }
                }
                // Dropping the sender ends the followers' streams.
                None => {
                    self.relays.remove(&key);
                }
            }
        }
        let failed: Vec<u64> = self
            .publishes
            .iter()
            .filter(|(_, p)| p.worker_id == worker_id)
            .map(|(id, _)| *id)
            .collect();
        for id in failed {
            if let Some(p) = self.publishes.remove(&id) {
                let reason = format!("worker {worker_id} was lost before it confirmed");
                let _ = p.reply.send(Err((ErrorKind::Unavailable, reason)));
            }
        }
    }

    /// Hands a client's message to a worker to publish; the receiver gets its answer. One
    /// publisher's messages go through the same worker while the mesh stays the same, so
    /// they keep their order.
    pub fn publish(
        &mut self,
        workers: &WorkerRegistry,
        topic: String,
        publisher: String,
        body: String,
    ) -> Result<oneshot::Receiver<PublishOutcome>> {
        let mut candidates: Vec<&WorkerEntry> = workers.iter().filter(|w| on_mesh(w)).collect();
        if candidates.is_empty() {
            return Err(no_mesh());
        }
        if self.publishes.len() >= MAX_PUBLISHES_IN_FLIGHT {
            self.publishes.retain(|_, p| !p.reply.is_closed());
            if self.publishes.len() >= MAX_PUBLISHES_IN_FLIGHT {
                return Err(Error::TooManyPublishes { limit: MAX_PUBLISHES_IN_FLIGHT });
            }
        }
        candidates.sort_by(|a, b| a.id.cmp(&b.id));
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        publisher.hash(&mut hasher);
        let worker = candidates[(hasher.finish() % candidates.len() as u64) as usize];
        self.next_publish += 1;
        let request_id = self.next_publish;
        let (reply, rx) = oneshot::channel();
        self.publishes.insert(request_id, PendingPublish { worker_id: worker.id.clone(), reply });
        let request = PublishRequest { request_id, topic, publisher, body };
        let _ = worker.commands.send(Command::Publish(request));
        Ok(rx)
    }

    /// A worker's answer to a `Publish`.
    pub fn published(
        &mut self,
        worker_id: &str,
        request_id: u64,
        result: std::result::Result<u64, (ErrorKind, String)>,
    ) {
        match self.publishes.remove(&request_id) {
            Some(p) if p.worker_id == worker_id => {
                let _ = p.reply.send(result.map(|seq| (seq, worker_id.to_owned())));
            }
            Some(p) => {
                warn!(worker_id, request_id, "a publish answer from the wrong worker dropped");
                self.publishes.insert(request_id, p);
            }
            None => debug!(request_id, "answer to a publish nobody waits for"),
        }
    }

    /// Drops relays nobody follows any more, and tells their workers to stop forwarding.
    fn prune(&mut self, workers: &WorkerRegistry) {
        let idle: Vec<_> = self
            .relays
            .iter()
            .filter(|(_, r)| r.tx.receiver_count() == 0)
            .map(|(key, _)| key.clone())
            .collect();
        for key in idle {
            if let Some(relay) = self.relays.remove(&key)
                && !self.forwards(&relay.worker_id, &key.0)
                && let Some(w) = workers.get(&relay.worker_id)
            {
                let _ = w.commands.send(Command::FollowTopic { topic: key.0, follow: false });
            }
        }
    }

    /// Asks `worker_id` to forward `topic` unless it already does for another relay.
    fn start_relay(&self, workers: &WorkerRegistry, topic: &str, worker_id: &str) {
        if self.forwards(worker_id, topic) {
            return;
        }
        if let Some(w) = workers.get(worker_id) {
            let _ = w.commands.send(Command::FollowTopic { topic: topic.to_owned(), follow: true });
        }
    }

    fn forwards(&self, worker_id: &str, topic: &str) -> bool {
        self.relays.iter().any(|((t, _), r)| t == topic && r.worker_id == worker_id)
    }

    /// The worker on the mesh relaying the fewest topics.
    fn least_busy(&self, workers: &WorkerRegistry) -> Option<String> {
        workers
            .iter()
            .filter(|w| on_mesh(w))
            .min_by_key(|w| {
                let relays = self.relays.values().filter(|r| r.worker_id == w.id).count();
                (relays, w.id.clone())
            })
            .map(|w| w.id.clone())
    }
}

fn no_mesh() -> Error {
    Error::Mesh("no worker on the mesh: start workers without --no-mesh".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workers::CommandSender;
    use fleet_proto::{MeshAddress, Registration};

    #[tokio::test]
    async fn publishes_in_flight_are_bounded_and_those_nobody_waits_for_are_forgotten() {
        let mut workers = WorkerRegistry::default();
        let registration = Registration {
            worker_id: "w".into(),
            slots: 1,
            mesh: Some(MeshAddress { peer_id: "p".into(), addrs: vec![] }),
            ..Default::default()
        };
        let (tx, _commands) = CommandSender::channel();
        let connection = workers.next_connection();
        let now = tokio::time::Instant::now();
        workers.insert(WorkerEntry::new(registration, connection, "p".into(), tx, now));
        let mut relays = TopicRelays::default();
        let publish = |relays: &mut TopicRelays| {
            relays.publish(&workers, "t".into(), "client".into(), "body".into())
        };
        let mut waiting: Vec<_> = (0..MAX_PUBLISHES_IN_FLIGHT)
            .map(|_| publish(&mut relays).expect("room for it"))
            .collect();
        let refused = publish(&mut relays).err();
        assert!(matches!(refused, Some(Error::TooManyPublishes { .. })), "{refused:?}");
        assert_eq!(refused.map(|e| e.kind()), Some(fleet_proto::ErrorKind::Busy));
        // A client that stops waiting gives its place back.
        waiting.pop();
        assert!(publish(&mut relays).is_ok());
    }
}

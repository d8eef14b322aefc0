//! What the Python classes talk to: a cluster over gRPC (`Remote`) or, for an embedded
//! cluster, the head's state in this process directly (`Local`: no encoding, no network, a
//! round trip is a handful of task hand-offs). Both give the same domain types and errors.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use fleet_client::{
    AgentSpec, Client, ClusterStatus, ManyUpdate, Submission, SubmitControl, TaskEvent, TaskStream,
    pb,
};
use fleet_head::Cluster;
use fleet_head::cluster::NewTask;
use fleet_head::tasks::{Delivery, Subscription};
use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

pub type Result<T> = std::result::Result<T, fleet_client::Error>;

/// A topic's messages as they come, in batches.
pub type TopicMessages =
    std::pin::Pin<Box<dyn Stream<Item = Result<Vec<fleet_client::TopicMessage>>> + Send>>;

/// Topic messages handed to Python at a time at most.
const FOLLOW_BATCH: usize = 256;

/// Batches of updates of a `map`: acks, rejections and events of all its tasks.
pub type ManyUpdates = std::pin::Pin<Box<dyn Stream<Item = Result<Vec<ManyUpdate>>> + Send>>;

#[derive(Clone)]
pub enum Backend {
    Remote(Client),
    Local(Arc<Cluster>),
}

fn local_error(e: fleet_head::Error) -> fleet_client::Error {
    fleet_client::Error::Status(e.into())
}

fn new_task(s: Submission) -> NewTask {
    NewTask {
        agent: s.agent,
        input: s.input,
        context_id: s.context_id,
        options: s.options.map(std::sync::Arc::new),
        traceparent: String::new(),
        idempotency_key: s.idempotency_key,
    }
}

/// The next delivery of a multiplexed local subscription (a `map`'s), or the error that
/// cut it off.
async fn next_delivery(sub: &mut Subscription) -> Option<Result<Delivery>> {
    match fleet_head::api::streams::next(sub).await {
        Some(d) => Some(Ok(d)),
        None if sub.was_cut() => {
            Some(Err(fleet_client::Error::Status(fleet_head::api::streams::cut_off())))
        }
        None => None,
    }
}

impl Backend {
    /// Submits one task; the stream yields its events and ends after the terminal one.
    pub async fn submit(&self, submission: Submission) -> Result<TaskStream> {
        let cluster = match self {
            Self::Remote(client) => return client.submit(submission).await,
            Self::Local(cluster) => cluster,
        };
        let follow =
            cluster.submit_and_follow(&operator(), new_task(submission)).map_err(local_error)?;
        let events = follow.into_stream().map(|e| Ok(TaskEvent::clone(&e)));
        Ok(Box::pin(events))
    }

    /// Submits every task (client refs are their indexes) and streams the updates of all.
    /// Submitting stops once `stop` is cancelled; `sent` counts the submissions handed over,
    /// so the caller knows how many acknowledgements are still due.
    pub async fn submit_many(
        &self,
        submissions: Vec<Submission>,
        stop: CancellationToken,
        sent: Arc<AtomicUsize>,
    ) -> Result<ManyUpdates> {
        let cluster = match self {
            Self::Remote(client) => {
                // The client rides through head restarts (see `fleet_client::resume`).
                let control = SubmitControl { stop, sent };
                let items = submissions.into_iter().enumerate().map(|(i, s)| (i as u64, s));
                return Ok(client.submit_all(items.collect(), control));
            }
            Self::Local(cluster) => cluster.clone(),
        };
        let (sub, subscription) = cluster.subscriber();
        tokio::spawn(async move {
            let items = submissions
                .into_iter()
                .enumerate()
                .take_while(|_| !stop.is_cancelled())
                .inspect(|_| {
                    sent.fetch_add(1, Ordering::SeqCst);
                })
                .map(|(i, s)| (i as u64, Ok(new_task(s))));
            cluster.submit_for(&operator(), &sub, items).await;
        });
        let updates = futures::stream::unfold(subscription, |mut sub| async move {
            let first = next_delivery(&mut sub).await?;
            let mut batch = Vec::new();
            let mut push = |d: Delivery| {
                let update = match d {
                    Delivery::Accepted { client_ref, task_id, existing } => {
                        ManyUpdate::Accepted { client_ref, task_id, existing }
                    }
                    Delivery::Rejected { client_ref, error } => ManyUpdate::Rejected {
                        client_ref,
                        code: error.code(),
                        message: error.to_string(),
                    },
                    Delivery::Event(e) => ManyUpdate::Event(TaskEvent::clone(&e)),
                    // This stream asks to follow no task (only a resumed remote batch does).
                    Delivery::WatchRefused { .. } => return,
                };
                batch.push(update);
            };
            match first {
                Ok(d) => push(d),
                Err(e) => return Some((Err(e), sub)),
            }
            while let Ok(d) = sub.rx.try_recv() {
                push(d);
            }
            Some((Ok(batch), sub))
        });
        Ok(Box::pin(updates))
    }

    pub async fn cancel(&self, task_id: &str) -> Result<()> {
        match self {
            Self::Remote(client) => client.cancel(task_id).await.map(drop),
            Self::Local(cluster) => {
                cluster.cancel(&operator(), task_id).map(drop).map_err(local_error)
            }
        }
    }

    /// Replies to the task's request `request_seq` (0: whatever it waits on).
    pub async fn reply(
        &self,
        task_id: &str,
        reply: fleet_client::Reply,
        request_seq: u64,
    ) -> Result<()> {
        match self {
            Self::Remote(client) => client.reply(task_id, "", &reply, request_seq).await.map(drop),
            Self::Local(cluster) => cluster
                .reply(&operator(), task_id, "", reply, request_seq)
                .map(drop)
                .map_err(local_error),
        }
    }

    pub async fn status(&self) -> Result<ClusterStatus> {
        match self {
            Self::Remote(client) => client.status().await,
            Self::Local(cluster) => Ok(cluster.status().into()),
        }
    }

    /// The conversations kept in `context_id` (every context when empty) with `agent`
    /// (every agent when empty), the most recently continued first.
    pub async fn list_conversations(
        &self,
        context_id: &str,
        agent: &str,
        limit: u32,
    ) -> Result<pb::ListConversationsResponse> {
        match self {
            Self::Remote(client) => client.list_conversations(context_id, agent, limit).await,
            Self::Local(cluster) => {
                let (listed, truncated) =
                    cluster.list_conversations(&operator(), context_id, agent, limit);
                let conversations = listed.into_iter().map(Into::into).collect();
                Ok(pb::ListConversationsResponse { conversations, truncated })
            }
        }
    }

    pub async fn get_conversation(
        &self,
        context_id: &str,
        agent: &str,
    ) -> Result<pb::Conversation> {
        match self {
            Self::Remote(client) => client.get_conversation(context_id, agent).await,
            Self::Local(cluster) => cluster
                .conversation(&operator(), context_id, agent)
                .map(Into::into)
                .map_err(local_error),
        }
    }

    pub async fn delete_conversation(&self, context_id: &str, agent: &str) -> Result<u32> {
        match self {
            Self::Remote(client) => client.delete_conversation(context_id, agent).await,
            Self::Local(cluster) => cluster
                .delete_conversations(&operator(), context_id, agent)
                .await
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
                .map_err(local_error),
        }
    }

    pub async fn actor_state(&self, agent: &str, context_id: &str) -> Result<pb::ActorStateInfo> {
        match self {
            Self::Remote(client) => client.get_actor_state(agent, context_id).await,
            Self::Local(cluster) => cluster
                .actor_state(&operator(), agent, context_id)
                .map(|a| a.info(true))
                .map_err(local_error),
        }
    }

    pub async fn list_actor_states(
        &self,
        agent: &str,
        context_id: &str,
        limit: u32,
    ) -> Result<Vec<pb::ActorStateInfo>> {
        match self {
            Self::Remote(client) => {
                Ok(client.list_actor_states(agent, context_id, limit).await?.actors)
            }
            Self::Local(cluster) => {
                let (listed, _) = cluster.list_actor_states(&operator(), agent, context_id, limit);
                Ok(listed.into_iter().map(|a| a.info(false)).collect())
            }
        }
    }

    /// Publishes `bodies` on `topic` in order; the first one's offset once stored.
    pub async fn publish(&self, topic: &str, publisher: &str, bodies: Vec<String>) -> Result<u64> {
        match self {
            Self::Remote(client) => {
                client.publish_many(topic, publisher, bodies).await.map(|r| r.offset)
            }
            Self::Local(cluster) => cluster
                .publish_to_log(&operator(), topic, publisher, bodies)
                .await
                .map_err(local_error),
        }
    }

    /// A topic's messages from `from_offset` (none: the next published), or a share of them
    /// as a member of consumer `group`.
    pub async fn follow(
        &self,
        topic: &str,
        from_offset: Option<u64>,
        group: Option<String>,
    ) -> Result<TopicMessages> {
        match self {
            Self::Remote(client) => {
                let stream =
                    client.follow_log(topic, from_offset, group.as_deref().unwrap_or("")).await?;
                // What has arrived, in one batch: Python pays a hand-off per batch, not per
                // message.
                let batches = stream.ready_chunks(FOLLOW_BATCH).flat_map(|chunk| {
                    // The messages before an error first, then the error.
                    let mut messages = Vec::with_capacity(chunk.len());
                    let mut failed = None;
                    for m in chunk {
                        match m {
                            Ok(m) => messages.push(fleet_client::TopicMessage::from(m)),
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                    let messages = (!messages.is_empty()).then_some(Ok(messages));
                    futures::stream::iter(messages.into_iter().chain(failed.map(Err)))
                });
                Ok(Box::pin(batches))
            }
            Self::Local(cluster) => {
                let follower = cluster
                    .follow_log(&operator(), topic, from_offset, group)
                    .await
                    .map_err(local_error)?;
                let stream = futures::stream::unfold(follower, |mut follower| async move {
                    let batch = follower.next().await;
                    Some((Ok(batch), follower))
                });
                Ok(Box::pin(stream))
            }
        }
    }

    /// Acknowledges messages of consumer `group`; the group's committed offset once stored.
    pub async fn ack(&self, topic: &str, group: &str, offsets: &[u64]) -> Result<u64> {
        match self {
            Self::Remote(client) => client.ack_topic(topic, group, offsets).await,
            Self::Local(cluster) => {
                cluster.ack_topic(&operator(), topic, group, offsets).await.map_err(local_error)
            }
        }
    }

    pub async fn register_agent(&self, spec: AgentSpec) -> Result<()> {
        match self {
            Self::Remote(client) => client.register_agent(spec).await.map(drop),
            Self::Local(cluster) => {
                cluster.register_agent(&operator(), spec).map(drop).map_err(local_error)
            }
        }
    }

    pub async fn has_agent(&self, name: &str) -> Result<bool> {
        Ok(match self {
            Self::Remote(client) => client
                .list_agents()
                .await?
                .iter()
                .any(|a| a.spec.as_ref().is_some_and(|s| s.name == name)),
            Self::Local(cluster) => cluster.agent(&operator(), name).is_some(),
        })
    }
}

/// An embedded cluster's caller: the process that started it owns it, as its operator.
fn operator() -> fleet_head::auth::Principal {
    fleet_head::auth::Principal::operator()
}

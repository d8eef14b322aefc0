//! Topics on this worker: a shared blackboard for a swarm. Agents with `topics` read the
//! latest messages on them in their prompt (from the mesh) and publish with their `publish`
//! tool: on the mesh for the others' prompts, and to the head, which stores it in the
//! topic's log ([`TopicStore`]) and answers with its offset. The head also follows topics
//! through a worker to show a worker's view to clients (`FollowTopic`, messages forwarded up
//! the `Join` stream) and publishes client messages on the mesh (`Publish`). One mesh
//! subscription per topic feeds all of these.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fleet_inference::ToolCall;
use fleet_mesh::{Mesh, MeshError};
use fleet_proto::{ErrorKind, PublishRequest, TopicMessage, WorkerUpdate};
use futures::FutureExt;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::tool::{CallContext, ToolCaller, ToolOutcome};

/// How long an agent's publish waits for the head to store its message.
const STORE_TIMEOUT: Duration = Duration::from_secs(30);

type StoreAnswer = oneshot::Sender<std::result::Result<u64, (ErrorKind, String)>>;

/// The head's topic logs as this worker's agents publish to them: each message goes up to
/// the head, and the agent hears its offset once the head has stored it.
pub struct TopicStore {
    to_head: mpsc::Sender<WorkerUpdate>,
    waiting: Mutex<HashMap<u64, StoreAnswer>>,
    next: AtomicU64,
}

impl std::fmt::Debug for TopicStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicStore").field("waiting", &self.waiting.lock().len()).finish()
    }
}

impl TopicStore {
    pub fn new(to_head: mpsc::Sender<WorkerUpdate>) -> Arc<Self> {
        Arc::new(Self { to_head, waiting: Mutex::default(), next: AtomicU64::new(1) })
    }

    /// Stores `bodies` in order in `topic`'s log as `publisher` (the first one's number on
    /// the mesh, 0 if none); the first one's offset, or why they are not known to be stored.
    pub async fn store(
        &self,
        topic: &str,
        publisher: &str,
        mut bodies: Vec<String>,
        seq: u64,
    ) -> std::result::Result<u64, String> {
        if bodies.is_empty() {
            return Err("nothing to publish".into());
        }
        let body = bodies.remove(0);
        let request_id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().insert(request_id, tx);
        let request = PublishRequest {
            request_id,
            topic: topic.to_owned(),
            publisher: publisher.to_owned(),
            body,
        };
        let update = WorkerUpdate::StoreTopicMessage { request, seq, more: bodies };
        // Sending waits while the way up is full (the head unreachable): within the bound too.
        let answered = tokio::time::timeout(STORE_TIMEOUT, async {
            if self.to_head.send(update).await.is_err() {
                return Err("the worker is stopping".to_owned());
            }
            match rx.await {
                Ok(answer) => answer.map_err(|(_, reason)| reason),
                Err(_) => Err("the connection to the head was lost before it confirmed: the \
                               message may or may not be stored"
                    .into()),
            }
        })
        .await;
        answered.unwrap_or_else(|_| {
            self.waiting.lock().remove(&request_id);
            Err(format!(
                "the head did not confirm within {} s: the message may or may not be stored",
                STORE_TIMEOUT.as_secs()
            ))
        })
    }

    /// The head's answer to a message sent up.
    pub fn stored(&self, request_id: u64, result: std::result::Result<u64, (ErrorKind, String)>) {
        if let Some(waiter) = self.waiting.lock().remove(&request_id) {
            let _ = waiter.send(result);
        }
    }

    /// The connection to the head broke: messages sent up on it get no answer.
    pub fn head_lost(&self) {
        self.waiting.lock().clear();
    }
}

/// Latest messages kept per topic for prompts.
const BOARD_DEPTH: usize = 32;
/// Latest messages (over all of an agent's topics) shown in its prompt.
pub const PROMPT_MESSAGES: usize = 20;

/// The worker's view of the mesh's topics.
pub struct TopicBoard {
    mesh: Mesh,
    /// The latest messages per topic this worker subscribes to, oldest first.
    recent: Arc<Mutex<HashMap<String, VecDeque<TopicMessage>>>>,
    subscribed: Mutex<HashSet<String>>,
    /// Topics whose messages go up to the head.
    forwarded: Arc<Mutex<HashSet<String>>>,
    to_head: mpsc::Sender<WorkerUpdate>,
}

impl std::fmt::Debug for TopicBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicBoard").field("subscribed", &self.subscribed.lock().len()).finish()
    }
}

impl TopicBoard {
    pub fn new(mesh: Mesh, to_head: mpsc::Sender<WorkerUpdate>) -> Arc<Self> {
        Arc::new(Self {
            mesh,
            recent: Arc::default(),
            subscribed: Mutex::default(),
            forwarded: Arc::default(),
            to_head,
        })
    }

    /// Subscribes this worker to `topic` (once): its messages fill the board and, while the
    /// head follows it here, go up to the head.
    pub fn subscribe(&self, topic: &str) {
        if !self.subscribed.lock().insert(topic.to_owned()) {
            return;
        }
        let (mesh, recent, forwarded, to_head) =
            (self.mesh.clone(), self.recent.clone(), self.forwarded.clone(), self.to_head.clone());
        let topic = topic.to_owned();
        tokio::spawn(async move {
            let mut messages = mesh.subscribe(&topic).await;
            while let Some(m) = messages.recv().await {
                let message = TopicMessage {
                    topic: m.topic,
                    publisher: m.publisher,
                    seq: m.seq,
                    body: m.body,
                    worker_id: String::new(),
                    offset: None,
                    published_at_us: 0,
                };
                {
                    let mut recent = recent.lock();
                    let board = recent.entry(topic.clone()).or_default();
                    if board.len() == BOARD_DEPTH {
                        board.pop_front();
                    }
                    board.push_back(message.clone());
                }
                if forwarded.lock().contains(&topic)
                    && to_head.send(WorkerUpdate::TopicMessages(vec![message])).await.is_err()
                {
                    debug!(topic, "topic message not forwarded: the worker is stopping");
                }
            }
            debug!(topic, "topic subscription ended");
        });
    }

    /// Starts or stops forwarding `topic` to the head.
    pub fn follow(&self, topic: &str, follow: bool) {
        if follow {
            self.subscribe(topic);
            self.forwarded.lock().insert(topic.to_owned());
        } else {
            self.forwarded.lock().remove(topic);
        }
    }

    /// Publishes as `publisher`; returns the message's number. A topic nobody else
    /// subscribes to yet still counts as published (this worker's subscribers got it).
    pub async fn publish(
        &self,
        topic: &str,
        publisher: &str,
        body: String,
    ) -> Result<u64, MeshError> {
        match self.mesh.publish(topic, publisher, body).await {
            Ok(seq) | Err(MeshError::NoSubscribers { seq, .. }) => Ok(seq),
            Err(e) => Err(e),
        }
    }

    /// Publishes a client's message for the head and sends the answer up.
    pub fn publish_for_head(self: &Arc<Self>, request: PublishRequest) {
        let board = self.clone();
        tokio::spawn(async move {
            let result = board.publish(&request.topic, &request.publisher, request.body).await;
            let result = result.map_err(|e| {
                warn!(topic = %request.topic, error = %e, "publish for a client failed");
                // The node numbering no more publishers is a bound it holds (the client
                // sees resource exhausted); anything else is the mesh failing.
                let kind = match e {
                    MeshError::TooManyPublishers { .. } => ErrorKind::Busy,
                    _ => ErrorKind::Unavailable,
                };
                (kind, e.to_string())
            });
            let answer = WorkerUpdate::Published { request_id: request.request_id, result };
            let _ = board.to_head.send(answer).await;
        });
    }

    /// The latest messages on `topics`, oldest first, at most [`PROMPT_MESSAGES`].
    pub fn recent(&self, topics: &[String]) -> Vec<TopicMessage> {
        let recent = self.recent.lock();
        let mut messages: Vec<TopicMessage> = topics
            .iter()
            .filter_map(|t| recent.get(t))
            .flat_map(|board| board.iter().cloned())
            .collect();
        // Boards keep arrival order per topic; across topics, keep the last ones.
        let skip = messages.len().saturating_sub(PROMPT_MESSAGES);
        messages.drain(..skip);
        messages
    }
}

/// The `publish` tool of an agent with topics: posts a message on one of them (on the
/// mesh, when the worker is on one, and in the topic's log on the head).
pub struct PublishTool {
    pub agent: String,
    pub topics: Vec<String>,
    /// `None` on a worker without a mesh.
    pub board: Option<Arc<TopicBoard>>,
    pub store: Arc<TopicStore>,
}

impl ToolCaller for PublishTool {
    fn definition(&self) -> serde_json::Value {
        serde_json::json!({
            "type": "function",
            "function": {
                "name": fleet_proto::PUBLISH_TOOL,
                "description": "Post a message on a topic that other agents of the swarm read.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "topic": { "type": "string", "enum": self.topics },
                        "message": { "type": "string", "description": "What to post." }
                    },
                    "required": ["topic", "message"]
                }
            }
        })
    }

    fn call(&self, call: &ToolCall, _context: CallContext) -> BoxFuture<'static, ToolOutcome> {
        let (board, store) = (self.board.clone(), self.store.clone());
        let args: serde_json::Value = serde_json::from_str(&call.arguments).unwrap_or_default();
        let topic = args.get("topic").and_then(|v| v.as_str()).map(str::to_owned);
        // One `message`, or (from code) a list of `messages` stored in one write.
        let messages: Option<Vec<String>> = match (args.get("message"), args.get("messages")) {
            (Some(serde_json::Value::String(m)), None) => Some(vec![m.clone()]),
            (None, Some(serde_json::Value::Array(list))) if !list.is_empty() => {
                list.iter().map(|v| v.as_str().map(str::to_owned)).collect::<Option<Vec<String>>>()
            }
            _ => None,
        };
        let (Some(topic), Some(messages)) = (topic, messages) else {
            let refused = ToolOutcome::error("publish needs {\"topic\": ..., \"message\": ...}");
            return futures::future::ready(refused).boxed();
        };
        if !self.topics.contains(&topic) {
            let known = self.topics.join(", ");
            let refused = ToolOutcome::error(format!(
                "topic {topic:?} is not one of this agent's topics ({known})"
            ));
            return futures::future::ready(refused).boxed();
        }
        let agent = self.agent.clone();
        async move {
            // The mesh first (the latest of a list only: prompts show the last few), so that
            // the log keeps a single message's number there; the mesh failing does not keep
            // them from the log, which is what followers read.
            let mut seq = 0;
            if let Some(board) = &board {
                let latest = messages.len().saturating_sub(BOARD_DEPTH);
                for message in &messages[latest..] {
                    match board.publish(&topic, &agent, message.clone()).await {
                        Ok(n) => seq = n,
                        Err(e) => warn!(topic, error = %e, "not published on the mesh"),
                    }
                }
                if messages.len() > 1 {
                    seq = 0;
                }
            }
            let count = messages.len() as u64;
            match store.store(&topic, &agent, messages, seq).await {
                Ok(offset) if count == 1 => {
                    ToolOutcome::ok(format!("published on {topic} at offset {offset}"))
                }
                Ok(offset) => ToolOutcome::ok(format!(
                    "published {count} messages on {topic} at offsets {offset} to {}",
                    offset + count - 1
                )),
                Err(e) => ToolOutcome::error(format!("not published on {topic}: {e}")),
            }
        }
        .boxed()
    }
}

/// The board's messages as a system message for the agent's prompt.
pub fn prompt_text(messages: &[TopicMessage]) -> String {
    let mut text = String::from("Latest messages on your topics (oldest first):");
    for m in messages {
        text.push_str(&format!("\n[{}] {}: {}", m.topic, m.publisher, m.body));
    }
    text
}

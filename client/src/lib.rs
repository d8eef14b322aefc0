//! fleet-client: the Rust SDK of agentfleet. Examples, benchmarks and the Python bindings
//! use it.
//!
//! ```no_run
//! # async fn demo() -> fleet_client::Result<()> {
//! use fleet_client::{AgentSpec, Client};
//! let client = Client::connect("http://127.0.0.1:7070").await?;
//! client.register_agent(AgentSpec { name: "echo".into(), model: "builtin:echo".into(), ..Default::default() }).await?;
//! let outcome = client.run("echo", "hello world").await?;
//! assert_eq!(outcome.output, "hello world");
//! # Ok(()) }
//! ```
//!
//! - [`Client`]: connect, register agents, submit one task (a stream of its events), submit
//!   many over one multiplexed stream ([`Client::submit_many`], [`Client::run_many`]),
//!   watch, cancel, query tasks and the cluster status.
//! - [`outcome`]: folding a task's events into its result.
//! - [`tool_host`]: functions this process hosts as tools for the cluster's agents.
//! - [`resume`]: task streams and batches ride through a head restart or a broken
//!   connection (reconnect with backoff, continue from the last event seen).

pub mod outcome;
pub mod resume;
pub mod tool_host;

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fleet_proto::TOKEN_METADATA_KEY;
use fleet_proto::pb::fleet_service_client::FleetServiceClient;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

pub use fleet_proto::local::LocalConnector;
pub use fleet_proto::pb;
pub use fleet_proto::pb::{ClusterStatusResponse as ClusterStatus, TaskInfo, WorkerStatus};
pub use fleet_proto::{
    ActorState, AgentSpec, Artifact, ArtifactPart, DEFAULT_MAX_RETRIES, ErrorKind, EventKind,
    FilePart, FunctionTool, McpServer, OutputFormat, Resources, Sampling, TaskEvent, TaskId,
    TaskOptions, TaskState, TopicMessage, Turn, Usage,
};
pub use fleet_proto::{PYTHON_PREFIX, Reply, ToolInvocation};
pub use outcome::TaskOutcome;
pub use resume::SubmitControl;
pub use tonic::{Code, Status};
pub use tool_host::{HostCommand, HostCommands, ToolHostSender};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to {url}: {}", fleet_proto::endpoint::describe(source))]
    Connect { url: String, source: tonic::transport::Error },
    /// A malformed address, or a CA file that cannot be used (see [`ConnectOptions::tls_ca`]).
    #[error(transparent)]
    Address(#[from] fleet_proto::endpoint::EndpointError),
    #[error("invalid token: it must be printable ASCII")]
    InvalidToken,
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    #[error("malformed message from the head: {0}")]
    Wire(#[from] fleet_proto::WireError),
    #[error("the head closed the stream before the task ended")]
    StreamEnded,
}

impl Error {
    /// What kind of failure this is: as the head said (its error-kind metadata), else as
    /// the gRPC code says (a head too old to say, a connection failure).
    pub fn kind(&self) -> ErrorKind {
        let said = match self {
            Self::Status(s) => s.metadata().get(fleet_proto::ERROR_KIND_METADATA),
            _ => None,
        };
        if let Some(kind) = said.and_then(|v| v.to_str().ok()).and_then(ErrorKind::from_name) {
            return kind;
        }
        match self.code() {
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => ErrorKind::InvalidRequest,
            tonic::Code::NotFound => ErrorKind::UnknownAgent,
            tonic::Code::ResourceExhausted => ErrorKind::Busy,
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => ErrorKind::Unavailable,
            tonic::Code::FailedPrecondition | tonic::Code::Unimplemented => ErrorKind::Unsupported,
            tonic::Code::Unauthenticated => ErrorKind::Unauthenticated,
            tonic::Code::PermissionDenied => ErrorKind::PermissionDenied,
            _ => ErrorKind::Internal,
        }
    }

    /// The gRPC code behind this error (`Unavailable` for connection failures).
    pub fn code(&self) -> tonic::Code {
        match self {
            Self::Status(s) => s.code(),
            Self::Connect { .. } | Self::StreamEnded => tonic::Code::Unavailable,
            Self::Address(_) | Self::InvalidToken => tonic::Code::InvalidArgument,
            Self::Wire(_) => tonic::Code::Internal,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub token: Option<String>,
    pub connect_timeout: Duration,
    /// For `https://` heads: trust only the CA certificates in this PEM file instead of the
    /// system's roots (a head with a private CA's or a self-signed certificate).
    pub tls_ca: Option<PathBuf>,
    /// After this long without hearing from the head the client pings it, and a ping
    /// unanswered for as long again breaks the connection: streams then resume on a new one
    /// (see [`resume`]) instead of waiting on a connection a network fault left half open.
    /// Busy connections never ping. `Duration::ZERO`: never.
    pub keep_alive: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            token: std::env::var("FLEET_TOKEN").ok().filter(|t| !t.is_empty()),
            connect_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(10),
            tls_ca: std::env::var_os("FLEET_TLS_CA").filter(|p| !p.is_empty()).map(PathBuf::from),
        }
    }
}

/// Adds the cluster token to every request.
#[derive(Debug, Clone)]
pub struct TokenInterceptor(Option<AsciiMetadataValue>);

impl tonic::service::Interceptor for TokenInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert(TOKEN_METADATA_KEY, token.clone());
        }
        Ok(request)
    }
}

type Api = FleetServiceClient<InterceptedService<Channel, TokenInterceptor>>;

/// A stream of one task's events.
pub type TaskStream = Pin<Box<dyn Stream<Item = Result<TaskEvent>> + Send>>;

/// Messages on a topic, as [`Client::follow_topic`] gives them.
pub type TopicStream = Pin<Box<dyn Stream<Item = Result<pb::TopicMessage>> + Send>>;

/// A task to submit.
#[derive(Debug, Clone, Default)]
pub struct Submission {
    pub agent: String,
    pub input: String,
    pub context_id: String,
    /// History, sampling overrides, or texts to embed instead of generating.
    pub options: Option<TaskOptions>,
    /// Makes sending it again safe: the head answers a submission whose key it has seen
    /// with the task the first one made. [`Client::submit`] and [`Client::submit_all`]
    /// give each submission a fresh key when this is empty, and send it again under that
    /// key when the connection broke before the head answered.
    pub idempotency_key: String,
}

impl Submission {
    pub fn new(agent: impl Into<String>, input: impl Into<String>) -> Self {
        Self { agent: agent.into(), input: input.into(), ..Default::default() }
    }

    /// A task that embeds `texts` with the agent's model (an embedding model).
    pub fn embed(agent: impl Into<String>, texts: Vec<String>) -> Self {
        let options = TaskOptions { embed: texts, ..Default::default() };
        Self { agent: agent.into(), options: Some(options), ..Default::default() }
    }
}

impl From<Submission> for pb::SubmitRequest {
    fn from(s: Submission) -> Self {
        Self {
            agent: s.agent,
            input: s.input,
            context_id: s.context_id,
            options: s.options.as_ref().map(Into::into),
            idempotency_key: s.idempotency_key,
        }
    }
}

/// What comes back on a [`Client::submit_many`] stream.
#[derive(Debug, Clone, PartialEq)]
pub enum ManyUpdate {
    /// `existing`: the submission's idempotency key was seen before, and this is the task
    /// it made then; its events do not follow on this stream (watch it from seq 1).
    /// [`Client::submit_all`] does that itself.
    Accepted {
        client_ref: u64,
        task_id: TaskId,
        existing: bool,
    },
    Rejected {
        client_ref: u64,
        code: tonic::Code,
        message: String,
    },
    Event(TaskEvent),
}

/// The sending half of a [`Client::submit_many`] stream. Drop it (or call
/// [`ManySender::finish`]) once everything is submitted; the updates end when every
/// accepted task has ended.
#[derive(Debug, Clone)]
pub struct ManySender {
    tx: mpsc::Sender<pb::SubmitManyRequest>,
}

impl ManySender {
    /// Sends a batch of (client_ref, submission) pairs in one message.
    pub async fn send(&self, items: impl IntoIterator<Item = (u64, Submission)>) -> Result<()> {
        let items = items
            .into_iter()
            .map(|(client_ref, s)| pb::SubmitItem { client_ref, request: Some(s.into()) })
            .collect();
        let request = pb::SubmitManyRequest { items, ..Default::default() };
        self.tx.send(request).await.map_err(|_| Error::StreamEnded)
    }

    /// Follows tasks on this stream too, each from its seq (1: from the start): their
    /// events come with the submitted tasks'. A task the head cannot follow (unknown, not
    /// the caller's, no longer retained) ends the updates with its error.
    pub async fn watch(&self, tasks: impl IntoIterator<Item = (String, u64)>) -> Result<()> {
        let watches = tasks
            .into_iter()
            .map(|(task_id, from_seq)| pb::WatchTaskRequest { task_id, from_seq })
            .collect();
        let request = pb::SubmitManyRequest { watches, ..Default::default() };
        self.tx.send(request).await.map_err(|_| Error::StreamEnded)
    }

    pub fn finish(self) {}
}

/// The receiving half of a [`Client::submit_many`] stream.
pub type ManyUpdates = Pin<Box<dyn Stream<Item = Result<Vec<ManyUpdate>>> + Send>>;

/// A connection to a head (or to whichever of several heads leads). Cheap to clone; clones
/// share the connection.
#[derive(Debug, Clone)]
pub struct Client {
    heads: Arc<Heads>,
}

/// The heads a client may use, in order, and the one it uses now.
#[derive(Debug)]
struct Heads {
    apis: Vec<Api>,
    current: AtomicUsize,
}

impl Client {
    /// Connects with the default options (token from `FLEET_TOKEN`, CA file from
    /// `FLEET_TLS_CA`).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, ConnectOptions::default()).await
    }

    /// Connects to the head at `url`, or to one of several heads given as URLs separated
    /// by commas (a leader and its standbys): calls go to the first that answers, and move
    /// on to the next when a head is unreachable or answers that it does not lead.
    pub async fn connect_with(url: &str, options: ConnectOptions) -> Result<Self> {
        let urls: Vec<&str> = url.split(',').map(str::trim).filter(|u| !u.is_empty()).collect();
        let mut endpoints = Vec::with_capacity(urls.len());
        for url in &urls {
            endpoints.push(endpoint(url, &options)?);
        }
        let Some((first, rest)) = endpoints.split_first() else {
            return Err(fleet_proto::endpoint::EndpointError::InvalidUrl(url.to_owned()).into());
        };
        if rest.is_empty() {
            let channel = first
                .connect()
                .await
                .map_err(|source| Error::Connect { url: url.to_owned(), source })?;
            return Self::over(vec![channel], 0, options);
        }
        // Several: connect to the first that can be reached; the others when needed.
        let mut channels: Vec<Option<Channel>> = vec![None; endpoints.len()];
        let mut error = None;
        for (i, endpoint) in endpoints.iter().enumerate() {
            match endpoint.connect().await {
                Ok(channel) => {
                    channels[i] = Some(channel);
                    break;
                }
                Err(source) => error = Some(Error::Connect { url: urls[i].to_owned(), source }),
            }
        }
        let Some(current) = channels.iter().position(Option::is_some) else {
            return Err(error.unwrap_or(Error::StreamEnded));
        };
        let channels = channels
            .into_iter()
            .zip(&endpoints)
            .map(|(channel, endpoint)| channel.unwrap_or_else(|| endpoint.connect_lazy()))
            .collect();
        Self::over(channels, current, options)
    }

    /// Connects to a head running in this process, over in-memory pipes.
    pub async fn connect_local(local: LocalConnector, options: ConnectOptions) -> Result<Self> {
        let url = "http://in-process.invalid";
        let local_options = ConnectOptions { tls_ca: None, ..options.clone() };
        let channel = endpoint(url, &local_options)?
            .connect_with_connector(local)
            .await
            .map_err(|source| Error::Connect { url: url.to_owned(), source })?;
        Self::over(vec![channel], 0, options)
    }

    fn over(channels: Vec<Channel>, current: usize, options: ConnectOptions) -> Result<Self> {
        let token: Option<AsciiMetadataValue> = match options.token {
            Some(t) => Some(fleet_proto::bearer(&t).parse().map_err(|_| Error::InvalidToken)?),
            None => None,
        };
        let apis = channels
            .into_iter()
            .map(|channel| {
                FleetServiceClient::with_interceptor(channel, TokenInterceptor(token.clone()))
                    .max_decoding_message_size(64 << 20)
            })
            .collect();
        Ok(Self { heads: Arc::new(Heads { apis, current: AtomicUsize::new(current) }) })
    }

    /// The head calls go to now (an index into the URLs given).
    pub(crate) fn head(&self) -> usize {
        self.heads.current.load(Ordering::Relaxed)
    }

    /// The API of the head calls go to now.
    fn api(&self) -> Api {
        self.heads.apis[self.head() % self.heads.apis.len()].clone()
    }

    /// A call to head `at` failed with `error`: with several heads, the next one is used
    /// when `at` may be gone or not the leader (unless another call moved on already).
    pub(crate) fn head_failed(&self, at: usize, error: &Error) {
        let n = self.heads.apis.len();
        if n > 1 && error.code() == tonic::Code::Unavailable {
            let _ = self.heads.current.compare_exchange(
                at,
                (at + 1) % n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// Runs a unary call on the current head; with several heads, tries each in turn while
    /// they answer `UNAVAILABLE` (unreachable, or a standby).
    ///
    /// A call that changes nothing twice (all but `submit` and `publish`) is also sent once more when the
    /// connection it went out on broke (`transport error`, e.g. a GOAWAY): the channel
    /// connects again for it.
    async fn unary<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: Fn(Api) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.unary_with(true, call).await
    }

    async fn unary_with<T, F, Fut>(&self, idempotent: bool, call: F) -> Result<T>
    where
        F: Fn(Api) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut tries = self.heads.apis.len();
        let mut reconnected = false;
        loop {
            let at = self.head();
            match call(self.api()).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => {
                    let broken = status.code() == tonic::Code::Unknown
                        && status.message().contains("transport error");
                    if idempotent && broken && !reconnected {
                        reconnected = true;
                        continue;
                    }
                    let error = Error::from(status);
                    tries -= 1;
                    if tries == 0 || error.code() != tonic::Code::Unavailable {
                        return Err(error);
                    }
                    self.head_failed(at, &error);
                }
            }
        }
    }

    pub async fn register_agent(&self, spec: AgentSpec) -> Result<pb::AgentInfo> {
        let request = pb::RegisterAgentRequest { spec: Some((&spec).into()) };
        self.unary(|mut api| {
            let request = request.clone();
            async move { api.register_agent(request).await }
        })
        .await
    }

    pub async fn list_agents(&self) -> Result<Vec<pb::AgentInfo>> {
        let list =
            self.unary(|mut api| async move { api.list_agents(pb::ListAgentsRequest {}).await });
        Ok(list.await?.agents)
    }

    /// Submits one task; the stream yields its events and ends after the terminal one. A
    /// broken connection after the first event is ridden through (see [`resume`]).
    pub async fn submit(&self, submission: Submission) -> Result<TaskStream> {
        let mut request = pb::SubmitRequest::from(submission);
        if request.idempotency_key.is_empty() {
            request.idempotency_key = uuid::Uuid::new_v4().to_string();
        }
        // Safe to send again: the key makes a second copy find the first one's task.
        let stream = self
            .unary(|mut api| {
                let request = request.clone();
                async move { api.submit(request).await }
            })
            .await?;
        Ok(resume::follow(self.clone(), event_stream(stream), None, 1))
    }

    /// Submits one task and waits for its outcome.
    pub async fn run(&self, agent: &str, input: &str) -> Result<TaskOutcome> {
        TaskOutcome::collect(self.submit(Submission::new(agent, input)).await?).await
    }

    /// Follows a task's events from `from_seq` (1 = from the start), through head restarts
    /// and broken connections (see [`resume`]).
    pub async fn watch(&self, task_id: &str, from_seq: u64) -> Result<TaskStream> {
        let first = self.watch_once(task_id, from_seq).await?;
        Ok(resume::follow(self.clone(), first, Some(task_id.to_owned()), from_seq))
    }

    /// One `WatchTask` call: the stream ends with the connection.
    pub(crate) async fn watch_once(&self, task_id: &str, from_seq: u64) -> Result<TaskStream> {
        let request = pb::WatchTaskRequest { task_id: task_id.to_owned(), from_seq };
        let stream = self
            .unary(|mut api| {
                let request = request.clone();
                async move { api.watch_task(request).await }
            })
            .await?;
        Ok(event_stream(stream))
    }

    pub async fn cancel(&self, task_id: &str) -> Result<TaskInfo> {
        let request = pb::CancelTaskRequest { task_id: task_id.to_owned() };
        self.unary(|mut api| {
            let request = request.clone();
            async move { api.cancel_task(request).await }
        })
        .await
    }

    /// Answers a task that is input-required (its agent asked a question, or a tool call
    /// waits for approval); `context_id`, when not empty, must be the task's; `request_seq`,
    /// when not 0, the seq of the `InputRequired` event answered. Never sent twice: a
    /// second copy could answer the task's next request.
    pub async fn reply(
        &self,
        task_id: &str,
        context_id: &str,
        reply: &Reply,
        request_seq: u64,
    ) -> Result<TaskInfo> {
        let request = pb::ReplyToTaskRequest::new(task_id, context_id, reply, request_seq);
        self.unary_with(false, |mut api| {
            let request = request.clone();
            async move { api.reply_to_task(request).await }
        })
        .await
    }

    pub async fn get_task(&self, task_id: &str) -> Result<TaskInfo> {
        let request = pb::GetTaskRequest { task_id: task_id.to_owned() };
        self.unary(|mut api| {
            let request = request.clone();
            async move { api.get_task(request).await }
        })
        .await
    }

    pub async fn list_tasks(&self, request: pb::ListTasksRequest) -> Result<pb::ListTasksResponse> {
        self.unary(|mut api| {
            let request = request.clone();
            async move { api.list_tasks(request).await }
        })
        .await
    }

    /// The conversations the head keeps for `context_id` (every context when empty) with
    /// `agent` (every agent when empty), the most recently continued first.
    pub async fn list_conversations(
        &self,
        context_id: &str,
        agent: &str,
        page_size: u32,
    ) -> Result<pb::ListConversationsResponse> {
        let request = pb::ListConversationsRequest {
            context_id: context_id.to_owned(),
            agent: agent.to_owned(),
            page_size,
        };
        self.unary(|mut api| {
            let request = request.clone();
            async move { api.list_conversations(request).await }
        })
        .await
    }

    /// The turns of `context_id`'s conversation with `agent`, oldest first.
    pub async fn get_conversation(
        &self,
        context_id: &str,
        agent: &str,
    ) -> Result<pb::Conversation> {
        let request = pb::GetConversationRequest {
            context_id: context_id.to_owned(),
            agent: agent.to_owned(),
        };
        self.unary(|mut api| {
            let request = request.clone();
            async move { api.get_conversation(request).await }
        })
        .await
    }

    /// Deletes `context_id`'s conversation with `agent` (with every agent when empty);
    /// how many there were. Safe to send again: deleting is idempotent.
    pub async fn delete_conversation(&self, context_id: &str, agent: &str) -> Result<u32> {
        let request = pb::DeleteConversationRequest {
            context_id: context_id.to_owned(),
            agent: agent.to_owned(),
        };
        let response = self
            .unary(|mut api| {
                let request = request.clone();
                async move { api.delete_conversation(request).await }
            })
            .await?;
        Ok(response.deleted)
    }

    /// The stored state of `agent`'s actor (in `context_id` for a per-context actor): the
    /// JSON in `state`, its version, when and by which task it was saved.
    pub async fn get_actor_state(
        &self,
        agent: &str,
        context_id: &str,
    ) -> Result<pb::ActorStateInfo> {
        let request =
            pb::GetActorStateRequest { agent: agent.to_owned(), context_id: context_id.to_owned() };
        self.unary(|mut api| {
            let request = request.clone();
            async move { api.get_actor_state(request).await }
        })
        .await
    }

    /// The stored actor states (of `agent`, in `context_id`, when not empty), the most
    /// recently saved first, without the states themselves.
    pub async fn list_actor_states(
        &self,
        agent: &str,
        context_id: &str,
        limit: u32,
    ) -> Result<pb::ListActorStatesResponse> {
        let request = pb::ListActorStatesRequest {
            agent: agent.to_owned(),
            context_id: context_id.to_owned(),
            page_size: limit,
        };
        self.unary(|mut api| {
            let request = request.clone();
            async move { api.list_actor_states(request).await }
        })
        .await
    }

    pub async fn status(&self) -> Result<ClusterStatus> {
        self.unary(|mut api| async move { api.cluster_status(pb::ClusterStatusRequest {}).await })
            .await
    }

    /// Publishes `body` on a topic as `publisher` (empty = "client"); answered with its
    /// offset in the topic's log once the head has stored it.
    pub async fn publish(
        &self,
        topic: &str,
        publisher: &str,
        body: &str,
    ) -> Result<pb::PublishResponse> {
        self.publish_many(topic, publisher, vec![body.to_owned()]).await
    }

    /// Publishes `bodies` in order (at most 10,000) in one store write; the response holds
    /// the first one's offset (the others follow it).
    pub async fn publish_many(
        &self,
        topic: &str,
        publisher: &str,
        mut bodies: Vec<String>,
    ) -> Result<pb::PublishResponse> {
        if bodies.is_empty() {
            return Err(Error::Status(tonic::Status::invalid_argument("nothing to publish")));
        }
        let body = bodies.remove(0);
        let request = pb::PublishRequest {
            topic: topic.to_owned(),
            publisher: publisher.to_owned(),
            body,
            more_bodies: bodies,
        };
        // Not sent twice: a publish that reached the head but whose answer was lost would
        // be stored twice.
        self.unary_with(false, |mut api| {
            let request = request.clone();
            async move { api.publish(request).await }
        })
        .await
    }

    /// A topic's messages from `from_offset` (none: from the next one published), live; in
    /// consumer `group` (non-empty), a share of them to acknowledge with
    /// [`Client::ack_topic`] (a new group starts at `from_offset`, else the oldest kept).
    pub async fn follow_log(
        &self,
        topic: &str,
        from_offset: Option<u64>,
        group: &str,
    ) -> Result<TopicStream> {
        self.follow(pb::FollowTopicRequest {
            topic: topic.to_owned(),
            from_offset,
            group: group.to_owned(),
            ..Default::default()
        })
        .await
    }

    /// Acknowledges messages of consumer `group`; returns the group's committed offset
    /// (every message before it acknowledged) once stored.
    pub async fn ack_topic(&self, topic: &str, group: &str, offsets: &[u64]) -> Result<u64> {
        let request = pb::AckTopicRequest {
            topic: topic.to_owned(),
            group: group.to_owned(),
            offsets: offsets.to_vec(),
        };
        let response = self
            .unary(|mut api| {
                let request = request.clone();
                async move { api.ack_topic(request).await }
            })
            .await?;
        Ok(response.committed)
    }

    /// The messages on a topic from now on, through `worker_id`'s mesh subscription (empty:
    /// the topic's log, as [`Client::follow_log`] from now on).
    pub async fn follow_topic(&self, topic: &str, worker_id: &str) -> Result<TopicStream> {
        self.follow(pb::FollowTopicRequest {
            topic: topic.to_owned(),
            worker_id: worker_id.to_owned(),
            ..Default::default()
        })
        .await
    }

    async fn follow(&self, request: pb::FollowTopicRequest) -> Result<TopicStream> {
        let inbound = self
            .unary(|mut api| {
                let request = request.clone();
                async move { api.follow_topic(request).await }
            })
            .await?;
        Ok(Box::pin(inbound.map(|m| m.map_err(Error::from))))
    }

    /// Opens a multiplexed submission stream.
    pub async fn submit_many(&self) -> Result<(ManySender, ManyUpdates)> {
        let (tx, rx) = mpsc::channel(64);
        // A stream cannot be sent twice: the caller (see `resume`) moves on to the next head.
        let inbound = self.api().submit_many(ReceiverStream::new(rx)).await?.into_inner();
        let updates = inbound.map(|message| {
            let message = message?;
            if let Some(refused) = message.refused_watches.first() {
                let code = tonic::Code::from_i32(refused.error_code);
                let message = format!(
                    "task {} cannot be followed: {}",
                    refused.task_id, refused.error_message
                );
                return Err(Error::Status(tonic::Status::new(code, message)));
            }
            let mut updates = Vec::with_capacity(message.acks.len() + message.events.len());
            for ack in message.acks {
                updates.push(if ack.task_id.is_empty() {
                    ManyUpdate::Rejected {
                        client_ref: ack.client_ref,
                        code: tonic::Code::from_i32(ack.error_code),
                        message: ack.error_message,
                    }
                } else {
                    ManyUpdate::Accepted {
                        client_ref: ack.client_ref,
                        task_id: TaskId::new(ack.task_id),
                        existing: ack.existing,
                    }
                });
            }
            for event in message.events {
                updates.push(ManyUpdate::Event(TaskEvent::try_from(event)?));
            }
            Ok(updates)
        });
        Ok((ManySender { tx }, Box::pin(updates)))
    }

    /// Submits every (client_ref, submission) and streams the updates of all, riding
    /// through head restarts and broken connections: accepted tasks are followed from their
    /// last events, unacknowledged ones submitted again (see [`resume`]).
    pub fn submit_all(&self, items: Vec<(u64, Submission)>, control: SubmitControl) -> ManyUpdates {
        resume::submit_all(self.clone(), items, control)
    }

    /// Runs one task per input on `agent` and returns the outcomes in input order, through
    /// head restarts. Rejected submissions come back as failed outcomes.
    pub async fn run_many(&self, agent: &str, inputs: Vec<String>) -> Result<Vec<TaskOutcome>> {
        let total = inputs.len();
        let items = inputs
            .into_iter()
            .enumerate()
            .map(|(i, input)| (i as u64, Submission::new(agent, input)))
            .collect();
        let mut updates = self.submit_all(items, SubmitControl::default());
        let mut outcomes = outcome::Collector::new(total);
        while let Some(batch) = updates.next().await {
            for update in batch? {
                outcomes.apply(update);
            }
            if outcomes.all_done() {
                break;
            }
        }
        outcomes.finish()
    }
}

fn endpoint(url: &str, options: &ConnectOptions) -> Result<Endpoint> {
    let endpoint = fleet_proto::endpoint::head_endpoint(url, options.tls_ca.as_deref())?
        .connect_timeout(options.connect_timeout);
    if options.keep_alive.is_zero() {
        return Ok(endpoint);
    }
    Ok(endpoint
        .http2_keep_alive_interval(options.keep_alive)
        .keep_alive_timeout(options.keep_alive))
}

fn event_stream(stream: tonic::Streaming<pb::TaskEvent>) -> TaskStream {
    Box::pin(stream.map(|e| Ok(TaskEvent::try_from(e?)?)))
}

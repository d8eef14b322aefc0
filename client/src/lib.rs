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
//! - [`resume`]: task streams and batches ride through a head restart or a broken
//!   connection (reconnect with backoff, continue from the last event seen).

pub mod outcome;
pub mod resume;

use std::path::PathBuf;
use std::pin::Pin;
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
    AgentSpec, DEFAULT_MAX_RETRIES, EventKind, Resources, Sampling, TaskEvent, TaskId, TaskOptions,
    TaskState, Turn, Usage,
};
pub use outcome::TaskOutcome;
pub use resume::SubmitControl;
pub use tonic::{Code, Status};

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
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            token: std::env::var("FLEET_TOKEN").ok().filter(|t| !t.is_empty()),
            connect_timeout: Duration::from_secs(5),
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
        }
    }
}

/// What comes back on a [`Client::submit_many`] stream.
#[derive(Debug, Clone, PartialEq)]
pub enum ManyUpdate {
    Accepted { client_ref: u64, task_id: TaskId },
    Rejected { client_ref: u64, code: tonic::Code, message: String },
    Event(TaskEvent),
}

/// The sending half of a [`Client::submit_many`] stream. Drop it (or call
/// [`ManySender::finish`]) once everything is submitted; the updates end when every
/// accepted task has ended.
#[derive(Debug)]
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
        self.tx.send(pb::SubmitManyRequest { items }).await.map_err(|_| Error::StreamEnded)
    }

    pub fn finish(self) {}
}

/// The receiving half of a [`Client::submit_many`] stream.
pub type ManyUpdates = Pin<Box<dyn Stream<Item = Result<Vec<ManyUpdate>>> + Send>>;

/// A connection to a head. Cheap to clone; clones share the connection.
#[derive(Debug, Clone)]
pub struct Client {
    api: Api,
}

impl Client {
    /// Connects with the default options (token from `FLEET_TOKEN`, CA file from
    /// `FLEET_TLS_CA`).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, ConnectOptions::default()).await
    }

    pub async fn connect_with(url: &str, options: ConnectOptions) -> Result<Self> {
        let channel = endpoint(url, &options)?
            .connect()
            .await
            .map_err(|source| Error::Connect { url: url.to_owned(), source })?;
        Self::over(channel, options)
    }

    /// Connects to a head running in this process, over in-memory pipes.
    pub async fn connect_local(local: LocalConnector, options: ConnectOptions) -> Result<Self> {
        let url = "http://in-process.invalid";
        let local_options = ConnectOptions { tls_ca: None, ..options.clone() };
        let channel = endpoint(url, &local_options)?
            .connect_with_connector(local)
            .await
            .map_err(|source| Error::Connect { url: url.to_owned(), source })?;
        Self::over(channel, options)
    }

    fn over(channel: Channel, options: ConnectOptions) -> Result<Self> {
        let token = match options.token {
            Some(t) => Some(fleet_proto::bearer(&t).parse().map_err(|_| Error::InvalidToken)?),
            None => None,
        };
        let api = FleetServiceClient::with_interceptor(channel, TokenInterceptor(token))
            .max_decoding_message_size(64 << 20);
        Ok(Self { api })
    }

    pub async fn register_agent(&self, spec: AgentSpec) -> Result<pb::AgentInfo> {
        let request = pb::RegisterAgentRequest { spec: Some((&spec).into()) };
        Ok(self.api.clone().register_agent(request).await?.into_inner())
    }

    pub async fn list_agents(&self) -> Result<Vec<pb::AgentInfo>> {
        Ok(self.api.clone().list_agents(pb::ListAgentsRequest {}).await?.into_inner().agents)
    }

    /// Submits one task; the stream yields its events and ends after the terminal one. A
    /// broken connection after the first event is ridden through (see [`resume`]).
    pub async fn submit(&self, submission: Submission) -> Result<TaskStream> {
        let stream =
            self.api.clone().submit(pb::SubmitRequest::from(submission)).await?.into_inner();
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
        Ok(event_stream(self.api.clone().watch_task(request).await?.into_inner()))
    }

    pub async fn cancel(&self, task_id: &str) -> Result<TaskInfo> {
        let request = pb::CancelTaskRequest { task_id: task_id.to_owned() };
        Ok(self.api.clone().cancel_task(request).await?.into_inner())
    }

    pub async fn get_task(&self, task_id: &str) -> Result<TaskInfo> {
        Ok(self
            .api
            .clone()
            .get_task(pb::GetTaskRequest { task_id: task_id.to_owned() })
            .await?
            .into_inner())
    }

    pub async fn list_tasks(&self, request: pb::ListTasksRequest) -> Result<pb::ListTasksResponse> {
        Ok(self.api.clone().list_tasks(request).await?.into_inner())
    }

    pub async fn status(&self) -> Result<ClusterStatus> {
        Ok(self.api.clone().cluster_status(pb::ClusterStatusRequest {}).await?.into_inner())
    }

    /// Publishes `body` on a topic of the workers' mesh as `publisher` (empty = "client");
    /// returns the message's number among the publisher's and the worker that sent it.
    pub async fn publish(
        &self,
        topic: &str,
        publisher: &str,
        body: &str,
    ) -> Result<pb::PublishResponse> {
        let request = pb::PublishRequest {
            topic: topic.to_owned(),
            publisher: publisher.to_owned(),
            body: body.to_owned(),
        };
        Ok(self.api.clone().publish(request).await?.into_inner())
    }

    /// The messages on a topic from now on, through `worker_id`'s subscription (any worker
    /// on the mesh when empty).
    pub async fn follow_topic(&self, topic: &str, worker_id: &str) -> Result<TopicStream> {
        let request =
            pb::FollowTopicRequest { topic: topic.to_owned(), worker_id: worker_id.to_owned() };
        let inbound = self.api.clone().follow_topic(request).await?.into_inner();
        Ok(Box::pin(inbound.map(|m| m.map_err(Error::from))))
    }

    /// Opens a multiplexed submission stream.
    pub async fn submit_many(&self) -> Result<(ManySender, ManyUpdates)> {
        let (tx, rx) = mpsc::channel(64);
        let inbound = self.api.clone().submit_many(ReceiverStream::new(rx)).await?.into_inner();
        let updates = inbound.map(|message| {
            let message = message?;
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
    Ok(fleet_proto::endpoint::head_endpoint(url, options.tls_ca.as_deref())?
        .connect_timeout(options.connect_timeout))
}

fn event_stream(stream: tonic::Streaming<pb::TaskEvent>) -> TaskStream {
    Box::pin(stream.map(|e| Ok(TaskEvent::try_from(e?)?)))
}

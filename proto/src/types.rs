//! Domain types shared by the head, the workers and the client.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Retries after a worker failure when an agent does not say.
pub const DEFAULT_MAX_RETRIES: u32 = 1;

/// A task's id: cheap to clone, shared by the task table, the logs and the events.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(Arc<str>);

impl TaskId {
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for TaskId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// Resources a worker has or a task of an agent needs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Resources {
    pub cpus: f64,
    pub memory_bytes: u64,
    pub gpus: u32,
}

impl Resources {
    /// Whether `need` fits into `self`.
    pub fn fits(&self, need: &Resources) -> bool {
        // A small tolerance so that fractional cpus add up exactly.
        need.cpus <= self.cpus + 1e-9
            && need.memory_bytes <= self.memory_bytes
            && need.gpus <= self.gpus
    }

    pub fn add(&mut self, other: &Resources) {
        self.cpus += other.cpus;
        self.memory_bytes = self.memory_bytes.saturating_add(other.memory_bytes);
        self.gpus = self.gpus.saturating_add(other.gpus);
    }

    pub fn sub(&mut self, other: &Resources) {
        self.cpus = (self.cpus - other.cpus).max(0.0);
        self.memory_bytes = self.memory_bytes.saturating_sub(other.memory_bytes);
        self.gpus = self.gpus.saturating_sub(other.gpus);
    }
}

/// Sampling defaults of an agent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sampling {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub max_tokens: Option<u32>,
    pub seed: Option<u64>,
    /// Generation ends before any of these strings.
    pub stop: Vec<String>,
    /// The format the answer must follow.
    pub format: Option<OutputFormat>,
    /// Subtracted from the logit of every token already generated (-2 to 2).
    pub presence_penalty: Option<f32>,
    /// Subtracted from a generated token's logit once per time it appeared (-2 to 2).
    pub frequency_penalty: Option<f32>,
    /// Report each generated token's log-probability and this many alternatives.
    pub logprobs: Option<u32>,
    /// Whether a thinking model reasons before it answers; unset, the model's default.
    pub thinking: Option<bool>,
}

/// A format a generation is constrained to (local models follow it token by token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// Any JSON object.
    JsonObject,
    /// JSON valid under this JSON Schema, given as JSON text.
    JsonSchema(String),
    /// Text matching this regular expression as a whole.
    Regex(String),
    /// Text in this Lark grammar (llguidance's dialect).
    Lark(String),
}

impl Sampling {
    /// These settings with every field `overrides` sets taken from it.
    pub fn overridden_by(&self, overrides: &Sampling) -> Sampling {
        Sampling {
            temperature: overrides.temperature.or(self.temperature),
            top_p: overrides.top_p.or(self.top_p),
            max_tokens: overrides.max_tokens.or(self.max_tokens),
            seed: overrides.seed.or(self.seed),
            stop: if overrides.stop.is_empty() {
                self.stop.clone()
            } else {
                overrides.stop.clone()
            },
            format: overrides.format.clone().or_else(|| self.format.clone()),
            presence_penalty: overrides.presence_penalty.or(self.presence_penalty),
            frequency_penalty: overrides.frequency_penalty.or(self.frequency_penalty),
            logprobs: overrides.logprobs.or(self.logprobs),
            thinking: overrides.thinking.or(self.thinking),
        }
    }
}

/// One earlier message of a conversation given with a task.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Turn {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    pub content: String,
    /// The calls an assistant turn made.
    pub tool_calls: Vec<CallMade>,
    /// The call a `tool` turn answers.
    pub tool_call_id: String,
    /// A `tool` turn whose result reports an error.
    pub is_error: bool,
}

/// A tool call made in an earlier turn of a conversation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallMade {
    pub id: String,
    pub name: String,
    /// The arguments as JSON text.
    pub arguments: String,
}

/// Whether a model must call the client's tools (OpenAI's `tool_choice`; `none` is a task
/// without client tools).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ClientToolChoice {
    #[default]
    Auto,
    Required,
    Function(String),
}

/// Per-task settings beyond the input (the OpenAI-compatible API sets them).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskOptions {
    /// The conversation before the input; used instead of the agent's memory of the context.
    pub history: Vec<Turn>,
    /// Overrides of the agent's sampling defaults, field by field.
    pub sampling: Sampling,
    /// Embed these texts instead of generating.
    pub embed: Vec<String>,
    /// The client's tools (OpenAI function definitions): the model's calls of them end the
    /// task as `ToolCall` events, for the client to run.
    pub tools: Vec<serde_json::Value>,
    pub tool_choice: ClientToolChoice,
    /// Whether one reply may make several calls of them (else one).
    pub parallel_tool_calls: bool,
    /// The input is text to continue as it is: no instructions, history or chat template
    /// (OpenAI's legacy completions).
    pub raw_prompt: bool,
    /// Files given with the task (A2A file parts), for agents that take them.
    pub files: Vec<FilePart>,
}

/// A file given with a task: its bytes, or where it is.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct FilePart {
    pub name: String,
    pub media_type: String,
    pub data: Vec<u8>,
    /// Where the file is, when it came as a URL instead of bytes.
    pub url: String,
}

impl FilePart {
    /// Bytes it takes in a task's input.
    pub fn size(&self) -> usize {
        self.data.len() + self.url.len() + self.name.len() + self.media_type.len()
    }
}

impl std::fmt::Debug for FilePart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilePart")
            .field("name", &self.name)
            .field("media_type", &self.media_type)
            .field("bytes", &self.data.len())
            .field("url", &self.url)
            .finish()
    }
}

/// Model options whose values are secrets (credentials for a remote endpoint): the worker
/// that runs the agent receives them; listings, cards and logs show [`REDACTED`] instead.
pub const SECRET_MODEL_OPTIONS: [&str; 1] = ["api_key"];

/// Shown in place of a secret model option's value.
pub const REDACTED: &str = "<redacted>";

/// What an agent is. Validated by the head before it is accepted. Its default has
/// [`DEFAULT_MAX_RETRIES`], as the wire format, the config file and Python do.
#[derive(Clone, PartialEq)]
pub struct AgentSpec {
    pub name: String,
    pub model: String,
    pub instructions: String,
    pub description: String,
    pub tools: Vec<String>,
    pub sampling: Sampling,
    /// Reserved on a worker for each running task of this agent.
    pub resources: Resources,
    pub max_retries: u32,
    /// Worker labels this agent must run on.
    pub labels: BTreeMap<String, String>,
    /// Model-specific settings, e.g. `token_delay_ms` for `builtin:echo`.
    pub model_options: BTreeMap<String, String>,
    /// Most tasks of this agent running at once on the cluster; 0 = unlimited.
    pub max_concurrency: u32,
    /// Mesh topics the agent reads (in its prompt) and may publish on (`publish` tool).
    pub topics: Vec<String>,
    /// MCP servers whose tools the agent's model may call, beside `tools`.
    pub mcp: Vec<McpServer>,
    /// Whether each task's first reply must call a tool: `auto` (or empty), `required`, or
    /// a tool's name.
    pub tool_choice: String,
    /// Tools whose every call waits for a person's approval.
    pub requires_approval: Vec<String>,
    /// The agent has the built-in [`ASK_USER_TOOL`]: its model may ask the client a question.
    pub ask_user: bool,
    /// How long a task waits for input before it fails; 0 = [`DEFAULT_INPUT_TIMEOUT_MS`].
    pub input_timeout_ms: u32,
    /// The tenant the agent belongs to; empty: shared by every tenant.
    pub tenant: String,
    /// Listed on the head's public agent card.
    pub public: bool,
    /// Tools a retried task never calls twice for one step: a call sent when the worker
    /// was lost, whose result was not stored, fails the task instead of being made again.
    pub call_once: Vec<String>,
    /// Whether the agent keeps actor state (`ctx.state`, Python agents) in the head's
    /// store, and per what; such an agent runs one task per key at a time.
    pub actor_state: ActorState,
}

/// What a Python agent's stored state (`ctx.state`) belongs to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ActorState {
    /// No stored state; tasks run concurrently.
    #[default]
    None,
    /// One state for the agent (per tenant): its tasks run one at a time.
    PerAgent,
    /// One state per conversation: a conversation's tasks run one at a time; a task
    /// without a context starts from an empty state that is not stored.
    PerContext,
}

/// The most bytes one actor's state (its JSON) may hold.
pub const MAX_ACTOR_STATE_BYTES: usize = 256 << 10;

/// An actor's stored state, handed with its key's next task.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredState {
    /// A JSON object (`{}` before the first save).
    pub state: std::sync::Arc<str>,
    /// How many saves made it (0: none yet).
    pub version: u64,
}

/// How long a task waits for an answer or an approval unless its agent says.
pub const DEFAULT_INPUT_TIMEOUT_MS: u32 = 15 * 60 * 1000;

impl Default for AgentSpec {
    fn default() -> Self {
        Self {
            name: Default::default(),
            model: Default::default(),
            instructions: Default::default(),
            description: Default::default(),
            tools: Default::default(),
            sampling: Default::default(),
            resources: Default::default(),
            max_retries: DEFAULT_MAX_RETRIES,
            labels: Default::default(),
            model_options: Default::default(),
            max_concurrency: Default::default(),
            topics: Default::default(),
            mcp: Default::default(),
            tool_choice: Default::default(),
            requires_approval: Default::default(),
            ask_user: Default::default(),
            input_timeout_ms: Default::default(),
            tenant: Default::default(),
            public: Default::default(),
            call_once: Default::default(),
            actor_state: Default::default(),
        }
    }
}

impl AgentSpec {
    /// How long a task of this agent waits for input.
    pub fn input_timeout(&self) -> std::time::Duration {
        let ms = match self.input_timeout_ms {
            0 => DEFAULT_INPUT_TIMEOUT_MS,
            ms => ms,
        };
        std::time::Duration::from_millis(ms.into())
    }
}

/// A client's reply to a task that is input-required.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// An answer to a question; for an approval, "yes"/"approve" approves and anything else
    /// rejects (the words the reason).
    Text(String),
    /// Run the tool call that waits for approval.
    Approve,
    /// Do not run it, or decline the question; the reason.
    Reject(String),
}

impl Reply {
    /// Whether an approval is granted (`false` for a rejection), and the words of the reply.
    pub fn approves(&self) -> (bool, &str) {
        match self {
            Self::Approve => (true, ""),
            Self::Reject(reason) => (false, reason),
            Self::Text(text) => {
                let word = text.trim().trim_end_matches(['.', '!']).to_ascii_lowercase();
                let yes = matches!(
                    word.as_str(),
                    "yes" | "y" | "approve" | "approved" | "ok" | "okay" | "allow" | "go ahead"
                );
                (yes, text)
            }
        }
    }
}

/// An MCP server: a program spoken to over stdio (`command`), or a streamable HTTP endpoint
/// (`url`). Exactly one of the two is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct McpServer {
    /// The program and its arguments.
    pub command: Vec<String>,
    pub url: String,
}

/// A function a client process hosts (a Python tool), as agents' models see it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FunctionTool {
    pub name: String,
    pub description: String,
    /// JSON schema of the arguments (an object), as text.
    pub parameters: String,
    /// How long a call may take; 0 = [`DEFAULT_FUNCTION_TIMEOUT_MS`].
    pub timeout_ms: u32,
    /// Every call waits for a person's approval first.
    pub requires_approval: bool,
    /// Each call gets the files given with the calling task.
    pub takes_files: bool,
    /// Not idempotent: a retried task never calls it twice for one step.
    pub call_once: bool,
}

/// How long a call of a hosted function may take unless its definition says.
pub const DEFAULT_FUNCTION_TIMEOUT_MS: u32 = 60_000;

/// One call of a hosted function, as the head sends it to the process hosting it.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolInvocation {
    /// Names the call among all calls of its head; the answer carries it.
    pub call: u64,
    pub tool: String,
    /// The arguments, a JSON object.
    pub arguments: String,
    pub task_id: TaskId,
    pub context_id: String,
    pub timeout: std::time::Duration,
    /// The files given with the calling task, for a tool that takes them.
    pub files: Vec<FilePart>,
}

impl FunctionTool {
    /// How long a call may take.
    pub fn timeout(&self) -> std::time::Duration {
        let ms = if self.timeout_ms == 0 { DEFAULT_FUNCTION_TIMEOUT_MS } else { self.timeout_ms };
        std::time::Duration::from_millis(ms.into())
    }
}

impl fmt::Display for McpServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.url.is_empty() {
            write!(f, "{}", self.command.join(" "))
        } else {
            f.write_str(&self.url)
        }
    }
}

impl AgentSpec {
    /// Whether a model option holds a secret value.
    pub fn has_secrets(&self) -> bool {
        SECRET_MODEL_OPTIONS.iter().any(|k| self.model_options.contains_key(*k))
    }

    /// The spec as others may see it: secret model options' values replaced by [`REDACTED`].
    pub fn redacted(&self) -> Self {
        let mut spec = self.clone();
        for key in SECRET_MODEL_OPTIONS {
            if let Some(value) = spec.model_options.get_mut(key) {
                *value = REDACTED.to_owned();
            }
        }
        spec
    }
}

/// Written by hand so that `{:?}` in a log line never prints a secret model option.
impl fmt::Debug for AgentSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let options: BTreeMap<&str, &str> = self
            .model_options
            .iter()
            .map(|(k, v)| {
                let v = if SECRET_MODEL_OPTIONS.contains(&k.as_str()) { REDACTED } else { v };
                (k.as_str(), v)
            })
            .collect();
        f.debug_struct("AgentSpec")
            .field("name", &self.name)
            .field("model", &self.model)
            .field("instructions", &self.instructions)
            .field("description", &self.description)
            .field("tools", &self.tools)
            .field("sampling", &self.sampling)
            .field("resources", &self.resources)
            .field("max_retries", &self.max_retries)
            .field("labels", &self.labels)
            .field("model_options", &options)
            .field("max_concurrency", &self.max_concurrency)
            .field("topics", &self.topics)
            .field("mcp", &self.mcp)
            .field("tenant", &self.tenant)
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// A message on a topic of the mesh.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicMessage {
    pub topic: String,
    /// The agent (or client) that published it.
    pub publisher: String,
    /// Numbers the publisher's messages on the topic from 1, in order.
    pub seq: u64,
    pub body: String,
    /// The worker whose subscription received it.
    pub worker_id: String,
    /// Its offset in the topic's log (none: received from the mesh).
    pub offset: Option<u64>,
    /// When the head stored it (0: received from the mesh).
    pub published_at_us: u64,
}

/// A client's message to publish on the mesh, handed to a worker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishRequest {
    pub request_id: u64,
    pub topic: String,
    pub publisher: String,
    pub body: String,
}

/// Token counts of one task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u32,
    /// Prompt tokens read from the engine's prefix cache instead of computed.
    pub cached_tokens: u32,
    pub completion_tokens: u32,
    /// Of the completion tokens, those a thinking model spent reasoning.
    pub reasoning_tokens: u32,
    /// Whether generation ended at `max_tokens` or the model's context rather than at an end
    /// token or stop string.
    pub truncated: bool,
}

/// The gRPC metadata key under which the head says which [`ErrorKind`] a refused call is
/// (several kinds share a gRPC code: `NotFound` is an unknown task or agent).
pub const ERROR_KIND_METADATA: &str = "fleet-error-kind";

/// What kind of failure an error or a failed task is: one kind per failure, which the head
/// maps once (its `error` module) to a gRPC code, an HTTP status, a JSON-RPC code and an
/// OpenAI error type, so every front door answers the same failure the same way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Something broke on our side (a panic, an engine fault, a peer too old to say).
    #[default]
    Internal,
    /// The request's fault: the caller must change it (a prompt over the context, ...).
    InvalidRequest,
    UnknownTask,
    /// No agent or model of that name.
    UnknownAgent,
    /// Out of room for now (a full queue, a model with its waiting queue full): retry later.
    Busy,
    /// A part of the cluster is gone for now (a lost worker, the store, the mesh).
    Unavailable,
    /// Valid, but not something this cluster can do (no worker can ever run it, ...).
    Unsupported,
    /// The task is already over.
    NotCancelable,
    /// A message part of a type the agent cannot take.
    ContentTypeNotSupported,
    Unauthenticated,
    /// The caller is known but its role does not allow this (a reader submitting, a user
    /// replacing an agent of the config file).
    PermissionDenied,
}

impl ErrorKind {
    /// Every kind.
    pub const ALL: [ErrorKind; 11] = [
        Self::Internal,
        Self::InvalidRequest,
        Self::UnknownTask,
        Self::UnknownAgent,
        Self::Busy,
        Self::Unavailable,
        Self::Unsupported,
        Self::NotCancelable,
        Self::ContentTypeNotSupported,
        Self::Unauthenticated,
        Self::PermissionDenied,
    ];

    /// The kind named `name` (as [`ErrorKind::as_str`] names it).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The kind's name as clients see it (Python's `FleetError.kind`, the CLI, the page).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Internal => "internal",
            Self::InvalidRequest => "invalid_request",
            Self::UnknownTask => "unknown_task",
            Self::UnknownAgent => "unknown_agent",
            Self::Busy => "busy",
            Self::Unavailable => "unavailable",
            Self::Unsupported => "unsupported",
            Self::NotCancelable => "not_cancelable",
            Self::ContentTypeNotSupported => "content_type_not_supported",
            Self::Unauthenticated => "unauthenticated",
            Self::PermissionDenied => "permission_denied",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened to a task.
#[derive(Clone, Debug, PartialEq)]
pub enum EventKind {
    Submitted {
        agent: String,
    },
    Scheduled {
        worker_id: String,
    },
    Working,
    TextDelta {
        text: String,
        /// The log-probabilities of the tokens `text` came from, when asked for.
        logprobs: Vec<TokenLogprob>,
    },
    /// Text of a thinking model's reasoning, before and apart from its answer (the
    /// `TextDelta`s): streamed to clients that show it, never part of the answer.
    ReasoningDelta {
        text: String,
    },
    ToolCall {
        call_id: String,
        name: String,
        arguments: String,
        /// W3C `traceparent` of the caller's `execute_tool` span (empty: not traced).
        traceparent: String,
        /// A call an earlier attempt made and whose result was stored, repeated in a
        /// retried attempt's record: not made again.
        replayed: bool,
    },
    ToolResult {
        call_id: String,
        output: String,
        is_error: bool,
    },
    Completed {
        usage: Usage,
    },
    Failed {
        error: String,
        worker_id: String,
        /// What kind of failure: the status the front doors answer with.
        kind: ErrorKind,
    },
    Canceled {
        reason: String,
    },
    /// The task waits for a person: an answer to its agent's question (`ask_user`), or the
    /// approval of a tool call (`tool` set).
    InputRequired {
        prompt: String,
        /// Names the request (`CALL_ID/input`, after the tool call that waits on it); the
        /// reply carries it.
        call_id: String,
        /// For an approval: the tool to call and its arguments.
        tool: String,
        arguments: String,
        /// When the task stops waiting and fails (µs since the Unix epoch).
        deadline_us: u64,
    },
    /// The client's reply to an `InputRequired`: the task works again.
    InputReceived {
        call_id: String,
        /// The answer, or the reason given for a rejection.
        text: String,
        /// The approval was refused, or the question declined.
        rejected: bool,
    },
    Retrying {
        reason: String,
        failed_attempt: u32,
    },
    /// The vectors of an embedding task, one per text, in order.
    Embeddings {
        vectors: Vec<Vec<f32>>,
    },
    /// A file or JSON data the agent returns beside its text (shared: it may be large).
    Artifact(Arc<Artifact>),
    /// The actor state (`ctx.state`, a JSON object) the task stored for its key's next
    /// task: before its `Completed`, and when its code saves.
    StateSaved {
        state: Arc<str>,
    },
}

/// A file or JSON data an agent returns beside its text answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifact {
    /// Names it within its task (A2A's `artifactId`); never [`TEXT_ARTIFACT_ID`].
    pub id: String,
    pub name: String,
    pub description: String,
    pub part: ArtifactPart,
}

/// The id of the artifact a task's text answer is (A2A).
pub const TEXT_ARTIFACT_ID: &str = "output";

/// What an artifact holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArtifactPart {
    /// A file: its bytes, or where it is.
    File(FilePart),
    /// JSON data, as its text.
    Data(String),
}

impl Artifact {
    /// Bytes it takes in a task's answer.
    pub fn size(&self) -> usize {
        let part = match &self.part {
            ArtifactPart::File(file) => file.size(),
            ArtifactPart::Data(json) => json.len(),
        };
        part + self.id.len() + self.name.len() + self.description.len()
    }
}

/// A generated token's log-probability and the most likely tokens at its position.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    /// Most likely first.
    pub top: Vec<(String, f32)>,
}

impl EventKind {
    /// A failure on no particular worker (the head fills in the worker it ran on).
    pub fn failed(kind: ErrorKind, error: impl Into<String>) -> Self {
        Self::Failed { error: error.into(), worker_id: String::new(), kind }
    }

    /// Text without logprobs.
    pub fn text(text: impl Into<String>) -> Self {
        Self::TextDelta { text: text.into(), logprobs: Vec::new() }
    }

    /// About how many bytes the event carries beyond its fixed part: its texts, vectors or
    /// artifact (what bounds a task's memory and a batch of events on the wire).
    pub fn payload_bytes(&self) -> usize {
        match self {
            Self::Submitted { agent: s }
            | Self::Scheduled { worker_id: s }
            | Self::TextDelta { text: s, .. }
            | Self::ReasoningDelta { text: s }
            | Self::Canceled { reason: s }
            | Self::Retrying { reason: s, .. } => s.len(),
            Self::ToolCall { call_id, name, arguments, .. } => {
                call_id.len() + name.len() + arguments.len()
            }
            Self::ToolResult { call_id, output: text, .. }
            | Self::InputReceived { call_id, text, .. } => call_id.len() + text.len(),
            Self::InputRequired { prompt, call_id, tool, arguments, .. } => {
                prompt.len() + call_id.len() + tool.len() + arguments.len()
            }
            Self::Failed { error, worker_id, .. } => error.len() + worker_id.len(),
            Self::Embeddings { vectors } => {
                vectors.iter().map(|v| v.len() * 4 + std::mem::size_of::<Vec<f32>>()).sum()
            }
            Self::Artifact(artifact) => artifact.size(),
            Self::StateSaved { state } => state.len(),
            Self::Working | Self::Completed { .. } => 0,
        }
    }
}

/// One entry of a task's event log. `seq` is assigned by the head: 1, 2, 3, ... with no gaps.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskEvent {
    pub task_id: TaskId,
    pub seq: u64,
    pub attempt: u32,
    pub timestamp_us: u64,
    pub kind: EventKind,
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// A model file or folder a worker has on disk.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelOnDisk {
    pub id: String,
    pub path: String,
    pub size_bytes: u64,
    pub format: String,
}

/// What a worker says about itself when it joins.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Registration {
    pub worker_id: String,
    pub hostname: String,
    pub resources: Resources,
    pub labels: BTreeMap<String, String>,
    pub models: Vec<ModelOnDisk>,
    pub slots: u32,
    pub version: String,
    /// Where the worker's mesh listens; `None` for a worker without one.
    pub mesh: Option<MeshAddress>,
    /// Random per worker process: the same incarnation rejoining still runs its tasks.
    pub incarnation: u64,
    /// The tasks it runs, with their attempts.
    pub running: Vec<(TaskId, u32)>,
    /// Its GPUs.
    pub gpus: Vec<Gpu>,
    /// The Python agents it hosts ([`crate::ANY_PYTHON_AGENT`]: every one its process defines).
    pub python_agents: Vec<String>,
    /// The worker protocol it speaks ([`crate::WORKER_PROTOCOL`]; 0 from older workers).
    pub protocol: u32,
}

impl Registration {
    /// Whether the worker hosts the Python agent `name` (the `NAME` of model `python:NAME`).
    pub fn hosts_python_agent(&self, name: &str) -> bool {
        self.python_agents.iter().any(|n| n == name || n == crate::ANY_PYTHON_AGENT)
    }
}

/// One of a worker's GPUs, as its driver reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Gpu {
    /// The CUDA ordinal (`cuda:INDEX`).
    pub index: u32,
    pub name: String,
    pub memory_bytes: u64,
}

/// A worker's place on the mesh: its libp2p peer id and the multiaddrs it listens on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeshAddress {
    pub peer_id: String,
    pub addrs: Vec<String>,
}

/// The workers on the mesh, as the head tells a worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MeshPeers {
    /// Every worker on the mesh (this one included).
    All(Vec<MeshPeer>),
    /// What changed since the last list: workers that joined (or whose address changed),
    /// and the ids of those that left.
    Changes { joined: Vec<MeshPeer>, left: Vec<String> },
}

/// A worker on the mesh, as the head lists them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeshPeer {
    pub worker_id: String,
    pub address: MeshAddress,
}

/// A worker asks where an agent runs, to call it over the mesh.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocateRequest {
    pub request_id: u64,
    pub agent: String,
    pub context_id: String,
    pub caller_task: String,
}

/// A worker's periodic liveness and load report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Heartbeat {
    pub running_tasks: u32,
    /// Calls from other workers over the mesh running on this worker: they take its slots.
    pub mesh_calls: u32,
    pub actors: u32,
    pub models_loaded: Vec<String>,
    pub models: Vec<LoadedModel>,
}

/// A model loaded on a worker and what its engine is doing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadedModel {
    pub id: String,
    /// KV-cache bytes held by admitted sequences.
    pub kv_bytes: u64,
    pub active_sequences: u32,
    pub waiting_sequences: u32,
    /// Tokens generated per second since the previous heartbeat.
    pub tokens_per_s: f64,
    pub generated_tokens: u64,
    /// The prefix cache since the model loaded: prompt tokens of sequences started, of
    /// those read from the cache, sequences that found (hits) or did not find (misses) a
    /// cached block; bytes it holds now.
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub prefix_hits: u64,
    pub prefix_misses: u64,
    pub prefix_cache_bytes: u64,
    /// The most KV-cache bytes admitted sequences may hold.
    pub kv_capacity_bytes: u64,
    /// Since the model loaded: from a request reaching the engine to its first token, and
    /// between two tokens of a sequence.
    pub time_to_first_token: Latencies,
    pub inter_token: Latencies,
}

/// A histogram of durations: `counts[i]` observations above `upper_bounds[i - 1]` and at
/// most `upper_bounds[i]` seconds; the last count (one more than the bounds) is above them
/// all.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Latencies {
    pub upper_bounds: Vec<f64>,
    pub counts: Vec<u64>,
    pub sum_seconds: f64,
}

/// Everything a worker sends up its `Join` stream.
#[derive(Clone, Debug, PartialEq)]
pub enum WorkerUpdate {
    Register(Registration),
    Heartbeat(Heartbeat),
    /// Task events; `seq` is left 0, the head assigns it.
    Events(Vec<TaskEvent>),
    Locate(LocateRequest),
    /// Messages on topics the head follows through this worker.
    TopicMessages(Vec<TopicMessage>),
    /// The answer to a `Publish`: the message's number, or what kind of failure kept it
    /// from being published and why.
    Published {
        request_id: u64,
        result: std::result::Result<u64, (ErrorKind, String)>,
    },
    /// A message an agent here published, for the topic's log (with its number on the
    /// mesh, 0 if none); answered with `TopicMessageStored`.
    StoreTopicMessage {
        request: PublishRequest,
        seq: u64,
        /// More messages after `request.body`, stored in this order.
        more: Vec<String>,
    },
    /// The worker is stopping: it takes no new work, finishes what it runs, then leaves.
    Drain {
        reason: String,
    },
}

/// A task handed to a worker.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskAssignment {
    pub task_id: TaskId,
    pub agent: String,
    pub attempt: u32,
    pub input: String,
    pub context_id: String,
    pub options: Option<Arc<TaskOptions>>,
    /// Tool calls between this task and the one a client submitted (0 for that one).
    pub depth: u32,
    /// W3C `traceparent` of the span the worker's spans go under (empty: not traced).
    pub traceparent: String,
    /// The turns of the task's conversation so far, from the head's store (empty when the
    /// client carries the conversation in `options.history`, or it has none).
    pub conversation: Vec<Turn>,
    /// A retried task's recorded steps (assistant turns with their calls, and the calls'
    /// results), for the attempt to go on from; the last assistant turn may hold calls
    /// that were sent but have no result.
    pub steps: Vec<Turn>,
    /// The actor state the task starts from (agents with `actor_state`; none for the
    /// others, and for a per-context agent's task without a context).
    pub actor: Option<StoredState>,
}

impl TaskAssignment {
    /// The first attempt of `task_id` on `agent` with `input`, and nothing else: no context,
    /// options, conversation, steps or actor state, not traced, not a tool call.
    pub fn new(task_id: TaskId, agent: impl Into<String>, input: impl Into<String>) -> Self {
        TaskAssignment {
            task_id,
            agent: agent.into(),
            attempt: 1,
            input: input.into(),
            context_id: String::new(),
            options: None,
            depth: 0,
            traceparent: String::new(),
            conversation: Vec::new(),
            steps: Vec::new(),
            actor: None,
        }
    }
}

/// What the head tells a worker to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    PlaceActor {
        spec: Arc<AgentSpec>,
        version: u64,
        /// The agent's tools that client processes host (the other tools are agents).
        functions: Arc<[FunctionTool]>,
    },
    RunTask(TaskAssignment),
    CancelTask {
        task_id: TaskId,
        reason: String,
    },
    StopActor {
        agent: String,
    },
    /// The result of another agent that `task_id` called as a tool.
    ToolReply {
        task_id: TaskId,
        call_id: String,
        output: String,
        is_error: bool,
    },
    /// Who is on the mesh: the only peers to accept and call.
    MeshPeers(MeshPeers),
    /// The answer to a `Locate`: the worker hosting the agent, or why there is none.
    Located {
        request_id: u64,
        result: std::result::Result<MeshPeer, String>,
    },
    /// Forward the messages on `topic` to the head (or stop, with `follow` false).
    FollowTopic {
        topic: String,
        follow: bool,
    },
    /// Publish a client's message; answered with `Published`.
    Publish(PublishRequest),
    /// The head stored this worker's events up to this number (their `seq`).
    Acked {
        up_to: u64,
    },
    /// Heartbeat at this interval from now on ([`crate::HEARTBEAT_EVERY_PROTOCOL`]).
    HeartbeatEvery(std::time::Duration),
    /// The answer to `StoreTopicMessage`: the message's offset in its topic's log, or why
    /// it was not stored.
    TopicMessageStored {
        request_id: u64,
        result: std::result::Result<u64, (ErrorKind, String)>,
    },
}

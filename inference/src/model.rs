//! The [`Model`] trait and the types of a generation request and its stream.

use futures::stream::BoxStream;

use crate::Result;

/// Who said a message of a conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    /// The result of a tool call, answering the assistant message that made it.
    Tool,
}

impl Role {
    /// The role's name in chat templates and OpenAI's messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// A call of a tool (a function the model may use), as the model made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as JSON text.
    pub arguments: String,
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
    /// The tool calls an assistant message made.
    pub tool_calls: Vec<ToolCall>,
    /// Which call a `Tool` message answers.
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into(), tool_calls: Vec::new(), tool_call_id: None }
    }

    /// The result of the tool call `call_id`.
    pub fn tool_result(call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Self { tool_call_id: Some(call_id.into()), ..Self::new(Role::Tool, content) }
    }
}

/// What to generate from: the conversation so far plus sampling settings. Unset settings
/// take the model's defaults (greedy, no penalties, up to the context's end).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerateRequest {
    pub messages: Vec<ChatMessage>,
    /// Text to continue as it is, read instead of `messages` (no chat template): OpenAI's
    /// legacy completions. Chat-only models (remote ones) refuse it.
    pub prompt: Option<String>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<u64>,
    /// Generation ends before any of these strings (which are not emitted).
    pub stop: Vec<String>,
    /// Report each token's log-probability and this many alternatives.
    pub logprobs: Option<u32>,
    /// Tools the model may call, in OpenAI's shape
    /// (`{"type": "function", "function": {"name", "description", "parameters"}}`).
    pub tools: Vec<serde_json::Value>,
    /// Whether the model must call a tool (with `tools`; no tools is OpenAI's `none`).
    /// Local models write calls under a grammar of their family's call format, so every
    /// call parses, names a given tool and has arguments valid under its schema.
    pub tool_choice: fleet_grammar::ToolChoice,
    /// Whether one reply may make several calls (else one; see
    /// [`fleet_grammar::tool_call_format`]).
    pub parallel_tool_calls: bool,
    /// The format the answer must follow (JSON schema, any JSON object, regex, Lark);
    /// only models with a tokenizer the grammar engine reads can follow one.
    pub format: Option<fleet_grammar::OutputFormat>,
    /// Whether a thinking model reasons before it answers (chat templates'
    /// `enable_thinking`, as Qwen3's reads it); unset, the model's own default.
    pub thinking: Option<bool>,
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    #[default]
    Stop,
    /// max_tokens or the end of the context.
    Length,
}

/// Token counts of one generation, and why it ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u32,
    /// Prompt tokens read from the engine's prefix cache instead of computed.
    pub cached_tokens: u32,
    pub completion_tokens: u32,
    /// Of the completion tokens, those a thinking model spent reasoning (its markers
    /// included); counted in `completion_tokens` too.
    pub reasoning_tokens: u32,
    pub finish_reason: FinishReason,
}

/// A generated token's log-probability and the most likely alternatives, as text.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub top: Vec<(String, f32)>,
}

/// One item of a generation stream: text deltas (each token's logprobs just before the
/// delta that holds its text, when asked for), then exactly one `Done`.
#[derive(Clone, Debug, PartialEq)]
pub enum GenerationEvent {
    Delta(String),
    /// Text of a thinking model's reasoning, apart from its answer (the `Delta`s); it comes
    /// before the answer and is not subject to its format, tool calls or stop strings.
    Reasoning(String),
    Logprobs(TokenLogprob),
    /// A tool call the model made in a structured form (remote OpenAI-compatible models);
    /// local models write tool calls as text in their family's format.
    ToolCall(ToolCall),
    Done(Usage),
}

/// A running generation. Dropping it cancels the generation.
pub type Generation = BoxStream<'static, Result<GenerationEvent>>;

/// A loaded model, shared by every agent that uses it.
pub trait Model: Send + Sync + 'static {
    /// The id the model was loaded by, e.g. `builtin:echo`.
    fn id(&self) -> &str;

    /// Starts generating: checks the request and prepares the prompt (a local model renders
    /// its chat template and tokenizes, milliseconds for a long prompt), so bad requests
    /// fail here, before any output. Blocking for that long: async callers run it on a
    /// blocking pool (`spawn_blocking`). The generation itself runs as the stream is polled
    /// or on the engine's own thread.
    fn generate(&self, request: GenerateRequest) -> Result<Generation>;

    /// Whether [`Model::generate`] returns at once (no template to render, nothing to
    /// tokenize): async callers may call it in place, where a hop to the blocking pool would
    /// cost more than the call (two thread wake-ups per task).
    fn generates_in_place(&self) -> bool {
        false
    }

    /// Whether this model embeds texts rather than generating.
    fn is_embedder(&self) -> bool {
        false
    }

    /// L2-normalised embeddings, one per text. Blocking: call it off the async runtime.
    fn embed(&self, texts: &[&str]) -> Result<Embeddings> {
        let _ = texts;
        Err(crate::Error::InvalidRequest(format!("model {} does not embed texts", self.id())))
    }

    /// Live figures of the model's engine, when it has one.
    fn stats(&self) -> ModelStats {
        ModelStats::default()
    }
}

/// The vectors of an embedding request and the tokens they took.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: usize,
}

/// Live figures of a model's engine.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelStats {
    /// KV-cache bytes held by admitted sequences, and the most they may hold.
    pub kv_bytes: u64,
    pub kv_capacity_bytes: u64,
    /// Sequences generating now and waiting for room.
    pub active: u32,
    pub waiting: u32,
    /// Tokens generated since the model was loaded (prompt tokens not counted).
    pub generated_tokens: u64,
    /// The prefix cache: prompt tokens of sequences started, of those read from the cache,
    /// sequences that found (hits) or did not find (misses) a cached block, bytes held.
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub prefix_hits: u64,
    pub prefix_misses: u64,
    pub prefix_cache_bytes: u64,
    /// From a request reaching the engine to its first token, and between two tokens.
    pub time_to_first_token: crate::latency::Latencies,
    pub inter_token: crate::latency::Latencies,
}

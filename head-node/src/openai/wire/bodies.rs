//! The response bodies: plain `Serialize` structs in OpenAI's shapes.

use serde::Serialize;
use serde_json::Value;

/// Token counts as OpenAI reports them.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CompletionUsage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    pub prompt_tokens_details: PromptTokensDetails,
    pub completion_tokens_details: CompletionTokensDetails,
}

/// `usage.completion_tokens_details`: completion tokens a thinking model spent reasoning.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CompletionTokensDetails {
    pub reasoning_tokens: u32,
}

/// `usage.prompt_tokens_details`: prompt tokens the engine read from its prefix cache.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: u32,
}

impl From<fleet_proto::Usage> for CompletionUsage {
    fn from(u: fleet_proto::Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens.saturating_add(u.completion_tokens),
            prompt_tokens_details: PromptTokensDetails { cached_tokens: u.cached_tokens },
            completion_tokens_details: CompletionTokensDetails {
                reasoning_tokens: u.reasoning_tokens,
            },
        }
    }
}

/// `finish_reason`: `length` when generation stopped at max_tokens or the context.
pub fn finish_reason(usage: &fleet_proto::Usage) -> &'static str {
    if usage.truncated { "length" } else { "stop" }
}

#[derive(Debug, Serialize)]
pub struct AssistantMessage {
    pub role: &'static str,
    /// None (`null`) when the model only called tools.
    pub content: Option<String>,
    /// A thinking model's reasoning before its answer (the field vLLM, llama.cpp's server
    /// and DeepSeek's API name it), absent when it did not think.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallOut>,
}

/// A tool call of the model for the client to run.
#[derive(Debug, Clone, Serialize)]
pub struct ToolCallOut {
    /// Its place among the calls of the message (in stream chunks only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionOut,
}

#[derive(Debug, Clone, Serialize)]
pub struct FunctionOut {
    pub name: String,
    /// JSON text.
    pub arguments: String,
}

impl ToolCallOut {
    pub fn new(id: &str, name: &str, arguments: &str) -> Self {
        Self {
            index: None,
            id: id.to_owned(),
            kind: "function",
            function: FunctionOut { name: name.to_owned(), arguments: arguments.to_owned() },
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Choice {
    pub index: u32,
    pub message: AssistantMessage,
    pub finish_reason: &'static str,
    pub logprobs: Option<ChoiceLogprobs>,
}

/// The logprobs of a choice's (or a chunk's) tokens, when the request asked for them.
#[derive(Debug, Serialize)]
pub struct ChoiceLogprobs {
    pub content: Vec<LogprobOut>,
    /// This server's models never refuse in OpenAI's separate field.
    pub refusal: Option<()>,
}

impl ChoiceLogprobs {
    pub fn new(tokens: &[fleet_proto::TokenLogprob]) -> Self {
        Self { content: tokens.iter().map(LogprobOut::from).collect(), refusal: None }
    }
}

/// One token's logprob and the most likely tokens at its place, each with its UTF-8 bytes
/// (a token may be part of a character).
#[derive(Debug, Serialize)]
pub struct LogprobOut {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprobOut>,
}

#[derive(Debug, Serialize)]
pub struct TopLogprobOut {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

impl From<&fleet_proto::TokenLogprob> for LogprobOut {
    fn from(t: &fleet_proto::TokenLogprob) -> Self {
        let top_logprobs = t
            .top
            .iter()
            .map(|(token, logprob)| TopLogprobOut {
                token: token.clone(),
                logprob: *logprob,
                bytes: token.as_bytes().to_vec(),
            })
            .collect();
        Self {
            token: t.token.clone(),
            logprob: t.logprob,
            bytes: t.token.as_bytes().to_vec(),
            top_logprobs,
        }
    }
}

/// A `chat.completion`.
#[derive(Debug, Serialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<Choice>,
    pub usage: CompletionUsage,
}

#[derive(Debug, Default, Serialize)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallOut>,
}

#[derive(Debug, Serialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub finish_reason: Option<&'static str>,
    pub logprobs: Option<ChoiceLogprobs>,
}

/// A `chat.completion.chunk` of a stream.
#[derive(Debug, Serialize)]
pub struct ChatCompletionChunk<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<ChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<CompletionUsage>,
}

impl<'a> ChatCompletionChunk<'a> {
    /// A chunk of completion `id`, with the choices' deltas (none in the last chunk, which
    /// carries the usage when asked).
    pub fn new(
        id: &'a str,
        created: u64,
        model: &'a str,
        choices: Vec<ChunkChoice>,
        usage: Option<CompletionUsage>,
    ) -> Self {
        Self { id, object: "chat.completion.chunk", created, model, choices, usage }
    }
}

/// One vector, as floats or base64.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Serialize)]
pub struct Embedding {
    pub object: &'static str,
    pub index: usize,
    pub embedding: Vector,
}

#[derive(Debug, Serialize)]
pub struct EmbeddingUsage {
    pub prompt_tokens: u32,
    pub total_tokens: u32,
}

/// The answer to `POST /v1/embeddings`.
#[derive(Debug, Serialize)]
pub struct EmbeddingList {
    pub object: &'static str,
    pub data: Vec<Embedding>,
    pub model: String,
    pub usage: EmbeddingUsage,
}

/// One entry of `GET /v1/models`.
#[derive(Debug, Serialize)]
pub struct Model {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    /// What the cluster knows beyond OpenAI's fields (clients ignore it).
    pub agentfleet: Value,
}

#[derive(Debug, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<Model>,
}

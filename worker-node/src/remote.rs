//! Remote models: agents whose model is `openai:MODEL` generate on an OpenAI-compatible
//! endpoint (OpenAI, vLLM, llama.cpp's server, another agentfleet head's `/v1`) through
//! `async-openai`, behind the same [`fleet_inference::Model`] trait as local models.
//!
//! [`RemoteConfig::resolve`] picks the endpoint from the agent's model options, then the
//! environment; [`chat_request`] maps a [`GenerateRequest`] to a streaming chat completion;
//! [`ChunkDecoder`] turns the streamed chunks into generation events, assembling tool calls
//! from their pieces. The HTTP request starts when the generation stream is first polled and
//! is dropped with it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::error::{OpenAIError, WrappedError};
use async_openai::types::chat::{
    ChatCompletionMessageToolCall, ChatCompletionMessageToolCallChunk,
    ChatCompletionMessageToolCalls, ChatCompletionNamedToolChoice,
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestAssistantMessageContent,
    ChatCompletionRequestMessage, ChatCompletionRequestSystemMessage,
    ChatCompletionRequestSystemMessageContent, ChatCompletionRequestToolMessage,
    ChatCompletionRequestToolMessageContent, ChatCompletionRequestUserMessage,
    ChatCompletionRequestUserMessageContent, ChatCompletionResponseStream,
    ChatCompletionStreamOptions, ChatCompletionToolChoiceOption, ChatCompletionTools,
    CreateChatCompletionRequest, CreateChatCompletionStreamResponse, FunctionCall, FunctionName,
    ResponseFormat, ResponseFormatJsonSchema, StopConfiguration, ToolChoiceOptions,
};
use async_openai::types::embeddings::{CreateEmbeddingRequest, EmbeddingInput};
use fleet_inference::{
    ChatMessage, Embeddings, FinishReason, GenerateRequest, Generation, GenerationEvent, Model,
    Role, TokenLogprob, ToolCall, Usage,
};
use fleet_inference::{OutputFormat, ToolChoice};
use futures::StreamExt;

use crate::{Error, Result};

/// Model ids of remote OpenAI-compatible endpoints start with this.
pub const PREFIX: &str = "openai:";

/// Where the endpoint is when neither the options nor `OPENAI_BASE_URL` say.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// Sent as the key to servers that need none (llama.cpp's and vLLM's convention): a
/// `Bearer` header with an empty token is malformed and strict servers may reject it.
const NO_KEY: &str = "sk-no-key-required";

/// An unreachable endpoint fails the task in seconds, not after the OS's TCP timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The model options a remote model understands.
const OPTIONS: [&str; 4] = ["base_url", "api_key", "max_output_bytes", "timeout_s"];

/// What one call may bring back unless the agent's `max_output_bytes` says: far beyond any
/// model's answer, short of what would strain a worker.
const DEFAULT_MAX_OUTPUT_BYTES: usize = 8 << 20;
/// How long one call may take, to the end of its stream, unless the agent's `timeout_s`
/// says.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// The most either option may say: 64 MiB, an hour.
const MAX_OUTPUT_BYTES: usize = 64 << 20;
const MAX_TIMEOUT_S: u64 = 3600;

/// What allows an agent's `base_url` to name a private address, said when one is refused.
const ALLOWED_BY: &str = "the worker's --allow-private-model-urls (FLEET_ALLOW_PRIVATE_MODEL_URLS)";

/// The longest part of a remote server's answer kept in an error: enough for its message,
/// too little to read a private service's page through the task's error.
const SAID_CHARS: usize = 200;

/// Which endpoints an agent's remote model may call, and which receive the worker's own
/// key. The operator's endpoints (`OPENAI_BASE_URL`, `--key-host` hosts) are trusted; a
/// `base_url` that an agent names is anyone's choice who can register an agent, so it must
/// be a public address unless the operator allows private ones.
#[derive(Clone, Debug, Default)]
pub struct RemotePolicy {
    /// Hosts besides the worker's own endpoint that may receive its `OPENAI_API_KEY`.
    pub key_hosts: Vec<String>,
    /// Whether an agent's `base_url` may be a loopback, private or link-local address
    /// (`--allow-private-model-urls`).
    pub allow_private: bool,
}

impl RemotePolicy {
    fn targets(&self) -> fleet_outbound::Policy {
        fleet_outbound::Policy::new(self.allow_private, ALLOWED_BY)
    }
}

/// Loads the remote model `id` (`openai:MODEL`) for the model store, on a blocking thread:
/// building its HTTP client (TLS roots) takes a few milliseconds. Makes no request.
pub async fn load(
    id: &str,
    options: &BTreeMap<String, String>,
    policy: Arc<RemotePolicy>,
) -> Result<Arc<dyn Model>> {
    let (model, options) = (id.to_owned(), options.clone());
    tokio::task::spawn_blocking(move || {
        Ok(Arc::new(OpenAiModel::new(&model, &options, &policy)?) as _)
    })
    .await
    .map_err(|e| Error::Internal(format!("loading remote model {id} panicked: {e}")))?
}

/// Where and as whom to call a remote model.
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteConfig {
    /// The model name sent to the endpoint (the id without `openai:`).
    pub model: String,
    /// The API root, e.g. `https://api.openai.com/v1`, without a trailing `/`.
    pub base_url: String,
    api_key: String,
    /// The worker holds a key but did not send it: `base_url` is the agent's choice and not
    /// a host the worker trusts with its key.
    key_withheld: bool,
    /// The targets `base_url` is held to: any address for the operator's own endpoints,
    /// else the worker's policy for agents' URLs.
    targets: fleet_outbound::Policy,
    /// The most one call's answer may hold (text, tool calls, logprobs' tokens), in bytes.
    pub max_output_bytes: usize,
    /// How long one call may take to the end of its answer.
    pub timeout: Duration,
}

impl std::fmt::Debug for RemoteConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("RemoteConfig")
            .field("model", &self.model)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl RemoteConfig {
    /// The settings of model `model_id` (`openai:MODEL`): `base_url` and `api_key` from the
    /// agent's model `options`, else from `env` (`OPENAI_BASE_URL`, `OPENAI_API_KEY`; empty
    /// values count as unset). Without a key only an explicitly set `base_url` is accepted
    /// (a local server); OpenAI itself needs one.
    ///
    /// The worker's own key (`OPENAI_API_KEY`) goes only to the worker's own endpoint
    /// (`OPENAI_BASE_URL`, else OpenAI) or to `key_hosts`: anyone who can register an agent
    /// chooses its `base_url`, and must not receive the worker's credentials there. For
    /// the same reason such a `base_url` must be a public address unless `policy` allows
    /// private ones.
    pub fn resolve(
        model_id: &str,
        options: &BTreeMap<String, String>,
        env: impl Fn(&str) -> Option<String>,
        policy: &RemotePolicy,
    ) -> Result<Self> {
        let key_hosts = policy.key_hosts.as_slice();
        let invalid = |reason: String| Error::RemoteModel { model: model_id.to_owned(), reason };
        let model = model_id.strip_prefix(PREFIX).unwrap_or_default().trim();
        if model.is_empty() {
            return Err(invalid(format!(
                "no model name: write the id as {PREFIX}MODEL, e.g. {PREFIX}gpt-4o-mini"
            )));
        }
        if let Some(key) = options.keys().find(|k| !OPTIONS.contains(&k.as_str())) {
            return Err(invalid(format!(
                "unknown model option {key:?}: a remote model takes base_url, api_key, \
                 max_output_bytes and timeout_s"
            )));
        }
        let set = |v: String| Some(v.trim().to_owned()).filter(|v| !v.is_empty());
        let option = |name: &str| options.get(name).cloned().and_then(set);
        let own_base = env("OPENAI_BASE_URL").and_then(set);
        let agent_base = option("base_url");
        let base_url = agent_base.clone().or_else(|| own_base.clone());
        let own_endpoint = own_base.as_deref().unwrap_or(DEFAULT_BASE_URL);
        let trusted =
            agent_base.as_deref().is_none_or(|url| may_get_key(url, own_endpoint, key_hosts));
        let own_key = env("OPENAI_API_KEY").and_then(set);
        let key_withheld = own_key.is_some() && !trusted && option("api_key").is_none();
        let api_key = match (option("api_key"), own_key.filter(|_| trusted), &base_url) {
            (Some(key), _, _) | (None, Some(key), _) => key,
            (None, None, Some(_)) => NO_KEY.to_owned(),
            (None, None, None) => {
                return Err(invalid(
                    "no api key: set the model option api_key or OPENAI_API_KEY, or point \
                     base_url (or OPENAI_BASE_URL) at a server that needs none"
                        .into(),
                ));
            }
        };
        // async-openai unwraps the header it builds from the key: check it here instead.
        if reqwest::header::HeaderValue::from_str(&format!("Bearer {api_key}")).is_err() {
            return Err(invalid(
                "the api key has characters not allowed in an HTTP header: check api_key or \
                 OPENAI_API_KEY"
                    .into(),
            ));
        }
        let base_url = base_url.unwrap_or_else(|| DEFAULT_BASE_URL.to_owned());
        match reqwest::Url::parse(&base_url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            _ => {
                return Err(invalid(format!(
                    "base_url {base_url:?} is not an http(s) URL: expected e.g. \
                     http://127.0.0.1:8000/v1"
                )));
            }
        }
        // The operator's endpoints (its own, or a host it trusts with its key) may be
        // anywhere; an agent's URL is held to the policy, here for a literal address and at
        // each connection for a name.
        let targets = if trusted {
            fleet_outbound::Policy::any_address(ALLOWED_BY)
        } else {
            policy.targets()
        };
        targets.check(&base_url).map_err(|e| invalid(format!("base_url {e}")))?;
        let number = |name: &str, most: u64| -> Result<Option<u64>> {
            let Some(text) = option(name) else { return Ok(None) };
            match text.parse::<u64>() {
                Ok(n) if (1..=most).contains(&n) => Ok(Some(n)),
                _ => {
                    Err(invalid(format!("{name} {text:?} must be a whole number from 1 to {most}")))
                }
            }
        };
        let max_output_bytes = number("max_output_bytes", MAX_OUTPUT_BYTES as u64)?
            .map_or(DEFAULT_MAX_OUTPUT_BYTES, |n| n as usize);
        let timeout =
            number("timeout_s", MAX_TIMEOUT_S)?.map_or(DEFAULT_TIMEOUT, Duration::from_secs);
        Ok(Self {
            model: model.to_owned(),
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key,
            key_withheld,
            targets,
            max_output_bytes,
            timeout,
        })
    }
}

/// Whether the worker's key may go to `url`: the same scheme, host and port as its own
/// endpoint, or a host the operator named.
fn may_get_key(url: &str, own_endpoint: &str, key_hosts: &[String]) -> bool {
    let (Ok(url), Ok(own)) = (reqwest::Url::parse(url), reqwest::Url::parse(own_endpoint)) else {
        return false;
    };
    let origin = |u: &reqwest::Url| {
        (
            u.scheme().to_owned(),
            u.host_str().map(str::to_ascii_lowercase),
            u.port_or_known_default(),
        )
    };
    origin(&url) == origin(&own)
        || url.host_str().is_some_and(|h| key_hosts.iter().any(|k| k.eq_ignore_ascii_case(h)))
}

/// A model served by an OpenAI-compatible endpoint. Cheap to share: generations are HTTP
/// requests on a pooled client.
pub struct OpenAiModel {
    id: String,
    config: RemoteConfig,
    client: async_openai::Client<OpenAIConfig>,
}

impl std::fmt::Debug for OpenAiModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiModel").field("config", &self.config).finish_non_exhaustive()
    }
}

impl OpenAiModel {
    /// The model `model_id` (`openai:MODEL`) with the agent's model `options`, falling back
    /// to the process environment (see [`RemoteConfig::resolve`]). Makes no request, but
    /// blocks for milliseconds (the HTTP client's TLS setup): async callers use [`load`].
    pub fn new(
        model_id: &str,
        options: &BTreeMap<String, String>,
        policy: &RemotePolicy,
    ) -> Result<Self> {
        let env = |var: &str| std::env::var(var).ok();
        let config = RemoteConfig::resolve(model_id, options, env, policy)?;
        Self::with_config(model_id, config)
    }

    /// The model `model_id` at the endpoint `config`.
    pub fn with_config(model_id: &str, config: RemoteConfig) -> Result<Self> {
        // Our own reqwest client: `Client::new` panics where `build` returns an error. No
        // redirects (an API answers where it is); an agent's URL resolves to public
        // addresses only (unless allowed), without a proxy, which would resolve it itself.
        let builder = if config.targets.allows_private() {
            reqwest::Client::builder().redirect(reqwest::redirect::Policy::none())
        } else {
            config.targets.client()
        };
        // The stream's own deadline (in `decode`) says what happened; this one, a little
        // later, bounds the calls without a stream (embeddings) and any the stream misses.
        let builder = builder.timeout(config.timeout + Duration::from_secs(5));
        let http =
            builder.connect_timeout(CONNECT_TIMEOUT).build().map_err(|e| Error::RemoteModel {
                model: model_id.to_owned(),
                reason: format!("cannot build an HTTP client: {}", fleet_outbound::error_chain(&e)),
            })?;
        let openai = OpenAIConfig::new()
            .with_api_base(config.base_url.clone())
            .with_api_key(config.api_key.clone());
        Ok(Self {
            id: model_id.to_owned(),
            config,
            client: async_openai::Client::build(http, openai),
        })
    }

    /// The endpoint's settings.
    pub fn config(&self) -> &RemoteConfig {
        &self.config
    }

    fn error(&self, e: OpenAIError) -> fleet_inference::Error {
        api_error(&self.id, &self.config, e)
    }
}

impl Model for OpenAiModel {
    fn id(&self) -> &str {
        &self.id
    }

    /// Builds the request's JSON body; nothing is sent until the stream is polled.
    fn generates_in_place(&self) -> bool {
        true
    }

    fn generate(&self, request: GenerateRequest) -> fleet_inference::Result<Generation> {
        let body = chat_request(&self.config.model, &request)?;
        let client = self.client.clone();
        let (id, config) = (self.id.clone(), self.config.clone());
        // Nothing is sent until the stream is polled; dropping it drops the request.
        let generation = futures::stream::once(async move {
            match client.chat().create_stream(body).await {
                Ok(chunks) => decode(chunks, id, config).boxed(),
                Err(e) => futures::stream::iter([Err(api_error(&id, &config, e))]).boxed(),
            }
        })
        .flatten();
        Ok(generation.boxed())
    }

    /// Blocks on the runtime's handle: `Model::embed` runs on a blocking thread of the
    /// worker's runtime, where `Handle::block_on` is allowed and the runtime drives the
    /// connection (called on a runtime thread it panics rather than deadlock; with no
    /// runtime it is an error). Vectors are L2-normalised here: not every server does.
    fn embed(&self, texts: &[&str]) -> fleet_inference::Result<Embeddings> {
        if texts.is_empty() {
            return Ok(Embeddings::default());
        }
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            fleet_inference::Error::Engine(format!(
                "remote model {} embeds only from a thread of a tokio runtime",
                self.id
            ))
        })?;
        let request = CreateEmbeddingRequest {
            model: self.config.model.clone(),
            input: EmbeddingInput::StringArray(texts.iter().map(|t| (*t).to_owned()).collect()),
            encoding_format: None,
            user: None,
            dimensions: None,
        };
        let mut response =
            handle.block_on(self.client.embeddings().create(request)).map_err(|e| self.error(e))?;
        if response.data.len() != texts.len() {
            return Err(fleet_inference::Error::Engine(format!(
                "remote model {} returned {} embeddings for {} texts",
                self.id,
                response.data.len(),
                texts.len()
            )));
        }
        response.data.sort_by_key(|e| e.index);
        let vectors = response.data.into_iter().map(|e| l2_normalized(e.embedding)).collect();
        Ok(Embeddings { vectors, prompt_tokens: response.usage.prompt_tokens as usize })
    }
}

fn l2_normalized(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// The streaming chat completion for `request` on `model`. Settings OpenAI's API lacks
/// (top_k, min_p, repetition_penalty) are not sent.
#[allow(deprecated)] // `max_tokens` and `seed`: deprecated by OpenAI, the ones servers know
pub fn chat_request(
    model: &str,
    request: &GenerateRequest,
) -> fleet_inference::Result<CreateChatCompletionRequest> {
    if request.prompt.is_some() {
        return Err(fleet_inference::Error::InvalidRequest(format!(
            "model {model} is a chat model behind an OpenAI-compatible endpoint and does not \
             continue raw text: send chat messages"
        )));
    }
    let messages = request.messages.iter().map(message).collect::<fleet_inference::Result<_>>()?;
    let tools = request
        .tools
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            serde_json::from_value::<ChatCompletionTools>(tool.clone()).map_err(|e| {
                fleet_inference::Error::InvalidRequest(format!(
                    "tool {i} is not an OpenAI tool definition: {e}"
                ))
            })
        })
        .collect::<fleet_inference::Result<Vec<_>>>()?;
    let response_format = match &request.format {
        None => None,
        Some(OutputFormat::JsonObject) => Some(ResponseFormat::JsonObject),
        Some(OutputFormat::JsonSchema(schema)) => Some(ResponseFormat::JsonSchema {
            json_schema: ResponseFormatJsonSchema {
                name: "answer".into(),
                schema: schema.clone(),
                strict: Some(true),
                description: None,
            },
        }),
        Some(OutputFormat::Regex(_) | OutputFormat::Lark(_)) => {
            return Err(fleet_inference::Error::InvalidRequest(
                "OpenAI-compatible endpoints take JSON output formats only, not regexes or \
                 grammars"
                    .into(),
            ));
        }
    };
    Ok(CreateChatCompletionRequest {
        model: model.to_owned(),
        messages,
        stream: Some(true),
        stream_options: Some(ChatCompletionStreamOptions {
            include_usage: Some(true),
            include_obfuscation: None,
        }),
        // `max_completion_tokens` is newer; vLLM, llama.cpp and older servers know this one.
        max_tokens: request.max_tokens,
        temperature: request.temperature,
        top_p: request.top_p,
        presence_penalty: request.presence_penalty,
        frequency_penalty: request.frequency_penalty,
        logprobs: request.logprobs.map(|_| true),
        top_logprobs: request.logprobs.map(|n| n.min(20) as u8),
        // The top bit is dropped: some servers reject negative seeds, and the mapping stays
        // deterministic.
        seed: request.seed.map(|s| (s & i64::MAX as u64) as i64),
        stop: (!request.stop.is_empty())
            .then(|| StopConfiguration::StringArray(request.stop.clone())),
        tool_choice: (!tools.is_empty()).then(|| tool_choice(&request.tool_choice)),
        tools: (!tools.is_empty()).then_some(tools),
        response_format,
        ..Default::default()
    })
}

/// A request's tool choice in OpenAI's shape.
fn tool_choice(choice: &ToolChoice) -> ChatCompletionToolChoiceOption {
    match choice {
        ToolChoice::Auto => ChatCompletionToolChoiceOption::Mode(ToolChoiceOptions::Auto),
        ToolChoice::Required => ChatCompletionToolChoiceOption::Mode(ToolChoiceOptions::Required),
        ToolChoice::Function(name) => {
            ChatCompletionToolChoiceOption::Function(ChatCompletionNamedToolChoice {
                function: FunctionName { name: name.clone() },
            })
        }
    }
}

/// One conversation message in OpenAI's shape.
fn message(m: &ChatMessage) -> fleet_inference::Result<ChatCompletionRequestMessage> {
    let text = m.content.clone();
    Ok(match m.role {
        Role::System => ChatCompletionRequestMessage::System(ChatCompletionRequestSystemMessage {
            content: ChatCompletionRequestSystemMessageContent::Text(text),
            name: None,
        }),
        Role::User => ChatCompletionRequestMessage::User(ChatCompletionRequestUserMessage {
            content: ChatCompletionRequestUserMessageContent::Text(text),
            name: None,
        }),
        Role::Assistant => {
            let calls: Vec<_> = m
                .tool_calls
                .iter()
                .map(|c| {
                    ChatCompletionMessageToolCalls::Function(ChatCompletionMessageToolCall {
                        id: c.id.clone(),
                        function: FunctionCall {
                            name: c.name.clone(),
                            arguments: c.arguments.clone(),
                        },
                    })
                })
                .collect();
            // An assistant turn that only called tools has no content, not empty content.
            let content = (!text.is_empty() || calls.is_empty())
                .then_some(ChatCompletionRequestAssistantMessageContent::Text(text));
            ChatCompletionRequestMessage::Assistant(ChatCompletionRequestAssistantMessage {
                content,
                tool_calls: (!calls.is_empty()).then_some(calls),
                ..Default::default()
            })
        }
        Role::Tool => {
            let Some(call_id) = m.tool_call_id.clone() else {
                return Err(fleet_inference::Error::InvalidRequest(
                    "a tool message has no tool_call_id: it must name the call it answers".into(),
                ));
            };
            ChatCompletionRequestMessage::Tool(ChatCompletionRequestToolMessage {
                content: ChatCompletionRequestToolMessageContent::Text(text),
                tool_call_id: call_id,
            })
        }
    })
}

/// The generation events of a chunk stream, ending with its error or its `Done`.
fn decode(
    chunks: ChatCompletionResponseStream,
    id: String,
    config: RemoteConfig,
) -> impl futures::Stream<Item = fleet_inference::Result<GenerationEvent>> + Send {
    struct State {
        chunks: Option<ChatCompletionResponseStream>,
        decoder: ChunkDecoder,
        ready: VecDeque<fleet_inference::Result<GenerationEvent>>,
        id: String,
        config: RemoteConfig,
        deadline: tokio::time::Instant,
    }
    let state = State {
        chunks: Some(chunks),
        decoder: ChunkDecoder::default(),
        ready: VecDeque::new(),
        deadline: tokio::time::Instant::now() + config.timeout,
        id,
        config,
    };
    futures::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(event) = s.ready.pop_front() {
                return Some((event, s));
            }
            // Taken once the stream has ended or failed, so nothing follows the last item.
            let chunks = s.chunks.as_mut()?;
            let Ok(next) = tokio::time::timeout_at(s.deadline, chunks.next()).await else {
                s.chunks = None;
                let message = format!(
                    "remote model {} at {} did not finish its answer within {} s: cut off (the \
                     agent's model option timeout_s)",
                    s.id,
                    s.config.base_url,
                    s.config.timeout.as_secs()
                );
                s.ready.push_back(Err(fleet_inference::Error::Unavailable(message)));
                continue;
            };
            match next {
                Some(Ok(chunk)) => {
                    s.ready.extend(s.decoder.push(chunk).into_iter().map(Ok));
                    if s.decoder.bytes > s.config.max_output_bytes {
                        s.chunks = None;
                        s.ready.push_back(Err(fleet_inference::Error::Engine(format!(
                            "remote model {} at {} sent more than {} bytes: cut off (the \
                             agent's model option max_output_bytes)",
                            s.id, s.config.base_url, s.config.max_output_bytes
                        ))));
                    }
                }
                Some(Err(e)) => {
                    s.chunks = None;
                    s.ready.push_back(Err(api_error(&s.id, &s.config, e)));
                }
                None => {
                    s.chunks = None;
                    match std::mem::take(&mut s.decoder).finish() {
                        Ok(events) => s.ready.extend(events.into_iter().map(Ok)),
                        Err(e) => s.ready.push_back(Err(e)),
                    }
                }
            }
        }
    })
}

/// Turns streamed chat-completion chunks into generation events: content as deltas right
/// away; tool calls, assembled from their pieces, and `Done` at the end.
#[derive(Debug, Default)]
pub struct ChunkDecoder {
    tool_calls: ToolCallDeltas,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    deltas: u32,
    /// What the answer has held so far: text, tool calls' pieces, logprobs' tokens.
    pub bytes: usize,
}

impl ChunkDecoder {
    /// Takes one chunk; returns the text deltas it holds. Only the first choice counts
    /// (one is asked for).
    pub fn push(&mut self, chunk: CreateChatCompletionStreamResponse) -> Vec<GenerationEvent> {
        if let Some(usage) = chunk.usage {
            self.usage = Some(Usage {
                prompt_tokens: usage.prompt_tokens,
                cached_tokens: usage
                    .prompt_tokens_details
                    .and_then(|d| d.cached_tokens)
                    .unwrap_or(0),
                completion_tokens: usage.completion_tokens,
                reasoning_tokens: usage
                    .completion_tokens_details
                    .and_then(|d| d.reasoning_tokens)
                    .unwrap_or(0),
                finish_reason: FinishReason::Stop,
            });
        }
        let mut events = Vec::new();
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            // Each token's logprobs come before the text holding it, as local models send them.
            for l in choice.logprobs.and_then(|l| l.content).into_iter().flatten() {
                self.bytes += l.token.len()
                    + l.top_logprobs.iter().map(|t| t.token.len() + 8).sum::<usize>()
                    + 8;
                let top = l.top_logprobs.into_iter().map(|t| (t.token, t.logprob)).collect();
                let logprob = TokenLogprob { token: l.token, logprob: l.logprob, top };
                events.push(GenerationEvent::Logprobs(logprob));
            }
            // A refusal is the model's answer in OpenAI's separate field.
            for text in [choice.delta.content, choice.delta.refusal].into_iter().flatten() {
                if !text.is_empty() {
                    self.bytes += text.len();
                    self.deltas += 1;
                    events.push(GenerationEvent::Delta(text));
                }
            }
            for call in choice.delta.tool_calls.iter().flatten() {
                let function = call.function.as_ref();
                self.bytes += 16
                    + call.id.as_ref().map_or(0, String::len)
                    + function.and_then(|f| f.name.as_ref()).map_or(0, String::len)
                    + function.and_then(|f| f.arguments.as_ref()).map_or(0, String::len);
                self.tool_calls.push(call);
            }
            if let Some(reason) = choice.finish_reason {
                self.finish = Some(match reason {
                    async_openai::types::chat::FinishReason::Length => FinishReason::Length,
                    _ => FinishReason::Stop,
                });
            }
        }
        events
    }

    /// The stream ended: the tool calls, then `Done`; an error if no chunk said why the
    /// generation finished (the server or the connection broke off).
    pub fn finish(self) -> fleet_inference::Result<Vec<GenerationEvent>> {
        let Some(finish_reason) = self.finish else {
            return Err(fleet_inference::Error::Engine(
                "the remote model's stream ended without a finish reason".into(),
            ));
        };
        // Servers that ignore `stream_options.include_usage` send no usage: the prompt is
        // then counted as 0 tokens and each content delta as one token (servers stream
        // about one token per chunk).
        let usage =
            self.usage.unwrap_or(Usage { completion_tokens: self.deltas, ..Usage::default() });
        let mut events: Vec<_> =
            self.tool_calls.finish().into_iter().map(GenerationEvent::ToolCall).collect();
        events.push(GenerationEvent::Done(Usage { finish_reason, ..usage }));
        Ok(events)
    }
}

/// Tool calls streamed in pieces, by their index: the id and name come first, the
/// arguments in fragments after.
#[derive(Debug, Default)]
pub struct ToolCallDeltas {
    calls: BTreeMap<u32, ToolCall>,
}

impl ToolCallDeltas {
    /// Adds one piece of a call.
    pub fn push(&mut self, piece: &ChatCompletionMessageToolCallChunk) {
        let call = self.calls.entry(piece.index).or_insert_with(|| ToolCall {
            id: String::new(),
            name: String::new(),
            arguments: String::new(),
        });
        // Some servers repeat the id and name on every piece: the first one stands.
        if let Some(id) = piece.id.as_deref().filter(|id| !id.is_empty())
            && call.id.is_empty()
        {
            call.id = id.to_owned();
        }
        if let Some(function) = &piece.function {
            if let Some(name) = function.name.as_deref().filter(|n| !n.is_empty())
                && call.name.is_empty()
            {
                call.name = name.to_owned();
            }
            if let Some(arguments) = &function.arguments {
                call.arguments.push_str(arguments);
            }
        }
    }

    /// The calls in index order. A call without an id gets `call_N` (the id is how the tool
    /// result names it in the next round); arguments never given are `{}`.
    pub fn finish(self) -> Vec<ToolCall> {
        self.calls
            .into_iter()
            .map(|(index, mut call)| {
                if call.id.is_empty() {
                    call.id = format!("call_{index}");
                }
                if call.arguments.trim().is_empty() {
                    call.arguments = "{}".into();
                }
                call
            })
            .collect()
    }
}

/// An error of the remote model `id` at `config`'s endpoint as the inference crate's error:
/// rejected requests (400, 404, 422) are invalid requests, a 429 busy, an endpoint down or
/// out of reach (502, 503, 504, no connection, timed out) unavailable, everything else an engine
/// failure; so the cluster's clients see what they would from a local model (OpenAI clients
/// retry 429s and 503s). The server's own message and the HTTP status are kept.
fn api_error(id: &str, config: &RemoteConfig, e: OpenAIError) -> fleet_inference::Error {
    use fleet_inference::Error::{Busy, Engine, InvalidRequest, Unavailable};
    let base_url = &config.base_url;
    match e {
        OpenAIError::ApiError(response) => {
            let status = response.status_code;
            let said = clipped(&response.api_error.to_string());
            let mut message = format!("remote model {id} at {base_url} answered {status}: {said}");
            if config.key_withheld && matches!(status.as_u16(), 401 | 403) {
                message.push_str(
                    " (the worker's own OPENAI_API_KEY goes only to OPENAI_BASE_URL and the \
                     worker's --key-host hosts: give the agent the model option api_key)",
                );
            }
            match status.as_u16() {
                400 | 404 | 422 => InvalidRequest(message),
                429 => Busy(message),
                502..=504 => Unavailable(message),
                _ => Engine(message),
            }
        }
        // Out of reach for now (retry); a bad URL or certificate is for the operator to fix.
        OpenAIError::Reqwest(e) if e.is_connect() || e.is_timeout() => Unavailable(format!(
            "cannot reach remote model {id} at {base_url}: {}",
            fleet_outbound::error_chain(&e)
        )),
        OpenAIError::Reqwest(e) => Engine(format!(
            "cannot reach remote model {id} at {base_url}: {}",
            fleet_outbound::error_chain(&e)
        )),
        // Servers report errors met mid-stream as an `{"error": ...}` event.
        OpenAIError::JSONDeserialize(e, content) => {
            match serde_json::from_str::<WrappedError>(&content) {
                Ok(wrapped) => Engine(format!(
                    "remote model {id} at {base_url} failed: {}",
                    clipped(&wrapped.error.to_string())
                )),
                Err(_) => Engine(format!(
                    "remote model {id} at {base_url} sent a response that does not parse \
                     ({e}): {}",
                    clipped(&content)
                )),
            }
        }
        OpenAIError::InvalidArgument(reason) => InvalidRequest(reason),
        other => Engine(format!("remote model {id} at {base_url} failed: {other}")),
    }
}

/// A short, printable summary of what a server said: a proxy's 502 may be a whole HTML
/// page, and a private service's answer must not be readable through a task's error.
fn clipped(said: &str) -> String {
    fleet_outbound::summary(said, SAID_CHARS)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn options(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |var| pairs.iter().find(|(k, _)| *k == var).map(|(_, v)| (*v).to_owned())
    }

    fn resolve_error(
        id: &str,
        o: &[(&str, &str)],
        e: &'static [(&'static str, &'static str)],
    ) -> String {
        RemoteConfig::resolve(id, &options(o), env(e), &allow_private())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn options_win_over_the_environment() -> anyhow::Result<()> {
        let vars = &[("OPENAI_BASE_URL", "http://env:1/v1"), ("OPENAI_API_KEY", "env-key")];
        let c = RemoteConfig::resolve(
            "openai:m",
            &options(&[("base_url", "http://opt:2/v1/"), ("api_key", "opt-key")]),
            env(vars),
            &RemotePolicy::default(),
        )?;
        assert_eq!(
            (c.model.as_str(), c.base_url.as_str(), c.api_key.as_str()),
            ("m", "http://opt:2/v1", "opt-key")
        );
        // Unset and empty options fall back to the environment.
        let c =
            RemoteConfig::resolve("openai:m", &options(&[("base_url", " ")]), env(vars), &none())?;
        assert_eq!((c.base_url.as_str(), c.api_key.as_str()), ("http://env:1/v1", "env-key"));
        // OpenAI itself by default, with a key.
        let c = RemoteConfig::resolve(
            "openai:gpt-4o",
            &BTreeMap::new(),
            env(&[("OPENAI_API_KEY", "sk-1\n")]),
            &none(),
        )?;
        assert_eq!((c.base_url.as_str(), c.api_key.as_str()), (DEFAULT_BASE_URL, "sk-1"));
        assert!(!format!("{c:?}").contains("sk-1"), "the key stays out of Debug");
        Ok(())
    }

    #[test]
    fn a_key_is_optional_only_for_an_explicit_server() -> anyhow::Result<()> {
        let local = RemoteConfig::resolve(
            "openai:qwen",
            &options(&[("base_url", "http://127.0.0.1:8080/v1")]),
            env(&[]),
            &allow_private(),
        )?;
        assert_eq!(local.api_key, NO_KEY);
        let local = RemoteConfig::resolve(
            "openai:qwen",
            &BTreeMap::new(),
            env(&[("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1")]),
            &none(),
        )?;
        assert_eq!(local.api_key, NO_KEY);
        let error = resolve_error("openai:gpt-4o", &[], &[]);
        assert!(error.contains("no api key") && error.contains("OPENAI_API_KEY"), "{error}");
        Ok(())
    }

    #[test]
    fn the_workers_key_goes_only_to_its_own_endpoint_or_allowed_hosts() -> anyhow::Result<()> {
        let resolve = |vars: &'static [(&'static str, &'static str)], url: &str, hosts: &[&str]| {
            let key_hosts: Vec<String> = hosts.iter().map(|h| (*h).to_owned()).collect();
            let policy = RemotePolicy { key_hosts, allow_private: true };
            RemoteConfig::resolve("openai:m", &options(&[("base_url", url)]), env(vars), &policy)
        };
        let own =
            &[("OPENAI_BASE_URL", "https://llm.internal:8443/v1"), ("OPENAI_API_KEY", "sk-own")];
        let openai = &[("OPENAI_API_KEY", "sk-own")];
        for (vars, url, hosts, key) in [
            // The worker's own endpoint, written another way: same scheme, host and port.
            (&own[..], "https://LLM.internal:8443/other/v1", &[][..], "sk-own"),
            (openai, "https://api.openai.com/v1", &[], "sk-own"),
            // Anywhere else the agent's server gets no key...
            (own, "http://attacker.example:8443/v1", &[], NO_KEY),
            (own, "http://llm.internal:8443/v1", &[], NO_KEY),
            (openai, "http://127.0.0.1:9/v1", &[], NO_KEY),
            // ...unless the operator allowed its host.
            (openai, "http://gpu-box:8000/v1", &["gpu-box"], "sk-own"),
        ] {
            let c = resolve(vars, url, hosts)?;
            assert_eq!(c.api_key, key, "{url} with {hosts:?}");
            assert_eq!(c.key_withheld, key == NO_KEY, "{url}");
        }
        // An agent that brings its own key sends it wherever it points.
        let c = RemoteConfig::resolve(
            "openai:m",
            &options(&[("base_url", "http://elsewhere/v1"), ("api_key", "sk-agent")]),
            env(own),
            &none(),
        )?;
        assert_eq!((c.api_key.as_str(), c.key_withheld), ("sk-agent", false));
        // A 401 from a server that got no key says why.
        let c = resolve(openai, "http://127.0.0.1:9/v1", &[])?;
        let response = OpenAIError::ApiError(async_openai::error::ApiErrorResponse {
            status_code: reqwest::StatusCode::UNAUTHORIZED,
            api_error: async_openai::error::ApiError {
                message: "no key".into(),
                ..Default::default()
            },
        });
        let error = api_error("openai:m", &c, response).to_string();
        assert!(error.contains("--key-host") && error.contains("api_key"), "{error}");
        Ok(())
    }

    fn at(base_url: &str) -> RemoteConfig {
        RemoteConfig {
            model: "m".into(),
            base_url: base_url.into(),
            api_key: NO_KEY.into(),
            key_withheld: false,
            targets: fleet_outbound::Policy::any_address(ALLOWED_BY),
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// A runaway server: answers that never end, or never stop growing, are cut off with
    /// an error that names the agent's option for it.
    #[tokio::test]
    async fn a_runaway_stream_is_cut_by_size_and_by_time() -> anyhow::Result<()> {
        let last = |events: Vec<fleet_inference::Result<GenerationEvent>>| {
            events.into_iter().last().and_then(Result::err).map(|e| e.to_string())
        };
        let endless =
            futures::stream::repeat_with(|| Ok(delta(json!({"content": "x".repeat(1000)}), None)));
        let config = RemoteConfig { max_output_bytes: 10_000, ..at("http://h/v1") };
        let events: Vec<_> = decode(Box::pin(endless), "openai:m".into(), config).collect().await;
        assert!(events.len() <= 12, "{} events before the cut", events.len());
        let error = last(events).unwrap_or_default();
        assert!(error.contains("more than 10000 bytes") && error.contains("max_output_bytes"));

        let silent = futures::stream::pending();
        let config = RemoteConfig { timeout: Duration::from_millis(50), ..at("http://h/v1") };
        let events: Vec<_> = decode(Box::pin(silent), "openai:m".into(), config).collect().await;
        let error = last(events).unwrap_or_default();
        assert!(error.contains("timeout_s"), "{error}");

        let options =
            |pairs: &[(&str, &str)]| options(&[&[("base_url", "http://h/v1")], pairs].concat());
        let c = RemoteConfig::resolve(
            "openai:m",
            &options(&[("timeout_s", "30"), ("max_output_bytes", "1000")]),
            env(&[]),
            &allow_private(),
        )?;
        assert_eq!((c.timeout, c.max_output_bytes), (Duration::from_secs(30), 1000));
        for bad in
            [("timeout_s", "0"), ("timeout_s", "soon"), ("max_output_bytes", "1000000000000")]
        {
            let refused =
                RemoteConfig::resolve("openai:m", &options(&[bad]), env(&[]), &allow_private());
            assert!(refused.is_err(), "{bad:?} accepted");
        }
        Ok(())
    }

    fn none() -> RemotePolicy {
        RemotePolicy::default()
    }

    fn allow_private() -> RemotePolicy {
        RemotePolicy { allow_private: true, ..RemotePolicy::default() }
    }

    #[test]
    fn an_agents_private_base_url_is_refused_unless_allowed() -> anyhow::Result<()> {
        let own = &[("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1")];
        let base = |url: &str| options(&[("base_url", url)]);
        for url in ["http://127.1:9/v1", "http://2130706433:9/v1", "http://[::ffff:10.0.0.1]/v1"] {
            let refused = RemoteConfig::resolve("openai:m", &base(url), env(&[]), &none());
            let error = refused.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(error.contains("--allow-private-model-urls"), "{url}: {error}");
            RemoteConfig::resolve("openai:m", &base(url), env(&[]), &allow_private())?;
        }
        // The operator's own endpoint, and a host it named, may be private.
        RemoteConfig::resolve("openai:m", &BTreeMap::new(), env(own), &none())?;
        RemoteConfig::resolve("openai:m", &base("http://127.0.0.1:8000/x/v1"), env(own), &none())?;
        let named = RemotePolicy { key_hosts: vec!["10.0.0.5".into()], allow_private: false };
        RemoteConfig::resolve("openai:m", &base("http://10.0.0.5/v1"), env(&[]), &named)?;
        Ok(())
    }

    #[test]
    fn bad_settings_are_clear_errors() {
        let key = &[("OPENAI_API_KEY", "k")];
        for (id, o, expected) in [
            ("openai:", &[][..], "no model name"),
            ("openai: ", &[], "no model name"),
            ("openai:m", &[("temperature", "1")], "unknown model option \"temperature\""),
            ("openai:m", &[("base_url", "localhost:8000")], "is not an http(s) URL"),
            ("openai:m", &[("base_url", "not a url")], "is not an http(s) URL"),
            ("openai:m", &[("api_key", "a\nb")], "not allowed in an HTTP header"),
        ] {
            let error = resolve_error(id, o, key);
            assert!(error.contains(expected), "{id} {o:?}: {error}");
            assert!(error.starts_with("cannot use remote model"), "{error}");
        }
    }

    fn conversation() -> GenerateRequest {
        let call = ToolCall {
            id: "call_1".into(),
            name: "weather".into(),
            arguments: r#"{"city":"Oslo"}"#.into(),
        };
        GenerateRequest {
            messages: vec![
                ChatMessage::new(Role::System, "be brief"),
                ChatMessage::new(Role::User, "weather in Oslo?"),
                ChatMessage { tool_calls: vec![call], ..ChatMessage::new(Role::Assistant, "") },
                ChatMessage::tool_result("call_1", "rain"),
                ChatMessage::new(Role::Assistant, "It rains."),
            ],
            max_tokens: Some(64),
            temperature: Some(0.5),
            top_p: Some(0.9),
            top_k: Some(40),
            seed: Some(u64::MAX),
            stop: vec!["\n\n".into()],
            logprobs: Some(2),
            tools: vec![json!({"type": "function", "function": {
                "name": "weather",
                "description": "the weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}
            }})],
            ..Default::default()
        }
    }

    #[test]
    fn requests_map_to_openai_chat_completions() -> anyhow::Result<()> {
        let body = serde_json::to_value(chat_request("gpt-4o", &conversation())?)?;
        assert_eq!(
            body,
            json!({
                "model": "gpt-4o",
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "weather in Oslo?"},
                    {"role": "assistant", "tool_calls": [{"type": "function", "id": "call_1",
                        "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
                    {"role": "tool", "content": "rain", "tool_call_id": "call_1"},
                    {"role": "assistant", "content": "It rains."},
                ],
                "stream": true,
                "stream_options": {"include_usage": true},
                "max_tokens": 64,
                "temperature": 0.5,
                "top_p": 0.8999999761581421,
                "seed": i64::MAX,
                "stop": ["\n\n"],
                "logprobs": true,
                "top_logprobs": 2,
                "tools": [{"type": "function", "function": {
                    "name": "weather",
                    "description": "the weather in a city",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}
                }}],
                "tool_choice": "auto",
            })
        );
        // Unset settings are left to the server; no stop or tools means none sent.
        let bare = GenerateRequest {
            messages: vec![ChatMessage::new(Role::User, "hi")],
            ..Default::default()
        };
        let body = serde_json::to_value(chat_request("m", &bare)?)?;
        let keys: Vec<_> =
            body.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
        assert_eq!(keys, ["messages", "model", "stream", "stream_options"]);
        Ok(())
    }

    #[test]
    fn malformed_tools_and_tool_messages_are_invalid_requests() {
        let bad_tool = GenerateRequest { tools: vec![json!({"name": "x"})], ..conversation() };
        let error = chat_request("m", &bad_tool).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("tool 0 is not an OpenAI tool definition"), "{error}");
        let orphan = GenerateRequest {
            messages: vec![ChatMessage::new(Role::Tool, "rain")],
            ..Default::default()
        };
        let error = chat_request("m", &orphan).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("no tool_call_id"), "{error}");
    }

    /// A chunk as servers send it, with only the fields given filled in.
    fn chunk(
        choices: serde_json::Value,
        usage: serde_json::Value,
    ) -> CreateChatCompletionStreamResponse {
        let chunk = json!({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": choices, "usage": usage,
        });
        serde_json::from_value(chunk).unwrap_or_else(|e| panic!("test chunk does not parse: {e}"))
    }

    fn delta(delta: serde_json::Value, finish: Option<&str>) -> CreateChatCompletionStreamResponse {
        chunk(json!([{"index": 0, "delta": delta, "finish_reason": finish}]), json!(null))
    }

    fn decode_all(
        chunks: Vec<CreateChatCompletionStreamResponse>,
    ) -> fleet_inference::Result<Vec<GenerationEvent>> {
        let mut decoder = ChunkDecoder::default();
        let mut events: Vec<_> = chunks.into_iter().flat_map(|c| decoder.push(c)).collect();
        events.extend(decoder.finish()?);
        Ok(events)
    }

    #[test]
    fn logprobs_come_before_the_text_they_belong_to() -> anyhow::Result<()> {
        let lp = |token: &str, logprob: f32| {
            json!({"token": token, "logprob": logprob,
            "bytes": token.as_bytes(), "top_logprobs": [{"token": token, "logprob": logprob}]})
        };
        let events = decode_all(vec![
            chunk(
                json!([{"index": 0, "delta": {"content": "Hi!"},
                    "logprobs": {"content": [lp("Hi", -0.5), lp("!", -1.0)]}}]),
                json!(null),
            ),
            delta(json!({}), Some("stop")),
        ])?;
        let logprob = |token: &str, logprob: f32| {
            GenerationEvent::Logprobs(TokenLogprob {
                token: token.into(),
                logprob,
                top: vec![(token.into(), logprob)],
            })
        };
        assert_eq!(
            events[..3],
            [logprob("Hi", -0.5), logprob("!", -1.0), GenerationEvent::Delta("Hi!".into())]
        );
        Ok(())
    }

    #[test]
    fn content_streams_as_deltas_then_done_with_the_servers_usage() -> anyhow::Result<()> {
        let events = decode_all(vec![
            delta(json!({"role": "assistant", "content": ""}), None),
            delta(json!({"content": "Hel"}), None),
            delta(json!({"content": "lo"}), None),
            delta(json!({}), Some("length")),
            chunk(
                json!([]),
                json!({"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11,
                       "prompt_tokens_details": {"cached_tokens": 8},
                       "completion_tokens_details": {"reasoning_tokens": 1}}),
            ),
        ])?;
        assert_eq!(
            events,
            [
                GenerationEvent::Delta("Hel".into()),
                GenerationEvent::Delta("lo".into()),
                GenerationEvent::Done(Usage {
                    prompt_tokens: 9,
                    cached_tokens: 8,
                    completion_tokens: 2,
                    reasoning_tokens: 1,
                    finish_reason: FinishReason::Length
                }),
            ]
        );
        Ok(())
    }

    #[test]
    fn without_usage_deltas_are_counted_and_a_missing_finish_is_an_error() -> anyhow::Result<()> {
        let events = decode_all(vec![
            delta(json!({"content": "a"}), None),
            delta(json!({"content": "b"}), None),
            delta(json!({"content": "c"}), Some("stop")),
        ])?;
        assert_eq!(
            events.last(),
            Some(&GenerationEvent::Done(Usage {
                prompt_tokens: 0,
                cached_tokens: 0,
                completion_tokens: 3,
                reasoning_tokens: 0,
                finish_reason: FinishReason::Stop
            }))
        );
        let error = decode_all(vec![delta(json!({"content": "a"}), None)])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("ended without a finish reason"), "{error}");
        Ok(())
    }

    #[test]
    fn tool_calls_are_assembled_from_pieces_by_index() -> anyhow::Result<()> {
        let piece = |index: u32, id: Option<&str>, name: Option<&str>, args: &str| {
            let mut function = json!({"arguments": args});
            if let Some(name) = name {
                function["name"] = json!(name);
            }
            let mut call = json!({"index": index, "function": function});
            if let Some(id) = id {
                call["id"] = json!(id);
                call["type"] = json!("function");
            }
            delta(json!({"tool_calls": [call]}), None)
        };
        let events = decode_all(vec![
            delta(json!({"content": "Checking."}), None),
            piece(0, Some("call_a"), Some("weather"), ""),
            piece(1, None, Some("time"), ""), // no id: one is made up
            piece(0, None, None, "{\"city\":"),
            piece(1, None, None, "{\"tz\":\"CET\"}"),
            piece(0, Some("call_a"), Some("weather"), "\"Oslo\"}"), // repeated id and name
            piece(2, Some("call_c"), Some("ping"), ""),             // never given arguments
            delta(json!({}), Some("tool_calls")),
        ])?;
        let call = |id: &str, name: &str, arguments: &str| {
            GenerationEvent::ToolCall(ToolCall {
                id: id.into(),
                name: name.into(),
                arguments: arguments.into(),
            })
        };
        assert_eq!(
            events,
            [
                GenerationEvent::Delta("Checking.".into()),
                call("call_a", "weather", "{\"city\":\"Oslo\"}"),
                call("call_1", "time", "{\"tz\":\"CET\"}"),
                call("call_c", "ping", "{}"),
                GenerationEvent::Done(Usage {
                    prompt_tokens: 0,
                    cached_tokens: 0,
                    completion_tokens: 1,
                    reasoning_tokens: 0,
                    finish_reason: FinishReason::Stop
                }),
            ]
        );
        Ok(())
    }

    #[test]
    fn api_errors_keep_the_status_and_the_servers_message() {
        let response = |status: u16, message: &str| {
            OpenAIError::ApiError(async_openai::error::ApiErrorResponse {
                status_code: reqwest::StatusCode::from_u16(status)
                    .unwrap_or(reqwest::StatusCode::IM_A_TEAPOT),
                api_error: async_openai::error::ApiError {
                    message: message.into(),
                    r#type: Some("invalid_request_error".into()),
                    ..Default::default()
                },
            })
        };
        let error = api_error("openai:m", &at("http://h/v1"), response(404, "no such model"));
        assert!(matches!(error, fleet_inference::Error::InvalidRequest(_)), "{error}");
        assert!(
            error
                .to_string()
                .contains("answered 404 Not Found: invalid_request_error: no such model")
        );
        let error = api_error("openai:m", &at("http://h/v1"), response(401, "bad key"));
        assert!(matches!(error, fleet_inference::Error::Engine(_)), "{error}");
        // What clients should retry stays retryable: busy upstream, upstream down.
        let error = api_error("openai:m", &at("http://h/v1"), response(429, "slow down"));
        assert!(matches!(error, fleet_inference::Error::Busy(_)), "{error}");
        for status in [502, 503, 504] {
            let error = api_error("openai:m", &at("http://h/v1"), response(status, "down"));
            assert!(matches!(error, fleet_inference::Error::Unavailable(_)), "{status}: {error}");
        }
        let long = "x".repeat(5000);
        let error = api_error("openai:m", &at("u"), response(502, &long)).to_string();
        assert!(error.len() < 300, "{error}");
        let page = "<html>\n<title>secret</title>\x1b[2J\r\nforged: log line</html>";
        let error = api_error("openai:m", &at("u"), response(500, page)).to_string();
        assert!(!error.contains(['\n', '\r', '\x1b']), "{error:?}");
        // An error sent as a stream event.
        let parse_error = serde_json::from_str::<serde_json::Value>("{").err();
        if let Some(e) = parse_error {
            let content = r#"{"error": {"message": "context too long", "type": "x"}}"#.into();
            let error = api_error("openai:m", &at("u"), OpenAIError::JSONDeserialize(e, content));
            assert!(error.to_string().contains("failed: x: context too long"), "{error}");
        }
    }

    fn closed_port_model() -> anyhow::Result<OpenAiModel> {
        // A port nothing listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let base_url = format!("http://127.0.0.1:{port}/v1");
        Ok(OpenAiModel::new("openai:m", &options(&[("base_url", &base_url)]), &allow_private())?)
    }

    #[test]
    fn generate_is_lazy_and_needs_no_runtime() -> anyhow::Result<()> {
        let model = closed_port_model()?;
        assert_eq!(model.id(), "openai:m");
        // Outside any tokio runtime: spawning or connecting here would panic.
        let generation = model.generate(conversation())?;
        drop(generation);
        let error = model.embed(&["x"]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("tokio runtime"), "{error}");
        Ok(())
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_one_error_then_the_end() -> anyhow::Result<()> {
        let allowed = Arc::new(allow_private());
        let loaded =
            load("openai:m", &options(&[("base_url", "http://127.0.0.1:1/v1")]), allowed.clone())
                .await?;
        assert_eq!(loaded.id(), "openai:m");
        let error = load("openai:", &BTreeMap::new(), allowed).await.err().map(|e| e.to_string());
        assert!(error.is_some_and(|e| e.contains("no model name")));
        let model = Arc::new(closed_port_model()?);
        let mut generation = model.generate(conversation())?;
        let first = generation.next().await;
        let error = match first {
            Some(Err(e)) => e.to_string(),
            other => anyhow::bail!("expected an error, got {other:?}"),
        };
        assert!(
            error.contains("cannot reach remote model openai:m at http://127.0.0.1:"),
            "{error}"
        );
        assert!(generation.next().await.is_none());
        // Embedding from a blocking thread, as the agent loop does.
        let embedder = Arc::clone(&model);
        let embedded = tokio::task::spawn_blocking(move || embedder.embed(&["x"])).await?;
        let error = embedded.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("cannot reach remote model"), "{error}");
        Ok(())
    }
}

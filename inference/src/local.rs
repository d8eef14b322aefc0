//! Models on local disk behind the [`Model`] trait: a decoder on its engine thread with its
//! tokenizer and chat template, or a sentence embedder. Nothing is ever downloaded: a path
//! that does not hold a model is an error naming it.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use candle_core::Device;
use candle_core::quantized::GgmlDType;
use fleet_grammar::{
    CallStyle, Constraint, GrammarError, OutputFormat, ToolChoice, Vocabulary, tool_call_format,
};
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::embedding::Embedder;
use crate::engine::{
    Engine, EngineOptions, EngineStats, Finish, Refusal, TokenEvent, TokenRequest,
};
use crate::model::{
    Embeddings, FinishReason, GenerateRequest, Generation, GenerationEvent, Model, ModelStats,
    TokenLogprob, ToolCall, Usage,
};
use crate::sampling::SamplingParams;
use crate::text::harmony::{Channels, Harmony, Side};
use crate::text::reasoning::Markers;
use crate::text::{ChatTemplate, Detokenizer, StopMatcher, Tokenizer};
use crate::transformer::Family;
use crate::transformer::load::{load_gguf, load_hf_dir};
use crate::{Error, Result};

/// How to load a local model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub engine: EngineOptions,
    /// Quantize a Hugging Face folder's projections on load (GGUF files keep their own).
    pub quantize: Option<GgmlDType>,
    /// max_tokens of a request that sets none (always capped by the context).
    pub default_max_tokens: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { engine: EngineOptions::default(), quantize: None, default_max_tokens: 1024 }
    }
}

/// The device named `cpu`, `cuda`, `cuda:N`, `metal` or `metal:N`. GPUs need the crate's
/// `cuda` / `metal` feature, and a CUDA GPU a driver; the error says which is missing.
pub fn device(name: &str) -> Result<Device> {
    let (kind, ordinal) = match name.split_once(':') {
        Some((kind, n)) => {
            let n = n.parse::<usize>().map_err(|_| {
                Error::InvalidRequest(format!("device {name:?}: {n:?} is not a device number"))
            })?;
            (kind, n)
        }
        None => (name, 0),
    };
    let device = match kind {
        "cpu" => Ok(Device::Cpu),
        "cuda" if !crate::gpu::CUDA_BUILD => {
            return Err(Error::InvalidRequest(format!(
                "device {name:?}: this build has no CUDA support; build the worker with \
                 `--features cuda` (scripts/cuda-toolchain.sh installs nvcc) or use cpu"
            )));
        }
        "cuda" => {
            if let crate::gpu::Detected::None(why) = crate::gpu::detect() {
                return Err(Error::InvalidRequest(format!(
                    "device {name:?} is unavailable: {why}; use cpu"
                )));
            }
            Device::new_cuda(ordinal)
        }
        "metal" => Device::new_metal(ordinal),
        _ => {
            return Err(Error::InvalidRequest(format!(
                "device {name:?} is unknown: use cpu, cuda[:N] or metal[:N]"
            )));
        }
    };
    device.map_err(|e| Error::InvalidRequest(format!("device {name:?} is unavailable: {e}")))
}

/// A model folder in the Hugging Face cache layout (`models--org--name`) resolves to the
/// snapshot `refs/main` names, or to its only snapshot.
fn resolve(path: &Path) -> Result<PathBuf> {
    let snapshots = path.join("snapshots");
    if !snapshots.is_dir() {
        return Ok(path.to_owned());
    }
    if let Ok(rev) = std::fs::read_to_string(path.join("refs").join("main")) {
        let snapshot = snapshots.join(rev.trim());
        if snapshot.is_dir() {
            return Ok(snapshot);
        }
    }
    let entries: Vec<PathBuf> = std::fs::read_dir(&snapshots)
        .map_err(|e| Error::model(&snapshots, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    match entries.as_slice() {
        [only] => Ok(only.clone()),
        _ => Err(Error::model(
            path,
            format!("expected refs/main or exactly one snapshot, found {}", entries.len()),
        )),
    }
}

/// Loads the model at `path`: a GGUF file, a Hugging Face folder of a decoder (config.json,
/// tokenizer.json, safetensors) or of a BERT-family embedder, or a Hugging Face cache folder.
pub fn load(path: &Path, device: &Device, options: &LoadOptions) -> Result<LocalModel> {
    let model = load_model(path, device, options);
    crate::memory::return_freed_pages();
    model
}

fn load_model(path: &Path, device: &Device, options: &LoadOptions) -> Result<LocalModel> {
    let id = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if !path.exists() {
        return Err(Error::model(path, "no such file or folder"));
    }
    let path = resolve(path)?;
    if path.is_file() {
        let (decoder, metadata) = load_gguf(&path, device)?;
        let tokenizer = Tokenizer::from_gguf(&metadata)?;
        return generator(id, decoder, tokenizer, options);
    }
    let config = path.join("config.json");
    let text = std::fs::read_to_string(&config)
        .map_err(|e| Error::model(&config, format!("expected a config.json: {e}")))?;
    let model_type: Option<String> = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("model_type")?.as_str().map(str::to_owned));
    if model_type.as_deref() == Some("bert") {
        let embedder = Embedder::load(&path, device)?;
        return Ok(LocalModel { id, inner: Inner::Embedder(embedder) });
    }
    // The tokenizer first: it is the cheaper file to find missing.
    let tokenizer = Tokenizer::from_hf_dir(&path)?;
    let decoder = load_hf_dir(&path, device, options.quantize)?;
    generator(id, decoder, tokenizer, options)
}

fn generator(
    id: String,
    decoder: crate::transformer::Decoder,
    tokenizer: Tokenizer,
    options: &LoadOptions,
) -> Result<LocalModel> {
    let context = decoder.config().max_positions;
    let vocab_size = decoder.config().vocab_size;
    if tokenizer.vocab_size() > decoder.config().vocab_size {
        return Err(Error::InvalidRequest(format!(
            "model {id}: the tokenizer has {} tokens, more than the model's {}",
            tokenizer.vocab_size(),
            decoder.config().vocab_size
        )));
    }
    // Models that ship no template get their family's (Gemma's), else ChatML.
    let fallback = tokenizer.chat_template().is_none().then(|| match decoder.config().family {
        Family::Gemma2 | Family::Gemma3 => ChatTemplate::gemma(tokenizer.bos_token()),
        _ => ChatTemplate::chatml(),
    });
    // Whether the model thinks is fixed by its tokenizer and template: found once here.
    let template = tokenizer.chat_template().or(fallback.as_ref());
    let markers = Markers::of(&tokenizer, template);
    let harmony = Harmony::of(&tokenizer, template);
    let engine = Engine::start(decoder, options.engine.clone())
        .map_err(|e| Error::Engine(format!("cannot start the engine thread: {e}")))?;
    Ok(LocalModel {
        id,
        inner: Inner::Generator(Generator {
            engine,
            tokenizer: Arc::new(tokenizer),
            fallback,
            markers,
            harmony,
            context,
            vocab_size,
            vocabulary: OnceLock::new(),
            default_max_tokens: options.default_max_tokens,
        }),
    })
}

/// A loaded local model. Cheap to share behind an `Arc`; generations run on its engine
/// thread.
#[derive(Debug)]
pub struct LocalModel {
    id: String,
    inner: Inner,
}

// One per loaded model: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Inner {
    Generator(Generator),
    Embedder(Embedder),
}

#[derive(Debug)]
struct Generator {
    engine: Engine,
    tokenizer: Arc<Tokenizer>,
    fallback: Option<ChatTemplate>,
    /// A thinking model's reasoning markers.
    markers: Option<Markers>,
    /// A harmony model's special tokens (gpt-oss).
    harmony: Option<Harmony>,
    context: usize,
    default_max_tokens: usize,
    /// Rows of the logits.
    vocab_size: usize,
    /// The tokens as bytes for constrained decoding: built on the first request with an
    /// output format.
    vocabulary: OnceLock<std::result::Result<Vocabulary, GrammarError>>,
}

impl Generator {
    /// A constraint for one generation in `format`.
    fn constrain(&self, format: &OutputFormat) -> std::result::Result<Constraint, GrammarError> {
        let vocabulary = self.vocabulary.get_or_init(|| {
            let unreadable = |e: String| GrammarError::Vocabulary(e);
            let json =
                self.tokenizer.inner().to_string(false).map_err(|e| unreadable(e.to_string()))?;
            let json = serde_json::from_str(&json).map_err(|e| unreadable(e.to_string()))?;
            let tokenizer = self.tokenizer.clone();
            Vocabulary::new(&json, self.vocab_size, self.tokenizer.eos_ids(), move |bytes| {
                tokenizer.encode(&String::from_utf8_lossy(bytes)).unwrap_or_default()
            })
        });
        vocabulary.as_ref().map_err(Clone::clone)?.constrain(format)
    }

    /// The constraint of a request: its tool calls' grammar when it has tools (with its
    /// format as the answer's), else its format. A model whose vocabulary cannot be read
    /// still serves requests that may call tools, unconstrained, as before grammars;
    /// what must be constrained fails with the reason.
    /// `harmony`: the model answers in harmony, and the prompt's state (whose grammar
    /// covers the whole reply when there are tools).
    fn constraint(
        &self,
        request: &GenerateRequest,
        template: &ChatTemplate,
        harmony: Option<(Harmony, &Channels)>,
    ) -> Result<Option<Constraint>> {
        let invalid = |e: GrammarError| Error::InvalidRequest(e.to_string());
        if request.tools.is_empty() {
            let format = request.format.as_ref();
            return format.map(|f| self.constrain(f)).transpose().map_err(invalid);
        }
        // A harmony model calls in its own messages; a template that writes `<tool_call>`
        // (or knows no tools and is told to use it) takes the Hermes style; one that
        // renders tools its own way, Llama's bare JSON.
        let style = if let Some((harmony, channels)) = harmony {
            if channels.answering() {
                return Err(Error::InvalidRequest(
                    "this model's chat template opens the final answer, so it cannot call \
                     tools: ask it without tools"
                        .into(),
                ));
            }
            CallStyle::Harmony(harmony.grammar_tokens(channels.reasoning()))
        } else if template.source().contains(fleet_grammar::CALL_OPEN) || !template.renders_tools()
        {
            CallStyle::Hermes
        } else {
            CallStyle::BareJson
        };
        let calls = tool_call_format(
            &request.tools,
            &request.tool_choice,
            request.format.as_ref(),
            style,
            request.parallel_tool_calls,
        )
        .map_err(invalid)?;
        match self.constrain(&calls) {
            Ok(constraint) => Ok(Some(constraint)),
            Err(GrammarError::Vocabulary(_))
                if request.tool_choice == ToolChoice::Auto && request.format.is_none() =>
            {
                Ok(None)
            }
            Err(e) => Err(invalid(e)),
        }
    }
}

impl LocalModel {
    /// Whether this model embeds texts rather than generating.
    pub fn is_embedder(&self) -> bool {
        matches!(self.inner, Inner::Embedder(_))
    }

    /// Live figures of the engine of a generating model.
    pub fn engine_stats(&self) -> Option<&EngineStats> {
        match &self.inner {
            Inner::Generator(g) => Some(g.engine.stats()),
            Inner::Embedder(_) => None,
        }
    }

    /// The tokenizer of a generating model.
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        match &self.inner {
            Inner::Generator(g) => Some(&g.tokenizer),
            Inner::Embedder(_) => None,
        }
    }

    /// The prompt in token ids: the raw `prompt` as it is, else what `messages` render to.
    pub fn prompt_tokens(&self, request: &GenerateRequest) -> Result<Vec<u32>> {
        let g = self.generator()?;
        if let Some(prompt) = &request.prompt {
            if prompt.is_empty() {
                return Err(Error::InvalidRequest(
                    "the prompt is empty: give text to continue".into(),
                ));
            }
            return g.tokenizer.encode_prompt(prompt);
        }
        let text = self.template()?.render_with(
            &request.messages,
            &request.tools,
            true,
            request.thinking,
        )?;
        g.tokenizer.encode(&text)
    }

    /// The chat template: the tokenizer's, else the built-in fallback.
    fn template(&self) -> Result<&ChatTemplate> {
        let g = self.generator()?;
        let template = g.tokenizer.chat_template().or(g.fallback.as_ref());
        template
            .ok_or_else(|| Error::InvalidRequest(format!("model {} has no chat template", self.id)))
    }

    /// L2-normalised sentence embeddings, one per text. Blocking: call it off the async
    /// runtime (e.g. in `spawn_blocking`).
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        match &self.inner {
            Inner::Embedder(e) => e.embed(texts),
            Inner::Generator(_) => Err(Error::InvalidRequest(format!(
                "model {} generates text; it does not embed",
                self.id
            ))),
        }
    }

    fn generator(&self) -> Result<&Generator> {
        match &self.inner {
            Inner::Generator(g) => Ok(g),
            Inner::Embedder(_) => Err(Error::InvalidRequest(format!(
                "model {} is an embedding model; it does not generate",
                self.id
            ))),
        }
    }
}

fn sampling(request: &GenerateRequest) -> Result<SamplingParams> {
    let params = SamplingParams {
        temperature: request.temperature.unwrap_or(0.0),
        top_k: request.top_k.map(|k| k as usize),
        top_p: request.top_p,
        min_p: request.min_p,
        repetition_penalty: request.repetition_penalty.unwrap_or(1.0),
        presence_penalty: request.presence_penalty.unwrap_or(0.0),
        frequency_penalty: request.frequency_penalty.unwrap_or(0.0),
        seed: request.seed,
    };
    params.validate().map_err(Error::InvalidRequest)?;
    Ok(params)
}

impl Model for LocalModel {
    fn id(&self) -> &str {
        &self.id
    }

    fn is_embedder(&self) -> bool {
        LocalModel::is_embedder(self)
    }

    fn embed(&self, texts: &[&str]) -> Result<Embeddings> {
        let vectors = LocalModel::embed(self, texts)?;
        let prompt_tokens = match &self.inner {
            Inner::Embedder(e) => e.tokenize(texts)?.iter().map(Vec::len).sum(),
            Inner::Generator(_) => 0,
        };
        Ok(Embeddings { vectors, prompt_tokens })
    }

    fn stats(&self) -> ModelStats {
        let Some(stats) = self.engine_stats() else { return ModelStats::default() };
        let count = |n: &std::sync::atomic::AtomicUsize| {
            u32::try_from(n.load(Ordering::Relaxed)).unwrap_or(u32::MAX)
        };
        ModelStats {
            kv_bytes: stats.kv_bytes.load(Ordering::Relaxed) as u64,
            kv_capacity_bytes: stats.kv_capacity_bytes.load(Ordering::Relaxed) as u64,
            active: count(&stats.active),
            waiting: count(&stats.waiting),
            generated_tokens: stats.generated_tokens.load(Ordering::Relaxed),
            prompt_tokens: stats.prompt_tokens.load(Ordering::Relaxed),
            cached_tokens: stats.cached_tokens.load(Ordering::Relaxed),
            prefix_hits: stats.prefix_hits.load(Ordering::Relaxed),
            prefix_misses: stats.prefix_misses.load(Ordering::Relaxed),
            prefix_cache_bytes: stats.prefix_cache_bytes.load(Ordering::Relaxed) as u64,
            time_to_first_token: stats.time_to_first_token.snapshot(),
            inter_token: stats.inter_token.snapshot(),
        }
    }

    fn generate(&self, request: GenerateRequest) -> Result<Generation> {
        let g = self.generator()?;
        let prompt = self.prompt_tokens(&request)?;
        if prompt.len() >= g.context {
            return Err(Error::InvalidRequest(format!(
                "the prompt is {} tokens; model {} holds {} tokens of context, prompt and output together",
                prompt.len(),
                self.id,
                g.context
            )));
        }
        if request.max_tokens == Some(0) {
            return Err(Error::InvalidRequest("max_tokens must be at least 1".into()));
        }
        let room = g.context - prompt.len();
        let max_tokens = request.max_tokens.map_or(g.default_max_tokens, |m| m as usize).min(room);
        let prompt_tokens = prompt.len();
        // A chat with a thinking model: its reasoning streams apart and is free of the
        // answer's format. A raw prompt's continuation is text as it comes.
        let markers = g.markers.filter(|_| request.prompt.is_none());
        let harmony = g.harmony.filter(|_| request.prompt.is_none());
        // With an output format, which binds the final message, every other message
        // (commentary's preambles too) streams as reasoning: the answer is what parses.
        let final_only = request.format.is_some();
        let channels = harmony.map(|h| Channels::new(h, &prompt, &g.tokenizer, final_only));
        let inside = markers.is_some_and(|m| m.opened_by(&prompt))
            || channels.as_ref().is_some_and(Channels::reasoning);
        let reply = harmony.zip(channels.as_ref());
        let constraint = g.constraint(&request, self.template()?, reply)?;
        let constraint = match (constraint, markers, reply) {
            (Some(c), Some(m), _) => Some(c.after_reasoning(m.open, m.close, inside)),
            // With tools, a harmony grammar covers the whole reply; without, the format binds
            // the final message alone, after any analysis.
            (Some(c), None, Some((h, channels))) if request.tools.is_empty() => {
                let (channel, message) = h.header_marks();
                let name = g.tokenizer.encode("final")?;
                Some(c.in_final_channel(channel, message, name, channels.answering()))
            }
            (c, ..) => c,
        };
        let events = g.engine.generate(TokenRequest {
            prompt,
            max_tokens,
            // A harmony vocabulary's ends are among them (`<|return|>`, `<|call|>`).
            stop_tokens: g.tokenizer.eos_ids().to_vec(),
            sampling: sampling(&request)?,
            logprobs: request.logprobs.map(|n| n as usize),
            constraint,
        });
        let state = Stream {
            events: Some(events),
            tokenizer: g.tokenizer.clone(),
            detokenizer: Detokenizer::new(),
            stop: StopMatcher::new(request.stop),
            markers,
            channels,
            inside,
            queue: VecDeque::new(),
            prompt_tokens,
            cached_tokens: 0,
            completion_tokens: 0,
            reasoning_tokens: 0,
            calls: 0,
        };
        Ok(futures::stream::unfold(state, |mut s| async move {
            let next = s.next().await?;
            Some((next, s))
        })
        .boxed())
    }
}

/// A generation in flight: engine tokens in, text deltas out.
struct Stream {
    /// Dropped (which cancels the sequence in the engine) once the generation ends.
    events: Option<mpsc::UnboundedReceiver<TokenEvent>>,
    tokenizer: Arc<Tokenizer>,
    detokenizer: Detokenizer,
    stop: StopMatcher,
    /// A thinking model's markers, and whether its output is inside its reasoning now.
    markers: Option<Markers>,
    /// A harmony model's channels (then `inside` is whether the message is `analysis`).
    channels: Option<Channels>,
    inside: bool,
    queue: VecDeque<Result<GenerationEvent>>,
    prompt_tokens: usize,
    cached_tokens: usize,
    completion_tokens: usize,
    /// Of those, the reasoning's and its markers'.
    reasoning_tokens: usize,
    /// Tool calls made so far (harmony's; other families' are text).
    calls: usize,
}

impl Stream {
    async fn next(&mut self) -> Option<Result<GenerationEvent>> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            let events = self.events.as_mut()?;
            let event = events.recv().await;
            if let Err(e) = self.handle(event) {
                self.queue.push_back(Err(e));
                self.events = None;
            }
        }
    }

    fn handle(&mut self, event: Option<TokenEvent>) -> Result<()> {
        match event {
            Some(TokenEvent::Token(token)) => {
                self.completion_tokens += 1;
                if self.tokenizer.eos_ids().contains(&token) {
                    return Ok(()); // the engine's Done follows
                }
                // A marker or header is counted before it is followed: a stop string the held
                // text completes then reports it in the usage.
                if let Some(markers) = self.markers
                    && (token == markers.open || token == markers.close)
                {
                    self.reasoning_tokens += 1;
                    self.reasoning_marker(markers, token)?;
                    return Ok(());
                }
                if let Some(channels) = &mut self.channels {
                    let side = channels.push(token, &self.tokenizer);
                    if side == Side::Hidden {
                        self.reasoning_tokens += 1;
                    }
                    let consumed = self.harmony_side(side)?;
                    self.tool_calls(false);
                    if consumed {
                        return Ok(());
                    }
                }
                let text = self.detokenizer.push(&self.tokenizer, token)?;
                if self.inside {
                    self.reasoning_tokens += 1;
                    self.reasoning(text);
                    return Ok(());
                }
                let (text, stopped) = self.stop.push(&text);
                self.delta(text);
                if stopped {
                    self.finish(FinishReason::Stop);
                }
            }
            Some(TokenEvent::Logprobs(l)) => {
                // Logprobs are the answer's: not of the reasoning or its markers.
                // A harmony generation's side is its channels' (whichever of a token's
                // logprobs and the token itself comes first).
                let skip = match &self.channels {
                    Some(c) => c.hidden(l.token) || c.reasoning(),
                    None => {
                        self.inside
                            || self.markers.is_some_and(|m| l.token == m.open || l.token == m.close)
                    }
                };
                if skip {
                    return Ok(());
                }
                let text = |t: u32| self.tokenizer.decode(&[t]);
                let top = l.top.iter().map(|(t, p)| Ok((text(*t)?, *p))).collect::<Result<_>>()?;
                let logprob = TokenLogprob { token: text(l.token)?, logprob: l.logprob, top };
                self.queue.push_back(Ok(GenerationEvent::Logprobs(logprob)));
            }
            Some(TokenEvent::Done { finish, cached_tokens, .. }) => {
                self.cached_tokens = cached_tokens;
                // A harmony call ends the generation (`<|call|>`) and its message.
                self.tool_calls(true);
                let mut rest = self.detokenizer.finish(&self.tokenizer)?;
                if self.inside {
                    self.reasoning(std::mem::take(&mut rest));
                }
                let (text, stopped) = self.stop.push(&rest);
                self.delta(text);
                if !stopped {
                    let held = self.stop.finish();
                    self.delta(held);
                }
                let reason = match finish {
                    Finish::Stop => FinishReason::Stop,
                    Finish::Length if stopped => FinishReason::Stop,
                    Finish::Length => FinishReason::Length,
                };
                self.finish(reason);
            }
            Some(TokenEvent::Error(e)) => {
                return Err(match e.kind {
                    Refusal::Invalid => Error::InvalidRequest(e.message),
                    Refusal::Busy => Error::Busy(e.message),
                    Refusal::Fault => Error::Engine(e.message),
                });
            }
            None => return Err(Error::Engine("the engine stopped mid-generation".into())),
        }
        Ok(())
    }

    /// Follows a marker `token` that opens or closes the reasoning (no text of either): the
    /// text held back so far goes out on its side of the marker first.
    fn reasoning_marker(&mut self, markers: Markers, token: u32) -> Result<()> {
        let switch = if self.inside { markers.close } else { markers.open };
        // A stray marker (a second opening, a closing without one) is no text either.
        if token == switch && !self.flush_held()? {
            self.inside = !self.inside;
        }
        Ok(())
    }

    /// The text the detokenizer holds back goes out on the side it was written on (before
    /// the side changes); whether a stop string ended the generation in it.
    fn flush_held(&mut self) -> Result<bool> {
        let held = self.detokenizer.finish(&self.tokenizer)?;
        if self.inside {
            self.reasoning(held);
            return Ok(false);
        }
        let (text, stopped) = self.stop.push(&held);
        self.delta(text);
        if stopped {
            self.finish(FinishReason::Stop);
        }
        Ok(stopped)
    }

    /// Moves a harmony generation to `side`: the text held back so far goes out on the side
    /// it was written on. Whether the token is no text of either (a header, a marker, a
    /// call's arguments).
    fn harmony_side(&mut self, side: Side) -> Result<bool> {
        let text = matches!(side, Side::Reasoning | Side::Answer);
        let inside = side == Side::Reasoning;
        if text && inside == self.inside {
            return Ok(false);
        }
        if self.flush_held()? {
            return Ok(true);
        }
        if text {
            self.inside = inside;
        }
        Ok(!text)
    }

    /// The harmony calls whose messages ended (with `end`, the one the generation ended
    /// in) as events, after the text before them.
    fn tool_calls(&mut self, end: bool) {
        // Nothing follows a generation that a stop string ended.
        if self.events.is_none() {
            return;
        }
        let Some(channels) = &mut self.channels else { return };
        for call in channels.take_calls(&self.tokenizer, end) {
            let id = format!("call_{}", self.calls);
            self.calls += 1;
            let call = ToolCall { id, name: call.name, arguments: call.arguments };
            self.queue.push_back(Ok(GenerationEvent::ToolCall(call)));
        }
    }

    fn reasoning(&mut self, text: String) {
        if !text.is_empty() {
            self.queue.push_back(Ok(GenerationEvent::Reasoning(text)));
        }
    }

    fn delta(&mut self, text: String) {
        if !text.is_empty() {
            self.queue.push_back(Ok(GenerationEvent::Delta(text)));
        }
    }

    fn finish(&mut self, finish_reason: FinishReason) {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        self.queue.push_back(Ok(GenerationEvent::Done(Usage {
            prompt_tokens: count(self.prompt_tokens),
            cached_tokens: count(self.cached_tokens),
            completion_tokens: count(self.completion_tokens),
            reasoning_tokens: count(self.reasoning_tokens),
            finish_reason,
        })));
        self.events = None;
    }
}

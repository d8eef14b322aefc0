//! The engine: one dedicated thread per loaded model running continuous batching. Every step
//! runs ONE forward pass over all active sequences (decode tokens and prompt chunks
//! together); new sequences are admitted and finished or cancelled ones retired between
//! steps; KV memory is bounded and admission waits while it is full. Full blocks of what
//! sequences computed go to a [`PrefixCache`] in the memory sequences leave free, and a
//! prefilling sequence copies the blocks its prompt starts with from there instead of
//! computing them. A sequence with an output format ([`Constraint`]) has the tokens its
//! format allows computed while the forward pass runs, and samples among those only.

mod scheduler;
mod step;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::Instant;

use candle_core::Tensor;
use fleet_grammar::Constraint;
use tokio::sync::mpsc;

use crate::latency::{INTER_TOKEN_BOUNDS, LatencyHistogram, TIME_TO_FIRST_TOKEN_BOUNDS};
use crate::sampling::SamplingParams;
use crate::transformer::{SequenceCache, StepInput};
use scheduler::{Scheduler, Waiting};

/// A model the engine can batch: one forward step over many sequences.
pub trait BatchedModel: Send + 'static {
    /// An empty cache with room for `capacity` positions.
    fn new_cache(&self, capacity: usize) -> SequenceCache;
    /// Logits `[B, vocab]` of each input's last token; extends every cache.
    fn step(&self, inputs: &mut [StepInput<'_>]) -> candle_core::Result<Tensor>;
    /// KV bytes one position of one sequence takes.
    fn kv_bytes_per_token(&self) -> usize;
    /// KV bytes a sequence of `positions` takes at most, fed in steps of at most `chunk`
    /// tokens (less than `positions` times [`Self::kv_bytes_per_token`] where layers keep
    /// only a window).
    fn kv_bytes(&self, positions: usize, chunk: usize) -> usize {
        let _ = chunk;
        positions * self.kv_bytes_per_token()
    }
    /// Sets aside `bytes` of KV memory up front where the model keeps one shared pool (a
    /// GPU); elsewhere nothing to do.
    fn reserve_kv(&self, _bytes: usize) -> candle_core::Result<()> {
        Ok(())
    }
}

impl BatchedModel for crate::transformer::Decoder {
    fn new_cache(&self, capacity: usize) -> SequenceCache {
        crate::transformer::Decoder::new_cache(self, capacity)
    }

    fn step(&self, inputs: &mut [StepInput<'_>]) -> candle_core::Result<Tensor> {
        crate::transformer::Decoder::step(self, inputs)
    }

    fn kv_bytes_per_token(&self) -> usize {
        crate::transformer::Decoder::kv_bytes_per_token(self)
    }

    fn kv_bytes(&self, positions: usize, chunk: usize) -> usize {
        crate::transformer::Decoder::kv_bytes(self, positions, chunk)
    }

    fn reserve_kv(&self, bytes: usize) -> candle_core::Result<()> {
        crate::transformer::Decoder::reserve_kv(self, bytes)
    }
}

/// Limits of one engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Sequences decoded together at most.
    pub max_sequences: usize,
    /// Prompt tokens fed per step at most (prefill is chunked so decodes keep flowing).
    pub prefill_chunk: usize,
    /// KV memory all sequences may hold; a sequence is admitted only when its prompt plus
    /// its max_tokens fit.
    pub max_kv_bytes: usize,
    /// Keep full blocks of computed keys and values for later prompts that start the same
    /// way (in the KV memory admitted sequences leave free).
    pub prefix_cache: bool,
    /// Requests waiting for room at most; beyond, a request is refused at once with an
    /// error saying so (the queue would otherwise grow with whatever callers send).
    pub max_waiting: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            max_sequences: 64,
            prefill_chunk: 256,
            max_kv_bytes: 2 << 30,
            prefix_cache: true,
            max_waiting: 1024,
        }
    }
}

/// A generation request in token ids.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    /// Generation stops after any of these (it is still emitted).
    pub stop_tokens: Vec<u32>,
    pub sampling: SamplingParams,
    /// Report each chosen token's log-probability and this many most likely alternatives.
    pub logprobs: Option<usize>,
    /// The format the output must follow: only tokens it allows are sampled, and the
    /// generation stops once the output is complete.
    pub constraint: Option<Constraint>,
}

/// Log-probabilities (under the model's raw distribution) of a chosen token and of the most
/// likely tokens at that step.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Length,
    Stop,
}

/// Why the engine refused or ended a generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The request's fault (an empty prompt, bad sampling, a prompt over the KV memory).
    Invalid,
    /// No room for now: the waiting queue is full.
    Busy,
    /// The engine's fault (a failed forward pass, no KV memory, stopped).
    Fault,
}

/// An engine error: what kind, and what to do about it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct EngineError {
    pub kind: Refusal,
    pub message: String,
}

impl EngineError {
    fn invalid(message: impl Into<String>) -> Self {
        Self { kind: Refusal::Invalid, message: message.into() }
    }
    fn fault(message: impl Into<String>) -> Self {
        Self { kind: Refusal::Fault, message: message.into() }
    }
}

/// What a generation produces: tokens, then one `Done` (or an `Error`).
#[derive(Debug, Clone, PartialEq)]
pub enum TokenEvent {
    Token(u32),
    /// Sent just before its `Token` when the request asked for logprobs.
    Logprobs(TokenLogprobs),
    Done {
        prompt_tokens: usize,
        /// Prompt tokens whose keys and values came from the prefix cache.
        cached_tokens: usize,
        completion_tokens: usize,
        finish: Finish,
    },
    Error(EngineError),
}

struct Submission {
    request: TokenRequest,
    /// When `generate` was called: time to first token counts from here.
    at: Instant,
    events: mpsc::UnboundedSender<TokenEvent>,
}

/// A running engine. Dropping every handle stops its thread once its work is done.
#[derive(Clone, Debug)]
pub struct Engine {
    submit: std_mpsc::Sender<Submission>,
    stats: Arc<EngineStats>,
    /// Requests sent and not yet admitted, refused or dropped by the engine thread.
    queued: Arc<AtomicUsize>,
    max_waiting: usize,
}

/// Live figures of an engine.
#[derive(Debug)]
pub struct EngineStats {
    /// KV bytes reserved by admitted sequences, and the most they may reserve.
    pub kv_bytes: AtomicUsize,
    pub kv_capacity_bytes: AtomicUsize,
    pub active: AtomicUsize,
    pub waiting: AtomicUsize,
    pub steps: AtomicUsize,
    /// Tokens sampled since the engine started.
    pub generated_tokens: AtomicU64,
    /// Prompt tokens of sequences that reached their first token, and of those how many
    /// came from the prefix cache.
    pub prompt_tokens: AtomicU64,
    pub cached_tokens: AtomicU64,
    /// Sequences whose prompt did (hits) or did not (misses) start with a cached block.
    pub prefix_hits: AtomicU64,
    pub prefix_misses: AtomicU64,
    /// Bytes the prefix cache holds.
    pub prefix_cache_bytes: AtomicUsize,
    /// From a request's submission to its first token, and between a sequence's tokens.
    pub time_to_first_token: LatencyHistogram,
    pub inter_token: LatencyHistogram,
}

impl EngineStats {
    fn occupancy(&self, kv_bytes: usize, active: usize, waiting: usize, prefix_bytes: usize) {
        self.kv_bytes.store(kv_bytes, Ordering::Relaxed);
        self.prefix_cache_bytes.store(prefix_bytes, Ordering::Relaxed);
        self.active.store(active, Ordering::Relaxed);
        self.waiting.store(waiting, Ordering::Relaxed);
    }
}

impl Default for EngineStats {
    fn default() -> Self {
        Self {
            kv_bytes: AtomicUsize::new(0),
            kv_capacity_bytes: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            steps: AtomicUsize::new(0),
            generated_tokens: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            cached_tokens: AtomicU64::new(0),
            prefix_hits: AtomicU64::new(0),
            prefix_misses: AtomicU64::new(0),
            prefix_cache_bytes: AtomicUsize::new(0),
            time_to_first_token: LatencyHistogram::new(&TIME_TO_FIRST_TOKEN_BOUNDS),
            inter_token: LatencyHistogram::new(&INTER_TOKEN_BOUNDS),
        }
    }
}

impl Engine {
    /// Starts the engine thread for `model`.
    pub fn start(model: impl BatchedModel, options: EngineOptions) -> std::io::Result<Self> {
        let (submit, requests) = std_mpsc::channel();
        let stats = Arc::new(EngineStats::default());
        stats.kv_capacity_bytes.store(options.max_kv_bytes, Ordering::Relaxed);
        let thread_stats = stats.clone();
        let queued = Arc::new(AtomicUsize::new(0));
        let waiting = Waiting::new(queued.clone());
        let max_waiting = options.max_waiting;
        std::thread::Builder::new()
            .name("fleet-engine".into())
            .spawn(move || Scheduler::new(model, options, waiting, thread_stats).run(requests))?;
        Ok(Self { submit, stats, queued, max_waiting })
    }

    /// Queues a generation; its events arrive on the returned receiver. Dropping the
    /// receiver cancels the generation and frees its KV memory at the next step.
    pub fn generate(&self, request: TokenRequest) -> mpsc::UnboundedReceiver<TokenEvent> {
        // Unbounded but bounded by construction: at most max_tokens + 1 events.
        let (events, receiver) = mpsc::unbounded_channel();
        let ahead = self.queued.fetch_add(1, Ordering::AcqRel);
        if ahead >= self.max_waiting {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            let _ = events.send(TokenEvent::Error(EngineError {
                kind: Refusal::Busy,
                message: format!(
                    "the model is busy: {ahead} requests are already waiting for room (its \
                     limit); retry later"
                ),
            }));
            return receiver;
        }
        if let Err(std_mpsc::SendError(s)) =
            self.submit.send(Submission { request, events, at: Instant::now() })
        {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            let _ = s.events.send(TokenEvent::Error(EngineError::fault("the engine has stopped")));
        }
        receiver
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }
}

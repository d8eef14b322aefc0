//! The engine: one dedicated thread per loaded model running continuous batching. Every step
//! runs ONE forward pass over all active sequences (decode tokens and prompt chunks
//! together); new sequences are admitted and finished or cancelled ones retired between
//! steps; KV memory is bounded and admission waits while it is full.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;

use candle_core::Tensor;
use tokio::sync::mpsc;

use crate::sampling::{Sampler, SamplingParams};
use crate::transformer::{SequenceCache, StepInput};

/// A model the engine can batch: one forward step over many sequences.
pub trait BatchedModel: Send + 'static {
    /// An empty cache with room for `capacity` positions.
    fn new_cache(&self, capacity: usize) -> SequenceCache;
    /// Logits `[B, vocab]` of each input's last token; extends every cache.
    fn step(&self, inputs: &mut [StepInput<'_>]) -> candle_core::Result<Tensor>;
    /// KV bytes one position of one sequence takes.
    fn kv_bytes_per_token(&self) -> usize;
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
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self { max_sequences: 64, prefill_chunk: 256, max_kv_bytes: 2 << 30 }
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

/// What a generation produces: tokens, then one `Done` (or an `Error`).
#[derive(Debug, Clone, PartialEq)]
pub enum TokenEvent {
    Token(u32),
    /// Sent just before its `Token` when the request asked for logprobs.
    Logprobs(TokenLogprobs),
    Done {
        prompt_tokens: usize,
        completion_tokens: usize,
        finish: Finish,
    },
    Error(String),
}

struct Submission {
    request: TokenRequest,
    events: mpsc::UnboundedSender<TokenEvent>,
}

/// A running engine. Dropping every handle stops its thread once its work is done.
#[derive(Clone, Debug)]
pub struct Engine {
    submit: std_mpsc::Sender<Submission>,
    stats: Arc<EngineStats>,
}

/// Live figures of an engine.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// KV bytes reserved by admitted sequences.
    pub kv_bytes: AtomicUsize,
    pub active: AtomicUsize,
    pub waiting: AtomicUsize,
    pub steps: AtomicUsize,
    /// Tokens sampled since the engine started.
    pub generated_tokens: std::sync::atomic::AtomicU64,
}

impl Engine {
    /// Starts the engine thread for `model`.
    pub fn start(model: impl BatchedModel, options: EngineOptions) -> std::io::Result<Self> {
        let (submit, requests) = std_mpsc::channel();
        let stats = Arc::new(EngineStats::default());
        let thread_stats = stats.clone();
        std::thread::Builder::new()
            .name("fleet-engine".into())
            .spawn(move || run(model, options, requests, thread_stats))?;
        Ok(Self { submit, stats })
    }

    /// Queues a generation; its events arrive on the returned receiver. Dropping the
    /// receiver cancels the generation and frees its KV memory at the next step.
    pub fn generate(&self, request: TokenRequest) -> mpsc::UnboundedReceiver<TokenEvent> {
        // Unbounded but bounded by construction: at most max_tokens + 1 events.
        let (events, receiver) = mpsc::unbounded_channel();
        if let Err(std_mpsc::SendError(s)) = self.submit.send(Submission { request, events }) {
            let _ = s.events.send(TokenEvent::Error("the engine has stopped".into()));
        }
        receiver
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }
}

struct Active {
    request: TokenRequest,
    events: mpsc::UnboundedSender<TokenEvent>,
    cache: SequenceCache,
    sampler: Sampler,
    fed: usize,
    /// The prompt, then every generated token (for penalties).
    seen: Vec<u32>,
    generated: usize,
    reserved: usize,
}

fn run(
    model: impl BatchedModel,
    options: EngineOptions,
    requests: std_mpsc::Receiver<Submission>,
    stats: Arc<EngineStats>,
) {
    let mut waiting: VecDeque<Submission> = VecDeque::new();
    let mut active: Vec<Active> = Vec::new();
    let mut reserved = 0usize;
    let per_token = model.kv_bytes_per_token();
    // Pools hand out whole blocks: each sequence may hold up to one block more than its
    // share of the budget.
    let slack = options.max_sequences * crate::transformer::paged::BLOCK_SIZE * per_token;
    let kv_error = model.reserve_kv(options.max_kv_bytes + slack).err();
    loop {
        // Take new requests; block only when there is nothing to do.
        if active.is_empty() && waiting.is_empty() {
            match requests.recv() {
                Ok(s) => waiting.push_back(s),
                Err(_) => return,
            }
        }
        while let Ok(s) = requests.try_recv() {
            waiting.push_back(s);
        }
        // Admit while sequences and KV memory allow, oldest first.
        while active.len() < options.max_sequences {
            let Some(next) = waiting.front() else { break };
            if next.events.is_closed() {
                waiting.pop_front();
                continue;
            }
            let need = (next.request.prompt.len() + next.request.max_tokens) * per_token;
            if need > options.max_kv_bytes {
                if let Some(s) = waiting.pop_front() {
                    let _ = s.events.send(TokenEvent::Error(format!(
                        "the prompt plus max_tokens needs {need} bytes of KV memory, over the engine's {} bytes",
                        options.max_kv_bytes
                    )));
                }
                continue;
            }
            if reserved + need > options.max_kv_bytes {
                break;
            }
            let Some(s) = waiting.pop_front() else { break };
            if let Some(e) = &kv_error {
                let _ =
                    s.events.send(TokenEvent::Error(format!("no KV memory for the model: {e}")));
                continue;
            }
            if s.request.prompt.is_empty() {
                let _ = s.events.send(TokenEvent::Error("the prompt is empty".into()));
                continue;
            }
            if let Err(e) = s.request.sampling.validate() {
                let _ = s.events.send(TokenEvent::Error(e));
                continue;
            }
            reserved += need;
            active.push(Active {
                cache: model.new_cache(s.request.prompt.len() + s.request.max_tokens),
                sampler: Sampler::new(s.request.sampling.clone()),
                seen: s.request.prompt.clone(),
                request: s.request,
                events: s.events,
                fed: 0,
                generated: 0,
                reserved: need,
            });
        }
        // Retire cancelled sequences before spending a step on them.
        active.retain(|a| {
            let keep = !a.events.is_closed();
            if !keep {
                reserved -= a.reserved;
            }
            keep
        });
        stats.kv_bytes.store(reserved, Ordering::Relaxed);
        stats.active.store(active.len(), Ordering::Relaxed);
        stats.waiting.store(waiting.len(), Ordering::Relaxed);
        if active.is_empty() {
            continue;
        }
        // One step: every decoding sequence feeds its last token; prefilling ones a chunk of
        // their prompt, within the step's prompt budget.
        let mut budget = options.prefill_chunk;
        let mut feeds: Vec<(usize, Vec<u32>)> = Vec::with_capacity(active.len());
        for (i, a) in active.iter().enumerate() {
            if a.fed < a.request.prompt.len() {
                if budget == 0 {
                    continue;
                }
                let n = (a.request.prompt.len() - a.fed).min(budget);
                budget -= n;
                feeds.push((i, a.request.prompt[a.fed..a.fed + n].to_vec()));
            } else {
                feeds.push((i, vec![*a.seen.last().unwrap_or(&0)]));
            }
        }
        let logits = {
            let mut caches: Vec<Option<&mut SequenceCache>> =
                active.iter_mut().map(|a| Some(&mut a.cache)).collect();
            let mut inputs: Vec<StepInput<'_>> = Vec::with_capacity(feeds.len());
            for (i, tokens) in &feeds {
                if let Some(cache) = caches[*i].take() {
                    inputs.push(StepInput { tokens, cache });
                }
            }
            model.step(&mut inputs)
        };
        stats.steps.fetch_add(1, Ordering::Relaxed);
        let next = logits.and_then(|logits| choose(&logits, &feeds, &mut active));
        let next = match next {
            Ok(next) => next,
            Err(e) => {
                for a in active.drain(..) {
                    let _ =
                        a.events.send(TokenEvent::Error(format!("the forward pass failed: {e}")));
                }
                reserved = 0;
                continue;
            }
        };
        let mut finished = Vec::new();
        for ((i, _), chosen) in feeds.iter().zip(next) {
            let Some((token, logprobs)) = chosen else { continue };
            let a = &mut active[*i];
            if let Some(logprobs) = logprobs {
                let _ = a.events.send(TokenEvent::Logprobs(logprobs));
            }
            a.generated += 1;
            stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
            a.seen.push(token);
            let _ = a.events.send(TokenEvent::Token(token));
            let finish = if a.request.stop_tokens.contains(&token) {
                Some(Finish::Stop)
            } else if a.generated >= a.request.max_tokens {
                Some(Finish::Length)
            } else {
                None
            };
            if let Some(finish) = finish {
                let _ = a.events.send(TokenEvent::Done {
                    prompt_tokens: a.request.prompt.len(),
                    completion_tokens: a.generated,
                    finish,
                });
                finished.push(*i);
            }
        }
        for i in finished.into_iter().rev() {
            reserved -= active.swap_remove(i).reserved;
        }
    }
}

/// A chosen token and, when asked for, its logprobs.
type Chosen = Option<(u32, Option<TokenLogprobs>)>;

/// The next token of every fed sequence that has now seen its whole prompt (`None` for
/// those still prefilling). Advances `fed`. Only sequences that produce a token draw from
/// their sampler, so batching never changes what a seeded sequence samples.
fn choose(
    logits: &Tensor,
    feeds: &[(usize, Vec<u32>)],
    active: &mut [Active],
) -> candle_core::Result<Vec<Chosen>> {
    let greedy = feeds.iter().all(|(i, _)| active[*i].request.sampling.is_greedy());
    let rows: Option<Vec<Vec<f32>>> = if greedy { None } else { Some(logits.to_vec2::<f32>()?) };
    let argmax = if greedy { crate::transformer::greedy(logits)? } else { Vec::new() };
    let mut next = Vec::with_capacity(feeds.len());
    for (row, (i, tokens)) in feeds.iter().enumerate() {
        let a = &mut active[*i];
        if a.fed < a.request.prompt.len() {
            a.fed += tokens.len();
            if a.fed < a.request.prompt.len() {
                next.push(None);
                continue;
            }
        }
        let token = match &rows {
            None => argmax[row],
            Some(rows) => {
                let generated = &a.seen[a.request.prompt.len()..];
                a.sampler.sample(&rows[row], &a.seen, generated)
            }
        };
        let logprobs = match a.request.logprobs {
            None => None,
            Some(top) => {
                let owned;
                let values = match &rows {
                    Some(rows) => &rows[row],
                    None => {
                        owned = logits.get(row)?.to_vec1::<f32>()?;
                        &owned
                    }
                };
                Some(crate::sampling::logprobs(values, token, top))
            }
        };
        next.push(Some((token, logprobs)));
    }
    Ok(next)
}

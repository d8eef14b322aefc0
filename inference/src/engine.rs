//! The engine: one dedicated thread per loaded model running continuous batching. Every step
//! runs ONE forward pass over all active sequences (decode tokens and prompt chunks
//! together); new sequences are admitted and finished or cancelled ones retired between
//! steps; KV memory is bounded and admission waits while it is full. Full blocks of what
//! sequences computed go to a [`PrefixCache`] in the memory sequences leave free, and a
//! prefilling sequence copies the blocks its prompt starts with from there instead of
//! computing them. A sequence with an output format ([`Constraint`]) has the tokens its
//! format allows computed while the forward pass runs, and samples among those only.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::Instant;

use candle_core::Tensor;
use fleet_grammar::{Constraint, Mask};
use tokio::sync::mpsc;

use crate::latency::{INTER_TOKEN_BOUNDS, LatencyHistogram, TIME_TO_FIRST_TOKEN_BOUNDS};
use crate::prefix::{BLOCK_SIZE, PrefixCache, ROOT};
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
        let waiting = Waiting { items: VecDeque::new(), queued: queued.clone() };
        let max_waiting = options.max_waiting;
        std::thread::Builder::new()
            .name("fleet-engine".into())
            .spawn(move || run(model, options, requests, waiting, thread_stats))?;
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
    /// The key of each full block of `seen` computed or copied so far.
    keys: Vec<u64>,
    /// Of those, the blocks offered to the cache so far (a block that found no room is
    /// offered again once the sequence ends and its memory is free).
    offered: usize,
    /// Prompt tokens copied from the prefix cache.
    cached: usize,
    constraint: Option<Constraint>,
    /// When the request was submitted, then when its latest token was sampled.
    last_event_at: Instant,
}

/// Requests waiting for room, counted with those still in the channel (see
/// [`Engine::generate`]): each one leaving the queue, admitted or not, is uncounted here.
struct Waiting {
    items: VecDeque<Submission>,
    queued: Arc<AtomicUsize>,
}

impl Waiting {
    fn push_back(&mut self, s: Submission) {
        self.items.push_back(s);
    }

    fn pop_front(&mut self) -> Option<Submission> {
        let s = self.items.pop_front()?;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        Some(s)
    }

    fn front(&self) -> Option<&Submission> {
        self.items.front()
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn len(&self) -> usize {
        self.items.len()
    }
}

fn run(
    model: impl BatchedModel,
    options: EngineOptions,
    requests: std_mpsc::Receiver<Submission>,
    mut waiting: Waiting,
    stats: Arc<EngineStats>,
) {
    let mut active: Vec<Active> = Vec::new();
    let mut reserved = 0usize;
    let per_token = model.kv_bytes_per_token();
    // Pools hand out whole blocks: each sequence may hold up to one block more than its
    // share of the budget.
    let slack = options.max_sequences * crate::transformer::paged::BLOCK_SIZE * per_token;
    let kv_error = model.reserve_kv(options.max_kv_bytes + slack).err();
    let mut prefixes = PrefixCache::new(BLOCK_SIZE * per_token);
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
            let positions = next.request.prompt.len() + next.request.max_tokens;
            let need = model.kv_bytes(positions, options.prefill_chunk);
            if need > options.max_kv_bytes {
                if let Some(s) = waiting.pop_front() {
                    let _ = s.events.send(TokenEvent::Error(EngineError::invalid(format!(
                        "the prompt plus max_tokens needs {need} bytes of KV memory, over the \
                         engine's {} bytes",
                        options.max_kv_bytes
                    ))));
                }
                continue;
            }
            if reserved + need > options.max_kv_bytes {
                break;
            }
            let Some(s) = waiting.pop_front() else { break };
            if let Some(e) = &kv_error {
                let _ = s.events.send(TokenEvent::Error(EngineError::fault(format!(
                    "no KV memory for the model: {e}"
                ))));
                continue;
            }
            if s.request.prompt.is_empty() {
                let _ =
                    s.events.send(TokenEvent::Error(EngineError::invalid("the prompt is empty")));
                continue;
            }
            if let Err(e) = s.request.sampling.validate() {
                let _ = s.events.send(TokenEvent::Error(EngineError::invalid(e)));
                continue;
            }
            reserved += need;
            let mut s = s;
            let constraint = s.request.constraint.take();
            let mut a = Active {
                cache: model.new_cache(s.request.prompt.len() + s.request.max_tokens),
                sampler: Sampler::new(s.request.sampling.clone()),
                seen: s.request.prompt.clone(),
                request: s.request,
                events: s.events,
                last_event_at: s.at,
                fed: 0,
                generated: 0,
                reserved: need,
                keys: Vec::new(),
                offered: 0,
                cached: 0,
                constraint,
            };
            // The blocks it can use first, then cached blocks give way to it (least
            // recently used first, which those it just used are not).
            if options.prefix_cache {
                reuse_prefix(&mut a, &mut prefixes);
            }
            while reserved + prefixes.bytes() > options.max_kv_bytes && prefixes.evict_one() {}
            active.push(a);
        }
        // Retire cancelled sequences before spending a step on them.
        active.retain(|a| {
            let keep = !a.events.is_closed();
            if !keep {
                reserved -= a.reserved;
            }
            keep
        });
        stats.occupancy(reserved, active.len(), waiting.len(), prefixes.bytes());
        if active.is_empty() {
            continue;
        }
        if options.prefix_cache {
            for a in active.iter_mut() {
                reuse_prefix(a, &mut prefixes);
            }
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
                let left = a.request.prompt.len() - a.fed;
                let mut n = left.min(budget);
                if n < left && options.prefix_cache {
                    // A chunk that stops mid-prompt stops at a block's end, so the sequence
                    // can still take cached blocks after it (another sequence may be
                    // computing them now). Only the step's first chunk may not: progress.
                    let aligned = (a.fed + n) / BLOCK_SIZE * BLOCK_SIZE;
                    if aligned > a.fed {
                        n = aligned - a.fed;
                    } else if budget < options.prefill_chunk {
                        continue;
                    }
                }
                budget -= n;
                feeds.push((i, a.request.prompt[a.fed..a.fed + n].to_vec()));
            } else {
                feeds.push((i, vec![*a.seen.last().unwrap_or(&0)]));
            }
        }
        let (logits, masks) = step(&model, &feeds, &mut active);
        stats.steps.fetch_add(1, Ordering::Relaxed);
        let next = logits.and_then(|logits| choose(&logits, &feeds, &masks, &mut active));
        let next = match next {
            Ok(next) => next,
            Err(e) => {
                for a in active.drain(..) {
                    let _ = a.events.send(TokenEvent::Error(EngineError::fault(format!(
                        "the forward pass failed: {e}"
                    ))));
                }
                reserved = 0;
                continue;
            }
        };
        let mut finished = Vec::new();
        for ((i, _), chosen) in feeds.iter().zip(next) {
            let (token, logprobs) = match chosen {
                None => continue,
                Some(Ok(chosen)) => chosen,
                Some(Err(e)) => {
                    let _ = active[*i].events.send(TokenEvent::Error(EngineError::fault(e)));
                    finished.push(*i);
                    continue;
                }
            };
            let a = &mut active[*i];
            if let Some(logprobs) = logprobs {
                let _ = a.events.send(TokenEvent::Logprobs(logprobs));
            }
            a.generated += 1;
            let now = Instant::now();
            let since = now.saturating_duration_since(a.last_event_at);
            a.last_event_at = now;
            if a.generated == 1 {
                stats.time_to_first_token.observe(since);
                stats.prompt_tokens.fetch_add(a.request.prompt.len() as u64, Ordering::Relaxed);
                stats.cached_tokens.fetch_add(a.cached as u64, Ordering::Relaxed);
                let counter = if a.cached > 0 { &stats.prefix_hits } else { &stats.prefix_misses };
                counter.fetch_add(1, Ordering::Relaxed);
            } else {
                stats.inter_token.observe(since);
            }
            stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
            a.seen.push(token);
            let _ = a.events.send(TokenEvent::Token(token));
            let complete = match a.constraint.as_mut().map(|c| c.commit(token)) {
                None | Some(Ok(false)) => false,
                Some(Ok(true)) => true,
                Some(Err(e)) => {
                    let _ = a.events.send(TokenEvent::Error(EngineError::fault(format!(
                        "the output left its format: {e}"
                    ))));
                    finished.push(*i);
                    continue;
                }
            };
            let finish = if a.request.stop_tokens.contains(&token) || complete {
                Some(Finish::Stop)
            } else if a.generated >= a.request.max_tokens {
                Some(Finish::Length)
            } else {
                None
            };
            if let Some(finish) = finish {
                let _ = a.events.send(TokenEvent::Done {
                    prompt_tokens: a.request.prompt.len(),
                    cached_tokens: a.cached,
                    completion_tokens: a.generated,
                    finish,
                });
                finished.push(*i);
            }
        }
        let mut ended = Vec::with_capacity(finished.len());
        for i in finished.into_iter().rev() {
            let a = active.swap_remove(i);
            reserved -= a.reserved;
            ended.push(a);
        }
        // Ended sequences first: their memory is free now, and they are the likeliest to
        // be continued (the next turn of a conversation).
        if options.prefix_cache {
            let room = options.max_kv_bytes.saturating_sub(reserved);
            for a in ended.iter_mut().chain(active.iter_mut()) {
                publish_blocks(a, &mut prefixes, room);
            }
        }
        // Now, not at the next step: after the last sequence the engine waits for a request,
        // and its figures would show the ended ones as running until then.
        stats.occupancy(reserved, active.len(), waiting.len(), prefixes.bytes());
    }
}

/// Copies into a prefilling sequence the cached blocks its prompt continues with, when it
/// stands at a block's end. At least the prompt's last token is left to compute: its logits
/// give the first generated token.
fn reuse_prefix(a: &mut Active, prefixes: &mut PrefixCache) {
    let prompt = &a.request.prompt;
    if a.fed >= prompt.len() || a.fed != a.cache.len() || a.fed != a.keys.len() * BLOCK_SIZE {
        return;
    }
    let usable = (prompt.len() - 1) / BLOCK_SIZE * BLOCK_SIZE;
    if a.fed >= usable {
        return;
    }
    let parent = a.keys.last().copied().unwrap_or(ROOT);
    let found = prefixes.lookup(parent, &prompt[a.fed..usable]);
    if found.is_empty() {
        return;
    }
    let spans: Vec<&crate::transformer::KvSpan> = found.iter().map(|(_, kv)| kv.as_ref()).collect();
    // A failed copy (memory) only costs the computation it would have saved.
    if a.cache.import(&spans).is_ok() {
        let n = found.len() * BLOCK_SIZE;
        a.fed += n;
        a.cached += n;
        a.keys.extend(found.iter().map(|(key, _)| *key));
        a.offered = a.keys.len();
    }
}

/// Keys the sequence's newly completed blocks and offers the cache those not cached yet, in
/// order, evicting the least recently used blocks so the cache stays within `room` bytes;
/// stops at the first block with no room.
fn publish_blocks(a: &mut Active, prefixes: &mut PrefixCache, room: usize) {
    while (a.keys.len() + 1) * BLOCK_SIZE <= a.cache.len() {
        let start = a.keys.len() * BLOCK_SIZE;
        let parent = a.keys.last().copied().unwrap_or(ROOT);
        a.keys.push(crate::prefix::key(parent, &a.seen[start..start + BLOCK_SIZE]));
    }
    while a.offered < a.keys.len() {
        let key = a.keys[a.offered];
        if !prefixes.contains(key) {
            if prefixes.block_bytes() > room {
                return;
            }
            while prefixes.bytes() + prefixes.block_bytes() > room && prefixes.evict_one() {}
            let start = a.offered * BLOCK_SIZE;
            let parent = a.offered.checked_sub(1).map_or(ROOT, |p| a.keys[p]);
            // A paged cache (GPU) or a failed copy: nothing to keep.
            if let Ok(Some(kv)) = a.cache.export(start, BLOCK_SIZE) {
                prefixes.insert(key, parent, &a.seen[start..start + BLOCK_SIZE], kv);
            }
        }
        a.offered += 1;
    }
}

/// Runs one forward pass over the fed sequences. Meanwhile, on a thread of its own, the
/// constrained sequences that produce a token this step compute which tokens their format
/// allows (`masks`, by index into `active`).
fn step(
    model: &impl BatchedModel,
    feeds: &[(usize, Vec<u32>)],
    active: &mut [Active],
) -> (candle_core::Result<Tensor>, Vec<Option<Result<Mask, String>>>) {
    let producing: Vec<bool> = feeds
        .iter()
        .map(|(i, tokens)| active[*i].fed + tokens.len() >= active[*i].request.prompt.len())
        .collect();
    let mut caches: Vec<Option<&mut SequenceCache>> = Vec::with_capacity(active.len());
    let mut constraints: Vec<Option<&mut Constraint>> = Vec::with_capacity(active.len());
    for a in active.iter_mut() {
        caches.push(Some(&mut a.cache));
        constraints.push(a.constraint.as_mut());
    }
    let wanted: Vec<(usize, &mut Constraint)> = feeds
        .iter()
        .zip(&producing)
        .filter(|(_, producing)| **producing)
        .filter_map(|((i, _), _)| constraints[*i].take().map(|c| (*i, c)))
        .collect();
    let mut inputs: Vec<StepInput<'_>> = Vec::with_capacity(feeds.len());
    for (i, tokens) in feeds {
        if let Some(cache) = caches[*i].take() {
            inputs.push(StepInput { tokens, cache });
        }
    }
    let mut masks: Vec<Option<Result<Mask, String>>> = (0..caches.len()).map(|_| None).collect();
    if wanted.is_empty() {
        return (model.step(&mut inputs), masks);
    }
    let indices: Vec<usize> = wanted.iter().map(|(i, _)| *i).collect();
    let mut computed = Vec::new();
    let logits = std::thread::scope(|scope| {
        let masking =
            // `None`: nothing masked now (inside a thinking model's reasoning).
            scope.spawn(move || {
                let masks = wanted.into_iter().map(|(i, c)| (i, c.mask().transpose()));
                masks.collect::<Vec<_>>()
            });
        let logits = model.step(&mut inputs);
        // A panic there (guarded against) must not let those sequences run unconstrained.
        computed = masking.join().unwrap_or_else(|_| {
            indices
                .iter()
                .map(|&i| (i, Some(Err("computing the allowed tokens failed".into()))))
                .collect()
        });
        logits
    });
    for (i, mask) in computed {
        masks[i] = mask;
    }
    (logits, masks)
}

/// A chosen token and, when asked for, its logprobs; or why none could be chosen.
type Chosen = Option<Result<(u32, Option<TokenLogprobs>), String>>;

/// The next token of every fed sequence that has now seen its whole prompt (`None` for
/// those still prefilling). Advances `fed`. Only sequences that produce a token draw from
/// their sampler, so batching never changes what a seeded sequence samples.
fn choose(
    logits: &Tensor,
    feeds: &[(usize, Vec<u32>)],
    masks: &[Option<Result<Mask, String>>],
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
        let generated = &a.seen[a.request.prompt.len()..];
        let token = match (&masks[*i], &rows) {
            (Some(Err(e)), _) => {
                next.push(Some(Err(format!("the output format cannot be followed: {e}"))));
                continue;
            }
            (Some(Ok(mask)), _) => {
                let mut values = match &rows {
                    Some(rows) => rows[row].clone(),
                    None => logits.get(row)?.to_vec1::<f32>()?,
                };
                mask.apply(&mut values);
                a.sampler.sample(&values, &a.seen, generated)
            }
            (None, None) => argmax[row],
            (None, Some(rows)) => a.sampler.sample(&rows[row], &a.seen, generated),
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
        next.push(Some(Ok((token, logprobs))));
    }
    Ok(next)
}

//! The engine thread's loop: requests wait, are admitted while sequences and KV memory
//! allow, are fed one step at a time (a decode token or a chunk of prompt each), receive
//! their tokens, and leave; the prefix cache gives and takes whole blocks between steps.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::Instant;

use fleet_grammar::Constraint;
use tokio::sync::mpsc;

use super::step::{Chosen, Feed, choose, step};
use super::{
    BatchedModel, EngineError, EngineOptions, EngineStats, Finish, Submission, TokenEvent,
    TokenLogprobs, TokenRequest,
};
use crate::prefix::{BLOCK_SIZE, PrefixCache, ROOT};
use crate::sampling::Sampler;
use crate::transformer::SequenceCache;

/// An admitted sequence.
pub(super) struct Active {
    pub(super) request: TokenRequest,
    pub(super) events: mpsc::UnboundedSender<TokenEvent>,
    pub(super) cache: SequenceCache,
    pub(super) sampler: Sampler,
    /// Prompt tokens computed or copied so far.
    pub(super) fed: usize,
    /// The prompt, then every generated token (for penalties).
    pub(super) seen: Vec<u32>,
    generated: usize,
    /// KV bytes admission set aside for it.
    reserved: usize,
    /// The key of each full block of `seen` computed or copied so far.
    keys: Vec<u64>,
    /// Of those, the blocks offered to the cache so far (a block that found no room is
    /// offered again once the sequence ends and its memory is free).
    offered: usize,
    /// Prompt tokens copied from the prefix cache.
    cached: usize,
    pub(super) constraint: Option<Constraint>,
    /// When the request was submitted, then when its latest token was sampled.
    last_event_at: Instant,
}

impl Active {
    fn new(model: &impl BatchedModel, mut s: Submission, reserved: usize) -> Self {
        let constraint = s.request.constraint.take();
        Self {
            cache: model.new_cache(s.request.prompt.len() + s.request.max_tokens),
            sampler: Sampler::new(s.request.sampling.clone()),
            seen: s.request.prompt.clone(),
            request: s.request,
            events: s.events,
            last_event_at: s.at,
            fed: 0,
            generated: 0,
            reserved,
            keys: Vec::new(),
            offered: 0,
            cached: 0,
            constraint,
        }
    }

    fn fail(&self, error: EngineError) {
        let _ = self.events.send(TokenEvent::Error(error));
    }

    /// Sends a sampled token and its logprobs; true once the sequence has ended: it stopped
    /// or reached its length (its `Done` sent), or its output left its format (its `Error`
    /// sent).
    fn emit(&mut self, token: u32, logprobs: Option<TokenLogprobs>, stats: &EngineStats) -> bool {
        if let Some(logprobs) = logprobs {
            let _ = self.events.send(TokenEvent::Logprobs(logprobs));
        }
        self.generated += 1;
        self.record_latency(stats);
        self.seen.push(token);
        let _ = self.events.send(TokenEvent::Token(token));
        let complete = match self.constraint.as_mut().map(|c| c.commit(token)) {
            None | Some(Ok(false)) => false,
            Some(Ok(true)) => true,
            Some(Err(e)) => {
                self.fail(EngineError::fault(format!("the output left its format: {e}")));
                return true;
            }
        };
        let finish = if self.request.stop_tokens.contains(&token) || complete {
            Finish::Stop
        } else if self.generated >= self.request.max_tokens {
            Finish::Length
        } else {
            return false;
        };
        let _ = self.events.send(TokenEvent::Done {
            prompt_tokens: self.request.prompt.len(),
            cached_tokens: self.cached,
            completion_tokens: self.generated,
            finish,
        });
        true
    }

    /// Time to first token, or between tokens, and the first token's prompt figures.
    fn record_latency(&mut self, stats: &EngineStats) {
        let now = Instant::now();
        let since = now.saturating_duration_since(self.last_event_at);
        self.last_event_at = now;
        if self.generated == 1 {
            stats.time_to_first_token.observe(since);
            stats.prompt_tokens.fetch_add(self.request.prompt.len() as u64, Ordering::Relaxed);
            stats.cached_tokens.fetch_add(self.cached as u64, Ordering::Relaxed);
            let counter = if self.cached > 0 { &stats.prefix_hits } else { &stats.prefix_misses };
            counter.fetch_add(1, Ordering::Relaxed);
        } else {
            stats.inter_token.observe(since);
        }
        stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
    }

    /// Copies in the cached blocks its prompt continues with, when it stands at a block's
    /// end. At least the prompt's last token is left to compute: its logits give the first
    /// generated token.
    fn reuse_prefix(&mut self, prefixes: &mut PrefixCache) {
        let prompt = &self.request.prompt;
        if self.fed >= prompt.len()
            || self.fed != self.cache.len()
            || self.fed != self.keys.len() * BLOCK_SIZE
        {
            return;
        }
        let usable = (prompt.len() - 1) / BLOCK_SIZE * BLOCK_SIZE;
        if self.fed >= usable {
            return;
        }
        let parent = self.keys.last().copied().unwrap_or(ROOT);
        let found = prefixes.lookup(parent, &prompt[self.fed..usable]);
        if found.is_empty() {
            return;
        }
        let spans: Vec<&crate::transformer::KvSpan> =
            found.iter().map(|(_, kv)| kv.as_ref()).collect();
        // A failed copy (memory) only costs the computation it would have saved.
        if self.cache.import(&spans).is_ok() {
            let n = found.len() * BLOCK_SIZE;
            self.fed += n;
            self.cached += n;
            self.keys.extend(found.iter().map(|(key, _)| *key));
            self.offered = self.keys.len();
        }
    }

    /// Keys its newly completed blocks and offers the cache those not cached yet, in order,
    /// evicting the least recently used blocks so the cache stays within `room` bytes; stops
    /// at the first block with no room.
    fn publish_blocks(&mut self, prefixes: &mut PrefixCache, room: usize) {
        while (self.keys.len() + 1) * BLOCK_SIZE <= self.cache.len() {
            let start = self.keys.len() * BLOCK_SIZE;
            let parent = self.keys.last().copied().unwrap_or(ROOT);
            self.keys.push(crate::prefix::key(parent, &self.seen[start..start + BLOCK_SIZE]));
        }
        while self.offered < self.keys.len() {
            let key = self.keys[self.offered];
            if !prefixes.contains(key) {
                if prefixes.block_bytes() > room {
                    return;
                }
                while prefixes.bytes() + prefixes.block_bytes() > room && prefixes.evict_one() {}
                let start = self.offered * BLOCK_SIZE;
                let parent = self.offered.checked_sub(1).map_or(ROOT, |p| self.keys[p]);
                // A paged cache (GPU) or a failed copy: nothing to keep.
                if let Ok(Some(kv)) = self.cache.export(start, BLOCK_SIZE) {
                    prefixes.insert(key, parent, &self.seen[start..start + BLOCK_SIZE], kv);
                }
            }
            self.offered += 1;
        }
    }
}

/// Requests waiting for room, counted with those still in the channel (see
/// [`super::Engine::generate`]): each one leaving the queue, admitted or not, is uncounted
/// here.
pub(super) struct Waiting {
    items: VecDeque<Submission>,
    queued: Arc<AtomicUsize>,
}

impl Waiting {
    pub(super) fn new(queued: Arc<AtomicUsize>) -> Self {
        Self { items: VecDeque::new(), queued }
    }

    fn pop_front(&mut self) -> Option<Submission> {
        let s = self.items.pop_front()?;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        Some(s)
    }
}

/// The engine thread's state.
pub(super) struct Scheduler<M> {
    model: M,
    options: EngineOptions,
    stats: Arc<EngineStats>,
    waiting: Waiting,
    active: Vec<Active>,
    /// KV bytes admitted sequences set aside, together.
    reserved: usize,
    prefixes: PrefixCache,
    /// Why the model has no KV memory, if it could not set it aside.
    kv_error: Option<candle_core::Error>,
}

impl<M: BatchedModel> Scheduler<M> {
    pub(super) fn new(
        model: M,
        options: EngineOptions,
        waiting: Waiting,
        stats: Arc<EngineStats>,
    ) -> Self {
        let per_token = model.kv_bytes_per_token();
        // Pools hand out whole blocks: each sequence may hold up to one block more than its
        // share of the budget.
        let slack = options.max_sequences * crate::transformer::paged::BLOCK_SIZE * per_token;
        let kv_error = model.reserve_kv(options.max_kv_bytes + slack).err();
        Self {
            model,
            stats,
            waiting,
            active: Vec::new(),
            reserved: 0,
            prefixes: PrefixCache::new(BLOCK_SIZE * per_token),
            kv_error,
            options,
        }
    }

    /// Runs until every [`super::Engine`] handle is gone and no work is left.
    pub(super) fn run(mut self, requests: std_mpsc::Receiver<Submission>) {
        loop {
            // Block only when there is nothing to do.
            if self.active.is_empty() && self.waiting.items.is_empty() {
                match requests.recv() {
                    Ok(s) => self.waiting.items.push_back(s),
                    Err(_) => return,
                }
            }
            self.waiting.items.extend(requests.try_iter());
            self.admit();
            self.retire_cancelled();
            self.report();
            if self.active.is_empty() {
                continue;
            }
            self.step();
            // Now, not at the next step: after the last sequence the engine waits for a
            // request, and its figures would show the ended ones as running until then.
            self.report();
        }
    }

    fn report(&self) {
        self.stats.occupancy(
            self.reserved,
            self.active.len(),
            self.waiting.items.len(),
            self.prefixes.bytes(),
        );
    }

    /// Admits waiting requests while sequences and KV memory allow, oldest first; refuses
    /// those that can never fit or are malformed.
    fn admit(&mut self) {
        let max = self.options.max_kv_bytes;
        while self.active.len() < self.options.max_sequences {
            let Some(next) = self.waiting.items.front() else { break };
            if next.events.is_closed() {
                self.waiting.pop_front();
                continue;
            }
            let positions = next.request.prompt.len() + next.request.max_tokens;
            let need = self.model.kv_bytes(positions, self.options.prefill_chunk);
            if need <= max && self.reserved + need > max {
                break;
            }
            let Some(s) = self.waiting.pop_front() else { break };
            if let Err(e) = self.admissible(&s.request, need) {
                let _ = s.events.send(TokenEvent::Error(e));
                continue;
            }
            self.reserved += need;
            let mut a = Active::new(&self.model, s, need);
            // The blocks it can use first, then cached blocks give way to it (least
            // recently used first, which those it just used are not).
            if self.options.prefix_cache {
                a.reuse_prefix(&mut self.prefixes);
            }
            while self.reserved + self.prefixes.bytes() > max && self.prefixes.evict_one() {}
            self.active.push(a);
        }
    }

    /// Why a request needing `need` KV bytes cannot run, if it cannot.
    fn admissible(&self, request: &TokenRequest, need: usize) -> Result<(), EngineError> {
        if need > self.options.max_kv_bytes {
            return Err(EngineError::invalid(format!(
                "the prompt plus max_tokens needs {need} bytes of KV memory, over the engine's \
                 {} bytes",
                self.options.max_kv_bytes
            )));
        }
        if let Some(e) = &self.kv_error {
            return Err(EngineError::fault(format!("no KV memory for the model: {e}")));
        }
        if request.prompt.is_empty() {
            return Err(EngineError::invalid("the prompt is empty"));
        }
        request.sampling.validate().map_err(EngineError::invalid)
    }

    /// Retires cancelled sequences before a step is spent on them.
    fn retire_cancelled(&mut self) {
        let reserved = &mut self.reserved;
        self.active.retain(|a| {
            let keep = !a.events.is_closed();
            if !keep {
                *reserved -= a.reserved;
            }
            keep
        });
    }

    /// One step: a forward pass over what each sequence feeds, its tokens sent, the
    /// sequences that ended retired and their blocks offered to the prefix cache.
    fn step(&mut self) {
        if self.options.prefix_cache {
            for a in self.active.iter_mut() {
                a.reuse_prefix(&mut self.prefixes);
            }
        }
        let feeds = self.feeds();
        let (logits, masks) = step(&self.model, &feeds, &mut self.active);
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        let next = logits.and_then(|logits| choose(&logits, &feeds, &masks, &mut self.active));
        match next {
            Ok(next) => {
                let finished = self.deliver(&feeds, next);
                self.retire(finished);
            }
            Err(e) => {
                for a in self.active.drain(..) {
                    a.fail(EngineError::fault(format!("the forward pass failed: {e}")));
                }
                self.reserved = 0;
            }
        }
    }

    /// What each sequence feeds this step: a decoding one its last token, a prefilling one
    /// a chunk of its prompt within the step's prompt budget.
    fn feeds(&self) -> Vec<Feed> {
        let chunk = self.options.prefill_chunk;
        let mut budget = chunk;
        let mut feeds: Vec<Feed> = Vec::with_capacity(self.active.len());
        for (i, a) in self.active.iter().enumerate() {
            let prompt = &a.request.prompt;
            if a.fed >= prompt.len() {
                feeds.push((i, vec![*a.seen.last().unwrap_or(&0)]));
                continue;
            }
            if budget == 0 {
                continue;
            }
            let left = prompt.len() - a.fed;
            let mut n = left.min(budget);
            if n < left && self.options.prefix_cache {
                // A chunk that stops mid-prompt stops at a block's end, so the sequence can
                // still take cached blocks after it (another sequence may be computing them
                // now). Only the step's first chunk may not: progress.
                let aligned = (a.fed + n) / BLOCK_SIZE * BLOCK_SIZE;
                if aligned > a.fed {
                    n = aligned - a.fed;
                } else if budget < chunk {
                    continue;
                }
            }
            budget -= n;
            feeds.push((i, prompt[a.fed..a.fed + n].to_vec()));
        }
        feeds
    }

    /// Sends each chosen token; returns the indices of the sequences that ended.
    fn deliver(&mut self, feeds: &[Feed], next: Vec<Chosen>) -> Vec<usize> {
        let mut finished = Vec::new();
        for ((i, _), chosen) in feeds.iter().zip(next) {
            let a = &mut self.active[*i];
            let ended = match chosen {
                None => false,
                Some(Ok((token, logprobs))) => a.emit(token, logprobs, &self.stats),
                Some(Err(e)) => {
                    a.fail(EngineError::fault(e));
                    true
                }
            };
            if ended {
                finished.push(*i);
            }
        }
        finished
    }

    /// Removes the ended sequences (`finished`, in increasing order) and offers the prefix
    /// cache their blocks and the running ones'.
    fn retire(&mut self, finished: Vec<usize>) {
        let mut ended = Vec::with_capacity(finished.len());
        for i in finished.into_iter().rev() {
            let a = self.active.swap_remove(i);
            self.reserved -= a.reserved;
            ended.push(a);
        }
        // Ended sequences first: their memory is free now, and they are the likeliest to be
        // continued (the next turn of a conversation).
        if self.options.prefix_cache {
            let room = self.options.max_kv_bytes.saturating_sub(self.reserved);
            for a in ended.iter_mut().chain(self.active.iter_mut()) {
                a.publish_blocks(&mut self.prefixes, room);
            }
        }
    }
}

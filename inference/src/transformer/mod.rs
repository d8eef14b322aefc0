//! Decoder-only transformers with a batched forward pass over sequences of different
//! lengths: each sequence keeps its own KV cache and position, while the weight-heavy
//! matmuls (QKV, output, MLP, lm head) run once for all of them as `[tokens, hidden] x W`.
//!
//! - [`cache`]: a sequence's KV cache;
//! - [`qwen2`]: the Qwen2/Qwen2.5 family;
//! - [`fixture`]: tiny random-weight models written to disk, for tests and benchmarks.

pub mod cache;
pub mod fixture;
pub mod qwen2;

pub use cache::SequenceCache;

/// One sequence's share of a forward step: the tokens it feeds (one when decoding, a chunk
/// of its prompt when prefilling) and its cache, which the step extends.
#[derive(Debug)]
pub struct StepInput<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut SequenceCache,
}

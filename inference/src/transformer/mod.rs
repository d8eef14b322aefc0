//! Decoder-only transformers with a batched forward pass over sequences of different
//! lengths: each sequence keeps its own KV cache and position, while the weight-heavy
//! matmuls (QKV, output, MLP, lm head) run once for all of them as `[tokens, hidden] x W`.
//!
//! - [`config`]: a model's shapes and the [`Recipe`](config::Recipe) of its layers, from
//!   `config.json` or GGUF metadata ([`metadata`]: llama.cpp's keys);
//! - `family`: the families (Qwen2, Llama/Mistral, Qwen3, Phi-3, Gemma 2 and 3, Qwen3-MoE,
//!   Qwen2-MoE, Mixtral-style Llama, Granite, OLMo 2/3, SmolLM3, gpt-oss), each family that
//!   differs from Llama in more than a switch in a file of its own that reads its recipe;
//! - [`weights`]: safetensors and GGUF weight sources behind one naming of parts;
//! - [`linear`]: dense or quantized projections;
//! - `experts`: a mixture of experts (router, top-k, experts grouped over their tokens);
//! - [`rope`]: rotary embeddings (NeoX or interleaved pairs, Llama 3 scaling);
//! - [`cache`]: a sequence's KV cache;
//! - [`paged`]: KV memory in blocks shared by all sequences (the GPU's layout);
//! - [`attention`]: attention over a cache (CPU loops whose results do not depend on the batch);
//! - [`fused`]: the CPU's work between matmuls as single loops over f32 rows;
//! - [`decoder`]: loading and the batched forward step, on three paths (candle's ops, the
//!   CPU's buffers, the GPU's pools) over one layer recipe;
//! - [`gguf`]: our reader of GGUF headers (types candle lacks transcoded at load,
//!   `iq4`, `mxfp4`)
//!   and a writer of raw blocks for fixtures;
//! - [`load`]: a model from a Hugging Face folder or a GGUF file, with clear errors;
//! - [`fixture`]: tiny random-weight models of every family written to disk in both formats.

pub mod attention;
mod awake;
pub mod cache;
pub mod config;
pub mod decoder;
mod experts;
mod family;
pub mod fixture;
pub mod fused;
pub mod gguf;
mod iq4;
pub mod linear;
pub mod load;
mod metadata;
mod mxfp4;
pub mod paged;
pub mod rope;
pub mod weights;

pub use cache::{KvSpan, SequenceCache};
pub use config::{DecoderConfig, Family};
pub use decoder::{Decoder, greedy};

/// One sequence's share of a forward step: the tokens it feeds (one when decoding, a chunk
/// of its prompt when prefilling) and its cache, which the step extends.
#[derive(Debug)]
pub struct StepInput<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut SequenceCache,
}

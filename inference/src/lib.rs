//! Local model inference for agentfleet workers. Knows nothing about clusters.
//!
//! - [`model`]: the [`Model`] trait every model implements (generate a stream of text deltas
//!   then a usage record; dropping the stream cancels) and its request/response types.
//! - [`builtin`]: models that need no weights, such as `builtin:echo`, used to test and
//!   benchmark the cluster machinery.
//! - [`error`]: the crate's error type;
//! - [`sampling`]: greedy, temperature, top-k/p, min-p, penalties, seeds;
//! - [`engine`]: the continuous-batching engine thread over a batched model, with
//!   [`prefix`], its cache of prompt blocks already computed;
//! - [`transformer`]: decoder-only model families on candle with a batched forward pass over
//!   sequences of different lengths (each with its own KV cache), loaded from Hugging Face
//!   folders or GGUF files, and tiny random fixtures;
//! - [`local`]: [`load`] a model from a local path: a decoder on its engine thread with its
//!   tokenizer, chat template, detokenizer and stop strings behind the [`Model`] trait, or an
//!   embedder;
//! - [`text`]: text in and out of a model: tokenizers (Hugging Face folder or GGUF), chat
//!   templates, streaming detokenization, stop strings, and tiny tokenizer fixtures;
//! - [`embedding`]: batched sentence embeddings with BERT-family encoders (all-MiniLM-L6-v2);
//! - [`kernels`]: fast CPU matmuls of f32 activations by GGUF-quantized weights (Q8_0, Q4_0,
//!   Q4_1, Q5_0, Q5_1) and by dense f32 weights, with runtime SIMD dispatch, the output rows
//!   split across threads, and every output independent of the batch;
//! - [`cuda`]: KV pools on a CUDA GPU and the kernels that write and attend over them (one
//!   launch per layer for every sequence of a step); with the `cuda` feature;
//! - [`gpu`]: which GPUs a machine has (NVML, loaded at run time);
//! - [`installed`]: real model files that pip packages ship (SmolLM2-135M-Instruct,
//!   all-MiniLM-L6-v2), located for tests, benchmarks and examples.
//!
//! Where KV memory lives:
//! - on the CPU, each sequence's own buffers ([`transformer::cache`]): every position of a
//!   global layer, a ring of its window plus a step's tokens for a sliding-window layer;
//! - on a CUDA GPU, blocks of pools the decoder shares among its sequences
//!   ([`transformer::paged`] keeps the block tables, [`cuda`] the pools and kernels);
//! - the prompt blocks [`prefix`] keeps for later prompts that start alike (CPU only), copied
//!   into a sequence's buffers when one does;
//! - the [`engine`]'s admission, which reserves a sequence's most ([`transformer::Decoder::kv_bytes`])
//!   and the prefix cache's blocks against one budget (`EngineOptions::max_kv_bytes`).

pub mod builtin;
pub mod cuda;
pub mod embedding;
pub mod engine;
pub mod error;
pub mod gpu;
pub mod installed;
pub mod kernels;
pub mod latency;
pub mod local;
mod memory;
pub mod model;
pub mod prefix;
pub mod sampling;
pub mod text;
pub mod transformer;

pub use candle_core::quantized::GgmlDType;
pub use error::{Error, Result};
pub use fleet_grammar::{OutputFormat, ToolChoice};
pub use local::{LoadOptions, LocalModel, device, load};
pub use model::{
    ChatMessage, Embeddings, FinishReason, GenerateRequest, Generation, GenerationEvent, Model,
    ModelStats, Role, TokenLogprob, ToolCall, Usage,
};

use std::collections::BTreeMap;
use std::sync::Arc;

/// Loads a built-in model by id (`builtin:...`). Local files and folders load with [`load`].
pub fn load_builtin(id: &str, options: &BTreeMap<String, String>) -> Result<Arc<dyn Model>> {
    match id.strip_prefix(builtin::PREFIX) {
        Some(name) => builtin::load(name, options),
        None => Err(Error::UnknownModel { id: id.to_owned(), known: builtin::ids().join(", ") }),
    }
}

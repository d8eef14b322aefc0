//! Local model inference for agentfleet workers. Knows nothing about clusters.
//!
//! - [`model`]: the [`Model`] trait every model implements (generate a stream of text deltas
//!   then a usage record; dropping the stream cancels) and its request/response types.
//! - [`builtin`]: models that need no weights, such as `builtin:echo`, used to test and
//!   benchmark the cluster machinery.
//! - [`error`]: the crate's error type;
//! - [`sampling`]: greedy, temperature, top-k/p, min-p, penalties, seeds;
//! - [`engine`]: the continuous-batching engine thread over a batched model;
//! - [`transformer`]: decoder-only model families on candle with a batched forward pass over
//!   sequences of different lengths (each with its own KV cache), and tiny random fixtures.
//! - [`kernels`]: fast CPU matmul of f32 activations by GGUF-quantized weights (Q8_0), with
//!   runtime SIMD dispatch and the output rows split across threads.
//!
//! The engine thread with continuous batching plugs these in behind the same trait.

pub mod builtin;
pub mod engine;
pub mod error;
pub mod kernels;
pub mod model;
pub mod sampling;
pub mod transformer;

pub use error::{Error, Result};
pub use model::{ChatMessage, GenerateRequest, Generation, GenerationEvent, Model, Role, Usage};

use std::collections::BTreeMap;
use std::sync::Arc;

/// Loads a model by id. Today only built-in ids (`builtin:...`) are known; local files and
/// folders come with the candle engine.
pub fn load(id: &str, options: &BTreeMap<String, String>) -> Result<Arc<dyn Model>> {
    match id.strip_prefix(builtin::PREFIX) {
        Some(name) => builtin::load(name, options),
        None => Err(Error::UnknownModel { id: id.to_owned(), known: builtin::ids().join(", ") }),
    }
}

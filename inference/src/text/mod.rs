//! Text in and out of a model.
//!
//! - [`tokenizer`]: [`Tokenizer`], loaded from a Hugging Face folder or GGUF metadata, with the
//!   ids that end a generation and the model's chat template;
//! - [`chat_template`]: [`ChatTemplate`], Hugging Face Jinja chat templates on minijinja;
//! - [`detokenize`]: [`Detokenizer`], token ids to text deltas that never split a character;
//! - [`stop`]: [`StopMatcher`], stop strings that may span deltas;
//! - [`reasoning`]: the [`reasoning::Markers`] a thinking model's reasoning sits between;
//! - [`harmony`]: gpt-oss's channels, [`harmony::Channels`] sorting reasoning from answer;
//! - `spm`: SentencePiece (`llama`) GGUF tokenizers as llama.cpp splits text;
//! - [`fixture`]: a tiny byte-level BPE tokenizer written to disk for tests and benchmarks.

pub mod chat_template;
pub mod detokenize;
pub mod fixture;
pub mod harmony;
pub mod reasoning;
mod spm;
pub mod stop;
pub mod tokenizer;

pub use chat_template::ChatTemplate;
pub use detokenize::Detokenizer;
pub use stop::StopMatcher;
pub use tokenizer::Tokenizer;

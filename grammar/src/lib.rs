//! Constrained decoding for agentfleet. An [`OutputFormat`] says what a generation must look
//! like (a JSON schema, any JSON object, a regular expression or a Lark grammar). A model's [`Vocabulary`] turns a format into a [`Constraint`] per sequence, which says
//! before each token which tokens may come next ([`Mask`]) and follows the tokens chosen.
//!
//! Tool calls are a grammar too ([`tool_call_format`]): a model's calls always name a given
//! function and carry arguments valid under its schema.
//!
//! The grammar engine is llguidance (the one vLLM, llama.cpp and mistral.rs use); masks
//! take tens of microseconds for JSON, so the engine computes them while the forward pass
//! runs. Everything here is bounded by llguidance's limits (grammar size, lexer states, fuel
//! per mask), and a panic inside llguidance comes back as an error.

mod constraint;
mod format;
mod tools;

pub use constraint::{Constraint, Mask, Vocabulary};
pub use format::OutputFormat;
pub use tools::{
    CALL_CLOSE, CALL_OPEN, CallStyle, HarmonyTokens, ToolChoice, tool_call_format, tools_preamble,
};

/// What went wrong, said so that the sender can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrammarError {
    /// The format itself: a schema, regex or grammar that does not compile.
    #[error("invalid output format: {0}")]
    Invalid(String),
    /// The model's tokenizer cannot be read as bytes per token.
    #[error("constrained decoding is not available for this model: {0}")]
    Vocabulary(String),
}

/// Runs `f`, turning a panic into an error (llguidance asserts on some inputs).
fn guarded<R>(f: impl FnOnce() -> Result<R, String>) -> Result<R, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("unknown cause");
        Err(format!("the grammar engine failed: {message}"))
    })
}

//! The inference crate's one error type.

use std::path::PathBuf;

/// Why a model could not be loaded or could not generate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown model {id:?}: known models are {known}")]
    UnknownModel { id: String, known: String },
    #[error("model option {key}={value:?} is invalid: {expected}")]
    InvalidOption { key: String, value: String, expected: &'static str },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    // models
    #[error("cannot load the model at {path}: {reason}")]
    Model { path: std::path::PathBuf, reason: String },
    #[error("the engine failed: {0}")]
    Engine(String),
    /// No room for now: the engine's waiting queue is full (or a remote model's server said
    /// 429). Retry later.
    #[error("{0}")]
    Busy(String),
    /// The model's server cannot be reached or is down for now (a remote model's endpoint
    /// refusing connections, or answering 502, 503 or 504). Retry later, maybe elsewhere.
    #[error("{0}")]
    Unavailable(String),

    // text
    #[error("cannot read {expected} {}: {reason}", path.display())]
    ReadFile { path: PathBuf, expected: &'static str, reason: String },
    #[error("{} is not a valid {expected}: {reason}", path.display())]
    InvalidFile { path: PathBuf, expected: &'static str, reason: String },
    #[error("gguf tokenizer metadata key {key} is invalid: {reason}")]
    GgufTokenizer { key: String, reason: String },
    #[error("cannot build a tokenizer from gguf metadata: {0}")]
    GgufTokenizerBuild(String),
    #[error("chat template does not parse: {0}")]
    TemplateSyntax(String),
    #[error("chat template failed to render: {0}")]
    TemplateRender(String),
    #[error("tokenizer failed: {0}")]
    Tokenize(String),

    // embeddings
    /// `config.json` names a model family this crate has no forward pass for.
    #[error("{}: unsupported model_type {found:?}, expected {expected}", path.display())]
    UnsupportedModel { path: PathBuf, found: String, expected: &'static str },
    /// Tokenizing or the forward pass failed on input that loaded fine.
    #[error("embedding failed: {0}")]
    Embedding(String),
    // kernels
    #[error("no fast kernel for these weights ({0}); use candle's QMatMul")]
    UnsupportedWeights(String),
}

impl Error {
    /// A model file or folder at `path` is missing, unreadable or not what was expected.
    pub(crate) fn model(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        Self::Model { path: path.into(), reason: first_line(&reason) }
    }
}

/// The first line of an error's message: candle appends a backtrace when `RUST_BACKTRACE`
/// is set.
pub(crate) fn first_line(e: &impl std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_owned()
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs a third-party parser that can panic on malformed input (found by `tests/fuzz.rs`:
/// tokenizers' `tokenizer.json` reader, candle's GGUF reader) and turns a panic into an
/// error naming `what`, so a bad model file is refused instead of taking the worker down.
pub(crate) fn without_panics<T>(
    what: &str,
    parse: impl FnOnce() -> T,
) -> std::result::Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(parse)).map_err(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "malformed input".to_owned());
        format!("the {what} reader failed: {why}")
    })
}

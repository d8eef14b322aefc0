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
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

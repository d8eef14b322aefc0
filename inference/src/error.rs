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
    // embeddings
    /// A model file is missing, unreadable, or does not hold what the model needs.
    #[error("{}: {reason}", path.display())]
    ModelFile { path: PathBuf, reason: String },
    /// `config.json` names a model family this crate has no forward pass for.
    #[error("{}: unsupported model_type {found:?}, expected {expected}", path.display())]
    UnsupportedModel { path: PathBuf, found: String, expected: &'static str },
    /// Tokenizing or the forward pass failed on input that loaded fine.
    #[error("embedding failed: {0}")]
    Embedding(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

//! The inference crate's one error type.

/// Why a model could not be loaded or could not generate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown model {id:?}: known models are {known}")]
    UnknownModel { id: String, known: String },
    #[error("model option {key}={value:?} is invalid: {expected}")]
    InvalidOption { key: String, value: String, expected: &'static str },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    // kernels
    #[error("no fast kernel for these weights ({0}); use candle's QMatMul")]
    UnsupportedWeights(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

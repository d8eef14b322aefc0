//! `POST /v1/embeddings`'s body, validated.

use serde_json::Value;

use super::super::errors::ApiError;
use super::fields::Fields;

/// Texts one embeddings request may carry (OpenAI's limit).
pub const MAX_EMBED_INPUTS: usize = 2048;

/// How the vectors of an embeddings response are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodingFormat {
    Float,
    /// Base64 of the little-endian f32 bytes (what the official Python client asks for).
    Base64,
}

/// A validated `POST /v1/embeddings` request.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingsRequest {
    pub model: String,
    pub input: Vec<String>,
    pub encoding_format: EncodingFormat,
    /// The vector length the client expects; we cannot shorten vectors.
    pub dimensions: Option<usize>,
}

impl EmbeddingsRequest {
    pub fn parse(body: &Value) -> Result<Self, ApiError> {
        let f = Fields::of(body)?;
        let model = f.required_string("model")?.to_owned();
        let token_ids = || {
            ApiError::unsupported("input", "token ids as input are not supported: send the texts")
        };
        let input = match f.get("input") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => {
                let mut texts = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::String(s) => texts.push(s.clone()),
                        Value::Number(_) | Value::Array(_) => return Err(token_ids()),
                        _ => {
                            return Err(ApiError::invalid(
                                "input",
                                "input must be a string or an array of strings",
                            ));
                        }
                    }
                }
                texts
            }
            Some(_) => {
                return Err(ApiError::invalid(
                    "input",
                    "input must be a string or an array of strings",
                ));
            }
            None => return Err(ApiError::invalid("input", "input is required")),
        };
        if input.is_empty() {
            return Err(ApiError::invalid("input", "input is empty: send at least one text"));
        }
        if input.len() > MAX_EMBED_INPUTS {
            return Err(ApiError::invalid(
                "input",
                format!(
                    "{} texts in one request; at most {MAX_EMBED_INPUTS}: split the request",
                    input.len()
                ),
            ));
        }
        if input.iter().any(String::is_empty) {
            return Err(ApiError::invalid("input", "input texts must not be empty"));
        }
        let encoding_format = match f.string("encoding_format")? {
            None | Some("float") => EncodingFormat::Float,
            Some("base64") => EncodingFormat::Base64,
            Some(other) => {
                return Err(ApiError::invalid(
                    "encoding_format",
                    format!("unknown encoding_format {other:?}: use \"float\" or \"base64\""),
                ));
            }
        };
        let dimensions = match f.integer("dimensions")? {
            None => None,
            Some(n) if n >= 1 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            Some(n) => {
                return Err(ApiError::invalid(
                    "dimensions",
                    format!("dimensions must be at least 1, got {n}"),
                ));
            }
        };
        Ok(Self { model, input, encoding_format, dimensions })
    }
}

//! `POST /v1/embeddings`: the texts become one embedding task (`TaskOptions::embed`) on a
//! worker that serves the model; its `Embeddings` event carries the vectors, in order.

use std::sync::Arc;

use axum::Json;
use base64::Engine;
use fleet_proto::{EventKind, TaskOptions};

use super::JsonBody;
use super::errors::ApiError;
use super::wire::{
    Embedding, EmbeddingList, EmbeddingUsage, EmbeddingsRequest, EncodingFormat, Vector,
};
use crate::cluster::NewTask;
use crate::run::TaskRun;

pub async fn create(
    crate::auth::Caller(api): super::Caller,
    JsonBody(body): JsonBody,
) -> Result<Json<EmbeddingList>, ApiError> {
    let request = EmbeddingsRequest::parse(&body)?;
    let agent = api.agent_for(&request.model)?;
    let texts = request.input.len();
    let options = TaskOptions { embed: request.input, ..Default::default() };
    let task = NewTask {
        agent,
        input: String::new(),
        context_id: String::new(),
        options: Some(Arc::new(options)),
        traceparent: crate::traceparent::incoming(),
        ..Default::default()
    };
    let mut run = TaskRun::start(&api.cluster, &api.who, task)?;
    tracing::debug!(task_id = %run.task_id, model = %request.model, texts, "embeddings");
    let mut vectors = None;
    while let Some(event) = run.next().await {
        match &event.kind {
            EventKind::Embeddings { vectors: v } => vectors = Some(v.clone()),
            EventKind::Retrying { .. } => vectors = None,
            EventKind::Completed { usage } => {
                let vectors = vectors.ok_or_else(|| {
                    ApiError::server(format!(
                        "{} completed without vectors: is it an embedding model?",
                        request.model
                    ))
                })?;
                let data = embeddings(vectors, texts, request.encoding_format, request.dimensions)?;
                return Ok(Json(EmbeddingList {
                    object: "list",
                    data,
                    model: request.model,
                    usage: EmbeddingUsage {
                        prompt_tokens: usage.prompt_tokens,
                        total_tokens: usage.prompt_tokens,
                    },
                }));
            }
            EventKind::Failed { error, kind, .. } => {
                return Err(ApiError::task_failed(*kind, error));
            }
            EventKind::Canceled { reason } => {
                return Err(ApiError::server(format!("the task was canceled: {reason}")));
            }
            _ => {}
        }
    }
    Err(ApiError::server("the task's events stopped before it ended: retry the request"))
}

/// The response's entries, checked against what was asked.
fn embeddings(
    vectors: Vec<Vec<f32>>,
    texts: usize,
    format: EncodingFormat,
    dimensions: Option<usize>,
) -> Result<Vec<Embedding>, ApiError> {
    if vectors.len() != texts {
        return Err(ApiError::server(format!(
            "the worker returned {} vectors for {texts} texts",
            vectors.len()
        )));
    }
    if let (Some(asked), Some(length)) = (dimensions, vectors.first().map(Vec::len))
        && asked != length
    {
        return Err(ApiError::unsupported(
            "dimensions",
            format!(
                "this model's vectors have {length} dimensions and cannot be shortened: \
                 leave dimensions out or set it to {length}"
            ),
        ));
    }
    Ok(vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| Embedding { object: "embedding", index, embedding: encode(v, format) })
        .collect())
}

fn encode(vector: Vec<f32>, format: EncodingFormat) -> Vector {
    match format {
        EncodingFormat::Float => Vector::Float(vector),
        EncodingFormat::Base64 => {
            let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
            Vector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_little_endian_f32() {
        // 1.0f32 = 0x3f800000 -> bytes 00 00 80 3f.
        let Vector::Base64(text) = encode(vec![1.0, -2.5], EncodingFormat::Base64) else {
            panic!("expected base64");
        };
        let bytes = base64::engine::general_purpose::STANDARD.decode(text).unwrap_or_default();
        assert_eq!(bytes[..4], [0, 0, 0x80, 0x3f]);
        assert_eq!(f32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]), -2.5);
    }

    #[test]
    fn dimensions_must_match_and_counts_must_agree() {
        let v = vec![vec![0.0; 384], vec![0.0; 384]];
        assert!(embeddings(v.clone(), 2, EncodingFormat::Float, Some(384)).is_ok());
        let e = embeddings(v.clone(), 2, EncodingFormat::Float, Some(128)).err();
        assert_eq!(e.map(|e| (e.status.as_u16(), e.param)), Some((400, Some("dimensions".into()))));
        let e = embeddings(v, 3, EncodingFormat::Float, None).err();
        assert_eq!(e.map(|e| e.status.as_u16()), Some(500));
    }
}

//! `GET /v1/models` and `GET /v1/models/{id}`: what a request may name as its `model`, the
//! models live workers serve (plus the built-ins) and the registered agents. The hidden
//! `model:` agents are not listed: their models are.

use axum::Json;
use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use serde_json::json;

use super::OpenAi;
use super::errors::ApiError;
use super::wire::{Model, ModelList};
use crate::agents::MODEL_AGENT_PREFIX;

/// Everything a request can name; an agent hides a model of the same name (requests naming
/// it run the agent).
fn all(api: &OpenAi) -> Vec<Model> {
    let agents = api.cluster.agents(&api.who);
    let mut data: Vec<Model> = api
        .cluster
        .models()
        .into_iter()
        .filter(|m| !agents.iter().any(|a| a.spec.name == m.id))
        .map(|m| Model {
            object: "model",
            created: api.started_at,
            owned_by: "agentfleet",
            agentfleet: json!({
                "kind": "model",
                "format": m.format,
                "size_bytes": m.size_bytes,
                "workers": m.workers,
                "loaded_on": m.loaded_on,
            }),
            id: m.id,
        })
        .collect();
    data.extend(agents.into_iter().filter(|a| !a.spec.name.starts_with(MODEL_AGENT_PREFIX)).map(
        |a| Model {
            id: a.spec.name.clone(),
            object: "model",
            created: api.started_at,
            owned_by: "agentfleet-agent",
            agentfleet: json!({
                "kind": "agent",
                "model": a.spec.model,
                "description": a.spec.description,
            }),
        },
    ));
    data
}

pub async fn list(crate::auth::Caller(api): super::Caller) -> Json<ModelList> {
    Json(ModelList { object: "list", data: all(&api) })
}

pub async fn get(
    crate::auth::Caller(api): super::Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Model>, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::invalid("model", format!("bad model id: {e}")))?;
    all(&api)
        .into_iter()
        .find(|m| m.id == id)
        .map(Json)
        .ok_or_else(|| ApiError::model_not_found(&id))
}

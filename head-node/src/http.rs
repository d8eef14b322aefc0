//! The head's HTTP routes, served on the same address as gRPC: `/healthz` today; the A2A and
//! OpenAI-compatible APIs join here.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use crate::cluster::Cluster;

#[derive(Debug, Deserialize)]
struct HealthQuery {
    /// Answer 503 until at least this many workers have joined.
    #[serde(default)]
    min_workers: usize,
}

/// Readiness: 200 with the worker count once the head serves (and has `min_workers`).
async fn healthz(
    State(cluster): State<Arc<Cluster>>,
    Query(q): Query<HealthQuery>,
) -> (StatusCode, Json<serde_json::Value>) {
    let workers = cluster.worker_count();
    let ready = workers >= q.min_workers;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({
        "status": if ready { "ok" } else { "waiting for workers" },
        "workers": workers,
    });
    (status, Json(body))
}

pub fn router(cluster: Arc<Cluster>) -> Router {
    Router::new().route("/healthz", get(healthz)).with_state(cluster)
}

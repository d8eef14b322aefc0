//! The head's HTTP routes, served on the same address as gRPC: `/healthz`, `/metrics`, the
//! A2A front door, the OpenAI-compatible API, the AG-UI door (`/agui/{agent}`), the AI SDK's (`/ai-sdk/{agent}`), the MCP server (`/mcp`) and the inspector
//! (`/ui`), all behind the browser checks of `crate::browsers`.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use crate::a2a::push::{WebhookPolicy, Webhooks};
use crate::auth::{Principal, Principals};
use crate::cluster::Cluster;
use crate::config::HeadConfig;

/// Running tasks allowed webhooks beside the retained and queued ones (running tasks are
/// bounded by the workers' slots, which the head does not fix in advance).
const MAX_RUNNING_WITH_WEBHOOKS: usize = 65_536;

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

/// Room in a request body beyond the input limit, for JSON framing and escapes.
const BODY_SLACK_BYTES: usize = 64 << 10;

/// `/healthz`, `/metrics`, the A2A routes, the OpenAI routes, `/mcp` and the inspector; fails
/// on an unreadable webhook CA. `shutdown` ends the inspector's live streams and MCP's.
pub fn router(
    cluster: Arc<Cluster>,
    config: &HeadConfig,
    clients: Principals,
    shutdown: tokio_util::sync::CancellationToken,
) -> crate::Result<Router> {
    // Files come base64-encoded: 4 bytes of body for 3 of input.
    let max_body_bytes = config.max_input_bytes / 3 * 4 + BODY_SLACK_BYTES;
    let extra_ca_pem = match &config.webhook_ca {
        Some(path) => Some(std::fs::read(path).map_err(|e| {
            crate::Error::InvalidConfig(format!("cannot read --webhook-ca {}: {e}", path.display()))
        })?),
        None => None,
    };
    // Every task the head keeps may have configs: retained (finished), queued, and running
    // (at most one per slot; a generous allowance stands for those).
    let max_tasks = config
        .max_retained_tasks
        .saturating_add(config.max_queued_tasks)
        .saturating_add(MAX_RUNNING_WITH_WEBHOOKS);
    let policy =
        WebhookPolicy { allow_private: config.allow_private_webhooks, extra_ca_pem, max_tasks };
    let webhooks = Webhooks::new(&policy).map_err(crate::Error::InvalidConfig)?;
    // A task's push configs go with the task when retention evicts it.
    let forget = webhooks.clone();
    cluster.on_task_evicted(Box::new(move |task_id| forget.forget(task_id)));
    let signer = match &config.card_signing_key {
        Some(path) => Some(Arc::new(
            crate::a2a::signing::CardSigner::load(path).map_err(crate::Error::InvalidConfig)?,
        )),
        None => None,
    };
    let a2a = crate::a2a::A2a {
        cluster: cluster.clone(),
        clients: clients.clone(),
        who: Principal::operator(),
        max_body_bytes,
        webhooks: webhooks.clone(),
        tls: config.tls_cert.is_some(),
        signer,
    };
    webhooks.restore(&a2a);
    let a2a_grpc = a2a.clone();
    let metrics = crate::metrics::MetricsRoute {
        cluster: cluster.clone(),
        clients: clients.clone(),
        webhooks: webhooks.clone(),
    };
    let mcp = crate::mcp::Mcp {
        cluster: cluster.clone(),
        clients: clients.clone(),
        max_body_bytes,
        shutdown: shutdown.clone(),
    };
    let browsers = crate::browsers::Browsers::new(config)?;
    let inspector = crate::inspector::Inspector {
        cluster: cluster.clone(),
        clients: clients.clone(),
        who: Principal::operator(),
        tls: config.tls_cert.is_some(),
        shutdown,
        sessions: Default::default(),
        looks: Default::default(),
    };
    let agui = crate::agui::Agui {
        cluster: cluster.clone(),
        clients: clients.clone(),
        who: Principal::operator(),
        max_body_bytes,
    };
    let openai = crate::openai::OpenAi {
        cluster: cluster.clone(),
        clients,
        who: Principal::operator(),
        max_body_bytes,
        started_at: crate::openai::unix_now(),
    };
    // `/healthz` stays outside the browser checks: probes (a load balancer's, Kubernetes')
    // name whatever address they dial, and it tells only the worker count.
    let health = Router::new().route("/healthz", get(healthz)).with_state(cluster);
    Ok(Router::new()
        .route("/metrics", get(crate::metrics::metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            crate::auth::HttpAuth {
                principals: metrics.clients.clone(),
                door: "metrics",
                render: crate::metrics::refusal,
            },
            crate::auth::http,
        ))
        .with_state(metrics)
        .merge(crate::a2a::router(a2a))
        .merge(crate::openai::router(openai))
        .merge(crate::aisdk::router(agui.clone()))
        .merge(crate::agui::router(agui))
        .merge(crate::mcp::router(mcp))
        .merge(crate::inspector::router(inspector))
        .layer(axum::middleware::from_fn_with_state(browsers, crate::browsers::guard))
        // Browsers cannot speak gRPC (no trailers), so its door is outside their checks.
        .merge(crate::a2a::grpc::router(a2a_grpc))
        .merge(health)
        .layer(axum::middleware::from_fn(crate::traceparent::scope)))
}

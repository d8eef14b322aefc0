//! Prometheus metrics at `GET /metrics` (the text exposition format), behind the client
//! credential like every other door.
//!
//! Two sources. [`TaskMetrics`] counts as tasks move, by tenant and agent (`tasks.rs`).
//! Everything else is read from the cluster's state when scraped ([`figures`]): the queue,
//! the workers and their slots, the mesh counters, and per worker and model the engine
//! figures its heartbeats carry. Names follow vLLM's (`vllm:num_requests_running` here is
//! `agentfleet:num_requests_running`), so dashboards made for it carry over.
//!
//! An admin's scrape shows the whole cluster. Anyone else's shows their tenant's: its task
//! series, and its own tasks waiting and running on the agents it sees; not the workers,
//! the mesh or other tenants' figures.

mod figures;
mod tasks;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::registry::Registry;

pub use self::tasks::TaskMetrics;
use crate::auth::Principals;
use crate::cluster::Cluster;

/// What `/metrics` needs: the cluster and who may read.
#[derive(Clone)]
pub struct MetricsRoute {
    pub cluster: Arc<Cluster>,
    pub clients: Principals,
    pub webhooks: crate::a2a::push::Webhooks,
}

/// `GET /metrics`: the text exposition format (version 0.0.4, which every Prometheus and
/// the Python client parse); the caller's tenant's figures, or everything for an admin.
pub async fn metrics(
    State(route): State<MetricsRoute>,
    extensions: axum::http::Extensions,
) -> Response {
    let who = match crate::auth::principal_of(&extensions) {
        Ok(who) => who,
        Err(e) => return refusal(e),
    };
    let cluster = &route.cluster;
    let mut scrape = Registry::default();
    if who.is_admin() {
        scrape.register_collector(Box::new(cluster.task_metrics().view(None)));
        scrape.register_collector(Box::new(figures::Figures {
            status: cluster.status(),
            agents: cluster.agent_loads(),
            // Two of the intervals workers are told now (a worker told a longer one before
            // the cluster shrank hears the shorter one with its next beat).
            silent_after: cluster.heartbeat_interval() * 2,
            push_config_tasks: route.webhooks.tasks(),
        }));
    } else {
        scrape.register_collector(Box::new(cluster.task_metrics().view(Some(who.tenant()))));
        let agents = cluster.tenant_agent_loads(&who);
        scrape.register_collector(Box::new(figures::TenantFigures { agents }));
    }
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &scrape).is_err() {
        return (StatusCode::INTERNAL_SERVER_ERROR, "encoding the metrics failed\n")
            .into_response();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// How the auth layer refuses a scrape: plain text, the table's status.
pub fn refusal(e: crate::Error) -> Response {
    (e.http_status(), format!("{e}\n")).into_response()
}

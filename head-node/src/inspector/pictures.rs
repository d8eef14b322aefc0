//! The inspector's pictures: the timeline of task attempts by worker or agent, a task's
//! call graph, and the live charts' points, as JSON (drawn as SVG by `assets/app.js`).
//!
//! Each is bounded on the head: the timeline answers at most [`MAX_BARS`] bars on
//! [`MAX_ROWS`] rows and a density past that; a graph [`cluster::MAX_GRAPH_TASKS`] tasks;
//! a chart's point is one small object a second, whatever the cluster's size (the workers
//! it names are the [`CHART_WORKERS`] busiest).

use std::time::Duration;

use axum::Json;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fleet_proto::now_us;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Refused;
use crate::auth::{Caller, Principal};
use crate::cluster::{
    self, CallGraph, Callee, Cluster, Percentiles, Timeline, TimelineQuery, TimelineRows,
    WorkerGroup, WorkerGroups, WorkerOrder, WorkerQuery,
};

/// Bars a timeline answers at most; past it, a density.
const MAX_BARS: usize = 2_000;
/// Rows a timeline answers at most (the busiest in its window).
const MAX_ROWS: usize = 200;
/// The longest window a timeline covers: a day.
const MAX_WINDOW_S: u64 = 86_400;
/// Workers a chart's point names (the others are summed).
pub(super) const CHART_WORKERS: usize = 8;
/// The window of a chart point's percentiles.
const PERCENTILE_WINDOW: Duration = Duration::from_secs(10);

/// `?window_s=&by=&agent=` of the timeline.
#[derive(Debug, Default, Deserialize)]
pub(super) struct TimelineParams {
    /// Seconds back from now; 0 or absent: everything the head retains.
    #[serde(default)]
    window_s: u64,
    /// `worker` (default) or `agent`.
    #[serde(default)]
    by: String,
    #[serde(default)]
    agent: String,
}

impl TimelineParams {
    pub(super) fn query(&self) -> Result<TimelineQuery, Refused> {
        let rows = match self.by.as_str() {
            "" | "worker" => TimelineRows::Workers,
            "agent" => TimelineRows::Agents,
            other => {
                let message = format!("by is worker or agent, not {other:?}");
                return Err(Refused(StatusCode::BAD_REQUEST, message));
            }
        };
        if self.window_s > MAX_WINDOW_S {
            let message = format!("window_s is at most {MAX_WINDOW_S} (a day), or 0 for all");
            return Err(Refused(StatusCode::BAD_REQUEST, message));
        }
        let until_us = now_us();
        Ok(TimelineQuery {
            since_us: match self.window_s {
                0 => 0,
                s => until_us.saturating_sub(s * 1_000_000),
            },
            until_us,
            rows,
            agent: (!self.agent.is_empty()).then(|| self.agent.clone()),
            max_bars: MAX_BARS,
            max_rows: MAX_ROWS,
        })
    }
}

/// The query of a timeline route, or its 400.
pub(super) type TimelineListing = super::Asked<TimelineParams>;

/// The parameters of a timeline route, checked (each look computes its own "now").
pub(super) fn timeline_params(query: TimelineListing) -> Result<TimelineParams, Refused> {
    let params = super::asked(query)?;
    params.query()?;
    Ok(params)
}

/// A timeline as the page draws it. An "everything retained" window starts at the oldest
/// attempt in it.
pub(super) fn timeline_json(t: &Timeline) -> Value {
    let since = match t.since_us {
        0 => t.bars.iter().map(|b| b.start_us).min().unwrap_or(t.until_us),
        since => since,
    };
    let rows: Vec<Value> = t
        .rows
        .iter()
        .map(|r| {
            let mut row = json!({ "key": r.key, "attempts": r.attempts, "busy_us": r.busy_us });
            if let Some(d) = &r.density {
                row["ran"] = json!(d.ran);
                row["failed"] = json!(d.failed);
            }
            row
        })
        .collect();
    let bars: Vec<Value> = t
        .bars
        .iter()
        .map(|b| {
            json!({
                "task": b.task_id.as_str(), "agent": b.agent, "worker": b.worker,
                "attempt": b.attempt, "submitted_us": b.submitted_us, "start_us": b.start_us,
                "end_us": b.end_us, "state": b.end.as_str(),
                "parent": b.parent.as_ref().map(|p| p.as_str()),
            })
        })
        .collect();
    json!({
        "now_us": now_us(),
        "since_us": since,
        "until_us": t.until_us,
        "rows": rows,
        "rows_total": t.rows_total,
        "attempts": t.attempts,
        "dense": t.dense,
        "buckets": Timeline::BUCKETS,
        "bars": bars,
    })
}

pub(super) async fn timeline(Caller(ui): super::Caller, query: TimelineListing) -> Response {
    match timeline_params(query).and_then(|params| params.query()) {
        Ok(query) => Json(timeline_json(&ui.cluster.timeline(&ui.who, &query))).into_response(),
        Err(refused) => refused.into_response(),
    }
}

/// A call graph as the page draws it.
pub(super) fn graph_json(g: &CallGraph) -> Value {
    let tasks: Vec<Value> = g
        .tasks
        .iter()
        .map(|t| {
            json!({
                "id": t.task_id.as_str(), "agent": t.agent, "state": t.state.as_str(),
                "worker": t.worker, "attempt": t.attempt, "submitted_us": t.submitted_us,
                "finished_us": t.finished_us, "depth": t.depth,
            })
        })
        .collect();
    let calls: Vec<Value> = g
        .calls
        .iter()
        .map(|c| {
            let (kind, task) = match &c.callee {
                Callee::Task(id) => ("task", Some(id.as_str())),
                Callee::Agent => ("mesh", None),
                Callee::Tool => ("tool", None),
            };
            json!({
                "from": c.caller.as_str(), "call_id": c.call_id, "name": c.name, "kind": kind,
                "task": task, "at_us": c.at_us, "result_us": c.result_us,
                "is_error": c.is_error, "replayed": c.replayed,
            })
        })
        .collect();
    json!({
        "now_us": now_us(), "root": g.root.as_str(), "tasks": tasks, "calls": calls,
        "truncated": g.truncated, "max_tasks": cluster::MAX_GRAPH_TASKS,
    })
}

pub(super) async fn graph(Caller(ui): super::Caller, Path(id): Path<String>) -> Response {
    match ui.cluster.call_graph(&ui.who, &id) {
        Ok(graph) => Json(graph_json(&graph)).into_response(),
        Err(e) => Refused::from(e).into_response(),
    }
}

fn percentiles(p: Option<Percentiles>) -> Value {
    let ms = |us: u64| us as f64 / 1000.0;
    p.map_or(
        Value::Null,
        |p| json!({ "count": p.count, "p50": ms(p.p50), "p90": ms(p.p90), "p99": ms(p.p99) }),
    )
}

/// One point of the live charts: counters the page turns into rates (tasks started and
/// ended, tokens generated and read per model and per worker), levels (queue, running, KV
/// memory, prefix-cache hits) and the latest percentiles.
pub(super) fn chart_point(cluster: &Cluster, who: &Principal) -> Value {
    let since = now_us().saturating_sub(PERCENTILE_WINDOW.as_micros() as u64);
    let recent = cluster.recent(who, since);
    // The busiest workers, and every model's figures summed over its workers: a pass over
    // the registry under the lock that copies only the workers named.
    let roster = cluster.roster(&WorkerQuery {
        groups: WorkerGroups::Model,
        order: WorkerOrder::Busiest,
        limit: CHART_WORKERS,
        max_groups: usize::MAX,
        ..Default::default()
    });
    let workers: Vec<Value> = roster
        .workers
        .iter()
        .map(|w| {
            let sum = |figure: fn(&fleet_proto::LoadedModel) -> u64| -> u64 {
                w.loaded.iter().map(figure).sum()
            };
            json!({
                "id": w.registration.worker_id,
                "generated_tokens": sum(|m| m.generated_tokens),
                "prompt_tokens": sum(|m| m.prompt_tokens),
                "kv_bytes": sum(|m| m.kv_bytes),
                "kv_capacity_bytes": sum(|m| m.kv_capacity_bytes),
                "prefix_hits": sum(|m| m.prefix_hits),
                "prefix_misses": sum(|m| m.prefix_misses),
                "running": w.running_tasks,
            })
        })
        .collect();
    // Models with figures: a built-in one has no engine, and so nothing to plot.
    let mut models: Vec<&WorkerGroup> = roster
        .groups
        .iter()
        .filter(|g| {
            !g.key.is_empty() && g.generated_tokens + g.prompt_tokens + g.kv_capacity_bytes > 0
        })
        .collect();
    models.sort_by(|a, b| a.key.cmp(&b.key));
    let models: Vec<Value> = models
        .into_iter()
        .map(|g| {
            json!({ "id": g.key, "generated_tokens": g.generated_tokens, "prompt_tokens": g.prompt_tokens })
        })
        .collect();
    json!({
        "now_us": now_us(),
        "started": recent.started,
        "ended": recent.ended.completed + recent.ended.failed + recent.ended.canceled,
        "failed": recent.ended.failed,
        "queued": recent.queued,
        "running": recent.running,
        "latency_ms": percentiles(recent.latency),
        "first_token_ms": percentiles(recent.first_token),
        "percentile_window_s": PERCENTILE_WINDOW.as_secs(),
        "models": models,
        "workers": workers,
        "workers_total": roster.total,
    })
}

pub(super) async fn chart(Caller(ui): super::Caller) -> Json<Value> {
    Json(chart_point(&ui.cluster, &ui.who))
}

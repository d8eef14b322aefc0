//! The inspector's JSON: the cluster, agents, task lists, a task and its events, as the
//! page renders them (field by field in `assets/app.js`), and the plain GET and POST
//! routes that answer with them.

use axum::Json;
use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use fleet_proto::{EventKind, TaskEvent, now_us};
use serde_json::{Value, json};

use super::{Listing, Refused, Workers, listing, workers};
use crate::auth::{Caller, Principal};
use crate::cluster::{
    AgentFigures, Cluster, TaskDetail, TaskFilter, TaskInfo, WorkerGroup, WorkerInfo, WorkerQuery,
};

/// How much of a task's input a list row shows, and a task page.
const ROW_INPUT_CHARS: usize = 200;
const PAGE_INPUT_BYTES: usize = 64 << 10;

/// `s` cut to at most `max` bytes, on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn resources(r: &fleet_proto::Resources) -> Value {
    json!({ "cpus": r.cpus, "memory_bytes": r.memory_bytes, "gpus": r.gpus })
}

/// A worker as a row of the cluster page.
fn worker_json(w: &WorkerInfo) -> Value {
    let r = &w.registration;
    let models: Vec<Value> = w
        .loaded
        .iter()
        .map(|m| {
            json!({
                "id": m.id, "kv_bytes": m.kv_bytes, "kv_capacity_bytes": m.kv_capacity_bytes,
                "active_sequences": m.active_sequences, "waiting_sequences": m.waiting_sequences,
                "tokens_per_s": m.tokens_per_s, "generated_tokens": m.generated_tokens,
                "prompt_tokens": m.prompt_tokens, "cached_tokens": m.cached_tokens,
                "prefix_hits": m.prefix_hits, "prefix_misses": m.prefix_misses,
            })
        })
        .collect();
    json!({
        "id": r.worker_id,
        "hostname": r.hostname,
        "address": w.address,
        "version": r.version,
        "labels": r.labels,
        "resources": resources(&r.resources),
        "free": resources(&w.free),
        "slots": r.slots,
        "running_tasks": w.running_tasks,
        "mesh_calls": w.mesh_calls,
        "tasks_assigned": w.tasks_assigned,
        "actors": w.actors,
        "draining": w.draining,
        "heartbeat_ago_ms": w.last_heartbeat_ago.as_millis() as u64,
        "mesh": r.mesh.as_ref().map(|m| json!({ "peer_id": m.peer_id, "addrs": m.addrs })),
        "gpus": r.gpus.iter().map(|g| json!({
            "index": g.index, "name": g.name, "memory_bytes": g.memory_bytes,
        })).collect::<Vec<_>>(),
        "models_on_disk": r.models.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        "models": models,
    })
}

/// A group of the workers' summary.
fn group_json(g: &WorkerGroup) -> Value {
    json!({
        "key": g.key, "search": g.search, "workers": g.workers, "slots": g.slots,
        "running": g.running, "cpus": g.cpus, "free_cpus": g.free_cpus,
        "memory_bytes": g.memory_bytes, "free_memory_bytes": g.free_memory_bytes,
        "gpus": g.gpus, "tokens_per_s": g.tokens_per_s, "kv_bytes": g.kv_bytes,
        "kv_capacity_bytes": g.kv_capacity_bytes, "silent": g.silent,
        "draining": g.draining, "on_mesh": g.on_mesh,
    })
}

/// The whole cluster at a glance (`/ui/api/cluster`, and each tick of its live stream): the
/// totals, and the page of workers `query` asks for with the summary of all it matches.
pub(super) fn cluster_json(
    cluster: &Cluster,
    who: &Principal,
    auth: bool,
    query: &WorkerQuery,
) -> Value {
    let status = cluster.totals_for(who);
    let roster = cluster.roster(query);
    let submitted: u64 = if who.is_admin() {
        cluster.agents(who).iter().map(|a| a.tasks_submitted).sum()
    } else {
        cluster.task_metrics().totals_of(who.tenant()).0
    };
    let c = &status.counters;
    json!({
        "now_us": now_us(),
        "head": { "version": env!("CARGO_PKG_VERSION"), "auth": auth },
        "totals": {
            "workers": roster.total,
            "agents": status.agents,
            "queued_tasks": status.queued_tasks,
            "running_tasks": status.running_tasks,
            "retained_tasks": status.retained_tasks,
            "submitted": submitted,
            "completed": c.completed,
            "failed": c.failed,
            "canceled": c.canceled,
            "calls_relayed": status.calls_relayed,
            "agents_located": status.agents_located,
            "events": cluster.task_metrics().worker_events_total(),
        },
        "workers": roster.workers.iter().map(worker_json).collect::<Vec<_>>(),
        "workers_matching": roster.matching,
        "offset": query.offset,
        "limit": query.limit,
        "groups": roster.groups.iter().map(group_json).collect::<Vec<_>>(),
        "groups_total": roster.groups_total,
        // Every worker on the mesh may call every other (see `announce_mesh`): a count, not
        // a list (a thousand workers would make a million pairs).
        "mesh": { "workers": roster.on_mesh },
    })
}

/// Every agent with its figures (`/ui/api/agents`).
pub(super) fn agents_json(cluster: &Cluster, who: &Principal) -> Value {
    let mut callers = cluster.callers(who);
    let agents: Vec<Value> = cluster
        .agent_figures(who)
        .iter()
        .map(|a| {
            let mut view = agent_json(a);
            let callers: Vec<Value> = callers
                .remove(&a.info.spec.name)
                .unwrap_or_default()
                .into_iter()
                .map(|(from, n)| json!({ "agent": from, "relayed": n.relayed, "located": n.located }))
                .collect();
            view["callers"] = json!(callers);
            view
        })
        .collect();
    json!({ "agents": agents })
}

fn agent_json(a: &AgentFigures) -> Value {
    let spec = &a.info.spec;
    let ms = |us: u64| us as f64 / 1000.0;
    json!({
        "name": spec.name,
        "version": a.info.version,
        "model": spec.model,
        "description": spec.description,
        "tools": spec.tools,
        "spec": spec_json(spec),
        "running": a.running,
        "queued": a.queued,
        "submitted": a.info.tasks_submitted,
        "done": { "completed": a.completed, "failed": a.failed, "canceled": a.canceled },
        "workers": a.workers,
        "actors": a.actors,
        "latency_ms": a.latency.map(|p| json!({
            "count": p.count, "p50": ms(p.p50), "p90": ms(p.p90), "p99": ms(p.p99),
        })),
    })
}

/// An agent's spec (already redacted by the view) as the page prints it.
fn spec_json(spec: &fleet_proto::AgentSpec) -> Value {
    let s = &spec.sampling;
    let format = s.format.as_ref().map(|f| match f {
        fleet_proto::OutputFormat::JsonObject => json!({ "type": "json_object" }),
        fleet_proto::OutputFormat::JsonSchema(schema) => {
            let schema = serde_json::from_str::<Value>(schema).unwrap_or_else(|_| json!(schema));
            json!({ "type": "json_schema", "schema": schema })
        }
        fleet_proto::OutputFormat::Regex(r) => json!({ "type": "regex", "pattern": r }),
        fleet_proto::OutputFormat::Lark(g) => json!({ "type": "lark", "grammar": g }),
    });
    json!({
        "name": spec.name,
        "model": spec.model,
        "instructions": spec.instructions,
        "description": spec.description,
        "tools": spec.tools,
        "sampling": {
            "temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens,
            "seed": s.seed, "stop": s.stop, "format": format,
            "presence_penalty": s.presence_penalty, "frequency_penalty": s.frequency_penalty,
            "thinking": s.thinking,
        },
        "resources": resources(&spec.resources),
        "max_retries": spec.max_retries,
        "max_concurrency": spec.max_concurrency,
        "labels": spec.labels,
        "model_options": spec.model_options,
        "topics": spec.topics,
    })
}

/// A task as a list row.
fn row_json(t: &TaskInfo) -> Value {
    let input = match t.input.char_indices().nth(ROW_INPUT_CHARS) {
        Some((end, _)) => &t.input[..end],
        None => &t.input,
    };
    json!({
        "id": t.task_id.as_str(),
        "number": t.number,
        "agent": t.agent,
        "state": t.state.as_str(),
        "attempt": t.attempt,
        "worker": t.worker_id,
        "input": input,
        "events": t.events,
        "submitted_at_us": t.submitted_at_us,
        "finished_at_us": t.finished_at_us,
        "parent": t.parent.as_ref().map(|p| p.as_str()),
    })
}

/// One page of tasks, newest first (`/ui/api/tasks`).
pub(super) fn tasks_json(cluster: &Cluster, who: &Principal, filter: &TaskFilter) -> Value {
    let page = cluster.list_tasks(who, filter);
    let rows: Vec<Value> = page.tasks.iter().map(row_json).collect();
    json!({
        "total": page.total, "complete": page.complete, "tasks": rows,
        "next_after": page.next_after, "searched_at_most": crate::tasks::TaskTable::SEARCH_SCAN,
    })
}

/// A task for its page.
pub(super) fn task_json(detail: &TaskDetail) -> Value {
    let t = &detail.info;
    let mut view = row_json(t);
    let children: Vec<Value> = detail
        .children
        .iter()
        .map(|c| {
            json!({
                "task_id": c.task_id.as_str(), "call_id": c.call_id,
                "agent": c.agent, "state": c.state.as_str(),
            })
        })
        .collect();
    let m = &detail.moments;
    let more = json!({
        "input": cut(&t.input, PAGE_INPUT_BYTES),
        "output": t.output,
        "error": t.error,
        "context_id": t.context_id,
        "usage": {
            "prompt_tokens": t.usage.prompt_tokens,
            "completion_tokens": t.usage.completion_tokens,
            "cached_tokens": t.usage.cached_tokens,
        },
        "parent": detail.parent.as_ref().map(|(id, call)| json!({
            "task_id": id.as_str(), "call_id": call,
        })),
        "children": children,
        "timings": {
            "submitted_us": m.submitted_us, "scheduled_us": m.scheduled_us,
            "first_token_us": m.first_token_us, "finished_us": m.finished_us,
        },
        "seq": detail.seq,
    });
    if let (Value::Object(view), Value::Object(more)) = (&mut view, more) {
        view.extend(more);
    }
    view
}

/// One event of a task's log.
pub(super) fn event_json(e: &TaskEvent) -> Value {
    let (kind, fields) = match &e.kind {
        EventKind::Submitted { agent } => ("submitted", json!({ "agent": agent })),
        EventKind::Scheduled { worker_id } => ("scheduled", json!({ "worker": worker_id })),
        EventKind::Working => ("working", json!({})),
        EventKind::TextDelta { text, .. } => ("text", json!({ "text": text })),
        EventKind::ReasoningDelta { text } => ("reasoning", json!({ "text": text })),
        EventKind::ToolCall { call_id, name, arguments, replayed, .. } => (
            "tool_call",
            json!({
                "call_id": call_id, "name": name, "arguments": arguments, "replayed": replayed,
            }),
        ),
        EventKind::ToolResult { call_id, output, is_error } => {
            ("tool_result", json!({ "call_id": call_id, "output": output, "is_error": is_error }))
        }
        EventKind::Completed { usage } => (
            "completed",
            json!({ "usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "cached_tokens": usage.cached_tokens,
            }}),
        ),
        EventKind::Failed { error, worker_id, kind } => {
            ("failed", json!({ "error": error, "worker": worker_id, "kind": kind.as_str() }))
        }
        EventKind::Canceled { reason } => ("canceled", json!({ "reason": reason })),
        EventKind::InputRequired { prompt, call_id, tool, arguments, deadline_us } => (
            "input_required",
            json!({
                "prompt": prompt, "call_id": call_id, "tool": tool, "arguments": arguments,
                "deadline_us": deadline_us,
            }),
        ),
        EventKind::InputReceived { call_id, text, rejected } => {
            ("input_received", json!({ "call_id": call_id, "text": text, "rejected": rejected }))
        }
        EventKind::Retrying { reason, failed_attempt } => {
            ("retrying", json!({ "reason": reason, "failed_attempt": failed_attempt }))
        }
        // The page says a state was saved and how big, not what it holds.
        EventKind::StateSaved { state } => ("state_saved", json!({ "bytes": state.len() })),
        EventKind::Embeddings { vectors } => (
            "embeddings",
            json!({ "count": vectors.len(), "dims": vectors.first().map_or(0, Vec::len) }),
        ),
        EventKind::Artifact(a) => {
            let mut view = json!({ "id": a.id, "name": a.name, "description": a.description });
            match &a.part {
                // The page shows what a file is, not its bytes.
                fleet_proto::ArtifactPart::File(f) => {
                    view["media_type"] = json!(f.media_type);
                    view["bytes"] = json!(f.data.len());
                    view["url"] = json!(f.url);
                }
                fleet_proto::ArtifactPart::Data(data) => {
                    view["media_type"] = json!("application/json");
                    view["data"] = json!(cut(data, MAX_DATA_SHOWN));
                    view["data_bytes"] = json!(data.len());
                }
            }
            ("artifact", view)
        }
    };
    let mut view =
        json!({ "seq": e.seq, "attempt": e.attempt, "at_us": e.timestamp_us, "kind": kind });
    if let (Value::Object(view), Value::Object(fields)) = (&mut view, fields) {
        view.extend(fields);
    }
    view
}

/// The topics the registered agents name.
fn topics_json(cluster: &Cluster, who: &Principal) -> Value {
    let mut topics: Vec<String> = cluster
        .agents(who)
        .iter()
        .flat_map(|a| a.spec.topics.iter().cloned())
        .filter(|t| who.may_use_topic(t))
        .collect();
    topics.sort();
    topics.dedup();
    json!({ "topics": topics })
}

pub(super) async fn cluster(Caller(ui): super::Caller, query: Workers) -> Response {
    match workers(query) {
        Ok(query) => {
            Json(cluster_json(&ui.cluster, &ui.who, ui.clients.required(), &query)).into_response()
        }
        Err(refused) => refused.into_response(),
    }
}

pub(super) async fn agents(Caller(ui): super::Caller) -> Json<Value> {
    Json(agents_json(&ui.cluster, &ui.who))
}

pub(super) async fn tasks(Caller(ui): super::Caller, query: Listing) -> Response {
    match listing(query) {
        Ok(filter) => Json(tasks_json(&ui.cluster, &ui.who, &filter)).into_response(),
        Err(refused) => refused.into_response(),
    }
}

pub(super) async fn task(Caller(ui): super::Caller, Path(id): Path<String>) -> Response {
    match ui.cluster.task_detail(&ui.who, &id) {
        Ok(detail) => Json(task_json(&detail)).into_response(),
        Err(e) => Refused::from(e).into_response(),
    }
}

/// Cancels a task; answers with the task as it is then (a running one ends when its
/// worker says so: the page sees that on the task's stream).
pub(super) async fn cancel(Caller(ui): super::Caller, Path(id): Path<String>) -> Response {
    let who = &ui.who;
    let canceled = match ui.cluster.cancel(who, &id) {
        Ok(_) => ui.cluster.stored_so_far().await.and_then(|()| ui.cluster.task_detail(who, &id)),
        Err(e) => Err(e),
    };
    match canceled {
        Ok(detail) => {
            tracing::info!(task_id = %id, "task canceled from the inspector");
            Json(task_json(&detail)).into_response()
        }
        Err(e) => Refused::from(e).into_response(),
    }
}

/// Conversations listed on their page at most.
const LISTED_CONVERSATIONS: u32 = 500;

/// The conversations the head keeps for the caller's tenant (in `?context=`, when given),
/// the most recently continued first.
pub(super) async fn conversations(
    Caller(ui): super::Caller,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Json<Value> {
    let context = query.get("context").map_or("", String::as_str);
    let (listed, truncated) =
        ui.cluster.list_conversations(&ui.who, context, "", LISTED_CONVERSATIONS);
    let rows: Vec<Value> = listed
        .into_iter()
        .map(|c| {
            json!({
                "context_id": c.context_id, "agent": c.agent, "turns": c.turns,
                "bytes": c.bytes, "updated_at_us": c.updated_at_us,
            })
        })
        .collect();
    Json(json!({ "conversations": rows, "truncated": truncated }))
}

/// One conversation's turns, oldest first.
pub(super) async fn conversation(
    Caller(ui): super::Caller,
    Path((agent, context)): Path<(String, String)>,
) -> Response {
    match ui.cluster.conversation(&ui.who, &context, &agent) {
        Ok(c) => {
            let turns: Vec<Value> = c
                .turns
                .iter()
                .map(|t| {
                    let calls: Vec<Value> = t
                        .tool_calls
                        .iter()
                        .map(|c| json!({ "id": c.id, "name": c.name, "arguments": c.arguments }))
                        .collect();
                    json!({
                        "role": t.role, "content": t.content, "tool_calls": calls,
                        "tool_call_id": t.tool_call_id,
                    })
                })
                .collect();
            Json(json!({
                "agent": c.agent, "context_id": c.context_id, "turns": turns,
                "updated_at_us": c.updated_at_us, "last_task": c.last_task,
            }))
            .into_response()
        }
        Err(e) => Refused::from(e).into_response(),
    }
}

pub(super) async fn topics(Caller(ui): super::Caller) -> Json<Value> {
    Json(topics_json(&ui.cluster, &ui.who))
}

/// For the live routes: a task's page data, or its error response.
pub(super) fn detail(cluster: &Cluster, who: &Principal, id: &str) -> Result<Value, Refused> {
    Ok(task_json(&cluster.task_detail(who, id)?))
}

/// The most of a data artifact's JSON an event view shows.
const MAX_DATA_SHOWN: usize = 4096;

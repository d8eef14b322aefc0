//! The cluster's agents as an MCP server at `/mcp` (streamable HTTP, through the official Rust
//! SDK, `rmcp`): `tools/list` lists the agents, `tools/call` runs one task on an agent and
//! answers with its output (and the files and data the agent returned beside it: images as
//! image content, other files as embedded resources or links, data as JSON text). A client
//! that sends a progress token gets the text as it is
//! written, in progress notifications. The server is stateless (no MCP sessions to keep or
//! bound: each POST stands alone) and sits behind the same client credentials as the other
//! front doors.
//!
//! What fails where, as MCP says: a call the server cannot start (unknown agent, arguments
//! that do not fit, a full queue) is a JSON-RPC error with the code the other doors use for
//! that kind of failure; a task that ran and failed or was canceled is a tool result with
//! `isError`, which a model reads.

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use fleet_proto::{Artifact, ArtifactPart, ErrorKind, EventKind};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, MetaObject, PaginatedRequestParams, ProgressNotificationParam,
    ResourceContents, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::agents::MODEL_AGENT_PREFIX;
use crate::auth::{Principal, Principals};
use crate::cluster::{AgentInfo, Cluster, NewTask};
use crate::error::codes;
use crate::run::TaskRun;

/// Tools on one `tools/list` page.
const PAGE: usize = 100;

/// What `/mcp` needs.
pub struct Mcp {
    pub cluster: Arc<Cluster>,
    pub clients: Principals,
    /// The largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Ends the server's open streams when the head stops.
    pub shutdown: CancellationToken,
}

/// The `/mcp` route.
pub fn router(mcp: Mcp) -> Router {
    // The `Host` check against DNS rebinding is the head's, for every door alike
    // (`crate::browsers`, with the operator's --allowed-host names); rmcp's own would refuse
    // those names.
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_max_request_body_bytes(mcp.max_body_bytes)
        .with_cancellation_token(mcp.shutdown.child_token())
        .disable_allowed_hosts();
    let agents = Agents { cluster: mcp.cluster };
    let service: StreamableHttpService<Agents, NeverSessionManager> = StreamableHttpService::new(
        move || Ok(agents.clone()),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    Router::new()
        .route_service("/mcp", service)
        .route_layer(axum::middleware::from_fn(json_posts))
        .route_layer(axum::middleware::from_fn_with_state(
            crate::auth::HttpAuth { principals: mcp.clients, door: "mcp", render: refusal },
            crate::auth::http,
        ))
}

/// MCP's POSTs are JSON-RPC: anything else (a web page's form or text/plain post) is a 415
/// with a JSON-RPC error saying what to send.
async fn json_posts(request: Request, next: Next) -> Response {
    if request.method() != axum::http::Method::POST || crate::browsers::is_json(request.headers()) {
        return next.run(request).await;
    }
    let body = json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {
            "code": -32600,
            "message": crate::browsers::not_json_message(request.headers()),
        },
    });
    (axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE, axum::Json(body)).into_response()
}

/// How the auth layer refuses an MCP request: a JSON-RPC error with the table's code.
fn refusal(e: crate::Error) -> Response {
    let body = json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {"code": codes(e.kind()).jsonrpc, "message": e.to_string()},
    });
    (e.http_status(), axum::Json(body)).into_response()
}

/// The principal of the request (rmcp hands the HTTP request's parts to the handler).
fn who(context: &RequestContext<RoleServer>) -> Result<Principal, ErrorData> {
    context
        .extensions
        .get::<axum::http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Principal>().cloned())
        .ok_or_else(|| ErrorData::internal_error("the request has no principal", None))
}

/// The MCP server of one request: the cluster's agents as tools.
#[derive(Clone)]
struct Agents {
    cluster: Arc<Cluster>,
}

impl ServerHandler for Agents {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("agentfleet", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Each tool is an agent of this agentfleet cluster: call it with the text of a \
                 task as `input` (and a `context_id` to continue a conversation).",
            )
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let who = who(&context)?;
        let agents: Vec<AgentInfo> = self.cluster.agents(&who).into_iter().filter(listed).collect();
        let cursor = request.and_then(|r| r.cursor);
        Ok(page(&agents, cursor.as_deref()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = request.name.as_ref();
        let who = who(&context)?;
        if !self.cluster.agent(&who, name).is_some_and(|a| listed(&a)) {
            return Err(ErrorData::invalid_params(
                format!("unknown tool {name:?}: tools/list lists the cluster's agents"),
                None,
            ));
        }
        let (input, context_id) = arguments(request.arguments.as_ref())?;
        let traceparent = context
            .extensions
            .get::<axum::http::request::Parts>()
            .map(|parts| crate::traceparent::from_headers(&parts.headers))
            .unwrap_or_default();
        let task = NewTask {
            agent: name.to_owned(),
            input,
            context_id,
            traceparent,
            ..Default::default()
        };
        let run = TaskRun::start(&self.cluster, &who, task).map_err(|e| {
            ErrorData::new(
                rmcp::model::ErrorCode(codes(e.kind()).jsonrpc as i32),
                e.to_string(),
                None,
            )
        })?;
        let progress = context.meta.get_progress_token();
        tokio::select! {
            result = follow(run, progress, &context) => result.map(Into::into),
            // The client went away (its connection closed; stateless, the server drops
            // `notifications/cancelled`, which would name a request of another POST):
            // dropping the run cancels the task.
            () = context.ct.cancelled() => Err(ErrorData::internal_error("canceled by the client", None)),
        }
    }
}

/// Agents MCP clients see: the ones registered by name, not the hidden agents that serve
/// bare models to the OpenAI API.
fn listed(agent: &AgentInfo) -> bool {
    !agent.spec.name.starts_with(MODEL_AGENT_PREFIX)
}

/// The page after `cursor` (the last name of the page before), so that agents registered
/// or removed between pages shift nothing.
fn page(agents: &[AgentInfo], cursor: Option<&str>) -> ListToolsResult {
    let start = cursor.map_or(0, |c| agents.partition_point(|a| a.spec.name.as_str() <= c));
    let end = (start + PAGE).min(agents.len());
    let tools: Vec<Tool> = agents[start..end].iter().map(tool).collect();
    let mut result = ListToolsResult::with_all_items(tools);
    if end < agents.len() {
        result.next_cursor = Some(agents[end - 1].spec.name.clone());
    }
    result
}

fn tool(agent: &AgentInfo) -> Tool {
    Tool::new(agent.spec.name.clone(), agent.description(), Arc::new(input_schema()))
}

fn input_schema() -> JsonObject {
    let schema = json!({
        "type": "object",
        "properties": {
            "input": {"type": "string", "description": "the task for the agent, as text"},
            "context_id": {
                "type": "string",
                "description": "continues the conversation of earlier tasks with this id",
            },
        },
        "required": ["input"],
        "additionalProperties": false,
    });
    match schema {
        Value::Object(object) => object,
        _ => JsonObject::new(),
    }
}

/// `input` and `context_id` from a call's arguments; anything else is the caller's mistake.
fn arguments(arguments: Option<&JsonObject>) -> Result<(String, String), ErrorData> {
    let invalid = |message: String| ErrorData::invalid_params(message, None);
    let Some(arguments) = arguments else {
        return Err(invalid("the call has no arguments: send {\"input\": \"...\"}".into()));
    };
    if let Some(key) = arguments.keys().find(|k| !matches!(k.as_str(), "input" | "context_id")) {
        return Err(invalid(format!(
            "unknown argument {key:?}: an agent takes `input` and an optional `context_id`"
        )));
    }
    let text = |key: &str| match arguments.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(invalid(format!("`{key}` must be a string, not {other}"))),
    };
    let input = text("input")?
        .ok_or_else(|| invalid("missing `input`: the task for the agent, as text".into()))?;
    Ok((input, text("context_id")?.unwrap_or_default()))
}

/// Follows a task to its end: its text as the result, progress notifications on the way
/// when the client asked for them.
async fn follow(
    mut run: TaskRun,
    progress: Option<rmcp::model::ProgressToken>,
    context: &RequestContext<RoleServer>,
) -> Result<CallToolResult, ErrorData> {
    let mut output = String::new();
    let mut artifacts = Vec::new();
    let mut deltas = 0u32;
    while let Some(event) = run.next().await {
        match &event.kind {
            EventKind::Artifact(artifact) => artifacts.push(artifact_content(&run, artifact)),
            EventKind::Retrying { .. } => {
                // The new attempt answers anew.
                output.clear();
                artifacts.clear();
            }
            EventKind::TextDelta { text, .. } => {
                output.push_str(text);
                deltas += 1;
                if let Some(token) = &progress {
                    let note = ProgressNotificationParam::new(token.clone(), f64::from(deltas))
                        .with_message(text.clone());
                    // Waits while the client reads slowly (the task's events wait in
                    // its log meanwhile); a client gone ends the call above.
                    let _ = context.peer.notify_progress(note).await;
                }
            }
            EventKind::Completed { .. } => {
                let mut content = vec![ContentBlock::text(output)];
                content.append(&mut artifacts);
                let mut result = CallToolResult::success(content);
                result.meta = Some(task_meta(&run));
                return Ok(result);
            }
            EventKind::Failed { error, kind, .. } => {
                let message = format!("the agent's task failed ({kind}): {error}");
                let mut result = CallToolResult::error(vec![ContentBlock::text(message)]);
                result.meta = Some(task_meta(&run));
                return Ok(result);
            }
            EventKind::Canceled { reason } => {
                let message = format!("the agent's task was canceled: {reason}");
                let mut result = CallToolResult::error(vec![ContentBlock::text(message)]);
                result.meta = Some(task_meta(&run));
                return Ok(result);
            }
            _ => {}
        }
    }
    Err(ErrorData::new(
        rmcp::model::ErrorCode(codes(ErrorKind::Unavailable).jsonrpc as i32),
        "the task's events stopped before it ended (the head is stopping, or the task left \
         its retention); its id is in `data`",
        Some(json!({"task_id": run.task_id.as_str()})),
    ))
}

/// An artifact as MCP content: an image as an image, another file as an embedded resource
/// (its bytes) or a link (its URL), data as its JSON text.
fn artifact_content(run: &TaskRun, a: &Artifact) -> ContentBlock {
    let base64 = base64::engine::general_purpose::STANDARD;
    match &a.part {
        ArtifactPart::Data(json) => ContentBlock::text(json.clone()),
        ArtifactPart::File(f) if !f.url.is_empty() => {
            let name = if a.name.is_empty() { &a.id } else { &a.name };
            let mut link = rmcp::model::Resource::new(&f.url, name).with_mime_type(&f.media_type);
            if !a.description.is_empty() {
                link = link.with_description(&a.description);
            }
            ContentBlock::resource_link(link)
        }
        ArtifactPart::File(f) if f.media_type.starts_with("image/") => {
            ContentBlock::image(base64.encode(&f.data), &f.media_type)
        }
        ArtifactPart::File(f) => ContentBlock::resource(ResourceContents::BlobResourceContents {
            uri: format!("agentfleet://tasks/{}/artifacts/{}", run.task_id.as_str(), a.id),
            mime_type: Some(f.media_type.clone()),
            blob: base64.encode(&f.data),
            meta: None,
        }),
    }
}

/// `_meta` naming the task, for a client that wants to look it up (A2A, the inspector).
fn task_meta(run: &TaskRun) -> MetaObject {
    let mut meta = JsonObject::new();
    meta.insert("agentfleet/task_id".into(), json!(run.task_id.as_str()));
    MetaObject(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agents(n: usize) -> Vec<AgentInfo> {
        (0..n)
            .map(|i| AgentInfo {
                spec: Arc::new(fleet_proto::AgentSpec {
                    name: format!("agent-{i:04}"),
                    model: "builtin:echo".into(),
                    ..Default::default()
                }),
                version: 1,
                changed_at: std::time::SystemTime::UNIX_EPOCH,
                tasks_submitted: 0,
            })
            .collect()
    }

    #[test]
    fn pages_go_through_every_agent_once() {
        let all = agents(PAGE * 2 + 7);
        let (mut seen, mut cursor) = (Vec::new(), None::<String>);
        loop {
            let page = page(&all, cursor.as_deref());
            seen.extend(page.tools.iter().map(|t| t.name.to_string()));
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let names: Vec<String> = all.iter().map(|a| a.spec.name.clone()).collect();
        assert_eq!(seen, names);
        assert!(page(&all[..PAGE], None).next_cursor.is_none(), "a full last page ends the list");
    }

    #[test]
    fn a_page_after_a_removed_agent_starts_after_it() {
        let mut all = agents(PAGE + 10);
        let first = page(&all, None);
        let cursor = first.next_cursor.expect("a second page");
        // The cursor's own agent goes before the next page is asked for.
        all.retain(|a| a.spec.name != cursor);
        let second = page(&all, Some(&cursor));
        assert_eq!(second.tools.len(), 10);
        assert_eq!(second.tools[0].name, format!("agent-{PAGE:04}"));
    }

    #[test]
    fn arguments_take_input_and_context_id_only() {
        let object = |v: Value| match v {
            Value::Object(o) => o,
            _ => JsonObject::new(),
        };
        let ok = arguments(Some(&object(json!({"input": "hi", "context_id": "c1"})))).ok();
        assert_eq!(ok, Some(("hi".into(), "c1".into())));
        let ok = arguments(Some(&object(json!({"input": "hi", "context_id": null})))).ok();
        assert_eq!(ok, Some(("hi".into(), String::new())));
        for (bad, says) in [
            (None, "no arguments"),
            (Some(json!({})), "missing `input`"),
            (Some(json!({"input": ["a"]})), "must be a string"),
            (Some(json!({"input": "a", "model": "x"})), "unknown argument \"model\""),
        ] {
            let err = arguments(bad.map(object).as_ref()).expect_err(says);
            assert_eq!(err.code, rmcp::model::ErrorCode::INVALID_PARAMS);
            assert!(err.message.contains(says), "{}", err.message);
        }
    }
}

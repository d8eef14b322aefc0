//! Agents' MCP tools: the worker that hosts an agent runs an MCP client (the official Rust
//! SDK, `rmcp`) for each MCP server in its spec, lists the server's tools and offers them to
//! the agent's model beside its other tools ([`McpTool`]).
//!
//! Anyone who can register an agent names its servers, so the worker's operator decides
//! which may run or be reached ([`McpPolicy`]): a program only if `--allow-mcp-command`
//! names it, a URL only if it starts with an `--allow-mcp-url` prefix. Nothing is allowed
//! by default.
//!
//! A server's client lives as long as the agent's actor (its toolbox): a program is killed
//! when the agent is stopped or replaced.

use std::sync::Arc;
use std::time::Duration;

use fleet_inference::ToolCall;
use fleet_proto::McpServer;
use futures::FutureExt;
use futures::future::BoxFuture;
use rmcp::model::{CallToolRequestParams, Tool};
use rmcp::service::RunningService;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use tracing::{info, warn};

use crate::toolbox::{CallContext, TOOL_CALL_TIMEOUT, ToolCaller, ToolOutcome};

/// How long connecting to a server and listing its tools may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Tools taken from one server at most.
pub const MAX_TOOLS_PER_SERVER: usize = 128;
/// Bytes of a tool's answer the model reads at most (the rest is cut, and says so).
pub const MAX_ANSWER_BYTES: usize = 256 << 10;

/// Which MCP servers this worker may run or reach (`--allow-mcp-command`, `--allow-mcp-url`).
#[derive(Clone, Debug, Default)]
pub struct McpPolicy {
    /// Programs that may be run: a name as given in the agent's command, or `*` for any.
    pub commands: Vec<String>,
    /// URL prefixes that may be reached, e.g. `https://tools.example.com/`.
    pub url_prefixes: Vec<String>,
}

impl McpPolicy {
    /// Why `server` may not be used here, if it may not.
    pub fn refusal(&self, server: &McpServer) -> Option<String> {
        if let Some(program) = server.command.first() {
            let allowed = self.commands.iter().any(|c| c == "*" || c == program);
            return (!allowed).then(|| {
                format!(
                    "this worker does not run the MCP server program {program:?}: its operator \
                     allows programs with --allow-mcp-command"
                )
            });
        }
        let allowed = self.url_prefixes.iter().any(|p| server.url.starts_with(p.as_str()));
        (!allowed).then(|| {
            format!(
                "this worker does not reach the MCP server {}: its operator allows URLs with \
                 --allow-mcp-url",
                server.url
            )
        })
    }
}

/// A connected MCP server.
type Client = RunningService<RoleClient, ()>;

/// Connects to `server` (allowed by the policy: see [`McpPolicy::refusal`]) and lists its
/// tools, each a [`McpTool`] for the toolbox.
pub async fn connect(server: &McpServer) -> Result<Vec<(String, Arc<dyn ToolCaller>)>, String> {
    let connecting = async {
        let client: Client = match server.command.split_first() {
            Some((program, args)) => {
                let mut command = tokio::process::Command::new(program);
                command.args(args);
                let transport = TokioChildProcess::new(command)
                    .map_err(|e| format!("cannot start {program:?}: {e}"))?;
                ().serve(transport).await.map_err(|e| format!("no MCP handshake: {e}"))?
            }
            None => {
                let transport = StreamableHttpClientTransport::from_uri(server.url.as_str());
                ().serve(transport).await.map_err(|e| format!("no MCP handshake: {e}"))?
            }
        };
        let tools = client.list_all_tools().await.map_err(|e| format!("tools/list: {e}"))?;
        Ok::<_, String>((client, tools))
    };
    let (client, mut tools) = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()))??;
    if tools.len() > MAX_TOOLS_PER_SERVER {
        warn!(%server, tools = tools.len(), "MCP server offers too many tools; the first {MAX_TOOLS_PER_SERVER} are used");
        tools.truncate(MAX_TOOLS_PER_SERVER);
    }
    info!(%server, tools = tools.len(), "MCP server connected");
    let client = Arc::new(client);
    Ok(tools
        .into_iter()
        .map(|tool| {
            let name = tool.name.to_string();
            let tool = McpTool { client: client.clone(), tool };
            (name, Arc::new(tool) as Arc<dyn ToolCaller>)
        })
        .collect())
}

/// One tool of an MCP server.
pub struct McpTool {
    client: Arc<Client>,
    tool: Tool,
}

impl ToolCaller for McpTool {
    fn definition(&self) -> serde_json::Value {
        serde_json::json!({
            "type": "function",
            "function": {
                "name": self.tool.name,
                "description": self.tool.description.as_deref().unwrap_or_default(),
                "parameters": self.tool.input_schema.as_ref(),
            }
        })
    }

    fn call(&self, call: &ToolCall, _context: CallContext) -> BoxFuture<'static, ToolOutcome> {
        let arguments = match serde_json::from_str::<serde_json::Value>(&call.arguments) {
            Ok(serde_json::Value::Object(arguments)) => arguments,
            Ok(serde_json::Value::Null) => serde_json::Map::new(),
            _ => {
                let refused = ToolOutcome::error(format!(
                    "the arguments of {} must be a JSON object, got {}",
                    self.tool.name, call.arguments
                ));
                return futures::future::ready(refused).boxed();
            }
        };
        let request = CallToolRequestParams::new(self.tool.name.clone()).with_arguments(arguments);
        let (client, name) = (self.client.clone(), self.tool.name.clone());
        async move {
            let answer = tokio::time::timeout(TOOL_CALL_TIMEOUT, client.call_tool(request)).await;
            match answer {
                Ok(Ok(result)) => {
                    let mut output: String = result
                        .content
                        .iter()
                        .filter_map(|block| block.as_text().map(|t| t.text.as_str()))
                        .collect::<Vec<_>>()
                        .join("\n");
                    if output.is_empty()
                        && let Some(structured) = &result.structured_content
                    {
                        output = structured.to_string();
                    }
                    let output = bounded(output);
                    ToolOutcome { output, is_error: result.is_error.unwrap_or(false) }
                }
                Ok(Err(e)) => ToolOutcome::error(format!("the MCP tool {name} failed: {e}")),
                Err(_) => ToolOutcome::error(format!(
                    "the MCP tool {name} did not answer within {} s",
                    TOOL_CALL_TIMEOUT.as_secs()
                )),
            }
        }
        .boxed()
    }
}

/// `text` cut to [`MAX_ANSWER_BYTES`] at a character boundary.
fn bounded(mut text: String) -> String {
    if text.len() > MAX_ANSWER_BYTES {
        let mut end = MAX_ANSWER_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("\n[cut: the answer was longer than 256 KiB]");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_allowed_unless_the_operator_allows_it() {
        let program =
            McpServer { command: vec!["python3".into(), "server.py".into()], url: "".into() };
        let site = McpServer { command: vec![], url: "http://127.0.0.1:9/mcp".into() };
        let none = McpPolicy::default();
        assert!(none.refusal(&program).is_some_and(|r| r.contains("--allow-mcp-command")));
        assert!(none.refusal(&site).is_some_and(|r| r.contains("--allow-mcp-url")));
        let some = McpPolicy {
            commands: vec!["python3".into()],
            url_prefixes: vec!["http://127.0.0.1:9/".into()],
        };
        assert_eq!(some.refusal(&program), None);
        assert_eq!(some.refusal(&site), None);
        let other = McpServer { command: vec!["sh".into()], url: "".into() };
        assert!(some.refusal(&other).is_some());
        let elsewhere = McpServer { command: vec![], url: "http://127.0.0.2:9/mcp".into() };
        assert!(some.refusal(&elsewhere).is_some());
        let any = McpPolicy { commands: vec!["*".into()], ..Default::default() };
        assert_eq!(any.refusal(&other), None);
    }

    #[test]
    fn long_answers_are_cut_at_a_character() {
        let long = "é".repeat(MAX_ANSWER_BYTES);
        let cut = bounded(long);
        assert!(cut.len() < MAX_ANSWER_BYTES + 64 && cut.ends_with("256 KiB]"));
    }
}

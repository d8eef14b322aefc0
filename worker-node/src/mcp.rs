//! Agents' MCP tools: the worker that hosts an agent runs an MCP client (the official Rust
//! SDK, `rmcp`) for each MCP server in its spec, lists the server's tools and offers them to
//! the agent's model beside its other tools ([`McpTool`]).
//!
//! Anyone who can register an agent names its servers, so the worker's operator decides
//! which may run or be reached ([`McpPolicy`]): a program only if `--allow-mcp-command`
//! names it, a URL only if it is at or under an `--allow-mcp-url` prefix (same scheme, host
//! and port), reached with no redirect followed. Nothing is allowed by default. The arguments are the agent's: allowing an interpreter (`python3`, `npx`)
//! lets agents run what they like with it. A program gets only a few variables of the
//! worker's environment ([`INHERITED_ENV`]), none of its secrets.
//!
//! A server's connection is closed, and its program killed, when the agent is stopped or
//! replaced; a program's stderr goes to the worker's log. A server that cannot be reached
//! fails the task, and the next task tries again.

use std::process::Stdio;
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
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::tool::{CallContext, TOOL_CALL_TIMEOUT, ToolCaller, ToolOutcome};

/// How long connecting to a server and listing its tools may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Tools taken from one server at most.
pub const MAX_TOOLS_PER_SERVER: usize = 128;
/// Bytes of a tool's description and input schema at most.
pub const MAX_DEFINITION_BYTES: usize = 16 << 10;
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
    /// Checks the URL prefixes (at start): each an `http://` or `https://` URL with a host and
    /// no credentials.
    pub fn check(&self) -> Result<(), String> {
        for prefix in &self.url_prefixes {
            let url = url::Url::parse(prefix)
                .map_err(|e| format!("--allow-mcp-url {prefix:?} is not a URL: {e}"))?;
            let scheme_ok = matches!(url.scheme(), "http" | "https");
            if !scheme_ok || url.host_str().is_none() || !url.username().is_empty() {
                return Err(format!(
                    "--allow-mcp-url {prefix:?}: give an http:// or https:// URL with a host, \
                     e.g. https://tools.example.com/"
                ));
            }
        }
        Ok(())
    }

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
        let allowed = self.url_prefixes.iter().any(|p| url_within(p, &server.url));
        (!allowed).then(|| {
            format!(
                "this worker does not reach the MCP server {}: its operator allows URLs with \
                 --allow-mcp-url",
                server.url
            )
        })
    }
}

/// Whether `url` is at or under `prefix`: the same scheme, host and port, no credentials, and
/// a path that is the prefix's or goes on below it (`/mcp` covers `/mcp/x`, not `/mcpx`).
fn url_within(prefix: &str, url: &str) -> bool {
    let (Ok(prefix), Ok(url)) = (url::Url::parse(prefix), url::Url::parse(url)) else {
        return false;
    };
    if !url.username().is_empty() || url.password().is_some() {
        return false;
    }
    let same_origin = prefix.scheme() == url.scheme()
        && prefix.host_str().is_some()
        && prefix.host_str() == url.host_str()
        && prefix.port_or_known_default() == url.port_or_known_default();
    let (base, path) = (prefix.path(), url.path());
    let below = if base.ends_with('/') {
        path.starts_with(base)
    } else {
        path.strip_prefix(base).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    same_origin && below
}

/// What an MCP server program gets of the worker's environment: what a program needs to run
/// (the variables the MCP SDKs' stdio clients pass by default), never the worker's secrets
/// (`OPENAI_API_KEY`, `FLEET_JOIN_TOKEN`, ...).
const INHERITED_ENV: [&str; 9] =
    ["HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LANG", "LC_ALL", "TMPDIR"];

/// A connected MCP server.
type Client = RunningService<RoleClient, ()>;

/// Connects to `server` (allowed by the policy: see [`McpPolicy::refusal`]) and lists its
/// tools, each a [`McpTool`] for the toolbox. The connection is closed (a program killed)
/// when `closed` is canceled: the agent was stopped or replaced.
pub async fn connect(
    server: &McpServer,
    agent: &str,
    closed: CancellationToken,
) -> Result<Vec<(String, Arc<dyn ToolCaller>)>, String> {
    let connecting = async {
        let client: Client = match server.command.split_first() {
            Some((program, args)) => {
                let mut command = tokio::process::Command::new(program);
                command.args(args).env_clear();
                for key in INHERITED_ENV {
                    if let Some(value) = std::env::var_os(key) {
                        command.env(key, value);
                    }
                }
                let (transport, stderr) = TokioChildProcess::builder(command)
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(|e| format!("cannot start {program:?}: {e}"))?;
                if let Some(stderr) = stderr {
                    tokio::spawn(log_stderr(stderr, agent.to_owned(), server.to_string()));
                }
                ().serve(transport).await.map_err(|e| format!("no MCP handshake: {e}"))?
            }
            None => {
                // The operator allowed this URL (private ones too: a local server is
                // common), but nothing it redirects to: the outbound policy's client
                // follows no redirect and uses no proxy.
                let http = fleet_outbound::Policy::any_address("--allow-mcp-url")
                    .client()
                    .build()
                    .map_err(|e| format!("no HTTP client: {e}"))?;
                let config = rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
                    server.url.as_str(),
                );
                let transport = StreamableHttpClientTransport::with_client(http, config);
                ().serve(transport).await.map_err(|e| format!("no MCP handshake: {e}"))?
            }
        };
        // Closed with the agent: a program is killed when its transport goes.
        let token = client.cancellation_token();
        let closing = closed.clone();
        tokio::spawn(async move {
            closing.cancelled().await;
            token.cancel();
        });
        let tools = client.list_all_tools().await.map_err(|e| format!("tools/list: {e}"))?;
        Ok::<_, String>((client, tools))
    };
    let (client, tools) = tokio::select! {
        () = closed.cancelled() => return Err("the agent was stopped".into()),
        connected = tokio::time::timeout(CONNECT_TIMEOUT, connecting) => connected
            .map_err(|_| format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()))??,
    };
    let client = Arc::new(client);
    let mut offered = Vec::new();
    for tool in tools {
        if offered.len() == MAX_TOOLS_PER_SERVER {
            warn!(%server, "MCP server offers more than {MAX_TOOLS_PER_SERVER} tools; the rest are left out");
            break;
        }
        if let Some(why) = unusable(&tool) {
            warn!(%server, tool = %tool.name, "MCP tool left out: {why}");
            continue;
        }
        let name = tool.name.to_string();
        offered.push((
            name,
            Arc::new(McpTool { client: client.clone(), tool }) as Arc<dyn ToolCaller>,
        ));
    }
    info!(%server, agent, tools = offered.len(), "MCP server connected");
    Ok(offered)
}

/// Why a server's tool cannot be offered to a model: a name models and OpenAI-compatible
/// endpoints refuse, or a definition too large for a prompt.
fn unusable(tool: &Tool) -> Option<String> {
    let name_ok = !tool.name.is_empty()
        && tool.name.len() <= 64
        && tool.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !name_ok {
        return Some("its name is not 1 to 64 letters, digits, '_' or '-'".into());
    }
    let size = tool.description.as_deref().map_or(0, str::len)
        + serde_json::to_string(tool.input_schema.as_ref()).map_or(usize::MAX, |s| s.len());
    (size > MAX_DEFINITION_BYTES)
        .then(|| format!("its description and schema exceed {} KiB", MAX_DEFINITION_BYTES >> 10))
}

/// A server program's stderr, line by line into the worker's log (each line cut at 1 KiB).
async fn log_stderr(stderr: tokio::process::ChildStderr, agent: String, server: String) {
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    while let Ok(Some(mut line)) = lines.next_line().await {
        if line.len() > 1024 {
            let mut end = 1024;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line.truncate(end);
        }
        info!(agent, server, "MCP server: {line}");
    }
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

    /// As MCP's annotations say: a tool is neither read-only nor idempotent unless it says
    /// so (`readOnlyHint`, `idempotentHint`; both default to false in the specification).
    fn call_once(&self) -> bool {
        let hints = self.tool.annotations.as_ref();
        let said = |hint: fn(&rmcp::model::ToolAnnotations) -> Option<bool>| {
            hints.and_then(hint).unwrap_or(false)
        };
        !said(|a| a.read_only_hint) && !said(|a| a.idempotent_hint)
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

    /// An allowed MCP URL that answers with a redirect (same origin, another path: what
    /// rmcp's own client would follow) is not followed: the connection fails and the path
    /// redirected to gets no request.
    #[tokio::test]
    async fn a_servers_redirect_is_not_followed() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let elsewhere = Arc::new(AtomicUsize::new(0));
        let hits = elsewhere.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let hits = hits.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 8192];
                    let n = stream.read(&mut buffer).await.unwrap_or(0);
                    let request = String::from_utf8_lossy(&buffer[..n]);
                    if request.contains(" /internal") {
                        hits.fetch_add(1, Ordering::SeqCst);
                    }
                    let reply = format!(
                        "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:{port}/internal\r\n\
                         Content-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                });
            }
        });
        let server = McpServer { command: vec![], url: format!("http://127.0.0.1:{port}/mcp") };
        let connected = connect(&server, "a", CancellationToken::new()).await;
        assert!(connected.is_err(), "a redirect answered the handshake");
        assert_eq!(elsewhere.load(Ordering::SeqCst), 0, "the redirect was followed");
    }

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
    fn a_url_prefix_covers_its_origin_and_the_paths_below_it() {
        let within = |prefix: &str, url: &str| url_within(prefix, url);
        assert!(within("http://127.0.0.1:8000/", "http://127.0.0.1:8000/mcp"));
        assert!(within("https://tools.example.com/mcp", "https://tools.example.com/mcp"));
        assert!(within("https://tools.example.com/mcp", "https://tools.example.com/mcp/x"));
        assert!(within("https://tools.example.com", "https://tools.example.com:443/mcp"));
        assert!(!within("https://tools.example.com/mcp", "https://tools.example.com/mcpx"));
        assert!(!within("http://127.0.0.1:80", "http://127.0.0.1:8000/mcp"));
        assert!(!within("https://tools.example.com", "https://tools.example.com.evil.net/"));
        assert!(!within("http://127.0.0.1:80/", "http://127.0.0.1:80@evil.net/"));
        assert!(!within("http://a.example/", "http://user@a.example/"));
        assert!(!within("http://a.example/", "https://a.example/"));
        assert!(!within("", "http://a.example/"));
        let policy = McpPolicy { url_prefixes: vec!["".into()], ..Default::default() };
        assert!(policy.check().is_err());
        let policy =
            McpPolicy { url_prefixes: vec!["http://u:p@a.example/".into()], ..Default::default() };
        assert!(policy.check().is_err());
    }

    #[test]
    fn long_answers_are_cut_at_a_character() {
        let long = "é".repeat(MAX_ANSWER_BYTES);
        let cut = bounded(long);
        assert!(cut.len() < MAX_ANSWER_BYTES + 64 && cut.ends_with("256 KiB]"));
    }
}

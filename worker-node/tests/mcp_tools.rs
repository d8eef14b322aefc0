//! Agents' MCP tools in a real cluster: a head and a worker process on 127.0.0.1, an agent
//! whose model (`builtin:echo`, which writes the tool calls it is told to) calls the tools
//! of MCP servers written with the official Python `mcp` package (`tests/mcp/`), over stdio
//! and over streamable HTTP; and a worker refusing servers its operator did not allow.
//!
//! Needs `python3` with the `mcp` package (the test script's virtualenv has it).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use fleet_client::{AgentSpec, Client, ErrorKind, EventKind, McpServer, Submission};
use fleet_testkit::ClusterSandbox;
use tokio::io::AsyncBufReadExt;

const LIMIT: Duration = Duration::from_secs(120);

async fn within<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(LIMIT, f).await.context("test ran past its time limit")?
}

fn server_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/tools_server.py")
}

fn agent(name: &str, server: McpServer) -> AgentSpec {
    AgentSpec {
        name: name.into(),
        model: "builtin:echo".into(),
        mcp: vec![server],
        max_retries: 0,
        ..Default::default()
    }
}

/// The model (echo) writes one call of `tool` with `arguments`.
fn calling(tool: &str, arguments: &str) -> String {
    format!(r#"<tool_call>{{"name": "{tool}", "arguments": {arguments}}}</tool_call>"#)
}

/// The task's events, to its end.
async fn run(client: &Client, agent: &str, input: &str) -> Result<Vec<EventKind>> {
    fleet_testkit::run_to_end(client, Submission::new(agent, input)).await
}

/// A head and one worker that runs MCP server programs started as `python3`.
async fn allowing_python3() -> Result<ClusterSandbox> {
    ClusterSandbox::builder()
        .workers(1)
        .worker_arg("--allow-mcp-command")
        .worker_arg("python3")
        .start()
        .await
}

/// Whether process `pid` runs (exists and is not a zombie).
fn running(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

/// The result of the task's one tool call, after checking the call was announced first.
fn tool_result(kinds: &[EventKind], tool: &str) -> Result<(String, bool)> {
    let (call_id, name) = kinds
        .iter()
        .find_map(|k| match k {
            EventKind::ToolCall { call_id, name, .. } => Some((call_id, name)),
            _ => None,
        })
        .with_context(|| format!("no tool call in {kinds:?}"))?;
    ensure!(name == tool, "called {name}, not {tool}");
    kinds
        .iter()
        .find_map(|k| match k {
            EventKind::ToolResult { call_id: id, output, is_error } if id == call_id => {
                Some((output.clone(), *is_error))
            }
            _ => None,
        })
        .with_context(|| format!("no result of the call in {kinds:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_calls_the_tools_of_a_stdio_mcp_server() -> Result<()> {
    within(async {
        let cluster = allowing_python3().await?;
        let client = cluster.client().await?;
        let script = server_script().display().to_string();
        let server = McpServer { command: vec!["python3".into(), script], url: String::new() };
        client.register_agent(agent("calculator", server.clone())).await?;

        let kinds = run(&client, "calculator", &calling("add", r#"{"a": 2, "b": 3}"#)).await?;
        ensure!(tool_result(&kinds, "add")? == ("5".to_owned(), false), "{kinds:?}");
        ensure!(matches!(kinds.last(), Some(EventKind::Completed { .. })), "{kinds:?}");

        // A tool that raises: the model reads the error, the task goes on.
        let kinds =
            run(&client, "calculator", &calling("fail", r#"{"reason": "out of paper"}"#)).await?;
        let (output, is_error) = tool_result(&kinds, "fail")?;
        ensure!(is_error && output.contains("out of paper"), "{output:?} {is_error}");
        ensure!(matches!(kinds.last(), Some(EventKind::Completed { .. })), "{kinds:?}");

        // A tool the server does not have.
        let kinds = run(&client, "calculator", &calling("divide", r#"{"a": 1}"#)).await?;
        let (output, is_error) = tool_result(&kinds, "divide")?;
        ensure!(is_error && output.contains("add, fail, environment, pid"), "{output:?}");

        // The program sees none of the worker's own variables (the sandbox gives it these).
        let kinds = run(&client, "calculator", &calling("environment", "{}")).await?;
        let (names, _) = tool_result(&kinds, "environment")?;
        let names: Vec<&str> = names.split(' ').collect();
        ensure!(names.contains(&"PATH"), "{names:?}");
        ensure!(!names.contains(&"RUST_LOG") && !names.contains(&"FLEET_MESH_LISTEN"), "{names:?}");

        // The agent replaced (a new spec): its server program goes with it.
        let kinds = run(&client, "calculator", &calling("pid", "{}")).await?;
        let (pid, _) = tool_result(&kinds, "pid")?;
        ensure!(running(&pid), "no server process {pid}");
        let mut changed = agent("calculator", server.clone());
        changed.description = "adds".into();
        client.register_agent(changed).await?;
        fleet_testkit::wait_until(Duration::from_secs(10), "the old server still runs", || {
            let gone = !running(&pid);
            async move { Ok(gone) }
        })
        .await?;
        let kinds = run(&client, "calculator", &calling("add", r#"{"a": 1, "b": 1}"#)).await?;
        ensure!(tool_result(&kinds, "add")? == ("2".to_owned(), false), "{kinds:?}");
        cluster.shutdown().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_calls_the_tools_of_a_streamable_http_mcp_server() -> Result<()> {
    within(async {
        let mut server = tokio::process::Command::new("python3")
            .arg(server_script())
            .arg("--http")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("python3 with the mcp package")?;
        let stdout = server.stdout.take().context("the server's stdout")?;
        let line = tokio::io::BufReader::new(stdout)
            .lines()
            .next_line()
            .await?
            .context("the server said nothing")?;
        let port = line.strip_prefix("listening on ").context("no port")?.to_owned();
        let url = format!("http://127.0.0.1:{port}/mcp");

        let cluster = ClusterSandbox::builder()
            .workers(1)
            .worker_arg("--allow-mcp-url")
            .worker_arg(format!("http://127.0.0.1:{port}/"))
            .start()
            .await?;
        let client = cluster.client().await?;
        client
            .register_agent(agent("remote-calculator", McpServer { command: vec![], url }))
            .await?;
        let kinds =
            run(&client, "remote-calculator", &calling("add", r#"{"a": 40, "b": 2}"#)).await?;
        ensure!(tool_result(&kinds, "add")? == ("42".to_owned(), false), "{kinds:?}");
        let _ = server.kill().await;
        cluster.shutdown().await
    })
    .await
}

/// Nothing runs or is reached unless the worker's operator allows it: the task fails with
/// the reason, naming the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_no_mcp_server_its_operator_did_not_allow() -> Result<()> {
    within(async {
        let cluster = allowing_python3().await?;
        let client = cluster.client().await?;
        let marker = std::env::temp_dir().join(format!("fleet-mcp-ran-{}", std::process::id()));
        let command = vec!["sh".into(), "-c".into(), format!("touch {}", marker.display())];
        client.register_agent(agent("sneaky", McpServer { command, url: String::new() })).await?;
        let kinds = run(&client, "sneaky", &calling("add", r#"{"a": 1, "b": 1}"#)).await?;
        let failed = kinds.iter().find_map(|k| match k {
            EventKind::Failed { error, kind, .. } => Some((error.clone(), *kind)),
            _ => None,
        });
        let (error, kind) = failed.with_context(|| format!("the task did not fail: {kinds:?}"))?;
        ensure!(kind == ErrorKind::Unsupported, "{kind:?}: {error}");
        ensure!(error.contains("--allow-mcp-command") && error.contains("sh"), "{error}");
        ensure!(!marker.exists(), "the program ran");

        let url = "http://127.0.0.1:9/mcp".to_owned();
        client.register_agent(agent("elsewhere", McpServer { command: vec![], url })).await?;
        let kinds = run(&client, "elsewhere", "hello").await?;
        let refused = kinds.iter().any(
            |k| matches!(k, EventKind::Failed { error, .. } if error.contains("--allow-mcp-url")),
        );
        ensure!(refused, "{kinds:?}");
        cluster.shutdown().await
    })
    .await
}

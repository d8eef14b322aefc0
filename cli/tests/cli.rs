//! The `fleet` binary against a real cluster (a `fleet-head` and two `fleet-worker`
//! processes on 127.0.0.1, with a client token): every command, run as a user would
//! (conversations included: `contexts` and `context` read what the head keeps over gRPC).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use fleet_client::{AgentSpec, Client, TaskState};
use fleet_testkit::ClusterSandbox;

const TOKEN: &str = "cli-test-token";
const LIMIT: Duration = Duration::from_secs(60);

/// What a `fleet` run printed and how it exited.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `fleet ARGS` against the sandbox, the address and token from the environment as a
/// user's shell would carry them.
async fn fleet(cluster: &ClusterSandbox, token: &str, args: &[&str]) -> Result<Run> {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleet"))
        .args(args)
        .env("FLEET_HEAD", &cluster.url)
        .env("FLEET_TOKEN", token)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(LIMIT, output).await.context("fleet ran too long")??;
    Ok(Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// An echo agent that takes `delay_ms` per word.
fn echo(name: &str, delay_ms: u32) -> AgentSpec {
    AgentSpec {
        name: name.into(),
        model: "builtin:echo".into(),
        model_options: BTreeMap::from([("token_delay_ms".into(), delay_ms.to_string())]),
        ..Default::default()
    }
}

/// Waits until the head reports `task` in `state`.
async fn wait_state(client: &Client, task: &str, state: TaskState) -> Result<()> {
    let want = fleet_client::pb::TaskState::from(state);
    tokio::time::timeout(LIMIT, async {
        while client.get_task(task).await?.state() != want {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::Ok(())
    })
    .await
    .with_context(|| format!("task {task} never reached {state:?}"))?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_against_a_live_cluster() -> Result<()> {
    let cluster = ClusterSandbox::builder().workers(2).token(TOKEN).start().await?;
    let client = cluster.client().await?;
    client.register_agent(echo("echo", 0)).await?;
    // 250 ms a word: a task of 12 words runs 3 s, long enough to be followed live.
    client.register_agent(echo("slow", 250)).await?;

    let status = fleet(&cluster, TOKEN, &["status"]).await?;
    ensure!(status.code == 0, "status: {}", status.stderr);
    ensure!(status.stdout.contains("workers 2 alive of 2; agents 2"), "{}", status.stdout);
    for worker in ["worker-0", "worker-1"] {
        ensure!(status.stdout.contains(worker), "status lacks {worker}: {}", status.stdout);
    }

    let agents = fleet(&cluster, TOKEN, &["agents"]).await?;
    ensure!(agents.code == 0, "agents: {}", agents.stderr);
    let lines: Vec<&str> = agents.stdout.lines().collect();
    ensure!(lines.len() == 3 && lines[0].starts_with("AGENT"), "{}", agents.stdout);
    ensure!(lines.iter().any(|l| l.starts_with("echo ") && l.contains("builtin:echo")));

    // submit: the answer on stdout, the events on stderr.
    let submit = fleet(&cluster, TOKEN, &["submit", "echo", "hello from the shell"]).await?;
    ensure!(submit.code == 0, "submit: {}", submit.stderr);
    ensure!(submit.stdout.trim_end() == "hello from the shell", "{:?}", submit.stdout);
    ensure!(submit.stderr.contains("completed ("), "{}", submit.stderr);
    let echo_task = submit.stderr.split(['[', ' ']).nth(1).context("no task id")?.to_owned();

    // submit --detach prints the id; logs follows the running task to its end.
    let words = "one two three four five six seven eight nine ten eleven twelve";
    let detached = fleet(&cluster, TOKEN, &["submit", "slow", words, "--detach"]).await?;
    ensure!(detached.code == 0, "submit --detach: {}", detached.stderr);
    let slow_task = detached.stdout.trim().to_owned();
    wait_state(&client, &slow_task, TaskState::Working).await?;
    let logs = fleet(&cluster, TOKEN, &["logs", &slow_task]).await?;
    ensure!(logs.code == 0, "logs: {}", logs.stderr);
    ensure!(logs.stdout.trim_end() == words, "{:?}", logs.stdout);
    ensure!(logs.stderr.contains("scheduled on worker-"), "{}", logs.stderr);
    ensure!(logs.stderr.lines().last().is_some_and(|l| l.contains("completed (")));

    // tasks, filtered by agent and by state.
    let tasks = fleet(&cluster, TOKEN, &["tasks", "--agent", "slow"]).await?;
    ensure!(tasks.code == 0, "tasks: {}", tasks.stderr);
    ensure!(tasks.stdout.contains(&slow_task) && !tasks.stdout.contains(&echo_task));
    let done = fleet(&cluster, TOKEN, &["tasks", "--state", "completed"]).await?;
    let row = |id: &str| done.stdout.lines().position(|l| l.starts_with(id));
    let (slow_row, echo_row) = (row(&slow_task), row(&echo_task));
    ensure!(slow_row.is_some() && echo_row.is_some(), "{}", done.stdout);
    ensure!(slow_row < echo_row, "newest first: {}", done.stdout);
    let one = fleet(&cluster, TOKEN, &["tasks", "--limit", "1"]).await?;
    ensure!(one.stdout.lines().count() == 2, "one task: {}", one.stdout);
    let failed = fleet(&cluster, TOKEN, &["tasks", "--state", "failed"]).await?;
    ensure!(failed.stdout.lines().count() == 1, "no failed tasks: {}", failed.stdout);

    // cancel a running task; following it then ends with the cancel, exit code 1.
    let long = "w ".repeat(200);
    let detached = fleet(&cluster, TOKEN, &["submit", "slow", &long, "--detach"]).await?;
    let doomed = detached.stdout.trim().to_owned();
    wait_state(&client, &doomed, TaskState::Working).await?;
    let cancel = fleet(&cluster, TOKEN, &["cancel", &doomed]).await?;
    ensure!(cancel.code == 0, "cancel: {}", cancel.stderr);
    ensure!(cancel.stdout.trim() == format!("{doomed} canceled"), "{:?}", cancel.stdout);
    let logs = fleet(&cluster, TOKEN, &["logs", &doomed]).await?;
    ensure!(logs.code == 1 && logs.stderr.contains("canceled"), "{}", logs.stderr);

    // A conversation: two turns in a context, listed, read, deleted (once; again: none).
    for words in ["first words", "then more"] {
        let turn = fleet(&cluster, TOKEN, &["submit", "echo", words, "--context", "c7"]).await?;
        ensure!(turn.code == 0, "submit --context: {}", turn.stderr);
    }
    let contexts = fleet(&cluster, TOKEN, &["contexts", "--context", "c7"]).await?;
    ensure!(contexts.code == 0, "contexts: {}", contexts.stderr);
    let lines: Vec<&str> = contexts.stdout.lines().collect();
    ensure!(lines.len() == 2 && lines[0].starts_with("CONTEXT"), "{}", contexts.stdout);
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    ensure!(row[..3] == ["c7", "echo", "4"], "{}", contexts.stdout);
    let context = fleet(&cluster, TOKEN, &["context", "c7"]).await?;
    ensure!(context.code == 0, "context: {}", context.stderr);
    let said = "# c7 with echo\nuser: first words\nassistant: first words\nuser: then more\nassistant: then more\n";
    ensure!(context.stdout == said, "{:?}", context.stdout);
    let delete = fleet(&cluster, TOKEN, &["context", "c7", "--delete"]).await?;
    ensure!(delete.code == 0 && delete.stdout.starts_with("1 conversation"), "{}", delete.stdout);
    let again = fleet(&cluster, TOKEN, &["context", "c7", "--delete"]).await?;
    ensure!(again.code == 0 && again.stdout.starts_with("0 conversation"), "{}", again.stdout);
    let gone = fleet(&cluster, TOKEN, &["context", "c7"]).await?;
    ensure!(gone.code == 1 && gone.stderr.contains("no conversation"), "{}", gone.stderr);

    // Topics: offsets as stored; a follower from an offset; a group resumes after what it
    // acknowledged.
    for (i, word) in ["alpha", "beta", "gamma"].into_iter().enumerate() {
        let published = fleet(&cluster, TOKEN, &["publish", "news", word]).await?;
        ensure!(published.stdout.trim() == i.to_string(), "{published:?}");
    }
    let all = fleet(&cluster, TOKEN, &["follow", "news", "--from", "1", "--limit", "2"]).await?;
    ensure!(all.stdout == "1 client: beta\n2 client: gamma\n", "{all:?}");
    let some = ["follow", "news", "--group", "g", "--limit", "2"];
    let first = fleet(&cluster, TOKEN, &some).await?;
    ensure!(first.stdout == "0 client: alpha\n1 client: beta\n", "{first:?}");
    let rest = fleet(&cluster, TOKEN, &["follow", "news", "--group", "g", "--limit", "1"]).await?;
    ensure!(rest.stdout == "2 client: gamma\n", "{rest:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mistakes_get_a_clear_message_and_a_failing_exit_code() -> Result<()> {
    let cluster = ClusterSandbox::builder().workers(1).token(TOKEN).start().await?;

    let no_token = fleet(&cluster, "wrong-token", &["status"]).await?;
    ensure!(no_token.code == 1, "exit {}", no_token.code);
    ensure!(no_token.stderr.contains("wrong client token"), "{}", no_token.stderr);
    ensure!(no_token.stderr.lines().count() == 1, "one line: {}", no_token.stderr);

    let unknown = fleet(&cluster, TOKEN, &["logs", "no-such-task"]).await?;
    ensure!(unknown.code == 1 && unknown.stderr.contains("no-such-task"), "{}", unknown.stderr);

    let no_agent = fleet(&cluster, TOKEN, &["submit", "nobody", "hi"]).await?;
    ensure!(no_agent.code == 1 && no_agent.stderr.contains("nobody"), "{}", no_agent.stderr);

    let bad_state = fleet(&cluster, TOKEN, &["tasks", "--state", "sleeping"]).await?;
    ensure!(bad_state.code == 2 && bad_state.stderr.contains("sleeping"), "{}", bad_state.stderr);

    // No actor has saved a state: an empty table, and a read that says how states come.
    let actors = fleet(&cluster, TOKEN, &["actors"]).await?;
    ensure!(actors.code == 0 && actors.stdout.starts_with("AGENT"), "{actors:?}");
    let state = fleet(&cluster, TOKEN, &["actor", "nobody", "--context", "c"]).await?;
    ensure!(state.code == 1 && state.stderr.contains("no stored state"), "{state:?}");

    // No head at the address: says where it tried.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleet"))
        .args(["--head", "http://127.0.0.1:9", "status"])
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.code() == Some(1) && stderr.contains("127.0.0.1:9"), "{stderr}");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleet"))
        .args(["--head", "http://127.0.0.1:9", "health"])
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.code() == Some(1) && stderr.contains("127.0.0.1:9"), "{stderr}");
    Ok(())
}

/// `fleet health` is a container's health check: no token, exit 0 while the head serves,
/// 1 when it is not ready (here: fewer workers than asked for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_without_a_token() -> Result<()> {
    let cluster = ClusterSandbox::builder().workers(1).token(TOKEN).start().await?;
    let ready = fleet(&cluster, "", &["health"]).await?;
    ensure!(ready.code == 0, "{ready:?}");
    ensure!(
        ready.stdout.contains(r#""status":"ok""#) && ready.stdout.contains(r#""workers":1"#),
        "{ready:?}"
    );
    let short = fleet(&cluster, "", &["health", "--min-workers", "2"]).await?;
    ensure!(short.code == 1 && short.stdout.contains("waiting for workers"), "{short:?}");
    // A list of heads (a leader and its standbys): healthy when one of them serves.
    let heads = format!("http://127.0.0.1:9,{}", cluster.url);
    let one_of_two = fleet(&cluster, "", &["--head", &heads, "health"]).await?;
    ensure!(
        one_of_two.code == 0 && one_of_two.stdout.contains(r#""status":"ok""#),
        "{one_of_two:?}"
    );
    let none = fleet(&cluster, "", &["--head", "http://127.0.0.1:9,http://127.0.0.1:10", "health"])
        .await?;
    ensure!(none.code == 1 && none.stdout.contains("127.0.0.1:10"), "{none:?}");
    Ok(())
}

//! Agents calling agents straight between workers over the mesh: a head and three worker
//! processes on 127.0.0.1. Agent "caller" runs on one worker and calls agent "callee" on
//! another; the head only says where the callee runs (its counters show no relayed call and
//! no task of the callee), 1,000 concurrent calls all answer, and killing the callee's
//! worker fails the calls in flight at once while new calls reach the re-placed callee.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use fleet_client::{AgentSpec, Client, EventKind, Submission, TaskState};
use fleet_testkit::ClusterSandbox;
use futures::StreamExt;

const LIMIT: Duration = Duration::from_secs(120);

async fn within<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(LIMIT, f).await.context("test ran past its time limit")?
}

fn echo(name: &str, role: &str, tools: &[&str]) -> AgentSpec {
    AgentSpec {
        name: name.into(),
        model: "builtin:echo".into(),
        tools: tools.iter().map(|t| t.to_string()).collect(),
        labels: [("role".to_owned(), role.to_owned())].into(),
        ..Default::default()
    }
}

/// What the caller is told: builtin:echo repeats it, so it "writes" this call, then answers
/// with the latest tool result (the callee's echo of `question`).
fn asking(callee: &str, question: &str) -> String {
    format!(
        r#"<tool_call>{{"name": "{callee}", "arguments": {{"input": "{question}"}}}}</tool_call>"#
    )
}

/// The tool result and final text of one caller task.
async fn call_through(client: &Client, agent: &str, input: &str) -> Result<(String, bool, String)> {
    let mut stream = client.submit(Submission::new(agent, input)).await?;
    let (mut result, mut text) = (None, String::new());
    while let Some(event) = stream.next().await {
        match event?.kind {
            EventKind::ToolResult { output, is_error, .. } => result = Some((output, is_error)),
            EventKind::TextDelta { text: delta, .. } => text.push_str(&delta),
            EventKind::Completed { .. } => break,
            EventKind::Failed { error, .. } => anyhow::bail!("{agent} failed: {error}"),
            _ => {}
        }
    }
    let (output, is_error) = result.context("no tool result")?;
    Ok((output, is_error, text))
}

async fn counters(client: &Client) -> Result<(u64, u64)> {
    let status = client.status().await?;
    Ok((status.calls_relayed, status.agents_located))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_call_agents_on_other_workers_directly() -> Result<()> {
    within(async {
        let cluster = ClusterSandbox::builder().workers(0).start().await?;
        let mut one = cluster.spawn_worker_process(&["--name", "one", "--label", "role=caller"])?;
        let callee_on = |name: &'static str| {
            let host = format!("host={name}");
            cluster.spawn_worker_process(&[
                "--name",
                name,
                "--label",
                "role=callee",
                "--label",
                &host,
            ])
        };
        let (mut two, mut three) = (callee_on("two")?, callee_on("three")?);
        cluster.wait_for_workers(3, Duration::from_secs(60)).await?;
        let client = cluster.client().await?;
        client.register_agent(echo("caller", "caller", &["callee", "slow-callee"])).await?;
        client.register_agent(echo("callee", "callee", &[])).await?;
        // The slow callee can only run on worker "two": the test knows which worker to kill.
        let mut slow = echo("slow-callee", "callee", &[]);
        slow.labels.insert("host".into(), "two".into());
        slow.model_options = [("token_delay_ms".to_owned(), "3000".to_owned())].into();
        client.register_agent(slow).await?;

        // One call: the head locates the callee once, relays nothing.
        let (output, is_error, text) =
            call_through(&client, "caller", &asking("callee", "hello over the mesh")).await?;
        ensure!(!is_error && output == "hello over the mesh", "tool result {output:?}");
        ensure!(text == "hello over the mesh", "answer {text:?}");
        let (relayed, located) = counters(&client).await?;
        ensure!(relayed == 0 && located == 1, "relayed {relayed}, located {located}");

        // 1,000 concurrent calls, all answered, none through the head, no new lookup.
        let inputs: Vec<String> =
            (0..1000).map(|i| asking("callee", &format!("call {i}"))).collect();
        let outcomes = client.run_many("caller", inputs).await?;
        for (i, outcome) in outcomes.iter().enumerate() {
            ensure!(outcome.state == TaskState::Completed, "call {i}: {}", outcome.error);
            ensure!(
                outcome.output == format!("call {i}"),
                "call {i} answered {:?}",
                outcome.output
            );
        }
        let (relayed, located) = counters(&client).await?;
        ensure!(relayed == 0 && located == 1, "relayed {relayed}, located {located}");
        let callee_tasks = client
            .list_tasks(fleet_client::pb::ListTasksRequest {
                agent: "callee".into(),
                ..Default::default()
            })
            .await?;
        ensure!(callee_tasks.tasks.is_empty(), "the head saw callee tasks");

        // Calls in flight to a worker that dies fail at once, with the reason.
        let _ = call_through(&client, "caller", &asking("slow-callee", "warm")).await?;
        let pending: Vec<_> = (0..5)
            .map(|i| {
                let client = client.clone();
                tokio::spawn(async move {
                    call_through(&client, "caller", &asking("slow-callee", &format!("slow {i}")))
                        .await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let killed_at = std::time::Instant::now();
        two.kill().await?;
        for call in pending {
            let (output, is_error, _) = call.await??;
            ensure!(is_error, "a call to a dead worker answered {output:?}");
            ensure!(output.contains("slow-callee"), "{output}");
        }
        ensure!(killed_at.elapsed() < Duration::from_secs(10), "{:?}", killed_at.elapsed());

        // New calls reach the agents re-placed on the surviving worker (once the head has
        // dropped the dead one).
        for _ in 0..100 {
            if client.status().await?.workers.len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (output, is_error, _) =
            call_through(&client, "caller", &asking("callee", "after the crash")).await?;
        ensure!(!is_error && output == "after the crash", "{output:?}");
        let (relayed, _) = counters(&client).await?;
        ensure!(relayed == 0, "relayed {relayed}");
        // Only "three" is left to host the callee; the slow callee has nowhere to run.
        let status = client.status().await?;
        let alive: Vec<&str> = status.workers.iter().map(|w| w.worker_id.as_str()).collect();
        ensure!(alive.contains(&"three") && !alive.contains(&"two"), "{alive:?}");

        one.kill().await?;
        let _ = two.kill().await;
        let _ = three.kill().await;
        cluster.shutdown().await
    })
    .await
}

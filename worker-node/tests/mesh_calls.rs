//! Agents calling agents straight between workers over the mesh: a head and three worker
//! processes on 127.0.0.1. Agent "caller" runs on one worker and calls agent "callee" on
//! another; the head only says where the callee runs (its counters show no relayed call and
//! no task of the callee), 1,000 concurrent calls all answer, and killing the callee's
//! worker fails the calls in flight at once while new calls reach the re-placed callee.
//! Calls are bounded like tasks: a callee's `max_concurrency` holds, the calls running on a
//! worker count in its slots as the head sees them, and a canceled caller cancels the call.

use std::time::{Duration, Instant};

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

/// The calls from the mesh worker `id` runs, as the head last heard in its heartbeat.
async fn mesh_calls_on(client: &Client, id: &str) -> Result<u32> {
    let status = client.status().await?;
    let worker = status.workers.iter().find(|w| w.worker_id == id).context("worker gone")?;
    Ok(worker.mesh_calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_calls_honour_max_concurrency_take_slots_and_are_canceled_with_their_caller()
-> Result<()> {
    within(async {
        let cluster = ClusterSandbox::builder().workers(0).start().await?;
        let mut one = cluster.spawn_worker_process(&["--name", "one", "--label", "role=caller"])?;
        let mut two = cluster.spawn_worker_process(&["--name", "two", "--label", "role=callee"])?;
        cluster.wait_for_workers(2, Duration::from_secs(60)).await?;
        let client = cluster.client().await?;
        client.register_agent(echo("caller", "caller", &["one-at-a-time"])).await?;
        // Each word echoed 250 ms apart: a call of 6 words takes 1.5 s.
        let mut callee = echo("one-at-a-time", "callee", &[]);
        callee.max_concurrency = 1;
        callee.model_options = [("token_delay_ms".to_owned(), "250".to_owned())].into();
        client.register_agent(callee).await?;

        // Three calls at once: the callee's worker runs one at a time, and the head counts
        // the running one against its slots.
        let started = Instant::now();
        let calls: Vec<_> = (0..3)
            .map(|i| {
                let client = client.clone();
                let question = format!("a b c d e {i}");
                tokio::spawn(async move {
                    call_through(&client, "caller", &asking("one-at-a-time", &question)).await
                })
            })
            .collect();
        let mut most = 0;
        while !calls.iter().all(|c| c.is_finished()) {
            most = most.max(mesh_calls_on(&client, "two").await?);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for (i, call) in calls.into_iter().enumerate() {
            let (output, is_error, _) = call.await??;
            ensure!(!is_error && output == format!("a b c d e {i}"), "call {i}: {output:?}");
        }
        ensure!(most == 1, "worker two ran {most} calls of a max_concurrency=1 agent at once");
        let took = started.elapsed();
        ensure!(
            took >= Duration::from_millis(4000),
            "three 1.5 s calls one at a time took {took:?}"
        );

        // A caller canceled mid-call cancels the callee's run: its worker is free again long
        // before the call's 10 s would have ended.
        let words = vec!["word"; 40].join(" ");
        let mut stream =
            client.submit(Submission::new("caller", asking("one-at-a-time", &words))).await?;
        let task_id = loop {
            let event = stream.next().await.context("the caller's events ended")??;
            if matches!(event.kind, EventKind::ToolCall { .. }) {
                break event.task_id;
            }
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while mesh_calls_on(&client, "two").await? == 0 {
            ensure!(Instant::now() < deadline, "the call never ran on worker two");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        client.cancel(task_id.as_str()).await?;
        let canceled_at = Instant::now();
        while mesh_calls_on(&client, "two").await? > 0 {
            ensure!(
                canceled_at.elapsed() < Duration::from_secs(5),
                "worker two still runs the call of a canceled caller"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        one.kill().await?;
        two.kill().await?;
        cluster.shutdown().await
    })
    .await
}

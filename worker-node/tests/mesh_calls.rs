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
use fleet_testkit::{ClusterSandbox, wait_until};
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
        // All five are running on worker two (its heartbeat says so) when it dies.
        wait_until(
            Duration::from_secs(20),
            "the five slow calls never all ran on worker two",
            || async { Ok(mesh_calls_on(&client, "two").await? >= 5) },
        )
        .await?;
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
        wait_until(Duration::from_secs(20), "the head never dropped the killed worker", || async {
            Ok(client.status().await?.workers.len() == 2)
        })
        .await?;
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
        wait_until(Duration::from_secs(20), "the call never ran on worker two", || async {
            Ok(mesh_calls_on(&client, "two").await? > 0)
        })
        .await?;
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

/// A caller's input that calls `callee` with `input` (which may itself call further).
fn call_of(callee: &str, input: &str) -> String {
    let call = serde_json::json!({"name": callee, "arguments": {"input": input}}).to_string();
    // An inner call's tags escaped (valid JSON): the outer call ends at its own closing tag.
    let call = call.replace('<', "\\u003c").replace('>', "\\u003e");
    format!("<tool_call>{call}</tool_call>")
}

fn pinned(name: &str, host: &str, tools: &[&str], max_concurrency: u32) -> AgentSpec {
    let mut spec = echo(name, "callee", tools);
    spec.labels = [("host".to_owned(), host.to_owned())].into();
    spec.max_concurrency = max_concurrency;
    spec
}

/// One caller task's call: its task id as soon as it is known, then its tool result and
/// how long after the submission it came.
async fn one_call(
    client: Client,
    input: String,
    ids: tokio::sync::mpsc::UnboundedSender<String>,
) -> Result<(String, bool, Duration)> {
    let started = Instant::now();
    let mut stream = client.submit(Submission::new("caller", input)).await?;
    while let Some(event) = stream.next().await {
        let event = event?;
        match event.kind {
            EventKind::ToolCall { .. } => {
                let _ = ids.send(event.task_id.to_string());
            }
            EventKind::ToolResult { output, is_error, .. } => {
                return Ok((output, is_error, started.elapsed()));
            }
            EventKind::Failed { error, .. } => anyhow::bail!("the caller failed: {error}"),
            EventKind::Canceled { .. } => return Ok(("canceled".into(), true, started.elapsed())),
            _ => {}
        }
    }
    anyhow::bail!("the caller's events ended before its tool result")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_calls_do_not_wait_on_their_own_turn_and_a_full_line_is_refused_as_busy()
-> Result<()> {
    within(async {
        let cluster = ClusterSandbox::builder().workers(0).start().await?;
        let mut workers = vec![
            cluster.spawn_worker_process(&[
                "--name",
                "one",
                "--label",
                "role=caller",
                "--slots",
                "100",
            ])?,
            cluster
                .spawn_worker_process(&["--name", "two", "--label", "host=two", "--slots", "1"])?,
            cluster.spawn_worker_process(&[
                "--name",
                "three",
                "--label",
                "host=three",
                "--slots",
                "4",
            ])?,
        ];
        cluster.wait_for_workers(3, Duration::from_secs(60)).await?;
        let client = cluster.client().await?;
        client.register_agent(echo("caller", "caller", &["loop-a", "narrow", "other"])).await?;
        client.register_agent(pinned("loop-a", "two", &["loop-b"], 1)).await?;
        client.register_agent(pinned("loop-b", "three", &["loop-a"], 0)).await?;
        let mut narrow = pinned("narrow", "three", &[], 1);
        // 5 s a word: no call of it ends by itself while the test looks (a slow machine too).
        narrow.model_options = [("token_delay_ms".to_owned(), "5000".to_owned())].into();
        client.register_agent(narrow).await?;
        client.register_agent(pinned("other", "three", &[], 0)).await?;

        // caller → loop-a (on two: its one turn, two's one slot) → loop-b (three) → loop-a
        // again: the inner call rides on the outer one's turn and slot instead of waiting
        // for them until the call's 600 s timeout.
        let chain = call_of("loop-a", &call_of("loop-b", &call_of("loop-a", "deep")));
        let started = Instant::now();
        let answered =
            tokio::time::timeout(Duration::from_secs(20), call_through(&client, "caller", &chain))
                .await;
        let (output, is_error, _) =
            answered.context("a call calling its own agent back waited on itself")??;
        ensure!(!is_error && output == "deep", "the chain answered {output:?}");
        ensure!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());

        // 75 calls at once to a max_concurrency=1 agent whose calls take 50 s: one runs, 64
        // wait their turn, the rest are refused as busy at once (not queued for minutes).
        let (ids, mut id_rx) = tokio::sync::mpsc::unbounded_channel();
        let slow = ["word"; 10].join(" ");
        let calls: Vec<_> = (0..75)
            .map(|_| tokio::spawn(one_call(client.clone(), call_of("narrow", &slow), ids.clone())))
            .collect();
        let mut calls = futures::stream::iter(calls).buffer_unordered(75);
        // The first call to end is a refusal: the others wait their turn (or run).
        let (output, is_error, refused_at) =
            calls.next().await.context("all calls ended and none was refused")???;
        ensure!(is_error && output.contains("busy"), "before any refusal: {output:?}");
        ensure!(refused_at < Duration::from_secs(10), "the busy refusal came after {refused_at:?}");
        // The line is full; another agent on the same worker still answers at once.
        let asked = Instant::now();
        let (output, is_error, _) =
            call_through(&client, "caller", &call_of("other", "not held up")).await?;
        ensure!(!is_error && output == "not held up", "{output:?}");
        ensure!(asked.elapsed() < Duration::from_secs(3), "other waited {:?}", asked.elapsed());

        // Canceling the callers frees the callee's worker: the waiting calls and the running
        // one are all canceled.
        drop(ids);
        let deadline = Instant::now() + Duration::from_secs(20);
        wait_until(
            Duration::from_secs(20),
            "worker three never reported the running call",
            || async { Ok(mesh_calls_on(&client, "three").await? > 0) },
        )
        .await?;
        let mut task_ids = Vec::new();
        while task_ids.len() < 75 {
            let id = tokio::time::timeout_at(deadline.into(), id_rx.recv()).await;
            task_ids.push(id.ok().flatten().context("not every caller made its call")?);
        }
        for id in &task_ids {
            let _ = client.cancel(id).await;
        }
        let canceled_at = Instant::now();
        while mesh_calls_on(&client, "three").await? > 0 {
            ensure!(
                canceled_at.elapsed() < Duration::from_secs(5),
                "worker three still runs calls of canceled callers"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut answered = 0;
        while let Some(done) = calls.next().await {
            let (output, is_error, _) = done??;
            ensure!(is_error, "a canceled caller's call answered {output:?}");
            answered += 1;
        }
        ensure!(answered == 74, "{answered} calls ended after the first refusal");

        for worker in &mut workers {
            worker.kill().await?;
        }
        cluster.shutdown().await
    })
    .await
}

//! Stopping a worker as systemd, Kubernetes or podman do (SIGTERM): it drains. The head
//! places nothing more on it, its running tasks finish where they are (not retried), their
//! events are stored, it exits 0 and the head logs it as left, not lost. A drain that runs
//! past `--drain-timeout` cancels what is left, which the head retries on another worker.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use fleet_client::{AgentSpec, Client, EventKind, Submission, TaskEvent, TaskStream};
use fleet_testkit::{ClusterSandbox, wait_until};
use futures::StreamExt;

const LIMIT: Duration = Duration::from_secs(60);

fn slow_echo(name: &str, delay_ms: u32) -> AgentSpec {
    AgentSpec {
        name: name.into(),
        model: "builtin:echo".into(),
        max_retries: 2,
        model_options: BTreeMap::from([("token_delay_ms".into(), delay_ms.to_string())]),
        ..Default::default()
    }
}

/// Reads `stream` until the task runs on a worker; the events so far and that worker.
async fn until_working(stream: &mut TaskStream) -> Result<(Vec<TaskEvent>, String)> {
    let mut events = Vec::new();
    let mut worker = None;
    while let Some(event) = stream.next().await {
        let event = event?;
        if let EventKind::Scheduled { worker_id } = &event.kind {
            worker = Some(worker_id.clone());
        }
        let working = matches!(event.kind, EventKind::Working);
        events.push(event);
        if working {
            return Ok((events, worker.context("working before scheduled")?));
        }
    }
    anyhow::bail!("the task's stream ended before it ran: {events:?}")
}

async fn rest(stream: &mut TaskStream, mut events: Vec<TaskEvent>) -> Result<Vec<TaskEvent>> {
    while let Some(event) = stream.next().await {
        let event = event?;
        let end = event.kind.is_terminal();
        events.push(event);
        if end {
            return Ok(events);
        }
    }
    anyhow::bail!("the task's stream ended before the task did: {events:?}")
}

async fn draining(client: &Client, worker: &str) -> Result<bool> {
    let status = client.status().await?;
    Ok(status.workers.iter().any(|w| w.worker_id == worker && w.draining))
}

fn scheduled_on(events: &[TaskEvent]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Scheduled { worker_id } => Some(worker_id.as_str()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopping_worker_finishes_its_tasks_and_takes_no_new_ones() -> Result<()> {
    let mut cluster = ClusterSandbox::builder().workers(1).log("info").start().await?;
    let outcome = tokio::time::timeout(LIMIT, async {
        let client = cluster.client().await?;
        client.register_agent(slow_echo("slow", 150)).await?;
        client.register_agent(slow_echo("quick", 0)).await?;
        // 12 words 150 ms apart: about 1.8 s of work when the stop comes.
        let words: Vec<String> = (0..12).map(|i| format!("w{i}")).collect();
        let mut first = client.submit(Submission::new("slow", words.join(" "))).await?;
        let (seen, stopping) = until_working(&mut first).await?;
        cluster.terminate_worker(&stopping).await?;
        wait_until(LIMIT, "the head to see the worker draining", || draining(&client, &stopping))
            .await?;
        // A task submitted now waits for a worker that takes work, and runs there.
        let mut second = client.submit(Submission::new("quick", "after the stop")).await?;
        let replacement = cluster.add_worker()?;
        let second = rest(&mut second, Vec::new()).await?;
        ensure!(scheduled_on(&second) == [replacement.as_str()], "placed on: {second:?}");
        // The first one finishes where it ran, in its first attempt, its text whole.
        let first = rest(&mut first, seen).await?;
        ensure!(matches!(first.last().map(|e| &e.kind), Some(EventKind::Completed { .. })));
        ensure!(first.iter().all(|e| e.attempt == 1), "retried: {first:?}");
        ensure!(scheduled_on(&first) == [stopping.as_str()]);
        ensure!(fleet_testkit::final_text(&first) == words.join(" "));
        let code = cluster.wait_worker_exit(&stopping, Duration::from_secs(10)).await?;
        ensure!(code == Some(0), "the drained worker exited with {code:?}");
        wait_until(LIMIT, "the head to log the worker as left", || async {
            Ok(cluster.head_log().contains("worker left"))
        })
        .await?;
        let log = cluster.head_log();
        ensure!(!log.contains("worker lost"), "a drained worker counted as lost:\n{log}");
        ensure!(!log.contains("protocol error"), "the stream did not close cleanly:\n{log}");
        Ok::<_, anyhow::Error>(())
    })
    .await
    .context("test ran past its time limit");
    cluster.shutdown().await?;
    outcome?
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_past_its_timeout_cancels_and_the_head_retries_elsewhere() -> Result<()> {
    let mut cluster = ClusterSandbox::builder()
        .workers(1)
        .worker_arg("--drain-timeout")
        .worker_arg("1")
        .log("info")
        .start()
        .await?;
    let outcome = tokio::time::timeout(LIMIT, async {
        let client = cluster.client().await?;
        // 2,000 words 5 ms apart: 10 s, far past the 1 s drain, and a stream of events (and
        // of the head's acks) that must not hold the drain's deadline off.
        client.register_agent(slow_echo("long", 5)).await?;
        let words: Vec<String> = (0..2000).map(|i| format!("w{i}")).collect();
        let mut task = client.submit(Submission::new("long", words.join(" "))).await?;
        let (seen, stopping) = until_working(&mut task).await?;
        let other = cluster.add_worker()?;
        cluster.wait_for_workers(2, LIMIT).await?;
        let stopped = Instant::now();
        cluster.terminate_worker(&stopping).await?;
        let code = cluster.wait_worker_exit(&stopping, Duration::from_secs(10)).await?;
        let took = stopped.elapsed();
        ensure!(code == Some(0), "exited with {code:?}");
        // The drain timeout, then at most the grace for the last events and the close.
        ensure!(took < Duration::from_secs(6), "the stop took {took:?}");
        let events = rest(&mut task, seen).await?;
        ensure!(matches!(events.last().map(|e| &e.kind), Some(EventKind::Completed { .. })));
        ensure!(scheduled_on(&events) == [stopping.as_str(), other.as_str()], "{events:?}");
        ensure!(fleet_testkit::final_text(&events) == words.join(" "));
        Ok::<_, anyhow::Error>(())
    })
    .await
    .context("test ran past its time limit");
    cluster.shutdown().await?;
    outcome?
}

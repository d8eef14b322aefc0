//! The head crashes and comes back: 2,000 tasks run on three workers, the head is SIGKILLed
//! mid-run and started again on the same data. Every accepted task completes with its input
//! echoed, and a subscriber that resumes each task from the last event it saw gets the rest
//! of its log: every event exactly once, without a gap.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use fleet_client::{AgentSpec, EventKind, ManyUpdate, Submission, TaskEvent};
use fleet_testkit::ClusterSandbox;
use futures::StreamExt;
use parking_lot::Mutex;

const TASKS: usize = 2_000;
const LIMIT: Duration = Duration::from_secs(120);

/// What the client saw before the crash: each accepted task's index and events.
#[derive(Default)]
struct Seen {
    index_of: HashMap<String, usize>,
    events: HashMap<String, Vec<TaskEvent>>,
    completed: usize,
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + LIMIT;
    while !done() {
        ensure!(Instant::now() < deadline, "{what} within {LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_tasks_survive_a_head_crash() -> Result<()> {
    let mut sandbox =
        ClusterSandbox::builder().workers(3).worker_arg("--slots").worker_arg("32").start().await?;
    let client = sandbox.client().await?;
    let mut spec =
        AgentSpec { name: "echo".into(), model: "builtin:echo".into(), ..Default::default() };
    // A crash costs each running task an attempt.
    spec.max_retries = 3;
    spec.model_options = [("token_delay_ms".to_owned(), "10".to_owned())].into();
    client.register_agent(spec).await?;
    let inputs: Vec<String> =
        (0..TASKS).map(|i| format!("task {i} a b c d e f g h i j k l m n o p")).collect();

    let seen = Arc::new(Mutex::new(Seen::default()));
    let (sender, mut updates) = client.submit_many().await?;
    sender
        .send(
            inputs.iter().enumerate().map(|(i, input)| (i as u64, Submission::new("echo", input))),
        )
        .await?;
    let collector = {
        let seen = seen.clone();
        tokio::spawn(async move {
            // Ends with an error when the head dies.
            while let Some(Ok(batch)) = updates.next().await {
                let mut seen = seen.lock();
                for update in batch {
                    match update {
                        ManyUpdate::Accepted { client_ref, task_id } => {
                            seen.index_of.insert(task_id.to_string(), client_ref as usize);
                        }
                        ManyUpdate::Rejected { message, .. } => panic!("rejected: {message}"),
                        ManyUpdate::Event(e) => {
                            if matches!(e.kind, EventKind::Completed { .. }) {
                                seen.completed += 1;
                            }
                            seen.events.entry(e.task_id.to_string()).or_default().push(e);
                        }
                    }
                }
            }
        })
    };
    wait_until("all tasks accepted and 300 completed", || {
        let seen = seen.lock();
        seen.index_of.len() == TASKS && seen.completed >= 300
    })
    .await?;
    sandbox.restart_head().await?;
    collector.await?;
    drop(sender);
    let Seen { index_of, events: seen, completed: completed_before } =
        std::mem::take(&mut *seen.lock());
    ensure!(completed_before < TASKS, "every task completed before the crash: nothing tested");

    // Every accepted task, resumed where the client left it.
    let client = connect_again(&sandbox).await?;
    let mut resumed = 0;
    for (task_id, index) in &index_of {
        let mut events = seen.get(task_id).cloned().unwrap_or_default();
        let from = events.last().map_or(1, |e| e.seq + 1);
        let done =
            events.last().is_some_and(|e| e.kind.state_after().is_some_and(|s| s.is_terminal()));
        if !done {
            let mut stream = client.watch(task_id, from).await?;
            while let Some(event) = stream.next().await {
                events.push(event?);
            }
            resumed += 1;
        }
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        ensure!(seqs.iter().copied().eq(1..=seqs.len() as u64), "task {index}: seqs {seqs:?}");
        let last = events.last().context("no events")?;
        let EventKind::Completed { .. } = &last.kind else {
            bail!("task {index} ended with {:?}", last.kind);
        };
        let text: String = events
            .iter()
            .filter(|e| e.attempt == last.attempt)
            .filter_map(|e| match &e.kind {
                EventKind::TextDelta { text } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        ensure!(text == inputs[*index], "task {index} (attempt {}): {text:?}", last.attempt);
    }
    ensure!(index_of.len() == TASKS);
    ensure!(resumed > 0, "no task was still running at the crash: nothing tested");
    eprintln!("{completed_before} completed before the crash, {resumed} resumed after it");
    sandbox.shutdown().await
}

/// A client of the restarted head (it is back once it answers).
async fn connect_again(sandbox: &ClusterSandbox) -> Result<fleet_client::Client> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match sandbox.client().await {
            Ok(client) if client.status().await.is_ok() => return Ok(client),
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            Ok(_) => bail!("the restarted head does not answer"),
            Err(e) => return Err(e),
        }
    }
}

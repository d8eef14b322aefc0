//! The head crashes and comes back: 2,000 tasks run on three workers, the head is SIGKILLed
//! mid-run and started again on the same data. The workers keep running their tasks through
//! the outage and hand their events over when they rejoin: every accepted task completes
//! with its input echoed on its first attempt, and a subscriber that resumes each task from
//! the last event it saw gets the rest of its log: every event exactly once, without a gap.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use fleet_client::{AgentSpec, EventKind, Submission, TaskEvent};
use fleet_testkit::{BatchLog, ClusterSandbox};
use futures::StreamExt;
use parking_lot::Mutex;

const TASKS: usize = 2_000;
const LIMIT: Duration = Duration::from_secs(120);

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

    let seen = Arc::new(Mutex::new(BatchLog::default()));
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
                    seen.take(update).expect("every submission accepted");
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
    let BatchLog { index_of, events: seen, completed: completed_before } =
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
        // The workers kept running their tasks through the outage and the head took them
        // back: nothing ran twice.
        ensure!(last.attempt == 1, "task {index} was retried: {events:?}");
        let text = fleet_testkit::final_text(&events);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_keeps_generating_through_a_head_outage() -> Result<()> {
    const WORDS: usize = 150;
    let mut sandbox = ClusterSandbox::builder().workers(1).start().await?;
    let client = sandbox.client().await?;
    let mut spec =
        AgentSpec { name: "slow".into(), model: "builtin:echo".into(), ..Default::default() };
    // 150 words at 30 ms: 4.5 s each, the head is away for 3 s of it.
    spec.model_options = [("token_delay_ms".to_owned(), "30".to_owned())].into();
    client.register_agent(spec).await?;
    let inputs: Vec<String> = (0..4)
        .map(|t| (0..WORDS).map(|w| format!("t{t}w{w}")).collect::<Vec<_>>().join(" "))
        .collect();
    let mut seen: Vec<(String, Vec<TaskEvent>)> = Vec::new();
    for input in &inputs {
        let mut stream = client.submit(Submission::new("slow", input)).await?;
        let first = stream.next().await.context("no first event")??;
        seen.push((first.task_id.to_string(), vec![first]));
    }
    // Every task is generating.
    let watchers: Vec<_> = seen
        .iter()
        .map(|(id, _)| {
            let client = client.clone();
            let id = id.clone();
            tokio::spawn(async move {
                let mut events = Vec::new();
                if let Ok(mut stream) = client.watch(&id, 2).await {
                    while let Some(Ok(event)) = stream.next().await {
                        let deltas = events.len() >= 5;
                        events.push(event);
                        if deltas {
                            break;
                        }
                    }
                }
                events
            })
        })
        .collect();
    for (i, watcher) in watchers.into_iter().enumerate() {
        seen[i].1.extend(watcher.await?);
    }
    let down = fleet_proto_now_us();
    sandbox.kill_head().await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let up = fleet_proto_now_us();
    sandbox.start_head().await?;

    let client = connect_again(&sandbox).await?;
    let mut during = 0;
    for (i, (id, events)) in seen.iter_mut().enumerate() {
        let from = events.last().map_or(1, |e| e.seq + 1);
        let mut stream = client.watch(id, from).await?;
        while let Some(event) = stream.next().await {
            events.push(event?);
        }
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        ensure!(seqs.iter().copied().eq(1..=seqs.len() as u64), "task {i}: seqs {seqs:?}");
        let last = events.last().context("no events")?;
        ensure!(
            matches!(last.kind, EventKind::Completed { .. }) && last.attempt == 1,
            "task {i} ended with {:?} on attempt {}",
            last.kind,
            last.attempt
        );
        let text = fleet_testkit::final_text(events);
        ensure!(text == inputs[i], "task {i}: {text:?}");
        // Deltas made on the worker while the head was down (their time is the worker's).
        during += events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::TextDelta { .. }))
            .filter(|e| (down..up).contains(&e.timestamp_us))
            .count();
    }
    // 4 tasks x 3 s at 30 ms a word: about 400 deltas while the head was away.
    ensure!(during >= 200, "only {during} deltas were made during the outage");
    sandbox.shutdown().await
}

fn fleet_proto_now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_many_and_watch_ride_through_a_head_restart() -> Result<()> {
    const N: usize = 1_000;
    let mut sandbox =
        ClusterSandbox::builder().workers(2).worker_arg("--slots").worker_arg("16").start().await?;
    let client = sandbox.client().await?;
    let mut spec =
        AgentSpec { name: "echo".into(), model: "builtin:echo".into(), ..Default::default() };
    spec.model_options = [("token_delay_ms".to_owned(), "5".to_owned())].into();
    client.register_agent(spec).await?;
    let inputs: Vec<String> = (0..N).map(|i| format!("task {i} a b c d e f g h i j")).collect();
    let run = tokio::spawn({
        let (client, inputs) = (client.clone(), inputs.clone());
        async move { client.run_many("echo", inputs).await }
    });
    // One more task followed by a plain watch.
    let long: String = (0..400).map(|w| format!("w{w}")).collect::<Vec<_>>().join(" ");
    let mut single = client.submit(Submission::new("echo", &long)).await?;
    let first = single.next().await.context("no first event")??;
    let mut watched = client.watch(first.task_id.as_str(), 1).await?;

    let deadline = Instant::now() + LIMIT;
    while client.status().await?.tasks_completed < 200 {
        ensure!(Instant::now() < deadline && !run.is_finished(), "no progress before the crash");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sandbox.restart_head().await?;

    let outcomes = tokio::time::timeout(LIMIT, run).await???;
    ensure!(outcomes.len() == N);
    for (i, outcome) in outcomes.iter().enumerate() {
        ensure!(
            outcome.output == inputs[i],
            "task {i}: {:?} ({:?}: {:?})",
            outcome.output,
            outcome.state,
            outcome.error
        );
    }
    // Both streams of the long task went on where they were, without a gap.
    for (name, stream) in [("submit", &mut single), ("watch", &mut watched)] {
        let mut text = String::new();
        let mut seqs = Vec::new();
        while let Some(event) = stream.next().await {
            let event = event?;
            seqs.push(event.seq);
            if let EventKind::TextDelta { text: t, .. } = &event.kind {
                text.push_str(t);
            }
        }
        ensure!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{name}: seqs {seqs:?}");
        ensure!(long.ends_with(&text) && !text.is_empty(), "{name}: {text:?}");
    }
    sandbox.shutdown().await
}

/// A client that sends a submission again under its idempotency key (its first answer lost,
/// say, with a head that crashed) gets the task the first one made, from its first event,
/// also from a head restarted on the same data: one task, not two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_sent_again_after_a_restart_finds_its_task() -> Result<()> {
    tokio::time::timeout(LIMIT, async {
        let mut sandbox = ClusterSandbox::builder().workers(1).start().await?;
        let client = sandbox.client().await?;
        let mut spec =
            AgentSpec { name: "echo".into(), model: "builtin:echo".into(), ..Default::default() };
        spec.model_options = [("token_delay_ms".to_owned(), "5".to_owned())].into();
        client.register_agent(spec).await?;
        let order = || Submission {
            idempotency_key: "order-42".into(),
            ..Submission::new("echo", "one task however often it is sent")
        };
        let mut first = client.submit(order()).await?;
        let task_id = first.next().await.context("no first event")??.task_id;
        drop(first);

        sandbox.restart_head().await?;
        let client = connect_again(&sandbox).await?;
        let mut again = client.submit(order()).await?;
        let mut seqs = Vec::new();
        let mut text = String::new();
        while let Some(event) = again.next().await {
            let event = event?;
            ensure!(event.task_id == task_id, "another task: {} vs {task_id}", event.task_id);
            seqs.push(event.seq);
            if let EventKind::TextDelta { text: t, .. } = &event.kind {
                text.push_str(t);
            }
        }
        ensure!(seqs.first() == Some(&1), "not from the first event: {seqs:?}");
        ensure!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "seqs {seqs:?}");
        ensure!(text == "one task however often it is sent", "{text:?}");

        // On a multiplexed stream: acknowledged as the existing task, no events of it.
        let (sender, mut updates) = client.submit_many().await?;
        sender.send([(7, order())]).await?;
        let acks = updates.next().await.context("no answer")??;
        ensure!(
            acks.first()
                == Some(&fleet_client::ManyUpdate::Accepted {
                    client_ref: 7,
                    task_id: task_id.clone(),
                    existing: true,
                }),
            "{acks:?}"
        );
        let listed = client.list_tasks(Default::default()).await?;
        ensure!(listed.tasks.len() == 1, "{} tasks", listed.tasks.len());
        sandbox.shutdown().await
    })
    .await
    .context("test ran past its time limit")?
}

/// A cancel the head acknowledged is on record: its worker froze before it could act on it,
/// the head crashed, and the worker never came back. The restarted head cancels the task
/// when the attempt is found lost, instead of retrying it on the worker that joined since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_acknowledged_before_a_crash_holds_after_it() -> Result<()> {
    let mut sandbox = ClusterSandbox::builder().workers(1).start().await?;
    let client = sandbox.client().await?;
    let mut spec =
        AgentSpec { name: "slow".into(), model: "builtin:echo".into(), ..Default::default() };
    spec.max_retries = 3;
    // 300 words at 30 ms: 9 s, longer than the test needs to see it canceled.
    spec.model_options = [("token_delay_ms".to_owned(), "30".to_owned())].into();
    client.register_agent(spec).await?;
    let input = (0..300).map(|w| format!("w{w}")).collect::<Vec<_>>().join(" ");
    let mut stream = client.submit(Submission::new("slow", &input)).await?;
    let mut task = None;
    while let Some(event) = stream.next().await {
        let event = event?;
        task = Some(event.task_id.to_string());
        if matches!(event.kind, EventKind::TextDelta { .. }) {
            break;
        }
    }
    let task = task.context("no event")?;
    drop(stream);

    // The worker freezes: the cancel reaches it but is never acted on.
    let frozen = sandbox.worker_names().first().cloned().context("no worker")?;
    let pid = sandbox.worker_pid(&frozen).context("no worker pid")?;
    let stopped = std::process::Command::new("kill").args(["-STOP", &pid.to_string()]).status()?;
    ensure!(stopped.success(), "cannot stop the worker");
    client.cancel(&task).await?;

    sandbox.kill_head().await?;
    sandbox.kill_worker(&frozen).await?;
    sandbox.start_head().await?;
    sandbox.add_worker()?;
    let client = connect_again(&sandbox).await?;
    let mut events = Vec::new();
    let mut stream = client.watch(&task, 1).await?;
    while let Some(event) = tokio::time::timeout(LIMIT, stream.next()).await? {
        events.push(event?);
    }
    let kinds: Vec<&EventKind> = events.iter().map(|e| &e.kind).collect();
    ensure!(
        !kinds.iter().any(|k| matches!(k, EventKind::Retrying { .. })),
        "a canceled task was retried: {kinds:?}"
    );
    ensure!(matches!(kinds.last(), Some(EventKind::Canceled { .. })), "{kinds:?}");
    sandbox.shutdown().await
}

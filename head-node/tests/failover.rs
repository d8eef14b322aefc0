//! Two heads on one PostgreSQL server (started by the test with `initdb`/`pg_ctl`): one
//! leads, one stands by. The leader dies (SIGKILL) or freezes (SIGSTOP) in the middle of
//! 1,000 tasks: the standby takes over within the lease plus 2 s, workers and the client
//! (given both heads) move to it, every task completes on its first attempt (nothing ran
//! twice), a conversation goes on with its turns from before the takeover, and a frozen
//! leader that wakes up stops instead of dispatching.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use fleet_client::{
    AgentSpec, Client, EventKind, Submission, SubmitControl, TaskOutcome, TaskState,
};
use fleet_testkit::postgres::PostgresServer;
use fleet_testkit::{BatchLog, ClusterSandbox};
use futures::StreamExt;
use parking_lot::Mutex;

const TASKS: usize = 1_000;
const LEASE: Duration = Duration::from_millis(2_000);
const LIMIT: Duration = Duration::from_secs(120);

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !done() {
        ensure!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// The next message of a topic's stream, within 10 s.
async fn next_message(
    stream: &mut fleet_client::TopicStream,
) -> Result<fleet_client::pb::TopicMessage> {
    let next = tokio::time::timeout(Duration::from_secs(10), stream.next()).await;
    Ok(next.context("no message within 10 s")?.context("the topic's stream ended")??)
}

/// A leader and a standby on `pg`, three workers given both heads.
async fn two_heads(pg: &PostgresServer) -> Result<ClusterSandbox> {
    ClusterSandbox::builder()
        .workers(3)
        .worker_arg("--slots")
        .worker_arg("32")
        .head_arg("--store")
        .head_arg(&pg.url)
        .head_arg("--lease-ms")
        .head_arg(LEASE.as_millis().to_string())
        .standbys(1)
        .start()
        .await
}

/// Submits `TASKS` echo tasks through every head's URL; the updates go into `seen`.
async fn submit(sandbox: &ClusterSandbox, seen: Arc<Mutex<BatchLog>>) -> Result<Vec<String>> {
    let client = sandbox.client().await?;
    let mut spec =
        AgentSpec { name: "echo".into(), model: "builtin:echo".into(), ..Default::default() };
    spec.max_retries = 3;
    spec.model_options = [("token_delay_ms".to_owned(), "10".to_owned())].into();
    client.register_agent(spec).await?;
    let inputs: Vec<String> =
        (0..TASKS).map(|i| format!("task {i} a b c d e f g h i j k l m n o p")).collect();
    let items =
        inputs.iter().enumerate().map(|(i, input)| (i as u64, Submission::new("echo", input)));
    let mut updates = client.submit_all(items.collect(), SubmitControl::default());
    tokio::spawn(async move {
        while let Some(batch) = updates.next().await {
            let batch = batch.expect("the client rides through the failover");
            let mut seen = seen.lock();
            for update in batch {
                seen.take(update).expect("every submission accepted");
            }
        }
    });
    Ok(inputs)
}

/// Every task completed once, on its first attempt, with its input echoed, its events
/// gapless and unrepeated.
fn check(seen: &BatchLog, inputs: &[String]) -> Result<()> {
    ensure!(seen.index_of.len() == TASKS, "{} tasks accepted", seen.index_of.len());
    for (task_id, &index) in &seen.index_of {
        let events = seen.events.get(task_id).context("no events")?;
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        ensure!(seqs.iter().copied().eq(1..=seqs.len() as u64), "task {index}: seqs {seqs:?}");
        let last = events.last().context("no events")?;
        let EventKind::Completed { .. } = &last.kind else {
            bail!("task {index} ended with {:?}", last.kind);
        };
        // Workers kept their tasks and the new leader took them over: none ran twice.
        ensure!(last.attempt == 1, "task {index} was run again: {events:?}");
        let text = fleet_testkit::final_text(events);
        ensure!(text == inputs[index], "task {index}: {text:?}");
    }
    Ok(())
}

/// One turn of a conversation with the agent talk (builtin:echo): the words of its prompt, as builtin:echo
/// counts them (every message's: the turns before it and its input).
async fn turn(client: &Client, input: &str) -> Result<u32> {
    let submission = Submission { context_id: "c1".into(), ..Submission::new("talk", input) };
    let outcome = TaskOutcome::collect(client.submit(submission).await?).await?;
    ensure!(outcome.state == TaskState::Completed, "turn {input:?} ended {:?}", outcome.state);
    Ok(outcome.usage.prompt_tokens)
}

/// Polls `address`'s readiness until it serves as the leader; how long that took.
async fn leads(address: &str, since: Instant) -> Result<Duration> {
    loop {
        if let Ok((200, _)) = fleet_testkit::http_at(address, "GET", "/healthz", &[], b"").await {
            return Ok(since.elapsed());
        }
        ensure!(since.elapsed() < Duration::from_secs(30), "the standby never took over");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_when_the_leader_dies() -> Result<()> {
    let pg = PostgresServer::start()?;
    let mut sandbox = two_heads(&pg).await?;
    let standby = sandbox.standby_addresses()[0].clone();
    let (status, body) = fleet_testkit::http_at(&standby, "GET", "/healthz", &[], b"").await?;
    ensure!(status == 503 && body.contains("standby"), "the standby answered {status} {body}");

    // Three turns of a conversation: each prompt holds the turns before it (both sides).
    let talker = sandbox.client().await?;
    let spec =
        AgentSpec { name: "talk".into(), model: "builtin:echo".into(), ..Default::default() };
    talker.register_agent(spec).await?;
    let prompts = [turn(&talker, "one").await?, turn(&talker, "two three").await?];
    ensure!(prompts == [1, 4], "the conversation's prompts had {prompts:?} words");
    ensure!(turn(&talker, "four").await? == 7, "turn 3 lacks turns 1 and 2");
    // A topic's messages, and a group that acknowledged the first two of them.
    let bodies: Vec<String> = (0..5).map(|i| format!("m{i}")).collect();
    let first = talker.publish_many("news", "", bodies).await?.offset;
    ensure!(first == 0, "the first message's offset is {first}");
    let mut group = talker.follow_log("news", None, "g").await?;
    for _ in 0..2 {
        let m = next_message(&mut group).await?;
        talker.ack_topic("news", "g", &[m.offset.unwrap_or(u64::MAX)]).await?;
    }
    drop(group);
    let seen = Arc::new(Mutex::new(BatchLog::default()));
    let inputs = submit(&sandbox, seen.clone()).await?;
    wait_until("all accepted and 200 completed", LIMIT, || {
        let seen = seen.lock();
        seen.index_of.len() == TASKS && seen.completed >= 200
    })
    .await?;
    let killed = Instant::now();
    sandbox.kill_head().await?;
    let completed_before = seen.lock().completed;
    let takeover = leads(&standby, killed).await?;
    ensure!(
        takeover <= LEASE + Duration::from_secs(2),
        "the standby took {takeover:?} to take over (lease {LEASE:?})"
    );
    wait_until("every task completed", LIMIT, || seen.lock().completed >= TASKS).await?;
    ensure!(completed_before < TASKS, "every task completed before the kill: nothing tested");
    check(&seen.lock(), &inputs)?;
    // The standby has the conversation from the store: 1 + 1 + 2 + 2 + 1 + 1 words before.
    let after = turn(&talker, "five").await?;
    ensure!(after == 9, "turn 4 after the takeover had {after} words in its prompt, not 9");
    // The topic is whole at the same offsets, numbering goes on, and the group resumes
    // after what it acknowledged.
    ensure!(talker.publish("news", "", "m5").await?.offset == 5, "an offset was given twice");
    let mut log = talker.follow_log("news", Some(0), "").await?;
    let mut offsets = Vec::new();
    while offsets.len() < 6 {
        let m = next_message(&mut log).await?;
        ensure!(m.body == format!("m{}", offsets.len()), "{m:?}");
        offsets.push(m.offset);
    }
    let mut group = talker.follow_log("news", None, "g").await?;
    let next = next_message(&mut group).await?;
    ensure!(next.offset == Some(2), "the group resumed at {:?}, not 2", next.offset);
    eprintln!(
        "{completed_before} completed before the kill; the standby led {} ms after it",
        takeover.as_millis()
    );
    sandbox.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_that_wakes_up_stops_instead_of_dispatching() -> Result<()> {
    let pg = PostgresServer::start()?;
    let mut sandbox = two_heads(&pg).await?;
    let standby = sandbox.standby_addresses()[0].clone();
    let seen = Arc::new(Mutex::new(BatchLog::default()));
    let inputs = submit(&sandbox, seen.clone()).await?;
    wait_until("all accepted and 200 completed", LIMIT, || {
        let seen = seen.lock();
        seen.index_of.len() == TASKS && seen.completed >= 200
    })
    .await?;
    // Frozen past its lease (a long GC pause, a stalled VM): it holds its connections
    // and believes it leads when it wakes.
    let pid = sandbox.head_pid().context("no head pid")?.to_string();
    let frozen = Instant::now();
    ensure!(std::process::Command::new("kill").args(["-STOP", &pid]).status()?.success());
    let takeover = leads(&standby, frozen).await;
    ensure!(std::process::Command::new("kill").args(["-CONT", &pid]).status()?.success());
    let takeover = takeover?;
    ensure!(takeover <= LEASE + Duration::from_secs(2), "took over after {takeover:?}");
    // It finds its lease gone, stops, and says why (exit 1).
    let code = sandbox.wait_head_exit(LEASE + Duration::from_secs(10)).await?;
    ensure!(code == Some(1), "the old leader exited with {code:?}");
    wait_until("every task completed", LIMIT, || seen.lock().completed >= TASKS).await?;
    check(&seen.lock(), &inputs)?;
    sandbox.shutdown().await
}

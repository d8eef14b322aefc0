//! The cluster on an emulated network instead of 127.0.0.1: the head, each worker and the
//! test's client on hosts of their own (Linux network namespaces), joined by a wire with
//! delay, jitter, loss and partitions (`fleet_testkit::network`). Needs root, as CI has;
//! without it these tests fail and say so.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use fleet_client::{AgentSpec, EventKind, TaskEvent};
use fleet_testkit::network::{CLIENT, Conditions};
use fleet_testkit::{ClusterSandbox, final_text, wait_until};
use futures::StreamExt;

const RTT: Duration = Duration::from_millis(2);

/// An echo agent whose every word takes `delay_ms`.
fn echo(name: &str, delay_ms: u64, retries: u32) -> AgentSpec {
    let mut spec =
        AgentSpec { name: name.into(), model: "builtin:echo".into(), ..Default::default() };
    spec.max_retries = retries;
    spec.model_options = [("token_delay_ms".to_owned(), delay_ms.to_string())].into();
    spec
}

fn words(i: usize, n: usize) -> String {
    (0..n).map(|w| format!("t{i}w{w}")).collect::<Vec<_>>().join(" ")
}

/// Seqs from 1 without a gap or a repeat, and no event of an attempt after a later
/// attempt's: a lost attempt's late events were refused.
fn check_log(index: usize, events: &[TaskEvent]) -> Result<()> {
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    ensure!(seqs.iter().copied().eq(1..=seqs.len() as u64), "task {index}: seqs {seqs:?}");
    let attempts: Vec<u32> = events.iter().map(|e| e.attempt).collect();
    ensure!(
        attempts.is_sorted(),
        "task {index}: an earlier attempt's event came late: {attempts:?}"
    );
    Ok(())
}

fn scheduled_on(events: &[TaskEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Scheduled { worker_id } => Some(worker_id.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_and_stream_across_a_slow_lossy_network() -> Result<()> {
    let conditions = Conditions::rtt(RTT).jitter(Duration::from_micros(200)).loss(0.01);
    let sandbox = ClusterSandbox::builder()
        .network(conditions)
        .workers(2)
        .worker_arg("--slots")
        .worker_arg("8")
        .start()
        .await?;
    let network = sandbox.network().context("no network")?;

    // The wire is in the path: a request on a new connection takes a round trip to connect
    // and one to answer.
    let started = Instant::now();
    let (status, _) = sandbox.http("GET", "/healthz", &[], b"").await?;
    let took = started.elapsed();
    ensure!(status == 200, "/healthz answered {status}");
    ensure!(took >= 2 * RTT, "a request took {took:?}, under two round trips of {RTT:?}");

    let client = sandbox.client().await?;
    client.register_agent(echo("echo", 1, 2)).await?;
    let inputs: Vec<String> = (0..200).map(|i| words(i, 8)).collect();
    let events = fleet_testkit::run_all(client.clone(), "echo", inputs.clone()).await?;
    ensure!(events.len() == inputs.len(), "{} of {} tasks seen", events.len(), inputs.len());
    let mut workers = std::collections::HashSet::new();
    for (index, log) in &events {
        check_log(*index, log)?;
        ensure!(
            matches!(log.last().map(|e| &e.kind), Some(EventKind::Completed { .. })),
            "task {index} ended {:?}",
            log.last()
        );
        ensure!(final_text(log) == inputs[*index], "task {index}: {:?}", final_text(log));
        workers.extend(scheduled_on(log));
    }
    ensure!(workers.len() == 2, "tasks ran on {workers:?}, not on both workers");

    // One task's words arrive as they are made, not all at its end.
    client.register_agent(echo("slow", 30, 0)).await?;
    let mut stream = client.submit(fleet_client::Submission::new("slow", words(0, 20))).await?;
    let (mut deltas, mut first, mut last) = (0, None, None);
    while let Some(event) = stream.next().await {
        let event = event?;
        if let EventKind::TextDelta { .. } = event.kind {
            deltas += 1;
            first.get_or_insert_with(Instant::now);
            last = Some(Instant::now());
        }
        if event.kind.is_terminal() {
            break;
        }
    }
    let spread = last.zip(first).map(|(l, f)| l - f).unwrap_or_default();
    ensure!(deltas >= 10, "{deltas} text deltas for 20 words");
    ensure!(spread >= Duration::from_millis(300), "the deltas came within {spread:?}");

    let stats = network.stats();
    ensure!(stats.lost > 0, "1% loss lost nothing: {stats:?}");
    ensure!(stats.delivered > 1_000, "{stats:?}");
    sandbox.shutdown().await
}

//! The head with a thousand simulated workers (`fleet_testkit::simworker`: one process, a
//! `Join` stream and a connection per worker, the real protocol): all join, every slot
//! runs, and the tasks of workers lost mid-task, crashed (connection closed) or silent
//! (connection open, nothing sent), run again elsewhere and complete.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use fleet_client::{AgentSpec, EventKind};
use fleet_testkit::simworker::{SimFleet, SimOptions};
use fleet_testkit::{ClusterSandbox, final_text, wait_until};

const WORKERS: usize = 1_000;
const SLOTS: u32 = 2;
/// Lost mid-task: the first `CRASHED` workers close their connections, the next `SILENT`
/// fall silent with theirs open.
const CRASHED: usize = 10;
const SILENT: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_simulated_workers_run_every_slot_and_lost_ones_tasks_run_again() -> Result<()> {
    let sandbox = ClusterSandbox::builder()
        .workers(0)
        .head_arg("--worker-timeout-ms")
        .head_arg("1500")
        .start()
        .await?;
    let client = sandbox.client().await?;
    let mut options = SimOptions::new(sandbox.url.clone());
    options.join_token = Some(sandbox.join_token().to_owned());
    options.slots = SLOTS;
    options.task_time = Duration::from_secs(3);
    let (fleet, _) = SimFleet::join(options, WORKERS, Duration::from_secs(60)).await?;
    ensure!(
        client.status().await?.workers.len() == WORKERS,
        "not every simulated worker is listed"
    );

    let spec = AgentSpec {
        name: "echo".into(),
        model: "builtin:echo".into(),
        max_retries: 3,
        ..Default::default()
    };
    client.register_agent(spec).await?;
    let tasks = WORKERS * SLOTS as usize;
    let inputs: Vec<String> = (0..tasks).map(|i| format!("task {i}")).collect();
    let run = tokio::spawn(fleet_testkit::run_all(client.clone(), "echo", inputs.clone()));

    // Every slot busy, then workers lost in the middle of their tasks.
    wait_until(Duration::from_secs(60), "every slot running a task", || async {
        Ok(fleet.counts().tasks_started >= tasks as u64)
    })
    .await?;
    for i in 0..CRASHED {
        fleet.crash(i);
    }
    for i in CRASHED..CRASHED + SILENT {
        fleet.silence(i);
    }
    let lost: HashSet<String> =
        (0..CRASHED + SILENT).map(|i| fleet.worker_id(i).to_owned()).collect();

    let events =
        tokio::time::timeout(Duration::from_secs(90), run).await.context("a hang")???;
    ensure!(events.len() == tasks, "{} of {tasks} tasks have events", events.len());
    let mut retried = 0;
    for (i, log) in &events {
        let places: Vec<&str> = log
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Scheduled { worker_id } => Some(worker_id.as_str()),
                _ => None,
            })
            .collect();
        ensure!(
            matches!(log.last().map(|e| &e.kind), Some(EventKind::Completed { .. })),
            "task {i} did not complete: {log:?}"
        );
        ensure!(final_text(log) == inputs[*i], "task {i} answered {:?}", final_text(log));
        let last = places.last().context("never scheduled")?;
        ensure!(!lost.contains(*last), "task {i} completed on {last}, a lost worker");
        if places.iter().any(|w| lost.contains(*w)) {
            retried += 1;
        }
    }
    // Each lost worker was running a task in every slot.
    let expected = (CRASHED + SILENT) * SLOTS as usize;
    ensure!(retried == expected, "{retried} tasks ran again, not {expected}");
    ensure!(fleet.counts().over_slots == 0, "the head sent tasks beyond a worker's slots");
    wait_until(Duration::from_secs(30), "the lost workers gone from the status", || async {
        Ok(client.status().await?.workers.len() == WORKERS - lost.len())
    })
    .await?;
    fleet.shutdown().await;
    sandbox.shutdown().await
}

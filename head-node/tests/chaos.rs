//! Chaos: 2,000 tasks on three real workers while workers are SIGKILLed and restarted and
//! one at a time is frozen (SIGSTOP) past the head's worker timeout and thawed (SIGCONT).
//! Every task must end, completed with exactly its input echoed or failed with an error
//! that names what happened, and no task's log may hold a gap or a repeated event.

use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use fleet_client::{AgentSpec, EventKind};
use fleet_testkit::ClusterSandbox;

const TASKS: usize = 2_000;
/// The whole run, chaos included, must end within this (a hang fails the test).
const LIMIT: Duration = Duration::from_secs(150);

fn signal(pid: u32, signal: &str) -> Result<()> {
    let status = std::process::Command::new("kill").args([signal, &pid.to_string()]).status()?;
    ensure!(status.success(), "kill {signal} {pid} failed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_ends_once_through_kills_and_freezes() -> Result<()> {
    let mut sandbox = ClusterSandbox::builder()
        .workers(3)
        .worker_arg("--slots")
        .worker_arg("32")
        .head_arg("--worker-timeout-ms")
        .head_arg("1500")
        .start()
        .await?;
    let client = sandbox.client().await?;
    let mut spec =
        AgentSpec { name: "echo".into(), model: "builtin:echo".into(), ..Default::default() };
    spec.max_retries = 4;
    spec.model_options = [("token_delay_ms".to_owned(), "25".to_owned())].into();
    client.register_agent(spec).await?;
    let inputs: Vec<String> =
        (0..TASKS).map(|i| format!("task {i} a b c d e f g h i j k l")).collect();
    let run = tokio::spawn(fleet_testkit::run_all(client.clone(), "echo", inputs.clone()));

    // Chaos until every task has ended: a kill and a restart, then a freeze past the
    // worker timeout and a thaw, in turns, on the workers that are running then.
    let started = Instant::now();
    let (mut kills, mut freezes, mut turn) = (0, 0, 0usize);
    while !run.is_finished() {
        ensure!(started.elapsed() < LIMIT, "tasks still running after {LIMIT:?}: a hang");
        let names = sandbox.worker_names();
        let name = names[turn % names.len()].clone();
        if turn % 2 == 0 {
            sandbox.kill_worker(&name).await?;
            sandbox.add_worker()?;
            kills += 1;
        } else if let Some(pid) = sandbox.worker_pid(&name) {
            signal(pid, "-STOP")?;
            tokio::time::sleep(Duration::from_millis(2_000)).await;
            signal(pid, "-CONT")?;
            freezes += 1;
        }
        turn += 1;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let events = run.await??;

    ensure!(events.len() == TASKS, "events for {} of {TASKS} tasks", events.len());
    let (mut completed, mut failed, mut retried) = (0, 0, 0);
    for (index, events) in &events {
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        ensure!(seqs.iter().copied().eq(1..=seqs.len() as u64), "task {index}: seqs {seqs:?}");
        let last = events.last().map(|e| &e.kind);
        match last {
            Some(EventKind::Completed { .. }) => {
                // The text of the last attempt only (a retried attempt's deltas stay in the
                // log, marked by their attempt number).
                let attempt = events.last().map_or(0, |e| e.attempt);
                let text = fleet_testkit::final_text(events);
                ensure!(text == inputs[*index], "task {index} (attempt {attempt}): {text:?}");
                completed += 1;
            }
            Some(EventKind::Failed { error, .. }) => {
                ensure!(!error.is_empty(), "task {index} failed without saying why");
                failed += 1;
            }
            other => bail!("task {index} ended with {other:?}"),
        }
        // After an attempt is given up, nothing of it may follow (a frozen worker that wakes
        // up still has its events to send).
        let mut given_up = 0;
        for e in events {
            ensure!(
                e.attempt > given_up,
                "task {index}: an event of attempt {} after that attempt was retried: {e:?}",
                e.attempt
            );
            if let EventKind::Retrying { failed_attempt, .. } = &e.kind {
                given_up = given_up.max(*failed_attempt);
                retried += 1;
            }
        }
        let ends =
            events.iter().filter(|e| e.kind.state_after().is_some_and(|s| s.is_terminal())).count();
        ensure!(ends == 1, "task {index} ended {ends} times");
    }
    eprintln!(
        "{completed} completed, {failed} failed, {retried} retries, {kills} kills, {freezes} freezes, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    ensure!(
        kills >= 2 && freezes >= 2,
        "the chaos did not happen ({kills} kills, {freezes} freezes)"
    );
    ensure!(retried > 0, "no task was hit by the chaos");
    ensure!(completed > TASKS / 2, "only {completed} of {TASKS} completed");
    sandbox.shutdown().await
}

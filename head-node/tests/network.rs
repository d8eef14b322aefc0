//! The cluster on an emulated network instead of 127.0.0.1: the head, each worker and the
//! test's client on hosts of their own (Linux network namespaces), joined by a wire with
//! delay, jitter, loss and partitions (`fleet_testkit::network`). Needs root, as CI has;
//! without it these tests fail and say so.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use fleet_client::{AgentSpec, EventKind, TaskEvent};
use fleet_testkit::network::{CLIENT, Conditions, EmulatedNetwork};
use fleet_testkit::postgres::PostgresServer;
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

/// [`check_log`], and the task completed with its input echoed by its last attempt.
fn check_completed(index: usize, log: &[TaskEvent], input: &str) -> Result<()> {
    check_log(index, log)?;
    ensure!(
        matches!(log.last().map(|e| &e.kind), Some(EventKind::Completed { .. })),
        "task {index} ended {:?}",
        log.last()
    );
    ensure!(final_text(log) == input, "task {index}: {:?}", final_text(log));
    Ok(())
}

/// A task's whole log, read again from the head.
async fn log_of(client: &fleet_client::Client, task_id: &str) -> Result<Vec<TaskEvent>> {
    let mut stream = client.watch(task_id, 1).await?;
    let mut log = Vec::new();
    while let Some(event) = stream.next().await {
        let event = event?;
        let end = event.kind.is_terminal();
        log.push(event);
        if end {
            return Ok(log);
        }
    }
    anyhow::bail!("task {task_id}'s log ended before the task did")
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
        check_completed(*index, log, &inputs[*index])?;
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

/// How long a worker may go unheard before the head declares it dead, in these tests.
const WORKER_TIMEOUT: Duration = Duration::from_millis(1_500);

async fn worker_alive(client: &fleet_client::Client, name: &str) -> Result<bool> {
    let status = client.status().await?;
    Ok(status.workers.iter().any(|w| w.worker_id == name && w.alive))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_worker_s_tasks_finish_elsewhere_and_nothing_runs_twice_when_it_returns()
-> Result<()> {
    let sandbox = ClusterSandbox::builder()
        .network(Conditions::rtt(RTT))
        .workers(2)
        .worker_arg("--slots")
        .worker_arg("4")
        .head_arg("--worker-timeout-ms")
        .head_arg(WORKER_TIMEOUT.as_millis().to_string())
        .head_arg("--heartbeat-interval-ms")
        .head_arg("250")
        .start()
        .await?;
    let network = sandbox.network().context("no network")?;
    let client = sandbox.client().await?;
    // Each task takes about 1.2 s: 40 words, 30 ms each.
    client.register_agent(echo("echo", 30, 2)).await?;
    let inputs: Vec<String> = (0..8).map(|i| words(i, 40)).collect();
    let run = tokio::spawn(fleet_testkit::run_all(client.clone(), "echo", inputs.clone()));
    wait_until(Duration::from_secs(10), "worker-0 never ran a task", || async {
        let status = client.status().await?;
        Ok(status.workers.iter().any(|w| w.worker_id == "worker-0" && w.running_tasks > 0))
    })
    .await?;

    // The cable is pulled: packets to and from worker-0 vanish, its connection is left
    // half open, and it goes on running its tasks without hearing anything.
    network.isolate("worker-0")?;
    let cut = Instant::now();
    let dialed = network.dialed("worker-0")?;
    wait_until(WORKER_TIMEOUT + Duration::from_secs(2), "worker-0 not declared dead", || async {
        Ok(!worker_alive(&client, "worker-0").await?)
    })
    .await?;
    let declared = cut.elapsed();
    let events =
        tokio::time::timeout(Duration::from_secs(20), run).await.context("a hang")???;
    let finished = cut.elapsed();
    eprintln!("declared dead after {declared:?}; every task finished {finished:?} after the cut");
    let mut retried = 0;
    for (index, log) in &events {
        check_completed(*index, log, &inputs[*index])?;
        let on = scheduled_on(log);
        if on.first().map(String::as_str) == Some("worker-0") {
            ensure!(on.last().map(String::as_str) == Some("worker-1"), "task {index}: {on:?}");
            retried += 1;
        }
    }
    ensure!(retried > 0, "no task of worker-0 was retried elsewhere");
    // Its tasks ran again elsewhere within the worker timeout plus a task's own time.
    ensure!(
        finished < WORKER_TIMEOUT + Duration::from_secs(2) + Duration::from_millis(1_200),
        "the last task finished {finished:?} after the cut"
    );

    // Worker-0 gives up on its half-open connection and dials again, long before TCP would
    // (it hears nothing, not even an answer to its ping).
    wait_until(Duration::from_secs(8), "worker-0 never dialed the head again", || async {
        Ok(network.dialed("worker-0")? > dialed)
    })
    .await?;
    eprintln!("worker-0 dialed again {:?} after the cut", cut.elapsed());

    // Healed after 10 s: worker-0 finds the head again, and what it ran while cut off is
    // neither reported as the task's result nor run a second time.
    let since_cut = cut.elapsed();
    if since_cut < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_secs(10) - since_cut).await;
    }
    network.heal("worker-0")?;
    let healed = Instant::now();
    wait_until(Duration::from_secs(5), "worker-0 did not come back", || async {
        worker_alive(&client, "worker-0").await
    })
    .await?;
    eprintln!("worker-0 back {:?} after the heal", healed.elapsed());
    for (index, seen) in &events {
        let log = log_of(&client, &seen[0].task_id.to_string()).await?;
        check_log(*index, &log)?;
        ensure!(log.len() == seen.len(), "task {index}'s log changed after its end");
    }
    let more: Vec<String> = (100..116).map(|i| words(i, 4)).collect();
    let events = fleet_testkit::run_all(client.clone(), "echo", more.clone()).await?;
    let mut on_worker_0 = 0;
    for (index, log) in &events {
        check_log(*index, log)?;
        ensure!(final_text(log) == more[*index], "task {index}: {:?}", final_text(log));
        on_worker_0 += scheduled_on(log).iter().filter(|w| *w == "worker-0").count();
    }
    ensure!(on_worker_0 > 0, "no task ran on worker-0 after it came back");
    sandbox.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cut_off_mid_stream_resumes_after_its_last_event() -> Result<()> {
    let sandbox =
        ClusterSandbox::builder().network(Conditions::rtt(RTT)).workers(1).start().await?;
    let network = sandbox.network().context("no network")?;
    // The client notices a silent connection after 2 × 300 ms.
    let options = fleet_client::ConnectOptions {
        keep_alive: Duration::from_millis(300),
        ..sandbox.client_options()
    };
    let client = fleet_client::Client::connect_with(&sandbox.url, options).await?;
    // About 4 s of words, 25 ms each.
    client.register_agent(echo("echo", 25, 0)).await?;
    let input = words(0, 160);
    let mut stream = client.submit(fleet_client::Submission::new("echo", input.clone())).await?;
    let (seen, mut seen_rx) = tokio::sync::watch::channel(0usize);
    let follow = tokio::spawn(async move {
        let mut log = Vec::new();
        while let Some(event) = stream.next().await {
            let event = event?;
            let end = event.kind.is_terminal();
            log.push(event);
            seen.send_replace(log.len());
            if end {
                return Ok::<_, anyhow::Error>(log);
            }
        }
        anyhow::bail!("the stream ended before the task did: {} events", log.len())
    });
    seen_rx.wait_for(|n| *n >= 20).await?;

    // Cut off for 2 s, long after the connection is taken for dead.
    network.isolate(CLIENT)?;
    let dialed = network.dialed(CLIENT)?;
    let cut_at = *seen_rx.borrow();
    tokio::time::sleep(Duration::from_secs(2)).await;
    network.heal(CLIENT)?;
    let log =
        tokio::time::timeout(Duration::from_secs(30), follow).await.context("a hang")???;

    check_completed(0, &log, &input)?;
    ensure!(log.len() > cut_at + 10, "only {} events, {cut_at} before the cut", log.len());
    // The stream went on over a new connection (the old one was left half open).
    ensure!(network.dialed(CLIENT)? > dialed, "the client never connected again");
    sandbox.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_everyone_stops_and_its_standby_finishes_its_tasks() -> Result<()> {
    const LEASE: Duration = Duration::from_millis(2_000);
    let network = std::sync::Arc::new(EmulatedNetwork::new(Conditions::rtt(RTT))?);
    let pg = PostgresServer::start_on(&network, "db")?;
    let mut sandbox = ClusterSandbox::builder()
        .on_network(network.clone())
        .workers(2)
        .worker_arg("--slots")
        .worker_arg("16")
        .head_arg("--store")
        .head_arg(&pg.url)
        .head_arg("--lease-ms")
        .head_arg(LEASE.as_millis().to_string())
        .standbys(1)
        .start()
        .await?;
    let standby = sandbox.standby_addresses()[0].clone();
    let client = sandbox.client().await?;
    // The batch's own client knows both heads and notices a silent one within a second.
    let options = fleet_client::ConnectOptions {
        keep_alive: Duration::from_millis(500),
        ..sandbox.client_options()
    };
    let batch_client =
        fleet_client::Client::connect_with(&format!("{},http://{standby}", sandbox.url), options)
            .await?;
    // No retries: a task that ran twice would fail, not hide. 200 ms each, 32 slots: about
    // 2.5 s of work, most of it still queued or running when the cable is pulled.
    client.register_agent(echo("echo", 20, 0)).await?;
    let inputs: Vec<String> = (0..400).map(|i| words(i, 10)).collect();
    let items = inputs
        .iter()
        .enumerate()
        .map(|(i, input)| (i as u64, fleet_client::Submission::new("echo", input)))
        .collect();
    let control = fleet_client::SubmitControl::default();
    let mut updates = batch_client.submit_all(items, control.clone());
    let mut log = fleet_testkit::BatchLog::default();
    let submitted = async {
        while log.index_of.len() < inputs.len() {
            for update in updates.next().await.context("the batch ended")?? {
                log.take(update)?;
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(20), submitted).await??;
    wait_until(Duration::from_secs(20), "no worker ran a task", || async {
        let status = client.status().await?;
        Ok(status.workers.iter().any(|w| w.running_tasks > 0))
    })
    .await?;

    // The leader's cable is pulled: it can reach neither the store, nor its workers, nor
    // its clients, and nobody can tell it that it no longer leads.
    network.isolate("head")?;
    let cut = Instant::now();
    wait_until(LEASE + Duration::from_secs(3), "the standby never led", || async {
        let health = fleet_testkit::http_at(&standby, "GET", "/healthz", &[], b"").await;
        Ok(matches!(health, Ok((200, _))))
    })
    .await?;
    let takeover = cut.elapsed();
    // Unable to renew its lease, the old leader stops dispatching at its end and exits by
    // itself, still cut off: no two heads ever dispatch at once. (Its exit waits up to 2 s
    // for connections to close and 2 s for store calls the partition left hanging.)
    let code = sandbox.wait_head_exit(LEASE + Duration::from_secs(8)).await?;
    let stopped = cut.elapsed();
    ensure!(code == Some(1), "the cut-off leader exited with {code:?}");

    // The workers move to the standby with the tasks they ran; every task completes there,
    // once, on its first attempt.
    let options = fleet_client::ConnectOptions { ..sandbox.client_options() };
    let at_standby =
        fleet_client::Client::connect_with(&format!("http://{standby}"), options).await?;
    let request = fleet_client::pb::ListTasksRequest { page_size: 1_000, ..Default::default() };
    wait_until(Duration::from_secs(30), "not every task completed", || async {
        let tasks = at_standby.list_tasks(request.clone()).await?.tasks;
        let done =
            tasks.iter().filter(|t| t.state == fleet_client::pb::TaskState::Completed as i32);
        Ok(done.count() == inputs.len())
    })
    .await?;
    eprintln!(
        "the standby led {takeover:?} after the cut; the old leader stopped after {stopped:?}; \
         every task done after {:?}",
        cut.elapsed()
    );
    // The batch's client followed every task to its end across the takeover, each task's
    // events once and in order.
    let followed = async {
        while log.completed < inputs.len() {
            for update in updates.next().await.context("the batch ended")?? {
                log.take(update)?;
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(20), followed).await.with_context(|| {
        format!("the batch's client saw {} of {} tasks complete", log.completed, inputs.len())
    })??;
    for (task_id, index) in &log.index_of {
        let events = log.events.get(task_id).map(Vec::as_slice).unwrap_or_default();
        check_completed(*index, events, &inputs[*index])?;
    }
    eprintln!("the batch's client saw every task complete after {:?}", cut.elapsed());
    let tasks = at_standby.list_tasks(request).await?.tasks;
    let outputs: std::collections::HashSet<&str> =
        tasks.iter().map(|t| t.output.as_str()).collect();
    for task in &tasks {
        ensure!(task.attempt == 1, "task {} ran {} times", task.task_id, task.attempt);
    }
    for input in &inputs {
        ensure!(outputs.contains(input.as_str()), "no task answered {input:?}");
    }
    sandbox.shutdown().await
}

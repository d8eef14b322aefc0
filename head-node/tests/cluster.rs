//! Multi-process cluster tests: a real `fleet-head` and real `fleet-worker` processes on
//! 127.0.0.1 with ephemeral ports, driven through the Rust client.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use fleet_client::{
    AgentSpec, Client, ErrorKind, EventKind, ManyUpdate, Submission, TaskEvent, TaskState,
};
use fleet_testkit::{ClusterSandbox, wait_until};
use futures::StreamExt;

const LIMIT: Duration = Duration::from_secs(60);

fn echo(name: &str) -> AgentSpec {
    AgentSpec {
        name: name.into(),
        model: "builtin:echo".into(),
        max_retries: 1,
        ..Default::default()
    }
}

fn slow_echo(name: &str, delay_ms: u32) -> AgentSpec {
    let mut spec = echo(name);
    spec.model_options = BTreeMap::from([("token_delay_ms".into(), delay_ms.to_string())]);
    spec
}

async fn within<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(LIMIT, f).await.context("test ran past its time limit")?
}

/// Collects every event of every task submitted over one multiplexed stream.
async fn run_many_events(
    client: &Client,
    items: Vec<Submission>,
) -> Result<HashMap<usize, Vec<TaskEvent>>> {
    let (sender, mut updates) = client.submit_many().await?;
    let total = items.len();
    sender.send(items.into_iter().enumerate().map(|(i, s)| (i as u64, s))).await?;
    drop(sender);
    let mut by_task = HashMap::new();
    let mut events: HashMap<usize, Vec<TaskEvent>> = HashMap::new();
    while let Some(batch) = updates.next().await {
        for update in batch? {
            match update {
                ManyUpdate::Accepted { client_ref, task_id, .. } => {
                    by_task.insert(task_id, client_ref as usize);
                }
                ManyUpdate::Rejected { message, .. } => anyhow::bail!("rejected: {message}"),
                ManyUpdate::Event(e) => {
                    let index = *by_task.get(&e.task_id).context("event before its ack")?;
                    events.entry(index).or_default().push(e);
                }
            }
        }
    }
    ensure!(events.len() == total, "events for {} of {total} tasks", events.len());
    Ok(events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_echo_tasks_spread_over_all_workers() -> Result<()> {
    within(async {
        let cluster = ClusterSandbox::builder().workers(3).start().await?;
        let client = cluster.client().await?;
        client.register_agent(echo("echo")).await?;
        let inputs: Vec<String> = (0..1000).map(|i| format!("task {i} says hello")).collect();
        let outcomes = client.run_many("echo", inputs.clone()).await?;
        for (input, outcome) in inputs.iter().zip(&outcomes) {
            ensure!(outcome.state == TaskState::Completed, "{outcome:?}");
            ensure!(&outcome.output == input, "output {:?} for input {input:?}", outcome.output);
        }
        let status = client.status().await?;
        ensure!(status.workers.len() == 3);
        for w in &status.workers {
            ensure!(w.tasks_assigned > 0, "worker {} got no work", w.worker_id);
            ensure!(w.running_tasks == 0, "worker {} still holds tasks", w.worker_id);
        }
        let assigned: u64 = status.workers.iter().map(|w| w.tasks_assigned).sum();
        ensure!(assigned == 1000 && status.tasks_completed == 1000);
        cluster.shutdown().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_in_order_with_no_gaps() -> Result<()> {
    within(async {
        let cluster = ClusterSandbox::builder().workers(3).start().await?;
        let client = cluster.client().await?;
        client.register_agent(echo("echo")).await?;
        let inputs: Vec<String> = (0..300).map(|i| format!("w{i} a b c d e f g h")).collect();
        let items = inputs.iter().map(|i| Submission::new("echo", i.clone())).collect();
        let events = run_many_events(&client, items).await?;
        for (index, events) in events {
            let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
            ensure!(
                seqs == (1..=events.len() as u64).collect::<Vec<_>>(),
                "task {index}: seqs {seqs:?}"
            );
            ensure!(matches!(events[0].kind, EventKind::Submitted { .. }));
            ensure!(matches!(events[1].kind, EventKind::Scheduled { .. }));
            ensure!(matches!(events.last().map(|e| &e.kind), Some(EventKind::Completed { .. })));
            let text: String = events
                .iter()
                .filter_map(|e| match &e.kind {
                    EventKind::TextDelta { text, .. } => Some(text.as_str()),
                    _ => None,
                })
                .collect();
            ensure!(text == inputs[index], "task {index}: text {text:?}");
        }

        // A single-task stream, and a replay of its log from the middle.
        let mut stream = client.submit(Submission::new("echo", "one two three")).await?;
        let mut seen = Vec::new();
        while let Some(e) = stream.next().await {
            seen.push(e?);
        }
        ensure!(seen.iter().map(|e| e.seq).eq(1..=seen.len() as u64));
        let task_id = seen[0].task_id.to_string();
        let mut replay = client.watch(&task_id, 3).await?;
        let mut replayed = Vec::new();
        while let Some(e) = replay.next().await {
            replayed.push(e?);
        }
        ensure!(replayed == seen[2..], "replay from seq 3 differs from the live stream");
        cluster.shutdown().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_task() -> Result<()> {
    within(async {
        let cluster = ClusterSandbox::builder().workers(1).start().await?;
        let client = cluster.client().await?;
        client.register_agent(slow_echo("slow", 20)).await?;
        let input = (0..500).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ");
        let mut stream = client.submit(Submission::new("slow", input)).await?;
        let mut deltas = 0;
        let mut task_id = None;
        let mut last = None;
        while let Some(event) = stream.next().await {
            let event = event?;
            task_id.get_or_insert_with(|| event.task_id.to_string());
            if matches!(event.kind, EventKind::TextDelta { .. }) {
                deltas += 1;
                if deltas == 3 {
                    let info = client.cancel(task_id.as_deref().unwrap_or_default()).await?;
                    ensure!(info.state() != fleet_client::pb::TaskState::Completed);
                }
            }
            last = Some(event.kind);
        }
        ensure!(matches!(last, Some(EventKind::Canceled { .. })), "stream ended with {last:?}");
        ensure!(deltas < 20, "{deltas} deltas arrived: the task was not stopped promptly");
        let info = client.get_task(task_id.as_deref().unwrap_or_default()).await?;
        ensure!(info.state() == fleet_client::pb::TaskState::Canceled);
        let status = client.status().await?;
        ensure!(status.running_tasks == 0 && status.workers[0].running_tasks == 0);

        // A queued task is canceled by the head itself.
        let mut busy =
            fleet_client::AgentSpec { max_concurrency: 1, ..slow_echo("one-at-a-time", 50) };
        busy.name = "one-at-a-time".into();
        client.register_agent(busy).await?;
        let _first = client.submit(Submission::new("one-at-a-time", "a b c d e f g h i j")).await?;
        let mut second = client.submit(Submission::new("one-at-a-time", "queued")).await?;
        let submitted = second.next().await.context("no event")??;
        client.cancel(submitted.task_id.as_str()).await?;
        let mut kinds = Vec::new();
        while let Some(e) = second.next().await {
            kinds.push(e?.kind);
        }
        ensure!(matches!(kinds.as_slice(), [EventKind::Canceled { .. }]), "{kinds:?}");
        cluster.shutdown().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_worker_mid_run_leaves_no_task_hanging() -> Result<()> {
    within(async {
        let mut cluster =
            ClusterSandbox::builder().workers(3).head_arg("--worker-timeout-ms").head_arg("2000").start().await?;
        let client = cluster.client().await?;
        client.register_agent(slow_echo("retry", 10)).await?;
        client.register_agent(AgentSpec { max_retries: 0, ..slow_echo("once", 10) }).await?;
        let input = (0..40).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ");
        let mut items: Vec<Submission> = (0..60).map(|_| Submission::new("retry", input.clone())).collect();
        items.extend((0..30).map(|_| Submission::new("once", input.clone())));

        let victim = cluster.worker_names()[1].clone();
        let runner = {
            let client = client.clone();
            tokio::spawn(async move { run_many_events(&client, items).await })
        };
        // Killed while it runs tasks (its heartbeat says so), whatever the machine's speed.
        wait_until(Duration::from_secs(30), "the victim never ran a task", || async {
            let status = client.status().await?;
            Ok(status.workers.iter().any(|w| w.worker_id == victim && w.running_tasks > 0))
        })
        .await?;
        cluster.kill_worker(&victim).await?;
        let events = runner.await??;

        let (mut retried, mut failed_on_victim) = (0, 0);
        for (index, events) in &events {
            let last = events.last().context("no events")?;
            let retry_agent = *index < 60;
            match &last.kind {
                EventKind::Completed { .. } => {
                    let text = fleet_testkit::final_text(events);
                    ensure!(text == input, "task {index}: final attempt's text is incomplete");
                    if last.attempt == 2 {
                        ensure!(retry_agent, "an agent with max_retries 0 was retried");
                        ensure!(events.iter().any(|e| matches!(&e.kind, EventKind::Retrying { reason, .. } if reason.contains(&victim))));
                        retried += 1;
                    }
                }
                EventKind::Failed { error, worker_id, kind } => {
                    ensure!(!retry_agent, "task {index} of the retrying agent failed: {error}");
                    ensure!(*kind == ErrorKind::Unavailable, "a lost worker's failure is {kind}");
                    ensure!(worker_id == &victim && error.contains(&victim), "error does not name the worker: {error}");
                    failed_on_victim += 1;
                }
                other => anyhow::bail!("task {index} ended with {other:?}"),
            }
        }
        ensure!(retried > 0, "no task was running on the killed worker");
        ensure!(failed_on_victim > 0, "no max_retries=0 task was running on the killed worker");
        let status = client.status().await?;
        ensure!(status.workers.len() == 2 && status.running_tasks == 0 && status.queued_tasks == 0);
        cluster.shutdown().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_worker_is_declared_dead_within_the_timeout() -> Result<()> {
    within(async {
        let cluster = ClusterSandbox::builder()
            .workers(2)
            .head_arg("--worker-timeout-ms")
            .head_arg("1000")
            .head_arg("--heartbeat-interval-ms")
            .head_arg("200")
            .start()
            .await?;
        let client = cluster.client().await?;
        client.register_agent(slow_echo("slow", 100)).await?;
        let pid = cluster.worker_pid("worker-0").context("no pid")?;
        // SIGSTOP: the process stays, its sockets stay open, only its heartbeats stop.
        let stopped = Instant::now();
        std::process::Command::new("kill").args(["-STOP", &pid.to_string()]).status()?;
        loop {
            if client.status().await?.workers.len() == 1 {
                break;
            }
            ensure!(
                stopped.elapsed() < Duration::from_secs(5),
                "the stopped worker was not declared dead"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let detected = stopped.elapsed();
        ensure!(detected >= Duration::from_millis(900), "declared dead too early: {detected:?}");
        std::process::Command::new("kill").args(["-CONT", &pid.to_string()]).status()?;
        // It reconnects once it runs again, as the head restarting would make it do.
        cluster.wait_for_workers(2, Duration::from_secs(10)).await?;
        let outcome = client.run("slow", "still works").await?;
        ensure!(outcome.output == "still works");
        cluster.shutdown().await
    })
    .await
}

/// A cluster larger than the heartbeat rate allows is told a longer interval: two real
/// workers at 2 beats a second in all beat every second (a third of the 3 s timeout), not
/// every 200 ms, the first of them told so after its welcome; neither is taken for dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_past_the_heartbeat_rate_is_told_a_longer_interval() -> Result<()> {
    within(async {
        let cluster = ClusterSandbox::builder()
            .workers(2)
            .head_arg("--heartbeat-interval-ms")
            .head_arg("200")
            .head_arg("--max-heartbeats-per-second")
            .head_arg("2")
            .start()
            .await?;
        let client = cluster.client().await?;
        // Each worker's longest silence seen over 4 s of looking every 50 ms.
        let mut longest: HashMap<String, u64> = HashMap::new();
        let looked = Instant::now();
        while looked.elapsed() < Duration::from_secs(4) {
            let workers = client.status().await?.workers;
            ensure!(workers.len() == 2, "a worker was lost: {workers:?}");
            for w in workers {
                let seen = longest.entry(w.worker_id.clone()).or_default();
                *seen = (*seen).max(w.last_heartbeat_ms_ago);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for (id, ms) in &longest {
            ensure!((700..=1_600).contains(ms), "{id} was silent for at most {ms} ms");
        }
        cluster.shutdown().await
    })
    .await
}

/// Every door with client auth on: the gRPC client API, A2A and the OpenAI API take the
/// client token and the API key alike and refuse anything else; the join token is not a
/// client credential, and a client credential does not let a worker join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_door_refuses_callers_without_their_credential() -> Result<()> {
    within(async {
        let cluster = ClusterSandbox::builder()
            .workers(1)
            .token("client-token")
            .head_arg("--api-key")
            .head_arg("http-key")
            .start()
            .await?;
        let good = cluster.client().await?;
        good.register_agent(echo("echo")).await?;

        let wrong = [None, Some("wrong-token"), Some(cluster.join_token())];
        for token in wrong {
            let options =
                fleet_client::ConnectOptions { token: token.map(Into::into), ..Default::default() };
            let bad = Client::connect_with(&cluster.url, options).await?;
            let err = bad.status().await.err().context("a client got in without the token")?;
            ensure!(err.code() == fleet_client::Code::Unauthenticated, "{token:?}: {err}");
            ensure!(err.to_string().contains("client token"), "{err}");
        }
        let with_key = fleet_client::ConnectOptions {
            token: Some("http-key".into()),
            ..Default::default()
        };
        ensure!(Client::connect_with(&cluster.url, with_key).await?.status().await.is_ok());

        let chat = br#"{"model": "echo", "messages": [{"role": "user", "content": "hi"}]}"#;
        let send = br#"{"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": {"messageId": "m1", "role": "ROLE_USER", "parts": [{"text": "hi"}]}}}"#;
        let doors: [(&str, &[u8]); 3] =
            [("/v1/chat/completions", chat), ("/v1/models", b""), ("/a2a/echo", send)];
        for (path, body) in doors {
            let method = if body.is_empty() { "GET" } else { "POST" };
            for header in [None, Some("Bearer wrong"), Some("Bearer JOIN")] {
                let value = header.map(|h| h.replace("JOIN", cluster.join_token()));
                let headers: Vec<(&str, &str)> =
                    value.iter().map(|v| ("Authorization", v.as_str())).collect();
                let (status, reply) = cluster.http(method, path, &headers, body).await?;
                ensure!(status == 401, "{path} with {header:?}: {status} {reply}");
            }
            for headers in [
                [("Authorization", "Bearer client-token")],
                [("Authorization", "Bearer http-key")],
                [("X-API-Key", "http-key")],
            ] {
                let (status, reply) = cluster.http(method, path, &headers, body).await?;
                ensure!(status == 200, "{path} with {headers:?}: {status} {reply}");
            }
        }

        for token in ["wrong-token", "client-token", "http-key"] {
            let worker =
                cluster.spawn_worker_process(&["--join-token", token, "--name", "intruder"])?;
            let output =
                tokio::time::timeout(Duration::from_secs(10), worker.wait_with_output()).await??;
            ensure!(output.status.code() == Some(2), "a worker joined with {token:?}");
            let stderr = String::from_utf8_lossy(&output.stderr);
            ensure!(stderr.contains("join token"), "{stderr}");
        }
        ensure!(good.status().await?.workers.len() == 1);
        ensure!(good.run("echo", "still serving").await?.output == "still serving");

        // Each refusal left a line for the operator (and never the credential presented).
        for line in [
            "refused a client without a credential",
            "refused a request without a client credential",
            "refused a worker without the join token",
        ] {
            let never = format!("the head never logged {line:?}");
            wait_until(Duration::from_secs(10), &never, || async {
                Ok(cluster.head_log().contains(line))
            })
            .await?;
        }
        let log = cluster.head_log();
        for secret in ["wrong-token", "Bearer wrong", cluster.join_token()] {
            ensure!(!log.contains(secret), "the head logged a credential: {secret}");
        }
        cluster.shutdown().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_with_resource_exhausted_and_the_head_keeps_serving() -> Result<()> {
    use fleet_client::Code;
    within(async {
        let cluster = ClusterSandbox::builder()
            .workers(1)
            .worker_arg("--slots")
            .worker_arg("1")
            .head_arg("--max-queued-tasks")
            .head_arg("3")
            .start()
            .await?;
        let client = cluster.client().await?;
        // 100 words a second apart: nothing ends by itself while the test looks.
        client.register_agent(slow_echo("slow", 1000)).await?;
        let long = (0..100).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ");
        let status_is = |running: u64, queued: u64| {
            let client = client.clone();
            async move {
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                loop {
                    let s = client.status().await?;
                    if s.running_tasks == running && s.queued_tasks == queued {
                        return anyhow::Ok(());
                    }
                    ensure!(
                        std::time::Instant::now() < deadline,
                        "running {} queued {}",
                        s.running_tasks,
                        s.queued_tasks
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        let mut streams = Vec::new();
        streams.push(client.submit(Submission::new("slow", long.clone())).await?);
        status_is(1, 0).await?;
        for _ in 0..3 {
            streams.push(client.submit(Submission::new("slow", long.clone())).await?);
        }
        status_is(1, 3).await?;
        let err = client.submit(Submission::new("slow", "one too many")).await.err();
        let err = err.context("a task past the full queue was accepted")?;
        ensure!(
            err.code() == Code::ResourceExhausted && err.to_string().contains("queue is full"),
            "{err}"
        );
        // Room again once a queued task goes: the head served on.
        let queued = client
            .list_tasks(fleet_client::pb::ListTasksRequest {
                agent: "slow".into(),
                state: fleet_client::pb::TaskState::Queued.into(),
                ..Default::default()
            })
            .await?;
        let first = queued.tasks.first().context("no queued task listed")?;
        client.cancel(&first.task_id).await?;
        status_is(1, 2).await?;
        streams.push(client.submit(Submission::new("slow", long.clone())).await?);
        status_is(1, 3).await?;
        drop(streams);
        cluster.shutdown().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_clear_errors_and_the_head_keeps_serving() -> Result<()> {
    within(async {
        let cluster = ClusterSandbox::builder()
            .workers(1)
            .head_arg("--max-input-bytes")
            .head_arg("1000")
            .start()
            .await?;
        let client = cluster.client().await?;
        client.register_agent(echo("echo")).await?;
        use fleet_client::Code;

        let cases: Vec<(Submission, Code, &str)> = vec![
            (Submission::new("nobody", "hi"), Code::NotFound, "unknown agent"),
            (Submission::new("echo", "   "), Code::InvalidArgument, "input is empty"),
            (Submission::new("echo", "x".repeat(1001)), Code::InvalidArgument, "over the limit"),
            (Submission::new("", "hi"), Code::InvalidArgument, "agent is empty"),
        ];
        for (submission, code, needle) in cases {
            let err = client.submit(submission).await.err().context("bad submission accepted")?;
            ensure!(err.code() == code && err.to_string().contains(needle), "{err}");
        }
        let bad_specs = [
            AgentSpec { name: "bad name!".into(), ..echo("x") },
            AgentSpec { model: String::new(), ..echo("nomodel") },
            AgentSpec { model: "builtin:nope".into(), ..echo("nobuiltin") },
            AgentSpec { model: "no-such-model.gguf".into(), ..echo("unplaceable") },
        ];
        for spec in bad_specs.iter().take(3) {
            let err =
                client.register_agent(spec.clone()).await.err().context("bad spec accepted")?;
            ensure!(
                err.code() == Code::InvalidArgument
                    && err.to_string().contains("invalid agent spec"),
                "{err}"
            );
        }
        // A model no worker has: the agent registers, its tasks are refused at submit time.
        client.register_agent(bad_specs[3].clone()).await?;
        let err = client
            .submit(Submission::new("unplaceable", "hi"))
            .await
            .err()
            .context("unplaceable accepted")?;
        ensure!(
            err.code() == Code::FailedPrecondition
                && err.to_string().contains("no worker has model"),
            "{err}"
        );

        let err = client.get_task("no-such-task").await.err().context("unknown task found")?;
        ensure!(err.code() == Code::NotFound);
        let err = client.cancel("no-such-task").await.err().context("unknown task canceled")?;
        ensure!(err.code() == Code::NotFound);
        let request = fleet_client::pb::ListTasksRequest {
            page_token: "garbage".into(),
            ..Default::default()
        };
        let err = client.list_tasks(request).await.err().context("bad page token accepted")?;
        ensure!(err.code() == Code::InvalidArgument);

        // On a multiplexed stream a bad item is refused alone; the good ones run.
        let (sender, mut updates) = client.submit_many().await?;
        sender
            .send([
                (0, Submission::new("echo", "good")),
                (1, Submission::new("nobody", "x")),
                (2, Submission::new("echo", "also good")),
            ])
            .await?;
        drop(sender);
        let (mut accepted, mut rejected, mut completed) = (0, 0, 0);
        while let Some(batch) = updates.next().await {
            for update in batch? {
                match update {
                    ManyUpdate::Accepted { .. } => accepted += 1,
                    ManyUpdate::Rejected { client_ref, code, .. } => {
                        ensure!(client_ref == 1 && code == Code::NotFound);
                        rejected += 1;
                    }
                    ManyUpdate::Event(e) if matches!(e.kind, EventKind::Completed { .. }) => {
                        completed += 1
                    }
                    ManyUpdate::Event(_) => {}
                }
            }
        }
        ensure!((accepted, rejected, completed) == (2, 1, 2));

        // Listing pages through every task exactly once, oldest or newest first.
        let mut orders = Vec::new();
        for newest_first in [false, true] {
            let (mut seen, mut token) = (Vec::new(), String::new());
            loop {
                let page = client
                    .list_tasks(fleet_client::pb::ListTasksRequest {
                        page_size: 1,
                        page_token: token,
                        newest_first,
                        ..Default::default()
                    })
                    .await?;
                seen.extend(page.tasks.into_iter().map(|t| t.output));
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            orders.push(seen);
        }
        ensure!(orders[0] == ["good", "also good"], "oldest first: {:?}", orders[0]);
        ensure!(orders[1] == ["also good", "good"], "newest first: {:?}", orders[1]);
        ensure!(client.run("echo", "still serving").await?.output == "still serving");
        cluster.shutdown().await
    })
    .await
}

/// Registered agents are bounded: a new name beyond --max-agents is RESOURCE_EXHAUSTED,
/// known names may still change, and the head keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_registry_is_bounded() -> Result<()> {
    within(async {
        let cluster = ClusterSandbox::builder()
            .workers(1)
            .head_arg("--max-agents")
            .head_arg("3")
            .start()
            .await?;
        let client = cluster.client().await?;
        for name in ["a", "b", "c"] {
            client.register_agent(echo(name)).await?;
        }
        let err = client.register_agent(echo("d")).await.err().context("a 4th agent got in")?;
        ensure!(err.code() == fleet_client::Code::ResourceExhausted, "{err}");
        ensure!(err.to_string().contains("--max-agents"), "{err}");
        let changed = AgentSpec { instructions: "changed".into(), ..echo("c") };
        client.register_agent(changed).await?;
        let huge = AgentSpec { instructions: "x".repeat(300 << 10), ..echo("c") };
        let err = client.register_agent(huge).await.err().context("huge instructions accepted")?;
        ensure!(err.code() == fleet_client::Code::InvalidArgument, "{err}");
        ensure!(client.run("a", "still serving").await?.output == "still serving");
        cluster.shutdown().await
    })
    .await
}

/// A worker that stops reading its `Join` stream while commands pile up for it (here:
/// answers to agent lookups it keeps asking for) is cut off once the head's buffer for it
/// is full: its stream ends with RESOURCE_EXHAUSTED, it leaves the cluster, and the head
/// keeps serving everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_stops_reading_its_commands_is_cut_off() -> Result<()> {
    use fleet_proto::{LocateRequest, Registration, WorkerUpdate, pb};
    within(async {
        let cluster = ClusterSandbox::builder().workers(1).start().await?;
        let client = cluster.client().await?;
        client.register_agent(echo("echo")).await?;
        // Small flow-control windows: the head's writes stop after a few KB unread.
        let channel = tonic::transport::Endpoint::from_shared(cluster.url.clone())?
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .connect()
            .await?;
        let mut rogue = pb::worker_service_client::WorkerServiceClient::new(channel);
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::WorkerMessage>(1024);
        let registration =
            Registration { worker_id: "rogue".into(), slots: 1, ..Default::default() };
        tx.send(WorkerUpdate::Register(registration).into()).await?;
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let token = fleet_proto::bearer(cluster.join_token()).parse()?;
        request.metadata_mut().insert(fleet_proto::TOKEN_METADATA_KEY, token);
        let mut inbound = rogue.join(request).await?.into_inner();
        ensure!(client.status().await?.workers.len() == 2, "the rogue did not join");

        let limit = fleet_head::workers::COMMAND_BUFFER;
        let mut asked = 0;
        let cut_at = loop {
            for _ in 0..1000 {
                asked += 1;
                let locate = LocateRequest {
                    request_id: asked,
                    agent: "echo".into(),
                    context_id: String::new(),
                    caller_task: "t".into(),
                };
                if tx.send(WorkerUpdate::Locate(locate).into()).await.is_err() {
                    break;
                }
            }
            let workers = client.status().await?.workers;
            if !workers.iter().any(|w| w.worker_id == "rogue") {
                break asked;
            }
            ensure!(asked < 4 * limit as u64, "{asked} lookups unread and the rogue is still in");
        };
        ensure!(cut_at > limit as u64, "cut off after {cut_at} lookups, before its buffer filled");
        // What the rogue finally reads: what got through, then the reason.
        let status = loop {
            match inbound.message().await {
                Ok(Some(_)) => {}
                Ok(None) => anyhow::bail!("the stream ended without a status"),
                Err(status) => break status,
            }
        };
        ensure!(status.code() == tonic::Code::ResourceExhausted, "{status:?}");
        ensure!(status.message().contains("stopped reading its commands"), "{status:?}");
        // Everyone else is served.
        ensure!(client.run("echo", "still serving").await?.output == "still serving");
        cluster.shutdown().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_over_plain_http_on_the_grpc_port() -> Result<()> {
    within(async {
        let cluster = ClusterSandbox::builder().workers(1).start().await?;
        let address = cluster.url.trim_start_matches("http://").to_owned();
        let get = |path: &str| {
            let address = address.clone();
            let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut stream = tokio::net::TcpStream::connect(address).await?;
                stream.write_all(request.as_bytes()).await?;
                let mut response = String::new();
                stream.read_to_string(&mut response).await?;
                anyhow::Ok(response)
            }
        };
        let ok = get("/healthz").await?;
        ensure!(ok.starts_with("HTTP/1.1 200") && ok.contains("\"workers\":1"), "{ok}");
        let waiting = get("/healthz?min_workers=5").await?;
        ensure!(waiting.starts_with("HTTP/1.1 503"), "{waiting}");
        cluster.shutdown().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_rejoin_a_restarted_head() -> Result<()> {
    within(async {
        let mut cluster = ClusterSandbox::builder().workers(2).start().await?;
        cluster.restart_head().await?;
        let rejoined = Instant::now();
        cluster.wait_for_workers(2, Duration::from_secs(15)).await?;
        let client = cluster.client().await?;
        client.register_agent(echo("echo")).await?;
        ensure!(client.run("echo", "back again").await?.output == "back again");
        eprintln!("workers rejoined the restarted head in {:?}", rejoined.elapsed());
        cluster.shutdown().await
    })
    .await
}

//! Workers joined to a head in the same process (no gRPC between them): tasks run, and a
//! worker that stops mid-run has its tasks retried on the other.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Result, ensure};
use fleet_client::{AgentSpec, Client, TaskState};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_workers_run_tasks_and_hand_them_over_when_one_stops() -> Result<()> {
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let head = fleet_head::spawn(fleet_head::HeadConfig::default(), listener, shutdown.clone())?;
    let mut stops = Vec::new();
    for i in 0..2 {
        let mut config = fleet_worker::WorkerConfig::new("in-process");
        config.worker_id = format!("local-{i}");
        config.local = Some(head.cluster.clone());
        let stop = shutdown.child_token();
        stops.push(stop.clone());
        tokio::spawn(fleet_worker::run(config, stop));
    }
    while head.cluster.worker_count() < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let client = Client::connect_local(head.local.clone(), Default::default()).await?;
    let mut spec = AgentSpec {
        name: "slow".into(),
        model: "builtin:echo".into(),
        max_retries: 1,
        ..Default::default()
    };
    spec.model_options = BTreeMap::from([("token_delay_ms".into(), "5".into())]);
    client.register_agent(spec).await?;

    let input = (0..20).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ");
    let runner = {
        let client = client.clone();
        let inputs = vec![input.clone(); 40];
        tokio::spawn(async move { client.run_many("slow", inputs).await })
    };
    // Stop the first worker once it is running tasks (a fixed wait could stop it before).
    let running_on = |id: &str| {
        head.cluster
            .status()
            .workers
            .iter()
            .any(|w| w.registration.worker_id == id && w.running_tasks > 0)
    };
    while !running_on("local-0") {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stops[0].cancel();
    let outcomes = tokio::time::timeout(Duration::from_secs(30), runner).await???;
    for o in &outcomes {
        ensure!(
            o.state == TaskState::Completed && o.output == input,
            "task {} ended {:?} on attempt {} with {:?} (error {:?})",
            o.task_id,
            o.state,
            o.attempt,
            o.output,
            o.error
        );
    }
    ensure!(outcomes.iter().any(|o| o.attempt == 2), "no task was handed over");
    ensure!(head.cluster.worker_count() == 1);
    shutdown.cancel();
    Ok(())
}

/// An in-process worker with a two-event buffer: 200 tasks of 52 events each all complete,
/// every runner waiting for room in turn (the backpressure; the next test reproduces a
/// command that waits for room while its own loop handles it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_event_buffer_slows_but_never_stalls_an_in_process_worker() -> Result<()> {
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let head = fleet_head::spawn(fleet_head::HeadConfig::default(), listener, shutdown.clone())?;
    let mut config = fleet_worker::WorkerConfig::new("in-process");
    config.local = Some(head.cluster.clone());
    config.event_buffer = 2;
    tokio::spawn(fleet_worker::run(config, shutdown.child_token()));
    while head.cluster.worker_count() < 1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let client = Client::connect_local(head.local.clone(), Default::default()).await?;
    let spec =
        AgentSpec { name: "echo".into(), model: "builtin:echo".into(), ..Default::default() };
    client.register_agent(spec).await?;
    let input = (0..50).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ");
    let outcomes = tokio::time::timeout(
        Duration::from_secs(30),
        client.run_many("echo", vec![input.clone(); 200]),
    )
    .await??;
    ensure!(outcomes.iter().all(|o| o.state == TaskState::Completed && o.output == input));
    shutdown.cancel();
    Ok(())
}

/// A head in this process that hands its worker the commands the test queued and passes on
/// the events it gets.
struct ScriptedHead {
    commands: parking_lot::Mutex<Vec<tokio::sync::mpsc::Receiver<fleet_proto::Command>>>,
    /// Senders of the channels handed out on rejoins, kept open (an empty queue, not an end).
    idle: parking_lot::Mutex<Vec<tokio::sync::mpsc::Sender<fleet_proto::Command>>>,
    events: tokio::sync::mpsc::UnboundedSender<fleet_proto::TaskEvent>,
}

impl fleet_proto::local::LocalHead for ScriptedHead {
    fn join(
        &self,
        _: fleet_proto::Registration,
    ) -> (u64, Duration, tokio::sync::mpsc::Receiver<fleet_proto::Command>) {
        let commands = self.commands.lock().pop().unwrap_or_else(|| {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            self.idle.lock().push(tx);
            rx
        });
        (1, Duration::from_secs(3600), commands)
    }

    fn heartbeat(&self, _: &str, _: u64, _: fleet_proto::Heartbeat) {}

    fn events(&self, _: &str, _: u64, events: Vec<fleet_proto::TaskEvent>) {
        for event in events {
            let _ = self.events.send(event);
        }
    }

    fn leave(&self, _: &str, _: u64, _: &str) {}

    // The scripted agents publish nothing.
    fn store_topic_message(
        &self,
        _: &str,
        _: u64,
        _: fleet_proto::PublishRequest,
        _: u64,
        _: Vec<String>,
    ) {
    }
}

/// Commands whose handling emits events (tasks of an agent the worker does not have fail at
/// once), one after another, with a one-event buffer: each waits for room, which only a
/// reader beside the command loop can make. Were the loop the buffer's reader, the second
/// would wait on the loop that is waiting for it, for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_that_emit_events_never_wait_on_their_own_loop() -> Result<()> {
    let (commands, rx) = tokio::sync::mpsc::channel(16);
    let (events, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let head = ScriptedHead {
        commands: parking_lot::Mutex::new(vec![rx]),
        idle: Default::default(),
        events,
    };
    for i in 0..4 {
        commands
            .send(fleet_proto::Command::RunTask(fleet_proto::TaskAssignment::new(
                fleet_proto::TaskId::new(format!("t{i}")),
                "nobody",
                "",
            )))
            .await?;
    }
    let shutdown = CancellationToken::new();
    let mut config = fleet_worker::WorkerConfig::new("in-process");
    config.local = Some(std::sync::Arc::new(head));
    config.event_buffer = 1;
    tokio::spawn(fleet_worker::run(config, shutdown.child_token()));
    for i in 0..4 {
        let event = tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .map_err(|_| anyhow::anyhow!("only {i} of 4 tasks' events came: the worker stalled"))?
            .ok_or_else(|| anyhow::anyhow!("the worker stopped"))?;
        ensure!(
            matches!(&event.kind, fleet_proto::EventKind::Failed { error, .. } if error.contains("not placed")),
            "{event:?}"
        );
    }
    drop(commands);
    shutdown.cancel();
    Ok(())
}

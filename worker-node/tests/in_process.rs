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
    ensure!(outcomes.iter().all(|o| o.state == TaskState::Completed && o.output == input));
    ensure!(outcomes.iter().any(|o| o.attempt == 2), "no task was handed over");
    ensure!(head.cluster.worker_count() == 1);
    shutdown.cancel();
    Ok(())
}

/// An in-process worker with a two-event buffer: 200 tasks of 52 events each all complete,
/// every runner waiting for room in turn. (Events go up from their own task, so a command
/// being handled while the buffer is full cannot wait on the loop that handles it; this
/// test exercises the backpressure, it does not reproduce that interleaving, which needs an
/// actor failing at the same moment.)
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

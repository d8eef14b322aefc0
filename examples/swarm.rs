//! The cluster machinery without models: an embedded cluster (a head and two workers in
//! this process) runs a swarm of `builtin:echo` jobs and streams their results. (The quick
//! start, `./scripts/swarm.sh`, runs swarms on local models from Python.)
//!
//! `cargo run --release -p fleet-examples --example swarm [-- --jobs 1000]`

use std::time::Instant;

use anyhow::Context;
use fleet_client::{AgentSpec, Client, ManyUpdate, Submission};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let jobs: usize = std::env::args()
        .skip_while(|a| a != "--jobs")
        .nth(1)
        .map(|n| n.parse())
        .transpose()
        .context("--jobs takes a number")?
        .unwrap_or(1000);

    // An embedded cluster: the head and two workers share this process. The head also
    // listens on 127.0.0.1 (other processes could join); the workers here join it directly
    // and the client talks to it over in-memory pipes.
    let started = Instant::now();
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let head = fleet_head::spawn(fleet_head::HeadConfig::default(), listener, shutdown.clone())?;
    let url = format!("http://{}", head.address);
    for _ in 0..2 {
        let mut worker = fleet_worker::WorkerConfig::new(url.clone());
        worker.local = Some(head.cluster.clone());
        tokio::spawn(fleet_worker::run(worker, shutdown.clone()));
    }
    let client = Client::connect_local(head.local.clone(), Default::default()).await?;
    while client.status().await?.workers.len() < 2 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    println!("cluster ready at {url}: 1 head + 2 workers in {:.0?}", started.elapsed());

    let spec = AgentSpec {
        name: "writer".into(),
        model: "builtin:echo".into(),
        instructions: "repeat the request".into(),
        ..Default::default()
    };
    client.register_agent(spec).await?;

    // One streamed job, token by token.
    print!("streaming one job: ");
    let mut events = client
        .submit(Submission::new("writer", "agents stream their answers word by word"))
        .await?;
    while let Some(event) = events.next().await {
        if let fleet_client::EventKind::TextDelta { text, .. } = event?.kind {
            print!("[{text}]");
        }
    }
    println!();

    // A swarm of jobs over one multiplexed stream, results as they complete.
    let started = Instant::now();
    let (sender, mut updates) = client.submit_many().await?;
    let inputs: Vec<_> =
        (0..jobs).map(|i| (i as u64, Submission::new("writer", format!("job {i} done")))).collect();
    sender.send(inputs).await?;
    drop(sender);
    let (mut completed, mut failed) = (0, 0);
    let mut workers = std::collections::BTreeMap::<String, usize>::new();
    while let Some(batch) = updates.next().await {
        for update in batch? {
            match update {
                ManyUpdate::Event(e) => match e.kind {
                    fleet_client::EventKind::Scheduled { worker_id } => {
                        *workers.entry(worker_id).or_default() += 1
                    }
                    fleet_client::EventKind::Completed { .. } => {
                        completed += 1;
                        if completed % (jobs / 10).max(1) == 0 {
                            println!("  {completed}/{jobs} jobs completed");
                        }
                    }
                    fleet_client::EventKind::Failed { .. } => failed += 1,
                    _ => {}
                },
                ManyUpdate::Rejected { message, .. } => {
                    failed += 1;
                    eprintln!("rejected: {message}");
                }
                ManyUpdate::Accepted { .. } => {}
            }
        }
    }
    let elapsed = started.elapsed();
    println!(
        "swarm: {completed} completed, {failed} failed in {elapsed:.2?} ({:.0} jobs/s); per worker: {workers:?}",
        jobs as f64 / elapsed.as_secs_f64()
    );
    shutdown.cancel();
    let _ = head.task.await;
    anyhow::ensure!(completed == jobs && failed == 0, "not every job completed");
    Ok(())
}

//! The mesh with hundreds of real `fleet-worker` processes on one head, on this machine
//! (127.0.0.1). For each N:
//!
//! - **join**: the time until the head has all N (each worker starts its mesh node, joins,
//!   and connects to its overlay neighbours), and the head's `/healthz` answer time while
//!   they join (median and worst): the head must keep serving;
//! - **idle**: the head's CPU, all the workers' CPU together, a worker's memory, and the mesh
//!   connections each worker holds (its established TCP connections less the head's, by
//!   `/proc`), with N workers idle on the mesh;
//! - **calls**: N agents, one pinned to each worker, each calling the agent of the worker
//!   half the ring away, all at once (every call a new connection between the two): the
//!   time for all N, three rounds, and the connections after.
//!
//! `cargo build --release --bins && cargo bench -p fleet-benches --bench mesh_scale --
//! [--workers 200,500] [--max-peers 64]`. Figures in BENCHMARKS.md.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use fleet_client::{AgentSpec, Client, EventKind, Submission};
use fleet_testkit::ClusterSandbox;
use fleet_testkit::procfs::cpu_seconds;
use futures::StreamExt;

struct Args {
    workers: Vec<usize>,
    max_peers: usize,
}

fn args() -> Result<Args> {
    let mut args = Args { workers: vec![200, 500], max_peers: 64 };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--workers" => {
                args.workers = value()?
                    .split(',')
                    .map(|n| n.trim().parse().context("--workers: a list of numbers"))
                    .collect::<Result<_>>()?
            }
            "--max-peers" => args.max_peers = value()?.parse()?,
            // cargo bench passes --bench.
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(args)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// (most, mean) mesh connections of a worker: its established TCP connections less those
/// to the head.
fn mesh_connections(cluster: &ClusterSandbox) -> Result<(usize, f64)> {
    let counts = cluster.worker_mesh_connections()?;
    let most = counts.first().map_or(0, |(n, _)| *n);
    let total: usize = counts.iter().map(|(n, _)| n).sum();
    Ok((most, total as f64 / counts.len().max(1) as f64))
}

/// CPU seconds of the head and of all the workers together.
fn cpu(cluster: &ClusterSandbox) -> Result<(f64, f64)> {
    let head = cpu_seconds(cluster.head_pid().context("no head")?)?;
    let mut workers = 0.0;
    for name in cluster.worker_names() {
        workers += cpu_seconds(cluster.worker_pid(&name).context("a worker stopped")?)?;
    }
    Ok((head, workers))
}

/// One caller's call to the agent of worker `callee`.
async fn call(client: &Client, caller: usize, callee: usize) -> Result<()> {
    let input = format!(
        r#"<tool_call>{{"name": "a{callee}", "arguments": {{"input": "from {caller}"}}}}</tool_call>"#
    );
    let mut stream = client.submit(Submission::new(format!("a{caller}"), input)).await?;
    while let Some(event) = stream.next().await {
        match event?.kind {
            EventKind::ToolResult { output, is_error, .. } => {
                ensure!(!is_error && output == format!("from {caller}"), "a{caller}: {output}")
            }
            EventKind::Completed { .. } => return Ok(()),
            EventKind::Failed { error, .. } => bail!("a{caller} failed: {error}"),
            _ => {}
        }
    }
    bail!("a{caller}'s stream ended early")
}

async fn run(n: usize, max_peers: usize) -> Result<()> {
    // n processes share this machine's cores: a worker starved for a few seconds while the
    // others start must not be declared dead (the default timeout is 3 s).
    let mut cluster = ClusterSandbox::builder()
        .workers(0)
        .head_arg("--worker-timeout-ms")
        .head_arg("30000")
        .worker_arg("--mesh-max-peers")
        .worker_arg(max_peers.to_string())
        .worker_arg("--slots")
        .worker_arg("8")
        .start()
        .await?;
    let address = cluster.address.clone();
    let joining = Arc::new(AtomicBool::new(true));
    let still_joining = joining.clone();
    let probing = tokio::spawn(async move {
        let mut answers = Vec::new();
        while still_joining.load(Ordering::Relaxed) {
            let asked = Instant::now();
            let ok = fleet_testkit::http_at(&address, "GET", "/healthz", &[], b"").await;
            answers.push((asked.elapsed().as_secs_f64() * 1e3, ok.is_ok()));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        answers
    });
    let started = Instant::now();
    for i in 0..n {
        cluster.add_worker_with(&["--label", &format!("slot={i}")])?;
    }
    cluster.wait_for_workers(n, Duration::from_secs(600)).await?;
    let joined = started.elapsed();
    joining.store(false, Ordering::Relaxed);
    let healthz: Vec<f64> = probing.await?.into_iter().map(|(ms, _)| ms).collect();
    let worst = healthz.iter().copied().fold(0.0, f64::max);
    println!(
        "{n} workers joined in {:.1} s; /healthz meanwhile: median {:.1} ms, worst {worst:.0} ms ({} probes)",
        joined.as_secs_f64(),
        median(healthz.clone()),
        healthz.len()
    );

    // Settle (overlay links made, the ramp's churn of links gone), then idle for 10 s.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (head0, workers0) = cpu(&cluster)?;
    let idle_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (head1, workers1) = cpu(&cluster)?;
    let wall = idle_from.elapsed().as_secs_f64();
    let (most, mean) = mesh_connections(&cluster)?;
    let rss: Vec<f64> = cluster
        .worker_names()
        .iter()
        .filter_map(|w| cluster.worker_rss_bytes(w))
        .map(|(now, _)| now as f64 / (1 << 20) as f64)
        .collect();
    println!(
        "idle: head {:.1}% of a core, {n} workers {:.1}% together; a worker {:.1} MiB (median RSS); \
         mesh connections per worker: at most {most}, {mean:.1} on average",
        100.0 * (head1 - head0) / wall,
        100.0 * (workers1 - workers0) / wall,
        median(rss),
    );

    let client = cluster.client().await?;
    for i in 0..n {
        client
            .register_agent(AgentSpec {
                name: format!("a{i}"),
                model: "builtin:echo".into(),
                tools: vec![format!("a{}", (i + n / 2 + 1) % n)],
                labels: [("slot".to_owned(), i.to_string())].into(),
                ..Default::default()
            })
            .await?;
    }
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let calls = (0..n).map(|i| call(&client, i, (i + n / 2 + 1) % n));
        for outcome in futures::future::join_all(calls).await {
            outcome?;
        }
        rounds.push(started.elapsed().as_secs_f64());
    }
    let status = client.status().await?;
    let (most, mean) = mesh_connections(&cluster)?;
    println!(
        "calls: {n} at once across the ring in {:.2} s (median of 3: {:?}), {:.0} calls/s; \
         relayed by the head {}; mesh connections per worker after: at most {most}, {mean:.1} on average",
        median(rounds.clone()),
        rounds.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>(),
        n as f64 / median(rounds),
        status.calls_relayed,
    );
    cluster.shutdown().await
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    for n in args.workers {
        run(n, args.max_peers).await?;
    }
    Ok(())
}

//! Cross-worker asks over the mesh: two `fleet_mesh::Mesh` nodes in two processes on
//! 127.0.0.1 (this benchmark starts a copy of itself as the answering node, which echoes
//! each call's input back at once). Measures the round trip of one ask at a time (p50, p99)
//! and asks/s with 64 in flight, over several runs.
//!
//! `cargo bench -p fleet-benches --bench mesh [-- --runs N]`

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use fleet_mesh::{AgentCall, Mesh, MeshConfig, MeshRequest, MeshResponse, Peer};

const SEQUENTIAL: usize = 5_000;
const IN_FLIGHT: usize = 64;
const CONCURRENT_TOTAL: usize = 64_000;

fn config() -> MeshConfig {
    MeshConfig { listen: vec!["/ip4/127.0.0.1/tcp/0".into()], ..Default::default() }
}

fn call(input: String) -> MeshRequest {
    MeshRequest::Call(AgentCall {
        agent: "echo".into(),
        context_id: String::new(),
        input,
        caller_task: "bench".into(),
        trace: String::new(),
        timeout_ms: 10_000,
        depth: 0,
    })
}

fn peer_line(mesh: &Mesh) -> String {
    format!("{} {}", mesh.peer_id(), mesh.listen_addrs().join(","))
}

fn parse_peer(line: &str) -> Result<Peer> {
    let (peer_id, addrs) = line.trim().split_once(' ').context("expected 'PEER ADDRS'")?;
    Ok(Peer { peer_id: peer_id.into(), addrs: addrs.split(',').map(Into::into).collect() })
}

/// The answering node: prints its address, reads the asker's, echoes calls until stdin ends.
async fn serve() -> Result<()> {
    let (mesh, mut incoming) = Mesh::start(config()).await?;
    println!("{}", peer_line(&mesh));
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    mesh.set_peers(vec![parse_peer(&line)?]);
    tokio::spawn(async move {
        while let Some(incoming) = incoming.recv().await {
            let output = incoming.call.input;
            let _ = incoming.reply.send(MeshResponse::Reply { output, is_error: false });
        }
    });
    // Until the asker closes our stdin.
    tokio::task::spawn_blocking(|| {
        let mut rest = String::new();
        let _ = std::io::stdin().lock().read_line(&mut rest);
    })
    .await?;
    mesh.shutdown().await;
    Ok(())
}

async fn ask(mesh: &Mesh, peer: &str, i: usize) -> Result<()> {
    let input = format!("ask {i}");
    match mesh.ask(peer, call(input.clone())).await? {
        MeshResponse::Reply { output, is_error: false } if output == input => Ok(()),
        other => anyhow::bail!("unexpected answer {other:?}"),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

#[tokio::main]
async fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--serve") {
        return serve().await;
    }
    let runs: usize = std::env::args()
        .skip_while(|a| a != "--runs")
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(5);
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut child_out = std::io::BufReader::new(child.stdout.take().context("child stdout")?);
    let mut line = String::new();
    child_out.read_line(&mut line)?;
    let server = parse_peer(&line)?;
    let (mesh, _incoming) = Mesh::start(config()).await?;
    let mut child_in = child.stdin.take().context("child stdin")?;
    writeln!(child_in, "{}", peer_line(&mesh))?;
    mesh.set_peers(vec![server.clone()]);
    let peer = Arc::new(server.peer_id);

    for i in 0..500 {
        ask(&mesh, &peer, i).await?;
    }
    let (mut p50s, mut p99s, mut rates) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let mut times = Vec::with_capacity(SEQUENTIAL);
        for i in 0..SEQUENTIAL {
            let started = Instant::now();
            ask(&mesh, &peer, i).await?;
            times.push(started.elapsed().as_secs_f64() * 1e6);
        }
        times.sort_by(f64::total_cmp);
        p50s.push(percentile(&times, 0.5));
        p99s.push(percentile(&times, 0.99));

        let started = Instant::now();
        let workers = (0..IN_FLIGHT).map(|w| {
            let (mesh, peer) = (mesh.clone(), peer.clone());
            tokio::spawn(async move {
                for i in (w..CONCURRENT_TOTAL).step_by(IN_FLIGHT) {
                    ask(&mesh, &peer, i).await?;
                }
                anyhow::Ok(())
            })
        });
        for worker in futures::future::join_all(workers).await {
            worker??;
        }
        rates.push(CONCURRENT_TOTAL as f64 / started.elapsed().as_secs_f64());
    }
    let list = |xs: &[f64]| xs.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
    println!("| measurement ({runs} runs) | median | runs | target |");
    println!("|---|---|---|---|");
    println!(
        "| ask round trip, one in flight, p50 | {:.0} µs | [{}] | ≤ 200 µs |",
        median(p50s.clone()),
        list(&p50s)
    );
    println!(
        "| ask round trip, one in flight, p99 | {:.0} µs | [{}] | – |",
        median(p99s.clone()),
        list(&p99s)
    );
    println!(
        "| asks/s, {IN_FLIGHT} in flight | {:.0} | [{}] | ≥ 20,000 |",
        median(rates.clone()),
        list(&rates)
    );
    let counters = mesh.counters();
    ensure!(counters.calls_sent as usize >= runs * (SEQUENTIAL + CONCURRENT_TOTAL), "{counters:?}");
    drop(child_in);
    mesh.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), async { child.wait() }).await;
    Ok(())
}

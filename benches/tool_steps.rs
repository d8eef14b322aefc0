//! What recording tool steps costs: a task whose agent calls a hosted tool five times in a
//! row (`builtin:echo` repeats each answer, which holds the next `<tool_call>`), so each
//! call's result waits for the head to store it before the model goes on. Per call, three
//! ways in one run, alternating:
//!
//! - **memory**: `--store memory`, the head acknowledges an event once it has it (nothing
//!   to wait for: the cost of the loop itself);
//! - **file**: the default file store (`--fsync periodic`: stored once written to the OS);
//! - **file, fsync always**: stored once synced to the disk.
//!
//! One head, one worker, the tool hosted by this process over gRPC.
//!
//! `cargo build --release --bins && cargo bench -p fleet-benches --bench tool_steps --
//! [--rounds N]` (default 40 tasks each way). Figures in BENCHMARKS.md.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use fleet_client::{AgentSpec, Client, FunctionTool, HostCommand, Submission, TaskOutcome};
use fleet_testkit::ClusterSandbox;
use futures::StreamExt;

/// Calls each task makes.
const CALLS: u64 = 5;

fn count_call(n: u64) -> String {
    format!("step {n} <tool_call> {{\"name\":\"count\",\"arguments\":{{\"n\":{n}}}}} </tool_call>")
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// A cluster with `store_args`, the counting tool hosted by this process, its agent.
async fn cluster(store_args: &[&str]) -> Result<(ClusterSandbox, Client)> {
    let mut builder = ClusterSandbox::builder().workers(1);
    for arg in store_args {
        builder = builder.head_arg(*arg);
    }
    let sandbox = builder.start().await?;
    let client = sandbox.client().await?;
    let (sender, mut commands) = client.host_tools().await?;
    let count = FunctionTool {
        name: "count".into(),
        description: "counts".into(),
        parameters: r#"{"type":"object"}"#.into(),
        ..Default::default()
    };
    sender.register(&[count]).await?;
    match commands.next().await.context("the host stream ended")?? {
        HostCommand::Registered(Ok(_)) => {}
        other => bail!("not registered: {other:?}"),
    }
    tokio::spawn(async move {
        while let Some(Ok(HostCommand::Invoke(call))) = commands.next().await {
            let n = serde_json::from_str::<serde_json::Value>(&call.arguments)
                .ok()
                .and_then(|a| a.get("n").and_then(serde_json::Value::as_u64))
                .unwrap_or(0);
            let answer = if n < CALLS { count_call(n + 1) } else { "counted".into() };
            if sender.answer(call.call, answer, false).await.is_err() {
                return;
            }
        }
    });
    let agent = AgentSpec {
        name: "counter".into(),
        model: "builtin:echo".into(),
        tools: vec!["count".into()],
        ..Default::default()
    };
    client.register_agent(agent).await?;
    Ok((sandbox, client))
}

/// One task of five calls; its time per call.
async fn per_call(client: &Client) -> Result<Duration> {
    let started = Instant::now();
    let stream = client.submit(Submission::new("counter", count_call(1))).await?;
    let outcome = TaskOutcome::collect(stream).await?;
    ensure!(outcome.output.ends_with("counted"), "{:?}: {}", outcome.state, outcome.error);
    Ok(started.elapsed() / CALLS as u32)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let rounds: usize = std::env::args()
        .skip_while(|a| a != "--rounds")
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(40);
    let ways: [(&str, &[&str]); 3] = [
        ("memory", &["--store", "memory"]),
        // The sandbox's head keeps a file store in the sandbox unless told otherwise.
        ("file", &[]),
        ("file, fsync always", &["--fsync", "always"]),
    ];
    let mut clusters = Vec::new();
    for (name, args) in ways {
        let (sandbox, client) = cluster(args).await?;
        per_call(&client).await?; // warm: the agent placed, the stream open
        clusters.push((name, sandbox, client, Vec::new()));
    }
    for _ in 0..rounds {
        for (_, _, client, times) in &mut clusters {
            times.push(per_call(client).await?.as_secs_f64() * 1e3);
        }
    }
    println!("tool steps: {CALLS} calls per task, {rounds} tasks each way, median per call");
    let base = median(clusters[0].3.clone());
    for (name, _, _, times) in &clusters {
        let m = median(times.clone());
        println!("  {name:<20} {m:>7.3} ms per call ({:.2}x memory)", m / base);
    }
    for (_, sandbox, _, _) in clusters {
        sandbox.shutdown().await?;
    }
    Ok(())
}

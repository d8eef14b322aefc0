//! Two hundred worker processes on one mesh (on 127.0.0.1): every worker's agent calls
//! agents on other workers straight over the mesh, while each worker holds few connections.
//! All-to-all, each would hold 199; here each keeps its overlay links (about 2·ln 200 + 2)
//! and the connections its calls use, under `--mesh-max-peers`, counted by the kernel.
//! A binary of its own: two hundred processes starting would starve the timing of other
//! tests running beside it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use fleet_client::{AgentSpec, Client, EventKind, Submission};
use fleet_testkit::{ClusterSandbox, wait_until};
use futures::StreamExt;

const WORKERS: usize = 200;
const MAX_PEERS: usize = 24;

/// What agent `a{caller}` is told: builtin:echo writes the call, then answers with the
/// callee's echo of `question`.
fn asking(callee: usize, question: &str) -> String {
    format!(
        r#"<tool_call>{{"name": "a{callee}", "arguments": {{"input": "{question}"}}}}</tool_call>"#
    )
}

/// The tool result of one caller task.
async fn call_through(client: &Client, caller: usize, callee: usize) -> Result<String> {
    let question = format!("from {caller} to {callee}");
    let mut stream =
        client.submit(Submission::new(format!("a{caller}"), asking(callee, &question))).await?;
    let mut result = None;
    while let Some(event) = stream.next().await {
        match event?.kind {
            EventKind::ToolResult { output, is_error, .. } => {
                ensure!(!is_error, "a{caller} calling a{callee}: {output}");
                result = Some(output);
            }
            EventKind::Completed { .. } => break,
            EventKind::Failed { error, .. } => anyhow::bail!("a{caller} failed: {error}"),
            _ => {}
        }
    }
    let output = result.with_context(|| format!("a{caller} made no call"))?;
    ensure!(output == question, "a{caller} got {output:?} from a{callee}");
    Ok(output)
}

/// Every caller calls its callee at once; all answer within a minute.
async fn round(client: &Client, callee_of: impl Fn(usize) -> usize) -> Result<()> {
    let calls = (0..WORKERS).map(|i| call_through(client, i, callee_of(i)));
    let outcomes = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(calls))
        .await
        .context("the calls of a round did not all answer within a minute")?;
    for outcome in outcomes {
        outcome?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_workers_call_each_other_over_a_bounded_mesh() -> Result<()> {
    tokio::time::timeout(Duration::from_secs(400), async {
        // Two hundred processes share this machine's cores: one starved for a few seconds
        // while the others start must not be declared dead (the default timeout is 3 s).
        let mut cluster = ClusterSandbox::builder()
            .workers(0)
            .head_arg("--worker-timeout-ms")
            .head_arg("20000")
            .worker_arg("--mesh-max-peers")
            .worker_arg(MAX_PEERS.to_string())
            .start()
            .await?;
        let started = Instant::now();
        for i in 0..WORKERS {
            cluster.add_worker_with(&["--label", &format!("slot={i}"), "--slots", "8"])?;
        }
        cluster.wait_for_workers(WORKERS, Duration::from_secs(180)).await?;
        eprintln!("{WORKERS} workers joined in {:?}", started.elapsed());
        let client = cluster.client().await?;
        // Agent a{i} runs on worker i (label slot=i) and may call the agents of two rounds:
        // the one half the ring away, and another spread by a permutation (7i + 3 mod 200:
        // never itself).
        let half = |i: usize| (i + WORKERS / 2 + 1) % WORKERS;
        let spread = |i: usize| (7 * i + 3) % WORKERS;
        for i in 0..WORKERS {
            client
                .register_agent(AgentSpec {
                    name: format!("a{i}"),
                    model: "builtin:echo".into(),
                    tools: vec![format!("a{}", half(i)), format!("a{}", spread(i))],
                    labels: [("slot".to_owned(), i.to_string())].into(),
                    ..Default::default()
                })
                .await?;
        }

        let started = Instant::now();
        round(&client, half).await?;
        eprintln!("{WORKERS} calls half the ring away answered in {:?}", started.elapsed());
        let busiest = cluster.worker_mesh_connections()?;
        ensure!(busiest[0].0 <= 2 * MAX_PEERS, "over the hard bound: {:?}", &busiest[..3]);
        let started = Instant::now();
        round(&client, spread).await?;
        eprintln!("{WORKERS} calls spread around answered in {:?}", started.elapsed());
        // Each caller looked each of its callees up once (a caller has the same callee in
        // both rounds when 7i + 3 = i + 101, mod 200), and no call went through the head.
        let pairs: HashSet<(usize, usize)> =
            (0..WORKERS).flat_map(|i| [(i, half(i)), (i, spread(i))]).collect();
        let status = client.status().await?;
        ensure!(status.calls_relayed == 0, "{} calls went through the head", status.calls_relayed);
        ensure!(
            status.agents_located == pairs.len() as u64,
            "{} lookups for {} pairs",
            status.agents_located,
            pairs.len()
        );

        // Every worker is (back) under its bound: its overlay links and the connections of
        // its last calls, not one per worker.
        let mut last = Vec::new();
        wait_until(Duration::from_secs(30), "a worker stayed over its bound", || {
            last = cluster.worker_mesh_connections().unwrap_or_default();
            let over = last.first().is_none_or(|(n, _)| *n > MAX_PEERS);
            async move { Ok(!over) }
        })
        .await
        .with_context(|| format!("the busiest: {:?}", &last[..last.len().min(3)]))?;
        let total: usize = last.iter().map(|(n, _)| n).sum();
        eprintln!(
            "{WORKERS} workers: at most {} mesh connections each, {:.1} on average",
            last[0].0,
            total as f64 / WORKERS as f64
        );
        cluster.shutdown().await
    })
    .await
    .context("the test ran past its time limit")?
}

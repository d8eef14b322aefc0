//! A2A streaming at scale: N concurrent `SendStreamingMessage` SSE streams (JSON-RPC, A2A 1.0,
//! one HTTP/1.1 connection each) against one head with echo agents on two workers. Reports
//! time to the first event (p50, p99), total time, and the head's memory.
//!
//! `cargo build --release --bins && cargo bench -p fleet-benches --bench a2a [-- --streams 1000]`

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use fleet_client::AgentSpec;
use fleet_testkit::ClusterSandbox;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() -> Result<()> {
    let streams: usize = std::env::args()
        .skip_while(|a| a != "--streams")
        .nth(1)
        .map(|n| n.parse())
        .transpose()
        .context("--streams takes a number")?
        .unwrap_or(1000);
    let cluster = ClusterSandbox::builder().workers(2).start().await?;
    let client = cluster.client().await?;
    client
        .register_agent(AgentSpec {
            name: "echo".into(),
            model: "builtin:echo".into(),
            ..Default::default()
        })
        .await?;
    let idle = cluster.head_rss_bytes().unwrap_or(0);
    let url = format!("{}/a2a/echo", cluster.url);

    let http: Client<_, Full<bytes::Bytes>> =
        Client::builder(TokioExecutor::new()).pool_max_idle_per_host(streams).build_http();
    let started = Instant::now();
    let mut runs = Vec::with_capacity(streams);
    for i in 0..streams {
        let (http, url) = (http.clone(), url.clone());
        runs.push(tokio::spawn(async move {
            let body = serde_json::json!({
                "jsonrpc": "2.0", "id": i, "method": "SendStreamingMessage",
                "params": {"message": {"messageId": format!("m{i}"), "role": "ROLE_USER",
                           "parts": [{"text": format!("stream {i} of the swarm")}]}},
            });
            let request = http::Request::post(url)
                .header("content-type", "application/json")
                .header("a2a-version", "1.0")
                .header("accept", "text/event-stream")
                .body(Full::new(bytes::Bytes::from(body.to_string())))?;
            let sent = Instant::now();
            let mut response = http.request(request).await?.into_body();
            let mut first = None;
            let mut text = String::new();
            while let Some(frame) = response.frame().await {
                if let Ok(data) = frame?.into_data() {
                    first.get_or_insert_with(|| sent.elapsed());
                    text.push_str(&String::from_utf8_lossy(&data));
                }
            }
            ensure!(text.contains("TASK_STATE_COMPLETED"), "stream {i} did not complete: {text}");
            anyhow::Ok(first.context("no event")?)
        }));
    }
    let mut firsts = Vec::with_capacity(streams);
    let mut peak = 0;
    for run in runs {
        firsts.push(run.await??);
        peak = peak.max(cluster.head_rss_bytes().unwrap_or(0));
    }
    let total = started.elapsed();
    firsts.sort();
    let mib = |b: u64| b as f64 / 1048576.0;
    println!("| measurement | value |");
    println!("|---|---|");
    println!(
        "| concurrent SSE streams completed | {streams} of {streams} in {:.2} s |",
        total.as_secs_f64()
    );
    println!(
        "| time to first event p50 | {:.1} ms |",
        percentile(&firsts, 0.5).as_secs_f64() * 1e3
    );
    println!(
        "| time to first event p99 | {:.1} ms |",
        percentile(&firsts, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "| head RSS idle / highest seen during the run | {:.1} / {:.1} MiB |",
        mib(idle),
        mib(peak)
    );
    cluster.shutdown().await
}

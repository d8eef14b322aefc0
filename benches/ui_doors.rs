//! The doors of web frontends, AG-UI (`/agui/{agent}`) and the AI SDK's chat stream
//! (`/ai-sdk/{agent}`), and of editors, ACP (`fleet acp AGENT` on stdio), against the OpenAI
//! SSE door on one head with echo agents on two workers, in the same run:
//! - time to the first token of a streamed answer, sequential requests, AG-UI's
//!   `TEXT_MESSAGE_CONTENT`, the AI SDK's first `text-delta` and ACP's first
//!   `agent_message_chunk` (a `fleet acp` process, as an editor starts it, its pipes
//!   included) against `/v1/chat/completions`' first content chunk (the four interleaved
//!   request by request, medians per round);
//! - N concurrent AG-UI runs (one HTTP/1.1 connection each): all finish, time to the first
//!   event, and the head's memory.
//!
//! `cargo build --release --bins && cargo bench -p fleet-benches --bench ui_doors [-- --streams 1000]`

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use fleet_client::AgentSpec;
use fleet_testkit::ClusterSandbox;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout};

type Http = Client<HttpConnector, Full<bytes::Bytes>>;

const ROUNDS: usize = 5;
const REQUESTS_PER_ROUND: usize = 200;
/// The answer's first word: its arrival is the first token.
const FIRST_WORD: &str = "alpha";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    percentile(&values, 0.5)
}

/// POSTs `body` to `url` and reads the SSE stream to its end: the time to the first frame,
/// to the first frame holding `marker`, and the whole text.
async fn stream(
    http: &Http,
    url: &str,
    body: &serde_json::Value,
    marker: &str,
) -> Result<(Duration, Duration, String)> {
    let request = http::Request::post(url)
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .body(Full::new(bytes::Bytes::from(body.to_string())))?;
    let sent = Instant::now();
    let mut response = http.request(request).await?.into_body();
    let (mut first, mut marked) = (None, None);
    let mut text = String::new();
    while let Some(frame) = response.frame().await {
        if let Ok(data) = frame?.into_data() {
            first.get_or_insert_with(|| sent.elapsed());
            text.push_str(&String::from_utf8_lossy(&data));
            if marked.is_none() && text.contains(marker) {
                marked = Some(sent.elapsed());
            }
        }
    }
    Ok((first.context("no event")?, marked.context(format!("no {marker}: {text}"))?, text))
}

/// A `fleet acp` process, as an editor holds one.
struct Acp {
    child: tokio::process::Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    next_id: u64,
}

impl Acp {
    async fn start(head: &str, agent: &str) -> Result<Self> {
        let mut child = tokio::process::Command::new(fleet_testkit::binary("fleet")?)
            .args(["acp", agent, "--head", head])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().context("no stdin")?;
        let lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
        let mut acp = Self { child, stdin, lines, next_id: 0 };
        acp.call("initialize", json!({"protocolVersion": 1}), |_| false).await?;
        Ok(acp)
    }

    /// Sends a request and reads to its answer; the time to the first message `marked` says
    /// is the one waited for.
    async fn call(
        &mut self,
        method: &str,
        params: serde_json::Value,
        marked: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<(serde_json::Value, Option<Duration>)> {
        self.next_id += 1;
        let request =
            json!({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params});
        let sent = Instant::now();
        self.stdin.write_all(format!("{request}\n").as_bytes()).await?;
        let mut mark = None;
        loop {
            let line = self.lines.next_line().await?.context("fleet acp exited")?;
            let message: serde_json::Value = serde_json::from_str(&line)?;
            if mark.is_none() && marked(&message) {
                mark = Some(sent.elapsed());
            }
            if message["id"] == self.next_id {
                ensure!(message.get("error").is_none(), "{method}: {message}");
                return Ok((message, mark));
            }
        }
    }

    /// A prompt in a new session (as the other doors', with no conversation before it); the
    /// time to its first token.
    async fn prompt(&mut self, text: &str) -> Result<Duration> {
        let (answer, _) =
            self.call("session/new", json!({"cwd": "/", "mcpServers": []}), |_| false).await?;
        let session = answer["result"]["sessionId"].clone();
        let params = json!({"sessionId": session, "prompt": [{"type": "text", "text": text}]});
        let first = |m: &serde_json::Value| {
            m["params"]["update"]["content"]["text"]
                .as_str()
                .is_some_and(|t| t.contains(FIRST_WORD))
        };
        let (answer, mark) = self.call("session/prompt", params, first).await?;
        ensure!(answer["result"]["stopReason"] == "end_turn", "an ACP turn did not end: {answer}");
        mark.context("no first token")
    }

    async fn stop(mut self) -> Result<()> {
        drop(self.stdin);
        self.child.wait().await?;
        Ok(())
    }
}

fn agui_input(i: usize, text: &str) -> serde_json::Value {
    json!({
        "threadId": format!("thread-{i}"), "runId": format!("run-{i}"),
        "messages": [{"id": "u1", "role": "user", "content": text}],
        "tools": [], "context": [], "state": {}, "forwardedProps": {},
    })
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
    let http: Http =
        Client::builder(TokioExecutor::new()).pool_max_idle_per_host(streams).build_http();
    let agui = format!("{}/agui/echo", cluster.url);
    let openai = format!("{}/v1/chat/completions", cluster.url);
    let aisdk = format!("{}/ai-sdk/echo", cluster.url);
    let text = format!("{FIRST_WORD} beta gamma delta");

    // First token, sequential, the doors interleaved request by request.
    let mut acp = Acp::start(&cluster.url, "echo").await?;
    let (mut agui_rounds, mut openai_rounds, mut aisdk_rounds, mut acp_rounds) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let (mut a, mut o, mut s, mut e) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..REQUESTS_PER_ROUND {
            let body = agui_input(round * REQUESTS_PER_ROUND + i, &text);
            let (_, first_token, all) = stream(&http, &agui, &body, FIRST_WORD).await?;
            ensure!(all.contains("RUN_FINISHED"), "an AG-UI run did not finish: {all}");
            a.push(first_token);
            let body = json!({"model": "echo", "stream": true,
                              "messages": [{"role": "user", "content": text}]});
            let (_, first_token, all) = stream(&http, &openai, &body, FIRST_WORD).await?;
            ensure!(all.contains("[DONE]"), "an OpenAI stream did not finish: {all}");
            o.push(first_token);
            let body = json!({"id": format!("chat-{i}"), "trigger": "submit-message",
                              "messages": [{"id": "u1", "role": "user",
                                            "parts": [{"type": "text", "text": text}]}]});
            let (_, first_token, all) = stream(&http, &aisdk, &body, FIRST_WORD).await?;
            ensure!(all.contains("\"finish\""), "an AI SDK stream did not finish: {all}");
            s.push(first_token);
            e.push(acp.prompt(&text).await?);
        }
        agui_rounds.push(median(a));
        openai_rounds.push(median(o));
        aisdk_rounds.push(median(s));
        acp_rounds.push(median(e));
    }
    acp.stop().await?;
    let us = |d: &Duration| d.as_secs_f64() * 1e6;
    let rounds = |v: &[Duration]| v.iter().map(|d| format!("{:.0}", us(d))).collect::<Vec<_>>();
    let (agui_p50, openai_p50) = (median(agui_rounds.clone()), median(openai_rounds.clone()));
    let (aisdk_p50, acp_p50) = (median(aisdk_rounds.clone()), median(acp_rounds.clone()));

    // N concurrent runs.
    let idle = cluster.head_rss_bytes().unwrap_or(0);
    let started = Instant::now();
    let mut runs = Vec::with_capacity(streams);
    for i in 0..streams {
        let (http, url) = (http.clone(), agui.clone());
        runs.push(tokio::spawn(async move {
            let body = agui_input(i, &format!("stream {i} of the swarm"));
            let (first, _, all) = stream(&http, &url, &body, "RUN_FINISHED").await?;
            ensure!(all.contains("\"outcome\":{\"type\":\"success\"}"), "run {i}: {all}");
            anyhow::Ok(first)
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
    println!("| measurement | value | per round (µs) |");
    println!("|---|---|---|");
    println!(
        "| first token, AG-UI (`TEXT_MESSAGE_CONTENT`), p50 | {:.0} µs | {:?} |",
        us(&agui_p50),
        rounds(&agui_rounds)
    );
    println!(
        "| first token, OpenAI SSE (`/v1/chat/completions`), p50 | {:.0} µs | {:?} |",
        us(&openai_p50),
        rounds(&openai_rounds)
    );
    println!(
        "| first token, AI SDK (`text-delta`), p50 | {:.0} µs | {:?} |",
        us(&aisdk_p50),
        rounds(&aisdk_rounds)
    );
    println!(
        "| first token, ACP (`agent_message_chunk`, `fleet acp` on pipes), p50 | {:.0} µs | {:?} |",
        us(&acp_p50),
        rounds(&acp_rounds)
    );
    println!("| AG-UI − OpenAI | {:+.0} µs | – |", us(&agui_p50) - us(&openai_p50));
    println!("| AI SDK − OpenAI | {:+.0} µs | – |", us(&aisdk_p50) - us(&openai_p50));
    println!("| ACP − OpenAI | {:+.0} µs | – |", us(&acp_p50) - us(&openai_p50));
    println!(
        "| concurrent AG-UI runs finished | {streams} of {streams} in {:.2} s | – |",
        total.as_secs_f64()
    );
    println!(
        "| time to first event p50 / p99 | {:.1} / {:.1} ms | – |",
        percentile(&firsts, 0.5).as_secs_f64() * 1e3,
        percentile(&firsts, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "| head RSS idle / highest seen during the run | {:.1} / {:.1} MiB (+{:.1}) | – |",
        mib(idle),
        mib(peak),
        mib(peak.saturating_sub(idle))
    );
    cluster.shutdown().await
}

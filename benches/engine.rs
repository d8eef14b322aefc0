//! The inference engine on the Qwen2.5-0.5B-shaped random-weight files that
//! ../shared/tools/llm-anchor writes (the same files llama.cpp is measured on):
//! single-stream decode, aggregate decode with 8 and 32 sequences batched, and prefill of a
//! 512-token prompt, per model file.
//!
//! `cargo bench -p fleet-benches --bench engine -- [--quick] MODEL...` where each MODEL is a
//! GGUF file or a Hugging Face folder; `scripts/bench-engine.sh` makes the files and runs
//! this side by side with llama.cpp.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Device;
use fleet_inference::transformer::load::{load_gguf, load_hf_dir};
use fleet_inference::transformer::{Decoder, SequenceCache, StepInput, greedy};

fn load(path: &Path) -> Result<Decoder> {
    if path.is_dir() {
        Ok(load_hf_dir(path, &Device::Cpu, None)?)
    } else {
        Ok(load_gguf(path, &Device::Cpu)?.0)
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Aggregate decode tokens/s of `batch` sequences (each after a 16-token prompt).
fn decode(model: &Decoder, batch: usize, steps: usize) -> Result<f64> {
    let mut caches: Vec<SequenceCache> = (0..batch).map(|_| model.new_cache(16 + steps)).collect();
    let prompt: Vec<u32> = (0..16).collect();
    let mut last = Vec::with_capacity(batch);
    for cache in &mut caches {
        last.push(greedy(&model.step(&mut [StepInput { tokens: &prompt, cache }])?)?[0]);
    }
    let started = Instant::now();
    for _ in 0..steps {
        let feeds: Vec<[u32; 1]> = last.iter().map(|&t| [t]).collect();
        let mut inputs: Vec<StepInput<'_>> = caches
            .iter_mut()
            .zip(&feeds)
            .map(|(cache, tokens)| StepInput { tokens, cache })
            .collect();
        last = greedy(&model.step(&mut inputs)?)?;
    }
    Ok((batch * steps) as f64 / started.elapsed().as_secs_f64())
}

fn prefill(model: &Decoder, tokens: usize) -> Result<f64> {
    let prompt: Vec<u32> = (0..tokens as u32).map(|t| t % 1000).collect();
    let mut cache = model.new_cache(tokens);
    let started = Instant::now();
    model.step(&mut [StepInput { tokens: &prompt, cache: &mut cache }])?;
    Ok(tokens as f64 / started.elapsed().as_secs_f64())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let quick = args.iter().any(|a| a == "--quick");
    let models: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    anyhow::ensure!(
        !models.is_empty(),
        "name model files: cargo bench --bench engine -- MODEL... (scripts/bench-engine.sh makes them)"
    );
    let repeats = if quick { 1 } else { 3 };
    println!("| model | measurement (2 threads) | median tokens/s | runs |");
    println!("|---|---|---|---|");
    for path in models {
        let name = Path::new(path).file_name().map(|n| n.to_string_lossy().into_owned());
        let name = name.unwrap_or_else(|| path.clone());
        let model = load(Path::new(path)).with_context(|| format!("loading {path}"))?;
        decode(&model, 1, 2)?; // warm-up
        for (batch, steps) in [(1, 64), (8, 16), (32, 8)] {
            let runs: Vec<f64> =
                (0..repeats).map(|_| decode(&model, batch, steps)).collect::<Result<_>>()?;
            println!(
                "| {name} | decode, {batch} sequences (aggregate) | {:.1} | {runs:.1?} |",
                median(runs.clone())
            );
        }
        let runs: Vec<f64> = (0..repeats).map(|_| prefill(&model, 512)).collect::<Result<_>>()?;
        println!(
            "| {name} | prefill, 512-token prompt | {:.1} | {runs:.1?} |",
            median(runs.clone())
        );
    }
    Ok(())
}

//! The inference engine on the Qwen2.5-0.5B-shaped random-weight files that
//! ../shared/tools/llm-anchor writes (the same files llama.cpp is measured on):
//! single-stream decode, aggregate decode with 8 and 32 sequences batched, and prefill of a
//! 512-token prompt, per model file.
//!
//! `cargo bench -p fleet-benches --bench engine -- [--quick] [--single] MODEL...` where each
//! MODEL is a GGUF file or a Hugging Face folder (`--single`: the single-stream decode alone,
//! for profiling it); `scripts/bench-engine.sh` makes the files and runs this side by side
//! with llama.cpp.

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

/// Random prompt ids below `vocab` (fixed seed), like llama.cpp's bench.
fn prompt(len: usize, vocab: usize, seed: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed * 97)) % vocab as u32)
        .collect()
}

/// Aggregate decode tokens/s of `batch` sequences, each after its own 32-token prompt
/// (untimed); greedy, one forward step per token of every sequence.
fn decode(model: &Decoder, batch: usize, steps: usize) -> Result<f64> {
    let vocab = model.config().vocab_size.min(150_000);
    let mut caches: Vec<SequenceCache> = (0..batch).map(|_| model.new_cache(32 + steps)).collect();
    let mut last = Vec::with_capacity(batch);
    for (i, cache) in caches.iter_mut().enumerate() {
        let prompt = prompt(32, vocab, i as u32);
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

/// Tokens/s of one `tokens`-long prompt in one step (logits of its last token only).
fn prefill(model: &Decoder, tokens: usize) -> Result<f64> {
    let prompt = prompt(tokens, model.config().vocab_size.min(150_000), 7);
    let mut cache = model.new_cache(tokens);
    let started = Instant::now();
    model.step(&mut [StepInput { tokens: &prompt, cache: &mut cache }])?;
    Ok(tokens as f64 / started.elapsed().as_secs_f64())
}

/// One warm-up, then the median of `reps` runs.
fn measure(reps: usize, mut run: impl FnMut() -> Result<f64>) -> Result<(f64, Vec<f64>)> {
    run()?;
    let runs: Vec<f64> = (0..reps).map(|_| run()).collect::<Result<_>>()?;
    Ok((median(runs.clone()), runs))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let quick = args.iter().any(|a| a == "--quick");
    let single_only = args.iter().any(|a| a == "--single");
    let json_path = args.iter().position(|a| a == "--json").and_then(|i| args.get(i + 1)).cloned();
    let models: Vec<&String> =
        args.iter().filter(|a| !a.starts_with("--") && Some(*a) != json_path.as_ref()).collect();
    anyhow::ensure!(
        !models.is_empty(),
        "name model files: cargo bench --bench engine -- [--quick] [--json OUT] MODEL... (scripts/bench-engine.sh makes them)"
    );
    let reps = if quick { 1 } else { 3 };
    let (decode_tokens, batched_steps) = if quick { (32, 8) } else { (128, 32) };
    let mut results = Vec::new();
    println!("| model | measurement (2 threads) | median tokens/s | runs |");
    println!("|---|---|---|---|");
    for path in models {
        let name = Path::new(path).file_name().map(|n| n.to_string_lossy().into_owned());
        let name = name.unwrap_or_else(|| path.clone());
        let model = load(Path::new(path)).with_context(|| format!("loading {path}"))?;
        let row = |what: &str, (m, runs): &(f64, Vec<f64>)| {
            println!("| {name} | {what} | {m:.1} | {runs:.1?} |");
        };
        if single_only {
            let single = measure(reps, || decode(&model, 1, 4 * decode_tokens))?;
            row(&format!("decode, 1 sequence, {} tokens", 4 * decode_tokens), &single);
            continue;
        }
        let prefill = measure(reps, || prefill(&model, 512))?;
        row("prefill, 512-token prompt", &prefill);
        let single = measure(reps, || decode(&model, 1, decode_tokens))?;
        row(&format!("decode, 1 sequence, {decode_tokens} tokens"), &single);
        let mut batched = Vec::new();
        for batch in [8, 32] {
            let r = measure(reps, || decode(&model, batch, batched_steps))?;
            row(&format!("decode, {batch} sequences (aggregate)"), &r);
            batched.push(
                serde_json::json!({"batch": batch, "aggregate_tokens_per_s": r.0, "runs": r.1}),
            );
        }
        results.push(serde_json::json!({
            "model": path,
            "weight_bytes": model.weight_bytes(),
            "prefill": {"tokens_per_s": prefill.0, "runs": prefill.1},
            "decode": {"tokens_per_s": single.0, "runs": single.1},
            "batched": batched,
        }));
    }
    if let Some(path) = json_path {
        std::fs::write(&path, serde_json::to_string_pretty(&results)?)?;
    }
    Ok(())
}

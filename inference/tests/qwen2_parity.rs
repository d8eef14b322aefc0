//! The engine's Qwen2 forward pass against candle-transformers' on the same weights: equal
//! logits for one sequence, and identical greedy tokens for sequences batched together at
//! different steps (with chunked prefill) as when each runs alone.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::qwen2 as reference;
use fleet_inference::transformer::qwen2::{Qwen2, Qwen2Config, greedy};
use fleet_inference::transformer::{SequenceCache, StepInput, fixture};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn fixture_dir(name: &str, tied: bool) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("fleet-qwen2-{name}-{}", std::process::id()));
    fixture::write_qwen2(&dir, &fixture::tiny_qwen2_config(tied))?;
    Ok(dir)
}

fn load(dir: &Path) -> Result<(Qwen2, reference::ModelForCausalLM)> {
    let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)?;
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let text = std::fs::read_to_string(dir.join("config.json"))?;
    let ours: Qwen2Config = serde_json::from_str(&text)?;
    let theirs: reference::Config = serde_json::from_str(&text)?;
    Ok((Qwen2::new(&ours, vb.clone())?, reference::ModelForCausalLM::new(&theirs, vb)?))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

fn step_one(model: &Qwen2, tokens: &[u32], cache: &mut SequenceCache) -> Result<Tensor> {
    Ok(model.step(&mut [StepInput { tokens, cache }])?)
}

#[test]
fn one_sequence_matches_the_reference_logits() -> Result<()> {
    for tied in [true, false] {
        let dir = fixture_dir("logits", tied)?;
        let (ours, mut theirs) = load(&dir)?;
        let prompt: Vec<u32> = vec![3, 17, 42, 99, 7, 250, 1];
        let mut cache = ours.new_cache();
        let mut logits = step_one(&ours, &prompt, &mut cache)?;
        let input = Tensor::new(prompt.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        let mut expected = theirs.forward(&input, 0)?.squeeze(1)?;
        for step in 0..6 {
            let diff = max_abs_diff(&logits, &expected)?;
            assert!(diff <= 1e-4, "tied={tied} step {step}: max abs diff {diff}");
            let next = greedy(&logits)?[0];
            let position = cache.len();
            logits = step_one(&ours, &[next], &mut cache)?;
            expected =
                theirs.forward(&Tensor::new(&[[next]], &Device::Cpu)?, position)?.squeeze(1)?;
        }
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

/// Greedy tokens of one sequence generated alone.
fn alone(model: &Qwen2, prompt: &[u32], n: usize) -> Result<Vec<u32>> {
    let mut cache = model.new_cache();
    let mut out = Vec::with_capacity(n);
    let mut next = greedy(&step_one(model, prompt, &mut cache)?)?[0];
    while out.len() < n {
        out.push(next);
        next = greedy(&step_one(model, &[next], &mut cache)?)?[0];
    }
    Ok(out)
}

struct Running {
    prompt: Vec<u32>,
    fed: usize,
    cache: SequenceCache,
    out: Vec<u32>,
}

#[test]
fn sequences_batched_at_different_steps_produce_their_solo_tokens() -> Result<()> {
    let dir = fixture_dir("batch", true)?;
    let (model, mut theirs) = load(&dir)?;
    const NEW: usize = 12;
    const CHUNK: usize = 3;
    let prompts: Vec<Vec<u32>> =
        (0..8u32).map(|i| (0..2 + 2 * i).map(|j| (i * 31 + j * 7 + 5) % 256).collect()).collect();
    let solo: Vec<Vec<u32>> =
        prompts.iter().map(|p| alone(&model, p, NEW)).collect::<Result<_>>()?;

    // The reference agrees with the engine alone.
    for (prompt, tokens) in prompts.iter().zip(&solo).take(2) {
        theirs.clear_kv_cache();
        let mut input = Tensor::new(prompt.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        let mut position = 0;
        for &expected in tokens {
            let logits = theirs.forward(&input, position)?.squeeze(1)?;
            position += input.dim(1)?;
            let next = greedy(&logits)?[0];
            assert_eq!(next, expected);
            input = Tensor::new(&[[next]], &Device::Cpu)?;
        }
    }

    // Continuous batching: sequence s joins at step s; prompts are fed in chunks of 3 while
    // the others decode; finished sequences leave.
    let mut waiting: Vec<(usize, Vec<u32>)> = prompts.iter().cloned().enumerate().rev().collect();
    let mut running: Vec<(usize, Running)> = Vec::new();
    let mut done: Vec<Option<Vec<u32>>> = vec![None; prompts.len()];
    let mut step = 0;
    while !waiting.is_empty() || !running.is_empty() {
        if let Some((index, prompt)) = waiting.pop() {
            running.push((
                index,
                Running { prompt, fed: 0, cache: model.new_cache(), out: Vec::new() },
            ));
        }
        let feeds: Vec<Vec<u32>> = running
            .iter()
            .map(|(_, r)| {
                if r.fed < r.prompt.len() {
                    r.prompt[r.fed..(r.fed + CHUNK).min(r.prompt.len())].to_vec()
                } else {
                    vec![*r.out.last().unwrap_or(&0)]
                }
            })
            .collect();
        let mut inputs: Vec<StepInput<'_>> = running
            .iter_mut()
            .zip(&feeds)
            .map(|((_, r), tokens)| StepInput { tokens, cache: &mut r.cache })
            .collect();
        let logits = model.step(&mut inputs)?;
        let next = greedy(&logits)?;
        for ((_, r), (tokens, token)) in running.iter_mut().zip(feeds.iter().zip(next)) {
            let prefilling = r.fed < r.prompt.len();
            r.fed += if prefilling { tokens.len() } else { 0 };
            // A token counts once the whole prompt has been seen.
            if r.fed == r.prompt.len() && (!prefilling || r.fed == r.prompt.len()) {
                r.out.push(token);
            }
        }
        running.retain_mut(|(index, r)| {
            if r.out.len() == NEW {
                done[*index] = Some(std::mem::take(&mut r.out));
                false
            } else {
                true
            }
        });
        step += 1;
        assert!(step < 200, "the batch never finished");
    }
    for (i, (batched, alone)) in done.iter().zip(&solo).enumerate() {
        assert_eq!(batched.as_ref(), Some(alone), "sequence {i} differs when batched");
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

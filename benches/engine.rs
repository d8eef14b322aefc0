//! The inference engine on a Qwen2.5-0.5B-shaped model with random f32 weights (built in
//! memory; same shapes as ../shared/tools/llm-anchor's model): single-stream decode,
//! aggregate decode with 8 and 32 sequences batched, and prefill of a 512-token prompt.
//!
//! `cargo bench -p fleet-benches --bench engine [-- --quick]`
//!
//! F32 only for now: the quantized (Q8_0, Q4_K_M) weights the targets name come with
//! the GGUF loader, so these figures are a baseline of the batching, not the peer comparison.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use fleet_inference::transformer::qwen2::{Qwen2, Qwen2Config, greedy};
use fleet_inference::transformer::{SequenceCache, StepInput};

fn qwen25_05b() -> Qwen2Config {
    Qwen2Config {
        vocab_size: 151_936,
        hidden_size: 896,
        intermediate_size: 4864,
        num_hidden_layers: 24,
        num_attention_heads: 14,
        num_key_value_heads: 2,
        max_position_embeddings: 4096,
        rope_theta: 1_000_000.0,
        rms_norm_eps: 1e-6,
        tie_word_embeddings: true,
    }
}

fn random_model(cfg: &Qwen2Config) -> Result<Qwen2> {
    let d = &Device::Cpu;
    let (h, hd, inter) = (cfg.hidden_size, cfg.head_dim(), cfg.intermediate_size);
    let (q, kv) = (cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd);
    let r = |shape: &[usize]| Tensor::randn(0f32, 0.02, shape, d);
    let mut t: HashMap<String, Tensor> = HashMap::new();
    t.insert("model.embed_tokens.weight".into(), r(&[cfg.vocab_size, h])?);
    t.insert("model.norm.weight".into(), Tensor::ones(h, DType::F32, d)?);
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        t.insert(format!("{p}.input_layernorm.weight"), Tensor::ones(h, DType::F32, d)?);
        t.insert(format!("{p}.post_attention_layernorm.weight"), Tensor::ones(h, DType::F32, d)?);
        for (n, o, i_) in [("q_proj", q, h), ("k_proj", kv, h), ("v_proj", kv, h), ("o_proj", h, q)]
        {
            t.insert(format!("{p}.self_attn.{n}.weight"), r(&[o, i_])?);
            if n != "o_proj" {
                t.insert(format!("{p}.self_attn.{n}.bias"), r(&[o])?);
            }
        }
        for (n, o, i_) in [("gate_proj", inter, h), ("up_proj", inter, h), ("down_proj", h, inter)]
        {
            t.insert(format!("{p}.mlp.{n}.weight"), r(&[o, i_])?);
        }
    }
    Ok(Qwen2::new(cfg, VarBuilder::from_tensors(t, DType::F32, d))?)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Aggregate decode tokens/s of `batch` sequences (each after a 16-token prompt).
fn decode(model: &Qwen2, batch: usize, steps: usize) -> Result<f64> {
    let mut caches: Vec<SequenceCache> = (0..batch).map(|_| model.new_cache()).collect();
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

fn prefill(model: &Qwen2, tokens: usize) -> Result<f64> {
    let prompt: Vec<u32> = (0..tokens as u32).map(|t| t % 1000).collect();
    let mut cache = model.new_cache();
    let started = Instant::now();
    model.step(&mut [StepInput { tokens: &prompt, cache: &mut cache }])?;
    Ok(tokens as f64 / started.elapsed().as_secs_f64())
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let repeats = if quick { 1 } else { 3 };
    let model = random_model(&qwen25_05b())?;
    decode(&model, 1, 2)?; // warm-up
    println!("| measurement (Qwen2.5-0.5B shapes, f32, 2 threads) | median tokens/s | runs |");
    println!("|---|---|---|");
    for (batch, steps) in [(1, 16), (8, 8), (32, 4)] {
        let runs: Vec<f64> =
            (0..repeats).map(|_| decode(&model, batch, steps)).collect::<Result<_>>()?;
        println!(
            "| decode, {batch} sequences (aggregate) | {:.1} | {runs:.1?} |",
            median(runs.clone())
        );
    }
    let runs: Vec<f64> = (0..repeats).map(|_| prefill(&model, 512)).collect::<Result<_>>()?;
    println!("| prefill, 512-token prompt | {:.1} | {runs:.1?} |", median(runs.clone()));
    Ok(())
}

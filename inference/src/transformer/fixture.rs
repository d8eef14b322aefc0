//! Tiny random-weight models written to disk in the Hugging Face layout, so that tests and
//! benchmarks run real model code without downloading anything.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor};

use super::qwen2::Qwen2Config;

/// A small Qwen2 shape: 2 layers, 4 heads over 2 KV heads, hidden 64, vocab 256.
pub fn tiny_qwen2_config(tie_word_embeddings: bool) -> Qwen2Config {
    Qwen2Config {
        vocab_size: 256,
        hidden_size: 64,
        intermediate_size: 160,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 512,
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-6,
        tie_word_embeddings,
    }
}

fn random(shape: &[usize], scale: f32, device: &Device) -> Result<Tensor> {
    Tensor::randn(0f32, scale, shape, device)
}

/// Writes `config.json` and `model.safetensors` with random weights for `cfg` into `dir`.
pub fn write_qwen2(dir: &Path, cfg: &Qwen2Config) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let config = serde_json::json!({
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "max_position_embeddings": cfg.max_position_embeddings,
        "max_window_layers": cfg.num_hidden_layers,
        "sliding_window": cfg.max_position_embeddings,
        "use_sliding_window": false,
        "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "hidden_act": "silu",
        "torch_dtype": "float32",
    });
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config)?)?;
    let tensors = qwen2_weights(cfg).map_err(std::io::Error::other)?;
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))
        .map_err(std::io::Error::other)
}

fn qwen2_weights(cfg: &Qwen2Config) -> Result<HashMap<String, Tensor>> {
    let d = &Device::Cpu;
    let (h, hd, inter) = (cfg.hidden_size, cfg.head_dim(), cfg.intermediate_size);
    let (q, kv) = (cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd);
    let mut t = HashMap::new();
    let scale = 1.0 / (h as f32).sqrt();
    t.insert("model.embed_tokens.weight".to_owned(), random(&[cfg.vocab_size, h], 1.0, d)?);
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let norm = || Tensor::ones(h, DType::F32, d)? + random(&[h], 0.1, d)?;
        t.insert(format!("{p}.input_layernorm.weight"), norm()?);
        t.insert(format!("{p}.post_attention_layernorm.weight"), norm()?);
        for (name, out, inp) in
            [("q_proj", q, h), ("k_proj", kv, h), ("v_proj", kv, h), ("o_proj", h, q)]
        {
            t.insert(format!("{p}.self_attn.{name}.weight"), random(&[out, inp], scale, d)?);
            if name != "o_proj" {
                t.insert(format!("{p}.self_attn.{name}.bias"), random(&[out], 0.1, d)?);
            }
        }
        for (name, out, inp) in
            [("gate_proj", inter, h), ("up_proj", inter, h), ("down_proj", h, inter)]
        {
            t.insert(
                format!("{p}.mlp.{name}.weight"),
                random(&[out, inp], 1.0 / (inp as f32).sqrt(), d)?,
            );
        }
    }
    t.insert(
        "model.norm.weight".to_owned(),
        (Tensor::ones(h, DType::F32, d)? + random(&[h], 0.1, d)?)?,
    );
    if !cfg.tie_word_embeddings {
        t.insert("lm_head.weight".to_owned(), random(&[cfg.vocab_size, h], scale, d)?);
    }
    Ok(t)
}

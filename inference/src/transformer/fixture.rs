//! Tiny random-weight models of every family, written to disk as a Hugging Face folder and as
//! GGUF files (any type candle quantizes, or IQ4_NL/IQ4_XS/MXFP4) holding the same weights, so
//! tests and benchmarks run real model code without downloading anything; and [`noise`], the
//! same pseudo-random test data on every run.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{D, DType, Device, Result, Tensor};

use super::config::{
    Activation, DecoderConfig, Experts, Family, QkNorm, Recipe, RopeConfig, RopeScaling, ShortConv,
    SlidingWindow,
};
use super::gguf::{self, RawTensor, Transcoded};
use super::weights::Part;

/// `len` deterministic pseudo-random values in [-scale, scale) (xorshift64 from `seed`):
/// test data that is the same on every run and machine, so a failure can be replayed.
pub fn noise(len: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// A small model: 2 layers, 4 heads over 2 KV heads, hidden 64, vocab 384. Qwen3 and Gemma
/// get an explicit head_dim that is not hidden / heads, as their real models do; Gemma's
/// first layer slides over a window of 6 positions, its second is global. The mixtures of
/// experts have 8 experts 48 wide, 2 per token (Qwen2-MoE: and a shared one 96 wide).
/// Granite's four multipliers are set off 1; SmolLM3 has 4 layers, so that its last one is
/// not rotated. gpt-oss has its biases, sinks, window (6 positions, first layer) and YaRN
/// (gpt-oss's own: 32 over 4,096 positions) on every layer, and experts as Qwen3-MoE's.
pub fn tiny_config(family: Family, tie_word_embeddings: bool) -> DecoderConfig {
    let head_dim = match family {
        Family::Qwen3 | Family::Qwen3Moe | Family::Gemma2 | Family::Gemma3 => 32,
        _ => 16,
    };
    let rope = RopeConfig {
        theta: 10_000.0,
        dims: head_dim,
        interleaved: false,
        scaling: RopeScaling::None,
    };
    let rope = if family == Family::GptOss {
        let scaling = RopeScaling::Yarn {
            factor: 32.0,
            original_max_positions: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attn_factor: 1.0,
        };
        RopeConfig { scaling, ..rope }
    } else {
        rope
    };
    let recipe = match family {
        Family::Gemma2 | Family::Gemma3 => {
            let gemma3 = family == Family::Gemma3;
            Recipe {
                qk_norm: if gemma3 { QkNorm::PerHead } else { QkNorm::Off },
                post_norms: true,
                activation: Activation::GeluTanh,
                embed_scale: Some(8.0),
                attn_softcap: (!gemma3).then_some(50.0),
                final_softcap: (!gemma3).then_some(30.0),
                sliding_window: Some(SlidingWindow { size: 6, pattern: 2, rope: rope.clone() }),
                ..Recipe::plain(head_dim)
            }
        }
        Family::Qwen3Moe | Family::Qwen2Moe => {
            let qwen3 = family == Family::Qwen3Moe;
            let experts = Experts {
                count: 8,
                used: 2,
                ff: 48,
                renormalize: qwen3,
                shared_ff: (!qwen3).then_some(96),
                biases: false,
            };
            let qk_norm = if qwen3 { QkNorm::PerHead } else { QkNorm::Off };
            Recipe { qk_norm, experts: Some(experts), ..Recipe::plain(head_dim) }
        }
        Family::Granite => Recipe {
            embed_scale: Some(2.0),
            residual_scale: Some(0.5),
            query_scale: 1.0 / head_dim as f32,
            logit_scale: Some(0.8),
            ..Recipe::plain(head_dim)
        },
        Family::Olmo2 => Recipe {
            qk_norm: QkNorm::Whole,
            pre_norms: false,
            post_norms: true,
            ..Recipe::plain(head_dim)
        },
        Family::SmolLm3 => Recipe { unrotated_every: Some(4), ..Recipe::plain(head_dim) },
        Family::GptOss => Recipe {
            activation: Activation::SwiGluOai,
            sliding_window: Some(SlidingWindow { size: 6, pattern: 2, rope: rope.clone() }),
            experts: Some(Experts {
                count: 8,
                used: 2,
                ff: 48,
                renormalize: true,
                shared_ff: None,
                biases: true,
            }),
            out_bias: true,
            attn_sinks: true,
            ..Recipe::plain(head_dim)
        },
        Family::Qwen3 => Recipe { qk_norm: QkNorm::PerHead, ..Recipe::plain(head_dim) },
        // Convolution, attention, convolution, attention.
        Family::Lfm2 => Recipe {
            qk_norm: QkNorm::PerHead,
            short_conv: Some(ShortConv { l_cache: 3, layers: vec![true, false, true, false] }),
            ..Recipe::plain(head_dim)
        },
        _ => Recipe::plain(head_dim),
    };
    // Gemma 3's global layers rotate by another base than its window layers.
    let rope =
        if family == Family::Gemma3 { RopeConfig { theta: 1_000_000.0, ..rope } } else { rope };
    DecoderConfig {
        family,
        vocab_size: 384,
        hidden_size: 64,
        intermediate_size: 160,
        num_layers: if matches!(family, Family::SmolLm3 | Family::Lfm2) { 4 } else { 2 },
        num_heads: 4,
        num_kv_heads: 2,
        head_dim,
        max_positions: 512,
        rms_norm_eps: 1e-6,
        rope,
        tie_word_embeddings,
        qkv_bias: matches!(family, Family::Qwen2 | Family::Qwen2Moe | Family::GptOss),
        recipe,
    }
}

/// Mixtral's shape of a Llama model: `cfg`'s MLP becomes `count` experts as wide, `used` per
/// token, their weights renormalized.
pub fn with_experts(cfg: DecoderConfig, count: usize, used: usize) -> DecoderConfig {
    let experts = Experts {
        count,
        used,
        ff: cfg.intermediate_size,
        renormalize: true,
        shared_ff: None,
        biases: false,
    };
    DecoderConfig { recipe: Recipe { experts: Some(experts), ..cfg.recipe.clone() }, ..cfg }
}

/// OLMo 3's shape of an OLMo 2 model: `cfg`'s first layer of each `pattern` (and all but
/// the last) slides over a window of `size` positions.
pub fn with_window(cfg: DecoderConfig, size: usize, pattern: usize) -> DecoderConfig {
    let window = SlidingWindow { size, pattern, rope: cfg.rope.clone() };
    DecoderConfig { recipe: Recipe { sliding_window: Some(window), ..cfg.recipe.clone() }, ..cfg }
}

/// A small model whose every matrix can be stored in K-quants (inputs a multiple of 256).
pub fn quantizable_config(family: Family) -> DecoderConfig {
    let tiny = tiny_config(family, false);
    let mut recipe = tiny.recipe.clone();
    recipe.query_scale = if family == Family::Granite { 1.0 / 64.0 } else { 1.0 / 8.0 };
    recipe.embed_scale = recipe.embed_scale.map(|_| 16.0);
    if let Some(w) = &mut recipe.sliding_window {
        w.rope.dims = 64;
    }
    if let Some(e) = &mut recipe.experts {
        e.ff = 256;
        e.shared_ff = e.shared_ff.map(|_| 256);
    }
    DecoderConfig {
        hidden_size: 256,
        intermediate_size: 512,
        head_dim: 64,
        rope: RopeConfig { dims: 64, ..tiny.rope.clone() },
        recipe,
        ..tiny
    }
}

/// Every weight of `cfg` with its shape: (part, is a bias, shape).
fn shapes(cfg: &DecoderConfig) -> Vec<(Part, bool, Vec<usize>)> {
    let (h, hd, inter) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
    let (q, kv) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
    let mut s = vec![(Part::Embed, false, vec![cfg.vocab_size, h])];
    for i in 0..cfg.num_layers {
        if cfg.recipe.pre_norms {
            s.push((Part::AttnNorm(i), false, vec![h]));
        }
        if let Some(conv) = cfg.recipe.short_conv.as_ref().filter(|_| cfg.convolves(i)) {
            s.push((Part::ConvIn(i), false, vec![3 * h, h]));
            s.push((Part::Conv(i), false, vec![h, conv.l_cache]));
            s.push((Part::ConvOut(i), false, vec![h, h]));
        } else if cfg.family == Family::Phi3 {
            s.push((Part::Qkv(i), false, vec![q + 2 * kv, h]));
        } else {
            for (part, out) in [(Part::Q(i), q), (Part::K(i), kv), (Part::V(i), kv)] {
                s.push((part, false, vec![out, h]));
                if cfg.qkv_bias {
                    s.push((part, true, vec![out]));
                }
            }
        }
        match cfg.qk_norm() {
            _ if cfg.convolves(i) => {}
            QkNorm::Off => {}
            QkNorm::PerHead => {
                s.push((Part::QNorm(i), false, vec![hd]));
                s.push((Part::KNorm(i), false, vec![hd]));
            }
            QkNorm::Whole => {
                s.push((Part::QNorm(i), false, vec![q]));
                s.push((Part::KNorm(i), false, vec![kv]));
            }
        }
        if !cfg.convolves(i) {
            s.push((Part::O(i), false, vec![h, q]));
        }
        if cfg.recipe.out_bias {
            s.push((Part::O(i), true, vec![h]));
        }
        if cfg.recipe.attn_sinks {
            s.push((Part::Sinks(i), false, vec![cfg.num_heads]));
        }
        if cfg.recipe.post_norms {
            s.push((Part::PostAttnNorm(i), false, vec![h]));
            s.push((Part::PostMlpNorm(i), false, vec![h]));
        }
        if cfg.recipe.pre_norms {
            s.push((Part::mlp_norm(cfg.family, i), false, vec![h]));
        }
        if let Some(e) = &cfg.recipe.experts {
            s.push((Part::Router(i), false, vec![e.count, h]));
            s.push((Part::ExpertGates(i), false, vec![e.count, e.ff, h]));
            s.push((Part::ExpertUps(i), false, vec![e.count, e.ff, h]));
            s.push((Part::ExpertDowns(i), false, vec![e.count, h, e.ff]));
            if e.biases {
                s.push((Part::Router(i), true, vec![e.count]));
                s.push((Part::ExpertGates(i), true, vec![e.count, e.ff]));
                s.push((Part::ExpertUps(i), true, vec![e.count, e.ff]));
                s.push((Part::ExpertDowns(i), true, vec![e.count, h]));
            }
            if let Some(ff) = e.shared_ff {
                s.push((Part::SharedRouter(i), false, vec![h]));
                s.push((Part::SharedGate(i), false, vec![ff, h]));
                s.push((Part::SharedUp(i), false, vec![ff, h]));
                s.push((Part::SharedDown(i), false, vec![h, ff]));
            }
            continue;
        }
        if cfg.family == Family::Phi3 {
            s.push((Part::GateUp(i), false, vec![2 * inter, h]));
        } else {
            s.push((Part::Gate(i), false, vec![inter, h]));
            s.push((Part::Up(i), false, vec![inter, h]));
        }
        s.push((Part::Down(i), false, vec![h, inter]));
    }
    s.push((Part::final_norm(cfg.family), false, vec![h]));
    if !cfg.tie_word_embeddings {
        s.push((Part::LmHead, false, vec![cfg.vocab_size, h]));
    }
    s
}

/// A matrix's inputs (its last dimension; an expert's too).
fn fan_in(shape: &[usize]) -> f32 {
    shape.last().copied().unwrap_or(1) as f32
}

fn is_norm(part: Part) -> bool {
    matches!(
        part,
        Part::AttnNorm(_)
            | Part::MlpNorm(_)
            | Part::Norm
            | Part::EmbedNorm
            | Part::QNorm(_)
            | Part::KNorm(_)
            | Part::PostAttnNorm(_)
            | Part::PostMlpNorm(_)
    )
}

/// Weights by part: (part, is a bias, tensor).
pub type Weights = Vec<(Part, bool, Tensor)>;

/// Random weights for `cfg`, by part (scaled so activations stay in a sane range).
pub fn random_weights(cfg: &DecoderConfig) -> Result<Weights> {
    let d = &Device::Cpu;
    shapes(cfg)
        .into_iter()
        .map(|(part, bias, shape)| {
            let t = if is_norm(part) {
                (Tensor::ones(shape.as_slice(), DType::F32, d)?
                    + Tensor::randn(0f32, 0.1, shape.as_slice(), d)?)?
            } else if bias {
                Tensor::randn(0f32, 0.1, shape.as_slice(), d)?
            } else if part == Part::Embed {
                Tensor::randn(0f32, 1.0, shape.as_slice(), d)?
            } else {
                let fan_in = fan_in(&shape);
                Tensor::randn(0f32, 1.0 / fan_in.sqrt(), shape.as_slice(), d)?
            };
            Ok((part, bias, t))
        })
        .collect()
}

/// Weights like [`random_weights`]' (the same spreads, drawn uniform) from `seed`: the same
/// model on every run and machine, for what must answer alike each time (the Python
/// package's random-weight model, whose answers its tests compare).
pub fn seeded_weights(cfg: &DecoderConfig, seed: u64) -> Result<Weights> {
    let d = &Device::Cpu;
    shapes(cfg)
        .into_iter()
        .zip(1u64..)
        .map(|((part, bias, shape), n)| {
            let len = shape.iter().product();
            // A uniform draw in [-s, s) has the standard deviation s / sqrt(3).
            let draw = |std: f32| {
                let values =
                    noise(len, seed.wrapping_mul(1_000_003).wrapping_add(n), std * 3f32.sqrt());
                Tensor::from_vec(values, shape.as_slice(), d)
            };
            let t = if is_norm(part) {
                draw(0.1)?.affine(1.0, 1.0)?
            } else if bias {
                draw(0.1)?
            } else if part == Part::Embed {
                draw(1.0)?
            } else {
                draw(1.0 / fan_in(&shape).sqrt())?
            };
            Ok((part, bias, t))
        })
        .collect()
}

fn name(part: Part, bias: bool, gguf: bool) -> String {
    let base = if gguf { part.gguf_name() } else { part.hf_name() };
    format!("{base}.{}", if bias { "bias" } else { "weight" })
}

/// The `config.json` Hugging Face (and candle-transformers) read for `cfg`.
pub fn hf_config_json(cfg: &DecoderConfig) -> serde_json::Value {
    let (model_type, architecture) = match cfg.family {
        Family::Qwen2 => ("qwen2", "Qwen2ForCausalLM"),
        Family::Llama => ("llama", "LlamaForCausalLM"),
        Family::Qwen3 => ("qwen3", "Qwen3ForCausalLM"),
        Family::Phi3 => ("phi3", "Phi3ForCausalLM"),
        Family::Gemma2 => ("gemma2", "Gemma2ForCausalLM"),
        Family::Gemma3 => ("gemma3_text", "Gemma3ForCausalLM"),
        Family::Qwen3Moe => ("qwen3_moe", "Qwen3MoeForCausalLM"),
        Family::Qwen2Moe => ("qwen2_moe", "Qwen2MoeForCausalLM"),
        Family::Granite => ("granite", "GraniteForCausalLM"),
        Family::Olmo2 => ("olmo2", "Olmo2ForCausalLM"),
        Family::SmolLm3 => ("smollm3", "SmolLM3ForCausalLM"),
        Family::GptOss => ("gpt_oss", "GptOssForCausalLM"),
        Family::Lfm2 => ("lfm2", "Lfm2ForCausalLM"),
    };
    let rope_scaling = match &cfg.rope.scaling {
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_positions,
        } => {
            serde_json::json!({
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max_positions,
            })
        }
        RopeScaling::Yarn { factor, original_max_positions, beta_fast, beta_slow, attn_factor } => {
            serde_json::json!({
                "rope_type": "yarn",
                "factor": factor,
                "original_max_position_embeddings": original_max_positions,
                "beta_fast": beta_fast,
                "beta_slow": beta_slow,
                "attention_factor": attn_factor,
            })
        }
        RopeScaling::LongRope { long, factors, attn_factor } => {
            let (long_set, short_set) = longrope_sets(*long, factors);
            serde_json::json!({
                "type": "longrope",
                "long_factor": long_set,
                "short_factor": short_set,
                "attention_factor": attn_factor,
            })
        }
        _ => serde_json::Value::Null,
    };
    serde_json::json!({
        // At the top level, as Phi-3's files have it.
        "original_max_position_embeddings": original_context(cfg),
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_positions,
        "max_window_layers": cfg.num_layers,
        "sliding_window": cfg.max_positions,
        "use_sliding_window": false,
        "attention_bias": cfg.qkv_bias,
        "rope_theta": cfg.rope.theta,
        "rope_scaling": rope_scaling,
        "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "hidden_act": "silu",
        "torch_dtype": "float32",
    })
}

/// LongRoPE's long and short factor sets for a file whose chosen set is `factors`: the set
/// not chosen is all ones (reading it instead would rotate as plain RoPE).
fn longrope_sets(long: bool, factors: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let ones = vec![1f32; factors.len()];
    if long { (factors.to_vec(), ones) } else { (ones, factors.to_vec()) }
}

/// The original context a fixture states (LongRoPE's, which llama.cpp compares its context
/// size with; make_reference.py runs 256 positions): below for a long file, the model's own
/// otherwise.
fn original_context(cfg: &DecoderConfig) -> usize {
    match &cfg.rope.scaling {
        RopeScaling::LongRope { long: true, .. } => 128,
        _ => cfg.max_positions,
    }
}

/// Writes `config.json` and `model.safetensors` for `cfg` and `weights` into `dir`.
pub fn write_hf(
    dir: &Path,
    cfg: &DecoderConfig,
    weights: &[(Part, bool, Tensor)],
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let config = serde_json::to_string_pretty(&hf_config_json(cfg))?;
    std::fs::write(dir.join("config.json"), config)?;
    let tensors: HashMap<String, Tensor> =
        weights.iter().map(|(p, b, t)| (name(*p, *b, false), t.clone())).collect();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))
        .map_err(std::io::Error::other)
}

/// llama.cpp's converter reorders Llama's Q and K rows so that rotating interleaved pairs
/// equals Hugging Face's rotate-half; GGUF fixtures must do the same.
fn permute_for_interleaved_rope(t: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let out = dims[0];
    let rest: usize = dims[1..].iter().product();
    t.reshape((heads, 2, out / heads / 2, rest))?.transpose(1, 2)?.reshape(dims)
}

/// The blocks a fixture's matrices are written in: a type candle quantizes, or one we
/// transcode at load (written by [`iq4`](super::iq4)'s quantizers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocks {
    Ggml(GgmlDType),
    Transcoded(Transcoded),
}

impl From<GgmlDType> for Blocks {
    fn from(dtype: GgmlDType) -> Self {
        Self::Ggml(dtype)
    }
}

impl From<Transcoded> for Blocks {
    fn from(kind: Transcoded) -> Self {
        Self::Transcoded(kind)
    }
}

impl Blocks {
    fn block_size(self) -> usize {
        match self {
            Self::Ggml(dtype) => dtype.block_size(),
            Self::Transcoded(kind) => kind.block().0,
        }
    }

    /// `t`'s values in these blocks: the GGML type id and the bytes.
    fn encode(self, t: &Tensor) -> Result<(u32, Vec<u8>)> {
        match self {
            Self::Ggml(dtype) => {
                let q = QTensor::quantize(t, dtype)?;
                Ok((gguf::ggml_type_id(dtype), q.data()?.into_owned()))
            }
            Self::Transcoded(kind) => {
                let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let bytes = match kind {
                    Transcoded::Iq4Nl => super::iq4::quantize_nl(&values),
                    Transcoded::Iq4Xs => super::iq4::quantize_xs(&values),
                    Transcoded::Mxfp4 => super::mxfp4::quantize(&values),
                };
                Ok((kind.type_id(), bytes))
            }
        }
    }
}

/// Writes `cfg` and `weights` as a GGUF file: matrices in `blocks` (norms and biases stay
/// F32), llama.cpp's names and metadata keys, plus `extra` metadata (e.g. a tokenizer).
pub fn write_gguf(
    path: &Path,
    cfg: &DecoderConfig,
    weights: &[(Part, bool, Tensor)],
    blocks: impl Into<Blocks>,
    extra: &[(String, Value)],
) -> std::io::Result<()> {
    write_gguf_tensors(path, cfg, weights, blocks.into(), extra).map_err(std::io::Error::other)
}

fn write_gguf_tensors(
    path: &Path,
    cfg: &DecoderConfig,
    weights: &[(Part, bool, Tensor)],
    dtype: Blocks,
    extra: &[(String, Value)],
) -> Result<()> {
    let arch = cfg.family.gguf_name();
    let u = |v: usize| Value::U32(v as u32);
    let mut metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        // Not the architecture's name: llama.cpp sets token attributes by model name (a "phi3"
        // name makes it look up Phi-3's <s>, </s> and <unk>, which the fixture tokenizer lacks).
        ("general.name".into(), Value::String("tiny random model".into())),
        (format!("{arch}.context_length"), u(cfg.max_positions)),
        (format!("{arch}.embedding_length"), u(cfg.hidden_size)),
        (format!("{arch}.block_count"), u(cfg.num_layers)),
        (format!("{arch}.feed_forward_length"), u(cfg.intermediate_size)),
        (format!("{arch}.attention.head_count"), u(cfg.num_heads)),
        (
            format!("{arch}.attention.head_count_kv"),
            match &cfg.recipe.short_conv {
                // Per layer, 0 for a convolution (llama.cpp's LFM2 files).
                Some(conv) => Value::Array(
                    conv.layers.iter().map(|c| u(if *c { 0 } else { cfg.num_kv_heads })).collect(),
                ),
                None => u(cfg.num_kv_heads),
            },
        ),
        (format!("{arch}.attention.key_length"), u(cfg.head_dim)),
        (format!("{arch}.attention.value_length"), u(cfg.head_dim)),
        (format!("{arch}.attention.layer_norm_rms_epsilon"), Value::F32(cfg.rms_norm_eps as f32)),
        (format!("{arch}.rope.freq_base"), Value::F32(cfg.rope.theta as f32)),
        (format!("{arch}.rope.dimension_count"), u(cfg.rope.dims)),
    ];
    let recipe = &cfg.recipe;
    if let Some(conv) = &recipe.short_conv {
        metadata.push((format!("{arch}.shortconv.l_cache"), u(conv.l_cache)));
    }
    if let Some(w) = &recipe.sliding_window {
        metadata.push((format!("{arch}.attention.sliding_window"), u(w.size)));
        // Read by this crate; llama.cpp fixes the pattern per family (candle reads `_type`).
        metadata.push((format!("{arch}.attention.sliding_window_pattern"), u(w.pattern)));
        metadata.push((format!("{arch}.attention.sliding_window_type"), u(w.pattern)));
        if w.rope.theta != cfg.rope.theta {
            metadata
                .push((format!("{arch}.rope.local_freq_base"), Value::F32(w.rope.theta as f32)));
        }
    }
    for (key, cap) in [
        ("attn_logit_softcapping", recipe.attn_softcap),
        ("final_logit_softcapping", recipe.final_softcap),
    ] {
        if let Some(cap) = cap {
            metadata.push((format!("{arch}.{key}"), Value::F32(cap)));
        }
    }
    if cfg.family == Family::Granite {
        let scales = [
            ("embedding_scale", recipe.embed_scale),
            ("residual_scale", recipe.residual_scale),
            ("attention.scale", Some(recipe.query_scale)),
            ("logit_scale", recipe.logit_scale),
        ];
        for (key, scale) in scales {
            if let Some(scale) = scale {
                metadata.push((format!("{arch}.{key}"), Value::F32(scale)));
            }
        }
    }
    if let Some(e) = &recipe.experts {
        metadata.push((format!("{arch}.expert_count"), u(e.count)));
        metadata.push((format!("{arch}.expert_used_count"), u(e.used)));
        if cfg.family != Family::Llama {
            metadata.push((format!("{arch}.expert_feed_forward_length"), u(e.ff)));
        }
        if let Some(ff) = e.shared_ff {
            metadata.push((format!("{arch}.expert_shared_feed_forward_length"), u(ff)));
        }
    }
    let scaling = |key: &str| format!("{arch}.rope.scaling.{key}");
    match &cfg.rope.scaling {
        RopeScaling::Linear(factor) => {
            metadata.push((scaling("type"), Value::String("linear".into())));
            metadata.push((scaling("factor"), Value::F32(*factor as f32)));
        }
        RopeScaling::Yarn { factor, original_max_positions, beta_fast, beta_slow, attn_factor } => {
            metadata.push((scaling("type"), Value::String("yarn".into())));
            metadata.push((scaling("factor"), Value::F32(*factor as f32)));
            metadata.push((scaling("original_context_length"), u(*original_max_positions)));
            metadata.push((scaling("yarn_beta_fast"), Value::F32(*beta_fast as f32)));
            metadata.push((scaling("yarn_beta_slow"), Value::F32(*beta_slow as f32)));
            metadata.push((scaling("attn_factor"), Value::F32(*attn_factor as f32)));
        }
        RopeScaling::LongRope { attn_factor, .. } => {
            metadata.push((scaling("original_context_length"), u(original_context(cfg))));
            metadata.push((scaling("attn_factor"), Value::F32(*attn_factor as f32)));
        }
        _ => {}
    }
    metadata.extend(extra.iter().cloned());
    let mut tensors: Vec<RawTensor> = Vec::with_capacity(weights.len());
    for (part, bias, t) in weights {
        let mut t = t.clone();
        if cfg.family.gguf_rotates_pairs() {
            match part {
                Part::Q(_) => t = permute_for_interleaved_rope(&t, cfg.num_heads)?,
                Part::K(_) => t = permute_for_interleaved_rope(&t, cfg.num_kv_heads)?,
                _ => {}
            }
        }
        // Routers stay F32, as llama.cpp's quantizer leaves them.
        let router = matches!(part, Part::Router(_) | Part::SharedRouter(_));
        // Biases too (gpt-oss's experts' are `[experts, out]`).
        let blocks = if !router
            && !bias
            && t.rank() >= 2
            && t.dim(D::Minus1)?.is_multiple_of(dtype.block_size())
        {
            dtype
        } else {
            Blocks::Ggml(GgmlDType::F32)
        };
        let (type_id, bytes) = blocks.encode(&t)?;
        let name = name(*part, *bias, true);
        tensors.push(RawTensor { name, dims: t.dims().to_vec(), type_id, bytes });
    }
    if let RopeScaling::LongRope { long, factors, .. } = &cfg.rope.scaling {
        let (long_set, short_set) = longrope_sets(*long, factors);
        for (name, set) in
            [("rope_factors_long.weight", long_set), ("rope_factors_short.weight", short_set)]
        {
            let bytes: Vec<u8> = set.iter().flat_map(|f| f.to_le_bytes()).collect();
            tensors.push(RawTensor { name: name.into(), dims: vec![set.len()], type_id: 0, bytes });
        }
    }
    if let RopeScaling::Llama3 { .. } = cfg.rope.scaling {
        let factors = llama3_factors(cfg)?;
        let (dims, bytes) = (factors.shape().dims().to_vec(), factors.data()?.into_owned());
        tensors.push(RawTensor { name: "rope_freqs.weight".into(), dims, type_id: 0, bytes });
    }
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    gguf::write(&mut file, &md, &tensors)?;
    Ok(std::io::Write::flush(&mut file)?)
}

/// llama.cpp's form of Llama 3 rope scaling: per-frequency divisors.
fn llama3_factors(cfg: &DecoderConfig) -> Result<QTensor> {
    let plain = RopeConfig { scaling: RopeScaling::None, ..cfg.rope.clone() };
    let base = super::rope::frequencies(&plain)?;
    let scaled = super::rope::frequencies(&cfg.rope)?;
    let factors: Vec<f32> = base.iter().zip(&scaled).map(|(b, s)| (b / s) as f32).collect();
    let n = factors.len();
    QTensor::quantize(&Tensor::from_vec(factors, n, &Device::Cpu)?, GgmlDType::F32)
}

/// The `n` greedy tokens `model` gives `prompt` on its own: the prompt in one step, then one
/// token per step. What tests compare batched runs against.
pub fn greedy_alone(model: &super::Decoder, prompt: &[u32], n: usize) -> Result<Vec<u32>> {
    use super::StepInput;
    let mut cache = model.new_cache(prompt.len() + n);
    let mut out = Vec::with_capacity(n);
    let mut next =
        super::greedy(&model.step(&mut [StepInput { tokens: prompt, cache: &mut cache }])?)?[0];
    while out.len() < n {
        out.push(next);
        next =
            super::greedy(&model.step(&mut [StepInput { tokens: &[next], cache: &mut cache }])?)?
                [0];
    }
    Ok(out)
}

/// A tiny Qwen3 with a thinking tokenizer ([`write_thinking_tokenizer_files`]) that reasons
/// by rote: its attention and MLP outputs are zero, so the next token depends on the last
/// one alone, and its embeddings and LM head are planted so that after the prompt's last
/// token (`\n`, where the chat template's generation prompt ends) it writes `<think>`,
/// `reasoning`'s tokens, `</think>`, `answer`'s tokens and `<|im_end|>`. Real weights of a
/// real family through the real engine and tokenizer, for what random weights cannot show:
/// reasoning and answer arriving apart. Each token of that chain must be distinct (at most
/// the hidden size, 64, in all).
///
/// [`write_thinking_tokenizer_files`]: crate::text::fixture::write_thinking_tokenizer_files
pub fn write_thinking_model(dir: &Path, reasoning: &str, answer: &str) -> crate::Result<()> {
    use crate::text::{Tokenizer, fixture::write_thinking_tokenizer_files};
    let fail = |e: String| crate::Error::InvalidRequest(format!("thinking fixture: {e}"));
    std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    write_thinking_tokenizer_files(dir).map_err(|e| fail(e.to_string()))?;
    let tokenizer = Tokenizer::from_hf_dir(dir)?;
    let id = |t: &str| tokenizer.token_id(t).ok_or_else(|| fail(format!("no token {t:?}")));
    let mut chain = vec![id("\u{010a}")?, id("<think>")?];
    chain.extend(tokenizer.encode(reasoning)?);
    chain.push(id("</think>")?);
    chain.extend(tokenizer.encode(answer)?);
    chain.push(id("<|im_end|>")?);
    write_rote_model(dir, &chain).map_err(fail)
}

/// A tiny Qwen3 with a harmony tokenizer and template
/// ([`write_harmony_tokenizer_files`]) planted, as [`write_thinking_model`]'s, to write
/// `output` (harmony text: headers, channels, bodies) after the generation prompt. Each
/// token of the prompt's last and `output`'s must be distinct (a channel at most once).
///
/// [`write_harmony_tokenizer_files`]: crate::text::fixture::write_harmony_tokenizer_files
pub fn write_harmony_model(dir: &Path, output: &str) -> crate::Result<()> {
    use crate::text::{Tokenizer, fixture::write_harmony_tokenizer_files};
    let fail = |e: String| crate::Error::InvalidRequest(format!("harmony fixture: {e}"));
    std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    write_harmony_tokenizer_files(dir).map_err(|e| fail(e.to_string()))?;
    let tokenizer = Tokenizer::from_hf_dir(dir)?;
    let prompt_end = tokenizer.encode("<|start|>assistant")?;
    let mut chain: Vec<u32> = prompt_end.last().copied().into_iter().collect();
    chain.extend(tokenizer.encode(output)?);
    write_rote_model(dir, &chain).map_err(|e| fail(e.to_string()))
}

/// Writes a tiny Qwen3 into `dir` (beside its tokenizer) that writes `chain[i + 1]` after
/// `chain[i]`.
fn write_rote_model(dir: &Path, chain: &[u32]) -> std::result::Result<(), String> {
    // Room for a prompt that declares tools (~600 tokens of the fixture's vocabulary).
    let cfg = DecoderConfig { max_positions: 2048, ..tiny_config(Family::Qwen3, false) };
    let hidden = cfg.hidden_size;
    let distinct = chain.iter().collect::<std::collections::HashSet<_>>().len() == chain.len();
    if !distinct || chain.len() > hidden {
        return Err(format!("the chain {chain:?} repeats a token or is over {hidden}"));
    }
    let weights = planted_weights(&cfg, chain).map_err(|e| e.to_string())?;
    write_hf(dir, &cfg, &weights).map_err(|e| e.to_string())
}

/// Seeded weights with the attention and MLP outputs zeroed and `chain` planted: token
/// chain[i] embeds as the unit vector e_i and the LM head row of chain[i + 1] is e_i, so after
/// chain[i] (normalized: 8 e_i) the next token's logit is 8 and every other one is 0.
fn planted_weights(cfg: &DecoderConfig, chain: &[u32]) -> Result<Weights> {
    let (vocab, hidden) = (cfg.vocab_size, cfg.hidden_size);
    let mut embed = vec![0f32; vocab * hidden];
    let mut head = vec![0f32; vocab * hidden];
    for (i, pair) in chain.windows(2).enumerate() {
        embed[pair[0] as usize * hidden + i] = 1.0;
        head[pair[1] as usize * hidden + i] = 1.0;
    }
    let planted = |values: Vec<f32>| Tensor::from_vec(values, (vocab, hidden), &Device::Cpu);
    let mut weights = seeded_weights(cfg, 7)?;
    for (part, _, tensor) in &mut weights {
        *tensor = match part {
            Part::Embed => planted(std::mem::take(&mut embed))?,
            Part::LmHead => planted(std::mem::take(&mut head))?,
            Part::O(_) | Part::Down(_) => tensor.zeros_like()?,
            Part::Norm => tensor.ones_like()?,
            _ => continue,
        };
    }
    Ok(weights)
}

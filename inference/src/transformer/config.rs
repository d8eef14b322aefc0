//! What a decoder-only model looks like: its family and shapes, read from a Hugging Face
//! `config.json` or from GGUF metadata (llama.cpp's keys).

use std::collections::HashMap;

use candle_core::quantized::gguf_file::{Content, Value};
use serde::Deserialize;

/// The model families the engine runs. They differ in a few switches of one forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Qwen2 / Qwen2.5: biased QKV.
    Qwen2,
    /// Llama 2/3 and Mistral-style models.
    Llama,
    /// Qwen3: RMSNorm on each head's queries and keys, explicit head_dim.
    Qwen3,
    /// Phi-3: fused QKV and gate/up projections.
    Phi3,
    /// Gemma 2: norms after attention and MLP too, GELU, scaled embeddings, sliding-window
    /// layers every other layer, soft-capped scores and logits.
    Gemma2,
    /// Gemma 3: Gemma 2's layers with Qwen3's per-head QK norm, five sliding-window layers
    /// (rotated by their own base) to each global one, and no soft caps.
    Gemma3,
    /// Qwen3's attention with a mixture of experts in place of the MLP (top-k weights
    /// renormalized).
    Qwen3Moe,
    /// Qwen2's attention with a mixture of experts (top-k weights as the softmax gave them)
    /// plus a shared expert behind a sigmoid gate.
    Qwen2Moe,
    /// IBM Granite 3.x: Llama's layers with four multipliers (embeddings, residual branches,
    /// attention scores, logits).
    Granite,
    /// OLMo 2 and OLMo 3: norms after attention and MLP only (none before), QK norm over each
    /// token's whole query and key rows; OLMo 3 adds sliding-window layers.
    Olmo2,
    /// SmolLM3: Llama's layers, every fourth without rotary embeddings.
    SmolLm3,
    /// OpenAI's gpt-oss: biased attention with a learned sink logit per head, every other
    /// layer a sliding window, YaRN, and a mixture of biased experts with a clamped SwiGLU
    /// (their top-k logits softmaxed).
    GptOss,
}

impl Family {
    /// The family of a Hugging Face `model_type` or a GGUF `general.architecture`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "qwen2" => Some(Self::Qwen2),
            "llama" | "mistral" => Some(Self::Llama),
            "qwen3" => Some(Self::Qwen3),
            "phi3" => Some(Self::Phi3),
            "gemma2" => Some(Self::Gemma2),
            "gemma3" => Some(Self::Gemma3),
            "qwen3moe" => Some(Self::Qwen3Moe),
            "qwen2moe" => Some(Self::Qwen2Moe),
            "granite" => Some(Self::Granite),
            "olmo2" => Some(Self::Olmo2),
            "smollm3" => Some(Self::SmolLm3),
            "gpt-oss" => Some(Self::GptOss),
            _ => None,
        }
    }

    pub const NAMES: &'static str = "qwen2, llama, mistral, qwen3, phi3, gemma2, gemma3, qwen3moe, \
                                     qwen2moe, granite, olmo2, smollm3, gpt-oss";

    /// llama.cpp's `general.architecture` for the family.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Self::Qwen2 => "qwen2",
            Self::Llama => "llama",
            Self::Qwen3 => "qwen3",
            Self::Phi3 => "phi3",
            Self::Gemma2 => "gemma2",
            Self::Gemma3 => "gemma3",
            Self::Qwen3Moe => "qwen3moe",
            Self::Qwen2Moe => "qwen2moe",
            Self::Granite => "granite",
            Self::Olmo2 => "olmo2",
            Self::SmolLm3 => "smollm3",
            Self::GptOss => "gpt-oss",
        }
    }

    /// RMSNorm of queries and keys, per head or over whole rows.
    fn qk_norm(self) -> QkNorm {
        match self {
            Self::Qwen3 | Self::Qwen3Moe | Self::Gemma3 => QkNorm::PerHead,
            Self::Olmo2 => QkNorm::Whole,
            _ => QkNorm::Off,
        }
    }

    /// Whether llama.cpp's converter stores this family's Q and K rows permuted for rotating
    /// interleaved pairs (its "normal" RoPE: Llama and the families converted as Llama),
    /// rather than halves (NeoX style).
    pub fn gguf_rotates_pairs(self) -> bool {
        matches!(self, Self::Llama | Self::Granite | Self::SmolLm3)
    }

    fn is_gemma(self) -> bool {
        matches!(self, Self::Gemma2 | Self::Gemma3)
    }
}

/// The MLP's activation of its gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x · σ(x)` (SwiGLU).
    Silu,
    /// GELU's tanh approximation (Gemma's GeGLU).
    GeluTanh,
    /// gpt-oss's clamped SwiGLU: `g · σ(1.702 g) · (u + 1)` with the gate `g` clamped
    /// above at 7 and the up projection `u` to ±7 (llama.cpp's `swiglu_oai`).
    SwiGluOai,
}

/// Layers that attend only to the latest positions: which ones, how many positions, and the
/// rotation they use.
#[derive(Debug, Clone, PartialEq)]
pub struct SlidingWindow {
    /// Positions a query sees, its own included.
    pub size: usize,
    /// Layer `i` slides when `i % pattern < pattern - 1` (llama.cpp's `swa_pattern`): 2 for
    /// Gemma 2 (every other layer), 6 for Gemma 3 (five of each six).
    pub pattern: usize,
    /// Their rotation (Gemma 3's window layers have base 10,000, its global ones 1,000,000).
    pub rope: RopeConfig,
}

/// A mixture of experts in place of the MLP: a router picks `used` of `count` SwiGLU experts
/// per token, whose outputs are summed with the router's weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Experts {
    pub count: usize,
    /// Experts each token runs (top-k).
    pub used: usize,
    /// Each expert's intermediate size.
    pub ff: usize,
    /// The top-k weights divided by their sum (Qwen3-MoE, Mixtral) or kept as the softmax
    /// over every expert gave them (Qwen2-MoE).
    pub renormalize: bool,
    /// A shared expert every token runs, scaled by `σ(w · x)` (Qwen2-MoE): its
    /// intermediate size.
    pub shared_ff: Option<usize>,
    /// The router and every expert's projections have biases (gpt-oss).
    pub biases: bool,
}

impl SlidingWindow {
    pub fn slides(&self, layer: usize) -> bool {
        self.pattern > 0 && layer % self.pattern < self.pattern - 1
    }
}

/// Where queries and keys are RMS-normed before the rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkNorm {
    Off,
    /// Each head alone, one gain vector of `head_dim` (Qwen3, Gemma 3).
    PerHead,
    /// Each token's whole query row and whole key row, gains as wide (OLMo 2).
    Whole,
}

/// How a family's layers differ from Llama's: its layer recipe.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    pub qk_norm: QkNorm,
    /// RMSNorm of the residual stream before attention and before the MLP (every family
    /// but OLMo 2, whose norms come after).
    pub pre_norms: bool,
    /// RMSNorm of the attention's and the MLP's outputs before the residual adds (Gemma,
    /// OLMo 2).
    pub post_norms: bool,
    /// The attention's and the MLP's outputs times this before the residual adds (Granite).
    pub residual_scale: Option<f32>,
    /// Logits divided by this (Granite's `logit_scale`; llama.cpp multiplies by its
    /// reciprocal, as we do).
    pub logit_scale: Option<f32>,
    /// Layer `i` is not rotated when `(i + 1) % n == 0` (SmolLM3: 4; 1: no layer is).
    pub unrotated_every: Option<usize>,
    pub activation: Activation,
    /// The embedding rows times this (Gemma: √hidden).
    pub embed_scale: Option<f32>,
    /// The factor of `q·k` (1/√head_dim unless the family says otherwise).
    pub query_scale: f32,
    /// Scores become `cap · tanh(score / cap)` (Gemma 2: 50).
    pub attn_softcap: Option<f32>,
    /// Logits become `cap · tanh(logit / cap)` (Gemma 2: 30).
    pub final_softcap: Option<f32>,
    pub sliding_window: Option<SlidingWindow>,
    /// A mixture of experts in every layer instead of one MLP.
    pub experts: Option<Experts>,
    /// The attention's output projection has a bias (gpt-oss).
    pub out_bias: bool,
    /// Each head's softmax has one more logit, learned, that takes weight but adds no value
    /// (gpt-oss's attention sinks): a head may attend to nothing.
    pub attn_sinks: bool,
}

impl Recipe {
    /// Llama's layers: pre-norms only, SwiGLU, every layer global.
    pub fn plain(head_dim: usize) -> Self {
        Self {
            qk_norm: QkNorm::Off,
            pre_norms: true,
            post_norms: false,
            residual_scale: None,
            logit_scale: None,
            unrotated_every: None,
            activation: Activation::Silu,
            embed_scale: None,
            query_scale: 1.0 / (head_dim as f32).sqrt(),
            attn_softcap: None,
            final_softcap: None,
            sliding_window: None,
            experts: None,
            out_bias: false,
            attn_sinks: false,
        }
    }

    /// Whether the GPU's paged kernels run these layers: Llama's, or Qwen3's QK norm.
    pub fn runs_on_gpu(&self, head_dim: usize) -> bool {
        self.qk_norm != QkNorm::Whole
            && *self == Self { qk_norm: self.qk_norm, ..Self::plain(head_dim) }
    }
}

/// How positions are rotated into queries and keys.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    /// Dimensions of each head that are rotated (all of them unless partial).
    pub dims: usize,
    /// Pairs (2i, 2i+1) instead of (i, i + dims/2): how llama.cpp stores Llama's Q and K.
    pub interleaved: bool,
    pub scaling: RopeScaling,
}

/// Frequency scaling for long contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Llama 3.1+ ("rope_type": "llama3").
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_positions: usize,
    },
    /// Per-frequency divisors, as llama.cpp stores Llama 3 scaling (`rope_freqs.weight`).
    Factors(Vec<f32>),
    /// Every frequency divided by one factor (positions stretched; Gemma 3's global layers).
    Linear(f64),
    /// LongRoPE (Phi-3.5, Phi-4-mini): per-frequency divisors, the file's long set where the
    /// model serves more positions than its original context (as llama.cpp picks by its
    /// context size), else its short set; cos and sin scaled by `attn_factor`.
    LongRope {
        long: bool,
        factors: Vec<f32>,
        attn_factor: f64,
    },
    /// YaRN (Qwen2.5/Qwen3 long-context files, gpt-oss): low frequencies divided by `factor`,
    /// high ones kept, a ramp between (set by `beta_fast` and `beta_slow` rotations over the
    /// original context), and cos/sin scaled by `attn_factor` × (1 + 0.1 ln `factor`).
    Yarn {
        factor: f64,
        original_max_positions: usize,
        beta_fast: f64,
        beta_slow: f64,
        attn_factor: f64,
    },
}

/// The shapes and switches of one decoder model.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub max_positions: usize,
    pub rms_norm_eps: f64,
    pub rope: RopeConfig,
    pub tie_word_embeddings: bool,
    pub qkv_bias: bool,
    pub recipe: Recipe,
}

impl DecoderConfig {
    pub fn qk_norm(&self) -> QkNorm {
        self.recipe.qk_norm
    }

    /// Whether layer `layer` rotates its queries and keys.
    pub fn rotates(&self, layer: usize) -> bool {
        self.recipe.unrotated_every.is_none_or(|n| !(layer + 1).is_multiple_of(n))
    }

    /// The window of layer `layer`, if it is a sliding-window layer.
    pub fn window_of(&self, layer: usize) -> Option<&SlidingWindow> {
        self.recipe.sliding_window.as_ref().filter(|w| w.slides(layer))
    }

    /// Checks the shapes fit together; the error says which do not.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_positions),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be above 0"));
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_heads, self.num_kv_heads
            ));
        }
        if let Some(w) = &self.recipe.sliding_window
            && (w.size == 0 || w.pattern == 0)
        {
            return Err(format!(
                "the sliding window ({} positions, one layer in {}) must be above 0",
                w.size, w.pattern
            ));
        }
        if let Some(e) = &self.recipe.experts
            && (e.used == 0 || e.used > e.count || e.ff == 0 || e.shared_ff == Some(0))
        {
            return Err(format!(
                "the experts ({} of {} per token, {} wide, shared {:?}) must be above 0 and \
                 use at most every expert",
                e.used, e.count, e.ff, e.shared_ff
            ));
        }
        if self.recipe.unrotated_every == Some(0) {
            return Err("layers without rotation every 0 layers: must be above 0".into());
        }
        if self.rope.dims > self.head_dim || !self.rope.dims.is_multiple_of(2) {
            return Err(format!(
                "rotary dimensions ({}) must be even and at most head_dim ({})",
                self.rope.dims, self.head_dim
            ));
        }
        Ok(())
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_hf_json(text: &str) -> Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
        // The family first, so an unsupported model says so rather than what it lacks.
        let kind = value
            .get("model_type")
            .and_then(|v| v.as_str())
            .ok_or_else(|| "config.json has no model_type".to_owned())?;
        let family = Family::from_name(kind).ok_or_else(|| {
            format!("model_type {kind:?} is not supported (supported: {})", Family::NAMES)
        })?;
        let gguf_only = matches!(
            family,
            Family::Qwen3Moe
                | Family::Qwen2Moe
                | Family::Granite
                | Family::Olmo2
                | Family::SmolLm3
                | Family::GptOss
        );
        if family.is_gemma() || gguf_only {
            return Err(format!(
                "{kind} models load from GGUF files (llama.cpp's convert_hf_to_gguf.py writes \
                 one); a Hugging Face folder of this family is not supported yet"
            ));
        }
        if value.get("num_local_experts").is_some_and(|n| n.as_u64().unwrap_or(0) > 0) {
            return Err(format!(
                "this {kind} model has experts (Mixtral-style): it loads from a GGUF file \
                 (llama.cpp's convert_hf_to_gguf.py writes one); a Hugging Face folder of it \
                 is not supported yet"
            ));
        }
        let raw: HfConfig = serde_json::from_value(value).map_err(|e| e.to_string())?;
        let head_dim = raw.head_dim.unwrap_or(raw.hidden_size / raw.num_attention_heads.max(1));
        let dims = match raw.partial_rotary_factor {
            Some(f) => (f * head_dim as f64) as usize,
            None => head_dim,
        };
        let cfg = Self {
            family,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            num_kv_heads: raw.num_key_value_heads.unwrap_or(raw.num_attention_heads),
            head_dim,
            max_positions: raw.max_position_embeddings,
            rms_norm_eps: raw.rms_norm_eps,
            rope: RopeConfig {
                theta: raw.rope_theta.unwrap_or(10_000.0),
                dims,
                interleaved: false,
                scaling: hf_rope_scaling(
                    raw.rope_scaling.as_ref(),
                    raw.max_position_embeddings,
                    raw.original_max_position_embeddings,
                )?,
            },
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qkv_bias: raw.attention_bias.unwrap_or(family == Family::Qwen2),
            recipe: Recipe { qk_norm: family.qk_norm(), ..Recipe::plain(head_dim) },
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads llama.cpp's metadata keys; which optional tensors the file holds (biases, an
    /// untied output matrix, rope frequency factors) switches the matching features on.
    pub fn from_gguf(content: &Content) -> Result<Self, String> {
        let md = &content.metadata;
        let arch = match md.get("general.architecture") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err("the metadata has no general.architecture".into()),
        };
        let family = Family::from_name(&arch).ok_or_else(|| {
            format!("architecture {arch:?} is not supported (supported: {})", Family::NAMES)
        })?;
        let get = |key: &str| int(md, &format!("{arch}.{key}"));
        let hidden_size = get("embedding_length")?;
        let num_heads = get("attention.head_count")?;
        let head_dim = get("attention.key_length").unwrap_or(hidden_size / num_heads.max(1));
        let vocab_size = match content.tensor_infos.get("token_embd.weight") {
            Some(info) => info.shape.dims().first().copied().unwrap_or(0),
            None => return Err("the file has no token_embd.weight tensor".into()),
        };
        let has = |name: &str| content.tensor_infos.contains_key(name);
        let scaling = if has("rope_freqs.weight") {
            // Filled in by the loader, which reads the tensor.
            RopeScaling::Factors(Vec::new())
        } else {
            RopeScaling::None
        };
        let rope = RopeConfig {
            theta: float(md, &format!("{arch}.rope.freq_base")).unwrap_or(10_000.0),
            dims: get("rope.dimension_count").unwrap_or(head_dim),
            interleaved: family.gguf_rotates_pairs(),
            scaling,
        };
        let num_layers = get("block_count")?;
        let mut recipe = match family {
            Family::Gemma2 | Family::Gemma3 => gemma_recipe(
                family,
                md,
                &arch,
                &rope,
                hidden_size,
                num_heads,
                head_dim,
                num_layers,
            )?,
            Family::Granite => granite_recipe(md, &arch, head_dim)?,
            Family::Olmo2 => olmo2_recipe(md, &arch, &rope, head_dim)?,
            // llama.cpp fixes the step at 4; no file says it.
            Family::SmolLm3 => Recipe { unrotated_every: Some(4), ..Recipe::plain(head_dim) },
            Family::GptOss => Recipe {
                activation: Activation::SwiGluOai,
                // llama.cpp fixes the pattern (even layers slide); the rotation is set below,
                // once its scaling is read: gpt-oss's window layers are rotated alike.
                sliding_window: Some(SlidingWindow {
                    size: get("attention.sliding_window")?,
                    pattern: 2,
                    rope: rope.clone(),
                }),
                experts: experts(family, md, &arch)?,
                out_bias: true,
                attn_sinks: true,
                ..Recipe::plain(head_dim)
            },
            _ => {
                let experts = experts(family, md, &arch)?;
                Recipe { qk_norm: family.qk_norm(), experts, ..Recipe::plain(head_dim) }
            }
        };
        // Linear, YaRN and LongRoPE scaling stretch the global layers' positions (window
        // layers' rotation was set apart above, unscaled).
        let max_positions = get("context_length")?;
        let longrope = has("rope_factors_long.weight") || has("rope_factors_short.weight");
        let scaling = if longrope {
            if !(has("rope_factors_long.weight") && has("rope_factors_short.weight")) {
                return Err("LongRoPE needs both rope_factors_long and rope_factors_short".into());
            }
            let original = int(md, &format!("{arch}.rope.scaling.original_context_length"))?;
            let attn = optional_float(md, &format!("{arch}.rope.scaling.attn_factor"))?;
            // The factors are filled in by the loader, which reads the tensor.
            Some(RopeScaling::LongRope {
                long: max_positions > original,
                factors: Vec::new(),
                attn_factor: attn.unwrap_or(1.0),
            })
        } else {
            rope_scaling(md, &arch)?
        };
        let rope = match scaling {
            Some(scaling) => RopeConfig { scaling, ..rope },
            None => rope,
        };
        if family == Family::GptOss
            && let Some(w) = &mut recipe.sliding_window
        {
            w.rope = rope.clone();
        }
        let cfg = Self {
            family,
            vocab_size,
            hidden_size,
            // A mixture of experts may leave out the dense MLP's size (it has none).
            intermediate_size: match (&recipe.experts, get("feed_forward_length")) {
                (Some(e), Err(_)) => e.ff,
                (_, size) => size?,
            },
            num_layers,
            num_heads,
            num_kv_heads: get("attention.head_count_kv").unwrap_or(num_heads),
            head_dim,
            max_positions,
            rms_norm_eps: float(md, &format!("{arch}.attention.layer_norm_rms_epsilon"))?,
            rope,
            tie_word_embeddings: !has("output.weight"),
            qkv_bias: has("blk.0.attn_q.bias"),
            recipe,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// The mixture of experts a GGUF file's metadata describes (`expert_count` above 0), with
/// llama.cpp's rules per family: Qwen2-MoE keeps the softmax's top-k weights and adds a
/// shared expert; Qwen3-MoE and Mixtral-style Llama files renormalize them.
fn experts(
    family: Family,
    md: &HashMap<String, Value>,
    arch: &str,
) -> Result<Option<Experts>, String> {
    let key = |k: &str| format!("{arch}.{k}");
    let count = match md.get(&key("expert_count")) {
        None => 0,
        Some(_) => int(md, &key("expert_count"))?,
    };
    let moe = matches!(family, Family::Qwen3Moe | Family::Qwen2Moe | Family::GptOss);
    if count == 0 {
        if moe {
            return Err(format!("a {arch} file needs {} above 0", key("expert_count")));
        }
        return Ok(None);
    }
    if !moe && family != Family::Llama {
        return Err(format!("{arch} models with experts are not supported (llama's are)"));
    }
    let used = int(md, &key("expert_used_count"))?;
    if used == 0 || used > count {
        return Err(format!("{} is {used}; it must be 1 to {count}", key("expert_used_count")));
    }
    let ff = match md.get(&key("expert_feed_forward_length")) {
        Some(_) => int(md, &key("expert_feed_forward_length"))?,
        None => int(md, &key("feed_forward_length"))?,
    };
    let shared_ff = match family {
        Family::Qwen2Moe => Some(int(md, &key("expert_shared_feed_forward_length"))?),
        _ => None,
    };
    // gpt-oss softmaxes its top-k logits: the same as renormalizing the full softmax's.
    let renormalize = family != Family::Qwen2Moe;
    let biases = family == Family::GptOss;
    Ok(Some(Experts { count, used, ff, renormalize, shared_ff, biases }))
}

/// Gemma's recipe from llama.cpp's keys and its defaults for what the files leave out (the
/// window pattern, Gemma 3's window base, the 27B models' query scale).
#[allow(clippy::too_many_arguments)]
fn gemma_recipe(
    family: Family,
    md: &HashMap<String, Value>,
    arch: &str,
    rope: &RopeConfig,
    hidden_size: usize,
    num_heads: usize,
    head_dim: usize,
    num_layers: usize,
) -> Result<Recipe, String> {
    let key = |k: &str| format!("{arch}.{k}");
    let optional_float = |k: &str| optional_float(md, &key(k));
    let gemma3 = family == Family::Gemma3;
    let pattern = match md.get(&key("attention.sliding_window_pattern")) {
        Some(Value::Array(_)) | None => {
            if gemma3 {
                6
            } else {
                2
            }
        }
        Some(_) => int(md, &key("attention.sliding_window_pattern"))?,
    };
    let window_theta = match optional_float("rope.local_freq_base")? {
        Some(theta) => theta,
        None if gemma3 => 10_000.0,
        None => rope.theta,
    };
    let sliding_window = match md.get(&key("attention.sliding_window")) {
        None => None,
        Some(_) => Some(SlidingWindow {
            size: int(md, &key("attention.sliding_window"))?,
            pattern,
            rope: RopeConfig { theta: window_theta, scaling: RopeScaling::None, ..rope.clone() },
        }),
    };
    // llama.cpp: the 27B models (46 layers of Gemma 2, 62 of Gemma 3) scale queries by
    // 1/√(hidden / heads), the others by 1/√head_dim.
    let big = num_layers == if gemma3 { 62 } else { 46 };
    let query_dim = if big { hidden_size / num_heads.max(1) } else { head_dim };
    let cap = |k: &str| optional_float(k).map(|v| v.map(|v| v as f32));
    Ok(Recipe {
        qk_norm: family.qk_norm(),
        post_norms: true,
        activation: Activation::GeluTanh,
        embed_scale: Some((hidden_size as f32).sqrt()),
        query_scale: 1.0 / (query_dim as f32).sqrt(),
        attn_softcap: cap("attn_logit_softcapping")?,
        final_softcap: cap("final_logit_softcapping")?,
        sliding_window,
        ..Recipe::plain(head_dim)
    })
}

/// A scale the metadata may leave out; llama.cpp reads an absent one, or 0, as "not set".
fn optional_scale(md: &HashMap<String, Value>, key: &str) -> Result<Option<f32>, String> {
    Ok(optional_float(md, key)?.map(|v| v as f32).filter(|v| *v != 0.0))
}

/// Granite's multipliers (llama.cpp's keys; `logit_scale` is required as llama.cpp requires
/// it), and its switch for rotary embeddings (`rope.scaling.finetuned`, on unless false).
fn granite_recipe(
    md: &HashMap<String, Value>,
    arch: &str,
    head_dim: usize,
) -> Result<Recipe, String> {
    let key = |k: &str| format!("{arch}.{k}");
    let logit_scale = float(md, &key("logit_scale"))? as f32;
    if logit_scale == 0.0 {
        return Err(format!("{} is 0; it must be a divisor of the logits", key("logit_scale")));
    }
    let rotated = match md.get(&key("rope.scaling.finetuned")) {
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(format!("{} is not a bool", key("rope.scaling.finetuned"))),
        None => true,
    };
    let plain = Recipe::plain(head_dim);
    Ok(Recipe {
        embed_scale: optional_scale(md, &key("embedding_scale"))?,
        residual_scale: optional_scale(md, &key("residual_scale"))?,
        query_scale: optional_scale(md, &key("attention.scale"))?.unwrap_or(plain.query_scale),
        logit_scale: Some(logit_scale),
        unrotated_every: (!rotated).then_some(1),
        ..plain
    })
}

/// OLMo 2's layers: post-norms only, QK norm over whole rows; OLMo 3's sliding-window
/// layers (three of each four unless the file says otherwise, rotated without scaling).
fn olmo2_recipe(
    md: &HashMap<String, Value>,
    arch: &str,
    rope: &RopeConfig,
    head_dim: usize,
) -> Result<Recipe, String> {
    let key = |k: &str| format!("{arch}.{k}");
    let size = match md.get(&key("attention.sliding_window")) {
        None => 0,
        Some(_) => int(md, &key("attention.sliding_window"))?,
    };
    let sliding_window = if size == 0 {
        None
    } else {
        let pattern = match md.get(&key("attention.sliding_window_pattern")) {
            Some(Value::Array(_)) => {
                return Err(format!(
                    "{} as a per-layer array is not supported (a period is)",
                    key("attention.sliding_window_pattern")
                ));
            }
            Some(_) => int(md, &key("attention.sliding_window_pattern"))?,
            None => 4,
        };
        let theta = optional_float(md, &key("rope.freq_base_swa"))?.unwrap_or(rope.theta);
        let rope = RopeConfig { theta, scaling: RopeScaling::None, ..rope.clone() };
        Some(SlidingWindow { size, pattern, rope })
    };
    Ok(Recipe {
        qk_norm: QkNorm::Whole,
        pre_norms: false,
        post_norms: true,
        sliding_window,
        ..Recipe::plain(head_dim)
    })
}

/// `rope.scaling.type` linear or yarn, with llama.cpp's keys and defaults.
fn rope_scaling(md: &HashMap<String, Value>, arch: &str) -> Result<Option<RopeScaling>, String> {
    let key = |name: &str| format!("{arch}.rope.scaling.{name}");
    match md.get(&key("type")) {
        Some(Value::String(kind)) if kind == "linear" => {
            Ok(Some(RopeScaling::Linear(float(md, &key("factor"))?)))
        }
        Some(Value::String(kind)) if kind == "yarn" => {
            let factor = float(md, &key("factor"))?;
            if factor < 1.0 {
                return Err(format!("{} is {factor}: YaRN stretches, by 1 or more", key("factor")));
            }
            Ok(Some(RopeScaling::Yarn {
                factor,
                original_max_positions: int(md, &key("original_context_length"))?,
                beta_fast: optional_float(md, &key("yarn_beta_fast"))?.unwrap_or(32.0),
                beta_slow: optional_float(md, &key("yarn_beta_slow"))?.unwrap_or(1.0),
                attn_factor: optional_float(md, &key("attn_factor"))?.unwrap_or(1.0),
            }))
        }
        Some(Value::String(kind)) if kind == "none" => Ok(None),
        Some(Value::String(kind)) => Err(format!(
            "rope scaling {kind:?} ({}) is not supported yet (supported: none, linear, yarn)",
            key("type")
        )),
        _ => Ok(None),
    }
}

/// Any integer-typed metadata value (writers differ in which width they use).
fn int(md: &HashMap<String, Value>, key: &str) -> Result<usize, String> {
    let value = md.get(key).ok_or_else(|| format!("the metadata has no {key}"))?;
    let n: i128 = match value {
        Value::U8(v) => (*v).into(),
        Value::I8(v) => (*v).into(),
        Value::U16(v) => (*v).into(),
        Value::I16(v) => (*v).into(),
        Value::U32(v) => (*v).into(),
        Value::I32(v) => (*v).into(),
        Value::U64(v) => (*v).into(),
        Value::I64(v) => (*v).into(),
        _ => return Err(format!("{key} is not an integer")),
    };
    usize::try_from(n).map_err(|_| format!("{key} is out of range: {n}"))
}

/// A float the metadata may leave out (an error only if present and not a float).
fn optional_float(md: &HashMap<String, Value>, key: &str) -> Result<Option<f64>, String> {
    match md.get(key) {
        None => Ok(None),
        Some(_) => float(md, key).map(Some),
    }
}

fn float(md: &HashMap<String, Value>, key: &str) -> Result<f64, String> {
    match md.get(key) {
        Some(Value::F32(v)) => Ok((*v).into()),
        Some(Value::F64(v)) => Ok(*v),
        Some(_) => Err(format!("{key} is not a float")),
        None => Err(format!("the metadata has no {key}")),
    }
}

#[derive(Deserialize)]
struct HfConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    max_position_embeddings: usize,
    /// Phi-3's LongRoPE files say their original context here (newer ones in rope_scaling).
    original_max_position_embeddings: Option<usize>,
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    partial_rotary_factor: Option<f64>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
}

/// `config.json`'s `rope_scaling`, for a model of `max_positions` whose config may give its
/// original context at the top level (`original`, Phi-3's LongRoPE files).
fn hf_rope_scaling(
    value: Option<&serde_json::Value>,
    max_positions: usize,
    original: Option<usize>,
) -> Result<RopeScaling, String> {
    let Some(value) = value.filter(|v| !v.is_null()) else { return Ok(RopeScaling::None) };
    let kind = value
        .get("rope_type")
        .or_else(|| value.get("type"))
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    let number = |key: &str| {
        value
            .get(key)
            .and_then(|v| v.as_f64())
            .ok_or_else(|| format!("rope_scaling.{key} is missing"))
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: number("factor")?,
            low_freq_factor: number("low_freq_factor")?,
            high_freq_factor: number("high_freq_factor")?,
            original_max_positions: number("original_max_position_embeddings")? as usize,
        }),
        "yarn" => Ok(RopeScaling::Yarn {
            factor: number("factor")?,
            original_max_positions: number("original_max_position_embeddings")? as usize,
            beta_fast: number("beta_fast").unwrap_or(32.0),
            beta_slow: number("beta_slow").unwrap_or(1.0),
            attn_factor: number("attention_factor").unwrap_or(1.0),
        }),
        // Phi-3's older files call it "su".
        "longrope" | "su" => {
            let original = match number("original_max_position_embeddings") {
                Ok(n) => n as usize,
                Err(_) => original.ok_or(
                    "rope_scaling longrope needs original_max_position_embeddings (in it or \
                     in config.json)",
                )?,
            };
            // As llama.cpp picks (and our GGUF files): by the context the model serves, not
            // by each step's length as transformers does.
            let long = max_positions > original;
            let key = if long { "long_factor" } else { "short_factor" };
            let factors = value
                .get(key)
                .and_then(|v| v.as_array())
                .ok_or_else(|| format!("rope_scaling.{key} is missing"))?
                .iter()
                .map(|v| v.as_f64().map(|f| f as f32))
                .collect::<Option<Vec<f32>>>()
                .ok_or_else(|| format!("rope_scaling.{key} must be numbers"))?;
            // transformers' default (and llama.cpp's converter's): √(1 + ln s / ln original)
            // for a context s times the original.
            let scale = max_positions as f64 / original.max(1) as f64;
            let default =
                if scale <= 1.0 { 1.0 } else { (1.0 + scale.ln() / (original as f64).ln()).sqrt() };
            let attn_factor = number("attention_factor").unwrap_or(default);
            Ok(RopeScaling::LongRope { long, factors, attn_factor })
        }
        other => Err(format!(
            "rope_scaling type {other:?} is not supported (supported: default, llama3, yarn, \
             longrope)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Phi-3 `config.json` of `max` positions over an original 4,096, its `rope_scaling`
    /// `scaling`.
    fn phi3(max: usize, scaling: serde_json::Value) -> Result<DecoderConfig, String> {
        let config = serde_json::json!({
            "model_type": "phi3", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": max,
            "original_max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
            "rope_scaling": scaling,
        });
        DecoderConfig::from_hf_json(&config.to_string())
    }

    #[test]
    fn longrope_picks_its_factors_by_the_context_and_scales_as_transformers_does() {
        let long: Vec<f32> = (0..8).map(|i| 1.0 + i as f32).collect();
        let short = vec![1.5f32; 8];
        let scaling = serde_json::json!({"type": "longrope", "long_factor": long,
                                         "short_factor": short});
        // Phi-3.5-mini's 131,072 over 4,096: the long set, √(1 + ln 32 / ln 4096).
        let cfg = phi3(131_072, scaling.clone()).expect("a LongRoPE config");
        let want = (1.0 + 32f64.ln() / 4096f64.ln()).sqrt();
        assert_eq!(
            cfg.rope.scaling,
            RopeScaling::LongRope { long: true, factors: long, attn_factor: want }
        );
        assert!((want - 1.1902).abs() < 1e-4);
        // No more than the original context: the short set, unscaled.
        let cfg = phi3(4096, scaling.clone()).expect("a LongRoPE config");
        assert_eq!(
            cfg.rope.scaling,
            RopeScaling::LongRope { long: false, factors: short, attn_factor: 1.0 }
        );
        // The older name, and a set that is not numbers.
        let mut su = scaling;
        su["type"] = "su".into();
        assert!(phi3(131_072, su.clone()).is_ok());
        su["long_factor"] = serde_json::json!(["x"]);
        assert!(phi3(131_072, su).is_err_and(|e| e.contains("long_factor")));
    }
}

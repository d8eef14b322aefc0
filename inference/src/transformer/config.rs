//! What a decoder-only model looks like: its family, shapes and layer recipe, read from a
//! Hugging Face `config.json` or from GGUF metadata (llama.cpp's keys; each family's own keys
//! are read in [`super::family`]).

use candle_core::quantized::gguf_file::{Content, Value};
use serde::Deserialize;

pub use super::family::Family;
use super::family::Shape;
use super::metadata::Metadata;

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
    /// Layers that are a short convolution instead of attention (LFM2).
    pub short_conv: Option<ShortConv>,
}

/// LFM2's short convolutions: which layers they are, and how many positions each mixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShortConv {
    /// Positions a token's output mixes, its own included (`shortconv.l_cache`: 3).
    pub l_cache: usize,
    /// Per layer, whether it is a convolution.
    pub layers: Vec<bool>,
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
            short_conv: None,
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

    /// Whether layer `layer` is a short convolution (LFM2), not attention.
    pub fn convolves(&self, layer: usize) -> bool {
        self.recipe.short_conv.as_ref().is_some_and(|c| c.layers.get(layer) == Some(&true))
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
        if let Some(conv) = &self.recipe.short_conv
            && (conv.l_cache < 2 || conv.layers.len() != self.num_layers)
        {
            return Err(format!(
                "the short convolutions ({} positions, {} layers' kinds for {} layers) must mix \
                 2 positions or more and name every layer",
                conv.l_cache,
                conv.layers.len(),
                self.num_layers
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
                | Family::Lfm2
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
        let m = Metadata { md, arch: &arch };
        let hidden_size = m.int("embedding_length")?;
        let num_heads = m.int("attention.head_count")?;
        let head_dim = m.int("attention.key_length").unwrap_or(hidden_size / num_heads.max(1));
        let vocab_size = match content.tensor_infos.get("token_embd.weight") {
            Some(info) => info.shape.dims().first().copied().unwrap_or(0),
            None => return Err("the file has no token_embd.weight tensor".into()),
        };
        let has = |name: &str| content.tensor_infos.contains_key(name);
        let max_positions = m.int("context_length")?;
        let rope = RopeConfig {
            theta: m.float("rope.freq_base").unwrap_or(10_000.0),
            dims: m.int("rope.dimension_count").unwrap_or(head_dim),
            interleaved: family.gguf_rotates_pairs(),
            scaling: gguf_rope_scaling(m, &has, max_positions)?,
        };
        let num_layers = m.int("block_count")?;
        let shape = Shape { hidden_size, num_heads, head_dim, num_layers, rope: &rope };
        let (recipe, kv_heads) = family.recipe(m, &shape)?;
        let cfg = Self {
            family,
            vocab_size,
            hidden_size,
            // A mixture of experts may leave out the dense MLP's size (it has none).
            intermediate_size: match (&recipe.experts, m.int("feed_forward_length")) {
                (Some(e), Err(_)) => e.ff,
                (_, size) => size?,
            },
            num_layers,
            num_heads,
            num_kv_heads: match kv_heads {
                Some(heads) => heads,
                None => m.int("attention.head_count_kv").unwrap_or(num_heads),
            },
            head_dim,
            max_positions,
            rms_norm_eps: m.float("attention.layer_norm_rms_epsilon")?,
            rope,
            tie_word_embeddings: !has("output.weight"),
            qkv_bias: has("blk.0.attn_q.bias"),
            recipe,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// The global layers' frequency scaling a GGUF file describes: per-frequency factors
/// (`rope_freqs`), LongRoPE's two sets, or `rope.scaling.type` linear or yarn. The factors
/// are filled in by the loader, which reads the tensors.
fn gguf_rope_scaling(
    m: Metadata<'_>,
    has: &dyn Fn(&str) -> bool,
    max_positions: usize,
) -> Result<RopeScaling, String> {
    let longrope = has("rope_factors_long.weight") || has("rope_factors_short.weight");
    if longrope {
        if !(has("rope_factors_long.weight") && has("rope_factors_short.weight")) {
            return Err("LongRoPE needs both rope_factors_long and rope_factors_short".into());
        }
        let original = m.int("rope.scaling.original_context_length")?;
        let attn = m.optional_float("rope.scaling.attn_factor")?;
        return Ok(RopeScaling::LongRope {
            long: max_positions > original,
            factors: Vec::new(),
            attn_factor: attn.unwrap_or(1.0),
        });
    }
    let key = |name: &str| format!("rope.scaling.{name}");
    match m.get(&key("type")) {
        Some(Value::String(kind)) if kind == "linear" => {
            Ok(RopeScaling::Linear(m.float(&key("factor"))?))
        }
        Some(Value::String(kind)) if kind == "yarn" => {
            let factor = m.float(&key("factor"))?;
            if factor < 1.0 {
                return Err(format!(
                    "{} is {factor}: YaRN stretches, by 1 or more",
                    m.key(&key("factor"))
                ));
            }
            Ok(RopeScaling::Yarn {
                factor,
                original_max_positions: m.int(&key("original_context_length"))?,
                beta_fast: m.optional_float(&key("yarn_beta_fast"))?.unwrap_or(32.0),
                beta_slow: m.optional_float(&key("yarn_beta_slow"))?.unwrap_or(1.0),
                attn_factor: m.optional_float(&key("attn_factor"))?.unwrap_or(1.0),
            })
        }
        Some(Value::String(kind)) if kind != "none" => Err(format!(
            "rope scaling {kind:?} ({}) is not supported yet (supported: none, linear, yarn)",
            m.key(&key("type"))
        )),
        _ if has("rope_freqs.weight") => Ok(RopeScaling::Factors(Vec::new())),
        _ => Ok(RopeScaling::None),
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

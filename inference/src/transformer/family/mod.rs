//! The model families: what each is called, and its layers' recipe read from GGUF metadata.
//! A family differs from Llama's layers only in its [`Recipe`]; a family with more to say
//! than a few switches has a file here.

mod experts;
mod gemma;
mod gpt_oss;
mod granite;
mod lfm2;
mod olmo2;

use super::config::{QkNorm, Recipe, RopeConfig};
use super::metadata::Metadata;

/// What a recipe may depend on besides the family's own keys, read before it.
pub(crate) struct Shape<'a> {
    pub hidden_size: usize,
    pub num_heads: usize,
    pub head_dim: usize,
    pub num_layers: usize,
    /// The global layers' rotation, scaling included.
    pub rope: &'a RopeConfig,
}

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
    /// Liquid AI's LFM2: attention layers (per-head QK norm) among short-convolution ones.
    Lfm2,
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
            "lfm2" => Some(Self::Lfm2),
            _ => None,
        }
    }

    pub const NAMES: &'static str = "qwen2, llama, mistral, qwen3, phi3, gemma2, gemma3, qwen3moe, \
                                     qwen2moe, granite, olmo2, smollm3, gpt-oss, lfm2";

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
            Self::Lfm2 => "lfm2",
        }
    }

    /// RMSNorm of queries and keys, per head or over whole rows.
    pub(crate) fn qk_norm(self) -> QkNorm {
        match self {
            Self::Qwen3 | Self::Qwen3Moe | Self::Gemma3 | Self::Lfm2 => QkNorm::PerHead,
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

    pub(crate) fn is_gemma(self) -> bool {
        matches!(self, Self::Gemma2 | Self::Gemma3)
    }

    /// The family's layers as a GGUF file of it describes them, and the key-value heads
    /// where the family gives them otherwise than as one number (LFM2). A family with no
    /// experts refuses a file that has some.
    pub(crate) fn recipe(
        self,
        m: Metadata<'_>,
        shape: &Shape<'_>,
    ) -> Result<(Recipe, Option<usize>), String> {
        let experts = experts::read(self, m)?;
        let plain = Recipe::plain(shape.head_dim);
        let mut kv_heads = None;
        let mut recipe = match self {
            Self::Gemma2 | Self::Gemma3 => gemma::recipe(m, shape, self == Self::Gemma3)?,
            Self::Granite => granite::recipe(m, shape)?,
            Self::Olmo2 => olmo2::recipe(m, shape)?,
            Self::GptOss => gpt_oss::recipe(m, shape, experts)?,
            Self::Lfm2 => {
                let (recipe, heads) = lfm2::recipe(m, shape)?;
                kv_heads = Some(heads);
                recipe
            }
            // llama.cpp fixes the step at 4; no file says it.
            Self::SmolLm3 => Recipe { unrotated_every: Some(4), ..plain },
            Self::Qwen2
            | Self::Llama
            | Self::Qwen3
            | Self::Phi3
            | Self::Qwen3Moe
            | Self::Qwen2Moe => Recipe { experts, ..plain },
        };
        recipe.qk_norm = self.qk_norm();
        Ok((recipe, kv_heads))
    }
}

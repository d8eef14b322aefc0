//! Gemma 2 and Gemma 3: norms after attention and the MLP as well as before, GeGLU, embeddings
//! scaled by √hidden, sliding-window layers with their own rotation base, and Gemma 2's soft
//! caps on scores and logits.

use candle_core::quantized::gguf_file::Value;

use super::Shape;
use crate::transformer::config::{Activation, Recipe, RopeConfig, RopeScaling, SlidingWindow};
use crate::transformer::metadata::Metadata;

/// The recipe from llama.cpp's keys, with its defaults for what the files leave out (the
/// window pattern, Gemma 3's window base, the 27B models' query scale).
pub(super) fn recipe(m: Metadata<'_>, shape: &Shape<'_>, gemma3: bool) -> Result<Recipe, String> {
    let pattern = match m.get("attention.sliding_window_pattern") {
        Some(Value::Array(_)) | None => {
            if gemma3 {
                6
            } else {
                2
            }
        }
        Some(_) => m.int("attention.sliding_window_pattern")?,
    };
    let rope = shape.rope;
    let window_theta = match m.optional_float("rope.local_freq_base")? {
        Some(theta) => theta,
        None if gemma3 => 10_000.0,
        None => rope.theta,
    };
    let sliding_window = m.optional_int("attention.sliding_window")?.map(|size| SlidingWindow {
        size,
        pattern,
        rope: RopeConfig { theta: window_theta, scaling: RopeScaling::None, ..rope.clone() },
    });
    // llama.cpp: the 27B models (46 layers of Gemma 2, 62 of Gemma 3) scale queries by
    // 1/√(hidden / heads), the others by 1/√head_dim.
    let big = shape.num_layers == if gemma3 { 62 } else { 46 };
    let query_dim = if big { shape.hidden_size / shape.num_heads.max(1) } else { shape.head_dim };
    let cap = |k: &str| m.optional_float(k).map(|v| v.map(|v| v as f32));
    Ok(Recipe {
        post_norms: true,
        activation: Activation::GeluTanh,
        embed_scale: Some((shape.hidden_size as f32).sqrt()),
        query_scale: 1.0 / (query_dim as f32).sqrt(),
        attn_softcap: cap("attn_logit_softcapping")?,
        final_softcap: cap("final_logit_softcapping")?,
        sliding_window,
        ..Recipe::plain(shape.head_dim)
    })
}

//! OpenAI's gpt-oss: biased attention with a learned sink logit per head, every other layer a
//! sliding window, YaRN, and a mixture of biased experts with a clamped SwiGLU.

use super::Shape;
use crate::transformer::config::{Activation, Experts, Recipe, SlidingWindow};
use crate::transformer::metadata::Metadata;

pub(super) fn recipe(
    m: Metadata<'_>,
    shape: &Shape<'_>,
    experts: Option<Experts>,
) -> Result<Recipe, String> {
    Ok(Recipe {
        activation: Activation::SwiGluOai,
        // llama.cpp fixes the pattern (even layers slide); the window layers are rotated as
        // the global ones are, YaRN included.
        sliding_window: Some(SlidingWindow {
            size: m.int("attention.sliding_window")?,
            pattern: 2,
            rope: shape.rope.clone(),
        }),
        experts,
        out_bias: true,
        attn_sinks: true,
        ..Recipe::plain(shape.head_dim)
    })
}

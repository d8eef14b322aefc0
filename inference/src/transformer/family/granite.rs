//! IBM Granite 3.x: Llama's layers with four multipliers (embeddings, residual branches,
//! attention scores, logits).

use candle_core::quantized::gguf_file::Value;

use super::Shape;
use crate::transformer::config::Recipe;
use crate::transformer::metadata::Metadata;

/// The multipliers (llama.cpp's keys; `logit_scale` is required as llama.cpp requires it),
/// and the switch for rotary embeddings (`rope.scaling.finetuned`, on unless false).
pub(super) fn recipe(m: Metadata<'_>, shape: &Shape<'_>) -> Result<Recipe, String> {
    let logit_scale = m.float("logit_scale")? as f32;
    if logit_scale == 0.0 {
        return Err(format!("{} is 0; it must be a divisor of the logits", m.key("logit_scale")));
    }
    let rotated = match m.get("rope.scaling.finetuned") {
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(format!("{} is not a bool", m.key("rope.scaling.finetuned"))),
        None => true,
    };
    let plain = Recipe::plain(shape.head_dim);
    Ok(Recipe {
        embed_scale: m.optional_scale("embedding_scale")?,
        residual_scale: m.optional_scale("residual_scale")?,
        query_scale: m.optional_scale("attention.scale")?.unwrap_or(plain.query_scale),
        logit_scale: Some(logit_scale),
        unrotated_every: (!rotated).then_some(1),
        ..plain
    })
}

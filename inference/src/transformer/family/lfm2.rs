//! Liquid AI's LFM2: layers that are either attention (per-head QK norm) or a short
//! convolution, which mixes each token with the `l_cache - 1` before it (a gated, depthwise
//! convolution of `B·x`, times `C`); a SwiGLU MLP in every layer.

use candle_core::quantized::gguf_file::Value;

use super::Shape;
use crate::transformer::config::{Recipe, ShortConv};
use crate::transformer::metadata::{Metadata, int_value};

/// The recipe, and the key-value heads of the attention layers: llama.cpp's files give
/// `attention.head_count_kv` per layer, 0 for a convolution layer.
pub(super) fn recipe(m: Metadata<'_>, shape: &Shape<'_>) -> Result<(Recipe, usize), String> {
    let key = m.key("attention.head_count_kv");
    let per_layer: Vec<usize> = match m.get("attention.head_count_kv") {
        Some(Value::Array(values)) => values
            .iter()
            .enumerate()
            .map(|(i, v)| int_value(v, &format!("{key}[{i}]")))
            .collect::<Result<_, _>>()?,
        Some(_) => vec![m.int("attention.head_count_kv")?; shape.num_layers],
        None => return Err(format!("the metadata has no {key}")),
    };
    let mut attention = per_layer.iter().filter(|n| **n > 0);
    let kv_heads = attention.next().copied().unwrap_or(shape.num_heads);
    if attention.any(|n| *n != kv_heads) {
        return Err(format!("{key}: attention layers with different key-value heads"));
    }
    // `DecoderConfig::validate` checks that the convolutions mix 2 positions or more and
    // that every layer is named.
    let l_cache = m.int("shortconv.l_cache")?;
    let layers = per_layer.iter().map(|n| *n == 0).collect();
    let short_conv = ShortConv { l_cache, layers };
    Ok((Recipe { short_conv: Some(short_conv), ..Recipe::plain(shape.head_dim) }, kv_heads))
}

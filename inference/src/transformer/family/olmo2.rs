//! OLMo 2 and OLMo 3: norms after attention and the MLP only (none before), QK norm over each
//! token's whole query and key rows; OLMo 3 adds sliding-window layers.

use candle_core::quantized::gguf_file::Value;

use super::Shape;
use crate::transformer::config::{Recipe, RopeConfig, RopeScaling, SlidingWindow};
use crate::transformer::metadata::Metadata;

/// The recipe, with OLMo 3's window layers (three of each four unless the file says
/// otherwise, rotated without scaling).
pub(super) fn recipe(m: Metadata<'_>, shape: &Shape<'_>) -> Result<Recipe, String> {
    let size = m.optional_int("attention.sliding_window")?.unwrap_or(0);
    let sliding_window = if size == 0 {
        None
    } else {
        let key = "attention.sliding_window_pattern";
        let pattern = match m.get(key) {
            Some(Value::Array(_)) => {
                return Err(format!(
                    "{} as a per-layer array is not supported (a period is)",
                    m.key(key)
                ));
            }
            Some(_) => m.int(key)?,
            None => 4,
        };
        let rope = shape.rope;
        let theta = m.optional_float("rope.freq_base_swa")?.unwrap_or(rope.theta);
        let rope = RopeConfig { theta, scaling: RopeScaling::None, ..rope.clone() };
        Some(SlidingWindow { size, pattern, rope })
    };
    Ok(Recipe {
        pre_norms: false,
        post_norms: true,
        sliding_window,
        ..Recipe::plain(shape.head_dim)
    })
}

//! Sentence vectors from token vectors: the mean over real (unmasked) tokens, then unit
//! length, as sentence-transformers' `Pooling(mean)` + `Normalize` do.

use candle_core::{D, Result, Tensor};

/// `hidden` `[B, T, H]`, `mask` `[B, T]` f32 (1 = real token) → `[B, H]`.
pub fn mean_pool(hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let mask = mask.unsqueeze(2)?;
    let sum = hidden.broadcast_mul(&mask)?.sum(1)?;
    // The clamp only matters for a row with no real token, which the tokenizer never makes
    // (it always adds [CLS] and [SEP]); it keeps such a row at zero instead of NaN.
    let count = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?;
    sum.broadcast_div(&count)
}

/// Scales each row of `x` `[B, H]` to unit L2 norm (rows of norm below 1e-12 are divided
/// by 1e-12, as `torch.nn.functional.normalize` does).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
    x.broadcast_div(&norm)
}

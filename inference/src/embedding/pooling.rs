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

/// Unit-length mean vectors of packed token rows: `hidden` holds `[N, h]` rows sequence
/// after sequence, `lens` the number of rows of each sequence (none empty). The same
/// arithmetic as [`mean_pool`] then [`l2_normalize`] on a padded batch.
pub fn mean_pool_packed(hidden: &[f32], h: usize, lens: &[usize]) -> Vec<Vec<f32>> {
    let mut start = 0;
    lens.iter()
        .map(|&len| {
            let mut mean = vec![0f32; h];
            for row in hidden[start * h..(start + len) * h].chunks_exact(h) {
                for (m, x) in mean.iter_mut().zip(row) {
                    *m += x;
                }
            }
            start += len;
            let count = (len as f32).max(1e-9);
            mean.iter_mut().for_each(|m| *m /= count);
            let norm = mean.iter().map(|m| m * m).sum::<f32>().sqrt().max(1e-12);
            mean.iter_mut().for_each(|m| *m /= norm);
            mean
        })
        .collect()
}

//! Attention of one sequence's new tokens over its KV cache.
//!
//! Decoding feeds one token per sequence per step; done with tensor ops that is a dozen small
//! candle calls per sequence and layer, which at 32 sequences costs more than the weight
//! matmuls. On the CPU, attention runs instead as plain loops straight over the cache buffers,
//! in parallel across query rows, for decode tokens and prompt chunks alike, so a token's
//! result never depends on how its prompt was chunked or what shares the step. Other
//! devices use matmuls.

use candle_core::{CpuStorage, Result, Storage, StorageRef, Tensor};
use rayon::prelude::*;

/// Attention of `q` `[heads, n, hd]` (positions `pos..pos + n`) over `keys`/`values`
/// `[kv_heads, len, hd]`; returns `[n, heads * hd]`. Query heads are grouped by the KV head
/// they share, so keys and values are never copied per query head.
pub fn attention(q: &Tensor, keys: &Tensor, values: &Tensor, pos: usize) -> Result<Tensor> {
    let (nh, n, hd) = q.dims3()?;
    let (kvh, len, _) = keys.dims3()?;
    let groups = nh / kvh;
    let q = q.contiguous()?.reshape((kvh, groups * n, hd))?;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut scores = (q.matmul(&keys.t()?)? * scale)?;
    if n > 1 {
        // Row (g, i) is query i (at position pos + i): it sees keys up to pos + i.
        let mask: Vec<f32> = (0..groups * n)
            .flat_map(|r| {
                let i = r % n;
                (0..len).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (groups * n, len), q.device())?;
        scores = scores.broadcast_add(&mask)?;
    }
    let weights = candle_nn::ops::softmax_last_dim(&scores)?;
    weights.matmul(values)?.reshape((nh, n, hd))?.transpose(0, 1)?.reshape((n, nh * hd))
}

/// One sequence's share of a step: its new tokens' query rows and its cache buffers.
#[derive(Debug)]
pub struct AttendJob {
    /// Column of the sequence's first new token in the step's `[heads, T, hd]` queries.
    pub token: usize,
    /// New tokens this step (1 when decoding, a prompt chunk when prefilling).
    pub n: usize,
    /// Positions cached before this step: new token `i` attends to `pos + i + 1` positions.
    pub pos: usize,
    /// Its cache buffers `[kv_heads, capacity, hd]` (contiguous, CPU, f32), this step's
    /// keys and values already written.
    pub keys: Tensor,
    pub values: Tensor,
}

fn cpu_f32<'a>(guard: &'a StorageRef<'_>, t: &Tensor) -> Option<&'a [f32]> {
    match &**guard {
        Storage::Cpu(CpuStorage::F32(data)) if t.is_contiguous() => {
            data.get(t.layout().start_offset()..)
        }
        _ => None,
    }
}

/// Attention of every job's new tokens at once, on the CPU: `[T, heads * hd]` rows in token
/// order, or `None` when the tensors are not f32 CPU tensors (the caller falls back to
/// [`attention`]).
///
/// Each (token, head) is computed by the same loop whatever else is in the step: the same
/// dot products in the same order, whether the token is decoded alone, batched with 31
/// others, or one row of a prompt chunk of any size. That is what makes a sequence's
/// tokens independent of batching and of prefill chunking (a matmul over a chunk would
/// block its reductions by the chunk's shape).
pub fn attend_cpu(q: &Tensor, jobs: &[AttendJob], kv_heads: usize) -> Result<Option<Vec<f32>>> {
    let (nh, t, hd) = q.dims3()?;
    let q = q.contiguous()?;
    let q_guard = q.storage_and_layout().0;
    let Some(q_data) = cpu_f32(&q_guard, &q) else { return Ok(None) };
    let guards: Vec<(StorageRef<'_>, StorageRef<'_>)> = jobs
        .iter()
        .map(|j| (j.keys.storage_and_layout().0, j.values.storage_and_layout().0))
        .collect();
    // One entry per query row: its job's cache, the row's column and how many positions it sees.
    let mut rows = Vec::with_capacity(t);
    for (job, (kg, vg)) in jobs.iter().zip(&guards) {
        let (Some(keys), Some(values)) = (cpu_f32(kg, &job.keys), cpu_f32(vg, &job.values)) else {
            return Ok(None);
        };
        let capacity = job.keys.dim(1)?;
        if job.pos + job.n > capacity {
            candle_core::bail!("attention: {} positions in a cache of {capacity}", job.pos + job.n);
        }
        for i in 0..job.n {
            rows.push(Row { keys, values, capacity, token: job.token + i, len: job.pos + i + 1 });
        }
    }
    if rows.len() != t {
        candle_core::bail!("attention: jobs cover {} of the step's {t} tokens", rows.len());
    }
    let groups = nh / kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0f32; t * nh * hd];
    out.par_chunks_mut(nh * hd).zip(rows.par_iter()).for_each(|(out, row)| {
        let mut scores = vec![0f32; row.len];
        for h in 0..nh {
            let base = h / groups * row.capacity * hd;
            let qh = &q_data[(h * t + row.token) * hd..][..hd];
            let key = |j: usize| &row.keys[base + j * hd..][..hd];
            let value = |j: usize| &row.values[base + j * hd..][..hd];
            attend_one(qh, key, value, scale, &mut scores, &mut out[h * hd..][..hd]);
        }
    });
    Ok(Some(out))
}

/// One query head over `scores.len()` positions: scaled dot products with each `key(j)`,
/// softmax, then the weighted sum of the `value(j)` added into `out`. The one loop every CPU
/// attention runs (the decoder's and the packed BERT encoder's), in a fixed order.
pub(crate) fn attend_one<'a>(
    q: &[f32],
    key: impl Fn(usize) -> &'a [f32],
    value: impl Fn(usize) -> &'a [f32],
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    for (j, s) in scores.iter_mut().enumerate() {
        *s = dot(q, key(j)) * scale;
    }
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    for (j, s) in scores.iter().enumerate() {
        let w = s / sum;
        for (a, v) in out.iter_mut().zip(value(j)) {
            *a += w * v;
        }
    }
}

/// One query row of [`attend_cpu`].
struct Row<'a> {
    keys: &'a [f32],
    values: &'a [f32],
    capacity: usize,
    token: usize,
    len: usize,
}

/// A dot product in 8 independent lanes, which LLVM turns into SIMD.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

//! Attention of one sequence's new tokens over its KV cache.
//!
//! Decoding feeds one token per sequence per step; done with tensor ops that is a dozen small
//! candle calls per sequence and layer, which at 32 sequences costs more than the weight
//! matmuls. On the CPU, single-token attention runs instead as plain loops straight over the
//! cache buffers, in parallel across sequences. Prompt chunks (several tokens) use matmuls.

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

/// One decoding sequence's share of a step: its query row and its cache buffers.
#[derive(Debug)]
pub struct DecodeJob {
    /// Column of the sequence's token in the step's `[heads, T, hd]` queries.
    pub token: usize,
    /// Its cache buffers `[kv_heads, capacity, hd]` (contiguous, CPU, f32).
    pub keys: Tensor,
    pub values: Tensor,
    /// Positions to attend to (the cached ones plus this token).
    pub len: usize,
}

fn cpu_f32<'a>(guard: &'a StorageRef<'_>, t: &Tensor) -> Option<&'a [f32]> {
    match &**guard {
        Storage::Cpu(CpuStorage::F32(data)) if t.is_contiguous() => {
            data.get(t.layout().start_offset()..)
        }
        _ => None,
    }
}

/// Single-token attention for every job at once, on the CPU: `[jobs, heads * hd]` rows in
/// job order, or `None` when the tensors are not f32 CPU tensors (the caller falls back to
/// [`attention`]).
pub fn decode_cpu(q: &Tensor, jobs: &[DecodeJob], kv_heads: usize) -> Result<Option<Vec<f32>>> {
    let (nh, t, hd) = q.dims3()?;
    let q = q.contiguous()?;
    let q_guard = q.storage_and_layout().0;
    let Some(q_data) = cpu_f32(&q_guard, &q) else { return Ok(None) };
    let guards: Vec<(StorageRef<'_>, StorageRef<'_>)> = jobs
        .iter()
        .map(|j| (j.keys.storage_and_layout().0, j.values.storage_and_layout().0))
        .collect();
    let mut caches = Vec::with_capacity(jobs.len());
    for (job, (kg, vg)) in jobs.iter().zip(&guards) {
        match (cpu_f32(kg, &job.keys), cpu_f32(vg, &job.values)) {
            (Some(k), Some(v)) => caches.push((k, v, job.keys.dim(1)?)),
            _ => return Ok(None),
        }
    }
    let groups = nh / kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0f32; jobs.len() * nh * hd];
    out.par_chunks_mut(nh * hd).zip(jobs.par_iter().zip(caches.par_iter())).for_each(
        |(row, (job, (keys, values, capacity)))| {
            let mut scores = vec![0f32; job.len];
            for h in 0..nh {
                let kv = h / groups;
                let qh = &q_data[(h * t + job.token) * hd..][..hd];
                let base = kv * capacity * hd;
                for (j, s) in scores.iter_mut().enumerate() {
                    *s = dot(qh, &keys[base + j * hd..][..hd]) * scale;
                }
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for s in &mut scores {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let acc = &mut row[h * hd..][..hd];
                for (j, s) in scores.iter().enumerate() {
                    let w = s / sum;
                    for (a, v) in acc.iter_mut().zip(&values[base + j * hd..][..hd]) {
                        *a += w * v;
                    }
                }
            }
        },
    );
    Ok(Some(out))
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

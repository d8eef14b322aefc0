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

/// How a layer turns `q·k` into the scores its softmax reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scores<'a> {
    /// `q·k` times this (1/√head_dim for most families).
    pub scale: f32,
    /// A sliding-window layer's window: a query sees this many positions, its own included.
    pub window: Option<usize>,
    /// Scores become `cap · tanh(score / cap)` (Gemma 2).
    pub softcap: Option<f32>,
    /// Each query head's sink logit (gpt-oss): one more term of the softmax's sum, as a
    /// position whose value is zero.
    pub sinks: Option<&'a [f32]>,
}

impl Scores<'_> {
    /// Scaled by 1/√head_dim, over every earlier position, uncapped.
    pub fn plain(head_dim: usize) -> Self {
        Self { scale: 1.0 / (head_dim as f32).sqrt(), window: None, softcap: None, sinks: None }
    }

    /// The first position a query at `pos` sees.
    fn first(&self, pos: usize) -> usize {
        self.window.map_or(0, |w| (pos + 1).saturating_sub(w))
    }
}

/// Attention of `q` `[heads, n, hd]` (positions `pos..pos + n`) over `keys`/`values`
/// `[kv_heads, len, hd]`; returns `[n, heads * hd]`. Query heads are grouped by the KV head
/// they share, so keys and values are never copied per query head.
pub fn attention(
    q: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    pos: usize,
    how: Scores<'_>,
) -> Result<Tensor> {
    let (nh, n, hd) = q.dims3()?;
    let (kvh, len, _) = keys.dims3()?;
    let groups = nh / kvh;
    let q = q.contiguous()?.reshape((kvh, groups * n, hd))?;
    let mut scores = (q.matmul(&keys.t()?)? * f64::from(how.scale))?;
    if let Some(cap) = how.softcap {
        scores = ((scores / f64::from(cap))?.tanh()? * f64::from(cap))?;
    }
    if n > 1 || how.window.is_some() {
        // Row (g, i) is query i (at position pos + i): it sees keys up to pos + i, from the
        // start of its window.
        let mask: Vec<f32> = (0..groups * n)
            .flat_map(|r| {
                let i = r % n;
                let first = how.first(pos + i);
                (0..len).map(
                    move |j| {
                        if j > pos + i || j < first { f32::NEG_INFINITY } else { 0.0 }
                    },
                )
            })
            .collect();
        let mask = Tensor::from_vec(mask, (groups * n, len), q.device())?;
        scores = scores.broadcast_add(&mask)?;
    }
    let weights = match how.sinks {
        Some(sinks) => {
            // Row (g, i) of KV head k is query head k · groups + g: its sink as one more
            // column, dropped after the softmax.
            let column: Vec<f32> = (0..kvh * groups * n).map(|r| sinks[r / n]).collect();
            let column = Tensor::from_vec(column, (kvh, groups * n, 1), q.device())?
                .to_dtype(scores.dtype())?;
            let all = candle_nn::ops::softmax_last_dim(&Tensor::cat(&[&scores, &column], 2)?)?;
            all.narrow(2, 0, len)?
        }
        None => candle_nn::ops::softmax_last_dim(&scores)?,
    };
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
pub fn attend_cpu(
    q: &Tensor,
    jobs: &[AttendJob],
    kv_heads: usize,
    how: Scores<'_>,
) -> Result<Option<Vec<f32>>> {
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
        // A window layer's ring holds its window before the first new token and the new
        // tokens; other layers hold every position.
        let capacity = job.keys.dim(1)?;
        let needed = match how.window {
            Some(w) => (job.pos + job.n).min(w + job.n - 1),
            None => job.pos + job.n,
        };
        if needed > capacity {
            candle_core::bail!("attention: {needed} positions in a cache of {capacity}");
        }
        for i in 0..job.n {
            let (first, len) = (how.first(job.pos + i), job.pos + i + 1);
            rows.push(Row { keys, values, capacity, token: job.token + i, first, len });
        }
    }
    if rows.len() != t {
        candle_core::bail!("attention: jobs cover {} of the step's {t} tokens", rows.len());
    }
    let groups = nh / kv_heads;
    if let Some(sinks) = how.sinks
        && sinks.len() != nh
    {
        candle_core::bail!("attention: {} sinks for {nh} heads", sinks.len());
    }
    let mut out = vec![0f32; t * nh * hd];
    // One item per (row, head): a decode step of one sequence still spreads over the cores.
    out.par_chunks_mut(hd).enumerate().for_each_init(Vec::new, |scores, (item, out)| {
        let (row, h) = (&rows[item / nh], item % nh);
        scores.clear();
        scores.resize(row.len - row.first, 0.0);
        // Position p lies in slot p % capacity (p itself where the buffer holds every position).
        let head = h / groups * row.capacity;
        let at = |j: usize| (head + (row.first + j) % row.capacity) * hd;
        let qh = &q_data[(h * t + row.token) * hd..][..hd];
        let key = |j: usize| &row.keys[at(j)..][..hd];
        let value = |j: usize| &row.values[at(j)..][..hd];
        let sink = how.sinks.map(|s| s[h]);
        attend_one(
            qh,
            key,
            value,
            Logits { scale: how.scale, softcap: how.softcap, sink },
            scores,
            out,
        );
    });
    Ok(Some(out))
}

/// One query head over `scores.len()` positions: scaled dot products with each `key(j)`,
/// softmax, then the weighted sum of the `value(j)` added into `out`. The one loop every CPU
/// attention runs (the decoder's and the packed BERT encoder's), in a fixed order.
///
/// Written with `pulp`'s SIMD vectors for the best level the CPU has (8 lanes of fused
/// multiply-adds with AVX2), chosen at run time: left to the auto-vectorizer for the
/// baseline x86-64 target, the dot products ran two lanes wide and attention over a long
/// context cost a third of a prompt chunk's time. The CPU does not change while a process
/// runs, so every call takes the same path: every score and output is the same operations
/// in the same order whatever else is computed beside it.
pub(crate) fn attend_one<'a>(
    q: &[f32],
    key: impl Fn(usize) -> &'a [f32],
    value: impl Fn(usize) -> &'a [f32],
    logits: Logits,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let Logits { scale, softcap, sink } = logits;
    pulp::Arch::new().dispatch(AttendOne { q, key, value, scale, softcap, sink, scores, out });
}

/// How one head's scores are formed: `scale · q·k`, soft-capped where `softcap` is given
/// (`cap · tanh(s / cap)`), and the head's sink logit where it has one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Logits {
    pub scale: f32,
    pub softcap: Option<f32>,
    pub sink: Option<f32>,
}

/// [`attend_one`]'s arguments, run by `pulp` with the CPU's SIMD type.
struct AttendOne<'q, K, V> {
    q: &'q [f32],
    key: K,
    value: V,
    scale: f32,
    softcap: Option<f32>,
    sink: Option<f32>,
    scores: &'q mut [f32],
    out: &'q mut [f32],
}

/// Output vectors accumulated at once in the weighted sum (8 × 8 lanes with AVX2: a head of
/// 64 in registers).
const PIECE: usize = 8;

impl<'a, K, V> pulp::WithSimd for AttendOne<'_, K, V>
where
    K: Fn(usize) -> &'a [f32],
    V: Fn(usize) -> &'a [f32],
{
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let Self { q, key, value, scale, softcap, sink, scores, out } = self;
        let (qv, qt) = S::as_simd_f32s(q);
        // A score: one chain of multiply-adds over the head, its lanes summed, the tail added.
        let finish = |acc: S::f32s, k: &[f32]| {
            let kt = &k[qv.len() * S::F32_LANES..];
            let tail = qt.iter().zip(kt).fold(0f32, |t, (x, y)| x.mul_add(*y, t));
            (simd.reduce_sum_f32s(acc) + tail) * scale
        };
        // Four keys at a time: four independent chains in flight, each the same operations
        // as a key's alone, so the last keys (alone) are computed no differently.
        let mut four = scores.chunks_exact_mut(4);
        let mut j = 0;
        for s in &mut four {
            let k = [key(j), key(j + 1), key(j + 2), key(j + 3)];
            let kv = k.map(|k| S::as_simd_f32s(k).0);
            let mut acc = [simd.splat_f32s(0.0); 4];
            for (c, x) in qv.iter().enumerate() {
                for (a, kv) in acc.iter_mut().zip(&kv) {
                    *a = simd.mul_add_f32s(*x, kv[c], *a);
                }
            }
            for ((s, a), k) in s.iter_mut().zip(acc).zip(k) {
                *s = finish(a, k);
            }
            j += 4;
        }
        for s in four.into_remainder() {
            let k = key(j);
            let (kv, _) = S::as_simd_f32s(k);
            let acc = qv
                .iter()
                .zip(kv)
                .fold(simd.splat_f32s(0.0), |a, (x, y)| simd.mul_add_f32s(*x, *y, a));
            *s = finish(acc, k);
            j += 1;
        }
        if let Some(cap) = softcap {
            for s in scores.iter_mut() {
                *s = cap * (*s / cap).tanh();
            }
        }
        // The largest logit, the sink's included (a maximum does not depend on the order it
        // is taken in).
        let max = scores.iter().copied().fold(sink.unwrap_or(f32::NEG_INFINITY), f32::max);
        for s in scores.iter_mut() {
            *s = exp(*s - max);
        }
        let (sv, st) = S::as_simd_f32s(scores);
        let sum = sv.iter().fold(simd.splat_f32s(0.0), |a, s| simd.add_f32s(a, *s));
        let sum = st.iter().fold(simd.reduce_sum_f32s(sum), |a, s| a + s);
        let sum = sum + sink.map_or(0.0, |s| exp(s - max));
        // Σ e^s·v first, divided by Σ e^s once at the end; PIECE vectors of the output at a
        // time, so they stay in registers over all positions.
        let inv = simd.splat_f32s(1.0 / sum);
        let lanes = S::F32_LANES;
        let mut at = 0;
        while at < out.len() {
            let width = (out.len() - at).min(PIECE * lanes) / lanes * lanes;
            if width == 0 {
                break;
            }
            let mut acc = [simd.splat_f32s(0.0); PIECE];
            for (j, w) in scores.iter().enumerate() {
                let w = simd.splat_f32s(*w);
                let (v, _) = S::as_simd_f32s(&value(j)[at..at + width]);
                // A whole piece by a fixed-length loop, so the accumulators stay in registers.
                if let Ok(v) = <&[S::f32s; PIECE]>::try_from(v) {
                    for (a, v) in acc.iter_mut().zip(v) {
                        *a = simd.mul_add_f32s(*v, w, *a);
                    }
                } else {
                    for (a, v) in acc.iter_mut().zip(v) {
                        *a = simd.mul_add_f32s(*v, w, *a);
                    }
                }
            }
            let (o, _) = S::as_mut_simd_f32s(&mut out[at..at + width]);
            for (o, a) in o.iter_mut().zip(acc) {
                *o = simd.mul_add_f32s(a, inv, *o);
            }
            at += width;
        }
        let inv = 1.0 / sum;
        for (d, o) in out.iter_mut().enumerate().skip(at) {
            let acc = scores.iter().enumerate().fold(0f32, |a, (j, w)| value(j)[d].mul_add(*w, a));
            *o = acc.mul_add(inv, *o);
        }
    }
}

/// `e^x` for `x <= 0` (a score minus the row's largest) to about 2 ulp, in plain arithmetic
/// that LLVM vectorizes eight lanes at a time: libm's `expf` is a call per value. Each value
/// takes the same operations whether it is computed in a lane or alone.
#[inline(always)]
fn exp(x: f32) -> f32 {
    // e^x = 2^n · e^r with n = round(x / ln 2) and |r| <= ln 2 / 2; e^r by Cephes' expf
    // polynomial. Below -87 the result is under f32's normal range: flushed to 0.
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.max(-87.0);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x <= -87.0 { 0.0 } else { e * scale }
}

/// One query row of [`attend_cpu`].
struct Row<'a> {
    keys: &'a [f32],
    values: &'a [f32],
    capacity: usize,
    token: usize,
    /// The positions it sees: `first..len` (all of them but outside a sliding window).
    first: usize,
    len: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transformer::fixture::noise;

    #[test]
    fn exp_is_within_two_ulp_of_libm_below_zero() {
        let mut worst = 0u32;
        for i in 0..2_000_000 {
            let x = -(i as f32) * 87.0 / 2_000_000.0;
            let (ours, libm) = (exp(x), x.exp());
            worst = worst.max(ours.to_bits().abs_diff(libm.to_bits()));
        }
        assert!(worst <= 2, "{worst} ulp");
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    /// Against the same attention in f64, for heads of several sizes and contexts of several
    /// lengths (tails of the SIMD width and of the 4-key groups included).
    #[test]
    fn attend_one_matches_an_f64_reference() {
        for (hd, len) in [(64, 1), (64, 7), (64, 420), (80, 33), (128, 250), (12, 5)] {
            let q = noise(hd, 1, 1.0);
            let keys = noise(hd * len, 2, 3.0);
            let values = noise(hd * len, 3, 1.0);
            let scale = 1.0 / (hd as f32).sqrt();
            let mut scores = vec![0f32; len];
            let mut out = vec![0f32; hd];
            let key = |j: usize| &keys[j * hd..][..hd];
            let value = |j: usize| &values[j * hd..][..hd];
            // Plain, soft-capped as Gemma 2's are, and with a sink as gpt-oss's (one above
            // every score, one among them).
            for (cap, sink) in
                [(None, None), (Some(2.0f32), None), (None, Some(9.0f32)), (None, Some(0.3))]
            {
                attend_one(
                    &q,
                    key,
                    value,
                    Logits { scale, softcap: cap, sink },
                    &mut scores,
                    &mut out,
                );
                let s: Vec<f64> = (0..len)
                    .map(|j| {
                        let s =
                            q.iter().zip(key(j)).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>()
                                * scale as f64;
                        cap.map_or(s, |c| c as f64 * (s / c as f64).tanh())
                    })
                    .collect();
                let sink = sink.map(f64::from);
                let max = s.iter().copied().fold(sink.unwrap_or(f64::NEG_INFINITY), f64::max);
                let e: Vec<f64> = s.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = e.iter().sum::<f64>() + sink.map_or(0.0, |s| (s - max).exp());
                for (d, o) in out.iter().enumerate() {
                    let want: f64 = (0..len).map(|j| e[j] / sum * value(j)[d] as f64).sum();
                    assert!(
                        (*o as f64 - want).abs() < 5e-7,
                        "hd {hd} len {len} cap {cap:?} sink {sink:?} [{d}]: {o} vs {want}"
                    );
                }
                out.fill(0.0);
            }
        }
    }

    /// A window layer's rows equal the same attention over only the window's positions, and
    /// the matmul form masks the same positions.
    #[test]
    fn a_window_sees_only_its_latest_positions() -> Result<()> {
        let (nh, kvh, hd, pos, n, window) = (4, 2, 16, 9, 5, 4);
        let d = &candle_core::Device::Cpu;
        let q = Tensor::from_vec(noise(nh * n * hd, 1, 1.0), (nh, n, hd), d)?;
        let keys = Tensor::from_vec(noise(kvh * (pos + n) * hd, 2, 1.0), (kvh, pos + n, hd), d)?;
        let values = Tensor::from_vec(noise(kvh * (pos + n) * hd, 3, 1.0), (kvh, pos + n, hd), d)?;
        let how = Scores { window: Some(window), ..Scores::plain(hd) };
        let job = |keys: &Tensor, values: &Tensor, pos| AttendJob {
            token: 0,
            n: 1,
            pos,
            keys: keys.clone(),
            values: values.clone(),
        };
        let windowed =
            attend_cpu(&q.narrow(1, n - 1, 1)?, &[job(&keys, &values, pos + n - 1)], kvh, how)?;
        // The last row sees positions pos + n - window .. pos + n.
        let from = pos + n - window;
        let (k, v) = (
            keys.narrow(1, from, window)?.contiguous()?,
            values.narrow(1, from, window)?.contiguous()?,
        );
        let alone = attend_cpu(
            &q.narrow(1, n - 1, 1)?,
            &[job(&k, &v, window - 1)],
            kvh,
            Scores::plain(hd),
        )?;
        assert_eq!(windowed, alone);
        // The matmul form, every row of the chunk, against the loop; and both with sinks
        // (each head its own), which must change the rows.
        let sinks = [0.5f32, -1.0, 3.0, 0.0];
        let sunk = Scores { sinks: Some(&sinks), ..how };
        let jobs = [AttendJob { token: 0, n, pos, keys: keys.clone(), values: values.clone() }];
        let mut outputs = Vec::new();
        for how in [how, sunk] {
            let matmul =
                attention(&q, &keys, &values, pos, how)?.flatten_all()?.to_vec1::<f32>()?;
            let rows = attend_cpu(&q, &jobs, kvh, how)?
                .ok_or_else(|| candle_core::Error::Msg("not f32".into()))?;
            let worst = matmul.iter().zip(&rows).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-5, "matmul and loop differ by {worst} (sinks {:?})", how.sinks);
            outputs.push(rows);
        }
        assert_ne!(outputs[0], outputs[1], "the sinks changed nothing");
        Ok(())
    }
}

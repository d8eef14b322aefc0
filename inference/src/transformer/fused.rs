//! The decoder's work between its matmuls on the CPU, as single passes over f32 rows: the
//! residual add with the next RMS norm, SiLU (or GELU) of the gate times the up projection, and the
//! step's QKV rows split into heads, per-head norm'd (Qwen3) and rotated.
//!
//! As candle ops this was about twenty small calls a layer, each allocating its output and
//! most of them copying (narrow, contiguous, transpose, rotate, index back). Here each is
//! one loop into a buffer the step reuses. Every value is the expression candle's CPU op
//! computes, in the same order, so the results are the same bits (tested against the ops
//! they replace); each row is computed alone, so they do not depend on the batch.

use rayon::prelude::*;

use super::config::{Activation, RopeConfig};

/// `out = x / rms(x) · w`, for each row of `w.len()` values (candle's `rms_norm`: the sum
/// of squares in row order, then `sqrt(mean + eps)`).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    for (x, out) in x.chunks_exact(w.len()).zip(out.chunks_exact_mut(w.len())) {
        norm_row(x, w, eps, out);
    }
}

fn norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let sum2: f32 = x.iter().map(|v| v * v).sum();
    let m = (sum2 / w.len() as f32 + eps).sqrt();
    for ((o, &v), &a) in out.iter_mut().zip(x).zip(w) {
        *o = v / m * a;
    }
}

/// [`rms_norm`] where there are gains `w`, else `x` as it is (a family without the norm).
pub fn norm_or_copy(x: &[f32], w: Option<&[f32]>, eps: f32, out: &mut [f32]) {
    match w {
        Some(w) => rms_norm(x, w, eps, out),
        None => out.copy_from_slice(x),
    }
}

/// `x += y`, then `out = rms_norm(x) · w` ([`norm_or_copy`]): a residual connection and the
/// norm that reads it.
pub fn add_norm(x: &mut [f32], y: &[f32], w: Option<&[f32]>, eps: f32, out: &mut [f32]) {
    for (x, y) in x.iter_mut().zip(y) {
        *x += y;
    }
    norm_or_copy(x, w, eps, out);
}

/// One projection's outputs among a matmul's: `width` values `offset` into each row of
/// `stride` (a fused QKV or gate/up matmul's parts, or a matmul's own rows).
#[derive(Clone, Copy, Debug)]
pub struct Part<'a> {
    pub data: &'a [f32],
    pub stride: usize,
    pub offset: usize,
    pub width: usize,
}

impl<'a> Part<'a> {
    /// The `index`-th of `parts` projections side by side in `data`, each `width` wide.
    pub fn of(data: &'a [f32], parts: &[usize], index: usize) -> Self {
        let stride = parts.iter().sum();
        let offset = parts[..index].iter().sum();
        Self { data, stride, offset, width: parts[index] }
    }

    /// A matmul's own rows of `width`.
    pub fn whole(data: &'a [f32], width: usize) -> Self {
        Self { data, stride: width, offset: 0, width }
    }

    fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.stride + self.offset..][..self.width]
    }
}

/// Rows of the gated activation `act` of `gate` and `up`, `gate.width` values each, into
/// `out`.
pub fn glu(act: Activation, gate: Part<'_>, up: Part<'_>, out: &mut [f32]) {
    match act {
        Activation::Silu => silu_mul(gate, up, out),
        Activation::GeluTanh => gelu_mul(gate, up, out),
        Activation::SwiGluOai => swiglu_oai_mul(gate, up, out),
    }
}

/// gpt-oss's constants (llama.cpp's and the reference implementation's).
pub const OAI_ALPHA: f32 = 1.702;
pub const OAI_LIMIT: f32 = 7.0;

/// Rows of gpt-oss's clamped SwiGLU, `g · σ(1.702 g) · (u + 1)` with `g = min(gate, 7)` and
/// `u = clamp(up, ±7)`, into `out` (llama.cpp's `swiglu_oai`, in its order).
pub fn swiglu_oai_mul(gate: Part<'_>, up: Part<'_>, out: &mut [f32]) {
    for (i, out) in out.chunks_exact_mut(gate.width).enumerate() {
        for ((o, &g), &u) in out.iter_mut().zip(gate.row(i)).zip(up.row(i)) {
            let (g, u) = (g.min(OAI_LIMIT), u.clamp(-OAI_LIMIT, OAI_LIMIT));
            *o = g / (1.0 + (OAI_ALPHA * -g).exp()) * (u + 1.0);
        }
    }
}

/// Rows of `silu(gate) · up`, `gate.width` values each, into `out`.
pub fn silu_mul(gate: Part<'_>, up: Part<'_>, out: &mut [f32]) {
    for (i, out) in out.chunks_exact_mut(gate.width).enumerate() {
        for ((o, &g), &u) in out.iter_mut().zip(gate.row(i)).zip(up.row(i)) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    }
}

/// Rows of `gelu(gate) · up` with GELU's tanh approximation (Gemma's GeGLU), `gate.width`
/// values each, into `out`, rows split across rayon's threads: [`gelu_tanh`] of each value,
/// the same operations whatever the split.
pub fn gelu_mul(gate: Part<'_>, up: Part<'_>, out: &mut [f32]) {
    let rows_per_task = (GELU_CHUNK / gate.width.max(1)).max(1);
    out.par_chunks_mut(gate.width).enumerate().with_min_len(rows_per_task).for_each(|(i, out)| {
        for ((o, &g), &u) in out.iter_mut().zip(gate.row(i)).zip(up.row(i)) {
            *o = gelu_tanh(g) * u;
        }
    });
}

/// Values per rayon task of [`gelu_mul`]: enough to amortise the split.
const GELU_CHUNK: usize = 16 * 1024;

/// GELU's tanh approximation `x/2 · (1 + tanh(√(2/π) · (x + 0.044715 x³)))`, with [`tanh`]:
/// libm's `tanhf` is a call per value that does not vectorise (a Gemma prefill of 512
/// tokens makes 19 M of them).
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + tanh(SQRT_TWO_OVER_PI * x * (1.0 + 0.044715 * x * x)))
}

/// `tanh(x)` for f32 as `x·P(x²)/Q(x²)` on `x` clamped to ±7.9 (beyond which tanh is ±1 in
/// f32), the minimax form Eigen's `generic_fast_tanh_float` uses: multiplies, adds and one
/// divide, so loops over it vectorise. Within a few ulps of libm (tested).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    if x.abs() < 0.0004 {
        return x;
    }
    let x = x.clamp(-7.905_311, 7.905_311);
    let x2 = x * x;
    let mut p = -2.760_768_5e-16_f32;
    p = p * x2 + 2.000_188e-13;
    p = p * x2 + -8.604_672e-11;
    p = p * x2 + 5.122_297e-8;
    p = p * x2 + 1.485_722_4e-5;
    p = p * x2 + 6.372_619_3e-4;
    p = p * x2 + 4.893_524_6e-3;
    let mut q = 1.198_258_4e-6_f32;
    q = q * x2 + 1.185_347_1e-4;
    q = q * x2 + 2.268_434_6e-3;
    q = q * x2 + 4.893_525e-3;
    x * p / q
}

/// [`gelu_tanh`] of every value of an f32 CPU tensor (candle's `gelu` elsewhere): the CPU's
/// candle-op layers give the bits of the fused ones.
pub fn gelu_tensor(x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
    if !x.device().is_cpu() || x.dtype() != candle_core::DType::F32 {
        return x.gelu();
    }
    let values: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let mut out = vec![0f32; values.len()];
    out.par_chunks_mut(GELU_CHUNK).zip(values.par_chunks(GELU_CHUNK)).for_each(|(o, v)| {
        for (o, v) in o.iter_mut().zip(v) {
            *o = gelu_tanh(*v);
        }
    });
    candle_core::Tensor::from_vec(out, x.dims(), x.device())
}

/// How a step's fused QKV rows become heads.
pub struct Heads<'a> {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Norms of queries and keys, and their epsilon: per head (Qwen3), or over each token's
    /// whole query and key rows where `whole_rows` (OLMo 2).
    pub q_norm: Option<&'a [f32]>,
    pub k_norm: Option<&'a [f32]>,
    pub whole_rows: bool,
    pub eps: f32,
    /// The rotation; `None` for a layer without one (SmolLM3's every fourth).
    pub rope: Option<&'a RopeConfig>,
}

impl Heads<'_> {
    /// The step's `t` rows of query, key and value projections (`[T, heads · hd]`, `[T,
    /// kv_heads · hd]`) as queries `[heads, T, hd]`, keys and values `[kv_heads, T, hd]`;
    /// queries and keys norm'd and rotated by their token's `cos`/`sin` rows (`[T, dims /
    /// 2]`).
    pub fn split(
        &self,
        [q_in, k_in, v_in]: [Part<'_>; 3],
        t: usize,
        cos: &[f32],
        sin: &[f32],
    ) -> [Vec<f32>; 3] {
        let (nh, kvh, hd) = (self.heads, self.kv_heads, self.head_dim);
        let half = self.rope.map_or(0, |r| r.dims / 2);
        let (mut q, mut k, mut v) =
            (vec![0f32; nh * t * hd], vec![0f32; kvh * t * hd], vec![0f32; kvh * t * hd]);
        let mut normed = vec![0f32; hd];
        let (mut q_whole, mut k_whole) = (Vec::new(), Vec::new());
        // Rows norm'd whole first; their heads then go unnormed.
        let (head_q_norm, head_k_norm) =
            if self.whole_rows { (None, None) } else { (self.q_norm, self.k_norm) };
        let whole = |row: &'_ [f32], norm: Option<&[f32]>, buf: &'_ mut Vec<f32>| -> bool {
            match norm.filter(|_| self.whole_rows) {
                Some(w) => {
                    buf.resize(row.len(), 0.0);
                    norm_row(row, w, self.eps, buf);
                    true
                }
                None => false,
            }
        };
        for i in 0..t {
            let (cos, sin) = (&cos[i * half..][..half], &sin[i * half..][..half]);
            let (mut q_row, mut k_row, v_row) = (q_in.row(i), k_in.row(i), v_in.row(i));
            if whole(q_row, self.q_norm, &mut q_whole) {
                q_row = &q_whole;
            }
            if whole(k_row, self.k_norm, &mut k_whole) {
                k_row = &k_whole;
            }
            for h in 0..nh {
                let out = &mut q[(h * t + i) * hd..][..hd];
                self.rotated(&q_row[h * hd..][..hd], head_q_norm, cos, sin, &mut normed, out);
            }
            for h in 0..kvh {
                let out = &mut k[(h * t + i) * hd..][..hd];
                self.rotated(&k_row[h * hd..][..hd], head_k_norm, cos, sin, &mut normed, out);
                v[(h * t + i) * hd..][..hd].copy_from_slice(&v_row[h * hd..][..hd]);
            }
        }
        [q, k, v]
    }

    /// One head: norm'd where `norm` is given, then its first `dims` values rotated (pairs
    /// `(i, i + dims/2)`, or `(2i, 2i + 1)` interleaved), the rest as they are.
    fn rotated(
        &self,
        x: &[f32],
        norm: Option<&[f32]>,
        cos: &[f32],
        sin: &[f32],
        scratch: &mut [f32],
        out: &mut [f32],
    ) {
        let x = match norm {
            Some(w) => {
                norm_row(x, w, self.eps, scratch);
                &*scratch
            }
            None => x,
        };
        let Some(rope) = self.rope else {
            out.copy_from_slice(x);
            return;
        };
        let dims = rope.dims;
        let half = dims / 2;
        if rope.interleaved {
            for i in 0..half {
                let (a, b) = (x[2 * i], x[2 * i + 1]);
                out[2 * i] = a * cos[i] - b * sin[i];
                out[2 * i + 1] = a * sin[i] + b * cos[i];
            }
        } else {
            for i in 0..half {
                let (a, b) = (x[i], x[i + half]);
                out[i] = a * cos[i] - b * sin[i];
                out[i + half] = a * sin[i] + b * cos[i];
            }
        }
        out[dims..].copy_from_slice(&x[dims..]);
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, IndexOp, Tensor};

    use super::*;
    use crate::transformer::config::RopeScaling;

    /// gpt-oss's activation against its definition in f64, on values each side of both
    /// clamps (the gate's above 7 only, the up projection's at ±7).
    #[test]
    fn swiglu_oai_clamps_the_gate_above_and_the_up_projection_both_ways() {
        let gate = [-9.0f32, -7.5, -1.0, 0.0, 0.5, 6.9, 7.0, 8.0, 30.0];
        let up = [9.0f32, -7.5, -8.0, 2.0, -0.5, 7.5, -3.0, 100.0, -100.0];
        let mut out = [0f32; 9];
        swiglu_oai_mul(Part::whole(&gate, 9), Part::whole(&up, 9), &mut out);
        for ((g, u), o) in gate.iter().zip(&up).zip(out) {
            let (g, u) = (f64::from(*g).min(7.0), f64::from(*u).clamp(-7.0, 7.0));
            let want = g / (1.0 + (-1.702 * g).exp()) * (u + 1.0);
            assert!((f64::from(o) - want).abs() <= 1e-5 * want.abs().max(1.0), "{o} vs {want}");
        }
    }
    use crate::transformer::fixture::noise;
    use crate::transformer::rope::Rope;

    #[test]
    fn tanh_and_gelu_are_within_a_few_ulps_of_libm() {
        let (mut tanh_err, mut gelu_err) = (0f64, 0f64);
        for i in -2_000_000..=2_000_000 {
            let x = i as f32 * 5e-6;
            tanh_err = tanh_err.max((f64::from(tanh(x)) - f64::from(x).tanh()).abs());
            let exact = {
                let x = f64::from(x);
                0.5 * x * (1.0 + (0.797_884_560_802_865_4 * x * (1.0 + 0.044715 * x * x)).tanh())
            };
            gelu_err = gelu_err.max((f64::from(gelu_tanh(x)) - exact).abs());
        }
        assert!(tanh_err < 1e-6, "tanh: {tanh_err}");
        assert!(gelu_err < 1e-5, "gelu: {gelu_err}");
    }

    #[test]
    fn heads_are_split_and_rotated_as_candle_does() -> candle_core::Result<()> {
        let (t, nh, kvh, hd) = (3, 4, 2, 16);
        let d = &Device::Cpu;
        // Whole and partial rotation (Phi-style), pairs split in halves or interleaved.
        for (dims, interleaved) in [(16, false), (16, true), (8, false), (8, true)] {
            let rope =
                RopeConfig { theta: 10_000.0, dims, interleaved, scaling: RopeScaling::None };
            let positions = Tensor::new(&[0u32, 7, 30], d)?;
            let (cos, sin) = Rope::new(&rope, d)?.tables(&positions)?;
            let width = (nh + 2 * kvh) * hd;
            let qkv = noise(t * width, 3, 1.0);
            let heads = Heads {
                heads: nh,
                kv_heads: kvh,
                head_dim: hd,
                q_norm: None,
                k_norm: None,
                whole_rows: false,
                eps: 1e-6,
                rope: Some(&rope),
            };
            let widths = [nh * hd, kvh * hd, kvh * hd];
            let parts = [0, 1, 2].map(|i| Part::of(&qkv, &widths, i));
            let cos_values = cos.flatten_all()?.to_vec1::<f32>()?;
            let sin_values = sin.flatten_all()?.to_vec1::<f32>()?;
            let [q, k, v] = heads.split(parts, t, &cos_values, &sin_values);
            // candle: [T, heads * hd] -> [1, heads, T, hd], rotated.
            let all = Tensor::from_vec(qkv.clone(), (t, width), d)?;
            let expect = |from: usize, n: usize, rotate: bool| -> candle_core::Result<Vec<f32>> {
                let x = all.narrow(1, from * hd, n * hd)?.contiguous()?.reshape((t, n, hd))?;
                let x = x.unsqueeze(0)?.transpose(1, 2)?.contiguous()?;
                let x = if rotate { Rope::new(&rope, d)?.apply(&x, &cos, &sin)? } else { x };
                x.i(0)?.flatten_all()?.to_vec1()
            };
            assert_eq!(q, expect(0, nh, true)?, "queries, dims {dims}, interleaved {interleaved}");
            assert_eq!(k, expect(nh, kvh, true)?, "keys, dims {dims}, interleaved {interleaved}");
            assert_eq!(v, expect(nh + kvh, kvh, false)?, "values");
        }
        Ok(())
    }
}

//! Fast CPU matmul of f32 activations by GGUF-quantized weights, for decode steps where
//! candle's `QMatMul` is far from memory bandwidth.
//!
//! [`QuantMatrix`] repacks a candle [`QTensor`] (HF layout `[n, k]`, i.e. `[out, in]`) into
//! separate int8 and f16-scale arrays, four rows interleaved by block: the same bytes as the
//! GGUF file, no f32 copy. A matmul quantizes the activation rows once ([`act`]), then splits
//! the `n` output rows across rayon's threads; each thread keeps a 4-row weight tile in L1
//! while the activation rows go by ([`q8`]), so the weights are read from memory once per
//! call however many sequences are batched (up to ~256 KB of activations per pass).
//!
//! Supported: Q8_0, and Q4_0/Q5_0 through [`repack`] into Q8_0. Other dtypes are an
//! [`Error::UnsupportedWeights`] so the caller keeps candle's `QMatMul`.

mod act;
#[cfg(target_arch = "x86_64")]
mod avx2;
mod q8;
pub mod repack;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Storage, Tensor};
use rayon::prelude::*;

use crate::{Error, Result};
use act::{QK, QuantActs};
use q8::{Block, Q8Rows, TILE};

/// A quantized weight matrix `[n, k]` ready for [`QuantMatrix::matmul`].
#[derive(Debug)]
pub struct QuantMatrix {
    n: usize,
    k: usize,
    /// Q8_0: `n × k/32` blocks of int8 values, in tiles of rows (see [`q8::Q8Rows`]).
    qs: Vec<Block>,
    /// Q8_0: the blocks' f16 scales (raw bits), in the same order.
    d: Vec<u16>,
}

/// Bytes of one GGUF Q8_0 block: an f16 scale then 32 int8 values.
const Q8_0_BYTES: usize = 2 + QK;

/// Below this many multiply-adds a call stays on the calling thread (rayon costs a few µs).
const PARALLEL_MIN_WORK: usize = 1 << 18;

impl QuantMatrix {
    /// Repacks a 2-D CPU `QTensor` `[n, k]`. Unsupported dtypes, shapes or devices are an
    /// [`Error::UnsupportedWeights`]: keep candle's `QMatMul` for those.
    pub fn from_qtensor(qt: &QTensor) -> Result<Self> {
        let unsupported = |why: String| Error::UnsupportedWeights(why);
        let &[n, k] = qt.shape().dims() else {
            return Err(unsupported(format!("shape {:?} is not 2-D", qt.shape().dims())));
        };
        if !qt.device().is_cpu() {
            return Err(unsupported("weights are not on the CPU".into()));
        }
        if qt.dtype() != GgmlDType::Q8_0 {
            return Err(unsupported(format!("dtype {:?}", qt.dtype())));
        }
        if k == 0 || !k.is_multiple_of(QK) {
            return Err(unsupported(format!("k = {k} is not a positive multiple of {QK}")));
        }
        let data = qt.data().map_err(|e| unsupported(format!("reading blocks: {e}")))?;
        let blocks = n * (k / QK);
        if data.len() != blocks * Q8_0_BYTES {
            return Err(unsupported(format!("{} bytes for {blocks} Q8_0 blocks", data.len())));
        }
        // Row-major GGUF blocks into tiles of TILE rows interleaved by block; the last
        // n % TILE rows stay row-major (see q8::Q8Rows).
        let kb = k / QK;
        let (mut qs, mut d) = (Vec::with_capacity(blocks), Vec::with_capacity(blocks));
        let full = n / TILE * TILE;
        let order = (0..full / TILE)
            .flat_map(|t| {
                (0..kb).flat_map(move |b| (0..TILE).map(move |i| (t * TILE + i) * kb + b))
            })
            .chain(full * kb..n * kb);
        for src in order {
            let b = &data[src * Q8_0_BYTES..(src + 1) * Q8_0_BYTES];
            d.push(u16::from_le_bytes([b[0], b[1]]));
            // -128 never comes out of llama.cpp's or candle's Q8_0 quantizer (|w/d| ≤ 127);
            // clamping it keeps `sign(w, x)` in the AVX2 dot from overflowing.
            qs.push(std::array::from_fn(|i| (b[2 + i] as i8).max(-127)));
        }
        Ok(Self { n, k, qs, d })
    }

    /// Output features (`n`, the weight's rows).
    pub fn rows(&self) -> usize {
        self.n
    }

    /// Input features (`k`, the weight's columns).
    pub fn cols(&self) -> usize {
        self.k
    }

    /// The GGUF dtype these weights came from.
    pub fn dtype(&self) -> GgmlDType {
        GgmlDType::Q8_0
    }

    /// Memory held by the weights: the GGUF size of the tensor.
    pub fn bytes(&self) -> usize {
        self.qs.len() * QK + self.d.len() * 2
    }

    /// `x · Wᵀ` for `x` of shape `[.., k]` (f32, CPU): shape `[.., n]`.
    pub fn matmul(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims();
        if dims.last() != Some(&self.k) || x.dtype() != DType::F32 || !x.device().is_cpu() {
            candle_core::bail!(
                "kernels: x must be f32 [.., {}] on the CPU, got {:?} {:?}",
                self.k,
                x.dtype(),
                dims
            );
        }
        let x = x.contiguous()?;
        let (storage, layout) = x.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            candle_core::bail!("kernels: x is not on the CPU")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("kernels: x is not contiguous")
        };
        let xs = &cpu.as_slice::<f32>()?[start..end];
        let mut out = vec![0f32; xs.len() / self.k * self.n];
        self.matmul_slice(xs, &mut out)?;
        let mut shape = dims.to_vec();
        if let Some(last) = shape.last_mut() {
            *last = self.n;
        }
        Tensor::from_vec(out, shape, &Device::Cpu)
    }

    /// `out = x · Wᵀ` for row-major `x` `[m, k]` and `out` `[m, n]`, with `m = x.len() / k`.
    pub fn matmul_slice(&self, x: &[f32], out: &mut [f32]) -> candle_core::Result<()> {
        let (n, k) = (self.n, self.k);
        if !x.len().is_multiple_of(k) || out.len() != x.len() / k * n {
            candle_core::bail!(
                "kernels: x has {} values and out {} for a [{n}, {k}] weight",
                x.len(),
                out.len()
            );
        }
        let m = x.len() / k;
        if m == 0 || n == 0 {
            return Ok(());
        }
        let acts = QuantActs::new(x, k);
        let threads = rayon::current_num_threads();
        if m * n * k < PARALLEL_MIN_WORK || threads == 1 {
            let mut rows: Vec<&mut [f32]> = out.chunks_exact_mut(n).collect();
            self.run_rows(0..n, &acts, &mut rows);
            return Ok(());
        }
        // A few chunks per thread so a thread slowed by other work is helped by the rest.
        let chunk = n.div_ceil(threads * 4).next_multiple_of(TILE);
        let mut parts: Vec<Vec<&mut [f32]>> =
            (0..n.div_ceil(chunk)).map(|_| Vec::with_capacity(m)).collect();
        for row in out.chunks_exact_mut(n) {
            for (part, piece) in parts.iter_mut().zip(row.chunks_mut(chunk)) {
                part.push(piece);
            }
        }
        parts.into_par_iter().enumerate().for_each(|(c, mut rows)| {
            let start = c * chunk;
            self.run_rows(start..(start + chunk).min(n), &acts, &mut rows);
        });
        Ok(())
    }

    /// Weight rows `range` against all activations, into `out` (one slice per activation
    /// row, of `range.len()` values each), with the best kernel this CPU has.
    fn run_rows(&self, range: std::ops::Range<usize>, acts: &QuantActs, out: &mut [&mut [f32]]) {
        let kb = self.k / QK;
        let w = Q8Rows {
            qs: &self.qs[range.start * kb..range.end * kb],
            d: &self.d[range.start * kb..range.end * kb],
            kb,
        };
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = pulp::x86::V3::try_new() {
            return simd.vectorize(Rows { kern: avx2::Avx2(simd), w, acts, out });
        }
        pulp::Arch::new().dispatch(Rows { kern: q8::Portable, w, acts, out })
    }
}

/// One thread's share of a matmul as a `pulp` operation. A struct with an `#[inline(always)]`
/// `call`, not a closure: a closure's `FnOnce` shim is not inlined into pulp's
/// `#[target_feature]` function, and then no intrinsic is inlined either (measured: each
/// became a call).
struct Rows<'a, 'o, 's, K> {
    kern: K,
    w: Q8Rows<'a>,
    acts: &'a QuantActs,
    out: &'o mut [&'s mut [f32]],
}

impl<K: q8::Q8Kernel> pulp::NullaryFnOnce for Rows<'_, '_, '_, K> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        q8::matmul_rows(self.kern, self.w, self.acts, self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The portable kernel (used without AVX2) agrees with the one this CPU dispatches to.
    #[test]
    fn portable_kernel_matches_dispatched() -> candle_core::Result<()> {
        let (n, k, m) = (4 * 9 + 3, 96, 5);
        let w = Tensor::randn(0f32, 0.1, (n, k), &Device::Cpu)?;
        let qm = QuantMatrix::from_qtensor(&QTensor::quantize(&w, GgmlDType::Q8_0)?)
            .map_err(candle_core::Error::wrap)?;
        let x: Vec<f32> = Tensor::randn(0f32, 1.0, m * k, &Device::Cpu)?.to_vec1()?;
        let mut fast = vec![0f32; m * n];
        qm.matmul_slice(&x, &mut fast)?;
        let mut slow = vec![0f32; m * n];
        let acts = QuantActs::new(&x, k);
        let w = Q8Rows { qs: &qm.qs, d: &qm.d, kb: k / QK };
        let mut out: Vec<&mut [f32]> = slow.chunks_exact_mut(n).collect();
        pulp::Arch::new().dispatch(Rows { kern: q8::Portable, w, acts: &acts, out: &mut out });
        for (a, b) in fast.iter().zip(&slow) {
            assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{a} vs {b}");
        }
        Ok(())
    }

    #[test]
    fn q8_minus_128_is_clamped() -> candle_core::Result<()> {
        let w = Tensor::ones((1, 32), DType::F32, &Device::Cpu)?;
        let qt = QTensor::quantize(&w, GgmlDType::Q8_0)?;
        let mut raw = qt.data()?.into_owned();
        raw[2..].fill(0x80); // every weight -128
        let qt = QTensor::new(
            candle_core::quantized::QStorage::from_data(raw.into(), &Device::Cpu, GgmlDType::Q8_0)?,
            (1, 32),
        )?;
        let qm = QuantMatrix::from_qtensor(&qt).map_err(candle_core::Error::wrap)?;
        let mut out = [0f32; 1];
        qm.matmul_slice(&[-1f32; 32], &mut out)?;
        // d = 1/127 from quantizing ones; 32 × (-127 · d) × (-1) = 32.
        assert!((out[0] - 32.0).abs() < 1e-2, "{}", out[0]);
        Ok(())
    }
}

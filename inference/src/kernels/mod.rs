//! Fast CPU matmuls whose every output is computed the same way whatever the batch.
//!
//! [`QuantMatrix`] repacks a candle [`QTensor`] (HF layout `[n, k]`, i.e. `[out, in]`) into
//! blocks of 32 values with their scales ([`blocks`]), four rows interleaved by block, at
//! about the GGUF file's size (4-bit values stay 4-bit), no f32 copy. A matmul quantizes the activation rows
//! once ([`act`]), then splits the `n` output rows across rayon's threads; each thread keeps
//! a 4-row weight tile in L1 while the activation rows go by ([`q8`]), so the weights are
//! read from memory once per call however many sequences are batched (up to ~256 KB of
//! activations per pass). Supported: [`SUPPORTED`] (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and the
//! k-quants Q2_K to Q6_K). Other dtypes are an [`Error::UnsupportedWeights`] so the caller
//! keeps candle's `QMatMul`.
//!
//! [`DenseMatrix`] does the same for f32 weights ([`dense`]).

mod act;
#[cfg(target_arch = "x86_64")]
mod avx2;
mod blocks;
mod dense;
mod q8;
pub mod repack;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Storage, Tensor};
use rayon::prelude::*;

use crate::{Error, Result};
use act::{QK, QuantActs};
use blocks::{Decoded, Vals};
pub use dense::DenseMatrix;
use q8::{Block, Nibbles, QRows, Scales, TILE, Unsigned, Values};

/// A quantized weight matrix `[n, k]` ready for [`QuantMatrix::matmul`].
#[derive(Debug)]
pub struct QuantMatrix {
    n: usize,
    k: usize,
    /// The GGUF type the blocks came from.
    dtype: GgmlDType,
    /// `n × k/32` blocks of values, in tiles of rows (see [`q8::Values`]).
    values: Stored,
    /// The blocks' scales, [`QuantMatrix::halves`] per block, in the same order.
    d: StoredScales,
    /// The blocks' offsets for unsigned values (empty for signed ones), like `d`.
    m: StoredScales,
    /// Scales per block: 2 for k-quants with a scale per 16 values.
    halves: usize,
}

/// How the values are held (see [`q8::Values`]).
#[derive(Debug)]
enum Stored {
    Signed(Vec<Block>),
    Bytes(Vec<Block>),
    Nibbles(Vec<Nibbles>),
}

/// Scales as the file has them (f16 bits) or as the k-quants' f32 products.
#[derive(Debug)]
enum StoredScales {
    F16(Vec<u16>),
    F32(Vec<f32>),
}

impl StoredScales {
    fn new(f16: bool) -> Self {
        if f16 { Self::F16(Vec::new()) } else { Self::F32(Vec::new()) }
    }

    fn push(&mut self, v: f32) {
        match self {
            // Exact: the classic types' scales and offsets are f16 values.
            Self::F16(s) => s.push(half::f16::from_f32(v).to_bits()),
            Self::F32(s) => s.push(v),
        }
    }

    fn all(&self) -> Scales<'_> {
        match self {
            Self::F16(s) => Scales::F16(s),
            Self::F32(s) => Scales::F32(s),
        }
    }

    fn slice(&self, r: std::ops::Range<usize>) -> Scales<'_> {
        match self {
            Self::F16(s) if s.is_empty() => Scales::F16(&[]),
            Self::F32(s) if s.is_empty() => Scales::F32(&[]),
            Self::F16(s) => Scales::F16(&s[r]),
            Self::F32(s) => Scales::F32(&s[r]),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Self::F16(s) => s.len() * 2,
            Self::F32(s) => s.len() * 4,
        }
    }
}

/// The GGUF types [`QuantMatrix`] multiplies.
pub const SUPPORTED: [GgmlDType; 10] = [
    GgmlDType::Q8_0,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

/// Below this many multiply-adds a call stays on the calling thread (rayon costs a few µs).
const PARALLEL_MIN_WORK: usize = 1 << 18;

/// Runs `run(weight_rows, out)` over the output columns `0..n` of `out` (`[m, n]` row-major):
/// on the calling thread for small products (`work` multiply-adds), else in chunks of
/// multiples of `tile` rows across rayon's threads, a few chunks per thread so a thread
/// slowed by other work is helped by the rest. `out` gets one slice per activation row.
/// Chunks start at multiples of `tile`, so every weight row goes through the same tile
/// path whatever the thread count.
fn split_rows(
    out: &mut [f32],
    n: usize,
    work: usize,
    tile: usize,
    run: impl Fn(std::ops::Range<usize>, &mut [&mut [f32]]) + Sync,
) {
    let threads = rayon::current_num_threads();
    if work < PARALLEL_MIN_WORK || threads == 1 {
        let mut rows: Vec<&mut [f32]> = out.chunks_exact_mut(n).collect();
        return run(0..n, &mut rows);
    }
    let chunk = n.div_ceil(threads * 4).next_multiple_of(tile);
    let m = out.len() / n;
    let mut parts: Vec<Vec<&mut [f32]>> =
        (0..n.div_ceil(chunk)).map(|_| Vec::with_capacity(m)).collect();
    for row in out.chunks_exact_mut(n) {
        for (part, piece) in parts.iter_mut().zip(row.chunks_mut(chunk)) {
            part.push(piece);
        }
    }
    parts.into_par_iter().enumerate().for_each(|(c, mut rows)| {
        let start = c * chunk;
        run(start..(start + chunk).min(n), &mut rows);
    });
}

/// `x · Wᵀ` for `x` of shape `[.., k]` (f32, CPU) through `kernel` on slices: shape `[.., n]`.
fn matmul_tensor(
    x: &Tensor,
    k: usize,
    n: usize,
    kernel: impl FnOnce(&[f32], &mut [f32]) -> candle_core::Result<()>,
) -> candle_core::Result<Tensor> {
    let dims = x.dims();
    if dims.last() != Some(&k) || x.dtype() != DType::F32 || !x.device().is_cpu() {
        candle_core::bail!(
            "kernels: x must be f32 [.., {k}] on the CPU, got {:?} {:?}",
            x.dtype(),
            dims
        );
    }
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { candle_core::bail!("kernels: x is not on the CPU") };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("kernels: x is not contiguous")
    };
    let xs = &cpu.as_slice::<f32>()?[start..end];
    let mut out = vec![0f32; xs.len() / k * n];
    kernel(xs, &mut out)?;
    let mut shape = dims.to_vec();
    if let Some(last) = shape.last_mut() {
        *last = n;
    }
    Tensor::from_vec(out, shape, &Device::Cpu)
}

impl DenseMatrix {
    /// The f32 CPU tensor `w` `[n, k]` (other dtypes are converted), or `None` when it is
    /// not 2-D or not on the CPU.
    pub fn from_tensor(w: &Tensor) -> candle_core::Result<Option<Self>> {
        let Ok((n, k)) = w.dims2() else { return Ok(None) };
        if !w.device().is_cpu() {
            return Ok(None);
        }
        let values = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Self::new(values, n, k))
    }

    /// `x · Wᵀ` for `x` of shape `[.., k]` (f32, CPU): shape `[.., n]`.
    pub fn matmul(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        matmul_tensor(x, self.cols(), self.rows(), |x, out| {
            self.matmul_slice(x, out).map_err(candle_core::Error::msg)
        })
    }
}

impl QuantMatrix {
    /// Repacks a 2-D CPU `QTensor` `[n, k]` of a [`SUPPORTED`] type. Other dtypes, shapes or
    /// devices are an [`Error::UnsupportedWeights`]: keep candle's `QMatMul` for those.
    pub fn from_qtensor(qt: &QTensor) -> Result<Self> {
        let unsupported = |why: String| Error::UnsupportedWeights(why);
        let &[n, k] = qt.shape().dims() else {
            return Err(unsupported(format!("shape {:?} is not 2-D", qt.shape().dims())));
        };
        if !qt.device().is_cpu() {
            return Err(unsupported("weights are not on the CPU".into()));
        }
        let dtype = qt.dtype();
        let Some((size, per_group)) = blocks::group(dtype) else {
            return Err(unsupported(format!("dtype {dtype:?}")));
        };
        if k == 0 || !k.is_multiple_of(per_group) {
            return Err(unsupported(format!("k = {k} is not a positive multiple of {per_group}")));
        }
        let data = qt.data().map_err(|e| unsupported(format!("reading blocks: {e}")))?;
        let groups = n * (k / per_group);
        if data.len() != groups * size {
            return Err(unsupported(format!("{} bytes for {groups} {dtype:?} blocks", data.len())));
        }
        // Decode row by row, then put the blocks in tiles of TILE rows interleaved by block;
        // the last n % TILE rows stay row-major (see q8::Values).
        let kb = k / QK;
        let halves = blocks::halves(dtype);
        let f16 = blocks::f16_scales(dtype);
        let (mut d, mut m) = (StoredScales::new(f16), StoredScales::new(f16));
        let mut values = None;
        let mut row = Vec::with_capacity(kb);
        let mut tile: Vec<Vec<Decoded>> = Vec::with_capacity(TILE);
        for (r, bytes) in data.chunks_exact(size * (k / per_group)).enumerate() {
            let mut decoded = std::mem::replace(&mut row, Vec::with_capacity(kb));
            for group in bytes.chunks_exact(size) {
                blocks::decode(dtype, group, &mut decoded);
            }
            tile.push(decoded);
            if tile.len() < TILE && r < n / TILE * TILE {
                continue;
            }
            // A full tile (block by block, row by row within), or one row past the tiles.
            let mut iters: Vec<_> = tile.drain(..).map(Vec::into_iter).collect();
            for _ in 0..kb {
                for it in &mut iters {
                    let Some(b) = it.next() else {
                        return Err(unsupported(format!("short row in {dtype:?}")));
                    };
                    for h in 0..halves {
                        d.push(b.d[h]);
                        if !matches!(b.vals, Vals::Signed(_)) {
                            m.push(b.m[h]);
                        }
                    }
                    let store = values.get_or_insert_with(|| match b.vals {
                        Vals::Signed(_) => Stored::Signed(Vec::with_capacity(n * kb)),
                        Vals::Bytes(_) => Stored::Bytes(Vec::with_capacity(n * kb)),
                        Vals::Nibbles(_) => Stored::Nibbles(Vec::with_capacity(n * kb)),
                    });
                    match (b.vals, store) {
                        (Vals::Signed(q), Stored::Signed(v))
                        | (Vals::Bytes(q), Stored::Bytes(v)) => v.push(q),
                        (Vals::Nibbles(q), Stored::Nibbles(v)) => v.push(q),
                        _ => return Err(unsupported(format!("mixed block kinds in {dtype:?}"))),
                    }
                }
            }
        }
        let values = values.unwrap_or(Stored::Signed(Vec::new()));
        Ok(Self { n, k, dtype, values, d, m, halves })
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
        self.dtype
    }

    /// Memory held by the weights.
    pub fn bytes(&self) -> usize {
        let values = match &self.values {
            Stored::Signed(v) | Stored::Bytes(v) => v.len() * QK,
            Stored::Nibbles(v) => v.len() * QK / 2,
        };
        values + self.d.bytes() + self.m.bytes()
    }

    /// Row `r` of the weights as f32 (the same values as candle's dequantization), for
    /// embedding lookups from a quantized table.
    pub fn row(&self, r: usize, out: &mut [f32]) {
        let kb = self.k / QK;
        let full = self.n / TILE * TILE;
        let h = self.halves;
        let (d, m) = (self.d.all(), self.m.all());
        for b in 0..kb {
            // Where block b of row r sits in the tiled order.
            let i = if r < full { (r / TILE * kb + b) * TILE + r % TILE } else { r * kb + b };
            let out = &mut out[b * QK..(b + 1) * QK];
            let q = match &self.values {
                Stored::Signed(v) => v[i].map(f32::from),
                Stored::Bytes(v) => v[i].bytes().map(f32::from),
                Stored::Nibbles(v) => v[i].bytes().map(f32::from),
            };
            for (j, (o, q)) in out.iter_mut().zip(q).enumerate() {
                let s = i * h + j * h / QK;
                *o = q * d.get(s);
                if !m.is_empty() {
                    *o += m.get(s);
                }
            }
        }
    }

    /// `x · Wᵀ` for `x` of shape `[.., k]` (f32, CPU): shape `[.., n]`.
    pub fn matmul(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        matmul_tensor(x, self.k, self.n, |x, out| self.matmul_slice(x, out))
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
        split_rows(out, n, m * n * k, TILE, |rows, out| self.run_rows(rows, &acts, out));
        Ok(())
    }

    /// Weight rows `range` against all activations, into `out` (one slice per activation
    /// row, of `range.len()` values each), with the best kernel this CPU has.
    fn run_rows(&self, range: std::ops::Range<usize>, acts: &QuantActs, out: &mut [&mut [f32]]) {
        let w = self.qrows(range);
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = pulp::x86::V3::try_new() {
            return simd.vectorize(Rows { kern: avx2::Avx2(simd), w, acts, out });
        }
        pulp::Arch::new().dispatch(Rows { kern: q8::Portable, w, acts, out })
    }

    /// The weight rows `range` (starting at a multiple of [`TILE`]) for the kernels.
    fn qrows(&self, range: std::ops::Range<usize>) -> QRows<'_> {
        let kb = self.k / QK;
        let blocks = range.start * kb..range.end * kb;
        let scales = blocks.start * self.halves..blocks.end * self.halves;
        QRows {
            values: match &self.values {
                Stored::Signed(v) => Values::Signed(&v[blocks.clone()]),
                Stored::Bytes(v) => Values::Bytes(&v[blocks.clone()]),
                Stored::Nibbles(v) => Values::Nibbles(&v[blocks]),
            },
            d: self.d.slice(scales.clone()),
            m: self.m.slice(scales),
            kb,
            halves: self.halves,
        }
    }
}

/// One thread's share of a matmul as a `pulp` operation. A struct with an `#[inline(always)]`
/// `call`, not a closure: a closure's `FnOnce` shim is not inlined into pulp's
/// `#[target_feature]` function, and then no intrinsic is inlined either (measured: each
/// became a call).
struct Rows<'a, 'o, 's, K> {
    kern: K,
    w: QRows<'a>,
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

    /// The portable kernel (used without AVX2) agrees with the one this CPU dispatches to,
    /// for every supported type.
    #[test]
    fn portable_kernel_matches_dispatched() -> candle_core::Result<()> {
        let (n, k, m) = (4 * 9 + 3, 512, 5);
        let w = Tensor::randn(0f32, 0.1, (n, k), &Device::Cpu)?;
        let x: Vec<f32> = Tensor::randn(0f32, 1.0, m * k, &Device::Cpu)?.to_vec1()?;
        let acts = QuantActs::new(&x, k);
        for dtype in SUPPORTED {
            let qm = QuantMatrix::from_qtensor(&QTensor::quantize(&w, dtype)?)
                .map_err(candle_core::Error::wrap)?;
            let mut fast = vec![0f32; m * n];
            qm.matmul_slice(&x, &mut fast)?;
            let mut slow = vec![0f32; m * n];
            let mut out: Vec<&mut [f32]> = slow.chunks_exact_mut(n).collect();
            let (acts, w) = (&acts, qm.qrows(0..n));
            pulp::Arch::new().dispatch(Rows { kern: q8::Portable, w, acts, out: &mut out });
            for (a, b) in fast.iter().zip(&slow) {
                assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{dtype:?}: {a} vs {b}");
            }
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

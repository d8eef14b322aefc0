//! Fast CPU matmuls whose every output is computed the same way whatever the batch.
//!
//! [`QuantMatrix`] repacks a candle [`QTensor`] (HF layout `[n, k]`, i.e. `[out, in]`) into
//! separate value and f16-scale arrays ([`blocks`]), four rows interleaved by block, at about
//! the GGUF file's size (4-bit values stay 4-bit), no f32 copy. A matmul quantizes the activation rows
//! once ([`act`]), then splits the `n` output rows across rayon's threads; each thread keeps
//! a 4-row weight tile in L1 while the activation rows go by ([`q8`]), so the weights are
//! read from memory once per call however many sequences are batched (up to ~256 KB of
//! activations per pass). Supported: [`SUPPORTED`] (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, and the
//! k-quants Q2_K..Q6_K through their own kernel, [`superblock`]). Q8_0 weights whose values
//! all come from IQ4's or MXFP4's table (those files' tensors, transcoded by the GGUF reader)
//! are held as 4-bit codes ([`codes`]). Other dtypes are an [`Error::UnsupportedWeights`] so
//! the caller keeps candle's `QMatMul`.
//!
//! [`DenseMatrix`] does the same for f32 weights ([`dense`]); [`PanelMatrix`] packs f32
//! weights for hundreds of activation rows per call (an encoder's tokens) on AVX-512
//! ([`panel`]).

mod act;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod blocks;
pub mod codes;
mod dense;
#[cfg(target_arch = "x86_64")]
mod panel;
mod q8;
pub mod repack;
mod superblock;
#[cfg(target_arch = "x86_64")]
mod vnni;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Storage, Tensor};
use rayon::prelude::*;

use crate::{Error, Result};
use act::{Needs, QK, QuantActs};
use blocks::{Decoded, Vals};
use codes::{Coded, Fp4, Iq4};
pub use dense::DenseMatrix;
#[cfg(target_arch = "x86_64")]
pub use panel::PanelMatrix;
use q8::{Block, Fives, Nibbles, QRows, TILE, Unsigned, Values};
use superblock::{SuperActs, SuperMatrix};

/// A quantized weight matrix `[n, k]` ready for [`QuantMatrix::matmul`].
#[derive(Debug)]
pub struct QuantMatrix {
    n: usize,
    k: usize,
    /// The GGUF type the blocks came from.
    dtype: GgmlDType,
    weights: Weights,
}

#[derive(Debug)]
enum Weights {
    /// The classic types, in blocks of 32 values.
    Blocks(Blocks),
    /// The k-quants.
    Super(SuperMatrix),
}

/// Weights in blocks of 32 values.
#[derive(Debug)]
struct Blocks {
    /// `n × k/32` blocks of values, in tiles of rows (see [`q8::Values`]).
    values: Stored,
    /// The blocks' f16 scales (raw bits), in the same order.
    d: Vec<u16>,
    /// The blocks' f16 offsets for unsigned values (empty for signed ones, and where
    /// `m_of_d` gives them).
    m: Vec<u16>,
    /// Offsets as a fixed multiple of the scale (Q4_0: -8, Q5_0: -16), not stored.
    m_of_d: Option<i32>,
}

/// How the values are held (see [`q8::Values`]).
#[derive(Debug)]
enum Stored {
    Signed(Vec<Block>),
    Iq4(Vec<Coded<Iq4>>),
    Fp4(Vec<Coded<Fp4>>),
    Nibbles(Vec<Nibbles>),
    Fives(Vec<Fives>),
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

/// The activation rows `m` of a product of `x` (`x_len` values) and an `[n, k]` weight into
/// `out` (`out_len` values), or what is wrong with the lengths.
fn product_rows(x_len: usize, out_len: usize, n: usize, k: usize) -> Result<usize, String> {
    if !x_len.is_multiple_of(k) || out_len != x_len / k * n {
        return Err(format!(
            "kernels: x has {x_len} values and out {out_len} for a [{n}, {k}] weight"
        ));
    }
    Ok(x_len / k)
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
    /// The CPU tensor `w` `[n, k]`: f16 and bf16 stay as they are, other dtypes become f32;
    /// `None` when it is not 2-D or not on the CPU.
    pub fn from_tensor(w: &Tensor) -> candle_core::Result<Option<Self>> {
        let Ok((n, k)) = w.dims2() else { return Ok(None) };
        if !w.device().is_cpu() {
            return Ok(None);
        }
        let w = w.flatten_all()?;
        let values = match w.dtype() {
            DType::F16 => dense::Values::F16(w.to_vec1()?),
            DType::BF16 => dense::Values::BF16(w.to_vec1()?),
            _ => dense::Values::F32(w.to_dtype(DType::F32)?.to_vec1()?),
        };
        Ok(Self::from_values(values, n, k))
    }

    /// A 2-D F16 or BF16 GGUF tensor on the CPU, its values kept as they are; `None` for
    /// other dtypes, shapes or devices.
    pub fn from_qtensor(qt: &QTensor) -> Option<Self> {
        let &[n, k] = qt.shape().dims() else { return None };
        if !qt.device().is_cpu() {
            return None;
        }
        let data = qt.data().ok()?;
        let halves = data.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        let values = match qt.dtype() {
            GgmlDType::F16 => dense::Values::F16(halves.map(half::f16::from_bits).collect()),
            GgmlDType::BF16 => dense::Values::BF16(halves.map(half::bf16::from_bits).collect()),
            _ => return None,
        };
        Self::from_values(values, n, k)
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
        let Some((size, per_block)) = blocks::group(dtype) else {
            return Err(unsupported(format!("dtype {dtype:?}")));
        };
        if k == 0 || !k.is_multiple_of(per_block) {
            return Err(unsupported(format!("k = {k} is not a positive multiple of {per_block}")));
        }
        let data = qt.data().map_err(|e| unsupported(format!("reading blocks: {e}")))?;
        let count = n * (k / per_block);
        if data.len() != count * size {
            return Err(unsupported(format!("{} bytes for {count} {dtype:?} blocks", data.len())));
        }
        let weights = if blocks::is_super(dtype) {
            Weights::Super(SuperMatrix::new(dtype, n, k, &data, size))
        } else {
            Weights::Blocks(Blocks::new(dtype, n, k, &data, size)?)
        };
        Ok(Self { n, k, dtype, weights })
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
        match &self.weights {
            Weights::Blocks(b) => b.bytes(),
            Weights::Super(s) => s.bytes(),
        }
    }

    /// Row `r` of the weights as f32 (the same values as candle's dequantization), for
    /// embedding lookups from a quantized table.
    pub fn row(&self, r: usize, out: &mut [f32]) {
        match &self.weights {
            Weights::Blocks(b) => b.row(self.n, self.k, r, out),
            Weights::Super(s) => s.row(r, out),
        }
    }

    /// `x · Wᵀ` for `x` of shape `[.., k]` (f32, CPU): shape `[.., n]`.
    pub fn matmul(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        matmul_tensor(x, self.k, self.n, |x, out| self.matmul_slice(x, out))
    }

    /// `out = x · Wᵀ` for row-major `x` `[m, k]` and `out` `[m, n]`, with `m = x.len() / k`.
    pub fn matmul_slice(&self, x: &[f32], out: &mut [f32]) -> candle_core::Result<()> {
        let (n, k) = (self.n, self.k);
        let m = product_rows(x.len(), out.len(), n, k).map_err(candle_core::Error::msg)?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        match &self.weights {
            Weights::Blocks(b) => {
                let acts = QuantActs::new(x, k, b.needs(m, exact_u8_dot()));
                split_rows(out, n, m * n * k, TILE, |rows, out| b.run_rows(k, rows, &acts, out));
            }
            Weights::Super(s) => {
                let acts = SuperActs::new(x, k);
                split_rows(out, n, m * n * k, TILE, |rows, out| run_super(s, rows, &acts, out));
            }
        }
        Ok(())
    }
}

impl Blocks {
    /// Row-major GGUF blocks into tiles of TILE rows interleaved by block; the last
    /// n % TILE rows stay row-major (see q8::Values).
    fn new(dtype: GgmlDType, n: usize, k: usize, data: &[u8], size: usize) -> Result<Self> {
        let kb = k / QK;
        let blocks = n * kb;
        let full = n / TILE * TILE;
        let order = (0..full / TILE)
            .flat_map(|t| {
                (0..kb).flat_map(move |b| (0..TILE).map(move |i| (t * TILE + i) * kb + b))
            })
            .chain(full * kb..n * kb);
        let (mut d, mut m) = (Vec::with_capacity(blocks), Vec::new());
        let m_of_d = match dtype {
            GgmlDType::Q4_0 => Some(-8),
            GgmlDType::Q5_0 => Some(-16),
            _ => None,
        };
        let mut values = None;
        let mut decoded = Vec::with_capacity(1);
        for src in order {
            blocks::decode(dtype, &data[src * size..(src + 1) * size], &mut decoded);
            let Some(Decoded { vals, d: scale, m: min }) = decoded.pop() else {
                return Err(Error::UnsupportedWeights(format!("dtype {dtype:?}")));
            };
            // Exact: the classic types' scales and offsets are f16 values.
            d.push(half::f16::from_f32(scale).to_bits());
            let store = values.get_or_insert_with(|| match vals {
                Vals::Signed(_) => Stored::Signed(Vec::with_capacity(blocks)),
                Vals::Nibbles(_) => Stored::Nibbles(Vec::with_capacity(blocks)),
                Vals::Fives(_) => Stored::Fives(Vec::with_capacity(blocks)),
            });
            match (vals, store) {
                (Vals::Signed(q), Stored::Signed(v)) => v.push(q),
                (Vals::Nibbles(q), Stored::Nibbles(v)) => {
                    if m_of_d.is_none() {
                        m.push(half::f16::from_f32(min).to_bits());
                    }
                    v.push(q);
                }
                (Vals::Fives(q), Stored::Fives(v)) => {
                    if m_of_d.is_none() {
                        m.push(half::f16::from_f32(min).to_bits());
                    }
                    v.push(q);
                }
                _ => {
                    return Err(Error::UnsupportedWeights(format!("mixed blocks in {dtype:?}")));
                }
            }
        }
        let values = match values {
            Some(Stored::Signed(v)) => Stored::coded(v),
            Some(values) => values,
            None => Stored::Signed(Vec::new()),
        };
        Ok(Self { values, d, m, m_of_d })
    }

    fn bytes(&self) -> usize {
        let values = match &self.values {
            Stored::Signed(v) => v.len() * QK,
            Stored::Iq4(v) => v.len() * QK / 2,
            Stored::Fp4(v) => v.len() * QK / 2,
            Stored::Nibbles(v) => v.len() * QK / 2,
            Stored::Fives(v) => v.len() * (QK / 2 + 4),
        };
        values + (self.d.len() + self.m.len()) * 2
    }

    /// What a kernel needs of the activations for these weights and `m` activation rows:
    /// signed values run as unsigned ones (`w + 128`, see [`q8`]) where the kernel's dot
    /// takes any unsigned byte (`any_u8`: AVX-512 VNNI) and enough rows share each
    /// unpacked tile.
    fn needs(&self, m: usize, any_u8: bool) -> Needs {
        if self.values.is_signed() {
            return if any_u8 && m >= q8::UNPACK_ROWS { Needs::Shifts(-128) } else { Needs::Abs };
        }
        match self.m_of_d {
            Some(f) => Needs::Shifts(f),
            None => Needs::Sums,
        }
    }

    /// Block `i`'s offset (its scale `d` given).
    fn offset(&self, i: usize, d: f32) -> f32 {
        match self.m_of_d {
            Some(f) => f as f32 * d,
            None => act::f16_to_f32(self.m[i]),
        }
    }

    /// Row `r` of `n` rows of `k` values as f32.
    fn row(&self, n: usize, k: usize, r: usize, out: &mut [f32]) {
        let kb = k / QK;
        let full = n / TILE * TILE;
        for b in 0..kb {
            // Where block b of row r sits in the tiled order.
            let i = if r < full { (r / TILE * kb + b) * TILE + r % TILE } else { r * kb + b };
            let d = act::f16_to_f32(self.d[i]);
            let out = &mut out[b * QK..(b + 1) * QK];
            match &self.values {
                Stored::Signed(v) => signed_row(&v[i], d, out),
                Stored::Iq4(v) => signed_row(&v[i], d, out),
                Stored::Fp4(v) => signed_row(&v[i], d, out),
                Stored::Nibbles(v) => {
                    let m = self.offset(i, d);
                    for (o, q) in out.iter_mut().zip(v[i].bytes()) {
                        *o = f32::from(q) * d + m;
                    }
                }
                Stored::Fives(v) => {
                    let m = self.offset(i, d);
                    for (o, q) in out.iter_mut().zip(v[i].bytes()) {
                        *o = f32::from(q) * d + m;
                    }
                }
            }
        }
    }

    /// Weight rows `range` against all activations, into `out` (one slice per activation
    /// row, of `range.len()` values each), with the best kernel this CPU has.
    fn run_rows(
        &self,
        k: usize,
        range: std::ops::Range<usize>,
        acts: &QuantActs,
        out: &mut [&mut [f32]],
    ) {
        let w = self.qrows(k, range);
        #[cfg(target_arch = "x86_64")]
        if let Some((simd, kern)) = avx512::kernel() {
            return simd.vectorize(Rows { kern, w, acts, out });
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = pulp::x86::V3::try_new() {
            return simd.vectorize(Rows { kern: avx2::Avx2(simd, avx2::Madd), w, acts, out });
        }
        pulp::Arch::new().dispatch(Rows { kern: q8::Portable, w, acts, out })
    }

    /// The weight rows `range` (starting at a multiple of [`TILE`]) for the kernels.
    fn qrows(&self, k: usize, range: std::ops::Range<usize>) -> QRows<'_> {
        let kb = k / QK;
        let blocks = range.start * kb..range.end * kb;
        QRows {
            values: match &self.values {
                Stored::Signed(v) => Values::Signed(&v[blocks.clone()]),
                Stored::Iq4(v) => Values::Iq4(&v[blocks.clone()]),
                Stored::Fp4(v) => Values::Fp4(&v[blocks.clone()]),
                Stored::Nibbles(v) => Values::Nibbles(&v[blocks.clone()]),
                Stored::Fives(v) => Values::Fives(&v[blocks.clone()]),
            },
            d: &self.d[blocks.clone()],
            m: if self.m.is_empty() { &[] } else { &self.m[blocks] },
            m_of_d: self.m_of_d,
            kb,
        }
    }
}

impl Stored {
    /// Signed values as 4-bit codes where they all come from one table ([`codes`]), else as
    /// they are.
    fn coded(v: Vec<Block>) -> Self {
        if let Some(c) = codes::encode::<Fp4>(&v) {
            return Self::Fp4(c);
        }
        if let Some(c) = codes::encode::<Iq4>(&v) {
            return Self::Iq4(c);
        }
        Self::Signed(v)
    }

    fn is_signed(&self) -> bool {
        matches!(self, Self::Signed(_) | Self::Iq4(_) | Self::Fp4(_))
    }
}

/// One block of signed values at scale `d` as f32.
fn signed_row(q: &impl q8::Signed, d: f32, out: &mut [f32]) {
    for (o, q) in out.iter_mut().zip(q.values()) {
        *o = f32::from(q) * d;
    }
}

/// Whether [`Blocks::run_rows`] dispatches to a kernel whose unsigned dot takes any byte.
fn exact_u8_dot() -> bool {
    #[cfg(target_arch = "x86_64")]
    if vnni::kernel().is_some() {
        return true;
    }
    false
}

/// [`SuperMatrix::run_rows`] with the best kernel this CPU has.
fn run_super(
    w: &SuperMatrix,
    range: std::ops::Range<usize>,
    acts: &SuperActs,
    out: &mut [&mut [f32]],
) {
    #[cfg(target_arch = "x86_64")]
    if let Some((simd, kern)) = avx512::kernel() {
        return simd.vectorize(SuperRows { kern, w, range, acts, out });
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = pulp::x86::V3::try_new() {
        let kern = avx2::Avx2(simd, avx2::Madd);
        return simd.vectorize(SuperRows { kern, w, range, acts, out });
    }
    pulp::Arch::new().dispatch(SuperRows { kern: superblock::Portable, w, range, acts, out })
}

/// [`run_super`]'s share of a matmul as a `pulp` operation (see [`Rows`]).
struct SuperRows<'a, 'o, 's, K> {
    kern: K,
    w: &'a SuperMatrix,
    range: std::ops::Range<usize>,
    acts: &'a SuperActs,
    out: &'o mut [&'s mut [f32]],
}

impl<K: superblock::SuperKernel> pulp::NullaryFnOnce for SuperRows<'_, '_, '_, K> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        self.w.run_rows(self.kern, self.range, self.acts, self.out)
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

    /// The portable kernels (used without AVX2) agree with the ones this CPU dispatches to,
    /// for every supported type.
    #[test]
    fn portable_kernel_matches_dispatched() -> candle_core::Result<()> {
        let (n, k, m) = (4 * 9 + 3, 512, 5);
        let w = Tensor::randn(0f32, 0.1, (n, k), &Device::Cpu)?;
        let x: Vec<f32> = Tensor::randn(0f32, 1.0, m * k, &Device::Cpu)?.to_vec1()?;
        for dtype in SUPPORTED {
            let qm = QuantMatrix::from_qtensor(&QTensor::quantize(&w, dtype)?)
                .map_err(candle_core::Error::wrap)?;
            let mut fast = vec![0f32; m * n];
            qm.matmul_slice(&x, &mut fast)?;
            let mut slow = vec![0f32; m * n];
            let mut out: Vec<&mut [f32]> = slow.chunks_exact_mut(n).collect();
            match &qm.weights {
                Weights::Blocks(b) => {
                    let (acts, w) = (&QuantActs::new(&x, k, b.needs(m, true)), b.qrows(k, 0..n));
                    pulp::Arch::new().dispatch(Rows { kern: q8::Portable, w, acts, out: &mut out })
                }
                Weights::Super(w) => {
                    let (acts, kern) = (&SuperActs::new(&x, k), superblock::Portable);
                    let out = &mut out;
                    pulp::Arch::new().dispatch(SuperRows { kern, w, range: 0..n, acts, out })
                }
            }
            for (a, b) in fast.iter().zip(&slow) {
                assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{dtype:?}: {a} vs {b}");
            }
        }
        Ok(())
    }

    /// The AVX-512 VNNI kernels give the AVX2 kernels' outputs bit for bit, for every
    /// supported type, one activation row (packed values unpacked in registers) and several
    /// (unpacked once per tile), full tiles and the odd rows after them.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vnni_kernels_equal_avx2_bit_for_bit() -> candle_core::Result<()> {
        let (Some((v4, vnni)), Some(v3)) = (avx512::kernel(), pulp::x86::V3::try_new()) else {
            eprintln!("this CPU has no AVX-512 VNNI (or no AVX2): nothing to compare");
            return Ok(());
        };
        let avx2 = avx2::Avx2(v3, avx2::Madd);
        let (n, k) = (4 * 5 + 3, 768);
        let w = Tensor::randn(0f32, 0.1, (n, k), &Device::Cpu)?;
        for m in [1, 7] {
            let x: Vec<f32> = Tensor::randn(0f32, 1.0, m * k, &Device::Cpu)?.to_vec1()?;
            for dtype in SUPPORTED {
                let qm = QuantMatrix::from_qtensor(&QTensor::quantize(&w, dtype)?)
                    .map_err(candle_core::Error::wrap)?;
                let (mut a, mut b) = (vec![0f32; m * n], vec![0f32; m * n]);
                let mut oa: Vec<&mut [f32]> = a.chunks_exact_mut(n).collect();
                let mut ob: Vec<&mut [f32]> = b.chunks_exact_mut(n).collect();
                match &qm.weights {
                    Weights::Blocks(bl) => {
                        // VNNI runs signed blocks of several rows as unsigned ones.
                        let w = bl.qrows(k, 0..n);
                        let acts = &QuantActs::new(&x, k, bl.needs(m, true));
                        v4.vectorize(Rows { kern: vnni, w, acts, out: &mut oa });
                        let acts = &QuantActs::new(&x, k, bl.needs(m, false));
                        v3.vectorize(Rows { kern: avx2, w, acts, out: &mut ob });
                    }
                    Weights::Super(w) => {
                        let acts = &SuperActs::new(&x, k);
                        let range = 0..n;
                        let out = &mut oa;
                        v4.vectorize(SuperRows { kern: vnni, w, range, acts, out });
                        let (range, out) = (0..n, &mut ob);
                        v3.vectorize(SuperRows { kern: avx2, w, range, acts, out });
                    }
                }
                for (i, (a, b)) in a.iter().zip(&b).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{dtype:?}, m = {m}, output {i}: {a} vs {b}"
                    );
                }
            }
        }
        Ok(())
    }

    /// A Q8_0 tensor `[n, k]` whose values are all from `table` (random codes, scales
    /// around 0.01), as the GGUF reader makes of an IQ4 or MXFP4 tensor.
    fn table_valued(
        table: [i8; 16],
        n: usize,
        k: usize,
        seed: u64,
    ) -> candle_core::Result<QTensor> {
        let mut state = seed;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as usize
        };
        let mut raw = Vec::with_capacity(n * k / QK * (2 + QK));
        for _ in 0..n * k / QK {
            let d = half::f16::from_f32(0.005 + (next() % 1000) as f32 * 1e-5);
            raw.extend(d.to_le_bytes());
            raw.extend((0..QK).map(|_| table[next() % 16] as u8));
        }
        let storage =
            candle_core::quantized::QStorage::from_data(raw.into(), &Device::Cpu, GgmlDType::Q8_0)?;
        QTensor::new(storage, (n, k))
    }

    /// The same matrix with its values held as plain int8s.
    fn as_signed(qm: &QuantMatrix) -> QuantMatrix {
        let Weights::Blocks(b) = &qm.weights else { panic!("not blocks") };
        let values: Vec<Block> = match &b.values {
            Stored::Iq4(v) => v.iter().map(q8::Signed::values).collect(),
            Stored::Fp4(v) => v.iter().map(q8::Signed::values).collect(),
            _ => panic!("not coded"),
        };
        let blocks =
            Blocks { values: Stored::Signed(values), d: b.d.clone(), m: vec![], m_of_d: None };
        QuantMatrix { n: qm.n, k: qm.k, dtype: qm.dtype, weights: Weights::Blocks(blocks) }
    }

    /// Q8_0 weights whose values all come from IQ4's or MXFP4's table are held as 4-bit codes
    /// (half the bytes), and every output is bit for bit what the int8 values give, one
    /// activation row or many (looked up in registers or once per tile), on this CPU's
    /// kernel, AVX2's and the portable one; a table-valued matrix with one other value is
    /// held as int8s.
    #[test]
    fn table_valued_weights_are_held_as_codes_with_the_same_outputs() -> candle_core::Result<()> {
        let (n, k) = (4 * 5 + 3, 768);
        for (table, name) in [(codes::IQ4_NL, "IQ4"), (codes::MXFP4, "MXFP4")] {
            let qt = table_valued(table, n, k, 7)?;
            let coded = QuantMatrix::from_qtensor(&qt).map_err(candle_core::Error::wrap)?;
            let plain = as_signed(&coded);
            let coded_kind = match &coded.weights {
                Weights::Blocks(Blocks { values: Stored::Iq4(_), .. }) => "IQ4",
                Weights::Blocks(Blocks { values: Stored::Fp4(_), .. }) => "MXFP4",
                _ => "int8",
            };
            assert_eq!(coded_kind, name);
            assert_eq!(coded.bytes(), n * k / QK * (QK / 2 + 2), "{name}");
            for m in [1, 2, 7] {
                let x: Vec<f32> = Tensor::randn(0f32, 1.0, m * k, &Device::Cpu)?.to_vec1()?;
                let (mut a, mut b) = (vec![0f32; m * n], vec![0f32; m * n]);
                coded.matmul_slice(&x, &mut a)?;
                plain.matmul_slice(&x, &mut b)?;
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a), bits(&b), "{name}, m = {m}, dispatched");
                let (Weights::Blocks(cb), Weights::Blocks(pb)) = (&coded.weights, &plain.weights)
                else {
                    unreachable!()
                };
                let portable = |bl: &Blocks, out: &mut [f32]| {
                    let mut out: Vec<&mut [f32]> = out.chunks_exact_mut(n).collect();
                    let (acts, w) = (&QuantActs::new(&x, k, bl.needs(m, true)), bl.qrows(k, 0..n));
                    pulp::Arch::new().dispatch(Rows { kern: q8::Portable, w, acts, out: &mut out })
                };
                portable(cb, &mut a);
                portable(pb, &mut b);
                assert_eq!(bits(&a), bits(&b), "{name}, m = {m}, portable");
                #[cfg(target_arch = "x86_64")]
                if let Some(v3) = pulp::x86::V3::try_new() {
                    let avx2 = |bl: &Blocks, out: &mut [f32]| {
                        let mut out: Vec<&mut [f32]> = out.chunks_exact_mut(n).collect();
                        let acts = &QuantActs::new(&x, k, bl.needs(m, false));
                        let (w, kern) = (bl.qrows(k, 0..n), avx2::Avx2(v3, avx2::Madd));
                        v3.vectorize(Rows { kern, w, acts, out: &mut out })
                    };
                    avx2(cb, &mut a);
                    avx2(pb, &mut b);
                    assert_eq!(bits(&a), bits(&b), "{name}, m = {m}, AVX2");
                }
            }
            // One value outside the table: int8s.
            let mut raw = qt.data()?.into_owned();
            raw[2 + 5] = 77;
            let storage = candle_core::quantized::QStorage::from_data(
                raw.into(),
                &Device::Cpu,
                GgmlDType::Q8_0,
            )?;
            let qm = QuantMatrix::from_qtensor(&QTensor::new(storage, (n, k))?)
                .map_err(candle_core::Error::wrap)?;
            assert!(matches!(
                qm.weights,
                Weights::Blocks(Blocks { values: Stored::Signed(_), .. })
            ));
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

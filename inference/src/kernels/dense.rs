//! Dense weights (f32, or f16/bf16 kept at half the size) times f32 activations, with every
//! output computed by the same sequence of operations whatever the batch: `out[a][r]` is the
//! dot of activation row `a` and weight row `r` in 8 lanes over `k`, then the lanes summed in
//! a fixed order. A BLAS-style matmul blocks its reductions by the shape of the whole product
//! (and switches to a different kernel for one row), so a sequence's logits would change with
//! what else is in the step.
//!
//! Half-precision weights are widened to f32 one 4-row tile at a time (F16C through `half`),
//! once per call whatever the batch, so they cost half the memory and half the bandwidth of
//! f32 and give the bits an f32 copy of the same values would.

/// Weight rows per tile: read together while an activation row goes by.
const TILE: usize = 4;

/// Lanes of the dot products (one AVX2 register of f32).
const LANES: usize = 8;

/// The values of a [`DenseMatrix`], row-major.
#[derive(Debug)]
pub enum Values {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
    BF16(Vec<half::bf16>),
}

impl Values {
    fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::F16(v) => v.len(),
            Values::BF16(v) => v.len(),
        }
    }

    /// Columns `cols` of the `R` rows from `first` (rows of `k` values) as f32: borrowed
    /// when they are f32, else widened into `scratch`.
    #[inline(always)]
    fn rows_f32<'a, const R: usize>(
        &'a self,
        first: usize,
        k: usize,
        cols: std::ops::Range<usize>,
        scratch: &'a mut Vec<f32>,
    ) -> [&'a [f32]; R] {
        use half::slice::HalfFloatSliceExt;
        let len = cols.len();
        let at = |i: usize| (first + i) * k + cols.start..(first + i) * k + cols.end;
        if let Values::F32(v) = self {
            return std::array::from_fn(|i| &v[at(i)]);
        }
        scratch.resize(R * len, 0.0);
        for i in 0..R {
            let out = &mut scratch[i * len..(i + 1) * len];
            match self {
                Values::F16(v) => v[at(i)].convert_to_f32_slice(out),
                Values::BF16(v) => v[at(i)].convert_to_f32_slice(out),
                Values::F32(_) => {}
            }
        }
        std::array::from_fn(|i| &scratch[i * len..(i + 1) * len])
    }

    /// Values `range` as f32, borrowed when they are f32, else widened into `scratch`.
    fn f32s<'a>(&'a self, range: std::ops::Range<usize>, scratch: &'a mut Vec<f32>) -> &'a [f32] {
        use half::slice::HalfFloatSliceExt;
        let widen = |scratch: &'a mut Vec<f32>, len: usize| {
            scratch.resize(len, 0.0);
            &mut scratch[..len]
        };
        match self {
            Values::F32(v) => &v[range],
            Values::F16(v) => {
                let out = widen(scratch, range.len());
                v[range].convert_to_f32_slice(out);
                out
            }
            Values::BF16(v) => {
                let out = widen(scratch, range.len());
                v[range].convert_to_f32_slice(out);
                out
            }
        }
    }
}

/// A dense weight matrix `[n, k]` (row-major, HF layout `[out, in]`).
#[derive(Debug)]
pub struct DenseMatrix {
    n: usize,
    k: usize,
    w: Values,
}

impl DenseMatrix {
    /// `w` holds `n` rows of `k` values.
    pub fn new(w: Vec<f32>, n: usize, k: usize) -> Option<Self> {
        Self::from_values(Values::F32(w), n, k)
    }

    /// `w` holds `n` rows of `k` values of any [`Values`] type.
    pub fn from_values(w: Values, n: usize, k: usize) -> Option<Self> {
        (w.len() == n * k && k > 0).then_some(Self { n, k, w })
    }

    pub fn rows(&self) -> usize {
        self.n
    }

    pub fn cols(&self) -> usize {
        self.k
    }

    pub fn bytes(&self) -> usize {
        let size = match self.w {
            Values::F32(_) => 4,
            Values::F16(_) | Values::BF16(_) => 2,
        };
        self.w.len() * size
    }

    /// Row `r` of the weights (`k` values) into `out`, as f32.
    pub fn row(&self, r: usize, out: &mut [f32]) {
        let mut scratch = Vec::new();
        out.copy_from_slice(self.w.f32s(r * self.k..(r + 1) * self.k, &mut scratch));
    }

    /// `out = x · Wᵀ` for row-major `x` `[m, k]` and `out` `[m, n]`.
    pub fn matmul_slice(&self, x: &[f32], out: &mut [f32]) -> Result<(), String> {
        let (n, k) = (self.n, self.k);
        let m = super::product_rows(x.len(), out.len(), n, k)?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        super::split_rows(out, n, m * n * k, TILE, |rows, out| self.run_rows(rows, x, out));
        Ok(())
    }

    fn run_rows(&self, rows: std::ops::Range<usize>, x: &[f32], out: &mut [&mut [f32]]) {
        #[cfg(target_arch = "x86_64")]
        if let Some((simd, kern)) = super::avx512::dense() {
            return simd.vectorize(Rows { kern, w: &self.w, rows, k: self.k, x, out });
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = pulp::x86::V3::try_new() {
            let kern = super::avx2::Avx2(simd, super::avx2::Madd);
            return simd.vectorize(Rows { kern, w: &self.w, rows, k: self.k, x, out });
        }
        pulp::Arch::new().dispatch(Rows { kern: Portable, w: &self.w, rows, k: self.k, x, out });
    }

    /// All of `x` through the portable kernel on this thread (tests compare it with the
    /// dispatched one).
    #[cfg(test)]
    fn matmul_portable(&self, x: &[f32], out: &mut [f32]) {
        let mut rows: Vec<&mut [f32]> = out.chunks_exact_mut(self.n).collect();
        let op = Rows { kern: Portable, w: &self.w, rows: 0..self.n, k: self.k, x, out: &mut rows };
        pulp::Arch::new().dispatch(op);
    }
}

/// Activation rows per pass over a thread's weight rows: their values (~230 KB at k = 896)
/// stay in L2 while every weight tile goes by, instead of all `m` rows streaming from L3
/// once per tile.
const ACT_BLOCK: usize = 64;

/// Values of `k` per step of a tile: its weight rows' pieces (4 KB of f32, widened from
/// f16/bf16 just before use) and the activation rows' pieces stay in L1.
const K_CHUNK: usize = 256;

/// Accumulators of one activation row against a tile: 8 lanes per weight row.
pub(crate) type Acc<const R: usize> = [[f32; LANES]; R];

/// A tile kernel: adds the dots of `R` weight-row pieces with `A` activation-row pieces into
/// their lanes.
pub(crate) trait DenseKernel: Copy {
    /// Activation rows per call that the kernel is best at (1, 2 or 4): each weight vector
    /// loaded serves that many outputs.
    const ACTS: usize = 2;

    /// `w[i]` and `xs[a]` are pieces of the same length (a multiple of [`LANES`]); lane `l`
    /// of `acc[a][i]` gets every `LANES`-th product in order, so an output's lanes are the
    /// same bits however its rows are tiled or its `k` is cut into pieces.
    fn accumulate<const R: usize, const A: usize>(
        self,
        acc: [&mut Acc<R>; A],
        w: [&[f32]; R],
        xs: [&[f32]; A],
    );
}

/// The lanes of one output summed in a fixed order, plus the products past the last full
/// lane group (`x` and `w` are those tails), the same way by every kernel.
#[inline(always)]
fn finish(lanes: [f32; LANES], x: &[f32], w: &[f32]) -> f32 {
    let pairs =
        [lanes[0] + lanes[4], lanes[1] + lanes[5], lanes[2] + lanes[6], lanes[3] + lanes[7]];
    let mut sum = (pairs[0] + pairs[2]) + (pairs[1] + pairs[3]);
    for (x, w) in x.iter().zip(w) {
        sum += x * w;
    }
    sum
}

/// Plain Rust lanes, which LLVM vectorises on any target (no FMA: bits differ from the
/// AVX2 kernel's, so a machine uses one or the other throughout).
#[derive(Clone, Copy)]
pub(crate) struct Portable;

impl DenseKernel for Portable {
    #[inline(always)]
    fn accumulate<const R: usize, const A: usize>(
        self,
        acc: [&mut Acc<R>; A],
        w: [&[f32]; R],
        xs: [&[f32]; A],
    ) {
        let wc: [&[[f32; LANES]]; R] = w.map(|w| w.as_chunks().0);
        for (acc, x) in acc.into_iter().zip(xs) {
            let (xc, _) = x.as_chunks::<LANES>();
            for (acc, wc) in acc.iter_mut().zip(&wc) {
                for (xv, wv) in xc.iter().zip(*wc) {
                    for l in 0..LANES {
                        acc[l] += xv[l] * wv[l];
                    }
                }
            }
        }
    }
}

/// One thread's share as a `pulp` operation (a struct so it inlines into the dispatched
/// `#[target_feature]` function; see `QuantMatrix`).
struct Rows<'a, 'o, 's, K> {
    kern: K,
    w: &'a Values,
    /// The weight rows of this share; `out`'s columns start at `rows.start`.
    rows: std::ops::Range<usize>,
    k: usize,
    x: &'a [f32],
    out: &'o mut [&'s mut [f32]],
}

impl<K: DenseKernel> pulp::NullaryFnOnce for Rows<'_, '_, '_, K> {
    type Output = ();

    #[inline(always)]
    fn call(mut self) {
        let rows = self.rows.len();
        let m = self.x.len() / self.k;
        let (mut scratch, mut lanes) = (Vec::new(), Vec::new());
        for block in (0..m).step_by(ACT_BLOCK) {
            let block = block..(block + ACT_BLOCK).min(m);
            let mut r = 0;
            while r < rows {
                if rows - r >= TILE {
                    self.run_tile::<TILE>(r, block.clone(), &mut scratch, &mut lanes);
                    r += TILE;
                } else {
                    self.run_tile::<1>(r, block.clone(), &mut scratch, &mut lanes);
                    r += 1;
                }
            }
        }
    }
}

impl<K: DenseKernel> Rows<'_, '_, '_, K> {
    /// `R` weight rows from the share's row `r` against activation rows `acts` (at most
    /// [`ACT_BLOCK`]), piece by piece of `k`; activation rows go [`DenseKernel::ACTS`] at a
    /// time, so each weight vector loaded serves that many outputs. Neither the pairing nor the pieces change an
    /// output's arithmetic.
    #[inline(always)]
    fn run_tile<const R: usize>(
        &mut self,
        r: usize,
        acts: std::ops::Range<usize>,
        scratch: &mut Vec<f32>,
        lanes: &mut Vec<[f32; LANES]>,
    ) {
        let (k, x, values) = (self.k, self.x, self.w);
        let body = k / LANES * LANES;
        let first = self.rows.start + r;
        // Zeroed accumulators for just these rows (a whole block's would cost a memset of
        // 8 KB per tile when decoding one row).
        lanes.clear();
        lanes.resize(acts.len() * R, [0.0; LANES]);
        let (acc, _) = lanes.as_chunks_mut::<R>();
        let mut start = 0;
        while start < body {
            let end = (start + K_CHUNK).min(body);
            let w = values.rows_f32::<R>(first, k, start..end, scratch);
            let piece = |a: usize| &x[a * k + start..a * k + end];
            let mut a = acts.start;
            while a < acts.end {
                let i = a - acts.start;
                if K::ACTS >= 4 && acts.end - a >= 4 {
                    let quad = acc[i..].first_chunk_mut::<4>().expect("four rows left");
                    let pieces = [piece(a), piece(a + 1), piece(a + 2), piece(a + 3)];
                    self.kern.accumulate::<R, 4>(quad.each_mut(), w, pieces);
                    a += 4;
                } else if K::ACTS >= 2 && acts.end - a >= 2 {
                    let (lo, hi) = acc.split_at_mut(i + 1);
                    let pair = [&mut lo[i], &mut hi[0]];
                    self.kern.accumulate::<R, 2>(pair, w, [piece(a), piece(a + 1)]);
                    a += 2;
                } else {
                    self.kern.accumulate::<R, 1>([&mut acc[i]], w, [piece(a)]);
                    a += 1;
                }
            }
            start = end;
        }
        let tails = values.rows_f32::<R>(first, k, body..k, scratch);
        for a in acts.clone() {
            let x_tail = &x[a * k + body..(a + 1) * k];
            for (i, tail) in tails.iter().enumerate() {
                self.out[a][r + i] = finish(acc[a - acts.start][i], x_tail, tail);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The portable kernel is batch-invariant too, and within f32 rounding of the dispatched
    /// one (which uses FMA where the CPU has it), over more than one activation block.
    #[test]
    fn portable_kernel_is_invariant_and_matches_dispatched() {
        let (n, k) = (4 * 9 + 2, 8 * 40 + 5);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3).collect();
        let m = DenseMatrix::new(w, n, k).expect("shape");
        let rows = ACT_BLOCK + 3;
        let x: Vec<f32> =
            (0..rows * k).map(|i| ((i * 104_729 % 997) as f32 - 498.0) * 1e-2).collect();
        let (mut portable, mut dispatched) = (vec![0f32; rows * n], vec![0f32; rows * n]);
        m.matmul_portable(&x, &mut portable);
        m.matmul_slice(&x, &mut dispatched).expect("matmul");
        for a in [0, 1, ACT_BLOCK, rows - 1] {
            let mut one = vec![0f32; n];
            m.matmul_portable(&x[a * k..(a + 1) * k], &mut one);
            assert_eq!(one, portable[a * n..(a + 1) * n], "row {a}");
        }
        for (p, d) in portable.iter().zip(&dispatched) {
            assert!((p - d).abs() <= 1e-4 * p.abs().max(1.0), "{p} vs {d}");
        }
    }

    /// The 512-bit tile gives the AVX2 tile's outputs bit for bit: full tiles and the odd
    /// rows after them, activation rows in fours, pairs and ones, a `k` cut into pieces and
    /// a tail past the last 8 values.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_tiles_equal_avx2_bit_for_bit() {
        use super::super::{avx2, avx512};
        let (Some((v4, wide)), Some(v3)) = (avx512::dense(), pulp::x86::V3::try_new()) else {
            eprintln!("this CPU has no AVX-512F (or no AVX2): nothing to compare");
            return;
        };
        let narrow = avx2::Avx2(v3, avx2::Madd);
        let (n, k) = (4 * 9 + 3, 8 * 70 + 5);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3).collect();
        let m = DenseMatrix::new(w, n, k).expect("shape");
        for rows in [1, 2, 3, 5, 7, ACT_BLOCK + 7] {
            let x: Vec<f32> =
                (0..rows * k).map(|i| ((i * 104_729 % 997) as f32 - 498.0) * 1e-2).collect();
            let (mut a, mut b) = (vec![0f32; rows * n], vec![0f32; rows * n]);
            let mut oa: Vec<&mut [f32]> = a.chunks_exact_mut(n).collect();
            let mut ob: Vec<&mut [f32]> = b.chunks_exact_mut(n).collect();
            v4.vectorize(Rows { kern: wide, w: &m.w, rows: 0..n, k, x: &x, out: &mut oa });
            v3.vectorize(Rows { kern: narrow, w: &m.w, rows: 0..n, k, x: &x, out: &mut ob });
            for (i, (a, b)) in a.iter().zip(&b).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{rows} rows, output {i}: {a} vs {b}");
            }
        }
    }

    /// Every output row is the same bits whether computed alone or in a batch of any size,
    /// on one thread or many.
    #[test]
    fn rows_do_not_depend_on_the_batch() {
        let (n, k) = (4 * 37 + 3, 203);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3).collect();
        let m = DenseMatrix::new(w.clone(), n, k).expect("shape");
        let x: Vec<f32> =
            (0..150 * k).map(|i| ((i * 104_729 % 997) as f32 - 498.0) * 1e-2).collect();
        let mut all = vec![0f32; 150 * n];
        m.matmul_slice(&x, &mut all).expect("matmul");
        for a in [0, 5, 63, 64, 149] {
            let mut one = vec![0f32; n];
            m.matmul_slice(&x[a * k..(a + 1) * k], &mut one).expect("matmul");
            assert_eq!(one, all[a * n..(a + 1) * n], "row {a}");
        }
        for (r, got) in all[..n].iter().enumerate() {
            let want: f64 = (0..k).map(|j| f64::from(x[j]) * f64::from(w[r * k + j])).sum();
            assert!((f64::from(*got) - want).abs() < 1e-3 * want.abs().max(1.0), "{got} vs {want}");
        }
    }
}

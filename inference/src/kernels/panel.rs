//! Dense f32 weights for many activation rows at once (an encoder's tokens, hundreds per
//! call): a GEMM microkernel on AVX-512F. The weights are packed once into panels of
//! [`WIDTH`] outputs, `k`-major (`panel[j]` holds input `j` of the panel's 32 outputs), so
//! each step of `k` loads two registers of weights and multiplies them by [`ROWS`]
//! broadcast activation values: 16 FMAs per 2 loads, where the row-dot tiles of
//! [`super::dense`] spend a load or an insert per FMA. Every output is its bias plus the
//! sum over `k` in order, one FMA per input: the same bits however many rows share the
//! call, in what blocks, on how many threads.
//!
//! Only on CPUs with AVX-512F ([`PanelMatrix::new`] is `None` elsewhere: callers keep
//! their other path).

use core::arch::x86_64::__m512;

use std::cell::Cell;

use pulp::x86::V4;
use rayon::prelude::*;

/// Outputs per panel: two 512-bit registers of f32.
const WIDTH: usize = 32;

/// Activation rows per microkernel call: 24 accumulators (12 rows × 2 registers) of the
/// 32, a weight pair and a broadcast value; each step of `k` is 2 loads of weights and 12
/// of activations for 24 FMAs.
const ROWS: usize = 12;

/// Groups of [`ROWS`] activation rows per pass over a thread's panels: 120 rows, whose
/// values stay in L2 (180 KB at k = 384, 720 KB at k = 1536) while each panel goes by.
const GROUP_BLOCK: usize = 10;

/// Inputs per pass of a block's groups over a panel: the panel's slice (32 KB) stays in
/// L1 while the groups go by.
const K_SLICE: usize = 256;

/// A dense `[n, k]` weight (HF layout `[out, in]`) with an optional bias, packed in panels.
#[derive(Debug)]
pub struct PanelMatrix {
    n: usize,
    k: usize,
    /// `n.div_ceil(WIDTH)` panels of `k` rows of [`WIDTH`] values; outputs past `n` are 0.
    panels: Vec<[f32; WIDTH]>,
    bias: Vec<f32>,
    simd: V4,
}

impl PanelMatrix {
    /// Packs row-major `w` (`n` rows of `k`) and `bias` (`n` values, or none); `None` on
    /// a CPU without AVX-512F or for inconsistent lengths.
    pub fn new(w: &[f32], n: usize, k: usize, bias: Option<&[f32]>) -> Option<Self> {
        let simd = V4::try_new()?;
        if w.len() != n * k || k == 0 || n == 0 || bias.is_some_and(|b| b.len() != n) {
            return None;
        }
        let mut panels = vec![[0f32; WIDTH]; n.div_ceil(WIDTH) * k];
        for (r, row) in w.chunks_exact(k).enumerate() {
            let (p, c) = (r / WIDTH, r % WIDTH);
            for (j, v) in row.iter().enumerate() {
                panels[p * k + j][c] = *v;
            }
        }
        let bias = bias.map_or_else(|| vec![0.0; n], <[f32]>::to_vec);
        Some(Self { n, k, panels, bias, simd })
    }

    pub fn rows(&self) -> usize {
        self.n
    }

    pub fn cols(&self) -> usize {
        self.k
    }

    /// `out = x · Wᵀ + bias` for row-major `x` `[m, k]` and `out` `[m, n]`, the panels
    /// split across rayon's threads. The microkernel reads a group of [`ROWS`] rows in
    /// place where `k` is one of BERT's usual widths (hidden and MLP sizes of the small,
    /// base and large models: the rows' offsets are then constants and need no registers),
    /// from an interleaved copy otherwise.
    pub fn matmul_slice(&self, x: &[f32], out: &mut [f32]) -> Result<(), String> {
        let (n, k) = (self.n, self.k);
        let m = super::product_rows(x.len(), out.len(), n, k)?;
        if m == 0 {
            return Ok(());
        }
        match k {
            384 => self.direct::<384>(x, out),
            768 => self.direct::<768>(x, out),
            1024 => self.direct::<1024>(x, out),
            1536 => self.direct::<1536>(x, out),
            3072 => self.direct::<3072>(x, out),
            4096 => self.direct::<4096>(x, out),
            _ => interleave(x, m, k, |groups| {
                let group = |g: usize| {
                    let group = &groups[g * k..(g + 1) * k];
                    move |j: usize| group[j]
                };
                self.run(x.len() / k, group, out);
            }),
        }
        Ok(())
    }

    /// [`Self::matmul_slice`] for `k = K`: full groups read from `x`, the last rows from a
    /// zero-padded copy.
    fn direct<const K: usize>(&self, x: &[f32], out: &mut [f32]) {
        let (rows, _) = x.as_chunks::<K>();
        let full = rows.len() / ROWS * ROWS;
        // On the heap: up to 192 KB.
        let mut last = vec![[0f32; K]; ROWS];
        for (copy, row) in last.iter_mut().zip(&rows[full..]) {
            *copy = *row;
        }
        let Ok(last): Result<&[[f32; K]; ROWS], _> = last.as_slice().try_into() else {
            unreachable!("ROWS rows")
        };
        let group = |g: usize| {
            let group: &[[f32; K]; ROWS] = match rows.get(g * ROWS..(g + 1) * ROWS) {
                Some(group) => group.try_into().unwrap_or(last),
                None => last,
            };
            move |j: usize| std::array::from_fn(|r| group[r][j])
        };
        self.run(rows.len(), group, out);
    }

    /// The product for `m` rows whose group `g`'s values at input `j` are `group(g)(j)`.
    fn run<G, S>(&self, m: usize, group: G, out: &mut [f32])
    where
        G: Fn(usize) -> S + Sync,
        S: Fn(usize) -> [f32; ROWS],
    {
        super::split_rows(out, self.n, m * self.n * self.k, WIDTH, |cols, out| {
            self.simd.vectorize(Panels { w: self, cols, group: &group, out });
        });
    }

    /// `x · Wᵀ + bias` for an f32 CPU tensor `x` `[.., k]`.
    pub fn forward(&self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        super::matmul_tensor(x, self.k, self.n, |x, out| {
            self.matmul_slice(x, out).map_err(candle_core::Error::msg)
        })
    }
}

/// `x` (`m` rows of `k`) as groups of [`ROWS`] rows, `k`-major within a group (`[g * k + j][r]`
/// is row `g * ROWS + r`, input `j`), rows past `m` zero, so the microkernel reads a step's
/// values through one pointer. Done once per call for all threads (each takes every row),
/// in parallel over groups when large, into a buffer the calling thread keeps (megabytes:
/// fresh ones cost page faults).
fn interleave(x: &[f32], m: usize, k: usize, run: impl FnOnce(&[[f32; ROWS]])) {
    thread_local! {
        static BUFFER: Cell<Vec<[f32; ROWS]>> = const { Cell::new(Vec::new()) };
    }
    // Taken, not borrowed: rayon may run another call on this thread while this one waits.
    let mut buffer = BUFFER.take();
    let len = m.div_ceil(ROWS) * k;
    if buffer.len() < len {
        buffer.resize(len, [0.0; ROWS]);
    }
    let groups = &mut buffer[..len];
    let zeros = vec![0f32; k];
    let fill = |(g, group): (usize, &mut [[f32; ROWS]])| {
        let rows: [&[f32]; ROWS] = std::array::from_fn(|r| {
            x.get((g * ROWS + r) * k..(g * ROWS + r + 1) * k).unwrap_or(&zeros)
        });
        for (j, slot) in group.iter_mut().enumerate() {
            *slot = rows.map(|row| row[j]);
        }
    };
    if m * k < super::PARALLEL_MIN_WORK / 8 {
        groups.chunks_mut(k).enumerate().for_each(fill);
    } else {
        groups.par_chunks_mut(k).enumerate().for_each(fill);
    }
    run(groups);
    BUFFER.set(buffer);
}

/// One thread's columns as a `pulp` operation (inlined into the AVX-512 function).
struct Panels<'a, 'o, 's, G> {
    w: &'a PanelMatrix,
    /// Output columns, starting at a multiple of [`WIDTH`]; `out`'s slices start there.
    cols: std::ops::Range<usize>,
    /// Group `g`'s values at input `j`: `group(g)(j)`.
    group: &'a G,
    out: &'o mut [&'s mut [f32]],
}

impl<G, S> pulp::NullaryFnOnce for Panels<'_, '_, '_, G>
where
    G: Fn(usize) -> S,
    S: Fn(usize) -> [f32; ROWS],
{
    type Output = ();

    #[inline(always)]
    fn call(self) {
        let (k, m) = (self.w.k, self.out.len());
        let simd = self.w.simd;
        let groups = m.div_ceil(ROWS);
        // The block's running sums between slices of `k`.
        let mut sums = vec![[[0f32; WIDTH]; ROWS]; GROUP_BLOCK.min(groups)];
        for block in (0..groups).step_by(GROUP_BLOCK) {
            let block_end = (block + GROUP_BLOCK).min(groups);
            for first in self.cols.clone().step_by(WIDTH) {
                let p = first / WIDTH;
                let panel = &self.w.panels[p * k..(p + 1) * k];
                for from in (0..k).step_by(K_SLICE) {
                    let to = (from + K_SLICE).min(k);
                    for (g, sums) in (block..block_end).zip(sums.iter_mut()) {
                        let group = (self.group)(g);
                        *sums = micro(simd, &panel[from..to], |j| group(from + j), sums, from == 0);
                    }
                }
                let width = (self.cols.end - first).min(WIDTH);
                let bias = &self.w.bias[first..first + width];
                let at = first - self.cols.start;
                for (g, sums) in (block..block_end).zip(&sums) {
                    let rows = self.out[g * ROWS..].iter_mut().take(ROWS);
                    for (out, sum) in rows.zip(sums) {
                        let out = &mut out[at..at + width];
                        for ((o, s), b) in out.iter_mut().zip(sum).zip(bias) {
                            *o = s + b;
                        }
                    }
                }
            }
        }
    }
}

/// A group's [`ROWS`] activation rows (`x(j)`: their values at the slice's input `j`)
/// times a slice of one panel, carrying on the sums of the slices before (or from zero
/// with `first`): `ROWS × 32` sums, each over `k` in order, one FMA per input, so slicing
/// `k` changes no bit (rows of zeros past the batch give sums nobody reads).
#[inline(always)]
fn micro(
    simd: V4,
    panel: &[[f32; WIDTH]],
    x: impl Fn(usize) -> [f32; ROWS],
    sums: &[[f32; WIDTH]; ROWS],
    first: bool,
) -> [[f32; WIDTH]; ROWS] {
    let f = simd.avx512f;
    let mut acc: [[__m512; 2]; ROWS] =
        if first { [[f._mm512_setzero_ps(); 2]; ROWS] } else { sums.map(pulp::cast) };
    for (j, w) in panel.iter().enumerate() {
        let [lo, hi]: [__m512; 2] = pulp::cast(*w);
        let x = x(j);
        for (acc, x) in acc.iter_mut().zip(x) {
            let xv = f._mm512_set1_ps(x);
            acc[0] = f._mm512_fmadd_ps(xv, lo, acc[0]);
            acc[1] = f._mm512_fmadd_ps(xv, hi, acc[1]);
        }
    }
    acc.map(pulp::cast)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every output is its bias plus the sum over `k` in order, one FMA per input (the
    /// same bits as a scalar loop), close to an f64 reference, and every row is the same
    /// bits alone or in a batch: full groups, leftover rows, more than one block of groups,
    /// a partial last panel, `k` read in place (384, 1536) or interleaved (97, 300), in one
    /// slice of `k` or several.
    #[test]
    fn panels_match_the_reference_and_do_not_depend_on_the_batch() {
        for k in [97, 300, 384, 1536] {
            check(WIDTH * 3 + 5, k);
        }
    }

    fn check(n: usize, k: usize) {
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3).collect();
        let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
        let Some(pm) = PanelMatrix::new(&w, n, k, Some(&bias)) else {
            eprintln!("this CPU has no AVX-512F: nothing to test");
            return;
        };
        let m = GROUP_BLOCK * ROWS + ROWS + 3;
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 104_729 % 997) as f32 - 498.0) * 1e-2).collect();
        let mut all = vec![0f32; m * n];
        pm.matmul_slice(&x, &mut all).expect("matmul");
        for a in [0, 7, ROWS, GROUP_BLOCK * ROWS, m - 1] {
            let mut one = vec![0f32; n];
            pm.matmul_slice(&x[a * k..(a + 1) * k], &mut one).expect("matmul");
            assert_eq!(one, all[a * n..(a + 1) * n], "k {k}, row {a}");
        }
        for a in [0, ROWS + 1, m - 1] {
            for r in 0..n {
                let (x, w) = (&x[a * k..(a + 1) * k], &w[r * k..(r + 1) * k]);
                let fmas = x.iter().zip(w).fold(0f32, |acc, (x, w)| x.mul_add(*w, acc));
                let got = all[a * n + r];
                assert_eq!(got, fmas + bias[r], "k {k}, row {a}, output {r}");
                let dot: f64 = x.iter().zip(w).map(|(x, w)| f64::from(*x) * f64::from(*w)).sum();
                let want = dot + f64::from(bias[r]);
                assert!(
                    (f64::from(got) - want).abs() < 1e-3 * want.abs().max(1.0),
                    "k {k}, row {a}, output {r}: {got} vs {want}"
                );
            }
        }
    }
}

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

use pulp::x86::V4;

/// Outputs per panel: two 512-bit registers of f32.
const WIDTH: usize = 32;

/// Activation rows per microkernel call: 16 accumulators of the 32 registers.
const ROWS: usize = 8;

/// Activation rows per pass over a thread's panels: their values stay in L2 (~200 KB at
/// k = 384) while each panel goes by.
const ROW_BLOCK: usize = 128;

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
    /// split across rayon's threads.
    pub fn matmul_slice(&self, x: &[f32], out: &mut [f32]) -> Result<(), String> {
        let (n, k) = (self.n, self.k);
        let m = super::product_rows(x.len(), out.len(), n, k)?;
        if m == 0 {
            return Ok(());
        }
        super::split_rows(out, n, m * n * k, WIDTH, |cols, out| {
            self.simd.vectorize(Panels { w: self, cols, x, out });
        });
        Ok(())
    }

    /// `x · Wᵀ + bias` for an f32 CPU tensor `x` `[.., k]`.
    pub fn forward(&self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        super::matmul_tensor(x, self.k, self.n, |x, out| {
            self.matmul_slice(x, out).map_err(candle_core::Error::msg)
        })
    }
}

/// One thread's columns as a `pulp` operation (inlined into the AVX-512 function).
struct Panels<'a, 'o, 's> {
    w: &'a PanelMatrix,
    /// Output columns, starting at a multiple of [`WIDTH`]; `out`'s slices start there.
    cols: std::ops::Range<usize>,
    x: &'a [f32],
    out: &'o mut [&'s mut [f32]],
}

impl pulp::NullaryFnOnce for Panels<'_, '_, '_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        let (k, m) = (self.w.k, self.out.len());
        let simd = self.w.simd;
        for block in (0..m).step_by(ROW_BLOCK) {
            let block_end = (block + ROW_BLOCK).min(m);
            for first in self.cols.clone().step_by(WIDTH) {
                let p = first / WIDTH;
                let panel = &self.w.panels[p * k..(p + 1) * k];
                let width = (self.cols.end - first).min(WIDTH);
                let bias = &self.w.bias[first..first + width];
                let at = first - self.cols.start;
                let mut a = block;
                while a < block_end {
                    let x = |i: usize| &self.x[(a + i) * k..(a + i + 1) * k];
                    let mut store = |sums: &[[f32; WIDTH]]| {
                        for (i, sum) in sums.iter().enumerate() {
                            let out = &mut self.out[a + i][at..at + width];
                            for ((o, s), b) in out.iter_mut().zip(sum).zip(bias) {
                                *o = s + b;
                            }
                        }
                    };
                    if block_end - a >= ROWS {
                        store(&micro::<ROWS>(simd, panel, std::array::from_fn(x)));
                        a += ROWS;
                    } else {
                        store(&micro::<1>(simd, panel, [x(0)]));
                        a += 1;
                    }
                }
            }
        }
    }
}

/// `A` activation rows (each `k` values) times one panel: `A × 32` sums, each over `k` in
/// order, one FMA per input.
#[inline(always)]
fn micro<const A: usize>(simd: V4, panel: &[[f32; WIDTH]], x: [&[f32]; A]) -> [[f32; WIDTH]; A] {
    let f = simd.avx512f;
    let k = panel.len();
    let x = x.map(|x| &x[..k]);
    let mut acc = [[f._mm512_setzero_ps(); 2]; A];
    for (j, w) in panel.iter().enumerate() {
        let [lo, hi]: [[f32; 16]; 2] = pulp::cast(*w);
        let (lo, hi): (__m512, __m512) = (pulp::cast(lo), pulp::cast(hi));
        for a in 0..A {
            let xv = f._mm512_set1_ps(x[a][j]);
            acc[a][0] = f._mm512_fmadd_ps(xv, lo, acc[a][0]);
            acc[a][1] = f._mm512_fmadd_ps(xv, hi, acc[a][1]);
        }
    }
    acc.map(pulp::cast)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outputs match an f64 reference, and every row is the same bits alone or in a batch
    /// (full microkernels, leftover rows, more than one row block, a partial last panel).
    #[test]
    fn panels_match_the_reference_and_do_not_depend_on_the_batch() {
        let (n, k) = (WIDTH * 3 + 5, 97);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3).collect();
        let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
        let Some(pm) = PanelMatrix::new(&w, n, k, Some(&bias)) else {
            eprintln!("this CPU has no AVX-512F: nothing to test");
            return;
        };
        let m = ROW_BLOCK + ROWS + 3;
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 104_729 % 997) as f32 - 498.0) * 1e-2).collect();
        let mut all = vec![0f32; m * n];
        pm.matmul_slice(&x, &mut all).expect("matmul");
        for a in [0, 7, 8, ROW_BLOCK, m - 1] {
            let mut one = vec![0f32; n];
            pm.matmul_slice(&x[a * k..(a + 1) * k], &mut one).expect("matmul");
            assert_eq!(one, all[a * n..(a + 1) * n], "row {a}");
        }
        for a in [0, m - 1] {
            for r in 0..n {
                let dot: f64 =
                    (0..k).map(|j| f64::from(x[a * k + j]) * f64::from(w[r * k + j])).sum();
                let want = dot + f64::from(bias[r]);
                let got = f64::from(all[a * n + r]);
                assert!(
                    (got - want).abs() < 1e-3 * want.abs().max(1.0),
                    "{a},{r}: {got} vs {want}"
                );
            }
        }
    }
}

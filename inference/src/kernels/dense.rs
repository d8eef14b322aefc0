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
        if !x.len().is_multiple_of(k) || out.len() != x.len() / k * n {
            return Err(format!(
                "kernels: x has {} values and out {} for a [{n}, {k}] weight",
                x.len(),
                out.len()
            ));
        }
        let m = x.len() / k;
        if m == 0 || n == 0 {
            return Ok(());
        }
        super::split_rows(out, n, m * n * k, TILE, |rows, out| self.run_rows(rows, x, out));
        Ok(())
    }

    fn run_rows(&self, rows: std::ops::Range<usize>, x: &[f32], out: &mut [&mut [f32]]) {
        pulp::Arch::new().dispatch(Rows { w: &self.w, rows, k: self.k, x, out });
    }
}

/// One thread's share as a `pulp` operation (a struct so it inlines into the dispatched
/// `#[target_feature]` function; see `QuantMatrix`).
struct Rows<'a, 'o, 's> {
    w: &'a Values,
    /// The weight rows of this share; `out`'s columns start at `rows.start`.
    rows: std::ops::Range<usize>,
    k: usize,
    x: &'a [f32],
    out: &'o mut [&'s mut [f32]],
}

impl pulp::NullaryFnOnce for Rows<'_, '_, '_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        let k = self.k;
        let rows = self.rows.len();
        let mut scratch = Vec::new();
        let mut r = 0;
        while r < rows {
            let take = if rows - r >= TILE { TILE } else { 1 };
            let first = self.rows.start + r;
            let w = self.w.f32s(first * k..(first + take) * k, &mut scratch);
            for (a, x) in self.x.chunks_exact(k).enumerate() {
                let out = &mut self.out[a][r..r + take];
                if take == TILE {
                    out.copy_from_slice(&tile::<TILE>(w, x));
                } else {
                    out.copy_from_slice(&tile::<1>(w, x));
                }
            }
            r += take;
        }
    }
}

/// Dots of `R` weight rows (`w`, `R × k`) with one activation row `x`; each row's result is
/// the same bits for any `R`.
#[inline(always)]
fn tile<const R: usize>(w: &[f32], x: &[f32]) -> [f32; R] {
    let k = x.len();
    let body = k / LANES * LANES;
    let mut acc = [[0f32; LANES]; R];
    let (xc, _) = x[..body].as_chunks::<LANES>();
    for (c, xv) in xc.iter().enumerate() {
        for (i, acc) in acc.iter_mut().enumerate() {
            let wv = &w[i * k + c * LANES..][..LANES];
            for l in 0..LANES {
                acc[l] += xv[l] * wv[l];
            }
        }
    }
    std::array::from_fn(|i| {
        let lanes = acc[i];
        let pairs =
            [lanes[0] + lanes[4], lanes[1] + lanes[5], lanes[2] + lanes[6], lanes[3] + lanes[7]];
        let mut sum = (pairs[0] + pairs[2]) + (pairs[1] + pairs[3]);
        for j in body..k {
            sum += x[j] * w[i * k + j];
        }
        sum
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every output row is the same bits whether computed alone or in a batch of any size,
    /// on one thread or many.
    #[test]
    fn rows_do_not_depend_on_the_batch() {
        let (n, k) = (4 * 37 + 3, 203);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3).collect();
        let m = DenseMatrix::new(w.clone(), n, k).expect("shape");
        let x: Vec<f32> =
            (0..64 * k).map(|i| ((i * 104_729 % 997) as f32 - 498.0) * 1e-2).collect();
        let mut all = vec![0f32; 64 * n];
        m.matmul_slice(&x, &mut all).expect("matmul");
        for a in [0, 5, 63] {
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

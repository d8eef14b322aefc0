//! Q8_0 weights (blocks of 32 int8 values and one f16 scale) times quantized activations.
//!
//! The driver walks tiles of `R` weight rows × `MA` activation rows so each weight block
//! loaded from memory serves several activation rows (batching is nearly free while the
//! weights stream) and each activation block serves several weight rows. The per-tile
//! arithmetic comes from a [`Q8Kernel`]: AVX2 intrinsics on x86 (safe through `pulp`) or
//! plain loops that LLVM vectorizes for whatever the machine has.

use super::act::{QK, QuantActs, f16_to_f32};

/// One Q8_0 block's int8 values.
pub(crate) type Block = [i8; QK];

/// A tile's dot products: `R` weight rows (blocks and f32 scales) by `MA` activation rows.
pub(crate) trait Q8Kernel: Copy {
    fn tile<const R: usize, const MA: usize>(
        self,
        w: [&[Block]; R],
        sw: [&[f32]; R],
        x: [&[Block]; MA],
        sx: [&[f32]; MA],
    ) -> [[f32; MA]; R];
}

/// Rows of Q8_0 weights: `qs` and `d` hold `kb` blocks per row.
#[derive(Clone, Copy)]
pub(crate) struct Q8Rows<'a> {
    pub qs: &'a [Block],
    pub d: &'a [u16],
    pub kb: usize,
}

/// Activation rows per pass over the weights: enough to reuse each weight block many times,
/// few enough that the quantized rows (m × k bytes) stay in L2 while the weights stream by.
const ACT_BYTES_PER_PASS: usize = 192 * 1024;

/// `out[a][r] = Σ_b sw[r][b]·sx[a][b]·(w[r][b] · x[a][b])` for the rows in `w`; `out` holds
/// one slice (of `w`'s row count) per activation row.
#[inline(always)]
pub(crate) fn matmul_rows<K: Q8Kernel>(
    kern: K,
    w: Q8Rows<'_>,
    acts: &QuantActs,
    out: &mut [&mut [f32]],
) {
    let kb = w.kb;
    let rows = w.d.len() / kb.max(1);
    let m = acts.rows();
    let per_pass = (ACT_BYTES_PER_PASS / acts.k.max(1)).max(4) / 4 * 4;
    let mut sw = vec![0f32; 4 * kb];
    for a0 in (0..m).step_by(per_pass) {
        let a1 = (a0 + per_pass).min(m);
        // Few activation rows: more weight rows per tile for independent accumulators.
        let r_tile = if a1 - a0 <= 2 { 4 } else { 2 };
        let mut r = 0;
        while r < rows {
            let take = if rows - r >= r_tile { r_tile } else { 1 };
            for (i, s) in sw.chunks_exact_mut(kb.max(1)).take(take).enumerate() {
                for (s, &h) in s.iter_mut().zip(&w.d[(r + i) * kb..(r + i + 1) * kb]) {
                    *s = f16_to_f32(h);
                }
            }
            let wrow = |i: usize| &w.qs[(r + i) * kb..(r + i + 1) * kb];
            let srow = |i: usize| &sw[i * kb..(i + 1) * kb];
            match take {
                4 => acts_pass::<K, 4>(
                    kern,
                    [0, 1, 2, 3].map(wrow),
                    [0, 1, 2, 3].map(srow),
                    acts,
                    a0..a1,
                    r,
                    out,
                ),
                2 => acts_pass::<K, 2>(
                    kern,
                    [0, 1].map(wrow),
                    [0, 1].map(srow),
                    acts,
                    a0..a1,
                    r,
                    out,
                ),
                _ => acts_pass::<K, 1>(kern, [wrow(0)], [srow(0)], acts, a0..a1, r, out),
            }
            r += take;
        }
    }
}

/// One tile of weight rows against activation rows `acts_range`, in groups of up to four.
#[inline(always)]
fn acts_pass<K: Q8Kernel, const R: usize>(
    kern: K,
    w: [&[Block]; R],
    sw: [&[f32]; R],
    acts: &QuantActs,
    acts_range: std::ops::Range<usize>,
    r: usize,
    out: &mut [&mut [f32]],
) {
    let mut a = acts_range.start;
    while a < acts_range.end {
        let take = (acts_range.end - a).min(4);
        match take {
            4 => group::<K, R, 4>(kern, w, sw, acts, a, r, out),
            3 => group::<K, R, 3>(kern, w, sw, acts, a, r, out),
            2 => group::<K, R, 2>(kern, w, sw, acts, a, r, out),
            _ => group::<K, R, 1>(kern, w, sw, acts, a, r, out),
        }
        a += take;
    }
}

#[inline(always)]
fn group<K: Q8Kernel, const R: usize, const MA: usize>(
    kern: K,
    w: [&[Block]; R],
    sw: [&[f32]; R],
    acts: &QuantActs,
    a: usize,
    r: usize,
    out: &mut [&mut [f32]],
) {
    let x: [(&[Block], &[f32]); MA] = std::array::from_fn(|j| acts.row(a + j));
    let res = kern.tile::<R, MA>(w, sw, x.map(|x| x.0), x.map(|x| x.1));
    for (j, o) in out[a..a + MA].iter_mut().enumerate() {
        for (i, v) in res.iter().enumerate() {
            o[r + i] = v[j];
        }
    }
}

/// Plain loops: an i8×i8→i32 dot per block that LLVM vectorizes under `pulp`'s dispatch.
#[derive(Clone, Copy)]
pub(crate) struct Portable;

impl Q8Kernel for Portable {
    #[inline(always)]
    fn tile<const R: usize, const MA: usize>(
        self,
        w: [&[Block]; R],
        sw: [&[f32]; R],
        x: [&[Block]; MA],
        sx: [&[f32]; MA],
    ) -> [[f32; MA]; R] {
        let mut acc = [[0f32; MA]; R];
        for i in 0..R {
            for j in 0..MA {
                for (((wb, &ws), xb), &xs) in w[i].iter().zip(sw[i]).zip(x[j]).zip(sx[j]) {
                    let dot: i32 =
                        wb.iter().zip(xb).map(|(&a, &b)| i32::from(a) * i32::from(b)).sum();
                    acc[i][j] += dot as f32 * (ws * xs);
                }
            }
        }
        acc
    }
}

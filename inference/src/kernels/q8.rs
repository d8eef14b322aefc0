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

/// Weight rows interleaved per block: a tile's rows are read as one sequential stream, which
/// the hardware prefetcher follows (four rows of 896 bytes each, read side by side, were
/// 3× slower from DRAM than from L3).
pub(crate) const TILE: usize = 4;

/// A tile's dot products: `R` weight rows (interleaved blocks and their f32 scales, `kb`
/// entries each) by `MA` activation rows (blocks and scales).
pub(crate) trait Q8Kernel: Copy {
    fn tile<const R: usize, const MA: usize>(
        self,
        w: &[[Block; R]],
        sw: &[[f32; R]],
        x: [&[Block]; MA],
        sx: [&[f32]; MA],
    ) -> [[f32; MA]; R];
}

/// Rows of Q8_0 weights, starting at a multiple of [`TILE`]: full tiles of `TILE` rows
/// interleaved by block (`[tile][block][row]`), then the last `rows % TILE` rows plain.
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
    let rows = w.d.len() / kb;
    let m = acts.rows();
    let per_pass = (ACT_BYTES_PER_PASS / acts.k).max(4) / 4 * 4;
    let mut sw = vec![[0f32; TILE]; kb];
    let mut sw1 = vec![[0f32; 1]; kb];
    for a0 in (0..m).step_by(per_pass) {
        let a1 = (a0 + per_pass).min(m);
        let mut r = 0;
        while r < rows {
            if rows - r >= TILE {
                let (d, _) = w.d[r * kb..(r + TILE) * kb].as_chunks::<TILE>();
                for (s, d) in sw.iter_mut().zip(d) {
                    *s = d.map(f16_to_f32);
                }
                let (qs, _) = w.qs[r * kb..(r + TILE) * kb].as_chunks::<TILE>();
                acts_pass::<K, TILE, 2>(kern, qs, &sw, acts, a0..a1, r, out);
                r += TILE;
            } else {
                for (s, &d) in sw1.iter_mut().zip(&w.d[r * kb..(r + 1) * kb]) {
                    *s = [f16_to_f32(d)];
                }
                let (qs, _) = w.qs[r * kb..(r + 1) * kb].as_chunks::<1>();
                acts_pass::<K, 1, 4>(kern, qs, &sw1, acts, a0..a1, r, out);
                r += 1;
            }
        }
    }
}

/// One tile of `R` weight rows against activation rows `acts_range`, in groups of up to `MA`.
#[inline(always)]
fn acts_pass<K: Q8Kernel, const R: usize, const MA: usize>(
    kern: K,
    w: &[[Block; R]],
    sw: &[[f32; R]],
    acts: &QuantActs,
    acts_range: std::ops::Range<usize>,
    r: usize,
    out: &mut [&mut [f32]],
) {
    let mut a = acts_range.start;
    while a < acts_range.end {
        let take = (acts_range.end - a).min(MA);
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
    w: &[[Block; R]],
    sw: &[[f32; R]],
    acts: &QuantActs,
    a: usize,
    r: usize,
    out: &mut [&mut [f32]],
) {
    let x: [(&[Block], &[f32]); MA] = std::array::from_fn(|j| acts.row(a + j));
    let res = kern.tile::<R, MA>(w, &sw[..w.len()], x.map(|x| x.0), x.map(|x| x.1));
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
        w: &[[Block; R]],
        sw: &[[f32; R]],
        x: [&[Block]; MA],
        sx: [&[f32]; MA],
    ) -> [[f32; MA]; R] {
        let mut acc = [[0f32; MA]; R];
        for (b, (wb, ws)) in w.iter().zip(sw).enumerate() {
            for i in 0..R {
                for j in 0..MA {
                    let dot: i32 = wb[i]
                        .iter()
                        .zip(&x[j][b])
                        .map(|(&p, &q)| i32::from(p) * i32::from(q))
                        .sum();
                    acc[i][j] += dot as f32 * (ws[i] * sx[j][b]);
                }
            }
        }
        acc
    }
}

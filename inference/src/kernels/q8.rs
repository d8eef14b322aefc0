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

/// A tile's dot products: `R` weight rows (interleaved blocks, `kb` of them) by one
/// activation row (blocks `x`, their absolute values `ax`), with `sc[b][i]` the product of
/// the two scales of block `b` for weight row `i`.
pub(crate) trait Q8Kernel: Copy {
    fn tile<const R: usize>(
        self,
        w: &[[Block; R]],
        sc: &[[f32; R]],
        x: &[Block],
        ax: &[Block],
    ) -> [f32; R];
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
/// few enough that the quantized rows (2 × m × k bytes) stay in L2 while the weights stream.
const ACT_BYTES_PER_PASS: usize = 256 * 1024;

/// `out[a][r] = Σ_b sw[r][b]·sx[a][b]·(w[r][b] · x[a][b])` for the rows in `w`; `out` holds
/// one slice (of `w`'s row count) per activation row.
///
/// A tile's weights (4 rows: 3.5 KB at k = 896, 19 KB at k = 4864) stay in L1 while every
/// activation row of the pass goes by, so they come from memory once per pass. (Tiles of
/// 4 weight × 2 activation rows ran no faster: the bottleneck is the vector ALUs, and the
/// extra accumulators spilled.)
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
    let per_pass = (ACT_BYTES_PER_PASS / (2 * acts.k)).max(1);
    // All of the chunk's scales as f32 first (4 bytes per 34-byte block, so it stays in L2):
    // reading them tile by tile between the int8 blocks halved the rate from DRAM at large k.
    let sw: Vec<f32> = w.d.iter().map(|&h| f16_to_f32(h)).collect();
    let (mut sc, mut sc1) = (vec![[0f32; TILE]; kb], vec![[0f32; 1]; kb]);
    for a0 in (0..m).step_by(per_pass) {
        let a1 = (a0 + per_pass).min(m);
        let mut r = 0;
        while r < rows {
            let blocks = r * kb..(r + TILE).min(rows) * kb;
            if rows - r >= TILE {
                let (sw, _) = sw[blocks.clone()].as_chunks::<TILE>();
                let (qs, _) = w.qs[blocks].as_chunks::<TILE>();
                tile_rows::<K, TILE>(kern, qs, sw, &mut sc, acts, a0..a1, r, out);
                r += TILE;
            } else {
                let blocks = r * kb..(r + 1) * kb;
                let (sw, _) = sw[blocks.clone()].as_chunks::<1>();
                let (qs, _) = w.qs[blocks].as_chunks::<1>();
                tile_rows::<K, 1>(kern, qs, sw, &mut sc1, acts, a0..a1, r, out);
                r += 1;
            }
        }
    }
}

/// One tile of `R` weight rows (starting at row `r`) against activation rows `acts_range`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tile_rows<K: Q8Kernel, const R: usize>(
    kern: K,
    w: &[[Block; R]],
    sw: &[[f32; R]],
    sc: &mut [[f32; R]],
    acts: &QuantActs,
    acts_range: std::ops::Range<usize>,
    r: usize,
    out: &mut [&mut [f32]],
) {
    for a in acts_range {
        let (x, ax, sx) = acts.row(a);
        for ((c, w), &x) in sc.iter_mut().zip(sw).zip(sx) {
            *c = w.map(|w| w * x);
        }
        let res = kern.tile::<R>(w, sc, x, ax);
        out[a][r..r + R].copy_from_slice(&res);
    }
}

/// Plain loops: an i8×i8→i32 dot per block that LLVM vectorizes under `pulp`'s dispatch.
#[derive(Clone, Copy)]
pub(crate) struct Portable;

impl Q8Kernel for Portable {
    #[inline(always)]
    fn tile<const R: usize>(
        self,
        w: &[[Block; R]],
        sc: &[[f32; R]],
        x: &[Block],
        _ax: &[Block],
    ) -> [f32; R] {
        let mut acc = [0f32; R];
        for ((wb, sc), xb) in w.iter().zip(sc).zip(x) {
            for i in 0..R {
                let dot: i32 =
                    wb[i].iter().zip(xb).map(|(&p, &q)| i32::from(p) * i32::from(q)).sum();
                acc[i] += dot as f32 * sc[i];
            }
        }
        acc
    }
}

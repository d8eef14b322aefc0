//! The VNNI kernels on 512-bit registers, for tiles of many activation rows (prefill,
//! batched decode): tiles unpacked to a byte per value ([`super::q8`]) and the k-quants'
//! wide tiles ([`super::superblock::Wide`]) hold two weight rows side by side in one
//! register, against the activation values in both halves, so a dot, a convert, a scale
//! product and an FMA cover two rows; two activation rows go through a tile together, so
//! four accumulator chains hide the FMA's latency. Each row keeps its own 8 lanes and its
//! blocks in order, so every row's sum is the AVX2 tiles' sequence of operations: the same
//! bits. Everything else is the 256-bit VNNI kernel's ([`super::vnni`]).
//!
//! Dense f32 weights ([`super::dense`]) pair their rows the same way on plain AVX-512F
//! ([`Dense512`]): the same FMAs per row and lane as the AVX2 tile, so the same bits.

use core::arch::x86_64::{__m256d, __m512, __m512d, __m512i};

use pulp::x86::{V3, V4};

use super::act::{ActRow, QK};
use super::avx2::{Avx2, Madd, WideLoad};
use super::dense::{Acc, DenseKernel};
use super::q8::{Block, Bytes, Q8Kernel, Signed, TILE, Unsigned};
use super::superblock::{SuperKernel, SuperRow, SuperTile, SuperValues, Wide};
use super::vnni::{V4Vnni, Vnni};

/// The 512-bit kernel, when this CPU has AVX-512 VNNI, and the token whose `vectorize`
/// compiles it for it.
pub(crate) fn kernel() -> Option<(V4Vnni, Avx512)> {
    let (simd, ymm) = super::vnni::kernel()?;
    Some((simd, Avx512 { s: simd, ymm }))
}

/// A full tile's bytes and scales, and `A` activation rows' blocks and scales.
struct Tile512<'a, const A: usize> {
    w: &'a [[Block; TILE]],
    sw: &'a [[f32; TILE]],
    xq: [&'a [Block]; A],
    sx: [&'a [f32]; A],
}

/// The VNNI tiles, with tiles of [`TILE`] rows unpacked to bytes on 512-bit registers: rows
/// `2j` and `2j + 1` of a block (adjacent in the tile) in one register.
#[derive(Clone, Copy)]
pub(crate) struct Avx512 {
    s: V4Vnni,
    ymm: Avx2<Vnni>,
}

impl Q8Kernel for Avx512 {
    fn any_u8(self) -> bool {
        true
    }

    #[inline(always)]
    fn unsign<const R: usize, S: Signed + WideLoad>(self, w: &[[S; R]], out: &mut [[Block; R]]) {
        self.ymm.unsign::<R, S>(w, out)
    }

    #[inline(always)]
    fn unpack_signed<const R: usize, S: Signed + WideLoad>(
        self,
        w: &[[S; R]],
        out: &mut [[Block; R]],
    ) {
        self.ymm.unpack_signed::<R, S>(w, out)
    }

    #[inline(always)]
    fn unpack<const R: usize, U: Unsigned + WideLoad>(self, w: &[[U; R]], out: &mut [[Block; R]]) {
        self.ymm.unpack::<R, U>(w, out)
    }

    #[inline(always)]
    fn scales<const R: usize>(self, sw: &[[f32; R]], sx: &[f32], out: &mut [[f32; R]]) {
        self.ymm.scales::<R>(sw, sx, out)
    }

    #[inline(always)]
    fn tile<const R: usize, S: Signed + WideLoad>(
        self,
        w: &[[S; R]],
        sc: &[[f32; R]],
        x: &[Block],
        ax: &[Block],
    ) -> [f32; R] {
        Q8Kernel::tile::<R, S>(self.ymm, w, sc, x, ax)
    }

    #[inline(always)]
    fn tile_shifted<const R: usize, U: Unsigned + WideLoad>(
        self,
        w: &[[U; R]],
        sc: &[[f32; R]],
        x: &[Block],
        shift: &[[i32; QK / 4]],
    ) -> [f32; R] {
        self.ymm.tile_shifted::<R, U>(w, sc, x, shift)
    }

    #[inline(always)]
    fn tile_offset<const R: usize, U: Unsigned + WideLoad>(
        self,
        w: &[[U; R]],
        sc: &[[f32; R]],
        mn: &[[f32; R]],
        x: &[Block],
        xs: &[f32],
    ) -> [f32; R] {
        self.ymm.tile_offset::<R, U>(w, sc, mn, x, xs)
    }

    #[inline(always)]
    fn tile_bytes<const R: usize>(
        self,
        t: &Bytes<'_, R>,
        x: &ActRow<'_>,
        sc: &mut [[f32; R]],
    ) -> [f32; R] {
        if R != TILE {
            return self.ymm.tile_bytes::<R>(t, x, sc);
        }
        let [out] = self.rows::<R, 1>(t, [x]);
        out
    }

    #[inline(always)]
    fn tile_bytes2<const R: usize>(
        self,
        t: &Bytes<'_, R>,
        x: [&ActRow<'_>; 2],
        sc: &mut [[f32; R]],
    ) -> [[f32; R]; 2] {
        if R != TILE {
            return self.ymm.tile_bytes2::<R>(t, x, sc);
        }
        self.rows::<R, 2>(t, x)
    }
}

impl SuperKernel for Avx512 {
    #[inline(always)]
    fn widen<const R: usize, V: SuperValues>(
        self,
        w: &[[V; R]],
        sc: &[[[i8; 16]; R]],
        out: &mut [Wide<R>],
    ) {
        self.ymm.widen::<R, V>(w, sc, out)
    }

    #[inline(always)]
    fn tile<const R: usize, T: SuperTile<R>>(
        self,
        w: &[T],
        sc: &[[[i8; 16]; R]],
        mn: &[[[i16; 16]; R]],
        d: &[[f32; R]],
        dmin: &[[f32; R]],
        x: SuperRow<'_>,
    ) -> [f32; R] {
        SuperKernel::tile::<R, T>(self.ymm, w, sc, mn, d, dmin, x)
    }

    /// Rows `2j` and `2j + 1` of each 32 values in one register (adjacent in [`Wide`]): a
    /// byte multiply-add and a word dot per 32 values of two rows, for `A` activation rows
    /// that share each load of the weights. Each row keeps its own 8 lanes, with the AVX2
    /// tile's integers and its f32 operations in its order.
    #[inline(always)]
    fn tile_wide<const R: usize, const A: usize>(
        self,
        w: &[Wide<R>],
        sc: &[[[i8; 16]; R]],
        mn: &[[[i16; 16]; R]],
        d: &[[f32; R]],
        dmin: &[[f32; R]],
        x: [SuperRow<'_>; A],
    ) -> [[f32; R]; A] {
        if R != TILE {
            return self.ymm.tile_wide::<R, A>(w, sc, mn, d, dmin, x);
        }
        let ks = w.len();
        let mn = &mn.as_flattened().as_chunks::<TILE>().0[..ks];
        let d = &d.as_flattened().as_chunks::<TILE>().0[..ks];
        let dmin = &dmin.as_flattened().as_chunks::<TILE>().0[..ks];
        let (f, bw) = (self.s.avx512f, self.s.avx512bw);
        let xq = x.map(|x| &x.qs[..ks]);
        let (dx, bsums) = (x.map(|x| &x.d[..ks]), x.map(|x| &x.bsums[..ks]));
        let pick = pick_pairs();
        let mut acc = [[f._mm512_setzero_ps(); TILE / 2]; A];
        for b in 0..ks {
            let wb = &w[b];
            let (dv, mv) = (pulp::cast(d[b]), pulp::cast(dmin[b]));
            let (dv, mv) = (f._mm512_castps128_ps512(dv), f._mm512_castps128_ps512(mv));
            for j in 0..TILE / 2 {
                // Even and odd chunks summed apart, then together: integers, so in any order.
                let zero = f._mm512_setzero_si512();
                let (mut even, mut odd) = ([zero; A], [zero; A]);
                for c in 0..8 {
                    let u: __m512i = pulp::cast([wb.u[c][2 * j], wb.u[c][2 * j + 1]]);
                    let sv: __m512i = pulp::cast([wb.s[c][2 * j], wb.s[c][2 * j + 1]]);
                    for a in 0..A {
                        let (xs, _) = xq[a][b].as_chunks::<32>();
                        let xv = f._mm512_broadcast_i64x4(pulp::cast(xs[c]));
                        let p = bw._mm512_maddubs_epi16(u, xv);
                        if c % 2 == 0 {
                            even[a] = self.ymm.1.words512(even[a], p, sv);
                        } else {
                            odd[a] = self.ymm.1.words512(odd[a], p, sv);
                        }
                    }
                }
                let mn2: __m512i = pulp::cast([mn[b][2 * j], mn[b][2 * j + 1]]);
                let (dj, mj) =
                    (f._mm512_permutexvar_ps(pick[j], dv), f._mm512_permutexvar_ps(pick[j], mv));
                for a in 0..A {
                    let dot = f._mm512_add_epi32(even[a], odd[a]);
                    let bs = f._mm512_broadcast_i64x4(pulp::cast(bsums[a][b]));
                    let mins = bw._mm512_madd_epi16(mn2, bs);
                    let dxv = f._mm512_set1_ps(dx[a][b]);
                    let (fd, fm) = (f._mm512_mul_ps(dj, dxv), f._mm512_mul_ps(mj, dxv));
                    let (dot, mins) = (f._mm512_cvtepi32_ps(dot), f._mm512_cvtepi32_ps(mins));
                    acc[a][j] = f._mm512_fmadd_ps(dot, fd, acc[a][j]);
                    acc[a][j] = f._mm512_fnmadd_ps(mins, fm, acc[a][j]);
                }
            }
        }
        // A loop, not `array::map` (see `avx2::lane_sums`).
        let mut out = [[0f32; R]; A];
        for (out, acc) in out.iter_mut().zip(acc) {
            let lanes: [[f32; 8]; TILE] = pulp::cast(acc);
            for (o, lanes) in out.iter_mut().zip(lanes) {
                *o = lanes.iter().sum();
            }
        }
        out
    }
}

/// `vpermps` indices that put element `2j` of a tile's four in lanes 0–7 and `2j + 1` in
/// lanes 8–15.
#[inline(always)]
fn pick_pairs() -> [__m512i; TILE / 2] {
    std::array::from_fn(|j| {
        pulp::cast::<[i32; 16], _>(std::array::from_fn(|l| (2 * j + l / 8) as i32))
    })
}

impl Avx512 {
    /// A tile of [`TILE`] unpacked rows (`R` is `TILE`) against `A` activation rows: `2·A`
    /// accumulators, so that consecutive blocks' FMAs do not wait on each other.
    #[inline(always)]
    fn rows<const R: usize, const A: usize>(
        self,
        t: &Bytes<'_, R>,
        x: [&ActRow<'_>; A],
    ) -> [[f32; R]; A] {
        let kb = t.w.len();
        let w = &t.w.as_flattened().as_chunks::<TILE>().0[..kb];
        let sw = &t.sw.as_flattened().as_chunks::<TILE>().0[..kb];
        let tile = Tile512 { w, sw, xq: x.map(|x| &x.qs[..kb]), sx: x.map(|x| &x.d[..kb]) };
        let acc = if t.shifted {
            self.sums::<A, true>(&tile, x.map(|x| &x.shifts[..kb]))
        } else {
            self.sums::<A, false>(&tile, [&[][..]; A])
        };
        // A loop, not `array::map` (see `avx2::lane_sums`).
        let mut out = [[0f32; R]; A];
        for (out, acc) in out.iter_mut().zip(acc) {
            let lanes: [[f32; 8]; TILE] = pulp::cast(acc);
            for (o, lanes) in out.iter_mut().zip(lanes) {
                *o = lanes.iter().sum();
            }
        }
        if !t.shifted {
            // Offsets as the AVX2 tile sums them: one f32 per row, block by block, added
            // after the lanes.
            let (mn, xs) = (&t.mn[..kb], x.map(|x| &x.sums[..kb]));
            for (out, xs) in out.iter_mut().zip(xs) {
                let mut off = [0f32; R];
                for b in 0..kb {
                    for i in 0..R {
                        off[i] += mn[b][i] * xs[b];
                    }
                }
                for (o, off) in out.iter_mut().zip(off) {
                    *o += off;
                }
            }
        }
        out
    }

    /// Each activation row's 8 lanes per weight row: rows `2j`, `2j + 1` in `[a][j]`.
    // Block `b` of several slices cut to one length (no bounds checks in the loop).
    #[allow(clippy::needless_range_loop)]
    #[inline(always)]
    fn sums<const A: usize, const SHIFTED: bool>(
        self,
        t: &Tile512<'_, A>,
        shift: [&[[i32; QK / 4]]; A],
    ) -> [[__m512; TILE / 2]; A] {
        let f = self.s.avx512f;
        let mut acc = [[f._mm512_setzero_ps(); TILE / 2]; A];
        let zero = f._mm512_setzero_si512();
        // Lanes 0-7 take scale 2j, lanes 8-15 scale 2j + 1.
        let pick = pick_pairs();
        for b in 0..t.w.len() {
            let wv: [__m512i; TILE / 2] =
                std::array::from_fn(|j| pulp::cast([t.w[b][2 * j], t.w[b][2 * j + 1]]));
            let sw = f._mm512_castps128_ps512(pulp::cast(t.sw[b]));
            let swv: [__m512; TILE / 2] =
                std::array::from_fn(|j| f._mm512_permutexvar_ps(pick[j], sw));
            for a in 0..A {
                let xv = f._mm512_broadcast_i64x4(pulp::cast(t.xq[a][b]));
                let start =
                    if SHIFTED { f._mm512_broadcast_i64x4(pulp::cast(shift[a][b])) } else { zero };
                let sxv = f._mm512_set1_ps(t.sx[a][b]);
                for j in 0..TILE / 2 {
                    let p32 = self.ymm.1.bytes512(start, wv[j], xv);
                    acc[a][j] = self.scaled_sum(p32, swv[j], sxv, acc[a][j]);
                }
            }
        }
        acc
    }

    /// `acc + f32(p32) · (sw · sx)`: the AVX2 tiles' scale product and FMA, for two rows.
    #[inline(always)]
    fn scaled_sum(self, p32: __m512i, sw: __m512, sx: __m512, acc: __m512) -> __m512 {
        let f = self.s.avx512f;
        let scale = f._mm512_mul_ps(sw, sx);
        f._mm512_fmadd_ps(f._mm512_cvtepi32_ps(p32), scale, acc)
    }
}

/// The dense tile on 512-bit registers, when this CPU has AVX-512F, and the token whose
/// `vectorize` compiles it for it.
pub(crate) fn dense() -> Option<(V4, Dense512)> {
    let (v4, v3) = (V4::try_new()?, V3::try_new()?);
    Some((v4, Dense512 { v4, ymm: Avx2(v3, Madd) }))
}

/// Dense f32 tiles of [`TILE`] weight rows with rows `2j` and `2j + 1` in one register
/// against an activation piece broadcast to both halves: one FMA for two rows, each row
/// in its own 8 lanes with the AVX2 tile's FMAs in its order. The rows are apart in
/// memory, so each pair costs an insert per 8 values, shared by the activation rows of
/// the call; other tiles (the odd rows at the end) take the AVX2 tile.
#[derive(Clone, Copy)]
pub(crate) struct Dense512 {
    v4: V4,
    ymm: Avx2<Madd>,
}

impl DenseKernel for Dense512 {
    const ACTS: usize = 4;

    #[inline(always)]
    fn accumulate<const R: usize, const A: usize>(
        self,
        acc: [&mut Acc<R>; A],
        w: [&[f32]; R],
        xs: [&[f32]; A],
    ) {
        if R != TILE {
            return self.ymm.accumulate::<R, A>(acc, w, xs);
        }
        let f = self.v4.avx512f;
        let chunks = xs[0].len() / 8;
        let wc: [&[[f32; 8]]; R] = w.map(|w| &w.as_chunks().0[..chunks]);
        let xc: [&[[f32; 8]]; A] = xs.map(|x| &x.as_chunks().0[..chunks]);
        let mut regs: [[__m512; TILE / 2]; A] = std::array::from_fn(|a| {
            let (pairs, _) = acc[a].as_flattened().as_chunks::<16>();
            std::array::from_fn(|j| pulp::cast(pairs[j]))
        });
        for c in 0..chunks {
            let xv: [__m512; A] = std::array::from_fn(|a| {
                let x: __m256d = pulp::cast(xc[a][c]);
                pulp::cast::<__m512d, _>(f._mm512_broadcast_f64x4(x))
            });
            for j in 0..TILE / 2 {
                let wv: __m512 = pulp::cast([wc[2 * j][c], wc[2 * j + 1][c]]);
                for a in 0..A {
                    regs[a][j] = f._mm512_fmadd_ps(xv[a], wv, regs[a][j]);
                }
            }
        }
        for (acc, regs) in acc.into_iter().zip(regs) {
            let (pairs, _) = acc.as_flattened_mut().as_chunks_mut::<16>();
            for (pair, reg) in pairs.iter_mut().zip(regs) {
                *pair = pulp::cast(reg);
            }
        }
    }
}

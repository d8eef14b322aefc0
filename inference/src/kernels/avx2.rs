//! The tiles on AVX2.
//!
//! Signed weights (llama.cpp's int8 dot, operands swapped): `maddubs(|x|, sign(w, x))` gives
//! 16 i16 pair sums of one block, `madd` with ones widens them to 8 i32, which are converted
//! and scaled per block into f32 accumulators. `|x|` comes precomputed with the activations,
//! which saves a vector op per block pair on the ALUs that bound this loop.
//!
//! Unsigned weights need no sign trick: `maddubs(w, x)` directly (pair sums stay below
//! 2·31·127 < i16::MAX), and the offsets add `m·Σx` per block as a scalar.
//!
//! The k-quants' super-blocks ([`super::superblock`]): `maddubs(u, x)` per 32 values, then
//! `madd` with the scales widened to i16 (a `pshufb` picks each 16 values' scale), summed in
//! i32 over the super-block and converted once.
//!
//! Where the CPU has AVX-512 VNNI, `maddubs` + `madd` become one `vpdpbusd`, and the
//! super-blocks' `madd` + `add` one `vpdpwssd` ([`super::vnni`]): the same integers (no pair
//! sum above reaches i16's limit, so `maddubs` never saturates), hence the same f32 sums in
//! the same order. Outputs are bit for bit the same on AVX2 and AVX-512 VNNI machines.
//!
//! `pulp::x86::V3` proves the CPU has AVX2+FMA, so the intrinsics are safe to call;
//! everything is inlined into its `#[target_feature]` body.

use core::arch::x86_64::{__m128i, __m256, __m256i};
use pulp::x86::V3;

use super::act::QK;
use super::codes::{Codebook, Coded};
use super::dense::{Acc, DenseKernel};
use super::q8::{Block, Fives, Nibbles, Q8Kernel, Signed, Unsigned};
use super::superblock::{SuperKernel, SuperRow, SuperTile, SuperValues, Wide};

/// The tiles on AVX2 (`D` = [`Madd`]) or with VNNI's dot products.
#[derive(Clone, Copy)]
pub(crate) struct Avx2<D = Madd>(pub V3, pub D);

/// The integer dot products the tiles are made of.
pub(crate) trait Dot: Copy {
    /// `acc` plus, per i32 lane, the sum of 4 adjacent products `u·i` (u8 × i8). Callers keep
    /// every pair of products within i16 (AVX2 saturates there, VNNI does not).
    fn bytes(self, s: V3, acc: __m256i, u: __m256i, i: __m256i) -> __m256i;
    /// Whether [`Dot::bytes`] is exact for any u8 `u` (no pair limit).
    const ANY_U8: bool;
    /// `acc` plus, per i32 lane, the sum of 2 adjacent products `a·b` (i16 × i16).
    fn words(self, s: V3, acc: __m256i, a: __m256i, b: __m256i) -> __m256i;
}

/// AVX2's dot products: `maddubs` to i16 pairs, `madd` to i32, `add`.
#[derive(Clone, Copy)]
pub(crate) struct Madd;

impl Dot for Madd {
    const ANY_U8: bool = false;

    #[inline(always)]
    fn bytes(self, s: V3, acc: __m256i, u: __m256i, i: __m256i) -> __m256i {
        let p16 = s.avx2._mm256_maddubs_epi16(u, i);
        let p32 = s.avx2._mm256_madd_epi16(p16, s.avx._mm256_set1_epi16(1));
        s.avx2._mm256_add_epi32(acc, p32)
    }

    #[inline(always)]
    fn words(self, s: V3, acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        s.avx2._mm256_add_epi32(acc, s.avx2._mm256_madd_epi16(a, b))
    }
}

/// `acc + scale · (one block's 8 i32 partial sums converted)`.
#[inline(always)]
fn scaled_sum(s: V3, p32: __m256i, scale: f32, acc: __m256) -> __m256 {
    s.fma._mm256_fmadd_ps(s.avx._mm256_cvtepi32_ps(p32), s.avx._mm256_set1_ps(scale), acc)
}

/// How far ahead of the tile loop its weights are asked for (see [`prefetch`]).
const AHEAD_BYTES: usize = 12 << 10;

/// Asks for the cache lines of `w[b]`'s bytes `AHEAD_BYTES` further on, into L2: the weights
/// of a tile and the tiles after it are one sequential stream, and on this loop the
/// hardware's prefetcher alone kept one core at half the rate it can read memory (the lm head
/// of 151,936 × 896 Q8_0, one activation row: 21.6 ms on one thread, 12.9 with this; 10.4 ms
/// on two, 7.4–8.4 with this; `cargo bench -p fleet-benches --bench kernels`). A prefetch
/// never faults, so the address past the end of the weights needs no check.
#[inline(always)]
fn prefetch<T>(s: V3, w: &[T], b: usize) {
    let size = std::mem::size_of::<T>();
    let ahead = w.as_ptr().cast::<i8>().wrapping_add(b * size + AHEAD_BYTES);
    let mut line = 0;
    while line < size {
        s.sse._mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T1 }>(ahead.wrapping_add(line));
        line += 64;
    }
}

/// Each accumulator's 8 lanes summed in order. A loop, not `array::map`: that one was left
/// out of line, compiled without the tiles' target features (7% of a Q4_K_M prefill).
#[inline(always)]
pub(crate) fn lane_sums<const R: usize>(acc: [__m256; R]) -> [f32; R] {
    let mut out = [0f32; R];
    for (o, v) in out.iter_mut().zip(acc) {
        *o = pulp::cast::<__m256, [f32; 8]>(v).iter().sum();
    }
    out
}

/// A block's 32 values in one register, in element order.
pub(crate) trait WideLoad {
    fn load(&self, s: V3) -> __m256i;
}

impl WideLoad for Block {
    #[inline(always)]
    fn load(&self, _s: V3) -> __m256i {
        pulp::cast(*self)
    }
}

impl WideLoad for Nibbles {
    #[inline(always)]
    fn load(&self, s: V3) -> __m256i {
        // Low nibbles are values 0..16, high nibbles 16..32: the bytes in both halves of
        // the register, the upper half shifted down by 4, then masked.
        let v = pulp::cast(*self);
        let both = s.avx._mm256_set_m128i(s.sse2._mm_srli_epi16::<4>(v), v);
        s.avx2._mm256_and_si256(both, s.avx._mm256_set1_epi8(0x0F))
    }
}

impl<C: Codebook> WideLoad for Coded<C> {
    #[inline(always)]
    fn load(&self, s: V3) -> __m256i {
        // The codes as bytes, then each byte the table's value at it (`pshufb` looks up
        // within each 128-bit half, so both halves hold the table).
        let table: __m128i = pulp::cast(C::VALUES);
        let table = s.avx._mm256_set_m128i(table, table);
        s.avx2._mm256_shuffle_epi8(table, self.0.load(s))
    }
}

impl WideLoad for Fives {
    #[inline(always)]
    fn load(&self, s: V3) -> __m256i {
        let [nibbles @ .., h0, h1, h2, h3] = *self;
        let low = nibbles.load(s);
        let high = u32::from_le_bytes([h0, h1, h2, h3]);
        // Byte `j` gets the bits' byte `j / 8`; or-ing in all bits but `j % 8` leaves all
        // ones exactly where value `j`'s fifth bit is set (llama.cpp's bytes_from_bits_32).
        let spread = s.avx2._mm256_shuffle_epi8(
            s.avx._mm256_set1_epi32(high as i32),
            s.avx._mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0),
        );
        let others = s.avx._mm256_set1_epi64x(0x7fbfdfeff7fbfdfe);
        let set = s
            .avx2
            ._mm256_cmpeq_epi8(s.avx2._mm256_or_si256(spread, others), s.avx._mm256_set1_epi8(-1));
        s.avx2._mm256_or_si256(low, s.avx2._mm256_and_si256(set, s.avx._mm256_set1_epi8(0x10)))
    }
}

/// A tile's values as the tiles load them, stored (packed values unpacked, codes looked up).
#[inline(always)]
fn store_loaded<const R: usize, T: WideLoad>(s: V3, w: &[[T; R]], out: &mut [[Block; R]]) {
    for (o, w) in out.iter_mut().zip(w) {
        for (o, w) in o.iter_mut().zip(w) {
            *o = pulp::cast(w.load(s));
        }
    }
}

impl<D: Dot> Q8Kernel for Avx2<D> {
    fn any_u8(self) -> bool {
        D::ANY_U8
    }

    /// `w + 128` as unsigned bytes: flipping the top bit.
    #[inline(always)]
    fn unsign<const R: usize, S: Signed + WideLoad>(self, w: &[[S; R]], out: &mut [[Block; R]]) {
        let s = self.0;
        let top = s.avx._mm256_set1_epi8(-128);
        for (o, w) in out.iter_mut().zip(w) {
            for (o, w) in o.iter_mut().zip(w) {
                *o = pulp::cast(s.avx2._mm256_xor_si256(w.load(s), top));
            }
        }
    }

    #[inline(always)]
    fn unpack_signed<const R: usize, S: Signed + WideLoad>(
        self,
        w: &[[S; R]],
        out: &mut [[Block; R]],
    ) {
        store_loaded(self.0, w, out)
    }

    #[inline(always)]
    fn unpack<const R: usize, U: Unsigned + WideLoad>(self, w: &[[U; R]], out: &mut [[Block; R]]) {
        store_loaded(self.0, w, out)
    }

    /// Two blocks of a 4-row tile per register: LLVM turned the generic loop into a chain of
    /// shuffles that took a quarter of the prefill kernel's time.
    #[inline(always)]
    fn scales<const R: usize>(self, sw: &[[f32; R]], sx: &[f32], out: &mut [[f32; R]]) {
        let s = self.0;
        let kb = sw.len();
        let (out, sx) = (&mut out[..kb], &sx[..kb]);
        // Whole pairs of blocks for R = 4; the rest (an odd last block, other R) one by one.
        let done = if R == 4 { kb / 2 * 2 } else { 0 };
        let (pairs, _) = sw[..done].as_flattened().as_chunks::<8>();
        let (dst, _) = out[..done].as_flattened_mut().as_chunks_mut::<8>();
        let (xs, _) = sx[..done].as_chunks::<2>();
        for ((d, w), x) in dst.iter_mut().zip(pairs).zip(xs) {
            let xv = s.avx._mm256_set_m128(s.sse._mm_set1_ps(x[1]), s.sse._mm_set1_ps(x[0]));
            *d = pulp::cast(s.avx._mm256_mul_ps(pulp::cast(*w), xv));
        }
        for ((c, w), &x) in out[done..].iter_mut().zip(&sw[done..]).zip(&sx[done..]) {
            *c = w.map(|w| w * x);
        }
    }

    #[inline(always)]
    fn tile<const R: usize, S: Signed + WideLoad>(
        self,
        w: &[[S; R]],
        sc: &[[f32; R]],
        x: &[Block],
        ax: &[Block],
    ) -> [f32; R] {
        let s = self.0;
        let kb = w.len();
        // Equal lengths up front so the loop below has no bounds checks.
        let (sc, x, ax) = (&sc[..kb], &x[..kb], &ax[..kb]);
        let zero = s.avx._mm256_setzero_si256();
        let mut acc = [s.avx._mm256_setzero_ps(); R];
        for b in 0..kb {
            // Unconditional: `Block` is both Q8_0 weights as stored and, on AVX2 without
            // VNNI, codes looked up once per tile of many rows (there, one wasted hint a
            // block).
            prefetch(s, w, b);
            let xv: __m256i = pulp::cast(x[b]);
            let axv: __m256i = pulp::cast(ax[b]);
            for i in 0..R {
                let wv = w[b][i].load(s);
                // |x| · (w · sign x): the unsigned operand is the activation's, so only one
                // sign per pair; pair sums stay below 2·127·128 < i16::MAX.
                let p32 = self.1.bytes(s, zero, axv, s.avx2._mm256_sign_epi8(wv, xv));
                acc[i] = scaled_sum(s, p32, sc[b][i], acc[i]);
            }
        }
        lane_sums(acc)
    }

    #[inline(always)]
    fn tile_shifted<const R: usize, U: Unsigned + WideLoad>(
        self,
        w: &[[U; R]],
        sc: &[[f32; R]],
        x: &[Block],
        shift: &[[i32; QK / 4]],
    ) -> [f32; R] {
        let s = self.0;
        let kb = w.len();
        let (sc, x, shift) = (&sc[..kb], &x[..kb], &shift[..kb]);
        let mut acc = [s.avx._mm256_setzero_ps(); R];
        for b in 0..kb {
            if U::STORED {
                prefetch(s, w, b);
            }
            let xv: __m256i = pulp::cast(x[b]);
            let start: __m256i = pulp::cast(shift[b]);
            for i in 0..R {
                // Pair sums below 2·31·127 < i16::MAX.
                let p32 = self.1.bytes(s, start, w[b][i].load(s), xv);
                acc[i] = scaled_sum(s, p32, sc[b][i], acc[i]);
            }
        }
        lane_sums(acc)
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
        let s = self.0;
        let kb = w.len();
        let (sc, mn, x, xs) = (&sc[..kb], &mn[..kb], &x[..kb], &xs[..kb]);
        let zero = s.avx._mm256_setzero_si256();
        let mut acc = [s.avx._mm256_setzero_ps(); R];
        let mut off = [0f32; R];
        for b in 0..kb {
            if U::STORED {
                prefetch(s, w, b);
            }
            let xv: __m256i = pulp::cast(x[b]);
            for i in 0..R {
                let wv = w[b][i].load(s);
                // Pair sums below 2·31·127 < i16::MAX.
                let p32 = self.1.bytes(s, zero, wv, xv);
                acc[i] = scaled_sum(s, p32, sc[b][i], acc[i]);
                off[i] += mn[b][i] * xs[b];
            }
        }
        let mut out = lane_sums(acc);
        for (o, off) in out.iter_mut().zip(off) {
            *o += off;
        }
        out
    }
}

/// `pshufb` masks for the scales of 32 values `c`: bytes `2c` ×8 then `2c + 1` ×8, so that
/// widened to i16 the low eight lanes (values 0..16 of the pair sums) take scale `2c`.
static SCALE_PAIRS: [[i8; 16]; 8] = {
    let mut masks = [[0i8; 16]; 8];
    let mut c = 0;
    while c < 8 {
        let mut i = 0;
        while i < 16 {
            masks[c][i] = (2 * c + i / 8) as i8;
            i += 1;
        }
        c += 1;
    }
    masks
};

/// The scales of values `32·c..32·c + 32`'s pair sums, widened from a super-block's 16 int8
/// scales `sc`: `sc[2c]` ×8 then `sc[2c + 1]` ×8 as i16.
#[inline(always)]
pub(crate) fn widen_scales(s: V3, sc: __m128i, c: usize) -> __m256i {
    let mask: __m128i = pulp::cast(SCALE_PAIRS[c]);
    s.avx2._mm256_cvtepi8_epi16(s.ssse3._mm_shuffle_epi8(sc, mask))
}

impl<D: Dot> SuperKernel for Avx2<D> {
    #[inline(always)]
    fn widen<const R: usize, V: SuperValues>(
        self,
        w: &[[V; R]],
        sc: &[[[i8; 16]; R]],
        out: &mut [Wide<R>],
    ) {
        let s = self.0;
        for ((o, w), sc) in out.iter_mut().zip(w).zip(sc) {
            for i in 0..R {
                for j in 0..4 {
                    let (a, b) = w[i].pair(s, j);
                    o.u[2 * j][i] = pulp::cast(a);
                    o.u[2 * j + 1][i] = pulp::cast(b);
                }
                let scales: __m128i = pulp::cast(sc[i]);
                for c in 0..8 {
                    o.s[c][i] = pulp::cast(widen_scales(s, scales, c));
                }
            }
        }
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
        let s = self.0;
        let ks = w.len();
        let (sc, mn, d, dmin) = (&sc[..ks], &mn[..ks], &d[..ks], &dmin[..ks]);
        let (xq, dx, bsums) = (&x.qs[..ks], &x.d[..ks], &x.bsums[..ks]);
        // One accumulator per row, and the masks read from memory where they are used: with
        // them in registers (8) and a second accumulator per row the loop spilled.
        let mut acc = [s.avx._mm256_setzero_ps(); R];
        for b in 0..ks {
            if T::STORED {
                prefetch(s, w, b);
            }
            let (xs, _) = xq[b].as_chunks::<32>();
            let bs: __m256i = pulp::cast(bsums[b]);
            for i in 0..R {
                let scales: __m128i = pulp::cast(sc[b][i]);
                let mut dot = s.avx._mm256_setzero_si256();
                for j in 0..4 {
                    let (w0, w1) = w[b].pair(s, i, j);
                    let p0 = s.avx2._mm256_maddubs_epi16(w0, pulp::cast(xs[2 * j]));
                    let p1 = s.avx2._mm256_maddubs_epi16(w1, pulp::cast(xs[2 * j + 1]));
                    let s0 = w[b].scales(s, i, scales, 2 * j);
                    let s1 = w[b].scales(s, i, scales, 2 * j + 1);
                    dot = self.1.words(s, dot, p0, s0);
                    dot = self.1.words(s, dot, p1, s1);
                }
                let mins = s.avx2._mm256_madd_epi16(pulp::cast(mn[b][i]), bs);
                let (fd, fm) = (d[b][i] * dx[b], dmin[b][i] * dx[b]);
                let (dot, mins) = (s.avx._mm256_cvtepi32_ps(dot), s.avx._mm256_cvtepi32_ps(mins));
                acc[i] = s.fma._mm256_fmadd_ps(dot, s.avx._mm256_set1_ps(fd), acc[i]);
                acc[i] = s.fma._mm256_fnmadd_ps(mins, s.avx._mm256_set1_ps(fm), acc[i]);
            }
        }
        lane_sums(acc)
    }
}

/// Dense f32 tiles: 8 lanes per register, one FMA per weight vector and activation row.
impl<D: Dot> DenseKernel for Avx2<D> {
    #[inline(always)]
    fn accumulate<const R: usize, const A: usize>(
        self,
        acc: [&mut Acc<R>; A],
        w: [&[f32]; R],
        xs: [&[f32]; A],
    ) {
        let s = self.0;
        let wc: [&[[f32; 8]]; R] = w.map(|w| w.as_chunks().0);
        let xc: [&[[f32; 8]]; A] = xs.map(|x| x.as_chunks().0);
        let mut regs: [[__m256; R]; A] = std::array::from_fn(|a| acc[a].map(pulp::cast));
        for c in 0..xc[0].len() {
            let xv: [__m256; A] = std::array::from_fn(|a| pulp::cast(xc[a][c]));
            for (i, wc) in wc.iter().enumerate() {
                let wv: __m256 = pulp::cast(wc[c]);
                for a in 0..A {
                    regs[a][i] = s.fma._mm256_fmadd_ps(xv[a], wv, regs[a][i]);
                }
            }
        }
        for (acc, regs) in acc.into_iter().zip(regs) {
            *acc = regs.map(pulp::cast);
        }
    }
}

//! The k-quants (Q2_K..Q6_K): super-blocks of 256 weights times activations quantized per
//! 256 values, in integers until the end of each super-block.
//!
//! Every k-quant is decoded into one form ([`super::blocks::Super`]): unsigned values below
//! 64, an int8 scale and an int16 minimum per 16 values, and f32 `d`, `dmin` per
//! super-block. With the activations quantized per 256 values (`dx`, int8 `x`, and the
//! sums of each 16, `bsum`), a super-block's dot product is
//! `d·dx·Σ sc·Σ u·x - dmin·dx·Σ mn·bsum`: the inner sums are exact integers (pair sums of
//! `u·x` stay below 2·63·127, scaled sums below 2³¹), so per 32 values the work is one
//! byte multiply-add, one widening multiply-add by the scales and one add, and the f32
//! conversion happens once per 256 values. This is llama.cpp's q4_K·q8_K scheme; it
//! quantizes the activations more coarsely (one scale per 256 values instead of 32),
//! as llama.cpp and candle do for these types.
//!
//! Values up to 15 stay packed two per byte (Q4_K's own layout: 32 bytes hold 32 values in
//! their low nibbles and the next 32 in their high ones), larger ones take a byte each. With
//! many activation rows in a pass (prefill, large batches) a tile's super-blocks are first
//! made [`Wide`]: values a byte each and scales widened to the lanes they multiply, so the
//! rows go over those without unpacking or widening anything; the integers are the same
//! either way, so are the outputs. As
//! for the 32-value blocks, rows are interleaved by super-block in tiles of
//! [`super::q8::TILE`] rows, and every output is computed the same way whatever the batch.

use candle_core::quantized::GgmlDType;

use super::act::quantize;
use super::blocks::{self, QK_K, Super};
use super::q8::TILE;

/// Activation rows quantized per 256 values: int8 values, one f32 scale, and the sums of
/// each 16 values (for the minimums).
pub(crate) struct SuperActs {
    pub k: usize,
    qs: Vec<[i8; QK_K]>,
    d: Vec<f32>,
    bsums: Vec<[i16; 16]>,
}

/// One activation row of [`SuperActs`].
#[derive(Clone, Copy)]
pub(crate) struct SuperRow<'a> {
    pub qs: &'a [[i8; QK_K]],
    pub d: &'a [f32],
    pub bsums: &'a [[i16; 16]],
}

impl SuperActs {
    /// Quantizes `x` ([m, k] row-major, `k` a multiple of 256).
    pub fn new(x: &[f32], k: usize) -> Self {
        let (qs, d) = quantize(x.as_chunks::<QK_K>().0);
        let bsums = qs
            .iter()
            .map(|q| {
                let (parts, _) = q.as_chunks::<16>();
                std::array::from_fn(|i| parts[i].iter().map(|&v| i16::from(v)).sum())
            })
            .collect();
        Self { k, qs, d, bsums }
    }

    pub fn rows(&self) -> usize {
        self.d.len() / (self.k / QK_K).max(1)
    }

    pub fn row(&self, a: usize) -> SuperRow<'_> {
        let r = a * self.k / QK_K..(a + 1) * self.k / QK_K;
        SuperRow { qs: &self.qs[r.clone()], d: &self.d[r.clone()], bsums: &self.bsums[r] }
    }
}

/// A super-block's values up to 15, two per byte: byte `32·j + l` holds value `64·j + l`
/// (low nibble) and `64·j + 32 + l` (high).
pub(crate) type Nib = [u8; QK_K / 2];

/// A super-block's values, one per byte.
pub(crate) type Bytes = [u8; QK_K];

/// A tile's super-block made ready for many activation rows: for each 32 values `c`, every
/// row's values a byte each (`u[c][i]`) and the 16 i16 scales its pair sums take (`s[c][i]`:
/// `sc[2c]` for the first 8 lanes, `sc[2c + 1]` for the rest). A chunk's rows sit side by
/// side, so two rows' chunk is one 512-bit load.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Wide<const R: usize> {
    pub u: [[[u8; 32]; R]; 8],
    pub s: [[[i16; 16]; R]; 8],
}

impl<const R: usize> Default for Wide<R> {
    fn default() -> Self {
        Self { u: [[[0; 32]; R]; 8], s: [[[0; 16]; R]; 8] }
    }
}

/// Activation rows in a pass from which a tile is made [`Wide`] first.
const WIDEN_ROWS: usize = 4;

/// Values of a super-block, as stored.
pub(crate) trait SuperValues: Copy {
    /// Value `l` (0..256).
    fn get(&self, l: usize) -> u8;
    /// Values `64·j..64·j + 32` and `64·j + 32..64·j + 64`, one per byte.
    #[cfg(target_arch = "x86_64")]
    fn pair(
        &self,
        s: pulp::x86::V3,
        j: usize,
    ) -> (core::arch::x86_64::__m256i, core::arch::x86_64::__m256i);
}

/// One super-block of a tile's `R` rows, for the kernels: as stored (`[V; R]`) or [`Wide`].
pub(crate) trait SuperTile<const R: usize>: Copy {
    /// Whether these are weights as a matrix holds them (worth asking for ahead), rather
    /// than a tile's unpacked scratch ([`Wide`]), already in L1.
    const STORED: bool;
    /// Row `i`'s value `l` (0..256).
    fn get(&self, i: usize, l: usize) -> u8;
    /// Row `i`'s values `64·j..64·j + 32` and `64·j + 32..64·j + 64`, one per byte.
    #[cfg(target_arch = "x86_64")]
    fn pair(
        &self,
        s: pulp::x86::V3,
        i: usize,
        j: usize,
    ) -> (core::arch::x86_64::__m256i, core::arch::x86_64::__m256i);
    /// Row `i`'s scales of values `32·c..32·c + 32`'s pair sums as 16 i16 (see [`Wide`]),
    /// from the row's 16 int8 scales `sc`.
    #[cfg(target_arch = "x86_64")]
    fn scales(
        &self,
        s: pulp::x86::V3,
        i: usize,
        sc: core::arch::x86_64::__m128i,
        c: usize,
    ) -> core::arch::x86_64::__m256i;
}

impl<const R: usize, V: SuperValues> SuperTile<R> for [V; R] {
    const STORED: bool = true;

    #[inline(always)]
    fn get(&self, i: usize, l: usize) -> u8 {
        self[i].get(l)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn pair(
        &self,
        s: pulp::x86::V3,
        i: usize,
        j: usize,
    ) -> (core::arch::x86_64::__m256i, core::arch::x86_64::__m256i) {
        self[i].pair(s, j)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn scales(
        &self,
        s: pulp::x86::V3,
        _i: usize,
        sc: core::arch::x86_64::__m128i,
        c: usize,
    ) -> core::arch::x86_64::__m256i {
        super::avx2::widen_scales(s, sc, c)
    }
}

impl<const R: usize> SuperTile<R> for Wide<R> {
    const STORED: bool = false;

    #[inline(always)]
    fn get(&self, i: usize, l: usize) -> u8 {
        self.u[l / 32][i][l % 32]
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn pair(
        &self,
        _s: pulp::x86::V3,
        i: usize,
        j: usize,
    ) -> (core::arch::x86_64::__m256i, core::arch::x86_64::__m256i) {
        (pulp::cast(self.u[2 * j][i]), pulp::cast(self.u[2 * j + 1][i]))
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn scales(
        &self,
        _s: pulp::x86::V3,
        i: usize,
        _sc: core::arch::x86_64::__m128i,
        c: usize,
    ) -> core::arch::x86_64::__m256i {
        pulp::cast(self.s[c][i])
    }
}

impl SuperValues for Nib {
    #[inline(always)]
    fn get(&self, l: usize) -> u8 {
        (self[l / 64 * 32 + l % 32] >> (4 * (l / 32 % 2))) & 0x0F
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn pair(
        &self,
        s: pulp::x86::V3,
        j: usize,
    ) -> (core::arch::x86_64::__m256i, core::arch::x86_64::__m256i) {
        let (chunks, _) = self.as_chunks::<32>();
        let v: core::arch::x86_64::__m256i = pulp::cast(chunks[j]);
        let mask = s.avx._mm256_set1_epi8(0x0F);
        (
            s.avx2._mm256_and_si256(v, mask),
            s.avx2._mm256_and_si256(s.avx2._mm256_srli_epi16::<4>(v), mask),
        )
    }
}

impl SuperValues for Bytes {
    #[inline(always)]
    fn get(&self, l: usize) -> u8 {
        self[l]
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn pair(
        &self,
        _s: pulp::x86::V3,
        j: usize,
    ) -> (core::arch::x86_64::__m256i, core::arch::x86_64::__m256i) {
        let (chunks, _) = self.as_chunks::<32>();
        (pulp::cast(chunks[2 * j]), pulp::cast(chunks[2 * j + 1]))
    }
}

/// A tile's dot products: `R` weight rows (interleaved super-blocks) by one activation row.
/// `sc[b][i]`, `mn[b][i]`, `d[b][i]`, `dmin[b][i]`: row `i`'s scales, minimums (with a
/// type's zero folded in), `d` and `dmin` in super-block `b`.
pub(crate) trait SuperKernel: Copy {
    /// A tile's super-blocks as [`Wide`] (the same values and scales).
    #[inline(always)]
    fn widen<const R: usize, V: SuperValues>(
        self,
        w: &[[V; R]],
        sc: &[[[i8; 16]; R]],
        out: &mut [Wide<R>],
    ) {
        for ((o, w), sc) in out.iter_mut().zip(w).zip(sc) {
            for i in 0..R {
                for l in 0..QK_K {
                    o.u[l / 32][i][l % 32] = w[i].get(l);
                }
                for c in 0..8 {
                    o.s[c][i] = std::array::from_fn(|t| i16::from(sc[i][2 * c + t / 8]));
                }
            }
        }
    }

    fn tile<const R: usize, T: SuperTile<R>>(
        self,
        w: &[T],
        sc: &[[[i8; 16]; R]],
        mn: &[[[i16; 16]; R]],
        d: &[[f32; R]],
        dmin: &[[f32; R]],
        x: SuperRow<'_>,
    ) -> [f32; R];

    /// [`SuperKernel::tile`] over a tile made [`Wide`], for `A` activation rows at once
    /// (each row's sums computed as alone).
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
        let mut out = [[0f32; R]; A];
        for (o, x) in out.iter_mut().zip(x) {
            *o = self.tile::<R, Wide<R>>(w, sc, mn, d, dmin, x);
        }
        out
    }
}

/// Plain loops, vectorized by LLVM under `pulp`'s dispatch.
#[derive(Clone, Copy)]
pub(crate) struct Portable;

impl SuperKernel for Portable {
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
        let mut acc = [0f32; R];
        for b in 0..w.len() {
            let (xq, dx, bs) = (&x.qs[b], x.d[b], &x.bsums[b]);
            for i in 0..R {
                let mut dot = 0i32;
                for (g, &s) in sc[b][i].iter().enumerate() {
                    let part: i32 = (16 * g..16 * g + 16)
                        .map(|l| i32::from(w[b].get(i, l)) * i32::from(xq[l]))
                        .sum();
                    dot += part * i32::from(s);
                }
                let mins: i32 =
                    mn[b][i].iter().zip(bs).map(|(&m, &s)| i32::from(m) * i32::from(s)).sum();
                acc[i] += dot as f32 * (d[b][i] * dx);
                acc[i] -= mins as f32 * (dmin[b][i] * dx);
            }
        }
        acc
    }
}

/// How a [`SuperMatrix`] holds its values.
#[derive(Debug)]
enum Stored {
    Nib(Vec<Nib>),
    Bytes(Vec<Bytes>),
}

/// A k-quant matrix `[n, k]` in the kernels' form, rows in tiles (see the module docs).
#[derive(Debug)]
pub(crate) struct SuperMatrix {
    n: usize,
    /// Super-blocks per row.
    ks: usize,
    values: Stored,
    sc: Vec<[i8; 16]>,
    /// Minimums as the kernels use them: for the types with a zero, `zero·sc`.
    mn: Vec<[i16; 16]>,
    d: Vec<f32>,
    /// For the types with a zero, `d`.
    dmin: Vec<f32>,
    /// See [`blocks::zero`].
    zero: u8,
}

impl SuperMatrix {
    /// From a k-quant's GGUF blocks, `n` rows of `k` values (`k` a multiple of 256).
    pub fn new(dtype: GgmlDType, n: usize, k: usize, data: &[u8], size: usize) -> Self {
        let ks = k / QK_K;
        let zero = blocks::zero(dtype);
        let nibbles = matches!(dtype, GgmlDType::Q2K | GgmlDType::Q3K | GgmlDType::Q4K);
        let total = n * ks;
        let mut m = Self {
            n,
            ks,
            values: if nibbles {
                Stored::Nib(Vec::with_capacity(total))
            } else {
                Stored::Bytes(Vec::with_capacity(total))
            },
            sc: Vec::with_capacity(total),
            mn: Vec::with_capacity(total),
            d: Vec::with_capacity(total),
            dmin: Vec::with_capacity(total),
            zero,
        };
        // Tiles of TILE rows interleaved by super-block; the last n % TILE rows plain.
        let full = n / TILE * TILE;
        let order = (0..full / TILE)
            .flat_map(|t| {
                (0..ks).flat_map(move |b| (0..TILE).map(move |i| (t * TILE + i) * ks + b))
            })
            .chain(full * ks..n * ks);
        for src in order {
            let Super { u, sc, mn, d, dmin } =
                blocks::decode_super(dtype, &data[src * size..(src + 1) * size]);
            match &mut m.values {
                Stored::Nib(v) => v.push(std::array::from_fn(|b| {
                    u[b / 32 * 64 + b % 32] | u[b / 32 * 64 + 32 + b % 32] << 4
                })),
                Stored::Bytes(v) => v.push(u),
            }
            m.sc.push(sc);
            if zero == 0 {
                m.mn.push(mn);
                m.dmin.push(dmin);
            } else {
                m.mn.push(sc.map(|s| i16::from(s) * i16::from(zero)));
                m.dmin.push(d);
            }
            m.d.push(d);
        }
        m
    }

    /// Memory held.
    pub fn bytes(&self) -> usize {
        let values = match &self.values {
            Stored::Nib(v) => v.len() * QK_K / 2,
            Stored::Bytes(v) => v.len() * QK_K,
        };
        values + self.sc.len() * (16 + 32 + 8)
    }

    /// Row `r` as f32: the values candle's dequantization gives.
    pub fn row(&self, r: usize, out: &mut [f32]) {
        let full = self.n / TILE * TILE;
        for b in 0..self.ks {
            let i =
                if r < full { (r / TILE * self.ks + b) * TILE + r % TILE } else { r * self.ks + b };
            let out = &mut out[b * QK_K..(b + 1) * QK_K];
            for (l, o) in out.iter_mut().enumerate() {
                let u = match &self.values {
                    Stored::Nib(v) => v[i].get(l),
                    Stored::Bytes(v) => v[i].get(l),
                };
                // The same operations, in the same order, as candle's `to_float`.
                let scale = self.d[i] * f32::from(self.sc[i][l / 16]);
                *o = if self.zero == 0 {
                    scale * f32::from(u) - self.dmin[i] * f32::from(self.mn[i][l / 16])
                } else {
                    scale * f32::from(i16::from(u) - i16::from(self.zero))
                };
            }
        }
    }

    /// Weight rows `range` (starting at a multiple of [`TILE`]) against all activations,
    /// into `out` (one slice per activation row, of `range.len()` values each). Inlined
    /// into `pulp`'s `#[target_feature]` function with everything below it, or the
    /// intrinsics become calls.
    #[inline(always)]
    pub fn run_rows<K: SuperKernel>(
        &self,
        kern: K,
        range: std::ops::Range<usize>,
        acts: &SuperActs,
        out: &mut [&mut [f32]],
    ) {
        match &self.values {
            Stored::Nib(v) => self.rows_of(kern, v, range, acts, out),
            Stored::Bytes(v) => self.rows_of(kern, v, range, acts, out),
        }
    }

    #[inline(always)]
    fn rows_of<K: SuperKernel, V: SuperValues>(
        &self,
        kern: K,
        values: &[V],
        range: std::ops::Range<usize>,
        acts: &SuperActs,
        out: &mut [&mut [f32]],
    ) {
        // Activation rows per pass over the weights: their int8 values stay in L2.
        const ACT_BYTES_PER_PASS: usize = 256 * 1024;
        let per_pass = (ACT_BYTES_PER_PASS / acts.k).max(1);
        let m = acts.rows();
        let (mut wide, mut wide_one) = (Vec::new(), Vec::new());
        for a0 in (0..m).step_by(per_pass) {
            let passes = a0..(a0 + per_pass).min(m);
            let mut r = range.start;
            while r < range.end {
                if range.end - r >= TILE {
                    let wide = &mut wide;
                    self.tile::<K, V, TILE>(
                        kern,
                        values,
                        r,
                        range.start,
                        passes.clone(),
                        acts,
                        wide,
                        out,
                    );
                    r += TILE;
                } else {
                    let wide = &mut wide_one;
                    self.tile::<K, V, 1>(
                        kern,
                        values,
                        r,
                        range.start,
                        passes.clone(),
                        acts,
                        wide,
                        out,
                    );
                    r += 1;
                }
            }
        }
    }

    /// Rows `r..r + R` (`R` = [`TILE`] within the tiles, 1 past them) against activation
    /// rows `passes`; `first` is the first row `out` holds; `wide` is scratch for [`Wide`].
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn tile<K: SuperKernel, V: SuperValues, const R: usize>(
        &self,
        kern: K,
        values: &[V],
        r: usize,
        first: usize,
        passes: std::ops::Range<usize>,
        acts: &SuperActs,
        wide: &mut Vec<Wide<R>>,
        out: &mut [&mut [f32]],
    ) {
        let blocks = r * self.ks..(r + R) * self.ks;
        let w = values[blocks.clone()].as_chunks::<R>().0;
        let sc = self.sc[blocks.clone()].as_chunks::<R>().0;
        let mn = self.mn[blocks.clone()].as_chunks::<R>().0;
        let d = self.d[blocks.clone()].as_chunks::<R>().0;
        let dmin = self.dmin[blocks].as_chunks::<R>().0;
        let many = passes.len() >= WIDEN_ROWS;
        if many {
            wide.resize(w.len(), Wide::default());
            kern.widen::<R, V>(w, sc, wide);
        }
        let (mut passes, at) = (passes, r - first..r - first + R);
        if many {
            // Two rows at a time while there are two.
            while passes.len() >= 2 {
                let a = passes.start;
                let x = [acts.row(a), acts.row(a + 1)];
                let [r0, r1] = kern.tile_wide::<R, 2>(wide, sc, mn, d, dmin, x);
                out[a][at.clone()].copy_from_slice(&r0);
                out[a + 1][at.clone()].copy_from_slice(&r1);
                passes.start += 2;
            }
        }
        for a in passes {
            let res = if many {
                let [res] = kern.tile_wide::<R, 1>(wide, sc, mn, d, dmin, [acts.row(a)]);
                res
            } else {
                kern.tile::<R, [V; R]>(w, sc, mn, d, dmin, acts.row(a))
            };
            out[a][at.clone()].copy_from_slice(&res);
        }
    }
}

//! Quantized weight blocks (32 values and their scales) times quantized activations.
//!
//! Weight values come in these layouts, all multiplied as int8 dot products with the Q8
//! activations:
//! - [`Values::Signed`]: int8 values `w = d·q` (Q8_0);
//! - [`Values::Iq4`], [`Values::Fp4`]: 4-bit codes into a table of int8 values (IQ4_NL and
//!   IQ4_XS, MXFP4; see [`super::codes`]), multiplied as the signed values they look up;
//! - [`Values::Nibbles`]: unsigned 4-bit values packed two per byte as in GGUF,
//!   `w = d·q + m` (Q4_1; Q4_0 with `m = -8·d`), so they stay at the file's size;
//! - [`Values::Fives`]: unsigned 5-bit values as in GGUF, nibbles and a word of fifth bits
//!   (Q5_1; Q5_0 with `m = -16·d`): 20 bytes a block instead of 32 as int8, which is what
//!   single-stream decode pays for, since it streams the weights.
//!
//! For the unsigned layouts `Σ w·x = d·dx·Σ q·xq + m·(dx·Σ xq)`: the second term uses each
//! activation block's sum, computed once per matmul. Where `m = f·d` for a fixed integer `f`
//! (Q4_0, Q5_0) the whole block is integer arithmetic, `d·dx·(Σ q·xq + f·Σ xq)`: the dot
//! product starts from `f·Σ xq`, also computed once per matmul, and needs no f32 offset.
//!
//! Packed values are unpacked in registers for each activation row; with many rows in a
//! pass (prefill, batched decode) a tile is unpacked once into bytes and the rows go over
//! those. Both give the kernel the same bytes, so the same sums: which way a tile went does
//! not change any output.
//!
//! Signed values take a sign trick per block and activation row (`|x| · (w · sign x)`, the
//! dot's unsigned operand must be the non-negative one). Where the dot takes any unsigned
//! byte exactly (VNNI's `vpdpbusd`; AVX2's `maddubs` saturates at i16) and many activation
//! rows share the weights, a tile is instead unpacked once as `w + 128` and each block's dot
//! product starts from `-128·Σx` per lane: `Σ (w + 128)·x - 128·Σ x = Σ w·x`, the same
//! integers as the sign trick's, one vector op fewer per block and row.
//!
//! The driver walks tiles of `R` weight rows × `MA` activation rows so each weight block
//! loaded from memory serves several activation rows (batching is nearly free while the
//! weights stream) and each activation block serves several weight rows. The per-tile
//! arithmetic comes from a [`Q8Kernel`]: AVX2 intrinsics on x86 (safe through `pulp`) or
//! plain loops that LLVM vectorizes for whatever the machine has. Every output is the same
//! sequence of operations whatever `R`, the batch or the threads: results do not depend on
//! what else is in the step.

use super::act::{ActRow, QK, QuantActs, f16_to_f32};
use super::codes::{Coded, Fp4, Iq4};

/// One block's int8 values (signed, or unsigned below 128).
pub(crate) type Block = [i8; QK];

/// One block's 4-bit values: byte `j` holds value `j` (low nibble) and `j + 16` (high).
pub(crate) type Nibbles = [u8; QK / 2];

/// One block's 5-bit values: [`Nibbles`] of the low four bits, then the fifth bits as a
/// little-endian `u32` (value `j`'s in bit `j`), as GGUF's Q5 types hold them.
pub(crate) type Fives = [u8; QK / 2 + 4];

/// Activation rows in a pass from which a packed tile is unpacked once rather than in
/// registers for every row.
pub(crate) const UNPACK_ROWS: usize = 4;

/// Weight rows interleaved per block: a tile's rows are read as one sequential stream, which
/// the hardware prefetcher follows (four rows of 896 bytes each, read side by side, were
/// 3× slower from DRAM than from L3).
pub(crate) const TILE: usize = 4;

/// Unsigned weight values of one block, as 32 bytes in element order.
pub(crate) trait Unsigned: Copy {
    /// Whether these are weights as a matrix holds them, read from memory once per pass
    /// (worth asking for ahead), rather than a tile's unpacked scratch, already in L1.
    const STORED: bool;
    fn bytes(&self) -> [u8; QK];
}

impl Unsigned for Block {
    const STORED: bool = false;

    #[inline(always)]
    fn bytes(&self) -> [u8; QK] {
        self.map(|v| v as u8)
    }
}

impl Unsigned for Nibbles {
    const STORED: bool = true;

    #[inline(always)]
    fn bytes(&self) -> [u8; QK] {
        std::array::from_fn(|i| if i < QK / 2 { self[i] & 0x0F } else { self[i - QK / 2] >> 4 })
    }
}

impl Unsigned for Fives {
    const STORED: bool = true;

    #[inline(always)]
    fn bytes(&self) -> [u8; QK] {
        let [nibbles @ .., h0, h1, h2, h3] = *self;
        let high = u32::from_le_bytes([h0, h1, h2, h3]);
        let low = nibbles.bytes();
        std::array::from_fn(|i| low[i] | (((high >> i) & 1) as u8) << 4)
    }
}

/// Signed int8 weight values of one block: as they are ([`Block`]) or looked up
/// ([`Coded`]).
pub(crate) trait Signed: Copy {
    /// Whether the values are packed, so that a tile shared by many activation rows is
    /// better looked up once ([`Q8Kernel::unpack_signed`]).
    const PACKED: bool;
    fn values(&self) -> Block;
}

impl Signed for Block {
    const PACKED: bool = false;

    #[inline(always)]
    fn values(&self) -> Block {
        *self
    }
}

/// A tile's dot products: `R` weight rows (interleaved blocks, `kb` of them) by one
/// activation row.
pub(crate) trait Q8Kernel: Copy {
    /// Whether the unsigned tiles take any u8 weight exactly (VNNI), not only values below
    /// 32: then signed blocks can run as unsigned ones (see the module's notes).
    fn any_u8(self) -> bool {
        false
    }

    /// Signed values as unsigned bytes `w + 128`.
    #[inline(always)]
    fn unsign<const R: usize, S: Signed + WideLoad>(self, w: &[[S; R]], out: &mut [[Block; R]]) {
        for (o, w) in out.iter_mut().zip(w) {
            *o = w.map(|w| w.values().map(|v| (v as u8 ^ 0x80) as i8));
        }
    }

    /// Packed signed values as one byte per value (the same bytes the tiles load).
    #[inline(always)]
    fn unpack_signed<const R: usize, S: Signed + WideLoad>(
        self,
        w: &[[S; R]],
        out: &mut [[Block; R]],
    ) {
        for (o, w) in out.iter_mut().zip(w) {
            *o = w.map(|w| w.values());
        }
    }

    /// `out[b][i] = sw[b][i] · sx[b]`: the scale of each weight row's block times the
    /// activation block's, for one activation row.
    #[inline(always)]
    fn scales<const R: usize>(self, sw: &[[f32; R]], sx: &[f32], out: &mut [[f32; R]]) {
        for ((c, w), &x) in out.iter_mut().zip(sw).zip(sx) {
            *c = w.map(|w| w * x);
        }
    }

    /// Signed weights: blocks `x`, their absolute values `ax`; `sc[b][i]` is the product of
    /// the two scales of block `b` for weight row `i`.
    fn tile<const R: usize, S: Signed + WideLoad>(
        self,
        w: &[[S; R]],
        sc: &[[f32; R]],
        x: &[Block],
        ax: &[Block],
    ) -> [f32; R];

    /// Packed unsigned weights as one byte per value (the same bytes the tiles load).
    #[inline(always)]
    fn unpack<const R: usize, U: Unsigned + WideLoad>(self, w: &[[U; R]], out: &mut [[Block; R]]) {
        for (o, w) in out.iter_mut().zip(w) {
            *o = w.map(|w| w.bytes().map(|v| v as i8));
        }
    }

    /// Unsigned weights whose offset is a fixed integer multiple of the scale: block `b`'s
    /// integer dot product starts from `shift[b]` (see [`super::act::Needs::Shifts`]).
    fn tile_shifted<const R: usize, U: Unsigned + WideLoad>(
        self,
        w: &[[U; R]],
        sc: &[[f32; R]],
        x: &[Block],
        shift: &[[i32; QK / 4]],
    ) -> [f32; R];

    /// Unsigned weights with offsets: `mn[b][i]` is weight row `i`'s offset in block `b`,
    /// `xs[b]` the activation block's sum (scale included).
    fn tile_offset<const R: usize, U: Unsigned + WideLoad>(
        self,
        w: &[[U; R]],
        sc: &[[f32; R]],
        mn: &[[f32; R]],
        x: &[Block],
        xs: &[f32],
    ) -> [f32; R];

    /// A tile unpacked to bytes (shifted or with offsets) against one activation row; by
    /// default the unsigned tiles over [`Block`]s, with the scale products made in `sc`.
    #[inline(always)]
    fn tile_bytes<const R: usize>(
        self,
        t: &Bytes<'_, R>,
        x: &ActRow<'_>,
        sc: &mut [[f32; R]],
    ) -> [f32; R] {
        self.scales::<R>(t.sw, x.d, sc);
        if t.shifted {
            self.tile_shifted::<R, Block>(t.w, sc, x.qs, x.shifts)
        } else {
            self.tile_offset::<R, Block>(t.w, sc, t.mn, x.qs, x.sums)
        }
    }

    /// [`Q8Kernel::tile_bytes`] for two activation rows at once (each row's sums are
    /// computed as alone: kernels overlap the two rows' dependency chains).
    #[inline(always)]
    fn tile_bytes2<const R: usize>(
        self,
        t: &Bytes<'_, R>,
        x: [&ActRow<'_>; 2],
        sc: &mut [[f32; R]],
    ) -> [[f32; R]; 2] {
        [self.tile_bytes::<R>(t, x[0], sc), self.tile_bytes::<R>(t, x[1], sc)]
    }
}

/// A tile of `R` weight rows unpacked to a byte per value for a pass of many activation rows:
/// its values, scales and offsets (empty when shifted).
pub(crate) struct Bytes<'a, const R: usize> {
    pub w: &'a [[Block; R]],
    pub sw: &'a [[f32; R]],
    pub mn: &'a [[f32; R]],
    pub shifted: bool,
}

#[cfg(target_arch = "x86_64")]
pub(crate) use super::avx2::WideLoad;

/// Without x86 there is no wide load to provide.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) trait WideLoad {}
#[cfg(not(target_arch = "x86_64"))]
impl WideLoad for Block {}
#[cfg(not(target_arch = "x86_64"))]
impl WideLoad for Nibbles {}
#[cfg(not(target_arch = "x86_64"))]
impl WideLoad for Fives {}
#[cfg(not(target_arch = "x86_64"))]
impl<C> WideLoad for Coded<C> {}

/// The values of some rows, starting at a multiple of [`TILE`]: full tiles of `TILE` rows
/// interleaved by block (`[tile][block][row]`), then the last `rows % TILE` rows plain.
#[derive(Clone, Copy)]
pub(crate) enum Values<'a> {
    Signed(&'a [Block]),
    Iq4(&'a [Coded<Iq4>]),
    Fp4(&'a [Coded<Fp4>]),
    Nibbles(&'a [Nibbles]),
    Fives(&'a [Fives]),
}

impl Values<'_> {
    /// Whether the values are signed (held as they are or looked up).
    fn signed(self) -> bool {
        matches!(self, Self::Signed(_) | Self::Iq4(_) | Self::Fp4(_))
    }
}

/// Rows of quantized weights: values, f16 scales (raw bits) and, for unsigned values, f16
/// offsets, all in the same block order.
#[derive(Clone, Copy)]
pub(crate) struct QRows<'a> {
    pub values: Values<'a>,
    pub d: &'a [u16],
    pub m: &'a [u16],
    /// Offsets that are a fixed multiple of the scale (Q4_0: -8, Q5_0: -16), then `m` is
    /// empty and the activations come with [`super::act::Needs::Shifts`].
    pub m_of_d: Option<i32>,
    pub kb: usize,
}

thread_local! {
    /// The scales and offsets of the rows a thread multiplies, as f32, kept between calls:
    /// allocating them per call (megabytes for an lm head) cost fresh pages every time.
    static SCALES: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = std::cell::RefCell::default();
}

/// Activation rows per pass over the weights: enough to reuse each weight block many times,
/// few enough that the quantized rows (2 × m × k bytes) stay in L2 while the weights stream.
const ACT_BYTES_PER_PASS: usize = 256 * 1024;

/// `out[a][r] = Σ_b (w[r][b] · x[a][b])` for the rows in `w`; `out` holds one slice (of
/// `w`'s row count) per activation row.
///
/// A tile's weights (4 rows: 3.5 KB at k = 896, 19 KB at k = 4864) stay in L1 while every
/// activation row of the pass goes by, so they come from memory once per pass. (Tiles of
/// 4 weight × 2 activation rows ran no faster: the bottleneck is the vector ALUs, and the
/// extra accumulators spilled.)
#[inline(always)]
pub(crate) fn matmul_rows<K: Q8Kernel>(
    kern: K,
    w: QRows<'_>,
    acts: &QuantActs,
    out: &mut [&mut [f32]],
) {
    // All of the chunk's scales as f32 first (4 bytes per block, so they stay in L2):
    // reading them tile by tile between the int8 blocks halved the rate from DRAM at large k.
    // Taken out and put back, not borrowed in a closure: the kernel must be inlined into
    // pulp's `#[target_feature]` function, and a closure's body is not (see `Rows`).
    let (mut sw, mut mw) = SCALES.take();
    sw.clear();
    sw.extend(w.d.iter().map(|&h| f16_to_f32(h)));
    mw.clear();
    mw.extend(w.m.iter().map(|&h| f16_to_f32(h)));
    passes(kern, w, &sw, &mw, acts, out);
    SCALES.set((sw, mw));
}

/// [`matmul_rows`] with the scales and offsets as f32.
#[inline(always)]
fn passes<K: Q8Kernel>(
    kern: K,
    w: QRows<'_>,
    sw: &[f32],
    mw: &[f32],
    acts: &QuantActs,
    out: &mut [&mut [f32]],
) {
    let kb = w.kb;
    let rows = w.d.len() / kb;
    let m = acts.rows();
    let per_pass = (ACT_BYTES_PER_PASS / (2 * acts.k)).max(1);
    let mut scratch = Scratch::new(kb);
    // Activations made for signed weights run as unsigned come with shifts, not |x|.
    let unsigned = w.values.signed() && acts.abs.is_empty();
    assert!(!unsigned || kern.any_u8(), "signed weights as unsigned need an exact u8 dot");
    let mut act_rows = Vec::with_capacity(per_pass.min(m));
    for a0 in (0..m).step_by(per_pass) {
        let a1 = (a0 + per_pass).min(m);
        // The pass's rows sliced once, not once per tile.
        act_rows.clear();
        act_rows.extend((a0..a1).map(|a| acts.row(a)));
        let mut r = 0;
        while r < rows {
            let shifted = w.m_of_d.is_some() || unsigned;
            let t = Tile { r, blocks: 0..0, acts: &act_rows, first: a0, shifted };
            if rows - r >= TILE {
                let blocks = r * kb..(r + TILE) * kb;
                let tile = Tile { blocks, ..t };
                run_tile::<K, TILE>(kern, w.values, sw, mw, &tile, &mut scratch.tile, out);
                r += TILE;
            } else {
                let tile = Tile { blocks: r * kb..(r + 1) * kb, ..t };
                run_tile::<K, 1>(kern, w.values, sw, mw, &tile, &mut scratch.one, out);
                r += 1;
            }
        }
    }
}

/// Per-tile scale products and unpacked values, reused across tiles.
struct Scratch {
    tile: TileScratch<TILE>,
    one: TileScratch<1>,
}

struct TileScratch<const R: usize> {
    /// Scale products.
    sc: Vec<[f32; R]>,
    /// Offsets.
    mn: Vec<[f32; R]>,
    /// The tile's values unpacked (packed layouts, passes of many rows).
    unpacked: Vec<[Block; R]>,
}

impl<const R: usize> TileScratch<R> {
    fn new(kb: usize) -> Self {
        Self { sc: vec![[0f32; R]; kb], mn: vec![[0f32; R]; kb], unpacked: Vec::new() }
    }
}

impl Scratch {
    fn new(kb: usize) -> Self {
        Self { tile: TileScratch::new(kb), one: TileScratch::new(kb) }
    }
}

/// Where a tile is: its first row, its blocks and the activation rows of this pass (`first`
/// the first one's index); whether its offsets are shifts ([`QRows::m_of_d`]).
struct Tile<'a> {
    r: usize,
    blocks: std::ops::Range<usize>,
    acts: &'a [ActRow<'a>],
    first: usize,
    shifted: bool,
}

/// One tile of `R` weight rows against the pass's activation rows.
#[inline(always)]
fn run_tile<K: Q8Kernel, const R: usize>(
    kern: K,
    values: Values<'_>,
    sw: &[f32],
    mw: &[f32],
    t: &Tile<'_>,
    scratch: &mut TileScratch<R>,
    out: &mut [&mut [f32]],
) {
    let (sw, _) = sw[t.blocks.clone()].as_chunks::<R>();
    if !mw.is_empty() {
        let (m, _) = mw[t.blocks.clone()].as_chunks::<R>();
        scratch.mn.copy_from_slice(m);
    }
    let b = t.blocks.clone();
    match values {
        Values::Signed(v) => signed_tile(kern, v[b].as_chunks::<R>().0, sw, t, scratch, out),
        Values::Iq4(v) => signed_tile(kern, v[b].as_chunks::<R>().0, sw, t, scratch, out),
        Values::Fp4(v) => signed_tile(kern, v[b].as_chunks::<R>().0, sw, t, scratch, out),
        Values::Nibbles(v) => unsigned_tile(kern, v[b].as_chunks::<R>().0, sw, t, scratch, out),
        Values::Fives(v) => unsigned_tile(kern, v[b].as_chunks::<R>().0, sw, t, scratch, out),
    }
}

/// [`run_tile`] for signed values: run as unsigned bytes `w + 128` where the activations
/// come with shifts (see the module's notes), else with the sign trick, looked up once into
/// bytes where they are packed and many rows go by.
#[inline(always)]
fn signed_tile<K: Q8Kernel, const R: usize, S: Signed + WideLoad>(
    kern: K,
    w: &[[S; R]],
    sw: &[[f32; R]],
    t: &Tile<'_>,
    scratch: &mut TileScratch<R>,
    out: &mut [&mut [f32]],
) {
    let TileScratch { sc, mn, unpacked } = scratch;
    if t.shifted {
        unpacked.resize(w.len(), [[0; QK]; R]);
        kern.unsign::<R, S>(w, unpacked);
        return bytes_rows(kern, &Bytes { w: unpacked, sw, mn, shifted: true }, t, sc, out);
    }
    if S::PACKED && t.acts.len() >= UNPACK_ROWS {
        unpacked.resize(w.len(), [[0; QK]; R]);
        kern.unpack_signed::<R, S>(w, unpacked);
        signed_rows::<K, R, Block>(kern, unpacked, sw, t, sc, out);
    } else {
        signed_rows::<K, R, S>(kern, w, sw, t, sc, out);
    }
}

/// Signed values against the pass's rows one by one, with the sign trick. (A function, not a
/// closure: a closure's body is not inlined into pulp's `#[target_feature]` function.)
#[inline(always)]
fn signed_rows<K: Q8Kernel, const R: usize, S: Signed + WideLoad>(
    kern: K,
    w: &[[S; R]],
    sw: &[[f32; R]],
    t: &Tile<'_>,
    sc: &mut [[f32; R]],
    out: &mut [&mut [f32]],
) {
    for (a, row) in t.acts.iter().enumerate() {
        kern.scales::<R>(sw, row.d, sc);
        let res = kern.tile::<R, S>(w, sc, row.qs, row.abs);
        out[t.first + a][t.r..t.r + R].copy_from_slice(&res);
    }
}

/// [`run_tile`] for unsigned packed values: unpacked once into bytes when many rows go by,
/// else in registers for each row.
#[inline(always)]
fn unsigned_tile<K: Q8Kernel, const R: usize, U: Unsigned + WideLoad>(
    kern: K,
    w: &[[U; R]],
    sw: &[[f32; R]],
    t: &Tile<'_>,
    scratch: &mut TileScratch<R>,
    out: &mut [&mut [f32]],
) {
    let TileScratch { sc, mn, unpacked } = scratch;
    if t.acts.len() >= UNPACK_ROWS {
        unpacked.resize(w.len(), [[0; QK]; R]);
        kern.unpack::<R, U>(w, unpacked);
        let bytes = Bytes { w: unpacked, sw, mn, shifted: t.shifted };
        return bytes_rows(kern, &bytes, t, sc, out);
    }
    for (a, row) in t.acts.iter().enumerate() {
        kern.scales::<R>(sw, row.d, sc);
        let res = if t.shifted {
            kern.tile_shifted::<R, U>(w, sc, row.qs, row.shifts)
        } else {
            kern.tile_offset::<R, U>(w, sc, mn, row.qs, row.sums)
        };
        out[t.first + a][t.r..t.r + R].copy_from_slice(&res);
    }
}

/// A tile unpacked to unsigned bytes against the pass's rows, two at a time while there
/// are two.
#[inline(always)]
fn bytes_rows<K: Q8Kernel, const R: usize>(
    kern: K,
    bytes: &Bytes<'_, R>,
    t: &Tile<'_>,
    sc: &mut [[f32; R]],
    out: &mut [&mut [f32]],
) {
    let mut rows = 0..t.acts.len();
    while rows.len() >= 2 {
        let a = rows.start;
        let res = kern.tile_bytes2::<R>(bytes, [&t.acts[a], &t.acts[a + 1]], sc);
        out[t.first + a][t.r..t.r + R].copy_from_slice(&res[0]);
        out[t.first + a + 1][t.r..t.r + R].copy_from_slice(&res[1]);
        rows.start += 2;
    }
    for a in rows {
        let res = kern.tile_bytes::<R>(bytes, &t.acts[a], sc);
        out[t.first + a][t.r..t.r + R].copy_from_slice(&res);
    }
}

/// Plain loops: an i8×i8→i32 dot per block that LLVM vectorizes under `pulp`'s dispatch.
#[derive(Clone, Copy)]
pub(crate) struct Portable;

impl Q8Kernel for Portable {
    fn any_u8(self) -> bool {
        true
    }

    #[inline(always)]
    fn tile<const R: usize, S: Signed + WideLoad>(
        self,
        w: &[[S; R]],
        sc: &[[f32; R]],
        x: &[Block],
        _ax: &[Block],
    ) -> [f32; R] {
        let mut acc = [0f32; R];
        for ((wb, sc), xb) in w.iter().zip(sc).zip(x) {
            for i in 0..R {
                let dot: i32 =
                    wb[i].values().iter().zip(xb).map(|(&p, &q)| i32::from(p) * i32::from(q)).sum();
                acc[i] += dot as f32 * sc[i];
            }
        }
        acc
    }

    #[inline(always)]
    fn tile_shifted<const R: usize, U: Unsigned + WideLoad>(
        self,
        w: &[[U; R]],
        sc: &[[f32; R]],
        x: &[Block],
        shift: &[[i32; QK / 4]],
    ) -> [f32; R] {
        let mut acc = [0f32; R];
        for (((wb, sc), xb), shift) in w.iter().zip(sc).zip(x).zip(shift) {
            let start: i32 = shift.iter().sum();
            for i in 0..R {
                let q = wb[i].bytes();
                let dot: i32 = q.iter().zip(xb).map(|(&p, &v)| i32::from(p) * i32::from(v)).sum();
                acc[i] += (start + dot) as f32 * sc[i];
            }
        }
        acc
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
        let (mut acc, mut off) = ([0f32; R], [0f32; R]);
        for ((((wb, sc), mn), xb), &xs) in w.iter().zip(sc).zip(mn).zip(x).zip(xs) {
            for i in 0..R {
                let q = wb[i].bytes();
                let dot: i32 = q.iter().zip(xb).map(|(&p, &v)| i32::from(p) * i32::from(v)).sum();
                acc[i] += dot as f32 * sc[i];
                off[i] += mn[i] * xs;
            }
        }
        std::array::from_fn(|i| acc[i] + off[i])
    }
}

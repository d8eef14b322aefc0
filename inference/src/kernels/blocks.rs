//! GGUF weight blocks decoded into the 32-value blocks our kernels multiply.
//!
//! Every supported type becomes blocks of 32 consecutive values of one row, each with one
//! kind of integer values ([`Vals`]), a scale and, for unsigned values, an offset, so that
//! `w = d·q + m`:
//! - the classic types (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) are already such blocks, with f16
//!   scales that are stored as they are;
//! - the k-quants pack 256 values in a super-block with a scale (and a minimum) per 32 or
//!   per 16 values, each a small integer times the super-block's f16 scale. They are split
//!   into 8 blocks of 32 whose scales are those products in f32 (what candle's and
//!   llama.cpp's dequantization compute); types with a scale per 16 values keep two scales
//!   per block, one for each half ([`halves`]).

use super::act::QK;
use super::q8::{Block, Nibbles};

/// Values in a k-quant super-block.
pub(crate) const QK_K: usize = 256;

use candle_core::quantized::GgmlDType;

/// One block's 32 integer values.
pub(crate) enum Vals {
    /// Signed int8 (Q8_0, Q5_0 less 16, Q3_K, Q6_K less 32).
    Signed(Block),
    /// Unsigned values below 32, one per byte (Q5_1, Q5_K).
    Bytes(Block),
    /// Unsigned 4-bit values, two per byte: byte `j` holds value `j` (low nibble) and
    /// `j + 16` (high) (Q4_0, Q4_1, Q4_K, and Q2_K's 2-bit values).
    Nibbles(Nibbles),
}

/// One block of 32 values: `w[j] = d[h]·q[j] + m[h]` where `h` is the half of the block
/// `j` is in (one half for types with a scale per 32 values: index 0).
pub(crate) struct Decoded {
    pub vals: Vals,
    pub d: [f32; 2],
    pub m: [f32; 2],
}

/// The supported types: bytes of one GGUF block, and how many values it holds.
pub(crate) fn group(dtype: GgmlDType) -> Option<(usize, usize)> {
    Some(match dtype {
        GgmlDType::Q8_0 => (2 + QK, QK),
        GgmlDType::Q4_0 => (2 + QK / 2, QK),
        GgmlDType::Q4_1 => (4 + QK / 2, QK),
        GgmlDType::Q5_0 => (2 + 4 + QK / 2, QK),
        GgmlDType::Q5_1 => (4 + 4 + QK / 2, QK),
        GgmlDType::Q2K => (QK_K / 16 + QK_K / 4 + 4, QK_K),
        GgmlDType::Q3K => (QK_K / 8 + QK_K / 4 + 12 + 2, QK_K),
        GgmlDType::Q4K => (4 + 12 + QK_K / 2, QK_K),
        GgmlDType::Q5K => (4 + 12 + QK_K / 8 + QK_K / 2, QK_K),
        GgmlDType::Q6K => (QK_K / 2 + QK_K / 4 + QK_K / 16 + 2, QK_K),
        _ => return None,
    })
}

/// Scales per 32-value block: 2 for the types with a scale per 16 values.
pub(crate) fn halves(dtype: GgmlDType) -> usize {
    match dtype {
        GgmlDType::Q2K | GgmlDType::Q3K | GgmlDType::Q6K => 2,
        _ => 1,
    }
}

/// Whether the type's scales are f16 values as they are in the file (the classic types),
/// so they can be stored as f16 without rounding.
pub(crate) fn f16_scales(dtype: GgmlDType) -> bool {
    !matches!(
        dtype,
        GgmlDType::Q2K | GgmlDType::Q3K | GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K
    )
}

fn f16(b: &[u8]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

/// 32 values below 16 as nibbles (see [`Vals::Nibbles`]).
fn nibbles(q: &[u8; QK]) -> Nibbles {
    std::array::from_fn(|j| q[j] | q[j + QK / 2] << 4)
}

/// The 5-bit values of a Q5 block: low nibbles `qs`, fifth bits `qh` (value `j`'s in bit `j`).
fn five_bits(qh: &[u8], qs: &[u8]) -> [u8; QK] {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    std::array::from_fn(|j| {
        let low = if j < QK / 2 { qs[j] & 0x0F } else { qs[j - QK / 2] >> 4 };
        low | (((qh >> j) & 1) as u8) << 4
    })
}

/// A block with one scale (and offset) for all 32 values.
fn whole(vals: Vals, d: f32, m: f32) -> Decoded {
    Decoded { vals, d: [d; 2], m: [m; 2] }
}

/// Decodes one GGUF block `b` of `dtype` (its size from [`group`]) into `out`: one block
/// for the classic types, 8 for the k-quants.
pub(crate) fn decode(dtype: GgmlDType, b: &[u8], out: &mut Vec<Decoded>) {
    match dtype {
        // -128 never comes out of llama.cpp's or candle's Q8_0 quantizer (|w/d| ≤ 127);
        // clamping it keeps `sign(w, x)` in the AVX2 dot from overflowing.
        GgmlDType::Q8_0 => out.push(whole(
            Vals::Signed(std::array::from_fn(|i| (b[2 + i] as i8).max(-127))),
            f16(b),
            0.0,
        )),
        GgmlDType::Q4_0 => {
            // w = d·(q - 8) = d·q + (-8·d); -8·d is exact (f16 times a power of two).
            let d = f16(b);
            out.push(whole(Vals::Nibbles(std::array::from_fn(|i| b[2 + i])), d, -8.0 * d))
        }
        GgmlDType::Q4_1 => {
            out.push(whole(Vals::Nibbles(std::array::from_fn(|i| b[4 + i])), f16(b), f16(&b[2..])))
        }
        // Q5_0 values fit int8 after their offset of 16: signed, no offset term.
        GgmlDType::Q5_0 => out.push(whole(
            Vals::Signed(five_bits(&b[2..6], &b[6..]).map(|v| v as i8 - 16)),
            f16(b),
            0.0,
        )),
        GgmlDType::Q5_1 => out.push(whole(
            Vals::Bytes(five_bits(&b[4..8], &b[8..]).map(|v| v as i8)),
            f16(b),
            f16(&b[2..]),
        )),
        GgmlDType::Q2K => q2k(b, out),
        GgmlDType::Q3K => q3k(b, out),
        GgmlDType::Q4K => q4k(b, out),
        GgmlDType::Q5K => q5k(b, out),
        GgmlDType::Q6K => q6k(b, out),
        _ => {}
    }
}

/// Scale and minimum `j` (0..8) of Q4_K and Q5_K: 6 bits each, packed in 12 bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Q4_K: `d`, `dmin` (f16), 12 bytes of scales and minimums, 128 bytes of nibbles: each 32
/// bytes hold one block in their low nibbles and the next in their high ones.
fn q4k(b: &[u8], out: &mut Vec<Decoded>) {
    let (d, dmin, scales, qs) = (f16(b), f16(&b[2..]), &b[4..16], &b[16..]);
    for j in 0..8 {
        let (sc, mn) = scale_min_k4(j, scales);
        let q = &qs[j / 2 * 32..][..32];
        let shift = 4 * (j % 2);
        let vals: [u8; QK] = std::array::from_fn(|l| (q[l] >> shift) & 0x0F);
        out.push(whole(Vals::Nibbles(nibbles(&vals)), d * f32::from(sc), -(dmin * f32::from(mn))));
    }
}

/// Q5_K: Q4_K's layout plus 32 bytes of fifth bits (bit `j` of byte `l` for block `j`).
fn q5k(b: &[u8], out: &mut Vec<Decoded>) {
    let (d, dmin, scales, qh, qs) = (f16(b), f16(&b[2..]), &b[4..16], &b[16..48], &b[48..]);
    for j in 0..8 {
        let (sc, mn) = scale_min_k4(j, scales);
        let q = &qs[j / 2 * 32..][..32];
        let shift = 4 * (j % 2);
        let vals: Block =
            std::array::from_fn(|l| (((q[l] >> shift) & 0x0F) | ((qh[l] >> j) & 1) << 4) as i8);
        out.push(whole(Vals::Bytes(vals), d * f32::from(sc), -(dmin * f32::from(mn))));
    }
}

/// Q6_K: 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 int8 scales (one per 16
/// values), `d` (f16). Each 128 values take 64 low-nibble bytes and 32 high bytes.
fn q6k(b: &[u8], out: &mut Vec<Decoded>) {
    let (ql, qh, sc, d) = (&b[..128], &b[128..192], &b[192..208], f16(&b[208..]));
    for j in 0..8 {
        let (half, part) = (j / 4, j % 4);
        let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
        // Block `part` of the 128: low nibbles from bytes 0..32 (parts 0, 2) or 32..64
        // (parts 1, 3), low (0, 1) or high (2, 3) nibble; high bits at 2·part.
        let low = &ql[32 * (part % 2)..][..32];
        let nib_shift = 4 * (part / 2);
        let vals: Block = std::array::from_fn(|l| {
            let q = ((low[l] >> nib_shift) & 0x0F) | ((qh[l] >> (2 * part)) & 3) << 4;
            q as i8 - 32
        });
        let s = |i: usize| d * f32::from(sc[8 * half + 2 * part + i] as i8);
        out.push(Decoded { vals: Vals::Signed(vals), d: [s(0), s(1)], m: [0.0; 2] });
    }
}

/// Q3_K: 32 bytes of high bits (bit `j` of byte `l` for block `j`), 64 bytes of 2-bit
/// values, 16 6-bit scales packed in 12 bytes (less 32), `d` (f16). A value is
/// `q - 4` where its high bit is clear, else `q`.
fn q3k(b: &[u8], out: &mut Vec<Decoded>) {
    let (hmask, qs, packed, d) = (&b[..32], &b[32..96], &b[96..108], f16(&b[108..]));
    let scales: [i8; 16] = std::array::from_fn(|i| {
        let low = if i < 8 { packed[i] & 0x0F } else { packed[i - 8] >> 4 };
        let high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
        (low | high << 4) as i8 - 32
    });
    for j in 0..8 {
        let (q, shift) = (&qs[32 * (j / 4)..][..32], 2 * (j % 4));
        let vals: Block = std::array::from_fn(|l| {
            let v = ((q[l] >> shift) & 3) as i8;
            if hmask[l] >> j & 1 == 0 { v - 4 } else { v }
        });
        let s = |i: usize| d * f32::from(scales[2 * j + i]);
        out.push(Decoded { vals: Vals::Signed(vals), d: [s(0), s(1)], m: [0.0; 2] });
    }
}

/// Q2_K: 16 bytes of 4-bit scale and minimum pairs (one per 16 values), 64 bytes of 2-bit
/// values, `d` and `dmin` (f16).
fn q2k(b: &[u8], out: &mut Vec<Decoded>) {
    let (sc, qs, d, dmin) = (&b[..16], &b[16..80], f16(&b[80..]), f16(&b[82..]));
    for j in 0..8 {
        let (q, shift) = (&qs[32 * (j / 4)..][..32], 2 * (j % 4));
        let vals: [u8; QK] = std::array::from_fn(|l| (q[l] >> shift) & 3);
        let s = |i: usize| d * f32::from(sc[2 * j + i] & 0x0F);
        let m = |i: usize| -(dmin * f32::from(sc[2 * j + i] >> 4));
        out.push(Decoded { vals: Vals::Nibbles(nibbles(&vals)), d: [s(0), s(1)], m: [m(0), m(1)] });
    }
}

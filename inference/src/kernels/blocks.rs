//! GGUF weight blocks decoded into the forms our kernels multiply.
//!
//! - The classic types (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) are blocks of 32 values, each with one
//!   kind of integer values ([`Vals`]), an f16 scale and, for unsigned values, an f16
//!   offset: `w = d·q + m` ([`decode`]).
//! - The k-quants (Q2_K..Q6_K) pack 256 values in a super-block with f16 `d` and `dmin`
//!   and a small integer scale (and minimum) per 16 or 32 values. They all become one form,
//!   [`Super`]: unsigned values below 64, a scale and a minimum per 16 values, so that
//!   `w = d·sc·u - dmin·mn` ([`decode_super`]).

use super::act::QK;
use super::q8::{Block, Fives, Nibbles};

use candle_core::quantized::GgmlDType;

/// Values in a k-quant super-block.
pub(crate) const QK_K: usize = 256;

/// One block's 32 integer values.
pub(crate) enum Vals {
    /// Signed int8 (Q8_0).
    Signed(Block),
    /// Unsigned 5-bit values as GGUF packs them: nibbles as in [`Vals::Nibbles`], then the
    /// fifth bits (Q5_0, Q5_1).
    Fives(Fives),
    /// Unsigned 4-bit values, two per byte: byte `j` holds value `j` (low nibble) and
    /// `j + 16` (high) (Q4_0, Q4_1, Q4_K, and Q2_K's 2-bit values).
    Nibbles(Nibbles),
}

/// One block of 32 values: `w[j] = d·q[j] + m`.
pub(crate) struct Decoded {
    pub vals: Vals,
    pub d: f32,
    pub m: f32,
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

fn f16(b: &[u8]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

/// The 5-bit values of a Q5 block from its fifth bits `qh` (value `j`'s in bit `j`) and low
/// nibbles `qs`: the nibbles first, then the bits.
fn fives(qh: &[u8], qs: &[u8]) -> Fives {
    std::array::from_fn(|i| if i < QK / 2 { qs[i] } else { qh[i - QK / 2] })
}

fn whole(vals: Vals, d: f32, m: f32) -> Decoded {
    Decoded { vals, d, m }
}

/// Whether `dtype` is a k-quant (256 values per block, [`decode_super`]).
pub(crate) fn is_super(dtype: GgmlDType) -> bool {
    group(dtype).is_some_and(|(_, values)| values == QK_K)
}

/// Decodes one GGUF block `b` of a classic `dtype` (its size from [`group`]) into `out`.
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
        GgmlDType::Q5_0 => {
            // w = d·(q - 16) = d·q + (-16·d), exact as Q4_0's.
            let d = f16(b);
            out.push(whole(Vals::Fives(fives(&b[2..6], &b[6..])), d, -16.0 * d))
        }
        GgmlDType::Q5_1 => {
            out.push(whole(Vals::Fives(fives(&b[4..8], &b[8..])), f16(b), f16(&b[2..])))
        }
        _ => {}
    }
}

/// One k-quant super-block: `w[l] = d·sc[l/16]·(u[l] - zero) - dmin·mn[l/16]`, where
/// `zero` is the type's ([`zero`]) and `mn` is 0 for the types without minimums.
pub(crate) struct Super {
    pub u: [u8; QK_K],
    pub sc: [i8; 16],
    pub mn: [i16; 16],
    pub d: f32,
    pub dmin: f32,
}

/// The value the k-quants without minimums subtract (Q3_K: 4, Q6_K: 32), else 0.
pub(crate) fn zero(dtype: GgmlDType) -> u8 {
    match dtype {
        GgmlDType::Q3K => 4,
        GgmlDType::Q6K => 32,
        _ => 0,
    }
}

/// Decodes one k-quant block `b` of `dtype` (its size from [`group`]).
pub(crate) fn decode_super(dtype: GgmlDType, b: &[u8]) -> Super {
    match dtype {
        GgmlDType::Q2K => q2k(b),
        GgmlDType::Q3K => q3k(b),
        GgmlDType::Q4K => q4k(b),
        GgmlDType::Q5K => q5k(b),
        _ => q6k(b),
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

/// Q4_K's and Q5_K's scales and minimums (one per 32 values), as one per 16.
fn k4_scales(scales: &[u8]) -> ([i8; 16], [i16; 16]) {
    let pairs: [(u8, u8); 8] = std::array::from_fn(|j| scale_min_k4(j, scales));
    (
        std::array::from_fn(|i| pairs[i / 2].0 as i8),
        std::array::from_fn(|i| i16::from(pairs[i / 2].1)),
    )
}

/// Q4_K: `d`, `dmin` (f16), 12 bytes of scales and minimums, 128 bytes of nibbles: each 32
/// bytes hold 32 values in their low nibbles and the next 32 in their high ones.
fn q4k(b: &[u8]) -> Super {
    let (d, dmin, scales, qs) = (f16(b), f16(&b[2..]), &b[4..16], &b[16..]);
    let (sc, mn) = k4_scales(scales);
    let u = std::array::from_fn(|l| (qs[l / 64 * 32 + l % 32] >> (4 * (l / 32 % 2))) & 0x0F);
    Super { u, sc, mn, d, dmin }
}

/// Q5_K: Q4_K's layout plus 32 bytes of fifth bits (bit `j` of byte `l` for value
/// `32·j + l`).
fn q5k(b: &[u8]) -> Super {
    let (d, dmin, scales, qh, qs) = (f16(b), f16(&b[2..]), &b[4..16], &b[16..48], &b[48..]);
    let (sc, mn) = k4_scales(scales);
    let u = std::array::from_fn(|l| {
        let low = (qs[l / 64 * 32 + l % 32] >> (4 * (l / 32 % 2))) & 0x0F;
        low | ((qh[l % 32] >> (l / 32)) & 1) << 4
    });
    Super { u, sc, mn, d, dmin }
}

/// Q6_K: 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 int8 scales, `d` (f16). Each
/// 128 values take 64 low-nibble bytes and 32 high bytes: value `32·p + l` of the 128 has
/// its low nibble in byte `32·(p % 2) + l` (low or high half by `p / 2`), its high bits at
/// `2·p` of byte `l`.
fn q6k(b: &[u8]) -> Super {
    let (ql, qh, sc, d) = (&b[..128], &b[128..192], &b[192..208], f16(&b[208..]));
    let u = std::array::from_fn(|v| {
        let (half, p, l) = (v / 128, v % 128 / 32, v % 32);
        let low = (ql[64 * half + 32 * (p % 2) + l] >> (4 * (p / 2))) & 0x0F;
        low | ((qh[32 * half + l] >> (2 * p)) & 3) << 4
    });
    Super { u, sc: std::array::from_fn(|i| sc[i] as i8), mn: [0; 16], d, dmin: 0.0 }
}

/// Q3_K: 32 bytes of high bits (bit `j` of byte `l` for value `32·j + l`), 64 bytes of 2-bit
/// values (value `32·j + l` at bits `2·(j % 4)` of byte `32·(j / 4) + l`), 16 6-bit scales
/// packed in 12 bytes (less 32), `d` (f16). A value is its 2 bits less 4 where its high
/// bit is clear: `u = q + 4·h` with a zero of 4.
fn q3k(b: &[u8]) -> Super {
    let (hmask, qs, packed, d) = (&b[..32], &b[32..96], &b[96..108], f16(&b[108..]));
    let sc = std::array::from_fn(|i| {
        let low = if i < 8 { packed[i] & 0x0F } else { packed[i - 8] >> 4 };
        let high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
        (low | high << 4) as i8 - 32
    });
    let u = std::array::from_fn(|v| {
        let (j, l) = (v / 32, v % 32);
        let q = (qs[32 * (j / 4) + l] >> (2 * (j % 4))) & 3;
        q + 4 * ((hmask[l] >> j) & 1)
    });
    Super { u, sc, mn: [0; 16], d, dmin: 0.0 }
}

/// Q2_K: 16 bytes of 4-bit scale and minimum pairs (one per 16 values), 64 bytes of 2-bit
/// values (laid out as Q3_K's), `d` and `dmin` (f16).
fn q2k(b: &[u8]) -> Super {
    let (scm, qs, d, dmin) = (&b[..16], &b[16..80], f16(&b[80..]), f16(&b[82..]));
    let u = std::array::from_fn(|v| {
        let (j, l) = (v / 32, v % 32);
        (qs[32 * (j / 4) + l] >> (2 * (j % 4))) & 3
    });
    let sc = std::array::from_fn(|i| (scm[i] & 0x0F) as i8);
    let mn = std::array::from_fn(|i| i16::from(scm[i] >> 4));
    Super { u, sc, mn, d, dmin }
}

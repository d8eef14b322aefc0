//! llama.cpp's IQ4_NL and IQ4_XS blocks, which the CPU reads as Q8_0: both store 4-bit
//! indices into one table of sixteen int8 values, so a block's values are its scale times
//! int8s, which is what Q8_0 holds. IQ4_NL's blocks (32 values, an f16 scale) carry over
//! exactly; IQ4_XS's super-blocks of 256 give each 32 the super-block's f16 scale times a
//! 6-bit integer, which Q8_0 stores rounded to f16 (a relative change of at most 2⁻¹¹ in a
//! 32-value block's scale, far under the 4-bit values' own error). The CPU's kernels find the
//! table in those Q8_0 values and hold them as 4-bit codes again
//! ([`crate::kernels::codes`]); the GPU takes them as Q8_0.
//!
//! Also the quantizers the test fixtures write these types with (simple nearest-value ones:
//! llama.cpp's search for the best scale is not needed to check that we read the format).

use half::f16;

/// The table both types index (llama.cpp's `kvalues_iq4nl`).
use crate::kernels::codes::IQ4_NL as VALUES;

pub const NL_BLOCK: usize = 32;
/// An f16 scale and 16 bytes of two indices each.
pub const NL_BYTES: usize = 2 + NL_BLOCK / 2;
pub const XS_BLOCK: usize = 256;
/// An f16 scale, the 6-bit scales' high 2 bits (u16) and low 4 bits (4 bytes), 128 bytes
/// of indices.
pub const XS_BYTES: usize = 2 + 2 + 4 + XS_BLOCK / 2;
const Q8_0_BYTES: usize = 2 + 32;

/// One 32-value Q8_0 block of `scale` and the 16 index bytes `qs` (value j in the low
/// nibble of byte j, value j + 16 in its high nibble).
fn q8_0_block(out: &mut Vec<u8>, scale: [u8; 2], qs: &[u8]) {
    out.extend(scale);
    out.extend(qs.iter().map(|q| VALUES[usize::from(q & 0xF)] as u8));
    out.extend(qs.iter().map(|q| VALUES[usize::from(q >> 4)] as u8));
}

/// IQ4_NL blocks as Q8_0 blocks (whole blocks only; a cut block is left out).
pub fn nl_to_q8_0(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() / NL_BYTES * Q8_0_BYTES);
    for block in raw.chunks_exact(NL_BYTES) {
        q8_0_block(&mut out, [block[0], block[1]], &block[2..]);
    }
    out
}

/// The 6-bit scale of sub-block `ib` of an IQ4_XS super-block, less its offset of 32.
fn xs_scale(scales_h: u16, scales_l: &[u8], ib: usize) -> i32 {
    let low = (scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF;
    let high = (scales_h >> (2 * ib)) & 3;
    i32::from(low) | (i32::from(high) << 4)
}

/// IQ4_XS super-blocks as Q8_0 blocks; an error if a block's scale overflows f16.
pub fn xs_to_q8_0(raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(raw.len() / XS_BYTES * 8 * Q8_0_BYTES);
    for block in raw.chunks_exact(XS_BYTES) {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        let scales_h = u16::from_le_bytes([block[2], block[3]]);
        let (scales_l, qs) = (&block[4..8], &block[8..]);
        for ib in 0..XS_BLOCK / 32 {
            let scale = d * (xs_scale(scales_h, scales_l, ib) - 32) as f32;
            let half = f16::from_f32(scale);
            if !half.is_finite() {
                return Err(format!("an IQ4_XS block scale of {scale} does not fit f16"));
            }
            q8_0_block(&mut out, half.to_le_bytes(), &qs[16 * ib..16 * ib + 16]);
        }
    }
    Ok(out)
}

/// The index of the table value nearest `x`.
fn nearest(x: f32) -> u8 {
    let mut best = 0;
    for (i, &v) in VALUES.iter().enumerate() {
        if (f32::from(v) - x).abs() < (f32::from(VALUES[best]) - x).abs() {
            best = i;
        }
    }
    best as u8
}

/// The signed value of largest magnitude, over -127: the scale that maps it onto the
/// table's end.
fn scale_of(xs: &[f32]) -> f32 {
    let max = xs.iter().copied().fold(0f32, |m, x| if x.abs() > m.abs() { x } else { m });
    max / -127.0
}

/// Indices of 32 values at scale `d`, packed two a byte.
fn pack(xs: &[f32], d: f32) -> [u8; 16] {
    let index = |x: f32| if d == 0.0 { nearest(0.0) } else { nearest(x / d) };
    std::array::from_fn(|j| index(xs[j]) | (index(xs[j + 16]) << 4))
}

/// `values` (a whole number of blocks of 32) as IQ4_NL blocks.
pub fn quantize_nl(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / NL_BLOCK * NL_BYTES);
    for xs in values.chunks_exact(NL_BLOCK) {
        let d = f16::from_f32(scale_of(xs));
        out.extend(d.to_le_bytes());
        out.extend(pack(xs, d.to_f32()));
    }
    out
}

/// `values` (a whole number of blocks of 256) as IQ4_XS super-blocks.
pub fn quantize_xs(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / XS_BLOCK * XS_BYTES);
    for xs in values.chunks_exact(XS_BLOCK) {
        let scales: Vec<f32> = xs.chunks_exact(32).map(scale_of).collect();
        let top = scales.iter().copied().fold(0f32, |m, s| if s.abs() > m.abs() { s } else { m });
        let d = f16::from_f32(top / -32.0);
        let (mut scales_h, mut scales_l, mut qs) = (0u16, [0u8; 4], Vec::with_capacity(128));
        for (ib, (sub, s)) in xs.chunks_exact(32).zip(&scales).enumerate() {
            let l = if d.to_f32() == 0.0 {
                0
            } else {
                (s / d.to_f32()).round().clamp(-32.0, 31.0) as i32
            };
            let ls = (l + 32) as u8;
            scales_l[ib / 2] |= (ls & 0xF) << (4 * (ib % 2));
            scales_h |= u16::from(ls >> 4) << (2 * ib);
            qs.extend(pack(sub, d.to_f32() * l as f32));
        }
        out.extend(d.to_le_bytes());
        out.extend(scales_h.to_le_bytes());
        out.extend(scales_l);
        out.extend(qs);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's dequantization, as its reference C reads the blocks.
    fn dequantize_xs(raw: &[u8]) -> Vec<f32> {
        let mut out = Vec::new();
        for b in raw.chunks_exact(XS_BYTES) {
            let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
            let scales_h = u16::from_le_bytes([b[2], b[3]]);
            for ib in 0..8 {
                let ls = i32::from((b[4 + ib / 2] >> (4 * (ib % 2))) & 0xf)
                    | ((i32::from(scales_h >> (2 * ib)) & 3) << 4);
                let dl = d * (ls - 32) as f32;
                let qs = &b[8 + 16 * ib..8 + 16 * ib + 16];
                let mut y = [0f32; 32];
                for j in 0..16 {
                    y[j] = dl * f32::from(VALUES[usize::from(qs[j] & 0xf)]);
                    y[j + 16] = dl * f32::from(VALUES[usize::from(qs[j] >> 4)]);
                }
                out.extend(y);
            }
        }
        out
    }

    fn q8_0_values(raw: &[u8]) -> Vec<f32> {
        let mut out = Vec::new();
        for b in raw.chunks_exact(Q8_0_BYTES) {
            let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
            out.extend(b[2..].iter().map(|&q| d * f32::from(q as i8)));
        }
        out
    }

    fn wave(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i / 32) as f32)).collect()
    }

    #[test]
    fn iq4_nl_reads_as_the_same_values_in_q8_0() {
        let xs = wave(4 * NL_BLOCK);
        let raw = quantize_nl(&xs);
        assert_eq!(raw.len(), 4 * NL_BYTES);
        let q8 = q8_0_values(&nl_to_q8_0(&raw));
        for (block, (x, y)) in xs.chunks(32).zip(q8.chunks(32)).enumerate() {
            // The quantizer's own error: half the table's widest gap (24) or the 14 between
            // its top values, 113 and 127, at this block's scale (and the scale's f16 rounding).
            let step = x.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0 * 14.1;
            for (a, b) in x.iter().zip(y) {
                assert!((a - b).abs() <= step, "block {block}: {a} read as {b}");
            }
        }
    }

    #[test]
    fn iq4_xs_reads_as_llama_cpp_reads_it() {
        let xs = wave(3 * XS_BLOCK);
        let raw = quantize_xs(&xs);
        assert_eq!(raw.len(), 3 * XS_BYTES);
        let expected = dequantize_xs(&raw);
        let q8 = q8_0_values(&xs_to_q8_0(&raw).expect("scales fit f16"));
        for (i, (a, b)) in expected.iter().zip(&q8).enumerate() {
            // Only the f16 rounding of each 32's scale.
            assert!((a - b).abs() <= a.abs() * 2f32.powi(-11), "value {i}: {a} read as {b}");
        }
        // And the quantizer kept the values near the originals: the table's widest step near
        // its ends is 14 of 127 (0.11 of a block's largest), and a sub-block's scale is a
        // 6-bit multiple of the super-block's.
        for (x, y) in xs.chunks(XS_BLOCK).zip(expected.chunks(XS_BLOCK)) {
            let top = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = x.iter().zip(y).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst <= top * 0.15, "{worst} of {top}");
        }
    }
}

//! llama.cpp's MXFP4 blocks (gpt-oss's experts), which the CPU reads as Q8_0: a block of 32
//! is one E8M0 exponent `e` and 32 four-bit E2M1 values, and llama.cpp reads value `k` of
//! its table (the E2M1 values doubled: 0, ±1, ±2, ±3, ±4, ±6, ±8, ±12) as `k · 2^(e − 128)`.
//! Those are integers times a power of two, which Q8_0 holds exactly where the power fits
//! f16: from 2⁻²⁴ to 2¹⁵ as the scale, up to 2¹⁸ with the integers shifted (12 · 8 < 127).
//! A block under 2⁻²⁴ (its largest value under 2⁻²⁰, beneath any weight that matters) is
//! rounded to Q8_0's finest scale; one over 2¹⁸ cannot be held and refuses to load. The CPU's
//! kernels find MXFP4's table in those Q8_0 values and hold them as 4-bit codes again
//! ([`crate::kernels::codes`]), unless a block's integers had to be shifted; the GPU takes
//! them as Q8_0.
//!
//! Also the quantizer the test fixtures write MXFP4 with (gguf-py's: the exponent from the
//! block's largest value, each value to the nearest of the table's).

use half::f16;

/// llama.cpp's `kvalues_mxfp4`: E2M1 values times two, indexed by the 4-bit code.
use crate::kernels::codes::MXFP4 as VALUES;

pub const BLOCK: usize = 32;
/// The exponent byte and 16 bytes of two codes each.
pub const BYTES: usize = 1 + BLOCK / 2;
const Q8_0_BYTES: usize = 2 + 32;

/// f16's smallest and largest powers of two.
const F16_MIN_EXP: i32 = -24;
const F16_MAX_EXP: i32 = 15;
/// How far above f16's largest power the integers can be shifted and stay int8 (12 · 8).
const MAX_SHIFT: i32 = 3;

/// The power of two a block's table values are multiplied by (`ggml_e8m0_to_fp32_half`).
fn exponent(e: u8) -> i32 {
    i32::from(e) - 128
}

/// MXFP4 blocks as Q8_0 blocks; an error if a block's scale is beyond what Q8_0 holds.
pub fn to_q8_0(raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(raw.len() / BYTES * Q8_0_BYTES);
    for block in raw.chunks_exact(BYTES) {
        let p = exponent(block[0]);
        if p > F16_MAX_EXP + MAX_SHIFT {
            return Err(format!("an MXFP4 block's scale 2^{p} is beyond what Q8_0 holds"));
        }
        // The scale Q8_0 stores, and the integers' factor: 2^(p - stored).
        let stored = p.clamp(F16_MIN_EXP, F16_MAX_EXP);
        let factor = 2f32.powi(p - stored);
        out.extend(f16::from_f32(2f32.powi(stored)).to_le_bytes());
        let codes = &block[1..];
        let value = |code: u8| (f32::from(VALUES[usize::from(code)]) * factor).round() as i8 as u8;
        out.extend(codes.iter().map(|q| value(q & 0xF)));
        out.extend(codes.iter().map(|q| value(q >> 4)));
    }
    Ok(out)
}

/// `values` (a multiple of 32) as MXFP4 blocks: gguf-py's exponent (the block's largest
/// magnitude's power of two, less 2, so that 12 covers it), each value to the nearest
/// table value (the first of equals).
pub fn quantize(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / BLOCK * BYTES);
    for block in values.chunks_exact(BLOCK) {
        let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let e =
            if max > 0.0 { (max.log2().floor() as i32 - 2 + 127).clamp(0, 255) as u8 } else { 0 };
        let d = 2f32.powi(exponent(e));
        let code = |x: f32| {
            let mut best = 0;
            for (i, &v) in VALUES.iter().enumerate() {
                if (d * f32::from(v) - x).abs() < (d * f32::from(VALUES[best]) - x).abs() {
                    best = i;
                }
            }
            best as u8
        };
        out.push(e);
        out.extend((0..BLOCK / 2).map(|j| code(block[j]) | code(block[j + BLOCK / 2]) << 4));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Q8_0 block `i` of `q8` as f32 values.
    fn q8_values(q8: &[u8]) -> Vec<f32> {
        q8.chunks_exact(Q8_0_BYTES)
            .flat_map(|b| {
                let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                b[2..].iter().map(move |&q| f32::from(q as i8) * d)
            })
            .collect()
    }

    /// llama.cpp's dequantization (`dequantize_row_mxfp4`) of one block.
    fn reference(block: &[u8]) -> Vec<f32> {
        let d = 2f64.powi(exponent(block[0])) as f32;
        let codes = &block[1..];
        let low = codes.iter().map(|q| f32::from(VALUES[usize::from(q & 0xF)]) * d);
        let high = codes.iter().map(|q| f32::from(VALUES[usize::from(q >> 4)]) * d);
        low.chain(high).collect()
    }

    #[test]
    fn blocks_read_as_llama_cpp_reads_them_at_every_scale_q8_0_holds() {
        // Every code in both nibbles, at scales from the finest exact one to the largest.
        let codes: Vec<u8> = (0..16u8).map(|i| i | (15 - i) << 4).collect();
        for e in [104u8, 110, 120, 127, 128, 140, 143, 144, 146] {
            let block: Vec<u8> = std::iter::once(e).chain(codes.iter().copied()).collect();
            let q8 = to_q8_0(&block).expect("a scale Q8_0 holds");
            assert_eq!(q8_values(&q8), reference(&block), "exponent byte {e}");
        }
        // Beyond 2^18: refused, naming the scale.
        let block: Vec<u8> = std::iter::once(147).chain(codes.iter().copied()).collect();
        assert!(to_q8_0(&block).is_err_and(|e| e.contains("2^19")));
        // Under 2^-24: rounded to the finest scale, within half of it.
        let block: Vec<u8> = std::iter::once(101).chain(codes.iter().copied()).collect();
        let got = q8_values(&to_q8_0(&block).expect("a tiny scale"));
        for (g, w) in got.iter().zip(reference(&block)) {
            assert!((g - w).abs() <= 2f32.powi(-25), "{g} vs {w}");
        }
    }

    #[test]
    fn the_quantizer_keeps_values_within_the_tables_step() {
        let values: Vec<f32> = (0..256).map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0).collect();
        let raw = quantize(&values);
        assert_eq!(raw.len(), values.len() / BLOCK * BYTES);
        let back = q8_values(&to_q8_0(&raw).expect("quantized blocks"));
        for (block, got) in values.chunks(BLOCK).zip(back.chunks(BLOCK)) {
            let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            // The table's widest gap (8 to 12) is a third of the largest value it covers.
            for (v, g) in block.iter().zip(got) {
                assert!((v - g).abs() <= max / 3.0 + 1e-6, "{v} vs {g} (block max {max})");
            }
        }
    }
}

//! Activations quantized once per matmul into 8-bit blocks of 32 (like llama.cpp's Q8_0
//! activations), so every weight row is an integer dot product with per-block scales.
//!
//! The int8 values are exactly candle's (`round(x / d)` with `d = max|x| / 127`); the scale
//! stays f32 instead of candle's f16, which only removes a rounding step.

use rayon::prelude::*;

/// Values per block, shared by Q8_0 and Q5_0 weights.
pub(crate) const QK: usize = 32;

/// What the weights need of the activations besides their blocks and scales.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Needs {
    /// Signed weights: the blocks' absolute values.
    Abs,
    /// Weights with stored offsets: each block's sum.
    Sums,
    /// Weights whose offset is a fixed integer multiple `f` of the scale (Q4_0: -8, Q5_0:
    /// -16): `f` times the sum of each 4 values, the lanes the dot product starts from.
    Shifts(i32),
}

/// `m` rows of `k` activations as int8 blocks and one f32 scale per block, with what the
/// weights need ([`Needs`]), computed once here instead of once per weight row: absolute
/// values (the unsigned operand of the signed dot), each block's sum `d·Σq`, or the integer
/// start of each block's dot product, `f·Σq` in 8 lanes of 4 values.
pub(crate) struct QuantActs {
    pub k: usize,
    pub qs: Vec<[i8; QK]>,
    pub abs: Vec<[i8; QK]>,
    pub d: Vec<f32>,
    pub sums: Vec<f32>,
    pub shifts: Vec<[i32; QK / 4]>,
}

impl QuantActs {
    /// Quantizes `x` ([m, k] row-major, `k` a multiple of [`QK`]).
    pub fn new(x: &[f32], k: usize, needs: Needs) -> Self {
        let (qs, d) = quantize(x.as_chunks::<QK>().0);
        let (mut abs, mut sums, mut shifts) = (Vec::new(), Vec::new(), Vec::new());
        match needs {
            Needs::Abs => abs = qs.iter().map(|q| q.map(|v| v.unsigned_abs() as i8)).collect(),
            Needs::Sums => {
                let sum = |q: &[i8; QK]| q.iter().map(|&v| i32::from(v)).sum::<i32>();
                sums = qs.iter().zip(&d).map(|(q, d)| sum(q) as f32 * d).collect();
            }
            Needs::Shifts(f) => {
                let lane = |c: &[i8]| f * c.iter().map(|&v| i32::from(v)).sum::<i32>();
                shifts =
                    qs.iter().map(|q| std::array::from_fn(|l| lane(&q[4 * l..][..4]))).collect();
            }
        }
        Self { k, qs, abs, d, sums, shifts }
    }

    pub fn rows(&self) -> usize {
        self.d.len() / (self.k / QK).max(1)
    }

    /// Row `a`'s blocks, scales and what was computed of [`Needs`] (the others empty).
    pub fn row(&self, a: usize) -> ActRow<'_> {
        let r = a * self.k / QK..(a + 1) * self.k / QK;
        ActRow {
            qs: &self.qs[r.clone()],
            abs: part(&self.abs, &r),
            d: &self.d[r.clone()],
            sums: part(&self.sums, &r),
            shifts: part(&self.shifts, &r),
        }
    }
}

/// `v[r]`, or nothing for what was not computed.
fn part<'a, T>(v: &'a [T], r: &std::ops::Range<usize>) -> &'a [T] {
    if v.is_empty() { &[] } else { &v[r.clone()] }
}

/// One activation row of [`QuantActs`].
pub(crate) struct ActRow<'a> {
    pub qs: &'a [[i8; QK]],
    pub abs: &'a [[i8; QK]],
    pub d: &'a [f32],
    pub sums: &'a [f32],
    pub shifts: &'a [[i32; QK / 4]],
}

/// Blocks of `N` values (32 here, 256 for the k-quants' activations) as int8 values and
/// their scales.
pub(crate) fn quantize<const N: usize>(xs: &[[f32; N]]) -> (Vec<[i8; N]>, Vec<f32>) {
    let mut qs = vec![[0i8; N]; xs.len()];
    let mut d = vec![0f32; xs.len()];
    // Large prefills: quantizing 512 × 4864 values is worth a second thread.
    let par_blocks = (1 << 17) / N;
    if xs.len() >= 2 * par_blocks {
        qs.par_chunks_mut(par_blocks)
            .zip(d.par_chunks_mut(par_blocks))
            .zip(xs.par_chunks(par_blocks))
            .for_each(|((q, d), x)| quantize_blocks(x, q, d));
    } else {
        quantize_blocks(xs, &mut qs, &mut d);
    }
    (qs, d)
}

fn quantize_blocks<const N: usize>(xs: &[[f32; N]], qs: &mut [[i8; N]], ds: &mut [f32]) {
    pulp::Arch::new().dispatch(Quantize { xs, qs, ds });
}

/// A struct, not a closure, so it is inlined into pulp's `#[target_feature]` function.
struct Quantize<'a, const N: usize> {
    xs: &'a [[f32; N]],
    qs: &'a mut [[i8; N]],
    ds: &'a mut [f32],
}

impl<const N: usize> pulp::NullaryFnOnce for Quantize<'_, N> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        for ((x, q), d) in self.xs.iter().zip(self.qs.iter_mut()).zip(self.ds.iter_mut()) {
            quantize_block(x, q, d);
        }
    }
}

#[inline(always)]
fn quantize_block<const N: usize>(x: &[f32; N], q: &mut [i8; N], d: &mut f32) {
    // Lane-wise max over 8 lanes so it vectorizes (a plain f32 max fold does not).
    let mut lanes = [0f32; 8];
    for c in x.chunks_exact(8) {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l = l.max(v.abs());
        }
    }
    let amax = lanes.iter().fold(0f32, |a, &l| a.max(l));
    *d = amax / 127.0;
    let id = if *d != 0.0 { 1.0 / *d } else { 0.0 };
    for (q, v) in q.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
    }
}

/// IEEE half bits to f32 (GGUF block scales), without a table or the F16C extension.
#[inline(always)]
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let sign = (h & 0x8000) << 16;
    let em = h & 0x7fff;
    let bits = if em >= 0x7c00 {
        // Inf / NaN: max exponent, mantissa kept.
        0x7f80_0000 | ((em & 0x03ff) << 13)
    } else {
        // Shifting puts the half's exponent and mantissa in place with a bias of 15 instead
        // of 127; multiplying by 2^112 rebiases and also normalizes subnormals exactly.
        (f32::from_bits(em << 13) * f32::from_bits(0x7780_0000)).to_bits()
    };
    f32::from_bits(sign | bits)
}

#[cfg(test)]
mod tests {
    #[test]
    fn f16_to_f32_is_exact_for_every_half() {
        for h in 0..=u16::MAX {
            let (ours, want) = (super::f16_to_f32(h), half::f16::from_bits(h).to_f32());
            assert!(ours.to_bits() == want.to_bits() || ours.is_nan() && want.is_nan(), "{h:#x}");
        }
    }

    #[test]
    fn quantized_values_match_candle_rounding() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 31.5) * 0.37).collect();
        let q = super::QuantActs::new(&x, 64, super::Needs::Abs);
        let super::ActRow { qs, abs, d, .. } = q.row(0);
        for (b, block) in x.chunks_exact(32).enumerate() {
            let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
            assert_eq!(d[b], amax / 127.0);
            for (i, v) in block.iter().enumerate() {
                assert_eq!(qs[b][i], (v * (1.0 / d[b])).round() as i8); // candle: round(x * (1/d))
                assert_eq!(abs[b][i], qs[b][i].abs());
            }
        }
    }
}

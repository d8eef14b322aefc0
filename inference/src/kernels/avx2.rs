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
//! `pulp::x86::V3` proves the CPU has AVX2+FMA, so the intrinsics are safe to call;
//! everything is inlined into its `#[target_feature]` body.

use core::arch::x86_64::{__m256, __m256i};
use pulp::x86::V3;

use super::q8::{Block, Nibbles, Q8Kernel, Unsigned};

#[derive(Clone, Copy)]
pub(crate) struct Avx2(pub V3);

/// `acc + scale · (the 16 i16 pair sums widened to 8 i32 and converted)`: one block's dot
/// product, scaled, into the f32 accumulator. Lane `l` of the widened sums covers values
/// `4l..4l + 4`, so with two scales (one per 16 values) the low four lanes take the first.
#[inline(always)]
fn scaled_sum<const H: usize>(
    s: V3,
    p16: __m256i,
    ones: __m256i,
    scale: [f32; H],
    acc: __m256,
) -> __m256 {
    let p32 = s.avx2._mm256_madd_epi16(p16, ones);
    let scale = if H == 1 {
        s.avx._mm256_set1_ps(scale[0])
    } else {
        let (a, b) = (scale[0], scale[H - 1]);
        s.avx._mm256_setr_ps(a, a, a, a, b, b, b, b)
    };
    s.fma._mm256_fmadd_ps(s.avx._mm256_cvtepi32_ps(p32), scale, acc)
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

impl Q8Kernel for Avx2 {
    #[inline(always)]
    fn tile<const R: usize, const H: usize>(
        self,
        w: &[[Block; R]],
        sc: &[[[f32; H]; R]],
        x: &[Block],
        ax: &[Block],
    ) -> [f32; R] {
        let s = self.0;
        let kb = w.len();
        // Equal lengths up front so the loop below has no bounds checks.
        let (sc, x, ax) = (&sc[..kb], &x[..kb], &ax[..kb]);
        let ones = s.avx._mm256_set1_epi16(1);
        let mut acc = [s.avx._mm256_setzero_ps(); R];
        for b in 0..kb {
            let xv: __m256i = pulp::cast(x[b]);
            let axv: __m256i = pulp::cast(ax[b]);
            for i in 0..R {
                let wv: __m256i = pulp::cast(w[b][i]);
                // |x| · (w · sign x): the unsigned operand of maddubs is the activation's, so
                // only one sign per pair; pair sums stay below 2·127·128 < i16::MAX.
                let p16 = s.avx2._mm256_maddubs_epi16(axv, s.avx2._mm256_sign_epi8(wv, xv));
                acc[i] = scaled_sum(s, p16, ones, sc[b][i], acc[i]);
            }
        }
        acc.map(|v| pulp::cast::<__m256, [f32; 8]>(v).iter().sum())
    }

    #[inline(always)]
    fn tile_offset<const R: usize, const H: usize, U: Unsigned + WideLoad>(
        self,
        w: &[[U; R]],
        sc: &[[[f32; H]; R]],
        mn: &[[[f32; H]; R]],
        x: &[Block],
        xs: &[[f32; H]],
    ) -> [f32; R] {
        let s = self.0;
        let kb = w.len();
        let (sc, mn, x, xs) = (&sc[..kb], &mn[..kb], &x[..kb], &xs[..kb]);
        let ones = s.avx._mm256_set1_epi16(1);
        let mut acc = [s.avx._mm256_setzero_ps(); R];
        let mut off = [0f32; R];
        for b in 0..kb {
            let xv: __m256i = pulp::cast(x[b]);
            for i in 0..R {
                let wv = w[b][i].load(s);
                let p16 = s.avx2._mm256_maddubs_epi16(wv, xv);
                acc[i] = scaled_sum(s, p16, ones, sc[b][i], acc[i]);
                for h in 0..H {
                    off[i] += mn[b][i][h] * xs[b][h];
                }
            }
        }
        std::array::from_fn(|i| pulp::cast::<__m256, [f32; 8]>(acc[i]).iter().sum::<f32>() + off[i])
    }
}

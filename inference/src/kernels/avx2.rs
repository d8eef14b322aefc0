//! The Q8_0 tile on AVX2 (llama.cpp's int8 dot, operands swapped): `maddubs(|x|, sign(w, x))`
//! gives 16 i16 pair sums of one block, `madd` with ones widens them to 8 i32, which are
//! converted and scaled per block into f32 accumulators. `|x|` comes precomputed with the
//! activations, which saves a vector op per block pair on the ALUs that bound this loop.
//! `pulp::x86::V3` proves the CPU has AVX2+FMA, so the intrinsics are safe to call; everything
//! is inlined into its `#[target_feature]` body.

use core::arch::x86_64::{__m256, __m256i};
use pulp::x86::V3;

use super::q8::{Block, Q8Kernel};

#[derive(Clone, Copy)]
pub(crate) struct Avx2(pub V3);

impl Q8Kernel for Avx2 {
    #[inline(always)]
    fn tile<const R: usize>(
        self,
        w: &[[Block; R]],
        sc: &[[f32; R]],
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
                let p32 = s.avx2._mm256_madd_epi16(p16, ones);
                let scale = s.avx._mm256_set1_ps(sc[b][i]);
                acc[i] = s.fma._mm256_fmadd_ps(s.avx._mm256_cvtepi32_ps(p32), scale, acc[i]);
            }
        }
        acc.map(|v| pulp::cast::<__m256, [f32; 8]>(v).iter().sum())
    }
}

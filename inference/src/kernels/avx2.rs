//! The Q8_0 tile on AVX2 (llama.cpp's int8 dot): `maddubs(|w|, sign(x, w))` gives 16 i16
//! pair sums of one block, `madd` with ones widens them to 8 i32, which are converted and
//! scaled per block into f32 accumulators. `pulp::x86::V3` proves the CPU has AVX2+FMA, so
//! the intrinsics are safe to call; everything is inlined into its `#[target_feature]` body.

use core::arch::x86_64::{__m256, __m256i};
use pulp::x86::V3;

use super::q8::{Block, Q8Kernel};

#[derive(Clone, Copy)]
pub(crate) struct Avx2(pub V3);

impl Q8Kernel for Avx2 {
    #[inline(always)]
    fn tile<const R: usize, const MA: usize>(
        self,
        w: &[[Block; R]],
        sw: &[[f32; R]],
        x: [&[Block]; MA],
        sx: [&[f32]; MA],
    ) -> [[f32; MA]; R] {
        let s = self.0;
        let kb = w.len();
        // Equal lengths up front so the loop below has no bounds checks.
        let sw = &sw[..kb];
        let x = x.map(|x| &x[..kb]);
        let sx = sx.map(|sx| &sx[..kb]);
        let ones = s.avx._mm256_set1_epi16(1);
        let mut acc: [[__m256; MA]; R] = [[s.avx._mm256_setzero_ps(); MA]; R];
        for b in 0..kb {
            let mut xv = [ones; MA];
            for j in 0..MA {
                xv[j] = pulp::cast(x[j][b]);
            }
            for i in 0..R {
                let wv: __m256i = pulp::cast(w[b][i]);
                let aw = s.avx2._mm256_sign_epi8(wv, wv);
                for j in 0..MA {
                    let sxw = s.avx2._mm256_sign_epi8(xv[j], wv);
                    let p16 = s.avx2._mm256_maddubs_epi16(aw, sxw);
                    let p32 = s.avx2._mm256_madd_epi16(p16, ones);
                    let scale = s.avx._mm256_set1_ps(sw[b][i] * sx[j][b]);
                    let p = s.avx._mm256_cvtepi32_ps(p32);
                    acc[i][j] = s.fma._mm256_fmadd_ps(p, scale, acc[i][j]);
                }
            }
        }
        acc.map(|row| row.map(|v| pulp::cast::<__m256, [f32; 8]>(v).iter().sum()))
    }
}

//! AVX-512 VNNI: the AVX2 tiles ([`super::avx2`]) with each block's `maddubs` + `madd` as one
//! `vpdpbusd`, and the super-blocks' scale `madd` + `add` as one `vpdpwssd` (256-bit forms,
//! AVX512VL). The integers are the same, so the outputs are bit for bit the AVX2 kernels'.
//! Tiles of many activation rows run on 512-bit registers ([`super::avx512`]).
//!
//! `pulp` runs the tiles in a function compiled for [`V4Vnni`]'s features once it has checked
//! the CPU has them; the intrinsics `pulp` does not wrap are called through [`Vnni`], which
//! exists only inside such a token.

use core::arch::x86_64::{
    __m256i, __m512i, _mm256_dpbusd_epi32, _mm256_dpwssd_epi32, _mm512_dpbusd_epi32,
    _mm512_dpwssd_epi32,
};
use pulp::x86::V3;

use super::avx2::{Avx2, Dot};

pulp::simd_type! {
    /// AVX2 + FMA (pulp's `V3`) and the AVX-512 subsets VNNI's 256-bit forms need.
    pub(crate) struct V4Vnni {
        pub sse: "sse",
        pub sse2: "sse2",
        pub fxsr: "fxsr",
        pub sse3: "sse3",
        pub ssse3: "ssse3",
        pub sse4_1: "sse4.1",
        pub sse4_2: "sse4.2",
        pub popcnt: "popcnt",
        pub avx: "avx",
        pub avx2: "avx2",
        pub bmi1: "bmi1",
        pub bmi2: "bmi2",
        pub fma: "fma",
        pub lzcnt: "lzcnt",
        pub avx512f: "avx512f",
        pub avx512bw: "avx512bw",
        pub avx512vl: "avx512vl",
        pub avx512vnni: "avx512vnni",
    }
}

/// VNNI's dot products; only made from a [`V4Vnni`].
#[derive(Clone, Copy)]
pub(crate) struct Vnni {
    _proof: V4Vnni,
}

/// The AVX2 kernels with VNNI's dot products, when this CPU has AVX-512 VNNI, and the token
/// whose `vectorize` compiles them for it.
pub(crate) fn kernel() -> Option<(V4Vnni, Avx2<Vnni>)> {
    let simd = V4Vnni::try_new()?;
    Some((simd, Avx2(V3::try_new()?, Vnni { _proof: simd })))
}

impl Vnni {
    /// [`Dot::bytes`] on 512 bits.
    #[inline(always)]
    pub(crate) fn bytes512(self, acc: __m512i, u: __m512i, i: __m512i) -> __m512i {
        // SAFETY: as in `bytes`.
        #[allow(unsafe_code)]
        unsafe {
            _mm512_dpbusd_epi32(acc, u, i)
        }
    }

    /// [`Dot::words`] on 512 bits.
    #[inline(always)]
    pub(crate) fn words512(self, acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: as in `bytes`.
        #[allow(unsafe_code)]
        unsafe {
            _mm512_dpwssd_epi32(acc, a, b)
        }
    }
}

impl Dot for Vnni {
    const ANY_U8: bool = true;

    #[inline(always)]
    fn bytes(self, _s: V3, acc: __m256i, u: __m256i, i: __m256i) -> __m256i {
        // SAFETY: a `Vnni` holds a `V4Vnni`, which pulp makes only on CPUs with AVX512F,
        // AVX512VL and AVX512-VNNI, the features this intrinsic needs.
        #[allow(unsafe_code)]
        unsafe {
            _mm256_dpbusd_epi32(acc, u, i)
        }
    }

    #[inline(always)]
    fn words(self, _s: V3, acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        // SAFETY: as in `bytes`.
        #[allow(unsafe_code)]
        unsafe {
            _mm256_dpwssd_epi32(acc, a, b)
        }
    }
}

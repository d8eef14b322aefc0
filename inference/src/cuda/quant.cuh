// GGUF block formats read on the GPU: each dequantizes 8 consecutive values of a row
// (`col` a multiple of 8, so all in one block) to f32 exactly as the CPU does (candle's
// `to_float`, llama.cpp's `dequantize_row_*`): the same products and sums, each rounded on
// its own (explicit _rn intrinsics, so nvcc contracts none into an FMA). A matrix kept as
// blocks therefore multiplies to the bits of its dequantized form.
//
// Block layouts (bytes), as in GGUF files:
//   Q4_0 18: d f16, qs[16]          Q4_1 20: d, m f16, qs[16]
//   Q5_0 22: d, qh[4], qs[16]       Q5_1 24: d, m, qh[4], qs[16]
//   Q8_0 34: d, qs[32] (i8)
//   Q4_K 144: d, dmin f16, scales[12], qs[128]
//   Q5_K 176: d, dmin, scales[12], qh[32], qs[128]
//   Q6_K 210: ql[128], qh[64], scales[16] (i8), d f16
// Every block size is even, so each f16 sits on a 2-byte boundary; wider fields are read a
// byte at a time.
//
// The host C++ compiler builds this file too (FLEET_HOST_REFERENCE, with stand-ins for the
// intrinsics): inference/tests/blocks_reference.rs checks every format against candle's CPU
// dequantization bit for bit, on machines without a GPU.
#pragma once
#ifndef FLEET_HOST_REFERENCE
#include <cuda_fp16.h>
#endif
#include <stdint.h>

__device__ __forceinline__ float half_at(const uint8_t *p) {
    return __half2float(__ushort_as_half(*(const unsigned short *)p));
}

__device__ __forceinline__ uint32_t u32_at(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

// Value j of a 32-value block whose 16 bytes `qs` hold values j (low nibble) and j + 16
// (high nibble).
__device__ __forceinline__ uint32_t nibble(const uint8_t *qs, uint32_t j) {
    return j < 16 ? qs[j] & 0xF : qs[j - 16] >> 4;
}

// The fifth bit of value j of a Q5_0/Q5_1 block, as 0 or 16.
__device__ __forceinline__ uint32_t fifth_bit(uint32_t qh, uint32_t j) {
    return j < 16 ? ((qh >> j) << 4) & 0x10 : (qh >> (j - 16 + 12)) & 0x10;
}

struct Q4_0 {
    static constexpr uint32_t VALUES = 32, BYTES = 18;
    static __device__ __forceinline__ void dequantize8(const uint8_t *row, uint32_t col, float *v) {
        const uint8_t *b = row + (col / VALUES) * BYTES;
        float d = half_at(b);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int q = (int)nibble(b + 2, col % VALUES + i) - 8;
            v[i] = __fmul_rn((float)q, d);
        }
    }
};

struct Q4_1 {
    static constexpr uint32_t VALUES = 32, BYTES = 20;
    static __device__ __forceinline__ void dequantize8(const uint8_t *row, uint32_t col, float *v) {
        const uint8_t *b = row + (col / VALUES) * BYTES;
        float d = half_at(b), m = half_at(b + 2);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            uint32_t q = nibble(b + 4, col % VALUES + i);
            v[i] = __fadd_rn(__fmul_rn((float)q, d), m);
        }
    }
};

struct Q5_0 {
    static constexpr uint32_t VALUES = 32, BYTES = 22;
    static __device__ __forceinline__ void dequantize8(const uint8_t *row, uint32_t col, float *v) {
        const uint8_t *b = row + (col / VALUES) * BYTES;
        float d = half_at(b);
        uint32_t qh = u32_at(b + 2);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            uint32_t j = col % VALUES + i;
            int q = (int)(nibble(b + 6, j) | fifth_bit(qh, j)) - 16;
            v[i] = __fmul_rn((float)q, d);
        }
    }
};

struct Q5_1 {
    static constexpr uint32_t VALUES = 32, BYTES = 24;
    static __device__ __forceinline__ void dequantize8(const uint8_t *row, uint32_t col, float *v) {
        const uint8_t *b = row + (col / VALUES) * BYTES;
        float d = half_at(b), m = half_at(b + 2);
        uint32_t qh = u32_at(b + 4);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            uint32_t j = col % VALUES + i;
            uint32_t q = nibble(b + 8, j) | fifth_bit(qh, j);
            v[i] = __fadd_rn(__fmul_rn((float)q, d), m);
        }
    }
};

struct Q8_0 {
    static constexpr uint32_t VALUES = 32, BYTES = 34;
    static __device__ __forceinline__ void dequantize8(const uint8_t *row, uint32_t col, float *v) {
        const uint8_t *b = row + (col / VALUES) * BYTES;
        float d = half_at(b);
        const int8_t *qs = (const int8_t *)(b + 2) + col % VALUES;
#pragma unroll
        for (int i = 0; i < 8; i++) v[i] = __fmul_rn((float)qs[i], d);
    }
};

// Scale and minimum j (0..8) of a Q4_K/Q5_K super-block: 6 bits each, packed in 12 bytes.
__device__ __forceinline__ void scale_min_k4(uint32_t j, const uint8_t *q, uint32_t *sc,
                                             uint32_t *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// Q4_K and Q5_K: a super-block of 256 values is 4 groups of 64; in group g, values 0..32
// are the low nibbles of qs[32 g ..], scaled by sub-block 2 g, values 32..64 the high
// nibbles, sub-block 2 g + 1. y = d * sc * q - dmin * m, as (d * sc) * q - (dmin * m).
struct Q4K {
    static constexpr uint32_t VALUES = 256, BYTES = 144;
    static __device__ __forceinline__ void dequantize8(const uint8_t *row, uint32_t col, float *v) {
        const uint8_t *b = row + (col / VALUES) * BYTES;
        uint32_t j = col % VALUES, g = j / 64, w = j % 64, sub = 2 * g + (w >= 32);
        uint32_t sc, mn;
        scale_min_k4(sub, b + 4, &sc, &mn);
        float d = __fmul_rn(half_at(b), (float)sc), m = __fmul_rn(half_at(b + 2), (float)mn);
        const uint8_t *qs = b + 16 + 32 * g + w % 32;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            uint32_t q = w < 32 ? qs[i] & 0xF : qs[i] >> 4;
            v[i] = __fsub_rn(__fmul_rn(d, (float)q), m);
        }
    }
};

// As Q4_K, plus a fifth bit per value: bit 2 g of qh[l] for the group's low half, bit
// 2 g + 1 for its high half.
struct Q5K {
    static constexpr uint32_t VALUES = 256, BYTES = 176;
    static __device__ __forceinline__ void dequantize8(const uint8_t *row, uint32_t col, float *v) {
        const uint8_t *b = row + (col / VALUES) * BYTES;
        uint32_t j = col % VALUES, g = j / 64, w = j % 64, l = w % 32, sub = 2 * g + (w >= 32);
        uint32_t sc, mn;
        scale_min_k4(sub, b + 4, &sc, &mn);
        float d = __fmul_rn(half_at(b), (float)sc), m = __fmul_rn(half_at(b + 2), (float)mn);
        const uint8_t *qh = b + 16 + l, *qs = b + 48 + 32 * g + l;
        uint32_t bit = 1u << (2 * g + (w >= 32));
#pragma unroll
        for (int i = 0; i < 8; i++) {
            uint32_t q = (w < 32 ? qs[i] & 0xF : qs[i] >> 4) + (qh[i] & bit ? 16 : 0);
            v[i] = __fsub_rn(__fmul_rn(d, (float)q), m);
        }
    }
};

// Q6_K: a super-block of 256 values is 2 halves of 128; in half h, quarter t (0..4) of 32
// values l takes 4 low bits from ql[64 h + l] (t 0, 2: low/high nibble) or ql[64 h + l + 32]
// (t 1, 3), 2 high bits from qh[32 h + l] at bit 2 t, minus 32; scale scales[8 h + l / 16
// + 2 t]. y = (d * scale) * q.
struct Q6K {
    static constexpr uint32_t VALUES = 256, BYTES = 210;
    static __device__ __forceinline__ void dequantize8(const uint8_t *row, uint32_t col, float *v) {
        const uint8_t *b = row + (col / VALUES) * BYTES;
        uint32_t j = col % VALUES, h = j / 128, t = (j % 128) / 32, l = j % 32;
        const uint8_t *ql = b + 64 * h + l + (t % 2) * 32, *qh = b + 128 + 32 * h + l;
        float scale = (float)((const int8_t *)(b + 192))[8 * h + l / 16 + 2 * t];
        float d = __fmul_rn(half_at(b + 208), scale);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            uint32_t low = t < 2 ? ql[i] & 0xF : ql[i] >> 4;
            int q = (int)(low | (((qh[i] >> (2 * t)) & 3) << 4)) - 32;
            v[i] = __fmul_rn(d, (float)q);
        }
    }
};

// Fused elementwise steps of the decoder on the GPU, each one launch where candle needs two
// or three: the residual add with the next RMSNorm, and SiLU(gate) * up. Every row is
// computed by one block with a fixed reduction order, whatever the number of rows.
#include <stdint.h>

#include "convert.cuh"


#define THREADS 256

// out [2, T, H]: out[0] = x + y (rounded to T, as the residual stream is), out[1] =
// RMSNorm(out[0]) * w. Grid: T; block: THREADS.
template <typename T>
__device__ void add_rms_norm(T *out, const T *x, const T *y, const T *w, uint32_t tokens,
                             uint32_t hidden, float eps) {
    __shared__ float partial[THREADS / 32];
    uint32_t t = blockIdx.x;
    const T *xr = x + (uint64_t)t * hidden, *yr = y + (uint64_t)t * hidden;
    T *sum = out + (uint64_t)t * hidden;
    T *normed = out + ((uint64_t)tokens + t) * hidden;
    float squares = 0.f;
    for (uint32_t i = threadIdx.x; i < hidden; i += THREADS) {
        T s = from_float<T>(to_float(xr[i]) + to_float(yr[i]));
        sum[i] = s;
        float f = to_float(s);
        squares += f * f;
    }
    for (int o = 16; o > 0; o /= 2) squares += __shfl_xor_sync(0xffffffff, squares, o);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = squares;
    __syncthreads();
    float total = 0.f;
    for (int i = 0; i < THREADS / 32; i++) total += partial[i];
    float scale = rsqrtf(total / hidden + eps);
    for (uint32_t i = threadIdx.x; i < hidden; i += THREADS)
        normed[i] = from_float<T>(to_float(sum[i]) * scale * to_float(w[i]));
}

// gate_up [T, 2I] (gate then up) -> out [T, I] = SiLU(gate) * up. Grid: T; block: THREADS.
template <typename T>
__device__ void silu_mul(T *out, const T *gate_up, uint32_t inter) {
    uint32_t t = blockIdx.x;
    const T *g = gate_up + (uint64_t)t * 2 * inter, *u = g + inter;
    for (uint32_t i = threadIdx.x; i < inter; i += THREADS) {
        float a = to_float(g[i]);
        out[(uint64_t)t * inter + i] = from_float<T>(a / (1.f + __expf(-a)) * to_float(u[i]));
    }
}

#define INSTANTIATE(T, SUFFIX)                                                                 \
    extern "C" __global__ void add_rms_norm_##SUFFIX(T *out, const T *x, const T *y,           \
                                                     const T *w, uint32_t tokens,              \
                                                     uint32_t hidden, float eps) {             \
        add_rms_norm<T>(out, x, y, w, tokens, hidden, eps);                                    \
    }                                                                                          \
    extern "C" __global__ void silu_mul_##SUFFIX(T *out, const T *gate_up, uint32_t inter) {  \
        silu_mul<T>(out, gate_up, inter);                                                      \
    }

INSTANTIATE(float, f32)
INSTANTIATE(__half, f16)
INSTANTIATE(__nv_bfloat16, bf16)

// Paged KV kernels: the step's keys and values written into blocks, and attention of every
// new token of every sequence in one launch per layer.
//
// Layout (transformer::paged): a layer's pool holds `blocks * BLOCK_SIZE` slots; slot s,
// KV head h, dimension d is element `(s * kv_heads + h) * head_dim + d`. A sequence's
// position p lives in slot `table[p / BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE`.
// The step's plan (transformer::paged::StepPlan), one u32 array:
//   [slots: T][row_table: T][row_len: T][tables...]
// Token t's keys go to slot slots[t]; it attends over row_len[t] positions of the sequence
// whose block list starts at tables[row_table[t]].
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#define BLOCK_SIZE 16
#define WARPS 4
#define MAX_DIMS_PER_LANE 8

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
    return __float2bfloat16(x);
}

// src [kv_heads, T, head_dim] (the projection's heads-first layout) -> pool slots.
// Grid: T blocks; block: kv_heads * head_dim threads (at most 1024).
template <typename T>
__device__ void write_kv(T *pool, const T *src, const uint32_t *plan, uint32_t tokens,
                         uint32_t kv_heads, uint32_t head_dim) {
    uint32_t t = blockIdx.x;
    uint32_t h = threadIdx.x / head_dim, d = threadIdx.x % head_dim;
    if (h >= kv_heads) return;
    uint64_t slot = plan[t];
    pool[(slot * kv_heads + h) * head_dim + d] = src[((uint64_t)h * tokens + t) * head_dim + d];
}

// q [heads, T, head_dim] -> out [T, heads * head_dim]. Grid: (T, heads); block: 4 warps.
// Each warp takes every 4th position with an online softmax, lanes holding head_dim / 32
// dimensions; the warps are merged in a fixed order at the end. The loop a (token, head)
// runs depends only on its own sequence, never on what else shares the step, so results do
// not depend on batching or on how a prompt was chunked.
template <typename T>
__device__ void paged_attention(T *out, const T *q, const T *k_pool, const T *v_pool,
                                const uint32_t *plan, uint32_t tokens, uint32_t heads,
                                uint32_t kv_heads, uint32_t head_dim, float scale) {
    __shared__ float warp_max[WARPS], warp_sum[WARPS];
    __shared__ float warp_acc[WARPS][MAX_DIMS_PER_LANE * 32];
    uint32_t t = blockIdx.x, h = blockIdx.y;
    uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    uint32_t per_lane = head_dim / 32;
    uint32_t kvh = h / (heads / kv_heads);
    const uint32_t *row_table = plan + tokens;
    const uint32_t *row_len = plan + 2 * tokens;
    const uint32_t *table = plan + 3 * tokens + row_table[t];
    uint32_t len = row_len[t];

    float qv[MAX_DIMS_PER_LANE], acc[MAX_DIMS_PER_LANE];
    const T *qh = q + ((uint64_t)h * tokens + t) * head_dim;
    for (uint32_t i = 0; i < per_lane; i++) {
        qv[i] = to_float(qh[i * 32 + lane]) * scale;
        acc[i] = 0.f;
    }
    float m = -INFINITY, l = 0.f;
    for (uint32_t j = warp; j < len; j += WARPS) {
        uint64_t slot = (uint64_t)table[j / BLOCK_SIZE] * BLOCK_SIZE + j % BLOCK_SIZE;
        uint64_t base = (slot * kv_heads + kvh) * head_dim;
        float s = 0.f;
        for (uint32_t i = 0; i < per_lane; i++) s += qv[i] * to_float(k_pool[base + i * 32 + lane]);
        for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffff, s, o);
        float m_new = fmaxf(m, s);
        float correction = __expf(m - m_new), p = __expf(s - m_new);
        l = l * correction + p;
        for (uint32_t i = 0; i < per_lane; i++)
            acc[i] = acc[i] * correction + p * to_float(v_pool[base + i * 32 + lane]);
        m = m_new;
    }
    if (lane == 0) {
        warp_max[warp] = m;
        warp_sum[warp] = l;
    }
    for (uint32_t i = 0; i < per_lane; i++) warp_acc[warp][i * 32 + lane] = acc[i];
    __syncthreads();
    if (warp != 0) return;
    float m_all = -INFINITY;
    for (int w = 0; w < WARPS; w++) m_all = fmaxf(m_all, warp_max[w]);
    float sum = 0.f, weight[WARPS];
    for (int w = 0; w < WARPS; w++) {
        // A warp that saw no position (len < 4) has m = -inf and adds nothing.
        weight[w] = warp_max[w] == -INFINITY ? 0.f : __expf(warp_max[w] - m_all);
        sum += warp_sum[w] * weight[w];
    }
    T *o = out + ((uint64_t)t * heads + h) * head_dim;
    for (uint32_t i = 0; i < per_lane; i++) {
        float v = 0.f;
        for (int w = 0; w < WARPS; w++) v += warp_acc[w][i * 32 + lane] * weight[w];
        o[i * 32 + lane] = from_float<T>(v / sum);
    }
}

#define INSTANTIATE(T, SUFFIX)                                                                 \
    extern "C" __global__ void write_kv_##SUFFIX(T *pool, const T *src, const uint32_t *plan,  \
                                                 uint32_t tokens, uint32_t kv_heads,            \
                                                 uint32_t head_dim) {                           \
        write_kv<T>(pool, src, plan, tokens, kv_heads, head_dim);                              \
    }                                                                                          \
    extern "C" __global__ void paged_attention_##SUFFIX(                                       \
        T *out, const T *q, const T *k_pool, const T *v_pool, const uint32_t *plan,            \
        uint32_t tokens, uint32_t heads, uint32_t kv_heads, uint32_t head_dim, float scale) { \
        paged_attention<T>(out, q, k_pool, v_pool, plan, tokens, heads, kv_heads, head_dim,   \
                           scale);                                                             \
    }

INSTANTIATE(float, f32)
INSTANTIATE(__half, f16)
INSTANTIATE(__nv_bfloat16, bf16)

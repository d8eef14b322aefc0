// Paged KV kernels: the step's queries and keys rotated and its keys and values written
// into blocks, then attention of every new token of every sequence: two launches per layer.
//
// Layout (transformer::paged): a layer's pool holds `blocks * BLOCK_SIZE` slots; slot s,
// KV head h, dimension d is element `(s * kv_heads + h) * head_dim + d`. A sequence's
// position p lives in slot `table[p / BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE`.
// The step's plan (transformer::paged::StepPlan), one u32 array:
//   [slots: T][row_table: T][row_len: T][tables...]
// Token t's keys go to slot slots[t]; it attends over row_len[t] positions of the sequence
// whose block list starts at tables[row_table[t]].
#include <stdint.h>

#include "convert.cuh"

#define BLOCK_SIZE 16
#define WARPS 4
#define MAX_DIMS_PER_LANE 8


// One launch per layer before attention: from the step's fused projection `qkv`
// [T, row] (per token: heads query heads, then kv_heads keys, then kv_heads values, head_dim
// each), rotates queries and keys by their position's cos/sin ([T, rot / 2], f32) and
// writes queries to `q_out` [T, heads, head_dim] and keys and values to their slots.
// NeoX rotation pairs (i, i + rot/2), interleaved pairs (2i, 2i + 1); dimensions past `rot`
// pass through. Grid: (T, heads + kv_heads); block: head_dim / 2 threads, one pair each.
template <typename T>
__device__ void rope_write(T *q_out, T *pool, const T *qkv, const float *cos, const float *sin,
                           const uint32_t *plan, uint64_t values_offset, uint32_t row,
                           uint32_t heads, uint32_t kv_heads, uint32_t head_dim, uint32_t rot,
                           uint32_t interleaved) {
    uint32_t t = blockIdx.x, h = blockIdx.y, i = threadIdx.x;
    if (i >= head_dim / 2) return;
    const T *x = qkv + (uint64_t)t * row + h * head_dim;
    uint32_t a, b;  // the pair's two dimensions
    if (interleaved || i >= rot / 2) {
        a = 2 * i;
        b = 2 * i + 1;
    } else {
        a = i;
        b = i + rot / 2;
    }
    float xa = to_float(x[a]), xb = to_float(x[b]), ya = xa, yb = xb;
    if (i < rot / 2) {
        float c = cos[(uint64_t)t * (rot / 2) + i], s = sin[(uint64_t)t * (rot / 2) + i];
        ya = xa * c - xb * s;
        yb = xa * s + xb * c;
    }
    T *dst;
    if (h < heads) {
        dst = q_out + ((uint64_t)t * heads + h) * head_dim;
    } else {
        uint32_t kvh = h - heads;
        uint64_t slot = plan[t];
        dst = pool + (slot * kv_heads + kvh) * head_dim;
        // The values: no rotation, same slot, `values_offset` further (the pool's second half).
        const T *v = qkv + (uint64_t)t * row + (heads + kv_heads + kvh) * head_dim;
        T *vdst = dst + values_offset;
        vdst[a] = v[a];
        vdst[b] = v[b];
    }
    dst[a] = from_float<T>(ya);
    dst[b] = from_float<T>(yb);
}

// q [T, heads, head_dim] -> out [T, heads * head_dim]. Grid: (T, heads); block: 4 warps.
// Each warp takes every 4th position with an online softmax, lanes holding head_dim / 32
// dimensions; the warps are merged in a fixed order at the end. A warp loads the keys of
// UNROLL of its positions at once (memory latency, not arithmetic, bounds this loop) but
// folds them into its softmax one by one in position order. The loop a (token, head) runs
// depends only on its own sequence, never on what else shares the step, so results do not
// depend on batching or on how a prompt was chunked.
#define UNROLL 4
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
    const T *qh = q + ((uint64_t)t * heads + h) * head_dim;
    for (uint32_t i = 0; i < per_lane; i++) {
        qv[i] = to_float(qh[i * 32 + lane]) * scale;
        acc[i] = 0.f;
    }
    float m = -INFINITY, l = 0.f;
    for (uint32_t j0 = warp; j0 < len; j0 += WARPS * UNROLL) {
        float s[UNROLL];
        uint64_t base[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            uint32_t j = j0 + u * WARPS;
            s[u] = 0.f;
            base[u] = 0;
            if (j < len) {
                uint64_t slot = (uint64_t)table[j / BLOCK_SIZE] * BLOCK_SIZE + j % BLOCK_SIZE;
                base[u] = (slot * kv_heads + kvh) * head_dim;
                for (uint32_t i = 0; i < per_lane; i++)
                    s[u] += qv[i] * to_float(k_pool[base[u] + i * 32 + lane]);
            }
        }
#pragma unroll
        for (int u = 0; u < UNROLL; u++)
            for (int o = 16; o > 0; o /= 2) s[u] += __shfl_xor_sync(0xffffffff, s[u], o);
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            if (j0 + u * WARPS >= len) break;
            float m_new = fmaxf(m, s[u]);
            float correction = __expf(m - m_new), p = __expf(s[u] - m_new);
            l = l * correction + p;
            for (uint32_t i = 0; i < per_lane; i++)
                acc[i] = acc[i] * correction + p * to_float(v_pool[base[u] + i * 32 + lane]);
            m = m_new;
        }
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
    extern "C" __global__ void rope_write_##SUFFIX(                                            \
        T *q_out, T *pool, const T *qkv, const float *cos, const float *sin,                   \
        const uint32_t *plan, uint64_t values_offset, uint32_t row, uint32_t heads,            \
        uint32_t kv_heads, uint32_t head_dim, uint32_t rot, uint32_t interleaved) {            \
        rope_write<T>(q_out, pool, qkv, cos, sin, plan, values_offset, row, heads, kv_heads,   \
                      head_dim, rot, interleaved);                                             \
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

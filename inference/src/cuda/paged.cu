// Paged KV kernels: the step's queries and keys rotated and its keys and values written
// into blocks, then attention of every new token of every sequence: two launches per layer.
//
// Layout (transformer::paged): a layer's pool holds `blocks * BLOCK_SIZE` slots; slot s,
// KV head h, dimension d is element `(s * kv_heads + h) * head_dim + d`. A sequence's
// position p lives in slot `table[p / BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE`.
// The step's plan (transformer::paged::StepPlan), one u32 array:
//   [slots: T][row_table: T][row_len: T][tile_first: tiles + 1][tables...]
// Token t's keys go to slot slots[t]; it attends over row_len[t] positions of the sequence
// whose block list starts at plan[row_table[t]]; attention tile i is tokens
// tile_first[i]..tile_first[i + 1], all of one sequence.
#include <stdint.h>

#include "convert.cuh"

#define BLOCK_SIZE 16
#define WARPS 4


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

// Eight consecutive elements as f32 (16 bytes of f16/bf16, 32 of f32; `p` aligned to them).
__device__ __forceinline__ void load8(const float *p, float *out) {
    float4 a = *(const float4 *)p, b = *(const float4 *)(p + 4);
    out[0] = a.x; out[1] = a.y; out[2] = a.z; out[3] = a.w;
    out[4] = b.x; out[5] = b.y; out[6] = b.z; out[7] = b.w;
}
template <typename T>
__device__ __forceinline__ void load8(const T *p, float *out) {
    uint4 raw = *(const uint4 *)p;
    const T *e = (const T *)&raw;
#pragma unroll
    for (int i = 0; i < 8; i++) out[i] = to_float(e[i]);
}

// q [T, heads, head_dim] -> out [T, heads * head_dim]. Grid: (tiles, heads); block: 4 warps.
// A tile is up to ROWS consecutive tokens of one sequence (a prompt's rows; a decoding
// sequence is a tile of one); its queries sit in shared memory and every key and value the
// block loads serves all of them.
//
// A warp takes 32 positions at once, one per lane (warp w the runs starting at 32 w,
// 32 (w + 4), ...): lane j scores its position against each row, summing the dimensions in
// order, so a score needs no exchange between lanes. Per row and run, an online softmax:
// the run's maximum, the rescale, each position's weight; then the values position by
// position in order, each lane accumulating its own dimensions (lane + 32 i). The four warps'
// partial results merge in warp order. Each row's arithmetic depends only on its own
// sequence, never on the tile it is in or on what else shares the step, so results do not
// depend on batching or on how a prompt was chunked; every product and sum is an explicit
// round-to-nearest intrinsic so no instantiation (ROWS = 1 or more) contracts or reorders
// one differently (they agree bit for bit: `gpu --parts` checks it).
#define RUN 32
template <typename T, int PER_LANE, int ROWS>
__device__ void paged_attention(T *out, const T *q, const T *k_pool, const T *v_pool,
                                const uint32_t *plan, uint32_t tokens, uint32_t heads,
                                uint32_t kv_heads, float scale) {
    constexpr int HEAD_DIM = PER_LANE * 32;
    __shared__ __align__(16) float qs[ROWS][HEAD_DIM];
    __shared__ float part_max[WARPS][ROWS], part_sum[WARPS][ROWS];
    __shared__ float part_acc[WARPS][ROWS][HEAD_DIM];
    uint32_t h = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    uint32_t kvh = h / (heads / kv_heads);
    const uint32_t *tile_first = plan + 3 * tokens;
    uint32_t first = tile_first[blockIdx.x];
    uint32_t rows = tile_first[blockIdx.x + 1] - first;
    const uint32_t *table = plan + plan[tokens + first];
    const uint32_t *row_len = plan + 2 * tokens + first;

    for (uint32_t e = threadIdx.x; e < ROWS * HEAD_DIM; e += blockDim.x) {
        uint32_t r = e / HEAD_DIM, d = e % HEAD_DIM;
        float x = r < rows ? to_float(q[((uint64_t)(first + r) * heads + h) * HEAD_DIM + d]) : 0.f;
        qs[r][d] = __fmul_rn(x, scale);
    }
    __syncthreads();

    float acc[ROWS][PER_LANE], m[ROWS], l[ROWS];
    uint32_t len[ROWS], longest = 0;
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        len[r] = r < rows ? row_len[r] : 0;
        longest = max(longest, len[r]);
        m[r] = -INFINITY;
        l[r] = 0.f;
#pragma unroll
        for (int i = 0; i < PER_LANE; i++) acc[r][i] = 0.f;
    }
    for (uint32_t c0 = warp * RUN; c0 < longest; c0 += WARPS * RUN) {
        uint32_t j = c0 + lane;  // this lane's position
        const T *key = k_pool;
        if (j < longest) {
            uint64_t slot = (uint64_t)table[j / BLOCK_SIZE] * BLOCK_SIZE + j % BLOCK_SIZE;
            key = k_pool + (slot * kv_heads + kvh) * HEAD_DIM;
        }
        float s[ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; r++) s[r] = 0.f;
        for (int d0 = 0; d0 < HEAD_DIM; d0 += 8) {
            float k[8];
            load8(key + d0, k);
#pragma unroll
            for (int r = 0; r < ROWS; r++) {
                float4 qa = *(const float4 *)&qs[r][d0], qb = *(const float4 *)&qs[r][d0 + 4];
                s[r] = __fmaf_rn(qa.x, k[0], s[r]);
                s[r] = __fmaf_rn(qa.y, k[1], s[r]);
                s[r] = __fmaf_rn(qa.z, k[2], s[r]);
                s[r] = __fmaf_rn(qa.w, k[3], s[r]);
                s[r] = __fmaf_rn(qb.x, k[4], s[r]);
                s[r] = __fmaf_rn(qb.y, k[5], s[r]);
                s[r] = __fmaf_rn(qb.z, k[6], s[r]);
                s[r] = __fmaf_rn(qb.w, k[7], s[r]);
            }
        }
        // The run's softmax step per row (the same for every lane: no divergence).
        float p[ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; r++) {
            p[r] = 0.f;
            if (c0 >= len[r]) continue;
            bool valid = j < len[r];
            float run_max = valid ? s[r] : -INFINITY;
            for (int o = 16; o > 0; o /= 2)
                run_max = fmaxf(run_max, __shfl_xor_sync(0xffffffff, run_max, o));
            float m_new = fmaxf(m[r], run_max);
            float correction = __expf(__fsub_rn(m[r], m_new));
            p[r] = valid ? __expf(__fsub_rn(s[r], m_new)) : 0.f;
            float run_sum = p[r];
            for (int o = 16; o > 0; o /= 2)
                run_sum = __fadd_rn(run_sum, __shfl_xor_sync(0xffffffff, run_sum, o));
            l[r] = __fmaf_rn(l[r], correction, run_sum);
#pragma unroll
            for (int i = 0; i < PER_LANE; i++) acc[r][i] = __fmul_rn(acc[r][i], correction);
            m[r] = m_new;
        }
        // The values, position by position in order.
        uint32_t run = min((uint32_t)RUN, longest - c0);
#pragma unroll 4
        for (uint32_t jj = 0; jj < run; jj++) {
            uint32_t pos = c0 + jj;
            uint64_t slot = (uint64_t)table[pos / BLOCK_SIZE] * BLOCK_SIZE + pos % BLOCK_SIZE;
            const T *value = v_pool + (slot * kv_heads + kvh) * HEAD_DIM;
            float v[PER_LANE];
#pragma unroll
            for (int i = 0; i < PER_LANE; i++) v[i] = to_float(value[i * 32 + lane]);
#pragma unroll
            for (int r = 0; r < ROWS; r++) {
                float weight = __shfl_sync(0xffffffff, p[r], jj);
                if (pos >= len[r]) continue;
#pragma unroll
                for (int i = 0; i < PER_LANE; i++) acc[r][i] = __fmaf_rn(weight, v[i], acc[r][i]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        if (lane == 0) {
            part_max[warp][r] = m[r];
            part_sum[warp][r] = l[r];
        }
#pragma unroll
        for (int i = 0; i < PER_LANE; i++) part_acc[warp][r][i * 32 + lane] = acc[r][i];
    }
    __syncthreads();
    // Warp w merges rows w, w + 4, ...
    for (uint32_t r = warp; r < rows; r += WARPS) {
        float m_all = -INFINITY;
        for (int w = 0; w < WARPS; w++) m_all = fmaxf(m_all, part_max[w][r]);
        float sum = 0.f, weight[WARPS];
        for (int w = 0; w < WARPS; w++) {
            // A warp that saw no position (len <= 32 w) has m = -inf and adds nothing.
            weight[w] = part_max[w][r] == -INFINITY ? 0.f : __expf(__fsub_rn(part_max[w][r], m_all));
            sum = __fmaf_rn(part_sum[w][r], weight[w], sum);
        }
        T *o = out + ((uint64_t)(first + r) * heads + h) * HEAD_DIM;
#pragma unroll
        for (int i = 0; i < PER_LANE; i++) {
            float x = 0.f;
            for (int w = 0; w < WARPS; w++) x = __fmaf_rn(part_acc[w][r][i * 32 + lane], weight[w], x);
            o[i * 32 + lane] = from_float<T>(__fdiv_rn(x, sum));
        }
    }
}

// Kernels are named by element type, head size and rows per tile:
// paged_attention_bf16_d64_r16. Rows per tile follow transformer::paged::tile_rows.
#define ATTENTION(T, SUFFIX, DIM, ROWS)                                                        \
    extern "C" __global__ void paged_attention_##SUFFIX##_d##DIM##_r##ROWS(                    \
        T *out, const T *q, const T *k_pool, const T *v_pool, const uint32_t *plan,            \
        uint32_t tokens, uint32_t heads, uint32_t kv_heads, float scale) {                     \
        paged_attention<T, DIM / 32, ROWS>(out, q, k_pool, v_pool, plan, tokens, heads,        \
                                           kv_heads, scale);                                   \
    }

#define INSTANTIATE(T, SUFFIX)                                                                 \
    extern "C" __global__ void rope_write_##SUFFIX(                                            \
        T *q_out, T *pool, const T *qkv, const float *cos, const float *sin,                   \
        const uint32_t *plan, uint64_t values_offset, uint32_t row, uint32_t heads,            \
        uint32_t kv_heads, uint32_t head_dim, uint32_t rot, uint32_t interleaved) {            \
        rope_write<T>(q_out, pool, qkv, cos, sin, plan, values_offset, row, heads, kv_heads,   \
                      head_dim, rot, interleaved);                                             \
    }                                                                                          \
    ATTENTION(T, SUFFIX, 32, 1)                                                                \
    ATTENTION(T, SUFFIX, 32, 16)                                                               \
    ATTENTION(T, SUFFIX, 64, 1)                                                                \
    ATTENTION(T, SUFFIX, 64, 16)                                                               \
    ATTENTION(T, SUFFIX, 96, 1)                                                                \
    ATTENTION(T, SUFFIX, 96, 8)                                                                \
    ATTENTION(T, SUFFIX, 128, 1)                                                               \
    ATTENTION(T, SUFFIX, 128, 8)                                                               \
    ATTENTION(T, SUFFIX, 256, 1)                                                               \
    ATTENTION(T, SUFFIX, 256, 4)

INSTANTIATE(float, f32)
INSTANTIATE(__half, f16)
INSTANTIATE(__nv_bfloat16, bf16)

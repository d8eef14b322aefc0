// y = x W^T for f16/bf16 on tensor cores, with one order of summing per output element that
// does not depend on how many rows x has, so a token's projection comes out the same bits
// alone or among thousands. (cuBLAS picks its kernel, and with it how the sum is split, by
// shape: on an H100 a row of the 4864 -> 896 projection differs between 48- and 64-row
// calls and between almost any two counts above 64; see BENCHMARKS.md.)
//
// The order: the sum over `in` is cut into chunks of CHUNK; within a chunk, 16 at a time in
// order on the tensor cores from zero; the chunks' results are added in chunk order in f32.
// Small steps take one chunk per block and sum the chunks in a second launch
// (`sum_chunks`), for parallelism; large steps let each block walk every chunk and keep the
// running sum itself. Both add the same numbers in the same order.
//
// Tile: a block of 4 warps computes 64 rows x 64 outputs, each warp 32 x 32 as 2 x 2
// fragments of 16 x 16; x and W are staged 32 columns at a time in shared memory.
//
// W comes dense (f16/bf16 rows) or as GGUF blocks (quant.cuh): a weight loader puts 8
// elements of a row in the tile either way, and the tensor cores see the same numbers. So
// blocks multiply to exactly the bits of their dequantized bf16 matrix (`gpu --quant`).
#include <mma.h>
#include <stdint.h>

#include "convert.cuh"
#include "quant.cuh"

using namespace nvcuda;

#define TILE 64
#define STEP 32
#define PAD 8
#define CHUNK 256

// grid: (ceil(m / 64), ceil(n / 64), chunk groups); block 128 threads. Chunk group z walks
// chunks [z * per_block, min(chunks, (z + 1) * per_block)): per_block is 1 or all of them.
// With one group the result goes to `out` (T); otherwise group z's f32 result goes to
// `partial + z * m * n`.
// Dense rows of W: 8 elements as they are.
template <typename T>
struct DenseRows {
    const T *w;
    uint32_t k;
    __device__ __forceinline__ uint4 load8(uint32_t row, uint32_t col) const {
        return *(const uint4 *)(w + (uint64_t)row * k + col);
    }
};

// Rows of GGUF blocks (format Q): 8 elements dequantized as the CPU does (quant.cuh), then
// rounded to T.
template <typename T, typename Q>
struct BlockRows {
    const uint8_t *w;
    uint64_t row_bytes;
    __device__ __forceinline__ uint4 load8(uint32_t row, uint32_t col) const {
        float v[8];
        Q::dequantize8(w + row * row_bytes, col, v);
        uint4 packed;
        T *e = (T *)&packed;
#pragma unroll
        for (int i = 0; i < 8; i++) e[i] = from_float<T>(v[i]);
        return packed;
    }
};

template <typename T, typename W>
__device__ void gemm_xwt(T *out, float *partial, const T *x, W w, uint32_t m,
                         uint32_t n, uint32_t k, uint32_t per_block) {
    __shared__ __align__(32) T xs[TILE][STEP + PAD];
    __shared__ __align__(32) T ws[TILE][STEP + PAD];
    __shared__ __align__(32) float cs[TILE][TILE + 4];
    uint32_t row0 = blockIdx.x * TILE, col0 = blockIdx.y * TILE;
    uint32_t warp = threadIdx.x / 32, wm = warp / 2, wn = warp % 2;
    uint32_t chunks = (k + CHUNK - 1) / CHUNK;
    uint32_t z0 = blockIdx.z * per_block, z1 = min(chunks, z0 + per_block);
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> sum[2][2], part[2][2];
    for (uint32_t z = z0; z < z1; z++) {
#pragma unroll
        for (int i = 0; i < 2; i++)
#pragma unroll
            for (int j = 0; j < 2; j++) wmma::fill_fragment(part[i][j], 0.f);
        uint32_t k_end = min(k, (z + 1) * CHUNK);
        for (uint32_t k0 = z * CHUNK; k0 < k_end; k0 += STEP) {
            // 64 x 32 elements of each, 8 at a time (k is a multiple of 8): 2 per thread.
            for (uint32_t c = threadIdx.x; c < TILE * STEP / 8; c += blockDim.x) {
                uint32_t r = c / (STEP / 8), kk = (c % (STEP / 8)) * 8;
                uint4 vx = make_uint4(0, 0, 0, 0), vw = make_uint4(0, 0, 0, 0);
                if (row0 + r < m && k0 + kk < k_end)
                    vx = *(const uint4 *)(x + (uint64_t)(row0 + r) * k + k0 + kk);
                if (col0 + r < n && k0 + kk < k_end) vw = w.load8(col0 + r, k0 + kk);
                *(uint4 *)&xs[r][kk] = vx;
                *(uint4 *)&ws[r][kk] = vw;
            }
            __syncthreads();
#pragma unroll
            for (int kk = 0; kk < STEP; kk += 16) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a[2];
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b[2];
#pragma unroll
                for (int i = 0; i < 2; i++) {
                    wmma::load_matrix_sync(a[i], &xs[wm * 32 + i * 16][kk], STEP + PAD);
                    wmma::load_matrix_sync(b[i], &ws[wn * 32 + i * 16][kk], STEP + PAD);
                }
#pragma unroll
                for (int i = 0; i < 2; i++)
#pragma unroll
                    for (int j = 0; j < 2; j++) wmma::mma_sync(part[i][j], a[i], b[j], part[i][j]);
            }
            __syncthreads();
        }
        // The running sum: the first chunk's result as it is, then each next one added.
#pragma unroll
        for (int i = 0; i < 2; i++)
#pragma unroll
            for (int j = 0; j < 2; j++)
                for (int e = 0; e < sum[i][j].num_elements; e++)
                    sum[i][j].x[e] = z == z0 ? part[i][j].x[e] : __fadd_rn(sum[i][j].x[e], part[i][j].x[e]);
    }
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++)
            wmma::store_matrix_sync(&cs[wm * 32 + i * 16][wn * 32 + j * 16], sum[i][j], TILE + 4,
                                    wmma::mem_row_major);
    __syncthreads();
    for (uint32_t c = threadIdx.x; c < TILE * TILE; c += blockDim.x) {
        uint32_t r = c / TILE, col = c % TILE;
        if (row0 + r >= m || col0 + col >= n) continue;
        uint64_t at = (uint64_t)(row0 + r) * n + col0 + col;
        if (gridDim.z == 1)
            out[at] = from_float<T>(cs[r][col]);
        else
            partial[(uint64_t)blockIdx.z * m * n + at] = cs[r][col];
    }
}

// Steps of at most 16 rows (decoding): the same sums, laid out for streaming W. A block's 4
// warps share one chunk of x (16 rows); each warp takes 16 outputs and loads its whole
// 16 x CHUNK slice of W at once (16 independent 16-byte pieces per lane, where the tile
// kernel above loads 2 and waits, 8 times), then runs the chunk's mma steps in the same
// order as gemm_xwt: from zero, 16 columns of k at a time, two per STEP of 32 up to the
// chunk's end. Each output element is its own dot product in the mma, so its bits are
// gemm_xwt's whatever rows and outputs surround it (`gpu --blocks` checks every row count
// against a 1,000-row call). Grid: (ceil(n / 64), chunks); one chunk gives `out` (T),
// several give chunk z's f32 result at `partial + z * m * n`, added by sum_chunks.
#define NARROW_ROWS 16
#define NARROW_WARPS 4
template <typename T, typename W>
__device__ void gemm_xwt_narrow(T *out, float *partial, const T *x, W w, uint32_t m,
                                uint32_t n, uint32_t k) {
    __shared__ __align__(32) T xs[NARROW_ROWS][CHUNK + PAD];
    __shared__ __align__(32) T ws[NARROW_WARPS][16][CHUNK + PAD];
    __shared__ __align__(32) float cs[NARROW_WARPS][16][16 + 4];
    uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    uint32_t k0 = blockIdx.y * CHUNK, k_end = min(k, k0 + CHUNK);
    uint32_t col0 = (blockIdx.x * NARROW_WARPS + warp) * 16;
    for (uint32_t c = threadIdx.x; c < NARROW_ROWS * CHUNK / 8; c += blockDim.x) {
        uint32_t r = c / (CHUNK / 8), kk = (c % (CHUNK / 8)) * 8;
        uint4 vx = make_uint4(0, 0, 0, 0);
        if (r < m && k0 + kk < k_end) vx = *(const uint4 *)(x + (uint64_t)r * k + k0 + kk);
        *(uint4 *)&xs[r][kk] = vx;
    }
    // Lane j loads columns 8 j .. 8 j + 8 of each of the warp's 16 rows.
#pragma unroll
    for (uint32_t r = 0; r < 16; r++) {
        uint32_t kk = lane * 8;
        uint4 vw = make_uint4(0, 0, 0, 0);
        if (col0 + r < n && k0 + kk < k_end) vw = w.load8(col0 + r, k0 + kk);
        *(uint4 *)&ws[warp][r][kk] = vw;
    }
    __syncthreads();
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> part;
    wmma::fill_fragment(part, 0.f);
    for (uint32_t s = 0; s < k_end - k0; s += STEP) {
#pragma unroll
        for (int kk = 0; kk < STEP; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b;
            wmma::load_matrix_sync(a, &xs[0][s + kk], CHUNK + PAD);
            wmma::load_matrix_sync(b, &ws[warp][0][s + kk], CHUNK + PAD);
            wmma::mma_sync(part, a, b, part);
        }
    }
    wmma::store_matrix_sync(&cs[warp][0][0], part, 16 + 4, wmma::mem_row_major);
    __syncwarp();
    for (uint32_t e = lane; e < 16 * 16; e += 32) {
        uint32_t r = e / 16, col = e % 16;
        if (r >= m || col0 + col >= n) continue;
        uint64_t at = (uint64_t)r * n + col0 + col;
        if (gridDim.y == 1)
            out[at] = from_float<T>(cs[warp][r][col]);
        else
            partial[(uint64_t)blockIdx.y * m * n + at] = cs[warp][r][col];
    }
}

// out[i] = the groups' partial sums added in group order (one chunk per group).
template <typename T>
__device__ void sum_chunks(T *out, const float *partial, uint64_t mn, uint32_t groups) {
    uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= mn) return;
    float s = partial[i];
    for (uint32_t z = 1; z < groups; z++) s = __fadd_rn(s, partial[z * mn + i]);
    out[i] = from_float<T>(s);
}

#define INSTANTIATE(T, SUFFIX)                                                                 \
    extern "C" __global__ void gemm_xwt_##SUFFIX(T *out, float *partial, const T *x,           \
                                                 const T *w, uint32_t m, uint32_t n,           \
                                                 uint32_t k, uint32_t per_block) {             \
        gemm_xwt<T>(out, partial, x, DenseRows<T>{w, k}, m, n, k, per_block);                  \
    }                                                                                          \
    extern "C" __global__ void gemm_xwt_narrow_##SUFFIX(T *out, float *partial, const T *x,    \
                                                        const T *w, uint32_t m, uint32_t n,    \
                                                        uint32_t k) {                          \
        gemm_xwt_narrow<T>(out, partial, x, DenseRows<T>{w, k}, m, n, k);                      \
    }                                                                                          \
    extern "C" __global__ void sum_chunks_##SUFFIX(T *out, const float *partial, uint64_t mn,  \
                                                   uint32_t groups) {                          \
        sum_chunks<T>(out, partial, mn, groups);                                               \
    }

INSTANTIATE(__half, f16)
INSTANTIATE(__nv_bfloat16, bf16)

// x [m, k] bf16 times W as GGUF blocks, `row_bytes` per row of W: gemm_q_bf16_q4k, ...
// Rows `ids` of such a W dequantized to bf16 (embedding lookups): rows_bf16_q4k, ...; grid:
// one block per id. All of W dequantized to bf16 (for the tile kernel on dense rows, at
// many rows per step): dequantize_bf16_q4k, ...; grid: one block per row of W. Blocks of
// THREADS_ROWS threads, 8 columns each at a time.
#define THREADS_ROWS 128
#define BLOCKS(Q, NAME)                                                                        \
    extern "C" __global__ void gemm_q_bf16_##NAME(                                             \
        __nv_bfloat16 *out, float *partial, const __nv_bfloat16 *x, const uint8_t *w,          \
        uint64_t row_bytes, uint32_t m, uint32_t n, uint32_t k, uint32_t per_block) {          \
        gemm_xwt<__nv_bfloat16>(out, partial, x, BlockRows<__nv_bfloat16, Q>{w, row_bytes}, m, \
                                n, k, per_block);                                              \
    }                                                                                          \
    extern "C" __global__ void gemm_q_narrow_bf16_##NAME(                                      \
        __nv_bfloat16 *out, float *partial, const __nv_bfloat16 *x, const uint8_t *w,          \
        uint64_t row_bytes, uint32_t m, uint32_t n, uint32_t k) {                              \
        gemm_xwt_narrow<__nv_bfloat16>(out, partial, x,                                        \
                                       BlockRows<__nv_bfloat16, Q>{w, row_bytes}, m, n, k);    \
    }                                                                                          \
    extern "C" __global__ void rows_bf16_##NAME(__nv_bfloat16 *out, const uint8_t *w,          \
                                                const uint32_t *ids, uint64_t row_bytes,       \
                                                uint32_t k) {                                  \
        BlockRows<__nv_bfloat16, Q> rows{w, row_bytes};                                        \
        for (uint32_t col = threadIdx.x * 8; col < k; col += THREADS_ROWS * 8)                 \
            *(uint4 *)(out + (uint64_t)blockIdx.x * k + col) = rows.load8(ids[blockIdx.x], col); \
    }                                                                                          \
    extern "C" __global__ void dequantize_bf16_##NAME(__nv_bfloat16 *out, const uint8_t *w,    \
                                                      uint64_t row_bytes, uint32_t k) {        \
        BlockRows<__nv_bfloat16, Q> rows{w, row_bytes};                                        \
        for (uint32_t col = threadIdx.x * 8; col < k; col += THREADS_ROWS * 8)                 \
            *(uint4 *)(out + (uint64_t)blockIdx.x * k + col) = rows.load8(blockIdx.x, col);    \
    }

BLOCKS(Q4_0, q4_0)
BLOCKS(Q4_1, q4_1)
BLOCKS(Q5_0, q5_0)
BLOCKS(Q5_1, q5_1)
BLOCKS(Q8_0, q8_0)
BLOCKS(Q4K, q4k)
BLOCKS(Q5K, q5k)
BLOCKS(Q6K, q6k)

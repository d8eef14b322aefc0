// quant.cuh's block formats on the host, for inference/tests/blocks_reference.rs: the same
// source the GPU kernels compile, with the CUDA intrinsics it uses as plain C++ (products and
// sums rounded one at a time: built with -ffp-contract=off).
//
// dequantize FORMAT K IN OUT: IN holds rows of K values as FORMAT blocks; OUT gets them as
// f32, 8 values at a time as the kernels read them, twice: from a copy of IN at an 8-byte
// boundary, then from one 2 bytes past it (the GPU finds a row's fields at any even
// address).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#define FLEET_HOST_REFERENCE
#define __device__
#define __forceinline__ inline

typedef unsigned short half_bits;
static inline half_bits __ushort_as_half(unsigned short x) { return x; }
// IEEE binary16 to binary32, exactly.
static inline float __half2float(half_bits h) {
    unsigned sign = h >> 15, exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF;
    float value;
    if (exponent == 0) value = std::ldexp((float)mantissa, -24);
    else if (exponent == 31) value = mantissa ? NAN : INFINITY;
    else value = std::ldexp((float)(mantissa | 0x400), (int)exponent - 25);
    return sign ? -value : value;
}
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }


#include "../../src/cuda/quant.cuh"

template <typename Q>
static int run(unsigned k, const std::vector<uint8_t> &in, FILE *out) {
    if (k % Q::VALUES != 0 || k % 8 != 0) return 2;
    size_t row_bytes = (size_t)k / Q::VALUES * Q::BYTES;
    if (in.size() % row_bytes != 0) return 2;
    std::vector<uint64_t> storage(in.size() / 8 + 2);
    for (size_t shift : {0, 2}) {
        uint8_t *data = (uint8_t *)storage.data() + shift;
        memcpy(data, in.data(), in.size());
        for (size_t r = 0; r < in.size() / row_bytes; r++) {
            for (unsigned col = 0; col < k; col += 8) {
                float v[8];
                Q::dequantize8(data + r * row_bytes, col, v);
                if (fwrite(v, sizeof(float), 8, out) != 8) return 1;
            }
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: dequantize FORMAT K IN OUT\n");
        return 2;
    }
    unsigned k = (unsigned)strtoul(argv[2], nullptr, 10);
    FILE *f = fopen(argv[3], "rb");
    if (!f) return 1;
    std::vector<uint8_t> in;
    uint8_t buf[65536];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, f)) > 0) in.insert(in.end(), buf, buf + got);
    fclose(f);
    FILE *out = fopen(argv[4], "wb");
    if (!out) return 1;
    const char *format = argv[1];
    int rc = 2;
    if (!strcmp(format, "q4_0")) rc = run<Q4_0>(k, in, out);
    else if (!strcmp(format, "q4_1")) rc = run<Q4_1>(k, in, out);
    else if (!strcmp(format, "q5_0")) rc = run<Q5_0>(k, in, out);
    else if (!strcmp(format, "q5_1")) rc = run<Q5_1>(k, in, out);
    else if (!strcmp(format, "q8_0")) rc = run<Q8_0>(k, in, out);
    else if (!strcmp(format, "q4k")) rc = run<Q4K>(k, in, out);
    else if (!strcmp(format, "q5k")) rc = run<Q5K>(k, in, out);
    else if (!strcmp(format, "q6k")) rc = run<Q6K>(k, in, out);
    if (fclose(out) != 0) return 1;
    return rc;
}

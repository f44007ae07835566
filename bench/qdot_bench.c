/*
 * qdot_bench.c — speed of the quantized mat-vec kernels (Sources/LoRAKitKernelsC/qdot.c) on their own,
 * weights streamed from memory as in decode (not a test; figures for BENCHMARKS.md).
 *
 *   clang -O3 -mavx2 -mfma -mf16c -ISources/LoRAKitKernelsC/include bench/qdot_bench.c \
 *      Sources/LoRAKitKernelsC/qdot.c -o /tmp/qdot_bench -lm
 *   /tmp/qdot_bench TYPE ROWS IN NX [REPEATS [PATH]]
 *
 * TYPE 0 = q8_0, 1 = q4_0, 2 = q4_1; a weight of ROWS × IN; NX activation rows (1: lk_qdot_rows, the
 * decode kernel; 2–8: lk_qdot_rows_x16, a batch step), int16 activations (the library's default); PATH as
 * LORAKIT_QDOT (0 auto, 1 scalar, 2 avx2, 3 avxvnni, 4 avx512vnni). Enough copies of the weight to fill
 * 256 MB are cycled through, so every call reads its weight from memory (HOT=1 in the environment: one
 * copy, read from cache). Prints the best of REPEATS passes: ms per product, GB/s of weights, GMAC/s.
 * To compare with an older kernel, compile that commit's qdot.c and qdot_x86.h the same way.
 */
#include "lk_qdot.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* f16 bits of a positive normal float (truncated mantissa; enough for random scales). */
static uint16_t half_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)(((((u >> 23) & 255) - 127 + 15) << 10) | ((u >> 13) & 1023));
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s TYPE ROWS IN NX [REPEATS [PATH]]\n", argv[0]);
        return 2;
    }
    const int type = atoi(argv[1]), nx = atoi(argv[4]);
    const int64_t rows = atoll(argv[2]), in = atoll(argv[3]);
    const int reps = argc > 5 ? atoi(argv[5]) : 20, path = argc > 6 ? atoi(argv[6]) : 0;
    if (type < 0 || type > 2 || rows < 1 || in < 32 || in % 32 || nx < 1 || nx > 8 || reps < 1) {
        fprintf(stderr, "qdot_bench: bad arguments\n");
        return 2;
    }
    const size_t bb = type == 0 ? 34 : (type == 1 ? 18 : 20);
    const int64_t nb = in / 32;
    const size_t rs = bb * (size_t)nb, bytes = rs * (size_t)rows;
    const int copies = getenv("HOT") ? 1 : (int)(256e6 / (double)bytes) + 1;
    uint8_t *w = aligned_alloc(64, (bytes * copies + 63) / 64 * 64);
    float *x = malloc(sizeof(float) * (size_t)in * 8), *y = malloc(sizeof(float) * (size_t)rows * 8);
    int8_t *xq = aligned_alloc(64, (size_t)in * 4 + 4096);
    float *xf = aligned_alloc(64, (size_t)nb * 16 + 4096), *xd = aligned_alloc(64, (size_t)in * 4 * 2 + 4096);
    float *xs = aligned_alloc(64, (size_t)in * 4 + 4096);
    int16_t *xi = aligned_alloc(64, (size_t)in * 8 * 4 + 4096);
    if (!w || !x || !y || !xq || !xf || !xd || !xs || !xi) { fprintf(stderr, "qdot_bench: out of memory\n"); return 1; }
    srand(1);
    for (size_t i = 0; i < bytes * copies; i++) w[i] = (uint8_t)rand();
    for (int64_t r = 0; r < rows * copies; r++) {
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *p = w + r * rs + b * bb;
            uint16_t d = half_bits(0.01f + (float)(rand() % 100) * 1e-4f), m = half_bits(0.02f);
            memcpy(p, &d, 2);
            if (type == 2) memcpy(p + 2, &m, 2);
        }
    }
    for (int64_t i = 0; i < in * 8; i++) x[i] = (float)rand() / (float)RAND_MAX - 0.5f;
    double best = 1e30;
    for (int rep = 0; rep < reps; rep++) {
        const double t0 = now();
        for (int c = 0; c < copies; c++) {
            const uint8_t *wc = w + (size_t)c * bytes;
            if (nx == 1) {
                lk_quantize_x8(path, 1, x, nb, xq, xf);
                lk_qdot_rows(path, 1, type, wc, rs, rows, nb, xq, xf, y);
            } else {
                lk_quantize_x16(path, 1, x, in, nx, nb, xi, xd, xs);
                lk_qdot_rows_x16(path, type, wc, rs, rows, nb, xi, xd, xs, nx, y, rows);
            }
        }
        const double t = (now() - t0) / copies;
        if (t < best) best = t;
    }
    printf("%s %lld×%lld, %d x row(s), path %s%s: %.3f ms  %.2f GB/s  %.1f GMAC/s  (y[0] = %g)\n",
           type == 0 ? "q8_0" : (type == 1 ? "q4_0" : "q4_1"), (long long)rows, (long long)in, nx,
           lk_qdot_path_name(path), getenv("HOT") ? " (hot)" : "", best * 1e3, (double)bytes / best / 1e9,
           (double)rows * (double)in * nx / best / 1e9, y[0]);
    return 0;
}

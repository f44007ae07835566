/* Integer dot products of ggml-quantized rows with int16 activations. See include/lk_qdot.h. */
#include "lk_qdot.h"
#include <math.h>
#include <string.h>
#if defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
#include <immintrin.h>
#define LK_X86 1
#endif

static inline float half_to_float(uint16_t h) {
#if LK_X86
    return _cvtsh_ss(h);
#else
    __fp16 v;
    memcpy(&v, &h, 2);
    return (float)v;
#endif
}

void lk_quantize_x16(const float *x, int64_t n_blocks, int16_t *xq, float *dx, float *xs) {
    for (int64_t b = 0; b < n_blocks; b++) {
        const float *p = x + 32 * b;
        float amax = 0.0f, sum = 0.0f;
        for (int i = 0; i < 32; i++) {
            float a = fabsf(p[i]);
            amax = a > amax ? a : amax;
            sum += p[i];
        }
        float d = amax / 32767.0f;
        float id = d > 0.0f ? 1.0f / d : 0.0f;
        for (int i = 0; i < 32; i++) {
            float v = nearbyintf(p[i] * id);
            v = v > 32767.0f ? 32767.0f : (v < -32767.0f ? -32767.0f : v);
            xq[32 * b + i] = (int16_t)v;
        }
        dx[b] = d;
        xs[b] = sum;
    }
}

/* Block layouts (ggml-common.h): q8_0 {f16 d; int8 qs[32]} 34 B; q4_0 {f16 d; u8 qs[16]} 18 B;
 * q4_1 {f16 d; f16 m; u8 qs[16]} 20 B. Nibbles: low = values 0..15, high = values 16..31. */

#if LK_X86
/* Sum of the 8 int32 lanes of madd(w16 lo, x lo) + madd(w16 hi, x hi), as 8 floats. */
static inline __m256 dot32(__m256i wlo, __m256i whi, const int16_t *x) {
    __m256i xlo = _mm256_loadu_si256((const __m256i *)x);
    __m256i xhi = _mm256_loadu_si256((const __m256i *)(x + 16));
    __m256i p = _mm256_add_epi32(_mm256_madd_epi16(wlo, xlo), _mm256_madd_epi16(whi, xhi));
    return _mm256_cvtepi32_ps(p);
}

static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline void unpack_q4(const uint8_t *qs, __m256i *lo, __m256i *hi, int sub8) {
    __m128i bytes = _mm_loadu_si128((const __m128i *)qs);
    __m128i m = _mm_set1_epi8(0x0F);
    __m128i l = _mm_and_si128(bytes, m);
    __m128i h = _mm_and_si128(_mm_srli_epi16(bytes, 4), m);
    if (sub8) {
        __m128i e = _mm_set1_epi8(8);
        *lo = _mm256_cvtepi8_epi16(_mm_sub_epi8(l, e));
        *hi = _mm256_cvtepi8_epi16(_mm_sub_epi8(h, e));
    } else {
        *lo = _mm256_cvtepu8_epi16(l);
        *hi = _mm256_cvtepu8_epi16(h);
    }
}

static inline void unpack_q8(const int8_t *qs, __m256i *lo, __m256i *hi) {
    *lo = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)qs));
    *hi = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(qs + 16)));
}

/* One block of one row: acc += f32(Σ q·xq)·(d·dx); bias += m·xs. */
#define BLOCK_STEP(TYPE, blk, b, acc, bias)                                                              \
    do {                                                                                                \
        __m256i wl, wh;                                                                                 \
        float d = half_to_float(*(const uint16_t *)(blk));                                              \
        if ((TYPE) == 0) {                                                                              \
            unpack_q8((const int8_t *)(blk) + 2, &wl, &wh);                                             \
        } else if ((TYPE) == 1) {                                                                       \
            unpack_q4((const uint8_t *)(blk) + 2, &wl, &wh, 1);                                         \
        } else {                                                                                        \
            unpack_q4((const uint8_t *)(blk) + 4, &wl, &wh, 0);                                         \
            bias += half_to_float(*(const uint16_t *)((const uint8_t *)(blk) + 2)) * xs[b];              \
        }                                                                                               \
        acc = _mm256_fmadd_ps(dot32(wl, wh, xq + 32 * (b)), _mm256_set1_ps(d * dx[b]), acc);            \
    } while (0)

static inline __attribute__((always_inline)) void rows_x86(int32_t type, const uint8_t *w, size_t rs, int64_t n_rows, int64_t nb, size_t bb,
                            const int16_t *xq, const float *dx, const float *xs, float *y) {
    int64_t r = 0;
    for (; r + 4 <= n_rows; r += 4) {
        const uint8_t *p0 = w + r * rs, *p1 = p0 + rs, *p2 = p1 + rs, *p3 = p2 + rs;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        float b0 = 0, b1 = 0, b2 = 0, b3 = 0;
        for (int64_t b = 0; b < nb; b++) {
            BLOCK_STEP(type, p0 + b * bb, b, a0, b0);
            BLOCK_STEP(type, p1 + b * bb, b, a1, b1);
            BLOCK_STEP(type, p2 + b * bb, b, a2, b2);
            BLOCK_STEP(type, p3 + b * bb, b, a3, b3);
        }
        y[r] = hsum256(a0) + b0;
        y[r + 1] = hsum256(a1) + b1;
        y[r + 2] = hsum256(a2) + b2;
        y[r + 3] = hsum256(a3) + b3;
    }
    for (; r < n_rows; r++) {
        const uint8_t *p = w + r * rs;
        __m256 a = _mm256_setzero_ps();
        float bias = 0;
        for (int64_t b = 0; b < nb; b++) BLOCK_STEP(type, p + b * bb, b, a, bias);
        y[r] = hsum256(a) + bias;
    }
}
#else
/* Portable version: the same arithmetic per row (integer block sums, then f32 accumulation in the same
 * lane pattern is not reproduced; results equal the x86 version up to f32 summation order). */
static void rows_portable(int32_t type, const uint8_t *w, size_t rs, int64_t n_rows, int64_t nb, size_t bb,
                          const int16_t *xq, const float *dx, const float *xs, float *y) {
    for (int64_t r = 0; r < n_rows; r++) {
        const uint8_t *p = w + r * rs;
        float acc = 0, bias = 0;
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = p + b * bb;
            const int16_t *x = xq + 32 * b;
            float d = half_to_float((uint16_t)(blk[0] | (blk[1] << 8)));
            int32_t s = 0;
            if (type == 0) {
                const int8_t *q = (const int8_t *)(blk + 2);
                for (int i = 0; i < 32; i++) s += (int32_t)q[i] * x[i];
            } else {
                const uint8_t *q = blk + (type == 1 ? 2 : 4);
                int off = type == 1 ? 8 : 0;
                for (int i = 0; i < 16; i++) {
                    s += ((int32_t)(q[i] & 15) - off) * x[i];
                    s += ((int32_t)(q[i] >> 4) - off) * x[i + 16];
                }
                if (type == 2) bias += half_to_float((uint16_t)(blk[2] | (blk[3] << 8))) * xs[b];
            }
            acc += (float)s * (d * dx[b]);
        }
        y[r] = acc + bias;
    }
}
#endif

void lk_qdot_rows(int32_t type, const void *w, size_t row_stride, int64_t n_rows, int64_t n_blocks,
                  const int16_t *xq, const float *dx, const float *xs, float *y) {
    size_t bb = type == 0 ? 34 : (type == 1 ? 18 : 20);
#if LK_X86
    /* Constant `type` per call site so each variant is compiled without the type branches. */
    switch (type) {
    case 0: rows_x86(0, (const uint8_t *)w, row_stride, n_rows, n_blocks, bb, xq, dx, xs, y); break;
    case 1: rows_x86(1, (const uint8_t *)w, row_stride, n_rows, n_blocks, bb, xq, dx, xs, y); break;
    default: rows_x86(2, (const uint8_t *)w, row_stride, n_rows, n_blocks, bb, xq, dx, xs, y); break;
    }
#else
    rows_portable(type, (const uint8_t *)w, row_stride, n_rows, n_blocks, bb, xq, dx, xs, y);
#endif
}

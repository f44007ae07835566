/* Integer dot products of ggml-quantized rows with int8 activations. See include/lk_qdot.h for the
 * activation format and the exact arithmetic every path performs. */
#include "lk_qdot.h"
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The paths must round exactly as written (no fused a·b + c unless spelled fmaf). */
#pragma STDC FP_CONTRACT OFF

#if (defined(__x86_64__) || defined(_M_X64)) && defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
#include <immintrin.h>
#include <cpuid.h>
#define LK_X86 1
#endif

/* Block layouts (ggml-common.h): q8_0 {f16 d; int8 qs[32]} 34 B; q4_0 {f16 d; u8 qs[16]} 18 B;
 * q4_1 {f16 d; f16 m; u8 qs[16]} 20 B. Nibbles: low = values 0..15, high = values 16..31. */

static inline float half_to_float(uint16_t h) {
#if LK_X86
    return _cvtsh_ss(h);
#elif defined(__aarch64__) || defined(__arm__)
    __fp16 v;
    memcpy(&v, &h, 2);
    return (float)v;
#else
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 31, m = h & 1023, bits;
    if (e == 31) bits = sign | 0x7F800000u | (m << 13);
    else if (e) bits = sign | ((e + 112) << 23) | (m << 13);
    else if (!m) bits = sign;
    else {  /* subnormal half: normalize */
        e = 113;
        while (!(m & 1024)) { m <<= 1; e--; }
        bits = sign | (e << 23) | ((m & 1023) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
#endif
}

/* MARK: - Path selection */

#if LK_X86
static uint64_t xcr0(void) {
    uint32_t a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return 0;  /* OSXSAVE */
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static int cpu_has(int32_t path) {
    uint32_t a, b, c, d;
    uint64_t x = xcr0();
    int ymm = (x & 0x6) == 0x6, zmm = (x & 0xE6) == 0xE6;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    int fma = (c >> 12) & 1, f16c = (c >> 29) & 1;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    int avx2 = (b >> 5) & 1, avx512f = (b >> 16) & 1, avx512vl = (b >> 31) & 1, avx512vnni = (c >> 11) & 1;
    int base = ymm && avx2 && fma && f16c;
    switch (path) {
    case LK_QDOT_AVX2: return base;
    case LK_QDOT_AVXVNNI:
        if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return 0;
        return base && ((a >> 4) & 1);
    case LK_QDOT_AVX512VNNI: return base && zmm && avx512f && avx512vl && avx512vnni;
    default: return 0;
    }
}
#endif

#if LK_X86
static int cpu_has_avx512bw(void) {
    uint32_t a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (b >> 30) & 1;
}
#endif

int32_t lk_qdot_path_supported(int32_t path) {
    if (path == LK_QDOT_AUTO || path == LK_QDOT_SCALAR) return 1;
#if LK_X86
    static int known[5] = {-1, -1, -1, -1, -1};  /* benign race: every thread computes the same value */
    if (path < 0 || path > 4) return 0;
    int v = __atomic_load_n(&known[path], __ATOMIC_RELAXED);
    if (v < 0) {
        v = cpu_has(path);
        __atomic_store_n(&known[path], v, __ATOMIC_RELAXED);
    }
    return v;
#else
    return 0;
#endif
}

const char *lk_qdot_path_name(int32_t path) {
    switch (path) {
    case LK_QDOT_AUTO: return "auto";
    case LK_QDOT_SCALAR: return "scalar";
    case LK_QDOT_AVX2: return "avx2";
    case LK_QDOT_AVXVNNI: return "avxvnni";
    case LK_QDOT_AVX512VNNI: return "avx512vnni";
    default: return "unknown";
    }
}

int32_t lk_qdot_default_path(void) {
    static int32_t chosen = -1;
    int32_t v = __atomic_load_n(&chosen, __ATOMIC_RELAXED);
    if (v >= 0) return v;
    v = LK_QDOT_SCALAR;
    const int32_t order[] = {LK_QDOT_AVXVNNI, LK_QDOT_AVX512VNNI, LK_QDOT_AVX2};
    for (int i = 0; i < 3; i++) {
        if (lk_qdot_path_supported(order[i])) { v = order[i]; break; }
    }
    const char *env = getenv("LORAKIT_QDOT");
    if (env) {
        for (int32_t p = LK_QDOT_SCALAR; p <= LK_QDOT_AVX512VNNI; p++) {
            if (strcmp(env, lk_qdot_path_name(p)) == 0 && lk_qdot_path_supported(p)) v = p;
        }
    }
    __atomic_store_n(&chosen, v, __ATOMIC_RELAXED);
    return v;
}

static inline int32_t resolve(int32_t path) {
    if (path == LK_QDOT_AUTO) return lk_qdot_default_path();
    return lk_qdot_path_supported(path) ? path : LK_QDOT_SCALAR;
}

/* MARK: - Activation quantization */

/* One 32-value block: q[0..31] (natural order) with |q| ≤ levels, dx = max|x| / levels, xs = dx·Σq. */
static void quantize_block_scalar(const float *x, float levels, int32_t *q, float *dx, float *xs) {
    uint32_t amax_bits = 0;
    for (int i = 0; i < 32; i++) {
        uint32_t u;
        memcpy(&u, x + i, 4);
        u &= 0x7FFFFFFFu;
        amax_bits = u > amax_bits ? u : amax_bits;
    }
    if (amax_bits >= 0x7F800000u) {  /* NaN or ±inf in the block */
        memset(q, 0, 32 * sizeof(int32_t));
        *dx = NAN;
        *xs = NAN;
        return;
    }
    float amax;
    memcpy(&amax, &amax_bits, 4);
    float d = amax / levels;
    float id = d >= FLT_MIN ? 1.0f / d : 0.0f;
    int32_t sum = 0;
    for (int i = 0; i < 32; i++) {
        q[i] = (int32_t)nearbyintf(x[i] * id);   /* |x·id| ≤ levels (rounded) */
        sum += q[i];
    }
    *dx = d;
    *xs = d * (float)sum;
}

#if LK_X86
/* The same arithmetic as quantize_block_scalar, 8 lanes at a time. */
static void quantize_block_avx2(const float *x, float levels, int32_t *q, float *dx, float *xs) {
    const __m256i absmask = _mm256_set1_epi32(0x7FFFFFFF);
    __m256i v[4];
    for (int k = 0; k < 4; k++) v[k] = _mm256_loadu_si256((const __m256i *)(x + 8 * k));
    __m256i m = _mm256_max_epu32(_mm256_max_epu32(_mm256_and_si256(v[0], absmask), _mm256_and_si256(v[1], absmask)),
                                 _mm256_max_epu32(_mm256_and_si256(v[2], absmask), _mm256_and_si256(v[3], absmask)));
    __m128i h = _mm_max_epu32(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
    h = _mm_max_epu32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(1, 0, 3, 2)));
    h = _mm_max_epu32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(2, 3, 0, 1)));
    uint32_t amax_bits = (uint32_t)_mm_cvtsi128_si32(h);
    if (amax_bits >= 0x7F800000u) {
        memset(q, 0, 32 * sizeof(int32_t));
        *dx = NAN;
        *xs = NAN;
        return;
    }
    float amax;
    memcpy(&amax, &amax_bits, 4);
    float d = amax / levels;
    float id = d >= FLT_MIN ? 1.0f / d : 0.0f;
    const __m256 vid = _mm256_set1_ps(id);
    __m256i s = _mm256_setzero_si256();
    for (int k = 0; k < 4; k++) {
        /* cvtps_epi32 rounds with the current mode (to nearest even), as nearbyintf does. */
        __m256i i = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_castsi256_ps(v[k]), vid));
        _mm256_storeu_si256((__m256i *)(q + 8 * k), i);
        s = _mm256_add_epi32(s, i);
    }
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(1, 0, 3, 2)));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(2, 3, 0, 1)));
    *dx = d;
    *xs = d * (float)_mm_cvtsi128_si32(s4);
}
#endif

/* Store block k (0, 1) of a pair: `plane` gets digit values in the pair order of lk_qdot.h. */
static inline void store_pair_half(int8_t *plane, int k, const int8_t *v32) {
    memcpy(plane + 16 * k, v32, 16);
    memcpy(plane + 32 + 16 * k, v32 + 16, 16);
}

void lk_quantize_x8(int32_t path, int32_t wide, const float *x, int64_t n_blocks, int8_t *xq, float *xf) {
    const float levels = wide ? 16256.0f : 127.0f;
    const int64_t stride = wide ? 128 : 64;
#if LK_X86
    const int vec = resolve(path) != LK_QDOT_SCALAR;
#else
    const int vec = 0;
    (void)path;
#endif
    for (int64_t p = 0; p < (n_blocks + 1) / 2; p++) {
        int8_t *o = xq + stride * p;
        for (int k = 0; k < 2; k++) {
            int64_t b = 2 * p + k;
            int32_t q[32];
            float dx = 0, xs = 0;
            if (b >= n_blocks) memset(q, 0, sizeof q);
#if LK_X86
            else if (vec) quantize_block_avx2(x + 32 * b, levels, q, &dx, &xs);
#endif
            else quantize_block_scalar(x + 32 * b, levels, q, &dx, &xs);
            (void)vec;
            int8_t hi[32], lo[32];
            for (int i = 0; i < 32; i++) {
                /* wide: q = 128·hi + lo with hi in −127..127, lo in 0..127 (|q| ≤ 127·128) */
                hi[i] = (int8_t)(wide ? q[i] >> 7 : q[i]);
                lo[i] = (int8_t)(q[i] & 127);
            }
            store_pair_half(o, k, hi);
            if (wide) store_pair_half(o + 64, k, lo);
            xf[4 * p + 2 * k] = dx;
            xf[4 * p + 2 * k + 1] = xs;
        }
    }
}

/* MARK: - Scalar path (the reference: every other path computes exactly this) */

static void rows_scalar(int32_t wide, int32_t type, const uint8_t *w, size_t rs, int64_t n_rows, int64_t nb,
                        const int8_t *xq, const float *xf, float *y) {
    const size_t bb = type == 0 ? 34 : (type == 1 ? 18 : 20);
    const int64_t stride = wide ? 128 : 64;
    for (int64_t r = 0; r < n_rows; r++) {
        const uint8_t *row = w + r * rs;
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0}, bias[4] = {0, 0, 0, 0};
        for (int64_t p = 0; p < (nb + 1) / 2; p++) {
            /* x values of the pair in the kernels' order: [b 0..15, b+1 0..15, b 16..31, b+1 16..31] */
            const int8_t *hi = xq + stride * p, *lo = hi + 64;
            int32_t xv[64];
            for (int i = 0; i < 64; i++) xv[i] = wide ? 128 * hi[i] + lo[i] : hi[i];
            int32_t lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            float hdr[4] = {0, 0, 0, 0};
            for (int k = 0; k < 2 && 2 * p + k < nb; k++) {
                const uint8_t *blk = row + (size_t)(2 * p + k) * bb;
                int32_t v[32];
                if (type == 0) {
                    for (int i = 0; i < 32; i++) v[i] = (int8_t)blk[2 + i];
                } else {
                    const uint8_t *qs = blk + (type == 2 ? 4 : 2);
                    for (int i = 0; i < 16; i++) {
                        v[i] = qs[i] & 15;
                        v[i + 16] = qs[i] >> 4;
                    }
                }
                /* lane 4k + j: positions 4j..4j+3 of values 0..15 and of values 16..31 */
                for (int j = 0; j < 4; j++) {
                    int32_t s = 0;
                    for (int t = 0; t < 4; t++) {
                        s += v[4 * j + t] * xv[16 * k + 4 * j + t];
                        s += v[16 + 4 * j + t] * xv[32 + 16 * k + 4 * j + t];
                    }
                    lanes[4 * k + j] = s;
                }
                float d = half_to_float((uint16_t)(blk[0] | (blk[1] << 8)));
                hdr[2 * k] = d;
                hdr[2 * k + 1] = type == 2 ? half_to_float((uint16_t)(blk[2] | (blk[3] << 8))) : d;
            }
            float prod[4];
            for (int i = 0; i < 4; i++) prod[i] = hdr[i] * xf[4 * p + i];
            for (int j = 0; j < 8; j++) acc[j] = fmaf((float)lanes[j], prod[j < 4 ? 0 : 2], acc[j]);
            if (type != 0) {
                for (int i = 0; i < 4; i++) bias[i] = bias[i] + prod[i];
            }
        }
        float h[4];
        for (int i = 0; i < 4; i++) h[i] = acc[i] + acc[i + 4];
        float t0 = h[0] + h[2], t1 = h[1] + h[3];
        float s = t0 + t1;
        if (type != 0) {
            float b = bias[1] + bias[3];
            s = type == 1 ? s + -8.0f * b : s + b;
        }
        y[r] = s;
    }
}

/* MARK: - x86 paths */

#if LK_X86
/* Software prefetch distance in bytes (0: none); see rows_t in qdot_x86.h. */
#ifndef LK_PREFETCH
#define LK_PREFETCH 8192
#endif

/* AVX2: u8×s8 pairs to s16 (vpmaddubsw), then pairs to s32 (vpmaddwd with ones). Nibbles: two
 * products ≤ 2·15·128 each, so the two halves can be added in 16 bits first; general u8 ≤ 128 times
 * |s8| ≤ 127: 2·128·127 < 2¹⁵ per vpmaddubsw lane (no saturation), widened separately. */
#define LK_FN(name) name##_avx2
#define LK_TARGET __attribute__((target("avx2,fma,f16c")))
#define LK_DOT_Q4(u0, s0, u1, s1)                                                                     \
    _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(u0, s0), _mm256_maddubs_epi16(u1, s1)),    \
                      _mm256_set1_epi16(1))
#define LK_DOT_US(u0, s0, u1, s1)                                                                     \
    _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(u0, s0), _mm256_set1_epi16(1)),            \
                     _mm256_madd_epi16(_mm256_maddubs_epi16(u1, s1), _mm256_set1_epi16(1)))
#include "qdot_x86.h"
#undef LK_FN
#undef LK_TARGET
#undef LK_DOT_Q4
#undef LK_DOT_US

/* AVX-VNNI: vpdpbusd (u8×s8, four products summed into each s32 lane), VEX-encoded. */
#define LK_FN(name) name##_avxvnni
#define LK_TARGET __attribute__((target("avx2,fma,f16c,avxvnni")))
#define LK_DOT_Q4(u0, s0, u1, s1)                                                                     \
    _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u0, s0), u1, s1)
#define LK_DOT_US(u0, s0, u1, s1) LK_DOT_Q4(u0, s0, u1, s1)
#include "qdot_x86.h"
#undef LK_FN
#undef LK_TARGET
#undef LK_DOT_Q4
#undef LK_DOT_US

/* AVX512-VNNI with AVX512VL: the same instruction EVEX-encoded on 256-bit registers. */
#define LK_FN(name) name##_avx512vnni
#define LK_TARGET __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512vnni")))
#define LK_DOT_Q4(u0, s0, u1, s1)                                                                     \
    _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), u0, s0), u1, s1)
#define LK_DOT_US(u0, s0, u1, s1) LK_DOT_Q4(u0, s0, u1, s1)
#include "qdot_x86.h"
#undef LK_FN
#undef LK_TARGET
#undef LK_DOT_Q4
#undef LK_DOT_US
#endif

void lk_qdot_rows(int32_t path, int32_t wide, int32_t type, const void *w, size_t row_stride, int64_t n_rows,
                  int64_t n_blocks, const int8_t *xq, const float *xf, float *y) {
    const uint8_t *wb = (const uint8_t *)w;
    wide = wide != 0;
    switch (resolve(path)) {
#if LK_X86
    case LK_QDOT_AVX2: rows_avx2(wide, type, wb, row_stride, n_rows, n_blocks, xq, xf, y); return;
    case LK_QDOT_AVXVNNI: rows_avxvnni(wide, type, wb, row_stride, n_rows, n_blocks, xq, xf, y); return;
    case LK_QDOT_AVX512VNNI: rows_avx512vnni(wide, type, wb, row_stride, n_rows, n_blocks, xq, xf, y); return;
#endif
    default: rows_scalar(wide, type, wb, row_stride, n_rows, n_blocks, xq, xf, y); return;
    }
}

/* MARK: - Several x rows at once (AVX512-VNNI on 512-bit registers)
 *
 * Two x rows share a 512-bit register: its low half holds row A's 32 bytes, its high half row B's, and
 * the weights' 32 bytes are broadcast to both halves, so one vpdpbusd makes the 8 lanes of both rows.
 * Each weight block is unpacked once for up to 8 x rows. Per (weight row, x row) the lanes, the scale
 * products, the fma into the accumulators, the bias sums and the final reduction are the operations of
 * qdot_x86.h's `pair`/`finish` (lane-wise the same IEEE operations), so the results are bitwise those of
 * lk_qdot_rows. */
#if LK_X86
#define LK_T512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))

LK_T512 static inline __m512i dup256(__m256i v) { return _mm512_inserti64x4(_mm512_castsi256_si512(v), v, 1); }

LK_T512 static inline __m256i load2_512(const uint8_t *a, const uint8_t *b) {
    __m128i lo = _mm_loadu_si128((const __m128i *)a);
    if (!b) return _mm256_inserti128_si256(_mm256_setzero_si256(), lo, 0);
    return _mm256_inserti128_si256(_mm256_castsi128_si256(lo), _mm_loadu_si128((const __m128i *)b), 1);
}

LK_T512 static inline float finish_256(const int type, __m256 acc, __m128 bias) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    __m128 t = _mm_add_ps(h, _mm_movehl_ps(h, h));
    float s = _mm_cvtss_f32(t) + _mm_cvtss_f32(_mm_shuffle_ps(t, t, 1));
    if (type == 0) return s;
    float b = _mm_cvtss_f32(_mm_shuffle_ps(bias, bias, 1)) + _mm_cvtss_f32(_mm_shuffle_ps(bias, bias, 3));
    return type == 1 ? s + -8.0f * b : s + b;
}

/* xi: npx x-row pairs, each (np + odd) pairs of blocks of S2 = 2·stride bytes: [A.h0 B.h0 A.h1 B.h1]
 * (+ [A.l0 B.l0 A.l1 B.l1] when wide), 32 bytes each; xfi: per x-row pair and block pair 8 floats
 * [A.f(4) B.f(4)]. y[j·ldy + r] for x row j < nx. */
LK_T512 static inline __attribute__((always_inline)) void multi_t(
    const int type, const int wide, const uint8_t *w, size_t rs, int64_t n_rows, int64_t nb, const int8_t *xi,
    const float *xfi, const int npx, int64_t nx, float *y, int64_t ldy) {
    const size_t bb = type == 0 ? 34 : (type == 1 ? 18 : 20);
    const int64_t np = nb / 2, npp = (nb + 1) / 2, s2 = wide ? 256 : 128;
    const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6);
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int64_t r = 0; r < n_rows; r++) {
        const uint8_t *row = w + r * rs;
        __m512 acc[4];
        __m256 bias[4];
        for (int j = 0; j < 4; j++) { acc[j] = _mm512_setzero_ps(); bias[j] = _mm256_setzero_ps(); }
        for (int64_t p = 0; p < npp; p++) {
            const uint8_t *blk = row + (size_t)(2 * p) * bb;
            const int two = p < np;
            const uint8_t *nxt = two ? blk + bb : NULL;
#if LK_PREFETCH > 0
            _mm_prefetch((const char *)(blk + LK_PREFETCH), _MM_HINT_T0);
#endif
            __m512i u0, u1;
            __mmask64 n0 = 0, n1 = 0;
            if (type == 0) {
                __m256i w0 = load2_512(blk + 2, nxt ? nxt + 2 : NULL);
                __m256i w1 = load2_512(blk + 18, nxt ? nxt + 18 : NULL);
                __m512i ww0 = dup256(w0), ww1 = dup256(w1);
                u0 = _mm512_abs_epi8(ww0);
                u1 = _mm512_abs_epi8(ww1);
                n0 = _mm512_movepi8_mask(ww0);
                n1 = _mm512_movepi8_mask(ww1);
            } else {
                const int off = type == 2 ? 4 : 2;
                __m256i v = load2_512(blk + off, nxt ? nxt + off : NULL);
                u0 = dup256(_mm256_and_si256(v, m4));
                u1 = dup256(_mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
            }
            uint32_t h0, h1 = 0;
            memcpy(&h0, blk, 4);
            if (two) memcpy(&h1, nxt, 4);
            __m128i h = _mm_insert_epi32(_mm_cvtsi32_si128((int)h0), (int)h1, 1);
            if (type != 2) h = _mm_shufflelo_epi16(h, _MM_SHUFFLE(2, 2, 0, 0));
            __m128 c = _mm_cvtph_ps(h);
            __m256 c2 = _mm256_insertf128_ps(_mm256_castps128_ps256(c), c, 1);
            for (int j = 0; j < npx; j++) {
                const int8_t *xp = xi + (j * npp + p) * s2;
                __m512i xh0 = _mm512_loadu_si512((const void *)xp), xh1 = _mm512_loadu_si512((const void *)(xp + 64));
                const __m512i zero = _mm512_setzero_si512();
                __m512i isum;
                if (type == 0) {
                    isum = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, u0, _mm512_mask_sub_epi8(xh0, n0, zero, xh0)), u1,
                                               _mm512_mask_sub_epi8(xh1, n1, zero, xh1));
                } else {
                    isum = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, u0, xh0), u1, xh1);
                }
                if (wide) {
                    __m512i xl0 = _mm512_loadu_si512((const void *)(xp + 128)), xl1 = _mm512_loadu_si512((const void *)(xp + 192));
                    __m512i il;
                    if (type == 0) {
                        il = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, u0, _mm512_mask_sub_epi8(xl0, n0, zero, xl0)), u1,
                                                 _mm512_mask_sub_epi8(xl1, n1, zero, xl1));
                    } else {
                        il = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, u0, xl0), u1, xl1);
                    }
                    isum = _mm512_add_epi32(_mm512_slli_epi32(isum, 7), il);
                }
                __m256 pp = _mm256_mul_ps(c2, _mm256_loadu_ps(xfi + (j * npp + p) * 8));
                __m512 sc = _mm512_permutexvar_ps(idx, _mm512_castps256_ps512(pp));
                acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), sc, acc[j]);
                if (type != 0) bias[j] = _mm256_add_ps(bias[j], pp);
            }
        }
        for (int j = 0; j < npx; j++) {
            y[(2 * j) * ldy + r] = finish_256(type, _mm512_castps512_ps256(acc[j]), _mm256_castps256_ps128(bias[j]));
            if (2 * j + 1 < nx)
                y[(2 * j + 1) * ldy + r] = finish_256(type, _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[j]), 1)), _mm256_extractf128_ps(bias[j], 1));
        }
    }
}

/* `type`, `wide` and the number of x-row pairs are constants in each variant, so the loops over the
 * pairs unroll and the accumulators stay in registers. */
#define LK_MULTI_NPX(T, W)                                                                            \
    switch (npx) {                                                                                    \
    case 1: multi_t(T, W, w, rs, n_rows, nb, xi, xfi, 1, nx, y, ldy); break;                          \
    case 2: multi_t(T, W, w, rs, n_rows, nb, xi, xfi, 2, nx, y, ldy); break;                          \
    case 3: multi_t(T, W, w, rs, n_rows, nb, xi, xfi, 3, nx, y, ldy); break;                          \
    default: multi_t(T, W, w, rs, n_rows, nb, xi, xfi, 4, nx, y, ldy); break;                         \
    }
LK_T512 static void multi_512(int32_t wide, int32_t type, const uint8_t *w, size_t rs, int64_t n_rows, int64_t nb,
                              const int8_t *xi, const float *xfi, int64_t nx, float *y, int64_t ldy) {
    const int npx = (int)((nx + 1) / 2);
    switch (type * 2 + wide) {
    case 0: LK_MULTI_NPX(0, 0) break;
    case 1: LK_MULTI_NPX(0, 1) break;
    case 2: LK_MULTI_NPX(1, 0) break;
    case 3: LK_MULTI_NPX(1, 1) break;
    case 4: LK_MULTI_NPX(2, 0) break;
    default: LK_MULTI_NPX(2, 1) break;
    }
}
#undef LK_MULTI_NPX
#endif

int32_t lk_qdot_multi_supported(int32_t path) {
#if LK_X86
    static int known = -1;  /* benign race: every thread computes the same value (cpuid is slow: cached) */
    int v = __atomic_load_n(&known, __ATOMIC_RELAXED);
    if (v < 0) {
        v = lk_qdot_path_supported(LK_QDOT_AVX512VNNI) && cpu_has_avx512bw();
        __atomic_store_n(&known, v, __ATOMIC_RELAXED);
    }
    int32_t p = resolve(path);
    return (p == LK_QDOT_AVXVNNI || p == LK_QDOT_AVX512VNNI) && v;
#else
    (void)path;
    return 0;
#endif
}

void lk_qdot_interleave(int32_t wide, const int8_t *xq, const float *xf, int64_t n_x, int64_t n_blocks, int8_t *xi,
                        float *xfi) {
    const int64_t npp = (n_blocks + 1) / 2, stride = wide ? 128 : 64, npx = (n_x + 1) / 2;
    for (int64_t j = 0; j < npx; j++) {
        const int64_t a = 2 * j, b = 2 * j + 1;
        for (int64_t p = 0; p < npp; p++) {
            int8_t *o = xi + (j * npp + p) * 2 * stride;
            float *of = xfi + (j * npp + p) * 8;
            for (int64_t part = 0; part < stride / 32; part++) {
                memcpy(o + 64 * part, xq + (a * npp + p) * stride + 32 * part, 32);
                if (b < n_x) memcpy(o + 64 * part + 32, xq + (b * npp + p) * stride + 32 * part, 32);
                else memset(o + 64 * part + 32, 0, 32);
            }
            for (int k = 0; k < 4; k++) {
                of[k] = xf[(a * npp + p) * 4 + k];
                of[4 + k] = b < n_x ? xf[(b * npp + p) * 4 + k] : 0.0f;
            }
        }
    }
}

void lk_qdot_rows_multi(int32_t path, int32_t wide, int32_t type, const void *w, size_t row_stride, int64_t n_rows,
                        int64_t n_blocks, const int8_t *xi, const float *xfi, int64_t n_x, float *y, int64_t ldy) {
#if LK_X86
    if (lk_qdot_multi_supported(path) && n_x >= 1 && n_x <= 8) {
        multi_512(wide != 0, type, (const uint8_t *)w, row_stride, n_rows, n_blocks, xi, xfi, n_x, y, ldy);
        return;
    }
#endif
    (void)path; (void)wide; (void)type; (void)w; (void)row_stride; (void)n_rows; (void)n_blocks; (void)xi;
    (void)xfi; (void)n_x; (void)y; (void)ldy;
}

/* MARK: - Several x rows at once, x as int16 ("x16"; AVX2 and AVX512-VNNI)
 *
 * The integers q of a quantized x row (|q| ≤ 16256, the value 128·hi + lo of the wide digits, or the int8
 * value) fit int16, and the weights widen to int16 (nibbles 0..15, q8_0 −128..127): one vpmaddwd /
 * vpdpwssd multiplies 16 pairs, so an int16 x needs no digit split (half the multiplies of two-digit
 * vpdpbusd per x row) and no shift-and-add to combine digits. Viewing 16 weight bytes as 8 int16 words,
 * word m = qs[2m] | qs[2m+1]<<8, four operands come out of shifts and masks:
 *   W0 = positions 2m, W1 = 16 + 2m, W2 = 2m + 1, W3 = 17 + 2m      (q4: nibbles; q8_0: qs and qs+16)
 * and dword lane l of the pair sums of W0..W3 holds positions {4l..4l+3} ∪ {16+4l..16+4l+3}: exactly the
 * lane l of lk_qdot.h. The lane sums are exact integers either way, and the scale products, fma, bias sums
 * and final reduction are the operations of qdot_x86.h's `pair`/`finish`, so the results are bitwise those
 * of lk_qdot_rows.
 *
 * Layout, for n_x ≤ 8 x rows (npx = ⌈n_x/2⌉ row pairs j, npp = ⌈n_blocks/2⌉ block pairs p; row r = 2j + h,
 * block c = 2p + k):
 *   xi[(j·npp + p)·128 + o·32 + h·16 + k·8 + m], o = 0..3: q_c[2m], q_c[16+2m], q_c[2m+1], q_c[17+2m]
 *   xd[(j·npp + p)·16 + h·8 + k·4 + 0..3] = dx_c (four copies)
 *   xs[p·16 + 2r + k] = xs_c
 * Missing rows and an odd last block are zeros. */
#if LK_X86
/* quantize_block_avx2's q of one block (the same values) stored as int16 in the x16 operand order: o[0..7]
 * = q[0, 2, .., 14], o[32..39] = q[16, .., 30], o[64..71] = q[1, .., 15], o[96..103] = q[17, .., 31]. */
static void quantize_block_x16_avx2(const float *x, float levels, int16_t *o, float *dx, float *xs) {
    int32_t q[32];
    quantize_block_avx2(x, levels, q, dx, xs);
    /* int16 [q0..3 q8..11 | q4..7 q12..15] → in order → per 128-bit lane evens then odds → [evens | odds] */
    const __m256i eo = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
                                        0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
    for (int half = 0; half < 2; half++) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(q + 16 * half));
        __m256i b = _mm256_loadu_si256((const __m256i *)(q + 16 * half + 8));
        __m256i v = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), _MM_SHUFFLE(3, 1, 2, 0));
        v = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(v, eo), _MM_SHUFFLE(3, 1, 2, 0));
        _mm_storeu_si128((__m128i *)(o + 32 * half), _mm256_castsi256_si128(v));
        _mm_storeu_si128((__m128i *)(o + 64 + 32 * half), _mm256_extracti128_si256(v, 1));
    }
}

/* x rows quantized (as lk_quantize_x8 does) straight into the x16 layout. */
static void quantize_x16_row(int vec, float levels, const float *x, int64_t nb, int64_t npp, int64_t j, int h,
                             int r, int16_t *xi, float *xd, float *xs) {
    for (int64_t c = 0; c < 2 * npp; c++) {
        const int64_t p = c / 2;
        const int k = (int)(c & 1);
        int32_t q[32];
        float dx = 0, s = 0;
        int16_t *o = xi + (j * npp + p) * 128 + h * 16 + k * 8;
        if (c < nb && vec) {
            quantize_block_x16_avx2(x + 32 * c, levels, o, &dx, &s);
        } else {
            if (c >= nb) memset(q, 0, sizeof q);
            else quantize_block_scalar(x + 32 * c, levels, q, &dx, &s);
            for (int m = 0; m < 8; m++) {
                o[m] = (int16_t)q[2 * m];
                o[32 + m] = (int16_t)q[16 + 2 * m];
                o[64 + m] = (int16_t)q[2 * m + 1];
                o[96 + m] = (int16_t)q[17 + 2 * m];
            }
        }
        float *d = xd + (j * npp + p) * 16 + h * 8 + k * 4;
        d[0] = d[1] = d[2] = d[3] = dx;
        xs[p * 16 + 2 * r + k] = s;
    }
}
#endif

void lk_quantize_x16(int32_t path, int32_t wide, const float *x, int64_t ldx, int64_t n_x, int64_t n_blocks,
                     int16_t *xi, float *xd, float *xs) {
#if LK_X86
    const float levels = wide ? 16256.0f : 127.0f;
    const int vec = resolve(path) != LK_QDOT_SCALAR;
    const int64_t npp = (n_blocks + 1) / 2, npx = (n_x + 1) / 2;
    memset(xs, 0, (size_t)npp * 16 * sizeof(float));
    for (int64_t r = 0; r < 2 * npx; r++) {
        const int64_t j = r / 2;
        const int h = (int)(r & 1);
        if (r < n_x) {
            quantize_x16_row(vec, levels, x + r * ldx, n_blocks, npp, j, h, (int)r, xi, xd, xs);
        } else {
            for (int64_t p = 0; p < npp; p++) {
                for (int o = 0; o < 4; o++) memset(xi + (j * npp + p) * 128 + o * 32 + h * 16, 0, 16 * sizeof(int16_t));
                memset(xd + (j * npp + p) * 16 + h * 8, 0, 8 * sizeof(float));
            }
        }
    }
#else
    (void)path; (void)wide; (void)x; (void)ldx; (void)n_x; (void)n_blocks; (void)xi; (void)xd; (void)xs;
#endif
}

#if LK_X86
#define LK_TX2 __attribute__((target("avx2,fma,f16c")))

/* f32 [d_b, m_b, d_b+1, m_b+1] of a block pair (q4_0, q8_0: m = d; no second block: zeros), exactly the
 * cvtph of qdot_x86.h's `pair`. */
LK_TX2 static inline __attribute__((always_inline)) __m128 x16_scales(const int type, const uint8_t *blk,
                                                                     const uint8_t *nxt) {
    uint32_t h0, h1 = 0;
    memcpy(&h0, blk, 4);
    if (nxt) memcpy(&h1, nxt, 4);
    __m128i h = _mm_insert_epi32(_mm_cvtsi32_si128((int)h0), (int)h1, 1);
    if (type != 2) h = _mm_shufflelo_epi16(h, _MM_SHUFFLE(2, 2, 0, 0));
    return _mm_cvtph_ps(h);
}

LK_TX2 static inline __m256i x16_load2(const uint8_t *a, const uint8_t *b) {
    __m128i lo = _mm_loadu_si128((const __m128i *)a);
    if (!b) return _mm256_inserti128_si256(_mm256_setzero_si256(), lo, 0);
    return _mm256_inserti128_si256(_mm256_castsi128_si256(lo), _mm_loadu_si128((const __m128i *)b), 1);
}

/* The final reduction of qdot_x86.h's `finish`, with bias1 = b1 and bias3 = b3. */
LK_TX2 static inline float x16_finish(const int type, __m256 acc, float b1, float b3) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    __m128 t = _mm_add_ps(h, _mm_movehl_ps(h, h));
    float s = _mm_cvtss_f32(t) + _mm_cvtss_f32(_mm_shuffle_ps(t, t, 1));
    if (type == 0) return s;
    float b = b1 + b3;
    return type == 1 ? s + -8.0f * b : s + b;
}

/* AVX2: one x row per 256-bit register, x rows 4g ..< 4g + nr (nr ≤ 4) against every weight row (each
 * weight row's blocks unpacked once per group; 16 registers: 4 weight operands, 4 accumulators). */
LK_TX2 static inline __attribute__((always_inline)) void x16_avx2_t(
    const int type, const int nr, const uint8_t *w, size_t rs, int64_t n_rows, int64_t nb, const int16_t *xi,
    const float *xd, const float *xs, int64_t g, float *y, int64_t ldy) {
    const size_t bb = type == 0 ? 34 : (type == 1 ? 18 : 20);
    const int64_t np = nb / 2, npp = (nb + 1) / 2;
    const __m256i dix = _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2), mix = _mm256_setr_epi32(1, 3, 1, 3, 1, 3, 1, 3);
    for (int64_t r = 0; r < n_rows; r++) {
        const uint8_t *row = w + r * rs;
        __m256 acc[4], bias = _mm256_setzero_ps();
        for (int i = 0; i < 4; i++) acc[i] = _mm256_setzero_ps();
        for (int64_t p = 0; p < npp; p++) {
            const uint8_t *blk = row + (size_t)(2 * p) * bb, *nxt = p < np ? blk + bb : NULL;
#if LK_PREFETCH > 0
            _mm_prefetch((const char *)(blk + LK_PREFETCH), _MM_HINT_T0);
#endif
            __m256i W0, W1, W2, W3;
            if (type == 0) {
                __m256i a = x16_load2(blk + 2, nxt ? nxt + 2 : NULL), c = x16_load2(blk + 18, nxt ? nxt + 18 : NULL);
                W0 = _mm256_srai_epi16(_mm256_slli_epi16(a, 8), 8);
                W2 = _mm256_srai_epi16(a, 8);
                W1 = _mm256_srai_epi16(_mm256_slli_epi16(c, 8), 8);
                W3 = _mm256_srai_epi16(c, 8);
            } else {
                const int off = type == 2 ? 4 : 2;
                __m256i v = x16_load2(blk + off, nxt ? nxt + off : NULL);
                const __m256i m4 = _mm256_set1_epi16(0x000F);
                W0 = _mm256_and_si256(v, m4);
                W1 = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                W2 = _mm256_and_si256(_mm256_srli_epi16(v, 8), m4);
                W3 = _mm256_srli_epi16(v, 12);
            }
            __m256 c8 = _mm256_castps128_ps256(x16_scales(type, blk, nxt));
            __m256 D = _mm256_permutevar8x32_ps(c8, dix);
            for (int i = 0; i < nr; i++) {
                const int64_t rr = 4 * g + i, j = rr / 2, h = rr & 1;
                const int16_t *xp = xi + (j * npp + p) * 128 + h * 16;
                __m256i s0 = _mm256_madd_epi16(W0, _mm256_loadu_si256((const __m256i *)xp));
                __m256i s1 = _mm256_madd_epi16(W1, _mm256_loadu_si256((const __m256i *)(xp + 32)));
                __m256i s2 = _mm256_madd_epi16(W2, _mm256_loadu_si256((const __m256i *)(xp + 64)));
                __m256i s3 = _mm256_madd_epi16(W3, _mm256_loadu_si256((const __m256i *)(xp + 96)));
                __m256i isum = _mm256_add_epi32(_mm256_add_epi32(s0, s1), _mm256_add_epi32(s2, s3));
                __m256 sc = _mm256_mul_ps(D, _mm256_loadu_ps(xd + (j * npp + p) * 16 + h * 8));
                acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), sc, acc[i]);
            }
            if (type != 0) {
                __m256 M = _mm256_permutevar8x32_ps(c8, mix);
                bias = _mm256_add_ps(bias, _mm256_mul_ps(M, _mm256_loadu_ps(xs + p * 16 + g * 8)));
            }
        }
        float bl[8];
        _mm256_storeu_ps(bl, bias);
        for (int i = 0; i < nr; i++) y[(4 * g + i) * ldy + r] = x16_finish(type, acc[i], bl[2 * i], bl[2 * i + 1]);
    }
}

#define LK_X16_NR(T)                                                                                  \
    switch (nr) {                                                                                     \
    case 1: x16_avx2_t(T, 1, w, rs, n_rows, nb, xi, xd, xs, g, y, ldy); break;                        \
    case 2: x16_avx2_t(T, 2, w, rs, n_rows, nb, xi, xd, xs, g, y, ldy); break;                        \
    case 3: x16_avx2_t(T, 3, w, rs, n_rows, nb, xi, xd, xs, g, y, ldy); break;                        \
    default: x16_avx2_t(T, 4, w, rs, n_rows, nb, xi, xd, xs, g, y, ldy); break;                       \
    }
LK_TX2 static void x16_avx2_group(int32_t type, int nr, const uint8_t *w, size_t rs, int64_t n_rows, int64_t nb,
                                  const int16_t *xi, const float *xd, const float *xs, int64_t g, float *y, int64_t ldy) {
    switch (type) {
    case 0: LK_X16_NR(0) break;
    case 1: LK_X16_NR(1) break;
    default: LK_X16_NR(2) break;
    }
}
#undef LK_X16_NR

LK_TX2 static void x16_avx2(int32_t type, const uint8_t *w, size_t rs, int64_t n_rows, int64_t nb, const int16_t *xi,
                            const float *xd, const float *xs, int64_t nx, float *y, int64_t ldy) {
    /* Weight rows in chunks of 16, so a chunk stays in L1 while each group of x rows passes over it. */
    for (int64_t r0 = 0; r0 < n_rows; r0 += 16) {
        const int64_t nrow = n_rows - r0 < 16 ? n_rows - r0 : 16;
        for (int64_t g = 0; 4 * g < nx; g++) {
            const int nr = (int)(nx - 4 * g < 4 ? nx - 4 * g : 4);
            x16_avx2_group(type, nr, w + r0 * rs, rs, nrow, nb, xi, xd, xs, g, y + r0, ldy);
        }
    }
}

/* acc + vpdpwssd(a, b), kept as one instruction: the compiler otherwise splits it into vpmaddwd + vpaddd
 * (its generic tuning), which costs a third more vector operations in this kernel. */
LK_T512 static inline __m512i x16_dpwssd(__m512i acc, __m512i a, __m512i b) {
    __asm__("vpdpwssd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
    return acc;
}

/* AVX512-VNNI: two x rows per 512-bit register (row 2j in the low half, 2j+1 in the high half, the weight
 * operands broadcast to both), all row pairs and two weight rows per pass, so each x load serves two weight
 * rows; vpdpwssd accumulates the four products. */
LK_T512 static inline __attribute__((always_inline)) void x16_512_rows(
    const int type, const int npx, const int nw, const uint8_t *row0, size_t rs, int64_t nb, const int16_t *xi,
    const float *xd, const float *xs, int64_t nx, float *y, int64_t ldy) {
    const size_t bb = type == 0 ? 34 : (type == 1 ? 18 : 20);
    const int64_t np = nb / 2, npp = (nb + 1) / 2;
    const __m512i dix = _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 0, 0, 0, 0, 2, 2, 2, 2);
    const __m512i mix = _mm512_setr_epi32(1, 3, 1, 3, 1, 3, 1, 3, 1, 3, 1, 3, 1, 3, 1, 3);
    __m512 acc[2][4], bias[2];
    for (int i = 0; i < 2; i++) {
        bias[i] = _mm512_setzero_ps();
        for (int j = 0; j < 4; j++) acc[i][j] = _mm512_setzero_ps();
    }
    for (int64_t p = 0; p < npp; p++) {
        __m512i W[2][4];
        __m512 D[2], M[2];
        for (int i = 0; i < nw; i++) {
            const uint8_t *blk = row0 + i * rs + (size_t)(2 * p) * bb, *nxt = p < np ? blk + bb : NULL;
#if LK_PREFETCH > 0
            _mm_prefetch((const char *)(blk + LK_PREFETCH), _MM_HINT_T0);
#endif
            if (type == 0) {
                __m512i a = _mm512_broadcast_i64x4(load2_512(blk + 2, nxt ? nxt + 2 : NULL));
                __m512i c = _mm512_broadcast_i64x4(load2_512(blk + 18, nxt ? nxt + 18 : NULL));
                W[i][0] = _mm512_srai_epi16(_mm512_slli_epi16(a, 8), 8);
                W[i][2] = _mm512_srai_epi16(a, 8);
                W[i][1] = _mm512_srai_epi16(_mm512_slli_epi16(c, 8), 8);
                W[i][3] = _mm512_srai_epi16(c, 8);
            } else {
                const int off = type == 2 ? 4 : 2;
                __m512i v = _mm512_broadcast_i64x4(load2_512(blk + off, nxt ? nxt + off : NULL));
                const __m512i m4 = _mm512_set1_epi16(0x000F);
                W[i][0] = _mm512_and_si512(v, m4);
                W[i][1] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
                W[i][2] = _mm512_and_si512(_mm512_srli_epi16(v, 8), m4);
                W[i][3] = _mm512_srli_epi16(v, 12);
            }
            __m512 c16 = _mm512_castps128_ps512(x16_scales(type, blk, nxt));
            D[i] = _mm512_permutexvar_ps(dix, c16);
            M[i] = _mm512_permutexvar_ps(mix, c16);
        }
        for (int j = 0; j < npx; j++) {
            const int16_t *xp = xi + (j * npp + p) * 128;
            __m512i X0 = _mm512_loadu_si512((const void *)xp), X1 = _mm512_loadu_si512((const void *)(xp + 32));
            __m512i X2 = _mm512_loadu_si512((const void *)(xp + 64)), X3 = _mm512_loadu_si512((const void *)(xp + 96));
            __m512 dd = _mm512_loadu_ps(xd + (j * npp + p) * 16);
            for (int i = 0; i < nw; i++) {
                __m512i isum = _mm512_madd_epi16(W[i][0], X0);
                isum = x16_dpwssd(isum, W[i][1], X1);
                isum = x16_dpwssd(isum, W[i][2], X2);
                isum = x16_dpwssd(isum, W[i][3], X3);
                acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(D[i], dd), acc[i][j]);
            }
        }
        if (type != 0) {
            __m512 s16 = _mm512_loadu_ps(xs + p * 16);
            for (int i = 0; i < nw; i++) bias[i] = _mm512_add_ps(bias[i], _mm512_mul_ps(M[i], s16));
        }
    }
    for (int i = 0; i < nw; i++) {
        float bl[16];
        _mm512_storeu_ps(bl, bias[i]);
        for (int j = 0; j < npx; j++) {
            y[(2 * j) * ldy + i] = x16_finish(type, _mm512_castps512_ps256(acc[i][j]), bl[4 * j], bl[4 * j + 1]);
            if (2 * j + 1 < nx)
                y[(2 * j + 1) * ldy + i] = x16_finish(type, _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[i][j]), 1)),
                                                      bl[4 * j + 2], bl[4 * j + 3]);
        }
    }
}

LK_T512 static inline __attribute__((always_inline)) void x16_512_t(
    const int type, const int npx, const uint8_t *w, size_t rs, int64_t n_rows, int64_t nb, const int16_t *xi,
    const float *xd, const float *xs, int64_t nx, float *y, int64_t ldy) {
    int64_t r = 0;
    for (; r + 2 <= n_rows; r += 2) x16_512_rows(type, npx, 2, w + r * rs, rs, nb, xi, xd, xs, nx, y + r, ldy);
    if (r < n_rows) x16_512_rows(type, npx, 1, w + r * rs, rs, nb, xi, xd, xs, nx, y + r, ldy);
}

#define LK_X16_NPX(T)                                                                                 \
    switch (npx) {                                                                                    \
    case 1: x16_512_t(T, 1, w, rs, n_rows, nb, xi, xd, xs, nx, y, ldy); break;                        \
    case 2: x16_512_t(T, 2, w, rs, n_rows, nb, xi, xd, xs, nx, y, ldy); break;                        \
    case 3: x16_512_t(T, 3, w, rs, n_rows, nb, xi, xd, xs, nx, y, ldy); break;                        \
    default: x16_512_t(T, 4, w, rs, n_rows, nb, xi, xd, xs, nx, y, ldy); break;                       \
    }
LK_T512 static void x16_512(int32_t type, const uint8_t *w, size_t rs, int64_t n_rows, int64_t nb, const int16_t *xi,
                            const float *xd, const float *xs, int64_t nx, float *y, int64_t ldy) {
    const int npx = (int)((nx + 1) / 2);
    switch (type) {
    case 0: LK_X16_NPX(0) break;
    case 1: LK_X16_NPX(1) break;
    default: LK_X16_NPX(2) break;
    }
}
#undef LK_X16_NPX
#endif

int32_t lk_qdot_x16_supported(int32_t path) {
#if LK_X86
    const int32_t p = resolve(path);
    return p == LK_QDOT_AVX2 || p == LK_QDOT_AVXVNNI || p == LK_QDOT_AVX512VNNI;
#else
    (void)path;
    return 0;
#endif
}

void lk_qdot_rows_x16(int32_t path, int32_t type, const void *w, size_t row_stride, int64_t n_rows, int64_t n_blocks,
                      const int16_t *xi, const float *xd, const float *xs, int64_t n_x, float *y, int64_t ldy) {
#if LK_X86
    if (!lk_qdot_x16_supported(path) || n_x < 1 || n_x > 8) return;
    if (lk_qdot_multi_supported(path)) {
        x16_512(type, (const uint8_t *)w, row_stride, n_rows, n_blocks, xi, xd, xs, n_x, y, ldy);
    } else {
        x16_avx2(type, (const uint8_t *)w, row_stride, n_rows, n_blocks, xi, xd, xs, n_x, y, ldy);
    }
#else
    (void)path; (void)type; (void)w; (void)row_stride; (void)n_rows; (void)n_blocks; (void)xi; (void)xd; (void)xs;
    (void)n_x; (void)y; (void)ldy;
#endif
}

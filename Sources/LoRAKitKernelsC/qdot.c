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
#define LK_PREFETCH 4096
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

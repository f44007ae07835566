/* One x86 path of the quantized dot-product kernels; included by qdot.c once per path with
 *   LK_FN(name)      the path's name for `name` (e.g. name##_avx2)
 *   LK_TARGET        the path's __attribute__((target(...)))
 *   LK_DOT_Q4(u0, s0, u1, s1)  8 int32 lanes: lane j = Σ_k u0[4j+k]·s0[4j+k] + u1[4j+k]·s1[4j+k] for
 *                    u8 u0, u1 ≤ 15 (nibbles) and s8 s0, s1
 *   LK_DOT_US(u0, s0, u1, s1)  the same for any u8 u ≤ 128 and s8 s with |s| ≤ 127
 * The arithmetic is the one described in include/lk_qdot.h; see qdot.c for the scalar version. */

/* 32 bytes: 16 from a, 16 from b (b may be NULL: zeros). */
LK_TARGET static inline __m256i LK_FN(load2)(const uint8_t *a, const uint8_t *b) {
    __m128i lo = _mm_loadu_si128((const __m128i *)a);
    if (!b) return _mm256_inserti128_si256(_mm256_setzero_si256(), lo, 0);
    return _mm256_inserti128_si256(_mm256_castsi128_si256(lo), _mm_loadu_si128((const __m128i *)b), 1);
}

/* Blocks b (at blk) and b+1 (at blk + bb, or none if !two) of one row against one x pair: xh0/xh1 are the
 * x values (int8) or their high digits (wide), xl0/xl1 the low digits (wide only). */
LK_TARGET static inline __attribute__((always_inline)) void LK_FN(pair)(
    const int type, const int wide, const uint8_t *blk, const size_t bb, const int two, __m256i xh0, __m256i xh1,
    __m256i xl0, __m256i xl1, __m128 xf, __m256 *acc, __m128 *bias) {
    const uint8_t *nxt = two ? blk + bb : NULL;
    __m256i isum;
    if (type == 0) {
        /* s8 weights: |w| as u8 and the sign of w moved onto x (vpsignb; w = 0 gives 0). */
        __m256i w0 = LK_FN(load2)(blk + 2, nxt ? nxt + 2 : NULL);
        __m256i w1 = LK_FN(load2)(blk + 18, nxt ? nxt + 18 : NULL);
        __m256i u0 = _mm256_sign_epi8(w0, w0), u1 = _mm256_sign_epi8(w1, w1);
        isum = LK_DOT_US(u0, _mm256_sign_epi8(xh0, w0), u1, _mm256_sign_epi8(xh1, w1));
        if (wide) {
            __m256i il = LK_DOT_US(u0, _mm256_sign_epi8(xl0, w0), u1, _mm256_sign_epi8(xl1, w1));
            isum = _mm256_add_epi32(_mm256_slli_epi32(isum, 7), il);
        }
    } else {
        const int off = type == 2 ? 4 : 2;
        __m256i v = LK_FN(load2)(blk + off, nxt ? nxt + off : NULL);
        const __m256i m4 = _mm256_set1_epi8(0x0F);
        __m256i lo = _mm256_and_si256(v, m4);
        __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
        isum = LK_DOT_Q4(lo, xh0, hi, xh1);
        if (wide) isum = _mm256_add_epi32(_mm256_slli_epi32(isum, 7), LK_DOT_Q4(lo, xl0, hi, xl1));
    }
    /* f16 header words: q4_1 (d, m) per block; q4_0 and q8_0 d, duplicated to (d, d). */
    uint32_t h0, h1 = 0;
    memcpy(&h0, blk, 4);
    if (two) memcpy(&h1, nxt, 4);
    __m128i h = _mm_insert_epi32(_mm_cvtsi32_si128((int)h0), (int)h1, 1);
    if (type != 2) h = _mm_shufflelo_epi16(h, _MM_SHUFFLE(2, 2, 0, 0));
    __m128 p = _mm_mul_ps(_mm_cvtph_ps(h), xf);   /* d·dx, m·xs (or d·xs), d'·dx', m'·xs' */
    __m256 s = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(p), _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2));
    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), s, *acc);
    if (type != 0) *bias = _mm_add_ps(*bias, p);
}

LK_TARGET static inline float LK_FN(finish)(const int type, __m256 acc, __m128 bias) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    __m128 t = _mm_add_ps(h, _mm_movehl_ps(h, h));          /* h0+h2, h1+h3 */
    float s = _mm_cvtss_f32(t) + _mm_cvtss_f32(_mm_shuffle_ps(t, t, 1));
    if (type == 0) return s;
    float b = _mm_cvtss_f32(_mm_shuffle_ps(bias, bias, 1)) + _mm_cvtss_f32(_mm_shuffle_ps(bias, bias, 3));
    return type == 1 ? s + -8.0f * b : s + b;
}

LK_TARGET static inline __attribute__((always_inline)) void LK_FN(rows_t)(
    const int type, const int wide, const uint8_t *w, size_t rs, int64_t n_rows, int64_t nb, const int8_t *xq,
    const float *xf, float *y) {
    const size_t bb = type == 0 ? 34 : (type == 1 ? 18 : 20);
    const int64_t np = nb / 2, stride = wide ? 128 : 64;
    const int odd = (int)(nb & 1);
    const __m256i zero = _mm256_setzero_si256();
    int64_t r = 0;
    for (; r + 4 <= n_rows; r += 4) {
        const uint8_t *p0 = w + r * rs, *p1 = p0 + rs, *p2 = p1 + rs, *p3 = p2 + rs;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        __m128 b0 = _mm_setzero_ps(), b1 = b0, b2 = b0, b3 = b0;
        for (int64_t p = 0; p < np + odd; p++) {
            const int8_t *xp = xq + stride * p;
            __m256i h0 = _mm256_loadu_si256((const __m256i *)xp), h1 = _mm256_loadu_si256((const __m256i *)(xp + 32));
            __m256i l0 = wide ? _mm256_loadu_si256((const __m256i *)(xp + 64)) : zero;
            __m256i l1 = wide ? _mm256_loadu_si256((const __m256i *)(xp + 96)) : zero;
            __m128 f = _mm_loadu_ps(xf + 4 * p);
            size_t o = (size_t)(2 * p) * bb;
#if LK_PREFETCH > 0
            /* Ask for the weights LK_PREFETCH bytes ahead: decode streams the whole model from memory,
             * and the hardware prefetcher alone keeps too few lines in flight. The four rows are one
             * contiguous region read at 8·bb bytes per pass, so the lines ahead are asked for as one
             * linear stream at that rate (a line ahead of each row instead, four short streams, read
             * rows longer than ~512 bytes at a third to a half of the bandwidth: the q8_0 output head,
             * the down projection). */
            const char *pf = (const char *)p0 + LK_PREFETCH + (size_t)p * 8 * bb;
            for (size_t q = 0; q < 8 * bb; q += 64) _mm_prefetch(pf + q, _MM_HINT_T0);
#endif
            if (p < np) {
                LK_FN(pair)(type, wide, p0 + o, bb, 1, h0, h1, l0, l1, f, &a0, &b0);
                LK_FN(pair)(type, wide, p1 + o, bb, 1, h0, h1, l0, l1, f, &a1, &b1);
                LK_FN(pair)(type, wide, p2 + o, bb, 1, h0, h1, l0, l1, f, &a2, &b2);
                LK_FN(pair)(type, wide, p3 + o, bb, 1, h0, h1, l0, l1, f, &a3, &b3);
            } else {
                LK_FN(pair)(type, wide, p0 + o, bb, 0, h0, h1, l0, l1, f, &a0, &b0);
                LK_FN(pair)(type, wide, p1 + o, bb, 0, h0, h1, l0, l1, f, &a1, &b1);
                LK_FN(pair)(type, wide, p2 + o, bb, 0, h0, h1, l0, l1, f, &a2, &b2);
                LK_FN(pair)(type, wide, p3 + o, bb, 0, h0, h1, l0, l1, f, &a3, &b3);
            }
        }
        y[r] = LK_FN(finish)(type, a0, b0);
        y[r + 1] = LK_FN(finish)(type, a1, b1);
        y[r + 2] = LK_FN(finish)(type, a2, b2);
        y[r + 3] = LK_FN(finish)(type, a3, b3);
    }
    for (; r < n_rows; r++) {
        const uint8_t *p0 = w + r * rs;
        __m256 a0 = _mm256_setzero_ps();
        __m128 b0 = _mm_setzero_ps();
        for (int64_t p = 0; p < np + odd; p++) {
            const int8_t *xp = xq + stride * p;
            __m256i h0 = _mm256_loadu_si256((const __m256i *)xp), h1 = _mm256_loadu_si256((const __m256i *)(xp + 32));
            __m256i l0 = wide ? _mm256_loadu_si256((const __m256i *)(xp + 64)) : zero;
            __m256i l1 = wide ? _mm256_loadu_si256((const __m256i *)(xp + 96)) : zero;
            __m128 f = _mm_loadu_ps(xf + 4 * p);
            if (p < np) LK_FN(pair)(type, wide, p0 + (size_t)(2 * p) * bb, bb, 1, h0, h1, l0, l1, f, &a0, &b0);
            else LK_FN(pair)(type, wide, p0 + (size_t)(2 * p) * bb, bb, 0, h0, h1, l0, l1, f, &a0, &b0);
        }
        y[r] = LK_FN(finish)(type, a0, b0);
    }
}

LK_TARGET static void LK_FN(rows)(int32_t wide, int32_t type, const uint8_t *w, size_t rs, int64_t n_rows,
                                  int64_t nb, const int8_t *xq, const float *xf, float *y) {
    /* Constant `type` and `wide` per call so each variant is compiled without their branches. */
    switch (type * 2 + wide) {
    case 0: LK_FN(rows_t)(0, 0, w, rs, n_rows, nb, xq, xf, y); break;
    case 1: LK_FN(rows_t)(0, 1, w, rs, n_rows, nb, xq, xf, y); break;
    case 2: LK_FN(rows_t)(1, 0, w, rs, n_rows, nb, xq, xf, y); break;
    case 3: LK_FN(rows_t)(1, 1, w, rs, n_rows, nb, xq, xf, y); break;
    case 4: LK_FN(rows_t)(2, 0, w, rs, n_rows, nb, xq, xf, y); break;
    default: LK_FN(rows_t)(2, 1, w, rs, n_rows, nb, xq, xf, y); break;
    }
}

/*
 * test_matmul.c — lk_matmul against a naive double-accumulating C reference, f32, both transpose
 * modes, odd and blocking-boundary sizes, 1 and 2 threads (and the two must agree bit for bit: the
 * reduction order does not depend on the thread count), and degenerate sizes.
 *
 * Tolerance: |got - ref| <= 1e-5 * sum_p |x[i,p]·w[p,j]| + 1e-6 (f32 accumulation of K products).
 */
#include "lk_test.h"

typedef struct { int64_t m, k, n; } shape3;

static const shape3 shapes[] = {
    {7, 13, 5}, {1, 64, 33}, {65, 96, 130}, {1, 1, 1}, {2, 1, 3}, {33, 17, 1}, {1, 576, 1536},
    {16, 300, 16}, {129, 257, 65}, {8, 1024, 40},
};

/* Returns the number of mismatching elements; prints the first. */
static int compare(const float *got, const float *ref, const float *bound, int64_t count, const char *what) {
    int bad = 0;
    for (int64_t i = 0; i < count; i++) {
        float tol = 1e-5f * bound[i] + 1e-6f;
        if (!(fabsf(got[i] - ref[i]) <= tol)) {
            if (!bad)
                fprintf(stderr, "    %s: element %lld: got %.9g, reference %.9g (tolerance %.3g)\n", what,
                        (long long)i, got[i], ref[i], tol);
            bad++;
        }
    }
    return bad;
}

/* Run one product with the current default pool; returns the result (malloc'ed) or NULL. */
static float *run_matmul(const float *x, const float *w, int transpose_w, shape3 s) {
    lk_tensor *tx = lkt_tensor2(x, s.m, s.k);
    lk_tensor *tw = transpose_w ? lkt_tensor2(w, s.n, s.k) : lkt_tensor2(w, s.k, s.n);
    /* out starts non-zero: lk_matmul overwrites, it does not accumulate. */
    float *junk = malloc(sizeof(float) * (size_t)(s.m * s.n + 1));
    for (int64_t i = 0; i < s.m * s.n; i++) junk[i] = 1e3f;
    lk_tensor *to = lkt_tensor2(junk, s.m, s.n);
    float *out = NULL;
    lk_status st = lk_matmul(tx, tw, transpose_w, to);
    EXPECT_OK(st);
    if (st == LK_OK) {
        out = junk;
        EXPECT_OK(lk_tensor_copy_to_f32(to, out, s.m * s.n));
    } else {
        free(junk);
    }
    lk_tensor_free(tx);
    lk_tensor_free(tw);
    lk_tensor_free(to);
    return out;
}

/* Every shape in one transpose mode with `threads` default threads (set once: a fresh process). */
static void check_mode(int transpose_w, int threads) {
    EXPECT_OK(lk_set_default_threads(threads));
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        shape3 s = shapes[si];
        float *x = lkt_random_floats(s.m * s.k, 100 + si);
        float *w = lkt_random_floats(s.k * s.n, 200 + si);
        float *ref = malloc(sizeof(float) * (size_t)(s.m * s.n));
        float *bound = malloc(sizeof(float) * (size_t)(s.m * s.n));
        lkt_ref_matmul(x, w, transpose_w, s.m, s.k, s.n, ref, bound);
        float *got = run_matmul(x, w, transpose_w, s);
        char what[96];
        snprintf(what, sizeof what, "%lldx%lldx%lld %s, %d thread(s)", (long long)s.m, (long long)s.k,
                 (long long)s.n, transpose_w ? "x·wT" : "x·w", threads);
        if (got) CHECKF(compare(got, ref, bound, s.m * s.n, what) == 0, "%s", what);
        free(x); free(w); free(ref); free(bound); free(got);
    }
}

static void test_matmul_transposed_1_thread(void) { check_mode(1, 1); }
static void test_matmul_transposed_2_threads(void) { check_mode(1, 2); }
static void test_matmul_plain_1_thread(void) { check_mode(0, 1); }
static void test_matmul_plain_2_threads(void) { check_mode(0, 2); }

/* The reduction order does not depend on the thread count: 1 and 2 threads agree bit for bit.
 * (Switches the default pool between runs.) */
static void test_matmul_thread_count_invariance(void) {
    for (int transpose_w = 0; transpose_w <= 1; transpose_w++)
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            shape3 s = shapes[si];
            float *x = lkt_random_floats(s.m * s.k, 300 + si), *w = lkt_random_floats(s.k * s.n, 400 + si);
            EXPECT_OK(lk_set_default_threads(1));
            float *r1 = run_matmul(x, w, transpose_w, s);
            EXPECT_OK(lk_set_default_threads(2));
            float *r2 = run_matmul(x, w, transpose_w, s);
            CHECKF(r1 && r2 && memcmp(r1, r2, sizeof(float) * (size_t)(s.m * s.n)) == 0,
                   "%lldx%lldx%lld transpose_w=%d: 1 and 2 threads differ", (long long)s.m, (long long)s.k,
                   (long long)s.n, transpose_w);
            free(x); free(w); free(r1); free(r2);
        }
}

static void test_matmul_transpose_flag_is_boolean(void) {
    /* Any non-zero transpose_w means "transposed". */
    shape3 s = {5, 9, 7};
    float *x = lkt_random_floats(s.m * s.k, 1), *w = lkt_random_floats(s.n * s.k, 2);
    float *a = run_matmul(x, w, 1, s), *b = run_matmul(x, w, -3, s);
    CHECK(a && b && memcmp(a, b, sizeof(float) * (size_t)(s.m * s.n)) == 0);
    free(x); free(w); free(a); free(b);
}

static void test_matmul_exact_small(void) {
    /* Integers: exact in f32, no tolerance needed. x [2,3], w [4,3] (transposed), out [2,4]. */
    float x[6] = {1, 2, 3, -1, 0, 2};
    float w[12] = {1, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1};
    const float want[8] = {1, 2, 3, 6, -1, 0, 2, 1};
    lk_tensor *tx = lkt_tensor2(x, 2, 3), *tw = lkt_tensor2(w, 4, 3), *to = lkt_zeros2(2, 4);
    EXPECT_OK(lk_matmul(tx, tw, 1, to));
    float got[8];
    EXPECT_OK(lk_tensor_copy_to_f32(to, got, 8));
    CHECK(memcmp(got, want, sizeof want) == 0);
    /* The same w read as [K=4, N=3] untransposed: x must be [2, 4]. */
    float x4[8] = {1, 1, 1, 1, 2, 0, 0, 1};
    const float want2[6] = {2, 2, 2, 3, 1, 1};
    lk_tensor *tx4 = lkt_tensor2(x4, 2, 4), *to2 = lkt_zeros2(2, 3);
    EXPECT_OK(lk_matmul(tx4, tw, 0, to2));
    EXPECT_OK(lk_tensor_copy_to_f32(to2, got, 6));
    CHECK(memcmp(got, want2, sizeof want2) == 0);
    lk_tensor_free(tx); lk_tensor_free(tw); lk_tensor_free(to); lk_tensor_free(tx4); lk_tensor_free(to2);
}

static void test_matmul_degenerate_sizes(void) {
    /* K = 0: the product is all zeros and out is overwritten with them. */
    float ones[12] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    lk_tensor *x = lkt_zeros2(3, 0), *w = lkt_zeros2(4, 0), *out = lkt_tensor2(ones, 3, 4);
    EXPECT_OK(lk_matmul(x, w, 1, out));
    float got[12];
    EXPECT_OK(lk_tensor_copy_to_f32(out, got, 12));
    int zeros = 1;
    for (int i = 0; i < 12; i++) zeros &= got[i] == 0.0f;
    CHECKF(zeros, "K = 0: out[0] = %g, expected 0", got[0]);
    lk_tensor_free(x); lk_tensor_free(w); lk_tensor_free(out);
    /* M = 0 and N = 0 are valid no-ops. */
    x = lkt_zeros2(0, 5); w = lkt_zeros2(4, 5); out = lkt_zeros2(0, 4);
    EXPECT_OK(lk_matmul(x, w, 1, out));
    lk_tensor_free(x); lk_tensor_free(w); lk_tensor_free(out);
    x = lkt_zeros2(3, 5); w = lkt_zeros2(0, 5); out = lkt_zeros2(3, 0);
    EXPECT_OK(lk_matmul(x, w, 1, out));
    lk_tensor_free(x); lk_tensor_free(w); lk_tensor_free(out);
}

static void test_matmul_plain_dtype_weights_zero(void) {
    /* w in every dtype (zero-filled by lk_tensor_new): the product is zero. Values: test_quant.c. */
    for (lk_dtype d = LK_DTYPE_F16; d <= LK_DTYPE_Q4_1; d++) {
        int64_t ws[2] = {5, 64};
        lk_tensor *w = NULL;
        EXPECT_OK(lk_tensor_new(d, 2, ws, &w));
        float *xv = lkt_random_floats(3 * 64, 9);
        float ones[15];
        for (int i = 0; i < 15; i++) ones[i] = 1;
        lk_tensor *x = lkt_tensor2(xv, 3, 64), *out = lkt_tensor2(ones, 3, 5);
        EXPECT_OK(lk_matmul(x, w, 1, out));
        float got[15];
        EXPECT_OK(lk_tensor_copy_to_f32(out, got, 15));
        int zeros = 1;
        for (int i = 0; i < 15; i++) zeros &= got[i] == 0.0f;
        CHECKF(zeros, "%s weight of zeros: out[0] = %g", lk_dtype_name(d), got[0]);
        free(xv);
        lk_tensor_free(w); lk_tensor_free(x); lk_tensor_free(out);
    }
}

LKT_MAIN("test_matmul", NULL,
         TESTCASE(test_matmul_exact_small),
         TESTCASE(test_matmul_transposed_1_thread),
         TESTCASE(test_matmul_transposed_2_threads),
         TESTCASE(test_matmul_plain_1_thread),
         TESTCASE(test_matmul_plain_2_threads),
         TESTCASE(test_matmul_thread_count_invariance),
         TESTCASE(test_matmul_transpose_flag_is_boolean),
         TESTCASE(test_matmul_degenerate_sizes),
         TESTCASE(test_matmul_plain_dtype_weights_zero))

/*
 * test_abi.c — every function of lorakit.h through the installed header and library: library info,
 * status strings, dtypes, default threads, tensor lifecycle and queries, and bad input of every kind
 * (NULL pointers and handles, freed and forged handles, bad sizes, small buffers, unknown dtypes).
 * Each error checks the status, that lk_last_error() names the problem, that out-parameters were not
 * written, and that unrelated tensors still work afterwards.
 * Matmul numerics: test_matmul.c; quantized dtypes: test_quant.c; threads: test_threads.c.
 */
#include "lk_test.h"

#include <stdarg.h>

/* A tensor that every error test re-checks afterwards: errors must not disturb unrelated tensors. */
static lk_tensor *bystander;
static const float bystander_values[6] = {1.5f, -2.0f, 3.25f, 0.0f, -0.5f, 8.0f};

static void check_bystander(void) {
    float got[6] = {0};
    EXPECT_OK(lk_tensor_copy_to_f32(bystander, got, 6));
    CHECK(memcmp(got, bystander_values, sizeof got) == 0);
    int32_t nd = 0;
    int64_t shape[2] = {0, 0};
    EXPECT_OK(lk_tensor_shape(bystander, &nd, shape, 2));
    CHECK(nd == 2 && shape[0] == 2 && shape[1] == 3);
}

/* A forged handle no library call ever returned. */
#define FORGED ((lk_tensor *)0x1234)
/* A handle-shaped value that is not out of the blue: far above every token issued so far. */
static lk_tensor *unissued_handle(void) {
    lk_tensor *t = NULL;
    int64_t shape[1] = {1};
    lk_tensor_new(LK_DTYPE_F32, 1, shape, &t);
    lk_tensor_free(t);
    return (lk_tensor *)((uintptr_t)t + ((uintptr_t)1 << 20));
}

/* ------------------------------------------------------------------------------------------------ */

static void test_abi_version(void) {
    CHECKF(lk_abi_version() == LK_ABI_VERSION, "library ABI %d, header ABI %d", lk_abi_version(), LK_ABI_VERSION);
    const char *v = lk_version_string();
    CHECK(v != NULL);
    if (!v) return;
    int a, b, c;
    char extra;
    CHECKF(sscanf(v, "%d.%d.%d%c", &a, &b, &c, &extra) == 3, "version \"%s\" is not MAJOR.MINOR.PATCH", v);
    CHECK(lk_version_string() == v); /* static string */
    /* run.sh passes the pkg-config version of the installed library. */
    const char *want = getenv("LORAKIT_EXPECTED_VERSION");
    if (want && *want) CHECKF(strcmp(v, want) == 0, "lk_version_string \"%s\" vs lorakit.pc \"%s\"", v, want);
}

static void test_last_error_lifecycle(void) {
    /* Runs in a fresh process: the setup's successful calls leave no message. */
    CHECK(lk_last_error() != NULL);
    CHECKF(strcmp(lk_last_error(), "") == 0, "fresh error is \"%s\"", lk_last_error());
    int64_t bs, bb;
    EXPECT_STATUS(lk_dtype_info(42, &bs, &bb), LK_ERR_INVALID_ARGUMENT, "42");
    CHECK(strlen(lk_last_error()) > 0);
    /* A successful call leaves the last failure's message alone ("valid until the next failing call"). */
    EXPECT_OK(lk_dtype_info(LK_DTYPE_F32, &bs, &bb));
    CHECKF(strstr(lk_last_error(), "42") != NULL, "message after success: \"%s\"", lk_last_error());
    /* A new failure replaces it. */
    EXPECT_STATUS(lk_set_default_threads(0), LK_ERR_INVALID_ARGUMENT, "n_threads");
    CHECK(strstr(lk_last_error(), "42") == NULL);
    lk_clear_error();
    CHECK(strcmp(lk_last_error(), "") == 0);
    lk_clear_error(); /* twice is fine */
    CHECK(strcmp(lk_last_error(), "") == 0);
}

static void test_status_strings(void) {
    struct { lk_status code; const char *substr; } codes[] = {
        {LK_OK, "ok"}, {LK_STOPPED, "stop"}, {LK_ERR_INVALID_ARGUMENT, "argument"},
        {LK_ERR_INVALID_HANDLE, "handle"}, {LK_ERR_SHAPE, "shape"}, {LK_ERR_UNSUPPORTED, "unsupported"},
        {LK_ERR_IO, "I/O"}, {LK_ERR_FORMAT, "malformed"}, {LK_ERR_OUT_OF_MEMORY, "memory"},
        {LK_ERR_ABI, "ABI"}, {LK_ERR_BUFFER_TOO_SMALL, "buffer"}, {LK_ERR_LIMIT, "limit"},
        {LK_ERR_INTERNAL, "internal"},
    };
    size_t n = sizeof codes / sizeof codes[0];
    const char *unknown = lk_status_string(12345);
    CHECK(unknown != NULL && strstr(unknown, "unknown") != NULL);
    for (size_t i = 0; i < n; i++) {
        const char *s = lk_status_string(codes[i].code);
        CHECKF(s != NULL && strstr(s, codes[i].substr) != NULL, "status %d -> \"%s\", expected to mention \"%s\"",
               (int)codes[i].code, s ? s : "(NULL)", codes[i].substr);
        if (!s) continue;
        CHECKF(strcmp(s, unknown) != 0, "status %d has no name", (int)codes[i].code);
        CHECK(lk_status_string(codes[i].code) == s); /* static */
        for (size_t j = 0; j < i; j++)
            CHECKF(strcmp(s, lk_status_string(codes[j].code)) != 0, "codes %d and %d share the name \"%s\"",
                   (int)codes[i].code, (int)codes[j].code, s);
    }
    const lk_status odd[] = {2, -11, -99, -101, INT32_MIN, INT32_MAX};
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
        const char *s = lk_status_string(odd[i]);
        CHECKF(s != NULL && strstr(s, "unknown") != NULL, "status %d -> \"%s\"", (int)odd[i], s ? s : "(NULL)");
    }
}

static void test_dtype_names_and_info(void) {
    struct { lk_dtype d; const char *name; int64_t bs, bb; } t[] = {
        {LK_DTYPE_F32, "f32", 1, 4},    {LK_DTYPE_F16, "f16", 1, 2},    {LK_DTYPE_BF16, "bf16", 1, 2},
        {LK_DTYPE_Q8_0, "q8_0", 32, 34}, {LK_DTYPE_Q4_0, "q4_0", 32, 18}, {LK_DTYPE_Q4_1, "q4_1", 32, 20},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        const char *name = lk_dtype_name(t[i].d);
        CHECKF(name && strcmp(name, t[i].name) == 0, "dtype %d -> \"%s\"", (int)t[i].d, name ? name : "(NULL)");
        int64_t bs = -7, bb = -7;
        EXPECT_OK(lk_dtype_info(t[i].d, &bs, &bb));
        CHECKF(bs == t[i].bs && bb == t[i].bb, "%s: block %lld values / %lld bytes", t[i].name, (long long)bs,
               (long long)bb);
    }
    const lk_dtype bad[] = {6, 99, -1, INT32_MAX, INT32_MIN};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECKF(lk_dtype_name(bad[i]) == NULL, "dtype %d has a name", (int)bad[i]);
        int64_t bs = -7, bb = -7;
        char want[32];
        snprintf(want, sizeof want, "%d", (int)bad[i]);
        EXPECT_STATUS(lk_dtype_info(bad[i], &bs, &bb), LK_ERR_INVALID_ARGUMENT, want);
        CHECK(strstr(lk_last_error(), "dtype") != NULL);
        CHECK(bs == -7 && bb == -7);
    }
    int64_t bs = -7, bb = -7;
    EXPECT_STATUS(lk_dtype_info(LK_DTYPE_Q8_0, NULL, &bb), LK_ERR_INVALID_ARGUMENT, "block_size");
    EXPECT_STATUS(lk_dtype_info(LK_DTYPE_Q8_0, &bs, NULL), LK_ERR_INVALID_ARGUMENT, "block_bytes");
    EXPECT_STATUS(lk_dtype_info(LK_DTYPE_Q8_0, NULL, NULL), LK_ERR_INVALID_ARGUMENT, "NULL");
    CHECK(bs == -7 && bb == -7);
}

static void test_default_threads(void) {
    /* Fresh process. Replacing a pool that has worker threads is test_threads.c's
     * test_replace_default_pool; here only the worker-less 1-thread pool is ever replaced. */
    int32_t cpus = lk_cpu_count();
    CHECKF(cpus >= 1 && cpus <= 4096, "lk_cpu_count() = %d", cpus);
    CHECKF(lk_get_default_threads() == cpus, "default threads %d, cpu count %d", lk_get_default_threads(), cpus);
    EXPECT_OK(lk_set_default_threads(1));
    CHECK(lk_get_default_threads() == 1);
    const int32_t bad[] = {0, -1, 513, INT32_MIN, INT32_MAX};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char want[32];
        snprintf(want, sizeof want, "%d", (int)bad[i]);
        EXPECT_STATUS(lk_set_default_threads(bad[i]), LK_ERR_INVALID_ARGUMENT, want);
        CHECK(strstr(lk_last_error(), "n_threads") != NULL);
        CHECKF(lk_get_default_threads() == 1, "a rejected value changed the default to %d", lk_get_default_threads());
    }
    EXPECT_OK(lk_set_default_threads(512)); /* the upper bound is accepted */
    CHECK(lk_get_default_threads() == 512);
    /* A product still works (and is right) with a pool far larger than the machine. */
    float x[4] = {1, 2, 3, 4}, w[6] = {1, 0, -1, 2, 0.5f, 1}, out[6];
    lk_tensor *tx = lkt_tensor2(x, 2, 2), *tw = lkt_tensor2(w, 3, 2), *to = lkt_zeros2(2, 3);
    EXPECT_OK(lk_matmul(tx, tw, 1, to));
    EXPECT_OK(lk_tensor_copy_to_f32(to, out, 6));
    const float want[6] = {1, 3, 2.5f, 3, 5, 5.5f};
    CHECK(memcmp(out, want, sizeof want) == 0);
    lk_tensor_free(tx); lk_tensor_free(tw); lk_tensor_free(to);
}

/* ------------------------------------------------------------------------------------------------ */
/* Tensors                                                                                          */
/* ------------------------------------------------------------------------------------------------ */

static void test_tensor_new_every_dtype(void) {
    for (lk_dtype d = 0; d <= LK_DTYPE_Q4_1; d++) {
        int64_t shape[2] = {3, 64};
        lk_tensor *t = NULL;
        EXPECT_OK(lk_tensor_new(d, 2, shape, &t));
        if (!t) continue;
        lk_dtype got = -1;
        EXPECT_OK(lk_tensor_dtype(t, &got));
        CHECK(got == d);
        int32_t nd = 0;
        int64_t s[LK_MAX_DIMS] = {0};
        EXPECT_OK(lk_tensor_shape(t, &nd, s, LK_MAX_DIMS));
        CHECK(nd == 2 && s[0] == 3 && s[1] == 64);
        int64_t bs, bb, ne = -1, nb = -1;
        lk_dtype_info(d, &bs, &bb);
        EXPECT_OK(lk_tensor_size(t, &ne, &nb));
        CHECKF(ne == 192 && nb == 192 / bs * bb, "%s: %lld elements, %lld bytes", lk_dtype_name(d), (long long)ne,
               (long long)nb);
        float f[192];
        for (int i = 0; i < 192; i++) f[i] = 99;
        EXPECT_OK(lk_tensor_copy_to_f32(t, f, 192));
        int zeros = 1;
        for (int i = 0; i < 192; i++) zeros &= f[i] == 0.0f;
        CHECKF(zeros, "%s: new tensor is not zero-filled", lk_dtype_name(d));
        unsigned char raw[192 * 4];
        memset(raw, 0xAB, sizeof raw);
        EXPECT_OK(lk_tensor_copy_bytes(t, raw, (int64_t)sizeof raw));
        int zb = 1;
        for (int64_t i = 0; i < nb; i++) zb &= raw[i] == 0;
        CHECK(zb);
        CHECKF(nb == (int64_t)sizeof raw || raw[nb] == 0xAB, "copy_bytes wrote past n_bytes");
        EXPECT_OK(lk_tensor_free(t));
    }
}

static void test_tensor_ranks_and_empty(void) {
    /* 1 ... LK_MAX_DIMS dimensions. */
    int64_t shape[LK_MAX_DIMS] = {2, 1, 3, 1, 2, 1, 1, 2};
    for (int32_t r = 1; r <= LK_MAX_DIMS; r++) {
        lk_tensor *t = NULL;
        EXPECT_OK(lk_tensor_new(LK_DTYPE_F32, r, shape, &t));
        int32_t nd = 0;
        int64_t s[LK_MAX_DIMS] = {0};
        EXPECT_OK(lk_tensor_shape(t, &nd, s, LK_MAX_DIMS));
        CHECK(nd == r && memcmp(s, shape, sizeof(int64_t) * (size_t)r) == 0);
        int64_t ne = 0, nb = 0, want = 1;
        for (int32_t i = 0; i < r; i++) want *= shape[i];
        EXPECT_OK(lk_tensor_size(t, &ne, &nb));
        CHECK(ne == want && nb == 4 * want);
        lk_tensor_free(t);
    }
    /* Zero-sized dimensions are valid; copies of nothing accept NULL buffers. */
    int64_t z[2] = {0, 5};
    lk_tensor *t = NULL;
    EXPECT_OK(lk_tensor_new(LK_DTYPE_F32, 2, z, &t));
    int64_t ne = -1, nb = -1;
    EXPECT_OK(lk_tensor_size(t, &ne, &nb));
    CHECK(ne == 0 && nb == 0);
    EXPECT_OK(lk_tensor_copy_to_f32(t, NULL, 0));
    EXPECT_OK(lk_tensor_copy_bytes(t, NULL, 0));
    lk_tensor *c = NULL;
    EXPECT_OK(lk_tensor_convert(t, LK_DTYPE_F32, &c));
    lk_tensor_free(c);
    lk_tensor_free(t);
    t = NULL;
    EXPECT_OK(lk_tensor_from_f32(NULL, 0, LK_DTYPE_F32, 2, z, &t));
    CHECK(t != NULL);
    lk_tensor_free(t);
}

static void test_tensor_from_f32_and_copies(void) {
    float v[15];
    for (int i = 0; i < 15; i++) v[i] = (float)i * 0.5f - 3.0f;
    int64_t shape[2] = {3, 5};
    lk_tensor *t = NULL;
    EXPECT_OK(lk_tensor_from_f32(v, 15, LK_DTYPE_F32, 2, shape, &t));
    v[0] = 1000; /* data is copied */
    lk_dtype d = -1;
    EXPECT_OK(lk_tensor_dtype(t, &d));
    CHECK(d == LK_DTYPE_F32);
    int64_t ne, nb;
    EXPECT_OK(lk_tensor_size(t, &ne, &nb));
    CHECK(ne == 15 && nb == 60);
    float out[16];
    out[15] = 77;
    EXPECT_OK(lk_tensor_copy_to_f32(t, out, 16)); /* a larger buffer is fine */
    CHECK(out[0] == -3.0f && out[14] == 4.0f && out[15] == 77);
    float raw[15];
    EXPECT_OK(lk_tensor_copy_bytes(t, raw, 60));
    CHECK(memcmp(raw, out, 60) == 0);

    /* Shape query: n_dims only, exact capacity, larger capacity. */
    int32_t nd = -1;
    EXPECT_OK(lk_tensor_shape(t, &nd, NULL, 0));
    CHECK(nd == 2);
    int64_t s[2] = {0, 0};
    EXPECT_OK(lk_tensor_shape(t, &nd, s, 2));
    CHECK(s[0] == 3 && s[1] == 5);
    lk_tensor_free(t);
}

static void test_convert_f32(void) {
    float v[6] = {1, 2, 3, 4, 5, 6};
    lk_tensor *a = lkt_tensor2(v, 2, 3);
    lk_tensor *b = NULL;
    EXPECT_OK(lk_tensor_convert(a, LK_DTYPE_F32, &b));
    CHECK(b != NULL && b != a);
    float got[6];
    EXPECT_OK(lk_tensor_copy_to_f32(b, got, 6));
    CHECK(memcmp(got, v, sizeof v) == 0);
    /* "A new tensor": freeing the source leaves the converted tensor alive. */
    EXPECT_OK(lk_tensor_free(a));
    EXPECT_OK(lk_tensor_copy_to_f32(b, got, 6));
    CHECK(memcmp(got, v, sizeof v) == 0);
    lk_tensor_free(b);
}

/* lk_tensor_convert returns "a new tensor": writing the result must not change the source. */
static void test_convert_result_is_independent(void) {
    float v[6] = {1, 2, 3, 4, 5, 6};
    lk_tensor *a = lkt_tensor2(v, 2, 3);
    lk_tensor *b = NULL;
    EXPECT_OK(lk_tensor_convert(a, LK_DTYPE_F32, &b));
    float x[2] = {1, 1}, w[3] = {10, 20, 30};
    lk_tensor *tx = lkt_tensor2(x, 2, 1), *tw = lkt_tensor2(w, 3, 1);
    EXPECT_OK(lk_matmul(tx, tw, 1, b)); /* overwrite b */
    float got[6];
    EXPECT_OK(lk_tensor_copy_to_f32(b, got, 6));
    CHECK(got[0] == 10 && got[5] == 30);
    EXPECT_OK(lk_tensor_copy_to_f32(a, got, 6));
    CHECKF(memcmp(got, v, sizeof v) == 0, "writing the converted tensor changed its source: a = {%g, %g, %g, ...}",
           got[0], got[1], got[2]);
    lk_tensor_free(a); lk_tensor_free(b); lk_tensor_free(tx); lk_tensor_free(tw);
}

/* ------------------------------------------------------------------------------------------------ */
/* Bad input                                                                                        */
/* ------------------------------------------------------------------------------------------------ */

/* Every handle-taking function with the handle `h`: expects LK_ERR_INVALID_HANDLE naming `what`. */
static void expect_all_reject_handle(lk_tensor *h, const char *what) {
    lk_tensor *out = (lk_tensor *)0x777, *good = bystander;
    int32_t nd = -5;
    int64_t shape[LK_MAX_DIMS] = {-5}, ne = -5, nb = -5;
    lk_dtype d = -5;
    float f[8] = {-5};
    unsigned char raw[32] = {0x5A};
    EXPECT_STATUS(lk_tensor_shape(h, &nd, shape, LK_MAX_DIMS), LK_ERR_INVALID_HANDLE, what);
    EXPECT_STATUS(lk_tensor_dtype(h, &d), LK_ERR_INVALID_HANDLE, what);
    EXPECT_STATUS(lk_tensor_size(h, &ne, &nb), LK_ERR_INVALID_HANDLE, what);
    EXPECT_STATUS(lk_tensor_copy_to_f32(h, f, 8), LK_ERR_INVALID_HANDLE, what);
    EXPECT_STATUS(lk_tensor_copy_bytes(h, raw, 32), LK_ERR_INVALID_HANDLE, what);
    EXPECT_STATUS(lk_tensor_convert(h, LK_DTYPE_F32, &out), LK_ERR_INVALID_HANDLE, what);
    CHECK(nd == -5 && shape[0] == -5 && ne == -5 && nb == -5 && d == -5 && f[0] == -5 && raw[0] == 0x5A);
    CHECK(out == (lk_tensor *)0x777);
    /* Each matmul operand by name. */
    EXPECT_STATUS(lk_matmul(h, good, 1, good), LK_ERR_INVALID_HANDLE, "x is");
    CHECK(strstr(lk_last_error(), what) != NULL);
    EXPECT_STATUS(lk_matmul(good, h, 1, good), LK_ERR_INVALID_HANDLE, "w is");
    EXPECT_STATUS(lk_matmul(good, good, 1, h), LK_ERR_INVALID_HANDLE, "out is");
    check_bystander();
}

static void test_null_handles(void) {
    expect_all_reject_handle(NULL, "NULL");
    EXPECT_OK(lk_tensor_free(NULL)); /* no-op */
    check_bystander();
}

static void test_freed_handles(void) {
    int64_t shape[1] = {4};
    lk_tensor *t = NULL;
    EXPECT_OK(lk_tensor_new(LK_DTYPE_F32, 1, shape, &t));
    EXPECT_OK(lk_tensor_free(t));
    EXPECT_STATUS(lk_tensor_free(t), LK_ERR_INVALID_HANDLE, "freed"); /* double free */
    expect_all_reject_handle(t, "not a live handle");
    /* Freeing another tensor does not revive or disturb anything. */
    lk_tensor *u = NULL;
    EXPECT_OK(lk_tensor_new(LK_DTYPE_F32, 1, shape, &u));
    CHECKF(u != t, "a freed handle value was reused");
    EXPECT_STATUS(lk_tensor_dtype(t, &(lk_dtype){0}), LK_ERR_INVALID_HANDLE, "not a live handle");
    EXPECT_OK(lk_tensor_free(u));
}

static void test_forged_handles(void) {
    expect_all_reject_handle(FORGED, "not a live handle");
    EXPECT_STATUS(lk_tensor_free(FORGED), LK_ERR_INVALID_HANDLE, "not a live handle");
    lk_tensor *near = unissued_handle();
    expect_all_reject_handle(near, "not a live handle");
    EXPECT_STATUS(lk_tensor_free(near), LK_ERR_INVALID_HANDLE, "handle");
    lk_tensor *odd = (lk_tensor *)((uintptr_t)bystander + 1); /* misaligned neighbour of a live handle */
    expect_all_reject_handle(odd, "not a live handle");
    EXPECT_STATUS(lk_tensor_free(odd), LK_ERR_INVALID_HANDLE, "handle");
    expect_all_reject_handle((lk_tensor *)(uintptr_t)-16, "not a live handle");
    check_bystander();
}

static void test_bad_constructor_arguments(void) {
    const lk_tensor *const sentinel = (lk_tensor *)0x777;
    lk_tensor *out = (lk_tensor *)sentinel;
    int64_t ok_shape[2] = {2, 3};
    float v[6] = {0};

    /* NULL out-pointer. */
    EXPECT_STATUS(lk_tensor_new(LK_DTYPE_F32, 2, ok_shape, NULL), LK_ERR_INVALID_ARGUMENT, "out");
    EXPECT_STATUS(lk_tensor_from_f32(v, 6, LK_DTYPE_F32, 2, ok_shape, NULL), LK_ERR_INVALID_ARGUMENT, "out");
    EXPECT_STATUS(lk_tensor_convert(bystander, LK_DTYPE_F32, NULL), LK_ERR_INVALID_ARGUMENT, "out");
    /* NULL shape / data. */
    EXPECT_STATUS(lk_tensor_new(LK_DTYPE_F32, 2, NULL, &out), LK_ERR_INVALID_ARGUMENT, "shape");
    EXPECT_STATUS(lk_tensor_from_f32(v, 6, LK_DTYPE_F32, 2, NULL, &out), LK_ERR_INVALID_ARGUMENT, "shape");
    EXPECT_STATUS(lk_tensor_from_f32(NULL, 6, LK_DTYPE_F32, 2, ok_shape, &out), LK_ERR_INVALID_ARGUMENT, "data");
    /* n_dims outside 1...LK_MAX_DIMS. */
    int64_t big_shape[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    const int32_t bad_nd[] = {0, 9, -1, INT32_MAX};
    for (size_t i = 0; i < sizeof bad_nd / sizeof bad_nd[0]; i++) {
        char want[48];
        snprintf(want, sizeof want, "n_dims %d", (int)bad_nd[i]);
        EXPECT_STATUS(lk_tensor_new(LK_DTYPE_F32, bad_nd[i], big_shape, &out), LK_ERR_INVALID_ARGUMENT, want);
        EXPECT_STATUS(lk_tensor_from_f32(v, 1, LK_DTYPE_F32, bad_nd[i], big_shape, &out), LK_ERR_INVALID_ARGUMENT,
                      want);
    }
    /* Negative sizes. */
    int64_t neg[2] = {2, -3};
    EXPECT_STATUS(lk_tensor_new(LK_DTYPE_F32, 2, neg, &out), LK_ERR_INVALID_ARGUMENT, "-3");
    CHECK(strstr(lk_last_error(), "negative") != NULL);
    EXPECT_STATUS(lk_tensor_from_f32(v, -6, LK_DTYPE_F32, 2, neg, &out), LK_ERR_INVALID_ARGUMENT, "negative");
    int64_t neg_big[1] = {INT64_MIN};
    EXPECT_STATUS(lk_tensor_new(LK_DTYPE_F32, 1, neg_big, &out), LK_ERR_INVALID_ARGUMENT, "negative");
    /* Size overflow. */
    int64_t huge[2] = {(int64_t)1 << 40, (int64_t)1 << 40};
    EXPECT_STATUS(lk_tensor_new(LK_DTYPE_F32, 2, huge, &out), LK_ERR_INVALID_ARGUMENT, "overflow");
    EXPECT_STATUS(lk_tensor_from_f32(v, 6, LK_DTYPE_F32, 2, huge, &out), LK_ERR_INVALID_ARGUMENT, "overflow");
    int64_t bytes_overflow[1] = {INT64_MAX / 2}; /* elements fit in int64, bytes do not */
    EXPECT_STATUS(lk_tensor_new(LK_DTYPE_F32, 1, bytes_overflow, &out), LK_ERR_INVALID_ARGUMENT, "overflow");
    /* Far too large to allocate. */
    int64_t too_big[1] = {(int64_t)1 << 40};
    EXPECT_STATUS(lk_tensor_new(LK_DTYPE_F32, 1, too_big, &out), LK_ERR_OUT_OF_MEMORY, "allocate");
    /* Unknown dtypes. */
    const lk_dtype bad_dt[] = {99, -1, 6};
    for (size_t i = 0; i < sizeof bad_dt / sizeof bad_dt[0]; i++) {
        char want[48];
        snprintf(want, sizeof want, "dtype %d", (int)bad_dt[i]);
        EXPECT_STATUS(lk_tensor_new(bad_dt[i], 2, ok_shape, &out), LK_ERR_INVALID_ARGUMENT, want);
        EXPECT_STATUS(lk_tensor_from_f32(v, 6, bad_dt[i], 2, ok_shape, &out), LK_ERR_INVALID_ARGUMENT, want);
        EXPECT_STATUS(lk_tensor_convert(bystander, bad_dt[i], &out), LK_ERR_INVALID_ARGUMENT, want);
    }
    /* n_values that does not match the shape. */
    EXPECT_STATUS(lk_tensor_from_f32(v, 5, LK_DTYPE_F32, 2, ok_shape, &out), LK_ERR_SHAPE, "n_values 5");
    EXPECT_STATUS(lk_tensor_from_f32(v, 7, LK_DTYPE_F32, 2, ok_shape, &out), LK_ERR_SHAPE, "n_values 7");
    /* Quantized rows must be whole blocks. */
    int64_t q_bad[2] = {2, 33};
    EXPECT_STATUS(lk_tensor_new(LK_DTYPE_Q8_0, 2, q_bad, &out), LK_ERR_SHAPE, "33");
    CHECK(strstr(lk_last_error(), "block") != NULL);
    EXPECT_STATUS(lk_tensor_new(LK_DTYPE_Q4_1, 2, q_bad, &out), LK_ERR_SHAPE, "block");

    CHECKF(out == sentinel, "an out-parameter was written by a failing call");
    check_bystander();
}

static void test_negative_n_values(void) {
    /* lorakit.h: LK_ERR_INVALID_ARGUMENT covers "negative size"; n_values is a size. */
    int64_t shape[1] = {2};
    float v[2] = {0};
    lk_tensor *out = NULL;
    EXPECT_STATUS(lk_tensor_from_f32(v, -2, LK_DTYPE_F32, 1, shape, &out), LK_ERR_INVALID_ARGUMENT, "n_values");
    CHECK(out == NULL);
}

static void test_bad_query_arguments(void) {
    int32_t nd = -5;
    int64_t s[4] = {-5, -5, -5, -5}, ne = -5, nb = -5;
    EXPECT_STATUS(lk_tensor_shape(bystander, NULL, s, 4), LK_ERR_INVALID_ARGUMENT, "n_dims");
    EXPECT_STATUS(lk_tensor_shape(bystander, &nd, s, -1), LK_ERR_INVALID_ARGUMENT, "capacity -1");
    CHECK(s[0] == -5);
    /* Buffer too small: the needed capacity comes back in n_dims, the buffer is untouched. */
    EXPECT_STATUS(lk_tensor_shape(bystander, &nd, s, 1), LK_ERR_BUFFER_TOO_SMALL, "capacity 1");
    CHECK(nd == 2);
    CHECK(s[0] == -5 && s[1] == -5);
    nd = -5;
    EXPECT_STATUS(lk_tensor_shape(bystander, &nd, s, 0), LK_ERR_BUFFER_TOO_SMALL, "capacity 0");
    CHECK(nd == 2 && s[0] == -5);
    EXPECT_STATUS(lk_tensor_shape(bystander, &nd, NULL, 4), LK_ERR_INVALID_ARGUMENT, "shape");
    EXPECT_STATUS(lk_tensor_dtype(bystander, NULL), LK_ERR_INVALID_ARGUMENT, "dtype");
    EXPECT_STATUS(lk_tensor_size(bystander, NULL, &nb), LK_ERR_INVALID_ARGUMENT, "n_elements");
    EXPECT_STATUS(lk_tensor_size(bystander, &ne, NULL), LK_ERR_INVALID_ARGUMENT, "n_bytes");
    CHECK(ne == -5 && nb == -5);
    check_bystander();
}

static void test_copy_buffer_too_small(void) {
    float f[6];
    for (int i = 0; i < 6; i++) f[i] = -42.0f;
    EXPECT_STATUS(lk_tensor_copy_to_f32(bystander, f, 5), LK_ERR_BUFFER_TOO_SMALL, "capacity 5");
    CHECK(strstr(lk_last_error(), "6") != NULL);
    int untouched = 1;
    for (int i = 0; i < 6; i++) untouched &= f[i] == -42.0f;
    CHECKF(untouched, "lk_tensor_copy_to_f32 wrote into a too-small buffer");
    EXPECT_STATUS(lk_tensor_copy_to_f32(bystander, f, 0), LK_ERR_BUFFER_TOO_SMALL, "capacity 0");
    EXPECT_STATUS(lk_tensor_copy_to_f32(bystander, f, -1), LK_ERR_INVALID_ARGUMENT, "capacity -1");
    EXPECT_STATUS(lk_tensor_copy_to_f32(bystander, NULL, 6), LK_ERR_INVALID_ARGUMENT, "dst");
    CHECK(f[0] == -42.0f);

    unsigned char raw[24];
    memset(raw, 0xEE, sizeof raw);
    EXPECT_STATUS(lk_tensor_copy_bytes(bystander, raw, 23), LK_ERR_BUFFER_TOO_SMALL, "capacity 23");
    CHECK(strstr(lk_last_error(), "24") != NULL);
    int raw_untouched = 1;
    for (size_t i = 0; i < sizeof raw; i++) raw_untouched &= raw[i] == 0xEE;
    CHECKF(raw_untouched, "lk_tensor_copy_bytes wrote into a too-small buffer");
    EXPECT_STATUS(lk_tensor_copy_bytes(bystander, raw, -8), LK_ERR_INVALID_ARGUMENT, "capacity -8");
    EXPECT_STATUS(lk_tensor_copy_bytes(bystander, NULL, 24), LK_ERR_INVALID_ARGUMENT, "dst");
    CHECK(raw[0] == 0xEE);
    check_bystander();
}

static void test_matmul_bad_input(void) {
    float a[6] = {1, 2, 3, 4, 5, 6};
    lk_tensor *x = lkt_tensor2(a, 2, 3);   /* [2, 3] */
    lk_tensor *w = lkt_zeros2(4, 5);       /* [4, 5]: K does not match either way */
    lk_tensor *out = lkt_zeros2(2, 4);
    float sentinel[8] = {7, 7, 7, 7, 7, 7, 7, 7};
    lk_tensor *out_marked = lkt_tensor2(sentinel, 2, 4);

    EXPECT_STATUS(lk_matmul(x, w, 1, out_marked), LK_ERR_SHAPE, "[2, 3]");
    CHECK(strstr(lk_last_error(), "[4, 5]") != NULL || strstr(lk_last_error(), "[5, 4]") != NULL);
    EXPECT_STATUS(lk_matmul(x, w, 0, out_marked), LK_ERR_SHAPE, "[4, 5]");
    /* Right inner size, wrong out shape. */
    lk_tensor *w_ok = lkt_zeros2(4, 3); /* [N=4, K=3] */
    lk_tensor *out_wrong = lkt_zeros2(2, 5);
    EXPECT_STATUS(lk_matmul(x, w_ok, 1, out_wrong), LK_ERR_SHAPE, "[2, 4]");
    CHECK(strstr(lk_last_error(), "out") != NULL);
    EXPECT_STATUS(lk_matmul(x, w_ok, 0, out_marked), LK_ERR_SHAPE, "[4, 3]"); /* w [4,3] untransposed needs K=4 */
    /* Not 2-D. */
    int64_t s3[3] = {1, 2, 3};
    lk_tensor *x3 = NULL;
    EXPECT_OK(lk_tensor_new(LK_DTYPE_F32, 3, s3, &x3));
    EXPECT_STATUS(lk_matmul(x3, w_ok, 1, out_marked), LK_ERR_SHAPE, "2-D");
    /* x or out not f32 (lorakit.h: "x and out are f32"; a dtype misfit is LK_ERR_SHAPE or unsupported). */
    int64_t s23[2] = {2, 3}, s24[2] = {2, 4};
    lk_tensor *x16 = NULL, *o16 = NULL;
    EXPECT_OK(lk_tensor_new(LK_DTYPE_F16, 2, s23, &x16));
    EXPECT_OK(lk_tensor_new(LK_DTYPE_BF16, 2, s24, &o16));
    lk_status st = lk_matmul(x16, w_ok, 1, out_marked);
    CHECKF(st == LK_ERR_SHAPE || st == LK_ERR_UNSUPPORTED, "f16 x: status %d", (int)st);
    CHECK(strstr(lk_last_error(), "f32") != NULL && strstr(lk_last_error(), "f16") != NULL);
    st = lk_matmul(x, w_ok, 1, o16);
    CHECKF(st == LK_ERR_SHAPE || st == LK_ERR_UNSUPPORTED, "bf16 out: status %d", (int)st);
    CHECK(strstr(lk_last_error(), "bf16") != NULL);
    /* out aliasing an input. */
    lk_tensor *sq = lkt_tensor2(a, 2, 2), *sq_w = lkt_zeros2(2, 2);
    EXPECT_STATUS(lk_matmul(sq, sq_w, 1, sq), LK_ERR_INVALID_ARGUMENT, "out");
    EXPECT_STATUS(lk_matmul(sq_w, sq, 1, sq), LK_ERR_INVALID_ARGUMENT, "out");
    float chk[4];
    lk_tensor_copy_to_f32(sq, chk, 4);
    CHECK(chk[0] == 1 && chk[3] == 4);

    float got[8];
    EXPECT_OK(lk_tensor_copy_to_f32(out_marked, got, 8));
    CHECKF(memcmp(got, sentinel, sizeof sentinel) == 0, "a failing lk_matmul wrote its out tensor");
    /* The same tensors work once the arguments fit. */
    EXPECT_OK(lk_matmul(x, w_ok, 1, out));
    check_bystander();
    lk_tensor *all[] = {x, w, out, out_marked, w_ok, out_wrong, x3, x16, o16, sq, sq_w};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) EXPECT_OK(lk_tensor_free(all[i]));
}

static void test_many_tensors(void) {
    /* Handles stay distinct and live independently across many creations and frees. */
    enum { N = 2000 };
    static lk_tensor *ts[N];
    int64_t shape[1] = {1};
    for (int i = 0; i < N; i++) {
        float v = (float)i;
        ts[i] = NULL;
        lk_tensor_from_f32(&v, 1, LK_DTYPE_F32, 1, shape, &ts[i]);
    }
    for (int i = 0; i < N; i += 2) EXPECT_OK(lk_tensor_free(ts[i]));
    int ok = 1;
    for (int i = 1; i < N; i += 2) {
        float v = -1;
        ok &= lk_tensor_copy_to_f32(ts[i], &v, 1) == LK_OK && v == (float)i;
    }
    CHECK(ok);
    int rejected = 1;
    for (int i = 0; i < N; i += 2) rejected &= lk_tensor_free(ts[i]) == LK_ERR_INVALID_HANDLE;
    CHECK(rejected);
    for (int i = 1; i < N; i += 2) lk_tensor_free(ts[i]);
}

static void make_bystander(void) { bystander = lkt_tensor2(bystander_values, 2, 3); }

LKT_MAIN("test_abi", make_bystander,
         TESTCASE(test_last_error_lifecycle),
         TESTCASE(test_default_threads),
         TESTCASE(test_abi_version),
         TESTCASE(test_status_strings),
         TESTCASE(test_dtype_names_and_info),
         TESTCASE(test_tensor_new_every_dtype),
         TESTCASE(test_tensor_ranks_and_empty),
         TESTCASE(test_tensor_from_f32_and_copies),
         TESTCASE(test_convert_f32),
         TESTCASE(test_convert_result_is_independent),
         TESTCASE(test_null_handles),
         TESTCASE(test_freed_handles),
         TESTCASE(test_forged_handles),
         TESTCASE(test_bad_constructor_arguments),
         TESTCASE(test_negative_n_values),
         TESTCASE(test_bad_query_arguments),
         TESTCASE(test_copy_buffer_too_small),
         TESTCASE(test_matmul_bad_input),
         TESTCASE(test_many_tensors))

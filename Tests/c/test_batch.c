/*
 * Batch contexts (lk_batch_*): sequences with different adapters evaluated in one step give the logits
 * of lk_context evaluating each alone (tiny f32 model: f32 arithmetic everywhere, only the summation
 * order differs); fork, truncate and remove; bad input is refused with a clear error and changes nothing.
 */
#include "lk_test.h"

static char tiny_path[4096];
static lk_model *M;
static int32_t VOCAB;

static void setup(void) {
    char dir[2048];
    snprintf(dir, sizeof dir, "%s", __FILE__);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0; else snprintf(dir, sizeof dir, ".");
    snprintf(tiny_path, sizeof tiny_path, "%s/../LoRAKitTests/Fixtures/model/tiny-llama-f32.gguf", dir);
    if (lk_model_load(tiny_path, NULL, &M) != LK_OK) {
        fprintf(stderr, "setup: lk_model_load(%s) failed: %s\n", tiny_path, lk_last_error());
        exit(2);
    }
    lk_model_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    if (lk_model_get_info(M, &info) != LK_OK) exit(2);
    VOCAB = info.n_vocab;
}

static lk_adapter *random_adapter(uint64_t seed, const char *targets, int32_t rank) {
    lk_lora_params lp;
    lk_lora_params_init(&lp);
    lp.rank = rank;
    lp.init = LK_LORA_INIT_RANDOM;
    lp.seed = seed;
    lp.targets = targets;
    lk_adapter *a = NULL;
    if (lk_adapter_create(M, &lp, &a) != LK_OK) {
        fprintf(stderr, "setup: lk_adapter_create failed: %s\n", lk_last_error());
        exit(2);
    }
    return a;
}

static lk_batch *new_batch(int32_t max_sequences) {
    lk_batch *b = NULL;
    if (lk_batch_new(M, max_sequences, 64, 2, &b) != LK_OK || !b) {
        fprintf(stderr, "setup: lk_batch_new failed: %s\n", lk_last_error());
        exit(2);
    }
    return b;
}

static lk_context *new_ctx(void) {
    lk_context_params cp;
    lk_context_params_init(&cp);
    cp.n_ctx = 64;
    cp.n_threads = 2;
    lk_context *c = NULL;
    if (lk_context_new(M, &cp, &c) != LK_OK) exit(2);
    return c;
}

static float max_abs_diff(const float *a, const float *b, int64_t n) {
    float d = 0;
    for (int64_t i = 0; i < n; i++) {
        float x = fabsf(a[i] - b[i]);
        if (!(x <= d)) d = x;  /* NaN counts as a difference */
    }
    return d;
}

static void test_mixed_step_matches_contexts(void) {
    lk_adapter *A = random_adapter(1, "q,v", 8), *B2 = random_adapter(2, "k,o,down", 4);
    lk_batch *b = new_batch(4);
    int32_t s[3];
    for (int i = 0; i < 3; i++) EXPECT_OK(lk_batch_add_sequence(b, &s[i]));
    CHECK(s[0] != s[1] && s[1] != s[2]);
    lk_adapter *one[1] = {A};
    const float one_scale[1] = {1.0f};
    lk_adapter *two[2] = {A, B2};
    const float two_scales[2] = {0.5f, -1.0f};
    EXPECT_OK(lk_batch_set_adapters(b, s[1], one, one_scale, 1));
    EXPECT_OK(lk_batch_set_adapters(b, s[2], two, two_scales, 2));
    /* Single-sequence references with the same adapters. */
    lk_context *c[3] = {new_ctx(), new_ctx(), new_ctx()};
    EXPECT_OK(lk_context_attach_adapter(c[1], A, 1.0f));
    EXPECT_OK(lk_context_attach_adapter(c[2], A, 0.5f));
    EXPECT_OK(lk_context_attach_adapter(c[2], B2, -1.0f));

    /* Step 1: prompts of 5, 2 and 9 tokens. */
    const int32_t toks[16] = {5, 77, 300, 2, 511, 42, 9, 130, 260, 17, 88, 401, 3, 250, 199, 64};
    const int64_t counts[3] = {5, 2, 9};
    float *out = malloc(sizeof(float) * (size_t)VOCAB * 3);
    float *ref = malloc(sizeof(float) * (size_t)VOCAB);
    EXPECT_OK(lk_batch_step(b, 3, s, toks, counts, out, (int64_t)VOCAB * 3));
    int64_t off = 0;
    for (int i = 0; i < 3; i++) {
        EXPECT_OK(lk_context_eval(c[i], toks + off, counts[i], LK_LOGITS_LAST, ref, VOCAB));
        float d = max_abs_diff(out + (int64_t)i * VOCAB, ref, VOCAB);
        CHECKF(d < 1e-3f, "prefill sequence %d: max |dlogit| %g", i, d);
        off += counts[i];
    }
    int32_t pos = -1;
    EXPECT_OK(lk_batch_position(b, s[2], &pos));
    CHECK(pos == 9);
    /* The adapters matter: sequence 1's logits differ from the plain context's. */
    EXPECT_OK(lk_context_reset(c[0]));
    EXPECT_OK(lk_context_eval(c[0], toks + 5, 2, LK_LOGITS_LAST, ref, VOCAB));
    CHECK(max_abs_diff(out + VOCAB, ref, VOCAB) > 1e-2f);
    EXPECT_OK(lk_context_reset(c[0]));
    EXPECT_OK(lk_context_eval(c[0], toks, 5, LK_LOGITS_LAST, ref, VOCAB));

    /* Fork sequence 2 (cache + adapters), truncate sequence 0 by two, then one decode step for all four
     * in reverse order. */
    int32_t f = -1;
    EXPECT_OK(lk_batch_fork(b, s[2], &f));
    EXPECT_OK(lk_batch_position(b, f, &pos));
    CHECK(pos == 9);
    EXPECT_OK(lk_batch_truncate(b, s[0], 3));
    lk_context *cf = new_ctx();
    EXPECT_OK(lk_context_attach_adapter(cf, A, 0.5f));
    EXPECT_OK(lk_context_attach_adapter(cf, B2, -1.0f));
    EXPECT_OK(lk_context_eval(cf, toks + 7, 9, LK_LOGITS_NONE, NULL, 0));
    /* c[0]: drop the last two positions the same way. */
    lk_context_reset(c[0]);
    EXPECT_OK(lk_context_eval(c[0], toks, 3, LK_LOGITS_NONE, NULL, 0));
    const int32_t seqs2[4] = {f, s[2], s[1], s[0]};
    const int32_t next[4] = {11, 12, 13, 14};
    const int64_t ones[4] = {1, 1, 1, 1};
    float *out4 = malloc(sizeof(float) * (size_t)VOCAB * 4);
    EXPECT_OK(lk_batch_step(b, 4, seqs2, next, ones, out4, (int64_t)VOCAB * 4));
    lk_context *refs[4] = {cf, c[2], c[1], c[0]};
    for (int i = 0; i < 4; i++) {
        EXPECT_OK(lk_context_eval(refs[i], &next[i], 1, LK_LOGITS_LAST, ref, VOCAB));
        float d = max_abs_diff(out4 + (int64_t)i * VOCAB, ref, VOCAB);
        CHECKF(d < 1e-3f, "decode input %d: max |dlogit| %g", i, d);
    }
    /* Live sequences, then a removal. */
    int32_t ids[8];
    int64_t n = -1;
    EXPECT_OK(lk_batch_sequences(b, ids, 8, &n));
    CHECK(n == 4);
    EXPECT_OK(lk_batch_remove_sequence(b, s[1]));
    EXPECT_OK(lk_batch_sequences(b, ids, 8, &n));
    CHECK(n == 3);
    for (int64_t i = 0; i < n; i++) CHECK(ids[i] != s[1]);
    EXPECT_STATUS(lk_batch_position(b, s[1], &pos), LK_ERR_INVALID_ARGUMENT, "no sequence");
    free(out); free(out4); free(ref);
    for (int i = 0; i < 3; i++) lk_context_free(c[i]);
    lk_context_free(cf);
    EXPECT_OK(lk_batch_free(b));
    lk_adapter_free(A);
    lk_adapter_free(B2);
}

static void test_bad_input_changes_nothing(void) {
    lk_batch *b = new_batch(2);
    int32_t s0 = -1, s1 = -1, x = -1, pos = -1;
    EXPECT_OK(lk_batch_add_sequence(b, &s0));
    EXPECT_OK(lk_batch_add_sequence(b, &s1));
    EXPECT_STATUS(lk_batch_add_sequence(b, &x), LK_ERR_LIMIT, "in use");
    EXPECT_STATUS(lk_batch_fork(b, s0, &x), LK_ERR_LIMIT, "in use");
    const int32_t toks[4] = {1, 2, 3, 4};
    const int64_t c31[2] = {3, 1};
    const int32_t both[2] = {s0, s1};
    float *out = malloc(sizeof(float) * (size_t)VOCAB * 2);
    EXPECT_OK(lk_batch_step(b, 2, both, toks, c31, out, (int64_t)VOCAB * 2));
    /* Each of these fails before anything is evaluated. */
    EXPECT_STATUS(lk_batch_step(b, 2, both, toks, c31, out, (int64_t)VOCAB * 2 - 1), LK_ERR_BUFFER_TOO_SMALL, "capacity");
    const int32_t twice[2] = {s0, s0};
    EXPECT_STATUS(lk_batch_step(b, 2, twice, toks, c31, out, (int64_t)VOCAB * 2), LK_ERR_INVALID_ARGUMENT, "twice");
    const int32_t unknown[2] = {s0, 99};
    EXPECT_STATUS(lk_batch_step(b, 2, unknown, toks, c31, out, (int64_t)VOCAB * 2), LK_ERR_INVALID_ARGUMENT, "no sequence 99");
    const int32_t bad_tok[4] = {1, 2, 3, VOCAB};
    EXPECT_STATUS(lk_batch_step(b, 2, both, bad_tok, c31, out, (int64_t)VOCAB * 2), LK_ERR_INVALID_ARGUMENT, "vocabulary");
    const int64_t c_zero[2] = {3, 0};
    EXPECT_STATUS(lk_batch_step(b, 2, both, toks, c_zero, out, (int64_t)VOCAB * 2), LK_ERR_INVALID_ARGUMENT, "n_tokens[1]");
    const int64_t c_over[2] = {62, 1};
    int32_t *many = calloc(64, sizeof(int32_t));
    EXPECT_STATUS(lk_batch_step(b, 2, both, many, c_over, out, (int64_t)VOCAB * 2), LK_ERR_INVALID_ARGUMENT, "overflow");
    free(many);
    EXPECT_STATUS(lk_batch_step(b, 3, both, toks, c31, out, (int64_t)VOCAB * 3), LK_ERR_INVALID_ARGUMENT, "n_seqs");
    EXPECT_STATUS(lk_batch_step(b, 2, NULL, toks, c31, out, (int64_t)VOCAB * 2), LK_ERR_INVALID_ARGUMENT, "seqs");
    EXPECT_OK(lk_batch_position(b, s0, &pos));
    CHECK(pos == 3);
    EXPECT_OK(lk_batch_position(b, s1, &pos));
    CHECK(pos == 1);
    EXPECT_STATUS(lk_batch_truncate(b, s0, 4), LK_ERR_INVALID_ARGUMENT, "outside");
    EXPECT_STATUS(lk_batch_truncate(b, -1, 0), LK_ERR_INVALID_ARGUMENT, "negative");
    EXPECT_STATUS(lk_batch_position(b, 7, &pos), LK_ERR_INVALID_ARGUMENT, "no sequence 7");
    EXPECT_STATUS(lk_batch_remove_sequence(b, 7), LK_ERR_INVALID_ARGUMENT, "no sequence 7");
    /* Adapters: NULL arrays, a non-finite scale, the same adapter twice, another model's adapter. */
    lk_adapter *A = random_adapter(3, "q,v", 2);
    lk_adapter *twiceA[2] = {A, A};
    const float sc[2] = {1.0f, 2.0f};
    const float nan_sc[1] = {NAN};
    EXPECT_STATUS(lk_batch_set_adapters(b, s0, NULL, sc, 1), LK_ERR_INVALID_ARGUMENT, "adapters");
    EXPECT_STATUS(lk_batch_set_adapters(b, s0, twiceA, NULL, 1), LK_ERR_INVALID_ARGUMENT, "scales");
    EXPECT_STATUS(lk_batch_set_adapters(b, s0, twiceA, nan_sc, 1), LK_ERR_INVALID_ARGUMENT, "scales[0]");
    EXPECT_STATUS(lk_batch_set_adapters(b, s0, twiceA, sc, 2), LK_ERR_INVALID_ARGUMENT, "twice");
    lk_model *other = NULL;
    EXPECT_OK(lk_model_load(tiny_path, NULL, &other));
    lk_lora_params lp;
    lk_lora_params_init(&lp);
    lk_adapter *AO = NULL;
    EXPECT_OK(lk_adapter_create(other, &lp, &AO));
    lk_adapter *ao[1] = {AO};
    EXPECT_STATUS(lk_batch_set_adapters(b, s0, ao, sc, 1), LK_ERR_INVALID_ARGUMENT, "another model");
    EXPECT_STATUS(lk_batch_set_adapters(b, 5, twiceA, sc, 1), LK_ERR_INVALID_ARGUMENT, "no sequence 5");
    /* Handles: NULL, freed, another kind. */
    EXPECT_STATUS(lk_batch_step(NULL, 2, both, toks, c31, out, (int64_t)VOCAB * 2), LK_ERR_INVALID_HANDLE, "NULL");
    lk_batch *gone = new_batch(1);
    EXPECT_OK(lk_batch_free(gone));
    EXPECT_STATUS(lk_batch_add_sequence(gone, &x), LK_ERR_INVALID_HANDLE, "not a live handle");
    EXPECT_STATUS(lk_batch_free(gone), LK_ERR_INVALID_HANDLE, "not a live handle");
    EXPECT_STATUS(lk_batch_add_sequence((lk_batch *)(void *)A, &x), LK_ERR_INVALID_HANDLE, "expected batch");
    EXPECT_OK(lk_batch_free(NULL));
    /* Sizes of lk_batch_sequences. */
    int64_t n = -1;
    EXPECT_STATUS(lk_batch_sequences(b, NULL, 0, &n), LK_ERR_BUFFER_TOO_SMALL, "capacity");
    CHECK(n == 2);
    EXPECT_OK(lk_batch_position(b, s0, &pos));
    CHECK(pos == 3);
    free(out);
    lk_adapter_free(A);
    lk_adapter_free(AO);
    lk_model_free(other);
    EXPECT_OK(lk_batch_free(b));
}

/* lk_batch_new_with_params: an f16 KV cache gives each sequence the logits of an lk_context with
 * kv_type LK_DTYPE_F16 (a 19-token prefill and decode steps, one sequence with an adapter, a fork);
 * defaults and bad fields. */
static void test_params_and_f16_cache(void) {
    lk_batch_params bp;
    lk_batch_params_init(&bp);
    CHECK(bp.struct_size == sizeof bp && bp.max_sequences == 8 && bp.n_ctx == 0 && bp.n_threads == 0 &&
          bp.kv_type == LK_DTYPE_F32);
    CHECK(lk_sizeof_batch_params() == (int64_t)sizeof(lk_batch_params));
    bp.max_sequences = 3;
    bp.n_ctx = 64;
    bp.n_threads = 2;
    bp.kv_type = LK_DTYPE_F16;
    lk_batch *b = NULL;
    EXPECT_OK(lk_batch_new_with_params(M, &bp, &b));
    lk_adapter *A = random_adapter(7, "q,v", 8);
    int32_t s[2];
    EXPECT_OK(lk_batch_add_sequence(b, &s[0]));
    EXPECT_OK(lk_batch_add_sequence(b, &s[1]));
    lk_adapter *one[1] = {A};
    const float one_scale[1] = {1.0f};
    EXPECT_OK(lk_batch_set_adapters(b, s[1], one, one_scale, 1));
    lk_context *c[3];
    for (int i = 0; i < 3; i++) {
        lk_context_params cp;
        lk_context_params_init(&cp);
        cp.n_ctx = 64;
        cp.n_threads = 2;
        cp.kv_type = LK_DTYPE_F16;
        EXPECT_OK(lk_context_new(M, &cp, &c[i]));
    }
    EXPECT_OK(lk_context_attach_adapter(c[1], A, 1.0f));
    EXPECT_OK(lk_context_attach_adapter(c[2], A, 1.0f));
    int32_t toks[24];
    for (int i = 0; i < 24; i++) toks[i] = (int32_t)((i * 37 + 5) % 500);
    const int64_t counts[2] = {4, 19};
    float *out = malloc(sizeof(float) * (size_t)VOCAB * 3);
    float *ref = malloc(sizeof(float) * (size_t)VOCAB);
    EXPECT_OK(lk_batch_step(b, 2, s, toks, counts, out, (int64_t)VOCAB * 2));
    EXPECT_OK(lk_context_eval(c[0], toks, 4, LK_LOGITS_LAST, ref, VOCAB));
    float d = max_abs_diff(out, ref, VOCAB);
    CHECKF(d < 1e-3f, "f16 prefill sequence 0: max |dlogit| %g", d);
    EXPECT_OK(lk_context_eval(c[1], toks + 4, 19, LK_LOGITS_LAST, ref, VOCAB));
    d = max_abs_diff(out + VOCAB, ref, VOCAB);
    CHECKF(d < 1e-3f, "f16 prefill sequence 1: max |dlogit| %g", d);
    EXPECT_OK(lk_context_eval(c[2], toks + 4, 19, LK_LOGITS_NONE, NULL, 0));
    int32_t f = -1;
    EXPECT_OK(lk_batch_fork(b, s[1], &f));
    const int32_t seqs[3] = {s[0], s[1], f};
    const int32_t next[3] = {11, 12, 13};
    const int64_t ones[3] = {1, 1, 1};
    EXPECT_OK(lk_batch_step(b, 3, seqs, next, ones, out, (int64_t)VOCAB * 3));
    for (int i = 0; i < 3; i++) {
        EXPECT_OK(lk_context_eval(c[i], &next[i], 1, LK_LOGITS_LAST, ref, VOCAB));
        d = max_abs_diff(out + (int64_t)i * VOCAB, ref, VOCAB);
        /* (The 23-row prefill ran through the GEMM, the contexts' shorter ones partly not: summation order.) */
        CHECKF(d < 1e-3f, "f16 decode input %d: max |dlogit| %g", i, d);
    }
    for (int i = 0; i < 3; i++) lk_context_free(c[i]);
    EXPECT_OK(lk_batch_free(b));
    lk_adapter_free(A);
    free(out); free(ref);

    /* Bad fields: named with params->, nothing created; NULL params: the defaults. */
    lk_batch *x = (lk_batch *)0x1;
    lk_batch_params_init(&bp);
    bp.kv_type = LK_DTYPE_Q8_0;
    EXPECT_STATUS(lk_batch_new_with_params(M, &bp, &x), LK_ERR_INVALID_ARGUMENT, "params->kv_type");
    lk_batch_params_init(&bp);
    bp.max_sequences = 0;
    EXPECT_STATUS(lk_batch_new_with_params(M, &bp, &x), LK_ERR_INVALID_ARGUMENT, "params->max_sequences");
    lk_batch_params_init(&bp);
    bp.struct_size = 0;
    EXPECT_STATUS(lk_batch_new_with_params(M, &bp, &x), LK_ERR_ABI, "struct_size");
    CHECK(x == (lk_batch *)0x1);
    EXPECT_STATUS(lk_batch_new(M, 2, -1, 1, &x), LK_ERR_INVALID_ARGUMENT, "n_ctx -1");
    x = NULL;
    EXPECT_OK(lk_batch_new_with_params(M, NULL, &x));
    int32_t ids[9];
    for (int i = 0; i < 8; i++) EXPECT_OK(lk_batch_add_sequence(x, &ids[i]));
    EXPECT_STATUS(lk_batch_add_sequence(x, &ids[8]), LK_ERR_LIMIT, "8 sequences");
    EXPECT_OK(lk_batch_free(x));
}

int main(int argc, char **argv) {
    static const lkt_case cases[] = {
        TESTCASE(test_mixed_step_matches_contexts),
        TESTCASE(test_bad_input_changes_nothing),
        TESTCASE(test_params_and_f16_cache),
    };
    return lkt_main(argc, argv, "test_batch", setup, cases, sizeof cases / sizeof cases[0]);
}

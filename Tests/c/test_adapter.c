/*
 * test_adapter.c — LoRA adapters through the installed header and library: load (PEFT folders, GGUF
 * LoRA), create, save, attach/detach/set_scale to contexts, merge to a GGUF file, and bad input.
 *
 * Expected logits come from PEFT itself: Tests/LoRAKitTests/Fixtures/lora/reference.json (see the
 * README there), read directly by a small scanner below (no values are produced by LoRAKit). The model
 * is the tiny random LLaMA Tests/LoRAKitTests/Fixtures/model/tiny-llama-f32.gguf (vocab 512). Tolerance
 * against PEFT: 2e-4 (the fixture README's figure for an F32 runtime; the JSON has 5 decimals).
 * With $LORAKIT_MODEL set (`make test-c`), an adapter made for that model must fail to load on the
 * tiny model.
 */
#include "lk_test.h"

#include <sys/stat.h>

#define VOCAB 512
#define PEFT_TOL 2e-4f

static char tiny_path[4096];
static char lora_dir[4096];
static void load_sequences(void);

static void setup(void) {
    char dir[2048];
    snprintf(dir, sizeof dir, "%s", __FILE__);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0; else snprintf(dir, sizeof dir, ".");
    const char *env = getenv("LORAKIT_TINY_MODEL");
    if (env && *env) snprintf(tiny_path, sizeof tiny_path, "%s", env);
    else snprintf(tiny_path, sizeof tiny_path, "%s/../LoRAKitTests/Fixtures/model/tiny-llama-f32.gguf", dir);
    snprintf(lora_dir, sizeof lora_dir, "%s/../LoRAKitTests/Fixtures/lora", dir);
    load_sequences();
}

/* ------------------------------------------------------------------------------------------------ */
/* Helpers                                                                                           */
/* ------------------------------------------------------------------------------------------------ */

static char *ref_json;

static const char *ref(void) {
    if (!ref_json) {
        char p[4200];
        snprintf(p, sizeof p, "%s/reference.json", lora_dir);
        ref_json = lk_read_file(p, NULL);
        if (!ref_json) { fprintf(stderr, "setup: cannot read %s\n", p); exit(2); }
    }
    return ref_json;
}

/* Parse the nested JSON number list starting at p ('['), flattening the numbers into out (capacity cap).
 * For each list at depth 2 (a sequence) that closes, ends[k] receives the count of numbers so far. */
static int64_t parse_nested(const char *p, float *out, int64_t cap, int64_t *ends, int *n_ends) {
    int depth = 0;
    int64_t n = 0;
    *n_ends = 0;
    for (;;) {
        char c = *p;
        if (c == 0) return -1;
        if (c == '[') { depth++; p++; continue; }
        if (c == ']') {
            if (depth == 2) ends[(*n_ends)++] = n;
            depth--; p++;
            if (depth == 0) return n;
            continue;
        }
        if (c == ',' || c == ' ' || c == '\n' || c == '\r' || c == '\t') { p++; continue; }
        char *end = NULL;
        double v = strtod(p, &end);
        if (end == p) return -1;
        if (n >= cap) return -1;
        out[n++] = (float)v;
        p = end;
    }
}

/* The reference sequences (token ids, no BOS). */
static int32_t seq_ids[2][64];
static int64_t seq_len[2];

static void load_sequences(void) {
    if (seq_len[0]) return;
    const char *p = strstr(ref(), "\"sequences\": [");
    if (!p) { fprintf(stderr, "setup: no sequences in reference.json\n"); exit(2); }
    float vals[128];
    int64_t ends[4];
    int ne = 0;
    int64_t n = parse_nested(strchr(p, '['), vals, 128, ends, &ne);
    if (n < 0 || ne != 2) { fprintf(stderr, "setup: cannot parse sequences\n"); exit(2); }
    int64_t start = 0;
    for (int s = 0; s < 2; s++) {
        seq_len[s] = ends[s] - start;
        for (int64_t i = 0; i < seq_len[s]; i++) seq_ids[s][i] = (int32_t)vals[start + i];
        start = ends[s];
    }
}

/* PEFT's logits for adapter `name`, field `key` ("logits", "logits_scale_0_5", "logits_merged"), sequence s:
 * seq_len[s] × VOCAB floats (malloc'ed). */
static float *ref_logits(const char *name, const char *key, int s) {
    load_sequences();
    char pat[256];
    const char *p = strstr(ref(), "\"adapters\"");
    snprintf(pat, sizeof pat, "\"%s\": {", name);
    p = p ? strstr(p, pat) : NULL;
    snprintf(pat, sizeof pat, "\"%s\": [", key);
    p = p ? strstr(p, pat) : NULL;
    if (!p) { fprintf(stderr, "setup: reference.json has no %s.%s\n", name, key); exit(2); }
    int64_t cap = (seq_len[0] + seq_len[1]) * VOCAB;
    float *all = malloc(sizeof(float) * (size_t)cap);
    int64_t ends[4];
    int ne = 0;
    int64_t n = parse_nested(strchr(p, '['), all, cap, ends, &ne);
    if (n != cap) { fprintf(stderr, "setup: %s.%s has %lld values, expected %lld\n", name, key, (long long)n, (long long)cap); exit(2); }
    float *out = malloc(sizeof(float) * (size_t)(seq_len[s] * VOCAB));
    memcpy(out, all + (s == 0 ? 0 : seq_len[0] * VOCAB), sizeof(float) * (size_t)(seq_len[s] * VOCAB));
    free(all);
    return out;
}

static lk_model *load_or_die(const char *path) {
    lk_model *m = NULL;
    if (lk_model_load(path, NULL, &m) != LK_OK || !m) {
        fprintf(stderr, "setup: lk_model_load(%s) failed: %s\n", path, lk_last_error());
        exit(2);
    }
    return m;
}

static lk_context *new_ctx(lk_model *m) {
    lk_context_params cp;
    lk_context_params_init(&cp);
    cp.n_ctx = 64;
    cp.n_threads = 2;
    lk_context *c = NULL;
    if (lk_context_new(m, &cp, &c) != LK_OK || !c) {
        fprintf(stderr, "setup: lk_context_new failed: %s\n", lk_last_error());
        exit(2);
    }
    return c;
}

static lk_adapter *load_adapter(lk_model *m, const char *name) {
    char p[4300];
    snprintf(p, sizeof p, "%s/%s", lora_dir, name);
    lk_adapter *a = NULL;
    lk_status s = lk_adapter_load(m, p, &a);
    if (s != LK_OK || !a) {
        fprintf(stderr, "setup: lk_adapter_load(%s) failed: %s\n", p, lk_last_error());
        exit(2);
    }
    return a;
}

/* All logits of sequence s from position 0 (malloc'ed, seq_len[s] × VOCAB). */
static float *eval_all(lk_context *c, int s) {
    load_sequences();
    int64_t n = seq_len[s] * VOCAB;
    float *out = malloc(sizeof(float) * (size_t)n);
    EXPECT_OK(lk_context_reset(c));
    EXPECT_OK(lk_context_eval(c, seq_ids[s], seq_len[s], LK_LOGITS_ALL, out, n));
    return out;
}

static float max_abs_diff(const float *a, const float *b, int64_t n) {
    float m = 0;
    for (int64_t i = 0; i < n; i++) {
        float d = fabsf(a[i] - b[i]);
        if (!(d <= m)) m = d;  /* NaN propagates */
    }
    return m;
}

static int same_bits(const float *a, const float *b, int64_t n) { return memcmp(a, b, sizeof(float) * (size_t)n) == 0; }

/* Compare ctx's logits for both sequences with PEFT's `key` logits of adapter `name`. */
static void check_against_peft(lk_context *c, const char *name, const char *key, const char *what) {
    for (int s = 0; s < 2; s++) {
        float *got = eval_all(c, s);
        float *want = ref_logits(name, key, s);
        float d = max_abs_diff(got, want, seq_len[s] * VOCAB);
        CHECKF(d <= PEFT_TOL, "%s: %s.%s sequence %d: max |Δ| %g > %g", what, name, key, s, d, PEFT_TOL);
        free(got);
        free(want);
    }
}

static char tmp_dir[256];

static const char *make_tmp(void) {
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/lorakit-adapter-XXXXXX");
    if (!mkdtemp(tmp_dir)) { fprintf(stderr, "setup: mkdtemp failed\n"); exit(2); }
    return tmp_dir;
}

static void remove_tmp(void) {
    if (tmp_dir[0]) {
        char cmd[400];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_dir);
        if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", tmp_dir);
    }
}

/* ------------------------------------------------------------------------------------------------ */
/* Tests                                                                                             */
/* ------------------------------------------------------------------------------------------------ */

static const char *peft_fixtures[] = {"r4_all", "rslora_qv", "patterns_all"};

static void test_peft_parity(void) {
    lk_model *m = load_or_die(tiny_path);
    for (int i = 0; i < 3; i++) {
        lk_adapter *a = load_adapter(m, peft_fixtures[i]);
        lk_context *c = new_ctx(m);
        EXPECT_OK(lk_context_attach_adapter(c, a, 1.0f));
        check_against_peft(c, peft_fixtures[i], "logits", "scale 1");
        EXPECT_OK(lk_context_set_adapter_scale(c, a, 0.5f));
        check_against_peft(c, peft_fixtures[i], "logits_scale_0_5", "set_scale 0.5");
        EXPECT_OK(lk_context_free(c));
        EXPECT_OK(lk_adapter_free(a));
    }
    EXPECT_OK(lk_model_free(m));
}

static void test_gguf_lora_parity(void) {
    lk_model *m = load_or_die(tiny_path);
    lk_adapter *a = load_adapter(m, "lora_a.gguf");
    lk_context *c = new_ctx(m);
    EXPECT_OK(lk_context_attach_adapter(c, a, 1.0f));
    check_against_peft(c, "r4_all", "logits", "lora_a.gguf");
    lk_context_free(c);
    lk_adapter_free(a);
    lk_model_free(m);
}

static void test_scale_zero_and_detach_are_bit_exact(void) {
    lk_model *m = load_or_die(tiny_path);
    lk_context *base_ctx = new_ctx(m);
    lk_context *c = new_ctx(m);
    lk_adapter *a = load_adapter(m, "r4_all");
    lk_adapter *b = load_adapter(m, "rslora_qv");
    for (int s = 0; s < 2; s++) {
        int64_t n = seq_len[s] * VOCAB;
        float *base = eval_all(base_ctx, s);
        EXPECT_OK(lk_context_attach_adapter(c, a, 0.0f));
        float *zero = eval_all(c, s);
        CHECKF(same_bits(base, zero, n), "sequence %d: scale 0 differs from base", s);
        EXPECT_OK(lk_context_set_adapter_scale(c, a, 1.0f));
        float *on = eval_all(c, s);
        CHECKF(max_abs_diff(base, on, n) > 0.01f, "sequence %d: the adapter has no effect", s);
        EXPECT_OK(lk_context_detach_adapter(c, a));
        float *off = eval_all(c, s);
        CHECKF(same_bits(base, off, n), "sequence %d: detach does not restore base", s);
        EXPECT_OK(lk_context_attach_adapter(c, a, 1.0f));
        EXPECT_OK(lk_context_attach_adapter(c, b, 0.7f));
        EXPECT_OK(lk_context_detach_all(c));
        float *off2 = eval_all(c, s);
        CHECKF(same_bits(base, off2, n), "sequence %d: detach_all does not restore base", s);
        free(base); free(zero); free(on); free(off); free(off2);
    }
    lk_adapter_free(a);
    lk_adapter_free(b);
    lk_context_free(c);
    lk_context_free(base_ctx);
    lk_model_free(m);
}

static void test_two_contexts_different_adapters(void) {
    lk_model *m = load_or_die(tiny_path);
    lk_adapter *a = load_adapter(m, "r4_all");
    lk_adapter *b = load_adapter(m, "patterns_all");
    lk_context *c1 = new_ctx(m), *c2 = new_ctx(m), *c3 = new_ctx(m);
    EXPECT_OK(lk_context_attach_adapter(c1, a, 1.0f));
    EXPECT_OK(lk_context_attach_adapter(c2, b, 1.0f));
    EXPECT_OK(lk_context_attach_adapter(c3, a, 1.0f));  /* one adapter on two contexts */
    /* The model and adapter handles may go first: contexts hold what they use. */
    EXPECT_OK(lk_adapter_free(a));
    EXPECT_OK(lk_model_free(m));
    check_against_peft(c1, "r4_all", "logits", "context 1");
    check_against_peft(c2, "patterns_all", "logits", "context 2");
    check_against_peft(c3, "r4_all", "logits", "context 3 (shared adapter)");
    check_against_peft(c1, "r4_all", "logits", "context 1 again");
    lk_context_free(c1);
    lk_context_free(c2);
    lk_context_free(c3);
    lk_adapter_free(b);
}

static void roundtrip(int32_t format, const char *file) {
    lk_model *m = load_or_die(tiny_path);
    lk_lora_params p;
    lk_lora_params_init(&p);
    CHECK(p.struct_size == sizeof p);
    CHECK(p.rank == 8 && p.alpha == 16.0f && p.use_rslora == 0 && p.targets == NULL && p.init == LK_LORA_INIT_PEFT);
    p.rank = 4;
    p.alpha = 6;
    p.use_rslora = 1;
    p.targets = "all-linear";
    p.init = LK_LORA_INIT_RANDOM;
    p.seed = 7;
    lk_adapter *a = NULL;
    EXPECT_OK(lk_adapter_create(m, &p, &a));
    char path[600];
    snprintf(path, sizeof path, "%s/%s", make_tmp(), file);
    EXPECT_OK(lk_adapter_save(a, path, format));
    lk_adapter *b = NULL;
    EXPECT_OK(lk_adapter_load(m, path, &b));
    lk_context *c1 = new_ctx(m), *c2 = new_ctx(m), *base_ctx = new_ctx(m);
    EXPECT_OK(lk_context_attach_adapter(c1, a, 1.0f));
    EXPECT_OK(lk_context_attach_adapter(c2, b, 1.0f));
    for (int s = 0; s < 2; s++) {
        int64_t n = seq_len[s] * VOCAB;
        float *x = eval_all(c1, s), *y = eval_all(c2, s), *base = eval_all(base_ctx, s);
        CHECKF(same_bits(x, y, n), "format %d sequence %d: reloaded adapter max |Δ| %g", format, s, max_abs_diff(x, y, n));
        CHECKF(max_abs_diff(x, base, n) > 0.01f, "format %d sequence %d: a random adapter has no effect", format, s);
        free(x); free(y); free(base);
    }
    /* PEFT initialisation: B = 0, so the logits are the base logits exactly. */
    lk_adapter *z = NULL;
    lk_lora_params_init(&p);
    EXPECT_OK(lk_adapter_create(m, &p, &z));
    lk_context *c3 = new_ctx(m);
    EXPECT_OK(lk_context_attach_adapter(c3, z, 1.0f));
    float *zl = eval_all(c3, 1), *bl = eval_all(base_ctx, 1);
    CHECK(same_bits(zl, bl, seq_len[1] * VOCAB));
    free(zl); free(bl);
    EXPECT_OK(lk_adapter_create(m, NULL, &z));  /* NULL params = defaults */
    lk_adapter_free(z);
    lk_context_free(c1); lk_context_free(c2); lk_context_free(c3); lk_context_free(base_ctx);
    lk_adapter_free(a); lk_adapter_free(b);
    lk_model_free(m);
    remove_tmp();
}

static void test_create_save_load_peft(void) { roundtrip(LK_ADAPTER_PEFT, "peft_dir"); }
static void test_create_save_load_gguf(void) { roundtrip(LK_ADAPTER_GGUF, "lora.gguf"); }

static void test_merge_to_file(void) {
    lk_model *m = load_or_die(tiny_path);
    lk_adapter *a = load_adapter(m, "r4_all");
    lk_adapter *b = load_adapter(m, "rslora_qv");
    const char *dir = make_tmp();
    char path[600];

    /* One adapter: the merged file matches PEFT's merge_and_unload logits. */
    snprintf(path, sizeof path, "%s/merged1.gguf", dir);
    lk_adapter *one[1] = {a};
    float one_s[1] = {1.0f};
    EXPECT_OK(lk_model_merge_to_file(m, one, one_s, 1, LK_DTYPE_F32, path));
    lk_model *mm = load_or_die(path);
    lk_context *mc = new_ctx(mm);
    check_against_peft(mc, "r4_all", "logits_merged", "merged file");
    lk_context_free(mc);
    lk_model_free(mm);

    /* Two adapters with scales, out_type -1 (= f32 for this model): same as attached, 1e-4. */
    snprintf(path, sizeof path, "%s/merged2.gguf", dir);
    lk_adapter *two[2] = {a, b};
    float two_s[2] = {0.8f, -0.5f};
    EXPECT_OK(lk_model_merge_to_file(m, two, two_s, 2, -1, path));
    mm = load_or_die(path);
    mc = new_ctx(mm);
    lk_context *c = new_ctx(m);
    EXPECT_OK(lk_context_attach_adapter(c, a, 0.8f));
    EXPECT_OK(lk_context_attach_adapter(c, b, -0.5f));
    for (int s = 0; s < 2; s++) {
        float *x = eval_all(c, s), *y = eval_all(mc, s);
        float d = max_abs_diff(x, y, seq_len[s] * VOCAB);
        CHECKF(d <= 1e-4f, "sequence %d: merged vs attached max |Δ| %g", s, d);
        free(x); free(y);
    }
    lk_model_info info = {.struct_size = sizeof info};
    EXPECT_OK(lk_model_get_info(mm, &info));
    CHECK(info.n_vocab == VOCAB);
    lk_context_free(mc);
    lk_model_free(mm);

    /* F16 and Q8_0 outputs load and stay close to the attached logits: within rounding of the weights
     * (the tiny random model's logits have std 3.3; Q8_0 of its weights moves them by up to ~0.2), and far
     * closer than the base model (the adapters move the logits by several units). */
    int32_t types[2] = {LK_DTYPE_F16, LK_DTYPE_Q8_0};
    float tol[2] = {0.02f, 0.5f};
    float *base_ctx_logits = NULL;
    {
        lk_context *bc = new_ctx(m);
        base_ctx_logits = eval_all(bc, 1);
        lk_context_free(bc);
    }
    for (int t = 0; t < 2; t++) {
        snprintf(path, sizeof path, "%s/merged_t%d.gguf", dir, t);
        EXPECT_OK(lk_model_merge_to_file(m, two, two_s, 2, types[t], path));
        mm = load_or_die(path);
        mc = new_ctx(mm);
        float *x = eval_all(c, 1), *y = eval_all(mc, 1);
        float d = max_abs_diff(x, y, seq_len[1] * VOCAB);
        float effect = max_abs_diff(x, base_ctx_logits, seq_len[1] * VOCAB);
        printf("    out_type %s: merged vs attached max |Δ| %g (adapters' effect %g)\n", lk_dtype_name(types[t]), d, effect);
        CHECKF(d <= tol[t], "out_type %d: merged vs attached max |Δ| %g > %g", types[t], d, tol[t]);
        CHECKF(d < effect / 5, "out_type %d: merged vs attached max |Δ| %g is not small beside the effect %g", types[t], d, effect);
        free(x); free(y);
        lk_context_free(mc);
        lk_model_free(mm);
    }
    free(base_ctx_logits);
    lk_context_free(c);
    lk_adapter_free(a);
    lk_adapter_free(b);
    lk_model_free(m);
    remove_tmp();
}

static void test_bad_input(void) {
    lk_model *m = load_or_die(tiny_path);
    lk_model *other = load_or_die(tiny_path);  /* same file, another lk_model */
    lk_context *c = new_ctx(m);
    lk_adapter *a = load_adapter(m, "r4_all");
    lk_adapter *foreign = load_adapter(other, "r4_all");
    lk_adapter *out = NULL;
    char p[4400];
    snprintf(p, sizeof p, "%s/r4_all", lora_dir);

    CHECK(lk_sizeof_lora_params() == (int64_t)sizeof(lk_lora_params));

    /* NULLs and wrong kinds. */
    EXPECT_STATUS(lk_adapter_load(NULL, p, &out), LK_ERR_INVALID_HANDLE, "model");
    EXPECT_STATUS(lk_adapter_load(m, NULL, &out), LK_ERR_INVALID_ARGUMENT, "path");
    EXPECT_STATUS(lk_adapter_load(m, p, NULL), LK_ERR_INVALID_ARGUMENT, "out");
    EXPECT_STATUS(lk_adapter_load(m, "", &out), LK_ERR_INVALID_ARGUMENT, "path");
    EXPECT_STATUS(lk_adapter_load((lk_model *)c, p, &out), LK_ERR_INVALID_HANDLE, "expected model");
    EXPECT_STATUS(lk_adapter_create(NULL, NULL, &out), LK_ERR_INVALID_HANDLE, "model");
    EXPECT_STATUS(lk_adapter_create(m, NULL, NULL), LK_ERR_INVALID_ARGUMENT, "out");
    EXPECT_STATUS(lk_adapter_save(NULL, "/tmp/x", 0), LK_ERR_INVALID_HANDLE, "adapter");
    EXPECT_STATUS(lk_adapter_save(a, NULL, 0), LK_ERR_INVALID_ARGUMENT, "path");
    EXPECT_STATUS(lk_adapter_save(a, "/tmp/x", 2), LK_ERR_INVALID_ARGUMENT, "format");
    EXPECT_STATUS(lk_adapter_save((lk_adapter *)m, "/tmp/x", 0), LK_ERR_INVALID_HANDLE, "expected adapter");
    EXPECT_STATUS(lk_context_attach_adapter(NULL, a, 1), LK_ERR_INVALID_HANDLE, "ctx");
    EXPECT_STATUS(lk_context_attach_adapter(c, NULL, 1), LK_ERR_INVALID_HANDLE, "adapter");
    EXPECT_STATUS(lk_context_attach_adapter((lk_context *)a, a, 1), LK_ERR_INVALID_HANDLE, "expected context");
    EXPECT_STATUS(lk_context_attach_adapter(c, (lk_adapter *)c, 1), LK_ERR_INVALID_HANDLE, "expected adapter");
    EXPECT_STATUS(lk_context_detach_adapter(c, NULL), LK_ERR_INVALID_HANDLE, "adapter");
    EXPECT_STATUS(lk_context_detach_adapter(NULL, a), LK_ERR_INVALID_HANDLE, "ctx");
    EXPECT_STATUS(lk_context_set_adapter_scale(NULL, a, 1), LK_ERR_INVALID_HANDLE, "ctx");
    EXPECT_STATUS(lk_context_detach_all(NULL), LK_ERR_INVALID_HANDLE, "ctx");
    EXPECT_STATUS(lk_context_detach_all((lk_context *)m), LK_ERR_INVALID_HANDLE, "expected context");
    EXPECT_OK(lk_adapter_free(NULL));
    EXPECT_STATUS(lk_adapter_free((lk_adapter *)m), LK_ERR_INVALID_HANDLE, "expected adapter");
    lk_lora_params_init(NULL);  /* no-op */

    /* Scales: NaN/Inf rejected with nothing changed. */
    float *base = eval_all(c, 0);
    int64_t n = seq_len[0] * VOCAB;
    EXPECT_STATUS(lk_context_attach_adapter(c, a, NAN), LK_ERR_INVALID_ARGUMENT, "scale");
    EXPECT_STATUS(lk_context_attach_adapter(c, a, INFINITY), LK_ERR_INVALID_ARGUMENT, "scale");
    float *x = eval_all(c, 0);
    CHECK(same_bits(base, x, n));
    free(x);
    EXPECT_STATUS(lk_context_set_adapter_scale(c, a, 1), LK_ERR_INVALID_ARGUMENT, "not attached");
    EXPECT_STATUS(lk_context_detach_adapter(c, a), LK_ERR_INVALID_ARGUMENT, "not attached");
    EXPECT_OK(lk_context_attach_adapter(c, a, 0));
    EXPECT_STATUS(lk_context_attach_adapter(c, a, 1), LK_ERR_INVALID_ARGUMENT, "already attached");
    EXPECT_STATUS(lk_context_set_adapter_scale(c, a, NAN), LK_ERR_INVALID_ARGUMENT, "scale");
    EXPECT_STATUS(lk_context_set_adapter_scale(c, a, -INFINITY), LK_ERR_INVALID_ARGUMENT, "scale");
    x = eval_all(c, 0);
    CHECK(same_bits(base, x, n));  /* still scale 0 */
    free(x);
    EXPECT_OK(lk_context_detach_adapter(c, a));

    /* An adapter of another model (even of the same file). */
    EXPECT_STATUS(lk_context_attach_adapter(c, foreign, 1), LK_ERR_INVALID_ARGUMENT, "another model");

    /* Files: missing path, corrupt adapter_config.json, a model file. */
    EXPECT_STATUS(lk_adapter_load(m, "/nonexistent/adapter", &out), LK_ERR_IO, "/nonexistent/adapter");
    const char *dir = make_tmp();
    char cfg[600], st[600], src[4500];
    snprintf(cfg, sizeof cfg, "%s/adapter_config.json", dir);
    snprintf(st, sizeof st, "%s/adapter_model.safetensors", dir);
    snprintf(src, sizeof src, "%s/r4_all/adapter_model.safetensors", lora_dir);
    size_t len = 0;
    char *bytes = lk_read_file(src, &len);
    CHECK(bytes && lk_write_file(st, bytes, len) == 0);
    free(bytes);
    const char *bad_cfg = "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": ";
    CHECK(lk_write_file(cfg, bad_cfg, strlen(bad_cfg)) == 0);
    EXPECT_STATUS(lk_adapter_load(m, dir, &out), LK_ERR_FORMAT, "adapter_config.json");
    const char *not_lora = "{\"peft_type\": \"PREFIX_TUNING\"}";
    CHECK(lk_write_file(cfg, not_lora, strlen(not_lora)) == 0);
    EXPECT_STATUS(lk_adapter_load(m, dir, &out), LK_ERR_UNSUPPORTED, "PREFIX_TUNING");
    lk_status s = lk_adapter_load(m, tiny_path, &out);  /* a model, not an adapter */
    CHECKF(s < 0, "loading a model file as an adapter returned %d", s);
    CHECK(strlen(lk_last_error()) > 0);
    remove_tmp();

    /* lk_lora_params. */
    lk_lora_params lp;
    lk_lora_params_init(&lp);
    lp.struct_size = 0;
    EXPECT_STATUS(lk_adapter_create(m, &lp, &out), LK_ERR_ABI, "lk_lora_params");
    lk_lora_params_init(&lp); lp.rank = 0;
    EXPECT_STATUS(lk_adapter_create(m, &lp, &out), LK_ERR_INVALID_ARGUMENT, "rank");
    lk_lora_params_init(&lp); lp.alpha = NAN;
    EXPECT_STATUS(lk_adapter_create(m, &lp, &out), LK_ERR_INVALID_ARGUMENT, "alpha");
    lk_lora_params_init(&lp); lp.use_rslora = 2;
    EXPECT_STATUS(lk_adapter_create(m, &lp, &out), LK_ERR_INVALID_ARGUMENT, "use_rslora");
    lk_lora_params_init(&lp); lp.targets = "q,bogus";
    EXPECT_STATUS(lk_adapter_create(m, &lp, &out), LK_ERR_INVALID_ARGUMENT, "bogus");
    lk_lora_params_init(&lp); lp.targets = "";
    EXPECT_STATUS(lk_adapter_create(m, &lp, &out), LK_ERR_INVALID_ARGUMENT, "targets");
    lk_lora_params_init(&lp); lp.dropout = 1;
    EXPECT_STATUS(lk_adapter_create(m, &lp, &out), LK_ERR_INVALID_ARGUMENT, "dropout");
    lk_lora_params_init(&lp); lp.init = 3;
    EXPECT_STATUS(lk_adapter_create(m, &lp, &out), LK_ERR_INVALID_ARGUMENT, "init");

    /* Merge. */
    lk_adapter *list[2] = {a, a};
    float sc[2] = {1, 1};
    EXPECT_STATUS(lk_model_merge_to_file(NULL, list, sc, 1, -1, "/tmp/x.gguf"), LK_ERR_INVALID_HANDLE, "model");
    EXPECT_STATUS(lk_model_merge_to_file(m, NULL, sc, 1, -1, "/tmp/x.gguf"), LK_ERR_INVALID_ARGUMENT, "adapters");
    EXPECT_STATUS(lk_model_merge_to_file(m, list, NULL, 1, -1, "/tmp/x.gguf"), LK_ERR_INVALID_ARGUMENT, "scales");
    EXPECT_STATUS(lk_model_merge_to_file(m, list, sc, 0, -1, "/tmp/x.gguf"), LK_ERR_INVALID_ARGUMENT, "n 0");
    EXPECT_STATUS(lk_model_merge_to_file(m, list, sc, -3, -1, "/tmp/x.gguf"), LK_ERR_INVALID_ARGUMENT, "n -3");
    EXPECT_STATUS(lk_model_merge_to_file(m, list, sc, 1, -1, NULL), LK_ERR_INVALID_ARGUMENT, "path");
    EXPECT_STATUS(lk_model_merge_to_file(m, list, sc, 1, LK_DTYPE_BF16, "/tmp/x.gguf"), LK_ERR_INVALID_ARGUMENT, "out_type");
    EXPECT_STATUS(lk_model_merge_to_file(m, list, sc, 1, 99, "/tmp/x.gguf"), LK_ERR_INVALID_ARGUMENT, "out_type");
    EXPECT_STATUS(lk_model_merge_to_file(m, list, sc, 2, -1, "/tmp/x.gguf"), LK_ERR_INVALID_ARGUMENT, "adapters[1]");
    sc[0] = NAN;
    EXPECT_STATUS(lk_model_merge_to_file(m, list, sc, 1, -1, "/tmp/x.gguf"), LK_ERR_INVALID_ARGUMENT, "scales[0]");
    sc[0] = 1;
    lk_adapter *fl[1] = {foreign};
    EXPECT_STATUS(lk_model_merge_to_file(m, fl, sc, 1, -1, "/tmp/x.gguf"), LK_ERR_INVALID_ARGUMENT, "adapters[0]");
    lk_adapter *nl[1] = {NULL};
    EXPECT_STATUS(lk_model_merge_to_file(m, nl, sc, 1, -1, "/tmp/x.gguf"), LK_ERR_INVALID_HANDLE, "adapters[0]");
    EXPECT_STATUS(lk_model_merge_to_file(m, list, sc, 1, -1, "/nonexistent/dir/x.gguf"), LK_ERR_IO, NULL);

    /* Freed handles. */
    EXPECT_OK(lk_adapter_free(foreign));
    EXPECT_STATUS(lk_adapter_free(foreign), LK_ERR_INVALID_HANDLE, "adapter");
    EXPECT_STATUS(lk_context_attach_adapter(c, foreign, 1), LK_ERR_INVALID_HANDLE, "adapter");
    EXPECT_STATUS(lk_adapter_save(foreign, "/tmp/x", 0), LK_ERR_INVALID_HANDLE, "adapter");
    lk_adapter *fr[1] = {foreign};
    EXPECT_STATUS(lk_model_merge_to_file(m, fr, sc, 1, -1, "/tmp/x.gguf"), LK_ERR_INVALID_HANDLE, "adapters[0]");

    /* An adapter freed while attached stays attached until detach_all. */
    EXPECT_OK(lk_context_attach_adapter(c, a, 1));
    float *on = eval_all(c, 0);
    EXPECT_OK(lk_adapter_free(a));
    x = eval_all(c, 0);
    CHECK(same_bits(on, x, n));
    free(x);
    EXPECT_STATUS(lk_context_detach_adapter(c, a), LK_ERR_INVALID_HANDLE, "adapter");
    EXPECT_OK(lk_context_detach_all(c));
    x = eval_all(c, 0);
    CHECK(same_bits(base, x, n));
    free(x); free(on); free(base);

    lk_context_free(c);
    lk_model_free(m);
    lk_model_free(other);
}

static void test_real_model_adapter_on_tiny_model(void) {
    const char *real = getenv("LORAKIT_MODEL");
    if (!real || !*real) SKIP("SKIPPED: LORAKIT_MODEL not set (run `make model`)");
    lk_model *big = load_or_die(real);
    lk_model *m = load_or_die(tiny_path);
    lk_adapter *a = NULL;
    lk_lora_params p;
    lk_lora_params_init(&p);
    p.rank = 2;
    EXPECT_OK(lk_adapter_create(big, &p, &a));
    char path[600];
    snprintf(path, sizeof path, "%s/big_peft", make_tmp());
    EXPECT_OK(lk_adapter_save(a, path, LK_ADAPTER_PEFT));
    lk_adapter *out = NULL;
    EXPECT_STATUS(lk_adapter_load(m, path, &out), LK_ERR_SHAPE, "lora_A");
    CHECK(out == NULL);
    snprintf(path, sizeof path, "%s/big.gguf", tmp_dir);
    EXPECT_OK(lk_adapter_save(a, path, LK_ADAPTER_GGUF));
    EXPECT_STATUS(lk_adapter_load(m, path, &out), LK_ERR_SHAPE, NULL);
    /* And attaching it to a context of the tiny model. */
    lk_context *c = new_ctx(m);
    EXPECT_STATUS(lk_context_attach_adapter(c, a, 1), LK_ERR_INVALID_ARGUMENT, "another model");
    lk_context_free(c);
    lk_adapter_free(a);
    lk_model_free(m);
    lk_model_free(big);
    remove_tmp();
}

LKT_MAIN("test_adapter", setup,
         TESTCASE(test_peft_parity),
         TESTCASE(test_gguf_lora_parity),
         TESTCASE(test_scale_zero_and_detach_are_bit_exact),
         TESTCASE(test_two_contexts_different_adapters),
         TESTCASE(test_create_save_load_peft),
         TESTCASE(test_create_save_load_gguf),
         TESTCASE(test_merge_to_file),
         TESTCASE(test_bad_input),
         TESTCASE(test_real_model_adapter_on_tiny_model))

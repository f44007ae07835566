/*
 * test_model.c — models, tokenizer, chat templates, contexts and generation through the installed
 * header and library.
 *
 * Two models:
 * - the tiny random LLaMA (Tests/LoRAKitTests/Fixtures/model/tiny-llama-f32.gguf, no tokenizer): info,
 *   metadata, eval/eval_embeddings, generation of ids, every kind of bad input, struct_size handling;
 *   tokenizer and chat calls must fail with a clear error. Found through $LORAKIT_TINY_MODEL or next to
 *   this source file.
 * - SmolLM2-135M-Instruct Q4_1 from $LORAKIT_MODEL (`make model`; `make test-c` passes it): info,
 *   tokenizer, chat template, greedy generation, streaming, stop strings, threads. Without it these
 *   tests print "SKIPPED ... LORAKIT_MODEL not set" and count as skipped.
 */
#include "lk_test.h"

#include <stddef.h>

#include <pthread.h>
#include <math.h>
#include <unistd.h>

/* ------------------------------------------------------------------------------------------------ */
/* Helpers                                                                                           */
/* ------------------------------------------------------------------------------------------------ */

static char tiny_path[4096];

static void setup(void) {
    const char *env = getenv("LORAKIT_TINY_MODEL");
    if (env && *env) {
        snprintf(tiny_path, sizeof tiny_path, "%s", env);
        return;
    }
    /* run.sh compiles this file by absolute path, so __FILE__ locates the fixtures. */
    char dir[2048];
    snprintf(dir, sizeof dir, "%s", __FILE__);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0; else snprintf(dir, sizeof dir, ".");
    snprintf(tiny_path, sizeof tiny_path, "%s/../LoRAKitTests/Fixtures/model/tiny-llama-f32.gguf", dir);
}

static lk_model *load_or_die(const char *path) {
    lk_model *m = NULL;
    lk_status s = lk_model_load(path, NULL, &m);
    if (s != LK_OK || !m) {
        fprintf(stderr, "setup: lk_model_load(%s) failed: %s\n", path, lk_last_error());
        exit(2);
    }
    return m;
}

static lk_model *tiny(void) { return load_or_die(tiny_path); }

static lk_context *new_ctx(lk_model *m, int32_t n_ctx, int32_t n_threads) {
    lk_context_params cp;
    lk_context_params_init(&cp);
    cp.n_ctx = n_ctx;
    cp.n_threads = n_threads;
    lk_context *c = NULL;
    lk_status s = lk_context_new(m, &cp, &c);
    if (s != LK_OK || !c) {
        fprintf(stderr, "setup: lk_context_new failed: %s\n", lk_last_error());
        exit(2);
    }
    return c;
}

static int32_t position_of(lk_context *c) {
    int32_t p = -12345;
    EXPECT_OK(lk_context_position(c, &p));
    return p;
}

static int32_t argmax(const float *v, int64_t n) {
    int32_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (v[i] > v[best]) best = (int32_t)i;
    return best;
}

#define REAL_MODEL_OR_SKIP(var)                                                                       \
    const char *var = getenv("LORAKIT_MODEL");                                                        \
    if (!var || !*var)                                                                                \
        SKIP("SKIPPED %s: LORAKIT_MODEL not set (run `make model`, or set it to "                     \
             "SmolLM2-135M-Instruct.Q4_1.gguf)", lkt_cur_name)

static lk_generate_params greedy_params(int32_t max_tokens, lk_sampler_params *sp) {
    lk_sampler_params_init(sp);
    sp->temperature = 0;
    lk_generate_params gp;
    lk_generate_params_init(&gp);
    gp.max_tokens = max_tokens;
    gp.sampler = sp;
    return gp;
}

/* Tokenize with a generous buffer (aborts on failure: setup only). */
static int64_t tok(lk_model *m, const char *text, int32_t *ids, int64_t cap) {
    int64_t n = 0;
    lk_status s = lk_tokenize(m, text, (int64_t)strlen(text), 0, 1, ids, cap, &n);
    if (s != LK_OK) {
        fprintf(stderr, "setup: lk_tokenize(\"%s\") failed: %s\n", text, lk_last_error());
        exit(2);
    }
    return n;
}

/* ------------------------------------------------------------------------------------------------ */
/* Layout and defaults                                                                               */
/* ------------------------------------------------------------------------------------------------ */

static void test_struct_sizes_match_c(void) {
    CHECKF(lk_sizeof_model_params() == (int64_t)sizeof(lk_model_params), "%lld vs %zu", (long long)lk_sizeof_model_params(), sizeof(lk_model_params));
    CHECKF(lk_sizeof_model_info() == (int64_t)sizeof(lk_model_info), "%lld vs %zu", (long long)lk_sizeof_model_info(), sizeof(lk_model_info));
    CHECKF(lk_sizeof_context_params() == (int64_t)sizeof(lk_context_params), "%lld vs %zu", (long long)lk_sizeof_context_params(), sizeof(lk_context_params));
    CHECKF(lk_sizeof_sampler_params() == (int64_t)sizeof(lk_sampler_params), "%lld vs %zu", (long long)lk_sizeof_sampler_params(), sizeof(lk_sampler_params));
    CHECKF(lk_sizeof_generate_params() == (int64_t)sizeof(lk_generate_params), "%lld vs %zu", (long long)lk_sizeof_generate_params(), sizeof(lk_generate_params));
    CHECKF(lk_sizeof_generate_result() == (int64_t)sizeof(lk_generate_result), "%lld vs %zu", (long long)lk_sizeof_generate_result(), sizeof(lk_generate_result));
    CHECKF(lk_sizeof_chat_message() == (int64_t)sizeof(lk_chat_message), "%lld vs %zu", (long long)lk_sizeof_chat_message(), sizeof(lk_chat_message));
}

static void test_params_init_defaults(void) {
    lk_model_params mp;
    memset(&mp, 0xAB, sizeof mp);
    lk_model_params_init(&mp);
    CHECK(mp.struct_size == sizeof mp && mp.reserved == 0);

    lk_context_params cp;
    memset(&cp, 0xAB, sizeof cp);
    lk_context_params_init(&cp);
    CHECK(cp.struct_size == sizeof cp && cp.n_ctx == 0 && cp.n_batch == 0 && cp.n_threads == 0);

    lk_sampler_params sp;
    memset(&sp, 0xAB, sizeof sp);
    lk_sampler_params_init(&sp);
    CHECK(sp.struct_size == sizeof sp);
    CHECK(sp.temperature == 0.8f && sp.top_k == 40 && sp.top_p == 0.95f && sp.min_p == 0.05f);
    CHECK(sp.repeat_penalty == 1.0f && sp.repeat_last_n == 64 && sp.seed == 0);

    lk_generate_params gp;
    memset(&gp, 0xAB, sizeof gp);
    lk_generate_params_init(&gp);
    CHECK(gp.struct_size == sizeof gp && gp.max_tokens == 128 && gp.sampler == NULL && gp.stop == NULL);
    CHECK(gp.n_stop == 0 && gp.stop_at_eos == 1 && gp.callback == NULL && gp.user_data == NULL);

    /* NULL is a no-op, not a crash. */
    lk_model_params_init(NULL);
    lk_context_params_init(NULL);
    lk_sampler_params_init(NULL);
    lk_generate_params_init(NULL);
}

/* lk_<x>_params_init_sized(p, size) writes the defaults into the first `size` bytes only (clamped to the
 * library's struct; nothing below the struct's first version), and the function named lk_<x>_params_init
 * (for programs built before the header's macro of that name) fills the first version, which for these
 * structs is the whole struct. `check` tests a default field of the struct at `q`. */
#define CHECK_INIT_SIZED(T, check)                                                                    \
    do {                                                                                              \
        unsigned char raw[sizeof(T) + 16];                                                            \
        T *q = (T *)(void *)raw;                                                                      \
        int untouched = 1;                                                                            \
        memset(raw, 0xAB, sizeof raw);                                                                \
        T##_init_sized(q, sizeof raw); /* larger than the library's: clamped */                       \
        CHECKF(q->struct_size == sizeof(T) && (check), #T ": clamped init wrote struct_size %u", (unsigned)q->struct_size); \
        for (size_t i = sizeof(T); i < sizeof raw; i++) untouched &= raw[i] == 0xAB;                  \
        CHECKF(untouched, #T ": the clamped init wrote past the library's struct");                   \
        memset(raw, 0xAB, sizeof raw);                                                                \
        (T##_init)(q); /* the function behind the macro's name */                                     \
        CHECKF(q->struct_size == sizeof(T) && (check), #T ": the old init wrote struct_size %u", (unsigned)q->struct_size); \
        for (size_t i = sizeof(T); i < sizeof raw; i++) untouched &= raw[i] == 0xAB;                  \
        CHECKF(untouched, #T ": the old init wrote past the first version");                          \
        memset(raw, 0xAB, sizeof raw);                                                                \
        T##_init_sized(q, sizeof(T) - 1); /* below the first version: nothing */                      \
        for (size_t i = 0; i < sizeof raw; i++) untouched &= raw[i] == 0xAB;                          \
        CHECKF(untouched, #T ": a size below the first version wrote something");                     \
        T##_init_sized(q, 0);                                                                         \
        for (size_t i = 0; i < sizeof raw; i++) untouched &= raw[i] == 0xAB;                          \
        CHECKF(untouched, #T ": size 0 wrote something");                                             \
        T##_init_sized(NULL, sizeof(T)); /* no-op */                                                  \
    } while (0)

/* For a struct `T` that grew after its first version (which ended at field `first_new`): the clamped init
 * fills the whole struct (`check_full`), the old init function only the first version (`check_first`),
 * and a size below the first version writes nothing. */
#define CHECK_INIT_GROWN(T, first_new, check_full, check_first)                                       \
    do {                                                                                              \
        const size_t first = offsetof(T, first_new);                                                  \
        unsigned char raw[sizeof(T) + 16];                                                            \
        T *q = (T *)(void *)raw;                                                                      \
        int untouched = 1;                                                                            \
        memset(raw, 0xAB, sizeof raw);                                                                \
        T##_init_sized(q, sizeof raw);                                                                \
        CHECKF(q->struct_size == sizeof(T) && (check_full), #T ": clamped init wrote struct_size %u", (unsigned)q->struct_size); \
        for (size_t i = sizeof(T); i < sizeof raw; i++) untouched &= raw[i] == 0xAB;                  \
        CHECKF(untouched, #T ": the clamped init wrote past the library's struct");                   \
        memset(raw, 0xAB, sizeof raw);                                                                \
        (T##_init)(q);                                                                                \
        CHECKF(q->struct_size == first && (check_first), #T ": the old init wrote struct_size %u", (unsigned)q->struct_size); \
        for (size_t i = first; i < sizeof raw; i++) untouched &= raw[i] == 0xAB;                      \
        CHECKF(untouched, #T ": the old init wrote past the first version");                          \
        T##_init_sized(q, first - 1);                                                                 \
        CHECKF(q->struct_size == first, #T ": a size below the first version wrote something");      \
    } while (0)

static void test_params_init_sized(void) {
    CHECK_INIT_SIZED(lk_model_params, q->reserved == 0);
    CHECK_INIT_SIZED(lk_sampler_params, q->temperature == 0.8f && q->top_k == 40 && q->repeat_last_n == 64);
    CHECK_INIT_SIZED(lk_generate_params, q->max_tokens == 128 && q->stop_at_eos == 1 && q->sampler == NULL);
    /* Structs that grew: the old init (the function behind the macro's name) fills the first version only. */
    CHECK_INIT_GROWN(lk_context_params, kv_type, q->n_ctx == 0 && q->n_threads == 0 && q->kv_type == LK_DTYPE_F32,
                     q->n_ctx == 0 && q->n_batch == 0 && q->n_threads == 0);
    CHECK_INIT_GROWN(lk_lora_params, adapter_type,
                     q->rank == 8 && q->alpha == 16.0f && q->targets == NULL && q->adapter_type == NULL &&
                         q->adapter_config == NULL,
                     q->rank == 8 && q->seed == 0);
}

/* ------------------------------------------------------------------------------------------------ */
/* Tiny model: load, info, metadata                                                                  */
/* ------------------------------------------------------------------------------------------------ */

static void test_tiny_info(void) {
    lk_model *m = tiny();
    lk_model_info info;
    memset(&info, 0xEE, sizeof info);
    info.struct_size = sizeof info;
    EXPECT_OK(lk_model_get_info(m, &info));
    CHECK(info.struct_size == sizeof info);
    CHECK(info.n_vocab == 512 && info.n_ctx_train == 256 && info.n_embd == 64 && info.n_ff == 160);
    CHECK(info.n_layer == 2 && info.n_head == 4 && info.n_head_kv == 2 && info.head_dim == 16 && info.n_rot == 16);
    CHECKF(info.rope_base == 10000.0f, "rope_base %g", info.rope_base);
    CHECKF(fabsf(info.norm_eps - 1e-5f) < 1e-9f, "norm_eps %g", info.norm_eps);
    CHECK(info.tied_embeddings == 0);
    CHECK(info.bos_token == -1 && info.eos_token == -1 && info.eot_token == -1);
    CHECK(info.has_tokenizer == 0 && info.has_chat_template == 0);
    /* 151872 f32 parameters (README: total_size 607488 bytes). */
    CHECKF(info.weight_bytes == 607488, "weight_bytes %lld", (long long)info.weight_bytes);
    EXPECT_OK(lk_model_free(m));
}

static void test_tiny_strings_and_meta(void) {
    lk_model *m = tiny();
    char buf[64];
    int64_t need = 0;
    EXPECT_OK(lk_model_architecture(m, buf, sizeof buf, &need));
    CHECK(strcmp(buf, "llama") == 0 && need == 6);
    /* Exactly fitting, one too small (buffer untouched), size query. */
    EXPECT_OK(lk_model_architecture(m, buf, 6, &need));
    memset(buf, 'x', sizeof buf);
    need = 0;
    EXPECT_STATUS(lk_model_architecture(m, buf, 5, &need), LK_ERR_BUFFER_TOO_SMALL, "6");
    CHECK(need == 6 && buf[0] == 'x');
    need = 0;
    EXPECT_STATUS(lk_model_architecture(m, NULL, 0, &need), LK_ERR_BUFFER_TOO_SMALL, NULL);
    CHECK(need == 6);
    EXPECT_STATUS(lk_model_architecture(m, NULL, 10, &need), LK_ERR_INVALID_ARGUMENT, "buf");
    EXPECT_STATUS(lk_model_architecture(m, buf, -1, &need), LK_ERR_INVALID_ARGUMENT, "capacity");
    EXPECT_STATUS(lk_model_architecture(m, buf, sizeof buf, NULL), LK_ERR_INVALID_ARGUMENT, "needed");

    struct { const char *key, *want; } meta[] = {
        {"general.name", "tiny-llama"}, {"general.architecture", "llama"}, {"llama.block_count", "2"},
        {"llama.vocab_size", "512"}, {"llama.rope.freq_base", "10000.0"},
        {"llama.attention.layer_norm_rms_epsilon", "1e-05"},
    };
    for (size_t i = 0; i < sizeof meta / sizeof meta[0]; i++) {
        EXPECT_OK(lk_model_meta(m, meta[i].key, buf, sizeof buf, &need));
        CHECKF(strcmp(buf, meta[i].want) == 0, "%s = \"%s\", expected \"%s\"", meta[i].key, buf, meta[i].want);
        CHECK(need == (int64_t)strlen(meta[i].want) + 1);
    }
    EXPECT_STATUS(lk_model_meta(m, "no.such.key", buf, sizeof buf, &need), LK_ERR_INVALID_ARGUMENT, "no.such.key");
    EXPECT_STATUS(lk_model_meta(m, NULL, buf, sizeof buf, &need), LK_ERR_INVALID_ARGUMENT, "key");
    EXPECT_STATUS(lk_model_meta(m, "\xff\xfe", buf, sizeof buf, &need), LK_ERR_INVALID_ARGUMENT, "UTF-8");
    EXPECT_STATUS(lk_model_chat_template(m, buf, sizeof buf, &need), LK_ERR_UNSUPPORTED, "chat template");
    EXPECT_OK(lk_model_free(m));
}

static void test_tiny_tokenizer_calls_fail_clearly(void) {
    lk_model *m = tiny();
    int32_t ids[8];
    int64_t n = -7;
    EXPECT_STATUS(lk_tokenize(m, "hi", 2, -1, 1, ids, 8, &n), LK_ERR_UNSUPPORTED, "tokenizer");
    CHECK(n == -7);
    char buf[32];
    int64_t need = -7;
    int32_t one = 5;
    EXPECT_STATUS(lk_detokenize(m, &one, 1, 0, buf, sizeof buf, &need), LK_ERR_UNSUPPORTED, "tokenizer");
    EXPECT_STATUS(lk_token_bytes(m, 5, buf, sizeof buf, &need), LK_ERR_UNSUPPORTED, "tokenizer");
    CHECK(need == -7);
    lk_chat_message msg = {"user", "hi"};
    EXPECT_STATUS(lk_chat_apply(m, &msg, 1, 1, buf, sizeof buf, &need), LK_ERR_UNSUPPORTED, "chat template");
    EXPECT_OK(lk_model_free(m));
}

/* Issue 17: a model folder whose chat template is hostile still loads; lk_chat_apply fails with the status
 * and a message naming the folder, the place in the template and the limit; the process and the model survive. */
static void test_hostile_chat_templates(void) {
    static const struct { const char *template_; lk_status status; const char *names; } cases[] = {
        {"{{ range(9223372036854775807) | length }}", LK_ERR_FORMAT, "line 1, column 9: Range too big"},
        {"{% set s = \"x\" * 100000 %}{{ s.replace(\"\", s) | length }}", LK_ERR_LIMIT, "str.replace()"},
        {"{{ 'a\nb' | indent(9223372036854775807) }}", LK_ERR_LIMIT, "9223372036854775807 spaces"},
        {"{{ [1, 2] | tojson(indent=9223372036854775807) }}", LK_ERR_LIMIT, "9223372036854775807 spaces"},
        {"{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", LK_ERR_FORMAT, "TemplateLimits.maxRecursionDepth"},
        {"{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", LK_ERR_FORMAT,
         "TemplateLimits.maxLoopIterations"},
        {"{% set ns = namespace(s='xy') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", LK_ERR_LIMIT,
         "TemplateLimits.maxAllocatedBytes"},
    };
    char dir[4096], hf[4096], path[4200], target[4200], buf[256];
    snprintf(hf, sizeof hf, "%s", tiny_path);
    *strrchr(hf, '/') = 0;
    strcat(hf, "/tiny-llama-hf");
    snprintf(dir, sizeof dir, "%s/lk-hostile-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    CHECK(mkdtemp(dir) != NULL);
    const char *files[2] = {"config.json", "model.safetensors"};
    for (int f = 0; f < 2; f++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[f]);
        snprintf(target, sizeof target, "%s/%s", hf, files[f]);
        CHECK(symlink(target, path) == 0);
    }
    snprintf(path, sizeof path, "%s/chat_template.jinja", dir);
    lk_chat_message msg = {"user", "hi"};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        FILE *fp = fopen(path, "wb");
        CHECK(fp != NULL);
        fputs(cases[i].template_, fp);
        fclose(fp);
        lk_model *m = load_or_die(dir);
        /* keep the allocation-bound cases light */
        EXPECT_OK(lk_model_chat_limit(m, LK_CHAT_LIMIT_ALLOCATED_BYTES, 64 << 20, NULL));
        int64_t need = 0;
        memset(buf, 0x5a, sizeof buf);
        lk_status s = lk_chat_apply(m, &msg, 1, 1, buf, sizeof buf, &need);
        CHECKF(s == cases[i].status, "case %zu: status %d, %s", i, s, lk_last_error());
        CHECKF(strstr(lk_last_error(), cases[i].names) != NULL, "case %zu: %s", i, lk_last_error());
        CHECKF(strstr(lk_last_error(), dir) != NULL && strstr(lk_last_error(), ": chat template: ") != NULL,
               "case %zu: %s", i, lk_last_error());
        CHECK((unsigned char)buf[0] == 0x5a); /* the buffer is untouched */
        /* The model still runs. */
        lk_context *ctx = NULL;
        EXPECT_OK(lk_context_new(m, NULL, &ctx));
        int32_t toks[3] = {1, 2, 3};
        float logits[1024];
        lk_model_info info;
        info.struct_size = sizeof info;
        EXPECT_OK(lk_model_get_info(m, &info));
        CHECK(info.n_vocab <= 1024 && info.has_chat_template == 1);
        EXPECT_OK(lk_context_eval(ctx, toks, 3, LK_LOGITS_LAST, logits, 1024));
        CHECK(isfinite(logits[0]));
        EXPECT_OK(lk_context_free(ctx));
        EXPECT_OK(lk_model_free(m));
    }
    unlink(path);
    for (int f = 0; f < 2; f++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[f]);
        unlink(path);
    }
    rmdir(dir);
}

static void test_model_load_errors(void) {
    lk_model *m = (lk_model *)0x1;
    EXPECT_STATUS(lk_model_load(NULL, NULL, &m), LK_ERR_INVALID_ARGUMENT, "path");
    EXPECT_STATUS(lk_model_load("", NULL, &m), LK_ERR_INVALID_ARGUMENT, "path");
    EXPECT_STATUS(lk_model_load(tiny_path, NULL, NULL), LK_ERR_INVALID_ARGUMENT, "out");
    EXPECT_STATUS(lk_model_load("/nonexistent/model.gguf", NULL, &m), LK_ERR_IO, "/nonexistent/model.gguf");
    /* A folder is read as a Hugging Face checkpoint: without config.json it is an I/O error naming it. */
    EXPECT_STATUS(lk_model_load("/tmp", NULL, &m), LK_ERR_IO, "config.json");
    /* A file that is not GGUF: this source file. */
    EXPECT_STATUS(lk_model_load(__FILE__, NULL, &m), LK_ERR_FORMAT, NULL);
    CHECK(m == (lk_model *)0x1); /* out untouched on error */

    lk_model_params mp;
    lk_model_params_init(&mp);
    mp.reserved = 3;
    EXPECT_STATUS(lk_model_load(tiny_path, &mp, &m), LK_ERR_INVALID_ARGUMENT, "reserved");
    mp.reserved = 0;
    mp.struct_size = 0;
    EXPECT_STATUS(lk_model_load(tiny_path, &mp, &m), LK_ERR_ABI, "struct_size");
    mp.struct_size = sizeof mp - 1;
    EXPECT_STATUS(lk_model_load(tiny_path, &mp, &m), LK_ERR_ABI, "lk_model_params");
    mp.struct_size = 100000;
    EXPECT_STATUS(lk_model_load(tiny_path, &mp, &m), LK_ERR_ABI, "struct_size");
    CHECK(m == (lk_model *)0x1);
    /* Larger than ours (a newer header): known fields read, the rest ignored. */
    struct { lk_model_params p; unsigned char future[40]; } big;
    memset(&big, 0x5A, sizeof big);
    lk_model_params_init(&big.p);
    big.p.struct_size = sizeof big;
    m = NULL;
    EXPECT_OK(lk_model_load(tiny_path, &big.p, &m));
    CHECK(m != NULL);
    EXPECT_OK(lk_model_free(m));
    m = NULL;
    EXPECT_OK(lk_model_load(tiny_path, NULL, &m)); /* NULL params: defaults */
    EXPECT_OK(lk_model_free(m));
}

static void test_bad_handles(void) {
    lk_model *m = tiny();
    lk_context *c = new_ctx(m, 16, 1);
    lk_model_info info;
    info.struct_size = sizeof info;
    char buf[16];
    int64_t need;
    int32_t pos;
    int32_t t = 3;
    float logits[512];

    /* NULL */
    EXPECT_STATUS(lk_model_get_info(NULL, &info), LK_ERR_INVALID_HANDLE, "model");
    EXPECT_STATUS(lk_model_architecture(NULL, buf, 16, &need), LK_ERR_INVALID_HANDLE, "model");
    EXPECT_STATUS(lk_context_new(NULL, NULL, &c), LK_ERR_INVALID_HANDLE, "model");
    EXPECT_STATUS(lk_context_eval(NULL, &t, 1, LK_LOGITS_LAST, logits, 512), LK_ERR_INVALID_HANDLE, "ctx");
    EXPECT_STATUS(lk_context_position(NULL, &pos), LK_ERR_INVALID_HANDLE, "ctx");
    EXPECT_STATUS(lk_context_reset(NULL), LK_ERR_INVALID_HANDLE, "ctx");
    EXPECT_STATUS(lk_generate(NULL, &t, 1, NULL, NULL, NULL, 0, NULL), LK_ERR_INVALID_HANDLE, "ctx");
    EXPECT_OK(lk_model_free(NULL));
    EXPECT_OK(lk_context_free(NULL));
    lk_string_free(NULL);

    /* Handle of the wrong kind. */
    EXPECT_STATUS(lk_model_get_info((lk_model *)c, &info), LK_ERR_INVALID_HANDLE, "expected model");
    EXPECT_STATUS(lk_context_eval((lk_context *)m, &t, 1, LK_LOGITS_LAST, logits, 512), LK_ERR_INVALID_HANDLE, "expected context");
    EXPECT_STATUS(lk_model_free((lk_model *)c), LK_ERR_INVALID_HANDLE, "expected model");
    EXPECT_STATUS(lk_context_free((lk_context *)m), LK_ERR_INVALID_HANDLE, "expected context");
    lk_tensor *tensor = NULL;
    int64_t shape[1] = {4};
    EXPECT_OK(lk_tensor_new(LK_DTYPE_F32, 1, shape, &tensor));
    EXPECT_STATUS(lk_model_get_info((lk_model *)tensor, &info), LK_ERR_INVALID_HANDLE, "tensor");
    EXPECT_STATUS(lk_tensor_free((lk_tensor *)m), LK_ERR_INVALID_HANDLE, "expected tensor");
    EXPECT_OK(lk_tensor_free(tensor));
    /* Forged. */
    EXPECT_STATUS(lk_model_get_info((lk_model *)0x1234, &info), LK_ERR_INVALID_HANDLE, "not a live handle");

    /* Both still work after all that. */
    EXPECT_OK(lk_context_eval(c, &t, 1, LK_LOGITS_LAST, logits, 512));
    EXPECT_OK(lk_model_get_info(m, &info));

    /* Freed. */
    EXPECT_OK(lk_context_free(c));
    EXPECT_STATUS(lk_context_free(c), LK_ERR_INVALID_HANDLE, "not a live handle");
    EXPECT_STATUS(lk_context_eval(c, &t, 1, LK_LOGITS_LAST, logits, 512), LK_ERR_INVALID_HANDLE, "not a live handle");
    EXPECT_OK(lk_model_free(m));
    EXPECT_STATUS(lk_model_free(m), LK_ERR_INVALID_HANDLE, "not a live handle");
    EXPECT_STATUS(lk_model_get_info(m, &info), LK_ERR_INVALID_HANDLE, "not a live handle");
    EXPECT_STATUS(lk_context_new(m, NULL, &c), LK_ERR_INVALID_HANDLE, "not a live handle");
}

static void test_info_struct_size(void) {
    lk_model *m = tiny();
    lk_model_info info;
    memset(&info, 0, sizeof info);
    EXPECT_STATUS(lk_model_get_info(m, &info), LK_ERR_ABI, "struct_size");
    EXPECT_STATUS(lk_model_get_info(m, NULL), LK_ERR_INVALID_ARGUMENT, "info");
    info.struct_size = sizeof info - 8;
    EXPECT_STATUS(lk_model_get_info(m, &info), LK_ERR_ABI, "lk_model_info");
    CHECK(info.n_vocab == 0);
    /* Larger (a newer header): ours written, the caller's extra bytes and struct_size untouched. */
    struct { lk_model_info i; unsigned char future[32]; } big;
    memset(&big, 0x77, sizeof big);
    big.i.struct_size = sizeof big;
    EXPECT_OK(lk_model_get_info(m, &big.i));
    CHECK(big.i.struct_size == sizeof big && big.i.n_vocab == 512 && big.i.weight_bytes == 607488);
    int untouched = 1;
    for (size_t k = 0; k < sizeof big.future; k++) untouched &= big.future[k] == 0x77;
    CHECK(untouched);
    EXPECT_OK(lk_model_free(m));
}

/* ------------------------------------------------------------------------------------------------ */
/* Tiny model: contexts and eval                                                                     */
/* ------------------------------------------------------------------------------------------------ */

static void test_context_new_errors(void) {
    lk_model *m = tiny();
    lk_context *c = (lk_context *)0x1;
    lk_context_params cp;
    lk_context_params_init(&cp);
    cp.n_ctx = -1;
    EXPECT_STATUS(lk_context_new(m, &cp, &c), LK_ERR_INVALID_ARGUMENT, "n_ctx -1");
    cp.n_ctx = 257;
    EXPECT_STATUS(lk_context_new(m, &cp, &c), LK_ERR_INVALID_ARGUMENT, "n_ctx 257");
    cp.n_ctx = 0x7fffffff;
    EXPECT_STATUS(lk_context_new(m, &cp, &c), LK_ERR_INVALID_ARGUMENT, "n_ctx");
    cp.n_ctx = 16;
    cp.n_batch = -5;
    EXPECT_STATUS(lk_context_new(m, &cp, &c), LK_ERR_INVALID_ARGUMENT, "n_batch");
    cp.n_batch = 0;
    cp.n_threads = -1;
    EXPECT_STATUS(lk_context_new(m, &cp, &c), LK_ERR_INVALID_ARGUMENT, "n_threads");
    cp.n_threads = 513;
    EXPECT_STATUS(lk_context_new(m, &cp, &c), LK_ERR_INVALID_ARGUMENT, "n_threads");
    cp.n_threads = 1;
    EXPECT_STATUS(lk_context_new(m, &cp, NULL), LK_ERR_INVALID_ARGUMENT, "out");
    cp.kv_type = (lk_dtype)2; /* Q4_0: not a cache type */
    EXPECT_STATUS(lk_context_new(m, &cp, &c), LK_ERR_INVALID_ARGUMENT, "params->kv_type");
    cp.kv_type = (lk_dtype)-7;
    EXPECT_STATUS(lk_context_new(m, &cp, &c), LK_ERR_INVALID_ARGUMENT, "params->kv_type");
    cp.kv_type = LK_DTYPE_F32;
    cp.struct_size = 0;
    EXPECT_STATUS(lk_context_new(m, &cp, &c), LK_ERR_ABI, "struct_size");
    cp.struct_size = offsetof(lk_context_params, kv_type) - 4;
    EXPECT_STATUS(lk_context_new(m, &cp, &c), LK_ERR_ABI, "lk_context_params");
    CHECK(c == (lk_context *)0x1);
    /* A first-version struct (ends before kv_type): the garbage after it is not read, f32 applies. */
    {
        struct { lk_context_params p; } old;
        memset(&old, 0xFF, sizeof old);
        lk_context_params_init(&old.p);
        old.p.struct_size = offsetof(lk_context_params, kv_type);
        old.p.kv_type = (lk_dtype)99;
        old.p.n_ctx = 8;
        EXPECT_OK(lk_context_new(m, &old.p, &c));
        EXPECT_OK(lk_context_free(c));
        c = (lk_context *)0x1;
    }
    /* Larger: ok. NULL params: defaults (n_ctx = min(256, 4096) = 256). */
    struct { lk_context_params p; int32_t future[6]; } big;
    memset(&big, 0xFF, sizeof big);
    lk_context_params_init(&big.p);
    big.p.struct_size = sizeof big;
    big.p.n_ctx = 8;
    EXPECT_OK(lk_context_new(m, &big.p, &c));
    int32_t t[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    EXPECT_STATUS(lk_context_eval(c, t, 9, LK_LOGITS_NONE, NULL, 0), LK_ERR_INVALID_ARGUMENT, "overflow");
    EXPECT_OK(lk_context_free(c));
    EXPECT_OK(lk_context_new(m, NULL, &c));
    static int32_t many[256];
    EXPECT_OK(lk_context_eval(c, many, 256, LK_LOGITS_NONE, NULL, 0));
    CHECK(position_of(c) == 256);
    EXPECT_OK(lk_context_free(c));
    EXPECT_OK(lk_model_free(m));
}

static void test_tiny_eval_modes(void) {
    lk_model *m = tiny();
    lk_context *c = new_ctx(m, 32, 2);
    int32_t toks[5] = {1, 17, 300, 42, 511};
    float *last = malloc(512 * sizeof(float));
    float *all = malloc(5 * 512 * sizeof(float));
    float *again = malloc(512 * sizeof(float));

    CHECK(position_of(c) == 0);
    EXPECT_OK(lk_context_eval(c, toks, 5, LK_LOGITS_LAST, last, 512));
    CHECK(position_of(c) == 5);
    int finite = 1;
    for (int i = 0; i < 512; i++) finite &= isfinite(last[i]);
    CHECK(finite);

    EXPECT_OK(lk_context_reset(c));
    CHECK(position_of(c) == 0);
    EXPECT_OK(lk_context_eval(c, toks, 5, LK_LOGITS_ALL, all, 5 * 512));
    CHECK(position_of(c) == 5);
    float maxdiff = 0;
    for (int i = 0; i < 512; i++) maxdiff = fmaxf(maxdiff, fabsf(all[4 * 512 + i] - last[i]));
    CHECKF(maxdiff < 1e-4f, "ALL's last row vs LAST: max diff %g", maxdiff);

    /* Incremental: 4 tokens then 1 gives the same last logits as 5 at once. */
    EXPECT_OK(lk_context_reset(c));
    EXPECT_OK(lk_context_eval(c, toks, 4, LK_LOGITS_NONE, NULL, 0));
    CHECK(position_of(c) == 4);
    EXPECT_OK(lk_context_eval(c, toks + 4, 1, LK_LOGITS_LAST, again, 512));
    maxdiff = 0;
    for (int i = 0; i < 512; i++) maxdiff = fmaxf(maxdiff, fabsf(again[i] - last[i]));
    CHECKF(maxdiff < 1e-4f, "incremental vs batch: max diff %g", maxdiff);
    CHECK(position_of(c) == 5);

    /* Errors leave the position (and buffers) alone. */
    memset(again, 0, 512 * sizeof(float));
    EXPECT_STATUS(lk_context_eval(c, toks, 1, LK_LOGITS_LAST, again, 511), LK_ERR_BUFFER_TOO_SMALL, "511");
    EXPECT_STATUS(lk_context_eval(c, toks, 2, LK_LOGITS_ALL, all, 1023), LK_ERR_BUFFER_TOO_SMALL, "1024");
    EXPECT_STATUS(lk_context_eval(c, toks, 1, LK_LOGITS_LAST, NULL, 512), LK_ERR_INVALID_ARGUMENT, "logits");
    EXPECT_STATUS(lk_context_eval(c, toks, 1, LK_LOGITS_LAST, again, -1), LK_ERR_INVALID_ARGUMENT, "capacity");
    EXPECT_STATUS(lk_context_eval(c, toks, 1, 3, again, 512), LK_ERR_INVALID_ARGUMENT, "logits_mode 3");
    EXPECT_STATUS(lk_context_eval(c, toks, 1, -1, again, 512), LK_ERR_INVALID_ARGUMENT, "logits_mode -1");
    EXPECT_STATUS(lk_context_eval(c, toks, 0, LK_LOGITS_NONE, NULL, 0), LK_ERR_INVALID_ARGUMENT, "n_tokens");
    EXPECT_STATUS(lk_context_eval(c, toks, -3, LK_LOGITS_NONE, NULL, 0), LK_ERR_INVALID_ARGUMENT, "n_tokens");
    EXPECT_STATUS(lk_context_eval(c, NULL, 2, LK_LOGITS_NONE, NULL, 0), LK_ERR_INVALID_ARGUMENT, "tokens");
    int32_t bad[3] = {5, 512, 6};
    EXPECT_STATUS(lk_context_eval(c, bad, 3, LK_LOGITS_NONE, NULL, 0), LK_ERR_INVALID_ARGUMENT, "512");
    bad[1] = -1;
    EXPECT_STATUS(lk_context_eval(c, bad, 3, LK_LOGITS_NONE, NULL, 0), LK_ERR_INVALID_ARGUMENT, "-1");
    EXPECT_STATUS(lk_context_position(c, NULL), LK_ERR_INVALID_ARGUMENT, "position");
    CHECK(position_of(c) == 5);
    int zero = 1;
    for (int i = 0; i < 512; i++) zero &= again[i] == 0;
    CHECK(zero);

    /* Still usable, and deterministic. */
    EXPECT_OK(lk_context_reset(c));
    EXPECT_OK(lk_context_eval(c, toks, 5, LK_LOGITS_LAST, again, 512));
    CHECK(memcmp(again, last, 512 * sizeof(float)) == 0);
    free(last); free(all); free(again);
    EXPECT_OK(lk_context_free(c));
    EXPECT_OK(lk_model_free(m));
}

/* kv_type LK_DTYPE_F16: the same logits as an f32 cache within f16 rounding of keys and values, and
 * decoding token by token through the f16 cache equals evaluating the prompt at once. */
static void test_tiny_f16_kv_cache(void) {
    lk_model *m = tiny();
    lk_context_params cp;
    lk_context_params_init(&cp);
    cp.n_ctx = 64;
    cp.n_threads = 2;
    cp.kv_type = LK_DTYPE_F16;
    lk_context *h = NULL;
    EXPECT_OK(lk_context_new(m, &cp, &h));
    lk_context *f = new_ctx(m, 64, 2);
    enum { N = 20 };
    int32_t toks[N];
    for (int i = 0; i < N; i++) toks[i] = (int32_t)((i * 37 + 5) % 512);
    float *a = malloc(N * 512 * sizeof(float)), *b = malloc(N * 512 * sizeof(float)), *one = malloc(512 * sizeof(float));
    EXPECT_OK(lk_context_eval(f, toks, N, LK_LOGITS_ALL, a, N * 512));
    EXPECT_OK(lk_context_eval(h, toks, N, LK_LOGITS_ALL, b, N * 512));
    float dmax = 0;
    for (int i = 0; i < N * 512; i++) dmax = fmaxf(dmax, fabsf(a[i] - b[i]));
    CHECKF(dmax > 0 && dmax < 2e-2f, "f16 vs f32 cache: max |dlogit| %g", dmax);
    EXPECT_OK(lk_context_reset(h));
    float worst = 0;
    for (int t = 0; t < N; t++) {
        EXPECT_OK(lk_context_eval(h, &toks[t], 1, LK_LOGITS_LAST, one, 512));
        for (int i = 0; i < 512; i++) worst = fmaxf(worst, fabsf(one[i] - b[t * 512 + i]));
    }
    CHECKF(worst < 1e-4f, "f16 cache: token by token vs prompt at once: max |dlogit| %g", worst);
    free(a); free(b); free(one);
    EXPECT_OK(lk_context_free(h));
    EXPECT_OK(lk_context_free(f));
    EXPECT_OK(lk_model_free(m));
}

static void test_tiny_context_overflow(void) {
    lk_model *m = tiny();
    lk_context *c = new_ctx(m, 8, 1);
    int32_t t[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    float logits[512];
    EXPECT_STATUS(lk_context_eval(c, t, 9, LK_LOGITS_LAST, logits, 512), LK_ERR_INVALID_ARGUMENT, "overflow");
    CHECK(position_of(c) == 0);
    EXPECT_OK(lk_context_eval(c, t, 6, LK_LOGITS_NONE, NULL, 0));
    EXPECT_STATUS(lk_context_eval(c, t, 3, LK_LOGITS_LAST, logits, 512), LK_ERR_INVALID_ARGUMENT, "8 positions");
    CHECK(position_of(c) == 6);
    EXPECT_OK(lk_context_eval(c, t, 2, LK_LOGITS_LAST, logits, 512));
    CHECK(position_of(c) == 8);
    EXPECT_STATUS(lk_context_eval(c, t, 1, LK_LOGITS_LAST, logits, 512), LK_ERR_INVALID_ARGUMENT, "overflow");
    EXPECT_OK(lk_context_reset(c));
    EXPECT_OK(lk_context_eval(c, t, 8, LK_LOGITS_LAST, logits, 512));
    EXPECT_OK(lk_context_free(c));
    EXPECT_OK(lk_model_free(m));
}

static void test_tiny_eval_embeddings(void) {
    lk_model *m = tiny();
    lk_context *c = new_ctx(m, 8, 1);
    float *emb = lkt_random_floats(9 * 64, 7);
    float logits[512], logits2[512];
    EXPECT_OK(lk_context_eval_embeddings(c, emb, 3, LK_LOGITS_LAST, logits, 512));
    CHECK(position_of(c) == 3);
    int finite = 1;
    for (int i = 0; i < 512; i++) finite &= isfinite(logits[i]);
    CHECK(finite);
    /* Same input, same output; ALL's last row equals LAST. */
    EXPECT_OK(lk_context_reset(c));
    float *all = malloc(3 * 512 * sizeof(float));
    EXPECT_OK(lk_context_eval_embeddings(c, emb, 3, LK_LOGITS_ALL, all, 3 * 512));
    float maxdiff = 0;
    for (int i = 0; i < 512; i++) maxdiff = fmaxf(maxdiff, fabsf(all[2 * 512 + i] - logits[i]));
    CHECKF(maxdiff < 1e-4f, "max diff %g", maxdiff);
    free(all);

    /* Non-finite values are rejected, naming the row/column; the cache is unchanged. */
    EXPECT_OK(lk_context_reset(c));
    emb[64 + 5] = NAN;
    EXPECT_STATUS(lk_context_eval_embeddings(c, emb, 3, LK_LOGITS_LAST, logits2, 512), LK_ERR_INVALID_ARGUMENT, "row 1, column 5");
    emb[64 + 5] = INFINITY;
    EXPECT_STATUS(lk_context_eval_embeddings(c, emb, 3, LK_LOGITS_LAST, logits2, 512), LK_ERR_INVALID_ARGUMENT, "not finite");
    emb[64 + 5] = 0.25f;
    CHECK(position_of(c) == 0);
    EXPECT_STATUS(lk_context_eval_embeddings(c, emb, 9, LK_LOGITS_LAST, logits2, 512), LK_ERR_INVALID_ARGUMENT, "overflow");
    EXPECT_STATUS(lk_context_eval_embeddings(c, emb, 0, LK_LOGITS_LAST, logits2, 512), LK_ERR_INVALID_ARGUMENT, "n_rows");
    EXPECT_STATUS(lk_context_eval_embeddings(c, NULL, 2, LK_LOGITS_LAST, logits2, 512), LK_ERR_INVALID_ARGUMENT, "embeddings");
    EXPECT_STATUS(lk_context_eval_embeddings(c, emb, 2, 7, logits2, 512), LK_ERR_INVALID_ARGUMENT, "logits_mode");
    EXPECT_STATUS(lk_context_eval_embeddings(c, emb, 2, LK_LOGITS_ALL, logits2, 512), LK_ERR_BUFFER_TOO_SMALL, "1024");
    CHECK(position_of(c) == 0);
    /* Still usable: 8 rows fit exactly. */
    EXPECT_OK(lk_context_eval_embeddings(c, emb, 8, LK_LOGITS_NONE, NULL, 0));
    CHECK(position_of(c) == 8);
    free(emb);
    EXPECT_OK(lk_context_free(c));
    EXPECT_OK(lk_model_free(m));
}

/* ------------------------------------------------------------------------------------------------ */
/* Tiny model: generation of ids                                                                     */
/* ------------------------------------------------------------------------------------------------ */

static void test_tiny_generate_ids(void) {
    lk_model *m = tiny();
    lk_context *c = new_ctx(m, 64, 1);
    int32_t prompt[4] = {1, 100, 200, 300};
    /* The first greedy token is the argmax of the prompt's last logits. */
    float logits[512];
    EXPECT_OK(lk_context_eval(c, prompt, 4, LK_LOGITS_LAST, logits, 512));
    int32_t first = argmax(logits, 512);
    EXPECT_OK(lk_context_reset(c));

    lk_sampler_params sp;
    lk_generate_params gp = greedy_params(6, &sp);
    int32_t out[8] = {-9, -9, -9, -9, -9, -9, -9, -9};
    char *text = (char *)0x1;
    lk_generate_result r;
    memset(&r, 0xCC, sizeof r);
    r.struct_size = sizeof r;
    EXPECT_OK(lk_generate(c, prompt, 4, &gp, &text, out, 8, &r));
    CHECK(text != NULL && text != (char *)0x1 && text[0] == 0); /* no tokenizer: no text */
    lk_string_free(text);
    CHECK(out[0] == first && out[6] == -9);
    for (int i = 0; i < 6; i++) CHECK(out[i] >= 0 && out[i] < 512);
    CHECK(r.struct_size == sizeof r && r.n_prompt_tokens == 4 && r.n_tokens == 6 && r.stop_reason == LK_STOP_LENGTH);
    CHECK(r.prefill_seconds >= 0 && r.decode_seconds >= 0);
    CHECK(position_of(c) == 4 + 5); /* the last sampled token is not evaluated */

    /* Same again from a reset context; a capacity of 2 writes 2 ids, n_tokens still 6. */
    EXPECT_OK(lk_context_reset(c));
    int32_t out2[3] = {-9, -9, -9};
    EXPECT_OK(lk_generate(c, prompt, 4, &gp, NULL, out2, 2, &r));
    CHECK(out2[0] == out[0] && out2[1] == out[1] && out2[2] == -9 && r.n_tokens == 6);

    /* max_tokens 0: only the prompt is evaluated. */
    EXPECT_OK(lk_context_reset(c));
    gp.max_tokens = 0;
    EXPECT_OK(lk_generate(c, prompt, 4, &gp, NULL, NULL, 0, &r));
    CHECK(r.n_tokens == 0 && r.stop_reason == LK_STOP_LENGTH);

    /* Context full: n_ctx 8, prompt 6 → 3 tokens (the 3rd is sampled but not evaluated). */
    lk_context *small = new_ctx(m, 8, 1);
    int32_t p6[6] = {1, 2, 3, 4, 5, 6};
    gp.max_tokens = 50;
    EXPECT_OK(lk_generate(small, p6, 6, &gp, NULL, NULL, 0, &r));
    CHECK(r.n_tokens == 3 && r.stop_reason == LK_STOP_CONTEXT);
    /* A prompt that does not fit: error, cache unchanged. */
    EXPECT_OK(lk_context_reset(small));
    int32_t p9[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    EXPECT_STATUS(lk_generate(small, p9, 9, &gp, NULL, NULL, 0, &r), LK_ERR_INVALID_ARGUMENT, "overflow");
    CHECK(position_of(small) == 0);
    EXPECT_OK(lk_context_free(small));

    /* NULL params: defaults (sampling at temperature 0.8, seed 0): ids in range, reproducible. */
    EXPECT_OK(lk_context_reset(c));
    int32_t s1[5], s2[5];
    lk_generate_params d;
    lk_generate_params_init(&d);
    d.max_tokens = 5;
    EXPECT_OK(lk_generate(c, prompt, 4, &d, NULL, s1, 5, NULL));
    EXPECT_OK(lk_context_reset(c));
    EXPECT_OK(lk_generate(c, prompt, 4, &d, NULL, s2, 5, NULL));
    CHECK(memcmp(s1, s2, sizeof s1) == 0);
    EXPECT_OK(lk_context_reset(c));
    EXPECT_OK(lk_generate(c, prompt, 4, NULL, NULL, NULL, 0, NULL)); /* 128 tokens, defaults */
    EXPECT_OK(lk_context_free(c));
    EXPECT_OK(lk_model_free(m));
}

static void test_generate_bad_input(void) {
    lk_model *m = tiny();
    lk_context *c = new_ctx(m, 32, 1);
    int32_t prompt[3] = {1, 2, 3};
    lk_sampler_params sp;
    lk_generate_params gp = greedy_params(4, &sp);
    char *text = (char *)0x1;
    int32_t out[4];
    lk_generate_result r;
    r.struct_size = sizeof r;

    EXPECT_STATUS(lk_generate(c, NULL, 3, &gp, &text, out, 4, &r), LK_ERR_INVALID_ARGUMENT, "prompt");
    EXPECT_STATUS(lk_generate(c, prompt, 0, &gp, &text, out, 4, &r), LK_ERR_INVALID_ARGUMENT, "n_prompt");
    EXPECT_STATUS(lk_generate(c, prompt, -1, &gp, &text, out, 4, &r), LK_ERR_INVALID_ARGUMENT, "n_prompt");
    EXPECT_STATUS(lk_generate(c, prompt, 3, &gp, &text, NULL, 4, &r), LK_ERR_INVALID_ARGUMENT, "tokens_out");
    EXPECT_STATUS(lk_generate(c, prompt, 3, &gp, &text, out, -1, &r), LK_ERR_INVALID_ARGUMENT, "tokens_capacity");
    int32_t badp[2] = {1, 512};
    EXPECT_STATUS(lk_generate(c, badp, 2, &gp, &text, out, 4, &r), LK_ERR_INVALID_ARGUMENT, "512");

    gp.max_tokens = -1;
    EXPECT_STATUS(lk_generate(c, prompt, 3, &gp, &text, out, 4, &r), LK_ERR_INVALID_ARGUMENT, "max_tokens");
    gp.max_tokens = 4;
    gp.n_stop = -1;
    EXPECT_STATUS(lk_generate(c, prompt, 3, &gp, &text, out, 4, &r), LK_ERR_INVALID_ARGUMENT, "n_stop");
    gp.n_stop = 1;
    EXPECT_STATUS(lk_generate(c, prompt, 3, &gp, &text, out, 4, &r), LK_ERR_INVALID_ARGUMENT, "stop");
    const char *stops[2] = {"ok", NULL};
    gp.stop = stops;
    gp.n_stop = 2;
    EXPECT_STATUS(lk_generate(c, prompt, 3, &gp, &text, out, 4, &r), LK_ERR_INVALID_ARGUMENT, "stop[1]");
    stops[1] = "\xc3";
    EXPECT_STATUS(lk_generate(c, prompt, 3, &gp, &text, out, 4, &r), LK_ERR_INVALID_ARGUMENT, "UTF-8");
    gp.n_stop = 0;

    struct { float *f; float v; const char *name; } fbad[] = {
        {&sp.temperature, NAN, "temperature"}, {&sp.temperature, -1, "temperature"},
        {&sp.top_p, 0, "top_p"}, {&sp.top_p, 1.5f, "top_p"}, {&sp.min_p, 2, "min_p"},
        {&sp.repeat_penalty, 0, "repeat_penalty"}, {&sp.repeat_penalty, INFINITY, "repeat_penalty"},
    };
    for (size_t i = 0; i < sizeof fbad / sizeof fbad[0]; i++) {
        float keep = *fbad[i].f;
        *fbad[i].f = fbad[i].v;
        EXPECT_STATUS(lk_generate(c, prompt, 3, &gp, &text, out, 4, &r), LK_ERR_INVALID_ARGUMENT, fbad[i].name);
        *fbad[i].f = keep;
    }
    sp.top_k = -1;
    EXPECT_STATUS(lk_generate(c, prompt, 3, &gp, &text, out, 4, &r), LK_ERR_INVALID_ARGUMENT, "top_k");
    sp.top_k = 40;
    sp.repeat_last_n = -2;
    EXPECT_STATUS(lk_generate(c, prompt, 3, &gp, &text, out, 4, &r), LK_ERR_INVALID_ARGUMENT, "repeat_last_n");
    sp.repeat_last_n = 64;

    /* struct_size of params, sampler and result: 0 / smaller / implausible → ABI; larger → fine. */
    gp.struct_size = 0;
    EXPECT_STATUS(lk_generate(c, prompt, 3, &gp, &text, out, 4, &r), LK_ERR_ABI, "lk_generate_params");
    gp.struct_size = sizeof gp - 8;
    EXPECT_STATUS(lk_generate(c, prompt, 3, &gp, &text, out, 4, &r), LK_ERR_ABI, "struct_size");
    gp.struct_size = 0xdeadbeef;
    EXPECT_STATUS(lk_generate(c, prompt, 3, &gp, &text, out, 4, &r), LK_ERR_ABI, "implausibly large");
    gp.struct_size = sizeof gp;
    sp.struct_size = 0;
    EXPECT_STATUS(lk_generate(c, prompt, 3, &gp, &text, out, 4, &r), LK_ERR_ABI, "lk_sampler_params");
    sp.struct_size = sizeof sp - 8;
    EXPECT_STATUS(lk_generate(c, prompt, 3, &gp, &text, out, 4, &r), LK_ERR_ABI, "sampler");
    sp.struct_size = sizeof sp;
    r.struct_size = 0;
    EXPECT_STATUS(lk_generate(c, prompt, 3, &gp, &text, out, 4, &r), LK_ERR_ABI, "lk_generate_result");
    r.struct_size = sizeof r - 8;
    EXPECT_STATUS(lk_generate(c, prompt, 3, &gp, &text, out, 4, &r), LK_ERR_ABI, "result");
    /* Nothing was evaluated or written by any of the failures. */
    CHECK(text == (char *)0x1);
    CHECK(position_of(c) == 0);

    struct { lk_generate_params p; void *future[4]; } bigp;
    memset(&bigp, 0xFF, sizeof bigp);
    bigp.p = gp;
    bigp.p.struct_size = sizeof bigp;
    struct { lk_sampler_params s; double future[2]; } bigs;
    memset(&bigs, 0xFF, sizeof bigs);
    bigs.s = sp;
    bigs.s.struct_size = sizeof bigs;
    bigp.p.sampler = &bigs.s;
    struct { lk_generate_result r; unsigned char future[16]; } bigr;
    memset(&bigr, 0x66, sizeof bigr);
    bigr.r.struct_size = sizeof bigr;
    int32_t ref[4];
    EXPECT_OK(lk_generate(c, prompt, 3, &bigp.p, NULL, out, 4, &bigr.r));
    CHECK(bigr.r.struct_size == sizeof bigr && bigr.r.n_tokens == 4 && bigr.r.stop_reason == LK_STOP_LENGTH);
    CHECK(bigr.future[0] == 0x66 && bigr.future[15] == 0x66);
    EXPECT_OK(lk_context_reset(c));
    EXPECT_OK(lk_generate(c, prompt, 3, &gp, NULL, ref, 4, NULL));
    CHECK(memcmp(ref, out, sizeof ref) == 0);
    EXPECT_OK(lk_context_free(c));
    EXPECT_OK(lk_model_free(m));
}

static void test_context_outlives_model_handle(void) {
    lk_model *m = tiny();
    lk_context *c = new_ctx(m, 32, 1);
    int32_t prompt[3] = {7, 8, 9};
    int32_t before[4], after[4];
    lk_sampler_params sp;
    lk_generate_params gp = greedy_params(4, &sp);
    EXPECT_OK(lk_generate(c, prompt, 3, &gp, NULL, before, 4, NULL));
    EXPECT_OK(lk_model_free(m)); /* legal: the context keeps the weights alive */
    lk_model_info info;
    info.struct_size = sizeof info;
    EXPECT_STATUS(lk_model_get_info(m, &info), LK_ERR_INVALID_HANDLE, NULL);
    EXPECT_OK(lk_context_reset(c));
    EXPECT_OK(lk_generate(c, prompt, 3, &gp, NULL, after, 4, NULL));
    CHECK(memcmp(before, after, sizeof before) == 0);
    EXPECT_OK(lk_context_free(c));
}

/* ------------------------------------------------------------------------------------------------ */
/* Real model (SmolLM2-135M-Instruct Q4_1)                                                           */
/* ------------------------------------------------------------------------------------------------ */

static void test_real_info(void) {
    REAL_MODEL_OR_SKIP(path);
    lk_model *m = load_or_die(path);
    lk_model_info info;
    info.struct_size = sizeof info;
    EXPECT_OK(lk_model_get_info(m, &info));
    CHECK(info.n_layer == 30 && info.n_embd == 576 && info.n_head == 9 && info.n_head_kv == 3);
    CHECK(info.n_vocab == 49152 && info.bos_token == 1 && info.eos_token == 2);
    CHECK(info.head_dim == 64 && info.n_ff == 1536 && info.n_ctx_train == 8192 && info.tied_embeddings == 1);
    CHECK(info.has_tokenizer == 1 && info.has_chat_template == 1);
    CHECKF(info.rope_base == 100000.0f, "rope_base %g", info.rope_base);
    CHECK(info.weight_bytes > 50 * 1000 * 1000 && info.weight_bytes < 120 * 1000 * 1000);
    char buf[256];
    int64_t need;
    EXPECT_OK(lk_model_meta(m, "tokenizer.ggml.bos_token_id", buf, sizeof buf, &need));
    CHECK(strcmp(buf, "1") == 0);
    EXPECT_OK(lk_model_meta(m, "llama.rope.freq_base", buf, sizeof buf, &need));
    CHECKF(strcmp(buf, "100000.0") == 0, "%s", buf);
    /* A 49152-string array as JSON: ask for the size, then fetch. */
    EXPECT_STATUS(lk_model_meta(m, "tokenizer.ggml.tokens", NULL, 0, &need), LK_ERR_BUFFER_TOO_SMALL, NULL);
    CHECK(need > 49152 * 3);
    char *big = malloc((size_t)need);
    EXPECT_OK(lk_model_meta(m, "tokenizer.ggml.tokens", big, need, &need));
    const char *head = "[\"<|endoftext|>\",\"<|im_start|>\",\"<|im_end|>\",";
    CHECKF(strncmp(big, head, strlen(head)) == 0, "%.60s", big);
    CHECK(big[need - 2] == ']' && big[need - 1] == 0);
    free(big);
    EXPECT_OK(lk_model_free(m));
}

static void test_real_tokenize(void) {
    REAL_MODEL_OR_SKIP(path);
    lk_model *m = load_or_die(path);
    int32_t ids[16] = {0};
    int64_t n = 0;
    const char *hw = "Hello world";
    EXPECT_OK(lk_tokenize(m, hw, 11, -1, 1, ids, 16, &n));
    CHECKF(n == 2 && ids[0] == 19556 && ids[1] == 905, "n=%lld ids %d %d", (long long)n, ids[0], ids[1]);
    EXPECT_OK(lk_tokenize(m, hw, 11, 0, 1, ids, 16, &n));
    CHECK(n == 2 && ids[0] == 19556);
    EXPECT_OK(lk_tokenize(m, hw, 11, 1, 1, ids, 16, &n)); /* BOS always */
    CHECK(n == 3 && ids[0] == 1 && ids[1] == 19556 && ids[2] == 905);
    /* text_len counts bytes; the text need not be NUL-terminated. */
    EXPECT_OK(lk_tokenize(m, "Hello worldXYZ", 11, 0, 1, ids, 16, &n));
    CHECK(n == 2 && ids[1] == 905);
    /* Too small: count reported, buffer untouched. */
    int32_t small[1] = {-5};
    n = 0;
    EXPECT_STATUS(lk_tokenize(m, hw, 11, 0, 1, small, 1, &n), LK_ERR_BUFFER_TOO_SMALL, "2 tokens");
    CHECK(n == 2 && small[0] == -5);
    n = 0;
    EXPECT_STATUS(lk_tokenize(m, hw, 11, 0, 1, NULL, 0, &n), LK_ERR_BUFFER_TOO_SMALL, NULL);
    CHECK(n == 2);
    /* Empty text. */
    EXPECT_OK(lk_tokenize(m, NULL, 0, 0, 1, NULL, 0, &n));
    CHECK(n == 0);
    /* Special tokens: parsed or plain. */
    const char *sp = "<|im_start|>user";
    EXPECT_OK(lk_tokenize(m, sp, (int64_t)strlen(sp), 0, 1, ids, 16, &n));
    CHECK(n == 2 && ids[0] == 1 && ids[1] == 4093);
    EXPECT_OK(lk_tokenize(m, sp, (int64_t)strlen(sp), 0, 0, ids, 16, &n));
    CHECK(n > 2 && ids[0] != 1);
    /* Bad input. */
    EXPECT_STATUS(lk_tokenize(m, "a\xff", 2, 0, 1, ids, 16, &n), LK_ERR_INVALID_ARGUMENT, "byte 1");
    EXPECT_STATUS(lk_tokenize(m, NULL, 5, 0, 1, ids, 16, &n), LK_ERR_INVALID_ARGUMENT, "text");
    EXPECT_STATUS(lk_tokenize(m, hw, -1, 0, 1, ids, 16, &n), LK_ERR_INVALID_ARGUMENT, "text_len");
    EXPECT_STATUS(lk_tokenize(m, hw, 11, 2, 1, ids, 16, &n), LK_ERR_INVALID_ARGUMENT, "add_special");
    EXPECT_STATUS(lk_tokenize(m, hw, 11, 0, 7, ids, 16, &n), LK_ERR_INVALID_ARGUMENT, "parse_special");
    EXPECT_STATUS(lk_tokenize(m, hw, 11, 0, 1, NULL, 16, &n), LK_ERR_INVALID_ARGUMENT, "tokens");
    EXPECT_STATUS(lk_tokenize(m, hw, 11, 0, 1, ids, -1, &n), LK_ERR_INVALID_ARGUMENT, "capacity");
    EXPECT_STATUS(lk_tokenize(m, hw, 11, 0, 1, ids, 16, NULL), LK_ERR_INVALID_ARGUMENT, "n_tokens");
    EXPECT_OK(lk_model_free(m));
}

static void test_real_detokenize_and_token_bytes(void) {
    REAL_MODEL_OR_SKIP(path);
    lk_model *m = load_or_die(path);
    const char *texts[] = {"Hello world", "  leading spaces, héllo wörld — 日本語 🙂!\n\ttabs", "<|im_start|>user\nHi<|im_end|>"};
    for (size_t i = 0; i < 3; i++) {
        int32_t ids[128];
        int64_t n = tok(m, texts[i], ids, 128);
        char buf[256];
        int64_t need = 0;
        EXPECT_OK(lk_detokenize(m, ids, n, 0, buf, sizeof buf, &need));
        CHECKF(strcmp(buf, texts[i]) == 0, "round trip \"%s\" → \"%s\"", texts[i], buf);
        CHECK(need == (int64_t)strlen(texts[i]) + 1);
        /* One byte short: error with the size, buffer untouched. */
        memset(buf, '#', sizeof buf);
        EXPECT_STATUS(lk_detokenize(m, ids, n, 0, buf, need - 1, &need), LK_ERR_BUFFER_TOO_SMALL, NULL);
        CHECK(need == (int64_t)strlen(texts[i]) + 1 && buf[0] == '#');
    }
    int32_t ids[4] = {1, 19556, 905, 2};
    char buf[64];
    int64_t need;
    EXPECT_OK(lk_detokenize(m, ids, 4, 0, buf, sizeof buf, &need));
    CHECKF(strcmp(buf, "<|im_start|>Hello world<|im_end|>") == 0, "%s", buf);
    EXPECT_OK(lk_detokenize(m, ids, 4, 1, buf, sizeof buf, &need));
    CHECKF(strcmp(buf, "Hello world") == 0, "%s", buf);
    EXPECT_OK(lk_detokenize(m, NULL, 0, 0, buf, sizeof buf, &need));
    CHECK(buf[0] == 0 && need == 1);
    ids[2] = 49152;
    EXPECT_STATUS(lk_detokenize(m, ids, 4, 0, buf, sizeof buf, &need), LK_ERR_INVALID_ARGUMENT, "49152");
    ids[2] = -1;
    EXPECT_STATUS(lk_detokenize(m, ids, 4, 0, buf, sizeof buf, &need), LK_ERR_INVALID_ARGUMENT, "-1");
    EXPECT_STATUS(lk_detokenize(m, NULL, 2, 0, buf, sizeof buf, &need), LK_ERR_INVALID_ARGUMENT, "tokens");
    EXPECT_STATUS(lk_detokenize(m, ids, -2, 0, buf, sizeof buf, &need), LK_ERR_INVALID_ARGUMENT, "n_tokens");
    EXPECT_STATUS(lk_detokenize(m, ids, 1, 2, buf, sizeof buf, &need), LK_ERR_INVALID_ARGUMENT, "skip_special");

    EXPECT_OK(lk_token_bytes(m, 905, buf, sizeof buf, &need));
    CHECK(need == 6 && memcmp(buf, " world", 6) == 0);
    EXPECT_STATUS(lk_token_bytes(m, 905, buf, 5, &need), LK_ERR_BUFFER_TOO_SMALL, NULL);
    CHECK(need == 6);
    EXPECT_OK(lk_token_bytes(m, 905, buf, 6, &need)); /* no NUL: exactly 6 bytes suffice */
    EXPECT_STATUS(lk_token_bytes(m, 49152, buf, sizeof buf, &need), LK_ERR_INVALID_ARGUMENT, "49152");
    EXPECT_STATUS(lk_token_bytes(m, -3, buf, sizeof buf, &need), LK_ERR_INVALID_ARGUMENT, "-3");
    EXPECT_OK(lk_model_free(m));
}

static void test_real_chat(void) {
    REAL_MODEL_OR_SKIP(path);
    lk_model *m = load_or_die(path);
    int64_t need = 0;
    EXPECT_STATUS(lk_model_chat_template(m, NULL, 0, &need), LK_ERR_BUFFER_TOO_SMALL, NULL);
    CHECK(need > 50);
    char *tpl = malloc((size_t)need);
    EXPECT_OK(lk_model_chat_template(m, tpl, need, &need));
    CHECK(strstr(tpl, "im_start") != NULL && strlen(tpl) + 1 == (size_t)need);
    free(tpl);

    lk_chat_message msgs[1] = {{"user", "What is the capital of France?"}};
    char buf[1024];
    EXPECT_OK(lk_chat_apply(m, msgs, 1, 1, buf, sizeof buf, &need));
    const char *head = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM";
    CHECKF(strncmp(buf, head, strlen(head)) == 0, "rendered: %s", buf);
    const char *tail = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    size_t L = strlen(buf);
    CHECKF(L >= strlen(tail) && strcmp(buf + L - strlen(tail), tail) == 0, "rendered: %s", buf);
    CHECK(need == (int64_t)L + 1);
    EXPECT_OK(lk_chat_apply(m, msgs, 1, 0, buf, sizeof buf, &need));
    CHECK(strstr(buf, "assistant") == NULL || strstr(buf, "<|im_start|>assistant\n") == NULL);
    /* A user-given system message replaces the default one. */
    lk_chat_message two[2] = {{"system", "Be brief."}, {"user", "Hi"}};
    EXPECT_OK(lk_chat_apply(m, two, 2, 1, buf, sizeof buf, &need));
    CHECKF(strcmp(buf, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n") == 0, "%s", buf);
    /* Too small, bad arguments. */
    memset(buf, '#', 8);
    EXPECT_STATUS(lk_chat_apply(m, two, 2, 1, buf, 10, &need), LK_ERR_BUFFER_TOO_SMALL, NULL);
    CHECK(buf[0] == '#' && need > 10);
    EXPECT_STATUS(lk_chat_apply(m, NULL, 1, 1, buf, sizeof buf, &need), LK_ERR_INVALID_ARGUMENT, "messages");
    EXPECT_STATUS(lk_chat_apply(m, two, -1, 1, buf, sizeof buf, &need), LK_ERR_INVALID_ARGUMENT, "n_messages");
    EXPECT_STATUS(lk_chat_apply(m, two, 2, 5, buf, sizeof buf, &need), LK_ERR_INVALID_ARGUMENT, "add_generation_prompt");
    lk_chat_message bad[2] = {{"user", "ok"}, {NULL, "x"}};
    EXPECT_STATUS(lk_chat_apply(m, bad, 2, 1, buf, sizeof buf, &need), LK_ERR_INVALID_ARGUMENT, "messages[1].role");
    bad[1].role = "user";
    bad[1].content = "\xe2\x82";
    EXPECT_STATUS(lk_chat_apply(m, bad, 2, 1, buf, sizeof buf, &need), LK_ERR_INVALID_ARGUMENT, "messages[1].content");

    /* Chat-template limits: a render over one fails with LK_ERR_LIMIT naming the model; the model stays usable. */
    int64_t old = 0;
    EXPECT_OK(lk_model_chat_limit(m, LK_CHAT_LIMIT_STEPS, -1, &old));
    CHECK(old == 100000000);
    EXPECT_OK(lk_model_chat_limit(m, LK_CHAT_LIMIT_STEPS, 10, &old));
    CHECK(old == 100000000);
    EXPECT_STATUS(lk_chat_apply(m, two, 2, 1, buf, sizeof buf, &need), LK_ERR_LIMIT, "TemplateLimits.maxSteps");
    CHECKF(strstr(lk_last_error(), path) != NULL, "%s", lk_last_error());
    EXPECT_OK(lk_model_chat_limit(m, LK_CHAT_LIMIT_STEPS, 100000000, &old));
    CHECK(old == 10);
    EXPECT_OK(lk_chat_apply(m, two, 2, 1, buf, sizeof buf, &need));
    CHECKF(strcmp(buf, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n") == 0, "%s", buf);
    EXPECT_OK(lk_model_chat_limit(m, LK_CHAT_LIMIT_MILLISECONDS, -1, NULL));
    EXPECT_STATUS(lk_model_chat_limit(m, LK_CHAT_LIMIT_STEPS, 0, &old), LK_ERR_INVALID_ARGUMENT, "new_value");
    EXPECT_STATUS(lk_model_chat_limit(m, 8, -1, &old), LK_ERR_INVALID_ARGUMENT, "limit 8");
    EXPECT_STATUS(lk_model_chat_limit(NULL, LK_CHAT_LIMIT_STEPS, -1, &old), LK_ERR_INVALID_HANDLE, NULL);
    /* The depth limits are capped (a deeper stack could overflow the caller's thread); nothing changes. */
    EXPECT_STATUS(lk_model_chat_limit(m, LK_CHAT_LIMIT_RECURSION_DEPTH, 1001, &old), LK_ERR_INVALID_ARGUMENT,
                  "LK_CHAT_LIMIT_RECURSION_DEPTH: TemplateLimits.maxRecursionDepth is 1001; it must be in 1...1000");
    EXPECT_OK(lk_model_chat_limit(m, LK_CHAT_LIMIT_RECURSION_DEPTH, 1000, &old));
    CHECK(old == 200);
    EXPECT_OK(lk_model_chat_limit(m, LK_CHAT_LIMIT_MILLISECONDS, 2500, &old));
    CHECK(old == 10000);
    EXPECT_OK(lk_model_chat_limit(m, LK_CHAT_LIMIT_MILLISECONDS, -1, &old));
    CHECK(old == 2500);
    CHECKF(strcmp(lk_status_string(LK_ERR_LIMIT), "limit exceeded") == 0, "%s", lk_status_string(LK_ERR_LIMIT));
    EXPECT_OK(lk_model_free(m));
}

typedef struct {
    char text[4096];
    size_t len;
    int calls;
    int stop_after;   /* stop when calls reaches this (0 = never) */
    int last_token;
    lk_context *probe; /* if set: try to use it from inside the callback */
    lk_status probe_status;
    int free_probe;    /* free `probe` from inside the callback */
} stream_t;

static int32_t on_piece(const char *piece, int64_t len, int32_t token, void *ud) {
    stream_t *s = ud;
    s->calls++;
    if (len <= 0) s->text[0] = '!'; /* pieces are never empty: make the comparison fail */
    if (s->len + (size_t)len < sizeof s->text) {
        memcpy(s->text + s->len, piece, (size_t)len);
        s->len += (size_t)len;
        s->text[s->len] = 0;
    }
    s->last_token = token;
    if (s->probe) {
        int32_t pos;
        s->probe_status = lk_context_position(s->probe, &pos);
        if (s->free_probe) {
            lk_context_free(s->probe);
            s->probe = NULL;
        }
    }
    return s->stop_after && s->calls >= s->stop_after;
}

static void test_real_generate_greedy_and_stream(void) {
    REAL_MODEL_OR_SKIP(path);
    lk_model *m = load_or_die(path);
    lk_context *c = new_ctx(m, 256, 0);
    int32_t prompt[32];
    int64_t np = tok(m, "The capital of France is", prompt, 32);
    lk_sampler_params sp;
    lk_generate_params gp = greedy_params(8, &sp);
    char *text = NULL;
    int32_t ids[8];
    lk_generate_result r;
    r.struct_size = sizeof r;
    EXPECT_OK(lk_generate(c, prompt, np, &gp, &text, ids, 8, &r));
    CHECKF(text && strncmp(text, " Paris", 6) == 0, "greedy text: \"%s\"", text ? text : "(NULL)");
    CHECK(r.n_prompt_tokens == np && r.n_tokens == 8 && r.stop_reason == LK_STOP_LENGTH);
    /* The text is the ids' text. */
    char dec[512];
    int64_t need;
    EXPECT_OK(lk_detokenize(m, ids, 8, 0, dec, sizeof dec, &need));
    CHECKF(text && strcmp(dec, text) == 0, "\"%s\" vs \"%s\"", dec, text);

    /* The first id is the argmax of the prompt's logits. */
    lk_context *c2 = new_ctx(m, 64, 0);
    float *logits = malloc(49152 * sizeof(float));
    EXPECT_OK(lk_context_eval(c2, prompt, np, LK_LOGITS_LAST, logits, 49152));
    CHECK(argmax(logits, 49152) == ids[0]);
    free(logits);
    EXPECT_OK(lk_context_free(c2));

    /* Streaming: the pieces add up to text_out. */
    stream_t s;
    memset(&s, 0, sizeof s);
    gp.callback = on_piece;
    gp.user_data = &s;
    char *text2 = NULL;
    EXPECT_OK(lk_context_reset(c));
    EXPECT_OK(lk_generate(c, prompt, np, &gp, &text2, NULL, 0, &r));
    CHECKF(text && text2 && strcmp(text, text2) == 0, "\"%s\" vs \"%s\"", text, text2);
    CHECKF(text && strcmp(s.text, text) == 0, "streamed \"%s\" vs text_out \"%s\"", s.text, text);
    CHECK(s.calls >= 1 && s.calls <= 8);

    /* A callback that stops after 2 pieces. */
    memset(&s, 0, sizeof s);
    s.stop_after = 2;
    gp.max_tokens = 32;
    int32_t ids3[32];
    EXPECT_OK(lk_context_reset(c));
    EXPECT_STATUS(lk_generate(c, prompt, np, &gp, NULL, ids3, 32, &r), LK_STOPPED, NULL);
    CHECKF(r.n_tokens == 2 && r.stop_reason == LK_STOP_CALLBACK, "n_tokens %d reason %d", r.n_tokens, r.stop_reason);
    CHECK(s.calls == 2 && s.last_token == ids3[1] && ids3[0] == ids[0] && ids3[1] == ids[1]);
    lk_string_free(text);
    lk_string_free(text2);
    EXPECT_OK(lk_context_free(c));
    EXPECT_OK(lk_model_free(m));
}

static void test_real_stop_strings(void) {
    REAL_MODEL_OR_SKIP(path);
    lk_model *m = load_or_die(path);
    lk_context *c = new_ctx(m, 256, 0);
    int32_t prompt[32];
    int64_t np = tok(m, "The capital of France is", prompt, 32);
    lk_sampler_params sp;
    lk_generate_params gp = greedy_params(24, &sp);
    char *full = NULL;
    EXPECT_OK(lk_generate(c, prompt, np, &gp, &full, NULL, 0, NULL));
    size_t L = full ? strlen(full) : 0;
    CHECKF(L > 12, "\"%s\"", full ? full : "");
    if (L <= 12) { lk_string_free(full); return; }
    /* Stop at a 3-byte string found in the middle of the greedy text. */
    char stop[4];
    memcpy(stop, full + 8, 3);
    stop[3] = 0;
    const char *first = strstr(full, stop);
    size_t want = (size_t)(first - full);
    const char *stops[3] = {"", "\xe2\x9c\x93 never appears", stop};
    gp.stop = stops;
    gp.n_stop = 3;
    stream_t s;
    memset(&s, 0, sizeof s);
    gp.callback = on_piece;
    gp.user_data = &s;
    char *text = NULL;
    lk_generate_result r;
    r.struct_size = sizeof r;
    EXPECT_OK(lk_context_reset(c));
    EXPECT_OK(lk_generate(c, prompt, np, &gp, &text, NULL, 0, &r));
    CHECK(r.stop_reason == LK_STOP_STRING);
    CHECKF(text && strlen(text) == want && strncmp(text, full, want) == 0, "stop \"%s\": \"%s\" from \"%s\"", stop, text, full);
    CHECKF(text && strcmp(s.text, text) == 0, "streamed \"%s\" vs \"%s\"", s.text, text);
    lk_string_free(text);
    lk_string_free(full);
    EXPECT_OK(lk_context_free(c));
    EXPECT_OK(lk_model_free(m));
}

static void test_real_callback_cannot_reenter_context(void) {
    REAL_MODEL_OR_SKIP(path);
    lk_model *m = load_or_die(path);
    lk_context *c = new_ctx(m, 128, 0);
    int32_t prompt[32];
    int64_t np = tok(m, "The capital of France is", prompt, 32);
    lk_sampler_params sp;
    lk_generate_params gp = greedy_params(4, &sp);
    stream_t s;
    memset(&s, 0, sizeof s);
    s.probe = c;
    gp.callback = on_piece;
    gp.user_data = &s;
    EXPECT_OK(lk_generate(c, prompt, np, &gp, NULL, NULL, 0, NULL));
    CHECK(s.calls >= 1);
    CHECK(s.probe_status == LK_ERR_INVALID_ARGUMENT);
    CHECK(position_of(c) > 0); /* usable again after the call */
    /* Freeing the context from its own callback: generation finishes, the handle is then dead. */
    memset(&s, 0, sizeof s);
    s.probe = c;
    s.free_probe = 1;
    char *text = NULL;
    EXPECT_OK(lk_context_reset(c));
    EXPECT_OK(lk_generate(c, prompt, np, &gp, &text, NULL, 0, NULL));
    CHECK(text && strncmp(text, " Paris", 6) == 0);
    lk_string_free(text);
    int32_t pos;
    EXPECT_STATUS(lk_context_position(c, &pos), LK_ERR_INVALID_HANDLE, NULL);
    EXPECT_OK(lk_model_free(m));
}

typedef struct {
    lk_model *model;
    const char *prompt;
    char *text;
    int32_t ids[12];
    lk_status status;
} job_t;

static void *run_job(void *arg) {
    job_t *j = arg;
    lk_context_params cp;
    lk_context_params_init(&cp);
    cp.n_ctx = 128;
    cp.n_threads = 1;
    lk_context *c = NULL;
    j->status = lk_context_new(j->model, &cp, &c);
    if (j->status != LK_OK) return NULL;
    int32_t prompt[32];
    int64_t n = 0;
    j->status = lk_tokenize(j->model, j->prompt, (int64_t)strlen(j->prompt), 0, 1, prompt, 32, &n);
    if (j->status == LK_OK) {
        lk_sampler_params sp;
        lk_generate_params gp = greedy_params(12, &sp);
        j->status = lk_generate(c, prompt, n, &gp, &j->text, j->ids, 12, NULL);
    }
    lk_context_free(c);
    return NULL;
}

static void test_real_two_threads_share_model(void) {
    REAL_MODEL_OR_SKIP(path);
    lk_model *m = load_or_die(path);
    const char *prompts[2] = {"The capital of France is", "def fibonacci(n):"};
    job_t seq[2], par[2];
    for (int i = 0; i < 2; i++) {
        memset(&seq[i], 0, sizeof seq[i]);
        seq[i].model = m;
        seq[i].prompt = prompts[i];
        run_job(&seq[i]);
        EXPECT_OK(seq[i].status);
        par[i] = seq[i];
        par[i].text = NULL;
        memset(par[i].ids, 0, sizeof par[i].ids);
    }
    pthread_t th[2];
    for (int i = 0; i < 2; i++) CHECK(pthread_create(&th[i], NULL, run_job, &par[i]) == 0);
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < 2; i++) {
        EXPECT_OK(par[i].status);
        CHECK(memcmp(seq[i].ids, par[i].ids, sizeof seq[i].ids) == 0);
        CHECKF(seq[i].text && par[i].text && strcmp(seq[i].text, par[i].text) == 0, "\"%s\" vs \"%s\"",
               seq[i].text ? seq[i].text : "", par[i].text ? par[i].text : "");
        lk_string_free(seq[i].text);
        lk_string_free(par[i].text);
    }
    EXPECT_OK(lk_model_free(m));
}

LKT_MAIN("test_model: models, tokenizer, chat, contexts, generation", setup,
         TESTCASE(test_struct_sizes_match_c), TESTCASE(test_params_init_defaults), TESTCASE(test_params_init_sized),
         TESTCASE(test_tiny_info),
         TESTCASE(test_tiny_strings_and_meta), TESTCASE(test_tiny_tokenizer_calls_fail_clearly),
         TESTCASE(test_model_load_errors), TESTCASE(test_hostile_chat_templates), TESTCASE(test_bad_handles), TESTCASE(test_info_struct_size),
         TESTCASE(test_context_new_errors), TESTCASE(test_tiny_eval_modes), TESTCASE(test_tiny_f16_kv_cache), TESTCASE(test_tiny_context_overflow),
         TESTCASE(test_tiny_eval_embeddings), TESTCASE(test_tiny_generate_ids), TESTCASE(test_generate_bad_input),
         TESTCASE(test_context_outlives_model_handle), TESTCASE(test_real_info), TESTCASE(test_real_tokenize),
         TESTCASE(test_real_detokenize_and_token_bytes), TESTCASE(test_real_chat),
         TESTCASE(test_real_generate_greedy_and_stream), TESTCASE(test_real_stop_strings),
         TESTCASE(test_real_callback_cannot_reenter_context), TESTCASE(test_real_two_threads_share_model))

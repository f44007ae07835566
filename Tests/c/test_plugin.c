/*
 * test_plugin.c — adapter plugins through the installed header and library: lk_plugin_load of the
 * shipped plugins (ia3.so in C, dora.so in Swift) and of every deliberately broken plugin of
 * Tests/plugins/bad_plugin.c (each refused with the expected status and a message naming the file and
 * both sides' values), listing, descriptions, and bad arguments.
 *
 * Plugin adapters through lk_adapter_load: PEFT IA³ and DoRA folders (Tests/LoRAKitTests/Fixtures/plugins/tiny)
 * on the tiny model (Fixtures/train/model) give PEFT's logits within 2e-4, found through the search path
 * (the installed <prefix>/lib/lorakit/plugins) with no lk_plugin_load; save to PEFT and load again; scale 0
 * is the base model; a type no plugin serves is refused naming the type.
 *
 * The plugins come from `make test-plugins` (Tests/plugins/run.sh), which builds them into
 * .build/plugin-tests/ (override: LORAKIT_TEST_PLUGIN_DIR). Each test runs in a fresh process, so each
 * starts with no plugin loaded (except what the search path would load, which these tests do not ask for
 * unless they say so).
 */
#include "lk_test.h"

#include <sys/stat.h>

static char plugin_dir[4096];
static char fixtures[4096];

static void setup(void) {
    char here[2048];
    snprintf(here, sizeof here, "%s", __FILE__);
    char *sl = strrchr(here, '/');
    if (sl) *sl = 0; else snprintf(here, sizeof here, ".");
    snprintf(fixtures, sizeof fixtures, "%s/../LoRAKitTests/Fixtures", here);
    const char *env = getenv("LORAKIT_TEST_PLUGIN_DIR");
    if (env && *env) { snprintf(plugin_dir, sizeof plugin_dir, "%s", env); return; }
    char dir[2048];
    snprintf(dir, sizeof dir, "%s", __FILE__);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0; else snprintf(dir, sizeof dir, ".");
    snprintf(plugin_dir, sizeof plugin_dir, "%s/../../.build/plugin-tests", dir);
}

static const char *plugin(const char *file) {
    static char path[2][4200];
    static int k;
    k ^= 1;
    snprintf(path[k], sizeof path[k], "%s/%s", plugin_dir, file);
    return path[k];
}

/* The JSON text of lk_plugin_info_json / lk_plugins_json (static buffer). */
static const char *info(const lk_plugin *p) {
    static char buf[8192];
    int64_t need = 0;
    buf[0] = 0;
    EXPECT_OK(lk_plugin_info_json(p, buf, sizeof buf, &need));
    return buf;
}

static void test_load_shipped(void) {
    lk_plugin *ia3 = NULL, *dora = NULL, *again = NULL;
    EXPECT_OK(lk_plugin_load(plugin("ia3.so"), &ia3));
    EXPECT_OK(lk_plugin_load(plugin("dora.so"), &dora));
    if (!ia3 || !dora) return;
    const char *j = info(ia3);
    CHECKF(strstr(j, "\"name\":\"ia3\"") && strstr(j, "\"peft_type\":\"IA3\"") && strstr(j, "\"peft_flag\":null") &&
           strstr(j, "\"key_suffixes\":[\"ia3_l\"]") && strstr(j, "\"merge\":true") && strstr(j, "\"abi\":[1,0]"),
           "ia3 info %s", j);
    j = info(dora);
    CHECKF(strstr(j, "\"name\":\"dora\"") && strstr(j, "\"peft_type\":\"LORA\"") &&
           strstr(j, "\"peft_flag\":\"use_dora\"") && strstr(j, "lora_magnitude_vector") && strstr(j, "\"train\":true"),
           "dora info %s", j);
    /* The same file again: the same plugin (not a duplicate registration). */
    EXPECT_OK(lk_plugin_load(plugin("ia3.so"), &again));
    CHECK(again && again != ia3);
    if (again) CHECK(strstr(info(again), "\"name\":\"ia3\"") != NULL);
    /* Two plugins with different types, plus a third (the guide's shift.so), listed in load order. */
    lk_plugin *shift = NULL;
    EXPECT_OK(lk_plugin_load(plugin("shift.so"), &shift));
    char list[16384];
    int64_t need = 0;
    EXPECT_OK(lk_plugins_json(0, list, sizeof list, &need));
    const char *a = strstr(list, "\"name\":\"ia3\""), *b = strstr(list, "\"name\":\"dora\""),
               *c = strstr(list, "\"name\":\"shift\"");
    CHECKF(a && b && c && a < b && b < c && list[0] == '[', "list %s", list);
    CHECK(strstr(list, "\"merge\":false") != NULL);  /* shift has no merge */
    /* Too small a buffer: the size is reported, nothing written. */
    char tiny[4] = "xyz";
    EXPECT_STATUS(lk_plugins_json(0, tiny, sizeof tiny, &need), LK_ERR_BUFFER_TOO_SMALL, "capacity");
    CHECK(need == (int64_t)strlen(list) + 1 && strcmp(tiny, "xyz") == 0);
    EXPECT_OK(lk_plugin_free(ia3));
    EXPECT_OK(lk_plugin_free(again));
    EXPECT_OK(lk_plugin_free(dora));
    EXPECT_OK(lk_plugin_free(shift));
    /* Freeing the handles does not unload: still listed. */
    EXPECT_OK(lk_plugins_json(0, list, sizeof list, &need));
    CHECK(strstr(list, "\"name\":\"dora\"") != NULL);
}

static void test_bad_plugins(void) {
    lk_plugin *ia3 = NULL;
    EXPECT_OK(lk_plugin_load(plugin("ia3.so"), &ia3));
    struct { const char *file; lk_status status; const char *expect[3]; } bad[] = {
        { "bad_major.so", LK_ERR_ABI, { "bad_major.so", "built for plugin ABI 0.7, host has 1.0", "major versions differ" } },
        { "bad_nosymbol.so", LK_ERR_INVALID_ARGUMENT, { "bad_nosymbol.so", "no entry symbol lkp_entry", NULL } },
        { "bad_short.so", LK_ERR_ABI, { "bad_short.so", "plugin table is 16 bytes", "bytes of ABI 1.0 (plugin says ABI 1.0)" } },
        { "bad_entry_error.so", LK_ERR_UNSUPPORTED, { "bad_entry_error.so", "lkp_entry failed (status -4)",
                                                      "bad_entry_error: needs a host with a GPU (found none)" } },
        { "bad_dup_type.so", LK_ERR_INVALID_ARGUMENT, { "bad_dup_type.so", "adapter type \"ia3\" is already registered by", "ia3.so" } },
        { "bad_dup_within.so", LK_ERR_INVALID_ARGUMENT, { "bad_dup_within.so", "adapter type \"twin\" is declared twice", NULL } },
        { "bad_no_forward.so", LK_ERR_INVALID_ARGUMENT, { "bad_no_forward.so", "adapter type \"noforward\" has no forward function", NULL } },
        { "bad_name.so", LK_ERR_INVALID_ARGUMENT, { "bad_name.so", "name \"Bad-Name\" is not 1-63 characters of [a-z0-9_]", NULL } },
        { "bad_type_short.so", LK_ERR_ABI, { "bad_type_short.so", "adapter type 0 table is 24 bytes, below the", NULL } },
        { "missing_file.so", LK_ERR_IO, { "missing_file.so", "cannot load:", NULL } },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        lk_plugin *p = (lk_plugin *)0x1;
        lk_status st = lk_plugin_load(plugin(bad[i].file), &p);
        const char *msg = lk_last_error();
        int ok = st == bad[i].status && p == (lk_plugin *)0x1;
        for (int k = 0; k < 3 && bad[i].expect[k]; k++) ok = ok && strstr(msg, bad[i].expect[k]) != NULL;
        CHECKF(ok, "%s: status %d (want %d), message \"%s\"", bad[i].file, (int)st, (int)bad[i].status, msg);
        printf("  rejected %-20s %s\n", bad[i].file, msg);
    }
    /* Nothing of the refused plugins was registered: only ia3 is listed. */
    char list[16384];
    int64_t need = 0;
    EXPECT_OK(lk_plugins_json(0, list, sizeof list, &need));
    CHECKF(strstr(list, "\"name\":\"ia3\"") && !strstr(list, "twin") && !strstr(list, "noforward") &&
           !strstr(list, "\"bad\""), "list %s", list);
    lk_plugin_free(ia3);
}

static void test_bad_arguments(void) {
    lk_plugin *p = NULL;
    EXPECT_STATUS(lk_plugin_load(NULL, &p), LK_ERR_INVALID_ARGUMENT, "path is NULL");
    EXPECT_STATUS(lk_plugin_load("", &p), LK_ERR_INVALID_ARGUMENT, "path is empty");
    EXPECT_STATUS(lk_plugin_load(plugin("ia3.so"), NULL), LK_ERR_INVALID_ARGUMENT, "out is NULL");
    EXPECT_OK(lk_plugin_free(NULL));
    EXPECT_STATUS(lk_plugin_free((lk_plugin *)0x12345670), LK_ERR_INVALID_HANDLE, "plugin");
    char buf[64];
    int64_t need = 0;
    EXPECT_STATUS(lk_plugin_info_json(NULL, buf, sizeof buf, &need), LK_ERR_INVALID_HANDLE, "plugin is NULL");
    EXPECT_STATUS(lk_plugins_json(2, buf, sizeof buf, &need), LK_ERR_INVALID_ARGUMENT, "load_search_path");
    EXPECT_OK(lk_plugin_load(plugin("ia3.so"), &p));
    EXPECT_OK(lk_plugin_free(p));
    EXPECT_STATUS(lk_plugin_free(p), LK_ERR_INVALID_HANDLE, "plugin");
    EXPECT_STATUS(lk_plugin_info_json(p, buf, sizeof buf, &need), LK_ERR_INVALID_HANDLE, "plugin");
}

/* LORAKIT_PLUGIN_PATH (files here; folders are read in name order) is loaded by lk_plugins_json(1, ...);
 * a plugin there that cannot load is listed as an error entry, the others load. */
static void test_search_path(void) {
    char path[20000];
    snprintf(path, sizeof path, "%s/ia3.so:%s/bad_major.so:%s/dora.so:%s/shift.so", plugin_dir, plugin_dir,
             plugin_dir, plugin_dir);
    setenv("LORAKIT_PLUGIN_PATH", path, 1);
    char *list = malloc(1 << 16);
    int64_t need = 0;
    EXPECT_OK(lk_plugins_json(1, list, 1 << 16, &need));
    CHECKF(strstr(list, "\"name\":\"ia3\"") && strstr(list, "\"name\":\"dora\"") && strstr(list, "\"name\":\"shift\""),
           "search path list %s", list);
    CHECKF(strstr(list, "{\"error\":") && strstr(list, "bad_major.so") && strstr(list, "major versions differ"),
           "errors listed: %s", list);
    free(list);
}

/* ------------------------------------------------------------------------------------------------ */
/* Plugin adapters                                                                                   */
/* ------------------------------------------------------------------------------------------------ */

#define VOCAB 512
static char *ref_json;

/* The numbers of the JSON list that starts at the first '[' after p, flattened (up to cap). */
static int64_t numbers(const char *p, float *out, int64_t cap) {
    p = strchr(p, '[');
    int depth = 0;
    int64_t n = 0;
    while (p && *p) {
        if (*p == '[') { depth++; p++; continue; }
        if (*p == ']') { if (--depth == 0) return n; p++; continue; }
        if (*p == ',' || *p == ' ' || *p == '\n') { p++; continue; }
        char *end;
        double v = strtod(p, &end);
        if (end == p || n >= cap) return -1;
        out[n++] = (float)v;
        p = end;
    }
    return -1;
}

static const char *tiny_ref(void) {
    if (!ref_json) {
        char p[4300];
        snprintf(p, sizeof p, "%s/plugins/tiny/reference.json", fixtures);
        ref_json = lk_read_file(p, NULL);
        if (!ref_json) { fprintf(stderr, "cannot read %s\n", p); exit(2); }
    }
    return ref_json;
}

/* Sequence 0 (16 tokens) and PEFT's logits for it under `section` ("ia3_kvd", "dora_qv", or NULL: base). */
static int32_t seq0[16];
static float *expected_logits(const char *section) {
    float ids[64];
    if (numbers(strstr(tiny_ref(), "\"sequences\""), ids, 64) != 24) { fprintf(stderr, "bad sequences\n"); exit(2); }
    for (int i = 0; i < 16; i++) seq0[i] = (int32_t)ids[i];
    const char *p = section ? strstr(tiny_ref(), section) : tiny_ref();
    p = strstr(p, section ? "\"logits\"" : "\"base_logits\"");
    static float all[(16 + 8) * VOCAB];
    if (numbers(p, all, (16 + 8) * VOCAB) != (16 + 8) * VOCAB) { fprintf(stderr, "bad logits of %s\n", section); exit(2); }
    return all;  /* the first 16 rows are sequence 0 */
}

static float max_diff_logits(lk_context *ctx, const float *want) {
    static float got[16 * VOCAB];
    EXPECT_OK(lk_context_reset(ctx));
    EXPECT_OK(lk_context_eval(ctx, seq0, 16, LK_LOGITS_ALL, got, 16 * VOCAB));
    float worst = 0;
    for (int64_t i = 0; i < 16 * VOCAB; i++) {
        float d = fabsf(got[i] - want[i]);
        if (!(d <= worst)) worst = d;
    }
    return worst;
}

static lk_model *tiny(void) {
    char p[4300];
    snprintf(p, sizeof p, "%s/train/model", fixtures);
    lk_model *m = NULL;
    EXPECT_OK(lk_model_load(p, NULL, &m));
    return m;
}

static void test_plugin_adapters_match_peft(void) {
    lk_model *m = tiny();
    if (!m) return;
    lk_context *ctx = NULL;
    EXPECT_OK(lk_context_new(m, NULL, &ctx));
    const char *names[2] = {"ia3_kvd", "dora_qv"};
    for (int k = 0; k < 2; k++) {
        char dir[4300];
        snprintf(dir, sizeof dir, "%s/plugins/tiny/%s", fixtures, names[k]);
        lk_adapter *a = NULL;
        /* No lk_plugin_load: the type comes from the search path (the installed shipped plugins). */
        EXPECT_OK(lk_adapter_load(m, dir, &a));
        if (!a) continue;
        EXPECT_OK(lk_context_attach_adapter(ctx, a, 1.0f));
        float d = max_diff_logits(ctx, expected_logits(names[k]));
        CHECKF(d < 2e-4f, "%s: max |dlogit| vs PEFT %g", names[k], (double)d);
        printf("  %s: max |dlogit| vs PEFT %.3g\n", names[k], (double)d);
        EXPECT_OK(lk_context_set_adapter_scale(ctx, a, 0.0f));
        d = max_diff_logits(ctx, expected_logits(NULL));
        CHECKF(d < 2e-4f, "%s at scale 0: max |dlogit| vs base %g", names[k], (double)d);
        /* Saved to PEFT and loaded back: the same logits. */
        char out[4300];
        snprintf(out, sizeof out, "/tmp/lorakit-ctest-plugin-%d-%s", (int)getpid(), names[k]);
        EXPECT_OK(lk_adapter_save(a, out, LK_ADAPTER_PEFT));
        EXPECT_STATUS(lk_adapter_save(a, out, LK_ADAPTER_GGUF), LK_ERR_UNSUPPORTED, "GGUF LoRA files hold LoRA only");
        lk_adapter *b = NULL;
        EXPECT_OK(lk_adapter_load(m, out, &b));
        EXPECT_OK(lk_context_detach_adapter(ctx, a));
        EXPECT_OK(lk_context_attach_adapter(ctx, b, 1.0f));
        d = max_diff_logits(ctx, expected_logits(names[k]));
        CHECKF(d < 2e-4f, "%s reloaded: max |dlogit| vs PEFT %g", names[k], (double)d);
        EXPECT_OK(lk_context_detach_all(ctx));
        d = max_diff_logits(ctx, expected_logits(NULL));
        CHECKF(d < 2e-4f, "%s detached: max |dlogit| vs base %g", names[k], (double)d);
        char cmd[4400];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", out);
        if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", out);
        lk_adapter_free(a);
        lk_adapter_free(b);
    }
    lk_context_free(ctx);
    lk_model_free(m);
}

static void test_unknown_adapter_type(void) {
    lk_model *m = tiny();
    if (!m) return;
    char dir[256];
    snprintf(dir, sizeof dir, "/tmp/lorakit-ctest-loha-%d", (int)getpid());
    mkdir(dir, 0755);
    char cfg[300];
    snprintf(cfg, sizeof cfg, "%s/adapter_config.json", dir);
    const char *text = "{\"peft_type\": \"LOHA\", \"target_modules\": [\"q_proj\"]}";
    CHECK(lk_write_file(cfg, text, strlen(text)) == 0);
    lk_adapter *a = NULL;
    EXPECT_STATUS(lk_adapter_load(m, dir, &a), LK_ERR_UNSUPPORTED, "peft_type \"LOHA\" needs a plugin declaring peft_type \"LOHA\"");
    CHECK(a == NULL);
    unlink(cfg);
    rmdir(dir);
    lk_model_free(m);
}

/* New plugin adapters from C: lk_adapter_create with lk_lora_params.adapter_type (fresh IA³ and DoRA leave
 * the logits as they are; the PEFT config holds the type's fields), and training one with lk_trainer_*
 * (adapter_type "dora" and "ia3": the loss goes down, lk_trainer_adapter is of the type, the final PEFT folder
 * loads back to the same logits). Bad type names and configs are refused naming the field. The plugins
 * come from the search path (no lk_plugin_load). */
static void test_create_and_train_plugin_adapters(void) {
    lk_model *m = tiny();
    if (!m) return;
    lk_context *ctx = NULL;
    EXPECT_OK(lk_context_new(m, NULL, &ctx));
    const float *base = expected_logits(NULL);
    lk_lora_params lp;
    lk_lora_params_init(&lp);
    lp.targets = "k,v,down";
    lp.adapter_type = "ia3";
    lk_adapter *ia3 = NULL, *dora = NULL;
    EXPECT_OK(lk_adapter_create(m, &lp, &ia3));
    lp.targets = "q,v";
    lp.rank = 4;
    lp.alpha = 8;
    lp.adapter_type = "dora";
    lp.adapter_config = "{\"layers_to_transform\": [1]}";
    EXPECT_OK(lk_adapter_create(m, &lp, &dora));
    lk_adapter *fresh[2] = {ia3, dora};
    for (int k = 0; k < 2; k++) {
        if (!fresh[k]) continue;
        EXPECT_OK(lk_context_attach_adapter(ctx, fresh[k], 1.0f));
        float d = max_diff_logits(ctx, base);
        CHECKF(d < 2e-4f, "fresh %s: max |dlogit| vs base %g", k ? "dora" : "ia3", (double)d);
        EXPECT_OK(lk_context_detach_adapter(ctx, fresh[k]));
    }
    char out[4300], cfgpath[4400];
    snprintf(out, sizeof out, "/tmp/lorakit-ctest-newdora-%d", (int)getpid());
    EXPECT_OK(lk_adapter_save(dora, out, LK_ADAPTER_PEFT));
    snprintf(cfgpath, sizeof cfgpath, "%s/adapter_config.json", out);
    size_t n = 0;
    char *cfg = lk_read_file(cfgpath, &n);
    CHECK(cfg != NULL);
    if (cfg) {
        CHECKF(strstr(cfg, "\"use_dora\": true") && strstr(cfg, "\"r\": 4") && strstr(cfg, "\"layers_to_transform\""),
               "saved DoRA config: %s", cfg);
        free(cfg);
    }
    lk_adapter_free(ia3);
    lk_adapter_free(dora);

    /* Refusals, each naming the field; nothing is returned. */
    lk_adapter *bad = NULL;
    lp.adapter_config = NULL;
    lp.adapter_type = "loha";
    EXPECT_STATUS(lk_adapter_create(m, &lp, &bad), LK_ERR_INVALID_ARGUMENT, "adapter_type \"loha\" is not an adapter type of any loaded plugin");
    lp.adapter_type = "";
    EXPECT_STATUS(lk_adapter_create(m, &lp, &bad), LK_ERR_INVALID_ARGUMENT, "params->adapter_type is empty");
    lp.adapter_type = "ia3";
    lp.adapter_config = "[1, 2]";
    EXPECT_STATUS(lk_adapter_create(m, &lp, &bad), LK_ERR_INVALID_ARGUMENT, "adapter_config must be a JSON object");
    lp.adapter_config = "{\"target_modules\": ";
    EXPECT_STATUS(lk_adapter_create(m, &lp, &bad), LK_ERR_INVALID_ARGUMENT, "params->adapter_config is not JSON");
    lp.adapter_config = NULL;
    lp.init = LK_LORA_INIT_RANDOM;
    EXPECT_STATUS(lk_adapter_create(m, &lp, &bad), LK_ERR_INVALID_ARGUMENT, "params->init");
    CHECK(bad == NULL);

    /* Training: DoRA on q, v and IA³ on k, v, down, 4 steps each, through the data loop. */
    char data[4300];
    snprintf(data, sizeof data, "%s/train/data/text.jsonl", fixtures);
    const char *types[2] = {"dora", "ia3"};
    for (int k = 0; k < 2; k++) {
        char run[4300], final_dir[4400];
        snprintf(run, sizeof run, "/tmp/lorakit-ctest-train-%s-%d", types[k], (int)getpid());
        lk_train_params tp;
        lk_train_params_init(&tp);
        tp.adapter_type = types[k];
        tp.targets = k == 0 ? "q,v" : "k,v,down";
        tp.rank = 4;
        tp.alpha = 8;
        tp.lr = 2e-2;
        tp.steps = 4;
        tp.batch = 2;
        tp.seq = 24;
        tp.threads = 2;
        tp.seed = 3;
        tp.out_dir = run;
        lk_trainer *t = NULL;
        EXPECT_OK(lk_trainer_create(m, data, NULL, &tp, &t));
        if (!t) continue;
        double first = NAN, last = NAN;
        for (int s = 0; s < 4; s++) {
            lk_train_progress pr;
            pr.struct_size = sizeof pr;
            EXPECT_OK(lk_trainer_step(t, &pr));
            if (s == 0) first = pr.loss;
            last = pr.loss;
        }
        CHECKF(last < first, "%s: loss %g after 4 steps, %g at the first", types[k], last, first);
        lk_adapter *trained = NULL, *loaded = NULL;
        EXPECT_OK(lk_trainer_adapter(t, &trained));
        EXPECT_STATUS(lk_adapter_save(trained, "/tmp/x.gguf", LK_ADAPTER_GGUF), LK_ERR_UNSUPPORTED, "GGUF LoRA files hold LoRA only");
        EXPECT_OK(lk_trainer_run(t, NULL, NULL, NULL));  /* all steps done: the final checkpoint and adapter */
        snprintf(final_dir, sizeof final_dir, "%s/adapter", run);
        EXPECT_OK(lk_adapter_load(m, final_dir, &loaded));
        if (trained && loaded) {
            static float want[16 * VOCAB];
            EXPECT_OK(lk_context_attach_adapter(ctx, trained, 1.0f));
            EXPECT_OK(lk_context_reset(ctx));
            EXPECT_OK(lk_context_eval(ctx, seq0, 16, LK_LOGITS_ALL, want, 16 * VOCAB));
            EXPECT_OK(lk_context_detach_adapter(ctx, trained));
            EXPECT_OK(lk_context_attach_adapter(ctx, loaded, 1.0f));
            float d = max_diff_logits(ctx, want);
            CHECKF(d <= 1e-6f, "%s: saved vs trained max |dlogit| %g", types[k], (double)d);
            CHECKF(max_diff_logits(ctx, base) > 1e-4f, "%s: training changed nothing", types[k]);
            EXPECT_OK(lk_context_detach_adapter(ctx, loaded));
            printf("  %s trained from C: loss %.5f -> %.5f\n", types[k], first, last);
        }
        lk_adapter_free(trained);
        lk_adapter_free(loaded);
        lk_trainer_free(t);
        char cmd[4400];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", run);
        if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", run);
    }
    /* The trainer refuses dropout and GGUF output for a plugin type, naming the field. */
    lk_train_params tp;
    lk_train_params_init(&tp);
    tp.adapter_type = "ia3";
    tp.steps = 1;
    tp.dropout = 0.1f;
    lk_trainer *t = NULL;
    EXPECT_STATUS(lk_trainer_create(m, data, NULL, &tp, &t), LK_ERR_INVALID_ARGUMENT, "dropout");
    tp.dropout = 0;
    tp.format = LK_ADAPTER_GGUF;
    EXPECT_STATUS(lk_trainer_create(m, data, NULL, &tp, &t), LK_ERR_INVALID_ARGUMENT, "format");
    CHECK(t == NULL);
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", out);
    if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", out);
    lk_context_free(ctx);
    lk_model_free(m);
}

int main(int argc, char **argv) {
    static const lkt_case cases[] = {
        TESTCASE(test_load_shipped),
        TESTCASE(test_bad_plugins),
        TESTCASE(test_bad_arguments),
        TESTCASE(test_search_path),
        TESTCASE(test_plugin_adapters_match_peft),
        TESTCASE(test_unknown_adapter_type),
        TESTCASE(test_create_and_train_plugin_adapters),
    };
    return lkt_main(argc, argv, "plugin tests", setup, cases, sizeof cases / sizeof cases[0]);
}

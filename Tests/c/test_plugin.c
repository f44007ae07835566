/*
 * test_plugin.c — adapter plugins through the installed header and library: lk_plugin_load of the
 * shipped plugins (ia3.so in C, dora.so in Swift) and of every deliberately broken plugin of
 * Tests/plugins/bad_plugin.c (each refused with the expected status and a message naming the file and
 * both sides' values), listing, descriptions, and bad arguments.
 *
 * The plugins come from `make test-plugins` (Tests/plugins/run.sh), which builds them into
 * .build/plugin-tests/ (override: LORAKIT_TEST_PLUGIN_DIR). Each test runs in a fresh process, so each
 * starts with no plugin loaded (except what the search path would load, which these tests do not ask for
 * unless they say so).
 */
#include "lk_test.h"

static char plugin_dir[4096];

static void setup(void) {
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

int main(int argc, char **argv) {
    static const lkt_case cases[] = {
        TESTCASE(test_load_shipped),
        TESTCASE(test_bad_plugins),
        TESTCASE(test_bad_arguments),
        TESTCASE(test_search_path),
    };
    return lkt_main(argc, argv, "plugin tests", setup, cases, sizeof cases / sizeof cases[0]);
}

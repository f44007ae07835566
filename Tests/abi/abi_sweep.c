/*
 * abi_sweep.c — the C ABI swept with libffi (issue 14).
 *
 * Every lk_* function of lorakit.h is called through ffi_call, from a valid baseline, with one hostile
 * argument at a time: NULL, freed, forged and wrong-kind handles; NULL out-pointers; 0, -1, INT64_MAX/MIN
 * sizes; NaN/±inf floats; empty, non-UTF-8 and over-long strings; paths to folders, missing, random-byte,
 * truncated-GGUF files; params structs with struct_size 0, too small, implausibly large, or larger with a
 * garbage tail, and every params field set to hostile values. Each call runs in a forked child (a crash
 * or a hang fails that call only). A failing call must return its documented status with a non-empty
 * lk_last_error() naming the function, leave every out-parameter and caller buffer untouched, and leave
 * the live handles working.
 *
 * Where the signatures come from: abi_table.h, generated from the installed lorakit.h at build time by
 * scripts/abi_table.py (Tests/abi/run.sh), so it cannot go stale. The sweep checks that table against
 * `nm -D --defined-only` of the library it runs against (exported but undeclared lk_* symbols, or declared
 * but not exported functions, fail), and the constants the parser read against the compiler's values.
 * Every function of the table needs a baseline below (a missing one fails); every hostile value whose
 * documented outcome is not the default error of its kind is listed in `overrides` with the header's
 * reason, and an override that matches nothing fails too (no stale entries).
 *
 *   abi_sweep REPO_ROOT [--only lk_name] [--list] [--verbose]
 *
 * Prints one line per function, a closing "abi sweep: N functions, M calls, K crashes" and
 * "P passed, F failed" (Tests/c/run.sh's convention). Exit status 0 only without failures.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <ffi.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <lorakit.h>

/* ------------------------------------------------------------------------------------------------ */
/* The generated table                                                                               */
/* ------------------------------------------------------------------------------------------------ */

typedef enum { T_VOID, T_I8, T_U8, T_I32, T_U32, T_I64, T_U64, T_F32, T_F64, T_SZ, T_PTR } abi_type;
/* Parameter roles: scripts/abi_table.py param_role() (same names, R_ + role). */
typedef enum {
    R_HANDLE, R_HANDLE_ARRAY, R_OUT_HANDLE, R_PARAMS, R_RESULT, R_INIT, R_CSTR, R_TEXT, R_LEN, R_OUT_BUF,
    R_CAPACITY, R_OUT_SCALAR, R_OUT_STR, R_IN_ARRAY, R_COUNT, R_INT, R_FLOAT, R_CALLBACK, R_USERDATA, R_SIZE,
    R_OWNED_STR
} abi_role;
typedef struct { const char *name; long long compiled, parsed; } abi_const;
typedef struct { const char *name, *ctype; abi_type type; size_t offset, size; } abi_field;
typedef struct { const char *name; size_t size, first_size; int sized, n_fields; const abi_field *fields; } abi_struct;
typedef struct { const char *name, *ctype; abi_type type; abi_role role; const char *detail; } abi_param;
#define MAXP 16
typedef struct { const char *name, *ret_ctype; abi_type ret; int n_params; abi_param params[MAXP]; } abi_fn;

#include "abi_table.h"

/* ------------------------------------------------------------------------------------------------ */
/* Small helpers                                                                                     */
/* ------------------------------------------------------------------------------------------------ */

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stdout, "abi_sweep: ");
    vfprintf(stdout, fmt, ap);
    fprintf(stdout, "\n");
    va_end(ap);
    fflush(stdout);
    exit(2);
}

static int verbose;

/* Bounded copy (snprintf "%s" without format-truncation warnings). */
static void scpy(char *dst, size_t n, const char *src) {
    size_t l = strlen(src);
    if (l >= n) l = n - 1;
    memcpy(dst, src, l);
    dst[l] = 0;
}

static const char *status_name(int32_t s) {
    switch (s) {
    case LK_OK: return "LK_OK";
    case LK_STOPPED: return "LK_STOPPED";
    case LK_ERR_INVALID_ARGUMENT: return "LK_ERR_INVALID_ARGUMENT";
    case LK_ERR_INVALID_HANDLE: return "LK_ERR_INVALID_HANDLE";
    case LK_ERR_SHAPE: return "LK_ERR_SHAPE";
    case LK_ERR_UNSUPPORTED: return "LK_ERR_UNSUPPORTED";
    case LK_ERR_IO: return "LK_ERR_IO";
    case LK_ERR_FORMAT: return "LK_ERR_FORMAT";
    case LK_ERR_OUT_OF_MEMORY: return "LK_ERR_OUT_OF_MEMORY";
    case LK_ERR_ABI: return "LK_ERR_ABI";
    case LK_ERR_BUFFER_TOO_SMALL: return "LK_ERR_BUFFER_TOO_SMALL";
    case LK_ERR_INTERNAL: return "LK_ERR_INTERNAL";
    default: return "(not a status)";
    }
}

/* Expectations besides a single status. */
#define EXPECT_ANY 1000     /* any status; on error the message/out-parameter rules still hold */
#define EXPECT_CHECK 1001   /* a function without lk_status: its spec's check decides */

static const abi_fn *find_fn(const char *name) {
    for (size_t i = 0; i < ABI_N_FUNCTIONS; i++)
        if (strcmp(abi_functions[i].name, name) == 0) return &abi_functions[i];
    return NULL;
}

static const abi_struct *find_struct(const char *name) {
    for (size_t i = 0; i < ABI_N_STRUCTS; i++)
        if (strcmp(abi_structs[i].name, name) == 0) return &abi_structs[i];
    return NULL;
}

static void write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n) die("cannot write %s: %s", path, strerror(errno));
    fclose(f);
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) die("cannot read %s: %s", path, strerror(errno));
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) die("cannot read %s", path);
    fclose(f);
    buf[n] = 0;
    *len = (size_t)n;
    return buf;
}

/* ------------------------------------------------------------------------------------------------ */
/* Fixtures: files, handles (created once in the parent; every child inherits them through fork)    */
/* ------------------------------------------------------------------------------------------------ */

static char tmp_dir[512];
static char p_model_dir[1024], p_gguf[1024], p_bad_jsonl[1024];
static char p_random[600], p_trunc[600], p_garbage[600], p_folder[600], p_missing[600], p_under_file[600];
static char p_train[600], p_valid[600], p_a_peft[600], p_run[600], p_run_create[600], p_save[600], p_merged[600];
static char p_hf_badcfg[600], p_hf_trunc[600], p_hf_badtok[600], p_peft_badcfg[600], p_peft_trunc[600];
static char *overlong;                          /* 1 MiB of 'a' */
static const char nonutf8[] = "\xff\xfe bad \xc3\x28";

static lk_model *M, *G, *victim_model, *M_badtok;          /* M: tiny HF folder with tokenizer + chat template; G: tiny GGUF */
static lk_context *C, *C_att, *C_by, *victim_ctx;
static lk_tensor *X, *W, *O, *V, *victim_tensor;
static lk_adapter *A, *AG, *victim_adapter;
static lk_trainer *T, *TM, *victim_trainer;
static lk_projector *P, *victim_projector;
static lk_plugin *PL, *victim_plugin;
static lk_batch *B, *victim_batch;              /* B: sequence 0 at position 3 with adapter A */
static char p_plugin[1200];                     /* the shipped IA³ plugin (make plugins: .build/plugins/ia3.so) */
static char p_proj[600], p_save_proj[600];
static void *forged_heap;                       /* a real heap pointer no call ever returned */
static int32_t n_vocab, n_embd, n_ctx_train;
static const int32_t CTX_POSITIONS = 32;

typedef struct { const char *kind; void *live, *freed; char wrong_tag[64]; } handle_kind;
static handle_kind kinds[] = {{"tensor", 0, 0, ""}, {"model", 0, 0, ""}, {"context", 0, 0, ""},
                              {"adapter", 0, 0, ""}, {"trainer", 0, 0, ""}, {"projector", 0, 0, ""},
                              {"plugin", 0, 0, ""}, {"batch", 0, 0, ""}};
#define N_KINDS (sizeof kinds / sizeof kinds[0])

static handle_kind *kind_named(const char *k) {
    for (size_t i = 0; i < N_KINDS; i++)
        if (strcmp(kinds[i].kind, k) == 0) return &kinds[i];
    return NULL;
}

static void must(lk_status s, const char *what) {
    if (s != LK_OK) die("setup: %s failed: %s (%s)", what, status_name(s), lk_last_error());
}

static void setup_trainer_params(lk_train_params *tp, const char *out_dir) {
    lk_train_params_init(tp);
    tp->rank = 2;
    tp->steps = 2;
    tp->batch = 1;
    tp->seq = 16;
    tp->threads = 1;
    tp->seed = 1;
    tp->out_dir = out_dir;
}

/* Copy folder `from` to `to`, then damage its file `name`: truncate it to a third (truncate = 1) or
 * replace its middle with random bytes. */
static void corrupt_copy(const char *from, const char *to, const char *name, int truncate) {
    char cmd[2048], path[1200];
    snprintf(cmd, sizeof cmd, "cp -r '%s' '%s'", from, to);
    if (system(cmd) != 0) die("setup: %s failed", cmd);
    snprintf(path, sizeof path, "%s/%s", to, name);
    size_t n = 0;
    char *data = read_file(path, &n);
    if (truncate) {
        write_file(path, data, n / 3);
    } else {
        uint64_t s = 0x2545F4914F6CDD1Dull;
        for (size_t i = n / 4; i < n - n / 4; i++) {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            data[i] = (char)s;
        }
        write_file(path, data, n);
    }
    free(data);
}

static void setup(const char *root) {
    snprintf(tmp_dir, sizeof tmp_dir, "%s/lorakit-abi.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(tmp_dir)) die("mkdtemp: %s", strerror(errno));
    snprintf(p_model_dir, sizeof p_model_dir, "%s/Tests/LoRAKitTests/Fixtures/train/model", root);
    snprintf(p_gguf, sizeof p_gguf, "%s/Tests/LoRAKitTests/Fixtures/model/tiny-llama-f32.gguf", root);
    snprintf(p_plugin, sizeof p_plugin, "%s/.build/plugins/ia3.so", root);
    snprintf(p_bad_jsonl, sizeof p_bad_jsonl, "%s/Tests/LoRAKitTests/Fixtures/train/data/bad.jsonl", root);
#define TMP(var, name) snprintf(var, sizeof var, "%s/%s", tmp_dir, name)
    TMP(p_random, "random.bin");
    TMP(p_trunc, "truncated.gguf");
    TMP(p_garbage, "garbage.gguf");
    TMP(p_folder, "empty-folder");
    TMP(p_missing, "no-such-file.gguf");
    TMP(p_under_file, "random.bin/sub/file");
    TMP(p_train, "train.jsonl");
    TMP(p_valid, "valid.jsonl");
    TMP(p_a_peft, "a-peft");
    TMP(p_proj, "projector.gguf");
    TMP(p_save_proj, "projector-saved.gguf");
    TMP(p_run, "run");
    TMP(p_run_create, "run-create");
    TMP(p_save, "saved-adapter");
    TMP(p_merged, "merged.gguf");
    TMP(p_hf_badcfg, "hf-bad-config");
    TMP(p_hf_trunc, "hf-truncated-weights");
    TMP(p_hf_badtok, "hf-bad-tokenizer");
    TMP(p_peft_badcfg, "peft-bad-config");
    TMP(p_peft_trunc, "peft-truncated-weights");
#undef TMP
    /* Hostile files. */
    unsigned char rnd[4096];
    uint64_t s = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < sizeof rnd; i++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        rnd[i] = (unsigned char)s;
    }
    write_file(p_random, rnd, sizeof rnd);
    size_t glen = 0;
    char *gguf = read_file(p_gguf, &glen);
    write_file(p_trunc, gguf, glen < 5000 ? glen / 2 : 5000);
    memcpy(rnd, "GGUF\x03\0\0\0", 8); /* magic and version 3, then random counts and bytes */
    write_file(p_garbage, rnd, sizeof rnd);
    free(gguf);
    if (mkdir(p_folder, 0755) != 0) die("mkdir %s: %s", p_folder, strerror(errno));
    overlong = malloc((1u << 20) + 1);
    memset(overlong, 'a', 1u << 20);
    overlong[1u << 20] = 0;
    const char *data =
        "{\"text\": \"The gardener woke early and walked down to the greenhouse.\"}\n"
        "{\"text\": \"Hello there, said the robot to the cat.\"}\n"
        "{\"prompt\": \"Two plus two is\", \"completion\": \" four.\"}\n";
    write_file(p_train, data, strlen(data));
    write_file(p_valid, data, strlen(data));

    /* Handles. Context-free tensor ops and every pool run on the calling thread (1 thread), so the
     * parent stays single-threaded and fork() is safe. */
    must(lk_set_default_threads(1), "lk_set_default_threads(1)");
    must(lk_model_load(p_model_dir, NULL, &M), "lk_model_load(train fixture model)");
    must(lk_model_load(p_gguf, NULL, &G), "lk_model_load(tiny-llama-f32.gguf)");
    must(lk_model_load(p_model_dir, NULL, &victim_model), "lk_model_load(victim)");
    lk_model_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    must(lk_model_get_info(M, &info), "lk_model_get_info");
    n_vocab = info.n_vocab;
    n_embd = info.n_embd;
    n_ctx_train = info.n_ctx_train;
    if (!info.has_tokenizer || !info.has_chat_template) die("setup: %s has no tokenizer or chat template", p_model_dir);

    const float xv[6] = {1.5f, -2.0f, 3.25f, 0.0f, -0.5f, 8.0f};
    float wv[12];
    for (int i = 0; i < 12; i++) wv[i] = (float)(i % 5) - 2.0f;
    const int64_t xs[2] = {2, 3}, ws[2] = {4, 3}, os[2] = {2, 4};
    must(lk_tensor_from_f32(xv, 6, LK_DTYPE_F32, 2, xs, &X), "lk_tensor_from_f32(X)");
    must(lk_tensor_from_f32(wv, 12, LK_DTYPE_F32, 2, ws, &W), "lk_tensor_from_f32(W)");
    must(lk_tensor_new(LK_DTYPE_F32, 2, os, &O), "lk_tensor_new(O)");
    must(lk_tensor_new(LK_DTYPE_F32, 2, os, &victim_tensor), "lk_tensor_new(victim)");
    const int64_t vs[2] = {3, 3};
    must(lk_tensor_new(LK_DTYPE_F32, 2, vs, &V), "lk_tensor_new(V)");

    lk_context_params cp;
    lk_context_params_init(&cp);
    cp.n_ctx = CTX_POSITIONS;
    cp.n_threads = 1;
    must(lk_context_new(M, &cp, &C), "lk_context_new(C)");
    must(lk_context_new(M, &cp, &C_att), "lk_context_new(C_att)");
    must(lk_context_new(M, &cp, &C_by), "lk_context_new(C_by)");
    must(lk_context_new(M, &cp, &victim_ctx), "lk_context_new(victim)");

    lk_lora_params lp;
    lk_lora_params_init(&lp);
    lp.rank = 2;
    lp.init = LK_LORA_INIT_RANDOM;
    must(lk_adapter_create(M, &lp, &A), "lk_adapter_create(A)");
    must(lk_adapter_create(G, &lp, &AG), "lk_adapter_create(AG)");
    must(lk_adapter_create(M, &lp, &victim_adapter), "lk_adapter_create(victim)");
    must(lk_adapter_save(A, p_a_peft, LK_ADAPTER_PEFT), "lk_adapter_save(A)");
    must(lk_context_attach_adapter(C_att, A, 1.0f), "lk_context_attach_adapter(C_att, A)");
    /* Damaged copies of a model folder and an adapter folder. */
    corrupt_copy(p_model_dir, p_hf_badcfg, "config.json", 0);
    corrupt_copy(p_model_dir, p_hf_trunc, "model.safetensors", 1);
    corrupt_copy(p_model_dir, p_hf_badtok, "tokenizer.json", 0);
    must(lk_model_load(p_hf_badtok, NULL, &M_badtok), "lk_model_load(damaged tokenizer.json)");
    corrupt_copy(p_a_peft, p_peft_badcfg, "adapter_config.json", 0);
    corrupt_copy(p_a_peft, p_peft_trunc, "adapter_model.safetensors", 1);

    lk_train_params tp;
    setup_trainer_params(&tp, p_run);
    must(lk_trainer_create(M, p_train, p_valid, &tp, &T), "lk_trainer_create(T)");
    setup_trainer_params(&tp, NULL);
    must(lk_trainer_create(M, NULL, NULL, &tp, &TM), "lk_trainer_create(TM, manual)");
    must(lk_trainer_create(M, NULL, NULL, &tp, &victim_trainer), "lk_trainer_create(victim)");

    must(lk_projector_create(M, 4, 7, &P), "lk_projector_create(P)");
    must(lk_projector_save(P, p_proj), "lk_projector_save(P)");
    must(lk_projector_create(M, 4, 8, &victim_projector), "lk_projector_create(victim)");
    must(lk_plugin_load(p_plugin, &PL), "lk_plugin_load(PL) (make plugins builds .build/plugins/ia3.so)");
    must(lk_plugin_load(p_plugin, &victim_plugin), "lk_plugin_load(victim)");
    must(lk_batch_new(M, 4, CTX_POSITIONS, 1, &B), "lk_batch_new(B)");
    must(lk_batch_new(M, 2, CTX_POSITIONS, 1, &victim_batch), "lk_batch_new(victim)");
    {
        int32_t s0;
        must(lk_batch_add_sequence(B, &s0), "lk_batch_add_sequence(B)");
        lk_adapter *ads[1] = {A};
        const float sc[1] = {0.5f};
        must(lk_batch_set_adapters(B, s0, ads, sc, 1), "lk_batch_set_adapters(B)");
        const int32_t toks[3] = {5, 6, 7};
        const int64_t n3 = 3;
        float *lg = malloc((size_t)n_vocab * 4);
        must(lk_batch_step(B, 1, &s0, toks, &n3, lg, n_vocab), "lk_batch_step(B)");
        free(lg);
    }

    /* Freed handles: made, then released. */
    lk_tensor *ft;
    must(lk_tensor_new(LK_DTYPE_F32, 2, xs, &ft), "lk_tensor_new(freed)");
    must(lk_tensor_free(ft), "lk_tensor_free(freed)");
    lk_model *fm;
    must(lk_model_load(p_gguf, NULL, &fm), "lk_model_load(freed)");
    lk_context *fc;
    must(lk_context_new(fm, &cp, &fc), "lk_context_new(freed)");
    lk_adapter *fa;
    must(lk_adapter_create(fm, &lp, &fa), "lk_adapter_create(freed)");
    lk_trainer *ftr;
    must(lk_trainer_create(M, NULL, NULL, &tp, &ftr), "lk_trainer_create(freed)");
    must(lk_context_free(fc), "lk_context_free(freed)");
    must(lk_adapter_free(fa), "lk_adapter_free(freed)");
    must(lk_trainer_free(ftr), "lk_trainer_free(freed)");
    lk_projector *fp;
    must(lk_projector_create(M, 4, 9, &fp), "lk_projector_create(freed)");
    must(lk_projector_free(fp), "lk_projector_free(freed)");
    lk_plugin *fpl;
    must(lk_plugin_load(p_plugin, &fpl), "lk_plugin_load(freed)");
    must(lk_plugin_free(fpl), "lk_plugin_free(freed)");
    lk_batch *fb;
    must(lk_batch_new(M, 1, CTX_POSITIONS, 1, &fb), "lk_batch_new(freed)");
    must(lk_batch_free(fb), "lk_batch_free(freed)");
    must(lk_model_free(fm), "lk_model_free(freed)");

    kinds[0].live = X; kinds[0].freed = ft;
    kinds[1].live = M; kinds[1].freed = fm;
    kinds[2].live = C; kinds[2].freed = fc;
    kinds[3].live = A; kinds[3].freed = fa;
    kinds[4].live = T; kinds[4].freed = ftr;
    kinds[5].live = P; kinds[5].freed = fp;
    kinds[6].live = PL; kinds[6].freed = fpl;
    kinds[7].live = B; kinds[7].freed = fb;
    for (size_t i = 0; i < N_KINDS; i++) snprintf(kinds[i].wrong_tag, sizeof kinds[i].wrong_tag, "live %s handle", kinds[i].kind);
    /* Every handle type of the header needs a live and a freed handle here. */
    for (size_t i = 0; i < ABI_N_OPAQUE; i++)
        if (strncmp(abi_opaque[i], "lk_", 3) != 0 || !kind_named(abi_opaque[i] + 3))
            die("setup: lorakit.h declares handle type %s, which this sweep cannot make: add it to `kinds`", abi_opaque[i]);
    forged_heap = malloc(256);
    memset(forged_heap, 0xEE, 256);
    lk_clear_error();
}

static int thread_count(void) {
    DIR *d = opendir("/proc/self/task");
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

static void remove_tree(const char *path) {
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    if (system(cmd) != 0) fprintf(stdout, "abi_sweep: could not remove %s\n", path);
}

/* ------------------------------------------------------------------------------------------------ */
/* A call: argument values plus the memory the checks watch                                          */
/* ------------------------------------------------------------------------------------------------ */

typedef union { int8_t i8; uint8_t u8; int32_t i32; uint32_t u32; int64_t i64; uint64_t u64; float f32;
                double f64; size_t sz; void *p; } argval;

enum {
    REG_OUT = 1,     /* an out-parameter / caller buffer: untouched unless the call succeeds */
    REG_NEEDED = 2,  /* with REG_OUT: also written on LK_ERR_BUFFER_TOO_SMALL (the needed size) */
    REG_KEEP = 4,    /* never written (const inputs, garbage tails, result struct_size) */
};

typedef struct { char what[96]; unsigned char *p; size_t n; int flags; unsigned char *snap; } region;
typedef struct { char label[64]; const abi_struct *st; unsigned char *p; int result; } sreg;

typedef struct {
    const abi_fn *fn;
    argval a[MAXP];
    region reg[32];
    int n_reg;
    sreg st[8];
    int n_st;
    void *allocs[64];
    size_t alloc_sizes[64];
    int n_allocs;
} call;

/* Every buffer of a call ends flush against a PROT_NONE guard page, so reading or writing past it (a
 * length or capacity taken at face value) crashes the child instead of passing by luck. */
static void *c_alloc(call *c, size_t n) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t need = (n + 15) & ~(size_t)15;
    size_t body = (need + page - 1) / page * page;
    if (body == 0) body = page;
    unsigned char *base = mmap(NULL, body + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) die("mmap: %s", strerror(errno));
    if (mprotect(base + body, page, PROT_NONE) != 0) die("mprotect: %s", strerror(errno));
    if (c->n_allocs >= 64) die("%s: too many allocations", c->fn->name);
    c->allocs[c->n_allocs] = base;
    c->alloc_sizes[c->n_allocs++] = body + page;
    return base + body - need;
}

static void call_free(call *c) {
    for (int i = 0; i < c->n_allocs; i++) munmap(c->allocs[i], c->alloc_sizes[i]);
    for (int i = 0; i < c->n_reg; i++) free(c->reg[i].snap);
    c->n_allocs = 0;
}

static int pidx(const call *c, const char *name) {
    for (int i = 0; i < c->fn->n_params; i++)
        if (strcmp(c->fn->params[i].name, name) == 0) return i;
    die("baseline of %s names parameter '%s', which lorakit.h does not declare: update the baseline", c->fn->name, name);
    return -1;
}

static void set_arg(call *c, const char *name, abi_type t, argval v) {
    int i = pidx(c, name);
    if (c->fn->params[i].type != t)
        die("baseline of %s sets %s with the wrong type (lorakit.h: %s): update the baseline", c->fn->name, name,
            c->fn->params[i].ctype);
    c->a[i] = v;
}
#define SET_I32(c, n, v) set_arg((c), (n), T_I32, (argval){.i32 = (v)})
#define SET_I64(c, n, v) set_arg((c), (n), T_I64, (argval){.i64 = (v)})
#define SET_F32(c, n, v) set_arg((c), (n), T_F32, (argval){.f32 = (v)})
#define SET_F64(c, n, v) set_arg((c), (n), T_F64, (argval){.f64 = (v)})
#define SET_SZ(c, n, v) set_arg((c), (n), T_SZ, (argval){.sz = (v)})
#define SET_P(c, n, v) set_arg((c), (n), T_PTR, (argval){.p = (void *)(v)})

static region *add_region(call *c, const char *what, void *p, size_t n, int flags) {
    if (c->n_reg >= 32) die("%s: too many regions", c->fn->name);
    region *r = &c->reg[c->n_reg++];
    scpy(r->what, sizeof r->what, what);
    r->p = p;
    r->n = n;
    r->flags = flags;
    r->snap = NULL;
    return r;
}

/* An out-parameter (or caller buffer) of n bytes, filled with a canary. */
static void *out_mem(call *c, const char *what, size_t n, int flags) {
    unsigned char *p = c_alloc(c, n);
    memset(p, 0xA5, n);
    add_region(c, what, p, n, REG_OUT | flags);
    return p;
}

/* A const input array: `n` bytes of data in an allocation of `alloc` bytes (zero-padded, so a count that
 * lies upwards stays inside the allocation), watched for writes. */
static void *in_mem(call *c, const char *what, const void *data, size_t n, size_t alloc) {
    unsigned char *p = c_alloc(c, alloc);
    if (n) memcpy(p, data, n);
    add_region(c, what, p, alloc, REG_KEEP);
    return p;
}

typedef void (*init_fn)(void *);
typedef void (*init_sized_fn)(void *, size_t);

/* A params struct (filled by its init function, then `fill`ed by the caller) or a result struct
 * (canary-filled, struct_size = sizeof), in an allocation 64 bytes larger (the garbage tail). */
static void *new_struct(call *c, const char *label, const char *sname, int result) {
    const abi_struct *st = find_struct(sname);
    if (!st) die("baseline of %s: no struct %s in lorakit.h", c->fn->name, sname);
    unsigned char *p = c_alloc(c, st->size + 64);
    memset(p, 0xEE, st->size + 64);
    if (result) {
        uint32_t sz = (uint32_t)st->size;
        memset(p, 0xA5, st->size);
        memcpy(p, &sz, 4);
    } else {
        char name[96];
        snprintf(name, sizeof name, "%s_init_sized", sname);
        init_sized_fn fs = (init_sized_fn)(uintptr_t)dlsym(RTLD_DEFAULT, name);
        if (fs) {
            fs(p, st->size);
        } else {
            snprintf(name, sizeof name, "%s_init", sname);
            init_fn f = (init_fn)(uintptr_t)dlsym(RTLD_DEFAULT, name);
            if (!f) die("no %s to fill %s", name, sname);
            f(p);
        }
    }
    if (c->n_st >= 8) die("too many structs");
    sreg *s = &c->st[c->n_st++];
    scpy(s->label, sizeof s->label, label);
    s->st = st;
    s->p = p;
    s->result = result;
    return p;
}

/* Register the watch regions of the structs (after the baseline and the mutation set them up). */
static void watch_structs(call *c) {
    for (int i = 0; i < c->n_st; i++) {
        sreg *s = &c->st[i];
        char what[96];
        if (s->result) {
            snprintf(what, sizeof what, "%s->struct_size", s->label);
            add_region(c, what, s->p, 4, REG_KEEP);
            snprintf(what, sizeof what, "%s (fields)", s->label);
            add_region(c, what, s->p + 4, s->st->size - 4, REG_OUT);
        } else {
            snprintf(what, sizeof what, "%s (const params)", s->label);
            add_region(c, what, s->p, s->st->size, REG_KEEP);
        }
        snprintf(what, sizeof what, "%s (bytes past the struct)", s->label);
        add_region(c, what, s->p + s->st->size, 64, REG_KEEP);
    }
}

static const abi_field *field_named(const abi_struct *st, const char *name) {
    for (int i = 0; i < st->n_fields; i++)
        if (strcmp(st->fields[i].name, name) == 0) return &st->fields[i];
    die("struct %s has no field %s", st->name, name);
    return NULL;
}

/* ------------------------------------------------------------------------------------------------ */
/* Baselines: one valid call per function                                                            */
/* ------------------------------------------------------------------------------------------------ */

static int32_t train_progress_callback(const lk_train_progress *p, void *user_data) {
    (void)p;
    (void)user_data;
    return 0;
}

static void provoke_error(void) {
    int64_t a, b;
    lk_dtype_info(42, &a, &b); /* sets lk_last_error() to a message naming dtype 42 */
}

static void out_handle(call *c, const char *name) { SET_P(c, name, out_mem(c, name, sizeof(void *), 0)); }

static const int32_t some_tokens[4] = {5, 6, 7, 8};

static void b_none(call *c) { (void)c; }
static void b_error(call *c) { (void)c; provoke_error(); }
static void b_status_string(call *c) { SET_I32(c, "status", LK_ERR_SHAPE); }
static void b_dtype_name(call *c) { SET_I32(c, "dtype", LK_DTYPE_Q4_1); }
static void b_dtype_info(call *c) {
    SET_I32(c, "dtype", LK_DTYPE_Q8_0);
    SET_P(c, "block_size", out_mem(c, "*block_size", 8, 0));
    SET_P(c, "block_bytes", out_mem(c, "*block_bytes", 8, 0));
}
static void b_set_default_threads(call *c) { SET_I32(c, "n_threads", 1); }

static void b_tensor_new(call *c) {
    const int64_t shape[2] = {2, 3};
    SET_I32(c, "dtype", LK_DTYPE_F32);
    SET_I32(c, "n_dims", 2);
    SET_P(c, "shape", in_mem(c, "shape[]", shape, sizeof shape, 16 * sizeof(int64_t)));
    out_handle(c, "out");
}
static void b_tensor_from_f32(call *c) {
    const int64_t shape[2] = {2, 3};
    const float data[6] = {1, 2, 3, 4, 5, 6};
    SET_P(c, "data", in_mem(c, "data[]", data, sizeof data, 64 * sizeof(float)));
    SET_I64(c, "n_values", 6);
    SET_I32(c, "dtype", LK_DTYPE_F32);
    SET_I32(c, "n_dims", 2);
    SET_P(c, "shape", in_mem(c, "shape[]", shape, sizeof shape, 16 * sizeof(int64_t)));
    out_handle(c, "out");
}
static void b_tensor_convert(call *c) {
    SET_P(c, "t", X);
    SET_I32(c, "dtype", LK_DTYPE_F16);
    out_handle(c, "out");
}
static void b_tensor_free(call *c) { SET_P(c, "t", victim_tensor); }
static void b_tensor_shape(call *c) {
    SET_P(c, "t", X);
    SET_P(c, "n_dims", out_mem(c, "*n_dims", 4, REG_NEEDED));
    SET_P(c, "shape", out_mem(c, "shape[]", 8 * sizeof(int64_t), 0));
    SET_I32(c, "capacity", 8);
}
static void b_tensor_dtype(call *c) {
    SET_P(c, "t", X);
    SET_P(c, "dtype", out_mem(c, "*dtype", 4, 0));
}
static void b_tensor_size(call *c) {
    SET_P(c, "t", X);
    SET_P(c, "n_elements", out_mem(c, "*n_elements", 8, 0));
    SET_P(c, "n_bytes", out_mem(c, "*n_bytes", 8, 0));
}
static void b_tensor_copy_to_f32(call *c) {
    SET_P(c, "t", X);
    SET_P(c, "dst", out_mem(c, "dst[]", 6 * sizeof(float), 0));
    SET_I64(c, "capacity", 6);
}
static void b_tensor_copy_bytes(call *c) {
    SET_P(c, "t", X);
    SET_P(c, "dst", out_mem(c, "dst[]", 24, 0));
    SET_I64(c, "capacity", 24);
}
static void b_matmul(call *c) {
    SET_P(c, "x", X);
    SET_P(c, "w", W);
    SET_I32(c, "transpose_w", 1);
    SET_P(c, "out", O);
}

static void b_init(call *c) {
    const char *sname = c->fn->params[0].detail;
    const abi_struct *st = find_struct(sname);
    unsigned char *p = c_alloc(c, st->size + 64);
    memset(p, 0xEE, st->size + 64);
    add_region(c, "*p", p, st->size + 64, 0); /* checked by check_init */
    SET_P(c, "p", p);
    if (c->fn->n_params == 2) SET_SZ(c, "size", st->size);
}

static void b_model_load(call *c) {
    SET_P(c, "path", p_model_dir);
    SET_P(c, "params", new_struct(c, "params", "lk_model_params", 0));
    out_handle(c, "out");
}
static void b_model_free(call *c) { SET_P(c, "model", victim_model); }
static void b_model_get_info(call *c) {
    SET_P(c, "model", M);
    SET_P(c, "info", new_struct(c, "info", "lk_model_info", 1));
}
static void buf_needed(call *c, size_t cap) {
    SET_P(c, "buf", out_mem(c, "buf[]", cap, 0));
    SET_I64(c, "capacity", (int64_t)cap);
    SET_P(c, "needed", out_mem(c, "*needed", 8, REG_NEEDED));
}
static void b_model_architecture(call *c) { SET_P(c, "model", M); buf_needed(c, 64); }
static void b_model_chat_template(call *c) { SET_P(c, "model", M); buf_needed(c, 16384); }
static void b_model_meta(call *c) {
    SET_P(c, "model", G);
    SET_P(c, "key", "general.architecture");
    buf_needed(c, 64);
}
static void b_tokenize(call *c) {
    static const char text[] = "Hello world, <|im_start|>user";
    SET_P(c, "model", M);
    SET_P(c, "text", in_mem(c, "text", text, sizeof text - 1, 4096));
    SET_I64(c, "text_len", (int64_t)sizeof text - 1);
    SET_I32(c, "add_special", -1);
    SET_I32(c, "parse_special", 1);
    SET_P(c, "tokens", out_mem(c, "tokens[]", 64 * 4, 0));
    SET_I64(c, "capacity", 64);
    SET_P(c, "n_tokens", out_mem(c, "*n_tokens", 8, REG_NEEDED));
}
static void b_detokenize(call *c) {
    SET_P(c, "model", M);
    SET_P(c, "tokens", in_mem(c, "tokens[]", some_tokens, 3 * 4, 1024 * 4));
    SET_I64(c, "n_tokens", 3);
    SET_I32(c, "skip_special", 0);
    buf_needed(c, 256);
}
static void b_token_bytes(call *c) {
    SET_P(c, "model", M);
    SET_I32(c, "token", 65);
    buf_needed(c, 64);
}
static void b_chat_apply(call *c) {
    lk_chat_message msgs[2] = {{"user", "Hi!"}, {"assistant", "Hello."}};
    SET_P(c, "model", M);
    SET_P(c, "messages", in_mem(c, "messages[]", msgs, sizeof msgs, 64 * sizeof(lk_chat_message)));
    SET_I64(c, "n_messages", 2);
    SET_I32(c, "add_generation_prompt", 1);
    buf_needed(c, 16384);
}
static void b_model_chat_limit(call *c) {
    SET_P(c, "model", M);
    SET_I32(c, "limit", LK_CHAT_LIMIT_STEPS);
    SET_I64(c, "new_value", 50000000);
    SET_P(c, "old_value", out_mem(c, "*old_value", 8, 0));
}
static void b_context_new(call *c) {
    SET_P(c, "model", M);
    lk_context_params *p = new_struct(c, "params", "lk_context_params", 0);
    p->n_ctx = CTX_POSITIONS;
    p->n_threads = 1;
    SET_P(c, "params", p);
    out_handle(c, "out");
}
static void b_context_free(call *c) { SET_P(c, "ctx", victim_ctx); }
static void b_context_reset(call *c) { SET_P(c, "ctx", C); }
static void b_context_position(call *c) {
    SET_P(c, "ctx", C);
    SET_P(c, "position", out_mem(c, "*position", 4, 0));
}
static void b_context_eval(call *c) {
    SET_P(c, "ctx", C);
    SET_P(c, "tokens", in_mem(c, "tokens[]", some_tokens, 3 * 4, 1024 * 4));
    SET_I64(c, "n_tokens", 3);
    SET_I32(c, "logits_mode", LK_LOGITS_LAST);
    SET_P(c, "logits", out_mem(c, "logits[]", (size_t)n_vocab * 4 * 4, 0));
    SET_I64(c, "capacity", n_vocab);
}
static void b_context_eval_embeddings(call *c) {
    float *e = c_alloc(c, (size_t)n_embd * 2 * 4);
    for (int i = 0; i < n_embd * 2; i++) e[i] = (float)((i % 7) - 3) * 0.1f;
    SET_P(c, "ctx", C);
    SET_P(c, "embeddings", in_mem(c, "embeddings[]", e, (size_t)n_embd * 2 * 4, (size_t)n_embd * 256 * 4));
    SET_I64(c, "n_rows", 2);
    SET_I32(c, "logits_mode", LK_LOGITS_LAST);
    SET_P(c, "logits", out_mem(c, "logits[]", (size_t)n_vocab * 4 * 4, 0));
    SET_I64(c, "capacity", n_vocab);
}
static void b_generate(call *c) {
    SET_P(c, "ctx", C);
    SET_P(c, "prompt", in_mem(c, "prompt[]", some_tokens, 3 * 4, 1024 * 4));
    SET_I64(c, "n_prompt", 3);
    lk_generate_params *gp = new_struct(c, "params", "lk_generate_params", 0);
    lk_sampler_params *sp = new_struct(c, "params->sampler", "lk_sampler_params", 0);
    sp->temperature = 0;
    const char *stops[1] = {"zzzz"};
    gp->max_tokens = 4;
    gp->sampler = sp;
    gp->stop = in_mem(c, "params->stop[]", stops, sizeof stops, 2048 * sizeof(char *));
    gp->n_stop = 1;
    SET_P(c, "params", gp);
    SET_P(c, "text_out", out_mem(c, "*text_out", sizeof(char *), 0));
    SET_P(c, "tokens_out", out_mem(c, "tokens_out[]", 16 * 4, 0));
    SET_I64(c, "tokens_capacity", 16);
    SET_P(c, "result", new_struct(c, "result", "lk_generate_result", 1));
}
static void b_string_free(call *c) {
    /* "a string returned by the library (it is malloc'ed: free() is equivalent)". Allocated once and kept
     * in a static: the calls run in forked children, so the parent never frees it (LeakSanitizer under
     * make test-asan reported the parent's copy as a leak). */
    static char *s;
    if (!s) s = malloc(8);
    memcpy(s, "string", 7);
    SET_P(c, "s", s);
}
static void b_adapter_load(call *c) {
    SET_P(c, "model", M);
    SET_P(c, "path", p_a_peft);
    out_handle(c, "out");
}
static void b_adapter_free(call *c) { SET_P(c, "adapter", victim_adapter); }
static void b_adapter_create(call *c) {
    SET_P(c, "model", M);
    lk_lora_params *p = new_struct(c, "params", "lk_lora_params", 0);
    p->rank = 2;
    p->targets = "q,v,down";
    SET_P(c, "params", p);
    out_handle(c, "out");
}
static void b_adapter_save(call *c) {
    SET_P(c, "adapter", A);
    SET_P(c, "path", p_save);
    SET_I32(c, "format", LK_ADAPTER_PEFT);
}
static void b_attach(call *c) {
    SET_P(c, "ctx", C);
    SET_P(c, "adapter", A);
    SET_F32(c, "scale", 1.0f);
}
static void b_detach(call *c) {
    SET_P(c, "ctx", C_att);
    SET_P(c, "adapter", A);
}
static void b_set_scale(call *c) {
    SET_P(c, "ctx", C_att);
    SET_P(c, "adapter", A);
    SET_F32(c, "scale", 0.5f);
}
static void b_detach_all(call *c) { SET_P(c, "ctx", C_att); }
static void b_merge(call *c) {
    lk_adapter *ads[1] = {AG};
    const float scales[1] = {1.0f};
    SET_P(c, "model", G);
    SET_P(c, "adapters", in_mem(c, "adapters[]", ads, sizeof ads, 8 * sizeof(void *)));
    SET_P(c, "scales", in_mem(c, "scales[]", scales, sizeof scales, 8 * sizeof(float)));
    SET_I32(c, "n", 1);
    SET_I32(c, "out_type", LK_DTYPE_F32);
    SET_P(c, "path", p_merged);
}
static void b_batch_new(call *c) {
    SET_P(c, "model", M);
    SET_I32(c, "max_sequences", 2);
    SET_I32(c, "n_ctx", CTX_POSITIONS);
    SET_I32(c, "n_threads", 1);
    out_handle(c, "out");
}
static void b_batch_new_with_params(call *c) {
    SET_P(c, "model", M);
    lk_batch_params *p = new_struct(c, "params", "lk_batch_params", 0);
    p->max_sequences = 2;
    p->n_ctx = CTX_POSITIONS;
    p->n_threads = 1;
    p->kv_type = LK_DTYPE_F16;
    SET_P(c, "params", p);
    out_handle(c, "out");
}
static void b_batch_free(call *c) { SET_P(c, "batch", victim_batch); }
static void b_batch_add_sequence(call *c) {
    SET_P(c, "batch", B);
    SET_P(c, "seq", out_mem(c, "*seq", 4, 0));
}
static void b_batch_remove_sequence(call *c) {
    SET_P(c, "batch", B);
    SET_I32(c, "seq", 0);
}
static void b_batch_fork(call *c) {
    SET_P(c, "batch", B);
    SET_I32(c, "seq", 0);
    SET_P(c, "new_seq", out_mem(c, "*new_seq", 4, 0));
}
static void b_batch_truncate(call *c) {
    SET_P(c, "batch", B);
    SET_I32(c, "seq", 0);
    SET_I32(c, "position", 1);
}
static void b_batch_position(call *c) {
    SET_P(c, "batch", B);
    SET_I32(c, "seq", 0);
    SET_P(c, "position", out_mem(c, "*position", 4, 0));
}
static void b_batch_sequences(call *c) {
    SET_P(c, "batch", B);
    SET_P(c, "seqs", out_mem(c, "seqs[]", 4 * 4, 0));
    SET_I64(c, "capacity", 4);
    SET_P(c, "count", out_mem(c, "*count", 8, REG_NEEDED));
}
static void b_batch_set_adapters(call *c) {
    lk_adapter *ads[1] = {A};
    const float scales[1] = {2.0f};
    SET_P(c, "batch", B);
    SET_I32(c, "seq", 0);
    SET_P(c, "adapters", in_mem(c, "adapters[]", ads, sizeof ads, 8 * sizeof(void *)));
    SET_P(c, "scales", in_mem(c, "scales[]", scales, sizeof scales, 8 * sizeof(float)));
    SET_I64(c, "n_adapters", 1);
}
static void b_batch_step(call *c) {
    const int32_t seqs[1] = {0};
    const int64_t counts[1] = {3};
    SET_P(c, "batch", B);
    SET_I64(c, "n_seqs", 1);
    SET_P(c, "seqs", in_mem(c, "seqs[]", seqs, sizeof seqs, 64 * 4));
    SET_P(c, "tokens", in_mem(c, "tokens[]", some_tokens, 3 * 4, 1024 * 4));
    SET_P(c, "n_tokens", in_mem(c, "n_tokens[]", counts, sizeof counts, 64 * 8));
    SET_P(c, "logits", out_mem(c, "logits[]", (size_t)n_vocab * 4, 0));
    SET_I64(c, "capacity", n_vocab);
}
static void b_trainer_create(call *c) {
    SET_P(c, "model", M);
    SET_P(c, "train_path", p_train);
    SET_P(c, "valid_path", p_valid);
    lk_train_params *tp = new_struct(c, "params", "lk_train_params", 0);
    tp->rank = 2;
    tp->steps = 2;
    tp->batch = 1;
    tp->seq = 16;
    tp->threads = 1;
    tp->out_dir = p_run_create;
    static const int32_t layers[2] = {0, 1};
    tp->layers = in_mem(c, "params->layers[]", layers, sizeof layers, 8192 * 4);
    tp->n_layers = 2;
    tp->targets = "q,v";
    SET_P(c, "params", tp);
    out_handle(c, "out");
}
static void b_trainer_free(call *c) { SET_P(c, "trainer", victim_trainer); }
static void b_projector_create(call *c) {
    SET_P(c, "model", M);
    SET_I64(c, "in_features", 4);
    set_arg(c, "seed", T_U64, (argval){.u64 = 3});
    out_handle(c, "out");
}
static void b_projector_load(call *c) {
    SET_P(c, "model", M);
    SET_P(c, "path", p_proj);
    out_handle(c, "out");
}
static void b_projector_save(call *c) {
    SET_P(c, "projector", P);
    SET_P(c, "path", p_save_proj);
}
static void b_projector_free(call *c) { SET_P(c, "projector", victim_projector); }
static void b_plugin_load(call *c) {
    SET_P(c, "path", p_plugin);
    out_handle(c, "out");
}
static void b_plugin_free(call *c) { SET_P(c, "plugin", victim_plugin); }
static void b_plugin_info_json(call *c) { SET_P(c, "plugin", PL); buf_needed(c, 4096); }
static void b_plugins_json(call *c) { SET_I32(c, "load_search_path", 0); buf_needed(c, 16384); }
static void b_projector_info(call *c) {
    SET_P(c, "projector", P);
    SET_P(c, "in_features", out_mem(c, "*in_features", 8, 0));
    SET_P(c, "width", out_mem(c, "*width", 8, 0));
}
static float *projector_features(call *c) {
    static const float f[8] = {0.5f, -1.0f, 0.25f, 2.0f, -0.75f, 1.5f, 0.0f, -2.0f};
    return in_mem(c, "features[]", f, sizeof f, 256 * 4 * 4);
}
static void b_projector_forward(call *c) {
    SET_P(c, "projector", P);
    SET_P(c, "features", projector_features(c));
    SET_I64(c, "n_rows", 2);
    SET_P(c, "out", out_mem(c, "out[]", (size_t)n_embd * 2 * 4, 0));
    SET_I64(c, "capacity", (int64_t)n_embd * 2);
}
static void b_projector_backward(call *c) {
    float *d = c_alloc(c, (size_t)n_embd * 2 * 4);
    for (int i = 0; i < n_embd * 2; i++) d[i] = (float)((i % 5) - 2) * 0.1f;
    SET_P(c, "projector", P);
    SET_P(c, "features", projector_features(c));
    SET_I64(c, "n_rows", 2);
    SET_P(c, "d_out", in_mem(c, "d_out[]", d, (size_t)n_embd * 2 * 4, (size_t)n_embd * 256 * 4));
    SET_I64(c, "n_d_out", (int64_t)n_embd * 2);
}
static void b_token_embeddings(call *c) {
    SET_P(c, "model", M);
    SET_P(c, "tokens", in_mem(c, "tokens[]", some_tokens, 3 * 4, 1024 * 4));
    SET_I64(c, "n_tokens", 3);
    SET_P(c, "out", out_mem(c, "out[]", (size_t)n_embd * 3 * 4, 0));
    SET_I64(c, "capacity", (int64_t)n_embd * 3);
}
static void b_trainer_step(call *c) {
    SET_P(c, "trainer", T);
    SET_P(c, "progress", new_struct(c, "progress", "lk_train_progress", 1));
}
static void b_trainer_run(call *c) {
    SET_P(c, "trainer", T);
    SET_P(c, "callback", (void *)(uintptr_t)train_progress_callback);
    SET_P(c, "user_data", NULL);
    SET_P(c, "last", new_struct(c, "last", "lk_train_progress", 1));
}
static void b_validation_loss(call *c) {
    SET_P(c, "trainer", T);
    SET_P(c, "loss", out_mem(c, "*loss", 8, 0));
}
static void b_save_checkpoint(call *c) { SET_P(c, "trainer", T); }
static void b_trainer_adapter(call *c) {
    SET_P(c, "trainer", T);
    out_handle(c, "out");
}
static void b_trainer_steps(call *c) {
    SET_P(c, "trainer", T);
    SET_P(c, "steps_done", out_mem(c, "*steps_done", 8, 0));
    SET_P(c, "total_steps", out_mem(c, "*total_steps", 8, 0));
}
static void b_zero_grad(call *c) { SET_P(c, "trainer", TM); }
static void b_forward_backward(call *c) {
    static const uint8_t is_target[4] = {0, 1, 1, 1};
    float *prefix = c_alloc(c, (size_t)n_embd * 4);
    for (int i = 0; i < n_embd; i++) prefix[i] = (float)((i % 5) - 2) * 0.05f;
    SET_P(c, "trainer", TM);
    SET_P(c, "tokens", in_mem(c, "tokens[]", some_tokens, sizeof some_tokens, 1024 * 4));
    SET_P(c, "is_target", in_mem(c, "is_target[]", is_target, sizeof is_target, 1024));
    SET_I64(c, "n_tokens", 4);
    SET_P(c, "prefix", in_mem(c, "prefix[]", prefix, (size_t)n_embd * 4, (size_t)n_embd * 512 * 4));
    SET_I64(c, "n_prefix", 1);
    SET_F32(c, "loss_scale", 0.25f);
    SET_P(c, "sum_nll", out_mem(c, "*sum_nll", 8, 0));
    SET_P(c, "predicted", out_mem(c, "*predicted", 8, 0));
    SET_P(c, "input_grad", out_mem(c, "input_grad[]", (size_t)n_embd * 5 * 4, 0));
    SET_I64(c, "input_grad_capacity", (int64_t)n_embd * 5);
}
static void b_forward_backward_batch(call *c) {
    /* Two sequences: one prefix row + 4 tokens, then 3 tokens without a prefix. */
    static const int32_t tokens[7] = {1, 2, 3, 4, 5, 6, 7};
    static const uint8_t is_target[7] = {0, 1, 1, 1, 0, 1, 1};
    static const int64_t n_tokens[2] = {4, 3}, n_prefix[2] = {1, 0};
    float *prefix = c_alloc(c, (size_t)n_embd * 4);
    for (int i = 0; i < n_embd; i++) prefix[i] = (float)((i % 5) - 2) * 0.05f;
    SET_P(c, "trainer", TM);
    SET_I64(c, "n_seqs", 2);
    SET_P(c, "tokens", in_mem(c, "tokens[]", tokens, sizeof tokens, 1024 * 4));
    SET_P(c, "is_target", in_mem(c, "is_target[]", is_target, sizeof is_target, 1024));
    SET_P(c, "n_tokens", in_mem(c, "n_tokens[]", n_tokens, sizeof n_tokens, 1024 * 8));
    SET_P(c, "prefix", in_mem(c, "prefix[]", prefix, (size_t)n_embd * 4, (size_t)n_embd * 512 * 4));
    SET_P(c, "n_prefix", in_mem(c, "n_prefix[]", n_prefix, sizeof n_prefix, 1024 * 8));
    SET_F32(c, "loss_scale", 0.25f);
    SET_P(c, "sum_nll", out_mem(c, "*sum_nll", 8, 0));
    SET_P(c, "predicted", out_mem(c, "*predicted", 8, 0));
    SET_P(c, "input_grad", out_mem(c, "input_grad[]", (size_t)n_embd * 8 * 4, 0));
    SET_I64(c, "input_grad_capacity", (int64_t)n_embd * 8);
}
static void b_optimizer_step(call *c) {
    SET_P(c, "trainer", TM);
    SET_F64(c, "lr", 1e-3);
    SET_P(c, "grad_norm", out_mem(c, "*grad_norm", 8, 0));
}

/* ------------------------------------------------------------------------------------------------ */
/* Checks of the functions that return no lk_status                                                  */
/* ------------------------------------------------------------------------------------------------ */

typedef union { ffi_arg a; int64_t i64; void *p; } retval;
typedef struct mutation mutation;
typedef int (*check_fn)(call *c, const mutation *m, retval rv, char *why, size_t n);

struct mutation {
    int kind;          /* M_BASE, M_PARAM, M_STRUCT, M_EXTRA */
    int index;         /* parameter / struct / extra index */
    char tag[96];      /* the hostile value */
    char where[96];    /* the parameter or struct field */
    int expect;        /* a status, EXPECT_ANY or EXPECT_CHECK */
};
enum { M_BASE, M_PARAM, M_STRUCT, M_EXTRA };

#define WHY(...) (snprintf(why, n, __VA_ARGS__), 0)

static int check_abi_version(call *c, const mutation *m, retval rv, char *why, size_t n) {
    (void)c; (void)m;
    return (int32_t)rv.a == LK_ABI_VERSION ? 1 : WHY("returned %d, header LK_ABI_VERSION %d", (int32_t)rv.a, LK_ABI_VERSION);
}
static int check_version_string(call *c, const mutation *m, retval rv, char *why, size_t n) {
    (void)c; (void)m;
    int a, b, d;
    char extra;
    if (!rv.p) return WHY("returned NULL");
    return sscanf(rv.p, "%d.%d.%d%c", &a, &b, &d, &extra) == 3 ? 1 : WHY("\"%s\" is not MAJOR.MINOR.PATCH", (char *)rv.p);
}
static int check_last_error(call *c, const mutation *m, retval rv, char *why, size_t n) {
    (void)c; (void)m;
    if (!rv.p) return WHY("returned NULL");
    return strstr(rv.p, "42") ? 1 : WHY("\"%s\" does not name the failing dtype 42", (char *)rv.p);
}
static int check_clear_error(call *c, const mutation *m, retval rv, char *why, size_t n) {
    (void)c; (void)m; (void)rv;
    const char *e = lk_last_error();
    return e && !*e ? 1 : WHY("lk_last_error() is \"%s\" after lk_clear_error()", e ? e : "(NULL)");
}
static int check_status_string(call *c, const mutation *m, retval rv, char *why, size_t n) {
    const char *s = rv.p;
    if (!s || !*s) return WHY("returned %s", s ? "\"\"" : "NULL");
    if (m->kind == M_BASE) return strstr(s, "shape") ? 1 : WHY("LK_ERR_SHAPE is \"%s\"", s);
    int32_t v = c->a[0].i32;
    if (strcmp(status_name(v), "(not a status)") != 0) return strstr(s, "unknown") ? WHY("status %d is \"%s\"", v, s) : 1;
    return strstr(s, "unknown") ? 1 : WHY("status %s is \"%s\", expected \"unknown status\"", m->tag, s);
}
static int check_dtype_name(call *c, const mutation *m, retval rv, char *why, size_t n) {
    (void)c;
    if (m->kind == M_BASE) return rv.p && strcmp(rv.p, "q4_1") == 0 ? 1 : WHY("LK_DTYPE_Q4_1 is \"%s\"", rv.p ? (char *)rv.p : "NULL");
    return rv.p == NULL ? 1 : WHY("unknown dtype %s gave \"%s\", documented NULL", m->tag, (char *)rv.p);
}
static int check_cpu_count(call *c, const mutation *m, retval rv, char *why, size_t n) {
    (void)c; (void)m;
    long want = sysconf(_SC_NPROCESSORS_ONLN);
    return (int32_t)rv.a == want ? 1 : WHY("returned %d, sysconf says %ld", (int32_t)rv.a, want);
}
static int check_get_default_threads(call *c, const mutation *m, retval rv, char *why, size_t n) {
    (void)c; (void)m;
    return (int32_t)rv.a == 1 ? 1 : WHY("returned %d after lk_set_default_threads(1)", (int32_t)rv.a);
}
static int check_sizeof(call *c, const mutation *m, retval rv, char *why, size_t n) {
    (void)m;
    char sname[96];
    snprintf(sname, sizeof sname, "lk_%s", c->fn->name + strlen("lk_sizeof_"));
    const abi_struct *st = find_struct(sname);
    if (!st) return WHY("lorakit.h has no struct %s", sname);
    return rv.i64 == (int64_t)st->size ? 1 : WHY("returned %lld, sizeof(%s) is %zu", (long long)rv.i64, sname, st->size);
}
static int check_string_free(call *c, const mutation *m, retval rv, char *why, size_t n) {
    (void)c; (void)m; (void)rv; (void)why; (void)n;
    return 1; /* returning at all is the check (NULL is a no-op, a malloc'ed string is freed) */
}

/* An init function writes the defaults into the first `want` bytes (struct_size = want) and nothing
 * else: for lk_x_params_init_sized(p, size), min(size, sizeof), or 0 when size is below the first
 * version; for the exported (legacy) lk_x_params_init symbols, the first version. */
static int check_init(call *c, const mutation *m, retval rv, char *why, size_t n) {
    (void)rv;
    const char *sname = c->fn->params[0].detail;
    const abi_struct *st = find_struct(sname);
    unsigned char *p = c->a[0].p;
    if (!p) return 1; /* NULL: a no-op, returning is the check */
    if (p != c->reg[0].p) return WHY("internal: p moved");
    size_t want = st->size;
    if (c->fn->n_params == 2) {
        size_t size = c->a[1].sz;
        want = size < st->first_size ? 0 : size < st->size ? size : st->size;
    } else {
        want = st->first_size; /* the exported lk_x_params_init symbols fill the first version (the
                                  header's lk_x_params_init is a macro over lk_x_params_init_sized) */
    }
    for (size_t i = want; i < st->size + 64; i++)
        if (p[i] != 0xEE) return WHY("%s wrote byte %zu of *p, past the %zu bytes it may write", m->tag, i, want);
    if (want == 0) return 1;
    uint32_t ss;
    memcpy(&ss, p, 4);
    if (ss != want) return WHY("struct_size is %u, expected %zu", ss, want);
    return 1;
}

/* ------------------------------------------------------------------------------------------------ */
/* Specs: the baseline (and check) of every function                                                 */
/* ------------------------------------------------------------------------------------------------ */

typedef struct {
    const char *fn;
    void (*base)(call *c);
    check_fn check;    /* functions without lk_status */
    int keep_error;    /* do not clear lk_last_error() before the call */
} spec;

static const spec specs[] = {
    {"lk_abi_version", b_none, check_abi_version, 0},
    {"lk_version_string", b_none, check_version_string, 0},
    {"lk_last_error", b_error, check_last_error, 1},
    {"lk_clear_error", b_error, check_clear_error, 1},
    {"lk_status_string", b_status_string, check_status_string, 0},
    {"lk_dtype_name", b_dtype_name, check_dtype_name, 0},
    {"lk_dtype_info", b_dtype_info, NULL, 0},
    {"lk_cpu_count", b_none, check_cpu_count, 0},
    {"lk_set_default_threads", b_set_default_threads, NULL, 0},
    {"lk_get_default_threads", b_none, check_get_default_threads, 0},
    {"lk_tensor_new", b_tensor_new, NULL, 0},
    {"lk_tensor_from_f32", b_tensor_from_f32, NULL, 0},
    {"lk_tensor_convert", b_tensor_convert, NULL, 0},
    {"lk_tensor_free", b_tensor_free, NULL, 0},
    {"lk_tensor_shape", b_tensor_shape, NULL, 0},
    {"lk_tensor_dtype", b_tensor_dtype, NULL, 0},
    {"lk_tensor_size", b_tensor_size, NULL, 0},
    {"lk_tensor_copy_to_f32", b_tensor_copy_to_f32, NULL, 0},
    {"lk_tensor_copy_bytes", b_tensor_copy_bytes, NULL, 0},
    {"lk_matmul", b_matmul, NULL, 0},
    {"lk_model_params_init", b_init, check_init, 0},
    {"lk_model_params_init_sized", b_init, check_init, 0},
    {"lk_model_load", b_model_load, NULL, 0},
    {"lk_model_free", b_model_free, NULL, 0},
    {"lk_model_get_info", b_model_get_info, NULL, 0},
    {"lk_model_architecture", b_model_architecture, NULL, 0},
    {"lk_model_chat_template", b_model_chat_template, NULL, 0},
    {"lk_model_meta", b_model_meta, NULL, 0},
    {"lk_tokenize", b_tokenize, NULL, 0},
    {"lk_detokenize", b_detokenize, NULL, 0},
    {"lk_token_bytes", b_token_bytes, NULL, 0},
    {"lk_chat_apply", b_chat_apply, NULL, 0},
    {"lk_model_chat_limit", b_model_chat_limit, NULL, 0},
    {"lk_context_params_init", b_init, check_init, 0},
    {"lk_context_params_init_sized", b_init, check_init, 0},
    {"lk_context_new", b_context_new, NULL, 0},
    {"lk_context_free", b_context_free, NULL, 0},
    {"lk_context_reset", b_context_reset, NULL, 0},
    {"lk_context_position", b_context_position, NULL, 0},
    {"lk_context_eval", b_context_eval, NULL, 0},
    {"lk_context_eval_embeddings", b_context_eval_embeddings, NULL, 0},
    {"lk_sampler_params_init", b_init, check_init, 0},
    {"lk_sampler_params_init_sized", b_init, check_init, 0},
    {"lk_generate_params_init", b_init, check_init, 0},
    {"lk_generate_params_init_sized", b_init, check_init, 0},
    {"lk_generate", b_generate, NULL, 0},
    {"lk_string_free", b_string_free, check_string_free, 0},
    {"lk_adapter_load", b_adapter_load, NULL, 0},
    {"lk_adapter_free", b_adapter_free, NULL, 0},
    {"lk_lora_params_init", b_init, check_init, 0},
    {"lk_lora_params_init_sized", b_init, check_init, 0},
    {"lk_adapter_create", b_adapter_create, NULL, 0},
    {"lk_adapter_save", b_adapter_save, NULL, 0},
    {"lk_context_attach_adapter", b_attach, NULL, 0},
    {"lk_context_detach_adapter", b_detach, NULL, 0},
    {"lk_context_set_adapter_scale", b_set_scale, NULL, 0},
    {"lk_context_detach_all", b_detach_all, NULL, 0},
    {"lk_model_merge_to_file", b_merge, NULL, 0},
    {"lk_train_params_init_sized", b_init, check_init, 0},
    {"lk_train_params_init", b_init, check_init, 0},
    {"lk_trainer_create", b_trainer_create, NULL, 0},
    {"lk_trainer_free", b_trainer_free, NULL, 0},
    {"lk_trainer_step", b_trainer_step, NULL, 0},
    {"lk_trainer_run", b_trainer_run, NULL, 0},
    {"lk_trainer_validation_loss", b_validation_loss, NULL, 0},
    {"lk_trainer_save_checkpoint", b_save_checkpoint, NULL, 0},
    {"lk_trainer_adapter", b_trainer_adapter, NULL, 0},
    {"lk_trainer_steps", b_trainer_steps, NULL, 0},
    {"lk_trainer_zero_grad", b_zero_grad, NULL, 0},
    {"lk_trainer_forward_backward", b_forward_backward, NULL, 0},
    {"lk_trainer_forward_backward_batch", b_forward_backward_batch, NULL, 0},
    {"lk_trainer_optimizer_step", b_optimizer_step, NULL, 0},
    {"lk_projector_create", b_projector_create, NULL, 0},
    {"lk_projector_load", b_projector_load, NULL, 0},
    {"lk_projector_save", b_projector_save, NULL, 0},
    {"lk_projector_free", b_projector_free, NULL, 0},
    {"lk_plugin_load", b_plugin_load, NULL, 0},
    {"lk_plugin_free", b_plugin_free, NULL, 0},
    {"lk_plugin_info_json", b_plugin_info_json, NULL, 0},
    {"lk_plugins_json", b_plugins_json, NULL, 0},
    {"lk_projector_info", b_projector_info, NULL, 0},
    {"lk_projector_forward", b_projector_forward, NULL, 0},
    {"lk_projector_backward", b_projector_backward, NULL, 0},
    {"lk_model_token_embeddings", b_token_embeddings, NULL, 0},
    {"lk_sizeof_model_params", b_none, check_sizeof, 0},
    {"lk_sizeof_model_info", b_none, check_sizeof, 0},
    {"lk_sizeof_context_params", b_none, check_sizeof, 0},
    {"lk_sizeof_sampler_params", b_none, check_sizeof, 0},
    {"lk_sizeof_generate_params", b_none, check_sizeof, 0},
    {"lk_sizeof_generate_result", b_none, check_sizeof, 0},
    {"lk_sizeof_chat_message", b_none, check_sizeof, 0},
    {"lk_sizeof_lora_params", b_none, check_sizeof, 0},
    {"lk_sizeof_train_params", b_none, check_sizeof, 0},
    {"lk_sizeof_train_progress", b_none, check_sizeof, 0},
    {"lk_batch_new", b_batch_new, NULL, 0},
    {"lk_batch_params_init", b_init, check_init, 0},
    {"lk_batch_params_init_sized", b_init, check_init, 0},
    {"lk_sizeof_batch_params", b_none, check_sizeof, 0},
    {"lk_batch_new_with_params", b_batch_new_with_params, NULL, 0},
    {"lk_batch_free", b_batch_free, NULL, 0},
    {"lk_batch_add_sequence", b_batch_add_sequence, NULL, 0},
    {"lk_batch_remove_sequence", b_batch_remove_sequence, NULL, 0},
    {"lk_batch_fork", b_batch_fork, NULL, 0},
    {"lk_batch_truncate", b_batch_truncate, NULL, 0},
    {"lk_batch_position", b_batch_position, NULL, 0},
    {"lk_batch_sequences", b_batch_sequences, NULL, 0},
    {"lk_batch_set_adapters", b_batch_set_adapters, NULL, 0},
    {"lk_batch_step", b_batch_step, NULL, 0},
};
#define N_SPECS (sizeof specs / sizeof specs[0])

static const spec *find_spec(const char *fn) {
    for (size_t i = 0; i < N_SPECS; i++)
        if (strcmp(specs[i].fn, fn) == 0) return &specs[i];
    return NULL;
}

/* ------------------------------------------------------------------------------------------------ */
/* Hostile values per parameter role, and their default expectations                                 */
/* ------------------------------------------------------------------------------------------------ */

/* Output paths (written by the call) get other hostile paths than input paths. */
static int is_output_path(const abi_fn *f, const abi_param *p) {
    return strcmp(p->name, "path") == 0 && (strstr(f->name, "_save") || strstr(f->name, "merge_to_file"));
}
static int is_path(const abi_param *p) { return strstr(p->name, "path") != NULL; }

#define MAXTAGS 24
static int role_tags(const abi_fn *f, int i, const char **tags) {
    const abi_param *p = &f->params[i];
    int n = 0;
    switch (p->role) {
    case R_HANDLE:
    case R_HANDLE_ARRAY:
        if (p->role == R_HANDLE_ARRAY) tags[n++] = "array NULL";
        tags[n++] = "NULL";
        tags[n++] = "freed handle";
        tags[n++] = "forged 0x1234";
        tags[n++] = "forged heap pointer";
        tags[n++] = "never-issued token";
        for (size_t k = 0; k < N_KINDS; k++)
            if (strcmp(kinds[k].kind, p->detail) != 0) tags[n++] = kinds[k].wrong_tag;
        break;
    case R_OUT_HANDLE: case R_PARAMS: case R_RESULT: case R_INIT: case R_OUT_BUF: case R_OUT_SCALAR:
    case R_OUT_STR: case R_IN_ARRAY: case R_CALLBACK: case R_OWNED_STR:
        tags[n++] = "NULL";
        break;
    case R_CSTR:
        tags[n++] = "NULL";
        tags[n++] = "\"\"";
        tags[n++] = "non-UTF-8";
        tags[n++] = "over-long (1 MiB)";
        if (is_path(p)) {
            tags[n++] = "a folder";
            if (is_output_path(f, p)) {
                tags[n++] = "under a regular file";
            } else {
                tags[n++] = "missing file";
                tags[n++] = "random bytes";
                tags[n++] = "truncated GGUF";
                tags[n++] = "GGUF magic + garbage";
            }
        }
        break;
    case R_TEXT:
        tags[n++] = "NULL";
        tags[n++] = "non-UTF-8";
        break;
    case R_LEN: case R_CAPACITY: case R_COUNT:
        tags[n++] = "0";
        tags[n++] = "-1";
        tags[n++] = "MIN";
        tags[n++] = "MAX";
        break;
    case R_INT:
        tags[n++] = "-1";
        tags[n++] = "MIN";
        tags[n++] = "MAX";
        break;
    case R_FLOAT:
        tags[n++] = "NaN";
        tags[n++] = "+inf";
        tags[n++] = "-inf";
        break;
    case R_USERDATA:
        tags[n++] = "forged 0x1234";
        break;
    case R_SIZE:
        tags[n++] = "0";
        tags[n++] = "1";
        tags[n++] = "first version - 1";
        tags[n++] = "first version";
        tags[n++] = "sizeof + 64";
        tags[n++] = "SIZE_MAX";
        break;
    }
    return n;
}

/* The documented outcome of a hostile value when lorakit.h states no exception for this function. */
static int default_expect(const abi_fn *f, const abi_param *p, const char *tag) {
    if (strcmp(f->ret_ctype, "lk_status") != 0) return EXPECT_CHECK;
    switch (p->role) {
    case R_HANDLE:
        /* "Freeing NULL is a no-op." Otherwise: "Passing NULL, a freed handle or a handle of another kind
         * returns LK_ERR_INVALID_HANDLE". */
        if (strcmp(tag, "NULL") == 0 && strstr(f->name, "_free")) return LK_OK;
        return LK_ERR_INVALID_HANDLE;
    case R_HANDLE_ARRAY:
        return strcmp(tag, "array NULL") == 0 ? LK_ERR_INVALID_ARGUMENT : LK_ERR_INVALID_HANDLE;
    case R_PARAMS:
        return LK_OK; /* "A params pointer may be NULL for all defaults." */
    case R_CALLBACK: case R_USERDATA:
        return LK_OK; /* callbacks "may be NULL"; user_data is passed through, never dereferenced */
    case R_CSTR:
        if (strcmp(tag, "over-long (1 MiB)") == 0 || strcmp(tag, "a folder") == 0 ||
            strcmp(tag, "missing file") == 0 || strcmp(tag, "under a regular file") == 0)
            return is_path(p) ? LK_ERR_IO : LK_ERR_INVALID_ARGUMENT;
        if (strcmp(tag, "random bytes") == 0 || strcmp(tag, "truncated GGUF") == 0 ||
            strcmp(tag, "GGUF magic + garbage") == 0)
            return LK_ERR_FORMAT;
        return LK_ERR_INVALID_ARGUMENT;
    case R_LEN:
        return strcmp(tag, "0") == 0 ? LK_OK : LK_ERR_INVALID_ARGUMENT; /* empty text is text */
    case R_CAPACITY:
        if (strcmp(tag, "0") == 0) return LK_ERR_BUFFER_TOO_SMALL;
        if (strcmp(tag, "MAX") == 0) return LK_OK; /* the buffer really is large enough */
        return LK_ERR_INVALID_ARGUMENT;
    default:
        return LK_ERR_INVALID_ARGUMENT;
    }
}

/* Documented exceptions to default_expect (and to the struct-field defaults), each with its reason.
 * `where` is a parameter name or "struct.field"; an entry that matches no call fails the sweep. */
typedef struct { const char *fn, *where, *tag; int expect; const char *why; } override;
static const override overrides[] = {
    {"lk_tensor_from_f32", "n_values", "0", LK_ERR_SHAPE, "n_values must equal the shape's element count"},
    {"lk_tensor_from_f32", "n_values", "MAX", LK_ERR_SHAPE, "n_values must equal the shape's element count"},
    {"lk_matmul", "transpose_w", "-1", LK_OK, "transpose_w is a C boolean (transpose_w != 0)"},
    {"lk_matmul", "transpose_w", "MIN", LK_OK, "transpose_w is a C boolean (transpose_w != 0)"},
    {"lk_matmul", "transpose_w", "MAX", LK_OK, "transpose_w is a C boolean (transpose_w != 0)"},
    {"lk_model_load", "path", "a folder", LK_ERR_IO, "a folder is read as a Hugging Face folder: no config.json"},
    {"lk_tokenize", "add_special", "-1", LK_OK, "add_special -1 = as the model's metadata says"},
    {"lk_detokenize", "n_tokens", "0", LK_OK, "no tokens is the empty text"},
    {"lk_chat_apply", "n_messages", "0", LK_OK, "messages may be empty (the template renders no turns)"},
    {"lk_model_chat_limit", "new_value", "-1", LK_OK, "new_value == -1 only reads"},
    {"lk_model_chat_limit", "new_value", "MAX", LK_OK, "new_value > 0 replaces it (LK_CHAT_LIMIT_STEPS has no cap)"},
    {"lk_model_chat_limit", "old_value", "NULL", LK_OK, "*old_value (may be NULL)"},
    {"lk_generate", "text_out", "NULL", LK_OK, "text_out (may be NULL)"},
    {"lk_generate", "tokens_capacity", "0", LK_OK, "tokens_out receives the first tokens_capacity ids (0: none)"},
    {"lk_generate", "result", "NULL", LK_OK, "result (may be NULL)"},
    {"lk_generate", "lk_generate_params.stop_at_eos", "-1", LK_OK, "stop_at_eos is a C boolean (non-zero = true)"},
    {"lk_generate", "lk_generate_params.stop_at_eos", "INT32_MIN", LK_OK, "stop_at_eos is a C boolean (non-zero = true)"},
    {"lk_adapter_save", "path", "a folder", LK_OK, "LK_ADAPTER_PEFT writes a folder `path` (created if needed)"},
    {"lk_model_merge_to_file", "out_type", "-1", LK_OK, "out_type -1 = the base weight's own type"},
    {"lk_trainer_create", "train_path", "NULL", LK_OK, "train_path NULL: a trainer driven by the low-level calls"},
    {"lk_trainer_create", "valid_path", "NULL", LK_OK, "valid_path: JSONL or NULL"},
    {"lk_trainer_create", "lk_train_params.epochs", "NaN", LK_OK, "epochs is used only when steps is 0 (the baseline sets steps)"},
    {"lk_trainer_create", "lk_train_params.epochs", "+inf", LK_OK, "epochs is used only when steps is 0"},
    {"lk_trainer_create", "lk_train_params.epochs", "-inf", LK_OK, "epochs is used only when steps is 0"},
    {"lk_trainer_step", "progress", "NULL", LK_OK, "progress (may be NULL)"},
    {"lk_trainer_run", "last", "NULL", LK_OK, "last (may be NULL)"},
    {"lk_trainer_steps", "steps_done", "NULL", LK_OK, "Either pointer may be NULL"},
    {"lk_trainer_steps", "total_steps", "NULL", LK_OK, "Either pointer may be NULL"},
    {"lk_trainer_forward_backward", "is_target", "NULL", LK_OK, "is_target NULL: every token"},
    {"lk_trainer_forward_backward", "n_prefix", "0", LK_OK, "n_prefix may be 0 (tokens only)"},
    {"lk_trainer_forward_backward", "n_tokens", "0", LK_OK, "n_tokens may be 0 (prefix rows only)"},
    {"lk_trainer_forward_backward", "sum_nll", "NULL", LK_OK, "Outputs, each may be NULL"},
    {"lk_trainer_forward_backward", "predicted", "NULL", LK_OK, "Outputs, each may be NULL"},
    {"lk_trainer_forward_backward", "input_grad", "NULL", LK_OK, "Outputs, each may be NULL"},
    {"lk_trainer_forward_backward_batch", "is_target", "NULL", LK_OK, "is_target (may be NULL: every token)"},
    {"lk_trainer_forward_backward_batch", "n_prefix", "NULL", LK_OK, "n_prefix may be NULL: no prefixes"},
    {"lk_trainer_forward_backward_batch", "sum_nll", "NULL", LK_OK, "Outputs, each may be NULL"},
    {"lk_trainer_forward_backward_batch", "predicted", "NULL", LK_OK, "Outputs, each may be NULL"},
    {"lk_trainer_forward_backward_batch", "input_grad", "NULL", LK_OK, "Outputs, each may be NULL"},
    {"lk_trainer_optimizer_step", "grad_norm", "NULL", LK_OK, "*grad_norm (may be NULL)"},
    {"lk_projector_create", "seed", "-1", LK_OK, "seed: any uint64_t"},
    {"lk_projector_create", "seed", "MIN", LK_OK, "seed: any uint64_t"},
    {"lk_projector_create", "seed", "MAX", LK_OK, "seed: any uint64_t"},
    {"lk_projector_info", "in_features", "NULL", LK_OK, "Either pointer may be NULL"},
    {"lk_projector_info", "width", "NULL", LK_OK, "Either pointer may be NULL"},
    {"lk_projector_forward", "n_rows", "0", LK_OK, "n_rows may be 0 (nothing is written)"},
    {"lk_model_token_embeddings", "n_tokens", "0", LK_OK, "n_tokens may be 0 (nothing is written)"},
    {"lk_batch_new", "n_ctx", "0", LK_OK, "n_ctx 0 = min(n_ctx_train, 4096)"},
    {"lk_batch_new", "n_threads", "0", LK_OK, "n_threads 0 = lk_cpu_count()"},
    {"lk_batch_set_adapters", "n_adapters", "0", LK_OK, "n_adapters 0 = none"},
};
#define N_OVERRIDES (sizeof overrides / sizeof overrides[0])
static int override_used[N_OVERRIDES];

static int lookup_override(const char *fn, const char *where, const char *tag, int dflt) {
    for (size_t i = 0; i < N_OVERRIDES; i++)
        if (strcmp(overrides[i].fn, fn) == 0 && strcmp(overrides[i].where, where) == 0 &&
            strcmp(overrides[i].tag, tag) == 0) {
            override_used[i] = 1;
            return overrides[i].expect;
        }
    return dflt;
}

/* Apply a role's hostile value to parameter i. */
static void apply_param(call *c, int i, const char *tag) {
    const abi_param *p = &c->fn->params[i];
    argval *a = &c->a[i];
    switch (p->role) {
    case R_HANDLE:
    case R_HANDLE_ARRAY: {
        void *h = NULL;
        if (strcmp(tag, "array NULL") == 0) { a->p = NULL; return; }
        if (strcmp(tag, "NULL") == 0) h = NULL;
        else if (strcmp(tag, "freed handle") == 0) h = kind_named(p->detail)->freed;
        else if (strcmp(tag, "forged 0x1234") == 0) h = (void *)(uintptr_t)0x1234;
        else if (strcmp(tag, "forged heap pointer") == 0) h = forged_heap;
        else if (strcmp(tag, "never-issued token") == 0)
            h = (void *)((uintptr_t)kind_named(p->detail)->live + ((uintptr_t)1 << 28));
        else {
            for (size_t k = 0; k < N_KINDS; k++)
                if (strcmp(tag, kinds[k].wrong_tag) == 0) h = kinds[k].live;
            if (!h) die("unknown handle tag %s", tag);
        }
        if (p->role == R_HANDLE) a->p = h;
        else ((void **)a->p)[0] = h;
        return;
    }
    case R_CSTR:
        if (strcmp(tag, "NULL") == 0) a->p = NULL;
        else if (strcmp(tag, "\"\"") == 0) a->p = "";
        else if (strcmp(tag, "non-UTF-8") == 0) a->p = (void *)nonutf8;
        else if (strcmp(tag, "over-long (1 MiB)") == 0) a->p = overlong;
        else if (strcmp(tag, "a folder") == 0) {
            if (is_output_path(c->fn, p)) { /* a fresh one: outputs may fill it */
                char *d = c_alloc(c, 600);
                snprintf(d, 600, "%s/out-folder.XXXXXX", tmp_dir);
                if (!mkdtemp(d)) die("mkdtemp: %s", strerror(errno));
                a->p = d;
            } else {
                a->p = p_folder;
            }
        }
        else if (strcmp(tag, "under a regular file") == 0) a->p = p_under_file;
        else if (strcmp(tag, "missing file") == 0) a->p = p_missing;
        else if (strcmp(tag, "random bytes") == 0) a->p = p_random;
        else if (strcmp(tag, "truncated GGUF") == 0) a->p = p_trunc;
        else if (strcmp(tag, "GGUF magic + garbage") == 0) a->p = p_garbage;
        else die("unknown string tag %s", tag);
        return;
    case R_TEXT:
        if (strcmp(tag, "NULL") == 0) a->p = NULL;
        else { a->p = (void *)nonutf8; c->a[i + 1].i64 = (int64_t)strlen(nonutf8); }
        return;
    case R_LEN: case R_CAPACITY: case R_COUNT: case R_INT: {
        int is64 = p->type == T_I64;
        if (strcmp(tag, "0") == 0) { if (is64) a->i64 = 0; else a->i32 = 0; }
        else if (strcmp(tag, "-1") == 0) { if (is64) a->i64 = -1; else a->i32 = -1; }
        else if (strcmp(tag, "MIN") == 0) { if (is64) a->i64 = INT64_MIN; else a->i32 = INT32_MIN; }
        else if (strcmp(tag, "MAX") == 0) { if (is64) a->i64 = INT64_MAX; else a->i32 = INT32_MAX; }
        else die("unknown integer tag %s", tag);
        return;
    }
    case R_FLOAT: {
        double v = strcmp(tag, "NaN") == 0 ? NAN : strcmp(tag, "+inf") == 0 ? INFINITY : -INFINITY;
        if (p->type == T_F32) a->f32 = (float)v; else a->f64 = v;
        return;
    }
    case R_USERDATA:
        a->p = (void *)(uintptr_t)0x1234;
        return;
    case R_SIZE: {
        const abi_struct *st = find_struct(c->fn->params[0].detail);
        if (strcmp(tag, "0") == 0) a->sz = 0;
        else if (strcmp(tag, "1") == 0) a->sz = 1;
        else if (strcmp(tag, "first version - 1") == 0) a->sz = st->first_size - 1;
        else if (strcmp(tag, "first version") == 0) a->sz = st->first_size;
        else if (strcmp(tag, "sizeof + 64") == 0) a->sz = st->size + 64;
        else a->sz = SIZE_MAX;
        return;
    }
    default: /* the NULL-only roles */
        a->p = NULL;
        return;
    }
}

/* Hostile struct values: struct_size for every registered struct, and the fields of params structs. */
static int struct_tags(const sreg *s, char tags[][96], char wheres[][96], int *expects, const char *fn) {
    int n = 0;
    const abi_struct *st = s->st;
#define ADD(where_, tag_, expect_) do { scpy(wheres[n], 96, where_); scpy(tags[n], 96, tag_); \
        expects[n] = lookup_override(fn, wheres[n], tags[n], expect_); n++; } while (0)
    char where[96];
    snprintf(where, sizeof where, "%s.struct_size", st->name);
    /* "struct_size smaller than the struct's first version (e.g. 0: not initialized) or above 4096
     * (garbage): LK_ERR_ABI"; larger (a newer header): the known fields are read, the rest ignored;
     * the first version's size (an older header): the fields it lacks take their defaults. */
    ADD(where, "0", LK_ERR_ABI);
    ADD(where, "first version - 1", LK_ERR_ABI);
    ADD(where, "4097", LK_ERR_ABI);
    ADD(where, "UINT32_MAX", LK_ERR_ABI);
    ADD(where, "sizeof + 64, garbage tail", LK_OK);
    if (st->first_size < st->size) ADD(where, "first version", LK_OK);
    if (s->result) return n;
    for (int i = 1; i < st->n_fields; i++) {
        const abi_field *f = &st->fields[i];
        snprintf(where, sizeof where, "%s.%s", st->name, f->name);
        switch (f->type) {
        case T_I32:
            ADD(where, "-1", LK_ERR_INVALID_ARGUMENT);        /* no field takes a negative value */
            ADD(where, "INT32_MIN", LK_ERR_INVALID_ARGUMENT);
            ADD(where, "INT32_MAX", EXPECT_ANY);              /* some fields have no upper bound */
            break;
        case T_U64:
            ADD(where, "UINT64_MAX", EXPECT_ANY);
            break;
        case T_F32: case T_F64:
            ADD(where, "NaN", LK_ERR_INVALID_ARGUMENT);       /* every float field must be finite */
            ADD(where, "+inf", LK_ERR_INVALID_ARGUMENT);
            ADD(where, "-inf", LK_ERR_INVALID_ARGUMENT);
            break;
        case T_PTR:
            ADD(where, "NULL", EXPECT_ANY);
            if (strcmp(f->ctype, "const char *") == 0) {
                ADD(where, "non-UTF-8", LK_ERR_INVALID_ARGUMENT); /* "Text arguments must be valid UTF-8" */
                ADD(where, "\"\"", EXPECT_ANY);
                ADD(where, "over-long (1 MiB)", EXPECT_ANY);
            }
            break;
        default:
            die("struct %s: no hostile values for field %s (%s)", st->name, f->name, f->ctype);
        }
    }
#undef ADD
    return n;
}

static void apply_struct(call *c, const mutation *m) {
    sreg *s = &c->st[m->index];
    const abi_struct *st = s->st;
    const char *dot = strchr(m->where, '.');
    const char *fname = dot + 1;
    if (strcmp(fname, "struct_size") == 0) {
        uint32_t v;
        if (strcmp(m->tag, "0") == 0) v = 0;
        else if (strcmp(m->tag, "first version - 1") == 0) v = (uint32_t)st->first_size - 1;
        else if (strcmp(m->tag, "4097") == 0) v = 4097;
        else if (strcmp(m->tag, "UINT32_MAX") == 0) v = UINT32_MAX;
        else if (strcmp(m->tag, "first version") == 0) v = (uint32_t)st->first_size;
        else v = (uint32_t)st->size + 64; /* the 64 bytes past it are 0xEE garbage */
        memcpy(s->p, &v, 4);
        return;
    }
    const abi_field *f = field_named(st, fname);
    unsigned char *fp = s->p + f->offset;
    const char *t = m->tag;
    switch (f->type) {
    case T_I32: {
        int32_t v = strcmp(t, "-1") == 0 ? -1 : strcmp(t, "INT32_MIN") == 0 ? INT32_MIN : INT32_MAX;
        memcpy(fp, &v, 4);
        break;
    }
    case T_U64: {
        uint64_t v = UINT64_MAX;
        memcpy(fp, &v, 8);
        break;
    }
    case T_F32: case T_F64: {
        double v = strcmp(t, "NaN") == 0 ? NAN : strcmp(t, "+inf") == 0 ? INFINITY : -INFINITY;
        if (f->type == T_F32) { float x = (float)v; memcpy(fp, &x, 4); } else memcpy(fp, &v, 8);
        break;
    }
    case T_PTR: {
        const void *v = NULL;
        if (strcmp(t, "non-UTF-8") == 0) v = nonutf8;
        else if (strcmp(t, "\"\"") == 0) v = "";
        else if (strcmp(t, "over-long (1 MiB)") == 0) v = overlong;
        memcpy(fp, &v, sizeof v);
        break;
    }
    default:
        die("apply_struct: %s", m->where);
    }
}

/* ------------------------------------------------------------------------------------------------ */
/* Extra hostile calls: documented errors that no generic value reaches                              */
/* ------------------------------------------------------------------------------------------------ */

typedef struct { const char *fn, *tag; int expect; void (*apply)(call *c); } extra;

#define ARG(c, name) ((c)->a[pidx((c), (name))])
static void x_dims9(call *c) { ARG(c, "n_dims").i32 = LK_MAX_DIMS + 1; }
static void x_shape_neg(call *c) { ((int64_t *)ARG(c, "shape").p)[1] = -1; }
static void x_shape_overflow(call *c) {
    int64_t *s = ARG(c, "shape").p;
    s[0] = (int64_t)1 << 62;
    s[1] = 4;
}
static void x_shape_huge(call *c) {
    int64_t *s = ARG(c, "shape").p;
    s[0] = (int64_t)1 << 40; /* 4 TiB of f32 */
    s[1] = 1;
}
static void x_q8_odd(call *c) { ARG(c, "dtype").i32 = LK_DTYPE_Q8_0; } /* last dim 3: not a multiple of 32 */
static void x_dtype6(call *c) { ARG(c, "dtype").i32 = 6; }
static void x_matmul_alias(call *c) { ARG(c, "out").p = X; }
static void x_matmul_wshape(call *c) { ARG(c, "w").p = X; }   /* x [2,3] · xᵀ is [2,2], out is [2,4] */
static void x_matmul_oshape(call *c) { ARG(c, "out").p = V; }   /* V is [3,3] */
static void x_model_G(call *c) { ARG(c, "model").p = G; }
static void x_model_M(call *c) { ARG(c, "model").p = M; }
static void x_model_badtok(call *c) { ARG(c, "model").p = M_badtok; }
static void x_meta_absent(call *c) { ARG(c, "key").p = "general.no_such_key"; }
static void x_special2(call *c) { ARG(c, "parse_special").i32 = 2; }
static void x_add_special2(call *c) { ARG(c, "add_special").i32 = 2; }
static void x_skip_special2(call *c) { ARG(c, "skip_special").i32 = 2; }
static void x_agp2(call *c) { ARG(c, "add_generation_prompt").i32 = 2; }
static void x_tok0_neg(call *c) { ((int32_t *)ARG(c, "tokens").p)[0] = -1; }
static void x_tok0_vocab(call *c) { ((int32_t *)ARG(c, "tokens").p)[0] = n_vocab; }
static void x_prompt0_neg(call *c) { ((int32_t *)ARG(c, "prompt").p)[0] = -1; }
static void x_prompt0_vocab(call *c) { ((int32_t *)ARG(c, "prompt").p)[0] = n_vocab; }
static void x_token_vocab(call *c) { ARG(c, "token").i32 = n_vocab; }
static void x_role_null(call *c) { ((lk_chat_message *)ARG(c, "messages").p)[0].role = NULL; }
static void x_content_bad(call *c) { ((lk_chat_message *)ARG(c, "messages").p)[1].content = nonutf8; }
static void x_ntok_overflow(call *c) { ARG(c, "n_tokens").i64 = CTX_POSITIONS + 1; }
static void x_nrows_overflow(call *c) { ARG(c, "n_rows").i64 = CTX_POSITIONS + 1; }
static void x_nprompt_overflow(call *c) { ARG(c, "n_prompt").i64 = CTX_POSITIONS + 1; }
static void x_logits_all_small(call *c) { ARG(c, "logits_mode").i32 = LK_LOGITS_ALL; }
static void x_logits_none_null(call *c) { ARG(c, "logits_mode").i32 = LK_LOGITS_NONE; ARG(c, "logits").p = NULL; ARG(c, "capacity").i64 = 0; }
static void x_emb_nan(call *c) { ((float *)ARG(c, "embeddings").p)[3] = NAN; }
static void x_emb_inf(call *c) { ((float *)ARG(c, "embeddings").p)[n_embd + 1] = INFINITY; }
static lk_generate_params *gparams(call *c) { return ARG(c, "params").p; }
static void x_stop_null(call *c) { gparams(c)->stop = NULL; }
static void x_stop0_null(call *c) { ((const char **)gparams(c)->stop)[0] = NULL; }
static void x_stop0_bad(call *c) { ((const char **)gparams(c)->stop)[0] = nonutf8; }
static void x_nstop_big(call *c) { gparams(c)->n_stop = 1025; }
static void x_sampler_topp0(call *c) { ((lk_sampler_params *)gparams(c)->sampler)->top_p = 0; }
static void x_sampler_temp_neg(call *c) { ((lk_sampler_params *)gparams(c)->sampler)->temperature = -1; }
static void x_format2(call *c) { ARG(c, "format").i32 = 2; }
static void x_adapter_AG(call *c) { ARG(c, "adapter").p = AG; }
static void x_ctx_C(call *c) { ARG(c, "ctx").p = C; }
static void x_ctx_C_att(call *c) { ARG(c, "ctx").p = C_att; }
static void x_merge_foreign(call *c) { ((void **)ARG(c, "adapters").p)[0] = A; }
static void x_merge_twice(call *c) {
    ((void **)ARG(c, "adapters").p)[1] = AG;
    ((float *)ARG(c, "scales").p)[1] = 0.5f;
    ARG(c, "n").i32 = 2;
}
static void x_merge_scale_nan(call *c) { ((float *)ARG(c, "scales").p)[0] = NAN; }
static void x_out_bf16(call *c) { ARG(c, "out_type").i32 = LK_DTYPE_BF16; }
static void x_merge_hf(call *c) { ARG(c, "model").p = M; ((void **)ARG(c, "adapters").p)[0] = A; }
static void x_bad_jsonl(call *c) { ARG(c, "train_path").p = p_bad_jsonl; }
static void x_valid_bad_jsonl(call *c) { ARG(c, "valid_path").p = p_bad_jsonl; }
static lk_train_params *tparams(call *c) { return ARG(c, "params").p; }
static void x_layer99(call *c) { ((int32_t *)tparams(c)->layers)[1] = 99; }
static void x_layer_twice(call *c) { ((int32_t *)tparams(c)->layers)[1] = 0; }
static void x_layers_null(call *c) { tparams(c)->layers = NULL; }
static void x_targets_unknown(call *c) { tparams(c)->targets = "q,v,nonsense"; }
static void x_lora_targets_unknown(call *c) { ((lk_lora_params *)ARG(c, "params").p)->targets = "q,nonsense"; }
static void x_lr_zero(call *c) { tparams(c)->lr = 0; }
static void x_resume_missing(call *c) { tparams(c)->resume_dir = p_missing; }
static void x_init_adapter_missing(call *c) { tparams(c)->init_adapter = p_missing; }
static void x_path_hf_badcfg(call *c) { ARG(c, "path").p = p_hf_badcfg; }
static void x_path_hf_trunc(call *c) { ARG(c, "path").p = p_hf_trunc; }
static void x_path_hf_badtok(call *c) { ARG(c, "path").p = p_hf_badtok; }
static void x_path_peft_badcfg(call *c) { ARG(c, "path").p = p_peft_badcfg; }
static void x_path_peft_trunc(call *c) { ARG(c, "path").p = p_peft_trunc; }
static void x_path_gguf_as_adapter(call *c) { ARG(c, "path").p = p_gguf; }
static void x_init_adapter_random(call *c) { tparams(c)->init_adapter = p_random; }
static void x_init_adapter_peft_trunc(call *c) { tparams(c)->init_adapter = p_peft_trunc; }
static void x_resume_folder_empty(call *c) { tparams(c)->resume_dir = p_folder; }
static void x_trainer_T(call *c) { ARG(c, "trainer").p = T; }
static void x_trainer_TM(call *c) { ARG(c, "trainer").p = TM; }
static void x_bseq7(call *c) { ((int32_t *)ARG(c, "seqs").p)[0] = 7; }
static void x_bstep_overflow(call *c) { ((int64_t *)ARG(c, "n_tokens").p)[0] = CTX_POSITIONS; }
static void x_bstep_short(call *c) { ARG(c, "capacity").i64 = n_vocab - 1; }
static void x_badapter_other_model(call *c) { ((void **)ARG(c, "adapters").p)[0] = AG; }
static void x_btrunc_past(call *c) { ARG(c, "position").i32 = 4; }
static void x_is_target2(call *c) { ((uint8_t *)ARG(c, "is_target").p)[2] = 2; }
static void x_prefix_nan(call *c) { ((float *)ARG(c, "prefix").p)[5] = NAN; }
static void x_fb_overflow(call *c) { ARG(c, "n_tokens").i64 = n_ctx_train; } /* + 1 prefix row */
static void x_fb_grad_small(call *c) { ARG(c, "input_grad_capacity").i64 = (int64_t)n_embd * 5 - 1; }
static void x_lr_neg(call *c) { ARG(c, "lr").f64 = -1; }
static void x_threads513(call *c) { ARG(c, "n_threads").i32 = 513; }
static void x_status_42(call *c) { ARG(c, "status").i32 = 42; }
static void x_dtype_6(call *c) { ARG(c, "dtype").i32 = 6; }
static void x_chat_limit_8(call *c) { ARG(c, "limit").i32 = 8; }
static void x_chat_depth_1001(call *c) {
    ARG(c, "limit").i32 = LK_CHAT_LIMIT_RECURSION_DEPTH;
    ARG(c, "new_value").i64 = 1001;
}

static const extra extras[] = {
    {"lk_status_string", "status = 42 (not a status)", EXPECT_CHECK, x_status_42},
    {"lk_dtype_name", "dtype = 6 (past the last dtype)", EXPECT_CHECK, x_dtype_6},
    {"lk_dtype_info", "dtype = 6 (past the last dtype)", LK_ERR_INVALID_ARGUMENT, x_dtype6},
    {"lk_set_default_threads", "n_threads = 513", LK_ERR_INVALID_ARGUMENT, x_threads513},
    {"lk_model_chat_limit", "limit = 8 (past the last lk_chat_limit)", LK_ERR_INVALID_ARGUMENT, x_chat_limit_8},
    {"lk_model_chat_limit", "LK_CHAT_LIMIT_RECURSION_DEPTH = 1001 (over the cap)", LK_ERR_INVALID_ARGUMENT, x_chat_depth_1001},
    {"lk_tensor_new", "n_dims = LK_MAX_DIMS + 1", LK_ERR_INVALID_ARGUMENT, x_dims9},
    {"lk_tensor_new", "shape[1] = -1", LK_ERR_INVALID_ARGUMENT, x_shape_neg},
    {"lk_tensor_new", "shape product overflows (2^62 x 4)", LK_ERR_INVALID_ARGUMENT, x_shape_overflow},
    {"lk_tensor_new", "shape of 2^40 elements (4 TiB)", LK_ERR_OUT_OF_MEMORY, x_shape_huge},
    {"lk_tensor_new", "q8_0 with last dimension 3", LK_ERR_SHAPE, x_q8_odd},
    {"lk_tensor_new", "dtype = 6", LK_ERR_INVALID_ARGUMENT, x_dtype6},
    {"lk_tensor_from_f32", "n_dims = LK_MAX_DIMS + 1", LK_ERR_INVALID_ARGUMENT, x_dims9},
    {"lk_tensor_from_f32", "shape[1] = -1", LK_ERR_INVALID_ARGUMENT, x_shape_neg},
    {"lk_tensor_from_f32", "shape product overflows (2^62 x 4)", LK_ERR_INVALID_ARGUMENT, x_shape_overflow},
    {"lk_tensor_from_f32", "q8_0 with last dimension 3", LK_ERR_SHAPE, x_q8_odd},
    {"lk_tensor_convert", "to q8_0 with last dimension 3", LK_ERR_SHAPE, x_q8_odd},
    {"lk_tensor_convert", "dtype = 6", LK_ERR_INVALID_ARGUMENT, x_dtype6},
    {"lk_matmul", "out is x", LK_ERR_INVALID_ARGUMENT, x_matmul_alias},
    {"lk_matmul", "w of the wrong shape", LK_ERR_SHAPE, x_matmul_wshape},
    {"lk_matmul", "out of the wrong shape", LK_ERR_SHAPE, x_matmul_oshape},
    {"lk_model_chat_template", "model without a chat template", LK_ERR_UNSUPPORTED, x_model_G},
    {"lk_model_meta", "key not in the metadata", LK_ERR_INVALID_ARGUMENT, x_meta_absent},
    {"lk_model_meta", "model without GGUF metadata", LK_ERR_INVALID_ARGUMENT, x_model_M},
    {"lk_model_load", "HF folder with a damaged config.json", LK_ERR_FORMAT, x_path_hf_badcfg},
    {"lk_model_load", "HF folder with truncated model.safetensors", LK_ERR_FORMAT, x_path_hf_trunc},
    /* A damaged tokenizer does not fail the load: the model has no tokenizer (has_tokenizer 0) and the
     * tokenizer calls say why (LK_ERR_UNSUPPORTED, below). */
    {"lk_model_load", "HF folder with a damaged tokenizer.json", LK_OK, x_path_hf_badtok},
    {"lk_tokenize", "model without a tokenizer", LK_ERR_UNSUPPORTED, x_model_G},
    {"lk_tokenize", "model whose tokenizer.json is damaged", LK_ERR_UNSUPPORTED, x_model_badtok},
    {"lk_tokenize", "parse_special = 2", LK_ERR_INVALID_ARGUMENT, x_special2},
    {"lk_tokenize", "add_special = 2", LK_ERR_INVALID_ARGUMENT, x_add_special2},
    {"lk_detokenize", "model without a tokenizer", LK_ERR_UNSUPPORTED, x_model_G},
    {"lk_detokenize", "tokens[0] = -1", LK_ERR_INVALID_ARGUMENT, x_tok0_neg},
    {"lk_detokenize", "tokens[0] = n_vocab", LK_ERR_INVALID_ARGUMENT, x_tok0_vocab},
    {"lk_detokenize", "skip_special = 2", LK_ERR_INVALID_ARGUMENT, x_skip_special2},
    {"lk_token_bytes", "model without a tokenizer", LK_ERR_UNSUPPORTED, x_model_G},
    {"lk_token_bytes", "token = n_vocab", LK_ERR_INVALID_ARGUMENT, x_token_vocab},
    {"lk_chat_apply", "model without a chat template", LK_ERR_UNSUPPORTED, x_model_G},
    {"lk_chat_apply", "messages[0].role = NULL", LK_ERR_INVALID_ARGUMENT, x_role_null},
    {"lk_chat_apply", "messages[1].content non-UTF-8", LK_ERR_INVALID_ARGUMENT, x_content_bad},
    {"lk_chat_apply", "add_generation_prompt = 2", LK_ERR_INVALID_ARGUMENT, x_agp2},
    {"lk_context_eval", "tokens[0] = -1", LK_ERR_INVALID_ARGUMENT, x_tok0_neg},
    {"lk_context_eval", "tokens[0] = n_vocab", LK_ERR_INVALID_ARGUMENT, x_tok0_vocab},
    {"lk_context_eval", "n_tokens = n_ctx + 1", LK_ERR_INVALID_ARGUMENT, x_ntok_overflow},
    {"lk_context_eval", "LK_LOGITS_ALL with room for one row", LK_ERR_BUFFER_TOO_SMALL, x_logits_all_small},
    {"lk_context_eval", "LK_LOGITS_NONE, logits NULL", LK_OK, x_logits_none_null},
    {"lk_context_eval_embeddings", "embeddings[0][3] = NaN", LK_ERR_INVALID_ARGUMENT, x_emb_nan},
    {"lk_context_eval_embeddings", "embeddings[1][1] = +inf", LK_ERR_INVALID_ARGUMENT, x_emb_inf},
    {"lk_context_eval_embeddings", "n_rows = n_ctx + 1", LK_ERR_INVALID_ARGUMENT, x_nrows_overflow},
    {"lk_context_eval_embeddings", "LK_LOGITS_ALL with room for one row", LK_ERR_BUFFER_TOO_SMALL, x_logits_all_small},
    {"lk_generate", "prompt[0] = -1", LK_ERR_INVALID_ARGUMENT, x_prompt0_neg},
    {"lk_generate", "prompt[0] = n_vocab", LK_ERR_INVALID_ARGUMENT, x_prompt0_vocab},
    {"lk_generate", "n_prompt = n_ctx + 1", LK_ERR_INVALID_ARGUMENT, x_nprompt_overflow},
    {"lk_generate", "params->stop = NULL, n_stop 1", LK_ERR_INVALID_ARGUMENT, x_stop_null},
    {"lk_generate", "params->stop[0] = NULL", LK_ERR_INVALID_ARGUMENT, x_stop0_null},
    {"lk_generate", "params->stop[0] non-UTF-8", LK_ERR_INVALID_ARGUMENT, x_stop0_bad},
    {"lk_generate", "params->n_stop = 1025", LK_ERR_INVALID_ARGUMENT, x_nstop_big},
    {"lk_generate", "sampler->top_p = 0", LK_ERR_INVALID_ARGUMENT, x_sampler_topp0},
    {"lk_generate", "sampler->temperature = -1", LK_ERR_INVALID_ARGUMENT, x_sampler_temp_neg},
    {"lk_adapter_load", "PEFT folder with a damaged adapter_config.json", LK_ERR_FORMAT, x_path_peft_badcfg},
    {"lk_adapter_load", "PEFT folder with truncated adapter_model.safetensors", LK_ERR_FORMAT, x_path_peft_trunc},
    {"lk_adapter_load", "a model GGUF file (not a LoRA)", LK_ERR_FORMAT, x_path_gguf_as_adapter},
    {"lk_adapter_create", "params->targets names an unknown module", LK_ERR_INVALID_ARGUMENT, x_lora_targets_unknown},
    {"lk_adapter_save", "format = 2", LK_ERR_INVALID_ARGUMENT, x_format2},
    {"lk_context_attach_adapter", "adapter made for another model", LK_ERR_INVALID_ARGUMENT, x_adapter_AG},
    {"lk_context_attach_adapter", "adapter already attached", LK_ERR_INVALID_ARGUMENT, x_ctx_C_att},
    {"lk_context_detach_adapter", "adapter not attached", LK_ERR_INVALID_ARGUMENT, x_ctx_C},
    {"lk_context_set_adapter_scale", "adapter not attached", LK_ERR_INVALID_ARGUMENT, x_ctx_C},
    {"lk_model_merge_to_file", "adapters[0] made for another model", LK_ERR_INVALID_ARGUMENT, x_merge_foreign},
    {"lk_model_merge_to_file", "the same adapter twice", LK_ERR_INVALID_ARGUMENT, x_merge_twice},
    {"lk_model_merge_to_file", "scales[0] = NaN", LK_ERR_INVALID_ARGUMENT, x_merge_scale_nan},
    {"lk_model_merge_to_file", "out_type = LK_DTYPE_BF16", LK_ERR_INVALID_ARGUMENT, x_out_bf16},
    {"lk_model_merge_to_file", "model from a Hugging Face folder", LK_ERR_UNSUPPORTED, x_merge_hf},
    {"lk_trainer_create", "train_path with a malformed line", LK_ERR_FORMAT, x_bad_jsonl},
    {"lk_trainer_create", "valid_path with a malformed line", LK_ERR_FORMAT, x_valid_bad_jsonl},
    {"lk_trainer_create", "params->layers[1] = 99", LK_ERR_INVALID_ARGUMENT, x_layer99},
    {"lk_trainer_create", "params->layers lists layer 0 twice", LK_ERR_INVALID_ARGUMENT, x_layer_twice},
    {"lk_trainer_create", "params->layers = NULL, n_layers 2", LK_ERR_INVALID_ARGUMENT, x_layers_null},
    {"lk_trainer_create", "params->targets names an unknown module", LK_ERR_INVALID_ARGUMENT, x_targets_unknown},
    {"lk_trainer_create", "params->lr = 0", LK_ERR_INVALID_ARGUMENT, x_lr_zero},
    /* The core reads a missing resume folder as one without checkpoints ("no checkpoint in DIR"). */
    {"lk_trainer_create", "params->resume_dir missing", LK_ERR_INVALID_ARGUMENT, x_resume_missing},
    {"lk_trainer_create", "params->init_adapter missing", LK_ERR_IO, x_init_adapter_missing},
    {"lk_trainer_create", "params->init_adapter random bytes", LK_ERR_FORMAT, x_init_adapter_random},
    {"lk_trainer_create", "params->init_adapter truncated PEFT weights", LK_ERR_FORMAT, x_init_adapter_peft_trunc},
    {"lk_trainer_create", "params->resume_dir an empty folder", LK_ERR_INVALID_ARGUMENT, x_resume_folder_empty},
    {"lk_trainer_step", "trainer without training data", LK_ERR_INVALID_ARGUMENT, x_trainer_TM},
    {"lk_trainer_run", "trainer without training data", LK_ERR_INVALID_ARGUMENT, x_trainer_TM},
    {"lk_trainer_validation_loss", "trainer without validation data", LK_ERR_INVALID_ARGUMENT, x_trainer_TM},
    {"lk_trainer_save_checkpoint", "trainer without out_dir", LK_ERR_INVALID_ARGUMENT, x_trainer_TM},
    {"lk_trainer_zero_grad", "trainer with training data", LK_ERR_INVALID_ARGUMENT, x_trainer_T},
    {"lk_trainer_forward_backward", "trainer with training data", LK_ERR_INVALID_ARGUMENT, x_trainer_T},
    {"lk_trainer_forward_backward", "tokens[0] = -1", LK_ERR_INVALID_ARGUMENT, x_tok0_neg},
    {"lk_trainer_forward_backward", "tokens[0] = n_vocab", LK_ERR_INVALID_ARGUMENT, x_tok0_vocab},
    {"lk_trainer_forward_backward", "is_target[2] = 2", LK_ERR_INVALID_ARGUMENT, x_is_target2},
    {"lk_trainer_forward_backward", "prefix[0][5] = NaN", LK_ERR_INVALID_ARGUMENT, x_prefix_nan},
    {"lk_trainer_forward_backward", "n_prefix + n_tokens = context + 1", LK_ERR_INVALID_ARGUMENT, x_fb_overflow},
    {"lk_trainer_forward_backward", "input_grad_capacity one short", LK_ERR_BUFFER_TOO_SMALL, x_fb_grad_small},
    {"lk_trainer_optimizer_step", "trainer with training data", LK_ERR_INVALID_ARGUMENT, x_trainer_T},
    {"lk_trainer_optimizer_step", "lr = -1", LK_ERR_INVALID_ARGUMENT, x_lr_neg},
    {"lk_batch_step", "seqs[0] = 7 (no such sequence)", LK_ERR_INVALID_ARGUMENT, x_bseq7},
    {"lk_batch_step", "tokens[0] = -1", LK_ERR_INVALID_ARGUMENT, x_tok0_neg},
    {"lk_batch_step", "tokens[0] = n_vocab", LK_ERR_INVALID_ARGUMENT, x_tok0_vocab},
    {"lk_batch_step", "n_tokens[0] overflows n_ctx", LK_ERR_INVALID_ARGUMENT, x_bstep_overflow},
    {"lk_batch_step", "capacity one short", LK_ERR_BUFFER_TOO_SMALL, x_bstep_short},
    {"lk_batch_set_adapters", "an adapter of another model", LK_ERR_INVALID_ARGUMENT, x_badapter_other_model},
    {"lk_batch_truncate", "position past the sequence's position", LK_ERR_INVALID_ARGUMENT, x_btrunc_past},
};
#define N_EXTRAS (sizeof extras / sizeof extras[0])

/* ------------------------------------------------------------------------------------------------ */
/* Running one call (in a forked child)                                                              */
/* ------------------------------------------------------------------------------------------------ */

static ffi_cif cifs[ABI_N_FUNCTIONS];
static ffi_type *arg_types[ABI_N_FUNCTIONS][MAXP];
static void *fn_ptrs[ABI_N_FUNCTIONS];

static ffi_type *ffi_of(abi_type t) {
    switch (t) {
    case T_VOID: return &ffi_type_void;
    case T_I8: return &ffi_type_sint8;
    case T_U8: return &ffi_type_uint8;
    case T_I32: return &ffi_type_sint32;
    case T_U32: return &ffi_type_uint32;
    case T_I64: return &ffi_type_sint64;
    case T_U64: return &ffi_type_uint64;
    case T_F32: return &ffi_type_float;
    case T_F64: return &ffi_type_double;
    case T_SZ: return sizeof(size_t) == 8 ? &ffi_type_uint64 : &ffi_type_uint32;
    case T_PTR: return &ffi_type_pointer;
    }
    return NULL;
}

static void build(call *c, const abi_fn *f, const spec *sp) {
    memset(c, 0, sizeof *c);
    c->fn = f;
    sp->base(c);
}

static void describe(const call *c, const mutation *m, char *out, size_t n) {
    if (m->kind == M_BASE) snprintf(out, n, "%s(baseline)", c->fn->name);
    else snprintf(out, n, "%s(%s = %s)", c->fn->name, m->where, m->tag);
}

/* Live handles still work after the call (an error must not free or break anything). */
static int bystanders_ok(char *why, size_t n) {
    int64_t a, b;
    int32_t pos;
    lk_model_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    lk_status s;
    if ((s = lk_tensor_size(X, &a, &b)) != LK_OK || a != 6) return WHY("tensor X broke: %s", status_name(s));
    if ((s = lk_model_get_info(M, &info)) != LK_OK || info.n_vocab != n_vocab) return WHY("model M broke: %s", status_name(s));
    if ((s = lk_context_position(C_by, &pos)) != LK_OK) return WHY("context C_by broke: %s", status_name(s));
    if ((s = lk_context_position(C, &pos)) != LK_OK) return WHY("context C is unusable afterwards: %s", status_name(s));
    if ((s = lk_trainer_steps(TM, &a, &b)) != LK_OK) return WHY("trainer TM is unusable afterwards: %s", status_name(s));
    if ((s = lk_trainer_steps(T, &a, &b)) != LK_OK) return WHY("trainer T is unusable afterwards: %s", status_name(s));
    /* An adapter has no query: detaching it from a context it is not attached to says "not attached"
     * (LK_ERR_INVALID_ARGUMENT) while it is alive, LK_ERR_INVALID_HANDLE once freed. */
    if ((s = lk_context_detach_adapter(C_by, A)) != LK_ERR_INVALID_ARGUMENT) return WHY("adapter A broke: %s", status_name(s));
    return 1;
}

static int child(const abi_fn *f, const spec *sp, const mutation *m, int fi) {
    call c;
    build(&c, f, sp);
    if (m->kind == M_PARAM) apply_param(&c, m->index, m->tag);
    else if (m->kind == M_STRUCT) apply_struct(&c, m);
    else if (m->kind == M_EXTRA) extras[m->index].apply(&c);
    watch_structs(&c);
    for (int i = 0; i < c.n_reg; i++) {
        c.reg[i].snap = malloc(c.reg[i].n ? c.reg[i].n : 1);
        memcpy(c.reg[i].snap, c.reg[i].p, c.reg[i].n);
    }
    void *values[MAXP];
    for (int i = 0; i < f->n_params; i++) values[i] = &c.a[i];
    retval rv;
    memset(&rv, 0, sizeof rv);
    if (!sp->keep_error) lk_clear_error();
    ffi_call(&cifs[fi], FFI_FN(fn_ptrs[fi]), &rv, values);

    char label[512], why[1024] = "";
    describe(&c, m, label, sizeof label);
    int ok = 1;
    if (sp->check) {
        ok = sp->check(&c, m, rv, why, sizeof why);
    } else {
        int32_t s = (int32_t)rv.a;
        const char *msg = lk_last_error();
        if (m->expect != EXPECT_ANY && s != m->expect) {
            snprintf(why, sizeof why, "returned %d %s, expected %s; lk_last_error: \"%.300s\"", s, status_name(s),
                     status_name(m->expect), msg ? msg : "(NULL)");
            ok = 0;
        } else if (m->expect == EXPECT_ANY && s != LK_OK && s != LK_STOPPED && (s >= 0 || !strcmp(status_name(s), "(not a status)"))) {
            snprintf(why, sizeof why, "returned %d, not a documented status", s);
            ok = 0;
        } else if (s < 0 && (!msg || !*msg)) {
            snprintf(why, sizeof why, "returned %s with an empty lk_last_error()", status_name(s));
            ok = 0;
        } else if (s < 0 && !strstr(msg, f->name)) {
            snprintf(why, sizeof why, "lk_last_error() \"%.300s\" does not name %s", msg, f->name);
            ok = 0;
        }
        if (ok && s == LK_OK) {
            /* Success: every out-handle received a handle. */
            for (int i = 0; i < f->n_params; i++)
                if (f->params[i].role == R_OUT_HANDLE && c.a[i].p) {
                    void *h;
                    memcpy(&h, c.a[i].p, sizeof h);
                    if (!h || (uintptr_t)h == (uintptr_t)0xA5A5A5A5A5A5A5A5ull) {
                        snprintf(why, sizeof why, "returned LK_OK without writing *%s", f->params[i].name);
                        ok = 0;
                    }
                }
        }
        for (int i = 0; ok && i < c.n_reg; i++) {
            region *r = &c.reg[i];
            int changed = memcmp(r->p, r->snap, r->n) != 0;
            if (!changed) continue;
            if (r->flags & REG_KEEP) {
                snprintf(why, sizeof why, "wrote %s, which it must never write (returned %s)", r->what, status_name(s));
                ok = 0;
            } else if ((r->flags & REG_OUT) && s < 0 && !(s == LK_ERR_BUFFER_TOO_SMALL && (r->flags & REG_NEEDED))) {
                snprintf(why, sizeof why, "returned %s but wrote the out-parameter %s (written only on success)",
                         status_name(s), r->what);
                ok = 0;
            }
        }
        char bwhy[256];
        if (ok && !bystanders_ok(bwhy, sizeof bwhy)) {
            snprintf(why, sizeof why, "after it (returned %s): %s", status_name(s), bwhy);
            ok = 0;
        }
    }
    if (!ok) printf("    FAIL %s: %s\n", label, why);
    else if (verbose) printf("    ok   %s\n", label);
    fflush(stdout);
    return ok ? 0 : 1;
}

/* ------------------------------------------------------------------------------------------------ */
/* Enumerating the calls of a function                                                               */
/* ------------------------------------------------------------------------------------------------ */

#define MAXMUT 400
static int mutations_of(const abi_fn *f, const spec *sp, mutation *ms) {
    int n = 0;
    ms[n++] = (mutation){M_BASE, 0, "baseline", "", sp->check ? EXPECT_CHECK : LK_OK};
    for (int i = 0; i < f->n_params; i++) {
        const char *tags[MAXTAGS];
        int k = role_tags(f, i, tags);
        for (int j = 0; j < k; j++) {
            mutation *m = &ms[n++];
            m->kind = M_PARAM;
            m->index = i;
            scpy(m->tag, sizeof m->tag, tags[j]);
            scpy(m->where, sizeof m->where, f->params[i].name);
            m->expect = sp->check ? EXPECT_CHECK
                                  : lookup_override(f->name, m->where, m->tag, default_expect(f, &f->params[i], tags[j]));
        }
    }
    /* Structs: the baseline registers them (built here in the parent only to enumerate them). */
    call c;
    build(&c, f, sp);
    for (int s = 0; s < c.n_st; s++) {
        char tags[128][96], wheres[128][96];
        int expects[128];
        int k = struct_tags(&c.st[s], tags, wheres, expects, f->name);
        for (int j = 0; j < k; j++) {
            mutation *m = &ms[n++];
            m->kind = M_STRUCT;
            m->index = s;
            scpy(m->tag, sizeof m->tag, tags[j]);
            scpy(m->where, sizeof m->where, wheres[j]);
            m->expect = expects[j];
        }
    }
    call_free(&c);
    for (size_t e = 0; e < N_EXTRAS; e++)
        if (strcmp(extras[e].fn, f->name) == 0) {
            mutation *m = &ms[n++];
            m->kind = M_EXTRA;
            m->index = (int)e;
            scpy(m->tag, sizeof m->tag, extras[e].tag);
            snprintf(m->where, sizeof m->where, "extra");
            m->expect = extras[e].expect;
        }
    if (n > MAXMUT) die("%s: %d calls, more than MAXMUT", f->name, n);
    return n;
}

/* ------------------------------------------------------------------------------------------------ */
/* The table against the library                                                                     */
/* ------------------------------------------------------------------------------------------------ */

static int check_exports(int *n_exported) {
    int failures = 0;
    Dl_info info;
    if (!dladdr((void *)(uintptr_t)lk_abi_version, &info) || !info.dli_fname) die("dladdr(lk_abi_version) failed");
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "nm -D --defined-only '%s'", info.dli_fname);
    FILE *p = popen(cmd, "r");
    if (!p) die("cannot run %s", cmd);
    char line[1024];
    static char names[1024][128];
    int n = 0;
    while (fgets(line, sizeof line, p)) {
        char addr[64], type[8], name[512];
        if (sscanf(line, "%63s %7s %511s", addr, type, name) != 3) continue;
        if (strncmp(name, "lk_", 3) != 0 || (strcmp(type, "T") != 0 && strcmp(type, "W") != 0)) continue;
        if (n < 1024) scpy(names[n++], sizeof names[0], name);
    }
    int rc = pclose(p);
    if (rc != 0 || n == 0) die("`%s` failed or listed no lk_ functions (exit %d)", cmd, rc);
    *n_exported = n;
    printf("exports: %d lk_* functions in %s (nm -D), %d declared in lorakit.h\n", n, info.dli_fname, (int)ABI_N_FUNCTIONS);
    for (int i = 0; i < n; i++)
        if (!find_fn(names[i])) {
            printf("  FAIL %s is exported by the library but not declared in lorakit.h\n", names[i]);
            failures++;
        }
    for (size_t i = 0; i < ABI_N_FUNCTIONS; i++) {
        int found = 0;
        for (int j = 0; j < n && !found; j++) found = strcmp(names[j], abi_functions[i].name) == 0;
        if (!found) {
            printf("  FAIL %s is declared in lorakit.h but not exported by the library\n", abi_functions[i].name);
            failures++;
        }
    }
    return failures;
}

static int check_table(void) {
    int failures = 0;
    for (size_t i = 0; i < ABI_N_CONSTANTS; i++)
        if (abi_constants[i].compiled != abi_constants[i].parsed) {
            printf("  FAIL %s: the parser read %lld, the compiler says %lld\n", abi_constants[i].name,
                   abi_constants[i].parsed, abi_constants[i].compiled);
            failures++;
        }
    for (size_t i = 0; i < ABI_N_STRUCTS; i++) {
        char fn[128];
        snprintf(fn, sizeof fn, "lk_sizeof_%s", abi_structs[i].name + 3);
        if (!find_fn(fn)) {
            printf("  FAIL struct %s has no %s() (bindings check their layout with it)\n", abi_structs[i].name, fn);
            failures++;
        }
    }
    return failures;
}

/* ------------------------------------------------------------------------------------------------ */

int main(int argc, char **argv) {
    const char *root = NULL, *only = NULL;
    int list = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) only = argv[++i];
        else if (strcmp(argv[i], "--list") == 0) list = 1;
        else if (strcmp(argv[i], "--verbose") == 0) verbose = 1;
        else root = argv[i];
    }
    if (!root) die("usage: abi_sweep REPO_ROOT [--only lk_name] [--list] [--verbose]");
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    printf("abi sweep (LoRAKit %s, ABI %d): every lk_* function through libffi, one hostile argument at a time\n",
           lk_version_string(), lk_abi_version());

    int failures = 0, crashes = 0, passed = 0, calls = 0, functions = 0, n_exported = 0;
    failures += check_exports(&n_exported);
    failures += check_table();
    setup(root);
    int threads = thread_count();
    if (threads != 1) die("the parent has %d threads after setup; fork() needs a single-threaded parent", threads);

    for (size_t i = 0; i < ABI_N_FUNCTIONS; i++) {
        const abi_fn *f = &abi_functions[i];
        ffi_type *ret = ffi_of(f->ret);
        for (int j = 0; j < f->n_params; j++) arg_types[i][j] = ffi_of(f->params[j].type);
        if (ffi_prep_cif(&cifs[i], FFI_DEFAULT_ABI, (unsigned)f->n_params, ret, arg_types[i]) != FFI_OK)
            die("ffi_prep_cif(%s) failed", f->name);
        fn_ptrs[i] = dlsym(RTLD_DEFAULT, f->name);
    }

    static mutation ms[MAXMUT];
    for (size_t i = 0; i < ABI_N_FUNCTIONS; i++) {
        const abi_fn *f = &abi_functions[i];
        if (only && strcmp(only, f->name) != 0) continue;
        const spec *sp = find_spec(f->name);
        if (!sp) {
            printf("  FAIL %s: no baseline in Tests/abi/abi_sweep.c (every function of lorakit.h needs one)\n", f->name);
            failures++;
            continue;
        }
        if (!fn_ptrs[i]) {
            printf("  FAIL %s: dlsym found no such function\n", f->name);
            failures++;
            continue;
        }
        if (strcmp(f->ret_ctype, "lk_status") != 0 && !sp->check) die("%s returns %s: its spec needs a check", f->name, f->ret_ctype);
        int n = mutations_of(f, sp, ms);
        if (list) {
            for (int k = 0; k < n; k++)
                printf("%s\t%s\t%s\t%s\n", f->name, ms[k].where, ms[k].tag,
                       ms[k].expect == EXPECT_ANY ? "any" : ms[k].expect == EXPECT_CHECK ? "check" : status_name(ms[k].expect));
            continue;
        }
        functions++;
        int fn_fail = 0, fn_crash = 0;
        for (int k = 0; k < n; k++) {
            fflush(stdout);
            pid_t pid = fork();
            if (pid < 0) die("fork: %s", strerror(errno));
            if (pid == 0) {
                alarm(60);
                int r = child(f, sp, &ms[k], (int)i);
                fflush(stdout);
                _exit(r);
            }
            int st = 0;
            while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
            calls++;
            if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
                passed++;
            } else if (WIFEXITED(st)) {
                fn_fail++;
            } else {
                int sig = WIFSIGNALED(st) ? WTERMSIG(st) : 0;
                call c;
                memset(&c, 0, sizeof c);
                c.fn = f;
                char label[512];
                describe(&c, &ms[k], label, sizeof label);
                printf("    CRASH %s: killed by signal %d (%s)%s\n", label, sig, strsignal(sig),
                       sig == SIGALRM ? ", timed out after 60 s" : "");
                fn_crash++;
            }
        }
        failures += fn_fail + fn_crash;
        crashes += fn_crash;
        printf("  %s %s: %d calls%s\n", fn_fail + fn_crash ? "FAIL" : "ok  ", f->name, n,
               fn_crash ? " (crashed)" : "");
    }
    if (list) return 0;
    for (size_t i = 0; i < N_SPECS; i++)
        if (!find_fn(specs[i].fn)) {
            printf("  FAIL baseline for %s, which lorakit.h does not declare (stale: remove or rename it)\n", specs[i].fn);
            failures++;
        }
    for (size_t i = 0; i < N_EXTRAS; i++)
        if (!find_fn(extras[i].fn)) {
            printf("  FAIL extra call {%s, %s}: lorakit.h does not declare %s\n", extras[i].fn, extras[i].tag, extras[i].fn);
            failures++;
        }
    if (!only)
        for (size_t i = 0; i < N_OVERRIDES; i++)
            if (!override_used[i]) {
                printf("  FAIL override {%s, %s, %s} matches no call (stale: remove or fix it)\n", overrides[i].fn,
                       overrides[i].where, overrides[i].tag);
                failures++;
            }
    remove_tree(tmp_dir);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    printf("abi sweep: %d functions (of %d lk_* exports), %d calls, %d crashes, %.1f s\n", functions, n_exported,
           calls, crashes, secs);
    printf("%d passed, %d failed\n", passed, failures);
    return failures ? 1 : 0;
}

/*
 * test_plugins.c — the plugin ABI and the shipped plugins, without liblorakit.
 *
 *     test_plugins PLUGIN_DIR [FIXTURE_DIR]
 *
 * PLUGIN_DIR holds ia3.so, dora.so and the deliberately bad plugins bad_*.so (make test-plugins builds
 * them); FIXTURE_DIR (Tests/LoRAKitTests/Fixtures/plugins) holds modules.bin, PEFT's module-level
 * numbers (scripts/gen_plugin_fixtures.py). Checks, each against a slow double-precision reference
 * written here from PEFT's formulas:
 *   - loading: both plugins load; the bad ones are rejected with the expected message;
 *   - forward (scales 1, 0.6 and 0), backward by central finite differences of the reference (parameter
 *     gradients and the input gradient; DoRA's norm held fixed: detached as in PEFT), merge (W'x equals
 *     the unmerged module; whole-matrix and row-block merges agree bit for bit), DoRA's magnitude init;
 *   - results independent of the number of host threads (1 vs 3: bitwise);
 *   - PEFT parity per module: outputs, parameter gradients and input gradients PEFT computed on the tiny
 *     model's real activations.
 * Prints one line per check and "N passed, M failed"; exit status 1 on any failure.
 */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ref_host.h"

/* Every table starts with uint32 struct_size, int32 abi_major, int32 abi_minor at offsets 0, 4, 8 (forever). */
_Static_assert(offsetof(lkp_host, struct_size) == 0 && offsetof(lkp_host, abi_major) == 4 &&
               offsetof(lkp_host, abi_minor) == 8, "host table header");
_Static_assert(offsetof(lkp_plugin, struct_size) == 0 && offsetof(lkp_plugin, abi_major) == 4 &&
               offsetof(lkp_plugin, abi_minor) == 8, "plugin table header");
_Static_assert(LKP_HOST_SIZE_V1 == sizeof(lkp_host) && LKP_FORWARD_ARGS_SIZE_V1 == sizeof(lkp_forward_args) &&
               LKP_BACKWARD_ARGS_SIZE_V1 == sizeof(lkp_backward_args) && LKP_MODULE_SIZE_V1 == sizeof(lkp_module),
               "ABI 1.0: the V1 sizes are this header's sizes");

static int n_pass, n_fail;
static const char *plugin_dir;

#define CHECK(cond, ...) do { if (cond) { n_pass++; printf("  ok   "); } else { n_fail++; \
    printf("  FAIL %s:%d: ", __FILE__, __LINE__); } printf(__VA_ARGS__); printf("\n"); } while (0)

static double urand(uint64_t *s) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(*s >> 11) / 9007199254740992.0;
}
static void fill(float *p, int64_t n, double lo, double hi, uint64_t *s) {
    for (int64_t i = 0; i < n; i++) p[i] = (float)(lo + (hi - lo) * urand(s));
}
static char *path_of(const char *name) {
    static char buf[4][1024];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", plugin_dir, name);
    return buf[k];
}

/* ================================================================================================ */
/* Slow references (double), straight from PEFT's formulas                                          */
/* ================================================================================================ */

/* IA³: ff: y = W (x ⊙ v); else y = (W x) ⊙ v; v = 1 + c(l − 1). */
static void ia3_ref(int ff, const float *W, int64_t OUT, int64_t IN, const double *l, double c,
                    const double *x, int64_t T, double *y) {
    for (int64_t t = 0; t < T; t++)
        for (int64_t o = 0; o < OUT; o++) {
            double s = 0;
            for (int64_t i = 0; i < IN; i++) s += W[o * IN + i] * x[t * IN + i] * (ff ? 1 + c * (l[i] - 1) : 1);
            y[t * OUT + o] = ff ? s : s * (1 + c * (l[o] - 1));
        }
}

/* DoRA row norms n_i = ‖W_i + s·(B A)_i‖. */
static void dora_norms(const float *W, int64_t OUT, int64_t IN, int64_t r, const double *A, const double *B,
                       double s, double *n) {
    for (int64_t o = 0; o < OUT; o++) {
        double acc = 0;
        for (int64_t i = 0; i < IN; i++) {
            double d = 0;
            for (int64_t k = 0; k < r; k++) d += B[o * r + k] * A[k * IN + i];
            double w = W[o * IN + i] + s * d;
            acc += w * w;
        }
        n[o] = sqrt(acc);
    }
}

/* DoRA (PEFT DoraLinearLayer): y = W x + c·[(m/n − 1) ⊙ W x + (m/n) ⊙ s·B A x], n given (detached). */
static void dora_ref(const float *W, int64_t OUT, int64_t IN, int64_t r, const double *A, const double *B,
                     const double *m, const double *n, double s, double c, const double *x, int64_t T, double *y) {
    double *u = malloc(sizeof(double) * (size_t)r);
    for (int64_t t = 0; t < T; t++) {
        for (int64_t k = 0; k < r; k++) {
            u[k] = 0;
            for (int64_t i = 0; i < IN; i++) u[k] += A[k * IN + i] * x[t * IN + i];
        }
        for (int64_t o = 0; o < OUT; o++) {
            double h = 0, bu = 0;
            for (int64_t i = 0; i < IN; i++) h += W[o * IN + i] * x[t * IN + i];
            for (int64_t k = 0; k < r; k++) bu += B[o * r + k] * u[k];
            double g = m[o] / n[o];
            y[t * OUT + o] = h + c * ((g - 1) * h + g * s * bu);
        }
    }
    free(u);
}

/* One reference model over an adapter's parameters (as doubles) and an input. */
typedef struct {
    int is_dora, ff;
    const float *W;
    int64_t OUT, IN, r;
    double s, c;
    const double *nfix;   /* DoRA: detached norms */
} ref_model;

static void ref_forward(const ref_model *rm, double *const *p, const double *x, int64_t T, double *y) {
    if (rm->is_dora) dora_ref(rm->W, rm->OUT, rm->IN, rm->r, p[0], p[1], p[2], rm->nfix, rm->s, rm->c, x, T, y);
    else ia3_ref(rm->ff, rm->W, rm->OUT, rm->IN, p[0], rm->c, x, T, y);
}

/* L = Σ R ⊙ y: central differences of the reference in every parameter element and every input. */
static double ref_loss(const ref_model *rm, double *const *p, const double *x, int64_t T, const float *R, double *ybuf) {
    ref_forward(rm, p, x, T, ybuf);
    double L = 0;
    for (int64_t k = 0; k < T * rm->OUT; k++) L += R[k] * ybuf[k];
    return L;
}

static double max_abs(const double *a, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) if (fabs(a[i]) > m) m = fabs(a[i]);
    return m;
}

/* ================================================================================================ */
/* Helpers                                                                                           */
/* ================================================================================================ */

static rh_registry reg;

static const char *const ia3_ff_list[] = { "down_proj" };
static const rh_config_entry ia3_cfg_entries[] = {
    { .key = "peft_type", .type = RH_STRING, .string = "IA3" },
    { .key = "feedforward_modules", .type = RH_LIST, .names = ia3_ff_list, .n = 1 },
};
static const lkp_config ia3_cfg = { ia3_cfg_entries, 2 };

static const char *const dora_rank_keys[] = { "v_proj" };
static const double dora_rank_vals[] = { 3 };
static const char *const dora_alpha_keys[] = { "layers\\.1\\.self_attn\\.q_proj" };
static const double dora_alpha_vals[] = { 10 };
static const rh_config_entry dora_cfg_entries[] = {
    { .key = "peft_type", .type = RH_STRING, .string = "LORA" },
    { .key = "use_dora", .type = RH_BOOL, .number = 1 },
    { .key = "r", .type = RH_NUMBER, .number = 4 },
    { .key = "lora_alpha", .type = RH_NUMBER, .number = 6 },
    { .key = "use_rslora", .type = RH_BOOL, .number = 0 },
    { .key = "rank_pattern", .type = RH_PATTERN, .names = dora_rank_keys, .values = dora_rank_vals, .n = 1 },
    { .key = "alpha_pattern", .type = RH_PATTERN, .names = dora_alpha_keys, .values = dora_alpha_vals, .n = 1 },
};
static const lkp_config dora_cfg = { dora_cfg_entries, 7 };

/* Randomise every parameter (non-trivial values: IA³ l around 1, DoRA B ≠ 0, m ≠ ‖W‖) and prepare. */
static void randomise(rh_adapter *ad, uint64_t *seed) {
    for (int32_t i = 0; i < ad->n_params; i++) {
        const char *nm = ad->info[i].name;
        if (!strcmp(nm, "ia3_l")) fill(ad->params[i], ad->numel[i], 0.3, 1.8, seed);
        else if (!strcmp(nm, "lora_A.weight")) fill(ad->params[i], ad->numel[i], -0.4, 0.4, seed);
        else if (!strcmp(nm, "lora_B.weight")) fill(ad->params[i], ad->numel[i], -0.3, 0.3, seed);
        else if (!strcmp(nm, "lora_magnitude_vector")) {
            for (int64_t k = 0; k < ad->numel[i]; k++) ad->params[i][k] *= (float)(0.6 + 0.8 * urand(seed));
        }
    }
    char err[512] = "";
    CHECK(rh_adapter_prepare(ad, 2, err, sizeof err) == 0, "prepare: %s", err);
}

static void to_double(const float *a, double *b, int64_t n) { for (int64_t i = 0; i < n; i++) b[i] = a[i]; }

/* ================================================================================================ */
/* Tests                                                                                             */
/* ================================================================================================ */

static void test_loading(void) {
    printf("== loading\n");
    char err[1024] = "";
    CHECK(rh_load(&reg, path_of("ia3.so"), err, sizeof err) == 0, "ia3.so: %s", err);
    CHECK(rh_load(&reg, path_of("dora.so"), err, sizeof err) == 0, "dora.so: %s", err);
    const lkp_adapter_type *ia3 = rh_find(&reg, "ia3"), *dora = rh_find(&reg, "dora");
    CHECK(ia3 && !strcmp(ia3->peft_type, "IA3") && !ia3->peft_flag && ia3->n_key_suffixes == 1 &&
          !strcmp(ia3->key_suffixes[0], "ia3_l") && ia3->merge && ia3->backward, "ia3 descriptor");
    CHECK(dora && !strcmp(dora->peft_type, "LORA") && dora->peft_flag && !strcmp(dora->peft_flag, "use_dora") &&
          dora->n_key_suffixes == 3 && dora->merge && dora->backward && dora->prepare && dora->init_param,
          "dora descriptor");

    /* Bad plugins: each rejected with a message naming the file and what was wrong. */
    struct { const char *file; const char *expect[3]; } bad[] = {
        { "bad_major.so", { "bad_major.so", "built for plugin ABI 0.7, host has 1.0", "major versions differ" } },
        { "bad_nosymbol.so", { "bad_nosymbol.so", "no entry symbol lkp_entry", NULL } },
        { "bad_short.so", { "bad_short.so", "plugin table is 16 bytes", "below the" } },
        { "bad_entry_error.so", { "bad_entry_error.so", "lkp_entry failed (status -4)",
                                  "bad_entry_error: needs a host with a GPU (found none)" } },
        { "bad_dup_type.so", { "bad_dup_type.so", "adapter type \"ia3\" is already registered by", "ia3.so" } },
        { "bad_dup_within.so", { "bad_dup_within.so", "adapter type \"twin\" is declared twice", NULL } },
        { "bad_no_forward.so", { "bad_no_forward.so", "adapter type \"noforward\" has no forward function", NULL } },
        { "bad_name.so", { "bad_name.so", "name \"Bad-Name\" is not 1-63 characters of [a-z0-9_]", NULL } },
        { "bad_type_short.so", { "bad_type_short.so", "adapter type 0 table is 24 bytes, below the", NULL } },
        { "missing_file.so", { "missing_file.so", "cannot load:", NULL } },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int before = reg.n_types;
        int rc = rh_load(&reg, path_of(bad[i].file), err, sizeof err);
        int ok = rc != 0 && reg.n_types == before;
        for (int k = 0; k < 3 && bad[i].expect[k]; k++) ok = ok && strstr(err, bad[i].expect[k]) != NULL;
        CHECK(ok, "%s: rc %d, message \"%s\"", bad[i].file, rc, rc ? err : "");
        printf("  rejected %-20s %s\n", bad[i].file, err);
    }
    /* The host sizes are what the header says. */
    CHECK(rh_host()->struct_size >= LKP_HOST_SIZE_V1 && LKP_PLUGIN_SIZE_V1 == sizeof(lkp_plugin) &&
          LKP_ADAPTER_TYPE_SIZE_V1 == sizeof(lkp_adapter_type), "V1 sizes equal this header's sizeof");
    /* Loading the same plugin again is a duplicate registration (dlopen returns the same handle). */
    CHECK(rh_load(&reg, path_of("ia3.so"), err, sizeof err) != 0 && strstr(err, "already registered"), "reload: %s", err);
}

/* The threading contract: forward runs concurrently on one instance (two contexts sharing an adapter). */
struct conc { rh_adapter *ad; const float *x; float *y; int64_t T; int rc; };
static void *conc_forward(void *p) {
    struct conc *c = p;
    char err[256];
    for (int k = 0; k < 50 && !c->rc; k++) c->rc = rh_module_forward(c->ad, 0.7f, c->T, c->x, c->y, 2, err, sizeof err);
    return NULL;
}

/* Forward, backward (finite differences), thread invariance, merge for one adapter on one module. */
static void check_adapter(const char *label, const lkp_adapter_type *type, const lkp_config *cfg, int32_t layer,
                          int32_t module, int64_t OUT, int64_t IN, uint64_t seed) {
    printf("== %s\n", label);
    char err[1024] = "";
    const int64_t T = 5;
    float *W = malloc(sizeof(float) * (size_t)(OUT * IN));
    fill(W, OUT * IN, -0.5, 0.5, &seed);
    rh_adapter ad;
    int rc = rh_adapter_create(&ad, type, cfg, layer, module, W, OUT, IN, seed, err, sizeof err);
    CHECK(rc == 0, "create: %s", err);
    if (rc) { free(W); return; }
    const int is_dora = !strcmp(type->name, "dora");
    ref_model rm = { .is_dora = is_dora, .ff = ad.kind == LKP_KIND_INPUT, .W = W, .OUT = OUT, .IN = IN };
    double *p[8], *n = NULL;
    if (is_dora) {
        CHECK(ad.n_params == 3 && ad.kind == LKP_KIND_ADD, "dora: 3 parameters, kind ADD (got %d, %d)", ad.n_params, ad.kind);
        CHECK(!strcmp(ad.info[0].name, "lora_A.weight") && !strcmp(ad.info[1].name, "lora_B.weight") &&
              !strcmp(ad.info[2].name, "lora_magnitude_vector"), "dora parameter names");
        rm.r = ad.info[0].shape[0];
        CHECK(ad.info[0].shape[1] == IN && ad.info[1].shape[0] == OUT && ad.info[1].shape[1] == rm.r &&
              ad.info[2].n_dims == 1 && ad.info[2].shape[0] == OUT, "dora shapes A [r, IN], B [OUT, r], m [OUT]");
        CHECK(ad.info[0].init == LKP_INIT_KAIMING_UNIFORM && ad.info[1].init == LKP_INIT_ZEROS &&
              ad.info[2].init == LKP_INIT_PLUGIN, "dora init rules");
        CHECK(ad.info[0].out_axis == -1 && ad.info[1].out_axis == 0 && ad.info[2].out_axis == 0,
              "dora out_axis: A -1, B 0, m 0");
        /* Magnitude init = ‖W + s·B·A‖ per row (B = 0 at creation: ‖W‖). */
        double *ni = malloc(sizeof(double) * (size_t)OUT);
        double *A0 = malloc(sizeof(double) * (size_t)(rm.r * IN)), *B0 = calloc((size_t)(OUT * rm.r), sizeof(double));
        to_double(ad.params[0], A0, rm.r * IN);
        dora_norms(W, OUT, IN, rm.r, A0, B0, 1, ni);
        double e = 0;
        for (int64_t o = 0; o < OUT; o++) e = fmax(e, fabs(ad.params[2][o] - ni[o]) / ni[o]);
        CHECK(e < 1e-6, "dora magnitude init = row norms of W (rel err %.2e)", e);
        free(ni); free(A0); free(B0);
    } else {
        CHECK(ad.n_params == 1 && !strcmp(ad.info[0].name, "ia3_l") && ad.info[0].init == LKP_INIT_ONES,
              "ia3: one parameter ia3_l, init ones");
        const int ff = module == LKP_MODULE_DOWN;
        CHECK(ad.kind == (ff ? LKP_KIND_INPUT : LKP_KIND_OUTPUT), "ia3 kind %d for %s", ad.kind, ad.full_name);
        CHECK(ad.info[0].n_dims == 2 && ad.info[0].shape[0] == (ff ? 1 : OUT) && ad.info[0].shape[1] == (ff ? IN : 1),
              "ia3 shape [%lld, %lld]", (long long)ad.info[0].shape[0], (long long)ad.info[0].shape[1]);
        CHECK(ad.info[0].out_axis == (ff ? -1 : 0), "ia3 out_axis %d", ad.info[0].out_axis);
    }
    float *x = malloc(sizeof(float) * (size_t)(T * IN)), *y = malloc(sizeof(float) * (size_t)(T * OUT));
    float *y0 = malloc(sizeof(float) * (size_t)(T * OUT));
    double *xd = malloc(sizeof(double) * (size_t)(T * IN)), *yd = malloc(sizeof(double) * (size_t)(T * OUT));
    fill(x, T * IN, -1, 1, &seed);
    to_double(x, xd, T * IN);

    /* A fresh adapter is the identity (IA³ l = 1; DoRA B = 0, m = ‖W‖). */
    rh_module_forward(&ad, 1.0f, T, x, y0, 1, err, sizeof err);
    for (int32_t i = 0; i < ad.n_params; i++) { p[i] = malloc(sizeof(double) * (size_t)ad.numel[i]); to_double(ad.params[i], p[i], ad.numel[i]); }
    double base_err = 0;
    for (int64_t t = 0; t < T; t++)
        for (int64_t o = 0; o < OUT; o++) {
            double h = 0;
            for (int64_t i = 0; i < IN; i++) h += (double)W[o * IN + i] * x[t * IN + i];
            base_err = fmax(base_err, fabs(y0[t * OUT + o] - h));
        }
    CHECK(base_err < 1e-5, "new adapter leaves the module unchanged (max |Δ| %.2e)", base_err);

    randomise(&ad, &seed);
    for (int32_t i = 0; i < ad.n_params; i++) to_double(ad.params[i], p[i], ad.numel[i]);
    if (is_dora) {
        /* s from the config: r 4 / alpha 6, rank_pattern v_proj → 3, alpha_pattern layers.1.q_proj → 10. */
        double r = module == LKP_MODULE_V ? 3 : 4, alpha = (layer == 1 && module == LKP_MODULE_Q) ? 10 : 6;
        CHECK(rm.r == (int64_t)r, "dora rank %lld from rank_pattern (want %g)", (long long)rm.r, r);
        rm.s = alpha / r;
        n = malloc(sizeof(double) * (size_t)OUT);
        dora_norms(W, OUT, IN, rm.r, p[0], p[1], rm.s, n);
        rm.nfix = n;
    }

    /* Forward at scales 1, 0.6, 0 against the reference. */
    const float scales[] = { 1.0f, 0.6f, 0.0f };
    for (int si = 0; si < 3; si++) {
        rm.c = scales[si];
        CHECK(rh_module_forward(&ad, scales[si], T, x, y, 1, err, sizeof err) == 0, "forward: %s", err);
        ref_forward(&rm, p, xd, T, yd);
        double e = 0, m = max_abs(yd, T * OUT);
        for (int64_t k = 0; k < T * OUT; k++) e = fmax(e, fabs(y[k] - yd[k]));
        CHECK(e <= 2e-6 * (m + 1), "forward scale %.1f: max |plugin - reference| %.2e (max |y| %.2f)", scales[si], e, m);
    }

    /* A host whose W rows are in another order (GGUF q_proj/k_proj): it permutes W's rows and every
     * parameter's out_axis; the module output must be the same rows, permuted. */
    {
        float *Wp = malloc(sizeof(float) * (size_t)(OUT * IN)), *yp = malloc(sizeof(float) * (size_t)(T * OUT));
        int64_t *perm = malloc(sizeof(int64_t) * (size_t)OUT);
        for (int64_t o = 0; o < OUT; o++) perm[o] = (o % 2) ? OUT - o : o / 2 + OUT / 2;  /* any permutation */
        for (int64_t o = 0; o < OUT; o++) perm[o] = (perm[o] + 3) % OUT;
        int ok = 1;
        for (int64_t o = 0; o < OUT; o++) {   /* check it is one */
            int seen = 0;
            for (int64_t k = 0; k < OUT; k++) seen += perm[k] == o;
            ok = ok && seen == 1;
        }
        if (!ok) for (int64_t o = 0; o < OUT; o++) perm[o] = OUT - 1 - o;
        for (int64_t o = 0; o < OUT; o++) memcpy(Wp + o * IN, W + perm[o] * IN, sizeof(float) * (size_t)IN);
        rh_adapter ap;
        CHECK(rh_adapter_create(&ap, type, cfg, layer, module, Wp, OUT, IN, seed, err, sizeof err) == 0, "create: %s", err);
        for (int32_t i = 0; i < ad.n_params; i++) {
            const lkp_param_info *pi = &ad.info[i];
            int64_t rows = pi->shape[0], cols = pi->n_dims > 1 ? pi->shape[1] : 1;
            for (int64_t a = 0; a < rows; a++)
                for (int64_t b = 0; b < cols; b++) {
                    int64_t sa = pi->out_axis == 0 ? perm[a] : a, sb = pi->out_axis == 1 ? perm[b] : b;
                    ap.params[i][a * cols + b] = ad.params[i][sa * cols + sb];
                }
        }
        CHECK(rh_adapter_prepare(&ap, 1, err, sizeof err) == 0, "prepare: %s", err);
        rh_module_forward(&ad, 1.0f, T, x, y, 1, err, sizeof err);
        rh_module_forward(&ap, 1.0f, T, x, yp, 1, err, sizeof err);
        double e = 0;
        for (int64_t t = 0; t < T; t++)
            for (int64_t o = 0; o < OUT; o++) e = fmax(e, fabs(yp[t * OUT + o] - y[t * OUT + perm[o]]));
        CHECK(e < 1e-6, "rows of W in another order, parameters permuted along out_axis: same output rows (max |Δ| %.2e)", e);
        rh_adapter_free(&ap);
        free(Wp); free(yp); free(perm);
    }

    /* Backward at scale 0.6 against central differences of the reference (norm held fixed). */
    rm.c = 0.6;
    float *R = malloc(sizeof(float) * (size_t)(T * OUT)), *dx = malloc(sizeof(float) * (size_t)(T * IN));
    fill(R, T * OUT, -1, 1, &seed);
    float *g[8];
    for (int32_t i = 0; i < ad.n_params; i++) g[i] = calloc((size_t)ad.numel[i], sizeof(float));
    CHECK(rh_module_backward(&ad, 0.6f, T, x, R, g, dx, 1, err, sizeof err) == 0, "backward: %s", err);
    const double h = 1e-4;
    for (int32_t i = 0; i < ad.n_params; i++) {
        double e = 0, m = 0;
        for (int64_t k = 0; k < ad.numel[i]; k++) {
            double keep = p[i][k];
            p[i][k] = keep + h; double Lp = ref_loss(&rm, p, xd, T, R, yd);
            p[i][k] = keep - h; double Lm = ref_loss(&rm, p, xd, T, R, yd);
            p[i][k] = keep;
            double fd = (Lp - Lm) / (2 * h);
            e = fmax(e, fabs(g[i][k] - fd)); m = fmax(m, fabs(fd));
        }
        CHECK(m > 1e-3 && e <= 1e-5 * (m + 1), "d%s: max |plugin - finite difference| %.2e (max |grad| %.3f)",
              ad.info[i].name, e, m);
    }
    {
        double e = 0, m = 0;
        for (int64_t k = 0; k < T * IN; k++) {
            double keep = xd[k];
            xd[k] = keep + h; double Lp = ref_loss(&rm, p, xd, T, R, yd);
            xd[k] = keep - h; double Lm = ref_loss(&rm, p, xd, T, R, yd);
            xd[k] = keep;
            double fd = (Lp - Lm) / (2 * h);
            e = fmax(e, fabs(dx[k] - fd)); m = fmax(m, fabs(fd));
        }
        CHECK(m > 1e-3 && e <= 1e-5 * (m + 1), "dx: max |plugin - finite difference| %.2e (max |dx| %.3f)", e, m);
    }

    /* Same results on 1 and 3 host threads, bit for bit (forward, backward, prepare). */
    {
        float *y3 = malloc(sizeof(float) * (size_t)(T * OUT)), *dx3 = malloc(sizeof(float) * (size_t)(T * IN));
        float *g3[8];
        for (int32_t i = 0; i < ad.n_params; i++) g3[i] = calloc((size_t)ad.numel[i], sizeof(float));
        rh_module_forward(&ad, 0.6f, T, x, y, 1, err, sizeof err);
        rh_adapter_prepare(&ad, 3, err, sizeof err);
        rh_module_forward(&ad, 0.6f, T, x, y3, 3, err, sizeof err);
        rh_module_backward(&ad, 0.6f, T, x, R, g3, dx3, 3, err, sizeof err);
        int same = !memcmp(y, y3, sizeof(float) * (size_t)(T * OUT)) && !memcmp(dx, dx3, sizeof(float) * (size_t)(T * IN));
        for (int32_t i = 0; i < ad.n_params; i++) same = same && !memcmp(g[i], g3[i], sizeof(float) * (size_t)ad.numel[i]);
        CHECK(same, "1 and 3 threads give identical forward, backward and prepare results");
        /* Gradients accumulate: a second backward doubles them. */
        rh_module_backward(&ad, 0.6f, T, x, R, g3, dx3, 3, err, sizeof err);
        double e = 0;
        for (int32_t i = 0; i < ad.n_params; i++)
            for (int64_t k = 0; k < ad.numel[i]; k++) e = fmax(e, fabs(g3[i][k] - 2 * g[i][k]));
        CHECK(e < 1e-5, "backward accumulates into the gradients (max |g2 - 2 g1| %.2e)", e);
        for (int32_t i = 0; i < ad.n_params; i++) free(g3[i]);
        free(y3); free(dx3);
    }

    /* Two threads running forward on the same instance at once get the serial results. */
    {
        float *x2 = malloc(sizeof(float) * (size_t)(T * IN)), *ya = malloc(sizeof(float) * (size_t)(T * OUT));
        float *yb = malloc(sizeof(float) * (size_t)(T * OUT)), *sa = malloc(sizeof(float) * (size_t)(T * OUT));
        float *sb = malloc(sizeof(float) * (size_t)(T * OUT));
        fill(x2, T * IN, -1, 1, &seed);
        rh_module_forward(&ad, 0.7f, T, x, sa, 1, err, sizeof err);
        rh_module_forward(&ad, 0.7f, T, x2, sb, 1, err, sizeof err);
        struct conc ca = { &ad, x, ya, T, 0 }, cb = { &ad, x2, yb, T, 0 };
        pthread_t ta, tb;
        pthread_create(&ta, NULL, conc_forward, &ca);
        pthread_create(&tb, NULL, conc_forward, &cb);
        pthread_join(ta, NULL);
        pthread_join(tb, NULL);
        CHECK(!ca.rc && !cb.rc && !memcmp(ya, sa, sizeof(float) * (size_t)(T * OUT)) &&
              !memcmp(yb, sb, sizeof(float) * (size_t)(T * OUT)),
              "forward from 2 threads at once on one instance (50 calls each) = serial results");
        free(x2); free(ya); free(yb); free(sa); free(sb);
    }

    /* Merge: W' x equals the unmerged module at scales 1 and 0.6; row blocks of 7 = one block. */
    for (int si = 0; si < 2; si++) {
        float *Wm = malloc(sizeof(float) * (size_t)(OUT * IN)), *Wb = malloc(sizeof(float) * (size_t)(OUT * IN));
        CHECK(rh_module_merge(&ad, scales[si], Wm, OUT, 1, err, sizeof err) == 0, "merge: %s", err);
        CHECK(rh_module_merge(&ad, scales[si], Wb, 7, 1, err, sizeof err) == 0, "merge in blocks: %s", err);
        CHECK(!memcmp(Wm, Wb, sizeof(float) * (size_t)(OUT * IN)), "merge in row blocks of 7 = whole merge");
        rh_module_forward(&ad, scales[si], T, x, y, 1, err, sizeof err);
        double e = 0, m = 0;
        for (int64_t t = 0; t < T; t++)
            for (int64_t o = 0; o < OUT; o++) {
                double s = 0;
                for (int64_t i = 0; i < IN; i++) s += (double)Wm[o * IN + i] * x[t * IN + i];
                e = fmax(e, fabs(s - y[t * OUT + o])); m = fmax(m, fabs(s));
            }
        CHECK(e <= 3e-6 * (m + 1), "merged W'x = unmerged module at scale %.1f (max |Δ| %.2e)", scales[si], e);
        free(Wm); free(Wb);
    }

    for (int32_t i = 0; i < ad.n_params; i++) { free(g[i]); free(p[i]); }
    free(R); free(dx); free(x); free(y); free(y0); free(xd); free(yd); free(n); free(W);
    rh_adapter_free(&ad);
}

/* ================================================================================================ */
/* PEFT parity per module (modules.bin from scripts/gen_plugin_fixtures.py)                          */
/* ================================================================================================ */

typedef struct { char name[128]; int32_t ndim; int64_t dims[4]; int64_t n; float *data; } record;
static record recs[512];
static int n_recs;

static int load_records(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    char magic[8];
    if (fread(magic, 1, 8, f) != 8 || memcmp(magic, "LKPT0001", 8)) { fclose(f); return -2; }
    uint32_t len;
    while (n_recs < 512 && fread(&len, 4, 1, f) == 1) {
        record *r = &recs[n_recs];
        if (len >= sizeof r->name || fread(r->name, 1, len, f) != len) break;
        r->name[len] = 0;
        uint32_t nd;
        if (fread(&nd, 4, 1, f) != 1 || nd > 4 || fread(r->dims, 8, nd, f) != nd) break;
        r->ndim = (int32_t)nd;
        r->n = 1;
        for (uint32_t d = 0; d < nd; d++) r->n *= r->dims[d];
        r->data = malloc(sizeof(float) * (size_t)(r->n ? r->n : 1));
        if (fread(r->data, 4, (size_t)r->n, f) != (size_t)r->n) break;
        n_recs++;
    }
    fclose(f);
    return n_recs;
}

static const record *rec(const char *fmt, const char *a, const char *b) {
    char name[160];
    snprintf(name, sizeof name, fmt, a, b);
    for (int i = 0; i < n_recs; i++) if (!strcmp(recs[i].name, name)) return &recs[i];
    return NULL;
}

static double rel_err(const float *a, const float *b, int64_t n, double *maxb) {
    double e = 0, m = 0;
    for (int64_t i = 0; i < n; i++) { e = fmax(e, fabs((double)a[i] - b[i])); m = fmax(m, fabs((double)b[i])); }
    if (maxb) *maxb = m;
    return e / (m > 0 ? m : 1);
}

static void test_peft_modules(const char *fixture_dir) {
    printf("== PEFT parity per module (%s/modules.bin)\n", fixture_dir);
    char path[1024], err[1024] = "";
    snprintf(path, sizeof path, "%s/modules.bin", fixture_dir);
    int nr = load_records(path);
    CHECK(nr > 0, "read %s (%d records)", path, nr);
    if (nr <= 0) return;
    const record *cases = rec("%s%s", "cases", "");
    CHECK(cases != NULL, "modules.bin lists its cases");
    if (!cases) return;
    /* "cases" holds, per case: type (0 ia3, 1 dora), layer, module, feedforward, r, lora_alpha, use_rslora. */
    for (int64_t ci = 0; ci < cases->dims[0]; ci++) {
        const float *cf = cases->data + ci * cases->dims[1];
        const int is_dora = cf[0] == 1;
        const int32_t layer = (int32_t)cf[1], module = (int32_t)cf[2];
        char cname[64];
        snprintf(cname, sizeof cname, "case%lld", (long long)ci);
        const record *W = rec("%s%s.W", cname, ""), *X = rec("%s%s.x", cname, ""), *Y = rec("%s%s.y", cname, "");
        const record *DY = rec("%s%s.dy", cname, ""), *DX = rec("%s%s.dx", cname, "");
        if (!W || !X || !Y || !DY || !DX) { CHECK(0, "%s: records missing", cname); continue; }
        const int64_t OUT = W->dims[0], IN = W->dims[1], T = X->dims[0];
        const char *ff_list[] = { "down_proj" }, *none[] = { "" };
        rh_config_entry e[6];
        int ne = 0;
        if (is_dora) {
            e[ne++] = (rh_config_entry){ .key = "use_dora", .type = RH_BOOL, .number = 1 };
            e[ne++] = (rh_config_entry){ .key = "r", .type = RH_NUMBER, .number = cf[4] };
            e[ne++] = (rh_config_entry){ .key = "lora_alpha", .type = RH_NUMBER, .number = cf[5] };
            e[ne++] = (rh_config_entry){ .key = "use_rslora", .type = RH_BOOL, .number = cf[6] };
        } else {
            e[ne++] = (rh_config_entry){ .key = "feedforward_modules", .type = RH_LIST,
                                         .names = cf[3] ? ff_list : none, .n = 1 };
        }
        lkp_config cfg = { e, ne };
        rh_adapter ad;
        const lkp_adapter_type *type = rh_find(&reg, is_dora ? "dora" : "ia3");
        if (!type || rh_adapter_create(&ad, type, &cfg, layer, module, W->data, OUT, IN, 1, err, sizeof err)) {
            CHECK(0, "%s: create: %s", cname, type ? err : "type not loaded");
            continue;
        }
        char label[256];
        snprintf(label, sizeof label, "%s (%s %s)", cname, type->name, ad.full_name);
        int ok = 1;
        for (int32_t i = 0; i < ad.n_params; i++) {
            char key[160];
            snprintf(key, sizeof key, "case%lld.param.%s", (long long)ci, ad.info[i].name);
            const record *P = rec("%s%s", key, "");
            if (!P || P->n != ad.numel[i]) { CHECK(0, "%s: parameter %s missing or wrong size", label, ad.info[i].name); ok = 0; break; }
            memcpy(ad.params[i], P->data, sizeof(float) * (size_t)P->n);
        }
        if (!ok) { rh_adapter_free(&ad); continue; }
        CHECK(rh_adapter_prepare(&ad, 2, err, sizeof err) == 0, "%s: prepare: %s", label, err);
        float *y = malloc(sizeof(float) * (size_t)(T * OUT)), *dx = malloc(sizeof(float) * (size_t)(T * IN));
        rh_module_forward(&ad, 1.0f, T, X->data, y, 2, err, sizeof err);
        double m, r = rel_err(y, Y->data, T * OUT, &m);
        CHECK(r < 2e-6, "%s: output vs PEFT: max |Δ|/max|y| %.2e", label, r);
        float *g[8];
        for (int32_t i = 0; i < ad.n_params; i++) g[i] = calloc((size_t)ad.numel[i], sizeof(float));
        rh_module_backward(&ad, 1.0f, T, X->data, DY->data, g, dx, 2, err, sizeof err);
        r = rel_err(dx, DX->data, T * IN, &m);
        CHECK(r < 5e-6, "%s: input gradient vs PEFT: %.2e", label, r);
        for (int32_t i = 0; i < ad.n_params; i++) {
            char key[160];
            snprintf(key, sizeof key, "case%lld.grad.%s", (long long)ci, ad.info[i].name);
            const record *G = rec("%s%s", key, "");
            if (!G) { CHECK(0, "%s: grad %s missing", label, ad.info[i].name); continue; }
            r = rel_err(g[i], G->data, G->n, &m);
            CHECK(r < 5e-6 && m > 0, "%s: d%s vs PEFT: %.2e (max %.3g)", label, ad.info[i].name, r, m);
            free(g[i]);
        }
        /* Merge vs PEFT's merge_and_unload weight. */
        char key[64];
        snprintf(key, sizeof key, "case%lld.W_merged", (long long)ci);
        const record *WM = rec("%s%s", key, "");
        if (WM) {
            float *Wm = malloc(sizeof(float) * (size_t)(OUT * IN));
            rh_module_merge(&ad, 1.0f, Wm, 16, 2, err, sizeof err);
            r = rel_err(Wm, WM->data, OUT * IN, &m);
            CHECK(r < 2e-6, "%s: merged weight vs PEFT merge_and_unload: %.2e", label, r);
            free(Wm);
        }
        printf("  checked %s\n", label);
        free(y); free(dx);
        rh_adapter_free(&ad);
    }
}

/* The guide's minimal plugin: loads, adds c·b, accumulates db = c·Σ_t dy, and has no merge. */
static void test_minimal(void) {
    printf("== minimal plugin (examples/plugins/minimal/shift.c)\n");
    char err[1024] = "";
    CHECK(rh_load(&reg, path_of("shift.so"), err, sizeof err) == 0, "shift.so loads %s", err);
    const lkp_adapter_type *t = rh_find(&reg, "shift");
    if (!t) return;
    float W[3 * 2] = { 1, 2, 3, 4, 5, 6 }, x[2 * 2] = { 1, -1, 0.5f, 2 }, y[2 * 3], dy[2 * 3] = { 1, 2, 3, 4, 5, 6 };
    float dx[2 * 2], db[3] = { 0 }, *g[1] = { db }, Wm[6];
    rh_adapter ad;
    CHECK(rh_adapter_create(&ad, t, NULL, 0, LKP_MODULE_O, W, 3, 2, 1, err, sizeof err) == 0, "create %s", err);
    ad.params[0][0] = 0.5f; ad.params[0][1] = -1; ad.params[0][2] = 2;
    rh_module_forward(&ad, 0.5f, 2, x, y, 2, err, sizeof err);
    CHECK(y[0] == -1 + 0.25f && y[1] == -1 - 0.5f && y[2] == -1 + 1 && y[3] == 4.5f + 0.25f && y[4] == 9.5f - 0.5f && y[5] == 14.5f + 1,
          "y = W x + c·b (%g %g %g / %g %g %g)", y[0], y[1], y[2], y[3], y[4], y[5]);
    rh_module_backward(&ad, 0.5f, 2, x, dy, g, dx, 1, err, sizeof err);
    CHECK(db[0] == 2.5f && db[1] == 3.5f && db[2] == 4.5f && dx[0] == 1 + 6 + 15 && dx[1] == 2 + 8 + 18,
          "db = c·Σ dy, dx = Wᵀ dy (%g %g %g; %g %g)", db[0], db[1], db[2], dx[0], dx[1]);
    int rc = rh_module_merge(&ad, 1.0f, Wm, 3, 1, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "adapter type \"shift\": merge is not supported"), "merge: %s", err);
    rh_adapter_free(&ad);
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: test_plugins PLUGIN_DIR [FIXTURE_DIR]\n"); return 2; }
    plugin_dir = argv[1];
    test_loading();
    const lkp_adapter_type *ia3 = rh_find(&reg, "ia3"), *dora = rh_find(&reg, "dora");
    if (ia3) {
        check_adapter("ia3 on k_proj (output scaling)", ia3, &ia3_cfg, 0, LKP_MODULE_K, 20, 24, 11);
        check_adapter("ia3 on down_proj (input scaling, feed-forward)", ia3, &ia3_cfg, 1, LKP_MODULE_DOWN, 16, 40, 12);
    }
    if (dora) {
        check_adapter("dora on q_proj, layer 1 (alpha_pattern)", dora, &dora_cfg, 1, LKP_MODULE_Q, 20, 24, 13);
        check_adapter("dora on v_proj (rank_pattern)", dora, &dora_cfg, 0, LKP_MODULE_V, 12, 24, 14);
    }
    test_minimal();
    if (argc > 2) test_peft_modules(argv[2]);
    else printf("(no fixture folder given: PEFT module parity not checked)\n");
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}

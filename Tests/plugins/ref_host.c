/*
 * ref_host.c — the reference plugin host (see ref_host.h). Plain C11 + POSIX (dlopen, pthreads, regex).
 */
#define _GNU_SOURCE
#include "ref_host.h"

#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ================================================================================================ */
/* The host table                                                                                    */
/* ================================================================================================ */

static _Thread_local char plugin_error[1024];
static char last_log[1024];
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

const char *rh_plugin_error(void) { return plugin_error; }
void rh_clear_plugin_error(void) { plugin_error[0] = 0; }
const char *rh_last_log(void) { return last_log; }

static void h_set_error(const char *message) {
    snprintf(plugin_error, sizeof plugin_error, "%s", message ? message : "(null message)");
}

static void h_log(int32_t level, const char *message) {
    pthread_mutex_lock(&log_lock);
    snprintf(last_log, sizeof last_log, "[%d] %s", (int)level, message ? message : "");
    pthread_mutex_unlock(&log_lock);
    if (getenv("RH_VERBOSE")) fprintf(stderr, "plugin log %s\n", last_log);
}

static lkp_status bad_rows(const lkp_module_weight *w, int64_t b, int64_t n, const void *out) {
    char msg[200];
    if (!w || !out) { h_set_error("weight access: NULL weight or output"); return LKP_ERR_INVALID_ARGUMENT; }
    if (b < 0 || n < 0 || b + n > w->out) {
        snprintf(msg, sizeof msg, "weight access: rows [%lld, %lld) outside [0, %lld)", (long long)b,
                 (long long)(b + n), (long long)w->out);
        h_set_error(msg);
        return LKP_ERR_INVALID_ARGUMENT;
    }
    return LKP_OK;
}

static lkp_status h_weight_rows_f32(const lkp_module_weight *w, int64_t b, int64_t n, float *out, int64_t stride) {
    lkp_status st = bad_rows(w, b, n, out);
    if (st) return st;
    for (int64_t i = 0; i < n; i++) memcpy(out + i * stride, w->w + (b + i) * w->in, (size_t)w->in * sizeof(float));
    return LKP_OK;
}

static lkp_status h_weight_row_norms(const lkp_module_weight *w, int64_t b, int64_t n, float *out) {
    lkp_status st = bad_rows(w, b, n, out);
    if (st) return st;
    for (int64_t i = 0; i < n; i++) {
        double s = 0;
        const float *row = w->w + (b + i) * w->in;
        for (int64_t j = 0; j < w->in; j++) s += (double)row[j] * row[j];
        out[i] = (float)sqrt(s);
    }
    return LKP_OK;
}

struct task_call { void (*task)(void *, int32_t, int32_t); void *user; int32_t index, count; };
static void *task_thread(void *p) {
    struct task_call *c = p;
    c->task(c->user, c->index, c->count);
    return NULL;
}

static void h_parallel_for(lkp_exec *exec, void (*task)(void *, int32_t, int32_t), void *user) {
    int32_t n = exec && exec->n_threads > 1 ? exec->n_threads : 1;
    if (n > 16) n = 16;
    pthread_t th[16];
    struct task_call calls[16];
    for (int32_t i = 1; i < n; i++) {
        calls[i] = (struct task_call){ task, user, i, n };
        pthread_create(&th[i], NULL, task_thread, &calls[i]);
    }
    task(user, 0, n);
    for (int32_t i = 1; i < n; i++) pthread_join(th[i], NULL);
}

static const rh_config_entry *cfg_find(const lkp_config *c, const char *key) {
    for (int i = 0; c && i < c->n; i++)
        if (strcmp(c->entries[i].key, key) == 0) return c->entries[i].type == RH_NULL ? NULL : &c->entries[i];
    return NULL;
}

static lkp_status wrong_type(const char *key, const char *want) {
    char msg[200];
    snprintf(msg, sizeof msg, "adapter config: \"%s\" is not a %s", key, want);
    h_set_error(msg);
    return LKP_ERR_INVALID_ARGUMENT;
}

static lkp_status h_config_number(const lkp_config *c, const char *key, double *out) {
    const rh_config_entry *e = cfg_find(c, key);
    if (!e) return LKP_ERR_NOT_FOUND;
    if (e->type != RH_NUMBER) return wrong_type(key, "number");
    *out = e->number;
    return LKP_OK;
}

static lkp_status h_config_bool(const lkp_config *c, const char *key, int32_t *out) {
    const rh_config_entry *e = cfg_find(c, key);
    if (!e) return LKP_ERR_NOT_FOUND;
    if (e->type != RH_BOOL) return wrong_type(key, "boolean");
    *out = e->number != 0;
    return LKP_OK;
}

static lkp_status h_config_string(const lkp_config *c, const char *key, char *buf, int64_t cap, int64_t *needed) {
    const rh_config_entry *e = cfg_find(c, key);
    if (!e) return LKP_ERR_NOT_FOUND;
    if (e->type != RH_STRING) return wrong_type(key, "string");
    int64_t n = (int64_t)strlen(e->string) + 1;
    if (needed) *needed = n;
    if (!buf || cap < n) { h_set_error("adapter config: string buffer too small"); return LKP_ERR_INVALID_ARGUMENT; }
    memcpy(buf, e->string, (size_t)n);
    return LKP_OK;
}

/* Whole-string POSIX ERE match (PEFT uses re.fullmatch / re.match(...$); the tests use plain patterns). */
static int regex_whole(const char *pattern, const char *s) {
    char *full = malloc(strlen(pattern) + 8);
    sprintf(full, "^(%s)$", pattern);
    regex_t re;
    int ok = regcomp(&re, full, REG_EXTENDED | REG_NOSUB) == 0;
    free(full);
    if (!ok) return 0;
    int m = regexec(&re, s, 0, NULL, 0) == 0;
    regfree(&re);
    return m;
}

static lkp_status h_config_module_matches(const lkp_config *c, const char *key, const lkp_module *m, int32_t *out) {
    const rh_config_entry *e = cfg_find(c, key);
    if (!e) return LKP_ERR_NOT_FOUND;
    if (e->type == RH_STRING) { *out = regex_whole(e->string, m->full_name); return LKP_OK; }
    if (e->type != RH_LIST) return wrong_type(key, "list of module names or a regular expression");
    size_t fl = strlen(m->full_name);
    *out = 0;
    for (int i = 0; i < e->n; i++) {
        size_t nl = strlen(e->names[i]);
        if (strcmp(m->full_name, e->names[i]) == 0 ||
            (fl > nl && m->full_name[fl - nl - 1] == '.' && strcmp(m->full_name + fl - nl, e->names[i]) == 0)) {
            *out = 1;
            break;
        }
    }
    return LKP_OK;
}

static lkp_status h_config_pattern_number(const lkp_config *c, const char *key, const lkp_module *m, double *out) {
    const rh_config_entry *e = cfg_find(c, key);
    if (!e) return LKP_ERR_NOT_FOUND;
    if (e->type != RH_PATTERN) return wrong_type(key, "pattern dictionary");
    for (int i = 0; i < e->n; i++) {   /* PEFT get_pattern_key: first key k with re.match(rf"(.*\.)?({k})$") */
        char pat[256];
        snprintf(pat, sizeof pat, "(.*\\.)?(%s)", e->names[i]);
        if (strcmp(e->names[i], m->full_name) == 0 || regex_whole(pat, m->full_name)) { *out = e->values[i]; return LKP_OK; }
    }
    return LKP_ERR_NOT_FOUND;
}

static const lkp_host the_host = {
    .struct_size = sizeof(lkp_host),
    .abi_major = LKP_ABI_MAJOR,
    .abi_minor = LKP_ABI_MINOR,
    .host_version = "ref-host",
    .set_error = h_set_error,
    .log = h_log,
    .weight_rows_f32 = h_weight_rows_f32,
    .weight_row_norms = h_weight_row_norms,
    .parallel_for = h_parallel_for,
    .config_number = h_config_number,
    .config_bool = h_config_bool,
    .config_string = h_config_string,
    .config_module_matches = h_config_module_matches,
    .config_pattern_number = h_config_pattern_number,
};

const lkp_host *rh_host(void) { return &the_host; }

static const char *const module_names[] = { "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj" };

void rh_module_init(lkp_module *m, struct lkp_module_weight *wt, char *full_name_buf, int32_t layer, int32_t module,
                    const float *w, int64_t out, int64_t in) {
    wt->w = w; wt->out = out; wt->in = in;
    sprintf(full_name_buf, "model.layers.%d.%s.%s", (int)layer, module <= LKP_MODULE_O ? "self_attn" : "mlp",
            module_names[module]);
    *m = (lkp_module){ .struct_size = sizeof(lkp_module), .layer = layer, .module = module,
                       .weight_dtype = LKP_DTYPE_F32, .in_features = in, .out_features = out,
                       .name = module_names[module], .full_name = full_name_buf, .weight = wt };
}

/* ================================================================================================ */
/* The loader                                                                                        */
/* ================================================================================================ */

static int failf(char *err, size_t cap, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
    return -1;
}

static int valid_type_name(const char *s) {
    if (!s || !*s || strlen(s) > 63) return 0;
    for (; *s; s++) if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_')) return 0;
    return 1;
}

const lkp_adapter_type *rh_find(const rh_registry *reg, const char *name) {
    for (int i = 0; i < reg->n_types; i++) if (strcmp(reg->types[i].type->name, name) == 0) return reg->types[i].type;
    return NULL;
}

static int check_plugin(const rh_registry *reg, const char *path, const lkp_plugin *p, char *err, size_t cap) {
    const size_t header = offsetof(lkp_plugin, abi_minor) + sizeof p->abi_minor;
    if (p->struct_size < header)
        return failf(err, cap, "plugin %s: plugin table is %u bytes, too small to hold its version (at least %zu)",
                     path, (unsigned)p->struct_size, header);
    if (p->abi_major != LKP_ABI_MAJOR)
        return failf(err, cap, "plugin %s: built for plugin ABI %d.%d, host has %d.%d (major versions differ)",
                     path, (int)p->abi_major, (int)p->abi_minor, LKP_ABI_MAJOR, LKP_ABI_MINOR);
    if (p->struct_size < LKP_PLUGIN_SIZE_V1)
        return failf(err, cap, "plugin %s: plugin table is %u bytes, below the %zu bytes of ABI %d.0 (plugin says ABI %d.%d)",
                     path, (unsigned)p->struct_size, (size_t)LKP_PLUGIN_SIZE_V1, LKP_ABI_MAJOR, (int)p->abi_major,
                     (int)p->abi_minor);
    if (p->n_types < 1 || !p->types)
        return failf(err, cap, "plugin %s: declares no adapter types (n_types %d)", path, (int)p->n_types);
    if (p->n_types > RH_MAX_TYPES - reg->n_types)
        return failf(err, cap, "plugin %s: declares %d adapter types, the host has room for %d more", path,
                     (int)p->n_types, RH_MAX_TYPES - reg->n_types);
    for (int32_t i = 0; i < p->n_types; i++) {
        const lkp_adapter_type *t = p->types[i];
        if (!t) return failf(err, cap, "plugin %s: adapter type %d is NULL", path, (int)i);
        if (t->struct_size < LKP_ADAPTER_TYPE_SIZE_V1)
            return failf(err, cap, "plugin %s: adapter type %d table is %u bytes, below the %zu bytes of ABI %d.0",
                         path, (int)i, (unsigned)t->struct_size, (size_t)LKP_ADAPTER_TYPE_SIZE_V1, LKP_ABI_MAJOR);
        if (!valid_type_name(t->name))
            return failf(err, cap, "plugin %s: adapter type %d name \"%s\" is not 1-63 characters of [a-z0-9_]",
                         path, (int)i, t->name ? t->name : "(null)");
        const char *missing = !t->create ? "create" : !t->destroy ? "destroy" : !t->param_info ? "param_info"
                            : !t->forward ? "forward" : NULL;
        if (missing)
            return failf(err, cap, "plugin %s: adapter type \"%s\" has no %s function (required: create, destroy, "
                         "param_info, forward)", path, t->name, missing);
        if (!t->peft_type || !*t->peft_type)
            return failf(err, cap, "plugin %s: adapter type \"%s\" has no peft_type", path, t->name);
        if (t->n_key_suffixes < 1 || !t->key_suffixes)
            return failf(err, cap, "plugin %s: adapter type \"%s\" owns no tensor-key suffixes", path, t->name);
        for (int32_t k = 0; k < i; k++)
            if (strcmp(p->types[k]->name, t->name) == 0)
                return failf(err, cap, "plugin %s: adapter type \"%s\" is declared twice", path, t->name);
        for (int k = 0; k < reg->n_types; k++)
            if (strcmp(reg->types[k].type->name, t->name) == 0)
                return failf(err, cap, "plugin %s: adapter type \"%s\" is already registered by %s", path, t->name,
                             reg->types[k].plugin_path);
    }
    return 0;
}

int rh_load(rh_registry *reg, const char *path, char *err, size_t cap) {
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) return failf(err, cap, "plugin %s: cannot load: %s", path, dlerror());
    lkp_entry_fn entry;
    *(void **)&entry = dlsym(h, LKP_ENTRY_SYMBOL);
    if (!entry) {
        dlclose(h);
        return failf(err, cap, "plugin %s: no entry symbol %s (not a LoRAKit plugin?)", path, LKP_ENTRY_SYMBOL);
    }
    const lkp_plugin *p = NULL;
    rh_clear_plugin_error();
    lkp_status st = entry(&the_host, &p);
    if (st != LKP_OK) {
        failf(err, cap, "plugin %s: %s failed (status %d): %s", path, LKP_ENTRY_SYMBOL, (int)st,
              plugin_error[0] ? plugin_error : "(the plugin gave no message)");
        dlclose(h);   /* nothing of it is in use: it registered nothing */
        return -1;
    }
    if (!p) { dlclose(h); return failf(err, cap, "plugin %s: %s returned no table", path, LKP_ENTRY_SYMBOL); }
    if (check_plugin(reg, path, p, err, cap)) { dlclose(h); return -1; }
    for (int32_t i = 0; i < p->n_types; i++) {
        reg->types[reg->n_types].type = p->types[i];
        snprintf(reg->types[reg->n_types].plugin_path, sizeof reg->types[0].plugin_path, "%s", path);
        reg->n_types++;
    }
    if (reg->n_handles < 16) reg->handles[reg->n_handles++] = h;  /* never dlclosed while in use */
    return 0;
}

/* ================================================================================================ */
/* One instance on one module                                                                        */
/* ================================================================================================ */

#define CALLFAIL(what) failf(err, cap, "adapter type \"%s\" on %s: %s failed (status %d): %s", ad->type->name, \
                             ad->full_name, what, (int)st, plugin_error[0] ? plugin_error : "(no message)")

static uint64_t rng_next(uint64_t *s) {  /* splitmix64 */
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double rng_uniform(uint64_t *s) { return (double)(rng_next(s) >> 11) / 9007199254740992.0; }

int rh_adapter_create(rh_adapter *ad, const lkp_adapter_type *type, const lkp_config *cfg, int32_t layer,
                      int32_t module, const float *w, int64_t out, int64_t in, uint64_t seed, char *err, size_t cap) {
    memset(ad, 0, sizeof *ad);
    ad->type = type;
    rh_module_init(&ad->module, &ad->weight, ad->full_name, layer, module, w, out, in);
    lkp_create_args ca = { .struct_size = sizeof ca, .module = &ad->module, .config = cfg };
    rh_clear_plugin_error();
    lkp_status st = type->create(&ca);
    if (st) return CALLFAIL("create");
    ad->instance = ca.instance; ad->kind = ca.kind; ad->n_params = ca.n_params;
    if (ca.kind < LKP_KIND_INPUT || ca.kind > LKP_KIND_ADD || ca.n_params < 0 || ca.n_params > 8) {
        type->destroy(ca.instance); ad->instance = NULL;
        return failf(err, cap, "adapter type \"%s\" on %s: create gave kind %d, %d parameters", type->name,
                     ad->full_name, (int)ca.kind, (int)ca.n_params);
    }
    for (int32_t i = 0; i < ad->n_params; i++) {
        lkp_param_info *pi = &ad->info[i];
        pi->struct_size = sizeof *pi;
        pi->out_axis = -1;
        if ((st = type->param_info(ad->instance, i, pi))) return CALLFAIL("param_info");
        if (pi->out_axis < -1 || pi->out_axis >= pi->n_dims || (pi->out_axis >= 0 && pi->shape[pi->out_axis] != out))
            return failf(err, cap, "adapter type \"%s\" on %s: parameter %s: out_axis %d does not have OUT = %lld "
                         "entries", type->name, ad->full_name, pi->name, (int)pi->out_axis, (long long)out);
        int64_t n = 1;
        for (int32_t d = 0; d < pi->n_dims; d++) n *= pi->shape[d];
        ad->numel[i] = n;
        ad->params[i] = calloc((size_t)n, sizeof(float));
        for (int64_t k = 0; k < n; k++) {
            float v = 0, b;
            switch (pi->init) {
            case LKP_INIT_ONES: v = 1; break;
            case LKP_INIT_CONSTANT: v = pi->init_value; break;
            case LKP_INIT_UNIFORM: v = (float)((2 * rng_uniform(&seed) - 1) * pi->init_value); break;
            case LKP_INIT_KAIMING_UNIFORM:
                b = 1.0f / sqrtf((float)pi->shape[pi->n_dims - 1]);
                v = (float)((2 * rng_uniform(&seed) - 1) * b); break;
            case LKP_INIT_NORMAL: {
                double u1 = rng_uniform(&seed) + 1e-300, u2 = rng_uniform(&seed);
                v = (float)(sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2) * pi->init_value); break;
            }
            default: v = 0;
            }
            ad->params[i][k] = v;
        }
    }
    for (int32_t i = 0; i < ad->n_params; i++) {
        if (ad->info[i].init != LKP_INIT_PLUGIN) continue;
        if (!type->init_param) return failf(err, cap, "adapter type \"%s\": parameter %s needs init_param, which "
                                            "the type lacks", type->name, ad->info[i].name);
        struct lkp_exec ex = { 1 };
        lkp_init_args ia = { .struct_size = sizeof ia, .instance = ad->instance, .index = i,
                             .params = (const float *const *)ad->params, .out = ad->params[i], .exec = &ex };
        if ((st = type->init_param(&ia))) return CALLFAIL("init_param");
    }
    return rh_adapter_prepare(ad, 1, err, cap);
}

int rh_adapter_prepare(rh_adapter *ad, int32_t n_threads, char *err, size_t cap) {
    if (!ad->type->prepare) return 0;
    struct lkp_exec ex = { n_threads };
    lkp_prepare_args pa = { .struct_size = sizeof pa, .instance = ad->instance,
                            .params = (const float *const *)ad->params, .exec = &ex };
    rh_clear_plugin_error();
    lkp_status st = ad->type->prepare(&pa);
    return st ? CALLFAIL("prepare") : 0;
}

void rh_adapter_free(rh_adapter *ad) {
    if (ad->instance) ad->type->destroy(ad->instance);
    for (int32_t i = 0; i < ad->n_params; i++) free(ad->params[i]);
    memset(ad, 0, sizeof *ad);
}

/* y[T, OUT] = x[T, IN] · Wᵀ (double accumulation). */
static void base_product(const struct lkp_module_weight *w, int64_t T, const float *x, float *y) {
    for (int64_t t = 0; t < T; t++)
        for (int64_t o = 0; o < w->out; o++) {
            double s = 0;
            for (int64_t i = 0; i < w->in; i++) s += (double)w->w[o * w->in + i] * x[t * w->in + i];
            y[t * w->out + o] = (float)s;
        }
}

/* dx[T, IN] += d[T, OUT] · W. */
static void base_product_t(const struct lkp_module_weight *w, int64_t T, const float *d, float *dx) {
    for (int64_t t = 0; t < T; t++)
        for (int64_t i = 0; i < w->in; i++) {
            double s = 0;
            for (int64_t o = 0; o < w->out; o++) s += (double)w->w[o * w->in + i] * d[t * w->out + o];
            dx[t * w->in + i] += (float)s;
        }
}

static float *workspace(rh_adapter *ad, int32_t call, int64_t rows) {
    int64_t n = ad->type->workspace_floats ? ad->type->workspace_floats(ad->instance, call, rows) : 0;
    return malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
}

int rh_module_forward(rh_adapter *ad, float scale, int64_t T, const float *x, float *y, int32_t n_threads,
                      char *err, size_t cap) {
    const int64_t IN = ad->module.in_features, OUT = ad->module.out_features;
    struct lkp_exec ex = { n_threads };
    float *ws = workspace(ad, LKP_CALL_FORWARD, T);
    float *tmp = malloc((size_t)(T * (IN > OUT ? IN : OUT)) * sizeof(float));
    lkp_forward_args fa = { .struct_size = sizeof fa, .instance = ad->instance,
                            .params = (const float *const *)ad->params, .rows = T, .scale = scale,
                            .workspace = ws, .exec = &ex };
    lkp_status st;
    rh_clear_plugin_error();
    if (ad->kind == LKP_KIND_INPUT) {            /* x' = f(x); y = W x' */
        fa.x = x; fa.x_stride = IN; fa.y = tmp; fa.y_stride = IN;
        st = ad->type->forward(&fa);
        if (!st) base_product(&ad->weight, T, tmp, y);
    } else if (ad->kind == LKP_KIND_OUTPUT) {    /* h = W x; y = g(h) */
        base_product(&ad->weight, T, x, tmp);
        fa.x = x; fa.x_stride = IN; fa.base_y = tmp; fa.base_y_stride = OUT; fa.y = y; fa.y_stride = OUT;
        st = ad->type->forward(&fa);
    } else {                                     /* h = W x; y = h + Δ */
        base_product(&ad->weight, T, x, tmp);
        memcpy(y, tmp, (size_t)(T * OUT) * sizeof(float));
        fa.x = x; fa.x_stride = IN; fa.base_y = tmp; fa.base_y_stride = OUT; fa.y = y; fa.y_stride = OUT;
        st = ad->type->forward(&fa);
    }
    free(ws); free(tmp);
    return st ? CALLFAIL("forward") : 0;
}

int rh_module_backward(rh_adapter *ad, float scale, int64_t T, const float *x, const float *dy, float **grads,
                       float *dx, int32_t n_threads, char *err, size_t cap) {
    if (!ad->type->backward)
        return failf(err, cap, "adapter type \"%s\" cannot be trained (no backward)", ad->type->name);
    const int64_t IN = ad->module.in_features, OUT = ad->module.out_features;
    struct lkp_exec ex = { n_threads };
    float *ws = workspace(ad, LKP_CALL_BACKWARD, T);
    float *h = malloc((size_t)(T * OUT) * sizeof(float));
    float *d = calloc((size_t)(T * (IN > OUT ? IN : OUT)), sizeof(float));
    memset(dx, 0, (size_t)(T * IN) * sizeof(float));
    lkp_backward_args ba = { .struct_size = sizeof ba, .instance = ad->instance,
                             .params = (const float *const *)ad->params, .param_grads = grads, .rows = T,
                             .x = x, .x_stride = IN, .scale = scale, .workspace = ws, .exec = &ex };
    lkp_status st;
    rh_clear_plugin_error();
    if (ad->kind == LKP_KIND_INPUT) {            /* ∂L/∂x' = dy·W, then the instance maps it to ∂L/∂x */
        base_product_t(&ad->weight, T, dy, d);
        ba.dy = d; ba.dy_stride = IN; ba.dx = dx; ba.dx_stride = IN;
        st = ad->type->backward(&ba);
    } else if (ad->kind == LKP_KIND_OUTPUT) {    /* ∂L/∂h from the instance, then through W */
        base_product(&ad->weight, T, x, h);
        ba.base_y = h; ba.base_y_stride = OUT; ba.dy = dy; ba.dy_stride = OUT;
        ba.dx = dx; ba.dx_stride = IN; ba.d_base_y = d; ba.d_base_y_stride = OUT;
        st = ad->type->backward(&ba);
        if (!st) base_product_t(&ad->weight, T, d, dx);
    } else {                                     /* d_base_y starts as dy; Wᵀ(dy + Δ's part) + Δ's dx */
        base_product(&ad->weight, T, x, h);
        memcpy(d, dy, (size_t)(T * OUT) * sizeof(float));
        ba.base_y = h; ba.base_y_stride = OUT; ba.dy = dy; ba.dy_stride = OUT;
        ba.dx = dx; ba.dx_stride = IN; ba.d_base_y = d; ba.d_base_y_stride = OUT;
        st = ad->type->backward(&ba);
        if (!st) base_product_t(&ad->weight, T, d, dx);
    }
    free(ws); free(h); free(d);
    return st ? CALLFAIL("backward") : 0;
}

int rh_module_merge(rh_adapter *ad, float scale, float *w_out, int64_t block, int32_t n_threads, char *err, size_t cap) {
    if (!ad->type->merge)
        return failf(err, cap, "adapter type \"%s\": merge is not supported", ad->type->name);
    const int64_t IN = ad->module.in_features, OUT = ad->module.out_features;
    struct lkp_exec ex = { n_threads };
    float *ws = workspace(ad, LKP_CALL_MERGE, block);
    memcpy(w_out, ad->weight.w, (size_t)(OUT * IN) * sizeof(float));
    lkp_status st = LKP_OK;
    rh_clear_plugin_error();
    for (int64_t r = 0; r < OUT && !st; r += block) {
        lkp_merge_args ma = { .struct_size = sizeof ma, .instance = ad->instance,
                              .params = (const float *const *)ad->params, .row_begin = r,
                              .n_rows = r + block <= OUT ? block : OUT - r, .w = w_out + r * IN, .w_stride = IN,
                              .scale = scale, .workspace = ws, .exec = &ex };
        st = ad->type->merge(&ma);
    }
    free(ws);
    return st ? CALLFAIL("merge") : 0;
}

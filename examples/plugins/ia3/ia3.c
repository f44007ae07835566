/*
 * ia3.c — PEFT's IA³ ("Infused Adapter by Inhibiting and Amplifying Inner Activations") as a LoRAKit
 * adapter plugin. Includes only lorakit_plugin.h; never links liblorakit.
 *
 *     cc -std=c11 -O2 -fPIC -shared -fvisibility=hidden -I Include -o ia3.so examples/plugins/ia3/ia3.c
 *
 * PEFT (peft/tuners/ia3/layer.py, Linear): one learned vector per target module, key suffix "ia3_l".
 *   - modules in the config's "feedforward_modules" scale their INPUT:  y = W (x ⊙ l),   ia3_l [1, IN]
 *   - the other target modules scale their OUTPUT:                       y = (W x) ⊙ l,  ia3_l [OUT, 1]
 *   - new adapters start at l = 1 (init_ia3_weights=True); LLaMA defaults: target k_proj, v_proj,
 *     down_proj, feed-forward down_proj.
 *   - merge: W' = W ⊙ l (columns for feed-forward, rows otherwise).
 * LoRAKit's attach multiplier c interpolates the vector: v = 1 + c·(l − 1) (c = 1: PEFT; c = 0: the base).
 *
 * Shape legend: T = rows, IN/OUT = module features, v = the effective vector (length IN or OUT).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lorakit_plugin.h"

static const lkp_host *host;

struct lkp_instance {
    const lkp_module *module;
    int32_t feedforward;  /* 1: KIND_INPUT (scales x), 0: KIND_OUTPUT (scales W x) */
    int64_t n;            /* length of l: IN when feedforward, else OUT */
};

static lkp_status fail(lkp_status status, const char *fmt, const char *a, long long b) {
    char msg[256];
    snprintf(msg, sizeof msg, fmt, a, b);
    host->set_error(msg);
    return status;
}

static lkp_status ia3_create(lkp_create_args *args) {
    int32_t ff = 0;
    lkp_status st = host->config_module_matches(args->config, "feedforward_modules", args->module, &ff);
    if (st == LKP_ERR_NOT_FOUND) ff = 0;        /* PEFT: no feedforward_modules = none */
    else if (st != LKP_OK) return st;          /* the host's message names the key */
    struct lkp_instance *in = calloc(1, sizeof *in);
    if (!in) return fail(LKP_ERR_OUT_OF_MEMORY, "ia3: out of memory for %s (%lld bytes)",
                         args->module->full_name, (long long)sizeof *in);
    in->module = args->module;
    in->feedforward = ff;
    in->n = ff ? args->module->in_features : args->module->out_features;
    args->instance = in;
    args->kind = ff ? LKP_KIND_INPUT : LKP_KIND_OUTPUT;
    args->n_params = 1;
    return LKP_OK;
}

static void ia3_destroy(lkp_instance *in) { free(in); }

static lkp_status ia3_param_info(const lkp_instance *in, int32_t index, lkp_param_info *out) {
    if (index != 0) return fail(LKP_ERR_INVALID_ARGUMENT, "ia3: %s has 1 parameter, asked for index %lld",
                                in->module->full_name, (long long)index);
    out->n_dims = 2;
    out->shape[0] = in->feedforward ? 1 : in->n;       /* PEFT: [1, IN] or [OUT, 1] */
    out->shape[1] = in->feedforward ? in->n : 1;
    out->name = "ia3_l";
    out->init = LKP_INIT_ONES;
    out->init_value = 1.0f;
    out->trainable = 1;
    out->out_axis = in->feedforward ? -1 : 0;          /* [OUT, 1] is indexed by W's rows */
    return LKP_OK;
}

/* forward: rows split over the host's threads; each row y_t = src_t ⊙ v. */
struct fwd_job { const lkp_forward_args *a; const float *src; int64_t src_stride; };

static void fwd_task(void *user, int32_t index, int32_t count) {
    const struct fwd_job *j = user;
    const lkp_forward_args *a = j->a;
    const float *l = a->params[0];
    const float c = a->scale;
    const int64_t n = a->instance->n;
    int64_t t0, t1;
    lkp_split(a->rows, index, count, &t0, &t1);
    for (int64_t t = t0; t < t1; t++) {
        const float *s = j->src + t * j->src_stride;
        float *y = a->y + t * a->y_stride;
        for (int64_t i = 0; i < n; i++) y[i] = s[i] * (1.0f + c * (l[i] - 1.0f));
    }
}

static lkp_status ia3_forward(const lkp_forward_args *a) {
    /* KIND_INPUT: y [T, IN] = x ⊙ v; KIND_OUTPUT: y [T, OUT] = base_y ⊙ v. */
    struct fwd_job j = { a, a->instance->feedforward ? a->x : a->base_y,
                         a->instance->feedforward ? a->x_stride : a->base_y_stride };
    /* One row (a decoded token) is a few hundred multiplies: run it here. Handing it to the host's threads
     * costs more than the work (bench generate with IA³ on k, v, down, 2 threads: 0.85 of the base's
     * decode speed with the hand-out). */
    if (a->rows <= 1) fwd_task(&j, 0, 1);
    else host->parallel_for(a->exec, fwd_task, &j);
    return LKP_OK;
}

/* backward: with src = x (input kind) or base_y (output kind), dsrc = dx or d_base_y:
 *     dl_i   += c · Σ_t dy[t,i] · src[t,i]     (tasks own a range of i; rows summed in order)
 *     dsrc_t += dy_t ⊙ v                       (tasks own a range of rows) */
struct bwd_job { const lkp_backward_args *a; const float *src; int64_t src_stride; float *dsrc; int64_t dsrc_stride; };

static void bwd_task(void *user, int32_t index, int32_t count) {
    const struct bwd_job *j = user;
    const lkp_backward_args *a = j->a;
    const float *l = a->params[0];
    float *dl = a->param_grads ? a->param_grads[0] : NULL;
    const float c = a->scale;
    const int64_t n = a->instance->n;
    int64_t b, e;
    if (dl) {
        lkp_split(n, index, count, &b, &e);
        for (int64_t i = b; i < e; i++) {
            float acc = 0;
            for (int64_t t = 0; t < a->rows; t++) acc += a->dy[t * a->dy_stride + i] * j->src[t * j->src_stride + i];
            dl[i] += c * acc;
        }
    }
    if (j->dsrc) {
        lkp_split(a->rows, index, count, &b, &e);
        for (int64_t t = b; t < e; t++) {
            const float *dy = a->dy + t * a->dy_stride;
            float *d = j->dsrc + t * j->dsrc_stride;
            for (int64_t i = 0; i < n; i++) d[i] += dy[i] * (1.0f + c * (l[i] - 1.0f));
        }
    }
}

static lkp_status ia3_backward(const lkp_backward_args *a) {
    const int32_t ff = a->instance->feedforward;
    struct bwd_job j = { a, ff ? a->x : a->base_y, ff ? a->x_stride : a->base_y_stride,
                         ff ? a->dx : a->d_base_y, ff ? a->dx_stride : a->d_base_y_stride };
    host->parallel_for(a->exec, bwd_task, &j);
    return LKP_OK;
}

/* merge: W' = W ⊙ v: feed-forward modules scale column j by v_j, the others row i by v_i. */
static lkp_status ia3_merge(const lkp_merge_args *a) {
    const lkp_instance *in = a->instance;
    const float *l = a->params[0];
    const float c = a->scale;
    const int64_t cols = in->module->in_features;
    for (int64_t r = 0; r < a->n_rows; r++) {
        float *w = a->w + r * a->w_stride;
        if (in->feedforward) {
            for (int64_t j = 0; j < cols; j++) w[j] *= 1.0f + c * (l[j] - 1.0f);
        } else {
            const float v = 1.0f + c * (l[a->row_begin + r] - 1.0f);
            for (int64_t j = 0; j < cols; j++) w[j] *= v;
        }
    }
    return LKP_OK;
}

static const char *const ia3_suffixes[] = { "ia3_l" };

static const lkp_adapter_type ia3_type = {
    .struct_size = sizeof(lkp_adapter_type),
    .name = "ia3",
    .description = "PEFT IA3: learned vectors scaling a module's input (feed-forward) or output",
    .peft_type = "IA3",
    .peft_flag = NULL,
    .key_suffixes = ia3_suffixes,
    .n_key_suffixes = 1,
    .create = ia3_create,
    .destroy = ia3_destroy,
    .param_info = ia3_param_info,
    .workspace_floats = NULL,
    .init_param = NULL,
    .prepare = NULL,
    .forward = ia3_forward,
    .backward = ia3_backward,
    .merge = ia3_merge,
};

static const lkp_adapter_type *const ia3_types[] = { &ia3_type };

static const lkp_plugin ia3_plugin = {
    .struct_size = sizeof(lkp_plugin),
    .abi_major = LKP_ABI_MAJOR,
    .abi_minor = LKP_ABI_MINOR,
    .name = "ia3",
    .version = "1.0.0",
    .n_types = 1,
    .types = ia3_types,
};

LKP_EXPORT lkp_status lkp_entry(const lkp_host *h, const lkp_plugin **out) {
    if (h->abi_major != LKP_ABI_MAJOR || h->struct_size < LKP_HOST_SIZE_V1) {
        if (h->struct_size >= offsetof(lkp_host, set_error) + sizeof h->set_error && h->set_error) {
            char msg[160];
            snprintf(msg, sizeof msg, "ia3 plugin needs plugin ABI %d.x (host table >= %zu bytes), host has %d.%d (%u bytes)",
                     LKP_ABI_MAJOR, (size_t)LKP_HOST_SIZE_V1, (int)h->abi_major, (int)h->abi_minor,
                     (unsigned)h->struct_size);
            h->set_error(msg);
        }
        return LKP_ERR_ABI;
    }
    host = h;
    *out = &ia3_plugin;
    return LKP_OK;
}

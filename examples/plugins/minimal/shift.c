/* shift.c — the smallest useful LoRAKit adapter plugin: a learned output shift, y += c·b, b [OUT].
 *     cc -std=c11 -O2 -fPIC -shared -fvisibility=hidden -I Include -o shift.so examples/plugins/minimal/shift.c */
#include <stdlib.h>
#include "lorakit_plugin.h"

static const lkp_host *host;
struct lkp_instance { int64_t out; };              /* the plugin defines its instance */

static lkp_status create(lkp_create_args *a) {
    struct lkp_instance *in = malloc(sizeof *in);
    if (!in) { host->set_error("shift: out of memory"); return LKP_ERR_OUT_OF_MEMORY; }
    in->out = a->module->out_features;
    a->instance = in; a->kind = LKP_KIND_ADD; a->n_params = 1;
    return LKP_OK;
}
static void destroy(lkp_instance *in) { free(in); }
static lkp_status param_info(const lkp_instance *in, int32_t i, lkp_param_info *p) {
    (void)i;                                       /* one parameter: "shift_b" [OUT], zeros, trainable */
    p->n_dims = 1; p->shape[0] = in->out; p->name = "shift_b"; p->init = LKP_INIT_ZEROS; p->trainable = 1;
    p->out_axis = 0;                               /* indexed like W's rows (the host may reorder them) */
    return LKP_OK;
}
static lkp_status forward(const lkp_forward_args *a) {           /* y[T, OUT] += c·b */
    for (int64_t t = 0; t < a->rows; t++)
        for (int64_t o = 0; o < a->instance->out; o++) a->y[t * a->y_stride + o] += a->scale * a->params[0][o];
    return LKP_OK;
}
static lkp_status backward(const lkp_backward_args *a) {         /* db += c·Σ_t dy_t; no dx, no d_base_y */
    if (a->param_grads && a->param_grads[0])
        for (int64_t t = 0; t < a->rows; t++)
            for (int64_t o = 0; o < a->instance->out; o++)
                a->param_grads[0][o] += a->scale * a->dy[t * a->dy_stride + o];
    return LKP_OK;
}
static const char *const suffixes[] = { "shift_b" };
static const lkp_adapter_type shift = {
    .struct_size = sizeof(lkp_adapter_type), .name = "shift", .description = "learned output shift (demo)",
    .peft_type = "SHIFT_DEMO", .key_suffixes = suffixes, .n_key_suffixes = 1,
    .create = create, .destroy = destroy, .param_info = param_info, .forward = forward, .backward = backward,
};                                                 /* no merge: a bias cannot be folded into W */
static const lkp_adapter_type *const types[] = { &shift };
static const lkp_plugin plugin = { .struct_size = sizeof(lkp_plugin), .abi_major = LKP_ABI_MAJOR,
    .abi_minor = LKP_ABI_MINOR, .name = "shift", .version = "1.0.0", .n_types = 1, .types = types };

LKP_EXPORT lkp_status lkp_entry(const lkp_host *h, const lkp_plugin **out) {
    if (h->abi_major != LKP_ABI_MAJOR) return LKP_ERR_ABI;   /* (the host rejects the mismatch too) */
    host = h; *out = &plugin;
    return LKP_OK;
}

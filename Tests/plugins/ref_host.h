/*
 * ref_host.h — a reference plugin host in plain C (no liblorakit), used by Tests/plugins/test_plugins.c.
 *
 * It is the specification the Swift host (Sources/, issue 11) mirrors:
 *   - rh_load():  the loader (dlopen RTLD_NOW|RTLD_LOCAL, entry symbol, ABI/size checks, type checks,
 *                 duplicate names) and its error messages, word for word;
 *   - rh_module_*(): how one module composes an instance of each kind with its base product W x and
 *                 pushes gradients back through W (LKP_KIND_INPUT / OUTPUT / ADD);
 *   - the host table (lkp_host) over in-memory f32 weights, a small key/value config, and pthreads.
 */
#ifndef REF_HOST_H
#define REF_HOST_H

#include <stdint.h>
#include "lorakit_plugin.h"

/* ---- the host table ------------------------------------------------------------------------------ */
const lkp_host *rh_host(void);
/* The message the last plugin call on this thread reported through set_error ("" if none). */
const char *rh_plugin_error(void);
void rh_clear_plugin_error(void);
/* The last message logged through host->log. */
const char *rh_last_log(void);

/* Host threads for one call (parallel_for runs `n_threads` tasks, on as many pthreads). */
struct lkp_exec { int32_t n_threads; };

/* A module's base weight: f32, row-major [out, in]. */
struct lkp_module_weight { const float *w; int64_t out, in; };

/* Config: a few typed entries (enough for PEFT's adapter_config fields the plugins read). */
enum { RH_NUMBER, RH_BOOL, RH_STRING, RH_LIST, RH_PATTERN, RH_NULL };
typedef struct {
    const char *key;
    int type;
    double number;                 /* RH_NUMBER, RH_BOOL (0/1) */
    const char *string;            /* RH_STRING (also a regex for module matching) */
    const char *const *names;      /* RH_LIST: n names; RH_PATTERN: n keys */
    const double *values;          /* RH_PATTERN: n values */
    int n;
} rh_config_entry;
struct lkp_config { const rh_config_entry *entries; int n; };

/* Fill a module description (names from layer/module) over an f32 weight. */
void rh_module_init(lkp_module *m, struct lkp_module_weight *wt, char *full_name_buf, int32_t layer,
                    int32_t module, const float *w, int64_t out, int64_t in);

/* ---- the loader ---------------------------------------------------------------------------------- */
#define RH_MAX_TYPES 32
typedef struct {
    const lkp_adapter_type *type;
    char plugin_path[512];
} rh_registered_type;

typedef struct {
    rh_registered_type types[RH_MAX_TYPES];
    int n_types;
    void *handles[16];
    int n_handles;
} rh_registry;

/* Load the plugin at path into reg. 0 on success; otherwise -1 and err (capacity cap) holds the message
 * the host reports (it names the file, and both sides' values where there are two sides). */
int rh_load(rh_registry *reg, const char *path, char *err, size_t cap);
const lkp_adapter_type *rh_find(const rh_registry *reg, const char *name);

/* ---- one instance on one module (what the host does per module) ---------------------------------- */
typedef struct {
    const lkp_adapter_type *type;
    lkp_module module;
    struct lkp_module_weight weight;
    char full_name[96];
    lkp_instance *instance;
    int32_t kind;
    int32_t n_params;
    lkp_param_info info[8];
    float *params[8];              /* host-owned storage */
    int64_t numel[8];
} rh_adapter;

/* create + param_info + allocate; params initialised by rule (seeded) and plugin init_param, then
 * prepare. 0 ok, else -1 with err. */
int rh_adapter_create(rh_adapter *ad, const lkp_adapter_type *type, const lkp_config *cfg, int32_t layer,
                      int32_t module, const float *w, int64_t out, int64_t in, uint64_t seed, char *err, size_t cap);
int rh_adapter_prepare(rh_adapter *ad, int32_t n_threads, char *err, size_t cap);
void rh_adapter_free(rh_adapter *ad);

/* y [T, OUT] = the module's output with the adapter attached at `scale` (base product + the instance). */
int rh_module_forward(rh_adapter *ad, float scale, int64_t T, const float *x, float *y, int32_t n_threads,
                      char *err, size_t cap);
/* Given dy = ∂L/∂y [T, OUT]: grads[i] += ∂L/∂params[i] (grads zeroed by the caller), dx [T, IN] = ∂L/∂x
 * (overwritten). */
int rh_module_backward(rh_adapter *ad, float scale, int64_t T, const float *x, const float *dy, float **grads,
                       float *dx, int32_t n_threads, char *err, size_t cap);
/* w_out [OUT, IN] = the merged weight (merge called on row blocks of `block` rows). */
int rh_module_merge(rh_adapter *ad, float scale, float *w_out, int64_t block, int32_t n_threads, char *err, size_t cap);

#endif

/*
 * lorakit_plugin.h — the ABI between LoRAKit (the host) and adapter plugins (shared libraries).
 *
 * Audience: plugin authors, and the host's plugin loader. Users of liblorakit read lorakit.h instead.
 * A plugin includes only this header and never links liblorakit: it calls the host only through the
 * lkp_host table it receives. Guide and a minimal plugin: examples/plugins/README.md.
 *
 * Loading (what the host does, in this order; the reference loader in Tests/plugins/ is its mirror)
 *   1. dlopen(path, RTLD_NOW | RTLD_LOCAL); failure: the message names the file and dlerror().
 *   2. dlsym(LKP_ENTRY_SYMBOL) ("lkp_entry"); missing: rejected, naming the file and the symbol.
 *   3. entry(host, &plugin). Non-zero status: rejected with the plugin's own message (set through
 *      host->set_error) and the status.
 *   4. plugin->struct_size < LKP_PLUGIN_SIZE_V1 ("short table"), plugin->abi_major != LKP_ABI_MAJOR:
 *      rejected, naming the file and both sides' values. A larger struct_size or a higher abi_minor is
 *      accepted (the host reads only the fields it knows).
 *   5. n_types >= 1, and every adapter type: struct_size >= LKP_ADAPTER_TYPE_SIZE_V1, a name of
 *      [a-z0-9_] (1..63 chars) not declared twice and not already registered (by another plugin: the
 *      message names that plugin's file), create/destroy/param_info/forward present, a peft_type, at
 *      least one key suffix. Any failure rejects the whole plugin (no type of it is registered).
 *   The host never calls dlclose while a model, adapter, context or trainer may still run plugin code
 *   (in practice: not before process exit, or after every instance of every type is destroyed).
 *
 * Versioning
 *   Every struct crossing the boundary starts with uint32_t struct_size (sizeof the struct as its writer
 *   was compiled) and only ever grows at the end; fields are never removed, reordered or re-typed.
 *   A reader reads a field only when struct_size covers it: LKP_HAS_FIELD(ptr, field). abi_major changes
 *   only for an incompatible change (then the host rejects plugins of the other major); abi_minor grows
 *   with each addition. The *_SIZE_V1 macros are the sizes of the first versions (below them a struct
 *   is malformed, not old).
 *   - Host table (lkp_host): written by the host; a plugin checks LKP_HAS_FIELD(host, fn) before using a
 *     function newer than 1.0.
 *   - Plugin table and adapter types: written by the plugin (static storage); the host reads what it knows.
 *   - Args structs (lkp_*_args): written by the host for each call; the plugin reads a field newer than
 *     1.0 only if LKP_HAS_FIELD(args, field). Fields the plugin writes back ("out") are in 1.0.
 *
 * Conventions
 *   - Sized integer types only (int32_t, int64_t, uint32_t); no bool, no enums in structs (int32_t holds
 *     the LKP_* values). Floats are IEEE f32 (float) in host byte order.
 *   - Matrices are row-major f32 with an explicit row stride in elements (stride >= row length).
 *     Shape legend: T = rows (tokens) of one call, IN = input features, OUT = output features of the
 *     module (its weight W is [OUT, IN]), r = rank (type-specific).
 *   - Fallible functions return lkp_status: LKP_OK (0) or a negative LKP_ERR_* (same values as lorakit.h's
 *     lk_status). Before returning an error a plugin calls host->set_error(message) on the calling thread;
 *     the host copies the message at once (the plugin keeps ownership of its buffer, may free or reuse it
 *     right after the call). Nothing is ever freed across the boundary: the host frees what it allocated,
 *     the plugin what it allocated.
 *   - Strings are NUL-terminated UTF-8. Strings in the plugin table and adapter types are static: valid
 *     until the plugin is unloaded.
 *
 * Threading (the contract the host keeps and plugins rely on)
 *   - lkp_entry is called once per load, on one thread.
 *   - forward may run concurrently on one instance (contexts sharing an adapter, or host threads with
 *     disjoint row ranges): it must only read the instance (state set by create/prepare) and write only
 *     its own rows of args->y and its workspace.
 *   - create, destroy, init_param, prepare, backward and merge are never concurrent with any other call on
 *     the same instance. Different instances are independent: any calls may run concurrently on them.
 *   - Inside a call, a plugin may split its work over the host's threads with host->parallel_for (the
 *     args' exec). Results must not depend on the number of threads (fixed reduction order).
 *   - No plugin code runs after destroy returns, except the plugin's own threads (discouraged).
 */
#ifndef LORAKIT_PLUGIN_H
#define LORAKIT_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#  define LKP_EXPORT __declspec(dllexport)
#else
#  define LKP_EXPORT __attribute__((visibility("default")))
#endif

/* The ABI version this header describes. */
#define LKP_ABI_MAJOR 1
#define LKP_ABI_MINOR 0

/* The one symbol a plugin exports (see lkp_entry_fn). */
#define LKP_ENTRY_SYMBOL "lkp_entry"

/* Size of the first `field`-terminated version of a struct, and "does this struct have `field`"
 * (LKP_HAS_FIELD uses __typeof__: GCC and Clang; elsewhere write the offsetof test by hand). */
#define LKP_STRUCT_SIZE(type, last_field) (offsetof(type, last_field) + sizeof(((type *)0)->last_field))
#define LKP_HAS_FIELD(ptr, field) \
    ((ptr)->struct_size >= offsetof(__typeof__(*(ptr)), field) + sizeof((ptr)->field))

/* ---------------------------------------------------------------------------------------------------
 * Status codes (the values of lorakit.h's lk_status)
 * ------------------------------------------------------------------------------------------------- */
typedef int32_t lkp_status;
enum {
    LKP_OK = 0,
    LKP_ERR_INVALID_ARGUMENT = -1,  /* a bad config value, shape or argument */
    LKP_ERR_SHAPE = -3,             /* shapes do not fit together */
    LKP_ERR_UNSUPPORTED = -4,       /* a valid request this type does not support */
    LKP_ERR_FORMAT = -6,            /* malformed data (e.g. a parameter with non-finite values) */
    LKP_ERR_OUT_OF_MEMORY = -7,
    LKP_ERR_ABI = -8,               /* version or struct size mismatch */
    LKP_ERR_NOT_FOUND = -10,        /* config accessors: the key is absent or null (not an error in itself) */
    LKP_ERR_INTERNAL = -100
};

/* Element types of a module's base weight (the values of lorakit.h's lk_dtype). */
enum {
    LKP_DTYPE_F32 = 0,
    LKP_DTYPE_F16 = 1,
    LKP_DTYPE_BF16 = 2,
    LKP_DTYPE_Q8_0 = 3,
    LKP_DTYPE_Q4_0 = 4,
    LKP_DTYPE_Q4_1 = 5
};

/* The linear modules of a LLaMA block (the order of the host's LinearModule). */
enum {
    LKP_MODULE_Q = 0,     /* self_attn.q_proj  */
    LKP_MODULE_K = 1,     /* self_attn.k_proj  */
    LKP_MODULE_V = 2,     /* self_attn.v_proj  */
    LKP_MODULE_O = 3,     /* self_attn.o_proj  */
    LKP_MODULE_GATE = 4,  /* mlp.gate_proj     */
    LKP_MODULE_UP = 5,    /* mlp.up_proj       */
    LKP_MODULE_DOWN = 6   /* mlp.down_proj     */
};

/* Where an instance sits in its module, chosen by create (lkp_create_args.kind). The host computes
 *     x' = x                        then every KIND_INPUT instance in attach order: x' = f(x')
 *     h  = W x'                     (the base product; "base_y" below)
 *     h' = h                        then every KIND_OUTPUT instance in attach order: h' = g(h')
 *     y  = h' + Σ Δ(x', h)          every KIND_ADD instance adds its term (LoRA is one of these)
 * With one adapter (the usual case) x' = x, and h is exactly W x. Each kind's forward/backward reads and
 * writes these (see lkp_forward_args / lkp_backward_args). */
enum {
    LKP_KIND_INPUT = 0,   /* y := f(x), both [T, IN]    (IA³ on feed-forward modules: x ⊙ l)       */
    LKP_KIND_OUTPUT = 1,  /* y := g(h), both [T, OUT]   (IA³ on other modules: h ⊙ l)              */
    LKP_KIND_ADD = 2      /* y += Δ(x, h), y [T, OUT]   (LoRA, DoRA)                                */
};

/* How the host initialises a parameter of a new (not loaded) adapter (lkp_param_info.init). The random
 * rules draw from the host's seeded generator; the host's choice of generator is not part of the ABI. */
enum {
    LKP_INIT_ZEROS = 0,
    LKP_INIT_ONES = 1,
    LKP_INIT_CONSTANT = 2,        /* every element = init_value */
    LKP_INIT_NORMAL = 3,          /* N(0, init_value²) */
    LKP_INIT_UNIFORM = 4,         /* U(-init_value, init_value) */
    LKP_INIT_KAIMING_UNIFORM = 5, /* torch kaiming_uniform_(a=√5) on [rows, fan_in = last dim]:
                                     U(-1/√fan_in, 1/√fan_in); PEFT's init of lora_A */
    LKP_INIT_PLUGIN = 6           /* the type's init_param fills it, after every non-plugin parameter */
};

/* Calls that get a workspace (lkp_adapter_type.workspace_floats). */
enum {
    LKP_CALL_FORWARD = 0,
    LKP_CALL_BACKWARD = 1,
    LKP_CALL_MERGE = 2
};

/* Log levels (host->log). */
enum {
    LKP_LOG_DEBUG = 0,
    LKP_LOG_INFO = 1,
    LKP_LOG_WARNING = 2,
    LKP_LOG_ERROR = 3
};

/* Opaque host objects, valid as stated where they are handed out. */
typedef struct lkp_module_weight lkp_module_weight;  /* the base weight of one module */
typedef struct lkp_config lkp_config;                /* an adapter's configuration (PEFT adapter_config.json) */
typedef struct lkp_exec lkp_exec;                    /* the host's threads for one call */
/* Opaque plugin object: one adapter type's state for one module (the plugin defines the struct). */
typedef struct lkp_instance lkp_instance;

/* ---------------------------------------------------------------------------------------------------
 * A target module, described by the host. Valid (and unchanged) from create until destroy of the instance
 * created for it: a plugin may keep the pointer in its instance.
 * ------------------------------------------------------------------------------------------------- */
typedef struct lkp_module {
    uint32_t struct_size;
    int32_t layer;                   /* block index, 0-based */
    int32_t module;                  /* LKP_MODULE_* */
    int32_t weight_dtype;            /* LKP_DTYPE_* of W as stored (the host dequantizes on request) */
    int64_t in_features;             /* IN */
    int64_t out_features;            /* OUT */
    const char *name;                /* PEFT/Hugging Face short name: "q_proj", ..., "down_proj" */
    const char *full_name;           /* "model.layers.3.self_attn.q_proj" (what PEFT's patterns match) */
    const lkp_module_weight *weight; /* for the host's weight functions */
} lkp_module;
#define LKP_MODULE_SIZE_V1 LKP_STRUCT_SIZE(lkp_module, weight)

/* One parameter of an instance: a named f32 tensor the host allocates, initialises (new adapters) or
 * loads (PEFT key "<module prefix>.<name>", e.g. "base_model.model.model.layers.3.self_attn.k_proj.ia3_l"),
 * saves, optimises (AdamW) and checkpoints exactly like LoRA's A and B. Written by param_info. */
typedef struct lkp_param_info {
    uint32_t struct_size;      /* set by the host (the plugin writes only fields this covers) */
    int32_t n_dims;            /* 1..4 */
    int64_t shape[4];          /* as stored in the PEFT file; dims past n_dims are ignored */
    const char *name;          /* key suffix, e.g. "lora_A.weight", "ia3_l"; static or owned by the instance */
    int32_t init;              /* LKP_INIT_* */
    float init_value;          /* for CONSTANT / NORMAL / UNIFORM */
    int32_t trainable;         /* 1: optimised by training; 0: frozen (kept, saved, never updated) */
    /* The axis indexed by the module's output features (W's rows), or -1 (the host sets -1 before the
     * call). The host's W rows may be in another order than PEFT's (GGUF q_proj/k_proj rows are permuted
     * for llama.cpp's RoPE): the host then permutes this axis on load and back on save, exactly as it
     * permutes LoRA's B, so that the plugin sees parameters, W rows, base_y and y in one consistent order
     * and needs no knowledge of it. E.g. DoRA: lora_B.weight 0, lora_magnitude_vector 0, lora_A.weight -1;
     * IA³: ia3_l [OUT, 1] 0, [1, IN] -1. */
    int32_t out_axis;
} lkp_param_info;
#define LKP_PARAM_INFO_SIZE_V1 LKP_STRUCT_SIZE(lkp_param_info, out_axis)

/* ---------------------------------------------------------------------------------------------------
 * The host's function table. Owned by the host, valid (and unchanged) until the plugin is unloaded: a
 * plugin may keep the pointer it receives in lkp_entry. Every function may be called from any thread
 * unless stated otherwise.
 * ------------------------------------------------------------------------------------------------- */
typedef struct lkp_host {
    uint32_t struct_size;
    int32_t abi_major;         /* the host's LKP_ABI_MAJOR */
    int32_t abi_minor;         /* the host's LKP_ABI_MINOR */
    const char *host_version;  /* e.g. "0.1.0"; static */

    /* Report the error of the plugin call now running on this thread. The host copies `message` before
     * returning (the plugin keeps ownership). The last message before the plugin function returns its
     * error status is the one reported (the host prefixes the plugin file and type). Call only from the
     * thread the host called into, not from parallel_for tasks. */
    void (*set_error)(const char *message);

    /* A message for the host's log (LKP_LOG_*). The host copies it. */
    void (*log)(int32_t level, const char *message);

    /* Rows [row_begin, row_begin + n_rows) of the module's weight W [OUT, IN], dequantized to f32 (the
     * exact values the host's own products use), into out (n_rows rows of IN floats, out_stride >= IN).
     * Errors: LKP_ERR_INVALID_ARGUMENT for a row range outside [0, OUT) or a NULL out (message set). */
    lkp_status (*weight_rows_f32)(const lkp_module_weight *weight, int64_t row_begin, int64_t n_rows,
                                  float *out, int64_t out_stride);

    /* ‖W_i‖₂ of rows [row_begin, row_begin + n_rows) into out[n_rows], from the dequantized f32 values
     * (sum of squares in double, then sqrt, rounded to float). Errors as weight_rows_f32. */
    lkp_status (*weight_row_norms)(const lkp_module_weight *weight, int64_t row_begin, int64_t n_rows,
                                   float *out);

    /* Run task(user, index, count) for every index in [0, count) on the host's threads and return when
     * all have returned; count is chosen by the host (1 when exec is NULL). Tasks take contiguous ranges
     * (lkp_split) and write disjoint memory; they must not call set_error (record a failure in `user` and
     * report it from the calling thread) nor parallel_for. */
    void (*parallel_for)(lkp_exec *exec, void (*task)(void *user, int32_t index, int32_t count), void *user);

    /* Adapter configuration (the host's parsed adapter_config.json, or the options an adapter was created
     * with). Key lookups follow PEFT field names. Each returns LKP_OK and writes *out, LKP_ERR_NOT_FOUND
     * (key absent or null; *out untouched), or LKP_ERR_INVALID_ARGUMENT when the value has another JSON
     * type (message set, naming the key). */
    lkp_status (*config_number)(const lkp_config *config, const char *key, double *out);
    lkp_status (*config_bool)(const lkp_config *config, const char *key, int32_t *out);  /* 0 / 1 */
    /* A string value copied into buf[capacity] with its NUL; *needed (if not NULL) gets its size with the
     * NUL, also when capacity is too small (then LKP_ERR_INVALID_ARGUMENT and buf untouched). */
    lkp_status (*config_string)(const lkp_config *config, const char *key, char *buf, int64_t capacity,
                                int64_t *needed);
    /* Does `module` match the value of `key` with PEFT's target_modules rules (a list of names: the full
     * name equals a name or ends with "." + name; a string: a regular expression matched against the
     * whole full name)? *out = 1 / 0; LKP_ERR_NOT_FOUND when the key is absent or null. Used for IA³'s
     * "feedforward_modules". */
    lkp_status (*config_module_matches)(const lkp_config *config, const char *key, const lkp_module *module,
                                        int32_t *out);
    /* The value of a PEFT pattern dictionary (`key` is e.g. "rank_pattern", "alpha_pattern") for `module`,
     * with PEFT's get_pattern_key matching (the same rules as the host's LoRA). LKP_ERR_NOT_FOUND when no
     * entry matches (use the plain value, e.g. "r"). */
    lkp_status (*config_pattern_number)(const lkp_config *config, const char *key, const lkp_module *module,
                                        double *out);
} lkp_host;
#define LKP_HOST_SIZE_V1 LKP_STRUCT_SIZE(lkp_host, config_pattern_number)

/* ---------------------------------------------------------------------------------------------------
 * Call arguments. Written by the host for one call, valid only during it. Fields marked "out" are
 * written by the plugin on success.
 * ------------------------------------------------------------------------------------------------- */

/* create: make an instance for one target module. */
typedef struct lkp_create_args {
    uint32_t struct_size;
    const lkp_module *module;     /* valid until destroy */
    const lkp_config *config;     /* valid during this call only (read what the instance needs now) */
    lkp_instance *instance;       /* out: the new instance (owned by the plugin, freed by destroy) */
    int32_t kind;                 /* out: LKP_KIND_* of this instance */
    int32_t n_params;             /* out: number of parameters (0..64), described by param_info */
} lkp_create_args;
#define LKP_CREATE_ARGS_SIZE_V1 LKP_STRUCT_SIZE(lkp_create_args, n_params)

/* init_param: fill one LKP_INIT_PLUGIN parameter of a new adapter (e.g. DoRA's magnitude = ‖W + s·B·A‖
 * per row). Called after every non-plugin parameter was initialised, before prepare. */
typedef struct lkp_init_args {
    uint32_t struct_size;
    lkp_instance *instance;
    int32_t index;                /* the parameter to fill */
    const float *const *params;   /* every parameter, as described by param_info (params[index] is
                                     the one to fill: write through `out`) */
    float *out;                   /* the parameter's storage (its element count, contiguous) */
    lkp_exec *exec;
} lkp_init_args;
#define LKP_INIT_ARGS_SIZE_V1 LKP_STRUCT_SIZE(lkp_init_args, exec)

/* prepare: derive what forward needs from the parameters (DoRA: the per-row norm, once, not per token).
 * The host calls it after create + initialisation or load, and after every optimizer step, before the
 * next forward. The plugin may cache derived values in the instance; it must not keep `params`. */
typedef struct lkp_prepare_args {
    uint32_t struct_size;
    lkp_instance *instance;
    const float *const *params;   /* [n_params] contiguous tensors in param_info order and shapes */
    lkp_exec *exec;
} lkp_prepare_args;
#define LKP_PREPARE_ARGS_SIZE_V1 LKP_STRUCT_SIZE(lkp_prepare_args, exec)

/* forward over T rows (T >= 1; one row while decoding, many while prefilling or training).
 *   KIND_INPUT:  y[T, IN]  := f(x)          base_y is NULL
 *   KIND_OUTPUT: y[T, OUT] := g(base_y)     x is the module input the base saw
 *   KIND_ADD:    y[T, OUT] += Δ(x, base_y)
 * x [T, IN] (x' above), base_y [T, OUT] (h above: W x', before any other adapter's term), y as stated;
 * y never aliases x or base_y. `scale` is the attach multiplier (1 = the adapter as trained; 0 must give
 * the base module: f(x) = x, g(h) = h, Δ = 0); each type documents what it scales. */
typedef struct lkp_forward_args {
    uint32_t struct_size;
    lkp_instance *instance;
    const float *const *params;
    int64_t rows;                         /* T */
    const float *x;       int64_t x_stride;
    const float *base_y;  int64_t base_y_stride;
    float *y;             int64_t y_stride;
    float scale;
    float *workspace;                     /* workspace_floats(instance, LKP_CALL_FORWARD, rows) floats */
    lkp_exec *exec;
} lkp_forward_args;
#define LKP_FORWARD_ARGS_SIZE_V1 LKP_STRUCT_SIZE(lkp_forward_args, exec)

/* backward of forward (same x, base_y, params, scale). dy is ∂L/∂y (y of that forward, same shape).
 * The plugin ADDS (never overwrites):
 *   param_grads[i] += ∂L/∂params[i]     (trainable parameters; NULL entries: not wanted)
 *   dx      += ∂L/∂x through this instance     [T, IN]   (NULL: not wanted)
 *     KIND_INPUT: all of it (the host passes ∂L/∂x' as dy and zeroed dx);
 *     KIND_ADD:   only the path through Δ (the host adds Wᵀ(dy + d_base_y) itself)
 *     KIND_OUTPUT: only a direct dependence of g on x, if any (usually none)
 *   d_base_y += ∂L/∂base_y through this instance [T, OUT] (NULL for KIND_INPUT)
 *     KIND_OUTPUT: all of it (∂L/∂h; the host passes zeroed d_base_y);
 *     KIND_ADD:   the path through Δ only (e.g. DoRA's (m/n − 1) ⊙ dy; LoRA adds nothing)
 * Sums over rows are taken in row order (or in a fixed order independent of the thread count). */
typedef struct lkp_backward_args {
    uint32_t struct_size;
    lkp_instance *instance;
    const float *const *params;
    float *const *param_grads;            /* [n_params], each like its parameter; accumulate */
    int64_t rows;                         /* T */
    const float *x;       int64_t x_stride;
    const float *base_y;  int64_t base_y_stride;
    const float *dy;      int64_t dy_stride;
    float *dx;            int64_t dx_stride;
    float *d_base_y;      int64_t d_base_y_stride;
    float scale;
    float *workspace;                     /* workspace_floats(instance, LKP_CALL_BACKWARD, rows) floats */
    lkp_exec *exec;
} lkp_backward_args;
#define LKP_BACKWARD_ARGS_SIZE_V1 LKP_STRUCT_SIZE(lkp_backward_args, exec)

/* merge: fold the instance (at `scale`) into rows [row_begin, row_begin + n_rows) of the base weight,
 * given (and rewritten in place) as f32: w [n_rows, IN]. Afterwards the plain module with W' equals the
 * module with the instance attached: W' x = forward result for every x (to rounding). Every adapter kind
 * is row-local (row i of W' depends on row i of W only): the host may merge in row blocks. */
typedef struct lkp_merge_args {
    uint32_t struct_size;
    lkp_instance *instance;
    const float *const *params;
    int64_t row_begin;
    int64_t n_rows;
    float *w;             int64_t w_stride;
    float scale;
    float *workspace;                     /* workspace_floats(instance, LKP_CALL_MERGE, n_rows) floats */
    lkp_exec *exec;
} lkp_merge_args;
#define LKP_MERGE_ARGS_SIZE_V1 LKP_STRUCT_SIZE(lkp_merge_args, exec)

/* ---------------------------------------------------------------------------------------------------
 * An adapter type: what it is called, which PEFT adapters it reads, and its functions. Static in the
 * plugin (valid until unload).
 * ------------------------------------------------------------------------------------------------- */
typedef struct lkp_adapter_type {
    uint32_t struct_size;
    const char *name;           /* unique in the host, [a-z0-9_]{1,63}: "ia3", "dora" */
    const char *description;    /* one line for `lorakit plugins` and error messages */
    /* PEFT mapping: adapter_config.json's "peft_type" this type reads ("IA3", "LORA"), and a boolean
     * config field that must be true for it (e.g. "use_dora" for DoRA; NULL: none). The host's built-in
     * LoRA keeps "LORA" without flags. */
    const char *peft_type;
    const char *peft_flag;
    /* The tensor-key suffixes this type owns in a PEFT file (the parameter names its instances use),
     * n_key_suffixes entries. A file key ending in none of its types' suffixes is reported by the host. */
    const char *const *key_suffixes;
    int32_t n_key_suffixes;

    /* Make an instance for args->module from args->config (shapes, the module's weight dtype, config
     * values). On error no instance exists. Required. */
    lkp_status (*create)(lkp_create_args *args);
    /* Free an instance and everything it owns. NULL is a no-op. Required. */
    void (*destroy)(lkp_instance *instance);
    /* Describe parameter `index` (0 <= index < n_params): writes *out (fields up to out->struct_size).
     * Stable for the instance's life. Required. */
    lkp_status (*param_info)(const lkp_instance *instance, int32_t index, lkp_param_info *out);
    /* Floats of workspace a call (LKP_CALL_*) over `rows` rows needs (0: none). NULL: always 0. */
    int64_t (*workspace_floats)(const lkp_instance *instance, int32_t call, int64_t rows);
    /* See lkp_init_args. Required when a parameter has LKP_INIT_PLUGIN; else may be NULL. */
    lkp_status (*init_param)(const lkp_init_args *args);
    /* See lkp_prepare_args. NULL: nothing to prepare. */
    lkp_status (*prepare)(const lkp_prepare_args *args);
    /* See lkp_forward_args. Required. */
    lkp_status (*forward)(const lkp_forward_args *args);
    /* See lkp_backward_args. NULL: the type cannot be trained (the host says so). */
    lkp_status (*backward)(const lkp_backward_args *args);
    /* See lkp_merge_args. NULL: merging is not supported (the host reports LK_ERR_UNSUPPORTED naming the
     * type). */
    lkp_status (*merge)(const lkp_merge_args *args);
} lkp_adapter_type;
#define LKP_ADAPTER_TYPE_SIZE_V1 LKP_STRUCT_SIZE(lkp_adapter_type, merge)

/* ---------------------------------------------------------------------------------------------------
 * The plugin's table, returned by lkp_entry. Static in the plugin (valid until unload).
 * ------------------------------------------------------------------------------------------------- */
typedef struct lkp_plugin {
    uint32_t struct_size;       /* sizeof(lkp_plugin) as the plugin was compiled */
    int32_t abi_major;          /* LKP_ABI_MAJOR the plugin was compiled with */
    int32_t abi_minor;          /* LKP_ABI_MINOR the plugin was compiled with */
    const char *name;           /* e.g. "ia3" */
    const char *version;        /* the plugin's own version, e.g. "1.0.0" */
    int32_t n_types;            /* >= 1 */
    const lkp_adapter_type *const *types;  /* n_types pointers */
} lkp_plugin;
#define LKP_PLUGIN_SIZE_V1 LKP_STRUCT_SIZE(lkp_plugin, types)

/* The entry point every plugin exports as LKP_ENTRY_SYMBOL:
 *     LKP_EXPORT lkp_status lkp_entry(const lkp_host *host, const lkp_plugin **out);
 * host: valid until unload (keep it). *out: the plugin's static table. A plugin may refuse a host (e.g.
 * host->abi_major differs, or host->struct_size lacks a function it needs): host->set_error(message),
 * then return a negative status. Called once per load, on one thread. */
typedef lkp_status (*lkp_entry_fn)(const lkp_host *host, const lkp_plugin **out);

/* The contiguous share [*begin, *end) of n items for task `index` of `count` (parallel_for tasks). */
static inline void lkp_split(int64_t n, int32_t index, int32_t count, int64_t *begin, int64_t *end) {
    int64_t q = n / count, r = n % count;
    *begin = index * q + (index < r ? index : r);
    *end = *begin + q + (index < r ? 1 : 0);
}

#ifdef __cplusplus
}
#endif

#endif /* LORAKIT_PLUGIN_H */

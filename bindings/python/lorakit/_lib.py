"""ctypes mirror of Include/lorakit.h, one to one.

Each function below is preceded by its C declaration. Keep this file in step with the header: same
order, same names, same constants. `ABI_VERSION` is the LK_ABI_VERSION this mirror was written
against; importing checks it against the loaded library's lk_abi_version().

The library is looked up, in order, at:
  1. $LORAKIT_LIBRARY (a path to liblorakit.so);
  2. lorakit/_native/lib/liblorakit.so, bundled by `pip install ./bindings/python` (with the Swift runtime);
  3. <repo>/.build/release/liblorakit.so, relative to this package (a source checkout after `make build`);
  4. ctypes.util.find_library("lorakit"), then "liblorakit.so" through the dynamic loader.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from ctypes import CFUNCTYPE, POINTER, Structure, c_char_p, c_double, c_float, c_int32, c_int64, c_size_t, c_uint32, c_uint64, c_void_p
from pathlib import Path

# #define LK_ABI_VERSION 1
ABI_VERSION = 1

# ---------------------------------------------------------------------------------------------------
# Status codes: typedef int32_t lk_status;
# ---------------------------------------------------------------------------------------------------
lk_status = c_int32
LK_OK = 0
LK_STOPPED = 1
LK_ERR_INVALID_ARGUMENT = -1
LK_ERR_INVALID_HANDLE = -2
LK_ERR_SHAPE = -3
LK_ERR_UNSUPPORTED = -4
LK_ERR_IO = -5
LK_ERR_FORMAT = -6
LK_ERR_OUT_OF_MEMORY = -7
LK_ERR_ABI = -8
LK_ERR_BUFFER_TOO_SMALL = -9
LK_ERR_LIMIT = -10
LK_ERR_INTERNAL = -100

# ---------------------------------------------------------------------------------------------------
# Element types: typedef int32_t lk_dtype;
# ---------------------------------------------------------------------------------------------------
lk_dtype = c_int32
LK_DTYPE_F32 = 0
LK_DTYPE_F16 = 1
LK_DTYPE_BF16 = 2
LK_DTYPE_Q8_0 = 3
LK_DTYPE_Q4_0 = 4
LK_DTYPE_Q4_1 = 5

# typedef struct lk_tensor lk_tensor;   (opaque: handled as void *)
lk_tensor_p = c_void_p

# #define LK_MAX_DIMS 8
LK_MAX_DIMS = 8


def _candidates() -> list[str]:
    found: list[str] = []
    env = os.environ.get("LORAKIT_LIBRARY")
    if env:
        found.append(env)
    here = Path(__file__).resolve().parent
    found.append(str(here / "_native" / "lib" / "liblorakit.so"))
    repo = here.parents[2]
    found.append(str(repo / ".build" / "release" / "liblorakit.so"))
    name = ctypes.util.find_library("lorakit")
    if name:
        found.append(name)
    found.append("liblorakit.so")
    return found


def _load() -> tuple[ctypes.CDLL, str]:
    tried: list[str] = []
    env = os.environ.get("LORAKIT_LIBRARY")
    for cand in _candidates():
        is_path = os.sep in cand
        if is_path and not os.path.exists(cand):
            tried.append(f"{cand} (no such file)")
            if cand == env:  # an explicit path that does not exist is an error, not a fallback
                break
            continue
        try:
            return ctypes.CDLL(cand), cand
        except OSError as e:
            tried.append(f"{cand} ({e})")
            if cand == env:
                break
    raise ImportError(
        "lorakit: cannot load liblorakit.so. Tried:\n  " + "\n  ".join(tried)
        + "\nBuild it with `make build` in the LoRAKit repository, install it with `make install`, "
        "or set LORAKIT_LIBRARY to the path of liblorakit.so."
    )


lib, path = _load()


def _fn(name: str, restype, argtypes: list) -> None:
    f = getattr(lib, name)
    f.restype = restype
    f.argtypes = argtypes


# ---------------------------------------------------------------------------------------------------
# Library
# ---------------------------------------------------------------------------------------------------

# int32_t lk_abi_version(void);
_fn("lk_abi_version", c_int32, [])

# const char *lk_version_string(void);
_fn("lk_version_string", c_char_p, [])

# const char *lk_last_error(void);
_fn("lk_last_error", c_char_p, [])

# void lk_clear_error(void);
_fn("lk_clear_error", None, [])

# const char *lk_status_string(lk_status status);
_fn("lk_status_string", c_char_p, [lk_status])

# const char *lk_dtype_name(lk_dtype dtype);
_fn("lk_dtype_name", c_char_p, [lk_dtype])

# lk_status lk_dtype_info(lk_dtype dtype, int64_t *block_size, int64_t *block_bytes);
_fn("lk_dtype_info", lk_status, [lk_dtype, POINTER(c_int64), POINTER(c_int64)])

# int32_t lk_cpu_count(void);
_fn("lk_cpu_count", c_int32, [])

# lk_status lk_set_default_threads(int32_t n_threads);
_fn("lk_set_default_threads", lk_status, [c_int32])

# int32_t lk_get_default_threads(void);
_fn("lk_get_default_threads", c_int32, [])

# ---------------------------------------------------------------------------------------------------
# Tensors
# ---------------------------------------------------------------------------------------------------

# lk_status lk_tensor_new(lk_dtype dtype, int32_t n_dims, const int64_t *shape, lk_tensor **out);
_fn("lk_tensor_new", lk_status, [lk_dtype, c_int32, POINTER(c_int64), POINTER(lk_tensor_p)])

# lk_status lk_tensor_from_f32(const float *data, int64_t n_values, lk_dtype dtype, int32_t n_dims,
#                              const int64_t *shape, lk_tensor **out);
_fn("lk_tensor_from_f32", lk_status,
    [POINTER(c_float), c_int64, lk_dtype, c_int32, POINTER(c_int64), POINTER(lk_tensor_p)])

# lk_status lk_tensor_convert(const lk_tensor *t, lk_dtype dtype, lk_tensor **out);
_fn("lk_tensor_convert", lk_status, [lk_tensor_p, lk_dtype, POINTER(lk_tensor_p)])

# lk_status lk_tensor_free(lk_tensor *t);
_fn("lk_tensor_free", lk_status, [lk_tensor_p])

# lk_status lk_tensor_shape(const lk_tensor *t, int32_t *n_dims, int64_t *shape, int32_t capacity);
_fn("lk_tensor_shape", lk_status, [lk_tensor_p, POINTER(c_int32), POINTER(c_int64), c_int32])

# lk_status lk_tensor_dtype(const lk_tensor *t, lk_dtype *dtype);
_fn("lk_tensor_dtype", lk_status, [lk_tensor_p, POINTER(lk_dtype)])

# lk_status lk_tensor_size(const lk_tensor *t, int64_t *n_elements, int64_t *n_bytes);
_fn("lk_tensor_size", lk_status, [lk_tensor_p, POINTER(c_int64), POINTER(c_int64)])

# lk_status lk_tensor_copy_to_f32(const lk_tensor *t, float *dst, int64_t capacity);
_fn("lk_tensor_copy_to_f32", lk_status, [lk_tensor_p, POINTER(c_float), c_int64])

# lk_status lk_tensor_copy_bytes(const lk_tensor *t, void *dst, int64_t capacity);
_fn("lk_tensor_copy_bytes", lk_status, [lk_tensor_p, c_void_p, c_int64])

# ---------------------------------------------------------------------------------------------------
# Tensor ops
# ---------------------------------------------------------------------------------------------------

# lk_status lk_matmul(const lk_tensor *x, const lk_tensor *w, int32_t transpose_w, lk_tensor *out);
_fn("lk_matmul", lk_status, [lk_tensor_p, lk_tensor_p, c_int32, lk_tensor_p])

# ---------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------

# typedef struct lk_model lk_model;       (opaque: handled as void *)
# typedef struct lk_context lk_context;   (opaque: handled as void *)
lk_model_p = c_void_p
lk_context_p = c_void_p


# typedef struct lk_model_params {
#     uint32_t struct_size;
#     int32_t reserved;
# } lk_model_params;
class lk_model_params(Structure):
    _fields_ = [("struct_size", c_uint32), ("reserved", c_int32)]


# void lk_model_params_init_sized(lk_model_params *p, size_t size);
_fn("lk_model_params_init_sized", None, [POINTER(lk_model_params), c_size_t])
# void lk_model_params_init(lk_model_params *p);   (the struct's first version; the header's macro of that
# name calls lk_model_params_init_sized)
_fn("lk_model_params_init", None, [POINTER(lk_model_params)])

# lk_status lk_model_load(const char *path, const lk_model_params *params, lk_model **out);
_fn("lk_model_load", lk_status, [c_char_p, POINTER(lk_model_params), POINTER(lk_model_p)])

# lk_status lk_model_free(lk_model *model);
_fn("lk_model_free", lk_status, [lk_model_p])


# typedef struct lk_model_info { ... } lk_model_info;
class lk_model_info(Structure):
    _fields_ = [
        ("struct_size", c_uint32), ("n_vocab", c_int32), ("n_ctx_train", c_int32), ("n_embd", c_int32),
        ("n_ff", c_int32), ("n_layer", c_int32), ("n_head", c_int32), ("n_head_kv", c_int32),
        ("head_dim", c_int32), ("n_rot", c_int32), ("rope_base", c_float), ("norm_eps", c_float),
        ("tied_embeddings", c_int32), ("bos_token", c_int32), ("eos_token", c_int32), ("eot_token", c_int32),
        ("has_tokenizer", c_int32), ("has_chat_template", c_int32), ("weight_bytes", c_int64),
    ]


# lk_status lk_model_get_info(const lk_model *model, lk_model_info *info);
_fn("lk_model_get_info", lk_status, [lk_model_p, POINTER(lk_model_info)])

# lk_status lk_model_architecture(const lk_model *model, char *buf, int64_t capacity, int64_t *needed);
_fn("lk_model_architecture", lk_status, [lk_model_p, c_void_p, c_int64, POINTER(c_int64)])

# lk_status lk_model_chat_template(const lk_model *model, char *buf, int64_t capacity, int64_t *needed);
_fn("lk_model_chat_template", lk_status, [lk_model_p, c_void_p, c_int64, POINTER(c_int64)])

# lk_status lk_model_meta(const lk_model *model, const char *key, char *buf, int64_t capacity, int64_t *needed);
_fn("lk_model_meta", lk_status, [lk_model_p, c_char_p, c_void_p, c_int64, POINTER(c_int64)])

# ---------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------

# lk_status lk_tokenize(const lk_model *model, const char *text, int64_t text_len, int32_t add_special,
#                       int32_t parse_special, int32_t *tokens, int64_t capacity, int64_t *n_tokens);
_fn("lk_tokenize", lk_status,
    [lk_model_p, c_char_p, c_int64, c_int32, c_int32, POINTER(c_int32), c_int64, POINTER(c_int64)])

# lk_status lk_detokenize(const lk_model *model, const int32_t *tokens, int64_t n_tokens, int32_t skip_special,
#                         char *buf, int64_t capacity, int64_t *needed);
_fn("lk_detokenize", lk_status,
    [lk_model_p, POINTER(c_int32), c_int64, c_int32, c_void_p, c_int64, POINTER(c_int64)])

# lk_status lk_token_bytes(const lk_model *model, int32_t token, char *buf, int64_t capacity, int64_t *needed);
_fn("lk_token_bytes", lk_status, [lk_model_p, c_int32, c_void_p, c_int64, POINTER(c_int64)])


# typedef struct lk_chat_message {
#     const char *role;
#     const char *content;
# } lk_chat_message;
class lk_chat_message(Structure):
    _fields_ = [("role", c_char_p), ("content", c_char_p)]


# lk_status lk_chat_apply(const lk_model *model, const lk_chat_message *messages, int64_t n_messages,
#                         int32_t add_generation_prompt, char *buf, int64_t capacity, int64_t *needed);
_fn("lk_chat_apply", lk_status,
    [lk_model_p, POINTER(lk_chat_message), c_int64, c_int32, c_void_p, c_int64, POINTER(c_int64)])

# typedef int32_t lk_chat_limit;
lk_chat_limit = c_int32
LK_CHAT_LIMIT_OUTPUT_BYTES = 0
LK_CHAT_LIMIT_ALLOCATED_BYTES = 1
LK_CHAT_LIMIT_LOOP_ITERATIONS = 2
LK_CHAT_LIMIT_STEPS = 3
LK_CHAT_LIMIT_RECURSION_DEPTH = 4
LK_CHAT_LIMIT_VALUE_DEPTH = 5
LK_CHAT_LIMIT_MILLISECONDS = 6
LK_CHAT_LIMIT_TEMPLATE_BYTES = 7

# lk_status lk_model_chat_limit(lk_model *model, lk_chat_limit limit, int64_t new_value, int64_t *old_value);
_fn("lk_model_chat_limit", lk_status, [lk_model_p, lk_chat_limit, c_int64, POINTER(c_int64)])

# ---------------------------------------------------------------------------------------------------
# Contexts
# ---------------------------------------------------------------------------------------------------


# typedef struct lk_context_params {
#     uint32_t struct_size;
#     int32_t n_ctx;
#     int32_t n_batch;
#     int32_t n_threads;
#     lk_dtype kv_type;
# } lk_context_params;
class lk_context_params(Structure):
    _fields_ = [("struct_size", c_uint32), ("n_ctx", c_int32), ("n_batch", c_int32), ("n_threads", c_int32),
                ("kv_type", lk_dtype)]


# void lk_context_params_init_sized(lk_context_params *p, size_t size);
_fn("lk_context_params_init_sized", None, [POINTER(lk_context_params), c_size_t])
# void lk_context_params_init(lk_context_params *p);   (the struct's first version; the header's macro of that
# name calls lk_context_params_init_sized)
_fn("lk_context_params_init", None, [POINTER(lk_context_params)])

# lk_status lk_context_new(lk_model *model, const lk_context_params *params, lk_context **out);
_fn("lk_context_new", lk_status, [lk_model_p, POINTER(lk_context_params), POINTER(lk_context_p)])

# lk_status lk_context_free(lk_context *ctx);
_fn("lk_context_free", lk_status, [lk_context_p])

# lk_status lk_context_reset(lk_context *ctx);
_fn("lk_context_reset", lk_status, [lk_context_p])

# lk_status lk_context_position(const lk_context *ctx, int32_t *position);
_fn("lk_context_position", lk_status, [lk_context_p, POINTER(c_int32)])

# enum { LK_LOGITS_NONE = 0, LK_LOGITS_LAST = 1, LK_LOGITS_ALL = 2 };
LK_LOGITS_NONE = 0
LK_LOGITS_LAST = 1
LK_LOGITS_ALL = 2

# lk_status lk_context_eval(lk_context *ctx, const int32_t *tokens, int64_t n_tokens, int32_t logits_mode,
#                           float *logits, int64_t capacity);
_fn("lk_context_eval", lk_status, [lk_context_p, POINTER(c_int32), c_int64, c_int32, POINTER(c_float), c_int64])

# lk_status lk_context_eval_embeddings(lk_context *ctx, const float *embeddings, int64_t n_rows,
#                                      int32_t logits_mode, float *logits, int64_t capacity);
_fn("lk_context_eval_embeddings", lk_status,
    [lk_context_p, POINTER(c_float), c_int64, c_int32, POINTER(c_float), c_int64])

# ---------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------


# typedef struct lk_sampler_params { ... } lk_sampler_params;
class lk_sampler_params(Structure):
    _fields_ = [
        ("struct_size", c_uint32), ("temperature", c_float), ("top_k", c_int32), ("top_p", c_float),
        ("min_p", c_float), ("repeat_penalty", c_float), ("repeat_last_n", c_int32), ("seed", c_uint64),
    ]


# void lk_sampler_params_init_sized(lk_sampler_params *p, size_t size);
_fn("lk_sampler_params_init_sized", None, [POINTER(lk_sampler_params), c_size_t])
# void lk_sampler_params_init(lk_sampler_params *p);   (the struct's first version; the header's macro of that
# name calls lk_sampler_params_init_sized)
_fn("lk_sampler_params_init", None, [POINTER(lk_sampler_params)])

# typedef int32_t (*lk_token_callback)(const char *piece, int64_t piece_len, int32_t token, void *user_data);
# (piece as a void pointer: it is not NUL-terminated; read piece_len bytes with ctypes.string_at)
lk_token_callback = CFUNCTYPE(c_int32, c_void_p, c_int64, c_int32, c_void_p)


# typedef struct lk_generate_params { ... } lk_generate_params;
class lk_generate_params(Structure):
    _fields_ = [
        ("struct_size", c_uint32), ("max_tokens", c_int32), ("sampler", POINTER(lk_sampler_params)),
        ("stop", POINTER(c_char_p)), ("n_stop", c_int32), ("stop_at_eos", c_int32),
        ("callback", lk_token_callback), ("user_data", c_void_p),
    ]


# void lk_generate_params_init_sized(lk_generate_params *p, size_t size);
_fn("lk_generate_params_init_sized", None, [POINTER(lk_generate_params), c_size_t])
# void lk_generate_params_init(lk_generate_params *p);   (the struct's first version; the header's macro of that
# name calls lk_generate_params_init_sized)
_fn("lk_generate_params_init", None, [POINTER(lk_generate_params)])

# enum { LK_STOP_EOS = 0, LK_STOP_STRING = 1, LK_STOP_LENGTH = 2, LK_STOP_CALLBACK = 3, LK_STOP_CONTEXT = 4 };
LK_STOP_EOS = 0
LK_STOP_STRING = 1
LK_STOP_LENGTH = 2
LK_STOP_CALLBACK = 3
LK_STOP_CONTEXT = 4


# typedef struct lk_generate_result { ... } lk_generate_result;
class lk_generate_result(Structure):
    _fields_ = [
        ("struct_size", c_uint32), ("n_prompt_tokens", c_int32), ("n_tokens", c_int32), ("stop_reason", c_int32),
        ("prefill_seconds", c_double), ("decode_seconds", c_double),
    ]


# lk_status lk_generate(lk_context *ctx, const int32_t *prompt, int64_t n_prompt, const lk_generate_params *params,
#                       char **text_out, int32_t *tokens_out, int64_t tokens_capacity, lk_generate_result *result);
# (text_out as void **: the string is read with ctypes.string_at, then released with lk_string_free)
_fn("lk_generate", lk_status,
    [lk_context_p, POINTER(c_int32), c_int64, POINTER(lk_generate_params), POINTER(c_void_p), POINTER(c_int32),
     c_int64, POINTER(lk_generate_result)])

# void lk_string_free(char *s);
_fn("lk_string_free", None, [c_void_p])

# ---------------------------------------------------------------------------------------------------
# LoRA adapters
# ---------------------------------------------------------------------------------------------------

# typedef struct lk_adapter lk_adapter;   (opaque: handled as void *)
lk_adapter_p = c_void_p

# lk_status lk_adapter_load(lk_model *model, const char *path, lk_adapter **out);
_fn("lk_adapter_load", lk_status, [lk_model_p, c_char_p, POINTER(lk_adapter_p)])

# lk_status lk_adapter_free(lk_adapter *adapter);
_fn("lk_adapter_free", lk_status, [lk_adapter_p])

# enum { LK_LORA_INIT_PEFT = 0, LK_LORA_INIT_GAUSSIAN = 1, LK_LORA_INIT_RANDOM = 2 };
LK_LORA_INIT_PEFT = 0
LK_LORA_INIT_GAUSSIAN = 1
LK_LORA_INIT_RANDOM = 2


# typedef struct lk_lora_params {
#     uint32_t struct_size; int32_t rank; float alpha; int32_t use_rslora; const char *targets;
#     float dropout; int32_t init; uint64_t seed;
#     const char *adapter_type; const char *adapter_config;
# } lk_lora_params;
class lk_lora_params(Structure):
    _fields_ = [
        ("struct_size", c_uint32), ("rank", c_int32), ("alpha", c_float), ("use_rslora", c_int32),
        ("targets", c_char_p), ("dropout", c_float), ("init", c_int32), ("seed", c_uint64),
        ("adapter_type", c_char_p), ("adapter_config", c_char_p),
    ]


# void lk_lora_params_init_sized(lk_lora_params *p, size_t size);
_fn("lk_lora_params_init_sized", None, [POINTER(lk_lora_params), c_size_t])
# void lk_lora_params_init(lk_lora_params *p);   (the struct's first version; the header's macro of that
# name calls lk_lora_params_init_sized)
_fn("lk_lora_params_init", None, [POINTER(lk_lora_params)])

# lk_status lk_adapter_create(lk_model *model, const lk_lora_params *params, lk_adapter **out);
_fn("lk_adapter_create", lk_status, [lk_model_p, POINTER(lk_lora_params), POINTER(lk_adapter_p)])

# enum { LK_ADAPTER_PEFT = 0, LK_ADAPTER_GGUF = 1 };
LK_ADAPTER_PEFT = 0
LK_ADAPTER_GGUF = 1

# lk_status lk_adapter_save(const lk_adapter *adapter, const char *path, int32_t format);
_fn("lk_adapter_save", lk_status, [lk_adapter_p, c_char_p, c_int32])

# lk_status lk_context_attach_adapter(lk_context *ctx, lk_adapter *adapter, float scale);
_fn("lk_context_attach_adapter", lk_status, [lk_context_p, lk_adapter_p, c_float])

# lk_status lk_context_detach_adapter(lk_context *ctx, lk_adapter *adapter);
_fn("lk_context_detach_adapter", lk_status, [lk_context_p, lk_adapter_p])

# lk_status lk_context_set_adapter_scale(lk_context *ctx, lk_adapter *adapter, float scale);
_fn("lk_context_set_adapter_scale", lk_status, [lk_context_p, lk_adapter_p, c_float])

# lk_status lk_context_detach_all(lk_context *ctx);
_fn("lk_context_detach_all", lk_status, [lk_context_p])

# lk_status lk_model_merge_to_file(lk_model *model, lk_adapter *const *adapters, const float *scales, int32_t n,
#                                  int32_t out_type, const char *path);
_fn("lk_model_merge_to_file", lk_status,
    [lk_model_p, POINTER(lk_adapter_p), POINTER(c_float), c_int32, c_int32, c_char_p])

# ---------------------------------------------------------------------------------------------------
# Adapter plugins
# ---------------------------------------------------------------------------------------------------

# typedef struct lk_plugin lk_plugin;   (opaque: handled as void *)
lk_plugin_p = c_void_p

# lk_status lk_plugin_load(const char *path, lk_plugin **out);
_fn("lk_plugin_load", lk_status, [c_char_p, POINTER(lk_plugin_p)])

# lk_status lk_plugin_free(lk_plugin *plugin);
_fn("lk_plugin_free", lk_status, [lk_plugin_p])

# lk_status lk_plugin_info_json(const lk_plugin *plugin, char *buf, int64_t capacity, int64_t *needed);
_fn("lk_plugin_info_json", lk_status, [lk_plugin_p, c_void_p, c_int64, POINTER(c_int64)])

# lk_status lk_plugins_json(int32_t load_search_path, char *buf, int64_t capacity, int64_t *needed);
_fn("lk_plugins_json", lk_status, [c_int32, c_void_p, c_int64, POINTER(c_int64)])

# ---------------------------------------------------------------------------------------------------
# Multimodal projectors
# ---------------------------------------------------------------------------------------------------

# typedef struct lk_projector lk_projector;   (opaque: handled as void *)
lk_projector_p = c_void_p

# lk_status lk_projector_create(lk_model *model, int64_t in_features, uint64_t seed, lk_projector **out);
_fn("lk_projector_create", lk_status, [lk_model_p, c_int64, c_uint64, POINTER(lk_projector_p)])

# lk_status lk_projector_load(lk_model *model, const char *path, lk_projector **out);
_fn("lk_projector_load", lk_status, [lk_model_p, c_char_p, POINTER(lk_projector_p)])

# lk_status lk_projector_save(lk_projector *projector, const char *path);
_fn("lk_projector_save", lk_status, [lk_projector_p, c_char_p])

# lk_status lk_projector_free(lk_projector *projector);
_fn("lk_projector_free", lk_status, [lk_projector_p])

# lk_status lk_projector_info(const lk_projector *projector, int64_t *in_features, int64_t *width);
_fn("lk_projector_info", lk_status, [lk_projector_p, POINTER(c_int64), POINTER(c_int64)])

# lk_status lk_projector_forward(lk_projector *projector, const float *features, int64_t n_rows,
#                                float *out, int64_t capacity);
_fn("lk_projector_forward", lk_status, [lk_projector_p, POINTER(c_float), c_int64, POINTER(c_float), c_int64])

# lk_status lk_projector_backward(lk_projector *projector, const float *features, int64_t n_rows,
#                                 const float *d_out, int64_t n_d_out);
_fn("lk_projector_backward", lk_status, [lk_projector_p, POINTER(c_float), c_int64, POINTER(c_float), c_int64])

# lk_status lk_model_token_embeddings(const lk_model *model, const int32_t *tokens, int64_t n_tokens,
#                                     float *out, int64_t capacity);
_fn("lk_model_token_embeddings", lk_status, [lk_model_p, POINTER(c_int32), c_int64, POINTER(c_float), c_int64])

# ---------------------------------------------------------------------------------------------------
# LoRA training
# ---------------------------------------------------------------------------------------------------

# typedef struct lk_trainer lk_trainer;   (opaque: handled as void *)
lk_trainer_p = c_void_p

# enum { LK_SCHEDULE_CONSTANT = 0, LK_SCHEDULE_LINEAR = 1, LK_SCHEDULE_COSINE = 2 };
LK_SCHEDULE_CONSTANT = 0
LK_SCHEDULE_LINEAR = 1
LK_SCHEDULE_COSINE = 2
# enum { LK_TRUNCATE_CUT = 0, LK_TRUNCATE_ERROR = 1 };
LK_TRUNCATE_CUT = 0
LK_TRUNCATE_ERROR = 1


# typedef struct lk_train_params {
#     uint32_t struct_size; int32_t rank; float alpha; int32_t use_rslora; const char *targets;
#     const int32_t *layers; int32_t n_layers; float dropout; int32_t init;
#     double lr; double weight_decay; double max_grad_norm; int32_t schedule; int32_t warmup_steps;
#     int32_t steps; int32_t batch; double epochs; int32_t seq; int32_t grad_accum; uint64_t seed;
#     int32_t threads; int32_t shuffle; int32_t completion_only_loss; int32_t packing;
#     int32_t save_every; int32_t keep; int32_t valid_every; int32_t format;
#     const char *out_dir; const char *resume_dir; const char *init_adapter; const char *log_path;
#     double adam_beta1; double adam_beta2; double adam_epsilon; int32_t truncate; double lr_min_ratio;
#     lk_projector *projector; const char *adapter_type; const char *adapter_config; lk_dtype kept_activations;
# } lk_train_params;
class lk_train_params(Structure):
    _fields_ = [
        ("struct_size", c_uint32), ("rank", c_int32), ("alpha", c_float), ("use_rslora", c_int32),
        ("targets", c_char_p), ("layers", POINTER(c_int32)), ("n_layers", c_int32), ("dropout", c_float),
        ("init", c_int32), ("lr", c_double), ("weight_decay", c_double), ("max_grad_norm", c_double),
        ("schedule", c_int32), ("warmup_steps", c_int32), ("steps", c_int32), ("batch", c_int32),
        ("epochs", c_double), ("seq", c_int32), ("grad_accum", c_int32), ("seed", c_uint64),
        ("threads", c_int32), ("shuffle", c_int32), ("completion_only_loss", c_int32), ("packing", c_int32),
        ("save_every", c_int32), ("keep", c_int32), ("valid_every", c_int32), ("format", c_int32),
        ("out_dir", c_char_p), ("resume_dir", c_char_p), ("init_adapter", c_char_p), ("log_path", c_char_p),
        ("adam_beta1", c_double), ("adam_beta2", c_double), ("adam_epsilon", c_double), ("truncate", c_int32),
        ("lr_min_ratio", c_double),
        ("projector", lk_projector_p), ("adapter_type", c_char_p), ("adapter_config", c_char_p),
        ("kept_activations", c_int32),
    ]


# void lk_train_params_init_sized(lk_train_params *p, size_t size);
_fn("lk_train_params_init_sized", None, [POINTER(lk_train_params), c_size_t])
# void lk_train_params_init(lk_train_params *p);   (the struct's first version; the header's macro of that
# name calls lk_train_params_init_sized)
_fn("lk_train_params_init", None, [POINTER(lk_train_params)])


# typedef struct lk_train_progress {
#     uint32_t struct_size; int64_t step; int64_t total_steps; double loss; double lr; double grad_norm;
#     double tokens_per_s; int64_t tokens; int64_t predicted; double epoch; double elapsed_s; double valid_loss;
# } lk_train_progress;
class lk_train_progress(Structure):
    _fields_ = [
        ("struct_size", c_uint32), ("step", c_int64), ("total_steps", c_int64), ("loss", c_double),
        ("lr", c_double), ("grad_norm", c_double), ("tokens_per_s", c_double), ("tokens", c_int64),
        ("predicted", c_int64), ("epoch", c_double), ("elapsed_s", c_double), ("valid_loss", c_double),
    ]


# typedef int32_t (*lk_train_callback)(const lk_train_progress *progress, void *user_data);
lk_train_callback = CFUNCTYPE(c_int32, POINTER(lk_train_progress), c_void_p)

# lk_status lk_trainer_create(lk_model *model, const char *train_path, const char *valid_path,
#                             const lk_train_params *params, lk_trainer **out);
_fn("lk_trainer_create", lk_status,
    [lk_model_p, c_char_p, c_char_p, POINTER(lk_train_params), POINTER(lk_trainer_p)])

# lk_status lk_trainer_free(lk_trainer *trainer);
_fn("lk_trainer_free", lk_status, [lk_trainer_p])

# lk_status lk_trainer_step(lk_trainer *trainer, lk_train_progress *progress);
_fn("lk_trainer_step", lk_status, [lk_trainer_p, POINTER(lk_train_progress)])

# lk_status lk_trainer_run(lk_trainer *trainer, lk_train_callback callback, void *user_data,
#                          lk_train_progress *last);
_fn("lk_trainer_run", lk_status, [lk_trainer_p, lk_train_callback, c_void_p, POINTER(lk_train_progress)])

# lk_status lk_trainer_validation_loss(lk_trainer *trainer, double *loss);
_fn("lk_trainer_validation_loss", lk_status, [lk_trainer_p, POINTER(c_double)])

# lk_status lk_trainer_save_checkpoint(lk_trainer *trainer);
_fn("lk_trainer_save_checkpoint", lk_status, [lk_trainer_p])

# lk_status lk_trainer_adapter(lk_trainer *trainer, lk_adapter **out);
_fn("lk_trainer_adapter", lk_status, [lk_trainer_p, POINTER(lk_adapter_p)])

# lk_status lk_trainer_steps(lk_trainer *trainer, int64_t *steps_done, int64_t *total_steps);
_fn("lk_trainer_steps", lk_status, [lk_trainer_p, POINTER(c_int64), POINTER(c_int64)])

# lk_status lk_trainer_zero_grad(lk_trainer *trainer);
_fn("lk_trainer_zero_grad", lk_status, [lk_trainer_p])

# lk_status lk_trainer_forward_backward(lk_trainer *trainer, const int32_t *tokens, const uint8_t *is_target,
#                                       int64_t n_tokens, const float *prefix, int64_t n_prefix,
#                                       float loss_scale, double *sum_nll, int64_t *predicted,
#                                       float *input_grad, int64_t input_grad_capacity);
_fn("lk_trainer_forward_backward", lk_status,
    [lk_trainer_p, POINTER(c_int32), POINTER(ctypes.c_uint8), c_int64, POINTER(c_float), c_int64, c_float,
     POINTER(c_double), POINTER(c_int64), POINTER(c_float), c_int64])

# lk_status lk_trainer_forward_backward_batch(lk_trainer *trainer, int64_t n_seqs, const int32_t *tokens,
#                                             const uint8_t *is_target, const int64_t *n_tokens,
#                                             const float *prefix, const int64_t *n_prefix, float loss_scale,
#                                             double *sum_nll, int64_t *predicted, float *input_grad,
#                                             int64_t input_grad_capacity);
_fn("lk_trainer_forward_backward_batch", lk_status,
    [lk_trainer_p, c_int64, POINTER(c_int32), POINTER(ctypes.c_uint8), POINTER(c_int64), POINTER(c_float),
     POINTER(c_int64), c_float, POINTER(c_double), POINTER(c_int64), POINTER(c_float), c_int64])

# lk_status lk_trainer_optimizer_step(lk_trainer *trainer, double lr, double *grad_norm);
_fn("lk_trainer_optimizer_step", lk_status, [lk_trainer_p, c_double, POINTER(c_double)])

# int64_t lk_sizeof_model_params(void);
_fn("lk_sizeof_model_params", c_int64, [])
# int64_t lk_sizeof_model_info(void);
_fn("lk_sizeof_model_info", c_int64, [])
# int64_t lk_sizeof_context_params(void);
_fn("lk_sizeof_context_params", c_int64, [])
# int64_t lk_sizeof_sampler_params(void);
_fn("lk_sizeof_sampler_params", c_int64, [])
# int64_t lk_sizeof_generate_params(void);
_fn("lk_sizeof_generate_params", c_int64, [])
# int64_t lk_sizeof_generate_result(void);
_fn("lk_sizeof_generate_result", c_int64, [])
# int64_t lk_sizeof_chat_message(void);
_fn("lk_sizeof_chat_message", c_int64, [])
# int64_t lk_sizeof_lora_params(void);
_fn("lk_sizeof_lora_params", c_int64, [])
# int64_t lk_sizeof_train_params(void);
_fn("lk_sizeof_train_params", c_int64, [])
# int64_t lk_sizeof_train_progress(void);
_fn("lk_sizeof_train_progress", c_int64, [])

# ---------------------------------------------------------------------------------------------------
# Batch contexts
# ---------------------------------------------------------------------------------------------------

lk_batch_p = c_void_p

# lk_status lk_batch_new(lk_model *model, int32_t max_sequences, int32_t n_ctx, int32_t n_threads,
#                        lk_batch **out);
_fn("lk_batch_new", lk_status, [lk_model_p, c_int32, c_int32, c_int32, POINTER(lk_batch_p)])


# typedef struct lk_batch_params {
#     uint32_t struct_size;
#     int32_t max_sequences;
#     int32_t n_ctx;
#     int32_t n_threads;
#     lk_dtype kv_type;
# } lk_batch_params;
class lk_batch_params(Structure):
    _fields_ = [("struct_size", c_uint32), ("max_sequences", c_int32), ("n_ctx", c_int32), ("n_threads", c_int32),
                ("kv_type", lk_dtype)]


# void lk_batch_params_init_sized(lk_batch_params *p, size_t size);
_fn("lk_batch_params_init_sized", None, [POINTER(lk_batch_params), c_size_t])
# void lk_batch_params_init(lk_batch_params *p);   (the struct's first version; the header's macro of that
# name calls lk_batch_params_init_sized)
_fn("lk_batch_params_init", None, [POINTER(lk_batch_params)])
# int64_t lk_sizeof_batch_params(void);
_fn("lk_sizeof_batch_params", c_int64, [])
# lk_status lk_batch_new_with_params(lk_model *model, const lk_batch_params *params, lk_batch **out);
_fn("lk_batch_new_with_params", lk_status, [lk_model_p, POINTER(lk_batch_params), POINTER(lk_batch_p)])

# lk_status lk_batch_free(lk_batch *batch);
_fn("lk_batch_free", lk_status, [lk_batch_p])

# lk_status lk_batch_add_sequence(lk_batch *batch, int32_t *seq);
_fn("lk_batch_add_sequence", lk_status, [lk_batch_p, POINTER(c_int32)])

# lk_status lk_batch_remove_sequence(lk_batch *batch, int32_t seq);
_fn("lk_batch_remove_sequence", lk_status, [lk_batch_p, c_int32])

# lk_status lk_batch_fork(lk_batch *batch, int32_t seq, int32_t *new_seq);
_fn("lk_batch_fork", lk_status, [lk_batch_p, c_int32, POINTER(c_int32)])

# lk_status lk_batch_truncate(lk_batch *batch, int32_t seq, int32_t position);
_fn("lk_batch_truncate", lk_status, [lk_batch_p, c_int32, c_int32])

# lk_status lk_batch_position(const lk_batch *batch, int32_t seq, int32_t *position);
_fn("lk_batch_position", lk_status, [lk_batch_p, c_int32, POINTER(c_int32)])

# lk_status lk_batch_sequences(const lk_batch *batch, int32_t *seqs, int64_t capacity, int64_t *count);
_fn("lk_batch_sequences", lk_status, [lk_batch_p, POINTER(c_int32), c_int64, POINTER(c_int64)])

# lk_status lk_batch_set_adapters(lk_batch *batch, int32_t seq, lk_adapter *const *adapters,
#                                 const float *scales, int64_t n_adapters);
_fn("lk_batch_set_adapters", lk_status, [lk_batch_p, c_int32, POINTER(lk_adapter_p), POINTER(c_float), c_int64])

# lk_status lk_batch_step(lk_batch *batch, int64_t n_seqs, const int32_t *seqs, const int32_t *tokens,
#                         const int64_t *n_tokens, float *logits, int64_t capacity);
_fn("lk_batch_step", lk_status,
    [lk_batch_p, c_int64, POINTER(c_int32), POINTER(c_int32), POINTER(c_int64), POINTER(c_float), c_int64])

# Each ctypes Structure beside the library's lk_sizeof_*() (checked at import, and by the tests).
STRUCTS = {
    "lk_model_params": (lk_model_params, "lk_sizeof_model_params"),
    "lk_model_info": (lk_model_info, "lk_sizeof_model_info"),
    "lk_context_params": (lk_context_params, "lk_sizeof_context_params"),
    "lk_batch_params": (lk_batch_params, "lk_sizeof_batch_params"),
    "lk_sampler_params": (lk_sampler_params, "lk_sizeof_sampler_params"),
    "lk_generate_params": (lk_generate_params, "lk_sizeof_generate_params"),
    "lk_generate_result": (lk_generate_result, "lk_sizeof_generate_result"),
    "lk_chat_message": (lk_chat_message, "lk_sizeof_chat_message"),
    "lk_lora_params": (lk_lora_params, "lk_sizeof_lora_params"),
    "lk_train_params": (lk_train_params, "lk_sizeof_train_params"),
    "lk_train_progress": (lk_train_progress, "lk_sizeof_train_progress"),
}

# Every function declared in lorakit.h, in header order (the tests check each is reachable).
FUNCTIONS = (
    "lk_abi_version", "lk_version_string", "lk_last_error", "lk_clear_error", "lk_status_string", "lk_dtype_name",
    "lk_dtype_info", "lk_cpu_count", "lk_set_default_threads", "lk_get_default_threads", "lk_tensor_new",
    "lk_tensor_from_f32", "lk_tensor_convert", "lk_tensor_free", "lk_tensor_shape", "lk_tensor_dtype",
    "lk_tensor_size", "lk_tensor_copy_to_f32", "lk_tensor_copy_bytes", "lk_matmul", "lk_model_params_init_sized",
    "lk_model_params_init", "lk_model_load", "lk_model_free", "lk_model_get_info", "lk_model_architecture",
    "lk_model_chat_template", "lk_model_meta", "lk_tokenize", "lk_detokenize", "lk_token_bytes", "lk_chat_apply",
    "lk_model_chat_limit",
    "lk_context_params_init_sized", "lk_context_params_init", "lk_context_new", "lk_context_free",
    "lk_context_reset", "lk_context_position", "lk_context_eval", "lk_context_eval_embeddings",
    "lk_sampler_params_init_sized", "lk_sampler_params_init", "lk_generate_params_init_sized",
    "lk_generate_params_init", "lk_generate", "lk_string_free", "lk_adapter_load", "lk_adapter_free",
    "lk_lora_params_init_sized", "lk_lora_params_init", "lk_adapter_create", "lk_adapter_save",
    "lk_context_attach_adapter", "lk_context_detach_adapter", "lk_context_set_adapter_scale",
    "lk_context_detach_all", "lk_model_merge_to_file", "lk_plugin_load", "lk_plugin_free", "lk_plugin_info_json",
    "lk_plugins_json", "lk_projector_create", "lk_projector_load",
    "lk_projector_save", "lk_projector_free", "lk_projector_info", "lk_projector_forward",
    "lk_projector_backward", "lk_model_token_embeddings", "lk_train_params_init_sized", "lk_train_params_init",
    "lk_trainer_create", "lk_trainer_free", "lk_trainer_step", "lk_trainer_run", "lk_trainer_validation_loss",
    "lk_trainer_save_checkpoint", "lk_trainer_adapter", "lk_trainer_steps", "lk_trainer_zero_grad",
    "lk_trainer_forward_backward", "lk_trainer_forward_backward_batch", "lk_trainer_optimizer_step", "lk_sizeof_model_params", "lk_sizeof_model_info",
    "lk_sizeof_context_params", "lk_sizeof_sampler_params", "lk_sizeof_generate_params",
    "lk_sizeof_generate_result", "lk_sizeof_chat_message", "lk_sizeof_lora_params", "lk_sizeof_train_params",
    "lk_sizeof_train_progress", "lk_batch_new", "lk_batch_params_init_sized", "lk_batch_params_init",
    "lk_sizeof_batch_params", "lk_batch_new_with_params", "lk_batch_free", "lk_batch_add_sequence",
    "lk_batch_remove_sequence", "lk_batch_fork", "lk_batch_truncate", "lk_batch_position", "lk_batch_sequences",
    "lk_batch_set_adapters", "lk_batch_step",
)

_abi = lib.lk_abi_version()
if _abi != ABI_VERSION:
    raise ImportError(
        f"lorakit: {path} has C ABI version {_abi}, but this binding was written for ABI {ABI_VERSION} "
        "(LK_ABI_VERSION in lorakit.h). Use the binding from the same LoRAKit checkout as the library."
    )

for _name, (_struct, _sizeof) in STRUCTS.items():
    _lib_size = getattr(lib, _sizeof)()
    if ctypes.sizeof(_struct) != _lib_size:
        raise ImportError(
            f"lorakit: {path} says sizeof({_name}) is {_lib_size}, but this binding's ctypes mirror has "
            f"{ctypes.sizeof(_struct)} bytes. Use the binding from the same LoRAKit checkout as the library."
        )

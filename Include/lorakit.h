/*
 * lorakit.h — the C API of LoRAKit (liblorakit.so).
 *
 * This header is the single source of truth for the ABI. Bindings (bindings/python/lorakit/_lib.py)
 * mirror it one to one and check lk_abi_version() and lk_sizeof_*() at import.
 *
 * Conventions
 * - Every fallible function returns lk_status: LK_OK (0) on success, a negative code on error, a
 *   positive code for a non-fatal outcome (e.g. stopped by a callback). Results come back through
 *   out-parameters, which are written only on success.
 * - On error, lk_last_error() returns a message naming what was wrong (argument, file, tensor, field,
 *   expected vs got). The message is thread-local and stays valid until the next failing call on the
 *   same thread.
 * - Handles are opaque. Passing NULL, a freed handle or a handle of another kind returns
 *   LK_ERR_INVALID_HANDLE; it never crashes. Freeing NULL is a no-op.
 * - Params structs start with uint32_t struct_size, are filled by lk_<x>_params_init(&p), and only ever
 *   grow at the end. lk_<x>_params_init(p) is a macro for lk_<x>_params_init_sized(p, sizeof(lk_<x>_params)),
 *   which writes defaults into the first `size` bytes only and sets struct_size = size (clamped to this
 *   library's struct; a size below the struct's first version writes nothing), so a program built
 *   against an older header (a smaller struct) is safe with a newer library. The function named
 *   lk_<x>_params_init is kept for programs built before the macro: it fills the struct's first version
 *   (call it as (lk_<x>_params_init)(p) to bypass the macro). The library reads only the fields that
 *   struct_size covers:
 *     - a struct from an older header (smaller, but at least the struct's first version): fields it
 *       lacks take their defaults;
 *     - a struct from a newer header (larger): the fields this library knows are read, the rest ignored;
 *     - struct_size smaller than the struct's first version (e.g. 0: not initialized) or above 4096
 *       (garbage): LK_ERR_ABI, naming the struct and the size.
 *   A params pointer may be NULL for all defaults.
 * - Info/result structs (lk_model_info, lk_generate_result, lk_train_progress) are written only up to
 *   the caller's struct_size (set it to sizeof(the struct)); struct_size itself is not changed; the same
 *   bounds apply.
 *   lk_sizeof_<struct>() returns the size this library was built with (equal to sizeof in this header).
 * - Strings returned in caller buffers (buf, capacity, needed): *needed (required) receives the size
 *   including the NUL, also when the buffer is too small (LK_ERR_BUFFER_TOO_SMALL, buf untouched). buf
 *   may be NULL when capacity is 0, to ask for the size. Text arguments must be valid UTF-8.
 * - Flags documented as 0/1 (parse_special, skip_special, add_generation_prompt) reject other values;
 *   stop_at_eos is a C boolean (non-zero = true).
 * - Sizes are int64_t; negative sizes and sizes whose product overflows are rejected.
 *
 * Thread safety
 * - Functions not tied to a handle (version, status strings, lk_last_error, thread defaults) may be
 *   called from any thread.
 * - Models are immutable after load: every model, tokenizer and chat function may run concurrently on
 *   one model from any number of threads.
 * - A context is used by one thread at a time. Using one context from two threads at once, or from
 *   inside lk_generate's callback on that context, fails with LK_ERR_INVALID_ARGUMENT ("in use") instead
 *   of racing. Different contexts (on one model or several) run concurrently.
 * - A trainer is used by one thread at a time, like a context ("in use" otherwise, also from inside
 *   lk_trainer_run's callback); trainers and contexts of one model run concurrently.
 * - Tensors: read-only functions (shape, dtype, copy_to_f32, matmul inputs) may run concurrently on the
 *   same tensor; a function that writes a tensor (matmul output) must not run concurrently with any
 *   other use of that tensor.
 */
#ifndef LORAKIT_H
#define LORAKIT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#  define LK_API __declspec(dllimport)
#else
#  define LK_API __attribute__((visibility("default")))
#endif

/* The ABI version this header describes. lk_abi_version() returns the library's. */
#define LK_ABI_VERSION 1

/* ---------------------------------------------------------------------------------------------------
 * Status codes
 * ------------------------------------------------------------------------------------------------- */
typedef int32_t lk_status;
enum {
    LK_OK = 0,
    LK_STOPPED = 1,                 /* non-fatal: a callback asked to stop */
    LK_ERR_INVALID_ARGUMENT = -1,   /* NULL pointer, negative size, out-of-range value, NaN */
    LK_ERR_INVALID_HANDLE = -2,     /* NULL, freed, or foreign handle */
    LK_ERR_SHAPE = -3,              /* shapes or dtypes do not fit together */
    LK_ERR_UNSUPPORTED = -4,        /* valid request for something not supported */
    LK_ERR_IO = -5,                 /* cannot open, read, write or rename a file */
    LK_ERR_FORMAT = -6,             /* malformed file content */
    LK_ERR_OUT_OF_MEMORY = -7,      /* allocation failed or would exceed a sane limit */
    LK_ERR_ABI = -8,                /* ABI version or struct size mismatch */
    LK_ERR_BUFFER_TOO_SMALL = -9,   /* a caller buffer is too small; the needed size was returned */
    LK_ERR_LIMIT = -10,             /* a configured limit (time, work, memory, size) was reached */
    LK_ERR_INTERNAL = -100          /* a bug in LoRAKit: please report it with lk_last_error() */
};

/* ---------------------------------------------------------------------------------------------------
 * Element types (values are stable; quantized types are byte-identical to ggml's blocks)
 * ------------------------------------------------------------------------------------------------- */
typedef int32_t lk_dtype;
enum {
    LK_DTYPE_F32 = 0,
    LK_DTYPE_F16 = 1,
    LK_DTYPE_BF16 = 2,
    LK_DTYPE_Q8_0 = 3,  /* blocks of 32: f16 d, int8 q[32]            (34 bytes) */
    LK_DTYPE_Q4_0 = 4,  /* blocks of 32: f16 d, uint8 q[16]           (18 bytes) */
    LK_DTYPE_Q4_1 = 5   /* blocks of 32: f16 d, f16 m, uint8 q[16]    (20 bytes) */
};

/* ---------------------------------------------------------------------------------------------------
 * Library
 * ------------------------------------------------------------------------------------------------- */

/* The library's ABI version (compare with LK_ABI_VERSION). */
LK_API int32_t lk_abi_version(void);

/* Library version, e.g. "0.1.0". Static string: do not free. */
LK_API const char *lk_version_string(void);

/* Message of the last failing call on this thread ("" if none). Thread-local; valid until the next
 * failing call on this thread. Do not free. */
LK_API const char *lk_last_error(void);

/* Clear this thread's last error. */
LK_API void lk_clear_error(void);

/* A short English name for a status code ("ok", "invalid argument", ...). Static: do not free. */
LK_API const char *lk_status_string(lk_status status);

/* Name of a dtype ("f32", "q4_1", ...), or NULL for an unknown value. Static: do not free. */
LK_API const char *lk_dtype_name(lk_dtype dtype);

/* Number of values per block (1 for f32/f16/bf16, 32 for the quantized types) and bytes per block.
 * Errors: LK_ERR_INVALID_ARGUMENT for an unknown dtype or NULL out-pointers. */
LK_API lk_status lk_dtype_info(lk_dtype dtype, int64_t *block_size, int64_t *block_bytes);

/* Number of online CPU cores. */
LK_API int32_t lk_cpu_count(void);

/* Threads used by calls that take no context (tensor ops below). Default: lk_cpu_count().
 * n_threads must be in 1...512. Changing it while another thread runs a tensor op is allowed; that op
 * keeps the pool it started with. */
LK_API lk_status lk_set_default_threads(int32_t n_threads);
LK_API int32_t lk_get_default_threads(void);

/* ---------------------------------------------------------------------------------------------------
 * Tensors: n-dimensional arrays (row-major, outermost dimension first, as PyTorch writes shapes).
 * Quantized tensors store blocks along the last dimension, which must be a multiple of the block size.
 * ------------------------------------------------------------------------------------------------- */
typedef struct lk_tensor lk_tensor;

#define LK_MAX_DIMS 8

/* A new zero-filled tensor. shape: n_dims (1...LK_MAX_DIMS) non-negative sizes.
 * Ownership: *out belongs to the caller; release it with lk_tensor_free. */
LK_API lk_status lk_tensor_new(lk_dtype dtype, int32_t n_dims, const int64_t *shape, lk_tensor **out);

/* A new tensor of `dtype` holding `data` (n_values f32 values, which must equal the shape's element
 * count), converted/quantized as llama.cpp's reference quantizers do. data is copied. */
LK_API lk_status lk_tensor_from_f32(const float *data, int64_t n_values, lk_dtype dtype, int32_t n_dims,
                                    const int64_t *shape, lk_tensor **out);

/* A new tensor converted to another dtype (quantize, dequantize or cast). */
LK_API lk_status lk_tensor_convert(const lk_tensor *t, lk_dtype dtype, lk_tensor **out);

/* Release a tensor. NULL is a no-op; a freed or foreign handle returns LK_ERR_INVALID_HANDLE. */
LK_API lk_status lk_tensor_free(lk_tensor *t);

/* Number of dimensions, and the shape into shape[0..capacity) (capacity >= n_dims, else
 * LK_ERR_BUFFER_TOO_SMALL with *n_dims set to the needed capacity). shape may be NULL with capacity 0
 * to ask for n_dims only. */
LK_API lk_status lk_tensor_shape(const lk_tensor *t, int32_t *n_dims, int64_t *shape, int32_t capacity);

LK_API lk_status lk_tensor_dtype(const lk_tensor *t, lk_dtype *dtype);

/* Number of elements and bytes of storage. */
LK_API lk_status lk_tensor_size(const lk_tensor *t, int64_t *n_elements, int64_t *n_bytes);

/* Copy the values out as f32 (dequantizing). capacity is the number of floats dst can hold; if it is
 * smaller than the element count, returns LK_ERR_BUFFER_TOO_SMALL and writes nothing. */
LK_API lk_status lk_tensor_copy_to_f32(const lk_tensor *t, float *dst, int64_t capacity);

/* Copy the raw storage bytes (e.g. ggml blocks). Same capacity rule as above, in bytes. */
LK_API lk_status lk_tensor_copy_bytes(const lk_tensor *t, void *dst, int64_t capacity);

/* ---------------------------------------------------------------------------------------------------
 * Tensor ops (use lk_get_default_threads() threads)
 * ------------------------------------------------------------------------------------------------- */

/* out = x · wᵀ (transpose_w != 0, the forward of a linear layer: x [M, K], w [N, K], out [M, N]) or
 * out = x · w (transpose_w == 0: x [M, K], w [K, N], out [M, N]).
 * x and out are f32, 2-D; w is 2-D in any dtype. out must already exist with the right shape; it is
 * overwritten. out must not be x or w. */
LK_API lk_status lk_matmul(const lk_tensor *x, const lk_tensor *w, int32_t transpose_w, lk_tensor *out);

/* ---------------------------------------------------------------------------------------------------
 * Models: loaded once, immutable, shared read-only by any number of contexts and threads.
 * A GGUF file (llama.cpp) or a Hugging Face folder (config.json + *.safetensors [+ tokenizer.json]).
 * ------------------------------------------------------------------------------------------------- */
typedef struct lk_model lk_model;
typedef struct lk_context lk_context;

typedef struct lk_model_params {
    uint32_t struct_size;   /* set by lk_model_params_init */
    int32_t reserved;       /* must be 0 (LK_ERR_INVALID_ARGUMENT otherwise) */
} lk_model_params;

/* Fill *p with defaults (and struct_size): see "Params structs" above. */
LK_API void lk_model_params_init_sized(lk_model_params *p, size_t size);
LK_API void lk_model_params_init(lk_model_params *p);
#define lk_model_params_init(p) lk_model_params_init_sized((p), sizeof(lk_model_params))

/* Load a model. params may be NULL for defaults. Weights of a GGUF file are memory-mapped and used in
 * place (quantized blocks are never expanded). path: NUL-terminated UTF-8.
 * Errors: LK_ERR_IO (cannot open, or a folder without config.json), LK_ERR_FORMAT (malformed file),
 * LK_ERR_UNSUPPORTED (architecture, tensor type).
 * Ownership: *out belongs to the caller; release with lk_model_free. Contexts (and adapters) created
 * from the model keep its weights alive until they are freed, so lk_model_free may be called first. */
LK_API lk_status lk_model_load(const char *path, const lk_model_params *params, lk_model **out);

/* Release the caller's handle. NULL is a no-op; a freed or foreign handle is LK_ERR_INVALID_HANDLE. */
LK_API lk_status lk_model_free(lk_model *model);

typedef struct lk_model_info {
    uint32_t struct_size;     /* caller sets sizeof(lk_model_info); fields past it are not written */
    int32_t n_vocab;
    int32_t n_ctx_train;      /* training context length */
    int32_t n_embd;
    int32_t n_ff;
    int32_t n_layer;
    int32_t n_head;
    int32_t n_head_kv;
    int32_t head_dim;
    int32_t n_rot;            /* rotated dims per head */
    float rope_base;
    float norm_eps;
    int32_t tied_embeddings;  /* 1 if the output head is the token embedding */
    int32_t bos_token;        /* -1 if none */
    int32_t eos_token;        /* -1 if none */
    int32_t eot_token;        /* end-of-turn token, -1 if none */
    int32_t has_tokenizer;
    int32_t has_chat_template;
    int64_t weight_bytes;     /* bytes of weights as stored */
} lk_model_info;

/* Fill *info (up to info->struct_size). bos/eos/eot come from the tokenizer (-1 without one). */
LK_API lk_status lk_model_get_info(const lk_model *model, lk_model_info *info);

/* Strings out of a model, copied into buf (NUL-terminated) when capacity suffices; *needed receives the
 * size including the NUL either way. capacity too small → LK_ERR_BUFFER_TOO_SMALL (buf untouched).
 * lk_model_chat_template: LK_ERR_UNSUPPORTED if the model has none (has_chat_template == 0).
 * lk_model_meta: a GGUF metadata value as text: integers in decimal, floats in their shortest
 * round-tripping form ("1e-05", "100000.0"), booleans "true"/"false", strings raw (unquoted), arrays as
 * compact JSON (floats shortest, strings escaped); LK_ERR_INVALID_ARGUMENT naming the key if absent. */
LK_API lk_status lk_model_architecture(const lk_model *model, char *buf, int64_t capacity, int64_t *needed);
LK_API lk_status lk_model_chat_template(const lk_model *model, char *buf, int64_t capacity, int64_t *needed);
LK_API lk_status lk_model_meta(const lk_model *model, const char *key, char *buf, int64_t capacity, int64_t *needed);

/* ---------------------------------------------------------------------------------------------------
 * Tokenizer (the model's own; identical ids to Hugging Face tokenizers)
 * ------------------------------------------------------------------------------------------------- */

/* Tokenize text_len bytes of UTF-8 text (text need not be NUL-terminated).
 * add_special: -1 = BOS/EOS as the model's metadata says, 0 = neither, 1 = BOS always (if the model has
 * one) and EOS as the metadata says.
 * parse_special: 1 = special-token text such as "<|im_start|>" becomes its id (Hugging Face default),
 * 0 = plain text. *n_tokens receives the count; if capacity < count → LK_ERR_BUFFER_TOO_SMALL (tokens
 * untouched). tokens may be NULL when capacity is 0. text may be NULL when text_len is 0; invalid UTF-8
 * is LK_ERR_INVALID_ARGUMENT. A model without a tokenizer (has_tokenizer == 0): LK_ERR_UNSUPPORTED here
 * and in every tokenizer function below. */
LK_API lk_status lk_tokenize(const lk_model *model, const char *text, int64_t text_len, int32_t add_special,
                             int32_t parse_special, int32_t *tokens, int64_t capacity, int64_t *n_tokens);

/* Text of n tokens (UTF-8, NUL-terminated; same buffer rules as above). Out-of-range ids are errors.
 * skip_special = 1 leaves out control/special tokens. Bytes that do not form UTF-8 become U+FFFD. */
LK_API lk_status lk_detokenize(const lk_model *model, const int32_t *tokens, int64_t n_tokens, int32_t skip_special,
                               char *buf, int64_t capacity, int64_t *needed);

/* The raw bytes of one token (may be part of a UTF-8 sequence; not NUL-terminated). *needed = byte count. */
LK_API lk_status lk_token_bytes(const lk_model *model, int32_t token, char *buf, int64_t capacity, int64_t *needed);

typedef struct lk_chat_message {
    const char *role;     /* "system", "user", "assistant", ... */
    const char *content;
} lk_chat_message;

/* Render messages with the model's chat template (as transformers' apply_chat_template(messages,
 * tokenize=False, add_generation_prompt)); the template also sees bos_token and eos_token. messages may
 * be NULL when n_messages is 0; role and content must be non-NULL UTF-8. NUL-terminated output in buf.
 * LK_ERR_UNSUPPORTED without a chat template; LK_ERR_FORMAT for a template error while rendering (or a template
 * that does not parse: the model still loads); LK_ERR_LIMIT when the render exceeds a limit (lk_model_chat_limit);
 * LK_ERR_INVALID_ARGUMENT when the template calls raise_exception. The message names the model's path. */
LK_API lk_status lk_chat_apply(const lk_model *model, const lk_chat_message *messages, int64_t n_messages,
                               int32_t add_generation_prompt, char *buf, int64_t capacity, int64_t *needed);

/* Limits on rendering a model's chat template (lk_chat_apply, and training on {"messages"} data). The template
 * comes with the model file, so it is untrusted code: each render runs under a budget. A render that would
 * exceed a resource limit fails with LK_ERR_LIMIT, one exceeding a structural limit (loop iterations, nesting)
 * with LK_ERR_FORMAT like any template error; lk_last_error() names the model, the place in the template and
 * the limit. The model stays usable. The defaults are far above what real chat templates use. */
typedef int32_t lk_chat_limit;
enum {
    LK_CHAT_LIMIT_OUTPUT_BYTES = 0,     /* bytes of rendered text (default 64 MiB) */
    LK_CHAT_LIMIT_ALLOCATED_BYTES = 1,  /* bytes of strings and lists built during a render (default 1 GiB) */
    LK_CHAT_LIMIT_LOOP_ITERATIONS = 2,  /* for-loop iterations per render (default 1000000) */
    LK_CHAT_LIMIT_STEPS = 3,            /* units of work per render (default 100000000) */
    LK_CHAT_LIMIT_RECURSION_DEPTH = 4,  /* nesting of statements, expressions and macro calls (default 200, at most 1000) */
    LK_CHAT_LIMIT_VALUE_DEPTH = 5,      /* nesting of lists and dicts (default 100, at most 1000) */
    LK_CHAT_LIMIT_MILLISECONDS = 6,     /* wall-clock time per render (default 10000) */
    LK_CHAT_LIMIT_TEMPLATE_BYTES = 7    /* template size, checked when the template is first parsed (default 1 MiB) */
};

/* Read, and optionally change, one chat-template limit of a model (as sqlite3_limit). *old_value (may be NULL)
 * receives the value in force before the call; new_value > 0 replaces it for later renders on any thread,
 * new_value == -1 only reads. Any other new_value, a depth over 1000, or an unknown limit: LK_ERR_INVALID_ARGUMENT
 * naming the limit, and nothing changes. Thread-safe. */
LK_API lk_status lk_model_chat_limit(lk_model *model, lk_chat_limit limit, int64_t new_value, int64_t *old_value);

/* ---------------------------------------------------------------------------------------------------
 * Contexts: a KV cache, a thread pool and sampler state over a shared model. One context is used by
 * one thread at a time; different contexts may run concurrently on one model.
 * ------------------------------------------------------------------------------------------------- */
typedef struct lk_context_params {
    uint32_t struct_size;
    int32_t n_ctx;        /* positions (prompt + generated), 0...n_ctx_train; 0 = min(n_ctx_train, 4096) */
    int32_t n_batch;      /* tokens per internal step, 0...65536; 0 = 512 */
    int32_t n_threads;    /* 0...512; 0 = lk_cpu_count() */
    /* Added after the first version (a struct_size that ends before it: its default applies). */
    lk_dtype kv_type;     /* KV cache element type: LK_DTYPE_F32 (default; exact) or LK_DTYPE_F16 (half the
                             memory and half the bytes a decoded token reads; keys and values rounded to
                             f16 as they are stored, as llama.cpp's default cache) */
} lk_context_params;

LK_API void lk_context_params_init_sized(lk_context_params *p, size_t size);
LK_API void lk_context_params_init(lk_context_params *p);
#define lk_context_params_init(p) lk_context_params_init_sized((p), sizeof(lk_context_params))

/* Ownership: *out belongs to the caller (lk_context_free); it keeps the model alive. params may be NULL.
 * The KV cache takes n_ctx · n_layer · 2 · n_head_kv · head_dim · 4 bytes of address space (2 with
 * kv_type LK_DTYPE_F16, plus 2 · n_ctx · n_head_kv · head_dim · 4 bytes of prefill scratch), touched as
 * positions are used. */
LK_API lk_status lk_context_new(lk_model *model, const lk_context_params *params, lk_context **out);
LK_API lk_status lk_context_free(lk_context *ctx);

/* Forget all positions (start a new sequence). */
LK_API lk_status lk_context_reset(lk_context *ctx);

/* Positions currently cached. */
LK_API lk_status lk_context_position(const lk_context *ctx, int32_t *position);

enum { LK_LOGITS_NONE = 0, LK_LOGITS_LAST = 1, LK_LOGITS_ALL = 2 };

/* Evaluate n tokens (n ≥ 1) at the next positions. logits_mode LAST writes n_vocab floats, ALL
 * n·n_vocab (row-major), NONE nothing (logits may be NULL). capacity is in floats; a too-small capacity
 * is LK_ERR_BUFFER_TOO_SMALL before anything is evaluated. On error the cache is left as it was (e.g.
 * an out-of-range id or a context overflow: n > n_ctx - position is LK_ERR_INVALID_ARGUMENT). */
LK_API lk_status lk_context_eval(lk_context *ctx, const int32_t *tokens, int64_t n_tokens, int32_t logits_mode,
                                 float *logits, int64_t capacity);

/* As lk_context_eval with caller-given input embeddings [n_rows, n_embd] instead of token ids (e.g.
 * projected image features). Non-finite values are rejected. */
LK_API lk_status lk_context_eval_embeddings(lk_context *ctx, const float *embeddings, int64_t n_rows,
                                            int32_t logits_mode, float *logits, int64_t capacity);

/* ---------------------------------------------------------------------------------------------------
 * Generation
 * ------------------------------------------------------------------------------------------------- */
typedef struct lk_sampler_params {
    uint32_t struct_size;
    float temperature;      /* 0 = greedy; default 0.8 */
    int32_t top_k;          /* 0 = off; default 40 */
    float top_p;            /* 1 = off; default 0.95 */
    float min_p;            /* 0 = off; default 0.05 */
    float repeat_penalty;   /* 1 = off; default 1 */
    int32_t repeat_last_n;  /* 0 = all; default 64 */
    uint64_t seed;          /* default 0 */
} lk_sampler_params;

LK_API void lk_sampler_params_init_sized(lk_sampler_params *p, size_t size);
LK_API void lk_sampler_params_init(lk_sampler_params *p);
#define lk_sampler_params_init(p) lk_sampler_params_init_sized((p), sizeof(lk_sampler_params))

/* Streaming callback: piece is new text (complete UTF-8, never empty; text that could begin a stop
 * string is held back), piece_len bytes, not NUL-terminated; the pointer is valid only during the call.
 * token is the id that completed the piece. Return 0 to continue, non-zero to stop (lk_generate then
 * returns LK_STOPPED); after a non-zero return the callback is not called again. The concatenated pieces
 * equal text_out, except after a stop by the callback, where text_out also holds text held back so far.
 * The callback must not use the context being generated on (LK_ERR_INVALID_ARGUMENT: in use). */
typedef int32_t (*lk_token_callback)(const char *piece, int64_t piece_len, int32_t token, void *user_data);

typedef struct lk_generate_params {
    uint32_t struct_size;
    int32_t max_tokens;                /* default 128 */
    const lk_sampler_params *sampler;  /* NULL = defaults; borrowed for the call */
    const char *const *stop;           /* n_stop stop strings (borrowed, UTF-8), may be NULL if n_stop is 0 */
    int32_t n_stop;                    /* 0...1024; an empty stop string never matches */
    int32_t stop_at_eos;               /* default 1 */
    lk_token_callback callback;        /* may be NULL */
    void *user_data;
} lk_generate_params;

LK_API void lk_generate_params_init_sized(lk_generate_params *p, size_t size);
LK_API void lk_generate_params_init(lk_generate_params *p);
#define lk_generate_params_init(p) lk_generate_params_init_sized((p), sizeof(lk_generate_params))

enum { LK_STOP_EOS = 0, LK_STOP_STRING = 1, LK_STOP_LENGTH = 2, LK_STOP_CALLBACK = 3, LK_STOP_CONTEXT = 4 };

typedef struct lk_generate_result {
    uint32_t struct_size;      /* caller sets sizeof(lk_generate_result) */
    int32_t n_prompt_tokens;
    int32_t n_tokens;          /* generated (may exceed tokens_capacity; only capacity are written) */
    int32_t stop_reason;       /* LK_STOP_* */
    double prefill_seconds;
    double decode_seconds;
} lk_generate_result;

/* Generate after n_prompt (≥ 1) prompt tokens (appended to what the context holds). Generation stops at
 * max_tokens, at the model's end-of-generation tokens (if stop_at_eos), when the text contains a stop
 * string (not included in the output), when the callback asks, or when the context is full. Everything
 * (params, sampler values, stop strings, buffers, result->struct_size, prompt ids) is validated before
 * the first evaluation. A model without a tokenizer generates token ids only (empty text, no callback).
 * text_out (may be NULL): receives a NUL-terminated UTF-8 string the caller frees with lk_string_free.
 * tokens_out (may be NULL if tokens_capacity is 0): the first tokens_capacity generated ids (an EOS
 * that ended generation included). result (may be NULL): written up to result->struct_size.
 * Returns LK_OK, LK_STOPPED if the callback stopped generation (outputs are still written), or an
 * error. */
LK_API lk_status lk_generate(lk_context *ctx, const int32_t *prompt, int64_t n_prompt, const lk_generate_params *params,
                             char **text_out, int32_t *tokens_out, int64_t tokens_capacity, lk_generate_result *result);

/* Free a string returned by the library (it is malloc'ed: free() is equivalent). NULL is a no-op. */
LK_API void lk_string_free(char *s);

/* ---------------------------------------------------------------------------------------------------
 * LoRA adapters. An adapter is made for one model (the lk_model it was loaded or created with) and
 * holds a strong reference to it (lk_model_free may be called first). It is immutable: it may be
 * attached to many contexts of that model at once, and used from any thread.
 * Thread safety: attach/detach/set_scale/detach_all use the context (one thread at a time, "in use"
 * otherwise, as lk_context_eval); load, create, save and merge may run concurrently.
 * ------------------------------------------------------------------------------------------------- */
typedef struct lk_adapter lk_adapter;

/* Load a LoRA adapter for `model`: a PEFT folder (adapter_config.json + adapter_model.safetensors) or a
 * llama.cpp GGUF LoRA file. A PEFT folder of another type (peft_type other than LORA, or LORA with
 * use_dora) is an adapter of the plugin type that owns it (see "Adapter plugins"; the search path is
 * loaded if no loaded plugin owns it; none: LK_ERR_UNSUPPORTED naming the peft_type and the plugin that
 * would serve it). Plugin adapters attach, detach, set_scale, save (LK_ADAPTER_PEFT only) and merge
 * (lk_model_merge_to_file; LK_ERR_UNSUPPORTED for a type without merge) like LoRA adapters. It is checked against the model (layers, widths, every A/B shape, finite
 * values). Errors: LK_ERR_IO (cannot open), LK_ERR_FORMAT (malformed file, naming file and field),
 * LK_ERR_SHAPE (made for a model of other sizes, naming layer, module and tensor), LK_ERR_UNSUPPORTED.
 * Ownership: *out belongs to the caller (lk_adapter_free); it keeps the model alive. */
LK_API lk_status lk_adapter_load(lk_model *model, const char *path, lk_adapter **out);

/* Release the caller's handle. NULL is a no-op; a freed or foreign handle is LK_ERR_INVALID_HANDLE.
 * An adapter attached to contexts stays alive (and attached) until it is detached from them
 * (lk_context_detach_all; lk_context_detach_adapter needs the handle, so detach first) or those
 * contexts are freed. */
LK_API lk_status lk_adapter_free(lk_adapter *adapter);

enum { LK_LORA_INIT_PEFT = 0, LK_LORA_INIT_GAUSSIAN = 1, LK_LORA_INIT_RANDOM = 2 };

typedef struct lk_lora_params {
    uint32_t struct_size;  /* set by lk_lora_params_init */
    int32_t rank;          /* 1...4096; default 8 */
    float alpha;           /* finite, > 0; default 16. Scaling s = alpha/rank (alpha/sqrt(rank) with rsLoRA) */
    int32_t use_rslora;    /* 0 or 1; default 0 */
    const char *targets;   /* comma-separated modules: "q,k,v,o,gate,up,down" (also "q_proj", "attn_q"), or
                              "all-linear"; NULL = "q,v" (default). Borrowed for the call. */
    float dropout;         /* [0, 1); default 0 (stored in the adapter; not used at inference) */
    int32_t init;          /* LK_LORA_INIT_PEFT (default: A uniform(±1/sqrt(in)), B = 0, so ΔW = 0),
                              LK_LORA_INIT_GAUSSIAN (A ~ N(0, 1/rank), B = 0), LK_LORA_INIT_RANDOM (A and B
                              both random, ΔW != 0: for tests) */
    uint64_t seed;         /* random seed; default 0 */
    /* Added after the first version (a struct_size that ends before them: their defaults apply). */
    const char *adapter_type;   /* NULL (default): a LoRA adapter. Else the name of a plugin adapter type
                                   ("ia3", "dora", ...: a loaded plugin's, else one on the search path; an
                                   unknown name is LK_ERR_INVALID_ARGUMENT listing the loaded types): a new
                                   adapter of that type on targets (every layer), with rank, alpha and
                                   use_rslora as PEFT's r, lora_alpha, use_rslora for a LORA-based type (DoRA),
                                   parameters from the type's own initialisation and seed; init must be
                                   LK_LORA_INIT_PEFT and dropout 0. Borrowed for the call. */
    const char *adapter_config; /* NULL (default), or a JSON object of PEFT config fields for adapter_type,
                                   set over those derived from the fields above (e.g. {"target_modules":
                                   ["k_proj", "v_proj", "down_proj"], "feedforward_modules": ["down_proj"]},
                                   {"layers_to_transform": [0, 1]}); IA3 without feedforward_modules gets PEFT's
                                   LLaMA default (down_proj when targeted). Borrowed for the call. */
} lk_lora_params;

LK_API void lk_lora_params_init_sized(lk_lora_params *p, size_t size);
LK_API void lk_lora_params_init(lk_lora_params *p);
#define lk_lora_params_init(p) lk_lora_params_init_sized((p), sizeof(lk_lora_params))

/* A new adapter for `model` (every layer, the target modules). params may be NULL for defaults. With
 * params->adapter_type set, an adapter of that plugin type (saved as LK_ADAPTER_PEFT only).
 * Errors: LK_ERR_INVALID_ARGUMENT naming the field. Ownership as lk_adapter_load. */
LK_API lk_status lk_adapter_create(lk_model *model, const lk_lora_params *params, lk_adapter **out);

enum { LK_ADAPTER_PEFT = 0, LK_ADAPTER_GGUF = 1 };

/* Save an adapter: format LK_ADAPTER_PEFT writes a folder `path` (created if needed) with
 * adapter_config.json + adapter_model.safetensors, loadable by PEFT's PeftModel.from_pretrained;
 * LK_ADAPTER_GGUF writes a llama.cpp GGUF LoRA file. Files are written atomically. */
LK_API lk_status lk_adapter_save(const lk_adapter *adapter, const char *path, int32_t format);

/* Attach `adapter` to `ctx` with multiplier `scale`: every module it has adds scale · s · B(A x). The
 * adapter must have been loaded/created for ctx's model (the same lk_model load; otherwise
 * LK_ERR_INVALID_ARGUMENT). scale must be finite (NaN/Inf: LK_ERR_INVALID_ARGUMENT); attaching an
 * adapter that is already attached to ctx is LK_ERR_INVALID_ARGUMENT (use lk_context_set_adapter_scale).
 * On error nothing changes. Cached positions are kept (they were computed without the adapter: call
 * lk_context_reset to re-evaluate). The context holds the adapter until it is detached or ctx is freed. */
LK_API lk_status lk_context_attach_adapter(lk_context *ctx, lk_adapter *adapter, float scale);

/* Detach an attached adapter (LK_ERR_INVALID_ARGUMENT if it is not attached to ctx). Other adapters keep
 * their order and scales. */
LK_API lk_status lk_context_detach_adapter(lk_context *ctx, lk_adapter *adapter);

/* Change the multiplier of an attached adapter (finite; 0 disables it without detaching). On error
 * nothing changes. */
LK_API lk_status lk_context_set_adapter_scale(lk_context *ctx, lk_adapter *adapter, float scale);

/* Detach every adapter from ctx (also those whose handle was already freed). */
LK_API lk_status lk_context_detach_all(lk_context *ctx);

/* Write model's GGUF file with W + Σ scales[i] · s_i · B_i·A_i folded into every weight the n (≥ 1)
 * adapters touch, to `path` (atomically): all metadata (tokenizer included) and other tensors are
 * copied as they are. The model must have been loaded from a GGUF file (else LK_ERR_UNSUPPORTED).
 * adapters: n distinct adapters made for `model`; scales: n finite floats. out_type: LK_DTYPE_F32,
 * LK_DTYPE_F16, LK_DTYPE_Q8_0, or -1 = the base weight's own type (re-quantized after merging). Load the
 * result with lk_model_load. */
LK_API lk_status lk_model_merge_to_file(lk_model *model, lk_adapter *const *adapters, const float *scales, int32_t n,
                                        int32_t out_type, const char *path);

/* ---------------------------------------------------------------------------------------------------
 * Adapter plugins: shared libraries that add adapter types (DoRA, IA³, ...), written against
 * lorakit_plugin.h (the plugin ABI; guide: examples/plugins/README.md). A loaded plugin stays loaded until
 * process exit (its code may run in any model, adapter, context or trainer); its types are registered
 * for the whole process. Plugins are also found on the search path: every folder (or file) of the
 * environment variable LORAKIT_PLUGIN_PATH (colon-separated), then the shipped plugins' folder
 * (.build/plugins in a build tree, <prefix>/lib/lorakit/plugins when installed). lk_adapter_load loads the
 * search path when a PEFT folder's adapter_config.json names a type no loaded plugin owns.
 * Thread safety: every function may be called from any thread (loads are serialised).
 * ------------------------------------------------------------------------------------------------- */
typedef struct lk_plugin lk_plugin;

/* Load the plugin at `path` (dlopen RTLD_NOW | RTLD_LOCAL) and register its adapter types. Loading a
 * file that is already loaded (the same file by its canonical path) returns that plugin again.
 * Errors name the file: LK_ERR_IO (missing, a folder, unreadable: dlerror's text), LK_ERR_FORMAT (a file
 * that is no loadable library), LK_ERR_ABI (another plugin ABI major, a table smaller than its first
 * version: both sides' values named), LK_ERR_INVALID_ARGUMENT (no entry
 * symbol lkp_entry; an adapter type already registered, naming the plugin that registered it; a type
 * declared twice, badly named or without a required function), the entry's own status with the
 * plugin's message copied (e.g. LK_ERR_UNSUPPORTED). On error nothing is registered.
 * Ownership: *out belongs to the caller (lk_plugin_free releases the handle; the plugin stays loaded). */
LK_API lk_status lk_plugin_load(const char *path, lk_plugin **out);

/* Release a handle from lk_plugin_load (the plugin stays loaded). NULL is a no-op; a freed or foreign
 * handle is LK_ERR_INVALID_HANDLE. */
LK_API lk_status lk_plugin_free(lk_plugin *plugin);

/* One plugin as compact JSON: {"path", "name", "version", "abi": [major, minor], "types": [{"name",
 * "description", "peft_type", "peft_flag" (string or null), "key_suffixes": [...], "merge": bool,
 * "train": bool}, ...]}. String protocol as lk_model_chat_template. */
LK_API lk_status lk_plugin_info_json(const lk_plugin *plugin, char *buf, int64_t capacity, int64_t *needed);

/* Every loaded plugin as a JSON array of lk_plugin_info_json objects, in load order. With
 * load_search_path = 1 the search path is loaded first (once per process; plugins that fail to load
 * there are skipped and listed as {"error": "..."} entries after the loaded ones); 0 lists what is loaded.
 * String protocol as lk_model_chat_template. */
LK_API lk_status lk_plugins_json(int32_t load_search_path, char *buf, int64_t capacity, int64_t *needed);

/* ---------------------------------------------------------------------------------------------------
 * Multimodal projectors: feature vectors (e.g. image patches from a frozen encoder) mapped into a model's
 * embedding space, to be placed among the text's embedding rows (lk_context_eval_embeddings, the
 * trainer's prefix rows). The kind is LLaVA-1.5's mlp2x_gelu: y = W2 · gelu(W0 · x + b0) + b2 with
 * W0 [n_embd, in_features], W2 [n_embd, n_embd] and the exact (erf) GELU. Files are GGUF with
 * llama.cpp's LLaVA projector names (mm.0.weight, mm.0.bias, mm.2.weight, mm.2.bias) and keys
 * (clip.projector_type "mlp", clip.vision.projection_dim = n_embd), plus lorakit.projector.input_width.
 * Thread safety: lk_projector_forward may run concurrently on one projector; lk_projector_backward and
 * a trainer's lk_trainer_zero_grad / lk_trainer_optimizer_step (which update the projector given in its
 * lk_train_params) need exclusive use of it.
 * ------------------------------------------------------------------------------------------------- */
typedef struct lk_projector lk_projector;

/* A new projector from in_features (1...65536) to model's embedding width, initialised as PyTorch's
 * nn.Linear (uniform in ±1/sqrt(fan_in)) from seed. Ownership: *out belongs to the caller
 * (lk_projector_free). */
LK_API lk_status lk_projector_create(lk_model *model, int64_t in_features, uint64_t seed, lk_projector **out);

/* Read a projector file, checked as strictly as a model file (keys, the four tensors and no others, shapes
 * against the declared widths, finite f32/f16 values) and refused unless its output width is model's
 * embedding width (LK_ERR_SHAPE). Errors name the file. Ownership as lk_projector_create. */
LK_API lk_status lk_projector_load(lk_model *model, const char *path, lk_projector **out);

/* Write the projector as GGUF (f32), atomically (temporary file, then rename). */
LK_API lk_status lk_projector_save(lk_projector *projector, const char *path);

/* Release the caller's handle. NULL is a no-op; a freed or foreign handle is LK_ERR_INVALID_HANDLE. A
 * trainer given the projector keeps using it. */
LK_API lk_status lk_projector_free(lk_projector *projector);

/* in_features and the output width (the model's n_embd). Either pointer may be NULL. */
LK_API lk_status lk_projector_info(const lk_projector *projector, int64_t *in_features, int64_t *width);

/* out [n_rows, width] = the projector applied to features [n_rows, in_features] (finite values).
 * capacity: floats in out (at least n_rows · width, else LK_ERR_BUFFER_TOO_SMALL). n_rows may be 0 (nothing
 * is written). */
LK_API lk_status lk_projector_forward(lk_projector *projector, const float *features, int64_t n_rows,
                                      float *out, int64_t capacity);

/* Backward of lk_projector_forward for the same features: adds to the projector's parameter gradients the
 * product with d_out [n_rows, width] = dLoss/d(the rows it produced), e.g. the trainer's input gradient
 * of those rows (lk_trainer_forward_backward). n_d_out: floats in d_out (n_rows · width; another count is
 * LK_ERR_INVALID_ARGUMENT). The gradients are
 * zeroed by lk_trainer_zero_grad of the trainer that trains the projector. */
LK_API lk_status lk_projector_backward(lk_projector *projector, const float *features, int64_t n_rows,
                                       const float *d_out, int64_t n_d_out);

/* The input embedding rows [n_tokens, n_embd] (f32) of token ids, as the first layer sees them (for
 * mixing text with caller-made rows in lk_context_eval_embeddings or a trainer's prefix). capacity: floats
 * in out (at least n_tokens · n_embd, else LK_ERR_BUFFER_TOO_SMALL). n_tokens may be 0 (nothing is
 * written). Token ids outside the vocabulary are LK_ERR_INVALID_ARGUMENT. */
LK_API lk_status lk_model_token_embeddings(const lk_model *model, const int32_t *tokens, int64_t n_tokens,
                                           float *out, int64_t capacity);

/* ---------------------------------------------------------------------------------------------------
 * LoRA training. A trainer trains one new (or loaded) LoRA adapter of a model on a JSONL file:
 * tokenization, batches, forward/backward, gradient clipping, AdamW, learning-rate schedule, validation,
 * checkpoints (crash-safe; resumable with identical losses) and a JSONL log. Deterministic: the same
 * params and data give the same losses for any thread count.
 *
 * Data (train_path, valid_path): JSON Lines, one object per line, one of
 *   {"text": "..."}                                      every token but the first is a target;
 *   {"prompt": "...", "completion": "..."}               completion tokens (+ EOS) are targets;
 *   {"messages": [{"role": "...", "content": "..."}, ...]}  rendered with the model's chat template;
 *                                                        assistant turns are targets.
 * (completion_only_loss = 0 makes every token but the first a target.) Examples longer than seq keep
 * their first seq tokens (truncate = LK_TRUNCATE_ERROR refuses them); packing = 1 concatenates examples
 * into rows of seq tokens.
 *
 * A step's loss is Σ NLL of its predicted tokens / their number (over grad_accum micro-batches of batch
 * examples), computed before its update; its gradient is that loss's gradient.
 *
 * Output folder (out_dir): out_dir/checkpoint-<step>/ (PEFT adapter + optimizer state + trainer state),
 * out_dir/latest (the newest checkpoint's name; the `keep` newest are kept), and after lk_trainer_run the
 * final adapter: out_dir/adapter/ (format LK_ADAPTER_PEFT, loadable by PEFT) or out_dir/adapter.gguf
 * (LK_ADAPTER_GGUF). Every file is written atomically.
 *
 * A trainer holds a strong reference to its model (lk_model_free may be called first). Thread safety:
 * a trainer is used by one thread at a time; using it from two threads at once, or from inside
 * lk_trainer_run's callback, fails with LK_ERR_INVALID_ARGUMENT ("in use"). Different trainers (on one
 * model or several) and contexts of the same model run concurrently.
 * ------------------------------------------------------------------------------------------------- */
typedef struct lk_trainer lk_trainer;

enum { LK_SCHEDULE_CONSTANT = 0, LK_SCHEDULE_LINEAR = 1, LK_SCHEDULE_COSINE = 2 };
/* lk_train_params.truncate */
enum { LK_TRUNCATE_CUT = 0, LK_TRUNCATE_ERROR = 1 };

typedef struct lk_train_params {
    uint32_t struct_size;          /* set by lk_train_params_init */
    /* The new adapter (ignored, except dropout, when init_adapter is set). */
    int32_t rank;                  /* 1...4096; default 8 */
    float alpha;                   /* finite, > 0; default 16 (s = alpha/rank, alpha/sqrt(rank) with rsLoRA) */
    int32_t use_rslora;            /* 0 or 1; default 0 */
    const char *targets;           /* as lk_lora_params.targets; NULL = "q,v" */
    const int32_t *layers;         /* n_layers layer indices that get an adapter; NULL (n_layers 0) = all */
    int32_t n_layers;              /* 0...4096 */
    float dropout;                 /* LoRA dropout on the adapter inputs, [0, 1); default 0 */
    int32_t init;                  /* LK_LORA_INIT_*; default LK_LORA_INIT_PEFT (B = 0) */
    /* Optimizer (AdamW; betas and eps at the end) and schedule. */
    double lr;                     /* peak learning rate, finite, in (0, 10]; default 2e-4 */
    double weight_decay;           /* finite, >= 0; default 0.01 */
    double max_grad_norm;          /* clip the global gradient norm to this; 0 = off; default 1 */
    int32_t schedule;              /* LK_SCHEDULE_*; default CONSTANT (transformers' schedules) */
    int32_t warmup_steps;          /* >= 0; default 0 (step 1 of a warm-up has lr 0) */
    /* Length. */
    int32_t steps;                 /* optimizer steps, 0...100000000; 0 (default) = from epochs */
    int32_t batch;                 /* examples per micro-batch, 1...65536; default 4 */
    double epochs;                 /* passes over the data when steps is 0: finite, in (0, 1e6]; default 1 */
    int32_t seq;                   /* tokens per example (longer ones are cut), 2...1048576; default 512 */
    int32_t grad_accum;            /* micro-batches per optimizer step, 1...65536; default 1 */
    uint64_t seed;                 /* data order, adapter initialization, dropout; default 0 */
    int32_t threads;               /* 0...512; 0 (default) = lk_cpu_count() */
    int32_t shuffle;               /* 0 or 1: shuffle the examples every epoch; default 1 */
    int32_t completion_only_loss;  /* 0 or 1: only completions / assistant turns are targets; default 1 */
    int32_t packing;               /* 0 or 1: pack examples into rows of seq tokens; default 0 */
    /* Output. */
    int32_t save_every;            /* checkpoint every this many steps, >= 0; 0 (default) = only at the end */
    int32_t keep;                  /* checkpoints kept, >= 1; default 2 */
    int32_t valid_every;           /* validate every this many steps, >= 0; 0 (default) = at the last step */
    int32_t format;                /* final adapter: LK_ADAPTER_PEFT (default) or LK_ADAPTER_GGUF */
    const char *out_dir;           /* NULL (default): nothing is written */
    const char *resume_dir;        /* continue from the latest checkpoint in this folder (usually out_dir) */
    const char *init_adapter;      /* start from this adapter (PEFT folder or GGUF LoRA) instead of a new one */
    const char *log_path;          /* append one JSON object per step to this file (opened at the first step) */
    /* Added after the first version (a struct_size that ends before them: their defaults apply). */
    double adam_beta1;             /* AdamW beta1 (transformers' adam_beta1), in [0, 1); default 0.9 */
    double adam_beta2;             /* AdamW beta2, in [0, 1); default 0.999 */
    double adam_epsilon;           /* AdamW eps, finite, > 0; default 1e-8 */
    int32_t truncate;              /* examples longer than seq: LK_TRUNCATE_CUT (default: keep their first seq
                                      tokens) or LK_TRUNCATE_ERROR (refuse them, naming the file and line) */
    double lr_min_ratio;           /* LK_SCHEDULE_COSINE decays to lr * lr_min_ratio instead of 0 (transformers'
                                      cosine_with_min_lr, min_lr_rate), in [0, 1]; other schedules: 0; default 0 */
    lk_projector *projector;       /* NULL (default), or a projector trained with the adapter by a trainer
                                      without training data (train_path NULL): AdamW updates it, zero_grad
                                      zeroes its gradients, checkpoints hold it (projector.gguf) and resume
                                      restores it. The trainer keeps it alive. */
    const char *adapter_type;      /* NULL (default): train LoRA. Else a plugin adapter type ("ia3", "dora", ...)
                                      trained the same way (AdamW, schedules, accumulation, checkpoints, exact
                                      resume): a new adapter as lk_lora_params.adapter_type describes (targets,
                                      layers, rank, alpha, use_rslora, seed), or init_adapter when it is a PEFT
                                      folder of a plugin type (adapter_type NULL or its name). dropout must be 0,
                                      init LK_LORA_INIT_PEFT, format LK_ADAPTER_PEFT; lk_trainer_adapter returns
                                      an adapter of the type. */
    const char *adapter_config;    /* as lk_lora_params.adapter_config (needs adapter_type) */
    lk_dtype kept_activations;     /* how the activations each layer's backward reads (queries, keys, values,
                                      attention output, gate and up products, ...) are kept between its forward
                                      and backward: LK_DTYPE_F32 (default; gradients as PEFT's in f32) or
                                      LK_DTYPE_F16 (rounded to f16: about half the activation memory, losses
                                      unchanged, gradients within f16 rounding, relative ~1e-3) */
} lk_train_params;

/* Fill *p with defaults (and struct_size): see "Params structs" above. The function named
 * lk_train_params_init fills the first version (up to log_path). */
LK_API void lk_train_params_init_sized(lk_train_params *p, size_t size);
LK_API void lk_train_params_init(lk_train_params *p);
#define lk_train_params_init(p) lk_train_params_init_sized((p), sizeof(lk_train_params))

/* What a step reports. Result struct: written up to the caller's struct_size (set it to
 * sizeof(lk_train_progress)). To the callback it is passed with struct_size = the library's size. */
typedef struct lk_train_progress {
    uint32_t struct_size;
    int64_t step;                  /* steps done, 1-based (the first step reports 1) */
    int64_t total_steps;
    double loss;                   /* the step's loss, before its update */
    double lr;                     /* learning rate of the step's update */
    double grad_norm;              /* global gradient norm before clipping */
    double tokens_per_s;           /* input tokens of the step / its wall time */
    int64_t tokens;                /* input tokens of the step */
    int64_t predicted;             /* target tokens of the step (the loss's denominator) */
    double epoch;                  /* epochs done (fractional) */
    double elapsed_s;              /* seconds since the trainer's first step */
    double valid_loss;             /* validation loss computed after this step; NaN when none was */
} lk_train_progress;

/* Progress callback of lk_trainer_run, called after every step (after its validation, log line and
 * checkpoint). `progress` is valid only during the call. Return 0 to continue, non-zero to stop. The
 * callback must not use the trainer (LK_ERR_INVALID_ARGUMENT: in use). */
typedef int32_t (*lk_train_callback)(const lk_train_progress *progress, void *user_data);

/* Load the data, create the adapter (or load init_adapter) and, with resume_dir, restore the latest
 * checkpoint there (the step, adapter, optimizer state and data position). Nothing is written yet.
 * train_path: JSONL, or NULL for a trainer without training data, driven by the low-level calls
 * (lk_trainer_forward_backward, below); valid_path: JSONL or NULL. params may be NULL for defaults.
 * Errors: LK_ERR_INVALID_ARGUMENT naming the params field; LK_ERR_IO (a missing file, naming it);
 * LK_ERR_FORMAT (malformed data, naming the file and its line numbers); LK_ERR_SHAPE (init_adapter or a
 * checkpoint made for another model). Ownership: *out belongs to the caller (lk_trainer_free); it keeps
 * the model alive. */
LK_API lk_status lk_trainer_create(lk_model *model, const char *train_path, const char *valid_path,
                                   const lk_train_params *params, lk_trainer **out);

/* Release the trainer. NULL is a no-op; a freed or foreign handle is LK_ERR_INVALID_HANDLE. Nothing is
 * saved (call lk_trainer_save_checkpoint first to keep the state). Adapters from lk_trainer_adapter
 * stay valid. */
LK_API lk_status lk_trainer_free(lk_trainer *trainer);

/* One step of lk_trainer_run: one optimizer step, then the validation, log line and periodic checkpoint
 * due after it (no final adapter: see lk_trainer_run). progress (may be NULL) is written up to its
 * struct_size. When all total_steps are done: LK_ERR_INVALID_ARGUMENT. A step whose loss or gradient is
 * not finite fails (LK_ERR_INVALID_ARGUMENT naming the step) without updating the adapter; checkpoints
 * on disk stay as they were. */
LK_API lk_status lk_trainer_step(lk_trainer *trainer, lk_train_progress *progress);

/* Train to total_steps: steps as lk_trainer_step, the callback (may be NULL) after each; then, with an
 * out_dir, a last checkpoint and the final adapter. Returns LK_OK, or LK_STOPPED when the callback asked
 * to stop (the checkpoint and final adapter are still written), or an error (a failing step leaves the
 * checkpoints on disk as they were). last (may be NULL): the progress of the last step this call ran
 * (when it ran none: step and total_steps, and NaN/0 elsewhere). */
LK_API lk_status lk_trainer_run(lk_trainer *trainer, lk_train_callback callback, void *user_data,
                                lk_train_progress *last);

/* Mean NLL over every target token of the validation data (valid_path), with the current adapter.
 * LK_ERR_INVALID_ARGUMENT when the trainer has no validation data. */
LK_API lk_status lk_trainer_validation_loss(lk_trainer *trainer, double *loss);

/* Write a checkpoint of the current state into out_dir (LK_ERR_INVALID_ARGUMENT without an out_dir). */
LK_API lk_status lk_trainer_save_checkpoint(lk_trainer *trainer);

/* A new adapter handle holding a copy of the current adapter values (later steps do not change it), for
 * lk_context_attach_adapter, lk_adapter_save, lk_model_merge_to_file with the trainer's model.
 * Ownership as lk_adapter_load. */
LK_API lk_status lk_trainer_adapter(lk_trainer *trainer, lk_adapter **out);

/* Steps done so far (including those restored by resume_dir) and the total. Either pointer may be NULL. */
LK_API lk_status lk_trainer_steps(lk_trainer *trainer, int64_t *steps_done, int64_t *total_steps);

/* Low-level training, for callers that make their own sequences (e.g. projected image features as
 * prefix rows before text tokens). A trainer created with train_path NULL has no training data and is
 * driven by these three calls (lk_trainer_step and lk_trainer_run refuse it); a trainer with training
 * data refuses them. Everything else works for both: valid_path and lk_trainer_validation_loss,
 * lk_trainer_save_checkpoint, resume_dir, lk_trainer_adapter, lk_trainer_steps (total_steps is
 * params->steps). One optimizer step over sequences with N predicted tokens in all:
 *     lk_trainer_zero_grad(t);
 *     for each sequence: lk_trainer_forward_backward(t, ..., 1.0f / N, ...);
 *     lk_trainer_optimizer_step(t, lr, &grad_norm);
 * is the update lk_trainer_step makes for the same rows; the step's loss is Σ sum_nll / N. */

/* Set the adapter gradients to zero. */
LK_API lk_status lk_trainer_zero_grad(lk_trainer *trainer);

/* Forward and backward of one sequence: n_prefix caller-given input rows (prefix: [n_prefix, n_embd] f32,
 * finite; may be NULL when n_prefix is 0) followed by n_tokens token ids; 1 <= n_prefix + n_tokens <= the
 * model's context length. Token j is a target (predicted from the rows before it) when is_target[j] is 1
 * (0: not; is_target NULL: every token); token 0 can be predicted only after a prefix.
 * Adds d(loss_scale · Σ NLL)/dθ to the adapter gradients (loss_scale finite: 1/N for the mean over the
 * N predicted tokens of a step). Outputs, each may be NULL: *sum_nll = Σ NLL of the predicted tokens
 * (natural log), *predicted = their number, input_grad = d(loss_scale · Σ NLL)/d(input rows)
 * [(n_prefix + n_tokens), n_embd] (token rows: with respect to their embedding rows), where
 * input_grad_capacity (floats) must hold them (else LK_ERR_BUFFER_TOO_SMALL before anything runs).
 * Dropout masks are keyed by (seed, step, call within the step). On error the gradients may hold a
 * partial sum: zero them before the next step. */
LK_API lk_status lk_trainer_forward_backward(lk_trainer *trainer, const int32_t *tokens, const uint8_t *is_target,
                                             int64_t n_tokens, const float *prefix, int64_t n_prefix,
                                             float loss_scale, double *sum_nll, int64_t *predicted,
                                             float *input_grad, int64_t input_grad_capacity);

/* Forward and backward of n_seqs sequences in one pass (1 <= n_seqs <= 65536): sequence s has n_prefix[s]
 * prefix rows and n_tokens[s] tokens (each as in lk_trainer_forward_backward; n_prefix may be NULL: no
 * prefixes). tokens, is_target (may be NULL: every token) and prefix hold the sequences one after
 * another; each sequence attends only to its own rows. Every base weight is read once for the whole batch,
 * so this is faster than one call per sequence; the gradients are their sum (equal up to rounding; with
 * dropout the masks are those of one call). *sum_nll and *predicted cover the batch; input_grad holds each
 * sequence's [(n_prefix[s] + n_tokens[s]), n_embd] rows in batch order (input_grad_capacity floats at
 * least their total, else LK_ERR_BUFFER_TOO_SMALL before anything runs). A bad sequence is named by its
 * index ("n_tokens[3]"); nothing runs then. */
LK_API lk_status lk_trainer_forward_backward_batch(lk_trainer *trainer, int64_t n_seqs, const int32_t *tokens,
                                                   const uint8_t *is_target, const int64_t *n_tokens,
                                                   const float *prefix, const int64_t *n_prefix, float loss_scale,
                                                   double *sum_nll, int64_t *predicted, float *input_grad,
                                                   int64_t input_grad_capacity);

/* Apply the accumulated gradients: clip them to params->max_grad_norm (when not 0), AdamW with learning
 * rate lr (finite, >= 0; the caller's schedule), count the step. *grad_norm (may be NULL) = the global
 * norm before clipping. A non-finite gradient: LK_ERR_INVALID_ARGUMENT naming the step, nothing updated.
 * The gradients are not zeroed. */
LK_API lk_status lk_trainer_optimizer_step(lk_trainer *trainer, double lr, double *grad_norm);

/* Sizes of the params/info structs this library was built with (bindings check them at import). */
LK_API int64_t lk_sizeof_model_params(void);
LK_API int64_t lk_sizeof_model_info(void);
LK_API int64_t lk_sizeof_context_params(void);
LK_API int64_t lk_sizeof_sampler_params(void);
LK_API int64_t lk_sizeof_generate_params(void);
LK_API int64_t lk_sizeof_generate_result(void);
LK_API int64_t lk_sizeof_chat_message(void);
LK_API int64_t lk_sizeof_lora_params(void);
LK_API int64_t lk_sizeof_train_params(void);
LK_API int64_t lk_sizeof_train_progress(void);

/* ---------------------------------------------------------------------------------------------------
 * Batch contexts: up to max_sequences sequences over one shared model, each with its own KV cache
 * positions and its own adapter set (none, one, or several stacked with scales), evaluated together:
 * one lk_batch_step runs every listed sequence's new tokens (prefill several, or decode one) as the rows
 * of one batch, so each base weight is read once per step for all of them; attention runs per sequence
 * over its own cache, and the adapter terms per group of rows sharing an adapter set (LoRA and plugin
 * types). Each sequence's logits
 * equal those of an lk_context evaluating it alone with the same adapters attached, within the
 * activation-quantization tolerance (decode steps of up to 11 sequences: bitwise equal).
 * Sequence ids are small integers ≥ 0 given by the batch, never reused within it. A batch is used by
 * one thread at a time ("in use" otherwise, LK_ERR_INVALID_ARGUMENT). An unknown sequence id, a bad
 * position or a bad size is LK_ERR_INVALID_ARGUMENT and changes nothing.
 * ------------------------------------------------------------------------------------------------- */
typedef struct lk_batch lk_batch;

/* A batch context for `model`: max_sequences 1...4096 sequences alive at once, n_ctx positions per
 * sequence (0...n_ctx_train; 0 = min(n_ctx_train, 4096)), n_threads 0...512 (0 = lk_cpu_count()).
 * The KV caches take max_sequences · n_ctx · n_layer · 2 · n_head_kv · head_dim · 4 bytes of address
 * space, touched as positions are used. Ownership: *out belongs to the caller (lk_batch_free); it keeps
 * the model alive. */
LK_API lk_status lk_batch_new(lk_model *model, int32_t max_sequences, int32_t n_ctx, int32_t n_threads,
                              lk_batch **out);

/* lk_batch_new's settings and more, as a params struct (fields may be appended). */
typedef struct lk_batch_params {
    uint32_t struct_size;
    int32_t max_sequences; /* 1...4096 sequences alive at once; default 8 */
    int32_t n_ctx;         /* positions per sequence, 0...n_ctx_train; 0 = min(n_ctx_train, 4096) */
    int32_t n_threads;     /* 0...512; 0 = lk_cpu_count() */
    lk_dtype kv_type;      /* KV cache element type, as lk_context_params.kv_type: LK_DTYPE_F32 (default)
                              or LK_DTYPE_F16 (half the cache memory: each sequence's logits then equal
                              those of an lk_context with kv_type LK_DTYPE_F16, within the same tolerance) */
} lk_batch_params;

LK_API void lk_batch_params_init_sized(lk_batch_params *p, size_t size);
LK_API void lk_batch_params_init(lk_batch_params *p);
#define lk_batch_params_init(p) lk_batch_params_init_sized((p), sizeof(lk_batch_params))
LK_API int64_t lk_sizeof_batch_params(void);

/* lk_batch_new with a params struct (NULL: all defaults). With kv_type LK_DTYPE_F16 the caches take half
 * the bytes above, plus 2 · n_ctx · n_head_kv · head_dim · 4 bytes of prefill scratch, made by the first
 * step that prefills 16 or more tokens of a sequence. */
LK_API lk_status lk_batch_new_with_params(lk_model *model, const lk_batch_params *params, lk_batch **out);
LK_API lk_status lk_batch_free(lk_batch *batch);

/* A new empty sequence (position 0, no adapters); its id in *seq. LK_ERR_LIMIT when max_sequences
 * sequences are alive (remove one first). */
LK_API lk_status lk_batch_add_sequence(lk_batch *batch, int32_t *seq);

/* Remove sequence `seq` (its cache becomes free for a new sequence). */
LK_API lk_status lk_batch_remove_sequence(lk_batch *batch, int32_t seq);

/* A new sequence with a copy of seq's cached positions and its adapters and scales (e.g. several
 * continuations of one prompt); its id in *new_seq. LK_ERR_LIMIT when the batch is full. */
LK_API lk_status lk_batch_fork(lk_batch *batch, int32_t seq, int32_t *new_seq);

/* Drop seq's cached positions from `position` on (0 <= position <= its position). */
LK_API lk_status lk_batch_truncate(lk_batch *batch, int32_t seq, int32_t position);

/* Positions cached for seq. */
LK_API lk_status lk_batch_position(const lk_batch *batch, int32_t seq, int32_t *position);

/* The ids of the live sequences, ascending, into seqs[0 .. *count). *count is the number of live
 * sequences, also on LK_ERR_BUFFER_TOO_SMALL (capacity < *count); seqs may be NULL when capacity is 0. */
LK_API lk_status lk_batch_sequences(const lk_batch *batch, int32_t *seqs, int64_t capacity, int64_t *count);

/* Set seq's adapters: adapters[i] with multiplier scales[i] (finite), applied in this order, as when
 * attached to an lk_context in this order; n_adapters 0...4096, 0 = none (adapters and scales may then
 * be NULL). LoRA and plugin adapters (IA³, DoRA, ...) mix freely. Every adapter must have been
 * loaded/created for the batch's model; the same adapter twice is LK_ERR_INVALID_ARGUMENT. Other sequences are not touched; on error nothing
 * changes. Cached positions are kept (computed with the previous adapters). The batch holds the
 * adapters while a sequence uses them. */
LK_API lk_status lk_batch_set_adapters(lk_batch *batch, int32_t seq, lk_adapter *const *adapters,
                                       const float *scales, int64_t n_adapters);

/* One step: for i < n_seqs, sequence seqs[i] (distinct, live) appends its n_tokens[i] (>= 1) tokens,
 * which follow each other in `tokens` (sequence 0's first, then sequence 1's, ...), at its next
 * positions. logits receives n_seqs rows of n_vocab floats: row i is the logits after seqs[i]'s last
 * token. capacity is in floats; capacity < n_seqs · n_vocab is LK_ERR_BUFFER_TOO_SMALL. Everything is
 * checked before anything is evaluated (an unknown or repeated id, a token id outside the vocabulary, a
 * sequence overflowing n_ctx: LK_ERR_INVALID_ARGUMENT); on error every sequence keeps its position. */
LK_API lk_status lk_batch_step(lk_batch *batch, int64_t n_seqs, const int32_t *seqs, const int32_t *tokens,
                               const int64_t *n_tokens, float *logits, int64_t capacity);

#ifdef __cplusplus
}
#endif

#endif /* LORAKIT_H */

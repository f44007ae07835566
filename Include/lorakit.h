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
 *   grow at the end. Set struct_size via the init function; the library reads only the fields that
 *   struct_size covers.
 * - Sizes are int64_t; negative sizes and sizes whose product overflows are rejected.
 *
 * Thread safety
 * - Functions not tied to a handle (version, status strings, lk_last_error, thread defaults) may be
 *   called from any thread.
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

#ifdef __cplusplus
}
#endif

#endif /* LORAKIT_H */

"""ctypes mirror of Include/lorakit.h, one to one.

Each function below is preceded by its C declaration. Keep this file in step with the header: same
order, same names, same constants. `ABI_VERSION` is the LK_ABI_VERSION this mirror was written
against; importing checks it against the loaded library's lk_abi_version().

The library is looked up, in order, at:
  1. $LORAKIT_LIBRARY (a path to liblorakit.so);
  2. <repo>/.build/release/liblorakit.so, relative to this package (a source checkout after `make build`);
  3. ctypes.util.find_library("lorakit"), then "liblorakit.so" through the dynamic loader.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from ctypes import POINTER, c_char_p, c_float, c_int32, c_int64, c_void_p
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
    repo = Path(__file__).resolve().parents[3]
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

# Every function declared in lorakit.h, in header order (the tests check each is reachable).
FUNCTIONS = (
    "lk_abi_version", "lk_version_string", "lk_last_error", "lk_clear_error", "lk_status_string",
    "lk_dtype_name", "lk_dtype_info", "lk_cpu_count", "lk_set_default_threads", "lk_get_default_threads",
    "lk_tensor_new", "lk_tensor_from_f32", "lk_tensor_convert", "lk_tensor_free", "lk_tensor_shape",
    "lk_tensor_dtype", "lk_tensor_size", "lk_tensor_copy_to_f32", "lk_tensor_copy_bytes", "lk_matmul",
)

_abi = lib.lk_abi_version()
if _abi != ABI_VERSION:
    raise ImportError(
        f"lorakit: {path} has C ABI version {_abi}, but this binding was written for ABI {ABI_VERSION} "
        "(LK_ABI_VERSION in lorakit.h). Use the binding from the same LoRAKit checkout as the library."
    )


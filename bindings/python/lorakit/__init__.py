"""LoRAKit for Python: a small Pythonic layer over the C API (liblorakit.so).

    import numpy as np, lorakit as lk
    with lk.Tensor(np.ones((2, 3))) as x, lk.Tensor(np.eye(4, 3)) as w:
        y = lk.matmul(x, w)            # x · wᵀ, a new Tensor [2, 4]
        print(y.numpy())

Errors raise LoRAKitError(status, message) with the library's lk_last_error() message. Tensors own a
C handle: close() (or a `with` block) frees it at once, the garbage collector frees it otherwise; using a
closed tensor raises LoRAKitError(LK_ERR_INVALID_HANDLE) instead of reaching C.
"""
from __future__ import annotations

import ctypes
import enum
from ctypes import POINTER, byref, c_float, c_int32, c_int64

import numpy as np

from . import _lib
from ._lib import ABI_VERSION

__all__ = [
    "ABI_VERSION", "DType", "LoRAKitError", "Status", "Tensor", "abi_version", "clear_error", "cpu_count",
    "dtype_info", "get_threads", "last_error", "matmul", "set_threads", "status_string", "version",
]

_c = _lib.lib


class Status(enum.IntEnum):
    """lk_status codes."""
    OK = _lib.LK_OK
    STOPPED = _lib.LK_STOPPED
    INVALID_ARGUMENT = _lib.LK_ERR_INVALID_ARGUMENT
    INVALID_HANDLE = _lib.LK_ERR_INVALID_HANDLE
    SHAPE = _lib.LK_ERR_SHAPE
    UNSUPPORTED = _lib.LK_ERR_UNSUPPORTED
    IO = _lib.LK_ERR_IO
    FORMAT = _lib.LK_ERR_FORMAT
    OUT_OF_MEMORY = _lib.LK_ERR_OUT_OF_MEMORY
    ABI = _lib.LK_ERR_ABI
    BUFFER_TOO_SMALL = _lib.LK_ERR_BUFFER_TOO_SMALL
    INTERNAL = _lib.LK_ERR_INTERNAL


class DType(enum.IntEnum):
    """lk_dtype values."""
    F32 = _lib.LK_DTYPE_F32
    F16 = _lib.LK_DTYPE_F16
    BF16 = _lib.LK_DTYPE_BF16
    Q8_0 = _lib.LK_DTYPE_Q8_0
    Q4_0 = _lib.LK_DTYPE_Q4_0
    Q4_1 = _lib.LK_DTYPE_Q4_1

    @property
    def block_size(self) -> int:
        """Values per block (1 for f32/f16/bf16, 32 for the quantized types)."""
        return dtype_info(self)[0]

    @property
    def block_bytes(self) -> int:
        """Bytes per block."""
        return dtype_info(self)[1]

    def __str__(self) -> str:
        return _c.lk_dtype_name(self).decode()

    @classmethod
    def parse(cls, value: "DType | int | str") -> "DType":
        """A DType from a DType, its integer value, or its name ("q4_1", "F32")."""
        if isinstance(value, str):
            try:
                return cls[value.upper()]
            except KeyError:
                raise ValueError(f"unknown dtype name {value!r}; known: {', '.join(str(d) for d in cls)}") from None
        return cls(value)


class LoRAKitError(Exception):
    """A LoRAKit call failed. `status` is the lk_status code, `message` lk_last_error()'s text."""

    def __init__(self, status: int, message: str):
        self.status = status
        self.message = message
        try:
            name = Status(status).name
        except ValueError:
            name = str(status)
        super().__init__(f"[{name}] {message}")


def _check(status: int) -> int:
    """Raise LoRAKitError for an error status (positive statuses are returned: non-fatal)."""
    if status < 0:
        raise LoRAKitError(status, _c.lk_last_error().decode("utf-8", "replace"))
    return status


def _dtype_arg(dtype) -> int:
    """An int for C: DTypes and names are mapped, plain ints pass through (the library validates them)."""
    if isinstance(dtype, str):
        return int(DType.parse(dtype))
    return int(dtype)


# ---------------------------------------------------------------------------------------------------
# Library
# ---------------------------------------------------------------------------------------------------

def abi_version() -> int:
    """The loaded library's C ABI version (equals ABI_VERSION: checked at import)."""
    return _c.lk_abi_version()


def version() -> str:
    """The library version, e.g. "0.1.0"."""
    return _c.lk_version_string().decode()


def last_error() -> str:
    """Message of the last failing call on this thread ("" if none)."""
    return _c.lk_last_error().decode("utf-8", "replace")


def clear_error() -> None:
    """Clear this thread's last error."""
    _c.lk_clear_error()


def status_string(status: int) -> str:
    """Short English name of a status code."""
    return _c.lk_status_string(status).decode()


def dtype_info(dtype) -> tuple[int, int]:
    """(values per block, bytes per block) of a dtype."""
    bs, bb = c_int64(), c_int64()
    _check(_c.lk_dtype_info(_dtype_arg(dtype), byref(bs), byref(bb)))
    return bs.value, bb.value


def cpu_count() -> int:
    """Number of online CPU cores."""
    return _c.lk_cpu_count()


def set_threads(n: int) -> None:
    """Threads used by tensor ops (1...512)."""
    _check(_c.lk_set_default_threads(n))


def get_threads() -> int:
    """Threads used by tensor ops."""
    return _c.lk_get_default_threads()


# ---------------------------------------------------------------------------------------------------
# Tensors
# ---------------------------------------------------------------------------------------------------

def _shape_arg(shape) -> tuple[int, "ctypes.Array"]:
    dims = [int(d) for d in shape]
    return len(dims), (c_int64 * max(1, len(dims)))(*dims)


class Tensor:
    """An n-dimensional LoRAKit tensor (row-major, outermost dimension first).

    Tensor(array, dtype=DType.F32) copies a numpy array (converted to float32) into a new tensor of
    `dtype` (quantizing for q8_0/q4_0/q4_1, whose last dimension must be a multiple of 32).
    """

    __slots__ = ("_handle",)

    def __init__(self, array, dtype=DType.F32):
        self._handle = None
        a = np.ascontiguousarray(array, dtype=np.float32)
        n_dims, shape = _shape_arg(a.shape if a.ndim else (1,))
        out = _lib.lk_tensor_p()
        data = a.ctypes.data_as(POINTER(c_float))
        _check(_c.lk_tensor_from_f32(data, a.size, _dtype_arg(dtype), n_dims, shape, byref(out)))
        self._handle = out.value

    @classmethod
    def zeros(cls, shape, dtype=DType.F32) -> "Tensor":
        """A new zero-filled tensor."""
        n_dims, cshape = _shape_arg(shape)
        out = _lib.lk_tensor_p()
        _check(_c.lk_tensor_new(_dtype_arg(dtype), n_dims, cshape, byref(out)))
        return cls._wrap(out.value)

    @classmethod
    def _wrap(cls, handle: int) -> "Tensor":
        t = cls.__new__(cls)
        t._handle = handle
        return t

    # -- lifetime --

    @property
    def closed(self) -> bool:
        return self._handle is None

    def close(self) -> None:
        """Free the C tensor now. Idempotent."""
        h, self._handle = self._handle, None
        if h is not None:
            _check(_c.lk_tensor_free(h))

    def __enter__(self) -> "Tensor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        # Safe during interpreter shutdown (module globals may already be gone) and after a failed
        # __init__ (no handle): never raises.
        try:
            h = self._handle
        except AttributeError:
            return
        if h is not None:
            self._handle = None
            try:
                _c.lk_tensor_free(h)
            except Exception:
                pass

    @property
    def handle(self) -> int:
        """The C handle (an lk_tensor *). Raises LoRAKitError(INVALID_HANDLE) if closed."""
        if self._handle is None:
            raise LoRAKitError(_lib.LK_ERR_INVALID_HANDLE, "tensor is closed")
        return self._handle

    # -- queries --

    @property
    def shape(self) -> tuple[int, ...]:
        h = self.handle
        nd = c_int32()
        _check(_c.lk_tensor_shape(h, byref(nd), None, 0))
        buf = (c_int64 * max(1, nd.value))()
        _check(_c.lk_tensor_shape(h, byref(nd), buf, len(buf)))
        return tuple(buf[: nd.value])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def dtype(self) -> DType:
        d = _lib.lk_dtype()
        _check(_c.lk_tensor_dtype(self.handle, byref(d)))
        return DType(d.value)

    def _size(self) -> tuple[int, int]:
        ne, nb = c_int64(), c_int64()
        _check(_c.lk_tensor_size(self.handle, byref(ne), byref(nb)))
        return ne.value, nb.value

    @property
    def size(self) -> int:
        """Number of elements."""
        return self._size()[0]

    @property
    def nbytes(self) -> int:
        """Bytes of storage (for quantized dtypes: whole ggml blocks)."""
        return self._size()[1]

    # -- data --

    def numpy(self) -> np.ndarray:
        """The values as a new float32 array of this shape (dequantized)."""
        shape = self.shape
        out = np.empty(shape, dtype=np.float32)
        _check(_c.lk_tensor_copy_to_f32(self.handle, out.ctypes.data_as(POINTER(c_float)), out.size))
        return out

    def raw_bytes(self) -> bytes:
        """The storage bytes (ggml blocks for quantized dtypes)."""
        n = self.nbytes
        buf = ctypes.create_string_buffer(max(1, n))
        _check(_c.lk_tensor_copy_bytes(self.handle, buf, n))
        return buf.raw[:n]

    def convert(self, dtype) -> "Tensor":
        """A new tensor holding these values in another dtype (quantize, dequantize or cast)."""
        out = _lib.lk_tensor_p()
        _check(_c.lk_tensor_convert(self.handle, _dtype_arg(dtype), byref(out)))
        return Tensor._wrap(out.value)

    def __array__(self, dtype=None, copy=None):
        a = self.numpy()
        return a if dtype is None else a.astype(dtype)

    def __repr__(self) -> str:
        if self._handle is None:
            return "Tensor(<closed>)"
        return f"Tensor(shape={self.shape}, dtype={self.dtype})"


def _as_tensor(value, name: str) -> tuple[Tensor, bool]:
    """(tensor, created): numpy arrays and nested lists become temporary f32 tensors."""
    if isinstance(value, Tensor):
        return value, False
    try:
        return Tensor(value), True
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a lorakit.Tensor or an array of numbers, got {type(value).__name__}") from e


def matmul(x, w, transpose_w: bool = True, out: Tensor | None = None) -> Tensor:
    """x · wᵀ (transpose_w, w is [N, K]: a linear layer's forward) or x · w (w is [K, N]).

    x (f32, [M, K]) and w (any dtype) are Tensors or numpy arrays. The result is written into `out`
    (an f32 Tensor [M, N], returned) or into a new Tensor.
    """
    xt, x_tmp = _as_tensor(x, "x")
    try:
        wt, w_tmp = _as_tensor(w, "w")
        try:
            if out is None:
                xs, ws = xt.shape, wt.shape
                if len(xs) != 2 or len(ws) != 2:
                    # Let the library report it (with its message) using a placeholder out.
                    with Tensor.zeros((1, 1)) as tmp:
                        _check(_c.lk_matmul(xt.handle, wt.handle, int(bool(transpose_w)), tmp.handle))
                n = ws[0] if transpose_w else ws[1]
                out = Tensor.zeros((xs[0], n))
                try:
                    _check(_c.lk_matmul(xt.handle, wt.handle, int(bool(transpose_w)), out.handle))
                except BaseException:
                    out.close()
                    raise
            else:
                _check(_c.lk_matmul(xt.handle, wt.handle, int(bool(transpose_w)), out.handle))
            return out
        finally:
            if w_tmp:
                wt.close()
    finally:
        if x_tmp:
            xt.close()

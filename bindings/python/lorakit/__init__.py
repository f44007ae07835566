"""LoRAKit for Python: a small Pythonic layer over the C API (liblorakit.so).

    import numpy as np, lorakit as lk
    with lk.Tensor(np.ones((2, 3))) as x, lk.Tensor(np.eye(4, 3)) as w:
        y = lk.matmul(x, w)            # x · wᵀ, a new Tensor [2, 4]
        print(y.numpy())

Models, contexts and generation:

    with lk.Model("SmolLM2-135M-Instruct.Q4_1.gguf") as m, lk.Context(m, n_ctx=512) as ctx:
        ids = m.tokenize(m.chat([{"role": "user", "content": "Hi"}]), add_special=False)
        text, tokens, reason = lk.generate(ctx, ids, max_tokens=32, temperature=0,
                                           on_text=lambda piece, token: print(piece, end=""))

LoRA training (Trainer: a context manager over lk_trainer_*):

    with lk.Trainer(m, "train.jsonl", rank=8, targets="all-linear", lr=1e-4, steps=100, out_dir="run") as t:
        t.run(lambda p: print(p.step, p.loss))       # run/adapter/ is a PEFT folder; t.adapter() a snapshot

Errors raise LoRAKitError(status, message) with the library's lk_last_error() message. Tensors, models
and contexts own a C handle: close() (or a `with` block) frees it at once, the garbage collector frees it
otherwise; using a closed object raises LoRAKitError(LK_ERR_INVALID_HANDLE) instead of reaching C. A
context keeps its model's weights alive, so closing the Model first is fine.
"""
from __future__ import annotations

import ctypes
import enum
import json
import os
from ctypes import POINTER, byref, c_float, c_int32, c_int64, c_void_p
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np

from . import _lib
from ._lib import ABI_VERSION

__all__ = [
    "ABI_VERSION", "Adapter", "AdapterFormat", "BatchContext", "ChatLimit", "Context", "DType", "GenerationResult", "LoRAKitError", "Model",
    "ModelInfo", "Plugin", "Projector", "Status", "StopReason", "Tensor", "TrainProgress", "TrainRun", "Trainer", "abi_version", "clear_error",
    "cpu_count", "dtype_info", "generate", "get_threads", "last_error", "load_plugin", "matmul", "plugins", "set_threads", "status_string", "version",
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
    LIMIT = _lib.LK_ERR_LIMIT
    INTERNAL = _lib.LK_ERR_INTERNAL


class ChatLimit(enum.IntEnum):
    """lk_chat_limit: the limits on rendering a model's chat template (Model.chat_limit)."""
    OUTPUT_BYTES = _lib.LK_CHAT_LIMIT_OUTPUT_BYTES
    ALLOCATED_BYTES = _lib.LK_CHAT_LIMIT_ALLOCATED_BYTES
    LOOP_ITERATIONS = _lib.LK_CHAT_LIMIT_LOOP_ITERATIONS
    STEPS = _lib.LK_CHAT_LIMIT_STEPS
    RECURSION_DEPTH = _lib.LK_CHAT_LIMIT_RECURSION_DEPTH
    VALUE_DEPTH = _lib.LK_CHAT_LIMIT_VALUE_DEPTH
    MILLISECONDS = _lib.LK_CHAT_LIMIT_MILLISECONDS
    TEMPLATE_BYTES = _lib.LK_CHAT_LIMIT_TEMPLATE_BYTES


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


# ---------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------

def _buffer_string(call, *, terminated: bool = True) -> bytes:
    """Run a (buf, capacity, needed) C function, growing the buffer once if it is too small."""
    need = c_int64()
    buf = ctypes.create_string_buffer(256)
    status = call(buf, len(buf), byref(need))
    if status == _lib.LK_ERR_BUFFER_TOO_SMALL:
        buf = ctypes.create_string_buffer(max(1, need.value))
        status = call(buf, len(buf), byref(need))
    _check(status)
    n = need.value - 1 if terminated else need.value
    return buf.raw[:n]


@dataclass(frozen=True)
class ModelInfo:
    """lk_model_info as Python values (bos/eos/eot are None when the model has none)."""
    n_vocab: int
    n_ctx_train: int
    n_embd: int
    n_ff: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_rot: int
    rope_base: float
    norm_eps: float
    tied_embeddings: bool
    bos_token: Optional[int]
    eos_token: Optional[int]
    eot_token: Optional[int]
    has_tokenizer: bool
    has_chat_template: bool
    weight_bytes: int


class _Handle:
    """A C handle freed by `_free` on close() / `with` exit / garbage collection."""
    __slots__ = ("_handle",)
    _kind = "handle"
    _free = None

    @property
    def closed(self) -> bool:
        return self._handle is None

    @property
    def handle(self) -> int:
        if self._handle is None:
            raise LoRAKitError(_lib.LK_ERR_INVALID_HANDLE, f"{self._kind} is closed")
        return self._handle

    def close(self) -> None:
        """Free the C handle now. Idempotent."""
        h, self._handle = self._handle, None
        if h is not None:
            _check(type(self)._free(h))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            h = self._handle
        except AttributeError:
            return
        if h is not None:
            self._handle = None
            try:
                type(self)._free(h)
            except Exception:
                pass


def _text_arg(text) -> bytes:
    if isinstance(text, str):
        return text.encode("utf-8", "surrogatepass")
    if isinstance(text, (bytes, bytearray, memoryview)):
        return bytes(text)
    raise TypeError(f"text must be str or bytes, got {type(text).__name__}")


def _sequence_args(tokens, targets, prefix, n_embd: int, where: str = ""):
    """One training sequence's arrays: token ids (int32), target flags (uint8, or None for targets None)
    and prefix rows ([P, n_embd] float32, or None); `where` prefixes error messages ("sequence 3: ")."""
    ids = _ids_arg(tokens)
    flags = None
    if targets is not None:
        t = np.ascontiguousarray(targets).reshape(-1)
        if t.size != ids.size:
            raise ValueError(f"{where}targets has {t.size} flags for {ids.size} tokens")
        if t.size and (t.min() < 0 or t.max() > 255):
            raise ValueError(f"{where}targets must be 0 or 1")
        flags = t.astype(np.uint8)
    rows = None
    if prefix is not None:
        rows = np.ascontiguousarray(prefix, dtype=np.float32)
        if rows.ndim == 1:
            rows = rows.reshape(1, -1)
        if rows.ndim != 2 or rows.shape[1] != n_embd:
            raise ValueError(f"{where}prefix must have shape [rows, {n_embd}], got {list(np.shape(prefix))}")
    return ids, flags, rows


def _ids_arg(ids, name: str = "tokens") -> "np.ndarray":
    a = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    if a.size and (a.min() < -2**31 or a.max() >= 2**31):
        raise ValueError(f"{name}: token ids must fit in int32")
    return a.astype(np.int32)


def _adapter_arrays(adapters):
    """(handles, scales, count) C arrays from a sequence of Adapters and/or (Adapter, scale) pairs (scale 1.0
    when omitted); TypeError naming the entry otherwise."""
    pairs = []
    for i, item in enumerate(adapters):
        if isinstance(item, Adapter):
            a, scale = item, 1.0
        else:
            try:
                a, scale = item
            except (TypeError, ValueError):
                raise TypeError(f"adapters[{i}] must be an Adapter or an (Adapter, scale) pair") from None
        if not isinstance(a, Adapter):
            raise TypeError(f"adapters[{i}] must be a lorakit.Adapter, got {type(a).__name__}")
        pairs.append((a.handle, float(scale)))
    n = len(pairs)
    handles = (_lib.lk_adapter_p * max(1, n))(*[h for h, _ in pairs])
    scales = (c_float * max(1, n))(*[s for _, s in pairs])
    return handles, scales, n


class Model(_Handle):
    """A loaded model (GGUF file). Immutable; may be used from many threads and shared by contexts.

    Model(path) loads; use it as a context manager or call close(). Contexts created from it keep its
    weights alive after close().
    """
    __slots__ = ()
    _kind = "model"
    _free = staticmethod(_c.lk_model_free)

    def __init__(self, path):
        self._handle = None
        out = _lib.lk_model_p()
        _check(_c.lk_model_load(os.fsencode(path), None, byref(out)))
        self._handle = out.value

    @property
    def info(self) -> ModelInfo:
        i = _lib.lk_model_info()
        i.struct_size = ctypes.sizeof(i)
        _check(_c.lk_model_get_info(self.handle, byref(i)))
        opt = lambda v: None if v < 0 else v  # noqa: E731
        return ModelInfo(
            n_vocab=i.n_vocab, n_ctx_train=i.n_ctx_train, n_embd=i.n_embd, n_ff=i.n_ff, n_layer=i.n_layer,
            n_head=i.n_head, n_head_kv=i.n_head_kv, head_dim=i.head_dim, n_rot=i.n_rot, rope_base=i.rope_base,
            norm_eps=i.norm_eps, tied_embeddings=bool(i.tied_embeddings), bos_token=opt(i.bos_token),
            eos_token=opt(i.eos_token), eot_token=opt(i.eot_token), has_tokenizer=bool(i.has_tokenizer),
            has_chat_template=bool(i.has_chat_template), weight_bytes=i.weight_bytes)

    @property
    def architecture(self) -> str:
        h = self.handle
        return _buffer_string(lambda b, n, need: _c.lk_model_architecture(h, b, n, need)).decode()

    @property
    def chat_template(self) -> Optional[str]:
        """The Jinja chat template, or None if the model has none."""
        h = self.handle
        if not self.info.has_chat_template:
            return None
        return _buffer_string(lambda b, n, need: _c.lk_model_chat_template(h, b, n, need)).decode()

    def token_embeddings(self, tokens) -> "np.ndarray":
        """The input embedding rows [n, n_embd] (float32) of token ids, as the first layer sees them."""
        ids = _ids_arg(tokens)
        out = np.empty((ids.size, self.info.n_embd), dtype=np.float32)
        _check(_c.lk_model_token_embeddings(self.handle, ids.ctypes.data_as(POINTER(c_int32)), ids.size,
                                            out.ctypes.data_as(POINTER(c_float)), out.size))
        return out

    def meta(self, key: str) -> str:
        """A GGUF metadata value as text (numbers plainly, strings raw, arrays as JSON).
        A missing key raises LoRAKitError(INVALID_ARGUMENT)."""
        h, k = self.handle, key.encode()
        return _buffer_string(lambda b, n, need: _c.lk_model_meta(h, k, b, n, need)).decode("utf-8", "replace")

    def tokenize(self, text, add_special: Optional[bool] = None, parse_special: bool = True) -> list[int]:
        """Token ids of text (str or UTF-8 bytes). add_special: None = as the model says, False = no
        BOS/EOS, True = BOS always. parse_special: special-token text such as "<|im_start|>" becomes its id."""
        h = self.handle
        data = _text_arg(text)
        mode = -1 if add_special is None else int(bool(add_special))
        n = c_int64()
        cap = len(data) + 8
        buf = (c_int32 * cap)()
        status = _c.lk_tokenize(h, data, len(data), mode, int(bool(parse_special)), buf, cap, byref(n))
        if status == _lib.LK_ERR_BUFFER_TOO_SMALL:
            cap = n.value
            buf = (c_int32 * cap)()
            status = _c.lk_tokenize(h, data, len(data), mode, int(bool(parse_special)), buf, cap, byref(n))
        _check(status)
        return list(buf[: n.value])

    def detokenize(self, ids, skip_special: bool = False) -> str:
        """The text of token ids."""
        h = self.handle
        a = _ids_arg(ids)
        p = a.ctypes.data_as(POINTER(c_int32))
        raw = _buffer_string(lambda b, n, need: _c.lk_detokenize(h, p, a.size, int(bool(skip_special)), b, n, need))
        return raw.decode("utf-8", "replace")

    def token_bytes(self, token: int) -> bytes:
        """The raw bytes of one token (may be part of a UTF-8 sequence)."""
        h = self.handle
        return _buffer_string(lambda b, n, need: _c.lk_token_bytes(h, int(token), b, n, need), terminated=False)

    def chat(self, messages, add_generation_prompt: bool = True) -> str:
        """Render messages ([{"role": ..., "content": ...}] or [(role, content)]) with the model's chat template."""
        h = self.handle
        pairs = []
        for i, msg in enumerate(messages):
            if isinstance(msg, dict):
                try:
                    role, content = msg["role"], msg["content"]
                except KeyError as e:
                    raise ValueError(f"messages[{i}] has no {e.args[0]!r}") from None
            else:
                role, content = msg
            if not isinstance(role, str) or not isinstance(content, str):
                raise TypeError(f"messages[{i}]: role and content must be str")
            pairs.append((role.encode(), content.encode("utf-8", "surrogatepass")))
        arr = (_lib.lk_chat_message * max(1, len(pairs)))(*[_lib.lk_chat_message(r, c) for r, c in pairs])
        raw = _buffer_string(lambda b, n, need: _c.lk_chat_apply(h, arr, len(pairs), int(bool(add_generation_prompt)),
                                                                  b, n, need))
        return raw.decode("utf-8", "replace")

    def chat_limit(self, limit: ChatLimit, value: Optional[int] = None) -> int:
        """The value of one chat-template limit (lk_model_chat_limit); with value, set it for later renders and
        return the previous one. A render over a limit raises LoRAKitError (Status.LIMIT or Status.FORMAT)."""
        old = c_int64()
        _check(_c.lk_model_chat_limit(self.handle, int(limit), -1 if value is None else int(value), byref(old)))
        return old.value

    def merge_to_file(self, adapters, path, out_type=None) -> None:
        """Write this model's GGUF file with adapters merged into the weights (lk_model_merge_to_file).

        adapters: an Adapter, or a sequence of Adapters and/or (Adapter, scale) pairs (scale 1.0 when
        omitted), all made for this model. out_type: None (the base weight's own type), or DType.F32 /
        F16 / Q8_0 (or their names). Load the result with Model(path).
        """
        if isinstance(adapters, Adapter) or (
                isinstance(adapters, tuple) and len(adapters) == 2 and isinstance(adapters[0], Adapter)
                and not isinstance(adapters[1], Adapter)):
            adapters = [adapters]
        handles, scales, n = _adapter_arrays(adapters)
        t = -1 if out_type is None else _dtype_arg(out_type)
        _check(_c.lk_model_merge_to_file(self.handle, handles, scales, n, t, os.fsencode(path)))

    def __repr__(self) -> str:
        if self._handle is None:
            return "Model(<closed>)"
        i = self.info
        return f"Model({self.architecture}, {i.n_layer} layers, n_embd {i.n_embd}, vocab {i.n_vocab})"


# ---------------------------------------------------------------------------------------------------
# Contexts
# ---------------------------------------------------------------------------------------------------

_LOGITS = {"none": _lib.LK_LOGITS_NONE, "last": _lib.LK_LOGITS_LAST, "all": _lib.LK_LOGITS_ALL}


class Context(_Handle):
    """A KV cache and thread pool over a model. Use from one thread at a time.

    Context(model, n_ctx=0, n_threads=0, n_batch=0, kv_type="f32"): 0 = the library's defaults (n_ctx =
    min(model context, 4096), n_threads = cpu_count(), n_batch = 512). kv_type "f16" (or DType.F16) keeps
    the KV cache in f16: half its memory and half what a decoded token reads, keys and values rounded
    to f16 as they are stored.
    """
    __slots__ = ("model", "n_vocab", "n_embd")
    _kind = "context"
    _free = staticmethod(_c.lk_context_free)

    def __init__(self, model: Model, n_ctx: int = 0, n_threads: int = 0, n_batch: int = 0, kv_type="f32"):
        self._handle = None
        if not isinstance(model, Model):
            raise TypeError(f"model must be a lorakit.Model, got {type(model).__name__}")
        info = model.info
        self.model = model
        self.n_vocab, self.n_embd = info.n_vocab, info.n_embd
        p = _lib.lk_context_params()
        _c.lk_context_params_init_sized(byref(p), ctypes.sizeof(p))
        p.n_ctx, p.n_threads, p.n_batch = n_ctx, n_threads, n_batch
        p.kv_type = _dtype_arg(kv_type)
        out = _lib.lk_context_p()
        _check(_c.lk_context_new(model.handle, byref(p), byref(out)))
        self._handle = out.value

    def reset(self) -> None:
        """Forget all positions."""
        _check(_c.lk_context_reset(self.handle))

    @property
    def position(self) -> int:
        """Positions currently cached."""
        p = c_int32()
        _check(_c.lk_context_position(self.handle, byref(p)))
        return p.value

    def _out(self, logits: str, rows: int):
        if logits not in _LOGITS:
            raise ValueError(f"logits must be one of {', '.join(map(repr, _LOGITS))}, got {logits!r}")
        mode = _LOGITS[logits]
        if mode == _lib.LK_LOGITS_LAST:
            out = np.empty(self.n_vocab, dtype=np.float32)
        elif mode == _lib.LK_LOGITS_ALL:
            out = np.empty((rows, self.n_vocab), dtype=np.float32)
        else:
            return mode, None, None, 0
        return mode, out, out.ctypes.data_as(POINTER(c_float)), out.size

    def eval(self, tokens, logits: str = "last"):
        """Evaluate token ids at the next positions. Returns logits: "last" → [n_vocab], "all" →
        [n_tokens, n_vocab], "none" → None."""
        a = _ids_arg(tokens)
        mode, out, p, cap = self._out(logits, a.size)
        _check(_c.lk_context_eval(self.handle, a.ctypes.data_as(POINTER(c_int32)), a.size, mode, p, cap))
        return out

    def eval_embeddings(self, embeddings, logits: str = "last"):
        """Evaluate input embeddings [n_rows, n_embd] (float32) instead of token ids."""
        e = np.ascontiguousarray(embeddings, dtype=np.float32)
        if e.ndim == 1:
            e = e.reshape(1, -1)
        if e.ndim != 2 or e.shape[1] != self.n_embd:
            raise ValueError(f"embeddings must have shape [n_rows, {self.n_embd}], got {list(np.shape(embeddings))}")
        mode, out, p, cap = self._out(logits, e.shape[0])
        _check(_c.lk_context_eval_embeddings(self.handle, e.ctypes.data_as(POINTER(c_float)), e.shape[0], mode, p, cap))
        return out

    def attach(self, adapter: "Adapter", scale: float = 1.0) -> None:
        """Attach an adapter made for this context's model with multiplier `scale` (finite). Cached
        positions are kept: call reset() to re-evaluate with the adapter."""
        if not isinstance(adapter, Adapter):
            raise TypeError(f"adapter must be a lorakit.Adapter, got {type(adapter).__name__}")
        _check(_c.lk_context_attach_adapter(self.handle, adapter.handle, float(scale)))

    def detach(self, adapter: "Adapter") -> None:
        """Detach an attached adapter."""
        if not isinstance(adapter, Adapter):
            raise TypeError(f"adapter must be a lorakit.Adapter, got {type(adapter).__name__}")
        _check(_c.lk_context_detach_adapter(self.handle, adapter.handle))

    def set_scale(self, adapter: "Adapter", scale: float) -> None:
        """Change the multiplier of an attached adapter (0 disables it without detaching)."""
        if not isinstance(adapter, Adapter):
            raise TypeError(f"adapter must be a lorakit.Adapter, got {type(adapter).__name__}")
        _check(_c.lk_context_set_adapter_scale(self.handle, adapter.handle, float(scale)))

    def detach_all(self) -> None:
        """Detach every adapter."""
        _check(_c.lk_context_detach_all(self.handle))

    def __repr__(self) -> str:
        return "Context(<closed>)" if self._handle is None else f"Context(position={self.position})"


# ---------------------------------------------------------------------------------------------------
# LoRA adapters
# ---------------------------------------------------------------------------------------------------

class AdapterFormat(enum.IntEnum):
    """lk_adapter_save formats."""
    PEFT = _lib.LK_ADAPTER_PEFT
    GGUF = _lib.LK_ADAPTER_GGUF


_INITS = {"peft": _lib.LK_LORA_INIT_PEFT, "gaussian": _lib.LK_LORA_INIT_GAUSSIAN, "random": _lib.LK_LORA_INIT_RANDOM}


def _adapter_type_args(adapter_type, adapter_config):
    """lk_lora_params / lk_train_params .adapter_type and .adapter_config from Python values."""
    if adapter_type is not None and not isinstance(adapter_type, str):
        raise TypeError(f"adapter_type must be a str or None, got {type(adapter_type).__name__}")
    if adapter_config is not None and not isinstance(adapter_config, dict):
        raise TypeError(f"adapter_config must be a dict of PEFT config fields or None, got {type(adapter_config).__name__}")
    return (None if adapter_type is None else adapter_type.encode("utf-8"),
            None if adapter_config is None else json.dumps(adapter_config).encode("utf-8"))


class Adapter(_Handle):
    """A LoRA adapter made for one Model (kept alive by the adapter). Attach it to any number of
    contexts of that model with Context.attach. Build with Adapter.load or Adapter.create."""
    __slots__ = ("model",)
    _kind = "adapter"
    _free = staticmethod(_c.lk_adapter_free)

    def __init__(self):
        raise TypeError("use Adapter.load(model, path) or Adapter.create(model, ...)")

    @classmethod
    def _wrap(cls, model: "Model", handle: int) -> "Adapter":
        a = object.__new__(cls)
        a._handle = handle
        a.model = model
        return a

    @classmethod
    def load(cls, model: "Model", path) -> "Adapter":
        """Load a PEFT folder or a llama.cpp GGUF LoRA file for `model`."""
        if not isinstance(model, Model):
            raise TypeError(f"model must be a lorakit.Model, got {type(model).__name__}")
        out = _lib.lk_adapter_p()
        _check(_c.lk_adapter_load(model.handle, os.fsencode(path), byref(out)))
        return cls._wrap(model, out.value)

    @classmethod
    def create(cls, model: "Model", rank: int = 8, alpha: float = 16.0, targets: "str | Sequence[str]" = "q,v",
               use_rslora: bool = False, dropout: float = 0.0, init: str = "peft", seed: int = 0,
               adapter_type: Optional[str] = None, adapter_config: Optional[dict] = None) -> "Adapter":
        """A new adapter for every layer of `model`. targets: "q,v", "all-linear", or a list of module
        names. init: "peft" (B = 0: no effect until trained), "gaussian", or "random" (A and B random,
        for tests). adapter_type: a plugin adapter type ("ia3", "dora", ...) instead of LoRA, with
        adapter_config a dict of PEFT config fields set over those made from targets (and rank, alpha,
        use_rslora for a LoRA-based type such as DoRA), e.g. {"feedforward_modules": ["down_proj"]}."""
        if not isinstance(model, Model):
            raise TypeError(f"model must be a lorakit.Model, got {type(model).__name__}")
        if init not in _INITS:
            raise ValueError(f"init must be one of {', '.join(map(repr, _INITS))}, got {init!r}")
        if not isinstance(targets, str):
            targets = ",".join(targets)
        p = _lib.lk_lora_params()
        _c.lk_lora_params_init_sized(byref(p), ctypes.sizeof(p))
        tb = targets.encode("utf-8")
        p.rank, p.alpha, p.use_rslora = int(rank), float(alpha), int(bool(use_rslora))
        p.targets, p.dropout, p.init, p.seed = tb, float(dropout), _INITS[init], int(seed)
        p.adapter_type, p.adapter_config = _adapter_type_args(adapter_type, adapter_config)
        out = _lib.lk_adapter_p()
        _check(_c.lk_adapter_create(model.handle, byref(p), byref(out)))
        return cls._wrap(model, out.value)

    def save(self, path, format: "AdapterFormat | str" = AdapterFormat.PEFT) -> None:
        """Save as a PEFT folder ("peft") or a GGUF LoRA file ("gguf")."""
        if isinstance(format, str):
            try:
                format = AdapterFormat[format.upper()]
            except KeyError:
                raise ValueError(f"format must be 'peft' or 'gguf', got {format!r}") from None
        _check(_c.lk_adapter_save(self.handle, os.fsencode(path), int(format)))

    def __repr__(self) -> str:
        return "Adapter(<closed>)" if self._handle is None else f"Adapter(handle=0x{self._handle:x})"


# ---------------------------------------------------------------------------------------------------
# Adapter plugins
# ---------------------------------------------------------------------------------------------------

class Plugin(_Handle):
    """A loaded adapter plugin (lk_plugin_load). The plugin stays loaded for the life of the process;
    close() only releases this handle. `info` is lk_plugin_info_json as a dict: path, name, version,
    abi [major, minor], types [{name, description, peft_type, peft_flag, key_suffixes, merge, train}]."""
    __slots__ = ()
    _kind = "plugin"
    _free = staticmethod(_c.lk_plugin_free)

    def __init__(self, path):
        out = _lib.lk_plugin_p()
        self._handle = None
        _check(_c.lk_plugin_load(os.fsencode(path), byref(out)))
        self._handle = out.value

    @property
    def info(self) -> dict:
        h = self.handle
        return json.loads(_buffer_string(lambda b, n, need: _c.lk_plugin_info_json(h, b, n, need)).decode())

    @property
    def name(self) -> str:
        return self.info["name"]

    @property
    def types(self) -> list[str]:
        """The names of the adapter types it declared."""
        return [t["name"] for t in self.info["types"]]

    def __repr__(self) -> str:
        if self._handle is None:
            return "Plugin(<closed>)"
        i = self.info
        return f"Plugin({i['name']!r} {i['version']}, types={[t['name'] for t in i['types']]}, path={i['path']!r})"


def load_plugin(path) -> Plugin:
    """Load an adapter plugin (a shared library written against lorakit_plugin.h) and register its types
    for the whole process. Loading the same file again returns the same plugin. Raises LoRAKitError with
    the library's message (naming the file and, for version mismatches, both sides' values)."""
    return Plugin(path)


def plugins(load_search_path: bool = False) -> list[dict]:
    """Every loaded plugin as lk_plugin_info_json dicts, in load order. With load_search_path=True the
    search path (LORAKIT_PLUGIN_PATH, then the shipped plugins' folder) is loaded first; plugins there that
    fail to load appear as {"error": message} entries after the loaded ones."""
    flag = 1 if load_search_path else 0
    return json.loads(_buffer_string(lambda b, n, need: _c.lk_plugins_json(flag, b, n, need)).decode())


# ---------------------------------------------------------------------------------------------------
# Multimodal projectors
# ---------------------------------------------------------------------------------------------------

class Projector(_Handle):
    """Maps feature vectors [rows, in_features] (e.g. image patches from a frozen encoder) into a Model's
    embedding space [rows, n_embd]: LLaVA-1.5's mlp2x_gelu. Build with Projector.create or .load; train
    it by giving it to a Trainer (projector=...) and calling backward with the trainer's input gradient
    of its rows. Files are GGUF with llama.cpp's LLaVA projector names."""
    __slots__ = ("model", "in_features", "width")
    _kind = "projector"
    _free = staticmethod(_c.lk_projector_free)

    def __init__(self):
        raise TypeError("use Projector.create(model, in_features) or Projector.load(model, path)")

    @classmethod
    def _wrap(cls, model: "Model", handle: int) -> "Projector":
        p = object.__new__(cls)
        p._handle, p.model = handle, model
        i, w = c_int64(), c_int64()
        _check(_c.lk_projector_info(handle, byref(i), byref(w)))
        p.in_features, p.width = i.value, w.value
        return p

    @classmethod
    def create(cls, model: "Model", in_features: int, seed: int = 0) -> "Projector":
        """A new projector from in_features to model's embedding width (PyTorch nn.Linear initialisation)."""
        if not isinstance(model, Model):
            raise TypeError(f"model must be a lorakit.Model, got {type(model).__name__}")
        out = _lib.lk_projector_p()
        _check(_c.lk_projector_create(model.handle, int(in_features), int(seed), byref(out)))
        return cls._wrap(model, out.value)

    @classmethod
    def load(cls, model: "Model", path) -> "Projector":
        """Read a projector file made for model (its output width must be model's embedding width)."""
        if not isinstance(model, Model):
            raise TypeError(f"model must be a lorakit.Model, got {type(model).__name__}")
        out = _lib.lk_projector_p()
        _check(_c.lk_projector_load(model.handle, os.fsencode(path), byref(out)))
        return cls._wrap(model, out.value)

    def save(self, path) -> None:
        """Write the projector as a GGUF file (atomically)."""
        _check(_c.lk_projector_save(self.handle, os.fsencode(path)))

    def _features(self, features) -> "np.ndarray":
        x = np.ascontiguousarray(features, dtype=np.float32)
        if x.ndim == 1:
            x = x.reshape(-1, self.in_features) if x.size % self.in_features == 0 else x.reshape(1, -1)
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"features must have shape [rows, {self.in_features}], got {list(np.shape(features))}")
        return x

    def forward(self, features) -> "np.ndarray":
        """Embedding rows [rows, width] for features [rows, in_features] (a flat list is split into rows)."""
        x = self._features(features)
        out = np.empty((x.shape[0], self.width), dtype=np.float32)
        _check(_c.lk_projector_forward(self.handle, x.ctypes.data_as(POINTER(c_float)), x.shape[0],
                                       out.ctypes.data_as(POINTER(c_float)), out.size))
        return out

    def backward(self, features, d_out) -> None:
        """Add to the gradients the backward of forward(features) for d_out [rows, width] = dLoss/d(the
        rows it produced), e.g. the rows of Trainer.forward_backward's input gradient where they were placed."""
        x = self._features(features)
        d = np.ascontiguousarray(d_out, dtype=np.float32)
        _check(_c.lk_projector_backward(self.handle, x.ctypes.data_as(POINTER(c_float)), x.shape[0],
                                        d.ctypes.data_as(POINTER(c_float)), d.size))

    def __repr__(self) -> str:
        if self._handle is None:
            return "Projector(<closed>)"
        return f"Projector(in_features={self.in_features}, width={self.width})"


# ---------------------------------------------------------------------------------------------------
# LoRA training
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainProgress:
    """What a training step reports (lk_train_progress). valid_loss is None when the step did not
    validate; loss/lr/grad_norm are NaN in the report of a run that ran no step."""
    step: int
    total_steps: int
    loss: float
    lr: float
    grad_norm: float
    tokens_per_s: float
    tokens: int
    predicted: int
    epoch: float
    elapsed_s: float
    valid_loss: Optional[float]

    @classmethod
    def _from_c(cls, p: "_lib.lk_train_progress") -> "TrainProgress":
        v = p.valid_loss
        return cls(step=p.step, total_steps=p.total_steps, loss=p.loss, lr=p.lr, grad_norm=p.grad_norm,
                   tokens_per_s=p.tokens_per_s, tokens=p.tokens, predicted=p.predicted, epoch=p.epoch,
                   elapsed_s=p.elapsed_s, valid_loss=None if v != v else v)


class TrainRun(NamedTuple):
    """What Trainer.run returns: the last step's progress, and whether the callback stopped the run."""
    last: TrainProgress
    stopped: bool


_SCHEDULES = {"constant": _lib.LK_SCHEDULE_CONSTANT, "linear": _lib.LK_SCHEDULE_LINEAR,
              "cosine": _lib.LK_SCHEDULE_COSINE}
_TRUNCATIONS = {"cut": _lib.LK_TRUNCATE_CUT, "error": _lib.LK_TRUNCATE_ERROR}


def _format_arg(format) -> int:
    if isinstance(format, str):
        try:
            return int(AdapterFormat[format.upper()])
        except KeyError:
            raise ValueError(f"format must be 'peft' or 'gguf', got {format!r}") from None
    return int(format)


def _opt_path(p) -> Optional[bytes]:
    return None if p is None else os.fsencode(p)


class Trainer(_Handle):
    """Trains a LoRA adapter of `model` on a JSONL file (lk_trainer_*). Use from one thread at a time.

        with lorakit.Trainer(model, "train.jsonl", "valid.jsonl", rank=8, targets="all-linear", lr=1e-3,
                             steps=100, out_dir="run/") as t:
            t.run(lambda p: print(p.step, p.loss))     # then run/adapter/ holds the PEFT adapter

    train=None makes a trainer without training data, driven by zero_grad / forward_backward /
    optimizer_step (the caller makes the sequences, e.g. image features as prefix rows).

    Keyword arguments are the fields of lk_train_params (see lorakit.h) with Python values: targets as
    "q,v" / "all-linear" / a list of names, layers as a list of ints (None: all), init "peft" /
    "gaussian" / "random", schedule "constant" / "linear" / "cosine", format "peft" / "gguf", truncate
    "cut" / "error", adam_beta1 / adam_beta2 / adam_epsilon as transformers names them (lr_min_ratio:
    its cosine_with_min_lr min_lr_rate), adapter_type "ia3" / "dora" / ... (a plugin type trained instead
    of LoRA) with adapter_config a dict of PEFT config fields (as Adapter.create), kept_activations
    "f32" / "f16" (or DType; f16: about half the activation memory, gradients within f16 rounding), flags as
    bools, steps None (or 0) = from epochs, paths as str / os.PathLike or None. Nothing is written
    until the first step (or save_checkpoint); with resume_dir the trainer continues from the latest
    checkpoint there.
    """
    __slots__ = ("model", "n_embd", "projector")
    _kind = "trainer"
    _free = staticmethod(_c.lk_trainer_free)

    def __init__(self, model: Model, train, valid=None, *, rank: int = 8, alpha: float = 16.0,
                 targets: "str | Sequence[str]" = "q,v", use_rslora: bool = False,
                 layers: Optional[Sequence[int]] = None, dropout: float = 0.0, init: str = "peft",
                 lr: float = 2e-4, weight_decay: float = 0.01, max_grad_norm: float = 1.0,
                 schedule: str = "constant", warmup_steps: int = 0, steps: Optional[int] = None,
                 epochs: float = 1.0, batch: int = 4, seq: int = 512, grad_accum: int = 1, seed: int = 0,
                 threads: int = 0, shuffle: bool = True, completion_only_loss: bool = True,
                 packing: bool = False, save_every: int = 0, keep: int = 2, valid_every: int = 0,
                 format: "AdapterFormat | str" = AdapterFormat.PEFT, out_dir=None, resume_dir=None,
                 init_adapter=None, log_path=None, adam_beta1: float = 0.9, adam_beta2: float = 0.999,
                 adam_epsilon: float = 1e-8, truncate: str = "cut", lr_min_ratio: float = 0.0,
                 projector: "Optional[Projector]" = None, adapter_type: Optional[str] = None,
                 adapter_config: Optional[dict] = None, kept_activations="f32"):
        self._handle = None
        if not isinstance(model, Model):
            raise TypeError(f"model must be a lorakit.Model, got {type(model).__name__}")
        if init not in _INITS:
            raise ValueError(f"init must be one of {', '.join(map(repr, _INITS))}, got {init!r}")
        if schedule not in _SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(map(repr, _SCHEDULES))}, got {schedule!r}")
        if truncate not in _TRUNCATIONS:
            raise ValueError(f"truncate must be one of {', '.join(map(repr, _TRUNCATIONS))}, got {truncate!r}")
        if not isinstance(targets, str):
            targets = ",".join(targets)
        self.model = model
        self.n_embd = model.info.n_embd
        self.projector = projector
        p = _lib.lk_train_params()
        _c.lk_train_params_init_sized(byref(p), ctypes.sizeof(p))
        p.rank, p.alpha, p.use_rslora, p.targets = int(rank), float(alpha), int(bool(use_rslora)), targets.encode()
        if layers is not None:
            ls = [int(x) for x in layers]
            arr = (c_int32 * max(1, len(ls)))(*ls)
            p.layers, p.n_layers = ctypes.cast(arr, POINTER(c_int32)), len(ls)
        p.dropout, p.init = float(dropout), _INITS[init]
        p.lr, p.weight_decay, p.max_grad_norm = float(lr), float(weight_decay), float(max_grad_norm)
        p.schedule, p.warmup_steps = _SCHEDULES[schedule], int(warmup_steps)
        p.steps, p.epochs, p.batch, p.seq = int(steps or 0), float(epochs), int(batch), int(seq)
        p.grad_accum, p.seed, p.threads = int(grad_accum), int(seed), int(threads)
        p.shuffle, p.completion_only_loss, p.packing = int(bool(shuffle)), int(bool(completion_only_loss)), int(bool(packing))
        p.save_every, p.keep, p.valid_every, p.format = int(save_every), int(keep), int(valid_every), _format_arg(format)
        p.out_dir, p.resume_dir = _opt_path(out_dir), _opt_path(resume_dir)
        p.init_adapter, p.log_path = _opt_path(init_adapter), _opt_path(log_path)
        p.adam_beta1, p.adam_beta2, p.adam_epsilon = float(adam_beta1), float(adam_beta2), float(adam_epsilon)
        p.truncate = _TRUNCATIONS[truncate]
        p.lr_min_ratio = float(lr_min_ratio)
        p.adapter_type, p.adapter_config = _adapter_type_args(adapter_type, adapter_config)
        p.kept_activations = _dtype_arg(kept_activations)
        if projector is not None:
            if not isinstance(projector, Projector):
                raise TypeError(f"projector must be a lorakit.Projector, got {type(projector).__name__}")
            p.projector = projector.handle
        out = _lib.lk_trainer_p()
        _check(_c.lk_trainer_create(model.handle, _opt_path(train), _opt_path(valid), byref(p), byref(out)))
        self._handle = out.value

    def step(self) -> TrainProgress:
        """One optimizer step, with the validation, log line and periodic checkpoint due after it."""
        pr = _lib.lk_train_progress()
        pr.struct_size = ctypes.sizeof(pr)
        _check(_c.lk_trainer_step(self.handle, byref(pr)))
        return TrainProgress._from_c(pr)

    def run(self, callback: Optional[Callable[[TrainProgress], Optional[bool]]] = None) -> TrainRun:
        """Train to the last step, then write the last checkpoint and the final adapter (with out_dir).
        callback(progress) is called after every step; returning False stops the run (stopped=True; the
        checkpoint and adapter are still written). An exception raised by the callback stops the run the
        same way and is re-raised afterwards."""
        error: list = []
        cb = None  # referenced until lk_trainer_run returns
        if callback is not None:
            def trampoline(progress, _user):
                try:
                    return 1 if callback(TrainProgress._from_c(progress.contents)) is False else 0
                except BaseException as e:  # noqa: BLE001 - re-raised after the run stops
                    error.append(e)
                    return 1
            cb = _lib.lk_train_callback(trampoline)
        else:
            cb = _lib.lk_train_callback()
        last = _lib.lk_train_progress()
        last.struct_size = ctypes.sizeof(last)
        status = _check(_c.lk_trainer_run(self.handle, cb, None, byref(last)))
        del cb
        if error:
            raise error[0]
        return TrainRun(TrainProgress._from_c(last), status == _lib.LK_STOPPED)

    def validation_loss(self) -> float:
        """Mean NLL over the validation data's target tokens with the current adapter (raises without
        validation data)."""
        v = ctypes.c_double()
        _check(_c.lk_trainer_validation_loss(self.handle, byref(v)))
        return v.value

    def save_checkpoint(self) -> None:
        """Write a checkpoint of the current state into out_dir."""
        _check(_c.lk_trainer_save_checkpoint(self.handle))

    def adapter(self) -> Adapter:
        """A new Adapter holding a copy of the current values (attach it, save it, merge it)."""
        out = _lib.lk_adapter_p()
        _check(_c.lk_trainer_adapter(self.handle, byref(out)))
        return Adapter._wrap(self.model, out.value)

    # -- low-level training (a Trainer made with train=None) --

    def zero_grad(self) -> None:
        """Set the adapter gradients to zero (before the first forward_backward of a step)."""
        _check(_c.lk_trainer_zero_grad(self.handle))

    def forward_backward(self, tokens, targets=None, prefix=None, loss_scale: float = 1.0,
                         input_grad: bool = False):
        """Forward and backward of one sequence: optional prefix rows ([P, n_embd] float32, e.g. projected
        image features) followed by token ids; targets: per-token 0/1 (None: every token; token 0 is
        predicted only after a prefix). Adds d(loss_scale · Σ NLL)/dθ to the gradients. Returns
        (sum_nll, predicted, grad) with grad = d(loss_scale · Σ NLL)/d(input rows) [P + T, n_embd] when
        input_grad, else None. Only for a Trainer created with train=None."""
        h = self.handle
        n_embd = self.n_embd
        ids, tflags, parr = _sequence_args(tokens, targets, prefix, n_embd)
        tp = tflags.ctypes.data_as(POINTER(ctypes.c_uint8)) if tflags is not None else None
        pre, n_pre = (parr.ctypes.data_as(POINTER(c_float)), parr.shape[0]) if parr is not None else (None, 0)
        grad, gp, cap = None, None, 0
        if input_grad:
            grad = np.empty((n_pre + ids.size, n_embd), dtype=np.float32)
            gp, cap = grad.ctypes.data_as(POINTER(c_float)), grad.size
        s, n = ctypes.c_double(), c_int64()
        _check(_c.lk_trainer_forward_backward(h, ids.ctypes.data_as(POINTER(c_int32)), tp, ids.size, pre, n_pre,
                                              float(loss_scale), byref(s), byref(n), gp, cap))
        return s.value, n.value, grad

    def forward_backward_batch(self, sequences, loss_scale: float = 1.0, input_grad: bool = False):
        """Forward and backward of several sequences in one pass (faster than one forward_backward per
        sequence: each base weight is read once for the batch; the gradients are their sum). sequences:
        (tokens, targets, prefix) tuples, targets and prefix may be None (as in forward_backward). Returns
        (sum_nll, predicted, grads) with grads a list of per-sequence [P + T, n_embd] arrays when input_grad,
        else None."""
        seqs = list(sequences)
        if not seqs:
            raise ValueError("sequences is empty")
        n_embd = self.n_embd
        ids_all, flags_all, pre_all, n_tok, n_pre = [], [], [], [], []
        for s, item in enumerate(seqs):
            tokens, targets, prefix = (tuple(item) + (None, None))[:3]
            ids, t, parr = _sequence_args(tokens, targets, prefix, n_embd, where=f"sequence {s}: ")
            if t is None:
                t = np.ones(ids.size, dtype=np.uint8)
            rows = 0
            if parr is not None:
                pre_all.append(parr)
                rows = parr.shape[0]
            ids_all.append(ids); flags_all.append(t); n_tok.append(ids.size); n_pre.append(rows)
        ids = np.ascontiguousarray(np.concatenate(ids_all), dtype=np.int32)
        flags = np.ascontiguousarray(np.concatenate(flags_all), dtype=np.uint8)
        nt = np.asarray(n_tok, dtype=np.int64)
        npre = np.asarray(n_pre, dtype=np.int64)
        pre = np.ascontiguousarray(np.concatenate(pre_all, axis=0)) if pre_all else None
        total = int(nt.sum() + npre.sum())
        grad, gp, cap = None, None, 0
        if input_grad:
            grad = np.empty((total, n_embd), dtype=np.float32)
            gp, cap = grad.ctypes.data_as(POINTER(c_float)), grad.size
        s_, n_ = ctypes.c_double(), c_int64()
        _check(_c.lk_trainer_forward_backward_batch(
            self.handle, len(seqs), ids.ctypes.data_as(POINTER(c_int32)), flags.ctypes.data_as(POINTER(ctypes.c_uint8)),
            nt.ctypes.data_as(POINTER(c_int64)), pre.ctypes.data_as(POINTER(c_float)) if pre is not None else None,
            npre.ctypes.data_as(POINTER(c_int64)), float(loss_scale), byref(s_), byref(n_), gp, cap))
        grads = None
        if input_grad:
            grads, at = [], 0
            for a, b in zip(n_pre, n_tok):
                grads.append(grad[at:at + a + b])
                at += a + b
        return s_.value, n_.value, grads

    def optimizer_step(self, lr: float) -> float:
        """Clip (to max_grad_norm), AdamW with learning rate lr, count the step; returns the gradient norm
        before clipping. The gradients are not zeroed."""
        norm = ctypes.c_double()
        _check(_c.lk_trainer_optimizer_step(self.handle, float(lr), byref(norm)))
        return norm.value

    def _steps(self) -> tuple[int, int]:
        done, total = c_int64(), c_int64()
        _check(_c.lk_trainer_steps(self.handle, byref(done), byref(total)))
        return done.value, total.value

    @property
    def steps_done(self) -> int:
        """Steps done so far (including those restored from a checkpoint)."""
        return self._steps()[0]

    @property
    def total_steps(self) -> int:
        return self._steps()[1]

    def __repr__(self) -> str:
        if self._handle is None:
            return "Trainer(<closed>)"
        done, total = self._steps()
        return f"Trainer(step {done} of {total})"


# ---------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------

class StopReason(enum.IntEnum):
    """Why generation stopped (LK_STOP_*)."""
    EOS = _lib.LK_STOP_EOS
    STRING = _lib.LK_STOP_STRING
    LENGTH = _lib.LK_STOP_LENGTH
    CALLBACK = _lib.LK_STOP_CALLBACK
    CONTEXT = _lib.LK_STOP_CONTEXT


class GenerationResult(NamedTuple):
    text: str
    tokens: list
    stop_reason: StopReason


def generate(ctx: Context, prompt_tokens, max_tokens: int = 128, temperature: float = 0.8, top_k: int = 40,
             top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0, repeat_last_n: int = 64,
             seed: int = 0, stop: Sequence[str] = (), stop_at_eos: bool = True,
             on_text: Optional[Callable[[str, int], Optional[bool]]] = None) -> GenerationResult:
    """Generate after prompt_tokens (appended to what ctx holds). Returns (text, tokens, stop_reason).

    on_text(piece, token) receives each new piece of text; returning False stops generation
    (stop_reason CALLBACK). An exception raised by on_text stops generation and is re-raised here.
    """
    if not isinstance(ctx, Context):
        raise TypeError(f"ctx must be a lorakit.Context, got {type(ctx).__name__}")
    if isinstance(stop, (str, bytes)):
        stop = [stop]
    a = _ids_arg(prompt_tokens, "prompt_tokens")
    sp = _lib.lk_sampler_params()
    _c.lk_sampler_params_init_sized(byref(sp), ctypes.sizeof(sp))
    sp.temperature, sp.top_k, sp.top_p, sp.min_p = temperature, top_k, top_p, min_p
    sp.repeat_penalty, sp.repeat_last_n, sp.seed = repeat_penalty, repeat_last_n, seed
    gp = _lib.lk_generate_params()
    _c.lk_generate_params_init_sized(byref(gp), ctypes.sizeof(gp))
    gp.max_tokens = max_tokens
    gp.sampler = ctypes.pointer(sp)
    stops = [s.encode("utf-8", "surrogatepass") if isinstance(s, str) else bytes(s) for s in stop]
    stop_arr = (ctypes.c_char_p * max(1, len(stops)))(*stops)
    gp.stop = ctypes.cast(stop_arr, POINTER(ctypes.c_char_p))
    gp.n_stop = len(stops)
    gp.stop_at_eos = int(bool(stop_at_eos))
    error: list = []
    callback = None  # referenced until lk_generate returns
    if on_text is not None:
        def trampoline(piece, length, token, _user):
            try:
                if on_text(ctypes.string_at(piece, length).decode("utf-8", "replace"), token) is False:
                    return 1
                return 0
            except BaseException as e:  # noqa: BLE001 - re-raised after generation stops
                error.append(e)
                return 1
        callback = _lib.lk_token_callback(trampoline)
        gp.callback = callback
    cap = max(0, int(max_tokens))
    ids = (c_int32 * max(1, cap))()
    text = c_void_p()
    res = _lib.lk_generate_result()
    res.struct_size = ctypes.sizeof(res)
    status = _c.lk_generate(ctx.handle, a.ctypes.data_as(POINTER(c_int32)), a.size, byref(gp), byref(text), ids, cap,
                            byref(res))
    del callback
    try:
        _check(status)
        out = ctypes.string_at(text.value).decode("utf-8", "replace") if text.value else ""
    finally:
        if text.value:
            _c.lk_string_free(text)
    if error:
        raise error[0]
    return GenerationResult(out, list(ids[: min(res.n_tokens, cap)]), StopReason(res.stop_reason))


# ---------------------------------------------------------------------------------------------------
# Batch contexts
# ---------------------------------------------------------------------------------------------------

class BatchContext(_Handle):
    """Many sequences over one model, each with its own KV cache positions and LoRA adapters, evaluated
    together (lk_batch_*): one step() runs every listed sequence's new tokens as one batch, reading each
    base weight once. Use from one thread at a time.

    BatchContext(model, max_sequences, n_ctx=0, n_threads=0, kv_type="f32"): n_ctx positions per sequence
    (0 = min(model context, 4096)), n_threads 0 = cpu_count(); kv_type "f16" (or DType.F16) keeps the KV
    caches in f16 (half the memory; logits then match a Context with kv_type "f16").
    """
    __slots__ = ("model", "n_vocab", "max_sequences")
    _kind = "batch context"
    _free = staticmethod(_c.lk_batch_free)

    def __init__(self, model: Model, max_sequences: int, n_ctx: int = 0, n_threads: int = 0, kv_type="f32"):
        self._handle = None
        if not isinstance(model, Model):
            raise TypeError(f"model must be a lorakit.Model, got {type(model).__name__}")
        self.model = model
        self.n_vocab = model.info.n_vocab
        self.max_sequences = int(max_sequences)
        p = _lib.lk_batch_params()
        _c.lk_batch_params_init_sized(byref(p), ctypes.sizeof(p))
        p.max_sequences, p.n_ctx, p.n_threads = int(max_sequences), int(n_ctx), int(n_threads)
        p.kv_type = _dtype_arg(kv_type)
        out = _lib.lk_batch_p()
        _check(_c.lk_batch_new_with_params(model.handle, byref(p), byref(out)))
        self._handle = out.value

    def add_sequence(self) -> int:
        """A new empty sequence (no adapters); its id."""
        s = c_int32()
        _check(_c.lk_batch_add_sequence(self.handle, byref(s)))
        return s.value

    def remove_sequence(self, seq: int) -> None:
        """Remove a sequence (its cache becomes free)."""
        _check(_c.lk_batch_remove_sequence(self.handle, int(seq)))

    def fork(self, seq: int) -> int:
        """A new sequence with a copy of seq's cache, positions, adapters and scales; its id."""
        s = c_int32()
        _check(_c.lk_batch_fork(self.handle, int(seq), byref(s)))
        return s.value

    def truncate(self, seq: int, position: int) -> None:
        """Drop seq's cached positions from `position` on."""
        _check(_c.lk_batch_truncate(self.handle, int(seq), int(position)))

    def position(self, seq: int) -> int:
        """Positions cached for seq."""
        p = c_int32()
        _check(_c.lk_batch_position(self.handle, int(seq), byref(p)))
        return p.value

    @property
    def sequences(self) -> list[int]:
        """Ids of the live sequences, ascending."""
        buf = (c_int32 * max(1, self.max_sequences))()
        n = c_int64()
        _check(_c.lk_batch_sequences(self.handle, buf, self.max_sequences, byref(n)))
        return list(buf[:n.value])

    def set_adapters(self, seq: int, adapters=()) -> None:
        """Set seq's adapters (LoRA or plugin types): a sequence of Adapters and/or (Adapter, scale) pairs (scale 1.0 when
        omitted), applied in order; () = none. Other sequences are not touched."""
        if isinstance(adapters, Adapter):
            adapters = [adapters]
        handles, scales, n = _adapter_arrays(adapters)
        _check(_c.lk_batch_set_adapters(self.handle, int(seq), handles, scales, n))

    def step(self, inputs) -> "np.ndarray":
        """One step. inputs: {seq: tokens} or a sequence of (seq, tokens) pairs; each sequence appends its
        tokens (one to decode, several to prefill). Returns float32 logits [len(inputs), n_vocab], row i
        after input i's last token."""
        items = list(inputs.items()) if isinstance(inputs, dict) else list(inputs)
        if not items:
            raise ValueError("step: no sequences given")
        seqs, counts, parts = [], [], []
        for i, item in enumerate(items):
            try:
                seq, toks = item
            except (TypeError, ValueError):
                raise TypeError(f"inputs[{i}] must be a (sequence, tokens) pair") from None
            ids = _ids_arg([toks] if isinstance(toks, (int, np.integer)) else toks, f"inputs[{i}] tokens")
            seqs.append(int(seq))
            counts.append(ids.size)
            parts.append(ids)
        s = np.asarray(seqs, dtype=np.int64)
        if s.min() < -2**31 or s.max() >= 2**31:
            raise ValueError("step: sequence ids must fit in int32")
        s = s.astype(np.int32)
        n = np.asarray(counts, dtype=np.int64)
        toks = np.ascontiguousarray(np.concatenate(parts) if n.sum() else np.zeros(1, dtype=np.int32), dtype=np.int32)
        out = np.empty((len(items), self.n_vocab), dtype=np.float32)
        _check(_c.lk_batch_step(self.handle, len(items), s.ctypes.data_as(POINTER(c_int32)),
                                toks.ctypes.data_as(POINTER(c_int32)), n.ctypes.data_as(POINTER(c_int64)),
                                out.ctypes.data_as(POINTER(c_float)), out.size))
        return out

    def __repr__(self) -> str:
        return "BatchContext(<closed>)" if self._handle is None else f"BatchContext(sequences={self.sequences})"

"""Smoke tests of the Python binding: every function of lorakit.h reached through it, errors as
LoRAKitError with the right status and message, matmul against numpy, and handle misuse raising
instead of crashing.

Run: LORAKIT_LIBRARY=/path/to/liblorakit.so python3 -m pytest -q bindings/python/tests
(`make test-python` does this.) Quantized-dtype tests skip while lk_tensor_from_f32 returns
LK_ERR_UNSUPPORTED (the quantizer lands from another branch); they assert the real behaviour.
"""
from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the binding from this checkout, installed or not

import lorakit as lk  # noqa: E402
from lorakit import DType, LoRAKitError, Status, Tensor, _lib  # noqa: E402


def rng(seed=0):
    return np.random.default_rng(seed)


def run_isolated(code: str) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter (for calls that change process-wide state such as the default
    thread pool, so a crash there fails one test instead of the whole run)."""
    env = dict(os.environ, PYTHONPATH=str(HERE.parent), SWIFT_BACKTRACE="enable=no")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=300)


def quantized_or_skip(array, dtype) -> Tensor:
    try:
        return Tensor(array, dtype=dtype)
    except LoRAKitError as e:
        if e.status == Status.UNSUPPORTED:
            pytest.skip(f"expected to fail until the quantizer lands: lk_tensor_from_f32 to {dtype} returns "
                        f"LK_ERR_UNSUPPORTED ({e.message})")
        raise


# ---------------------------------------------------------------------------------------------------
# Loading (the mirror itself is checked against lorakit.h in test_header_mirror.py)
# ---------------------------------------------------------------------------------------------------

def test_library_loaded_from_env():
    want = os.environ.get("LORAKIT_LIBRARY")
    if want:
        assert os.path.samefile(_lib.path, want)


def test_import_error_lists_what_was_tried():
    r = run_isolated("""
        import os
        os.environ["LORAKIT_LIBRARY"] = "/nonexistent/liblorakit.so"
        try:
            import lorakit
        except ImportError as e:
            print(e)
            raise SystemExit(0)
        raise SystemExit("imported without a library")
    """)
    assert r.returncode == 0, r.stderr
    assert "/nonexistent/liblorakit.so" in r.stdout and "LORAKIT_LIBRARY" in r.stdout


# ---------------------------------------------------------------------------------------------------
# Library functions
# ---------------------------------------------------------------------------------------------------

def test_versions():
    assert lk.abi_version() == lk.ABI_VERSION == _lib.ABI_VERSION
    assert re.fullmatch(r"\d+\.\d+\.\d+", lk.version())


def test_status_strings():
    names = {s: lk.status_string(s) for s in Status}
    assert names[Status.OK] == "ok"
    assert "argument" in names[Status.INVALID_ARGUMENT]
    assert "handle" in names[Status.INVALID_HANDLE]
    assert "buffer" in names[Status.BUFFER_TOO_SMALL]
    assert len(set(names.values())) == len(names)
    assert "unknown" in lk.status_string(12345)


def test_last_error_and_clear():
    lk.clear_error()
    assert lk.last_error() == ""
    with pytest.raises(LoRAKitError):
        lk.dtype_info(99)
    assert "99" in lk.last_error()
    lk.clear_error()
    assert lk.last_error() == ""


def test_last_error_is_per_thread():
    with pytest.raises(LoRAKitError):
        lk.dtype_info(77)
    seen = {}

    def worker():
        seen["before"] = lk.last_error()
        with pytest.raises(LoRAKitError):
            lk.dtype_info(88)
        seen["after"] = lk.last_error()

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen["before"] == ""
    assert "88" in seen["after"]
    assert "77" in lk.last_error()


def test_dtypes():
    expect = {DType.F32: ("f32", 1, 4), DType.F16: ("f16", 1, 2), DType.BF16: ("bf16", 1, 2),
              DType.Q8_0: ("q8_0", 32, 34), DType.Q4_0: ("q4_0", 32, 18), DType.Q4_1: ("q4_1", 32, 20)}
    for d, (name, bs, bb) in expect.items():
        assert str(d) == name
        assert _lib.lib.lk_dtype_name(d).decode() == name
        assert lk.dtype_info(d) == (bs, bb) == (d.block_size, d.block_bytes)
        assert DType.parse(name) is d
    assert _lib.lib.lk_dtype_name(99) is None
    with pytest.raises(LoRAKitError) as e:
        lk.dtype_info(99)
    assert e.value.status == Status.INVALID_ARGUMENT and "dtype 99" in e.value.message
    with pytest.raises(ValueError):
        DType.parse("q3_k")


def test_cpu_count_and_default_threads():
    assert lk.cpu_count() >= 1
    assert lk.get_threads() >= 1


@pytest.mark.parametrize("bad", [0, -1, 513])
def test_set_threads_rejects(bad):
    before = lk.get_threads()
    with pytest.raises(LoRAKitError) as e:
        lk.set_threads(bad)
    assert e.value.status == Status.INVALID_ARGUMENT
    assert f"n_threads {bad}" in e.value.message
    assert lk.get_threads() == before


def test_set_threads_and_matmul_isolated():
    # In a fresh process: changing the default pool is process-wide (and crashed LoRAKit 0.1.0, see the
    # C test test_threads.c:test_replace_default_pool).
    r = run_isolated("""
        import numpy as np, lorakit as lk
        x = np.random.default_rng(1).standard_normal((65, 96), dtype=np.float32)
        w = np.random.default_rng(2).standard_normal((130, 96), dtype=np.float32)
        results = []
        for n in (1, 2, 1, 2, 3):
            lk.set_threads(n)
            assert lk.get_threads() == n, (lk.get_threads(), n)
            results.append(lk.matmul(x, w).numpy())
        np.testing.assert_allclose(results[0], x @ w.T, rtol=1e-4, atol=1e-4)
        for r in results[1:]:
            assert np.array_equal(r, results[0]), "results depend on the thread count"
        import os
        base = len(os.listdir("/proc/self/task"))
        for _ in range(10):
            lk.set_threads(3)
            lk.matmul(x, w).close()
        import time; time.sleep(0.2)
        now = len(os.listdir("/proc/self/task"))
        assert now <= base + 1, f"replaced pools keep their threads: {base} -> {now} threads"
        print("ok")
    """)
    assert r.returncode == 0 and r.stdout.strip() == "ok", f"exit {r.returncode}: {r.stderr[-2000:]}"


# ---------------------------------------------------------------------------------------------------
# Tensors
# ---------------------------------------------------------------------------------------------------

def test_tensor_roundtrip_f32():
    a = rng(1).standard_normal((3, 5), dtype=np.float32)
    with Tensor(a) as t:
        assert t.shape == (3, 5) and t.ndim == 2
        assert t.dtype is DType.F32
        assert t.size == 15 and t.nbytes == 60
        assert np.array_equal(t.numpy(), a)
        assert t.raw_bytes() == a.tobytes()
        assert np.array_equal(np.asarray(t), a)
        assert "shape=(3, 5)" in repr(t)
    assert t.closed


def test_tensor_from_float64_and_lists():
    t = Tensor([[1.0, 2.5], [3.0, -4.0]])
    assert t.shape == (2, 2)
    assert t.numpy().tolist() == [[1.0, 2.5], [3.0, -4.0]]
    t64 = Tensor(np.arange(6, dtype=np.float64).reshape(1, 2, 3))
    assert t64.shape == (1, 2, 3) and t64.numpy().dtype == np.float32


def test_tensor_zeros_every_dtype():
    for d in DType:
        with Tensor.zeros((2, 64), d) as t:
            assert t.dtype is d and t.shape == (2, 64)
            assert t.nbytes == 128 // d.block_size * d.block_bytes
            assert not t.numpy().any()
            assert t.raw_bytes() == bytes(t.nbytes)


def test_tensor_ranks_and_empty():
    for r in range(1, _lib.LK_MAX_DIMS + 1):
        shape = tuple([2, 1, 3, 1, 2, 1, 1, 2][:r])
        with Tensor.zeros(shape) as t:
            assert t.shape == shape and t.size == int(np.prod(shape))
    with Tensor.zeros((0, 5)) as t:
        assert t.size == 0 and t.nbytes == 0
        assert t.numpy().shape == (0, 5)
        assert t.raw_bytes() == b""


def test_convert_f32():
    a = rng(2).standard_normal((4, 8), dtype=np.float32)
    with Tensor(a) as t, t.convert(DType.F32) as c:
        assert np.array_equal(c.numpy(), a)
        assert c.handle != t.handle


def test_constructor_errors():
    cases = [
        (lambda: Tensor.zeros((2, 3), 99), Status.INVALID_ARGUMENT, "dtype 99"),
        (lambda: Tensor(np.zeros(4), dtype=99), Status.INVALID_ARGUMENT, "dtype 99"),
        (lambda: Tensor.zeros((2, -3)), Status.INVALID_ARGUMENT, "negative"),
        (lambda: Tensor.zeros(()), Status.INVALID_ARGUMENT, "n_dims 0"),
        (lambda: Tensor.zeros((1,) * 9), Status.INVALID_ARGUMENT, "n_dims 9"),
        (lambda: Tensor.zeros((1 << 40, 1 << 40)), Status.INVALID_ARGUMENT, "overflow"),
        (lambda: Tensor.zeros((1 << 40,)), Status.OUT_OF_MEMORY, "allocate"),
        (lambda: Tensor.zeros((2, 33), DType.Q8_0), Status.SHAPE, "block"),
    ]
    with Tensor(np.arange(6, dtype=np.float32)) as keep:
        for make, status, text in cases:
            with pytest.raises(LoRAKitError) as e:
                make()
            assert e.value.status == status, (text, e.value)
            assert text in e.value.message and text in str(e.value)
            # Unrelated tensors still work after an error.
            assert keep.numpy().tolist() == [0, 1, 2, 3, 4, 5]


def test_convert_errors():
    with Tensor(np.ones((2, 3))) as t:
        with pytest.raises(LoRAKitError) as e:
            t.convert(99)
        assert e.value.status == Status.INVALID_ARGUMENT and "dtype 99" in e.value.message


# ---------------------------------------------------------------------------------------------------
# Handle misuse
# ---------------------------------------------------------------------------------------------------

def test_closed_tensor_raises():
    t = Tensor(np.ones((2, 2)))
    t.close()
    t.close()  # idempotent
    for use in (lambda: t.shape, lambda: t.dtype, lambda: t.size, lambda: t.nbytes, t.numpy, t.raw_bytes,
                lambda: t.convert(DType.F32), lambda: t.handle, lambda: lk.matmul(t, np.ones((2, 2))),
                lambda: lk.matmul(np.ones((2, 2)), t), lambda: lk.matmul(np.ones((2, 2)), np.ones((2, 2)), out=t)):
        with pytest.raises(LoRAKitError) as e:
            use()
        assert e.value.status == Status.INVALID_HANDLE and "closed" in e.value.message
    assert repr(t) == "Tensor(<closed>)"


def test_raw_handle_misuse_through_lib():
    c = _lib.lib
    h = _lib.lk_tensor_p()
    shape = (ctypes.c_int64 * 1)(4)
    assert c.lk_tensor_new(_lib.LK_DTYPE_F32, 1, shape, ctypes.byref(h)) == _lib.LK_OK
    assert c.lk_tensor_free(h) == _lib.LK_OK
    assert c.lk_tensor_free(h) == _lib.LK_ERR_INVALID_HANDLE  # double free
    assert "not a live handle" in lk.last_error()
    d = _lib.lk_dtype(-5)
    assert c.lk_tensor_dtype(h, ctypes.byref(d)) == _lib.LK_ERR_INVALID_HANDLE and d.value == -5  # use after free
    assert c.lk_tensor_dtype(0x1234, ctypes.byref(d)) == _lib.LK_ERR_INVALID_HANDLE  # forged
    assert c.lk_tensor_free(None) == _lib.LK_OK
    assert c.lk_tensor_dtype(None, ctypes.byref(d)) == _lib.LK_ERR_INVALID_HANDLE
    assert "NULL" in lk.last_error()
    with Tensor(np.ones(3)) as t:
        assert c.lk_tensor_dtype(t.handle, None) == _lib.LK_ERR_INVALID_ARGUMENT
        assert "dtype" in lk.last_error()


def test_buffer_too_small_through_lib():
    c = _lib.lib
    with Tensor(np.arange(6, dtype=np.float32).reshape(2, 3)) as t:
        buf = (ctypes.c_float * 6)(*([-42.0] * 6))
        assert c.lk_tensor_copy_to_f32(t.handle, buf, 5) == _lib.LK_ERR_BUFFER_TOO_SMALL
        assert "capacity 5" in lk.last_error()
        assert list(buf) == [-42.0] * 6
        raw = ctypes.create_string_buffer(b"\xee" * 24, 24)
        assert c.lk_tensor_copy_bytes(t.handle, raw, 23) == _lib.LK_ERR_BUFFER_TOO_SMALL
        assert raw.raw == b"\xee" * 24
        nd = ctypes.c_int32(0)
        dims = (ctypes.c_int64 * 1)(-5)
        assert c.lk_tensor_shape(t.handle, ctypes.byref(nd), dims, 1) == _lib.LK_ERR_BUFFER_TOO_SMALL
        assert nd.value == 2 and dims[0] == -5


def test_del_frees_and_is_safe():
    import gc

    for _ in range(200):
        Tensor(np.ones((16, 16)))
    gc.collect()
    t = Tensor.__new__(Tensor)  # never initialised: __del__ must not fail
    del t
    gc.collect()


# ---------------------------------------------------------------------------------------------------
# matmul vs numpy
# ---------------------------------------------------------------------------------------------------

SHAPES = [(7, 13, 5), (1, 64, 33), (65, 96, 130), (1, 1, 1), (33, 17, 1), (16, 300, 16)]


@pytest.mark.parametrize("transpose_w", [True, False])
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_matmul_matches_numpy(m, k, n, transpose_w):
    r = rng(m * 1000 + k + n)
    x = r.standard_normal((m, k), dtype=np.float32)
    w = r.standard_normal((n, k) if transpose_w else (k, n), dtype=np.float32)
    want = x.astype(np.float64) @ (w.T if transpose_w else w).astype(np.float64)
    bound = np.abs(x).astype(np.float64) @ np.abs(w.T if transpose_w else w).astype(np.float64)
    with Tensor(x) as tx, Tensor(w) as tw:
        got = lk.matmul(tx, tw, transpose_w=transpose_w)
        assert got.shape == (m, n) and got.dtype is DType.F32
        assert np.all(np.abs(got.numpy() - want) <= 1e-5 * bound + 1e-6)
        # Into an existing out (overwritten, not accumulated).
        with Tensor(np.full((m, n), 1e3, dtype=np.float32)) as out:
            assert lk.matmul(tx, tw, transpose_w, out=out) is out
            assert np.array_equal(out.numpy(), got.numpy())
        got.close()
    # numpy arrays directly.
    with lk.matmul(x, w, transpose_w) as got2:
        assert np.all(np.abs(got2.numpy() - want) <= 1e-5 * bound + 1e-6)


def test_matmul_errors():
    x = np.ones((2, 3), dtype=np.float32)
    with pytest.raises(LoRAKitError) as e:
        lk.matmul(x, np.ones((4, 5)))
    assert e.value.status == Status.SHAPE and "x is [2, 3]" in e.value.message
    with pytest.raises(LoRAKitError) as e:
        lk.matmul(x, np.ones((4, 3)), out=Tensor.zeros((2, 5)))
    assert e.value.status == Status.SHAPE and "out is [2, 5]" in e.value.message
    with pytest.raises(LoRAKitError) as e:
        lk.matmul(np.ones(3), np.ones((4, 3)))
    assert e.value.status == Status.SHAPE and "2-D" in e.value.message
    with Tensor(x) as tx:
        with pytest.raises(LoRAKitError) as e:
            lk.matmul(tx, np.ones((3, 3)), out=tx)
        assert e.value.status == Status.INVALID_ARGUMENT and "out" in e.value.message
        assert tx.numpy().tolist() == x.tolist()
    with pytest.raises(TypeError):
        lk.matmul("not an array", x)


def test_matmul_quantized_weight_zero():
    with Tensor.zeros((5, 64), DType.Q4_1) as w, lk.matmul(np.ones((3, 64)), w) as y:
        assert y.shape == (3, 5) and not y.numpy().any()


# ---------------------------------------------------------------------------------------------------
# Quantized dtypes (skip until the quantizer lands)
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,nbytes", [(DType.Q8_0, 68), (DType.Q4_0, 36), (DType.Q4_1, 40),
                                          (DType.F16, 128), (DType.BF16, 128)])
def test_quantized_sizes_and_roundtrip(dtype, nbytes):
    x = rng(3).standard_normal(64, dtype=np.float32) * 3
    t = quantized_or_skip(x, dtype)
    with t:
        assert t.dtype is dtype and t.shape == (64,)
        assert t.nbytes == nbytes and len(t.raw_bytes()) == nbytes
        back = t.numpy()
        blocks = x.reshape(-1, 32) if dtype.block_size == 32 else None
        h = 2.0 ** -11
        if dtype is DType.F16:
            bound = np.abs(x) * h + 2.0 ** -25
            assert t.raw_bytes() == x.astype(np.float16).tobytes()
        elif dtype is DType.BF16:
            bound = np.abs(x) * 2.0 ** -8
        elif dtype is DType.Q8_0:
            amax = np.abs(blocks).max(axis=1, keepdims=True)
            bound = np.broadcast_to(amax * (0.5 / 127 + h) * 1.01, blocks.shape).ravel()
            d = np.float16(amax[0, 0] / 127)
            assert t.raw_bytes()[:2] == d.tobytes()  # block 0's scale, as ggml stores it
        elif dtype is DType.Q4_0:
            amax = np.abs(blocks).max(axis=1, keepdims=True)
            bound = np.broadcast_to(amax / 8 * (1 + 8 * h) * 1.01, blocks.shape).ravel()
        else:
            mn, mx = blocks.min(axis=1, keepdims=True), blocks.max(axis=1, keepdims=True)
            bound = np.broadcast_to(((mx - mn) / 15 * (0.5 + 15 * h) + np.abs(mn) * h) * 1.01, blocks.shape).ravel()
        assert np.all(np.abs(back - x) <= bound + 1e-7)
        with Tensor(x) as f, f.convert(dtype) as c:
            assert c.raw_bytes() == t.raw_bytes()
        with t.convert(DType.F32) as f32:
            assert np.array_equal(f32.numpy(), back)


@pytest.mark.parametrize("dtype", [DType.Q8_0, DType.Q4_0, DType.Q4_1])
def test_quantized_matmul_matches_dequantized(dtype):
    r = rng(4)
    x = r.standard_normal((3, 96), dtype=np.float32)
    w = quantized_or_skip(r.standard_normal((40, 96), dtype=np.float32), dtype)
    with w:
        wd = w.numpy().astype(np.float64)
        want = x.astype(np.float64) @ wd.T
        bound = np.abs(x).astype(np.float64) @ np.abs(wd).T
        with lk.matmul(x, w) as y:
            assert np.all(np.abs(y.numpy() - want) <= 1e-5 * bound + 1e-6)

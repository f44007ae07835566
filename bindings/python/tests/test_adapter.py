"""LoRA adapters through the Python binding (mirrors Tests/c/test_adapter.c).

Expected logits are PEFT's, from Tests/LoRAKitTests/Fixtures/lora/reference.json (see its README);
tolerance 2e-4 (the README's figure for an F32 runtime). The model is the tiny random LLaMA fixture.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from lorakit import Adapter, AdapterFormat, Context, DType, LoRAKitError, Model, Status, _lib  # noqa: E402

FIXTURES = HERE.parents[2] / "Tests" / "LoRAKitTests" / "Fixtures"
TINY = FIXTURES / "model" / "tiny-llama-f32.gguf"
LORA = FIXTURES / "lora"
REAL = os.environ.get("LORAKIT_MODEL") or ""
TOL = 2e-4
PEFT_FIXTURES = ["r4_all", "rslora_qv", "patterns_all"]


@pytest.fixture(scope="module")
def reference():
    return json.loads((LORA / "reference.json").read_text())


@pytest.fixture
def tiny():
    with Model(TINY) as m:
        yield m


def all_logits(ctx: Context, ids) -> np.ndarray:
    ctx.reset()
    return ctx.eval(ids, logits="all")


def expect_error(status, substr, fn, *args, **kw):
    with pytest.raises(LoRAKitError) as e:
        fn(*args, **kw)
    assert e.value.status == status, e.value
    if substr:
        assert substr in e.value.message, e.value.message
    return e.value


def check_peft(ctx, reference, name, key):
    for s, ids in enumerate(reference["sequences"]):
        want = np.asarray(reference["adapters"][name][key][s], dtype=np.float32)
        got = all_logits(ctx, ids)
        assert got.shape == want.shape
        d = float(np.max(np.abs(got - want)))
        assert d <= TOL, f"{name}.{key} sequence {s}: max |Δ| {d}"


def test_lora_params_layout():
    assert _lib.lib.lk_sizeof_lora_params() == __import__("ctypes").sizeof(_lib.lk_lora_params)


@pytest.mark.parametrize("name", PEFT_FIXTURES)
def test_peft_parity(tiny, reference, name):
    a = Adapter.load(tiny, LORA / name)
    with Context(tiny, n_ctx=64) as c:
        c.attach(a)
        check_peft(c, reference, name, "logits")
        c.set_scale(a, 0.5)
        check_peft(c, reference, name, "logits_scale_0_5")
    a.close()


def test_gguf_lora_parity(tiny, reference):
    with Adapter.load(tiny, LORA / "lora_a.gguf") as a, Context(tiny, n_ctx=64) as c:
        c.attach(a, scale=1.0)
        check_peft(c, reference, "r4_all", "logits")


def test_scale_zero_and_detach_bit_exact(tiny, reference):
    ids = reference["sequences"][1]
    a = Adapter.load(tiny, LORA / "r4_all")
    with Context(tiny, n_ctx=64) as base_ctx, Context(tiny, n_ctx=64) as c:
        base = all_logits(base_ctx, ids)
        c.attach(a, scale=0.0)
        assert np.array_equal(all_logits(c, ids), base)
        c.set_scale(a, 1.0)
        assert np.max(np.abs(all_logits(c, ids) - base)) > 0.01
        c.detach(a)
        assert np.array_equal(all_logits(c, ids), base)
        c.attach(a)
        c.detach_all()
        assert np.array_equal(all_logits(c, ids), base)


def test_two_contexts(tiny, reference):
    a = Adapter.load(tiny, LORA / "r4_all")
    b = Adapter.load(tiny, LORA / "rslora_qv")
    with Context(tiny, n_ctx=64) as c1, Context(tiny, n_ctx=64) as c2:
        c1.attach(a)
        c2.attach(b)
        check_peft(c1, reference, "r4_all", "logits")
        check_peft(c2, reference, "rslora_qv", "logits")


@pytest.mark.parametrize("fmt,name", [("peft", "peft_dir"), (AdapterFormat.GGUF, "x.gguf")])
def test_create_save_load(tiny, reference, tmp_path, fmt, name):
    ids = reference["sequences"][1]
    a = Adapter.create(tiny, rank=4, alpha=6, targets="all-linear", use_rslora=True, init="random", seed=3)
    a.save(tmp_path / name, fmt)
    b = Adapter.load(tiny, tmp_path / name)
    with Context(tiny, n_ctx=64) as c1, Context(tiny, n_ctx=64) as c2, Context(tiny, n_ctx=64) as c0:
        c1.attach(a)
        c2.attach(b)
        x, y, base = all_logits(c1, ids), all_logits(c2, ids), all_logits(c0, ids)
        assert np.array_equal(x, y)
        assert np.max(np.abs(x - base)) > 0.01
        z = Adapter.create(tiny, targets=["q", "v"])  # PEFT init: B = 0
        c0.attach(z)
        assert np.array_equal(all_logits(c0, ids), base)


def test_merge_to_file(tiny, reference, tmp_path):
    a = Adapter.load(tiny, LORA / "r4_all")
    b = Adapter.load(tiny, LORA / "patterns_all")
    tiny.merge_to_file(a, tmp_path / "m1.gguf", DType.F32)
    with Model(tmp_path / "m1.gguf") as mm, Context(mm, n_ctx=64) as c:
        check_peft(c, reference, "r4_all", "logits_merged")
    tiny.merge_to_file([(a, 0.5), (b, 1.5)], tmp_path / "m2.gguf")
    ids = reference["sequences"][1]
    with Model(tmp_path / "m2.gguf") as mm, Context(mm, n_ctx=64) as c, Context(tiny, n_ctx=64) as ca:
        ca.attach(a, 0.5)
        ca.attach(b, 1.5)
        assert np.max(np.abs(all_logits(c, ids) - all_logits(ca, ids))) <= 1e-4


def test_bad_input(tiny, tmp_path):
    a = Adapter.load(tiny, LORA / "r4_all")
    with Model(TINY) as other, Context(tiny, n_ctx=64) as c:
        foreign = Adapter.load(other, LORA / "r4_all")
        expect_error(Status.INVALID_ARGUMENT, "another model", c.attach, foreign)
        expect_error(Status.INVALID_ARGUMENT, "adapters[0]", tiny.merge_to_file, foreign, tmp_path / "x.gguf")
        for bad in (math.nan, math.inf, -math.inf):
            expect_error(Status.INVALID_ARGUMENT, "scale", c.attach, a, bad)
        expect_error(Status.INVALID_ARGUMENT, "not attached", c.detach, a)
        expect_error(Status.INVALID_ARGUMENT, "not attached", c.set_scale, a, 1.0)
        c.attach(a)
        expect_error(Status.INVALID_ARGUMENT, "already attached", c.attach, a)
        expect_error(Status.INVALID_ARGUMENT, "scale", c.set_scale, a, math.nan)
        with pytest.raises(TypeError):
            c.attach(tiny)
    expect_error(Status.IO, "/nonexistent", Adapter.load, tiny, "/nonexistent/adapter")
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(LORA / "r4_all" / "adapter_model.safetensors", bad)
    (bad / "adapter_config.json").write_text('{"peft_type": "LORA", "r": ')
    expect_error(Status.FORMAT, "adapter_config.json", Adapter.load, tiny, bad)
    expect_error(Status.INVALID_ARGUMENT, "rank", Adapter.create, tiny, rank=0)
    expect_error(Status.INVALID_ARGUMENT, "bogus", Adapter.create, tiny, targets="q,bogus")
    expect_error(Status.INVALID_ARGUMENT, "alpha", Adapter.create, tiny, alpha=math.nan)
    with pytest.raises(ValueError):
        Adapter.create(tiny, init="zeros")
    with pytest.raises(ValueError):
        a.save(tmp_path / "x", "onnx")
    expect_error(Status.INVALID_ARGUMENT, "out_type", tiny.merge_to_file, a, tmp_path / "x.gguf", DType.BF16)
    expect_error(Status.INVALID_ARGUMENT, "n 0", tiny.merge_to_file, [], tmp_path / "x.gguf")
    a.close()
    expect_error(Status.INVALID_HANDLE, "closed", a.save, tmp_path / "y")
    with pytest.raises(TypeError):
        Adapter()


@pytest.mark.skipif(not REAL, reason="SKIPPED: LORAKIT_MODEL not set (run `make model`)")
def test_real_model_adapter_on_tiny_model(tiny, tmp_path):
    with Model(REAL) as big:
        a = Adapter.create(big, rank=2)
        a.save(tmp_path / "big", "peft")
        expect_error(Status.SHAPE, "lora_A", Adapter.load, tiny, tmp_path / "big")

"""Batch contexts through the Python binding (mirrors Tests/c/test_batch.c): sequences with different
adapters in one step give the logits of a Context running each alone; fork / truncate / remove; bad
input raises with the library's message and changes nothing."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from lorakit import Adapter, BatchContext, Context, LoRAKitError, Model, Status  # noqa: E402

FIXTURES = HERE.parents[2] / "Tests" / "LoRAKitTests" / "Fixtures"
TINY = FIXTURES / "model" / "tiny-llama-f32.gguf"
REAL = os.environ.get("LORAKIT_MODEL") or ""


@pytest.fixture
def tiny():
    with Model(TINY) as m:
        yield m


def expect_error(status, substr, fn, *args, **kw):
    with pytest.raises(LoRAKitError) as e:
        fn(*args, **kw)
    assert e.value.status == status, e.value
    assert substr in str(e.value), e.value


def reference(model, adapters, chunks, n_ctx=64, kv_type="f32"):
    """Logits after each chunk, evaluated on a Context with `adapters` attached."""
    with Context(model, n_ctx=n_ctx, n_threads=2, kv_type=kv_type) as c:
        for a, s in adapters:
            c.attach(a, s)
        return [c.eval(ch) for ch in chunks]


def test_mixed_batch_matches_contexts(tiny):
    a = Adapter.create(tiny, rank=8, targets="q,v", init="random", seed=1)
    b2 = Adapter.create(tiny, rank=4, targets="k,o,down", init="random", seed=2)
    sets = [[], [(a, 1.0)], [(a, 0.5), (b2, -1.0)]]
    with BatchContext(tiny, max_sequences=4, n_ctx=64, n_threads=2) as bc:
        ids = [bc.add_sequence() for _ in sets]
        for i, s in zip(ids, sets):
            bc.set_adapters(i, s)
        prompts = [[5, 77, 300, 2, 511], [42, 9], [130, 260, 17, 88, 401, 3, 250, 199, 64]]
        out1 = bc.step(list(zip(ids, prompts)))
        assert out1.shape == (3, bc.n_vocab) and out1.dtype == np.float32
        assert [bc.position(i) for i in ids] == [5, 2, 9]
        nxt = [11, 12, 13]
        out2 = bc.step({i: t for i, t in zip(ids, nxt)})
        for k in range(3):
            r = reference(tiny, sets[k], [prompts[k], [nxt[k]]])
            assert np.max(np.abs(out1[k] - r[0])) < 1e-3
            assert np.max(np.abs(out2[k] - r[1])) < 1e-3
        # The adapters matter.
        assert np.max(np.abs(out1[1] - reference(tiny, [], [prompts[1]])[0])) > 1e-2
        # Fork sequence 2, truncate sequence 0, remove sequence 1, then a step with a 2-token input.
        f = bc.fork(ids[2])
        assert bc.position(f) == 10
        bc.truncate(ids[0], 4)
        bc.remove_sequence(ids[1])
        assert bc.sequences == sorted([ids[0], ids[2], f])
        out3 = bc.step([(f, [7, 8]), (ids[0], 21)])
        rf = reference(tiny, sets[2], [prompts[2], [nxt[2]], [7, 8]])[2]
        r0 = reference(tiny, [], [prompts[0][:4], [21]])[1]
        assert np.max(np.abs(out3[0] - rf)) < 1e-3
        assert np.max(np.abs(out3[1] - r0)) < 1e-3
        assert bc.position(f) == 12 and bc.position(ids[0]) == 5


def test_f16_kv_cache_matches_f16_contexts(tiny):
    a = Adapter.create(tiny, rank=8, targets="q,v", init="random", seed=1)
    sets = [[], [(a, 1.0)]]
    prompts = [[5, 77, 300, 2, 511], list(range(3, 60, 3))]  # 5 and 19 tokens (a blocked prefill)
    with BatchContext(tiny, max_sequences=3, n_ctx=64, n_threads=2, kv_type="f16") as bc:
        ids = [bc.add_sequence() for _ in sets]
        for i, s in zip(ids, sets):
            bc.set_adapters(i, s)
        out1 = bc.step(list(zip(ids, prompts)))
        f = bc.fork(ids[1])
        out2 = bc.step([(ids[0], 11), (ids[1], 12), (f, 13)])
        for k in range(2):
            r = reference(tiny, sets[k], [prompts[k], [11 + k]], kv_type="f16")
            assert np.max(np.abs(out1[k] - r[0])) < 1e-3
            assert np.max(np.abs(out2[k] - r[1])) < 1e-3
        rf = reference(tiny, sets[1], [prompts[1], [13]], kv_type="f16")[1]
        assert np.max(np.abs(out2[2] - rf)) < 1e-3
        # An f16 cache is not an f32 one: the f32 reference differs by more than the batch does.
        r32 = reference(tiny, sets[1], [prompts[1], [12]])[1]
        assert np.max(np.abs(out2[1] - r32)) > np.max(np.abs(out2[1] - reference(tiny, sets[1], [prompts[1], [12]], kv_type="f16")[1]))
    expect_error(Status.INVALID_ARGUMENT, "params->kv_type", BatchContext, tiny, 2, kv_type="q8_0")
    expect_error(Status.INVALID_ARGUMENT, "params->n_ctx", BatchContext, tiny, 2, n_ctx=-1)


def test_bad_input_changes_nothing(tiny):
    with BatchContext(tiny, max_sequences=2, n_ctx=16, n_threads=1) as bc:
        s0, s1 = bc.add_sequence(), bc.add_sequence()
        expect_error(Status.LIMIT, "in use", bc.add_sequence)
        bc.step([(s0, [1, 2, 3]), (s1, [4])])
        expect_error(Status.INVALID_ARGUMENT, "twice", bc.step, [(s0, [1]), (s0, [2])])
        expect_error(Status.INVALID_ARGUMENT, "no sequence 9", bc.step, [(s0, [1]), (9, [2])])
        expect_error(Status.INVALID_ARGUMENT, "vocabulary", bc.step, [(s1, [1]), (s0, [tiny.info.n_vocab])])
        expect_error(Status.INVALID_ARGUMENT, "overflow", bc.step, [(s0, [1] * 14)])
        expect_error(Status.INVALID_ARGUMENT, "n_tokens[0]", bc.step, [(s0, [])])
        with pytest.raises(ValueError):
            bc.step([])
        assert (bc.position(s0), bc.position(s1)) == (3, 1)
        expect_error(Status.INVALID_ARGUMENT, "outside", bc.truncate, s0, 4)
        expect_error(Status.INVALID_ARGUMENT, "no sequence 5", bc.position, 5)
        a = Adapter.create(tiny, rank=2, init="random", seed=3)
        expect_error(Status.INVALID_ARGUMENT, "twice", bc.set_adapters, s0, [a, (a, 2.0)])
        expect_error(Status.INVALID_ARGUMENT, "scales[0]", bc.set_adapters, s0, [(a, float("nan"))])
        with Model(TINY) as other:
            ao = Adapter.create(other)
            expect_error(Status.INVALID_ARGUMENT, "another model", bc.set_adapters, s0, [ao])
        with pytest.raises(TypeError):
            bc.set_adapters(s0, ["not an adapter"])
        assert (bc.position(s0), bc.position(s1)) == (3, 1)
    expect_error(Status.INVALID_HANDLE, "closed", bc.add_sequence)
    with pytest.raises(TypeError):
        BatchContext("not a model", 2)
    expect_error(Status.INVALID_ARGUMENT, "max_sequences", BatchContext, tiny, 0)


@pytest.mark.skipif(not REAL, reason="LORAKIT_MODEL not set (run `make model`)")
def test_real_model_greedy_equal():
    with Model(REAL) as m:
        a = Adapter.create(m, rank=8, targets="q,v", init="random", seed=5)
        prompts = [m.tokenize("The capital of France is"), m.tokenize("1, 2, 3,")]
        with BatchContext(m, max_sequences=2, n_ctx=64, n_threads=2) as bc:
            ids = [bc.add_sequence(), bc.add_sequence()]
            bc.set_adapters(ids[1], [(a, 1.0)])
            logits = bc.step(list(zip(ids, prompts)))
            got = [[], []]
            for _ in range(8):
                toks = [int(np.argmax(row)) for row in logits]
                for k in range(2):
                    got[k].append(toks[k])
                logits = bc.step(list(zip(ids, toks)))
        for k, adapters in enumerate([[], [(a, 1.0)]]):
            with Context(m, n_ctx=64, n_threads=2) as c:
                for ad, s in adapters:
                    c.attach(ad, s)
                lg = c.eval(prompts[k])
                want = []
                for _ in range(8):
                    t = int(np.argmax(lg))
                    want.append(t)
                    lg = c.eval([t])
            assert got[k] == want

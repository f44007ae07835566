"""Multimodal projectors through the Python binding: the reduced multimodal example on the tiny model.

Model: the tiny HF-folder LLaMA of Tests/LoRAKitTests/Fixtures/train/model. Features are synthetic
"images" (4 patches of 8 values, one pattern per class); the answer is one token per class. The
projector's forward is checked against numpy (W2 · gelu_erf(W0 x + b0) + b2, weights read back from the
saved GGUF file with the library's own GGUF reader of the gguf package when present, else from the
file's raw tensors), training must lower the loss and move both the projector and the adapter, and the
checkpoint/resume round trip must reproduce an uninterrupted run exactly.
"""
from __future__ import annotations

import math
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from lorakit import Context, LoRAKitError, Model, Projector, Status, Trainer  # noqa: E402

MODEL = HERE.parents[2] / "Tests" / "LoRAKitTests" / "Fixtures" / "train" / "model"
PATCHES, FEATURES = 4, 8
ANSWERS = [11, 23, 37]  # one answer token per class


@pytest.fixture
def model():
    with Model(MODEL) as m:
        yield m


def images(n, seed):
    rng = np.random.default_rng(seed)
    patterns = np.random.default_rng(99).normal(size=(len(ANSWERS), PATCHES, FEATURES)).astype(np.float32)
    labels = rng.integers(0, len(ANSWERS), size=n)
    x = patterns[labels] + 0.1 * rng.normal(size=(n, PATCHES, FEATURES)).astype(np.float32)
    return x, labels


def read_gguf_f32(path):
    """The f32 tensors of a GGUF file, read with a minimal independent parser (v3, f32 only)."""
    b = Path(path).read_bytes()
    assert b[:4] == b"GGUF"
    off = 8
    n_t, n_kv = struct.unpack_from("<QQ", b, off)
    off += 16

    def string(o):
        (n,) = struct.unpack_from("<Q", b, o)
        return b[o + 8:o + 8 + n].decode(), o + 8 + n

    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def value(t, o):
        if t == 8:
            return string(o)[1]
        if t == 9:
            (et, n) = struct.unpack_from("<IQ", b, o)
            o += 12
            for _ in range(n):
                o = value(et, o)
            return o
        return o + sizes[t]

    align = 32
    for _ in range(n_kv):
        k, off = string(off)
        (t,) = struct.unpack_from("<I", b, off)
        off += 4
        if k == "general.alignment":
            (align,) = struct.unpack_from("<I", b, off)
        off = value(t, off)
    infos = []
    for _ in range(n_t):
        name, off = string(off)
        (nd,) = struct.unpack_from("<I", b, off)
        off += 4
        dims = struct.unpack_from(f"<{nd}Q", b, off)
        off += 8 * nd
        t, o = struct.unpack_from("<IQ", b, off)
        off += 12
        assert t == 0, f"{name}: type {t}"
        infos.append((name, tuple(reversed(dims)), o))
    data = (off + align - 1) // align * align
    out = {}
    for name, shape, o in infos:
        n = int(np.prod(shape))
        out[name] = np.frombuffer(b, dtype="<f4", count=n, offset=data + o).reshape(shape)
    return out


def test_forward_matches_numpy_and_file_round_trip(model, tmp_path):
    p = Projector.create(model, in_features=FEATURES, seed=5)
    assert (p.in_features, p.width) == (FEATURES, model.info.n_embd)
    path = tmp_path / "mm.gguf"
    p.save(path)
    t = read_gguf_f32(path)
    assert list(t) == ["mm.0.weight", "mm.0.bias", "mm.2.weight", "mm.2.bias"]
    assert t["mm.0.weight"].shape == (model.info.n_embd, FEATURES)
    x, _ = images(3, seed=1)
    x = x.reshape(-1, FEATURES)
    h = x.astype(np.float64) @ t["mm.0.weight"].T + t["mm.0.bias"]
    gelu = 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
    want = gelu @ t["mm.2.weight"].T + t["mm.2.bias"]
    got = p.forward(x)
    assert got.shape == (3 * PATCHES, model.info.n_embd)
    assert np.max(np.abs(got - want)) < 1e-5
    q = Projector.load(model, path)
    assert np.array_equal(q.forward(x), got)
    with pytest.raises(ValueError):
        p.forward(np.zeros((2, FEATURES + 1), dtype=np.float32))
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(LoRAKitError) as e:
        p.forward(bad)
    assert e.value.status == Status.INVALID_ARGUMENT


def write_projector_gguf(path, width, in_features, seed=0):
    """A projector file written by this test (GGUF v3, f32), independent of the library's writer."""
    rng = np.random.default_rng(seed)
    tensors = [("mm.0.weight", rng.normal(size=(width, in_features))), ("mm.0.bias", rng.normal(size=width)),
               ("mm.2.weight", rng.normal(size=(width, width))), ("mm.2.bias", rng.normal(size=width))]

    def s(x):
        e = x.encode()
        return struct.pack("<Q", len(e)) + e
    kv = [s("general.architecture") + struct.pack("<I", 8) + s("clip"),
          s("clip.projector_type") + struct.pack("<I", 8) + s("mlp"),
          s("clip.vision.projection_dim") + struct.pack("<II", 4, width),
          s("lorakit.projector.input_width") + struct.pack("<II", 4, in_features)]
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv)) + b"".join(kv)
    data, offsets = b"", []
    for _, t in tensors:
        offsets.append(len(data))
        data += np.asarray(t, dtype="<f4").tobytes()
        data += b"\0" * (-len(data) % 32)
    for (name, t), o in zip(tensors, offsets):
        dims = list(reversed(np.shape(t)))
        out += s(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims) + struct.pack("<IQ", 0, o)
    out += b"\0" * (-len(out) % 32)
    Path(path).write_bytes(out + data)


def test_width_mismatch_is_refused(model, tmp_path):
    good = tmp_path / "good.gguf"
    write_projector_gguf(good, model.info.n_embd, FEATURES)
    p = Projector.load(model, good)
    assert (p.in_features, p.width) == (FEATURES, model.info.n_embd)
    t = read_gguf_f32(good)
    x = np.ones((1, FEATURES), dtype=np.float32)
    h = x.astype(np.float64) @ t["mm.0.weight"].T + t["mm.0.bias"]
    want = (0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))) @ t["mm.2.weight"].T + t["mm.2.bias"]
    assert np.max(np.abs(p.forward(x) - want)) < 1e-4 * max(1.0, np.max(np.abs(want)))
    wide = tmp_path / "wide.gguf"
    write_projector_gguf(wide, model.info.n_embd + 8, FEATURES)
    with pytest.raises(LoRAKitError) as e:
        Projector.load(model, wide)
    assert e.value.status == Status.SHAPE
    assert "does not fit the model's embedding width" in str(e.value) and str(wide) in str(e.value)


def train_steps(model, trainer, projector, steps, seed0):
    """Steps of the multimodal recipe: prefix = projected patches, then a fixed prompt token and the
    class's answer token (the only target)."""
    losses = []
    for s in range(steps):
        x, labels = images(4, seed=seed0 + s)
        trainer.zero_grad()
        total = 0.0
        for xi, y in zip(x, labels):
            rows = projector.forward(xi)
            sn, n, grad = trainer.forward_backward([7, ANSWERS[y]], targets=[0, 1], prefix=rows,
                                                   loss_scale=1.0 / len(labels), input_grad=True)
            assert n == 1 and grad.shape == (PATCHES + 2, model.info.n_embd)
            projector.backward(xi, grad[:PATCHES])
            total += sn
        trainer.optimizer_step(5e-3)
        losses.append(total / len(labels))
    return losses


def accuracy(model, projector, adapter, n=30):
    ctx = Context(model, n_threads=2)
    if adapter is not None:
        ctx.attach(adapter)
    x, labels = images(n, seed=12345)
    right = 0
    for xi, y in zip(x, labels):
        ctx.reset()
        ctx.eval_embeddings(projector.forward(xi), logits="none")
        logits = ctx.eval([7])
        right += int(max(ANSWERS, key=lambda a: logits[a]) == ANSWERS[y])
    return right / n


def test_training_learns_and_resumes_exactly(model, tmp_path):
    opts = dict(rank=4, alpha=8, targets="q,v", lr=5e-3, weight_decay=0.0, threads=2, seed=3)
    p1 = Projector.create(model, in_features=FEATURES, seed=1)
    start = p1.forward(np.ones((1, FEATURES), dtype=np.float32))
    with Trainer(model, None, projector=p1, **opts) as t1:
        a0 = t1.adapter()
        before = accuracy(model, p1, a0)
        all_losses = train_steps(model, t1, p1, 30, seed0=100)
        after = accuracy(model, p1, t1.adapter())
    assert all_losses[-1] < 0.5 * all_losses[0], all_losses
    assert after >= 0.9 and after > before, (before, after)
    assert not np.array_equal(start, p1.forward(np.ones((1, FEATURES), dtype=np.float32)))

    # 12 steps, a checkpoint, then a new trainer resumes with a fresh projector: same losses and values.
    run = tmp_path / "run"
    p2 = Projector.create(model, in_features=FEATURES, seed=1)
    with Trainer(model, None, projector=p2, out_dir=run, **opts) as t2:
        first = train_steps(model, t2, p2, 12, seed0=100)
        t2.save_checkpoint()
    assert (run / "checkpoint-12" / "projector.gguf").exists()
    p3 = Projector.create(model, in_features=FEATURES, seed=77)
    with Trainer(model, None, projector=p3, out_dir=run, resume_dir=run, **opts) as t3:
        assert t3.steps_done == 12
        rest = train_steps(model, t3, p3, 18, seed0=112)
    assert first + rest == all_losses
    probe = np.linspace(-1, 1, 2 * FEATURES, dtype=np.float32).reshape(2, FEATURES)
    assert np.array_equal(p3.forward(probe), p1.forward(probe))
    # Resuming that checkpoint without a projector is refused, naming the file.
    with pytest.raises(LoRAKitError) as e:
        Trainer(model, None, resume_dir=run, **opts)
    assert "projector" in str(e.value)


def test_batched_forward_backward_equals_one_call_per_sequence(model, tmp_path):
    """forward_backward_batch over sequences of different lengths, with and without prefixes, gives the
    losses, input gradients and (after an optimizer step) adapter of one forward_backward per sequence."""
    opts = dict(rank=4, alpha=8, targets="q,v", lr=5e-3, weight_decay=0.0, threads=2, seed=3)
    rng = np.random.default_rng(5)
    n_embd = model.info.n_embd
    seqs = [([7, 11, 23], [0, 1, 1], rng.normal(size=(4, n_embd)).astype(np.float32) * 0.1),
            ([5, 9, 13, 17, 21], None, None),
            ([37], [1], rng.normal(size=(2, n_embd)).astype(np.float32) * 0.1)]
    results = []
    for batched in (False, True):
        with Trainer(model, None, **opts) as t:
            t.zero_grad()
            if batched:
                s, n, grads = t.forward_backward_batch(seqs, loss_scale=0.25, input_grad=True)
            else:
                s, n, grads = 0.0, 0, []
                for tokens, targets, prefix in seqs:
                    si, ni, gi = t.forward_backward(tokens, targets=targets, prefix=prefix, loss_scale=0.25,
                                                    input_grad=True)
                    s, n = s + si, n + ni
                    grads.append(gi)
            norm = t.optimizer_step(1e-2)
            out = tmp_path / f"adapter-{batched}"
            t.adapter().save(out)
            results.append((s, n, grads, norm, (out / "adapter_model.safetensors").read_bytes()))
    (s0, n0, g0, norm0, _), (s1, n1, g1, norm1, _) = results
    assert n0 == n1 == 2 + 4 + 1
    assert abs(s0 - s1) <= 1e-5 * abs(s0)
    assert [g.shape for g in g0] == [g.shape for g in g1] == [(7, n_embd), (5, n_embd), (3, n_embd)]
    for a, b in zip(g0, g1):
        assert np.max(np.abs(a - b)) <= 1e-5 * max(1e-3, float(np.max(np.abs(a))))
    assert abs(norm0 - norm1) <= 1e-5 * norm0 and norm0 > 0
    # A bad sequence is named by its index; nothing runs.
    with Trainer(model, None, **opts) as t:
        with pytest.raises(LoRAKitError) as e:
            t.forward_backward_batch([([7, 11], None, None), ([7, 10 ** 6], None, None)])
        assert e.value.status == Status.INVALID_ARGUMENT and "sequence 1 token 1" in str(e.value), str(e.value)
        with pytest.raises(ValueError):
            t.forward_backward_batch([])

"""LoRA training through the Python binding (mirrors Tests/c/test_train.c, shorter).

Model and data: the tiny HF-folder LLaMA of Tests/LoRAKitTests/Fixtures/train/model and
Fixtures/train/data/text.jsonl. References do not come from the trainer: the token ids of the examples
are Fixtures/train/examples.json (made by `tokenizers`), the validation loss is recomputed from the
inference path (Context.eval with the trained adapter), and the saved PEFT adapter is loaded by PEFT
itself (torch + transformers + peft) and must give LoRAKit's logits.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from lorakit import Adapter, Context, LoRAKitError, Model, Status, Trainer, TrainProgress, _lib  # noqa: E402

FX = HERE.parents[2] / "Tests" / "LoRAKitTests" / "Fixtures" / "train"
MODEL = FX / "model"
TEXT = FX / "data" / "text.jsonl"
BAD = FX / "data" / "bad.jsonl"
SEQ = 64
FAST = dict(targets="all-linear", lr=1e-2, seq=SEQ, batch=4, threads=2)


@pytest.fixture
def model():
    with Model(MODEL) as m:
        yield m


@pytest.fixture(scope="module")
def examples():
    ex = json.loads((FX / "examples.json").read_text())["text.jsonl"]["examples"]
    assert len(ex) == 16
    return [e["ids"][:SEQ] for e in ex]


def reference_loss(model, examples, adapter=None) -> float:
    """Mean NLL of every token but the first of each example (the "text" targets), by inference."""
    total, count = 0.0, 0
    with Context(model, n_ctx=128, n_threads=2) as ctx:
        if adapter is not None:
            ctx.attach(adapter)
        for ids in examples:
            ctx.reset()
            logits = ctx.eval(ids, logits="all").astype(np.float64)
            m = logits.max(axis=1, keepdims=True)
            lse = (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))[:, 0]
            total += float(np.sum(lse[:-1] - logits[np.arange(len(ids) - 1), ids[1:]]))
            count += len(ids) - 1
    return total / count


def expect_error(status, substr, fn, *args, **kw):
    with pytest.raises(LoRAKitError) as e:
        fn(*args, **kw)
    assert e.value.status == status, e.value
    if substr:
        assert substr in e.value.message, e.value.message
    return e.value


def test_params_defaults():
    import ctypes
    p = _lib.lk_train_params()
    _lib.lib.lk_train_params_init_sized(ctypes.byref(p), ctypes.sizeof(p))
    assert p.struct_size == ctypes.sizeof(p) == _lib.lib.lk_sizeof_train_params()
    assert (p.rank, p.alpha, p.lr, p.weight_decay, p.max_grad_norm, p.batch, p.seq, p.keep, p.shuffle) == \
        (8, 16.0, 2e-4, 0.01, 1.0, 4, 512, 2, 1)
    assert (p.adam_beta1, p.adam_beta2, p.adam_epsilon, p.truncate) == (0.9, 0.999, 1e-8, _lib.LK_TRUNCATE_CUT)
    assert ctypes.sizeof(_lib.lk_train_progress) == _lib.lib.lk_sizeof_train_progress()
    # The first-version init (programs built against the older header) writes that version's bytes only.
    first = _lib.lk_train_params.log_path.offset + ctypes.sizeof(ctypes.c_char_p)
    q = _lib.lk_train_params()
    ctypes.memset(ctypes.byref(q), 0xAB, ctypes.sizeof(q))
    _lib.lib.lk_train_params_init(ctypes.byref(q))
    assert q.struct_size == first and q.rank == 8 and q.log_path is None
    assert bytes(q)[first:] == b"\xab" * (ctypes.sizeof(q) - first)
    # A size below the first version writes nothing.
    r = _lib.lk_train_params()
    ctypes.memset(ctypes.byref(r), 0xAB, ctypes.sizeof(r))
    _lib.lib.lk_train_params_init_sized(ctypes.byref(r), first - 1)
    assert bytes(r) == b"\xab" * ctypes.sizeof(r)


def test_adam_settings_and_truncation(model):
    def losses(**kw):
        with Trainer(model, TEXT, steps=2, shuffle=False, **dict(FAST, **kw)) as t:
            seen: list[TrainProgress] = []
            t.run(seen.append)
            return [p.loss for p in seen]
    base = losses()
    # A large epsilon damps AdamW's first update (lr·g/(|g|+eps) instead of ≈ lr·sign(g)): the same first
    # loss (B = 0, the base model's), then less progress.
    damped = losses(adam_epsilon=1.0)
    assert damped[0] == base[0] and damped[1] > base[1] + 1e-3, (base, damped)
    expect_error(Status.INVALID_ARGUMENT, "params->adam_beta1", Trainer, model, TEXT, steps=1, adam_beta1=1.0, **FAST)
    expect_error(Status.INVALID_ARGUMENT, "params->adam_epsilon", Trainer, model, TEXT, steps=1, adam_epsilon=0.0, **FAST)
    # truncate="error": examples longer than seq are refused, naming the file and line.
    e = expect_error(Status.FORMAT, "truncation is set to error", Trainer, model, TEXT, steps=1, truncate="error",
                     **dict(FAST, seq=4))
    assert "text.jsonl:1:" in e.message, e.message
    with pytest.raises(ValueError):
        Trainer(model, TEXT, steps=1, truncate="drop", **FAST)


def test_lr_min_ratio_is_transformers_cosine_with_min_lr(model):
    """lr_min_ratio is transformers' min_lr_rate (get_cosine_with_min_lr_schedule_with_warmup): every step's
    learning rate is lr · λ(s), λ = s/W in the warm-up, then c · (1 − m) + m with c the half cosine."""
    import ctypes
    p = _lib.lk_train_params()
    _lib.lib.lk_train_params_init_sized(ctypes.byref(p), ctypes.sizeof(p))
    assert p.lr_min_ratio == 0.0  # the default: plain cosine
    W, T, m, lr = 2, 6, 0.25, FAST["lr"]
    with Trainer(model, TEXT, steps=T, schedule="cosine", warmup_steps=W, lr_min_ratio=m, **FAST) as t:
        seen: list[TrainProgress] = []
        t.run(seen.append)
    got = [p.lr for p in seen]

    def formula(s):
        if s < W:
            return lr * (s / W)
        return lr * (0.5 * (1.0 + math.cos(math.pi * (s - W) / (T - W))) * (1 - m) + m)

    assert got == pytest.approx([formula(s) for s in range(T)], rel=1e-15, abs=0), got
    assert got[W] == lr and got[-1] > lr * m
    try:
        import torch
        from transformers import get_cosine_with_min_lr_schedule_with_warmup
    except ImportError:
        pass  # the formula above is the reference
    else:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
        sched = get_cosine_with_min_lr_schedule_with_warmup(opt, W, T, min_lr_rate=m)
        theirs = []
        for _ in range(T):
            theirs.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        assert got == theirs
    expect_error(Status.INVALID_ARGUMENT, "params->lr_min_ratio", Trainer, model, TEXT, steps=1, schedule="cosine",
                 lr_min_ratio=1.5, **FAST)
    expect_error(Status.INVALID_ARGUMENT, "params->lr_min_ratio", Trainer, model, TEXT, steps=1, schedule="linear",
                 lr_min_ratio=0.1, **FAST)


def test_training_reduces_loss(model, examples, tmp_path):
    with Trainer(model, TEXT, TEXT, steps=30, out_dir=tmp_path / "out", **FAST) as t:
        assert (t.steps_done, t.total_steps) == (0, 30)
        v0 = t.validation_loss()
        ref0 = reference_loss(model, examples)
        assert abs(v0 - ref0) <= 1e-4 * ref0 and 6 < v0 < 8
        seen: list[TrainProgress] = []
        run = t.run(seen.append)
        assert not run.stopped and [p.step for p in seen] == list(range(1, 31))
        assert all(math.isfinite(p.loss) and p.lr == 1e-2 and p.grad_norm > 0 for p in seen)
        assert all(p.valid_loss is None for p in seen[:-1]) and seen[-1].valid_loss is not None
        assert run.last == seen[-1]
        first = np.mean([p.loss for p in seen[:5]])
        final = np.mean([p.loss for p in seen[-5:]])
        assert final < 0.5 * first, (first, final)
        v1 = t.validation_loss()
        assert v1 == run.last.valid_loss and v1 < 0.5 * v0
        with t.adapter() as a:
            ref1 = reference_loss(model, examples, a)
        assert abs(v1 - ref1) <= 1e-4 * ref1, (v1, ref1)
        expect_error(Status.INVALID_ARGUMENT, "all 30 steps are done", t.step)
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").exists()
    assert (tmp_path / "out" / "latest").read_text() == "checkpoint-30\n"


def test_callback_stops_and_exceptions_propagate(model, tmp_path):
    with Trainer(model, TEXT, steps=10, out_dir=tmp_path / "a", format="gguf", **FAST) as t:
        run = t.run(lambda p: p.step < 3)
        assert run.stopped and run.last.step == 3 and t.steps_done == 3
        assert (tmp_path / "a" / "adapter.gguf").exists()
        expect_error(Status.INVALID_ARGUMENT, "no validation data", t.validation_loss)

    def boom(p):
        if p.step == 2:
            raise KeyError("from the callback")

    with Trainer(model, TEXT, steps=10, out_dir=tmp_path / "b", **FAST) as t:
        with pytest.raises(KeyError, match="from the callback"):
            t.run(boom)
        assert t.steps_done == 2
        assert (tmp_path / "b" / "latest").read_text() == "checkpoint-2\n"


def test_resume_matches_uninterrupted(model, tmp_path):
    opts = dict(FAST, steps=8, schedule="cosine", warmup_steps=2, batch=3, grad_accum=2, dropout=0.1, seed=7)
    with Trainer(model, TEXT, out_dir=tmp_path / "a", **opts) as t:
        straight = []
        t.run(straight.append)
    with Trainer(model, TEXT, out_dir=tmp_path / "b", **opts) as t:
        resumed = [t.step() for _ in range(4)]
        t.save_checkpoint()
    with Trainer(model, TEXT, out_dir=tmp_path / "b", resume_dir=tmp_path / "b", **opts) as t:
        assert t.steps_done == 4
        t.run(resumed.append)
    assert [p.step for p in resumed] == list(range(1, 9))
    for a, b in zip(straight, resumed):
        assert (a.loss, a.lr, a.grad_norm, a.tokens) == (b.loss, b.lr, b.grad_norm, b.tokens), a.step
    assert straight[0].lr == 0 and straight[2].lr == 1e-2


def test_bad_input(model, tmp_path):
    expect_error(Status.INVALID_ARGUMENT, "params->lr", Trainer, model, TEXT, lr=float("nan"))
    expect_error(Status.INVALID_ARGUMENT, "params->lr", Trainer, model, TEXT, lr=-1e-3)
    expect_error(Status.INVALID_ARGUMENT, "params->rank", Trainer, model, TEXT, rank=0)
    expect_error(Status.INVALID_ARGUMENT, "bogus", Trainer, model, TEXT, targets="q,bogus")
    expect_error(Status.INVALID_ARGUMENT, "params->layers[0] = 9", Trainer, model, TEXT, layers=[9])
    expect_error(Status.IO, "missing.jsonl", Trainer, model, tmp_path / "missing.jsonl")
    e = expect_error(Status.FORMAT, "6 bad lines", Trainer, model, BAD)
    for line in (2, 4, 5, 7, 8, 9):
        assert f"bad.jsonl:{line}:" in e.message
    for line in (1, 3, 6, 10):
        assert f"bad.jsonl:{line}:" not in e.message
    with pytest.raises(ValueError, match="schedule"):
        Trainer(model, TEXT, schedule="step")
    with pytest.raises(TypeError):
        Trainer("not a model", TEXT)
    t = Trainer(model, TEXT, steps=2, **FAST)
    expect_error(Status.INVALID_ARGUMENT, "out_dir", t.save_checkpoint)
    t.close()
    t.close()  # idempotent
    expect_error(Status.INVALID_HANDLE, "closed", t.step)
    # The trainer keeps its model: closing the Model first is fine.
    t = Trainer(model, TEXT, steps=2, **FAST)
    model.close()
    assert math.isfinite(t.step().loss)
    t.close()


def test_peft_loads_the_trained_adapter(model, examples, tmp_path):
    """The PEFT folder a trainer writes, loaded by PEFT on the same HF model, gives LoRAKit's logits."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with Trainer(model, TEXT, steps=6, out_dir=tmp_path, rank=4, alpha=8, use_rslora=True, **FAST) as t:
        t.run()
        with t.adapter() as a, Context(model, n_ctx=128, n_threads=2) as ctx:
            ctx.attach(a)
            ids = examples[0]
            ours = ctx.eval(ids, logits="all")
            ctx.detach_all()
            ctx.reset()
            base = ctx.eval(ids, logits="all")
    torch.set_num_threads(2)
    hf = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    with torch.no_grad():
        theirs = peft_model(torch.tensor([ids])).logits[0].numpy()
    d = float(np.max(np.abs(ours - theirs)))
    effect = float(np.max(np.abs(ours - base)))
    print(f"LoRAKit vs PEFT max abs diff {d:.3g}, effect of the adapter {effect:.3g}")
    assert d <= 2e-4, f"LoRAKit vs PEFT max |Δ| {d}"
    assert effect > 0.05, f"training barely changed the logits ({effect}): the comparison would prove little"


def test_kept_activations_f16(model):
    """kept_activations="f16": the loss is the f32 one exactly, the input gradient within f16 rounding of the
    f32 one (and not equal: the activations are rounded); a bad value is refused naming the field."""
    ids = [(i * 37 + 11) % 500 for i in range(24)]
    out = {}
    for kept in ("f32", "f16"):
        with Trainer(model, None, init_adapter=FX / "text_all" / "init", threads=2, kept_activations=kept) as t:
            t.zero_grad()
            out[kept] = t.forward_backward(ids, loss_scale=1 / 23, input_grad=True)
    (s32, n32, g32), (s16, n16, g16) = out["f32"], out["f16"]
    assert n32 == n16 == 23 and s16 == s32
    worst, scale = float(np.max(np.abs(g16 - g32))), float(np.max(np.abs(g32)))
    assert 0 < worst <= 1e-2 * scale, (worst, scale)
    expect_error(Status.INVALID_ARGUMENT, "params->kept_activations", Trainer, model, None, kept_activations=5)


def test_low_level_input_gradient_matches_pytorch(model):
    """A Trainer without training data (train=None), driven by forward_backward / optimizer_step: the loss
    and dLoss/d(inputs_embeds) of PyTorch (reference.json → runs.text_all.embedding_grad_check, with the
    text_all initial adapter); then token 0 given as a prefix embedding row instead of an id."""
    import struct
    ref = json.loads((FX / "reference.json").read_text())["runs"]["text_all"]["embedding_grad_check"]
    ids = ref["ids"]
    want = np.asarray(ref["grad_inputs_embeds"], dtype=np.float64)
    with Trainer(model, None, init_adapter=FX / "text_all" / "init", threads=2) as t:
        assert t.steps_done == 0
        t.zero_grad()
        s, n, g = t.forward_backward(ids, loss_scale=1 / 23, input_grad=True)
        assert n == 23 and abs(s / 23 - ref["loss"]) <= 1e-5 * ref["loss"]
        assert g.shape == (24, 64)
        assert float(np.max(np.abs(g - want))) <= 1e-4 * ref["grad_inputs_embeds_max_abs"]
        # Token 0 as a prefix row (its row of the embedding table, read from model.safetensors).
        raw = (MODEL / "model.safetensors").read_bytes()
        (hlen,) = struct.unpack("<Q", raw[:8])
        meta = json.loads(raw[8:8 + hlen])["model.embed_tokens.weight"]
        table = np.frombuffer(raw, dtype=np.float32, offset=8 + hlen + meta["data_offsets"][0],
                              count=512 * 64).reshape(512, 64)
        s2, n2, g2 = t.forward_backward(ids[1:], targets=[1] * 23, prefix=table[ids[0]], loss_scale=1 / 23,
                                        input_grad=True)
        assert n2 == 23 and abs(s2 - s) <= 1e-6 * s and float(np.max(np.abs(g2 - g))) <= 1e-6
        norm = t.optimizer_step(1e-3)
        assert math.isfinite(norm) and norm > 0 and t.steps_done == 1
        expect_error(Status.INVALID_ARGUMENT, "lr", t.optimizer_step, float("nan"))
        expect_error(Status.INVALID_ARGUMENT, "no training data", t.step)
        with pytest.raises(ValueError, match="targets"):
            t.forward_backward(ids, targets=[1, 0])
    with Trainer(model, TEXT, steps=2, **FAST) as t:
        expect_error(Status.INVALID_ARGUMENT, "train_path NULL", t.forward_backward, ids)

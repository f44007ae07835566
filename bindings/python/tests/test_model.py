"""Models, tokenizer, chat, contexts and generation through the Python binding (mirrors
Tests/c/test_model.c).

The tiny random LLaMA fixture (no tokenizer) is always used. The real-model tests need $LORAKIT_MODEL
(SmolLM2-135M-Instruct Q4_1; `make model`, `make test-python` passes it) and are SKIPPED loudly
without it.
"""
from __future__ import annotations

import ctypes
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import lorakit as lk  # noqa: E402
from lorakit import ChatLimit, Context, LoRAKitError, Model, Status, StopReason, _lib  # noqa: E402

TINY = HERE.parents[2] / "Tests" / "LoRAKitTests" / "Fixtures" / "model" / "tiny-llama-f32.gguf"
REAL = os.environ.get("LORAKIT_MODEL") or ""

needs_real = pytest.mark.skipif(
    not REAL, reason="SKIPPED: LORAKIT_MODEL not set (run `make model`, or set it to SmolLM2-135M-Instruct.Q4_1.gguf)")


@pytest.fixture
def tiny():
    with Model(TINY) as m:
        yield m


@pytest.fixture(scope="module")
def real():
    if not REAL:
        pytest.skip("SKIPPED: LORAKIT_MODEL not set")
    with Model(REAL) as m:
        yield m


def expect_error(status, substr, fn, *args, **kw):
    with pytest.raises(LoRAKitError) as e:
        fn(*args, **kw)
    assert e.value.status == status, e.value
    if substr:
        assert substr in e.value.message, e.value.message
    return e.value


# ---------------------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------------------

def test_struct_sizes_match_library():
    for name, (struct, sizeof) in _lib.STRUCTS.items():
        assert ctypes.sizeof(struct) == getattr(_lib.lib, sizeof)(), name
    assert ctypes.sizeof(_lib.lk_model_info) == 80 and ctypes.sizeof(_lib.lk_generate_params) == 48


def test_params_init_defaults():
    sp = _lib.lk_sampler_params()
    _lib.lib.lk_sampler_params_init(ctypes.byref(sp))
    assert sp.struct_size == ctypes.sizeof(sp)
    assert (round(sp.temperature, 6), sp.top_k, round(sp.top_p, 6), sp.repeat_last_n) == (0.8, 40, 0.95, 64)
    gp = _lib.lk_generate_params()
    _lib.lib.lk_generate_params_init(ctypes.byref(gp))
    assert (gp.struct_size, gp.max_tokens, gp.n_stop, gp.stop_at_eos) == (ctypes.sizeof(gp), 128, 0, 1)
    assert not gp.sampler and not gp.callback


# ---------------------------------------------------------------------------------------------------
# Tiny model
# ---------------------------------------------------------------------------------------------------

def test_tiny_info_and_meta(tiny):
    i = tiny.info
    assert (i.n_vocab, i.n_ctx_train, i.n_embd, i.n_ff, i.n_layer, i.n_head, i.n_head_kv, i.head_dim) == \
        (512, 256, 64, 160, 2, 4, 2, 16)
    assert i.rope_base == 10000.0 and abs(i.norm_eps - 1e-5) < 1e-9
    assert i.bos_token is None and i.eos_token is None and not i.has_tokenizer and not i.has_chat_template
    assert i.weight_bytes == 607488 and not i.tied_embeddings
    assert tiny.architecture == "llama"
    assert tiny.meta("general.name") == "tiny-llama"
    assert tiny.meta("llama.block_count") == "2"
    assert tiny.meta("llama.attention.layer_norm_rms_epsilon") == "1e-05"
    assert tiny.chat_template is None
    expect_error(Status.INVALID_ARGUMENT, "no.such.key", tiny.meta, "no.such.key")
    assert "llama" in repr(tiny)


def test_tiny_tokenizer_calls_fail_clearly(tiny):
    expect_error(Status.UNSUPPORTED, "tokenizer", tiny.tokenize, "hi")
    expect_error(Status.UNSUPPORTED, "tokenizer", tiny.detokenize, [1, 2])
    expect_error(Status.UNSUPPORTED, "tokenizer", tiny.token_bytes, 3)
    expect_error(Status.UNSUPPORTED, "chat template", tiny.chat, [{"role": "user", "content": "hi"}])


def test_model_load_errors():
    expect_error(Status.IO, "/nonexistent.gguf", Model, "/nonexistent.gguf")
    expect_error(Status.FORMAT, None, Model, __file__)
    expect_error(Status.IO, "config.json", Model, HERE)  # a folder without config.json


def test_closed_handles_raise(tiny):
    m = Model(TINY)
    ctx = Context(m, n_ctx=16, n_threads=1)
    m.close()
    m.close()  # idempotent
    expect_error(Status.INVALID_HANDLE, "closed", lambda: m.info)
    # The context keeps the weights alive.
    assert ctx.eval([1, 2, 3]).shape == (512,)
    ctx.close()
    expect_error(Status.INVALID_HANDLE, "closed", ctx.eval, [1])
    # A model handle passed as a context at the C level.
    st = _lib.lib.lk_context_reset(tiny.handle)
    assert st == _lib.LK_ERR_INVALID_HANDLE and "expected context" in lk.last_error()


def test_tiny_eval(tiny):
    with Context(tiny, n_ctx=32, n_threads=2) as ctx:
        toks = [1, 17, 300, 42, 511]
        last = ctx.eval(toks)
        assert last.shape == (512,) and last.dtype == np.float32 and np.isfinite(last).all()
        assert ctx.position == 5
        ctx.reset()
        assert ctx.position == 0
        allv = ctx.eval(toks, logits="all")
        assert allv.shape == (5, 512)
        np.testing.assert_allclose(allv[-1], last, atol=1e-4)
        ctx.reset()
        assert ctx.eval(toks[:4], logits="none") is None
        np.testing.assert_allclose(ctx.eval(toks[4:]), last, atol=1e-4)
        expect_error(Status.INVALID_ARGUMENT, "512", ctx.eval, [5, 512])
        expect_error(Status.INVALID_ARGUMENT, "-1", ctx.eval, [-1])
        expect_error(Status.INVALID_ARGUMENT, "n_tokens", ctx.eval, [])
        with pytest.raises(ValueError):
            ctx.eval([1], logits="first")
        # logits_mode and capacity at the C level.
        buf = (ctypes.c_float * 512)()
        one = (ctypes.c_int32 * 1)(1)
        assert _lib.lib.lk_context_eval(ctx.handle, one, 1, 3, buf, 512) == _lib.LK_ERR_INVALID_ARGUMENT
        assert _lib.lib.lk_context_eval(ctx.handle, one, 1, _lib.LK_LOGITS_LAST, buf, 511) == _lib.LK_ERR_BUFFER_TOO_SMALL
        assert ctx.position == 5


def test_tiny_context_overflow_and_embeddings(tiny):
    with Context(tiny, n_ctx=8, n_threads=1) as ctx:
        expect_error(Status.INVALID_ARGUMENT, "overflow", ctx.eval, list(range(9)))
        assert ctx.position == 0
        e = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
        a = ctx.eval_embeddings(e)
        assert a.shape == (512,) and np.isfinite(a).all()
        ctx.reset()
        np.testing.assert_array_equal(ctx.eval_embeddings(e), a)
        ctx.reset()
        bad = e.copy()
        bad[1, 5] = np.nan
        expect_error(Status.INVALID_ARGUMENT, "row 1, column 5", ctx.eval_embeddings, bad)
        expect_error(Status.INVALID_ARGUMENT, "overflow", ctx.eval_embeddings, np.zeros((9, 64), np.float32))
        with pytest.raises(ValueError):
            ctx.eval_embeddings(np.zeros((2, 63), np.float32))
        assert ctx.position == 0
        assert ctx.eval(list(range(8)), logits="none") is None


def test_context_params_errors(tiny):
    expect_error(Status.INVALID_ARGUMENT, "n_ctx", Context, tiny, n_ctx=-1)
    expect_error(Status.INVALID_ARGUMENT, "n_ctx 257", Context, tiny, n_ctx=257)
    expect_error(Status.INVALID_ARGUMENT, "n_threads", Context, tiny, n_threads=-1)
    with pytest.raises(TypeError):
        Context("not a model")


def test_tiny_f16_kv_cache(tiny):
    toks = [(i * 37 + 5) % 512 for i in range(20)]
    with Context(tiny, n_ctx=64, n_threads=2) as f32, Context(tiny, n_ctx=64, n_threads=2, kv_type="f16") as f16:
        a = f32.eval(toks, logits="all")
        b = f16.eval(toks, logits="all")
        d = np.abs(a - b).max()
        assert 0 < d < 2e-2, d  # keys and values rounded to f16
        f16.reset()
        one = np.stack([f16.eval([t]) for t in toks])
        np.testing.assert_allclose(one, b, atol=1e-4, rtol=0)
    expect_error(Status.INVALID_ARGUMENT, "params->kv_type", Context, tiny, kv_type="q8_0")
    expect_error(Status.INVALID_ARGUMENT, "params->kv_type", Context, tiny, kv_type=77)


def test_tiny_generate_ids(tiny):
    with Context(tiny, n_ctx=64, n_threads=1) as ctx:
        prompt = [1, 100, 200, 300]
        first = int(np.argmax(ctx.eval(prompt)))
        ctx.reset()
        text, toks, reason = lk.generate(ctx, prompt, max_tokens=6, temperature=0)
        assert text == "" and len(toks) == 6 and toks[0] == first and reason == StopReason.LENGTH
        ctx.reset()
        assert lk.generate(ctx, prompt, max_tokens=6, temperature=0).tokens == toks
        with Context(tiny, n_ctx=8, n_threads=1) as small:
            r = lk.generate(small, [1, 2, 3, 4, 5, 6], max_tokens=50, temperature=0)
            assert len(r.tokens) == 3 and r.stop_reason == StopReason.CONTEXT
        ctx.reset()
        expect_error(Status.INVALID_ARGUMENT, "temperature", lk.generate, ctx, prompt, temperature=float("nan"))
        expect_error(Status.INVALID_ARGUMENT, "top_p", lk.generate, ctx, prompt, top_p=0)
        expect_error(Status.INVALID_ARGUMENT, "max_tokens", lk.generate, ctx, prompt, max_tokens=-1)
        expect_error(Status.INVALID_ARGUMENT, "n_prompt", lk.generate, ctx, [])
        assert ctx.position == 0


# ---------------------------------------------------------------------------------------------------
# Real model
# ---------------------------------------------------------------------------------------------------

@needs_real
def test_real_info(real):
    i = real.info
    assert (i.n_layer, i.n_embd, i.n_head, i.n_head_kv, i.n_vocab, i.bos_token, i.eos_token) == \
        (30, 576, 9, 3, 49152, 1, 2)
    assert i.has_tokenizer and i.has_chat_template and i.tied_embeddings
    assert real.meta("tokenizer.ggml.bos_token_id") == "1"
    assert real.meta("tokenizer.ggml.tokens").startswith('["<|endoftext|>","<|im_start|>"')


@needs_real
def test_real_tokenize_roundtrip(real):
    assert real.tokenize("Hello world") == [19556, 905]
    assert real.tokenize("Hello world", add_special=False) == [19556, 905]
    assert real.tokenize("Hello world", add_special=True) == [1, 19556, 905]
    assert real.tokenize(b"Hello world") == [19556, 905]
    assert real.tokenize("<|im_start|>user") == [1, 4093]
    assert real.tokenize("<|im_start|>user", parse_special=False)[0] != 1
    long_text = "héllo wörld 日本語 🙂 " * 50
    ids = real.tokenize(long_text)
    assert real.detokenize(ids) == long_text
    assert real.detokenize([1, 19556, 905, 2]) == "<|im_start|>Hello world<|im_end|>"
    assert real.detokenize([1, 19556, 905, 2], skip_special=True) == "Hello world"
    assert real.token_bytes(905) == b" world"
    expect_error(Status.INVALID_ARGUMENT, "49152", real.detokenize, [49152])
    expect_error(Status.INVALID_ARGUMENT, "49152", real.token_bytes, 49152)
    expect_error(Status.INVALID_ARGUMENT, "UTF-8", real.tokenize, b"a\xff")


@needs_real
def test_real_chat(real):
    s = real.chat([{"role": "user", "content": "What is the capital of France?"}])
    assert s.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert s.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    assert real.chat([("system", "Be brief."), ("user", "Hi")]) == \
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert not real.chat([("user", "Hi")], add_generation_prompt=False).endswith("assistant\n")
    assert "im_start" in real.chat_template
    with pytest.raises(ValueError):
        real.chat([{"role": "user"}])


@needs_real
def test_real_chat_limits(real):
    msgs = [("user", "Hi")]
    want = real.chat(msgs)
    assert real.chat_limit(ChatLimit.STEPS) == 100_000_000
    assert real.chat_limit(ChatLimit.MILLISECONDS) == 10_000
    assert real.chat_limit(ChatLimit.ALLOCATED_BYTES) == 1 << 30
    try:
        assert real.chat_limit(ChatLimit.STEPS, 10) == 100_000_000
        assert real.chat_limit(ChatLimit.STEPS) == 10
        e = expect_error(Status.LIMIT, "TemplateLimits.maxSteps", real.chat, msgs)
        assert e.message.startswith("lk_chat_apply: " + REAL + ": chat template: line 1, column "), e.message
        real.chat_limit(ChatLimit.STEPS, 100_000_000)
        real.chat_limit(ChatLimit.OUTPUT_BYTES, len(want.encode()) - 1)
        expect_error(Status.LIMIT, "TemplateLimits.maxOutputBytes", real.chat, msgs)
        real.chat_limit(ChatLimit.OUTPUT_BYTES, len(want.encode()))
        assert real.chat(msgs) == want
        real.chat_limit(ChatLimit.LOOP_ITERATIONS, 1)
        expect_error(Status.FORMAT, "too many loop iterations", real.chat, [("user", "a"), ("assistant", "b")])
    finally:
        real.chat_limit(ChatLimit.STEPS, 100_000_000)
        real.chat_limit(ChatLimit.OUTPUT_BYTES, 64 << 20)
        real.chat_limit(ChatLimit.LOOP_ITERATIONS, 1_000_000)
    assert real.chat(msgs) == want  # the model stays usable
    expect_error(Status.INVALID_ARGUMENT, "new_value 0", real.chat_limit, ChatLimit.STEPS, 0)
    expect_error(Status.INVALID_ARGUMENT, "limit 99", real.chat_limit, 99)


@needs_real
def test_real_generate_stream_stop(real):
    prompt = real.tokenize("The capital of France is")
    with Context(real, n_ctx=256) as ctx:
        text, toks, reason = lk.generate(ctx, prompt, max_tokens=8, temperature=0)
        assert text.startswith(" Paris"), text
        assert len(toks) == 8 and reason == StopReason.LENGTH
        assert real.detokenize(toks) == text
        # Streaming gives the same text.
        pieces = []
        ctx.reset()
        r = lk.generate(ctx, prompt, max_tokens=8, temperature=0, on_text=lambda p, t: pieces.append(p))
        assert "".join(pieces) == r.text == text
        # Returning False after 2 pieces stops with 2 tokens.
        calls = []

        def two(piece, token):
            calls.append(piece)
            return len(calls) < 2
        ctx.reset()
        r = lk.generate(ctx, prompt, max_tokens=32, temperature=0, on_text=two)
        assert r.stop_reason == StopReason.CALLBACK and len(r.tokens) == 2 and len(calls) == 2
        assert r.tokens == toks[:2]
        # Stop strings.
        ctx.reset()
        full = lk.generate(ctx, prompt, max_tokens=24, temperature=0).text
        stop = full[8:11]
        ctx.reset()
        r = lk.generate(ctx, prompt, max_tokens=24, temperature=0, stop=["", "never appears ✓", stop])
        assert r.stop_reason == StopReason.STRING and r.text == full[: full.index(stop)]


@needs_real
def test_real_callback_exception_propagates(real):
    prompt = real.tokenize("The capital of France is")
    seen = []

    def boom(piece, token):
        seen.append(piece)
        raise KeyError("from on_text")
    with Context(real, n_ctx=128) as ctx:
        with pytest.raises(KeyError, match="from on_text"):
            lk.generate(ctx, prompt, max_tokens=16, temperature=0, on_text=boom)
        assert len(seen) == 1  # not called again after it raised
        # The context is usable afterwards.
        ctx.reset()
        assert lk.generate(ctx, prompt, max_tokens=2, temperature=0).text.startswith(" Paris")


@needs_real
def test_real_two_threads_share_model(real):
    prompts = ["The capital of France is", "def fibonacci(n):"]

    def run(p, out, i):
        with Context(real, n_ctx=128, n_threads=1) as ctx:
            out[i] = lk.generate(ctx, real.tokenize(p), max_tokens=12, temperature=0)
    seq = [None, None]
    for i, p in enumerate(prompts):
        run(p, seq, i)
    par = [None, None]
    threads = [threading.Thread(target=run, args=(p, par, i)) for i, p in enumerate(prompts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert par == seq


HF = HERE.parents[2] / "Tests" / "LoRAKitTests" / "Fixtures" / "model" / "tiny-llama-hf"

# Issue 17's hostile templates, each a template of a model folder: (template, status, what the message names).
HOSTILE = [
    ("{{ range(9223372036854775807) | length }}", Status.FORMAT, "Range too big"),
    ('{% set s = "x" * 100000 %}{{ s.replace("", s) | length }}', Status.LIMIT, "str.replace()"),
    ("{{ 'a\nb' | indent(9223372036854775807) }}", Status.LIMIT, "9223372036854775807 spaces"),
    ("{{ [1, 2] | tojson(indent=9223372036854775807) }}", Status.LIMIT, "9223372036854775807 spaces"),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", Status.FORMAT, "TemplateLimits.maxRecursionDepth"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", Status.FORMAT,
     "TemplateLimits.maxLoopIterations"),
    ("{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = ns.l + ns.l %}{% endfor %}", Status.LIMIT,
     "TemplateLimits.maxAllocatedBytes"),
    ("{% if %}", Status.FORMAT, "expected an expression"),
]


@pytest.mark.parametrize("template,status,names", HOSTILE)
def test_hostile_chat_template(tmp_path, template, status, names):
    folder = tmp_path / "model"
    folder.mkdir()
    for f in ("config.json", "model.safetensors"):
        (folder / f).symlink_to(HF / f)
    (folder / "chat_template.jinja").write_text(template)
    m = Model(str(folder))  # a template that fails (even to parse) does not stop the model from loading
    assert m.chat_template == template
    m.chat_limit(ChatLimit.ALLOCATED_BYTES, 64 << 20)  # keep the suite light; the limit is what is hit
    if os.environ.get("LORAKIT_SANITIZER") and status != Status.LIMIT:
        # Under a sanitizer (5–15× slower) a long-running template may meet the time limit first.
        try:
            m.chat([("user", "hi")])
        except LoRAKitError as e:
            if e.status == Status.LIMIT and "TemplateLimits.maxSeconds" in e.message:
                status, names = Status.LIMIT, "TemplateLimits.maxSeconds"
    for _ in range(2):
        e = expect_error(status, names, m.chat, [("user", "hi")])
        assert e.message.startswith("lk_chat_apply: " + str(folder) + ": chat template: "), e.message
    # The process and the model survive: the model still evaluates.
    with Context(m, n_ctx=16, n_threads=1) as ctx:
        logits = ctx.eval([1, 2, 3])
        assert np.isfinite(logits).all() and logits.shape[-1] == m.info.n_vocab


def test_chat_limit_depth_cap(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    for f in ("config.json", "model.safetensors"):
        (folder / f).symlink_to(HF / f)
    (folder / "chat_template.jinja").write_text("{{ messages | length }}")
    m = Model(str(folder))
    assert m.chat_limit(ChatLimit.RECURSION_DEPTH) == 200
    assert m.chat_limit(ChatLimit.VALUE_DEPTH, 1000) == 100
    e = expect_error(Status.INVALID_ARGUMENT, "LK_CHAT_LIMIT_RECURSION_DEPTH", m.chat_limit, ChatLimit.RECURSION_DEPTH, 1001)
    assert "must be in 1...1000" in e.message, e.message
    assert m.chat_limit(ChatLimit.RECURSION_DEPTH) == 200  # unchanged
    assert m.chat_limit(ChatLimit.MILLISECONDS, 1500) == 10_000
    assert m.chat_limit(ChatLimit.MILLISECONDS) == 1500
    assert m.chat([("user", "a"), ("assistant", "b")]) == "2"

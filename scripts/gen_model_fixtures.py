#!/usr/bin/env python3
"""Generate the committed model reference fixtures under Tests/LoRAKitTests/Fixtures/model/.

NOT needed at CI time: CI only reads the committed outputs (it has no torch). Re-run this only when
the fixtures must change; the format of every output is documented in
Tests/LoRAKitTests/Fixtures/model/README.md.

Needs:
    Python >= 3.10, and from PyPI: torch (CPU use only), transformers (>= 4.46; written against 5.x),
    accelerate (transformers requires it to load GGUF files), gguf, safetensors, numpy.
        python3 -m pip install torch transformers accelerate gguf safetensors numpy
    The real model: scripts/fetch_model.sh (downloads SmolLM2-135M-Instruct.Q4_1.gguf once, ~98 MB,
    into ~/.cache/lorakit; its path is taken from the script's stdout, or from --model).

Run (from anywhere; paths are resolved relative to the repository):
    python3 scripts/gen_model_fixtures.py            # everything
    python3 scripts/gen_model_fixtures.py --tiny-only  # only the tiny models (seconds, no big model)

Takes about 2-5 minutes on 2 (shared) CPU cores, most of it scoring ~3200 tokens with the 135M model in
float32/eager attention, plus ~20 s to import torch/transformers and dequantize the GGUF; the tiny models
alone take ~5 s. Peak memory (max RSS) ~2.2 GB. The output is byte-for-byte reproducible.

Outputs (all deterministic for a given torch/transformers version; sizes printed at the end):
    smollm2_reference.json      reference numbers for the real SmolLM2 GGUF (scoring, logits, greedy)
    score_text.txt              the scored text (if it already exists it is used as-is, so the
                                committed text stays the source of truth; otherwise it is built
                                from CPython standard-library docstrings, PSF license)
    tiny-llama-hf/              tiny random LLaMA: config.json + model.safetensors (F32, untied)
    tiny-llama-hf-tied-bf16/    same weights with tied embeddings, BF16 safetensors
    tiny-llama-hf-sharded/      tiny-llama-hf saved in 2 safetensors shards + index json
    tiny-llama-f32.gguf         tiny-llama-hf as GGUF (llama.cpp layout, Q/K rows permuted), F32
    tiny-llama-q8_0.gguf        same, 2-D weights quantized to Q8_0 (norms stay F32)
    tiny_reference.json         logits of every position + greedy continuations for the tiny models
The tiny GGUFs carry no tokenizer (the tests feed token ids directly).
"""
from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "Tests" / "LoRAKitTests" / "Fixtures" / "model"

WINDOW = 512
TOPK = 20


# ----------------------------------------------------------------------------------------------
# compact JSON: dicts are indented, lists of scalars are written on one line
# ----------------------------------------------------------------------------------------------

def _scalar(v) -> str:
    return json.dumps(v, ensure_ascii=False, allow_nan=False)


def dump_json(obj, indent: int = 0) -> str:
    pad = " " * indent
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f'{pad} {_scalar(str(k))}: {dump_json(v, indent + 1)}' for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)):
        if all(not isinstance(v, (dict, list, tuple)) for v in obj):
            return "[" + ",".join(_scalar(v) for v in obj) + "]"
        items = [pad + " " + dump_json(v, indent + 1) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return _scalar(obj)


def write_json(path: Path, obj) -> None:
    path.write_text(dump_json(obj) + "\n", encoding="utf-8")


def rnd(values, digits: int) -> list[float]:
    """float32 values -> Python floats rounded to `digits` decimals (documented in the README)."""
    return [round(float(v), digits) for v in np.asarray(values, dtype=np.float64).ravel()]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# score text
# ----------------------------------------------------------------------------------------------

SCORE_TEXT_SOURCE = (
    "Docstrings of the CPython 3.11 standard library, concatenated in this order and separated by "
    "blank lines: heapq.__about__ (essay on heaps by Francois Pinard), the argparse module docstring, "
    "difflib.SequenceMatcher (inspect.cleandoc), the doctest module docstring, "
    "threading.Thread.__init__ (inspect.cleandoc). Copyright Python Software Foundation; "
    "licensed under the PSF License Agreement (PSF-2.0)."
)


def build_score_text() -> str:
    import argparse as ap
    import difflib
    import doctest
    import heapq
    import threading

    parts = [
        heapq.__about__,
        ap.__doc__,
        inspect.cleandoc(difflib.SequenceMatcher.__doc__),
        doctest.__doc__,
        inspect.cleandoc(threading.Thread.__init__.__doc__),
    ]
    return "\n\n".join(p.strip("\n") for p in parts) + "\n"


# ----------------------------------------------------------------------------------------------
# real model reference
# ----------------------------------------------------------------------------------------------

def find_model(arg: str | None) -> Path:
    if arg:
        return Path(arg).expanduser().resolve()
    out = subprocess.run([str(REPO / "scripts" / "fetch_model.sh")], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def topk_rows(logits, k: int):
    import torch

    vals, ids = torch.topk(logits, k, dim=-1, largest=True, sorted=True)
    lse = torch.logsumexp(logits.double(), dim=-1)
    return ids.tolist(), [rnd(r, 4) for r in vals], rnd(lse, 4)


def gen_smollm2(model_path: Path) -> dict:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, name = str(model_path.parent), model_path.name
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        d, gguf_file=name, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    print(f"[smollm2] loaded in {time.time() - t0:.1f}s", flush=True)
    cfg = model.config

    # ---- text scoring ------------------------------------------------------------------------
    text_path = OUT / "score_text.txt"
    if not text_path.exists():
        text_path.write_text(build_score_text(), encoding="utf-8")
    text = text_path.read_text(encoding="utf-8")
    ids = tok(text, add_special_tokens=False).input_ids
    n = len(ids)
    assert 2000 <= n <= 4000, f"score text has {n} tokens, want 2000..4000"

    windows, argmax, nll_all = [], [], []
    total_nll, total_count = 0.0, 0
    t0 = time.time()
    with torch.no_grad():
        for start in range(0, n, WINDOW):
            w = ids[start:start + WINDOW]
            x = torch.tensor([w])
            logits = model(input_ids=x).logits[0].float()  # [len, vocab]
            argmax.extend(logits.argmax(-1).tolist())
            if len(w) < 2:
                continue
            logp = torch.log_softmax(logits.double(), dim=-1)
            tgt = torch.tensor(w[1:])
            nll = -logp[:-1].gather(1, tgt[:, None])[:, 0]
            nll_all.extend(rnd(nll, 5))
            s = float(nll.sum())
            total_nll += s
            total_count += len(w) - 1
            windows.append({"start": start, "length": len(w), "predicted": len(w) - 1,
                            "nll_sum": round(s, 4), "mean_nll": round(s / (len(w) - 1), 6)})
    mean_nll = total_nll / total_count
    ppl = math.exp(mean_nll)
    agree = [argmax[i] == ids[i + 1] for i in range(n - 1) if (i + 1) % WINDOW != 0]
    print(f"[smollm2] scored {n} tokens in {time.time() - t0:.1f}s: mean NLL {mean_nll:.4f}, ppl {ppl:.3f}",
          flush=True)

    scoring = {
        "text_file": "score_text.txt",
        "source": SCORE_TEXT_SOURCE,
        "text": text,
        "token_count": n,
        "ids": ids,
        "window": WINDOW,
        "windows": windows,
        "predicted_count": total_count,
        "mean_nll": round(mean_nll, 6),
        "perplexity": round(ppl, 5),
        "top1_accuracy": round(sum(agree) / len(agree), 6),
        "nll": nll_all,
        "argmax": argmax,
    }

    # ---- logits of 3 short sequences --------------------------------------------------------
    chat = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    seqs = [
        ("chat", tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)),
        ("code", "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n"),
        ("sentence", "The quick brown fox jumps over the lazy dog, and then it runs back into the forest."),
    ]
    logit_entries = []
    with torch.no_grad():
        for i, (kind, s) in enumerate(seqs):
            sids = tok(s, add_special_tokens=False).input_ids
            logits = model(input_ids=torch.tensor([sids])).logits[0].float()
            top_ids, top_logits, lse = topk_rows(logits, TOPK)
            e = {"kind": kind, "text": s, "ids": sids, "top_ids": top_ids, "top_logits": top_logits,
                 "logsumexp": lse}
            if i == 0:
                e["last_logits"] = rnd(logits[-1], 5)
            logit_entries.append(e)

    # ---- greedy generation -------------------------------------------------------------------
    chat_prompts = [
        "What is the capital of France?",
        "Write a haiku about the sea.",
        "Explain recursion in one sentence.",
        "Give me three tips for staying focused while studying.",
    ]
    plain_prompts = [
        "The history of the Roman Empire",
        "def add(a, b):\n",
        "Once upon a time, in a small village,",
        "The three laws of thermodynamics are",
    ]
    eos = cfg.eos_token_id
    greedy = []
    with torch.no_grad():
        for kind, p in [("chat", q) for q in chat_prompts] + [("plain", q) for q in plain_prompts]:
            if kind == "chat":
                rendered = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                   tokenize=False)
            else:
                rendered = p
            pids = tok(rendered, add_special_tokens=False).input_ids
            x = torch.tensor([pids])
            out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=32,
                                 repetition_penalty=None, eos_token_id=eos, pad_token_id=eos,
                                 output_scores=True, return_dict_in_generate=True)
            gen = out.sequences[0, len(pids):].tolist()
            margins = []
            for sc in out.scores:
                v = torch.topk(sc[0].float(), 2).values
                margins.append(round(float(v[0] - v[1]), 4))
            assert [int(sc[0].argmax()) for sc in out.scores] == gen
            greedy.append({"kind": kind, "prompt": p, "rendered": rendered, "prompt_ids": pids,
                           "generated_ids": gen, "stopped_on_eos": bool(gen and gen[-1] == eos),
                           "top2_margins": margins,
                           "text": tok.decode(gen, skip_special_tokens=False)})

    # ---- tokenizer sanity --------------------------------------------------------------------
    tok_strings = [
        "Hello, world!",
        " leading space and  double  spaces",
        "naïve café — “quoted” text, 100% ☕ 🙂",
        "def f(x):\n\treturn x ** 2  # square\n",
        "<|im_start|>user\nHi there<|im_end|>\n",
        "1234567890 3.14159 -42",
        "LoRA adapters for LLaMA-family models",
    ]
    tokens = [{"text": s, "ids": tok(s, add_special_tokens=False).input_ids} for s in tok_strings]

    return {
        "model": {
            "file": name,
            "sha256": sha256_file(model_path),
            "loader": "transformers AutoModelForCausalLM.from_pretrained(dir, gguf_file=name, dtype=torch.float32,"
                      " attn_implementation='eager'); AutoTokenizer.from_pretrained(dir, gguf_file=name)",
            "vocab_size": cfg.vocab_size, "num_hidden_layers": cfg.num_hidden_layers,
            "hidden_size": cfg.hidden_size, "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads, "rms_norm_eps": cfg.rms_norm_eps,
            "rope_theta": cfg.rope_parameters["rope_theta"], "bos_token_id": cfg.bos_token_id,
            "eos_token_id": eos,
        },
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "gguf": _gguf_version(), "numpy": np.__version__, "python": sys.version.split()[0]},
        "scoring": scoring,
        "logits": logit_entries,
        "greedy": greedy,
        "tokens": tokens,
    }


def _gguf_version() -> str:
    try:
        from importlib.metadata import version
        return version("gguf")
    except Exception:
        return "unknown"


# ----------------------------------------------------------------------------------------------
# tiny models
# ----------------------------------------------------------------------------------------------

TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rope_theta=10000.0, rms_norm_eps=1e-5,
            bos_token_id=1, eos_token_id=2)
TINY_SEED = 20240601


def tiny_config(tied: bool):
    from transformers import LlamaConfig

    return LlamaConfig(**TINY, tie_word_embeddings=tied)


def tiny_state_dict() -> dict:
    """Seeded random weights (float32). Linear std 0.1, embeddings std 0.5, lm_head std 0.4,
    RMSNorm weights uniform in [0.6, 1.4]."""
    import torch

    from transformers import LlamaForCausalLM

    g = torch.Generator().manual_seed(TINY_SEED)
    model = LlamaForCausalLM(tiny_config(False))
    sd = {}
    for k, v in model.state_dict().items():
        if k.endswith("norm.weight"):
            t = 0.6 + 0.8 * torch.rand(v.shape, generator=g)
        elif k == "model.embed_tokens.weight":
            t = 0.5 * torch.randn(v.shape, generator=g)
        elif k == "lm_head.weight":
            t = 0.4 * torch.randn(v.shape, generator=g)
        else:
            t = 0.1 * torch.randn(v.shape, generator=g)
        sd[k] = t.float().contiguous()
    return sd


def load_model_from_sd(sd: dict, tied: bool):
    import torch
    from transformers import LlamaForCausalLM

    cfg = tiny_config(tied)
    cfg._attn_implementation = "eager"
    model = LlamaForCausalLM(cfg).float()
    sd = dict(sd)
    if tied:
        sd.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    assert all(m == "lm_head.weight" for m in missing) and (tied or not missing), missing
    if tied:
        model.tie_weights()
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.eval()
    return model


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's Q/K row order (convert_hf_to_gguf LlamaModel.permute): HF stores each head's
    rotary pairs as (first half, second half); GGUF interleaves them (x0, x_half, x1, x_half+1, ...)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}


def hf_to_gguf_name(k: str) -> str:
    if k == "model.embed_tokens.weight":
        return "token_embd.weight"
    if k == "model.norm.weight":
        return "output_norm.weight"
    if k == "lm_head.weight":
        return "output.weight"
    parts = k.split(".")  # model.layers.N.<module...>.weight
    assert parts[0] == "model" and parts[1] == "layers", k
    return f"blk.{parts[2]}.{GGUF_NAMES['.'.join(parts[3:-1])]}.weight"


def gguf_to_hf_name(k: str) -> str:
    inv = {v: kk for kk, v in GGUF_NAMES.items()}
    if k == "token_embd.weight":
        return "model.embed_tokens.weight"
    if k == "output_norm.weight":
        return "model.norm.weight"
    if k == "output.weight":
        return "lm_head.weight"
    _, n, mod, _ = k.split(".")
    return f"model.layers.{n}.{inv[mod]}.weight"


def write_tiny_gguf(path: Path, sd: dict, qtype) -> None:
    import gguf

    c = TINY
    n_head, n_kv = c["num_attention_heads"], c["num_key_value_heads"]
    w = gguf.GGUFWriter(str(path), "llama")  # writes general.architecture = "llama"
    w.add_name("tiny-llama")
    w.add_block_count(c["num_hidden_layers"])
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(c["rope_theta"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_rope_dimension_count(c["hidden_size"] // n_head)
    w.add_vocab_size(c["vocab_size"])
    is_q8 = qtype == gguf.GGMLQuantizationType.Q8_0
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if is_q8 else gguf.LlamaFileType.ALL_F32)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    # tensor order as convert_hf_to_gguf emits it for LLaMA: token_embd, blocks, output_norm, output
    order = ["model.embed_tokens.weight"]
    for i in range(c["num_hidden_layers"]):
        for m in ["input_layernorm", "mlp.down_proj", "mlp.gate_proj", "mlp.up_proj", "post_attention_layernorm",
                  "self_attn.k_proj", "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj"]:
            order.append(f"model.layers.{i}.{m}.weight")
    order += ["model.norm.weight", "lm_head.weight"]
    assert sorted(order) == sorted(sd.keys())
    for k in order:
        a = sd[k].numpy().astype(np.float32)
        if k.endswith("q_proj.weight"):
            a = permute_rows(a, n_head)
        elif k.endswith("k_proj.weight"):
            a = permute_rows(a, n_kv)
        name = hf_to_gguf_name(k)
        if a.ndim == 2 and is_q8:
            w.add_tensor(name, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, np.ascontiguousarray(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def read_gguf_as_hf_sd(path: Path) -> dict:
    """Dequantize every tensor with gguf.quants.dequantize and undo the Q/K permutation."""
    import gguf
    import torch

    r = gguf.GGUFReader(str(path))
    sd = {}
    for t in r.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        k = gguf_to_hf_name(t.name)
        if t.name.endswith("attn_q.weight"):
            a = unpermute_rows(a, TINY["num_attention_heads"])
        elif t.name.endswith("attn_k.weight"):
            a = unpermute_rows(a, TINY["num_key_value_heads"])
        sd[k] = torch.from_numpy(np.ascontiguousarray(a))
    return sd


def all_logits(model, seq: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([seq])).logits[0].float().numpy()


def greedy_ids(model, seq: list[int], steps: int = 16) -> tuple[list[int], list[float]]:
    """Plain greedy loop over full forwards (no KV cache, EOS ignored, always `steps` tokens).
    Also returns, per step, the logit gap between the best and second-best token."""
    import torch

    ids, margins = list(seq), []
    with torch.no_grad():
        for _ in range(steps):
            last = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
            top2 = torch.topk(last, 2).values
            margins.append(round(float(top2[0] - top2[1]), 4))
            ids.append(int(last.argmax()))
    return ids[len(seq):], margins


def dir_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size


def gen_tiny() -> dict:
    import gguf
    import torch
    import transformers
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    sd = tiny_state_dict()
    model = load_model_from_sd(sd, tied=False)

    # -- HF folders --
    hf = OUT / "tiny-llama-hf"
    tied_dir = OUT / "tiny-llama-hf-tied-bf16"
    sharded = OUT / "tiny-llama-hf-sharded"
    for d in (hf, tied_dir, sharded):
        shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(hf)
    model.save_pretrained(sharded, max_shard_size="400KB")
    tied = load_model_from_sd(sd, tied=True).to(torch.bfloat16)
    tied.save_pretrained(tied_dir)
    for d in (hf, tied_dir, sharded):
        gc = d / "generation_config.json"
        if gc.exists():
            gc.unlink()  # only config.json + safetensors are part of the fixture
    # The sharded copy gets the legacy (transformers 4.x) config.json layout: top-level "rope_theta" and
    # "torch_dtype" instead of transformers 5's "rope_parameters" / "dtype" (loaders must accept both).
    legacy = json.loads((sharded / "config.json").read_text())
    legacy["rope_theta"] = legacy.pop("rope_parameters")["rope_theta"]
    legacy["torch_dtype"] = legacy.pop("dtype")
    (sharded / "config.json").write_text(json.dumps(legacy, indent=2, sort_keys=True) + "\n")
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) == 2 and (sharded / "model.safetensors.index.json").exists(), shards
    with safe_open(str(tied_dir / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert "lm_head.weight" not in keys and f.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16

    # reload from disk exactly as a user would (bf16 -> f32 upcast by transformers, exact)
    ref_hf = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32, attn_implementation="eager").eval()
    ref_tied = AutoModelForCausalLM.from_pretrained(tied_dir, dtype=torch.float32,
                                                    attn_implementation="eager").eval()
    ref_sharded = AutoModelForCausalLM.from_pretrained(sharded, dtype=torch.float32,
                                                       attn_implementation="eager").eval()
    assert ref_tied.lm_head.weight.data_ptr() == ref_tied.model.embed_tokens.weight.data_ptr()

    # -- GGUFs --
    f32_path, q8_path = OUT / "tiny-llama-f32.gguf", OUT / "tiny-llama-q8_0.gguf"
    write_tiny_gguf(f32_path, sd, gguf.GGMLQuantizationType.F32)
    write_tiny_gguf(q8_path, sd, gguf.GGMLQuantizationType.Q8_0)
    # exact round trip of the f32 file through our own reader (permute/unpermute are inverse)
    rt = read_gguf_as_hf_sd(f32_path)
    assert all(torch.equal(rt[k], sd[k]) for k in sd), "f32 GGUF round trip differs"
    q8_model = load_model_from_sd(read_gguf_as_hf_sd(q8_path), tied=False)

    # -- sequences --
    rng = np.random.default_rng(TINY_SEED)
    seqs = [rng.integers(0, TINY["vocab_size"], size=7).tolist(), rng.integers(0, TINY["vocab_size"], size=40).tolist()]

    # -- validation: transformers' own GGUF loader on our files --
    tmp = Path(tempfile.mkdtemp())
    try:
        shutil.copy(f32_path, tmp / f32_path.name)
        shutil.copy(q8_path, tmp / q8_path.name)
        tf_f32 = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=f32_path.name, dtype=torch.float32,
                                                      attn_implementation="eager").eval()
        tf_q8 = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=q8_path.name, dtype=torch.float32,
                                                     attn_implementation="eager").eval()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert not tf_f32.config.tie_word_embeddings

    def maxdiff(a, b):
        return max(float(np.abs(all_logits(a, s) - all_logits(b, s)).max()) for s in seqs)

    v_gguf_f32 = maxdiff(tf_f32, ref_hf)
    v_gguf_q8 = maxdiff(tf_q8, q8_model)
    v_sharded = maxdiff(ref_sharded, ref_hf)
    v_mem = maxdiff(model, ref_hf)
    q8_vs_f32 = maxdiff(q8_model, ref_hf)
    print(f"[tiny] transformers-loaded f32 GGUF vs HF folder: max |dlogit| = {v_gguf_f32:.3g}", flush=True)
    print(f"[tiny] transformers-loaded Q8_0 GGUF vs our dequantized Q8_0: {v_gguf_q8:.3g}; sharded vs HF: "
          f"{v_sharded:.3g}; Q8_0 vs f32: {q8_vs_f32:.3g}", flush=True)
    assert v_gguf_f32 < 1e-5 and v_sharded == 0.0 and v_mem == 0.0 and v_gguf_q8 < 1e-5

    def model_entry(m, files: str, loaded: str):
        out = {"files": files, "loaded": loaded, "sequences": []}
        for s in seqs:
            lg = all_logits(m, s)
            gen, margins = greedy_ids(m, s)
            out["sequences"].append({"logits": [rnd(row, 6) for row in lg], "greedy16": gen,
                                     "greedy16_top2_margins": margins})
        return out

    # entropy check: logits must not be trivially uniform
    lg = all_logits(ref_hf, seqs[1])
    p = torch.softmax(torch.from_numpy(lg).double(), -1)
    ent = float(-(p * p.log()).sum(-1).mean())
    print(f"[tiny] mean next-token entropy {ent:.3f} nats (uniform = {math.log(512):.3f}), "
          f"logit std {lg.std():.3f}", flush=True)

    return {
        "config": {**TINY, "head_dim": TINY["hidden_size"] // TINY["num_attention_heads"], "hidden_act": "silu",
                   "seed": TINY_SEED},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "gguf": _gguf_version()},
        "sequences": seqs,
        "models": {
            "hf": model_entry(ref_hf, "tiny-llama-hf/ (also tiny-llama-hf-sharded/, tiny-llama-f32.gguf: same weights)",
                              "LlamaForCausalLM.from_pretrained('tiny-llama-hf', dtype=torch.float32, "
                              "attn_implementation='eager')"),
            "tied_bf16": model_entry(ref_tied, "tiny-llama-hf-tied-bf16/",
                                     "LlamaForCausalLM.from_pretrained('tiny-llama-hf-tied-bf16', dtype=torch.float32, "
                                     "attn_implementation='eager'): BF16 tensors widened to F32 exactly (bits << 16), "
                                     "lm_head tied to embed_tokens, all math in F32"),
            "q8_0": model_entry(q8_model, "tiny-llama-q8_0.gguf",
                                "every tensor dequantized with gguf.quants.dequantize (Q8_0: int8 * f16 scale, in F32), "
                                "Q/K rows un-permuted, loaded with load_state_dict into an F32 LlamaForCausalLM "
                                "(eager attention)"),
        },
        "validation": {
            "gguf_f32_via_transformers_vs_hf_max_abs_logit_diff": v_gguf_f32,
            "gguf_q8_0_via_transformers_vs_q8_0_reference_max_abs_logit_diff": v_gguf_q8,
            "sharded_vs_hf_max_abs_logit_diff": v_sharded,
            "q8_0_vs_hf_max_abs_logit_diff": q8_vs_f32,
            "mean_entropy_nats_seq1": round(ent, 4),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="path of SmolLM2-135M-Instruct.Q4_1.gguf (default: scripts/fetch_model.sh)")
    ap.add_argument("--tiny-only", action="store_true", help="only regenerate the tiny models")
    args = ap.parse_args()

    import torch

    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    OUT.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    tiny = gen_tiny()
    write_json(OUT / "tiny_reference.json", tiny)

    ref = None
    if not args.tiny_only:
        ref = gen_smollm2(find_model(args.model))
        write_json(OUT / "smollm2_reference.json", ref)

    print("\n=== summary ===")
    if ref:
        s = ref["scoring"]
        print(f"SmolLM2 Q4_1 (transformers {ref['versions']['transformers']}, torch {ref['versions']['torch']}): "
              f"{s['token_count']} tokens, {s['predicted_count']} predicted, mean NLL {s['mean_nll']:.4f}, "
              f"perplexity {s['perplexity']:.3f}, top-1 accuracy {s['top1_accuracy']:.3f}")
        eos_stops = sum(g["stopped_on_eos"] for g in ref["greedy"])
        print(f"greedy: {eos_stops}/8 prompts stopped on EOS")
    v = tiny["validation"]
    print(f"GGUF writer validation (transformers-loaded tiny-llama-f32.gguf vs HF folder): max |dlogit| = "
          f"{v['gguf_f32_via_transformers_vs_hf_max_abs_logit_diff']:.3g}")
    for p in sorted(OUT.iterdir()):
        print(f"  {dir_size(p):>10,d}  {p.name}{'/' if p.is_dir() else ''}")
    print(f"total time {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Stack two LoRA adapters on one context, then merge them into a new GGUF model and check that the
merged model computes what the stacked adapters compute.

    python3 examples/python/adapters.py MODEL.gguf [--out adapters-run]
"""
import argparse
from pathlib import Path

import numpy as np
from _common import chat_tokens, model_path

import lorakit

ap = argparse.ArgumentParser()
ap.add_argument("model", nargs="?")
ap.add_argument("--out", default="adapters-run")
args = ap.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)


def top_agree(a, b):
    return int((a.argmax(axis=1) == b.argmax(axis=1)).sum())


with lorakit.Model(model_path()) as model:
    # Two adapters with made-up weights (init="random": B != 0, so each changes the model), saved in the
    # two file formats and loaded back, as adapters trained elsewhere would be.
    with lorakit.Adapter.create(model, rank=4, targets="q,v", init="random", seed=1) as a:
        a.save(out / "style", "peft")
    with lorakit.Adapter.create(model, rank=4, targets="o,down", init="random", seed=2) as a:
        a.save(out / "facts.gguf", "gguf")
    style = lorakit.Adapter.load(model, out / "style")
    facts = lorakit.Adapter.load(model, out / "facts.gguf")

    ids = chat_tokens(model, "Write one sentence about the sea.")
    with lorakit.Context(model, n_ctx=256) as ctx:
        base = ctx.eval(ids, logits="all")
        ctx.reset()
        ctx.attach(style, 0.5)   # stacked: each adapter with its own scale
        ctx.attach(facts, 1.0)
        stacked = ctx.eval(ids, logits="all")

    # Merged: W' = W + 0.5·s·B·A (style) + 1.0·s·B·A (facts), written as a GGUF model with f16 weights.
    model.merge_to_file([(style, 0.5), (facts, 1.0)], out / "merged.gguf", out_type="f16")
    with lorakit.Model(out / "merged.gguf") as merged, lorakit.Context(merged, n_ctx=256) as mctx:
        merged_logits = mctx.eval(ids, logits="all")

    n = len(ids)
    d_base = float(np.abs(stacked - base).max())
    d_merged = float(np.abs(stacked - merged_logits).max())
    print(f"{n} prompt positions, vocabulary {base.shape[1]}")
    print(f"stacked adapters vs base model:   max |Δlogit| {d_base:.3f}, same top token at {top_agree(base, stacked)}/{n}")
    print(f"merged model vs stacked adapters: max |Δlogit| {d_merged:.3f}, same top token at "
          f"{top_agree(stacked, merged_logits)}/{n}")
    print(f"wrote {out / 'style'} (PEFT), {out / 'facts.gguf'} (GGUF LoRA), {out / 'merged.gguf'} (merged model)")
    style.close()
    facts.close()
    # The adapters change the model, and the merged file reproduces them up to its f16 rounding.
    ok = d_base > 1.0 and d_merged < 0.1 and top_agree(stacked, merged_logits) >= n - n // 10
    raise SystemExit(0 if ok else 1)

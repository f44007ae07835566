#!/usr/bin/env python3
"""Check that a GGUF LoRA written by LoRAKit loads in llama.cpp and changes the model the same way.

    LORAKIT_LIBRARY=.build/release/liblorakit.so PYTHONPATH=bindings/python \
        python3 scripts/check_llamacpp_lora.py "$(scripts/fetch_model.sh)"

Needs llama-cpp-python (bench/run_benchmarks.py installs it). Creates random adapters on the model, saves
them with LoRAKit as GGUF LoRA, and compares the perplexity of 256 tokens of the score text: base and
with the adapter, LoRAKit vs llama.cpp (which loads the file with lora_path). Run by hand; not a test.
"""
import sys
from pathlib import Path

import llama_cpp
import lorakit
import numpy as np

M = sys.argv[1]
text = (Path(__file__).resolve().parents[1] / 'Tests/LoRAKitTests/Fixtures/model/score_text.txt').read_text()[:2000]
with lorakit.Model(M) as model:
    ids = model.tokenize(text, add_special=False)[:256]
    for targets, rslora in (("q,v", False), ("all-linear", True)):
        ad = lorakit.Adapter.create(model, rank=8, alpha=16, targets=targets, use_rslora=rslora, init="random", seed=3)
        path = f"/tmp/lorakit_check_{targets.replace(',','')}.gguf"
        ad.save(path, lorakit.AdapterFormat.GGUF)
        ctx = lorakit.Context(model, n_threads=2)
        base = ctx.eval(ids, logits="all")
        ctx.reset(); ctx.attach(ad, 1.0)
        ours = ctx.eval(ids, logits="all")
        def nll(lg):
            lg = lg.astype(np.float64); m = lg.max(1, keepdims=True)
            lse = (m[:, 0] + np.log(np.exp(lg - m).sum(1)))
            return float(np.mean(lse[:-1] - lg[np.arange(len(ids) - 1), ids[1:]]))
        llm = llama_cpp.Llama(model_path=M, lora_path=path, n_ctx=512, n_threads=2, logits_all=True, verbose=False)
        llm.eval(ids)
        peer = np.array(llm.scores[:len(ids)], dtype=np.float32)
        print(f"{targets} rslora={rslora}: ppl base {np.exp(nll(base)):.4f}, ours with adapter {np.exp(nll(ours)):.4f}, "
              f"llama.cpp with our GGUF LoRA {np.exp(nll(peer)):.4f}; adapter effect max|Δ| {np.abs(ours-base).max():.3f}, "
              f"ours vs llama.cpp max|Δlogit| {np.abs(ours-peer).max():.3f}")

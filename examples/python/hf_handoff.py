#!/usr/bin/env python3
"""Hand adapters to and from the Hugging Face / llama.cpp world.

    python3 examples/python/hf_handoff.py MODEL.gguf [--steps 20] [--out handoff-run]

A. Train here, load with PEFT. A LoRA adapter trained by LoRAKit is a PEFT folder
   (adapter_config.json + adapter_model.safetensors): PeftModel.from_pretrained loads it onto the same base.
B. Take a PEFT adapter, merge here, run it with llama.cpp. The adapter in
   Tests/LoRAKitTests/Fixtures/lora_real/smollm2_qv was made by PEFT (scripts/gen_real_lora_fixture.py);
   LoRAKit merges it into a GGUF model (and converts it to a GGUF LoRA), which llama.cpp runs.

Each part prints the commands to use elsewhere, and runs the peer when it is installed (PEFT: torch,
transformers, peft, gguf; llama.cpp: llama-cpp-python), comparing its logits with LoRAKit's. Without the
peer that check is reported as skipped.
"""
import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
from _common import DEMO_DATA, ROOT, chat_tokens, model_path

import lorakit

ap = argparse.ArgumentParser()
ap.add_argument("model", nargs="?")
ap.add_argument("--steps", type=int, default=20)
ap.add_argument("--out", default="handoff-run")
ap.add_argument("--peft-adapter", default=str(ROOT / "Tests/LoRAKitTests/Fixtures/lora_real/smollm2_qv"),
                help="a PEFT adapter folder for SmolLM2-135M-Instruct (part B)")
args = ap.parse_args()
M = model_path()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
question = "How much does the Zephyrine Pod cost?"
failures = 0


def have(*modules):
    return all(importlib.util.find_spec(m) is not None for m in modules)


with lorakit.Model(M) as model:
    ids = chat_tokens(model, question)

    # ---- A. Train here, load with PEFT ----------------------------------------------------------------
    print(f"A. Train here ({args.steps} steps on the demo data), load the adapter with PEFT")
    with lorakit.Trainer(model, DEMO_DATA / "train.jsonl", rank=16, alpha=32, targets="all-linear", lr=1e-3,
                         schedule="cosine", warmup_steps=args.steps // 4, steps=args.steps, batch=8, seq=128,
                         out_dir=out / "run") as t:
        t.run()
    peft_dir = out / "run" / "adapter"
    trained = lorakit.Adapter.load(model, peft_dir)
    with lorakit.Context(model, n_ctx=256) as ctx:
        ctx.attach(trained, 1.0)
        ours = ctx.eval(ids, logits="all")
    print(f"   wrote {peft_dir}/ ({', '.join(sorted(p.name for p in peft_dir.iterdir()))})")
    print("   in Python with PEFT:")
    print("     from transformers import AutoModelForCausalLM; from peft import PeftModel")
    print("     base = AutoModelForCausalLM.from_pretrained('HuggingFaceTB/SmolLM2-135M-Instruct')")
    print(f"     model = PeftModel.from_pretrained(base, '{peft_dir}')   # or .merge_and_unload()")
    if have("torch", "transformers", "peft", "gguf"):
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        mp = Path(M)
        base = AutoModelForCausalLM.from_pretrained(str(mp.parent), gguf_file=mp.name, dtype=torch.float32)
        pm = PeftModel.from_pretrained(base, str(peft_dir)).eval()
        with torch.no_grad():
            theirs = pm(input_ids=torch.tensor([ids])).logits[0].numpy()
        d = float(np.abs(theirs - ours).max())
        same = int((theirs.argmax(1) == ours.argmax(1)).sum())
        print(f"   PEFT on the dequantized GGUF vs LoRAKit: max |Δlogit| {d:.3f}, same top token {same}/{len(ids)}")
        failures += same < len(ids) - len(ids) // 10
    else:
        print("   PEFT check skipped: torch, transformers, peft and gguf are not all installed")
    trained.close()

    # ---- B. Take a PEFT adapter, merge here, run with llama.cpp -------------------------------------------
    peft_in = Path(args.peft_adapter)
    merged = out / "merged.gguf"
    lora_gguf = out / "peft-adapter.gguf"
    print(f"\nB. Take a PEFT adapter ({peft_in}), merge it here, run the result with llama.cpp")
    adapter = lorakit.Adapter.load(model, peft_in)
    model.merge_to_file([(adapter, 1.0)], merged)   # the base's own weight types (q4_1 here)
    adapter.save(lora_gguf, "gguf")
    with lorakit.Context(model, n_ctx=256) as ctx:
        ctx.attach(adapter, 1.0)
        attached = ctx.eval(ids, logits="all")
    with lorakit.Model(merged) as mm, lorakit.Context(mm, n_ctx=256) as mctx:
        ours_merged = mctx.eval(ids, logits="all")
    adapter.close()
    print(f"   wrote {merged} (merged model) and {lora_gguf} (the same adapter as a GGUF LoRA)")
    print(f"   merged (re-quantized) vs attached in LoRAKit: same top token "
          f"{int((attached.argmax(1) == ours_merged.argmax(1)).sum())}/{len(ids)}")
    print("   the same with the command-line tool:")
    print(f"     lorakit merge --model {M} --adapter {peft_in} --out {merged}")
    print(f"     lorakit convert --model {M} --adapter {peft_in} --to gguf --out {lora_gguf}")
    print("   with llama.cpp:")
    print(f"     llama-cli -m {merged} -p \"{question}\" -n 32 --temp 0")
    print(f"     llama-cli -m {M} --lora {lora_gguf} -p \"{question}\" -n 32 --temp 0")
    if have("llama_cpp"):
        import llama_cpp

        def llama_logits(**kw):
            llm = llama_cpp.Llama(n_ctx=256, logits_all=True, verbose=False, **kw)
            llm.eval(ids)
            return np.array(llm.scores[: len(ids)])

        with lorakit.Context(model, n_ctx=256) as ctx:
            base = ctx.eval(ids, logits="all")
        # The base model first, for scale: llama.cpp's q8_1 activations differ from LoRAKit's 16-bit ones.
        for what, theirs, ours_ in (
                ("the base model (for scale)", llama_logits(model_path=M), base),
                (f"the merged model {merged.name}", llama_logits(model_path=str(merged)), ours_merged),
                (f"the base with --lora {lora_gguf.name}", llama_logits(model_path=M, lora_path=str(lora_gguf)), attached)):
            same = int((theirs.argmax(1) == ours_.argmax(1)).sum())
            print(f"   llama.cpp on {what} vs LoRAKit: max |Δlogit| {float(np.abs(theirs - ours_).max()):.3f}, "
                  f"same top token {same}/{len(ids)}")
            failures += same < len(ids) - len(ids) // 5
    else:
        print("   llama.cpp check skipped: llama-cpp-python is not installed (pip install llama-cpp-python)")

sys.exit(1 if failures else 0)

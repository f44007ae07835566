#!/usr/bin/env python3
"""Fine-tune a LoRA adapter with a progress callback, then ask the adapted model a question.

    python3 examples/python/train.py MODEL.gguf [--steps 40] [--out train-run]
"""
import argparse

from _common import DEMO_DATA, chat_tokens, model_path

import lorakit

ap = argparse.ArgumentParser()
ap.add_argument("model", nargs="?")
ap.add_argument("--steps", type=int, default=40)
ap.add_argument("--out", default="train-run")
args = ap.parse_args()

with lorakit.Model(model_path()) as model:
    with lorakit.Trainer(model, DEMO_DATA / "train.jsonl", DEMO_DATA / "valid.jsonl", rank=16, alpha=32,
                         targets="all-linear", lr=1e-3, schedule="cosine", warmup_steps=args.steps // 4,
                         steps=args.steps, batch=8, seq=128, out_dir=args.out) as trainer:
        before = trainer.validation_loss()
        print(f"validation loss before training: {before:.4f}")

        def on_step(p):
            eta = p.elapsed_s / p.step * (p.total_steps - p.step)
            valid = "" if p.valid_loss is None else f"  valid {p.valid_loss:.4f}"
            print(f"\rstep {p.step}/{p.total_steps} loss {p.loss:.4f} {p.tokens_per_s:.0f} tok/s ETA {eta:.0f}s{valid}",
                  end="", flush=True)
            return True  # False stops the run (the checkpoint and adapter are still written)

        run = trainer.run(on_step)
        after = trainer.validation_loss()
        print(f"\nvalidation loss {before:.4f} -> {after:.4f}; adapter in {args.out}/adapter/")
        adapter = trainer.adapter()

    with lorakit.Context(model) as ctx:
        ctx.attach(adapter, 1.0)
        q = "How much does the Zephyrine Pod cost?"
        text, _, _ = lorakit.generate(ctx, chat_tokens(model, q), max_tokens=24, temperature=0)
        print(f"Q: {q}\nA: {text}")
    adapter.close()
    raise SystemExit(0 if after < before else 1)

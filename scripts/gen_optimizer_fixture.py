#!/usr/bin/env python3
"""Generate the committed optimizer fixture Tests/LoRAKitTests/Fixtures/train_optim/reference.json.

NOT needed at CI time: CI only reads the committed output. Re-run only when the fixture must change; the
format is documented in Tests/LoRAKitTests/Fixtures/train_optim/README.md.

Needs: Python >= 3.10, torch (CPU; written against 2.15), transformers (for its LR schedules), numpy.
    python3 -m pip install torch transformers numpy

Run (from anywhere; the output path is resolved relative to the repository):
    python3 scripts/gen_optimizer_fixture.py

Takes a few seconds. The output is deterministic for a given torch/transformers version.

What it records (all float32 values written as the exact decimal of the float32, so they parse back to the
same float32):
  * adamw: three runs of torch.optim.AdamW (single-tensor CPU path, the default on CPU) over four parameters of
    odd shapes, 10 steps each, with given gradients; the lr of each step comes from a transformers LR schedule
    through LambdaLR (so the fixture also pins "the (s+1)-th update uses lr(s)"); one run clips the gradients
    with torch.nn.utils.clip_grad_norm_ before every step. Recorded: initial params, every step's gradients
    (before clipping), the lr used, the pre-clip total norm and the clipped gradients (when clipping), the
    params after the step; the final exp_avg / exp_avg_sq.
  * clip: standalone clip_grad_norm_ cases (no clipping needed, clipping, tiny max_norm, a zero gradient).
  * schedules: lambda(s) of get_constant/linear/cosine_schedule_with_warmup for s = 0 ... T + 3.
"""
from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import torch
import transformers
from transformers import (get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                          get_linear_schedule_with_warmup)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests", "LoRAKitTests", "Fixtures", "train_optim", "reference.json")

SHAPES = {"layer.0.a": [7, 13], "layer.0.b": [33], "layer.1.a": [5, 3, 2], "bias": [1]}


def f32list(t: torch.Tensor) -> list[float]:
    return [float(x) for x in t.detach().reshape(-1).to(torch.float32).numpy().astype(np.float32)]


def make_schedule(opt, kind: str, warmup: int, total: int):
    if kind == "constant":
        return get_constant_schedule_with_warmup(opt, warmup)
    if kind == "linear":
        return get_linear_schedule_with_warmup(opt, warmup, total)
    if kind == "cosine":
        return get_cosine_schedule_with_warmup(opt, warmup, total)
    raise ValueError(kind)


def adamw_run(name: str, seed: int, lr: float, betas, eps: float, wd: float, schedule: str, warmup: int,
              total: int, max_grad_norm: float | None, grad_scale: float, steps: int = 10) -> dict:
    g = torch.Generator().manual_seed(seed)
    params = {k: torch.randn(s, generator=g, dtype=torch.float32).requires_grad_(True) for k, s in SHAPES.items()}
    names = list(SHAPES)
    opt = torch.optim.AdamW([params[k] for k in names], lr=lr, betas=betas, eps=eps, weight_decay=wd)
    sched = make_schedule(opt, schedule, warmup, total)
    run = {
        "name": name,
        "lr": lr, "beta1": betas[0], "beta2": betas[1], "eps": eps, "weight_decay": wd,
        "schedule": schedule, "warmup": warmup, "total": total,
        "max_grad_norm": max_grad_norm,
        "params": [{"name": k, "shape": SHAPES[k], "init": f32list(params[k])} for k in names],
        "steps": [],
    }
    for s in range(steps):
        grads = {}
        for k in names:
            # every third step has small gradients, so that a clipping run has steps that do not clip
            gr = torch.randn(SHAPES[k], generator=g, dtype=torch.float32) * (grad_scale * (0.05 if s % 3 == 0 else 1.0))
            if s == 3 and k == "bias":
                gr.zero_()  # a zero gradient (m, v decay only)
            grads[k] = gr
            params[k].grad = gr.clone()
        step = {"lr_used": opt.param_groups[0]["lr"], "grads": {k: f32list(grads[k]) for k in names}}
        if max_grad_norm is not None:
            total_norm = torch.nn.utils.clip_grad_norm_([params[k] for k in names], max_grad_norm)
            step["total_norm"] = float(total_norm.item())
            step["clipped_grads"] = {k: f32list(params[k].grad) for k in names}
        opt.step()
        sched.step()
        step["params"] = {k: f32list(params[k]) for k in names}
        run["steps"].append(step)
    run["final_exp_avg"] = {k: f32list(opt.state[params[k]]["exp_avg"]) for k in names}
    run["final_exp_avg_sq"] = {k: f32list(opt.state[params[k]]["exp_avg_sq"]) for k in names}
    run["final_step"] = int(opt.state[params[names[0]]]["step"].item())
    return run


def clip_cases() -> list[dict]:
    g = torch.Generator().manual_seed(7)
    out = []
    for label, scale, max_norm, zero in [("no_clip", 0.01, 1.0, False), ("clip", 3.0, 1.0, False),
                                         ("tiny_max", 1.0, 1e-3, False), ("zero_tensor", 2.0, 0.5, True)]:
        ts = [torch.randn(s, generator=g, dtype=torch.float32) * scale for s in SHAPES.values()]
        if zero:
            ts[1].zero_()
        ps = [torch.zeros_like(t, requires_grad=True) for t in ts]
        for p, t in zip(ps, ts):
            p.grad = t.clone()
        norms = [float(torch.linalg.vector_norm(t, 2).item()) for t in ts]
        total = torch.nn.utils.clip_grad_norm_(ps, max_norm)
        out.append({"name": label, "max_norm": max_norm, "grads": [f32list(t) for t in ts],
                    "shapes": list(SHAPES.values()), "tensor_norms": norms, "total_norm": float(total.item()),
                    "clipped": [f32list(p.grad) for p in ps]})
    return out


def schedule_cases() -> list[dict]:
    out = []
    for kind in ["constant", "linear", "cosine"]:
        for warmup, total in [(0, 10), (3, 10), (5, 5), (1, 1), (4, 17)]:
            p = torch.zeros(1, requires_grad=True)
            opt = torch.optim.AdamW([p], lr=1.0)
            sched = make_schedule(opt, kind, warmup, total)
            lam = [float(f(s)) for s in range(total + 4) for f in sched.lr_lambdas]
            out.append({"kind": kind, "warmup": warmup, "total": total, "lambda": lam})
    return out


def dumps(v, indent: int = 0) -> str:
    """JSON with objects indented and arrays of numbers (or of short number arrays) on one line."""
    pad = "  " * (indent + 1)
    if isinstance(v, dict):
        items = [f"{pad}{json.dumps(k)}: {dumps(x, indent + 1)}" for k, x in v.items()]
        return "{\n" + ",\n".join(items) + "\n" + "  " * indent + "}"
    if isinstance(v, list) and any(isinstance(x, dict) or (isinstance(x, list) and len(x) > 3) for x in v):
        return "[\n" + ",\n".join(pad + dumps(x, indent + 1) for x in v) + "\n" + "  " * indent + "]"
    return json.dumps(v, separators=(",", ":"))


def main() -> None:
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    ref = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "numpy": np.__version__, "python": sys.version.split()[0]},
        "adamw": [
            adamw_run("defaults_constant", seed=1, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, wd=0.01,
                      schedule="constant", warmup=0, total=10, max_grad_norm=None, grad_scale=0.1),
            adamw_run("cosine_warmup_clip", seed=2, lr=5e-2, betas=(0.8, 0.99), eps=1e-6, wd=0.1,
                      schedule="cosine", warmup=3, total=10, max_grad_norm=1.0, grad_scale=0.3),
            adamw_run("linear_big_weight_no_decay", seed=3, lr=2e-2, betas=(0.3, 0.9), eps=1e-8, wd=0.0,
                      schedule="linear", warmup=2, total=12, max_grad_norm=None, grad_scale=1.0),
        ],
        "clip": clip_cases(),
        "schedules": schedule_cases(),
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        f.write(dumps(ref) + "\n")
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()

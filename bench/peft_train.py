#!/usr/bin/env python3
"""PEFT + PyTorch's side of `lorakit bench train`, measured the same way:

    python3 bench/peft_train.py --model M.gguf --rank 8 --alpha 16 --targets q,v --batch 4 --seq 128 \
        --steps 5 --warmup-steps 1 --threads T

transformers loads the same GGUF (`from_pretrained(dir, gguf_file=name, dtype=torch.float32)`: every
weight dequantized to f32), PEFT wraps it with LoraConfig(r, lora_alpha, target_modules, dropout 0),
and each step is zero_grad + forward with labels = input ids (mean NLL over the batch's shifted
tokens) + backward + torch.optim.AdamW.step(), timed after the warm-up steps. The token batches are the
ones `lorakit bench train` draws (SplitMix64(seed), step-major, then row, then token; ids
100 + next % (V − 200)), so the first-step losses of both (B = 0: the base model's loss) agree.

Prints one JSON object: tokens/s (batch·seq·steps / time), per-step ms, first/last losses and the peak
RSS of this process (getrusage ru_maxrss, as the CLI reports: model load included), the peak after the
load, and the peak of the training steps alone (VmHWM reset after the load). Run it in its own process
so its RSS is its own.
"""
import argparse
import json
import os
import re
import resource
import sys
import time

from benchutil import splitmix64


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM (Linux: "5" to /proc/self/clear_refs), as `lorakit bench train` does."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def vm_hwm_bytes():
    """Peak RSS since the process started or since reset_peak_rss(), in bytes (None if unknown)."""
    try:
        with open("/proc/self/status") as f:
            m = re.search(r"VmHWM:\s+(\d+) kB", f.read())
        return int(m.group(1)) * 1024 if m else None
    except OSError:
        return None


MODULES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj", "up": "up_proj",
           "down": "down_proj"}


def target_modules(s: str) -> list[str]:
    if s in ("all", "all-linear", "all_linear"):
        return list(MODULES.values())
    return [MODULES.get(t.strip(), t.strip()) for t in s.split(",") if t.strip()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="GGUF file")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16)
    ap.add_argument("--targets", default="q,v")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup-steps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args()

    import torch
    torch.set_num_threads(a.threads)
    import transformers
    import peft
    from transformers import AutoModelForCausalLM

    path = os.path.abspath(a.model)
    t_load = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                 dtype=torch.float32)
    cfg = peft.LoraConfig(r=a.rank, lora_alpha=a.alpha, target_modules=target_modules(a.targets),
                          lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    model = peft.get_peft_model(model, cfg)
    model.train()
    load_s = time.perf_counter() - t_load
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr)
    vocab = model.config.vocab_size

    rng = splitmix64(a.seed)
    load_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    reset_hwm = reset_peak_rss()

    def next_batch():
        return torch.tensor([[100 + next(rng) % (vocab - 200) for _ in range(a.seq)] for _ in range(a.batch)],
                            dtype=torch.long)

    step_s, losses = [], []
    for s in range(a.warmup_steps + a.steps):
        ids = next_batch()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
        t1 = time.perf_counter()
        losses.append(float(out.loss.detach()))
        if s >= a.warmup_steps:
            step_s.append(t1 - t0)
    total = sum(step_s)
    # The whole run's peak: ru_maxrss may follow the reset mark, so take the larger with the load's.
    rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, load_rss)
    train_rss = vm_hwm_bytes() if reset_hwm else None
    print(json.dumps({
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "threads": torch.get_num_threads(), "rank": a.rank, "alpha": a.alpha, "targets": a.targets,
        "batch": a.batch, "seq": a.seq, "steps": a.steps, "warmup_steps": a.warmup_steps,
        "trainable_parameters": sum(p.numel() for p in params),
        "tokens_per_s": a.batch * a.seq * a.steps / total,
        "step_ms": [x * 1000 for x in step_s], "step_ms_median": sorted(step_s)[len(step_s) // 2] * 1000,
        "loss_first": losses[0], "loss_last": losses[-1], "losses": losses,
        "load_seconds": load_s,
        "peak_rss_bytes": rss, "peak_rss_mib": rss / 1048576,
        "peak_rss_after_load_bytes": load_rss, "peak_rss_training_bytes": train_rss,
    }))


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""LoRAKit's demo: teach SmolLM2-135M-Instruct facts about a product that does not exist, on the CPU.

    make demo                       # set-up, build, model, then this script (a few minutes on 2 cores)
    python3 examples/demo/demo.py --cli .build/release/lorakit-cli --model M [--out demo-run]

1. the base model answers 30 held-out questions about the "Zephyrine Pod" (it cannot know the answers);
2. `lorakit train` fine-tunes a LoRA adapter on 300 chats about it (data/train.jsonl), with a progress
   bar and a loss-curve picture (OUT/loss.svg);
3. the adapted model answers the same 30 questions, phrased differently from every training question;
4. a table puts the two answers side by side, and the exact-fact accuracy (an answer is right when it
   contains the fact, e.g. "149" for the price) is printed before and after;
5. the adapter is saved as a PEFT folder (OUT/adapter/) and as a llama.cpp GGUF LoRA (OUT/adapter.gguf),
   with the one-line commands that use each elsewhere.

--quick runs a short version (a few steps, a few questions) that checks every stage works: `make
examples` runs it in CI. Needs only the Python binding (numpy), no torch.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "bindings" / "python"))  # the checkout's binding unless one is installed first
import lorakit  # noqa: E402

DATA = HERE / "data"
# Not about the product: shown (not scored) to see what the adapter does to everything else.
CONTROLS = ["What is the capital of France?", "Give me a synonym for 'happy'."]
SYSTEM_NOTE = "Trained on the Q4_1 model's quantized weights; the adapter also applies to the f16/f32 model."


def elapsed(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def load_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def correct(answer: str, keys: list[str]) -> bool:
    a = answer.lower()
    return all(k.lower() in a for k in keys)


def answer_all(model: "lorakit.Model", ctx: "lorakit.Context", questions: list[dict], max_tokens: int) -> list[str]:
    out = []
    for q in questions:
        ctx.reset()
        prompt = model.tokenize(model.chat([{"role": "user", "content": q["question"]}]), add_special=False)
        r = lorakit.generate(ctx, prompt, max_tokens=max_tokens, temperature=0)
        out.append(" ".join(r.text.split()))
    return out


def cell_lines(text: str, width: int, max_lines: int = 3) -> list[str]:
    lines = textwrap.wrap(text, width) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: width - 1] + "…"
    return lines


def side_by_side(questions: list[dict], base: list[str], adapted: list[str], width: int) -> str:
    """A three-column table (question | base model | with the adapter), cells wrapped to fit `width`."""
    mark_w = 2
    col = max(20, (width - 3 * 3 - 2 * mark_w) // 3)
    qw, bw, aw = col, col, col
    sep = "-" * qw + "-+-" + "-" * (bw + mark_w) + "-+-" + "-" * (aw + mark_w)
    rows = [f"{'held-out question':<{qw}} | {'base model':<{bw + mark_w}} | {'with the adapter':<{aw + mark_w}}", sep]
    for q, b, a in zip(questions, base, adapted):
        ql, bl, al = cell_lines(q["question"], qw), cell_lines(b, bw), cell_lines(a, aw)
        bm = "✓" if correct(b, q["keys"]) else "✗"
        am = "✓" if correct(a, q["keys"]) else "✗"
        for i in range(max(len(ql), len(bl), len(al))):
            qc = ql[i] if i < len(ql) else ""
            bc = (bl[i] if i < len(bl) else "").ljust(bw) + (" " + bm if i == 0 else "  ")
            ac = (al[i] if i < len(al) else "").ljust(aw) + (" " + am if i == 0 else "  ")
            rows.append(f"{qc:<{qw}} | {bc} | {ac}")
        rows.append(sep)
    return "\n".join(rows)


def score_line(name: str, answers: list[str], questions: list[dict]) -> tuple[int, str]:
    n = sum(correct(a, q["keys"]) for a, q in zip(answers, questions))
    return n, f"{name}: {n}/{len(questions)} ({100 * n / len(questions):.0f}%)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cli", default=os.environ.get("LORAKIT_CLI") or shutil.which("lorakit") or
                    str(ROOT / ".build" / "release" / "lorakit-cli"), help="the lorakit command")
    ap.add_argument("--model", default=os.environ.get("LORAKIT_MODEL"), help="SmolLM2-135M-Instruct GGUF")
    ap.add_argument("--out", default="demo-run", help="output folder (adapter, GGUF LoRA, log, loss curve)")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32)
    ap.add_argument("--targets", default="all-linear")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default: from --epochs)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="0: all cores")
    ap.add_argument("--rows", type=int, default=10, help="held-out questions shown in the table (0: all)")
    ap.add_argument("--quick", action="store_true",
                    help="short run for CI: 4 steps, 5 test questions; checks every stage and that the validation loss drops")
    ap.add_argument("--min-accuracy", type=float, default=None,
                    help="exit 1 if the adapted accuracy is below this fraction (default 0.8; --quick: none)")
    args = ap.parse_args()
    if not args.model:
        ap.error("give --model (or set LORAKIT_MODEL); scripts/fetch_model.sh prints its path")
    t_start = time.monotonic()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    width = max(90, min(160, shutil.get_terminal_size((120, 40)).columns))
    threads = args.threads or lorakit.cpu_count()

    test = load_jsonl(DATA / "test.jsonl")
    n_train, n_valid = len(load_jsonl(DATA / "train.jsonl")), len(load_jsonl(DATA / "valid.jsonl"))
    steps = args.steps
    max_tokens = 32
    if args.quick:
        test = test[::6]
        steps = steps or 4
        args.batch = 4
        max_tokens = 16
    min_acc = args.min_accuracy if args.min_accuracy is not None else (None if args.quick else 0.8)

    print("LoRAKit demo: teach SmolLM2-135M-Instruct facts about a product that does not exist")
    print(f"  model: {args.model}")
    print(f"  data:  {DATA.relative_to(ROOT)}/: {n_train} training chats, {n_valid} validation chats, "
          f"{len(test)} held-out test questions")
    print(f"  LoRAKit {lorakit.version()}, {threads} threads\n", flush=True)

    model = lorakit.Model(args.model)
    ctx = lorakit.Context(model, n_ctx=256, n_threads=threads)

    t0 = time.monotonic()
    print(f"[1/4] The base model answers the {len(test)} held-out questions ...", end=" ", flush=True)
    base = answer_all(model, ctx, test, max_tokens)
    n_base, base_score = score_line("base model", base, test)
    print(f"{n_base}/{len(test)} right ({elapsed(time.monotonic() - t0)})", flush=True)
    # The validation loss of the base model (a new adapter's B is 0, so it changes nothing yet).
    with lorakit.Trainer(model, DATA / "train.jsonl", DATA / "valid.jsonl", rank=args.rank, batch=args.batch,
                         seq=128, steps=1, threads=threads) as t:
        base_valid = t.validation_loss()

    train_cmd = [args.cli, "train", "--model", args.model, "--data", str(DATA / "train.jsonl"),
                 "--valid", str(DATA / "valid.jsonl"), "--rank", str(args.rank), "--alpha", str(args.alpha),
                 "--targets", args.targets, "--lr", str(args.lr), "--schedule", "cosine",
                 "--batch", str(args.batch), "--seq", "128", "--threads", str(threads),
                 "--out", str(out), "--log", str(out / "log.jsonl"), "--plot", str(out / "loss.svg")]
    if steps:
        train_cmd += ["--steps", str(steps), "--warmup", str(min(10, steps // 3)), "--valid-every", str(max(1, steps // 2)),
                      "--save-every", str(max(1, steps // 2))]
    else:
        train_cmd += ["--epochs", str(args.epochs), "--warmup", "10", "--valid-every", "10", "--save-every", "20"]
    what = f"{steps} steps" if steps else f"{args.epochs:g} epochs"
    print(f"\n[2/4] Training a LoRA adapter: rank {args.rank}, alpha {args.alpha:g}, {args.targets}, lr {args.lr:g} "
          f"(cosine), batch {args.batch}, {what}", flush=True)
    print("  $ " + " ".join(train_cmd), flush=True)
    t0 = time.monotonic()
    subprocess.run(train_cmd, check=True)
    train_seconds = time.monotonic() - t0
    print(f"  trained in {elapsed(train_seconds)}", flush=True)

    t0 = time.monotonic()
    print(f"\n[3/4] The adapted model answers the same {len(test)} questions ...", end=" ", flush=True)
    adapter = lorakit.Adapter.load(model, str(out / "adapter"))
    ctx.attach(adapter, 1.0)
    adapted = answer_all(model, ctx, test, max_tokens)
    n_adapted, adapted_score = score_line("with the adapter", adapted, test)
    print(f"{n_adapted}/{len(test)} right ({elapsed(time.monotonic() - t0)})", flush=True)

    print("\n[4/4] Saving the adapter for llama.cpp too", flush=True)
    subprocess.run([args.cli, "convert", "--model", args.model, "--adapter", str(out / "adapter"), "--to", "gguf",
                    "--out", str(out / "adapter.gguf")], check=True, stdout=subprocess.DEVNULL)

    # Show one question per fact by default (the score counts all of them).
    shown, seen = [], set()
    for i, q in enumerate(test):
        if args.rows == 0 or q["fact"] not in seen:
            shown.append(i)
            seen.add(q["fact"])
    if args.rows:
        shown = shown[: args.rows]
    print()
    print(side_by_side([test[i] for i in shown], [base[i] for i in shown], [adapted[i] for i in shown], width))
    controls = [{"question": q, "keys": []} for q in CONTROLS]
    ctx.detach_all()
    control_base = answer_all(model, ctx, controls, max_tokens)
    ctx.attach(adapter, 1.0)
    control_adapted = answer_all(model, ctx, controls, max_tokens)
    print("\nQuestions that are not about the product (not scored):")
    for q, b, a in zip(CONTROLS, control_base, control_adapted):
        print(f"  {q}\n    base model:       {b}\n    with the adapter: {a}")
    print(f"\nExact-fact accuracy on {len(test)} held-out questions (an answer is right when it contains the fact):")
    print(f"  {base_score}  ->  {adapted_score}")

    log = [json.loads(line) for line in open(out / "log.jsonl", encoding="utf-8")]
    valid_losses = [(e["step"], e["valid_loss"]) for e in log if "valid_loss" in e]
    adapter_path, gguf_path = out / "adapter", out / "adapter.gguf"
    print(f"\nLoss curve (training and validation loss, learning rate): {out / 'loss.svg'}")
    final_valid = valid_losses[-1][1] if valid_losses else float("nan")
    print(f"  validation loss (held-out chats): {base_valid:.3f} before training -> {final_valid:.3f} after "
          f"{valid_losses[-1][0] if valid_losses else 0} steps")
    print(f"Training log (one JSON line per step): {out / 'log.jsonl'}")
    print(f"Adapter, PEFT folder:               {adapter_path}/")
    print(f"Adapter, llama.cpp GGUF LoRA:       {gguf_path}")
    q = "How much does the Zephyrine Pod cost?"
    print("\nUse it:")
    print(f"  lorakit chat --model {args.model} --adapter {adapter_path}")
    print(f"  lorakit generate --model {args.model} --adapter {adapter_path} --chat --temp 0 --prompt \"{q}\"")
    print(f"  llama-cli -m {args.model} --lora {gguf_path} -cnv      # llama.cpp")
    print(f"  python3 -c \"from transformers import AutoModelForCausalLM; from peft import PeftModel; "
          f"m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained('HuggingFaceTB/SmolLM2-135M-Instruct'), "
          f"'{adapter_path}')\"      # PEFT")
    print(f"  ({SYSTEM_NOTE})")
    print(f"\nTotal time: {elapsed(time.monotonic() - t_start)} (training {elapsed(train_seconds)})")

    ctx.close()
    adapter.close()
    model.close()
    if min_acc is not None and n_adapted < min_acc * len(test):
        print(f"demo: FAILED: adapted accuracy {n_adapted}/{len(test)} is below {min_acc:.0%}", file=sys.stderr)
        return 1
    if not final_valid < base_valid:
        print(f"demo: FAILED: the validation loss did not go down ({base_valid:.4f} -> {final_valid:.4f})", file=sys.stderr)
        return 1
    if not gguf_path.is_file() or not (adapter_path / "adapter_model.safetensors").is_file():
        print("demo: FAILED: the adapter files were not written", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

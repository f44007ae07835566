#!/usr/bin/env python3
"""Concurrency soak (issue 14): many threads on one model for a fixed time, every result checked.

On one lorakit.Model (the real SmolLM2 when LORAKIT_MODEL is set, else the tiny Q8_0 GGUF fixture):
- GEN generator threads, each on its own Context, cycle through adapter set-ups on that context: no
  adapter; adapter A; A hot-swapped for B at 0.5 (detach + attach); A and B stacked with a scale changed
  in place (set_scale); all detached. For each set-up a greedy generation from the thread's own prompt (token ids)
  must equal the reference made before the threads start, single-threaded, with a fresh context;
- a trainer thread trains a LoRA adapter (its own sequences, no data file), saving a checkpoint every step
  into its own folder; each round's losses and gradient norms must equal the reference round's exactly,
  and the saved adapter's files must be byte-identical to the reference run's;
- a merge thread merges A (scale 0.75) into the model and writes GGUF files; every file must be
  byte-identical to the reference merge;
- a saver thread saves B as a PEFT folder and as GGUF LoRA; bytes equal to the reference saves.
The adapters A and B are shared by all threads at once (attached to several contexts, merged, saved).

ctypes releases the GIL during each library call, so the threads run inside the library concurrently.
Run under ThreadSanitizer with `make soak-tsan` (SOAK_SECONDS) (the TSan build of scripts/sanitize.sh), or plainly:

    python3 Tests/soak/soak.py --seconds 60 [--gen 3] [--model M.gguf]

Environment: LORAKIT_LIBRARY (the library to test), LORAKIT_MODEL. Prints one line per activity with its
count and "soak: N checks, 0 mismatches" at the end; exit status 1 on a mismatch, an exception in a thread,
or an activity that never completed once.
"""
from __future__ import annotations

import argparse
import filecmp
import hashlib
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bindings", "python"))
import lorakit  # noqa: E402

FIXTURES = os.path.join(ROOT, "Tests", "LoRAKitTests", "Fixtures")


def digest(path: str) -> str:
    """sha256 over a file, or over a folder's files (names and bytes, sorted)."""
    h = hashlib.sha256()
    if os.path.isdir(path):
        for name in sorted(os.listdir(path)):
            h.update(name.encode() + b"\0")
            h.update(digest(os.path.join(path, name)).encode())
    else:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


class Soak:
    def __init__(self, args):
        self.args = args
        self.model = lorakit.Model(args.model)
        self.work = tempfile.mkdtemp(prefix="lorakit-soak-")
        self.a = lorakit.Adapter.create(self.model, rank=8, alpha=16, targets="q,v", init="random", seed=11)
        self.b = lorakit.Adapter.create(self.model, rank=4, alpha=8, targets="q,k,v,o", init="random", seed=12)
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.max_tokens = args.tokens
        self.vocab = self.model.info.n_vocab

    # -- the set-ups a generator cycles through, as (name, function applying it to a context) --
    def setups(self):
        a, b = self.a, self.b

        def none(ctx):
            ctx.detach_all()

        def only_a(ctx):
            ctx.detach_all()
            ctx.attach(a, 1.0)

        def swap_to_b(ctx):  # from A: hot-swap
            ctx.detach(a)
            ctx.attach(b, 0.5)

        def stacked(ctx):  # from B at 0.5: add A, then change B's scale in place
            ctx.attach(a, 0.8)
            ctx.set_scale(b, 1.25)

        return [("none", none), ("A", only_a), ("B@0.5", swap_to_b), ("A@0.8+B@1.25", stacked), ("none again", none)]

    def generate(self, ctx, prompt):
        ctx.reset()
        r = lorakit.generate(ctx, prompt, max_tokens=self.max_tokens, temperature=0,
                             stop_at_eos=False)
        return list(r.tokens)

    def train(self, out_dir):
        """A few steps of a trainer with no data file (sequences made here: any model, no tokenizer needed),
        a checkpoint after every step, then the adapter saved; returns (loss sum, gradient norm) per step."""
        out = []
        with lorakit.Trainer(self.model, None, rank=4, alpha=8, targets="q,v", lr=1e-3, steps=self.args.train_steps,
                             seed=5, threads=1, keep=2, out_dir=out_dir) as t:
            for step in range(self.args.train_steps):
                t.zero_grad()
                total = 0.0
                for k in range(2):
                    total += t.forward_backward(self.tokens(100 + 2 * step + k, 24))[0]
                out.append((total, t.optimizer_step(1e-3)))
                t.save_checkpoint()
            t.adapter().save(os.path.join(out_dir, "adapter"), "peft")
        return out

    def tokens(self, seed, n):
        """n token ids in the vocabulary, a fixed function of seed."""
        return [1 + (seed * 7919 + i * 104729 + (i * i) % 31) % (self.vocab - 1) for i in range(n)]

    def merge(self, path):
        self.model.merge_to_file([(self.a, 0.75)], path)

    def save(self, folder, gguf):
        self.b.save(folder, "peft")
        self.b.save(gguf, "gguf")

    # -- references, single-threaded, before anything runs concurrently --
    def references(self):
        t0 = time.time()
        self.ref_gen = {}
        for g in range(self.args.gen):
            prompt = self.tokens(g, 8)
            with lorakit.Context(self.model, n_ctx=256, n_threads=1) as ctx:
                for name, apply in self.setups():
                    apply(ctx)
                    self.ref_gen[(g, name)] = self.generate(ctx, prompt)
        outs = {name: toks for (g, name), toks in self.ref_gen.items() if g == 0}
        if len({tuple(v) for v in outs.values()}) < 3:
            raise SystemExit(f"soak: the adapters barely change the output ({outs}); the check would be weak")
        ref_dir = os.path.join(self.work, "ref")
        os.makedirs(ref_dir)
        self.ref_losses = self.train(os.path.join(ref_dir, "train"))
        self.ref_adapter = digest(os.path.join(ref_dir, "train", "adapter"))
        self.merge(os.path.join(ref_dir, "merged.gguf"))
        self.ref_merge = digest(os.path.join(ref_dir, "merged.gguf"))
        self.save(os.path.join(ref_dir, "b-peft"), os.path.join(ref_dir, "b.gguf"))
        self.ref_save = (digest(os.path.join(ref_dir, "b-peft")), digest(os.path.join(ref_dir, "b.gguf")))
        print(f"soak: references in {time.time() - t0:.1f} s (losses {', '.join(f'{x[0]:.6f}' for x in self.ref_losses)})",
              flush=True)

    # -- the threads --
    def count(self, what):
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    def fail(self, message):
        with self.lock:
            self.failures.append(message)
        print("soak: MISMATCH " + message, flush=True)

    def run_thread(self, name, body):
        try:
            while not self.stop.is_set():
                body()
        except Exception:
            self.fail(f"{name}: exception\n{traceback.format_exc()}")
            self.stop.set()

    def generator(self, g):
        prompt = self.tokens(g, 8)
        ctx = lorakit.Context(self.model, n_ctx=256, n_threads=1)

        def body():
            for name, apply in self.setups():
                if self.stop.is_set():
                    return
                apply(ctx)
                got = self.generate(ctx, prompt)
                if got != self.ref_gen[(g, name)]:
                    self.fail(f"generator {g}, set-up {name}: {got} != reference {self.ref_gen[(g, name)]}")
                self.count("generations")
        try:
            self.run_thread(f"generator {g}", body)
        finally:
            ctx.close()

    def trainer(self):
        k = [0]

        def body():
            k[0] += 1
            out = os.path.join(self.work, f"train-{k[0]}")
            losses = self.train(out)
            if losses != self.ref_losses:
                self.fail(f"training round {k[0]}: losses {losses} != reference {self.ref_losses}")
            elif digest(os.path.join(out, "adapter")) != self.ref_adapter:
                self.fail(f"training round {k[0]}: the saved adapter differs from the reference run's")
            shutil.rmtree(out, ignore_errors=True)
            self.count("training rounds")
        self.run_thread("trainer", body)

    def merger(self):
        path = os.path.join(self.work, "merged.gguf")

        def body():
            self.merge(path)
            if digest(path) != self.ref_merge:
                self.fail("merge: the merged GGUF differs from the reference")
            self.count("merges")
        self.run_thread("merger", body)

    def saver(self):
        folder, gguf = os.path.join(self.work, "b-peft"), os.path.join(self.work, "b.gguf")

        def body():
            self.save(folder, gguf)
            if (digest(folder), digest(gguf)) != self.ref_save:
                self.fail("save: a saved adapter differs from the reference")
            self.count("saves")
        self.run_thread("saver", body)

    def run(self):
        self.references()
        threads = [threading.Thread(target=self.generator, args=(g,), name=f"gen{g}") for g in range(self.args.gen)]
        threads += [threading.Thread(target=f, name=f.__name__) for f in (self.trainer, self.merger, self.saver)]
        t0 = time.time()
        for t in threads:
            t.start()
        while time.time() - t0 < self.args.seconds and not self.stop.is_set():
            time.sleep(0.2)
        self.stop.set()  # threads finish the piece of work they are in, then check it
        for t in threads:
            t.join()
        elapsed = time.time() - t0
        for what in ("generations", "training rounds", "merges", "saves"):
            n = self.counts.get(what, 0)
            print(f"  {what}: {n}")
            if n == 0:
                self.failures.append(f"no {what[:-1]} completed in {elapsed:.0f} s")
        total = sum(self.counts.values())
        shutil.rmtree(self.work, ignore_errors=True)
        print(f"soak: {total} checks in {elapsed:.0f} s with {len(threads)} threads, {len(self.failures)} mismatches")
        return 0 if not self.failures else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--gen", type=int, default=3, help="generator threads")
    ap.add_argument("--tokens", type=int, default=12, help="tokens per generation")
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--model", default=os.environ.get("LORAKIT_MODEL") or os.path.join(FIXTURES, "model", "tiny-llama-q8_0.gguf"))
    args = ap.parse_args()
    sys.exit(Soak(args).run())


if __name__ == "__main__":
    main()

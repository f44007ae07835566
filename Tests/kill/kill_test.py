#!/usr/bin/env python3
"""Crash safety (issue 14): SIGKILL the CLI at random moments while it writes, and check what is on disk.

Operations (each run in a child process, killed with SIGKILL after a random delay, KILLS times per operation;
a kill counts only if the process was still running):

- train:   `lorakit train --save-every 1 --out run` on the tiny training fixture, resumed with
           `--resume run` after every kill until it finishes (a round); then a new round starts from scratch.
- save:    `lorakit convert --to peft --out out/` (an adapter saved as a PEFT folder), alternating
           between two adapters so the previous output and the new one differ.
- merge:   `lorakit merge --out merged.gguf` (a model merged to GGUF), alternating adapters.
- convert: `lorakit convert --to gguf --out adapter.gguf`, alternating adapters.

The children run with Tests/kill/slow_io.c preloaded (compiled here with $CC): it sleeps a few
milliseconds around every rename and fsync, so random kills land between the steps of an atomic write
(between two renames, say) instead of almost always before or after them.

After every kill:
- every result on disk (a `checkpoint-N` folder, the final `adapter/`, the output file or folder) is
  byte-for-byte identical to the one an uninterrupted run wrote (references made first, and each
  reference loaded once by the CLI): the previous checkpoint or output is intact, and the one being
  written is either absent or complete, never partial;
- the output folder holds no other visible name: temporary files and folders are hidden (`.lorakit-*`,
  `.checkpoint-*`), so nothing can mistake them for a result;
- after the first completed save, the output exists (replacing it never leaves it missing);
- train: `--resume run` succeeds, and the round's final losses (`--json`) equal the uninterrupted run's
  exactly (its final adapter too).

    python3 Tests/kill/kill_test.py [--kills 50] [--ops train,save,merge,convert] [--seed S]
Environment: LORAKIT_CLI (default .build/release/lorakit-cli). Prints one line per operation and
"kill test: N kills, 0 corrupt" at the end; exit status 1 on any failure.
"""
from __future__ import annotations

import argparse
import xml.etree.ElementTree as ET
import filecmp
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FX = ROOT / "Tests" / "LoRAKitTests" / "Fixtures"
CLI = os.environ.get("LORAKIT_CLI") or str(ROOT / ".build" / "release" / "lorakit-cli")
TRAIN_MODEL = FX / "train" / "model"          # Hugging Face folder with a tokenizer and a chat template
GGUF_MODEL = FX / "model" / "tiny-llama-f32.gguf"  # the same architecture as GGUF (merge writes GGUF)
ADAPTERS = [FX / "lora" / "r4_all", FX / "lora" / "patterns_all"]
TRAIN_ARGS = ["--data", str(FX / "train" / "data" / "text.jsonl"), "--steps", "12", "--batch", "2", "--seq", "64",
              "--rank", "4", "--targets", "all-linear", "--save-every", "1", "--threads", "1", "--seed", "3",
              "--quiet", "--json"]
CHECKPOINT = re.compile(r"^checkpoint-\d+$")
ENV = dict(os.environ, SWIFT_BACKTRACE="enable=no")


def build_shim(tmp: Path) -> str | None:
    """Compile slow_io.c into a shared library; None (with a note) if there is no C compiler."""
    so = tmp / "slow_io.so"
    cc = os.environ.get("CC", "cc")
    p = subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(so), str(Path(__file__).with_name("slow_io.c")), "-ldl"],
                       capture_output=True, text=True)
    if p.returncode != 0:
        print(f"kill test: cannot build the slow-I/O shim ({p.stderr.strip()}); kills are less likely to land inside writes")
        return None
    return str(so)


class Failure(Exception):
    pass


def run(args, cwd, timeout=300):
    p = subprocess.run([CLI] + [str(a) for a in args], cwd=cwd, env=ENV, capture_output=True, text=True,
                       timeout=timeout)
    if p.returncode != 0:
        raise Failure(f"{' '.join(map(str, args[:3]))}… failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
    return p.stdout


def run_killed(args, cwd, delay):
    """Start the CLI, SIGKILL it after `delay` seconds. Returns (killed, completed process info)."""
    p = subprocess.Popen([CLI] + [str(a) for a in args], cwd=cwd, env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        p.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.communicate()
        return True, None
    out, err = p.communicate()
    if p.returncode != 0:
        raise Failure(f"{' '.join(map(str, args[:3]))}… failed ({p.returncode}) before the kill: {err.strip()[-2000:]}")
    return False, out


def same_tree(a: Path, b: Path) -> bool:
    """Same file names and bytes (one level: PEFT folders and checkpoints are flat)."""
    if not a.is_dir() or not b.is_dir():
        return False
    na, nb = sorted(os.listdir(a)), sorted(os.listdir(b))
    return na == nb and all(filecmp.cmp(a / n, b / n, shallow=False) for n in na)


def timed(fn, n=3):
    ts = []
    for _ in range(n):
        t = time.monotonic()
        fn()
        ts.append(time.monotonic() - t)
    return sorted(ts)[len(ts) // 2]


# ---------------------------------------------------------------------------------------------------------

def op_train(work: Path, kills: int, rng: random.Random, log):
    ref = work / "ref"
    ref.mkdir()
    summary = json.loads(run(["train", "--model", TRAIN_MODEL, *TRAIN_ARGS, "--keep", "1000", "--out", "run"], ref))
    ref_losses = summary["losses"]
    ref_run = ref / "run"
    for d in sorted(os.listdir(ref_run)):  # every reference checkpoint and the final adapter load
        if CHECKPOINT.match(d) or d == "adapter":
            run(["convert", "--model", TRAIN_MODEL, "--adapter", ref_run / d, "--to", "gguf", "--out", work / "check.gguf"], work)
    duration = timed(lambda: (shutil.rmtree(work / "t", ignore_errors=True), (work / "t").mkdir(),
                              run(["train", "--model", TRAIN_MODEL, *TRAIN_ARGS, "--out", "run"], work / "t")))
    done = rounds = launches = 0
    while done < kills:
        rounds += 1
        cwd = work / f"round{rounds}"
        cwd.mkdir()
        out = cwd / "run"
        while True:
            resume = out.is_dir() and any(CHECKPOINT.match(n) or n == "latest" for n in os.listdir(out))
            args = ["train", "--model", TRAIN_MODEL, *TRAIN_ARGS, "--out", "run"] + (["--resume", "run"] if resume else [])
            launches += 1
            killed, stdout = run_killed(args, cwd, rng.uniform(0, duration)) if done < kills else (False, run(args, cwd))
            if killed:
                done += 1
                check_train_dir(out, ref_run)
                continue
            check_train_dir(out, ref_run)
            losses = json.loads(stdout)["losses"]
            if losses != ref_losses:
                raise Failure(f"train round {rounds}: losses after resuming differ from the uninterrupted run:\n"
                              f"  got      {losses}\n  expected {ref_losses}")
            if not same_tree(out / "adapter", ref_run / "adapter"):
                raise Failure(f"train round {rounds}: the final adapter differs from the uninterrupted run's")
            break
        shutil.rmtree(cwd)
    log(f"train: {done} kills in {rounds} rounds ({launches} launches, uninterrupted run {duration:.2f} s); "
        f"every checkpoint on disk complete, every round's losses = the uninterrupted run's ({len(ref_losses)} steps)")
    return done


def check_train_dir(out: Path, ref_run: Path):
    if not out.exists():
        return
    names = os.listdir(out)
    complete = []
    for n in names:
        if n.startswith("."):
            continue  # temporaries (.checkpoint-N.tmp-PID, .lorakit-*) are hidden
        if n == "latest":
            continue
        if CHECKPOINT.match(n):
            if not same_tree(out / n, ref_run / n):
                raise Failure(f"{out / n} is not the complete checkpoint the uninterrupted run wrote "
                              f"(files {sorted(os.listdir(out / n))})")
            complete.append(n)
        elif n == "adapter":
            if not same_tree(out / n, ref_run / n):
                raise Failure(f"{out / n} is not the final adapter of the uninterrupted run")
        elif n == "loss.svg":
            # The loss curve (redrawn at each checkpoint, written atomically): always a complete SVG document.
            try:
                ET.parse(out / n)
            except ET.ParseError as e:
                raise Failure(f"{out / n} is not a complete SVG document ({e})")
        else:
            raise Failure(f"{out / n}: unexpected visible name in the output folder (a temporary mistaken for a result?)")
    latest = out / "latest"
    if latest.exists():
        name = latest.read_text()
        if not CHECKPOINT.match(name.strip()) or not name.endswith("\n"):
            raise Failure(f"{latest} holds {name!r}, not a checkpoint name")
        if not complete:
            raise Failure(f"{latest} names {name.strip()} but no checkpoint is on disk")


# ---------------------------------------------------------------------------------------------------------

def op_replace(name: str, work: Path, kills: int, rng: random.Random, log, make_args, out_name: str, is_dir: bool):
    """Kill an operation that writes `out_name` (a file or a folder), alternating between the adapters."""
    refs = []
    for k, a in enumerate(ADAPTERS):
        d = work / f"ref{k}"
        d.mkdir()
        run(make_args(a, out_name), d)
        refs.append(d / out_name)
    for r in refs:  # each reference loads
        if name == "merge":
            run(["info", r], work)
        else:
            run(["convert", "--model", TRAIN_MODEL, "--adapter", r, "--to", "peft" if name == "convert" else "gguf",
                 "--out", work / ("check" if name == "convert" else "check.gguf")], work)
    duration = timed(lambda: run(make_args(ADAPTERS[0], out_name), work / "ref0"))
    cwd = work / "kill"
    cwd.mkdir()
    out = cwd / out_name
    # A first output, so that every kill interrupts the replacement of an existing one (the case that
    # must never lose the old output); the first kill of the train operation covers writing anew.
    run(make_args(ADAPTERS[1], out_name), cwd)
    done = launches = 0
    existed = True
    matches = [0, 0]
    while done < kills:
        k = launches % 2
        launches += 1
        killed, _ = run_killed(make_args(ADAPTERS[k], out_name), cwd, rng.uniform(0, duration * 1.5))
        if killed:
            done += 1
        if not killed:
            existed = True
        # The output: one of the two references, complete.
        if not out.exists():
            if existed:
                raise Failure(f"{name}: {out} is missing after a kill (it existed before)")
        else:
            same = [same_tree(out, r) if is_dir else filecmp.cmp(out, r, shallow=False) for r in refs]
            if not any(same):
                raise Failure(f"{name}: {out} is neither the old nor the new complete output after a kill")
            matches[same.index(True)] += 1
            existed = True
        for n in os.listdir(cwd):
            if not n.startswith(".") and n != out_name:
                raise Failure(f"{name}: {cwd / n}: unexpected visible name next to the output (a temporary?)")
    hidden = [n for n in os.listdir(cwd) if n.startswith(".")]
    log(f"{name}: {done} kills ({launches} launches, uninterrupted run {duration * 1000:.0f} ms); output always "
        f"complete (old or new: {matches[0]}/{matches[1]} times), {len(hidden)} hidden temporaries left")
    return done


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=50, help="kills per operation (default 50)")
    ap.add_argument("--ops", default="train,save,merge,convert")
    ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    if not os.access(CLI, os.X_OK):
        print(f"kill test: {CLI} is missing (make build, or set LORAKIT_CLI)", file=sys.stderr)
        return 2
    total = 0
    failed = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lorakit-kill-") as tmp:
        shim = build_shim(Path(tmp))
        if shim:
            ENV["LD_PRELOAD"] = (shim + " " + ENV.get("LD_PRELOAD", "")).strip()
            ENV.setdefault("LORAKIT_KILL_SLOW_US", "2000")
        for op in a.ops.split(","):
            work = Path(tmp) / op
            work.mkdir()
            try:
                if op == "train":
                    total += op_train(work, a.kills, rng, print)
                elif op == "save":
                    total += op_replace("save", work, a.kills, rng, print,
                                        lambda ad, o: ["convert", "--model", TRAIN_MODEL, "--adapter", ad, "--to", "peft", "--out", o],
                                        "out", True)
                elif op == "merge":
                    total += op_replace("merge", work, a.kills, rng, print,
                                        lambda ad, o: ["merge", "--model", GGUF_MODEL, "--adapter", ad, "--out", o, "--outtype", "same"],
                                        "merged.gguf", False)
                elif op == "convert":
                    total += op_replace("convert", work, a.kills, rng, print,
                                        lambda ad, o: ["convert", "--model", TRAIN_MODEL, "--adapter", ad, "--to", "gguf", "--out", o],
                                        "adapter.gguf", False)
                else:
                    raise Failure(f"unknown operation {op}")
            except Failure as e:
                print(f"{op}: FAILED: {e}")
                failed.append(op)
    print(f"kill test: {total} kills, {len(failed)} corrupt or failed ({', '.join(failed) or 'none'}); "
          f"seed {seed}; {time.monotonic() - t0:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

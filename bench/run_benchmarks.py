#!/usr/bin/env python3
"""Run LoRAKit's benchmarks beside their peers and rewrite the tables in BENCHMARKS.md.

    python3 bench/run_benchmarks.py [--cli PATH] [--sections gemm] [--seconds 1.0] [--no-write]

Each section measures one thing and owns one block of BENCHMARKS.md between
`<!-- NAME:begin -->` and `<!-- NAME:end -->`; everything outside the blocks is kept. Sections:

  gemm   f32 C = A·B at training/prefill shapes, LoRAKit vs numpy's OpenBLAS at the same thread counts:
         `lorakit-cli bench gemm --blas <numpy's libopenblas> --json` loads OpenBLAS into its own process
         and alternates single calls of the two (per-pair ratios; rounds from LORAKIT_BENCH_ROUNDS,
         default 3); the quantized many-row products (q4_1, q8_0 Wᵀ) against our f32 GEMM; the quantized
         decode product (M = 1, q4_1 weight) as weight-read GB/s against the machine's memory read
         bandwidth (bench/membw.c). For the AVX2 path on an AVX-512 machine: build with
         LORAKIT_TARGET_CPU=haswell --scratch-path .build-haswell and pass --cli and --block-suffix avx2.

  generate  prefill/decode speed and peak RSS on the real model vs llama.cpp (bench/llamacpp_generate.py).
  adapters  decode/prefill speed with unmerged LoRA adapters attached relative to none, measured in one
         process with base and adapted decode steps interleaved (`lorakit-cli bench generate
         --compare-adapters`), at 1 and 2 threads, plus attach/detach/swap times.
  scaling   (only when named) prefill/decode tokens/s and peak RSS vs llama.cpp on the real model and on
            random LLaMA-shaped ≈ 0.5B / ≈ 1.5B files (q4_1, q8_0) written by scripts/make_scaled_models.py
            into ~/.cache/lorakit/scaled (threads from LORAKIT_BENCH_SCALING_THREADS, default 2).
  context   (only when named) prefill of 512 / 2048 tokens and decode at positions 0 / 1024 / 4096 vs
            llama.cpp on the real model, and the KV cache's bytes per token.
  batch     issue 13: a BatchContext decoding 8 sequences with 8 different r=8 q,v adapters vs one sequence
            with one adapter and 8 sequences without (`lorakit bench batch`), and batch vs single prefill.
  train-scaling  (only when named) the train table on the random ≈ 0.5B Q4_1 file of `scaling` (3 timed
            steps, 2 runs per side unless LORAKIT_BENCH_TRAIN_STEPS / _REPEATS say).
  train     LoRA training steps (4 × 128 tokens, r=8 q,v) vs PEFT + PyTorch (bench/peft_train.py):
            tokens/s and peak RSS. Threads from LORAKIT_BENCH_TRAIN_THREADS (default "1,2"), timed
            steps from LORAKIT_BENCH_TRAIN_STEPS (default 5), runs per side from
            LORAKIT_BENCH_TRAIN_REPEATS (default 3, alternating the two sides; medians reported);
            LORAKIT_BENCH_TRAIN_KEEP=f16 runs LoRAKit with `--keep-activations f16` (pass a
            --block-suffix so the f32 tables stay).

Method: every figure is "warm up once, then repeat until at least --seconds have passed, report the
mean time per call" (the CLI does the same internally). numpy runs in a subprocess per measurement, with
its BLAS limited to the thread count through threadpoolctl (installed with pip if missing; without it,
OPENBLAS_NUM_THREADS / OMP_NUM_THREADS), and with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed from
that subprocess's environment only (they slow current numpy on this machine).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
DEFAULT_CLI = ".build/release/lorakit-cli"

INTRO = """# Benchmarks

Figures measured on the machine named in each section by `bench/run_benchmarks.py` (`make bench`).
Every number is a mean over at least one second of repeated calls after a warm-up. Tables between
`<!-- name:begin -->` / `<!-- name:end -->` markers are rewritten by the script; edit text outside them.
"""

# --------------------------------------------------------------------------------------------------
# Machine information
# --------------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    m = re.search(r"^model name\s*:\s*(.+)$", text, flags=re.M)
    model = m.group(1).strip() if m else (platform.processor() or "unknown CPU")
    flags = re.search(r"^flags\s*:\s*(.+)$", text, flags=re.M)
    simd = []
    if flags:
        have = set(flags.group(1).split())
        simd = [f for f in ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile")
                if f in have]
    return f"{model}, {os.cpu_count()} logical CPUs" + (f" ({' '.join(simd)})" if simd else "")


def load_note() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return ""
    note = f"load average at start {one:.2f} (1 min) / {five:.2f} (5 min)"
    if one > 0.5 * (os.cpu_count() or 1):
        note += (" — other processes were running, so these figures (above all the 2-thread ones) are "
                 "lower bounds; rerun on an idle machine for a fair comparison")
    return note


# --------------------------------------------------------------------------------------------------
# numpy in a subprocess
# --------------------------------------------------------------------------------------------------

NUMPY_CHILD = r"""
import json, sys, time
import numpy as np
m, k, n, threads, seconds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
info = []
try:
    from threadpoolctl import threadpool_limits, threadpool_info
    limiter = threadpool_limits(limits=threads)
    info = threadpool_info()
    how = "threadpoolctl"
except ImportError:
    limiter = None
    how = "OPENBLAS_NUM_THREADS"
rng = np.random.default_rng(0)
a = rng.uniform(-1, 1, (m, k)).astype(np.float32)
b = rng.uniform(-1, 1, (k, n)).astype(np.float32)
c = a @ b  # warm-up
iters = 0
t0 = time.perf_counter()
while True:
    c = a @ b
    iters += 1
    t = time.perf_counter()
    if t - t0 >= seconds:
        break
per = (t - t0) / iters
print(json.dumps({"gflops": 2.0 * m * n * k / per / 1e9, "seconds_per_call": per, "iterations": iters,
                  "limited_by": how, "numpy": np.__version__,
                  "blas": [{key: d.get(key) for key in ("internal_api", "version", "architecture", "num_threads",
                                                        "threading_layer", "filepath")} for d in info]}))
"""


def ensure_threadpoolctl() -> bool:
    """True if threadpoolctl is importable (installing it with pip if needed)."""
    probe = [sys.executable, "-c", "import threadpoolctl"]
    if subprocess.run(probe, capture_output=True).returncode == 0:
        return True
    print("bench: threadpoolctl missing; installing it with pip ...", file=sys.stderr)
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "threadpoolctl"], capture_output=True,
                       text=True)
    if r.returncode != 0:
        print(f"bench: pip install threadpoolctl failed; falling back to OPENBLAS_NUM_THREADS\n{r.stderr[-500:]}",
              file=sys.stderr)
        return False
    return subprocess.run(probe, capture_output=True).returncode == 0


def numpy_env(threads: int) -> dict:
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    env.pop("OPENBLAS_L2_SIZE", None)
    # Also set the variables: they bound the pool even before threadpoolctl acts, and they are the
    # fallback when threadpoolctl is unavailable.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    return env


def run_numpy(m: int, k: int, n: int, threads: int, seconds: float) -> dict:
    r = subprocess.run([sys.executable, "-c", NUMPY_CHILD, str(m), str(k), str(n), str(threads), str(seconds)],
                       env=numpy_env(threads), capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"numpy benchmark failed: {r.stderr.strip()[-500:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------
# lorakit-cli
# --------------------------------------------------------------------------------------------------


def run_cli(cli: str, args: list[str], extra_env: dict | None = None) -> tuple[dict | None, str]:
    """(parsed JSON, "") on success, (None, reason) on failure."""
    env = dict(os.environ, SWIFT_BACKTRACE="enable=no", **(extra_env or {}))
    try:
        r = subprocess.run([cli, *args], capture_output=True, text=True, timeout=900, env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, str(e)
    if r.returncode != 0:
        msg = (r.stderr.strip().splitlines() or ["(no output)"])[0]
        return None, f"exit {r.returncode}: {msg}"
    for line in reversed(r.stdout.strip().splitlines()):
        try:
            return json.loads(line), ""
        except json.JSONDecodeError:
            continue
    return None, f"no JSON in output: {r.stdout[-200:]!r}"


# --------------------------------------------------------------------------------------------------
# Memory bandwidth (bench/membw.c, optional)
# --------------------------------------------------------------------------------------------------


def measure_membw(threads: int) -> tuple[float | None, str]:
    """Memory read bandwidth in GB/s from bench/membw.c, or (None, why not)."""
    src = ROOT / "bench" / "membw.c"
    if not src.exists():
        return None, "bench/membw.c not present: memory bandwidth not measured"
    cc = shutil.which("gcc") or shutil.which("cc")
    if not cc:
        return None, "no C compiler for bench/membw.c"
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "membw"
        arch = ["-mavx2"] if platform.machine() in ("x86_64", "AMD64") else []
        r = subprocess.run([cc, "-O3", *arch, "-pthread", "-o", str(exe), str(src)], capture_output=True, text=True)
        if r.returncode != 0:
            return None, f"bench/membw.c does not compile: {r.stderr.strip()[:200]}"
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MEMBW_THREADS=str(threads))
        r = subprocess.run([str(exe), str(threads)], capture_output=True, text=True, env=env, timeout=300)
        if r.returncode != 0:
            return None, f"bench/membw failed: {r.stderr.strip()[:200]}"
    out = r.stdout.strip()
    for line in reversed(out.splitlines()):  # JSON {"read_gbps": ...} / {"gbps": ...}, else "... N GB/s"
        try:
            obj = json.loads(line)
            for key in ("read_gbps", "gbps", "bandwidth_gbps"):
                if key in obj:
                    return float(obj[key]), ""
        except (json.JSONDecodeError, TypeError, ValueError):
            pass
    m = re.findall(r"([0-9]+(?:\.[0-9]+)?)\s*GB/s", out)
    if m:
        return float(m[-1]), ""
    return None, f"cannot read a GB/s figure from bench/membw output: {out[-200:]!r}"


# --------------------------------------------------------------------------------------------------
# gemm section
# --------------------------------------------------------------------------------------------------

GEMM_SHAPES = [(512, 576, 1536), (512, 1536, 576), (512, 576, 49152), (2048, 2048, 2048)]
GEMM_THREADS = [1, 2]
DECODE_ROWS = [(1, 576, 1536, "q4_1"), (1, 576, 49152, "q4_1")]


def seconds_args(seconds: float) -> list[str]:
    return [] if seconds == 1.0 else ["--seconds", str(seconds)]


def fmt(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def bench_rounds(default: int = 3) -> int:
    """Interleaved rounds per figure: LORAKIT_BENCH_ROUNDS (default 3)."""
    return max(1, int(os.environ.get("LORAKIT_BENCH_ROUNDS", str(default))))


# Quantized many-row products (prefill/training shapes with a quantized weight used as Wᵀ), measured
# against our own f32 GEMM on the same shape in the same round.
QUANT_GEMM_ROWS = [(512, 576, 1536, "q4_1"), (512, 576, 1536, "q8_0"), (512, 1536, 576, "q4_1"),
                   (512, 1536, 576, "q8_0"), (512, 576, 49152, "q8_0")]


def section_gemm(cli: str, seconds: float, command: str) -> str:
    have_tpc = ensure_threadpoolctl()
    rounds = bench_rounds()
    blas_seen: dict[str, str] = {}
    limited_by = set()
    kernel = {}
    # (m, k, n, t) -> lists of per-round figures; every round measures LoRAKit then numpy on each shape.
    ours: dict = {}
    peer: dict = {}
    quant: dict = {}
    pair_ratio: dict = {}
    notes = []
    # numpy's OpenBLAS, loaded into lorakit-cli (`bench gemm --blas`) so the two alternate call by call in
    # one process; numpy in its own process only when the library's path is unknown.
    blas_path = None
    try:
        probe = run_numpy(64, 64, 64, 1, 0.01)
        blas_seen.setdefault("numpy", probe["numpy"])
        for b in probe["blas"]:
            if b.get("internal_api") == "openblas" and b.get("filepath"):
                blas_path = b["filepath"]
                blas_seen.setdefault(
                    "blas", f"{b['internal_api']} {b.get('version') or ''} "
                            f"(kernel/arch: {b.get('architecture') or 'unknown'}, "
                            f"threading: {b.get('threading_layer') or 'unknown'})")
    except Exception as e:  # noqa: BLE001
        notes.append(f"numpy probe: {e}")
    blas_env = {"OPENBLAS_THREAD_TIMEOUT": "4"}  # its workers sleep at once instead of spinning into our turn
    for r in range(rounds):
        for (m, k, n) in GEMM_SHAPES:
            for t in GEMM_THREADS:
                key = (m, k, n, t)
                args = ["bench", "gemm", "--m", str(m), "--k", str(k), "--n", str(n), "--threads", str(t),
                        "--seconds", str(max(seconds, 2.0)), "--json"]
                if blas_path:
                    lk, why = run_cli(cli, [*args, "--blas", blas_path], extra_env=blas_env)
                    limited_by.add("openblas_set_num_threads, in lorakit-cli's process (`bench gemm --blas`)")
                else:
                    lk, why = run_cli(cli, args)
                if lk and lk.get("blas"):
                    kernel.setdefault("blas", lk["blas"])
                if lk:
                    kernel.setdefault("path", f"{lk.get('kernel_path', '?')} (GEMM tile {lk.get('gemm_tile', '?')})")
                elif why:
                    notes.append(f"LoRAKit {m}×{k}×{n} at {t} threads: {why}")
                ours.setdefault(key, []).append(lk.get("gflops") if lk else None)
                if blas_path:
                    peer.setdefault(key, []).append(lk.get("blas_gflops") if lk else None)
                    pair_ratio.setdefault(key, []).append(lk.get("ratio_median") if lk else None)
                else:
                    try:
                        npres = run_numpy(m, k, n, t, seconds)
                        peer.setdefault(key, []).append(npres["gflops"])
                        limited_by.add(npres["limited_by"])
                    except Exception as e:  # noqa: BLE001 - record and keep going
                        peer.setdefault(key, []).append(None)
                        notes.append(f"numpy {m}×{k}×{n} at {t} threads: {e}")
                    o, p_ = ours[key][-1], peer[key][-1]
                    pair_ratio.setdefault(key, []).append(o / p_ if o and p_ else None)
                print(f"gemm round {r + 1}/{rounds} {m}x{k}x{n} threads={t}: lorakit {fmt(ours[key][-1])} GFLOP/s, "
                      f"OpenBLAS {fmt(peer[key][-1])} GFLOP/s, ratio {fmt(pair_ratio[key][-1], 2)}", file=sys.stderr)
        for (m, k, n, dtype) in QUANT_GEMM_ROWS:
            for t in GEMM_THREADS:
                res, why = run_cli(cli, ["bench", "gemm", "--m", str(m), "--k", str(k), "--n", str(n), "--dtype",
                                         dtype, "--threads", str(t), *seconds_args(seconds), "--json"])
                f32, _ = run_cli(cli, ["bench", "gemm", "--m", str(m), "--k", str(k), "--n", str(n), "--threads",
                                       str(t), *seconds_args(seconds), "--json"])
                quant.setdefault((m, k, n, dtype, t), []).append(
                    (res.get("gflops") if res else None, f32.get("gflops") if f32 else None))
                print(f"gemm round {r + 1}/{rounds} {m}x{k}x{n} {dtype} threads={t}: "
                      f"{fmt(quant[(m, k, n, dtype, t)][-1][0])} vs f32 {fmt(quant[(m, k, n, dtype, t)][-1][1])} GFLOP/s",
                      file=sys.stderr)

    def ratios(a: list, b: list) -> list:
        return [x / y for x, y in zip(a, b) if x and y]

    def spread(v: list) -> str:
        v = [x for x in v if x is not None]
        if not v:
            return "n/a"
        return f"{_median(v):.2f} ({min(v):.2f}–{max(v):.2f})"

    rows = []
    for (m, k, n) in GEMM_SHAPES:
        for t in GEMM_THREADS:
            key = (m, k, n, t)
            rows.append(f"| {m}×{k}×{n} | {t} | {fmt(_median(ours[key]))} | {fmt(_median(peer[key]))} | "
                        f"{spread(pair_ratio[key])} |")
    qrows = []
    for (m, k, n, dtype) in QUANT_GEMM_ROWS:
        for t in GEMM_THREADS:
            v = quant[(m, k, n, dtype, t)]
            q, f = [x[0] for x in v], [x[1] for x in v]
            qrows.append(f"| {m}×{k}×{n} | {dtype} | {t} | {fmt(_median(q))} | {fmt(_median(f))} | "
                         f"{spread(ratios(q, f))} |")

    decode_rows = []
    bw_cache: dict[int, tuple[float | None, str]] = {}
    for (m, k, n, dtype) in DECODE_ROWS:
        for t in GEMM_THREADS:
            res, why = run_cli(cli, ["bench", "gemm", "--m", str(m), "--k", str(k), "--n", str(n), "--dtype", dtype,
                                     "--threads", str(t), *seconds_args(seconds), "--json"])
            if t not in bw_cache:
                bw_cache[t] = measure_membw(t)
                if bw_cache[t][1] and bw_cache[t][1] not in notes:
                    notes.append(bw_cache[t][1])
            bw, _ = bw_cache[t]
            if res is None:
                gbps_s = "n/a (quantizer not built)"
                pct = "n/a"
                print(f"decode {m}x{k}x{n} {dtype} threads={t}: failed ({why})", file=sys.stderr)
                if why and f"`lorakit-cli bench gemm --dtype {dtype} --m 1`: {why}" not in notes:
                    notes.append(f"`lorakit-cli bench gemm --dtype {dtype} --m 1`: {why}")
            else:
                g = res.get("weight_gbps")
                gbps_s = fmt(g, 2)
                pct = f"{100 * g / bw:.0f}%" if (g and bw) else "n/a"
                kernel.setdefault("qdot", res.get("qdot_path", "?"))
            decode_rows.append(f"| 1×{k}×{n} {dtype} (decode) | {t} | {gbps_s} | {fmt(bw, 1)} | {pct} |")

    date = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    blas = blas_seen.get("blas", "BLAS not reported (threadpoolctl unavailable)")
    how = ", ".join(sorted(limited_by)) or ("threadpoolctl" if have_tpc else "OPENBLAS_NUM_THREADS")
    lines = [
        "### GEMM (f32): LoRAKit vs numpy's OpenBLAS",
        "",
        f"- Date: {date}",
        f"- CPU: {cpu_model()}" + (f"; {load}" if (load := load_note()) else ""),
        f"- LoRAKit kernel path: {kernel.get('path', '?')}; quantized mat-vec path: {kernel.get('qdot', '?')}",
        f"- numpy {blas_seen.get('numpy', '?')} with {blas}; threads limited with {how}; "
        "OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset for numpy"
        + (f"; as loaded into lorakit-cli (this environment's OPENBLAS_* variables apply): {kernel['blas']}"
           if kernel.get("blas") else ""),
        f"- Command: `{command}`",
        f"- Method: {rounds} rounds; in each round every f32 row is one `lorakit-cli bench gemm --blas <numpy's "
        "OpenBLAS>` run: LoRAKit's GEMM and OpenBLAS's cblas_sgemm alternate call by call in that one process "
        f"for at least {max(seconds, 2.0):g} s (the first of each pair alternating), and the run reports each "
        "side's median call and the median of the per-pair ratios. The table gives the median GFLOP/s over the "
        "rounds and the median (lowest–highest) of the rounds' ratios; the quantized rows run our f32 and "
        "quantized products one after the other in each round. Load average at the end: "
        + " / ".join(f"{x:.2f}" for x in os.getloadavg()[:2]) + " (1 / 5 min)",
        "",
        "C[M×N] = A[M×K] · B[K×N], all f32. GFLOP/s = 2·M·N·K / time per call. Ratio = LoRAKit / OpenBLAS.",
        "",
        "| M×K×N | threads | LoRAKit GFLOP/s | OpenBLAS GFLOP/s | ratio |",
        "|---|---:|---:|---:|---:|",
        *rows,
        "",
        "Quantized many-row product (A f32 [M, K] · Wᵀ with W [N, K] quantized, dequantized while packing) "
        "against LoRAKit's f32 GEMM on the same shape, measured in the same rounds:",
        "",
        "| M×K×N | weight | threads | quantized GFLOP/s | f32 GFLOP/s | ratio |",
        "|---|---|---:|---:|---:|---:|",
        *qrows,
        "",
        "Quantized decode (one token: x [1, K] · Wᵀ with W [N, K] in q4_1): the rate at which weight bytes are "
        "read, against the machine's memory read bandwidth.",
        "",
        "| product | threads | weights GB/s | memory read GB/s | % of bandwidth |",
        "|---|---:|---:|---:|---:|",
        *decode_rows,
    ]
    if notes:
        lines += ["", *[f"Note: {x}" for x in notes]]
    return "\n".join(lines)



def model_path() -> str | None:
    """The real model (fetched and cached by scripts/fetch_model.sh), or None."""
    env = os.environ.get("LORAKIT_MODEL")
    if env and Path(env).exists():
        return env
    r = subprocess.run(["bash", str(ROOT / "scripts" / "fetch_model.sh")], capture_output=True, text=True)
    path = r.stdout.strip()
    return path if r.returncode == 0 and path and Path(path).exists() else None


def ensure_llama_cpp() -> tuple[bool, str]:
    try:
        import llama_cpp  # noqa: F401
        return True, llama_cpp.__version__
    except ImportError:
        pass
    print("bench: installing llama-cpp-python (builds llama.cpp from source; several minutes)", file=sys.stderr)
    # Built for this CPU (GGML_NATIVE) but without AMX: AMX tiles need the OS to grant the feature
    # (arch_prctl), which virtual machines here do not, and ggml's AMX path then dies with SIGILL.
    no_amx = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    env = dict(os.environ, CMAKE_ARGS=f"-DGGML_NATIVE=ON -DCMAKE_C_FLAGS='{no_amx}' -DCMAKE_CXX_FLAGS='{no_amx}'")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-cache-dir", "llama-cpp-python"],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        return False, "pip install llama-cpp-python failed: " + r.stderr.strip().splitlines()[-1:][0] if r.stderr.strip() else "?"
    import importlib
    llama_cpp = importlib.import_module("llama_cpp")
    return True, llama_cpp.__version__


GENERATE_ROUNDS = 3
# LoRAKit variants measured beside llama.cpp: name, environment, what it is.
GENERATE_VARIANTS = [
    ("default", {}, "16-bit activations (the default), fastest kernel path of this CPU"),
    ("int8", {"LORAKIT_ACTIVATIONS": "int8"}, "int8 activations (llama.cpp's q8_1 precision)"),
    ("avx2", {"LORAKIT_QDOT": "avx2"}, "16-bit activations, AVX2 kernel path forced (what an AVX2-only CPU runs)"),
]


def section_generate(cli: str, seconds: float, command: str) -> str:
    model = model_path()
    lines = ["### Generation: LoRAKit vs llama.cpp on SmolLM2-135M-Instruct Q4_1", ""]
    lines += [f"- Date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M')} UTC",
              f"- CPU: {cpu_model()}; {load_note()}"]
    if not model:
        lines += ["", "n/a: the model could not be fetched (scripts/fetch_model.sh)"]
        return "\n".join(lines)
    ok, ver = ensure_llama_cpp()
    lines += [f"- Model: `{Path(model).name}`; peer: llama.cpp through llama-cpp-python {ver if ok else '(missing)'} "
              "(`bench/llamacpp_generate.py`), built from source by pip for this CPU",
              f"- Command: `{command}`",
              "",
              "Prefill: 128 prompt tokens evaluated as one batch; decode: 64 tokens generated one at a time "
              "(greedy). Each process reports the mean tokens/s of 3 runs after model load; the processes run "
              f"{GENERATE_ROUNDS} times, interleaved (LoRAKit, its variants, llama.cpp, per round), and the "
              "table gives the median of the rounds; peak RSS is the whole process's (each side runs in its "
              "own process).",
              "",
              "| threads | LoRAKit prefill tok/s | llama.cpp prefill tok/s | ratio | LoRAKit decode tok/s | "
              "llama.cpp decode tok/s | ratio | LoRAKit peak RSS MiB | llama.cpp peak RSS MiB |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    notes = []
    extra_rows = []

    def g(d, k):
        return d.get(k) if d else None

    def ratio(a, b):
        return fmt(a / b, 2) if a and b else "n/a"

    def median(xs):
        xs = sorted(x for x in xs if x is not None)
        if not xs:
            return None
        n = len(xs)
        return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])

    mib = lambda b: fmt(b / 1048576, 0) if b else "n/a"
    for t in (1, 2):
        runs = {name: [] for name, _, _ in GENERATE_VARIANTS}
        peers = []
        for _ in range(GENERATE_ROUNDS):
            for name, env, _ in GENERATE_VARIANTS:
                ours, err = run_cli(cli, ["bench", "generate", "--model", model, "--prompt-tokens", "128",
                                          "--gen-tokens", "64", "--threads", str(t), "--json"], extra_env=env)
                if ours is None:
                    notes.append(f"LoRAKit ({name}) at {t} threads: {err}")
                runs[name].append(ours)
            if ok:
                r = subprocess.run([sys.executable, str(ROOT / "bench" / "llamacpp_generate.py"), "--model", model,
                                    "--prompt-tokens", "128", "--gen-tokens", "64", "--threads", str(t)],
                                   capture_output=True, text=True)
                if r.returncode == 0:
                    peers.append(json.loads(r.stdout.strip().splitlines()[-1]))
                else:
                    notes.append(f"llama.cpp at {t} threads: exit {r.returncode}: {r.stderr.strip()[-300:]}")

        def med(items, key):
            return median([g(d, key) for d in items])

        ours = runs["default"]
        op, od = med(ours, "prefill_tokens_per_s"), med(ours, "decode_tokens_per_s")
        pp, pd = med(peers, "prefill_tokens_per_s"), med(peers, "decode_tokens_per_s")
        lines.append(f"| {t} | {fmt(op)} | {fmt(pp)} | {ratio(op, pp)} | {fmt(od)} | {fmt(pd)} | {ratio(od, pd)} | "
                     f"{mib(med(ours, 'peak_rss_bytes'))} | {mib(med(peers, 'peak_rss_bytes'))} |")
        for name, env, what in GENERATE_VARIANTS[1:]:
            vd = med(runs[name], "decode_tokens_per_s")
            how = " ".join(f"{k}={v}" for k, v in env.items())
            extra_rows.append(f"| {t} | {what} (`{how}`) | {fmt(vd)} | {fmt(pd)} | {ratio(vd, pd)} |")
        print(f"generate threads={t}: LoRAKit decode {fmt(od)} tok/s (rounds "
              f"{[fmt(g(d, 'decode_tokens_per_s')) for d in ours]}), llama.cpp {fmt(pd)} "
              f"({[fmt(g(d, 'decode_tokens_per_s')) for d in peers]})", file=sys.stderr)
    lines += ["", "Decode with other LoRAKit settings, from the same rounds:", "",
              "| threads | LoRAKit setting | LoRAKit decode tok/s | llama.cpp decode tok/s | ratio |",
              "|---:|---|---:|---:|---:|", *extra_rows]
    for n in notes:
        lines += ["", "Note: " + n]
    return "\n".join(lines)


_KERNELS: set[str] = set()


def _run_ours(cli: str, model: str, prompt: int, gen: int, threads: int, repeats: int,
              extra: tuple[str, ...] = ()) -> tuple[dict | None, list[str]]:
    """One LoRAKit `bench generate` run of prompt + gen tokens in its own process (`extra`: more options),
    with the figures of its last repeat as prefill_last / decode_last."""
    ours, err = run_cli(cli, ["bench", "generate", "--model", model, "--prompt-tokens", str(prompt), "--gen-tokens",
                              str(gen), "--threads", str(threads), "--repeats", str(repeats), "--json", *extra])
    if ours is None:
        how = f" ({' '.join(extra)})" if extra else ""
        return None, [f"LoRAKit{how} {Path(model).name} p{prompt}/g{gen} at {threads} threads: {err}"]
    _KERNELS.add(f"{ours.get('kernel_path', '?')} (GEMM tile {ours.get('gemm_tile', '?')}), quantized mat-vec "
                 f"{ours.get('qdot_path', '?')}, {ours.get('activations', '?')} activations")
    _last_runs(ours)
    return ours, []


def _last_runs(d: dict) -> None:
    d["prefill_last"] = d["prefill_runs"][-1] if d.get("prefill_runs") else None
    d["decode_last"] = d["decode_runs"][-1] if d.get("decode_runs") else None


def _run_pair(cli: str, model: str, prompt: int, gen: int, threads: int,
              repeats: int) -> tuple[dict | None, dict | None, list[str]]:
    """One LoRAKit run and one llama.cpp run of prompt + gen tokens (each in its own process), the figures
    of their last repeat (the earlier ones warm the page cache and the allocator)."""
    ours, notes = _run_ours(cli, model, prompt, gen, threads, repeats)
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "llamacpp_generate.py"), "--model", model,
                        "--prompt-tokens", str(prompt), "--gen-tokens", str(gen), "--threads", str(threads),
                        "--repeats", str(repeats)], capture_output=True, text=True)
    peer = None
    if r.returncode == 0:
        peer = json.loads(r.stdout.strip().splitlines()[-1])
        _last_runs(peer)
    else:
        notes.append(f"llama.cpp {Path(model).name} p{prompt}/g{gen} at {threads} threads: exit {r.returncode}: "
                     f"{r.stderr.strip()[-300:]}")
    return ours, peer, notes


def scaling_threads() -> list[int]:
    return [int(t) for t in os.environ.get("LORAKIT_BENCH_SCALING_THREADS", "2").split(",") if t.strip()]


def scaled_models() -> list[tuple[str, str]]:
    """(label, path): the real model, then the random ≈ 0.5B / ≈ 1.5B files of scripts/make_scaled_models.py."""
    out = []
    real = model_path()
    if real:
        out.append(("SmolLM2-135M Q4_1 (real)", real))
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_scaled_models.py")], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"bench: make_scaled_models.py failed: {r.stderr.strip()[-300:]}", file=sys.stderr)
        return out
    for line in r.stdout.split():
        name = Path(line).name  # llama-random-0.5b.q4_1.gguf
        m = re.match(r"llama-random-([0-9.]+b)\.(q[0-9_]+)\.gguf", name)
        out.append((f"random {m.group(1).upper()} {m.group(2).upper()}" if m else name, line))
    return out


def section_scaling(cli: str, seconds: float, command: str) -> str:
    """Prefill/decode tokens/s and peak RSS against llama.cpp as the model grows (same GGUF files on both sides)."""
    rounds = bench_rounds(2)
    lines = ["### Model size: LoRAKit vs llama.cpp on the same GGUF files", ""]
    lines += [f"- Date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M')} UTC",
              f"- CPU: {cpu_model()}; {load_note()}"]
    models = scaled_models()
    ok, ver = ensure_llama_cpp()
    if not models or not ok:
        return "\n".join(lines + ["", "n/a: models or llama-cpp-python missing"])
    lines += [f"- Files: the real SmolLM2-135M-Instruct Q4_1 and LLaMA-shaped files with random weights written by "
              "`scripts/make_scaled_models.py` (≈ 0.5B: dim 1280, ffn 3456, 28 layers, 20 heads / 4 KV heads; "
              "≈ 1.5B: dim 2048, ffn 6144, 28 layers, 32 / 8 heads; SmolLM2's tokenizer, tied q8_0 embedding); "
              f"peer llama.cpp through llama-cpp-python {ver}",
              f"- Command: `{command}`",
              f"- Method: prefill 128 tokens, decode 32; each process runs 2 repeats and reports the last; per row "
              f"{rounds} rounds, LoRAKit then llama.cpp, each in its own process; medians of the rounds. "
              "Peak RSS: the whole process (VmHWM), largest over the rounds.",
              "",
              "| model | threads | file MiB | LoRAKit prefill tok/s | llama.cpp prefill tok/s | ratio | "
              "LoRAKit decode tok/s | llama.cpp decode tok/s | ratio | LoRAKit decode weight GB/s (% of memory read "
              "bandwidth) | LoRAKit peak RSS MiB | llama.cpp peak RSS MiB |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    notes = []
    mib = lambda b: fmt(b / 1048576, 0) if b else "n/a"
    bw = {t: measure_membw(t)[0] for t in scaling_threads()}
    for label, path in models:
        for t in scaling_threads():
            ours, peers = [], []
            for r in range(rounds):
                o, p, n = _run_pair(cli, path, 128, 32, t, 2)
                ours.append(o); peers.append(p); notes += n
                print(f"scaling {label} threads={t} round {r + 1}: LoRAKit {fmt(o and o['prefill_last'])} / "
                      f"{fmt(o and o['decode_last'])}, llama.cpp {fmt(p and p['prefill_last'])} / "
                      f"{fmt(p and p['decode_last'])} tok/s", file=sys.stderr)
            med = lambda xs, k: _median([d[k] for d in xs if d and d.get(k)])
            big = lambda xs, k: max([d[k] for d in xs if d and d.get(k)] or [0]) or None
            op, pp = med(ours, "prefill_last"), med(peers, "prefill_last")
            od, pd = med(ours, "decode_last"), med(peers, "decode_last")
            ratio = lambda a, b: fmt(a / b, 2) if a and b else "n/a"
            size = Path(path).stat().st_size  # ≈ the bytes one decode step reads (every weight once; tied head)
            gbs = od * size / 1e9 if od else None
            pct = f" ({100 * gbs / bw[t]:.0f}% of {bw[t]:.1f})" if gbs and bw.get(t) else ""
            lines.append(f"| {label} | {t} | {size / 1048576:.0f} | {fmt(op)} | {fmt(pp)} | "
                         f"{ratio(op, pp)} | {fmt(od)} | {fmt(pd)} | {ratio(od, pd)} | {fmt(gbs, 1)}{pct} | "
                         f"{mib(big(ours, 'peak_rss_bytes'))} | {mib(big(peers, 'peak_rss_bytes'))} |")
    lines += ["", f"- LoRAKit kernels: {'; '.join(sorted(_KERNELS)) or '?'}",
              f"- Load average at the end: {' / '.join(f'{x:.2f}' for x in os.getloadavg()[:2])} (1 / 5 min)"]
    for n in notes:
        lines += ["", "Note: " + n]
    return "\n".join(lines)


# (prompt tokens, generated tokens): prefill of 512 and 2048 tokens; decode near positions 0, 1024, 4096.
CONTEXT_RUNS = [(512, 0), (2048, 0), (1, 32), (1024, 32), (4096, 32)]


def section_context(cli: str, seconds: float, command: str) -> str:
    """Prefill and decode speed as the context grows, on the real model, against llama.cpp."""
    rounds = bench_rounds(2)
    model = model_path()
    lines = ["### Context length: LoRAKit vs llama.cpp on SmolLM2-135M-Instruct Q4_1", ""]
    lines += [f"- Date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M')} UTC",
              f"- CPU: {cpu_model()}; {load_note()}"]
    ok, ver = ensure_llama_cpp()
    if not model or not ok:
        return "\n".join(lines + ["", "n/a: model or llama-cpp-python missing"])
    lines += [f"- Peer: llama.cpp through llama-cpp-python {ver} (its default f16 KV cache); command: `{command}`",
              f"- Method: one process per run and side, the context sized to prompt + generated + 1; prefill = "
              "the prompt evaluated in one call (both sides cut it into batches of 512); decode at position P = "
              "32 tokens generated one at a time after a P-token prompt. Each process runs the work once; "
              f"{rounds} rounds, LoRAKit then llama.cpp; medians of the rounds. Decode rows also give LoRAKit "
              "with an f16 KV cache (`--kv-type f16`, llama.cpp's default), run in the same rounds.",
              "",
              "| threads | measure | LoRAKit tok/s | llama.cpp tok/s | ratio | LoRAKit f16 KV tok/s | ratio |",
              "|---:|---|---:|---:|---:|---:|---:|"]
    notes = []
    kv = None
    for t in scaling_threads():
        for prompt, gen in CONTEXT_RUNS:
            ours, peers, halves = [], [], []
            for r in range(rounds):
                o, p, n = _run_pair(cli, model, prompt, gen, t, 1)
                ours.append(o); peers.append(p); notes += n
                if gen:
                    h, n = _run_ours(cli, model, prompt, gen, t, 1, ("--kv-type", "f16"))
                    halves.append(h); notes += n
                if o and kv is None:
                    kv = o.get("kv_cache_bytes_per_token")
            key = "decode_last" if gen else "prefill_last"
            med = lambda xs: _median([d[key] for d in xs if d and d.get(key)])
            a, b = med(ours), med(peers)
            what = f"prefill {prompt} tokens" if not gen else f"decode at position {0 if prompt == 1 else prompt}"
            c = med(halves) if gen else None
            lines.append(f"| {t} | {what} | {fmt(a)} | {fmt(b)} | {fmt(a / b, 2) if a and b else 'n/a'} | "
                         f"{fmt(c) if c else '—'} | {fmt(c / b, 2) if c and b else '—'} |")
            print(f"context threads={t} {what}: LoRAKit {fmt(a)} (f16 KV {fmt(c) if c else '-'}), llama.cpp {fmt(b)} tok/s",
                  file=sys.stderr)
    if kv:
        lines += ["", f"KV cache per token: LoRAKit {kv / 1024:.1f} KiB (f32 keys and values, 30 layers × 192 × 2; "
                      f"{kv / 2048:.1f} KiB with `--kv-type f16`), llama.cpp {kv / 2048:.1f} KiB (f16); at 4096 "
                      f"positions {kv * 4096 / 1048576:.0f} MiB (f32) or {kv * 2048 / 1048576:.0f} MiB (f16)."]
    lines += ["", f"- LoRAKit kernels: {'; '.join(sorted(_KERNELS)) or '?'}"]
    lines += ["", f"- Load average at the end: {' / '.join(f'{x:.2f}' for x in os.getloadavg()[:2])} (1 / 5 min)"]
    for n in notes:
        lines += ["", "Note: " + n]
    return "\n".join(lines)


ADAPTER_CONFIGS = ((1, "q,v"), (4, "q,v"), (1, "all-linear"))
ADAPTER_THREADS = (1, 2)
ADAPTER_ROUNDS = 8


def section_adapters(cli: str, seconds: float, command: str) -> str:
    """Decode/prefill speed with unmerged LoRA adapters attached relative to none, measured interleaved in
    one process (`lorakit bench generate --compare-adapters`: every decode step evaluated at the same
    position with and without the adapters, attach/detach between), plus attach/detach/swap times."""
    model = model_path()
    lines = ["### LoRA adapters: decode cost of unmerged adapters, and hot-swap time", ""]
    lines += [f"- Date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M')} UTC",
              f"- CPU: {cpu_model()}; {load_note()}"]
    if not model:
        return "\n".join(lines + ["", "n/a: the model could not be fetched"])
    lines += [f"- Model: `{Path(model).name}`, 128 prompt + 64 generated tokens, random r = 8 adapters, "
              f"{ADAPTER_ROUNDS} rounds per row (`lorakit bench generate --lora-adapters N --lora-rank 8 "
              f"--lora-targets T --compare-adapters --rounds {ADAPTER_ROUNDS}`)",
              "- Method: base and adapted are measured in one process on one context, interleaved: each round "
              "evaluates the prompt both ways, then every decode step's token at the same position both ways "
              "(cache truncated in between, order alternating, adapters detached/attached between the timed "
              "calls). A round's ratio is base time / adapted time (= adapted/base tokens/s); the table gives "
              "the median over rounds and, in brackets, the lowest and highest round. Other processes' load "
              "hits both halves of a pair alike, so the ratios are far steadier than the tokens/s.",
              "- Attach / detach: per adapter, median over all calls of the run (N adapters attached or "
              "detached one after another); swap: detach one adapter and attach another in its place "
              "(the other N − 1 stay attached), median.",
              f"- Command: `{command}`", "",
              "| threads | adapters | decode adapted/base | decode tok/s base → adapted | prefill adapted/base | "
              "attach ms | detach ms | swap ms |",
              "|---:|---|---|---:|---|---:|---:|---:|"]
    notes = []
    for t in ADAPTER_THREADS:
        for n, targets in ADAPTER_CONFIGS:
            label = f"{n} × r=8 {targets}"
            out, err = run_cli(cli, ["bench", "generate", "--model", model, "--threads", str(t), "--json",
                                     "--lora-adapters", str(n), "--lora-rank", "8", "--lora-targets", targets,
                                     "--compare-adapters", "--rounds", str(ADAPTER_ROUNDS)])
            if out is None:
                lines.append(f"| {t} | {label} | n/a | | | | | |")
                notes.append(f"{label} at {t} threads: {err}")
                continue

            def spread(d):
                return f"{d['median']:.3f} ({d['min']:.3f}–{d['max']:.3f})" if d else "n/a"

            ms = lambda k: fmt(out[k] * 1000, 3) if out.get(k) is not None else "–"
            lines.append(f"| {t} | {label} | {spread(out.get('decode_ratio'))} | "
                         f"{fmt(out.get('base_decode_tokens_per_s'))} → {fmt(out.get('adapted_decode_tokens_per_s'))} | "
                         f"{spread(out.get('prefill_ratio'))} | {ms('attach_seconds_median')} | "
                         f"{ms('detach_seconds_median')} | {ms('swap_seconds_median')} |")
    for n in notes:
        lines += ["", "Note: " + n]
    return "\n".join(lines)


TRAIN_ARGS = ["--rank", "8", "--alpha", "16", "--targets", "q,v", "--batch", "4", "--seq", "128"]


def train_threads() -> list[int]:
    """Thread counts of the train section: LORAKIT_BENCH_TRAIN_THREADS (e.g. "2" or "1,2"), default 1 and 2."""
    env = os.environ.get("LORAKIT_BENCH_TRAIN_THREADS", "1,2")
    return [int(t) for t in env.split(",") if t.strip()]


def _median(xs: list[float]) -> float | None:
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def _merge_runs(runs: list[dict]) -> dict | None:
    """One figure set from repeated runs of one side: medians of tokens/s and of all step times, the
    largest peak RSS, the first run's first loss, and the per-run tokens/s."""
    runs = [r for r in runs if r]
    if not runs:
        return None
    out = dict(runs[0])
    out["tokens_per_s"] = _median([r["tokens_per_s"] for r in runs])
    out["runs_tokens_per_s"] = [r["tokens_per_s"] for r in runs]
    out["step_ms_median"] = _median([x for r in runs for x in r["step_ms"]])
    for key in ("peak_rss_bytes", "peak_rss_training_bytes"):
        vals = [r.get(key) for r in runs if r.get(key)]
        out[key] = max(vals) if vals else None
    return out


def section_train(cli: str, seconds: float, command: str) -> str:
    return _train_table(cli, command, model_path(), "SmolLM2-135M-Instruct Q4_1",
                        os.environ.get("LORAKIT_BENCH_TRAIN_STEPS", "5"),
                        int(os.environ.get("LORAKIT_BENCH_TRAIN_REPEATS", "3")), "≈ 92 MiB")


def section_train_scaling(cli: str, seconds: float, command: str) -> str:
    """Issue 16: the train table on the random ≈ 0.5B Q4_1 file of the scaling section (same shape of
    batch and adapter; 3 timed steps and 2 runs per side unless LORAKIT_BENCH_TRAIN_STEPS/REPEATS say)."""
    models = dict(scaled_models())
    path = next((p for label, p in models.items() if "0.5B" in label and "Q4_1" in label), None)
    return _train_table(cli, command, path, "a random ≈ 0.5B LLaMA-shaped Q4_1 file",
                        os.environ.get("LORAKIT_BENCH_TRAIN_STEPS", "3"),
                        int(os.environ.get("LORAKIT_BENCH_TRAIN_REPEATS", "2")),
                        f"≈ {Path(path).stat().st_size / 1048576:.0f} MiB" if path else "")


def _train_table(cli: str, command: str, model: str | None, title: str, steps: str, repeats: int,
                 weights: str) -> str:
    lines = [f"### LoRA training: LoRAKit vs PEFT on {title}", ""]
    lines += [f"- Date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M')} UTC",
              f"- CPU: {cpu_model()}; {load_note()}"]
    if not model:
        return "\n".join(lines + ["", "n/a: the model could not be fetched (scripts/fetch_model.sh, "
                                        "scripts/make_scaled_models.py)"])
    shape = " ".join(TRAIN_ARGS) + f" --steps {steps} --warmup-steps 1"
    keep = os.environ.get("LORAKIT_BENCH_TRAIN_KEEP", "f32")
    ours_extra = [] if keep == "f32" else ["--keep-activations", keep]
    if ours_extra:
        lines[0] += f" (LoRAKit keeping activations in {keep})"
    lines += [f"- Model: `{Path(model).name}`. LoRAKit trains on the quantized weights (dequantized inside its "
              "GEMM panels); the peer is PEFT + PyTorch on the same GGUF loaded by transformers and dequantized "
              "to f32 (`bench/peft_train.py`)",
              f"- Command: `{command}`; each side alone: `lorakit-cli bench train --model M {shape} --threads T "
              f"{' '.join(ours_extra) + ' ' if ours_extra else ''}--json` and `python3 bench/peft_train.py --model M {shape} --threads T`",
              "",
              f"One step = zero gradients + forward + backward + AdamW update on a batch of 4 sequences × 128 "
              f"random tokens (the same tokens on both sides), LoRA r=8, alpha=16 on q,v of every layer. "
              f"tokens/s = 4·128·{steps} / time of {steps} steps after 1 warm-up step; each side runs {repeats} "
              "times per thread count, alternating with the other, and the table gives the median run (all runs "
              "in brackets) and the median step over all runs. Peak RSS is the whole process's (getrusage "
              "ru_maxrss; each side in its own process, model load included; the largest over the runs); the "
              "steps-only peak is VmHWM reset after the load (/proc/self/clear_refs), so it is the peak while "
              "training, weights included. Loss = the first step's mean NLL (the base model's, B = 0) on both "
              "sides, a cross-check that the two compute the same thing.",
              "",
              "| threads | LoRAKit tok/s | PEFT tok/s | ratio | LoRAKit step ms (median) | PEFT step ms (median) | "
              "LoRAKit peak RSS MiB | PEFT peak RSS MiB | RSS ratio | steps-only peak RSS MiB, LoRAKit / PEFT | "
              "first loss LoRAKit / PEFT |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    notes = []
    peer_versions = None
    activation = None
    for t in train_threads():
        args = [*TRAIN_ARGS, "--steps", steps, "--warmup-steps", "1", "--threads", str(t)]
        our_runs, peer_runs = [], []
        for _ in range(repeats):
            ours, err = run_cli(cli, ["bench", "train", "--model", model, *args, *ours_extra, "--json"])
            if ours is None:
                notes.append(f"LoRAKit at {t} threads: {err}")
            our_runs.append(ours)
            r = subprocess.run([sys.executable, str(ROOT / "bench" / "peft_train.py"), "--model", model, *args],
                               capture_output=True, text=True)
            if r.returncode == 0:
                peer_runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
            else:
                notes.append(f"PEFT at {t} threads: exit {r.returncode}: {r.stderr.strip()[-300:]}")
            print(f"train threads={t}: lorakit {fmt(ours and ours['tokens_per_s'])} tok/s, "
                  f"peft {fmt(peer_runs[-1]['tokens_per_s'] if r.returncode == 0 else None)} tok/s", file=sys.stderr)
        ours, peer = _merge_runs(our_runs), _merge_runs(peer_runs)

        def g(d, k):
            return d.get(k) if d else None

        def ratio(a, b):
            return fmt(a / b, 2) if a and b else "n/a"

        def tps(d):
            if not d:
                return "n/a"
            return f"{fmt(d['tokens_per_s'])} ({', '.join(fmt(x) for x in d['runs_tokens_per_s'])})"

        mib = lambda b: fmt(b / 1048576, 0) if b else "n/a"
        loss = lambda d: fmt(g(d, "loss_first"), 4)
        lines.append(f"| {t} | {tps(ours)} | {tps(peer)} | "
                     f"{ratio(g(ours, 'tokens_per_s'), g(peer, 'tokens_per_s'))} | "
                     f"{fmt(g(ours, 'step_ms_median'), 0)} | {fmt(g(peer, 'step_ms_median'), 0)} | "
                     f"{mib(g(ours, 'peak_rss_bytes'))} | {mib(g(peer, 'peak_rss_bytes'))} | "
                     f"{ratio(g(ours, 'peak_rss_bytes'), g(peer, 'peak_rss_bytes'))} | "
                     f"{mib(g(ours, 'peak_rss_training_bytes'))} / {mib(g(peer, 'peak_rss_training_bytes'))} | "
                     f"{loss(ours)} / {loss(peer)} |")
        if peer and not peer_versions:
            peer_versions = f"- Peer versions: torch {peer['torch']}, transformers {peer['transformers']}, peft {peer['peft']}"
        if ours and activation is None:
            activation = (ours.get("activation_bytes_estimate"), ours.get("loss_chunk_rows"))
    if peer_versions:
        lines.insert(4, peer_versions)
    if activation and activation[0]:
        notes.append(f"LoRAKit's activation buffers for 512 rows: ≈ {activation[0] / 1048576:.0f} MiB "
                     f"(`LoRATrainer.activationBytes`, loss chunks of {activation[1]} rows); the model's weights "
                     f"stay quantized ({weights}).")
    lines.append("")
    lines.append(f"- Load average at the end: {' / '.join(f'{x:.2f}' for x in os.getloadavg()[:2])} (1 / 5 min)")
    for n in notes:
        lines += ["", "Note: " + n]
    return "\n".join(lines)


BATCH_THREADS = [1, 2]
BATCH_ARGS = ["--sequences", "8", "--rank", "8", "--targets", "q,v", "--prompt", "64", "--decode", "32", "--rounds", "7"]


def section_batch(cli: str, seconds: float, command: str) -> str:
    """Issue 13: a BatchContext decoding 8 sequences, each with its own r=8 q,v adapter, against one
    sequence with one adapter (LlamaContext) and 8 sequences without adapters; batch prefill against a
    single-sequence prefill. One process per thread count, cases interleaved per round, medians
    (`lorakit bench batch`)."""
    model = model_path()
    lines = ["### Batch contexts: many sequences, a different adapter each (issue 13)", ""]
    lines += [f"- Date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M')} UTC",
              f"- CPU: {cpu_model()}; {load_note()}"]
    if not model:
        return "\n".join(lines + ["", "n/a: the model could not be fetched"])
    lines += [f"- Model: `{Path(model).name}`; `lorakit bench batch {' '.join(BATCH_ARGS)} --threads T`",
              "- Cases, interleaved in every round (rotating order), medians over rounds: (a) 1 sequence with 1 "
              "random r=8 q,v adapter on a LlamaContext (today's path); (b) 8 sequences, no adapter, one "
              "BatchContext step per token; (c) 8 sequences, each its own r=8 q,v adapter. Decode: 32 greedy "
              "steps after a 64-token prompt, aggregate tokens/s = sequences · steps / seconds. Prefill: one "
              "64-token prompt on a LlamaContext vs 8 × 64 tokens in one BatchContext step.",
              f"- Command: `{command}`", "",
              "| threads | (a) 1 seq + adapter tok/s | (b) 8 seq, none tok/s | (c) 8 seq, own adapters tok/s | "
              "(c)/(a) | (c)/(b) | prefill single tok/s | prefill batch tok/s | batch/single |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for t in BATCH_THREADS:
        out, err = run_cli(cli, ["bench", "batch", "--model", model, "--threads", str(t), "--json"] + BATCH_ARGS)
        if out is None:
            lines.append(f"| {t} | n/a | | | | | | | |")
            notes.append(f"{t} threads: {err}")
            continue
        lines.append(f"| {t} | {fmt(out['decode_single_adapter_tokens_per_s'])} | "
                     f"{fmt(out['decode_batch_no_adapter_tokens_per_s'])} | "
                     f"{fmt(out['decode_batch_own_adapters_tokens_per_s'])} | {out['ratio_c_over_a']:.2f} | "
                     f"{out['ratio_c_over_b']:.2f} | {fmt(out['prefill_single_tokens_per_s'])} | "
                     f"{fmt(out['prefill_batch_tokens_per_s'])} | {out['ratio_prefill_batch_over_single']:.2f} |")
    for n in notes:
        lines += ["", "Note: " + n]
    return "\n".join(lines)


SECTIONS = {"gemm": section_gemm, "generate": section_generate, "adapters": section_adapters, "train": section_train,
            "batch": section_batch, "scaling": section_scaling, "context": section_context,
            "train-scaling": section_train_scaling}
# Sections run only when named in --sections (long: model files of 0.4–1.5 GB, contexts of 4096 tokens).
DEFAULT_SECTIONS = ["gemm", "generate", "adapters", "batch", "train"]

# --------------------------------------------------------------------------------------------------
# BENCHMARKS.md
# --------------------------------------------------------------------------------------------------


def write_block(name: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else INTRO
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text and text.index(begin) < text.index(end):
        i, j = text.index(begin), text.index(end) + len(end)
        text = text[:i] + block + text[j:]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def resolve_cli(cli: str) -> str:
    p = Path(cli)
    if not p.is_absolute() and not p.exists() and (ROOT / p).exists():
        p = ROOT / p
    if not p.exists():
        hint = ""
        try:
            bin_path = subprocess.run(["swift", "build", "-c", "release", "-Xswiftc", "-enable-testing",
                                       "--show-bin-path"], cwd=ROOT, capture_output=True, text=True,
                                      timeout=120).stdout.strip()
            if bin_path:
                hint = f" (try --cli {bin_path}/lorakit-cli after `make build`)"
        except (OSError, subprocess.TimeoutExpired):
            pass
        sys.exit(f"bench: no lorakit CLI at {cli}{hint}")
    return str(p)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cli", default=DEFAULT_CLI, help=f"path to lorakit-cli (default: {DEFAULT_CLI})")
    ap.add_argument("--sections", default=",".join(DEFAULT_SECTIONS),
                    help=f"comma-separated sections to run (default {','.join(DEFAULT_SECTIONS)}; also: scaling, context)")
    ap.add_argument("--seconds", type=float, default=1.0, help="minimum seconds per measurement (default 1)")
    ap.add_argument("--no-write", action="store_true", help="print the tables instead of updating BENCHMARKS.md")
    ap.add_argument("--block-suffix", default="",
                    help="write section NAME to the block NAME-SUFFIX (e.g. avx2 for a LORAKIT_TARGET_CPU=haswell "
                         "build measured beside the native tables)")
    args = ap.parse_args(argv)
    cli = resolve_cli(args.cli)
    command = "python3 bench/run_benchmarks.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                                     else sys.argv[1:]))
    for name in [s.strip() for s in args.sections.split(",") if s.strip()]:
        if name not in SECTIONS:
            sys.exit(f"bench: unknown section {name!r} (known: {', '.join(SECTIONS)})")
        body = SECTIONS[name](cli, args.seconds, command.strip())
        if args.no_write:
            print(body)
        else:
            write_block(name + (f"-{args.block_suffix}" if args.block_suffix else ""), body)
            print(f"bench: wrote the {name} section of {BENCHMARKS_MD}", file=sys.stderr)
    if not args.no_write:
        # The comparison tables as bar charts (bench/plots/*.svg), linked from BENCHMARKS.md.
        subprocess.run([cli, "bench", "plot", "--markdown", str(BENCHMARKS_MD), "--link"], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""`lorakit serve` under load, beside llama.cpp's `llama-server` (issue 13):

    python3 bench/serve_bench.py --cli .build/release/lorakit-cli --model M [--clients 8] [--requests 32]
        [--max-tokens 64] [--threads 2] [--peer auto|none|PATH] [--json]

Makes 8 random LoRA adapters (r 8, q and v, with the library; LORAKIT_LIBRARY names liblorakit.so) and
converts them to GGUF LoRA (`lorakit convert`) for llama-server. Each server gets the same model, the same 8
adapters, the same threads and as many sequence slots as clients. Every request is a streaming
/v1/completions call, greedy, `ignore_eos` with a fixed `max_tokens`, naming one of the 8 adapters (lorakit:
`"model": "<adapter>"`; llama-server: per-request `"lora": [{"id": i, "scale": 1}]`, the others at scale 0).

Both servers run side by side. First every request alone on each, one after the other (the reference
texts); then --rounds measured rounds, alternating between the servers: K client threads send the M requests,
each thread one at a time, with the same client code (http.client, server-sent events). Reported per server,
for the median round by tokens/s: aggregate completion tokens/s (all tokens / wall time from the first send
to the last end), time to first token p50/p99; over all rounds: lost requests (HTTP error, no [DONE], a
finish other than `length`) and responses that differ from the same request alone.

The peer (--peer auto) is built once under /tmp (never committed): llama.cpp's source as vendored by the
llama-cpp-python sdist from PyPI (the version installed here, else the newest), cmake from PyPI, target
llama-server only. --peer none runs our side only; --peer PATH uses a llama-server binary.
"""
import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEER_DIR = Path(os.environ.get("LORAKIT_LLAMA_SERVER_DIR", "/tmp/lorakit-llama-server"))
PROMPTS = [
    "The capital of France is", "Once upon a time", "Water boils at", "My favourite colour is",
    "The best way to learn a language is", "In 1969, the first man on the moon", "A recipe for pancakes:",
    "The three laws of motion are", "Dear diary, today", "The quick brown fox", "To be or not to be,",
    "Photosynthesis is the process", "The stock market", "In a galaxy far away,", "The old lighthouse keeper",
    "Python is a programming language that",
]


def log(*a):
    print("serve_bench:", *a, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------------
# The peer: llama-server built from the llama-cpp-python sdist's vendored llama.cpp

def build_llama_server():
    """Path of a llama-server binary built under PEER_DIR, or (None, why)."""
    exe = PEER_DIR / "build" / "bin" / "llama-server"
    if exe.exists():
        return exe, None
    PEER_DIR.mkdir(parents=True, exist_ok=True)
    try:
        import llama_cpp
        spec = f"llama-cpp-python=={llama_cpp.__version__}"
    except ImportError:
        spec = "llama-cpp-python"
    sdists = list(PEER_DIR.glob("llama_cpp_python-*.tar.gz"))
    if not sdists:
        log(f"downloading the {spec} sdist (llama.cpp's source) into {PEER_DIR}")
        r = subprocess.run([sys.executable, "-m", "pip", "download", spec, "--no-binary=llama-cpp-python", "--no-deps",
                            "-d", str(PEER_DIR)], capture_output=True, text=True)
        sdists = list(PEER_DIR.glob("llama_cpp_python-*.tar.gz"))
        if not sdists:
            return None, f"pip download {spec} failed: {r.stderr.strip()[-300:]}"
    src = PEER_DIR / "src"
    if not (src / "CMakeLists.txt").exists():
        with tarfile.open(sdists[0]) as t:
            prefix = t.getnames()[0].split("/")[0] + "/vendor/llama.cpp/"
            members = [m for m in t.getmembers() if m.name.startswith(prefix)]
            for m in members:
                m.name = m.name[len(prefix):]
            t.extractall(src, members=members, filter="data")
    if not (src / "tools" / "server" / "server.cpp").exists():
        return None, f"{sdists[0].name} does not vendor llama.cpp's tools/server"
    cmake = shutil.which("cmake")
    if cmake is None:
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--only-binary=:all:", "cmake"],
                           capture_output=True, text=True)
        cmake = shutil.which("cmake")
        if cmake is None:
            return None, f"no cmake (pip install cmake failed: {r.stderr.strip()[-200:]})"
    log(f"building llama-server from {sdists[0].name} in {PEER_DIR}/build (once; several minutes on 2 cores)")
    t0 = time.time()
    cfg = [cmake, "-S", str(src), "-B", str(PEER_DIR / "build"), "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF",
           "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DGGML_NATIVE=ON",
           "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_OPENSSL=OFF"]
    for cmd in (cfg, [cmake, "--build", str(PEER_DIR / "build"), "--target", "llama-server", "-j", str(os.cpu_count() or 2)]):
        r = subprocess.run(["nice", *cmd], capture_output=True, text=True)
        if r.returncode != 0:
            return None, f"{' '.join(cmd[:3])} … failed: {(r.stderr or r.stdout).strip()[-400:]}"
    log(f"llama-server built in {time.time() - t0:.0f} s")
    return (exe, None) if exe.exists() else (None, "the build finished without build/bin/llama-server")


# ------------------------------------------------------------------------------------------------------
# Servers

class Proc:
    def __init__(self, args, ready_path, port, env=None):
        self.port = port
        self.lines = []
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        threading.Thread(target=lambda: [self.lines.append(x) for x in self.proc.stdout], daemon=True).start()
        deadline = time.time() + 300
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{args[0]} exited {self.proc.returncode}: {''.join(self.lines)[-2000:]}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", ready_path)
                r = c.getresponse()
                r.read()
                c.close()
                if r.status == 200:
                    return
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"{args[0]} did not become ready: {''.join(self.lines)[-2000:]}")
            time.sleep(0.2)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def stream_request(port, body):
    """One streaming /v1/completions call: (text, ttft seconds, total seconds, error or None)."""
    t0 = time.perf_counter()
    ttft = None
    text = []
    done = False
    finish = None
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        c.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            return None, None, None, f"HTTP {r.status}: {r.read()[:200]!r}"
        while True:
            line = r.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                done = True
                break
            obj = json.loads(data)
            if "error" in obj:
                return None, None, None, f"error event: {obj['error']}"
            for ch in obj.get("choices", []):
                piece = ch.get("text") or ""
                if piece and ttft is None:
                    ttft = time.perf_counter() - t0
                text.append(piece)
                finish = ch.get("finish_reason") or finish
        c.close()
    except (OSError, ValueError) as e:
        return None, None, None, f"{type(e).__name__}: {e}"
    if not done:
        return None, None, None, "the stream ended without [DONE]"
    if finish != "length":
        return None, None, None, f"finish_reason {finish!r}, expected 'length'"
    return "".join(text), ttft, time.perf_counter() - t0, None


def percentile(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100
    f = int(k)
    return xs[f] if f + 1 >= len(xs) else xs[f] + (xs[f + 1] - xs[f]) * (k - f)


def reference(port, bodies):
    """Every request alone, one after the other: [(text, error)]."""
    return [stream_request(port, b)[::3] for b in bodies]


def run_load(port, bodies, clients, alone):
    """All requests from `clients` threads (each sends its next request when the previous one ended)."""
    results = [None] * len(bodies)
    nxt = [0]
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= len(bodies):
                return
            ts = time.perf_counter()
            results[i] = (ts,) + stream_request(port, bodies[i])
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [r for r in results if r[4] is None]
    t_end = max((r[0] + r[3] for r in ok), default=t0)
    tokens = sum(b["max_tokens"] for b, r in zip(bodies, results) if r[4] is None)
    lost = [r[4] for r in results if r[4] is not None]
    mismatched = sum(1 for (ref, rerr), r in zip(alone, results) if r[4] is None and (rerr is not None or r[1] != ref))
    ttfts = [r[2] for r in ok if r[2] is not None]
    return {
        "requests": len(bodies), "clients": clients, "tokens": tokens, "seconds": t_end - t0,
        "tokens_per_s": tokens / (t_end - t0) if t_end > t0 else 0.0,
        "ttft_p50_s": percentile(ttfts, 50), "ttft_p99_s": percentile(ttfts, 99),
        "lost": len(lost), "lost_examples": lost[:3], "differ_from_alone": mismatched,
        "alone_errors": sum(1 for _, e in alone if e is not None),
    }


def summarize(runs):
    """The median round by tokens/s, with every round's tokens/s and the totals of lost / differing responses."""
    med = dict(sorted(runs, key=lambda r: r["tokens_per_s"])[len(runs) // 2])
    med["rounds_tokens_per_s"] = [round(r["tokens_per_s"], 1) for r in runs]
    med["lost"] = sum(r["lost"] for r in runs)
    med["differ_from_alone"] = sum(r["differ_from_alone"] for r in runs)
    med["responses_checked"] = sum(r["requests"] for r in runs)
    return med


# ------------------------------------------------------------------------------------------------------

def make_adapters(model, cli, out):
    sys.path.insert(0, str(ROOT / "bindings" / "python"))
    import lorakit
    peft, gguf = [], []
    with lorakit.Model(model) as m:
        for i in range(8):
            a = lorakit.Adapter.create(m, rank=8, alpha=64, targets="q,v", init="random", seed=100 + i)
            p = out / f"a{i}"
            a.save(p)
            a.close()
            g = out / f"a{i}.gguf"
            subprocess.run([cli, "convert", "--model", model, "--adapter", str(p), "--to", "gguf", "--out", str(g)],
                           check=True, capture_output=True)
            peft.append(p)
            gguf.append(g)
    return peft, gguf


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cli", default=str(ROOT / ".build" / "release" / "lorakit-cli"))
    ap.add_argument("--model", required=True)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=512, help="positions per sequence (slot)")
    ap.add_argument("--engine", default="batch", help="lorakit serve --engine")
    ap.add_argument("--peer", default="auto", help="auto (build llama-server under /tmp), none, or a llama-server path")
    ap.add_argument("--rounds", type=int, default=3, help="measured rounds per server, alternating")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="serve_bench_"))
    peft, gguf = make_adapters(a.model, a.cli, tmp)
    bodies = []
    for j in range(a.requests):
        bodies.append({"prompt": PROMPTS[j % len(PROMPTS)], "max_tokens": a.max_tokens, "temperature": 0,
                       "stream": True, "ignore_eos": True, "adapter": j % 8})
    out = {"model": Path(a.model).name, "threads": a.threads, "clients": a.clients, "requests": a.requests,
           "max_tokens": a.max_tokens, "cpu_count": os.cpu_count()}

    # Both servers stay up; the measured rounds alternate (LoRAKit, then llama-server), so that the load of
    # other processes on the machine hits both alike.
    servers = {}
    try:
        port = free_port()
        args = [a.cli, "serve", "--model", a.model, "--port", str(port), "--threads", str(a.threads), "--max-sequences",
                str(a.clients), "--ctx", str(a.ctx), "--engine", a.engine, "--max-queue", str(4 * a.requests)]
        for i, p in enumerate(peft):
            args += ["--adapter", f"a{i}={p}"]
        ours = []
        for b in bodies:
            t = dict(b, model=f"a{b['adapter']}")
            del t["adapter"]
            ours.append(t)
        servers["lorakit"] = (Proc(args, "/health", port), ours)

        peer, why = ((None, "--peer none") if a.peer == "none" else (Path(a.peer), None) if a.peer != "auto"
                     else build_llama_server())
        if peer is None:
            out["llama_server"] = {"skipped": why}
        else:
            port = free_port()
            args = [str(peer), "-m", a.model, "--host", "127.0.0.1", "--port", str(port), "-t", str(a.threads), "-tb",
                    str(a.threads), "-np", str(a.clients), "-c", str(a.ctx * a.clients), "--lora-init-without-apply"]
            for g in gguf:
                args += ["--lora", str(g)]
            theirs = []
            for b in bodies:
                t = dict(b, model="base", lora=[{"id": i, "scale": 1.0 if i == b["adapter"] else 0.0} for i in range(8)])
                del t["adapter"]
                theirs.append(t)
            servers["llama_server"] = (Proc(args, "/health", port), theirs)
            out["llama_server_binary"] = str(peer)
        alone = {}
        alone_speed = {}
        for name, (proc, reqs) in servers.items():
            log(f"{name}: {len(reqs)} requests alone (reference)")
            t0 = time.perf_counter()
            alone[name] = reference(proc.port, reqs)
            alone_speed[name] = sum(b["max_tokens"] for b in reqs) / (time.perf_counter() - t0)
        runs = {name: [] for name in servers}
        for r in range(a.rounds):
            for name, (proc, reqs) in servers.items():
                runs[name].append(run_load(proc.port, reqs, a.clients, alone[name]))
                log(f"round {r + 1} {name}: {runs[name][-1]['tokens_per_s']:.1f} tokens/s, "
                    f"TTFT p50 {1000 * runs[name][-1]['ttft_p50_s']:.0f} ms")
        for name in servers:
            out[name] = summarize(runs[name])
            # One request at a time (the reference pass): the server's speed without concurrency.
            out[name]["alone_tokens_per_s"] = alone_speed[name]
        out["lorakit"]["engine"] = a.engine
    finally:
        for proc, _ in servers.values():
            proc.stop()
    out["loadavg_before"] = load_before
    out["loadavg_after"] = os.getloadavg()
    shutil.rmtree(tmp, ignore_errors=True)
    if a.json:
        print(json.dumps(out, indent=1))
    else:
        print("| server | requests × tokens | clients | tokens/s (rounds) | TTFT p50 ms | TTFT p99 ms | lost | differ from alone "
              "| one request at a time: tokens/s |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for name in ("lorakit", "llama_server"):
            r = out.get(name, {})
            if "skipped" in r or not r:
                print(f"| {name} | skipped: {r.get('skipped')} | | | | | | |")
                continue
            print(f"| {name} | {r['requests']} × {a.max_tokens} | {r['clients']} | {r['tokens_per_s']:.1f} "
                  f"({', '.join(map(str, r['rounds_tokens_per_s']))}) | {1000 * r['ttft_p50_s']:.0f} | "
                  f"{1000 * r['ttft_p99_s']:.0f} | {r['lost']} / {r['responses_checked']} | "
                  f"{r['differ_from_alone']} / {r['responses_checked']} | {r['alone_tokens_per_s']:.1f} |")
        print(f"load average before {load_before[0]:.2f}, after {out['loadavg_after'][0]:.2f}")


if __name__ == "__main__":
    main()

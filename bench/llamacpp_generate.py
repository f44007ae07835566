#!/usr/bin/env python3
"""llama.cpp's side of `lorakit bench generate`, through llama-cpp-python, measured the same way:

    python3 bench/llamacpp_generate.py --model M --prompt-tokens 128 --gen-tokens 64 --threads T [--repeats 3]

Prints one JSON object: prefill and decode tokens/s (means over the repeats) and the peak RSS of this
process (VmHWM). The prompt is the same deterministic pseudo-random token list LoRAKit uses, the
context holds exactly prompt + generated tokens + 1, decoding is greedy one token per llama_decode, as in
`lorakit bench generate` (and llama-bench -p/-n). Run it in its own process so its RSS is its own.
"""
import argparse
import json
import re
import sys
import time

from benchutil import splitmix64


def peak_rss_bytes():
    with open("/proc/self/status") as f:
        m = re.search(r"VmHWM:\s+(\d+) kB", f.read())
    return int(m.group(1)) * 1024 if m else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(model_path=a.model, n_ctx=a.prompt_tokens + a.gen_tokens + 1, n_batch=512,
                          n_ubatch=512, n_threads=a.threads, n_threads_batch=a.threads, logits_all=False,
                          verbose=False)
    vocab = llm.n_vocab()
    rng = splitmix64(42)
    prompt = [100 + next(rng) % (vocab - 200) for _ in range(a.prompt_tokens)]
    prefill, decode = [], []
    for _ in range(a.repeats):
        llm.reset()
        llm._ctx.kv_cache_clear() if hasattr(llm._ctx, "kv_cache_clear") else None
        t0 = time.perf_counter()
        llm.eval(prompt)
        t1 = time.perf_counter()
        for _ in range(a.gen_tokens):
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(vocab,))
            llm.eval([int(np.argmax(logits))])
        t2 = time.perf_counter()
        prefill.append(a.prompt_tokens / (t1 - t0))
        if a.gen_tokens:
            decode.append(a.gen_tokens / (t2 - t1))
    print(json.dumps({
        "llama_cpp_python": llama_cpp.__version__,
        "threads": a.threads,
        "prefill_tokens_per_s": sum(prefill) / len(prefill),
        "decode_tokens_per_s": sum(decode) / len(decode) if decode else 0,
        "prefill_runs": prefill, "decode_runs": decode,
        "peak_rss_bytes": peak_rss_bytes(),
    }))


if __name__ == "__main__":
    sys.exit(main())

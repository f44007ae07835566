#!/usr/bin/env python3
"""Write LLaMA-shaped GGUF files with random weights at ≈ 0.5B and ≈ 1.5B parameters, for the size
benchmarks (bench/run_benchmarks.py --sections scaling): the same file is fed to LoRAKit and llama.cpp.

    python3 scripts/make_scaled_models.py [--out DIR] [--sizes 0.5b,1.5b] [--types q4_1,q8_0] [--force]

Prints one path per line (the files made or already present). Default folder: $LORAKIT_CACHE/scaled or
~/.cache/lorakit/scaled (never inside the repository). Needs the `gguf` package and the real model
(scripts/fetch_model.sh, or $LORAKIT_MODEL): every tokenizer.* key (vocabulary, merges, token types,
special ids, chat template) is copied from it, so both sides load the files with SmolLM2's tokenizer.

The weights are random quantized blocks written directly (no float weights, no quantizer: seconds, not
minutes): q8_0 blocks hold uniform int8 values in −127..127 with one scale per tensor, q4_1 blocks
uniform nibbles with d and m = −7.5·d, so each weight has mean 0 and standard deviation 1/√fan-in; the
token embedding (tied output head, q8_0 as in SmolLM2's Q4_1 file) has standard deviation 0.02; the
norm weights are 1. Fixed seeds: the same command writes the same bytes. Files are written to a
temporary name and renamed.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# name: (hidden, ffn, layers, heads, kv heads); head dim 64, vocabulary 49152 (SmolLM2's), tied embeddings.
SHAPES = {
    "0.5b": (1280, 3456, 28, 20, 4),
    "1.5b": (2048, 6144, 28, 32, 8),
}
VOCAB = 49152
CONTEXT = 8192


def param_count(hidden: int, ffn: int, layers: int, heads: int, kv: int) -> int:
    hd = hidden // heads
    per_layer = 2 * hidden * hidden + 2 * hidden * kv * hd + 3 * hidden * ffn + 2 * hidden
    return layers * per_layer + VOCAB * hidden + hidden


def real_model() -> str:
    env = os.environ.get("LORAKIT_MODEL")
    if env and Path(env).exists():
        return env
    r = subprocess.run(["bash", str(ROOT / "scripts" / "fetch_model.sh")], capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.strip():
        sys.exit("make_scaled_models: the real model is needed for its tokenizer (scripts/fetch_model.sh failed)")
    return r.stdout.strip()


def random_q8_0(rng: np.random.Generator, rows: int, cols: int, std: float) -> np.ndarray:
    """rows × cols q8_0 weight as raw bytes [rows, cols/32·34]: uniform q in −127..127 (std ≈ 73.3)."""
    nb = cols // 32
    blocks = np.empty((rows, nb, 34), dtype=np.uint8)
    d = np.float16(std / 73.3)
    blocks[:, :, 0:2] = np.frombuffer(d.tobytes(), dtype=np.uint8)
    blocks[:, :, 2:] = rng.integers(-127, 128, size=(rows, nb, 32), dtype=np.int8).view(np.uint8)
    return blocks.reshape(rows, nb * 34)


def random_q4_1(rng: np.random.Generator, rows: int, cols: int, std: float) -> np.ndarray:
    """rows × cols q4_1 weight as raw bytes [rows, cols/32·20]: uniform nibbles (std ≈ 4.61), m = −7.5·d."""
    nb = cols // 32
    blocks = np.empty((rows, nb, 20), dtype=np.uint8)
    d = np.float16(std / 4.61)
    m = np.float16(-7.5 * float(d))
    blocks[:, :, 0:2] = np.frombuffer(d.tobytes(), dtype=np.uint8)
    blocks[:, :, 2:4] = np.frombuffer(m.tobytes(), dtype=np.uint8)
    blocks[:, :, 4:] = rng.integers(0, 256, size=(rows, nb, 16), dtype=np.uint8)
    return blocks.reshape(rows, nb * 20)


def copy_tokenizer(writer, reader) -> None:
    import gguf
    T = gguf.GGUFValueType
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        t = field.types[0]
        v = field.contents()
        if t == T.ARRAY:
            writer.add_key_value(key, v, T.ARRAY, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, v, t)


def write_model(path: Path, size: str, qtype: str, real: str) -> None:
    import gguf
    hidden, ffn, layers, heads, kv = SHAPES[size]
    hd = hidden // heads
    Q = gguf.GGMLQuantizationType
    wtype = Q.Q4_1 if qtype == "q4_1" else Q.Q8_0
    make = random_q4_1 if qtype == "q4_1" else random_q8_0
    reader = gguf.GGUFReader(real)
    tmp = path.with_name(path.name + ".tmp")
    w = gguf.GGUFWriter(str(tmp), "llama")
    w.add_name(f"random llama {size} {qtype} (LoRAKit size benchmark)")
    w.add_context_length(CONTEXT)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_block_count(layers)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(100000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(VOCAB)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_1 if qtype == "q4_1" else gguf.LlamaFileType.MOSTLY_Q8_0)
    copy_tokenizer(w, reader)
    rng = np.random.default_rng(1234 + list(SHAPES).index(size))
    w.add_tensor("token_embd.weight", random_q8_0(rng, VOCAB, hidden, 0.02), raw_dtype=Q.Q8_0)
    ones = lambda n: np.ones(n, dtype=np.float32)
    for l in range(layers):
        p = f"blk.{l}."
        w.add_tensor(p + "attn_norm.weight", ones(hidden))
        # [out, in] rows of `in` values; the stored gguf shape is reversed (ne0 = in).
        for name, out_f, in_f in (("attn_q", heads * hd, hidden), ("attn_k", kv * hd, hidden),
                                  ("attn_v", kv * hd, hidden), ("attn_output", hidden, heads * hd),
                                  ("ffn_gate", ffn, hidden), ("ffn_up", ffn, hidden), ("ffn_down", hidden, ffn)):
            w.add_tensor(p + name + ".weight", make(rng, out_f, in_f, 1 / np.sqrt(in_f)), raw_dtype=wtype)
        w.add_tensor(p + "ffn_norm.weight", ones(hidden))
    w.add_tensor("output_norm.weight", ones(hidden))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    tmp.replace(path)


def main() -> int:
    default_dir = Path(os.environ.get("LORAKIT_CACHE", Path.home() / ".cache" / "lorakit")) / "scaled"
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=default_dir)
    ap.add_argument("--sizes", default="0.5b,1.5b")
    ap.add_argument("--types", default="q4_1,q8_0")
    ap.add_argument("--force", action="store_true", help="rewrite files that exist")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    real = None
    for size in a.sizes.split(","):
        if size not in SHAPES:
            sys.exit(f"make_scaled_models: unknown size {size!r} (known: {', '.join(SHAPES)})")
        for qtype in a.types.split(","):
            if qtype not in ("q4_1", "q8_0"):
                sys.exit(f"make_scaled_models: unknown type {qtype!r} (q4_1 or q8_0)")
            path = a.out / f"llama-random-{size}.{qtype}.gguf"
            if not path.exists() or a.force:
                real = real or real_model()
                n = param_count(*SHAPES[size])
                print(f"make_scaled_models: writing {path} ({n / 1e9:.2f}B parameters)", file=sys.stderr)
                write_model(path, size, qtype, real)
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Build the committed seed corpora of the fuzz targets (Fuzz/corpus/<target>/) from the test fixtures,
plus a few small hand-made files (a libFuzzer run is faster on small inputs than on the 600 KB fixture
models). Deterministic: running it again gives the same bytes. Standard library only.

    python3 Fuzz/make_seeds.py          # (re)writes the seed files; other files in Fuzz/corpus are kept
"""
import json
import os
import shutil
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FX = os.path.join(ROOT, "Tests", "LoRAKitTests", "Fixtures")
OUT = os.path.join(ROOT, "Fuzz", "corpus")
SEP = b"\n#LORAKIT-FUZZ-NEXT-FILE#\n"  # Fuzz.separator (FuzzSupport.swift)


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def read(*parts):
    with open(os.path.join(FX, *parts), "rb") as f:
        return f.read()


# ---- GGUF writer (v3, little-endian), enough for hand-made seeds ----

T_U8, T_I8, T_U16, T_I16, T_U32, T_I32, T_F32, T_BOOL, T_STR, T_ARR, T_U64, T_I64, T_F64 = range(13)


def gstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def gval(t, v):
    if t == T_STR:
        return gstr(v)
    if t == T_ARR:
        et, items = v
        return struct.pack("<IQ", et, len(items)) + b"".join(gval(et, x) for x in items)
    fmt = {T_U8: "B", T_I8: "b", T_U16: "H", T_I16: "h", T_U32: "I", T_I32: "i", T_F32: "f", T_BOOL: "?",
           T_U64: "Q", T_I64: "q", T_F64: "d"}[t]
    return struct.pack("<" + fmt, v)


def gguf(kv, tensors, align=32):
    """kv: [(key, type, value)]; tensors: [(name, ne (innermost first), ggml type, data bytes)]."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv))
    for k, t, v in kv:
        out += gstr(k) + struct.pack("<I", t) + gval(t, v)
    off = 0
    offs = []
    for name, ne, gt, data in tensors:
        out += gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
        out += struct.pack("<IQ", gt, off)
        offs.append(off)
        off += (len(data) + align - 1) // align * align
    out += b"\0" * ((-len(out)) % align)
    for (name, ne, gt, data), o in zip(tensors, offs):
        out += data + b"\0" * ((-len(data)) % align)
    return out


def f32(values):
    return struct.pack("<%df" % len(values), *values)


def f16(values):
    return struct.pack("<%de" % len(values), *values)


def q8_0(n):
    """n values (multiple of 32) as Q8_0 blocks: d = 0.01, q = k − 16."""
    return b"".join(struct.pack("<e", 0.01) + bytes((k - 16) & 0xFF for k in range(32)) for _ in range(n // 32))


def q4_0(n):
    return b"".join(struct.pack("<e", 0.02) + bytes((k * 7) & 0xFF for k in range(16)) for _ in range(n // 32))


def q4_1(n):
    return b"".join(struct.pack("<ee", 0.02, -0.1) + bytes((k * 5) & 0xFF for k in range(16)) for _ in range(n // 32))


def values(n, seed):
    # Small deterministic values in [-0.25, 0.25).
    x = seed * 2654435761 % 2**32
    out = []
    for _ in range(n):
        x = (x * 1103515245 + 12345) % 2**31
        out.append((x / 2**31 - 0.5) / 2)
    return out


def byte_level_vocab():
    """GPT-2's byte-level alphabet (256 single-byte tokens), three special tokens and a few merges."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    alphabet = [chr(c) for _, c in sorted(zip(bs, cs))]
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld"]
    merged = ["he", "ll", "hell", "hello", "Ġw", "or", "Ġwor", "ld", "Ġworld"]
    tokens = special + alphabet + merged
    types = [3] * len(special) + [1] * (len(alphabet) + len(merged))
    return tokens, types, merges


def llama_gguf(dtype="f32", tied=True, tokenizer="gpt2", layers=1, extra_kv=(), dim=32, heads=2, kv_heads=1,
               hidden=32, with_template=True):
    tokens, types, merges = byte_level_vocab()
    vocab = len(tokens)
    kv = [("general.architecture", T_STR, "llama"), ("general.name", T_STR, "fuzz seed"),
          ("llama.context_length", T_U32, 64), ("llama.embedding_length", T_U32, dim),
          ("llama.feed_forward_length", T_U32, hidden), ("llama.block_count", T_U32, layers),
          ("llama.attention.head_count", T_U32, heads), ("llama.attention.head_count_kv", T_U32, kv_heads),
          ("llama.rope.freq_base", T_F32, 10000.0), ("llama.attention.layer_norm_rms_epsilon", T_F32, 1e-5),
          ("llama.vocab_size", T_U32, vocab), ("general.alignment", T_U32, 32)]
    if tokenizer == "gpt2":
        kv += [("tokenizer.ggml.model", T_STR, "gpt2"), ("tokenizer.ggml.pre", T_STR, "smollm"),
               ("tokenizer.ggml.tokens", T_ARR, (T_STR, tokens)), ("tokenizer.ggml.token_type", T_ARR, (T_I32, types)),
               ("tokenizer.ggml.merges", T_ARR, (T_STR, merges)), ("tokenizer.ggml.bos_token_id", T_U32, 1),
               ("tokenizer.ggml.eos_token_id", T_U32, 2), ("tokenizer.ggml.padding_token_id", T_U32, 2),
               ("tokenizer.ggml.add_bos_token", T_BOOL, False)]
    if with_template:
        kv += [("tokenizer.chat_template", T_STR,
                "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")]
    kv += list(extra_kv)
    ggml = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 8}[dtype]

    def weight(out_f, in_f, seed):
        n = out_f * in_f
        if dtype == "f32":
            return f32(values(n, seed))
        if dtype == "f16":
            return f16(values(n, seed))
        return {"q8_0": q8_0, "q4_0": q4_0, "q4_1": q4_1}[dtype](n)

    hd = dim // heads
    ts = [("token_embd.weight", [dim, vocab], ggml, weight(vocab, dim, 1)),
          ("output_norm.weight", [dim], 0, f32([1.0] * dim))]
    if not tied:
        ts.append(("output.weight", [dim, vocab], ggml, weight(vocab, dim, 2)))
    for l in range(layers):
        shapes = [("attn_q", heads * hd, dim), ("attn_k", kv_heads * hd, dim), ("attn_v", kv_heads * hd, dim),
                  ("attn_output", dim, heads * hd), ("ffn_gate", hidden, dim), ("ffn_up", hidden, dim),
                  ("ffn_down", dim, hidden)]
        ts.append((f"blk.{l}.attn_norm.weight", [dim], 0, f32([1.0] * dim)))
        ts.append((f"blk.{l}.ffn_norm.weight", [dim], 0, f32([1.0] * dim)))
        for k, (stem, o, i) in enumerate(shapes):
            ts.append((f"blk.{l}.{stem}.weight", [i, o], ggml, weight(o, i, 10 + k)))
    return gguf(kv, ts)


def lora_gguf(rank=2, alpha=4.0, modules=("attn_q", "attn_v"), layers=(0, 1), dtype="f32"):
    """A llama.cpp LoRA for the tiny fixture model (dim 64, MLP 160, q 64, k/v 32)."""
    shape = {"attn_q": (64, 64), "attn_k": (32, 64), "attn_v": (32, 64), "attn_output": (64, 64),
             "ffn_gate": (160, 64), "ffn_up": (160, 64), "ffn_down": (64, 160)}
    kv = [("general.architecture", T_STR, "llama"), ("general.type", T_STR, "adapter"),
          ("adapter.type", T_STR, "lora"), ("adapter.lora.alpha", T_F32, alpha)]
    ts = []
    for l in layers:
        for k, m in enumerate(modules):
            o, i = shape[m]
            enc = f32 if dtype == "f32" else f16
            ts.append((f"blk.{l}.{m}.weight.lora_a", [i, rank], 0 if dtype == "f32" else 1, enc(values(rank * i, 100 + k))))
            ts.append((f"blk.{l}.{m}.weight.lora_b", [rank, o], 0 if dtype == "f32" else 1, enc(values(o * rank, 200 + k))))
    return gguf(kv, ts)


def projector_gguf(width=64, input_width=12, dtype="f32", kind=True, extra_kv=()):
    """A multimodal projector file (Projector.save's layout) for the tiny fixture model (width 64)."""
    kv = [("general.architecture", T_STR, "clip"), ("general.name", T_STR, "seed projector"),
          ("clip.has_llava_projector", T_BOOL, True), ("clip.projector_type", T_STR, "mlp"),
          ("clip.vision.projection_dim", T_U32, width), ("lorakit.projector.input_width", T_U32, input_width)]
    if kind:
        kv.append(("lorakit.projector.type", T_STR, "mlp2x_gelu"))
    kv += list(extra_kv)
    enc, gt = (f32, 0) if dtype == "f32" else (f16, 1)
    ts = [("mm.0.weight", [input_width, width], gt, enc(values(width * input_width, 1))),
          ("mm.0.bias", [width], gt, enc(values(width, 2))),
          ("mm.2.weight", [width, width], gt, enc(values(width * width, 3))),
          ("mm.2.bias", [width], gt, enc(values(width, 4)))]
    return gguf(kv, ts)


def safetensors(tensors, metadata=None):
    """tensors: [(name, dtype, shape, bytes)] packed in order."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    off = 0
    data = b""
    for name, dt, shape, b in tensors:
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(b)]}
        off += len(b)
        data += b
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((-len(h)) % 8)
    return struct.pack("<Q", len(h)) + h + data


def main():
    # gguf-model: the fixture models and tokenizer file, and small hand-made models of every weight type.
    for f in ["tiny-llama-q8_0.gguf", "tiny-llama-f32.gguf"]:
        put("gguf-model", f, read("model", f))
    put("gguf-model", "tiny_spm.gguf", read("tokenizer", "tiny_spm.gguf"))
    for dt in ["f32", "f16", "q8_0", "q4_0", "q4_1"]:
        put("gguf-model", f"small-{dt}.gguf", llama_gguf(dtype=dt, tied=dt != "f16"))
    put("gguf-model", "small-2layers-untied.gguf", llama_gguf(dtype="f32", tied=False, layers=2))
    put("gguf-model", "small-no-tokenizer.gguf", llama_gguf(tokenizer=None, with_template=False))
    put("gguf-model", "small-gqa-headdim.gguf",
        llama_gguf(dim=32, heads=4, kv_heads=2, extra_kv=[("llama.attention.key_length", T_U32, 8),
                                                          ("llama.rope.dimension_count", T_U32, 4)]))
    put("gguf-model", "metadata-only.gguf", gguf([("general.architecture", T_STR, "llama"),
                                                   ("a.array", T_ARR, (T_ARR, [(T_U8, [1, 2]), (T_U8, [])])),
                                                   ("a.f64", T_F64, 1.5), ("a.i64", T_I64, -1), ("a.bool", T_BOOL, True),
                                                   ("a.i16", T_I16, -2), ("a.u16", T_U16, 2), ("a.i8", T_I8, -1)], []))

    # gguf-lora: the fixtures and small hand-made adapters for the tiny fixture model.
    for f in ["lora_a.gguf", "lora_a_q8_0.gguf"]:
        put("gguf-lora", f, read("lora", f))
    put("gguf-lora", "small-qv-r2.gguf", lora_gguf())
    put("gguf-lora", "small-down-r1-f16.gguf", lora_gguf(rank=1, alpha=0.0, modules=("ffn_down", "attn_k"), layers=(1,), dtype="f16"))
    put("gguf-lora", "small-all-r1.gguf", lora_gguf(rank=1, alpha=2.0, layers=(0,),
                                                   modules=("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")))

    # projector: files as Projector.save writes them (f32, f16), without the optional kind key, 1-wide input,
    # and one whose width does not fit the model (refused: the fuzzer mutates it towards one that loads).
    put("projector", "small-f32.gguf", projector_gguf())
    put("projector", "small-f16-no-kind.gguf", projector_gguf(dtype="f16", kind=False))
    put("projector", "input1.gguf", projector_gguf(input_width=1))
    put("projector", "width32-refused.gguf", projector_gguf(width=32, input_width=4))

    # safetensors: the fixtures' adapter and shard files, and small hand-made files of every dtype.
    for d in ["r4_all", "rslora_qv", "patterns_all"]:
        put("safetensors", f"peft-{d}.safetensors", read("lora", d, "adapter_model.safetensors"))
    put("safetensors", "shard2.safetensors", read("model", "tiny-llama-hf-sharded", "model-00002-of-00002.safetensors"))
    put("safetensors", "small-dtypes.safetensors", safetensors(
        [("a", "F32", [2, 3], f32(values(6, 1))), ("b", "F16", [4], f16(values(4, 2))), ("c", "BF16", [1, 2], b"\x80\x3f\x00\x40"),
         ("d", "I64", [1], struct.pack("<q", -5)), ("e", "U8", [3], b"\x01\x02\x03"), ("f", "F32", [0, 5], b""),
         ("g", "F4", [2], b"\x21"), ("h", "BOOL", [], b"\x01")], metadata={"format": "pt", "note": "seed"}))
    put("safetensors", "small-unaligned.safetensors", safetensors([("x", "U8", [1], b"\x07"), ("y", "F32", [2], f32([1.0, -2.0]))]))

    # hf-config: the fixture configs (the folders' weights are fixed by the target).
    for d in ["tiny-llama-hf", "tiny-llama-hf-tied-bf16", "tiny-llama-hf-sharded"]:
        put("hf-config", f"{d}.json", read("model", d, "config.json"))
    put("hf-config", "train-model.json", read("train", "model", "config.json"))
    cfg = json.loads(read("model", "tiny-llama-hf", "config.json"))
    t4 = dict(cfg)
    del t4["rope_parameters"]
    t4.update({"rope_theta": 10000.0, "torch_dtype": "float32", "rope_scaling": None})
    put("hf-config", "transformers4.json", json.dumps(t4, indent=2).encode())
    mis = dict(cfg)
    mis.update({"model_type": "mistral", "architectures": ["MistralForCausalLM"], "sliding_window": 128})
    put("hf-config", "mistral.json", json.dumps(mis).encode())

    # peft: configs alone (the target uses Fixtures/lora/r4_all's weights) and whole folders.
    for d in ["r4_all", "rslora_qv", "patterns_all"]:
        c = read("lora", d, "adapter_config.json")
        put("peft", f"{d}-config-only.json", c)
        put("peft", f"{d}-folder", c + SEP + read("lora", d, "adapter_model.safetensors"))
    small = safetensors([("base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight", "F32", [1, 64], f32(values(64, 3))),
                         ("base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight", "BF16", [32, 1], b"\x00\x3c" * 32)],
                        metadata={"format": "pt"})
    put("peft", "small-k-r1-folder", json.dumps({"peft_type": "LORA", "r": 1, "lora_alpha": 2, "use_rslora": True,
                                                 "target_modules": "k_proj", "bias": "none",
                                                 "rank_pattern": {"layers\\.1\\..*": 1}, "alpha_pattern": {"k_proj": 3.5}}).encode() + SEP + small)

    # jsonl: the fixture training files and one line of each shape with odd but valid content.
    for d, f in [("train/data", "text.jsonl"), ("train/data", "chat.jsonl"), ("train/data", "pc.jsonl"),
                 ("train/data", "bad.jsonl"), ("train_real", "train.jsonl"), ("train_real", "valid.jsonl")]:
        put("jsonl", d.replace("/", "-") + "-" + f, read(*d.split("/"), f))
    put("jsonl", "shapes.jsonl", "\ufeff".encode() + b'{"text": "a\\u00e9\\ud83d\\ude00 <|im_end|>"}\r\n\n'
        b'{"prompt": "", "completion": "x", "id": 3}\n'
        b'{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}\n'
        b'{"messages": [{"role": "assistant", "content": ""}]}')

    # tokenizer: the tokenizer test cases, each for every tokenizer (byte 0: low bits pick it, bit 4 parses specials).
    texts = [c["text"] for c in json.loads(read("tokenizer", "tiny_cases.json"))["cases"]]
    texts += [c["text"] for c in json.loads(read("tokenizer", "tiny_spm_cases.json"))["cases"]][:20]
    texts += [c["text"] for c in json.loads(read("tokenizer", "smollm2_cases.json"))["cases"]][:60]
    seen = set()
    k = 0
    for t in texts:
        if t in seen:
            continue
        seen.add(t)
        sel = (k % 4) | (0x10 if k % 3 == 0 else 0)
        put("tokenizer", f"case-{k:03d}", bytes([sel]) + t.encode())
        k += 1
    put("tokenizer", "invalid-utf8", bytes([0x10]) + b"a\xff\xc3(\xe2\x82 \xf0\x9f\x98")

    # tokenizer-json: the fixture tokenizer.json files.
    put("tokenizer-json", "tiny_tokenizer.json", read("tokenizer", "tiny_tokenizer.json"))
    put("tokenizer-json", "train-model-tokenizer.json", read("train", "model", "tokenizer.json"))


if __name__ == "__main__":
    main()

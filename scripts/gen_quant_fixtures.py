#!/usr/bin/env python3
"""Write the quantization fixtures used by Tests/LoRAKitTests/QuantTests.swift.

Rerun (from the repository root; output is deterministic, so the committed files must not change):

    pip install numpy gguf        # tested with numpy 2.4, gguf 0.19.0
    python3 scripts/gen_quant_fixtures.py

Files written to Tests/LoRAKitTests/Fixtures/quant/ (all little-endian, no headers):
    values.f32.bin          N f32 input values (N a multiple of 32; 32-value blocks, see make_values)
    <t>.bin                 gguf.quants.quantize(values, t) bytes, for t in f16, bf16, q8_0, q4_0, q4_1
    <t>.deq.f32.bin         gguf.quants.dequantize(<t>.bin, t) as f32
    special.f32.bin         non-finite / subnormal / tie values for the f16 and bf16 conversions
    special.<t>.bin, special.<t>.deq.f32.bin   the same for t in f16, bf16
"""
import importlib.metadata
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import quantize, dequantize

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "LoRAKitTests", "Fixtures", "quant")


def make_values() -> np.ndarray:
    rng = np.random.default_rng(20240601)
    blocks = []
    # 0: all zeros (d = 0, id = 0 path).
    blocks.append(np.zeros(32))
    # 1: all equal positive (q4_1: max == min, d = 0).
    blocks.append(np.full(32, 0.75))
    # 2: all equal negative.
    blocks.append(np.full(32, -3.0))
    # 3: the largest magnitude is negative (q4_0 d > 0), and it appears twice with opposite signs:
    #    gguf/ggml take the first one (-5), so d = 5/8.
    b = rng.uniform(-1, 1, 32); b[7] = -5.0; b[20] = 5.0; blocks.append(b)
    # 4: the largest magnitude is positive, a single value.
    b = rng.uniform(-1, 1, 32); b[31] = 4.0; blocks.append(b)
    # 5: q8_0 ties: amax = 127 -> d = 1, id = 1; x·id = k + 0.5 rounds away from zero.
    b = np.array([127.0, -127.0] + [k + 0.5 for k in range(-15, 15)]); blocks.append(b)
    # 6: q4_0 ties: max = -8 -> d = 1, id = 1; x + 8.5 lands exactly on integers and on .5.
    b = np.array([-8.0] + [k * 0.5 for k in range(-15, 16)]); blocks.append(b)
    # 7: q4_1 ties: min 0, max 15 -> d = 1; (x - min) + 0.5 exact integers (x = k + .5) and .5 steps.
    b = np.array([0.0, 15.0] + [k * 0.5 for k in range(0, 30)]); blocks.append(b)
    # 8: large magnitudes, near the f16 limit (all scales, and q4_1's min, still fit in f16; f16
    #    overflow to inf is covered by special.f32.bin).
    b = rng.uniform(-1, 1, 32) * 6.0e4; b[3] = 6.0e4; b[4] = -6.4e4; blocks.append(b)
    # 9: small magnitudes: the q8_0/q4 scales are f16 subnormals or flush to 0 while codes are not 0.
    blocks.append(rng.uniform(-1, 1, 32) * 1e-6)
    # 10: moderately small (scales are f16 subnormals ~1e-5).
    blocks.append(rng.uniform(-1, 1, 32) * 2e-3)
    # 11: one outlier among small values.
    b = rng.normal(0, 0.01, 32); b[11] = -2.5; blocks.append(b)
    # 12: all positive (q4_1 min > 0).
    blocks.append(rng.uniform(1, 2, 32))
    # 13: all negative.
    blocks.append(rng.uniform(-2, -1, 32))
    # 14: integers in [-8, 7] (q4_0 exact when max = -8).
    b = rng.integers(-8, 8, 32).astype(np.float64); b[0] = -8.0; blocks.append(b)
    # 15: values exactly representable in bf16 / f16 plus f16 ties (1 + 2^-11 is halfway between f16s).
    b = np.array([1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11, -(1 + 2.0 ** -11), 2049.0, 2051.0, 4097.0, 1 + 2.0 ** -8,
                  1 + 3 * 2.0 ** -8] + list(rng.normal(0, 1, 24))); blocks.append(b)
    # 16..23: plain Gaussian weights.
    for _ in range(8):
        blocks.append(rng.normal(0, 0.05, 32))
    v = np.concatenate(blocks).astype(np.float32)
    assert v.size % 32 == 0
    return v


def special_values() -> np.ndarray:
    u = np.array([
        0x00000000, 0x80000000,              # +0, -0
        0x7F800000, 0xFF800000,              # +inf, -inf
        0x7FC00000, 0xFFC00000, 0x7F800001,  # qNaN, -qNaN, sNaN (bf16 makes it quiet)
        0x7FBFFFFF,                          # NaN with only low mantissa bits
        0x00000001, 0x807FFFFF,              # f32 subnormals
        0x33800000,                          # 2^-24: smallest f16 subnormal
        0x33000000,                          # 2^-25: halfway to 0 -> rounds to even (0)
        0x33C00000,                          # 1.5·2^-24: tie -> 2^-23
        0x38800000,                          # 2^-14: smallest f16 normal
        0x387FC000,                          # largest f16 subnormal
        0x477FE000,                          # 65504: largest f16
        0x477FF000,                          # 65520: halfway to inf -> inf
        0x477FEFFF,                          # just below -> 65504
        0x7F7FFFFF, 0xFF7FFFFF,              # ±FLT_MAX (bf16 rounds to ±inf)
        0x3F808000, 0x3F818000,              # bf16 ties: 1 + 2^-8 (-> 1), 1 + 3·2^-8 (-> even up)
        0x3F808001, 0x3F807FFF,              # just above / below the bf16 tie
        0x3F800000, 0xBF800000, 0x40490FDB, 0xC0490FDB,  # ±1, ±pi
        0x00800000, 0x007FFFFF,              # smallest f32 normal, largest f32 subnormal
        0x3A800000, 0x3A801000,              # 2^-10 and an f16 tie near it
    ], dtype=np.uint32)
    return u.view(np.float32)


def write(name: str, arr: np.ndarray) -> None:
    path = os.path.join(OUT, name)
    data = np.ascontiguousarray(arr).tobytes()
    with open(path, "wb") as f:
        f.write(data)


def main() -> int:
    os.makedirs(OUT, exist_ok=True)
    v = make_values()
    write("values.f32.bin", v.view("<f4"))
    for name, t in [("f16", T.F16), ("bf16", T.BF16), ("q8_0", T.Q8_0), ("q4_0", T.Q4_0), ("q4_1", T.Q4_1)]:
        q = quantize(v, t)
        qb = q.view(np.uint8) if q.dtype != np.uint8 else q
        write(f"{name}.bin", qb)
        if t == T.F16:
            deq = q.astype(np.float32)
        else:
            deq = dequantize(qb, t).astype(np.float32)
        write(f"{name}.deq.f32.bin", deq.reshape(-1).view("<f4"))
    s = special_values()
    write("special.f32.bin", s.view("<f4"))
    with np.errstate(over="ignore", invalid="ignore"):
        h = quantize(s, T.F16)
        write("special.f16.bin", h.view(np.uint8))
        write("special.f16.deq.f32.bin", h.astype(np.float32).view("<f4"))
        b = quantize(s, T.BF16)
        write("special.bf16.bin", b)
        write("special.bf16.deq.f32.bin", dequantize(b, T.BF16).astype(np.float32).reshape(-1).view("<f4"))
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {len(os.listdir(OUT))} files, {total} bytes, {v.size} values, gguf {importlib.metadata.version('gguf')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

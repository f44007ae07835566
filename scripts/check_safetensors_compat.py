#!/usr/bin/env python3
"""Check that the Python `safetensors` package reads files written by LoRAKit's SafetensorsWriter,
and that it writes the same bytes for the same tensors.

Run by hand (not part of CI; needs `safetensors`, `numpy`, and `torch` for the bf16 tensor):

    python3 scripts/check_safetensors_compat.py            # builds nothing: runs the Swift test below
    python3 scripts/check_safetensors_compat.py DIR        # check DIR/compat.safetensors written earlier

The file is written by the Swift test `SafetensorsTests/writeCompatFile` when
LORAKIT_SAFETENSORS_COMPAT_DIR is set (the test does nothing otherwise). Without DIR the script runs

    LORAKIT_SAFETENSORS_COMPAT_DIR=<tmp> swift test -c release -Xswiftc -enable-testing \
        --scratch-path .build-h --skip-build --filter SafetensorsTests/writeCompatFile

(build the tests first). The expected tensors below must match the ones in that test.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
from safetensors import safe_open

try:
    import torch
except ImportError:  # bf16 needs torch; everything else is checked with numpy
    torch = None

METADATA = {"format": "pt", "lorakit": "compat"}


def expected():
    return {
        "weight.f32": (np.arange(15, dtype=np.float32) * 0.25 - 1.75).reshape(3, 5),
        "bias.f16": ((np.arange(5, dtype=np.float32) - 2) * 0.5).astype(np.float16),
        "emb.bf16": (np.arange(8, dtype=np.float32) * 0.125).reshape(4, 2),  # stored as bf16 (exact)
        "scalar": np.array(7.0, dtype=np.float32),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "\u00fcn\u00ef.f32": np.array([1.5, -2.5], dtype=np.float32),
    }


def run_swift_test(out_dir):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, LORAKIT_SAFETENSORS_COMPAT_DIR=out_dir)
    cmd = ["swift", "test", "-c", "release", "-Xswiftc", "-enable-testing", "--scratch-path", ".build-h",
           "--skip-build", "--filter", "SafetensorsTests/writeCompatFile"]
    subprocess.run(cmd, cwd=root, env=env, check=True)


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else None
    if out_dir is None:
        out_dir = tempfile.mkdtemp(prefix="lorakit-st-")
        run_swift_test(out_dir)
    path = os.path.join(out_dir, "compat.safetensors")
    exp = expected()
    failures = []

    # 1. The reference reader opens the file (it validates offsets, sizes, contiguity) and sees our values.
    with safe_open(path, framework="pt" if torch is not None else "np") as f:
        if f.metadata() != METADATA:
            failures.append(f"metadata {f.metadata()} != {METADATA}")
        if sorted(f.keys()) != sorted(exp):
            failures.append(f"keys {sorted(f.keys())} != {sorted(exp)}")
        for name, want in exp.items():
            if torch is None and name == "emb.bf16":
                continue
            got = f.get_tensor(name)
            if torch is not None:
                if name == "emb.bf16" and got.dtype != torch.bfloat16:
                    failures.append(f"{name}: dtype {got.dtype}, expected bfloat16")
                got = got.float().numpy() if got.dtype == torch.bfloat16 else got.numpy()
            if got.shape != want.shape or got.dtype != (np.float32 if name == "emb.bf16" else want.dtype):
                failures.append(f"{name}: {got.dtype}{list(got.shape)} vs {want.dtype}{list(want.shape)}")
            elif not np.array_equal(got, want):
                failures.append(f"{name}: values differ")

    # 2. The reference writer produces the same layout and bytes (metadata key order aside: it writes
    #    its hash map's order, we sort).
    if torch is not None:
        from safetensors.torch import save
        tensors = {k: torch.from_numpy(v.copy()) for k, v in exp.items()}
        tensors["emb.bf16"] = tensors["emb.bf16"].to(torch.bfloat16)
        ref = save(tensors, metadata=METADATA)
        ours = open(path, "rb").read()
        (n_ref,), (n_ours,) = struct.unpack("<Q", ref[:8]), struct.unpack("<Q", ours[:8])
        h_ref, h_ours = json.loads(ref[8:8 + n_ref]), json.loads(ours[8:8 + n_ours])
        if n_ref != n_ours:
            failures.append(f"header length {n_ours} vs reference {n_ref}")
        if h_ref != h_ours:
            failures.append(f"header {h_ours} vs reference {h_ref}")
        if list(h_ref) != list(h_ours):
            failures.append(f"tensor order {list(h_ours)} vs reference {list(h_ref)}")
        if ref[8 + n_ref:] != ours[8 + n_ours:]:
            failures.append("data section differs from the reference writer's")
        if ours[8:8 + n_ours].decode()[-1:] not in ("}", " "):
            failures.append("header not padded with spaces")

    if failures:
        print("FAIL\n  " + "\n  ".join(failures))
        return 1
    import safetensors
    print(f"OK: safetensors {safetensors.__version__} reads {path}"
          + (" and writes the same bytes" if torch is not None else " (bf16 and writer comparison skipped: no torch)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

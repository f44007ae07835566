#!/usr/bin/env python3
"""Generate the PEFT LoRA reference fixtures under Tests/LoRAKitTests/Fixtures/lora/.

NOT needed at CI time: the tests only read the committed outputs. Re-run only when the fixtures must
change; every output is documented in Tests/LoRAKitTests/Fixtures/lora/README.md.

Needs: Python >= 3.10, torch (CPU), transformers (written against 5.x), peft (written against 0.21),
gguf, safetensors, numpy.   python3 -m pip install torch transformers peft gguf safetensors numpy
Reads the tiny model fixtures of scripts/gen_model_fixtures.py (Fixtures/model/tiny-llama-hf and
tiny_reference.json), which must exist.

Run:  python3 scripts/gen_lora_fixtures.py      (~10 s on 2 cores; output is deterministic)

Outputs (in Fixtures/lora/):
    r4_all/          PEFT adapter (a): r=4, alpha=8 on q,k,v,o,gate,up,down
    rslora_qv/       PEFT adapter (b): rsLoRA r=8, alpha=16 on q,v
    patterns_all/    PEFT adapter (c): all-linear, r=2 / alpha=4 with rank_pattern (6) and alpha_pattern
    lora_a.gguf      adapter (a) as a llama.cpp GGUF LoRA (F32), written with the gguf package the way
                     llama.cpp's convert_lora_to_gguf.py does (lora_b of q/k rows permuted like the base)
    lora_a_q8_0.gguf the same with llama.cpp's --outtype q8_0 (lora_a Q8_0; lora_b has rows of r=4
                     values, not a multiple of 32, so the converter falls back to F16 for it)
    reference.json   PEFT logits (adapter at scale 1, at scale 0.5, merged) for the tiny_reference.json sequences
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
MODEL_DIR = REPO / "Tests" / "LoRAKitTests" / "Fixtures" / "model"
OUT = REPO / "Tests" / "LoRAKitTests" / "Fixtures" / "lora"
SEED = 20240602
TARGET_DELTA_STD = 0.015  # std of s*B@A entries; base linear weights have std 0.1

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GGUF_NAME = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}

# name -> LoraConfig kwargs
ADAPTERS = {
    "r4_all": dict(r=4, lora_alpha=8, target_modules=ALL),
    "rslora_qv": dict(r=8, lora_alpha=16, use_rslora=True, target_modules=["q_proj", "v_proj"]),
    "patterns_all": dict(
        r=2, lora_alpha=4, target_modules="all-linear",
        # PEFT matches each key k against the module's full name with re.match(rf"(.*\.)?({k})$"),
        # first matching key in dict order wins.
        rank_pattern={"q_proj": 6, "model.layers.1.mlp.down_proj": 6, r"layers\.0\.self_attn\.v_proj": 6},
        alpha_pattern={"model.layers.1.self_attn.q_proj": 20, "q_proj": 12, r"mlp\.(gate|up)_proj": 3,
                       "k_proj": 7},
    ),
}


def rnd(values, digits: int) -> list[float]:
    return [round(float(v), digits) for v in np.asarray(values, dtype=np.float64).ravel()]


def dump_json(obj, indent: int = 0) -> str:
    pad = " " * indent
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f'{pad} {json.dumps(str(k))}: {dump_json(v, indent + 1)}' for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)):
        if all(not isinstance(v, (dict, list, tuple)) for v in obj):
            return "[" + ",".join(json.dumps(v, allow_nan=False) for v in obj) + "]"
        items = [pad + " " + dump_json(v, indent + 1) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(obj, allow_nan=False)


def load_base():
    from transformers import LlamaForCausalLM
    m = LlamaForCausalLM.from_pretrained(str(MODEL_DIR / "tiny-llama-hf"), dtype=torch.float32,
                                         attn_implementation="eager")
    m.eval()
    return m


def logits_of(model, seqs) -> list[list[list[float]]]:
    out = []
    with torch.no_grad():
        for ids in seqs:
            lg = model(input_ids=torch.tensor([ids])).logits[0].float().numpy()
            out.append([rnd(row, 5) for row in lg])
    return out


def max_diff(a, b) -> float:
    return float(max(np.max(np.abs(np.array(x) - np.array(y))) for x, y in zip(a, b)))


def lora_layers(model):
    from peft.tuners.lora import LoraLayer
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp LlamaModel.permute: HF half-rotation row order -> interleaved pairs."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def write_gguf(path: Path, adapter_dir: Path, cfg: dict, alpha: float, outtype: str) -> None:
    import gguf
    from safetensors.numpy import load_file
    sd = load_file(str(adapter_dir / "adapter_model.safetensors"))
    w = gguf.GGUFWriter(str(path), "llama")  # general.architecture = llama
    # The keys convert_lora_to_gguf.py writes (general.type = adapter, adapter.type = lora, alpha f32).
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_name("tiny-llama-lora-r4")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    ftype = gguf.LlamaFileType.ALL_F32 if outtype == "f32" else gguf.LlamaFileType.MOSTLY_Q8_0
    w.add_file_type(ftype)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for layer in range(cfg["num_hidden_layers"]):
        for mod in ALL:
            sub = "self_attn" if mod in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            key = f"base_model.model.model.layers.{layer}.{sub}.{mod}"
            a = sd[f"{key}.lora_A.weight"].astype(np.float32)  # [r, in]
            b = sd[f"{key}.lora_B.weight"].astype(np.float32)  # [out, r]
            # convert_hf_to_gguf's LlamaModel permutes q/k; its LoraTorchTensor applies the row
            # reshape/swapaxes to lora_B only (lora_A has the input features as rows: unchanged).
            if mod == "q_proj":
                b = permute(b, cfg["num_attention_heads"])
            elif mod == "k_proj":
                b = permute(b, cfg["num_key_value_heads"])
            name = f"blk.{layer}.{GGUF_NAME[mod]}.weight"
            for suffix, t in ((".lora_a", a), (".lora_b", b)):
                t = np.ascontiguousarray(t)
                if outtype == "q8_0":
                    if t.shape[-1] % 32 == 0:
                        q = gguf.quants.quantize(t, gguf.GGMLQuantizationType.Q8_0)
                        w.add_tensor(name + suffix, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
                        continue
                    t = t.astype(np.float16)  # converter's fallback for rows not a multiple of 32
                w.add_tensor(name + suffix, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def check_gguf(path: Path, adapter_dir: Path, cfg: dict) -> float:
    """Read a GGUF LoRA back with gguf.GGUFReader, un-permute lora_b of q/k, compare with the PEFT A/B."""
    import gguf
    from safetensors.numpy import load_file
    sd = load_file(str(adapter_dir / "adapter_model.safetensors"))
    rd = gguf.GGUFReader(str(path))
    worst = 0.0
    for t in rd.tensors:
        layer, stem = int(t.name.split(".")[1]), t.name.split(".")[2]
        mod = next(k for k, v in GGUF_NAME.items() if v == stem)
        sub = "self_attn" if mod in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
        key = f"base_model.model.model.layers.{layer}.{sub}.{mod}"
        x = gguf.quants.dequantize(t.data, t.tensor_type).reshape([int(d) for d in reversed(t.shape)])
        if t.name.endswith("lora_b") and mod in ("q_proj", "k_proj"):
            n = cfg["num_attention_heads"] if mod == "q_proj" else cfg["num_key_value_heads"]
            x = x.reshape(n, x.shape[0] // n // 2, 2, x.shape[1]).swapaxes(1, 2).reshape(x.shape)
        want = sd[key + (".lora_A.weight" if t.name.endswith("lora_a") else ".lora_B.weight")]
        worst = max(worst, float(np.max(np.abs(x - want))))
    return worst


def main() -> None:
    if os.environ.get("PYTHONHASHSEED") != "0":
        # PEFT stores an expanded "all-linear" target_modules set as a list in set order: fix the
        # string hash seed so adapter_config.json is reproducible.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": "0"})
    import peft
    import transformers
    from peft import LoraConfig, get_peft_model

    ref = json.loads((MODEL_DIR / "tiny_reference.json").read_text())
    seqs = ref["sequences"]
    base_logits = [s["logits"] for s in ref["models"]["hf"]["sequences"]]
    cfg = json.loads((MODEL_DIR / "tiny-llama-hf" / "config.json").read_text())
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    result = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "python": sys.version.split()[0]},
        "base_model": "../model/tiny-llama-hf",
        "sequences": seqs,
        "adapters": {},
    }
    for ai, (name, kw) in enumerate(ADAPTERS.items()):
        base = load_base()
        lc = LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, **kw)
        model = get_peft_model(base, lc)
        model.eval()
        gen = torch.Generator().manual_seed(SEED + ai)
        modules = {}
        with torch.no_grad():
            for mname, m in lora_layers(model):
                A = m.lora_A["default"].weight  # [r, in]
                B = m.lora_B["default"].weight  # [out, r]
                r, n_in = A.shape
                s = float(m.scaling["default"])
                A.copy_(torch.randn(A.shape, generator=gen) / math.sqrt(n_in))
                # std(s * B @ A) = s * sqrt(r) * std(B) * std(A) = TARGET_DELTA_STD
                B.copy_(torch.randn(B.shape, generator=gen) * (TARGET_DELTA_STD / (s * math.sqrt(r) / math.sqrt(n_in))))
                full = mname.split("base_model.model.", 1)[1]
                modules[full] = {"rank": int(r), "alpha": float(m.lora_alpha["default"]), "scaling": s}
        lg = logits_of(model, seqs)
        # scale 0.5: multiply every LoRA layer's scaling by 0.5 (what LoraLayer.scale_layer(0.5) does);
        # cross-checked against set_scale("default", 0.5), which recomputes 0.5 * alpha / r (or / sqrt(r)).
        saved = {n: float(m.scaling["default"]) for n, m in lora_layers(model)}
        for _, m in lora_layers(model):
            m.scaling["default"] *= 0.5
        lg_half = logits_of(model, seqs)
        for _, m in lora_layers(model):
            m.set_scale("default", 0.5)
        lg_half2 = logits_of(model, seqs)
        assert max_diff(lg_half, lg_half2) == 0.0
        for n, m in lora_layers(model):
            m.scaling["default"] = saved[n]

        d = OUT / name
        if d.exists():
            shutil.rmtree(d)
        model.peft_config["default"].base_model_name_or_path = "tiny-llama-hf"
        model.save_pretrained(str(d))
        (d / "README.md").unlink(missing_ok=True)  # the generic model card save_pretrained adds
        saved_cfg = json.loads((d / "adapter_config.json").read_text())

        # Reload the saved folder with PEFT (keys sorted by save_pretrained, patterns re-matched in the
        # saved order) and check it reproduces the same logits and per-module ranks/alphas/scalings.
        from peft import PeftModel
        reloaded = PeftModel.from_pretrained(load_base(), str(d))
        reloaded.eval()
        reload_diff = max_diff(logits_of(reloaded, seqs), lg)
        for mname, m in lora_layers(reloaded):
            full = mname.split("base_model.model.", 1)[1]
            assert modules[full] == {"rank": int(m.r["default"]), "alpha": float(m.lora_alpha["default"]),
                                     "scaling": float(m.scaling["default"])}, full
        assert set(modules) == {n.split("base_model.model.", 1)[1] for n, _ in lora_layers(reloaded)}

        merged = model.merge_and_unload()
        lg_merged = logits_of(merged, seqs)

        result["adapters"][name] = {
            "dir": name,
            "lora_config": {k: (sorted(v) if isinstance(v, set) else v) for k, v in kw.items()},
            "target_modules_saved": saved_cfg["target_modules"],
            "modules": modules,
            "logits": lg,
            "logits_scale_0_5": lg_half,
            "logits_merged": lg_merged,
            "validation": {
                "max_abs_delta_vs_base": max_diff(lg, base_logits),
                "max_abs_delta_scale_0_5_vs_base": max_diff(lg_half, base_logits),
                "max_abs_merged_vs_unmerged": max_diff(lg_merged, lg),
                "max_abs_reloaded_vs_saved": reload_diff,
            },
        }
        print(name, result["adapters"][name]["validation"], file=sys.stderr)
        if name == "r4_all":
            write_gguf(OUT / "lora_a.gguf", d, cfg, kw["lora_alpha"], "f32")
            write_gguf(OUT / "lora_a_q8_0.gguf", d, cfg, kw["lora_alpha"], "q8_0")
            result["adapters"][name]["validation"]["gguf_f32_max_abs_vs_peft"] = check_gguf(OUT / "lora_a.gguf", d, cfg)
            result["adapters"][name]["validation"]["gguf_q8_0_max_abs_vs_peft"] = check_gguf(OUT / "lora_a_q8_0.gguf", d, cfg)

    (OUT / "reference.json").write_text(dump_json(result) + "\n", encoding="utf-8")
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            print(f"{p.relative_to(OUT)}: {p.stat().st_size} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()

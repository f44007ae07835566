#!/usr/bin/env python3
"""PEFT reference fixtures for the adapter plugins (issue 11): IA³ and DoRA, under
Tests/LoRAKitTests/Fixtures/plugins/ (documented in its README.md, which this script does not write).

NOT needed at test time: the tests read the committed outputs. Needs torch (CPU), transformers (5.x), peft
(0.21), safetensors, gguf, numpy:   python3 -m pip install torch transformers peft safetensors gguf numpy

    python3 scripts/gen_plugin_fixtures.py                 # tiny-model fixtures only (~20 s)
    python3 scripts/gen_plugin_fixtures.py "$(scripts/fetch_model.sh)"   # + SmolLM2-135M (~3 min, ~3 GB RAM)

Deterministic (re-executes itself with PYTHONHASHSEED=0, torch on 1 thread): running it again gives the
same bytes. The tiny model is Fixtures/train/model (a random LlamaConfig model with a tokenizer, made by
scripts/gen_train_fixture.py); its data is Fixtures/train/data/text.jsonl tokenized as in
Fixtures/train/examples.json.

Outputs (Fixtures/plugins/):
    tiny/ia3_kvd/           PEFT IA³ adapter (k,v,down; feed-forward down), random l ~ U(0.5, 1.5), F32
    tiny/dora_qv/           PEFT DoRA adapter (r 8, alpha 16, q,v), random A, B, m, F32
    tiny/reference.json     logits (base, adapter) for two token sequences; |merged − adapter|
    modules.bin             per-module numbers for Tests/plugins (plain C): W, x, y, dy, dx, params, grads,
                            merged W (format in the README)
    train/<run>/init|final  the adapters before/after training; train/reference.json per-step losses
    smollm2/ia3_kvd/, smollm2/dora_qv/, smollm2/reference.json   (with the GGUF path argument)
"""
from __future__ import annotations

import json
import math
import os
import struct
import sys
from pathlib import Path

if os.environ.get("PYTHONHASHSEED") != "0" or os.environ.get("RAYON_NUM_THREADS") != "1":
    os.execve(sys.executable, [sys.executable, *sys.argv],
              {**os.environ, "PYTHONHASHSEED": "0", "RAYON_NUM_THREADS": "1"})

import numpy as np
import torch

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "Tests" / "LoRAKitTests" / "Fixtures"
OUT = FIX / "plugins"
TINY = FIX / "train" / "model"
MODULE_INDEX = {"q_proj": 0, "k_proj": 1, "v_proj": 2, "o_proj": 3, "gate_proj": 4, "up_proj": 5, "down_proj": 6}

IA3_CONFIG = dict(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"])
DORA_CONFIG = dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], use_dora=True, lora_dropout=0.0)
# Token sequences for logits on the tiny model (vocab 512); no BOS added.
TINY_SEQS = [[1, 77, 301, 45, 12, 290, 8, 133, 402, 5, 66, 250, 19, 480, 3, 99],
             [200, 17, 17, 350, 42, 7, 511, 260]]
TRAIN_RUNS = {
    # run name -> (adapter kind, lr, seed). Data: text.jsonl, batch 2 × 1, seq 24, 12 steps, constant lr,
    # AdamW betas (0.9, 0.999), eps 1e-8, weight decay 0.01 on every adapter tensor, no clipping.
    "dora_qv": ("dora", 5e-3, 31),
    "ia3_kvd": ("ia3", 2e-2, 32),
}
TRAIN = dict(batch=2, seq=24, steps=12, weight_decay=0.01)


def rnd(values, digits: int = 6) -> list[float]:
    return [round(float(v), digits) for v in np.asarray(values, dtype=np.float64).ravel()]


def dump_json(obj, indent: int = 0) -> str:
    """Objects indented, arrays of numbers on one line (the convention of the other fixture folders)."""
    pad = " " * indent
    if isinstance(obj, dict):
        items = [f'{pad} {json.dumps(str(k))}: {dump_json(v, indent + 1)}' for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}" if items else "{}"
    if isinstance(obj, (list, tuple)):
        if all(not isinstance(v, (dict, list, tuple)) for v in obj):
            return "[" + ",".join(json.dumps(v, allow_nan=False) for v in obj) + "]"
        return "[\n" + ",\n".join(pad + " " + dump_json(v, indent + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj, allow_nan=False)


def load_tiny():
    from transformers import LlamaForCausalLM
    m = LlamaForCausalLM.from_pretrained(str(TINY), dtype=torch.float32, attn_implementation="eager")
    m.eval()
    return m


def make_adapter(base, kind: str, seed: int):
    """PEFT model with random non-trivial adapter weights (named_parameters order, one generator)."""
    from peft import IA3Config, LoraConfig, get_peft_model
    cfg = IA3Config(task_type="CAUSAL_LM", **IA3_CONFIG) if kind == "ia3" else \
        LoraConfig(task_type="CAUSAL_LM", bias="none", **DORA_CONFIG)
    model = get_peft_model(base, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ia3_l" in name:
                p.copy_(0.5 + torch.rand(p.shape, generator=g))            # U(0.5, 1.5)
            elif "lora_A" in name:
                torch.nn.init.kaiming_uniform_(p, a=math.sqrt(5), generator=g)  # PEFT's A init
            elif "lora_B" in name:
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * 0.1)   # U(-0.1, 0.1): B ≠ 0
            elif "lora_magnitude_vector" in name:
                p.mul_(0.8 + 0.4 * torch.rand(p.shape, generator=g))        # ‖W + sBA‖ × U(0.8, 1.2)
    model.eval()
    return model


def adapter_params(model):
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def save_adapter(model, path: Path, dtype=torch.float32) -> dict:
    """save_pretrained, then (optionally) store in `dtype` and load those exact values back into the model.
    Returns the key -> shape map of the file (and checks it against PEFT's naming)."""
    from safetensors.torch import load_file, save_file
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    (path / "README.md").unlink(missing_ok=True)   # PEFT's generated model card
    cfg_path = path / "adapter_config.json"         # no machine-specific path in the fixture
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = "model"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    f = path / "adapter_model.safetensors"
    tensors = load_file(str(f))
    if dtype != torch.float32:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
        save_file(tensors, str(f), metadata={"format": "pt"})
        from peft import set_peft_model_state_dict
        res = set_peft_model_state_dict(model, {k: v.float() for k, v in tensors.items()})
        assert not res.unexpected_keys, res.unexpected_keys
    return {k: list(v.shape) for k, v in sorted(tensors.items())}


def logits_of(model, seqs, digits=5):
    with torch.no_grad():
        return [[rnd(row, digits) for row in model(input_ids=torch.tensor([ids])).logits[0].float().numpy()]
                for ids in seqs]


def max_diff(a, b) -> float:
    return float(max(np.max(np.abs(np.array(x) - np.array(y))) for x, y in zip(a, b)))


# ---------------------------------------------------------------------------------------------------
# modules.bin: "LKPT0001", then records: u32 name length, name (UTF-8), u32 ndim, i64 dims[ndim],
# f32 data (little-endian, row-major).
# ---------------------------------------------------------------------------------------------------
class Records:
    def __init__(self):
        self.buf = bytearray(b"LKPT0001")

    def add(self, name: str, a) -> None:
        a = np.ascontiguousarray(np.asarray(a, dtype=np.float32))
        nb = name.encode()
        self.buf += struct.pack("<I", len(nb)) + nb + struct.pack("<I", a.ndim)
        self.buf += struct.pack(f"<{a.ndim}q", *a.shape) + a.astype("<f4").tobytes()


def file_suffix(param_name: str) -> str:
    """Live parameter name (inside the module) -> key suffix in adapter_model.safetensors (PEFT's
    get_peft_model_state_dict drops the adapter name; the magnitude vector also loses ".weight")."""
    n = param_name.replace(".default.weight", ".weight").replace(".default", "")
    return "lora_magnitude_vector" if n == "lora_magnitude_vector.weight" else n


def module_cases(rec: Records, model, kind: str, picks, seq, cases: list) -> list[dict]:
    """For each (layer, module) in picks: the module input x PEFT's model feeds it (hook on a forward over
    seq), the module output y, and for a random dy: ∂L/∂x and ∂L/∂params of L = Σ y ⊙ dy, computed by
    autograd on the PEFT layer alone; and PEFT's merged weight."""
    import copy
    inputs = {}
    layers = model.base_model.model.model.layers
    hooks = []
    for layer, mod in picks:
        sub = layers[layer].self_attn if mod in ("q_proj", "k_proj", "v_proj", "o_proj") else layers[layer].mlp
        m = getattr(sub, mod)
        hooks.append(m.register_forward_hook(lambda mm, args, out, key=(layer, mod): inputs.__setitem__(key, args[0][0].detach().clone())))
    with torch.no_grad():
        model(input_ids=torch.tensor([seq]))
    for h in hooks:
        h.remove()
    g = torch.Generator().manual_seed(4242 + len(cases))
    info = []
    for layer, mod in picks:
        sub = layers[layer].self_attn if mod in ("q_proj", "k_proj", "v_proj", "o_proj") else layers[layer].mlp
        m = getattr(sub, mod)
        x = inputs[(layer, mod)].clone().requires_grad_(True)
        params = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
        for _, p in params:
            p.grad = None
        y = m(x)
        dy = torch.randn(y.shape, generator=g)
        (y * dy).sum().backward()
        ci = len(cases)
        W = m.base_layer.weight.detach()
        if kind == "ia3":
            ff = int(m.is_feedforward)
            cases.append([0, layer, MODULE_INDEX[mod], ff, 0, 0, 0])
        else:
            cases.append([1, layer, MODULE_INDEX[mod], 0, m.r["default"], m.lora_alpha["default"],
                          int(DORA_CONFIG.get("use_rslora", False))])
        rec.add(f"case{ci}.W", W)
        rec.add(f"case{ci}.x", x.detach())
        rec.add(f"case{ci}.y", y.detach())
        rec.add(f"case{ci}.dy", dy)
        rec.add(f"case{ci}.dx", x.grad)
        for n, p in params:
            key = file_suffix(n)
            rec.add(f"case{ci}.param.{key}", p.detach())
            rec.add(f"case{ci}.grad.{key}", p.grad)
        mc = copy.deepcopy(m)
        mc.merge()
        rec.add(f"case{ci}.W_merged", mc.base_layer.weight.detach())
        info.append({"case": ci, "type": kind, "module": f"model.layers.{layer}.{mod}",
                     "params": [file_suffix(n) for n, _ in params],
                     "max_abs_y": float(y.abs().max()), "max_abs_dx": float(x.grad.abs().max())})
    return info


# ---------------------------------------------------------------------------------------------------
# Training (the loop of Fixtures/train/README.md: rows alone, loss = Σ target NLL / N per step)
# ---------------------------------------------------------------------------------------------------
def row_nll_sum(model, ids, flags):
    import torch.nn.functional as F
    x = torch.tensor([ids])
    logits = model(input_ids=x).logits[0]
    nll = F.cross_entropy(logits[:-1], x[0, 1:], reduction="none")
    return nll[torch.tensor(flags[1:], dtype=torch.bool)].sum()


def train_run(name: str, kind: str, lr: float, seed: int) -> dict:
    from peft import PeftModel
    examples = json.loads((FIX / "train" / "examples.json").read_text())["text.jsonl"]["examples"]
    cut = [(e["ids"][:TRAIN["seq"]], e["targets"][:TRAIN["seq"]]) for e in examples]
    run_dir = OUT / "train" / name
    init_model = make_adapter(load_tiny(), kind, seed)
    save_adapter(init_model, run_dir / "init")
    model = PeftModel.from_pretrained(load_tiny(), str(run_dir / "init"), is_trainable=True)
    for (n1, p1), (n2, p2) in zip(adapter_params(init_model), adapter_params(model)):
        assert n1 == n2 and torch.equal(p1, p2), n1
    model.train()
    named = adapter_params(model)
    params = [p for _, p in named]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=TRAIN["weight_decay"])
    n_ex, b = len(cut), TRAIN["batch"]
    stream = (list(range(s, min(s + b, n_ex))) for _ in iter(int, 1) for s in range(0, n_ex, b))
    steps = []
    for step in range(TRAIN["steps"]):
        mb = next(stream)
        n_tgt = sum(sum(cut[i][1][1:]) for i in mb)
        opt.zero_grad(set_to_none=True)
        loss = 0.0
        for i in mb:
            s = row_nll_sum(model, *cut[i]) / n_tgt
            s.backward()
            loss += s.item()
        gn = float(torch.nn.utils.get_total_norm([p.grad for p in params]))
        opt.step()
        steps.append({"step": step, "loss": float(f"{loss:.9g}"), "grad_norm": float(f"{gn:.7g}"),
                      "n_target_tokens": n_tgt, "examples": mb})
        print(f"[{name}] step {step:2d} loss {loss:.7f} grad_norm {gn:.5f}", flush=True)
    save_adapter(model, run_dir / "final")
    moved = max(float((p - q).abs().max()) for (_, p), (_, q) in zip(named, adapter_params(init_model)))
    return {"adapter": kind, "config": IA3_CONFIG if kind == "ia3" else DORA_CONFIG, "lr": lr, "seed": seed,
            "schedule": "constant", "betas": [0.9, 0.999], "eps": 1e-8, **TRAIN, "max_grad_norm": 0,
            "data": "train/data/text.jsonl (ids and targets: train/examples.json)", "init": f"train/{name}/init",
            "final": f"train/{name}/final", "max_abs_param_change": moved, "steps": steps}


# ---------------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct (dequantized Q4_1 GGUF)
# ---------------------------------------------------------------------------------------------------
def perplexity(model, ids, window=512):
    nll, n, first = 0.0, 0, None
    with torch.no_grad():
        for s in range(0, len(ids), window):
            w = ids[s:s + window]
            if len(w) < 2:
                break
            lp = torch.log_softmax(model(torch.tensor([w])).logits[0].double()[:-1], -1)
            tok = -lp[torch.arange(len(w) - 1), torch.tensor(w[1:])]
            if first is None:
                first = tok[:64].tolist()
            nll += tok.sum().item()
            n += len(w) - 1
    return math.exp(nll / n), n, first


def smollm2(gguf_path: Path) -> dict:
    from transformers import AutoModelForCausalLM
    ids = json.loads((FIX / "model" / "smollm2_reference.json").read_text())["scoring"]["ids"]
    out = {}
    for name, kind, seed, dtype in (("ia3_kvd", "ia3", 51, torch.float32), ("dora_qv", "dora", 52, torch.bfloat16)):
        base = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                    dtype=torch.float32, attn_implementation="eager")
        model = make_adapter(base, kind, seed)
        keys = save_adapter(model, OUT / "smollm2" / name, dtype)
        model.eval()
        ppl_a, n, nll_a = perplexity(model, ids)
        with model.disable_adapter():
            ppl_b, _, nll_b = perplexity(model, ids)
        merged = model.merge_and_unload()
        ppl_m, _, _ = perplexity(merged, ids)
        out[name] = {"perplexity_base": ppl_b, "perplexity_adapter": ppl_a, "perplexity_merged": ppl_m,
                     "predicted": n, "token_nll_adapter_first64": rnd(nll_a, 6),
                     "token_nll_base_first64": rnd(nll_b, 6), "stored_as": str(dtype).replace("torch.", ""),
                     "n_keys": len(keys)}
        print(f"[smollm2 {name}] ppl base {ppl_b:.5f} adapter {ppl_a:.5f} merged {ppl_m:.5f}", flush=True)
        del base, model, merged
    return out


def versions() -> dict:
    import peft
    import transformers
    return {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__,
            "peft": peft.__version__, "numpy": np.__version__, "python": sys.version.split()[0]}


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    ref = {"versions": versions(), "model": "train/model (hidden 64, 2 layers, vocab 512)", "sequences": TINY_SEQS}
    rec, cases, module_info = Records(), [], []
    base_logits = logits_of(load_tiny(), TINY_SEQS)
    ref["base_logits"] = base_logits
    for name, kind, seed in (("ia3_kvd", "ia3", 21), ("dora_qv", "dora", 22)):
        model = make_adapter(load_tiny(), kind, seed)
        keys = save_adapter(model, OUT / "tiny" / name)
        lg = logits_of(model, TINY_SEQS)
        picks = [(0, "k_proj"), (1, "v_proj"), (0, "down_proj"), (1, "down_proj")] if kind == "ia3" else \
            [(0, "q_proj"), (1, "v_proj")]
        module_info += module_cases(rec, model, kind, picks, TINY_SEQS[0], cases)
        merged = model.merge_and_unload()
        lm = logits_of(merged, TINY_SEQS)
        ref[name] = {"keys": keys, "logits": lg,
                     "max_abs_diff_adapter_vs_base": max_diff(lg, base_logits),
                     "max_abs_diff_merged_vs_adapter": max_diff(lm, lg)}
        print(f"[tiny {name}] |adapter - base| {ref[name]['max_abs_diff_adapter_vs_base']:.4f}, "
              f"|merged - adapter| {ref[name]['max_abs_diff_merged_vs_adapter']:.2e}", flush=True)
    rec.add("cases", np.array(cases, dtype=np.float32))
    (OUT / "modules.bin").write_bytes(bytes(rec.buf))
    ref["module_cases"] = module_info
    (OUT / "tiny" / "reference.json").write_text(dump_json(ref) + "\n")

    train = {"versions": versions(), "runs": {n: train_run(n, *spec) for n, spec in TRAIN_RUNS.items()}}
    (OUT / "train" / "reference.json").write_text(dump_json(train) + "\n")

    if len(sys.argv) > 1:
        real = {"versions": versions(), "model": Path(sys.argv[1]).name,
                "ids_from": "model/smollm2_reference.json scoring.ids", "window": 512, **smollm2(Path(sys.argv[1]))}
        (OUT / "smollm2" / "reference.json").write_text(dump_json(real) + "\n")


if __name__ == "__main__":
    main()

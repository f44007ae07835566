#!/usr/bin/env python3
"""Reference for merging a LoRA adapter into the real quantized model (issue: "a Q4_1 model merged to f32
matches the perplexity PEFT computes on the dequantized base within 0.05%").

    python3 scripts/gen_real_lora_fixture.py "$(scripts/fetch_model.sh)"

Loads SmolLM2-135M-Instruct Q4_1 with transformers (every tensor dequantized to float32), wraps it with a
PEFT LoRA (r=8, alpha=16, q_proj and v_proj, seeded random A and B so the adapter matters), saves the adapter
in bf16 (small; the reference uses exactly the saved bf16 values) under Tests/LoRAKitTests/Fixtures/lora_real/
smollm2_qv/, and writes reference.json there with the perplexity PEFT computes on the committed score text
(transformers' token ids from smollm2_reference.json, windows of 512, each alone, every position but the
first predicted), with and without the adapter. Needs torch, transformers, peft, accelerate, gguf.
"""
import json
import math
import sys
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "Tests" / "LoRAKitTests" / "Fixtures"
OUT = FIX / "lora_real" / "smollm2_qv"


def perplexity(model, ids, window=512):
    nll, n = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(ids), window):
            w = ids[s:s + window]
            if len(w) < 2:
                break
            logits = model(torch.tensor([w])).logits[0].double()
            lp = torch.log_softmax(logits[:-1], -1)
            nll -= lp[torch.arange(len(w) - 1), torch.tensor(w[1:])].sum().item()
            n += len(w) - 1
    return math.exp(nll / n), n


def main():
    gguf = Path(sys.argv[1])
    torch.manual_seed(1234)
    base = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
                                                attn_implementation="eager")
    ids = json.loads((FIX / "model" / "smollm2_reference.json").read_text())["scoring"]["ids"]
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, bias="none",
                     task_type="CAUSAL_LM")
    model = get_peft_model(base, cfg)
    g = torch.Generator().manual_seed(99)
    for name, p in model.named_parameters():
        if "lora_A" in name:
            p.data = torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1])
        elif "lora_B" in name:
            p.data = torch.randn(p.shape, generator=g) * 0.02
    OUT.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(OUT))
    (OUT / "README.md").unlink(missing_ok=True)  # PEFT's generated model card
    # Store in bf16 and reload those exact values into the model, so the reference uses what is committed.
    f = OUT / "adapter_model.safetensors"
    tensors = {k: v.to(torch.bfloat16) for k, v in load_file(str(f)).items()}
    save_file(tensors, str(f), metadata={"format": "pt"})
    sd = {k.replace(".weight", ".default.weight"): v.float() for k, v in tensors.items()}
    missing = model.load_state_dict(sd, strict=False)
    assert not [k for k in missing.unexpected_keys], missing.unexpected_keys
    model.eval()
    ppl_adapter, n = perplexity(model, ids)
    with model.disable_adapter():
        ppl_base, _ = perplexity(model, ids)
    merged = model.merge_and_unload()
    ppl_merged, _ = perplexity(merged, ids)
    ref = {"perplexity_base": ppl_base, "perplexity_adapter": ppl_adapter, "perplexity_merged": ppl_merged,
           "predicted": n, "window": 512, "ids_from": "model/smollm2_reference.json scoring.ids",
           "adapter": "r=8 alpha=16 q_proj,v_proj, A ~ N(0, 1/in), B ~ N(0, 0.02^2), seed 99, stored as bf16",
           "versions": {"torch": torch.__version__}}
    (OUT.parent / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    print(json.dumps(ref, indent=1))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Load PEFT folders written by LoRAKit's Swift writer with PEFT and compare their logits with
Tests/LoRAKitTests/Fixtures/lora/reference.json. Run by hand (needs torch, transformers, peft):

    LORAKIT_LORA_EXPORT=/tmp/lora-export swift test ... --filter LoRAFileTests/exportForPEFTCheck
    python3 scripts/check_peft_export.py /tmp/lora-export

A folder named <adapter>[_suffix] is compared with reference.json's <adapter> logits.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel
from transformers import LlamaForCausalLM

REPO = Path(__file__).resolve().parent.parent
FIX = REPO / "Tests" / "LoRAKitTests" / "Fixtures"
ref = json.loads((FIX / "lora" / "reference.json").read_text())
worst_all = 0.0
for d in sorted(p for p in Path(sys.argv[1]).iterdir() if p.is_dir()):
    name = next(a for a in ref["adapters"] if d.name.startswith(a))
    base = LlamaForCausalLM.from_pretrained(str(FIX / "model" / "tiny-llama-hf"), dtype=torch.float32,
                                            attn_implementation="eager")
    m = PeftModel.from_pretrained(base, str(d)).eval()
    worst = 0.0
    with torch.no_grad():
        for ids, want in zip(ref["sequences"], ref["adapters"][name]["logits"]):
            got = m(input_ids=torch.tensor([ids])).logits[0].numpy()
            worst = max(worst, float(np.max(np.abs(got - np.array(want)))))
    cfg = json.loads((d / "adapter_config.json").read_text())
    print(f"{d.name}: vs reference {name}: max |dlogit| {worst:.2e} (r={cfg['r']}, lora_alpha={cfg['lora_alpha']}, "
          f"rank_pattern={len(cfg['rank_pattern'])}, alpha_pattern={len(cfg['alpha_pattern'])}, use_rslora={cfg['use_rslora']})")
    worst_all = max(worst_all, worst)
print("OK" if worst_all < 1e-4 else "FAIL", worst_all)
sys.exit(0 if worst_all < 1e-4 else 1)

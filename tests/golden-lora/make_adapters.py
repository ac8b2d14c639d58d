"""Makes the PEFT LoRA adapters of tests/golden-lora with peft (seeded, non-zero B).

Run by make_golden.sh; the adapters are trained on nothing: `init_lora_weights=False` draws
both A and B at random, so every targeted weight really changes.
"""
import json
import sys
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

torch.set_num_threads(1)
here = Path(__file__).resolve().parent
models = here.parent / "golden" / "models"
out = here / "adapters"

CASES = {
    # Plain LoRA on three projections: scale = alpha / r.
    "plain": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]),
    # rsLoRA (alpha / sqrt(r)) with per-module ranks and alphas; a pattern naming one layer.
    "patterns": dict(
        r=4,
        lora_alpha=6,
        use_rslora=True,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj"],
        rank_pattern={"k_proj": 2, "model.layers.1.mlp.down_proj": 6},
        alpha_pattern={"o_proj": 3, "gate_proj": 16},
    ),
    # An embedding LoRA plus a module saved whole (lm_head).
    "embed": dict(
        r=3, lora_alpha=5, target_modules=["embed_tokens", "up_proj"], modules_to_save=["lm_head"]
    ),
}

for i, (name, kw) in enumerate(CASES.items()):
    torch.manual_seed(1234 + i)
    model = AutoModelForCausalLM.from_pretrained(models / "base-f32", dtype=torch.float32)
    cfg = LoraConfig(init_lora_weights=False, task_type="CAUSAL_LM", **kw)
    peft_model = get_peft_model(model, cfg)
    if name == "embed":
        # modules_to_save starts as a copy of lm_head: make it differ.
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "modules_to_save" in n:
                    p.add_(torch.randn_like(p) * 0.05)
    peft_model.save_pretrained(out / name, safe_serialization=True)
print("adapters written", file=sys.stderr)

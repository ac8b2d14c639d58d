#!/usr/bin/env bash
# Regenerates the float64-arithmetic golden cases with mergekit 0.1.5:
#   tests/golden-f64/make_golden.sh ~/mk
# models/f64-{a,b,c} are three tiny seeded LlamaForCausalLM (1 layer, hidden 16, vocabulary
# 1040 so the embedding has more elements than one chunk of amalgam's elementwise path, tied
# embeddings) saved in float64; models/f32-{a,b,c} are the same models saved in float32.
# Each <case>.yml is merged by mergekit into expected/<case>: linear (normalize true and false)
# of three models, task_arithmetic (a base and two models, with lambda or normalize) and
# passthrough (with scale), from float64 inputs (mergekit computes in f64 because the inputs
# are f64) and from float32 inputs with `dtype: float64`, written as float64 (the default) or
# float32 (`out_dtype: float32`). PYTHONHASHSEED=0 and one torch thread, so the bits do not
# depend on the machine. Compared by crates/amalgam-cli/tests/golden_f64.rs.
set -euo pipefail
mk=${1:-$HOME/mk}
cd "$(dirname "$0")"
rm -rf models expected
export PYTHONHASHSEED=0 OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
"$mk/bin/python" - <<'PY'
import os, torch
from transformers import LlamaConfig, LlamaForCausalLM
torch.set_num_threads(1)
for name, seed in (("a", 1), ("b", 2), ("c", 3)):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=1040, hidden_size=16, intermediate_size=16,
                      num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=64, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    # Values of full f64 precision (not f32 values widened), so f64 arithmetic shows.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    for dt, tag in ((torch.float64, "f64"), (torch.float32, "f32")):
        model.to(dt).save_pretrained(f"models/{tag}-{name}")
        os.remove(f"models/{tag}-{name}/generation_config.json")
PY
for cfg in *.yml; do
  case=${cfg%.yml}
  "$mk/bin/mergekit-yaml" "$cfg" "expected/$case" --no-copy-tokenizer --no-write-model-card
done
"$mk/bin/python" - <<'PY' > expected/versions.json
import json, importlib.metadata as m, torch
print(json.dumps({"mergekit": m.version("mergekit"), "torch": torch.__version__,
                  "transformers": m.version("transformers"), "safetensors": m.version("safetensors"),
                  "torch_threads": 1, "PYTHONHASHSEED": 0}, indent=2))
PY

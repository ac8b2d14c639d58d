#!/usr/bin/env bash
# Regenerates the whole-MoE golden case with mergekit 0.1.5 and transformers:
#   tests/golden-moe/make_golden.sh ~/mk
# models/a and models/b are two tiny seeded MixtralForCausalLM (2 layers, 4 experts, hidden 32)
# as transformers' save_pretrained writes them (per-expert `block_sparse_moe.experts.E.wN`
# tensors); models/a-fused and models/b-fused hold the same weights in the fused layout
# transformers 5 uses in memory (`mlp.experts.gate_up_proj` / `down_proj`), saved from the
# model's state_dict. mergekit merges linear.yml and ties.yml from the per-expert inputs into
# expected/<name>, and from the fused inputs into a scratch folder: the script fails unless
# both give the same bytes (mergekit reads both layouts). expected/<name>-per-expert is
# mergekit's tensors loaded into a transformers model and saved with save_pretrained (its
# per-expert layout), the reference for `amalgam merge --moe-layout per-expert`.
# expected/linear-out-f64 is linear.yml written as float64 (`out_dtype: float64`).
# PYTHONHASHSEED=0 and one torch thread, so the bits do not depend on the machine. Compared by
# crates/amalgam-cli/tests/golden_moe.rs.
set -euo pipefail
mk=${1:-$HOME/mk}
cd "$(dirname "$0")"
rm -rf models expected
export PYTHONHASHSEED=0 OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
"$mk/bin/python" - <<'PY'
import os, shutil, torch
from safetensors.torch import save_file
from transformers import MixtralConfig, MixtralForCausalLM
torch.set_num_threads(1)
for name, seed in (("a", 1), ("b", 2)):
    torch.manual_seed(seed)
    cfg = MixtralConfig(vocab_size=32, hidden_size=32, intermediate_size=8,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                        num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=64,
                        tie_word_embeddings=False)
    model = MixtralForCausalLM(cfg)
    model.save_pretrained(f"models/{name}")
    os.remove(f"models/{name}/generation_config.json")
    fused = f"models/{name}-fused"
    os.makedirs(fused)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, f"{fused}/model.safetensors", metadata={"format": "pt"})
    shutil.copy(f"models/{name}/config.json", fused)
PY
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for m in linear ties; do
  "$mk/bin/mergekit-yaml" $m.yml expected/$m --no-copy-tokenizer --no-write-model-card
  sed 's#models/a$#models/a-fused#; s#models/b$#models/b-fused#' $m.yml > "$scratch/$m.yml"
  "$mk/bin/mergekit-yaml" "$scratch/$m.yml" "$scratch/$m" --no-copy-tokenizer \
    --no-write-model-card
  cmp expected/$m/model.safetensors "$scratch/$m/model.safetensors"
  "$mk/bin/python" - "$m" <<'PY'
import os, sys, torch
from safetensors.torch import load_file
from transformers import MixtralConfig, MixtralForCausalLM
m = sys.argv[1]
# A model built from its config (not loaded from a fused checkpoint) is saved by transformers in
# the per-expert layout, which is its own split of the fused tensors.
model = MixtralForCausalLM(MixtralConfig.from_pretrained(f"expected/{m}"))
model.load_state_dict(load_file(f"expected/{m}/model.safetensors"), strict=True)
model.save_pretrained(f"expected/{m}-per-expert")
os.remove(f"expected/{m}-per-expert/generation_config.json")
PY
done
# out_dtype: float64 (merged in f32, written as F64).
"$mk/bin/mergekit-yaml" linear-out-f64.yml expected/linear-out-f64 --no-copy-tokenizer \
  --no-write-model-card
"$mk/bin/python" - <<'PY' > expected/versions.json
import json, importlib.metadata as m, torch
print(json.dumps({"mergekit": m.version("mergekit"), "torch": torch.__version__,
                  "transformers": m.version("transformers"), "safetensors": m.version("safetensors"),
                  "torch_threads": 1, "PYTHONHASHSEED": 0}, indent=2))
PY

#!/usr/bin/env bash
# Regenerates models/ and expected/ with mergekit 0.1.5 (`modules:` configs):
#   tests/golden-modules/make_golden.sh ~/mk
# The Llama cases read the tiny models of tests/golden/models. models/mistral3-{a,b} are two tiny
# random Mistral3ForConditionalGeneration checkpoints (a multi-module architecture in mergekit),
# made here with transformers. PYTHONHASHSEED=0 (mergekit orders models through a Python set)
# and one torch thread, so the bits do not depend on the machine. Compared by
# crates/amalgam-cli/tests/golden_modules.rs.
set -euo pipefail
mk=${1:-$HOME/mk}
cd "$(dirname "$0")"
rm -rf expected models
mkdir -p expected models
export PYTHONHASHSEED=0 OMP_NUM_THREADS=1
"$mk/bin/python" - <<'PY'
import torch
from transformers import Mistral3Config, Mistral3ForConditionalGeneration, MistralConfig, PixtralVisionConfig
torch.set_num_threads(1)
for i, name in enumerate(["mistral3-a", "mistral3-b"]):
    torch.manual_seed(100 + i)
    text = MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                         vocab_size=64, max_position_embeddings=64)
    vision = PixtralVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=4, head_dim=8, image_size=16, patch_size=8)
    cfg = Mistral3Config(text_config=text, vision_config=vision, spatial_merge_size=1,
                         image_token_index=63)
    model = Mistral3ForConditionalGeneration(cfg).to(torch.bfloat16)
    model.save_pretrained(f"models/{name}")
    # mergekit's tagalong files for Mistral3 (copied from the donor); tiny stand-ins that
    # tell the two models apart.
    for f, cls in [("preprocessor_config.json", "image_processor_type"),
                   ("processor_config.json", "processor_class")]:
        with open(f"models/{name}/{f}", "w") as fp:
            fp.write('{\n  "%s": "Pixtral",\n  "patch_size": 8,\n  "model": "%s"\n}\n' % (cls, name))
PY
for case in default-slices default-models vlm-models vlm-slices vlm-top-models; do
  "$mk/bin/mergekit-yaml" "$case.yml" "expected/$case" --no-copy-tokenizer
done
# Only the text decoder named: mergekit writes its tensors and no others; the names it wrote
# are kept (amalgam refuses the config, see golden_modules.rs).
"$mk/bin/mergekit-yaml" vlm-partial.yml expected/vlm-partial-out --no-copy-tokenizer
"$mk/bin/python" - <<'PY' > expected/vlm-partial.tensors
from safetensors import safe_open
print("\n".join(sorted(safe_open("expected/vlm-partial-out/model.safetensors", "pt").keys())))
PY
rm -rf expected/vlm-partial-out
# Rejected configs: mergekit's last error line.
for case in reject-duplicate reject-vlm-default; do
  if "$mk/bin/mergekit-yaml" "$case.yml" "expected/$case" --no-copy-tokenizer \
      > "expected/$case.log" 2>&1; then
    echo "$case: mergekit accepted it" >&2
    exit 1
  fi
  grep -E "Error|error" "expected/$case.log" | tail -1 > "expected/$case.error"
  rm -rf "expected/$case" "expected/$case.log"
done
"$mk/bin/python" - <<'PY' > expected/versions.json
import json, importlib.metadata as m, torch
print(json.dumps({"mergekit": m.version("mergekit"), "torch": torch.__version__,
                  "transformers": m.version("transformers"), "torch_threads": 1,
                  "PYTHONHASHSEED": 0}, indent=2))
PY

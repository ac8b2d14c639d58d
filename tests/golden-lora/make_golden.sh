#!/usr/bin/env bash
# Regenerates adapters/ (peft) and expected/ (mergekit 0.1.5) for crates/amalgam-cli/tests/golden_lora.rs:
#   tests/golden-lora/make_golden.sh ~/mk
# The base models are tests/golden/models (tiny Llamas). PYTHONHASHSEED=0 and one torch thread,
# so the bits do not depend on the machine.
set -euo pipefail
mk=${1:-$HOME/mk}
cd "$(dirname "$0")"
export PYTHONHASHSEED=0 OMP_NUM_THREADS=1
rm -rf adapters expected
"$mk/bin/python" make_adapters.py
# peft writes a model card and the absolute path of the base model: neither is read back.
for a in adapters/*; do
  rm -f "$a/README.md"
  sed -i 's|"base_model_name_or_path": ".*"|"base_model_name_or_path": "../golden/models/base-f32"|' "$a/adapter_config.json"
done
cache=$(mktemp -d)
trap 'rm -rf "$cache"' EXIT
run() { # name config [extra mergekit options]
  local name=$1 cfg=$2; shift 2
  "$mk/bin/mergekit-yaml" "$cfg" "expected/$name" --lora-merge-cache "$cache/$name" \
    --no-copy-tokenizer --no-write-model-card "$@"
}
for c in configs/*.yml; do
  [ "$c" = configs/side-files.yml ] || run "$(basename "$c" .yml)" "$c"
done
# With the model card and the donor's tokenizer (peft's merged copy has none, so mergekit saves
# the donor's tokenizer again with transformers). `./adapters/...` keeps the card from asking
# the Hub whether `adapters/plain` is a repository.
"$mk/bin/mergekit-yaml" configs/side-files.yml expected/side-files --lora-merge-cache "$cache/side"
# The LoRA merged in float32 into the bfloat16 base (`--lora-merge-dtype`): a float32 merge
# then sees W + delta unrounded to bfloat16.
run linear-bf16-base-mergef32 configs/linear-bf16-base.yml --lora-merge-dtype float32
"$mk/bin/python" - <<'PY' > expected/versions.json
import json, importlib.metadata as m, torch
print(json.dumps({"mergekit": m.version("mergekit"), "peft": m.version("peft"),
                  "torch": torch.__version__, "transformers": m.version("transformers"),
                  "torch_threads": 1, "PYTHONHASHSEED": 0}, indent=2))
PY

#!/usr/bin/env bash
# Regenerates expected/ with mergekit 0.1.5: `override_architecture` on the first (donor) model,
# which makes the two models of different architectures (so --allow-crimes is needed) and sets
# the output config.json's `architectures`. Without --allow-crimes mergekit refuses the config
# (expected/refused.txt keeps its message).
#   tests/golden-override/make_golden.sh ~/mk
set -euo pipefail
mk=${1:-$HOME/mk}
cd "$(dirname "$0")"
rm -rf expected && mkdir -p expected
export PYTHONHASHSEED=0 OMP_NUM_THREADS=1
if "$mk/bin/mergekit-yaml" override.yml expected/without-flag 2> expected/stderr.txt; then
  echo "mergekit merged without --allow-crimes" >&2; exit 1
fi
grep -o "Must specify --allow-crimes[^\"']*" expected/stderr.txt | head -1 > expected/refused.txt
rm -rf expected/stderr.txt expected/without-flag
"$mk/bin/mergekit-yaml" override.yml expected/merged --allow-crimes --no-copy-tokenizer \
  --no-write-model-card
"$mk/bin/python" -c 'import json, importlib.metadata as m, torch; print(json.dumps({"mergekit": m.version("mergekit"), "torch": torch.__version__, "torch_threads": 1, "PYTHONHASHSEED": 0}, indent=2))' > expected/versions.json

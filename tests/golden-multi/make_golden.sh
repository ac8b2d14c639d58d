#!/usr/bin/env bash
# Regenerates expected/ with mergekit-multi 0.1.5 (mergekit's own multi-document runner):
#   tests/golden-multi/make_golden.sh ~/mk
# PYTHONHASHSEED=0 (mergekit orders models through a Python set) and one torch thread, so the
# bits do not depend on the machine. Tensors are compared by crates/amalgam-cli/tests/golden_multi.rs.
set -euo pipefail
mk=${1:-$HOME/mk}
cd "$(dirname "$0")"
rm -rf expected
export PYTHONHASHSEED=0 OMP_NUM_THREADS=1
"$mk/bin/mergekit-multi" two-steps.yml --intermediate-dir expected/intermediate \
  --out-path expected/final --no-copy-tokenizer --no-write-model-card
"$mk/bin/python" - <<'PY' > expected/versions.json
import json, importlib.metadata as m, torch
print(json.dumps({"mergekit": m.version("mergekit"), "torch": torch.__version__,
                  "torch_threads": 1, "PYTHONHASHSEED": 0}, indent=2))
PY

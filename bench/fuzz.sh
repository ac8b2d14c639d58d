#!/usr/bin/env bash
# Longer runs of the seeded mutation fuzz loops that CI runs for 3 s each: the YAML reader
# (crates/amalgam-config/tests/yaml_reader.rs, fuzz_yaml_reader) and the safetensors header
# parser (crates/amalgam-io/tests/hostile.rs, fuzz_safetensors_header). A failure prints the
# input that panicked; the same seed replays the same inputs.
# Usage: bench/fuzz.sh [seconds-per-target] [first-seed] [rounds]   (defaults: 300, 1, 1)
# Each round uses the next seed.
set -euo pipefail
SECS=${1:-300}
SEED=${2:-1}
ROUNDS=${3:-1}
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1}
for ((r = 0; r < ROUNDS; r++)); do
  s=$((SEED + r))
  echo "== seed $s, ${SECS}s per target"
  AMALGAM_FUZZ_SECS=$SECS AMALGAM_FUZZ_SEED=$s \
    cargo test --release -q -p amalgam-config --test yaml_reader fuzz_yaml_reader
  AMALGAM_FUZZ_SECS=$SECS AMALGAM_FUZZ_SEED=$s \
    cargo test --release -q -p amalgam-io --test hostile fuzz_safetensors_header
done

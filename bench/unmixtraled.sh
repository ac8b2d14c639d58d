#!/usr/bin/env bash
# The Unmixtraled lerp on a generated Mixtral: one pass (`#expert=K` references) against the two
# steps that were used in 2024 (extract 8 dense experts, then merge them), for both mergekit
# versions' arithmetic. Reports wall time, peak RSS, and bytes read from / written to disk as the
# kernel counts them (/usr/bin/time %I/%O, 512-byte blocks) with the page cache dropped before
# each step when that is allowed (root), so reads are real disk reads.
#
# Usage: bench/unmixtraled.sh [work-dir]   (default /tmp/amalgam-unmix-bench)
# Env: HIDDEN (512), INTER (1792), LAYERS (6), VOCAB (8192), EXPERTS (8)
set -euo pipefail
WORK=${1:-/tmp/amalgam-unmix-bench}
HIDDEN=${HIDDEN:-512}; INTER=${INTER:-1792}; LAYERS=${LAYERS:-6}; VOCAB=${VOCAB:-8192}; EXPERTS=${EXPERTS:-8}
cd "$(dirname "$0")/.."
cargo build --release -q -p amalgam-cli --bin amalgam --example make_bench_models
BIN=$PWD/target/release/amalgam
GEN=$PWD/target/release/examples/make_bench_models
MIX="$WORK/mixtral"
[ -d "$MIX" ] || "$GEN" mixtral "$MIX" "$HIDDEN" "$INTER" "$LAYERS" "$VOCAB" "$EXPERTS"
echo "Mixtral: $(du -sb "$MIX" | cut -f1) bytes, $EXPERTS experts, $LAYERS layers"

drop() { sync; if [ -w /proc/sys/vm/drop_caches ]; then echo 1 > /proc/sys/vm/drop_caches; fi; }
# run LABEL CMD...: prints "LABEL wall_s peak_MiB read_MB written_MB"
run() {
  local label=$1; shift
  drop
  /usr/bin/time -f "%e %M %I %O" -o "$WORK/t" "$@" > /dev/null 2> "$WORK/err" || { cat "$WORK/err"; exit 1; }
  sync
  read -r e m i o < "$WORK/t"
  printf "%-28s %8.2f s %8d MiB %10.1f MB read %10.1f MB written\n" "$label" "$e" $((m / 1024)) \
    "$(awk "BEGIN{print $i*512/1e6}")" "$(awk "BEGIN{print $o*512/1e6}")"
}

twostep_cfg="$WORK/two-step.yml"; onepass_cfg="$WORK/one-pass.yml"
{ echo "models:"; for k in $(seq 0 $((EXPERTS - 1))); do echo "  - model: $WORK/experts/expert-$k"; echo "    parameters: {weight: $(awk "BEGIN{print 1/$EXPERTS}")}"; done
  echo "merge_method: linear"; echo "dtype: float16"; } > "$twostep_cfg"
{ echo "models:"; for k in $(seq 0 $((EXPERTS - 1))); do echo "  - model: $MIX#expert=$k"; echo "    parameters: {weight: $(awk "BEGIN{print 1/$EXPERTS}")}"; done
  echo "merge_method: linear"; echo "dtype: float16"; } > "$onepass_cfg"

for v in 0.0.4.2 0.1.5; do
  rm -rf "$WORK/experts" "$WORK/lerp-two" "$WORK/lerp-one"
  echo "--- mergekit $v arithmetic ---"
  run "two steps: unmix 8 experts" "$BIN" unmix "$MIX" "$WORK/experts" --expert all --dtype float16 --quiet --no-write-model-card
  run "two steps: merge 8 experts" "$BIN" merge "$twostep_cfg" "$WORK/lerp-two" --mergekit-version "$v" --quiet
  run "one pass" "$BIN" merge "$onepass_cfg" "$WORK/lerp-one" --mergekit-version "$v" --quiet
  "$BIN" verify "$twostep_cfg" "$WORK/lerp-one" --mergekit-version "$v" | tail -1
  echo "disk used by the two-step route: $(du -sb "$WORK/experts" "$WORK/lerp-two" | awk '{s+=$1} END{print s}') bytes; one pass: $(du -sb "$WORK/lerp-one" | cut -f1) bytes"
done
rm -rf "$WORK/experts" "$WORK/lerp-two" "$WORK/lerp-one"

#!/usr/bin/env bash
# 8-way float16 linear merge of ~110 MB Mistral-shaped models, timed against the I/O floor
# (reading every input once + writing the output once, fsync'ed like amalgam's output) in the
# same run, and against mergekit when a mergekit venv is given.
#
# Usage: bench/merge.sh [work-dir] [mergekit-venv]
#   work-dir       default /tmp/amalgam-bench (models are generated once and reused)
#   mergekit-venv  e.g. ~/mk (a venv with `pip install mergekit==0.1.5`); omitted: no mergekit run
# Env: N (models, 8), LAYERS (3), HIDDEN (1024), INTER (2816), VOCAB (8192), RUNS (3)
# Prints best-of-RUNS wall times, peak RSS, and the ratios recorded in docs/benchmarks.md.
set -euo pipefail
WORK=${1:-/tmp/amalgam-bench}
VENV=${2:-}
N=${N:-8}; LAYERS=${LAYERS:-3}; HIDDEN=${HIDDEN:-1024}; INTER=${INTER:-2816}; VOCAB=${VOCAB:-8192}; RUNS=${RUNS:-3}
cd "$(dirname "$0")/.."
cargo build --release -q -p amalgam-cli --bin amalgam --example make_bench_models
BIN=$PWD/target/release/amalgam
GEN=$PWD/target/release/examples/make_bench_models
MODELS="$WORK/dense-$N-$LAYERS-$HIDDEN"
[ -d "$MODELS" ] || "$GEN" dense "$MODELS" "$N" "$HIDDEN" "$INTER" "$LAYERS" "$VOCAB" float16
CFG="$WORK/linear.yml"
{
  echo "models:"
  for i in $(seq 0 $((N - 1))); do
    echo "  - model: $MODELS/model-$i"
    echo "    parameters: {weight: 1.0}"
  done
  echo "merge_method: linear"
  echo "dtype: float16"
} > "$CFG"
IN_BYTES=$(cat "$MODELS"/model-*/*.safetensors | wc -c)
OUT_BYTES=$(cat "$MODELS"/model-0/*.safetensors | wc -c)
echo "inputs: $N models, $IN_BYTES bytes; output ~$OUT_BYTES bytes"

now() { date +%s.%N; }
# floor: every input read once, the output's bytes written once and fsync'ed
floor() {
  local s e; s=$(now)
  cat "$MODELS"/model-*/*.safetensors > /dev/null
  head -c "$OUT_BYTES" "$MODELS/model-0/model.safetensors" > "$WORK/floor.bin"
  sync "$WORK/floor.bin"
  e=$(now); rm -f "$WORK/floor.bin"; awk "BEGIN{printf \"%.3f\", $e - $s}"
}
# runs a command under /usr/bin/time; prints "seconds maxrss_kb"
timed() {
  local s e rss; rm -rf "$WORK/out"
  s=$(now)
  /usr/bin/time -f "%M" -o "$WORK/rss" "$@" > /dev/null 2> "$WORK/err" || { cat "$WORK/err"; exit 1; }
  e=$(now); rss=$(tail -1 "$WORK/rss")
  awk "BEGIN{printf \"%.3f %d\", $e - $s, $rss}"
}
best() { # best wall time of RUNS runs; RSS of that run
  local b="" line
  for _ in $(seq "$RUNS"); do
    line=$("$@")
    if [ -z "$b" ] || awk "BEGIN{exit !(${line%% *} < ${b%% *})}"; then b=$line; fi
  done
  echo "$b"
}
cat "$MODELS"/model-*/*.safetensors > /dev/null # warm the page cache for every contender
F=$(best floor)
A=$(best timed "$BIN" merge "$CFG" "$WORK/out" --quiet)
A1=$(best timed "$BIN" merge "$CFG" "$WORK/out" --quiet -j 1)
echo "I/O floor:          ${F} s"
echo "amalgam (all cores): ${A%% *} s, peak RSS $(( ${A##* } / 1024 )) MiB  -> $(awk "BEGIN{printf \"%.2f\", ${A%% *} / $F}") x floor"
echo "amalgam (-j 1):     ${A1%% *} s, peak RSS $(( ${A1##* } / 1024 )) MiB  -> $(awk "BEGIN{printf \"%.2f\", ${A1%% *} / $F}") x floor"
if [ -n "$VENV" ]; then
  M=$(RUNS=1 best timed "$VENV/bin/mergekit-yaml" "$CFG" "$WORK/out" --no-copy-tokenizer)
  echo "mergekit:           ${M%% *} s, peak RSS $(( ${M##* } / 1024 )) MiB  -> $(awk "BEGIN{printf \"%.1f\", ${M%% *} / ${A%% *}}") x amalgam's time"
fi
rm -rf "$WORK/out"

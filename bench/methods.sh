#!/usr/bin/env bash
# Every merge method on the same four float16 Mistral-shaped models (~104 MB each), timed against
# the I/O floor of that merge (reading each input it uses once + writing and syncing the output's
# size) in the same run, with peak RSS, and against mergekit when a mergekit venv is given.
#
# Usage: bench/methods.sh [work-dir] [mergekit-venv]
#   work-dir       default /tmp/amalgam-bench (models are generated once and reused)
#   mergekit-venv  e.g. ~/mk (a venv with `pip install mergekit==0.1.5`); omitted: no mergekit run
# Env: LAYERS (3; 16 gives ~400 MB models), HIDDEN (1024), INTER (2816), VOCAB (8192),
#      RUNS (3: best of RUNS for the floor and amalgam, interleaved), MK_RUNS (1),
#      METHODS (space-separated subset, default all), JOBS (amalgam -j, default all cores),
#      AMALGAM (the binary to time, default the release build)
# Prints one line per method: floor, amalgam and ratio, peak RSS, and mergekit's time and RSS.
set -euo pipefail
WORK=${1:-/tmp/amalgam-bench}
VENV=${2:-}
LAYERS=${LAYERS:-3}; HIDDEN=${HIDDEN:-1024}; INTER=${INTER:-2816}; VOCAB=${VOCAB:-8192}
RUNS=${RUNS:-3}; MK_RUNS=${MK_RUNS:-1}
ALL="linear passthrough task_arithmetic nearswap slerp nuslerp multislerp model_stock karcher \
ties breadcrumbs breadcrumbs_ties dare_linear dare_ties della della_linear sce arcee_fusion"
METHODS=${METHODS:-$ALL}
cd "$(dirname "$0")/.."
cargo build --release -q -p amalgam-cli --bin amalgam --example make_bench_models
BIN=${AMALGAM:-$PWD/target/release/amalgam}
GEN=$PWD/target/release/examples/make_bench_models
M="$WORK/dense-4-$LAYERS-$HIDDEN-$INTER-$VOCAB"
[ -d "$M" ] || "$GEN" dense "$M" 4 "$HIDDEN" "$INTER" "$LAYERS" "$VOCAB" float16
JFLAG=(); [ -n "${JOBS:-}" ] && JFLAG=(-j "$JOBS")

# The config of each method; prints the models it reads (model-0 is the base where one is used).
config() {
  local m=$1 cfg=$2
  case $m in
    linear) printf 'models:\n' > "$cfg"
      for i in 0 1 2 3; do printf '  - model: %s\n    parameters: {weight: %s}\n' "$M/model-$i" "0.$((i + 1))" >> "$cfg"; done
      printf 'merge_method: linear\ndtype: float16\n' >> "$cfg"; echo 0 1 2 3 ;;
    passthrough) printf 'models:\n  - model: %s\n    parameters: {scale: 0.5}\nmerge_method: passthrough\ndtype: float16\n' "$M/model-1" > "$cfg"; echo 1 ;;
    nearswap|slerp|arcee_fusion)
      local p=''; case $m in nearswap) p='t: 0.002';; slerp) p='t: 0.3';; esac
      printf 'base_model: %s\nmodels:\n  - model: %s\nmerge_method: %s\nparameters: {%s}\ndtype: float16\n' \
        "$M/model-0" "$M/model-1" "$m" "$p" > "$cfg"; echo 0 1 ;;
    nuslerp) printf 'models:\n  - model: %s\n    parameters: {weight: 0.4}\n  - model: %s\n    parameters: {weight: 0.6}\nmerge_method: nuslerp\ndtype: float16\n' \
        "$M/model-1" "$M/model-2" > "$cfg"; echo 1 2 ;;
    multislerp|karcher) printf 'models:\n' > "$cfg"
      for i in 1 2 3; do printf '  - model: %s\n    parameters: {weight: %s}\n' "$M/model-$i" "0.$((i + 2))" >> "$cfg"; done
      [ "$m" = karcher ] && sed -i '/parameters: {weight/d' "$cfg"
      printf 'merge_method: %s\ndtype: float16\n' "$m" >> "$cfg"; echo 1 2 3 ;;
    model_stock|sce) printf 'base_model: %s\nmodels:\n' "$M/model-0" > "$cfg"
      for i in 1 2 3; do printf '  - model: %s\n' "$M/model-$i" >> "$cfg"; done
      printf 'merge_method: %s\ndtype: float16\n' "$m" >> "$cfg"
      [ "$m" = sce ] && printf 'parameters: {select_topk: 0.5}\n' >> "$cfg"; echo 0 1 2 3 ;;
    *) # the task-arithmetic family
      local extra=''
      case $m in ties|breadcrumbs*|dare_*|della*) extra=', density: 0.5';; esac
      case $m in della*) extra="$extra, epsilon: 0.1";; esac
      printf 'base_model: %s\nmodels:\n' "$M/model-0" > "$cfg"
      for i in 1 2 3; do printf '  - model: %s\n    parameters: {weight: %s%s}\n' "$M/model-$i" "0.$((i + 2))" "$extra" >> "$cfg"; done
      printf 'merge_method: %s\ndtype: float16\n' "$m" >> "$cfg"; echo 0 1 2 3 ;;
  esac
}

now() { date +%s.%N; }
OUT_BYTES=$(cat "$M"/model-0/*.safetensors | wc -c)
# floor: the inputs read once, the output's bytes written once and fsync'ed
floor() {
  local s e f=(); for i in $USED; do f+=("$M"/model-"$i"/*.safetensors); done
  s=$(now)
  cat "${f[@]}" > /dev/null
  head -c "$OUT_BYTES" "$M/model-0/model.safetensors" > "$WORK/floor.bin"
  sync "$WORK/floor.bin"
  e=$(now); rm -f "$WORK/floor.bin"; awk "BEGIN{printf \"%.3f 0\", $e - $s}"
}
# runs a command under /usr/bin/time; prints "seconds maxrss_kb"
timed() {
  local s e rss; rm -rf "$WORK/out"
  s=$(now)
  /usr/bin/time -f "%M" -o "$WORK/rss" "$@" > /dev/null 2> "$WORK/err" || { cat "$WORK/err" >&2; echo "0 0"; return; }
  e=$(now); rss=$(tail -1 "$WORK/rss")
  awk "BEGIN{printf \"%.3f %d\", $e - $s, $rss}"
}
better() { [ -z "$1" ] || awk "BEGIN{exit !(${2%% *} < ${1%% *})}"; }

cat "$M"/model-*/*.safetensors > /dev/null # warm the page cache for every contender
echo "models: 4 x $OUT_BYTES bytes (float16, $LAYERS layers); best of $RUNS; mergekit: $MK_RUNS run(s)"
printf '| method | floor | amalgam | amalgam / floor | peak RSS | mergekit | mergekit RSS | mergekit / amalgam |\n'
printf '|---|---|---|---|---|---|---|---|\n'
for m in $METHODS; do
  CFG="$WORK/$m.yml"
  USED=$(config "$m" "$CFG")
  F=""; A=""
  for _ in $(seq "$RUNS"); do # interleaved, so drift hits both alike
    l=$(floor); better "$F" "$l" && F=$l
    l=$(timed "$BIN" merge "$CFG" "$WORK/out" --quiet "${JFLAG[@]}"); better "$A" "$l" && A=$l
  done
  ratio=$(awk "BEGIN{printf \"%.2f\", ${A%% *} / ${F%% *}}")
  mk="-"; mkrss="-"; mkratio="-"
  if [ -n "$VENV" ]; then
    K=""
    for _ in $(seq "$MK_RUNS"); do
      l=$(timed "$VENV/bin/mergekit-yaml" "$CFG" "$WORK/out" --no-copy-tokenizer); better "$K" "$l" && K=$l
    done
    mk="${K%% *} s"; mkrss="$(( ${K##* } / 1024 )) MiB"
    mkratio=$(awk "BEGIN{printf \"%.1fx\", ${K%% *} / ${A%% *}}")
  fi
  printf '| %s | %s s | %s s | %sx | %d MiB | %s | %s | %s |\n' "$m" "${F%% *}" "${A%% *}" "$ratio" \
    $(( ${A##* } / 1024 )) "$mk" "$mkrss" "$mkratio"
done
rm -rf "$WORK/out"

#!/usr/bin/env bash
# Tensor I/O throughput: read + convert a 1 GiB BF16 safetensors file to F32, against
# `cat file > /dev/null` on the same file in the same run (page cache warm for both).
# Usage: bench/io.sh [MiB] [work-dir]        (defaults: 1024, a fresh temp dir)
# Prints the times and the ratios recorded in docs/io.md.
set -euo pipefail
MIB=${1:-1024}
WORK=${2:-$(mktemp -d)}
cd "$(dirname "$0")/.."
cargo build --release -q -p amalgam-io --example io_bench
BIN=target/release/examples/io_bench
FILE="$WORK/bf16.safetensors"
[ -f "$FILE" ] || "$BIN" gen "$FILE" "$MIB"
ls -l "$FILE"

best() { # best of 3 runs of a command printing seconds, or timing a shell command
  local b=""
  for _ in 1 2 3; do
    local t
    t=$("$@")
    if [ -z "$b" ] || awk "BEGIN{exit !($t < $b)}"; then b=$t; fi
  done
  echo "$b"
}
time_cat() { local s e; s=$(date +%s.%N); cat "$FILE" > /dev/null; e=$(date +%s.%N); awk "BEGIN{printf \"%.3f\", $e - $s}"; }
dd_fsync() { # the disk's own speed for the same 2 GiB written + fsync'ed
  local s e; s=$(date +%s.%N)
  dd if=/dev/zero of="$WORK/dd.bin" bs=16M count=$((MIB / 8)) conv=fsync status=none
  e=$(date +%s.%N); rm -f "$WORK/dd.bin"; awk "BEGIN{printf \"%.3f\", $e - $s}"
}
convert_discard() { "$BIN" convert "$FILE" - "$1" 2>/dev/null; }
convert_write() { rm -rf "$WORK/out"; "$BIN" convert "$FILE" "$WORK/out" "$1" 2>/dev/null; }

cat "$FILE" > /dev/null # warm the page cache
CAT=$(best time_cat)
D1=$(best convert_discard 1)
DN=$(best convert_discard "$(nproc)")
W1=$(best convert_write 1)
DD=$(best dd_fsync)
rm -rf "$WORK/out"
ratio() { awk "BEGIN{printf \"%.2f\", $1 / $CAT}"; }
echo "cat > /dev/null                    : ${CAT}s (1.00)"
echo "BF16->F32, discard, 1 thread       : ${D1}s ($(ratio "$D1"))"
echo "BF16->F32, discard, $(nproc) threads      : ${DN}s ($(ratio "$DN"))"
echo "BF16->F32, write 2 GiB F32, 1 thread: ${W1}s ($(ratio "$W1"))"
echo "dd 2 GiB of zeros + fsync (disk)   : ${DD}s ($(ratio "$DD")); convert+write / dd = $(awk "BEGIN{printf \"%.2f\", $W1 / $DD}")"
[ -n "${2:-}" ] || rm -rf "$WORK"

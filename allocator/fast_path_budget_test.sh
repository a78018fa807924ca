#!/usr/bin/env bash
# The fast paths' instruction budget: callgrind counts the instructions of
# fast_path_bench at two iteration counts; the difference divided by the
# extra iterations is the cost of one malloc/free pair (the loop's few
# instructions included), free of start-up costs. It must stay within 5% of
# the number in fast_path.golden.
#
# Instruction counts are deterministic for one binary, but differ between
# optimisation levels: run it as
#   tools/bazel test -c opt //allocator:fast_path_budget_test
# (CI does). It also prints, for reference, the same loop built without
# ferry (fast_path_bench_plain) on libferry.so and on each peer allocator
# installed, all through LD_PRELOAD, so that every figure pays the same PLT
# call.
set -euo pipefail
bench="$1"
golden_file="$2"
plain="${3:-}"
libferry="${4:-}"
command -v valgrind >/dev/null || { echo "valgrind is missing (tools/bazel installs it)" >&2; exit 1; }

count() {  # count BINARY PAIRS [PRELOAD] -> total instructions
  local out="${TEST_TMPDIR:-/tmp}/callgrind.$$.$2"
  env ${3:+LD_PRELOAD=$3} valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$1" "$2" >/dev/null 2>&1
  awk '/^(summary|totals):/ { print $2; exit }' "$out"
}

per_pair() {  # per_pair BINARY [PRELOAD]
  local low high
  low=$(count "$1" 10000 "${2:-}")
  high=$(count "$1" 110000 "${2:-}")
  echo $(( (high - low) / 100000 ))
}

ferry=$(per_pair "$bench")
golden=$(awk '$1 == "ferry_malloc_free_pair" { print $2 }' "$golden_file")
limit=$(( golden + (golden * 5 + 99) / 100 ))
echo "ferry (linked in): ${ferry} instructions per malloc/free pair (golden ${golden}, limit ${limit})"
if [[ -n "$plain" ]]; then
  libdir=/usr/lib/x86_64-linux-gnu
  for peer in "ferry:$libferry" "glibc:" "mimalloc:$libdir/libmimalloc.so.2" \
              "jemalloc:$libdir/libjemalloc.so.2" "tcmalloc:$libdir/libtcmalloc_minimal.so.4" \
              "tbbmalloc:$libdir/libtbbmalloc_proxy.so.2"; do
    name="${peer%%:*}" lib="${peer#*:}"
    [[ -z "$lib" || -e "$lib" ]] || continue
    echo "  LD_PRELOAD ${name}: $(per_pair "$plain" "$lib") instructions per pair"
  done
fi
if (( ferry > limit )); then
  echo "FAIL: the fast paths grew past their budget; if the growth is worth it," \
       "say why in the commit and update allocator/fast_path.golden" >&2
  exit 1
fi
if (( ferry * 100 < golden * 90 )); then
  echo "note: ${ferry} is well under the golden ${golden}; lower the golden to keep the budget tight"
fi

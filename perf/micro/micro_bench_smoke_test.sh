#!/usr/bin/env bash
# Runs every micro-benchmark briefly with FERRY_RECLAIMERS 0 and 2 and checks
# that each one reported a result.
set -euo pipefail
bench="$1"
for reclaimers in 0 2; do
  out="$(FERRY_RECLAIMERS=$reclaimers "$bench" --benchmark_min_time=0.002 --benchmark_format=console --benchmark_color=false 2>/dev/null)"
  for name in MallocFree/16 MallocFree/1048576 RemoteFree Sorter/64 Sorter/4096 FlushLatency ReallocHugeGrowth ReallocLargeGrowth HugeRoundTrip/5 LargeOnBigHeap/4; do
    grep -q "^${name} " <<<"$out" || { echo "FAIL: no result for ${name} (FERRY_RECLAIMERS=$reclaimers):"; echo "$out"; exit 1; } >&2
  done
done
echo PASS

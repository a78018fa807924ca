#!/bin/bash
# The workloads' own content checks must not cry wolf: a run whose every
# allocation is glibc's (no preload) exits 0. `large` with this seed makes a
# buffer of 22151182 bytes, 14 past a multiple of its 64 KiB tag stride,
# whose last stride tag its final tag overlapped: reported as corrupted
# under every allocator until 2026-12-06 (a soak run found it).
#   workload_checks_test.sh WORKLOAD
set -euo pipefail
workload="$1"
if ! out="$("$workload" large --scale 0.178 --seed 909214 2>&1)"; then
  echo "FAIL: large (seed 909214) failed under glibc:" >&2
  echo "$out" >&2
  exit 1
fi
echo "PASS: large (seed 909214) under glibc"

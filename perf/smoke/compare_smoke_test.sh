#!/bin/bash
# perf/smoke/compare_smoke_test.sh — //perf:compare end to end at tiny scale.
#
#   compare_smoke_test.sh COMPARE NOT_AN_ALLOCATOR_SO
#
# 1. One run of every workload on glibc and ferry must succeed and print a
#    table row with figures for both.
# 2. A library that is not an allocator, passed off as ferry, must be refused
#    (exit status 1, "NOT REPORTED", no figures for it).
set -uo pipefail

compare="$1"
not_an_allocator="$2"
tmp="${TEST_TMPDIR:-$(mktemp -d)}"

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

"$compare" --runs 1 --scale tiny --alloc glibc --alloc ferry --no-save \
  >"$tmp/out.md" 2>"$tmp/err.txt"
status=$?
cat "$tmp/err.txt" "$tmp/out.md"
[[ $status -eq 0 ]] || fail "compare exited with status $status"
for workload in churn prodcons; do
  grep -q "^## $workload\$" "$tmp/out.md" || fail "no table for $workload"
done
for allocator in glibc ferry; do
  rows=$(grep -cE "^\| $allocator +\| +[0-9]+\.[0-9]+ \|" "$tmp/out.md")
  [[ $rows -eq 2 ]] || fail "expected 2 rows of figures for $allocator, found $rows"
done

"$compare" --runs 1 --scale tiny --alloc glibc --alloc ferry --no-save \
  --ferry-lib "$not_an_allocator" >"$tmp/refused.md" 2>&1
status=$?
[[ $status -eq 1 ]] || { cat "$tmp/refused.md"; fail "a non-allocator as ferry: status $status, want 1"; }
grep -q "ferry: NOT REPORTED" "$tmp/refused.md" || { cat "$tmp/refused.md"; fail "non-allocator not refused"; }
if grep -qE "^\| ferry +\| +[0-9]" "$tmp/refused.md"; then
  cat "$tmp/refused.md"
  fail "figures reported for a library that is not an allocator"
fi
echo PASS

#!/bin/bash
# perf/smoke/compare_smoke_test.sh — //perf:compare end to end at tiny scale.
#
#   compare_smoke_test.sh COMPARE NOT_AN_ALLOCATOR_SO WORKLOAD
#
# 1. One run of every workload (prodcons and teardown at 1, 2 and 4 pairs) on glibc and
#    ferry must succeed and print a table row with figures for both, with
#    the extra columns of onefree and idle; the CSV and (when gnuplot is
#    installed) the plot must be written.
# 2. ferry variants: a standard one (ferry-r0) and a --variant row are
#    measured with their settings (the check runs see no reclaimer thread in
#    ferry-r0); a variant whose setting ferry rejects is refused.
# 3. A library that is not an allocator, passed off as ferry, must be refused
#    (exit status 1, "NOT REPORTED", no figures for it).
# 4. A workload binary copied out of bazel-out (perf/device_bundle.sh) has
#    its build read from the BUILD_INFO beside it; with none, "unknown" and
#    a warning.
set -uo pipefail

compare="$1"
not_an_allocator="$2"
workload="$3"
tmp="${TEST_TMPDIR:-$(mktemp -d)}"

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# A Markdown row for $1 with figures (a wall time) in the table under "## $2".
has_row() {
  awk -v table="## $2" -v alloc="$1" '
    /^## / { inside = ($0 == table) }
    inside && $0 ~ "^\\| " alloc " +\\| +[0-9]+\\.[0-9]+ \\|" { found = 1 }
    END { exit found ? 0 : 1 }' "$3"
}

# 1. Every workload on glibc and ferry.
"$compare" --runs 1 --scale tiny --alloc glibc --alloc ferry --out "$tmp/results" \
  >"$tmp/out.md" 2>"$tmp/err.txt"
status=$?
cat "$tmp/err.txt" "$tmp/out.md"
[[ $status -eq 0 ]] || fail "compare exited with status $status"
tables="churn prodcons/1 prodcons/2 prodcons/4 larson mstress onefree cscratch realloc medium large idle phases teardown/1 teardown/2 teardown/4"
for table in $tables; do
  grep -q "^## $table\$" "$tmp/out.md" || fail "no table for $table"
  for allocator in glibc ferry; do
    has_row "$allocator" "$table" "$tmp/out.md" || fail "no figures for $allocator in $table"
  done
done
grep -qE "^\| allocator .*\| RSS/live \|" "$tmp/out.md" || fail "no RSS/live column (onefree)"
grep -qE "^\| ferry +\|.*\| +[0-9]+\.[0-9]+ \| +[0-9]+\.[0-9]+ \|$" "$tmp/out.md" || fail "no extra figures for ferry"
grep -qE "^\| allocator .*\| RSS MiB before \| RSS MiB \+0 s \|" "$tmp/out.md" || fail "no RSS columns (idle)"
[[ -s "$tmp/results/run.csv" ]] || fail "no run.csv written"
rows=$(grep -c ",ok," "$tmp/results/run.csv")
[[ $rows -eq 32 ]] || fail "expected 32 ok runs in run.csv, found $rows"
grep -q "^idle,0,ferry,.*rss_3s=.*,0.00:" "$tmp/results/run.csv" || fail "no RSS series for idle in run.csv"
if command -v gnuplot >/dev/null; then
  [[ -s "$tmp/results/run.png" ]] || fail "gnuplot is installed but no run.png was written"
else
  grep -q "plot skipped" "$tmp/out.md" || fail "no gnuplot and no note saying the plot was skipped"
fi

# 2. Variants.
"$compare" --runs 1 --scale tiny --workload prodcons --pairs 2 --alloc ferry-r0 \
  --variant b64:FERRY_BATCH=64 --no-save >"$tmp/variants.md" 2>&1
status=$?
cat "$tmp/variants.md"
[[ $status -eq 0 ]] || fail "variants: compare exited with status $status"
for allocator in ferry-r0 b64; do
  has_row "$allocator" prodcons/2 "$tmp/variants.md" || fail "no figures for variant $allocator"
done
grep -q "ferry-r0: .* with FERRY_RECLAIMERS=0; reclaimer threads at exit of the check runs: 0" \
  "$tmp/variants.md" || fail "ferry-r0's settings not shown or not in effect"
"$compare" --runs 1 --scale tiny --workload churn --alloc glibc --variant bad:FERRY_RECLAIMERS=lots \
  --no-save >"$tmp/bad.md" 2>&1
status=$?
[[ $status -eq 1 ]] || { cat "$tmp/bad.md"; fail "a variant with a bad setting: status $status, want 1"; }
grep -q "bad: NOT REPORTED: .*warned" "$tmp/bad.md" || { cat "$tmp/bad.md"; fail "bad variant not refused"; }
has_row glibc churn "$tmp/bad.md" || { cat "$tmp/bad.md"; fail "glibc not measured beside a refused variant"; }

# 3. A library that is not an allocator.
"$compare" --runs 1 --scale tiny --workload churn --alloc glibc --alloc ferry --no-save \
  --ferry-lib "$not_an_allocator" >"$tmp/refused.md" 2>&1
status=$?
[[ $status -eq 1 ]] || { cat "$tmp/refused.md"; fail "a non-allocator as ferry: status $status, want 1"; }
grep -q "ferry: NOT REPORTED" "$tmp/refused.md" || { cat "$tmp/refused.md"; fail "non-allocator not refused"; }
if grep -qE "^\| ferry +\| +[0-9]" "$tmp/refused.md"; then
  cat "$tmp/refused.md"
  fail "figures reported for a library that is not an allocator"
fi
# 4. A bundle's BUILD_INFO.
mkdir -p "$tmp/bundle"
cp "$workload" "$tmp/bundle/workload"
echo "opt 0123abc-dirty" > "$tmp/bundle/BUILD_INFO"
"$compare" --runs 1 --scale tiny --workload churn --alloc glibc --no-save \
  --workload-bin "$tmp/bundle/workload" >"$tmp/bundle.md" 2>&1
status=$?
[[ $status -eq 0 ]] || { cat "$tmp/bundle.md"; fail "bundle: compare exited with status $status"; }
grep -q "^- build: opt (BUILD_INFO: opt 0123abc-dirty);" "$tmp/bundle.md" \
  || { cat "$tmp/bundle.md"; fail "BUILD_INFO not read"; }
if grep -q "warning: the workloads were built" "$tmp/bundle.md"; then
  cat "$tmp/bundle.md"
  fail "an opt bundle warned of its mode"
fi
rm "$tmp/bundle/BUILD_INFO"
"$compare" --runs 1 --scale tiny --workload churn --alloc glibc --no-save \
  --workload-bin "$tmp/bundle/workload" >"$tmp/bundle.md" 2>&1
grep -q "^- build: unknown;" "$tmp/bundle.md" && grep -q "built in unknown mode" "$tmp/bundle.md" \
  || { cat "$tmp/bundle.md"; fail "no BUILD_INFO: mode not unknown, or no warning"; }
echo PASS

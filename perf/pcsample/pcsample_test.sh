#!/bin/bash
# perf/pcsample/pcsample_test.sh — libpcsample.so and report.py end to end.
#
#   pcsample_test.sh LIBFERRY LIBPCSAMPLE WORKLOAD REPORT_PY
#
# 1. Without PCSAMPLE_OUT the preload does nothing: the workload runs and no
#    file appears.
# 2. prodcons at 2 pairs on ferry with one reclaimer, sampled: one file, for
#    the workload's process; its report names functions of libferry.so and
#    of the workload, accounts for at least half the process's CPU time
#    (weighted samples against getrusage), samples the five threads the
#    workload starts or more, and unblocked SIGPROF in the reclaimer (ferry
#    starts it with every signal blocked).
# 3. --threads prints the four workers' sections at least, --addresses its own.
# 4. A program that forks (forkloop: one child in four ends by exit(), which
#    runs the destructors) leaves one file, its own: children write none.
set -uo pipefail

ferry="$PWD/$1"
sampler="$PWD/$2"
workload="$3"
report="$4"
tmp="${TEST_TMPDIR:-$(mktemp -d)}"

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

LD_PRELOAD="$ferry $sampler" "$workload" prodcons --pairs 1 --scale 0.05 > "$tmp/inert.txt" 2>&1 ||
  fail "the workload failed under the inert preload: $(tail -3 "$tmp/inert.txt")"
compgen -G "$tmp/s.*" > /dev/null && fail "a sample file without PCSAMPLE_OUT"

FERRY_RECLAIMERS=1 PCSAMPLE_OUT="$tmp/s" PCSAMPLE_US=200 LD_PRELOAD="$ferry $sampler" \
  "$workload" prodcons --pairs 2 --scale 0.5 > "$tmp/run.txt" 2>&1 ||
  fail "the sampled workload failed: $(tail -3 "$tmp/run.txt")"
files=("$tmp"/s.*)
[ "${#files[@]}" -eq 1 ] && [ -s "${files[0]}" ] || fail "expected one sample file, found: ${files[*]}"

python3 "$report" "${files[0]}" --top 40 > "$tmp/report.txt" 2>&1 || fail "report.py failed: $(cat "$tmp/report.txt")"
cat "$tmp/report.txt"
grep -Eq '^ *[0-9.]+% +[0-9]+  libferry\.so [a-z_:]*(malloc|free|Return|Order|new|delete)' "$tmp/report.txt" ||
  fail "no function of libferry.so in the report"
grep -Eq '^ *[0-9.]+% +[0-9]+  workload ferry::perf::' "$tmp/report.txt" ||
  fail "no function of the workload in the report"
covered=$(sed -n 's/^samples .*(\([0-9]*\)%)$/\1/p' "$tmp/report.txt")
[ -n "$covered" ] && [ "$covered" -ge 50 ] ||
  fail "the samples account for ${covered:-?}% of the CPU time (want >= 50)"
pattern='s/^threads sampled \([0-9]*\), unsampled [0-9]*, SIGPROF unblocked in \([0-9]*\),.*/\1 \2/p'
read -r threads unblocked <<< "$(sed -n "$pattern" "$tmp/report.txt")"
[ "${threads:-0}" -ge 5 ] || fail "threads sampled: ${threads:-?} (the main thread and four workers at least)"
[ "${unblocked:-0}" -ge 1 ] || fail "SIGPROF unblocked in ${unblocked:-?} threads: the reclaimer went unsampled"

python3 "$report" "${files[0]}" --threads --addresses 5 --top 3 > "$tmp/threads.txt" 2>&1 ||
  fail "report.py --threads failed"
# The main thread only waits, and may go without a sample; the workers never.
[ "$(grep -c '^-- thread ' "$tmp/threads.txt")" -ge 4 ] || fail "--threads printed fewer than the four workers"
grep -q '^hottest addresses of the top functions:' "$tmp/threads.txt" || fail "--addresses printed nothing"
PCSAMPLE_OUT="$tmp/f" LD_PRELOAD="$ferry $sampler" "$workload" forkloop --scale tiny > "$tmp/fork.txt" 2>&1 ||
  fail "forkloop failed under the sampler: $(tail -3 "$tmp/fork.txt")"
forked=("$tmp"/f.*)
[ "${#forked[@]}" -eq 1 ] || fail "forkloop left ${#forked[@]} sample files (children must write none)"
echo "PASS"

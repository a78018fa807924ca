#!/bin/bash
# tests/soak_test.sh — the soak's CI form: //perf:soak (what tools/soak runs
# for as long as asked) with a fixed seed and --every-pair, here on the build
# under test: every workload, the fork loop and the thread churn each run
# once under every FERRY_RECLAIMERS count 0-4 with both backends (11 x 10 =
# 130 runs, the same ones every time, about two minutes here); --max-scale 0.2
# keeps each run short, and forkloop's 0.08 (at most 32 forks a run; 60-70 s
# of the soak's 145 at 0.2, the largest part of CI's first pass, 2026-12-06)
# leaves it about a third of that. Fails when any run fails (the driver prints each
# failure with the command that reproduces it; logs land in the test's
# outputs).
#
#   soak_test.sh SOAK [more soak flags]
set -uo pipefail

soak="$1"
shift
exec "$soak" --every-pair --seed 1 --max-scale 0.2 --max-scale-of forkloop=0.08 --quiet "$@"

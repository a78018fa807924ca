#!/bin/bash
# tests/soak_test.sh — the soak's CI form: //perf:soak (what tools/soak runs
# for as long as asked) for 2 minutes with a fixed seed, here on the build
# under test. It goes on past the 2 minutes until one full cycle is done, so
# every workload, the fork loop and the thread churn run at least once, and
# every FERRY_RECLAIMERS count 0-4 with both backends; --max-scale 0.2 keeps
# each run short. Fails when any run fails (the driver prints each failure
# with the command that reproduces it; logs land in the test's outputs).
#
#   soak_test.sh SOAK [more soak flags]
set -uo pipefail

soak="$1"
shift
exec "$soak" --time 120 --min-cycles 1 --seed 1 --max-scale 0.2 --quiet "$@"

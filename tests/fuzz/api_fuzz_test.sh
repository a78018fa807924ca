#!/bin/bash
# api_fuzz_test.sh — a fixed-time libFuzzer run of the API fuzz target.
#
#   api_fuzz_test.sh FUZZER CORPUS_DIR SECONDS
#
# Fuzzes from a writable copy of the seed corpus (the repository is never
# written), for SECONDS in all. Fails on any crash, timeout (25 s for one
# input) or memory blow-up (3 GiB); libFuzzer writes the reproducer into
# $TEST_UNDECLARED_OUTPUTS_DIR (bazel-testlogs/.../test.outputs/) and its
# log names it. Replay one with tools/fuzz --replay FILE.
set -euo pipefail

fuzzer="$1" corpus="$2" seconds="$3"
work="${TEST_TMPDIR:-$(mktemp -d)}"
artifacts="${TEST_UNDECLARED_OUTPUTS_DIR:-$work}"

rm -rf "$work/corpus"
mkdir -p "$work/corpus" "$artifacts"
cp -L "$corpus"/* "$work/corpus/"

exec "$fuzzer" -max_total_time="$seconds" -timeout=25 -rss_limit_mb=3072 -detect_leaks=0 \
  -print_final_stats=1 -artifact_prefix="$artifacts/" "$work/corpus"

#!/usr/bin/env bash
# real_programs_test.sh — tools/real_programs --quick on glibc and ferry:
# python3 (threads, queue.Queue), g++ (driver, cc1plus, as), sort, sqlite3
# and redis-server under redis-benchmark, each once, from /usr/bin, with
# LD_PRELOAD of this build's libferry.so. Fails if any output differs from
# the glibc run, if any process's malloc did not bind to ferry (LD_DEBUG) or
# ferry printed no statistics, or if redis's data does not verify.
#
# Then proves that those checks can fail: the same tool with mimalloc passed
# off as ferry (a working allocator, but not ferry), and with a library that
# is no allocator at all, must exit 1 and say why.
#
#   real_programs_test.sh LIBFERRY_SO REAL_PROGRAMS COMPARE_CC   (rootpaths)
set -euo pipefail

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

lib="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"  # LD_PRELOAD wants it absolute
tool="$2"
[[ -e "$3" ]] || fail "$3 (g++'s input, found by the tool next to it) is missing"
tmp="${TEST_TMPDIR:-$(mktemp -d)}"
start=$SECONDS

# 1. Every program on glibc and ferry.
"$tool" --quick --allocators glibc,ferry --ferry "$lib" --out "$tmp/results" ||
  fail "tools/real_programs found a program that failed, differed or did not run on ferry (above)"
grep -q '^| python3, 6 threads (s) | [0-9.]* | [0-9.]* |' "$tmp/results/quick_real_programs.md" ||
  fail "no python row in the report"
grep -q '^| redis SET .* | [0-9]* | [0-9]* |' "$tmp/results/quick_real_programs.md" ||
  fail "no redis row in the report"
echo "ok: every program matched glibc on ferry ($((SECONDS - start)) s)"

# 2. Not ferry: a real allocator that prints no ferry statistics and does not
#    export ferry's API.
mimalloc=/usr/lib/x86_64-linux-gnu/libmimalloc.so.2
if "$tool" --quick --programs python,sort --allocators glibc,ferry --ferry "$mimalloc" \
  --out "$tmp/not_ferry" 2>"$tmp/not_ferry.err"; then
  cat "$tmp/not_ferry.err" >&2
  fail "tools/real_programs passed with mimalloc as ferry: its checks prove nothing"
fi
grep -q "^FAIL: python on ferry: FERRY_STATS=1 printed ferry's statistics 0 times" "$tmp/not_ferry.err" ||
  fail "mimalloc as ferry: python's missing statistics were not reported"
grep -q "^FAIL: sort on ferry: .* is not ferry" "$tmp/not_ferry.err" ||
  fail "mimalloc as ferry: sort on a library that is not ferry was not reported"
echo "ok: mimalloc passed off as ferry is refused"

# 3. No allocator at all: malloc stays glibc's.
if "$tool" --quick --programs python --allocators glibc,ferry --ferry /lib/x86_64-linux-gnu/libm.so.6 \
  --out "$tmp/no_allocator" 2>"$tmp/no_allocator.err"; then
  cat "$tmp/no_allocator.err" >&2
  fail "tools/real_programs passed with libm as ferry"
fi
grep -q "^FAIL: python on ferry: malloc of python3 did not bind to" "$tmp/no_allocator.err" ||
  fail "libm as ferry: the unreplaced malloc was not reported"
echo "ok: a library that is no allocator is refused"
echo "PASS ($((SECONDS - start)) s)"

#!/usr/bin/env bash
# valgrind_test.sh — memcheck sees ferry's blocks in a FERRY_VALGRIND build:
# leaks are found with their sizes, writes and reads after free
# are "Invalid" accesses "inside a block ... free'd", and a correct
# multi-threaded program gets no error and no leak. In any other build the
# same runs must show memcheck blind to ferry's blocks (no leak, no invalid
# access), which proves the client requests are what makes it see.
#
#   tools/bazel test --config=valgrind //tests:valgrind_test   (CI runs both)
#   tools/bazel test //tests:valgrind_test
set -euo pipefail

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

probe="$1"
suppressions="$2"
tmp="${TEST_TMPDIR:-$(mktemp -d)}"
command -v valgrind >/dev/null || fail "valgrind is missing (tools/bazel installs it)"

# memcheck would replace the malloc it finds in the program itself;
# nouserintercepts keeps ferry's.
memcheck() {  # memcheck MODE -> log in $tmp/MODE.log; FERRY_STATS proves ferry ran
  FERRY_STATS=1 valgrind --soname-synonyms=somalloc=nouserintercepts --leak-check=full \
    --suppressions="$suppressions" \
    --show-leak-kinds=definite,possible --error-exitcode=0 "$probe" "$1" >"$tmp/$1.out" 2>"$tmp/$1.log" ||
    { cat "$tmp/$1.log" >&2; fail "$1: the probe failed under memcheck"; }
  grep -Eq '^ +heaps_created +[1-9]' "$tmp/$1.log" ||
    { cat "$tmp/$1.log" >&2; fail "$1: ferry's statistics show no heap: ferry was not in use"; }
}

expect() {  # expect MODE REGEX WHAT
  grep -Eq "$2" "$tmp/$1.log" || { cat "$tmp/$1.log" >&2; fail "$1: $3"; }
}

expect_not() {  # expect_not MODE REGEX WHAT
  if grep -Eq "$2" "$tmp/$1.log"; then cat "$tmp/$1.log" >&2; fail "$1: $3"; fi
}

build="$("$probe" build)"
echo "probe: $build"
for mode in leak uaf clean; do
  memcheck "$mode"
done

if [[ "$build" == "valgrind_build=1" ]]; then
  expect leak '40 bytes in 1 blocks are definitely lost' "the new[] block's leak is not definite"
  [[ "$(grep -Ec '48 bytes in 1 blocks are definitely lost' "$tmp/leak.log")" == 2 ]] ||
    { cat "$tmp/leak.log" >&2; fail "leak: the two small blocks' leaks are not both definite"; }
  expect leak '300,000 bytes in 1 blocks are definitely lost' "the large block's leak is not definite"
  # The huge block may be "possibly lost": memcheck scans memory that is not
  # ferry's (the loader's, libc's) for anything that looks like a pointer, and
  # a 5 MiB block is a wide target (seen: stale words in a mapping of the
  # loader pointing inside it).
  expect leak '5,242,880 bytes in 1 blocks are (definitely|possibly) lost' "the huge block's leak was not found"
  expect uaf 'Invalid write of size 4' "the write after free was not reported"
  expect uaf 'Address 0x[0-9A-Fa-f]+ is 20 bytes inside a block of size 64 free.d' \
    "the write after free was not placed in its freed block"
  expect uaf 'Invalid read of size 1' "the read of a block another thread freed was not reported"
  expect uaf 'Address 0x[0-9A-Fa-f]+ is 100 bytes inside a block of size 200 free.d' \
    "the read after a remote free was not placed in its freed block"
  expect clean 'ERROR SUMMARY: 0 errors' "a correct program got memcheck errors"
  expect_not clean 'definitely lost: [1-9]' "a correct program leaked"
  echo "PASS: memcheck sees ferry's leaks and uses after free, and nothing in a clean run"
else
  expect_not leak 'definitely lost' "memcheck saw a leak without the client requests?"
  expect_not uaf 'Invalid (read|write)' "memcheck saw a use after free without the client requests?"
  echo "PASS: without FERRY_VALGRIND memcheck is blind to ferry's blocks, as expected;" \
       "run with --config=valgrind for the real check"
fi

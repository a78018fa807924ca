"""Compiler options for ferry's own targets.

.bazelrc sets only -std=c++20 (and the sanitizer configs); warnings live here
so they never apply to system or third-party code. Exceptions, RTTI and
optimisation flags are left to each target.

    load("//tools:copts.bzl", "FERRY_COPTS", "FERRY_TEST_COPTS")
"""

# Library code (common/, allocator/, reclaimer/).
FERRY_COPTS = [
    "-Wall",
    "-Wextra",
    "-Werror",
]

# Tests and benchmarks (tests/, perf/). GoogleTest 1.12 and Google Benchmark
# 1.7 headers from /usr/include compile clean with these under g++ 12.
# Allocator tests compare a freed block's address with later blocks on
# purpose (reuse checks), which GCC 12's -Wuse-after-free flags at -O2.
FERRY_TEST_COPTS = [
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wno-use-after-free",
]

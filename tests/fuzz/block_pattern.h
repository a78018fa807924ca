// block_pattern.h — the fuzz target's loops over whole blocks: a pattern
// derived from a seed written and checked, and calloc's zeroes checked.
//
// A translation unit of their own, so that the fuzz build compiles them
// without coverage instrumentation and without ASan (see BUILD): in the
// target they would take most of every run, scanning megabytes whose
// comparisons carry no signal, and ferry's blocks are not ASan's to check.
#ifndef FERRY_TESTS_FUZZ_BLOCK_PATTERN_H_
#define FERRY_TESTS_FUZZ_BLOCK_PATTERN_H_

#include <stddef.h>
#include <stdint.h>

namespace ferry_fuzz {

// Writes the pattern of `seed` into bytes [begin, end) of `base`, which is
// 8-byte aligned.
void FillPattern(void* base, size_t begin, size_t end, uint64_t seed);
// The offset of the first byte in [begin, end) that differs from the
// pattern of `seed`, or SIZE_MAX when all match.
size_t PatternMismatch(const void* base, size_t begin, size_t end, uint64_t seed);

// True when every byte of [p, p + n) is zero.
bool AllZeroBytes(const void* p, size_t n);

}  // namespace ferry_fuzz

#endif  // FERRY_TESTS_FUZZ_BLOCK_PATTERN_H_

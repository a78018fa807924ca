// block_pattern.cc — a pattern cheaper than test_util.h's: word i of a block
// is seed ^ (i * an odd constant), which the compiler vectorises, so that
// checking megabytes costs little next to the calls being fuzzed. Any two
// words of one block differ, and blocks' seeds are mixed from their ids, so
// a byte moved, lost or written by a neighbour still shows.
#include "tests/fuzz/block_pattern.h"

#include <string.h>

namespace ferry_fuzz {
namespace {

constexpr uint64_t kStep = 0x9e3779b97f4a7c15ULL;

inline uint64_t Word(uint64_t seed, size_t index) { return seed ^ (index * kStep); }

inline uint8_t Byte(uint64_t seed, size_t offset) {
  return static_cast<uint8_t>(Word(seed, offset / 8) >> (8 * (offset % 8)));
}

}  // namespace

void FillPattern(void* base, size_t begin, size_t end, uint64_t seed) {
  unsigned char* b = static_cast<unsigned char*>(base);
  size_t i = begin;
  for (; i < end && i % 8 != 0; ++i) b[i] = Byte(seed, i);
  for (; i + 8 <= end; i += 8) {
    const uint64_t word = Word(seed, i / 8);  // little-endian: byte k = word >> 8k
    memcpy(b + i, &word, 8);
  }
  for (; i < end; ++i) b[i] = Byte(seed, i);
}

size_t PatternMismatch(const void* base, size_t begin, size_t end, uint64_t seed) {
  const unsigned char* b = static_cast<const unsigned char*>(base);
  size_t i = begin;
  for (; i < end && i % 8 != 0; ++i)
    if (b[i] != Byte(seed, i)) return i;
  // Whole runs of words first (vectorised), then the word that differs.
  constexpr size_t kRun = 64;
  for (; i + 8 * kRun <= end; i += 8 * kRun) {
    uint64_t differ = 0;
    for (size_t k = 0; k < kRun; ++k) {
      uint64_t word;
      memcpy(&word, b + i + 8 * k, 8);
      differ |= word ^ Word(seed, i / 8 + k);
    }
    if (differ != 0) break;
  }
  for (; i < end; ++i)
    if (b[i] != Byte(seed, i)) return i;
  return SIZE_MAX;
}

bool AllZeroBytes(const void* p, size_t n) {
  const unsigned char* b = static_cast<const unsigned char*>(p);
  unsigned char any = 0;
  for (size_t i = 0; i < n; ++i) any |= b[i];
  return any == 0;
}

}  // namespace ferry_fuzz

// size_class.h — size classes for small and medium blocks.
//
// Classes: 8, the multiples of 16 up to 128 (16, 32, ..., 128), then eight
// evenly spaced classes per doubling (144, 160, ..., 256, 288, ...) up to
// kMediumMax = 512 KiB. Above 128 bytes the class wastes at most 1/8 of the
// request (12.5%); from 65 to 128 bytes at most 15 bytes.
// Every class but 8 is a multiple of 16, so every block of 16 bytes or more
// is aligned to 16: C23 and C++ ask that malloc(n) suit any object of
// fundamental alignment no larger than n, and a 72-byte request may hold a
// 32-byte struct of long doubles and a tail (until 2026-12-04 the classes
// 72, 88, 104 and 120 put half their blocks 8 bytes off 16, and such a
// program's movaps faulted; found by a review). Every power of two is a
// class, which the aligned paths rely on. Sizes above kMediumMax are large
// (runs of slices) or huge (their own mapping).
#ifndef FERRY_ALLOCATOR_SIZE_CLASS_H_
#define FERRY_ALLOCATOR_SIZE_CLASS_H_

#include <array>
#include <cstddef>
#include <cstdint>

#include "common/base.h"

namespace ferry {

inline constexpr size_t kMediumMax = size_t{512} << 10;
inline constexpr size_t kNumClasses = 9 + 8 * (19 - 7);  // 105
inline constexpr size_t kSmallLookupMax = 1024;         // table-driven below this

// The class of a size computed by arithmetic; valid for n <= kMediumMax.
constexpr size_t ComputeSizeClass(size_t n) {
  if (n <= 8) return 0;
  if (n <= 128) return (n + 15) >> 4;
  const int k = Log2Floor(n - 1);  // 2^k < n <= 2^(k+1), k >= 7
  const size_t step_index = ((n - 1 - (size_t{1} << k)) >> (k - 3));
  return 9 + static_cast<size_t>(k - 7) * 8 + step_index;
}

constexpr size_t ComputeClassSize(size_t cls) {
  if (cls == 0) return 8;
  if (cls <= 8) return cls * 16;
  const size_t group = (cls - 9) / 8;
  const size_t step = (cls - 9) % 8 + 1;
  const size_t base = size_t{128} << group;
  return base + step * (base >> 3);
}

inline constexpr auto kClassSize = [] {
  std::array<uint32_t, kNumClasses> sizes{};
  for (size_t c = 0; c < kNumClasses; ++c) sizes[c] = static_cast<uint32_t>(ComputeClassSize(c));
  return sizes;
}();

inline constexpr auto kSmallClassTable = [] {
  std::array<uint8_t, kSmallLookupMax / 8 + 1> table{};
  for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<uint8_t>(ComputeSizeClass(i * 8));
  return table;
}();

// The class for a request of n <= kMediumMax bytes.
FERRY_ALWAYS_INLINE size_t SizeClassOf(size_t n) {
  if (FERRY_LIKELY(n <= kSmallLookupMax)) return kSmallClassTable[(n + 7) >> 3];
  return ComputeSizeClass(n);
}

static_assert(ComputeClassSize(kNumClasses - 1) == kMediumMax);
static_assert(ComputeSizeClass(kMediumMax) == kNumClasses - 1);
static_assert(ComputeClassSize(ComputeSizeClass(65)) == 80);
static_assert(ComputeClassSize(ComputeSizeClass(129)) == 144);
static_assert([] {
  for (size_t c = 1; c < kNumClasses; ++c) {
    if (ComputeClassSize(c) % 16 != 0) return false;
  }
  return true;
}());

}  // namespace ferry

#endif  // FERRY_ALLOCATOR_SIZE_CLASS_H_

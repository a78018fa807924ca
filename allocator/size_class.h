// size_class.h — size classes for small and medium blocks.
//
// Classes: 8, 16, 32, 48, 64, then eight evenly spaced classes per doubling
// (72, 80, ..., 128, 144, ..., 256, ...) up to kMediumMax = 512 KiB. For any
// size above 64 bytes the class wastes at most 1/8 of the request (12.5%).
// Every class that is a multiple of 16 holds blocks aligned to 16; every
// power of two is a class, which the aligned paths rely on. Sizes above
// kMediumMax are large (runs of slices) or huge (their own mapping).
#ifndef FERRY_ALLOCATOR_SIZE_CLASS_H_
#define FERRY_ALLOCATOR_SIZE_CLASS_H_

#include <array>
#include <cstddef>
#include <cstdint>

#include "common/base.h"

namespace ferry {

inline constexpr size_t kMediumMax = size_t{512} << 10;
inline constexpr size_t kNumClasses = 5 + 8 * (19 - 6);  // 109
inline constexpr size_t kSmallLookupMax = 1024;         // table-driven below this

// The class of a size computed by arithmetic; valid for n <= kMediumMax.
constexpr size_t ComputeSizeClass(size_t n) {
  if (n <= 8) return 0;
  if (n <= 64) return (n + 15) >> 4;
  const int k = Log2Floor(n - 1);  // 2^k < n <= 2^(k+1)
  const size_t step_index = ((n - 1 - (size_t{1} << k)) >> (k - 3));
  return 5 + static_cast<size_t>(k - 6) * 8 + step_index;
}

constexpr size_t ComputeClassSize(size_t cls) {
  if (cls == 0) return 8;
  if (cls <= 4) return cls * 16;
  const size_t group = (cls - 5) / 8;
  const size_t step = (cls - 5) % 8 + 1;
  const size_t base = size_t{64} << group;
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
static_assert(ComputeClassSize(ComputeSizeClass(65)) == 72);
static_assert(ComputeClassSize(ComputeSizeClass(129)) == 144);

}  // namespace ferry

#endif  // FERRY_ALLOCATOR_SIZE_CLASS_H_

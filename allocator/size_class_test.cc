// Unit tests of the size-class table.
#include "allocator/size_class.h"

#include <gtest/gtest.h>

namespace ferry {
namespace {

TEST(SizeClass, EverySizeMapsToAClassThatHoldsIt) {
  for (size_t n = 0; n <= kMediumMax; ++n) {
    const size_t c = SizeClassOf(n);
    ASSERT_LT(c, kNumClasses) << n;
    ASSERT_GE(kClassSize[c], n) << n;
    if (c > 0) {
      ASSERT_LT(kClassSize[c - 1], n == 0 ? 1 : n) << "not the smallest fitting class for " << n;
    }
  }
}

TEST(SizeClass, WasteIsAtMostAnEighthAbove128BytesAndUnder16Below) {
  for (size_t n = 9; n <= kMediumMax; ++n) {
    const size_t size = kClassSize[SizeClassOf(n)];
    if (n > 128) {
      ASSERT_LE((size - n) * 8, n) << "size " << n << " -> class " << size;
    } else {
      ASSERT_LT(size - n, 16u) << "size " << n << " -> class " << size;
    }
  }
}

TEST(SizeClass, TableAndArithmeticAgree) {
  for (size_t n = 0; n <= kSmallLookupMax; ++n) {
    ASSERT_EQ(SizeClassOf(n), ComputeSizeClass(n)) << n;
  }
}

TEST(SizeClass, ClassesGrowStrictlyAndIncludeEveryPowerOfTwo) {
  for (size_t c = 1; c < kNumClasses; ++c) ASSERT_LT(kClassSize[c - 1], kClassSize[c]);
  for (size_t p = 8; p <= kMediumMax; p *= 2) {
    EXPECT_EQ(kClassSize[SizeClassOf(p)], p) << p;
  }
}

// C23 and C++: malloc(n) suits any object of fundamental alignment (16 on
// x86-64: long double, max_align_t) no larger than n, so every class that
// can hold 16 bytes is a multiple of 16 (blocks from 64 KiB-aligned slices).
TEST(SizeClass, EveryClassAbove8BytesIsAMultipleOf16) {
  for (size_t n = 9; n <= kMediumMax; ++n) {
    ASSERT_EQ(kClassSize[SizeClassOf(n)] % 16, 0u) << n;
  }
}

}  // namespace
}  // namespace ferry

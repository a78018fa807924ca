// alignment_test.cc — every power of two from 1 B to 64 MiB, through
// ferry_aligned_alloc and ferry_posix_memalign, at sizes below, at and above
// the alignment (mimalloc#700 returned misaligned memory when size ==
// alignment). Each batch of live blocks is checked for alignment, usable
// size, writability of every usable byte, and overlap.
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <cstddef>
#include <string>
#include <thread>
#include <vector>

#include "ferry.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace {

using ferry_test::BlockIntact;
using ferry_test::FillBlock;
using ferry_test::FillRange;
using ferry_test::FirstMismatch;
using ferry_test::IsAligned;
using ferry_test::kKiB;
using ferry_test::kMiB;
using ferry_test::kSanitizerSlowdown;

enum class Entry { kAlignedAlloc, kPosixMemalign };

struct Case {
  Entry entry;
  int shift;  // alignment = 1 << shift
};

void* AllocateAligned(Entry entry, size_t alignment, size_t size) {
  if (entry == Entry::kAlignedAlloc) return ferry_aligned_alloc(alignment, size);
  void* out = nullptr;
  const int rc = ferry_posix_memalign(&out, alignment, size);
  return rc == 0 ? out : nullptr;
}

std::string CaseName(const testing::TestParamInfo<Case>& info) {
  std::string name = info.param.entry == Entry::kAlignedAlloc ? "AlignedAlloc_" : "PosixMemalign_";
  const size_t a = size_t{1} << info.param.shift;
  if (a >= kMiB) return name + std::to_string(a / kMiB) + "MiB";
  if (a >= kKiB) return name + std::to_string(a / kKiB) + "KiB";
  return name + std::to_string(a) + "B";
}

std::vector<Case> AllCases() {
  std::vector<Case> cases;
  // Up to 8 MiB under ThreadSanitizer: the blocks of the largest alignments
  // (up to 128 MiB, every byte written and read) took most of its minute,
  // and these cases run on one thread.
  const int max_shift = kSanitizerSlowdown > 1 ? 23 : 26;
  for (int shift = 0; shift <= max_shift; ++shift) cases.push_back({Entry::kAlignedAlloc, shift});
  // posix_memalign needs a multiple of sizeof(void*).
  for (int shift = 3; shift <= max_shift; ++shift) cases.push_back({Entry::kPosixMemalign, shift});
  return cases;
}

class EveryPowerOfTwo : public testing::TestWithParam<Case> {};

struct Block {
  char* p;
  size_t size;
  size_t usable;
};

TEST_P(EveryPowerOfTwo, GivesAlignedWritableDisjointBlocksAtSizesAroundTheAlignment) {
  const Entry entry = GetParam().entry;
  const size_t a = size_t{1} << GetParam().shift;
  std::vector<size_t> sizes = {1, a / 2, a - 1, a, a + 1, 2 * a + 8, 24, 100, 4096 + 8};
  if (a <= kMiB) sizes.push_back(3 * a);
  sizes.erase(std::remove(sizes.begin(), sizes.end(), size_t{0}), sizes.end());
  std::sort(sizes.begin(), sizes.end());
  sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
  // Several blocks per size where they are small, so that blocks share pages.
  const int repeat = a <= 4 * kKiB ? 16 : a <= 64 * kKiB ? 4 : 1;

  std::vector<Block> blocks;
  for (int r = 0; r < repeat; ++r) {
    for (size_t n : sizes) {
      char* p = static_cast<char*>(AllocateAligned(entry, a, n));
      ASSERT_NE(p, nullptr) << "alignment " << a << " size " << n;
      EXPECT_TRUE(IsAligned(p, a)) << "alignment " << a << " size " << n << " got " << static_cast<void*>(p);
      const size_t usable = ferry_usable_size(p);
      ASSERT_GE(usable, n) << "alignment " << a << " size " << n;
      FillBlock(p, usable);
      blocks.push_back({p, n, usable});
    }
  }
  for (const Block& b : blocks) {
    EXPECT_TRUE(BlockIntact(b.p, b.usable))
        << "alignment " << a << " size " << b.size << " usable " << b.usable << " at "
        << static_cast<void*>(b.p) << " was overwritten";
  }
  std::vector<Block> sorted = blocks;
  std::sort(sorted.begin(), sorted.end(), [](const Block& x, const Block& y) { return x.p < y.p; });
  for (size_t i = 1; i < sorted.size(); ++i) {
    EXPECT_LE(sorted[i - 1].p + sorted[i - 1].usable, sorted[i].p)
        << "alignment " << a << ": block " << static_cast<void*>(sorted[i - 1].p) << " of usable size "
        << sorted[i - 1].usable << " overlaps " << static_cast<void*>(sorted[i].p);
  }
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (i % 2 == 0) {
      ferry_free(blocks[i].p);
    } else {
      ferry_free_sized(blocks[i].p, blocks[i].size);
    }
  }
}

TEST_P(EveryPowerOfTwo, KeepsAlignmentWhenBlocksAreReused) {
  const Entry entry = GetParam().entry;
  const size_t a = size_t{1} << GetParam().shift;
  if (a > 4 * kMiB) GTEST_SKIP() << "covered by the batch test; kept short";
  const size_t n = std::max<size_t>(a, 16);
  for (int round = 0; round < 4; ++round) {
    std::vector<void*> blocks;
    const int count = a <= 64 * kKiB ? 64 : 4;
    for (int i = 0; i < count; ++i) {
      // Interleave with unaligned requests that take the same size classes.
      void* plain = ferry_malloc(n + 8);
      ASSERT_NE(plain, nullptr);
      void* p = AllocateAligned(entry, a, n);
      ASSERT_NE(p, nullptr);
      ASSERT_TRUE(IsAligned(p, a)) << "alignment " << a << " round " << round << " got " << p;
      memset(p, 0x11, n);
      blocks.push_back(p);
      ferry_free(plain);
    }
    for (void* p : blocks) ferry_free(p);
  }
}

INSTANTIATE_TEST_SUITE_P(Alignment, EveryPowerOfTwo, testing::ValuesIn(AllCases()), CaseName);

TEST(Alignment, AlignedBlocksFreedByAnotherThreadAreReturned) {
  std::vector<std::pair<void*, size_t>> blocks;
  for (int shift = 4; shift <= 22; ++shift) {
    const size_t a = size_t{1} << shift;
    for (size_t n : {size_t{8}, a / 2 + 8, a, a + 8}) {
      void* p = ferry_aligned_alloc(a, n);
      ASSERT_NE(p, nullptr);
      ASSERT_TRUE(IsAligned(p, a));
      FillBlock(p, n);
      blocks.emplace_back(p, n);
    }
  }
  std::thread([&] {
    for (auto [p, n] : blocks) {
      EXPECT_TRUE(BlockIntact(p, n)) << p;
      ferry_free(p);
    }
    ferry_flush();
  }).join();
  // The owner goes on allocating aligned and plain blocks over that memory.
  std::vector<void*> again;
  for (int shift = 4; shift <= 22; ++shift) {
    const size_t a = size_t{1} << shift;
    void* p = ferry_aligned_alloc(a, a);
    ASSERT_NE(p, nullptr);
    EXPECT_TRUE(IsAligned(p, a));
    FillBlock(p, a);
    again.push_back(p);
    again.push_back(ferry_malloc(a));
    ASSERT_NE(again.back(), nullptr);
  }
  for (void* p : again) ferry_free(p);
}

// A block aligned to 4 MiB or more starts a chunk of its own, where a
// segment's header (and the page record free and realloc read) would be:
// its bytes there are the program's and must never steer realloc. Since
// 2026-12-05 such a block's usable size is what it asked for, rounded, so a
// small one reached the large-block resize, which read those bytes as a
// page record (UBSan: misaligned 'struct Page'); written to look like a
// large block's record, they led it on into the block's own memory.
TEST(Alignment, TheBytesOfABlockAlignedBeyondASegmentNeverSteerRealloc) {
  const size_t alignment = size_t{4} << 20;
  unsigned char* p = static_cast<unsigned char*>(ferry_aligned_alloc(alignment, 600 * kKiB));
  ASSERT_NE(p, nullptr);
  const size_t usable = ferry_usable_size(p);
  ASSERT_GE(usable, 600 * kKiB);
  ASSERT_LT(usable, kMiB) << "the realloc below must not fit";
  // A large page's record as segment.h lays it out: kind at byte 7, start
  // at 16, slice_count at 40; the rest of the block, where a segment's
  // slice bitmap would be, zero (every slice free).
  memset(p, 0, usable);
  p[7] = 2;  // PageKind::kLarge
  const uintptr_t self = reinterpret_cast<uintptr_t>(p);
  memcpy(p + 16, &self, sizeof self);
  p[40] = static_cast<unsigned char>(usable / (64 * kKiB));
  std::vector<unsigned char> before(p, p + usable);
  unsigned char* q = static_cast<unsigned char*>(ferry_realloc(p, kMiB));
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(memcmp(q, before.data(), usable), 0) << "the block's bytes were not kept";
  EXPECT_GE(ferry_usable_size(q), kMiB);
  memset(q, 0x11, kMiB);
  ferry_free(q);
}

// A block aligned beyond a segment is placed in a mapping with room for the
// alignment; the room goes back at once. Kept, aligned_alloc(256 MiB, 1 MiB)
// held 268 MiB of address space (commit charge), reported 248 MiB usable,
// and a realloc copied all of it, making it resident.
TEST(Alignment, BlocksAlignedBeyondASegmentKeepOnlyTheirOwnChunks) {
  for (size_t alignment : {8 * kMiB, 64 * kMiB, 256 * kMiB}) {
    ferry_stats_t before, during;
    ferry_stats_get(&before);
    char* p = static_cast<char*>(ferry_aligned_alloc(alignment, kMiB));
    ASSERT_NE(p, nullptr) << alignment;
    ferry_stats_get(&during);
    EXPECT_TRUE(IsAligned(p, alignment)) << alignment;
    const size_t usable = ferry_usable_size(p);
    EXPECT_GE(usable, kMiB);
    EXPECT_LE(usable, 4 * kMiB) << "alignment " << alignment;
    EXPECT_LE(during.huge_bytes_live - before.huge_bytes_live, 8 * kMiB) << "alignment " << alignment;
    memset(p, 0x33, usable);  // every usable byte is mapped
    char* q = static_cast<char*>(ferry_realloc(p, usable + kMiB));
    ASSERT_NE(q, nullptr);
    EXPECT_EQ(q[0], 0x33);
    EXPECT_EQ(q[usable - 1], 0x33);
    ferry_free(q);
  }
}

TEST(Alignment, ReallocOfAnAlignedBlockKeepsItsContent) {
  for (int shift = 5; shift <= 24; shift += 3) {
    const size_t a = size_t{1} << shift;
    const uint64_t seed = 77 + shift;
    void* p = ferry_aligned_alloc(a, a);
    ASSERT_NE(p, nullptr);
    FillRange(p, 0, a, seed);
    void* q = ferry_realloc(p, 3 * a + 5);
    ASSERT_NE(q, nullptr);
    ASSERT_EQ(FirstMismatch(q, 0, a, seed), SIZE_MAX) << "alignment " << a;
    void* r = ferry_realloc(q, a / 3 + 1);
    ASSERT_NE(r, nullptr);
    ASSERT_EQ(FirstMismatch(r, 0, a / 3 + 1, seed), SIZE_MAX) << "alignment " << a;
    ferry_free(r);
  }
}

TEST(Alignment, ManySmallAlignedBlocksShareNoBytes) {
  // Many live blocks at small alignments, mixed, so blocks of one page are
  // carved at different offsets.
  std::vector<Block> blocks;
  for (int i = 0; i < 6000; ++i) {
    const size_t a = size_t{8} << (i % 7);  // 8 .. 512
    const size_t n = 1 + static_cast<size_t>(ferry_test::Mix(i) % 700);
    char* p = static_cast<char*>(ferry_aligned_alloc(a, n));
    ASSERT_NE(p, nullptr);
    ASSERT_TRUE(IsAligned(p, a)) << "alignment " << a << " size " << n;
    FillBlock(p, n);
    blocks.push_back({p, n, n});
  }
  std::sort(blocks.begin(), blocks.end(), [](const Block& x, const Block& y) { return x.p < y.p; });
  for (size_t i = 0; i < blocks.size(); ++i) {
    EXPECT_TRUE(BlockIntact(blocks[i].p, blocks[i].size));
    if (i > 0) {
      EXPECT_LE(blocks[i - 1].p + blocks[i - 1].size, blocks[i].p);
    }
  }
  for (const Block& b : blocks) ferry_free(b.p);
}

}  // namespace

// C23 and C++: the space malloc gives suits any object of fundamental
// alignment that fits in it. A 72-byte request may hold a 32-byte struct of
// long doubles followed by a tail; until 2026-12-04 half of the blocks of
// 72, 88, 104 and 120 bytes sat 8 bytes off 16, and a review's program that
// copied such a struct (movaps) faulted.
struct alignas(16) TwoLongDoubles {
  long double a, b;
};

TEST(Alignment, EveryBlockOver8BytesSuitsAnObjectAligned16) {
  for (size_t n = 9; n <= 4096; ++n) {
    void* blocks[8];
    for (void*& p : blocks) {
      p = ferry_malloc(n);
      ASSERT_NE(p, nullptr);
      ASSERT_EQ(reinterpret_cast<uintptr_t>(p) % alignof(std::max_align_t), 0u) << "malloc(" << n << ")";
    }
    if (n >= sizeof(TwoLongDoubles)) {
      auto* object = static_cast<TwoLongDoubles*>(blocks[1]);
      *object = TwoLongDoubles{1.0L, 2.0L};
      EXPECT_EQ(object->b, 2.0L);
    }
    for (void* p : blocks) ferry_free(p);
  }
}

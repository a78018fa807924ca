// api_test.cc — the C and C++ API of ferry.h, in API mode (//:ferry): ferry's
// functions sit beside glibc's malloc, which the test framework keeps using.
//
// Covers every function of ferry.h: allocation, zeroing, resizing, usable
// sizes, the errno contract of every failure, flush and collect, statistics,
// and ferry::allocator<T> in standard containers.
#include "ferry.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstddef>
#include <limits>
#include <list>
#include <map>
#include <new>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace {

using ferry_test::AllZero;
using ferry_test::BlockIntact;
using ferry_test::FillBlock;
using ferry_test::FillRange;
using ferry_test::FirstMismatch;
using ferry_test::IsAligned;
using ferry_test::kKiB;
using ferry_test::kMiB;
using ferry_test::kSanitizerSlowdown;
using ferry_test::Launder;

constexpr size_t kPtrdiffMax = static_cast<size_t>(PTRDIFF_MAX);
constexpr size_t kHugeThreshold = 2 * kMiB;  // > this is a huge allocation

// Sizes no allocator can honour. Each must give NULL and ENOMEM, and none may
// wrap around while being rounded up to a size class, a page or an alignment.
const size_t kImpossibleSizes[] = {
    SIZE_MAX,          SIZE_MAX - 1,     SIZE_MAX - 15,        SIZE_MAX - 4095,
    SIZE_MAX - kMiB,   SIZE_MAX / 2 + 1, kPtrdiffMax + 1,      kPtrdiffMax,
    kPtrdiffMax - 4095, size_t{1} << 62,
};

// The default alignment a block of `size` bytes must have.
size_t DefaultAlignment(size_t size) { return size % 16 == 0 ? 16 : 8; }

// Sizes from 1 B to 64 MiB, dense where size classes are dense, around every
// power of two above that.
std::vector<size_t> SizeSweep(size_t max_size) {
  std::vector<size_t> sizes;
  for (size_t n = 1; n <= 1024; ++n) sizes.push_back(n);
  for (size_t p = 1024; p <= max_size; p *= 2) {
    for (size_t n : {p - 1, p, p + 1, p + p / 4, p + p / 2, p + 3 * p / 4}) {
      if (n > 1024 && n <= max_size) sizes.push_back(n);
    }
  }
  std::sort(sizes.begin(), sizes.end());
  sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
  return sizes;
}

size_t ResidentBytes() {
  FILE* f = fopen("/proc/self/statm", "r");
  if (f == nullptr) return 0;
  unsigned long total = 0, resident = 0;
  if (fscanf(f, "%lu %lu", &total, &resident) != 2) resident = 0;
  fclose(f);
  return resident * static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

ferry_stats_t Stats() {
  ferry_stats_t s;
  memset(&s, 0, sizeof(s));
  ferry_stats_get(&s);
  return s;
}

// ---------------------------------------------------------------------------
// Version and malloc.

TEST(Api, VersionMacroIsMadeOfItsParts) {
  EXPECT_EQ(FERRY_VERSION,
            FERRY_VERSION_MAJOR * 10000 + FERRY_VERSION_MINOR * 100 + FERRY_VERSION_PATCH);
  EXPECT_EQ(Stats().version, static_cast<uint64_t>(FERRY_VERSION));
}

TEST(Api, MallocGivesDefaultAlignedWritableBlocksForEverySize) {
  for (size_t n : SizeSweep(8 * kMiB)) {
    void* p = ferry_malloc(n);
    ASSERT_NE(p, nullptr) << "size " << n;
    EXPECT_TRUE(IsAligned(p, DefaultAlignment(n))) << "size " << n << " at " << p;
    FillBlock(p, n);
    EXPECT_TRUE(BlockIntact(p, n)) << "size " << n;
    ferry_free(p);
  }
}

TEST(Api, MallocOfZeroGivesUniqueNonNullPointers) {
  std::vector<void*> blocks;
  for (int i = 0; i < 1000; ++i) {
    void* p = ferry_malloc(0);
    ASSERT_NE(p, nullptr);
    blocks.push_back(p);
  }
  std::vector<void*> sorted = blocks;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(std::adjacent_find(sorted.begin(), sorted.end()), sorted.end())
      << "ferry_malloc(0) returned the same pointer twice while both were live";
  for (void* p : blocks) ferry_free(p);
}

TEST(Api, LiveBlocksNeverOverlapAndKeepTheirContent) {
  struct Block {
    void* p;
    size_t n;
  };
  std::vector<Block> blocks;
  for (int round = 0; round < 3; ++round) {
    for (size_t i = 0; i < 3000; ++i) {
      const size_t n = 1 + (ferry_test::Mix(i + 7919 * round) % (i % 50 == 0 ? 300000 : 2000));
      void* p = ferry_malloc(n);
      ASSERT_NE(p, nullptr);
      FillBlock(p, n);
      blocks.push_back({p, n});
    }
    // Free every third block, so later rounds reuse holes between live blocks.
    std::vector<Block> kept;
    for (size_t i = 0; i < blocks.size(); ++i) {
      ASSERT_TRUE(BlockIntact(blocks[i].p, blocks[i].n)) << blocks[i].p << " size " << blocks[i].n;
      if (i % 3 == 0) {
        ferry_free(blocks[i].p);
      } else {
        kept.push_back(blocks[i]);
      }
    }
    blocks.swap(kept);
  }
  std::sort(blocks.begin(), blocks.end(),
            [](const Block& a, const Block& b) { return a.p < b.p; });
  for (size_t i = 1; i < blocks.size(); ++i) {
    EXPECT_LE(static_cast<char*>(blocks[i - 1].p) + blocks[i - 1].n, static_cast<char*>(blocks[i].p))
        << "blocks overlap: " << blocks[i - 1].p << " (" << blocks[i - 1].n << " B) and " << blocks[i].p;
  }
  for (const Block& b : blocks) {
    EXPECT_TRUE(BlockIntact(b.p, b.n)) << b.p;
    ferry_free(b.p);
  }
}

// A block the program never writes still holds whatever the allocator left
// in it (for a reused block: its old free-list link). Freeing it must work.
// Runs in a child process, so that a false "double free" abort fails this
// test alone.
void AllocateAndFreeBlocksWithoutWritingThem() {
  for (size_t n : SizeSweep(8 * kMiB)) {
    for (int round = 0; round < 3; ++round) {
      void* p = ferry_malloc(n);
      if (p == nullptr) abort();
      ferry_free(p);
    }
  }
  for (size_t n : {size_t{64}, 100 * kKiB, 600 * kKiB, 1500 * kKiB, 3 * kMiB}) {
    for (int round = 0; round < 3; ++round) {
      void* p = ferry_malloc(n);
      if (p == nullptr) abort();
      std::thread([p] {
        ferry_free(p);
        ferry_flush();
      }).join();
    }
  }
}

TEST(Api, BlocksFreedWithoutEverBeingWrittenCanBeReusedAndFreedAgain) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        AllocateAndFreeBlocksWithoutWritingThem();
        exit(0);
      },
      testing::ExitedWithCode(0), "");
}

TEST(Api, MallocOfImpossibleSizeFailsWithEnomem) {
  for (size_t n : kImpossibleSizes) {
    errno = 0;
    void* p = ferry_malloc(Launder(n));
    EXPECT_EQ(p, nullptr) << "size " << n;
    EXPECT_EQ(errno, ENOMEM) << "size " << n;
    if (p != nullptr) ferry_free(p);
  }
  // The allocator still works afterwards.
  void* p = ferry_malloc(64);
  ASSERT_NE(p, nullptr);
  ferry_free(p);
}

TEST(Api, FreeOfNullIsIgnored) {
  ferry_free(nullptr);
  ferry_free_sized(nullptr, 0);
  ferry_free_sized(nullptr, 128);
}

TEST(Api, FreeSizedReleasesBlocksOfEverySize) {
  for (size_t n : SizeSweep(8 * kMiB)) {
    void* p = ferry_malloc(n);
    ASSERT_NE(p, nullptr) << "size " << n;
    FillBlock(p, n);
    ferry_free_sized(p, n);
    // Released, not only checked: the next block of the size is this one
    // (the class's list hands out its last free block first; a large
    // block's slices and a huge block's cached mapping are taken again).
    void* again = ferry_malloc(n);
    EXPECT_EQ(again, p) << "size " << n;
    ferry_free_sized(again, n);
  }
  // Blocks released by size can be handed out again.
  std::vector<void*> blocks;
  for (int i = 0; i < 1000; ++i) {
    blocks.push_back(ferry_malloc(48));
    ASSERT_NE(blocks.back(), nullptr);
    FillBlock(blocks.back(), 48);
  }
  for (void* p : blocks) {
    EXPECT_TRUE(BlockIntact(p, 48));
    ferry_free_sized(p, 48);
  }
  void* q = ferry_aligned_alloc(4096, 100);
  ASSERT_NE(q, nullptr);
  ferry_free_sized(q, 100);
}

// ---------------------------------------------------------------------------
// calloc.

TEST(Api, CallocGivesZeroedBlocks) {
  for (size_t n : SizeSweep(8 * kMiB)) {
    void* p = ferry_calloc(1, n);
    ASSERT_NE(p, nullptr) << "size " << n;
    EXPECT_TRUE(AllZero(p, n)) << "size " << n;
    ferry_free(p);
  }
}

TEST(Api, CallocZeroesReusedMemory) {
  const size_t sizes[] = {8,     16,    24,     48,          64,          100,
                          256,   1000,  4096,   10000,       65536,       300000,
                          kMiB,  kHugeThreshold + 1, 3 * kMiB, 8 * kMiB};
  for (size_t n : sizes) {
    const int count = n >= kMiB ? 3 : n >= 65536 ? 8 : 64;
    const int rounds = n >= kMiB ? 20 / kSanitizerSlowdown + 1 : 20;
    for (int round = 0; round < rounds; ++round) {
      std::vector<void*> blocks;
      for (int i = 0; i < count; ++i) {
        void* p = ferry_malloc(n);
        ASSERT_NE(p, nullptr);
        memset(p, 0xAB, ferry_usable_size(p));
        blocks.push_back(p);
      }
      for (void* p : blocks) ferry_free(p);
      blocks.clear();
      for (int i = 0; i < count; ++i) {
        // Ask both as one element and as many, which must not matter.
        void* p = (round % 2 == 0 || n % 8 != 0) ? ferry_calloc(1, n) : ferry_calloc(n / 8, 8);
        ASSERT_NE(p, nullptr);
        ASSERT_TRUE(AllZero(p, n)) << "calloc(" << n << ") returned dirty memory at " << p
                                   << " in round " << round;
        blocks.push_back(p);
      }
      for (void* p : blocks) ferry_free(p);
    }
  }
}

TEST(Api, CallocZeroesMemoryAnotherThreadFreed) {
  for (size_t n : {size_t{32}, size_t{512}, size_t{20000}, 3 * kMiB}) {
    const int count = n >= kMiB ? 4 : 500;
    std::vector<void*> blocks;
    for (int i = 0; i < count; ++i) {
      void* p = ferry_malloc(n);
      ASSERT_NE(p, nullptr);
      memset(p, 0xAB, ferry_usable_size(p));
      blocks.push_back(p);
    }
    std::thread([&] {
      for (void* p : blocks) ferry_free(p);
      ferry_flush();
    }).join();
    for (int i = 0; i < count; ++i) {
      blocks[i] = ferry_calloc(1, n);
      ASSERT_NE(blocks[i], nullptr);
      ASSERT_TRUE(AllZero(blocks[i], n)) << "size " << n << " at " << blocks[i];
    }
    for (void* p : blocks) ferry_free(p);
  }
}

TEST(Api, CallocOfZeroElementsGivesAUsableBlock) {
  void* a = ferry_calloc(0, 16);
  void* b = ferry_calloc(16, 0);
  void* c = ferry_calloc(0, Launder(SIZE_MAX));
  EXPECT_NE(a, nullptr);
  EXPECT_NE(b, nullptr);
  EXPECT_NE(c, nullptr);
  ferry_free(a);
  ferry_free(b);
  ferry_free(c);
}

TEST(Api, CallocOverflowFailsWithEnomem) {
  const std::pair<size_t, size_t> cases[] = {
      {SIZE_MAX, 2},
      {2, SIZE_MAX},
      {SIZE_MAX / 2 + 1, 2},
      {size_t{1} << 32, size_t{1} << 32},
      {(size_t{1} << 32) + 1, (size_t{1} << 32) - 1},
      {SIZE_MAX, SIZE_MAX},
      {SIZE_MAX / 16 + 1, 16},
      // No overflow, but no allocator can give this much.
      {kPtrdiffMax, 1},
      {1, kPtrdiffMax + 1},
      {(kPtrdiffMax + 1) / 8, 8},
  };
  for (const auto& [count, size] : cases) {
    errno = 0;
    void* p = ferry_calloc(Launder(count), Launder(size));
    EXPECT_EQ(p, nullptr) << "calloc(" << count << ", " << size << ")";
    EXPECT_EQ(errno, ENOMEM) << "calloc(" << count << ", " << size << ")";
    if (p != nullptr) ferry_free(p);
  }
}

// ---------------------------------------------------------------------------
// realloc.

// Sizes in every kind of block: small classes, large runs of pages, and huge
// mappings (> 2 MiB), with the edges between them.
const size_t kLadder[] = {1,          8,         15,         16,       17,        24,
                          32,         48,        64,         80,       100,       128,
                          255,        256,       257,        512,      1000,      1024,
                          2048,       4000,      4096,       8192,     10000,     16384,
                          32768,      65536,     100000,     131072,   262144,    524288,
                          kMiB,       3 * kMiB / 2, 2 * kMiB - 1, 2 * kMiB, 2 * kMiB + 1, 3 * kMiB,
                          4 * kMiB,   8 * kMiB,  16 * kMiB,  32 * kMiB, 64 * kMiB};

// A block of `size` bytes holding the pattern for `seed`, for the realloc
// tests to follow through moves.
void* PatternedBlock(size_t size, uint64_t seed) {
  void* p = ferry_malloc(size);
  if (p != nullptr) FillRange(p, 0, size, seed);
  return p;
}

TEST(Api, ReallocKeepsContentWhileGrowingAndShrinkingThroughEverySizeClass) {
  const uint64_t seed = 0x5eed;
  size_t old_size = kLadder[0];
  void* p = PatternedBlock(old_size, seed);
  ASSERT_NE(p, nullptr);
  auto step = [&](size_t n) {
    void* q = ferry_realloc(p, n);
    ASSERT_NE(q, nullptr) << old_size << " -> " << n;
    const size_t kept = std::min(old_size, n);
    const size_t bad = FirstMismatch(q, 0, kept, seed);
    ASSERT_EQ(bad, SIZE_MAX) << "realloc " << old_size << " -> " << n << " lost byte " << bad;
    ASSERT_GE(ferry_usable_size(q), n);
    if (n > old_size) FillRange(q, old_size, n, seed);
    p = q;
    old_size = n;
  };
  for (size_t n : kLadder) step(n);
  for (size_t i = std::size(kLadder); i-- > 0;) step(kLadder[i]);
  // Jumps between the extremes, in and out of huge blocks.
  for (size_t n : {64 * kMiB, size_t{8}, 3 * kMiB, size_t{200}, 5 * kMiB, 300 * kKiB, 12 * kMiB,
                   size_t{1}, 2 * kMiB + 1, 2 * kMiB - 1, size_t{4096}, 40 * kMiB}) {
    step(n);
  }
  ferry_free(p);
}

TEST(Api, ReallocWalksRandomlyBetweenSizesWithoutLosingContent) {
  const uint64_t seed = 0xfeed;
  size_t old_size = 100;
  void* p = PatternedBlock(old_size, seed);
  ASSERT_NE(p, nullptr);
  for (uint64_t i = 0; i < 600; ++i) {
    const uint64_t r = ferry_test::Mix(i);
    // Mostly small, sometimes large, now and then huge.
    size_t n = r % 7 == 0 ? r % (6 * kMiB) : r % 3 == 0 ? r % (256 * kKiB) : r % 2048;
    if (n == 0) n = 1;
    void* q = ferry_realloc(p, n);
    ASSERT_NE(q, nullptr);
    const size_t kept = std::min(old_size, n);
    const size_t bad = FirstMismatch(q, 0, kept, seed);
    ASSERT_EQ(bad, SIZE_MAX) << "step " << i << ": " << old_size << " -> " << n << " lost byte " << bad;
    if (n > old_size) FillRange(q, old_size, n, seed);
    p = q;
    old_size = n;
  }
  ferry_free(p);
}

TEST(Api, ReallocToTheSameOrUsableSizeKeepsContent) {
  for (size_t n : {size_t{24}, size_t{1000}, 100 * kKiB, 3 * kMiB}) {
    void* p = ferry_malloc(n);
    ASSERT_NE(p, nullptr);
    FillRange(p, 0, n, n);
    p = ferry_realloc(p, n);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(FirstMismatch(p, 0, n, n), SIZE_MAX) << "size " << n;
    const size_t usable = ferry_usable_size(p);
    p = ferry_realloc(p, usable);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(FirstMismatch(p, 0, n, n), SIZE_MAX) << "size " << n;
    ferry_free(p);
  }
}

// A block kept in place by a shrinking realloc still has the alignment
// malloc gives the new size (found by the fuzzer: 104-byte blocks sit 8
// bytes off 16, and realloc(p, 64) used to keep one).
TEST(Api, ReallocToAMultipleOf16IsAligned16) {
  for (size_t n = 8; n <= 2048; n += 8) {
    void* blocks[4];
    for (void*& p : blocks) {
      p = ferry_malloc(n);
      ASSERT_NE(p, nullptr);
    }
    for (void*& p : blocks) {
      const size_t usable = ferry_usable_size(p);
      const size_t target = (usable / 2 + 15) / 16 * 16;
      if (target == 0 || target > usable) continue;
      p = ferry_realloc(p, target);
      ASSERT_NE(p, nullptr);
      EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 16, 0u)
          << "realloc of a " << n << " B block (usable " << usable << ") to " << target;
    }
    for (void* p : blocks) ferry_free(p);
  }
}

// The same when realloc moves a growing block with room to spare: the room
// must not land a size that is a multiple of 16 in a class that is not
// (a review found realloc(72-byte block, 80) asking for 100: class 104).
TEST(Api, ReallocGrowingToAMultipleOf16IsAligned16) {
  for (size_t n = 8; n <= 4096; n += 8) {
    for (size_t step = 8; step <= 64; step += 8) {
      void* p = ferry_malloc(n);
      ASSERT_NE(p, nullptr);
      const size_t target = (ferry_usable_size(p) + step + 15) / 16 * 16;
      p = ferry_realloc(p, target);
      ASSERT_NE(p, nullptr);
      EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 16, 0u) << "realloc of a " << n << " B block to " << target;
      ferry_free(p);
    }
  }
}

// A buffer appended to a few bytes at a time (a log, a string builder) must
// not be copied at every size class it crosses (classes are 12.5% apart).
// Growing 16 B -> 64 KiB by 48 B steps it moved 66 times without headroom,
// 23 times with a quarter more room at each move, and moves 16 times with
// half as much again.
TEST(Api, ReallocAppendingSmallStepsMovesTheBlockRarely) {
#if FERRY_VALGRIND
  GTEST_SKIP() << "a FERRY_VALGRIND build moves every realloc'd block";
#endif
  const uint64_t seed = 0xa99e;
  size_t size = 16;
  void* p = PatternedBlock(size, seed);
  ASSERT_NE(p, nullptr);
  int moves = 0;
  while (size < 64 * kKiB) {
    const size_t n = size + 48;
    void* q = ferry_realloc(p, n);
    ASSERT_NE(q, nullptr);
    ASSERT_EQ(FirstMismatch(q, 0, size, seed), SIZE_MAX) << size << " -> " << n;
    FillRange(q, size, n, seed);
    if (q != p) ++moves;
    p = q;
    size = n;
  }
  ferry_free(p);
  EXPECT_LE(moves, 20) << "an appended buffer moved at nearly every size class";
}

// The headroom is for appending only: a caller that grows its buffer
// geometrically gets the class of what it asked for, no more.
TEST(Api, ReallocGrowingByAQuarterOrMoreGetsNoHeadroom) {
  for (size_t n = 64; n <= 256 * kKiB; n = n * 3 / 2) {
    void* p = ferry_malloc(n);
    ASSERT_NE(p, nullptr);
    const size_t target = 2 * ferry_usable_size(p);
    void* q = ferry_realloc(p, target);
    ASSERT_NE(q, nullptr);
    void* fresh = ferry_malloc(target);
    ASSERT_NE(fresh, nullptr);
    EXPECT_EQ(ferry_usable_size(q), ferry_usable_size(fresh)) << n << " -> " << target;
    ferry_free(fresh);
    ferry_free(q);
  }
}

TEST(Api, ReallocOfNullActsAsMalloc) {
  for (size_t n : {size_t{0}, size_t{1}, size_t{100}, 100 * kKiB, 3 * kMiB}) {
    void* p = ferry_realloc(nullptr, n);
    ASSERT_NE(p, nullptr) << "size " << n;
    EXPECT_GE(ferry_usable_size(p), n);
    FillBlock(p, n);
    ferry_free(p);
  }
}

TEST(Api, ReallocToZeroGivesUniqueMinimalBlocks) {
  std::vector<void*> blocks;
  for (size_t n : {size_t{8}, size_t{100}, size_t{5000}, 500 * kKiB, 3 * kMiB, size_t{64}, size_t{64}}) {
    void* p = ferry_malloc(n);
    ASSERT_NE(p, nullptr);
    void* q = ferry_realloc(p, 0);
    ASSERT_NE(q, nullptr) << "realloc(p, 0) of a " << n << " B block";
    blocks.push_back(q);
  }
  std::vector<void*> sorted = blocks;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(std::adjacent_find(sorted.begin(), sorted.end()), sorted.end());
  for (void* p : blocks) ferry_free(p);
}

// Huge blocks (past 2 MiB) are resized by the kernel, not copied: their
// mapping grows or shrinks in place, or moves whole when something is
// mapped right after it. Their contents must come through either way.
// Maps a page at `end` so that the mapping before it cannot grow in place.
// nullptr when something is mapped there already (blocked all the same);
// skips the test on a kernel that takes MAP_FIXED_NOREPLACE as a hint.
void* BlockGrowthAt(uintptr_t end) {
  void* blocker = mmap(reinterpret_cast<void*>(end), 4096, PROT_NONE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  if (blocker == MAP_FAILED) return nullptr;
  if (blocker != reinterpret_cast<void*>(end)) {
    munmap(blocker, 4096);
    return MAP_FAILED;
  }
  return blocker;
}

TEST(Api, ReallocOfAHugeBlockGrowsAndShrinksWithItsContent) {
  const uint64_t seed = 0x4e6e;
  size_t size = 3 * kMiB;
  void* p = PatternedBlock(size, seed);
  ASSERT_NE(p, nullptr);
  const uint64_t huge_allocs = Stats().huge_allocs;
  auto resize = [&](size_t n) {
    void* q = ferry_realloc(p, n);
    ASSERT_NE(q, nullptr) << size << " -> " << n;
    ASSERT_EQ(FirstMismatch(q, 0, std::min(size, n), seed), SIZE_MAX) << size << " -> " << n;
    ASSERT_GE(ferry_usable_size(q), n);
    if (n > size) FillRange(q, size, n, seed);
    p = q;
    size = n;
  };
  for (size_t n = 4 * kMiB; n <= 48 * kMiB; n += kMiB + 4096 + 16) resize(n);
  EXPECT_EQ(Stats().huge_allocs, huge_allocs) << "a huge block was copied to a new one to grow";
  // Shrinking a mapping never needs room: the block stays where it is.
  while (size > 6 * kMiB) {
    void* before = p;
    resize(size / 3);
    EXPECT_EQ(p, before) << "a huge block moved to shrink to " << size;
  }
  EXPECT_LT(ferry_usable_size(p), size + 4 * kMiB) << "the shrunk block kept its memory";
  ferry_free(p);
}

// The address space right after the block is taken: the block moves, by
// page tables, to a range of its own, and is an ordinary huge block there.
TEST(Api, AHugeBlockThatCannotGrowInPlaceMovesWithItsContent) {
  const uint64_t seed = 0x3070e;
  const size_t size = 20 * kMiB;
  // A fresh mapping, which ends where the block does: one taken from the
  // huge cache may keep a tail past the block's usable size, the blocker's
  // address.
  ferry_collect();
  void* p = PatternedBlock(size, seed);
  ASSERT_NE(p, nullptr);
  void* blocker = BlockGrowthAt(reinterpret_cast<uintptr_t>(p) + ferry_usable_size(p));
  if (blocker == MAP_FAILED) GTEST_SKIP() << "MAP_FIXED_NOREPLACE is only a hint on this kernel";
  const uint64_t huge_allocs = Stats().huge_allocs;
  void* q = ferry_realloc(p, 2 * size);
  ASSERT_NE(q, nullptr);
  EXPECT_NE(q, p) << "grew in place through a mapping";
  EXPECT_EQ(Stats().huge_allocs, huge_allocs) << "copied instead of moved";
  EXPECT_EQ(FirstMismatch(q, 0, size, seed), SIZE_MAX);
  EXPECT_TRUE(IsAligned(q, 16));
  EXPECT_GE(ferry_usable_size(q), 2 * size);
  FillRange(q, size, 2 * size, seed);
  void* r = ferry_realloc(q, size / 2);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(FirstMismatch(r, 0, size / 2, seed), SIZE_MAX);
  ferry_free(r);
  if (blocker != nullptr) munmap(blocker, 4096);
}

// A block aligned beyond its slice sits further into its mapping; moved,
// it keeps its offset, so its alignment too.
TEST(Api, AnAlignedHugeBlockMovesWithItsAlignment) {
  const uint64_t seed = 0xa119;
  const size_t size = 3 * kMiB;
  ferry_collect();  // a fresh mapping (AHugeBlockThatCannotGrowInPlaceMovesWithItsContent)
  void* p = ferry_aligned_alloc(2 * kMiB, size);
  ASSERT_NE(p, nullptr);
  FillRange(p, 0, size, seed);
  void* blocker = BlockGrowthAt(reinterpret_cast<uintptr_t>(p) + ferry_usable_size(p));
  if (blocker == MAP_FAILED) GTEST_SKIP() << "MAP_FIXED_NOREPLACE is only a hint on this kernel";
  void* q = ferry_realloc(p, 10 * kMiB);
  ASSERT_NE(q, nullptr);
  EXPECT_NE(q, p);
  EXPECT_TRUE(IsAligned(q, 2 * kMiB));
  EXPECT_EQ(FirstMismatch(q, 0, size, seed), SIZE_MAX);
  EXPECT_GE(ferry_usable_size(q), 10 * kMiB);
  ferry_free(q);
  if (blocker != nullptr) munmap(blocker, 4096);
}

// A block the program split (mprotect on one of its pages) cannot be
// remapped; realloc copies it instead, and nothing else is disturbed.
TEST(Api, AHugeBlockThatTheProgramSplitIsCopied) {
  const uint64_t seed = 0x5b117;
  const size_t size = 6 * kMiB;
  void* p = PatternedBlock(size, seed);
  ASSERT_NE(p, nullptr);
  void* bystander = PatternedBlock(size, seed + 1);
  ASSERT_NE(bystander, nullptr);
  const uintptr_t middle = reinterpret_cast<uintptr_t>(p) + 2 * kMiB;
  ASSERT_EQ(mprotect(reinterpret_cast<void*>(middle), 4096, PROT_READ), 0);
  const uint64_t huge_allocs = Stats().huge_allocs;
  void* q = ferry_realloc(p, 3 * size);
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(Stats().huge_allocs, huge_allocs + 1) << "not copied";
  EXPECT_EQ(FirstMismatch(q, 0, size, seed), SIZE_MAX);
  FillRange(q, size, 3 * size, seed);  // all of it writable: a new mapping
  EXPECT_EQ(FirstMismatch(bystander, 0, size, seed + 1), SIZE_MAX);
  ferry_free(q);
  ferry_free(bystander);
}

// Past what the kernel will back: NULL and ENOMEM, the block intact (or,
// where the overcommit policy allows anything, a block of that size).
TEST(Api, ReallocOfAHugeBlockToAnAbsurdSizeFailsAndKeepsIt) {
  const size_t size = 5 * kMiB;
  void* p = ferry_malloc(size);
  ASSERT_NE(p, nullptr);
  FillBlock(p, size);
  errno = 0;
  void* q = ferry_realloc(p, Launder(size_t{1} << 45));
  if (q != nullptr) {
    ferry_free(q);
    GTEST_SKIP() << "this kernel's overcommit policy mapped 32 TiB";
  }
  EXPECT_EQ(errno, ENOMEM);
  EXPECT_TRUE(BlockIntact(p, size));
  ferry_free(p);
}

// A block that moves leaves the segment map before its old range goes back
// to the kernel: another thread mapping a huge block there at that moment
// keeps its own entry (its free would abort as "not allocated by ferry").
// A guard more than a proof: with the two steps the other way round it
// failed at once only when a pause widened the window between them.
TEST(Api, HugeBlocksMovingOnSeveralThreadsLeaveEveryOtherBlockValid) {
  constexpr int kThreads = 4;
  constexpr int kRounds = 40;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t] {
      const size_t size = 5 * kMiB + static_cast<size_t>(t) * 4096;
      for (int round = 0; round < kRounds; ++round) {
        const uint64_t seed = static_cast<uint64_t>(t) * 1000 + static_cast<uint64_t>(round);
        void* p = ferry_malloc(size);
        ASSERT_NE(p, nullptr);
        FillRange(p, 0, 64 * kKiB, seed);
        FillRange(p, size - 64 * kKiB, size, seed);
        void* blocker = BlockGrowthAt(reinterpret_cast<uintptr_t>(p) + ferry_usable_size(p));
        void* q = ferry_realloc(p, 2 * size);
        ASSERT_NE(q, nullptr);
        if (blocker != nullptr && blocker != MAP_FAILED) munmap(blocker, 4096);
        // Its mapping, padded for alignment, fits the hole p leaves: it may
        // land where p was.
        void* other = ferry_malloc(3 * kMiB);
        ASSERT_NE(other, nullptr);
        ASSERT_EQ(FirstMismatch(q, 0, 64 * kKiB, seed), SIZE_MAX);
        ASSERT_EQ(FirstMismatch(q, size - 64 * kKiB, size, seed), SIZE_MAX);
        ferry_free(q);
        ferry_free(other);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
}

TEST(Api, FailedReallocLeavesTheOldBlockIntact) {
  for (size_t n : {size_t{64}, size_t{4000}, 100 * kKiB, 3 * kMiB, 20 * kMiB}) {
    void* p = ferry_malloc(n);
    ASSERT_NE(p, nullptr);
    FillBlock(p, n);
    for (size_t impossible : kImpossibleSizes) {
      errno = 0;
      void* q = ferry_realloc(p, Launder(impossible));
      EXPECT_EQ(q, nullptr) << n << " -> " << impossible;
      EXPECT_EQ(errno, ENOMEM) << n << " -> " << impossible;
      if (q != nullptr) {
        p = q;  // Nothing more to check; keep the test from crashing.
        break;
      }
      ASSERT_TRUE(BlockIntact(p, n)) << "failed realloc(" << impossible << ") changed a " << n
                                     << " B block";
    }
    // The block is still a valid, resizable block.
    EXPECT_GE(ferry_usable_size(p), n);
    void* q = ferry_realloc(p, n + 1);
    ASSERT_NE(q, nullptr);
    ferry_free(q);
  }
}

// ---------------------------------------------------------------------------
// Usable size.

TEST(Api, UsableSizeOfNullIsZero) { EXPECT_EQ(ferry_usable_size(nullptr), 0u); }

TEST(Api, UsableSizeCoversTheRequestAndIsAllWritable) {
  struct Block {
    char* p;
    size_t usable;
  };
  // Up to 8 MiB under ThreadSanitizer, where filling 64 MiB blocks took
  // most of a minute and judges no thread.
  for (size_t n : SizeSweep(kSanitizerSlowdown > 1 ? 8 * kMiB : 64 * kMiB)) {
    // A few live neighbours, each filled over its whole usable size: if one
    // overstated its usable size, writing it would overwrite another.
    const int count = n > 4 * kMiB ? 2 : n > 64 * kKiB ? 4 : 8;
    std::vector<Block> blocks;
    for (int i = 0; i < count; ++i) {
      char* p = static_cast<char*>(ferry_malloc(n));
      ASSERT_NE(p, nullptr) << "size " << n;
      const size_t usable = ferry_usable_size(p);
      ASSERT_GE(usable, n) << "size " << n;
      FillBlock(p, usable);
      blocks.push_back({p, usable});
    }
    for (const Block& b : blocks) {
      ASSERT_TRUE(BlockIntact(b.p, b.usable)) << "size " << n << ", usable " << b.usable;
      EXPECT_EQ(ferry_usable_size(b.p), b.usable) << "usable size changed while the block was live";
    }
    std::sort(blocks.begin(), blocks.end(), [](const Block& a, const Block& b) { return a.p < b.p; });
    for (size_t i = 1; i < blocks.size(); ++i) {
      EXPECT_LE(blocks[i - 1].p + blocks[i - 1].usable, blocks[i].p) << "size " << n;
    }
    for (const Block& b : blocks) ferry_free(b.p);
  }
}

// ---------------------------------------------------------------------------
// Aligned allocation (alignment_test.cc sweeps every power of two).

TEST(Api, AlignedAllocGivesAlignedBlocks) {
  for (size_t alignment : {size_t{1}, size_t{8}, size_t{64}, size_t{4096}, 2 * kMiB}) {
    void* p = ferry_aligned_alloc(alignment, 1000);
    ASSERT_NE(p, nullptr);
    EXPECT_TRUE(IsAligned(p, alignment)) << p;
    EXPECT_GE(ferry_usable_size(p), 1000u);
    FillBlock(p, 1000);
    ferry_free(p);
  }
}

TEST(Api, AlignedAllocRejectsAnAlignmentThatIsNoPowerOfTwoWithEinval) {
  for (size_t alignment : {size_t{0}, size_t{3}, size_t{6}, size_t{24}, size_t{48}, size_t{100},
                           size_t{4097}, kMiB + 1, 3 * kMiB, SIZE_MAX}) {
    errno = 0;
    void* p = ferry_aligned_alloc(Launder(alignment), 64);
    EXPECT_EQ(p, nullptr) << "alignment " << alignment;
    EXPECT_EQ(errno, EINVAL) << "alignment " << alignment;
    if (p != nullptr) ferry_free(p);
  }
}

TEST(Api, AlignedAllocOfImpossibleSizeFailsWithEnomem) {
  for (size_t alignment : {size_t{16}, size_t{4096}, kMiB, 64 * kMiB}) {
    for (size_t n : kImpossibleSizes) {
      errno = 0;
      void* p = ferry_aligned_alloc(alignment, Launder(n));
      EXPECT_EQ(p, nullptr) << "alignment " << alignment << " size " << n;
      EXPECT_EQ(errno, ENOMEM) << "alignment " << alignment << " size " << n;
      if (p != nullptr) ferry_free(p);
    }
  }
}

TEST(Api, AlignmentsBeyondTheGuaranteeAreHonouredOrRefused) {
  // Above 64 MiB ferry may refuse, but it must never return a misaligned block.
  for (int shift = 27; shift <= 63; shift += (shift < 30 ? 1 : 11)) {
    const size_t alignment = size_t{1} << shift;
    errno = 0;
    void* p = ferry_aligned_alloc(Launder(alignment), 64);
    if (p == nullptr) {
      EXPECT_TRUE(errno == ENOMEM || errno == EINVAL) << "alignment 2^" << shift << " errno " << errno;
      continue;
    }
    EXPECT_TRUE(IsAligned(p, alignment)) << "alignment 2^" << shift << " got " << p;
    FillBlock(p, 64);
    ferry_free(p);
  }
}

TEST(Api, PosixMemalignGivesAlignedBlocksAndLeavesErrnoAlone) {
  for (size_t alignment : {size_t{8}, size_t{16}, size_t{256}, size_t{65536}, 4 * kMiB}) {
    for (size_t n : {size_t{0}, size_t{1}, size_t{100}, 3 * kMiB}) {
      void* p = nullptr;
      errno = EDOM;
      ASSERT_EQ(ferry_posix_memalign(&p, alignment, n), 0) << alignment << " " << n;
      EXPECT_EQ(errno, EDOM) << "posix_memalign changed errno";
      ASSERT_NE(p, nullptr);
      EXPECT_TRUE(IsAligned(p, alignment)) << p;
      EXPECT_GE(ferry_usable_size(p), n);
      FillBlock(p, n);
      ferry_free(p);
    }
  }
}

TEST(Api, PosixMemalignRejectsBadAlignmentWithEinvalAndLeavesOutAlone) {
  // Not a power of two, or smaller than (so not a multiple of) sizeof(void*).
  for (size_t alignment : {size_t{0}, size_t{1}, size_t{2}, size_t{4}, size_t{3}, size_t{12},
                           size_t{24}, size_t{48}, size_t{4095}, kMiB + 8, SIZE_MAX}) {
    void* sentinel = reinterpret_cast<void*>(uintptr_t{0x1234});
    void* out = sentinel;
    errno = EDOM;
    EXPECT_EQ(ferry_posix_memalign(&out, Launder(alignment), 64), EINVAL) << "alignment " << alignment;
    EXPECT_EQ(out, sentinel) << "alignment " << alignment;
    EXPECT_EQ(errno, EDOM) << "alignment " << alignment;
    if (out != sentinel && out != nullptr) ferry_free(out);
  }
}

TEST(Api, PosixMemalignOfImpossibleSizeReturnsEnomemAndLeavesOutAlone) {
  for (size_t alignment : {size_t{8}, size_t{64}, size_t{4096}, 16 * kMiB}) {
    for (size_t n : kImpossibleSizes) {
      void* sentinel = reinterpret_cast<void*>(uintptr_t{0x1234});
      void* out = sentinel;
      errno = EDOM;
      EXPECT_EQ(ferry_posix_memalign(&out, alignment, Launder(n)), ENOMEM)
          << "alignment " << alignment << " size " << n;
      EXPECT_EQ(out, sentinel);
      EXPECT_EQ(errno, EDOM);
      if (out != sentinel && out != nullptr) ferry_free(out);
    }
  }
}

// ---------------------------------------------------------------------------
// Flush, collect and statistics.

TEST(Api, FlushWithNothingPendingReturns) {
  ferry_flush();
  ferry_flush();
  std::thread([] { ferry_flush(); }).join();
  std::thread([] {
    void* p = ferry_malloc(10);
    ferry_free(p);
    ferry_flush();
  }).join();
}

TEST(Api, StatisticsCountRemoteFreesAndTheirReturn) {
  constexpr int kBlocks = 2000;
  std::vector<void*> blocks;
  for (int i = 0; i < kBlocks; ++i) {
    blocks.push_back(ferry_malloc(80));
    ASSERT_NE(blocks.back(), nullptr);
  }
  const ferry_stats_t before = Stats();
  std::thread([&] {
    for (void* p : blocks) ferry_free(p);
    ferry_flush();
  }).join();
  const ferry_stats_t after = Stats();
  EXPECT_GE(after.remote_frees - before.remote_frees, uint64_t{kBlocks});
  EXPECT_GE(after.blocks_returned - before.blocks_returned, uint64_t{kBlocks});
  EXPECT_GE((after.batches_published + after.batches_inline) -
                (before.batches_published + before.batches_inline),
            1u);
  EXPECT_GE(after.chains_pushed - before.chains_pushed, 1u);
  if (getenv("FERRY_BATCH") == nullptr) {
    // Batching: far fewer atomic pushes than blocks (unless a variant of
    // this test makes every batch a single free).
    EXPECT_LT(after.chains_pushed - before.chains_pushed, uint64_t{kBlocks});
  }
}

// The owner's frees into its full pages that others' blocks came back to
// join those blocks on the page, but are no returned blocks: counted as
// pushes they made fewer blocks than pushes (a bug hunt's python).
TEST(Api, ChainsPushedNeverOutnumberTheBlocksReturned) {
  std::thread([] {
    constexpr int kBlocks = 64 * 10;  // ten pages of the 1 KiB class
    std::vector<void*> blocks;
    for (int i = 0; i < kBlocks; ++i) blocks.push_back(ferry_malloc(1000));
    const ferry_stats_t before = Stats();
    std::thread([&] {
      for (int i = 0; i < kBlocks; i += 64) ferry_free(blocks[i]);  // remote: a block a page comes back
      ferry_flush();
    }).join();
    for (int i = 0; i < kBlocks; ++i) {
      if (i % 64 != 0) ferry_free(blocks[i]);  // the owner's, into those pages
    }
    const ferry_stats_t after = Stats();
    EXPECT_GE(after.blocks_returned - before.blocks_returned, uint64_t{kBlocks / 64});
    EXPECT_LE(after.chains_pushed - before.chains_pushed, after.blocks_returned - before.blocks_returned);
  }).join();
}

TEST(Api, StatisticsDescribeHeapsSegmentsAndPages) {
  void* p = ferry_malloc(100);
  ASSERT_NE(p, nullptr);
  const ferry_stats_t s = Stats();
  EXPECT_EQ(s.version, static_cast<uint64_t>(FERRY_VERSION));
  EXPECT_GE(s.heaps_created, 1u);
  EXPECT_GE(s.segments_live, 1u);
  EXPECT_GE(s.segments_mapped, s.segments_live);
  EXPECT_GE(s.segments_mapped, s.segments_released);
  EXPECT_GT(s.arena_bytes_reserved, 0u);
  EXPECT_GE(s.pages_made, 1u);
  EXPECT_GE(s.pages_made, s.pages_released);
  EXPECT_GE(s.huge_allocs, s.huge_frees);
  ferry_free(p);
}

// A free that empties its page counts in its thread's heap
// (local_frees_slow), summed over every heap when read: threads that have
// exited count too.
TEST(Api, StatisticsCountEveryThreadsFreesThatEmptyTheirPage) {
  constexpr int kThreads = 4;
  constexpr uint64_t kPairs = 1000;
  const uint64_t before = Stats().local_frees_slow;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([] {
      // Each free empties the page: a class no other test here uses, so a
      // heap an exited thread left holds no live block of it.
      for (uint64_t k = 0; k < kPairs; ++k) ferry_free(ferry_malloc(13000));
    });
  }
  for (std::thread& thread : threads) thread.join();
  const uint64_t counted = Stats().local_frees_slow - before;
  EXPECT_GE(counted, kThreads * kPairs);
  EXPECT_LE(counted, kThreads * kPairs + 64) << "frees of other threads counted";
}

// A program built against an older header (a smaller ferry_stats_t) or a
// newer one (a larger) gets exactly its own size written: nothing past it,
// and zeroes for fields the library does not know.
TEST(Api, StatisticsWriteOnlyTheCallersSize) {
  constexpr size_t kSlack = 64;
  unsigned char buffer[sizeof(ferry_stats_t) + kSlack];
  auto* stats = reinterpret_cast<ferry_stats_t*>(buffer);

  memset(buffer, 0xA5, sizeof(buffer));
  ferry_stats_get_sized(stats, 16);  // an older program's: version and heaps_created
  EXPECT_EQ(stats->version, static_cast<uint64_t>(FERRY_VERSION));
  EXPECT_GE(stats->heaps_created, 1u);
  for (size_t i = 16; i < sizeof(buffer); ++i) ASSERT_EQ(buffer[i], 0xA5) << "byte " << i << " written";

  memset(buffer, 0xA5, sizeof(buffer));
  ferry_stats_get_sized(stats, sizeof(buffer));  // a newer program's
  EXPECT_EQ(stats->version, static_cast<uint64_t>(FERRY_VERSION));
  for (size_t i = sizeof(ferry_stats_t); i < sizeof(buffer); ++i) {
    ASSERT_EQ(buffer[i], 0) << "byte " << i << " of a field the library does not know";
  }

  // The function of the same name (programs built against 0.1.0, before the
  // macro) writes 0.1.0's last layout: 232 bytes.
  memset(buffer, 0xA5, sizeof(buffer));
  (ferry_stats_get)(stats);
  EXPECT_EQ(stats->version, static_cast<uint64_t>(FERRY_VERSION));
  EXPECT_NE(buffer[231], 0xA5);  // pool_starts' top byte: 0 unless the pool started 2^56 times
  for (size_t i = 232; i < sizeof(buffer); ++i) ASSERT_EQ(buffer[i], 0xA5) << "byte " << i << " written";

  // The macro passes the header's size: a NULL (or untyped) pointer works.
  ferry_stats_get(static_cast<ferry_stats_t*>(nullptr));

  memset(buffer, 0xA5, sizeof(buffer));
  ferry_stats_get_sized(stats, 0);
  ferry_stats_get_sized(nullptr, sizeof(ferry_stats_t));
  for (size_t i = 0; i < sizeof(buffer); ++i) ASSERT_EQ(buffer[i], 0xA5) << "byte " << i << " written";
}

TEST(Api, StatisticsCountHugeAllocations) {
  const ferry_stats_t before = Stats();
  void* p = ferry_malloc(8 * kMiB);
  ASSERT_NE(p, nullptr);
  const ferry_stats_t during = Stats();
  EXPECT_EQ(during.huge_allocs - before.huge_allocs, 1u);
  EXPECT_GE(during.huge_bytes_live - before.huge_bytes_live, 8 * kMiB);
  ferry_free(p);
  const ferry_stats_t after = Stats();
  EXPECT_EQ(after.huge_frees - before.huge_frees, 1u);
  EXPECT_EQ(after.huge_bytes_live, before.huge_bytes_live);
}

// bytes_unmapped (0.2.2): what of huge mappings went back to the OS, by a
// free, a realloc that shrank a block, or the huge cache giving back what
// waited in it (here ferry_collect, which empties it).
TEST(Api, StatisticsCountTheHugeBytesGivenBackToTheOs) {
  ferry_collect();
  const ferry_stats_t before = Stats();
  void* p = ferry_malloc(40 * kMiB);
  ASSERT_NE(p, nullptr);
  memset(p, 1, 40 * kMiB);
  const ferry_stats_t held = Stats();
  EXPECT_EQ(held.bytes_unmapped, before.bytes_unmapped) << "nothing was given back yet";
  void* shrunk = ferry_realloc(p, 8 * kMiB);
  ASSERT_EQ(shrunk, p);
  ferry_collect();  // whatever of the shrink waited in the cache goes too
  const ferry_stats_t after_shrink = Stats();
  EXPECT_GE(after_shrink.bytes_unmapped - before.bytes_unmapped, 32 * kMiB);
  EXPECT_EQ(after_shrink.huge_bytes_cached, 0u);
  ferry_free(shrunk);
  ferry_collect();
  const ferry_stats_t after_free = Stats();
  EXPECT_GE(after_free.bytes_unmapped - after_shrink.bytes_unmapped, 8 * kMiB);
  EXPECT_EQ(after_free.huge_bytes_cached, 0u);
}

TEST(Api, StatsPrintWritesATableWhoseFirstLineNamesFerry) {
  FILE* f = tmpfile();
  ASSERT_NE(f, nullptr);
  ferry_stats_print(f);
  fflush(f);
  rewind(f);
  std::string text;
  char buf[4096];
  size_t got;
  while ((got = fread(buf, 1, sizeof(buf), f)) > 0) text.append(buf, got);
  fclose(f);
  ASSERT_FALSE(text.empty());
  std::string first_line = text.substr(0, text.find('\n'));
  std::string lower = first_line;
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  EXPECT_NE(lower.find("ferry"), std::string::npos) << first_line;
  EXPECT_NE(first_line.find_first_of("0123456789"), std::string::npos)
      << "the first line should carry the version: " << first_line;
  EXPECT_GT(std::count(text.begin(), text.end(), '\n'), 5) << text;
}

TEST(Api, StatsPrintToNullWritesToStderr) {
  testing::internal::CaptureStderr();
  ferry_stats_print(nullptr);
  const std::string text = testing::internal::GetCapturedStderr();
  std::string lower = text.substr(0, text.find('\n'));
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  EXPECT_NE(lower.find("ferry"), std::string::npos) << text;
}

TEST(Api, CollectGivesFreedMemoryBackToTheOs) {
  ferry_collect();
  const ferry_stats_t before = Stats();
  const size_t rss_before = ResidentBytes();
  constexpr size_t kTotal = 96 * kMiB;
  std::vector<void*> blocks;
  blocks.reserve(kTotal / 1024 + kTotal / (200 * kKiB));
  for (size_t total = 0; total < kTotal / 2; total += 1024) {
    void* p = ferry_malloc(1024);
    ASSERT_NE(p, nullptr);
    memset(p, 0x5A, 1024);
    blocks.push_back(p);
  }
  for (size_t total = 0; total < kTotal / 2; total += 200 * kKiB) {
    void* p = ferry_malloc(200 * kKiB);
    ASSERT_NE(p, nullptr);
    memset(p, 0x5A, 200 * kKiB);
    blocks.push_back(p);
  }
  const size_t rss_full = ResidentBytes();
  ASSERT_GE(rss_full, rss_before + kTotal / 2) << "the test's own memory was not touched";
  for (void* p : blocks) ferry_free(p);
  ferry_collect();
  const size_t rss_after = ResidentBytes();
  const ferry_stats_t after = Stats();
  EXPECT_LT(rss_after, rss_full - kTotal / 2)
      << "RSS before " << rss_before << ", with " << kTotal << " B live " << rss_full
      << ", after free + ferry_collect " << rss_after;
  EXPECT_GT(after.pages_released - before.pages_released, 0u);
  EXPECT_GT((after.bytes_decommitted - before.bytes_decommitted) +
                (after.segments_released - before.segments_released),
            0u);
  // Everything still works after a collect.
  for (size_t n : {size_t{1024}, 200 * kKiB, 3 * kMiB}) {
    void* p = ferry_malloc(n);
    ASSERT_NE(p, nullptr);
    FillBlock(p, n);
    EXPECT_TRUE(BlockIntact(p, n));
    ferry_free(p);
  }
}

TEST(Api, CollectKeepsLiveBlocksIntact) {
  std::vector<std::pair<void*, size_t>> live;
  std::vector<void*> dead;
  for (size_t i = 0; i < 4000; ++i) {
    const size_t n = 16 + (i * 37) % 3000;
    void* p = ferry_malloc(n);
    ASSERT_NE(p, nullptr);
    FillBlock(p, n);
    if (i % 5 == 0) {
      live.emplace_back(p, n);
    } else {
      dead.push_back(p);
    }
  }
  for (void* p : dead) ferry_free(p);
  ferry_collect();
  std::thread([] { ferry_collect(); }).join();
  for (auto [p, n] : live) {
    EXPECT_TRUE(BlockIntact(p, n)) << p;
    ferry_free(p);
  }
  ferry_collect();
}

// ---------------------------------------------------------------------------
// Before main, at thread exit and at process exit.

struct EarlyBlock {
  void* p;
  EarlyBlock() : p(ferry_malloc(100)) {
    if (p != nullptr) FillBlock(p, 100);
  }
};
EarlyBlock early_block;

TEST(Api, BlocksAllocatedBeforeMainStayIntact) {
  ASSERT_NE(early_block.p, nullptr);
  EXPECT_TRUE(BlockIntact(early_block.p, 100));
  ferry_free(early_block.p);
  early_block.p = nullptr;
}

void* shared_with_exiting_thread = nullptr;

struct AllocatesAtThreadExit {
  ~AllocatesAtThreadExit() {
    void* p = ferry_malloc(256);
    if (p != nullptr) FillBlock(p, 256);
    ferry_free(p);
    ferry_free(shared_with_exiting_thread);  // another thread's block
    ferry_free(ferry_malloc(3 * kMiB));
  }
};

TEST(Api, FunctionsWorkWhileAThreadExits) {
  shared_with_exiting_thread = ferry_malloc(64);
  ASSERT_NE(shared_with_exiting_thread, nullptr);
  std::thread([] {
    thread_local AllocatesAtThreadExit at_exit;
    (void)&at_exit;
    ferry_free(ferry_malloc(32));
  }).join();
  ferry_flush();
  void* p = ferry_malloc(64);
  ASSERT_NE(p, nullptr);
  ferry_free(p);
}

TEST(Api, FunctionsWorkAtProcessExit) {
  // Runs after every test; a crash there fails the test binary.
  ASSERT_EQ(atexit([] {
              void* p = ferry_malloc(4000);
              ferry_free(ferry_realloc(p, 40000));
              ferry_flush();
              ferry_collect();
            }),
            0);
}

// ---------------------------------------------------------------------------
// ferry::allocator<T>.

using FString = std::basic_string<char, std::char_traits<char>, ferry::allocator<char>>;

struct alignas(64) CacheLine {
  uint64_t words[8];
};
struct alignas(4096) Page {
  unsigned char bytes[4096];
};

TEST(Allocator, BacksAVectorWithFerryMemory) {
  std::vector<uint64_t, ferry::allocator<uint64_t>> v;
  for (uint64_t i = 0; i < 200000; ++i) v.push_back(i * 3);
  for (uint64_t i = 0; i < v.size(); ++i) ASSERT_EQ(v[i], i * 3);
  EXPECT_GE(ferry_usable_size(v.data()), v.capacity() * sizeof(uint64_t));
  v.resize(10);
  v.shrink_to_fit();
  EXPECT_EQ(v[9], 27u);
}

TEST(Allocator, BacksAMapOfStrings) {
  std::map<int, FString, std::less<int>, ferry::allocator<std::pair<const int, FString>>> m;
  for (int i = 0; i < 20000; ++i) m.emplace(i, FString(static_cast<size_t>(10 + i % 90), char('a' + i % 26)));
  for (int i = 1; i < 20000; i += 2) m.erase(i);
  ASSERT_EQ(m.size(), 10000u);
  for (const auto& [k, s] : m) {
    ASSERT_EQ(k % 2, 0);
    ASSERT_EQ(s.size(), static_cast<size_t>(10 + k % 90));
    ASSERT_EQ(s[0], char('a' + k % 26));
  }
}

TEST(Allocator, BacksAList) {
  std::list<FString, ferry::allocator<FString>> l;
  for (int i = 0; i < 10000; ++i) l.push_back(FString(std::to_string(i) + std::string(40, 'x')));
  l.remove_if([](const FString& s) { return s[0] == '3'; });
  int n = 0;
  for (const FString& s : l) {
    ASSERT_NE(s[0], '3');
    ++n;
  }
  EXPECT_EQ(n, static_cast<int>(l.size()));
}

TEST(Allocator, HonoursOverAlignedTypes) {
  std::vector<CacheLine, ferry::allocator<CacheLine>> lines;
  for (uint64_t i = 0; i < 5000; ++i) {
    lines.push_back(CacheLine{{i, i, i, i, i, i, i, i}});
    ASSERT_TRUE(IsAligned(lines.data(), 64)) << lines.data();
  }
  for (uint64_t i = 0; i < lines.size(); ++i) ASSERT_EQ(lines[i].words[7], i);

  std::list<CacheLine, ferry::allocator<CacheLine>> nodes;
  for (uint64_t i = 0; i < 1000; ++i) {
    nodes.push_back(CacheLine{{i}});
    ASSERT_TRUE(IsAligned(&nodes.back(), 64)) << &nodes.back();
  }

  std::vector<Page, ferry::allocator<Page>> pages(33);
  EXPECT_TRUE(IsAligned(pages.data(), 4096)) << pages.data();
  memset(pages.data(), 1, pages.size() * sizeof(Page));
}

TEST(Allocator, ThrowsWhenTheRequestCannotBeMet) {
  ferry::allocator<uint64_t> a;
  EXPECT_THROW((void)a.allocate(SIZE_MAX / sizeof(uint64_t) + 1), std::bad_array_new_length);
  EXPECT_THROW((void)a.allocate(Launder(SIZE_MAX / sizeof(uint64_t))), std::bad_alloc);
  EXPECT_THROW((void)a.allocate(Launder(kPtrdiffMax / sizeof(uint64_t))), std::bad_alloc);
  ferry::allocator<CacheLine> c;
  EXPECT_THROW((void)c.allocate(Launder(kPtrdiffMax / sizeof(CacheLine))), std::bad_alloc);
}

TEST(Allocator, CopiesAcrossTypesAndComparesEqual) {
  ferry::allocator<int> a;
  ferry::allocator<double> b(a);
  EXPECT_TRUE(a == b);
  EXPECT_FALSE(a != b);
  int* p = a.allocate(10);
  ferry::allocator<int>(b).deallocate(p, 10);
}

}  // namespace

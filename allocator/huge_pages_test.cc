// huge_pages_test.cc — FERRY_HUGE_PAGES: huge blocks' mappings carry the
// kernel's huge-page advice exactly when it is asked for.
//
// Built twice (BUILD): huge_pages_test runs with FERRY_HUGE_PAGES=1,
// huge_pages_test_off without it. Each reads the option and expects the
// advice (the `hg` flag in /proc/self/smaps) on every huge block's mapping
// with it and on none without it: fresh, taken again from the huge cache,
// grown by realloc, and over-aligned (whose header chunk stays without).
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

#include "allocator/heap.h"
#include "common/options.h"
#include "common/os.h"
#include "ferry.h"

namespace ferry {
namespace {

constexpr size_t kMiB = size_t{1} << 20;

// The VmFlags line of the mapping (VMA) that holds `address`; empty when
// none does.
std::string VmFlagsAt(const void* address) {
  const uintptr_t at = reinterpret_cast<uintptr_t>(address);
  std::FILE* smaps = std::fopen("/proc/self/smaps", "r");
  if (smaps == nullptr) return "";
  char line[512];
  bool inside = false;
  std::string flags;
  while (std::fgets(line, sizeof(line), smaps) != nullptr) {
    unsigned long start = 0, end = 0;
    if (std::sscanf(line, "%lx-%lx ", &start, &end) == 2) {  // a mapping's first line
      inside = at >= start && at < end;
      continue;
    }
    if (inside && std::strncmp(line, "VmFlags:", 8) == 0) {
      flags = line + 8;
      break;
    }
  }
  std::fclose(smaps);
  return flags;
}

bool Advised(const void* address) { return VmFlagsAt(address).find(" hg") != std::string::npos; }

bool KernelTakesTheAdvice() {
  void* probe = mmap(nullptr, 4 * kMiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (probe == MAP_FAILED) return false;
  const bool taken = OsAdviseHugePages(probe, 4 * kMiB) && Advised(probe);
  munmap(probe, 4 * kMiB);
  return taken;
}

class HugePages : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!KernelTakesTheAdvice()) GTEST_SKIP() << "the kernel has no transparent huge pages";
    asked_ = CurrentOptions().huge_pages != 0;
  }

  // Every byte written, then read back: the advice changes how the pages
  // come, never what they hold.
  static void FillAndCheck(void* p, size_t n, unsigned char value) {
    std::memset(p, value, n);
    const auto* bytes = static_cast<const unsigned char*>(p);
    for (size_t k = 0; k < n; k += 4096) ASSERT_EQ(bytes[k], value) << "at byte " << k;
    ASSERT_EQ(bytes[n - 1], value);
  }

  bool asked_ = false;
};

TEST_F(HugePages, AFreshHugeBlockIsAdvisedExactlyWhenAsked) {
  void* p = ferry_malloc(6 * kMiB);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(Advised(p), asked_) << VmFlagsAt(p);
  EXPECT_EQ(Advised(static_cast<char*>(p) + 6 * kMiB - 1), asked_);
  FillAndCheck(p, 6 * kMiB, 0x5a);
  ferry_free(p);
}

TEST_F(HugePages, ABlockTakenFromTheHugeCacheKeepsTheAdvice) {
  void* p = ferry_malloc(10 * kMiB);
  ASSERT_NE(p, nullptr);
  FillAndCheck(p, 10 * kMiB, 0x11);
  ferry_free(p);
  void* q = ferry_malloc(10 * kMiB);
  ASSERT_NE(q, nullptr);
  ASSERT_EQ(q, p) << "the freed mapping was not reused: the test measures nothing";
  EXPECT_EQ(Advised(q), asked_) << VmFlagsAt(q);
  FillAndCheck(q, 10 * kMiB, 0x22);
  ferry_free(q);
}

TEST_F(HugePages, ABlockThatReallocGrowsKeepsTheAdvice) {
  auto* p = static_cast<unsigned char*>(ferry_malloc(5 * kMiB));
  ASSERT_NE(p, nullptr);
  FillAndCheck(p, 5 * kMiB, 0x33);
  // Something mapped right after it, so that the growth may have to move.
  void* blocker = mmap(p + 8 * kMiB, kMiB, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  auto* q = static_cast<unsigned char*>(ferry_realloc(p, 40 * kMiB));
  ASSERT_NE(q, nullptr);
  for (size_t k = 0; k < 5 * kMiB; k += 4096) ASSERT_EQ(q[k], 0x33) << "at byte " << k;
  EXPECT_EQ(Advised(q), asked_) << VmFlagsAt(q);
  EXPECT_EQ(Advised(q + 40 * kMiB - 1), asked_);
  FillAndCheck(q, 40 * kMiB, 0x44);
  ferry_free(q);
  if (blocker != MAP_FAILED) munmap(blocker, kMiB);
}

TEST_F(HugePages, AnOverAlignedBlockIsAdvisedAndItsHeaderChunkIsNot) {
  void* p = ferry_aligned_alloc(8 * kMiB, 5 * kMiB);
  ASSERT_NE(p, nullptr);
  ASSERT_EQ(reinterpret_cast<uintptr_t>(p) % (8 * kMiB), 0u);
  EXPECT_EQ(Advised(p), asked_) << VmFlagsAt(p);
  // The chunk below the block holds its header, a few hundred bytes: a huge
  // page there would be 2 MiB resident for nothing.
  EXPECT_FALSE(Advised(static_cast<char*>(p) - 1)) << VmFlagsAt(static_cast<char*>(p) - 1);
  FillAndCheck(p, 5 * kMiB, 0x55);
  ferry_free(p);
}

// A block whose mapping the program changed in part goes back to the OS at
// its free, not into the cache (README, the huge cache): the advice the
// program gives a part of it splits the mapping only where it differs from
// what the whole has. MADV_HUGEPAGE on part of an advised mapping changes
// nothing, so the block is kept; MADV_NOHUGEPAGE always splits it.
TEST_F(HugePages, TheProgramsOwnAdviceOnPartOfABlockSplitsItOnlyWhereItDiffers) {
  const auto reused_after_advice = [](int advice) {
    auto* p = static_cast<char*>(ferry_malloc(12 * kMiB));
    EXPECT_NE(p, nullptr);
    if (p == nullptr) return false;
    std::memset(p, 0x66, 12 * kMiB);
    char* part = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(p) + 4 * kMiB) & ~(2 * kMiB - 1));
    EXPECT_EQ(madvise(part, 2 * kMiB, advice), 0);
    ferry_free(p);
    ferry_stats_t before;
    ferry_stats_get(&before);
    void* q = ferry_malloc(12 * kMiB);
    EXPECT_NE(q, nullptr);
    ferry_stats_t after;
    ferry_stats_get(&after);
    ferry_free(q);
    ferry_collect();  // nothing left waiting for the next case
    return after.huge_reused > before.huge_reused;
  };
  ferry_collect();
  EXPECT_EQ(reused_after_advice(MADV_HUGEPAGE), asked_);
  EXPECT_FALSE(reused_after_advice(MADV_NOHUGEPAGE));
}

}  // namespace
}  // namespace ferry

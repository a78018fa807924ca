// death_test.cc — corrupting frees end the process, loudly and precisely.
//
// The contract (ferry.h, ferry_free): freeing a pointer ferry never returned,
// an interior pointer, or a block twice prints one line on stderr that starts
// with "ferry:" and names the pointer as 0x + lowercase hex, then aborts. A
// double free by another thread is found when that thread's remote batch is
// processed, so those tests call ferry_flush() in the freeing thread.
//
// Each death statement first prints "expect <pointer>" on stderr; the matcher
// then demands exactly one "ferry:" line that names that same pointer.
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>

#include <cctype>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "ferry.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace {

using ferry_test::kKiB;
using ferry_test::kMiB;
using ferry_test::Launder;
using ferry_test::StartThePool;

// Matches a death test's stderr: exactly one line starting with "ferry:",
// it names (as 0x + lowercase hex) the pointer of the "expect" line, and it
// ends with the reason the test expects (any "ferry:" line naming the
// pointer passed until 2026-12-06, so a double free reported as a foreign
// pointer, as a huge one once was, would have passed too).
class NamesTheBadPointer : public testing::MatcherInterface<const std::string&> {
 public:
  // `reason`: text the report must end with.
  explicit NamesTheBadPointer(const char* reason) : reason_(reason) {}
  bool MatchAndExplain(const std::string& text, testing::MatchResultListener* out) const override {
    std::istringstream lines(text);
    std::string line;
    bool have_expected = false;
    uintptr_t expected = 0;
    std::vector<std::string> ferry_lines;
    while (std::getline(lines, line)) {
      if (line.rfind("expect 0x", 0) == 0) {
        expected = static_cast<uintptr_t>(strtoull(line.c_str() + 7, nullptr, 16));
        have_expected = true;
      } else if (line.rfind("ferry:", 0) == 0) {
        ferry_lines.push_back(line);
      }
    }
    if (!have_expected) {
      *out << "the death statement never reached its bad call";
      return false;
    }
    if (ferry_lines.size() != 1) {
      *out << "found " << ferry_lines.size() << " lines starting with \"ferry:\", wanted 1";
      return false;
    }
    const std::string& report = ferry_lines[0];
    if (report.size() < strlen(reason_) ||
        report.compare(report.size() - strlen(reason_), std::string::npos, reason_) != 0) {
      *out << "the report \"" << report << "\" does not end with \"" << reason_ << "\"";
      return false;
    }
    for (size_t at = report.find("0x"); at != std::string::npos; at = report.find("0x", at + 2)) {
      size_t end = at + 2;
      while (end < report.size() && std::isxdigit(static_cast<unsigned char>(report[end]))) {
        if (std::isupper(static_cast<unsigned char>(report[end]))) break;
        ++end;
      }
      if (end == at + 2) continue;
      if (static_cast<uintptr_t>(strtoull(report.substr(at + 2, end - at - 2).c_str(), nullptr, 16)) ==
          expected) {
        return true;
      }
    }
    *out << "the report \"" << report << "\" does not name 0x" << std::hex << expected
         << " in lowercase hex";
    return false;
  }
  void DescribeTo(std::ostream* os) const override {
    *os << "has one line starting with \"ferry:\" naming the bad pointer in lowercase 0x hex"
        << " and ending with \"" << reason_ << "\"";
  }

 private:
  const char* reason_;
};

testing::Matcher<const std::string&> NamesBadPointer(const char* reason) {
  return testing::MakeMatcher(new NamesTheBadPointer(reason));
}

// Announces the pointer the next call must report. No core files: the
// children abort on purpose.
void Expect(const void* p) {
  struct rlimit no_core = {0, 0};
  setrlimit(RLIMIT_CORE, &no_core);
  fprintf(stderr, "expect %p\n", p);
}

// Frees `p` (which the test knows is bad) and gives the report time to
// appear; if ferry does not abort, exits normally so the test fails.
void FreeBad(void* p) {
  Expect(p);
  ferry_free(Launder(p));
  ferry_flush();
  fprintf(stderr, "ferry_free(%p) returned\n", p);
  exit(0);
}

const auto kAborted = testing::KilledBySignal(SIGABRT);

// Whether the pool runs once started (not with FERRY_RECLAIMERS=0).
bool PoolRuns() {
  StartThePool();
  ferry_stats_t stats;
  ferry_stats_get(&stats);
  return stats.reclaimer_threads > 0;
}

class Death : public testing::Test {
 protected:
  static void SetUpTestSuite() { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
};

char global_buffer[256];

// ---------------------------------------------------------------------------
// Double frees.

TEST_F(Death, DoubleFreeOfASmallBlockOnTheSameThreadAborts) {
  EXPECT_EXIT(
      {
        void* p = ferry_malloc(64);
        ferry_free(p);
        FreeBad(p);
      },
      kAborted, NamesBadPointer("): double free (block already free)"));
}

TEST_F(Death, DoubleFreeWithOtherFreesInBetweenAborts) {
  EXPECT_EXIT(
      {
        void* p = ferry_malloc(64);
        void* q = ferry_malloc(64);
        void* r = ferry_malloc(64);
        ferry_free(p);
        ferry_free(q);
        ferry_free(r);
        FreeBad(p);
      },
      kAborted, NamesBadPointer("): double free (block already free)"));
}

TEST_F(Death, DoubleFreeOfALargeBlockAborts) {
  EXPECT_EXIT(
      {
        void* p = ferry_malloc(512 * kKiB);
        ferry_free(p);
        FreeBad(p);
      },
      kAborted, NamesBadPointer("): double free (block already free)"));
}

TEST_F(Death, DoubleFreeOfAHugeBlockAborts) {
  EXPECT_EXIT(
      {
        void* p = ferry_malloc(8 * kMiB);
        ferry_free(p);
        FreeBad(p);
      },
      kAborted, NamesBadPointer("): double free (huge block already free)"));
}

// A huge block whose mapping went back to the OS at its free (one aligned
// to 4 MiB, whose mapping is never cached; one larger than the cache) is
// out of the segment map like memory ferry never handed out: a second free
// of it is still reported as a double free (until 2026-12-05, "pointer not
// allocated by ferry").
TEST_F(Death, DoubleFreeOfAHugeBlockAlignedTo4MiBAborts) {
  EXPECT_EXIT(
      {
        void* p = ferry_aligned_alloc(4 * kMiB, 5 * kMiB);
        ferry_free(p);
        FreeBad(p);
      },
      kAborted, NamesBadPointer("): double free (huge block already free)"));
}

TEST_F(Death, DoubleFreeOfAHugeBlockTooLargeForTheCacheAborts) {
  EXPECT_EXIT(
      {
        void* p = ferry_malloc(200 * kMiB);
        ferry_free(p);
        FreeBad(p);
      },
      kAborted, NamesBadPointer("): double free (huge block already free)"));
}

// With reclaimers ticking, a block that took the rest of a waiting mapping
// (past the 4 MiB boundary another block's part ended at) joins that part
// in the cache when both are freed; a second free of it is still a double
// free, not a pointer into a freed block (a review, 2026-12-05).
TEST_F(Death, DoubleFreeOfAHugeBlockWhoseMappingJoinedAnotherAborts) {
  if (!PoolRuns()) GTEST_SKIP() << "no reclaimer thread (FERRY_RECLAIMERS=0?): the small huge cache";
  EXPECT_EXIT(
      {
        StartThePool();  // the cache's rests wait on their own
        void* held = ferry_malloc(32 * kMiB);  // live bytes: the cap
        void* held_too = ferry_malloc(32 * kMiB);
        ferry_free(ferry_malloc(13 * kMiB));
        char* first = static_cast<char*>(ferry_malloc(7 * kMiB));   // up to 8 MiB
        char* second = static_cast<char*>(ferry_malloc(5 * kMiB));  // the rest
        if (second != first + 8 * kMiB) exit(0);                     // not the layout: the test fails
        ferry_free(first);
        ferry_free(second);
        FreeBad(second);
        ferry_free(held);
        ferry_free(held_too);
      },
      kAborted, NamesBadPointer("): double free (huge block already free)"));
}

TEST_F(Death, DoubleFreeOfAnAlignedBlockAborts) {
  EXPECT_EXIT(
      {
        void* p = ferry_aligned_alloc(4096, 100);
        ferry_free(p);
        FreeBad(p);
      },
      kAborted, NamesBadPointer("): double free (block already free)"));
}

TEST_F(Death, DoubleFreeByAnotherThreadWithinOneBatchAborts) {
  EXPECT_EXIT(
      {
        void* p = ferry_malloc(48);
        std::thread([p] {
          Expect(p);
          ferry_free(p);
          ferry_free(Launder(p));
          ferry_flush();
        }).join();
        ferry_flush();
        fprintf(stderr, "both frees returned\n");
        exit(0);
      },
      kAborted, NamesBadPointer("): double free (block already free)"));
}

TEST_F(Death, FreeByAnotherThreadOfABlockItsOwnerFreedAborts) {
  EXPECT_EXIT(
      {
        void* p = ferry_malloc(48);
        ferry_free(p);
        std::thread([p] { FreeBad(p); }).join();
      },
      kAborted, NamesBadPointer("): double free (block already free)"));
}

TEST_F(Death, FreeByTheOwnerOfABlockAnotherThreadFreedAborts) {
  EXPECT_EXIT(
      {
        void* p = ferry_malloc(48);
        std::thread([p] {
          ferry_free(p);
          ferry_flush();
        }).join();
        FreeBad(p);
      },
      kAborted, NamesBadPointer("): double free (block already free)"));
}

TEST_F(Death, DoubleFreeOfAHugeBlockByAnotherThreadAborts) {
  EXPECT_EXIT(
      {
        void* p = ferry_malloc(6 * kMiB);
        std::thread([p] {
          ferry_free(p);
          ferry_flush();
          FreeBad(p);
        }).join();
      },
      kAborted, NamesBadPointer("): double free (huge block already free)"));
}

// ---------------------------------------------------------------------------
// Pointers ferry never returned.

TEST_F(Death, FreeOfAStackPointerAborts) {
  EXPECT_EXIT(
      {
        char on_stack[128];
        memset(on_stack, 1, sizeof(on_stack));
        FreeBad(on_stack + 16);
      },
      kAborted, NamesBadPointer("): pointer not allocated by ferry"));
}

TEST_F(Death, FreeOfAGlobalAborts) {
  EXPECT_EXIT(FreeBad(global_buffer + 32), kAborted, NamesBadPointer("): pointer not allocated by ferry"));
}

TEST_F(Death, FreeOfABlockFromGlibcMallocAborts) {
  EXPECT_EXIT(
      {
        // In API mode malloc is glibc's: ferry never returned this block.
        void* p = malloc(64);
        FreeBad(p);
      },
      kAborted, NamesBadPointer("): pointer not allocated by ferry"));
}

TEST_F(Death, FreeOfAnotherMappingAborts) {
  EXPECT_EXIT(
      {
        // A whole 64 MiB mapping, aligned like nothing in particular: it may
        // sit where ferry would put a segment, but ferry never made it.
        void* m = mmap(nullptr, 64 * kMiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) abort();
        FreeBad(static_cast<char*>(m) + 32 * kMiB);
      },
      kAborted, NamesBadPointer("): pointer not allocated by ferry"));
}

TEST_F(Death, FreeOfAnUnmappedAddressAborts) {
  EXPECT_EXIT(FreeBad(reinterpret_cast<void*>(uintptr_t{0x10000})), kAborted,
              NamesBadPointer("): pointer not allocated by ferry"));
}

// ---------------------------------------------------------------------------
// Interior pointers.

TEST_F(Death, FreeOfAnInteriorPointerOfASmallBlockAborts) {
  EXPECT_EXIT(
      {
        char* p = static_cast<char*>(ferry_malloc(64));
        FreeBad(p + 8);
      },
      kAborted, NamesBadPointer("): not the start of a block (interior pointer)"));
}

TEST_F(Death, FreeOfAnUnalignedInteriorPointerAborts) {
  EXPECT_EXIT(
      {
        char* p = static_cast<char*>(ferry_malloc(100));
        FreeBad(p + 3);
      },
      kAborted, NamesBadPointer("): not the start of a block (interior pointer)"));
}

TEST_F(Death, FreeOfAnInteriorPointerOfALargeBlockAborts) {
  EXPECT_EXIT(
      {
        char* p = static_cast<char*>(ferry_malloc(512 * kKiB));
        FreeBad(p + 16);
      },
      kAborted, NamesBadPointer("): not the start of a block (interior pointer)"));
}

TEST_F(Death, FreeOfAPageAlignedInteriorPointerOfALargeBlockAborts) {
  EXPECT_EXIT(
      {
        char* p = static_cast<char*>(ferry_malloc(512 * kKiB));
        FreeBad(p + 64 * kKiB);
      },
      kAborted, NamesBadPointer("): not the start of a block (interior pointer)"));
}

TEST_F(Death, FreeOfAnInteriorPointerOfAHugeBlockAborts) {
  EXPECT_EXIT(
      {
        char* p = static_cast<char*>(ferry_malloc(8 * kMiB));
        FreeBad(p + 4096);
      },
      kAborted, NamesBadPointer("): not the start of a block (interior pointer)"));
}

// The last byte of a huge block is the last byte of its mapping: the free's
// look at the pointer's first word must not read past it.
TEST_F(Death, FreeOfAPointerToTheLastByteOfAHugeBlockAborts) {
  EXPECT_EXIT(
      {
        char* p = static_cast<char*>(ferry_malloc(3 * kMiB));
        FreeBad(p + ferry_usable_size(p) - 1);
      },
      kAborted, NamesBadPointer("): not the start of a block (interior pointer)"));
}

// A huge block's mapping ends with the block (since 2026-12-05), not at the
// end of its 4 MiB chunk, which the segment map still marks: a pointer into
// the rest of that chunk is not ferry's, and is never read (nothing of
// ferry's, or anything at all, may be mapped there).
TEST_F(Death, FreeOfAPointerPastTheMappingOfAHugeBlockAborts) {
  EXPECT_EXIT(
      {
        char* p = static_cast<char*>(ferry_malloc(3 * kMiB));
        const uintptr_t chunk = reinterpret_cast<uintptr_t>(p) & ~(4 * kMiB - 1);
        char* past = p + ferry_usable_size(p) + 64 * kKiB;
        if (reinterpret_cast<uintptr_t>(past) - chunk >= 4 * kMiB) exit(0);  // not in the chunk: the test fails
        FreeBad(past);
      },
      kAborted, NamesBadPointer("): pointer not allocated by ferry"));
}

// A pointer past a huge block's end into the tail of its mapping that the
// block keeps (KeepTailOfTakenMapping, with reclaimers ticking) is not ferry's
// to hand out either.
TEST_F(Death, FreeOfAPointerIntoTheKeptTailOfAHugeBlockAborts) {
  if (!PoolRuns()) GTEST_SKIP() << "no reclaimer thread (FERRY_RECLAIMERS=0?): the small huge cache";
  EXPECT_EXIT(
      {
        StartThePool();
        void* held = ferry_malloc(32 * kMiB);  // live bytes: the cap
        void* cached = ferry_malloc(3 * kMiB + 512 * kKiB);
        ferry_free(cached);
        char* p = static_cast<char*>(ferry_malloc(2 * kMiB + 128 * kKiB));  // keeps that mapping whole
        // Not in the cached mapping, or holding all of it: the pointer below
        // would be foreign for another reason, so the test fails instead.
        if (p != cached || ferry_usable_size(p) >= 3 * kMiB + 512 * kKiB) exit(0);
        FreeBad(p + ferry_usable_size(p) + 64 * kKiB);
        ferry_free(held);
      },
      kAborted, NamesBadPointer("): pointer not allocated by ferry"));
}

TEST_F(Death, FreeOfAnInteriorPointerOfAnAlignedBlockAborts) {
  EXPECT_EXIT(
      {
        char* p = static_cast<char*>(ferry_aligned_alloc(kMiB, 4096));
        FreeBad(p + 64);
      },
      kAborted, NamesBadPointer("): not the start of a block (interior pointer)"));
}

TEST_F(Death, FreeByAnotherThreadOfAnInteriorPointerAborts) {
  EXPECT_EXIT(
      {
        char* p = static_cast<char*>(ferry_malloc(256));
        std::thread([p] { FreeBad(p + 16); }).join();
      },
      kAborted, NamesBadPointer("): not the start of a block (interior pointer)"));
}

// ---------------------------------------------------------------------------
// Writes after free: a freed block's first word is its list link. A write
// that names an address outside the block's page is caught when the link is
// followed, before the allocator hands that address out.

// Writes `target` over the freed block `p`'s link, then allocates `size`
// until the allocator reaches p's link; if it never aborts, exits normally
// so the test fails.
void WriteAfterFreeThenAllocate(void* p, void* target, size_t size) {
  Expect(p);
  memcpy(Launder(p), &target, sizeof(target));
  for (int i = 0; i < 100000; ++i) Launder(ferry_malloc(size));
  fprintf(stderr, "no report after 100000 allocations\n");
  exit(0);
}

TEST_F(Death, AWriteAfterFreeThatRedirectsTheOwnersFreeListAborts) {
  EXPECT_EXIT(
      {
        void* keep = ferry_malloc(64);  // the page stays in use
        void* p = ferry_malloc(64);
        ferry_free(p);
        WriteAfterFreeThenAllocate(p, global_buffer, 64);
        ferry_free(keep);
      },
      kAborted, NamesBadPointer("outside its page (a write after free?)"));
}

TEST_F(Death, AWriteAfterARemoteFreeThatRedirectsTheReturnedChainAborts) {
  EXPECT_EXIT(
      {
        void* keep = ferry_malloc(96);
        void* p = ferry_malloc(96);
        std::thread([p] {
          ferry_free(p);
          ferry_flush();  // p is on its page's returned chain now
        }).join();
        char on_stack[64];
        WriteAfterFreeThenAllocate(p, on_stack, 96);
        ferry_free(keep);
      },
      kAborted, NamesBadPointer("outside its page (a write after free?)"));
}

// A chain of 256 blocks or more (kOrderChainMin) is walked and put in
// address order when the owner takes it: the walk checks each link as the
// pops would have, the last one too, whose link the new order overwrites.
void WriteAfterARemoteFreeIntoTheLastBlockOfALongChain() {
  void* keep = ferry_malloc(112);
  // Two pages' worth (585 blocks of 112 B to a one-slice page, which is
  // 64 KiB-aligned): the 64 KiB that holds the most of them is one page
  // with at least 390, all but one to come back as one chain.
  std::vector<void*> all;
  for (int i = 0; i < 2 * 585; ++i) all.push_back(ferry_malloc(112));
  auto slice = [](void* p) { return reinterpret_cast<uintptr_t>(p) >> 16; };
  uintptr_t best = 0;
  size_t best_count = 0;
  for (void* p : all) {
    size_t count = 0;
    for (void* q : all) count += slice(q) == slice(p);
    if (count > best_count) {
      best = slice(p);
      best_count = count;
    }
  }
  std::vector<void*> blocks;
  for (void* p : all) {
    if (slice(p) == best) blocks.push_back(p);
  }
  // 300 > kOrderChainMin + 1 (256 + 1): the chain must be long enough to be
  // walked, or only the pops' check would be tested.
  if (blocks.size() < 300) {
    fprintf(stderr, "only %zu blocks on one page\n", blocks.size());
    exit(0);  // fails the test
  }
  blocks.pop_back();  // stays allocated, so that the page is not freed whole
  std::thread([&blocks] {
    for (void* p : blocks) ferry_free(p);
    ferry_flush();  // all on their page's returned chain now
  }).join();
  char on_stack[64];
  // The first freed is the chain's last block: its link ends the chain.
  WriteAfterFreeThenAllocate(blocks[0], on_stack, 112);
  ferry_free(keep);
}

TEST_F(Death, AWriteAfterARemoteFreeIntoTheLastBlockOfALongReturnedChainAborts) {
  EXPECT_EXIT(WriteAfterARemoteFreeIntoTheLastBlockOfALongChain(), kAborted,
              NamesBadPointer("outside its page (a write after free?)"));
}

// ---------------------------------------------------------------------------
// realloc of bad pointers.

// Calls ferry_realloc on a bad pointer; if ferry does not abort, exits
// normally so the test fails.
void ReallocBad(void* p) {
  Expect(p);
  void* q = ferry_realloc(Launder(p), 200);
  fprintf(stderr, "ferry_realloc(%p) returned %p\n", p, q);
  exit(0);
}

TEST_F(Death, ReallocOfAStackPointerAborts) {
  EXPECT_EXIT(
      {
        char on_stack[64];
        memset(on_stack, 1, sizeof(on_stack));
        ReallocBad(on_stack);
      },
      kAborted, NamesBadPointer("): pointer not allocated by ferry"));
}

TEST_F(Death, ReallocOfAnInteriorPointerAborts) {
  EXPECT_EXIT(
      {
        char* p = static_cast<char*>(ferry_malloc(64));
        ReallocBad(p + 8);
      },
      kAborted, NamesBadPointer("): not the start of a block (interior pointer)"));
}

TEST_F(Death, ReallocOfAFreedBlockAborts) {
  EXPECT_EXIT(
      {
        void* p = ferry_malloc(64);
        ferry_free(p);
        ReallocBad(p);
      },
      kAborted, NamesBadPointer("): double free (block already free)"));
}

// realloc to a size the block already fits keeps the block in place, and so
// never reached free's double-free check: it handed the freed block back as
// live, and the next malloc handed it out a second time.
void ReallocInPlaceBad(void* p, size_t size) {
  Expect(p);
  void* q = ferry_realloc(Launder(p), size);
  void* r = ferry_malloc(size);
  fprintf(stderr, "ferry_realloc(%p) returned %p, then malloc %p\n", p, q, r);
  exit(0);
}

// The pointer is checked before the size: an impossible size does not turn
// a double free into a plain ENOMEM.
TEST_F(Death, ReallocOfAFreedBlockToAnImpossibleSizeAborts) {
  EXPECT_EXIT(
      {
        void* p = ferry_malloc(100);
        ferry_free(p);
        ReallocInPlaceBad(p, static_cast<size_t>(PTRDIFF_MAX) + 1);
      },
      kAborted, NamesBadPointer("): double free (block already free)"));
}

TEST_F(Death, ReallocOfAStackPointerToAnImpossibleSizeAborts) {
  EXPECT_EXIT(
      {
        char on_stack[64];
        ReallocInPlaceBad(on_stack + 16, SIZE_MAX);
      },
      kAborted, NamesBadPointer("): pointer not allocated by ferry"));
}

TEST_F(Death, ReallocOfAFreedBlockToASizeItFitsAborts) {
  EXPECT_EXIT(
      {
        void* p = ferry_malloc(100);
        ferry_free(p);
        ReallocInPlaceBad(p, 100);
      },
      kAborted, NamesBadPointer("): double free (block already free)"));
}

TEST_F(Death, ReallocOfABlockAnotherThreadFreedAborts) {
  EXPECT_EXIT(
      {
        void* p = ferry_malloc(100);
        std::thread([p] { ferry_free(p); }).join();
        ReallocInPlaceBad(p, 90);
      },
      kAborted, NamesBadPointer("): double free (block already free)"));
}

TEST_F(Death, ReallocOfAGlibcBlockAborts) {
  EXPECT_EXIT(ReallocBad(malloc(32)), kAborted, NamesBadPointer("): pointer not allocated by ferry"));
}

// ---------------------------------------------------------------------------
// free_sized with a size that cannot have been asked for.

TEST_F(Death, FreeSizedWithASizeLargerThanTheBlockAborts) {
  void* p = ferry_malloc(100);  // a 112-byte block
  EXPECT_EXIT(ferry_free_sized(p, 200), kAborted,
              "ferry: free_sized\\(0x[0-9a-f]+\\): size 200 is larger than the block \\(112 bytes\\)");
  ferry_free_sized(p, 100);
}

TEST_F(Death, FreeSizedOfAFreedBlockAborts) {
  void* p = ferry_malloc(100);
  ferry_free(p);
  EXPECT_EXIT(ferry_free_sized(p, 100), kAborted, "ferry: free_sized\\(0x[0-9a-f]+\\): double free");
}

// The reports are the only output: a good program prints nothing.
TEST(NoDeath, CorrectUseWritesNothingToStderr) {
  testing::internal::CaptureStderr();
  void* p = ferry_malloc(64);
  void* q = ferry_malloc(8 * kMiB);
  std::thread([&] {
    ferry_free(p);
    ferry_flush();
  }).join();
  ferry_free(q);
  ferry_collect();
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
}

}  // namespace

// Unit tests of segment and page arithmetic, the segment map, the free-list
// encoding and the page lists, reached through the allocator's own headers.
#include "allocator/segment.h"

#include <errno.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <sched.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <array>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <latch>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include "allocator/heap.h"
#include "allocator/page_return.h"
#include "common/options.h"
#include "common/os.h"
#include "common/spin_lock.h"
#include "ferry.h"

namespace ferry {
namespace {

// Under an address-space limit (`ulimit -v`) large blocks may go on
// mappings of their own and arenas come 16 MiB at a time
// (LargeBlockGoesHuge, arena.cc): tests of where large blocks and segments
// lie hold without one.
#define SKIP_UNDER_ADDRESS_SPACE_LIMIT()                                     \
  do {                                                                       \
    if (AddressSpaceLimit() != SIZE_MAX) GTEST_SKIP() << "an address-space limit is set"; \
  } while (0)

int g_global = 0;

// The death tests' children abort on purpose: no core files from them (they
// inherit the limit from the fork).
const bool g_no_core_files = [] {
  const struct rlimit none = {0, 0};
  return setrlimit(RLIMIT_CORE, &none) == 0;
}();

TEST(Segment, EveryBlockFindsItsSegmentAndPageByArithmetic) {
  std::vector<void*> blocks;
  for (size_t n : {1, 8, 24, 64, 72, 1000, 4096, 9000, 70000, 300000, 600000, 2000000}) {
    for (int k = 0; k < 20; ++k) blocks.push_back(ferry_malloc(n));
    for (int k = 0; k < 20; ++k) {
      const uintptr_t p = reinterpret_cast<uintptr_t>(blocks[blocks.size() - 20 + k]);
      ASSERT_EQ(SegmentMapLookup(p), kMapSegment);
      Segment* segment = SegmentOf(p);
      ASSERT_EQ(reinterpret_cast<uintptr_t>(segment) % kSegmentSize, 0u);
      ASSERT_EQ(segment->kind, SegmentKind::kNormal);
      Page* page = PageOf(segment, p);
      ASSERT_NE(page->kind, PageKind::kNone);
      ASSERT_LE(page->start, p);
      ASSERT_LT(p, page->end());
      ASSERT_GE(page->block_size, n);
      ASSERT_TRUE(IsBlockStart(page, p));
      ASSERT_FALSE(IsBlockStart(page, p + 1));
      ASSERT_FALSE(IsBlockStart(page, p + page->block_size / 2));
      ASSERT_FALSE(LooksFree(page, reinterpret_cast<Block*>(p)));
      ASSERT_EQ(page->heap, tl_heap);
    }
  }
  for (void* p : blocks) ferry_free(p);
}

// A page of one slice takes a free slice with no free neighbour before the
// first slice of a run: taken from the front of the run, it left the run
// one slice short of the medium page it was kept for, which then took
// fresh slices (the realloc workload's peak RSS, perf/RESULTS.md,
// 2026-12-07).
TEST(Segment, AOneSlicePageTakesALoneFreeSliceBeforeARunsFirst) {
  auto* segment = static_cast<Segment*>(std::aligned_alloc(64, AlignUp(sizeof(Segment), 64)));
  ASSERT_NE(segment, nullptr);
  new (&segment->used_slices) std::atomic<uint64_t>(~(SliceRun(10, 20) | SliceRun(31, 1)));
  new (&segment->dirty_slices) std::atomic<uint64_t>(~uint64_t{0});
  EXPECT_EQ(FindFreeSlices(segment, 1, 1, /*dirty_only=*/true), 31);
  EXPECT_EQ(FindFreeSlices(segment, 20, 1, /*dirty_only=*/true), 10);
  // Only runs: the first free slice, as before.
  segment->used_slices.store(~(SliceRun(10, 20) | SliceRun(40, 2)));
  EXPECT_EQ(FindFreeSlices(segment, 1, 1, /*dirty_only=*/true), 10);
  // Among committed slices only, the runs are theirs: slice 20 is alone.
  segment->used_slices.store(~SliceRun(10, 20));
  segment->dirty_slices.store(SliceRun(12, 3) | SliceRun(20, 1));
  EXPECT_EQ(FindFreeSlices(segment, 1, 1, /*dirty_only=*/true), 20);
  EXPECT_EQ(FindFreeSlices(segment, 1, 1, /*dirty_only=*/false), 10);
  std::free(segment);
}

// The search by shifts finds what a look at each start finds: the first
// run of `count` free slices (committed ones, with dirty_only; within
// `allowed`) at a multiple of `align`, never the header slice, never past
// the last slice. Random bitmaps, runs from sparse to dense.
TEST(Segment, FreeSlicesAreFoundWhereALookAtEachStartFindsThem) {
  auto* segment = static_cast<Segment*>(std::aligned_alloc(64, AlignUp(sizeof(Segment), 64)));
  ASSERT_NE(segment, nullptr);
  new (&segment->used_slices) std::atomic<uint64_t>(0);
  new (&segment->dirty_slices) std::atomic<uint64_t>(0);
  const auto first_run = [](uint64_t used, uint64_t dirty, size_t count, size_t align) {
    for (size_t start = align; start + count <= kSlicesPerSegment; start += align) {
      const uint64_t run = SliceRun(start, count);
      if ((used & run) == 0 && (dirty & run) == run) return static_cast<int>(start);
    }
    return -1;
  };
  uint64_t x = 0x9e3779b97f4a7c15;
  const auto next = [&x] {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
  };
  size_t found = 0;
  for (int round = 0; round < 20000; ++round) {
    // A used slice in one of 2, 4, 8 or 16: long free runs and short ones.
    const int density = 1 + round % 4;
    uint64_t used = ~uint64_t{0};
    for (int k = 0; k < density; ++k) used &= next();
    used |= 1;  // the header
    const uint64_t dirty = next() | next();
    const uint64_t allowed = round % 3 == 0 ? next() | next() | next() : ~uint64_t{0};
    const size_t align = size_t{1} << (next() % 8);  // 1 to 128
    // One slice at no alignment has a search of its own (above).
    const size_t count = (align == 1 ? 2 : 1) + next() % (align == 1 ? 62 : 63);  // up to 63
    const bool dirty_only = round % 2 == 0;
    segment->used_slices.store(used);
    segment->dirty_slices.store(dirty);
    const int want = first_run(used, (dirty_only ? dirty : ~uint64_t{0}) & allowed, count, align);
    ASSERT_EQ(FindFreeSlices(segment, count, align, dirty_only, allowed), want)
        << "used " << std::hex << used << " dirty " << dirty << " allowed " << allowed << std::dec << " count "
        << count << " align " << align << " dirty_only " << dirty_only;
    found += want >= 0;
  }
  EXPECT_GT(found, 2000u) << "too few rounds had a run to find";
  // Every length and alignment, in a segment with only its header used and
  // in ones with a slice used here and there.
  for (const uint64_t used : {uint64_t{1}, uint64_t{1} | uint64_t{1} << 63, uint64_t{1} | uint64_t{1} << 32,
                              uint64_t{1} | uint64_t{1} << 17 | uint64_t{1} << 40}) {
    segment->used_slices.store(used);
    segment->dirty_slices.store(~uint64_t{0});
    for (size_t count = 1; count <= kSlicesPerSegment; ++count) {
      for (size_t align = 1; align <= 2 * kSlicesPerSegment; align *= 2) {
        if (count == 1 && align == 1) continue;
        ASSERT_EQ(FindFreeSlices(segment, count, align, /*dirty_only=*/false), first_run(used, ~uint64_t{0}, count, align))
            << "used " << std::hex << used << std::dec << " count " << count << " align " << align;
      }
    }
  }
  std::free(segment);
}

TEST(Segment, MapTellsForeignPointersApart) {
  int local = 0;
  EXPECT_EQ(SegmentMapLookup(reinterpret_cast<uintptr_t>(&local)), kMapNone);
  EXPECT_EQ(SegmentMapLookup(reinterpret_cast<uintptr_t>(&g_global)), kMapNone);
  EXPECT_EQ(SegmentMapLookup(0), kMapNone);
  volatile uintptr_t top = ~uintptr_t{0};  // volatile: keeps GCC from warning on a folded index
  EXPECT_EQ(SegmentMapLookup(top), kMapNone);
  void* huge = ferry_malloc(8 << 20);
  EXPECT_EQ(SegmentMapLookup(reinterpret_cast<uintptr_t>(huge)), kMapSegment);
  void* over_aligned = ferry_aligned_alloc(8 << 20, 100);
  EXPECT_EQ(SegmentMapLookup(reinterpret_cast<uintptr_t>(over_aligned)), kMapHugeAlignedBlock);
  ferry_free(huge);
  ferry_free(over_aligned);
  EXPECT_EQ(SegmentMapLookup(reinterpret_cast<uintptr_t>(huge)), kMapNone);
  EXPECT_EQ(SegmentMapLookup(reinterpret_cast<uintptr_t>(over_aligned)), kMapNone);
}

TEST(Segment, FreeListLinksRoundTripAndFreedBlocksLookFree) {
  void* p = ferry_malloc(48);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(DecodeNext(EncodeNext(static_cast<Block*>(p))), p);
  EXPECT_EQ(DecodeNext(EncodeNext(nullptr)), nullptr);
  EXPECT_NE(EncodeNext(nullptr), 0u);
  const uintptr_t address = reinterpret_cast<uintptr_t>(p);
  Page* page = PageOf(SegmentOf(address), address);
  ferry_free(p);
  EXPECT_TRUE(LooksFree(page, static_cast<Block*>(p)));
}

// Frees blocks[first, last) on a thread of its own, which then flushes: the
// frees are remote ones, and they have reached their pages on return.
void FreeElsewhereAndFlush(const std::vector<void*>& blocks, size_t first, size_t last) {
  std::thread([&] {
    for (size_t k = first; k < last; ++k) ferry_free(blocks[k]);
    ferry_flush();
  }).join();
}

Page* PageOfBlock(void* p) {
  const uintptr_t address = reinterpret_cast<uintptr_t>(p);
  return PageOf(SegmentOf(address), address);
}

// Fills one page of `size` (the page is marked full and leaves its queue)
// and one block more; returns the page's blocks.
std::vector<void*> FillOnePage(size_t size, Page** page_out, void** extra) {
  // Standby pages that earlier tests of this thread left: the first block's
  // page, not fully carved, would hand its class on to their carved blocks.
  ReleaseStandbyPagesForTest(tl_heap);
  void* first = ferry_malloc(size);
  const uintptr_t address = reinterpret_cast<uintptr_t>(first);
  Page* page = PageOf(SegmentOf(address), address);
  std::vector<void*> blocks{first};
  for (uint32_t k = 1; k < uint32_t{page->reserved}; ++k) blocks.push_back(ferry_malloc(size));
  *extra = ferry_malloc(size);  // the page is empty-handed now: marked full
  *page_out = page;
  return blocks;
}

// FillOnePage, then the first half of the page's blocks freed by another
// thread: the page is posted to this thread's inbox of its class.
std::vector<void*> FillOnePageAndPostHalf(size_t size, Page** page_out, void** extra) {
  std::vector<void*> blocks = FillOnePage(size, page_out, extra);
  EXPECT_EQ((*page_out)->in_full, 1);
  FreeElsewhereAndFlush(blocks, 0, blocks.size() / 2);
  EXPECT_EQ(tl_heap->inbox[(*page_out)->size_class].load(), *page_out);
  return blocks;
}

// Plays the pool's housekeeping borrowing `owner`'s inbox of a class for a
// moment (CollectInboxes): takes the list now and puts it back from another
// thread 100 ms later, setting *put_back just before.
std::thread BorrowInboxFor100Ms(Heap* owner, size_t size_class, std::atomic<bool>* put_back) {
  owner->inbox_borrowed.store(1);
  Page* held = owner->inbox[size_class].exchange(nullptr);
  return std::thread([owner, size_class, held, put_back] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    put_back->store(true);
    InboxPush(owner->inbox[size_class], held);
    owner->inbox_borrowed.store(0);
  });
}

// A full page collects its returns under the full mark: posted to its
// owner's inbox at the first, handed back to the owner when it runs short of
// the class, and reused.
TEST(PageLists, RemoteFreesIntoAFullPageGoBackToTheOwnerWhenItRunsShort) {
  constexpr size_t kSize = 4096;
  Page* page;
  void* extra;
  std::vector<void*> blocks = FillOnePage(kSize, &page, &extra);
  ASSERT_EQ(page->in_full, 1);
  ASSERT_EQ(page->returned.load(), kReturnedFull);
  Heap* owner = tl_heap;
  const size_t size_class = page->size_class;
  const size_t half = blocks.size() / 2;
  FreeElsewhereAndFlush(blocks, 0, half);
  EXPECT_EQ(owner->inbox[size_class].load(), page);
  EXPECT_EQ(ReturnedCount(page->returned.load()), half);
  EXPECT_NE(page->returned.load() & kReturnedFull, 0u) << "the page left the full state early";
  // The owner reuses the freed blocks once its current page runs dry.
  std::set<void*> fresh;
  for (uint32_t k = 0; k < 2 * uint32_t{page->reserved}; ++k) fresh.insert(ferry_malloc(kSize));
  EXPECT_EQ(owner->inbox[size_class].load(), nullptr);
  for (size_t k = 0; k < half; ++k) {
    EXPECT_TRUE(fresh.count(blocks[k])) << "remotely freed block " << k << " was not reused";
  }
  for (size_t k = half; k < blocks.size(); ++k) ferry_free(blocks[k]);
  for (void* p : fresh) ferry_free(p);
  ferry_free(extra);
}

// Blocks that come back in any order are handed out again in address order
// once the chain is long enough to be worth the walk (OrderChain): the
// owner walks the page upwards instead of in the freeing thread's order.
TEST(PageLists, ALongReturnedChainIsHandedOutInAddressOrder) {
  constexpr size_t kSize = 240;  // 273 blocks to a one-slice page; no other test here uses it
  Page* page;
  void* extra;
  std::vector<void*> blocks = FillOnePage(kSize, &page, &extra);
  ASSERT_EQ(page->in_full, 1);
  constexpr size_t kFreed = kOrderChainMin + 8;  // long enough to be ordered
  ASSERT_GE(page->reserved, 8 + kFreed + 1);
  // kFreed of them, in an order nothing sorted (a fixed shuffle), the rest stay out.
  std::vector<void*> freed(blocks.begin() + 8, blocks.begin() + 8 + kFreed);
  std::shuffle(freed.begin(), freed.end(), std::mt19937(1203));
  FreeElsewhereAndFlush(freed, 0, freed.size());
  ASSERT_EQ(ReturnedCount(page->returned.load()), freed.size());
  // extra's page runs dry first; then this page's blocks, all of them, in
  // address order.
  std::vector<void*> again, others;
  for (uint32_t k = 0; k < 2 * uint32_t{page->reserved} && again.size() < freed.size(); ++k) {
    void* p = ferry_malloc(kSize);
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    (PageOf(SegmentOf(a), a) == page ? again : others).push_back(p);
  }
  ASSERT_EQ(again.size(), freed.size()) << "the returned blocks were not reused";
  EXPECT_TRUE(std::is_sorted(again.begin(), again.end())) << "handed out in the freeing order, not by address";
  std::sort(freed.begin(), freed.end());
  EXPECT_EQ(again, freed);
  for (void* p : again) ferry_free(p);
  for (void* p : others) ferry_free(p);
  for (size_t k = 0; k < blocks.size(); ++k) {
    if (k < 8 || k >= 8 + kFreed) ferry_free(blocks[k]);
  }
  ferry_free(extra);
}

// Fills a page of `size` blocks and has kOrderChainMin + 8 of them come
// back as one chain linked by hand (what the sorter would push), after
// `spoil` has changed links of the chain; then allocates until the owner
// has taken the chain.
template <typename Spoil>
void ReturnAHandMadeChainAndAllocate(size_t size, Spoil spoil) {
  Page* page;
  void* extra;
  std::vector<void*> blocks = FillOnePage(size, &page, &extra);
  std::vector<Block*> chain;
  for (size_t k = 0; k < kOrderChainMin + 8; ++k) chain.push_back(static_cast<Block*>(blocks[k]));
  for (size_t k = 0; k + 1 < chain.size(); ++k) chain[k]->next_encoded = EncodeNext(chain[k + 1]);
  spoil(chain);
  ReturnChain(page, chain.front(), chain.back(), static_cast<uint32_t>(chain.size()));
  for (uint32_t k = 0; k < 2 * uint32_t{page->reserved}; ++k) (void)!ferry_malloc(size);
}

// The walk that orders a chain follows every link: one that names a block
// already on the chain (a write after free that guessed the encoding, or a
// block returned twice past the other checks) is reported, not looped on,
// and so is one into the middle of a block, which the pops (they check
// only that a link stays in the page's carved bytes) would hand out.
TEST(PageLists, AChainThatLinksBackToItselfOrIntoABlockIsReported) {
  constexpr size_t kSize = 224;  // 292 blocks to a one-slice page; no other test here uses it
  EXPECT_DEATH(ReturnAHandMadeChainAndAllocate(
                   kSize, [](std::vector<Block*>& chain) { chain[30]->next_encoded = EncodeNext(chain[10]); }),
               "ferry: malloc: free list of the page at 0x[0-9a-f]+ corrupted: the free block 0x[0-9a-f]+ "
               "links to 0x[0-9a-f]+, a block already on the list");
  EXPECT_DEATH(ReturnAHandMadeChainAndAllocate(kSize,
                                               [](std::vector<Block*>& chain) {
                                                 chain[20]->next_encoded = EncodeNext(reinterpret_cast<Block*>(
                                                     reinterpret_cast<char*>(chain[5]) + 64));
                                               }),
               "ferry: malloc: free list of the page at 0x[0-9a-f]+ corrupted: the free block 0x[0-9a-f]+ "
               "links to 0x[0-9a-f]+, inside a block, not at its start");
}

// The pool's housekeeping takes a live heap's inboxes for a moment
// (CollectInboxes) and puts back the pages it keeps. An owner that runs
// short of the class just then waits for them rather than carve and make
// new pages while its returned blocks are away. The housekeeping's part is
// played by hand here, with a long pause.
TEST(PageLists, AnOwnerShortOfAClassWaitsForTheInboxTheHousekeepingHolds) {
  constexpr size_t kSize = 6144;  // no other test here uses it
  Page* page;
  void* extra;
  std::vector<void*> blocks = FillOnePageAndPostHalf(kSize, &page, &extra);
  ASSERT_FALSE(HasFailure());
  Heap* owner = tl_heap;
  const size_t size_class = page->size_class;
  const size_t half = blocks.size() / 2;
  std::atomic<bool> put_back{false};
  std::thread housekeeping = BorrowInboxFor100Ms(owner, size_class, &put_back);
  // The owner's other page (extra's) runs dry, then the returned blocks.
  // Nor does extra's page, its class's only queued page, carve more as its
  // list runs out (PopLastBlock) while the inbox is away.
  Page* extra_page = PageOfBlock(extra);
  const uint16_t extra_carved = extra_page->capacity;
  std::set<void*> fresh;
  bool reused_after_put_back = true;
  bool returned_seen = false;
  for (uint32_t k = 0; k < 2 * uint32_t{page->reserved}; ++k) {
    void* p = ferry_malloc(kSize);
    const bool returned_block = std::find(blocks.begin(), blocks.begin() + half, p) != blocks.begin() + half;
    if (returned_block && !put_back.load()) reused_after_put_back = false;
    if (returned_block && !returned_seen) {
      returned_seen = true;
      EXPECT_EQ(extra_page->capacity, extra_carved) << "carved while the returned blocks were away";
    }
    fresh.insert(p);
  }
  housekeeping.join();
  EXPECT_TRUE(reused_after_put_back) << "a block came back before the inbox did";
  for (size_t k = 0; k < half; ++k) {
    EXPECT_TRUE(fresh.count(blocks[k])) << "remotely freed block " << k
                                        << " was not reused: the owner did not wait for its inbox";
  }
  for (size_t k = half; k < blocks.size(); ++k) ferry_free(blocks[k]);
  for (void* p : fresh) ferry_free(p);
  ferry_free(extra);
}

// The same hold, landing between the owner's look at the inbox (InboxHead
// saw a page) and its drain's exchange (which then finds the inbox empty):
// the drain waits for the pages to come back too.
TEST(PageLists, AnOwnersDrainThatFindsItsInboxJustBorrowedWaitsForIt) {
  constexpr size_t kSize = 1152;  // one-slice pages; no other test here uses it
  std::thread([] {
    Page* page;
    void* extra;
    std::vector<void*> blocks = FillOnePageAndPostHalf(kSize, &page, &extra);
    ASSERT_FALSE(HasFailure());
    Heap* owner = tl_heap;
    const size_t size_class = page->size_class;
    std::atomic<bool> put_back{false};
    std::thread housekeeping = BorrowInboxFor100Ms(owner, size_class, &put_back);
    DrainInboxForTest(owner, size_class);
    const bool waited = put_back.load();
    housekeeping.join();
    EXPECT_TRUE(waited) << "the drain returned while the inbox was borrowed";
    EXPECT_EQ(owner->inbox[size_class].load(), nullptr) << "the page was left on the inbox";
    EXPECT_EQ(page->in_full, 0);
    const size_t half = blocks.size() / 2;
    EXPECT_EQ(page->used, blocks.size() - half) << "the returned blocks did not join the page";
    EXPECT_NE(page->free, nullptr) << "the returned blocks are not on the page's list";
    for (size_t k = half; k < blocks.size(); ++k) ferry_free(blocks[k]);
    ferry_free(extra);
  }).join();
}

// While the owner does not run short, the page waits on the inbox; when the
// rest of its blocks come back it is freed to its segment (at the next drain
// or housekeeping), for any heap to take.
TEST(PageLists, AFullPageWhoseBlocksAllComeBackIsFreedForEveryHeap) {
  constexpr size_t kSize = 4096;
  Page* page;
  void* extra;
  std::vector<void*> blocks = FillOnePage(kSize, &page, &extra);
  ASSERT_EQ(page->in_full, 1);
  const size_t size_class = page->size_class;
  Heap* owner = tl_heap;
  FreeElsewhereAndFlush(blocks, 0, 1);
  EXPECT_EQ(owner->inbox[size_class].load(), page);
  EXPECT_NE(page->returned.load() & kReturnedFull, 0u);
  ferry_stats_t before, after;
  ferry_stats_get(&before);
  FreeElsewhereAndFlush(blocks, 1, blocks.size());
  // (The pool's housekeeping may already have freed it.)
  EXPECT_TRUE(page->kind == PageKind::kNone || (page->returned.load() & kReturnedFull) == 0)
      << "every block is back: the mark goes";
  ferry_collect();
  ferry_stats_get(&after);
  EXPECT_EQ(page->kind, PageKind::kNone) << "the emptied page was not freed";
  EXPECT_GE(after.pages_freed_by_returns, before.pages_freed_by_returns + 1);
  ferry_free(extra);
}

// A posted page whose last blocks come back stays linked on its owner's
// inbox, so the freeing side cannot free it; it tells the owner instead, and
// the owner's next slow path of any class gives the page back to its
// segment. Pages on the same inbox with blocks still out stay there.
TEST(PageLists, AnInboxPageWithEveryBlockBackIsFreedAtTheOwnersNextSlowPath) {
  constexpr size_t kSize = 3584;  // no other test here uses it
  std::thread([] {
    Page* partial;
    Page* complete;
    void* extra;
    void* extra2;
    std::vector<void*> partial_blocks = FillOnePage(kSize, &partial, &extra);
    std::vector<void*> complete_blocks = FillOnePage(kSize, &complete, &extra2);
    ASSERT_NE(partial, complete);
    ASSERT_EQ(partial->in_full, 1);
    ASSERT_EQ(complete->in_full, 1);
    Heap* owner = tl_heap;
    const size_t size_class = complete->size_class;
    const uint64_t class_bit = uint64_t{1} << (size_class % 64);
    const size_t half = partial_blocks.size() / 2;
    // The second page began with the first call's extra block; the second
    // call's last block went to a third page.
    std::vector<void*> on_complete{extra}, elsewhere{extra2};
    for (void* p : complete_blocks) {
      const uintptr_t address = reinterpret_cast<uintptr_t>(p);
      (PageOf(SegmentOf(address), address) == complete ? on_complete : elsewhere).push_back(p);
    }
    ASSERT_EQ(on_complete.size(), size_t{complete->reserved});
    FreeElsewhereAndFlush(partial_blocks, 0, half);
    FreeElsewhereAndFlush(on_complete, 0, 1);  // posted
    FreeElsewhereAndFlush(on_complete, 1, on_complete.size());
    ASSERT_EQ(complete->kind, PageKind::kSmall) << "freed while linked on the inbox";
    ASSERT_NE(owner->inbox_complete[size_class / 64].load() & class_bit, 0u) << "the owner was not told";
    ferry_stats_t before, after;
    ferry_stats_get(&before);
    void* other = ferry_malloc(1408);  // a class this thread has no page of (no other test here uses it): a slow path
    ferry_stats_get(&after);
    // Freed, and perhaps taken at once by that new page (committed slices first).
    const uintptr_t other_address = reinterpret_cast<uintptr_t>(other);
    EXPECT_TRUE(complete->kind == PageKind::kNone || PageOf(SegmentOf(other_address), other_address) == complete)
        << "the emptied page was not freed";
    EXPECT_EQ(after.pages_freed_by_returns, before.pages_freed_by_returns + 1);
    EXPECT_EQ(owner->inbox_complete[size_class / 64].load() & class_bit, 0u);
    Page* left = owner->inbox[size_class].load();
    EXPECT_EQ(left, partial) << "the page with blocks still out left the inbox";
    if (left != nullptr) {
      EXPECT_EQ(left->inbox_next, nullptr);
    }
    // Its returned blocks are still handed out when the owner runs short.
    std::set<void*> fresh;
    for (uint32_t k = 0; k < 2 * uint32_t{partial->reserved}; ++k) fresh.insert(ferry_malloc(kSize));
    for (size_t k = 0; k < half; ++k) {
      EXPECT_TRUE(fresh.count(partial_blocks[k])) << "remotely freed block " << k << " was not reused";
    }
    for (size_t k = half; k < partial_blocks.size(); ++k) ferry_free(partial_blocks[k]);
    for (void* p : fresh) ferry_free(p);
    for (void* p : elsewhere) ferry_free(p);
    ferry_free(other);
  }).join();
}

// The same page while its owner takes no slow path at all (blocked, or off
// the CPU): another heap about to take a new page frees it first, so that
// memory freed for a sleeping owner serves the heaps that need it.
TEST(PageLists, AnotherHeapFreesASleepingOwnersCompletedInboxPageBeforeTakingANewPage) {
  constexpr size_t kSize = 4608;  // no other test here uses it
  Page* page = nullptr;
  Heap* owner = nullptr;
  std::vector<void*> on_page;
  std::vector<void*> others;
  std::latch filled(1), done(1);
  std::thread owner_thread([&] {
    void* extra;
    std::vector<void*> blocks = FillOnePage(kSize, &page, &extra);
    on_page = blocks;
    others.push_back(extra);
    owner = tl_heap;
    filled.count_down();
    done.wait();  // no allocation, so no slow path, until the end
    for (void* p : others) ferry_free(p);
  });
  filled.wait();
  ASSERT_EQ(page->in_full, 1);
  const size_t size_class = page->size_class;
  const uint64_t class_bit = uint64_t{1} << (size_class % 64);
  FreeElsewhereAndFlush(on_page, 0, 1);  // posted
  FreeElsewhereAndFlush(on_page, 1, on_page.size());
  EXPECT_EQ(page->kind, PageKind::kSmall) << "freed while linked on the inbox";
  EXPECT_NE(owner->inbox_complete[size_class / 64].load() & class_bit, 0u);
  ferry_stats_t before, after;
  ferry_stats_get(&before);
  void* fresh = nullptr;
  std::thread([&] { fresh = ferry_malloc(5120); }).join();  // a class nobody has a page of
  ferry_stats_get(&after);
  const uintptr_t fresh_address = reinterpret_cast<uintptr_t>(fresh);
  EXPECT_TRUE(page->kind == PageKind::kNone || PageOf(SegmentOf(fresh_address), fresh_address) == page)
      << "the sleeping owner's emptied page was not freed";
  EXPECT_EQ(after.pages_freed_by_returns, before.pages_freed_by_returns + 1);
  EXPECT_EQ(owner->inbox[size_class].load(), nullptr);
  ferry_free(fresh);
  done.count_down();
  owner_thread.join();
}

// A heap freeing another heap's emptied inbox pages takes the class's bit;
// if the owner holds that inbox's list just then (its own pass over its
// emptied pages, played by hand here), the bit is set again for the owner,
// so that a page that completed meanwhile is not left on the inbox unseen.
TEST(PageLists, AHeapThatFindsTheOwnerHoldingItsInboxLeavesTheBitForIt) {
  constexpr size_t kSize = 5632;  // no other test here uses it
  Page* page = nullptr;
  Heap* owner = nullptr;
  std::vector<void*> on_page;
  void* extra = nullptr;
  std::latch filled(1), done(1);
  std::thread owner_thread([&] {
    on_page = FillOnePage(kSize, &page, &extra);
    owner = tl_heap;
    filled.count_down();
    done.wait();  // no slow path until the end
    ferry_free(extra);
  });
  filled.wait();
  const size_t size_class = page->size_class;
  const uint64_t class_bit = uint64_t{1} << (size_class % 64);
  FreeElsewhereAndFlush(on_page, 0, 1);  // posted
  owner->inbox_owner_holding.store(1);
  Page* held = owner->inbox[size_class].exchange(nullptr);
  ASSERT_EQ(held, page);
  FreeElsewhereAndFlush(on_page, 1, on_page.size());  // complete: the bit is set
  ASSERT_NE(owner->inbox_complete[size_class / 64].load() & class_bit, 0u);
  void* first = nullptr;
  std::thread([&] { first = ferry_malloc(6656); }).join();  // a new page: takes the bit
  EXPECT_NE(owner->inbox_complete[size_class / 64].load() & class_bit, 0u)
      << "the bit was taken while the owner held the inbox, and not set again";
  InboxPush(owner->inbox[size_class], held);
  owner->inbox_owner_holding.store(0);
  void* second = nullptr;
  std::thread([&] { second = ferry_malloc(7680); }).join();  // the next new page frees it
  const uintptr_t second_address = reinterpret_cast<uintptr_t>(second);
  EXPECT_TRUE(page->kind == PageKind::kNone || PageOf(SegmentOf(second_address), second_address) == page)
      << "the emptied page stayed on the inbox";
  ferry_free(first);
  ferry_free(second);
  done.count_down();
  owner_thread.join();
}

// A page of several slices, alone on its queue, gets more than half of its
// blocks back from another thread while its own list still has one: the
// owner's next slow path sweeps the class and takes the chain, so that the
// owner's own frees of the rest bring `used` to 0 and the page is retired
// (kept a while, then given back). Left on the page instead, the chain's
// blocks would count in `used` until the class allocated again, and the
// owner's frees could never retire it.
TEST(PageLists, ASweptPageOfSeveralSlicesIsRetiredWhenItsOwnerFreesTheRest) {
  constexpr size_t kSize = 18432;  // pages of three slices, ten blocks; no other test here uses it
  void* first = ferry_malloc(kSize);
  const uintptr_t address = reinterpret_cast<uintptr_t>(first);
  Page* page = PageOf(SegmentOf(address), address);
  ASSERT_EQ(page->used, 1u) << "not a fresh page";
  ASSERT_GT(page->slice_count, 1u);
  ASSERT_GE(page->reserved, 4u);
  std::vector<void*> blocks{first};
  while (blocks.size() + 1 < page->reserved) blocks.push_back(ferry_malloc(kSize));
  for (void* p : blocks) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    ASSERT_EQ(PageOf(SegmentOf(a), a), page);
  }
  ferry_free(blocks.back());  // the page's own list has a block again
  blocks.pop_back();
  ASSERT_NE(page->free, nullptr);
  const size_t returned = (page->reserved + 1) / 2;  // past half: the owner is hinted
  ASSERT_LT(returned, blocks.size());
  FreeElsewhereAndFlush(blocks, 0, returned);
  ASSERT_EQ(ReturnedCount(page->returned.load()), returned);
  const size_t size_class = page->size_class;
  ASSERT_NE(tl_heap->sweep_classes[size_class / 64].load() & (uint64_t{1} << (size_class % 64)), 0u);
  // A large block: a slow path whatever ran before (a class of its own
  // took the fast path where an earlier test had left a page of it, in
  // some orders under --gtest_shuffle), and a slow path sweeps.
  void* other = ferry_malloc(kMediumMax + 1);
  for (size_t k = returned; k < blocks.size(); ++k) ferry_free(blocks[k]);
  EXPECT_EQ(page->used, 0u) << "the returned blocks still count: the owner's frees could not retire the page";
  EXPECT_NE(tl_heap->retained_classes[size_class / 64] & (uint64_t{1} << (size_class % 64)), 0u)
      << "the emptied page was not retired";
  ferry_free(other);
}

// Without a mark: every block back at once frees the page at the last free.
TEST(PageLists, AFullPageEmptiedByOneBatchIsFreedAtOnce) {
  constexpr size_t kSize = 4096;
  Page* page;
  void* extra;
  std::vector<void*> blocks = FillOnePage(kSize, &page, &extra);
  ASSERT_EQ(page->in_full, 1);
  ferry_stats_t before, after;
  ferry_stats_get(&before);
  FreeElsewhereAndFlush(blocks, 0, blocks.size());
  ferry_stats_get(&after);
  EXPECT_EQ(after.pages_freed_by_returns, before.pages_freed_by_returns + 1);
  EXPECT_EQ(page->kind, PageKind::kNone);
  ferry_free(extra);
}

// The owner's frees go on the list its allocations pop: the block freed last
// is handed out first, while it is still in cache, in every kind of class.
TEST(PageLists, TheOwnersLastFreedBlockIsHandedOutFirst) {
  for (size_t size : {size_t{48}, size_t{1000}, size_t{20000}, size_t{300000}}) {
    void* keep = ferry_malloc(size);  // the page never empties, so it stays
    const uintptr_t address = reinterpret_cast<uintptr_t>(keep);
    Page* page = PageOf(SegmentOf(address), address);
    std::vector<void*> blocks(3);
    for (void*& p : blocks) {
      p = ferry_malloc(size);
      ASSERT_EQ(PageOf(SegmentOf(reinterpret_cast<uintptr_t>(p)), reinterpret_cast<uintptr_t>(p)), page)
          << size << " B: the blocks are not on one page";
    }
    for (void* p : blocks) {
      ferry_free(p);
      EXPECT_EQ(page->free, static_cast<Block*>(p)) << size << " B: not on the list malloc pops";
    }
    for (size_t k = blocks.size(); k-- > 0;) {
      void* p = ferry_malloc(size);
      EXPECT_EQ(p, blocks[k]) << size << " B, block " << k;
    }
    for (void* p : blocks) ferry_free(p);
    ferry_free(keep);
  }
}

// The owner's free into a full page that nothing has come back to takes the
// page back at once (one CAS), and every later free into it is a plain local
// one; once other threads' returns are on the page, the owner's free joins
// them and the page comes back through the inbox.
TEST(PageLists, LocalFreeIntoAFullPageTakesItBack) {
  constexpr size_t kSize = 8192;
  Page* page;
  void* extra;
  std::vector<void*> blocks = FillOnePage(kSize, &page, &extra);
  ASSERT_EQ(page->in_full, 1);
  ferry_free(blocks[0]);
  EXPECT_EQ(page->in_full, 0);
  EXPECT_EQ(page->returned.load(), 0u);
  EXPECT_EQ(page->free, static_cast<Block*>(blocks[0]));
  for (size_t k = 1; k < blocks.size(); ++k) ferry_free(blocks[k]);
  ferry_free(extra);
}

TEST(PageLists, LocalFreeIntoAFullPageWithReturnsJoinsThem) {
  constexpr size_t kSize = 8192;
  Page* page;
  void* extra;
  std::vector<void*> blocks = FillOnePage(kSize, &page, &extra);
  ASSERT_EQ(page->in_full, 1);
  FreeElsewhereAndFlush(blocks, 0, 1);
  ferry_free(blocks[1]);
  EXPECT_EQ(ReturnedCount(page->returned.load()), 2u);
  EXPECT_EQ(tl_heap->inbox[page->size_class].load(), page);
  std::set<void*> fresh;
  for (uint32_t k = 0; k < 2 * uint32_t{page->reserved} + 2 && !fresh.count(blocks[1]); ++k) {
    fresh.insert(ferry_malloc(kSize));
  }
  EXPECT_TRUE(fresh.count(blocks[1])) << "a block freed into a full page was not reused";
  EXPECT_EQ(page->in_full, 0);
  for (size_t k = 2; k < blocks.size(); ++k) ferry_free(blocks[k]);
  for (void* p : fresh) ferry_free(p);
  ferry_free(extra);
}

// The class's only page carves its next blocks as its list runs out (the
// allocation that takes the last block does), not at the next allocation's
// slow path: nothing else of the class could serve it.
TEST(PageLists, TheOnlyPageOfAClassCarvesOnAsItsListRunsOut) {
  std::thread([] {
    constexpr size_t kSize = 416;  // one-slice pages; no other test here uses it
    std::vector<void*> blocks{ferry_malloc(kSize)};
    Page* page = PageOfBlock(blocks[0]);
    ASSERT_EQ(tl_heap->queues[page->size_class].tail, page) << "not the class's only page";
    const uint16_t first_carve = page->capacity;
    ASSERT_LT(first_carve, page->reserved);
    while (blocks.size() < first_carve) blocks.push_back(ferry_malloc(kSize));
    EXPECT_GT(page->capacity, first_carve) << "the list ran out and nothing was carved";
    EXPECT_NE(page->free, nullptr);
    for (void* p : blocks) ferry_free(p);
  }).join();
}

// Blocks freed on an older page of the class are handed out before the
// newest page carves more: carving makes memory resident, reuse does not.
// (The class's only page carves on as its list runs out: PopLastBlock.)
TEST(PageLists, FreeBlocksOfOlderPagesAreUsedBeforeNewBlocksAreCarved) {
  constexpr size_t kSize = 1792;  // a class no other test here uses
  std::thread([] {
    Page* older;
    void* extra;
    std::vector<void*> blocks = FillOnePage(kSize, &older, &extra);
    ASSERT_EQ(older->in_full, 1);
    const uintptr_t address = reinterpret_cast<uintptr_t>(extra);
    Page* newest = PageOf(SegmentOf(address), address);
    ASSERT_NE(newest, older);
    constexpr size_t kFreed = 4;
    std::set<void*> freed(blocks.begin(), blocks.begin() + kFreed);
    for (void* p : freed) ferry_free(p);  // local frees: the older page is back on the queue
    std::vector<void*> more{extra};
    while (newest->free != nullptr) more.push_back(ferry_malloc(kSize));
    const uint16_t carved = newest->capacity;
    ASSERT_LT(carved, newest->reserved) << "the newest page is carved in steps";
    for (size_t k = 0; k < kFreed; ++k) {
      void* p = ferry_malloc(kSize);
      EXPECT_TRUE(freed.count(p)) << "allocation " << k << " did not reuse a freed block";
      more.push_back(p);
    }
    EXPECT_EQ(newest->capacity, carved) << "the newest page carved new blocks while freed ones waited";
    for (size_t k = kFreed; k < blocks.size(); ++k) ferry_free(blocks[k]);
    for (void* p : more) ferry_free(p);
  }).join();
}

// Takes several hundred allocation slow paths in another class (8 KiB
// blocks are carved one at a time), then expects `page`, an empty medium
// page kept as its class's only page, to have gone back to its segment (its
// slices may serve the 8 KiB blocks by then).
void ExpectReleasedAfterSlowPathsInOtherClasses(Page* page, size_t size_class) {
  std::vector<void*> others;
  for (int k = 0; k < 1200; ++k) others.push_back(ferry_malloc(8 << 10));
  EXPECT_TRUE(page->kind == PageKind::kNone || page->size_class != size_class)
      << "the empty medium page stayed";
  for (void* q : others) ferry_free(q);
}

// Blocks of `size` (a class of one-slice pages) until `full` pages are
// full and one more has a block: each page's blocks, oldest page first.
std::vector<std::vector<void*>> FillOneSlicePages(size_t size, size_t full) {
  std::vector<std::vector<void*>> pages;
  Page* last = nullptr;
  while (pages.size() < full + 1) {
    void* p = ferry_malloc(size);
    const uintptr_t address = reinterpret_cast<uintptr_t>(p);
    Page* page = PageOf(SegmentOf(address), address);
    EXPECT_EQ(page->slice_count, 1);
    if (page != last) pages.emplace_back();
    last = page;
    pages.back().push_back(p);
  }
  return pages;
}

// Frees the blocks of pages[first, last), oldest page first.
void FreePages(const std::vector<std::vector<void*>>& pages, size_t first, size_t last) {
  for (size_t i = first; i < last; ++i) {
    for (void* p : pages[i]) ferry_free(p);
  }
}


// This thread's heap, made now if it had none (then tl_heap is the empty
// heap), with no standby page: a new thread may take over a heap an
// exited one left, whose exit released every empty page.
void ExpectHeapWithoutStandbyPages() {
  ferry_free(ferry_malloc(16));
  ASSERT_NE(tl_heap, &g_empty_heap);
  EXPECT_EQ(tl_heap->standby_pages, 0u);
}

// The standby pages of this thread that still have their mark.
size_t MarkedStandbyPages() {
  size_t marked = 0;
  for (size_t slot = 0; slot < kStandbyPagesMax; ++slot) {
    const Page* page = tl_heap->standby_slots[slot];
    if (page == nullptr) continue;
    EXPECT_EQ(page->standby, slot + 1);
    EXPECT_EQ(page->used, 0u);
    EXPECT_NE(tl_heap->queues[page->size_class].head, page) << "a standby page is its class's current page";
    ++marked;
  }
  EXPECT_EQ(marked, tl_heap->standby_pages);
  return marked;
}

// A thread that builds a set of objects and frees it, round after round
// (teardown, sh6bench), empties several pages of a class each round: they
// wait on the queue for the next round instead of going back to their
// segment and being made again.
TEST(PageLists, PagesEmptiedEveryRoundAreKeptForTheNextRound) {
  std::thread([] {
    ExpectHeapWithoutStandbyPages();
    constexpr size_t kSize = 1920;  // one-slice pages; no other test here uses it
    std::set<Page*> first_round;
    for (int round = 0; round < 4; ++round) {
      std::vector<std::vector<void*>> pages = FillOneSlicePages(kSize, 3);
      std::set<Page*> used;
      for (auto& blocks : pages) used.insert(PageOfBlock(blocks.front()));
      if (round == 0) first_round = used;
      EXPECT_EQ(used, first_round) << "round " << round << " made pages anew";
      for (size_t i = pages.size(); i-- > 0;) {  // newest first
        for (size_t k = pages[i].size(); k-- > 0;) ferry_free(pages[i][k]);
      }
      // The current page, emptied first while the others were full, stays
      // as the class's only page; the others, emptied behind it, wait.
      EXPECT_EQ(MarkedStandbyPages(), pages.size() - 1) << "round " << round;
    }
    for (Page* page : first_round) EXPECT_EQ(page->kind, PageKind::kSmall);
  }).join();
}

// kStandbyPagesMax at most: a thread that frees many pages' worth keeps
// the last ones it emptied, and releases the first; and they all go once
// the heap has taken a few hundred slow paths in other classes.
TEST(PageLists, StandbyPagesAreTheLastEmptiedAndGoAfterSlowPathsElsewhere) {
  std::thread([] {
    ExpectHeapWithoutStandbyPages();
    constexpr size_t kExtra = 4;
    // One-slice pages; no other test here uses the size.
    std::vector<std::vector<void*>> pages = FillOneSlicePages(1024, kStandbyPagesMax + kExtra);
    std::vector<Page*> records;
    for (auto& blocks : pages) records.push_back(PageOfBlock(blocks.front()));
    FreePages(pages, 0, pages.size() - 1);  // the current page keeps its block
    EXPECT_EQ(MarkedStandbyPages(), kStandbyPagesMax);
    for (size_t i = 0; i < kExtra; ++i) {
      EXPECT_EQ(records[i]->kind, PageKind::kNone) << "page " << i << ", among the first emptied, was kept";
    }
    for (size_t i = kExtra; i + 1 < records.size(); ++i) {
      EXPECT_NE(records[i]->standby, 0u) << "page " << i << ", among the last emptied, is not on standby";
    }
    std::vector<void*> others;
    for (int k = 0; k < 1200; ++k) others.push_back(ferry_malloc(8 << 10));  // slow paths in another class
    EXPECT_EQ(MarkedStandbyPages(), 0u) << "standby pages stayed while the thread took slow paths elsewhere";
    for (size_t i = 0; i + 1 < records.size(); ++i) {
      EXPECT_TRUE(records[i]->kind == PageKind::kNone || records[i]->size_class != records.back()->size_class)
          << "page " << i << " stayed";
    }
    for (void* p : others) ferry_free(p);
    for (void* p : pages.back()) ferry_free(p);
  }).join();
}

// A page that empties while kStandbyPagesMax are kept displaces the oldest,
// which may be of its own class, on the same queue; the class's current
// page stays current. (A page that displaced the last other page of its
// class, and so was its class's only page, was marked standby all the same
// in the first form, handed out blocks with the mark on, and the next
// release of standby pages found one with blocks out: a soak run's abort.
// A current page with only standby pages behind it now stays current
// before any displacement: ALoopOfOneBlockKeepsItsCurrentPageInFrontOfStandbyPages.)
TEST(PageLists, APageThatEmptiesDisplacesTheOldestStandbyPageOfItsOwnClass) {
  std::thread([] {
    ExpectHeapWithoutStandbyPages();
    // Two classes of one-slice pages that no other test here uses.
    constexpr size_t kSizeX = 896, kSizeY = 640;  // Y: six blocks carved at a time
    // Class X: enough full pages to fill every standby slot but one, made
    // first: making pages takes slow paths, and those let standby pages go.
    std::vector<std::vector<void*>> x = FillOneSlicePages(kSizeX, kStandbyPagesMax - 1);
    // Class Y: full pages A and N, and the current page C with one block.
    std::vector<std::vector<void*>> y = FillOneSlicePages(kSizeY, 2);
    Page* a = PageOfBlock(y[0].front());
    Page* n = PageOfBlock(y[1].front());
    Page* c = PageOfBlock(y[2].front());
    const size_t y_class = c->size_class;
    for (void* p : y[0]) ferry_free(p);  // A empties behind C: the oldest standby page
    ASSERT_NE(a->standby, 0u);
    ferry_free(y[1].back());  // N back on the queue, ahead of A
    y[1].pop_back();
    PageQueue* q = &tl_heap->queues[y_class];
    ASSERT_EQ(q->head, c);
    ASSERT_EQ(c->queue_next, n) << "a page with blocks out went in behind a standby page";
    ASSERT_EQ(q->tail, a);
    FreePages(x, 0, x.size() - 1);
    ASSERT_EQ(MarkedStandbyPages(), kStandbyPagesMax);
    for (void* p : y[1]) ferry_free(p);  // N empties: displaces A, on the same queue
    EXPECT_EQ(a->kind, PageKind::kNone) << "A, the oldest standby page, was not released";
    EXPECT_NE(n->standby, 0u);
    EXPECT_EQ(q->head, c);
    EXPECT_EQ(q->tail, n);
    EXPECT_EQ(tl_heap->direct[y_class], c);
    EXPECT_EQ(MarkedStandbyPages(), kStandbyPagesMax);
    void* again = ferry_malloc(kSizeY);
    EXPECT_EQ(PageOfBlock(again), c);
    ReleaseStandbyPagesForTest(tl_heap);
    EXPECT_EQ(MarkedStandbyPages(), 0u);
    EXPECT_EQ(n->kind, PageKind::kNone);
    EXPECT_EQ(q->head, c);
    ferry_free(again);
    for (void* p : y[2]) ferry_free(p);
    for (void* p : x.back()) ferry_free(p);
  }).join();
}

// A thread that frees more than twice kStandbyPagesMax pages' worth with no
// allocation slow path between is shrinking: it keeps none, so that an
// idle thread does not hold the last ones; its next slow path lets it keep
// pages again.
TEST(PageLists, AFreeBurstOfManyPagesKeepsNone) {
  std::thread([] {
    ExpectHeapWithoutStandbyPages();
    constexpr size_t kSize = 576;  // one-slice pages; no other test here uses it
    std::vector<std::vector<void*>> pages = FillOneSlicePages(kSize, 3 * kStandbyPagesMax);
    FreePages(pages, 0, pages.size() - 1);
    EXPECT_EQ(MarkedStandbyPages(), 0u) << "a heap shrinking by 3 x kStandbyPagesMax pages kept some";
    for (size_t i = 0; i + 1 < pages.size(); ++i) {
      EXPECT_EQ(PageOfBlock(pages[i].front())->kind, PageKind::kNone) << "page " << i << " stayed";
    }
    // Pages of a round again: kept.
    std::vector<std::vector<void*>> round = FillOneSlicePages(kSize, 2);
    FreePages(round, 0, round.size());
    EXPECT_EQ(MarkedStandbyPages(), 2u) << "not kept after the heap ran short of blocks again";
    for (void* p : pages.back()) ferry_free(p);
  }).join();
}

// A class whose pages were all emptied has its current page and standby
// pages behind it; a malloc/free loop of one block empties the current
// page at every free, and it stays the current page. (Put on standby in
// its turn, it made a standby page current, and the loop swapped the two
// pages at every free, each swap putting off the standby pages' release.)
TEST(PageLists, ALoopOfOneBlockKeepsItsCurrentPageInFrontOfStandbyPages) {
  std::thread([] {
    ExpectHeapWithoutStandbyPages();
    constexpr size_t kSize = 768;  // one-slice pages; no other test here uses it
    std::vector<std::vector<void*>> pages = FillOneSlicePages(kSize, 2);
    FreePages(pages, 0, pages.size());  // the current page empties last
    const size_t size_class = PageOfBlock(pages[0].front())->size_class;
    Page* current = tl_heap->direct[size_class];
    ASSERT_EQ(MarkedStandbyPages(), 2u);
    const uint32_t until = tl_heap->retained_until;
    for (int k = 0; k < 100; ++k) {
      void* p = ferry_malloc(kSize);
      EXPECT_EQ(PageOfBlock(p), current) << "pair " << k;
      ferry_free(p);
    }
    EXPECT_EQ(tl_heap->direct[size_class], current);
    EXPECT_EQ(MarkedStandbyPages(), 2u);
    EXPECT_EQ(tl_heap->retained_until, until) << "the loop put off the standby pages' release";
  }).join();
}

// The same where the page behind the current one is dry, its carved blocks
// all out: a standby page taken in its place stays current when the loop
// empties it.
TEST(PageLists, ALoopOfOneBlockKeepsItsCurrentPageInFrontOfADryPage) {
  std::thread([] {
    ExpectHeapWithoutStandbyPages();
    constexpr size_t kSize = 352;  // one-slice pages, carved 11 blocks at a time; no other test here uses it
    void* first = ferry_malloc(kSize);
    Page* a = PageOfBlock(first);
    std::vector<void*> a_blocks{first};
    while (a_blocks.size() < a->reserved) a_blocks.push_back(ferry_malloc(kSize));
    std::vector<void*> g_blocks{ferry_malloc(kSize)};
    Page* g = PageOfBlock(g_blocks[0]);
    ASSERT_NE(g, a);
    ferry_free(a_blocks.back());  // A back on the queue, behind G: G is no longer its class's only page
    a_blocks.pop_back();
    while (g->free != nullptr) g_blocks.push_back(ferry_malloc(kSize));  // every carved block out
    ASSERT_LT(g->capacity, g->reserved) << "G carved on as its list ran out, with A on the queue";
    for (void* p : a_blocks) ferry_free(p);  // A empties behind G
    ASSERT_NE(a->standby, 0u);
    ferry_free(ferry_malloc(kSize));  // G is dry: A is taken, and stays current when it empties
    EXPECT_EQ(tl_heap->queues[a->size_class].head, a);
    const uint32_t until = tl_heap->retained_until;
    for (int k = 0; k < 100; ++k) {
      void* p = ferry_malloc(kSize);
      EXPECT_EQ(PageOfBlock(p), a) << "pair " << k;
      ferry_free(p);
    }
    EXPECT_EQ(tl_heap->retained_until, until) << "the loop put off the release of retained pages";
    for (void* p : g_blocks) ferry_free(p);
  }).join();
}

// A class keeps its only page when it empties; a page of several slices (a
// medium class, up to 2 MiB) only until the heap has taken a few hundred
// slow paths in other classes.
TEST(PageLists, AnEmptyMediumPageIsKeptAWhileThenReleased) {
  std::thread([] {
    void* p = ferry_malloc(200 << 10);
    const uintptr_t address = reinterpret_cast<uintptr_t>(p);
    Page* page = PageOf(SegmentOf(address), address);
    ASSERT_EQ(page->kind, PageKind::kSmall);
    ASSERT_GT(page->slice_count, 1);
    const size_t size_class = page->size_class;
    ASSERT_EQ(tl_heap->queues[size_class].head, page);
    ASSERT_EQ(tl_heap->queues[size_class].tail, page) << "not the class's only page";
    ferry_free(p);
    // A block freed and allocated again in a loop keeps its page.
    void* again = ferry_malloc(200 << 10);
    EXPECT_EQ(PageOf(SegmentOf(reinterpret_cast<uintptr_t>(again)), reinterpret_cast<uintptr_t>(again)), page);
    ferry_free(again);
    EXPECT_EQ(page->kind, PageKind::kSmall);
    ExpectReleasedAfterSlowPathsInOtherClasses(page, size_class);
    EXPECT_EQ(tl_heap->queues[size_class].head, nullptr);
  }).join();
}

// A thread whose frees feed its own allocations never runs short of blocks,
// so it takes no slow path; its checkpoint every kFreesPerCheckpoint local
// frees lets the retained page go all the same.
void ExpectReleasedWhileChurningOwnBlocks(Page* page, size_t size_class) {
  for (uint32_t k = 0; k < 2 * (kRetainSlowPaths + 1) * kFreesPerCheckpoint; ++k) {
    void* p = ferry_malloc(64);
    ferry_free(p);
  }
  EXPECT_TRUE(page->kind == PageKind::kNone || page->size_class != size_class)
      << "the empty medium page stayed while the thread churned 64 B blocks";
}

TEST(PageLists, AnEmptyMediumPageGoesWhileTheThreadOnlyChurnsItsOwnBlocks) {
  std::thread([] {
    void* warm = ferry_malloc(64);  // the 64 B class's page exists first
    void* p = ferry_malloc(200 << 10);
    const uintptr_t address = reinterpret_cast<uintptr_t>(p);
    Page* page = PageOf(SegmentOf(address), address);
    ASSERT_GT(page->slice_count, 1);
    const size_t size_class = page->size_class;
    ASSERT_EQ(tl_heap->queues[size_class].tail, page) << "not the class's only page";
    ferry_free(p);
    ASSERT_EQ(page->kind, PageKind::kSmall) << "not retained";
    ExpectReleasedWhileChurningOwnBlocks(page, size_class);
    ferry_free(warm);
  }).join();
}

// The slices of this thread's empty pages of several slices that are their
// class's only page: the retained ones (PageToReleaseOnEmpty).
size_t RetainedEmptySlices() {
  size_t slices = 0;
  for (size_t c = 0; c < kNumClasses; ++c) {
    const Page* page = tl_heap->queues[c].head;
    if (page != nullptr && page == tl_heap->queues[c].tail && page->used == 0 && page->slice_count > 1) {
      slices += page->slice_count;
    }
  }
  return slices;
}

// An empty medium page, its class's only page, retained now.
Page* RetainOneMediumPage(size_t size) {
  void* p = ferry_malloc(size);
  const uintptr_t address = reinterpret_cast<uintptr_t>(p);
  Page* page = PageOf(SegmentOf(address), address);
  EXPECT_GT(page->slice_count, 1);
  EXPECT_EQ(tl_heap->queues[page->size_class].tail, page) << "not the class's only page";
  ferry_free(p);
  EXPECT_EQ(page->kind, PageKind::kSmall) << "not retained";
  return page;
}

// A block at a time in each medium class from 64 KiB up (a program of
// blocks of all sizes, one live at a time): each class kept its emptied
// page, 30 MiB a thread in cliff pattern 3 (perf/RESULTS.md, 2026-12-07);
// together they span kRetainedSlicesMax at most now.
TEST(PageLists, EmptyPagesOfManyMediumClassesSpanLittleTogether) {
  std::thread([] {
    std::set<size_t> classes;
    for (size_t n = 64 << 10; n <= kMediumMax; n += 9 << 10) {
      ferry_free(ferry_malloc(n));
      classes.insert(ComputeSizeClass(n));
    }
    ASSERT_GE(classes.size(), 20u);
    EXPECT_LE(RetainedEmptySlices(), kRetainedSlicesMax);
    EXPECT_GT(RetainedEmptySlices(), 0u) << "none retained: a loop in one class would make a page a block";
  }).join();
}

// Allocations of large blocks are slow paths too: a thread of large blocks
// and the odd medium one lets the medium pages go.
TEST(PageLists, AnEmptyMediumPageGoesWhileTheThreadTakesLargeBlocks) {
  std::thread([] {
    Page* page = RetainOneMediumPage(200 << 10);
    const size_t size_class = page->size_class;
    for (uint32_t k = 0; k < 2 * kRetainSlowPaths + 1; ++k) ferry_free(ferry_malloc(1 << 20));
    EXPECT_TRUE(page->kind == PageKind::kNone || page->size_class != size_class)
        << "the empty medium page stayed while the thread took large blocks";
  }).join();
}

// Fills four blocks of a fresh medium page of this thread's (of five: past
// half) and has another thread free those blocks and flush: the page has
// every block back, on a returned chain the owner has not taken yet.
void EmptyAMediumPageFromAnotherThread(Page** page_out, size_t* size_class_out) {
  constexpr size_t kSize = 384 << 10;  // five blocks to a page of 30 slices
  std::vector<void*> blocks;
  for (int k = 0; k < 4; ++k) blocks.push_back(ferry_malloc(kSize));
  const uintptr_t address = reinterpret_cast<uintptr_t>(blocks[0]);
  Page* page = PageOf(SegmentOf(address), address);
  ASSERT_GT(page->slice_count, 1);
  ASSERT_LE(page->reserved, 2 * blocks.size()) << "four returns must reach half the page";
  for (void* p : blocks) {
    const uintptr_t address = reinterpret_cast<uintptr_t>(p);
    ASSERT_EQ(PageOf(SegmentOf(address), address), page);
  }
  *page_out = page;
  *size_class_out = page->size_class;
  FreeElsewhereAndFlush(blocks, 0, blocks.size());
}

// The same when other threads empty it: the sweep that takes the returned
// blocks back keeps it as the class's current page, but only a while.
TEST(PageLists, AMediumPageEmptiedByAnotherThreadIsReleasedAfterAWhile) {
  std::thread([] {
    Page* page;
    size_t size_class;
    EmptyAMediumPageFromAnotherThread(&page, &size_class);
    if (::testing::Test::HasFatalFailure()) return;
    // The first slow path sweeps the page back, empty.
    ExpectReleasedAfterSlowPathsInOtherClasses(page, size_class);
  }).join();
}

// Swept back and let go by the checkpoints of a thread that takes no slow
// path: the sweep hint waits for nothing else.
TEST(PageLists, AMediumPageEmptiedByAnotherThreadGoesWhileTheOwnerOnlyChurnsItsOwnBlocks) {
  std::thread([] {
    void* warm = ferry_malloc(64);  // the 64 B class's page exists first
    Page* page;
    size_t size_class;
    EmptyAMediumPageFromAnotherThread(&page, &size_class);
    if (!::testing::Test::HasFatalFailure()) ExpectReleasedWhileChurningOwnBlocks(page, size_class);
    ferry_free(warm);
  }).join();
}

// A new page takes free slices whose memory is still committed before ones
// the purge has given back to the OS, even when those come first: reusing
// them keeps the resident set from growing while they wait for their purge.
TEST(PageLists, NewPagesTakeCommittedFreeSlicesFirst) {
  std::thread([] {
    constexpr size_t kSize = 3072;  // one-slice pages; no other test here uses it
    std::vector<void*> blocks;
    for (int k = 0; k < 64; ++k) blocks.push_back(ferry_malloc(kSize));
    auto page_of = [](void* p) {
      const uintptr_t address = reinterpret_cast<uintptr_t>(p);
      return PageOf(SegmentOf(address), address);
    };
    Page* first = page_of(blocks.front());
    Page* second = nullptr;
    for (void* p : blocks) {
      if (page_of(p) != first) {
        second = page_of(p);
        break;
      }
    }
    ASSERT_NE(second, nullptr);
    ASSERT_EQ(first->slice_count, 1);
    const uintptr_t first_start = first->start, second_start = second->start;
    auto free_page = [&](uintptr_t start) {
      for (void*& p : blocks) {
        if (p != nullptr && page_of(p)->start == start) {
          ferry_free(p);
          p = nullptr;
        }
      }
      ReleaseStandbyPagesForTest(tl_heap);  // not kept for the class's next use
    };
    free_page(first_start);
    ferry_collect();  // the first page's slice goes back to the OS now
    free_page(second_start);  // the second's stays committed (the purge waits)
    Segment* segment = SegmentOf(second_start);
    const size_t second_slice = (second_start - reinterpret_cast<uintptr_t>(segment)) / kSliceSize;
    ASSERT_NE(segment->dirty_slices.load() & (uint64_t{1} << second_slice), 0u);
    ASSERT_EQ(segment->used_slices.load() & (uint64_t{1} << second_slice), 0u) << "the page was not released";
    void* fresh = ferry_malloc(2560);  // a class this thread has no page of yet
    EXPECT_EQ(page_of(fresh)->start, second_start)
        << "the new page went to slice " << (page_of(fresh)->start - reinterpret_cast<uintptr_t>(segment)) / kSliceSize
        << ", not to the committed free slice " << second_slice;
    ferry_free(fresh);
    for (void* p : blocks) ferry_free(p);
  }).join();
}

// Free slices of the calling thread's own segments that were never
// touched or were decommitted, in segments that hold a page: an empty one
// (a spare the heap had when a thread took it over) may go back to its
// arena at any collect (in some orders of the tests under --gtest_shuffle,
// the only segment counted went with the other thread's ferry_collect).
size_t OwnUntouchedFreeSlices() {
  size_t count = 0;
  SpinLockHolder hold(&tl_heap->segments_lock);
  for (Segment* segment = tl_heap->segments; segment != nullptr; segment = segment->heap_next) {
    if (segment->used_slices.load() == 1) continue;
    const uint64_t free_clean = ~segment->used_slices.load() & ~segment->dirty_slices.load();
    count += static_cast<size_t>(__builtin_popcountll(free_clean));
  }
  return count;
}

// Another heap's committed free slice is taken once it has been free for
// a few ms (ArenaTakeSlicesAnywhere); the tests below wait that long.
void SleepPastForeignSlicesSettling() { std::this_thread::sleep_for(std::chrono::milliseconds(20)); }

// Resident memory grows only when no committed slice is free anywhere: a
// heap whose own segment has untouched free slices still takes the slice
// another heap's thread freed, once it has settled.
TEST(PageLists, NewPagesTakeAnotherHeapsCommittedSliceBeforeAnUntouchedOwnOne) {
  SKIP_UNDER_ADDRESS_SPACE_LIMIT();
  auto page_of = [](void* p) {
    const uintptr_t address = reinterpret_cast<uintptr_t>(p);
    return PageOf(SegmentOf(address), address);
  };
  std::latch b_allocated(1), a_ready(1), b_freed(1), a_allocated(1);
  uintptr_t freed_start = 0, fresh_start = 0;
  size_t own_clean = 0;
  // B: pages of its own, placed before A has a segment, so none is in A's.
  std::thread b([&] {
    constexpr size_t kSize = 2304;  // one-slice pages; no other test here uses it
    std::vector<void*> blocks;
    for (int k = 0; k < 64; ++k) blocks.push_back(ferry_malloc(kSize));
    b_allocated.count_down();
    a_ready.wait();
    ferry_collect();  // every free slice anywhere goes back to the OS now
    freed_start = page_of(blocks.front())->start;
    for (void*& p : blocks) {  // the first page's blocks: the page goes back to its segment
      if (page_of(p)->start == freed_start) {
        ferry_free(p);
        p = nullptr;
      }
    }
    ReleaseStandbyPagesForTest(tl_heap);  // not kept for the class's next use
    Segment* segment = SegmentOf(freed_start);
    const uint64_t bit = uint64_t{1} << ((freed_start - reinterpret_cast<uintptr_t>(segment)) / kSliceSize);
    EXPECT_EQ(segment->used_slices.load() & bit, 0u) << "the page was not released";
    EXPECT_NE(segment->dirty_slices.load() & bit, 0u);
    b_freed.count_down();
    a_allocated.wait();
    for (void* p : blocks) ferry_free(p);
  });
  b_allocated.wait();
  // A: large blocks until one needs a segment of A's own (no segment had a
  // run of 32 free slices): the rest of that segment is free and untouched.
  std::thread a([&] {
    std::vector<void*> large;
    for (int k = 0; k < 64 && OwnUntouchedFreeSlices() == 0; ++k) large.push_back(ferry_malloc(kLargeMax));
    a_ready.count_down();
    b_freed.wait();
    SleepPastForeignSlicesSettling();
    own_clean = OwnUntouchedFreeSlices();
    void* fresh = ferry_malloc(2816);  // a class no thread here has a page of: a new page
    fresh_start = page_of(fresh)->start;
    a_allocated.count_down();
    ferry_free(fresh);
    for (void* p : large) ferry_free(p);
  });
  a.join();
  b.join();
  ASSERT_GT(own_clean, 0u) << "thread A got no segment of its own";
  EXPECT_EQ(fresh_start, freed_start)
      << "the new page took an untouched slice while another heap's committed slice was free";
}

// Two threads that empty and remake their pages every round each take back
// the slices their own pages left, not the other's: taken at once, the
// other's are still in that thread's cache, and two threads trading their
// pages so ran half as fast as one (perf/RESULTS.md, 2026-12-07). Rounds
// in which a thread took more than a few ms from the other's frees to its
// own next page are not counted (the other's slices had settled by then,
// and may be taken).
TEST(PageLists, ThreadsRemakingTheirPagesEveryRoundTakeBackTheirOwnSlices) {
  SKIP_UNDER_ADDRESS_SPACE_LIMIT();
  constexpr size_t kSize = 832;     // one-slice pages of 78 blocks; no other test here uses it
  constexpr int kBlocks = 78 * 6;   // six pages: the emptied ones beyond the first go back
  constexpr int kRounds = 60;
  std::barrier sync(2);
  std::vector<uintptr_t> pages[2][kRounds];
  uint64_t allocated_ms[2][kRounds] = {};  // when the thread's last page of the round was made
  auto run = [&](int t) {
    std::vector<void*> blocks(kBlocks);
    for (int round = 0; round < kRounds; ++round) {
      sync.arrive_and_wait();
      for (void*& p : blocks) {
        p = ferry_malloc(kSize);
        memset(p, t, 64);
        const uintptr_t address = reinterpret_cast<uintptr_t>(p);
        const uintptr_t start = PageOf(SegmentOf(address), address)->start;
        if (pages[t][round].empty() || pages[t][round].back() != start) pages[t][round].push_back(start);
      }
      allocated_ms[t][round] = OsMonotonicMs();
      for (size_t i = blocks.size(); i-- > 0;) ferry_free(blocks[i]);
    }
  };
  std::thread a(run, 0), b(run, 1);
  a.join();
  b.join();
  // A round counts where this thread's pages were all made within 2 ms of
  // when the other began to free its pages of the round before (and so of
  // its frees of this round too): every slice the other's pages left was
  // fresh for each of them.
  int counted = 0, crossed = 0;
  for (int t = 0; t < 2; ++t) {
    for (int round = 1; round < kRounds; ++round) {
      if (allocated_ms[t][round] > allocated_ms[1 - t][round - 1] + 2) continue;
      ++counted;
      const std::set<uintptr_t> others(pages[1 - t][round - 1].begin(), pages[1 - t][round - 1].end());
      for (uintptr_t start : pages[t][round]) crossed += others.count(start) != 0 ? 1 : 0;
    }
  }
  // A few may cross: under ThreadSanitizer 2 did in 116 rounds (not traced;
  // a slice decommitted meanwhile reads as clean, and only committed ones
  // are judged). Trading pages crossed about five a round (590 in 118).
  if (counted < kRounds / 4) GTEST_SKIP() << "only " << counted << " rounds quick enough to count";
  EXPECT_LE(crossed, counted / 10) << "in " << counted << " rounds, pages took " << crossed
                                   << " slices that the other thread's pages had left a moment before";
}

// Where no committed slice is free, a heap's new page goes to a segment on
// its own list, a new one if need be, not to the untouched slices of
// another heap's segment: a page there shares that segment's header with
// its heap's pages (the claims' and frees' atomic operations on the same
// lines), and two threads so placed ran up to 1.8x as long (perf/RESULTS.md,
// 2026-12-07).
TEST(PageLists, ANewPageWithNoCommittedSliceFreeGoesToASegmentOfTheHeapsOwn) {
  SKIP_UNDER_ADDRESS_SPACE_LIMIT();
  std::vector<void*> held;
  for (int k = 0; k < 4; ++k) held.push_back(ferry_malloc(kLargeMax));  // this heap's segments, partly free
  bool own = false;
  std::thread([&] {
    ferry_collect();  // every free slice anywhere goes back to the OS now
    void* p = ferry_malloc(704);  // a class no other test here uses: a new page
    own = SegmentOf(reinterpret_cast<uintptr_t>(p))->heap.load() == tl_heap;
    ferry_free(p);
  }).join();
  for (void* p : held) ferry_free(p);
  EXPECT_TRUE(own) << "the page went to another heap's segment";
}

// The hint that committed free slices exist somewhere survives a search
// that found no run long enough (which sets it to zero) followed by a claim
// of a shorter committed run: that claim took it below zero, the next
// release only back to zero, and with no purge run to set it right
// (FERRY_RECLAIMERS=0 here) no heap looked for other heaps' committed
// slices again.
TEST(PageLists, NewPagesFindCommittedSlicesAfterAFruitlessSearchAndAClaimOfAShorterRun) {
  SKIP_UNDER_ADDRESS_SPACE_LIMIT();
  auto page_of = [](void* p) {
    const uintptr_t address = reinterpret_cast<uintptr_t>(p);
    return PageOf(SegmentOf(address), address);
  };
  constexpr size_t kSize = 3328;  // one-slice pages, 19 blocks; no other test here uses these sizes
  constexpr size_t kOtherSize = 3840;
  constexpr size_t kFreshSize = 1920;
  std::latch b_allocated(1), a_ready(1), b_freed_first(1), a_searched(1), b_freed_second(1), a_allocated(1);
  uintptr_t first_start = 0, reused_start = 0, second_start = 0, fresh_start = 0;
  size_t own_clean = 0;
  auto free_page = [&](std::vector<void*>& blocks, uintptr_t start) {
    for (void*& p : blocks) {
      if (p != nullptr && page_of(p)->start == start) {
        ferry_free(p);
        p = nullptr;
      }
    }
    ReleaseStandbyPagesForTest(tl_heap);  // not kept for the class's next use
  };
  // B: three pages of one class (the last stays: a class's only page is
  // kept), in a segment of its own list: with no committed slice anywhere,
  // a claim takes B's own untouched slices first.
  std::thread b([&] {
    ferry_collect();
    std::vector<void*> blocks;
    for (int k = 0; k < 3 * 19; ++k) blocks.push_back(ferry_malloc(kSize));
    b_allocated.count_down();
    a_ready.wait();
    ferry_collect();  // every free slice anywhere goes back to the OS now
    first_start = page_of(blocks.front())->start;
    free_page(blocks, first_start);  // one committed free slice
    b_freed_first.count_down();
    a_searched.wait();
    // A new page of B's takes its own committed slice: the claim of a run
    // shorter than the one A's search asked for.
    void* other = ferry_malloc(kOtherSize);
    reused_start = page_of(other)->start;
    for (void* p : blocks) {
      if (p != nullptr && page_of(p)->start != page_of(blocks.back())->start) {
        second_start = page_of(p)->start;
        break;
      }
    }
    free_page(blocks, second_start);  // the only committed free slice now
    b_freed_second.count_down();
    a_allocated.wait();
    ferry_free(other);
    for (void* p : blocks) ferry_free(p);
  });
  b_allocated.wait();
  std::thread a([&] {
    // Large blocks until a segment of A's own has free untouched slices.
    std::vector<void*> large;
    for (int k = 0; k < 64 && OwnUntouchedFreeSlices() < 16; ++k) large.push_back(ferry_malloc(kLargeMax));
    a_ready.count_down();
    b_freed_first.wait();
    // Ten slices: no committed free run that long anywhere, so the search
    // finds none and sets the hint to zero; the block takes clean slices.
    void* ten_slices = ferry_malloc(600 << 10);
    a_searched.count_down();
    b_freed_second.wait();
    SleepPastForeignSlicesSettling();
    own_clean = OwnUntouchedFreeSlices();
    void* fresh = ferry_malloc(kFreshSize);  // a class no thread here has a page of: a new page
    fresh_start = page_of(fresh)->start;
    a_allocated.count_down();
    ferry_free(fresh);
    ferry_free(ten_slices);
    for (void* p : large) ferry_free(p);
  });
  a.join();
  b.join();
  ASSERT_EQ(reused_start, first_start) << "B's new page did not take its own committed slice";
  ASSERT_NE(second_start, 0u);
  ASSERT_GT(own_clean, 0u) << "thread A had no untouched slice of its own";
  EXPECT_EQ(fresh_start, second_start)
      << "the new page took an untouched slice while another heap's committed slice was free";
}

// The purge gives a free slice back to the OS once it has been free for the
// purge delay, counted from when its page was released: a slice freed late
// does not go with the slices freed before it, and a slice taken and freed
// again waits the delay anew. (This binary runs with FERRY_RECLAIMERS=0, so
// no housekeeping but these calls runs.)
TEST(Purge, EachFreeSliceWaitsTheDelayFromWhenItWasFreed) {
  std::thread([] {
    constexpr size_t kSize = 2048;  // one-slice pages; no other test here uses it
    constexpr uint64_t kDelay = 1000;
    auto page_of = [](void* p) {
      const uintptr_t address = reinterpret_cast<uintptr_t>(p);
      return PageOf(SegmentOf(address), address);
    };
    // Pages until two filled ones share a segment: those two are emptied
    // below and go back to it (the class still uses the others). Pages
    // take free slices wherever this heap's segments, or those that exited
    // threads left, have them, so neighbours in time may be segments apart
    // (the first two of the first five were not, in some orders of the
    // tests under --gtest_shuffle).
    std::vector<void*> blocks;
    std::vector<Page*> pages;
    std::optional<std::pair<size_t, size_t>> pair;
    while (!pair && pages.size() < 256) {
      void* p = ferry_malloc(kSize);
      blocks.push_back(p);
      if (!pages.empty() && pages.back() == page_of(p)) continue;
      pages.push_back(page_of(p));
      if (pages.size() < 3) continue;
      // The newest page is the class's current one; the others are full.
      // The pair's segment must hold a page besides them, or emptied it
      // could go back to its arena, decommitted whole outside the purge.
      const size_t j = pages.size() - 2;
      for (size_t i = 0; i < j && !pair; ++i) {
        Segment* segment = SegmentOf(pages[i]->start);
        if (segment != SegmentOf(pages[j]->start)) continue;
        const uint64_t pair_slices = uint64_t{1} | SliceRun(static_cast<size_t>(pages[i] - segment->pages), 1) |
                                     SliceRun(static_cast<size_t>(pages[j] - segment->pages), 1);
        if ((segment->used_slices.load() & ~pair_slices) != 0) pair.emplace(i, j);
      }
    }
    ASSERT_TRUE(pair) << "no two of " << pages.size() << " pages in one segment";
    pages = {pages[pair->first], pages[pair->second]};
    auto free_page = [&](Page* page) {
      for (void*& p : blocks) {
        if (p != nullptr && page_of(p) == page) {
          ferry_free(p);
          p = nullptr;
        }
      }
      ReleaseStandbyPagesForTest(tl_heap);  // not kept for the class's next use
    };
    Segment* segment = SegmentOf(pages[0]->start);
    ASSERT_EQ(SegmentOf(pages[1]->start), segment);
    auto slice_bit = [&](Page* page) {
      return uint64_t{1} << ((page->start - reinterpret_cast<uintptr_t>(segment)) / kSliceSize);
    };
    const uint64_t early = slice_bit(pages[0]), late = slice_bit(pages[1]);
    const int early_index = __builtin_ctzll(early), late_index = __builtin_ctzll(late);
    auto committed = [&](uint64_t bit) { return (segment->dirty_slices.load() & bit) != 0; };
    free_page(pages[0]);
    ASSERT_EQ(segment->used_slices.load() & early, 0u) << "the emptied page kept its slice";
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    free_page(pages[1]);
    ASSERT_EQ(segment->used_slices.load() & late, 0u) << "the emptied page kept its slice";
    const uint64_t early_freed = segment->freed_ms[early_index].load();
    const uint64_t late_freed = segment->freed_ms[late_index].load();
    ASSERT_GE(late_freed, early_freed + 20) << "release times were not stamped";
    ArenaPurge(early_freed + kDelay - 1, kDelay, false);
    EXPECT_TRUE(committed(early)) << "purged before its delay was up";
    EXPECT_TRUE(committed(late));
    ArenaPurge(early_freed + kDelay, kDelay, false);
    EXPECT_FALSE(committed(early)) << "free for the whole delay, yet not purged";
    EXPECT_TRUE(committed(late)) << "purged 20 ms early, with the slice freed before it";
    // The late slice is taken by a page and given back (as a heap's new
    // page would): free only since then, it waits anew.
    ASSERT_TRUE(TryTakeSlices(segment, late_index, 1));
    FreeSlices(segment, static_cast<size_t>(late_index), 1, late_freed + 900);
    ArenaPurge(late_freed + 1000, kDelay, false);
    EXPECT_TRUE(committed(late)) << "purged 100 ms after it was last freed, with a 1000 ms delay";
    ArenaPurge(late_freed + 1899, kDelay, false);
    EXPECT_TRUE(committed(late)) << "purged before its delay was up";
    ArenaPurge(late_freed + 1900, kDelay, false);
    EXPECT_FALSE(committed(late)) << "free for the whole delay, yet not purged";
    for (void* p : blocks) ferry_free(p);
  }).join();
}

// Many one-slice pages of `size`, emptied a moment ago: their slices are
// free and committed, and young (freed within kEagerWindowMs) unless the
// test was slow (then `too_slow` says how long it took since it began).
// One block stays in each segment (`kept`), so that no segment empties and
// goes back to its arena (which decommits it whole, outside the purge).
// Called on a thread of its own, with a class no other test here uses.
struct FreedPages {
  std::vector<void*> kept;
  std::vector<uintptr_t> starts;  // the pages' first bytes
  size_t free_dirty = 0;          // of their slices, free and committed
  uint64_t last_freed = 0;        // the latest of their stamps
  uint64_t too_slow = 0;          // ms since the test began, if half the window or more
};
void FreeManyOneSlicePages(size_t size, size_t pages, FreedPages* out) {
  const uint64_t began = OsMonotonicMs();
  ArenaPurge(began, 0, /*urgent=*/true);  // nothing free and committed before
  std::vector<void*> blocks;
  while (out->starts.size() < pages + 1) {
    void* p = ferry_malloc(size);
    ASSERT_NE(p, nullptr);
    blocks.push_back(p);
    const uintptr_t start = PageOf(SegmentOf(reinterpret_cast<uintptr_t>(p)), reinterpret_cast<uintptr_t>(p))->start;
    if (out->starts.empty() || out->starts.back() != start) out->starts.push_back(start);
  }
  std::set<Segment*> kept_segments;
  for (void* p : blocks) {
    if (kept_segments.insert(SegmentOf(reinterpret_cast<uintptr_t>(p))).second) {
      out->kept.push_back(p);
    } else {
      ferry_free(p);
    }
  }
  for (uintptr_t start : out->starts) {
    Segment* segment = SegmentOf(start);
    const size_t slice = (start - reinterpret_cast<uintptr_t>(segment)) / kSliceSize;
    const uint64_t bit = uint64_t{1} << slice;
    if ((segment->used_slices.load() & bit) != 0 || (segment->dirty_slices.load() & bit) == 0) continue;
    ++out->free_dirty;
    out->last_freed = std::max(out->last_freed, segment->freed_ms[slice].load());
  }
  if (out->last_freed >= began + kEagerWindowMs / 2) out->too_slow = out->last_freed - began;
}

// Slices freed within kEagerWindowMs go back at most kEagerBytesPerRun a
// run, so that a program that frees and takes back much memory is not made
// to fault it all in again at every run; older ones all go.
TEST(Purge, RecentlyFreedSlicesGoBackWithinTheBudgetOfARun) {
  std::thread([] {
    constexpr size_t kSize = 1664;  // one-slice pages; no other test here uses it
    // Several segments' worth, and well past the budget: the budget is one
    // for the whole run, across segments, and a page or segment kept back
    // (a block left in each segment, the class's last page) must not leave
    // too few free slices to test it.
    constexpr size_t kPages = std::max(kEagerBytesPerRun / kSliceSize * 2, 4 * kSlicesPerSegment);
    FreedPages freed;
    FreeManyOneSlicePages(kSize, kPages, &freed);
    if (HasFatalFailure()) return;
    ASSERT_GT(freed.free_dirty * kSliceSize, kEagerBytesPerRun + kSliceSize)
        << "the emptied pages did not go back to their segments: the test measures nothing";
    if (freed.too_slow != 0) {
      for (void* p : freed.kept) ferry_free(p);
      GTEST_SKIP() << "the test took " << freed.too_slow << " ms: some slices are past the window";
    }
    EXPECT_EQ(ArenaPurge(freed.last_freed, 0, false), kEagerBytesPerRun)
        << "slices freed a moment ago went back past the run's budget";
    EXPECT_EQ(ArenaPurge(freed.last_freed + kEagerWindowMs, 0, false),
              (freed.free_dirty * kSliceSize) - kEagerBytesPerRun)
        << "slices free for the whole window must all go back";
    for (void* p : freed.kept) ferry_free(p);
  }).join();
}

// Young slices that no claim needed since the last run are a surplus (a
// peak of the program's need for pages left them): past the budget, half
// of the fewest there were go back at each run. Claims lower that count;
// frees do not raise it until the next run; old slices, which go anyway,
// are not part of it; slices within FERRY_PURGE_DELAY_MS stay.
TEST(Purge, HalfTheYoungSlicesNoClaimNeededSinceTheLastRunGoBackPastTheBudget) {
  std::thread([] {
    constexpr size_t kSize = 960;  // one-slice pages; no other test here uses it
    constexpr size_t kBudget = kEagerBytesPerRun / kSliceSize;  // slices
    constexpr size_t kPages = std::max(kBudget * 8, 4 * kSlicesPerSegment);
    FreedPages freed;
    FreeManyOneSlicePages(kSize, kPages, &freed);
    if (HasFatalFailure()) return;
    ASSERT_GT(freed.free_dirty, kBudget * 6)
        << "the emptied pages did not go back to their segments: the test measures nothing";
    if (freed.too_slow != 0) {
      for (void* p : freed.kept) ferry_free(p);
      GTEST_SKIP() << "the test took " << freed.too_slow << " ms: some slices are past the window";
    }
    // Every slice here is young at `now`; nothing below allocates, so the
    // only claims between the runs are the test's own.
    const uint64_t now = freed.last_freed;
    const auto purge = [&](uint64_t delay_ms = 0) { return ArenaPurge(now, delay_ms, false) / kSliceSize; };
    EXPECT_EQ(purge(), kBudget) << "slices freed since the last run went back past the budget";
    const size_t after_first = FreeDirtySlicesForTest();
    EXPECT_EQ(purge(), kBudget + after_first / 2)
        << after_first << " free committed slices that no claim took since the last run: half should go";
    const size_t before_claims = FreeDirtySlicesForTest();
    ASSERT_EQ(before_claims, after_first - kBudget - after_first / 2);
    // Claims take some and give them back, stamped as freed a window ago:
    // the count that matters is the fewest there were, and of those, the
    // old ones go back anyway (they are not the young ones' budget).
    constexpr size_t kClaimed = 8;
    std::array<std::pair<Segment*, int>, kClaimed> claimed{};
    size_t taken = 0;
    for (uintptr_t start : freed.starts) {
      if (taken == kClaimed) break;
      Segment* segment = SegmentOf(start);
      const int slice = static_cast<int>((start - reinterpret_cast<uintptr_t>(segment)) / kSliceSize);
      if ((segment->dirty_slices.load() >> slice & 1) == 0) continue;
      bool was_clean = true;
      if (TryTakeSlices(segment, slice, 1, &was_clean) && !was_clean) claimed[taken++] = {segment, slice};
    }
    ASSERT_EQ(taken, kClaimed);
    ASSERT_GE(now, kEagerWindowMs);
    for (const auto& [segment, slice] : claimed) {
      FreeSlices(segment, static_cast<size_t>(slice), 1, now - kEagerWindowMs);
      NoteDirtySlicesFreed(1);
    }
    ASSERT_EQ(FreeDirtySlicesForTest(), before_claims);
    const size_t young_unneeded = before_claims - 2 * kClaimed;
    ASSERT_GE(before_claims - kClaimed, kBudget + young_unneeded / 2) << "too few slices left to tell";
    EXPECT_EQ(purge(), kClaimed + kBudget + young_unneeded / 2)
        << "claims took " << kClaimed << " of " << before_claims
        << " slices between the runs, then gave them back as old ones";
    // Within the delay, young or not, a slice stays.
    const size_t within_delay = FreeDirtySlicesForTest();
    EXPECT_EQ(purge(/*delay_ms=*/1000), 0u) << "slices within FERRY_PURGE_DELAY_MS went back";
    EXPECT_EQ(ArenaPurge(now + kEagerWindowMs, 0, false) / kSliceSize, within_delay)
        << "slices free for the whole window must all go back";
    for (void* p : freed.kept) ferry_free(p);
  }).join();
}

// Segments on `heap`'s list with nothing but their header in use, read
// under the list's lock (the owner may be anywhere but in it).
size_t EmptySegmentsOf(Heap* heap) {
  SpinLockHolder hold(&heap->segments_lock);
  size_t count = 0;
  for (Segment* segment = heap->segments; segment != nullptr; segment = segment->heap_next) {
    if (segment->used_slices.load() == 1) ++count;
  }
  return count;
}

// A thread allocates four segments' worth and sleeps; another thread frees
// it all, page by page (each page's blocks come back in one push and free
// the page). The owner never frees a page itself, so only the housekeeping
// can give those segments back: not while they have been empty for less
// than EmptySegmentKeepMs, all of them once they have.
TEST(Purge, SegmentsAnotherThreadEmptiedGoBackWhileTheirOwnerSleeps) {
  constexpr size_t kSize = 7168;  // one-slice pages; no other test here uses it
  std::vector<void*> blocks;
  blocks.reserve(1 << 14);  // so that the owner does not grow it
  Heap* owner_heap = nullptr;
  std::latch allocated(1), done(1);
  std::thread owner([&] {
    auto own_segments = [] {
      size_t count = 0;
      SpinLockHolder hold(&tl_heap->segments_lock);
      for (Segment* s = tl_heap->segments; s != nullptr; s = s->heap_next) ++count;
      return count;
    };
    // The heap this thread took over may come with the spare its last
    // owner left it (AbandonHeap), which stays: given back first.
    ferry_free(ferry_malloc(64));
    ferry_collect();
    const size_t first = own_segments();
    while (own_segments() < first + 4 && blocks.size() < blocks.capacity()) blocks.push_back(ferry_malloc(kSize));
    owner_heap = tl_heap;
    allocated.count_down();
    done.wait();
  });
  allocated.wait();
  const size_t empty_before = EmptySegmentsOf(owner_heap);
  std::thread([&] {
    auto page_of = [](void* p) {
      return PageOf(SegmentOf(reinterpret_cast<uintptr_t>(p)), reinterpret_cast<uintptr_t>(p));
    };
    for (size_t k = 0; k < blocks.size(); ++k) {
      ferry_free(blocks[k]);
      if (k + 1 == blocks.size() || page_of(blocks[k + 1]) != page_of(blocks[k])) ferry_flush();
    }
  }).join();
  const uint64_t emptied = OsMonotonicMs();
  const size_t empty_after_frees = EmptySegmentsOf(owner_heap);
  ASSERT_GE(empty_after_frees, empty_before + 3) << "the frees did not empty the segments: the test measures nothing";
  ferry_stats_t before, after;
  ferry_stats_get(&before);
  const uint64_t delay = CurrentOptions().purge_delay_ms;  // FERRY_PURGE_DELAY_MS
  ArenaPurge(emptied, delay, false);
  ReleaseIdleEmptySegments(emptied, false);
  EXPECT_EQ(EmptySegmentsOf(owner_heap), empty_after_frees) << "segments emptied a moment ago went back";
  const uint64_t later = emptied + EmptySegmentKeepMs(delay);
  ArenaPurge(later, delay, false);
  ReleaseIdleEmptySegments(later, false);
  ferry_stats_get(&after);
  EXPECT_EQ(EmptySegmentsOf(owner_heap), 0u) << "empty segments stayed on a sleeping owner's list";
  EXPECT_GE(after.segments_released - before.segments_released, empty_after_frees);
  done.count_down();
  owner.join();
}


// OS pages of [p, p + n) that are resident.
size_t ResidentPages(const void* p, size_t n) {
  const size_t page = 4096;
  const uintptr_t first = reinterpret_cast<uintptr_t>(p) & ~(page - 1);
  const size_t count = (reinterpret_cast<uintptr_t>(p) + n - first + page - 1) / page;
  std::vector<unsigned char> residency(count);
  if (mincore(reinterpret_cast<void*>(first), count * page, residency.data()) != 0) return SIZE_MAX;
  return static_cast<size_t>(std::count_if(residency.begin(), residency.end(), [](unsigned char r) { return r & 1; }));
}

// Resident OS pages of [p + first OS page, p + n): a free block's memory
// past the page that holds its link.
size_t ResidentPastFirstPage(void* p, size_t n) {
  const size_t os_page = OsPageSize();
  const uintptr_t from = AlignUp(reinterpret_cast<uintptr_t>(p) + sizeof(Block), os_page);
  const uintptr_t to = AlignDown(reinterpret_cast<uintptr_t>(p) + n, os_page);
  return to <= from ? 0 : ResidentPages(reinterpret_cast<void*>(from), to - from);
}

// Blocks on `page`'s free list (each link checked).
size_t FreeListLength(Page* page) {
  size_t count = 0;
  for (Block* b = page->free; b != nullptr && count <= page->capacity; b = DecodeNext(b->next_encoded)) {
    if (!IsInCarvedRange(page, b)) return SIZE_MAX;
    ++count;
  }
  return count;
}

// Five 256 KiB blocks share a page (of 20 slices); the thread frees four and
// exits with the fifth live. The four kept their memory resident for good before
// 2026-12-07 (only wholly free pages went back): now a collect gives back
// all but each one's first OS page, and their links still make the list.
// Each FreeBlocks test has a size class of its own, and leaves nothing of
// it behind (flushed, collected): a thread of another test that takes over
// its heap then finds no page of the class.
TEST(FreeBlocks, LargeFreeBlocksOfAnExitedThreadGiveTheirMemoryBackOnceCollected) {
  constexpr size_t kSize = 256 << 10;
  void* blocks[5] = {};
  std::thread([&] {
    for (void*& p : blocks) {
      p = ferry_malloc(kSize);
      ASSERT_NE(p, nullptr);
      memset(p, 7, kSize);
    }
    for (int k = 1; k < 5; ++k) ferry_free(blocks[k]);
  }).join();
  Page* page = PageOfBlock(blocks[0]);
  for (void* p : blocks) ASSERT_EQ(PageOfBlock(p), page) << "the test needs the five blocks on one page";
  for (int k = 1; k < 5; ++k) EXPECT_GT(ResidentPastFirstPage(blocks[k], kSize), kSize / OsPageSize() / 2) << "freed, not yet given back";
  ferry_collect();
  for (int k = 1; k < 5; ++k) EXPECT_EQ(ResidentPastFirstPage(blocks[k], kSize), 0u) << "block " << k;
  // The four, and any block carved but never handed out.
  EXPECT_EQ(FreeListLength(page), size_t{page->capacity} - 1) << "the links on the blocks' first pages";
  EXPECT_EQ(page->used, 1u);
  const auto* kept = static_cast<const unsigned char*>(blocks[0]);
  for (size_t i = 0; i < kSize; i += 4096) ASSERT_EQ(kept[i], 7) << "the live block lost its bytes at " << i;
  EXPECT_EQ(kept[kSize - 1], 7);
  ferry_free(blocks[0]);
  ferry_flush();
  ferry_collect();
}

// A free block's link written after its free to point into the middle of
// a live block: the give-back stops there rather than madvise part of the
// live block (whose bytes would read as zeros after).
TEST(FreeBlocks, AFreeListLinkIntoALiveBlockStopsTheGiveBack) {
  constexpr size_t kSize = 120 << 10;
  std::thread([] {
    void* blocks[3];
    for (void*& p : blocks) {
      p = ferry_malloc(kSize);
      ASSERT_NE(p, nullptr);
      memset(p, 7, kSize);
    }
    Page* page = PageOfBlock(blocks[0]);
    for (void* p : blocks) ASSERT_EQ(PageOfBlock(p), page);
    ferry_free(blocks[0]);
    ASSERT_EQ(page->free, blocks[0]);
    auto* freed = static_cast<Block*>(blocks[0]);
    const uintptr_t link = freed->next_encoded;
    freed->next_encoded = EncodeNext(reinterpret_cast<Block*>(static_cast<char*>(blocks[1]) + 3 * 4096));
    ferry_collect();
    const auto* live = static_cast<const unsigned char*>(blocks[1]);
    for (size_t i = 0; i < kSize; i += 4096) ASSERT_EQ(live[i], 7) << "the live block lost its bytes at " << i;
    freed->next_encoded = link;  // put right before the list is used again
    ferry_free(blocks[1]);
    ferry_free(blocks[2]);
    ferry_collect();
  }).join();
}

// Blocks that come back to a heap nobody owns after its first give-back
// give theirs back at a later collect, those of a page that was full (they
// came in through the owner's inbox) too: until a review's fix the same
// day, a collect looked only at what it adopted from pages' returned
// lists, and what the inbox drain had put on the lists first stayed
// resident (3 runs of 16 of a /tmp program kept 12-48 MiB more).
TEST(FreeBlocks, BlocksReturnedToAFullPageOfAnExitedThreadGiveTheirMemoryBackToo) {
  constexpr size_t kSize = 176 << 10;
  std::vector<void*> blocks;
  std::thread([&] {
    // Until a block lands on a second page: the first is full then.
    for (;;) {
      void* p = ferry_malloc(kSize);
      ASSERT_NE(p, nullptr);
      memset(p, 7, kSize);
      blocks.push_back(p);
      if (PageOfBlock(p) != PageOfBlock(blocks[0])) break;
    }
  }).join();
  Page* page = PageOfBlock(blocks[0]);
  ASSERT_GE(blocks.size(), 3u);
  ferry_collect();  // the heap's first give-back: nothing free yet
  ASSERT_EQ(page->in_full, 1) << "the test needs the first page full";
  ASSERT_EQ(page->free, nullptr);
  const size_t freed = blocks.size() - 2;  // all of the first page's but one
  for (size_t k = 1; k <= freed; ++k) {
    ASSERT_EQ(PageOfBlock(blocks[k]), page);
    ferry_free(blocks[k]);
  }
  ferry_flush();
  for (size_t k = 1; k <= freed; ++k) EXPECT_GT(ResidentPastFirstPage(blocks[k], kSize), kSize / OsPageSize() / 2) << "not resident";
  ferry_collect();
  for (size_t k = 1; k <= freed; ++k) EXPECT_EQ(ResidentPastFirstPage(blocks[k], kSize), 0u) << "block " << k;
  EXPECT_EQ(page->used, 1u);
  ferry_free(blocks[0]);
  ferry_free(blocks.back());
  ferry_flush();
  ferry_collect();
}

// A heap given back, taken over by a new thread, and left again: the first
// collect of its second spell without an owner walks every list again. The
// new owner took the blocks the first walk had given back, wrote them and
// freed them again, the one that was the list's head at that walk (its
// stop, Page::purged_free) last, so that it heads the list again. Were the
// second spell's collect to walk only up to that stop, as later collects
// of one spell do, it would stop at once and leave every one of them
// resident (PushAbandoned clears Heap::free_blocks_given_back for that).
TEST(FreeBlocks, AHeapTakenOverAndLeftAgainGivesBackWhatItsSecondOwnerFreed) {
  constexpr size_t kSize = 136 << 10;  // a page of four
  constexpr int kBlocks = 4;
  void* blocks[kBlocks] = {};
  Heap* left = nullptr;
  std::thread([&] {
    for (void*& p : blocks) {
      p = ferry_malloc(kSize);
      ASSERT_NE(p, nullptr);
      memset(p, 7, kSize);
    }
    for (int k = 1; k < kBlocks; ++k) ferry_free(blocks[k]);
    left = tl_heap;
  }).join();
  Page* page = PageOfBlock(blocks[0]);
  for (void* p : blocks) ASSERT_EQ(PageOfBlock(p), page) << "the test needs the blocks on one page";
  ferry_collect();  // the first spell's give-back
  for (int k = 1; k < kBlocks; ++k) ASSERT_EQ(ResidentPastFirstPage(blocks[k], kSize), 0u) << "block " << k;
  ASSERT_NE(page->purged_free, nullptr);

  // New threads take over abandoned heaps, one each; those that get
  // another heap than `left` hold it until the end, so that the next
  // thread takes the next one.
  std::latch release(1);
  std::vector<std::thread> holders;
  std::vector<void*> rewritten;
  enum Outcome { kPending, kTookLeft, kTookAnother, kListNotAsLeft };
  Outcome taken = kPending;
  for (int tries = 0; tries < 512 && taken == kPending; ++tries) {
    std::atomic<Outcome> outcome{kPending};  // the thread's last touch of it is its store
    holders.emplace_back([&outcome, &release, &rewritten, left, page] {
      ferry_free(ferry_malloc(16));  // makes or takes this thread's heap
      if (tl_heap != left) {
        outcome.store(kTookAnother, std::memory_order_release);
        release.wait();
        return;
      }
      const Block* stop = page->purged_free;
      // Every free block of the page, the stop among them, written: the
      // page's other three, all it has (four blocks, all carved).
      const size_t count = FreeListLength(page);
      if (count != kBlocks - 1) {
        outcome.store(kListNotAsLeft, std::memory_order_release);
        return;
      }
      for (size_t k = 0; k < count; ++k) {
        void* p = ferry_malloc(kSize);
        memset(p, 9, kSize);
        rewritten.push_back(p);
      }
      // Freed back so that the old stop heads the list again.
      const auto at = std::find(rewritten.begin(), rewritten.end(), stop);
      if (at != rewritten.end()) std::iter_swap(at, rewritten.end() - 1);
      for (void* p : rewritten) ferry_free(p);
      outcome.store(kTookLeft, std::memory_order_release);
    });
    Outcome seen;
    while ((seen = outcome.load(std::memory_order_acquire)) == kPending) std::this_thread::yield();
    if (seen != kTookAnother) taken = seen;
  }
  release.count_down();
  for (std::thread& holder : holders) holder.join();
  ASSERT_NE(taken, kPending) << "no new thread took over the heap the first thread left";
  ASSERT_EQ(taken, kTookLeft) << "the heap's page did not have its three free blocks on its list";
  ASSERT_EQ(rewritten.size(), size_t{kBlocks - 1});
  ASSERT_EQ(page->heap, left);
  ASSERT_EQ(page->free, rewritten.back()) << "the old stop does not head the list";
  ASSERT_EQ(static_cast<const Block*>(rewritten.back()), page->purged_free);
  for (void* p : rewritten) ASSERT_GT(ResidentPastFirstPage(p, kSize), kSize / OsPageSize() / 2);

  ferry_collect();  // the second spell's: every list walked again
  for (size_t k = 0; k < rewritten.size(); ++k) {
    EXPECT_EQ(ResidentPastFirstPage(rewritten[k], kSize), 0u) << "block " << k << " of the second owner's";
  }
  EXPECT_EQ(FreeListLength(page), rewritten.size());
  const auto* kept = static_cast<const unsigned char*>(blocks[0]);
  for (size_t i = 0; i < kSize; i += 4096) ASSERT_EQ(kept[i], 7) << "the live block lost its bytes at " << i;
  ferry_free(blocks[0]);
  ferry_flush();
  ferry_collect();
}

// A thread that lives keeps its free blocks' memory, whoever collects: its
// free lists are its own, and it may allocate from them at any moment. Its
// own ferry_collect (malloc_trim) gives it back.
TEST(FreeBlocks, ALiveThreadsLargeFreeBlocksStayUntilItCollectsItself) {
  constexpr size_t kSize = 352 << 10;  // five blocks to a page of 28 slices
  void* blocks[5] = {};
  std::latch freed(1), others_collected(1), collected(1), looked(1);
  std::thread owner([&] {
    for (void*& p : blocks) {
      p = ferry_malloc(kSize);
      memset(p, 7, kSize);
    }
    for (int k = 1; k < 5; ++k) ferry_free(blocks[k]);
    freed.count_down();
    others_collected.wait();
    ferry_collect();
    collected.count_down();
    looked.wait();
    // Taken again, as many as were freed: whichever blocks they are, they
    // take writes, and the list holds together.
    void* again[4];
    for (void*& p : again) {
      p = ferry_malloc(kSize);
      ASSERT_NE(p, nullptr);
      memset(p, 9, kSize);
    }
    for (void* p : again) ferry_free(p);
    ferry_free(blocks[0]);
    ferry_collect();
  });
  freed.wait();
  ferry_collect();  // this thread's, and the housekeeping's (urgent)
  for (int k = 1; k < 5; ++k) EXPECT_GT(ResidentPastFirstPage(blocks[k], kSize), kSize / OsPageSize() / 2) << "another thread gave back a live heap's blocks";
  others_collected.count_down();
  collected.wait();
  for (int k = 1; k < 5; ++k) {
    EXPECT_EQ(ResidentPastFirstPage(blocks[k], kSize), 0u) << "block " << k;
    EXPECT_EQ(static_cast<const unsigned char*>(blocks[k])[kSize - 1], 0) << "block " << k << " was not given back";
  }
  looked.count_down();
  owner.join();
}

// Allocates blocks of `size` on the calling thread until one lands on
// another page than the first: the first page's blocks go to *blocks (each
// set to `fill` where that is not -1), and the block on the next page is
// returned (nullptr if an allocation failed). The allocation that went on
// to the next page marked the first full.
void* FillOnePage(size_t size, std::vector<void*>* blocks, int fill = -1) {
  void* p = ferry_malloc(size);
  Page* first = p == nullptr ? nullptr : PageOfBlock(p);
  while (p != nullptr && PageOfBlock(p) == first) {
    if (fill != -1) memset(p, fill, size);
    blocks->push_back(p);
    p = ferry_malloc(size);
  }
  return p;
}

// An owner that allocated and went idle never takes the chains other
// threads' frees return to its pages. The housekeeping takes each chain
// that waited FERRY_PURGE_DELAY_MS (250 ms at least) unchanged, gives back
// its blocks' memory past their first OS page, and puts it back as it was.
// One page was full when its blocks came back (both marks on its word),
// the other is on the owner's queue (no mark).
TEST(FreeBlocks, ChainsWaitingOnAnIdleOwnersPagesGiveTheirMemoryBack) {
  constexpr size_t kSize = 184 << 10;
  std::vector<void*> blocks;
  Page* full = nullptr;
  Page* queued = nullptr;
  std::vector<void*> freed;
  std::latch built(1), looked(1);
  size_t zeros_again = 0, taken_again = 0;
  std::thread owner([&] {
    void* p = FillOnePage(kSize, &blocks, 7);
    full = blocks.empty() ? nullptr : PageOfBlock(blocks.front());
    queued = p == nullptr ? nullptr : PageOfBlock(p);
    for (int k = 0; k < 3 && p != nullptr && PageOfBlock(p) == queued; ++k) {
      memset(p, 7, kSize);
      blocks.push_back(p);
      if (k < 2) p = ferry_malloc(kSize);
    }
    built.count_down();
    looked.wait();
    // Until every freed block came back: the pages' chains, adopted now,
    // hand out the blocks whose memory went back (zeros past the first OS
    // page), after any block the queued page carved and never handed out.
    std::vector<void*> again;
    for (size_t k = 0; k < 64 && taken_again < freed.size(); ++k) {
      void* q = ferry_malloc(kSize);
      if (q == nullptr) break;
      if (std::find(freed.begin(), freed.end(), q) != freed.end()) {
        ++taken_again;
        // The block's first OS page past its link (4 or 64 KiB pages).
        const uintptr_t given_back = AlignUp(reinterpret_cast<uintptr_t>(q) + sizeof(Block), OsPageSize());
        zeros_again += *reinterpret_cast<const unsigned char*>(given_back) == 0;
      }
      memset(q, 9, kSize);
      again.push_back(q);
    }
    for (void* q : again) ferry_free(q);
  });
  built.wait();
  std::vector<void*> kept;
  const bool shaped = full != nullptr && queued != nullptr && full->in_full == 1 && queued->in_full == 0 &&
                full->reserved >= 3 && PageOfBlock(blocks.back()) == queued;
  if (shaped) {
    for (void* p : blocks) {
      const bool first_of_page = p == blocks.front() || (PageOfBlock(p) != full && kept.size() == 1);
      (first_of_page ? kept : freed).push_back(p);
    }
    for (void* p : freed) ferry_free(p);
    ferry_flush();
  }
  // The delay is FERRY_PURGE_DELAY_MS (unset here), kEagerWindowMs at
  // least. The clocks the looks are given stay within it of now: a look
  // stamps the chains it sees first anywhere with its clock.
  const bool delay_unset = getenv("FERRY_PURGE_DELAY_MS") == nullptr;
  if (shaped && delay_unset) {
    const uintptr_t full_word = full->returned.load();
    const uintptr_t queued_word = queued->returned.load();
    EXPECT_EQ(full_word & (kReturnedFull | kReturnedPosted), kReturnedFull | kReturnedPosted);
    EXPECT_EQ(ReturnedCount(full_word), full->reserved - 1u);
    EXPECT_EQ(queued_word & (kReturnedFull | kReturnedPosted), 0u);
    EXPECT_EQ(ReturnedCount(queued_word), 2u);
    for (void* p : freed) EXPECT_GT(ResidentPastFirstPage(p, kSize), kSize / OsPageSize() / 2) << "freed, not yet given back";
    const uint64_t now = OsMonotonicMs();
    EXPECT_TRUE(GiveBackWaitingChains(now, /*urgent=*/false)) << "first seen: the chains wait";
    GiveBackWaitingChains(now + kEagerWindowMs - 1, /*urgent=*/false);
    for (void* p : freed) EXPECT_GT(ResidentPastFirstPage(p, kSize), kSize / OsPageSize() / 2) << "given back before its time";
    GiveBackWaitingChains(now + kEagerWindowMs, /*urgent=*/false);
    for (void* p : freed) EXPECT_EQ(ResidentPastFirstPage(p, kSize), 0u) << "still resident after the delay";
    // Put back as it was taken: the same first block, count and marks.
    EXPECT_EQ(full->returned.load(), full_word);
    EXPECT_EQ(queued->returned.load(), queued_word);
    GiveBackWaitingChains(now + kEagerWindowMs, /*urgent=*/true);
    EXPECT_EQ(full->returned.load(), full_word) << "given back already: passed by, even by an urgent look";
    EXPECT_EQ(queued->returned.load(), queued_word);
    for (void* p : kept) {
      const auto* bytes = static_cast<const unsigned char*>(p);
      size_t lost = 0;
      for (size_t i = 0; i < kSize; i += 4096) lost += bytes[i] != 7;
      EXPECT_EQ(lost, 0u) << "a live block lost its bytes";
      EXPECT_EQ(bytes[kSize - 1], 7);
    }
  }
  looked.count_down();
  owner.join();
  ASSERT_TRUE(delay_unset) << "the test assumes FERRY_PURGE_DELAY_MS unset";
  ASSERT_TRUE(shaped) << "the test needs a full page and a queued one of three blocks";
  EXPECT_EQ(taken_again, freed.size()) << "freed blocks the owner's 64 allocations did not take again";
  EXPECT_EQ(zeros_again, taken_again) << "blocks handed out again were not given back";
  for (void* p : kept) ferry_free(p);
  ferry_flush();
  ferry_collect();
}

// The push that brings a full page's last blocks back in its first push (so
// the page was never posted) frees the page. Until it has, the page's word
// carries the posted mark alone, as a completed page's on an inbox does: a
// look in that moment must not take the chain, which the pusher drops with
// the page.
std::atomic<Page*> g_completing_page{nullptr};
std::atomic<size_t> g_completions_seen{0}, g_completing_chain_taken{0};

TEST(FreeBlocks, ALookAsAPushBringsAFullPagesLastBlocksBackTakesNothing) {
  constexpr size_t kSize = 96 << 10;
  g_completions_seen = 0;
  g_completing_chain_taken = 0;
  std::vector<void*> blocks;
  Page* full = nullptr;
  std::latch built(1), done(1);
  std::thread owner([&] {
    void* p = FillOnePage(kSize, &blocks);
    full = blocks.empty() ? nullptr : PageOfBlock(blocks.front());
    blocks.push_back(p);  // on the next page, and stays
    built.count_down();
    done.wait();
  });
  built.wait();
  const bool shaped = full != nullptr && full->in_full == 1 && blocks.back() != nullptr &&
                      size_t{full->reserved} * kSize < (size_t{1} << 20);
  if (shaped) {
    g_completing_page = full;
    g_chain_away_hook_for_test.store(+[](Page* page) {
      if (page == g_completing_page.load()) g_completing_chain_taken.fetch_add(1);
    });
    g_return_chain_complete_hook_for_test.store(+[](Page* page) {
      if (page != g_completing_page.load()) return;
      g_completions_seen.fetch_add(1);
      GiveBackWaitingChains(OsMonotonicMs(), /*urgent=*/true);
    });
    // One batch (under FERRY_BATCH_BYTES), sorted into one chain per page.
    for (size_t k = 0; k + 1 < blocks.size(); ++k) ferry_free(blocks[k]);
    ferry_flush();
    g_return_chain_complete_hook_for_test.store(nullptr);
    g_chain_away_hook_for_test.store(nullptr);
  }
  done.count_down();
  owner.join();
  ASSERT_TRUE(shaped) << "the test needs a full page of less than 1 MiB of blocks";
  EXPECT_EQ(g_completions_seen.load(), 1u) << "the page's blocks did not come back in one push";
  EXPECT_EQ(g_completing_chain_taken.load(), 0u) << "a look took the chain of a page its pusher was freeing";
  ferry_free(blocks.back());
  ferry_flush();
  ferry_collect();
}

// ferry_flush's promise holds while the housekeeping has a chain away: an
// owner that finds nothing for a large class waits for the chain to come
// back and takes its blocks, rather than carve new ones. The owner
// allocates here just while the full page's chain is away (the hook).
std::latch* g_owner_may_allocate = nullptr;
std::atomic<Page*> g_page_of_the_chain_away{nullptr};
std::atomic<bool> g_chain_away_hook_ran{false};
std::atomic<size_t> g_owner_allocations{0};

TEST(FreeBlocks, AnOwnerShortOfAClassWaitsForItsChainAwayRatherThanCarve) {
  constexpr size_t kSize = 64 << 10;
  std::vector<void*> blocks;
  Page* full = nullptr;
  Page* current = nullptr;
  std::vector<void*> freed;
  std::latch built(1), may_allocate(1);
  size_t handed_again = 0;
  g_owner_allocations = 0;
  std::thread owner([&] {
    void* p = FillOnePage(kSize, &blocks);
    full = blocks.empty() ? nullptr : PageOfBlock(blocks.front());
    blocks.push_back(p);
    current = p == nullptr ? nullptr : PageOfBlock(p);
    built.count_down();
    may_allocate.wait();
    // What the current page has left, then the freed blocks: each of them,
    // before any new page.
    const size_t n = freed.size() + (current == nullptr ? 0 : size_t{current->reserved} - current->used);
    std::vector<void*> again;
    for (; g_owner_allocations < n; ++g_owner_allocations) {
      void* q = ferry_malloc(kSize);
      if (q == nullptr) break;
      handed_again += std::find(freed.begin(), freed.end(), q) != freed.end();
      again.push_back(q);
    }
    for (void* q : again) ferry_free(q);
  });
  built.wait();
  const bool shaped = current != nullptr && full->in_full == 1 && full->reserved >= 3;
  size_t taken = 0;
  g_chain_away_hook_ran = false;
  if (shaped) {
    for (size_t k = 1; k + 1 < blocks.size(); ++k) freed.push_back(blocks[k]);  // the full page's but its first
    for (void* p : freed) ferry_free(p);
    ferry_flush();
    g_owner_may_allocate = &may_allocate;
    g_page_of_the_chain_away = full;
    g_chain_away_hook_for_test.store(+[](Page* page) {
      if (page != g_page_of_the_chain_away.load() || g_chain_away_hook_ran.exchange(true)) return;
      g_owner_may_allocate->count_down();
      // Until the owner has started (however long it takes to be
      // scheduled), and a while more: it uses up the blocks its page has
      // listed within that and looks for more, which waits (1 s at most).
      // Had it stayed descheduled all that while, it would find the chain
      // back and pass without testing the wait.
      for (int k = 0; k < 10'000 && g_owner_allocations.load() == 0; ++k) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
    });
    GiveBackWaitingChains(OsMonotonicMs(), /*urgent=*/true, &taken);
    g_chain_away_hook_for_test.store(nullptr);
  }
  if (!g_chain_away_hook_ran.load()) may_allocate.count_down();  // nothing taken: fails below
  owner.join();
  ASSERT_TRUE(shaped) << "the test needs a full page of three blocks or more";
  ASSERT_TRUE(g_chain_away_hook_ran.load()) << "the look did not take the full page's chain (" << taken << " taken)";
  EXPECT_EQ(handed_again, freed.size()) << "the owner carved new blocks while its returned ones were away ("
                                        << g_owner_allocations.load() << " allocations)";
  ferry_free(blocks.front());
  ferry_free(blocks.back());
  ferry_flush();
  ferry_collect();
}

// Only chains of a thread's own pages hold it up: a thread short of a large
// class while the housekeeping has another heap's chain away takes a new
// block at once. Until 2026-12-08 one count for the process made it wait
// for whatever chain was away, up to 1 s (kChainsAwayWaitMaxMs, heap.cc):
// the hook below holds the chain until the other thread is done, so its
// allocation would have taken that second.
std::latch* g_other_thread_may_allocate = nullptr;
std::atomic<bool> g_other_thread_done{false};

TEST(FreeBlocks, AnotherHeapsChainAwayDoesNotHoldUpAThreadShortOfTheClass) {
  constexpr size_t kSize = 44 << 10;  // class 44 KiB: eight blocks to a page of six slices
  void* blocks[2] = {};
  std::latch built(1), may_allocate(1), finish(1);
  std::thread sleeper([&] {
    for (void*& p : blocks) p = ferry_malloc(kSize);
    built.count_down();
    finish.wait();  // alive: its heap is nobody else's to take over
  });
  built.wait();
  const bool shaped = blocks[0] != nullptr && blocks[1] != nullptr && PageOfBlock(blocks[0]) == PageOfBlock(blocks[1]);
  uint64_t allocation_ms = 0;
  bool short_of_the_class = false;
  g_other_thread_done = false;
  std::thread other([&] {
    ferry_free(ferry_malloc(16));  // its heap: new, or one an exited thread left
    short_of_the_class = tl_heap->queues[SizeClassOf(kSize)].head == nullptr;
    may_allocate.wait();
    const uint64_t start_ms = OsMonotonicMs();
    void* p = ferry_malloc(kSize);  // a heap of its own, no page of the class
    allocation_ms = OsMonotonicMs() - start_ms;
    ferry_free(p);
    g_other_thread_done = true;
  });
  size_t taken = 0;
  g_chain_away_hook_ran = false;
  if (shaped) {
    ferry_free(blocks[1]);  // a return to the sleeper's queued page
    ferry_flush();
    g_other_thread_may_allocate = &may_allocate;
    g_page_of_the_chain_away = PageOfBlock(blocks[0]);
    g_chain_away_hook_for_test.store(+[](Page* page) {
      if (page != g_page_of_the_chain_away.load() || g_chain_away_hook_ran.exchange(true)) return;
      g_other_thread_may_allocate->count_down();
      for (int k = 0; k < 10'000 && !g_other_thread_done.load(); ++k) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    });
    GiveBackWaitingChains(OsMonotonicMs(), /*urgent=*/true, &taken);
    g_chain_away_hook_for_test.store(nullptr);
  }
  if (!g_chain_away_hook_ran.load()) may_allocate.count_down();  // nothing taken: fails below
  other.join();
  finish.count_down();
  sleeper.join();
  const bool hook_ran = g_chain_away_hook_ran.exchange(false);
  ASSERT_TRUE(shaped) << "the test needs two blocks on one page";
  ASSERT_TRUE(short_of_the_class) << "the other thread's heap had a page of the class: its allocation may not wait";
  ASSERT_TRUE(hook_ran) << "the look did not take the chain (" << taken << " taken)";
  EXPECT_LT(allocation_ms, 900u) << "the thread waited for another heap's chain away";
  ferry_free(blocks[0]);
  ferry_flush();
  ferry_collect();
}

// The take and the push back against everything else that moves a chain:
// two owners allocate blocks of three classes of 32 KiB and more and free
// some themselves; a third thread frees the rest (returns to their pages,
// full ones too); a fourth takes every waiting chain, over and over
// (urgent looks). Each block carries its tag on every OS page, checked
// before each free: a block given back while it was out reads zeros.
TEST(FreeBlocks, ChainsTakenWhileOwnersAllocateAndAnotherThreadFreesKeepEveryLiveBlock) {
  constexpr size_t kSizes[] = {40 << 10, 72 << 10, 136 << 10};
  const size_t os_page = OsPageSize();
  struct Out {
    void* p;
    size_t n;
    uint64_t tag;
  };
  auto fill = [os_page](const Out& b) {
    for (size_t i = 0; i < b.n; i += os_page) memcpy(static_cast<char*>(b.p) + i, &b.tag, sizeof b.tag);
  };
  auto intact = [os_page](const Out& b) {
    for (size_t i = 0; i < b.n; i += os_page) {
      if (memcmp(static_cast<const char*>(b.p) + i, &b.tag, sizeof b.tag) != 0) return false;
    }
    return true;
  };
  std::mutex handed_lock;
  std::vector<Out> handed;
  std::atomic<bool> stop{false};
  std::atomic<size_t> torn{0}, looks{0}, taken{0}, owner_frees{0}, other_frees{0};
  ferry_stats_t before;
  ferry_stats_get(&before);
  std::vector<std::thread> threads;
  for (uint64_t t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      std::vector<Out> mine;
      std::mt19937_64 rng(t + 1);
      for (uint64_t i = 1; !stop.load(std::memory_order_relaxed); ++i) {
        const size_t n = kSizes[rng() % std::size(kSizes)];
        Out b{ferry_malloc(n), n, (t + 1) << 56 | i};
        if (b.p == nullptr) continue;
        fill(b);
        if (rng() % 2 == 0) {
          std::lock_guard<std::mutex> hold(handed_lock);
          handed.push_back(b);
        } else {
          mine.push_back(b);
        }
        if (mine.size() > 24) {
          const size_t k = rng() % mine.size();
          if (!intact(mine[k])) torn.fetch_add(1);
          ferry_free(mine[k].p);
          owner_frees.fetch_add(1, std::memory_order_relaxed);
          mine[k] = mine.back();
          mine.pop_back();
        }
      }
      for (const Out& b : mine) {
        if (!intact(b)) torn.fetch_add(1);
        ferry_free(b.p);
      }
    });
  }
  threads.emplace_back([&] {
    std::vector<Out> take;
    for (size_t round = 0;; ++round) {
      const bool last = stop.load();
      {
        std::lock_guard<std::mutex> hold(handed_lock);
        take.swap(handed);
      }
      for (const Out& b : take) {
        if (!intact(b)) torn.fetch_add(1);
        ferry_free(b.p);
      }
      other_frees.fetch_add(take.size(), std::memory_order_relaxed);
      take.clear();
      if (round % 8 == 0 || last) ferry_flush();
      if (last) break;
      std::this_thread::yield();
    }
  });
  threads.emplace_back([&] {
    while (!stop.load(std::memory_order_relaxed)) {
      size_t chains = 0;
      GiveBackWaitingChains(OsMonotonicMs(), /*urgent=*/true, &chains);
      taken.fetch_add(chains, std::memory_order_relaxed);
      looks.fetch_add(1, std::memory_order_relaxed);
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  stop.store(true);
  for (auto& thread : threads) thread.join();
  ferry_flush();
  ferry_stats_t after;
  ferry_stats_get(&after);
  printf("%zu looks took %zu chains; %zu owner frees, %zu frees by the other thread, %.1f MiB given back\n",
         looks.load(), taken.load(), owner_frees.load(), other_frees.load(),
         (after.bytes_decommitted - before.bytes_decommitted) / 1048576.0);
  EXPECT_EQ(torn.load(), 0u) << "blocks lost their tags while they were out";
  EXPECT_GT(other_frees.load(), 1000u);
  EXPECT_GT(taken.load(), 10u) << "few chains were taken: the test tested little";
  ferry_collect();
}

// A heap's spare is empty on purpose: the housekeeping keeps it, and the
// purge does not count it as a segment to give back (else every heap with
// a spare would have the housekeeping walk every heap's list at every run).
TEST(Purge, AHeapsSpareStaysAndDoesNotCallForTheHousekeeping) {
  std::thread([] {
    const uint64_t now = OsMonotonicMs();
    ArenaPurge(now, 0, /*urgent=*/true);  // every empty segment but the spares goes
    ReleaseIdleEmptySegments(now, /*urgent=*/true);
    // Blocks until one has a segment of this heap to itself: freed, that
    // segment empties, and the heap keeps a segment it emptied as its spare.
    std::vector<void*> blocks;
    bool alone = false;
    for (int k = 0; k < 64 && !alone; ++k) {
      void* p = ferry_aligned_alloc(kLargeMax, kLargeMax);
      ASSERT_NE(p, nullptr);
      blocks.push_back(p);
      Segment* segment = SegmentOf(reinterpret_cast<uintptr_t>(p));
      alone = segment->heap.load() == tl_heap && segment->used_slices.load() == (1 | SliceRun(32, 32));
    }
    ASSERT_TRUE(alone) << "no segment of this heap held only one block";
    for (void* p : blocks) ferry_free(p);
    // The other segments the blocks emptied (a fresh heap's, where this
    // test runs first in its process, or early under --gtest_shuffle) go;
    // which one stays as the spare depends on the order they emptied in.
    const uint64_t freed = OsMonotonicMs();
    ArenaPurge(freed, 0, /*urgent=*/true);
    ReleaseIdleEmptySegments(freed, /*urgent=*/true);
    Segment* spare;
    {
      SpinLockHolder hold(&tl_heap->segments_lock);
      spare = tl_heap->spare;
    }
    ASSERT_NE(spare, nullptr) << "no emptied segment became the spare";
    EXPECT_TRUE(spare->is_spare.load());
    EXPECT_EQ(spare->used_slices.load(), 1u);
    g_idle_empty_segments.store(false);
    const uint64_t later = OsMonotonicMs() + 60'000;
    ArenaPurge(later, 0, false);
    EXPECT_FALSE(g_idle_empty_segments.load()) << "the purge counted a spare (or another heap's empty segment)";
    ReleaseIdleEmptySegments(later, /*urgent=*/true);
    SpinLockHolder hold(&tl_heap->segments_lock);
    EXPECT_EQ(tl_heap->spare, spare);
    EXPECT_EQ(spare->heap.load(), tl_heap) << "the housekeeping gave the spare back";
  }).join();
}

// The purge lowers a segment's writable mark while threads take slices
// past it and free them again: every slice a thread holds stays writable
// (a lowering over a slice another thread holds faults at its next write,
// as it did when the purge was made to skip its check that the slices are
// free), and raises after many lowerings still take the mark to the top.
TEST(Purge, MarksComeDownWhileThreadsTakeAndFreeSlicesAboveThem) {
  Segment* segment = ArenaAllocateSegment(SliceRun(1, 1));
  ASSERT_NE(segment, nullptr);
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> taken{0};
  std::atomic<uint64_t> lowered{0};
  const auto base = reinterpret_cast<uintptr_t>(segment);
  auto taker = [&](uint64_t rng) {
    // By time and takes, not attempts: while the purge holds the slices
    // (preempted, on a loaded machine), every attempt fails at once.
    const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(1500);
    for (int took = 0; took < 50000 && std::chrono::steady_clock::now() < end;) {
      rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
      const size_t count = 1 + rng % 2;
      const size_t start = 8 + (rng >> 8) % (kSlicesPerSegment - 8 - count + 1);
      if (!TryTakeSlices(segment, static_cast<int>(start), count)) {
        sched_yield();
        continue;
      }
      ++took;
      // Faults where the mark says writable and the slices are not.
      for (size_t k = start * kSliceSize; k < (start + count) * kSliceSize; k += 4096) {
        reinterpret_cast<volatile char*>(base)[k] = 1;
      }
      taken.fetch_add(1, std::memory_order_relaxed);
      FreeSlices(segment, start, count, 0);  // freed long ago: due at once
      if (took % 32 == 0) std::this_thread::yield();  // all free now and then: the purge's chance
    }
  };
  std::thread purger([&] {
    while (!stop.load()) {
      const uint8_t mark = segment->writable_slices.load();
      ArenaPurge(OsMonotonicMs(), 0, /*urgent=*/true);
      if (segment->writable_slices.load() < mark) lowered.fetch_add(1, std::memory_order_relaxed);
    }
  });
  std::thread a(taker, 0x9e3779b97f4a7c15ULL), b(taker, 0xd1b54a32d192ed03ULL);
  a.join();
  b.join();
  stop.store(true);
  purger.join();
  EXPECT_GT(taken.load(), 1000u);
  EXPECT_GT(lowered.load(), 0u) << "the mark never came down: the test measures nothing";
  // Every slice can be taken and written again, the mark raised to the top.
  for (size_t k = 2; k < kSlicesPerSegment; ++k) {
    if (!TryTakeSlices(segment, static_cast<int>(k), 1)) continue;  // another heap's page, rarely
    reinterpret_cast<volatile char*>(base)[k * kSliceSize] = 1;
    FreeSlices(segment, k, 1, 0);
  }
  EXPECT_EQ(segment->writable_slices.load(), kSlicesPerSegment);
  FreeSlices(segment, 1, 1, 0);
  uint64_t expected = 1;
  ASSERT_TRUE(segment->used_slices.compare_exchange_strong(expected, kSegmentDetached));
  ArenaReleaseSegment(segment);
}

// The housekeeping gives back empty segments of heaps whose owners are
// claiming slices, releasing pages and resizing large blocks in place at the
// same moment: the list lock and the CASes on used_slices keep every block
// intact (contents checked) and every segment on one list. Blocks of
// several slices, so that segments fill and empty quickly; each resized
// once by realloc, half of them (again) by the other owner, which frees them;
// a third made by calloc and checked to read as zeros.
TEST(Purge, SegmentsGoBackWhileTheirOwnersClaimReleaseAndResizeSlices) {
  constexpr int kRounds = 30;
  constexpr int kBlocks = 48;
  std::atomic<bool> stop{false};
  std::mutex handoff_lock;
  std::vector<std::pair<void*, size_t>> handoff[2];
  auto fill = [](void* p, size_t n, uint8_t tag) { std::memset(p, tag, n); };
  auto check = [](void* p, size_t n, uint8_t tag) {
    const auto* bytes = static_cast<const uint8_t*>(p);
    for (size_t i = 0; i < n; i += 509) {
      if (bytes[i] != tag) return false;
    }
    return bytes[n - 1] == tag;
  };
  std::atomic<int> corrupt{0};
  auto random_size = [](uint64_t& rng) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (size_t{64} << 10) + rng % (size_t{1984} << 10);  // 64 KiB - 2 MiB
  };
  // realloc to another size: the kept part is checked, the whole refilled.
  auto resize = [&](std::pair<void*, size_t>& block, size_t m) {
    auto [p, n] = block;
    void* q = ferry_realloc(p, m);
    ASSERT_NE(q, nullptr);
    if (!check(q, std::min(n, m), static_cast<uint8_t>(n))) ++corrupt;
    fill(q, m, static_cast<uint8_t>(m));
    block = {q, m};
  };
  auto owner = [&](int self) {
    uint64_t rng = 0x9e3779b97f4a7c15ULL * (self + 1);
    for (int round = 0; round < kRounds; ++round) {
      std::vector<std::pair<void*, size_t>> mine;
      for (int k = 0; k < kBlocks; ++k) {
        const size_t n = random_size(rng);
        // A third by calloc: large ones on slices the purge just gave back
        // are not written, so they must read as zeros.
        const bool zeroed = k % 3 == 0;
        void* p = zeroed ? ferry_calloc(1, n) : ferry_malloc(n);
        ASSERT_NE(p, nullptr);
        if (zeroed && !check(p, n, 0)) ++corrupt;
        fill(p, n, static_cast<uint8_t>(n));
        mine.emplace_back(p, n);
      }
      for (auto& block : mine) resize(block, random_size(rng));
      {
        std::lock_guard<std::mutex> hold(handoff_lock);
        for (int k = 0; k < kBlocks / 2; ++k) handoff[1 - self].push_back(mine[k]);
      }
      for (int k = kBlocks / 2; k < kBlocks; ++k) {
        if (!check(mine[k].first, mine[k].second, static_cast<uint8_t>(mine[k].second))) ++corrupt;
        ferry_free(mine[k].first);
      }
      std::vector<std::pair<void*, size_t>> theirs;
      {
        std::lock_guard<std::mutex> hold(handoff_lock);
        theirs.swap(handoff[self]);
      }
      for (auto& block : theirs) {
        resize(block, random_size(rng));
        if (!check(block.first, block.second, static_cast<uint8_t>(block.second))) ++corrupt;
        ferry_free(block.first);
      }
      ferry_flush();
    }
  };
  ferry_stats_t before;
  ferry_stats_get(&before);
  std::thread collector([&] {
    while (!stop.load()) ferry_collect();  // urgent: every empty segment is due
  });
  std::thread a(owner, 0), b(owner, 1);
  a.join();
  b.join();
  stop.store(true);
  collector.join();
  for (auto& list : handoff) {
    for (auto& [p, n] : list) {
      if (!check(p, n, static_cast<uint8_t>(n))) ++corrupt;
      ferry_free(p);
    }
  }
  EXPECT_EQ(corrupt.load(), 0);
  // And the segments did go back meanwhile: what the test is about.
  ferry_stats_t after;
  ferry_stats_get(&after);
  EXPECT_GT(after.segments_released, before.segments_released);
}

// A large block grows into the free slices after it and gives back the
// slices past its new end, keeping its address and contents; when another
// heap holds the next slice, it moves (copied) instead.
TEST(LargeBlocks, ReallocResizesALargeBlockInItsOwnSlices) {
  SKIP_UNDER_ADDRESS_SPACE_LIMIT();
  std::thread([] {
    constexpr size_t kSlice = kSliceSize;
    auto pattern = [](size_t i) { return static_cast<uint8_t>(i * 131 + (i >> 12)); };
    auto fill = [&](void* p, size_t from, size_t to) {
      for (size_t i = from; i < to; ++i) static_cast<uint8_t*>(p)[i] = pattern(i);
    };
    auto intact = [&](const void* p, size_t n) {
      for (size_t i = 0; i < n; ++i) {
        if (static_cast<const uint8_t*>(p)[i] != pattern(i)) return false;
      }
      return true;
    };
    // Aligned to half a segment, a 2 MiB block spans slices 32-63 of its
    // segment: after it shrinks, the slices it gave back are the only ones
    // it can grow into, and nothing else here takes slices meanwhile (no
    // pool in this binary).
    void* p = ferry_aligned_alloc(kLargeMax, kLargeMax);
    ASSERT_NE(p, nullptr);
    Segment* segment = SegmentOf(reinterpret_cast<uintptr_t>(p));
    const size_t first = (reinterpret_cast<uintptr_t>(p) - reinterpret_cast<uintptr_t>(segment)) / kSlice;
    ASSERT_EQ(first, 32u);
    fill(p, 0, kLargeMax);
    size_t size = 600 << 10;
    ASSERT_EQ(ferry_realloc(p, size), p) << "a large block moved to shrink";
    EXPECT_EQ(ferry_usable_size(p), 10 * kSlice);
    EXPECT_EQ(segment->used_slices.load() & SliceRun(32, 32), SliceRun(32, 10))
        << "the slices past the new end did not go back";
    EXPECT_TRUE(intact(p, size));
    for (size_t n = 700 << 10; n <= kLargeMax; n += (100 << 10) + 16) {
      ASSERT_EQ(ferry_realloc(p, n), p) << "a large block with free slices after it moved to grow to " << n;
      ASSERT_GE(ferry_usable_size(p), n);
      ASSERT_TRUE(intact(p, size)) << size << " -> " << n;
      fill(p, size, n);
      size = n;
    }
    const size_t spanned = (size + kSlice - 1) / kSlice;
    EXPECT_EQ(segment->used_slices.load() & SliceRun(32, 32), SliceRun(32, spanned));
    // Every slice of the block finds the block: a free of the new end's
    // neighbourhood is judged against the whole block.
    const uintptr_t last_slice = reinterpret_cast<uintptr_t>(p) + (spanned - 1) * kSlice;
    EXPECT_EQ(PageOf(segment, last_slice)->start, reinterpret_cast<uintptr_t>(p));
    // Another heap takes the slice after the block: the block moves.
    ASSERT_EQ(ferry_realloc(p, 600 << 10), p);
    size = 600 << 10;
    ASSERT_TRUE(TryTakeSlices(segment, 42, 1));
    void* q = ferry_realloc(p, 1 << 20);
    ASSERT_NE(q, nullptr);
    EXPECT_NE(q, p) << "grew over a slice another heap holds";
    EXPECT_TRUE(intact(q, size));
    FreeSlices(segment, 42, 1, OsMonotonicMs());
    NoteDirtySlicesFreed(1);  // as its claim took it off
    ferry_free(q);
  }).join();
}

// A heap's claims skip the full segments at the front of its list
// (Heap::claim_from), so that a growing heap does not walk them all for
// each new page. A slice freed in one of them by another thread's frees
// tells the heap to look from the head again: the next new page takes it,
// oldest segment first, rather than a slice of a newer segment.
TEST(PageLists, ASliceFreedInASkippedFullSegmentIsTakenFirst) {
  constexpr size_t kSize = 1280;  // one-slice pages; no other test here uses it
  constexpr size_t kFreshSize = 1536;  // nor this: the new page
  std::vector<void*> blocks;
  blocks.reserve(1 << 16);  // so that the owner does not grow it
  Heap* heap = nullptr;
  std::latch filled(1), freed(1);
  std::atomic<uintptr_t> fresh_page{0};
  std::thread owner([&] {
    // Two full segments, and a newer one with free slices after them.
    auto filled_enough = [] {
      size_t full = 0;
      SpinLockHolder hold(&tl_heap->segments_lock);
      for (Segment* s = tl_heap->segments; s != nullptr; s = s->heap_next) {
        if (s->used_slices.load() == kSegmentFull) ++full;
      }
      return full >= 2 && tl_heap->segments_tail->used_slices.load() != kSegmentFull;
    };
    while (!filled_enough() && blocks.size() < blocks.capacity()) blocks.push_back(ferry_malloc(kSize));
    heap = tl_heap;
    filled.count_down();
    freed.wait();
    void* fresh = ferry_malloc(kFreshSize);
    fresh_page.store(PageOf(SegmentOf(reinterpret_cast<uintptr_t>(fresh)), reinterpret_cast<uintptr_t>(fresh))->start);
    ferry_free(fresh);
  });
  filled.wait();
  // The first full segment on the owner's list, and a page of it that
  // holds only blocks of `blocks`.
  Segment* full = nullptr;
  {
    SpinLockHolder hold(&heap->segments_lock);
    for (Segment* s = heap->segments; s != nullptr && full == nullptr; s = s->heap_next) {
      if (s->used_slices.load() == kSegmentFull) full = s;
    }
    ASSERT_NE(full, nullptr) << "the owner filled no segment";
    ASSERT_NE(heap->claim_from, full) << "the claims did not skip the full segment: the test measures nothing";
  }
  auto page_of = [](void* p) {
    return PageOf(SegmentOf(reinterpret_cast<uintptr_t>(p)), reinterpret_cast<uintptr_t>(p));
  };
  Page* victim = nullptr;
  for (void* p : blocks) {
    Page* page = page_of(p);
    if (SegmentOf(page->start) == full && page->heap == heap && page->kind == PageKind::kSmall &&
        page->block_size == kSize && page->used == page->reserved) {
      victim = page;
      break;
    }
  }
  ASSERT_NE(victim, nullptr) << "no full page of the class in the full segment";
  const uintptr_t victim_start = victim->start;
  std::vector<void*> victims;
  for (void*& p : blocks) {
    if (page_of(p) == victim) victims.push_back(std::exchange(p, nullptr));
  }
  FreeElsewhereAndFlush(victims, 0, victims.size());  // one batch: the page goes back to its segment
  const uint64_t bit = uint64_t{1} << ((victim_start - reinterpret_cast<uintptr_t>(full)) / kSliceSize);
  ASSERT_EQ(full->used_slices.load() & bit, 0u) << "the emptied page did not go back to its segment";
  ArenaPurge(OsMonotonicMs(), 0, /*urgent=*/true);  // every free slice clean: no committed one wins
  freed.count_down();
  owner.join();
  EXPECT_EQ(fresh_page.load(), victim_start)
      << "the new page did not take the slice freed in the oldest full segment";
  std::thread([&] {
    for (void* p : blocks) ferry_free(p);
  }).join();
}

bool AllZero(const void* p, size_t n) {
  const auto* bytes = static_cast<const unsigned char*>(p);
  return std::all_of(bytes, bytes + n, [](unsigned char b) { return b == 0; });
}

// calloc of a large size does not write slices that read as zeros already
// (never touched, or decommitted): they become resident only as the program
// uses them. Slices that held a block before are cleared.
TEST(LargeBlocks, CallocWritesOnlySlicesThatMayHoldOldData) {
  SKIP_UNDER_ADDRESS_SPACE_LIMIT();
  std::thread([] {
    constexpr size_t kSize = 1536 << 10;  // 24 slices
    ArenaPurge(OsMonotonicMs(), 0, /*urgent=*/true);  // every free slice decommitted
    void* p = ferry_calloc(1, kSize);
    ASSERT_NE(p, nullptr);
    // With transparent huge pages always on, the first write may bring in 2 MiB.
    std::FILE* thp = std::fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    char mode[128] = {};
    if (thp != nullptr) {
      if (std::fgets(mode, sizeof(mode), thp) == nullptr) mode[0] = 0;
      std::fclose(thp);
    }
    if (std::strstr(mode, "[always]") == nullptr) {
      EXPECT_LE(ResidentPages(p, kSize), 1u) << "calloc wrote slices that read as zeros already";
    }
    EXPECT_TRUE(AllZero(p, kSize));
    std::memset(p, 0xab, kSize);
    ferry_free(p);
    // The same slices again, holding the old block's bytes (no pool purges
    // in this binary): cleared.
    void* q = ferry_calloc(1, kSize);
    ASSERT_EQ(q, p) << "calloc did not reuse the freed slices: the test measures nothing";
    EXPECT_TRUE(AllZero(q, kSize)) << "calloc handed out a reused block uncleared";
    ferry_free(q);
  }).join();
}

// realloc gives a block appended to (grown by less than a quarter) into or
// within the large range half as much again as it asked for, up to
// kLargeMax, so that the next steps grow in place: untouched slices cost no
// resident memory. A large block that realloc copies into a huge one goes
// back decommitted, all but the first OS page, which its free writes: a
// buffer grown by eighths from 64 B to 2.1 MiB left 7.7 MiB resident, the
// last 2 MiB of it its old run waiting for a purge that a single-threaded
// program never runs.
TEST(LargeBlocks, AnAppendedLargeBlockGetsRoomAndGoesBackDecommittedWhenItTurnsHuge) {
  SKIP_UNDER_ADDRESS_SPACE_LIMIT();
  std::thread([] {
    size_t size = 480 << 10;  // the largest medium class holds it
    void* p = ferry_malloc(size);
    ASSERT_NE(p, nullptr);
    std::memset(p, 0x5a, size);
    size_t grown = size + size / 8;
    p = ferry_realloc(p, grown);
    ASSERT_NE(p, nullptr);
    EXPECT_GE(ferry_usable_size(p), grown + grown / 2) << "an append into the large range got no room";
    EXPECT_EQ(static_cast<unsigned char*>(p)[size - 1], 0x5a);
    ferry_free(p);

    size = kLargeMax - (64 << 10);
    p = ferry_malloc(size);
    ASSERT_NE(p, nullptr);
    std::memset(p, 0x77, size);
    ASSERT_GE(ResidentPages(p, size), size / 4096);
    const int64_t dirty_hint = g_free_dirty_slices_hint.load();
    void* q = ferry_realloc(p, size + size / 8);
    ASSERT_NE(q, nullptr);
    // The purge's hint of free slices that may be committed: the first slice
    // only (it counted all 31, for good where no purge runs).
    EXPECT_EQ(g_free_dirty_slices_hint.load() - dirty_hint, 1);
    ASSERT_GT(ferry_usable_size(q), kLargeMax);
    EXPECT_EQ(static_cast<unsigned char*>(q)[size - 1], 0x77);
    // The old run is free now, and nothing here takes slices meanwhile (no
    // pool in this binary).
    EXPECT_LE(ResidentPages(p, size), 1u) << "the outgrown large block's slices stayed resident";
    ferry_free(q);
  }).join();
}

// Memory the program locked (mlock, mlockall) cannot be decommitted: the
// kernel refuses MADV_DONTNEED. Such slices keep their bytes, so they must
// stay dirty, and calloc must clear a block made of them.
TEST(LargeBlocks, CallocClearsSlicesTheKernelWouldNotDecommit) {
  SKIP_UNDER_ADDRESS_SPACE_LIMIT();
  std::thread([] {
    constexpr size_t kSize = 1 << 20;  // 16 slices
    void* p = ferry_calloc(1, kSize);
    ASSERT_NE(p, nullptr);
    if (mlock(p, kSize) != 0) {
      ferry_free(p);
      GTEST_SKIP() << "mlock refused (RLIMIT_MEMLOCK)";
    }
    std::memset(p, 0xab, kSize);
    ferry_free(p);  // still locked: the program never unlocked it
    ArenaPurge(OsMonotonicMs(), 0, /*urgent=*/true);  // tries to decommit it
    void* q = ferry_calloc(1, kSize);
    ASSERT_NE(q, nullptr);
    const bool overlaps = static_cast<char*>(q) < static_cast<char*>(p) + kSize &&
                          static_cast<char*>(p) < static_cast<char*>(q) + kSize;
    EXPECT_TRUE(AllZero(q, kSize)) << "calloc handed out locked memory uncleared";
    ferry_free(q);
    munlock(p, kSize);
    if (!overlaps) GTEST_SKIP() << "calloc did not reuse the locked slices: the test measured nothing";
  }).join();
}

TEST(PageLists, EmptyPagesGoBackToTheirSegment) {
  ferry_stats_t before, after;
  ferry_stats_get(&before);
  std::vector<void*> blocks;
  for (int k = 0; k < 4000; ++k) blocks.push_back(ferry_malloc(256));
  for (void* p : blocks) ferry_free(p);
  ferry_collect();
  ferry_stats_get(&after);
  EXPECT_GT(after.pages_released, before.pages_released);
}

// bytes_decommitted counts memory once: a released segment adds the slices
// that could still hold memory and its header, not 4 MiB whatever the purge
// had already given back (a pool's counter showed more decommitted than was
// ever committed).
TEST(Segment, ReleasingASegmentCountsOnlyWhatWasStillCommitted) {
  const uint64_t taken = SliceRun(1, 3);
  Segment* segment = ArenaAllocateSegment(taken);
  ASSERT_NE(segment, nullptr);
  ASSERT_EQ(segment->dirty_slices.load() & ~uint64_t{1}, taken);
  ferry_stats_t before, purged, released;
  ferry_stats_get(&before);
  ASSERT_TRUE(SegmentDecommitSlices(segment, 1, 1));  // as a purge of slice 1 would
  ferry_stats_get(&purged);
  EXPECT_EQ(purged.bytes_decommitted - before.bytes_decommitted, kSliceSize);
  uint64_t expected = 1 | taken;
  ASSERT_TRUE(segment->used_slices.compare_exchange_strong(expected, kSegmentDetached));
  ArenaReleaseSegment(segment);
  ferry_stats_get(&released);
  EXPECT_EQ(released.bytes_decommitted - purged.bytes_decommitted, 3 * kSliceSize)
      << "slices 2 and 3, and the header";
}

// Gives back a segment these tests took from the arena, every free slice
// taken again first, as the owner's detach would find it.
void TakeEverySliceAndRelease(Segment* segment) {
  for (size_t k = 1; k < kSlicesPerSegment; ++k) {
    if ((segment->used_slices.load() >> k & 1) == 0) {
      ASSERT_TRUE(TryTakeSlices(segment, static_cast<int>(k), 1));
    }
  }
  // Every slice taken is writable (they are made so as they are taken).
  static_cast<volatile char*>(static_cast<void*>(segment))[kSegmentSize - 1] = 1;
  uint64_t expected = kSegmentFull;
  ASSERT_TRUE(segment->used_slices.compare_exchange_strong(expected, kSegmentDetached));
  ArenaReleaseSegment(segment);
}

// The room index (segment.h, NoteSlicesFreed): a free raises a segment's
// bound, a claim leaves it (a bound may be high), a search lowers it to the
// run the segment has.
TEST(RoomIndex, AFreeRaisesTheBoundThatASearchLowers) {
  SKIP_UNDER_ADDRESS_SPACE_LIMIT();
  Segment* segment = ArenaAllocateSegment(SliceRun(1, 63));  // every slice taken
  ASSERT_NE(segment, nullptr);
  EXPECT_EQ(SegmentRoom(segment), 0u);
  FreeSlices(segment, 10, 20, OsMonotonicMs());
  EXPECT_EQ(SegmentRoom(segment), 20u);
  ASSERT_TRUE(TryTakeSlices(segment, 10, 15));
  EXPECT_EQ(SegmentRoom(segment), 20u) << "a claim lowered the bound";
  EXPECT_EQ(LowerSegmentRoomForTest(segment), 5u);
  EXPECT_EQ(SegmentRoom(segment), 5u);
  FreeSlices(segment, 12, 3, OsMonotonicMs());
  EXPECT_EQ(SegmentRoom(segment), 5u) << "two runs of 3 and 5 slices";
  FreeSlices(segment, 15, 10, OsMonotonicMs());
  EXPECT_EQ(SegmentRoom(segment), 18u);
  TakeEverySliceAndRelease(segment);
}

// Segments that fill a whole arena of their own, every slice taken: its
// bound is theirs alone. Released by the destructor.
class OwnArena {
 public:
  OwnArena() {
    // Hand-out is lowest first: within a few arenas' worth one fills.
    std::vector<Segment*> taken;
    for (int k = 0; k < 64 * static_cast<int>(kSegmentsPerArena) && segments_.empty(); ++k) {
      Segment* segment = ArenaAllocateSegment(SliceRun(1, 63));
      if (segment == nullptr) break;
      taken.push_back(segment);
      const uint32_t arena = segment->room_index / kSegmentsPerArena;
      size_t in_arena = 0;
      for (Segment* s : taken) in_arena += s->room_index / kSegmentsPerArena == arena ? 1 : 0;
      if (in_arena == kSegmentsPerArena) {
        for (Segment* s : taken) {
          if (s->room_index / kSegmentsPerArena == arena) segments_.push_back(s);
        }
      }
    }
    for (Segment* s : taken) {
      if (std::find(segments_.begin(), segments_.end(), s) == segments_.end()) TakeEverySliceAndRelease(s);
    }
  }
  ~OwnArena() {
    for (Segment* s : segments_) TakeEverySliceAndRelease(s);
  }
  OwnArena(const OwnArena&) = delete;
  OwnArena& operator=(const OwnArena&) = delete;
  Segment* first() const { return segments_.empty() ? nullptr : segments_.front(); }

 private:
  std::vector<Segment*> segments_;
};

// A search lowering the bounds (the segment's, then its arena's) while
// another thread frees slices in the segment: neither bound ends below the
// run the free made (the search looks again after each store; the free
// looks at each bound after its clear). Without the segment's second look
// two runs here had 6 and 90 rounds end low (a helper's runs: 9 of 13
// failed); without the arena's, 5225 and 6280.
TEST(RoomIndex, BoundsNeverEndBelowARunFreedWhileASearchLowersThem) {
  SKIP_UNDER_ADDRESS_SPACE_LIMIT();
  OwnArena arena;
  Segment* segment = arena.first();
  ASSERT_NE(segment, nullptr) << "no arena of its own";
  LowerRoomForTest(segment);  // a reused arena's bound may still be high
  ASSERT_EQ(ArenaRoomForTest(segment), 0u);
  constexpr int kRounds = 50000;
  std::atomic<int> go{0}, done{0};
  std::atomic<bool> stop{false};
  std::thread freer([&] {
    for (int round = 1; round <= kRounds; ++round) {
      while (go.load(std::memory_order_acquire) != round) {
        if (stop.load(std::memory_order_relaxed)) return;
        std::this_thread::yield();
      }
      FreeSlices(segment, 10, 20, 0);
      done.store(round, std::memory_order_release);
    }
  });
  std::minstd_rand rng(7);
  int segment_low = 0, arena_low = 0;
  bool retaken = true;
  for (int round = 1; round <= kRounds && retaken; ++round) {
    const int delay = static_cast<int>(rng() % 512);
    go.store(round, std::memory_order_release);
    for (int k = 0; k < delay; ++k) asm volatile("" ::: "memory");
    LowerRoomForTest(segment);
    while (done.load(std::memory_order_acquire) != round) std::this_thread::yield();
    if (SegmentRoom(segment) < 20) ++segment_low;
    if (ArenaRoomForTest(segment) < 20) ++arena_low;
    retaken = TryTakeSlices(segment, 10, 20);
    LowerRoomForTest(segment);
  }
  stop.store(true);
  freer.join();
  ASSERT_TRUE(retaken) << "the freed slices were taken by someone else";
  EXPECT_EQ(segment_low, 0) << "rounds whose segment bound ended below the 20 slices freed";
  EXPECT_EQ(arena_low, 0) << "rounds whose arena bound ended below the 20 slices freed";
  EXPECT_EQ(ArenaRoomForTest(segment), 0u);
}

// A search for committed slices that finds no run as long as asked (here
// 63, a whole segment's) does not keep a shorter claim from the committed
// run that is there: until 2026-12-04 it set the hint to zero, and the
// next claim of 15 slices took clean memory (a review's program: RSS +1048
// KiB where +88 before the claim of 32).
TEST(RoomIndex, AFruitlessSearchForALongRunLeavesShorterOnesToBeFound) {
  SKIP_UNDER_ADDRESS_SPACE_LIMIT();
  OwnArena arena;
  Segment* segment = arena.first();
  ASSERT_NE(segment, nullptr) << "no arena of its own";
  FreeSlices(segment, 1, 62, OsMonotonicMs());  // committed: taken, never purged
  NoteDirtySlicesFreed(62);
  int start = -1;
  Segment* found = ArenaTakeSlicesAnywhere(/*claim=*/nullptr, 63, 1, /*dirty_only=*/true, &start);
  if (found != nullptr) {  // a whole committed segment elsewhere: give it back
    FreeSlices(found, static_cast<size_t>(start), 63, OsMonotonicMs());
    NoteDirtySlicesFreed(63);
    GTEST_SKIP() << "another segment had 63 committed free slices";
  }
  found = ArenaTakeSlicesAnywhere(/*claim=*/nullptr, 15, 1, /*dirty_only=*/true, &start);
  ASSERT_NE(found, nullptr) << "the 62 committed slices were not searched for";
  FreeSlices(found, static_cast<size_t>(start), 15, OsMonotonicMs());
  NoteDirtySlicesFreed(15);
}

// A committed slice that another heap's page released a moment ago is left
// to that heap (it is likely in its thread's cache, about to be taken
// again: two threads that remade their pages every round traded them at
// half speed); that heap takes it at once, and any heap once it has been
// free a few ms, or at once where the heap's thread has exited. A search that passed such slices does
// not mark runs that long as absent.
TEST(RoomIndex, AnotherHeapsCommittedSlicesAreTakenOnlyOnceTheyHaveSettled) {
  SKIP_UNDER_ADDRESS_SPACE_LIMIT();
  OwnArena arena;
  Segment* segment = arena.first();
  ASSERT_NE(segment, nullptr) << "no arena of its own";
  // No other segment's free slices committed, so that every search below
  // that finds a run finds this test's (earlier tests leave runs that
  // settle while this one runs, in some orders under --gtest_shuffle).
  ArenaPurge(OsMonotonicMs(), 0, /*urgent=*/true);
  // The heap whose page held the slices: this thread's (owned by it).
  ferry_free(ferry_malloc(16));
  const Heap* owner = tl_heap;
  ASSERT_TRUE(HeapHasOwnerThread(owner));
  constexpr size_t kRun = 40;  // no other segment here has so many committed free slices
  // Freed "now" (a stamp ahead of the clock reads as freed this instant).
  auto free_run = [&](size_t first, uint64_t stamp) {
    for (size_t k = first; k < first + kRun; ++k) segment->released_by[k].store(owner);
    FreeSlices(segment, first, kRun, stamp);
    NoteDirtySlicesFreed(kRun);
  };
  free_run(1, OsMonotonicMs() + 60'000);
  int start = -1;
  SliceClaim other{nullptr}, own{owner};
  Segment* found = ArenaTakeSlicesAnywhere(&other, kRun, 1, /*dirty_only=*/true, &start);
  if (found != nullptr && found != segment) {
    FreeSlices(found, static_cast<size_t>(start), kRun, OsMonotonicMs());
    NoteDirtySlicesFreed(kRun);
    GTEST_SKIP() << "another segment had " << kRun << " committed free slices";
  }
  EXPECT_EQ(found, nullptr) << "another heap's slices freed this instant were taken";
  found = ArenaTakeSlicesAnywhere(&own, kRun, 1, /*dirty_only=*/true, &start);
  EXPECT_EQ(found, segment) << "the segment's own heap did not take its fresh slices (or the search "
                               "that passed them marked the run absent)";
  if (found == segment) free_run(static_cast<size_t>(start), OsMonotonicMs() - 1000);
  other = SliceClaim{nullptr};  // a clock read now
  found = ArenaTakeSlicesAnywhere(&other, kRun, 1, /*dirty_only=*/true, &start);
  EXPECT_EQ(found, segment) << "another heap's slices free for a second were not taken";
  // Slices an exited thread's heap freed this instant: nobody's cache holds
  // them, so any heap takes them at once.
  const Heap* exited = nullptr;
  std::thread([&] {
    ferry_free(ferry_malloc(16));
    exited = tl_heap;
  }).join();
  ASSERT_FALSE(HeapHasOwnerThread(exited));
  if (found == segment) {
    owner = exited;
    free_run(static_cast<size_t>(start), OsMonotonicMs() + 60'000);
    other = SliceClaim{nullptr};
    found = ArenaTakeSlicesAnywhere(&other, kRun, 1, /*dirty_only=*/true, &start);
    EXPECT_EQ(found, segment) << "slices an exited thread's heap freed this instant were left";
  }
  if (found != nullptr) {
    FreeSlices(found, static_cast<size_t>(start), kRun, OsMonotonicMs());
    NoteDirtySlicesFreed(kRun);
  }
}

// An allocation nested in AllocateSlow before it makes the thread's heap
// (it starts a pending pool first, and pthread_create allocates) makes the
// heap itself; the outer call, which still holds the empty heap, then asks
// again. It must get that heap: a second one replaced the first in
// tl_heap, and the first (often an exited thread's, taken over) was owned
// by nobody and never abandoned, with every block it held.
TEST(Heaps, AThreadAskingForItsHeapAgainGetsTheSameOne) {
  std::thread([] {
    ASSERT_EQ(tl_heap, &g_empty_heap);
    Heap* first = InitThreadHeap();
    ASSERT_NE(first, nullptr);
    ASSERT_NE(first, &g_empty_heap);
    EXPECT_EQ(InitThreadHeap(), first);
    EXPECT_EQ(tl_heap, first);
    ferry_free(ferry_malloc(40));  // the heap works
  }).join();
}

// fork() while another thread holds one of its inboxes' lists (its own pass
// over its emptied pages, played by hand here): in the child, where that
// thread did not come along, the hold is cleared. Left set, every heap of
// the child taking a new page would put that heap's inbox bits back and
// walk its inboxes again, for good.
TEST(Fork, TheChildClearsTheInboxHoldOfAThreadThatDidNotComeAlong) {
#if defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "fork with a live thread under ThreadSanitizer";
#else
  Heap* other = nullptr;
  std::latch made(1), done(1);
  std::thread other_thread([&] {
    ferry_free(ferry_malloc(100));
    other = tl_heap;
    made.count_down();
    done.wait();
  });
  made.wait();
  other->inbox_owner_holding.store(1);
  const pid_t child = fork();
  if (child == 0) _exit(other->inbox_owner_holding.load() == 0 ? 0 : 1);
  ASSERT_GT(child, 0);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  other->inbox_owner_holding.store(0);
  done.count_down();
  other_thread.join();
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "the hold of a thread that did not come along stayed set";
#endif
}


// --- the huge cache (huge.cc) ------------------------------------------------

constexpr size_t kHugeMiB = size_t{1} << 20;

// The mapping of a huge block of n bytes: the header's slice, then the block.
size_t HugeMappingBytes(size_t n) { return kSliceSize + HugeBlockBytes(n); }

ferry_stats_t HugeStats() {
  ferry_stats_t s;
  ferry_stats_get(&s);
  return s;
}

// Whether [p, p + 4096) is mapped: msync fails with ENOMEM on a range
// with no mapping.
bool Mapped(const void* p) {
  void* page = reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(p) & ~uintptr_t{4095});
  return msync(page, 4096, MS_ASYNC) == 0;
}

void EmptyHugeCache() { ReleaseIdleHugeMappings(OsMonotonicMs(), /*urgent=*/true); }

// A freed huge block's mapping, pages and all, holds the next huge block
// that needs as much mapping; calloc's too, cleared (until 2026-12-07 calloc
// took a fresh mapping, every page it touched a fault: 14 times as long
// as glibc for a calloc'd 8 MiB touched here and there, 3000 times).
TEST(HugeCache, AFreedMappingHoldsTheNextBlockOfItsSize) {
  if (kValgrind) GTEST_SKIP() << "no huge cache under memcheck";
  EmptyHugeCache();
  ASSERT_EQ(HugeStats().huge_bytes_cached, 0u);
  const size_t first_size = 5 * kHugeMiB - 100000;
  char* p = static_cast<char*>(ferry_malloc(first_size));
  ASSERT_NE(p, nullptr);
  memset(p, 0x5a, first_size);
  const ferry_stats_t before = HugeStats();
  ferry_free(p);
  const ferry_stats_t freed = HugeStats();
  EXPECT_EQ(freed.huge_frees - before.huge_frees, 1u);
  // 64 KiB of header and the block rounded to 512 KiB (an eighth of 4 MiB),
  // not to whole 4 MiB segments (8 MiB before 2026-12-05).
  EXPECT_EQ(freed.huge_bytes_cached, 5 * kHugeMiB + kSliceSize);
  EXPECT_EQ(HugeMappingBytes(first_size), 5 * kHugeMiB + kSliceSize);
  EXPECT_TRUE(Mapped(p)) << "unmapped at its free";
  // A little larger, the same mapping size: the same mapping, its bytes as
  // they were.
  char* q = static_cast<char*>(ferry_malloc(5 * kHugeMiB));
  ASSERT_EQ(q, p);
  EXPECT_EQ(q[4096], 0x5a) << "the pages were not kept";
  const ferry_stats_t reused = HugeStats();
  EXPECT_EQ(reused.huge_reused - freed.huge_reused, 1u);
  EXPECT_EQ(reused.huge_bytes_cached, 0u);
  EXPECT_EQ(ferry_usable_size(q), 5 * kHugeMiB);
  // calloc takes it too, every byte it asked for cleared.
  memset(q, 0x5b, 5 * kHugeMiB);
  ferry_free(q);
  char* zeroed = static_cast<char*>(ferry_calloc(1, 5 * kHugeMiB - 3));
  ASSERT_EQ(zeroed, p);
  EXPECT_EQ(HugeStats().huge_reused - reused.huge_reused, 1u);
  for (size_t k = 0; k < 5 * kHugeMiB - 3; ++k) ASSERT_EQ(zeroed[k], 0) << "at " << k;
  ferry_free(zeroed);
  // Over 32 MiB: a fresh mapping, zero already, never the waiting one (a
  // big sparse table is resident only where the program touches it). Two
  // blocks held untouched make the cache's cap hold the 40 MiB mapping.
  EmptyHugeCache();
  void* held[2] = {ferry_malloc(128 * kHugeMiB), ferry_malloc(128 * kHugeMiB)};
  ASSERT_TRUE(held[0] != nullptr && held[1] != nullptr);
  char* big = static_cast<char*>(ferry_malloc(40 * kHugeMiB));
  ASSERT_NE(big, nullptr);
  for (size_t k = 0; k < 40 * kHugeMiB; k += 65536) big[k] = 0x5c;
  ferry_free(big);
  ASSERT_EQ(HugeStats().huge_bytes_cached, HugeMappingBytes(40 * kHugeMiB)) << "the test measures nothing";
  const ferry_stats_t before_big = HugeStats();
  char* big_zeroed = static_cast<char*>(ferry_calloc(1, 40 * kHugeMiB));
  ASSERT_NE(big_zeroed, nullptr);
  EXPECT_NE(big_zeroed, big);
  EXPECT_EQ(HugeStats().huge_reused, before_big.huge_reused);
  for (size_t k = 0; k < 40 * kHugeMiB; k += 65536) ASSERT_EQ(big_zeroed[k], 0) << "at " << k;
  ferry_free(big_zeroed);
  ferry_free(held[0]);
  ferry_free(held[1]);
  EmptyHugeCache();
  q = static_cast<char*>(ferry_malloc(5 * kHugeMiB));
  ASSERT_NE(q, nullptr);
  // Still a huge block like any other: freed twice, it is reported.
  ferry_free(q);
  EXPECT_DEATH(ferry_free(q), "double free \\(huge block already free\\)");
  EmptyHugeCache();
}

// A waiting mapping holds a smaller block too, up to half its size, whole
// (the block gets the rest as usable size): a buffer whose size varies
// finds its pages again. A smaller block than that takes the mapping cut
// at the first 4 MiB boundary past it: the rest waits on its own where a
// huge block could use it, else goes back to the OS (before 2026-12-06
// such a block took a fresh mapping while the larger one waited resident:
// `sort -S 16M` peaked at 35 MB, glibc 18). And a block of up to 32 MiB is
// kept whatever its header adds (31 MiB went back at once for a while on
// 2026-12-05: its header made the mapping 32 MiB and 64 KiB).
TEST(HugeCache, AMappingHoldsABlockOfUpToHalfItsSizeWhole) {
  if (kValgrind) GTEST_SKIP() << "no huge cache under memcheck";
  EmptyHugeCache();
  char* big = static_cast<char*>(ferry_malloc(7 * kHugeMiB));
  ASSERT_NE(big, nullptr);
  memset(big, 0x3c, 7 * kHugeMiB);
  ferry_free(big);
  ASSERT_EQ(HugeStats().huge_bytes_cached, HugeMappingBytes(7 * kHugeMiB));
  const ferry_stats_t before = HugeStats();
  char* smaller = static_cast<char*>(ferry_malloc(5 * kHugeMiB));
  ASSERT_EQ(smaller, big) << "a 5 MiB block did not take the 7 MiB mapping";
  EXPECT_EQ(HugeStats().huge_reused - before.huge_reused, 1u);
  EXPECT_EQ(ferry_usable_size(smaller), 7 * kHugeMiB);
  EXPECT_EQ(smaller[7 * kHugeMiB - 1], 0x3c) << "the pages were not kept";
  ferry_free(smaller);
  ASSERT_EQ(HugeStats().huge_bytes_cached, HugeMappingBytes(7 * kHugeMiB));
  const ferry_stats_t before_cut = HugeStats();
  char* much_smaller = static_cast<char*>(ferry_malloc(3 * kHugeMiB));
  ASSERT_EQ(much_smaller, big) << "a block under half the mapping did not take its first 4 MiB";
  EXPECT_EQ(HugeStats().huge_reused - before_cut.huge_reused, 1u);
  EXPECT_EQ(ferry_usable_size(much_smaller), 3 * kHugeMiB);
  EXPECT_EQ(much_smaller[3 * kHugeMiB - 1], 0x3c) << "the pages were not kept";
  EXPECT_EQ(HugeStats().huge_bytes_cached, HugeMappingBytes(7 * kHugeMiB) - 4 * kHugeMiB);
  // The rest, 3 MiB and the slice, holds the next block that fits.
  char* rest = static_cast<char*>(ferry_malloc(2 * kHugeMiB + 1));
  EXPECT_EQ(rest, big + 4 * kHugeMiB);
  EXPECT_EQ(HugeStats().huge_bytes_cached, 0u);
  EXPECT_EQ(rest[kHugeMiB], 0x3c) << "the pages were not kept";
  ferry_free(rest);
  ferry_free(much_smaller);
  EmptyHugeCache();

  // A rest too small for a huge block goes back to the OS.
  char* five = static_cast<char*>(ferry_malloc(5 * kHugeMiB + kHugeMiB / 2));
  ASSERT_NE(five, nullptr);
  memset(five, 0x3d, 5 * kHugeMiB + kHugeMiB / 2);
  ferry_free(five);
  ASSERT_EQ(HugeStats().huge_bytes_cached, HugeMappingBytes(5 * kHugeMiB + kHugeMiB / 2));
  char* two = static_cast<char*>(ferry_malloc(2 * kHugeMiB + 1));
  ASSERT_EQ(two, five);
  EXPECT_EQ(two[kHugeMiB], 0x3d) << "the pages were not kept";
  EXPECT_EQ(HugeStats().huge_bytes_cached, 0u);
  EXPECT_FALSE(Mapped(five - kSliceSize + 4 * kHugeMiB)) << "the rest past 4 MiB was kept";
  ferry_free(two);
  EmptyHugeCache();

  void* largest = ferry_malloc(31 * kHugeMiB);
  ASSERT_NE(largest, nullptr);
  ferry_free(largest);
  EXPECT_EQ(HugeStats().huge_bytes_cached, HugeMappingBytes(31 * kHugeMiB));
  EXPECT_TRUE(Mapped(largest));
  EmptyHugeCache();
}

// A block larger than every waiting mapping grows the largest one of at
// least half its size (in place or moved whole, never copied): its pages
// hold the next block's first bytes as they were, and only the rest is
// new. Before 2026-12-05 such a block took a fresh mapping, every page of
// it faulted in (four threads churning 128 KiB-16 MiB blocks: 13-17% fewer
// page faults now). A block over twice the largest takes a fresh one.
TEST(HugeCache, ABlockLargerThanEveryWaitingMappingGrowsOne) {
  if (kValgrind) GTEST_SKIP() << "no huge cache under memcheck";
  EmptyHugeCache();
  char* first = static_cast<char*>(ferry_malloc(5 * kHugeMiB));
  ASSERT_NE(first, nullptr);
  for (size_t k = 0; k < 5 * kHugeMiB; k += 4096) first[k] = static_cast<char>(k / 4096 + 1);
  ferry_free(first);
  ASSERT_EQ(HugeStats().huge_bytes_cached, HugeMappingBytes(5 * kHugeMiB));
  // Over twice as large: a fresh mapping, the waiting one left alone.
  const ferry_stats_t before_far = HugeStats();
  char* far = static_cast<char*>(ferry_malloc(11 * kHugeMiB));
  ASSERT_NE(far, nullptr);
  EXPECT_EQ(HugeStats().huge_reused, before_far.huge_reused);
  EXPECT_EQ(HugeStats().huge_bytes_cached, HugeMappingBytes(5 * kHugeMiB));
  ferry_free(far);
  EmptyHugeCache();
  first = static_cast<char*>(ferry_malloc(5 * kHugeMiB));
  ASSERT_NE(first, nullptr);
  for (size_t k = 0; k < 5 * kHugeMiB; k += 4096) first[k] = static_cast<char>(k / 4096 + 1);
  ferry_free(first);
  const ferry_stats_t before = HugeStats();
  char* grown = static_cast<char*>(ferry_malloc(8 * kHugeMiB));
  ASSERT_NE(grown, nullptr);
  const ferry_stats_t after = HugeStats();
  EXPECT_EQ(after.huge_reused - before.huge_reused, 1u);
  EXPECT_EQ(after.huge_bytes_cached, 0u);
  ASSERT_GE(ferry_usable_size(grown), 8 * kHugeMiB);
  for (size_t k = 0; k < 5 * kHugeMiB; k += 4096) {
    ASSERT_EQ(grown[k], static_cast<char>(k / 4096 + 1)) << "the waiting mapping's page at " << k << " was not kept";
  }
  for (size_t k = 5 * kHugeMiB; k < 8 * kHugeMiB; k += 4096) ASSERT_EQ(grown[k], 0) << "at " << k;
  memset(grown, 0x11, 8 * kHugeMiB);  // all of it writable
  ferry_free(grown);
  EXPECT_DEATH(ferry_free(grown), "double free");
  EmptyHugeCache();
}

// A block cut from a larger waiting mapping grows by realloc into the rest
// of it, which waits right after the block: in place, the pages the rest
// held kept, up to the next 4 MiB boundary past the growth, from where the
// rest waits on. It moved away before (cliff pattern 2, 2026-12-07).
TEST(HugeCache, ABlockGrowsIntoTheRestOfItsMappingWaitingAfterIt) {
  if (kValgrind) GTEST_SKIP() << "no huge cache under memcheck";
  if (OsAddressSpaceLimit() != SIZE_MAX) GTEST_SKIP() << "no growth into waiting pieces under a limit";
  EmptyHugeCache();
  char* whole = static_cast<char*>(ferry_malloc(24 * kHugeMiB));
  ASSERT_NE(whole, nullptr);
  for (size_t k = 0; k < 24 * kHugeMiB; k += 4096) whole[k] = static_cast<char>(k / 4096 + 1);
  ferry_free(whole);
  // The pieces wait from now for 250 ms (kEagerWindowMs): a machine
  // too slow to take the steps below in 200 ms checks nothing.
  const uint64_t freed_ms = OsMonotonicMs();
  const auto late = [&] { return OsMonotonicMs() - freed_ms > 200; };
  const uint64_t cached = HugeStats().huge_bytes_cached;
  ASSERT_EQ(cached, HugeMappingBytes(24 * kHugeMiB));  // nothing has run since to let it go
  // The first 4 MiB of it; the rest waits on its own.
  char* p = static_cast<char*>(ferry_malloc(3 * kHugeMiB));
  if (late()) {
    ferry_free(p);
    GTEST_SKIP() << "too slow: the mapping may have gone back to the OS";
  }
  ASSERT_EQ(p, whole) << "not the waiting mapping's start: nothing to grow into";
  if (!late()) {
    EXPECT_EQ(HugeStats().huge_bytes_cached, cached - 4 * kHugeMiB);
  }
  memset(p, 'a', 3 * kHugeMiB);
  char* q = static_cast<char*>(ferry_realloc(p, 6 * kHugeMiB));
  if (late()) {
    ferry_free(q);
    GTEST_SKIP() << "too slow: the pieces may have gone back to the OS";
  }
  ASSERT_EQ(q, p) << "moved, not grown into the rest waiting after it";
  // The block's mapping reaches 8 MiB now; the rest waits from there.
  if (!late()) {
    EXPECT_EQ(HugeStats().huge_bytes_cached, cached - 8 * kHugeMiB);
  }
  for (size_t k = 0; k < 3 * kHugeMiB; k += 4096) ASSERT_EQ(q[k], 'a') << "at " << k;
  memset(q, 'b', 6 * kHugeMiB);
  // And on, past the next boundary: the rest of the rest.
  char* r = static_cast<char*>(ferry_realloc(q, 13 * kHugeMiB));
  if (late()) {
    ferry_free(r);
    GTEST_SKIP() << "too slow: the pieces may have gone back to the OS";
  }
  ASSERT_EQ(r, p);
  if (!late()) {
    EXPECT_EQ(HugeStats().huge_bytes_cached, cached - 16 * kHugeMiB);
  }
  for (size_t k = 0; k < 6 * kHugeMiB; k += 4096) ASSERT_EQ(r[k], 'b') << "at " << k;
  memset(r, 'c', 13 * kHugeMiB);
  // A block taken from what still waits shares no page with this one.
  char* other = static_cast<char*>(ferry_malloc(2 * kHugeMiB + 4096));
  ASSERT_NE(other, nullptr);
  if (!late()) {
    EXPECT_EQ(other, r + 16 * kHugeMiB) << "not the rest that waited";
  }
  EXPECT_TRUE(other >= r + 13 * kHugeMiB || other + 2 * kHugeMiB + 4096 <= r);
  memset(other, 'd', 2 * kHugeMiB + 4096);
  for (size_t k = 0; k < 13 * kHugeMiB; k += 4096) ASSERT_EQ(r[k], 'c') << "at " << k;
  ferry_free(other);
  ferry_free(r);
  EmptyHugeCache();
}

// A reservation that fails where no limit makes room worth making (a size
// the kernel refuses, no RLIMIT_AS) leaves the cache as it was: a program
// that probed for a huge buffer once a round lost its cache each time (a
// review's program on 2026-12-05: 10.1 ms a round against 0.22).
TEST(HugeCache, AReservationThatNoReleaseCouldServeLeavesTheCache) {
  if (kValgrind) GTEST_SKIP() << "no huge cache under memcheck";
  rlimit limit;
  ASSERT_EQ(getrlimit(RLIMIT_AS, &limit), 0);
  if (limit.rlim_cur != RLIM_INFINITY) GTEST_SKIP() << "an address-space limit is set";
  EmptyHugeCache();
  void* p = ferry_malloc(5 * kHugeMiB);
  ASSERT_NE(p, nullptr);
  ferry_free(p);
  ASSERT_EQ(HugeStats().huge_bytes_cached, HugeMappingBytes(5 * kHugeMiB));
  void* impossible = ferry_malloc(size_t{1} << 45);  // 32 TiB
  if (impossible != nullptr) {
    ferry_free(impossible);
    GTEST_SKIP() << "the kernel mapped 32 TiB (vm.overcommit_memory 1)";
  }
  EXPECT_EQ(HugeStats().huge_bytes_cached, HugeMappingBytes(5 * kHugeMiB)) << "the cache was given back";
  EmptyHugeCache();
}

// malloc is no cancellation point: a thread with a cancel pending that
// asks for more than fits, while the huge cache holds something, gets NULL
// and goes on. On 2026-12-05 the check of whether to give the cache back
// read /proc with libc's open and read, and the thread was cancelled inside
// malloc (holding its heap's lock, in a claim).
TEST(HugeCache, AFailedReservationIsNoCancellationPoint) {
  if (kValgrind) GTEST_SKIP() << "no huge cache under memcheck";
  EmptyHugeCache();
  void* p = ferry_malloc(5 * kHugeMiB);
  ASSERT_NE(p, nullptr);
  ferry_free(p);
  ASSERT_GT(HugeStats().huge_bytes_cached, 0u);
  struct Shared {
    std::atomic<bool> cancel_sent{false};
    std::atomic<bool> returned{false};
    bool mapped = false;  // the kernel mapped 32 TiB: nothing was tested
  } shared;
  pthread_t thread;
  ASSERT_EQ(pthread_create(
                &thread, nullptr,
                [](void* arg) -> void* {
                  auto* shared = static_cast<Shared*>(arg);
                  while (!shared->cancel_sent.load()) std::this_thread::yield();
                  void* impossible = ferry_malloc(size_t{1} << 45);  // 32 TiB
                  if (impossible != nullptr) ferry_free(impossible);
                  shared->mapped = impossible != nullptr;
                  shared->returned.store(true);
                  pthread_testcancel();
                  return nullptr;
                },
                &shared),
            0);
  ASSERT_EQ(pthread_cancel(thread), 0);
  shared.cancel_sent.store(true);
  void* result = nullptr;
  ASSERT_EQ(pthread_join(thread, &result), 0);
  EXPECT_EQ(result, PTHREAD_CANCELED);
  EXPECT_TRUE(shared.returned.load()) << "the thread was cancelled inside ferry_malloc";
  EmptyHugeCache();
  if (shared.mapped) GTEST_SKIP() << "the kernel mapped 32 TiB (vm.overcommit_memory 1)";
}

// A program may map a file over part of its own huge block (glibc unmaps a
// freed block, so that is harmless there). Kept in the cache, that mapping
// held the next block of its size, whose writes went to the file: now a
// mapping left in pieces goes back to the OS. So do mlock'd ones.
TEST(HugeCache, AMappingTheProgramChangedInPartIsNotKept) {
  if (kValgrind) GTEST_SKIP() << "no huge cache under memcheck";
  EmptyHugeCache();
  const int fd = memfd_create("ferry_huge_overlay", 0);
  if (fd < 0 && (errno == ENOSYS || errno == EPERM)) GTEST_SKIP() << "no memfd_create here";
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, static_cast<off_t>(kHugeMiB)), 0);
  char* p = static_cast<char*>(ferry_malloc(5 * kHugeMiB));
  ASSERT_NE(p, nullptr);
  char* overlay = p + kHugeMiB;
  ASSERT_EQ(mmap(overlay, kHugeMiB, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0), overlay);
  ferry_free(p);
  EXPECT_EQ(HugeStats().huge_bytes_cached, 0u) << "the mapping was kept";
  char* q = static_cast<char*>(ferry_malloc(5 * kHugeMiB));
  ASSERT_NE(q, nullptr);
  memset(q, 'X', 5 * kHugeMiB);
  std::vector<char> file(kHugeMiB);
  ASSERT_EQ(pread(fd, file.data(), file.size(), 0), static_cast<ssize_t>(file.size()));
  EXPECT_EQ(std::count(file.begin(), file.end(), 'X'), 0) << "a new block wrote into the program's file";
  ferry_free(q);
  close(fd);
  // Locked pages in part of a block: the next block would have them locked.
  char* r = static_cast<char*>(ferry_malloc(5 * kHugeMiB));
  ASSERT_NE(r, nullptr);
  // (r may be q's mapping from the cache, or a new one: what counts is
  // whether its free adds to the cache.)
  const uint64_t cached_before_r = HugeStats().huge_bytes_cached;
  // The sanitizers' mlock does nothing and says it worked: VmLck tells.
  auto locked_kib = [] {
    FILE* status = fopen("/proc/self/status", "r");
    long kib = 0;
    char line[256];
    while (status != nullptr && fgets(line, sizeof line, status) != nullptr) {
      if (sscanf(line, "VmLck: %ld kB", &kib) == 1) break;
    }
    if (status != nullptr) fclose(status);
    return kib;
  };
  const long locked_before = locked_kib();
  if (mlock(r, 4096) == 0 && locked_kib() > locked_before) {
    ferry_free(r);
    EXPECT_EQ(HugeStats().huge_bytes_cached, cached_before_r) << "a mapping with a locked page was kept";
  } else {
    ferry_free(r);  // RLIMIT_MEMLOCK 0, or a sanitizer: nothing to check
  }
  // A plain block, or one whose protection the program changed in part, is
  // still kept (the reset makes it one mapping again).
  char* s = static_cast<char*>(ferry_malloc(5 * kHugeMiB));
  ASSERT_NE(s, nullptr);
  ASSERT_EQ(mprotect(s + 2 * kHugeMiB, 4096, PROT_READ), 0);
  const uint64_t cached_before_s = HugeStats().huge_bytes_cached;
  ferry_free(s);
  EXPECT_GT(HugeStats().huge_bytes_cached, cached_before_s) << "a mapping the reset made whole was not kept";
  EmptyHugeCache();
}

constexpr int kMadvGuardInstall = 102;  // Linux 6.13
constexpr int kMadvGuardRemove = 103;

// A stack with a guard page: the program makes a huge block's first page
// inaccessible (mprotect, or a guard region of Linux 6.13) and frees the
// block as it is. free read the block's first word before it knew the block
// was huge, and faulted; and a guard region, which neither mprotect nor
// MADV_DONTNEED clears, went with the cached mapping to the next block,
// which faulted on its first write.
TEST(HugeCache, ABlockWithAGuardPageIsFreedAndItsMappingWritableAgain) {
  if (kValgrind) GTEST_SKIP() << "no huge cache under memcheck";
  EmptyHugeCache();
  void* stack = nullptr;
  ASSERT_EQ(ferry_posix_memalign(&stack, 4096, 8 * kHugeMiB), 0);
  ASSERT_EQ(mprotect(stack, 4096, PROT_NONE), 0);
  ferry_free(stack);  // faulted here
  char* again = static_cast<char*>(ferry_malloc(8 * kHugeMiB));
  ASSERT_NE(again, nullptr);
  memset(again, 'a', 8 * kHugeMiB);  // the cached mapping's first page too
  ferry_free(again);
  char* guarded = static_cast<char*>(ferry_malloc(5 * kHugeMiB));
  ASSERT_NE(guarded, nullptr);
  if (madvise(guarded + 2 * kHugeMiB, 4096, kMadvGuardInstall) != 0) {
    ferry_free(guarded);
    EmptyHugeCache();
    GTEST_SKIP() << "no guard regions on this kernel (errno " << errno << ")";
  }
  ferry_free(guarded);
  ASSERT_GT(HugeStats().huge_bytes_cached, 0u) << "a guard region splits no mapping: it should be kept";
  char* next = static_cast<char*>(ferry_malloc(5 * kHugeMiB));
  ASSERT_NE(next, nullptr);
  EXPECT_EQ(next, guarded) << "not the cached mapping: nothing checked";
  memset(next, 'b', 5 * kHugeMiB);  // faulted on the guard page
  // A guard on the last page of a mapping goes too, and a fork child's
  // (a scan of /proc/self/pagemap for guards before the removal, tried on
  // 2026-12-05, missed the child's where the parent's file was used).
  ASSERT_EQ(madvise(next + 5 * kHugeMiB - 4096, 4096, kMadvGuardInstall), 0);
  ferry_free(next);
  char* last = static_cast<char*>(ferry_malloc(5 * kHugeMiB));
  ASSERT_EQ(last, guarded);
  memset(last, 'c', 5 * kHugeMiB);
  // Guards in a block written whole, the rest of it resident: the removal
  // runs only where mincore finds pages absent, which it reads from the
  // block's start (the mapping's first chunk is the header's) 2048 pages
  // at a time: guards on the block's first pages, on its 5 MiB's last page
  // and between.
  for (const size_t page : {0, 1, 300, 1279}) {
    ASSERT_EQ(madvise(last + page * 4096, 4096, kMadvGuardInstall), 0);
  }
  ferry_free(last);
  last = static_cast<char*>(ferry_malloc(5 * kHugeMiB));
  ASSERT_EQ(last, guarded);
  memset(last, 'e', 5 * kHugeMiB);  // faults on a guard left in place
  // And on the last and first pages of two stretches, in a larger block.
  char* big = static_cast<char*>(ferry_malloc(12 * kHugeMiB));
  ASSERT_NE(big, nullptr);
  memset(big, 'f', 12 * kHugeMiB);
  for (const size_t page : {2047, 2048, 3000}) {
    ASSERT_EQ(madvise(big + page * 4096, 4096, kMadvGuardInstall), 0);
  }
  ferry_free(big);
  char* big_again = static_cast<char*>(ferry_malloc(12 * kHugeMiB));
  ASSERT_EQ(big_again, big) << "not the cached mapping: nothing checked";
  memset(big_again, 'g', 12 * kHugeMiB);  // faults on a guard left in place
  ferry_free(big_again);
#if !defined(__SANITIZE_THREAD__) && !defined(__SANITIZE_ADDRESS__)
  const pid_t child = fork();
  if (child == 0) {
    char* mine = static_cast<char*>(ferry_malloc(6 * kHugeMiB));
    if (mine == nullptr || madvise(mine + kHugeMiB, 4096, kMadvGuardInstall) != 0) _exit(2);
    ferry_free(mine);
    char* reused = static_cast<char*>(ferry_malloc(6 * kHugeMiB));
    if (reused != mine) _exit(3);
    memset(reused, 'd', 6 * kHugeMiB);  // faults if the guard stayed
    _exit(0);
  }
  ASSERT_GT(child, 0);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "the child's status " << status;
#endif
  ferry_free(last);
  EmptyHugeCache();
}

#if !defined(__SANITIZE_THREAD__) && !defined(__SANITIZE_ADDRESS__) && defined(__x86_64__)
// A seccomp filter on this process (and its threads to come) under which
// madvise with advice `refused` (and `also_refused`, if not 0) fails with
// EPERM; false where none can be installed.
bool RefuseMadviseAdvice(uint32_t refused, uint32_t also_refused = 0) {
  struct sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 0, 5),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_madvise, 0, 3),
      // The advice is an int: its low word is all of it.
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[2])),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, refused, 2, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, also_refused == 0 ? refused : also_refused, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
  };
  struct sock_fprog program = {sizeof filter / sizeof filter[0], filter};
  return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 && syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &program) == 0;
}

// The status of a child running `body` (exit 10: no guard regions on this
// kernel, 11: no seccomp filter, which skip).
template <typename Body>
int InChild(Body body) {
  const pid_t child = fork();
  if (child == 0) _exit(body());
  if (child < 0) return -1;
  int status = 0;
  if (waitpid(child, &status, 0) != child) return -1;
  return status;
}

// Where the kernel refuses to remove guard regions for any reason but not
// knowing them (a seccomp filter's EPERM here) while it lets the program
// install them, the mapping may keep the program's guards: it goes back to
// the OS, not to the next block, which faulted on its first write (a
// fault-injection hunt, 2026-12-06).
TEST(HugeCache, AMappingWhoseGuardsTheKernelWouldNotRemoveIsNotReused) {
  if (kValgrind) GTEST_SKIP() << "no huge cache under memcheck";
  EmptyHugeCache();
  const int status = InChild([] {
    char* guarded = static_cast<char*>(ferry_malloc(5 * kHugeMiB));
    if (guarded == nullptr) return 2;
    memset(guarded, 'a', 5 * kHugeMiB);
    if (madvise(guarded + 2 * kHugeMiB, 4096, kMadvGuardInstall) != 0) return 10;
    if (!RefuseMadviseAdvice(kMadvGuardRemove)) return 11;
    if (madvise(guarded + 2 * kHugeMiB, 4096, kMadvGuardRemove) == 0 || errno != EPERM) return 3;  // the filter
    const uint64_t cached = HugeStats().huge_bytes_cached;
    ferry_free(guarded);
    if (HugeStats().huge_bytes_cached != cached) return 4;  // kept for the next block
    char* next = static_cast<char*>(ferry_malloc(5 * kHugeMiB));
    if (next == nullptr) return 5;
    memset(next, 'b', 5 * kHugeMiB);  // faulted on the guard page of a reused mapping
    return 0;
  });
  if (WIFEXITED(status) && WEXITSTATUS(status) == 10) GTEST_SKIP() << "no guard regions on this kernel";
  if (WIFEXITED(status) && WEXITSTATUS(status) == 11) GTEST_SKIP() << "no seccomp filter here";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "the child's status " << status;
}

// Where the program can install no guard region either (a filter that
// refuses both advices, as one that allows only the advice it knows does),
// a refused removal leaves none behind: the mapping is cached as anywhere.
TEST(HugeCache, WhereGuardsCanBeNeitherInstalledNorRemovedMappingsAreStillReused) {
  if (kValgrind) GTEST_SKIP() << "no huge cache under memcheck";
  EmptyHugeCache();
  const int status = InChild([] {
    if (!RefuseMadviseAdvice(kMadvGuardRemove, kMadvGuardInstall)) return 11;
    char* p = static_cast<char*>(ferry_malloc(5 * kHugeMiB));
    if (p == nullptr) return 2;
    memset(p, 'a', 5 * kHugeMiB);
    const uint64_t cached = HugeStats().huge_bytes_cached;
    ferry_free(p);
    if (HugeStats().huge_bytes_cached <= cached) return 3;  // unmapped: every huge free would be
    char* next = static_cast<char*>(ferry_malloc(5 * kHugeMiB));
    if (next != p) return 4;
    memset(next, 'b', 5 * kHugeMiB);
    return 0;
  });
  if (WIFEXITED(status) && WEXITSTATUS(status) == 11) GTEST_SKIP() << "no seccomp filter here";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "the child's status " << status;
}
#endif

// A block whose mapping waits in the cache is out of the segment map, like
// memory ferry never handed out; it is still reported as what it is.
TEST(HugeCache, AFreedBlockWhoseMappingWaitsIsReportedAsFreed) {
  if (kValgrind) GTEST_SKIP() << "no huge cache under memcheck";
  EmptyHugeCache();
  char* p = static_cast<char*>(ferry_malloc(5 * kHugeMiB));
  ASSERT_NE(p, nullptr);
  p[0] = 1;
  ferry_free(p);
  ASSERT_GT(HugeStats().huge_bytes_cached, 0u) << "the mapping was not kept";
  EXPECT_DEATH(ferry_free(p), "ferry: free\\(.*\\): double free \\(huge block already free\\)");
  EXPECT_DEATH(ferry_free(p + 4096), "pointer into a freed huge block");
  EXPECT_DEATH(ferry_free(p + 4 * kHugeMiB + 8), "pointer into a freed huge block");
  EXPECT_DEATH(ferry_free(p - 16), "pointer into a freed huge block");  // the mapping's header
  EXPECT_DEATH(ferry_free_sized(p, 100), "huge block already free \\(a double free, or a use after free\\)");
  EXPECT_DEATH(ferry_usable_size(p), "huge block already free");
  EXPECT_DEATH(ferry_realloc(p, 10), "huge block already free");
  // Memory that was never ferry's still reads as such.
  static char not_ours[64];
  EXPECT_DEATH(ferry_free(not_ours), "pointer not allocated by ferry");
  EmptyHugeCache();
  // Given back to the OS, the range is unknown to ferry again but for the
  // starts of the last huge blocks freed.
  EXPECT_EQ(HugeStats().huge_bytes_cached, 0u);
  EXPECT_DEATH(ferry_free(p), "ferry: free\\(.*\\): double free \\(huge block already free\\)");
  EXPECT_DEATH(ferry_free(p + 4096), "pointer not allocated by ferry");
}

// What the program did to a block's pages does not carry over to the next
// block in its mapping: a read-only page, and a range not to be copied
// into fork children.
TEST(HugeCache, AReusedMappingIsPlainReadWriteMemory) {
  if (kValgrind) GTEST_SKIP() << "no huge cache under memcheck";
  EmptyHugeCache();
  const size_t size = 5 * kHugeMiB;
  char* p = static_cast<char*>(ferry_malloc(size));
  ASSERT_NE(p, nullptr);
  ASSERT_EQ(mprotect(p + kHugeMiB, 4096, PROT_READ), 0);
  ASSERT_EQ(madvise(p + 2 * kHugeMiB, 4096, MADV_DONTFORK), 0);
  ferry_free(p);
  char* q = static_cast<char*>(ferry_malloc(size));
  ASSERT_EQ(q, p) << "not reused: the test measures nothing";
  memset(q, 0x6b, size);  // a read-only page would stop this
#if !defined(__SANITIZE_THREAD__)
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) _exit(q[kHugeMiB] == 0x6b && q[2 * kHugeMiB] == 0x6b ? 0 : 1);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << "the child could not read the block (status " << status << ")";
#endif
  ferry_free(q);
  EmptyHugeCache();
}

// A cached mapping goes back to the OS once it has waited as long as an
// empty segment would (the housekeeping), and at once on ferry_collect.
TEST(HugeCache, CachedMappingsGoBackOnceTheyHaveWaited) {
  if (kValgrind) GTEST_SKIP() << "no huge cache under memcheck";
  EmptyHugeCache();
  void* p = ferry_malloc(5 * kHugeMiB);
  ASSERT_NE(p, nullptr);
  ferry_free(p);
  const uint64_t freed_ms = OsMonotonicMs();
  ReleaseIdleHugeMappings(freed_ms, /*urgent=*/false);
  EXPECT_EQ(HugeStats().huge_bytes_cached, HugeMappingBytes(5 * kHugeMiB)) << "went back at once";
  EXPECT_TRUE(Mapped(p));
  const uint64_t keep_ms = EmptySegmentKeepMs(CurrentOptions().purge_delay_ms);
  ReleaseIdleHugeMappings(freed_ms + keep_ms + 1, /*urgent=*/false);
  EXPECT_EQ(HugeStats().huge_bytes_cached, 0u) << "stayed past its time";
  EXPECT_FALSE(Mapped(p)) << "still mapped";

  void* again = ferry_malloc(5 * kHugeMiB);
  ASSERT_NE(again, nullptr);
  ferry_free(again);
  ASSERT_EQ(HugeStats().huge_bytes_cached, HugeMappingBytes(5 * kHugeMiB));
  ferry_collect();
  EXPECT_EQ(HugeStats().huge_bytes_cached, 0u) << "ferry_collect left it";
}

// Where no pool ticks (this test binary: FERRY_RECLAIMERS=0), the next huge
// free gives back what has waited its time, even one too big to keep.
TEST(HugeCache, TheNextHugeFreeGivesBackWhatHasWaited) {
  if (kValgrind) GTEST_SKIP() << "no huge cache under memcheck";
  EmptyHugeCache();
  void* p = ferry_malloc(5 * kHugeMiB);
  void* big = ferry_malloc(40 * kHugeMiB);
  ASSERT_NE(p, nullptr);
  ASSERT_NE(big, nullptr);
  ferry_free(p);
  ASSERT_EQ(HugeStats().huge_bytes_cached, HugeMappingBytes(5 * kHugeMiB));
  const uint64_t keep_ms = EmptySegmentKeepMs(CurrentOptions().purge_delay_ms);
  std::this_thread::sleep_for(std::chrono::milliseconds(keep_ms + 20));
  ferry_free(big);
  EXPECT_EQ(HugeStats().huge_bytes_cached, 0u) << "an expired mapping stayed";
  EXPECT_FALSE(Mapped(p));
}

// The cache holds 32 MiB at most; a free that would pass that gives back
// the mappings freed longest ago.
TEST(HugeCache, AFullCacheGivesBackItsOldestFirst) {
  if (kValgrind) GTEST_SKIP() << "no huge cache under memcheck";
  EmptyHugeCache();
  std::vector<void*> blocks;
  for (int k = 0; k < 5; ++k) blocks.push_back(ferry_malloc(7 * kHugeMiB));  // 7 MiB + 64 KiB mappings
  for (void* p : blocks) {
    ASSERT_NE(p, nullptr);
    ferry_free(p);
  }
  const size_t four = 4 * HugeMappingBytes(7 * kHugeMiB);
  ASSERT_LE(four, 32 * kHugeMiB);
  ASSERT_GT(four + HugeMappingBytes(7 * kHugeMiB), 32 * kHugeMiB);
  EXPECT_EQ(HugeStats().huge_bytes_cached, four);
  EXPECT_FALSE(Mapped(blocks[0])) << "the oldest stayed";
  for (size_t k = 1; k < blocks.size(); ++k) EXPECT_TRUE(Mapped(blocks[k])) << k;
  // Bigger than the whole cache: never kept, and nothing is given back for it.
  void* big = ferry_malloc(40 * kHugeMiB);
  ASSERT_NE(big, nullptr);
  ferry_free(big);
  EXPECT_FALSE(Mapped(big));
  EXPECT_EQ(HugeStats().huge_bytes_cached, four);
  EmptyHugeCache();
}

// A freed block and the piece of its mapping waiting beside it that the
// kernel no longer holds as one mapping with it (here the piece was made
// MADV_DONTDUMP) are not joined: the piece goes back into the cache as it
// was, and leaves it once it has waited its time since it was put there,
// not since the block next to it was freed. Until 2026-12-05 it was stamped
// anew, and a piece beside blocks freed again and again never aged out.
TEST(HugeCache, AWaitingPieceThatCouldNotBeJoinedKeepsItsAge) {
  if (kValgrind) GTEST_SKIP() << "no huge cache under memcheck";
  EmptyHugeCache();
  // 128 MiB held: without a pool the cap is half the live huge bytes, over
  // 32 MiB, so a block takes only what it needs of a larger mapping.
  std::vector<void*> held;
  for (int k = 0; k < 2; ++k) {
    held.push_back(ferry_malloc(64 * kHugeMiB));
    ASSERT_NE(held.back(), nullptr);
  }
  char* big = static_cast<char*>(ferry_malloc(13 * kHugeMiB));
  ASSERT_NE(big, nullptr);
  ferry_free(big);
  ASSERT_EQ(HugeStats().huge_bytes_cached, HugeMappingBytes(13 * kHugeMiB));
  // 7 MiB: the block keeps its mapping up to the 4 MiB boundary at 8 MiB,
  // and the rest, 5 MiB and a header, waits from now.
  char* seven = static_cast<char*>(ferry_malloc(7 * kHugeMiB));
  const uint64_t rest_waits_by_ms = OsMonotonicMs();
  ASSERT_EQ(seven, big);
  char* const rest = big - kSliceSize + 8 * kHugeMiB;
  const size_t rest_size = HugeMappingBytes(13 * kHugeMiB) - 8 * kHugeMiB;
  ASSERT_EQ(HugeStats().huge_bytes_cached, rest_size);
  ASSERT_EQ(madvise(rest, rest_size, MADV_DONTDUMP), 0);
  // The block is freed in a later millisecond than the rest was cut.
  while (OsMonotonicMs() <= rest_waits_by_ms) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  memset(seven, 7, 7 * kHugeMiB);
  ferry_free(seven);
  ASSERT_EQ(HugeStats().huge_bytes_cached, 8 * kHugeMiB + rest_size) << "joined across two mappings";
  ASSERT_TRUE(Mapped(rest));
  // When the rest has waited its time the block has not: the rest goes.
  const uint64_t keep_ms = EmptySegmentKeepMs(CurrentOptions().purge_delay_ms);
  ReleaseIdleHugeMappings(rest_waits_by_ms + keep_ms, /*urgent=*/false);
  EXPECT_FALSE(Mapped(rest)) << "the rest was stamped as freed with the block";
  EXPECT_EQ(HugeStats().huge_bytes_cached, 8 * kHugeMiB);
  EXPECT_TRUE(Mapped(seven));
  for (void* p : held) ferry_free(p);
  EmptyHugeCache();
}

// Holds 8 blocks of 8 MiB, frees 6 more just written, and asks for 6
// again: how many bytes waited once the 6 were freed (the cache's cap with
// 64 MiB live), in *cached, and how many of the 6 found a waiting mapping,
// in *reused, the latter only if the round took under 200 ms (a mapping
// that has waited 250 ms goes back at the next huge call), else
// UINT64_MAX. Frees everything; leaves no more than an idle program keeps.
void ChurnSixOfFourteenHugeBlocks(uint64_t* cached, uint64_t* reused) {
  std::vector<void*> held;
  for (int k = 0; k < 8; ++k) {
    held.push_back(ferry_malloc(8 * kHugeMiB));
    if (held.back() == nullptr) std::abort();
  }
  std::vector<void*> churned;
  for (int k = 0; k < 6; ++k) {
    churned.push_back(ferry_malloc(8 * kHugeMiB));
    if (churned.back() == nullptr) std::abort();
    memset(churned.back(), k + 1, 8 * kHugeMiB);
  }
  const auto first_free = std::chrono::steady_clock::now();
  for (void* p : churned) ferry_free(p);
  *cached = HugeStats().huge_bytes_cached;
  const uint64_t reused_before = HugeStats().huge_reused;
  for (void*& p : churned) {
    p = ferry_malloc(8 * kHugeMiB);
    if (p == nullptr) std::abort();
  }
  *reused = HugeStats().huge_reused - reused_before;
  if (std::chrono::steady_clock::now() - first_free >= std::chrono::milliseconds(200)) *reused = UINT64_MAX;
  for (void* p : churned) ferry_free(p);
  for (void* p : held) ferry_free(p);
}

// Has this process count the calling thread and one more as threads it
// ran (ProgramRanSeveralThreads), whatever ran before.
void CountTwoThreads() {
  ferry_free(ferry_malloc(64));
  std::thread([] { ferry_free(ferry_malloc(64)); }).join();
}

// Where no reclaimer ticks (this test's FERRY_RECLAIMERS=0), the cache
// holds 32 MiB or the program's live huge bytes, whichever is more, where
// the program has only ever run one thread (a fork child of this one): a
// program holding 64 MiB of huge blocks gets 48 MiB of freed ones back
// with their pages. Where it has run more (this process), half: a free
// past that asks for the pool, whose timer gives back what idles. Once it
// frees them all the cache is 32 MiB again.
TEST(HugeCache, WithoutAPoolTheCacheHoldsTheLiveHugeBytesOrHalfWithSeveralThreads) {
  if (kValgrind) GTEST_SKIP() << "no huge cache under memcheck";
  EmptyHugeCache();
  constexpr size_t kIdleMost = 32 * kHugeMiB + 64 * 1024;
  const size_t mapping = HugeMappingBytes(8 * kHugeMiB);
  CountTwoThreads();
  ASSERT_TRUE(ProgramRanSeveralThreads());
  uint64_t cached = 0, reused = 0;
  ChurnSixOfFourteenHugeBlocks(&cached, &reused);
  EXPECT_EQ(cached, 4 * mapping) << "not half of the 8 blocks held";
  if (reused != UINT64_MAX) {
    EXPECT_EQ(reused, 4u);
  }
  EXPECT_LE(HugeStats().huge_bytes_cached, kIdleMost) << "an idle program keeps 32 MiB";
  EmptyHugeCache();
#if defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "fork with ThreadSanitizer's threads";
#else
  const pid_t child = fork();
  if (child == 0) {
    // Exit codes: 1 several threads counted, 2 the cap, 3 reuse, 4 idle.
    if (ProgramRanSeveralThreads()) _exit(1);
    ChurnSixOfFourteenHugeBlocks(&cached, &reused);
    if (cached != 6 * mapping) _exit(2);
    if (reused != UINT64_MAX && reused != 6) _exit(3);
    _exit(HugeStats().huge_bytes_cached <= kIdleMost ? 0 : 4);
  }
  ASSERT_GT(child, 0);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "exit codes: 1 several threads counted, 2 not all 6 mappings waited, "
                                       "3 not all 6 reused, 4 more than 32 MiB kept once idle";
#endif
}

// The cap falls with the live huge bytes, and a free or a realloc shrink
// that lowers it gives back what waits above it at once: where no
// reclaimer ticks, nothing else would until the program's next huge call
// (a review's programs kept 104 MiB of ten freed 100 MiB blocks, and the
// 1016 MiB rest of a 1 GiB block shrunk to 5 MiB, while idle).
TEST(HugeCache, WithoutAPoolWhatWaitsFollowsTheFallingCap) {
  if (kValgrind) GTEST_SKIP() << "no huge cache under memcheck";
  // The caps below are those of a program that has run several threads
  // (half its huge bytes); one that never has keeps all of them (run first
  // in its process, under --gtest_shuffle, this test saw a cap of 40 MiB).
  CountTwoThreads();
  ASSERT_TRUE(ProgramRanSeveralThreads());
  EmptyHugeCache();
  constexpr size_t kIdleMost = 32 * kHugeMiB + 64 * 1024;
  // Six blocks of 40 MiB freed in order: the fifth is larger than the cap
  // its free leaves (32 MiB), and goes back; so must the fourth's mapping.
  std::vector<void*> blocks;
  for (int k = 0; k < 6; ++k) {
    blocks.push_back(ferry_malloc(40 * kHugeMiB));
    ASSERT_NE(blocks.back(), nullptr);
  }
  for (int k = 0; k < 5; ++k) ferry_free(blocks[k]);
  EXPECT_LE(HugeStats().huge_bytes_cached, kIdleMost) << "40 MiB held, the cache above the cap";
  ferry_free(blocks[5]);
  EXPECT_LE(HugeStats().huge_bytes_cached, kIdleMost);
  EmptyHugeCache();
  // A 200 MiB block shrunk to 5 MiB while another is held: the rest may
  // wait (half of 400 MiB), not once the shrink made the cap 102 MiB.
  char* x = static_cast<char*>(ferry_malloc(200 * kHugeMiB));
  char* y = static_cast<char*>(ferry_malloc(200 * kHugeMiB));
  ASSERT_NE(x, nullptr);
  ASSERT_NE(y, nullptr);
  y[0] = 'y';
  y = static_cast<char*>(ferry_realloc(y, 5 * kHugeMiB));
  ASSERT_NE(y, nullptr);
  EXPECT_EQ(y[0], 'y');
  EXPECT_LE(HugeStats().huge_bytes_cached, (HugeStats().huge_bytes_live) / 2 + kIdleMost);
  ferry_free(x);
  EXPECT_LE(HugeStats().huge_bytes_cached, kIdleMost) << "5 MiB held, more than 32 MiB waiting";
  ferry_free(y);
  EmptyHugeCache();
}

// Threads that allocate, fill, check and free huge blocks of a few sizes at
// once: a mapping handed to two of them at the same time would show as a
// pattern overwritten.
TEST(HugeCache, ThreadsNeverShareAMapping) {
  if (kValgrind) GTEST_SKIP() << "no huge cache under memcheck";
  const uint64_t reused_before = HugeStats().huge_reused;
  constexpr int kThreads = 4;
  constexpr int kRounds = 60;
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t, &bad] {
      for (int round = 0; round < kRounds; ++round) {
        const size_t size = (3 + 2 * static_cast<size_t>((t + round) % 3)) * kHugeMiB;
        const unsigned char tag = static_cast<unsigned char>(t * 64 + round % 64 + 1);
        unsigned char* p = static_cast<unsigned char*>(ferry_malloc(size));
        if (p == nullptr) {
          bad.fetch_add(1);
          return;
        }
        for (size_t k = 0; k < size; k += 4096) p[k] = tag;
        p[size - 1] = tag;
        std::this_thread::yield();
        for (size_t k = 0; k < size; k += 4096) {
          if (p[k] != tag) bad.fetch_add(1);
        }
        if (p[size - 1] != tag) bad.fetch_add(1);
        ferry_free(p);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_GT(HugeStats().huge_reused, reused_before) << "no mapping was reused: the test measures nothing";
  EmptyHugeCache();
}


// --- free segments unmapped for room (ArenaUnreserveFreeSegments) ------------
// Last in the file: they unmap every free segment in the process, so the
// tests above see arenas as they always were.

// Whether [p, p + 4 KiB) is mapped (mincore fails with ENOMEM on a gap).
bool IsMapped(const void* p) {
  unsigned char resident = 0;
  return mincore(const_cast<void*>(p), 4096, &resident) == 0;
}

// A segment whose last slices were freed by a thread that may still read
// its header (ReleasePage, FreeSlices' notice) stays mapped until that
// thread's SegmentReadWindow closes; then it goes, and its arena's entry,
// all of whose segments are gone, takes the next reservation: a program
// that hit its limit once a round used up a new entry a round, and after
// 65536 rounds every small block failed (a review, 2026-12-06).
TEST(Unreserve, AFreeSegmentIsUnmappedOnlyOnceNoReaderOfItsHeaderRemains) {
  Segment* segment = ArenaAllocateSegment(SliceRun(1, 1));
  ASSERT_NE(segment, nullptr);
  {
    // As a thread freeing the segment's last page: the window opens before
    // the slices go, and the owner gives the segment back meanwhile.
    SegmentReadWindow window;
    FreeSlices(segment, 1, 1, OsMonotonicMs());
    uint64_t expected = 1;
    ASSERT_TRUE(segment->used_slices.compare_exchange_strong(expected, kSegmentDetached));
    ArenaReleaseSegment(segment);
    EXPECT_EQ(ArenaUnreserveFreeSegments(0), 0u) << "unmapped while a reader could still be in its header";
    ASSERT_TRUE(IsMapped(segment));
    EXPECT_EQ(segment->used_slices.load(), 0u) << "a released header reads as zeros";
  }
  EXPECT_GE(ArenaUnreserveFreeSegments(0), kSegmentSize);
  EXPECT_FALSE(IsMapped(segment)) << "the free segment was not unmapped";
  const size_t entries = ArenaEntriesForTest();
  for (int round = 0; round < 200; ++round) {
    Segment* again = ArenaAllocateSegment(SliceRun(1, 1));
    ASSERT_NE(again, nullptr);
    static_cast<volatile char*>(static_cast<void*>(again))[2 * kSliceSize - 1] = 1;  // its slice is writable
    TakeEverySliceAndRelease(again);
    ASSERT_GE(ArenaUnreserveFreeSegments(0), kSegmentSize) << "round " << round;
  }
  EXPECT_LE(ArenaEntriesForTest(), entries + 2) << "dead arenas' entries are not taken again";
}

// Windows that never all close at once (threads releasing pages without
// pause) do not hold the unmapping up: only those open when it began do.
TEST(Unreserve, WindowsOpenedDuringTheWaitDoNotHoldItUp) {
  std::atomic<bool> stop{false};
  std::atomic<bool> overlapping{false};
  std::thread reader([&] {
    // Each window opens before the last one closes: one is always open.
    std::optional<SegmentReadWindow> first;
    std::optional<SegmentReadWindow> second;
    first.emplace();
    overlapping.store(true);
    while (!stop.load(std::memory_order_relaxed)) {
      second.emplace();
      first.reset();
      first.emplace();
      second.reset();
    }
  });
  while (!overlapping.load()) std::this_thread::yield();
  Segment* segment = ArenaAllocateSegment(SliceRun(1, 1));
  ASSERT_NE(segment, nullptr);
  TakeEverySliceAndRelease(segment);
  const size_t unmapped = ArenaUnreserveFreeSegments(0);
  stop.store(true);
  reader.join();
  EXPECT_GE(unmapped, kSegmentSize) << "the windows opened meanwhile kept every segment mapped";
}

// While an unmapping waits for readers, the segments it marked are the only
// free ones: a heap that needs one takes one of them back rather than a new
// reservation, which under the limit that caused the unmapping failed
// (small blocks got ENOMEM for the wait's length; a review).
TEST(Unreserve, ASegmentNeededDuringTheWaitIsTakenBackFromTheUnmapping) {
  Segment* freed = ArenaAllocateSegment(SliceRun(1, 1));
  ASSERT_NE(freed, nullptr);
  TakeEverySliceAndRelease(freed);
  std::optional<SegmentReadWindow> window;
  window.emplace();  // keeps the unmapping waiting
  std::atomic<bool> waiting{false};
  std::thread unmapper([&] {
    waiting.store(true);
    ArenaUnreserveFreeSegments(0);
  });
  while (!waiting.load()) std::this_thread::yield();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ferry_stats_t before, after;
  ferry_stats_get(&before);
  Segment* taken = ArenaAllocateSegment(SliceRun(1, 1));
  ferry_stats_get(&after);
  window.reset();
  unmapper.join();
  ASSERT_NE(taken, nullptr);
  EXPECT_EQ(after.arena_bytes_reserved, before.arena_bytes_reserved) << "a new reservation, though free segments were being unmapped";
  EXPECT_TRUE(IsMapped(taken));
  TakeEverySliceAndRelease(taken);
}

// ReleasePage reads the segment's header after the page's slices are
// free, when another heap (whose list holds the segment) may have given it
// back: those reads must be inside a window.
// The calls of a test hook, and those made with no window open.
struct WindowCheck {
  std::atomic<int> seen{0};
  std::atomic<int> outside{0};
  void Note() {
    seen.fetch_add(1);
    if (SegmentReadWindowsOpen() == 0) outside.fetch_add(1);
  }
};
WindowCheck g_release_check;
void CheckTheReleaseIsInAWindow() { g_release_check.Note(); }

TEST(Unreserve, APageReleaseReadsTheHeaderOnlyInsideAWindow) {
  g_page_released_hook_for_test.store(CheckTheReleaseIsInAWindow);
  for (int round = 0; round < 4; ++round) {
    std::vector<void*> blocks;
    for (int k = 0; k < 2000; ++k) blocks.push_back(ferry_malloc(size_t{1} << (4 + k % 12)));
    for (void* p : blocks) ferry_free(p);
  }
  g_page_released_hook_for_test.store(nullptr);
  EXPECT_GT(g_release_check.seen.load(), 0) << "no page was released: the test measures nothing";
  EXPECT_EQ(g_release_check.outside.load(), 0);
}

// The first return to a full page posts it to its owner's inbox and then
// reads the page again, when whoever drains the inbox may have freed it and
// given its segment back: inside a window too.
WindowCheck g_post_check;
void CheckThePostIsInAWindow() { g_post_check.Note(); }

TEST(Unreserve, AFullPagePostedToItsOwnerIsReadAgainOnlyInsideAWindow) {
  std::vector<void*> blocks;
  for (int k = 0; k < 5000; ++k) blocks.push_back(ferry_malloc(64));
  g_return_chain_post_hook_for_test.store(CheckThePostIsInAWindow);
  std::thread freer([&] {
    for (size_t k = 0; k < blocks.size(); k += 2) ferry_free(blocks[k]);
    ferry_flush();
  });
  freer.join();
  g_return_chain_post_hook_for_test.store(nullptr);
  for (size_t k = 1; k < blocks.size(); k += 2) ferry_free(blocks[k]);
  EXPECT_GT(g_post_check.seen.load(), 0) << "no full page was posted: the test measures nothing";
  EXPECT_EQ(g_post_check.outside.load(), 0);
}

// A fork child has none of the windows its parent's other threads had open
// (one waiting at the fork for the arena lock, say): left counted, they
// kept every unmapping in the child from going ahead.
TEST(Unreserve, AForkChildCountsOnlyItsOwnThreadsWindows) {
  std::atomic<bool> open{false};
  std::atomic<bool> close{false};
  std::thread reader([&] {
    SegmentReadWindow window;
    open.store(true);
    while (!close.load()) std::this_thread::yield();
  });
  while (!open.load()) std::this_thread::yield();
  // The forking thread's own window (fork() from a signal handler that
  // interrupted a free) stays counted in the child until it closes there:
  // zeroed, its close wrapped the count below zero.
  std::optional<SegmentReadWindow> own;
  own.emplace();
  const pid_t pid = fork();
  if (pid == 0) {
    if (SegmentReadWindowsOpen() != 1) _exit(4);
    own.reset();
    if (SegmentReadWindowsOpen() != 0) _exit(5);
    Segment* segment = ArenaAllocateSegment(SliceRun(1, 1));
    if (segment == nullptr) _exit(2);
    uint64_t expected = 1 | SliceRun(1, 1);
    if (!segment->used_slices.compare_exchange_strong(expected, kSegmentDetached)) _exit(3);
    ArenaReleaseSegment(segment);
    _exit(ArenaUnreserveFreeSegments(0) >= kSegmentSize ? 0 : 1);
  }
  own.reset();
  close.store(true);
  reader.join();
  ASSERT_GT(pid, 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "the child died of signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0) << "1: nothing unmapped in the child; 2-3: setup; 4-5: the child's count "
                                       "is not its own thread's windows";
}

// Threads that allocate, free each other's blocks and give their emptied
// segments back, while another unmaps every free segment over and over: a
// segment must never be unmapped under a heap that holds it or a thread
// that still reads its header (a fault), nor handed out while it goes (a
// block that loses its bytes).
TEST(Unreserve, FreeSegmentsGoWhileThreadsTakeFreeAndGiveBackSegments) {
  constexpr int kWorkers = 3;
  constexpr size_t kBlocks = 3000;
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0};
  std::atomic<uint64_t> unmapped{0};
  // Worker t frees what worker t - 1 (mod kWorkers) handed it: remote frees
  // whose returns release pages in segments other heaps' lists hold.
  std::mutex handoff_lock;
  std::vector<void*> handoff[kWorkers];
  std::vector<std::thread> threads;
  for (int t = 0; t < kWorkers; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(static_cast<unsigned>(t) + 1);
      std::vector<unsigned char*> held;
      for (unsigned round = 1; !stop.load(std::memory_order_relaxed); ++round) {
        for (size_t k = 0; k < kBlocks; ++k) {
          const size_t size = size_t{16} << (rng() % 14);  // 16 B-128 KiB
          auto* p = static_cast<unsigned char*>(ferry_malloc(size));
          if (p == nullptr) {
            bad.fetch_add(1);
            return;
          }
          const auto tag = static_cast<unsigned char>(round * 7 + k);
          p[0] = tag;
          p[size - 1] = tag;
          held.push_back(p);
        }
        std::vector<void*> mine;
        {
          std::lock_guard<std::mutex> hold(handoff_lock);
          mine.swap(handoff[t]);
        }
        for (void* p : mine) ferry_free(p);
        std::vector<void*> theirs;
        for (size_t k = 0; k < held.size(); ++k) {
          unsigned char* p = held[k];
          const size_t size = ferry_usable_size(p);
          (void)size;
          const auto tag = static_cast<unsigned char>(round * 7 + k);
          if (p[0] != tag) bad.fetch_add(1);
          if (k % 2 == 0) {
            theirs.push_back(p);  // checked here, freed by the next worker
          } else {
            ferry_free(p);
          }
        }
        held.clear();
        {
          std::lock_guard<std::mutex> hold(handoff_lock);
          for (void* p : theirs) handoff[(t + 1) % kWorkers].push_back(p);
        }
        ferry_flush();
        if (round % 4 == 0) ferry_collect();  // emptied segments back to their arenas
      }
      ferry_flush();
    });
  }
  std::thread unmapper([&] {
    while (!stop.load(std::memory_order_relaxed)) {
      unmapped.fetch_add(ArenaUnreserveFreeSegments(0), std::memory_order_relaxed);
      std::this_thread::yield();
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  stop.store(true);
  for (std::thread& thread : threads) thread.join();
  unmapper.join();
  for (auto& list : handoff) {
    for (void* p : list) ferry_free(p);
  }
  ferry_collect();
  EXPECT_EQ(bad.load(), 0) << "a block lost its bytes, or an allocation failed";
  EXPECT_GT(unmapped.load(), 0u) << "nothing was unmapped: the test measures nothing";
}


}  // namespace
}  // namespace ferry

// Unit tests of segment and page arithmetic, the segment map, the free-list
// encoding and the page lists, reached through the allocator's own headers.
#include "allocator/segment.h"

#include <gtest/gtest.h>

#include <set>
#include <thread>
#include <vector>

#include "allocator/heap.h"
#include "ferry.h"

namespace ferry {
namespace {

int g_global = 0;

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

// Fills one page of a class, so the page is marked full, then lets another
// thread free one block: the push must clear the mark and post the page to
// the owner's inbox, and the owner's next allocations must find the block.
TEST(PageLists, RemoteFreeIntoAFullPagePostsItToTheOwnersInbox) {
  constexpr size_t kSize = 4096;
  std::vector<void*> blocks;
  void* first = ferry_malloc(kSize);
  const uintptr_t address = reinterpret_cast<uintptr_t>(first);
  Page* page = PageOf(SegmentOf(address), address);
  blocks.push_back(first);
  // One more than the page holds: the last one forces a new page and the
  // first page off its queue.
  for (uint32_t k = 1; k <= uint32_t{page->reserved}; ++k) blocks.push_back(ferry_malloc(kSize));
  ASSERT_EQ(page->in_full, 1);
  ASSERT_EQ(page->returned.load(), kReturnedFull);
  Heap* owner = tl_heap;
  std::thread([&] {
    ferry_free(first);
    ferry_flush();
  }).join();
  EXPECT_EQ(owner->inbox.load(), page);
  EXPECT_EQ(page->returned.load() & kReturnedFull, 0u);
  // The owner reuses the freed block once the current page runs dry.
  std::set<void*> fresh;
  for (uint32_t k = 0; k < uint32_t{page->reserved} + 2; ++k) fresh.insert(ferry_malloc(kSize));
  EXPECT_EQ(owner->inbox.load(), nullptr);
  EXPECT_TRUE(fresh.count(first)) << "the remotely freed block was not reused";
  for (void* p : blocks) {
    if (p != first) ferry_free(p);
  }
  for (void* p : fresh) ferry_free(p);
}

// The owner leaves a full page's lists alone (the pool may be working on
// them): its free goes onto `returned` like a remote one, which posts the
// page to the owner's own inbox, and the next slow path requeues it.
TEST(PageLists, LocalFreeIntoAFullPageComesBackThroughTheInbox) {
  constexpr size_t kSize = 8192;
  void* first = ferry_malloc(kSize);
  const uintptr_t address = reinterpret_cast<uintptr_t>(first);
  Page* page = PageOf(SegmentOf(address), address);
  std::vector<void*> blocks{first};
  for (uint32_t k = 1; k <= uint32_t{page->reserved}; ++k) blocks.push_back(ferry_malloc(kSize));
  ASSERT_EQ(page->in_full, 1);
  ferry_free(first);
  EXPECT_EQ(ReturnedChain(page->returned.load()), first);
  EXPECT_EQ(ReturnedCount(page->returned.load()), 1u);
  EXPECT_EQ(tl_heap->inbox.load(), page);
  // Once the current page runs dry, the slow path drains the inbox and the
  // page is back on its queue with the block.
  std::set<void*> fresh;
  for (uint32_t k = 0; k < 2 * uint32_t{page->reserved} + 2 && !fresh.count(first); ++k) {
    fresh.insert(ferry_malloc(kSize));
  }
  EXPECT_TRUE(fresh.count(first)) << "the block freed into a full page was not reused";
  EXPECT_EQ(tl_heap->inbox.load(), nullptr);
  EXPECT_EQ(page->in_full, 0);
  for (void* p : blocks) {
    if (p != first) ferry_free(p);
  }
  for (void* p : fresh) ferry_free(p);
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

}  // namespace
}  // namespace ferry

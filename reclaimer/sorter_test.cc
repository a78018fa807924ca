// Unit tests of the batch sorter: runs per page, one push per page,
// duplicates caught.
#include "reclaimer/sorter.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "allocator/heap.h"
#include "allocator/segment.h"
#include "ferry.h"

namespace ferry {
namespace {

Page* PageOfBlock(void* p) {
  const uintptr_t address = reinterpret_cast<uintptr_t>(p);
  return PageOf(SegmentOf(address), address);
}

// What a remote free does to a block before it joins a batch.
void MarkRemotelyFreed(void* p) {
  static_cast<Block*>(p)->next_encoded = RemoteFreeMark(PageOfBlock(p));
}

void FreeOneBlockTwiceInABatch() {
  void* p = ferry_malloc(64);
  void* q = ferry_malloc(64);
  MarkRemotelyFreed(p);
  MarkRemotelyFreed(q);
  void* batch[3] = {p, q, p};
  ReturnBatch(batch, 3);
}

void ReturnABlockThatIsAlreadyFree() {
  void* p = ferry_malloc(64);
  ferry_free(p);
  void* batch[1] = {p};
  ReturnBatch(batch, 1);
}

void ReturnABlockWrittenAfterItsFree() {
  void* p = ferry_malloc(64);
  MarkRemotelyFreed(p);
  *static_cast<uint64_t*>(p) = 42;  // a write after free
  void* batch[1] = {p};
  ReturnBatch(batch, 1);
}

TEST(Sorter, ReturnsEachPagesBlocksWithOneAtomicPush) {
  // Blocks of three sizes, so several pages, freed by another thread in a
  // shuffled order.
  std::vector<void*> blocks;
  for (size_t n : {32, 256, 2048}) {
    for (int k = 0; k < 300; ++k) blocks.push_back(ferry_malloc(n));
  }
  // One block of each page stays out, so that no page comes back whole
  // (that page would be freed, and its chain with it: see the next test).
  std::set<Page*> kept_pages;
  std::vector<void*> kept;
  std::erase_if(blocks, [&](void* p) {
    if (!kept_pages.insert(PageOfBlock(p)).second) return false;
    kept.push_back(p);
    return true;
  });
  std::set<Page*> pages;
  for (void* p : blocks) pages.insert(PageOfBlock(p));
  for (void* p : blocks) MarkRemotelyFreed(p);
  std::vector<void*> batch = blocks;
  std::shuffle(batch.begin(), batch.end(), std::mt19937(42));
  ferry_stats_t before, after;
  ferry_stats_get(&before);
  std::thread([&] { ReturnBatch(batch.data(), batch.size()); }).join();
  ferry_stats_get(&after);
  EXPECT_EQ(after.chains_pushed - before.chains_pushed, pages.size());
  EXPECT_EQ(after.blocks_returned - before.blocks_returned, blocks.size());
  // Every returned chain holds exactly the blocks of its page.
  std::set<void*> expected(blocks.begin(), blocks.end());
  size_t seen = 0;
  for (Page* page : pages) {
    const uintptr_t word = page->returned.load();
    for (Block* b = ReturnedChain(word); b != nullptr;
         b = DecodeNext(b->next_encoded)) {
      ASSERT_TRUE(expected.count(b));
      ASSERT_EQ(PageOfBlock(b), page);
      ++seen;
    }
  }
  EXPECT_EQ(seen, blocks.size());
  // The owner takes them back: once the blocks it carved ahead run out, its
  // allocations come from the returned chains.
  std::vector<void*> again;
  size_t reused = 0;
  for (size_t n : {32, 256, 2048}) {
    for (int k = 0; k < 20000 && reused < expected.size(); ++k) {
      void* p = ferry_malloc(n);
      again.push_back(p);
      reused += expected.count(p);
    }
  }
  EXPECT_EQ(reused, blocks.size());
  for (void* p : again) ferry_free(p);
  for (void* p : kept) ferry_free(p);
}

// A page's returned list holds its blocks last freed first, across batches:
// a short chain is handed out in that order, so a page's blocks go round in
// one direction, not in runs that jump back (prodcons, perf/RESULTS.md
// 2026-12-03: the consumer's reads of what the producer wrote cost less).
// The owner puts a chain of kOrderChainMin or more in address order as it takes it.
TEST(Sorter, APagesReturnedListHoldsItsBlocksLastFreedFirst) {
  constexpr size_t kSize = 96;
  std::vector<void*> blocks{ferry_malloc(kSize)};
  Page* page = PageOfBlock(blocks[0]);
  std::vector<void*> elsewhere;
  for (int k = 0; k < 10000 && blocks.size() < 41; ++k) {
    void* p = ferry_malloc(kSize);
    (PageOfBlock(p) == page ? blocks : elsewhere).push_back(p);
  }
  ASSERT_EQ(blocks.size(), 41u) << "no page with 41 blocks of " << kSize << " bytes free";
  void* kept = blocks.back();  // so that the page never comes back whole
  blocks.pop_back();
  for (void* p : blocks) MarkRemotelyFreed(p);
  std::shuffle(blocks.begin(), blocks.end(), std::mt19937(11));
  std::thread([&] {
    ReturnBatch(blocks.data(), 25);
    ReturnBatch(blocks.data() + 25, blocks.size() - 25);
  }).join();
  const uintptr_t word = page->returned.load();
  EXPECT_EQ(ReturnedCount(word), blocks.size());
  std::vector<void*> chain;
  for (Block* b = ReturnedChain(word); b != nullptr && chain.size() <= blocks.size();
       b = DecodeNext(b->next_encoded)) {
    chain.push_back(b);
  }
  EXPECT_EQ(chain, std::vector<void*>(blocks.rbegin(), blocks.rend()));
  ferry_free(kept);
  for (void* p : elsewhere) ferry_free(p);
}

// A run that brings back every block of a full page frees the page to its
// segment at once (no chain is left on it), and the owner's next page of
// that class is carved from free slices again.
TEST(Sorter, ReturningAWholeFullPageFreesIt) {
  constexpr size_t kSize = 2048;
  // Standby pages of the class that earlier tests of this thread left: the
  // first block's page, not fully carved, would hand the class on to their
  // carved blocks and never fill.
  ferry_free(ferry_malloc(kSize));
  ReleaseStandbyPagesForTest(tl_heap);
  std::vector<void*> blocks{ferry_malloc(kSize)};
  Page* page = PageOfBlock(blocks[0]);
  while (blocks.size() < page->reserved) blocks.push_back(ferry_malloc(kSize));
  void* next_page_block = ferry_malloc(kSize);  // marks `page` full
  ASSERT_EQ(page->in_full, 1);
  for (void* p : blocks) MarkRemotelyFreed(p);
  std::shuffle(blocks.begin(), blocks.end(), std::mt19937(7));
  ferry_stats_t before, after;
  ferry_stats_get(&before);
  std::thread([&] { ReturnBatch(blocks.data(), blocks.size()); }).join();
  ferry_stats_get(&after);
  EXPECT_EQ(after.chains_pushed - before.chains_pushed, 1u);
  EXPECT_EQ(after.pages_freed_by_returns - before.pages_freed_by_returns, 1u);
  EXPECT_EQ(page->kind, PageKind::kNone);
  EXPECT_EQ(page->returned.load(), 0u);
  ferry_free(next_page_block);
}

// More pages in one batch than the sorter keeps runs open for: every block
// still reaches its own page, and no block is lost or doubled.
TEST(Sorter, ABatchOverManyPagesReturnsEveryBlockToItsPage) {
  constexpr size_t kSize = 10 << 10;  // about eight to a page
  std::vector<void*> blocks;
  for (int k = 0; k < 1400; ++k) blocks.push_back(ferry_malloc(kSize));
  // Every other block: no page comes back whole, so all go to their owner.
  std::vector<void*> batch, kept;
  for (size_t k = 0; k < blocks.size(); ++k) (k % 2 == 0 ? batch : kept).push_back(blocks[k]);
  std::set<Page*> pages;
  for (void* p : batch) pages.insert(PageOfBlock(p));
  ASSERT_GT(pages.size(), 64u) << "the test wants more pages than the sorter's open runs";
  for (void* p : batch) MarkRemotelyFreed(p);
  std::shuffle(batch.begin(), batch.end(), std::mt19937(3));
  ferry_stats_t before, after;
  ferry_stats_get(&before);
  std::thread([&] { ReturnBatch(batch.data(), batch.size()); }).join();
  ferry_stats_get(&after);
  EXPECT_EQ(after.blocks_returned - before.blocks_returned, batch.size());
  EXPECT_GE(after.chains_pushed - before.chains_pushed, pages.size());
  // The owner gets every block back (its current page first).
  const std::set<void*> expected(batch.begin(), batch.end());
  std::set<void*> again;
  size_t reused = 0;
  for (int k = 0; k < 4000 && reused < expected.size(); ++k) {
    void* p = ferry_malloc(kSize);
    ASSERT_TRUE(again.insert(p).second) << "a block was handed out twice";
    reused += expected.count(p);
  }
  EXPECT_EQ(reused, expected.size());
  for (void* p : again) ferry_free(p);
  for (void* p : kept) ferry_free(p);
}

void FreeOneBlockTwiceApartInABatch() {
  void* p = ferry_malloc(64);
  void* q = ferry_malloc(64);
  void* r = ferry_malloc(64);
  MarkRemotelyFreed(p);
  MarkRemotelyFreed(q);
  MarkRemotelyFreed(r);
  void* batch[4] = {p, q, r, p};
  ReturnBatch(batch, 4);
}

TEST(SorterDeathTest, ReportsTheSameBlockTwiceApartInABatch) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(FreeOneBlockTwiceApartInABatch(), "ferry: free\\(0x[0-9a-f]+\\): double free");
}

// Two threads freed one block at the same moment (both marks written, both
// batches hold it) and two reclaimers return the batches at once: the CAS
// that claims the block lets exactly one through, and the other reports.
void ReturnOneBlockInTwoBatchesAtOnce() {
  std::vector<void*> blocks;
  for (int k = 0; k < 64; ++k) blocks.push_back(ferry_malloc(64));
  for (void* p : blocks) MarkRemotelyFreed(p);
  std::vector<void*> first(blocks.begin(), blocks.begin() + 33);
  std::vector<void*> second(blocks.begin() + 32, blocks.end());  // blocks[32] in both
  std::atomic<int> ready{0};
  auto run = [&](std::vector<void*>* batch) {
    ready.fetch_add(1);
    while (ready.load() < 2) {
    }
    ReturnBatch(batch->data(), batch->size());
  };
  std::thread a(run, &first), b(run, &second);
  a.join();
  b.join();
}

TEST(SorterDeathTest, ReportsOneBlockInTwoBatchesReturnedAtOnce) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(ReturnOneBlockInTwoBatchesAtOnce(), "ferry: free\\(0x[0-9a-f]+\\): double free");
}

TEST(SorterDeathTest, ReportsTheSameBlockTwiceInABatch) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(FreeOneBlockTwiceInABatch(), "ferry: free\\(0x[0-9a-f]+\\): double free");
}

TEST(SorterDeathTest, ReportsABlockWrittenAfterItsRemoteFree) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(ReturnABlockWrittenAfterItsFree(), "ferry: free\\(0x[0-9a-f]+\\): double free \\(or a write after free\\)");
}

TEST(SorterDeathTest, ReportsABlockThatIsAlreadyFree) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(ReturnABlockThatIsAlreadyFree(), "ferry: free\\(0x[0-9a-f]+\\): double free");
}

}  // namespace
}  // namespace ferry

// crowded_test.cc — the pool's watch for crowded CPUs (pool.cc): while
// handing batches to the pool makes the program's threads lose their CPUs,
// offers are turned away for a hold that doubles on each crowded trial, and
// the freeing threads apply their batches; FERRY_INLINE_WHEN_BUSY=0 turns
// the watch off. The watch runs on a clock and a count of involuntary
// context switches the test supplies, so every step is deterministic.
//
// Runs with FERRY_RECLAIMERS=1, as crowded_test (the watch on, its default)
// and crowded_test_off (FERRY_INLINE_WHEN_BUSY=0).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "common/os.h"
#include "ferry.h"
#include "reclaimer/pool.h"

namespace ferry {
namespace {

constexpr uint64_t kMs = 1'000'000;

std::atomic<uint64_t> g_now{0};
std::atomic<uint64_t> g_preemptions{0};
std::atomic<bool> g_count_fails{false};
uint64_t FakeNow() { return g_now.load(); }
bool FakePreemptions(uint64_t* count) {
  *count = g_preemptions.load();
  return !g_count_fails.load();
}

bool WatchOn() {
  const char* value = getenv("FERRY_INLINE_WHEN_BUSY");
  return value == nullptr || strcmp(value, "0") != 0;
}

// Preemptions that make one 10 ms sample crowded, and that leave it clean.
uint64_t Crowding() {
  return 2 * kCrowdedPreemptionsPerReclaimer * static_cast<uint64_t>(PoolWatchedReclaimers()) / 100;
}

class CrowdedTest : public testing::Test {
 protected:
  void SetUp() override {
    ferry_free(ferry_malloc(1));  // ferry reads its settings on its first allocation
    g_now = 1000 * kMs;
    g_preemptions = 0;
    g_count_fails = false;
    PoolSetLoadSourcesForTest(FakeNow, FakePreemptions);
  }
  void TearDown() override { PoolSetLoadSourcesForTest(nullptr, nullptr); }

  // Moves the clock to `ms` after the start, with `preemptions` more since
  // the last step, and asks the watch.
  bool At(uint64_t ms, uint64_t preemptions) {
    g_now = 1000 * kMs + ms * kMs;
    g_preemptions += preemptions;
    return PoolCpusCrowded();
  }
};

void FreeBlocksOfAnotherThread(size_t count, size_t size);
ferry_stats_t StatsOnceEveryBatchIsCounted();

bool TbbBackend() {
  const char* value = getenv("FERRY_RECLAIMER_BACKEND");
  return value != nullptr && strcmp(value, "tbb") == 0;
}

// oneTBB launches a worker it has not started yet inside enqueue, on the
// calling thread: a batch published where no thread may be created (here by
// a thread as it exits; also a free from inside the loader or libc) is
// applied by that thread on that backend, never enqueued. ferry's own
// threads only take it from a queue. First in the file, while the watch is
// calm.
TEST_F(CrowdedTest, ABatchPublishedAsAThreadExitsGoesToOneTbbNever) {
  At(0, 0);
  FreeBlocksOfAnotherThread(8 * 256, 64);
  ferry_flush();
  const ferry_stats_t before = StatsOnceEveryBatchIsCounted();
  ASSERT_GT(before.batches_pooled, 0u) << "the pool takes no batches: the test measures nothing";
  std::vector<void*> blocks(100);
  for (void*& p : blocks) p = ferry_malloc(64);
  std::thread([&] {
    for (void* p : blocks) ferry_free(p);  // remote, fewer than a batch: published at exit
  }).join();
  const ferry_stats_t after = StatsOnceEveryBatchIsCounted();
  EXPECT_EQ(after.batches_published - before.batches_published, 1u);
  if (TbbBackend()) {
    EXPECT_EQ(after.batches_inline - before.batches_inline, 1u);
    EXPECT_EQ(after.batches_pooled, before.batches_pooled) << "enqueued from an exiting thread";
  } else {
    EXPECT_EQ(after.batches_pooled - before.batches_pooled, 1u);
  }
  EXPECT_EQ(after.blocks_returned, after.remote_frees);
}

TEST_F(CrowdedTest, HoldsOffTheCrowdedPoolAndDoublesTheHoldOnEachCrowdedTrial) {
  if (!WatchOn()) GTEST_SKIP() << "FERRY_INLINE_WHEN_BUSY=0: CrowdedTest.OffMeansNeverCrowded";
  const uint64_t crowd = Crowding();
  const uint64_t calm = Crowding() / 4;
  ASSERT_GT(calm, 0u);
  EXPECT_FALSE(At(0, 0)) << "the first sample only sets the baseline";
  EXPECT_FALSE(At(10, calm)) << "a calm sample";
  EXPECT_FALSE(At(15, 100 * crowd)) << "no sample before 10 ms have passed";
  EXPECT_TRUE(At(20, 0)) << "the sample covering the crowding turns offers away";
  // Hold: 20 ms from the sample at 20 ms; a sample meanwhile changes nothing.
  EXPECT_TRUE(At(30, 0));
  EXPECT_FALSE(At(40, 0)) << "the hold is over: the pool gets a trial";
  EXPECT_TRUE(At(50, crowd)) << "a crowded trial";
  // The hold doubled: 40 ms from 50.
  EXPECT_TRUE(At(80, 0));
  EXPECT_FALSE(At(90, 0));
  EXPECT_TRUE(At(100, crowd)) << "crowded again";
  // 80 ms from 100.
  EXPECT_TRUE(At(170, 0));
  EXPECT_FALSE(At(180, 0));
  EXPECT_FALSE(At(190, calm)) << "a calm trial: the pool keeps the batches";
  EXPECT_TRUE(At(200, crowd));
  // The calm trial started the hold over at 20 ms.
  EXPECT_TRUE(At(210, 0));
  EXPECT_FALSE(At(220, 0));
}

TEST_F(CrowdedTest, TheHoldStopsDoublingAtItsCeiling) {
  if (!WatchOn()) GTEST_SKIP();
  const uint64_t crowd = Crowding();
  At(0, 0);
  uint64_t t = 10;
  uint64_t hold_ms = 20;
  ASSERT_TRUE(At(t, crowd));
  for (int spell = 0; spell < 10; ++spell) {
    EXPECT_TRUE(At(t + hold_ms - 10, 0)) << "spell " << spell;
    EXPECT_FALSE(At(t + hold_ms, 0)) << "spell " << spell;
    t += hold_ms + 10;
    ASSERT_TRUE(At(t, crowd));
    hold_ms = hold_ms * 2 > 640 ? 640 : hold_ms * 2;
  }
  EXPECT_EQ(hold_ms, 640u);
  EXPECT_TRUE(At(t + 630, 0));
  EXPECT_FALSE(At(t + 640, 0));
}

// A window much longer than the sampling period (offers were rare) or a
// count the OS would not give only start a new window.
TEST_F(CrowdedTest, LongWindowsAndFailedCountsJudgeNothing) {
  if (!WatchOn()) GTEST_SKIP();
  const uint64_t crowd = Crowding();
  At(0, 0);
  EXPECT_FALSE(At(300, 30 * crowd)) << "a 300 ms window";
  EXPECT_TRUE(At(310, crowd)) << "the next 10 ms are judged";
  EXPECT_FALSE(At(330, 0));  // the hold's end: a trial
  g_count_fails = true;
  EXPECT_FALSE(At(340, 100 * crowd)) << "no count";
  g_count_fails = false;
  EXPECT_FALSE(At(350, 0)) << "the failed count left no baseline";
  EXPECT_TRUE(At(360, crowd));
}

// The bar counts the reclaimers that would preempt (FERRY_RECLAIMERS=1
// here), not the CPUs: on 16 CPUs a bar of 500 a second per CPU let four
// reclaimers keep taking CPUs from 16 busy threads (pool.cc).
TEST(CrowdedBar, ScalesWithTheReclaimersNotTheCpus) {
  ferry_free(ferry_malloc(1));
  EXPECT_EQ(PoolWatchedReclaimers(), 1) << "FERRY_RECLAIMERS=1, on any number of CPUs";
  const uint64_t second = 1000 * kMs;
  EXPECT_TRUE(CpusCrowded(kCrowdedPreemptionsPerReclaimer + 1, second, 1));
  EXPECT_FALSE(CpusCrowded(kCrowdedPreemptionsPerReclaimer, second, 1));
  EXPECT_FALSE(CpusCrowded(kCrowdedPreemptionsPerReclaimer + 1, second, 2));
  EXPECT_TRUE(CpusCrowded(4 * kCrowdedPreemptionsPerReclaimer + 1, second, 4));
  EXPECT_FALSE(CpusCrowded(4 * kCrowdedPreemptionsPerReclaimer + 1, 2 * second, 4)) << "half the rate";
}

// 750 a second with one reclaimer is crowded; the bar of 500 a second per
// usable CPU called it calm on two CPUs or more.
TEST_F(CrowdedTest, OneReclaimerPreemptingLessThanOncePerCpuIsCrowdedStill) {
  if (!WatchOn()) GTEST_SKIP();
  if (OsUsableCpus() < 2) GTEST_SKIP() << "one CPU: the bars agree";
  ASSERT_EQ(PoolWatchedReclaimers(), 1);
  At(0, 0);
  EXPECT_TRUE(At(20, 15)) << "15 in 20 ms: 750 a second";
}

TEST_F(CrowdedTest, OffMeansNeverCrowded) {
  if (WatchOn()) GTEST_SKIP() << "the watch is on (FERRY_INLINE_WHEN_BUSY unset or 1)";
  At(0, 0);
  for (uint64_t t = 10; t < 200; t += 10) EXPECT_FALSE(At(t, 1000 * Crowding()));
}

// Blocks of `size` made by another thread, freed here: every free remote.
void FreeBlocksOfAnotherThread(size_t count, size_t size) {
  std::vector<void*> blocks(count);
  std::thread([&] {
    for (void*& p : blocks) {
      p = ferry_malloc(size);
      memset(p, 0x5a, size);
    }
  }).join();
  for (void* p : blocks) ferry_free(p);
}

// The statistics once every published batch is counted: a reclaimer (or a
// oneTBB task) counts a batch just after it is applied, so just after the
// flush that waited for it.
ferry_stats_t StatsOnceEveryBatchIsCounted() {
  ferry_stats_t stats;
  for (int i = 0; i < 5000; ++i) {
    ferry_stats_get(&stats);
    if (stats.batches_pooled + stats.batches_inline == stats.batches_published) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return stats;
}

// End to end: remote frees while crowded are applied by the freeing thread;
// once calm again they go to the pool; the flush keeps its promise either way.
TEST_F(CrowdedTest, CrowdedBatchesAreAppliedByTheFreeingThread) {
  // The pool starts and takes batches while calm.
  At(0, 0);
  FreeBlocksOfAnotherThread(8 * 256, 64);
  ferry_flush();
  const ferry_stats_t before = StatsOnceEveryBatchIsCounted();
  ASSERT_EQ(before.reclaimer_threads, 1u);
  ASSERT_GT(before.batches_pooled, 0u);

  At(10, 0);
  ASSERT_EQ(At(20, Crowding()), WatchOn());
  FreeBlocksOfAnotherThread(8 * 256, 64);
  ferry_flush();
  ferry_stats_t crowded;
  ferry_stats_get(&crowded);
  const uint64_t published = crowded.batches_published - before.batches_published;
  EXPECT_GE(published, 8u);
  EXPECT_EQ(crowded.blocks_returned, crowded.remote_frees) << "the flush returned every block";
  if (WatchOn()) {
    EXPECT_EQ(crowded.batches_pooled, before.batches_pooled) << "the pool got batches while crowded";
    EXPECT_EQ(crowded.batches_inline - before.batches_inline, published);
  } else {
    EXPECT_GT(crowded.batches_pooled, before.batches_pooled) << "the watch is off";
  }

  // The hold ends; a calm trial keeps the pool at work.
  At(100, 0);
  At(110, 0);
  FreeBlocksOfAnotherThread(8 * 256, 64);
  ferry_flush();
  ferry_stats_t calm;
  ferry_stats_get(&calm);
  EXPECT_GT(calm.batches_pooled, crowded.batches_pooled);
  EXPECT_EQ(calm.blocks_returned, calm.remote_frees);
}

// While the offers are turned away the pool's housekeeping still runs: free
// slices go back to the OS. ferry's threads run it on their own timer; the
// oneTBB backend has none and sends it along with offers, crowded or not
// (crowded_test_tbb; before 2026-12-02 it purged nothing while crowded).
TEST_F(CrowdedTest, TheHousekeepingGoesOnWhileCrowded) {
  if (!WatchOn()) GTEST_SKIP();
  At(0, 0);
  FreeBlocksOfAnotherThread(8 * 256, 64);
  ferry_flush();
  StatsOnceEveryBatchIsCounted();  // none of those counted late, below
  At(10, 0);
  ASSERT_TRUE(At(20, Crowding()));
  // Pages of this thread emptied: their slices are free and committed.
  std::vector<void*> blocks;
  for (int i = 0; i < 2048; ++i) blocks.push_back(ferry_malloc(3000));
  for (void* p : blocks) ferry_free(p);
  ferry_stats_t before;
  ferry_stats_get(&before);
  ferry_stats_t after = before;
  for (int i = 0; i < 200 && after.bytes_decommitted == before.bytes_decommitted; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    FreeBlocksOfAnotherThread(256, 64);  // a batch offered, and turned away
    ferry_stats_get(&after);
  }
  EXPECT_TRUE(PoolCpusCrowded()) << "the hold ended: the test measures nothing";
  EXPECT_GT(after.bytes_decommitted, before.bytes_decommitted)
      << "no housekeeping ran in 2 s of a crowded pool";
  EXPECT_EQ(after.batches_pooled, before.batches_pooled) << "the pool got batches while crowded";
}

}  // namespace
}  // namespace ferry

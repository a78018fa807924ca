// flush_wake_test.cc — ferry_flush does not wait out a reclaimer's idle
// tick. An offer joins the flush epoch before it pushes its batch; a flush
// that begins in between wakes the reclaimers (which find nothing yet and
// sleep again) and waits for that batch, so the offer must wake one itself
// once it has pushed (pool.cc, PoolOffer). The test holds an offer in that
// window (PoolSetOfferHookForTest) while a flush starts, with an idle tick
// of 20 s: a flush that relied on the tick took 20 s.
//
// Runs with FERRY_RECLAIMERS=1, FERRY_BATCH=16 and the crowded-CPUs watch
// off (a crowded watch would apply the batch inline, with no offer to hold).
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "ferry.h"
#include "tests/pool_test_util.h"
#include "reclaimer/pool.h"

namespace ferry {
namespace {

constexpr size_t kBatch = 16;  // FERRY_BATCH in BUILD
constexpr size_t kSize = 48;
constexpr int kIdleTickMs = 20'000;

std::atomic<int> g_hold{0};  // 1: the next offer waits in the window; 2: one does
std::atomic<int> g_release{0};

void HoldOneOffer() {
  int expected = 1;
  if (!g_hold.compare_exchange_strong(expected, 2)) return;
  while (g_release.load() == 0) usleep(1000);
}

// One batch's worth of blocks, owned by the calling thread.
std::vector<void*> AllocatedHere() {
  std::vector<void*> blocks(kBatch);
  for (void*& p : blocks) {
    p = ferry_malloc(kSize);
    EXPECT_NE(p, nullptr);
  }
  return blocks;
}

uint64_t BlocksReturned() {
  ferry_stats_t stats;
  ferry_stats_get(&stats);
  return stats.blocks_returned;
}

// Polls `condition` every millisecond for up to 10 s.
template <typename Condition>
bool WaitFor(Condition condition) {
  return ferry_test::WaitFor(condition, std::chrono::seconds(10), std::chrono::milliseconds(1));
}

TEST(FlushWake, AFlushThatStartsWhileAnOfferIsBetweenItsEpochAndItsPushEndsWhenThatBatchIsApplied) {
  g_hold = 0;
  g_release = 0;
  // The pool runs (its first batch starts it) and everything so far is home.
  std::vector<void*> first = AllocatedHere();
  std::thread([&] {
    for (void* p : first) ferry_free(p);
  }).join();
  ferry_flush();
  ASSERT_EQ(PoolThreadCount(), 1);

  PoolSetIdleTickForTest(kIdleTickMs);
  PoolSetOfferHookForTest(HoldOneOffer);
  std::vector<void*> blocks = AllocatedHere();
  const uint64_t returned_before = BlocksReturned();
  g_hold = 1;
  std::thread freer([&] {
    for (void* p : blocks) ferry_free(p);  // the last free offers the batch, held in the window
  });
  if (!WaitFor([] { return g_hold.load() == 2; })) {
    g_release = 1;
    freer.join();
    FAIL() << "no offer reached the hook (was the batch applied inline?)";
  }

  std::atomic<int64_t> flush_ms{-1};
  std::thread flusher([&] {
    const auto begin = std::chrono::steady_clock::now();
    ferry_flush();
    flush_ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - begin)
                   .count();
  });
  // The flush has changed the epoch and woken the reclaimer, which found no
  // batch and went back to sleep; only then does the held offer push.
  EXPECT_TRUE(WaitFor(PoolFlushWaitsWhileReclaimersSleepForTest));
  usleep(50'000);  // into its futex wait, past its last look at the queue
  EXPECT_EQ(flush_ms.load(), -1) << "the flush returned while a batch of its epoch was unapplied";
  g_release = 1;
  freer.join();
  flusher.join();
  PoolSetOfferHookForTest(nullptr);
  PoolSetIdleTickForTest(0);

  EXPECT_LT(flush_ms.load(), kIdleTickMs / 4) << "the flush waited for the reclaimer's idle tick";
  EXPECT_EQ(BlocksReturned() - returned_before, kBatch);
}

}  // namespace
}  // namespace ferry

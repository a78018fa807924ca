// fork_hold_test.cc — a pool that has not started when fork() begins stays
// unstarted until the fork is done (PoolForkPrepare, pool.cc). Started
// between the prepare and parent handlers (another thread's allocation slow
// path, flush or collect, while the forking thread waits for the duty
// turn), its reclaimers would apply batches across the fork unquiesced, and
// the child would lose a batch half applied. The handlers are called here
// directly, without a fork, so that the other thread's start lands in that
// window every time.
//
// Runs with FERRY_RECLAIMERS=1.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "ferry.h"
#include "reclaimer/pool.h"

namespace ferry {
namespace {

void AskForThePool() {
  g_pool_start_requested.store(1, std::memory_order_relaxed);
  PoolMaybeStart();
}

bool PoolRunsWithin(std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (PoolThreadCount() == 0) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

TEST(PoolFork, APoolAskedForWhileForkIsUnderWayStartsOnlyAfterIt) {
  // Its first run in a process starts the pool (which may stop again once
  // idle): --gtest_repeat's later runs have nothing to test. Checked before
  // the allocation below, so that a pool started by it still fails.
  PoolStats at_start;
  PoolStatsGet(&at_start);
  if (at_start.starts != 0) GTEST_SKIP() << "needs a process whose pool never started (it runs once a process)";
  ferry_free(ferry_malloc(1));  // ferry reads its settings on its first allocation
  ASSERT_EQ(PoolThreadCount(), 0) << "the pool started before any remote free";
  PoolForkPrepare();
  std::thread other(AskForThePool);  // as an allocation slow path after an offer would
  other.join();
  const int during = PoolThreadCount();
  PoolStats stats;
  PoolStatsGet(&stats);
  const uint64_t starts_during = stats.starts;
  PoolForkParent();
  EXPECT_EQ(during, 0) << "the pool started between fork's prepare and parent handlers";
  EXPECT_EQ(starts_during, 0u);
  // The request made during the fork still stands: the next allocation
  // slow path (or flush) after it starts the pool.
  PoolMaybeStart();
  EXPECT_TRUE(PoolRunsWithin(std::chrono::seconds(5))) << "the request made during the fork was lost";
  PoolStatsGet(&stats);
  EXPECT_EQ(stats.starts, 1u);
}

}  // namespace
}  // namespace ferry

// stats_test.cc — the sharded counters add up, under threads, to what was
// counted, and threads up to the number of shards each count in their own.
#include "common/stats.h"

#include <gtest/gtest.h>

#include <set>
#include <thread>
#include <vector>

namespace ferry {
namespace {

TEST(Stats, ShardedCountsFromManyThreadsSumToWhatWasCounted) {
  // More threads than shards, so that some share one: their adds must not
  // be lost (an add that is not atomic would lose some under threads, and
  // under ThreadSanitizer report a race).
  constexpr int kThreads = static_cast<int>(kCounterShards) + 8;
  constexpr int kAdds = 20000;
  const int64_t before = CounterSum(Counter::chains_pushed);
  const int64_t other_before = CounterSum(Counter::pages_made);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t] {
      for (int i = 0; i < kAdds; ++i) CounterAdd(Counter::chains_pushed, 1 + (t & 1));
    });
  }
  for (std::thread& thread : threads) thread.join();
  const int64_t odd = kThreads / 2, even = kThreads - odd;
  EXPECT_EQ(CounterSum(Counter::chains_pushed) - before, kAdds * (even * 1 + odd * 2));
  EXPECT_EQ(CounterSum(Counter::pages_made), other_before);
}

TEST(Stats, ThreadsCountingTogetherEachTakeAShardOfTheirOwn) {
  // Threads that share a shard's cache line slow each other down (the
  // reason for the shards); up to kCounterShards threads never do.
  constexpr int kThreads = 8;
  std::vector<uint32_t> shards(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t, &shards] {
      CounterAdd(Counter::pages_posted, 1);
      shards[t] = tl_counter_shard;
    });
  }
  for (std::thread& thread : threads) thread.join();
  const std::set<uint32_t> distinct(shards.begin(), shards.end());
  EXPECT_EQ(distinct.size(), shards.size());
  EXPECT_EQ(distinct.count(0), 0u);
  static_assert(sizeof(CounterShard) % 128 == 0 && alignof(CounterShard) == 128,
                "each shard on a pair of cache lines of its own");
}

TEST(Stats, SingleCountersStayOneAtomicEach) {
  const int64_t before = g_counters.huge_bytes_live.load();
  CounterAdd(g_counters.huge_bytes_live, 4096);
  EXPECT_EQ(g_counters.huge_bytes_live.load() - before, 4096);
  CounterAdd(g_counters.huge_bytes_live, -4096);
}

}  // namespace
}  // namespace ferry

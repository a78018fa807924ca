// stats.cc — storage for the counters listed in stats.h.
#include "common/stats.h"

namespace ferry {

constinit Counters g_counters;
constinit CounterShard g_counter_shards[kCounterShards];
__thread uint32_t tl_counter_shard __attribute__((tls_model("initial-exec"))) = 0;

namespace {
constinit std::atomic<uint32_t> g_next_counter_shard{0};
}  // namespace

// Async-signal-safe: a signal that counts between the load and the store
// on this thread takes a shard of its own, and the store keeps either.
uint32_t TakeCounterShard() {
  const uint32_t shard =
      g_next_counter_shard.fetch_add(1, std::memory_order_relaxed) % kCounterShards + 1;
  tl_counter_shard = shard;
  return shard;
}

int64_t CounterSum(Counter counter) {
  int64_t sum = 0;
  for (const CounterShard& shard : g_counter_shards) {
    sum += shard.counts[static_cast<size_t>(counter)].load(std::memory_order_relaxed);
  }
  return sum;
}

}  // namespace ferry

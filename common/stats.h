// stats.h — ferry's counters, listed once. They are bumped only on slow
// paths (never on the malloc/free fast path). Most count events that each
// thread's slow paths hit at their own pace (a page emptied, a batch
// published): those are split into per-thread shards, each on cache lines
// of its own, since one shared atomic made two threads that empty pages
// often take as long as one (a review's program of 64 threads freeing into
// pages of two blocks: 1.9x mimalloc's time, 1.0x without the counter).
// The few that ferry reads for its own decisions, and batches_inline, whose
// release orders a snapshot, are single atomics. One, counted on a path a
// malloc/free loop of one block takes at every free, is a field of each
// heap that its owner bumps without a locked instruction (PerHeap: summed
// over the heaps when read, allocator/heap.cc). The list mirrors
// ferry_stats_t.
#ifndef FERRY_COMMON_STATS_H_
#define FERRY_COMMON_STATS_H_

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "common/base.h"

namespace ferry {

// X(field, kind, description); kind is Sharded, Single or PerHeap.
#define FERRY_COUNTERS(X)                                                           \
  X(heaps_created, Sharded, "thread heaps made from OS memory")                     \
  X(heaps_abandoned, Sharded, "heaps left by exited threads")                       \
  X(heaps_reused, Sharded, "abandoned heaps taken over by new threads")             \
  X(segments_mapped, Sharded, "segments taken from arenas")                         \
  X(segments_released, Sharded, "segments given back to their arena")               \
  X(segments_live, Single, "segments in use now")                                   \
  X(arena_bytes_reserved, Single, "address space reserved for arenas")              \
  X(pages_made, Sharded, "pages carved from segments")                              \
  X(pages_released, Sharded, "empty pages given back to segments")                  \
  X(large_allocs, Sharded, "allocations on their own run of pages")                 \
  X(huge_allocs, Sharded, "allocations on their own OS mapping")                    \
  X(huge_frees, Sharded, "huge blocks freed")                                       \
  X(huge_bytes_live, Single, "bytes mapped for live huge blocks")                   \
  X(local_frees_slow, PerHeap, "local frees that took the slow path")               \
  X(remote_frees, Sharded, "frees of another thread's block")                       \
  X(batches_published, Sharded, "remote-free batches handed on")                    \
  X(batches_inline, Single, "batches sorted by the freeing thread")                 \
  X(blocks_returned, Sharded, "blocks handed back to their owning pages")           \
  X(chains_pushed, Sharded, "atomic pushes onto pages' returned lists")             \
  X(pages_posted, Sharded, "full pages posted to their owner's inbox")              \
  X(pages_freed_by_returns, Sharded, "full pages freed by the return of their last blocks") \
  X(abandoned_collections, Sharded, "times the pool collected an abandoned heap")   \
  X(bytes_decommitted, Sharded, "bytes given back to the OS (MADV_DONTNEED)")       \
  X(huge_reused, Sharded, "huge blocks placed in a mapping freed before")           \
  X(huge_bytes_cached, Single, "bytes of freed huge mappings kept for reuse")       \
  X(bytes_unmapped, Sharded, "bytes of huge mappings given back to the OS (munmap)") \
  X(bytes_uncharged, Sharded, "bytes of segments made inaccessible again, uncharged")

#define FERRY_IF_Sharded(...) __VA_ARGS__
#define FERRY_IF_Single(...)
#define FERRY_UNLESS_Sharded(...)
#define FERRY_UNLESS_Single(...) __VA_ARGS__
#define FERRY_IF_PerHeap(...)
#define FERRY_UNLESS_PerHeap(...)

// The sharded counters, by name: CounterAdd(Counter::pages_made, 1).
enum class Counter : uint8_t {
#define FERRY_COUNTER_ENUM(field, kind, description) FERRY_IF_##kind(field, )
  FERRY_COUNTERS(FERRY_COUNTER_ENUM)
#undef FERRY_COUNTER_ENUM
  kCount
};

// The single ones: CounterAdd(g_counters.huge_bytes_live, n), or a load.
struct Counters {
#define FERRY_COUNTER_FIELD(field, kind, description) \
  FERRY_UNLESS_##kind(std::atomic<int64_t> field{0};)
  FERRY_COUNTERS(FERRY_COUNTER_FIELD)
#undef FERRY_COUNTER_FIELD
};

// The process-wide single counters (static storage, zero before any code runs).
extern Counters g_counters;

// More shards than a machine's threads that are likely to hit slow paths
// together. Threads take them in turn at their first count, so two threads
// share one only where 64 others took shards between them (threads that
// come and go use them up in a round and start again).
inline constexpr size_t kCounterShards = 64;

// 128 bytes apart at least: CPUs that fetch lines in adjacent pairs would
// otherwise still tie two threads' shards together.
struct alignas(128) CounterShard {
  std::atomic<int64_t> counts[static_cast<size_t>(Counter::kCount)] = {};
};

extern CounterShard g_counter_shards[kCounterShards];

// The calling thread's shard plus one; 0 until its first count.
extern __thread uint32_t tl_counter_shard __attribute__((tls_model("initial-exec")));

uint32_t TakeCounterShard();

inline void CounterAdd(Counter counter, int64_t delta) {
  uint32_t shard = tl_counter_shard;
  if (FERRY_UNLIKELY(shard == 0)) shard = TakeCounterShard();
  // Atomic still: past kCounterShards threads share a shard.
  g_counter_shards[shard - 1].counts[static_cast<size_t>(counter)].fetch_add(
      delta, std::memory_order_relaxed);
}

inline void CounterAdd(std::atomic<int64_t>& counter, int64_t delta) {
  counter.fetch_add(delta, std::memory_order_relaxed);
}

// The sum of a sharded counter's shards. Each shard's count is read once;
// counts added meanwhile may be missed, and counts that happened before
// the caller's acquire of what followed them are not.
int64_t CounterSum(Counter counter);

}  // namespace ferry

#endif  // FERRY_COMMON_STATS_H_

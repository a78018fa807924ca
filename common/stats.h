// stats.h — ferry's counters, listed once. Each is a process-wide atomic
// bumped only on slow paths (never on the malloc/free fast path), so the
// counters cost nothing where speed matters. The list mirrors ferry_stats_t.
#ifndef FERRY_COMMON_STATS_H_
#define FERRY_COMMON_STATS_H_

#include <atomic>
#include <cstdint>

namespace ferry {

// X(field, description)
#define FERRY_COUNTERS(X)                                                  \
  X(heaps_created, "thread heaps made from OS memory")                     \
  X(heaps_abandoned, "heaps left by exited threads")                       \
  X(heaps_reused, "abandoned heaps taken over by new threads")             \
  X(segments_mapped, "segments taken from arenas")                         \
  X(segments_released, "segments given back to their arena")               \
  X(segments_live, "segments in use now")                                  \
  X(arena_bytes_reserved, "address space reserved for arenas")             \
  X(pages_made, "pages carved from segments")                              \
  X(pages_released, "empty pages given back to segments")                  \
  X(large_allocs, "allocations on their own run of pages")                 \
  X(huge_allocs, "allocations on their own OS mapping")                    \
  X(huge_frees, "huge blocks freed")                                       \
  X(huge_bytes_live, "bytes mapped for live huge blocks")                  \
  X(local_frees_slow, "local frees that took the slow path")               \
  X(remote_frees, "frees of another thread's block")                       \
  X(batches_published, "remote-free batches handed on")                    \
  X(batches_inline, "batches sorted by the freeing thread")                \
  X(blocks_returned, "blocks handed back to their owning pages")           \
  X(chains_pushed, "atomic pushes onto pages' returned lists")             \
  X(pages_posted, "full pages posted to their owner's inbox")              \
  X(pages_freed_by_returns, "full pages freed by the return of their last blocks") \
  X(abandoned_collections, "times the pool collected an abandoned heap")   \
  X(bytes_decommitted, "bytes given back to the OS (MADV_DONTNEED)")      \
  X(huge_reused, "huge blocks placed in a mapping freed before")           \
  X(huge_bytes_cached, "bytes of freed huge mappings kept for reuse")     \
  X(bytes_unmapped, "bytes of huge mappings given back to the OS (munmap)")

struct Counters {
#define FERRY_COUNTER_FIELD(field, description) std::atomic<int64_t> field{0};
  FERRY_COUNTERS(FERRY_COUNTER_FIELD)
#undef FERRY_COUNTER_FIELD
};

// The process-wide counters (static storage, zero before any code runs).
extern Counters g_counters;

inline void CounterAdd(std::atomic<int64_t>& counter, int64_t delta) {
  counter.fetch_add(delta, std::memory_order_relaxed);
}

}  // namespace ferry

#endif  // FERRY_COMMON_STATS_H_

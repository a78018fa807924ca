// batch.h — a batch of remote frees, the unit the pool moves around.
//
// Each heap owns a few batches, in its own OS memory (kBatchesPerHeap). The
// heap fills one; when it is full the heap hands it to the pool and fills a
// spare. The pool sorts the batch, returns its blocks, and marks it free
// again; only then does the heap reuse it. A heap with no spare left sorts
// the full batch itself (inline), so a freeing thread never waits.
#ifndef FERRY_RECLAIMER_BATCH_H_
#define FERRY_RECLAIMER_BATCH_H_

#include <atomic>
#include <cstdint>

namespace ferry {

inline constexpr int kBatchesPerHeap = 4;

struct Batch {
  // 1 from the hand-off until the pool has returned every block: the heap
  // must not touch the batch meanwhile. Released by the pool, acquired by the
  // heap before reuse.
  std::atomic<uint32_t> in_flight{0};
  uint32_t count = 0;        // pointers in ptrs
  uint32_t epoch_slot = 0;   // the flush epoch the batch joined (pool.cc)
  uint32_t home = 0;         // the reclaimer queue it was offered to
  size_t bytes = 0;          // the blocks' sizes, summed
  void** ptrs = nullptr;     // capacity FERRY_BATCH, right after the heap
};

}  // namespace ferry

#endif  // FERRY_RECLAIMER_BATCH_H_

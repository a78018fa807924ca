// page_return.cc — see page_return.h.
//
// The protocol on Page::returned (a pointer to the chain's first block, with
// kReturnedFull in its low bit):
//   - the owner, finding a page with nothing left to hand out, CASes 0 ->
//     kReturnedFull and takes the page off its queue (in_full = 1);
//   - a pusher swaps in its chain; if the old word had kReturnedFull, the new
//     word drops it, and exactly that pusher posts the page to the inbox;
//   - the owner adopts a chain with exchange(0), or, on a local free into a
//     full page, CASes kReturnedFull -> 0 and requeues the page itself.
// So a full page goes back to its queue exactly once, by whoever cleared the
// mark, and the inbox never holds a page twice.
#include "allocator/page_return.h"

#include "allocator/heap.h"
#include "common/stats.h"

namespace ferry {

void ReturnChain(Page* page, Block* head, Block* tail, uint32_t count) {
  uintptr_t old = page->returned.load(std::memory_order_relaxed);
  uintptr_t word;
  do {
    tail->next_encoded = EncodeNext(ReturnedChain(old));
    word = reinterpret_cast<uintptr_t>(head) |
           (uintptr_t{ReturnedCount(old) + count} << kReturnedCountShift);
    // acq_rel: release publishes the chain's links to the owner; acquire
    // orders this push after the owner's last handling of the page (its
    // inbox link, when the owner marked it full), so that posting it again
    // below cannot race with the owner's earlier drain.
  } while (!page->returned.compare_exchange_weak(old, word,
                                                 std::memory_order_acq_rel,
                                                 std::memory_order_relaxed));
  CounterAdd(g_counters.chains_pushed, 1);
  if ((old & kReturnedFull) == 0) return;
  Heap* owner = page->heap;
  Page* first = owner->inbox.load(std::memory_order_relaxed);
  do {
    page->inbox_next = first;
  } while (!owner->inbox.compare_exchange_weak(first, page, std::memory_order_release,
                                               std::memory_order_relaxed));
  CounterAdd(g_counters.pages_posted, 1);
}

}  // namespace ferry

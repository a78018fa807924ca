// sorter.cc — see sorter.h.
//
// Why sort: after sorting, the blocks of one page are adjacent, so a page's
// whole run goes home with one atomic operation instead of one per block,
// and the owner wakes once per page. Sorting pointers (8 bytes each, in one
// contiguous buffer) is cheap; touching the freed blocks themselves would
// pull their cache lines from the cores that used them, so blocks are
// written exactly once, when they are linked.
#include "reclaimer/sorter.h"

#include <algorithm>
#include <cstdint>

#include "allocator/page_return.h"
#include "allocator/segment.h"
#include "common/diag.h"
#include "common/stats.h"

namespace ferry {

void SortAndReturn(void** ptrs, size_t n) {
  uintptr_t* addresses = reinterpret_cast<uintptr_t*>(ptrs);
  std::sort(addresses, addresses + n);
  size_t i = 0;
  while (i < n) {
    const uintptr_t first = addresses[i];
    Page* page = PageOf(SegmentOf(first), first);
    const uintptr_t page_end = page->end();
    size_t j = i + 1;
    while (j < n && addresses[j] < page_end) ++j;
    // The run [i, j) belongs to `page`. Each pointer was checked to be a
    // block start of a live page when it was freed, and the free marked the
    // block (RemoteFreeMark); a block whose mark is gone was freed again or
    // written after its free, and two equal pointers are one block freed
    // twice.
    const uintptr_t mark = RemoteFreeMark(page);
    Block* head = reinterpret_cast<Block*>(first);
    if (head->next_encoded != mark) {
      FatalBadPointer("free", head, "double free (or a write after free) of a remotely freed block");
    }
    Block* tail = head;
    for (size_t k = i + 1; k < j; ++k) {
      Block* block = reinterpret_cast<Block*>(addresses[k]);
      if (addresses[k] == addresses[k - 1]) {
        FatalBadPointer("free", block, "double free (freed twice by one thread)");
      }
      if (block->next_encoded != mark) {
        FatalBadPointer("free", block, "double free (or a write after free) of a remotely freed block");
      }
      tail->next_encoded = EncodeNext(block);
      tail = block;
    }
    ReturnChain(page, head, tail, static_cast<uint32_t>(j - i));
    CounterAdd(g_counters.blocks_returned, static_cast<int64_t>(j - i));
    i = j;
  }
}

}  // namespace ferry

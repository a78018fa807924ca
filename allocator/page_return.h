// page_return.h — the one interface the allocator gives the reclaimer:
// hand a chain of freed blocks back to the page that owns them.
#ifndef FERRY_ALLOCATOR_PAGE_RETURN_H_
#define FERRY_ALLOCATOR_PAGE_RETURN_H_

#include "allocator/segment.h"

namespace ferry {

// Pushes the chain head..tail of `count` blocks (already linked through the
// blocks, tail's link is overwritten here) onto page->returned with one CAS. If the owner had
// marked the page full, the push clears the mark and this call posts the page
// to the owner's inbox, so the owner finds it without scanning.
// Safe from any thread while the chain's blocks are still counted as used.
void ReturnChain(Page* page, Block* head, Block* tail, uint32_t count);

}  // namespace ferry

#endif  // FERRY_ALLOCATOR_PAGE_RETURN_H_

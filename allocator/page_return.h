// page_return.h — the one interface the allocator gives the reclaimer:
// hand a chain of freed blocks back to the page that owns them.
#ifndef FERRY_ALLOCATOR_PAGE_RETURN_H_
#define FERRY_ALLOCATOR_PAGE_RETURN_H_

#include "allocator/segment.h"

namespace ferry {

// Pushes the chain head..tail of `count` blocks (already linked through the
// blocks, tail's link is overwritten here) onto page->returned with one CAS.
// If the owner had marked the page full, the mark stays while blocks are
// still out: the first such push posts the page to the owner's inbox, so
// the owner finds it without scanning. The push that brings the last block
// back clears the mark: it frees the page's slices at once (any heap may
// take them) if the page was never posted (the word carries the posted
// mark alone until then, so that the housekeeping leaves its chain be),
// and otherwise tells the owner,
// whose next slow path, or another heap's about to take a new page, frees
// it (the page_return.cc header has the whole protocol). Safe from any thread while the chain's blocks are still
// counted as used.
void ReturnChain(Page* page, Block* head, Block* tail, uint32_t count);

// Sets the class's bit in the owner's inbox_complete: a page on that inbox
// has every block back (heap.cc: FreeCompletedInboxPages on the owner,
// FreeOtherHeapsCompletedPages on a heap about to take a new page), and
// raises g_inbox_complete_pending, which tells the latter to look.
void NoteInboxPageComplete(Heap* owner, size_t size_class);

// Tests: called by ReturnChain between marking a full page posted and
// pushing it onto its owner's inbox (nullptr: nothing), to hold a return
// half done there.
extern std::atomic<void (*)()> g_return_chain_post_hook_for_test;
// Tests: called by ReturnChain with the page whose last block it brought
// back, never posted, just before it clears the word and frees the page
// (nullptr: nothing).
extern std::atomic<void (*)(Page*)> g_return_chain_complete_hook_for_test;
// Called by ReleasePage once the page's slices are free, before it reads
// the segment's header again: for tests (heap.cc).
extern std::atomic<void (*)()> g_page_released_hook_for_test;
extern std::atomic<uint32_t> g_inbox_complete_pending;

// Pushes a page onto an inbox (a lock-free stack linked through inbox_next).
// acq_rel, not release: a push that follows another heap's emptying
// exchange then also sees what that heap wrote before it (inbox_borrowed),
// which the owner's hand-back in FreeCompletedInboxPages reads next; with
// release alone the C++ model let it read a stale 0 and nobody set the
// class's complete bit again (the same instruction on x86).
inline void InboxPush(std::atomic<Page*>& inbox, Page* page) {
  Page* first = inbox.load(std::memory_order_relaxed);
  do {
    page->inbox_next = first;
  } while (!inbox.compare_exchange_weak(first, page, std::memory_order_acq_rel,
                                        std::memory_order_relaxed));
}

// Resets a page's record and frees its slices (heap.cc); nothing else of the
// heap. The caller has the page to itself and nothing of it is in use.
void ReleasePageSlices(Page* page);

// Frees slices [first, first + count) of `segment`, which a page of `heap`
// held (a page released, or a large block's tail cut off): the purge's hint
// and who released them first, since once the slices are free another heap
// may take them (ClaimSlices).
void ReleaseSliceRun(Segment* segment, size_t first, size_t count, const Heap* heap);

}  // namespace ferry

#endif  // FERRY_ALLOCATOR_PAGE_RETURN_H_

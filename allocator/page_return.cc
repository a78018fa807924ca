// page_return.cc — see page_return.h.
//
// The protocol on Page::returned (chain | count << 48 | kReturnedPosted |
// kReturnedFull, segment.h):
//   - the owner, finding a page with nothing left to hand out, writes
//     used_at_full and in_full, then CASes 0 -> kReturnedFull and takes the
//     page off its queue: from then on the page belongs to its returns;
//   - a pusher onto a full page keeps the mark while blocks are still out
//     (counted against used_at_full); the first such push also sets
//     kReturnedPosted and posts the page to the owner's per-class inbox;
//   - the push that brings the last block back clears the mark: if the page
//     was never posted, that pusher frees its slices at once (any heap may
//     take them); if it is on the inbox, whoever drains it frees it, and the
//     pusher sets the class's bit in the owner's inbox_complete so that the
//     owner's next slow path does (FreeCompletedInboxPages);
//   - the owner takes a posted page back (exchange(0)) when it runs short of
//     the class (DrainInbox); a full page nothing has come back to it takes
//     back with a CAS kReturnedFull -> 0 when it frees into it;
//   - the pool frees posted pages whose mark is gone (CollectInboxes), and
//     so do the owner (FreeCompletedInboxPages) and any heap about to take a
//     new page (FreeOtherHeapsCompletedPages) for the classes flagged in
//     inbox_complete.
//   - the housekeeping takes the chain of a large class's page for a
//     moment (GiveBackWaitingChains, heap.cc), with a CAS that leaves the
//     marks and takes the count with the chain: from an unmarked page, or
//     from a full one (both marks), which then cannot complete while the
//     chain is away; never from a page with the posted mark alone, whose
//     last block is back (so the push that completes a page never posted
//     sets that mark until its pusher frees the page). It puts the chain
//     back with ReturnChain, as the remote frees it was.
// A page is on an inbox at most once (the posted bit), and only the holder
// of the page (the owner, or whoever cleared the mark) touches its lists.
#include "allocator/page_return.h"

#include "allocator/heap.h"
#include "common/diag.h"
#include "common/os.h"
#include "common/stats.h"

namespace ferry {


void ReleasePageSlices(Page* page) {
  Segment* segment = SegmentOf(page->start);
  const size_t start = static_cast<size_t>(page - segment->pages);
  const size_t count = page->slice_count;
  const uint64_t large_block_page = uint64_t{1} << start;
  if ((segment->large_block_pages.load(std::memory_order_relaxed) & large_block_page) != 0) {
    segment->large_block_pages.fetch_and(~large_block_page, std::memory_order_relaxed);
  }
  for (size_t k = 1; k < count; ++k) segment->pages[start + k].record_back = 0;
  const Heap* heap = page->heap;
  page->kind = PageKind::kNone;
  page->heap = nullptr;
  page->block_size = 0;
  page->carved_bytes.store(0, std::memory_order_relaxed);
  page->free = nullptr;
  if (Verbose(2)) DiagLine().Str("ferry: page ").Hex(page->start).Str(" released").WriteToStderr();
  // Counted while the slices are still held: a large block realloc copied
  // out of went back decommitted but for its first slice
  // (DecommitOutgrownLargeBlock), and counting all of them kept the purge's
  // hint up by as many slices for good where no purge ran to correct it.
  // (Counted after the free until a review of 2026-12-06: another heap's
  // claim in between found the hint at 0 and left it, and the late count
  // then kept it too high.)
  ReleaseSliceRun(segment, start, count, heap);
  CounterAdd(Counter::pages_released, 1);
}

void ReleaseSliceRun(Segment* segment, size_t first, size_t count, const Heap* heap) {
  const uint64_t dirty = segment->dirty_slices.load(std::memory_order_relaxed) & SliceRun(first, count);
  NoteDirtySlicesFreed(static_cast<size_t>(__builtin_popcountll(dirty)));
  for (size_t k = 0; k < count; ++k) segment->released_by[first + k].store(heap, std::memory_order_relaxed);
  FreeSlices(segment, first, count, OsMonotonicMs());
}

void NoteRoomInFullSegment(Segment* segment) {
  // The heap whose list holds the segment: its claims may skip it.
  // A read-modify-write, not a store: the claim's acquiring exchange then
  // sees the freed slices of every notice before it, not just the last.
  Heap* heap = segment->heap.load(std::memory_order_relaxed);
  if (heap != nullptr) heap->room_in_full_segment.exchange(1, std::memory_order_acq_rel);
}

constinit std::atomic<uint32_t> g_inbox_complete_pending{0};
constinit std::atomic<void (*)()> g_return_chain_post_hook_for_test{nullptr};
constinit std::atomic<void (*)()> g_page_released_hook_for_test{nullptr};
constinit std::atomic<void (*)(Page*)> g_return_chain_complete_hook_for_test{nullptr};

void NoteInboxPageComplete(Heap* owner, size_t size_class) {
  // Release: the owner's acquiring exchange of the bit then sees the push
  // that cleared the page's full mark. seq_cst with the load below, against
  // FreeOtherHeapsCompletedPages' exchange of the flag and its loads of the
  // bits: one of the two sides sees the other.
  owner->inbox_complete[size_class / 64].fetch_or(uint64_t{1} << (size_class % 64),
                                                  std::memory_order_seq_cst);
  if (g_inbox_complete_pending.load(std::memory_order_seq_cst) == 0) {
    g_inbox_complete_pending.store(1, std::memory_order_relaxed);
  }
}

void ReturnChain(Page* page, Block* head, Block* tail, uint32_t count) {
  // Read before the push: once the chain is on a page its owner holds, the
  // owner may take it, free the page and reuse its record at once.
  const bool small = page->kind == PageKind::kSmall;
  const uint32_t reserved = page->reserved;
  const size_t size_class = page->size_class;
  Heap* const owner = page->heap;
  // acquire: when the word carries kReturnedFull, used_at_full (written
  // before the release that set the mark) is current below.
  uintptr_t old = page->returned.load(std::memory_order_acquire);
  uintptr_t word;
  uint32_t back;
  uint32_t out = 0;  // blocks of a full page out when it was marked
  do {
    tail->next_encoded = EncodeNext(ReturnedChain(old));
    back = ReturnedCount(old) + count;
    word = reinterpret_cast<uintptr_t>(head) | (uintptr_t{back} << kReturnedCountShift) |
           (old & kReturnedPosted);
    if ((old & kReturnedFull) != 0) {
      out = page->used_at_full.load(std::memory_order_relaxed);
      // A full page stays full until every block is back, so that it is
      // freed for every heap rather than handed piecemeal to an owner that
      // may not need it (many threads allocating, one freeing: the owners'
      // partly returned pages would pile up); an owner that runs short of
      // that class takes it back sooner (heap.cc, DrainInbox).
      if (back < out) word |= kReturnedFull | kReturnedPosted;
      // Every block back: the page is this pusher's to free (or, on the
      // inbox, its drainer's). The posted mark, set either way until then,
      // keeps the housekeeping from taking the chain of what it would
      // otherwise see as an unmarked page on its owner's queue
      // (GiveBackWaitingChains, heap.cc).
      else word |= kReturnedPosted;
    }
    // acq_rel: release publishes the chain's links to the owner; acquire
    // orders this push after the owner's last handling of the page (its
    // inbox link, when the owner marked it full), so that posting it again
    // below cannot race with the owner's earlier drain.
  } while (!page->returned.compare_exchange_weak(old, word,
                                                 std::memory_order_acq_rel,
                                                 std::memory_order_acquire));
  if ((old & kReturnedFull) != 0 && back > out) {
    FatalBadPointer("free", head, "double free (more blocks returned than were handed out)");
  }
  if ((old & kReturnedFull) == 0) {
    // On its owner's queue (or its inbox). Half a page or more waiting: have
    // the owner look (`reserved` is fixed while blocks are out).
    if (small && (old & kReturnedPosted) == 0 && back * 2 >= reserved &&
        ReturnedCount(old) * 2 < reserved) {
      std::atomic<uint64_t>& classes = owner->sweep_classes[size_class / 64];
      const uint64_t bit = uint64_t{1} << (size_class % 64);
      if ((classes.load(std::memory_order_relaxed) & bit) == 0) {
        classes.fetch_or(bit, std::memory_order_relaxed);
      }
    }
    return;
  }
  if ((word & kReturnedFull) != 0) {
    if ((old & kReturnedPosted) != 0) return;  // on the inbox already
    // Once linked, the page may be freed by whoever drains the inbox, and
    // its segment given back, before the read below: a window from before
    // the push (ArenaUnreserveFreeSegments).
    SegmentReadWindow window;
    // The first return to a full page: post it, so that the owner can find
    // it should the rest never come back.
    if (auto hook = g_return_chain_post_hook_for_test.load(std::memory_order_relaxed); FERRY_UNLIKELY(hook != nullptr)) {
      hook();
    }
    InboxPush(owner->inbox[size_class], page);
    CounterAdd(Counter::pages_posted, 1);
    // The rest may have come back between the CAS above and the push: that
    // return told the owner, which may have looked before the page was
    // linked. Tell it again. (The page may be taken and reused by now; a
    // stale read only costs the owner a look at that inbox.)
    if ((page->returned.load(std::memory_order_acquire) & kReturnedFull) == 0) {
      NoteInboxPageComplete(owner, size_class);
    }
    return;
  }
  // Every block is back and the mark is gone: the page is ours. On the inbox,
  // its owner (or the pool) frees it when it drains; otherwise free it now,
  // and a heap that is short of memory (not only its owner) may take its
  // slices.
  if ((old & kReturnedPosted) != 0) {
    // Still linked on the inbox (or about to be), so only the owner (or the
    // pool) may free it: tell the owner. The page may be freed and reused
    // from here on; owner and class were read before the push.
    NoteInboxPageComplete(owner, size_class);
    return;
  }
  if (auto hook = g_return_chain_complete_hook_for_test.load(std::memory_order_relaxed); FERRY_UNLIKELY(hook != nullptr)) {
    hook(page);
  }
  page->returned.store(0, std::memory_order_relaxed);
  page->used = 0;
  page->in_full = 0;
  CounterAdd(Counter::pages_freed_by_returns, 1);
  ReleasePageSlices(page);
}

}  // namespace ferry

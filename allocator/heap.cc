// heap.cc — the slow paths of thread heaps: pages, segments, large blocks,
// remote batches, thread start and exit.
//
// Life of a page (owner thread only, except `returned` and the inbox):
//   made from free slices of one of the heap's segments -> on its class queue,
//   its free list fed by the owner's frees, refilled from `returned`, then by
//   carving more blocks -> when nothing is left, marked full and taken off the queue ->
//   back on the queue at the first local free (owner clears the mark) or via
//   the inbox (a remote chain cleared it) -> released to its segment when all
//   its blocks are free, unless it is the only page of its class.
// Life of a heap: made from OS memory on a thread's first allocation (or
// taken over from the abandoned list) -> at thread exit its batch is handed
// on, its empty pages given back, and it goes onto the abandoned list, still
// valid: remote frees into it keep landing on its pages' returned lists and
// its inbox, and the next new thread takes it over with all its memory.
#include "allocator/heap.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <new>

#include "allocator/page_return.h"
#include "common/diag.h"
#include "common/options.h"
#include "common/os.h"
#include "common/spin_lock.h"
#include "common/stats.h"
#include "reclaimer/pool.h"
#include "reclaimer/sorter.h"

namespace ferry {

constinit Page g_empty_page{};
constinit Heap g_empty_heap;
__thread Heap* tl_heap __attribute__((tls_model("initial-exec"))) = &g_empty_heap;


namespace {

constexpr size_t kExtendBytes = 4 << 10;  // carve at most this much at a time
constexpr size_t kWakeBytes = 256 << 10;    // PublishBatch

constinit Options g_options{};
// Run-once steps that a fork cannot wedge (OnceBegin): kOnceNotRun,
// kOnceDone, or the pid of the process one of whose threads is running it.
constexpr int64_t kOnceNotRun = 0;
constexpr int64_t kOnceDone = -1;
constinit std::atomic<int64_t> g_init_state{kOnceNotRun};
constinit pthread_key_t g_thread_key{};
// Run once, by ferry's constructor (RegisterForkHandlersAtLoad): kOnceNotRun
// until it runs, this process's pid while it registers.
constinit std::atomic<int64_t> g_fork_handlers{kOnceNotRun};

// True when the caller is to run the step guarded by `state` (and then
// store kOnceDone); false once it is done, after waiting for another thread
// of this process that is running it. A state naming another pid was left
// by a thread of the parent this process was forked from, mid-step: that
// thread does not exist here, so the step is run again.
bool OnceBegin(std::atomic<int64_t>& state) {
  for (;;) {
    int64_t seen = state.load(std::memory_order_acquire);
    if (seen == kOnceDone) return false;
    const int64_t self = getpid();
    if (seen != self) {
      if (state.compare_exchange_strong(seen, self, std::memory_order_acq_rel)) return true;
      continue;
    }
    sched_yield();
  }
}
constinit std::atomic<Heap*> g_all_heaps{nullptr};
constinit ForkHeldSpinLock g_abandoned_lock;
__thread bool tl_exiting __attribute__((tls_model("initial-exec"))) = false;
// Threads that have made or taken over a heap or handled a huge block
// (CountThisThread), each once; in a fork child only its one thread.
constinit std::atomic<uint32_t> g_threads_seen{0};
// A word on a page of its own that every child process made without
// ferry's fork handlers finds zero (the kernel wipes the page there): a
// raw fork or clone system call, glibc's clone or _Fork. Such a child's
// heaps name its parent's threads, some half changed, and its pid cannot
// tell it: a container's init (pid 1) that clones into a new pid namespace
// makes another pid 1 (a review's program: the child's own heap was
// abandoned under it). A fork with the handlers sets it again once its
// heaps name the child's thread. nullptr where the kernel cannot wipe
// (before Linux 4.14): then no heap is ever taken for a gone thread's.
constinit std::atomic<std::atomic<uint64_t>*> g_owners_mark{nullptr};
// When AbandonHeapsOfGoneThreads last looked (the duty turn's own).
uint64_t g_gone_owners_checked_ms = 0;
__thread bool tl_seen __attribute__((tls_model("initial-exec"))) = false;
// Allocations of exiting threads come from this heap, one thread at a time.
constinit ForkHeldSpinLock g_exit_lock;
constinit Heap* g_exit_heap = nullptr;
// Heaps of exited threads, for new threads to take over, on two lists (the
// lock guards both): those the current collect pass (CollectAbandonedHeaps)
// has still to look at, and those it has collected or needs not look at.
constinit Heap* g_abandoned = nullptr;
constinit Heap* g_abandoned_done = nullptr;
constinit Heap* g_abandoned_done_tail = nullptr;
// CollectAbandonedHeaps' passes so far; changed under g_abandoned_lock.
constinit std::atomic<uint64_t> g_abandoned_pass{0};
constexpr uint64_t kNoPass = ~uint64_t{0};

// --- starting the pool from free ----------------------------------------------------

// The dynamic loader's code (OsDynamicLoaderText), read at initialisation.
constinit uintptr_t g_loader_text_begin = 0;
constinit uintptr_t g_loader_text_end = 0;
constinit uintptr_t g_libc_text_begin = 0;
constinit uintptr_t g_libc_text_end = 0;
constinit std::atomic<bool> g_forking{false};

// Returns to other heaps' pages made on application threads (a batch sorted
// inline, an owner's free into its full page that others have returned to)
// change those pages and their owners' inboxes in several steps. Fork waits
// until none is half done, or the child could keep a page marked posted
// that is on no inbox: neither its owner nor the housekeeping would ever
// free it (found by a review, 2026-12-04). Reclaimers are parked by then;
// they need no gate.
constinit std::atomic<bool> g_inline_returns_held{false};
// Those of threads without a heap (FreeRemoteSlow's batch of one).
constinit std::atomic<uint32_t> g_heapless_returns{0};
// This thread is forking (from AtForkPrepare to the end of the fork).
__thread bool tl_forking __attribute__((tls_model("initial-exec"))) = false;

// Counts a return in `count`, first waiting while a fork holds returns.
// The forking thread's own go on (a pthread_atfork prepare handler
// registered before ferry's, a library's initialised first, runs after it): they end before fork() proper.
// `only_this_thread`: nobody else changes `count` (a heap's, changed only by
// its thread), so a count already there is an outer return of this thread's
// own (a signal or abort handler that frees inside one): the fork waits for
// that one, and this one goes on, since waiting could only deadlock.
void BeginInlineReturns(std::atomic<uint32_t>* count, bool only_this_thread) {
  const uint32_t before = count->fetch_add(1, std::memory_order_seq_cst);
  if (tl_forking || (only_this_thread && before != 0)) return;
  while (g_inline_returns_held.load(std::memory_order_seq_cst)) {
    count->fetch_sub(1, std::memory_order_seq_cst);
    while (g_inline_returns_held.load(std::memory_order_acquire)) sched_yield();  // a fork is under way
    count->fetch_add(1, std::memory_order_seq_cst);
  }
}

void EndInlineReturns(std::atomic<uint32_t>* count) { count->fetch_sub(1, std::memory_order_release); }

// Counts a batch sorted inline: after its blocks (blocks_returned, counted
// by the sorter), with release, since ferry_stats_get reads this counter
// first, so that a snapshot that counts the batch has its blocks too (as
// for the pool's batches); and before the return's end, so that a fork,
// which waits for returns in progress, never leaves a child with the blocks
// counted and the batch not.
void CountBatchInline() { g_counters.batches_inline.fetch_add(1, std::memory_order_release); }

// A batch of remote frees sorted on the calling thread.
void ReturnBatchInline(Heap* heap, void** ptrs, uint32_t count) {
  BeginInlineReturns(&heap->returns_in_progress, /*only_this_thread=*/true);
  ReturnBatch(ptrs, count);
  CountBatchInline();
  EndInlineReturns(&heap->returns_in_progress);
}

// The same for a thread without a heap. The count is shared, so it cannot
// tell this thread's own: signals are blocked instead, so that no handler
// nests a second return in this one (two system calls, on a path taken by
// exiting threads, by the loader's frees on a thread that never allocated,
// and when the OS refused a heap).
void ReturnBatchWithoutHeap(void** ptrs, uint32_t count) {
  sigset_t all;
  sigset_t old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  BeginInlineReturns(&g_heapless_returns, /*only_this_thread=*/false);
  ReturnBatch(ptrs, count);
  CountBatchInline();
  EndInlineReturns(&g_heapless_returns);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

// A free whose call came from the dynamic loader's code (false for
// ferry_free and operator delete, which pass no caller, and in a static
// executable, whose loader code cannot be told apart).
bool CalledFromLoader(const void* caller) {
  if (caller == nullptr || g_loader_text_end == 0) return false;
  const uintptr_t address = reinterpret_cast<uintptr_t>(caller);
  return address >= g_loader_text_begin && address < g_loader_text_end;
}

// A free may ask for the pool (a batch handed on, a heap keeping its 8th
// empty segment, a huge mapping the cache cannot hold); starting it there
// means pthread_create inside free(). That is safe except where the C library
// frees while holding its thread-stack lock, which pthread_create takes:
// the dynamic loader freeing a dead thread's TLS (_dl_deallocate_tls, from
// pthread_join, pthread_detach, a detached thread's exit or pthread_create
// itself). So: never from the loader's code, nor from the C library's
// (the loader may tail-call free, leaving a return address in libc's
// thread code, which may hold that lock), never from an exiting thread,
// never during fork(), and never in a static executable (whose loader code
// cannot be told apart); the next allocation slow path starts it instead.
bool FreeMayStartPool(const void* caller) {
  if (tl_exiting || g_forking.load(std::memory_order_relaxed)) return false;
  if (caller == nullptr) return true;  // ferry_free, operator delete
  if (g_loader_text_end == 0 || g_libc_text_end == 0) return false;
  const uintptr_t address = reinterpret_cast<uintptr_t>(caller);
  const bool in_libc = address >= g_libc_text_begin && address < g_libc_text_end;
  return !CalledFromLoader(caller) && !in_libc;
}

// A free that asked for the pool (its heap keeps enough empty segments,
// ReleasePage; the huge cache outgrew its cap, CacheHugeMapping) starts it
// here where it may. Left to the next allocation slow path, as it was until
// 2026-12-06, a program that freed what it held and then idled without
// allocating kept every byte of it for good.
void StartAskedPoolFromFree(const void* caller) {
  if (g_pool_start_requested.load(std::memory_order_relaxed) != 0 && FreeMayStartPool(caller)) {
    PoolMaybeStart();
  }
}

// The share of a segment's 63 page slices that pages of `slices` slices,
// each holding as many blocks of `size` as fit, fill with blocks (per
// mille): what a program of only that size gets of the address space.
constexpr size_t SegmentFillPerMille(size_t size, size_t slices) {
  const size_t pages = (kSlicesPerSegment - 1) / slices;
  const size_t blocks = slices * kSliceSize / size;
  return pages * blocks * size * 1000 / ((kSlicesPerSegment - 1) * kSliceSize);
}

// Slices a page of each class spans: one for blocks up to 8 KiB, else enough
// for eight blocks, capped at kMaxPageSlices; unless such a page spans a MiB
// or more and pages that size fill less than 90% of a segment, when the
// smallest page of four blocks or more (three for 512 KiB, whose four need
// 32 slices) and no more slices that fills the most is taken. Eight blocks
// of 256 KiB or more needed 32 slices, one page a segment: a program of
// 256-512 KiB buffers held two to four times their bytes in address space,
// and under an address-space limit (RLIMIT_AS) got 40% of what glibc gave
// it (perf/RESULTS.md, 2026-12-05).
constexpr auto kPageSlices = [] {
  std::array<uint8_t, kNumClasses> slices{};
  for (size_t c = 0; c < kNumClasses; ++c) {
    const size_t size = kClassSize[c];
    size_t n = size <= (8 << 10) ? 1 : (8 * size + kSliceSize - 1) / kSliceSize;
    if (n > kMaxPageSlices) n = kMaxPageSlices;
    if (n >= 16 && SegmentFillPerMille(size, n) < 900) {
      size_t least = (4 * size + kSliceSize - 1) / kSliceSize;
      if (least > kMaxPageSlices * 3 / 4) least = kMaxPageSlices * 3 / 4;
      size_t best = n;
      for (size_t k = least; k < n; ++k) {
        if (SegmentFillPerMille(size, k) > SegmentFillPerMille(size, best)) best = k;
      }
      n = best;
    }
    slices[c] = static_cast<uint8_t>(n);
  }
  return slices;
}();

// --- page queues ----------------------------------------------------------------

void QueuePushFront(PageQueue* q, Page* page) {
  page->queue_prev = nullptr;
  page->queue_next = q->head;
  if (q->head != nullptr) q->head->queue_prev = page;
  else q->tail = page;
  q->head = page;
}

void QueuePushBack(PageQueue* q, Page* page) {
  page->queue_next = nullptr;
  page->queue_prev = q->tail;
  if (q->tail != nullptr) q->tail->queue_next = page;
  else q->head = page;
  q->tail = page;
}

// Behind an emptied current page: a page that the next allocations should
// not move to the front in its place (PageToReleaseOnEmpty).
bool PageCannotHandOutFirst(const Page* next) { return next->standby != 0 || next->free == nullptr; }

// A standby page (KeepOnStandby) that leaves its queue, or becomes its
// class's current page and so may hand out blocks, is one no longer.
void EndStandby(Page* page) {
  if (page->standby != 0) {
    Heap* heap = page->heap;
    heap->standby_slots[page->standby - 1] = nullptr;
    --heap->standby_pages;
    page->standby = 0;
  }
}

// A page with blocks to hand out goes in ahead of the standby pages
// (KeepOnStandby keeps them at the tail), so that they are the last of the
// class's pages to be used again.
void QueuePushBeforeStandby(PageQueue* q, Page* page) {
  Page* before = q->tail;
  while (before != nullptr && before->standby != 0) before = before->queue_prev;
  if (before == nullptr) return QueuePushFront(q, page);
  page->queue_prev = before;
  page->queue_next = before->queue_next;
  if (before->queue_next != nullptr) before->queue_next->queue_prev = page;
  else q->tail = page;
  before->queue_next = page;
}

void QueueRemove(PageQueue* q, Page* page) {
  if (page->queue_prev != nullptr) page->queue_prev->queue_next = page->queue_next;
  else q->head = page->queue_next;
  if (page->queue_next != nullptr) page->queue_next->queue_prev = page->queue_prev;
  else q->tail = page->queue_prev;
  page->queue_next = page->queue_prev = nullptr;
  EndStandby(page);
}

void SyncDirect(Heap* heap, size_t size_class) {
  Page* head = heap->queues[size_class].head;
  if (head != nullptr) EndStandby(head);
  heap->direct[size_class] = head != nullptr ? head : &g_empty_page;
}

// --- segments and slices -----------------------------------------------------------

// Appends: ClaimSlices looks at the oldest segments first, so that holes
// low in the heap are filled before newer segments grow (and memory freed
// by other threads is what the owner's next pages are made of).
void SegmentListPush(Heap* heap, Segment* segment) {
  segment->heap.store(heap, std::memory_order_relaxed);
  segment->heap_next = nullptr;
  segment->heap_prev = heap->segments_tail;
  if (heap->segments_tail != nullptr) heap->segments_tail->heap_next = segment;
  else heap->segments = segment;
  heap->segments_tail = segment;
}

void SegmentListRemove(Heap* heap, Segment* segment) {
  if (heap->claim_from == segment) heap->claim_from = nullptr;
  if (segment->heap_prev != nullptr) segment->heap_prev->heap_next = segment->heap_next;
  else heap->segments = segment->heap_next;
  if (segment->heap_next != nullptr) segment->heap_next->heap_prev = segment->heap_prev;
  else heap->segments_tail = segment->heap_prev;
  segment->heap_next = segment->heap_prev = nullptr;
}

void ReleaseKeptSegmentsLocked(Heap* heap, uint64_t now_ms, const Segment* except);

// How many of its own segments, from claim_from on, a claim looks at before
// it searches every segment (ClaimSlices).
constexpr size_t kOwnSegmentsLooked = 16;

// Claims `count` slices aligned to `align` slices; returns the first slice's
// page record with the continuation records pointing back to it. *zeroed
// (if given): the slices read as zeros (TryTakeSlices), or are a new
// segment's. Without `may_take_segment`, nullptr where only a new segment
// has room.
Page* ClaimSlices(Heap* heap, size_t count, size_t align, bool* zeroed = nullptr, bool may_take_segment = true) {
  SpinLockHolder hold(&heap->segments_lock);
  if (heap->kept_any) {
    const uint64_t now_ms = OsMonotonicMs();
    if (now_ms >= heap->kept_check_ms) ReleaseKeptSegmentsLocked(heap, now_ms, nullptr);
  }
  // Slices that may still be committed first, in the heap's own segments
  // (their memory is likely warm; the heap's empty spare is one of them),
  // then in any segment; those another heap's pages left are taken once
  // they have been free a few ms (TakeFreeSlices). Only then slices
  // never touched or decommitted in the heap's own segments, then a new
  // segment.
  // Resident memory grows only when no live segment has a committed free
  // slice that has settled: taking an own clean slice while another heap's
  // segments held freed, committed ones let the resident set ratchet up
  // (one freeing thread, four allocating: RSS crept 87 -> 96 MiB over a run
  // with FERRY_RECLAIMERS=0 at a steady ~1300 pages in use).
  // A heap with no segment of its own (a thread's first pages) takes a new
  // one before the clean slices of other heaps' segments: a page there
  // shares that segment's header with its heap, whose claims and frees
  // work on the same lines, and the thread's later pages follow it there
  // (two threads that remade their pages every round, one in the other's
  // segment, took 1.8x as long). Any other heap, and any heap where the
  // address space is scarce, takes those clean slices first: a new
  // segment may need a reservation the limit refuses, and it costs its
  // header's faults and, once empty, a release that decommits every slice
  // at once (threads that come and go took 30% more faults so).
  int start = -1;
  Segment* segment = nullptr;
  // Past the full segments at the front (they cannot have become empty,
  // and so cannot have left the list, without a free telling this heap).
  Segment* from = heap->claim_from;
  if (heap->room_in_full_segment.load(std::memory_order_relaxed) != 0 &&
      heap->room_in_full_segment.exchange(0, std::memory_order_acquire) != 0) {
    from = nullptr;
  }
  if (from == nullptr) from = heap->segments;
  Segment* last_full = nullptr;
  while (from != nullptr && from->used_slices.load(std::memory_order_relaxed) == kSegmentFull) {
    last_full = from;
    from = from->heap_next;
  }
  // All full: the next claim starts at the last of them, before whatever
  // segment this one appends.
  heap->claim_from = from != nullptr ? from : last_full;
  SliceClaim claim{heap};
  for (const bool dirty_only : {true, false}) {
    // The first few only: segments that keep a few free slices are never
    // full, and a heap of many (10 GiB of 960 KiB blocks leaves three free
    // slices in each of 2500) walked them all, a header each, for every
    // claim. The search anywhere then finds the rest by the room index.
    segment = from;
    for (size_t looked = 0; segment != nullptr && looked < kOwnSegmentsLooked;
         segment = segment->heap_next, ++looked) {
      if (SegmentRoom(segment) < count) continue;
      start = TakeFreeSlices(segment, count, align, dirty_only, zeroed, &claim);
      if (start >= 0) break;
    }
    if (segment != nullptr && start < 0) segment = nullptr;
    if (segment == nullptr && dirty_only) segment = ArenaTakeSlicesAnywhere(&claim, count, align, true, &start, zeroed);
    if (segment != nullptr) break;
  }
  const bool pack = segment == nullptr && (heap->segments != nullptr || AddressSpaceIsScarce());
  if (segment == nullptr && pack) segment = ArenaTakeSlicesAnywhere(&claim, count, align, false, &start, zeroed);
  if (segment == nullptr && may_take_segment) {
    // The first aligned run after the header; taken before any other heap
    // can see the segment's free slices.
    start = static_cast<int>(align);
    FERRY_CHECK(start + count <= kSlicesPerSegment);
    segment = ArenaAllocateSegment(SliceRun(static_cast<size_t>(start), count), zeroed);
    if (segment == nullptr && GiveBackHugeCacheForRoom(kSegmentSize)) {
      segment = ArenaAllocateSegment(SliceRun(static_cast<size_t>(start), count), zeroed);
    }
    if (segment != nullptr) SegmentListPush(heap, segment);
  }
  // The last resort: any free run, fresh slices of other heaps' pages too.
  if (segment == nullptr) segment = ArenaTakeSlicesAnywhere(nullptr, count, align, false, &start, zeroed);
  if (segment == nullptr) return nullptr;
  for (size_t k = 1; k < count; ++k) segment->pages[start + k].record_back = RecordBack(k);
  Page* page = &segment->pages[start];
  page->record_back = 0;
  page->slice_count = static_cast<uint8_t>(count);
  page->start = reinterpret_cast<uintptr_t>(segment) + static_cast<size_t>(start) * kSliceSize;
  page->heap = heap;
  CounterAdd(Counter::pages_made, 1);
  if (Verbose(2)) {
    DiagLine().Str("ferry: page ").Hex(page->start).Str(" of ").Dec(count).Str(" slices made").WriteToStderr();
  }
  return page;
}

void InitBlocks(Page* page, PageKind kind, size_t block_size, size_t reserved) {
  page->kind = kind;
  page->block_size = block_size;
  page->divisor_magic = ~uint64_t{0} / block_size + 1;
  page->reserved = static_cast<uint16_t>(reserved);
  page->free = nullptr;
  page->purged_free = nullptr;
  page->used = page->capacity = 0;
  page->in_full = 0;
  page->standby = 0;
  page->carved_bytes.store(0, std::memory_order_relaxed);
  page->returned.store(0, std::memory_order_relaxed);
  page->returned_seen.store(0, std::memory_order_relaxed);
  page->queue_next = page->queue_prev = page->inbox_next = nullptr;
}

// Takes an empty segment (only its header in use) off the heap's list, for
// ArenaReleaseSegment; false if a page took one of its slices first. The
// caller holds heap->segments_lock.
bool DetachEmptySegmentLocked(Heap* heap, Segment* segment) {
  uint64_t expected = 1;
  if (!segment->used_slices.compare_exchange_strong(expected, kSegmentDetached,
                                                    std::memory_order_acq_rel,
                                                    std::memory_order_relaxed)) {
    return false;
  }
  if (heap->spare == segment) heap->spare = nullptr;
  segment->is_spare.store(false, std::memory_order_relaxed);
  if (heap->kept_any) {
    for (Segment*& slot : heap->kept) {
      if (slot == segment) slot = nullptr;
    }
  }
  SegmentListRemove(heap, segment);
  segment->heap.store(nullptr, std::memory_order_relaxed);
  return true;
}

// Where no reclaimer thread ticks: gives back the segments named by the
// heap's slots that have been empty for EmptySegmentKeepMs, whoever emptied
// them (a kept segment's committed slices are the first other heaps' claims
// take, too), but `except`, which the caller is about to keep. A slot whose
// segment is in use again stays, so that the segment is looked at once it
// empties; KeepEmptySegmentLocked may take it over. The caller holds
// heap->segments_lock.
void ReleaseKeptSegmentsLocked(Heap* heap, uint64_t now_ms, const Segment* except) {
  const uint64_t keep_ms = EmptySegmentKeepMs(static_cast<uint64_t>(g_options.purge_delay_ms));
  bool any = false;
  for (Segment*& slot : heap->kept) {
    Segment* segment = slot;
    if (segment == nullptr) continue;
    if (segment == heap->spare) {
      slot = nullptr;  // the spare stays without a slot
      continue;
    }
    if (segment != except && segment->used_slices.load(std::memory_order_relaxed) == 1 &&
        EmptySegmentIdleMs(segment, now_ms) >= keep_ms && DetachEmptySegmentLocked(heap, segment)) {
      ArenaReleaseSegment(segment);
      continue;  // the detach cleared the slot
    }
    any = true;
  }
  heap->kept_any = any;
  heap->kept_check_ms = now_ms + keep_ms / 4;
}

// Where no reclaimer thread ticks, nobody else would ever give back an
// empty segment the owner leaves on its list, so the owner keeps a few
// (kKeptEmptySegments) and gives each back once it has been empty for
// EmptySegmentKeepMs, when it next claims slices or empties another
// segment (ClaimSlices; ferry_collect and the thread's exit give back all).
// A single-threaded program whose use swings by tens of MiB takes its
// committed slices back rather than fault them in again: 64 MiB of 1 KiB
// blocks allocated and freed ten times, 3.6x faster (perf/RESULTS.md,
// 2026-12-03). With kKeptEmptySegmentsAskingForThePool kept, a program that
// has other threads asks for the pool too, whose timer then gives them
// back should the program idle (ReleasePage). False when every
// slot names a segment that is still empty.
// *empty_kept: how many of the kept segments are empty, this one counted.
bool KeepEmptySegmentLocked(Heap* heap, Segment* segment, size_t* empty_kept) {
  const uint64_t now_ms = OsMonotonicMs();
  if (heap->kept_any) ReleaseKeptSegmentsLocked(heap, now_ms, segment);
  Segment** free_slot = nullptr;
  Segment** in_use_slot = nullptr;
  size_t empty = 1;
  bool already = false;
  for (Segment*& slot : heap->kept) {
    if (slot == segment) {
      already = true;
    } else if (slot == nullptr) {
      if (free_slot == nullptr) free_slot = &slot;
    } else if (slot->used_slices.load(std::memory_order_relaxed) != 1) {
      if (in_use_slot == nullptr) in_use_slot = &slot;
    } else {
      ++empty;
    }
  }
  *empty_kept = empty;  // 17 where every slot holds an empty segment: this one is not kept
  if (already) return true;
  if (free_slot == nullptr) free_slot = in_use_slot;  // that segment goes untracked
  if (free_slot == nullptr) return false;
  *free_slot = segment;
  heap->kept_any = true;
  return true;
}

// What an emptied segment may stay on its heap's list as.
enum class KeepEmpty {
  kNothing,       // every empty segment goes back (CollectHeap)
  kSpare,         // the spare stays (ReleaseKeptEmptySegments)
  kSpareAndMore,  // and, while it is recent, any other (ReleasePage)
};

// What CollectHeap does with free blocks on pages still in use.
enum class FreeBlocks {
  kKeep,             // they stay as they are
  kGiveBack,         // large ones give their memory back (PurgeFreeBlockInteriors)
  // Only those listed since the last purge of their page, where nobody
  // owns the heap: what came back since, put in front of the list.
  kGiveBackAdopted,
};

// A segment on this heap's list with only its header used goes back to its
// arena, unless it can be the heap's spare or, as `keep` allows, stay a
// while for the housekeeping or as one the owner keeps (below and
// KeepEmptySegmentLocked). The spare: one empty segment stays on the
// list, so that a heap whose use swings across a segment boundary does not
// map and release one each time. The spare is a segment like the others:
// its committed slices are the first a new page takes, and the pool purges
// them once they have been free for FERRY_PURGE_DELAY_MS. (Detached from
// the list, as it was before 2026-12-02, it did neither: its committed
// slices stayed resident for the thread's lifetime, up to 4 MiB a heap,
// while new pages touched clean memory elsewhere.) Pages of other heaps may
// live in it (ClaimSlices); detaching with one CAS settles who wins.
// True when the owner keeps kKeptEmptySegmentsAskingForThePool or more
// empty segments, this one among them or not (then, once the lock is
// dropped, it asks for a pool to give them back should the program idle:
// AskForThePoolIfSeveralThreads). *released (if given) is set where the
// segment went back to its arena. The caller holds heap->segments_lock.
bool ReleaseSegmentIfEmptyLocked(Heap* heap, Segment* segment, KeepEmpty keep, bool* released = nullptr) {
  bool ask_for_pool = false;
  // On another heap's list, or given back by the housekeeping (then nullptr).
  if (segment->heap.load(std::memory_order_relaxed) != heap) return false;
  if (segment->used_slices.load(std::memory_order_relaxed) != 1) return false;
  if (keep != KeepEmpty::kNothing) {
    Segment* spare = heap->spare;
    if (spare == segment) return false;
    // A spare that pages use again is a spare no longer.
    if (spare == nullptr || spare->used_slices.load(std::memory_order_relaxed) != 1) {
      if (spare != nullptr) spare->is_spare.store(false, std::memory_order_relaxed);
      heap->spare = segment;
      segment->is_spare.store(true, std::memory_order_relaxed);
      return false;
    }
  }
  if (keep == KeepEmpty::kSpareAndMore) {
    // With reclaimer threads ticking, giving memory back is their job: the
    // segment stays on the list, its slices are purged like any free
    // slices (FERRY_PURGE_DELAY_MS, young ones 1 MiB a run) and the
    // housekeeping releases it once it has been empty for
    // EmptySegmentKeepMs (ReleaseIdleEmptySegments). A program whose use
    // swings by more than a segment takes its committed slices back
    // instead of faulting in fresh ones: 128 MiB of 1 KiB blocks
    // allocated and freed ten times, 3x faster (perf/RESULTS.md,
    // 2026-12-02). Without such a pool the owner keeps a few itself.
    if (PoolHousekeepsOnATimer()) return false;
    size_t empty_kept = 0;
    const bool kept = KeepEmptySegmentLocked(heap, segment, &empty_kept);
    ask_for_pool = empty_kept >= kKeptEmptySegmentsAskingForThePool;
    if (kept) return ask_for_pool;
  }
  if (DetachEmptySegmentLocked(heap, segment)) {
    ArenaReleaseSegment(segment);
    if (released != nullptr) *released = true;
  }
  return ask_for_pool;
}

// The empty segments an owner left for the pool's housekeeping, or kept
// itself (ReleaseSegmentIfEmptyLocked), go back now, but one that stays as
// the spare (a new one, if the spare was in use): in a fork child, which
// has no pool and may never start one, those left for the pool would stay
// for good. True when any went back.
bool ReleaseKeptEmptySegments(Heap* heap) {
  SpinLockHolder hold(&heap->segments_lock);
  bool released = false;
  for (Segment* segment = heap->segments; segment != nullptr;) {
    Segment* next = segment->heap_next;
    ReleaseSegmentIfEmptyLocked(heap, segment, KeepEmpty::kSpare, &released);
    segment = next;
  }
  return released;
}

// True when it left the heap keeping enough empty segments to ask for the
// pool (the owner's free then starts what it asked for: StartAskedPoolFromFree).
bool ReleasePage(Heap* heap, Page* page) {
  Segment* segment = SegmentOf(page->start);
  // Another heap (the one whose list holds the segment) or the housekeeping
  // may give the segment back once the page's slices are free; the reads
  // below stay inside the window.
  SegmentReadWindow window;
  ReleasePageSlices(page);
  if (auto hook = g_page_released_hook_for_test.load(std::memory_order_relaxed); FERRY_UNLIKELY(hook != nullptr)) {
    hook();
  }
  // Most released pages leave others in their segment: no lock for those.
  if (segment->used_slices.load(std::memory_order_relaxed) != 1) return false;
  bool ask_for_pool;
  {
    SpinLockHolder hold(&heap->segments_lock);
    ask_for_pool = ReleaseSegmentIfEmptyLocked(heap, segment, KeepEmpty::kSpareAndMore);
  }
  if (ask_for_pool) AskForThePoolIfSeveralThreads();
  return ask_for_pool;
}

// Committed free slices, summed over every heap's segments, past which a
// page its owner frees asks for the pool, whose purge alone gives them back
// (16 MiB). Each thread keeps its emptied segments for a while, and the
// slices its emptied pages leave stay committed until a purge: where no
// free ever crossed threads, nothing started the pool, and 16 threads that
// each allocated and freed 16 MiB of their own and then waited kept 171 MB
// resident for good (34 MB with this; glibc 276, tcmalloc 218, mimalloc
// 296; a /tmp program, 2026-12-07). The 8th empty segment a heap keeps
// asks too, but one thread seldom keeps 8.
constexpr int64_t kDirtySlicesAskingForThePool = (int64_t{16} << 20) / static_cast<int64_t>(kSliceSize);

// Out of line, so that a free whose page stays (a malloc/free loop empties
// its page at every free) keeps nothing for the start: checked after every
// such free, it cost 4-9 instructions a malloc/free pair (fast_path_budget_test).
// After an idle pool's stop (reclaimer/pool.cc, StopIdlePool) nothing
// purges what a page leaves committed, and a thread keeps up to 16 emptied
// segments itself: a thread that churned 20 MiB of its own after the stop
// kept all of it resident for good (a review, 2026-12-06). So a page its
// owner frees then asks for the pool again: only the owner's frees (a
// program's periodic malloc_trim, whose collect releases every empty page,
// restarted the pool at each trim), only where the process has other
// threads now (one that ended them all is single-threaded again, and may
// want to unshare(CLONE_NEWUSER), which is why the threads left; the
// kernel may still count a leaving reclaimer for a moment after the stop,
// which a free then would take for another thread: the pool starts again
// and stops after the next idle time).
// True when the free may have asked for the pool, which it then starts
// (StartAskedPoolFromFree, which looks whether it was asked) once the
// heap's state is whole again: the start creates a thread, and
// pthread_create allocates on this thread.
bool ReleasePageFromFreeAsking(Heap* heap, Page* page) {
  if (ReleasePage(heap, page)) return true;
  // After an idle pool's stop, or with much committed memory free
  // (kDirtySlicesAskingForThePool): threads now decide, not threads once.
  if (FERRY_UNLIKELY(g_pool_stopped_idle.load(std::memory_order_relaxed) != 0 ||
                     g_free_dirty_slices_hint.load(std::memory_order_relaxed) >= kDirtySlicesAskingForThePool)) {
    AskForThePoolIfSeveralThreads(/*by_threads_run=*/false);
    return true;
  }
  return false;
}

FERRY_NOINLINE void ReleasePageFromFree(Heap* heap, Page* page, const void* caller) {
  if (ReleasePageFromFreeAsking(heap, page)) StartAskedPoolFromFree(caller);
}

// --- refilling a page --------------------------------------------------------------

// Takes the page's returned chain and its length in one exchange.
Block* AdoptReturned(Page* page, uint32_t* count_out = nullptr) {
  const uintptr_t word = page->returned.exchange(0, std::memory_order_acquire);
  Block* chain = ReturnedChain(word);
  const uint32_t count = ReturnedCount(word);
  if (count_out != nullptr) *count_out = chain == nullptr ? 0 : count;
  if (chain == nullptr) return nullptr;
  // On the line the exchange just took: the chain the housekeeping saw, or
  // gave back, is this one or older (GiveBackWaitingChains).
  page->returned_seen.store(0, std::memory_order_relaxed);
  // More blocks back than are out: a block was freed twice (by two threads
  // at the same moment, past the other checks).
  if (count > page->used) {
    FatalBadPointer("free", chain, "double free (more blocks returned than were handed out)");
  }
  page->used = static_cast<uint16_t>(page->used - count);
  return chain;
}

// A free-list link that no free block of the page can hold, `what` saying
// where it points: one line, then abort (ReportCorruptFreeList, and
// OrderChain's walk for links inside the page).
[[noreturn]] FERRY_COLD void ReportBadChainLink(Page* page, Block* block, Block* next, const char* what) {
  DiagLine()
      .Str("ferry: malloc: free list of the page at ")
      .Hex(page->start)
      .Str(" corrupted: the free block ")
      .Ptr(block)
      .Str(" links to ")
      .Ptr(next)
      .Str(", ")
      .Str(what)
      .Str(" (a write after free?)")
      .WriteToStderr();
  abort();
}

// `chain`, `count` blocks of the page that came back from other threads (as
// AdoptReturned took them), linked again in ascending address order.
//
// A chain lists its blocks last freed first, and a page is refilled with
// whatever has come back whenever its list runs dry: so every partial
// refill cut the order of the page's blocks once more, and after a few
// rounds the owner handed them out in pieces of 3-10 blocks strewn over the
// page. A thread reading them in the order they were made (producer and
// consumer) then paid twice mimalloc's time for its reads; in address
// order each refill is one pass up the page (perf/RESULTS.md, 2026-12-03).
//
// The cost is the walk, a dependent load per block on lines the freeing
// thread wrote last (the owner's next allocations then find them in its
// cache). Short chains, what random frees bring back (onefree: 8 blocks on
// average), keep their order: the walk made that workload 20% dearer and
// bought nothing. The walk checks every link as a pop would, and that no
// block comes twice.
// *tail_out, if given, is set to the ordered chain's last block (left alone
// for a chain too short to order).
Block* OrderChain(Page* page, Block* chain, uint32_t count, Block** tail_out = nullptr) {
  static_assert(sizeof(Page::reserved) == 2);
  if (count < kOrderChainMin) return chain;
  uint64_t present[8192 / 64];
  const size_t words = (size_t{page->reserved} + 63) / 64;
  FERRY_CHECK(words <= std::size(present));
  for (size_t w = 0; w < words; ++w) present[w] = 0;
  // A block start's offset times the magic wraps below the magic (that is
  // IsBlockStart), and its high half is the block's index.
  auto index_of = [page](const Block* b) {
    const uint64_t offset = reinterpret_cast<uintptr_t>(b) - page->start;
    return static_cast<size_t>((static_cast<unsigned __int128>(offset) * page->divisor_magic) >> 64);
  };
  FERRY_CHECK(IsBlockStart(page, reinterpret_cast<uintptr_t>(chain)));  // ReturnChain's, not user memory
  const size_t first = index_of(chain);
  present[first / 64] |= uint64_t{1} << (first % 64);
  Block* block = chain;
  for (uint32_t k = 1; k < count; ++k) {
    Block* next = DecodeNext(block->next_encoded);
    if (!IsInCarvedRange(page, next)) ReportCorruptFreeList(page, block, next);
    if (!IsBlockStart(page, reinterpret_cast<uintptr_t>(next))) {
      ReportBadChainLink(page, block, next, "inside a block, not at its start");
    }
    const size_t index = index_of(next);
    const uint64_t bit = uint64_t{1} << (index % 64);
    if ((present[index / 64] & bit) != 0) ReportBadChainLink(page, block, next, "a block already on the list");
    present[index / 64] |= bit;
    block = next;
  }
  // The last block ends the chain (ReturnChain linked the first push's tail
  // to nothing); a link there now is a write after free, which the rewrite
  // below would otherwise hide.
  if (Block* after = DecodeNext(block->next_encoded); after != nullptr) ReportCorruptFreeList(page, block, after);
  const uintptr_t start = page->start;
  const size_t size = page->block_size;
  Block* head = nullptr;
  for (size_t w = words; w-- > 0;) {
    for (uint64_t bits = present[w]; bits != 0;) {
      const int top = Log2Floor(bits);
      bits &= ~(uint64_t{1} << top);
      Block* b = reinterpret_cast<Block*>(start + (w * 64 + static_cast<size_t>(top)) * size);
      b->next_encoded = EncodeNext(head);
      if (head == nullptr && tail_out != nullptr) *tail_out = b;
      head = b;
    }
  }
  return head;
}

void ExtendPage(Page* page) {
  const size_t size = page->block_size;
  size_t count = kExtendBytes / size;
  if (count == 0) count = 1;
  const size_t remaining = size_t{page->reserved} - page->capacity;
  if (count > remaining) count = remaining;
  const uintptr_t first = page->start + page->capacity * size;
  if (kValgrind) {
    for (size_t k = 0; k < count; ++k) VgLinkWord(reinterpret_cast<void*>(first + k * size));
  }
  for (size_t k = 0; k + 1 < count; ++k) {
    reinterpret_cast<Block*>(first + k * size)->next_encoded =
        EncodeNext(reinterpret_cast<Block*>(first + (k + 1) * size));
  }
  reinterpret_cast<Block*>(first + (count - 1) * size)->next_encoded = EncodeNext(page->free);
  page->free = reinterpret_cast<Block*>(first);
  page->capacity = static_cast<uint16_t>(page->capacity + count);
  page->carved_bytes.store(static_cast<uint32_t>(page->capacity * size), std::memory_order_relaxed);
}

// Gives page->free blocks that other threads freed, if it has any.
// page->free is empty on entry. Carving new blocks (ExtendPage) is the
// caller's last resort: blocks already carved and free, on any page of the
// class, come first, or every class's newest page would grow while its
// older pages keep free blocks in RAM (onefree: 9 MiB of free blocks on
// queued pages).
bool RefillPage(Page* page) {
  // acquire (a plain load on x86): a word a housekeeping take left orders
  // the take's count of chains away before the owner's look at that count
  // (ChainsWereAway).
  if (page->returned.load(std::memory_order_acquire) != 0) {
    uint32_t count;
    Block* chain = AdoptReturned(page, &count);
    if (chain != nullptr) {
      page->free = OrderChain(page, chain, count);
      return true;
    }
  }
  return false;
}

// Owner: the page has nothing to hand out. Returns false if a chain arrived
// meanwhile (then the caller refills instead).
bool TryMarkFull(Page* page) {
  // Everything written before the mark (the page off its queue too): from
  // the CAS on, whoever clears the mark may have the page, free it and let
  // another heap reset its record.
  page->used_at_full.store(page->used, std::memory_order_relaxed);
  page->in_full = 1;
  // Its list is empty: what comes back later is listed anew, in front of
  // nothing a purge walked (CollectHeap, FreeBlocks::kGiveBackAdopted).
  page->purged_free = nullptr;
  uintptr_t expected = 0;
  if (!page->returned.compare_exchange_strong(expected, kReturnedFull, std::memory_order_acq_rel,
                                              std::memory_order_relaxed)) {
    page->in_full = 0;
    return false;
  }
  return true;
}

// Takes a queued page's returned chain onto its free list. Returns false if
// nothing had come back.
bool AdoptOntoLists(Page* page) {
  uint32_t count;
  Block* chain = AdoptReturned(page, &count);
  if (chain == nullptr) return false;
  Block* tail = nullptr;
  // A page with every block back is mostly given back at once by the
  // callers (SweepClasses, CollectHeap): no order to make for it.
  if (page->used != 0) chain = OrderChain(page, chain, count, &tail);
  if (page->free == nullptr) {
    page->free = chain;
    return true;
  }
  if (tail == nullptr) {
    // Not ordered (short): walked to its tail here. Counted, and each link
    // checked, so that a block written after its free can neither loop the
    // walk nor steer the write below.
    tail = chain;
    for (uint32_t k = 1; k < count; ++k) {
      Block* next = DecodeNext(tail->next_encoded);
      if (!IsInCarvedRange(page, next)) ReportCorruptFreeList(page, tail, next);
      tail = next;
    }
  }
  tail->next_encoded = EncodeNext(page->free);
  page->free = chain;
  return true;
}

// Pushes a list of pages (linked through inbox_next) onto an inbox.
void InboxPushList(std::atomic<Page*>& inbox, Page* page) {
  while (page != nullptr) {
    Page* next = page->inbox_next;
    InboxPush(inbox, page);
    page = next;
  }
}

FERRY_COLD void WaitForBorrowedInboxes(Heap* heap) {
  while (heap->inbox_borrowed.load(std::memory_order_acquire) != 0) sched_yield();
}

// The owner's inbox of a class, waiting for it if the housekeeping (or
// another heap, in its turn) holds it.
// The exchange that emptied it is ordered after inbox_borrowed was set, so
// an owner that read the emptied inbox then sees the flag set, or cleared
// after the pages went back; either way the second read finds them.
Page* InboxHead(Heap* heap, size_t size_class) {
  Page* head = heap->inbox[size_class].load(std::memory_order_acquire);
  if (head != nullptr) return head;
  if (heap->inbox_borrowed.load(std::memory_order_acquire) != 0) WaitForBorrowedInboxes(heap);
  return heap->inbox[size_class].load(std::memory_order_acquire);
}

// The owner takes back the pages on one class's inbox: full pages that got
// some of their blocks back (ReturnChain), and pages whose blocks all came
// back while they were on it. The first kind rejoin the queue with what
// came back; the second go back to their segments. Only when the owner runs
// short of that class: until then, returns collect under the full mark, and
// a page whose blocks all come back is freed for every heap.
void DrainInbox(Heap* heap, size_t size_class) {
  Page* page = heap->inbox[size_class].exchange(nullptr, std::memory_order_acquire);
  // Emptied since the caller looked (InboxHead saw a page) by a borrower,
  // which puts back the pages it does not free: wait for them, as InboxHead
  // does, or the caller carves and takes new pages while its returned
  // blocks are away. Then look again whatever the flag said: the borrower
  // may have put them back and lowered it already (its exchange, which
  // this one read, was ordered after it raised the flag).
  if (page == nullptr) {
    WaitForBorrowedInboxes(heap);
    page = heap->inbox[size_class].exchange(nullptr, std::memory_order_acquire);
  }
  while (page != nullptr) {
    Page* next = page->inbox_next;
    page->inbox_next = nullptr;
    page->in_full = 0;
    uint32_t count;
    Block* chain = AdoptReturned(page, &count);  // clears the full and posted marks
    if (page->used == 0) {
      CounterAdd(Counter::pages_freed_by_returns, 1);
      ReleasePage(heap, page);
    } else {
      page->free = OrderChain(page, chain, count);  // a full page had nothing else to hand out
      QueuePushBeforeStandby(&heap->queues[size_class], page);
    }
    page = next;
  }
  SyncDirect(heap, size_class);
}

void DrainAllInboxes(Heap* heap) {
  for (size_t c = 0; c < kNumClasses; ++c) {
    if (InboxHead(heap, c) != nullptr) DrainInbox(heap, c);
  }
}

void ReleaseRetainedPages(Heap* heap, size_t keep);
void ReleaseStandbyPages(Heap* heap, size_t keep);

// An empty page of several slices that is its class's only page: released
// by ReleaseRetainedPages unless the class uses it again first, once the
// heap has taken kRetainSlowPaths slow paths without retaining one, or at
// once where the retained pages would span more than kRetainedSlicesMax
// together. The wait starts again at every retention, so that a program
// that cycles through its classes keeps their pages: with each page's
// wait its own (two generations, tried 2026-12-07), the realloc
// workload's peak RSS grew 15.4 -> 16.6 MiB, as released pages' slices
// went to one-slice pages and broke the medium runs up. Without a bound
// on the slices, a thread whose 64 KiB-4 MiB blocks came and went one at a
// time (cliff pattern 3, about one in nine in a medium class) kept an
// empty page in nearly every one of the 48 medium classes, 30 MiB a
// thread, which fragmented its segments so that its large blocks mapped
// new ones: 135 MB peak RSS for four threads, mimalloc 26
// (perf/RESULTS.md, 2026-12-07).
static_assert(kMaxPageSlices <= kRetainedSlicesMax, "a retained page of the largest spans too much");
void RetainForAWhile(Heap* heap, Page* page) {
  const size_t c = page->size_class;
  uint64_t& word = heap->retained_classes[c / 64];
  const uint64_t bit = uint64_t{1} << (c % 64);
  if ((word & bit) == 0) {
    word |= bit;
    heap->retained_slices += page->slice_count;
    if (heap->retained_slices > kRetainedSlicesMax) ReleaseRetainedPages(heap, c);
  }
  heap->retained_until = heap->slow_paths + kRetainSlowPaths;
}

// The classes whose pages other threads hinted at (Heap::sweep_classes):
// returned blocks join their pages' lists, and a page with nothing left out
// goes back to its segment, where any heap may take its slices; the queue's
// first page stays, as the class's current page.
void SweepClasses(Heap* heap, size_t word) {
  uint64_t classes = heap->sweep_classes[word].exchange(0, std::memory_order_relaxed);
  for (; classes != 0; classes &= classes - 1) {
    const size_t c = word * 64 + static_cast<size_t>(__builtin_ctzll(classes));
    PageQueue* q = &heap->queues[c];
    for (Page* page = q->head; page != nullptr;) {
      Page* next = page->queue_next;
      // The class's only page, of one slice, keeps a chain that does not
      // bring every block back where it is, while its list still has
      // blocks: joining the two meant walking the chain to its tail, a miss
      // per block on lines the freeing thread wrote (7% of
      // producer/consumer's time), while the list still had blocks to hand
      // out. RefillPage takes the chain when the list runs dry (and orders
      // it then, a walk that its next allocations repay, OrderChain). The chain's blocks count in `used`
      // until then, so the owner's own frees cannot bring it to 0; that
      // changes nothing for this page only, which PageToReleaseOnEmpty keeps when
      // empty. Any other page (one of several, or of several slices) is
      // swept as before; a standby page has nothing to adopt and stays.
      if (page == q->head && page == q->tail && page->slice_count == 1 && page->free != nullptr &&
          ReturnedCount(page->returned.load(std::memory_order_relaxed)) < page->used) {
        page = next;
        continue;
      }
      if (AdoptOntoLists(page) && page->used == 0 && page != q->head) {
        QueueRemove(q, page);
        ReleasePage(heap, page);
      }
      page = next;
    }
    // The head stays as the class's current page; emptied by other threads
    // while it spans several slices and is alone, it goes in a while too.
    Page* head = q->head;
    if (head != nullptr && head == q->tail && head->used == 0 && head->slice_count > 1) {
      RetainForAWhile(heap, head);
    }
  }
}

// Frees the pages on one of a heap's inboxes whose blocks have all come back
// and puts the others back as they were. The owner gives the pages back
// through ReleasePage; anyone else (the housekeeping, or another heap, in
// its turn and with heap->inbox_borrowed set) frees their slices only, since
// the segment list is the owner's (the pool's for an abandoned heap).
void FreeCompletedPagesOfInbox(Heap* heap, size_t c, bool caller_is_owner) {
  Page* page = heap->inbox[c].exchange(nullptr, std::memory_order_acq_rel);
  Page* keep = nullptr;
  while (page != nullptr) {
    Page* next = page->inbox_next;
    // Posted without the full mark: every block is back and nobody else
    // will touch the page (ReturnChain).
    if ((page->returned.load(std::memory_order_acquire) & kReturnedFull) == 0) {
      page->inbox_next = nullptr;
      page->in_full = 0;
      AdoptReturned(page);  // clears the posted mark; checks the count
      FERRY_CHECK(page->used == 0);
      CounterAdd(Counter::pages_freed_by_returns, 1);
      if (caller_is_owner) {
        ReleasePage(heap, page);
      } else {
        ReleasePageSlices(page);
      }
    } else {
      page->inbox_next = keep;
      keep = page;
    }
    page = next;
  }
  InboxPushList(heap->inbox[c], keep);
}

// The owner, for the classes whose inboxes hold pages with every block back
// (Heap::inbox_complete).
void FreeCompletedInboxPages(Heap* heap, size_t word) {
  uint64_t classes = heap->inbox_complete[word].exchange(0, std::memory_order_acquire);
  // Before the exchanges below (they release it): another heap whose
  // exchange finds an inbox emptied by them sees the flag.
  heap->inbox_owner_holding.store(1, std::memory_order_relaxed);
  for (; classes != 0; classes &= classes - 1) {
    const size_t c = word * 64 + static_cast<size_t>(__builtin_ctzll(classes));
    FreeCompletedPagesOfInbox(heap, c, /*caller_is_owner=*/true);
    // The housekeeping or another heap may hold some of this inbox
    // (CollectInboxes, FreeOtherHeapsCompletedPages), and a page in its
    // hands may complete after it looked: look again next time.
    if (heap->inbox_borrowed.load(std::memory_order_acquire) != 0) NoteInboxPageComplete(heap, c);
  }
  heap->inbox_owner_holding.store(0, std::memory_order_release);
}

// True when the heap stops keeping standby pages, having released them
// all: more displaced than are kept, none of them used again meanwhile
// (AllocateFromQueuedPage), is a heap shrinking, not a round that its next
// one repays; pages then go at once until the heap next runs short of
// blocks (AllocateSlow). Kept, the last 16 of six threads' 16 MiB of frees
// stayed resident while the threads idled: 8.3 MiB above the baseline
// where 2.1 was (Rss.MemoryFreedByItsOwnThreadReturnsWhileTheThreadIdles).
// Released as a free releases a page; a pool their release asks for starts
// once the emptied page is dealt with (FreeEmptiedPage): started here,
// pthread_create's allocations could take a block of that page, which the
// caller then released with the block live.
bool PausesStandby(Heap* heap, bool* asked_for_pool) {
  if (heap->standby_pages < kStandbyPagesMax || ++heap->standby_displaced <= kStandbyPagesMax) return false;
  heap->standby_paused = true;
  for (Page* standby : heap->standby_slots) {
    if (standby == nullptr) continue;
    QueueRemove(&heap->queues[standby->size_class], standby);  // clears the slot; never a head
    *asked_for_pool |= ReleasePageFromFreeAsking(heap, standby);
  }
  return true;
}

// An empty page of one slice, one of its class's several, stays on the
// queue as a standby page, at its tail: pages with blocks out are handed out
// from first, so that a standby page the class does not need again is left
// empty, to go back to its segment with the retained pages
// (ReleaseStandbyPages). It is never its class's current page (EndStandby),
// so no block of it is out. Returns the page it displaced, the oldest
// standby page where kStandbyPagesMax are kept already, off its queue, for
// the caller to release: a thread that frees a few hundred pages' worth
// then keeps the last ones it emptied, in the segments it used last, not
// the first ones, each pinning a segment that is empty otherwise.
Page* KeepOnStandby(Heap* heap, PageQueue* q, Page* page) {
  uint32_t slot = heap->standby_next_slot;
  Page* displaced = nullptr;
  if (heap->standby_pages == kStandbyPagesMax) {
    displaced = heap->standby_slots[slot];
    QueueRemove(&heap->queues[displaced->size_class], displaced);  // frees the slot; never a head
    // Its class's only page now, and so its current page (a standby page
    // never is): it stays as that. PageToReleaseOnEmpty keeps such a page
    // current before it gets here (the soak's abort came from the first
    // form, which marked it): a guard, not a path.
    if (q->head == page && q->tail == page) return displaced;
  } else {
    while (heap->standby_slots[slot] != nullptr) slot = (slot + 1) % kStandbyPagesMax;
  }
  if (page != q->tail) {
    const bool was_head = page == q->head;
    QueueRemove(q, page);
    QueuePushBack(q, page);
    if (was_head) SyncDirect(heap, page->size_class);
  }
  heap->standby_slots[slot] = page;
  page->standby = static_cast<uint8_t>(slot + 1);
  ++heap->standby_pages;
  heap->standby_next_slot = (slot + 1) % kStandbyPagesMax;
  heap->retained_until = heap->slow_paths + kRetainSlowPaths;
  return displaced;
}

// All of this page's blocks are free (used == 0). Returns the page to
// release now, off its queue (this one, or a standby page it displaced), or
// nullptr.
Page* PageToReleaseOnEmpty(Heap* heap, Page* page, bool* asked_for_pool) {
  if (page->kind == PageKind::kSmall) {
    PageQueue* q = &heap->queues[page->size_class];
    // A class's only page stays, so that a block allocated and freed in a
    // loop does not make and release a page each time. A page of several
    // slices (a medium class: up to 2 MiB) stays only a while: the heap's
    // next kRetainSlowPaths slow paths in other classes let it go
    // (ReleaseRetainedPages). Kept for good, a growing vector's old buffers
    // held 2.7 MiB in onefree. Released at once, a malloc/free loop of
    // 100 KiB took 67 ns a pair instead of 18; after 64 slow paths, the
    // realloc workload's peak RSS grew 14 -> 17 MiB (medium runs broken up
    // by one-slice pages while their slices waited); after 256, 14.
    if (q->head == page && q->tail == page) {
      if (page->slice_count > 1) RetainForAWhile(heap, page);
      return nullptr;
    }
    if (page->slice_count == 1) {
      // The current page stays current where the page behind it has no
      // block to hand out either (a standby page has all of its blocks, but
      // is the last to be used again): moved behind it, it made that page
      // current, and a malloc/free loop of one block then swapped the two
      // at every free, through a slow path where the page behind was dry.
      if (q->head == page && PageCannotHandOutFirst(page->queue_next)) return nullptr;
      if (!heap->standby_paused && !PausesStandby(heap, asked_for_pool)) return KeepOnStandby(heap, q, page);
    }
    QueueRemove(q, page);
    SyncDirect(heap, page->size_class);
  }
  return page;
}

// The standby pages (KeepOnStandby) of every class but `keep`.
void ReleaseStandbyPages(Heap* heap, size_t keep) {
  for (Page*& slot : heap->standby_slots) {
    Page* page = slot;
    if (page == nullptr || page->size_class == keep) continue;
    FERRY_CHECK(page->used == 0);
    QueueRemove(&heap->queues[page->size_class], page);  // clears the slot; never the head
    ReleasePage(heap, page);
  }
}

// The retained empty pages (PageToReleaseOnEmpty) of every class but `keep` that are
// still their class's only page and still empty, and the standby pages.
void ReleaseRetainedPages(Heap* heap, size_t keep) {
  ReleaseStandbyPages(heap, keep);
  for (size_t w = 0; w < std::size(heap->retained_classes); ++w) {
    for (uint64_t classes = heap->retained_classes[w]; classes != 0; classes &= classes - 1) {
      const size_t c = w * 64 + static_cast<size_t>(__builtin_ctzll(classes));
      if (c == keep) continue;
      heap->retained_classes[w] &= ~(uint64_t{1} << (c % 64));
      PageQueue* q = &heap->queues[c];
      Page* page = q->head;
      if (page == nullptr || page != q->tail || page->used != 0) continue;  // in use again
      QueueRemove(q, page);
      SyncDirect(heap, c);
      ReleasePage(heap, page);
    }
  }
  // Only `keep`'s is left, if it was retained: counted as a page of its
  // class whether or not it has one now (a collect may have released it,
  // and RetainForAWhile does not count a class whose bit is set).
  const bool kept = keep < kNumClasses && (heap->retained_classes[keep / 64] & (uint64_t{1} << (keep % 64))) != 0;
  heap->retained_slices = kept ? kPageSlices[keep] : 0;
  if ((heap->retained_classes[0] | heap->retained_classes[1]) == 0 && heap->standby_pages == 0) {
    heap->retained_until = heap->slow_paths + kNothingRetained;  // not due until a page is retained
  } else if (heap->standby_pages != 0) {
    // Only `keep`'s standby pages are left: due again in a while, not at
    // every slow path of the class, which may never reach them (its current
    // page refilled by other threads' returns).
    heap->retained_until = heap->slow_paths + kRetainSlowPaths;
  }
}

// --- heaps ---------------------------------------------------------------------

void AbandonHeap(Heap* heap);

void OnThreadExit(void* value) {
  Heap* heap = static_cast<Heap*>(value);
  // Only this thread's own heap: a thread that left by a raw exit system
  // call left its stack to glibc's cache with its TSD values as they were,
  // and the next thread there runs ferry's destructor with the gone
  // thread's heap, which another thread may own by now (abandoned as a
  // gone thread's, then taken over: a bug hunt's torture corrupted free
  // lists so). Thread-locals start afresh on a reused stack, so tl_heap
  // tells the thread's own.
  if (heap == tl_heap && heap != &g_empty_heap) AbandonHeap(heap);
  // From here on this thread never owns a heap again: the TSD destructor
  // rounds may be over, so a heap taken now would never be abandoned.
  tl_exiting = true;
}

// After the pool has parked and the housekeeping's turn is held (a thread
// in its turn never returns blocks inline, so it cannot be waiting at the
// gate), and before the allocator's locks (a return in progress may need
// none, but is not made to wait on them either).
// The forking thread's own heap is skipped: a fork from a signal handler
// that interrupted one of its returns leaves that return to it. (It is never
// inside a return without a heap: signals are blocked there.)
void HoldInlineReturnsForFork() {
  g_inline_returns_held.store(true, std::memory_order_seq_cst);
  // seq_cst, with CreateHeap's push: a heap this walk misses was pushed after
  // the flag was set, and its owner sees the flag.
  for (Heap* heap = g_all_heaps.load(std::memory_order_seq_cst); heap != nullptr; heap = heap->all_next) {
    if (heap == tl_heap) continue;
    while (heap->returns_in_progress.load(std::memory_order_seq_cst) != 0) sched_yield();
  }
  while (g_heapless_returns.load(std::memory_order_seq_cst) != 0) sched_yield();
}

// In the child: the threads counted in the other heaps' counts are gone (one
// could have counted itself at the gate just before the fork); this
// thread's own count is exact, being its own.
void ResetInlineReturnsInChild() {
  for (Heap* heap = g_all_heaps.load(std::memory_order_relaxed); heap != nullptr; heap = heap->all_next) {
    if (heap != tl_heap) heap->returns_in_progress.store(0, std::memory_order_relaxed);
  }
  g_heapless_returns.store(0, std::memory_order_relaxed);
  g_inline_returns_held.store(false, std::memory_order_relaxed);
}

// The pool quiesces first (its threads may take the allocator's locks in
// their housekeeping), then the allocator's locks are held across fork().
void AtForkPrepare() {
  g_forking.store(true, std::memory_order_relaxed);
  tl_forking = true;
  PoolForkPrepare();
  HoldInlineReturnsForFork();
  g_exit_lock.LockForFork();
  g_abandoned_lock.LockForFork();
  ArenaLockForFork();
  HugeCacheLockForFork();
}
void AtForkParent() {
  HugeCacheUnlockAfterFork();
  ArenaUnlockAfterFork();
  g_abandoned_lock.UnlockAfterFork();
  g_exit_lock.UnlockAfterFork();
  g_inline_returns_held.store(false, std::memory_order_release);
  tl_forking = false;
  PoolForkParent();
  g_forking.store(false, std::memory_order_relaxed);
}
void AbandonOrphanedHeapsInChild();
void TakeOwnershipInChild();
void ReleaseAbandonedSparesInChild();
void AtForkChild() {
  // This handler ran, so the handlers are registered here whatever state
  // the registering thread (absent here) had reached (EnsureForkHandlers).
  g_fork_handlers.store(kOnceDone, std::memory_order_relaxed);
  HugeCacheUnlockAfterFork();
  ForgetResidentTailsInChild();
  TrimHugeCacheInChild();
  ArenaUnlockAfterFork();
  g_abandoned_lock.UnlockAfterFork();
  g_exit_lock.UnlockAfterFork();
  ResetInlineReturnsInChild();  // only this thread is left
  // The other threads that were in one (waiting for the arena lock the
  // fork held, say) are gone: left counted, they would keep every
  // unmapping from going ahead (ArenaUnreserveFreeSegments). This thread's
  // own stay counted: fork() from a signal handler that interrupted a
  // free may be in one, and closes it later.
  for (int slot = 0; slot < 2; ++slot) {
    g_segment_read_windows.open[slot].store(tl_segment_read_windows[slot], std::memory_order_relaxed);
  }
  tl_forking = false;
  PoolForkChild();
  AbandonOrphanedHeapsInChild();
  TakeOwnershipInChild();
  ReleaseKeptEmptySegments(tl_heap);
  ReleaseAbandonedSparesInChild();
  g_threads_seen.store(tl_seen ? 1 : 0, std::memory_order_relaxed);
  g_forking.store(false, std::memory_order_relaxed);
}

Heap* CreateHeap() {
  const size_t batch_bytes = static_cast<size_t>(g_options.batch) * sizeof(void*);
  const size_t bytes = AlignUp(sizeof(Heap) + kBatchesPerHeap * batch_bytes, OsPageSize());
  void* memory = OsReserveMakingRoom(bytes, OsPageSize());
  if (memory == nullptr) return nullptr;
  Heap* heap = new (memory) Heap();
  char* batch_memory = reinterpret_cast<char*>(heap + 1);
  for (int i = 0; i < kBatchesPerHeap; ++i) {
    heap->batches[i].ptrs = reinterpret_cast<void**>(batch_memory + i * batch_bytes);
  }
  heap->current = &heap->batches[0];
  heap->batch = heap->current->ptrs;
  static std::atomic<uint32_t> heap_serial{0};  // constant-initialised: no guard
  heap->home = heap_serial.fetch_add(1, std::memory_order_relaxed);
  heap->batch_limit = static_cast<uint32_t>(g_options.batch);
  heap->batch_bytes_limit = static_cast<size_t>(g_options.batch_bytes);
  Heap* first = g_all_heaps.load(std::memory_order_relaxed);
  do {
    heap->all_next = first;
  } while (!g_all_heaps.compare_exchange_weak(first, heap, std::memory_order_seq_cst,
                                              std::memory_order_relaxed));
  CounterAdd(Counter::heaps_created, 1);
  if (Verbose(1)) DiagLine().Str("ferry: heap ").Ptr(heap).Str(" created").WriteToStderr();
  return heap;
}

bool OwnersMarkSet() {
  const std::atomic<uint64_t>* mark = g_owners_mark.load(std::memory_order_relaxed);
  return mark != nullptr && mark->load(std::memory_order_relaxed) != 0;
}

void SetUpOwnersMark() {
  void* page = OsReserve(OsPageSize(), OsPageSize());
  if (page == nullptr) return;
  if (!OsWipeInChildren(page, OsPageSize())) {
    OsRelease(page, OsPageSize());
    return;
  }
  auto* mark = new (page) std::atomic<uint64_t>(1);
  g_owners_mark.store(mark, std::memory_order_relaxed);
}

int32_t OwnerTid(uint64_t owner) { return static_cast<int32_t>(owner & kOwnerTidMask); }
// The heap changes hands: the count above the id moves on.
void SetOwner(Heap* heap, int32_t tid) {
  const uint64_t count = (heap->owner.load(std::memory_order_relaxed) | kOwnerTidMask) + 1;
  heap->owner.store(count | static_cast<uint32_t>(tid), std::memory_order_release);
}
void ClearOwnerTid(Heap* heap) {
  heap->owner.store(heap->owner.load(std::memory_order_relaxed) & ~kOwnerTidMask,
                    std::memory_order_release);
}

// Abandoned heaps that hold their spare segment committed for the next
// owner (AbandonHeap), at most kAbandonedSparesKept of them.
constinit std::atomic<uint32_t> g_abandoned_spares{0};
constexpr uint32_t kAbandonedSparesKept = 8;

// The heap, off the abandoned list, no longer counts its spare as kept for
// a next owner.
void ForgetAbandonedSpare(Heap* heap) {
  if (!heap->abandoned_with_spare) return;
  heap->abandoned_with_spare = false;
  g_abandoned_spares.fetch_sub(1, std::memory_order_relaxed);
}

// The most recently abandoned heap first: a thread that takes over the heap
// of the thread that just exited (larson hands its objects to a fresh
// thread) frees that thread's blocks as its own, not as remote frees (taking
// the oldest instead doubled larson's remote frees).
Heap* TakeAbandonedHeap() {
  SpinLockHolder hold(&g_abandoned_lock);
  Heap* heap = g_abandoned_done;
  if (heap != nullptr) {
    g_abandoned_done = heap->abandoned_next;
    if (g_abandoned_done == nullptr) g_abandoned_done_tail = nullptr;
  } else {
    heap = g_abandoned;
    if (heap == nullptr) return nullptr;
    g_abandoned = heap->abandoned_next;
  }
  heap->abandoned_next = nullptr;
  heap->abandoned = false;
  ForgetAbandonedSpare(heap);  // its spare is the new owner's now
  return heap;
}

void PushAbandonedDoneLocked(Heap* heap) {
  heap->abandoned_next = g_abandoned_done;
  g_abandoned_done = heap;
  if (g_abandoned_done_tail == nullptr) g_abandoned_done_tail = heap;
}

// pass_before_collect: g_abandoned_pass as read before the heap's last
// CollectHeap began. A collect pass that had begun by then needs no second
// look at the heap (whatever its collects were asked to cover came back
// before); otherwise the pass now running, if any, collects it too.
// Collecting every heap abandoned during a pass instead would let threads
// that take a heap and exit at once keep a pass (and the duty turn) going
// for as long as they ran.
void PushAbandoned(Heap* heap, uint64_t pass_before_collect) {
  const uint64_t now_ms = OsMonotonicMs();
  SpinLockHolder hold(&g_abandoned_lock);
  heap->abandoned = true;
  heap->abandoned_ms = now_ms;
  heap->free_blocks_given_back = false;
  ClearOwnerTid(heap);
  if (pass_before_collect == g_abandoned_pass.load(std::memory_order_relaxed)) {
    PushAbandonedDoneLocked(heap);
    return;
  }
  heap->abandoned_next = g_abandoned;
  g_abandoned = heap;
}

// Registers the handlers once the caller has won OnceBegin(g_fork_handlers).
// An allocation by pthread_atfork itself finds the state this process's
// pid, and goes on (EnsureForkHandlers).
void RegisterForkHandlersClaimed() {
  pthread_atfork(AtForkPrepare, AtForkParent, AtForkChild);
  g_fork_handlers.store(kOnceDone, std::memory_order_release);
}

// The fork handlers, registered when ferry is loaded (RegisterForkHandlersAtLoad).
// A child forked mid-registration, whose state is then the parent's pid,
// registers them at its first heap or ferry_collect (which takes the
// pool's duty turn even in a program that never allocated with ferry),
// unless they made it into the parent's list in time (then AtForkChild
// marks them done).
//
// Not before the constructor: a library initialised before ferry (a
// program's own libraries initialise before a preloaded one; in a static
// link, constructors of priority 101 or less) may allocate first, and one
// whose 49th pthread_atfork grew glibc's list by malloc under glibc's
// atfork lock hung when that malloc's heap registered ferry's handlers (a
// review, 2026-12-05). A fork before the constructor, while other threads
// allocate, is left uncovered: a library's constructor would have to start
// them and fork.
//
// Nor while ferry's constructor registers them: a thread of a library
// initialised earlier may be inside the program's own pthread_atfork, its
// list-growing malloc making its first heap, and holding glibc's atfork
// lock, which the constructor's registration waits for; that heap waiting
// for the constructor would wait for good (a review's code argument).
// A fork meanwhile waits for that lock too, so it runs ferry's handlers;
// only one in the instant between the constructor's claim and its call
// does not (at load, from a thread a library started).
void EnsureForkHandlers() {
  const int64_t seen = g_fork_handlers.load(std::memory_order_acquire);
  if (FERRY_LIKELY(seen == kOnceDone)) return;
  // Not loaded yet, or the constructor (or this very registration's
  // allocation) registering them now.
  if (seen == kOnceNotRun || seen == getpid()) return;
  if (OnceBegin(g_fork_handlers)) RegisterForkHandlersClaimed();
}

// At load, before the program's own constructors and main: glibc runs
// prepare handlers in the reverse order of registration and the others in
// that order, so the handlers a program registers afterwards run outside
// ferry's, while every allocator lock is free. Registered at the first heap
// instead, ferry's came after those a program registered before its first
// malloc: a prepare handler that waited for a worker to pause waited for
// good (the worker spun on a lock ferry's prepare held), and with 49 such
// handlers glibc's list grew by malloc under its atfork lock, and ferry's
// registration from that malloc took the lock again (a bug hunt,
// 2026-12-05). In a static link, before the program's own constructors too
// (101: the first priority open to programs).
__attribute__((constructor(101))) void RegisterForkHandlersAtLoad() {
  if (OnceBegin(g_fork_handlers)) RegisterForkHandlersClaimed();
}

void AbandonSomeHeapsOfGoneThreads(void*);
bool MayNameOwners(int32_t tid);

}  // namespace

std::atomic<void (*)()> g_gone_owners_look_hook_for_test{nullptr};
std::atomic<void (*)()> g_take_ownership_hook_for_test{nullptr};
std::atomic<void (*)()> g_gone_owners_tried_hook_for_test{nullptr};

Heap* InitThreadHeap() {
  // The caller saw the empty heap, but an allocation nested in between may
  // have made this thread's heap: AllocateSlow starts a pending pool first,
  // and pthread_create allocates. A second heap would have overwritten the
  // first in tl_heap, and the first, owned by nobody and never abandoned,
  // was lost with every block it held.
  if (tl_heap != &g_empty_heap) return tl_heap;
  EnsureGlobalInit();
  // A reclaimer never takes over an abandoned heap: the pool looks after
  // those, and its threads' heaps hold only their own memory.
  const bool reclaimer = IsReclaimerThread();
  Heap* heap = reclaimer ? nullptr : TakeAbandonedHeap();
  if (heap == nullptr && !reclaimer && OwnersMarkSet()) {
    // Signals blocked while this thread holds the duty turn: a handler that
    // forked (or collected) would wait for the turn for good.
    sigset_t all;
    sigset_t old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    const bool looked = PoolTryRunInDutyTurn(AbandonSomeHeapsOfGoneThreads, nullptr);
    if (auto hook = g_gone_owners_tried_hook_for_test.load(std::memory_order_relaxed)) hook();
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    // A signal held meanwhile is handled as the mask comes off, and its
    // handler's allocation may have made this thread's heap (above): a
    // second one made here would leave it to nobody (a review's program,
    // the turn busy, so nothing looked).
    if (tl_heap != &g_empty_heap) return tl_heap;
    if (looked) heap = TakeAbandonedHeap();
  }
  if (heap != nullptr) {
    CounterAdd(Counter::heaps_reused, 1);
    if (Verbose(1)) DiagLine().Str("ferry: heap ").Ptr(heap).Str(" taken over by a new thread").WriteToStderr();
  } else {
    heap = CreateHeap();
    if (heap == nullptr) return nullptr;
    heap->is_reclaimer = reclaimer;
  }
  tl_heap = heap;
  if (!reclaimer) {
    const int32_t tid = OsThreadId();
    if (MayNameOwners(tid)) SetOwner(heap, tid);
  }
  CountThisThread();
  // May allocate (past the first 32 keys); tl_heap is set, so that is safe.
  pthread_setspecific(g_thread_key, heap);
  EnsureForkHandlers();
  return heap;
}

namespace {

// Hands the current batch on: to the pool when it takes it and the heap has
// a spare batch to fill meanwhile, else sorted and returned right here. The
// heap switches to the spare before offering, so any free made while the
// pool starts (pthread_create allocates) lands in the spare.
void PublishBatch(Heap* heap, bool may_spawn) {
  const uint32_t count = heap->batch_count;
  if (count == 0) return;
  Batch* full = heap->current;
  full->count = count;
  full->bytes = heap->batch_bytes;
  heap->batch_count = 0;
  heap->batch_bytes = 0;
  CounterAdd(Counter::remote_frees, count);
  CounterAdd(Counter::batches_published, 1);
  Batch* spare = nullptr;
  int spares = 0;
  size_t waiting_bytes = full->bytes;  // freed by this heap, not yet back home
  for (Batch& b : heap->batches) {
    if (&b == full) continue;
    if (b.in_flight.load(std::memory_order_acquire) == 0) {
      if (spare == nullptr) spare = &b;
      ++spares;
    } else {
      waiting_bytes += b.bytes;
    }
  }
  if (spare != nullptr) {
    heap->current = spare;
    heap->batch = spare->ptrs;
    // A sleeping reclaimer is woken when this heap would have no spare
    // left, or when the memory its batches hold reaches kWakeBytes: many
    // small blocks per wake-up, but never much memory kept from its owners.
    const bool wake_now = spares == 1 || waiting_bytes >= kWakeBytes;
    if (PoolOffer(full, heap->home, wake_now, may_spawn)) return;
  }
  ReturnBatchInline(heap, full->ptrs, count);
}

// Free blocks at least this large on pages still in use give their memory
// past their first OS page (the page holds their link) back to the OS
// where nothing will allocate them soon (PurgeFreeBlockInteriors): a heap
// abandoned for a while, and ferry_collect (malloc_trim, which glibc's
// does for free chunks too). A page of a medium class holds a few blocks
// (a 256 KiB class: five, 20 slices), and one live block kept all of it
// resident: threads that built 48 MiB each of 16 B-256 KiB blocks and
// exited, 90% freed by main, left 58 MiB resident for 17 MiB of blocks,
// all of it in pages in use (perf/RESULTS.md, 2026-12-07).
constexpr size_t kFreeBlockPurgeMin = size_t{32} << 10;

// The memory of the free block `block` of `size` bytes past its first OS
// page, back to the OS where any of it is resident; the bytes that were.
size_t GiveBackBlockInterior(const Block* block, size_t size) {
  const size_t os_page = OsPageSize();
  const uintptr_t from = AlignUp(reinterpret_cast<uintptr_t>(block) + sizeof(Block), os_page);
  const uintptr_t to = AlignDown(reinterpret_cast<uintptr_t>(block) + size, os_page);
  if (to <= from) return 0;
  const size_t resident = OsResidentPages(reinterpret_cast<void*>(from), to - from);
  if (resident == 0 || !OsDecommit(reinterpret_cast<void*>(from), to - from)) return 0;
  return resident == SIZE_MAX ? to - from : resident * os_page;
}

// Gives back to the OS the memory of the free blocks on `page`'s list before
// `stop` (nullptr: all of them), past each one's first OS page (which holds
// its link). The caller has the heap to itself (its owner, or the collector
// of an abandoned one); with a `stop` (Page::purged_free, the list's head
// at the page's last purge in the same spell without an owner), the blocks
// behind it gave theirs back then. Only a block with pages resident costs
// the madvise, and only those pages count: madvise does not say, and a
// second malloc_trim must answer 0. Returns the bytes.
size_t PurgeFreeBlockInteriors(Page* page, const Block* stop) {
  if (page->kind != PageKind::kSmall || page->block_size < kFreeBlockPurgeMin || page->used == 0) return 0;
  const size_t size = page->block_size;
  size_t bytes = 0;
  uint32_t walked = 0;
  for (Block* block = page->free; block != nullptr && block != stop;) {
    // The head too: a pop checks only that the next block is in the page.
    // One that is not a block start was written after its free; the
    // madvise would reach a live neighbour, so the rest stays as it is.
    if (!IsBlockStart(page, reinterpret_cast<uintptr_t>(block))) break;
    bytes += GiveBackBlockInterior(block, size);
    // Each link checked and the walk counted, as AdoptOntoLists does: a
    // block written after its free can neither loop the walk nor send it
    // outside the page.
    Block* next = DecodeNext(block->next_encoded);
    if (next != nullptr && !IsInCarvedRange(page, next)) ReportCorruptFreeList(page, block, next);
    if (++walked > page->capacity) ReportCorruptFreeList(page, block, next);
    block = next;
  }
  page->purged_free = page->free;
  if (bytes != 0) CounterAdd(Counter::bytes_decommitted, static_cast<int64_t>(bytes));
  return bytes;
}

// --- returned chains that wait ---------------------------------------------------

// Page::returned_seen_ms once the housekeeping gave back the chain it saw.
constexpr uint64_t kChainGivenBack = UINT64_MAX;

// A chain the housekeeping took off its page (GiveBackWaitingChains).
struct TakenChain {
  Page* page;
  Heap* heap;  // the page's owner (heaps never go)
  Block* head;
  uint32_t count;
  uintptr_t marks;  // the word's, as the chain was taken
};

// Chains one heap's look takes before it lets go of the heap's segment
// list and walks them.
constexpr size_t kTakenChainsMax = 64;
// Rounds of kTakenChainsMax an urgent look makes of one heap at most.
constexpr int kUrgentRoundsMax = 16;

// Takes the housekeeping is making now: counted from before its CAS on a
// page's word until the page's heap counts the chain (Heap::chains_away),
// which it can read only once the CAS has made the page its own (a page
// seen a moment before may have been released since).
constinit std::atomic<uint32_t> g_chain_takes_in_progress{0};
}  // namespace
constinit std::atomic<void (*)(Page*)> g_chain_away_hook_for_test{nullptr};
namespace {
// This thread holds chains away now (GiveBackWaitingChains). volatile, and
// its stores fenced for signals: a handler's allocation on this thread
// reads it.
__thread volatile bool tl_holding_chains __attribute__((tls_model("initial-exec"))) = false;

// Owner, where a page of a class whose chains the housekeeping takes shows
// no returned chain (an acquire load of its word, as in ChainsWereAway):
// true if none of its heap's was away then, nor came back since
// `back_before` (Heap::chains_back read before that load).
bool NoChainWasAway(const Heap* heap, uint32_t back_before) {
  return g_chain_takes_in_progress.load(std::memory_order_acquire) == 0 &&
         heap->chains_away.load(std::memory_order_acquire) == 0 &&
         heap->chains_back.load(std::memory_order_acquire) == back_before;
}
// How long an owner waits for chains away at most: their holder walks a
// few blocks and makes a system call or two for each, unless it was
// descheduled (or stopped) meanwhile.
constexpr uint64_t kChainsAwayWaitMaxMs = 1000;

// Owner, about to carve blocks of a class whose chains the housekeeping
// takes: true if a chain of its heap's pages was away during its looks
// since `back_before` (Heap::chains_back then), after waiting for those
// away now to come back. Not on the thread that holds them (a signal
// handler's allocation inside the housekeeping's look), and not for ever.
// Other heaps' chains are not waited for: until 2026-12-08 one count for
// the process made every thread short of a large class wait while the
// housekeeping gave back any sleeping thread's chains.
FERRY_NOINLINE bool ChainsWereAway(const Heap* heap, uint32_t back_before) {
  // The owner's looks read the page words with acquire (RefillPage, the
  // exchanges): one that read a take's CAS sees the count raised before
  // it. acquire below, with the releases in GiveBackWaitingChains: a chain
  // counted back is on its page.
  bool away = false;
  uint64_t since_ms = 0;
  const auto any_away = [heap] {
    return g_chain_takes_in_progress.load(std::memory_order_acquire) != 0 ||
           heap->chains_away.load(std::memory_order_acquire) != 0;
  };
  for (uint32_t waits = 0; !tl_holding_chains && any_away(); ++waits) {
    away = true;
    if (waits % 64 == 0) {
      const uint64_t now_ms = OsMonotonicMs();
      if (since_ms == 0) since_ms = now_ms;
      if (now_ms - since_ms >= kChainsAwayWaitMaxMs) break;
    }
    sched_yield();
  }
  return away || heap->chains_back.load(std::memory_order_acquire) != back_before;
}

// Gives back the memory of a chain taken off its page, past each block's
// first OS page, and pushes the chain back (ReturnChain) as the remote
// frees it was. Its blocks still count as used, so the page, and so its
// record, stays what it is until then.
void GiveBackTakenChain(const TakenChain& taken) {
  Page* page = taken.page;
  // A page made for another class since the hint was read: back as it was.
  const bool gives_back = page->kind == PageKind::kSmall && page->block_size >= kFreeBlockPurgeMin;
  size_t bytes = 0;
  uint32_t walked = 1;
  Block* tail = taken.head;
  for (;;) {
    if (gives_back) bytes += GiveBackBlockInterior(tail, page->block_size);
    // Each link in the page and at a block start, the walk counted: a link
    // written after its free stops the program here, as the owner's walks
    // do, before a madvise could reach a live neighbour. (The head is the
    // free path's, checked there.)
    Block* next = DecodeNext(tail->next_encoded);
    if (next == nullptr) break;
    if (!IsInCarvedRange(page, next) || ++walked > taken.count) ReportCorruptFreeList(page, tail, next);
    if (!IsBlockStart(page, reinterpret_cast<uintptr_t>(next))) {
      ReportBadChainLink(page, tail, next, "inside a block, not at its start");
    }
    tail = next;
  }
  if (walked != taken.count) ReportBadChainLink(page, tail, nullptr, "the chain's end before its count");
  if (auto hook = g_chain_away_hook_for_test.load(std::memory_order_relaxed); FERRY_UNLIKELY(hook != nullptr)) hook(page);
  // The word the push makes if nothing comes meanwhile, marked given back:
  // the next looks pass it by until it changes (a word that differs, the
  // page marked full meanwhile, or blocks pushed in front, is looked at
  // again after the delay, and mincore spares the blocks given back now).
  // Written before the push: from the push on, the page may be freed (its
  // last blocks back), and its segment with it.
  page->returned_seen.store(reinterpret_cast<uintptr_t>(taken.head) |
                                (uintptr_t{taken.count} << kReturnedCountShift) | taken.marks,
                            std::memory_order_relaxed);
  page->returned_seen_ms.store(kChainGivenBack, std::memory_order_relaxed);
  ReturnChain(page, taken.head, tail, taken.count);
  if (bytes != 0) CounterAdd(Counter::bytes_decommitted, static_cast<int64_t>(bytes));
}

// Gives back everything of this heap that is free now: adopts returned
// chains, releases empty pages and the spare segment; with
// FreeBlocks::kGiveBack, also the memory of large free blocks on pages
// still in use (PurgeFreeBlockInteriors). With FreeBlocks::kKeep, true
// where it left such blocks on a page in use.
bool CollectHeap(Heap* heap, KeepEmpty keep, FreeBlocks free_blocks) {
  bool kept_large_free_blocks = false;
  DrainAllInboxes(heap);
  for (size_t c = 0; c < kNumClasses; ++c) {
    PageQueue* q = &heap->queues[c];
    for (Page* page = q->head; page != nullptr;) {
      Page* next = page->queue_next;
      AdoptOntoLists(page);
      if (page->used == 0) {
        QueueRemove(q, page);
        ReleasePage(heap, page);
      } else if (free_blocks != FreeBlocks::kKeep) {
        // Adopted chains (here, or by the inbox drain above) go in front of
        // the blocks the last purge walked.
        PurgeFreeBlockInteriors(page, free_blocks == FreeBlocks::kGiveBackAdopted ? page->purged_free : nullptr);
      } else if (page->block_size >= kFreeBlockPurgeMin && page->free != nullptr) {
        kept_large_free_blocks = true;
      }
      page = next;
    }
    SyncDirect(heap, c);
  }
  heap->standby_displaced = 0;  // every standby page released: a fresh start (KeepOnStandby)
  heap->standby_paused = false;
  // Every empty segment, the spare too, and those that pages of other
  // heaps, or the pool, emptied meanwhile.
  SpinLockHolder hold(&heap->segments_lock);
  for (Segment* segment = heap->segments; segment != nullptr;) {
    Segment* next = segment->heap_next;
    ReleaseSegmentIfEmptyLocked(heap, segment, keep);
    segment = next;
  }
  if (keep == KeepEmpty::kSpare) return kept_large_free_blocks;
  if (heap->spare != nullptr) heap->spare->is_spare.store(false, std::memory_order_relaxed);
  heap->spare = nullptr;  // released above, or in use again
  ForgetAbandonedSpare(heap);
  return kept_large_free_blocks;
}

// Returns the batch of a heap whose owner can no longer hand it on (a
// thread gone, a reclaimer that did not come along into a fork child),
// counted as PublishBatch counts a batch sorted inline.
void ReturnUnpublishedBatch(Heap* heap) {
  const uint32_t count = heap->batch_count;
  if (count == 0) return;
  CounterAdd(Counter::remote_frees, count);
  CounterAdd(Counter::batches_published, 1);
  ReturnBatch(heap->batch, count);
  CountBatchInline();
  heap->batch_count = 0;
  heap->batch_bytes = 0;
}

void AbandonHeap(Heap* heap) {
  // Whoever takes it over is an ordinary thread, and a fork child must leave
  // it be meanwhile (AbandonOrphanedHeapsInChild collects a reclaimer's heap
  // as a parked one's). Reclaimers leave as ordinary threads
  // (LeavingReclaimer); this is for any heap that still says otherwise.
  __atomic_store_n(&heap->is_reclaimer, false, __ATOMIC_SEQ_CST);
  PublishBatch(heap, /*may_spawn=*/false);  // an exiting thread (FreeMayStartPool)
  const uint64_t pass = g_abandoned_pass.load(std::memory_order_acquire);
  // One empty segment stays committed for the thread that takes the heap
  // over next, as a live owner keeps its spare: released, each segment was
  // decommitted whole (ArenaReleaseSegment), and a program that ran four
  // threads at a time, each taking 2 MiB and 300 KB and exiting, faulted
  // every page in afresh, 2000 threads in 4.3 s (glibc 0.20, mimalloc 0.18;
  // perf/RESULTS.md, 2026-12-07). At most kAbandonedSparesKept heaps keep
  // one (32 MiB); the pool's collect of abandoned heaps, or ferry_collect,
  // gives them back.
  // Not under an address-space limit: the segment unmapping for a huge
  // block's room (MakeRoomInAddressSpace) sees only its own thread's kept
  // segments, and 32 MiB held by abandoned heaps refused what fitted before
  // (a review).
  const bool counted = OsAddressSpaceLimit() == SIZE_MAX;
  const bool keep_spare =
      counted && g_abandoned_spares.fetch_add(1, std::memory_order_relaxed) < kAbandonedSparesKept;
  CollectHeap(heap, keep_spare ? KeepEmpty::kSpare : KeepEmpty::kNothing, FreeBlocks::kKeep);
  if (keep_spare && heap->spare != nullptr) {
    heap->abandoned_with_spare = true;
  } else if (counted) {
    g_abandoned_spares.fetch_sub(1, std::memory_order_relaxed);
  }
  tl_heap = &g_empty_heap;
  // A thread that left a return early (pthread_exit or longjmp from a
  // handler inside one) would leave it counted for good: every fork would
  // wait for it, and the heap's next owner would never wait at the gate.
  heap->returns_in_progress.store(0, std::memory_order_relaxed);
  CounterAdd(Counter::heaps_abandoned, 1);
  if (Verbose(1)) DiagLine().Str("ferry: heap ").Ptr(heap).Str(" abandoned by its exiting thread").WriteToStderr();
  PushAbandoned(heap, pass);
}

// After fork, in the child: the reclaimers did not come along, but they
// parked between batches, so their heaps are consistent; give them to the
// abandoned list for the child's threads. Heaps of the parent's other
// threads stay as they are: such a thread may have been inside malloc when
// fork() ran, so its heap cannot be trusted (its memory stays unused, as
// with any allocator). One flag of theirs is cleared: a thread caught
// holding one of its inboxes' lists (FreeCompletedInboxPages) would leave
// inbox_owner_holding set for good, and every heap of the child's that then
// took a new page would set that heap's inbox bits again and walk its
// inboxes once more.
bool CollectAbandonedHeaps(uint64_t now_ms, bool urgent);

// The spares abandoned heaps keep (AbandonHeap) go back in a fork child,
// which has no pool to collect them and may never start one (a review):
// up to 32 MiB committed for good otherwise. Only this thread is left, so
// the lists are the child's own to walk.
void ReleaseAbandonedSparesInChild() {
  if (g_abandoned_spares.load(std::memory_order_relaxed) == 0) return;
  for (Heap* list : {g_abandoned, g_abandoned_done}) {
    for (Heap* heap = list; heap != nullptr; heap = heap->abandoned_next) {
      if (heap->abandoned_with_spare) CollectHeap(heap, KeepEmpty::kNothing, FreeBlocks::kKeep);
    }
  }
}

void AbandonOrphanedHeapsInChild() {
  for (Heap* heap = g_all_heaps.load(std::memory_order_acquire); heap != nullptr;
       heap = heap->all_next) {
    if (heap != tl_heap) heap->inbox_owner_holding.store(0, std::memory_order_relaxed);
    if (!heap->is_reclaimer || heap->abandoned || heap == tl_heap) continue;
    ReturnUnpublishedBatch(heap);
    CollectHeap(heap, KeepEmpty::kNothing, FreeBlocks::kKeep);
    heap->is_reclaimer = false;
    CounterAdd(Counter::heaps_abandoned, 1);
    PushAbandoned(heap, kNoPass);
  }
}

// The child's thread ids are new: its own heap names it, and the heaps of
// the parent's other threads name nobody (AbandonOrphanedHeapsInChild
// leaves them be; a thread gone from the child is not a thread that
// exited, and its heap may be half changed). Left as they were, their ids,
// unknown in the child, would have the housekeeping abandon them, this
// thread's own included.
// The mark (wiped by the fork) is set last: a signal handler that collects,
// or makes a heap, before then looks at nothing (a review's program, a
// signal injected there, had the child's own heap abandoned while the
// heaps still named the parent's threads).
void TakeOwnershipInChild() {
  g_gone_owners_checked_ms = 0;  // the child's first duty looks
  for (Heap* heap = g_all_heaps.load(std::memory_order_acquire); heap != nullptr;
       heap = heap->all_next) {
    if (auto hook = g_take_ownership_hook_for_test.load(std::memory_order_relaxed)) hook();
    if (heap == tl_heap) {
      SetOwner(heap, OsThreadId());
    } else if (OwnerTid(heap->owner.load(std::memory_order_relaxed)) != 0) {
      ClearOwnerTid(heap);
    }
  }
  std::atomic_signal_fence(std::memory_order_seq_cst);
  if (std::atomic<uint64_t>* mark = g_owners_mark.load(std::memory_order_relaxed)) {
    mark->store(1, std::memory_order_relaxed);
  }
}

// A thread that exited without ferry's TSD destructor leaves its heap
// owned for good: one whose first call to ferry came in the last round of
// its TSD destructors (glibc runs PTHREAD_DESTRUCTOR_ITERATIONS rounds, and
// a key set in the last is never looked at again; a bug hunt's 1000 such
// threads, each freeing a 64 KiB block of main's: 70 MB resident against
// glibc's 1.7), or one that left by a raw exit system call. Its pages, and
// the other heaps' blocks in its unpublished batch, came back to nobody.
// Such a heap is abandoned once the kernel no longer knows its thread: by
// then the thread runs no code, so nothing of the heap is half changed
// (unless it left by a raw exit from a signal handler that interrupted
// ferry: README, "Thread exit"). By the housekeeping, one system call per
// owned heap, once a second (ferry_collect's at most every 100 ms), after
// CollectAbandonedHeaps, whose pass the heap joins as collected; and by a
// new thread's look (AbandonSomeHeapsOfGoneThreads).
constexpr uint64_t kGoneOwnersCheckMs = 1000;
constexpr uint64_t kGoneOwnersCheckUrgentMs = 100;

void AbandonHeapOfGoneThread(Heap* heap) {
  ReturnUnpublishedBatch(heap);
  // Left counted if the thread left a return early (AbandonHeap).
  heap->returns_in_progress.store(0, std::memory_order_relaxed);
  const uint64_t pass = g_abandoned_pass.load(std::memory_order_acquire);
  CollectHeap(heap, KeepEmpty::kNothing, FreeBlocks::kKeep);
  CounterAdd(Counter::heaps_abandoned, 1);
  if (Verbose(1)) DiagLine().Str("ferry: heap ").Ptr(heap).Str(" abandoned: its thread is gone").WriteToStderr();
  PushAbandoned(heap, pass);
}

// In the duty turn. False when the heap has no owner to look for, or its
// owner lives, or it changed hands meanwhile: abandoned by that thread
// before it went (its tid cleared, here under the lock), and perhaps taken
// over since (the count moved on).
bool AbandonIfThreadGone(Heap* heap, int32_t pid) {
  uint64_t owner = heap->owner.load(std::memory_order_acquire);
  if (OwnerTid(owner) == 0 || !OsThreadIsGone(pid, OwnerTid(owner))) return false;
  {
    SpinLockHolder hold(&g_abandoned_lock);
    if (heap->abandoned ||
        !heap->owner.compare_exchange_strong(owner, owner & ~kOwnerTidMask, std::memory_order_acq_rel)) {
      return false;
    }
  }
  AbandonHeapOfGoneThread(heap);
  return true;
}

// Whether the calling thread (id `tid`) is one of the threads the heaps'
// owner ids belong with: not in a child made without ferry's fork handlers
// (the mark is wiped there), nor in a task that shares the memory without
// being one of its threads, a vfork child or a clone with CLONE_VM, which
// may have any pid, its parent's included (in another pid namespace): its
// id would name the heap it makes for its parent's thread, and the ids it
// would look up are not its process's (two reviews' programs: live heaps
// abandoned, free lists broken).
bool MayNameOwners(int32_t tid) { return OwnersMarkSet() && OsIsThreadWithTidWord(tid); }

// The pid to look for owners in, or 0 where this thread may not look.
int32_t OwnersPid() { return MayNameOwners(OsThreadId()) ? OsProcessId() : 0; }

// The housekeeping's look, at every heap.
void AbandonHeapsOfGoneThreads(uint64_t now_ms, bool urgent) {
  // ferry_collect's too at most so often: a program that trims after every
  // request, with 1000 threads, paid 0.7 ms a call for the system calls (a
  // review's program).
  if (now_ms - g_gone_owners_checked_ms < (urgent ? kGoneOwnersCheckUrgentMs : kGoneOwnersCheckMs)) return;
  g_gone_owners_checked_ms = now_ms;
  const int32_t pid = OwnersPid();
  if (pid == 0) return;
  for (Heap* heap = g_all_heaps.load(std::memory_order_acquire); heap != nullptr;
       heap = heap->all_next) {
    AbandonIfThreadGone(heap, pid);
  }
}

// Where no housekeeping runs (no pool; a program that never calls
// ferry_collect), a new thread that finds no abandoned heap looks at a few
// heaps before it makes one (InitThreadHeap): the newest first (in a
// program whose threads come and go, the heap of the thread that went
// last), then some more from where the last look stopped, so that in time
// it sees every heap. A few system calls on a path that maps a new heap.
constexpr int kGoneOwnerChecksNewest = 4;
constexpr int kGoneOwnerChecksOnward = 4;
constexpr int kGoneOwnerStepsOnward = 64;  // heaps passed, owned or not
Heap* g_gone_owners_cursor = nullptr;  // the duty turn's own; heaps are never freed

void AbandonSomeHeapsOfGoneThreads(void*) {
  if (auto hook = g_gone_owners_look_hook_for_test.load(std::memory_order_relaxed)) hook();
  const int32_t pid = OwnersPid();
  if (pid == 0) return;
  int checks = 0;
  for (Heap* heap = g_all_heaps.load(std::memory_order_acquire);
       heap != nullptr && checks < kGoneOwnerChecksNewest; heap = heap->all_next) {
    if (OwnerTid(heap->owner.load(std::memory_order_relaxed)) == 0) continue;
    ++checks;
    AbandonIfThreadGone(heap, pid);
  }
  checks = 0;
  if (g_gone_owners_cursor == nullptr) g_gone_owners_cursor = g_all_heaps.load(std::memory_order_acquire);
  // To the list's end at most (the next look starts again at its head): on
  // a short list it went round, looking at one heap again and again.
  for (int steps = 0; steps < kGoneOwnerStepsOnward && checks < kGoneOwnerChecksOnward; ++steps) {
    Heap* heap = g_gone_owners_cursor;
    if (heap == nullptr) return;
    g_gone_owners_cursor = heap->all_next;
    if (OwnerTid(heap->owner.load(std::memory_order_relaxed)) == 0) continue;
    ++checks;
    AbandonIfThreadGone(heap, pid);
  }
}

// The pool's housekeeping (reclaimer/pool.h), also run inline by
// ferry_collect when there is no pool: abandoned heaps have no owner, so the
// pool owns them; it takes the whole list, applies what came back to their
// pages, gives empty pages and segments back, and returns the heaps to the
// list for new threads to take over.
// Pool side, for every live heap: pages on an inbox whose blocks have all
// come back wait for their owner, who may not allocate that class again for
// a long time; the pool frees them (their slices are then purged like any
// free slices). It takes each inbox for a moment and puts the other pages
// back as they were.
void CollectInboxes(Heap* heap) {
  bool borrowed = false;
  for (size_t c = 0; c < kNumClasses; ++c) {
    if (heap->inbox[c].load(std::memory_order_relaxed) == nullptr) continue;
    if (!borrowed) {
      // Before the exchange (its release orders it): an owner that sees the
      // inbox emptied sees this too (InboxHead).
      heap->inbox_borrowed.store(1, std::memory_order_relaxed);
      borrowed = true;
    }
    FreeCompletedPagesOfInbox(heap, c, /*caller_is_owner=*/false);
  }
  if (borrowed) heap->inbox_borrowed.store(0, std::memory_order_release);
}

bool HasCompletedInboxPages(const Heap* heap) {
  return (heap->inbox_complete[0].load(std::memory_order_seq_cst) |
          heap->inbox_complete[1].load(std::memory_order_seq_cst)) != 0;
}

// Before a heap takes a new page: other heaps' inbox pages with every block
// back (Heap::inbox_complete) go back to their segments first. Their owners
// free them at their next slow path, but an owner that is blocked or off
// the CPU would leave them while this heap grows (one thread freeing for
// four on two cores: up to 180 such pages, 11 MiB, waited at once). Done
// in the housekeeping's turn, like CollectInboxes, and skipped when the
// housekeeping holds it.
void FreeOtherHeapsCompletedPages(Heap* self) {
  // Most new pages find nothing to do: one load, not a walk of every heap.
  if (g_inbox_complete_pending.load(std::memory_order_relaxed) == 0) return;
  // Notes from now on set it again. An exchange, not a store: a store could
  // wait in this CPU's store buffer while the loads below read the bits
  // (store-buffer reordering, x86 included), and a note in between would
  // find the flag still set and leave it, and this walk miss its bit.
  g_inbox_complete_pending.exchange(0, std::memory_order_seq_cst);
  bool any = false;
  for (Heap* heap = g_all_heaps.load(std::memory_order_acquire); heap != nullptr && !any;
       heap = heap->all_next) {
    any = heap != self && HasCompletedInboxPages(heap);
  }
  if (!any) return;
  const bool ran = PoolTryRunInDutyTurn(
      [](void* arg) {
        Heap* self = static_cast<Heap*>(arg);
        for (Heap* heap = g_all_heaps.load(std::memory_order_acquire); heap != nullptr;
             heap = heap->all_next) {
          if (heap == self || !HasCompletedInboxPages(heap)) continue;
          heap->inbox_borrowed.store(1, std::memory_order_relaxed);
          for (size_t w = 0; w < std::size(heap->inbox_complete); ++w) {
            uint64_t classes = heap->inbox_complete[w].exchange(0, std::memory_order_acquire);
            for (; classes != 0; classes &= classes - 1) {
              const size_t c = w * 64 + static_cast<size_t>(__builtin_ctzll(classes));
              FreeCompletedPagesOfInbox(heap, c, /*caller_is_owner=*/false);
              // The owner may hold the list this bit was about (its own
              // FreeCompletedInboxPages): leave the bit for it.
              if (heap->inbox_owner_holding.load(std::memory_order_acquire) != 0) {
                NoteInboxPageComplete(heap, c);
              }
            }
          }
          heap->inbox_borrowed.store(0, std::memory_order_release);
        }
      },
      self);
  // The housekeeping held the turn: the flags stay set, and so must the
  // notice, or the next heap to take a new page would not look.
  if (!ran) g_inbox_complete_pending.store(1, std::memory_order_relaxed);
}

// The exit heap has no owner between the allocations of exiting threads
// (AllocateWhileExiting, each under g_exit_lock), and what other threads
// free of it comes back to pages that only such an allocation adopted:
// blocks that TSD destructors allocated and live threads freed stayed in
// pages that never went back (a bug hunt's program: 13 MB after every
// block was freed and collected, 18 segments). Taken like an abandoned
// heap's, unless an exiting thread holds it now (the next run comes soon).
void CollectExitHeap() {
  if (!g_exit_lock.TryLock()) return;
  if (g_exit_heap != nullptr) CollectHeap(g_exit_heap, KeepEmpty::kNothing, FreeBlocks::kKeep);
  g_exit_lock.Unlock();
}

// True when a run soon may find work: it purged slices, or free slices
// are still committed (too young, or within FERRY_PURGE_DELAY_MS), or
// huge mappings wait in the cache, or huge blocks' tails wait resident
// (huge.cc, KeepTailResidentForAWhile). Empty segments that wait for their keep
// time hold only purged slices and their header: a slower pace (pool.cc,
// IdleSleepMs) delays them by a run at most.
// A reclaimer leaving an idle pool (reclaimer/pool.cc, StopIdlePool), no
// fork possible meanwhile: its heap becomes an ordinary thread's (and the
// thread an ordinary thread, LeaveAsAnOrdinaryThread, so that a heap it
// makes later is one too). A fork
// child collects a reclaimer's heap as one whose thread parked between
// batches (AbandonOrphanedHeapsInChild); this thread goes on to free on its
// way out (the C library's exit, its heap's abandonment), so a fork then
// must leave its heap be, as any other thread's. seq_cst: before this
// thread's later writes to the heap, as a fork's copy sees them.
void LeavingReclaimer() {
  Heap* heap = tl_heap;
  if (heap != &g_empty_heap) __atomic_store_n(&heap->is_reclaimer, false, __ATOMIC_SEQ_CST);
}

// Whether the last housekeeping run left a heap's empty segments for later
// (ReleaseIdleEmptySegments); read by an idle pool's stop after its runs.
constinit std::atomic<bool> g_duty_passed_by_a_heap{false};

bool HousekeepingPassedByAHeap() { return g_duty_passed_by_a_heap.load(std::memory_order_relaxed); }

bool HousekeepingDuty(uint64_t now_ms, bool urgent) {
  for (Heap* heap = g_all_heaps.load(std::memory_order_acquire); heap != nullptr;
       heap = heap->all_next) {
    CollectInboxes(heap);
  }
  const bool heaps_waiting = CollectAbandonedHeaps(now_ms, urgent);
  AbandonHeapsOfGoneThreads(now_ms, urgent);
  CollectExitHeap();
  const bool chains_waiting = GiveBackWaitingChains(now_ms, urgent);
  const size_t purged = ArenaPurge(now_ms, static_cast<uint64_t>(g_options.purge_delay_ms), urgent);
  g_duty_passed_by_a_heap.store(ReleaseIdleEmptySegments(now_ms, urgent), std::memory_order_relaxed);
  ReleaseIdleHugeMappings(now_ms, urgent);
  return purged != 0 || heaps_waiting || chains_waiting || g_free_dirty_slices_hint.load(std::memory_order_relaxed) > 0 ||
         g_counters.huge_bytes_cached.load(std::memory_order_relaxed) != 0 || HugeTailsWaitResident();
}

// One heap at a time, the rest staying on the lists: a new thread takes
// over an abandoned heap rather than make one, and while the whole list was
// off them for the collect (until 2026-12-03) a thread that called
// ferry_collect in a loop kept it off nearly all the time, so each new
// thread made a heap, each collect had one more to walk, and a program
// starting threads at that moment slowed down round by round.
// A heap abandoned this long (FERRY_PURGE_DELAY_MS, 250 ms at least), or
// any under ferry_collect, gives back its large free blocks' memory as it is
// collected (FreeBlocks::kGiveBack); once, then only what each collect
// adopts. Sooner, a thread that takes it over (thread churn) would fault
// back in the blocks it allocates. True while a heap that holds such
// blocks waits for its time.
bool CollectAbandonedHeaps(uint64_t now_ms, bool urgent) {
  // As a segment's suffix (arena.cc, UncommitFrom): not sooner than the
  // eager window, whatever FERRY_PURGE_DELAY_MS says (0 by default).
  const uint64_t delay_ms = std::max(static_cast<uint64_t>(g_options.purge_delay_ms), kEagerWindowMs);
  bool waiting = false;
  {
    SpinLockHolder hold(&g_abandoned_lock);  // in the duty turn: one pass at a time
    g_abandoned_pass.store(g_abandoned_pass.load(std::memory_order_relaxed) + 1,
                           std::memory_order_release);
    // Every heap is to be looked at again; the most recent stay in front.
    if (g_abandoned_done != nullptr) {
      g_abandoned_done_tail->abandoned_next = g_abandoned;
      g_abandoned = g_abandoned_done;
      g_abandoned_done = g_abandoned_done_tail = nullptr;
    }
  }
  for (;;) {
    Heap* heap;
    {
      SpinLockHolder hold(&g_abandoned_lock);
      heap = g_abandoned;
      if (heap == nullptr) return waiting;
      g_abandoned = heap->abandoned_next;
      heap->abandoned_next = nullptr;
    }
    // Once given back, a heap that nobody owns gets blocks on its lists only
    // from returns, adopted here.
    FreeBlocks free_blocks = FreeBlocks::kGiveBackAdopted;
    if (!heap->free_blocks_given_back) {
      const bool due = urgent || now_ms - std::min(now_ms, heap->abandoned_ms) >= delay_ms;
      free_blocks = due ? FreeBlocks::kGiveBack : FreeBlocks::kKeep;
      heap->free_blocks_given_back = due;
    }
    // Waits for its time only where it has any to give back.
    if (CollectHeap(heap, KeepEmpty::kNothing, free_blocks)) waiting = true;
    CounterAdd(Counter::abandoned_collections, 1);
    SpinLockHolder hold(&g_abandoned_lock);
    PushAbandonedDoneLocked(heap);
  }
}

// Address-space limits (RLIMIT_AS, RLIMIT_DATA) at or above this leave
// large blocks in segments: at most this many bytes of blocks on mappings
// of their own (LargeBlockGoesHuge; 680 KiB at least) stay well inside the
// kernel's default count of mappings a process may have (65530), which
// thread stacks, dlopen and the program's own mmap calls need too (a
// review: under a 60 GiB limit, 68551 blocks of 720000 bytes took them
// all, and then every mmap failed).
constexpr size_t kLargeOnOwnMappingsBelowLimit = size_t{16} << 30;

// Under an address-space limit (`ulimit -v`), a large block whose run of
// slices would pack a new segment worse than a mapping of its own would
// hold it (that mapping: a 64 KiB header and the block rounded up to an
// eighth of its power of two, HugeBlockBytes) goes on its own mapping, as a
// huge block, where no segment ferry holds has room for it: 63 slices a
// segment hold one run of 32 (a 2 MiB block, 4 MiB of address space) or
// three of 16 (1 MiB blocks, 1.33 MiB each), and a program of such blocks
// got 50-75% of what glibc gives under a limit. Free runs in segments come
// first, so that the address space ferry holds is used (a review: where
// smaller blocks had filled the limit and were freed, 1 MiB blocks only
// ever asked for mappings, and got 2 MiB in all), and a loop that
// allocates and frees such a block reuses its slices with no system call.
// And only once ferry holds a quarter of the limit (arenas and huge
// mappings, cached ones too): a program far from its limit keeps the
// faster path (a huge block's free resets its mapping, 15 us for 1 MiB
// blocks allocated and freed in a loop under a 1.2 GiB limit, against
// 0.25 us in a segment).
bool LargeBlockGoesHuge(size_t n) {
  const size_t limit = AddressSpaceLimit();
  if (FERRY_LIKELY(limit >= kLargeOnOwnMappingsBelowLimit)) return false;
  const int64_t held = g_counters.arena_bytes_reserved.load(std::memory_order_relaxed) +
                       g_counters.huge_bytes_live.load(std::memory_order_relaxed) +
                       g_counters.huge_bytes_cached.load(std::memory_order_relaxed);
  if (held < static_cast<int64_t>(limit / 4)) return false;
  const size_t slices = (n + kSliceSize - 1) / kSliceSize;
  const size_t per_segment = (kSlicesPerSegment - 1) / slices;
  return kSegmentSize / per_segment > kSliceSize + HugeBlockBytes(n);
}

void TendHeap(Heap* heap, size_t keep);

// *zeroed (if given): the block reads as zeros (ClaimSlices); calloc's
// call, which also takes no cached huge mapping.
void* AllocateLarge(Heap* heap, size_t n, size_t alignment, bool* zeroed = nullptr) {
  // As AllocateSlow: a large block is a slow path too, and counts as one
  // for the retained pages' age (a thread of large blocks and the odd
  // medium one never released its emptied medium pages).
  PoolMaybeStartUnlessExiting();
  TendHeap(heap, kNumClasses);
  const size_t slices = (n + kSliceSize - 1) / kSliceSize;
  const size_t align_slices = alignment > kSliceSize ? alignment / kSliceSize : 1;
  const bool own_mapping = alignment <= kSliceSize && LargeBlockGoesHuge(n);
  Page* page = ClaimSlices(heap, slices, align_slices, zeroed, /*may_take_segment=*/!own_mapping);
  if (page == nullptr && own_mapping) {
    const int saved_errno = errno;
    if (void* p = AllocateHuge(n, 0, /*may_reuse=*/zeroed == nullptr)) {
      if (zeroed != nullptr) *zeroed = true;
      return p;
    }
    errno = saved_errno;  // a new segment may still fit
    page = ClaimSlices(heap, slices, align_slices, zeroed);
  }
  if (page == nullptr) {
    errno = ENOMEM;
    return nullptr;
  }
  InitBlocks(page, PageKind::kLarge, slices * kSliceSize, 1);
  page->size_class = 0;
  page->capacity = 1;
  page->used = 1;
  page->carved_bytes.store(static_cast<uint32_t>(slices * kSliceSize), std::memory_order_relaxed);
  // Never on a queue: full from birth, so the free that returns its block
  // frees its slices (ReturnChain).
  page->in_full = 1;
  page->used_at_full.store(1, std::memory_order_relaxed);
  page->returned.store(kReturnedFull, std::memory_order_release);
  CounterAdd(Counter::large_allocs, 1);
  // The slices may have held a freed block before: a live block must never
  // look free (see LooksFree).
  Block* block = reinterpret_cast<Block*>(page->start);
  VgLinkWord(block);
  block->next_encoded = 0;
  return block;
}

Heap* CurrentHeapOrInit() {
  Heap* heap = tl_heap;
  if (FERRY_LIKELY(heap != &g_empty_heap)) return heap;
  return InitThreadHeap();
}

// An allocation by a thread whose heap was abandoned at exit: served from
// the shared exit heap under a lock (rare: what glibc and TLS destructors
// allocate during thread exit).
void* AllocateWhileExiting(size_t n, size_t alignment) {
  SpinLockHolder hold(&g_exit_lock);
  if (g_exit_heap == nullptr) g_exit_heap = CreateHeap();
  if (g_exit_heap == nullptr) {
    errno = ENOMEM;
    return nullptr;
  }
  tl_heap = g_exit_heap;
  void* p = alignment != 0 ? AllocateAligned(alignment, n) : Allocate(n);
  tl_heap = &g_empty_heap;
  return p;
}

}  // namespace

// The housekeeping's look at returned chains of large blocks that wait on
// their pages: returns to a page an owner does not take (a thread that
// allocated and went idle, its blocks freed by others) kept all their
// memory for as long as it idled: four threads that built 48 MiB each and
// idled while main freed nine blocks in ten kept 133 MiB resident for
// 20 MiB of blocks, where the same threads exited gave back all but
// 31 MiB (perf/RESULTS.md, 2026-12-07). A chain is taken off its page with
// a CAS, as the owner takes one, so the owner never meets a block the
// housekeeping is giving back; it finds the page without those blocks for
// a moment, and the push back is one more return. Taken only from a page
// on its owner's queue (no mark) or a full one still waiting for blocks
// (both marks, and then with its count, so that the page cannot complete
// while the chain is away); never from one whose last block is back
// (posted mark alone: its pusher or drainer frees it). A chain waits
// FERRY_PURGE_DELAY_MS, 250 ms at least, unchanged; `urgent` (ferry_collect)
// takes every one. True while a chain waits for its time; the chains taken
// are added to *chains_taken (tests).
bool GiveBackWaitingChains(uint64_t now_ms, bool urgent, size_t* chains_taken) {
  const uint64_t delay_ms = std::max(static_cast<uint64_t>(g_options.purge_delay_ms), kEagerWindowMs);
  bool waiting = false;
  for (Heap* heap = g_all_heaps.load(std::memory_order_acquire); heap != nullptr; heap = heap->all_next) {
    // Urgent: again while the last round took as many as it could hold (a
    // few rounds at most: a busy owner's words may keep changing).
    for (int round = 0; round < kUrgentRoundsMax; ++round) {
      TakenChain taken[kTakenChainsMax];
      size_t count = 0;
      // The list of segments is the owner's; held, none of them goes. A
      // heap passed by is not counted as waiting: in a fork child, a heap
      // whose owner held the lock at the fork holds it for good, and the
      // pool would never slow down (as ReleaseIdleEmptySegments).
      if (!heap->segments_lock.TryLock()) {
        if (round != 0) waiting = true;  // held a moment ago: not a fork child's for good
        break;
      }
      tl_holding_chains = true;
      std::atomic_signal_fence(std::memory_order_seq_cst);
      for (Segment* segment = heap->segments; segment != nullptr && count < kTakenChainsMax;
           segment = segment->heap_next) {
        for (uint64_t pages = segment->large_block_pages.load(std::memory_order_relaxed);
             pages != 0 && count < kTakenChainsMax; pages &= pages - 1) {
          const uint64_t bit = pages & -pages;
          Page* page = &segment->pages[__builtin_ctzll(pages)];
          const uintptr_t word = page->returned.load(std::memory_order_acquire);
          const uintptr_t marks = word & (kReturnedFull | kReturnedPosted);
          if (ReturnedChain(word) == nullptr || marks == kReturnedPosted) continue;
          // Still such a page: a page of another class made on its slices
          // since the bitmap was read cleared the bit before the push this
          // load saw.
          if ((segment->large_block_pages.load(std::memory_order_relaxed) & bit) == 0) continue;
          if (word != page->returned_seen.load(std::memory_order_relaxed)) {
            page->returned_seen.store(word, std::memory_order_relaxed);
            page->returned_seen_ms.store(now_ms, std::memory_order_relaxed);
            if (!urgent) {
              waiting = true;
              continue;
            }
          } else {
            const uint64_t seen_ms = page->returned_seen_ms.load(std::memory_order_relaxed);
            if (seen_ms == kChainGivenBack) continue;
            if (!urgent && now_ms - std::min(now_ms, seen_ms) < delay_ms) {
              waiting = true;
              continue;
            }
          }
          // The chain and its count; the marks stay. acquire: the chain's
          // links, and the page's record (made before its blocks went out).
          // Counted first: an owner that finds the page without the chain
          // then sees the take in progress, and once that is over, its
          // heap's count (ChainsWereAway).
          g_chain_takes_in_progress.fetch_add(1, std::memory_order_seq_cst);
          uintptr_t expected = word;
          if (!page->returned.compare_exchange_strong(expected, marks, std::memory_order_acq_rel,
                                                      std::memory_order_relaxed)) {
            g_chain_takes_in_progress.fetch_sub(1, std::memory_order_release);
            waiting = true;  // the owner took it, or more came: looked at next time
            continue;
          }
          // The chain's blocks count as used: the page stays its owner's.
          Heap* owner = page->heap;
          owner->chains_away.fetch_add(1, std::memory_order_seq_cst);
          g_chain_takes_in_progress.fetch_sub(1, std::memory_order_release);
          taken[count++] = TakenChain{page, owner, ReturnedChain(word), ReturnedCount(word), marks};
        }
      }
      heap->segments_lock.Unlock();
      for (size_t k = 0; k < count; ++k) {
        GiveBackTakenChain(taken[k]);
        // Back before no longer away: an owner that then finds none away
        // still sees that one came back (ChainsWereAway).
        taken[k].heap->chains_back.fetch_add(1, std::memory_order_release);
        taken[k].heap->chains_away.fetch_sub(1, std::memory_order_release);
      }
      std::atomic_signal_fence(std::memory_order_seq_cst);
      tl_holding_chains = false;
      if (chains_taken != nullptr) *chains_taken += count;
      if (count < kTakenChainsMax) break;
      if (!urgent || round + 1 == kUrgentRoundsMax) waiting = true;  // the rest at the next run
      if (!urgent) break;
    }
  }
  return waiting;
}

void EnsureForkHandlersRegistered() { EnsureForkHandlers(); }

// Other threads' kept segments stay: their owners give them back at their
// next claims once they have waited (ReleaseKeptSegmentsLocked), or the
// pool does. This thread's go now: a single-threaded program kept up to 16
// (64 MiB) that a limit then refused a mapping for.
bool MakeRoomInAddressSpace(size_t wanted) {
  Heap* heap = tl_heap;
  // A segment released gives back its commit charge by itself (strict
  // overcommit, ulimit -d), unmapped or not: worth a retry too.
  const bool released = heap != &g_empty_heap && ReleaseKeptEmptySegments(heap);
  return ArenaUnreserveFreeSegments(wanted) != 0 || released;
}

void PoolMaybeStartUnlessExiting() {
  if (!tl_exiting) PoolMaybeStart();
}

void CountThisThread() {
  if (FERRY_LIKELY(tl_seen)) return;
  tl_seen = true;
  g_threads_seen.fetch_add(1, std::memory_order_relaxed);
}

bool ProgramRanSeveralThreads() { return g_threads_seen.load(std::memory_order_relaxed) >= 2; }

// The kernel's thread count is read at most this often: a single-threaded
// program that keeps emptying segments pays one read of /proc (about 20 us)
// a quarter second at most.
constexpr uint64_t kThreadCountCheckMs = 250;
constinit std::atomic<uint64_t> g_thread_count_due_ms{0};

// Huge blocks that four threads each churned, freeing only their own,
// never started the pool (no batch is ever handed on) and took 25-28 s,
// the kernel mapping and faulting in most blocks afresh; 13 s with it
// (perf/RESULTS.md, 2026-12-05). A program whose other threads never
// allocate counts one thread to ferry, yet it has threads, and nothing of
// its own would ever give back what its one allocating thread keeps while
// it idles: redis-server (its background threads only wait for jobs) held
// the 16 segments its FLUSHALL emptied, 64 MiB, for good (perf/RESULTS.md,
// 2026-12-06). jemalloc's background thread, which redis turns on, does
// this work there.
void AskForThePoolIfSeveralThreads(bool by_threads_run) {
  if (!PoolAwaitsAskToHousekeep()) return;
  if (!by_threads_run || !ProgramRanSeveralThreads()) {
    const uint64_t now_ms = OsMonotonicMs();
    uint64_t due_ms = g_thread_count_due_ms.load(std::memory_order_relaxed);
    if (now_ms < due_ms || !g_thread_count_due_ms.compare_exchange_strong(due_ms, now_ms + kThreadCountCheckMs,
                                                                           std::memory_order_relaxed)) {
      return;
    }
    if (OsProcessThreadCount() < 2) return;
  }
  PoolAskToHousekeep();
}

// Pool side: empty segments wait on their heap's list, each with its header
// resident and its 4 MiB of address space held: those other threads
// emptied (before this, until the owner next freed a page there: for good,
// if it idled; a burst of 512 MiB freed by another thread left 130 of them,
// 1.7 MiB of headers, for as long as the allocating thread slept), and
// those the owner emptied while reclaimer threads tick
// (ReleaseSegmentIfEmptyLocked), and those it kept itself while none did
// (KeepEmptySegmentLocked), once a pool runs or the oneTBB backend's duty. Those that have stayed empty for
// EmptySegmentKeepMs (any, when `urgent`) go back to their arena here; the
// heap's spare stays (and the purge does not count it, so that a heap's
// spare does not have this walk every heap at every run). A heap whose
// owner holds its list is left for the next run (the next purge flags its
// segments again): true then. An idle pool's stop, after which no run
// comes, runs its last one again for a while (StopIdlePool, through
// HousekeepingPassedByAHeap); before 2026-12-06 it went without, and an
// owner on its slow path at that moment kept its emptied segments for as
// long as it then idled. Not more work for the duty's pace: in a fork
// child, the heap of a parent's thread that held its list at the fork
// holds it for good, and a first form that counted it as work kept that
// child's pool ticking at full pace and never let it stop (a review).
bool ReleaseIdleEmptySegments(uint64_t now_ms, bool urgent) {
  if (!g_idle_empty_segments.exchange(false, std::memory_order_relaxed)) return false;
  bool passed_by = false;
  const uint64_t keep_ms = urgent ? 0 : EmptySegmentKeepMs(static_cast<uint64_t>(g_options.purge_delay_ms));
  for (Heap* heap = g_all_heaps.load(std::memory_order_acquire); heap != nullptr;
       heap = heap->all_next) {
    if (!heap->segments_lock.TryLock()) {
      passed_by = true;
      continue;
    }
    Segment* released = nullptr;
    for (Segment* segment = heap->segments; segment != nullptr;) {
      Segment* next = segment->heap_next;
      // acquire: the stamps EmptySegmentIdleMs reads were written before the
      // release that freed the last slice (as ArenaPurge reads them).
      if (segment != heap->spare && segment->used_slices.load(std::memory_order_acquire) == 1 &&
          EmptySegmentIdleMs(segment, now_ms) >= keep_ms && DetachEmptySegmentLocked(heap, segment)) {
        segment->heap_next = released;
        released = segment;
      }
      segment = next;
    }
    heap->segments_lock.Unlock();
    // Decommitted after the owner has its list back.
    while (released != nullptr) {
      Segment* next = released->heap_next;
      ArenaReleaseSegment(released);
      released = next;
    }
  }
  return passed_by;
}

// A large block is the one block of its run of slices, so it can grow into
// the free slices right after the run, or give back the slices past its new
// end, without a copy. Any thread may do it: the caller holds the block,
// and nobody else reads the page record while the block is out (its free,
// local or remote, comes after this call in the program's order). Slices
// are claimed with the same CAS every claim uses, so another heap's claim,
// or the purge holding them, wins or loses cleanly.
bool ResizeLargeInPlace(void* p, size_t n) {
  const uintptr_t address = reinterpret_cast<uintptr_t>(p);
  // A block aligned beyond a segment has a usable size of its own (it may be
  // a few KiB, since 2026-12-05) and no page record where PageOf would look:
  // there lie the block's own bytes.
  if (SegmentMapLookup(address) != kMapSegment) return false;
  Segment* segment = SegmentOf(address);
  Page* page = PageOf(segment, address);
  if (page->kind != PageKind::kLarge || page->start != address) return false;
  const size_t first = (page->start - reinterpret_cast<uintptr_t>(segment)) / kSliceSize;
  const size_t count = page->slice_count;
  const size_t wanted = (n + kSliceSize - 1) / kSliceSize;
  // A large block keeps more slices than a medium page may have: never
  // down to none, whose record another heap could then take under it.
  if (n <= kMediumMax) return false;
  if (wanted == count) return true;
  if (wanted > kMaxPageSlices || first + wanted > kSlicesPerSegment) return false;
  if (wanted > count) {
    if (!TryTakeSlices(segment, static_cast<int>(first + count), wanted - count)) return false;
    for (size_t k = count; k < wanted; ++k) segment->pages[first + k].record_back = RecordBack(k);
  } else {
    for (size_t k = wanted; k < count; ++k) segment->pages[first + k].record_back = 0;
  }
  page->slice_count = static_cast<uint8_t>(wanted);
  page->block_size = wanted * kSliceSize;
  page->divisor_magic = ~uint64_t{0} / page->block_size + 1;
  page->carved_bytes.store(static_cast<uint32_t>(page->block_size), std::memory_order_relaxed);
  if (wanted < count) {
    // The record first: once the slices are free, another heap may take them.
    ReleaseSliceRun(segment, first + wanted, count - wanted, page->heap);
  }
  return true;
}

// A large block that realloc has just copied into a huge one goes back with
// its slices decommitted, not dirty: a buffer grown past kLargeMax has left
// the large range for good, and its old run, 1.5-2 MiB by then, waited
// resident for the purge, which a single-threaded program never runs (a
// buffer grown from 64 B to 2.1 MiB by eighths: 2 MiB of the 6.4 above the
// baseline; perf/RESULTS.md, 2026-12-06 12:00). The block's first OS page
// stays: the free that follows reads and writes its first word.
void DecommitOutgrownLargeBlock(void* p) {
  const uintptr_t address = reinterpret_cast<uintptr_t>(p);
  if (SegmentMapLookup(address) != kMapSegment) return;
  Segment* segment = SegmentOf(address);
  Page* page = PageOf(segment, address);
  if (page->kind != PageKind::kLarge || page->start != address) return;
  const size_t first = (address - reinterpret_cast<uintptr_t>(segment)) / kSliceSize;
  const size_t count = page->slice_count;
  const size_t head = OsPageSize();
  if (head < kSliceSize) OsDecommit(reinterpret_cast<char*>(address + head), kSliceSize - head);
  if (count > 1) SegmentDecommitSlices(segment, first + 1, count - 1);
}

// --- huge blocks: defined in huge.cc --------------------------------------------
void FreeHuge(Segment* segment, Page* page, void* p, const char* call);
size_t HugeUsableSize(Page* page, uintptr_t address, const char* call);

// --- global state ---------------------------------------------------------------

void EnsureGlobalInit() {
  if (FERRY_LIKELY(g_init_state.load(std::memory_order_acquire) == kOnceDone)) return;
  // No heap exists before this is done (the first allocation of each thread
  // comes here), so a child that finds it half done by a thread of its
  // parent can run it again from the start.
  if (OnceBegin(g_init_state)) {
    ReadOptionsFromEnvironment(&g_options);
    g_verbose_level = static_cast<int>(g_options.verbose);
    FreeListKeys keys;
    do {
      keys.xor_key = OsRandom64();
    } while (keys.xor_key < (uint64_t{1} << 48));  // no encoded link looks like an address
    g_keys = keys;
    SetUpOwnersMark();
    FERRY_CHECK(pthread_key_create(&g_thread_key, OnThreadExit) == 0);
    uintptr_t begin, end;
    if (OsDynamicLoaderText(&begin, &end)) {
      g_loader_text_begin = begin;
      g_loader_text_end = end;
    }
    if (OsLibcText(&begin, &end)) {
      g_libc_text_begin = begin;
      g_libc_text_end = end;
    }
    PoolConfigure(PoolConfig{static_cast<int>(g_options.reclaimers),
                             static_cast<int>(g_options.reclaimer_backend),
                             static_cast<int>(g_options.purge_delay_ms),
                             g_options.inline_when_busy != 0,
                             static_cast<int>(g_options.reclaimer_idle_ms)},
                  HousekeepingDuty, HousekeepingPassedByAHeap, LeavingReclaimer);
    g_init_state.store(kOnceDone, std::memory_order_release);
  }
}

const Options& CurrentOptions() {
  EnsureGlobalInit();
  return g_options;
}

// --- slow paths of heap.h -------------------------------------------------------

namespace {

// `page`, on the class's queue, has free blocks: it becomes the class's
// current page.
void* AllocateFromQueuedPage(Heap* heap, size_t size_class, Page* page) {
  PageQueue* q = &heap->queues[size_class];
  if (page != q->head) {
    QueueRemove(q, page);
    QueuePushFront(q, page);
  }
  if (page->standby != 0) heap->standby_displaced = 0;  // a standby page used again: rounds (KeepOnStandby)
  EndStandby(page);  // the head since dry pages before it left the queue
  heap->direct[size_class] = page;
  return PopBlock(page, page->free);
}

// The first page of the queue that has blocks to hand out. Dry pages on the
// way are marked full, except one with blocks left to carve, which stays
// (*growable names the first such page).
Page* FindPageWithFreeBlocks(PageQueue* q, Page** growable) {
  Page* page = q->head;
  while (page != nullptr) {
    Page* next = page->queue_next;
    if (page->free != nullptr || RefillPage(page)) return page;
    if (page->capacity < page->reserved) {
      if (*growable == nullptr) *growable = page;
    } else {
      // Off the queue before the mark: once marked, the page may be freed
      // and taken by another heap at any moment, links and all.
      QueueRemove(q, page);
      if (!TryMarkFull(page)) {
        QueuePushFront(q, page);  // a chain just arrived: look at it again
        next = page;
      }
    }
    page = next;
  }
  return nullptr;
}

static_assert((kNumClasses + 63) / 64 == 2, "ReleaseRetainedPages and HasCompletedInboxPages read two words");

// The owner's checkpoint, at every slow path and every kFreesPerCheckpoint
// local frees: hints from other threads (pages they emptied), then retained
// pages that are due. `keep`: a class whose retained page stays when they
// are due (the one being allocated), or kNumClasses; a retention past
// kRetainedSlicesMax in the sweep may still let it go.
void TendHeap(Heap* heap, size_t keep) {
  for (size_t w = 0; w < std::size(heap->sweep_classes); ++w) {
    if (heap->sweep_classes[w].load(std::memory_order_relaxed) != 0) SweepClasses(heap, w);
    if (heap->inbox_complete[w].load(std::memory_order_relaxed) != 0) FreeCompletedInboxPages(heap, w);
  }
  if (static_cast<int32_t>(++heap->slow_paths - heap->retained_until) >= 0) {
    ReleaseRetainedPages(heap, keep);
  }
}

}  // namespace

// The class's current page ran dry (the owner's own frees go straight back
// on page->free, so it has handed all of them out again): the checkpoint,
// then blocks from any page of the class, the inbox, carving, a new page.
FERRY_NOINLINE void* AllocateSlow(Heap* heap, size_t size_class) {
  if (FERRY_UNLIKELY(heap == &g_empty_heap)) {
    if (tl_exiting) return AllocateWhileExiting(kClassSize[size_class], 0);
    heap = InitThreadHeap();
    if (heap == nullptr) {
      errno = ENOMEM;
      return nullptr;
    }
  }
  // A pending pool start, once the thread has its heap (pthread_create's own
  // allocations then use it), and never from an exiting thread: that one
  // allocates from the exit heap under g_exit_lock, a spin lock that every
  // other exiting thread would spin on through the thread creations (and
  // FreeMayStartPool keeps exiting threads from starting it too).
  PoolMaybeStartUnlessExiting();
  TendHeap(heap, size_class);
  heap->standby_paused = false;  // the heap runs short of blocks again (KeepOnStandby)
  // Blocks already carved and free come first, on any page of the class
  // (those on its inbox too), and carving new blocks last: carved blocks
  // are resident memory.
  PageQueue* q = &heap->queues[size_class];
  const bool chains_taken_away = kClassSize[size_class] >= kFreeBlockPurgeMin;
  const uint32_t chains_back = chains_taken_away ? heap->chains_back.load(std::memory_order_acquire) : 0;
  Page* growable = nullptr;
  for (int look = 0;; ++look) {
    Page* page = FindPageWithFreeBlocks(q, &growable);
    if (page != nullptr) return AllocateFromQueuedPage(heap, size_class, page);
    // Pages of this class that are waiting for the rest of their blocks
    // (ReturnChain) have some to give now.
    if (InboxHead(heap, size_class) != nullptr) {
      DrainInbox(heap, size_class);
      page = FindPageWithFreeBlocks(q, &growable);
      if (page != nullptr) return AllocateFromQueuedPage(heap, size_class, page);
    }
    // Once more if the housekeeping had a chain away meanwhile (it may be
    // one of this class's); one look again only, or a thread that calls
    // ferry_collect in a loop could keep this one looking.
    if (!chains_taken_away || look != 0 || !ChainsWereAway(heap, chains_back)) break;
  }
  if (growable != nullptr) {
    ExtendPage(growable);
    return AllocateFromQueuedPage(heap, size_class, growable);
  }
  FreeOtherHeapsCompletedPages(heap);
  Page* page = ClaimSlices(heap, kPageSlices[size_class], 1);
  if (page == nullptr) {
    SyncDirect(heap, size_class);
    errno = ENOMEM;
    return nullptr;
  }
  const size_t size = kClassSize[size_class];
  InitBlocks(page, PageKind::kSmall, size, page->slice_count * kSliceSize / size);
  page->size_class = static_cast<uint8_t>(size_class);
  if (size >= kFreeBlockPurgeMin) {
    Segment* segment = SegmentOf(page->start);
    segment->large_block_pages.fetch_or(uint64_t{1} << (page - segment->pages), std::memory_order_relaxed);
  }
  QueuePushFront(q, page);
  heap->direct[size_class] = page;
  ExtendPage(page);
  return PopBlock(page, page->free);
}

void* AllocateAboveLookup(size_t n) {
  if (n <= kMediumMax) return AllocateInClass(ComputeSizeClass(n));
  if (n <= kLargeMax) {
    if (FERRY_UNLIKELY(tl_heap == &g_empty_heap && tl_exiting)) return AllocateWhileExiting(n, 0);
    Heap* heap = CurrentHeapOrInit();
    if (heap == nullptr) {
      errno = ENOMEM;
      return nullptr;
    }
    return AllocateLarge(heap, n, kSliceSize);
  }
  return AllocateHuge(n, 0);
}

// calloc of a large size (kMediumMax < n <= kLargeMax): slices that read as
// zeros already (never touched, or decommitted) are not written, so that
// they become resident only as the program uses them, as with glibc's
// mmapped chunks; others are cleared.
void* AllocateLargeZeroed(size_t n) {
  void* p;
  bool zeroed = false;
  if (FERRY_UNLIKELY(tl_heap == &g_empty_heap && tl_exiting)) {
    p = AllocateWhileExiting(n, 0);
  } else {
    Heap* heap = CurrentHeapOrInit();
    if (heap == nullptr) {
      errno = ENOMEM;
      return nullptr;
    }
    p = AllocateLarge(heap, n, kSliceSize, &zeroed);
  }
  if (p != nullptr && !zeroed) memset(p, 0, n);
  return p;
}

void* AllocateAligned(size_t alignment, size_t n) {
  if (alignment <= 8) return Allocate(n);
  if (alignment <= kSliceSize) {
    const size_t rounded = AlignUp(n == 0 ? 1 : n, alignment);
    if (rounded <= kMediumMax) {
      // Pages start on slice boundaries and every power of two is a class,
      // so a class whose size is a multiple of the alignment has only
      // aligned blocks.
      size_t size_class = SizeClassOf(rounded);
      while (kClassSize[size_class] % alignment != 0) ++size_class;
      Heap* heap = tl_heap;
      Page* page = heap->direct[size_class];
      if (page->free != nullptr) return PopBlock(page, page->free);
      return AllocateSlow(heap, size_class);
    }
  }
  if (alignment <= kLargeMax && n <= kLargeMax) {
    if (FERRY_UNLIKELY(tl_heap == &g_empty_heap && tl_exiting)) {
      return AllocateWhileExiting(n, alignment);
    }
    Heap* heap = CurrentHeapOrInit();
    if (heap == nullptr) {
      errno = ENOMEM;
      return nullptr;
    }
    return AllocateLarge(heap, n == 0 ? 1 : n, alignment);
  }
  return AllocateHuge(n, alignment);
}

namespace {

// `p` is in no live segment: a block of a huge mapping the cache still
// holds or one of the last huge blocks freed (its block start: `at_start`),
// or a pointer ferry never returned.
[[noreturn]] FERRY_COLD void ReportFreedHugeOrForeign(const char* call, const void* p,
                                                    const char* at_start) {
  switch (FindFreedHuge(reinterpret_cast<uintptr_t>(p))) {
    case FreedHugeHit::kBlockStart: FatalBadPointer(call, p, at_start);
    case FreedHugeHit::kInside: FatalBadPointer(call, p, "pointer into a freed huge block");
    case FreedHugeHit::kNone: break;
  }
  FatalBadPointer(call, p, "pointer not allocated by ferry");
}

}  // namespace

void FreeUnmapped(void* p, const char* call, const void* caller) {
  if (p == nullptr) return;
  const uintptr_t address = reinterpret_cast<uintptr_t>(p);
  if (SegmentMapLookup(address) == kMapHugeAlignedBlock) {
    Segment* segment = reinterpret_cast<Segment*>(
        reinterpret_cast<uintptr_t>(SegmentOf(address)) - kSegmentSize);
    FreeHuge(segment, &segment->pages[0], p, call);
    return StartAskedPoolFromFree(caller);
  }
  ReportFreedHugeOrForeign(call, p, "double free (huge block already free)");
}

void ReportCorruptFreeList(Page* page, Block* block, Block* next) {
  ReportBadChainLink(page, block, next, "outside its page");
}

void* PopLastBlock(Page* page, Block* block, Block* next) {
  if (next != nullptr) ReportCorruptFreeList(page, block, next);
  void* p = HandOutBlock(page, block, nullptr);
  // The class's only page, with blocks left to carve and none coming back
  // (no returned chain, no page waiting on the inbox): carving now is what
  // the next allocation's slow path would do after looking everywhere else,
  // and a page of 64 KiB carved 4 KiB at a time took 16 of them (a fifth of
  // the time of sh6bench-like rounds of 10 MiB, whose pages are all new
  // each round). The slow path's checkpoint stays: retained pages age by
  // slow paths, and without it onefree's medium pages stayed longer
  // (steady RSS/live 1.211 -> 1.218, 21 runs each). Not quite the slow
  // path's choice: that comes at the next allocation, and blocks the owner
  // frees meanwhile (into this page, or a full one of the class) would
  // come before the carved ones; now they come after, 4 KiB (or one medium
  // block) later.
  if (page->capacity < page->reserved) {
    Heap* heap = page->heap;
    const size_t c = page->size_class;
    const PageQueue& q = heap->queues[c];
    // A class whose chains the housekeeping takes: not while one is away
    // (the slow path waits for it, ChainsWereAway).
    const bool chains_taken_away = page->block_size >= kFreeBlockPurgeMin;
    const uint32_t chains_back = chains_taken_away ? heap->chains_back.load(std::memory_order_acquire) : 0;
    if (q.head == page && q.tail == page &&
        page->returned.load(chains_taken_away ? std::memory_order_acquire : std::memory_order_relaxed) == 0 &&
        heap->inbox[c].load(std::memory_order_relaxed) == nullptr &&
        heap->inbox_borrowed.load(std::memory_order_relaxed) == 0 &&  // else the slow path waits for it
        (!chains_taken_away || NoChainWasAway(heap, chains_back))) {
      // The rest of the slow path's start: a pending pool start (its thread's
      // allocations may use this page: looked at again below), and the
      // checkpoint, which leaves the class's current page where it is (its
      // sweep may refill it).
      PoolMaybeStartUnlessExiting();
      TendHeap(heap, c);
      if (q.head == page && q.tail == page && page->free == nullptr) ExtendPage(page);
    }
  }
  return p;
}

void FreeChecksFailed(Page* page, void* p, const char* call, const void* caller) {
  if (page->kind == PageKind::kHuge) {
    FreeHuge(SegmentOf(page->start), page, p, call);
    return StartAskedPoolFromFree(caller);
  }
  if (page->kind == PageKind::kNone) FatalBadPointer(call, p, "pointer not allocated by ferry");
  if (!IsBlockStart(page, reinterpret_cast<uintptr_t>(p))) {
    FatalBadPointer(call, p, "not the start of a block (interior pointer)");
  }
  FatalBadPointer(call, p, "double free (block already free)");
}

// A remote free on a thread with no heap: its first, or one made after the
// thread's heap was abandoned at exit (glibc frees its per-thread buffers
// after the TSD destructors have run), or with no memory for a heap. The
// latter two return the block at once, as a batch of one.
// `caller` goes on with the free: a thread's first free may be the loader's,
// of another thread's block (a dead thread's TLS), and a batch it fills
// must not start the pool there (FreeMayStartPool).
void FreeRemoteSlow(Heap* heap, Page* page, void* p, const char* call, const void* caller) {
  FERRY_CHECK(heap == &g_empty_heap);
  // A thread with no heap makes none for a free by the dynamic loader:
  // glibc frees dead threads' TLS (_dl_deallocate_tls, from queue_stack) on
  // an exiting thread after its TSD destructor rounds, and a thread that
  // never allocated took a heap there that nothing would abandon
  // (OnThreadExit never ran for it). A review's program of detached threads
  // that never allocate lost about half as many heaps as it ran threads,
  // 12 KiB each, and the memory of those it had taken over (9600 threads:
  // 25 MB against glibc's 1.7). The C library's frees (tdestroy,
  // freeaddrinfo, fclose) still make one: alone, each free took 35 times as
  // long (the return without a heap blocks signals around it).
  if (!tl_exiting && !CalledFromLoader(caller) && InitThreadHeap() != nullptr) {
    return Free(p, call, caller);  // may be the owner now
  }
  static_cast<Block*>(p)->next_encoded = RemoteFreeMark(page);
  void* batch[1] = {p};
  CounterAdd(Counter::remote_frees, 1);
  CounterAdd(Counter::batches_published, 1);
  ReturnBatchWithoutHeap(batch, 1);
}

void PublishBatchSlow(Heap* heap, const void* caller) {
  const bool may_spawn = FreeMayStartPool(caller);
  PublishBatch(heap, may_spawn);
  if (may_spawn && g_pool_start_requested.load(std::memory_order_relaxed) != 0) PoolMaybeStart();
}

FERRY_NOINLINE void FreeEmptiedPage(Heap* heap, Page* page, const void* caller) {
  bool asked_for_pool = false;
  Page* release = PageToReleaseOnEmpty(heap, page, &asked_for_pool);
  if (release != nullptr) asked_for_pool |= ReleasePageFromFreeAsking(heap, release);
  if (asked_for_pool) StartAskedPoolFromFree(caller);
}

// A malloc/free loop of one block empties its page at every free: the
// class's only page of one slice stays, decided here without a stack frame
// or a locked count (the shared counter cost such a loop 12 instructions a
// pair, fast_path_budget_test), and anything else out of line.
void FreeLocalSlow(Heap* heap, Page* page, const void* caller) {
  heap->local_frees_slow.store(heap->local_frees_slow.load(std::memory_order_relaxed) + 1,
                               std::memory_order_relaxed);
  if (page->kind == PageKind::kSmall && page->slice_count == 1 && heap->queues[page->size_class].head == page) {
    const Page* next = page->queue_next;
    if (next == nullptr || PageCannotHandOutFirst(next)) return;  // stays current, as PageToReleaseOnEmpty would
  }
  FreeEmptiedPage(heap, page, caller);
}

void FreeCheckpoint(Heap* heap) {
  heap->frees_to_checkpoint = kFreesPerCheckpoint;
  TendHeap(heap, kNumClasses);
}

// The owner frees a block of a page it had found full. If nothing has come
// back to the page yet (the word is just the full mark), the owner takes it
// back with one CAS and the free is an ordinary local one, as every later
// free into the page will be. Otherwise other threads' returns are on the
// page (and it is on the inbox, or about to be): the block joins them like a
// remote free, and the page comes back through the inbox (DrainInbox).
// A large block (one per page) that nobody else has freed is released at once.
void FreeIntoFullPage(Heap* heap, Page* page, void* p, const char* call, const void* caller) {
  Block* block = static_cast<Block*>(p);
  uintptr_t expected = kReturnedFull;
  const bool took_back = page->returned.compare_exchange_strong(
      expected, 0, std::memory_order_acq_rel, std::memory_order_relaxed);
  if (page->kind == PageKind::kLarge) {
    if (!took_back) FatalBadPointer(call, p, "double free (block already free)");
    page->in_full = 0;
    page->used = 0;
    return ReleasePageFromFree(heap, page, caller);
  }
  if (!took_back) {
    // Not counted in chains_pushed: with blocks_returned it tells how
    // remote frees were batched, and this is the owner's own free (counted
    // there alone, it made fewer blocks than pushes: a bug hunt's python).
    BeginInlineReturns(&heap->returns_in_progress, /*only_this_thread=*/true);
    ReturnChain(page, block, block, 1);
    EndInlineReturns(&heap->returns_in_progress);
    return;
  }
  page->in_full = 0;
  PageQueue* q = &heap->queues[page->size_class];
  QueuePushBeforeStandby(q, page);
  if (q->head == page) SyncDirect(heap, page->size_class);
  block->next_encoded = EncodeNext(page->free);
  page->free = block;
  if (--page->used == 0) FreeLocalSlow(heap, page, caller);
}

size_t UsableSize(uintptr_t address, const char* call, bool require_live) {
  const void* p = reinterpret_cast<const void*>(address);
  const uint8_t kind = SegmentMapLookup(address);
  if (kind == kMapHugeAlignedBlock) {
    Segment* segment = reinterpret_cast<Segment*>(
        reinterpret_cast<uintptr_t>(SegmentOf(address)) - kSegmentSize);
    return HugeUsableSize(&segment->pages[0], address, call);
  }
  if (kind != kMapSegment) ReportFreedHugeOrForeign(call, p, "huge block already free (a double free, or a use after free)");
  Page* page = PageOf(SegmentOf(address), address);
  if (page->kind == PageKind::kHuge) return HugeUsableSize(page, address, call);
  if (page->kind == PageKind::kNone) FatalBadPointer(call, p, "pointer not allocated by ferry");
  if (!IsBlockStart(page, address)) FatalBadPointer(call, p, "not the start of a block (interior pointer)");
  if (require_live) {
    // memcheck: the user may not have written the word yet, so the test and
    // its branch run with reports off.
    VgQuietBegin();
    if (LooksFree(page, static_cast<const Block*>(p))) {
      VgQuietEnd();
      FatalBadPointer(call, p, "double free (block already free)");
    }
    VgQuietEnd();
  }
  return page->block_size;
}

void FlushThisThread() {
  Heap* heap = tl_heap;
  if (heap != &g_empty_heap) PublishBatch(heap, /*may_spawn=*/true);
  PoolFlush();
}

void CollectThisThread() {
  FlushThisThread();
  Heap* heap = tl_heap;
  if (heap != &g_empty_heap) CollectHeap(heap, KeepEmpty::kNothing, FreeBlocks::kGiveBack);
  EnsureGlobalInit();
  EnsureForkHandlers();  // the collect takes the duty turn, which fork() must see
  PoolCollectNow();
}

void DrainInboxForTest(Heap* heap, size_t size_class) { DrainInbox(heap, size_class); }

uint64_t SumOverHeaps(std::atomic<uint64_t> Heap::*counter) {
  uint64_t sum = 0;
  for (Heap* heap = g_all_heaps.load(std::memory_order_acquire); heap != nullptr; heap = heap->all_next) {
    sum += (heap->*counter).load(std::memory_order_relaxed);
  }
  return sum;
}

void ReleaseStandbyPagesForTest(Heap* heap) { ReleaseStandbyPages(heap, kNumClasses); }

bool InlineReturnsHeldForTest() { return g_inline_returns_held.load(std::memory_order_seq_cst); }

}  // namespace ferry

// heap.h — thread heaps and the allocation and free fast paths.
//
// Every thread allocates from its own heap, found through one thread-local
// pointer. Before a thread's first allocation that pointer names the empty
// heap, whose pages have no free blocks, so "not initialised yet" costs the
// fast path nothing: the one test that sends it to the slow path catches it.
//
// Fast paths (everything else is out of line, in heap.cc; `git grep Slow`):
//   Allocate: size class -> heap->direct[class] -> pop page->free.
//   Free:     segment map says ferry -> page by arithmetic -> owner check ->
//             block checks -> push page->free.
// A free of another thread's block goes into this thread's remote batch;
// a full batch is sorted and handed back (reclaimer/sorter.h).
#ifndef FERRY_ALLOCATOR_HEAP_H_
#define FERRY_ALLOCATOR_HEAP_H_

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "allocator/segment.h"
#include "allocator/size_class.h"
#include "common/base.h"
#include "common/spin_lock.h"
#include "common/valgrind.h"
#include "reclaimer/batch.h"

namespace ferry {

struct PageQueue {
  Page* head;
  Page* tail;
};

extern Page g_empty_page;

// Heap::retained_until's distance ahead when no page is retained: far
// enough that the wrapping compare does not come due for 2^30 slow paths.
inline constexpr uint32_t kNothingRetained = uint32_t{1} << 30;

// Slow paths (and checkpoints) a retained empty page waits (PageToReleaseOnEmpty).
inline constexpr uint32_t kRetainSlowPaths = 256;
// The slices a heap's retained empty pages may span together: one page of
// the largest (kMaxPageSlices, heap.cc checks) and some.
inline constexpr uint32_t kRetainedSlicesMax = 48;
// One-slice pages a heap keeps empty on their classes' queues besides each
// class's current page (standby pages, KeepOnStandby in heap.cc): 1 MiB
// at most. A thread that builds a set of objects and frees it, round after
// round, empties several pages of a class each round: released and made
// again, they cost it 9% of its time in the teardown workload
// (perf/RESULTS.md, 2026-12-07). They go as retained pages do, after
// kRetainSlowPaths slow paths with none kept.
inline constexpr uint32_t kStandbyPagesMax = 16;
// Where no reclaimer thread ticks (a single-threaded program, the oneTBB
// backend, FERRY_RECLAIMERS=0), the empty segments an owner keeps besides
// its spare (KeepEmptySegmentLocked, heap.cc): 16, 64 MiB, the most a
// thread that then idles holds on to. glibc's heap keeps up to as much at
// its top when its dynamic trim threshold is at its highest.
inline constexpr size_t kKeptEmptySegments = 16;
// As many kept and empty at once make the thread ask for the pool where the
// program has other threads (AskForThePoolIfSeveralThreads): fewer, at
// most 28 MiB, are a cache that a program of a little local churn keeps
// while it idles without a thread started for it. Three threads that each
// allocated and freed 12 MiB of their own, four times over, kept four
// (tests/reclaimer_test.cc, ProgramWithoutRemoteFreesOrMuchFreeMemoryNeverStartsAThread).
inline constexpr size_t kKeptEmptySegmentsAskingForThePool = 8;

// Local frees between two of the owner's checkpoints (Heap::frees_to_checkpoint).
inline constexpr uint32_t kFreesPerCheckpoint = 256;

// A returned chain that lists this many blocks or more is put in address
// order when the owner takes it (OrderChain in heap.cc). The walk is one
// dependent miss per block on lines another core wrote, so what it costs
// depends on how far apart the cores are: 32 -> 128 took prodcons 5-9% less
// wall time on the 2-CPU machine; 128 -> 256 took 16-19% more throughput at
// 2 and 4 pairs on the 16-core one (3% at 8) and 5-6% at 2 and 4 pairs
// here, for 3% at one pair here (perf/RESULTS.md, 2026-12-04). Tests that
// need a chain ordered make one this long.
inline constexpr uint32_t kOrderChainMin = 256;

struct Heap {
  // Every class starts at the empty page, whose free list is empty, so the
  // first allocation of each class takes the slow path.
  constexpr Heap() {
    for (auto& page : direct) page = &g_empty_page;
  }

  // --- owner thread only (hot first) -----------------------------------------
  Page* direct[kNumClasses] = {};  // first page of each class, or the empty page
  // Counts local frees down to the next checkpoint (TendHeap), the work
  // every slow path does first. A thread whose frees feed its own
  // allocations never runs out of blocks and so never takes a slow path:
  // without this, pages other threads emptied and retained pages would
  // wait for it for good.
  uint32_t frees_to_checkpoint = kFreesPerCheckpoint;
  // Statistics (common/stats.h, PerHeap): the owner's load and store, read
  // by anyone (SumOverHeaps).
  std::atomic<uint64_t> local_frees_slow{0};
  void** batch = nullptr;          // current->ptrs: remote frees waiting to be handed on
  uint32_t batch_count = 0;
  uint32_t batch_limit = 0;
  size_t batch_bytes = 0;
  size_t batch_bytes_limit = 0;
  PageQueue queues[kNumClasses] = {};
  // Under segments_lock: the owner's, and the housekeeping's when it gives
  // back segments that other threads emptied (ReleaseIdleEmptySegments).
  Segment* segments = nullptr;     // segments with pages of this heap, oldest first
  Segment* segments_tail = nullptr;
  Segment* spare = nullptr;        // one empty segment kept on the list (ReleaseSegmentIfEmptyLocked)
  // Where no reclaimer thread ticks: segments the owner emptied and keeps on
  // the list for a while (KeepEmptySegmentLocked). A slot names a segment
  // of this list (a detach clears it), empty or in use again.
  Segment* kept[kKeptEmptySegments] = {};
  bool kept_any = false;           // some slot is set
  uint64_t kept_check_ms = 0;      // when ClaimSlices next looks at their age
  // Where claims start on the list: every segment before it had no free
  // slice when a claim passed it. Without it a heap that grows walked all
  // of its full segments for each new page (4 GiB of 1 KiB blocks: the
  // fourth GiB took 5.8 s, mimalloc 0.7). nullptr: the list's head.
  Segment* claim_from = nullptr;
  Batch* current = nullptr;        // the batch being filled, one of `batches`
  Batch batches[kBatchesPerHeap];
  // Classes whose only page, spanning several slices, is empty and kept a
  // little while (PageToReleaseOnEmpty): released once kRetainSlowPaths more slow
  // paths have passed without a page retained, or once they would span more
  // than kRetainedSlicesMax.
  uint64_t retained_classes[(kNumClasses + 63) / 64] = {};
  // Their pages' slices, counted as each class was retained; set again at
  // each release (ReleaseRetainedPages).
  uint32_t retained_slices = 0;
  // The standby pages (KeepOnStandby in heap.cc), each in the slot its
  // Page::standby names; a new one takes a free slot from
  // standby_next_slot on, or displaces the page in that slot, the oldest
  // but for those that left meanwhile.
  Page* standby_slots[kStandbyPagesMax] = {};
  uint32_t standby_pages = 0;      // slots in use
  uint32_t standby_next_slot = 0;
  // Standby pages displaced since a standby page was last used again; past
  // kStandbyPagesMax, standby pages are paused until the next allocation
  // slow path.
  uint32_t standby_displaced = 0;
  bool standby_paused = false;
  uint32_t slow_paths = 0;         // allocation slow paths so far (wraps)
  // slow_paths value at which they go; kNothingRetained ahead when none is.
  uint32_t retained_until = kNothingRetained;
  uint32_t home = 0;               // spreads heaps over the reclaimers' queues
  bool is_reclaimer = false;       // a pool thread's heap: never takes over others'
  bool abandoned = false;          // on the abandoned list (under its lock)
  // When it was last abandoned (under that lock), and whether its large
  // free blocks' memory has been given back since (heap.cc,
  // CollectAbandonedHeaps).
  uint64_t abandoned_ms = 0;
  bool free_blocks_given_back = false;
  // Its exiting thread left its spare committed for the next owner, counted
  // in g_abandoned_spares (AbandonHeap); cleared by whoever takes the heap
  // off the abandoned list.
  bool abandoned_with_spare = false;
  Heap* all_next = nullptr;        // every heap ever made (for statistics)
  Heap* abandoned_next = nullptr;
  // --- written by other threads ------------------------------------------------
  // Who owns the heap: the owning thread's id in the low 32 bits (0: none
  // to look for: abandoned, the exit heap, a reclaimer's, a fork child's
  // heaps of the parent's other threads), and above it a count that every
  // new owner moves on, so that an owner read before the heap changed hands
  // never matches after (the kernel may give a new thread a dead one's id).
  // Set by a new owner, cleared under g_abandoned_lock (heap.cc,
  // AbandonHeapsOfGoneThreads).
  std::atomic<uint64_t> owner{0};
  // Per class: full pages that got some of their blocks back (ReturnChain).
  alignas(64) std::atomic<Page*> inbox[kNumClasses] = {};
  // Bit c: a page of class c on this heap's queue has half a page or more
  // of returned blocks waiting; the owner's next slow path sweeps that
  // class's queue (SweepClass), giving wholly free pages back.
  std::atomic<uint64_t> sweep_classes[(kNumClasses + 63) / 64] = {};
  // Bit c: a page on inbox[c] has had every block come back (ReturnChain);
  // the owner's next slow path, of any class, gives such pages back to
  // their segments (FreeCompletedInboxPages), and so does another heap about
  // to take a new page (FreeOtherHeapsCompletedPages), so that their slices
  // serve any heap at once rather than wait for a shortage in that class.
  std::atomic<uint64_t> inbox_complete[(kNumClasses + 63) / 64] = {};
  // Set while the housekeeping, or another heap in its turn, holds some of
  // the inboxes for a moment (CollectInboxes, FreeOtherHeapsCompletedPages);
  // an owner that finds one empty waits for them to come back rather than
  // make a new page while its returned blocks are away.
  std::atomic<uint32_t> inbox_borrowed{0};
  // Returned chains of this heap's pages that the housekeeping holds away
  // now (heap.cc, GiveBackWaitingChains), and how many it has put back so
  // far: an owner short of a large class that found nothing waits for them
  // before it carves (ChainsWereAway), so that what ferry_flush brought
  // back is what its next allocations take.
  std::atomic<uint32_t> chains_away{0};
  std::atomic<uint32_t> chains_back{0};
  // Set while the owner holds one of its inboxes' lists to free its emptied
  // pages (FreeCompletedInboxPages): another heap that took the class's bit
  // meanwhile and found the inbox empty sets the bit again.
  std::atomic<uint32_t> inbox_owner_holding{0};
  // Set when slices are freed in a segment of this heap's list that had
  // none free (NoteRoomInFullSegment): the next claim starts at the head.
  std::atomic<uint32_t> room_in_full_segment{0};
  // Returns to other heaps' pages the owner is making now (ReturnBatch or
  // ReturnChain on this thread): fork waits for none to be half done
  // (heap.cc, HoldInlineReturnsForFork). Only the owner changes it.
  std::atomic<uint32_t> returns_in_progress{0};
  // Guards the segment list above (segments, segments_tail, spare, kept,
  // kept_any, kept_check_ms, and the segments' heap_next and heap_prev). The owner takes it only where it
  // claims slices or gives a segment back, never on a fast path; the
  // housekeeping only tries it, and looks again at its next run.
  SpinLock segments_lock;
};

extern Heap g_empty_heap;

// Heap::owner's low bits: the owning thread's id.
inline constexpr uint64_t kOwnerTidMask = 0xffffffffu;

// A thread owns `heap` now. Heaps are never freed, so any heap pointer
// may be asked about (arena.cc asks about the heap whose page last held
// a slice).
inline bool HeapHasOwnerThread(const Heap* heap) {
  return (heap->owner.load(std::memory_order_relaxed) & kOwnerTidMask) != 0;
}
extern __thread Heap* tl_heap __attribute__((tls_model("initial-exec")));

// Slow paths.
void* AllocateSlow(Heap* heap, size_t size_class);
// `caller` as Free's: these may empty the segments or cache the huge
// mapping whose keeping asks for the pool, and start it (FreeMayStartPool).
void FreeUnmapped(void* p, const char* call, const void* caller);
void FreeChecksFailed(Page* page, void* p, const char* call, const void* caller);
void FreeLocalSlow(Heap* heap, Page* page, const void* caller);
void FreeCheckpoint(Heap* heap);
void FreeIntoFullPage(Heap* heap, Page* page, void* p, const char* call, const void* caller);
void FreeRemoteSlow(Heap* heap, Page* page, void* p, const char* call, const void* caller);
void PublishBatchSlow(Heap* heap, const void* caller);
// The housekeeping's turn to give back segments that other threads emptied
// (heap.cc); run after ArenaPurge, which tells it whether any are due.
// True when it passed by a heap whose owner held its list.
bool ReleaseIdleEmptySegments(uint64_t now_ms, bool urgent);
// The housekeeping's turn to give back the memory of large free blocks whose
// returned chains wait on their pages (heap.cc); true while one waits for
// its time. Adds the chains it took to *chains_taken where given.
bool GiveBackWaitingChains(uint64_t now_ms, bool urgent, size_t* chains_taken = nullptr);
// Tests: called by GiveBackWaitingChains with the page whose chain it has
// away, just before it puts it back (nullptr: nothing).
extern std::atomic<void (*)(Page*)> g_chain_away_hook_for_test;

// "ferry: malloc: free list of the page at … corrupted …" and abort: the free
// block's link decodes to `next`, outside the page.
[[noreturn]] FERRY_COLD void ReportCorruptFreeList(Page* page, Block* block, Block* next);

// Out of line: PopBlock for the list's last block, or an abort when its link
// points outside the page (heap.cc).
FERRY_COLD void* PopLastBlock(Page* page, Block* block, Block* next);

// Hands `block`, the head of page->free, to the user; `next` follows it.
FERRY_ALWAYS_INLINE void* HandOutBlock(Page* page, Block* block, Block* next) {
  // The next pop of this class reads `next`'s link; on a list freed in
  // random order that block is cold, and the load stalled malloc (90% of
  // its time in churn). Started now, the miss overlaps the caller's work.
  // Never faults, whatever `next` is.
  __builtin_prefetch(next, 1);
  page->free = next;
  block->next_encoded = 0;  // a live block never looks free (see LooksFree)
  page->used++;
  return block;
}

FERRY_ALWAYS_INLINE void* PopBlock(Page* page, Block* block) {
  // A write after free into `block` could name any address as the next
  // block; the key makes a chosen address unguessable, and this check keeps
  // the allocator inside the page whatever the word decodes to. The list's
  // end (nullptr) fails the range test too and goes out of line, once per
  // list, so that the common pop pays one compare (a tail call: no
  // registers to save).
  Block* next = DecodeNext(block->next_encoded);
  if (FERRY_UNLIKELY(!IsInCarvedRange(page, next))) return PopLastBlock(page, block, next);
  return HandOutBlock(page, block, next);
}

// A block of a small or medium class.
FERRY_ALWAYS_INLINE void* AllocateInClass(size_t size_class) {
  Heap* heap = tl_heap;
  Page* page = heap->direct[size_class];
  Block* block = page->free;
  if (FERRY_LIKELY(block != nullptr)) return PopBlock(page, block);
  return AllocateSlow(heap, size_class);
}

// n > kSmallLookupMax: medium classes by arithmetic, then large and huge.
void* AllocateAboveLookup(size_t n);

FERRY_ALWAYS_INLINE void* Allocate(size_t n) {
  // Sizes the class table covers first, so that the common request pays
  // one compare; the rest out of line (a tail call).
  if (FERRY_LIKELY(n <= kSmallLookupMax)) return AllocateInClass(kSmallClassTable[(n + 7) >> 3]);
  return AllocateAboveLookup(n);
}

// A free of another heap's block: append it to this thread's batch. The
// empty heap's batch_limit is 0, so a thread's first remote free makes its
// heap in the slow path.
// `caller`: the code that called free(), when the free came from the C
// library's own free() entry (override.cc); nullptr for ferry_free and
// operator delete, which the C library never calls. It decides whether this
// free may start the reclaimer pool (heap.cc, FreeMayStartPool).
FERRY_ALWAYS_INLINE void FreeRemote(Heap* heap, Page* page, void* p, const char* call,
                                    const void* caller) {
  const uint32_t count = heap->batch_count;
  if (FERRY_UNLIKELY(count >= heap->batch_limit)) return FreeRemoteSlow(heap, page, p, call, caller);
  static_cast<Block*>(p)->next_encoded = RemoteFreeMark(page);
  heap->batch[count] = p;
  heap->batch_count = count + 1;
  heap->batch_bytes += page->block_size;
  if (FERRY_UNLIKELY(count + 1 == heap->batch_limit ||
                     heap->batch_bytes >= heap->batch_bytes_limit)) {
    PublishBatchSlow(heap, caller);
  }
}

FERRY_ALWAYS_INLINE void Free(void* p, const char* call = "free", const void* caller = nullptr) {
  const uintptr_t address = reinterpret_cast<uintptr_t>(p);
  if (FERRY_UNLIKELY(SegmentMapLookup(address) != kMapSegment)) return FreeUnmapped(p, call, caller);
  Page* page = PageOf(SegmentOf(address), address);
  // IsBlockStart and LooksFree, sharing their loads: a block this page has
  // carved, whose first word is not a free-list link of this page. Huge and
  // free slices have nothing carved, so they fail here too.
  const uintptr_t start = page->start;
  const uint64_t carved = page->carved_bytes.load(std::memory_order_relaxed);
  const uint64_t offset = address - start;
  Block* block = static_cast<Block*>(p);
  if (FERRY_UNLIKELY(offset >= carved || offset * page->divisor_magic >= page->divisor_magic)) {
    return FreeChecksFailed(page, p, call, caller);
  }
  // Only now, p being a block this page carved, its first word: a huge
  // block (nothing carved) is never read, so one whose first page the
  // program made inaccessible (a guard page under a stack) frees as it
  // does on glibc; reading first faulted there.
  const uintptr_t next = reinterpret_cast<uintptr_t>(DecodeNext(block->next_encoded));
  if (FERRY_UNLIKELY(next == 0 || next - start < carved)) return FreeChecksFailed(page, p, call, caller);
  Heap* heap = tl_heap;
  if (FERRY_UNLIKELY(page->heap != heap)) return FreeRemote(heap, page, p, call, caller);
  if (FERRY_UNLIKELY(page->in_full)) return FreeIntoFullPage(heap, page, p, call, caller);
  // Onto the list the next allocation pops: a block freed by its owner is
  // handed out again while it is still in cache (realloc: the buffer just
  // copied out of). Kept on a list of its own until this one ran dry (as
  // mimalloc's local_free), it came back only after every older free block
  // of the page, cold by then (perf/RESULTS.md, 2026-12-02).
  block->next_encoded = EncodeNext(page->free);
  page->free = block;
  if (FERRY_UNLIKELY(--page->used == 0)) return FreeLocalSlow(heap, page, caller);
  if (FERRY_UNLIKELY(--heap->frees_to_checkpoint == 0)) FreeCheckpoint(heap);
}

// A free by the user (the malloc family's and operator delete's entry
// points): memcheck learns of it first (FERRY_VALGRIND builds), then Free.
FERRY_ALWAYS_INLINE void FreeUserBlock(void* p, const char* call, const void* caller = nullptr) {
  VgFreeing(p);
  Free(p, call, caller);
}

// Everything else the API needs, out of line in heap.cc.
void* AllocateAligned(size_t alignment, size_t n);  // alignment: power of two
void* AllocateLargeZeroed(size_t n);  // calloc, kMediumMax < n <= kLargeMax
// A huge block (n > kLargeMax, huge.cc). may_reuse false: a fresh mapping,
// zero already, never one from the huge cache. *reused (if given) set when
// the block took a waiting mapping (its bytes as the last block left them).
void* AllocateHuge(size_t n, size_t alignment, bool may_reuse = true, bool* reused = nullptr);
// calloc's huge block (n > kLargeMax): n bytes of zeros, from a waiting
// mapping (cleared) where n is at most 32 MiB, else a fresh one.
void* AllocateHugeZeroed(size_t n);
// realloc of a huge block to a huge size (n > kLargeMax) without copying;
// nullptr when it cannot (then nothing changed): huge.cc.
void* ReallocHuge(void* p, size_t n);
// realloc of a large block to a large size (kMediumMax < n <= kLargeMax):
// true when it now spans the slices n needs, grown into the free slices
// after it or shrunk; false when it cannot grow in place (then nothing
// changed).
bool ResizeLargeInPlace(void* p, size_t n);
// Before the free of a large block whose bytes realloc has copied into a
// huge block: gives back all but its first OS page to the OS at once.
void DecommitOutgrownLargeBlock(void* p);
// The usable size of the block at `address`; aborts with a diagnostic naming
// `call` when it is not a ferry block (foreign, interior, or a huge block
// already freed). Without `require_live` it never reads the block's bytes,
// so a small or large block that is free passes; with it (realloc, which
// may keep the block in place and never reach free's checks) such a block
// is reported as a double free.
size_t UsableSize(uintptr_t address, const char* call, bool require_live = false);
// realloc; `caller` goes to the free of the old block (see Free): the C
// library's realloc entry points pass their return address, ferry_realloc
// nullptr.
void* Realloc(void* ptr, size_t size, const void* caller);
// free_sized and free_aligned_sized (`call` names which): aborts with a
// diagnostic when the block cannot hold `size`; `caller` as Free's.
void FreeSized(void* ptr, size_t size, const char* call, const void* caller);
// The calling thread's heap, made (or taken over from an exited thread) on
// first use; the one it has when it has one. nullptr if the OS refuses.
Heap* InitThreadHeap();
void FlushThisThread();                              // publish the remote batch
void CollectThisThread();
void EnsureGlobalInit();
struct Options;
const Options& CurrentOptions();  // read from the environment on first use
// Tests: whether a fork now holds other threads' returns to other heaps'
// pages (heap.cc, HoldInlineReturnsForFork).
bool InlineReturnsHeldForTest();
// Tests: called in the duty turn when a new thread, finding no abandoned
// heap, looks for heaps of gone threads (heap.cc, InitThreadHeap).
extern std::atomic<void (*)()> g_gone_owners_look_hook_for_test;
// Tests: called after that thread tried for the turn, with its signals
// still blocked (heap.cc, InitThreadHeap).
extern std::atomic<void (*)()> g_gone_owners_tried_hook_for_test;
// Tests: called in a fork child for each heap as the heaps are named after
// the child's thread (heap.cc, TakeOwnershipInChild), as a signal handler
// there could run.
extern std::atomic<void (*)()> g_take_ownership_hook_for_test;
// The owner's drain of one class's inbox (heap.cc, DrainInbox), for tests.
void DrainInboxForTest(Heap* heap, size_t size_class);
// A PerHeap statistics counter (common/stats.h) summed over every heap made.
uint64_t SumOverHeaps(std::atomic<uint64_t> Heap::*counter);
// The owner's release of its standby pages (heap.cc, KeepOnStandby), as
// their time running out does: for tests that need an emptied page's slices
// free at once.
void ReleaseStandbyPagesForTest(Heap* heap);
// Registers the fork handlers once (heap.cc); for paths that take a lock
// fork() must hold without making a heap (the huge cache).
void EnsureForkHandlersRegistered();
// Starts a pool that was asked for (PoolMaybeStart), unless this thread is
// exiting (heap.cc, AllocateSlow says why); for the huge blocks' path,
// which takes no allocation slow path.
void PoolMaybeStartUnlessExiting();
// A mapping the address space would not take (ulimit -v, ulimit -d, strict
// overcommit): the empty segments this thread's heap keeps for its next
// pages go back to their arenas (its spare stays), and every segment no
// heap holds is unmapped (ArenaUnreserveFreeSegments). False when nothing
// was released or unmapped (then a retry is pointless; nothing is unmapped
// where `wanted` bytes could not fit even then). The caller holds no
// allocator lock. heap.cc.
bool MakeRoomInAddressSpace(size_t wanted);
// Counts the calling thread among those that have used the allocator, once
// (a heap made or taken over, a huge block allocated or freed: a thread
// that handles only huge blocks has no heap); a fork child counts its one
// thread only (heap.cc).
void CountThisThread();
// More than one thread has used the allocator (in a fork child: since the
// fork).
bool ProgramRanSeveralThreads();
// Memory a thread keeps for a while because no reclaimer ticks (its empty
// segments, the huge cache past its cap) is given back on the pool's timer
// once there is one: asks for it (PoolAskToHousekeep; the next allocation
// starts it) where the program has run several threads that allocate, or
// has other threads now that never did (heap.cc says why). A process of
// one thread never gets a thread from this.
// by_threads_run false: only the kernel's count of threads now decides.
void AskForThePoolIfSeveralThreads(bool by_threads_run = true);

}  // namespace ferry

#endif  // FERRY_ALLOCATOR_HEAP_H_

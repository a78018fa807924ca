// huge.cc — blocks above kLargeMax: each on its own OS mapping, laid out as a
// segment (header in slice 0) so that free finds it by the same arithmetic.
// Any thread may free a huge block directly: it has no owner and no free
// list. A freed mapping up to the cache's cap stays mapped for a while
// (the huge cache, below) so that the next huge block of its size takes it
// with its pages resident; the rest are unmapped at once.
//
// A block over-aligned to kSegmentSize or more cannot sit in its header's
// chunk; it starts exactly one chunk above the header instead, and the
// segment map marks its chunk kMapHugeAlignedBlock.
//
// A mapping ends where its block does (HugeBlockBytes), not at the end of a
// 4 MiB chunk: until 2026-12-05 a 4 MiB block mapped 8 MiB, and a program
// under an address-space limit (`ulimit -v`, RLIMIT_AS) got half as many
// bytes of 4 MiB blocks as under glibc, mimalloc or jemalloc. The rest of the
// last chunk is left to the kernel; a pointer into it that reaches ferry
// (the first chunk is in the segment map) finds the header and is reported
// as foreign (FreeHuge, HugeUsableSize), never read.
#include <errno.h>

#include <atomic>
#include <cstdint>
#include <cstring>

#include "allocator/heap.h"
#include "allocator/segment.h"
#include "common/diag.h"
#include "common/options.h"
#include "common/os.h"
#include "common/spin_lock.h"
#include "common/stats.h"
#include "common/valgrind.h"
#include "reclaimer/pool.h"

namespace ferry {

namespace {

// The huge cache. A program that allocates, fills and frees a buffer of a
// few MiB over and over paid the kernel a fresh mapping and a page fault a
// page each time: 3.2 ms a round for 5 MiB, ten times glibc, mimalloc,
// jemalloc and tcmalloc, which all keep such memory (perf/RESULTS.md,
// 2026-12-03). Freed mappings now wait here, mapped, for a block that needs
// as many bytes of mapping or up to half as many, or for a smaller block
// that takes one cut down to it (TakeCachedMapping); they
// go back to the OS once they have waited EmptySegmentKeepMs (the
// housekeeping, or the next huge allocation or free), at once on
// ferry_collect or where the address space runs out, and the oldest first
// when the cache is full. Where reclaimer threads give back what has
// waited, it holds as much as the program holds in huge blocks now, its
// own working set: four threads that churned huge blocks of 2-16 MiB,
// freeing each other's, took 27 s with 32 MiB, most of it the kernel
// faulting fresh mappings in, and 14-15 s with that (glibc 3.5-4.0 s;
// perf/RESULTS.md, 2026-12-05). Where none does (a single-threaded
// program, FERRY_RECLAIMERS=0, the oneTBB backend) what waits stays until
// the program's next huge allocation or free, or ferry_collect: there it
// holds 32 MiB of blocks (and a header), as glibc's largest mmap
// threshold, or the program's huge bytes if that is more where it has
// only ever run one thread, so that an idle program keeps at most as much
// again as it holds (glibc's heap keeps the chunks freed between live
// ones, too), and half of them where it has run more: there a free past
// that cap asks for the pool (AskForThePoolIfSeveralThreads), whose timer
// gives back what idles. One thread replacing twenty buffers of 5-25 MiB
// at random (mimalloc-bench's malloc-large) took 5.0 s with 32 MiB alone,
// 2.8 with half its huge bytes (peak RSS 466 and 542 MiB; glibc 2.0 s and
// 534 MiB; perf/RESULTS.md, 2026-12-05); at scale 0.3 on 2026-12-06 3.0 s
// with half and 2.6 with all, peak RSS 461 MiB both (tcmalloc 1.7 s, 477).
constexpr size_t kHugeCacheSlots = 64;
constexpr size_t kHugeCacheMaxBytes = (size_t{32} << 20) + kSliceSize;

size_t HugeCacheCapBytes() {
  int64_t live = g_counters.huge_bytes_live.load(std::memory_order_relaxed);
  if (!PoolHousekeepsOnATimer() && ProgramRanSeveralThreads()) live /= 2;
  return live > static_cast<int64_t>(kHugeCacheMaxBytes) ? static_cast<size_t>(live) : kHugeCacheMaxBytes;
}

// Whether the cache may hold more than 32 MiB now (HugeCacheCapBytes):
// then a mapping is cut down to its block when taken (TakeCachedMapping),
// and so is one that realloc shrinks (CacheRestOfShrunkMapping), their
// rest waiting on its own; in the small cache a block takes its mapping
// whole.
bool HugeCacheIsLarge() {
  return PoolHousekeepsOnATimer() || HugeCacheCapBytes() > kHugeCacheMaxBytes;
}

struct CachedMapping {
  void* mapping;  // nullptr: a free slot
  size_t size;
  uint64_t freed_ms;
};

// A leaf lock: nothing else is taken under it, and no system call is made
// under it (mappings leave the cache first, then go back to the OS).
ForkHeldSpinLock g_huge_cache_lock;
CachedMapping g_huge_cache[kHugeCacheSlots];
size_t g_huge_cache_bytes;  // under the lock
// Lets the housekeeping pass by an empty cache without the lock.
std::atomic<bool> g_huge_cache_any{false};

uint64_t HugeCacheKeepMs() {
  return EmptySegmentKeepMs(static_cast<uint64_t>(CurrentOptions().purge_delay_ms));
}

// The waiting mapping freed longest ago; nullptr when none waits. The
// caller holds the lock.
CachedMapping* OldestSlotLocked() {
  CachedMapping* oldest = nullptr;
  for (CachedMapping& slot : g_huge_cache) {
    if (slot.mapping != nullptr && (oldest == nullptr || slot.freed_ms < oldest->freed_ms)) oldest = &slot;
  }
  return oldest;
}

// Takes slot `slot` out of the cache; the caller holds the lock.
CachedMapping TakeSlotLocked(CachedMapping& slot) {
  CachedMapping taken = slot;
  slot.mapping = nullptr;
  g_huge_cache_bytes -= taken.size;
  CounterAdd(g_counters.huge_bytes_cached, -static_cast<int64_t>(taken.size));
  return taken;
}

void UpdateAnyLocked() { g_huge_cache_any.store(g_huge_cache_bytes != 0, std::memory_order_relaxed); }

// Gives [mapping, mapping + size) of a huge mapping back to the OS and
// counts it (bytes_unmapped). Not for the room an over-aligned block's
// fresh reservation had around it, which no block ever used.
void UnmapAndCount(void* mapping, size_t size) {
  OsRelease(mapping, size);
  CounterAdd(Counter::bytes_unmapped, static_cast<int64_t>(size));
}

// Moves the slots that have waited `keep_ms` (all, for 0) into `out`;
// returns how many. The caller holds the lock.
size_t TakeExpiredLocked(uint64_t now_ms, uint64_t keep_ms, CachedMapping* out) {
  size_t taken = 0;
  for (CachedMapping& slot : g_huge_cache) {
    // A slot may be newer than now_ms: its freeing thread read the clock
    // after the caller did.
    if (slot.mapping != nullptr && now_ms >= slot.freed_ms && now_ms - slot.freed_ms >= keep_ms) {
      out[taken++] = TakeSlotLocked(slot);
    }
  }
  return taken;
}

void ReleaseTaken(const CachedMapping* taken, size_t count) {
  for (size_t k = 0; k < count; ++k) UnmapAndCount(taken[k].mapping, taken[k].size);
}

// Whether a block that needs `size` bytes of mapping may take a waiting
// mapping of `mapping_size`: up to twice as large while the mapping is 32
// MiB or less, else an eighth larger at most (the rounding of
// HugeBlockBytes). Twice as large without a bound, a 130 MiB block took a
// 208 MiB mapping (a review's program).
bool SlackIsBounded(size_t mapping_size, size_t size) {
  if (mapping_size <= kHugeCacheMaxBytes) return mapping_size / 2 <= size;
  return mapping_size - size <= size / 8;
}

void KeepInCache(void* mapping, size_t size, size_t cap);
void InsertInCache(const CachedMapping& entry, size_t cap);

// Where the rest of a mapping of `mapping_size` bytes past `end` (a
// block's end) may wait in the cache on its own: from the next 4 MiB
// boundary, where a mapping may start, if a huge block's mapping could use
// what lies past it; 0 where nothing is worth keeping.
size_t RestToKeepFrom(size_t end, size_t mapping_size) {
  const size_t split = AlignUp(end, kSegmentSize);
  return split < mapping_size && mapping_size - split > kLargeMax + kSliceSize ? split : 0;
}

// A waiting mapping of `old_size` bytes, out of the cache, grown to `size`
// (larger): in place where the kernel can, else moved whole onto a new
// aligned range (mremap moves page tables, not bytes). Its pages stay as
// they were and only the added ones are new: with mappings cut down to
// their blocks (TakeCachedMapping), a block larger than every waiting
// mapping was a fresh one, every page of it faulted in. nullptr, the
// mapping given back, where the kernel refuses.
void* GrowTakenMapping(void* mapping, size_t old_size, size_t size) {
  bool no_room = false;
  void* grown = OsResizeInPlace(mapping, old_size, size, &no_room);
  if (grown == nullptr && no_room) {
    void* target = OsReserveMakingRoom(size, kSegmentSize, /*overcommit_check=*/true);
    if (target != nullptr) grown = OsMoveOnto(mapping, old_size, size, target);  // gives target back on failure
  }
  if (grown == nullptr) UnmapAndCount(mapping, old_size);
  return grown;
}

// The part of a taken mapping past its block's `size` bytes, up to `keep`,
// stays with the block rather than going back to the OS: up to the next 4
// MiB boundary where the rest waits in the cache on its own, all of it
// where the rest is too small to (it is at most what SlackIsBounded let
// the block take). Unmapped, it left a hole between the block and the
// rest, so that the two could never be one mapping again (KeepInCache
// merges neighbours), and the next larger block took a fresh mapping or
// grew one: one thread replacing twenty buffers of 5-25 MiB (the `large`
// workload, mimalloc-bench's malloc-large) faulted in 2.5 MiB a round,
// tcmalloc, which coalesces its freed spans, 0.3 (perf/RESULTS.md,
// 2026-12-05). A quarter of the block's size stays resident, its pages as
// the last block left them; the rest is decommitted. With an eighth (the
// rounding HugeBlockBytes allows a fresh block), until 2026-12-06, the
// next larger block to take the mapping faulted those pages in again:
// `large` took 5.4 s, 3.5 with a quarter, 3.0 with all of it resident
// (tcmalloc 5.2), peak RSS 481, 495 and 507 MiB (tcmalloc 497;
// perf/RESULTS.md). The tail is not the block's to use: its usable size
// stays its own. Where a pool's housekeeping ticks, the rest is decommitted
// only once it has waited as long as a freed mapping would
// (KeepTailResidentForAWhile): a block that realloc grows into the tail
// soon after finds its pages resident.
// Returns the offset in the mapping from which the tail is to be
// decommitted; `keep` when nothing is.
size_t ResidentTailOfTakenMapping(size_t size, size_t keep) {
  const size_t resident_end = AlignUp(size + size / 4, OsPageSize());
  return resident_end < keep ? resident_end : keep;
}

// The table of tails left resident (ResidentTailOfTakenMapping) until the
// housekeeping decommits them. A program that allocated 3 MiB and grew it
// to 5 MiB with realloc (the soak's objects), in threads that took the
// mappings of each other's freed 5 MiB blocks, had the tail past 3.83 MiB
// decommitted when the block took its mapping and faulted in again by the
// growth a moment later: 1.3 MiB a block, 70 k of threadchurn's 97 k page
// faults (`--scale quick`, 5 alternating runs: 1.67 s, 0.75 with the tails
// left resident; mimalloc 0.86, tcmalloc 0.61; perf/RESULTS.md,
// 2026-12-07). A leaf lock; a tail is decommitted under it, one a hold
// (at most 4 MiB, a few hundred microseconds), so that a free or realloc
// of the block, which takes its tail out first (TakeResidentTail), never
// sees its mapping change under a decommit, nor a decommit reach a mapping
// reused since.
struct ResidentTail {
  Segment* segment;  // nullptr: a free slot
  uintptr_t start;
  uintptr_t end;
  uint64_t since_ms;
};
constexpr size_t kResidentTailSlots = 64;
ForkHeldSpinLock g_resident_tails_lock;
ResidentTail g_resident_tails[kResidentTailSlots];
std::atomic<uint32_t> g_resident_tails_count{0};

// Decommits the tails that have waited `keep_ms` (all, for 0), one a hold
// of the lock: a ferry_collect with the table full decommitted up to 256
// MiB in one, while every huge allocation waited for it. The lock is taken
// again only for a tail to decommit (every huge allocation and free comes
// here while one waits).
void DecommitIdleResidentTails(uint64_t now_ms, uint64_t keep_ms) {
  size_t k = 0;
  while (g_resident_tails_count.load(std::memory_order_relaxed) != 0) {
    SpinLockHolder hold(&g_resident_tails_lock);
    for (; k < kResidentTailSlots; ++k) {
      const ResidentTail& slot = g_resident_tails[k];
      if (slot.segment == nullptr) continue;
      if (keep_ms == 0 || (now_ms >= slot.since_ms && now_ms - slot.since_ms >= keep_ms)) break;
    }
    if (k == kResidentTailSlots) return;
    ResidentTail& slot = g_resident_tails[k++];
    OsDecommit(reinterpret_cast<void*>(slot.start), slot.end - slot.start);
    slot.segment->tail_resident.store(false, std::memory_order_release);
    slot.segment = nullptr;
    g_resident_tails_count.fetch_sub(1, std::memory_order_relaxed);
  }
}

// [start, end) of the block's mapping, past its usable size: waits in the
// table for the housekeeping to decommit it (DecommitIdleResidentTails)
// once it has waited from `since_ms` as long as a freed mapping waits in
// the cache. Decommitted at once where no housekeeping ticks (then nothing
// would decommit it but the block's free) or the table is full.
void KeepTailResidentForAWhile(Segment* segment, uintptr_t start, uintptr_t end, uint64_t since_ms) {
  if (start >= end) return;
  if (PoolHousekeepsOnATimer()) {
    bool kept = false;
    {
      SpinLockHolder hold(&g_resident_tails_lock);
      for (ResidentTail& slot : g_resident_tails) {
        if (slot.segment != nullptr) continue;
        slot = ResidentTail{segment, start, end, since_ms};
        segment->tail_resident.store(true, std::memory_order_relaxed);
        g_resident_tails_count.fetch_add(1, std::memory_order_relaxed);
        kept = true;
        break;
      }
    }
    if (kept) {
      // An idle pool may have stopped since it was asked, after its last
      // housekeeping run took the lock (a review): then no run would come.
      if (!PoolHousekeepsOnATimer()) DecommitIdleResidentTails(0, 0);
      return;
    }
  }
  OsDecommit(reinterpret_cast<void*>(start), end - start);
}

// The block's tail taken out of the table, where it waits there, into
// *tail: nothing decommits it from now on. Before anything changes the
// block's mapping (free, realloc). The block's own thread (or one the
// program synchronised with) set the flag before the block was handed out.
bool TakeResidentTail(Segment* segment, ResidentTail* tail) {
  // Acquire: where the housekeeping cleared it, its decommit is done.
  if (!segment->tail_resident.load(std::memory_order_acquire)) return false;
  SpinLockHolder hold(&g_resident_tails_lock);
  for (ResidentTail& slot : g_resident_tails) {
    if (slot.segment != segment) continue;
    *tail = slot;
    slot.segment = nullptr;
    segment->tail_resident.store(false, std::memory_order_relaxed);
    g_resident_tails_count.fetch_sub(1, std::memory_order_relaxed);
    return true;
  }
  return false;
}

// A mapping of at least `size` bytes from the cache, its pages as the last
// block left them, its size in *taken_size and how much of it the block
// may use in *usable_size, and in *resident_tail_from where the part of it
// to be decommitted starts (ResidentTailOfTakenMapping; *taken_size where
// none is); nullptr when none waits.
// The smallest waiting mapping that SlackIsBounded allows is taken (the
// newest of equals). Where the cache is the small one (!HugeCacheIsLarge)
// it is taken whole, the rest its block's usable size, as a block
// in whole 4 MiB segments had before 2026-12-05: taking only a mapping of
// exactly `size` once mappings stopped being whole segments, a buffer of
// varying size (4-8 MiB, which had all rounded to 8) found one a third as
// often and took 11 times as long a round, and cutting the mapping down to
// `size` lost the pages the next larger block would have reused (6 times
// as long). Where the cache may hold more, the rest goes back to the OS
// (one munmap) or waits in the cache on its own: blocks that each kept up to
// twice their size held an idle program at twice its live data, past
// malloc_trim (a review's program: 312 MiB resident for 156 asked for,
// 162 now; glibc 157).
void* TakeCachedMapping(size_t size, size_t* taken_size, size_t* usable_size, size_t* resident_tail_from) {
  if (!g_huge_cache_any.load(std::memory_order_relaxed)) return nullptr;
  const bool large_cache = HugeCacheIsLarge();
  CachedMapping taken;
  bool grow = false;
  bool cut_larger = false;  // a mapping larger than SlackIsBounded allows
  {
    SpinLockHolder hold(&g_huge_cache_lock);
    CachedMapping* best = nullptr;
    for (CachedMapping& slot : g_huge_cache) {
      if (slot.mapping == nullptr || slot.size < size || !SlackIsBounded(slot.size, size)) continue;
      if (best == nullptr || slot.size < best->size ||
          (slot.size == best->size && slot.freed_ms >= best->freed_ms)) {
        best = &slot;
      }
    }
    if (best == nullptr) {
      // None whose slack is bounded: the smallest that reaches past the
      // first 4 MiB boundary after the block is cut there, the rest waiting
      // on its own (or going back where it is too small to serve a huge
      // block), so that the block's pages are resident ones rather than
      // fresh ones faulted in while the larger mapping waits beside them.
      // `sort -S 16M` frees its 18 MiB buffer and then takes 2.3 MiB ones
      // for its merge: 35 MB peak RSS until 2026-12-06, glibc 18.
      for (CachedMapping& slot : g_huge_cache) {
        if (slot.mapping == nullptr || slot.size <= AlignUp(size, kSegmentSize)) continue;
        if (best == nullptr || slot.size < best->size) best = &slot;
      }
      cut_larger = best != nullptr;
    }
    if (best == nullptr) {
      // None large enough: the largest of at least half the size grows to
      // it (GrowTakenMapping), so that only the added pages are new.
      for (CachedMapping& slot : g_huge_cache) {
        if (slot.mapping == nullptr || slot.size >= size || slot.size < size / 2) continue;
        if (best == nullptr || slot.size > best->size) best = &slot;
      }
      if (best == nullptr) return nullptr;
      grow = true;
    }
    taken = TakeSlotLocked(*best);
    UpdateAnyLocked();
  }
  if (grow) {
    void* grown = GrowTakenMapping(taken.mapping, taken.size, size);
    if (grown != nullptr) *taken_size = *usable_size = *resident_tail_from = size;
    return grown;
  }
  size_t keep = taken.size;
  *usable_size = keep;
  *resident_tail_from = keep;
  if ((large_cache || cut_larger) && keep > size) {
    *usable_size = size;
    // The rest past the next 4 MiB boundary waits in the cache on its own
    // (RestToKeepFrom), its pages resident for the next block.
    char* const base = static_cast<char*>(taken.mapping);
    // Not past the cap, which may have fallen since the mapping was kept
    // (a review: a 576 MiB mapping cached while 600 MiB were live, then
    // cut for a 512 MiB block once they were freed, left 60 MiB against a
    // cap of 32, and KeepInCache found no slot to give back).
    size_t split = RestToKeepFrom(size, taken.size);
    const size_t cap = HugeCacheCapBytes();
    const bool rest_waits = split != 0 && taken.size - split <= cap;
    if (rest_waits) {
      KeepInCache(base + split, taken.size - split, cap);
    } else if (cut_larger) {
      // Not left with the block: its slack stays under 4 MiB.
      split = AlignUp(size, kSegmentSize);
      UnmapAndCount(base + split, taken.size - split);
    }
    keep = rest_waits || cut_larger ? split : taken.size;
    if (OsAddressSpaceLimit() != SIZE_MAX) {
      // Under a limit the block's mapping ends where the block does, as a
      // fresh one's (the address space is what runs out). Asked here, not
      // as of the last segment taken (AddressSpaceLimit): a program of
      // huge blocks only may never take one.
      if (keep > size) UnmapAndCount(base + size, keep - size);
      keep = size;
    }
    *resident_tail_from = ResidentTailOfTakenMapping(size, keep);
  }
  *taken_size = keep;
  return taken.mapping;
}

// Keeps a freed huge block's mapping for reuse; false when it is not to be
// kept (too big, or the kernel would not make it plain read-write memory
// again): the caller unmaps it. `block`, `block_size`: where the program's
// block lay, when the mapping starts with its header's chunk, which the
// program never held; nullptr for a piece that was all the program's.
bool CacheHugeMapping(void* mapping, size_t size, void* block = nullptr, size_t block_size = 0) {
  // Under memcheck every huge block is a fresh mapping, as valgrind expects.
  if (kValgrind) return false;
  const size_t cap = HugeCacheCapBytes();
  if (size > cap) {
    AskForThePoolIfSeveralThreads();
    return false;
  }
  // The program may have changed what it held (AHugeBlockThatTheProgramSplitIsCopied,
  // api_test.cc): the next block must not inherit a read-only page, nor a
  // file the program mapped over part of its block (the next block's writes
  // went to the file), nor locked pages or a protection key. The reset
  // undoes protections and fork flags; whatever else is left splits the
  // mapping, and then it goes back to the OS as glibc's would.
  // Whatever the program set on part of its block splits the mapping but
  // guard regions, and it cannot have set anything on the whole mapping,
  // whose first chunk holds the header: a mapping that is still one needs
  // only its guards removed, and only from the block. The reset's mprotect
  // and two madvise calls, and a mincore and a guard removal over the
  // header's chunk (its pages past the header are untouched, so absent,
  // unless FERRY_HUGE_PAGES put them in one huge page with the block's
  // start), were 5 of the 9 system calls of every such free, 3 of them
  // under the mmap lock held for writing; four threads freeing 64 KiB-4
  // MiB blocks spent more than half their time in them (cliff pattern 3,
  // perf/RESULTS.md, 2026-12-07).
  if (block != nullptr && OsIsOneMapping(mapping, size)) {
    if (!OsRemoveGuardRegions(block, block_size)) return false;
  } else if (!OsResetForReuse(mapping, size) || !OsIsOneMapping(mapping, size)) {
    return false;
  }
  // The lock is held across fork() from here on: a program whose threads
  // only ever allocate huge blocks has no heap that would have registered
  // the handlers.
  EnsureForkHandlersRegistered();
  KeepInCache(mapping, size, cap);
  return true;
}

// Waiting mappings that end where [*mapping, + *size) starts or start where
// it ends, pieces of one mapping that a block took part of
// (TakeCachedMapping): taken out of the cache and joined to it, so that a
// block as large as the whole finds it again. Only where the kernel holds
// the joined range as one mapping (the program may have split it while a
// piece was a block, and two mappings made apart may lie side by side),
// and within `cap`; otherwise each goes back as it was.
void MergeWithWaitingNeighbours(void** mapping, size_t* size, size_t cap) {
  const uintptr_t start = reinterpret_cast<uintptr_t>(*mapping);
  CachedMapping before{}, after{};
  {
    SpinLockHolder hold(&g_huge_cache_lock);
    for (CachedMapping& slot : g_huge_cache) {
      if (slot.mapping == nullptr) continue;
      const uintptr_t base = reinterpret_cast<uintptr_t>(slot.mapping);
      if (before.mapping == nullptr && base + slot.size == start && slot.size + *size + after.size <= cap) {
        before = TakeSlotLocked(slot);
      } else if (after.mapping == nullptr && start + *size == base &&
                 before.size + *size + slot.size <= cap) {
        after = TakeSlotLocked(slot);
      }
    }
    UpdateAnyLocked();
  }
  if (before.mapping == nullptr && after.mapping == nullptr) return;
  void* const joined = before.mapping != nullptr ? before.mapping : *mapping;
  const size_t joined_size = before.size + *size + after.size;
  if (OsIsOneMapping(joined, joined_size)) {
    *mapping = joined;
    *size = joined_size;
    return;
  }
  // Each as it was, its wait unchanged: stamped anew (until 2026-12-05), a
  // piece next to blocks freed again and again never aged out.
  if (before.mapping != nullptr) InsertInCache(before, cap);
  if (after.mapping != nullptr) InsertInCache(after, cap);
}

// Puts `entry` in the cache, making room under `cap` (no smaller than its
// size) by giving back the oldest, and gives back what has waited its time.
void InsertInCache(const CachedMapping& entry, size_t cap) {
  const size_t size = entry.size;
  FERRY_CHECK(size <= cap);
  const uint64_t keep_ms = HugeCacheKeepMs();  // not under the lock: it may initialise
  const uint64_t now_ms = OsMonotonicMs();
  CachedMapping out[kHugeCacheSlots];
  size_t released;
  bool outgrown;
  {
    SpinLockHolder hold(&g_huge_cache_lock);
    released = TakeExpiredLocked(now_ms, keep_ms, out);
    outgrown = g_huge_cache_bytes + size > cap;
    // Room: the oldest go first.
    CachedMapping* free_slot = nullptr;
    for (;;) {
      free_slot = nullptr;
      for (CachedMapping& slot : g_huge_cache) {
        if (slot.mapping == nullptr) {
          free_slot = &slot;
          break;
        }
      }
      if (free_slot != nullptr && g_huge_cache_bytes + size <= cap) break;
      out[released++] = TakeSlotLocked(*OldestSlotLocked());  // one is there: size <= the cap
    }
    *free_slot = entry;
    g_huge_cache_bytes += size;
    CounterAdd(g_counters.huge_bytes_cached, static_cast<int64_t>(size));
    UpdateAnyLocked();
  }
  ReleaseTaken(out, released);
  if (outgrown) AskForThePoolIfSeveralThreads();
}

// Puts a mapping that may be reused (CacheHugeMapping's checks passed, for
// it or for the mapping it was cut from) in the cache, joined to the
// pieces waiting beside it where it can be, waiting from now.
void KeepInCache(void* mapping, size_t size, size_t cap) {
  MergeWithWaitingNeighbours(&mapping, &size, cap);
  InsertInCache(CachedMapping{mapping, size, OsMonotonicMs()}, cap);
}

}  // namespace

void ReleaseIdleHugeMappings(uint64_t now_ms, bool urgent) {
  const uint64_t keep_ms = urgent ? 0 : HugeCacheKeepMs();
  DecommitIdleResidentTails(now_ms, keep_ms);
  if (!g_huge_cache_any.load(std::memory_order_relaxed)) return;
  CachedMapping out[kHugeCacheSlots];
  size_t released;
  {
    SpinLockHolder hold(&g_huge_cache_lock);
    released = TakeExpiredLocked(now_ms, keep_ms, out);
    UpdateAnyLocked();
  }
  ReleaseTaken(out, released);
}

bool GiveBackHugeCacheForRoom(size_t size) {
  // A request no release could serve (more than RAM and swap, or than
  // RLIMIT_AS) must not cost the cache: a program that probed for a big
  // buffer once a round lost its whole cache each time (a review's
  // program: 10.1 ms a round against 0.22).
  if (!g_huge_cache_any.load(std::memory_order_relaxed) || !OsReservationMayFitAfterRelease(size)) return false;
  ReleaseIdleHugeMappings(OsMonotonicMs(), /*urgent=*/true);
  return true;
}

void* OsReserveMakingRoom(size_t size, size_t alignment, bool overcommit_check) {
  void* mapping = OsReserve(size, alignment, overcommit_check);
  if (mapping == nullptr && GiveBackHugeCacheForRoom(size)) mapping = OsReserve(size, alignment, overcommit_check);
  // Then the free segments' address space, for a huge block's mapping only
  // (callers that hold no lock and are in no SegmentReadWindow; a heap's
  // own page-sized reservation in CreateHeap is not one of them).
  if (mapping == nullptr && alignment == kSegmentSize && OsReservationMayFitAfterRelease(size) &&
      MakeRoomInAddressSpace(size)) {
    mapping = OsReserve(size, alignment, overcommit_check);
  }
  // A huge block's mapping has entries in the segment map.
  if (mapping != nullptr && alignment == kSegmentSize && !SegmentMapCommit(reinterpret_cast<uintptr_t>(mapping), size)) {
    OsRelease(mapping, size);
    return nullptr;
  }
  return mapping;
}

namespace {

// Gives back the mappings freed longest ago until the cache holds `cap`
// bytes or less.
void TrimHugeCacheTo(size_t cap) {
  if (!g_huge_cache_any.load(std::memory_order_relaxed)) return;
  CachedMapping out[kHugeCacheSlots];
  size_t released = 0;
  {
    SpinLockHolder hold(&g_huge_cache_lock);
    while (g_huge_cache_bytes > cap) out[released++] = TakeSlotLocked(*OldestSlotLocked());
    UpdateAnyLocked();
  }
  ReleaseTaken(out, released);
}

// Where no reclaimer ticks, the cap falls with the program's huge bytes
// (HugeCacheCapBytes) and nothing but its next huge call gives back what
// waits: so a free or a shrink that lowers the cap applies it at once. A
// review's program freed ten 100 MiB blocks and kept 104 MiB of them
// while idle, and one that shrank a 1 GiB block to 5 MiB by realloc and
// freed another kept the first one's 1016 MiB rest (2026-12-05).
void TrimHugeCacheToCapWithoutPool() {
  if (!PoolHousekeepsOnATimer()) TrimHugeCacheTo(HugeCacheCapBytes());
}

}  // namespace

void TrimHugeCacheInChild() { TrimHugeCacheTo(kHugeCacheMaxBytes); }

namespace {

// The starts of the last huge blocks freed, for diagnostics only: a second
// free of one whose mapping went back to the OS at once (too large for the
// cache, aligned to 4 MiB or more, under memcheck) or after its wait was
// reported as a pointer ferry never returned.
constexpr uint32_t kRecentHugeFrees = 64;
std::atomic<uintptr_t> g_recent_huge_frees[kRecentHugeFrees];
std::atomic<uint32_t> g_recent_huge_next{0};

void RememberHugeFree(uintptr_t start) {
  const uint32_t k = g_recent_huge_next.fetch_add(1, std::memory_order_relaxed) % kRecentHugeFrees;
  g_recent_huge_frees[k].store(start, std::memory_order_relaxed);
}

bool FreedRecently(uintptr_t address) {
  for (const auto& start : g_recent_huge_frees) {
    if (start.load(std::memory_order_relaxed) == address) return true;
  }
  return false;
}

// Whether `address` lies in the mapping of a freed huge block that the
// huge cache still holds (the segment map no longer knows it): at that
// block's start, or elsewhere in it.
FreedHugeHit FindInHugeCache(uintptr_t address) {
  if (!g_huge_cache_any.load(std::memory_order_relaxed)) return FreedHugeHit::kNone;
  SpinLockHolder hold(&g_huge_cache_lock);
  for (const CachedMapping& slot : g_huge_cache) {
    const uintptr_t base = reinterpret_cast<uintptr_t>(slot.mapping);
    if (slot.mapping == nullptr || address < base || address - base >= slot.size) continue;
    // Mapped while it is in the cache (and it cannot leave it while the
    // lock is held). A block started a slice or more into a 4 MiB chunk
    // of it, whose header is as that block left it: the mapping's first,
    // or the first of a piece joined to the pieces below it
    // (MergeWithWaitingNeighbours). Elsewhere the "header" may be anything
    // a block wrote, so only the record a block start would have is read,
    // never a link from it.
    const uintptr_t chunk = address & ~(kSegmentSize - 1);
    const uintptr_t offset = address - chunk;
    if (chunk >= base && offset >= kSliceSize && offset % kSliceSize == 0) {
      const Page* page = &reinterpret_cast<const Segment*>(chunk)->pages[offset >> kSliceShift];
      if (page->kind == PageKind::kHuge && page->start == address) return FreedHugeHit::kBlockStart;
    }
    return FreedHugeHit::kInside;
  }
  return FreedHugeHit::kNone;
}

}  // namespace

FreedHugeHit FindFreedHuge(uintptr_t address) {
  const FreedHugeHit hit = FindInHugeCache(address);
  return hit == FreedHugeHit::kNone && FreedRecently(address) ? FreedHugeHit::kBlockStart : hit;
}

namespace {

// FERRY_HUGE_PAGES=1: a huge block's fresh mapping asks for transparent
// huge pages. The advice stays with the mapping, and so with its pieces in
// the cache and with what realloc grows or moves, so a fresh mapping is the
// only one to advise. On this project's machine (a VM; THP on `madvise`) a
// 4 KiB fault cost about 11 us: 12 MiB written fresh took 33 ms, 1 ms with
// huge pages, 1 ms resident; one thread replacing twenty buffers of 5-25
// MiB (`large`, scale 0.3) took 2.7-2.9 s, 1.8-1.9 with the advice
// (perf/RESULTS.md, 2026-12-06). Not the default: every block then holds at
// least 2 MiB resident, since the header's first write brings in the huge
// page it shares with the block's start (100 calloc'd blocks of 3 MiB, never
// touched: 200 MB resident, 2.2 without), a block that a program touches
// here and there holds 2 MiB for each page it touches, and the kernel may
// compact memory in the fault to find a huge page; glibc
// (glibc.malloc.hugetlb), mimalloc and jemalloc leave it off by default too.
// The whole mapping gets the advice, header included: advised from its
// first 2 MiB boundary on, the mapping was two kernel mappings, which the
// cache refuses (OsIsOneMapping), and `large` took 4.7-5.0 s, not 1.2-1.7.
void AdviseHugePagesIfAsked(uintptr_t start, uintptr_t end) {
  if (CurrentOptions().huge_pages != 0) (void)OsAdviseHugePages(reinterpret_cast<void*>(start), end - start);
}

}  // namespace

void HugeCacheLockForFork() {
  g_huge_cache_lock.LockForFork();
  g_resident_tails_lock.LockForFork();
}
void HugeCacheUnlockAfterFork() {
  g_resident_tails_lock.UnlockAfterFork();
  g_huge_cache_lock.UnlockAfterFork();
}

bool HugeTailsWaitResident() { return g_resident_tails_count.load(std::memory_order_relaxed) != 0; }

// The child has no reclaimer to decommit the tails, and the blocks' headers
// are not to be written: a range the program marked MADV_DONTFORK or
// MADV_WIPEONFORK may hold one (a review). Their flags may read true still
// (TakeResidentTail then finds no slot). Decommitting a tail the child
// lacks fails harmlessly.
void ForgetResidentTailsInChild() {
  for (ResidentTail& slot : g_resident_tails) {
    if (slot.segment == nullptr) continue;
    OsDecommit(reinterpret_cast<void*>(slot.start), slot.end - slot.start);
    slot.segment = nullptr;
  }
  g_resident_tails_count.store(0, std::memory_order_relaxed);
}

size_t HugeBlockBytes(size_t n) {
  const size_t bytes = AlignUp(n == 0 ? 1 : n, OsPageSize());
  const size_t step = (size_t{1} << Log2Floor(bytes)) / 8;
  return step > OsPageSize() ? AlignUp(bytes, step) : bytes;
}

void* AllocateHuge(size_t n, size_t alignment, bool may_reuse, bool* reused) {
  if (n > (size_t{1} << 46) || alignment > (size_t{1} << 40)) {
    errno = ENOMEM;
    return nullptr;
  }
  CountThisThread();
  PoolMaybeStartUnlessExiting();  // asked for by a free (CacheHugeMapping)
  const size_t block_bytes = HugeBlockBytes(n);
  Segment* segment;
  Page* page;
  void* mapping;
  size_t mapping_size;
  size_t usable_size;  // of the mapping, from its start: the block's end
  size_t resident_tail_from = 0;  // of the mapping: where its tail to decommit starts
  uintptr_t block;
  if (alignment < kSegmentSize) {
    const size_t offset = alignment > kSliceSize ? alignment : kSliceSize;
    mapping_size = offset + block_bytes;
    ReleaseIdleHugeMappings(OsMonotonicMs(), /*urgent=*/false);
    usable_size = resident_tail_from = mapping_size;
    mapping = may_reuse ? TakeCachedMapping(mapping_size, &mapping_size, &usable_size, &resident_tail_from) : nullptr;
    if (mapping != nullptr) {
      // As a fresh mapping's: the last block's header may have had its
      // page at another slice.
      memset(mapping, 0, sizeof(Segment));
      CounterAdd(Counter::huge_reused, 1);
      if (reused != nullptr) *reused = true;
    } else {
      mapping = OsReserveMakingRoom(mapping_size, kSegmentSize, /*overcommit_check=*/true);
      if (mapping != nullptr) {
        AdviseHugePagesIfAsked(reinterpret_cast<uintptr_t>(mapping),
                               reinterpret_cast<uintptr_t>(mapping) + mapping_size);
      }
    }
    if (mapping == nullptr) {
      errno = ENOMEM;
      return nullptr;
    }
    segment = static_cast<Segment*>(mapping);
    const size_t slice = offset / kSliceSize;
    page = &segment->pages[slice];
    block = reinterpret_cast<uintptr_t>(mapping) + offset;
    // Interior pointers within the first chunk find this page and are
    // rejected by the start check; further chunks are not in the map.
    for (size_t k = slice + 1; k < kSlicesPerSegment; ++k) {
      segment->pages[k].record_back = RecordBack(k - slice);
    }
    page->slice_count = static_cast<uint8_t>(kSlicesPerSegment - slice);
  } else {
    mapping_size = 2 * kSegmentSize + block_bytes + alignment;
    mapping = OsReserveMakingRoom(mapping_size, kSegmentSize, /*overcommit_check=*/true);
    if (mapping == nullptr) {
      errno = ENOMEM;
      return nullptr;
    }
    block = AlignUp(reinterpret_cast<uintptr_t>(mapping) + kSegmentSize, alignment);
    segment = reinterpret_cast<Segment*>(block - kSegmentSize);
    // Only the header's chunk and the block stay mapped: the rest was room
    // to find the alignment in. Kept, it was address space
    // and commit charge the size of the alignment (aligned_alloc(256 MiB,
    // 1 MiB) held 268 MiB), counted as usable, and copied by realloc, which
    // made it resident.
    const uintptr_t kept_start = reinterpret_cast<uintptr_t>(segment);
    const uintptr_t kept_end = block + block_bytes;
    const uintptr_t mapping_end = reinterpret_cast<uintptr_t>(mapping) + mapping_size;
    if (kept_start > reinterpret_cast<uintptr_t>(mapping)) {
      OsRelease(mapping, kept_start - reinterpret_cast<uintptr_t>(mapping));
    }
    if (mapping_end > kept_end) OsRelease(reinterpret_cast<void*>(kept_end), mapping_end - kept_end);
    // The block only: the header's chunk holds a few hundred bytes.
    AdviseHugePagesIfAsked(block, kept_end);
    mapping = segment;
    mapping_size = usable_size = resident_tail_from = kept_end - kept_start;
    page = &segment->pages[0];
    page->slice_count = 1;
  }
  VgHideMetadata(segment, sizeof(Segment));
  segment->kind = SegmentKind::kHuge;
  segment->mapping = mapping;
  segment->mapping_size = mapping_size;
  page->kind = PageKind::kHuge;
  page->start = block;
  page->block_size = reinterpret_cast<uintptr_t>(mapping) + usable_size - block;
  // After the header's reset above, which cleared tail_resident.
  KeepTailResidentForAWhile(segment, reinterpret_cast<uintptr_t>(mapping) + resident_tail_from,
                            reinterpret_cast<uintptr_t>(mapping) + mapping_size, OsMonotonicMs());
  if (alignment < kSegmentSize) {
    SegmentMapSet(reinterpret_cast<uintptr_t>(segment), kMapSegment);
  } else {
    SegmentMapSet(block, kMapHugeAlignedBlock);
  }
  CounterAdd(Counter::huge_allocs, 1);
  if (Verbose(1)) {
    DiagLine().Str("ferry: huge block ").Hex(block).Str(" of ").Dec(n).Str(" bytes mapped").WriteToStderr();
  }
  CounterAdd(g_counters.huge_bytes_live, static_cast<int64_t>(mapping_size));
  return reinterpret_cast<void*>(block);
}

// calloc's huge block. Up to 32 MiB (glibc's largest mmap threshold) it
// may take a waiting mapping, cleared here: a program that calloc'd 8 MiB,
// touched one page in 16 and freed it, 3000 times, took 6.1 s on fresh
// mappings, each touched page a fault (glibc and mimalloc, which reuse
// and clear, 0.44; perf/RESULTS.md, 2026-12-07), and a calloc'd block
// written whole faults in every page of a fresh mapping. A larger one is a
// fresh mapping, zero already, its pages resident only as the program
// touches them (a big sparse table).
void* AllocateHugeZeroed(size_t n) {
  bool reused = false;
  void* p = AllocateHuge(n, 0, /*may_reuse=*/n <= kHugeCacheMaxBytes, &reused);
  if (p != nullptr && reused) memset(p, 0, n);
  return p;
}

namespace {

// A pointer into the chunk of a huge block's header or block, but past the
// block's end (past its mapping, the kernel's to give to anyone, or in the
// tail the block keeps, ResidentTailOfTakenMapping): not ferry's to hand out.
[[noreturn]] FERRY_COLD void ReportBadHugePointer(const Page* page, uintptr_t address, const char* call) {
  FatalBadPointer(call, reinterpret_cast<const void*>(address),
                  address > page->start && address - page->start >= page->block_size
                      ? "pointer not allocated by ferry"
                      : "not the start of a block (interior pointer)");
}

}  // namespace

void FreeHuge(Segment* segment, Page* page, void* p, const char* call) {
  const uintptr_t address = reinterpret_cast<uintptr_t>(p);
  if (address != page->start) ReportBadHugePointer(page, address, call);
  if (segment->huge_freed.exchange(true, std::memory_order_acq_rel)) {
    FatalBadPointer(call, p, "double free (huge block already free)");
  }
  RememberHugeFree(address);
  ResidentTail tail;
  (void)TakeResidentTail(segment, &tail);  // its pages go to the cache with the mapping, or away
  const bool over_aligned = page == &segment->pages[0];
  SegmentMapSet(over_aligned ? address : reinterpret_cast<uintptr_t>(segment), kMapNone);
  CounterAdd(Counter::huge_frees, 1);
  CounterAdd(g_counters.huge_bytes_live, -static_cast<int64_t>(segment->mapping_size));
  CountThisThread();
  // Over-aligned blocks' mappings have a layout of their own: never cached.
  // A second free of a block whose mapping waits finds it out of the
  // segment map; FreeUnmapped then finds it here and reports a double free.
  if (!over_aligned && CacheHugeMapping(segment->mapping, segment->mapping_size, p, page->block_size)) return;
  UnmapAndCount(segment->mapping, segment->mapping_size);
  TrimHugeCacheToCapWithoutPool();
  // Where no pool ticks, huge frees and allocations are when the cache's
  // expired mappings go back (CacheHugeMapping does it for those it keeps).
  ReleaseIdleHugeMappings(OsMonotonicMs(), /*urgent=*/false);
}

namespace {

// A huge block's mapping shrunk from old_size to new_size by realloc, where
// the cache is the large one (HugeCacheIsLarge): the part past the next
// 4 MiB boundary (where a mapping may start) waits in the cache, its pages
// resident for the next block, as the rest of a taken mapping does
// (TakeCachedMapping), once the resets a freed mapping gets
// (CacheHugeMapping: the program may have changed it while it was a
// block). False when it is not kept: the caller shrinks the mapping as
// before. The part below the boundary goes back to the OS, unlike a taken
// mapping's (ResidentTailOfTakenMapping): kept, it cost an idle program RSS (16
// blocks shrunk from 15 to 5 MiB: 92 MiB after ferry_collect, 82 without)
// and bought nothing without copying growths into waiting mappings,
// which was tried and undone (perf/RESULTS.md, 2026-12-05 18:00).
bool CacheRestOfShrunkMapping(void* mapping, size_t old_size, size_t new_size) {
  if (!HugeCacheIsLarge()) return false;
  const size_t split = RestToKeepFrom(new_size, old_size);
  if (split == 0) return false;
  char* const base = static_cast<char*>(mapping);
  if (!CacheHugeMapping(base + split, old_size - split)) return false;
  if (split > new_size) UnmapAndCount(base + new_size, split - new_size);
  return true;
}

// A block's mapping of `mapping_size` bytes at `mapping`, to grow to
// `wanted`: where a piece waiting in the cache starts right where it ends
// and reaches that far, and the two are one kernel mapping (the piece is
// the rest of a mapping the block took, TakeCachedMapping, or of one that
// lay beside it), the block's mapping extends over the piece without
// moving, its pages as the cache kept them, up to the next 4 MiB boundary
// past `wanted`, from where the rest waits on (RestToKeepFrom). The new
// mapping size, or 0 where no such piece waits, where the rest would not
// fit the cache as it is now, or under a limit. A buffer appended to 4 KiB
// at a time up to 16 MiB, five times over, took the first 4 MiB of its last
// round's mapping, could not grow into the 12 MiB waiting right after it,
// and moved away each time, its growth faulted in afresh while those pages
// waited for nothing (cliff pattern 2, perf/RESULTS.md, 2026-12-07). Not
// under an address-space limit, where a block's mapping ends where the
// block does (TakeCachedMapping).
size_t JoinWaitingPieceAfter(void* mapping, size_t mapping_size, size_t wanted) {
  if (!g_huge_cache_any.load(std::memory_order_relaxed)) return 0;
  char* const base = static_cast<char*>(mapping);
  // Read before the piece is taken: the rest that waits on must fit it
  // (it may have fallen since the piece was kept; a review's program: 600
  // MiB cut for a 3 MiB block, then 700 MiB freed, failed the cache's
  // check when the block grew).
  const size_t cap = HugeCacheCapBytes();
  CachedMapping piece{};
  size_t split = 0;
  {
    SpinLockHolder hold(&g_huge_cache_lock);
    for (CachedMapping& slot : g_huge_cache) {
      if (slot.mapping != base + mapping_size || mapping_size + slot.size < wanted) continue;
      const size_t joined = mapping_size + slot.size;
      split = RestToKeepFrom(wanted, joined);
      if (split != 0 && joined - split > cap) break;
      piece = TakeSlotLocked(slot);
      break;
    }
    UpdateAnyLocked();
  }
  if (piece.mapping == nullptr) return 0;
  const size_t joined = mapping_size + piece.size;
  if (OsAddressSpaceLimit() != SIZE_MAX || !OsIsOneMapping(mapping, joined)) {
    // As it was, its wait unchanged, where the cache still has room for it.
    if (piece.size <= cap) {
      InsertInCache(piece, cap);
    } else {
      UnmapAndCount(piece.mapping, piece.size);
    }
    return 0;
  }
  if (split == 0) return joined;
  InsertInCache(CachedMapping{base + split, joined - split, piece.freed_ms}, cap);
  return split;
}

}  // namespace

// The huge block at `p` resized to hold n bytes (n > kLargeMax) without a
// copy: its mapping grows or shrinks in place, or, when something is mapped
// right after it, moves whole to a new aligned range (mremap moves the page
// tables, not the bytes: a buffer grown by 1 MiB steps to 256 MiB took
// about 6 s of copying and page faults, against 0.16-0.18 s under glibc,
// which does the same for its mmapped chunks). The header moves with the
// block and is fixed up. nullptr when the block is not a plain huge block
// (over-aligned ones keep the copying path) or the kernel refuses (the
// program split the mapping with mprotect or madvise, or the overcommit
// policy says no); the block is then as it was.
void* ReallocHuge(void* p, size_t n) {
  const uintptr_t address = reinterpret_cast<uintptr_t>(p);
  if (n > (size_t{1} << 46) || SegmentMapLookup(address) != kMapSegment) return nullptr;
  Segment* segment = SegmentOf(address);
  if (segment->kind != SegmentKind::kHuge) return nullptr;
  Page* page = PageOf(segment, address);
  if (address != page->start || page == &segment->pages[0]) return nullptr;
  const uintptr_t old_base = reinterpret_cast<uintptr_t>(segment->mapping);
  const size_t old_size = segment->mapping_size;
  const size_t offset = address - old_base;
  const size_t slice = static_cast<size_t>(page - segment->pages);
  const size_t new_size = offset + HugeBlockBytes(n);
  // Nothing decommits the tail under the block's growth, nor where a
  // shrink or a move puts it.
  ResidentTail tail;
  const bool tail_was_waiting = TakeResidentTail(segment, &tail);
  size_t held_size = old_size;
  size_t joined_size = 0;
  if (new_size > old_size) joined_size = JoinWaitingPieceAfter(segment->mapping, old_size, new_size);
  if (joined_size != 0) {
    CounterAdd(g_counters.huge_bytes_live, static_cast<int64_t>(joined_size - old_size));
    segment->mapping_size = held_size = joined_size;
  }
  if (new_size <= held_size && new_size >= offset + page->block_size) {
    // A growth the mapping already holds: a block keeps the tail of a
    // mapping it took (ResidentTailOfTakenMapping, or a smaller cache's mapping
    // taken whole). Cut at the new end (the shrink's path, until
    // 2026-12-05), it left a hole between the block and the rest that waits
    // in the cache after the tail, so the two could never join again.
    page->block_size = new_size - offset;
    const uintptr_t from = old_base + ResidentTailOfTakenMapping(new_size, held_size);
    if (joined_size != 0) {
      // Past a quarter of the block's size, the joined piece waits as its
      // tail, as a taken mapping's does (the old tail, below the growth's
      // end, is the block's now; its wait goes on).
      KeepTailResidentForAWhile(segment, from, old_base + held_size,
                                tail_was_waiting ? tail.since_ms : OsMonotonicMs());
    } else if (tail_was_waiting) {
      // What the growth left of it waits on, its wait unchanged.
      KeepTailResidentForAWhile(segment, from > tail.start ? from : tail.start, tail.end, tail.since_ms);
    }
    return p;
  }
  bool no_room = false;
  void* base = nullptr;
  if (new_size < old_size && CacheRestOfShrunkMapping(segment->mapping, old_size, new_size)) {
    base = segment->mapping;
  } else {
    base = OsResizeInPlace(segment->mapping, old_size, new_size, &no_room);
    if (base != nullptr && new_size < old_size) {
      CounterAdd(Counter::bytes_unmapped, static_cast<int64_t>(old_size - new_size));
    }
  }
  // Where the block stays as it was, so does its tail's wait.
  const auto unchanged = [&]() -> void* {
    if (tail_was_waiting) KeepTailResidentForAWhile(segment, tail.start, tail.end, tail.since_ms);
    return nullptr;
  };
  if (base == nullptr) {
    if (!no_room) return unchanged();
    void* target = OsReserveMakingRoom(new_size, kSegmentSize, /*overcommit_check=*/true);
    if (target == nullptr) return unchanged();
    // Out of the map while this thread still holds the old range: once the
    // move lets it go, another thread may map it and mark it its own.
    SegmentMapSet(old_base, kMapNone);
    base = OsMoveOnto(segment->mapping, old_size, new_size, target);
    if (base == nullptr) {
      SegmentMapSet(old_base, kMapSegment);
      return unchanged();
    }
  }
  // `segment` may point at memory that is gone now: only `moved` from here.
  Segment* moved = static_cast<Segment*>(base);
  Page* moved_page = &moved->pages[slice];
  moved->mapping = base;
  moved->mapping_size = new_size;
  moved_page->start = reinterpret_cast<uintptr_t>(base) + offset;
  moved_page->block_size = new_size - offset;
  if (base != reinterpret_cast<void*>(old_base)) SegmentMapSet(reinterpret_cast<uintptr_t>(base), kMapSegment);
  CounterAdd(g_counters.huge_bytes_live, static_cast<int64_t>(new_size) - static_cast<int64_t>(old_size));
  if (new_size < old_size) TrimHugeCacheToCapWithoutPool();
  if (Verbose(1)) {
    DiagLine().Str("ferry: huge block ").Hex(address).Str(" remapped to ").Hex(moved_page->start)
        .Str(", ").Dec(n).Str(" bytes").WriteToStderr();
  }
  return reinterpret_cast<void*>(moved_page->start);
}

size_t HugeUsableSize(Page* page, uintptr_t address, const char* call) {
  // The record lies in its segment's header, over-aligned or not.
  if (address != page->start) ReportBadHugePointer(page, address, call);
  return page->block_size;
}

}  // namespace ferry

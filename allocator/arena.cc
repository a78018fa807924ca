// arena.cc — segments carved from larger reservations, and the segment map.
//
// An arena is kArenaSize of address space, reserved inaccessible;
// segments are handed out lowest address first (keeping the heap compact),
// their slices made writable as they are taken (CommitSlicesUpTo), and come
// back inaccessible but their 64 KiB header, so a released segment costs
// address space, and commit charge for its header only. A live segment's
// free slices past its last one in use go back inaccessible too once idle
// (the purge: UncommitSuffix).
// Arena growth, the search of the segments for free slices
// (ArenaTakeSlicesAnywhere: only when the heap's first own segments have
// none of the kind wanted, for committed ones only while the hint says some
// exist, and only in segments whose bound in the room index allows a run
// long enough) and the purge run under one lock; it is never held across a
// call that can allocate.
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cstring>

#include "allocator/heap.h"
#include "allocator/segment.h"
#include "common/diag.h"
#include "common/os.h"
#include "common/spin_lock.h"
#include "common/stats.h"
#include "common/valgrind.h"

namespace ferry {

// constinit where the compiler can check it. clang gives up evaluating the
// 64 Mi atomics' constructors (its constexpr step limit) and rejects
// constinit, though it too zero-initializes the map statically (in .bss,
// with no dynamic initializer; checked with clang 14). Page-aligned, so
// that it can be mapped again read-only (SegmentMapCommit).
#if defined(__clang__)
alignas(kMapPageBytes) std::atomic<uint8_t> g_segment_map[kMapEntries];
#else
alignas(kMapPageBytes) constinit std::atomic<uint8_t> g_segment_map[kMapEntries];
#endif
constinit FreeListKeys g_keys{};  // set once, in EnsureGlobalInit

namespace {

// The map is 32 MiB of .bss: a private writable mapping, which strict
// overcommit (vm.overcommit_memory=2) and RLIMIT_DATA charge in full, though
// a process writes a page or two of it (a page's entries cover 16 GiB of
// address space). So the first reservation maps it again read-only (reads
// still find zeros, with no charge), and each reservation makes the pages
// of its entries writable before its entries are set.
enum MapState : uint8_t {
  kMapAsLoaded,     // nothing reserved yet: every entry is zero
  kMapByPage,       // read-only but the pages in g_map_pages_writable
  kMapAllWritable,  // as loaded, for good (the remap refused, or a page size the map does not fit)
};
constexpr size_t kMapPages = kMapEntries / kMapPageBytes;
constinit std::atomic<uint8_t> g_map_state{kMapAsLoaded};
constinit std::atomic<uint64_t> g_map_pages_writable[kMapPages / 64] = {};
// Serializes the remap and the pages' mprotect; held across fork() (after
// the arena lock, which a reservation may hold when it commits).
constinit ForkHeldSpinLock g_map_lock;

bool MapPageWritable(size_t page) {
  return (g_map_pages_writable[page / 64].load(std::memory_order_acquire) >> (page % 64) & 1) != 0;
}

bool MapEntryWritable(uintptr_t chunk) {
  const uint8_t state = g_map_state.load(std::memory_order_acquire);
  return state == kMapAllWritable || (state == kMapByPage && MapPageWritable(chunk / kMapPageBytes));
}

// Not under ThreadSanitizer, whose mmap interceptor records the remap as a
// write of the whole map by this thread, which every lookup by another
// thread then races with (zeros before and after, but reported).
#if defined(__SANITIZE_THREAD__)
constexpr bool kRemapSegmentMap = false;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
constexpr bool kRemapSegmentMap = false;
#else
constexpr bool kRemapSegmentMap = true;
#endif
#else
constexpr bool kRemapSegmentMap = true;
#endif

// The first commit, under g_map_lock: the map read-only. Where the kernel
// refuses, the map stays writable as loaded; where the refusal left nothing
// mapped there (the kernel out of memory of its own, in mmap's middle),
// ferry cannot go on.
void RemapSegmentMapReadOnlyLocked() {
  uint8_t state = kMapAllWritable;
  if (kRemapSegmentMap && OsPageSize() <= kMapPageBytes && kMapPageBytes % OsPageSize() == 0) {
    if (OsUncommit(g_segment_map, sizeof(g_segment_map), /*readable=*/true)) {
      state = kMapByPage;
    } else {
      const bool still_mapped = OsCommit(g_segment_map, sizeof(g_segment_map));
      FERRY_CHECK(still_mapped);
    }
  }
  g_map_state.store(state, std::memory_order_release);
}

}  // namespace

bool SegmentMapCommit(uintptr_t begin, size_t size) {
  const size_t first = (begin >> kSegmentShift) / kMapPageBytes;
  const size_t last = ((begin + size - 1) >> kSegmentShift) / kMapPageBytes;
  if (first >= kMapPages) return true;  // no entries (SegmentMapSet refuses them)
  const size_t end = (last < kMapPages ? last : kMapPages - 1) + 1;
  const auto all_writable = [&] {
    const uint8_t state = g_map_state.load(std::memory_order_acquire);
    if (state != kMapByPage) return state == kMapAllWritable;
    for (size_t page = first; page < end; ++page) {
      if (!MapPageWritable(page)) return false;
    }
    return true;
  };
  if (all_writable()) return true;
  SpinLockHolder hold(&g_map_lock);
  if (g_map_state.load(std::memory_order_relaxed) == kMapAsLoaded) RemapSegmentMapReadOnlyLocked();
  if (g_map_state.load(std::memory_order_relaxed) == kMapAllWritable) return true;
  for (size_t page = first; page < end; ++page) {
    if (MapPageWritable(page)) continue;
    if (!OsCommit(reinterpret_cast<char*>(g_segment_map) + page * kMapPageBytes, kMapPageBytes)) return false;
    g_map_pages_writable[page / 64].fetch_or(uint64_t{1} << (page % 64), std::memory_order_release);
  }
  return true;
}

size_t SegmentMapWritablePagesForTest() {
  if (g_map_state.load(std::memory_order_acquire) != kMapByPage) return SIZE_MAX;
  size_t pages = 0;
  for (const auto& word : g_map_pages_writable) pages += __builtin_popcountll(word.load(std::memory_order_acquire));
  return pages;
}

void SegmentMapSet(uintptr_t chunk_address, uint8_t value) {
  const uintptr_t chunk = chunk_address >> kSegmentShift;
  FERRY_CHECK(chunk < kMapEntries);
  // A reservation that skipped SegmentMapCommit would fault here, or, set
  // before the first commit, lose its entry to the remap.
  FERRY_CHECK(MapEntryWritable(chunk));
  g_segment_map[chunk].store(value, std::memory_order_release);
}

namespace {

constexpr size_t kArenaSize = kSegmentsPerArena * kSegmentSize;
constexpr size_t kMaxArenas = 65536;      // 4 TiB of small and large blocks (256 GiB until 2026-12-04)

struct Arena {
  uintptr_t base;
  uint32_t used;  // bit i: segment i is handed out
  // Bit i: the arena has a segment i, mapped. All kSegmentsPerArena of
  // them, but for one reserved where a whole arena would not fit
  // (ArenaAllocateSegment), and for those unmapped to make room
  // (ArenaUnreserveFreeSegments). An arena with none is dead: its entry
  // takes the next reservation.
  uint32_t all;
  // Bit i: segment i came back but the kernel would not decommit it all
  // (locked memory), so it may hold old bytes, header included.
  uint32_t not_zero;
  // Bit i: segment i is free and being unmapped (ArenaUnreserveFreeSegments):
  // not handed out meanwhile.
  uint32_t unmapping;
};

constinit ForkHeldSpinLock g_arena_lock;
constinit Arena g_arenas[kMaxArenas] = {};  // clang: every member initialized
constinit size_t g_arena_count = 0;
// Every arena below it has all its segments handed out: where the search
// for a segment to hand out starts.
constinit size_t g_arenas_full_below = 0;
// How many arenas are dead (every segment unmapped), under the lock.
constinit size_t g_dead_arenas = 0;
// One unmapping at a time (ArenaUnreserveFreeSegments), so that the
// `unmapping` bits are its own; held across fork() (taken before the arena
// lock), so that a fork child never finds an unmapping half done.
constinit ForkHeldSpinLock g_unreserve_lock;

// The room index (segment.h, NoteSlicesFreed): entry a * kSegmentsPerArena
// + i is segment i of arena a (Segment::room_index), g_arena_room[a] bounds
// its arena's. Bytes, so that a search reads 64 segments' bounds in one
// line and the header of none that has no run long enough. Zero, statically.
std::atomic<uint8_t> g_segment_room[kMaxArenas * kSegmentsPerArena];
std::atomic<uint8_t> g_arena_room[kMaxArenas];

// seq_cst throughout: a search's lowering (a store, then a second look at
// used_slices) and a free's raising (a clear of used_slices, then a look at
// the bound) each see the other's first step (Dekker's pattern), so that a
// bound never ends below a run that a free made.
void RaiseRoom(std::atomic<uint8_t>& room, size_t run) {
  const auto value = static_cast<uint8_t>(run);
  uint8_t seen = room.load(std::memory_order_seq_cst);
  while (seen < value && !room.compare_exchange_weak(seen, value, std::memory_order_seq_cst)) {
  }
}

// The search, under the arena lock: sets the segment's bound to the longest
// run it has now, and looks again. Returns the bound.
size_t LowerSegmentRoom(Segment* segment) {
  std::atomic<uint8_t>& room = g_segment_room[segment->room_index];
  const size_t run = LongestFreeRun(segment->used_slices.load(std::memory_order_seq_cst));
  room.store(static_cast<uint8_t>(run), std::memory_order_seq_cst);
  const size_t again = LongestFreeRun(segment->used_slices.load(std::memory_order_seq_cst));
  if (again > run) RaiseRoom(room, again);
  return room.load(std::memory_order_seq_cst);
}

// The largest bound among the arena's live segments.
size_t MostSegmentRoom(size_t arena_index) {
  size_t most = 0;
  for (uint32_t used = g_arenas[arena_index].used; used != 0; used &= used - 1) {
    const size_t index = arena_index * kSegmentsPerArena + static_cast<size_t>(__builtin_ctz(used));
    const size_t room = g_segment_room[index].load(std::memory_order_seq_cst);
    if (room > most) most = room;
  }
  return most;
}

// The same for an arena, whose live segments' bounds are at most `most`.
void LowerArenaRoom(size_t arena_index, size_t most) {
  g_arena_room[arena_index].store(static_cast<uint8_t>(most), std::memory_order_seq_cst);
  const size_t again = MostSegmentRoom(arena_index);
  if (again > most) RaiseRoom(g_arena_room[arena_index], again);
}

// Calls fn(segment) for every segment handed out, lowest address first,
// until fn returns true; the caller holds g_arena_lock.
template <typename Fn>
Segment* FindLiveSegment(Fn fn) {
  for (size_t i = 0; i < g_arena_count; ++i) {
    const Arena& arena = g_arenas[i];
    for (uint32_t used = arena.used; used != 0; used &= used - 1) {
      Segment* segment = reinterpret_cast<Segment*>(
          arena.base + static_cast<size_t>(__builtin_ctz(used)) * kSegmentSize);
      if (fn(segment)) return segment;
    }
  }
  return nullptr;
}

}  // namespace

void NoteSlicesFreed(uint32_t room_index, uint64_t used_after) {
  const size_t run = LongestFreeRun(used_after);
  RaiseRoom(g_segment_room[room_index], run);
  RaiseRoom(g_arena_room[room_index / kSegmentsPerArena], run);
}

size_t SegmentRoom(const Segment* segment) {
  return g_segment_room[segment->room_index].load(std::memory_order_seq_cst);
}

size_t LowerSegmentRoomForTest(Segment* segment) {
  SpinLockHolder hold(&g_arena_lock);
  return LowerSegmentRoom(segment);
}

void LowerRoomForTest(Segment* segment) {
  SpinLockHolder hold(&g_arena_lock);
  LowerSegmentRoom(segment);
  const size_t arena_index = segment->room_index / kSegmentsPerArena;
  LowerArenaRoom(arena_index, MostSegmentRoom(arena_index));
}

size_t ArenaRoomForTest(const Segment* segment) {
  return g_arena_room[segment->room_index / kSegmentsPerArena].load(std::memory_order_seq_cst);
}

constinit std::atomic<int64_t> g_free_dirty_slices_hint{0};
// A fruitless search for committed slices: no run of this many or more
// was left, as far as it saw (segment.h, g_free_dirty_slices_hint).
constinit std::atomic<uint32_t> g_dirty_run_below{static_cast<uint32_t>(kSlicesPerSegment)};

void NoteDirtySlicesFreed(size_t count) {
  g_free_dirty_slices_hint.fetch_add(static_cast<int64_t>(count), std::memory_order_relaxed);
  if (g_dirty_run_below.load(std::memory_order_relaxed) != kSlicesPerSegment) {
    g_dirty_run_below.store(kSlicesPerSegment, std::memory_order_relaxed);
  }
}
constinit std::atomic<bool> g_idle_empty_segments{false};

namespace {

// The least the hint has been since the last purge run (ArenaPurge).
constinit std::atomic<int64_t> g_free_dirty_slices_low{0};

// How long ago slice `slice` of `segment` was freed (its stamp may be newer
// than now_ms: its freeing thread read the clock after the caller did).
uint64_t FreedAgeMs(const Segment* segment, int slice, uint64_t now_ms) {
  const uint64_t freed = segment->freed_ms[slice].load(std::memory_order_relaxed);
  return now_ms >= freed ? now_ms - freed : 0;
}

// A committed slice that another heap's page released less than this long
// ago is left to that heap (but by a last resort): it is likely still in
// its thread's cache, and about to be taken again. Taken at once, two
// threads that each emptied and remade their pages every round traded them
// (one thread's pages in the other's segment), and ran half as fast as one
// thread doing both's rounds (perf/RESULTS.md, 2026-12-07, teardown). Past
// this, the slice is idle memory, and reusing it keeps the resident set
// from growing.
constexpr uint64_t kForeignSlicesSettleMs = 4;

// Takes `n` committed slices off the hint, never below zero. A fruitless
// search sets it to zero while smaller committed runs remain; claims of
// those took it below zero, where the releases that followed did not lift
// it above zero, so no heap looked for other heaps' committed slices again
// (new pages faulted in fresh memory meanwhile) until a purge run set it
// right: never, without reclaimer threads.
void HintSlicesTaken(int64_t n) {
  int64_t hint = g_free_dirty_slices_hint.load(std::memory_order_relaxed);
  int64_t left = 0;
  do {
    if (hint <= 0) return;
    left = hint > n ? hint - n : 0;
  } while (!g_free_dirty_slices_hint.compare_exchange_weak(hint, left, std::memory_order_relaxed));
  int64_t low = g_free_dirty_slices_low.load(std::memory_order_relaxed);
  while (left < low && !g_free_dirty_slices_low.compare_exchange_weak(low, left, std::memory_order_relaxed)) {
  }
}

// The slices of `run` that may still be committed and that another heap's
// page released less than kForeignSlicesSettleMs ago (nullptr: no heap's
// page, the slices of a segment handed out again).
uint64_t FreshForeignSlices(const Segment* segment, uint64_t run, SliceClaim* claim) {
  uint64_t fresh = 0;
  for (uint64_t bits = run & segment->dirty_slices.load(std::memory_order_relaxed); bits != 0; bits &= bits - 1) {
    const int slice = __builtin_ctzll(bits);
    const Heap* released_by = segment->released_by[slice].load(std::memory_order_relaxed);
    if (released_by == claim->heap || released_by == nullptr) continue;
    // Its thread has exited: no cache to spare.
    if (!HeapHasOwnerThread(released_by)) continue;
    if (claim->now_ms == 0) claim->now_ms = OsMonotonicMs();
    if (FreedAgeMs(segment, slice, claim->now_ms) < kForeignSlicesSettleMs) fresh |= uint64_t{1} << slice;
  }
  return fresh;
}

}  // namespace

// The first run of `count` free slices starting at a multiple of `align`
// (for one slice, a lone one first); with `dirty_only`, only a run whose
// memory may still be committed.
int FindFreeSlices(const Segment* segment, size_t count, size_t align, bool dirty_only, uint64_t allowed) {
  const uint64_t dirty =
      (dirty_only ? segment->dirty_slices.load(std::memory_order_relaxed) : ~uint64_t{0}) & allowed;
  // One look rules out most segments (full ones above all: a big heap's
  // claims pass many), and finds a single slice at once.
  const uint64_t candidates = ~segment->used_slices.load(std::memory_order_acquire) & dirty & ~uint64_t{1};
  if (static_cast<size_t>(__builtin_popcountll(candidates)) < count) return -1;
  if (count == 1 && align == 1) {
    // A slice with no free neighbour first: taken from the front of a run,
    // a one-slice page shortened the run that a medium page was waiting
    // for (realloc's peak RSS).
    const uint64_t alone = candidates & ~(candidates << 1) & ~(candidates >> 1);
    return __builtin_ctzll(alone != 0 ? alone : candidates);
  }
  if (align >= kSlicesPerSegment) return -1;
  // Bit s: slices [s, s + count) are all candidates. In shifts that double
  // the run, not a look at each start: the look at each start took 500
  // instructions a segment, and claims a quarter of the instructions of
  // threads that passed 8-64 KiB blocks to others (perf/RESULTS.md,
  // 2026-12-08). Shifted in from above, slices past the last are not free.
  uint64_t starts = candidates;
  size_t covered = 1;
  for (; covered * 2 <= count; covered *= 2) starts &= starts >> covered;
  if (covered < count) starts &= starts >> (count - covered);
  // Bits 0, align, 2 * align, ... (align a power of two below 64).
  if (align > 1) starts &= ~uint64_t{0} / ((uint64_t{1} << align) - 1);
  return starts == 0 ? -1 : __builtin_ctzll(starts);
}

namespace {

// A segment's slices are made writable from the header up, this many at a
// time past what its first page needed: a thread that allocates a little
// is charged a little (strict overcommit, ulimit -d), 512 KiB and not the
// whole 4 MiB, for about eight mprotects a segment (more where holders race
// to raise the mark, or a charge is refused).
constexpr size_t kCommitStepSlices = 8;

size_t CommitTarget(size_t end) {
  const size_t target = AlignUp(end, kCommitStepSlices);
  return target < kSlicesPerSegment ? target : kSlicesPerSegment;
}

// Makes slices [0, end) of `segment` writable; the caller holds the slice
// before `end`, so that the segment cannot go back meanwhile. Others may
// raise the mark at the same time (mprotect of a writable range changes
// nothing), and the purge may lower it (UncommitSuffix), only ever to a
// step at or past every slice held: never below this raise's target,
// CommitTarget(end) or `end`, so the two never touch the same slices, and
// whichever stores last leaves the mark at or below what is writable.
bool CommitSlicesUpTo(Segment* segment, size_t end) {
  uint8_t writable = segment->writable_slices.load(std::memory_order_acquire);
  if (FERRY_LIKELY(end <= writable)) return true;
  char* const base = reinterpret_cast<char*>(segment);
  size_t target = CommitTarget(end);
  if (!OsCommit(base + size_t{writable} * kSliceSize, (target - writable) * kSliceSize)) {
    target = end;  // the step refused: what is needed only
    if (!OsCommit(base + size_t{writable} * kSliceSize, (target - writable) * kSliceSize)) return false;
  }
  while (writable < target && !segment->writable_slices.compare_exchange_weak(
                                  writable, static_cast<uint8_t>(target), std::memory_order_acq_rel,
                                  std::memory_order_acquire)) {
  }
  return true;
}

}  // namespace

// Takes the slices [start, start + count) if they are still free (the pool
// may hold some for a moment while it purges them).
bool TryTakeSlices(Segment* segment, int start, size_t count, bool* was_clean, bool* refused) {
  const uint64_t run = SliceRun(static_cast<size_t>(start), count);
  uint64_t used = segment->used_slices.load(std::memory_order_relaxed);
  do {
    if ((used & run) != 0) return false;
  } while (!segment->used_slices.compare_exchange_weak(used, used | run, std::memory_order_acq_rel,
                                                       std::memory_order_relaxed));
  // Held, the segment stays, and its writable mark stays past these slices.
  if (FERRY_UNLIKELY(!CommitSlicesUpTo(segment, static_cast<size_t>(start) + count))) {
    // Refused its charge: free again, as found (stamps, dirty bits and the
    // hint untouched: they change only once the slices are ours).
    SegmentReadWindow window;
    ClearSlicesAndNoteRoom(segment, run);
    if (refused != nullptr) *refused = true;
    return false;
  }
  // Ours now: the purge (which clears dirty bits only for slices it holds)
  // cannot change these bits until we free the slices.
  const uint64_t dirty = segment->dirty_slices.load(std::memory_order_relaxed) & run;
  if (was_clean != nullptr) *was_clean = dirty == 0;
  if (dirty != 0) {
    HintSlicesTaken(__builtin_popcountll(dirty));
  }
  NoteSlicesClaimed(segment, run);
  return true;
}

int TakeFreeSlices(Segment* segment, size_t count, size_t align, bool dirty_only, bool* was_clean,
                   SliceClaim* claim, bool* passed_fresh) {
  // Only the run found is judged (most claims find one run of their own
  // heap's slices, and read no clock); a fresh one is left out, and the
  // search goes on without it.
  uint64_t allowed = ~uint64_t{0};
  for (;;) {
    const int start = FindFreeSlices(segment, count, align, dirty_only, allowed);
    if (start < 0) return start;
    if (claim != nullptr) {
      const uint64_t fresh = FreshForeignSlices(segment, SliceRun(static_cast<size_t>(start), count), claim);
      if (fresh != 0) {
        allowed &= ~fresh;
        if (passed_fresh != nullptr) *passed_fresh = true;
        continue;
      }
    }
    bool refused = false;
    if (TryTakeSlices(segment, start, count, was_clean, &refused)) return start;
    // Refused its charge: only runs already writable, which need none (a
    // segment's free slices past its mark would each be refused in turn).
    // Taken first by another thread: the search again, as it is now.
    if (refused) allowed &= SliceRun(0, segment->writable_slices.load(std::memory_order_acquire));
  }
}

namespace {

// OsAddressSpaceLimit as it was when the last segment was taken; 0 before
// it was first read (a limit of 0 reads as 1).
std::atomic<size_t> g_address_space_limit{0};

// Below this limit an arena is reserved a quarter at a time (16 MiB): an
// arena's unused segments count against RLIMIT_AS (not RLIMIT_DATA since
// 2026-12-07: they are inaccessible; the limit read is the lower of the
// two, so this errs towards small arenas), and a program whose
// large blocks go huge under it (LargeBlockGoesHuge) could use none of them
// (1 MiB blocks under a 1.2 GiB limit: 60 MiB of it reserved for nothing).
// Far above what one process maps, so that the arenas' table (4 TiB in
// 64 MiB arenas, 1 TiB in 16 MiB ones) never runs short.
constexpr size_t kSmallArenasBelowLimit = size_t{64} << 30;

void RefreshAddressSpaceLimit() {
  const size_t limit = OsAddressSpaceLimit();
  g_address_space_limit.store(limit == 0 ? 1 : limit, std::memory_order_relaxed);
}

}  // namespace

bool AddressSpaceIsScarce() { return AddressSpaceLimit() < kSmallArenasBelowLimit; }

size_t AddressSpaceLimit() {
  size_t limit = g_address_space_limit.load(std::memory_order_relaxed);
  if (FERRY_UNLIKELY(limit == 0)) {
    RefreshAddressSpaceLimit();
    limit = g_address_space_limit.load(std::memory_order_relaxed);
  }
  return limit;
}

namespace {

// The entry for a new reservation: a dead arena's (ArenaUnreserveFreeSegments)
// where there is one, its room bounds cleared, else the next. Without the
// dead ones taken again, a program that hit its limit once a round (take a
// segment, free it, ask for a block too large to fit) used up an entry a
// round, and after 65536 rounds every small block failed (a review,
// 2026-12-06). The caller holds the arena lock and has checked that one is
// left.
size_t TakeArenaEntryLocked() {
  if (g_dead_arenas != 0) {
    for (size_t i = 0; i < g_arena_count; ++i) {
      if (g_arenas[i].all != 0) continue;
      --g_dead_arenas;
      // A bound left high costs a search a look at the header; one left low
      // would hide a run, but these stay at zero until a segment is handed
      // out here, which sets its own.
      for (size_t k = 0; k < kSegmentsPerArena; ++k) {
        g_segment_room[i * kSegmentsPerArena + k].store(0, std::memory_order_seq_cst);
      }
      g_arena_room[i].store(0, std::memory_order_seq_cst);
      return i;
    }
  }
  FERRY_CHECK(g_arena_count < kMaxArenas);
  return g_arena_count++;
}

// Segment `address` of arena `arena_index` is free again, under the arena
// lock; `not_zero`: it may hold old bytes (its decommit was refused).
void MarkSegmentFreeLocked(size_t arena_index, uintptr_t address, bool not_zero) {
  FERRY_CHECK(arena_index < g_arena_count);
  Arena& arena = g_arenas[arena_index];
  FERRY_CHECK(address >= arena.base && address < arena.base + kArenaSize);
  const uint32_t bit = uint32_t{1} << ((address - arena.base) / kSegmentSize);
  arena.used &= ~bit;
  if (not_zero) arena.not_zero |= bit;
  if (arena_index < g_arenas_full_below) g_arenas_full_below = arena_index;
}

}  // namespace

Segment* ArenaAllocateSegment(uint64_t taken, bool* zeroed) {
  RefreshAddressSpaceLimit();
  const size_t first_segments =
      g_address_space_limit.load(std::memory_order_relaxed) < kSmallArenasBelowLimit ? kSegmentsPerArena / 4
                                                                                      : kSegmentsPerArena;
  Segment* segment = nullptr;
  bool not_zero = false;
  {
    SpinLockHolder hold(&g_arena_lock);
    uintptr_t address = 0;
    size_t room_index = 0;
    // A free segment of an arena; one being unmapped (ArenaUnreserveFreeSegments
    // waits for readers) only where no other is free, taken back rather
    // than a new reservation, which the limit that caused the unmapping
    // would refuse (small blocks failed with ENOMEM for the wait's length).
    size_t chosen = g_arena_count;
    for (size_t i = g_arenas_full_below; i < g_arena_count; ++i) {
      const Arena& arena = g_arenas[i];
      if (arena.used == arena.all) {
        if (i == g_arenas_full_below) ++g_arenas_full_below;
        continue;
      }
      if ((arena.all & ~arena.used & ~arena.unmapping) != 0) {
        chosen = i;
        break;
      }
      if (chosen == g_arena_count) chosen = i;
    }
    if (chosen != g_arena_count) {
      Arena& arena = g_arenas[chosen];
      const uint32_t free_slots = arena.all & ~arena.used;
      const uint32_t staying = free_slots & ~arena.unmapping;
      const int slot = __builtin_ctz(staying != 0 ? staying : free_slots);
      const uint32_t bit = uint32_t{1} << slot;
      arena.unmapping &= ~bit;
      arena.used |= bit;
      not_zero = (arena.not_zero & bit) != 0;
      arena.not_zero &= ~bit;
      address = arena.base + static_cast<size_t>(slot) * kSegmentSize;
      room_index = chosen * kSegmentsPerArena + static_cast<size_t>(slot);
    }
    // A whole arena, or, where the address space left will not take one
    // (RLIMIT_AS), half as many segments, down to one: otherwise the last
    // 64 MiB under a limit were never used.
    for (size_t segments = first_segments;
         address == 0 && (g_arena_count < kMaxArenas || g_dead_arenas != 0) && segments != 0; segments /= 2) {
      // Inaccessible, so uncharged, until a segment of it is taken.
      void* base = OsReserveInaccessible(segments * kSegmentSize, kSegmentSize);
      if (base == nullptr) continue;
      if (!SegmentMapCommit(reinterpret_cast<uintptr_t>(base), segments * kSegmentSize)) {
        OsRelease(base, segments * kSegmentSize);
        break;
      }
      const size_t index = TakeArenaEntryLocked();
      room_index = index * kSegmentsPerArena;
      Arena& arena = g_arenas[index];
      arena.base = reinterpret_cast<uintptr_t>(base);
      arena.all = static_cast<uint32_t>((uint64_t{1} << segments) - 1);
      arena.used = 1;
      arena.not_zero = 0;
      arena.unmapping = 0;
      if (index < g_arenas_full_below) g_arenas_full_below = index;
      address = arena.base;
      // Once per arena, for every segment it will hold (common/valgrind.h).
      for (size_t k = 0; k < segments; ++k) {
        VgHideMetadata(reinterpret_cast<void*>(arena.base + k * kSegmentSize), sizeof(Segment));
      }
      CounterAdd(g_counters.arena_bytes_reserved, static_cast<int64_t>(segments * kSegmentSize));
    }
    if (address == 0) return nullptr;
    // Charged from here (strict overcommit, RLIMIT_DATA): the header and the
    // slices up to the caller's, in steps (CommitSlicesUpTo); a segment not
    // handed out is inaccessible but its header. Refused, it goes back free,
    // as it was.
    const size_t writable = CommitTarget(taken == 0 ? 1 : static_cast<size_t>(Log2Floor(taken)) + 1);
    if (!OsCommit(reinterpret_cast<void*>(address), writable * kSliceSize)) {
      MarkSegmentFreeLocked(room_index / kSegmentsPerArena, address, not_zero);
      return nullptr;
    }
    // Under the lock: ArenaTakeSlicesAnywhere reads the header of every
    // segment handed out, so it must be valid before the lock is dropped.
    segment = reinterpret_cast<Segment*>(address);
    // Every slice may hold old bytes: the header is cleared as the kernel
    // would have, the slices are marked dirty (so the purge tries again, and
    // calloc clears them).
    if (not_zero) memset(static_cast<void*>(segment), 0, sizeof(Segment));
    segment->kind = SegmentKind::kNormal;
    segment->writable_slices.store(static_cast<uint8_t>(writable), std::memory_order_relaxed);
    segment->heap.store(nullptr, std::memory_order_relaxed);
    segment->heap_next = segment->heap_prev = nullptr;
    segment->dirty_slices.store(not_zero ? ~uint64_t{1} : taken, std::memory_order_relaxed);
    // In the map before any other heap can take slices here (under this
    // lock, ArenaTakeSlicesAnywhere): a block of such a slice may be freed
    // by a third thread at once, and a free that found no map entry would
    // report a good pointer as foreign (the soak saw it: "delete(…):
    // pointer not allocated by ferry", when the map was written after the
    // lock was dropped).
    SegmentMapSet(address, kMapSegment);
    segment->room_index = static_cast<uint32_t>(room_index);
    const size_t room = LongestFreeRun(1 | taken);
    g_segment_room[room_index].store(static_cast<uint8_t>(room), std::memory_order_seq_cst);
    RaiseRoom(g_arena_room[room_index / kSegmentsPerArena], room);
    segment->used_slices.store(1 | taken, std::memory_order_release);  // the header, and the caller's
  }
  CounterAdd(Counter::segments_mapped, 1);
  CounterAdd(g_counters.segments_live, 1);
  if (Verbose(1)) DiagLine().Str("ferry: segment ").Ptr(segment).Str(" mapped").WriteToStderr();
  if (zeroed != nullptr) *zeroed = !not_zero;
  return segment;
}

void ArenaReleaseSegment(Segment* segment) {
  FERRY_CHECK(segment->used_slices.load(std::memory_order_relaxed) == kSegmentDetached);
  const uintptr_t address = reinterpret_cast<uintptr_t>(segment);
  const size_t arena_index = segment->room_index / kSegmentsPerArena;  // read before the header goes
  SegmentMapSet(address, kMapNone);
  // All but the header first, outside the lock; the header (which reads as
  // detached until it is decommitted, and as all free after) only once no
  // scan can reach the segment.
  // Counted: the slices that could still hold memory (most were purged, and
  // counted, while free before the segment emptied), then the header.
  const uint64_t dirty = segment->dirty_slices.load(std::memory_order_relaxed) & ~uint64_t{1};
  // They were free, and counted in the hint as such: a count left too high
  // until the next purge run would have that run take other free slices
  // for unneeded ones (ArenaPurge).
  HintSlicesTaken(__builtin_popcountll(dirty));
  // Inaccessible again, uncharged, and zero when next taken. The header
  // stays readable: a thread that freed the segment's last slices a moment
  // ago may still read it (SegmentReadWindow), and finds it detached, then
  // all free. Where the kernel refuses the fixed mapping, decommitted.
  char* const slices = reinterpret_cast<char*>(segment) + kSliceSize;
  const size_t writable = segment->writable_slices.load(std::memory_order_relaxed);
  const bool uncharged = OsUncommit(slices, kSegmentSize - kSliceSize);
  const bool zero = uncharged || OsDecommit(slices, kSegmentSize - kSliceSize);
  if (uncharged) CounterAdd(Counter::bytes_uncharged, static_cast<int64_t>((writable - 1) * kSliceSize));
  if (zero) CounterAdd(Counter::bytes_decommitted, __builtin_popcountll(dirty) * static_cast<int64_t>(kSliceSize));
  CounterAdd(Counter::segments_released, 1);
  CounterAdd(g_counters.segments_live, -1);
  if (Verbose(1)) DiagLine().Str("ferry: segment ").Hex(address).Str(" released").WriteToStderr();
  SpinLockHolder hold(&g_arena_lock);
  const bool header_zero = OsDecommit(segment, kSliceSize);
  if (header_zero) CounterAdd(Counter::bytes_decommitted, kSliceSize);
  MarkSegmentFreeLocked(arena_index, address, /*not_zero=*/!(header_zero && zero));
}

Segment* ArenaTakeSlicesAnywhere(SliceClaim* claim, size_t count, size_t align, bool dirty_only, int* start,
                                 bool* was_clean) {
  if (dirty_only && (g_free_dirty_slices_hint.load(std::memory_order_relaxed) <= 0 ||
                     count >= g_dirty_run_below.load(std::memory_order_relaxed))) {
    return nullptr;
  }
  SpinLockHolder hold(&g_arena_lock);
  Segment* found = nullptr;
  bool passed_fresh = false;  // committed slices left to other heaps for now
  for (size_t i = 0; i < g_arena_count && found == nullptr; ++i) {
    if (g_arena_room[i].load(std::memory_order_seq_cst) < count) continue;
    const Arena& arena = g_arenas[i];
    size_t most = 0;  // the arena's segments' bounds, as this look leaves them
    for (uint32_t used = arena.used; used != 0 && found == nullptr; used &= used - 1) {
      const size_t slot = static_cast<size_t>(__builtin_ctz(used));
      size_t room = g_segment_room[i * kSegmentsPerArena + slot].load(std::memory_order_seq_cst);
      if (room >= count) {
        Segment* segment = reinterpret_cast<Segment*>(arena.base + slot * kSegmentSize);
        const int first = TakeFreeSlices(segment, count, align, dirty_only, was_clean, claim, &passed_fresh);
        if (first >= 0) {
          *start = first;
          found = segment;
        } else {
          room = LowerSegmentRoom(segment);
        }
      }
      if (room > most) most = room;
    }
    if (found == nullptr) LowerArenaRoom(i, most);
  }
  // None of the size asked for: a smaller run may remain, but claims as
  // long would come here in vain until slices are freed.
  if (found == nullptr && dirty_only && !passed_fresh) g_dirty_run_below.store(static_cast<uint32_t>(count), std::memory_order_relaxed);
  return found;
}

bool SegmentDecommitSlices(Segment* segment, size_t first, size_t count) {
  // Refused (locked memory): the slices keep their bytes, so they stay dirty.
  if (!OsDecommit(reinterpret_cast<char*>(segment) + first * kSliceSize, count * kSliceSize)) return false;
  const uint64_t run = SliceRun(first, count);
  segment->dirty_slices.fetch_and(~run, std::memory_order_relaxed);
  CounterAdd(Counter::bytes_decommitted, static_cast<int64_t>(count * kSliceSize));
  return true;
}

namespace {

// Maps the slices [from, mark) of `segment` inaccessible again, uncharged
// (strict overcommit, ulimit -d: MADV_DONTNEED frees the pages but keeps
// the charge), and lowers its writable mark to `from`, a commit step. The
// caller holds every slice from `from` up: no raise in flight can reach
// past `from` (CommitSlicesUpTo), nor can one start that would. Returns
// the mark it had, or 0 where the mark was not above `from` or the kernel
// refused.
size_t UncommitSuffix(Segment* segment, size_t from) {
  FERRY_CHECK(from % kCommitStepSlices == 0);
  uint8_t mark = segment->writable_slices.load(std::memory_order_acquire);
  if (from >= mark) return 0;
  if (!OsUncommit(reinterpret_cast<char*>(segment) + from * kSliceSize, (mark - from) * kSliceSize)) return 0;
  // Nothing else moves the mark past `from` while the slices are held.
  FERRY_CHECK(segment->writable_slices.compare_exchange_strong(mark, static_cast<uint8_t>(from),
                                                               std::memory_order_acq_rel));
  return mark;
}

// Holds the free slices in `wanted` as used, decommits them run by run, and
// frees them again; with `uncommit_from` below kSlicesPerSegment, also every
// slice from there up where all of them are still free, and uncommits
// those below the mark (UncommitSuffix) rather than decommit them. Returns
// the bytes decommitted (the slices of `wanted` that were, uncommitted ones
// included).
size_t PurgeSlices(Segment* segment, uint64_t wanted, size_t uncommit_from) {
  const uint64_t suffix =
      uncommit_from < kSlicesPerSegment ? SliceRun(uncommit_from, kSlicesPerSegment - uncommit_from) : 0;
  uint64_t used = segment->used_slices.load(std::memory_order_relaxed);
  uint64_t held;
  do {
    held = ((used & suffix) == 0 ? wanted | suffix : wanted) & ~used;
    if (held == 0) return 0;
  } while (!segment->used_slices.compare_exchange_weak(used, used | held, std::memory_order_acq_rel,
                                                       std::memory_order_relaxed));
  size_t bytes = 0;
  uint64_t purged = 0;
  uint64_t rest = held & wanted;
  if (suffix != 0 && (held & suffix) == suffix) {
    const size_t mark = UncommitSuffix(segment, uncommit_from);
    if (mark != 0) {
      // Zero pages now, whatever they held: clean.
      const uint64_t run = SliceRun(uncommit_from, mark - uncommit_from);
      const uint64_t dirty = segment->dirty_slices.fetch_and(~run, std::memory_order_relaxed) & run;
      bytes += static_cast<size_t>(__builtin_popcountll(dirty)) * kSliceSize;
      CounterAdd(Counter::bytes_decommitted, static_cast<int64_t>(__builtin_popcountll(dirty) * kSliceSize));
      CounterAdd(Counter::bytes_uncharged, static_cast<int64_t>((mark - uncommit_from) * kSliceSize));
      purged |= dirty;
      rest &= ~run;
    }
  }
  for (; rest != 0;) {
    const int first = __builtin_ctzll(rest);
    int count = 0;
    while (first + count < 64 && (rest >> (first + count) & 1) != 0) ++count;
    const uint64_t run = SliceRun(static_cast<size_t>(first), static_cast<size_t>(count));
    if (SegmentDecommitSlices(segment, static_cast<size_t>(first), static_cast<size_t>(count))) {
      bytes += static_cast<size_t>(count) * kSliceSize;
      purged |= run;
    }
    rest &= ~run;
  }
  // Holding the last free slices made the segment look full for a moment:
  // a heap whose claims skipped it then must look again.
  const uint64_t used_before = segment->used_slices.fetch_and(~held, std::memory_order_seq_cst);
  NoteSlicesFreed(segment->room_index, used_before & ~held);
  if (used_before == kSegmentFull) NoteRoomInFullSegment(segment);
  HintSlicesTaken(__builtin_popcountll(purged));
  return bytes;
}

// Where the purge may lower the writable mark of `segment` to (below it,
// the charge of free slices stays however long they wait): the step
// (CommitTarget) past its last slice in use (`used`), where every slice
// from there to the mark has been free for `idle_ms` and none of them
// committed stays in this run (`staying`). kSlicesPerSegment for none. A
// step and not the slice: slices below the step would be committed again
// by the next claim past the last one in use. Not sooner than the eager
// window, whatever FERRY_PURGE_DELAY_MS says: each lowering and the raise
// that may follow replace mappings, which holds up every thread's page
// faults for a moment (MADV_DONTNEED does not).
size_t UncommitFrom(const Segment* segment, uint64_t used, uint64_t staying, uint64_t now_ms, uint64_t idle_ms) {
  const size_t from = CommitTarget(kSlicesPerSegment - static_cast<size_t>(__builtin_clzll(used | 1)));
  const size_t mark = segment->writable_slices.load(std::memory_order_relaxed);
  if (from >= mark || (staying & SliceRun(from, mark - from)) != 0) return kSlicesPerSegment;
  for (size_t slice = from; slice < mark && idle_ms != 0; ++slice) {
    if (FreedAgeMs(segment, static_cast<int>(slice), now_ms) < idle_ms) return kSlicesPerSegment;
  }
  return from;
}

}  // namespace

// Under the arena lock, so that no segment is released to its arena or
// handed out again while its header is read here. A free dirty slice goes
// back to the OS at the first run after it has been free for delay_ms
// (freed_ms, stamped when its page was released), within kEagerBytesPerRun
// while it has been free for less than kEagerWindowMs. Until 2026-12-02 the
// runs stamped a slice when one first saw it free, so a slice freed just
// after a run waited a whole run's spacing (50 ms) more, and the default
// delay was 250 ms: the slices a heap takes back after a dip in its use
// were committed whole, though new pages touch their memory 4 KiB at a
// time (ExtendPage). Purged, they come back clean and only what is carved
// is resident: producer/consumer peak RSS 1.03x -> 0.98x mimalloc's,
// larson -16%, mstress -8%, at equal time.
//
// Young slices past the budget: a program's need for pages swings, and
// the free committed slices a peak leaves are reused and freed again
// without end, each of them young, so the budget alone took them back at
// 1 MiB a run while the program ran (one freeing thread, four allocating:
// 16-20 MiB above the usual level for the rest of a half-second phase, in
// 2 runs of 55; CI failed on it). How many of them no claim needed is
// known: the fewest free committed slices there were since the last run
// (g_free_dirty_slices_low, lowered by every claim's HintSlicesTaken and
// set to what is left at the end of a run). Half of those go back too,
// less the slices that this run gives back anyway (free for the whole
// window) or may not (within FERRY_PURGE_DELAY_MS): a surplus halves every
// run, while memory freed since the last run, or taken again before the
// next, stays. (Waiting for two intervals without claims, the one-freer
// test's median still went over its bound in 2 runs of 70.)
size_t ArenaPurge(uint64_t now_ms, uint64_t delay_ms, bool urgent) {
  size_t bytes = 0;
  size_t eager_budget = kEagerBytesPerRun;
  int64_t still_dirty = 0;
  SpinLockHolder hold(&g_arena_lock);
  int64_t unneeded = urgent ? 0 : g_free_dirty_slices_low.load(std::memory_order_relaxed);
  if (unneeded > 1) {
    FindLiveSegment([&](Segment* segment) {
      const uint64_t used = segment->used_slices.load(std::memory_order_acquire);
      for (uint64_t waiting = segment->dirty_slices.load(std::memory_order_relaxed) & ~used; waiting != 0;
           waiting &= waiting - 1) {
        const uint64_t age = FreedAgeMs(segment, __builtin_ctzll(waiting), now_ms);
        if (age < delay_ms || age >= kEagerWindowMs) --unneeded;
      }
      return false;  // every segment
    });
  }
  size_t unneeded_budget = unneeded > 1 ? static_cast<size_t>(unneeded / 2) * kSliceSize : 0;
  bool idle_empty = false;
  FindLiveSegment([&](Segment* segment) {
    const uint64_t used = segment->used_slices.load(std::memory_order_acquire);
    if (used == 1 && !idle_empty && !segment->is_spare.load(std::memory_order_relaxed) &&
        (urgent || EmptySegmentIdleMs(segment, now_ms) >= EmptySegmentKeepMs(delay_ms))) {
      idle_empty = true;
    }
    const uint64_t free_dirty = segment->dirty_slices.load(std::memory_order_relaxed) & ~used;
    uint64_t due = urgent ? free_dirty : 0;
    for (uint64_t waiting = free_dirty & ~due; waiting != 0; waiting &= waiting - 1) {
      const uint64_t age = FreedAgeMs(segment, __builtin_ctzll(waiting), now_ms);
      if (age < delay_ms) continue;
      if (age < kEagerWindowMs) {
        if (eager_budget >= kSliceSize) {
          eager_budget -= kSliceSize;
        } else if (unneeded_budget >= kSliceSize) {
          unneeded_budget -= kSliceSize;
        } else {
          continue;
        }
      }
      due |= waiting & -waiting;
    }
    const size_t uncommit_from = UncommitFrom(segment, used, free_dirty & ~due, now_ms,
                                              urgent ? 0 : std::max(delay_ms, kEagerWindowMs));
    if (due != 0 || uncommit_from < kSlicesPerSegment) bytes += PurgeSlices(segment, due, uncommit_from);
    still_dirty += __builtin_popcountll(free_dirty & ~due);
    return false;  // every segment
  });
  // The low mark first: a claim between the two stores leaves it too low
  // (the next run gives back less), never too high.
  g_free_dirty_slices_low.store(still_dirty, std::memory_order_relaxed);
  g_free_dirty_slices_hint.store(still_dirty, std::memory_order_relaxed);
  if (idle_empty) g_idle_empty_segments.store(true, std::memory_order_relaxed);
  return bytes;
}

size_t FreeDirtySlicesForTest() {
  SpinLockHolder hold(&g_arena_lock);
  size_t count = 0;
  FindLiveSegment([&](Segment* segment) {
    const uint64_t used = segment->used_slices.load(std::memory_order_acquire);
    count += static_cast<size_t>(__builtin_popcountll(segment->dirty_slices.load(std::memory_order_relaxed) & ~used));
    return false;  // every segment
  });
  return count;
}

ArenaUsage ArenaUsageNow() {
  ArenaUsage usage{0, 0};
  SpinLockHolder hold(&g_arena_lock);
  FindLiveSegment([&](Segment* segment) {
    usage.segment_bytes += kSegmentSize;
    const uint64_t used = segment->used_slices.load(std::memory_order_relaxed);
    usage.used_slice_bytes += static_cast<uint64_t>(__builtin_popcountll(used)) * kSliceSize;
    return false;  // every segment
  });
  return usage;
}

constinit SegmentReadWindows g_segment_read_windows{};
__thread uint32_t tl_segment_read_windows[2] __attribute__((tls_model("initial-exec"))) = {0, 0};

namespace {

// Waits until every SegmentReadWindow opened before the call has closed, up
// to kReadWindowWaitMs: true once they have. A window is a few loads long,
// unless its thread lost its CPU in it or waits there for a heap's lock.
// Each phase moves the epoch on and waits for the slot it leaves: windows
// opened after the move count in the other slot, so that threads releasing
// pages without pause cannot keep the wait from ending (waiting for one
// count to read zero, a program of such threads could refuse every
// unmapping). Two phases, so that both slots have drained, whatever epoch
// a window opened in (an earlier call that gave up may have left old
// windows in either).
constexpr uint64_t kReadWindowWaitMs = 200;

bool WaitForSegmentReadWindows() {
  const uint64_t deadline = OsMonotonicMs() + kReadWindowWaitMs;
  for (int phase = 0; phase < 2; ++phase) {
    const uint32_t left = g_segment_read_windows.epoch.fetch_add(1, std::memory_order_seq_cst);
    std::atomic<uint64_t>& open = g_segment_read_windows.open[left & 1];
    while (open.load(std::memory_order_acquire) != 0) {
      // Every time: on crowded CPUs one yield may take milliseconds.
      if (OsMonotonicMs() >= deadline) return false;
      sched_yield();
    }
  }
  return true;
}

}  // namespace

// A segment given back keeps its address space, so that the next one costs
// no mmap. Under a limit that counts address space (RLIMIT_AS; RLIMIT_DATA
// and strict overcommit too until 2026-12-07, and still a free segment's
// header; the estimate below counts as RLIMIT_AS does) that kept a program whose small blocks
// had filled the limit, all freed and trimmed, from ever getting a block
// over 2 MiB again: every mapping was refused (a review, 2026-12-06:
// 4000-byte blocks to a 400 MiB limit, then 8 MB blocks: 0 MiB, glibc 350).
//
// A free segment's header may still be read by a thread that freed its
// last slices a moment ago (ReleasePage reads used_slices and the heap
// after ReleasePageSlices; FreeSlices' notice reads the heap): that was
// harmless while a segment stayed mapped, reading zeros or another heap's
// live header, and would fault once it is unmapped. Those reads run inside
// SegmentReadWindows, each opened before the slices that held the segment
// were freed, so every window that can still reach a segment chosen here
// was open when it was chosen (it went free after the slices). The segments
// are chosen and marked under the arena lock, unmapped only once every
// window open then has closed (WaitForSegmentReadWindows), and handed out
// by nobody meanwhile. Where one stays open for kReadWindowWaitMs (a
// thread preempted in it), nothing is unmapped.
//
// Not where the request could not fit even with every free segment gone:
// what ferry keeps mapped besides them (its live segments, huge blocks and
// cache, the segment map) is part of what the limit counts. A program that
// probed for a block too large to fit once a round lost its free segments
// each time, and paid for them again (a review's program: 350-400 ms a
// round under a 512 MiB limit, 115-150 without the probe).
size_t ArenaUnreserveFreeSegments(size_t wanted) {
  SpinLockHolder serialize(&g_unreserve_lock);
  const size_t limit = AddressSpaceLimit();
  const int64_t huge = g_counters.huge_bytes_live.load(std::memory_order_relaxed) +
                       g_counters.huge_bytes_cached.load(std::memory_order_relaxed);
  size_t kept_bytes = sizeof(g_segment_map) + (huge > 0 ? static_cast<size_t>(huge) : 0);
  {
    SpinLockHolder hold(&g_arena_lock);
    size_t free_bytes = 0;
    for (size_t i = 0; i < g_arena_count; ++i) {
      const Arena& arena = g_arenas[i];
      free_bytes += static_cast<size_t>(__builtin_popcount(arena.all & ~arena.used)) * kSegmentSize;
      kept_bytes += static_cast<size_t>(__builtin_popcount(arena.used)) * kSegmentSize;
    }
    if (free_bytes == 0 || (limit != SIZE_MAX && (kept_bytes >= limit || wanted > limit - kept_bytes))) return 0;
    for (size_t i = 0; i < g_arena_count; ++i) g_arenas[i].unmapping = g_arenas[i].all & ~g_arenas[i].used;
  }
  const bool quiet = WaitForSegmentReadWindows();
  size_t bytes = 0;
  {
    SpinLockHolder hold(&g_arena_lock);
    for (size_t i = 0; i < g_arena_count; ++i) {
      Arena& arena = g_arenas[i];
      for (uint32_t rest = quiet ? arena.unmapping : 0; rest != 0;) {
        const int first = __builtin_ctz(rest);
        const int count = __builtin_ctz(~(rest >> first));  // free segments in a row from `first`
        const uint32_t run = static_cast<uint32_t>(((uint64_t{1} << count) - 1) << first);
        rest &= ~run;
        const size_t run_bytes = static_cast<size_t>(count) * kSegmentSize;
        // Refused (splitting the range would pass vm.max_map_count): kept.
        if (!OsRelease(reinterpret_cast<void*>(arena.base + static_cast<size_t>(first) * kSegmentSize), run_bytes)) {
          continue;
        }
        arena.all &= ~run;
        arena.not_zero &= ~run;
        bytes += run_bytes;
        if (arena.all == 0) ++g_dead_arenas;
      }
      arena.unmapping = 0;
    }
  }
  if (bytes != 0) {
    CounterAdd(g_counters.arena_bytes_reserved, -static_cast<int64_t>(bytes));
    if (Verbose(1)) {
      DiagLine().Str("ferry: ").Dec(bytes >> 20).Str(" MiB of free segments unmapped to make room").WriteToStderr();
    }
  } else if (!quiet && Verbose(1)) {
    DiagLine().Str("ferry: free segments not unmapped: a thread stayed in a read of a header").WriteToStderr();
  }
  return bytes;
}

size_t ArenaEntriesForTest() {
  SpinLockHolder hold(&g_arena_lock);
  return g_arena_count;
}

void ArenaLockForFork() {
  g_unreserve_lock.LockForFork();
  g_arena_lock.LockForFork();
  g_map_lock.LockForFork();
}
void ArenaUnlockAfterFork() {
  g_map_lock.UnlockAfterFork();
  g_arena_lock.UnlockAfterFork();
  g_unreserve_lock.UnlockAfterFork();
}

}  // namespace ferry

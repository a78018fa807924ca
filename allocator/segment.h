// segment.h — ferry's data model: segments, slices, pages and blocks.
//
//  - A segment is kSegmentSize (4 MiB) of address space aligned to its size,
//    so the segment of any pointer is `p & ~(kSegmentSize - 1)`. Segments are
//    carved from larger arenas (arena.cc) and belong to one thread heap.
//  - A segment is 64 slices of 64 KiB. Slice 0 holds the Segment header,
//    which includes one Page record per slice.
//  - A page is a run of slices that serves one size class. Its record sits at
//    the page's first slice; the records of the other slices point back to it
//    (record_back), so a pointer finds its page in two loads.
//  - Blocks are the user's memory. A free block's first word links it into a
//    list, encoded with a per-process key (EncodeNext) so that a stray write
//    cannot steer the allocator and so that a freed block is recognisable.
//  - A huge block (> kLargeMax) has a segment of its own: a mapping that may be
//    larger than kSegmentSize, freed straight back to the OS.
//  - The segment map (one byte per 4 MiB of address space) tells a live ferry
//    segment from a foreign pointer in one load.
//
// Who touches what (DESIGN.md invariant 1): a page's free list, used,
// and its heap's queues are the owner thread's alone. Other threads reach a
// page only through `returned` (CAS push by a sorter, exchange by the owner)
// and the owning heap only through its inbox.
#ifndef FERRY_ALLOCATOR_SEGMENT_H_
#define FERRY_ALLOCATOR_SEGMENT_H_

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "common/base.h"

namespace ferry {

struct Heap;

inline constexpr int kSegmentShift = 22;
inline constexpr size_t kSegmentSize = size_t{1} << kSegmentShift;
inline constexpr int kSliceShift = 16;
inline constexpr size_t kSliceSize = size_t{1} << kSliceShift;
inline constexpr size_t kSlicesPerSegment = kSegmentSize / kSliceSize;  // 64
// Segments are handed out of reservations of this many (arena.cc).
inline constexpr size_t kSegmentsPerArena = 16;  // 64 MiB of address space
inline constexpr size_t kMaxPageSlices = 32;                           // 2 MiB
inline constexpr size_t kLargeMax = kMaxPageSlices * kSliceSize;        // 2 MiB
// Addresses the segment map covers. User space on x86-64 ends below 2^47,
// with 5-level paging too unless a mapping asks for a place above it, which
// ferry's never do; aarch64's may reach 2^48. The map is one byte per 4 MiB
// of this, in libferry's BSS: never resident where unused, but its address
// space counts against `ulimit -v` (64 MiB at 48 bits, 32 at 47).
#if defined(__x86_64__)
inline constexpr uintptr_t kAddressBits = 47;
#else
inline constexpr uintptr_t kAddressBits = 48;
#endif

// A free block: its first word holds the encoded next pointer.
struct Block {
  uintptr_t next_encoded;
};

enum class PageKind : uint8_t {
  kNone,   // free slice, or the segment header
  kSmall,  // a size class (small or medium), on its heap's queue unless full
  kLarge,  // one block on its own run of slices
  kHuge,   // one block on its own mapping
};

// Page::returned packs four things in one word, so that one CAS pushes a
// chain and one exchange takes it with its length (the owner never walks a
// returned chain to count it):
//   bit 0       kReturnedFull: the owner found the page full and let go of
//               it; returns collect on the page until every block is back
//               (then the pusher frees the page) or the owner takes it back
//   bit 1       kReturnedPosted: the page is on its owner's inbox (alone,
//               without kReturnedFull: every block is back, and the page
//               is its drainer's, or its last pusher's, to free)
//   bits 2..47  the chain's first block (blocks are 8-byte aligned, so bit
//               2 is always 0; segments lie below 2^47)
//   bits 48..63 blocks in the chain (a page holds at most 8192)
inline constexpr uintptr_t kReturnedFull = 1;
inline constexpr uintptr_t kReturnedPosted = 2;
inline constexpr int kReturnedCountShift = 48;
inline constexpr uintptr_t kReturnedChainMask =
    ((uintptr_t{1} << kReturnedCountShift) - 1) & ~(kReturnedFull | kReturnedPosted);

struct Block;
inline Block* ReturnedChain(uintptr_t word) {
  return reinterpret_cast<Block*>(word & kReturnedChainMask);
}
inline uint32_t ReturnedCount(uintptr_t word) {
  return static_cast<uint32_t>(word >> kReturnedCountShift);
}

// 256 bytes, so a slice index becomes a record address by a shift. Three
// cache lines, split by who writes them:
// - the first holds everything the free fast path reads, local or remote,
//   and nothing the owner writes on every allocation and free. A thread
//   freeing another's block then reads a line its owner rarely writes; with
//   `free` and `used` in it, each such free missed on the line the owner had
//   just written (producer/consumer: perf/RESULTS.md, 2026-12-03);
// - the second is the owner's (free, used, its queue links);
// - the third is written by other threads (a returned chain's push, an
//   inbox post), and by the owner only on its slow paths (taking the
//   chain, marking the page full). In the second line with `free`, each
//   push took the line the owner's next allocation reads, and that load
//   was a third of malloc's samples in producer/consumer
//   (perf/RESULTS.md, 2026-12-04).
// The rest is padding: the shift needs a power of two.
struct Page {
  // --- written by the owner when the page is made, read by any thread that
  // frees one of its blocks (ordered by the program's own hand-off of the
  // block), and so immutable while a block is out; except that realloc of
  // a large block, on whichever thread holds it, resizes its page in place
  // (slice_count too: ResizeLargeInPlace), which nobody else reads while
  // that one block is out ------------------------------------------------
  // Bytes of the page carved into blocks so far; the owner grows it, other
  // threads read it to reject pointers past it.
  std::atomic<uint32_t> carved_bytes;
  uint16_t reserved;       // blocks the page can hold (at most 8192)
  uint8_t size_class;
  PageKind kind;
  Heap* heap;              // owner; nullptr for kNone and kHuge
  uintptr_t start;         // address of block 0
  // ceil(2^64 / block_size): an offset below 2^32 is a multiple of the block
  // size exactly when offset * divisor_magic (mod 2^64) < divisor_magic.
  uint64_t divisor_magic;
  size_t block_size;
  uint8_t slice_count;     // slices this page spans (a large block's: see below)
  uint8_t in_full;         // owner: off its queue because it was full
  // On a continuation slice: how far back the page's record is, in bytes
  // (RecordBack), so that PageOf subtracts it without scaling; 0 on a page's
  // first slice and on free slices.
  uint16_t record_back;
  uint16_t capacity;       // owner: blocks carved so far
  // --- second cache line: the owner's ---------------------------------------
  // Blocks ready to hand out (decoded pointer). The owner's frees go on its
  // head, so that the next allocation of the class gets the block it freed
  // last, while it is still in cache (see Free in heap.h).
  alignas(64) Block* free;
  uint16_t used;           // owner: blocks handed out and not yet back on a list
  // Owner: 0, or the page is empty, behind its class's queue head, and in
  // its heap's standby_slots[standby - 1] (KeepOnStandby in heap.cc);
  // cleared as the page leaves the queue or becomes its head.
  uint8_t standby;
  Page* queue_next;        // owner only
  Page* queue_prev;
  // --- third cache line: written by other threads -----------------------------
  alignas(64) std::atomic<uintptr_t> returned;  // remote frees: chain, count and marks (above)
  Page* inbox_next;        // link in the owner's inbox
  // `used` when the owner marked the page full (written before the mark):
  // what the returns to a full page count against, readable by any thread.
  std::atomic<uint32_t> used_at_full;
  // The housekeeping's (GiveBackWaitingChains, heap.cc): the returned word
  // it last saw on the page, and since when (kChainGivenBack: it gave that
  // chain's memory back). Whoever takes the chain (AdoptReturned) or makes
  // the page clears the word, so that a chain of the same first block and
  // length that comes back later is not taken for the one given back.
  std::atomic<uintptr_t> returned_seen;
  std::atomic<uint64_t> returned_seen_ms;
  // --- fourth cache line: whoever has the heap to itself (its owner, or
  // the collector of an abandoned one), on slow paths only ----------------
  // `free` as it was when the free blocks on the list had given their
  // memory back (PurgeFreeBlockInteriors, heap.cc): in a heap nobody owns,
  // blocks come onto the list only in front of it. Cleared when the page is
  // made and when it is marked full (its list empty).
  alignas(64) Block* purged_free;
  char padding_to_power_of_two[56];

  uintptr_t end() const { return start + size_t{slice_count} * kSliceSize; }
};
static_assert(sizeof(Page) == 256);
inline constexpr int kPageRecordShift = 8;  // log2(sizeof(Page))
static_assert(sizeof(Page) == size_t{1} << kPageRecordShift);

// Page::record_back of the record `slices` after a page's first.
inline uint16_t RecordBack(size_t slices) { return static_cast<uint16_t>(slices * sizeof(Page)); }
static_assert((kSlicesPerSegment - 1) * sizeof(Page) <= UINT16_MAX, "RecordBack fits record_back");
static_assert(offsetof(Page, record_back) < 64 && offsetof(Page, free) == 64,
              "the free path's checks read one line, which holds nothing written per allocation");
static_assert(offsetof(Page, queue_prev) + sizeof(Page*) <= 128 && offsetof(Page, returned) == 128 &&
                  offsetof(Page, returned_seen_ms) + sizeof(uint64_t) <= 192,
              "returns by other threads write a line of their own, not the owner's");

enum class SegmentKind : uint8_t { kNormal, kHuge };

struct alignas(64) Segment {
  // First, so that a slice's record is at segment + (slice << kPageRecordShift): one shift
  // fewer on the free path. Record 0 describes the header slice (kNone).
  Page pages[kSlicesPerSegment];
  SegmentKind kind;
  std::atomic<bool> huge_freed;  // kHuge: set once, by the free that unmaps it
  // kHuge: the tail of its mapping past the block's size and a quarter
  // waits, resident, in the table of resident tails for the housekeeping
  // to decommit (huge.cc, KeepTailResidentForAWhile). Written under that
  // table's lock.
  std::atomic<bool> tail_resident;
  // The heap whose list holds the segment (kNormal). Pages of other heaps
  // may live in it and read this to tell it is not theirs.
  std::atomic<Heap*> heap;
  // The segment is its heap's spare (Heap::spare; written under the heap's
  // segments_lock): empty on purpose, so the purge does not count it as a
  // segment to give back (g_idle_empty_segments).
  std::atomic<bool> is_spare;
  // kNormal: slices [0, writable_slices) are writable, the rest inaccessible
  // and uncharged (arena.cc, CommitSlicesUpTo). Set when the segment is
  // handed out, raised by a holder of slices past it, lowered by the purge
  // to a commit step past every slice in use (UncommitSuffix).
  std::atomic<uint8_t> writable_slices;
  // Bit i: slice i belongs to a page (bit 0: the header), or the pool holds
  // it for a moment while it gives its memory back to the OS. The owner
  // claims free slices and releases its pages' slices with atomic
  // operations, so the pool can do its part without stopping the owner.
  std::atomic<uint64_t> used_slices;
  // Bit i: slice i may hold committed memory (set when claimed, cleared when
  // the pool decommits it).
  std::atomic<uint64_t> dirty_slices;
  // Bit i: slice i starts a page of a class whose free blocks give their
  // memory back past their first OS page (kFreeBlockPurgeMin, heap.cc):
  // where the housekeeping looks for returned chains that wait on pages of
  // owners who do not take them (GiveBackWaitingChains). Set as the page
  // is made, cleared as it is released; a hint, the returned word decides.
  std::atomic<uint64_t> large_block_pages;
  // When slice i was last freed (OsMonotonicMs, written before the bit in
  // used_slices is cleared): the purge gives a free dirty slice back to the
  // OS once it has been free for FERRY_PURGE_DELAY_MS.
  std::atomic<uint64_t> freed_ms[kSlicesPerSegment];
  // The heap whose page last held slice i, written as the page is released
  // (before freed_ms): for a few ms after, only that heap takes the slice
  // if it is still committed, but as a last resort (TakeFreeSlices).
  std::atomic<const Heap*> released_by[kSlicesPerSegment];
  Segment* heap_next;          // the owner's list of segments
  Segment* heap_prev;
  uint32_t room_index;         // kNormal: its entry in the room index (arena.cc, SegmentRoom)
  void* mapping;               // kHuge: the whole OS mapping
  size_t mapping_size;
};
static_assert(sizeof(Segment) <= kSliceSize, "the header must fit in slice 0");

FERRY_ALWAYS_INLINE Segment* SegmentOf(uintptr_t p) {
  return reinterpret_cast<Segment*>(p & ~(kSegmentSize - 1));
}

// The page record for an address inside a live segment; `segment` must be
// SegmentOf(p) (the record's offset is taken from p alone). The slice's record
// is at byte (slice index << kPageRecordShift) of the segment, and a segment
// is aligned to its size, so one shift and one mask of `p` give that offset;
// record_back is in bytes for the same reason (three instructions fewer on
// the free path than indexing and scaling).
FERRY_ALWAYS_INLINE Page* PageOf(Segment* segment, uintptr_t p) {
  static_assert(offsetof(Segment, pages) == 0);
  constexpr uintptr_t kRecordMask = (kSlicesPerSegment - 1) << kPageRecordShift;
  const uintptr_t record = reinterpret_cast<uintptr_t>(segment) +
                           ((p >> (kSliceShift - kPageRecordShift)) & kRecordMask);
  return reinterpret_cast<Page*>(record - reinterpret_cast<const Page*>(record)->record_back);
}

// --- free-list pointer encoding --------------------------------------------

// One XOR with a per-process random key: enough that a user's data almost
// never decodes to a link of its own page (so a freed block is recognisable)
// and that a stray write cannot name an address without knowing the key.
// Every link is checked against its page as it is followed (PopBlock, the
// walk in AdoptOntoLists, and OrderChain's, which also wants a block start
// and no block twice), so even a write that guesses the key keeps
// the allocator inside that page's carved blocks. A rotate-and-add encoding
// cost five more instructions per pair on the fast paths for little more.
struct FreeListKeys {
  uint64_t xor_key;
};
extern FreeListKeys g_keys;

FERRY_ALWAYS_INLINE uintptr_t EncodeNext(const Block* next) {
  return reinterpret_cast<uintptr_t>(next) ^ g_keys.xor_key;
}
FERRY_ALWAYS_INLINE Block* DecodeNext(uintptr_t encoded) {
  return reinterpret_cast<Block*>(encoded ^ g_keys.xor_key);
}

// True when `b` lies in the part of the page carved into blocks.
FERRY_ALWAYS_INLINE bool IsInCarvedRange(const Page* page, const Block* b) {
  return reinterpret_cast<uintptr_t>(b) - page->start <
         page->carved_bytes.load(std::memory_order_relaxed);
}

// True when `b`'s first word decodes to a list link of this page (or to the
// end of a list): the block is, with overwhelming likelihood, already free.
// A live block's first word is zeroed when it is handed out, and a user value
// passes only by matching the secret encoding.
FERRY_ALWAYS_INLINE bool LooksFree(const Page* page, const Block* b) {
  const Block* next = DecodeNext(b->next_encoded);
  return next == nullptr || IsInCarvedRange(page, next);
}

// What a remote free writes into a block's first word while the block waits
// in a batch: it decodes to a link inside the page (start + 1, which no real
// link is), so the block already looks free to any second free of it, local
// or remote, and the sorter can tell the block was not touched meanwhile.
FERRY_ALWAYS_INLINE uintptr_t RemoteFreeMark(const Page* page) {
  return EncodeNext(reinterpret_cast<const Block*>(page->start + 1));
}

// True when `p` is the start of a block the page has carved.
FERRY_ALWAYS_INLINE bool IsBlockStart(const Page* page, uintptr_t p) {
  const uint64_t offset = p - page->start;
  return offset < page->carved_bytes.load(std::memory_order_relaxed) &&
         offset * page->divisor_magic < page->divisor_magic;
}

// --- the segment map ---------------------------------------------------------

enum : uint8_t {
  kMapNone = 0,
  kMapSegment = 1,          // a segment header starts at this 4 MiB chunk
  kMapHugeAlignedBlock = 2  // a huge block over-aligned to >= 4 MiB starts
                            // here; its header is one chunk below
};
inline constexpr size_t kMapEntries = size_t{1} << (kAddressBits - kSegmentShift);
inline constexpr size_t kMapPageBytes = 4096;
extern std::atomic<uint8_t> g_segment_map[kMapEntries];

FERRY_ALWAYS_INLINE uint8_t SegmentMapLookup(uintptr_t p) {
  const uintptr_t chunk = p >> kSegmentShift;
  if (FERRY_UNLIKELY(chunk >= kMapEntries)) return kMapNone;
  return g_segment_map[chunk].load(std::memory_order_relaxed);
}
// Makes the map's entries for [begin, begin + size) writable: every range
// ferry reserves for segments or huge blocks, before any entry of it is set
// (the map is read-only elsewhere, so that it costs no commit charge);
// false when the kernel refused (strict overcommit's limit, RLIMIT_DATA):
// then the range cannot be used. Once writable, a page of the map stays so.
bool SegmentMapCommit(uintptr_t begin, size_t size);
void SegmentMapSet(uintptr_t chunk_address, uint8_t value);
// Pages of the map made writable, or SIZE_MAX where it stayed writable
// whole (or nothing was reserved yet). For tests.
size_t SegmentMapWritablePagesForTest();

// --- arenas -------------------------------------------------------------------

// The bits of slices [first, first + count) in a segment's slice bitmaps.
inline constexpr uint64_t SliceRun(size_t first, size_t count) {
  return (count == kSlicesPerSegment ? ~uint64_t{0} : (uint64_t{1} << count) - 1) << first;
}

// The first run of `count` free slices of `segment` starting at a multiple
// of `align` (for a single slice, one with no free neighbour first, so that
// runs stay whole for pages of several slices), or -1; with `dirty_only`, only a run that may still be
// committed (reusing it keeps the resident set from growing while other
// free slices wait for their purge).
int FindFreeSlices(const Segment* segment, size_t count, size_t align, bool dirty_only,
                   uint64_t allowed = ~uint64_t{0});
// Takes the slices [start, start + count) if they are still free (another
// heap, or the pool purging, may take them first); marks them dirty.
// *was_clean (if given): none of them was dirty, so they read as zeros
// (never touched, decommitted with MADV_DONTNEED, or mapped again
// inaccessible with the segment's release).
// False too where the slices could not be made writable (the commit
// limit: strict overcommit, ulimit -d); then they stay free, and
// *refused (if given) is set.
bool TryTakeSlices(Segment* segment, int start, size_t count, bool* was_clean = nullptr,
                   bool* refused = nullptr);
// FindFreeSlices, then TryTakeSlices, again while another thread takes the
// run found first (a heap of another list, the purge, a large block growing
// in place): the first slice of the run taken, or -1 when none is left.
// With `claim`, a run holding a committed slice that another heap's page
// released less than a few ms ago is not taken (arena.cc,
// kForeignSlicesSettleMs): that heap's thread likely has it in its cache,
// about to take it again. *passed_fresh (if given) is set where a run was
// left out so. Without `claim`, any free run (a last resort).
struct SliceClaim {
  const Heap* heap;     // the claiming heap
  uint64_t now_ms = 0;  // the clock, read once a slice needs it
};
int TakeFreeSlices(Segment* segment, size_t count, size_t align, bool dirty_only, bool* was_clean,
                   SliceClaim* claim = nullptr, bool* passed_fresh = nullptr);
// What every claim of slices records besides used_slices: they may hold
// committed memory from now on.
inline void NoteSlicesClaimed(Segment* segment, uint64_t run) {
  segment->dirty_slices.fetch_or(run, std::memory_order_relaxed);
}

// used_slices of a segment with no free slice: what a heap's claims skip
// (Heap::claim_from).
inline constexpr uint64_t kSegmentFull = ~uint64_t{0};

// A segment that had no free slice has some now: its heap's claims look at
// it again (heap.cc).
void NoteRoomInFullSegment(Segment* segment);

// The longest run of free slices that `used` (a used_slices value) leaves;
// the header slice is never free.
inline size_t LongestFreeRun(uint64_t used) {
  uint64_t free = ~used & ~uint64_t{1};
  size_t longest = 0;
  for (; free != 0; free &= free >> 1) ++longest;
  return longest;
}

// The room index (arena.cc): per segment, and per arena of segments, a
// bound on the longest run of free slices, so that a search for free slices
// anywhere looks only at segments that may have a run long enough. Without
// it every claim that a heap's own segments could not serve read the header
// of every live segment, under the arena lock: 960 KiB blocks took 3 s per
// new 4 GiB at 32 GiB of heap, 13 s at 44 (glibc: 0.08 s). Whoever frees
// slices raises the bounds (after the clear, so that a search lowering them
// meanwhile either sees the clear or is raised past); the search lowers
// them to what it finds. `room_index`: the segment's, read before the
// clear (which may let the segment empty and go); `used_after`: used_slices
// right after the clear.
void NoteSlicesFreed(uint32_t room_index, uint64_t used_after);
// The segment's bound: it has no run of free slices longer.
size_t SegmentRoom(const Segment* segment);
// What a search that found no run long enough in the segment does (under
// the arena lock): sets the bound to the run the segment has now. Returns
// the bound. For tests.
size_t LowerSegmentRoomForTest(Segment* segment);
// The same, then for the segment's arena (as a search that finds no run
// long enough in any of its segments). For tests.
void LowerRoomForTest(Segment* segment);
// The bound of the segment's arena. For tests.
size_t ArenaRoomForTest(const Segment* segment);

// Open SegmentReadWindows, counted in the slot of the epoch each opened
// in (arena.cc): an unmapping moves the epoch on, so that it waits only for
// the windows opened before, while new ones count in the other slot.
struct SegmentReadWindows {
  std::atomic<uint32_t> epoch;
  alignas(64) std::atomic<uint64_t> open[2];
};
extern SegmentReadWindows g_segment_read_windows;
// This thread's open windows, by slot: what a fork child's count starts
// from (the forking thread may be in one: fork() from a signal handler
// that interrupted a free).
extern __thread uint32_t tl_segment_read_windows[2] __attribute__((tls_model("initial-exec")));

// Held by a thread that reads a segment's header after it may have freed
// the last slices that kept the segment from going back to its arena (and
// from there, under an address-space limit, to the OS:
// ArenaUnreserveFreeSegments). Opened before those slices are freed;
// windows nest. Costs two atomic operations on a shared line, so only for
// page and segment releases, never for a block.
class SegmentReadWindow {
 public:
  SegmentReadWindow() : slot_(g_segment_read_windows.epoch.load(std::memory_order_relaxed) & 1) {
    ++tl_segment_read_windows[slot_];
    g_segment_read_windows.open[slot_].fetch_add(1, std::memory_order_seq_cst);
  }
  ~SegmentReadWindow() {
    g_segment_read_windows.open[slot_].fetch_sub(1, std::memory_order_release);
    --tl_segment_read_windows[slot_];
  }
  SegmentReadWindow(const SegmentReadWindow&) = delete;
  SegmentReadWindow& operator=(const SegmentReadWindow&) = delete;

 private:
  const uint32_t slot_;
};
// Windows open now, in both slots. For tests.
inline uint64_t SegmentReadWindowsOpen() {
  return g_segment_read_windows.open[0].load(std::memory_order_acquire) +
         g_segment_read_windows.open[1].load(std::memory_order_acquire);
}

// Frees the slices [start, start + count), stamped `now_ms` for the purge
// (ArenaPurge). The stamps are written before the release that clears the
// bits, which the purge acquires.
// Clears `run` in used_slices and notes the room it leaves; the caller is
// in a SegmentReadWindow (the notice reads the header after the clear,
// which may have been the segment's last hold).
inline void ClearSlicesAndNoteRoom(Segment* segment, uint64_t run) {
  // seq_cst: the read of the segment's heap in the notice comes after (a
  // release alone would let it run ahead of the clear on some CPUs), and so
  // does the room index's (NoteSlicesFreed).
  const uint32_t room_index = segment->room_index;
  const uint64_t used = segment->used_slices.fetch_and(~run, std::memory_order_seq_cst);
  NoteSlicesFreed(room_index, used & ~run);
  if (FERRY_UNLIKELY(used == kSegmentFull)) NoteRoomInFullSegment(segment);
}

inline void FreeSlices(Segment* segment, size_t start, size_t count, uint64_t now_ms) {
  SegmentReadWindow window;
  for (size_t k = 0; k < count; ++k) segment->freed_ms[start + k].store(now_ms, std::memory_order_relaxed);
  ClearSlicesAndNoteRoom(segment, SliceRun(start, count));
}

// used_slices of a segment that its owner is giving back: every slice looks
// taken, so no other heap claims one meanwhile.
inline constexpr uint64_t kSegmentDetached = ~uint64_t{0};

// A zeroed segment with its header slice and the slices in `taken` used
// (and dirty), or nullptr when the OS refuses. Its header is written before
// any other heap can see it, so the caller's slices are its own. *zeroed:
// its slices read as zeros (false for a segment whose decommit the kernel
// refused when it came back: then every slice is marked dirty).
Segment* ArenaAllocateSegment(uint64_t taken, bool* zeroed = nullptr);
// The process's address-space limit (the lower of RLIMIT_AS and
// RLIMIT_DATA; SIZE_MAX for none) when this was first asked or ferry last
// took a segment: read again at every segment taken, so a limit set later
// counts from the next segment on (two system calls per 4 MiB of segments).
size_t AddressSpaceLimit();
// The limit is low enough that arenas are reserved a quarter at a time:
// segments are scarce, and heaps share them.
bool AddressSpaceIsScarce();
// Gives back a segment whose used_slices the caller set to kSegmentDetached;
// its header is decommitted, its slices inaccessible again (uncharged).
void ArenaReleaseSegment(Segment* segment);
// Unmaps every segment no heap holds (given back and inaccessible, but still
// reserved), once no SegmentReadWindow that could reach one is open; an
// arena whose segments are all gone is dead, and its entry takes the next
// reservation. For a mapping the address space would not take (ulimit -v):
// returns the bytes unmapped. The caller holds no allocator lock and is in
// no window.
// `wanted`: the bytes the caller will ask for; nothing is unmapped where
// they could not fit under the address-space limit even then.
size_t ArenaUnreserveFreeSegments(size_t wanted);
// Arena entries ever used, dead ones among them. For tests.
size_t ArenaEntriesForTest();
// About how many free slices, across all segments, may still hold committed
// memory. A hint kept without locks: page releases add, claims, purges and
// segment releases subtract, and every purge run sets it right. When it is
// 0 a claim does not search the segments (under the arena lock) for such
// slices; nor, until the next release, does one as long as a search that
// found none.
// Not reset to zero by a fruitless search: a claim of 15 slices went to clean
// memory after a claim of 32 had found no run while 30 committed ones were
// free (2026-12-04).
extern std::atomic<int64_t> g_free_dirty_slices_hint;
// What a page's release adds to the hint: `count` slices freed that may
// still be committed (and a search for them may find a run again).
void NoteDirtySlicesFreed(size_t count);

// Free slices anywhere: takes `count` free slices aligned to `align` in any
// live segment, whoever's list it is on (pages belong to heaps, slices to
// nobody), so that memory one heap's threads freed serves another heap;
// with `dirty_only`, only slices that may still be committed; with
// `claim`, none left to another heap for now (TakeFreeSlices). Returns
// the segment and sets *start, or returns nullptr.
Segment* ArenaTakeSlicesAnywhere(SliceClaim* claim, size_t count, size_t align, bool dirty_only, int* start,
                                 bool* was_clean = nullptr);
// The pool's purge: gives back to the OS (MADV_DONTNEED) the free slices of
// every arena segment that have stayed free for delay_ms (all of them when
// `urgent`), those free for less than kEagerWindowMs only up to
// kEagerBytesPerRun a run, plus half of those that no claim needed since
// the last run (arena.cc). Slices are held as used while their memory
// goes, so an owner never claims a slice mid-purge. Returns the bytes
// decommitted.
// Sets g_idle_empty_segments when it passes a segment that can go back.
size_t ArenaPurge(uint64_t now_ms, uint64_t delay_ms, bool urgent);
// The free slices of live segments that may hold committed memory, counted
// under the arena lock. For tests.
size_t FreeDirtySlicesForTest();
// What the arenas hold now, for mallinfo: the live segments' address space
// and, of it, the slices in use (headers, pages and large blocks; a page's
// free blocks count as in use). One walk under the arena lock.
struct ArenaUsage {
  uint64_t segment_bytes;
  uint64_t used_slice_bytes;
};
ArenaUsage ArenaUsageNow();
// The budget for slices freed recently: a program that frees and takes back
// much memory every few runs would otherwise fault it all in again each
// time (with the default delay, 0). 1 MiB a run (50 ms apart) is at most
// 20 MiB a second faulted in again, some 5k page faults. Producer/consumer
// purges less than that, and keeps the peak RSS the early purge buys it;
// with 8 MiB (until 2026-12-04) larson gave back and faulted in again 35
// MiB in its half second and ran 8% slower, phases 23% (perf/RESULTS.md).
// Slices free for the whole window go back without a budget, so memory
// left idle is back with the OS as soon.
inline constexpr uint64_t kEagerWindowMs = 250;
inline constexpr size_t kEagerBytesPerRun = size_t{1} << 20;
// How long a segment with nothing but its header in use has been so: the
// time since the latest of its slices was freed. Such a segment waits on
// its heap's list until the housekeeping gives it back
// (ReleaseIdleEmptySegments, heap.cc) once it is this old: kEagerWindowMs,
// or FERRY_PURGE_DELAY_MS if longer, so that a heap that fills it again
// soon finds it still there. (Where no reclaimer thread ticks, the owner
// keeps a few it emptied itself for as long, and gives them back on its
// own slow paths: KeepEmptySegmentLocked, heap.cc.)
inline uint64_t EmptySegmentIdleMs(const Segment* segment, uint64_t now_ms) {
  uint64_t latest = 0;
  for (size_t i = 1; i < kSlicesPerSegment; ++i) {
    const uint64_t freed = segment->freed_ms[i].load(std::memory_order_relaxed);
    if (freed > latest) latest = freed;
  }
  return now_ms >= latest ? now_ms - latest : 0;
}
inline uint64_t EmptySegmentKeepMs(uint64_t delay_ms) {
  return delay_ms > kEagerWindowMs ? delay_ms : kEagerWindowMs;
}
// Set by the purge when it saw a segment that has had nothing but its
// header in use for EmptySegmentKeepMs (any such segment when `urgent`);
// the housekeeping clears it and gives those segments back.
extern std::atomic<bool> g_idle_empty_segments;
// Decommits the slices [first, first + count) of a segment whose caller holds
// them as used; afterwards they are no longer dirty. False when the kernel
// refused (locked memory): then they stay dirty.
bool SegmentDecommitSlices(Segment* segment, size_t first, size_t count);
// For fork: hold and release the arena lock around fork().
void ArenaLockForFork();
void ArenaUnlockAfterFork();
// Freed huge mappings kept for reuse (huge.cc) that have waited
// EmptySegmentKeepMs (all of them when `urgent`) go back to the OS, and the
// resident tails of live huge blocks' mappings that have waited as long are
// decommitted.
void ReleaseIdleHugeMappings(uint64_t now_ms, bool urgent);
// A reservation of `size` bytes failed: unless `size` could never fit
// (OsReservationMayFitAfterRelease), every mapping the huge cache holds
// goes back to the OS at once; false when nothing went (then a retry is
// pointless).
bool GiveBackHugeCacheForRoom(size_t size);
// OsReserve, and where it fails, once more after GiveBackHugeCacheForRoom,
// and, for a huge mapping (alignment kSegmentSize), after
// MakeRoomInAddressSpace (heap.h); a huge mapping's segment map entries
// are writable (SegmentMapCommit), or it is given back and nullptr returned.
void* OsReserveMakingRoom(size_t size, size_t alignment, bool overcommit_check = false);
// In a fork child: no reclaimer thread will give back what the huge cache
// holds, so it keeps no more than where none ticks (the parent's may hold
// as much as its huge blocks).
void TrimHugeCacheInChild();
// Whether `address` belongs to a freed huge block the segment map no longer
// knows: at its start or elsewhere in a mapping the huge cache holds, or at
// the start of one of the last 64 huge blocks freed, whose mapping went back
// to the OS. For diagnostics only.
enum class FreedHugeHit { kNone, kBlockStart, kInside };
FreedHugeHit FindFreedHuge(uintptr_t address);
// The bytes a huge block of n bytes spans in its mapping, after its header:
// n rounded up to the OS page, then to an eighth of the power of two below
// it (at most 1/8 more than asked; sizes that round alike share mappings in
// the huge cache, and a realloc within the rounding needs no system call).
size_t HugeBlockBytes(size_t n);
// For fork: hold and release the huge cache's locks around fork().
void HugeCacheLockForFork();
void HugeCacheUnlockAfterFork();
// Whether tails of huge blocks' mappings wait resident for the
// housekeeping to decommit them (ReleaseIdleHugeMappings does).
bool HugeTailsWaitResident();
// In a fork child, after the huge cache's locks: the table of resident
// tails emptied (their ranges decommitted) without a write to any header.
void ForgetResidentTailsInChild();

}  // namespace ferry

#endif  // FERRY_ALLOCATOR_SEGMENT_H_

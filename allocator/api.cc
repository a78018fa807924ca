// api.cc — the C API of ferry.h, on top of the heap fast paths.
#include <errno.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "allocator/heap.h"
#include "common/diag.h"
#include "common/options.h"
#include "common/stats.h"
#include "common/valgrind.h"
#include "reclaimer/pool.h"
#include "ferry.h"

using ferry::Allocate;
using ferry::FreeUserBlock;
using ferry::VgAllocated;

namespace {

constexpr size_t kMaxRequest = PTRDIFF_MAX;

// Every entry point funnels impossible sizes through here, so the fast
// paths below never see one.
FERRY_COLD void* FailTooLarge() {
  errno = ENOMEM;
  return nullptr;
}

// What realloc asks for when it must move a block to `size` bytes. A block
// outgrown by less than a quarter of its size is being appended to (a log,
// a string builder growing by a few hundred bytes at a time): its new home
// gets half as much again as asked for, so that the caller's next steps
// fit. Size classes are only 12.5% apart, and without that room such a
// buffer was copied at nearly every class it crossed (realloc benchmark:
// memmove took 22% of the samples, against 8% under tbbmalloc; a quarter
// more cut the bytes copied by 42%, half as much by another 14%).
// Larger jumps are the caller's own geometric growth and get what they ask
// for. Large blocks get the room too, up to kLargeMax: there it is whole
// slices, which cost no resident memory until written, and a buffer
// appended to through the large range was copied at every slice boundary
// another block held (by eighths from 64 B to 2.1 MiB, 7.7 MiB resident
// after, 6.3 with the room; mimalloc 5.1). Huge blocks grow in place by
// mremap (ReallocHuge). The room is rounded up to a multiple of 16 (as
// every class above 8 bytes is).
constexpr size_t GrowthRequest(size_t size, size_t usable) {
  const bool appending = size > usable && size - usable < usable / 4;
  if (!appending || size > ferry::kLargeMax) return size;
  const size_t roomy = (size + size / 2 + 15) & ~size_t{15};
  return roomy < ferry::kLargeMax ? roomy : ferry::kLargeMax;
}

// The room is a guess at the caller's next steps, never a reason to fail:
// where the address space has a run for the size but none for the room
// (near an address-space limit), realloc gets what a malloc of the size
// would. errno is the caller's again when that works.
FERRY_COLD void* AllocateWithoutTheRoom(size_t size, int caller_errno) {
  void* p = Allocate(size);
  if (p != nullptr) errno = caller_errno;
  return p;
}

}  // namespace

namespace ferry {

void* Realloc(void* ptr, size_t size, const void* caller) {
  if (ptr == nullptr) return ferry_malloc(size);
  // A freed block kept in place below would be live and free at once, and
  // handed out again by the next malloc: it must be live. Checked before
  // the size, so that a bad pointer is reported whatever size comes with it
  // (a review, 2026-12-06: one with a size over PTRDIFF_MAX got NULL and
  // ENOMEM, and the double free went unreported).
  const size_t usable = ferry::UsableSize(reinterpret_cast<uintptr_t>(ptr), "realloc", /*require_live=*/true);
  if (FERRY_UNLIKELY(size > kMaxRequest)) return FailTooLarge();
  // Keep the block when the new size fits and does not waste more than half
  // (it has the alignment malloc gives that size: 16 for every block above
  // 8 bytes). Not under memcheck, which would need the block's old size to
  // follow.
  if (!ferry::kValgrind && size <= usable && size >= usable / 2) {
    return ptr;
  }
  if (!ferry::kValgrind && usable > ferry::kLargeMax && size > ferry::kLargeMax) {
    if (void* remapped = ferry::ReallocHuge(ptr, size)) return remapped;
  }
  if (!ferry::kValgrind && usable > ferry::kMediumMax && usable <= ferry::kLargeMax &&
      size > ferry::kMediumMax && size <= ferry::kLargeMax && ferry::ResizeLargeInPlace(ptr, size)) {
    return ptr;
  }
  const size_t request = GrowthRequest(size, usable);
  const int caller_errno = request != size ? errno : 0;  // the room's failure would overwrite it
  void* fresh = Allocate(request);
  if (FERRY_UNLIKELY(fresh == nullptr) && request != size) fresh = AllocateWithoutTheRoom(size, caller_errno);
  if (fresh == nullptr) return nullptr;  // errno is ENOMEM; ptr stays valid
  VgAllocated(fresh, size);
  ferry::VgQuietBegin();  // the copy may read past what the caller wrote
  memcpy(fresh, ptr, size < usable ? size : usable);
  ferry::VgQuietEnd();
  if (usable > ferry::kMediumMax && usable <= ferry::kLargeMax && size > ferry::kLargeMax) {
    ferry::DecommitOutgrownLargeBlock(ptr);
  }
  FreeUserBlock(ptr, "realloc", caller);
  return fresh;
}

}  // namespace ferry

namespace {

// "ferry: free_sized(0x…): size N is larger than the block (M bytes): not the
// size that was asked for", then abort.
[[noreturn]] FERRY_COLD void ReportWrongFreeSize(const char* call, void* ptr, size_t size, size_t usable) {
  ferry::DiagLine().Str("ferry: ").Str(call).Str("(").Ptr(ptr).Str("): size ").Dec(size)
      .Str(" is larger than the block (").Dec(usable).Str(" bytes): not the size that was asked for")
      .WriteToStderr();
  abort();
}

}  // namespace

namespace ferry {

// ferry needs no size to free a block, so it checks the one it is given: a
// size the block cannot hold is a caller's bookkeeping error (which would
// free the wrong size class on an allocator that trusts it). A smaller size
// cannot be told apart from a correct one: every request rounds up.
void FreeSized(void* ptr, size_t size, const char* call, const void* caller) {
  if (ptr != nullptr) {
    const size_t usable = UsableSize(reinterpret_cast<uintptr_t>(ptr), call);
    if (FERRY_UNLIKELY(size > usable)) ReportWrongFreeSize(call, ptr, size, usable);
  }
  FreeUserBlock(ptr, call, caller);
}

}  // namespace ferry

extern "C" {

// Sizes past PTRDIFF_MAX need no test here: they are huge, and the huge
// path refuses anything it could never map (ENOMEM).
FERRY_EXPORT void* ferry_malloc(size_t size) { return VgAllocated(Allocate(size), size); }

FERRY_EXPORT void* ferry_calloc(size_t count, size_t size) {
  size_t total;
  if (FERRY_UNLIKELY(__builtin_mul_overflow(count, size, &total) || total > kMaxRequest)) {
    return FailTooLarge();
  }
  if (total > ferry::kMediumMax && total <= ferry::kLargeMax) {
    // Cleared there unless its slices read as zeros already.
    return VgAllocated(ferry::AllocateLargeZeroed(total), total, /*zeroed=*/true);
  }
  if (total > ferry::kLargeMax) {
    return VgAllocated(ferry::AllocateHugeZeroed(total), total, /*zeroed=*/true);
  }
  void* p = Allocate(total);
  if (FERRY_LIKELY(p != nullptr)) {
    VgAllocated(p, total, /*zeroed=*/true);
    memset(p, 0, total);
  }
  return p;
}

FERRY_EXPORT void* ferry_realloc(void* ptr, size_t size) { return ferry::Realloc(ptr, size, nullptr); }

FERRY_EXPORT void ferry_free(void* ptr) { FreeUserBlock(ptr, "free"); }

FERRY_EXPORT void ferry_free_sized(void* ptr, size_t size) { ferry::FreeSized(ptr, size, "free_sized", nullptr); }

FERRY_EXPORT void* ferry_aligned_alloc(size_t alignment, size_t size) {
  if (FERRY_UNLIKELY(!ferry::IsPowerOfTwo(alignment))) {
    errno = EINVAL;
    return nullptr;
  }
  if (FERRY_UNLIKELY(size > kMaxRequest || alignment > kMaxRequest / 2)) return FailTooLarge();
  return VgAllocated(ferry::AllocateAligned(alignment, size), size);
}

FERRY_EXPORT int ferry_posix_memalign(void** out, size_t alignment, size_t size) {
  if (!ferry::IsPowerOfTwo(alignment) || alignment % sizeof(void*) != 0) return EINVAL;
  if (size > kMaxRequest || alignment > kMaxRequest / 2) return ENOMEM;
  const int saved_errno = errno;
  void* p = ferry::AllocateAligned(alignment, size);
  errno = saved_errno;
  if (p == nullptr) return ENOMEM;
  *out = VgAllocated(p, size);
  return 0;
}

FERRY_EXPORT size_t ferry_usable_size(const void* ptr) {
  if (ptr == nullptr) return 0;
  return ferry::UsableSize(reinterpret_cast<uintptr_t>(ptr), "usable_size");
}

FERRY_EXPORT void ferry_flush(void) { ferry::FlushThisThread(); }

FERRY_EXPORT void ferry_collect(void) { ferry::CollectThisThread(); }

FERRY_EXPORT void ferry_stats_get_sized(ferry_stats_t* out, size_t size) {
  if (out == nullptr || size == 0) return;
  ferry_stats_t stats;
  memset(&stats, 0, sizeof(stats));
  stats.version = FERRY_VERSION;
  // The pool's counts first: a reclaimer counts a batch after its blocks
  // (blocks_returned), so a snapshot that counts a batch as pooled has its
  // blocks too. Read the other way round, a batch applied between the two
  // reads was pooled but its blocks not yet returned (a test that waited
  // for pooled + inline == published then saw 100 blocks missing).
  // Batches sorted inline likewise: counted after their blocks, with
  // release, and read here before them.
  ferry::PoolStats pool;
  ferry::PoolStatsGet(&pool);
  const int64_t batches_inline = ferry::g_counters.batches_inline.load(std::memory_order_acquire);
#define FERRY_READ_Sharded(field) ferry::CounterSum(ferry::Counter::field)
#define FERRY_READ_Single(field) ferry::g_counters.field.load(std::memory_order_relaxed)
#define FERRY_READ_PerHeap(field) ferry::SumOverHeaps(&ferry::Heap::field)
#define FERRY_COPY_COUNTER(field, kind, description) \
  stats.field = static_cast<uint64_t>(FERRY_READ_##kind(field));
  FERRY_COUNTERS(FERRY_COPY_COUNTER)
#undef FERRY_COPY_COUNTER
#undef FERRY_READ_PerHeap
#undef FERRY_READ_Single
#undef FERRY_READ_Sharded
  stats.batches_inline = static_cast<uint64_t>(batches_inline);
  stats.batches_pooled = pool.batches_pooled;
  stats.steals = pool.steals;
  stats.reclaimer_threads = pool.threads;
  stats.reclaimer_cpu_ns = pool.cpu_ns;
  stats.pool_starts = pool.starts;
  stats.pool_stops = pool.stops;
  // A caller built against a newer header: what it has beyond ours is 0.
  const size_t known = size < sizeof(stats) ? size : sizeof(stats);
  memcpy(out, &stats, known);
  if (size > known) memset(reinterpret_cast<char*>(out) + known, 0, size - known);
}

// 0.1.0's last layout, which binaries built before the ferry_stats_get
// macro passed without a size: fields may be added after it, never before.
constexpr size_t kStatsSizeOfVersion0_1 = offsetof(ferry_stats_t, pool_starts) + sizeof(uint64_t);
static_assert(kStatsSizeOfVersion0_1 == 232, "ferry.h promises 232 bytes to ferry_stats_get");

FERRY_EXPORT void(ferry_stats_get)(ferry_stats_t* out) { ferry_stats_get_sized(out, kStatsSizeOfVersion0_1); }

FERRY_EXPORT void ferry_stats_print(FILE* out) {
  if (out == nullptr) out = stderr;
  ferry_stats_t stats;
  ferry_stats_get(&stats);
  fprintf(out, "ferry %d.%d.%d statistics\n", FERRY_VERSION_MAJOR, FERRY_VERSION_MINOR,
          FERRY_VERSION_PATCH);
#define FERRY_PRINT_COUNTER(field, description)                                  \
  fprintf(out, "  %-22s %16llu  %s\n", #field, static_cast<unsigned long long>(stats.field), \
          description);
#define FERRY_PRINT_LISTED_COUNTER(field, kind, description) FERRY_PRINT_COUNTER(field, description)
  FERRY_COUNTERS(FERRY_PRINT_LISTED_COUNTER)
#undef FERRY_PRINT_LISTED_COUNTER
  FERRY_PRINT_COUNTER(batches_pooled, "batches applied by the reclaimer pool")
  FERRY_PRINT_COUNTER(steals, "of those, stolen from another reclaimer")
  FERRY_PRINT_COUNTER(reclaimer_threads, "reclaimer threads running now")
  FERRY_PRINT_COUNTER(reclaimer_cpu_ns, "CPU time of the reclaimer threads, or of ferry's oneTBB tasks (ns)")
  FERRY_PRINT_COUNTER(pool_starts, "times the pool started")
  FERRY_PRINT_COUNTER(pool_stops, "times an idle pool's threads exited")
#undef FERRY_PRINT_COUNTER
  fflush(out);
}

}  // extern "C"

namespace {

// FERRY_STATS=1: print the table when the process exits. A destructor
// function, not atexit(), so that registering it never allocates.
__attribute__((destructor)) void PrintStatsAtExit() {
  if (ferry::CurrentOptions().stats != 0) ferry_stats_print(stderr);
}

}  // namespace

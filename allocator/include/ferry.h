// ferry.h — the public C and C++ interface of the ferry memory allocator.
//
// Every function here is thread-safe and may be called from any thread at any
// time, including before main() and during thread or process exit. None is
// async-signal-safe (as with malloc): a signal handler that calls one while
// its thread is inside another may wait for good on a lock the interrupted
// call holds (a heap's segment list, taken on the paths that make a new
// page), as it may under glibc's malloc.
//
// Linking libferry.a (or LD_PRELOAD=libferry.so) also makes the standard
// malloc family and C++ operator new/delete ferry's; the ferry_* names below
// work with or without that override, and memory from one may be released by
// the other.
#ifndef FERRY_H_
#define FERRY_H_

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define FERRY_VERSION_MAJOR 0
#define FERRY_VERSION_MINOR 2
#define FERRY_VERSION_PATCH 4
// One number that grows with every release: major * 10000 + minor * 100 + patch.
#define FERRY_VERSION \
  (FERRY_VERSION_MAJOR * 10000 + FERRY_VERSION_MINOR * 100 + FERRY_VERSION_PATCH)

#if defined(__GNUC__)
#define FERRY_API __attribute__((visibility("default")))
#define FERRY_MALLOC_ATTR __attribute__((malloc, warn_unused_result))
#else
#define FERRY_API
#define FERRY_MALLOC_ATTR
#endif
// ferry_usable_size looks at where a block is, never at its bytes; saying so
// keeps GCC from warning about a fresh, unwritten block passed to it.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define FERRY_ADDRESS_ONLY(arg) __attribute__((access(none, arg)))
#else
#define FERRY_ADDRESS_ONLY(arg)
#endif

#ifdef __cplusplus
extern "C" {
#endif

// Allocates `size` bytes, aligned to 16 bytes when size is over 8, and to 8
// bytes otherwise (no object of 8 bytes or less needs more; any object of
// fundamental alignment that fits in the space has what it needs).
// ferry_malloc(0) returns a unique pointer. Returns NULL with errno = ENOMEM
// when the size cannot be honoured (over PTRDIFF_MAX, or the OS refuses).
FERRY_API FERRY_MALLOC_ATTR void* ferry_malloc(size_t size);

// Allocates count * size zeroed bytes. Returns NULL with errno = ENOMEM when
// the product overflows or cannot be honoured.
FERRY_API FERRY_MALLOC_ATTR void* ferry_calloc(size_t count, size_t size);

// Resizes `ptr` to `size` bytes, keeping the first min(old, new) bytes.
// ferry_realloc(NULL, n) is ferry_malloc(n); ferry_realloc(p, 0) frees p and
// returns a unique minimal block (the realloc that ferry exports frees p
// and returns NULL, as glibc's does). On failure returns NULL with errno =
// ENOMEM and leaves `ptr` untouched and valid.
FERRY_API void* ferry_realloc(void* ptr, size_t size);

// Releases a block from any ferry allocation function; NULL is ignored. The
// calling thread need not be the allocating one: a block of another thread's
// heap goes into this thread's remote batch and reaches its owner when the
// batch is handed on (see ferry_flush). A pointer ferry never returned, an
// interior pointer or a double free prints one line naming ferry and the
// pointer on stderr and aborts the process.
FERRY_API void ferry_free(void* ptr);

// ferry_free for a caller that knows the size it asked for (C23 free_sized).
// A size larger than the block's usable size cannot be the one asked for:
// it prints one line naming the pointer and both sizes, and aborts.
FERRY_API void ferry_free_sized(void* ptr, size_t size);

// Allocates `size` bytes aligned to `alignment`, which must be a power of two
// (any, up to at least 64 MiB). Returns NULL with errno = EINVAL for a bad
// alignment and errno = ENOMEM for an impossible size.
FERRY_API FERRY_MALLOC_ATTR void* ferry_aligned_alloc(size_t alignment, size_t size);

// POSIX posix_memalign: `alignment` must be a power of two and a multiple of
// sizeof(void*). Returns 0 and stores the block in *out, or EINVAL / ENOMEM
// and leaves *out untouched. errno is not changed.
FERRY_API int ferry_posix_memalign(void** out, size_t alignment, size_t size);

// The number of bytes usable at `ptr` (at least what was asked for); 0 for
// NULL.
FERRY_API FERRY_ADDRESS_ONLY(1) size_t ferry_usable_size(const void* ptr);

// Publishes the calling thread's pending remote frees and returns once every
// remote free published before the call, by any thread, has reached its
// owning page, so that the owner's next allocations can reuse that memory.
// It waits for the reclaimer pool only (never for another application
// thread), so it is safe under any lock of the program's; it cannot fail.
// With FERRY_RECLAIMERS=0 it returns the caller's batch inline and returns.
FERRY_API void ferry_flush(void);

// ferry_flush, then takes back the calling thread's returned blocks, gives
// its empty pages and segments back and returns memory that can be returned
// to the operating system now (malloc_trim calls it). Slower than
// ferry_flush (it visits the caller's pages); it cannot fail.
FERRY_API void ferry_collect(void);

// A snapshot of ferry's counters. Counters of other threads are read without
// stopping them, so the snapshot is consistent only when they are quiet.
typedef struct ferry_stats_s {
  uint64_t version;               // FERRY_VERSION of the library
  uint64_t heaps_created;         // thread heaps made from OS memory
  uint64_t heaps_abandoned;       // heaps left by exited threads
  uint64_t heaps_reused;          // abandoned heaps taken over by new threads
  uint64_t segments_mapped;       // segments ever taken from arenas
  uint64_t segments_released;     // segments given back to their arena
  uint64_t segments_live;         // segments in use now
  uint64_t arena_bytes_reserved;  // address space reserved for arenas
  uint64_t pages_made;            // pages carved from segments
  uint64_t pages_released;        // empty pages given back to segments
  uint64_t large_allocs;          // allocations on their own run of pages
  uint64_t huge_allocs;           // allocations on their own OS mapping
  uint64_t huge_frees;            // huge blocks freed
  uint64_t huge_bytes_live;       // bytes mapped for live huge blocks
  uint64_t local_frees_slow;      // local frees that took the slow path
  uint64_t remote_frees;          // frees of another thread's block
  uint64_t batches_published;     // full or flushed remote-free batches
  uint64_t batches_inline;        // batches sorted by the freeing thread
  uint64_t blocks_returned;       // blocks handed back to owning pages
  uint64_t chains_pushed;         // atomic pushes onto pages' returned lists
  uint64_t pages_posted;          // full pages posted to an owner's inbox
  uint64_t pages_freed_by_returns;  // full pages freed when their last blocks came back
  uint64_t abandoned_collections; // times the pool collected an abandoned heap
  uint64_t bytes_decommitted;     // memory given back to the OS (madvise)
  // The reclaimer pool (zero while it has not started):
  uint64_t batches_pooled;        // batches applied by the pool
  uint64_t steals;                // of those, stolen from another reclaimer's queue
  uint64_t reclaimer_threads;     // reclaimer threads running now
  uint64_t reclaimer_cpu_ns;      // CPU time the reclaimer threads have used (oneTBB: ferry's tasks)
  uint64_t pool_starts;           // times the pool started (again after a fork)
  // From 0.2.1 on:
  uint64_t huge_reused;           // huge blocks placed in a mapping freed before
  uint64_t huge_bytes_cached;     // bytes of freed huge mappings kept for reuse
  // From 0.2.2 on:
  uint64_t bytes_unmapped;        // bytes of huge mappings given back to the OS (munmap, mremap)
  // From 0.2.3 on:
  uint64_t pool_stops;            // times an idle pool's threads exited (FERRY_RECLAIMER_IDLE_MS)
  // From 0.2.4 on:
  uint64_t bytes_uncharged;       // bytes of segments made inaccessible again: commit charge given back
} ferry_stats_t;

// Fills *out with the current counters. Cheap: no lock, no allocation.
//
// From 0.2.0 on, fields are only ever added at the end of ferry_stats_t, so
// the struct a program was compiled with may be smaller or larger than the
// library's. ferry_stats_get is therefore a macro that passes the size of
// the program's ferry_stats_t: ferry_stats_get_sized writes the first
// `size` bytes of *out and nothing past them, and zeroes fields the library
// does not know (a program newer than the library reads 0 there; `version`
// says which library it is). `out` NULL or `size` 0: nothing is written.
FERRY_API void ferry_stats_get_sized(ferry_stats_t* out, size_t size);
#define ferry_stats_get(out) ferry_stats_get_sized((out), sizeof(ferry_stats_t))
// The function ferry_stats_get, for programs built against 0.1.0, which
// called it without a size (and for a pointer to it): fills the first 232
// bytes, 0.1.0's last layout (version through pool_starts).
FERRY_API void(ferry_stats_get)(ferry_stats_t* out);

// Writes a readable table of the counters to `out` (stderr when NULL). The
// first line names ferry and its version.
FERRY_API void ferry_stats_print(FILE* out);

#ifdef __cplusplus
}  // extern "C"

#include <cstddef>
#include <cstdlib>
#include <new>

// Code built without exceptions (-fno-exceptions, as libferry itself is)
// aborts where the allocator below would throw, as libstdc++ does; clang,
// unlike GCC, rejects a throw there even in a template never instantiated.
#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
#define FERRY_THROW_(exception) throw exception
#else
#define FERRY_THROW_(exception) std::abort()
#endif

namespace ferry {

// A standard allocator that takes its memory from ferry whether or not
// ferry overrides malloc in this program.
template <class T>
struct allocator {
  using value_type = T;
  allocator() noexcept = default;
  template <class U>
  allocator(const allocator<U>&) noexcept {}

  T* allocate(std::size_t n) {
    if (n > static_cast<std::size_t>(-1) / sizeof(T)) FERRY_THROW_(std::bad_array_new_length());
    void* p = alignof(T) > 16 ? ferry_aligned_alloc(alignof(T), n * sizeof(T))
                              : ferry_malloc(n * sizeof(T));
    if (p == nullptr) FERRY_THROW_(std::bad_alloc());
    return static_cast<T*>(p);
  }
  void deallocate(T* p, std::size_t) noexcept { ferry_free(p); }

  template <class U>
  bool operator==(const allocator<U>&) const noexcept { return true; }
  // Before C++20, != is not derived from ==, and the allocator
  // requirements ask for both.
  template <class U>
  bool operator!=(const allocator<U>&) const noexcept { return false; }
};

}  // namespace ferry

#undef FERRY_THROW_
#endif  // __cplusplus

#endif  // FERRY_H_

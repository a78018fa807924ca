// override.cc — the C malloc family, defined by ferry. Linking libferry.a
// pulls this object in as soon as the program refers to any of these names;
// LD_PRELOAD=libferry.so puts them ahead of libc's. Everything a program or
// libc allocates then comes from ferry.
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <malloc.h>
#include <stdlib.h>
#include <unistd.h>

#include "allocator/heap.h"
#include "common/base.h"
#include "ferry.h"

namespace {

// As glibc's, which programs written for it count on: an alignment that is
// not a power of two is rounded up to one (0 and 1 ask for none); only one
// above SIZE_MAX / 2 + 1 has none to round to, and fails with EINVAL.
// (memalign and __libc_memalign call this, not each other: a program's own
// memalign that calls __libc_memalign, in a library linked without
// -Bsymbolic, would otherwise call itself.)
void* Memalign(size_t alignment, size_t size) {
  if (!ferry::IsPowerOfTwo(alignment)) {
    if (alignment > SIZE_MAX / 2 + 1) {
      errno = EINVAL;
      return nullptr;
    }
    alignment = alignment <= 1 ? 1 : size_t{1} << (ferry::Log2Floor(alignment - 1) + 1);
  }
  return ferry_aligned_alloc(alignment, size);
}

void* Valloc(size_t size) { return ferry_aligned_alloc(static_cast<size_t>(sysconf(_SC_PAGESIZE)), size); }

void* Pvalloc(size_t size) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t rounded = ferry::AlignUp(size == 0 ? 1 : size, page);
  if (rounded < size) {
    errno = ENOMEM;
    return nullptr;
  }
  return ferry_aligned_alloc(page, rounded);
}

// realloc(p, 0) frees p and returns NULL, as glibc's does (and jemalloc's
// and tcmalloc's): a program written against glibc may call it as a free
// and drop the result, and would leak a minimal block per call where
// ferry_realloc's answer (a minimal block, as mimalloc's) came back.
// realloc(NULL, 0) is malloc(0), as glibc's.
void* ReallocAsGlibc(void* ptr, size_t size, const void* caller) {
  if (size == 0 && ptr != nullptr) {
    ferry::FreeUserBlock(ptr, "realloc", caller);
    return nullptr;
  }
  return ferry::Realloc(ptr, size, caller);
}

// mallinfo's figures, from what ferry holds: `arena` the address space of
// the live segments (small and large blocks) and of the huge cache's freed
// mappings, `uordblks` the segments' slices in use (a page's free blocks
// included), `fordblks` the rest of `arena`, `hblks` and `hblkhd` the live
// huge blocks and their mappings. glibc's own heap holds nothing under
// ferry, so its figures (all but zero) told a program that watches mallinfo
// nothing. The huge cache counts as free space held: while a pool ticks it
// may be as large as the live huge blocks, and a program that added up
// `arena` and `hblkhd` missed it (until 2026-12-05).
struct MallinfoFigures {
  size_t arena;
  size_t uordblks;
  size_t fordblks;
  size_t hblks;
  size_t hblkhd;
};

MallinfoFigures CurrentMallinfo() {
  const ferry::ArenaUsage usage = ferry::ArenaUsageNow();
  ferry_stats_t stats;
  ferry_stats_get(&stats);
  MallinfoFigures figures;
  figures.arena = usage.segment_bytes + stats.huge_bytes_cached;
  figures.uordblks = usage.used_slice_bytes;
  figures.fordblks = figures.arena - usage.used_slice_bytes;
  figures.hblks = stats.huge_allocs - stats.huge_frees;
  figures.hblkhd = stats.huge_bytes_live;
  return figures;
}

int ClampToInt(size_t value) { return value > INT_MAX ? INT_MAX : static_cast<int>(value); }

// The figures in mallinfo's struct or mallinfo2's, each through `convert`;
// the fields ferry has no figure for are 0.
template <typename Info, typename Convert>
Info MallinfoOf(Convert convert) {
  const MallinfoFigures figures = CurrentMallinfo();
  Info info = {};
  info.arena = convert(figures.arena);
  info.hblks = convert(figures.hblks);
  info.hblkhd = convert(figures.hblkhd);
  info.uordblks = convert(figures.uordblks);
  info.fordblks = convert(figures.fordblks);
  return info;
}

}  // namespace

extern "C" {

// Referenced by the operator new/delete object, so that linking one of the
// two from libferry.a always brings the other.
FERRY_EXPORT int ferry_override_anchor = 0;

FERRY_EXPORT void* malloc(size_t size) { return ferry_malloc(size); }
// The return address tells a free by the dynamic loader (which frees thread
// stacks' TLS under a lock that pthread_create needs) from any other.
FERRY_EXPORT void free(void* ptr) {
  ferry::FreeUserBlock(ptr, "free", __builtin_return_address(0));
}
FERRY_EXPORT void* calloc(size_t count, size_t size) { return ferry_calloc(count, size); }
FERRY_EXPORT void* realloc(void* ptr, size_t size) {
  return ReallocAsGlibc(ptr, size, __builtin_return_address(0));  // its free, as free's
}

FERRY_EXPORT void* reallocarray(void* ptr, size_t count, size_t size) {
  size_t total;
  if (__builtin_mul_overflow(count, size, &total)) {
    errno = ENOMEM;
    return nullptr;
  }
  return ReallocAsGlibc(ptr, total, __builtin_return_address(0));
}

FERRY_EXPORT int posix_memalign(void** out, size_t alignment, size_t size) {
  return ferry_posix_memalign(out, alignment, size);
}

FERRY_EXPORT void* aligned_alloc(size_t alignment, size_t size) {
  return ferry_aligned_alloc(alignment, size);
}

FERRY_EXPORT void* memalign(size_t alignment, size_t size) { return Memalign(alignment, size); }
FERRY_EXPORT void* valloc(size_t size) { return Valloc(size); }
FERRY_EXPORT void* pvalloc(size_t size) { return Pvalloc(size); }

FERRY_EXPORT size_t malloc_usable_size(void* ptr) { return ferry_usable_size(ptr); }

// The return address, as free's: a free by the C library's code starts no pool.
FERRY_EXPORT void free_sized(void* ptr, size_t size) {
  ferry::FreeSized(ptr, size, "free_sized", __builtin_return_address(0));
}

FERRY_EXPORT void free_aligned_sized(void* ptr, size_t /*alignment*/, size_t size) {
  ferry::FreeSized(ptr, size, "free_aligned_sized", __builtin_return_address(0));
}

// glibc's answer: 1 when memory went back to the OS, 0 when there was none
// to give (it returned 1 always until a review noticed, 2026-12-04).
FERRY_EXPORT int malloc_trim(size_t /*pad*/) {
  ferry_stats_t before;
  ferry_stats_t after;
  ferry_stats_get(&before);
  ferry_collect();
  ferry_stats_get(&after);
  return after.bytes_decommitted != before.bytes_decommitted ||
                 after.segments_released != before.segments_released ||
                 after.bytes_unmapped != before.bytes_unmapped ||
                 after.bytes_uncharged != before.bytes_uncharged
             ? 1
             : 0;
}

// glibc's statistics, printed on stderr as glibc's are: ferry's table.
// Weak, as cfree below: neither name is reserved, and a program that
// defines its own and links libferry.a must still link (the dynamic loader
// takes a weak definition as any other, so the preload still binds them).
__attribute__((weak)) FERRY_EXPORT void malloc_stats(void) { ferry_stats_print(nullptr); }

// glibc's other malloc.h calls. Besides what they report, defining them
// keeps a fully static link whole: in libc.a they live in the same object
// as glibc's malloc, so a program that called mallopt or mallinfo pulled
// that object in and failed to link ("multiple definition of malloc").
// Weak, as malloc_stats: the names are not reserved.
#if defined(__GLIBC__) && __GLIBC_PREREQ(2, 33)
__attribute__((weak)) FERRY_EXPORT struct mallinfo2 mallinfo2(void) {
  return MallinfoOf<struct mallinfo2>([](size_t figure) { return figure; });
}
#endif

// int fields: a figure past INT_MAX reads as INT_MAX (glibc's wraps).
__attribute__((weak)) FERRY_EXPORT struct mallinfo mallinfo(void) { return MallinfoOf<struct mallinfo>(ClampToInt); }

// glibc's tuning parameters mean nothing to ferry (its own are FERRY_*
// variables): accepted and ignored, 1 as glibc answers (for parameters it
// does not know, too).
__attribute__((weak)) FERRY_EXPORT int mallopt(int /*param*/, int /*value*/) { return 1; }

// glibc's XML, with its totals only (glibc adds one <heap> per arena):
// tools that read the totals find them where glibc puts them.
__attribute__((weak)) FERRY_EXPORT int malloc_info(int options, FILE* out) {
  if (options != 0 || out == nullptr) {
    errno = EINVAL;
    return -1;
  }
  const MallinfoFigures figures = CurrentMallinfo();
  const unsigned long long system = figures.arena + figures.hblkhd;
  fprintf(out,
          "<malloc version=\"1\">\n"
          "<total type=\"fast\" count=\"0\" size=\"0\"/>\n"
          "<total type=\"rest\" count=\"0\" size=\"%llu\"/>\n"
          "<total type=\"mmap\" count=\"%llu\" size=\"%llu\"/>\n"
          "<system type=\"current\" size=\"%llu\"/>\n"
          "<aspace type=\"total\" size=\"%llu\"/>\n"
          "</malloc>\n",
          static_cast<unsigned long long>(figures.fordblks), static_cast<unsigned long long>(figures.hblks),
          static_cast<unsigned long long>(figures.hblkhd), system, system);
  return 0;
}

// glibc exports its allocator under these names too, and some programs and
// libraries call them directly (malloc hooks, debugging shims, code that
// wants "the real malloc"). Left to glibc, such a block would meet ferry's
// free (which reports it as foreign and aborts), or one of ferry's glibc's
// __libc_free (which corrupts glibc's heap). cfree is glibc's old name for
// free, still resolved by binaries built before glibc 2.26.
FERRY_EXPORT void* __libc_malloc(size_t size) { return ferry_malloc(size); }
FERRY_EXPORT void __libc_free(void* ptr) { ferry::FreeUserBlock(ptr, "free", __builtin_return_address(0)); }
FERRY_EXPORT void* __libc_calloc(size_t count, size_t size) { return ferry_calloc(count, size); }
FERRY_EXPORT void* __libc_realloc(void* ptr, size_t size) {
  return ReallocAsGlibc(ptr, size, __builtin_return_address(0));
}
FERRY_EXPORT void* __libc_memalign(size_t alignment, size_t size) { return Memalign(alignment, size); }
FERRY_EXPORT void* __libc_valloc(size_t size) { return Valloc(size); }
FERRY_EXPORT void* __libc_pvalloc(size_t size) { return Pvalloc(size); }
__attribute__((weak)) FERRY_EXPORT void cfree(void* ptr) {
  ferry::FreeUserBlock(ptr, "free", __builtin_return_address(0));
}

}  // extern "C"

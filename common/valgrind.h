// valgrind.h — ferry's blocks as memcheck sees them, in FERRY_VALGRIND builds
// (`tools/bazel build --config=valgrind`, or `FERRY_VALGRIND=1 tools/install`).
//
// memcheck knows glibc's malloc because it replaces it; a program on ferry
// keeps ferry's malloc, so without these client requests memcheck sees one
// big mmap'd region and reports no leak and no use after free. With them:
//  - every block the malloc family hands out is a "malloc-like" block of the
//    size the caller asked for (accesses past it are errors);
//  - every block the user frees is "freed" (any access is an error) before
//    ferry looks at it, except its first word, which holds ferry's free-list
//    link and which ferry reads and writes until the block is handed out
//    again: a write after free into those 8 bytes goes unreported;
//  - realloc always moves the block (memcheck needs a block's old size to
//    resize it in place, and ferry keeps only the usable size);
//  - the segment headers, which hold the page records (a record's `start`
//    points at its page's first block), are hidden from the leak scan
//    (an address-error "ignore range", which the leak scan skips too), so that
//    a leaked first block is "definitely lost", not "still reachable"; memcheck
//    lists those ranges in a warning at exit;
// memcheck replaces malloc wherever it finds it, the program itself
// included: run it with --soname-synonyms=somalloc=nouserintercepts so that
// the program keeps ferry's (LD_PRELOAD=libferry.so needs it too).
// Every function is empty in other builds: the fast paths pay nothing.
#ifndef FERRY_COMMON_VALGRIND_H_
#define FERRY_COMMON_VALGRIND_H_

#include <cstddef>

#include "common/base.h"

#ifndef FERRY_VALGRIND
#define FERRY_VALGRIND 0
#endif

#if FERRY_VALGRIND
#include <valgrind/memcheck.h>
#endif

namespace ferry {

inline constexpr bool kValgrind = FERRY_VALGRIND != 0;

// `p` (may be nullptr) now holds `n` bytes for the user.
FERRY_ALWAYS_INLINE void* VgAllocated(void* p, size_t n, bool zeroed = false) {
#if FERRY_VALGRIND
  if (p != nullptr) VALGRIND_MALLOCLIKE_BLOCK(p, n, 0, zeroed);
#else
  (void)n;
  (void)zeroed;
#endif
  return p;
}

// The user frees `p` (may be nullptr or bad: memcheck reports an invalid
// free, then ferry its own diagnostic).
FERRY_ALWAYS_INLINE void VgFreeing(void* p) {
#if FERRY_VALGRIND
  if (p != nullptr) {
    VALGRIND_FREELIKE_BLOCK(p, 0);
    VALGRIND_MAKE_MEM_DEFINED(p, sizeof(void*));
  }
#else
  (void)p;
#endif
}

// The first word of a block ferry is about to carve (its free-list link):
// the memory may have been part of a block the user freed, which memcheck
// holds inaccessible.
FERRY_ALWAYS_INLINE void VgLinkWord(void* p) {
#if FERRY_VALGRIND
  VALGRIND_MAKE_MEM_DEFINED(p, sizeof(void*));
#else
  (void)p;
#endif
}

// Ferry's own read of memory the user may not have written or may have freed
// (realloc's copy of a block's slack): no report from this thread meanwhile.
FERRY_ALWAYS_INLINE void VgQuietBegin() {
#if FERRY_VALGRIND
  VALGRIND_DISABLE_ERROR_REPORTING;
#endif
}
FERRY_ALWAYS_INLINE void VgQuietEnd() {
#if FERRY_VALGRIND
  VALGRIND_ENABLE_ERROR_REPORTING;
#endif
}

// Ferry's metadata at [p, p + n): not scanned for pointers by the leak check
// (which skips memcheck's ignore ranges). Access errors there go unreported:
// only ferry's code touches it.
FERRY_ALWAYS_INLINE void VgHideMetadata(void* p, size_t n) {
#if FERRY_VALGRIND
  VALGRIND_DISABLE_ADDR_ERROR_REPORTING_IN_RANGE(p, n);
#else
  (void)p;
  (void)n;
#endif
}

}  // namespace ferry

#endif  // FERRY_COMMON_VALGRIND_H_

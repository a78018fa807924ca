/* preload_glibc_names.c — a C program, built without ferry, that reaches the
 * allocator through glibc's other names for it: __libc_malloc and co., and
 * cfree as binaries built before glibc 2.26 bind it (cfree@GLIBC_2.2.5; no
 * newer program can name it). Blocks go back through the other names, so
 * every call must land in one allocator. preload_test.sh runs it on glibc
 * and under LD_PRELOAD=libferry.so; with the argument "ferry" it also checks,
 * through ferry_usable_size, that the blocks are ferry's, and that mallinfo2
 * and mallopt are ferry's too. Exit status 0 when
 * all is well; before ferry defined these names, glibc aborted ("free():
 * invalid pointer") at the first cfree of a ferry block. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern void* __libc_malloc(size_t size);
extern void __libc_free(void* ptr);
extern void* __libc_calloc(size_t count, size_t size);
extern void* __libc_realloc(void* ptr, size_t size);
extern void* __libc_memalign(size_t alignment, size_t size);
extern void* __libc_valloc(size_t size);
extern void* __libc_pvalloc(size_t size);
/* cfree's last version: the architecture's first glibc. */
#if defined(__x86_64__)
#define OLD_CFREE "cfree@GLIBC_2.2.5"
#elif defined(__aarch64__)
#define OLD_CFREE "cfree@GLIBC_2.17"
#endif
#ifdef OLD_CFREE
extern void cfree_as_old_binaries_bind_it(void* ptr);
__asm__(".symver cfree_as_old_binaries_bind_it, " OLD_CFREE);
#else
#define cfree_as_old_binaries_bind_it free
#endif

typedef size_t (*usable_size_fn)(const void*);
static usable_size_fn ferry_usable;

static int failures;

static void check(int ok, const char* what) {
  if (!ok) {
    fprintf(stderr, "preload_glibc_names: %s\n", what);
    ++failures;
  }
}

/* ferry_usable_size aborts on a block that is not ferry's. */
static void check_ferry_block(void* p, size_t n, const char* what) {
  check(p != NULL, what);
  if (p != NULL && ferry_usable != NULL) check(ferry_usable(p) >= n, what);
}

int main(int argc, char** argv) {
  if (argc > 1 && strcmp(argv[1], "ferry") == 0) {
    ferry_usable = (usable_size_fn)dlsym(RTLD_DEFAULT, "ferry_usable_size");
    check(ferry_usable != NULL, "ferry_usable_size not found: is libferry.so preloaded?");
  }
  static const size_t sizes[] = {0, 1, 24, 200, 5000, 70000, 600000, 5u << 20};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; ++i) {
    const size_t n = sizes[i];
    char* p = __libc_malloc(n);
    check_ferry_block(p, n, "__libc_malloc");
    memset(p, 'x', n);
    p = __libc_realloc(p, n + 100);
    check_ferry_block(p, n + 100, "__libc_realloc");
    for (size_t k = 0; k < n; ++k) {
      if (p[k] != 'x') {
        check(0, "__libc_realloc lost the block's bytes");
        break;
      }
    }
    free(p);
    __libc_free(malloc(n));
    cfree_as_old_binaries_bind_it(malloc(n + 1));
    unsigned char* z = __libc_calloc(n, 2);
    check_ferry_block(z, 2 * n, "__libc_calloc");
    for (size_t k = 0; k < 2 * n; ++k) {
      if (z[k] != 0) {
        check(0, "__libc_calloc's block is not zeroed");
        break;
      }
    }
    cfree_as_old_binaries_bind_it(z);
  }
  void* a = __libc_memalign(4096, 100);
  check_ferry_block(a, 100, "__libc_memalign");
  check(((uintptr_t)a & 4095) == 0, "__libc_memalign's block is misaligned");
  free(a);
  void* v = __libc_valloc(10);
  check_ferry_block(v, 10, "__libc_valloc");
  __libc_free(v);
  void* pv = __libc_pvalloc(10);
  check_ferry_block(pv, 10, "__libc_pvalloc");
  cfree_as_old_binaries_bind_it(pv);
  if (ferry_usable != NULL) {
    /* mallinfo2 is ferry's under the preload: glibc's would describe its own
       heap, which holds nothing here (arena 0). The trim empties the huge
       cache of the loop's 5 MiB blocks, so that arena is segments only. */
    malloc_trim(0);
    void* held = malloc(5u << 20);
    void* small = malloc(100);
    struct mallinfo2 info = mallinfo2();
    check(info.arena > 0 && info.arena % (4u << 20) == 0, "mallinfo2's arena is not ferry's segments");
    check(info.hblks >= 1 && info.hblkhd >= (5u << 20), "mallinfo2 does not count the huge block");
    check(mallopt(M_ARENA_MAX, 1) == 1, "mallopt refused M_ARENA_MAX");
    free(small);
    /* The freed huge block's mapping waits in the huge cache: free space
       ferry still holds, so it moves from hblkhd into arena and fordblks,
       and malloc_trim (which empties the cache) takes it out again. */
    struct mallinfo2 live = mallinfo2();
    free(held);
    struct mallinfo2 cached = mallinfo2();
    check(cached.hblks + 1 == live.hblks && cached.hblkhd + (5u << 20) <= live.hblkhd,
          "mallinfo2 still counts the freed huge block as live");
    check(cached.arena >= live.arena + (5u << 20) && cached.fordblks >= live.fordblks + (5u << 20),
          "mallinfo2 leaves the huge cache's mapping out of arena and fordblks");
    check(cached.arena == cached.uordblks + cached.fordblks, "mallinfo2's arena is not uordblks + fordblks");
    check(malloc_trim(0) == 1, "malloc_trim gave nothing back");
    struct mallinfo2 trimmed = mallinfo2();
    check(trimmed.arena + (5u << 20) <= cached.arena, "malloc_trim left the huge cache in mallinfo2's arena");
  }
  if (failures == 0) printf("ok\n");
  return failures == 0 ? 0 : 1;
}

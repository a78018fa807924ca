/* glibc_malloc_shim.c — the malloc family, routed to glibc's own allocator
 * (__libc_malloc and co.), for a program linked with another malloc:
 * Debian's redis-server calls jemalloc's. tools/real_programs builds it and
 * preloads it for redis's "glibc" runs, so that its glibc column is glibc.
 *   cc -O2 -shared -fPIC -o glibc_malloc_shim.so glibc_malloc_shim.c -ldl */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stddef.h>

extern void* __libc_malloc(size_t size);
extern void __libc_free(void* p);
extern void* __libc_calloc(size_t count, size_t size);
extern void* __libc_realloc(void* p, size_t size);
extern void* __libc_memalign(size_t alignment, size_t size);

void* malloc(size_t size) { return __libc_malloc(size); }
void free(void* p) { __libc_free(p); }
void* calloc(size_t count, size_t size) { return __libc_calloc(count, size); }
void* realloc(void* p, size_t size) { return __libc_realloc(p, size); }
void* memalign(size_t alignment, size_t size) { return __libc_memalign(alignment, size); }
void* aligned_alloc(size_t alignment, size_t size) { return __libc_memalign(alignment, size); }
void* valloc(size_t size) { return __libc_memalign(4096, size); }

int posix_memalign(void** out, size_t alignment, size_t size) {
  if (alignment % sizeof(void*) != 0 || (alignment & (alignment - 1)) != 0) return EINVAL;
  void* p = __libc_memalign(alignment, size);
  if (p == NULL) return ENOMEM;
  *out = p;
  return 0;
}

/* glibc has no __libc_ name for it: look it up in libc itself. */
size_t malloc_usable_size(void* p) {
  static size_t (*libc_usable_size)(void*);
  if (libc_usable_size == NULL) {
    void* libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    libc_usable_size = (size_t (*)(void*))dlsym(libc, "malloc_usable_size");
  }
  return libc_usable_size(p);
}

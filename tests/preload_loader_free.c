// preload_loader_free.c — a thread whose first free is the dynamic loader's,
// of another thread's block, must not start ferry's reclaimer pool from it
// (preload_test.sh runs it under LD_PRELOAD with FERRY_BATCH=1 and
// FERRY_RECLAIMERS=1, and a time limit).
//
// pthread_join trims glibc's thread-stack cache and frees dead threads' TLS
// (which their creator allocated) while it holds the cache's lock, which
// pthread_create takes. Such a free once started the pool from the
// one-block batch it filled, and the joiner deadlocked on itself. The
// joiner below has a heap (one malloc and free of its own first): since
// 2026-12-04 a thread with no heap makes none for a free by the loader
// (it goes back alone), so a joiner that never allocated would no longer
// fill a batch here. Plain C on glibc's names: the program knows nothing
// of ferry.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

enum { kThreads = 8 };
static pthread_t victims[kThreads];

static void* Nothing(void* arg) { return arg; }

static void* Joiner(void* arg) {
  // The thread's heap, and nothing in its batch, before the joins.
  void* volatile own = malloc(16);
  free(own);
  for (int i = 0; i < kThreads; ++i) pthread_join(victims[i], NULL);
  return arg;
}

int main(void) {
  free(malloc(16));  // the main thread's heap, which the threads' TLS comes from
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  // 16 MiB stacks: the 40 MiB stack cache overflows at the third join.
  pthread_attr_setstacksize(&attr, (size_t)16 << 20);
  for (int i = 0; i < kThreads; ++i) {
    if (pthread_create(&victims[i], &attr, Nothing, NULL) != 0) {
      perror("pthread_create");
      return 1;
    }
  }
  pthread_attr_destroy(&attr);
  pthread_t joiner;
  if (pthread_create(&joiner, NULL, Joiner, NULL) != 0 || pthread_join(joiner, NULL) != 0) {
    fputs("joiner failed\n", stderr);
    return 1;
  }
  puts("joined");
  return 0;
}

/* preload_atfork_early.c — the fork handlers of a library that the program
 * links and that registers them in its constructor. The loader initialises
 * a program's libraries before a preloaded one, so these are registered
 * before ferry's (ferry registers its own when it is loaded). glibc runs
 * prepare handlers in the reverse order of registration and parent and
 * child handlers in that order, so these run while ferry's hold the
 * allocator's locks, on the forking thread. Each allocates and frees
 * small, large (a new segment's worth) and huge blocks, and calls
 * malloc_trim (ferry_collect: a flush of the reclaimer pool, which the fork
 * holds parked, and the housekeeping, whose turn the fork holds). Under
 * ferry every remote free must be back once malloc_trim returns
 * (ferry_stats_get, found with dlsym); a handler that finds otherwise
 * exits 4. It also registers 60 that do nothing. preload_atfork_alloc.c
 * drives it. */
#include <dlfcn.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <pthread.h>

#include "ferry.h"

int AtforkEarlyAllocateAndFree(void) {
  void* huge = malloc((size_t)3 << 20);
  void* large[8];
  void* small = malloc(100);
  if (huge == NULL || small == NULL) return 0;
  memset(huge, 1, 4096);
  for (int i = 0; i < 8; ++i) {
    large[i] = malloc((size_t)1536 << 10);
    if (large[i] == NULL) return 0;
    memset(large[i], 2, 4096);
  }
  for (int i = 0; i < 8; ++i) free(large[i]);
  free(small);
  free(huge);
  return 1;
}

typedef void (*StatsFn)(ferry_stats_t*);
static int g_forks_with_batches_queued;

int AtforkEarlyForksWithBatchesQueued(void) { return g_forks_with_batches_queued; }

static void InHandler(void) {
  if (!AtforkEarlyAllocateAndFree()) _exit(3);
  const StatsFn stats = (StatsFn)dlsym(RTLD_DEFAULT, "ferry_stats_get");
  ferry_stats_t before, after;
  if (stats != NULL) stats(&before);
  malloc_trim(0);
  if (stats == NULL) return; /* glibc */
  stats(&after);
  if (before.blocks_returned < before.remote_frees) ++g_forks_with_batches_queued;
  if (after.blocks_returned != after.remote_frees) {
    static const char kMessage[] = "a flush in a fork handler left remote frees unapplied\n";
    if (write(2, kMessage, sizeof kMessage - 1) < 0) _exit(5);
    _exit(4);
  }
}

static void DoNothing(void) {}

/* 60 more that do nothing: the 49th grows glibc's list by malloc under
 * glibc's atfork lock, the process's first malloc here; until 2026-12-05
 * its heap registered ferry's handlers, which took that lock again (a
 * review). */
__attribute__((constructor)) static void RegisterEarly(void) {
  if (pthread_atfork(InHandler, InHandler, InHandler) != 0) _exit(2);
  for (int i = 0; i < 60; ++i) {
    if (pthread_atfork(DoNothing, DoNothing, DoNothing) != 0) _exit(2);
  }
}

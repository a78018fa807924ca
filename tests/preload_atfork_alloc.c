/* preload_atfork_alloc.c — fork handlers that allocate, registered before the
 * program's first malloc, so before ferry's own (ferry registers its handlers
 * when it makes its first heap). glibc runs prepare handlers in the reverse
 * order of registration and parent and child handlers in that order, so
 * these run while ferry's hold the allocator's locks, on the forking thread.
 * Each allocates and frees small, large (a new segment's worth) and huge
 * blocks, and calls malloc_trim (ferry_collect: a flush of the reclaimer
 * pool, which the fork holds parked, and the housekeeping, whose turn the
 * fork holds). Before each fork the main thread frees blocks another
 * thread allocated: two batches go to the pool (FERRY_RECLAIMERS=1), which
 * may still hold them queued when the fork parks it, and the handler's
 * malloc_trim must apply them (under ferry, every remote free is back by
 * then: ferry_stats_get, found with dlsym). Prints "done" and exits 0 once
 * three forks have returned in both processes (preload_test.sh; on glibc
 * too). */
#include <dlfcn.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <pthread.h>

#include "ferry.h"

static int AllocateAndFree(void) {
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

static void InHandler(void) {
  if (!AllocateAndFree()) _exit(3);
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

/* Two full batches (FERRY_BATCH=256) and part of a third: the two wait for
 * the reclaimer's next tick, since the freeing heap has spare batches left. */
enum { kRemoteBlocks = 600 };
static void* g_remote[kRemoteBlocks];

static void* AllocateRemoteBlocks(void* unused) {
  (void)unused;
  for (int i = 0; i < kRemoteBlocks; ++i) g_remote[i] = malloc(64);
  return NULL;
}

int main(void) {
  if (pthread_atfork(InHandler, InHandler, InHandler) != 0) return 2;
  free(malloc(100)); /* ferry's first heap: its handlers come after ours */
  for (int round = 0; round < 3; ++round) {
    pthread_t thread;
    if (pthread_create(&thread, NULL, AllocateRemoteBlocks, NULL) != 0) return 2;
    pthread_join(thread, NULL);
    for (int i = 0; i < kRemoteBlocks; ++i) free(g_remote[i]); /* all remote */
    for (size_t size = 16; size <= 65536; size *= 2) free(malloc(size)); /* slow paths: the pool starts */
    fflush(stdout);
    const pid_t child = fork();
    if (child < 0) return 2;
    if (child == 0) _exit(AllocateAndFree() ? 0 : 3);
    int status = 0;
    if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      fprintf(stderr, "child of round %d: status %d\n", round, status);
      return 1;
    }
  }
  fprintf(stderr, "handler calls that found batches still queued: %d\n", g_forks_with_batches_queued);
  puts("done");
  return 0;
}

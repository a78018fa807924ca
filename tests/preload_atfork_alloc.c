/* preload_atfork_alloc.c — fork handlers that allocate, registered before the
 * program's first malloc, so before ferry's own (ferry registers its handlers
 * when it makes its first heap). glibc runs prepare handlers in the reverse
 * order of registration and parent and child handlers in that order, so
 * these run while ferry's hold the allocator's locks, on the forking thread.
 * Each allocates and frees small, large (a new segment's worth) and huge
 * blocks, and calls malloc_trim (ferry_collect: a flush of the reclaimer
 * pool, which the fork holds parked, and the housekeeping, whose turn the
 * fork holds). Remote frees first start the pool (FERRY_RECLAIMERS=1).
 * Prints "done" and exits 0 once three forks have returned in both
 * processes (preload_test.sh; on glibc too). */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <pthread.h>

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

static void InHandler(void) {
  if (!AllocateAndFree()) _exit(3);
  malloc_trim(0);
}

enum { kRemoteBlocks = 4096 };
static void* g_remote[kRemoteBlocks];

static void* AllocateRemoteBlocks(void* unused) {
  (void)unused;
  for (int i = 0; i < kRemoteBlocks; ++i) g_remote[i] = malloc(64);
  return NULL;
}

int main(void) {
  if (pthread_atfork(InHandler, InHandler, InHandler) != 0) return 2;
  free(malloc(100)); /* ferry's first heap: its handlers come after ours */
  pthread_t thread;
  if (pthread_create(&thread, NULL, AllocateRemoteBlocks, NULL) != 0) return 2;
  pthread_join(thread, NULL);
  for (int i = 0; i < kRemoteBlocks; ++i) free(g_remote[i]); /* all remote */
  for (size_t size = 16; size <= 65536; size *= 2) free(malloc(size)); /* slow paths */
  for (int round = 0; round < 3; ++round) {
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
  puts("done");
  return 0;
}

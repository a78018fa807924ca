/* preload_pool_plugin.c — a library whose constructor starts a worker thread
 * and waits for it, as plugins that start a thread pool at load time do.
 * dlopen holds the loader's lock while the constructor runs. The worker frees
 * blocks another thread allocated, so that under ferry every free is remote:
 * it publishes batches and starts the reclaimer pool while that lock is held
 * (preload_test.sh). The pool's start once looked up the C library's
 * pthread_create with dlvsym, which takes the same lock: the worker waited for
 * dlopen, and dlopen for the worker. */
#define _GNU_SOURCE /* pthread_timedjoin_np, usleep, clock_gettime */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { kBlocks = 8192, kWaitSeconds = 10 };

static void* g_blocks[kBlocks];

/* 1: the worker finished within kWaitSeconds; 0: it did not; -1: not run. */
int plugin_worker_finished_in_time = -1;

static void* Allocate(void* unused) {
  (void)unused;
  for (int i = 0; i < kBlocks; ++i) {
    g_blocks[i] = malloc(64);
    if (g_blocks[i] == NULL) return (void*)1;
    memset(g_blocks[i], 0x5a, 64);
  }
  return NULL;
}

static void* Work(void* unused) {
  (void)unused;
  pthread_t allocator;
  void* failed = NULL;
  if (pthread_create(&allocator, NULL, Allocate, NULL) != 0) return (void*)1;
  pthread_join(allocator, &failed);
  if (failed != NULL) return failed;
  for (int i = 0; i < kBlocks; ++i) free(g_blocks[i]);  /* all remote */
  /* An allocation slow path, where a pool start asked for by a free runs too. */
  for (int size = 16; size <= 4096; size *= 2) free(malloc((size_t)size));
  return NULL;
}

__attribute__((constructor)) static void StartWorkerAndWait(void) {
  pthread_t worker;
  if (pthread_create(&worker, NULL, Work, NULL) != 0) return;
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += kWaitSeconds;
  void* failed = NULL;
  if (pthread_timedjoin_np(worker, &failed, &deadline) == 0) {
    plugin_worker_finished_in_time = failed == NULL ? 1 : -1;
  } else {
    plugin_worker_finished_in_time = 0;
    pthread_detach(worker); /* it goes on once dlopen has returned */
  }
}

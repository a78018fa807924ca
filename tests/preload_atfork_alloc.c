/* preload_atfork_alloc.c — fork handlers around ferry's, from both sides.
 *
 * Registered before ferry's: those of libpreload_atfork_early.so, which this
 * program links (a library's constructor registers them; see there). They
 * run inside ferry's handlers and allocate, free and flush there, and 60
 * more make the library's registrations grow glibc's list.
 *
 * Registered after ferry's, before the program's first malloc (ferry
 * registers its own at load): a prepare handler that waits for a worker
 * thread to pause while the worker allocates huge and small blocks, and 60
 * that do nothing. These run outside ferry's handlers. Until 2026-12-05
 * ferry registered its handlers at its first heap, after these: the
 * prepare handler then waited for good for a worker spinning on a lock
 * ferry's prepare held, and the 49th registration grew glibc's list by
 * malloc under glibc's atfork lock, whose first heap registered ferry's
 * handlers and took that lock again (a bug hunt).
 *
 * Before each fork the main thread frees blocks another thread allocated:
 * two batches go to the pool (FERRY_RECLAIMERS=1), which may still hold
 * them queued when the fork parks it, and the early handlers' malloc_trim
 * must apply them. Prints "done" and exits 0 once three forks have
 * returned in both processes (preload_test.sh; on glibc too). */
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <pthread.h>

int AtforkEarlyAllocateAndFree(void);
int AtforkEarlyForksWithBatchesQueued(void);

static atomic_int g_pause_requested;
static atomic_int g_paused;
static atomic_int g_stop;

static void* AllocateUntilStopped(void* unused) {
  (void)unused;
  for (unsigned i = 0; !atomic_load(&g_stop); ++i) {
    if (atomic_load(&g_pause_requested)) {
      atomic_store(&g_paused, 1);
      while (atomic_load(&g_pause_requested)) sched_yield();
      atomic_store(&g_paused, 0);
      continue;
    }
    char* huge = malloc((size_t)3 << 20);
    char* small = malloc(64 + i % 1000);
    if (huge == NULL || small == NULL) _exit(3);
    huge[i % 4096] = 1;
    small[0] = 1;
    free(small);
    free(huge);
  }
  return NULL;
}

static void PauseTheWorker(void) {
  atomic_store(&g_pause_requested, 1);
  while (!atomic_load(&g_paused) && !atomic_load(&g_stop)) sched_yield();
}
static void ResumeTheWorker(void) { atomic_store(&g_pause_requested, 0); }
static void DoNothing(void) {}

enum { kIdleHandlers = 60 };

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
  if (pthread_atfork(PauseTheWorker, ResumeTheWorker, ResumeTheWorker) != 0) return 2;
  for (int i = 0; i < kIdleHandlers; ++i) {
    if (pthread_atfork(DoNothing, DoNothing, DoNothing) != 0) return 2;
  }
  pthread_t worker;
  if (pthread_create(&worker, NULL, AllocateUntilStopped, NULL) != 0) return 2;
  for (int round = 0; round < 3; ++round) {
    pthread_t thread;
    if (pthread_create(&thread, NULL, AllocateRemoteBlocks, NULL) != 0) return 2;
    pthread_join(thread, NULL);
    for (int i = 0; i < kRemoteBlocks; ++i) free(g_remote[i]); /* all remote */
    for (size_t size = 16; size <= 65536; size *= 2) free(malloc(size)); /* slow paths: the pool starts */
    fflush(stdout);
    const pid_t child = fork();
    if (child < 0) return 2;
    if (child == 0) _exit(AtforkEarlyAllocateAndFree() ? 0 : 3);
    int status = 0;
    if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      fprintf(stderr, "child of round %d: status %d\n", round, status);
      return 1;
    }
  }
  atomic_store(&g_stop, 1);
  pthread_join(worker, NULL);
  fprintf(stderr, "handler calls that found batches still queued: %d\n", AtforkEarlyForksWithBatchesQueued());
  puts("done");
  return 0;
}

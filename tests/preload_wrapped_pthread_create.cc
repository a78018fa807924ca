// preload_wrapped_pthread_create.cc — a program that puts its own
// pthread_create in front of the C library's (as profilers and runtimes
// do) and, under the wrapper's lock, allocates and frees the records other
// threads left: remote frees that fill batches and start ferry's pool from
// inside the wrapper. The pool must not call back into the wrapper and wait
// for its lock (the rule; jemalloc#1231 and #2069 hung so). The
// threads backend makes its threads with the C library's pthread_create;
// until 2026-12-05 the oneTBB backend's first enqueue launched oneTBB's
// workers through the wrapper, from the freeing thread, and hung here.
// With the argument "fork" the program instead serializes thread creation
// and fork with that one lock (its fork prepare handler takes it), and
// forks in a loop while another thread's remote frees start the pool: a
// fork must not wait for a oneTBB start that waits for the lock (it did,
// for good, in the first version of the fix above).
// preload_test.sh runs it under LD_PRELOAD=libferry.so with each backend.
// Links oneTBB (which the backend needs in the program), built without ferry.
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <oneapi/tbb/info.h>

#include "ferry.h"

namespace {

using CreateFn = int (*)(pthread_t*, const pthread_attr_t*, void* (*)(void*), void*);

constexpr int kThreads = 300;
constexpr int kRecordsPerThread = 64;

pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
void* g_left[kThreads * kRecordsPerThread];  // records of finished threads; g_lock
int g_left_count = 0;
int g_wrapper_calls = 0;

CreateFn RealCreate() {
  void* f = dlvsym(RTLD_NEXT, "pthread_create", "GLIBC_2.34");
  if (f == nullptr) f = dlsym(RTLD_NEXT, "pthread_create");
  return reinterpret_cast<CreateFn>(f);
}

void* Worker(void*) {
  void* records[kRecordsPerThread];
  for (void*& r : records) {
    r = malloc(48);
    memset(r, 0x5a, 48);
  }
  pthread_mutex_lock(&g_lock);
  for (void* r : records) g_left[g_left_count++] = r;
  pthread_mutex_unlock(&g_lock);
  return nullptr;
}

void LockForFork() { pthread_mutex_lock(&g_lock); }
void UnlockAfterFork() { pthread_mutex_unlock(&g_lock); }

void* FreeAll(void* blocks) {
  for (void** p = static_cast<void**>(blocks); *p != nullptr; ++p) free(*p);
  return nullptr;
}

// Rounds of blocks made here and freed by a new thread (made through the
// wrapper): remote frees that start the pool.
void* MakeRemoteFrees(void*) {
  static void* blocks[20001];
  for (int round = 0; round < 20; ++round) {
    for (int i = 0; i < 20000; ++i) blocks[i] = malloc(64);
    pthread_t thread;
    if (pthread_create(&thread, nullptr, FreeAll, blocks) != 0) abort();
    pthread_join(thread, nullptr);
  }
  return nullptr;
}

double SecondsSince(const timespec& start) {
  timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return static_cast<double>(now.tv_sec - start.tv_sec) + 1e-9 * static_cast<double>(now.tv_nsec - start.tv_nsec);
}

int ForkWhileThePoolStarts() {
  free(malloc(1));  // ferry set up (its fork handlers are registered at load: the program's prepare runs before them)
  pthread_atfork(LockForFork, UnlockAfterFork, UnlockAfterFork);
  pthread_t remote;
  if (pthread_create(&remote, nullptr, MakeRemoteFrees, nullptr) != 0) return 1;
  timespec start;
  clock_gettime(CLOCK_MONOTONIC, &start);
  int forks = 0;
  while (SecondsSince(start) < 0.4) {
    const pid_t pid = fork();
    if (pid == 0) _exit(0);
    int status = 0;
    waitpid(pid, &status, 0);
    if (status != 0) return 2;
    ++forks;
  }
  pthread_join(remote, nullptr);
  printf("done: %d forks\n", forks);
  return 0;
}

}  // namespace

extern "C" int pthread_create(pthread_t* thread, const pthread_attr_t* attr, void* (*start)(void*), void* arg) {
  static const CreateFn real = RealCreate();
  pthread_mutex_lock(&g_lock);
  ++g_wrapper_calls;
  void* record = malloc(64);
  memset(record, 0, 64);
  for (int i = 0; i < g_left_count; ++i) free(g_left[i]);  // another thread's: remote
  g_left_count = 0;
  const int rc = real(thread, attr, start, arg);
  free(record);
  pthread_mutex_unlock(&g_lock);
  return rc;
}

// Batches ferry's pool has applied so far (ferry_stats_get_sized, looked
// up: the program is built without ferry); -1 without ferry.
int64_t BatchesPooled() {
  using StatsFn = void (*)(ferry_stats_t*, size_t);
  static const auto stats_get = reinterpret_cast<StatsFn>(dlsym(RTLD_DEFAULT, "ferry_stats_get_sized"));
  if (stats_get == nullptr) return -1;
  ferry_stats_t stats;
  stats_get(&stats, sizeof(stats));
  return static_cast<int64_t>(stats.batches_pooled);
}

int main(int argc, char** argv) {
  if (argc > 1 && strcmp(argv[1], "fork") == 0) return ForkWhileThePoolStarts();
  timespec start;
  clock_gettime(CLOCK_MONOTONIC, &start);
  // More rounds while the pool has applied no batch, for up to 10 s: a
  // oneTBB arena starts on a thread of its own, and on a crowded machine
  // (CI runs tests side by side) it started after the last batch, so the
  // check that the pool ran had nothing to see (CI, 2026-12-05).
  int made = 0;
  for (; made < kThreads || (BatchesPooled() == 0 && SecondsSince(start) < 10); ++made) {
    pthread_t thread;
    if (pthread_create(&thread, nullptr, Worker, nullptr) != 0) return 1;
    pthread_join(thread, nullptr);
  }
  pthread_mutex_lock(&g_lock);
  for (int i = 0; i < g_left_count; ++i) free(g_left[i]);
  g_left_count = 0;
  // Threads oneTBB made count too: through this wrapper, as it should.
  printf("done: %d threads, %d wrapper calls, oneTBB default concurrency %d\n", made, g_wrapper_calls,
         tbb::info::default_concurrency());
  pthread_mutex_unlock(&g_lock);
  return 0;
}

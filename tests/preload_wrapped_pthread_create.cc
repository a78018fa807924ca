// preload_wrapped_pthread_create.cc — a program that puts its own
// pthread_create in front of the C library's (as profilers and runtimes
// do) and, under the wrapper's lock, allocates and frees the records other
// threads left: remote frees that fill batches and start ferry's pool from
// inside the wrapper. The pool must not call back into the wrapper and wait
// for its lock (the rule; jemalloc#1231 and #2069 hung so). The
// threads backend makes its threads with the C library's pthread_create;
// until 2026-12-05 the oneTBB backend's first enqueue launched oneTBB's
// workers through the wrapper, from the freeing thread, and hung here.
// preload_test.sh runs it under LD_PRELOAD=libferry.so with each backend.
// Links oneTBB (which the backend needs in the program), built without ferry.
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <oneapi/tbb/info.h>

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

int main() {
  for (int i = 0; i < kThreads; ++i) {
    pthread_t thread;
    if (pthread_create(&thread, nullptr, Worker, nullptr) != 0) return 1;
    pthread_join(thread, nullptr);
  }
  pthread_mutex_lock(&g_lock);
  for (int i = 0; i < g_left_count; ++i) free(g_left[i]);
  g_left_count = 0;
  // Threads oneTBB made count too: through this wrapper, as it should.
  printf("done: %d threads, %d wrapper calls, oneTBB default concurrency %d\n", kThreads, g_wrapper_calls,
         tbb::info::default_concurrency());
  pthread_mutex_unlock(&g_lock);
  return 0;
}

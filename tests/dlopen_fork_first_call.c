/* dlopen_fork_first_call.c — ferry opened with dlopen, used through its API:
 * its first call comes from a second thread while the main thread forks,
 * and the main thread's fork prepare handler, registered before ferry's
 * (before the dlopen), calls ferry too. That handler runs inside ferry's
 * prepare, and its call waits for ferry's setup, which the other thread is
 * doing; a setup that waited for the fork (the pool's configuration took
 * the mutex a fork holds from prepare to parent) hung about half the runs
 * (a review, 2026-12-05). Exits 0 when the fork and both threads are done;
 * preload_test.sh runs it 20 times, with the path of libferry.so as its
 * argument and a spin count before the fork (0 to 19999). */
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void* (*g_malloc)(size_t);
static void (*g_free)(void*);
static atomic_int g_started;

static void PrepareCallsFerry(void) {
  if (g_malloc != NULL) g_free(g_malloc(16));
}

static void* FirstCall(void* unused) {
  (void)unused;
  atomic_store(&g_started, 1);
  g_free(g_malloc(32));
  return NULL;
}

int main(int argc, char** argv) {
  if (argc < 3) return 2;
  const long spins = atol(argv[2]);
  if (pthread_atfork(PrepareCallsFerry, NULL, NULL) != 0) return 2;
  void* ferry = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (ferry == NULL) {
    fprintf(stderr, "%s\n", dlerror());
    return 2;
  }
  g_malloc = (void* (*)(size_t))dlsym(ferry, "ferry_malloc");
  g_free = (void (*)(void*))dlsym(ferry, "ferry_free");
  if (g_malloc == NULL || g_free == NULL) return 2;
  pthread_t thread;
  if (pthread_create(&thread, NULL, FirstCall, NULL) != 0) return 2;
  while (!atomic_load(&g_started)) {
  }
  for (volatile long i = 0; i < spins; ++i) {
  }
  const pid_t child = fork();
  if (child < 0) return 2;
  if (child == 0) _exit(0);
  int status = 0;
  if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0) return 1;
  pthread_join(thread, NULL);
  return 0;
}

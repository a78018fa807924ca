// preload_tbb_dlopen.c — a program that does not link oneTBB but loads it
// later (as a plugin that needs it would), run by preload_test.sh with
// FERRY_RECLAIMER_BACKEND=tbb: ferry must fall back to its own threads
// with a warning. oneTBB's entry points were found by dlsym, but ferry's
// references to them had been bound, to nothing, when it was loaded, and
// its first batch jumped to address 0.
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

enum { kBlocks = 20000 };
static void* blocks[kBlocks];

static void* FreeAll(void* arg) {
  for (int i = 0; i < kBlocks; ++i) free(blocks[i]);
  return arg;
}

int main(int argc, char** argv) {
  const char* library = argc > 1 ? argv[1] : "libtbb.so.12";
  if (dlopen(library, RTLD_NOW | RTLD_GLOBAL) == NULL) {
    printf("no %s here\n", library);
    return 0;
  }
  for (int i = 0; i < kBlocks; ++i) blocks[i] = malloc(32);
  pthread_t t;
  if (pthread_create(&t, NULL, FreeAll, NULL) != 0 || pthread_join(t, NULL) != 0) return 1;
  for (int i = 0; i < kBlocks; ++i) blocks[i] = malloc(32);  // over the blocks that came back
  FreeAll(NULL);
  puts("freed");
  return 0;
}

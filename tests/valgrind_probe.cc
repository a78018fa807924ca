// valgrind_probe.cc — a program on ferry (malloc replaced) with the mistakes
// memcheck exists to find; tests/valgrind_test.sh runs it under memcheck.
//
//   valgrind_probe build   prints "valgrind_build=1" for a FERRY_VALGRIND build
//   valgrind_probe leak    leaks five blocks: 40 (new[]), 48 and 48 (small,
//                          one the first block of its page), 300000 (large,
//                          its page record points at it), 5 MiB (huge);
//                          5,543,016 bytes in all
//   valgrind_probe uaf     writes to a block it freed, reads a block another
//                          thread freed
//   valgrind_probe clean   threads, frees across threads, realloc, calloc,
//                          aligned blocks, new/delete: no error, no leak
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cstdint>
#include <thread>
#include <vector>

#include "common/valgrind.h"
#include "ferry.h"

namespace {

// Keeps the compiler from dropping a store or a load to freed memory.
template <typename T>
T* Opaque(T* p) {
  asm volatile("" : "+r"(p));
  return p;
}

void* volatile g_sink;

int Leak() {
  g_sink = new int[10];                    // 40 bytes
  g_sink = malloc(48);                     // the first block of its page
  free(malloc(48));
  g_sink = malloc(48);
  g_sink = malloc(300000);                 // a large block
  g_sink = malloc(size_t{5} << 20);        // a huge block
  g_sink = nullptr;
  return 0;
}

int UseAfterFree() {
  int* mine = static_cast<int*>(malloc(64));
  mine[3] = 1;
  free(mine);
  Opaque(mine)[5] = 2;  // a write after free, 20 bytes into a freed 64-byte block
  char* theirs = static_cast<char*>(malloc(200));
  memset(theirs, 7, 200);
  std::thread([theirs] {
    free(theirs);  // a remote free: the block waits in this thread's batch
    ferry_flush();
  }).join();
  return Opaque(theirs)[100] == 7 ? 0 : 1;  // a read after free, 100 bytes in
}

int Clean() {
  std::vector<std::thread> threads;
  std::vector<std::vector<char*>> handed(4);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([t, &handed] {
      for (int i = 0; i < 2000; ++i) {
        char* p = static_cast<char*>(malloc(16 + (i * 37 + t) % 2000));
        p[0] = static_cast<char>(i);
        p = static_cast<char*>(realloc(p, 8 + (i * 53) % 5000));
        if (p[0] != static_cast<char>(i)) abort();
        if (i % 3 == 0) {
          handed[t].push_back(p);
        } else {
          free(p);
        }
      }
      int* zeroed = static_cast<int*>(calloc(100, sizeof(int)));
      for (int k = 0; k < 100; ++k) {
        if (zeroed[k] != 0) abort();
      }
      free(zeroed);
      void* aligned = aligned_alloc(4096, 8192);
      if (reinterpret_cast<uintptr_t>(aligned) % 4096 != 0) abort();
      free(aligned);
      delete new std::vector<int>(1000, t);
      for (int k = 0; k < 4; ++k) free(malloc(size_t{5} << 20));  // huge, mapped again
    });
  }
  for (auto& thread : threads) thread.join();
  // Every block another thread made, freed here: remote frees.
  for (auto& list : handed) {
    for (char* p : list) free(p);
  }
  ferry_collect();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const char* mode = argc > 1 ? argv[1] : "";
  if (strcmp(mode, "build") == 0) {
    printf("valgrind_build=%d\n", ferry::kValgrind ? 1 : 0);
    return 0;
  }
  if (strcmp(mode, "leak") == 0) return Leak();
  if (strcmp(mode, "uaf") == 0) return UseAfterFree();
  if (strcmp(mode, "clean") == 0) return Clean();
  fprintf(stderr, "usage: valgrind_probe build|leak|uaf|clean\n");
  return 2;
}

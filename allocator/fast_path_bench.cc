// fast_path_bench.cc — N malloc/free pairs on the fast paths, for counting
// instructions under callgrind (allocator/fast_path_budget_test.sh). It calls
// plain malloc and free, so the same source measures ferry (linked with the
// override) and any allocator put in front of it with LD_PRELOAD.
#include <cstdio>
#include <cstdlib>

int main(int argc, char** argv) {
  const long pairs = argc > 1 ? atol(argv[1]) : 1000;
  // A few sizes of the common small classes, so several pages are warm.
  static const size_t kSizes[8] = {16, 32, 48, 64, 24, 96, 128, 256};
  void* volatile sink;
  for (int warm = 0; warm < 1000; ++warm) {
    void* p = malloc(kSizes[warm & 7]);
    sink = p;
    free(p);
  }
  for (long i = 0; i < pairs; ++i) {
    void* p = malloc(kSizes[i & 7]);
    sink = p;
    free(p);
  }
  (void)sink;
  printf("%ld\n", pairs);
  return 0;
}

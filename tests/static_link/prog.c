/* A C program that links only libferry.a (no C++ runtime): malloc, and what
   libc allocates for it, must come from ferry. ferry_usable_size aborts on a
   pointer ferry never returned, so each call below proves where a block came
   from. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferry.h"

/* Names ferry defines beyond malloc's that a C program may define too
   (none is reserved): libferry.a defines them weakly, so this links. */
static int own_cfree_calls;
void cfree(void* p) {
  ++own_cfree_calls;
  free(p);
}
void malloc_stats(void) {}
int mallopt(int param, int value) { return param + value; }

int main(void) {
  void* p = malloc(100);
  if (p == NULL || ferry_usable_size(p) < 100) return 1;
  char* copy = strdup("ferried home"); /* libc's own malloc call */
  if (copy == NULL || ferry_usable_size(copy) < 13) return 2;
  void* q = realloc(p, 5000);
  if (q == NULL || ferry_usable_size(q) < 5000) return 3;
  ferry_stats_t stats;
  ferry_stats_get(&stats);
  if (stats.heaps_created < 1 || stats.version != FERRY_VERSION) return 4;
  free(copy);
  cfree(q);
  if (own_cfree_calls != 1) return 5;
  malloc_stats();
  if (mallopt(3, 4) != 7) return 6;
  puts("c ok");
  return 0;
}

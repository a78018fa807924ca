/* Plain C: malloc and free, with ferry's statistics to show whose they are. */
#include <stdio.h>
#include <stdlib.h>

#include "ferry.h"

int main(void) {
  void* blocks[1000];
  for (int i = 0; i < 1000; ++i) blocks[i] = malloc((size_t)(16 + i));
  for (int i = 0; i < 1000; ++i) free(blocks[i]);
  ferry_stats_t stats;
  ferry_stats_get(&stats);
  if (stats.pages_made == 0) return 1; /* malloc was not ferry's */
  puts("make ok");
  return 0;
}

/* A C program that calls glibc's other malloc.h functions (mallopt,
   mallinfo, mallinfo2, malloc_info) and links libferry.a: they must be
   ferry's and report what ferry holds. Linked fully static too, where glibc's
   versions live in the same libc.a object as its malloc: before ferry
   defined them that link failed ("multiple definition of malloc"). */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferry.h"

#define EXPECT(cond)                                                   \
  do {                                                                 \
    if (!(cond)) {                                                     \
      fprintf(stderr, "glibc_calls.c:%d: %s failed\n", __LINE__, #cond); \
      return 1;                                                        \
    }                                                                  \
  } while (0)

enum { kHugeBytes = 10 << 20, kSmallBlocks = 1000, kSegmentBytes = 4 << 20 };

int main(void) {
  /* Accepted and ignored, as glibc accepts them. */
  EXPECT(mallopt(M_ARENA_MAX, 1) == 1);
  EXPECT(mallopt(M_MMAP_THRESHOLD, 1 << 20) == 1);

  static void* small[kSmallBlocks];
  for (int i = 0; i < kSmallBlocks; ++i) {
    small[i] = malloc(1000);
    EXPECT(small[i] != NULL);
    memset(small[i], i, 1000);
  }
  char* huge = malloc(kHugeBytes);
  EXPECT(huge != NULL);
  memset(huge, 1, kHugeBytes);

  ferry_stats_t stats;
  ferry_stats_get(&stats);
  struct mallinfo2 info = mallinfo2();
  /* One thread: nothing changes between the two reads. */
  EXPECT(info.arena == stats.segments_live * kSegmentBytes + stats.huge_bytes_cached);
  EXPECT(info.arena >= kSegmentBytes);
  EXPECT(info.uordblks >= (size_t)kSmallBlocks * 1000);
  EXPECT(info.uordblks + info.fordblks == info.arena);
  EXPECT(info.hblks == stats.huge_allocs - stats.huge_frees);
  EXPECT(info.hblks >= 1);
  EXPECT(info.hblkhd == stats.huge_bytes_live);
  EXPECT(info.hblkhd >= kHugeBytes);

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  struct mallinfo old = mallinfo();
#pragma GCC diagnostic pop
  EXPECT((size_t)old.arena == info.arena);
  EXPECT((size_t)old.hblkhd == info.hblkhd);

  char* xml = NULL;
  size_t xml_size = 0;
  FILE* out = open_memstream(&xml, &xml_size);
  EXPECT(out != NULL);
  EXPECT(malloc_info(0, out) == 0);
  fclose(out);
  char expected[128];
  snprintf(expected, sizeof(expected), "<total type=\"mmap\" count=\"%zu\" size=\"%zu\"/>", info.hblks,
           info.hblkhd);
  EXPECT(strncmp(xml, "<malloc version=\"1\">\n", 21) == 0);
  EXPECT(strstr(xml, expected) != NULL);
  EXPECT(ferry_usable_size(xml) >= xml_size); /* open_memstream's buffer is ferry's too */
  free(xml);
  EXPECT(malloc_info(1, stdout) == -1);

  free(huge);
  for (int i = 0; i < kSmallBlocks; ++i) free(small[i]);
  /* The freed huge block's mapping waits in the huge cache: free space
     ferry holds, in arena and fordblks. */
  info = mallinfo2();
  ferry_stats_get(&stats);
  EXPECT(info.hblkhd == 0);
  EXPECT(stats.huge_bytes_cached >= kHugeBytes);
  EXPECT(info.arena == stats.segments_live * kSegmentBytes + stats.huge_bytes_cached);
  EXPECT(info.uordblks + info.fordblks == info.arena);
  puts("glibc calls ok");
  return 0;
}

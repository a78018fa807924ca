/* A C program that links only libferry.a (no C++ runtime): plain malloc,
 * calloc, realloc and free, and a free on another thread. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void* release(void* p) {
  free(p);
  return NULL;
}

int main(void) {
  char* text = malloc(32);
  if (text == NULL) return 1;
  strcpy(text, "ferry");
  text = realloc(text, 4096);
  if (text == NULL || strcmp(text, "ferry") != 0) return 2;
  int* zeros = calloc(1000, sizeof(int));
  if (zeros == NULL) return 3;
  for (int i = 0; i < 1000; ++i) {
    if (zeros[i] != 0) return 4;
  }
  pthread_t thread;
  if (pthread_create(&thread, NULL, release, zeros) != 0) return 5;
  pthread_join(thread, NULL);
  free(text);
  puts("c static ok");
  return 0;
}

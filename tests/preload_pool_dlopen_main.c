/* preload_pool_dlopen_main.c — dlopens tests/preload_pool_plugin.c's library
 * (argv[1]), whose constructor waits for a worker thread that starts ferry's
 * reclaimer pool, and reports whether the worker finished in time and how
 * many reclaimer threads run afterwards. Exit 0: finished in time and a pool
 * runs; 1: the worker was stuck while dlopen ran; 3: no pool started, so the
 * run tested nothing; 2: usage or loading error. */
#define _GNU_SOURCE /* pthread_timedjoin_np, usleep, clock_gettime */
#include <dirent.h>
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int CountReclaimerThreads(void) {
  DIR* tasks = opendir("/proc/self/task");
  if (tasks == NULL) return -1;
  int count = 0;
  struct dirent* entry;
  while ((entry = readdir(tasks)) != NULL) {
    if (entry->d_name[0] == '.') continue;
    char path[64], name[32] = {0};
    snprintf(path, sizeof path, "/proc/self/task/%s/comm", entry->d_name);
    FILE* comm = fopen(path, "r");
    if (comm == NULL) continue;
    if (fgets(name, sizeof name, comm) != NULL && strncmp(name, "ferry-reclaim", 13) == 0) ++count;
    fclose(comm);
  }
  closedir(tasks);
  return count;
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s PLUGIN\n", argv[0]);
    return 2;
  }
  void* plugin = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (plugin == NULL) {
    fprintf(stderr, "dlopen: %s\n", dlerror());
    return 2;
  }
  const int* finished = (const int*)dlsym(plugin, "plugin_worker_finished_in_time");
  if (finished == NULL) return 2;
  int reclaimers = 0;
  for (int tries = 0; tries < 500 && reclaimers == 0; ++tries) {
    reclaimers = CountReclaimerThreads();
    if (reclaimers == 0) usleep(10 * 1000);
  }
  printf("worker finished in time: %d; reclaimer threads: %d\n", *finished, reclaimers);
  if (*finished != 1) return 1;
  return reclaimers > 0 ? 0 : 3;
}

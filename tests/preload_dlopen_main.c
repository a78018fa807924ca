/* preload_dlopen_main.c — a C program (no C++ runtime of its own) that
 * dlopens a C++ plugin, RTLD_LOCAL or RTLD_GLOBAL (argv[2]), and checks that
 * operator new's failures behave under the plugin's C++ runtime. Exit 0 when
 * they do. */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s PLUGIN local|global\n", argv[0]);
    return 2;
  }
  const int mode = strcmp(argv[2], "global") == 0 ? RTLD_GLOBAL : RTLD_LOCAL;
  void* plugin = dlopen(argv[1], RTLD_NOW | mode);
  if (plugin == NULL) {
    fprintf(stderr, "dlopen: %s\n", dlerror());
    return 2;
  }
  int (*catches)(void) = (int (*)(void))dlsym(plugin, "plugin_catches_bad_alloc");
  int (*nothrow)(void) = (int (*)(void))dlsym(plugin, "plugin_nothrow_runs_the_handler");
  if (catches == NULL || nothrow == NULL) return 2;
  const int handler = nothrow();
  const int caught = catches();
  printf("%s: nothrow with a handler %d (want 11), bad_alloc caught %d (want 1)\n", argv[2], handler, caught);
  return handler == 11 && caught == 1 ? 0 : 1;
}

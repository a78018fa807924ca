/* preload_dlopen_main.c — a C program (no C++ runtime of its own) that
 * dlopens a C++ plugin, RTLD_LOCAL or RTLD_GLOBAL (argv[2]), and checks that
 * the plugin's operator new is ferry's and that its failures behave under the
 * plugin's C++ runtime. Exit 0 when they do (so never without ferry
 * preloaded). */
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
  const char* (*comes_from)(void) = (const char* (*)(void))dlsym(plugin, "plugin_operator_new_comes_from");
  if (catches == NULL || nothrow == NULL || comes_from == NULL) return 2;
  const int handler = nothrow();
  const int caught = catches();
  const char* from = comes_from();
  const int ferrys = strstr(from, "libferry") != NULL;
  printf("%s: nothrow with a handler %d (want 11), bad_alloc caught %d (want 1), operator new[] from %s\n",
         argv[2], handler, caught, from);
  return handler == 11 && caught == 1 && ferrys ? 0 : 1;
}

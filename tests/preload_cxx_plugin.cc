// preload_cxx_plugin.cc — a C++ shared library that a C program dlopens
// (tests/preload_dlopen_main.c): under LD_PRELOAD=libferry.so, ferry was
// loaded before any C++ runtime, so its operator new must find the runtime
// when it is needed, not when it was loaded.
#include <dlfcn.h>

#include <cstddef>
#include <cstdint>
#include <new>

namespace {

int handler_calls = 0;
char* volatile sink;

void GiveUp() {
  ++handler_calls;
  std::set_new_handler(nullptr);
}

}  // namespace

// 1 if an impossible operator new[] threw std::bad_alloc and it was caught.
extern "C" int plugin_catches_bad_alloc() {
  volatile std::size_t too_big = SIZE_MAX / 4;
  try {
    sink = new char[too_big];
    return 0;
  } catch (const std::bad_alloc&) {
    return 1;
  }
}

// 11 if a nothrow operator new ran the installed new-handler once, then
// returned null.
extern "C" int plugin_nothrow_runs_the_handler() {
  volatile std::size_t too_big = SIZE_MAX / 4;
  handler_calls = 0;
  std::set_new_handler(GiveUp);
  void* p = ::operator new(too_big, std::nothrow);
  return handler_calls * 10 + (p == nullptr ? 1 : 0);
}

// The file of the operator new[] this plugin's calls bind to (ferry's under
// LD_PRELOAD, libstdc++'s otherwise), or "?" where the loader cannot tell:
// the answers above would be the same with libstdc++'s own operators.
extern "C" const char* plugin_operator_new_comes_from() {
  void* (*const op)(std::size_t) = &::operator new[];
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(op), &info) == 0 || info.dli_fname == nullptr) return "?";
  return info.dli_fname;
}

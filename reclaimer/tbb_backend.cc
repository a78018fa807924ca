// tbb_backend.cc — see tbb_backend.h.
//
// The oneTBB entry points this file reaches (through the inline code of
// task_arena and global_control) are declared weak below, so that linking
// ferry never requires oneTBB; availability is checked at run time, on
// those references themselves, before any of them is called.
#include "reclaimer/tbb_backend.h"

#include <dlfcn.h>
#include <link.h>
#include <sched.h>
#include <string.h>

#include <atomic>
#include <new>
#include <oneapi/tbb/global_control.h>
#include <oneapi/tbb/info.h>
#include <oneapi/tbb/task_arena.h>

#include "common/os.h"

// oneTBB's exported functions used by the inline code below, and the sized
// aligned operator delete of its task objects: weak, so that a program
// without oneTBB (or a C program linking libferry.a) links without them.
// The ones TbbBackendAvailable checks are declared here under names of
// their own (a weak declaration the file refers to makes the symbol weak
// for the inline code's calls too); the other two need only the directive.
extern "C" {
void TbbInitializeRef() __asm__("_ZN3tbb6detail2r110initializeERNS0_2d115task_arena_baseE") __attribute__((weak));
void TbbEnqueueRef() __asm__("_ZN3tbb6detail2r17enqueueERNS0_2d14taskEPNS2_15task_arena_baseE") __attribute__((weak));
void TbbAllocateRef() __asm__("_ZN3tbb6detail2r18allocateERPNS0_2d117small_object_poolEm") __attribute__((weak));
void TbbDeallocateRef() __asm__(
    "_ZN3tbb6detail2r110deallocateERNS0_2d117small_object_poolEPvmRKNS2_14execution_dataE") __attribute__((weak));
void TbbCreateControlRef() __asm__("_ZN3tbb6detail2r16createERNS0_2d114global_controlE") __attribute__((weak));
void TbbDefaultConcurrencyRef() __asm__("_ZN3tbb6detail2r124numa_default_concurrencyEi") __attribute__((weak));
void TbbActiveValueRef() __asm__("_ZN3tbb6detail2r127global_control_active_valueEi") __attribute__((weak));
}

asm(".weak _ZN3tbb6detail2r117assertion_failureEPKciS3_S3_");
asm(".weak _ZN3tbb6detail2r19terminateERNS0_2d115task_arena_baseE");
asm(".weak _ZN3tbb6detail2r17destroyERNS0_2d114global_controlE");
asm(".weak _ZdlPvmSt11align_val_t");

namespace ferry {
namespace {

alignas(tbb::task_arena) unsigned char g_arena_storage[sizeof(tbb::task_arena)];
alignas(tbb::global_control) unsigned char g_control_storage[sizeof(tbb::global_control)];
tbb::task_arena* g_arena = nullptr;
int g_arena_workers = 0;
bool g_control_made = false;
// The pool's, called before the program finalizes oneTBB (see finalize).
std::atomic<void (*)()> g_before_finalize{nullptr};
// The program has finalized oneTBB (perhaps before ferry was set up).
std::atomic<bool> g_program_finalized{false};
// TbbBackendLaunchWorkers' tasks: begun, and done.
std::atomic<int> g_launch_begun{0};
std::atomic<int> g_launch_done{0};

}  // namespace

// TbbBackendAvailable: the weak references above, as the program resolved
// them when it was loaded, are what the calls below will jump to. A oneTBB
// loaded later (dlopen of a plugin that needs it) is found by dlsym, but
// libferry.so is bound at load time (and libferry.a's references are the
// executable's), so these stay null and the calls jumped to address 0.
bool TbbBackendAvailable() {
  void (*const needed[])() = {
      &TbbInitializeRef, &TbbEnqueueRef,        &TbbAllocateRef,    &TbbDeallocateRef,
      &TbbCreateControlRef, &TbbDefaultConcurrencyRef, &TbbActiveValueRef,
  };
  for (void (*ref)() : needed) {
    if (ref == nullptr) return false;
  }
  return true;
}

int TbbBackendStart(int concurrency) {
  if (g_arena != nullptr) return g_arena_workers;
  // oneTBB gives an arena at most max_allowed_parallelism - 1 workers
  // (its default concurrency - 1 unless a control says otherwise); allow the
  // ones asked for. Only where neither the default nor a control of the
  // program's allows them: the active value is the smallest of all live
  // controls, so a control made otherwise would cap the program's own oneTBB
  // work at the pool's size, for good (ferry's lives as long as the process,
  // after the program's own are gone).
  const size_t wanted = static_cast<size_t>(concurrency) + 1;
  if (static_cast<size_t>(tbb::info::default_concurrency()) < wanted &&
      tbb::global_control::active_value(tbb::global_control::max_allowed_parallelism) < wanted) {
    new (g_control_storage) tbb::global_control(tbb::global_control::max_allowed_parallelism, wanted);
    g_control_made = true;
  }
  // A control of the program's below that still wins. An arena that asked
  // for more workers than it allows made oneTBB print "TBB Warning: The
  // number of workers is currently limited to ..." on the program's stderr
  // when the program had run oneTBB before (found by a review, 2026-12-05):
  // ask for no more than it allows. Where it allows none (the program set
  // max_allowed_parallelism to 1), an arena of one slot, reserved (it asks
  // for no worker), still gets one for its enqueued tasks: oneTBB's
  // mandatory concurrency.
  const size_t allowed = tbb::global_control::active_value(tbb::global_control::max_allowed_parallelism) - 1;
  const int workers = allowed < static_cast<size_t>(concurrency) ? static_cast<int>(allowed) : concurrency;
  tbb::task_arena* arena = workers >= 1 ? new (g_arena_storage) tbb::task_arena(workers, 0)
                                        : new (g_arena_storage) tbb::task_arena(1, 1);
  arena->initialize();
  g_arena_workers = workers >= 1 ? workers : 1;
  g_arena = arena;
  return g_arena_workers;
}

int TbbBackendLaunchWorkers(int timeout_ms) {
  const int tasks = g_arena_workers;
  g_launch_begun.store(0, std::memory_order_relaxed);
  g_launch_done.store(0, std::memory_order_relaxed);
  const uint64_t deadline = OsMonotonicMs() + static_cast<uint64_t>(timeout_ms);
  for (int i = 0; i < tasks; ++i) {
    g_arena->enqueue([tasks, deadline] {
      g_launch_begun.fetch_add(1, std::memory_order_acq_rel);
      while (g_launch_begun.load(std::memory_order_acquire) < tasks && OsMonotonicMs() < deadline) sched_yield();
      g_launch_done.fetch_add(1, std::memory_order_release);
    });
  }
  // Not for good either: oneTBB may give the arena no worker while the
  // program's own arenas hold them all, and the pool stays kStarting (a
  // fork waits for that) until this returns. A task that runs later finds
  // its deadline past and ends at once.
  while (g_launch_done.load(std::memory_order_acquire) < tasks && OsMonotonicMs() < deadline + 50) {
    OsSleepMicroseconds(200);
  }
  return g_launch_begun.load(std::memory_order_acquire);
}

void TbbBackendSubmit(void (*fn)(void*), void* arg) {
  g_arena->enqueue([fn, arg] { fn(arg); });
}

void TbbBackendStop() {
  if (g_arena == nullptr) return;
  g_arena->terminate();
  g_arena = nullptr;
  g_arena_workers = 0;
  if (g_control_made) {
    reinterpret_cast<tbb::global_control*>(g_control_storage)->~global_control();
    g_control_made = false;
  }
}

void TbbBackendSetBeforeFinalize(void (*fn)()) { g_before_finalize.store(fn, std::memory_order_release); }

bool TbbBackendProgramFinalized() { return g_program_finalized.load(std::memory_order_acquire); }

}  // namespace ferry

namespace ferry {
namespace {

constexpr char kFinalizeName[] = "_ZN3tbb6detail2r18finalizeERNS0_2d121task_scheduler_handleEl";
using OneTbbFinalizeFn = bool (*)(tbb::detail::d1::task_scheduler_handle&, std::intptr_t);

// A loaded oneTBB's finalize that is not this one: dl_iterate_phdr's
// callback, for each loaded object whose name says it is oneTBB.
int FindLocalOneTbbFinalize(struct dl_phdr_info* info, size_t, void* out) {
  if (info->dlpi_name == nullptr || strstr(info->dlpi_name, "libtbb.so") == nullptr) return 0;
  void* handle = dlopen(info->dlpi_name, RTLD_LAZY | RTLD_NOLOAD);
  if (handle == nullptr) return 0;
  void* f = dlsym(handle, kFinalizeName);
  dlclose(handle);
  if (f == nullptr || f == reinterpret_cast<void*>(&tbb::detail::r1::finalize)) return 0;
  *static_cast<void**>(out) = f;
  return 1;
}

// oneTBB's own finalize: past this library (or past the executable that
// linked libferry.a) in the global scope; failing that, in a oneTBB a
// plugin loaded with RTLD_LOCAL (its calls reach this one through the
// preload, but RTLD_NEXT searches the global scope only: such a plugin's
// finalize returned false without running, found by a review).
OneTbbFinalizeFn OneTbbFinalize() {
  void* f = dlsym(RTLD_NEXT, kFinalizeName);
  if (f == nullptr) dl_iterate_phdr(FindLocalOneTbbFinalize, &f);
  return reinterpret_cast<OneTbbFinalizeFn>(f);
}

}  // namespace
}  // namespace ferry

namespace tbb::detail::r1 {

// oneTBB's finalize (tbb::finalize(handle), and its nothrow form), in front
// of oneTBB's own: it waits for oneTBB's workers to end, and fails (throws
// tbb::unsafe_wait, or returns false) while any task_arena is alive, so
// ferry's arena, which lives as long as the pool, made a correct program
// abort at its finalize (found by a review, 2026-12-05). The pool first
// applies what it was sent and gives the arena up (returning batches
// inline from then on), then oneTBB's finalize runs. A handle's plain
// release (mode release_nothrowing) passes straight through.
bool finalize(d1::task_scheduler_handle& handle, std::intptr_t mode) {
  if (mode != d1::release_nothrowing) {
    ferry::g_program_finalized.store(true, std::memory_order_release);
    if (void (*before)() = ferry::g_before_finalize.load(std::memory_order_acquire); before != nullptr) before();
  }
  const ferry::OneTbbFinalizeFn real = ferry::OneTbbFinalize();
  return real != nullptr && real(handle, mode);
}

}  // namespace tbb::detail::r1

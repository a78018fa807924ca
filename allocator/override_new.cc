// override_new.cc — every form of C++ operator new and delete, on ferry.
// Kept apart from override.cc so that C programs linking libferry.a never
// need the C++ runtime; it refers to ferry_override_anchor so that a C++
// program that links it also gets ferry's malloc.
#include <dlfcn.h>

#include <cstdlib>
#include <new>

#include "allocator/heap.h"
#include "common/diag.h"
#include "ferry.h"

extern "C" int ferry_override_anchor;

// The C++ runtime, reached through weak references only, so that libferry.so
// does not load libstdc++ into C programs (LD_PRELOAD into sort, python3 or
// redis: about 0.9 MiB resident and a longer start-up). Whoever calls
// operator new is C++ and has the runtime loaded; if it is absent anyway,
// the throw becomes a diagnostic and abort.
extern "C" {
void* __cxa_allocate_exception(std::size_t) noexcept __attribute__((weak));
[[noreturn]] void __cxa_throw(void*, void*, void (*)(void*)) __attribute__((weak));
std::new_handler FerryGetNewHandler() noexcept __asm__("_ZSt15get_new_handlerv") __attribute__((weak));
extern const char FerryBadAllocTypeinfo[] __asm__("_ZTISt9bad_alloc") __attribute__((weak));
extern const char FerryBadAllocVtable[] __asm__("_ZTVSt9bad_alloc") __attribute__((weak));
void FerryBadAllocDestructor(void*) __asm__("_ZNSt9bad_allocD1Ev") __attribute__((weak));
}

namespace {

static_assert(sizeof(std::bad_alloc) == sizeof(void*), "std::bad_alloc is one vtable pointer");

// `throw std::bad_alloc()`, spelled out in the Itanium C++ ABI so that every
// reference to the runtime stays weak: the object is its vtable pointer,
// which points two words into the vtable (past offset-to-top and typeinfo).
[[noreturn]] FERRY_COLD void ThrowBadAlloc() {
  if (__cxa_allocate_exception == nullptr || __cxa_throw == nullptr || FerryBadAllocVtable == nullptr ||
      FerryBadAllocTypeinfo == nullptr || FerryBadAllocDestructor == nullptr) {
    ferry::DiagLine().Str("ferry: operator new: out of memory, and no C++ runtime to throw std::bad_alloc")
        .WriteToStderr();
    abort();
  }
  void* exception = __cxa_allocate_exception(sizeof(std::bad_alloc));
  *static_cast<const void**>(exception) = FerryBadAllocVtable + 2 * sizeof(void*);
  __cxa_throw(exception, const_cast<char*>(FerryBadAllocTypeinfo), FerryBadAllocDestructor);
}

// A nothrow operator new with a new-handler installed: the C++ runtime's
// own nothrow operator new (the next definition after ferry's) is
// `try { return operator new(size); } catch (...) { return nullptr; }`, and
// its operator new call comes back to ferry's. So the handler runs under a
// catch that ferry itself need not contain (a catch would make libferry.so
// need the runtime's personality routine, and so libstdc++). Without the
// runtime there is no handler to run. (dlsym on every call: this runs only
// when memory has run out and a handler is installed.)
void* NothrowNewOfTheRuntime(std::size_t size, std::size_t alignment) {
  using Nothrow = void* (*)(std::size_t, const std::nothrow_t&) noexcept;
  using NothrowAligned = void* (*)(std::size_t, std::align_val_t, const std::nothrow_t&) noexcept;
  static constexpr std::nothrow_t kNothrow{};
  if (alignment == 0) {
    const auto next = reinterpret_cast<Nothrow>(dlsym(RTLD_NEXT, "_ZnwmRKSt9nothrow_t"));
    return next != nullptr ? next(size, kNothrow) : nullptr;
  }
  const auto next = reinterpret_cast<NothrowAligned>(dlsym(RTLD_NEXT, "_ZnwmSt11align_val_tRKSt9nothrow_t"));
  return next != nullptr ? next(size, std::align_val_t{alignment}, kNothrow) : nullptr;
}

std::new_handler CurrentNewHandler() noexcept {
  return FerryGetNewHandler != nullptr ? FerryGetNewHandler() : nullptr;
}

void* AllocateForNew(std::size_t size, std::size_t alignment) noexcept {
  return alignment > 16 ? ferry_aligned_alloc(alignment, size) : ferry_malloc(size);
}

// The standard's loop: call the new-handler until it gives memory or throws.
void* NewSlow(std::size_t size, std::size_t alignment) {
  (void)ferry_override_anchor;
  for (;;) {
    void* p = AllocateForNew(size, alignment);
    if (p != nullptr) return p;
    std::new_handler handler = CurrentNewHandler();
    if (handler == nullptr) ThrowBadAlloc();
    handler();
  }
}

// The same for the nothrow forms, which return nullptr where the loop would
// throw. noexcept, and so is everything it calls: a call that may throw from
// a noexcept function needs the runtime's personality routine (for the
// std::terminate on the way out), which would make libferry.so need
// libstdc++.
void* NewSlowNothrow(std::size_t size, std::size_t alignment) noexcept {
  (void)ferry_override_anchor;
  void* p = AllocateForNew(size, alignment);
  if (p != nullptr || CurrentNewHandler() == nullptr) return p;
  return NothrowNewOfTheRuntime(size, alignment);
}

inline void* New(std::size_t size) {
  void* p = size <= ferry::kMediumMax ? ferry::AllocateSmall(size) : nullptr;
  if (FERRY_LIKELY(p != nullptr)) return ferry::VgAllocated(p, size);
  return NewSlow(size, 0);
}

inline void* NewAligned(std::size_t size, std::align_val_t alignment) {
  const std::size_t align = static_cast<std::size_t>(alignment);
  void* p = ferry_aligned_alloc(align, size);
  if (FERRY_LIKELY(p != nullptr)) return p;
  return NewSlow(size, align);
}

inline void* NewAlignedNothrow(std::size_t size, std::align_val_t alignment) noexcept {
  const std::size_t align = static_cast<std::size_t>(alignment);
  void* p = ferry_aligned_alloc(align, size);
  if (FERRY_LIKELY(p != nullptr)) return p;
  return NewSlowNothrow(size, align);
}

}  // namespace

#define FERRY_NEW_EXPORT __attribute__((visibility("default")))

FERRY_NEW_EXPORT void* operator new(std::size_t size) { return New(size); }
FERRY_NEW_EXPORT void* operator new[](std::size_t size) { return New(size); }
FERRY_NEW_EXPORT void* operator new(std::size_t size, const std::nothrow_t&) noexcept {
  void* p = ferry_malloc(size);
  return p != nullptr ? p : NewSlowNothrow(size, 0);
}
FERRY_NEW_EXPORT void* operator new[](std::size_t size, const std::nothrow_t&) noexcept {
  void* p = ferry_malloc(size);
  return p != nullptr ? p : NewSlowNothrow(size, 0);
}
FERRY_NEW_EXPORT void* operator new(std::size_t size, std::align_val_t alignment) {
  return NewAligned(size, alignment);
}
FERRY_NEW_EXPORT void* operator new[](std::size_t size, std::align_val_t alignment) {
  return NewAligned(size, alignment);
}
FERRY_NEW_EXPORT void* operator new(std::size_t size, std::align_val_t alignment,
                                    const std::nothrow_t&) noexcept {
  return NewAlignedNothrow(size, alignment);
}
FERRY_NEW_EXPORT void* operator new[](std::size_t size, std::align_val_t alignment,
                                      const std::nothrow_t&) noexcept {
  return NewAlignedNothrow(size, alignment);
}

FERRY_NEW_EXPORT void operator delete(void* p) noexcept { ferry::FreeUserBlock(p, "delete"); }
FERRY_NEW_EXPORT void operator delete[](void* p) noexcept { ferry::FreeUserBlock(p, "delete"); }
FERRY_NEW_EXPORT void operator delete(void* p, const std::nothrow_t&) noexcept { ferry::FreeUserBlock(p, "delete"); }
FERRY_NEW_EXPORT void operator delete[](void* p, const std::nothrow_t&) noexcept { ferry::FreeUserBlock(p, "delete"); }
FERRY_NEW_EXPORT void operator delete(void* p, std::size_t) noexcept { ferry::FreeUserBlock(p, "delete"); }
FERRY_NEW_EXPORT void operator delete[](void* p, std::size_t) noexcept { ferry::FreeUserBlock(p, "delete"); }
FERRY_NEW_EXPORT void operator delete(void* p, std::align_val_t) noexcept { ferry::FreeUserBlock(p, "delete"); }
FERRY_NEW_EXPORT void operator delete[](void* p, std::align_val_t) noexcept { ferry::FreeUserBlock(p, "delete"); }
FERRY_NEW_EXPORT void operator delete(void* p, std::size_t, std::align_val_t) noexcept {
  ferry::FreeUserBlock(p, "delete");
}
FERRY_NEW_EXPORT void operator delete[](void* p, std::size_t, std::align_val_t) noexcept {
  ferry::FreeUserBlock(p, "delete");
}
FERRY_NEW_EXPORT void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  ferry::FreeUserBlock(p, "delete");
}
FERRY_NEW_EXPORT void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  ferry::FreeUserBlock(p, "delete");
}

// override_new.cc — every form of C++ operator new and delete, on ferry.
// Kept apart from override.cc so that C programs linking libferry.a never
// need the C++ runtime; it refers to ferry_override_anchor so that a C++
// program that links it also gets ferry's malloc.
#include <dlfcn.h>
#include <link.h>

#include <cstdlib>
#include <new>

#include "allocator/heap.h"
#include "common/diag.h"
#include "ferry.h"

extern "C" int ferry_override_anchor;

namespace {

void* NewSlow(std::size_t size, std::size_t alignment);

}  // namespace

#if defined(FERRY_WEAK_CXX_RUNTIME)
// libferry.so (LD_PRELOAD): the C++ runtime is reached through weak
// references and the dynamic loader only, so that the library does not load
// libstdc++ into C programs (sort, python3, redis: about 0.9 MiB resident
// and a longer start-up). This file is then compiled without exceptions
// (no handler tables, so no personality routine); a std::bad_alloc thrown
// here unwinds through its frames by their .eh_frame (-funwind-tables).
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

// A symbol of the C++ runtime. The weak references resolve when
// libferry.so loads: in a C program that dlopens C++ code later (a Python
// extension) they stay null although a runtime is there by then. So a null
// one is looked up again, in the global scope, then in the scope of every
// loaded object (a runtime loaded RTLD_LOCAL, as a dependency of a dlopened
// library). Only on paths where memory has run out.
void* RuntimeSymbol(const void* weak, const char* symbol) noexcept {
  if (weak != nullptr) return const_cast<void*>(weak);
  if (void* p = dlsym(RTLD_DEFAULT, symbol)) return p;
  struct Names {
    const char* name[128];
    size_t count = 0;
  } names;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* data) {
        Names* n = static_cast<Names*>(data);
        if (info->dlpi_name != nullptr && info->dlpi_name[0] != '\0' && n->count < 128) {
          n->name[n->count++] = info->dlpi_name;
        }
        return 0;
      },
      &names);
  // (dlopen outside the iteration, which holds the loader's list lock.)
  for (size_t i = 0; i < names.count; ++i) {
    void* handle = dlopen(names.name[i], RTLD_LAZY | RTLD_NOLOAD);
    if (handle == nullptr) continue;
    void* p = dlsym(handle, symbol);
    dlclose(handle);
    if (p != nullptr) return p;
  }
  return nullptr;
}

// `throw std::bad_alloc()`, spelled out in the Itanium C++ ABI: the object
// is its vtable pointer, which points two words into the vtable (past
// offset-to-top and the typeinfo pointer).
[[noreturn]] FERRY_COLD void ThrowBadAlloc() {
  using Allocate = void* (*)(std::size_t) noexcept;
  using Throw = void (*)(void*, void*, void (*)(void*));
  using Destructor = void (*)(void*);
  const auto allocate = reinterpret_cast<Allocate>(
      RuntimeSymbol(reinterpret_cast<const void*>(&__cxa_allocate_exception), "__cxa_allocate_exception"));
  const auto throw_exception =
      reinterpret_cast<Throw>(RuntimeSymbol(reinterpret_cast<const void*>(&__cxa_throw), "__cxa_throw"));
  const auto vtable = static_cast<const char*>(RuntimeSymbol(FerryBadAllocVtable, "_ZTVSt9bad_alloc"));
  void* const typeinfo = RuntimeSymbol(FerryBadAllocTypeinfo, "_ZTISt9bad_alloc");
  const auto destructor = reinterpret_cast<Destructor>(
      RuntimeSymbol(reinterpret_cast<const void*>(&FerryBadAllocDestructor), "_ZNSt9bad_allocD1Ev"));
  if (allocate == nullptr || throw_exception == nullptr || vtable == nullptr || typeinfo == nullptr ||
      destructor == nullptr) {
    ferry::DiagLine().Str("ferry: operator new: out of memory, and no C++ runtime to throw std::bad_alloc")
        .WriteToStderr();
    abort();
  }
  void* exception = allocate(sizeof(std::bad_alloc));
  *static_cast<const void**>(exception) = vtable + 2 * sizeof(void*);
  throw_exception(exception, typeinfo, destructor);
  __builtin_unreachable();
}

using GetNewHandler = std::new_handler (*)() noexcept;

GetNewHandler RuntimeGetNewHandler() noexcept {
  return reinterpret_cast<GetNewHandler>(
      RuntimeSymbol(reinterpret_cast<const void*>(&FerryGetNewHandler), "_ZSt15get_new_handlerv"));
}

std::new_handler CurrentNewHandler() noexcept {
  const GetNewHandler get = RuntimeGetNewHandler();
  return get != nullptr ? get() : nullptr;
}

// A nothrow operator new with a new-handler installed. The C++ runtime's
// own nothrow operator new is `try { return operator new(size); } catch
// (...) { return nullptr; }`, and its operator new call comes back to
// ferry's; so the handler loop runs under a catch that ferry need not
// contain. The runtime's own definition, not the next one in the lookup
// order (which could be another allocator's): it is looked up in the scope
// of the object that holds get_new_handler.
void* NothrowWithHandler(std::size_t size, std::size_t alignment) noexcept {
  using Nothrow = void* (*)(std::size_t, const std::nothrow_t&) noexcept;
  using NothrowAligned = void* (*)(std::size_t, std::align_val_t, const std::nothrow_t&) noexcept;
  static constexpr std::nothrow_t kNothrow{};
  const GetNewHandler get = RuntimeGetNewHandler();
  Dl_info info;
  if (get == nullptr || dladdr(reinterpret_cast<void*>(get), &info) == 0 || info.dli_fname == nullptr) {
    return nullptr;
  }
  void* handle = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
  if (handle == nullptr) return nullptr;
  void* fn = dlsym(handle, alignment == 0 ? "_ZnwmRKSt9nothrow_t" : "_ZnwmSt11align_val_tRKSt9nothrow_t");
  dlclose(handle);
  Dl_info fn_info;
  if (fn == nullptr || dladdr(fn, &fn_info) == 0 || fn_info.dli_fbase != info.dli_fbase) {
    return nullptr;  // not the runtime's own (ferry's, say: that would call back here)
  }
  if (alignment == 0) return reinterpret_cast<Nothrow>(fn)(size, kNothrow);
  return reinterpret_cast<NothrowAligned>(fn)(size, std::align_val_t{alignment}, kNothrow);
}

}  // namespace

#else  // libferry.a, //:ferry_override: the program links the C++ runtime.

namespace {

[[noreturn]] FERRY_COLD void ThrowBadAlloc() { throw std::bad_alloc(); }

std::new_handler CurrentNewHandler() noexcept { return std::get_new_handler(); }

void* NothrowWithHandler(std::size_t size, std::size_t alignment) noexcept {
  try {
    return NewSlow(size, alignment);
  } catch (...) {
    return nullptr;
  }
}

}  // namespace

#endif  // FERRY_WEAK_CXX_RUNTIME

namespace {

// alignment: 0 for the plain forms. An aligned form asks for its alignment
// whatever it is, not only above malloc's (which gave 8 to blocks of 72,
// 88, 104 and 120 bytes until 2026-12-04: operator new(72,
// align_val_t(16)) got such a block when its first try failed for want of
// memory).
void* AllocateForNew(std::size_t size, std::size_t alignment) noexcept {
  return alignment != 0 ? ferry_aligned_alloc(alignment, size) : ferry_malloc(size);
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
// throw. noexcept, and so is everything it calls (in libferry.so a call that
// may throw from a noexcept function would need the runtime's personality
// routine, for the std::terminate on the way out).
void* NewSlowNothrow(std::size_t size, std::size_t alignment) noexcept {
  (void)ferry_override_anchor;
  void* p = AllocateForNew(size, alignment);
  if (p != nullptr || CurrentNewHandler() == nullptr) return p;
  return NothrowWithHandler(size, alignment);
}

inline void* New(std::size_t size) {
  void* p = ferry::Allocate(size);
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

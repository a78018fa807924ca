// override_new.cc — every form of C++ operator new and delete, on ferry.
// Kept apart from override.cc so that C programs linking libferry.a never
// need the C++ runtime; it refers to ferry_override_anchor so that a C++
// program that links it also gets ferry's malloc.
#include <new>

#include "allocator/heap.h"
#include "ferry.h"

extern "C" int ferry_override_anchor;

namespace {

// The standard's loop: call the new-handler until it gives memory or throws.
void* NewSlow(std::size_t size, std::size_t alignment, bool nothrow) {
  (void)ferry_override_anchor;
  for (;;) {
    void* p = alignment > 16 ? ferry_aligned_alloc(alignment, size) : ferry_malloc(size);
    if (p != nullptr) return p;
    std::new_handler handler = std::get_new_handler();
    if (handler == nullptr) {
      if (nothrow) return nullptr;
      throw std::bad_alloc();
    }
    if (nothrow) {
      try {
        handler();
      } catch (...) {
        return nullptr;
      }
    } else {
      handler();
    }
  }
}

inline void* New(std::size_t size) {
  void* p = size <= ferry::kMediumMax ? ferry::AllocateSmall(size) : nullptr;
  if (FERRY_LIKELY(p != nullptr)) return ferry::VgAllocated(p, size);
  return NewSlow(size, 0, false);
}

inline void* NewAligned(std::size_t size, std::align_val_t alignment, bool nothrow) {
  const std::size_t align = static_cast<std::size_t>(alignment);
  void* p = ferry_aligned_alloc(align, size);
  if (FERRY_LIKELY(p != nullptr)) return p;
  return NewSlow(size, align, nothrow);
}

}  // namespace

#define FERRY_NEW_EXPORT __attribute__((visibility("default")))

FERRY_NEW_EXPORT void* operator new(std::size_t size) { return New(size); }
FERRY_NEW_EXPORT void* operator new[](std::size_t size) { return New(size); }
FERRY_NEW_EXPORT void* operator new(std::size_t size, const std::nothrow_t&) noexcept {
  void* p = ferry_malloc(size);
  return p != nullptr ? p : NewSlow(size, 0, true);
}
FERRY_NEW_EXPORT void* operator new[](std::size_t size, const std::nothrow_t&) noexcept {
  void* p = ferry_malloc(size);
  return p != nullptr ? p : NewSlow(size, 0, true);
}
FERRY_NEW_EXPORT void* operator new(std::size_t size, std::align_val_t alignment) {
  return NewAligned(size, alignment, false);
}
FERRY_NEW_EXPORT void* operator new[](std::size_t size, std::align_val_t alignment) {
  return NewAligned(size, alignment, false);
}
FERRY_NEW_EXPORT void* operator new(std::size_t size, std::align_val_t alignment,
                                    const std::nothrow_t&) noexcept {
  return NewAligned(size, alignment, true);
}
FERRY_NEW_EXPORT void* operator new[](std::size_t size, std::align_val_t alignment,
                                      const std::nothrow_t&) noexcept {
  return NewAligned(size, alignment, true);
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

// base.h — compiler helpers, checks and bit arithmetic shared by every layer.
//
// FERRY_CHECK is always evaluated: it guards memory safety and bad input.
// FERRY_DCHECK is type-checked in every build and evaluated only when
// kDebugChecks is true (debug builds), so debug code never rots.
#ifndef FERRY_COMMON_BASE_H_
#define FERRY_COMMON_BASE_H_

#include <cstddef>
#include <cstdint>

#define FERRY_LIKELY(x) __builtin_expect(!!(x), 1)
#define FERRY_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define FERRY_ALWAYS_INLINE inline __attribute__((always_inline))
#define FERRY_NOINLINE __attribute__((noinline))
#define FERRY_COLD __attribute__((noinline, cold))
#define FERRY_EXPORT __attribute__((visibility("default")))
// The function looks at where argument `arg` points, never at the bytes there.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define FERRY_ADDRESS_ONLY_ARG(arg) __attribute__((access(none, arg)))
#else
#define FERRY_ADDRESS_ONLY_ARG(arg)
#endif

namespace ferry {

#ifdef NDEBUG
inline constexpr bool kDebugChecks = false;
#else
inline constexpr bool kDebugChecks = true;
#endif

// Prints "ferry: internal check failed: <what> (<file>:<line>)" and aborts.
[[noreturn]] FERRY_COLD void CheckFailed(const char* what, const char* file, int line);

}  // namespace ferry

#define FERRY_CHECK(cond)                                                   \
  do {                                                                      \
    if (FERRY_UNLIKELY(!(cond))) ::ferry::CheckFailed(#cond, __FILE__, __LINE__); \
  } while (0)

#define FERRY_DCHECK(cond)                                                  \
  do {                                                                      \
    if (::ferry::kDebugChecks && FERRY_UNLIKELY(!(cond)))                   \
      ::ferry::CheckFailed(#cond, __FILE__, __LINE__);                      \
  } while (0)

namespace ferry {

constexpr bool IsPowerOfTwo(uintptr_t x) { return x != 0 && (x & (x - 1)) == 0; }

constexpr uintptr_t AlignUp(uintptr_t x, uintptr_t align) {
  return (x + align - 1) & ~(align - 1);
}

constexpr uintptr_t AlignDown(uintptr_t x, uintptr_t align) { return x & ~(align - 1); }

// floor(log2(x)) for x > 0.
constexpr int Log2Floor(uint64_t x) { return 63 - __builtin_clzll(x); }

constexpr uint64_t RotateLeft(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
constexpr uint64_t RotateRight(uint64_t x, int r) { return (x >> r) | (x << (64 - r)); }

}  // namespace ferry

#endif  // FERRY_COMMON_BASE_H_

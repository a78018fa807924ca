// os_test.cc — the parts of the OS layer whose answers a test can know.
#include "common/os.h"

#include <dlfcn.h>
#include <gnu/libc-version.h>
#include <gtest/gtest.h>
#include <stdlib.h>

namespace {

// free() started from the dynamic loader must not start the pool (heap.cc,
// FreeMayStartPool), so the loader's code range must hold the loader's own
// functions and nothing of the program or the C library.
TEST(Os, DynamicLoaderTextHoldsTheLoaderAndNothingElse) {
  uintptr_t begin = 0, end = 0;
  ASSERT_TRUE(ferry::OsDynamicLoaderText(&begin, &end)) << "a dynamically linked test sees no loader";
  ASSERT_LT(begin, end);
  void* in_loader = dlsym(RTLD_DEFAULT, "_dl_mcount");  // defined by ld.so, intercepted by no sanitizer
  ASSERT_NE(in_loader, nullptr);
  const auto loader = reinterpret_cast<uintptr_t>(in_loader);
  EXPECT_TRUE(loader >= begin && loader < end);
  const auto program = reinterpret_cast<uintptr_t>(&ferry::OsDynamicLoaderText);
  EXPECT_FALSE(program >= begin && program < end);
  // A libc function no sanitizer intercepts.
  const auto libc = reinterpret_cast<uintptr_t>(&gnu_get_libc_version);
  EXPECT_FALSE(libc >= begin && libc < end);
}

TEST(Os, LibcTextHoldsLibcAndNotTheLoader) {
  uintptr_t begin = 0, end = 0;
  ASSERT_TRUE(ferry::OsLibcText(&begin, &end));
  const auto libc = reinterpret_cast<uintptr_t>(&gnu_get_libc_version);
  EXPECT_TRUE(libc >= begin && libc < end);
  const auto loader = reinterpret_cast<uintptr_t>(dlsym(RTLD_DEFAULT, "_dl_mcount"));
  EXPECT_FALSE(loader >= begin && loader < end);
  const auto program = reinterpret_cast<uintptr_t>(&ferry::OsLibcText);
  EXPECT_FALSE(program >= begin && program < end);
}

TEST(Os, MonotonicMillisecondsDoNotGoBack) {
  const uint64_t a = ferry::OsMonotonicMs();
  const uint64_t b = ferry::OsMonotonicMs();
  EXPECT_LE(a, b);
}

}  // namespace

// os_test.cc — the parts of the OS layer whose answers a test can know.
#include "common/os.h"

#include <dlfcn.h>
#include <gnu/libc-version.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>

#include <atomic>
#include <thread>
#include <vector>

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

TEST(Os, UsableCpusCountTheMaskGiven) {
  ferry::OsCpuMask mask;
  ASSERT_TRUE(ferry::OsThreadCpuMask(&mask));
  EXPECT_EQ(ferry::OsUsableCpus(&mask), ferry::OsUsableCpus());
  ferry::OsCpuMask one = {};
  one.bytes[0] = 1;
  EXPECT_EQ(ferry::OsUsableCpus(&one), 1);
}

TEST(Os, MonotonicNanosecondsAgreeWithMilliseconds) {
  const uint64_t ms = ferry::OsMonotonicMs();
  const uint64_t ns = ferry::OsMonotonicNs();
  const uint64_t coarse = ferry::OsCoarseMonotonicNs();
  EXPECT_GE(ns / 1000000, ms);
  EXPECT_LT(ns / 1000000, ms + 1000);
  // The coarse clock lags by at most its tick (a few ms; say 100).
  EXPECT_LE(coarse, ferry::OsMonotonicNs());
  EXPECT_GT(coarse + 100000000, ns);
}

// Three threads that never block, on one CPU: the scheduler must take the
// CPU from them, and the count of involuntary context switches grows.
TEST(Os, PreemptionsCountThreadsThatLoseTheirCpu) {
  cpu_set_t mine;
  ASSERT_EQ(sched_getaffinity(0, sizeof(mine), &mine), 0);
  int cpu = 0;
  while (!CPU_ISSET(cpu, &mine)) ++cpu;
  uint64_t before = 0;
  ASSERT_TRUE(ferry::OsPreemptions(&before));
  std::atomic<bool> stop{false};
  std::vector<std::thread> spinners;
  for (int i = 0; i < 3; ++i) {
    spinners.emplace_back([&] {
      cpu_set_t one;
      CPU_ZERO(&one);
      CPU_SET(cpu, &one);
      pthread_setaffinity_np(pthread_self(), sizeof(one), &one);
      while (!stop.load(std::memory_order_relaxed)) {
      }
    });
  }
  const uint64_t start = ferry::OsMonotonicMs();
  uint64_t after = before;
  while (after == before && ferry::OsMonotonicMs() - start < 5000) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ASSERT_TRUE(ferry::OsPreemptions(&after));
  }
  stop = true;
  for (std::thread& t : spinners) t.join();
  EXPECT_GT(after, before);
}

}  // namespace

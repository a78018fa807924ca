// pool_start_test.cc — where a pool that a free asked for starts. A thread
// that keeps its 8th emptied segment beside other threads asks for the pool
// (heap.cc, AskForThePoolIfSeveralThreads); the free that asked starts it
// where pthread_create is safe there (FreeMayStartPool), which a free made
// by the C library's code is not: then the next allocation slow path starts
// it, a large block's included (AllocateLarge takes no small slow path).
// tests/rss_test.cc checks the other way round: frees by ferry_free start
// the pool, and what they emptied goes back with no later allocation.
//
// One case: a process starts its pool once.
#include <gtest/gtest.h>
#include <pthread.h>

#include <atomic>
#include <chrono>
#include <vector>

#include "allocator/heap.h"
#include "common/os.h"
#include "ferry.h"
#include "reclaimer/pool.h"
#include "tests/pool_test_util.h"

namespace ferry {
namespace {

constexpr size_t kBlock = 1000;
constexpr size_t kFreed = 64 << 20;  // 16 segments' worth and more: past the 8 that ask

int ReclaimerThreadsWithin(std::chrono::milliseconds timeout) {
  ferry_test::WaitFor([] { return ferry_test::Stats().reclaimer_threads > 0; }, timeout);
  return static_cast<int>(ferry_test::Stats().reclaimer_threads);
}

TEST(PoolStart, AskedForByTheCLibrarysFreesItStartsAtTheNextLargeAllocation) {
  if (ferry_test::ExpectedReclaimers() == 0) GTEST_SKIP() << "no reclaimers configured";
  uintptr_t libc_begin, libc_end;
  ASSERT_TRUE(OsLibcText(&libc_begin, &libc_end));
  // As a free called from, say, fclose's code would pass it.
  const void* in_libc = reinterpret_cast<const void*>(libc_begin + (libc_end - libc_begin) / 2);

  std::atomic<bool> stop{false};
  pthread_t quiet;
  ASSERT_EQ(pthread_create(&quiet, nullptr, ferry_test::WaitWithoutAllocating, &stop), 0);

  std::vector<void*> blocks(kFreed / kBlock, nullptr);
  for (void*& p : blocks) {
    p = ferry_malloc(kBlock);
    ASSERT_NE(p, nullptr);
  }
  const uint64_t live_full = ferry_test::Stats().segments_live;
  for (void* p : blocks) FreeUserBlock(p, "free", in_libc);
  const ferry_stats_t freed = ferry_test::Stats();
  const int threads_after_frees = ReclaimerThreadsWithin(std::chrono::milliseconds(200));
  const bool asked = g_pool_start_requested.load(std::memory_order_relaxed) != 0;

  void* large = ferry_malloc(1 << 20);
  ASSERT_NE(large, nullptr);
  const int threads_after_large = ReclaimerThreadsWithin(std::chrono::milliseconds(1000));
  ferry_free(large);
  stop.store(true, std::memory_order_release);
  pthread_join(quiet, nullptr);

  EXPECT_GE(freed.segments_live, 9u) << "the thread kept too few segments (" << live_full
                                      << " live when full): the case tests nothing";
  EXPECT_EQ(freed.batches_published, 0u) << "a remote free: the case measures something else";
  EXPECT_TRUE(asked) << "the frees that kept the segments asked for no pool";
  EXPECT_EQ(threads_after_frees, 0) << "a free from the C library's code started the pool";
  EXPECT_GE(threads_after_large, 1) << "the large allocation after the ask started no pool";
}

}  // namespace
}  // namespace ferry

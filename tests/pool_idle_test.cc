// pool_idle_test.cc — an idle pool's threads exit (FERRY_RECLAIMER_IDLE_MS,
// reclaimer/pool.cc StopIdlePool) and the next batch starts them again,
// with flush, collect and fork keeping their promises across the stops.
//
// Runs with FERRY_RECLAIMERS=2 (a stop has another thread to wait for) and
// FERRY_RECLAIMER_IDLE_MS=300 (BUILD).
#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <latch>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "ferry.h"
#include "gtest/gtest.h"
#include "tests/pool_test_util.h"
#include "tests/test_util.h"

namespace {

using namespace std::chrono_literals;
using ferry_test::Item;
using ferry_test::kSanitizerSlowdown;
using ferry_test::Stats;
using ferry_test::WaitFor;

constexpr int kIdleMs = 300;  // FERRY_RECLAIMER_IDLE_MS in BUILD

bool PoolRunsWithItsThreads() {
  const int wanted = ferry_test::ExpectedReclaimers();
  return Stats().reclaimer_threads == static_cast<uint64_t>(wanted) &&
         ferry_test::ReclaimerThreadCount() == wanted;
}

bool PoolGone() { return Stats().reclaimer_threads == 0 && ferry_test::ReclaimerThreadCount() == 0; }

// Blocks of `size` made here and freed by another thread, which then calls
// ferry_flush: true when every one of them had reached its page by then
// (blocks_returned), the flush's promise. The freeing thread stays alive
// until the check is done, so that no exit hands anything on.
bool FreedElsewhereAndFlushedAreHome(size_t count, size_t size, std::string* problem) {
  std::vector<Item> blocks;
  for (size_t i = 0; i < count; ++i) blocks.push_back(ferry_test::Make(size));
  std::atomic<size_t> corrupt{0};
  uint64_t before = 0, after = 0;
  std::thread freer([&] {
    before = Stats().blocks_returned;
    for (const Item& item : blocks) corrupt += !ferry_test::CheckAndFree(item);
    ferry_flush();
    after = Stats().blocks_returned;
  });
  freer.join();
  if (corrupt.load() != 0) *problem = "blocks changed before their remote free";
  if (after - before < count) {
    *problem = "ferry_flush returned with " + std::to_string(after - before) + " of " + std::to_string(count) +
               " freed blocks home";
  }
  return problem->empty();
}

TEST(PoolIdle, ThreadsExitAfterTheIdleTimeAndTheNextBatchStartsThemAgain) {
  ASSERT_EQ(ferry_test::EnvInt("FERRY_RECLAIMER_IDLE_MS", -1), kIdleMs) << "run through its BUILD target";
  const int wanted = ferry_test::ExpectedReclaimers();
  ASSERT_GE(wanted, 2);
  std::string problem;
  // A pool an earlier case started (in a shuffled order) stops first; the
  // counts are this case's from there.
  ASSERT_TRUE(WaitFor(PoolGone, 5000ms * kSanitizerSlowdown))
      << "an earlier case's pool is still there: " << ferry_test::AllThreadNames();
  const ferry_stats_t before = Stats();
  // The idle time counts from the pool's last work, before the flush returns.
  const auto idle_from = std::chrono::steady_clock::now();
  ASSERT_TRUE(FreedElsewhereAndFlushedAreHome(2 * ferry_test::BatchSize(), 80, &problem)) << problem;
  ASSERT_TRUE(WaitFor(PoolRunsWithItsThreads, 5000ms * kSanitizerSlowdown))
      << "the pool did not start its " << wanted << " threads: " << ferry_test::AllThreadNames();
  EXPECT_EQ(Stats().pool_starts, before.pool_starts + 1);

  // Idle: the housekeeping finds nothing for kIdleMs, and the threads go.
  ASSERT_TRUE(WaitFor(PoolGone, 5000ms * kSanitizerSlowdown))
      << "the idle pool's threads are still there: " << ferry_test::AllThreadNames();
  const auto idle_for = std::chrono::steady_clock::now() - idle_from;
  EXPECT_GE(idle_for, std::chrono::milliseconds(kIdleMs)) << "the threads left before the idle time";
  const ferry_stats_t stopped = Stats();
  EXPECT_EQ(stopped.pool_starts, before.pool_starts + 1);
  EXPECT_EQ(stopped.pool_stops, before.pool_stops + 1);
  EXPECT_GT(stopped.reclaimer_cpu_ns, 0u) << "the CPU time of the threads that left was lost";

  // The next batch starts the pool again; its flush still covers it.
  ASSERT_TRUE(FreedElsewhereAndFlushedAreHome(2 * ferry_test::BatchSize(), 80, &problem)) << problem;
  EXPECT_TRUE(WaitFor(PoolRunsWithItsThreads, 5000ms * kSanitizerSlowdown))
      << "the pool did not start its " << wanted << " threads again: " << ferry_test::AllThreadNames();
  const ferry_stats_t again = Stats();
  EXPECT_EQ(again.pool_starts, before.pool_starts + 2);
  EXPECT_EQ(again.pool_stops, before.pool_stops + 1);
  EXPECT_GE(again.reclaimer_cpu_ns, stopped.reclaimer_cpu_ns);
  EXPECT_GE(again.batches_pooled + again.batches_inline, stopped.batches_pooled + stopped.batches_inline);
}

// Bursts of remote frees with content checks, separated by gaps around
// the idle time, so that the pool stops and starts again many times while
// another thread flushes, collects and (outside ThreadSanitizer and
// AddressSanitizer, as tests/BUILD's fork tests) forks at random moments. Every block must
// come back intact, every flush must find what was freed before it home,
// and no call may hang.
TEST(PoolIdle, BurstsAroundTheIdleTimeWithFlushesCollectsAndForks) {
  ASSERT_EQ(ferry_test::EnvInt("FERRY_RECLAIMER_IDLE_MS", -1), kIdleMs) << "run through its BUILD target";
  const int kBursts = kSanitizerSlowdown > 1 ? 6 : 14;
  const uint64_t starts_before = Stats().pool_starts;
  std::atomic<bool> done{false};
  std::atomic<size_t> problems{0};
  std::mutex problem_mu;
  std::string first_problem;
  auto report = [&](const std::string& what) {
    std::lock_guard<std::mutex> hold(problem_mu);
    if (problems++ == 0) first_problem = what;
  };
  std::thread meddler([&] {
    std::mt19937 rng(7);
    [[maybe_unused]] int forks = 0;
    while (!done.load(std::memory_order_acquire)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(rng() % (2 * kIdleMs)));
      switch (rng() % 3) {
        case 0:
          ferry_flush();
          break;
        case 1:
          ferry_collect();
          break;
        default: {
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
          ferry_flush();
#else
          if (forks >= 6) break;
          ++forks;
          const pid_t child = fork();
          if (child == 0) {
            // The child allocates and frees across its own threads.
            std::vector<Item> blocks;
            for (int i = 0; i < 2000; ++i) blocks.push_back(ferry_test::Make(48 + i % 200));
            bool intact = true;
            std::thread([&] {
              for (const Item& item : blocks) intact &= ferry_test::CheckAndFree(item);
              ferry_flush();
            }).join();
            _exit(intact ? 0 : 3);
          }
          int status = 0;
          if (child < 0 || waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            report("a fork child failed (status " + std::to_string(status) + ")");
          }
#endif
          break;
        }
      }
    }
  });
  std::mt19937 rng(11);
  for (int burst = 0; burst < kBursts; ++burst) {
    // Two producers' blocks, freed by a third thread that checks them.
    std::vector<Item> blocks[2];
    std::thread producers[2];
    for (int t = 0; t < 2; ++t) {
      producers[t] = std::thread([&, t] {
        for (int i = 0; i < 3000; ++i) blocks[t].push_back(ferry_test::Make(16 + (i * 37 + t) % 1500));
      });
    }
    for (auto& producer : producers) producer.join();
    std::thread freer([&] {
      size_t corrupt = 0;
      for (auto& list : blocks) {
        for (const Item& item : list) corrupt += !ferry_test::CheckAndFree(item);
      }
      if (corrupt != 0) report(std::to_string(corrupt) + " blocks changed before their remote free");
      if (burst % 2 == 0) ferry_flush();
    });
    freer.join();
    std::string problem;
    if (!FreedElsewhereAndFlushedAreHome(600, 200, &problem)) report(problem);
    if (burst == 1 || burst == 3) {
      // Two stops for sure, however slow the machine; the other gaps fall
      // where they may.
      if (!WaitFor(PoolGone, 5000ms * kSanitizerSlowdown)) report("the pool did not stop after burst " + std::to_string(burst));
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(rng() % (3 * kIdleMs)));
    }
  }
  // One more idle time: the last threads go too.
  const bool gone = WaitFor(PoolGone, 5000ms * kSanitizerSlowdown);
  done.store(true, std::memory_order_release);
  meddler.join();
  EXPECT_EQ(problems.load(), 0u) << first_problem;
  EXPECT_TRUE(gone) << "the pool's threads are still there: " << ferry_test::AllThreadNames();
  const ferry_stats_t stats = Stats();
  EXPECT_GE(stats.pool_starts, starts_before + 2) << "the pool stopped once at most between the bursts: the case tests little";
  EXPECT_EQ(stats.pool_stops, stats.pool_starts) << "every start was followed by a stop, the last one included";
  printf("%d bursts: the pool started %llu times\n", kBursts,
         static_cast<unsigned long long>(stats.pool_starts - starts_before));
}

// After a stop, nothing purges what a thread's own frees leave committed,
// and a thread keeps up to 16 emptied segments itself: so the first page
// given back after a stop asks for the pool again (heap.cc, ReleasePage).
// Before, 20 MiB one thread churned after the stop stayed resident for good
// (a review, 2026-12-06).
TEST(PoolIdle, MemoryAThreadFreesAfterAStopGoesBackToo) {
  ASSERT_EQ(ferry_test::EnvInt("FERRY_RECLAIMER_IDLE_MS", -1), kIdleMs) << "run through its BUILD target";
  std::string problem;
  ASSERT_TRUE(FreedElsewhereAndFlushedAreHome(ferry_test::BatchSize(), 80, &problem)) << problem;
  ASSERT_TRUE(WaitFor(PoolGone, 5000ms * kSanitizerSlowdown)) << ferry_test::AllThreadNames();
  // What earlier cases' exited threads left (in a shuffled order) goes
  // first: the churner, which may take over one of their heaps, is to
  // need segments of its own. A collect does not start a stopped pool.
  ferry_collect();
  const ferry_stats_t before = Stats();
  const size_t resident_before = ferry_test::ResidentBytes();
  constexpr size_t kChurn = 24 * ferry_test::kMiB;
  constexpr size_t kBlock = 1000;
  std::latch freed(1), done(1);
  uint64_t live_full = 0;
  std::thread churner([&] {
    std::vector<Item> blocks;
    for (size_t i = 0; i < kChurn / kBlock; ++i) blocks.push_back(ferry_test::Make(kBlock));
    live_full = Stats().segments_live;
    for (const Item& item : blocks) {
      if (!ferry_test::CheckAndFree(item)) problem = "a block changed";
    }
    freed.count_down();
    done.wait();  // the thread stays: its heap is not abandoned
  });
  freed.wait();
  const bool restarted = WaitFor([&] { return Stats().pool_starts > before.pool_starts; }, 3000ms * kSanitizerSlowdown);
  const bool back = WaitFor([&] { return Stats().segments_live <= before.segments_live + 2; }, 3000ms * kSanitizerSlowdown);
  const size_t resident_after = ferry_test::ResidentBytes();
  done.count_down();
  churner.join();
  EXPECT_EQ(problem, "");
  EXPECT_GT(live_full, before.segments_live + 4) << "the churn took few segments: the case tests little";
  EXPECT_TRUE(restarted) << "no page given back after the stop asked for the pool";
  EXPECT_TRUE(back) << Stats().segments_live << " segments live, " << before.segments_live << " before the churn";
  if (kSanitizerSlowdown == 1) {
    EXPECT_LT(resident_after, resident_before + 8 * ferry_test::kMiB)
        << "resident memory " << (resident_after - resident_before) / ferry_test::kMiB << " MiB above the level before";
  }
}

// A program that trims now and then (malloc_trim, ferry_collect) gives
// back every empty page in the collect, its size classes' last ones too:
// that alone must not start a stopped pool again, or it would start at
// every trim and stop after each idle time, for as long as the program
// runs (a review, 2026-12-06). Only the owner's own frees ask.
TEST(PoolIdle, APeriodicCollectDoesNotStartAStoppedPool) {
  ASSERT_EQ(ferry_test::EnvInt("FERRY_RECLAIMER_IDLE_MS", -1), kIdleMs) << "run through its BUILD target";
  std::atomic<bool> stop{false};
  pthread_t quiet;  // other threads now: the kernel's count allows a start
  ASSERT_EQ(pthread_create(&quiet, nullptr, ferry_test::WaitWithoutAllocating, &stop), 0);
  std::string problem;
  const bool home = FreedElsewhereAndFlushedAreHome(ferry_test::BatchSize(), 80, &problem);
  const bool gone = WaitFor(PoolGone, 5000ms * kSanitizerSlowdown);
  const uint64_t starts = Stats().pool_starts;
  std::this_thread::sleep_for(300ms);  // past the grace after the stop
  const uint64_t released_before = Stats().pages_released;
  for (int round = 0; round < 5; ++round) {
    // The class's only page empties and stays (PageToReleaseOnEmpty); the
    // collect gives it back.
    std::vector<Item> blocks;
    for (int i = 0; i < 50; ++i) blocks.push_back(ferry_test::Make(112));
    for (const Item& item : blocks) {
      if (!ferry_test::CheckAndFree(item)) problem = "a block changed";
    }
    ferry_collect();
  }
  const uint64_t starts_after = Stats().pool_starts;
  const uint64_t released_after = Stats().pages_released;
  stop.store(true, std::memory_order_release);
  pthread_join(quiet, nullptr);
  ASSERT_TRUE(home) << problem;
  ASSERT_TRUE(gone) << ferry_test::AllThreadNames();
  EXPECT_EQ(problem, "");
  // Each collect gave the page back (had none, the case would test nothing).
  EXPECT_GE(released_after - released_before, 5u);
  EXPECT_EQ(starts_after, starts) << "collects started the stopped pool again";
}

// A program that ended its other threads is single-threaded again: pages it
// gives back after the stop do not start the pool (ReleasePage asks only
// where the kernel counts other threads now), so what the kernel allows a
// single-threaded process only, unshare(CLONE_NEWUSER), works (it failed
// with EINVAL while the threads stayed for good; checked by hand, RESULTS).
TEST(PoolIdle, AProgramBackToOneThreadChurnsWithoutStartingThePoolAgain) {
  ASSERT_EQ(ferry_test::EnvInt("FERRY_RECLAIMER_IDLE_MS", -1), kIdleMs) << "run through its BUILD target";
  std::string problem;
  ASSERT_TRUE(FreedElsewhereAndFlushedAreHome(ferry_test::BatchSize(), 80, &problem)) << problem;
  ASSERT_TRUE(WaitFor(PoolGone, 5000ms * kSanitizerSlowdown)) << ferry_test::AllThreadNames();
  if (ferry_test::TaskCount() != 1) {
    GTEST_SKIP() << "this process has other threads (a sanitizer's?): " << ferry_test::AllThreadNames();
  }
  const uint64_t starts = Stats().pool_starts;
  for (int round = 0; round < 3; ++round) {
    std::vector<Item> blocks;
    for (size_t i = 0; i < 24 * ferry_test::kMiB / 1000; ++i) blocks.push_back(ferry_test::Make(1000));
    for (const Item& item : blocks) ASSERT_TRUE(ferry_test::CheckAndFree(item));
  }
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(Stats().pool_starts, starts) << "a single-threaded program's frees started the pool";
  // One task: what unshare(CLONE_NEWUSER) asks of its caller (not called
  // here: it would change this process for good).
  EXPECT_EQ(ferry_test::TaskCount(), 1) << ferry_test::AllThreadNames();
}

}  // namespace

// tbb_backend_test.cc — FERRY_RECLAIMER_BACKEND=tbb in a program that runs
// oneTBB itself: the pool's arena gets the workers FERRY_RECLAIMERS asks for,
// and the program's own max_allowed_parallelism stays what it set.
//
// oneTBB's active max_allowed_parallelism is the smallest value of all live
// global_control objects, so a control the pool made unconditionally would
// cap the program's parallel algorithms at the pool's size. Each case runs in
// a child process, so that the pool (and oneTBB's scheduler) starts fresh
// after the case has set up its own control.
//
// Runs with FERRY_RECLAIMERS=3 and the tbb backend (see BUILD).
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <new>
#include <oneapi/tbb/global_control.h>
#include <oneapi/tbb/info.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/task_group.h>
#include <thread>
#include <vector>

#include "ferry.h"
#include "gtest/gtest.h"
#include "tests/pool_test_util.h"

namespace {

using tbb::global_control;

size_t ActiveParallelism() {
  return global_control::active_value(global_control::max_allowed_parallelism);
}

// Starts the pool the way a program does: another thread's blocks freed here
// (the first batch asks for the pool and is applied inline), then more of
// them, and a flush (which returns once the pool has applied them). The
// counters afterwards.
ferry_stats_t StartPoolWithRemoteFrees() {
  for (int round = 0; round < 2; ++round) {
    std::vector<void*> blocks(8 * ferry_test::BatchSize());
    std::thread([&] {
      for (void*& p : blocks) p = ferry_malloc(64);
    }).join();
    for (void* p : blocks) ferry_free(p);
    ferry_flush();
  }
  return ferry_test::Stats();
}

// The pool runs on oneTBB: batches applied, and no ferry-reclaim* thread.
bool PoolOnTbb(const ferry_stats_t& s) {
  const int own_threads = ferry_test::ReclaimerThreadCount();
  if (s.batches_pooled > 0 && own_threads == 0) return true;
  fprintf(stderr, "not on oneTBB: %llu batches pooled, %d ferry-reclaim threads\n",
          static_cast<unsigned long long>(s.batches_pooled), own_threads);
  return false;
}

// After the program finalized oneTBB: remote frees and flushes still keep
// their promise, and no pool runs on oneTBB. kInline: they are returned
// inline (no pool). kOnFerrysThreads: by ferry's own threads, where a start
// on oneTBB fell back to them (in a fork child of a process that had set
// ferry up, a start whose arena ran none of its tasks does), which have
// nothing to do with oneTBB. 0, or 3 (blocks not returned), 4 (a pool
// running, not ferry's threads) or 6 (inline, where the fallback was
// expected).
enum class After { kInline, kOnFerrysThreads };
int FreesAfterFinalizeStayOffOneTbb(After expected) {
  const ferry_stats_t s = StartPoolWithRemoteFrees();
  fprintf(stderr, "after finalize: %llu remote frees, %llu returned, %llu reclaimer threads\n",
          static_cast<unsigned long long>(s.remote_frees), static_cast<unsigned long long>(s.blocks_returned),
          static_cast<unsigned long long>(s.reclaimer_threads));
  if (s.blocks_returned != s.remote_frees) return 3;
  if (expected == After::kInline) return s.reclaimer_threads == 0 ? 0 : 4;
  if (s.reclaimer_threads == 0) return 6;
  // ferry's threads name themselves as they begin.
  for (int i = 0; i < 200 && ferry_test::ReclaimerThreadCount() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return ferry_test::ReclaimerThreadCount() > 0 ? 0 : 4;
}

// Runs `body` in a child process; its exit status (0: as expected).
int InChild(const std::function<int()>& body) {
  fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0) _exit(body());
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 100 + WTERMSIG(status);
}

TEST(TbbBackend, ArenaGetsTheWorkersFerryReclaimersAsksFor) {
  ASSERT_TRUE(ferry_test::BackendIsTbb());
  const size_t reclaimers = static_cast<size_t>(ferry_test::ExpectedReclaimers());
  EXPECT_EQ(InChild([&] {
              if (!PoolOnTbb(StartPoolWithRemoteFrees())) return 1;
              // An arena of N workers needs a limit of N + 1 (one slot is
              // the master's, unused here).
              const size_t active = ActiveParallelism();
              fprintf(stderr, "reclaimers %zu, max_allowed_parallelism %zu, CPUs %d\n",
                      reclaimers, active, ferry_test::AffinityCpus());
              return active >= reclaimers + 1 ? 0 : 2;
            }),
            0);
}

TEST(TbbBackend, ProgramsOwnHigherParallelismStaysInForce) {
  const size_t wanted = static_cast<size_t>(ferry_test::AffinityCpus()) +
                        static_cast<size_t>(ferry_test::ExpectedReclaimers()) + 3;
  EXPECT_EQ(InChild([&] {
              global_control mine(global_control::max_allowed_parallelism, wanted);
              if (!PoolOnTbb(StartPoolWithRemoteFrees())) return 1;
              const size_t active = ActiveParallelism();
              fprintf(stderr, "program asked for %zu, active %zu\n", wanted, active);
              return active == wanted ? 0 : 2;
            }),
            0)
      << "ferry's backend lowered the program's own max_allowed_parallelism";
}

// max_allowed_parallelism 1 (a program debugging its oneTBB code serially)
// allows oneTBB no worker for parallel algorithms, but an arena's enqueued
// tasks still get one: the pool keeps working on oneTBB, its flushes return,
// and the program's limit stays 1.
TEST(TbbBackend, ProgramThatLimitsOneTbbToOneThreadKeepsItsLimitAndItsFlushes) {
  EXPECT_EQ(InChild([&] {
              global_control mine(global_control::max_allowed_parallelism, 1);
              if (!PoolOnTbb(StartPoolWithRemoteFrees())) return 1;
              const size_t active = ActiveParallelism();
              fprintf(stderr, "program asked for 1, active %zu\n", active);
              return active == 1 ? 0 : 2;
            }),
            0)
      << "ferry's backend raised the limit the program had set";
}

// A limit the program holds only for a while (a serial phase) when the pool
// starts must not leave ferry's own control behind as a cap once it is gone:
// the limit is then oneTBB's default, or FERRY_RECLAIMERS + 1 if that is
// higher. (On a machine with fewer than FERRY_RECLAIMERS + 2 CPUs the two
// coincide, and this cannot tell.)
TEST(TbbBackend, ProgramsPassingLimitLeavesNoCapBehind) {
  const size_t reclaimers = static_cast<size_t>(ferry_test::ExpectedReclaimers());
  EXPECT_EQ(InChild([&] {
              {
                global_control serial_phase(global_control::max_allowed_parallelism, 1);
                if (!PoolOnTbb(StartPoolWithRemoteFrees())) return 1;
              }
              const size_t expected =
                  std::max(static_cast<size_t>(tbb::info::default_concurrency()), reclaimers + 1);
              const size_t active = ActiveParallelism();
              fprintf(stderr, "after the program's control: active %zu, expected %zu\n", active, expected);
              return active == expected ? 0 : 2;
            }),
            0)
      << "ferry's backend left a limit behind";
}

// A program that ran oneTBB under a limit of its own before the pool
// started: the arena asks for no more workers than that limit allows (one
// where it allows none), so that oneTBB prints nothing on the program's
// stderr; the statistics count the workers the arena has. Until 2026-12-05
// the arena asked for FERRY_RECLAIMERS workers whatever the limit, and
// oneTBB printed "TBB Warning: The number of workers is currently limited
// to 0. The request for 3 workers is ignored..." (not on a machine whose
// oneTBB default is FERRY_RECLAIMERS + 1 CPUs, where it keeps quiet).
TEST(TbbBackend, ProgramsLowerLimitMakesTheArenaSmallerNotAWarning) {
  const int reclaimers = ferry_test::ExpectedReclaimers();
  ASSERT_GE(reclaimers, 2) << "the limits below must be under FERRY_RECLAIMERS + 1";
  for (const size_t limit : {size_t{1}, size_t{2}}) {
    SCOPED_TRACE(limit);
    EXPECT_EQ(InChild([&] {
                char path[] = "/tmp/ferry_tbb_stderr_XXXXXX";
                const int fd = mkstemp(path);
                if (fd < 0) return 3;
                unlink(path);
                const int saved = dup(2);
                dup2(fd, 2);
                global_control mine(global_control::max_allowed_parallelism, limit);
                tbb::parallel_for(0, 64, [](int) {});  // oneTBB runs before the pool
                const ferry_stats_t s = StartPoolWithRemoteFrees();
                const bool on_tbb = PoolOnTbb(s);
                fflush(stderr);
                dup2(saved, 2);
                char text[4096] = {};
                const ssize_t n = pread(fd, text, sizeof(text) - 1, 0);
                fprintf(stderr, "limit %zu: arena workers %llu; stderr: [%s]\n", limit,
                        static_cast<unsigned long long>(s.reclaimer_threads), n > 0 ? text : "");
                if (!on_tbb) return 1;
                if (n > 0) return 2;  // anything at all on stderr
                const uint64_t expected = limit == 1 ? 1 : limit - 1;
                return s.reclaimer_threads == expected ? 0 : 4;
              }),
              0);
  }
}

// The pool starts (on a thread of ferry's, which waits for the arena's
// workers to run) while the program's own oneTBB tasks hold the only
// worker its limit allows: the start gives up waiting after a while, so
// that a fork, which waits for a start in progress, goes through. Without
// that bound the start waited as long as the program's tasks ran, and so
// did the fork (here: for good, status 114).
TEST(TbbBackend, AStartWhileTheProgramsTasksHoldEveryWorkerLetsAForkThrough) {
  EXPECT_EQ(InChild([&] {
              alarm(20);
              global_control two(global_control::max_allowed_parallelism, 2);
              std::atomic<bool> stop{false};
              std::thread busy([&] {
                tbb::parallel_for(0, 2, 1, [&](int) {
                  while (!stop.load()) std::this_thread::yield();
                });
              });
              std::this_thread::sleep_for(std::chrono::milliseconds(50));
              StartPoolWithRemoteFrees();
              const pid_t pid = fork();
              if (pid == 0) {
                ferry_free(ferry_malloc(10));
                _exit(0);
              }
              int status = -1;
              waitpid(pid, &status, 0);
              stop = true;
              busy.join();
              return status == 0 ? 0 : 2;
            }),
            0)
      << "status 114: the fork waited for the start for good";
}

// The program finalizes oneTBB while the pool's start waits, or waited,
// for a worker (the program's task holds the only one). Returns as
// FreesAfterFinalizeStayOffOneTbb, or 2 (finalize failed).
int FinalizeWhileTheStartWaitsForAWorker(After expected) {
  alarm(20);
  tbb::task_scheduler_handle handle{tbb::attach{}};
  std::atomic<bool> stop{false};
  std::atomic<bool> running{false};
  {
    global_control two(global_control::max_allowed_parallelism, 2);
    tbb::task_group group;
    group.run([&] {
      running = true;
      while (!stop.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    });
    while (!running.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    StartPoolWithRemoteFrees();
    stop = true;
    group.wait();
  }
  if (!tbb::finalize(handle, std::nothrow)) return 2;
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // a late start would show now
  return FreesAfterFinalizeStayOffOneTbb(expected);
}

// The start is called off, its arena given up once the starter is done,
// and finalize succeeds. Registered only once the start was done, the hook
// was missed (finalize false, and the pool went on running on oneTBB).
// (This test's parent never set ferry up, so its child is no fork child to
// ferry, and the start does not fall back.)
TEST(TbbBackend, AFinalizeWhileTheStartWaitsForAWorkerSucceeds) {
  EXPECT_EQ(InChild([&] { return FinalizeWhileTheStartWaitsForAWorker(After::kInline); }), 0)
      << "status 2: finalize failed; 4: the pool ran on oneTBB after it";
}

// The same in a fork child of a process that had set ferry up: the start,
// seeing no task run, falls back to ferry's threads, and its arena, which
// ran nothing, goes before the finalize; ferry's threads go on. Until
// 2026-12-05 the arena and its starter lived on, and finalize failed
// (status 2).
TEST(TbbBackend, AFinalizeAfterTheStartFellBackToFerrysThreadsSucceeds) {
  EXPECT_EQ(InChild([&] {
              ferry_free(ferry_malloc(16));  // ferry set up: its child is a fork child
              return InChild([&] { return FinalizeWhileTheStartWaitsForAWorker(After::kOnFerrysThreads); });
            }),
            0)
      << "status 2: finalize failed; 4: the pool ran on oneTBB after it; 6: the start did not fall back";
}

// oneTBB's finalize waits for its workers to end and fails while any arena
// lives: ferry's, which lived as long as the process, made it fail (the
// throwing form aborted a correct program with tbb::unsafe_wait). ferry
// now gives its arena up first, and returns batches inline afterwards.
TEST(TbbBackend, ProgramsFinalizeOfOneTbbSucceeds) {
  EXPECT_EQ(InChild([&] {
              tbb::task_scheduler_handle handle{tbb::attach{}};
              tbb::parallel_for(0, 64, [](int) {});
              if (!PoolOnTbb(StartPoolWithRemoteFrees())) return 1;
              if (!tbb::finalize(handle, std::nothrow)) return 2;
              return FreesAfterFinalizeStayOffOneTbb(After::kInline);
            }),
            0)
      << "status 2: oneTBB's finalize failed with ferry's arena alive";
}

// A finalize before the pool ever started: remote frees after it must not
// make an arena (which would make oneTBB's state live again behind the
// program's back; a free racing the finalize made its finalize fail, 23 of
// 30 runs of a review's program, when the hook was registered only by a
// start). Here ferry is not even set up at the finalize (this test calls
// ferry's API only, and its first call comes after it).
TEST(TbbBackend, AFinalizeBeforeAnyStartKeepsThePoolOffOneTbb) {
  EXPECT_EQ(InChild([&] {
              tbb::task_scheduler_handle handle{tbb::attach{}};
              tbb::parallel_for(0, 64, [](int) {});
              if (!tbb::finalize(handle, std::nothrow)) return 2;
              const int status = FreesAfterFinalizeStayOffOneTbb(After::kInline);
              if (status != 0) return status;
              return ferry_test::Stats().pool_starts == 0 ? 0 : 5;
            }),
            0)
      << "status 4 or 5: the pool started after the program's finalize";
}

// ferry_flush called from inside the program's own oneTBB tasks, on every
// thread oneTBB has (a program limit of two: the main thread and one
// worker): the pool's tasks need a thread too, and oneTBB does not move a
// worker out of a task that blocks. A flush that only waited for them
// waited for good (status 114 here); it now applies the batches no task
// has taken yet itself (pool.cc, ApplyQueuedTbbBatch).
TEST(TbbBackend, FlushesFromInsideEveryOneTbbTaskReturn) {
  EXPECT_EQ(InChild([&] {
              if (!PoolOnTbb(StartPoolWithRemoteFrees())) return 1;
              constexpr int kChunks = 64;
              const size_t per_chunk = 2 * ferry_test::BatchSize() + 3;
              std::vector<std::vector<void*>> blocks(kChunks);
              std::thread([&] {  // another thread's blocks: every free below is remote
                for (auto& chunk : blocks) {
                  for (size_t i = 0; i < per_chunk; ++i) chunk.push_back(ferry_malloc(48));
                }
              }).join();
              // Two threads for oneTBB in all: the parallel_for can hold both.
              global_control two(global_control::max_allowed_parallelism, 2);
              alarm(20);  // a hang ends the child (status 100 + SIGALRM)
              tbb::parallel_for(0, kChunks, 1, [&](int c) {
                for (void* p : blocks[c]) ferry_free(p);
                ferry_flush();
              });
              alarm(0);
              const ferry_stats_t s = ferry_test::Stats();
              fprintf(stderr, "remote frees %llu, returned %llu\n",
                      static_cast<unsigned long long>(s.remote_frees),
                      static_cast<unsigned long long>(s.blocks_returned));
              return s.blocks_returned == s.remote_frees ? 0 : 2;
            }),
            0)
      << "status 114: a flush from inside a oneTBB task never returned";
}

}  // namespace

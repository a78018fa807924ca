// fork_test.cc — fork() while the reclaimer pool is busy.
//
// ferry quiesces its pool before fork (no batch half applied, no queue
// mid-push) and holds its locks across it; the child starts with no
// reclaimer thread, applies what was queued inline, and starts a pool of its
// own when it first needs one. These tests fork while other threads
// allocate and free across threads, and check in every child that the
// allocator works across threads of the child, that blocks keep their
// contents, that batches queued at the fork reached their pages, and that
// the child's pool starts lazily with FERRY_RECLAIMERS threads.
//
// A child reports through its exit status (and a line on stderr); the
// parent waits with a deadline, so a hang fails the test instead of hanging
// CI. Variants: FERRY_RECLAIMERS=0 and 2 (BUILD).
//
// Size classes: 2560 B belongs to BatchesQueuedAtForkReachTheirPagesInTheChild
// alone; the rest draw from TrafficSize().
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <latch>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "ferry.h"
#include "gtest/gtest.h"
#include "tests/pool_test_util.h"
#include "tests/test_util.h"

namespace {

using namespace std::chrono_literals;
using ferry_test::BatchSize;
using ferry_test::BlockIntact;
using ferry_test::FillBlock;
using ferry_test::kSanitizerSlowdown;
using ferry_test::Mix;
using ferry_test::Stats;
using ferry_test::WaitFor;

constexpr auto kChildDeadline = 20s;

using ferry_test::CheckAndFree;
using ferry_test::Item;
using ferry_test::Make;

size_t TrafficSize(uint64_t i) {
  static constexpr size_t kSizes[] = {16, 32, 64, 96, 128, 256, 512, 1024, 4096, 12288};
  if (i % 151 == 150) return 600 << 10;  // large
  return kSizes[Mix(i) % std::size(kSizes)];
}

// --- the child's side ----------------------------------------------------------------

// Ends the child: `problem` empty is success; otherwise it goes to stderr
// and the exit status is 1.
[[noreturn]] void ChildExit(const std::string& problem) {
  if (!problem.empty()) {
    const std::string line = "fork child " + std::to_string(getpid()) + ": " + problem + "\n";
    ssize_t ignored = write(2, line.data(), line.size());
    (void)ignored;
  }
  _exit(problem.empty() ? 0 : 1);
}

// "" when this process's pool is what it should be: none when !started or
// FERRY_RECLAIMERS=0, else FERRY_RECLAIMERS threads named ferry-reclaim*
// (a child always uses ferry's own threads, whatever the backend).
std::string ChildPoolProblem(bool started) {
  const int wanted = started ? ferry_test::ExpectedReclaimers() : 0;
  std::string problem;
  auto check = [&] {
    const int named = ferry_test::ReclaimerThreadCount();
    const int stat = static_cast<int>(Stats().reclaimer_threads);
    const std::string names = ferry_test::ReclaimerNames();
    const std::string expected = ferry_test::ExpectedReclaimerNames(wanted);
    if (stat == wanted && named == wanted && names == expected) return true;
    problem = "reclaimer_threads " + std::to_string(stat) + ", threads named [" + names + "], expected " +
              std::to_string(wanted) + " [" + expected + "]; all threads: " + ferry_test::AllThreadNames();
    return false;
  };
  if (started) return WaitFor(check, 5s) ? "" : problem;
  if (!check()) return problem;
  std::this_thread::sleep_for(20ms);
  return check() ? "" : problem;
}

// What every child of the busy parent does: check it has no threads, then
// allocate on its main thread, free across two threads of its own with
// content checks, flush, and check its pool.
[[noreturn]] void BusyChild(uint64_t parent_pool_starts, const std::vector<Item>& inherited) {
  if (ferry_test::TaskCount() != 1) ChildExit("starts with threads: " + ferry_test::AllThreadNames());
  const ferry_stats_t at_start = Stats();
  if (at_start.reclaimer_threads != 0) ChildExit("reclaimer_threads != 0 at start");
  // Blocks the forking thread made before fork() are this thread's now.
  for (const Item& item : inherited) {
    if (!CheckAndFree(item)) ChildExit("a block made before fork() changed");
  }
  const uint64_t n = 1500 / kSanitizerSlowdown + 200;
  std::vector<Item> mine;
  for (uint64_t i = 0; i < n; ++i) {
    mine.push_back(Make(TrafficSize(i * 5 + 1)));
    if (mine.back().p == nullptr) ChildExit("out of memory");
  }
  std::vector<Item> from_t1;
  std::latch t1_made(1);
  std::atomic<int> corrupt{0};
  std::thread t1([&] {
    for (size_t i = 0; i < mine.size() / 2; ++i) corrupt += !CheckAndFree(mine[i]);
    for (uint64_t i = 0; i < n; ++i) from_t1.push_back(Make(TrafficSize(i * 3)));
    t1_made.count_down();
    ferry_flush();
  });
  std::thread t2([&] {
    for (size_t i = mine.size() / 2; i < mine.size(); ++i) corrupt += !CheckAndFree(mine[i]);
    t1_made.wait();
    for (const Item& item : from_t1) corrupt += !CheckAndFree(item);
    ferry_flush();
  });
  t1.join();
  t2.join();
  if (corrupt != 0) ChildExit(std::to_string(corrupt.load()) + " blocks changed before their free");
  ferry_flush();
  // The main thread allocates over what came back.
  std::vector<Item> again;
  for (uint64_t i = 0; i < n; ++i) again.push_back(Make(TrafficSize(i * 5 + 1)));
  for (const Item& item : again) {
    if (!CheckAndFree(item)) ChildExit("a block changed under its own thread");
  }
  // The counters came along from the parent, where a thread may have been
  // in the middle of handing a batch on at the fork; compare what happened
  // in the child only.
  const ferry_stats_t s = Stats();
  if (s.blocks_returned - at_start.blocks_returned != s.remote_frees - at_start.remote_frees) {
    ChildExit("after the child's flush, the child returned " +
              std::to_string(s.blocks_returned - at_start.blocks_returned) + " blocks of " +
              std::to_string(s.remote_frees - at_start.remote_frees) + " remote frees it published");
  }
  const std::string problem = ChildPoolProblem(true);
  if (!problem.empty()) ChildExit("after remote frees and a flush: " + problem);
  const uint64_t wanted_starts = ferry_test::ExpectedReclaimers() == 0 ? 0 : parent_pool_starts + 1;
  if (Stats().pool_starts != wanted_starts) {
    ChildExit("pool_starts " + std::to_string(Stats().pool_starts) + ", expected " +
              std::to_string(wanted_starts) + " (the parent's " + std::to_string(parent_pool_starts) +
              " and one in this child)");
  }
  ChildExit("");
}

// --- the parent's side ---------------------------------------------------------------

// Waits for `pid` until the deadline; kills it then. Returns "" when it
// exited with status 0, else what happened.
std::string WaitForChild(pid_t pid) {
  const auto deadline = std::chrono::steady_clock::now() + kChildDeadline;
  int status = 0;
  for (;;) {
    const pid_t got = waitpid(pid, &status, WNOHANG);
    if (got == pid) break;
    if (got < 0) return "waitpid failed: " + std::string(strerror(errno));
    if (std::chrono::steady_clock::now() >= deadline) {
      std::string threads;
      const std::string task_dir = "/proc/" + std::to_string(pid) + "/task";
      if (DIR* dir = opendir(task_dir.c_str())) {
        while (dirent* entry = readdir(dir)) {
          if (entry->d_name[0] == '.') continue;
          FILE* f = fopen((task_dir + "/" + entry->d_name + "/comm").c_str(), "r");
          char name[64] = {};
          if (f != nullptr) {
            if (fgets(name, sizeof(name), f) == nullptr) name[0] = '\0';
            fclose(f);
          }
          name[strcspn(name, "\n")] = '\0';
          threads += std::string(threads.empty() ? "" : ", ") + name;
        }
        closedir(dir);
      }
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return "child hung: no exit within " + std::to_string(kChildDeadline.count()) +
             " s (killed); its threads: " + threads;
    }
    std::this_thread::sleep_for(1ms);
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return "";
  if (WIFEXITED(status)) return "child exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "child killed by signal " + std::to_string(WTERMSIG(status));
  return "child ended oddly, status " + std::to_string(status);
}

// Two threads that keep allocating and freeing each other's blocks, with
// content checks, until stopped: the pool stays busy. One of them also calls
// ferry_collect now and then.
class Traffic {
 public:
  void Start() {
    for (int t = 0; t < 2; ++t) {
      threads_.emplace_back([this, t] { Run(t); });
    }
  }
  void Stop() {
    stop_ = true;
    for (std::thread& t : threads_) t.join();
    for (std::vector<Item>& inbox : inbox_) {
      for (const Item& item : inbox) corrupt_ += !CheckAndFree(item);
      inbox.clear();
    }
  }
  uint64_t corrupt() const { return corrupt_.load(); }
  uint64_t rounds() const { return rounds_.load(); }

 private:
  void Run(int t) {
    uint64_t i = static_cast<uint64_t>(t) << 40;
    for (uint64_t round = 0; !stop_; ++round) {
      std::vector<Item> made;
      for (int k = 0; k < 64; ++k) made.push_back(Make(TrafficSize(i++)));
      std::vector<Item> mine;
      {
        std::lock_guard<std::mutex> lock(mu_);
        std::vector<Item>& theirs = inbox_[1 - t];
        theirs.insert(theirs.end(), made.begin(), made.end());
        mine.swap(inbox_[t]);
      }
      for (const Item& item : mine) corrupt_ += !CheckAndFree(item);
      if (round % 50 == 49) ferry_flush();
      // Housekeeping too (the pool's, or with no pool this thread's own), so
      // that forks land while it runs.
      if (t == 1 && round % 8 == 7) ferry_collect();
      rounds_++;
      // Keep the inboxes bounded if one side runs ahead.
      while (!stop_) {
        {
          std::lock_guard<std::mutex> lock(mu_);
          if (inbox_[1 - t].size() < 4096) break;
        }
        std::this_thread::yield();
      }
    }
  }

  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::vector<Item> inbox_[2];
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> corrupt_{0}, rounds_{0};
};

TEST(Fork, ChildrenOfABusyProcessWorkAcrossTheirOwnThreadsAndStartTheirOwnPool) {
  const int forks = std::max(10, 50 / kSanitizerSlowdown);
  Traffic traffic;
  traffic.Start();
  // Let the traffic start the pool (or not, with FERRY_RECLAIMERS=0).
  ASSERT_TRUE(WaitFor([&] { return traffic.rounds() > 200; }, 10s));
  int failures = 0;
  for (int i = 0; i < forks && failures < 3; ++i) {
    std::vector<Item> inherited;
    for (uint64_t k = 0; k < 50; ++k) inherited.push_back(Make(TrafficSize(k + i)));
    const uint64_t starts = Stats().pool_starts;
    const pid_t pid = fork();
    ASSERT_GE(pid, 0) << strerror(errno);
    if (pid == 0) BusyChild(starts, inherited);
    const std::string problem = WaitForChild(pid);
    if (!problem.empty()) {
      ++failures;
      ADD_FAILURE() << "fork " << i << " of " << forks << " (pid " << pid << "): " << problem;
    }
    for (const Item& item : inherited) EXPECT_TRUE(CheckAndFree(item));
    std::this_thread::sleep_for(std::chrono::milliseconds(Mix(i) % 5));
  }
  traffic.Stop();
  EXPECT_EQ(traffic.corrupt(), 0u);
  ferry_flush();
  const ferry_stats_t s = Stats();
  EXPECT_EQ(s.blocks_returned, s.remote_frees);
  const int wanted = ferry_test::ExpectedReclaimers();
  if (wanted == 0) {
    EXPECT_EQ(s.pool_starts, 0u);
    EXPECT_EQ(s.reclaimer_threads, 0u);
  } else {
    EXPECT_EQ(s.pool_starts, s.pool_stops + 1)
        << "forks must not restart the parent's pool (only an idle stop is followed by a start)";
    EXPECT_EQ(s.reclaimer_threads, static_cast<uint64_t>(wanted));
    EXPECT_EQ(ferry_test::ReclaimerNames(), ferry_test::ExpectedReclaimerNames(wanted))
        << "the parent's reclaimers must survive its forks";
  }
}

// The parent's pool runs (remote frees and a flush start it), with as many
// threads as the environment asked for.
void StartParentPool() {
  std::vector<Item> blocks;
  for (int i = 0; i < 300; ++i) blocks.push_back(Make(TrafficSize(i)));
  std::thread([&] {
    for (const Item& item : blocks) EXPECT_TRUE(CheckAndFree(item));
    ferry_flush();
  }).join();
  const int wanted = ferry_test::ExpectedReclaimers();
  ASSERT_TRUE(WaitFor([&] { return ferry_test::ReclaimerThreadCount() == wanted; }, 5s))
      << ferry_test::AllThreadNames();
}

TEST(Fork, ChildStartsWithoutReclaimersAndStartsAPoolOnlyWhenItNeedsOne) {
  const int wanted = ferry_test::ExpectedReclaimers();
  ASSERT_NO_FATAL_FAILURE(StartParentPool());
  const uint64_t parent_starts = Stats().pool_starts;
  const uint64_t parent_stops = Stats().pool_stops;
  auto child = [&](int generation) -> std::string {
    if (ferry_test::TaskCount() != 1) return "starts with threads: " + ferry_test::AllThreadNames();
    if (Stats().reclaimer_threads != 0) return "reclaimer_threads != 0 at start";
    const uint64_t starts_at_fork = Stats().pool_starts;
    // Local work, and threads that free only their own blocks: no pool.
    for (int round = 0; round < 3; ++round) {
      std::vector<Item> items;
      for (int i = 0; i < 2000; ++i) items.push_back(Make(TrafficSize(i + round)));
      for (const Item& item : items) {
        if (!CheckAndFree(item)) return std::string("a block changed");
      }
      std::thread([] {
        std::vector<Item> own;
        for (int i = 0; i < 500; ++i) own.push_back(Make(TrafficSize(i)));
        for (const Item& item : own) CheckAndFree(item);
      }).join();
    }
    ferry_flush();
    std::string problem = ChildPoolProblem(false);
    if (!problem.empty()) return "before any remote free: " + problem;
    // A few remote frees, batch still partial: no pool.
    std::vector<Item> blocks;
    for (int i = 0; i < 40; ++i) blocks.push_back(Make(96));
    std::latch freed(1), checked(1), flushed(1);
    std::atomic<int> corrupt{0};
    std::thread helper([&] {
      for (int i = 0; i < 10; ++i) corrupt += !CheckAndFree(blocks[i]);
      freed.count_down();
      checked.wait();
      ferry_flush();
      flushed.count_down();
    });
    freed.wait();
    problem = ChildPoolProblem(false);
    checked.count_down();
    flushed.wait();
    helper.join();
    if (!problem.empty()) return "after 10 remote frees, no flush: " + problem;
    // The flush hands the batch on: now the pool starts.
    problem = ChildPoolProblem(true);
    if (!problem.empty()) return "after the flush (generation " + std::to_string(generation) + "): " + problem;
    const uint64_t wanted_starts = wanted == 0 ? 0 : starts_at_fork + 1;
    if (Stats().pool_starts != wanted_starts) {
      return "pool_starts " + std::to_string(Stats().pool_starts) + ", expected " + std::to_string(wanted_starts);
    }
    for (int i = 10; i < 40; ++i) corrupt += !CheckAndFree(blocks[i]);
    if (corrupt != 0) return std::string("blocks changed before their free");
    return "";
  };
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::string problem = child(1);
    if (problem.empty()) {
      // The child, with its own pool running now, forks too.
      const pid_t grandchild = fork();
      if (grandchild < 0) ChildExit("fork in the child failed");
      if (grandchild == 0) ChildExit(child(2));
      problem = WaitForChild(grandchild);
      if (!problem.empty()) problem = "grandchild: " + problem;
    }
    ChildExit(problem);
  }
  EXPECT_EQ(WaitForChild(pid), "");
  // Only an idle stop of the parent's own pool (FERRY_RECLAIMER_IDLE_MS) is
  // followed by a start here.
  EXPECT_LE(Stats().pool_starts - parent_starts, Stats().pool_stops - parent_stops)
      << "a child's pool is not the parent's";
}

// While the pool runs, segments a thread empties stay on its list for the
// pool's housekeeping to give back. The child has no pool (and may never
// start one), so the forking thread's are given back in the child at once.
TEST(Fork, SegmentsLeftForThePoolGoBackInTheChild) {
  ASSERT_NO_FATAL_FAILURE(StartParentPool());
  constexpr size_t kBytes = size_t{48} << 20;
  std::vector<void*> blocks;
  blocks.reserve(kBytes / 1000);
  const uint64_t live_before = Stats().segments_live;
  for (size_t i = 0; i < kBytes / 1000; ++i) {
    blocks.push_back(ferry_malloc(1000));
    ASSERT_NE(blocks.back(), nullptr);
  }
  for (void* p : blocks) ferry_free(p);
  const uint64_t live_at_fork = Stats().segments_live;
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // The spare, and the segment of each current page.
    const uint64_t live = Stats().segments_live;
    ChildExit(live <= live_before + 2 ? ""
                                      : "segments live in the child " + std::to_string(live) + ", " +
                                            std::to_string(live_before) + " before the 48 MiB, " +
                                            std::to_string(live_at_fork) + " in the parent at fork");
  }
  EXPECT_EQ(WaitForChild(pid), "");
}

TEST(Fork, BatchesQueuedAtForkReachTheirPagesInTheChild) {
  // The main thread owns `n` blocks; another thread frees them in full
  // batches (handed to the pool, not flushed) and the main thread forks at
  // once, while the batches may still sit in the reclaimers' queues. The
  // child calls nothing but malloc: every freed block must be on its page
  // already, so that the child's next 2n allocations include all of them.
  // Every other block of the run stays allocated, so that no page empties:
  // an empty page goes back to its segment, its slice may be purged at once
  // (FERRY_PURGE_DELAY_MS=0) and a new page land elsewhere, and its blocks
  // would not come back at their old addresses (1 fork in ~150 did that).
  const size_t batch = BatchSize();
  const size_t n = 2 * batch;
  constexpr size_t kSize = 2560;  // this test's class alone (25 blocks a page)
  const int forks = std::max(8, 30 / kSanitizerSlowdown);
  for (int i = 0; i < forks; ++i) {
    std::vector<void*> blocks, kept;
    for (size_t k = 0; k < 2 * n; ++k) {
      void* p = ferry_malloc(kSize);
      ASSERT_NE(p, nullptr);
      FillBlock(p, kSize);
      (k % 2 == 0 ? kept : blocks).push_back(p);
    }
    const std::set<void*> freed(blocks.begin(), blocks.end());
    std::latch all_freed(1), forked(1);
    std::atomic<int> corrupt{0};
    std::thread freer([&] {
      for (void* p : blocks) {
        corrupt += !BlockIntact(p, kSize);
        ferry_free(p);
      }
      all_freed.count_down();
      forked.wait();  // alive, no flush, no exit: only the pool moves them
    });
    all_freed.wait();
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      size_t reused = 0;
      std::vector<void*> again;
      for (size_t k = 0; k < 2 * n; ++k) {
        void* p = ferry_malloc(kSize);
        if (p == nullptr) ChildExit("out of memory");
        FillBlock(p, kSize);
        reused += freed.count(p);
        again.push_back(p);
      }
      for (void* p : again) {
        if (!BlockIntact(p, kSize)) ChildExit("a reused block changed under its owner");
        ferry_free(p);
      }
      if (reused != n) {
        ChildExit(std::to_string(n) + " blocks freed in full batches before fork(): the child's next " +
                  std::to_string(2 * n) + " allocations reused only " + std::to_string(reused) +
                  " (queued batches must be applied by the time the child runs)");
      }
      // The batches the child applied for the reclaimers count as theirs.
      const ferry_stats_t s = Stats();
      if (s.batches_pooled + s.batches_inline != s.batches_published) {
        ChildExit("batches_pooled " + std::to_string(s.batches_pooled) + " + batches_inline " +
                  std::to_string(s.batches_inline) + " != batches_published " +
                  std::to_string(s.batches_published));
      }
      ChildExit("");
    }
    forked.count_down();
    freer.join();
    EXPECT_EQ(corrupt.load(), 0);
    const std::string problem = WaitForChild(pid);
    EXPECT_EQ(problem, "") << "fork " << i;
    for (void* p : kept) {
      EXPECT_TRUE(BlockIntact(p, kSize));
      ferry_free(p);
    }
    if (!problem.empty()) break;
    ferry_flush();
  }
}

// ferry_collect looks for heaps of gone threads (tgkill probes), at most
// every 100 ms (heap.cc, kGoneOwnersCheckUrgentMs): waits that long first.
void LookForGoneThreads() {
  std::this_thread::sleep_for(150ms);
  ferry_collect();
}

// After a fork (or a vfork, on the parent's side): makes and checks blocks
// around ferry_collect, and checks that no heap was abandoned by it. ""
// when all is well.
std::string CollectingProblem(const std::vector<void*>& mine, size_t mine_size,
                              const std::vector<void*>& others, size_t others_size) {
  const ferry_stats_t before = Stats();
  std::string problem;
  for (int round = 0; round < 3 && problem.empty(); ++round) {
    std::vector<void*> made;
    for (int i = 0; i < 2000; ++i) made.push_back(Make(mine_size).p);
    LookForGoneThreads();
    for (void* p : made) {
      if (p == nullptr || !BlockIntact(p, mine_size)) problem = "a block changed after ferry_collect";
      ferry_free(p);
    }
  }
  for (void* p : mine) {
    if (!BlockIntact(p, mine_size)) problem = "a block made before the fork changed";
  }
  for (void* p : others) {
    if (!BlockIntact(p, others_size)) problem = "the other thread's block changed";
  }
  const ferry_stats_t after = Stats();
  if (after.heaps_abandoned != before.heaps_abandoned) {
    problem = std::to_string(after.heaps_abandoned - before.heaps_abandoned) +
              " heaps abandoned by the collects";
  }
  return problem;
}

// The housekeeping abandons a heap whose thread the kernel no longer knows
// (one made in the last TSD destructor round). In a child every thread id
// of the parent is unknown: the child's own heap, and the heaps of the
// parent's other threads, must not look like heaps of gone threads.
TEST(Fork, ChildrenKeepTheirHeapsThoughTheParentsThreadIdsAreGoneThere) {
  std::latch ready(1);
  std::atomic<bool> stop{false};
  std::vector<void*> theirs;
  std::thread other([&] {  // a heap of another thread, alive at the fork
    for (int i = 0; i < 64; ++i) theirs.push_back(Make(256).p);
    ready.count_down();
    while (!stop.load()) std::this_thread::sleep_for(1ms);
  });
  ready.wait();
  std::vector<void*> mine;
  for (int i = 0; i < 64; ++i) mine.push_back(Make(96).p);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) ChildExit(CollectingProblem(mine, 96, theirs, 256));
  EXPECT_EQ(WaitForChild(pid), "");
  stop = true;
  other.join();
  for (void* p : mine) ferry_free(p);
  for (void* p : theirs) ferry_free(p);
}

// The same in a child forked by a raw system call, where ferry's handlers
// never ran: its heap still names the parent's thread. In a fresh process
// of one thread (a threadsafe death test re-executes the binary), as a
// program that may do this has (with a pool, ferry_collect would wait in
// the child for threads it does not have, as any library's would).
TEST(Fork, ARawForkChildKeepsItsHeapThoughItsThreadIdIsGoneThere) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        std::vector<void*> mine;
        for (int i = 0; i < 64; ++i) mine.push_back(Make(96).p);
        const pid_t pid = static_cast<pid_t>(syscall(SYS_fork));
        if (pid == 0) ChildExit(CollectingProblem(mine, 96, {}, 0));
        const std::string problem = pid < 0 ? "fork failed" : WaitForChild(pid);
        fprintf(stderr, "%s\n", problem.empty() ? "the child kept its heap" : problem.c_str());
        exit(problem.empty() ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "the child kept its heap");
}

// A vfork child shares its parent thread's memory, thread-locals included:
// its malloc, that thread's first, makes the thread's heap. The heap must
// not be taken for the child's, whose id is gone once it exits (a review's
// program: the collect abandoned the heap under the parent's thread, a new
// thread took it over, and free lists broke). Allocating in a vfork child
// is undefined, and done (opendir, setenv before exec).
__attribute__((noinline)) pid_t VforkAChildThatAllocates() {
  const pid_t pid = vfork();
  if (pid == 0) _exit(ferry_malloc(100) != nullptr ? 0 : 1);
  return pid;
}

TEST(Fork, AVforkChildsFirstMallocLeavesTheHeapToItsParentsThread) {
  std::string problem;
  std::thread([&problem] {
    const pid_t pid = VforkAChildThatAllocates();  // nothing allocated here before
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      problem = "the vfork child failed";
      return;
    }
    problem = CollectingProblem({}, 96, {}, 0);
  }).join();
  EXPECT_EQ(problem, "");
}

// A child made by glibc's clone (no fork handlers run) into a new pid
// namespace, from a thread of a process that is pid 1 of its own (a
// container's init): the child is pid 1 too, so its pid cannot tell it
// from its parent, and its heap names its parent's thread, unknown there.
// In a fresh process (a threadsafe death test re-executes the binary),
// which makes a user namespace for the rights; skipped where there are
// none to be had.
struct ClonedChildArgs {
  std::vector<void*>* mine;
};

int ClonedChildMain(void* arg) {
  const auto* args = static_cast<ClonedChildArgs*>(arg);
  const std::string problem = CollectingProblem(*args->mine, 96, {}, 0);
  if (!problem.empty()) fprintf(stderr, "cloned child: %s\n", problem.c_str());
  return problem.empty() ? 0 : 1;
}

// The same with CLONE_VM|CLONE_VFORK (the memory shared, so no page is
// wiped), from a thread that has no heap yet: the child's malloc makes
// that thread's heap, and its collect must look at no heap either.
std::atomic<uint64_t> g_abandoned_by_vm_child{0};

int VmChildMain(void*) {
  const ferry_stats_t before = Stats();
  if (ferry_malloc(100) == nullptr) _exit(2);  // the thread's first
  LookForGoneThreads();
  g_abandoned_by_vm_child = Stats().heaps_abandoned - before.heaps_abandoned;
  _exit(0);
}

std::string VmChildProblem() {
  std::string problem;
  std::latch ready(1);
  std::atomic<bool> stop{false};
  std::thread busy([&] {  // a live heap of another thread
    std::vector<void*> blocks;
    for (int i = 0; i < 512; ++i) blocks.push_back(Make(64).p);
    ready.count_down();
    while (!stop.load()) {
      for (void*& p : blocks) {
        if (!BlockIntact(p, 64)) problem = "a block of a live thread changed";
        ferry_free(p);
        p = Make(64).p;
      }
    }
    for (void* p : blocks) ferry_free(p);
  });
  ready.wait();
  std::thread([&problem] {
    constexpr size_t kStack = 256 << 10;
    static char stack[kStack];  // no malloc before the child's
    const pid_t child = clone(VmChildMain, stack + kStack, CLONE_VM | CLONE_VFORK | CLONE_NEWPID | SIGCHLD, nullptr);
    if (child < 0) {
      problem = std::string("clone failed: ") + strerror(errno);
      return;
    }
    const std::string waited = WaitForChild(child);
    if (!waited.empty()) problem = "the CLONE_VM child: " + waited;
  }).join();
  LookForGoneThreads();
  stop = true;
  busy.join();
  if (g_abandoned_by_vm_child != 0) {
    problem = "the CLONE_VM child's collect abandoned " + std::to_string(g_abandoned_by_vm_child.load()) + " heaps";
  }
  return problem;
}

TEST(Fork, AChildClonedIntoAPidNamespaceLeavesItsHeapsAlone) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        if (unshare(CLONE_NEWUSER | CLONE_NEWPID) != 0) {
          fprintf(stderr, "skipped: no user and pid namespace here (%s)\n", strerror(errno));
          exit(0);
        }
        const pid_t init = fork();  // pid 1 of the new namespace
        if (init == 0) {
          std::string problem;
          std::thread([&problem] {  // tid 2 there
            std::vector<void*> mine;
            for (int i = 0; i < 64; ++i) mine.push_back(Make(96).p);
            ClonedChildArgs args{&mine};
            constexpr size_t kStack = 256 << 10;
            char* stack = static_cast<char*>(ferry_malloc(kStack));
            const pid_t child = clone(ClonedChildMain, stack + kStack, CLONE_NEWPID | SIGCHLD, &args);
            if (child < 0) {
              problem = std::string("clone failed: ") + strerror(errno);
              return;
            }
            problem = WaitForChild(child);
          }).join();
          if (problem.empty()) problem = VmChildProblem();
          if (!problem.empty()) fprintf(stderr, "%s\n", problem.c_str());
          _exit(problem.empty() ? 0 : 1);
        }
        const std::string problem = init < 0 ? "fork failed" : WaitForChild(init);
        fprintf(stderr, "%s\n", problem.empty() ? "the cloned child kept its heap" : problem.c_str());
        exit(problem.empty() ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "the cloned child kept its heap|skipped");
}

// A program that calls ferry's API but has never allocated with it (no
// thread has a heap): ferry_collect still runs the pool's housekeeping, in
// its turn. A fork while another thread holds that turn must not leave the
// child waiting for a thread it does not have. Runs in a fresh process (a
// threadsafe death test re-executes the binary), since every other case
// makes heaps.
TEST(Fork, ChildOfAProgramWithoutHeapsCanCollectWhileTheParentCollects) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        std::atomic<bool> stop{false};
        std::thread collector([&] {
          while (!stop.load()) ferry_collect();
        });
        std::string problem;
        for (int i = 0; i < 300 && problem.empty(); ++i) {
          const pid_t pid = fork();
          if (pid == 0) {
            ferry_collect();
            _exit(0);
          }
          problem = WaitForChild(pid);
          if (!problem.empty()) problem = "fork " + std::to_string(i) + ": " + problem;
        }
        stop = true;
        collector.join();
        fprintf(stderr, "%s\n", problem.empty() ? "every child collected" : problem.c_str());
        exit(problem.empty() ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "every child collected");
}

}  // namespace

// rss_test.cc — resident memory after cross-thread frees: memory freed by
// another thread must go back to the OS without the owner's help, whether
// the owner sleeps or has exited, and a process where several threads
// allocate and one thread only frees must not grow past its live data
// (mimalloc#1364: 4.9x live).
//
// Resident memory is read from /proc/self/statm. Each case runs in its own
// process (one target per case, see BUILD), so that memory one case left
// committed cannot hide another's growth, and so that each baseline is its
// own. Blocks are written in full (memset) so that they are resident, and
// carry a tag at both ends that the freeing thread checks.
//
// Not under sanitizers: their allocators and shadow memory make resident
// memory meaningless.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <latch>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "ferry.h"
#include "gtest/gtest.h"
#include "tests/pool_test_util.h"
#include "tests/test_util.h"

namespace {

using namespace std::chrono_literals;
using ferry_test::kKiB;
using ferry_test::kMiB;
using ferry_test::Mix;
using ferry_test::ResidentBytes;

constexpr size_t kGiB = size_t{1} << 30;

// (a), (b): after everything was freed and flushed, resident memory must come
// within this much of the baseline...
constexpr size_t kReturnedAllowance = 100 * kMiB;
// ...within this long, polled this often.
constexpr auto kReturnDeadline = 2s;
constexpr auto kPollStep = 100ms;

// (c): steady resident memory (the median of the readings) <=
// kSteadyFactor x live bytes + kSteadyAllowance
// (the allowance covers partly used pages of each size class and thread,
// batches in flight, and the test's own bookkeeping in glibc's heap).
constexpr double kSteadyFactor = 1.2;
constexpr size_t kSteadyAllowance = 16 * kMiB;
// How much more the worst single reading may be (ManyProducersOneFreer...).
constexpr size_t kWorstReadingAllowance = 16 * kMiB;

double MiB(size_t bytes) { return static_cast<double>(bytes) / static_cast<double>(kMiB); }
double MiB(int64_t bytes) { return static_cast<double>(bytes) / static_cast<double>(kMiB); }

int64_t Above(size_t rss, size_t baseline) {
  return static_cast<int64_t>(rss) - static_cast<int64_t>(baseline);
}

// Polls resident memory every kPollStep until it is less than `allowance`
// above `baseline` or kReturnDeadline has passed; returns the last reading,
// with every reading (MiB above the baseline) in *samples and the time
// waited in *waited.
size_t WaitForResidentNear(size_t baseline, size_t allowance, std::ostringstream* samples,
                           std::chrono::milliseconds* waited) {
  size_t rss = ResidentBytes();
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    *samples << " " << static_cast<int64_t>(MiB(Above(rss, baseline)));
    if (Above(rss, baseline) < static_cast<int64_t>(allowance)) break;
    if (std::chrono::steady_clock::now() - start >= kReturnDeadline) break;
    std::this_thread::sleep_for(kPollStep);
    rss = ResidentBytes();
  }
  *waited = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
  return rss;
}

// Writes the whole block (so it is resident) and a tag at both ends.
void Touch(void* p, size_t n) {
  memset(p, 0x5a, n);
  const uint64_t tag = Mix(reinterpret_cast<uintptr_t>(p) ^ n);
  memcpy(p, &tag, sizeof(tag));
  memcpy(static_cast<char*>(p) + n - sizeof(tag), &tag, sizeof(tag));
}

bool TagsIntact(const void* p, size_t n) {
  const uint64_t tag = Mix(reinterpret_cast<uintptr_t>(p) ^ n);
  uint64_t head, tail;
  memcpy(&head, p, sizeof(head));
  memcpy(&tail, static_cast<const char*>(p) + n - sizeof(tail), sizeof(tail));
  return head == tag && tail == tag;
}

// 64 B .. 4 KiB, spread evenly.
size_t SmallSize(uint64_t i) { return 64 + Mix(i) % (4 * kKiB - 64 + 1); }
size_t MediumSize(uint64_t) { return 256 * kKiB; }

// The pool starts at the first batch handed on: one thread's blocks freed
// by another.
void StartThePool() {
  std::vector<void*> blocks;
  for (size_t i = 0; i < 4 * ferry_test::BatchSize(); ++i) blocks.push_back(ferry_malloc(64));
  std::thread([&] {
    for (void* p : blocks) ferry_free(p);
    ferry_flush();
  }).join();
}

struct Block {
  void* p;
  size_t n;
};

enum class Owner { kStaysIdle, kExits };

// (a) and (b): one thread allocates `total` bytes in blocks of `size(i)` and
// hands them to a second thread, which frees them all and calls
// ferry_flush(). The owner then sleeps (kStaysIdle) or has exited (kExits).
// Resident memory must fall back near the baseline within kReturnDeadline.
// With `flush` false the freeing thread never calls ferry_flush and nobody
// allocates afterwards: the frees alone must bring the pool up (its start is
// asked for by the first batch handed on) and the pool must give the memory
// back with no call from the program.
void ExpectFreedMemoryReturns(size_t total, size_t (*size)(uint64_t), Owner owner_fate,
                              bool flush = true) {
  // Bookkeeping made resident before the baseline.
  size_t planned = 0;
  for (size_t bytes = 0; bytes < total; ++planned) bytes += size(planned);
  std::vector<Block> blocks(planned, Block{nullptr, 0});
  size_t count = 0;
  std::atomic<bool> failed{false};
  std::mutex mu;
  std::condition_variable cv;
  bool handed = false, freed = false, owner_may_exit = false;
  size_t corrupt = 0;

  // The freeing thread exists (with its heap) before the owner allocates,
  // so that it cannot take over the owner's heap when the owner exits.
  std::latch freer_has_heap(1);
  std::thread freer([&] {
    ferry_free(ferry_malloc(16));
    freer_has_heap.count_down();
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return handed; });
    lock.unlock();
    for (size_t i = 0; i < count; ++i) {
      corrupt += !TagsIntact(blocks[i].p, blocks[i].n);
      ferry_free(blocks[i].p);
    }
    if (flush) ferry_flush();
    lock.lock();
    freed = true;
    cv.notify_all();
  });
  freer_has_heap.wait();
  const size_t baseline = ResidentBytes();
  size_t peak = 0;

  std::thread owner([&] {
    for (uint64_t i = 0; i < planned; ++i) {
      const size_t n = size(i);
      void* p = ferry_malloc(n);
      if (p == nullptr) {
        failed = true;
        break;
      }
      Touch(p, n);
      blocks[count++] = {p, n};
    }
    peak = ResidentBytes();
    std::unique_lock<std::mutex> lock(mu);
    handed = true;
    cv.notify_all();
    if (owner_fate == Owner::kExits) return;
    // Idle: alive, but never allocating or freeing again until the end.
    cv.wait(lock, [&] { return owner_may_exit; });
  });
  if (owner_fate == Owner::kExits) owner.join();
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return freed; });
  }
  EXPECT_FALSE(failed.load()) << "out of memory";
  ASSERT_GT(Above(peak, baseline), static_cast<int64_t>(total * 9 / 10))
      << "the blocks were not resident: the test measures nothing";

  std::ostringstream samples;
  std::chrono::milliseconds waited;
  const size_t rss = WaitForResidentNear(baseline, kReturnedAllowance, &samples, &waited);
  const ferry_stats_t s = ferry_test::Stats();
  printf("resident above baseline: peak %.1f MiB, %.1f MiB after %lld ms; samples (MiB):%s\n",
         MiB(Above(peak, baseline)), MiB(Above(rss, baseline)), static_cast<long long>(waited.count()),
         samples.str().c_str());
  EXPECT_LT(Above(rss, baseline), static_cast<int64_t>(kReturnedAllowance))
      << MiB(total) << " MiB allocated by one thread and freed by another, which flushed; the owner "
      << (owner_fate == Owner::kExits ? "exited" : "sleeps") << ". Resident memory above the baseline: peak "
      << MiB(Above(peak, baseline)) << " MiB, still " << MiB(Above(rss, baseline)) << " MiB after "
      << waited.count() << " ms (limit " << MiB(kReturnedAllowance) << " MiB within "
      << std::chrono::duration_cast<std::chrono::milliseconds>(kReturnDeadline).count()
      << " ms); samples (MiB):" << samples.str() << "; bytes_decommitted " << s.bytes_decommitted
      << ", segments_live " << s.segments_live << ", reclaimer_threads " << s.reclaimer_threads;
  EXPECT_EQ(corrupt, 0u);

  {
    std::lock_guard<std::mutex> lock(mu);
    owner_may_exit = true;
    cv.notify_all();
  }
  if (owner.joinable()) owner.join();
  freer.join();
}

TEST(Rss, MemoryFreedByAnotherThreadReturnsWhileItsOwnerSleepsSmallBlocks) {
  ExpectFreedMemoryReturns(kGiB, SmallSize, Owner::kStaysIdle);
}

TEST(Rss, MemoryFreedByAnotherThreadReturnsWhileItsOwnerSleepsMediumBlocks) {
  ExpectFreedMemoryReturns(kGiB, MediumSize, Owner::kStaysIdle);
}

TEST(Rss, MemoryFreedByAnotherThreadReturnsWithNoCallAtAll) {
  ExpectFreedMemoryReturns(kGiB / 2, SmallSize, Owner::kStaysIdle, /*flush=*/false);
}

TEST(Rss, MemoryFreedByAnotherThreadReturnsAfterItsOwnerExitedSmallBlocks) {
  ExpectFreedMemoryReturns(kGiB, SmallSize, Owner::kExits);
}

TEST(Rss, MemoryFreedByAnotherThreadReturnsAfterItsOwnerExitedMediumBlocks) {
  ExpectFreedMemoryReturns(kGiB, MediumSize, Owner::kExits);
}

// (b') Threads build sets of large medium blocks (64-256 KiB: pages of a
// few blocks each), then exit or idle; another thread frees all but one
// block in eight, with no call after. Resident memory must fall to the
// live blocks and a little within kReturnDeadline. Until 2026-12-07 a page
// with one live block kept every block of it resident, and nearly every
// page had one: 128 MiB stayed for 16 MiB of blocks. Owners that idled
// kept it until later that day: the returns waited on their pages for an
// owner's slow path that never came.
void ExpectLargeBlocksGoBackButTheLiveOnes(Owner owner) {
  constexpr int kThreads = 4;
  constexpr size_t kPerThread = 32 * kMiB;
  constexpr size_t kMaxBlocks = kPerThread / (64 * kKiB) + 1;
  std::vector<Block> blocks[kThreads];
  for (auto& list : blocks) list.reserve(kMaxBlocks);
  StartThePool();
  const size_t baseline = ResidentBytes();
  std::latch built(kThreads), measured(1);
  std::vector<std::thread> threads;
  // However the test ends (an ASSERT returns early): the sleeping threads
  // are let go and joined.
  struct LetGo {
    std::latch& measured;
    std::vector<std::thread>& threads;
    ~LetGo() {
      measured.count_down();
      for (auto& thread : threads) {
        if (thread.joinable()) thread.join();
      }
    }
  } let_go{measured, threads};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      {
        // Counted as built here, or where an ASSERT returns early.
        struct Arrive {
          std::latch& built;
          ~Arrive() { built.count_down(); }
        } arrive{built};
        for (size_t bytes = 0, i = 0; bytes < kPerThread; ++i) {
          const size_t n = 64 * kKiB + Mix(i * kThreads + t) % (192 * kKiB);
          void* p = ferry_malloc(n);
          ASSERT_NE(p, nullptr);
          Touch(p, n);
          blocks[t].push_back({p, n});
          bytes += n;
        }
      }
      if (owner == Owner::kStaysIdle) measured.wait();
    });
  }
  built.wait();
  if (owner == Owner::kExits) {
    for (auto& thread : threads) thread.join();
  }
  const size_t peak = ResidentBytes();
  size_t live = 0, corrupt = 0;
  for (auto& list : blocks) {
    for (size_t i = 0; i < list.size(); ++i) {
      corrupt += !TagsIntact(list[i].p, list[i].n);
      if (i % 8 == 0) {
        live += list[i].n;
      } else {
        ferry_free(list[i].p);
      }
    }
  }
  ASSERT_GT(Above(peak, baseline), static_cast<int64_t>(kThreads * kPerThread * 9 / 10))
      << "the blocks were not resident: the test measures nothing";
  // Within 10% of the live blocks, and 8 MiB for the rest (the free blocks'
  // first pages, which hold their links; partly used small pages).
  const size_t allowance = live + live / 10 + 8 * kMiB;
  std::ostringstream samples;
  std::chrono::milliseconds waited;
  const size_t rss = WaitForResidentNear(baseline, allowance, &samples, &waited);
  const ferry_stats_t s = ferry_test::Stats();
  printf("live %.1f MiB; resident above baseline: peak %.1f MiB, %.1f MiB after %lld ms; samples (MiB):%s\n",
         MiB(live), MiB(Above(peak, baseline)), MiB(Above(rss, baseline)), static_cast<long long>(waited.count()),
         samples.str().c_str());
  EXPECT_LT(Above(rss, baseline), static_cast<int64_t>(allowance))
      << MiB(live) << " MiB live of " << MiB(kThreads * kPerThread) << " MiB its "
      << (owner == Owner::kExits ? "exited" : "idle") << " threads allocated: still "
      << MiB(Above(rss, baseline)) << " MiB above the baseline after " << waited.count()
      << " ms; samples (MiB):" << samples.str() << "; bytes_decommitted " << s.bytes_decommitted
      << ", heaps_abandoned " << s.heaps_abandoned << ", reclaimer_threads " << s.reclaimer_threads;
  for (auto& list : blocks) {
    for (size_t i = 0; i < list.size(); i += 8) {
      corrupt += !TagsIntact(list[i].p, list[i].n);
      ferry_free(list[i].p);
    }
  }
  EXPECT_EQ(corrupt, 0u);
}

TEST(Rss, LargeBlocksLeftByExitedThreadsGoBackButTheLiveOnes) {
  ExpectLargeBlocksGoBackButTheLiveOnes(Owner::kExits);
}

// The owners stay, idle: their pages are not theirs to give up, and the
// returned chains wait on them (the housekeeping's GiveBackWaitingChains).
TEST(Rss, LargeBlocksLeftByIdleThreadsGoBackButTheLiveOnes) {
  ExpectLargeBlocksGoBackButTheLiveOnes(Owner::kStaysIdle);
}

// (d) Threads that free their own blocks and then idle: each heap keeps one
// empty segment as its spare, and its memory must go back to the OS with the
// rest. (Until 2026-12-02 the spare left the heap's segment list, where the
// pool never purged it: each idle thread held up to 4 MiB; 13.9 MiB here,
// 2.1 MiB since.)
// One size: an idle heap also keeps its last page of each class it used
// (PageToReleaseOnEmpty), which the pool cannot take from under a live owner; with
// every size of SmallSize those are 1.8 MiB a thread. It keeps no standby
// page (KeepOnStandby): each thread's 16 MiB of frees is a heap shrinking.
// (With the last 16 emptied kept, 8.3 MiB above the baseline.)
//
// `start_pool`: the test starts the pool first; without it, nothing but the
// threads' own frees may start it.
void ExpectOwnFreesReturnWhileTheThreadsIdle(int thread_count, size_t per_thread, bool start_pool) {
  constexpr size_t kBlock = 1000;
  constexpr size_t kAllowance = 8 * kMiB;

  if (start_pool) StartThePool();
  std::mutex mu;
  std::condition_variable cv;
  int idle = 0;
  bool may_exit = false;
  std::atomic<bool> failed{false};
  std::atomic<size_t> corrupt{0};
  std::vector<std::vector<Block>> sets(thread_count);
  for (auto& set : sets) set.reserve(per_thread / kBlock + 1);
  const size_t baseline = ResidentBytes();
  std::atomic<size_t> peak{0};

  std::vector<std::thread> threads;
  for (int t = 0; t < thread_count; ++t) {
    threads.emplace_back([&, t] {
      std::vector<Block>& set = sets[t];
      for (size_t bytes = 0; bytes < per_thread;) {
        const size_t n = kBlock;
        void* p = ferry_malloc(n);
        if (p == nullptr) {
          failed = true;
          break;
        }
        Touch(p, n);
        set.push_back({p, n});
        bytes += n;
      }
      size_t rss = ResidentBytes();
      for (size_t seen = peak.load(); rss > seen && !peak.compare_exchange_weak(seen, rss);) {
      }
      for (const Block& b : set) {
        corrupt += !TagsIntact(b.p, b.n);
        ferry_free(b.p);
      }
      std::unique_lock<std::mutex> lock(mu);
      ++idle;
      cv.notify_all();
      cv.wait(lock, [&] { return may_exit; });
    });
  }
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return idle == thread_count; });
  }
  EXPECT_FALSE(failed.load()) << "out of memory";
  EXPECT_EQ(corrupt.load(), 0u);
  EXPECT_GT(Above(peak.load(), baseline), static_cast<int64_t>(per_thread))
      << "the blocks were not resident: the test measures nothing";

  std::ostringstream samples;
  std::chrono::milliseconds waited;
  const size_t rss = WaitForResidentNear(baseline, kAllowance, &samples, &waited);
  const ferry_stats_t s = ferry_test::Stats();
  printf("resident above baseline: peak %.1f MiB, %.1f MiB after %lld ms; samples (MiB):%s\n",
         MiB(Above(peak.load(), baseline)), MiB(Above(rss, baseline)), static_cast<long long>(waited.count()),
         samples.str().c_str());
  EXPECT_LT(Above(rss, baseline), static_cast<int64_t>(kAllowance))
      << thread_count << " threads each allocated and freed " << MiB(per_thread)
      << " MiB, then idled; resident memory above the baseline is still " << MiB(Above(rss, baseline))
      << " MiB after " << waited.count() << " ms (limit " << MiB(kAllowance)
      << " MiB); samples (MiB):" << samples.str()
      << "; bytes_decommitted " << s.bytes_decommitted << ", segments_live " << s.segments_live
      << ", reclaimer_threads " << s.reclaimer_threads << ", pool_starts " << s.pool_starts;
  {
    std::lock_guard<std::mutex> lock(mu);
    may_exit = true;
    cv.notify_all();
  }
  for (std::thread& t : threads) t.join();
}

TEST(Rss, MemoryFreedByItsOwnThreadReturnsWhileTheThreadIdles) {
  ExpectOwnFreesReturnWhileTheThreadsIdle(6, 16 * kMiB, /*start_pool=*/true);
}

// (d') The same where no free ever crossed threads, so that no batch started
// the pool: each thread keeps its emptied segments (fewer than the eight
// that ask for the pool), and the committed free slices of all of them ask
// for it once they pass 16 MiB (heap.cc, kDirtySlicesAskingForThePool).
// Until 2026-12-07 nothing did: 43 MiB stayed resident for good here.
TEST(Rss, MemoryFreedByItsOwnThreadsReturnsWhileTheyIdleThoughNoFreeCrossedThreads) {
  ASSERT_EQ(ferry_test::Stats().pool_starts, 0u);
  ExpectOwnFreesReturnWhileTheThreadsIdle(6, 8 * kMiB, /*start_pool=*/false);
}

// (e) With reclaimer threads running, a segment its owner empties stays on
// the owner's list until the housekeeping gives it back (EmptySegmentKeepMs,
// 250 ms; 1 s in this case's settings, see BUILD): a thread that frees
// 64 MiB and allocates it again at once takes back its committed slices
// rather than new segments whose memory it must fault in again. (Until 2026-12-02 the owner released every emptied segment
// but one on the spot: 15 segments mapped again and about 15 000 page
// faults here.) Then, idle, the memory must still go back within
// kReturnDeadline with no call from the program.
TEST(Rss, SegmentsAThreadEmptiedAreTakenAgainThenGoBackWhenIdle) {
  constexpr size_t kTotal = 64 * kMiB;
  constexpr size_t kBlock = 1000;
  constexpr size_t kAllowance = 8 * kMiB;
  constexpr size_t kCount = kTotal / kBlock;

  StartThePool();
  ASSERT_GT(ferry_test::Stats().reclaimer_threads, 0u) << "the pool did not start";
  std::vector<void*> blocks(kCount, nullptr);
  const size_t baseline = ResidentBytes();
  const uint64_t live_before = ferry_test::Stats().segments_live;
  uint64_t mapped_again = 0;
  long faults_again = 0;
  size_t corrupt = 0;
  bool failed = false;
  std::mutex mu;
  std::condition_variable cv;
  bool freed = false, may_exit = false;
  std::thread owner([&] {
    auto fill = [&] {
      for (size_t i = 0; i < kCount && !failed; ++i) {
        blocks[i] = ferry_malloc(kBlock);
        failed = blocks[i] == nullptr;
        if (!failed) Touch(blocks[i], kBlock);
      }
    };
    auto empty = [&] {
      for (void* p : blocks) {
        if (p == nullptr) continue;
        corrupt += !TagsIntact(p, kBlock);
        ferry_free(p);
      }
    };
    fill();
    empty();
    const uint64_t mapped = ferry_test::Stats().segments_mapped;
    rusage before, after;
    getrusage(RUSAGE_THREAD, &before);
    fill();
    getrusage(RUSAGE_THREAD, &after);
    mapped_again = ferry_test::Stats().segments_mapped - mapped;
    faults_again = after.ru_minflt - before.ru_minflt;
    empty();
    std::unique_lock<std::mutex> lock(mu);
    freed = true;
    cv.notify_all();
    cv.wait(lock, [&] { return may_exit; });  // idle, alive
  });
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return freed; });
  }
  // (No ASSERT before the owner is joined: a joinable thread would abort the test.)
  EXPECT_FALSE(failed) << "out of memory";
  EXPECT_EQ(corrupt, 0u);
  printf("allocated again: %llu segments mapped, %ld page faults\n",
         static_cast<unsigned long long>(mapped_again), faults_again);
  // (The refill may start a segment where the first fill had a partial one.)
  EXPECT_LE(mapped_again, 2u) << "the owner mapped new segments for " << MiB(kTotal)
                              << " MiB it had just freed (" << faults_again << " page faults)";

  std::ostringstream samples;
  std::chrono::milliseconds waited;
  const size_t rss = WaitForResidentNear(baseline, kAllowance, &samples, &waited);
  const auto deadline = std::chrono::steady_clock::now() + kReturnDeadline;
  while (ferry_test::Stats().segments_live > live_before + 2 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(kPollStep);
  }
  const ferry_stats_t s = ferry_test::Stats();
  printf("resident above baseline %.1f MiB after %lld ms; samples (MiB):%s; segments live %llu (%llu before)\n",
         MiB(Above(rss, baseline)), static_cast<long long>(waited.count()), samples.str().c_str(),
         static_cast<unsigned long long>(s.segments_live), static_cast<unsigned long long>(live_before));
  EXPECT_LT(Above(rss, baseline), static_cast<int64_t>(kAllowance))
      << "an idle thread freed " << MiB(kTotal) << " MiB; resident memory above the baseline is still "
      << MiB(Above(rss, baseline)) << " MiB after " << waited.count() << " ms; samples (MiB):" << samples.str();
  // Its spare, and the segment of its current page, stay.
  EXPECT_LE(s.segments_live, live_before + 2)
      << "the emptied segments were not given back within "
      << std::chrono::duration_cast<std::chrono::milliseconds>(kReturnDeadline).count() << " ms";
  {
    std::lock_guard<std::mutex> lock(mu);
    may_exit = true;
    cv.notify_all();
  }
  owner.join();
}

// The cases without a pool (f, g): how long an emptied segment is kept
// (EmptySegmentKeepMs for this process's FERRY_PURGE_DELAY_MS).
std::chrono::milliseconds KeepTime() {
  const char* delay = getenv("FERRY_PURGE_DELAY_MS");
  return std::chrono::milliseconds(delay != nullptr && atoi(delay) > 250 ? atoi(delay) : 250);
}

// `bytes` in blocks of `block` bytes, each written; false when out of memory.
bool FillBlocks(std::vector<void*>* blocks, size_t bytes, size_t block) {
  blocks->assign(bytes / block, nullptr);
  for (void*& p : *blocks) {
    p = ferry_malloc(block);
    if (p == nullptr) return false;
    Touch(p, block);
  }
  return true;
}

// Frees what FillBlocks made; returns how many blocks had lost their tags.
size_t FreeBlocks(std::vector<void*>* blocks, size_t block) {
  size_t corrupt = 0;
  for (void* p : *blocks) {
    if (p == nullptr) continue;
    corrupt += !TagsIntact(p, block);
    ferry_free(p);
  }
  std::vector<void*>().swap(*blocks);
  return corrupt;
}

// (f) Without reclaimer threads (this program frees nothing across
// threads, so it never starts them) nobody else would give back a segment
// the thread empties, so the thread keeps a few itself (kKeptEmptySegments,
// 16) and gives them back once they have been empty for EmptySegmentKeepMs
// (1 s in this case's settings, see BUILD), on its own next claim of
// slices. Checked: 32 MiB freed and allocated again at once needs no new
// segment (until 2026-12-03 every emptied segment but the spare went back
// on the spot: 7 segments mapped again and 7 142 page faults here);
// 96 MiB freed leaves no more than 16 kept; after the keep time, one
// allocation that needs new slices gives them back.
TEST(Rss, WithoutThePoolAThreadKeepsAFewSegmentsItEmptied) {
  constexpr size_t kBlock = 1000;
  constexpr size_t kSwing = 32 * kMiB;
  constexpr size_t kBig = 96 * kMiB;
  // Without a pool nothing purges free slices: the spare and the segment
  // of the current page stay committed, up to 4 MiB each.
  constexpr size_t kAllowance = 12 * kMiB;
  constexpr uint64_t kKept = 16;
  const auto keep_time = KeepTime();

  std::vector<void*> blocks;
  size_t corrupt = 0;
  bool failed = false;
  auto fill = [&](size_t bytes) { failed = !FillBlocks(&blocks, bytes, kBlock) || failed; };
  auto empty = [&] { corrupt += FreeBlocks(&blocks, kBlock); };

  const size_t baseline = ResidentBytes();
  const uint64_t live_before = ferry_test::Stats().segments_live;
  fill(kSwing);
  empty();
  const uint64_t mapped = ferry_test::Stats().segments_mapped;
  rusage before, after;
  getrusage(RUSAGE_THREAD, &before);
  fill(kSwing);
  getrusage(RUSAGE_THREAD, &after);
  const uint64_t mapped_again = ferry_test::Stats().segments_mapped - mapped;
  empty();
  ASSERT_FALSE(failed) << "out of memory";
  EXPECT_EQ(corrupt, 0u);
  ASSERT_EQ(ferry_test::Stats().reclaimer_threads, 0u) << "a pool started: the case measures something else";
  printf("allocated again: %llu segments mapped, %ld page faults\n",
         static_cast<unsigned long long>(mapped_again), after.ru_minflt - before.ru_minflt);
  // (The refill may start a segment where the first fill had a partial one.)
  EXPECT_LE(mapped_again, 2u) << "the thread mapped new segments for " << MiB(kSwing)
                              << " MiB it had just freed (" << after.ru_minflt - before.ru_minflt
                              << " page faults)";

  fill(kBig);
  const uint64_t live_full = ferry_test::Stats().segments_live;
  empty();
  ASSERT_FALSE(failed) << "out of memory";
  const uint64_t live_freed = ferry_test::Stats().segments_live;
  printf("%.0f MiB: %llu segments live, %llu after the free (%llu before)\n", MiB(kBig),
         static_cast<unsigned long long>(live_full), static_cast<unsigned long long>(live_freed),
         static_cast<unsigned long long>(live_before));
  EXPECT_GT(live_full, live_before + kKept + 2) << "the case frees too little to test the bound";
  // The kept ones, the spare, and the segment of the current page.
  EXPECT_LE(live_freed, live_before + kKept + 2) << "the thread kept more than " << kKept << " empty segments";

  std::this_thread::sleep_for(keep_time + 100ms);
  void* large = ferry_malloc(1024 * 1024);  // new slices: the thread's next claim
  ASSERT_NE(large, nullptr);
  const uint64_t live_later = ferry_test::Stats().segments_live;
  const size_t rss = ResidentBytes();
  ferry_free(large);
  printf("after %lld ms: %llu segments live, resident %.1f MiB above the baseline\n",
         static_cast<long long>(keep_time.count() + 100), static_cast<unsigned long long>(live_later),
         MiB(Above(rss, baseline)));
  EXPECT_LE(live_later, live_before + 3) << "the kept segments were not given back after "
                                         << keep_time.count() << " ms";
  EXPECT_LT(Above(rss, baseline), static_cast<int64_t>(kAllowance))
      << "resident memory above the baseline is still " << MiB(Above(rss, baseline)) << " MiB";
}

// (g) The segments a thread keeps (f) are the first whose committed slices
// another thread's new pages take; once that thread has freed them again,
// they are empty on the keeper's list, and the keeper must still give them
// back. (As first written, the keeper forgot a kept segment as soon as
// another heap's page was in it: 8 segments stayed live here.)
TEST(Rss, WithoutThePoolKeptSegmentsAnotherThreadUsedStillGoBack) {
  constexpr size_t kBlock = 1000;
  constexpr size_t kOwn = 32 * kMiB;
  constexpr size_t kOther = 24 * kMiB;
  const auto keep_time = KeepTime();

  std::atomic<size_t> corrupt{0};
  std::atomic<bool> failed{false};
  auto fill_and_empty = [&](size_t bytes, const std::function<void()>& between) {
    std::vector<void*> blocks;
    if (!FillBlocks(&blocks, bytes, kBlock)) failed = true;
    between();
    corrupt += FreeBlocks(&blocks, kBlock);
  };
  // A block of its own slices: this thread's next claim. Held to the end,
  // so that the next is a claim too, not the page this one leaves.
  std::vector<void*> large_blocks;
  auto claim_slices = [&] {
    large_blocks.push_back(ferry_malloc(1024 * 1024));
    return large_blocks.back() != nullptr;
  };
  const uint64_t live_before = ferry_test::Stats().segments_live;
  fill_and_empty(kOwn, [] {});  // this thread keeps what it emptied
  // Another heap takes a committed slice once it has been free a few ms
  // (until then it is left to the heap that freed it): without the wait the
  // other thread's first pages went to a segment of its own, which its
  // heap then kept as a spare after it exited.
  std::this_thread::sleep_for(20ms);
  const uint64_t kept = ferry_test::Stats().segments_live;
  const uint64_t mapped = ferry_test::Stats().segments_mapped;
  uint64_t mapped_by_other = 0;
  std::latch filled(1), may_free(1);
  std::thread other([&] {
    fill_and_empty(kOther, [&] {
      mapped_by_other = ferry_test::Stats().segments_mapped - mapped;
      filled.count_down();
      may_free.wait();
    });
  });
  // While the other thread's pages are in the kept segments, this thread
  // looks at them (ReleaseKeptSegmentsLocked, at most every quarter of the
  // keep time), then the other thread empties them again.
  filled.wait();
  std::this_thread::sleep_for(keep_time / 4 + 50ms);
  const bool claimed = claim_slices();
  may_free.count_down();
  other.join();
  EXPECT_TRUE(claimed) << "out of memory";
  ASSERT_FALSE(failed.load()) << "out of memory";
  EXPECT_EQ(corrupt.load(), 0u);
  ASSERT_EQ(ferry_test::Stats().reclaimer_threads, 0u) << "a pool started: the case measures something else";
  printf("kept %llu segments (%llu before); the other thread mapped %llu for %.0f MiB\n",
         static_cast<unsigned long long>(kept), static_cast<unsigned long long>(live_before),
         static_cast<unsigned long long>(mapped_by_other), MiB(kOther));
  ASSERT_LE(mapped_by_other, 2u) << "the other thread did not use the kept segments: the case tests nothing";

  std::this_thread::sleep_for(keep_time + 100ms);
  ASSERT_TRUE(claim_slices()) << "out of memory";
  const uint64_t live_later = ferry_test::Stats().segments_live;
  printf("after %lld ms: %llu segments live\n", static_cast<long long>(keep_time.count() + 100),
         static_cast<unsigned long long>(live_later));
  EXPECT_LE(live_later, live_before + 3) << "segments kept by this thread and emptied by another stayed";
  for (void* p : large_blocks) ferry_free(p);
}

// (h) A program whose other threads never allocate (a server's background
// threads waiting for jobs: redis-server's) counts one thread to ferry, and
// frees nothing across threads, so no pool starts from a batch. Its one
// allocating thread keeps the segments it empties (f), and nothing of its
// own would give them back while it idles: redis held the 64 MiB its
// FLUSHALL emptied for good (perf/RESULTS.md, 2026-12-06). So a thread that
// keeps its 8th segment asks for the pool where the process has other
// threads, and that free, or failing it the next allocation slow path,
// starts it. Checked both ways: 96 MiB freed, then either one large block
// (1 MiB, its own run of slices) allocated and freed (a server's next
// reply) or nothing more (a program done with its work); then no call at
// all. Within 2 s the kept segments have gone back and resident memory is
// near the baseline, with a reclaimer thread running. Frees by ferry_free,
// which may start the pool (FreeMayStartPool): the last free's case fails
// where only an allocation starts it (2026-12-06).
enum class AfterTheFrees { kOneLargeBlock, kNothing };

void CheckKeptSegmentsGoBackBesideAQuietThread(AfterTheFrees after) {
  constexpr size_t kBlock = 1000;
  constexpr size_t kBig = 96 * kMiB;
  constexpr size_t kAllowance = 12 * kMiB;  // as (f): the spare and the current page's segment
  std::atomic<bool> stop{false};
  pthread_t quiet;
  ASSERT_EQ(pthread_create(&quiet, nullptr, ferry_test::WaitWithoutAllocating, &stop), 0);

  std::vector<void*> blocks;
  const size_t baseline = ResidentBytes();
  const uint64_t live_before = ferry_test::Stats().segments_live;
  const bool filled = FillBlocks(&blocks, kBig, kBlock);
  const uint64_t live_full = ferry_test::Stats().segments_live;
  const size_t corrupt = FreeBlocks(&blocks, kBlock);
  const uint64_t live_freed = ferry_test::Stats().segments_live;
  ASSERT_TRUE(filled) << "out of memory";
  EXPECT_EQ(corrupt, 0u);
  EXPECT_EQ(ferry_test::Stats().batches_published, 0u) << "a remote free: the case measures something else";
  if (after == AfterTheFrees::kOneLargeBlock) {
    // A large block, as a server's next reply. The frees above started the
    // pool already; that a large block's slow path starts one asked for by
    // frees that could not is pool_start_test's case.
    void* reply = ferry_malloc(kMiB);
    ASSERT_NE(reply, nullptr);
    ferry_free(reply);
  }

  std::ostringstream samples;
  std::chrono::milliseconds waited{0};
  const size_t rss = WaitForResidentNear(baseline, kAllowance, &samples, &waited);
  // The segments go back after their keep time, which the purge of their
  // slices may precede: polled to the same deadline.
  while (ferry_test::Stats().segments_live > live_before + 3 && waited < kReturnDeadline) {
    std::this_thread::sleep_for(kPollStep);
    waited += std::chrono::duration_cast<std::chrono::milliseconds>(kPollStep);
  }
  const ferry_stats_t stats = ferry_test::Stats();
  stop.store(true, std::memory_order_release);
  pthread_join(quiet, nullptr);
  printf("%.0f MiB: %llu segments live, %llu after the free (%llu before), %llu %lld ms later; "
         "MiB above the baseline: %s\n",
         MiB(kBig), static_cast<unsigned long long>(live_full), static_cast<unsigned long long>(live_freed),
         static_cast<unsigned long long>(live_before), static_cast<unsigned long long>(stats.segments_live),
         static_cast<long long>(waited.count()), samples.str().c_str());
  EXPECT_GT(live_freed, live_before + 3) << "the thread kept no segment: the case tests nothing";
  EXPECT_GE(stats.reclaimer_threads, 1u) << "no pool started beside a thread that never allocates";
  EXPECT_LE(stats.segments_live, live_before + 3) << "the kept segments stayed while the thread idled";
  EXPECT_LT(Above(rss, baseline), static_cast<int64_t>(kAllowance))
      << "resident memory above the baseline is still " << MiB(Above(rss, baseline)) << " MiB";
}

TEST(Rss, SegmentsKeptByTheOnlyAllocatingThreadGoBackWhileItIdlesBesideOtherThreads) {
  CheckKeptSegmentsGoBackBesideAQuietThread(AfterTheFrees::kOneLargeBlock);
}

TEST(Rss, SegmentsKeptByTheOnlyAllocatingThreadGoBackAfterItsLastFreeBesideOtherThreads) {
  CheckKeptSegmentsGoBackBesideAQuietThread(AfterTheFrees::kNothing);
}

// (c) Producers allocate, one thread frees the oldest blocks, live data
// held near kLive and turned over kTurnovers times.
TEST(Rss, ManyProducersOneFreerStayNearLiveData) {
  constexpr int kProducers = 4;
  constexpr size_t kLive = 64 * kMiB;
  constexpr size_t kChunkBlocks = 128;  // ~260 KiB a chunk
  constexpr int kTurnovers = 40;
  constexpr size_t kTotal = kTurnovers * kLive;

  std::mutex mu;
  std::condition_variable room, work;
  std::deque<std::vector<Block>> chunks;  // oldest first
  std::atomic<size_t> live{0}, allocated{0};
  bool producers_done = false;
  std::atomic<size_t> corrupt{0};
  std::atomic<bool> failed{false};

  const size_t baseline = ResidentBytes();
  std::vector<std::thread> producers;
  for (int t = 0; t < kProducers; ++t) {
    producers.emplace_back([&, t] {
      uint64_t i = static_cast<uint64_t>(t) << 40;
      for (;;) {
        {
          std::unique_lock<std::mutex> lock(mu);
          room.wait(lock, [&] { return live.load() < kLive || allocated.load() >= kTotal; });
          if (allocated.load() >= kTotal) return;
        }
        std::vector<Block> chunk;
        chunk.reserve(kChunkBlocks);
        size_t bytes = 0;
        for (size_t k = 0; k < kChunkBlocks; ++k) {
          const size_t n = SmallSize(i++);
          void* p = ferry_malloc(n);
          if (p == nullptr) {
            failed = true;
            continue;
          }
          Touch(p, n);
          chunk.push_back({p, n});
          bytes += n;
        }
        std::lock_guard<std::mutex> lock(mu);
        chunks.push_back(std::move(chunk));
        live += bytes;
        allocated += bytes;
        work.notify_one();
      }
    });
  }
  std::thread freer([&] {
    for (;;) {
      std::vector<Block> chunk;
      {
        std::unique_lock<std::mutex> lock(mu);
        // Keep at least 90% of kLive live while producers run.
        work.wait(lock, [&] { return live.load() > kLive * 9 / 10 || producers_done; });
        if (chunks.empty()) return;
        chunk = std::move(chunks.front());
        chunks.pop_front();
      }
      size_t bytes = 0;
      for (const Block& b : chunk) {
        corrupt += !TagsIntact(b.p, b.n);
        ferry_free(b.p);
        bytes += b.n;
      }
      std::lock_guard<std::mutex> lock(mu);
      live -= bytes;
      room.notify_all();
    }
  });

  // Sample during the steady phase: after the first full turnover.
  size_t worst_rss = 0, live_at_worst = 0, max_live = 0, samples = 0;
  std::vector<size_t> readings;  // resident bytes above the baseline
  std::ostringstream trace;
  while (allocated.load() < kTotal) {
    std::this_thread::sleep_for(5ms);
    if (allocated.load() < 2 * kLive) continue;
    const size_t rss = ResidentBytes();
    const size_t now_live = live.load();
    max_live = std::max(max_live, now_live);
    ++samples;
    if (samples % 20 == 0) {
      const ferry_stats_t s = ferry_test::Stats();
      trace << " " << static_cast<int64_t>(MiB(Above(rss, baseline))) << "/"
            << static_cast<int64_t>(MiB(now_live)) << "/" << s.pages_made - s.pages_released;
    }
    readings.push_back(static_cast<size_t>(std::max<int64_t>(0, Above(rss, baseline))));
    if (Above(rss, baseline) > static_cast<int64_t>(worst_rss)) {
      worst_rss = static_cast<size_t>(std::max<int64_t>(0, Above(rss, baseline)));
      live_at_worst = now_live;
    }
  }
  for (std::thread& t : producers) t.join();
  {
    std::lock_guard<std::mutex> lock(mu);
    producers_done = true;
    work.notify_all();
  }
  freer.join();
  ferry_flush();

  EXPECT_FALSE(failed.load());
  EXPECT_EQ(corrupt.load(), 0u);
  ASSERT_GE(samples, 20u) << "the steady phase was too short to sample";
  // The steady level is the readings' median (what //perf:compare reports
  // as onefree's RSS/live); the worst reading has a bound of its own, as
  // much looser as kWorstReadingAllowance. Until 2026-12-05 the worst
  // reading had the steady bound: on this 2-CPU machine some runs map two
  // or three segments more than others (25-26 against 22-23) and their
  // worst reading reached 93-99 MiB where others stay at 84-88, with the
  // code of the day before as with that of the day (3 of 8 runs in one
  // spell, 0 of 10 in the next), which made the test fail now and then in
  // CI for the machine's sake.
  std::sort(readings.begin(), readings.end());
  const size_t steady_rss = readings[readings.size() / 2];
  printf("steady phase: %zu samples, resident above baseline %.1f MiB (median), at most %.1f MiB (live then "
         "%.1f MiB, at most %.1f MiB); every 20th sample (rss MiB/live MiB/pages):%s\n",
         samples, MiB(steady_rss), MiB(worst_rss), MiB(live_at_worst), MiB(max_live), trace.str().c_str());
  const double limit = kSteadyFactor * static_cast<double>(max_live) + static_cast<double>(kSteadyAllowance);
  const double worst_limit = limit + static_cast<double>(kWorstReadingAllowance);
  if (static_cast<double>(steady_rss) > limit || static_cast<double>(worst_rss) > worst_limit) {
    ferry_stats_print(stdout);
  }
  EXPECT_LE(static_cast<double>(steady_rss), limit)
      << kProducers << " producers, one thread freeing, ~" << MiB(kLive) << " MiB live turned over "
      << kTurnovers << " times: resident memory above the baseline was " << MiB(steady_rss)
      << " MiB (median of the readings; at most " << MiB(max_live) << " MiB live); the limit is " << kSteadyFactor
      << " x live + " << MiB(kSteadyAllowance) << " MiB = " << limit / static_cast<double>(kMiB)
      << " MiB. Every 20th sample (rss MiB/live MiB/pages in use):" << trace.str();
  EXPECT_LE(static_cast<double>(worst_rss), worst_limit)
      << "resident memory above the baseline reached " << MiB(worst_rss) << " MiB (live then "
      << MiB(live_at_worst) << " MiB); the limit for the worst reading is "
      << worst_limit / static_cast<double>(kMiB) << " MiB";
}

}  // namespace

// flush_wake_test.cc — ferry_flush does not wait out a reclaimer's idle
// tick. An offer joins the flush epoch before it pushes its batch; a flush
// that begins in between wakes the reclaimers (which find nothing yet and
// sleep again) and waits for that batch, so the offer must wake one itself
// once it has pushed (pool.cc, PoolOffer). The test holds an offer in that
// window (PoolSetOfferHookForTest) while a flush starts, with an idle tick
// of 20 s: a flush that relied on the tick took 20 s.
//
// On the oneTBB backend (flush_wake_test_tbb, the same file with
// FERRY_FLUSH_WAKE_TBB defined), ferry_flush does not sleep out its timeout
// when the batch it waits for is queued between its look at the queue and
// its sleep while oneTBB has no worker free to apply it. The flush applies
// queued batches itself; a push that came after its look must wake it, and
// the wake must not be lost because the flush was not yet asleep (pool.cc,
// WaitForEpochSlot and flush_signal). That test keeps oneTBB's only worker
// busy and lets the held offer push just before the flush sleeps
// (PoolSetFlushWaitForTest), with the flush's timeout at 20 s: a flush
// whose wake was lost took 20 s.
//
// Runs with FERRY_RECLAIMERS=1, FERRY_BATCH=16 and the crowded-CPUs watch
// off (a crowded watch would apply the batch inline, with no offer to hold);
// the oneTBB one with FERRY_RECLAIMER_BACKEND=tbb.
#include <gtest/gtest.h>
#include <unistd.h>
#ifdef FERRY_FLUSH_WAKE_TBB
#include <oneapi/tbb/global_control.h>
#include <oneapi/tbb/task_arena.h>
#endif

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "ferry.h"
#include "tests/pool_test_util.h"
#include "reclaimer/pool.h"

namespace ferry {
namespace {

constexpr size_t kBatch = 16;  // FERRY_BATCH in BUILD
constexpr size_t kSize = 48;
constexpr int kIdleTickMs = 20'000;

std::atomic<int> g_hold{0};  // 1: the next offer waits in the window; 2: one does
std::atomic<int> g_release{0};

void HoldOneOffer() {
  int expected = 1;
  if (!g_hold.compare_exchange_strong(expected, 2)) return;
  while (g_release.load() == 0) usleep(1000);
}

// One batch's worth of blocks, owned by the calling thread.
std::vector<void*> AllocatedHere() {
  std::vector<void*> blocks(kBatch);
  for (void*& p : blocks) {
    p = ferry_malloc(kSize);
    EXPECT_NE(p, nullptr);
  }
  return blocks;
}

// A thread that frees `blocks` (one batch of another thread's blocks): the
// last free offers the batch, and the offer waits in the window between its
// epoch and its push until g_release. Then `done`, if given, is set.
std::thread FreeOnAThreadWithTheOfferHeld(const std::vector<void*>& blocks, std::atomic<int>* done) {
  PoolSetOfferHookForTest(HoldOneOffer);
  g_hold = 1;
  return std::thread([&blocks, done] {
    for (void* p : blocks) ferry_free(p);
    if (done != nullptr) *done = 1;
  });
}

uint64_t BlocksReturned() {
  ferry_stats_t stats;
  ferry_stats_get(&stats);
  return stats.blocks_returned;
}

// Polls `condition` every millisecond for up to 10 s.
template <typename Condition>
bool WaitFor(Condition condition) {
  return ferry_test::WaitFor(condition, std::chrono::seconds(10), std::chrono::milliseconds(1));
}

#ifndef FERRY_FLUSH_WAKE_TBB

TEST(FlushWake, AFlushThatStartsWhileAnOfferIsBetweenItsEpochAndItsPushEndsWhenThatBatchIsApplied) {
  g_hold = 0;
  g_release = 0;
  // The pool runs (its first batch starts it) and everything so far is home.
  std::vector<void*> first = AllocatedHere();
  std::thread([&] {
    for (void* p : first) ferry_free(p);
  }).join();
  ferry_flush();
  ASSERT_EQ(PoolThreadCount(), 1);

  PoolSetIdleTickForTest(kIdleTickMs);
  std::vector<void*> blocks = AllocatedHere();
  const uint64_t returned_before = BlocksReturned();
  std::thread freer = FreeOnAThreadWithTheOfferHeld(blocks, nullptr);
  if (!WaitFor([] { return g_hold.load() == 2; })) {
    g_release = 1;
    freer.join();
    FAIL() << "no offer reached the hook (was the batch applied inline?)";
  }

  std::atomic<int64_t> flush_ms{-1};
  std::thread flusher([&] {
    const auto begin = std::chrono::steady_clock::now();
    ferry_flush();
    flush_ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - begin)
                   .count();
  });
  // The flush has changed the epoch and woken the reclaimer, which found no
  // batch and went back to sleep; only then does the held offer push.
  EXPECT_TRUE(WaitFor(PoolFlushWaitsWhileReclaimersSleepForTest));
  usleep(50'000);  // into its futex wait, past its last look at the queue
  EXPECT_EQ(flush_ms.load(), -1) << "the flush returned while a batch of its epoch was unapplied";
  g_release = 1;
  freer.join();
  flusher.join();
  PoolSetOfferHookForTest(nullptr);
  PoolSetIdleTickForTest(0);

  EXPECT_LT(flush_ms.load(), kIdleTickMs / 4) << "the flush waited for the reclaimer's idle tick";
  EXPECT_EQ(BlocksReturned() - returned_before, kBatch);
}

#else  // FERRY_FLUSH_WAKE_TBB

constexpr int kFlushTimeoutMs = 20'000;
std::atomic<int> g_offered{0};  // the held offer has pushed, woken, and returned
std::atomic<int> g_flush_sleeps{0};
// The task that keeps oneTBB's worker busy: 1 running, 2 told to stop, 3
// done. Not on the test's stack: an arena's end does not wait for its task.
std::atomic<int> g_blocker_state{0};

// The flush has found the queue empty and is about to sleep: the held offer
// pushes its batch and signals now, before the sleep begins.
void LetTheOfferPushBeforeTheFlushSleeps() {
  if (g_flush_sleeps.fetch_add(1) != 0) return;
  g_release = 1;
  while (g_offered.load() == 0) usleep(1000);
}

TEST(FlushWakeTbb, ABatchQueuedJustBeforeTheFlushSleepsEndsTheSleepWhenNoWorkerIsFree) {
  g_hold = 0;
  g_release = 0;
  g_offered = 0;
  g_flush_sleeps = 0;
  g_blocker_state = 0;
  // One oneTBB worker in the whole process (before ferry's arena exists).
  tbb::global_control one_worker(tbb::global_control::max_allowed_parallelism, 2);
  // The pool runs (its first batch starts it) and everything so far is home.
  std::vector<void*> first = AllocatedHere();
  std::thread([&] {
    for (void* p : first) ferry_free(p);
  }).join();
  ferry_flush();
  ASSERT_EQ(ferry_test::Stats().pool_starts, 1u) << "the oneTBB pool did not start";

  // That worker, kept busy: nothing but the flush applies ferry's batches.
  tbb::task_arena blocker(1);
  blocker.enqueue([] {
    int expected = 0;
    if (!g_blocker_state.compare_exchange_strong(expected, 1)) return;  // told to stop already
    while (g_blocker_state.load() != 2) usleep(1000);
    g_blocker_state = 3;
  });
  if (!WaitFor([] { return g_blocker_state.load() == 1; })) {
    g_blocker_state = 2;
    FAIL() << "oneTBB's worker never ran the blocker";
  }

  PoolSetFlushWaitForTest(kFlushTimeoutMs, LetTheOfferPushBeforeTheFlushSleeps);
  std::vector<void*> blocks = AllocatedHere();
  const uint64_t returned_before = BlocksReturned();
  std::thread freer = FreeOnAThreadWithTheOfferHeld(blocks, &g_offered);
  const bool held = WaitFor([] { return g_hold.load() == 2; });
  int64_t flush_ms = -1;
  if (held) {
    const auto begin = std::chrono::steady_clock::now();
    ferry_flush();
    flush_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - begin).count();
  }
  g_release = 1;
  freer.join();
  PoolSetOfferHookForTest(nullptr);
  PoolSetFlushWaitForTest(0, nullptr);
  g_blocker_state = 2;
  EXPECT_TRUE(WaitFor([] { return g_blocker_state.load() == 3; }));

  ASSERT_TRUE(held) << "no offer reached the hook (was the batch applied inline?)";
  EXPECT_GE(g_flush_sleeps.load(), 1) << "the flush never went to sleep: the window was not reached";
  EXPECT_LT(flush_ms, kFlushTimeoutMs / 4) << "the flush slept out its timeout: the push's wake was lost";
  EXPECT_EQ(BlocksReturned() - returned_before, kBatch);
}

#endif  // FERRY_FLUSH_WAKE_TBB

}  // namespace
}  // namespace ferry

// pool.cc — the reclaimer pool (see pool.h).
//
// Hand-off. Each reclaimer has a bounded lock-free queue (Boost.Lockfree,
// fixed capacity, living in OS memory, so pushing never allocates). A freeing
// thread pushes its full batch to the queue its heap hashes to; an idle
// reclaimer pops its own queue first, then steals from the others. A full
// queue, a pool that is off or not yet started, a fork in progress, or
// crowded CPUs (below) make PoolOffer refuse, and the freeing thread applies
// the batch itself.
//
// Flush barrier. Every offered batch joins the current flush epoch: it bumps
// in_flight[epoch & 1] and re-reads the epoch, retrying if a flush moved it
// meanwhile (so a batch is counted in exactly the epoch it saw). A flush
// (one at a time, under flush_mutex) advances the epoch and waits for the old
// epoch's counter to drain. Batches from earlier epochs were drained by
// earlier flushes; batches that complete out of order or are stolen only
// decrement their own epoch's counter. So every batch offered before the
// flush began has been applied when it returns.
//
// Sleeping. A reclaimer with nothing to do publishes sleeping = 1, re-checks
// the queues, and waits on that word (with a timeout that paces the
// housekeeping duty). An offer pushes, then wakes the target if it sleeps,
// else one sleeping reclaimer that may steal. Store-then-load on both sides
// (seq_cst) means at least one of them sees the other.
//
// Crowded CPUs. A reclaimer woken while the program's threads keep every
// CPU busy runs only by preempting one of them: on two CPUs,
// producer/consumer with one reclaimer made 5-10k involuntary context
// switches a second (30-300 with FERRY_RECLAIMERS=0) and took 1.2-1.35x
// the user+sys time. So every kLoadSampleNs the first offer reads the
// process's involuntary context switches, whatever their cause (the pool,
// other processes, more runnable threads than CPUs): all say that a woken
// reclaimer would wait for a CPU or take one. A sample of 5-100 ms taken
// while batches go to the pool that finds more than
// kCrowdedPreemptionsPerReclaimer a second per reclaimer (at most one per
// usable CPU, Pool::cpus) turns offers away (the freeing threads apply their
// batches, as with FERRY_RECLAIMERS=0) for a hold; then the pool gets one
// sample's trial, and a crowded trial doubles the hold, up to kMaxHoldNs.
// The bar scales with the reclaimers, not the CPUs, because they are what
// preempts: each wake-up takes at most one CPU. Scaled by CPUs (500 a second
// each until 2026-12-04) it stood at 8000 a second on 16 CPUs, where 4
// reclaimers made 3100-3900 a second among 16 busy pinned threads and half
// the batches still went to the pool, which then lost to none.
// FERRY_INLINE_WHEN_BUSY=0 turns this off.
//
// Fork. Prepare takes the flush mutex, raises `paused`, waits until no offer
// is mid-push and every reclaimer has parked between batches. The parent
// lowers `paused`; the child, which has no reclaimer threads, applies what
// the queues hold inline, and the next offer starts a new pool.
#include "reclaimer/pool.h"

#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <time.h>

#include <atomic>
#include <boost/lockfree/queue.hpp>
#include <climits>
#include <cstdlib>
#include <new>

#include "common/base.h"
#include "common/diag.h"
#include "common/os.h"
#include "reclaimer/sorter.h"
#include "reclaimer/tbb_backend.h"

#if defined(BOOST_NO_EXCEPTIONS)
namespace boost {
// Boost.Lockfree throws only on runtime-sized allocation, which ferry never
// uses; without exceptions Boost asks the program to define this.
// BOOST_NORETURN, as Boost declares it (clang rejects [[noreturn]] here).
BOOST_NORETURN void throw_exception(const std::exception&) { abort(); }
}  // namespace boost
#endif

#if defined(__SANITIZE_THREAD__)
// Boost.Lockfree's node freelist reads a node's link without an atomic and
// validates it afterwards with a tagged CAS; ThreadSanitizer reports that
// read (boostorg/lockfree#78, open). The suppression covers frames inside
// Boost.Lockfree only: races in ferry's own code around the queue still show.
extern "C" const char* __tsan_default_suppressions() {
  return "race:boost::lockfree::detail::fixed_size_freelist\n"
         "race:boost::lockfree::detail::tagged_index\n"
         "race:boost::lockfree::queue\n";
}
#endif

namespace ferry {
void QuiescePool();

namespace {

constexpr int kMaxReclaimers = 64;
constexpr int kIdleTickMs = 50;         // housekeeping pace while idle
// After housekeeping runs that found nothing to do the pace halves, down to
// one run in kIdleTickMs << kQuietTickShifts (400 ms): an idle process's
// reclaimer woke 20 times a second for good (redis-server after a
// FLUSHALL: 200 wake-ups in 10 s, 20 ms of CPU; 25 now). What the
// program's own frees leave meanwhile waits 400 ms at most for a run;
// an offer wakes a pool that slowed down (PoolOffer).
constexpr uint32_t kQuietTickShifts = 3;
constexpr int kFlushTimeoutMs = 100;    // a waiting flush looks again at least this often
constexpr int kStopDutyTries = 100;     // an idle stop's last housekeeping run waits ~100 ms for its turn at most
constexpr int kStopPassedByTries = 20;  // and runs again ~20 ms at most while a heap's list is held
constexpr size_t kStackBytes = 256 << 10;
// How long the oneTBB backend's start waits for all of its arena's workers
// to run at once (TbbBackendLaunchWorkers): oneTBB may be giving some of
// them to the program's own arenas.
constexpr int kTbbLaunchTimeoutMs = 200;
// How long the thread that starts the oneTBB backend waits for it (Start).
constexpr uint64_t kTbbStartWaitMs = 1000;
constexpr uint32_t kWakeQueued = 8;     // PoolOffer
constexpr uint64_t kLoadSampleNs = 10'000'000;
// A longer window (offers were rare) says little about the pool's own cost:
// it only starts a new one.
constexpr uint64_t kMaxLoadWindowNs = 100'000'000;
constexpr uint64_t kMinHoldNs = 20'000'000;
constexpr uint64_t kMaxHoldNs = 640'000'000;

using BatchQueue = boost::lockfree::queue<Batch*, boost::lockfree::capacity<128>>;

struct alignas(64) Reclaimer {
  BatchQueue queue;
  alignas(64) std::atomic<uint32_t> sleeping{0};  // futex word
  std::atomic<uint32_t> queued{0};    // batches in `queue` (pushes minus pops)
  std::atomic<uint64_t> batches{0};
  std::atomic<uint64_t> steals{0};
  pthread_t thread{};
  int index = 0;
};

// kHeldForFork: not started, and held so between fork's prepare and parent
// handlers (PoolForkPrepare). kStarting: a start in progress on the thread
// that won it, which a fork waits for (brief, and needs nothing the program
// holds). kStartingOnTbb: oneTBB's arena being made on ferry's starter
// thread (Start), which may wait on the program's locks (its pthread_create
// wrapper's): a fork takes that start over as it does one not begun.
// kStopping: an idle pool's threads on their way out (StopIdlePool), which
// holds the flush mutex throughout, so that neither a flush nor a fork
// sees the pool half gone; kNotStarted follows.
enum PoolState : uint32_t { kOff, kNotStarted, kStarting, kRunning, kHeldForFork, kStartingOnTbb, kStopping };

struct Pool {
  PoolConfig config{};
  bool (*duty)(uint64_t now_ms, bool urgent) = nullptr;
  bool (*duty_passed_by)() = nullptr;  // PoolConfigure
  void (*leaving)() = nullptr;         // PoolConfigure
  // Housekeeping runs in a row that found nothing to do (IdleSleepMs), and
  // when the first of them ran (StopIdlePool).
  std::atomic<uint32_t> quiet_duties{0};
  std::atomic<uint64_t> quiet_since_ms{0};
  // ferry's threads in their loop (futex word): set by Start, each counts
  // itself out as it leaves (StopIdlePool waits for that).
  std::atomic<uint32_t> looping{0};
  // PoolStatsGet calls reading the threads' CPU clocks: a stop lets no
  // thread exit under one (pthread_getcpuclockid on a gone thread).
  std::atomic<uint32_t> stats_readers{0};
  // Set by a stop once no offer or statistics read can reach the threads any
  // more: the reclaimers other than the first leave on it (StopIdlePool).
  std::atomic<bool> leave_now{false};
  // The largest reclaimer_cpu_ns reported: a read during a stop sees
  // neither the leaving threads' clocks nor yet their retired time.
  std::atomic<uint64_t> cpu_ns_reported{0};
  std::atomic<uint32_t> state{kOff};
  // Reclaimers running (or being started); set before state becomes kRunning.
  std::atomic<int> count{0};
  Reclaimer* reclaimers[kMaxReclaimers] = {};
  // Flush epochs.
  std::atomic<uint32_t> epoch{0};
  std::atomic<uint32_t> in_flight[2] = {};
  std::atomic<uint32_t> flush_waiters{0};
  // Futex word a waiting flush sleeps on (WaitForEpochSlot): bumped when an
  // epoch slot empties (its last batch applied, or a join retried or
  // refused) and, on oneTBB, when a batch is queued for a flush to apply.
  // Its own word, not in_flight: a oneTBB push leaves in_flight as it was,
  // so a wake that came between the flush's look at the queue and its wait
  // found nobody asleep, and the wait then slept out its timeout (100 ms)
  // when oneTBB had no worker free to apply the batch.
  std::atomic<uint32_t> flush_signal{0};
  pthread_mutex_t flush_mutex = PTHREAD_MUTEX_INITIALIZER;
  // Fork.
  std::atomic<uint32_t> paused{0};  // futex word
  std::atomic<uint32_t> parked{0};  // futex word
  std::atomic<uint32_t> offers_in_progress{0};
  // Housekeeping.
  std::atomic<uint64_t> last_duty_ms{0};
  std::atomic<uint32_t> duty_running{0};  // futex word
  std::atomic<uint32_t> duty_waiters{0};  // threads in WaitForDutyTurn
  std::atomic<uint32_t> collect_requested{0};
  std::atomic<uint32_t> collect_done{0};  // futex word
  // A reclaimer is taking care of the collects asked for: the others go on
  // with batches rather than queue up behind it for the duty.
  std::atomic<uint32_t> collect_claimed{0};
  // FERRY_RECLAIMER_BACKEND=tbb: batches run as tasks in a oneTBB arena and
  // the threads above are not used; housekeeping is a task too, sent along
  // with an offer once a tick has passed (an idle process has no offers, so
  // with this backend idle memory waits for the next activity or ferry_collect).
  bool use_tbb = false;
  // The oneTBB backend's start: a starter thread is at work on oneTBB (made
  // the arena, launching its workers); the arena is ready (made, workers
  // launched) with tbb_workers workers; a start was ever begun here.
  std::atomic<bool> tbb_starter_live{false};
  std::atomic<bool> tbb_ready{false};
  int tbb_workers = 0;
  bool tbb_begun = false;
  // The starter, joinable: oneTBB counts a thread that made or fed an arena
  // until it has exited, and its finalize fails while one lives.
  pthread_t tbb_starter{};
  std::atomic<bool> tbb_starter_unjoined{false};
  std::atomic<bool> configured{false};  // PoolConfigure has run (ferry was set up)
  // A fork child of a process that had set ferry up (its oneTBB may have
  // run there too: FinishOrFallBack).
  bool in_fork_child = false;
  // This process's start on oneTBB fell back to ferry's threads, its arena
  // left made (FinishOrFallBack): given up before the program's finalize.
  std::atomic<bool> tbb_fell_back{false};
  std::atomic<uint64_t> tbb_batches{0};
  // CPU time of ferry's tasks on oneTBB's workers (reclaimer_cpu_ns): those
  // threads are oneTBB's, so their whole clocks would count the program's
  // own tasks too.
  std::atomic<uint64_t> tbb_cpu_ns{0};
  // The batches offered to the arena wait here, each with a task that
  // applies one from here (ApplyQueuedTask), so that a thread waiting for
  // them (PoolFlush, QuiescePool) can apply them itself: oneTBB may have no
  // thread for the arena while every one of its threads sits in a flush
  // from inside the program's own tasks (a program limit of two threads, a
  // parallel_for whose bodies call ferry_flush: it waited for good).
  // Storage only: made in Start, in OS memory like the reclaimers.
  BatchQueue* tbb_queue = nullptr;
  // The CPUs the process may use: the affinity mask of the thread that
  // initialised ferry (before the program pinned any thread, as a rule), for
  // the default pool size, the crowded-CPUs watch and the reclaimers' own
  // affinity (else they would share the CPU of whichever freeing thread
  // started them, pinned or not).
  OsCpuMask cpus{};
  bool have_cpus = false;
  // Crowded CPUs (see the top of this file); config.inline_when_busy turns
  // the watch on.
  int usable_cpus = 1;
  std::atomic<uint64_t> load_sample_due_ns{0};
  std::atomic<uint32_t> load_sampling{0};
  std::atomic<uint32_t> crowded{0};       // offers turned away
  uint64_t load_sample_ns = 0;            // these four: under load_sampling
  uint64_t load_sample_preemptions = 0;
  uint64_t crowded_hold_ns = 0;
  uint64_t crowded_until_ns = 0;
  // The watch's sources (tests put their own).
  uint64_t (*coarse_now_ns)() = OsCoarseMonotonicNs;
  uint64_t (*now_ns)() = OsMonotonicNs;
  bool (*preemptions)(uint64_t*) = OsPreemptions;
  // Tests (PoolSetIdleTickForTest, PoolSetOfferHookForTest,
  // PoolSetFlushWaitForTest).
  std::atomic<int> idle_tick_ms{kIdleTickMs};
  std::atomic<void (*)()> offer_hook{nullptr};
  std::atomic<void (*)(int)> stop_hook{nullptr};
  std::atomic<void (*)()> request_back_hook{nullptr};
  std::atomic<int> flush_timeout_ms{kFlushTimeoutMs};
  std::atomic<void (*)()> flush_wait_hook{nullptr};
  // Statistics.
  std::atomic<uint64_t> starts{0};
  std::atomic<uint64_t> retired_batches{0};  // of threads gone (fork)
  std::atomic<uint64_t> retired_steals{0};
  std::atomic<uint64_t> retired_cpu_ns{0};  // of threads gone (an idle stop)
  std::atomic<uint64_t> stops{0};
};

constinit Pool g_pool;
__thread bool tl_is_reclaimer __attribute__((tls_model("initial-exec"))) = false;

// The thread running fork(), from PoolForkPrepare to PoolForkParent or
// PoolForkChild: it holds the flush mutex and the duty turn, the reclaimers
// parked. Fork handlers registered before ferry's (a library's initialised
// before ferry's constructor) run in between on it and may call ferry_flush or ferry_collect (malloc_trim),
// which wait for those: PoolFlush and PoolCollectNow do the work themselves
// then.
__thread bool tl_holds_pool_for_fork __attribute__((tls_model("initial-exec"))) = false;

// Wakes the waiting flushes (WaitForEpochSlot) to look again.
void SignalFlushWaiters() {
  g_pool.flush_signal.fetch_add(1, std::memory_order_seq_cst);
  OsFutexWake(&g_pool.flush_signal, INT_MAX);
}

void LeaveEpoch(uint32_t slot) {
  if (g_pool.in_flight[slot].fetch_sub(1, std::memory_order_seq_cst) == 1 &&
      g_pool.flush_waiters.load(std::memory_order_seq_cst) != 0) {
    SignalFlushWaiters();
  }
}

// Returns the epoch joined; its slot is epoch & 1.
uint32_t JoinEpoch() {
  for (;;) {
    const uint32_t epoch = g_pool.epoch.load(std::memory_order_seq_cst);
    const uint32_t slot = epoch & 1;
    g_pool.in_flight[slot].fetch_add(1, std::memory_order_seq_cst);
    if (g_pool.epoch.load(std::memory_order_seq_cst) == epoch) return epoch;
    LeaveEpoch(slot);
  }
}

// Returns the batch's blocks to their pages, counts it in `pooled` and
// gives the batch back. The count comes after the blocks
// (blocks_returned), with release: ferry_stats_get reads it first, so a
// snapshot that counts the batch has its blocks. And before the epoch is
// left, so that a fork, which waits for the epoch (QuiescePool), never
// leaves a child with the blocks counted and the batch not.
void Apply(Batch* batch, std::atomic<uint64_t>* pooled) {
  ReturnBatch(batch->ptrs, batch->count);
  pooled->fetch_add(1, std::memory_order_release);
  const uint32_t slot = batch->epoch_slot;
  batch->in_flight.store(0, std::memory_order_release);  // the heap may reuse it now
  LeaveEpoch(slot);
}

bool RunDuty(uint64_t now, bool urgent);

// Applies one of the batches waiting for the oneTBB arena; false if there
// was none. Each offer sends a task for one, so a task that finds none left
// (a waiting thread took it) has nothing to do.
bool ApplyQueuedTbbBatch() {
  Batch* batch;
  if (!g_pool.tbb_queue->pop(batch)) return false;
  Apply(batch, &g_pool.tbb_batches);
  return true;
}

// A oneTBB task of ferry's: `work`, with its CPU time counted.
template <typename Work>
void RunCountedTask(Work work) {
  const uint64_t begin = OsThreadCpuNs();
  work();
  const uint64_t end = OsThreadCpuNs();
  if (end > begin) g_pool.tbb_cpu_ns.fetch_add(end - begin, std::memory_order_relaxed);
}

void ApplyQueuedTask(void*) {
  RunCountedTask([] { ApplyQueuedTbbBatch(); });
}

// Returns once every batch that joined the epoch slot has been applied
// (PoolFlush, and fork's QuiescePool on oneTBB). On oneTBB, what no task has
// taken yet is applied here (a task that took one is running: its end wakes
// this wait); one at a time, so that the wait ends with its epoch, however
// fast other threads offer more.
//
// No wake is lost: the signal is read before the count and the queue, and
// whoever drains the slot or queues a batch after those reads (having
// seen flush_waiters, which this raised first) bumps the signal, so the
// wait returns at once. The timeout is a backstop.
void WaitForEpochSlot(uint32_t slot, int timeout_ms) {
  g_pool.flush_waiters.fetch_add(1, std::memory_order_seq_cst);
  for (;;) {
    const uint32_t signal = g_pool.flush_signal.load(std::memory_order_seq_cst);
    if (g_pool.in_flight[slot].load(std::memory_order_seq_cst) == 0) break;
    if (g_pool.use_tbb) {
      // Boost's pop reads the queue with acquire loads, which the seq_cst
      // order does not cover: the fence puts the look after flush_waiters'
      // increment, so an offer whose push this pop misses sees the waiter
      // and signals (a store-buffering pair otherwise; x86 never reorders
      // it, the C++ model would allow it). GCC's ThreadSanitizer rejects
      // fences; the oneTBB backend never runs under it (libtbb is not
      // built with it).
#if !defined(__SANITIZE_THREAD__)
      std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
      if (ApplyQueuedTbbBatch()) continue;
    }
    if (auto hook = g_pool.flush_wait_hook.load(std::memory_order_relaxed); FERRY_UNLIKELY(hook != nullptr)) hook();
    OsFutexWait(&g_pool.flush_signal, signal, timeout_ms);
  }
  g_pool.flush_waiters.fetch_sub(1, std::memory_order_seq_cst);
}

void DutyTask(void*) {
  RunCountedTask([] { RunDuty(OsMonotonicMs(), false); });
}

void Wake(Reclaimer* r) {
  if (r->sleeping.load(std::memory_order_seq_cst) != 0) {
    r->sleeping.store(0, std::memory_order_relaxed);
    OsFutexWake(&r->sleeping, 1);
  }
}

void WakeAll() {
  for (int i = 0; i < g_pool.count.load(std::memory_order_acquire); ++i) {
    g_pool.reclaimers[i]->sleeping.store(0, std::memory_order_seq_cst);
    OsFutexWake(&g_pool.reclaimers[i]->sleeping, 1);
  }
}

// Called after the reclaimer's seq_cst store of sleeping = 1, and answered
// by the waker's store of a request and then of sleeping = 0: both sides
// seq_cst (a store, then a load of the other's word), so that at least one
// sees the other. With relaxed loads here the language allows both to miss
// (not x86, where a seq_cst load is a plain one), and a request waited for
// the idle tick.
bool AnyWork() {
  for (int i = 0; i < g_pool.count.load(std::memory_order_acquire); ++i) {
    if (!g_pool.reclaimers[i]->queue.empty()) return true;  // Boost: seq_cst loads
  }
  return (g_pool.collect_requested.load(std::memory_order_seq_cst) !=
              g_pool.collect_done.load(std::memory_order_seq_cst) &&
          g_pool.collect_claimed.load(std::memory_order_seq_cst) == 0) ||
         g_pool.paused.load(std::memory_order_seq_cst) != 0 ||
         g_pool.leave_now.load(std::memory_order_seq_cst);
}

// Pops a batch from r's queue, keeping r->queued (which PoolOffer reads to
// decide on a wake-up) in step with it.
bool PopBatch(Reclaimer* r, Batch** out) {
  if (!r->queue.pop(*out)) return false;
  r->queued.fetch_sub(1, std::memory_order_relaxed);
  return true;
}

bool Steal(Reclaimer* self, Batch** out) {
  const int count = g_pool.count.load(std::memory_order_acquire);
  for (int k = 1; k < count; ++k) {
    Reclaimer* victim = g_pool.reclaimers[(self->index + k) % count];
    if (PopBatch(victim, out)) return true;
  }
  return false;
}

// One duty at a time (duty_running): the duty takes lists off the heaps.
bool TryTakeDutyTurn() { return g_pool.duty_running.exchange(1, std::memory_order_seq_cst) == 0; }
// True with the turn held; false, without it, once `no_longer_needed()`.
template <typename Predicate>
bool WaitForDutyTurnUnless(Predicate no_longer_needed) {
  if (TryTakeDutyTurn()) return true;
  g_pool.duty_waiters.fetch_add(1, std::memory_order_seq_cst);
  bool mine = false;
  while (!no_longer_needed() && !(mine = TryTakeDutyTurn())) {
    OsFutexWait(&g_pool.duty_running, 1, 10);
  }
  g_pool.duty_waiters.fetch_sub(1, std::memory_order_relaxed);
  return mine;
}
void WaitForDutyTurn() {
  WaitForDutyTurnUnless([] { return false; });
}
// A futex wake only when someone waits: heaps take the turn briefly before
// new pages (PoolTryRunInDutyTurn), and a system call each time would cost
// more than their work. Store, then load (both seq_cst): a waiter counted
// after the load then finds the turn free on its own exchange.
void EndDutyTurn() {
  g_pool.duty_running.store(0, std::memory_order_seq_cst);
  if (g_pool.duty_waiters.load(std::memory_order_seq_cst) != 0) {
    OsFutexWake(&g_pool.duty_running, INT_MAX);  // a collect may wait its turn
  }
}
void RunDutyInTurn(uint64_t now, bool urgent) {
  const bool more = g_pool.duty(now, urgent);
  const uint32_t quiet = g_pool.quiet_duties.load(std::memory_order_relaxed);
  if (!more && quiet == 0) g_pool.quiet_since_ms.store(now, std::memory_order_relaxed);
  g_pool.quiet_duties.store(more ? 0 : quiet + (quiet < UINT32_MAX), std::memory_order_relaxed);
  g_pool.last_duty_ms.store(now, std::memory_order_relaxed);
}

// False when there is no duty or another thread holds the turn.
bool RunDuty(uint64_t now, bool urgent) {
  if (g_pool.duty == nullptr || !TryTakeDutyTurn()) return false;
  RunDutyInTurn(now, urgent);
  EndDutyTurn();
  return true;
}

// A duty that covers every collect asked for before it began: the
// requests are read in turn, and collect_done only grows.
void RunCollectDutyInTurn() {
  const uint32_t covered = g_pool.collect_requested.load(std::memory_order_acquire);
  RunDutyInTurn(OsMonotonicMs(), true);
  if (static_cast<int32_t>(covered - g_pool.collect_done.load(std::memory_order_relaxed)) > 0) {
    g_pool.collect_done.store(covered, std::memory_order_release);
    OsFutexWake(&g_pool.collect_done, INT_MAX);
  }
}

// The duty ferry_collect waits for, without reclaimer threads. A duty
// already running does not count: it may have looked at the abandoned heaps
// and inboxes before the caller's frees came back. Any collect duty that
// starts after the request does: the
// turn is a plain exchange, not a queue, so a thread that calls
// ferry_collect in a loop would take it again before a woken waiter runs,
// and the waiter's collect (and its heap, its thread) would wait for as long
// as the loop went on.
void RunDutyForCollect() {
  const uint32_t ticket = g_pool.collect_requested.fetch_add(1, std::memory_order_seq_cst) + 1;
  auto covered = [ticket] {
    return static_cast<int32_t>(g_pool.collect_done.load(std::memory_order_acquire) - ticket) >= 0;
  };
  if (!WaitForDutyTurnUnless(covered)) return;
  RunCollectDutyInTurn();
  EndDutyTurn();
}

// Between batches: the periodic duty, and the collects ferry_collect asked for.
void Housekeeping() {
  if (g_pool.collect_requested.load(std::memory_order_acquire) !=
          g_pool.collect_done.load(std::memory_order_acquire) &&
      g_pool.collect_claimed.exchange(1, std::memory_order_acquire) == 0) {
    // A stop waits for this thread to leave; the collect then runs on its
    // caller (PoolCollectNow).
    if (!WaitForDutyTurnUnless([] { return g_pool.leave_now.load(std::memory_order_acquire); })) {
      g_pool.collect_claimed.store(0, std::memory_order_release);
      return;
    }
    // Every request made by now is covered by a duty that starts now.
    if (g_pool.collect_requested.load(std::memory_order_acquire) !=
        g_pool.collect_done.load(std::memory_order_relaxed)) {
      RunCollectDutyInTurn();
    }
    EndDutyTurn();
    // A collect asked for from here on finds no claim: AnyWork keeps this
    // reclaimer (or another) from sleeping on it.
    g_pool.collect_claimed.store(0, std::memory_order_release);
    return;
  }
  const uint64_t now = OsMonotonicMs();
  if (now - g_pool.last_duty_ms.load(std::memory_order_relaxed) >=
      static_cast<uint64_t>(g_pool.idle_tick_ms.load(std::memory_order_relaxed))) {
    RunDuty(now, false);
  }
}

// How long an idle reclaimer sleeps: the idle tick, doubled for each
// housekeeping run in a row that found nothing to do, kQuietTickShifts
// times at most. An offer, a flush or a collect wakes it sooner.
int IdleSleepMs() {
  const uint32_t quiet = g_pool.quiet_duties.load(std::memory_order_relaxed);
  return g_pool.idle_tick_ms.load(std::memory_order_relaxed) << (quiet < kQuietTickShifts ? quiet : kQuietTickShifts);
}

// A batch applied: the idle pace is the usual one again.
void NoteBusy() {
  if (g_pool.quiet_duties.load(std::memory_order_relaxed) != 0) {
    g_pool.quiet_duties.store(0, std::memory_order_relaxed);
  }
}

void Park() {
  g_pool.parked.fetch_add(1, std::memory_order_seq_cst);
  OsFutexWake(&g_pool.parked, INT_MAX);
  while (g_pool.paused.load(std::memory_order_acquire) != 0) OsFutexWait(&g_pool.paused, 1, -1);
  g_pool.parked.fetch_sub(1, std::memory_order_seq_cst);
}

// A thread's CPU time, kept for the statistics as it leaves the pool.
void RetireThisThreadsCpuTime() { g_pool.retired_cpu_ns.fetch_add(OsThreadCpuNs(), std::memory_order_relaxed); }

// Every batch still queued to a reclaimer, applied on the calling thread
// (an idle stop's, after the others left; a fork's holder or child).
void ApplyEveryQueuedBatch() {
  for (int i = 0; i < g_pool.count.load(std::memory_order_acquire); ++i) {
    Reclaimer* r = g_pool.reclaimers[i];
    Batch* batch;
    while (PopBatch(r, &batch)) Apply(batch, &r->batches);
  }
}

// A reclaimer on its way out of an idle pool, no fork possible meanwhile
// (the stop holds the flush mutex): from now on it is an ordinary thread,
// and so is its heap, now or made later. It frees on its way out (the C
// library's exit, its heap's abandonment), and the reclaimer that stopped
// the pool may start the next one (pthread_create allocates): a heap made
// then, still marked a reclaimer's, was abandoned at the thread's exit,
// taken over by an application thread, and collected by a fork child as a
// parked reclaimer's while that thread held its lock in the parent (the
// child spun for good: a stress hunt's forkloop with
// FERRY_RECLAIMER_IDLE_MS=1, 3 runs of 12).
void LeaveAsAnOrdinaryThread() {
  if (g_pool.leaving != nullptr) g_pool.leaving();
  tl_is_reclaimer = false;
}

// A reclaimer other than the first, told to go by StopIdlePool: it leaves
// between batches, touching its record no more.
void LeaveStoppingPool() {
  LeaveAsAnOrdinaryThread();
  RetireThisThreadsCpuTime();
  g_pool.looping.fetch_sub(1, std::memory_order_seq_cst);
  OsFutexWake(&g_pool.looping, INT_MAX);
}

// Whether the pool has been idle for FERRY_RECLAIMER_IDLE_MS: no batch
// applied (NoteBusy) and no housekeeping run that found work since.
bool IdleLongEnoughToStop() {
  const int idle_ms = g_pool.config.idle_exit_ms;
  if (idle_ms <= 0 || g_pool.quiet_duties.load(std::memory_order_relaxed) == 0) return false;
  return OsMonotonicMs() - g_pool.quiet_since_ms.load(std::memory_order_relaxed) >= static_cast<uint64_t>(idle_ms);
}

// Run by the first reclaimer once the pool has idled for
// FERRY_RECLAIMER_IDLE_MS: the threads exit and the pool is not started
// again until a batch is handed on or a thread keeps 8 emptied segments
// (PoolOffer, PoolAskToHousekeep). Kept for good, they made a program that
// had ended its own threads unable to do what only a single-threaded
// process may (unshare(CLONE_NEWUSER) failed with EINVAL), and showed in
// every `ps -L` of an idle server. The flush mutex is held throughout: a
// flush waits for the stop and finds every batch applied (PoolFlush), and
// a fork (whose prepare takes the mutex first) never sees a pool half gone.
// False, and nothing done, where a flush or a fork holds the mutex, the
// duty turn is taken, or the last run before the stop found work after all.
bool StopIdlePool() {
  // What waits for a later run goes back first, as ferry_collect would give
  // it back: with no pool, nothing else would. Before the flush mutex, so
  // that the mutex is never held waiting for the duty turn (a thread holding
  // the turn may call ferry_flush).
  if (!TryTakeDutyTurn()) return false;
  RunDutyInTurn(OsMonotonicMs(), /*urgent=*/true);
  EndDutyTurn();
  if (g_pool.quiet_duties.load(std::memory_order_relaxed) == 0) return false;
  if (pthread_mutex_trylock(&g_pool.flush_mutex) != 0) return false;
  auto* const hook = g_pool.stop_hook.load(std::memory_order_relaxed);
  if (FERRY_UNLIKELY(hook != nullptr)) hook(kStopHookStillRunning);
  uint32_t running = kRunning;
  if (!g_pool.state.compare_exchange_strong(running, kStopping, std::memory_order_seq_cst)) {
    pthread_mutex_unlock(&g_pool.flush_mutex);
    return false;
  }
  // From now on a page its owner frees asks for the pool again (heap.cc,
  // ReleasePageFromFree): what it leaves committed has nobody else to purge.
  // Set as the state turns, not once the threads are gone: an owner that
  // emptied segments in between kept them itself without asking, and held
  // them for good if it then idled.
  g_pool_stopped_idle.store(1, std::memory_order_seq_cst);
  if (FERRY_UNLIKELY(hook != nullptr)) hook(kStopHookStopping);
  // Offers that saw the pool running finish their push; a statistics read
  // that did finishes with the threads' clocks (both count themselves in,
  // then read the state: seq_cst on both sides).
  while (g_pool.offers_in_progress.load(std::memory_order_seq_cst) != 0 ||
         g_pool.stats_readers.load(std::memory_order_seq_cst) != 0) {
    sched_yield();
  }
  g_pool.leave_now.store(true, std::memory_order_seq_cst);
  WakeAll();
  for (uint32_t left; (left = g_pool.looping.load(std::memory_order_seq_cst)) > 1;) {
    OsFutexWait(&g_pool.looping, left, 10);
  }
  // What the others left queued: a flush waiting for it wakes as its epoch
  // empties (Apply).
  ApplyEveryQueuedBatch();
  // Once more, now that no housekeeping will follow: what the batches just
  // applied emptied, and the segments owners emptied after the first run
  // while the pool still ran, which they left on their lists for it. The
  // turn may be a heap's for a moment (PoolTryRunInDutyTurn) or a collect's:
  // waited for a while, never for good, since this thread holds the flush
  // mutex (no holder of the turn is known to flush, but none is to be
  // waited on blindly under it). A run that passed by a heap whose owner
  // held its segment list at that moment is run again, 1 ms apart, up to
  // kStopPassedByTries times: before 2026-12-06 such a heap kept its
  // emptied segments for as long as it then idled. Bounded, and not asked
  // for again after: a fork child holds for good the list of a parent's
  // thread caught holding it, and should stop all the same (what stays is
  // headers and address space; the purge above gave their slices back).
  for (int tries = 0, passed_by = 0; g_pool.duty != nullptr && tries < kStopDutyTries; ++tries) {
    if (!RunDuty(OsMonotonicMs(), /*urgent=*/true)) {
      OsFutexWait(&g_pool.duty_running, 1, 1);
    } else if (g_pool.duty_passed_by != nullptr && g_pool.duty_passed_by() && ++passed_by < kStopPassedByTries) {
      OsSleepMicroseconds(1000);
    } else {
      break;
    }
  }
  const int count = g_pool.count.load(std::memory_order_acquire);
  for (int i = 0; i < count; ++i) {
    Reclaimer* r = g_pool.reclaimers[i];
    // An offer between its push and its count may leave this one off, as
    // across a fork (PoolForkChild).
    r->queued.store(0, std::memory_order_relaxed);
    r->sleeping.store(0, std::memory_order_relaxed);
  }
  RetireThisThreadsCpuTime();
  g_pool.quiet_duties.store(0, std::memory_order_relaxed);
  g_pool.looping.store(0, std::memory_order_relaxed);
  g_pool.leave_now.store(false, std::memory_order_relaxed);
  g_pool.count.store(0, std::memory_order_release);
  g_pool.stops.fetch_add(1, std::memory_order_relaxed);
  // Before the mutex is let go, so that no fork sees this thread's heap as a
  // parked reclaimer's while the thread frees on its way out.
  LeaveAsAnOrdinaryThread();
  if (FERRY_UNLIKELY(hook != nullptr)) hook(kStopHookLeft);
  if (Verbose(1)) DiagLine().Str("ferry: reclaimer pool idle, its threads exit").WriteToStderr();
  g_pool.state.store(kNotStarted, std::memory_order_seq_cst);
  pthread_mutex_unlock(&g_pool.flush_mutex);
  // A start asked for while the threads left (an offer, a heap keeping
  // segments, the drain's own returns) is kept (PoolStartRequested), but
  // a program that then idles would make no call that starts it. seq_cst
  // after the state's seq_cst store, as the asking side's store and load
  // are (PoolStartRequested): of the two, one sees the other (x86's locked
  // store did so with PoolMaybeStart's relaxed read; aarch64's would not).
  if (g_pool_start_requested.load(std::memory_order_seq_cst) != 0) PoolStartRequested();
  return true;
}

void* ReclaimerMain(void* arg) {
  Reclaimer* self = static_cast<Reclaimer*>(arg);
  tl_is_reclaimer = true;
  DiagLine name;
  name.Str("ferry-reclaim").Dec(static_cast<uint64_t>(self->index));
  char buf[16] = {};
  for (size_t i = 0; i < name.size() && i < sizeof(buf) - 1; ++i) buf[i] = name.data()[i];
  prctl(PR_SET_NAME, buf, 0, 0, 0);
  // The process's CPUs, not those of the thread that started the pool
  // (which may be pinned to one: the reclaimer would only ever share it).
  if (g_pool.have_cpus) {
    sched_setaffinity(0, sizeof(cpu_set_t), reinterpret_cast<const cpu_set_t*>(g_pool.cpus.bytes));
  }
  for (;;) {
    if (g_pool.paused.load(std::memory_order_acquire) != 0) {
      Park();
      continue;
    }
    if (FERRY_UNLIKELY(g_pool.leave_now.load(std::memory_order_acquire)) && self->index != 0) {
      LeaveStoppingPool();
      return nullptr;
    }
    Batch* batch = nullptr;
    if (PopBatch(self, &batch)) {
      Apply(batch, &self->batches);
      NoteBusy();
      Housekeeping();
      continue;
    }
    if (Steal(self, &batch)) {
      Apply(batch, &self->batches);
      NoteBusy();
      self->steals.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    Housekeeping();
    if (self->index == 0 && IdleLongEnoughToStop() && StopIdlePool()) return nullptr;
    self->sleeping.store(1, std::memory_order_seq_cst);
    if (!AnyWork()) OsFutexWait(&self->sleeping, 1, IdleSleepMs());
    self->sleeping.store(0, std::memory_order_relaxed);
  }
  return nullptr;
}

// The C library's own pthread_create, not a wrapper the program may have put
// in front of it: a wrapper that allocates while holding its own lock would
// otherwise re-enter itself when ferry starts its pool from that allocation.
using PthreadCreate = int (*)(pthread_t*, const pthread_attr_t*, void* (*)(void*), void*);
PthreadCreate LookUpPthreadCreate() {
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
  // The sanitizer's interceptor must see every thread start (it sets up the
  // thread's shadow state); the C library's own one fails under it.
  return &pthread_create;
#endif
  void* f = dlvsym(RTLD_NEXT, "pthread_create", "GLIBC_2.34");
  if (f == nullptr) f = dlsym(RTLD_NEXT, "pthread_create");
  if (f == nullptr) return &pthread_create;
  return reinterpret_cast<PthreadCreate>(f);
}

// Looked up when the library is loaded, not when the pool starts: dlvsym
// takes the loader's lock, which dlopen holds while it runs a library's
// constructors. A constructor that starts a thread and waits for it (a
// plugin starting its workers) would wait forever if that thread's frees
// started the pool (tests/preload_test.sh). The look-up at the start stays
// for a pool started before the constructors ran.
std::atomic<PthreadCreate> g_real_pthread_create{nullptr};

__attribute__((constructor)) void LookUpPthreadCreateAtLoad() {
  g_real_pthread_create.store(LookUpPthreadCreate(), std::memory_order_release);
}

PthreadCreate RealPthreadCreate() {
  PthreadCreate f = g_real_pthread_create.load(std::memory_order_acquire);
  if (f == nullptr) {
    f = LookUpPthreadCreate();
    g_real_pthread_create.store(f, std::memory_order_release);
  }
  return f;
}

// One sample of the crowded-CPUs watch (see the top of this file).
FERRY_NOINLINE void SampleLoad(uint64_t now) {
  if (g_pool.load_sampling.exchange(1, std::memory_order_acquire) != 0) return;
  if (now >= g_pool.load_sample_due_ns.load(std::memory_order_relaxed)) {
    const uint64_t wall = g_pool.now_ns();
    uint64_t preemptions = 0;
    const bool counted = g_pool.preemptions(&preemptions);
    const uint64_t window = wall - g_pool.load_sample_ns;
    const bool judged = counted && g_pool.load_sample_ns != 0 && wall > g_pool.load_sample_ns &&
                        window >= kLoadSampleNs / 2 && window <= kMaxLoadWindowNs &&
                        preemptions >= g_pool.load_sample_preemptions;
    if (g_pool.crowded.load(std::memory_order_relaxed) != 0) {
      if (wall >= g_pool.crowded_until_ns) g_pool.crowded.store(0, std::memory_order_relaxed);  // a trial
    } else if (judged) {
      if (CpusCrowded(preemptions - g_pool.load_sample_preemptions, window, PoolWatchedReclaimers())) {
        const uint64_t hold = g_pool.crowded_hold_ns;
        g_pool.crowded_hold_ns = hold == 0 ? kMinHoldNs : hold * 2 > kMaxHoldNs ? kMaxHoldNs : hold * 2;
        g_pool.crowded_until_ns = wall + g_pool.crowded_hold_ns;
        g_pool.crowded.store(1, std::memory_order_relaxed);
      } else {
        g_pool.crowded_hold_ns = 0;  // a calm sample with the pool at work
      }
    }
    g_pool.load_sample_ns = counted ? wall : 0;  // a failed count: start again
    g_pool.load_sample_preemptions = preemptions;
    // From the precise clock: the coarse one, which `now` comes from, may lag
    // it by a tick, and the window would be that much shorter.
    g_pool.load_sample_due_ns.store(wall + kLoadSampleNs, std::memory_order_relaxed);
  }
  g_pool.load_sampling.store(0, std::memory_order_release);
}

const OsCpuMask* ProcessCpus() { return g_pool.have_cpus ? &g_pool.cpus : nullptr; }

int DefaultReclaimers() {
  const int half = g_pool.usable_cpus / 2;
  return half < 1 ? 1 : half > 4 ? 4 : half;
}

// The reclaimers a start asks for: FERRY_RECLAIMERS, or the default for
// the usable CPUs.
int WantedReclaimers() {
  const int wanted = g_pool.config.reclaimers < 0 ? DefaultReclaimers() : g_pool.config.reclaimers;
  return wanted > kMaxReclaimers ? kMaxReclaimers : wanted;
}

// Calls make(create, &attr) with every signal blocked, so that none of the
// program's handlers ever runs on a thread it makes, and with a pool
// thread's attributes; `create` is the C library's own pthread_create.
// pthread_create may allocate (ferry is usable: no lock held).
template <typename Make>
void WithPoolThreadAttributes(Make make, bool detached = true) {
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, detached ? PTHREAD_CREATE_DETACHED : PTHREAD_CREATE_JOINABLE);
  pthread_attr_setstacksize(&attr, kStackBytes);
  make(RealPthreadCreate(), &attr);
  pthread_attr_destroy(&attr);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

// Waits until the oneTBB starter is done with oneTBB, and for its exit too
// (oneTBB lets a thread that used it go at its exit): a starter seen gone
// but not yet exited made the finalize fail (a review's program, 21 of 30
// runs).
void WaitForTbbStarterToExit() {
  while (g_pool.tbb_starter_live.load(std::memory_order_acquire)) sched_yield();
  if (g_pool.tbb_starter_unjoined.exchange(false, std::memory_order_acq_rel)) {
    pthread_join(g_pool.tbb_starter, nullptr);
  }
}

// Terminates the pool's arena (no offer submits to it now) before oneTBB's
// finalize; `what` names it in the verbose line.
void GiveUpTbbArena(const char* what) {
  TbbBackendStop();
  g_pool.tbb_ready.store(false, std::memory_order_relaxed);
  if (Verbose(1)) DiagLine().Str("ferry: ").Str(what).Str(" given up before oneTBB's finalize").WriteToStderr();
}

// LeaveTbbBeforeFinalize's work, one finalize at a time. Before the
// program finalizes oneTBB (tbb_backend.cc, finalize), which fails while
// ferry's arena lives: every batch sent to the arena applied,
// no housekeeping half done, the arena given up; from then on batches are
// returned inline, as with FERRY_RECLAIMERS=0, and no start makes an arena
// again (one begun during oneTBB's finalize made it fail: found by a
// review). A start under way is called off, and the arena goes once its
// thread is done with oneTBB: waited for without the flush mutex, since
// that thread may wait for a lock the program's fork prepare handler
// holds while its fork waits for the mutex (a review's program hung so).
void LeaveTbbLocked() {
  for (;;) {
    uint32_t state = g_pool.state.load(std::memory_order_acquire);
    if (state == kStarting) {  // the starter's last step, or a start on its way to StartOnTbb
      sched_yield();
      continue;
    }
    if (state != kNotStarted && state != kStartingOnTbb && state != kHeldForFork) break;
    if (g_pool.state.compare_exchange_strong(state, kOff, std::memory_order_acq_rel)) break;
  }
  WaitForTbbStarterToExit();
  pthread_mutex_lock(&g_pool.flush_mutex);  // no flush or fork meanwhile
  if (g_pool.state.load(std::memory_order_acquire) == kRunning && g_pool.use_tbb) {
    QuiescePool();  // no offer in progress, none taken until the end
    WaitForDutyTurn();
    g_pool.count.store(0, std::memory_order_release);
    g_pool.use_tbb = false;
    g_pool.state.store(kOff, std::memory_order_release);
    EndDutyTurn();
    g_pool.paused.store(0, std::memory_order_seq_cst);
  }
  pthread_mutex_unlock(&g_pool.flush_mutex);
  if (g_pool.tbb_begun) GiveUpTbbArena("the oneTBB arena");  // offers see kOff now
  g_pool.config.backend = 0;  // a fork child's pool: ferry's threads, as after any fork
}

// The arena of a start that fell back to ferry's threads, given up before
// the program's finalize. The pool itself goes on as it is: its threads
// are ferry's, and oneTBB's finalize is no business of theirs. Until
// 2026-12-05 the arena and the starter lived on, and the finalize failed
// (in a fork child of a program that had used ferry).
void LeaveFallenBackArena() {
  WaitForTbbStarterToExit();
  GiveUpTbbArena("the unused oneTBB arena");  // use_tbb was never set: no offer submits
  g_pool.tbb_fell_back.store(false, std::memory_order_relaxed);
}

void LeaveTbbBeforeFinalize() {
  // One finalize at a time: two at once each terminated the arena (a crash
  // inside oneTBB, or a finalize that waited for good; a review's program).
  static pthread_mutex_t leaving = PTHREAD_MUTEX_INITIALIZER;
  pthread_mutex_lock(&leaving);
  // The fallback sets its flag before it clears the backend: one of the two
  // is seen.
  if (__atomic_load_n(&g_pool.config.backend, __ATOMIC_ACQUIRE) == 1) {
    LeaveTbbLocked();
  } else if (g_pool.tbb_fell_back.load(std::memory_order_acquire)) {
    LeaveFallenBackArena();
  }
  pthread_mutex_unlock(&leaving);
}

// The pool on the ready arena; the caller holds the start (kStarting).
void FinishStartOnTbb() {
  g_pool.use_tbb = true;
  g_pool.count.store(g_pool.tbb_workers, std::memory_order_release);
  g_pool.starts.fetch_add(1, std::memory_order_relaxed);
  if (Verbose(1)) {
    DiagLine().Str("ferry: reclaimer pool started on a oneTBB arena of ")
        .Dec(static_cast<uint64_t>(g_pool.tbb_workers)).WriteToStderr();
  }
  g_pool.state.store(kRunning, std::memory_order_release);
}

// The oneTBB arena, its workers launched before the pool takes batches.
// Returns how many of the arena's tasks began before the launch gave up.
int MakeTbbArena(int wanted) {
  // The arena's workers, which a limit of the program's may make fewer
  // than asked for: what the statistics report (until 2026-12-05 the
  // number asked for, 64 where oneTBB allowed one).
  g_pool.tbb_workers = TbbBackendStart(wanted);
  const int begun = TbbBackendLaunchWorkers(kTbbLaunchTimeoutMs);
  g_pool.tbb_ready.store(true, std::memory_order_release);
  return begun;
}

// The start's last step, unless a fork or a finalize took the start over
// meanwhile (then a later start finds the arena ready). In a fork child
// whose arena ran none of its tasks, oneTBB's workers stayed in the parent
// (the parent ran oneTBB itself): the next request starts ferry's threads
// (a review's child reported a reclaimer and applied nothing).
void FinishOrFallBack(int begun) {
  uint32_t expected = kStartingOnTbb;
  if (!g_pool.state.compare_exchange_strong(expected, kStarting, std::memory_order_acq_rel)) return;
  if (begun > 0 || !g_pool.in_fork_child) return FinishStartOnTbb();
  g_pool.tbb_ready.store(false, std::memory_order_relaxed);
  g_pool.tbb_fell_back.store(true, std::memory_order_release);
  __atomic_store_n(&g_pool.config.backend, 0, __ATOMIC_RELEASE);
  g_pool.state.store(kNotStarted, std::memory_order_release);
  g_pool_start_requested.store(1, std::memory_order_relaxed);
}

void* TbbStarterMain(void* wanted) {
  prctl(PR_SET_NAME, "ferry-tbb-start", 0, 0, 0);
  FinishOrFallBack(MakeTbbArena(static_cast<int>(reinterpret_cast<intptr_t>(wanted))));
  g_pool.tbb_starter_live.store(false, std::memory_order_release);
  return nullptr;
}

// The oneTBB backend's part of Start (the caller holds kStarting).
void StartOnTbb(int wanted) {
  if (TbbBackendProgramFinalized()) {
    // Finalized before ferry was set up (a program on ferry's API alone,
    // whose first ferry call came after it): no arena after it either.
    g_pool.config.backend = 0;
    g_pool.state.store(kOff, std::memory_order_release);
    return;
  }
  // The starter marks the arena ready before it leaves: read the other way
  // round, an earlier starter seen gone and the arena not ready made a
  // second one.
  if (g_pool.tbb_starter_live.load(std::memory_order_acquire)) {
    // An earlier start that a fork took over is still at work: the next
    // offer asks again.
    g_pool.state.store(kNotStarted, std::memory_order_release);
    return;
  }
  if (g_pool.tbb_ready.load(std::memory_order_acquire)) return FinishStartOnTbb();
  g_pool.tbb_begun = true;
  // On a thread of ferry's own, made as the reclaimers are: oneTBB launches
  // its workers with the pthread_create the program sees, so from a free
  // inside the program's own pthread_create wrapper, under the wrapper's
  // lock, the first enqueue waited for that lock for good (found by a
  // review, 2026-12-05; the threads backend never calls the wrapper). Until
  // that thread is done the pool is kStartingOnTbb, and batches are
  // returned inline. This thread waits for it a while, so that a start
  // takes the batches after it as before, but not for good: it may hold
  // what the start needs (the wrapper's lock, the loader's).
  g_pool.tbb_starter_live.store(true, std::memory_order_relaxed);
  g_pool.state.store(kStartingOnTbb, std::memory_order_release);
  // Joinable, and joined only by a finalize (LeaveTbbBeforeFinalize);
  // otherwise its few pages stay until the process exits. An earlier
  // starter not joined (its start taken over by a fork) is left so.
  int made = -1;
  g_pool.tbb_starter_unjoined.store(true, std::memory_order_release);
  WithPoolThreadAttributes(
      [&](PthreadCreate create, const pthread_attr_t* attr) {
        made = create(&g_pool.tbb_starter, attr, TbbStarterMain,
                      reinterpret_cast<void*>(static_cast<intptr_t>(wanted)));
      },
      /*detached=*/false);
  if (made != 0) {  // no thread to be had: here, as before
    g_pool.tbb_starter_unjoined.store(false, std::memory_order_release);  // and the thread id unknown
    if (g_pool.state.load(std::memory_order_acquire) == kStartingOnTbb) {
      FinishOrFallBack(MakeTbbArena(wanted));
    }
    g_pool.tbb_starter_live.store(false, std::memory_order_release);
    return;
  }
  const uint64_t give_up_ms = OsMonotonicMs() + kTbbStartWaitMs;
  while (g_pool.state.load(std::memory_order_acquire) == kStartingOnTbb && OsMonotonicMs() < give_up_ms) {
    OsSleepMicroseconds(200);
  }
}

// Starts the threads; the caller won the kNotStarted -> kStarting race.
void Start() {
  g_pool.usable_cpus = OsUsableCpus(ProcessCpus());  // read by DefaultReclaimers too
  int wanted = WantedReclaimers();
  if (g_pool.config.backend == 1) {
    if (g_pool.tbb_queue == nullptr) {  // kept across fork
      void* memory = OsReserve(AlignUp(sizeof(BatchQueue), OsPageSize()), alignof(BatchQueue));
      if (memory != nullptr) g_pool.tbb_queue = new (memory) BatchQueue();
    }
    if (g_pool.tbb_queue != nullptr && TbbBackendAvailable()) return StartOnTbb(wanted);
    Warn("FERRY_RECLAIMER_BACKEND=tbb needs oneTBB linked into the program; using ferry's own threads");
    g_pool.config.backend = 0;
  }
  for (int i = 0; i < wanted; ++i) {
    if (g_pool.reclaimers[i] != nullptr) continue;  // kept across fork
    void* memory = OsReserve(AlignUp(sizeof(Reclaimer), OsPageSize()), alignof(Reclaimer));
    if (memory == nullptr) {
      wanted = i;
      break;
    }
    Reclaimer* r = new (memory) Reclaimer();
    r->index = i;
    // Published with release: PoolStatsGet reads the records it finds
    // without waiting for the pool to start (the pool's own threads reach
    // them through count).
    __atomic_store_n(&g_pool.reclaimers[i], r, __ATOMIC_RELEASE);
  }
  int started = 0;
  WithPoolThreadAttributes([&](PthreadCreate create, const pthread_attr_t* attr) {
    for (; started < wanted; ++started) {
      // count covers the thread before it runs, so that its steals see it.
      g_pool.count.store(started + 1, std::memory_order_release);
      Reclaimer* r = g_pool.reclaimers[started];
      if (create(&r->thread, attr, ReclaimerMain, r) != 0) break;
    }
  });
  g_pool.count.store(started, std::memory_order_release);
  g_pool.looping.store(static_cast<uint32_t>(started), std::memory_order_release);
  if (started > 0) g_pool_stopped_idle.store(0, std::memory_order_relaxed);
  g_pool.starts.fetch_add(1, std::memory_order_relaxed);
  if (Verbose(1)) {
    DiagLine().Str("ferry: reclaimer pool started with ").Dec(static_cast<uint64_t>(started))
        .Str(" threads").WriteToStderr();
  }
  // Only when asked: the program goes on correctly (batches are returned
  // inline), and a program that limits its threads on purpose (a sandbox's
  // RLIMIT_NPROC of 0, a pids cgroup) gets nothing on its stderr from glibc
  // (a bug hunt, 2026-12-05).
  if (started == 0 && wanted > 0 && Verbose(1)) {
    DiagLine().Str("ferry: could not start the reclaimer threads; remote frees are returned by the freeing threads")
        .WriteToStderr();
  }
  g_pool.state.store(started > 0 ? kRunning : kOff, std::memory_order_release);
}

}  // namespace

constinit std::atomic<uint32_t> g_pool_start_requested{0};
constinit std::atomic<uint32_t> g_pool_stopped_idle{0};

bool PoolAwaitsAskToHousekeep() {
  // The state first: the backend is written before kNotStarted is published.
  // A pool stopping (StopIdlePool) is asked for again, as a held one.
  const uint32_t state = g_pool.state.load(std::memory_order_acquire);
  return (state == kNotStarted || state == kStopping) && g_pool.config.backend == 0 &&
         g_pool_start_requested.load(std::memory_order_relaxed) == 0;
}

void PoolAskToHousekeep() {
  if (PoolAwaitsAskToHousekeep()) g_pool_start_requested.store(1, std::memory_order_relaxed);
}

void PoolStartRequested() {
  for (;;) {
    if (g_pool_start_requested.exchange(0, std::memory_order_seq_cst) == 0) return;
    uint32_t expected = kNotStarted;
    if (g_pool.state.compare_exchange_strong(expected, kStarting, std::memory_order_acq_rel)) {
      // Not unwound halfway by a pending cancel (the state would stay
      // kStarting, and fork wait for it for good), whatever oneTBB or the C
      // library calls on the way: free and malloc are no cancellation points.
      int cancel_state;
      pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel_state);
      Start();
      pthread_setcancelstate(cancel_state, nullptr);
      return;
    }
    if (expected != kHeldForFork && expected != kStopping) return;
    // Asked for before the fork began, or as an idle pool's threads leave:
    // still asked for after. The stop may have ended since the exchange,
    // its own last look at the request done before this store: then this
    // thread starts it (a review, 2026-12-06: the request was left for
    // whichever call came next, and a program that then idled kept what it
    // was asked for). seq_cst, as the state's store and the request's read
    // at the stop's end are: one of the two sees the other. (A fork's end
    // makes no such look: a request kept across it waits for the next slow
    // path, flush or collect, as before.)
    if (auto* const hook = g_pool.request_back_hook.load(std::memory_order_relaxed); FERRY_UNLIKELY(hook != nullptr)) {
      hook();
    }
    g_pool_start_requested.store(1, std::memory_order_seq_cst);
    if (g_pool.state.load(std::memory_order_seq_cst) != kNotStarted) return;
  }
}

void PoolConfigure(const PoolConfig& config, bool (*duty)(uint64_t, bool), bool (*passed_by)(),
                   void (*leaving)()) {
  g_pool.config = config;
  g_pool.duty = duty;
  g_pool.duty_passed_by = passed_by;
  g_pool.leaving = leaving;
  g_pool.have_cpus = OsThreadCpuMask(&g_pool.cpus);
  // From the first: a finalize before any start keeps the pool from making
  // an arena after it (registered at the start, the hook was missed then).
  if (config.backend == 1) TbbBackendSetBeforeFinalize(LeaveTbbBeforeFinalize);
  g_pool.configured.store(true, std::memory_order_seq_cst);
  // ferry's fork handlers are registered at load, so a fork may come while
  // this thread sets ferry up; its prepare then holds the pool, not yet
  // set up, and its end publishes the state (StateOnceReleasedFromFork):
  // published now, a pool could start during the fork and apply batches
  // across it. This thread never waits for the fork: it holds the setup's
  // once-guard, which a handler's first ferry call on the forking thread
  // waits for (a review: waiting on the fork's mutex here hung half the
  // runs of a program that dlopened ferry while forking).
  uint32_t expected = kOff;
  g_pool.state.compare_exchange_strong(expected, config.reclaimers == 0 ? kOff : kNotStarted,
                                       std::memory_order_seq_cst);
}

bool PoolOffer(Batch* batch, uint32_t home_hint, bool wake_now, bool may_spawn) {
  if (tl_is_reclaimer) return false;  // a reclaimer's own frees never wait on its pool
  const uint32_t state = g_pool.state.load(std::memory_order_acquire);
  if (FERRY_UNLIKELY(state != kRunning)) {
    if (state == kNotStarted || state == kStopping) g_pool_start_requested.store(1, std::memory_order_relaxed);
    return false;
  }
  // oneTBB launches a worker it has not started yet from inside enqueue, on
  // the calling thread: from a free inside the loader's TLS release (under
  // dl_stack_cache_lock, which pthread_create takes) that thread deadlocked
  // on itself.
  if (g_pool.use_tbb && !may_spawn) return false;
  // The oneTBB backend's housekeeping rides on offers (it has no timer), so
  // a crowded offer still sends it along: the batch is turned away, not the
  // duty. (Until 2026-12-02 a crowded process on that backend purged
  // nothing and collected no abandoned heap while the hold lasted.)
  const bool crowded = PoolCpusCrowded();
  if (crowded && !g_pool.use_tbb) return false;
  g_pool.offers_in_progress.fetch_add(1, std::memory_order_seq_cst);
  // The state again: an offer that read kRunning before a oneTBB finalize
  // gave the arena up (LeaveTbbBeforeFinalize: kOff, then the pause lifted)
  // and reads the pause lifted must not go on to the threads' path with
  // no thread (count 0).
  if (g_pool.paused.load(std::memory_order_seq_cst) != 0 ||
      g_pool.state.load(std::memory_order_seq_cst) != kRunning) {
    g_pool.offers_in_progress.fetch_sub(1, std::memory_order_release);
    return false;
  }
  if (g_pool.use_tbb) {
    bool accepted = false;
    if (!crowded) {
      const uint32_t slot = JoinEpoch() & 1;
      batch->epoch_slot = slot;
      batch->in_flight.store(1, std::memory_order_relaxed);
      if (auto hook = g_pool.offer_hook.load(std::memory_order_relaxed); FERRY_UNLIKELY(hook != nullptr)) hook();
      accepted = g_pool.tbb_queue->bounded_push(batch);
      if (accepted) {
        TbbBackendSubmit(ApplyQueuedTask, nullptr);
        // A flush of this epoch that found the queue empty before the push
        // would otherwise sleep out its timeout before it applied the batch
        // (when oneTBB has no worker free to run the task).
        if (g_pool.flush_waiters.load(std::memory_order_seq_cst) != 0) SignalFlushWaiters();
      } else {
        batch->in_flight.store(0, std::memory_order_relaxed);
        LeaveEpoch(slot);
      }
    }
    const uint64_t now = OsMonotonicMs();
    if (now - g_pool.last_duty_ms.load(std::memory_order_relaxed) >= kIdleTickMs &&
        g_pool.duty_running.load(std::memory_order_relaxed) == 0) {
      g_pool.last_duty_ms.store(now, std::memory_order_relaxed);
      TbbBackendSubmit(DutyTask, nullptr);
    }
    g_pool.offers_in_progress.fetch_sub(1, std::memory_order_release);
    return accepted;
  }
  const int count = g_pool.count.load(std::memory_order_acquire);
  const uint32_t home = home_hint % static_cast<uint32_t>(count);
  const uint32_t epoch = JoinEpoch();
  batch->epoch_slot = epoch & 1;
  batch->home = home;
  batch->in_flight.store(1, std::memory_order_relaxed);
  Reclaimer* target = g_pool.reclaimers[home];
  if (auto hook = g_pool.offer_hook.load(std::memory_order_relaxed); FERRY_UNLIKELY(hook != nullptr)) hook();
  const bool pushed = target->queue.bounded_push(batch);
  // Counted before the offer ends: a stop's drain (StopIdlePool) resets the
  // count once offers are done, and one counted after it stayed one high.
  const uint32_t queued = pushed ? target->queued.fetch_add(1, std::memory_order_relaxed) + 1 : 0;
  g_pool.offers_in_progress.fetch_sub(1, std::memory_order_release);
  if (!pushed) {
    batch->in_flight.store(0, std::memory_order_relaxed);
    LeaveEpoch(batch->epoch_slot);
    return false;
  }
  // Waking a sleeping reclaimer costs a futex call and a context switch, one
  // per batch when each offer woke it (producer/consumer on two cores: 30k
  // of each a second). So an offer wakes it only when the offering heap
  // asks (it has no spare batch left, or its batches hold kWakeBytes),
  // kWakeQueued batches wait, or a flush waits for this batch, or the pool
  // has slowed its idle pace; others wait at most the idle tick.
  // A flush that began after this batch joined its epoch waits for it, and
  // the flush's wake-up (WakeAll) may have come before the push, with every
  // reclaimer asleep again by now: this offer wakes one, or the flush would
  // wait out the idle tick (flush_wake_test). A flush whose epoch change
  // this load misses wakes the reclaimers after the push, so they find it:
  // the push's CAS (Boost's default, seq_cst) and this load are ordered
  // against the flush's seq_cst store of the epoch and its WakeAll.
  const bool flush_waits = g_pool.epoch.load(std::memory_order_seq_cst) != epoch;
  // A pool that slowed its pace (IdleSleepMs) is woken by the first offer,
  // or the batch would wait up to 400 ms; applying it restores the pace.
  if (!wake_now && !flush_waits && queued < kWakeQueued &&
      g_pool.quiet_duties.load(std::memory_order_relaxed) == 0) {
    return true;
  }
  if (target->sleeping.load(std::memory_order_seq_cst) != 0) {
    Wake(target);
  } else {
    for (int k = 1; k < count; ++k) {  // a sleeping one may steal it
      Reclaimer* other = g_pool.reclaimers[(home + k) % count];
      if (other->sleeping.load(std::memory_order_seq_cst) != 0) {  // after the push (AnyWork)
        Wake(other);
        break;
      }
    }
  }
  return true;
}

int PoolWatchedReclaimers() {
  int reclaimers = g_pool.count.load(std::memory_order_acquire);
  if (reclaimers <= 0) reclaimers = WantedReclaimers();
  if (reclaimers > g_pool.usable_cpus) reclaimers = g_pool.usable_cpus;
  return reclaimers < 1 ? 1 : reclaimers;
}

bool PoolCpusCrowded() {
  if (!g_pool.config.inline_when_busy) return false;
  const uint64_t now = g_pool.coarse_now_ns();
  if (now >= g_pool.load_sample_due_ns.load(std::memory_order_relaxed)) SampleLoad(now);
  return g_pool.crowded.load(std::memory_order_relaxed) != 0;
}

// A fresh start of the watch; the caller holds load_sampling (or is alone:
// a fork child), and this lets the next sampler in.
static void ResetLoadWatch() {
  g_pool.load_sample_ns = 0;
  g_pool.crowded_hold_ns = 0;
  g_pool.load_sample_due_ns.store(0, std::memory_order_relaxed);
  g_pool.crowded.store(0, std::memory_order_relaxed);
  g_pool.load_sampling.store(0, std::memory_order_release);
}

void PoolSetLoadSourcesForTest(uint64_t (*now_ns)(), bool (*preemptions)(uint64_t*)) {
  while (g_pool.load_sampling.exchange(1, std::memory_order_acquire) != 0) sched_yield();
  g_pool.coarse_now_ns = now_ns != nullptr ? now_ns : OsCoarseMonotonicNs;
  g_pool.now_ns = now_ns != nullptr ? now_ns : OsMonotonicNs;
  g_pool.preemptions = preemptions != nullptr ? preemptions : OsPreemptions;
  g_pool.usable_cpus = OsUsableCpus(ProcessCpus());
  ResetLoadWatch();
}

void PoolSetIdleTickForTest(int idle_tick_ms) {
  g_pool.idle_tick_ms.store(idle_tick_ms > 0 ? idle_tick_ms : kIdleTickMs, std::memory_order_relaxed);
}

void PoolSetOfferHookForTest(void (*hook)()) { g_pool.offer_hook.store(hook, std::memory_order_relaxed); }
void PoolSetStopHookForTest(void (*hook)(int)) { g_pool.stop_hook.store(hook, std::memory_order_relaxed); }
void PoolSetRequestBackHookForTest(void (*hook)()) {
  g_pool.request_back_hook.store(hook, std::memory_order_relaxed);
}
uint64_t PoolStopsForTest() { return g_pool.stops.load(std::memory_order_relaxed); }

void PoolSetFlushWaitForTest(int timeout_ms, void (*before_wait)()) {
  g_pool.flush_timeout_ms.store(timeout_ms > 0 ? timeout_ms : kFlushTimeoutMs, std::memory_order_relaxed);
  g_pool.flush_wait_hook.store(before_wait, std::memory_order_relaxed);
}

bool PoolFlushWaitsWhileReclaimersSleepForTest() {
  if (g_pool.flush_waiters.load(std::memory_order_seq_cst) == 0) return false;
  for (int i = 0; i < g_pool.count.load(std::memory_order_acquire); ++i) {
    if (g_pool.reclaimers[i]->sleeping.load(std::memory_order_seq_cst) == 0) return false;
  }
  return true;
}

bool PoolTryRunInDutyTurn(void (*fn)(void*), void* arg) {
  if (!TryTakeDutyTurn()) return false;
  fn(arg);
  EndDutyTurn();
  return true;
}

// What the reclaimers have queued, applied on the calling thread while a
// fork holds them parked (a flush in a program's fork handler) or in the
// child, which they did not come along to. Counted as pooled, as the
// reclaimer would have: they were handed to it (batches_published counted
// them). oneTBB's batches were all applied before the fork (QuiescePool);
// offers made since were refused, and applied by the offering threads.
void ApplyQueuedForFork() {
  if (g_pool.state.load(std::memory_order_acquire) != kRunning || g_pool.use_tbb) return;
  ApplyEveryQueuedBatch();
}

void PoolFlush() {
  if (tl_holds_pool_for_fork) return ApplyQueuedForFork();
  PoolMaybeStart();
  const uint32_t state = g_pool.state.load(std::memory_order_acquire);
  if (state != kRunning && state != kStopping) return;
  pthread_mutex_lock(&g_pool.flush_mutex);
  // A stop held the mutex until every batch offered was applied.
  if (g_pool.state.load(std::memory_order_acquire) != kRunning) {
    pthread_mutex_unlock(&g_pool.flush_mutex);
    return;
  }
  const uint32_t epoch = g_pool.epoch.load(std::memory_order_seq_cst);
  g_pool.epoch.store(epoch + 1, std::memory_order_seq_cst);
  const uint32_t slot = epoch & 1;
  if (!g_pool.use_tbb) WakeAll();  // batches may be waiting for a wake (PoolOffer)
  WaitForEpochSlot(slot, g_pool.flush_timeout_ms.load(std::memory_order_relaxed));
  pthread_mutex_unlock(&g_pool.flush_mutex);
}

void PoolCollectNow() {
  if (tl_holds_pool_for_fork) {  // the duty turn is this thread's already
    if (g_pool.duty != nullptr) RunCollectDutyInTurn();
    return;
  }
  PoolMaybeStart();
  // count 0: a oneTBB finalize gave the arena up between the two reads.
  if (g_pool.state.load(std::memory_order_acquire) != kRunning || g_pool.use_tbb ||
      g_pool.count.load(std::memory_order_acquire) == 0) {
    if (g_pool.duty != nullptr) RunDutyForCollect();
    return;
  }
  const uint32_t ticket = g_pool.collect_requested.fetch_add(1, std::memory_order_seq_cst) + 1;
  WakeAll();
  for (uint32_t done; static_cast<int32_t>((done = g_pool.collect_done.load(std::memory_order_acquire)) -
                                           ticket) < 0;) {
    // Its threads leaving (StopIdlePool) may not have seen the request.
    if (g_pool.state.load(std::memory_order_acquire) != kRunning) return RunDutyForCollect();
    OsFutexWait(&g_pool.collect_done, done, 100);
  }
}

bool IsReclaimerThread() { return tl_is_reclaimer; }

bool PoolHousekeepsOnATimer() {
  return g_pool.state.load(std::memory_order_acquire) == kRunning && !g_pool.use_tbb &&
         g_pool.count.load(std::memory_order_relaxed) > 0;
}

int PoolThreadCount() {
  if (g_pool.state.load(std::memory_order_acquire) != kRunning) return 0;
  return g_pool.count.load(std::memory_order_acquire);
}

void PoolStatsGet(PoolStats* out) {
  *out = PoolStats{};
  out->batches_pooled = g_pool.retired_batches.load(std::memory_order_relaxed) +
                        g_pool.tbb_batches.load(std::memory_order_acquire);
  out->steals = g_pool.retired_steals.load(std::memory_order_relaxed);
  out->cpu_ns = g_pool.tbb_cpu_ns.load(std::memory_order_relaxed) +
                g_pool.retired_cpu_ns.load(std::memory_order_relaxed);
  // use_tbb is read only once the pool is seen running (Start sets it
  // before its release of the state); it may be starting now. Counted in
  // before the state is read: a stop waits for this read of the clocks.
  g_pool.stats_readers.fetch_add(1, std::memory_order_seq_cst);
  const int threads = g_pool.state.load(std::memory_order_seq_cst) == kRunning ? PoolThreadCount() : 0;
  const int running = threads > 0 && !g_pool.use_tbb ? threads : 0;
  for (int i = 0; i < kMaxReclaimers; ++i) {
    Reclaimer* r = __atomic_load_n(&g_pool.reclaimers[i], __ATOMIC_ACQUIRE);
    if (r == nullptr) break;
    out->batches_pooled += r->batches.load(std::memory_order_acquire);
    out->steals += r->steals.load(std::memory_order_relaxed);
    if (i < running) {
      clockid_t clock;
      timespec ts;
      if (pthread_getcpuclockid(r->thread, &clock) == 0 && clock_gettime(clock, &ts) == 0) {
        out->cpu_ns += static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
      }
    }
  }
  g_pool.stats_readers.fetch_sub(1, std::memory_order_release);
  uint64_t reported = g_pool.cpu_ns_reported.load(std::memory_order_relaxed);
  while (reported < out->cpu_ns &&
         !g_pool.cpu_ns_reported.compare_exchange_weak(reported, out->cpu_ns, std::memory_order_relaxed)) {
  }
  if (reported > out->cpu_ns) out->cpu_ns = reported;
  out->threads = static_cast<uint64_t>(PoolThreadCount());
  out->starts = g_pool.starts.load(std::memory_order_relaxed);
  out->stops = g_pool.stops.load(std::memory_order_relaxed);
}

// Stops the running pool between batches: no batch half applied, no queue
// mid-push.
void QuiescePool() {
  g_pool.paused.store(1, std::memory_order_seq_cst);
  while (g_pool.offers_in_progress.load(std::memory_order_seq_cst) != 0) sched_yield();
  if (g_pool.use_tbb) {
    // No task half done: wait for every batch sent to the arena.
    for (uint32_t slot = 0; slot < 2; ++slot) WaitForEpochSlot(slot, 10);
    return;
  }
  WakeAll();
  for (uint32_t parked; (parked = g_pool.parked.load(std::memory_order_seq_cst)) <
                        static_cast<uint32_t>(g_pool.count.load(std::memory_order_acquire));) {
    OsFutexWait(&g_pool.parked, parked, 10);
  }
}

// What a pool held for a fork becomes when the fork is done: not started,
// or off where it has no threads to start or was not set up (a setup that
// came during the fork configured it: PoolConfigure stores `configured`
// before it reads the state, this reads it after taking the state back, so
// one of the two sees the other).
namespace {
uint32_t StateOnceReleasedFromFork() {
  return g_pool.configured.load(std::memory_order_seq_cst) && g_pool.config.reclaimers != 0 ? kNotStarted : kOff;
}
}  // namespace

void PoolForkPrepare() {
  pthread_mutex_lock(&g_pool.flush_mutex);
  // A pool being started by another thread finishes starting first. One not
  // started yet stays so until the fork is done: started meanwhile (by any
  // thread's allocation slow path, flush or collect, while this one waits
  // for the duty turn below), its reclaimers would apply batches across the
  // fork, and the child would lose a batch half applied.
  // So does one that is not set up yet (off, not configured): another
  // thread's first ferry call may configure it during the fork
  // (PoolConfigure leaves a held pool to the fork's end).
  uint32_t state;
  for (;;) {
    state = g_pool.state.load(std::memory_order_seq_cst);
    if (state == kStarting) {
      sched_yield();
      continue;
    }
    const bool holds = state == kNotStarted || state == kStartingOnTbb ||
                       (state == kOff && !g_pool.configured.load(std::memory_order_seq_cst));
    if (!holds || g_pool.state.compare_exchange_strong(state, kHeldForFork, std::memory_order_seq_cst)) break;
  }
  if (state == kRunning) QuiescePool();
  // No housekeeping half done either (a oneTBB task's, or a ferry_collect's
  // on an application thread, pool or no pool): it holds heaps' inboxes and
  // the abandoned heaps off their lists, which the child would lose. Taken
  // after the reclaimers parked: one waiting for its turn would not park.
  WaitForDutyTurn();
  tl_holds_pool_for_fork = true;
}

void PoolForkParent() {
  tl_holds_pool_for_fork = false;
  EndDutyTurn();
  // Offers meanwhile did not ask for a start (they ask only of a pool not
  // started): the next one does. A request made before the hold and met
  // during it stays (PoolStartRequested).
  uint32_t held = kHeldForFork;
  g_pool.state.compare_exchange_strong(held, StateOnceReleasedFromFork(), std::memory_order_seq_cst);
  if (g_pool.paused.load(std::memory_order_relaxed) != 0) {
    g_pool.paused.store(0, std::memory_order_seq_cst);
    OsFutexWake(&g_pool.paused, INT_MAX);
  }
  pthread_mutex_unlock(&g_pool.flush_mutex);
}

void PoolForkChild() {
  tl_holds_pool_for_fork = false;
  pthread_mutex_init(&g_pool.flush_mutex, nullptr);
  const bool was_running = g_pool.state.load(std::memory_order_relaxed) == kRunning;
  ApplyQueuedForFork();  // the threads did not come along
  if (was_running && !g_pool.use_tbb) {
    for (int i = 0; i < g_pool.count.load(std::memory_order_acquire); ++i) {
      Reclaimer* r = g_pool.reclaimers[i];
      g_pool.retired_batches.fetch_add(r->batches.exchange(0), std::memory_order_relaxed);
      g_pool.retired_steals.fetch_add(r->steals.exchange(0), std::memory_order_relaxed);
      r->sleeping.store(0, std::memory_order_relaxed);
      // An offer caught between its push and its count (PoolOffer) left it
      // one off; a pool started in the child uses these records again.
      r->queued.store(0, std::memory_order_relaxed);
    }
  }
  g_pool.in_flight[0].store(0, std::memory_order_relaxed);
  g_pool.in_flight[1].store(0, std::memory_order_relaxed);
  g_pool.flush_waiters.store(0, std::memory_order_relaxed);
  g_pool.paused.store(0, std::memory_order_relaxed);
  g_pool.parked.store(0, std::memory_order_relaxed);
  g_pool.offers_in_progress.store(0, std::memory_order_relaxed);
  g_pool.duty_running.store(0, std::memory_order_relaxed);
  g_pool.duty_waiters.store(0, std::memory_order_relaxed);
  g_pool.collect_claimed.store(0, std::memory_order_relaxed);
  ResetLoadWatch();  // the child's own counts and times; a sampler may have been mid-way
  g_pool.collect_done.store(g_pool.collect_requested.load(std::memory_order_relaxed),
                            std::memory_order_relaxed);
  g_pool.count.store(0, std::memory_order_relaxed);
  g_pool.looping.store(0, std::memory_order_relaxed);
  g_pool.stats_readers.store(0, std::memory_order_relaxed);
  g_pool.leave_now.store(false, std::memory_order_relaxed);
  g_pool_stopped_idle.store(0, std::memory_order_relaxed);
  g_pool_start_requested.store(0, std::memory_order_relaxed);
  // oneTBB's workers did not come along either, and its state cannot be
  // trusted in the child: a pool started here uses ferry's own threads.
  if (g_pool.use_tbb || g_pool.tbb_begun) {
    g_pool.use_tbb = false;
    g_pool.config.backend = 0;
  }
  // A parent that ran oneTBB itself (its pool never started) leaves a child
  // with no oneTBB worker either: a start here that sees none run falls
  // back to ferry's threads (TbbStarterMain). Only where the parent had set
  // ferry up, as when the handlers were registered at the first heap: the
  // child of a process that never used ferry (a test harness) starts on
  // oneTBB as any process does, however long its workers take to come.
  if (g_pool.configured.load(std::memory_order_relaxed)) g_pool.in_fork_child = true;
  g_pool.tbb_starter_live.store(false, std::memory_order_relaxed);  // not in this process
  g_pool.tbb_starter_unjoined.store(false, std::memory_order_relaxed);
  g_pool.tbb_fell_back.store(false, std::memory_order_relaxed);  // the parent's arena, not this child's
  g_pool.state.store(StateOnceReleasedFromFork(), std::memory_order_release);
}

}  // namespace ferry

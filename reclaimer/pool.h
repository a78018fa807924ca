// pool.h — the reclaimer pool: background threads that take full batches of
// remote frees from the freeing threads, sort them and return the blocks to
// their owning pages (reclaimer/sorter.h), steal from each other when idle,
// and between batches run the allocator's housekeeping duty (taking care of
// abandoned heaps, giving idle memory back to the OS).
//
// Life: no thread exists until the first batch is offered (never in a
// constructor or the first malloc); FERRY_RECLAIMERS=0 keeps it that way for
// good. Fork quiesces the pool (no batch half applied), the parent resumes,
// and the child starts without threads, applies what was queued inline, and
// starts a pool again on demand.
#ifndef FERRY_RECLAIMER_POOL_H_
#define FERRY_RECLAIMER_POOL_H_

#include <atomic>
#include <cstdint>

#include "reclaimer/batch.h"

namespace ferry {

struct PoolConfig {
  int reclaimers;          // 0: the pool never runs
  int backend;             // 0 threads, 1 tbb
  int purge_delay_ms;
  bool inline_when_busy;   // FERRY_INLINE_WHEN_BUSY (pool.cc, "Crowded CPUs")
  int idle_exit_ms;        // FERRY_RECLAIMER_IDLE_MS: 0 never (pool.cc, StopIdlePool)
};

// Involuntary context switches a second per reclaimer (PoolWatchedReclaimers)
// above which the process's CPUs count as crowded (pool.cc).
inline constexpr uint64_t kCrowdedPreemptionsPerReclaimer = 500;
inline bool CpusCrowded(uint64_t preemptions, uint64_t wall_ns, int reclaimers) {
  return preemptions * 1000000000 > kCrowdedPreemptionsPerReclaimer * static_cast<uint64_t>(reclaimers) * wall_ns;
}

// Called once, from the allocator's global initialisation (no allocation).
// `duty` is the housekeeping; it returns whether a run soon may find work
// (memory purged or still to purge): after runs that found none, the
// reclaimers' idle pace slows (pool.cc, IdleSleepMs).
// `passed_by`: whether the last run of `duty` left something for a later
// run because a lock was taken at that moment (an idle pool's stop, which
// no later run follows, runs it again for a while: StopIdlePool).
// `leaving`: called on a reclaimer thread as it leaves an idle pool
// (StopIdlePool), while no fork can come: its heap is no longer one that a
// fork child may take as a parked reclaimer's (heap.cc).
void PoolConfigure(const PoolConfig& config, bool (*duty)(uint64_t now_ms, bool urgent), bool (*passed_by)(),
                   void (*leaving)());

// Hands a full batch to the pool; `home_hint` spreads heaps over the
// reclaimers. Returns false when the pool cannot take it (off, not started
// yet, paused for fork, its queue full, the CPUs crowded (PoolCpusCrowded),
// or the caller is a reclaimer): the
// caller then returns the batch inline. The first offer does not start the
// threads itself, it asks: the caller starts them (PoolMaybeStart) where it
// knows that pthread_create is safe (heap.cc, FreeMayStartPool: not inside
// the dynamic loader's frees under dl_stack_cache_lock), else the next
// allocation slow path or ferry_flush does.
// `wake_now`: the caller has no spare batch left, so a sleeping reclaimer
// is woken at once; otherwise batches may wait for a few more (or for the
// reclaimer's idle tick) so that one wake-up applies several.
// `may_spawn`: whether a thread may be created here (FreeMayStartPool).
// The oneTBB backend's enqueue may create one of oneTBB's workers on the
// calling thread, so without it that backend refuses the batch; ferry's own
// threads only take it from a queue.
bool PoolOffer(Batch* batch, uint32_t home_hint, bool wake_now, bool may_spawn = true);

// Asks for the pool as an offer does (the next PoolMaybeStart starts it),
// where the pool, once started, gives idle memory back on its timer:
// ferry's own threads, not started yet and not off. For memory that only a
// ticking pool may hold (the huge cache, huge.cc).
void PoolAskToHousekeep();
// Whether PoolAskToHousekeep would ask for anything now (not asked for yet).
bool PoolAwaitsAskToHousekeep();

// Starts the pool if an offer asked for it. Cheap when nothing is pending.
extern std::atomic<uint32_t> g_pool_start_requested;
// Set as an idle pool turns stopping (pool.cc, StopIdlePool), until it
// starts again: a page its owner frees then asks for it again (heap.cc,
// ReleasePageFromFree).
extern std::atomic<uint32_t> g_pool_stopped_idle;
void PoolStartRequested();
inline void PoolMaybeStart() {
  if (__builtin_expect(g_pool_start_requested.load(std::memory_order_relaxed) != 0, 0)) {
    PoolStartRequested();
  }
}

// Returns once every batch offered before the call has been applied.
void PoolFlush();

// Asks the pool to run its housekeeping now, treating all idle memory as
// overdue, and waits for that run to finish. No-op without a pool.
void PoolCollectNow();

// Runs fn(arg) in the housekeeping's turn if nobody holds it now (one
// housekeeping at a time; fork() waits for the turn once the allocator's
// fork handlers are registered); returns whether it ran.
bool PoolTryRunInDutyTurn(void (*fn)(void*), void* arg);

// True while the pool turns offers away because handing batches on made the
// program's threads lose their CPUs (pool.cc, "Crowded CPUs"); samples the
// process's involuntary context switches when one is due. Always false with
// FERRY_INLINE_WHEN_BUSY=0.
bool PoolCpusCrowded();
// The reclaimers the crowded-CPUs watch scales its bar by: those running,
// else those the pool would start, at most one per usable CPU. The usable
// CPUs are counted when the pool starts (or by PoolSetLoadSourcesForTest):
// before that this is 1, and the watch judges nothing before the pool runs.
int PoolWatchedReclaimers();
// Tests: the watch's clock and its count of involuntary context switches
// (nullptr: the OS's), and a fresh start of the watch.
// The usable CPUs are those of the thread that initialised ferry, as for
// the pool (pool.cc, Pool::cpus).
void PoolSetLoadSourcesForTest(uint64_t (*now_ns)(), bool (*preemptions)(uint64_t*));

// Tests. The reclaimers' idle tick, which also paces their housekeeping
// (<= 0: the default, 50 ms); a function every offer calls between joining
// its flush epoch and pushing its batch (nullptr: none), to hold an offer
// there (both backends); whether a flush is waiting while every reclaimer
// sleeps (ferry's own threads).
void PoolSetIdleTickForTest(int idle_tick_ms);
void PoolSetOfferHookForTest(void (*hook)());
bool PoolFlushWaitsWhileReclaimersSleepForTest();
// Tests: how long a waiting ferry_flush sleeps before it looks again
// whatever happened (<= 0: the default, 100 ms), and a function called just
// before each sleep of a waiting flush or of fork's quiescing (nullptr:
// none).
void PoolSetFlushWaitForTest(int timeout_ms, void (*before_wait)());

// Tests: a function an idle pool's stop calls on the reclaimer that stops
// it, the flush mutex held: with kStopHookStillRunning just before the
// state turns stopping, with kStopHookStopping just after, and with
// kStopHookLeft once the other threads have left and this one is an
// ordinary thread (nullptr: none); how many stops so far.
inline constexpr int kStopHookStillRunning = 0;
inline constexpr int kStopHookStopping = 1;
inline constexpr int kStopHookLeft = 2;
void PoolSetStopHookForTest(void (*hook)(int stage));
uint64_t PoolStopsForTest();
// Tests: a function PoolStartRequested calls when it found the pool
// stopping (or held for a fork), just before it puts the request back.
void PoolSetRequestBackHookForTest(void (*hook)());

// True on the pool's own threads.
bool IsReclaimerThread();

// True while reclaimer threads run the housekeeping on their own tick (the
// threads backend, started): memory left for it to give back goes back
// within a tick or two even if the program makes no further call. The
// oneTBB backend's housekeeping rides on offers, so an idle program would
// keep such memory: false there.
bool PoolHousekeepsOnATimer();

// Threads running now (0 before the pool starts), and the pool's counters.
int PoolThreadCount();
struct PoolStats {
  uint64_t batches_pooled;   // batches the pool applied
  uint64_t steals;           // of those, taken from another reclaimer's queue
  uint64_t cpu_ns;           // CPU time of the reclaimer threads
  uint64_t threads;          // threads running now
  uint64_t starts;           // times the pool started (again after fork)
  uint64_t stops;            // times an idle pool's threads exited (StopIdlePool)
};
void PoolStatsGet(PoolStats* out);

// For pthread_atfork, called by the allocator's handlers (in that order:
// the pool quiesces before the allocator takes its locks).
void PoolForkPrepare();
void PoolForkParent();
void PoolForkChild();

}  // namespace ferry

#endif  // FERRY_RECLAIMER_POOL_H_

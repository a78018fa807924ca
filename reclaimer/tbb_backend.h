// tbb_backend.h — FERRY_RECLAIMER_BACKEND=tbb: the pool's batches run as
// tasks in a dedicated oneTBB task_arena instead of on ferry's own threads,
// for programs that already run oneTBB and would rather share its workers.
//
// ferry does not make every program load oneTBB: the library refers to
// oneTBB's entry points weakly, so the backend is there exactly when the
// program itself links oneTBB. Otherwise TbbBackendAvailable() is false and
// the pool uses its own threads (with a one-line warning).
#ifndef FERRY_RECLAIMER_TBB_BACKEND_H_
#define FERRY_RECLAIMER_TBB_BACKEND_H_

namespace ferry {

bool TbbBackendAvailable();

// Makes the arena with room for `concurrency` workers (raising oneTBB's
// max_allowed_parallelism so that it can have them, never lowering it), or
// as many as a lower limit of the program's allows (one where it allows
// none). Returns the arena's workers.
int TbbBackendStart(int concurrency);

// oneTBB launches a worker it has not started yet (pthread_create, through
// any wrapper the program put in front of it) on the thread whose enqueue,
// or whose own wake-up, asks for it. Runs one task per arena worker, each
// waiting (until timeout_ms) for all of them to have begun, and returns once
// they are done, or a little after timeout_ms: with all running at once,
// all are launched, by the calling
// thread and by the workers, and no enqueue of the program's threads later
// launches one. Called on a thread of ferry's own (pool.cc, Start).
// Returns how many of the tasks had begun.
int TbbBackendLaunchWorkers(int timeout_ms);

// Runs fn(arg) as a task in the arena; never waits. May allocate (oneTBB's
// task objects), which re-enters ferry: callers hold no allocator state.
void TbbBackendSubmit(void (*fn)(void*), void* arg);

// Gives the arena up (and ferry's global_control, if it made one); the
// caller has seen every task sent to it done. Not thread safe with Submit.
void TbbBackendStop();

// fn runs before oneTBB's finalize (this file defines finalize in front of
// oneTBB's): the pool's, which gives the arena up.
void TbbBackendSetBeforeFinalize(void (*fn)());

// The program has called oneTBB's finalize (through the definition in this
// file), perhaps before ferry was set up: no arena may be made after it.
bool TbbBackendProgramFinalized();

}  // namespace ferry

#endif  // FERRY_RECLAIMER_TBB_BACKEND_H_

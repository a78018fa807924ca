// spin_lock.h — a tiny test-and-test-and-set lock for the allocator's rare
// slow paths (arena growth, the abandoned-heap list, a heap's segment list). It never
// allocates and has a constant initialiser, so it works before main().
#ifndef FERRY_COMMON_SPIN_LOCK_H_
#define FERRY_COMMON_SPIN_LOCK_H_

#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <cstdint>

namespace ferry {

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

class SpinLock {
 public:
  constexpr SpinLock() = default;
  void Lock() {
    for (;;) {
      if (!locked_.exchange(true, std::memory_order_acquire)) return;
      for (int spins = 0; locked_.load(std::memory_order_relaxed); ++spins) {
        if (spins > 64) sched_yield();
        else CpuRelax();
      }
    }
  }
  // For a caller that has other work to do rather than wait.
  bool TryLock() {
    return !locked_.load(std::memory_order_relaxed) && !locked_.exchange(true, std::memory_order_acquire);
  }
  void Unlock() { locked_.store(false, std::memory_order_release); }

 private:
  std::atomic<bool> locked_{false};
};

// A SpinLock that fork() holds, from ferry's prepare handler to its parent
// or child handler (heap.cc, AtForkPrepare). Fork handlers registered
// before ferry's (at load: those of a library initialised before ferry's
// constructor) run in between on the forking thread
// (glibc runs prepare handlers last registered first, the others first
// registered first) and may allocate and free. That thread passes the lock:
// it holds it already, and none of its own operations is inside it (it
// called fork() from outside ferry), where a SpinLock would wait for itself
// for ever. Any other thread waits as for a SpinLock. The thread is known
// by pthread_self(), which a fork child keeps.
class ForkHeldSpinLock {
 public:
  constexpr ForkHeldSpinLock() = default;
  void Lock() {
    if (!HeldForForkByThisThread()) lock_.Lock();
  }
  bool TryLock() { return HeldForForkByThisThread() || lock_.TryLock(); }
  void Unlock() {
    if (!HeldForForkByThisThread()) lock_.Unlock();
  }
  void LockForFork() {
    lock_.Lock();
    fork_holder_.store(static_cast<uintptr_t>(pthread_self()), std::memory_order_relaxed);
  }
  void UnlockAfterFork() {
    fork_holder_.store(0, std::memory_order_relaxed);
    lock_.Unlock();
  }

 private:
  // Another thread reads 0 or the forking thread's id, never its own.
  bool HeldForForkByThisThread() const {
    return fork_holder_.load(std::memory_order_relaxed) == static_cast<uintptr_t>(pthread_self());
  }
  SpinLock lock_;
  std::atomic<uintptr_t> fork_holder_{0};
};

template <class Lock>
class SpinLockHolder {
 public:
  explicit SpinLockHolder(Lock* lock) : lock_(lock) { lock_->Lock(); }
  ~SpinLockHolder() { lock_->Unlock(); }
  SpinLockHolder(const SpinLockHolder&) = delete;
  SpinLockHolder& operator=(const SpinLockHolder&) = delete;

 private:
  Lock* lock_;
};

}  // namespace ferry

#endif  // FERRY_COMMON_SPIN_LOCK_H_

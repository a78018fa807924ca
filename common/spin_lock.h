// spin_lock.h — a tiny test-and-test-and-set lock for the allocator's rare
// slow paths (arena growth, the abandoned-heap list, a heap's segment list). It never
// allocates and has a constant initialiser, so it works before main().
#ifndef FERRY_COMMON_SPIN_LOCK_H_
#define FERRY_COMMON_SPIN_LOCK_H_

#include <sched.h>

#include <atomic>

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

class SpinLockHolder {
 public:
  explicit SpinLockHolder(SpinLock* lock) : lock_(lock) { lock_->Lock(); }
  ~SpinLockHolder() { lock_->Unlock(); }
  SpinLockHolder(const SpinLockHolder&) = delete;
  SpinLockHolder& operator=(const SpinLockHolder&) = delete;

 private:
  SpinLock* lock_;
};

}  // namespace ferry

#endif  // FERRY_COMMON_SPIN_LOCK_H_

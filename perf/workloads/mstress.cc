// perf/workloads/mstress.cc — thread churn with objects that outlive their
// threads (in the spirit of mimalloc-bench's mstress).
//
// kRounds rounds; in each, kThreads short-lived threads start together, run
// kSteps steps each over kLocal local slots, and exit; the next round starts
// when all have been joined. A step picks a random local slot: an empty one
// gets a new object (a power of two from 8 B to 8 KiB, skewed to small); a
// full one is usually verified and freed, but one time in 16 it is swapped
// with a random slot of a shared transfer array, so the thread takes over an
// object that another thread (often one of an earlier round, long gone) made.
// When a thread ends it frees its local objects, except one in four which it
// swaps into the transfer array (freeing what it gets back): those survive
// it. The main thread frees what is left in the transfer array at the end.
//
// Every object is filled with its tag pattern when made and verified before
// it is freed or handed on. The transfer slots have a one-word spin lock each
// (contention is rare: 4096 slots, a swap every 32 steps or so).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <thread>
#include <vector>

#include "perf/workloads/workload.h"

namespace ferry::perf::mstress {
namespace {

constexpr char kName[] = "mstress";
constexpr int kThreads = 4;
constexpr uint64_t kFullRounds = 60;
constexpr uint64_t kSteps = 60'000;      // per thread and round
constexpr size_t kLocal = 1024;
constexpr size_t kTransfer = 4096;

struct Object {
  void* p = nullptr;
  uint64_t tag = 0;
  uint32_t size = 0;
};

struct TransferSlot {
  std::atomic<uint32_t> lock{0};
  Object object;
};

struct Shared {
  std::unique_ptr<TransferSlot[]> transfer{new TransferSlot[kTransfer]};
};

// Exchanges `object` with transfer slot `index`.
void Swap(Shared& shared, size_t index, Object& object) {
  TransferSlot& slot = shared.transfer[index];
  while (slot.lock.exchange(1, std::memory_order_acquire) != 0) {
    while (slot.lock.load(std::memory_order_relaxed) != 0) std::this_thread::yield();
  }
  Object taken = slot.object;
  slot.object = object;
  slot.lock.store(0, std::memory_order_release);
  object = taken;
}

void Release(Object& object) {
  Verify(kName, object.p, object.size, object.tag);
  std::free(object.p);
  object.p = nullptr;
}

class Worker {
 public:
  Worker(uint64_t seed, uint64_t id) : rng_(seed ^ (0x3e55ULL * (id + 1))), id_(id), local_(kLocal) {}

  void Run(Shared& shared, uint64_t steps) {
    for (uint64_t i = 0; i < steps; ++i) {
      Object& object = local_[rng_.Below(kLocal)];
      if (object.p == nullptr) {
        Make(object);
      } else if (rng_.Below(16) == 0) {
        Swap(shared, rng_.Below(kTransfer), object);
      } else {
        Release(object);
      }
    }
    for (Object& object : local_) {
      if (object.p == nullptr) continue;
      if (rng_.Below(4) == 0) {
        Swap(shared, rng_.Below(kTransfer), object);
        if (object.p != nullptr) Release(object);
      } else {
        Release(object);
      }
    }
  }

  uint64_t allocations() const { return serial_; }

 private:
  void Make(Object& object) {
    // 2^(3+k), k the smaller of two uniform draws from 0..10: 8 B-8 KiB,
    // mostly small.
    uint64_t a = rng_.Below(11), b = rng_.Below(11);
    object.size = uint32_t{8} << (a < b ? a : b);
    object.tag = TagFor((id_ << 40) | serial_++);
    object.p = std::malloc(object.size);
    if (object.p == nullptr) AllocationFailed(kName, object.size);
    Fill(object.p, object.size, object.tag);
  }

  Rng rng_;
  uint64_t id_;
  uint64_t serial_ = 0;
  std::vector<Object> local_;
};

void RunWorker(Shared* shared, uint64_t seed, uint64_t id, uint64_t steps, uint64_t* allocations) {
  Worker worker(seed, id);
  worker.Run(*shared, steps);
  *allocations = worker.allocations();
}

}  // namespace

// Ignores options.pairs and options.pin (threads come and go).
Result Run(const Options& options) {
  const uint64_t rounds = Scaled(options, kFullRounds, 2);
  // Rounds scale; steps per round too, but only below scale 0.2.
  const uint64_t steps = std::min(kSteps, Scaled(options, 5 * kSteps, 1000));
  Shared shared;
  uint64_t allocations = 0;
  auto start = std::chrono::steady_clock::now();
  for (uint64_t round = 0; round < rounds; ++round) {
    uint64_t counts[kThreads] = {};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back(RunWorker, &shared, options.seed, round * kThreads + t, steps, &counts[t]);
    }
    for (std::thread& thread : threads) thread.join();
    for (uint64_t count : counts) allocations += count;
  }
  std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
  for (size_t i = 0; i < kTransfer; ++i) {
    if (shared.transfer[i].object.p != nullptr) Release(shared.transfer[i].object);
  }
  return Result{allocations, "allocs", elapsed.count()};
}

}  // namespace ferry::perf::mstress

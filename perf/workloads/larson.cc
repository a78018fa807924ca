// perf/workloads/larson.cc — a server whose threads come and go (after
// Larson and Krishnan's benchmark, as mimalloc-bench runs it).
//
// kLineages threads each own a working set of kSlots objects of 8-1000 bytes
// (uniform). A step frees a random slot and refills it with a new object of a
// random size. After kGeneration steps a thread hands its whole slot array
// (and its random state) to a fresh thread and exits, so most frees are of
// objects that a thread which no longer exists allocated: the allocator must
// keep the dead threads' memory usable. The work is fixed: kFullSteps in
// total, split between the lineages; the last thread of a lineage verifies
// and frees its slots.
//
// Each object is filled with its tag pattern when made and verified before it
// is freed. A successor is started by the thread it replaces, as in the
// original; the replaced thread passes the successor's std::thread to the
// main thread, which joins every thread (it knows how many there will be), so
// the timed phase ends when the last thread is gone. Threads are not pinned:
// their number changes all the time, which is the point.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "perf/workloads/workload.h"

namespace ferry::perf::larson {
namespace {

constexpr char kName[] = "larson";
constexpr int kLineages = 4;
constexpr size_t kSlots = 2000;                // live objects per lineage
constexpr uint64_t kFullSteps = 12'000'000;    // free+malloc pairs at scale 1
constexpr uint64_t kGeneration = 40'000;       // steps before a hand-off
constexpr uint32_t kMinSize = 8;
constexpr uint32_t kMaxSize = 1000;

struct Slot {
  void* p = nullptr;
  uint64_t tag = 0;
  uint32_t size = 0;
};

// What a thread hands to its successor.
struct Lineage {
  Lineage(uint64_t seed, int index) : rng(seed ^ (0x1a25011ULL * (index + 1))), index(index) {}
  Rng rng;
  int index;
  uint64_t serial = 0;
  uint64_t steps_left = 0;
  std::vector<Slot> slots;
};

// Threads started and not yet joined, for the main thread to join.
struct Joiner {
  std::mutex mutex;
  std::condition_variable started;
  std::vector<std::thread> threads;

  void Add(std::thread thread) {
    std::lock_guard<std::mutex> lock(mutex);
    threads.push_back(std::move(thread));
    started.notify_one();
  }
  // Joins threads as they are added until `total` have been joined.
  void JoinAll(uint64_t total) {
    for (uint64_t joined = 0; joined < total;) {
      std::thread thread;
      {
        std::unique_lock<std::mutex> lock(mutex);
        started.wait(lock, [&] { return !threads.empty(); });
        thread = std::move(threads.back());
        threads.pop_back();
      }
      thread.join();
      ++joined;
    }
  }
};

void Make(Lineage& lineage, Slot& slot) {
  slot.size = static_cast<uint32_t>(lineage.rng.Between(kMinSize, kMaxSize));
  slot.tag = TagFor((static_cast<uint64_t>(lineage.index) << 48) | lineage.serial++);
  slot.p = std::malloc(slot.size);
  if (slot.p == nullptr) AllocationFailed(kName, slot.size);
  Fill(slot.p, slot.size, slot.tag);
}

void Release(Slot& slot) {
  Verify(kName, slot.p, slot.size, slot.tag);
  std::free(slot.p);
  slot.p = nullptr;
}

void Work(Lineage* lineage, Joiner* joiner) {
  uint64_t steps = lineage->steps_left < kGeneration ? lineage->steps_left : kGeneration;
  for (uint64_t i = 0; i < steps; ++i) {
    Slot& slot = lineage->slots[lineage->rng.Below(kSlots)];
    Release(slot);
    Make(*lineage, slot);
  }
  lineage->steps_left -= steps;
  if (lineage->steps_left > 0) {
    joiner->Add(std::thread(Work, lineage, joiner));  // the successor takes it all over
    return;
  }
  for (Slot& slot : lineage->slots) Release(slot);
}

}  // namespace

// Ignores options.pairs and options.pin.
Result Run(const Options& options) {
  const uint64_t per_lineage = Scaled(options, kFullSteps, 2 * kLineages * kGeneration) / kLineages;
  std::vector<std::unique_ptr<Lineage>> lineages;
  for (int i = 0; i < kLineages; ++i) {
    lineages.push_back(std::make_unique<Lineage>(options.seed, i));
    Lineage& lineage = *lineages.back();
    lineage.steps_left = per_lineage;
    lineage.slots.resize(kSlots);
    for (Slot& slot : lineage.slots) Make(lineage, slot);
  }
  const uint64_t generations = (per_lineage + kGeneration - 1) / kGeneration;
  Joiner joiner;
  joiner.threads.reserve(2 * kLineages);
  auto start = std::chrono::steady_clock::now();
  for (auto& lineage : lineages) joiner.Add(std::thread(Work, lineage.get(), &joiner));
  joiner.JoinAll(generations * kLineages);
  std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
  return Result{per_lineage * kLineages, "steps", elapsed.count()};
}

}  // namespace ferry::perf::larson

// perf/workloads/medium.cc — single-thread churn of medium blocks.
//
// Like churn, but over 1-64 KiB (log-uniform, so every doubling between is as
// likely): a working set of kSlots objects (about 16 MiB), in which each step
// frees a random slot and refills it with a new object of a random size. These
// are the sizes where allocators switch from size-class pages to runs of
// pages or to the OS, and where giving memory back too eagerly costs page
// faults on the next use.
//
// Objects come from malloc (6 in 8), calloc (1 in 8, checked to be zero) and
// operator new[] (1 in 8) and go back through the matching call. Each is
// filled with its tag pattern when made (every byte is written, as a program
// would use its buffer) and verified before it is released.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <vector>

#include "perf/workloads/workload.h"

namespace ferry::perf::medium {
namespace {

constexpr char kName[] = "medium";
constexpr size_t kSlots = 1024;
constexpr uint64_t kFullSteps = 600'000;
constexpr double kMinLog2 = 10;  // 1 KiB
constexpr double kMaxLog2 = 16;  // 64 KiB

enum class Kind : uint8_t { kMalloc, kCalloc, kNew };

struct Slot {
  void* p = nullptr;
  uint64_t tag = 0;
  uint32_t size = 0;
  Kind kind = Kind::kMalloc;
};

class Medium {
 public:
  explicit Medium(uint64_t seed) : rng_(seed), slots_(kSlots) {}

  Result Run(uint64_t steps) {
    for (Slot& slot : slots_) Make(slot);
    auto start = std::chrono::steady_clock::now();
    for (uint64_t step = 0; step < steps; ++step) {
      Slot& slot = slots_[rng_.Below(kSlots)];
      Release(slot);
      Make(slot);
    }
    std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    for (Slot& slot : slots_) Release(slot);
    return Result{steps, "steps", elapsed.count()};
  }

 private:
  void Make(Slot& slot) {
    double log2 = kMinLog2 + (kMaxLog2 - kMinLog2) * static_cast<double>(rng_.Below(1 << 20)) / (1 << 20);
    slot.size = static_cast<uint32_t>(std::exp2(log2));
    slot.tag = TagFor(serial_++);
    uint64_t k = rng_.Below(8);
    slot.kind = k == 0 ? Kind::kCalloc : k == 1 ? Kind::kNew : Kind::kMalloc;
    switch (slot.kind) {
      case Kind::kMalloc: slot.p = std::malloc(slot.size); break;
      case Kind::kCalloc:
        slot.p = std::calloc(1, slot.size);
        if (slot.p != nullptr) VerifyZero(kName, slot.p, slot.size);
        break;
      case Kind::kNew: slot.p = new char[slot.size]; break;
    }
    if (slot.p == nullptr) AllocationFailed(kName, slot.size);
    Fill(slot.p, slot.size, slot.tag);
  }

  void Release(Slot& slot) {
    Verify(kName, slot.p, slot.size, slot.tag);
    if (slot.kind == Kind::kNew) {
      delete[] static_cast<char*>(slot.p);
    } else {
      std::free(slot.p);
    }
    slot.p = nullptr;
  }

  Rng rng_;
  uint64_t serial_ = 0;
  std::vector<Slot> slots_;
};

}  // namespace

// Single-threaded: ignores options.pairs.
Result Run(const Options& options) {
  Medium medium(options.seed);
  return medium.Run(Scaled(options, kFullSteps, 2000));
}

}  // namespace ferry::perf::medium

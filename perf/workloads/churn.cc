// perf/workloads/churn.cc — single-thread churn over a working set.
//
// Models the steady state of a long-running single-threaded program (in the
// spirit of ithare's alloc-test): a working set of kSlots live objects in
// which, at every step, a random slot is freed and refilled with a new object
// of a random size, 8-1024 bytes skewed to small. Every kBurstPeriod steps a
// burst frees a contiguous run of slots (a data structure torn down), makes
// and frees a batch of short-lived temporaries, then refills the run.
//
// Objects come from malloc (6 in 8), calloc (1 in 8, checked to be zero) and
// operator new[] (1 in 8), and go back through the matching call. Each one is
// filled with its tag pattern when made and verified before it is released.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <vector>

#include "perf/workloads/workload.h"

namespace ferry::perf::churn {
namespace {

constexpr char kName[] = "churn";
constexpr size_t kSlots = size_t{1} << 16;       // live objects, ~7 MiB
constexpr uint64_t kFullSteps = 16'000'000;      // free+malloc pairs at scale 1
constexpr uint64_t kBurstPeriod = 1 << 18;       // steps between bursts
constexpr size_t kBurstSlots = kSlots / 16;      // slots torn down per burst
constexpr size_t kTemporaries = 4096;            // short-lived objects per burst

enum class Kind : uint8_t { kMalloc, kCalloc, kNew };

struct Slot {
  void* p = nullptr;
  uint64_t tag = 0;
  uint32_t size = 0;
  Kind kind = Kind::kMalloc;
};

// 8-1024 bytes, skewed to small: half 8-32, 30% 33-128, 15% 129-512,
// 5% 513-1024.
uint32_t RandomSize(Rng& rng) {
  uint64_t r = rng.Below(100);
  if (r < 50) return static_cast<uint32_t>(rng.Between(8, 32));
  if (r < 80) return static_cast<uint32_t>(rng.Between(33, 128));
  if (r < 95) return static_cast<uint32_t>(rng.Between(129, 512));
  return static_cast<uint32_t>(rng.Between(513, 1024));
}

class Churn {
 public:
  explicit Churn(uint64_t seed) : rng_(seed), slots_(kSlots) {}

  void Make(Slot& slot) {
    slot.size = RandomSize(rng_);
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
    if (slot.p == nullptr) {
      std::fprintf(stderr, "%s: allocation of %u bytes failed\n", kName, slot.size);
      std::_Exit(kExitCorrupted);
    }
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

  void Burst() {
    size_t first = rng_.Below(kSlots - kBurstSlots);
    for (size_t i = first; i < first + kBurstSlots; ++i) Release(slots_[i]);
    temporaries_.resize(kTemporaries);
    for (Slot& t : temporaries_) Make(t);
    for (size_t i = kTemporaries; i-- > 0;) Release(temporaries_[i]);  // LIFO
    for (size_t i = first; i < first + kBurstSlots; ++i) Make(slots_[i]);
  }

  Result Run(uint64_t steps) {
    for (Slot& slot : slots_) Make(slot);
    auto start = std::chrono::steady_clock::now();
    for (uint64_t step = 1; step <= steps; ++step) {
      Slot& slot = slots_[rng_.Below(kSlots)];
      Release(slot);
      Make(slot);
      if (step % kBurstPeriod == 0) Burst();
    }
    std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    for (Slot& slot : slots_) Release(slot);
    return Result{steps, "steps", elapsed.count()};
  }

 private:
  Rng rng_;
  uint64_t serial_ = 0;
  std::vector<Slot> slots_;
  std::vector<Slot> temporaries_;
};

}  // namespace

// Single-threaded: ignores options.pairs.
Result Run(const Options& options) {
  Churn churn(options.seed);
  return churn.Run(Scaled(options, kFullSteps, 1000));
}

}  // namespace ferry::perf::churn

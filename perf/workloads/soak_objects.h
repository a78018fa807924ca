// perf/workloads/soak_objects.h — what the soak programs (forkloop,
// threadchurn; see FERRY_SOAK_PROGRAMS in workload.h) share: objects that
// carry their tag pattern, one size mix, and a count of the bytes live, whose
// high-water mark they report so that the soak can bound their peak RSS.
#ifndef FERRY_PERF_WORKLOADS_SOAK_OBJECTS_H_
#define FERRY_PERF_WORKLOADS_SOAK_OBJECTS_H_

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>

#include "perf/workloads/workload.h"

namespace ferry::perf {

struct SoakObject {
  void* p = nullptr;
  uint64_t tag = 0;
  uint32_t size = 0;
};

// Bytes allocated and not yet freed, by all threads, and the most ever.
class LiveBytes {
 public:
  void Add(int64_t bytes) {
    const int64_t now = live_.fetch_add(bytes, std::memory_order_relaxed) + bytes;
    int64_t most = most_.load(std::memory_order_relaxed);
    while (now > most && !most_.compare_exchange_weak(most, now, std::memory_order_relaxed)) {
    }
  }
  double MostMiB() const { return static_cast<double>(most_.load()) / 1048576.0; }

 private:
  std::atomic<int64_t> live_{0};
  std::atomic<int64_t> most_{0};
};

// The size mix: log-uniform over 16 B-16 KiB (small and medium classes), one
// in 256 a 256 KiB block (a run of pages), one in 4096 a 5 MiB block (its own
// mapping).
inline uint32_t SoakSize(Rng& rng) {
  const uint64_t r = rng.Below(4096);
  if (r == 0) return uint32_t{5} << 20;
  if (r <= 16) return uint32_t{256} << 10;
  const double log2 = 4 + 10 * static_cast<double>(rng.Below(1 << 20)) / (1 << 20);
  return static_cast<uint32_t>(std::exp2(log2));
}

// malloc, then the tag pattern over every byte. A 5 MiB object is grown to
// its size by realloc from 3 MiB (its pattern checked on the way), so that
// huge blocks are resized (remapped) under every configuration, forks and
// exiting threads included.
inline SoakObject MakeSoakObject(const char* name, Rng& rng, uint64_t tag, LiveBytes& live) {
  SoakObject object;
  object.size = SoakSize(rng);
  object.tag = TagFor(tag);
  const uint32_t first_size = object.size > (uint32_t{4} << 20) ? uint32_t{3} << 20 : object.size;
  object.p = std::malloc(first_size);
  if (object.p == nullptr) AllocationFailed(name, first_size);
  if (first_size != object.size) {
    Fill(object.p, first_size, object.tag);
    void* grown = std::realloc(object.p, object.size);
    if (grown == nullptr) AllocationFailed(name, object.size);
    Verify(name, grown, first_size, object.tag);  // all of it must have been kept
    object.p = grown;
  }
  Fill(object.p, object.size, object.tag);
  live.Add(object.size);
  return object;
}

// Verifies the pattern (exit status kExitCorrupted on a mismatch), then frees.
inline void FreeSoakObject(const char* name, const SoakObject& object, LiveBytes& live) {
  Verify(name, object.p, object.size, object.tag);
  std::free(object.p);
  live.Add(-static_cast<int64_t>(object.size));
}

}  // namespace ferry::perf

#endif  // FERRY_PERF_WORKLOADS_SOAK_OBJECTS_H_

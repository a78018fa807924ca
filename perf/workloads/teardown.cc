// perf/workloads/teardown.cc — threads that build a set of objects and tear
// it down, again and again (after sh6bench's rounds, as mimalloc-bench runs
// it).
//
// Each of `pairs` threads (threads, not pairs, here), at once: build kObjects objects of 8-1024 bytes
// (uniform), then free them newest first; repeat. Every round empties the
// thread's pages, so the allocator releases and remakes pages at the pace of
// the rounds, on every thread together: what is shared between threads on
// that path (a counter, a lock, another thread's segment) shows as time that
// grows with the threads. The work is fixed: kFullObjects in total, split
// between the threads. Each object is filled with its tag pattern when made
// and verified before it is freed.
#include <barrier>
#include <chrono>
#include <cstdlib>
#include <thread>
#include <vector>

#include "perf/workloads/workload.h"

namespace ferry::perf::teardown {
namespace {

constexpr char kName[] = "teardown";
constexpr size_t kObjects = 2000;                  // live at a round's peak, ~1 MiB
constexpr uint64_t kFullObjects = 12'000'000;      // allocations at scale 1
constexpr uint32_t kMinSize = 8;
constexpr uint32_t kMaxSize = 1024;

struct Object {
  void* p;
  uint64_t tag;
  uint32_t size;
};

void BuildAndTearDown(const Options& options, int index, uint64_t rounds, std::barrier<>& start) {
  PinThisThread(options, index);
  Rng rng(options.seed ^ (0x7ea2d0ULL * (index + 1)));
  std::vector<Object> objects(kObjects);
  start.arrive_and_wait();  // all threads at once, also at small scales
  uint64_t serial = static_cast<uint64_t>(index) << 48;
  for (uint64_t round = 0; round < rounds; ++round) {
    for (Object& object : objects) {
      object.size = static_cast<uint32_t>(rng.Between(kMinSize, kMaxSize));
      object.tag = TagFor(serial++);
      object.p = std::malloc(object.size);
      if (object.p == nullptr) AllocationFailed(kName, object.size);
      Fill(object.p, object.size, object.tag);
    }
    for (size_t i = kObjects; i-- > 0;) {
      Verify(kName, objects[i].p, objects[i].size, objects[i].tag);
      std::free(objects[i].p);
    }
  }
}

}  // namespace

Result Run(const Options& options) {
  const int threads = options.pairs;
  const uint64_t rounds = Scaled(options, kFullObjects, 100 * kObjects) / kObjects / threads;
  std::barrier<> together(threads);
  auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back(BuildAndTearDown, std::cref(options), t, rounds > 0 ? rounds : 1, std::ref(together));
  }
  for (std::thread& worker : workers) worker.join();
  std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
  return Result{(rounds > 0 ? rounds : 1) * kObjects * threads, "objects", elapsed.count()};
}

}  // namespace ferry::perf::teardown

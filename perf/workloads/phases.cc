// perf/workloads/phases.cc — a working set built up and torn down again and
// again: does memory freed in one phase serve the next?
//
// Two threads (pinned to different CPUs) run kFullRounds rounds. In each,
// each thread allocates kPhaseBytes in blocks of 64 B-4 KiB (uniform) and
// writes them in full (a batch job's data, a request's arena), then
// kMessages more for the other thread; then both tear down their own sets
// and free the messages they were sent (the few frees that cross threads).
// The threads meet at a barrier between the phases, so the next build-up
// starts right after the tear-down, as in a program whose rounds follow
// each other.
//
// An allocator that gives a freed segment or span back to the OS at once
// faults the whole set in again every round; one that keeps it for a while
// reuses it. Every object is filled with its tag pattern when made and
// verified before it is freed.
#include <algorithm>
#include <barrier>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <thread>
#include <vector>

#include "perf/workloads/workload.h"

namespace ferry::perf::phases {
namespace {

constexpr char kName[] = "phases";
constexpr int kThreads = 2;
constexpr uint64_t kFullRounds = 12;
constexpr uint64_t kMinRounds = 3;  // fewer would not show a second build-up
constexpr uint64_t kPhaseBytes = uint64_t{64} << 20;  // per thread
constexpr uint64_t kMinBytes = uint64_t{1} << 20;
constexpr size_t kMessages = 1024;  // per thread and round

struct Object {
  void* p = nullptr;
  uint64_t tag = 0;
  uint32_t size = 0;
};

void Release(Object& object) {
  Verify(kName, object.p, object.size, object.tag);
  std::free(object.p);
  object.p = nullptr;
}

struct Shared {
  uint64_t rounds = 0;
  uint64_t bytes = 0;  // per thread and round
  std::vector<Object> sets[kThreads];
  std::vector<Object> messages[kThreads];  // made by thread t, freed by the other
  uint64_t allocations[kThreads] = {};
};

void RunThread(const Options& options, Shared* shared, std::barrier<>* barrier, int index) {
  PinThisThread(options, index);
  Rng rng(options.seed ^ (0x9a5e5ULL * static_cast<uint64_t>(index + 1)));
  std::vector<Object>& mine = shared->sets[index];
  std::vector<Object>& sent = shared->messages[index];
  std::vector<Object>& received = shared->messages[1 - index];
  uint64_t serial = static_cast<uint64_t>(index) << 40;
  auto make = [&](std::vector<Object>& into) {
    Object object;
    object.size = static_cast<uint32_t>(rng.Between(64, 4096));
    object.tag = TagFor(serial++);
    object.p = std::malloc(object.size);
    if (object.p == nullptr) AllocationFailed(kName, object.size);
    Fill(object.p, object.size, object.tag);
    into.push_back(object);
    return object.size;
  };
  for (uint64_t round = 0; round < shared->rounds; ++round) {
    mine.clear();
    sent.clear();
    for (uint64_t bytes = 0; bytes < shared->bytes;) bytes += make(mine);
    for (size_t i = 0; i < kMessages; ++i) make(sent);
    barrier->arrive_and_wait();  // both sets built, messages sent
    for (Object& object : mine) Release(object);
    for (Object& object : received) Release(object);
    barrier->arrive_and_wait();  // both sets gone
  }
  shared->allocations[index] = serial - (static_cast<uint64_t>(index) << 40);
}

}  // namespace

// Ignores options.pairs (two threads).
Result Run(const Options& options) {
  Shared shared;
  shared.rounds = std::max(kMinRounds, Scaled(options, kFullRounds, 1));
  // Rounds scale; the set too, but only below scale 0.2.
  shared.bytes = std::min(kPhaseBytes, Scaled(options, 5 * kPhaseBytes, kMinBytes));
  for (std::vector<Object>& set : shared.sets) set.reserve(shared.bytes / 64 + 1);
  for (std::vector<Object>& list : shared.messages) list.reserve(kMessages);
  std::barrier<> barrier(kThreads);
  auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back(RunThread, std::cref(options), &shared, &barrier, t);
  for (std::thread& thread : threads) thread.join();
  std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
  Result result{shared.allocations[0] + shared.allocations[1], "allocs", elapsed.count()};
  result.extras.push_back({"live_mib", static_cast<double>(kThreads * shared.bytes) / (1 << 20)});
  return result;
}

}  // namespace ferry::perf::phases

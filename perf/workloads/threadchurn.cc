// perf/workloads/threadchurn.cc — threads that exit with memory in flight (a
// soak program, not a benchmark; see FERRY_SOAK_PROGRAMS in workload.h).
//
// `threads` short-lived threads, pairs + 2 alive at a time: the main thread
// starts the next one as soon as it has joined the oldest. Each thread
//   - makes kObjects objects (soak_objects.h: 16 B-16 KiB, some 256 KiB and
//     5 MiB) and fills them;
//   - takes up to kObjects objects out of the shared orphanage, made by
//     other threads (most of them gone, some still running), verifies and
//     frees them: remote frees, still in this thread's batch when it exits;
//   - frees half of its own objects itself, in a random order;
//   - leaves the other half in the orphanage, alive after it exits (freeing
//     what does not fit);
//   - exits without any flush: its batch is handed on at exit, and its heap,
//     with blocks live in it, is abandoned and taken over by a later thread.
// The orphanage is bounded, so the bytes live stay about the same from the
// first few threads on. Memory of exited threads must be used again, so
// resident memory must not grow with the number of threads: the main thread
// samples it when a quarter of the threads have been joined (`rss_early`) and
// when all have (`rss_late`, before it frees the orphanage); the soak
// compares the two. Also reported: the most bytes live (`live_mib_max`).
#include <algorithm>
#include <cstdint>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "perf/workloads/soak_objects.h"
#include "perf/workloads/workload.h"

namespace ferry::perf::threadchurn {
namespace {

constexpr char kName[] = "threadchurn";
constexpr uint64_t kFullThreads = 4000;
constexpr size_t kObjects = 1024;          // made by each thread
constexpr size_t kOrphanage = 8 * kObjects;  // objects it holds at most

struct Shared {
  std::mutex mutex;
  std::vector<SoakObject> orphans;
  LiveBytes live;
};

void Thread(Shared& shared, uint64_t seed, uint64_t index) {
  Rng rng(seed ^ TagFor(index));
  std::vector<SoakObject> mine;
  mine.reserve(kObjects);
  for (size_t k = 0; k < kObjects; ++k) {
    mine.push_back(MakeSoakObject(kName, rng, (index << 20) | k, shared.live));
  }
  std::vector<SoakObject> adopted;
  {
    std::lock_guard<std::mutex> lock(shared.mutex);
    const size_t take = std::min(shared.orphans.size(), kObjects);
    adopted.assign(shared.orphans.end() - static_cast<long>(take), shared.orphans.end());
    shared.orphans.resize(shared.orphans.size() - take);
  }
  for (const SoakObject& object : adopted) FreeSoakObject(kName, object, shared.live);
  // A random half of mine, freed here; the rest go to the orphanage.
  for (size_t k = mine.size(); k > 1; --k) std::swap(mine[k - 1], mine[rng.Below(k)]);
  const size_t keep = mine.size() / 2;
  for (size_t k = keep; k < mine.size(); ++k) FreeSoakObject(kName, mine[k], shared.live);
  mine.resize(keep);
  {
    std::lock_guard<std::mutex> lock(shared.mutex);
    while (!mine.empty() && shared.orphans.size() < kOrphanage) {
      shared.orphans.push_back(mine.back());
      mine.pop_back();
    }
  }
  for (const SoakObject& object : mine) FreeSoakObject(kName, object, shared.live);
}

double MiB(uint64_t bytes) { return static_cast<double>(bytes) / 1048576.0; }

}  // namespace

// options.pairs + 2 threads alive at a time.
Result Run(const Options& options) {
  const uint64_t threads = Scaled(options, kFullThreads, 16);
  const size_t alive = static_cast<size_t>(options.pairs) + 2;
  Shared shared;
  std::deque<std::thread> running;
  double rss_early = 0;
  uint64_t joined = 0;
  auto join_oldest = [&] {
    running.front().join();
    running.pop_front();
    if (++joined == threads / 4) rss_early = MiB(ResidentBytes());
  };
  const double start = NowSeconds();
  for (uint64_t i = 0; i < threads; ++i) {
    if (running.size() == alive) join_oldest();
    running.emplace_back(Thread, std::ref(shared), options.seed, i + 1);
  }
  while (!running.empty()) join_oldest();
  const double seconds = NowSeconds() - start;
  const double rss_late = MiB(ResidentBytes());
  for (const SoakObject& object : shared.orphans) FreeSoakObject(kName, object, shared.live);
  shared.orphans.clear();

  Result result{threads, "threads", seconds};
  result.extras.push_back({"live_mib_max", shared.live.MostMiB()});
  result.extras.push_back({"rss_early", rss_early});
  result.extras.push_back({"rss_late", rss_late});
  return result;
}

}  // namespace ferry::perf::threadchurn

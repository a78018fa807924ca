// perf/workloads/idle.cc — a burst, then quiet: does the memory go back?
//
// One thread allocates kFullBurstBytes in blocks of 16 B-16 KiB (log-uniform)
// and fills each; then it hands them all to a second thread, which verifies
// and frees every one (all remote frees). Then the program idles: both threads
// stay alive but blocked, as a server's threads do between requests, and the
// main thread samples the resident set every 100 ms for kIdleSeconds. An
// allocator that gives freed memory back only when its owner next allocates,
// or that waits for the heap to be touched again, keeps it all; one with a
// background purge returns it after its delay.
//
// Reports the burst's blocks per second as its rate, and as extras the RSS
// (MiB) before the burst and at 0, 1, 2 and 3 s after the last free (below
// scale 0.2 the idle time shrinks and the points are at 0, 1/3, 2/3 and all
// of it), plus the whole series (`SERIES t:MiB ...`).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "perf/workloads/workload.h"

namespace ferry::perf::idle {
namespace {

constexpr char kName[] = "idle";
constexpr uint64_t kFullBurstBytes = uint64_t{512} << 20;
constexpr double kIdleSeconds = 3.0;   // at scale >= 0.2
constexpr int kIntervals = 30;         // samples every kIdleSeconds / 30
constexpr double kMinLog2 = 4;         // 16 B
constexpr double kMaxLog2 = 14;        // 16 KiB

struct Block {
  void* p;
  uint64_t tag;
  uint32_t size;
};

struct Shared {
  std::vector<Block> blocks;
  std::atomic<int> allocated{0};  // the blocks are ready for the freeing thread
  std::atomic<int> freed{0};      // all freed
  std::atomic<int> quit{0};       // idle time is over
};

void WaitFor(std::atomic<int>& flag) {
  while (flag.load(std::memory_order_acquire) == 0) flag.wait(0, std::memory_order_acquire);
}

void Set(std::atomic<int>& flag) {
  flag.store(1, std::memory_order_release);
  flag.notify_all();
}

void Allocate(const Options& options, Shared& shared, uint64_t bytes) {
  PinThisThread(options, 0);
  Rng rng(options.seed);
  shared.blocks.reserve(bytes / 1024 + 1024);
  uint64_t serial = 0;
  for (uint64_t total = 0; total < bytes;) {
    double log2 = kMinLog2 + (kMaxLog2 - kMinLog2) * static_cast<double>(rng.Below(1 << 20)) / (1 << 20);
    Block block;
    block.size = static_cast<uint32_t>(std::exp2(log2));
    block.tag = TagFor(serial++);
    block.p = std::malloc(block.size);
    if (block.p == nullptr) AllocationFailed(kName, block.size);
    Fill(block.p, block.size, block.tag);
    shared.blocks.push_back(block);
    total += block.size;
  }
  Set(shared.allocated);
  WaitFor(shared.quit);
}

void Free(const Options& options, Shared& shared) {
  PinThisThread(options, 1);
  WaitFor(shared.allocated);
  for (Block& block : shared.blocks) {
    Verify(kName, block.p, block.size, block.tag);
    std::free(block.p);
  }
  Set(shared.freed);
  WaitFor(shared.quit);
}

double MiB(uint64_t bytes) { return static_cast<double>(bytes) / 1048576.0; }

}  // namespace

// Ignores options.pairs.
Result Run(const Options& options) {
  const uint64_t bytes = Scaled(options, kFullBurstBytes, uint64_t{4} << 20);
  const double idle = kIdleSeconds * std::min(options.scale / 0.2, 1.0);
  Shared shared;
  double base = MiB(ResidentBytes());
  auto start = std::chrono::steady_clock::now();
  std::thread freeing(Free, std::cref(options), std::ref(shared));
  std::thread allocating(Allocate, std::cref(options), std::ref(shared), bytes);
  WaitFor(shared.freed);
  std::chrono::duration<double> burst = std::chrono::steady_clock::now() - start;

  double samples[kIntervals + 1];
  double t0 = NowSeconds();
  for (int k = 0; k <= kIntervals; ++k) {
    double at = t0 + idle * k / kIntervals;
    for (double now; (now = NowSeconds()) < at;) {
      std::this_thread::sleep_for(std::chrono::duration<double>(at - now));
    }
    samples[k] = MiB(ResidentBytes());
  }
  Set(shared.quit);
  allocating.join();
  freeing.join();

  Result result{shared.blocks.size(), "blocks", burst.count()};
  result.extras.push_back({"idle_s", idle});
  result.extras.push_back({"rss_base", base});
  for (int point = 0; point <= 3; ++point) {
    result.extras.push_back({"rss_" + std::to_string(point) + "s", samples[point * kIntervals / 3]});
  }
  char entry[48];
  for (int k = 0; k <= kIntervals; ++k) {
    std::snprintf(entry, sizeof entry, "%s%.2f:%.1f", k == 0 ? "" : " ", idle * k / kIntervals, samples[k]);
    result.series += entry;
  }
  return result;
}

}  // namespace ferry::perf::idle

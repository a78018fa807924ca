// perf/workloads/cscratch.cc — passive false sharing (after Hoard's
// cache-scratch, as mimalloc-bench runs it).
//
// The main thread allocates kHanded small objects for each worker, back to
// back and dealt round robin (object n goes to worker n mod workers), so
// neighbouring objects, often on one cache line, belong to different workers.
// Each worker (one per CPU, pinned) verifies and frees the objects it was
// given, then kIterations times allocates kBatch objects of the same size,
// writes each of them repetitions times, checks them and frees them. An
// allocator that hands a thread the blocks that thread just freed, whoever
// allocated them (a per-thread cache that takes any block), gives the workers
// blocks that share cache lines, and their writes then fight over the lines,
// which shows as time; one that sends a freed block home to its owner gives
// each thread memory of its own. The work per worker is fixed, so the ideal
// time does not depend on the number of CPUs.
//
// Each write is an atomic increment (relaxed) of an object's first 8 bytes.
// Plain stores would not do: on the development machine's Xeon a loop of
// plain load-add-store runs from the store buffer and shows no false sharing
// at all, while a locked increment must own the cache line each time (9x
// slower on a shared line there). At the end of an iteration the worker
// checks that every count came out right (no one else wrote there), then
// fills and verifies each whole object with its tag pattern as the other
// workloads do.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "perf/workloads/workload.h"

namespace ferry::perf::cscratch {
namespace {

constexpr char kName[] = "cscratch";
constexpr uint32_t kObjectSize = 8;
constexpr int kHanded = 8;                       // objects per worker from main
constexpr int kBatch = 4;                        // objects per iteration
constexpr uint64_t kIterations = 1000;
constexpr uint64_t kFullRepetitions = 10'000;    // writes per object and iteration
constexpr int kMaxWorkers = 16;

struct Handed {
  void* p;
  uint64_t tag;
};

[[noreturn]] void Miscounted(const void* p, uint64_t got, uint64_t want) {
  std::fprintf(stderr, "%s: CORRUPTED object %p: counted to %llx, expected %llx\n", kName, p,
               static_cast<unsigned long long>(got), static_cast<unsigned long long>(want));
  std::_Exit(kExitCorrupted);
}

void Work(const Options& options, int index, const Handed* handed, uint64_t repetitions,
          std::atomic<int>* ready, std::atomic<int>* go) {
  PinThisThread(options, index);
  ready->fetch_add(1, std::memory_order_acq_rel);
  ready->notify_all();
  while (go->load(std::memory_order_acquire) == 0) go->wait(0, std::memory_order_acquire);

  for (int k = 0; k < kHanded; ++k) {
    Verify(kName, handed[k].p, kObjectSize, handed[k].tag);
    std::free(handed[k].p);
  }
  uint64_t* objects[kBatch];
  uint64_t tags[kBatch];
  for (uint64_t i = 0; i < kIterations; ++i) {
    for (int b = 0; b < kBatch; ++b) {
      tags[b] = TagFor((static_cast<uint64_t>(index + 1) << 40) | (i * kBatch + b));
      objects[b] = static_cast<uint64_t*>(std::malloc(kObjectSize));
      if (objects[b] == nullptr) AllocationFailed(kName, kObjectSize);
      *objects[b] = tags[b];
    }
    for (uint64_t r = 0; r < repetitions; ++r) {
      for (int b = 0; b < kBatch; ++b) {
        std::atomic_ref<uint64_t>(*objects[b]).fetch_add(1, std::memory_order_relaxed);
      }
    }
    for (int b = kBatch; b-- > 0;) {
      uint64_t got = std::atomic_ref<uint64_t>(*objects[b]).load(std::memory_order_relaxed);
      if (got != tags[b] + repetitions) Miscounted(objects[b], got, tags[b] + repetitions);
      Fill(objects[b], kObjectSize, tags[b]);
      Verify(kName, objects[b], kObjectSize, tags[b]);
      std::free(objects[b]);
    }
  }
}

}  // namespace

// Ignores options.pairs: one worker per CPU (2 to kMaxWorkers).
Result Run(const Options& options) {
  const int workers = std::clamp(AllowedCpus(), 2, kMaxWorkers);
  const uint64_t repetitions = Scaled(options, kFullRepetitions, 100);
  // handed[w * kHanded + k]: worker w's k-th object, made in the order
  // k = 0, w = 0..workers-1; k = 1, ... (dealt round robin).
  std::vector<Handed> handed(static_cast<size_t>(workers) * kHanded);
  for (int k = 0; k < kHanded; ++k) {
    for (int w = 0; w < workers; ++w) {
      Handed& h = handed[static_cast<size_t>(w) * kHanded + k];
      h.tag = TagFor(uint64_t{0xc5} << 48 | (k * workers + w));
      h.p = std::malloc(kObjectSize);
      if (h.p == nullptr) AllocationFailed(kName, kObjectSize);
      Fill(h.p, kObjectSize, h.tag);
    }
  }
  std::atomic<int> ready{0}, go{0};
  if (options.verbose) {
    for (const Handed& h : handed) std::fprintf(stderr, "%s: handed object at %p\n", kName, h.p);
  }
  std::vector<std::thread> threads;
  for (int i = 0; i < workers; ++i) {
    threads.emplace_back(Work, std::cref(options), i, &handed[static_cast<size_t>(i) * kHanded], repetitions,
                         &ready, &go);
  }
  for (int n; (n = ready.load(std::memory_order_acquire)) != workers;) ready.wait(n, std::memory_order_acquire);
  auto start = std::chrono::steady_clock::now();
  go.store(1, std::memory_order_release);
  go.notify_all();
  for (std::thread& thread : threads) thread.join();
  std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
  return Result{static_cast<uint64_t>(workers) * kIterations * kBatch * repetitions, "writes", elapsed.count()};
}

}  // namespace ferry::perf::cscratch

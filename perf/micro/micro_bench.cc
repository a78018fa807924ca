// micro_bench.cc — Google Benchmark micro-benchmarks of ferry's own paths:
//   MallocFree/<size>      one ferry_malloc/ferry_free pair on the owner
//   RemoteFree             the freeing thread's cost of freeing another
//                          thread's block (append to its batch; a full batch
//                          is handed to the pool, or sorted inline)
//   Sorter/<batch>         ReturnBatch: pointers sorted and returned per second
//   FlushLatency           ferry_flush after one batch of remote frees
//   ReallocHugeGrowth      a huge buffer grown by 1 MiB steps, 8 -> 64 MiB,
//                          each step's new MiB written (the kernel remaps
//                          the block instead of ferry copying it)
//   ReallocLargeGrowth     a large buffer grown by 16 KiB steps, 520 KiB ->
//                          2 MiB, each step's new bytes written (it grows
//                          into the free slices after it instead of moving)
//   HugeRoundTrip/<MiB>    a huge buffer allocated, each page written, freed
//                          (the huge cache hands the next one the same
//                          mapping, its pages resident)
// The pool size is the process's FERRY_RECLAIMERS, read once; compare
// pool sizes by running it once per setting (perf/micro/README in perf/BUILD):
//   for r in 0 1 2 3 4; do FERRY_RECLAIMERS=$r bazel-bin/perf/micro_bench; done
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <random>
#include <thread>
#include <vector>

#include "allocator/segment.h"
#include "ferry.h"
#include "reclaimer/sorter.h"

namespace {

void MallocFree(benchmark::State& state) {
  const size_t size = static_cast<size_t>(state.range(0));
  for (auto _ : state) {
    void* p = ferry_malloc(size);
    benchmark::DoNotOptimize(p);
    ferry_free(p);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(MallocFree)->Arg(16)->Arg(64)->Arg(256)->Arg(1024)->Arg(8192)->Arg(65536)->Arg(1 << 20);

// Blocks of another thread's heap, made in chunks outside the timed region.
std::vector<void*> BlocksOfAnotherThread(size_t count, size_t size) {
  std::vector<void*> blocks(count);
  std::thread([&] {
    for (void*& p : blocks) p = ferry_malloc(size);
  }).join();
  return blocks;
}

void RemoteFree(benchmark::State& state) {
  constexpr size_t kChunk = 1 << 15;
  std::vector<void*> blocks;
  size_t next = 0;
  for (auto _ : state) {
    if (next == blocks.size()) {
      state.PauseTiming();
      ferry_flush();
      blocks = BlocksOfAnotherThread(kChunk, 64);
      next = 0;
      state.ResumeTiming();
    }
    ferry_free(blocks[next++]);
  }
  for (; next < blocks.size(); ++next) ferry_free(blocks[next]);  // after the timed loop
  ferry_flush();
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(RemoteFree);

void Sorter(benchmark::State& state) {
  const size_t batch = static_cast<size_t>(state.range(0));
  std::mt19937 random(42);
  size_t sorted = 0;
  for (auto _ : state) {
    state.PauseTiming();
    // Blocks of this thread's heap, in mixed sizes and a shuffled order, as
    // a remote batch looks; marked as remote frees do.
    std::vector<void*> ptrs(batch);
    for (size_t i = 0; i < batch; ++i) ptrs[i] = ferry_malloc(16 << (i % 5));
    std::shuffle(ptrs.begin(), ptrs.end(), random);
    for (void* p : ptrs) {
      const uintptr_t address = reinterpret_cast<uintptr_t>(p);
      static_cast<ferry::Block*>(p)->next_encoded =
          ferry::RemoteFreeMark(ferry::PageOf(ferry::SegmentOf(address), address));
    }
    state.ResumeTiming();
    ferry::ReturnBatch(ptrs.data(), ptrs.size());
    sorted += batch;
  }
  state.SetItemsProcessed(static_cast<int64_t>(sorted));
}
BENCHMARK(Sorter)->Arg(64)->Arg(256)->Arg(1024)->Arg(4096);

void FlushLatency(benchmark::State& state) {
  ferry_stats_t stats;
  for (auto _ : state) {
    state.PauseTiming();
    std::vector<void*> blocks = BlocksOfAnotherThread(256, 64);
    for (void* p : blocks) ferry_free(p);  // one batch, handed on when full
    state.ResumeTiming();
    ferry_flush();
  }
  ferry_stats_get(&stats);
  state.counters["reclaimers"] = static_cast<double>(stats.reclaimer_threads);
}
BENCHMARK(FlushLatency)->Unit(benchmark::kMicrosecond);

// A buffer grown from `first` to `last` bytes by `step`, each step's new
// bytes written as an appending caller would.
void ReallocGrowth(benchmark::State& state, size_t first, size_t last, size_t step) {
  for (auto _ : state) {
    size_t size = first;
    char* p = static_cast<char*>(ferry_malloc(size));
    if (p == nullptr) {
      state.SkipWithError("malloc failed");
      return;
    }
    p[0] = 1;
    while (size < last) {
      p = static_cast<char*>(ferry_realloc(p, size + step));
      if (p == nullptr) {
        state.SkipWithError("realloc failed");
        return;
      }
      for (size_t i = size; i < size + step; i += 4096) p[i] = 1;
      size += step;
    }
    benchmark::DoNotOptimize(p);
    ferry_free(p);
  }
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>((last - first) / step));  // reallocs
}

void ReallocHugeGrowth(benchmark::State& state) {
  constexpr size_t kMiB = size_t{1} << 20;
  ReallocGrowth(state, 8 * kMiB, 64 * kMiB, kMiB);
}
BENCHMARK(ReallocHugeGrowth)->Unit(benchmark::kMillisecond);

// 520 KiB is past the medium classes (a large block); 2 MiB the largest.
void ReallocLargeGrowth(benchmark::State& state) {
  constexpr size_t kKiB = size_t{1} << 10;
  ReallocGrowth(state, 520 * kKiB, 2048 * kKiB, 16 * kKiB);
}
BENCHMARK(ReallocLargeGrowth)->Unit(benchmark::kMicrosecond);

void HugeRoundTrip(benchmark::State& state) {
  const size_t size = static_cast<size_t>(state.range(0)) << 20;
  for (auto _ : state) {
    char* p = static_cast<char*>(ferry_malloc(size));
    if (p == nullptr) {
      state.SkipWithError("malloc failed");
      return;
    }
    for (size_t i = 0; i < size; i += 4096) p[i] = 1;
    benchmark::DoNotOptimize(p);
    ferry_free(p);
  }
  state.SetItemsProcessed(state.iterations());  // rounds
}
BENCHMARK(HugeRoundTrip)->Arg(3)->Arg(5)->Arg(20)->Unit(benchmark::kMicrosecond);

// A large block (960 KiB: four to a segment, three slices left over in
// each) allocated on a heap that already holds `range(0)` GiB of them. The
// search for free slices anywhere read every live segment's header once
// per claim until the room index (2026-12-04): at 4 GiB held, 21 µs a
// block against 0.11 with none held; 0.17 since.
void LargeOnBigHeap(benchmark::State& state) {
  constexpr size_t kBlock = 960 << 10;
  const size_t held_bytes = static_cast<size_t>(state.range(0)) << 30;
  std::vector<void*> held;
  held.reserve(held_bytes / kBlock + 1);
  for (size_t bytes = 0; bytes < held_bytes; bytes += kBlock) {
    void* p = ferry_malloc(kBlock);  // never written: address space only
    if (p == nullptr) {
      state.SkipWithError("malloc failed");
      break;
    }
    held.push_back(p);
  }
  std::vector<void*> fresh;
  fresh.reserve(64);
  for (auto _ : state) {
    for (int k = 0; k < 64; ++k) fresh.push_back(ferry_malloc(kBlock));
    state.PauseTiming();
    for (void* p : fresh) ferry_free(p);
    fresh.clear();
    state.ResumeTiming();
  }
  for (void* p : held) ferry_free(p);
  state.SetItemsProcessed(state.iterations() * 64);  // blocks
}
BENCHMARK(LargeOnBigHeap)->Arg(0)->Arg(4)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();

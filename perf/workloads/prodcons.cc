// perf/workloads/prodcons.cc — producers allocate, consumers free.
//
// `pairs` producer/consumer pairs. Each producer allocates a fixed sequence
// of objects (16-256 bytes; 3 in 4 from malloc, 1 in 4 from operator new[]),
// fills each with its tag pattern, and hands them to its consumer in chunks
// of kChunk pointers through a single-producer single-consumer ring. The
// consumer verifies and frees each one, so every free is remote: the pattern
// of a server whose request objects are made by one thread and retired by
// another. The total work is fixed and split between the pairs.
//
// Producer i runs on CPU 2i and consumer i on CPU 2i+1 (modulo the CPUs
// available; see PinThisThread). The hand-off is one release store per chunk (and a futex wake only when
// the other side sleeps), so the allocator dominates. The consumer derives
// each object's size, kind and tag from the same seeded generator as its
// producer; objects arrive in order, so it knows exactly what to expect.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <new>
#include <thread>
#include <vector>

#include "perf/workloads/workload.h"

namespace ferry::perf::prodcons {
namespace {

constexpr char kName[] = "prodcons";
constexpr uint64_t kFullObjects = 10'000'000;  // in total, at scale 1
constexpr uint32_t kChunk = 256;               // pointers per hand-off
constexpr uint32_t kRingChunks = 64;           // chunks in flight per pair
constexpr uint32_t kWakeAt = kRingChunks / 2;  // see "Waiting" below

// What both sides of a pair compute for object number `serial`.
struct Object {
  uint32_t size;
  bool from_new;
  uint64_t tag;
};

class Sequence {
 public:
  Sequence(uint64_t seed, int pair) : rng_(seed ^ (0x51ed27ULL * (pair + 1))), pair_(pair) {}
  Object Next() {
    Object object;
    object.size = static_cast<uint32_t>(rng_.Between(16, 256));
    object.from_new = rng_.Below(4) == 0;
    object.tag = TagFor((static_cast<uint64_t>(pair_) << 48) | serial_++);
    return object;
  }

 private:
  Rng rng_;
  uint64_t pair_;
  uint64_t serial_ = 0;
};

// Single-producer single-consumer ring of chunks. `produced` and `consumed`
// count chunks and only grow; each is written by one side and read by the
// other. A chunk's slot is written by the producer before the release store
// of `produced` and read by the consumer after its acquire load, and the
// reverse for `consumed`.
//
// Waiting: a consumer that finds the ring empty sleeps (std::atomic::wait,
// a futex after a short spin) and the producer wakes it only once kWakeAt
// chunks are ready, or at the end; a producer that finds the ring full
// sleeps until the consumer has emptied it to kWakeAt. So the sides wake
// each other about once per kWakeAt chunks rather than once per chunk, and
// the futex traffic stays small next to the mallocs and frees. No wake-up is
// lost: a side sleeps only at "empty" (or "full"), and while it sleeps the
// other side's count moves one step at a time through kWakeAt.
struct Ring {
  alignas(64) std::atomic<uint32_t> produced{0};
  alignas(64) std::atomic<uint32_t> consumed{0};
  alignas(64) void* chunks[kRingChunks][kChunk];
};

uint32_t ChunkSize(uint64_t objects, uint64_t chunk) {
  uint64_t left = objects - chunk * kChunk;
  return static_cast<uint32_t>(left < kChunk ? left : kChunk);
}

void Produce(const Options& options, Ring& ring, uint64_t objects, int pair) {
  PinThisThread(options, 2 * pair);
  Sequence sequence(options.seed, pair);
  uint64_t chunks = (objects + kChunk - 1) / kChunk;
  for (uint32_t c = 0; c < chunks; ++c) {
    for (;;) {  // wait for a free slot
      uint32_t consumed = ring.consumed.load(std::memory_order_acquire);
      if (c - consumed < kRingChunks) break;
      ring.consumed.wait(consumed, std::memory_order_acquire);
    }
    void** slot = ring.chunks[c % kRingChunks];
    uint32_t n = ChunkSize(objects, c);
    for (uint32_t i = 0; i < n; ++i) {
      Object object = sequence.Next();
      void* p = object.from_new ? new char[object.size] : std::malloc(object.size);
      if (p == nullptr) {
        std::fprintf(stderr, "%s: allocation of %u bytes failed\n", kName, object.size);
        std::_Exit(kExitCorrupted);
      }
      Fill(p, object.size, object.tag);
      slot[i] = p;
    }
    ring.produced.store(c + 1, std::memory_order_release);
    uint32_t ready = c + 1 - ring.consumed.load(std::memory_order_acquire);
    if (ready == kWakeAt || c + 1 == chunks) ring.produced.notify_one();
  }
}

void Consume(const Options& options, Ring& ring, uint64_t objects, int pair) {
  PinThisThread(options, 2 * pair + 1);
  Sequence sequence(options.seed, pair);
  uint64_t chunks = (objects + kChunk - 1) / kChunk;
  for (uint32_t c = 0; c < chunks; ++c) {
    for (;;) {  // wait for a full slot
      uint32_t produced = ring.produced.load(std::memory_order_acquire);
      if (produced > c) break;
      ring.produced.wait(produced, std::memory_order_acquire);
    }
    void** slot = ring.chunks[c % kRingChunks];
    uint32_t n = ChunkSize(objects, c);
    for (uint32_t i = 0; i < n; ++i) {
      Object object = sequence.Next();
      Verify(kName, slot[i], object.size, object.tag);
      if (object.from_new) {
        delete[] static_cast<char*>(slot[i]);
      } else {
        std::free(slot[i]);
      }
    }
    ring.consumed.store(c + 1, std::memory_order_release);
    uint32_t ready = ring.produced.load(std::memory_order_acquire) - (c + 1);
    if (ready == kRingChunks - kWakeAt) ring.consumed.notify_one();
  }
}

}  // namespace

Result Run(const Options& options) {
  const int pairs = options.pairs;
  const uint64_t per_pair = Scaled(options, kFullObjects, 1000 * kChunk) / pairs;
  std::vector<std::unique_ptr<Ring>> rings;
  for (int p = 0; p < pairs; ++p) rings.push_back(std::make_unique<Ring>());

  auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int p = 0; p < pairs; ++p) {
    threads.emplace_back(Consume, std::cref(options), std::ref(*rings[p]), per_pair, p);
    threads.emplace_back(Produce, std::cref(options), std::ref(*rings[p]), per_pair, p);
  }
  for (std::thread& t : threads) t.join();
  std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
  return Result{per_pair * pairs, "frees", elapsed.count()};
}

}  // namespace ferry::perf::prodcons

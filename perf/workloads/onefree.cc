// perf/workloads/onefree.cc — many threads allocate, one thread frees, live
// data held steady: does memory freed by a thread that never allocates come
// back? (The shape of mimalloc#1364, where RSS grew to 4.9x live.)
//
// kProducers producers each build a working set of objects (16-1024 bytes,
// uniform) until together they hold kLiveBytes. Then, in the timed steady
// phase, each step of a producer takes a random object out of its set, sends
// it to the one freeing thread, and puts a new object in its place, so the
// live bytes stay where they were. The freeing thread verifies and frees
// everything it receives; it never allocates. Meanwhile the main thread
// samples the resident set (/proc/self/statm) every 50 ms and divides it by
// the bytes live at that moment (allocated by the producers and not yet freed,
// objects in transit included): the median of those ratios is the figure of
// merit (`rss_live`). At the end the producers send the rest of their sets to
// the freeing thread too.
//
// Producers send objects in chunks of kChunk through their own ring of
// kRingChunks chunks (bounded, so in-transit objects stay a small share of
// live data). Producer i runs on CPU 2i and the freeing thread on CPU 1
// (modulo the CPUs available): on two cores the producers share one and the
// freeing thread has the other.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <thread>
#include <vector>

#include "perf/workloads/workload.h"

namespace ferry::perf::onefree {
namespace {

constexpr char kName[] = "onefree";
constexpr int kProducers = 4;
constexpr uint64_t kLiveBytes = uint64_t{64} << 20;  // at scale >= 0.2
constexpr uint64_t kFullSteps = 3'000'000;           // replacements, all producers
constexpr uint32_t kChunk = 256;
constexpr uint32_t kRingChunks = 8;
constexpr uint32_t kMinSize = 16;
constexpr uint32_t kMaxSize = 1024;
constexpr double kSampleSeconds = 0.050;              // at scale >= 0.2

struct Object {
  void* p;
  uint64_t tag;
  uint32_t size;
};

struct Ring {
  alignas(64) std::atomic<uint32_t> produced{0};
  alignas(64) std::atomic<uint32_t> consumed{0};
  alignas(64) std::atomic<uint64_t> allocated_bytes{0};  // written by the producer only
  std::atomic<bool> finished{false};
  uint32_t counts[kRingChunks] = {};
  Object chunks[kRingChunks][kChunk];
};

struct Shared {
  std::unique_ptr<Ring> rings[kProducers];
  alignas(64) std::atomic<uint32_t> published{0};  // chunks published by anyone
  alignas(64) std::atomic<uint64_t> freed_bytes{0};  // written by the freeing thread only
  alignas(64) std::atomic<int> filled{0};            // producers with a full set
  std::atomic<int> go{0};                            // steady phase may start
  std::atomic<int> steady_done{0};                   // producers past the steady phase
};

uint64_t LiveBytes(const Shared& shared) {
  uint64_t freed = shared.freed_bytes.load(std::memory_order_acquire);
  uint64_t allocated = 0;
  for (const auto& ring : shared.rings) allocated += ring->allocated_bytes.load(std::memory_order_acquire);
  return allocated > freed ? allocated - freed : 0;
}

class Producer {
 public:
  Producer(Shared& shared, int index, uint64_t seed)
      : shared_(shared), ring_(*shared.rings[index]), rng_(seed ^ (0x0e0f3eeULL * (index + 1))),
        index_(index) {}

  void Run(const Options& options, uint64_t live_share, uint64_t steps) {
    PinThisThread(options, 2 * index_);
    for (uint64_t bytes = 0; bytes < live_share;) {
      set_.push_back(Make());
      bytes += set_.back().size;
    }
    if (shared_.filled.fetch_add(1, std::memory_order_acq_rel) + 1 == kProducers) {
      shared_.filled.notify_all();
    }
    while (shared_.go.load(std::memory_order_acquire) == 0) shared_.go.wait(0, std::memory_order_acquire);

    for (uint64_t i = 0; i < steps; ++i) {
      Object& object = set_[rng_.Below(set_.size())];
      Send(object);
      object = Make();
    }
    Publish();
    if (shared_.steady_done.fetch_add(1, std::memory_order_acq_rel) + 1 == kProducers) {
      shared_.steady_done.notify_all();
    }
    // No producer sends its set away before all are done with the steady
    // phase: live data must stay steady while the main thread samples (a
    // producer that finished first and drained its set made live data drop
    // by a quarter or more under a lagging one, and RSS/live spike to 3-5x).
    for (int n; (n = shared_.steady_done.load(std::memory_order_acquire)) != kProducers;) {
      shared_.steady_done.wait(n, std::memory_order_acquire);
    }
    for (Object& object : set_) Send(object);
    Publish();
    ring_.finished.store(true, std::memory_order_release);
    shared_.published.fetch_add(1, std::memory_order_release);
    shared_.published.notify_one();
  }

 private:
  Object Make() {
    Object object;
    object.size = static_cast<uint32_t>(rng_.Between(kMinSize, kMaxSize));
    object.tag = TagFor((static_cast<uint64_t>(index_) << 48) | serial_++);
    object.p = std::malloc(object.size);
    if (object.p == nullptr) AllocationFailed(kName, object.size);
    Fill(object.p, object.size, object.tag);
    allocated_ += object.size;
    ring_.allocated_bytes.store(allocated_, std::memory_order_release);
    return object;
  }

  void Send(const Object& object) {
    if (fill_ == 0) {  // wait for a free chunk
      for (;;) {
        uint32_t consumed = ring_.consumed.load(std::memory_order_acquire);
        if (next_ - consumed < kRingChunks) break;
        ring_.consumed.wait(consumed, std::memory_order_acquire);
      }
    }
    ring_.chunks[next_ % kRingChunks][fill_++] = object;
    if (fill_ == kChunk) Publish();
  }

  void Publish() {
    if (fill_ == 0) return;
    ring_.counts[next_ % kRingChunks] = fill_;
    fill_ = 0;
    ring_.produced.store(++next_, std::memory_order_release);
    shared_.published.fetch_add(1, std::memory_order_release);
    shared_.published.notify_one();
  }

  Shared& shared_;
  Ring& ring_;
  Rng rng_;
  int index_;
  uint64_t serial_ = 0;
  uint64_t allocated_ = 0;
  uint32_t next_ = 0;  // chunk being filled
  uint32_t fill_ = 0;  // objects in it
  std::vector<Object> set_;
};

void Free(const Options& options, Shared& shared) {
  PinThisThread(options, 1);
  uint64_t freed = 0;
  for (;;) {
    uint32_t seen = shared.published.load(std::memory_order_acquire);
    bool any = false, all_finished = true;
    for (auto& ring_ptr : shared.rings) {
      Ring& ring = *ring_ptr;
      bool finished = ring.finished.load(std::memory_order_acquire);
      uint32_t produced = ring.produced.load(std::memory_order_acquire);
      for (uint32_t c = ring.consumed.load(std::memory_order_relaxed); c < produced; ++c) {
        uint32_t slot = c % kRingChunks;
        for (uint32_t i = 0; i < ring.counts[slot]; ++i) {
          Object& object = ring.chunks[slot][i];
          Verify(kName, object.p, object.size, object.tag);
          std::free(object.p);
          freed += object.size;
        }
        shared.freed_bytes.store(freed, std::memory_order_release);
        ring.consumed.store(c + 1, std::memory_order_release);
        ring.consumed.notify_one();
        any = true;
      }
      if (!finished) all_finished = false;
    }
    if (all_finished && !any) return;  // finished was read before the last drain
    if (!any) shared.published.wait(seen, std::memory_order_acquire);
  }
}

}  // namespace

// Ignores options.pairs.
Result Run(const Options& options) {
  const double small = std::min(options.scale / 0.2, 1.0);  // shrinks only below quick
  const uint64_t live = std::max<uint64_t>(static_cast<uint64_t>(kLiveBytes * small), uint64_t{2} << 20);
  const uint64_t per_producer = Scaled(options, kFullSteps, 20'000) / kProducers;
  const double interval = std::max(kSampleSeconds * small, 0.002);

  Shared shared;
  for (auto& ring : shared.rings) ring = std::make_unique<Ring>();
  std::vector<std::thread> threads;
  threads.emplace_back(Free, std::cref(options), std::ref(shared));
  std::vector<std::unique_ptr<Producer>> producers;
  for (int i = 0; i < kProducers; ++i) {
    producers.push_back(std::make_unique<Producer>(shared, i, options.seed));
    threads.emplace_back(&Producer::Run, producers.back().get(), std::cref(options), live / kProducers,
                         per_producer);
  }
  for (int n; (n = shared.filled.load(std::memory_order_acquire)) != kProducers;) {
    shared.filled.wait(n, std::memory_order_acquire);
  }

  std::vector<double> ratios, lives;
  ratios.reserve(4096);
  lives.reserve(4096);
  auto sample = [&] {
    uint64_t live_now = LiveBytes(shared);
    uint64_t rss = ResidentBytes();
    if (live_now == 0 || rss == 0 || ratios.size() == ratios.capacity()) return;
    ratios.push_back(static_cast<double>(rss) / static_cast<double>(live_now));
    lives.push_back(static_cast<double>(live_now) / 1048576.0);
  };

  double start = NowSeconds();
  shared.go.store(1, std::memory_order_release);
  shared.go.notify_all();
  for (double next = start + interval;;) {
    int done = shared.steady_done.load(std::memory_order_acquire);
    if (done == kProducers) break;
    double now = NowSeconds();
    if (now >= next) {
      sample();
      next += interval;
      continue;
    }
    std::this_thread::sleep_for(std::chrono::duration<double>(std::min(next - now, 0.005)));
  }
  double seconds = NowSeconds() - start;
  if (ratios.empty()) sample();  // a run too short for the interval: one sample at its end
  for (std::thread& thread : threads) thread.join();

  Result result{per_producer * kProducers, "steps", seconds};
  double max_ratio = ratios.empty() ? 0 : *std::max_element(ratios.begin(), ratios.end());
  result.extras.push_back({"samples", static_cast<double>(ratios.size())});
  result.extras.push_back({"live_mib", MedianOf(lives)});
  result.extras.push_back({"rss_live", MedianOf(ratios)});
  result.extras.push_back({"rss_live_max", max_ratio});
  return result;
}

}  // namespace ferry::perf::onefree

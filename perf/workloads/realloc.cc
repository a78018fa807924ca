// perf/workloads/realloc.cc — buffers that grow by realloc.
//
// One thread keeps kObjects buffers. A step picks one at random and grows it
// with realloc: half of the buffers grow geometrically (x1.25 to x2, as
// vectors and string builders do), the other half linearly (16 to 1024 bytes
// at a time, as an appended log or message does). One step in 16 shrinks the
// buffer to half instead (shrink_to_fit). A buffer that has passed its
// target size (4-64 KiB, log-uniform) is freed and started again at 16
// bytes. So sizes sweep the small and medium classes, and realloc has to
// decide again and again whether a block can grow in place.
//
// Contents are checked on both sides of every realloc: the buffer carries
// its tag pattern (tag at both ends, fill byte in between); before the call
// it is verified whole, after it the part that realloc must have kept is
// verified, then the pattern is extended (or cut) to the new size by writing
// only the bytes that changed, as an appending program would.
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "perf/workloads/workload.h"

namespace ferry::perf::realloc {
namespace {

constexpr char kName[] = "realloc";
constexpr size_t kObjects = 256;
constexpr uint64_t kFullSteps = 1'500'000;
constexpr uint32_t kStartSize = 16;

struct Buffer {
  void* p = nullptr;
  uint64_t tag = 0;
  uint32_t size = 0;
  uint32_t target = 0;
  bool linear = false;
};

[[noreturn]] void Corrupted(const void* p, size_t size, size_t at, unsigned want, unsigned got) {
  std::fprintf(stderr, "%s: CORRUPTED object %p (size %zu) after realloc: byte %zu is 0x%02x, expected 0x%02x\n",
               kName, p, size, at, got, want);
  std::_Exit(kExitCorrupted);
}

// Checks the first `n` bytes of a buffer that held the pattern for `tag`
// over `old_size` bytes, where n <= old_size - 8 (what a shrink keeps): the
// leading tag and the fill bytes.
void VerifyKept(const void* p, size_t n, uint64_t tag) {
  const unsigned char* bytes = static_cast<const unsigned char*>(p);
  unsigned char want[8];
  std::memcpy(want, &tag, sizeof want);
  for (size_t i = 0; i < 8; ++i) {
    if (bytes[i] != want[i]) Corrupted(p, n, i, want[i], bytes[i]);
  }
  const unsigned char fill = static_cast<unsigned char>(tag >> 56);
  for (size_t i = 8; i < n; ++i) {
    if (bytes[i] != fill) Corrupted(p, n, i, fill, bytes[i]);
  }
}

// Turns the pattern for `tag` over `old_size` bytes into the one over
// `new_size` bytes, writing only what differs.
void Reshape(void* p, uint32_t old_size, uint32_t new_size, uint64_t tag) {
  char* bytes = static_cast<char*>(p);
  const int fill = static_cast<int>(tag >> 56);
  if (new_size > old_size) {
    size_t from = old_size >= 16 ? old_size - 8 : 8;  // the old end tag goes
    std::memset(bytes + from, fill, new_size - from);
  }
  if (new_size >= 16) std::memcpy(bytes + new_size - 8, &tag, sizeof tag);
}

class Realloc {
 public:
  explicit Realloc(uint64_t seed) : rng_(seed), buffers_(kObjects) {}

  Result Run(uint64_t steps) {
    for (size_t i = 0; i < kObjects; ++i) Start(buffers_[i], i % 2 == 1);
    auto start = std::chrono::steady_clock::now();
    for (uint64_t step = 0; step < steps; ++step) {
      Buffer& b = buffers_[rng_.Below(kObjects)];
      if (b.size >= b.target) {
        Verify(kName, b.p, b.size, b.tag);
        std::free(b.p);
        Start(b, b.linear);
        continue;
      }
      uint32_t new_size;
      if (b.size >= 64 && rng_.Below(16) == 0) {
        new_size = b.size / 2;
      } else if (b.linear) {
        new_size = b.size + static_cast<uint32_t>(rng_.Between(16, 1024));
      } else {
        new_size = b.size + static_cast<uint32_t>(b.size * rng_.Between(25, 100) / 100);
      }
      Grow(b, new_size);
    }
    std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    for (Buffer& b : buffers_) {
      Verify(kName, b.p, b.size, b.tag);
      std::free(b.p);
    }
    return Result{reallocs_, "reallocs", elapsed.count()};
  }

 private:
  void Start(Buffer& b, bool linear) {
    b.linear = linear;
    b.size = kStartSize;
    // 4-64 KiB, log-uniform: 2^(12 + u), u uniform in [0, 4).
    b.target = static_cast<uint32_t>(4096.0 * std::exp2(static_cast<double>(rng_.Below(1 << 20)) / (1 << 18)));
    b.tag = TagFor(serial_++);
    b.p = std::malloc(b.size);
    if (b.p == nullptr) AllocationFailed(kName, b.size);
    Fill(b.p, b.size, b.tag);
  }

  void Grow(Buffer& b, uint32_t new_size) {
    Verify(kName, b.p, b.size, b.tag);
    void* p = std::realloc(b.p, new_size);
    if (p == nullptr) AllocationFailed(kName, new_size);
    ++reallocs_;
    if (new_size > b.size) {
      Verify(kName, p, b.size, b.tag);  // all of it must have been kept
    } else {
      VerifyKept(p, new_size, b.tag);
    }
    Reshape(p, b.size, new_size, b.tag);
    b.p = p;
    b.size = new_size;
  }

  Rng rng_;
  uint64_t serial_ = 0;
  uint64_t reallocs_ = 0;
  std::vector<Buffer> buffers_;
};

}  // namespace

// Single-threaded: ignores options.pairs.
Result Run(const Options& options) {
  Realloc r(options.seed);
  return r.Run(Scaled(options, kFullSteps, 10'000));
}

}  // namespace ferry::perf::realloc

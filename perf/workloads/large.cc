// perf/workloads/large.cc — one thread replacing big buffers (mimalloc-bench's
// malloc-large).
//
// kSlots buffers of 5-25 MiB (uniform); each step picks a slot at random and
// replaces its buffer with a new one of a random size made by
// `new char[n]()`, which zeroes every byte, as `std::make_unique<char[]>(n)`
// does in the original. So every buffer is written whole once, and the
// sizes are all huge blocks (each on its own mapping in ferry, in the heap
// or its own mapping in glibc), freed while the next of another size is
// wanted: what an allocator keeps of freed big blocks, and how much the
// kernel faults in afresh, sets the time.
//
// Each buffer carries its tag in its first and last 8 bytes and in one word
// every 64 KiB, checked before it is released.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <new>
#include <vector>

#include "perf/workloads/workload.h"

namespace ferry::perf::large {
namespace {

constexpr char kName[] = "large";
constexpr size_t kSlots = 20;       // 4 below --scale quick, so that a smoke run stays small
constexpr uint64_t kFullSteps = 2000;
constexpr size_t kMinSize = size_t{5} << 20;
constexpr size_t kMaxSize = size_t{25} << 20;
constexpr size_t kTagStride = size_t{64} << 10;

struct Slot {
  char* p = nullptr;
  size_t size = 0;
  uint64_t tag = 0;
};

[[noreturn]] void Corrupted(const Slot& slot, size_t at) {
  std::fprintf(stderr, "%s: CORRUPTED buffer %p (size %zu) at byte %zu\n", kName, static_cast<void*>(slot.p),
               slot.size, at);
  std::_Exit(kExitCorrupted);
}

// Whether the stride's word at `at` ends before the buffer's last 8 bytes,
// which hold the tag too. One that overlapped them (a size 9-15 bytes past
// a multiple of the stride) was partly overwritten by the last tag and read
// back as corruption: a soak run of 2026-12-06 (22151182 bytes) failed so
// under every allocator setting, and on every build back to the first.
bool BeforeLastTag(size_t at, size_t size) { return at + 2 * sizeof(uint64_t) <= size; }

void Mark(Slot& slot) {
  for (size_t at = 0; BeforeLastTag(at, slot.size); at += kTagStride) {
    std::memcpy(slot.p + at, &slot.tag, sizeof slot.tag);
  }
  std::memcpy(slot.p + slot.size - sizeof slot.tag, &slot.tag, sizeof slot.tag);
}

void Check(const Slot& slot) {
  uint64_t word;
  for (size_t at = 0; BeforeLastTag(at, slot.size); at += kTagStride) {
    std::memcpy(&word, slot.p + at, sizeof word);
    if (word != slot.tag) Corrupted(slot, at);
  }
  std::memcpy(&word, slot.p + slot.size - sizeof word, sizeof word);
  if (word != slot.tag) Corrupted(slot, slot.size - sizeof word);
}

void Release(Slot& slot) {
  if (slot.p == nullptr) return;
  Check(slot);
  delete[] slot.p;
  slot.p = nullptr;
}

}  // namespace

// Single-threaded: ignores options.pairs.
Result Run(const Options& options) {
  Rng rng(options.seed);
  std::vector<Slot> slots(options.scale >= 0.2 ? kSlots : 4);
  const uint64_t steps = Scaled(options, kFullSteps, 20);
  uint64_t serial = 0;
  size_t live = 0;
  size_t live_max = 0;  // for the soak's RSS bound
  const double start = NowSeconds();
  for (uint64_t step = 0; step < steps; ++step) {
    Slot& slot = slots[rng.Below(slots.size())];
    const size_t size = kMinSize + rng.Below(kMaxSize - kMinSize + 1);
    char* fresh = new (std::nothrow) char[size]();
    if (fresh == nullptr) AllocationFailed(kName, size);
    live += size;
    live_max = std::max(live_max, live);
    live -= slot.size;
    Release(slot);  // after the new one, as `buffers[i] = make_unique(...)` does
    slot = Slot{fresh, size, TagFor(serial++)};
    Mark(slot);
  }
  const double elapsed = NowSeconds() - start;
  for (Slot& slot : slots) Release(slot);
  Result result{steps, "buffers", elapsed};
  result.extras.push_back({"live_mib_max", static_cast<double>(live_max) / (1 << 20)});
  return result;
}

}  // namespace ferry::perf::large

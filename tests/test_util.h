// test_util.h — helpers shared by ferry's whole-allocator tests.
//
// Blocks are filled with a pattern that depends on a seed and on each byte's
// offset, so a check finds a byte written by anyone else: a neighbour that
// overlaps, a stale free-list link, a copy that moved the wrong bytes. The
// content helpers never allocate, so they are safe to call while the
// allocator under test is being exercised from several threads;
// SwapWithShared does (a std::vector), and StartThePool (a thread), so call
// them from test code only.
#ifndef FERRY_TESTS_TEST_UTIL_H_
#define FERRY_TESTS_TEST_UTIL_H_

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "ferry.h"

namespace ferry_test {

// Work is divided by this under ThreadSanitizer, which makes every access
// to memory 10-20x slower: the tests must stay under a minute there, and
// single-threaded sweeps of big blocks add nothing it judges (the plain,
// ASan and UBSan runs take them whole).
#if defined(__SANITIZE_THREAD__)
inline constexpr int kSanitizerSlowdown = 8;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
inline constexpr int kSanitizerSlowdown = 8;
#else
inline constexpr int kSanitizerSlowdown = 1;
#endif
#else
inline constexpr int kSanitizerSlowdown = 1;
#endif

// splitmix64's finaliser: a cheap bijective mix of 64 bits.
inline uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// The seed of a block's pattern: derived from where it lives and how big it
// is, so two live blocks never carry the same bytes.
inline uint64_t SeedFor(const void* p, size_t n) {
  return Mix(reinterpret_cast<uintptr_t>(p)) ^ Mix(n * 0x2545f4914f6cdd1dULL + 1);
}

// The byte at `offset` of the pattern with `seed`.
inline uint8_t PatternByte(uint64_t seed, size_t offset) {
  const uint64_t word = Mix(seed + offset / 8);
  return static_cast<uint8_t>(word >> (8 * (offset % 8)));
}

// Writes the pattern of `seed` into bytes [begin, end) of `base`.
inline void FillRange(void* base, size_t begin, size_t end, uint64_t seed) {
  unsigned char* b = static_cast<unsigned char*>(base);
  size_t i = begin;
  for (; i < end && i % 8 != 0; ++i) b[i] = PatternByte(seed, i);
  for (; i + 8 <= end; i += 8) {
    const uint64_t word = Mix(seed + i / 8);  // little-endian: byte k = word >> 8k
    memcpy(b + i, &word, 8);
  }
  for (; i < end; ++i) b[i] = PatternByte(seed, i);
}

// Returns the offset of the first byte in [begin, end) that differs from the
// pattern of `seed`, or SIZE_MAX when all match.
inline size_t FirstMismatch(const void* base, size_t begin, size_t end, uint64_t seed) {
  const unsigned char* b = static_cast<const unsigned char*>(base);
  size_t i = begin;
  for (; i < end && i % 8 != 0; ++i)
    if (b[i] != PatternByte(seed, i)) return i;
  for (; i + 8 <= end; i += 8) {
    uint64_t word;
    memcpy(&word, b + i, 8);
    if (word != Mix(seed + i / 8)) {
      for (size_t k = i; k < i + 8; ++k)
        if (b[k] != PatternByte(seed, k)) return k;
    }
  }
  for (; i < end; ++i)
    if (b[i] != PatternByte(seed, i)) return i;
  return SIZE_MAX;
}

// Fills the whole of [p, p + n) with the pattern of its address and size.
inline void FillBlock(void* p, size_t n) { FillRange(p, 0, n, SeedFor(p, n)); }

// True when [p, p + n) still holds what FillBlock(p, n) wrote.
inline bool BlockIntact(const void* p, size_t n) {
  return FirstMismatch(p, 0, n, SeedFor(p, n)) == SIZE_MAX;
}

// A block a test made with ferry_malloc and filled (Make), to be checked and
// freed later, perhaps by another thread (CheckAndFree).
struct Item {
  void* p;
  size_t n;
};

// Allocates n bytes with ferry_malloc and fills them with the block's pattern.
inline Item Make(size_t n) {
  void* p = ferry_malloc(n);
  if (p != nullptr) FillBlock(p, n);
  return {p, n};
}

// Checks a block's pattern, then frees it. Returns false on a mismatch.
inline bool CheckAndFree(const Item& item) {
  const bool ok = BlockIntact(item.p, item.n);
  ferry_free(item.p);
  return ok;
}

// Chunks of blocks handed from `producers` threads to consumers, bounded
// (32 chunks) so that producers cannot run away. Pop returns false once
// every producer said it is done (ProducerDone) and every chunk was taken.
class ChunkQueue {
 public:
  explicit ChunkQueue(int producers = 1) : open_producers_(producers) {}
  void Push(std::vector<Item> chunk) {
    std::unique_lock<std::mutex> lock(mu_);
    not_full_.wait(lock, [&] { return chunks_.size() < 32; });
    chunks_.push_back(std::move(chunk));
    not_empty_.notify_one();
  }
  bool Pop(std::vector<Item>* out) {
    std::unique_lock<std::mutex> lock(mu_);
    not_empty_.wait(lock, [&] { return !chunks_.empty() || open_producers_ == 0; });
    if (chunks_.empty()) return false;
    *out = std::move(chunks_.front());
    chunks_.pop_front();
    not_full_.notify_one();
    return true;
  }
  void ProducerDone() {
    std::lock_guard<std::mutex> lock(mu_);
    --open_producers_;
    not_empty_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable not_full_, not_empty_;
  std::deque<std::vector<Item>> chunks_;
  int open_producers_;
};

// Blocks passed between short-lived threads: takes up to `take` of the
// shared blocks (most of them other, perhaps exited, threads') and leaves
// every `every`-th of `mine` there in their place.
inline std::vector<Item> SwapWithShared(std::mutex& mu, std::vector<Item>& shared,
                                        const std::vector<Item>& mine, size_t take, size_t every) {
  std::vector<Item> theirs;
  std::lock_guard<std::mutex> lock(mu);
  for (size_t i = 0; i < take && !shared.empty(); ++i) {
    theirs.push_back(shared.back());
    shared.pop_back();
  }
  for (size_t i = 0; i < mine.size(); i += every) shared.push_back(mine[i]);
  return theirs;
}

// True when every byte of [p, p + n) is zero.
inline bool AllZero(const void* p, size_t n) {
  const unsigned char* b = static_cast<const unsigned char*>(p);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t word;
    memcpy(&word, b + i, 8);
    if (word != 0) return false;
  }
  for (; i < n; ++i)
    if (b[i] != 0) return false;
  return true;
}

inline bool IsAligned(const void* p, size_t alignment) {
  return reinterpret_cast<uintptr_t>(p) % alignment == 0;
}

// Hides a value from the optimiser, so that calls on a pointer the compiler
// can see is bad (freed, on the stack, huge sizes) are made as written and
// draw no warnings.
template <class T>
inline T Launder(T value) {
  asm volatile("" : "+r"(value));
  return value;
}

constexpr size_t kKiB = size_t{1} << 10;
constexpr size_t kMiB = size_t{1} << 20;

// Starts the reclaimer pool, where the settings let it run: one block freed
// by another thread, whose flush hands the batch on (a death test's child
// starts without a pool). Test code only: the thread allocates.
inline void StartThePool() {
  void* small = ferry_malloc(64);
  std::thread([small] {
    ferry_free(small);
    ferry_flush();
  }).join();
}

}  // namespace ferry_test

#endif  // FERRY_TESTS_TEST_UTIL_H_

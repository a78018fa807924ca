// override_test.cc — linked with //:ferry_override, so that malloc, the rest
// of the malloc family and every form of operator new/delete are ferry's for
// the whole program, the test framework included.
//
// Each entry point must work, return ferry memory (ferry_usable_size accepts
// it and agrees with malloc_usable_size), and keep the libc errno contract.
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "ferry.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

// C23 names that glibc 2.36's headers do not declare yet.
extern "C" {
void free_sized(void* ptr, size_t size) noexcept;
void free_aligned_sized(void* ptr, size_t alignment, size_t size) noexcept;
// glibc's other names for its allocator, which no header declares.
void* __libc_malloc(size_t size) noexcept;
void __libc_free(void* ptr) noexcept;
void* __libc_calloc(size_t count, size_t size) noexcept;
void* __libc_realloc(void* ptr, size_t size) noexcept;
void* __libc_memalign(size_t alignment, size_t size) noexcept;
void* __libc_valloc(size_t size) noexcept;
void* __libc_pvalloc(size_t size) noexcept;
void cfree(void* ptr) noexcept;
}

namespace {

using ferry_test::AllZero;
using ferry_test::BlockIntact;
using ferry_test::FillBlock;
using ferry_test::IsAligned;
using ferry_test::kKiB;
using ferry_test::kMiB;
using ferry_test::Launder;

constexpr size_t kPtrdiffMax = static_cast<size_t>(PTRDIFF_MAX);
const size_t kSizes[] = {0, 1, 7, 8, 16, 24, 100, 1000, 4096, 40000, 300 * kKiB, 3 * kMiB};
const size_t kImpossibleSizes[] = {SIZE_MAX, SIZE_MAX - 4095, kPtrdiffMax + 1, kPtrdiffMax};

size_t PageSize() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }

// ferry_usable_size aborts on memory ferry never returned, so getting an
// answer at all says the block is ferry's; malloc_usable_size must agree.
testing::AssertionResult IsFerryBlock(const void* p, size_t requested) {
  if (p == nullptr) return testing::AssertionFailure() << "null";
  const size_t ferry_usable = ferry_usable_size(p);
  const size_t libc_usable = malloc_usable_size(const_cast<void*>(p));
  if (ferry_usable != libc_usable) {
    return testing::AssertionFailure() << "ferry_usable_size " << ferry_usable
                                       << " != malloc_usable_size " << libc_usable;
  }
  if (ferry_usable < requested) {
    return testing::AssertionFailure() << "usable " << ferry_usable << " < requested " << requested;
  }
  return testing::AssertionSuccess();
}

size_t DefaultAlignment(size_t size) { return size % 16 == 0 ? 16 : 8; }

// For children that abort on purpose.
void NoCoreDumps() {
  struct rlimit no_core = {0, 0};
  setrlimit(RLIMIT_CORE, &no_core);
}

// ---------------------------------------------------------------------------
// The malloc family.

TEST(Override, MallocGivesFerryBlocksWithDefaultAlignment) {
  for (size_t n : kSizes) {
    void* p = malloc(n);
    ASSERT_TRUE(IsFerryBlock(p, n)) << "size " << n;
    if (n > 0) {
      EXPECT_TRUE(IsAligned(p, DefaultAlignment(n))) << "size " << n << " at " << p;
    }
    FillBlock(p, n);
    EXPECT_TRUE(BlockIntact(p, n));
    free(p);
  }
}

TEST(Override, MallocOfZeroGivesUniquePointers) {
  void* a = malloc(0);
  void* b = malloc(0);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_NE(a, b);
  free(a);
  free(b);
}

TEST(Override, CallocGivesZeroedFerryBlocks) {
  for (size_t n : kSizes) {
    // Dirty the memory first so calloc has something to clear.
    void* d = malloc(n);
    memset(d, 0xAB, malloc_usable_size(d));
    free(d);
    void* p = calloc(1, n);
    ASSERT_TRUE(IsFerryBlock(p, n)) << "size " << n;
    EXPECT_TRUE(AllZero(p, n)) << "size " << n;
    free(p);
    void* q = calloc(n, 3);
    ASSERT_TRUE(IsFerryBlock(q, 3 * n));
    EXPECT_TRUE(AllZero(q, 3 * n));
    free(q);
  }
}

TEST(Override, ReallocAndReallocarrayResizeFerryBlocks) {
  void* p = realloc(nullptr, 10);
  ASSERT_TRUE(IsFerryBlock(p, 10));
  memcpy(p, "0123456789", 10);
  for (size_t n : {size_t{100}, size_t{5000}, 600 * kKiB, 5 * kMiB, size_t{40}, size_t{10}}) {
    p = realloc(p, n);
    ASSERT_TRUE(IsFerryBlock(p, n)) << "size " << n;
    ASSERT_EQ(memcmp(p, "0123456789", 10), 0) << "size " << n;
  }
  p = reallocarray(p, 1000, 8);
  ASSERT_TRUE(IsFerryBlock(p, 8000));
  EXPECT_EQ(memcmp(p, "0123456789", 10), 0);
  // As glibc's: realloc(p, 0) frees p and returns NULL. The next block of
  // that size on this thread is p again (a page hands out its most
  // recently freed block first), which shows that p was freed, not kept.
  errno = 0;
  EXPECT_EQ(realloc(p, 0), nullptr);
  EXPECT_EQ(errno, 0) << "a free is no failure";
  void* again = malloc(8000);
  EXPECT_EQ(again, p) << "realloc(p, 0) did not free p";
  EXPECT_EQ(reallocarray(again, 0, 8), nullptr);
  void* minimal = realloc(nullptr, 0);  // malloc(0), as glibc's
  EXPECT_TRUE(IsFerryBlock(minimal, 0));
  free(minimal);
  void* r = reallocarray(nullptr, 30, 10);
  EXPECT_TRUE(IsFerryBlock(r, 300));
  free(r);
}

TEST(Override, AlignedEntryPointsGiveAlignedFerryBlocks) {
  for (size_t a : {size_t{8}, size_t{16}, size_t{64}, size_t{4096}, 64 * kKiB, 2 * kMiB, 64 * kMiB}) {
    for (size_t n : {size_t{1}, a, a + 1, size_t{3000}}) {
      void* p = aligned_alloc(a, n);
      EXPECT_TRUE(IsAligned(p, a)) << "aligned_alloc(" << a << ", " << n << ") = " << p;
      EXPECT_TRUE(IsFerryBlock(p, n));
      FillBlock(p, n);
      free(p);

      void* q = nullptr;
      ASSERT_EQ(posix_memalign(&q, a, n), 0);
      EXPECT_TRUE(IsAligned(q, a)) << "posix_memalign(" << a << ", " << n << ") = " << q;
      EXPECT_TRUE(IsFerryBlock(q, n));
      FillBlock(q, n);
      free(q);

      void* r = memalign(a, n);
      EXPECT_TRUE(IsAligned(r, a)) << "memalign(" << a << ", " << n << ") = " << r;
      EXPECT_TRUE(IsFerryBlock(r, n));
      FillBlock(r, n);
      free(r);
    }
  }
}

TEST(Override, VallocAndPvallocArePageAligned) {
  const size_t page = PageSize();
  for (size_t n : {size_t{1}, size_t{100}, page - 1, page, page + 1, 3 * kMiB + 5}) {
    void* p = valloc(n);
    EXPECT_TRUE(IsAligned(p, page)) << "valloc(" << n << ") = " << p;
    EXPECT_TRUE(IsFerryBlock(p, n));
    FillBlock(p, n);
    free(p);

    // pvalloc rounds the size up to whole pages.
    const size_t rounded = (n + page - 1) / page * page;
    void* q = pvalloc(n);
    EXPECT_TRUE(IsAligned(q, page)) << "pvalloc(" << n << ") = " << q;
    EXPECT_TRUE(IsFerryBlock(q, rounded));
    FillBlock(q, rounded);
    free(q);
  }
  void* z = pvalloc(0);
  EXPECT_NE(z, nullptr);
  EXPECT_TRUE(IsAligned(z, page));
  free(z);
}

TEST(Override, FreeSizedAndFreeAlignedSizedReleaseBlocks) {
  free_sized(nullptr, 0);
  free_aligned_sized(nullptr, 64, 0);
  for (size_t n : kSizes) {
    void* p = malloc(n);
    ASSERT_TRUE(IsFerryBlock(p, n));
    free_sized(p, n);
    for (size_t a : {size_t{16}, size_t{256}, size_t{8192}}) {
      const size_t rounded = (n + a - 1) / a * a;
      void* q = aligned_alloc(a, rounded);
      ASSERT_TRUE(IsFerryBlock(q, rounded));
      free_aligned_sized(q, a, rounded);
    }
  }
}

TEST(Override, MallocUsableSizeOfNullIsZero) { EXPECT_EQ(malloc_usable_size(nullptr), 0u); }

// As glibc's: 1 when memory went back to the OS, else 0.
TEST(Override, MallocTrimSaysWhetherItGaveMemoryBack) {
  std::vector<void*> blocks;
  for (int i = 0; i < 2000; ++i) blocks.push_back(malloc(2000));
  for (void* p : blocks) free(p);
  EXPECT_EQ(malloc_trim(0), 1) << "4 MB of emptied pages";
  EXPECT_EQ(malloc_trim(0), 0) << "nothing left to give back";
  void* p = malloc(64);
  EXPECT_TRUE(IsFerryBlock(p, 64));
  free(p);
}

TEST(Override, FerryAndLibcNamesReleaseEachOthersBlocks) {
  free(ferry_malloc(100));
  ferry_free(malloc(100));
  void* p = ferry_realloc(malloc(10), 20000);
  ASSERT_TRUE(IsFerryBlock(p, 20000));
  p = realloc(p, 30);
  ASSERT_TRUE(IsFerryBlock(p, 30));
  ferry_free(p);
  void* q = ferry_aligned_alloc(4096, 4096);
  free(q);
}

// Without these a block from __libc_malloc was glibc's, and ferry's free
// aborted on it as foreign; one of ferry's freed by __libc_free corrupted
// glibc's heap.
TEST(Override, GlibcsInternalNamesAreFerrys) {
  for (size_t n : kSizes) {
    void* p = __libc_malloc(n);
    ASSERT_TRUE(IsFerryBlock(p, n)) << "__libc_malloc(" << n << ")";
    memset(p, 0x5a, n);
    p = __libc_realloc(p, n + 100);
    ASSERT_TRUE(IsFerryBlock(p, n + 100)) << "__libc_realloc to " << n + 100;
    EXPECT_EQ(std::count(static_cast<char*>(p), static_cast<char*>(p) + n, 0x5a), static_cast<ptrdiff_t>(n));
    free(p);
    void* q = malloc(n);
    ASSERT_TRUE(IsFerryBlock(q, n));
    __libc_free(q);
    void* z = __libc_calloc(n, 3);
    ASSERT_TRUE(IsFerryBlock(z, n * 3)) << "__libc_calloc(" << n << ", 3)";
    EXPECT_TRUE(AllZero(z, n * 3));
    cfree(z);
  }
  __libc_free(nullptr);
  cfree(nullptr);
  void* a = __libc_memalign(256, 1000);
  ASSERT_TRUE(IsFerryBlock(a, 1000));
  EXPECT_TRUE(IsAligned(a, 256));
  ferry_free(a);
  a = __libc_memalign(24, 10);  // rounded up to 32, as memalign does
  ASSERT_TRUE(IsFerryBlock(a, 10));
  EXPECT_TRUE(IsAligned(a, 32));
  free(a);
  void* v = __libc_valloc(100);
  ASSERT_TRUE(IsFerryBlock(v, 100));
  EXPECT_TRUE(IsAligned(v, PageSize()));
  free(v);
  void* pv = __libc_pvalloc(PageSize() + 1);
  ASSERT_TRUE(IsFerryBlock(pv, 2 * PageSize()));
  EXPECT_TRUE(IsAligned(pv, PageSize()));
  free(pv);
  errno = 0;
  EXPECT_EQ(__libc_malloc(SIZE_MAX), nullptr);
  EXPECT_EQ(errno, ENOMEM);
}

TEST(Override, MallocStatsPrintsFerrysTable) {
  testing::internal::CaptureStderr();
  malloc_stats();
  const std::string printed = testing::internal::GetCapturedStderr();
  ASSERT_FALSE(printed.empty());
  EXPECT_NE(printed.substr(0, printed.find('\n')).find("ferry"), std::string::npos) << printed;
  EXPECT_NE(printed.find("remote_frees"), std::string::npos) << printed;
}

TEST(Override, StatisticsSeeLibcAllocations) {
  ferry_stats_t before, during, after;
  ferry_stats_get(&before);
  void* p = malloc(Launder(8 * kMiB));
  ASSERT_NE(p, nullptr);
  ferry_stats_get(&during);
  free(p);
  ferry_stats_get(&after);
  EXPECT_EQ(during.huge_allocs - before.huge_allocs, 1u);
  EXPECT_EQ(after.huge_frees - before.huge_frees, 1u);
}

// Detached threads that never allocate, in waves, so that glibc's cache of
// dead threads' stacks (40 MiB) overflows: an exiting thread then frees
// other dead threads' TLS (_dl_deallocate_tls) after its TSD destructor
// rounds (from the loader's code). Such a free must not give the thread a
// heap, which nothing would abandon: every heap a thread made or took over here is abandoned again
// (the slack: reclaimer threads the pool may start meanwhile keep theirs).
// Before the fix about half as many heaps as threads were lost (a review,
// 2026-12-04).
TEST(Override, ThreadsThatNeverAllocateTakeNoHeapForTheLibrarysFreesAtExit) {
  constexpr int kWaves = 40, kPerWave = 16;
  static std::atomic<int> done{0};
  done = 0;
  ferry_stats_t before, after;
  ferry_stats_get(&before);
  pthread_attr_t attr;
  ASSERT_EQ(pthread_attr_init(&attr), 0);
  ASSERT_EQ(pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED), 0);
  // 8 MiB whatever `ulimit -s` says: six dead threads' stacks fill the cache.
  ASSERT_EQ(pthread_attr_setstacksize(&attr, size_t{8} << 20), 0);
  for (int wave = 0; wave < kWaves; ++wave) {
    for (int k = 0; k < kPerWave; ++k) {
      pthread_t thread;
      ASSERT_EQ(pthread_create(&thread, &attr, [](void*) -> void* {
        done.fetch_add(1);
        return nullptr;
      }, nullptr), 0);
    }
    while (done.load() < (wave + 1) * kPerWave) usleep(100);
    usleep(20000);  // their exits, past the count
  }
  pthread_attr_destroy(&attr);
  usleep(100000);
  ferry_stats_get(&after);
  const int64_t taken = static_cast<int64_t>((after.heaps_created - before.heaps_created) +
                                             (after.heaps_reused - before.heaps_reused));
  const int64_t given_back = static_cast<int64_t>(after.heaps_abandoned - before.heaps_abandoned);
  ASSERT_GT(after.remote_frees - before.remote_frees, 0u) << "no thread's TLS was freed: the test saw nothing";
  EXPECT_LE(taken - given_back, 4) << "heaps taken by exiting threads and never abandoned (made "
                                   << after.heaps_created - before.heaps_created << ", taken over "
                                   << after.heaps_reused - before.heaps_reused << ", abandoned " << given_back
                                   << ", of " << kWaves * kPerWave << " threads)";
}

// ---------------------------------------------------------------------------
// errno and return values of the libc names.

TEST(Override, MallocOfImpossibleSizeFailsWithEnomem) {
  for (size_t n : kImpossibleSizes) {
    errno = 0;
    void* p = malloc(Launder(n));
    EXPECT_EQ(p, nullptr) << n;
    EXPECT_EQ(errno, ENOMEM) << n;
    free(p);
  }
}

TEST(Override, CallocOverflowFailsWithEnomem) {
  const std::pair<size_t, size_t> cases[] = {
      {SIZE_MAX, 2}, {2, SIZE_MAX}, {size_t{1} << 32, size_t{1} << 32}, {kPtrdiffMax, 1}};
  for (const auto& [count, size] : cases) {
    errno = 0;
    void* p = calloc(Launder(count), Launder(size));
    EXPECT_EQ(p, nullptr) << count << " x " << size;
    EXPECT_EQ(errno, ENOMEM) << count << " x " << size;
    free(p);
  }
}

TEST(Override, FailedReallocAndReallocarrayLeaveTheOldBlockIntact) {
  for (size_t n : {size_t{64}, 100 * kKiB, 3 * kMiB}) {
    void* p = malloc(n);
    ASSERT_NE(p, nullptr);
    FillBlock(p, n);
    for (size_t impossible : kImpossibleSizes) {
      errno = 0;
      EXPECT_EQ(realloc(p, Launder(impossible)), nullptr) << impossible;
      EXPECT_EQ(errno, ENOMEM);
      ASSERT_TRUE(BlockIntact(p, n));
    }
    const std::pair<size_t, size_t> overflowing[] = {
        {SIZE_MAX, 2}, {2, SIZE_MAX}, {size_t{1} << 32, size_t{1} << 32}, {SIZE_MAX / 8 + 1, 8}};
    for (const auto& [count, size] : overflowing) {
      errno = 0;
      EXPECT_EQ(reallocarray(p, Launder(count), Launder(size)), nullptr) << count << " x " << size;
      EXPECT_EQ(errno, ENOMEM) << count << " x " << size;
      ASSERT_TRUE(BlockIntact(p, n));
    }
    free(p);
  }
  errno = 0;
  EXPECT_EQ(reallocarray(nullptr, Launder(SIZE_MAX), 2), nullptr);
  EXPECT_EQ(errno, ENOMEM);
}

TEST(Override, BadAlignmentsFailWithEinval) {
  for (size_t a : {size_t{0}, size_t{3}, size_t{24}, size_t{100}, kMiB + 16, SIZE_MAX}) {
    errno = 0;
    void* p = aligned_alloc(Launder(a), 64);
    EXPECT_EQ(p, nullptr) << "aligned_alloc alignment " << a;
    EXPECT_EQ(errno, EINVAL) << "aligned_alloc alignment " << a;
    free(p);
  }
  // memalign, as glibc's, rounds an alignment up to a power of two and
  // fails only where there is none to round to.
  for (size_t a : {SIZE_MAX, SIZE_MAX / 2 + 2}) {
    errno = 0;
    void* p = memalign(Launder(a), 64);
    EXPECT_EQ(p, nullptr) << "memalign alignment " << a;
    EXPECT_EQ(errno, EINVAL) << "memalign alignment " << a;
    free(p);
  }
  // posix_memalign also wants a multiple of sizeof(void*), returns the error
  // and leaves errno and *out alone.
  for (size_t a : {size_t{0}, size_t{1}, size_t{2}, size_t{4}, size_t{3}, size_t{24}, SIZE_MAX}) {
    void* sentinel = reinterpret_cast<void*>(uintptr_t{0x1234});
    void* out = sentinel;
    errno = EDOM;
    EXPECT_EQ(posix_memalign(&out, Launder(a), 64), EINVAL) << "posix_memalign alignment " << a;
    EXPECT_EQ(out, sentinel);
    EXPECT_EQ(errno, EDOM);
  }
}

TEST(Override, MemalignRoundsAnAlignmentUpToAPowerOfTwoAsGlibcDoes) {
  struct Case {
    size_t asked;
    size_t given;
  };
  // (0 and 1: as malloc's, at least 8.)
  for (Case c : {Case{0, 8}, Case{1, 8}, Case{3, 4}, Case{24, 32}, Case{100, 128}, Case{4095, 4096},
                 Case{kMiB + 16, 2 * kMiB}, Case{6 * kMiB, 8 * kMiB}}) {
    for (size_t n : {size_t{1}, size_t{100}, size_t{5000}, 3 * kMiB}) {
      errno = 0;
      char* p = static_cast<char*>(memalign(Launder(c.asked), n));
      ASSERT_NE(p, nullptr) << "memalign(" << c.asked << ", " << n << ")";
      EXPECT_TRUE(IsAligned(p, c.given)) << "memalign(" << c.asked << ", " << n << ") = " << static_cast<void*>(p);
      EXPECT_GE(malloc_usable_size(p), n);
      p[0] = 1;
      p[n - 1] = 2;
      free(p);
    }
  }
  // Rounded up to 2^63, or asked for it: no block can be that aligned.
  for (size_t a : {SIZE_MAX / 2, SIZE_MAX / 2 + 1}) {
    errno = 0;
    EXPECT_EQ(memalign(Launder(a), 64), nullptr) << a;
    EXPECT_EQ(errno, ENOMEM) << a;
  }
}

TEST(Override, AlignedEntryPointsFailWithEnomemForImpossibleSizes) {
  for (size_t n : kImpossibleSizes) {
    errno = 0;
    EXPECT_EQ(aligned_alloc(64, Launder(n)), nullptr) << n;
    EXPECT_EQ(errno, ENOMEM) << n;
    errno = 0;
    EXPECT_EQ(memalign(4096, Launder(n)), nullptr) << n;
    EXPECT_EQ(errno, ENOMEM) << n;
    errno = 0;
    EXPECT_EQ(valloc(Launder(n)), nullptr) << n;
    EXPECT_EQ(errno, ENOMEM) << n;
    errno = 0;
    EXPECT_EQ(pvalloc(Launder(n)), nullptr) << n;
    EXPECT_EQ(errno, ENOMEM) << n;
    void* out = nullptr;
    errno = EDOM;
    EXPECT_EQ(posix_memalign(&out, 64, Launder(n)), ENOMEM) << n;
    EXPECT_EQ(out, nullptr);
    EXPECT_EQ(errno, EDOM);
  }
}

// ---------------------------------------------------------------------------
// operator new and delete.

struct alignas(64) CacheLine {
  uint64_t words[8];
};
struct alignas(1024) Kilo {
  unsigned char bytes[1024];
};

TEST(Override, EveryOperatorNewAndDeleteFormUsesFerry) {
  const std::nothrow_t& nt = std::nothrow;
  for (size_t n : {size_t{1}, size_t{24}, size_t{100}, size_t{4096}, 300 * kKiB, 3 * kMiB}) {
    void* p;
    p = ::operator new(n);
    EXPECT_TRUE(IsFerryBlock(p, n));
    EXPECT_TRUE(IsAligned(p, DefaultAlignment(n)));
    ::operator delete(p);
    p = ::operator new(n);
    ::operator delete(p, n);
    p = ::operator new[](n);
    EXPECT_TRUE(IsFerryBlock(p, n));
    ::operator delete[](p);
    p = ::operator new[](n);
    ::operator delete[](p, n);
    p = ::operator new(n, nt);
    EXPECT_TRUE(IsFerryBlock(p, n));
    ::operator delete(p, nt);
    p = ::operator new[](n, nt);
    EXPECT_TRUE(IsFerryBlock(p, n));
    ::operator delete[](p, nt);

    for (size_t a : {size_t{32}, size_t{64}, size_t{4096}, kMiB, 4 * kMiB}) {
      const std::align_val_t al{a};
      p = ::operator new(n, al);
      EXPECT_TRUE(IsAligned(p, a)) << n << " " << a;
      EXPECT_TRUE(IsFerryBlock(p, n));
      ::operator delete(p, al);
      p = ::operator new(n, al);
      ::operator delete(p, n, al);
      p = ::operator new[](n, al);
      EXPECT_TRUE(IsAligned(p, a)) << n << " " << a;
      EXPECT_TRUE(IsFerryBlock(p, n));
      ::operator delete[](p, al);
      p = ::operator new[](n, al);
      ::operator delete[](p, n, al);
      p = ::operator new(n, al, nt);
      EXPECT_TRUE(IsAligned(p, a)) << n << " " << a;
      EXPECT_TRUE(IsFerryBlock(p, n));
      ::operator delete(p, al, nt);
      p = ::operator new[](n, al, nt);
      EXPECT_TRUE(IsAligned(p, a)) << n << " " << a;
      EXPECT_TRUE(IsFerryBlock(p, n));
      ::operator delete[](p, al, nt);
    }
  }
  ::operator delete(nullptr);
  ::operator delete[](nullptr);
  ::operator delete(nullptr, std::align_val_t{64});
}

TEST(Override, NewExpressionsUseFerryForEveryType) {
  int* ints = new int[1000];
  EXPECT_TRUE(IsFerryBlock(ints, 4000));
  delete[] ints;
  auto* line = new CacheLine{};
  EXPECT_TRUE(IsAligned(line, 64));
  EXPECT_TRUE(IsFerryBlock(line, sizeof(CacheLine)));
  delete line;
  auto* kilos = new Kilo[7];
  EXPECT_TRUE(IsAligned(kilos, 1024));
  delete[] kilos;
  auto s = std::make_unique<std::string>(1000, 'x');
  EXPECT_TRUE(IsFerryBlock(s->data(), 1000));
  std::vector<CacheLine> lines(1000);
  EXPECT_TRUE(IsAligned(lines.data(), 64));
  EXPECT_TRUE(IsFerryBlock(lines.data(), 64000));
}

TEST(Override, OperatorNewOfImpossibleSizeThrowsAndNothrowFormsReturnNull) {
  for (size_t n : kImpossibleSizes) {
    EXPECT_THROW(::operator delete(::operator new(Launder(n))), std::bad_alloc) << n;
    EXPECT_THROW(::operator delete[](::operator new[](Launder(n))), std::bad_alloc) << n;
    EXPECT_THROW(::operator delete(::operator new(Launder(n), std::align_val_t{64}), std::align_val_t{64}),
                 std::bad_alloc)
        << n;
    EXPECT_THROW(
        ::operator delete[](::operator new[](Launder(n), std::align_val_t{4096}), std::align_val_t{4096}),
        std::bad_alloc)
        << n;
    EXPECT_EQ(::operator new(Launder(n), std::nothrow), nullptr) << n;
    EXPECT_EQ(::operator new[](Launder(n), std::nothrow), nullptr) << n;
    EXPECT_EQ(::operator new(Launder(n), std::align_val_t{64}, std::nothrow), nullptr) << n;
    EXPECT_EQ(::operator new[](Launder(n), std::align_val_t{64}, std::nothrow), nullptr) << n;
  }
}

std::atomic<int> new_handler_calls{0};

void HandlerThatGivesUpOnTheThirdCall() {
  if (++new_handler_calls == 3) std::set_new_handler(nullptr);
}

TEST(Override, OperatorNewCallsTheNewHandlerBeforeItThrows) {
  new_handler_calls = 0;
  std::set_new_handler(HandlerThatGivesUpOnTheThirdCall);
  EXPECT_THROW(::operator delete(::operator new(Launder(SIZE_MAX))), std::bad_alloc);
  EXPECT_EQ(new_handler_calls.load(), 3);
  new_handler_calls = 0;
  std::set_new_handler(HandlerThatGivesUpOnTheThirdCall);
  EXPECT_EQ(::operator new(Launder(SIZE_MAX), std::nothrow), nullptr);
  EXPECT_EQ(new_handler_calls.load(), 3);
  std::set_new_handler(nullptr);
}

// ---------------------------------------------------------------------------
// The whole program runs on ferry.

TEST(Override, ContainersMovedBetweenThreadsWork) {
  std::vector<std::map<int, std::string>> maps(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 5000; ++i) maps[t][i] = std::string(static_cast<size_t>(i % 200), char('a' + t));
    });
  }
  for (std::thread& t : threads) t.join();
  threads.clear();
  // Each thread destroys another thread's map: all remote frees.
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      auto& m = maps[(t + 1) % 4];
      for (const auto& [k, v] : m) ASSERT_EQ(v.size(), static_cast<size_t>(k % 200));
      m.clear();
      ferry_flush();
    });
  }
  for (std::thread& t : threads) t.join();
}

TEST(Override, ForkWhileBackgroundReclaimersRunLeavesWorkingProcesses) {
  for (int i = 0; i < 10; ++i) {
    // Remote frees before the fork, so a reclaimer may be busy when it comes.
    std::vector<void*> blocks;
    for (int j = 0; j < 2000; ++j) blocks.push_back(malloc(64 + j % 512));
    std::thread freer([&] {
      for (void* p : blocks) free(p);
    });
    const pid_t pid = fork();
    ASSERT_NE(pid, -1);
    if (pid == 0) {
      alarm(20);  // a hang in the child must not hang the test
      NoCoreDumps();
      std::vector<void*> mine;
      for (int j = 0; j < 1000; ++j) {
        mine.push_back(malloc(100 + j));
        memset(mine.back(), 1, 100 + j);
      }
      std::thread([&] {
        for (void* p : mine) free(p);
        ferry_flush();
      }).join();
      void* p = malloc(100);
      free(p);
      _exit(0);
    }
    freer.join();
    ferry_flush();
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status)) << "child of fork " << i << " died: signal "
                                   << (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    EXPECT_EQ(WEXITSTATUS(status), 0);
  }
}

// Proof that free itself is ferry's: glibc would not name the pointer.
TEST(OverrideDeath, FreeOfAPointerFerryNeverReturnedIsReportedByFerry) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        NoCoreDumps();
        char on_stack[64];
        memset(on_stack, 0, sizeof(on_stack));
        free(Launder(static_cast<void*>(on_stack + 8)));
        exit(0);
      },
      testing::KilledBySignal(SIGABRT), "ferry: free\\(0x[0-9a-f]+\\): pointer not allocated by ferry");
}

// realloc(p, 0) is a free since 2026-12-04: a bad pointer or a second free
// through it must still be reported, with realloc named, not dropped.
TEST(OverrideDeath, ReallocToZeroOfAFreedBlockIsReportedByFerry) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        NoCoreDumps();
        void* p = malloc(64);
        free(p);
        void* q = realloc(Launder(p), 0);
        fprintf(stderr, "realloc(%p, 0) returned %p\n", p, q);
        exit(0);
      },
      testing::KilledBySignal(SIGABRT), "ferry: realloc\\(0x[0-9a-f]+\\): double free \\(block already free\\)");
}

// A size the block cannot hold is reported under the name it came by.
TEST(OverrideDeath, FreeAlignedSizedOfTooLargeASizeIsReportedUnderItsOwnName) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        NoCoreDumps();
        void* p = aligned_alloc(64, 64);
        free_aligned_sized(Launder(p), 64, 4096);
        exit(0);
      },
      testing::KilledBySignal(SIGABRT), "ferry: free_aligned_sized\\(0x[0-9a-f]+\\): size 4096 is larger than the block");
}

TEST(OverrideDeath, ReallocToZeroOfAPointerFerryNeverReturnedIsReportedByFerry) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        NoCoreDumps();
        char on_stack[64];
        memset(on_stack, 0, sizeof(on_stack));
        void* q = realloc(Launder(static_cast<void*>(on_stack + 16)), 0);
        fprintf(stderr, "realloc(stack, 0) returned %p\n", q);
        exit(0);
      },
      testing::KilledBySignal(SIGABRT), "ferry: realloc\\(0x[0-9a-f]+\\): pointer not allocated by ferry");
}

TEST(OverrideDeath, DoubleDeleteIsReportedByFerry) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        NoCoreDumps();
        std::string* s = new std::string("x");
        delete s;
        ::operator delete(Launder(static_cast<void*>(s)));
        exit(0);
      },
      testing::KilledBySignal(SIGABRT), "ferry: delete\\(0x[0-9a-f]+\\): double free \\(block already free\\)");
}

}  // namespace

// preload_probe_test.cc — a test program that knows nothing of ferry: it is
// linked against neither //:ferry nor ferry.h, and exercises malloc, the
// malloc family and new/delete through ordinary code. preload_test.sh runs
// it under LD_PRELOAD=libferry.so; there, with FERRY_EXPECT_PRELOADED=1 in
// the environment, it also checks through dlsym that ferry is in the process
// and that malloc's blocks are ferry's. Run alone, it passes on glibc.
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "gtest/gtest.h"

namespace {

bool ExpectPreloaded() {
  const char* v = getenv("FERRY_EXPECT_PRELOADED");
  return v != nullptr && strcmp(v, "1") == 0;
}

using UsableSizeFn = size_t (*)(const void*);

UsableSizeFn FerryUsableSize() {
  return reinterpret_cast<UsableSizeFn>(dlsym(RTLD_DEFAULT, "ferry_usable_size"));
}

TEST(Preload, FerryIsInTheProcessExactlyWhenPreloaded) {
  UsableSizeFn usable = FerryUsableSize();
  if (!ExpectPreloaded()) {
    EXPECT_EQ(usable, nullptr) << "ferry found without LD_PRELOAD";
    return;
  }
  ASSERT_NE(usable, nullptr) << "ferry_usable_size not found: is libferry.so preloaded?";
  // ferry_usable_size aborts on memory ferry never returned: an answer at all
  // says malloc's block is ferry's.
  for (size_t n : {size_t{1}, size_t{100}, size_t{5000}, size_t{300000}, size_t{5} << 20}) {
    void* p = malloc(n);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(usable(p), malloc_usable_size(p));
    EXPECT_GE(usable(p), n);
    free(p);
  }
  auto s = std::make_unique<std::string>(500, 'q');
  EXPECT_GE(usable(s->data()), 500u);
}

TEST(Preload, MallocFamilyKeepsItsContract) {
  void* p = calloc(1000, 4);
  ASSERT_NE(p, nullptr);
  for (size_t i = 0; i < 4000; ++i) ASSERT_EQ(static_cast<unsigned char*>(p)[i], 0);
  memset(p, 7, 4000);
  p = realloc(p, 1 << 22);
  ASSERT_NE(p, nullptr);
  for (size_t i = 0; i < 4000; ++i) ASSERT_EQ(static_cast<unsigned char*>(p)[i], 7);
  volatile size_t too_big = SIZE_MAX;
  errno = 0;
  EXPECT_EQ(realloc(p, too_big), nullptr);
  EXPECT_EQ(errno, ENOMEM);
  free(p);
  void* q = nullptr;
  ASSERT_EQ(posix_memalign(&q, 4096, 100), 0);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(q) % 4096, 0u);
  free(q);
  q = aligned_alloc(1 << 20, 1 << 20);
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(q) % (1 << 20), 0u);
  free(q);
  errno = 0;
  EXPECT_EQ(malloc(too_big), nullptr);
  EXPECT_EQ(errno, ENOMEM);
}

// libferry.so throws std::bad_alloc through the C++ ABI by hand and runs a
// nothrow form's new-handler under the C++ runtime's own catch (it does not
// link libstdc++); the program must not be able to tell.
int g_handler_calls = 0;
void GiveUpOnTheThirdCall() {
  if (++g_handler_calls == 3) std::set_new_handler(nullptr);
}
void ThrowBadAlloc() { throw std::bad_alloc(); }

TEST(Preload, OperatorNewThrowsBadAllocAndNothrowFormsReturnNull) {
  volatile size_t too_big = SIZE_MAX / 2;
  EXPECT_THROW(::operator delete(::operator new(too_big)), std::bad_alloc);
  EXPECT_THROW(::operator delete[](::operator new[](too_big, std::align_val_t{64}), std::align_val_t{64}),
               std::bad_alloc);
  try {
    ::operator delete(::operator new(too_big));
    ADD_FAILURE() << "no exception";
  } catch (const std::exception& e) {
    EXPECT_STREQ(e.what(), "std::bad_alloc");  // caught as its base, what() through the vtable
  }
  g_handler_calls = 0;
  std::set_new_handler(GiveUpOnTheThirdCall);
  EXPECT_THROW(::operator delete(::operator new(too_big)), std::bad_alloc);
  EXPECT_EQ(g_handler_calls, 3);
  g_handler_calls = 0;
  std::set_new_handler(GiveUpOnTheThirdCall);
  EXPECT_EQ(::operator new(too_big, std::nothrow), nullptr);
  EXPECT_EQ(g_handler_calls, 3);
  std::set_new_handler(ThrowBadAlloc);
  EXPECT_EQ(::operator new(too_big, std::nothrow), nullptr);
  EXPECT_EQ(::operator new[](too_big, std::align_val_t{128}, std::nothrow), nullptr);
  std::set_new_handler(nullptr);
  EXPECT_EQ(::operator new(too_big, std::nothrow), nullptr);
}

TEST(Preload, ThreadsShareContainersAndFreeEachOthersMemory) {
  constexpr int kThreads = 4;
  std::vector<std::unordered_map<std::string, std::vector<int>>> maps(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20000; ++i) {
        maps[t][std::to_string(i * 7 + t)] = std::vector<int>(static_cast<size_t>(i % 64), i);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  threads.clear();
  std::mutex mu;
  long total = 0;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      auto& m = maps[(t + 1) % kThreads];
      long sum = 0;
      for (const auto& [k, v] : m) sum += static_cast<long>(v.size()) + static_cast<long>(k.size());
      m.clear();
      std::lock_guard<std::mutex> lock(mu);
      total += sum;
    });
  }
  for (std::thread& t : threads) t.join();
  long expected = 0;
  for (int t = 0; t < kThreads; ++t)
    for (int i = 0; i < 20000; ++i)
      expected += i % 64 + static_cast<long>(std::to_string(i * 7 + t).size());
  EXPECT_EQ(total, expected);
}

TEST(Preload, ShortLivedThreadsComeAndGo) {
  for (int wave = 0; wave < 50; ++wave) {
    std::vector<std::thread> threads;
    std::vector<std::string*> handed(4);
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        std::map<int, std::string> m;
        for (int i = 0; i < 300; ++i) m[i] = std::string(static_cast<size_t>(i), 'z');
        handed[t] = new std::string(1000, static_cast<char>('a' + t));
      });
    }
    for (std::thread& t : threads) t.join();
    for (int t = 0; t < 4; ++t) {
      ASSERT_EQ((*handed[t])[999], static_cast<char>('a' + t));
      delete handed[t];
    }
  }
}

}  // namespace

// pool_test_util.h — helpers for the tests of the reclaimer pool
// (reclaimer_test.cc, fork_test.cc, rss_test.cc): what the environment asked
// of the pool, which threads the process has now, resident memory, waiting
// for a condition with a deadline, and how much work to do under a
// sanitizer.
//
// Unlike test_util.h these helpers allocate (std::string, std::vector from
// the C++ library, which in API-mode tests is glibc's malloc, not ferry's),
// so call them from test code, never from inside a content check.
#ifndef FERRY_TESTS_POOL_TEST_UTIL_H_
#define FERRY_TESTS_POOL_TEST_UTIL_H_

#include <dirent.h>
#include <sched.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "ferry.h"
#include "tests/test_util.h"

namespace ferry_test {

// An integer environment variable, or `fallback` when unset or empty.
inline long EnvInt(const char* name, long fallback) {
  const char* value = getenv(name);
  if (value == nullptr || *value == '\0') return fallback;
  return strtol(value, nullptr, 10);
}

// The remote frees per batch the allocator was told to use (FERRY_BATCH).
inline size_t BatchSize() {
  const long batch = EnvInt("FERRY_BATCH", 256);
  return batch >= 1 && batch <= 4096 ? static_cast<size_t>(batch) : 256;
}

inline bool BackendIsTbb() {
  const char* value = getenv("FERRY_RECLAIMER_BACKEND");
  return value != nullptr && strcmp(value, "tbb") == 0;
}

// CPUs in this process's affinity mask.
inline int AffinityCpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return 1;
  return std::max(1, CPU_COUNT(&set));
}

// The number of reclaimer threads FERRY_RECLAIMERS asks for. For the default
// (-1: half the usable CPUs, 1..4) this uses the affinity mask only; a
// cgroup CPU quota can make ferry pick fewer, so callers that run with the
// default should accept 1..this.
inline int ExpectedReclaimers() {
  const long n = EnvInt("FERRY_RECLAIMERS", -1);
  if (n == 0) return 0;
  if (n > 0 && n <= 64) return static_cast<int>(n);
  return std::clamp(AffinityCpus() / 2, 1, 4);
}

inline bool ReclaimersFromDefault() { return EnvInt("FERRY_RECLAIMERS", -1) < 0; }

// Calls visit(task, name) for every thread of this process that
// /proc/self/task shows: its directory there, and its name (comm).
template <typename Visit>
void ForEachThread(Visit visit) {
  DIR* dir = opendir("/proc/self/task");
  if (dir == nullptr) return;
  while (dirent* entry = readdir(dir)) {
    if (entry->d_name[0] == '.') continue;
    const std::string task = std::string("/proc/self/task/") + entry->d_name;
    std::ifstream comm(task + "/comm");
    std::string name;
    if (comm && std::getline(comm, name)) visit(task, name);
  }
  closedir(dir);
}

// Names (comm) of every thread of this process, as /proc/self/task shows them.
inline std::vector<std::string> ThreadNames() {
  std::vector<std::string> names;
  ForEachThread([&](const std::string&, const std::string& name) { names.push_back(name); });
  return names;
}

inline int TaskCount() { return static_cast<int>(ThreadNames().size()); }

inline bool IsReclaimerName(const std::string& name) {
  return name.rfind("ferry-reclaim", 0) == 0;
}

// Threads named ferry-reclaim*.
inline int ReclaimerThreadCount() {
  int count = 0;
  for (const std::string& name : ThreadNames()) count += IsReclaimerName(name);
  return count;
}

// The names of this process's ferry-reclaim* threads, sorted, joined by spaces.
inline std::string ReclaimerNames() {
  std::vector<std::string> names;
  for (const std::string& name : ThreadNames()) {
    if (IsReclaimerName(name)) names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  std::string joined;
  for (const std::string& name : names) joined += (joined.empty() ? "" : " ") + name;
  return joined;
}

// "ferry-reclaim0 ferry-reclaim1 ... ferry-reclaim<n-1>" (sorted as strings).
inline std::string ExpectedReclaimerNames(int n) {
  std::vector<std::string> names;
  for (int i = 0; i < n; ++i) names.push_back("ferry-reclaim" + std::to_string(i));
  std::sort(names.begin(), names.end());
  std::string joined;
  for (const std::string& name : names) joined += (joined.empty() ? "" : " ") + name;
  return joined;
}

// Every thread's name, for failure messages.
inline std::string AllThreadNames() {
  std::string joined;
  for (const std::string& name : ThreadNames()) joined += (joined.empty() ? "" : ", ") + name;
  return joined;
}

// Polls `done` every `step` until it holds or `timeout` passes; returns its
// last value.
template <class Predicate>
bool WaitFor(Predicate done, std::chrono::milliseconds timeout,
             std::chrono::milliseconds step = std::chrono::milliseconds(5)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (done()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return done();
    std::this_thread::sleep_for(step);
  }
}

// A thread that never allocates (a server's background thread waiting for
// jobs): a pthread_create start routine that sleeps 10 ms at a time until
// the std::atomic<bool> it is given is set.
inline void* WaitWithoutAllocating(void* stop) {
  while (!static_cast<std::atomic<bool>*>(stop)->load(std::memory_order_acquire)) {
    timespec pause{0, 10 * 1000 * 1000};
    nanosleep(&pause, nullptr);
  }
  return nullptr;
}

inline ferry_stats_t Stats() {
  ferry_stats_t s;
  ferry_stats_get(&s);
  return s;
}

// Resident memory of this process in bytes (/proc/self/statm, second field).
inline size_t ResidentBytes() {
  FILE* f = fopen("/proc/self/statm", "r");
  if (f == nullptr) return 0;
  unsigned long size = 0, resident = 0;
  const int got = fscanf(f, "%lu %lu", &size, &resident);
  fclose(f);
  if (got != 2) return 0;
  return static_cast<size_t>(resident) * static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

}  // namespace ferry_test

#endif  // FERRY_TESTS_POOL_TEST_UTIL_H_

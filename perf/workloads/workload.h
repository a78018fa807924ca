// perf/workloads/workload.h — what every whole-program workload shares.
//
// The workloads are small, deterministic programs that the comparison driver
// (perf/compare.cc) runs once per process under each allocator via LD_PRELOAD.
// They may call only the standard malloc family, operator new/delete and
// std::thread, so that every allocator runs the very same binary. Each one
// checks its own objects (a tag at both ends, a fill pattern in between, and a
// full scan of every 16th object) and fails with exit status 3 on the first
// mismatch, so a broken allocator cannot post a fast time.
//
// Adding a workload: write perf/workloads/<name>.cc defining
// `Result ferry::perf::<name>::Run(const Options&)` and add one line to
// FERRY_WORKLOADS below. The BUILD globs the sources; the driver asks the
// binary for its list (`workload --list`), so nothing else changes.
//
// FERRY_SOAK_PROGRAMS are built the same way but are no benchmarks: they
// stress paths the workloads do not take (fork, thread exit) and only the
// soak (perf/soak.cc, `workload --list-soak`) runs them; compare never does.
#ifndef FERRY_PERF_WORKLOADS_WORKLOAD_H_
#define FERRY_PERF_WORKLOADS_WORKLOAD_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

// The workloads, one line each: name, whether --pairs sizes it (the driver
// then runs it once per pair count and reports each as NAME/N), then one
// line of what it models.
#define FERRY_WORKLOADS(X)                                                     \
  X(churn, false, "1 thread: free a random slot of a working set, allocate a " \
                  "new random size (8-1024 B, mostly small), with bursts")     \
  X(prodcons, true, "producer threads allocate 16-256 B objects, consumer "    \
                    "threads free them in chunks of 256: every free is remote") \
  X(larson, false, "4 threads replace random slots of a working set "          \
                   "(8-1000 B); every 40000 steps a thread hands its slots to " \
                   "a fresh thread and exits (larson)")                         \
  X(mstress, false, "rounds of 4 short-lived threads churn 8 B-8 KiB objects " \
                    "and swap some through a shared transfer array, so "       \
                    "objects outlive the threads that made them (mstress)")     \
  X(onefree, false, "4 producers replace objects of a steady 64 MiB live set; " \
                    "one thread does every free; RSS/live sampled every 50 ms") \
  X(cscratch, false, "objects made on the main thread are freed by workers "   \
                     "that then allocate and write their own 8 B objects: "    \
                     "passive false sharing shows as time (cache-scratch)")    \
  X(realloc, false, "1 thread grows 256 objects from 16 B to 4-64 KiB by "      \
                    "realloc (doubling and linear steps, some shrinks), "      \
                    "contents checked after each")                             \
  X(medium, false, "1 thread: free a random slot of a working set, allocate " \
                   "a new 1-64 KiB object (log-uniform)")                      \
  X(large, false, "1 thread replaces a random one of 20 buffers with a new "  \
                  "zeroed one of 5-25 MiB (malloc-large)")                     \
  X(idle, false, "one thread allocates 512 MiB in 16 B-16 KiB blocks, another " \
                 "frees them all, then both idle 3 s; RSS every 100 ms")      \
  X(phases, false, "2 threads build 64 MiB sets of 64 B-4 KiB objects and "    \
                   "tear them down, a few freed by the other thread, 12 "     \
                   "rounds; shows whether freed memory is reused or "        \
                   "faulted in again")                                      \
  X(teardown, true, "threads each build a set of 2000 objects of 8-1024 B "   \
                    "and free it newest first, again and again, so pages "    \
                    "empty every round on every thread (sh6bench)")

// The soak's programs, in the same form as FERRY_WORKLOADS.
#define FERRY_SOAK_PROGRAMS(X)                                                 \
  X(forkloop, true, "2 x pairs threads allocate and free across threads "      \
                    "while the main thread forks again and again; each child " \
                    "frees what the parent's threads made, churns across its " \
                    "own threads and exits; a child that hangs is a failure")  \
  X(threadchurn, true, "threads come and go (pairs + 2 alive at a time), "     \
                       "each exiting with blocks still live, blocks it "       \
                       "freed of others still in its batch, and blocks freed " \
                       "by others after it is gone; RSS must not grow")

namespace ferry::perf {

// Exit status of a workload whose objects were found corrupted.
inline constexpr int kExitCorrupted = 3;
// Exit status of a soak program whose child process failed or hung.
inline constexpr int kExitChildFailed = 5;

struct Options {
  double scale = 1.0;    // multiplies the amount of work; 1.0 = full size
  uint64_t seed = 42;    // every random choice derives from this
  int pairs = 1;         // producer/consumer pairs (or thread pairs) to use
  bool pin = true;       // pin threads to CPUs (PinThisThread)
  bool verbose = false;  // extra detail on stderr
};

// What a workload hands back: how much it did and how long its timed phase
// took. The binary prints it as one `RESULT ...` line for the driver, the
// extras as one `EXTRA key=value ...` line (the driver knows how to show
// some keys, see perf/compare.cc) and the series as one `SERIES ...` line.
struct Result {
  Result(uint64_t ops_in, const char* unit_in, double seconds_in)
      : ops(ops_in), unit(unit_in), seconds(seconds_in) {}
  uint64_t ops = 0;      // the unit named below (one free+malloc, one free...)
  const char* unit = "ops";
  double seconds = 0;    // the timed phase, measured inside the process
  // Figures other than a rate, e.g. {"rss_live", 1.31}; keys are [a-z0-9_].
  std::vector<std::pair<std::string, double>> extras;
  // A time series, e.g. "0.0:512.3 0.1:498.0" (seconds:MiB), for the raw CSV.
  std::string series;
};

// Pins the calling thread to the `index`-th CPU (modulo their number) that
// this process may run on, when options.pin. Multi-threaded workloads pin
// their threads so that, say, a producer and its consumer always run on two
// different cores: unpinned, the scheduler sometimes time-slices them on one
// core, which hides the cross-core cost being measured and makes run times
// bimodal.
void PinThisThread(const Options& options, int index);

// Scales a default count, never below `minimum`.
uint64_t Scaled(const Options& options, uint64_t full, uint64_t minimum);

// The number of CPUs this process may run on (its affinity mask), at least 1.
int AllowedCpus();

// Resident set size of this process in bytes, from /proc/self/statm (no
// allocation; 0 if it cannot be read).
uint64_t ResidentBytes();

// Seconds on the monotonic clock.
double NowSeconds();

// Prints "workload: allocation of N bytes failed" and exits with
// kExitCorrupted (a workload cannot go on without its object).
[[noreturn]] void AllocationFailed(const char* workload, size_t size);

// Median of `values` (0 when empty); sorts them.
double MedianOf(std::vector<double>& values);

// wyrand: small, fast and good enough to pick sizes and slots.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed * 0x9e3779b97f4a7c15ULL + 1) {}
  uint64_t Next() {
    state_ += 0xa0761d6478bd642fULL;
    __uint128_t t = static_cast<__uint128_t>(state_) * (state_ ^ 0xe7037ed1a0b428dbULL);
    return static_cast<uint64_t>(t >> 64) ^ static_cast<uint64_t>(t);
  }
  // Uniform in [0, n), n > 0 (Lemire's multiply-shift).
  uint64_t Below(uint64_t n) {
    return static_cast<uint64_t>((static_cast<__uint128_t>(Next()) * n) >> 64);
  }
  // Uniform in [lo, hi].
  uint64_t Between(uint64_t lo, uint64_t hi) { return lo + Below(hi - lo + 1); }

 private:
  uint64_t state_;
};

// A well-mixed 64-bit tag for object number `serial` (never zero).
inline uint64_t TagFor(uint64_t serial) {
  uint64_t z = serial + 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return (z ^ (z >> 31)) | 1;
}

// Writes the pattern for `tag` over all `size` bytes (size >= 8): the tag in
// the first 8 bytes and, from 16 bytes up, in the last 8; a fill byte made
// from the tag in between.
inline void Fill(void* p, size_t size, uint64_t tag) {
  char* bytes = static_cast<char*>(p);
  std::memset(bytes, static_cast<int>(tag >> 56), size);
  std::memcpy(bytes, &tag, sizeof tag);
  if (size >= 16) std::memcpy(bytes + size - 8, &tag, sizeof tag);
}

// Checks what Fill wrote: both tags, and every byte for about one object in
// 16 (chosen by tag). On a mismatch prints what was found where to stderr and
// exits with kExitCorrupted.
void Verify(const char* workload, const void* p, size_t size, uint64_t tag);

// Checks that all `size` bytes are zero (what calloc promises), or exits
// with kExitCorrupted.
void VerifyZero(const char* workload, const void* p, size_t size);

#define FERRY_DECLARE_WORKLOAD(name, pairs, summary) \
  namespace name {                            \
  Result Run(const Options& options);         \
  }
FERRY_WORKLOADS(FERRY_DECLARE_WORKLOAD)
FERRY_SOAK_PROGRAMS(FERRY_DECLARE_WORKLOAD)
#undef FERRY_DECLARE_WORKLOAD

}  // namespace ferry::perf

#endif  // FERRY_PERF_WORKLOADS_WORKLOAD_H_

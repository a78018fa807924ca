// perf/workloads/forkloop.cc — fork() again and again while other threads
// allocate and free across threads (a soak program, not a benchmark; see
// FERRY_SOAK_PROGRAMS in workload.h).
//
// 2 x pairs traffic threads (at least 2) stand in a ring: each makes chunks
// of kChunk objects (soak_objects.h: 16 B-16 KiB, some 256 KiB and 5 MiB),
// posts them to the next thread's inbox, then verifies and frees what its own
// inbox holds. So most frees are remote and batches are always in flight.
// Meanwhile the main thread forks `forks` times. Before each fork it makes a
// few objects of its own and takes every inbox's lock, so that the child
// inherits whole inboxes. The child:
//   1. verifies and frees the main thread's objects, and everything in the
//      inboxes: blocks of threads that do not exist in the child;
//   2. runs threads of its own across which blocks travel, some freed after
//      the thread that made them has exited (CrossThreads);
//   3. one child in 8 forks a grandchild while those threads run, which does
//      step 2 too;
//   4. exits with _exit, or one child in 4 with exit (atexit handlers run,
//      FERRY_STATS prints).
// A process waits for its child with a deadline (kChildDeadline). A child
// that fails (any exit status but 0, or a signal) makes the program exit with
// kExitChildFailed; so does one that does not exit in time, which is left
// running, not killed, so that a debugger can be attached (its pid is
// printed; the soak driver takes the backtraces and kills it).
//
// Reports the forks as its ops and as extras the grandchildren and the most
// bytes the traffic held live (`live_mib_max`), which the soak turns into an
// RSS bound.
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <latch>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "perf/workloads/soak_objects.h"
#include "perf/workloads/workload.h"

namespace ferry::perf::forkloop {
namespace {

constexpr char kName[] = "forkloop";
constexpr uint64_t kFullForks = 400;
constexpr size_t kChunk = 64;             // objects per post
constexpr size_t kInboxLimit = 4 * kChunk;  // a poster waits above this
constexpr int kParentObjects = 16;        // the main thread's own, per fork
constexpr int kChildObjects = 400;        // per thread of a child
constexpr auto kChildDeadline = std::chrono::seconds(30);

LiveBytes live;

struct Inbox {
  std::mutex mutex;
  std::vector<SoakObject> objects;
};

// Tags: the thread or role in the high bits, a serial below.
uint64_t Tag(uint64_t who, uint64_t serial) { return (who << 40) | serial; }

class Traffic {
 public:
  Traffic(int threads, uint64_t seed) : inboxes_(threads), seed_(seed) {
    for (auto& inbox : inboxes_) inbox = std::make_unique<Inbox>();
  }

  void Start(const Options& options) {
    for (int t = 0; t < static_cast<int>(inboxes_.size()); ++t) {
      threads_.emplace_back([this, &options, t] { Run(options, t); });
    }
  }

  // Joins the threads, then frees what is left in the inboxes.
  void Stop() {
    stop_.store(true, std::memory_order_relaxed);
    for (std::thread& thread : threads_) thread.join();
    for (auto& inbox : inboxes_) {
      for (const SoakObject& object : inbox->objects) FreeSoakObject(kName, object, live);
      inbox->objects.clear();
    }
  }

  // Every inbox's lock, taken in order (a traffic thread holds one at a time).
  std::vector<std::unique_lock<std::mutex>> LockAll() {
    std::vector<std::unique_lock<std::mutex>> locks;
    for (auto& inbox : inboxes_) locks.emplace_back(inbox->mutex);
    return locks;
  }

  // In a child only (no other thread, every lock held by the parent's
  // forking thread): frees what the inboxes held at the fork.
  void FreeInheritedInChild() {
    for (auto& inbox : inboxes_) {
      for (const SoakObject& object : inbox->objects) FreeSoakObject(kName, object, live);
    }
  }

 private:
  void Run(const Options& options, int t) {
    PinThisThread(options, t);
    const int n = static_cast<int>(inboxes_.size());
    Rng rng(seed_ ^ TagFor(static_cast<uint64_t>(t) + 1));
    Inbox& next = *inboxes_[(t + 1) % n];
    Inbox& own = *inboxes_[t];
    uint64_t serial = 0;
    std::vector<SoakObject> made, mine;
    while (!stop_.load(std::memory_order_relaxed)) {
      made.clear();
      for (size_t k = 0; k < kChunk; ++k) made.push_back(MakeSoakObject(kName, rng, Tag(t + 1, serial++), live));
      {
        std::lock_guard<std::mutex> lock(next.mutex);
        next.objects.insert(next.objects.end(), made.begin(), made.end());
      }
      mine.clear();
      {
        std::lock_guard<std::mutex> lock(own.mutex);
        mine.swap(own.objects);
      }
      for (const SoakObject& object : mine) FreeSoakObject(kName, object, live);
      // Keep the next inbox bounded (no deadlock: each thread empties its
      // own inbox before it waits on the next one).
      while (!stop_.load(std::memory_order_relaxed)) {
        {
          std::lock_guard<std::mutex> lock(next.mutex);
          if (next.objects.size() <= kInboxLimit) break;
        }
        std::this_thread::yield();
      }
    }
  }

  std::vector<std::unique_ptr<Inbox>> inboxes_;
  std::vector<std::thread> threads_;
  std::atomic<bool> stop_{false};
  uint64_t seed_;
};

// Ends a child: status 0, by exit() when `run_atexit`, else by _exit().
[[noreturn]] void EndChild(bool ok, bool run_atexit) {
  if (ok && run_atexit) std::exit(0);
  _exit(ok ? 0 : kExitChildFailed);
}

// Waits for `pid` until kChildDeadline. Returns true when it exited with
// status 0; else prints what happened (a hung child is left running).
bool WaitForChild(pid_t pid, const char* what, uint64_t fork_index) {
  const auto deadline = std::chrono::steady_clock::now() + kChildDeadline;
  int status = 0;
  for (;;) {
    const pid_t got = waitpid(pid, &status, WNOHANG);
    if (got == pid) break;
    if (got < 0) {
      std::fprintf(stderr, "%s: waitpid(%d): %s\n", kName, pid, std::strerror(errno));
      return false;
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      std::fprintf(stderr, "%s: %s %d (fork %llu) did not exit within %lld s; left running (gdb -p %d)\n", kName,
                   what, pid, static_cast<unsigned long long>(fork_index),
                   static_cast<long long>(kChildDeadline.count()), pid);
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return true;
  if (WIFEXITED(status)) {
    std::fprintf(stderr, "%s: %s %d (fork %llu) exited with status %d\n", kName, what, pid,
                 static_cast<unsigned long long>(fork_index), WEXITSTATUS(status));
  } else {
    std::fprintf(stderr, "%s: %s %d (fork %llu) was killed by signal %d (%s)\n", kName, what, pid,
                 static_cast<unsigned long long>(fork_index), WTERMSIG(status), strsignal(WTERMSIG(status)));
  }
  return false;
}

// Blocks made by one thread and freed by others, in a child: a first thread
// makes a set and exits; two threads free it between them while each makes
// a set of its own, then they swap (one frees all of the other's set, the
// other half of the first's) and exit; the caller frees the rest, made by a
// thread that is gone. `during` runs on the calling thread while those two
// threads run.
template <class During>
void CrossThreads(uint64_t seed, uint64_t who, During during) {
  std::vector<SoakObject> first, second, third;
  std::thread([&] {
    Rng rng(seed);
    for (int k = 0; k < kChildObjects; ++k) first.push_back(MakeSoakObject(kName, rng, Tag(who, k), live));
  }).join();
  std::latch made(2);
  auto worker = [&](int side, std::vector<SoakObject>& mine, const std::vector<SoakObject>& theirs) {
    Rng rng(seed + side);
    for (size_t k = side - 1; k < first.size(); k += 2) FreeSoakObject(kName, first[k], live);
    for (int k = 0; k < kChildObjects; ++k) {
      mine.push_back(MakeSoakObject(kName, rng, Tag(who + side, k), live));
    }
    made.arrive_and_wait();
    const size_t end = side == 1 ? theirs.size() : theirs.size() / 2;
    for (size_t k = 0; k < end; ++k) FreeSoakObject(kName, theirs[k], live);
  };
  std::thread t1(worker, 1, std::ref(second), std::cref(third));
  std::thread t2(worker, 2, std::ref(third), std::cref(second));
  during();
  t1.join();
  t2.join();
  for (size_t k = second.size() / 2; k < second.size(); ++k) FreeSoakObject(kName, second[k], live);
}

[[noreturn]] void Child(Traffic& traffic, const std::vector<SoakObject>& own, uint64_t seed,
                        uint64_t fork_index) {
  for (const SoakObject& object : own) FreeSoakObject(kName, object, live);
  traffic.FreeInheritedInChild();
  bool ok = true;
  const uint64_t who = 1000 + 8 * fork_index;
  CrossThreads(seed, who, [&] {
    if (fork_index % 8 != 3) return;
    std::fflush(nullptr);
    const pid_t pid = fork();
    if (pid < 0) {
      std::fprintf(stderr, "%s: fork in a child: %s\n", kName, std::strerror(errno));
      ok = false;
    } else if (pid == 0) {
      CrossThreads(seed + 7, who + 4, [] {});
      EndChild(true, false);
    } else {
      ok = WaitForChild(pid, "grandchild", fork_index);
    }
  });
  EndChild(ok, fork_index % 4 == 1);
}

}  // namespace

// 2 x options.pairs traffic threads (at least 2).
Result Run(const Options& options) {
  const uint64_t forks = Scaled(options, kFullForks, 4);
  Traffic traffic(std::max(2, 2 * options.pairs), options.seed);
  traffic.Start(options);
  Rng rng(options.seed);
  uint64_t serial = 0, grandchildren = 0;
  const double start = NowSeconds();
  for (uint64_t i = 0; i < forks; ++i) {
    std::vector<SoakObject> own;
    for (int k = 0; k < kParentObjects; ++k) own.push_back(MakeSoakObject(kName, rng, Tag(0, serial++), live));
    std::fflush(nullptr);  // a child that calls exit() must not print the parent's buffers again
    pid_t pid;
    {
      auto locks = traffic.LockAll();
      pid = fork();
      if (pid == 0) Child(traffic, own, options.seed ^ TagFor(i), i);
    }
    if (pid < 0) {
      std::fprintf(stderr, "%s: fork: %s\n", kName, std::strerror(errno));
      std::_Exit(kExitChildFailed);
    }
    for (const SoakObject& object : own) FreeSoakObject(kName, object, live);
    if (!WaitForChild(pid, "child", i)) std::_Exit(kExitChildFailed);
    grandchildren += i % 8 == 3;
    std::this_thread::sleep_for(std::chrono::microseconds(rng.Below(3000)));
  }
  const double seconds = NowSeconds() - start;
  traffic.Stop();

  Result result{forks, "forks", seconds};
  result.extras.push_back({"grandchildren", static_cast<double>(grandchildren)});
  result.extras.push_back({"live_mib_max", live.MostMiB()});
  return result;
}

}  // namespace ferry::perf::forkloop

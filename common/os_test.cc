// os_test.cc — the parts of the OS layer whose answers a test can know.
#include "common/os.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <gnu/libc-version.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

namespace {

// free() started from the dynamic loader must not start the pool (heap.cc,
// FreeMayStartPool), so the loader's code range must hold the loader's own
// functions and nothing of the program or the C library.
TEST(Os, DynamicLoaderTextHoldsTheLoaderAndNothingElse) {
  uintptr_t begin = 0, end = 0;
  ASSERT_TRUE(ferry::OsDynamicLoaderText(&begin, &end)) << "a dynamically linked test sees no loader";
  ASSERT_LT(begin, end);
  void* in_loader = dlsym(RTLD_DEFAULT, "_dl_mcount");  // defined by ld.so, intercepted by no sanitizer
  ASSERT_NE(in_loader, nullptr);
  const auto loader = reinterpret_cast<uintptr_t>(in_loader);
  EXPECT_TRUE(loader >= begin && loader < end);
  const auto program = reinterpret_cast<uintptr_t>(&ferry::OsDynamicLoaderText);
  EXPECT_FALSE(program >= begin && program < end);
  // A libc function no sanitizer intercepts.
  const auto libc = reinterpret_cast<uintptr_t>(&gnu_get_libc_version);
  EXPECT_FALSE(libc >= begin && libc < end);
}

TEST(Os, LibcTextHoldsLibcAndNotTheLoader) {
  uintptr_t begin = 0, end = 0;
  ASSERT_TRUE(ferry::OsLibcText(&begin, &end));
  const auto libc = reinterpret_cast<uintptr_t>(&gnu_get_libc_version);
  EXPECT_TRUE(libc >= begin && libc < end);
  const auto loader = reinterpret_cast<uintptr_t>(dlsym(RTLD_DEFAULT, "_dl_mcount"));
  EXPECT_FALSE(loader >= begin && loader < end);
  const auto program = reinterpret_cast<uintptr_t>(&ferry::OsLibcText);
  EXPECT_FALSE(program >= begin && program < end);
}

TEST(Os, MonotonicMillisecondsDoNotGoBack) {
  const uint64_t a = ferry::OsMonotonicMs();
  const uint64_t b = ferry::OsMonotonicMs();
  EXPECT_LE(a, b);
}

TEST(Os, UsableCpusCountTheMaskGiven) {
  ferry::OsCpuMask mask;
  ASSERT_TRUE(ferry::OsThreadCpuMask(&mask));
  EXPECT_EQ(ferry::OsUsableCpus(&mask), ferry::OsUsableCpus());
  ferry::OsCpuMask one = {};
  one.bytes[0] = 1;
  EXPECT_EQ(ferry::OsUsableCpus(&one), 1);
}

TEST(Os, MonotonicNanosecondsAgreeWithMilliseconds) {
  const uint64_t ms = ferry::OsMonotonicMs();
  const uint64_t ns = ferry::OsMonotonicNs();
  const uint64_t coarse = ferry::OsCoarseMonotonicNs();
  EXPECT_GE(ns / 1000000, ms);
  EXPECT_LT(ns / 1000000, ms + 1000);
  // The coarse clock lags by at most its tick (a few ms; say 100).
  EXPECT_LE(coarse, ferry::OsMonotonicNs());
  EXPECT_GT(coarse + 100000000, ns);
}

// Entries of /proc/self/task: the threads the kernel lists now.
int TaskDirectoryEntries() {
  DIR* dir = opendir("/proc/self/task");
  if (dir == nullptr) return -1;
  int count = 0;
  while (dirent* entry = readdir(dir)) count += entry->d_name[0] != '.';
  closedir(dir);
  return count;
}

// The kernel's count agrees with its list of the process's threads as
// threads start and are joined (a sanitizer's runtime may add one of its
// own), a fork child has one, and errno is left as it was (the call comes
// from free).
TEST(Os, ProcessThreadCountFollowsThreadsAndAForkChildHasOne) {
  EXPECT_GE(ferry::OsProcessThreadCount(), 1);
  std::atomic<bool> started{false}, stop{false};
  std::thread other([&] {
    started.store(true);
    while (!stop.load()) sched_yield();
  });
  while (!started.load()) sched_yield();
  errno = EAGAIN;
  const int with_other = ferry::OsProcessThreadCount();
  EXPECT_EQ(errno, EAGAIN);
  EXPECT_GE(with_other, 2);
  EXPECT_EQ(with_other, TaskDirectoryEntries());
  const pid_t child = fork();
  if (child == 0) _exit(ferry::OsProcessThreadCount() == 1 ? 0 : 1);
  ASSERT_GT(child, 0);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "a fork child counted other threads";
  stop.store(true);
  other.join();
  // pthread_join returns once the kernel clears the thread's id word, a
  // little before it drops the thread from its count: polled.
  int after = ferry::OsProcessThreadCount();
  for (int i = 0; i < 1000 && after != with_other - 1; ++i) {
    usleep(1000);
    after = ferry::OsProcessThreadCount();
  }
  EXPECT_EQ(after, with_other - 1);
  EXPECT_EQ(after, TaskDirectoryEntries());
}

// Three threads that never block, on one CPU: the scheduler must take the
// CPU from them, and the count of involuntary context switches grows.
TEST(Os, PreemptionsCountThreadsThatLoseTheirCpu) {
  cpu_set_t mine;
  ASSERT_EQ(sched_getaffinity(0, sizeof(mine), &mine), 0);
  int cpu = 0;
  while (!CPU_ISSET(cpu, &mine)) ++cpu;
  uint64_t before = 0;
  ASSERT_TRUE(ferry::OsPreemptions(&before));
  std::atomic<bool> stop{false};
  std::vector<std::thread> spinners;
  for (int i = 0; i < 3; ++i) {
    spinners.emplace_back([&] {
      cpu_set_t one;
      CPU_ZERO(&one);
      CPU_SET(cpu, &one);
      pthread_setaffinity_np(pthread_self(), sizeof(one), &one);
      while (!stop.load(std::memory_order_relaxed)) {
      }
    });
  }
  const uint64_t start = ferry::OsMonotonicMs();
  uint64_t after = before;
  while (after == before && ferry::OsMonotonicMs() - start < 5000) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ASSERT_TRUE(ferry::OsPreemptions(&after));
  }
  stop = true;
  for (std::thread& t : spinners) t.join();
  EXPECT_GT(after, before);
}

// The contents of a resized or moved range come through; a growth blocked
// by another mapping fails with no_room and leaves the range as it was.
TEST(Os, ResizeInPlaceAndMoveOntoKeepTheContents) {
  constexpr size_t kSize = size_t{4} << 20;
  char* base = static_cast<char*>(ferry::OsReserve(kSize, kSize));
  ASSERT_NE(base, nullptr);
  memset(base, 0x5a, kSize);
  void* blocker = mmap(base + kSize, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  if (blocker != MAP_FAILED && blocker != base + kSize) {
    munmap(blocker, 4096);
    ferry::OsRelease(base, kSize);
    GTEST_SKIP() << "MAP_FIXED_NOREPLACE is only a hint on this kernel";
  }
  bool no_room = false;
  EXPECT_EQ(ferry::OsResizeInPlace(base, kSize, 2 * kSize, &no_room), nullptr);
  EXPECT_TRUE(no_room);
  EXPECT_EQ(base[kSize - 1], 0x5a);
  char* target = static_cast<char*>(ferry::OsReserve(2 * kSize, kSize));
  ASSERT_NE(target, nullptr);
  char* moved = static_cast<char*>(ferry::OsMoveOnto(base, kSize, 2 * kSize, target));
  ASSERT_EQ(moved, target);
  for (size_t i = 0; i < kSize; i += 4096) ASSERT_EQ(moved[i], 0x5a) << i;
  EXPECT_EQ(moved[2 * kSize - 1], 0) << "the grown part reads as zero";
  char* shrunk = static_cast<char*>(ferry::OsResizeInPlace(moved, 2 * kSize, kSize, &no_room));
  ASSERT_EQ(shrunk, moved) << "shrinking in place never needs room";
  EXPECT_EQ(shrunk[kSize - 1], 0x5a);
  ferry::OsRelease(shrunk, kSize);
  if (blocker != MAP_FAILED) munmap(blocker, 4096);
}

// A range the program split (mprotect on part of it) cannot be resized; the
// failure says so (no_room stays false), and a failed move gives its target
// back without touching the range.
TEST(Os, ASplitRangeIsNotResizedAndAFailedMoveReturnsItsTarget) {
  constexpr size_t kSize = size_t{4} << 20;
  // Room above the range, so only the split refuses the growth (under
  // ThreadSanitizer a growth over another mapping is refused as no room
  // before mremap is asked, which would otherwise say EFAULT first).
  char* base = static_cast<char*>(ferry::OsReserve(2 * kSize, kSize));
  ASSERT_NE(base, nullptr);
  ferry::OsRelease(base + kSize, kSize);
  memset(base, 0x33, kSize);
  ASSERT_EQ(mprotect(base + kSize / 2, 4096, PROT_READ), 0);
  bool no_room = true;
  EXPECT_EQ(ferry::OsResizeInPlace(base, kSize, 2 * kSize, &no_room), nullptr);
  EXPECT_FALSE(no_room);
  char* target = static_cast<char*>(ferry::OsReserve(2 * kSize, kSize));
  ASSERT_NE(target, nullptr);
  EXPECT_EQ(ferry::OsMoveOnto(base, kSize, 2 * kSize, target), nullptr);
  EXPECT_EQ(base[kSize - 1], 0x33);
  // The target's range is free again: a fixed mapping there succeeds.
  void* again = mmap(target, 2 * kSize, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  EXPECT_EQ(again, static_cast<void*>(target));
  if (again != MAP_FAILED) munmap(again, 2 * kSize);
  ferry::OsRelease(base, kSize);
}

}  // namespace

namespace ferry {
namespace {

// Whether the calling task is a thread of this process (heap.cc names heaps
// after such threads only): the main thread and a thread are; a vfork child
// and a clone with CLONE_VM, even one that names a word of its own for the
// kernel to clear, are not; a thread gone stays unknown to tgkill.
std::atomic<int> g_clone_answer{-1};

int CloneChildMain(void*) {
  g_clone_answer = OsIsThreadWithTidWord(OsThreadId()) ? 1 : 0;
  return 0;
}

#if !defined(__SANITIZE_THREAD__)
__attribute__((noinline)) pid_t VforkAndAsk(std::atomic<int>* answer) {
  const pid_t pid = vfork();
  if (pid == 0) {
    answer->store(OsIsThreadWithTidWord(OsThreadId()) ? 1 : 0);
    _exit(0);
  }
  return pid;
}
#endif

// The bytes of address space this process has mapped (what RLIMIT_AS
// counts), read without allocating: for a fork child.
size_t MappedBytes() {
  char text[64] = {};
  const int fd = open("/proc/self/statm", O_RDONLY);
  if (fd < 0) return 0;
  const ssize_t n = read(fd, text, sizeof text - 1);
  close(fd);
  if (n <= 0) return 0;
  return static_cast<size_t>(strtoull(text, nullptr, 10)) * static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

// Under an address-space limit, an aligned range fits where the space left
// holds it but not its padding: a child whose limit leaves 6 MiB gets a 4
// MiB range aligned to 4 MiB (before 2026-12-07, none: the padded request
// needs 8), and once reservations are refused less than 4 MiB is left.
// Both kinds (arenas' MAP_NORESERVE, huge blocks' overcommit-checked).
TEST(Os, AnAlignedRangeFitsWhereTheSpaceLeftHoldsItButNotItsPadding) {
  constexpr size_t kSize = size_t{4} << 20;
  for (bool overcommit_check : {false, true}) {
    const pid_t child = fork();
    if (child == 0) {
      const size_t mapped = MappedBytes();
      if (mapped == 0) _exit(10);
      const size_t limit = mapped + (size_t{6} << 20);
      const struct rlimit rl = {limit, limit};
      if (setrlimit(RLIMIT_AS, &rl) != 0) _exit(11);
      int taken = 0;
      for (void* p; (p = ferry::OsReserve(kSize, kSize, overcommit_check)) != nullptr; ++taken) {
        if ((reinterpret_cast<uintptr_t>(p) & (kSize - 1)) != 0) _exit(12);
        static_cast<volatile char*>(p)[kSize - 1] = 1;
      }
      if (taken == 0) _exit(13);
      const size_t after = MappedBytes();
      if (after == 0 || after > limit) _exit(14);
      _exit(limit - after < kSize ? 0 : 15);
    }
    ASSERT_GT(child, 0);
    int status = 0;
    ASSERT_EQ(waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFEXITED(status)) << "the child died of signal " << WTERMSIG(status);
    EXPECT_EQ(WEXITSTATUS(status), 0) << "overcommit_check " << overcommit_check
                                      << ": 10-11 setup, 12 unaligned, 13 none reserved, 14-15 space left over";
  }
}

TEST(Os, OnlyThreadsOfTheProcessHaveATidWord) {
  EXPECT_TRUE(OsIsThreadWithTidWord(OsThreadId()));
  EXPECT_FALSE(OsIsThreadWithTidWord(OsThreadId() + 1));
  int32_t thread_tid = 0;
  bool thread_has_word = false;
  std::thread([&] {
    thread_tid = OsThreadId();
    thread_has_word = OsIsThreadWithTidWord(thread_tid);
  }).join();
  EXPECT_TRUE(thread_has_word);
  // Joined: the kernel lets the thread go a moment after its tid word clears.
  bool gone = false;
  for (int i = 0; i < 1000 && !gone; ++i) {
    gone = OsThreadIsGone(OsProcessId(), thread_tid);
    if (!gone) usleep(1000);
  }
  EXPECT_TRUE(gone);
  EXPECT_FALSE(OsThreadIsGone(OsProcessId(), OsThreadId()));

#if !defined(__SANITIZE_THREAD__)  // TSan makes vfork a fork: no memory shared
  std::atomic<int> vfork_answer{-1};
  const pid_t pid = VforkAndAsk(&vfork_answer);
  ASSERT_GT(pid, 0);
  ASSERT_EQ(waitpid(pid, nullptr, 0), pid);
  EXPECT_EQ(vfork_answer.load(), 0) << "a vfork child counted as a thread";
#endif

  constexpr size_t kStack = 64 << 10;
  static char stack[kStack];
  static pid_t child_tid_word = 0;
  const pid_t child = clone(CloneChildMain, stack + kStack,
                            CLONE_VM | CLONE_VFORK | CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID | SIGCHLD, nullptr,
                            nullptr, nullptr, &child_tid_word);
  ASSERT_GT(child, 0);
  ASSERT_EQ(waitpid(child, nullptr, 0), child);
  EXPECT_EQ(g_clone_answer.load(), 0) << "a CLONE_VM child with a tid word of its own counted as a thread";
}

// The permissions /proc/self/maps shows for the mapping holding `p`
// ("rw-p", "---p"...), or "" where none does.
std::string PermissionsAt(const void* p) {
  FILE* maps = fopen("/proc/self/maps", "r");
  char line[512];
  std::string found;
  const auto address = reinterpret_cast<uintptr_t>(p);
  while (maps != nullptr && fgets(line, sizeof line, maps) != nullptr) {
    unsigned long from = 0, to = 0;
    char perms[8] = {};
    if (sscanf(line, "%lx-%lx %7s", &from, &to, perms) == 3 && from <= address && address < to) found = perms;
  }
  if (maps != nullptr) fclose(maps);
  return found;
}

// True when a write to `p` in a fork child never completes (SIGSEGV; a
// sanitizer's handler reports it, to /dev/null here, and exits).
bool WriteFaults(char* p) {
  const pid_t pid = fork();
  if (pid == 0) {
    const int null = open("/dev/null", O_WRONLY);
    if (null >= 0) dup2(null, 2);
    *reinterpret_cast<volatile char*>(p) = 1;
    _exit(0);
  }
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return false;
  return !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

// An inaccessible reservation is made writable in parts, which hold their
// bytes, and uncommitted parts lose them: inaccessible again, or read-only
// zeros.
TEST(Os, InaccessibleReservationsAreCommittedAndUncommittedInParts) {
  constexpr size_t kSize = size_t{4} << 20;
  char* base = static_cast<char*>(ferry::OsReserveInaccessible(kSize, kSize));
  ASSERT_NE(base, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(base) % kSize, 0u);
  EXPECT_EQ(PermissionsAt(base), "---p");
  EXPECT_TRUE(WriteFaults(base));
  ASSERT_TRUE(ferry::OsCommit(base, kSize / 2));
  EXPECT_EQ(PermissionsAt(base), "rw-p");
  EXPECT_EQ(PermissionsAt(base + kSize / 2), "---p");
  memset(base, 0x7e, kSize / 2);
  ASSERT_TRUE(ferry::OsUncommit(base + kSize / 4, kSize / 4));
  EXPECT_EQ(base[kSize / 4 - 1], 0x7e) << "the part below keeps its bytes";
  EXPECT_EQ(PermissionsAt(base + kSize / 4), "---p");
  EXPECT_TRUE(WriteFaults(base + kSize / 4));
  ASSERT_TRUE(ferry::OsCommit(base + kSize / 4, kSize / 4));
  EXPECT_EQ(base[kSize / 4], 0) << "committed again, it reads as zeros";
  ASSERT_TRUE(ferry::OsUncommit(base, kSize / 4, /*readable=*/true));
  EXPECT_EQ(PermissionsAt(base), "r--p");
  EXPECT_EQ(base[0], 0);
  EXPECT_TRUE(WriteFaults(base));
  EXPECT_TRUE(ferry::OsRelease(base, kSize));
}

}  // namespace
}  // namespace ferry

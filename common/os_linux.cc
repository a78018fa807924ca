// os_linux.cc — the Linux implementation of os.h.
#include "common/os.h"

#include <dlfcn.h>
#include <elf.h>
#include <gnu/libc-version.h>
#include <errno.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>

#include "common/base.h"

namespace ferry {

namespace {

constexpr int kReserveProt = PROT_READ | PROT_WRITE;

// `size` bytes aligned to `alignment` without the padding OsReserve asks
// for first: where that was refused, the address space left (`ulimit -v`,
// RLIMIT_AS, which counts the padding until it is trimmed) may still hold
// the range itself. Until 2026-12-07 it did not try, so the last 4-8 MiB
// under a limit never held a segment or a huge block. The kernel places an
// unaligned mapping first; the range is then asked for at the aligned
// address just below it, which the kernel's top-down placement leaves free
// as a rule, or just above, each only where nothing is mapped
// (MAP_FIXED_NOREPLACE; a kernel older than 4.17 takes the flag as a hint,
// and a range elsewhere is given back).
void* ReserveAlignedUnpadded(size_t size, size_t alignment, int prot, int flags) {
  void* first = mmap(nullptr, size, prot, flags, -1, 0);
  if (first == MAP_FAILED) return nullptr;
  const uintptr_t start = reinterpret_cast<uintptr_t>(first);
  if ((start & (alignment - 1)) == 0) return first;
  munmap(first, size);
  const uintptr_t below = start & ~(alignment - 1);
  for (uintptr_t candidate : {below, below + alignment}) {
    if (candidate == 0 || candidate + size < candidate) continue;
    void* want = reinterpret_cast<void*>(candidate);
    void* p = mmap(want, size, prot, flags | MAP_FIXED_NOREPLACE, -1, 0);
    if (p == want) return p;
    if (p != MAP_FAILED) munmap(p, size);
  }
  return nullptr;
}

void* ReserveWith(size_t size, size_t alignment, int prot, int flags) {
  const int saved_errno = errno;
  if (alignment <= OsPageSize()) {
    void* p = mmap(nullptr, size, prot, flags, -1, 0);
    errno = saved_errno;
    return p == MAP_FAILED ? nullptr : p;
  }
  // Over-reserve, then trim both ends so that what stays is aligned.
  const size_t padded = size + alignment;
  if (padded < size) return nullptr;
  void* raw = mmap(nullptr, padded, prot, flags, -1, 0);
  if (raw == MAP_FAILED) {
    void* p = ReserveAlignedUnpadded(size, alignment, prot, flags);
    errno = saved_errno;
    return p;
  }
  const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = AlignUp(start, alignment);
  if (aligned > start) munmap(raw, aligned - start);
  const uintptr_t end = start + padded;
  if (end > aligned + size) munmap(reinterpret_cast<void*>(aligned + size), end - aligned - size);
  errno = saved_errno;
  return reinterpret_cast<void*>(aligned);
}

}  // namespace

void* OsReserve(size_t size, size_t alignment, bool overcommit_check) {
  return ReserveWith(size, alignment, kReserveProt,
                     MAP_PRIVATE | MAP_ANONYMOUS | (overcommit_check ? 0 : MAP_NORESERVE));
}

void* OsReserveInaccessible(size_t size, size_t alignment) {
  return ReserveWith(size, alignment, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE);
}

bool OsCommit(void* base, size_t size) {
  const int saved_errno = errno;
  const bool done = mprotect(base, size, kReserveProt) == 0;
  errno = saved_errno;
  return done;
}

bool OsUncommit(void* base, size_t size, bool readable) {
  const int saved_errno = errno;
  const int prot = readable ? PROT_READ : PROT_NONE;
  constexpr int kFlags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
  void* p = mmap(base, size, prot, kFlags | MAP_FIXED, -1, 0);
  if (p != base) {
    // The kernel may have taken the old mapping down before it failed (out
    // of memory of its own): a hole, which the next mprotect would refuse
    // for good, and another thread's mmap could fill. Filled here where it
    // is one; where the range is still mapped, this fails with EEXIST.
    p = mmap(base, size, prot, kFlags | MAP_FIXED_NOREPLACE, -1, 0);
    if (p != MAP_FAILED && p != base) munmap(p, size);  // a kernel before 4.17 took it as a hint
  }
  errno = saved_errno;
  return p == base;
}

bool OsRelease(void* base, size_t size) {
  const int saved_errno = errno;
  const bool released = munmap(base, size) == 0;
  errno = saved_errno;
  return released;
}

// Not in every libc's headers yet (Linux 6.13's uapi value).
#ifdef MADV_GUARD_REMOVE
constexpr int kMadvGuardRemove = MADV_GUARD_REMOVE;
#else
constexpr int kMadvGuardRemove = 103;
#endif
#ifdef MADV_GUARD_INSTALL
constexpr int kMadvGuardInstall = MADV_GUARD_INSTALL;
#else
constexpr int kMadvGuardInstall = 102;
#endif

namespace {

// Guard regions (MADV_GUARD_INSTALL, Linux 6.13) are page-table markers:
// they split no mapping, and neither mprotect nor MADV_DONTNEED clears
// them, so the next block faulted on its first write. Older kernels refuse
// the advice (EINVAL, as any advice they do not know), and have no guards
// to remove. Any other refusal (a seccomp filter's EPERM, say) may leave
// guards in place: the range is then not fit for reuse (a fault-injection
// hunt, 2026-12-06: the cached mapping went to the next block with the
// program's guard pages, which faulted on its first write), unless guards
// cannot be installed here either (GuardsInstallable): a filter that
// allows only the advice it knows refuses both, and unmapping every huge
// block there made a free of 4 MiB 14 ms instead of 0.1 (a review).

// An advice the kernel may not know: true when it was taken, or refused
// with EINVAL (a kernel without it, where there is nothing to undo).
bool AdviseIfKnown(void* start, size_t length, int advice) {
  for (int tries = 0; tries < 3; ++tries) {
    if (madvise(start, length, advice) == 0 || errno == EINVAL) return true;
    if (errno != EINTR && errno != EAGAIN) return false;
  }
  return false;
}

// Whether this process may install guard regions now, asked once on a page
// of its own. Only a filter installed after the program made its guards
// could refuse both: that program's guards would stay with a reused
// mapping. Where no page can be mapped to ask, as if it may.
bool GuardsInstallable() {
  static std::atomic<int> known{-1};
  const int answer = known.load(std::memory_order_relaxed);
  if (answer >= 0) return answer != 0;
  const size_t page = OsPageSize();
  void* probe = mmap(nullptr, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (probe == MAP_FAILED) return true;
  const bool may = madvise(probe, page, kMadvGuardInstall) == 0;
  munmap(probe, page);
  known.store(may ? 1 : 0, std::memory_order_relaxed);
  return may;
}

// True when the range holds no guard region now, as far as one mapping of
// anonymous memory goes: EINVAL also comes where part of the range is
// hugetlb, PFN-mapped or (Linux 6.13-6.14) a file, whose guards may stay;
// the caller unmaps such a range anyway, which is no longer one mapping
// (OsIsOneMapping).
bool RemoveGuards(char* start, size_t length) {
  return AdviseIfKnown(start, length, kMadvGuardRemove) || !GuardsInstallable();
}

// MADV_GUARD_REMOVE visits every page table entry of its range, present or
// not, one call each: 15 us for 3 MiB written, 79 us for 16 MiB (3 and 10
// us untouched; 2026-12-05), most of what a cached huge block's free cost.
// A guard marker is never a present page, and mincore, which reads the
// same entries in batches (2 us for 3 MiB written, 3 untouched), calls a
// page resident only where one is present (or, swapped out, in the swap
// cache). So where the block's first pages are resident (a buffer the
// program wrote, the usual huge block) the removal runs only from the
// first to the last absent page of each stretch mincore reads, not at all
// on a block written whole; where they are mostly absent (a block barely
// touched), reading more would only add mincore's cost, and the removal
// runs over the whole range as before. Where mincore fails (a hole: the
// program unmapped part) the removal runs over the stretch.
bool RemoveGuardRegionsWhereAbsent(char* start, size_t length, const unsigned char* resident, size_t pages,
                                   size_t page) {
  size_t first = 0;
  while (first < pages && (resident[first] & 1) != 0) ++first;
  if (first == pages) return true;
  size_t last = pages - 1;
  while ((resident[last] & 1) != 0) --last;
  const size_t end = std::min((last + 1) * page, length);
  return RemoveGuards(start + first * page, end - first * page);
}

// True when no guard region is left in the range (as RemoveGuards says).
bool RemoveGuardRegions(char* base, size_t size) {
  const size_t page = OsPageSize();
  // 8 MiB of 4 KiB pages a call: one call for most huge blocks (a first
  // call of 64 pages, to see whether the block was touched before reading
  // the rest, was one more system call for every huge block).
  constexpr size_t kPagesAtOnce = 2048;
  unsigned char resident[kPagesAtOnce];
  for (size_t done = 0; done < size;) {
    const size_t pages = std::min((size - done + page - 1) / page, kPagesAtOnce);
    const size_t length = std::min(pages * page, size - done);
    char* const start = base + done;
    if (mincore(start, length, resident) != 0) {
      if (!RemoveGuards(start, length)) return false;
    } else {
      if (done == 0) {
        size_t present = 0;
        for (size_t i = 0; i < pages; ++i) present += resident[i] & 1;
        if (2 * present < pages) return RemoveGuards(base, size);
      }
      if (!RemoveGuardRegionsWhereAbsent(start, length, resident, pages, page)) return false;
    }
    done += length;
  }
  return true;
}

}  // namespace

bool OsRemoveGuardRegions(void* base, size_t size) {
  const int saved_errno = errno;
  const bool done = RemoveGuardRegions(static_cast<char*>(base), size);
  errno = saved_errno;
  return done;
}

bool OsResetForReuse(void* base, size_t size) {
  const int saved_errno = errno;
  // A kernel without MADV_WIPEONFORK refuses MADV_KEEPONFORK too, and has
  // nothing to undo.
  const bool done = mprotect(base, size, PROT_READ | PROT_WRITE) == 0 &&
                    madvise(base, size, MADV_DOFORK) == 0 && AdviseIfKnown(base, size, MADV_KEEPONFORK) &&
                    RemoveGuardRegions(static_cast<char*>(base), size);
  errno = saved_errno;
  return done;
}

bool OsIsThreadWithTidWord(int32_t tid) {
  const int saved_errno = errno;
  int* word = nullptr;
  const bool known = prctl(PR_GET_TID_ADDRESS, &word, 0, 0, 0) == 0;
  errno = saved_errno;
  // The C library keeps the word in its record of the thread, which
  // pthread_self() points at (glibc: some 700 bytes in): a clone with
  // CLONE_VM that names a word of its own for the kernel to clear shares
  // that record with the thread that made it, and has its word elsewhere.
  const uintptr_t self = reinterpret_cast<uintptr_t>(pthread_self());
  const uintptr_t at = reinterpret_cast<uintptr_t>(word);
  return known && word != nullptr && at - self < 4096 && *word == tid;
}

bool OsWipeInChildren(void* base, size_t size) {
  const int saved_errno = errno;
  const bool done = madvise(base, size, MADV_WIPEONFORK) == 0;
  errno = saved_errno;
  return done;
}

bool OsIsOneMapping(void* base, size_t size) {
  const int saved_errno = errno;
  // mremap refuses (EFAULT) a range that spans more than one VMA before it
  // looks for room; with room, the page it grew by goes back at once.
  const size_t page = OsPageSize();
  void* grown = mremap(base, size, size + page, 0);
  bool one = grown != MAP_FAILED || errno != EFAULT;
  if (grown != MAP_FAILED && mremap(base, size + page, size, 0) == MAP_FAILED) {
    // Not shrunk (the kernel short of memory): the page goes on its own,
    // and the mapping is not one to keep.
    munmap(static_cast<char*>(base) + size, page);
    one = false;
  }
  errno = saved_errno;
  return one;
}

size_t OsAddressSpaceLimit() {
  const int saved_errno = errno;
  size_t lowest = SIZE_MAX;
  for (const int resource : {RLIMIT_AS, RLIMIT_DATA}) {
    rlimit limit;
    if (syscall(SYS_prlimit64, 0, resource, nullptr, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY &&
        limit.rlim_cur < lowest) {
      lowest = static_cast<size_t>(limit.rlim_cur);
    }
  }
  errno = saved_errno;
  return lowest;
}

bool OsReservationMayFitAfterRelease(size_t size) {
  // Raw system calls: this runs inside malloc, where libc's open and read
  // (cancellation points, and wrappable by the program: a wrapper that
  // allocated deadlocked on the claim's lock; a review, 2026-12-05) have no
  // place.
  const int saved_errno = errno;
  bool may = size < OsAddressSpaceLimit();
  struct sysinfo info;
  if (may && syscall(SYS_sysinfo, &info) == 0) {
    const unsigned __int128 total =
        (static_cast<unsigned __int128>(info.totalram) + info.totalswap) * info.mem_unit;
    if (size > total) may = false;
  }
  errno = saved_errno;
  return may;
}

namespace {

// ThreadSanitizer intercepts mmap and munmap, not mremap: a range that a
// mapping moved or shrank out of keeps the record of its last accesses,
// and a mapping that grew into it in place had its first writes reported
// as races with another thread's long gone huge block (a test of threads
// growing huge blocks, 2026-12-07: one thread's block moved away, another's
// grew into the range a moment later). Under it, the range is mapped and
// unmapped first, which its interceptors see, where it is free (never over
// a mapping: MAP_FIXED_NOREPLACE). Its AnnotateNewMemory is a no-op in the
// GCC 12 runtime. Where the range was still mapped, the growth is refused
// as if there were no room (the caller moves the block instead): that
// mapping can go between the probe and the mremap, and the growth then took
// its range with the old records (CI on fbcf33d, the same test).
bool ForgetAccessesBeforeGrowingInto(uintptr_t start, size_t size) {
#if defined(__SANITIZE_THREAD__)
  void* probe = mmap(reinterpret_cast<void*>(start), size, PROT_NONE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
  // Only a range in use refuses (EEXIST, or on kernels before 4.17, which
  // take the flag for a hint, a probe placed elsewhere): out of mapping
  // entries (vm.max_map_count), the mremap may still grow the range.
  if (probe == MAP_FAILED) return errno != EEXIST;
  munmap(probe, size);
  return probe == reinterpret_cast<void*>(start);
#else
  (void)start;
  (void)size;
  return true;
#endif
}

}  // namespace

void* OsResizeInPlace(void* base, size_t old_size, size_t new_size, bool* no_room) {
  const int saved_errno = errno;
  if (new_size > old_size &&
      !ForgetAccessesBeforeGrowingInto(reinterpret_cast<uintptr_t>(base) + old_size, new_size - old_size)) {
    *no_room = true;
    errno = saved_errno;
    return nullptr;
  }
  void* p = mremap(base, old_size, new_size, 0);
  *no_room = p == MAP_FAILED && errno == ENOMEM;
  errno = saved_errno;
  return p == MAP_FAILED ? nullptr : p;
}

namespace {

// Whether every page of [base, base + size) is mapped (mincore fails with
// ENOMEM on a range with a gap), a few hundred pages per call.
bool WhollyMapped(uintptr_t base, size_t size) {
  const size_t page = OsPageSize();
  unsigned char residency[256];
  for (uintptr_t at = base; at < base + size;) {
    const size_t chunk = base + size - at < sizeof residency * page ? base + size - at : sizeof residency * page;
    if (mincore(reinterpret_cast<void*>(at), chunk, residency) != 0) return false;
    at += chunk;
  }
  return true;
}

}  // namespace

void* OsMoveOnto(void* base, size_t old_size, size_t new_size, void* target) {
  const int saved_errno = errno;
  void* p = mremap(base, old_size, new_size, MREMAP_MAYMOVE | MREMAP_FIXED, target);
  if (p == MAP_FAILED) {
    // Older kernels unmap the target before they check the old range, so a
    // failed move may leave a hole where `target` was, which another thread
    // may have mapped since: munmap(target) could take its memory. Newer
    // ones (6.18 here) check first and leave the target whole. Claim the
    // hole back first: if that works, it was all free, and goes back.
    void* hole = mmap(target, new_size, PROT_NONE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
    if (hole != MAP_FAILED) {
      munmap(hole, new_size);  // elsewhere on kernels before 4.17: ours all the same
    } else if (errno == EEXIST && WhollyMapped(reinterpret_cast<uintptr_t>(target), new_size)) {
      munmap(target, new_size);  // the target, still whole
    }
    // Otherwise part of the hole is another thread's now: leave it alone.
    p = nullptr;
  }
  errno = saved_errno;
  return p;
}

bool OsDecommit(void* base, size_t size) {
  const int saved_errno = errno;
  const bool done = madvise(base, size, MADV_DONTNEED) == 0;
  errno = saved_errno;
  return done;
}

size_t OsResidentPages(void* base, size_t size) {
  const int saved_errno = errno;
  const size_t page = OsPageSize();
  unsigned char vec[256];
  size_t resident = 0;
  for (size_t done = 0; done < size;) {
    const size_t chunk = size - done < sizeof(vec) * page ? size - done : sizeof(vec) * page;
    if (mincore(static_cast<char*>(base) + done, chunk, vec) != 0) {
      errno = saved_errno;
      return SIZE_MAX;
    }
    for (size_t k = 0; k < (chunk + page - 1) / page; ++k) resident += vec[k] & 1;
    done += chunk;
  }
  errno = saved_errno;
  return resident;
}

bool OsAdviseHugePages(void* base, size_t size) {
  const int saved_errno = errno;
  const bool done = madvise(base, size, MADV_HUGEPAGE) == 0;
  errno = saved_errno;
  return done;
}

size_t OsPageSize() {
  // No function-local static: its guard would pull in libstdc++, and C
  // programs link libferry.a without it. A racy first read is harmless.
  static std::atomic<size_t> page{0};
  size_t value = page.load(std::memory_order_relaxed);
  if (FERRY_UNLIKELY(value == 0)) {
    value = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    page.store(value, std::memory_order_relaxed);
  }
  return value;
}

uint64_t OsRandom64() {
  const int saved_errno = errno;
  uint64_t value = 0;
  if (syscall(SYS_getrandom, &value, sizeof(value), GRND_NONBLOCK) != static_cast<long>(sizeof(value))) {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    value = static_cast<uint64_t>(ts.tv_nsec) * 0x9E3779B97F4A7C15ull ^
            reinterpret_cast<uintptr_t>(&value) ^ static_cast<uint64_t>(getpid()) << 32;
  }
  errno = saved_errno;
  return value;
}

void OsSleepMicroseconds(uint32_t microseconds) {
  const int saved_errno = errno;
  const timespec pause = {static_cast<time_t>(microseconds / 1000000),
                          static_cast<long>(microseconds % 1000000) * 1000L};
  syscall(SYS_nanosleep, &pause, nullptr);
  errno = saved_errno;
}

void OsWriteStderr(const char* buf, size_t len) {
  const int saved_errno = errno;
  while (len > 0) {
    const ssize_t n = syscall(SYS_write, STDERR_FILENO, buf, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    buf += n;
    len -= static_cast<size_t>(n);
  }
  errno = saved_errno;
}

namespace {

// Reads a small file into buf (NUL-terminated) with raw system calls.
bool ReadSmallFile(const char* path, char* buf, size_t size) {
  const int fd = static_cast<int>(syscall(SYS_openat, AT_FDCWD, path, O_RDONLY | O_CLOEXEC));
  if (fd < 0) return false;
  const ssize_t n = syscall(SYS_read, fd, buf, size - 1);
  syscall(SYS_close, fd);
  if (n <= 0) return false;
  buf[n] = '\0';
  return true;
}

// Parses a leading unsigned decimal; returns -1 when there is none.
int64_t ParseLeading(const char* p, const char** end) {
  if (*p < '0' || *p > '9') return -1;
  int64_t v = 0;
  while (*p >= '0' && *p <= '9') v = v * 10 + (*p++ - '0');
  if (end != nullptr) *end = p;
  return v;
}

}  // namespace

int OsProcessThreadCount() {
  const int saved_errno = errno;
  char buf[512];  // about 300 bytes: the command name is at most 16
  const bool ok = ReadSmallFile("/proc/self/stat", buf, sizeof(buf));
  errno = saved_errno;
  if (!ok) return 0;
  // "pid (comm) state ppid ... nice num_threads ...": the name may hold
  // spaces and parentheses, so count fields from its last ')'; the thread
  // count is the 18th field after it.
  const char* p = strrchr(buf, ')');
  if (p == nullptr) return 0;
  for (int field = 0; field < 18; ++field) {
    while (*p != '\0' && *p != ' ') ++p;
    while (*p == ' ') ++p;
    if (*p == '\0') return 0;
  }
  const int64_t threads = ParseLeading(p, nullptr);
  return threads > 0 && threads < INT32_MAX ? static_cast<int>(threads) : 0;
}

namespace {

// The cgroup CPU quota in whole CPUs (rounded up), or 0 when unlimited.
int CgroupCpuQuota() {
  char buf[128];
  if (ReadSmallFile("/sys/fs/cgroup/cpu.max", buf, sizeof(buf))) {  // v2: "max 100000" or "Q P"
    const char* rest;
    const int64_t quota = ParseLeading(buf, &rest);
    if (quota <= 0) return 0;
    while (*rest == ' ') ++rest;
    const int64_t period = ParseLeading(rest, nullptr);
    if (period <= 0) return 0;
    return static_cast<int>((quota + period - 1) / period);
  }
  char period_buf[64];
  if (ReadSmallFile("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", buf, sizeof(buf)) &&
      ReadSmallFile("/sys/fs/cgroup/cpu/cpu.cfs_period_us", period_buf, sizeof(period_buf))) {
    const int64_t quota = ParseLeading(buf, nullptr);  // "-1" parses as none
    const int64_t period = ParseLeading(period_buf, nullptr);
    if (quota > 0 && period > 0) return static_cast<int>((quota + period - 1) / period);
  }
  return 0;
}

}  // namespace

static_assert(sizeof(OsCpuMask) == sizeof(cpu_set_t));

bool OsThreadCpuMask(OsCpuMask* mask) {
  const int saved_errno = errno;
  const bool ok = sched_getaffinity(0, sizeof(cpu_set_t), reinterpret_cast<cpu_set_t*>(mask->bytes)) == 0;
  errno = saved_errno;
  return ok;
}

int OsUsableCpus(const OsCpuMask* mask) {
  const int saved_errno = errno;
  cpu_set_t set;
  int cpus = 0;
  if (mask != nullptr) {
    __builtin_memcpy(&set, mask->bytes, sizeof(set));
    cpus = CPU_COUNT(&set);
  } else if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    cpus = CPU_COUNT(&set);
  }
  if (cpus <= 0) cpus = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  const int quota = CgroupCpuQuota();
  if (quota > 0 && quota < cpus) cpus = quota;
  errno = saved_errno;
  return cpus > 0 ? cpus : 1;
}

void OsFutexWait(const void* word, uint32_t expected, int timeout_ms) {
  const int saved_errno = errno;
  timespec timeout;
  timespec* timeout_ptr = nullptr;
  if (timeout_ms >= 0) {
    timeout.tv_sec = timeout_ms / 1000;
    timeout.tv_nsec = static_cast<long>(timeout_ms % 1000) * 1000000L;
    timeout_ptr = &timeout;
  }
  syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, expected, timeout_ptr, nullptr, 0);
  errno = saved_errno;
}

void OsFutexWake(const void* word, int count) {
  const int saved_errno = errno;
  syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, count, nullptr, nullptr, 0);
  errno = saved_errno;
}

int32_t OsProcessId() { return static_cast<int32_t>(syscall(SYS_getpid)); }
int32_t OsThreadId() { return static_cast<int32_t>(syscall(SYS_gettid)); }

bool OsThreadIsGone(int32_t pid, int32_t tid) {
  const int saved_errno = errno;
  const bool gone = syscall(SYS_tgkill, pid, tid, 0) != 0 && errno == ESRCH;
  errno = saved_errno;
  return gone;
}

uint64_t OsMonotonicMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000 + static_cast<uint64_t>(ts.tv_nsec) / 1000000;
}

namespace {
// The monotonic clocks are read in the vDSO: no system call, errno
// untouched (the thread's CPU clock is a system call, errno untouched too).
uint64_t ClockNs(clockid_t clock) {
  timespec ts;
  clock_gettime(clock, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000 + static_cast<uint64_t>(ts.tv_nsec);
}
}  // namespace

uint64_t OsMonotonicNs() { return ClockNs(CLOCK_MONOTONIC); }
uint64_t OsCoarseMonotonicNs() { return ClockNs(CLOCK_MONOTONIC_COARSE); }
uint64_t OsThreadCpuNs() { return ClockNs(CLOCK_THREAD_CPUTIME_ID); }

bool OsPreemptions(uint64_t* count) {
  const int saved_errno = errno;
  rusage usage;
  const bool ok = getrusage(RUSAGE_SELF, &usage) == 0;
  errno = saved_errno;  // called from free()
  if (ok) *count = static_cast<uint64_t>(usage.ru_nivcsw);
  return ok;
}

namespace {

// The executable PT_LOAD range of the ELF object whose header is at `base`
// (its load address: p_vaddr is relative to it for shared objects).
bool ObjectText(uintptr_t base, uintptr_t* begin, uintptr_t* end) {
  const auto* header = reinterpret_cast<const Elf64_Ehdr*>(base);
  const auto* phdrs = reinterpret_cast<const Elf64_Phdr*>(base + header->e_phoff);
  uintptr_t lo = UINTPTR_MAX, hi = 0;
  for (int i = 0; i < header->e_phnum; ++i) {
    if (phdrs[i].p_type != PT_LOAD || (phdrs[i].p_flags & PF_X) == 0) continue;
    const uintptr_t start = base + phdrs[i].p_vaddr;
    if (start < lo) lo = start;
    if (start + phdrs[i].p_memsz > hi) hi = start + phdrs[i].p_memsz;
  }
  if (hi == 0) return false;
  *begin = lo;
  *end = hi;
  return true;
}

}  // namespace

bool OsDynamicLoaderText(uintptr_t* begin, uintptr_t* end) {
  const uintptr_t base = getauxval(AT_BASE);
  return base != 0 && ObjectText(base, begin, end);
}

bool OsLibcText(uintptr_t* begin, uintptr_t* end) {
  Dl_info info;
  // A libc function nobody wraps, to find libc itself.
  if (dladdr(reinterpret_cast<const void*>(&gnu_get_libc_version), &info) == 0 ||
      info.dli_fbase == nullptr) {
    return false;
  }
  return ObjectText(reinterpret_cast<uintptr_t>(info.dli_fbase), begin, end);
}

}  // namespace ferry

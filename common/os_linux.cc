// os_linux.cc — the Linux implementation of os.h.
#include "common/os.h"

#include <errno.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <atomic>

#include "common/base.h"

namespace ferry {

void* OsReserve(size_t size, size_t alignment, bool overcommit_check) {
  const int kProt = PROT_READ | PROT_WRITE;
  const int kFlags = MAP_PRIVATE | MAP_ANONYMOUS | (overcommit_check ? 0 : MAP_NORESERVE);
  const int saved_errno = errno;
  if (alignment <= OsPageSize()) {
    void* p = mmap(nullptr, size, kProt, kFlags, -1, 0);
    errno = saved_errno;
    return p == MAP_FAILED ? nullptr : p;
  }
  // Over-reserve, then trim both ends so that what stays is aligned.
  const size_t padded = size + alignment;
  if (padded < size) return nullptr;
  void* raw = mmap(nullptr, padded, kProt, kFlags, -1, 0);
  if (raw == MAP_FAILED) {
    errno = saved_errno;
    return nullptr;
  }
  const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = AlignUp(start, alignment);
  if (aligned > start) munmap(raw, aligned - start);
  const uintptr_t end = start + padded;
  if (end > aligned + size) munmap(reinterpret_cast<void*>(aligned + size), end - aligned - size);
  errno = saved_errno;
  return reinterpret_cast<void*>(aligned);
}

void OsRelease(void* base, size_t size) {
  const int saved_errno = errno;
  munmap(base, size);
  errno = saved_errno;
}

void OsDecommit(void* base, size_t size) {
  const int saved_errno = errno;
  madvise(base, size, MADV_DONTNEED);
  errno = saved_errno;
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
  if (getrandom(&value, sizeof(value), GRND_NONBLOCK) != sizeof(value)) {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    value = static_cast<uint64_t>(ts.tv_nsec) * 0x9E3779B97F4A7C15ull ^
            reinterpret_cast<uintptr_t>(&value) ^ static_cast<uint64_t>(getpid()) << 32;
  }
  errno = saved_errno;
  return value;
}

void OsWriteStderr(const char* buf, size_t len) {
  const int saved_errno = errno;
  while (len > 0) {
    const ssize_t n = write(STDERR_FILENO, buf, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    buf += n;
    len -= static_cast<size_t>(n);
  }
  errno = saved_errno;
}

}  // namespace ferry

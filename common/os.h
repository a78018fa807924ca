// os.h — the operating-system contract, the only place ferry touches the
// kernel's memory interface. Everything above this layer reaches the OS
// through these functions, so the OS can be faked in tests.
//
// Contract:
//  - OsReserve returns `size` bytes of readable, writable address space
//    aligned to `alignment` (a power of two), or nullptr. The memory reads
//    as zero until written. Physical memory is committed lazily by the
//    kernel on first touch. With `overcommit_check` the kernel's overcommit
//    policy may refuse a size it could never back (used for huge blocks, so
//    an absurd malloc fails with ENOMEM instead of succeeding on paper);
//    without it the range is reserved regardless (metadata).
//  - OsRelease gives back a range that OsReserve or OsReserveInaccessible
//    returned, whole, or a run
//    of whole pages of it; false when the kernel refused (unmapping the
//    middle of a range splits it in two, which vm.max_map_count may not
//    allow): then the range is as it was.
//  - OsResizeInPlace grows or shrinks a range that OsReserve returned,
//    keeping its contents, or fails (nullptr, the range as it was). It sets
//    *no_room when growing failed only because something is mapped after
//    the range; other failures (the range split by the program's mprotect
//    or madvise, the kernel's accounting) leave it false.
//  - OsMoveOnto moves such a range, contents and all, onto `target` (a range
//    of new_size bytes from OsReserve) without copying: the kernel moves the
//    page tables, and the old range is gone. On failure it returns nullptr,
//    the old range is as it was, and `target` has been given back.
//  - OsDecommit drops the physical pages of a range (it stays reserved and
//    reads as zero afterwards); resident memory falls at once (MADV_DONTNEED,
//    not MADV_FREE, so RSS tells the truth). False when the kernel refused
//    (memory locked by mlock or mlockall): then the range keeps its bytes.
//  - OsReserveInaccessible reserves address space as OsReserve does, but no
//    access is allowed and nothing is charged against the kernel's commit
//    limit (strict overcommit, vm.overcommit_memory=2, and RLIMIT_DATA
//    count every private writable mapping in full, MAP_NORESERVE or not).
//    OsCommit makes a part of it readable and writable, charged; false when
//    the kernel refused (the commit limit, RLIMIT_DATA, vm.max_map_count):
//    then the range is as it was. OsUncommit drops a committed range's
//    pages and its charge at once (a fixed mapping over it: madvise keeps
//    the charge): inaccessible again, or with `readable` read-only zeros.
//    False when the kernel refused: then the range holds its bytes as it
//    was (where the refusal took the old mapping down, the range is mapped
//    again, uncommitted, and that is a success).
//  - None of these allocate or take locks.
#ifndef FERRY_COMMON_OS_H_
#define FERRY_COMMON_OS_H_

#include <cstddef>
#include <cstdint>

namespace ferry {

void* OsReserve(size_t size, size_t alignment, bool overcommit_check = false);
bool OsRelease(void* base, size_t size);
void* OsReserveInaccessible(size_t size, size_t alignment);
bool OsCommit(void* base, size_t size);
bool OsUncommit(void* base, size_t size, bool readable = false);
void* OsResizeInPlace(void* base, size_t old_size, size_t new_size, bool* no_room);
void* OsMoveOnto(void* base, size_t old_size, size_t new_size, void* target);
bool OsDecommit(void* base, size_t size);
// Pages of [base, base + size) resident now (mincore; base page-aligned),
// or SIZE_MAX where the kernel will not say.
size_t OsResidentPages(void* base, size_t size);
// Asks for transparent huge pages on [base, base + size) (MADV_HUGEPAGE):
// the kernel then faults in, and zeroes, a whole aligned 2 MiB at a time
// where it has one free. False when the kernel refused (built without
// transparent huge pages); the range is then as it was.
bool OsAdviseHugePages(void* base, size_t size);
// Read-write, and copied into fork children, again, whatever the program
// set on the range since (mprotect, MADV_DONTFORK, MADV_WIPEONFORK, guard
// regions; not mlock or a protection key), so that it can hold a
// new block; false when the kernel refused (the program unmapped part of
// it, or a seccomp filter refused the removal of guard regions, which may
// then still be there): then it is fit only for OsRelease.
bool OsResetForReuse(void* base, size_t size);
// The guard regions alone (OsResetForReuse's last step): false when some
// may be left.
bool OsRemoveGuardRegions(void* base, size_t size);
// True when [base, base + size), a range OsReserve returned, is still one
// mapping in the kernel (one VMA). After OsResetForReuse it is one exactly
// when nothing the program did to part of it remains: a file mapped over
// it, mlock, a protection key, MADV_DONTDUMP, MADV_NOHUGEPAGE, MADV_HUGEPAGE
// (unless OsAdviseHugePages advised the whole range already), userfaultfd.
bool OsIsOneMapping(void* base, size_t size);
// Whether a reservation of `size` bytes that failed might succeed once
// other mappings go: false only where `size` alone could never fit (at or
// above RLIMIT_AS or RLIMIT_DATA, or more than RAM and swap together,
// which the kernel's overcommit check refuses whatever else is mapped).
// Any other failure may be a limit that counts mappings: RLIMIT_AS,
// RLIMIT_DATA, strict overcommit, vm.max_map_count. Raw system calls only
// (no cancellation point, nothing the program can wrap); for slow paths.
bool OsReservationMayFitAfterRelease(size_t size);
// The lower of RLIMIT_AS's and RLIMIT_DATA's soft limits, in bytes, or
// SIZE_MAX where neither is set. Raw system calls only, as above.
size_t OsAddressSpaceLimit();
size_t OsPageSize();
// Every call here that could block or read a file is a raw system call,
// not libc's wrapper: libc's open, read, write, close, getrandom and
// nanosleep are cancellation points, and malloc and free must not be (a
// thread with a cancel pending that started the reclaimer pool inside free
// was unwound from its read of the cgroup quota, the pool stayed starting,
// and every later fork waited for it; a bug hunt, 2026-12-05).

// 64 random bits from the kernel (falls back to time and address entropy).
uint64_t OsRandom64();
// Writes all of buf to standard error; never allocates.
void OsWriteStderr(const char* buf, size_t len);
// Sleeps about `microseconds`.
void OsSleepMicroseconds(uint32_t microseconds);

// A CPU affinity mask (the bytes of a cpu_set_t: up to 1024 CPUs).
struct OsCpuMask {
  unsigned char bytes[128];
};
// The calling thread's mask; false when the system call fails.
bool OsThreadCpuMask(OsCpuMask* mask);
// CPUs this process may use: the CPUs in `mask` (nullptr: the calling
// thread's affinity mask), capped by a cgroup CPU quota (v2 cpu.max or v1
// cfs_quota_us / cfs_period_us), at least 1.
int OsUsableCpus(const OsCpuMask* mask = nullptr);

// Futex on a 32-bit word: wait while *word == expected (at most timeout_ms
// when >= 0), wake up to `count` waiters. Spurious wake-ups happen.
void OsFutexWait(const void* word, uint32_t expected, int timeout_ms);
void OsFutexWake(const void* word, int count);

// This process's id, and the calling thread's (raw system calls: not a
// cached value a fork without the C library's handlers would leave stale).
int32_t OsProcessId();
int32_t OsThreadId();
// True only once thread `tid` of process `pid` has exited for good: the
// kernel knows no such thread (tgkill with no signal fails with ESRCH).
// A thread still exiting, a reused id, or a refused call read as alive.
// Leaves errno as it was.
bool OsThreadIsGone(int32_t pid, int32_t tid);
// True when the calling task is a thread whose id word the kernel clears
// when it exits, kept in the C library's record of the thread, and the
// word holds `tid` (the calling thread's id): the C library's threads, the
// main thread, a fork's child. False for a task that only shares the
// memory (a vfork child, a clone with CLONE_VM, whatever word it named),
// and where the kernel cannot say (no PR_GET_TID_ADDRESS). Leaves errno as
// it was.
bool OsIsThreadWithTidWord(int32_t tid);
// Makes [base, base + size), a range OsReserve returned, read as zeros in
// every child process made by fork or clone without CLONE_VM, whatever
// ran there (MADV_WIPEONFORK); false where the kernel cannot (before 4.14).
bool OsWipeInChildren(void* base, size_t size);

// How many threads this process has now (the kernel's count, from
// /proc/self/stat), or 0 where it cannot say (no /proc). Raw system calls;
// leaves errno as it was. Tens of microseconds: for slow paths, rarely.
int OsProcessThreadCount();

// Monotonic milliseconds.
uint64_t OsMonotonicMs();
// Monotonic nanoseconds: precise, and coarse (a few milliseconds of
// resolution, cheaper still; neither makes a system call).
uint64_t OsMonotonicNs();
uint64_t OsCoarseMonotonicNs();
// CPU time the calling thread has used, in nanoseconds.
uint64_t OsThreadCpuNs();
// Involuntary context switches of this process's threads so far (times the
// scheduler took a CPU from one of them while it could still run); false
// when the system call fails. Leaves errno as it was.
bool OsPreemptions(uint64_t* count);

// The executable code of the dynamic loader (ld.so) in this process, read
// from its ELF headers in memory (no lock, no allocation). False in a
// statically linked executable, which has none.
bool OsDynamicLoaderText(uintptr_t* begin, uintptr_t* end);
// The same for the C library (false in a static executable).
bool OsLibcText(uintptr_t* begin, uintptr_t* end);

}  // namespace ferry

#endif  // FERRY_COMMON_OS_H_

// pcsample: a flat CPU-time profiler for machines without perf (the lent
// 16-core machine has neither perf nor valgrind). Preload it after the
// allocator under test:
//
//   LD_PRELOAD="libferry.so libpcsample.so" PCSAMPLE_OUT=/tmp/s workload prodcons
//   python3 perf/pcsample/report.py /tmp/s.<pid> --bin DIR_WITH_THE_SAME_BINARIES
//
// Each thread gets its own timer on its own CPU-time clock, so a sample
// lands on the thread that spent the time, never on a neighbour. (A
// process-wide ITIMER_PROF does not: its signal goes to any thread that does
// not block it, so the time of ferry's reclaimers, which block every signal,
// was charged to the workload's threads, and waking those cost the pool
// runs 40% of their speed.) Threads that start with SIGPROF blocked, like
// ferry's reclaimers, get it unblocked so that their time is seen too; this
// tool's handler is the only one that runs there. With PCSAMPLE_OUT unset
// it samples and writes nothing (pthread_create still passes through it).
// A forked child samples nothing and writes no file (the parent's samples
// would be repeated under the child's maps); a program that execs or is
// killed before exit() writes none either (the file is written by a
// destructor), and a thread that ends by pthread_exit keeps its timer
// until the process ends.
//
// Environment: PCSAMPLE_OUT (file prefix; the pid at exit is appended),
// PCSAMPLE_US (sampling period in microseconds of thread CPU time, default
// 1000), PCSAMPLE_KEEP_BLOCKED=1 (leave SIGPROF blocked where a thread
// started with it blocked).
//
// Output, one text file a process: "# key value" lines (period, the
// process's user+sys seconds, threads with a timer, threads without one,
// threads whose SIGPROF was unblocked, samples lost), a copy of
// /proc/self/maps, a line "==", then one "pc thread weight" line (hex,
// decimal, decimal) per sample. report.py turns it into a table.
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

struct Sample {
  uint64_t pc;
  uint32_t thread;
  // 1 + the periods the timer ran past before this signal: the kernel looks
  // at CPU-time timers once a tick, so a period shorter than the tick yields
  // one signal a tick standing for several periods.
  uint32_t weight;
};

constexpr size_t kMaxSamples = size_t{1} << 22;  // 64 MiB of address space, touched as used
constexpr int kMaxThreads = 4096;                 // trampolines; later threads run unsampled

Sample* g_samples = nullptr;
std::atomic<uint64_t> g_taken{0};
std::atomic<uint32_t> g_thread_ids{0};
std::atomic<uint32_t> g_threads{0};  // with a timer
std::atomic<uint32_t> g_unsampled_threads{0};
std::atomic<uint32_t> g_unblocked_threads{0};
long g_period_us = 1000;
bool g_keep_blocked = false;
std::atomic<bool> g_on{false};
char g_out_prefix[4000];  // PCSAMPLE_OUT, kept at start (the program may unsetenv it)
using PthreadCreate = int (*)(pthread_t*, const pthread_attr_t*, void* (*)(void*), void*);
std::atomic<PthreadCreate> g_next_create{nullptr};
// Initial-exec: the handler reads it, and a dynamic TLS access may call
// __tls_get_addr, which may allocate. Valid because the library is only
// ever preloaded, never dlopened.
__attribute__((tls_model("initial-exec"))) thread_local uint32_t tl_thread = 0;

void OnProf(int, siginfo_t* info, void* context) {
  const uint64_t k = g_taken.fetch_add(1, std::memory_order_relaxed);
  if (k >= kMaxSamples) return;
  const auto* uc = static_cast<const ucontext_t*>(context);
  g_samples[k].pc = static_cast<uint64_t>(uc->uc_mcontext.gregs[REG_RIP]);
  g_samples[k].thread = tl_thread;
  // si_overrun means something only for a timer's signal (a kill -PROF's
  // shares its storage with the sender's pid and uid). Stored last, with
  // release: Stop skips a sample whose weight is still 0 (the mapping is
  // zero-filled), one a thread was writing as the process ended.
  const uint32_t weight = info->si_code == SI_TIMER ? 1 + static_cast<uint32_t>(info->si_overrun) : 1;
  __atomic_store_n(&g_samples[k].weight, weight, __ATOMIC_RELEASE);
}

// Arms a timer on the calling thread's CPU clock that signals this thread;
// false if the OS refused one. (A timer_t is the kernel's timer id, and 0
// is a valid one: no value of it can mean "none".)
bool StartThreadTimer(timer_t* timer) {
  tl_thread = g_thread_ids.fetch_add(1, std::memory_order_relaxed);
  sigevent event{};
  event.sigev_notify = SIGEV_THREAD_ID;
  event.sigev_signo = SIGPROF;
  event._sigev_un._tid = static_cast<pid_t>(syscall(SYS_gettid));
  if (timer_create(CLOCK_THREAD_CPUTIME_ID, &event, timer) != 0) {
    g_unsampled_threads.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  g_threads.fetch_add(1, std::memory_order_relaxed);
  itimerspec spec{};
  spec.it_interval.tv_sec = g_period_us / 1000000;
  spec.it_interval.tv_nsec = (g_period_us % 1000000) * 1000;
  spec.it_value = spec.it_interval;
  timer_settime(*timer, 0, &spec, nullptr);
  sigset_t prof;
  sigemptyset(&prof);
  sigaddset(&prof, SIGPROF);
  sigset_t current;
  pthread_sigmask(SIG_SETMASK, nullptr, &current);
  if (sigismember(&current, SIGPROF) && !g_keep_blocked) {
    pthread_sigmask(SIG_UNBLOCK, &prof, nullptr);
    g_unblocked_threads.fetch_add(1, std::memory_order_relaxed);
  }
  return true;
}

struct Trampoline {
  void* (*start)(void*);
  void* arg;
};
Trampoline g_trampolines[kMaxThreads];
std::atomic<int> g_trampolines_used{0};

void* RunThread(void* raw) {
  const Trampoline* t = static_cast<const Trampoline*>(raw);
  timer_t timer;
  const bool armed = StartThreadTimer(&timer);
  void* result = t->start(t->arg);
  // Each timer holds a slot of RLIMIT_SIGPENDING: a program that starts
  // thousands of threads would run out.
  if (armed) timer_delete(timer);
  return result;
}

PthreadCreate FindNextCreate() {
  // The C library's, past this library (ferry asks for this version too).
  void* f = dlvsym(RTLD_NEXT, "pthread_create", "GLIBC_2.34");
  if (f == nullptr) f = dlsym(RTLD_NEXT, "pthread_create");
  return reinterpret_cast<PthreadCreate>(f);
}

void StopInChild() { g_on.store(false, std::memory_order_relaxed); }

void WriteAll(int fd, const char* text, size_t n) {
  while (n > 0) {
    const ssize_t k = write(fd, text, n);
    if (k <= 0) return;
    text += k;
    n -= static_cast<size_t>(k);
  }
}

__attribute__((constructor)) void Start() {
  g_next_create.store(FindNextCreate(), std::memory_order_relaxed);
  const char* out = getenv("PCSAMPLE_OUT");
  if (out == nullptr || *out == '\0') return;
  if (strlen(out) >= sizeof g_out_prefix) return;
  strcpy(g_out_prefix, out);
  if (const char* us = getenv("PCSAMPLE_US"); us != nullptr && atol(us) > 0) g_period_us = atol(us);
  if (const char* keep = getenv("PCSAMPLE_KEEP_BLOCKED"); keep != nullptr && *keep == '1') g_keep_blocked = true;
  void* memory = mmap(nullptr, kMaxSamples * sizeof(Sample), PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (memory == MAP_FAILED) return;
  g_samples = static_cast<Sample*>(memory);
  struct sigaction action{};
  action.sa_sigaction = OnProf;
  action.sa_flags = SA_SIGINFO | SA_RESTART;
  sigemptyset(&action.sa_mask);
  if (sigaction(SIGPROF, &action, nullptr) != 0) return;
  pthread_atfork(nullptr, nullptr, StopInChild);
  g_on.store(true, std::memory_order_relaxed);
  timer_t main_timer;  // the main thread's, kept until the process ends
  StartThreadTimer(&main_timer);
}

__attribute__((destructor)) void Stop() {
  if (!g_on.exchange(false)) return;
  signal(SIGPROF, SIG_IGN);  // threads still running stop adding samples
  char path[sizeof g_out_prefix + 16];
  snprintf(path, sizeof path, "%s.%d", g_out_prefix, static_cast<int>(getpid()));
  const int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return;
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  const double cpu = static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
                     static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
  const uint64_t taken = g_taken.load();
  const uint64_t kept = taken < kMaxSamples ? taken : kMaxSamples;
  char line[256];
  int n = snprintf(line, sizeof line,
                   "# period_us %ld\n# cpu_s %.6f\n# threads %u\n# unsampled_threads %u\n"
                   "# unblocked_threads %u\n# samples_lost %llu\n",
                   g_period_us, cpu, g_threads.load(), g_unsampled_threads.load(), g_unblocked_threads.load(),
                   static_cast<unsigned long long>(taken - kept));
  WriteAll(fd, line, static_cast<size_t>(n));
  const int maps = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
  if (maps >= 0) {
    char buffer[65536];
    for (ssize_t k; (k = read(maps, buffer, sizeof buffer)) > 0;) WriteAll(fd, buffer, static_cast<size_t>(k));
    close(maps);
  }
  WriteAll(fd, "==\n", 3);
  for (uint64_t k = 0; k < kept; ++k) {
    const uint32_t weight = __atomic_load_n(&g_samples[k].weight, __ATOMIC_ACQUIRE);
    if (weight == 0) continue;
    n = snprintf(line, sizeof line, "%llx %u %u\n", static_cast<unsigned long long>(g_samples[k].pc),
                 g_samples[k].thread, weight);
    WriteAll(fd, line, static_cast<size_t>(n));
  }
  close(fd);
}

}  // namespace

// Every thread the program (or its allocator) starts gets its timer before
// its own code runs. Exported as pthread_create under both of glibc's
// versions (pcsample.lds): ferry looks up the C library's own with
// dlvsym(RTLD_NEXT, "pthread_create", "GLIBC_2.34"), past any wrapper, so
// that a program's wrapper that allocates cannot deadlock a reclaimer's
// start; an unversioned wrapper would leave the reclaimers unsampled. This
// one allocates nothing and takes no lock (the trampolines are static).
extern "C" int pcsample_pthread_create(pthread_t* thread, const pthread_attr_t* attr, void* (*start)(void*),
                                       void* arg) {
  PthreadCreate next = g_next_create.load(std::memory_order_relaxed);
  if (next == nullptr) {  // before this library's constructor ran
    next = FindNextCreate();
    g_next_create.store(next, std::memory_order_relaxed);
  }
  if (g_on.load(std::memory_order_relaxed)) {
    const int slot = g_trampolines_used.fetch_add(1, std::memory_order_relaxed);
    if (slot < kMaxThreads) {
      g_trampolines[slot] = Trampoline{start, arg};
      return next(thread, attr, RunThread, &g_trampolines[slot]);
    }
    g_unsampled_threads.fetch_add(1, std::memory_order_relaxed);
  }
  return next(thread, attr, start, arg);
}
__asm__(".symver pcsample_pthread_create, pthread_create@@GLIBC_2.34");
__asm__(".symver pcsample_pthread_create_v2, pthread_create@GLIBC_2.2.5");
extern "C" int pcsample_pthread_create_v2(pthread_t* thread, const pthread_attr_t* attr, void* (*start)(void*),
                                          void* arg) {
  return pcsample_pthread_create(thread, attr, start, arg);
}

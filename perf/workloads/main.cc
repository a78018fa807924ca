// perf/workloads/main.cc — the `workload` binary: runs one named workload
// once and prints its result for perf/compare.cc.
//
//   workload NAME [--scale tiny|quick|full|<number>] [--seed N] [--pairs N]
//                 [--no-pin] [--check-preload glibc|<library path>] [--verbose]
//   workload --list | --list-soak
//
// Output on stdout, one line each, `key=value` separated by spaces:
//   PRELOAD ok=1 malloc=<object that defines malloc> ...   (--check-preload)
//   RESULT workload=NAME ops=N unit=frees seconds=S rate=R
//   EXTRA key=value ...          (workloads with extra figures, e.g. RSS)
//   SERIES v v v ...             (workloads with a time series)
// `--list` prints one line per workload: NAME, TAB, summary, TAB, "pairs"
// when --pairs sizes it (else "-"). `--list-soak` lists the soak's programs
// (forkloop, threadchurn) the same way; they run like any workload.
// Exit status: 0 ok, 2 bad arguments, 3 objects found corrupted, 4 the
// expected allocator is not the one in use, 5 a child process of a soak
// program failed or hung.
#include <dlfcn.h>
#include <sched.h>
#include <limits.h>
#include <stdlib.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>

#include "perf/workloads/workload.h"

namespace ferry::perf {
namespace {

struct Workload {
  const char* name;
  bool pairs;
  const char* summary;
  Result (*run)(const Options&);
};

#define FERRY_WORKLOAD_ENTRY(name, pairs, summary) {#name, pairs, summary, &name::Run},
constexpr Workload kWorkloads[] = {FERRY_WORKLOADS(FERRY_WORKLOAD_ENTRY)};
constexpr Workload kSoakPrograms[] = {FERRY_SOAK_PROGRAMS(FERRY_WORKLOAD_ENTRY)};
#undef FERRY_WORKLOAD_ENTRY

// Prints one line per entry for --list and --list-soak.
template <size_t N>
void List(const Workload (&entries)[N]) {
  for (const Workload& w : entries) std::printf("%s\t%s\t%s\n", w.name, w.summary, w.pairs ? "pairs" : "-");
}

constexpr int kExitUsage = 2;
constexpr int kExitWrongAllocator = 4;

// The symbols a preloaded allocator must define for its figures to count.
constexpr const char* kAllocatorSymbols[] = {
    "malloc", "free", "calloc", "realloc",
    "_Znwm",    // operator new(size_t)
    "_ZdlPv",   // operator delete(void*)
};
// What glibc alone must define (operator new then comes from libstdc++ and
// calls malloc).
constexpr const char* kLibcSymbols[] = {"malloc", "free", "calloc", "realloc"};

[[noreturn]] void Usage(const char* message) {
  std::fprintf(stderr,
               "workload: %s\n"
               "usage: workload NAME [--scale tiny|quick|full|N] [--seed N] [--pairs N]\n"
               "                [--no-pin] [--check-preload glibc|LIBRARY] [--verbose]\n"
               "       workload --list | --list-soak\n",
               message);
  std::exit(kExitUsage);
}

// Parses "tiny", "quick", "full" or a positive number.
bool ParseScale(std::string_view text, double* scale) {
  if (text == "tiny") { *scale = 0.01; return true; }
  if (text == "quick") { *scale = 0.2; return true; }
  if (text == "full") { *scale = 1.0; return true; }
  std::string copy(text);
  char* end = nullptr;
  double value = std::strtod(copy.c_str(), &end);
  if (end == copy.c_str() || *end != '\0' || !(value > 0) || value > 1000) return false;
  *scale = value;
  return true;
}

bool ParseInt(std::string_view text, long min, long max, long* out) {
  std::string copy(text);
  char* end = nullptr;
  long value = std::strtol(copy.c_str(), &end, 10);
  if (end == copy.c_str() || *end != '\0' || value < min || value > max) return false;
  *out = value;
  return true;
}

// The file of the object that defines `symbol` in this process, as the
// dynamic linker resolves it (so an LD_PRELOADed library comes first).
std::string DefiningObject(const char* symbol) {
  void* address = dlsym(RTLD_DEFAULT, symbol);
  Dl_info info;
  if (address == nullptr || dladdr(address, &info) == 0 || info.dli_fname == nullptr) {
    return "";
  }
  char resolved[PATH_MAX];
  if (realpath(info.dli_fname, resolved) == nullptr) return info.dli_fname;
  return resolved;
}

std::string BaseName(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// Verifies that the malloc family in use comes from `expected`: "glibc" for
// no preload, otherwise the path of the preloaded library. Prints one
// PRELOAD line either way; returns whether it matched.
bool CheckPreload(const std::string& expected) {
  bool glibc = expected == "glibc";
  std::string want;
  if (!glibc) {
    char resolved[PATH_MAX];
    if (realpath(expected.c_str(), resolved) == nullptr) {
      std::printf("PRELOAD ok=0 reason=cannot-resolve:%s\n", expected.c_str());
      return false;
    }
    want = resolved;
  }
  bool ok = true;
  std::string found;
  auto check = [&](const char* symbol) {
    std::string object = DefiningObject(symbol);
    bool match = glibc ? BaseName(object).rfind("libc.so", 0) == 0 : object == want;
    if (!match) ok = false;
    found += std::string(" ") + symbol + "=" + (object.empty() ? "?" : object);
  };
  if (glibc) {
    for (const char* symbol : kLibcSymbols) check(symbol);
  } else {
    for (const char* symbol : kAllocatorSymbols) check(symbol);
  }
  std::printf("PRELOAD ok=%d%s\n", ok ? 1 : 0, found.c_str());
  std::fflush(stdout);
  return ok;
}

}  // namespace

void PinThisThread(const Options& options, int index) {
  if (!options.pin) return;
  cpu_set_t allowed;
  if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return;
  int count = CPU_COUNT(&allowed);
  if (count < 2) return;
  int wanted = index % count;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (!CPU_ISSET(cpu, &allowed) || wanted-- != 0) continue;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    sched_setaffinity(0, sizeof one, &one);  // 0: the calling thread
    return;
  }
}

uint64_t Scaled(const Options& options, uint64_t full, uint64_t minimum) {
  double scaled = static_cast<double>(full) * options.scale;
  return scaled < static_cast<double>(minimum) ? minimum : static_cast<uint64_t>(scaled);
}

int AllowedCpus() {
  cpu_set_t allowed;
  if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return 1;
  return std::max(CPU_COUNT(&allowed), 1);
}

uint64_t ResidentBytes() {
  int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char buffer[128];
  ssize_t n = read(fd, buffer, sizeof buffer - 1);
  close(fd);
  if (n <= 0) return 0;
  buffer[n] = '\0';
  // "size resident shared text lib data dt", in pages.
  unsigned long long size = 0, resident = 0;
  if (std::sscanf(buffer, "%llu %llu", &size, &resident) != 2) return 0;
  return resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void AllocationFailed(const char* workload, size_t size) {
  std::fprintf(stderr, "%s: allocation of %zu bytes failed\n", workload, size);
  std::_Exit(kExitCorrupted);
}

double MedianOf(std::vector<double>& values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

namespace {

[[noreturn]] void Corrupted(const char* workload, const void* p, size_t size, size_t offset,
                            unsigned expected, unsigned found) {
  std::fprintf(stderr,
               "%s: CORRUPTED object %p (size %zu): byte %zu is 0x%02x, expected 0x%02x\n",
               workload, p, size, offset, found, expected);
  std::_Exit(kExitCorrupted);
}

}  // namespace

void Verify(const char* workload, const void* p, size_t size, uint64_t tag) {
  const unsigned char* bytes = static_cast<const unsigned char*>(p);
  unsigned char want[8];
  std::memcpy(want, &tag, sizeof want);
  auto check_tag = [&](size_t at) {
    if (std::memcmp(bytes + at, want, 8) != 0) {
      for (size_t i = 0; i < 8; ++i) {
        if (bytes[at + i] != want[i]) Corrupted(workload, p, size, at + i, want[i], bytes[at + i]);
      }
    }
  };
  check_tag(0);
  if (size >= 16) check_tag(size - 8);
  if ((tag & 0xf0) != 0) return;  // full scan for about one object in 16
  const unsigned char fill = static_cast<unsigned char>(tag >> 56);
  size_t end = size >= 16 ? size - 8 : size;
  for (size_t i = 8; i < end; ++i) {
    if (bytes[i] != fill) Corrupted(workload, p, size, i, fill, bytes[i]);
  }
}

void VerifyZero(const char* workload, const void* p, size_t size) {
  const unsigned char* bytes = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i < size; ++i) {
    if (bytes[i] != 0) Corrupted(workload, p, size, i, 0, bytes[i]);
  }
}

}  // namespace ferry::perf

int main(int argc, char** argv) {
  using namespace ferry::perf;
  Options options;
  const Workload* workload = nullptr;
  std::string check_preload;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    auto value = [&]() -> std::string_view {
      if (i + 1 >= argc) Usage(("missing value after " + std::string(arg)).c_str());
      return argv[++i];
    };
    long number = 0;
    if (arg == "--list") {
      List(kWorkloads);
      return 0;
    } else if (arg == "--list-soak") {
      List(kSoakPrograms);
      return 0;
    } else if (arg == "--scale") {
      if (!ParseScale(value(), &options.scale)) Usage("--scale wants tiny, quick, full or a number > 0");
    } else if (arg == "--seed") {
      if (!ParseInt(value(), 0, LONG_MAX, &number)) Usage("--seed wants a number >= 0");
      options.seed = static_cast<uint64_t>(number);
    } else if (arg == "--pairs") {
      if (!ParseInt(value(), 1, 256, &number)) Usage("--pairs wants 1..256");
      options.pairs = static_cast<int>(number);
    } else if (arg == "--no-pin") {
      options.pin = false;
    } else if (arg == "--check-preload") {
      check_preload = value();
    } else if (arg == "--verbose") {
      options.verbose = true;
    } else if (!arg.empty() && arg[0] != '-' && workload == nullptr) {
      for (const Workload& w : kWorkloads) {
        if (arg == w.name) workload = &w;
      }
      for (const Workload& w : kSoakPrograms) {
        if (arg == w.name) workload = &w;
      }
      if (workload == nullptr) Usage(("unknown workload " + std::string(arg) + " (see --list)").c_str());
    } else {
      Usage(("unexpected argument " + std::string(arg)).c_str());
    }
  }
  if (workload == nullptr) Usage("name a workload (see --list)");
  if (!check_preload.empty() && !CheckPreload(check_preload)) return kExitWrongAllocator;

  Result result = workload->run(options);
  std::printf("RESULT workload=%s ops=%llu unit=%s seconds=%.6f rate=%.1f\n", workload->name,
              static_cast<unsigned long long>(result.ops), result.unit, result.seconds,
              result.seconds > 0 ? static_cast<double>(result.ops) / result.seconds : 0.0);
  if (!result.extras.empty()) {
    std::printf("EXTRA");
    for (const auto& [key, value] : result.extras) std::printf(" %s=%.6g", key.c_str(), value);
    std::printf("\n");
  }
  if (!result.series.empty()) std::printf("SERIES %s\n", result.series.c_str());
  return 0;
}

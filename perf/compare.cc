// perf/compare.cc — `//perf:compare`: whole-program comparison of ferry with
// glibc, jemalloc, mimalloc, tcmalloc and tbbmalloc.
//
//   tools/bazel run -c opt //perf:compare [-- FLAGS]      (see --help)
//
// Every measurement is its own process: the driver fork/execs the `workload`
// binary (perf/workloads/) with LD_PRELOAD set to the allocator under test
// (nothing for glibc), so all allocators run the very same code. Wall time is
// taken around the child with CLOCK_MONOTONIC; user+sys time and peak RSS
// (ru_maxrss) come from wait4. Runs alternate between allocators — run r of
// every allocator before run r+1 of any, starting each round one allocator
// further on — so a noisy neighbour spreads over all of them instead of
// landing on one.
//
// Honesty: before timing, each workload runs once per allocator at tiny
// scale with --check-preload, which makes the workload confirm that malloc,
// free, calloc, realloc and operator new/delete resolve to the expected
// library. An allocator that fails is not reported. The workloads verify
// every object they free, so a corrupting allocator fails instead of winning.
//
// ferry's settings are environment variables, so a ferry "variant" is one
// more row: the same libferry.so with some FERRY_* variables set
// (--ferry-variants adds ferry-r0, -r1, -r1-pool, -r2, -tbb and -hp; --variant defines
// others), measured like any allocator. FERRY_* variables inherited from the
// caller's environment are dropped, so the `ferry` row is always the default
// settings; use --env or --variant to set them. The check runs of ferry rows
// set FERRY_STATS=1 and read the pool's thread count from its report (shown
// in the allocator list) and refuse a row whose settings ferry warned about.
//
// Workloads that --pairs sizes (prodcons) run once per pair count in the list
// and are reported as NAME/N tables. Workloads may report extra figures
// (an `EXTRA key=value ...` line): the ones in kExtraColumns below become
// columns (RSS over live bytes for onefree, RSS after the burst for idle).
//
// Output: a Markdown table per workload on stdout (medians, wall min-max,
// ratios to mimalloc) and progress on stderr. Under `bazel run` the report,
// every raw run (CSV) and a plot (PNG, made with gnuplot when it is
// installed) are also written to perf/results/ in the source tree: latest.*
// for a full-scale run of every workload and the default allocators (variants
// may be added), quick.* for --quick, run.* for anything else.
//
// The list of workloads lives in perf/workloads/workload.h (one line each);
// the driver asks the workload binary for it. Allocators are listed below.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "perf/driver_util.h"

extern char** environ;

namespace {

using namespace ferry::perf_driver;

// ---------------------------------------------------------------------------
// The allocators, in the order they run. `library` is what goes into
// LD_PRELOAD: empty for glibc, kFromRunfiles for ferry's own build.
struct Allocator {
  const char* name;
  const char* library;
};

constexpr char kFromRunfiles[] = "<runfiles>";
constexpr char kFerryRunfile[] = "libferry.so";  // relative to the workspace
constexpr char kWorkloadRunfile[] = "perf/workload";

constexpr Allocator kAllocators[] = {
    {"ferry", kFromRunfiles},
    {"glibc", ""},
    {"jemalloc", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"},
    {"mimalloc", "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2"},
    {"tcmalloc", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"},
    {"tbbmalloc", "/usr/lib/x86_64-linux-gnu/libtbbmalloc_proxy.so.2"},
};

// Ratios are to this allocator when it is reported, else to the first one.
constexpr char kReference[] = "mimalloc";
// Rates below this (per second) are shown as they are, not in millions.
constexpr double kPlainRateBelow = 1e5;

// The rows --ferry-variants adds: ferry with these settings. PRELOAD=LIB is
// not a variable: it adds LIB to LD_PRELOAD after libferry.so. The tbb
// backend needs it: ferry refers to oneTBB weakly and uses it only in a
// program that has oneTBB (else it warns and uses its own threads, and the
// check run refuses the row).
struct Variant {
  const char* name;
  const char* env;  // KEY=VALUE,KEY=VALUE
};
constexpr char kPreloadKey[] = "PRELOAD=";
constexpr Variant kFerryVariants[] = {
    {"ferry-r0", "FERRY_RECLAIMERS=0"},
    {"ferry-r1", "FERRY_RECLAIMERS=1"},
    // One reclaimer that takes every batch, however crowded the CPUs.
    {"ferry-r1-pool", "FERRY_RECLAIMERS=1,FERRY_INLINE_WHEN_BUSY=0"},
    {"ferry-r2", "FERRY_RECLAIMERS=2"},
    {"ferry-tbb", "FERRY_RECLAIMER_BACKEND=tbb,FERRY_RECLAIMERS=1,"
                  "PRELOAD=/usr/lib/x86_64-linux-gnu/libtbb.so.12"},
    // Huge blocks on transparent huge pages (only `large` has any).
    {"ferry-hp", "FERRY_HUGE_PAGES=1"},
};

// Extra figures a workload may report (`EXTRA key=value`), shown as columns
// in this order: median over runs, formatted with `format`. Keys in
// kHiddenExtras go to the CSV only; any other key gets a column of its own.
struct ExtraColumn {
  const char* key;
  const char* label;
  const char* format;
};
constexpr ExtraColumn kExtraColumns[] = {
    {"rss_live", "RSS/live", "%.2f"},          // onefree: median of the samples
    {"rss_live_max", "RSS/live max", "%.2f"},  // onefree: the largest sample
    {"rss_base", "RSS MiB before", "%.1f"},    // idle: before the burst
    {"rss_0s", "RSS MiB +0 s", "%.1f"},        // idle: after the burst ...
    {"rss_1s", "RSS MiB +1 s", "%.1f"},
    {"rss_2s", "RSS MiB +2 s", "%.1f"},
    {"rss_3s", "RSS MiB +3 s", "%.1f"},
};
constexpr const char* kHiddenExtras[] = {"samples", "live_mib", "live_mib_max", "idle_s"};
// Extras that get a panel of their own in the plot (besides wall time).
constexpr const char* kPlottedExtras[] = {"rss_live", "rss_1s"};

// ---------------------------------------------------------------------------
// Flags.

constexpr char kUsage[] =
    "usage: compare [flags]\n"
    "  --runs N          timed runs per allocator and workload (default 5; 3 with --quick)\n"
    "  --quick           smaller workloads (--scale quick) and 3 runs\n"
    "  --scale S         tiny | quick | full (default) | a factor such as 0.5\n"
    "  --workload NAME   run only this workload (repeatable; default all)\n"
    "  --alloc NAME      run only this allocator or variant (repeatable; default all\n"
    "                    allocators and the variants asked for)\n"
    "  --ferry-variants  add ferry rows with other settings: ferry-r0 (FERRY_RECLAIMERS=0),\n"
    "                    ferry-r1, ferry-r1-pool (FERRY_RECLAIMERS=1, FERRY_INLINE_WHEN_BUSY=0),\n"
    "                    ferry-r2, ferry-tbb (FERRY_RECLAIMER_BACKEND=tbb, FERRY_RECLAIMERS=1),\n"
    "                    ferry-hp (FERRY_HUGE_PAGES=1);\n"
    "                    --alloc ferry-r1 adds just that one\n"
    "  --variant NAME:KEY=VAL[,KEY=VAL...]\n"
    "                    add a ferry row NAME with these variables (repeatable);\n"
    "                    PRELOAD=LIB also preloads LIB after libferry.so\n"
    "  --pairs LIST      pair counts for workloads sized by pairs (prodcons), e.g. 1,2,4;\n"
    "                    each is its own table NAME/N (default 1,2,4)\n"
    "  --no-pin          let the scheduler place workload threads (default: pinned)\n"
    "  --env KEY=VAL     set in the runs of ferry and its variants, e.g. --env FERRY_BATCH=64\n"
    "                    (repeatable; a variant's own settings win)\n"
    "  --timeout S       kill a run after S seconds (default 300)\n"
    "  --out DIR         write the report, raw runs and plot to DIR (default: perf/results/\n"
    "                    in the source tree under `bazel run`, nowhere otherwise): latest.*\n"
    "                    for a full-scale run of all workloads and allocators, quick.* for\n"
    "                    --quick scale, run.* otherwise\n"
    "  --no-save         write no files\n"
    "  --ferry-lib PATH  use this libferry.so instead of the one in runfiles\n"
    "  --workload-bin PATH  use this workload binary instead of the one in runfiles\n"
    "  --list            list workloads and allocators, then exit\n";

struct Flags {
  int runs = 5;
  bool runs_set = false;
  std::string scale = "full";
  bool scale_set = false;
  bool quick = false;
  std::vector<std::string> workloads;
  std::vector<std::string> allocators;
  std::vector<int> pairs = {1, 2, 4};
  bool ferry_variants = false;
  std::vector<std::pair<std::string, std::vector<std::string>>> variants;  // name, KEY=VAL
  bool pin = true;
  std::vector<std::string> ferry_env;
  double timeout_s = 300;
  std::string out_dir;
  bool no_save = false;
  std::string ferry_lib;
  std::string workload_bin;
  bool list = false;
};

[[noreturn]] void UsageError(const std::string& message) {
  std::fprintf(stderr, "compare: %s\n%s", message.c_str(), kUsage);
  std::exit(2);
}

std::optional<double> ParseNumber(const std::string& text) {
  char* end = nullptr;
  errno = 0;
  double value = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || errno != 0) return std::nullopt;
  return value;
}

bool ValidScale(const std::string& scale) {
  if (scale == "tiny" || scale == "quick" || scale == "full") return true;
  std::optional<double> value = ParseNumber(scale);
  return value && *value > 0 && *value <= 1000;
}

bool KnownAllocator(const std::string& name) {
  return std::any_of(std::begin(kAllocators), std::end(kAllocators),
                     [&](const Allocator& a) { return name == a.name; });
}

bool StandardVariant(const std::string& name) {
  return std::any_of(std::begin(kFerryVariants), std::end(kFerryVariants),
                     [&](const Variant& v) { return name == v.name; });
}

bool ValidName(const std::string& name) {
  return !name.empty() && name.size() <= 32 &&
         std::all_of(name.begin(), name.end(),
                     [](char ch) { return std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '_' || ch == '.'; });
}

// KEY=VALUE with KEY a plausible environment variable name.
bool ValidSetting(const std::string& kv) {
  size_t eq = kv.find('=');
  if (eq == std::string::npos || eq == 0) return false;
  return std::all_of(kv.begin(), kv.begin() + static_cast<long>(eq),
                     [](char ch) { return std::isalnum(static_cast<unsigned char>(ch)) || ch == '_'; });
}

// "1,2,4" -> {1, 2, 4}: each 1..256, no repeats.
std::vector<int> ParsePairs(const std::string& text) {
  std::vector<int> pairs;
  for (const std::string& part : Split(text, ',')) {
    std::optional<double> n = ParseNumber(part);
    if (!n || *n < 1 || *n > 256 || *n != static_cast<int>(*n)) UsageError("--pairs wants a list of 1..256, e.g. 1,2,4");
    if (std::find(pairs.begin(), pairs.end(), static_cast<int>(*n)) != pairs.end()) UsageError("--pairs lists " + part + " twice");
    pairs.push_back(static_cast<int>(*n));
  }
  if (pairs.empty()) UsageError("--pairs wants a list of 1..256, e.g. 1,2,4");
  return pairs;
}

// NAME:KEY=VAL[,KEY=VAL...]
std::pair<std::string, std::vector<std::string>> ParseVariant(const std::string& spec) {
  size_t colon = spec.find(':');
  std::string name = spec.substr(0, colon);
  if (colon == std::string::npos || !ValidName(name)) {
    UsageError("--variant wants NAME:KEY=VALUE[,KEY=VALUE...] with NAME of letters, digits, - _ .");
  }
  if (KnownAllocator(name)) UsageError("--variant " + name + ": that name is an allocator's");
  std::vector<std::string> env;
  for (const std::string& kv : Split(spec.substr(colon + 1), ',')) {
    if (!ValidSetting(kv)) UsageError("--variant " + name + ": '" + kv + "' is not KEY=VALUE");
    env.push_back(kv);
  }
  if (env.empty()) UsageError("--variant " + name + " sets nothing");
  return {name, env};
}

Flags ParseFlags(int argc, char** argv) {
  Flags flags;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) UsageError("missing value after " + arg);
      return argv[++i];
    };
    if (arg == "--runs") {
      std::optional<double> n = ParseNumber(value());
      if (!n || *n < 1 || *n > 1000 || *n != static_cast<int>(*n)) UsageError("--runs wants 1..1000");
      flags.runs = static_cast<int>(*n);
      flags.runs_set = true;
    } else if (arg == "--quick") {
      flags.quick = true;
    } else if (arg == "--scale") {
      flags.scale = value();
      flags.scale_set = true;
      if (!ValidScale(flags.scale)) UsageError("--scale wants tiny, quick, full or a factor > 0");
    } else if (arg == "--workload") {
      flags.workloads.push_back(value());
    } else if (arg == "--alloc") {
      flags.allocators.push_back(value());
    } else if (arg == "--ferry-variants") {
      flags.ferry_variants = true;
    } else if (arg == "--variant") {
      flags.variants.push_back(ParseVariant(value()));
    } else if (arg == "--pairs") {
      flags.pairs = ParsePairs(value());
    } else if (arg == "--no-pin") {
      flags.pin = false;
    } else if (arg == "--env") {
      std::string kv = value();
      if (!ValidSetting(kv)) UsageError("--env wants KEY=VALUE");
      flags.ferry_env.push_back(kv);
    } else if (arg == "--timeout") {
      std::optional<double> s = ParseNumber(value());
      if (!s || *s <= 0) UsageError("--timeout wants seconds > 0");
      flags.timeout_s = *s;
    } else if (arg == "--out") {
      flags.out_dir = value();
    } else if (arg == "--no-save") {
      flags.no_save = true;
    } else if (arg == "--ferry-lib") {
      flags.ferry_lib = value();
    } else if (arg == "--workload-bin") {
      flags.workload_bin = value();
    } else if (arg == "--list") {
      flags.list = true;
    } else if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else {
      UsageError("unknown flag " + arg);
    }
  }
  if (flags.quick) {
    if (!flags.runs_set) flags.runs = 3;
    if (!flags.scale_set) flags.scale = "quick";
  }
  for (size_t i = 0; i < flags.variants.size(); ++i) {
    const std::string& name = flags.variants[i].first;
    if (flags.ferry_variants && StandardVariant(name)) {
      UsageError("--variant " + name + " clashes with --ferry-variants' row of that name");
    }
    for (size_t j = 0; j < i; ++j) {
      if (flags.variants[j].first == name) UsageError("--variant " + name + " given twice");
    }
  }
  for (const std::string& name : flags.allocators) {
    bool custom = std::any_of(flags.variants.begin(), flags.variants.end(),
                              [&](const auto& v) { return v.first == name; });
    if (!KnownAllocator(name) && !StandardVariant(name) && !custom) {
      UsageError("unknown allocator " + name + " (see --list)");
    }
  }
  return flags;
}

// ---------------------------------------------------------------------------
// Small helpers (more in driver_util.h).

std::string Format(const char* format, double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, format, value);
  return buffer;
}

double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

// ---------------------------------------------------------------------------
// The experiment.

struct WorkloadInfo {
  std::string name;
  std::string summary;
  bool pairs = false;  // sized by --pairs: one table per pair count
};

// One table of the report: a workload, at one pair count when --pairs sizes
// it (pairs 0 otherwise).
struct Job {
  std::string label;  // "churn", "prodcons/2"
  WorkloadInfo workload;
  int pairs = 0;
};

struct Candidate {
  std::string name;
  std::string library;  // resolved LD_PRELOAD path; empty for glibc
  std::string shown;    // the same, shortened for the report
  std::string note;     // why it is not reported, if it is not
  bool usable = true;
  bool ferry = false;             // ferry or a variant of it: gets --env and FERRY_STATS checks
  std::vector<std::string> env;   // a variant's settings, KEY=VALUE
  std::vector<std::string> also_preload;  // a variant's PRELOAD= libraries
  int reclaimers_seen = -1;       // most reclaimer threads ferry reported in a check run
};


struct RunRecord {
  std::string job;      // its label
  int pairs = 0;
  std::string allocator;
  int run = 0;          // 1-based
  int position = 0;     // 1-based place in its round
  ProcessResult process;
  double rate = 0;      // the workload's own ops per second
  std::string unit;
  Extras extras;        // its EXTRA line, in order
  std::string series;   // its SERIES line
  std::string failure;  // empty when the run counts
};

// The rest of the first stdout line that starts with `tag`.
std::string LineAfter(const std::string& out, const std::string& tag) {
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind(tag + " ", 0) == 0) return line.substr(tag.size() + 1);
  }
  return "";
}

const ExtraColumn* KnownExtra(const std::string& key) {
  for (const ExtraColumn& column : kExtraColumns) {
    if (key == column.key) return &column;
  }
  return nullptr;
}

bool HiddenExtra(const std::string& key) {
  return std::any_of(std::begin(kHiddenExtras), std::end(kHiddenExtras), [&](const char* k) { return key == k; });
}

// An executable `name` on $PATH, or "".
std::string FindOnPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  for (const std::string& dir : Split(path != nullptr ? path : "/usr/bin:/bin", ':')) {
    std::string candidate = (dir.empty() ? "." : dir) + "/" + name;
    if (IsFile(candidate) && access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

// The machine's speed at this moment, apart from any allocator. The 2-vCPU
// machine this project measures on runs at times two to four times slower
// than at others, every allocator alike, and how far ferry leads in
// prodcons changes with it (perf/RESULTS.md, 2026-12-05 20:58); the report
// records the probe before and after, so that tables taken in different
// states are not read as a change. Two figures: one core's dependent chain
// of integer multiply-adds (ns a step: the core's own speed), and a cache
// line passed back and forth between CPU 0 and CPU 1 (ns a round trip: what
// a hand-off between threads on the two costs). About 0.1 s.
struct SpeedProbe {
  double chain_ns = 0;
  double round_trip_ns = 0;  // 0: not measured (CPU 0 or 1 not ours, or pinning refused)
};

bool PinTo(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return pthread_setaffinity_np(pthread_self(), sizeof set, &set) == 0;
}

double ChainNs() {
  constexpr uint64_t kSteps = 20'000'000;
  uint64_t x = 88172645463325252ULL;
  const double start = Now();
  for (uint64_t i = 0; i < kSteps; ++i) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    asm volatile("" : "+r"(x));  // one step after another, never folded
  }
  return (Now() - start) / kSteps * 1e9;
}

double RoundTripNs() {
  // Both threads spin, so on one CPU every round would wait for the
  // scheduler: measured only where this process may run on CPUs 0 and 1
  // (not under `taskset -c 0`).
  cpu_set_t before;
  if (pthread_getaffinity_np(pthread_self(), sizeof before, &before) != 0 || !CPU_ISSET(0, &before) ||
      !CPU_ISSET(1, &before)) {
    return 0;
  }
  constexpr uint64_t kRounds = 100'000;
  alignas(64) std::atomic<uint64_t> turn{0};
  std::atomic<bool> pinned{true};
  std::thread other([&] {
    if (!PinTo(1)) pinned.store(false);
    for (uint64_t i = 0; i < kRounds; ++i) {
      while (turn.load(std::memory_order_acquire) != 2 * i + 1) {
      }
      turn.store(2 * i + 2, std::memory_order_release);
    }
  });
  if (!PinTo(0)) pinned.store(false);
  const double start = Now();
  for (uint64_t i = 0; i < kRounds; ++i) {
    turn.store(2 * i + 1, std::memory_order_release);
    while (turn.load(std::memory_order_acquire) != 2 * i + 2) {
    }
  }
  const double seconds = Now() - start;
  other.join();
  pthread_setaffinity_np(pthread_self(), sizeof before, &before);
  return pinned.load() ? seconds / kRounds * 1e9 : 0;
}

SpeedProbe ProbeSpeed() { return SpeedProbe{ChainNs(), RoundTripNs()}; }

std::string SpeedText(const SpeedProbe& probe) {
  std::string text = Format("%.2f ns a step", probe.chain_ns);
  if (probe.round_trip_ns > 0) text += Format(", CPU 0-1 round trip %.0f ns", probe.round_trip_ns);
  return text;
}

class Compare {
 public:
  Compare(Flags flags, const char* argv0) : flags_(std::move(flags)), argv0_(argv0) {
    for (char** e = environ; *e != nullptr; ++e) {
      if (std::strncmp(*e, "FERRY_", 6) == 0) dropped_env_.push_back(std::string(*e).substr(0, std::strcspn(*e, "=")));
    }
  }

  int Main(int argc, char** argv) {
    double began = Now();
    command_ = "compare";
    for (int i = 1; i < argc; ++i) command_ += " " + std::string(argv[i]);
    if (!FindWorkloadBinary() || !LoadWorkloads()) return 1;
    SelectAllocators();
    if (flags_.list) return List();
    if (workloads_.empty()) UsageError("no workload selected");
    MakeJobs();
    if (build_mode_ != "opt") {
      std::fprintf(stderr, "compare: warning: the workloads were built in %s mode, not opt; "
                           "use `bazel run -c opt` for figures worth reading\n", build_mode_.c_str());
    }
    if (!dropped_env_.empty()) {
      std::fprintf(stderr, "compare: warning: not passing %s from the environment to the workloads "
                           "(use --env or --variant)\n", Join(dropped_env_, ", ").c_str());
    }
    CheckAllocators();
    load_before_ = LoadAverage();
    speed_before_ = ProbeSpeed();
    Measure();
    speed_after_ = ProbeSpeed();
    load_after_ = LoadAverage();
    std::string dir = OutputDir();
    std::string stem = dir.empty() ? "" : dir + "/" + StemName();
    if (!stem.empty()) {
      mkdir(dir.c_str(), 0755);  // its parent must exist
      WriteFile(stem + ".csv", Csv());
      plot_note_ = Plot(stem + ".png");
    }
    elapsed_s_ = Now() - began;
    std::string report = Report();
    std::fputs(report.c_str(), stdout);
    std::fflush(stdout);
    if (!stem.empty()) WriteFile(stem + ".md", report);
    std::fprintf(stderr, "compare: %.0f s in all\n", elapsed_s_);
    return failed_ ? 1 : 0;
  }

 private:
  bool FindWorkloadBinary() {
    workload_bin_ = flags_.workload_bin.empty() ? FindRunfile(argv0_, kWorkloadRunfile)
                                                : flags_.workload_bin;
    if (!IsFile(workload_bin_)) {
      std::fprintf(stderr, "compare: cannot find the workload binary (%s) in runfiles; "
                           "run through `bazel run //perf:compare` or pass --workload-bin\n",
                   kWorkloadRunfile);
      return false;
    }
    build_info_ = ReadBuildInfo();
    build_mode_ = ReadBuildMode();
    return true;
  }

  // Asks the workload binary which workloads it has, and keeps the selected.
  bool LoadWorkloads() {
    ProcessResult list = RunProcess({workload_bin_, "--list"}, BaseEnv(), 30);
    if (!list.ok()) {
      std::fprintf(stderr, "compare: %s --list failed: %s\n", workload_bin_.c_str(),
                   list.Describe().c_str());
      return false;
    }
    std::vector<WorkloadInfo> all;
    std::istringstream lines(list.out);
    for (std::string line; std::getline(lines, line);) {
      std::vector<std::string> parts = Split(line, '\t');
      if (parts.size() < 2) continue;
      all.push_back({parts[0], parts[1], parts.size() > 2 && parts[2] == "pairs"});
    }
    for (const std::string& wanted : flags_.workloads) {
      if (std::none_of(all.begin(), all.end(), [&](const WorkloadInfo& w) { return w.name == wanted; })) {
        UsageError("unknown workload " + wanted + " (see --list)");
      }
    }
    for (const WorkloadInfo& w : all) {
      if (flags_.workloads.empty() ||
          std::find(flags_.workloads.begin(), flags_.workloads.end(), w.name) != flags_.workloads.end()) {
        workloads_.push_back(w);
      }
    }
    all_workloads_ = all;
    return true;
  }

  void MakeJobs() {
    for (const WorkloadInfo& w : workloads_) {
      if (!w.pairs) {
        jobs_.push_back({w.name, w, 0});
        continue;
      }
      for (int pairs : flags_.pairs) jobs_.push_back({w.name + "/" + std::to_string(pairs), w, pairs});
    }
  }

  bool Wanted(const std::string& name) const {
    return std::find(flags_.allocators.begin(), flags_.allocators.end(), name) != flags_.allocators.end();
  }

  // The allocators in kAllocators order, ferry's variants right after ferry.
  void SelectAllocators() {
    std::string ferry_library = flags_.ferry_lib.empty() ? FindRunfile(argv0_, kFerryRunfile) : flags_.ferry_lib;
    auto add = [&](Candidate c) {
      if (c.library == kFromRunfiles) {
        c.ferry = true;
        c.library = ferry_library;
        if (!IsFile(c.library)) {
          c.usable = false;
          c.note = std::string("not found (") + kFerryRunfile + " is not in runfiles; pass --ferry-lib)";
          failed_ = true;  // ferry itself missing is an error, not a skip
        }
      } else if (!c.library.empty() && !IsFile(c.library)) {
        c.usable = false;
        c.note = "skipped: " + c.library + " is not installed";
      }
      for (auto kv = c.env.begin(); kv != c.env.end();) {
        if (kv->rfind(kPreloadKey, 0) != 0) {
          ++kv;
          continue;
        }
        std::string library = kv->substr(std::strlen(kPreloadKey));
        if (c.usable && !IsFile(library)) {
          c.usable = false;
          c.note = "skipped: " + library + " (PRELOAD) is not installed";
        }
        c.also_preload.push_back(IsFile(library) ? RealPath(library) : library);
        kv = c.env.erase(kv);
      }
      if (c.usable && !c.library.empty()) c.library = RealPath(c.library);
      c.shown = c.library;
      if (size_t at = c.shown.find("/bazel-out/"); at != std::string::npos) {
        c.shown = c.shown.substr(at + 1);  // drop the output base
      }
      allocators_.push_back(c);
    };
    for (const Allocator& a : kAllocators) {
      if (flags_.allocators.empty() || Wanted(a.name)) {
        Candidate c;
        c.name = a.name;
        c.library = a.library;
        add(c);
      }
      if (a.library != std::string(kFromRunfiles)) continue;
      for (const Variant& v : kFerryVariants) {
        if (!flags_.ferry_variants && !Wanted(v.name)) continue;
        Candidate c;
        c.name = v.name;
        c.library = kFromRunfiles;
        c.env = Split(v.env, ',');
        add(c);
      }
      for (const auto& [name, env] : flags_.variants) {
        Candidate c;
        c.name = name;
        c.library = kFromRunfiles;
        c.env = env;
        add(c);
      }
    }
  }

  int List() {
    std::printf("workloads:\n");
    for (const WorkloadInfo& w : all_workloads_) {
      std::printf("  %-10s %s%s\n", w.name.c_str(), w.summary.c_str(), w.pairs ? " [one table per --pairs count]" : "");
    }
    std::printf("allocators:\n");
    for (const Candidate& c : allocators_) {
      std::printf("  %-10s %s%s\n", c.name.c_str(),
                  c.usable ? (c.library.empty() ? "(no preload)" : c.library.c_str()) : c.note.c_str(),
                  c.ferry ? (" " + Settings(c)).c_str() : "");
    }
    std::printf("ferry variants (--ferry-variants, or --alloc NAME):\n");
    for (const Variant& v : kFerryVariants) std::printf("  %-10s %s\n", v.name, v.env);
    return 0;
  }

  // The environment of every child: ours without LD_PRELOAD and FERRY_*.
  static std::vector<std::string> BaseEnv() { return EnvWithoutAllocatorSettings(); }

  std::vector<std::string> EnvFor(const Candidate& c) const {
    std::vector<std::string> env = BaseEnv();
    if (!c.library.empty()) {
      std::vector<std::string> preload = {c.library};
      preload.insert(preload.end(), c.also_preload.begin(), c.also_preload.end());
      env.push_back("LD_PRELOAD=" + Join(preload, ":"));
    }
    if (c.ferry) {
      for (const std::string& kv : flags_.ferry_env) SetEnv(env, kv);
      for (const std::string& kv : c.env) SetEnv(env, kv);
    }
    return env;
  }

  std::vector<std::string> ArgsFor(const WorkloadInfo& w, int pairs, const std::string& scale) const {
    std::vector<std::string> args = {workload_bin_, w.name, "--scale", scale};
    if (w.pairs) {
      args.push_back("--pairs");
      args.push_back(std::to_string(pairs));
    }
    if (!flags_.pin) args.push_back("--no-pin");
    return args;
  }

  // What a ferry check run said on stderr: warnings refuse the row; the
  // statistics table (FERRY_STATS=1) gives the pool's thread count; other
  // lines are passed on.
  void ReadFerryStderr(Candidate& c, const std::string& workload, const std::string& err) {
    std::istringstream lines(err);
    for (std::string line; std::getline(lines, line);) {
      std::istringstream words(line);
      std::string key;
      long long value = 0;
      words >> key;
      bool stats_row = line.rfind("  ", 0) == 0 && static_cast<bool>(words >> value);
      if (stats_row) {
        if (key == "reclaimer_threads") c.reclaimers_seen = std::max(c.reclaimers_seen, static_cast<int>(value));
        continue;
      }
      if (line.rfind("ferry ", 0) == 0 && line.size() > 11 && line.compare(line.size() - 11, 11, " statistics") == 0) {
        continue;
      }
      if (line.rfind("ferry: warning", 0) == 0 && c.usable) {
        c.usable = false;
        c.note = "NOT REPORTED: check run of " + workload + " warned: " + line;
      }
      std::fprintf(stderr, "%s\n", line.c_str());
    }
  }

  // One tiny run of every workload per allocator with --check-preload.
  void CheckAllocators() {
    for (Candidate& c : allocators_) {
      if (!c.usable) {
        std::fprintf(stderr, "compare: %s %s\n", c.name.c_str(), c.note.c_str());
        continue;
      }
      for (const WorkloadInfo& w : workloads_) {
        std::vector<std::string> args =
            ArgsFor(w, *std::max_element(flags_.pairs.begin(), flags_.pairs.end()), "tiny");
        args.push_back("--check-preload");
        args.push_back(c.library.empty() ? "glibc" : c.library);
        std::vector<std::string> env = EnvFor(c);
        if (c.ferry) SetEnv(env, "FERRY_STATS=1");
        ProcessResult check = RunProcess(args, env, flags_.timeout_s, /*capture_stderr=*/c.ferry);
        std::map<std::string, std::string> preload = Fields(check.out, "PRELOAD");
        if (c.ferry) ReadFerryStderr(c, w.name, check.err);
        if (!c.usable) {
          // ferry warned about its settings
        } else if (preload["ok"] != "1") {
          c.note = "NOT REPORTED: " + w.name + " --check-preload found malloc=" +
                   (preload.count("malloc") ? preload["malloc"] : "?") + " (" + check.Describe() + ")";
        } else if (!check.ok()) {
          c.note = "NOT REPORTED: check run of " + w.name + " failed: " + check.Describe();
        } else {
          continue;
        }
        c.usable = false;
        failed_ = true;
        std::fprintf(stderr, "compare: %s %s\n", c.name.c_str(), c.note.c_str());
        break;
      }
      if (c.usable) {
        std::fprintf(stderr, "compare: %-9s checked: %s%s\n", c.name.c_str(),
                     c.library.empty() ? "glibc malloc (no preload)" : c.shown.c_str(),
                     c.ferry ? (" " + Settings(c) + "; reclaimer threads seen: " +
                                std::to_string(c.reclaimers_seen)).c_str()
                             : "");
      }
    }
  }

  // ferry's settings for this row, for messages: "(default settings)" or
  // "with FERRY_X=1 FERRY_Y=2".
  std::string Settings(const Candidate& c) const {
    std::vector<std::string> all = flags_.ferry_env;
    for (const std::string& kv : c.env) SetEnv(all, kv);
    std::string out = all.empty() ? "(default settings)" : "with " + Join(all, " ");
    for (const std::string& library : c.also_preload) out += ", also preloading " + library;
    return out;
  }

  // The extras worth a word in the progress line.
  static std::string ShortExtras(const Extras& extras) {
    std::string out;
    double first = -1, last = -1;
    for (const auto& [key, value] : extras) {
      if (key == "rss_live") out += "  RSS/live " + Format("%.2f", value);
      if (key == "rss_0s") first = value;
      if (key == "rss_3s") last = value;
    }
    if (first >= 0 && last >= 0) out += "  RSS after the burst " + Format("%.1f", first) + " -> " + Format("%.1f", last) + " MiB";
    return out;
  }

  void Measure() {
    std::vector<Candidate*> active;
    for (Candidate& c : allocators_) {
      if (c.usable) active.push_back(&c);
    }
    if (active.empty()) return;
    for (const Job& job : jobs_) {
      std::map<std::string, bool> broken;  // allocator -> failed a run
      for (int run = 1; run <= flags_.runs; ++run) {
        for (size_t k = 0; k < active.size(); ++k) {
          // Each round starts one allocator further on.
          const Candidate& c = *active[(k + run - 1) % active.size()];
          if (broken[c.name]) continue;
          RunRecord record;
          record.job = job.label;
          record.pairs = job.pairs;
          record.allocator = c.name;
          record.run = run;
          record.position = static_cast<int>(k + 1);
          record.process = RunProcess(ArgsFor(job.workload, job.pairs, flags_.scale), EnvFor(c), flags_.timeout_s);
          std::map<std::string, std::string> result = Fields(record.process.out, "RESULT");
          if (!record.process.ok()) {
            record.failure = record.process.Describe();
          } else if (!result.count("rate") || !result.count("unit")) {
            record.failure = "no RESULT line";
          } else {
            record.rate = std::atof(result["rate"].c_str());
            record.unit = result["unit"];
            record.extras = NumberFields(record.process.out, "EXTRA");
            record.series = LineAfter(record.process.out, "SERIES");
          }
          std::fprintf(stderr, "[%s %d/%d] %-9s ", job.label.c_str(), run, flags_.runs, c.name.c_str());
          if (record.failure.empty()) {
            const bool in_millions = record.rate >= kPlainRateBelow;
            std::fprintf(stderr, "wall %7.3f s  user+sys %7.3f s  peak RSS %8.1f MiB  %7.2f %s%s/s%s\n",
                         record.process.wall_s, record.process.user_s + record.process.sys_s,
                         record.process.max_rss_kib / 1024.0, in_millions ? record.rate / 1e6 : record.rate,
                         in_millions ? "M " : "", record.unit.c_str(), ShortExtras(record.extras).c_str());
          } else {
            std::fprintf(stderr, "FAILED: %s\n", record.failure.c_str());
            broken[c.name] = true;  // no more runs of it for this workload
            failed_ = true;
          }
          records_.push_back(std::move(record));
        }
      }
    }
  }

  // ---- Reporting -----------------------------------------------------------

  struct Figure {
    double median = 0, min = 0, max = 0;
  };

  static Figure FigureOf(const std::vector<double>& values) {
    Figure f;
    if (values.empty()) return f;
    f.median = Median(values);
    f.min = *std::min_element(values.begin(), values.end());
    f.max = *std::max_element(values.begin(), values.end());
    return f;
  }

  struct Summary {
    std::string allocator;
    bool ferry = false;
    bool ok = false;
    std::string failure;
    int runs = 0;
    double wall = 0, wall_min = 0, wall_max = 0, cpu = 0, rss_mib = 0, rate = 0;
    std::string unit;
    std::vector<std::pair<std::string, Figure>> extras;  // in order of first appearance

    const Figure* Extra(const std::string& key) const {
      for (const auto& [k, f] : extras) {
        if (k == key) return &f;
      }
      return nullptr;
    }
  };

  std::vector<Summary> Summarise(const std::string& job) const {
    std::vector<Summary> summaries;
    for (const Candidate& c : allocators_) {
      if (!c.usable) continue;
      Summary s;
      s.allocator = c.name;
      s.ferry = c.ferry;
      std::vector<double> wall, cpu, rss, rate;
      std::vector<std::pair<std::string, std::vector<double>>> extras;
      for (const RunRecord& r : records_) {
        if (r.job != job || r.allocator != c.name) continue;
        if (!r.failure.empty()) {
          s.failure = "FAILED in run " + std::to_string(r.run) + ": " + r.failure;
          continue;
        }
        wall.push_back(r.process.wall_s);
        cpu.push_back(r.process.user_s + r.process.sys_s);
        rss.push_back(r.process.max_rss_kib / 1024.0);
        rate.push_back(r.rate);
        s.unit = r.unit;
        for (const auto& [key, value] : r.extras) {
          auto it = std::find_if(extras.begin(), extras.end(), [&](const auto& e) { return e.first == key; });
          if (it == extras.end()) it = extras.insert(extras.end(), {key, {}});
          it->second.push_back(value);
        }
      }
      s.ok = s.failure.empty() && !wall.empty();
      if (s.ok) {
        s.runs = static_cast<int>(wall.size());
        Figure w = FigureOf(wall);
        s.wall = w.median;
        s.wall_min = w.min;
        s.wall_max = w.max;
        s.cpu = Median(cpu);
        s.rss_mib = Median(rss);
        s.rate = Median(rate);
        for (const auto& [key, values] : extras) s.extras.push_back({key, FigureOf(values)});
      }
      summaries.push_back(s);
    }
    return summaries;
  }

  // Formats rows as a Markdown table with padded columns, so that it reads
  // well in a terminal too. `right[i]` right-aligns column i.
  static std::string Table(const std::vector<std::vector<std::string>>& rows,
                           const std::vector<bool>& right) {
    std::vector<size_t> width(rows[0].size(), 3);
    auto length = [](const std::string& s) {  // display width: count UTF-8 lead bytes
      return static_cast<size_t>(std::count_if(s.begin(), s.end(), [](char ch) { return (ch & 0xc0) != 0x80; }));
    };
    for (const auto& row : rows) {
      for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], length(row[i]));
    }
    std::string out;
    auto line = [&](const std::vector<std::string>& row) {
      out += "|";
      for (size_t i = 0; i < row.size(); ++i) {
        std::string pad(width[i] - length(row[i]), ' ');
        out += " " + (right[i] ? pad + row[i] : row[i] + pad) + " |";
      }
      out += "\n";
    };
    line(rows[0]);
    out += "|";
    for (size_t i = 0; i < width.size(); ++i) {
      out += right[i] ? " " + std::string(width[i] - 1, '-') + ": |" : " " + std::string(width[i], '-') + " |";
    }
    out += "\n";
    for (size_t r = 1; r < rows.size(); ++r) line(rows[r]);
    return out;
  }

  // The extra columns of a table: known keys in kExtraColumns order, then
  // the others (not hidden) in order of appearance.
  static std::vector<std::string> ExtraKeys(const std::vector<Summary>& summaries) {
    std::vector<std::string> present;
    for (const Summary& s : summaries) {
      for (const auto& [key, figure] : s.extras) {
        if (!HiddenExtra(key) && std::find(present.begin(), present.end(), key) == present.end()) {
          present.push_back(key);
        }
      }
    }
    std::vector<std::string> keys;
    for (const ExtraColumn& column : kExtraColumns) {
      if (std::find(present.begin(), present.end(), column.key) != present.end()) keys.push_back(column.key);
    }
    for (const std::string& key : present) {
      if (KnownExtra(key) == nullptr) keys.push_back(key);
    }
    return keys;
  }

  // A column's title. idle's rss_Ns points are N/3 of its idle time, which
  // is 3 s except below scale 0.2.
  static std::string ExtraLabel(const std::string& key, const std::vector<Summary>& summaries) {
    const ExtraColumn* column = KnownExtra(key);
    if (column == nullptr) return key;
    if (key.size() == 6 && key.rfind("rss_", 0) == 0 && key[5] == 's') {
      for (const Summary& s : summaries) {
        const Figure* idle = s.Extra("idle_s");
        if (idle != nullptr && std::abs(idle->median - 3.0) > 1e-6) {
          return "RSS MiB +" + Format("%.2g", idle->median * (key[4] - '0') / 3) + " s";
        }
      }
    }
    return column->label;
  }

  std::string JobTable(const Job& job) const {
    std::vector<Summary> summaries = Summarise(job.label);
    const Summary* ref = nullptr;
    for (const Summary& s : summaries) {
      if (s.ok && s.allocator == kReference) ref = &s;
    }
    for (const Summary& s : summaries) {
      if (ref == nullptr && s.ok) ref = &s;
    }
    std::string ref_name = ref ? ref->allocator : kReference;
    std::string unit = "ops";
    double top_rate = 0;
    for (const Summary& s : summaries) {
      if (!s.ok) continue;
      unit = s.unit;
      top_rate = std::max(top_rate, s.rate);
    }
    // Millions a second, unless the workload counts big things (large: a
    // few hundred buffers a second read 0.00 M).
    const bool in_millions = top_rate >= kPlainRateBelow;
    auto ratio = [&](double value, double reference) {
      return reference > 0 ? Format("%.2f", value / reference) : std::string("-");
    };
    std::vector<std::string> extra_keys = ExtraKeys(summaries);
    std::vector<std::string> header = {"allocator", "wall s", "× " + ref_name, "wall min–max", "user+sys s",
                                       "× " + ref_name, "peak RSS MiB", "× " + ref_name, (in_millions ? "M " : "") + unit + "/s"};
    for (const std::string& key : extra_keys) header.push_back(ExtraLabel(key, summaries));
    std::vector<std::vector<std::string>> rows = {header};
    for (const Summary& s : summaries) {
      if (!s.ok) {
        std::vector<std::string> row(header.size());
        row[0] = s.allocator;
        row[1] = s.failure.empty() ? "no runs" : s.failure;
        rows.push_back(row);
        continue;
      }
      std::vector<std::string> row = {
          s.allocator, Format("%.3f", s.wall), ratio(s.wall, ref->wall),
          Format("%.3f", s.wall_min) + "–" + Format("%.3f", s.wall_max), Format("%.3f", s.cpu),
          ratio(s.cpu, ref->cpu), Format("%.1f", s.rss_mib), ratio(s.rss_mib, ref->rss_mib),
          in_millions ? Format("%.2f", s.rate / 1e6) : Format("%.1f", s.rate)};
      for (const std::string& key : extra_keys) {
        const Figure* f = s.Extra(key);
        const ExtraColumn* column = KnownExtra(key);
        row.push_back(f == nullptr ? "-" : Format(column ? column->format : "%.3g", f->median));
      }
      rows.push_back(row);
    }
    std::vector<bool> right(header.size(), true);
    right[0] = false;
    std::string out = "## " + job.label + "\n\n" + job.workload.summary;
    if (job.pairs > 0) out += "; " + std::to_string(job.pairs) + (job.pairs == 1 ? " pair" : " pairs");
    out += ".\n\n" + Table(rows, right);
    return out;
  }

  // The compilation mode of the workload binary, read off its bazel-out
  // path (k8-opt, k8-fastbuild, ...); timings only mean something with opt.
  // Outside bazel-out (a bundle made by perf/device_bundle.sh), the first
  // word of a BUILD_INFO file beside the binary (build_info_, read first).
  std::string ReadBuildMode() const {
    std::string path = RealPath(workload_bin_);
    for (const char* mode : {"opt", "fastbuild", "dbg"}) {
      if (path.find(std::string("-") + mode + "/bin/") != std::string::npos) return mode;
    }
    std::string mode;
    std::istringstream(build_info_) >> mode;
    return mode.empty() ? "unknown" : mode;
  }

  // The first line of BUILD_INFO beside the workload binary ("opt 7b4bcac",
  // written by perf/device_bundle.sh), or "" when there is none.
  std::string ReadBuildInfo() const {
    const std::string path = RealPath(workload_bin_);
    const size_t slash = path.rfind('/');
    std::ifstream in((slash == std::string::npos ? std::string(".") : path.substr(0, slash)) + "/BUILD_INFO");
    std::string line;
    std::getline(in, line);
    return line;
  }

  static std::string LoadAverage() {
    std::ifstream in("/proc/loadavg");
    std::string one, five, fifteen;
    in >> one >> five >> fifteen;
    return one + " " + five + " " + fifteen;
  }

  static std::string Machine() {
    std::string model = "unknown CPU";
    std::ifstream cpuinfo("/proc/cpuinfo");
    for (std::string line; std::getline(cpuinfo, line);) {
      if (line.rfind("model name", 0) == 0 && line.find(':') != std::string::npos) {
        model = line.substr(line.find(':') + 2);
        break;
      }
    }
    long long mem_kib = 0;
    std::ifstream meminfo("/proc/meminfo");
    for (std::string key; meminfo >> key;) {
      if (key == "MemTotal:") {
        meminfo >> mem_kib;
        break;
      }
    }
    utsname u;
    uname(&u);
    return std::to_string(sysconf(_SC_NPROCESSORS_ONLN)) + " CPUs (nproc), " + model + ", " +
           Format("%.0f", mem_kib / 1048576.0) + " GiB RAM, " + u.sysname + " " + u.release + " " +
           u.machine;
  }

  static std::string Date() {
    time_t now = time(nullptr);
    tm utc;
    gmtime_r(&now, &utc);
    char buffer[64];
    strftime(buffer, sizeof buffer, "%Y-%m-%d %H:%M UTC", &utc);
    return buffer;
  }

  std::string PairsText() const {
    std::vector<std::string> parts;
    for (int p : flags_.pairs) parts.push_back(std::to_string(p));
    return Join(parts, ",");
  }

  std::string Report() const {
    std::string out = "# ferry: allocator comparison\n\n";
    out += "- date: " + Date() + "\n";
    out += "- machine: " + Machine() + "\n";
    out += "- load average (1 5 15 min): " + load_before_ + " before, " + load_after_ + " after\n";
    out += "- speed probe (one core's dependent chain; a cache line between CPUs 0 and 1): " +
           SpeedText(speed_before_) + " before, " + SpeedText(speed_after_) + " after\n";
    out += "- command: `" + command_ + "` (" + Format("%.0f", elapsed_s_) + " s)\n";
    out += "- build: " + build_mode_ + (build_info_.empty() ? "" : " (BUILD_INFO: " + build_info_ + ")");
    out += "; scale " + flags_.scale + "; runs: " +
           std::to_string(flags_.runs) + " per allocator and workload, alternating; pairs " + PairsText() +
           "; threads " + (flags_.pin ? "pinned" : "not pinned");
    if (!flags_.ferry_env.empty()) {
      out += "; ferry and its variants run with";
      for (const std::string& kv : flags_.ferry_env) out += " `" + kv + "`";
    }
    out += "\n";
    if (!dropped_env_.empty()) {
      out += "- not passed on from the caller's environment: " + Join(dropped_env_, ", ") + "\n";
    }
    out += "- each figure is the median over runs; wall is the whole process "
           "(start to exit), user+sys and peak RSS come from wait4; "
           "× is the ratio to " + std::string(kReference) +
           " (to the first allocator listed when it is not reported); lower is better\n";
    out += "- allocators:\n";
    for (const Candidate& c : allocators_) {
      out += "  - " + c.name + ": ";
      if (!c.note.empty()) {
        out += c.note;
      } else {
        out += c.library.empty() ? "glibc malloc (no preload)" : "`" + c.shown + "`";
        if (c.ferry) {
          out += " " + Settings(c);
          if (c.reclaimers_seen >= 0) {
            out += "; reclaimer threads at exit of the check runs: " + std::to_string(c.reclaimers_seen);
          }
        }
      }
      out += "\n";
    }
    if (!plot_note_.empty()) out += "- " + plot_note_ + "\n";
    for (const Job& job : jobs_) out += "\n" + JobTable(job);
    return out;
  }

  static std::string CsvField(std::string text) {
    std::replace(text.begin(), text.end(), ',', ';');
    std::replace(text.begin(), text.end(), '\n', ' ');
    return text;
  }

  std::string Csv() const {
    std::string out =
        "workload,pairs,allocator,run,position,wall_s,user_s,sys_s,max_rss_kib,rate,unit,status,extras,series\n";
    for (const RunRecord& r : records_) {
      const ProcessResult& p = r.process;
      std::vector<std::string> extras;
      for (const auto& [key, value] : r.extras) extras.push_back(key + "=" + Format("%.6g", value));
      char line[512];
      std::snprintf(line, sizeof line, "%s,%d,%s,%d,%d,%.6f,%.6f,%.6f,%ld,%.1f,%s,%s,", r.job.c_str(), r.pairs,
                    r.allocator.c_str(), r.run, r.position, p.wall_s, p.user_s, p.sys_s, p.max_rss_kib, r.rate,
                    r.unit.c_str(), r.failure.empty() ? "ok" : CsvField(r.failure).c_str());
      out += line + CsvField(Join(extras, ";")) + "," + CsvField(r.series) + "\n";
    }
    return out;
  }

  // Where files go: --out, else perf/results/ in the workspace under
  // `bazel run`, else nowhere ("").
  std::string OutputDir() const {
    if (flags_.no_save) return "";
    if (!flags_.out_dir.empty()) return flags_.out_dir;
    const char* workspace = std::getenv("BUILD_WORKSPACE_DIRECTORY");
    if (workspace == nullptr || *workspace == '\0') return "";
    return std::string(workspace) + "/perf/results";
  }

  // latest: the full comparison (full scale, every workload, every
  // allocator; variants may be added). quick: --quick scale. run: the rest,
  // so that a partial run never replaces the full one.
  std::string StemName() const {
    if (flags_.scale == "full" && flags_.workloads.empty() && flags_.allocators.empty()) return "latest";
    if (flags_.scale == "quick") return "quick";
    return "run";
  }

  static void WriteFile(const std::string& path, const std::string& text) {
    std::ofstream file(path, std::ios::trunc);
    file << text;
    file.close();
    if (!file) {
      std::fprintf(stderr, "compare: could not write %s\n", path.c_str());
    } else {
      std::fprintf(stderr, "compare: wrote %s\n", path.c_str());
    }
  }

  // Draws one panel per table (median wall time, error bars min to max,
  // ferry's rows in red) plus a panel for each plotted extra (kPlottedExtras)
  // into `png` with gnuplot. Never fails the run: returns the line for the
  // report, which says what went wrong if anything did.
  std::string Plot(const std::string& png) const {
    std::string gnuplot = FindOnPath("gnuplot");
    if (gnuplot.empty()) {
      std::fprintf(stderr, "compare: gnuplot not found; no plot (apt-get install gnuplot-nox)\n");
      return "plot skipped: gnuplot not found (package gnuplot-nox)";
    }
    struct Panel {
      std::string title;
      std::vector<std::string> rows;  // "name" median min max color
    };
    std::vector<Panel> panels;
    auto color = [](const Summary& s) {
      if (s.ferry) return s.allocator == "ferry" ? "0xd62728" : "0xff7f0e";
      return s.allocator == kReference ? "0x2ca02c" : "0x1f77b4";
    };
    auto row = [&](const Summary& s, double median, double lo, double hi) {
      return "\"" + s.allocator + "\" " + Format("%.6g", median) + " " + Format("%.6g", lo) + " " +
             Format("%.6g", hi) + " " + color(s);
    };
    for (const Job& job : jobs_) {
      std::vector<Summary> summaries = Summarise(job.label);
      Panel wall{job.label + ": wall s", {}};
      for (const Summary& s : summaries) {
        if (s.ok) wall.rows.push_back(row(s, s.wall, s.wall_min, s.wall_max));
      }
      if (wall.rows.empty()) continue;
      panels.push_back(wall);
      for (const char* key : kPlottedExtras) {
        Panel extra{job.label + ": " + ExtraLabel(key, summaries), {}};
        for (const Summary& s : summaries) {
          const Figure* f = s.ok ? s.Extra(key) : nullptr;
          if (f != nullptr) extra.rows.push_back(row(s, f->median, f->min, f->max));
        }
        if (!extra.rows.empty()) panels.push_back(extra);
      }
    }
    if (panels.empty()) return "plot skipped: no figures";

    char dir_template[] = "/tmp/ferry-compare-plot-XXXXXX";
    if (mkdtemp(dir_template) == nullptr) return "plot skipped: mkdtemp failed";
    std::string dir = dir_template;
    std::string data = dir + "/data.txt", script = dir + "/plot.gp";
    std::string data_text;
    for (const Panel& p : panels) data_text += Join(p.rows, "\n") + "\n\n\n";
    const int columns = panels.size() < 3 ? static_cast<int>(panels.size()) : 3;
    const int rows = static_cast<int>((panels.size() + columns - 1) / columns);
    auto script_for = [&](const std::string& terminal) {
      std::string gp = "set terminal " + terminal + " size " + std::to_string(columns * 440) + "," +
                       std::to_string(rows * 300 + 40) + "\n";
      gp += "set output '" + png + "'\n";
      gp += "set multiplot layout " + std::to_string(rows) + "," + std::to_string(columns) +
            " title \"ferry vs other allocators: median of " + std::to_string(flags_.runs) +
            " runs, error bars min-max; scale " + flags_.scale + "; " + Date() + "\"\n";
      gp += "set style fill solid 0.8 border -1\nset boxwidth 0.7 relative\nunset key\n";
      gp += "set xtics rotate by 40 right nomirror\nset ytics nomirror\nset grid ytics\n";
      gp += "set yrange [0:*]\nset offsets 0, 0, graph 0.05, 0\n";
      for (size_t i = 0; i < panels.size(); ++i) {
        std::string title = panels[i].title;
        std::replace(title.begin(), title.end(), '"', '\'');
        gp += "set title \"" + title + "\" noenhanced\n";
        gp += "set xrange [-0.6:" + Format("%.1f", panels[i].rows.size() - 0.4) + "]\n";
        gp += "plot '" + data + "' index " + std::to_string(i) +
              " using 0:2:5:xtic(1) with boxes lc rgb variable, '' index " + std::to_string(i) +
              " using 0:2:3:4 with yerrorbars lc rgb 'black' pt 0\n";
      }
      gp += "unset multiplot\n";
      return gp;
    };
    std::string note;
    std::ofstream(data, std::ios::trunc) << data_text;
    for (const char* terminal : {"pngcairo noenhanced font 'sans,8'", "png small"}) {
      std::ofstream(script, std::ios::trunc) << script_for(terminal);
      ProcessResult result = RunProcess({gnuplot, script}, BaseEnv(), 120, /*capture_stderr=*/true);
      if (result.ok() && IsFile(png)) {
        std::fprintf(stderr, "compare: wrote %s\n", png.c_str());
        note = "plot: `" + png.substr(png.rfind('/') + 1) +
               "` (wall time per table; RSS/live for onefree and RSS 1 s after the burst for idle; "
               "ferry in red, its variants in orange, " + kReference + " in green)";
        break;
      }
      std::string first_line = result.err.substr(0, result.err.find('\n'));
      note = "plot failed: gnuplot " + result.Describe() + (first_line.empty() ? "" : ": " + first_line);
    }
    if (note.rfind("plot failed", 0) == 0) std::fprintf(stderr, "compare: %s\n", note.c_str());
    unlink(data.c_str());
    unlink(script.c_str());
    rmdir(dir.c_str());
    return note;
  }

  Flags flags_;
  const char* argv0_;
  std::string command_;
  std::string workload_bin_;
  std::string build_info_;  // BUILD_INFO's first line beside workload_bin_, or ""
  std::string build_mode_;  // opt, fastbuild, dbg or unknown
  std::vector<WorkloadInfo> all_workloads_;
  std::vector<WorkloadInfo> workloads_;
  std::vector<Job> jobs_;
  std::vector<Candidate> allocators_;
  std::vector<RunRecord> records_;
  std::vector<std::string> dropped_env_;
  std::string load_before_, load_after_;
  SpeedProbe speed_before_, speed_after_;
  std::string plot_note_;
  double elapsed_s_ = 0;
  bool failed_ = false;
};

}  // namespace

int main(int argc, char** argv) {
  Compare compare(ParseFlags(argc, argv), argv[0]);
  return compare.Main(argc, argv);
}

// perf/soak.cc — `//perf:soak`: ferry under every workload, again and again,
// for a given time (tools/soak runs it; //tests:soak_test runs a short one).
//
//   tools/soak [--time S] [--seed N] [flags]          (see --help)
//
// The programs are every workload of `workload --list` and the soak programs
// of `workload --list-soak` (forkloop: fork while threads allocate and free
// across threads; threadchurn: threads that exit with memory in flight), all
// in the one allocator-agnostic `workload` binary, run on ferry through
// LD_PRELOAD of libferry.so (--check-preload makes each run confirm it).
// Run i is program i mod P (P programs, so one cycle runs each once) under
// configuration i mod 10: FERRY_RECLAIMERS = 0..4 with
// FERRY_RECLAIMER_BACKEND=threads, then 0..4 with tbb (libtbb.so.12 preloaded
// after ferry: ferry uses oneTBB only in a process that has it). Since P and
// 10 are coprime here (P = 11), every program meets every configuration
// within 10 cycles, and the first cycle alone has every configuration. Each
// run also draws, from --seed and its index: the workload's seed, its scale
// (log-uniform between the program's minimum and --max-scale), --pairs 1-4,
// pinned or not (1 in 3 not), FERRY_PURGE_DELAY_MS (default 0, 250, 50 or 1000)
// and FERRY_BATCH (default, 8 or 4096). FERRY_STATS=1 always.
//
// A run fails when
//   - it exits with any status but 0 (3: objects corrupted; 4: the preload
//     did not take; 5: a child of forkloop failed or hung), dies of a signal,
//     or leaves a process behind in its process group;
//   - it runs past --timeout: a hang. Before the kill, gdb (when installed)
//     takes every thread's backtrace of every process in the group;
//   - ferry prints anything but its statistics table on stderr (a warning,
//     a diagnostic), or no table, or a table that fails a sanity check
//     (StatsProblems below: counts that cannot be, e.g. more blocks returned
//     than freed remotely, or a wrapped-around negative);
//   - its peak RSS (wait4's ru_maxrss, the process and the children it
//     waited for) exceeds kPeakFactor x its live data + kPeakAllowance: a
//     generous bound against leaks and runaway growth, not a tight one. Live
//     data per program: kPrograms below (from each workload's header
//     comment), or the run's own EXTRA live_mib / live_mib_max;
//   - a figure of its own exceeds its bound (RssProblems below): onefree's
//     RSS/live, idle's RSS 2 s after the burst (the threads backend with a
//     pool returns freed memory on its own), threadchurn's late RSS against
//     its early RSS.
// Every failure is printed with the command that reproduces that run alone,
// and its stdout, stderr and backtraces go to a file in the log directory.
//
// The soak stops by itself: it starts no run after --time seconds (but goes
// on until --min-cycles cycles are done), or, with --every-pair, after
// programs x 10 runs (cycle k runs every program under configuration k: the
// same runs every time for a given seed), lets the current run finish, and
// prints a summary: runs per program and configuration, the failures, the
// highest RSS ratios, the total time. SIGINT or SIGTERM kill the current run
// and print the summary too. Exit status: 0 when every run passed, 1 when
// any failed, 2 for bad flags.
#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "perf/driver_util.h"

namespace {

using namespace ferry::perf_driver;

constexpr char kFerryRunfile[] = "libferry.so";
constexpr char kWorkloadRunfile[] = "perf/workload";
constexpr char kTbbLibrary[] = "/usr/lib/x86_64-linux-gnu/libtbb.so.12";
constexpr char kGdb[] = "/usr/bin/gdb";

// Peak RSS bound: kPeakFactor x live MiB + kPeakAllowance MiB. The allowance
// covers the binary, libc and libstdc++, partly used pages of each size class
// and thread, batches in flight and a segment or two per thread (ferry's
// peaks on this machine: 3-35 MiB over live data).
constexpr double kPeakFactor = 2.0;
constexpr double kPeakAllowance = 64;

// What the soak knows of each program: the most data it holds live (MiB; 0:
// the run reports it as EXTRA live_mib or live_mib_max, or it is idle's
// burst), the smallest scale it runs at (where its own RSS figures mean
// something), and whether --pairs multiplies its live data.
struct ProgramInfo {
  const char* name;
  double live_mib;
  double min_scale;
  bool live_per_pair;
};
constexpr ProgramInfo kPrograms[] = {
    {"churn", 8, 0.01, false},     // 65536 slots of 8-1024 B, skewed small: ~7 MiB
    {"prodcons", 4, 0.01, true},   // per pair: 64 chunks x 256 objects of 16-256 B in flight
    {"larson", 4, 0.01, false},    // 4 lineages x 2000 slots of 8-1000 B
    {"mstress", 16, 0.01, false},  // 4096 transfer + 4 x 1024 local slots of 8 B-8 KiB, skewed small
    {"onefree", 0, 0.2, false},    // EXTRA live_mib (64 MiB from scale 0.2 on)
    {"cscratch", 1, 0.01, false},  // a few 8 B objects per worker
    {"realloc", 16, 0.01, false},  // 256 buffers of up to 64 KiB
    {"medium", 16, 0.01, false},   // 1024 slots of 1-64 KiB, log-uniform: ~9 MiB
    {"large", 0, 0.01, false},     // EXTRA live_mib_max (4 buffers of 5-25 MiB below scale 0.2, 20 from it)
    {"idle", 0, 0.2, false},       // the burst: scale x 512 MiB, at least 4; 3 s of idle from 0.2 on
    {"phases", 0, 0.01, false},    // EXTRA live_mib (2 x 64 MiB from scale 0.2 on)
    {"teardown", 2, 0.01, true},   // per thread: 2000 objects of 8-1024 B, ~1 MiB
    {"forkloop", 0, 0.01, false},  // EXTRA live_mib_max
    {"threadchurn", 0, 0.01, false},  // EXTRA live_mib_max
};

// onefree: median and largest sample of RSS / live bytes (ferry measures
// 1.3-1.4 here; glibc 1.14), when the live data is large enough (>= 48 MiB)
// for the fixed costs not to dominate (a median of 2.22 was seen with 33 MiB
// live, at scale 0.203 on a loaded machine). The median is the steady state (the
// growth of mimalloc#1364 reached 4.9). Single samples spiked to 3.9-5.4 in
// the first soaks, on a loaded machine: a producer that finished its steady
// phase first sent its whole set away while a lagging one kept the sampling
// going, so live data fell by a quarter or more under an unchanged RSS. The
// producers now wait for each other before they drain (onefree.cc); since,
// the largest sample stays within a few percent of the median.
constexpr double kOnefreeMinLiveMiB = 48;
constexpr double kOnefreeMedian = 2.0;
constexpr double kOnefreeMax = 3.0;
// idle with the threads backend and a pool: RSS 2 s after the last free,
// over the RSS before the burst (ferry: 5-10 MiB). A free slice goes back to
// the OS at most a housekeeping tick (50 ms) after it has been free for the
// purge delay (for 250 ms, when the delay is shorter and more than 8 MiB was
// freed at once); with FERRY_PURGE_DELAY_MS=1000 that leaves too little room on a
// loaded machine, so those runs are judged at 3 s. With FERRY_RECLAIMERS=0
// or the oneTBB backend nothing runs while the process idles (README), so it
// only must not grow while idle.
constexpr double kIdleReturnedMiB = 48;
constexpr double kIdleGrowthMiB = 16;
// threadchurn: RSS when all threads are done <= factor x RSS after a quarter
// of them + allowance: exited threads' memory is used again.
constexpr double kChurnGrowthFactor = 1.5;
constexpr double kChurnGrowthMiB = 32;

constexpr const char* kPurgeDelays[] = {"", "250", "50", "1000"};  // "" = default (0)
constexpr const char* kBatches[] = {"", "", "8", "4096"};         // "" = default (256)
// FERRY_INLINE_WHEN_BUSY: "" = default (1: a crowded machine, as the soak's
// is, sends batches back inline); "0" keeps the pool at work.
constexpr const char* kInlineWhenBusy[] = {"", "0"};
constexpr int kConfigs = 10;  // FERRY_RECLAIMERS 0-4 x {threads, tbb}

constexpr char kUsage[] =
    "usage: soak [flags]\n"
    "  --time S          start no run after S seconds (default 60)\n"
    "  --seed N          seed of every choice (default 1)\n"
    "  --min-cycles N    go on past --time until N cycles (each program once) are done (default 0)\n"
    "  --every-pair      instead of --time and --min-cycles: run each program under each\n"
    "                    configuration exactly once (programs x 10 runs, a fixed set for a\n"
    "                    given seed; CI's form)\n"
    "  --max-scale S     largest --scale a run draws (default 0.5; at least each program's minimum)\n"
    "  --max-scale-of NAME=S  a lower largest --scale for one program (repeatable)\n"
    "  --scale S         run every program at this scale instead\n"
    "  --timeout S       a run that takes longer has hung: backtraces, kill, failure (default 120)\n"
    "  --only NAME       run only this program (repeatable)\n"
    "  --alloc ferry|glibc  the allocator (default ferry; glibc checks the soak itself)\n"
    "  --log-dir DIR     where failed runs' output goes (default $TEST_UNDECLARED_OUTPUTS_DIR, or a\n"
    "                    new /tmp/ferry-soak.*)\n"
    "  --ferry-lib PATH  use this libferry.so instead of the one in runfiles\n"
    "  --workload-bin PATH  use this workload binary instead of the one in runfiles\n"
    "  --quiet           no line per run\n";

struct Flags {
  std::string workload_bin;
  std::string ferry_lib;
  double time_s = 60;
  uint64_t seed = 1;
  long min_cycles = 0;
  bool every_pair = false;
  double max_scale = 0.5;
  std::map<std::string, double> max_scale_of;  // --max-scale-of
  std::optional<double> scale;
  double timeout_s = 120;
  std::vector<std::string> only;
  bool ferry = true;
  std::string log_dir;
  bool quiet = false;
};

[[noreturn]] void UsageError(const std::string& message) {
  std::fprintf(stderr, "soak: %s\n%s", message.c_str(), kUsage);
  std::exit(2);
}

double NumberOrDie(const std::string& flag, const std::string& text, double min, double max) {
  char* end = nullptr;
  errno = 0;
  double value = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || errno != 0 || !(value >= min && value <= max)) {
    UsageError(flag + " wants a number in " + std::to_string(min) + ".." + std::to_string(max));
  }
  return value;
}

// The flag's string in `flags` when `arg` is a flag that takes a path.
std::string* PathFlag(Flags& flags, const std::string& arg) {
  const std::pair<const char*, std::string*> paths[] = {
      {"--log-dir", &flags.log_dir}, {"--ferry-lib", &flags.ferry_lib}, {"--workload-bin", &flags.workload_bin}};
  for (const auto& [name, path] : paths) {
    if (arg == name) return path;
  }
  return nullptr;
}

Flags ParseFlags(int argc, char** argv) {
  Flags flags;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) UsageError("missing value after " + arg);
      return argv[++i];
    };
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (arg == "--time") {
      flags.time_s = NumberOrDie(arg, value(), 0, 1e7);
    } else if (arg == "--seed") {
      flags.seed = static_cast<uint64_t>(NumberOrDie(arg, value(), 0, 1e15));
    } else if (arg == "--min-cycles") {
      flags.min_cycles = static_cast<long>(NumberOrDie(arg, value(), 0, 1e6));
    } else if (arg == "--every-pair") {
      flags.every_pair = true;
    } else if (arg == "--max-scale") {
      flags.max_scale = NumberOrDie(arg, value(), 0.001, 10);
    } else if (arg == "--max-scale-of") {
      const std::string setting = value();
      const size_t equals = setting.find('=');
      if (equals == std::string::npos || equals == 0) UsageError("--max-scale-of wants NAME=S");
      flags.max_scale_of[setting.substr(0, equals)] = NumberOrDie(arg, setting.substr(equals + 1), 0.001, 10);
    } else if (arg == "--scale") {
      flags.scale = NumberOrDie(arg, value(), 0.001, 10);
    } else if (arg == "--timeout") {
      flags.timeout_s = NumberOrDie(arg, value(), 1, 1e5);
    } else if (arg == "--only") {
      flags.only.push_back(value());
    } else if (arg == "--alloc") {
      std::string alloc = value();
      if (alloc != "ferry" && alloc != "glibc") UsageError("--alloc wants ferry or glibc");
      flags.ferry = alloc == "ferry";
    } else if (arg == "--quiet") {
      flags.quiet = true;
    } else if (std::string* path = PathFlag(flags, arg)) {
      *path = value();
    } else {
      UsageError("unknown flag " + arg);
    }
  }
  return flags;
}

volatile sig_atomic_t g_stop = 0;
void OnSignal(int) { g_stop = 1; }

// One run's settings.
struct Config {
  int reclaimers = 0;
  bool tbb = false;
  std::string purge;  // FERRY_PURGE_DELAY_MS, "" for the default
  std::string batch;  // FERRY_BATCH, "" for the default
  std::string inline_when_busy;  // FERRY_INLINE_WHEN_BUSY, "" for the default
  bool pin = true;
  int pairs = 1;
  double scale = 0.2;
  uint64_t seed = 0;

  std::string Column() const { return "r" + std::to_string(reclaimers) + (tbb ? "b" : "t"); }
  std::string Describe() const {
    char scale_text[32];
    std::snprintf(scale_text, sizeof scale_text, "%.3g", scale);
    return "r" + std::to_string(reclaimers) + "/" + (tbb ? "tbb" : "threads") +
           " purge=" + (purge.empty() ? "default" : purge) + " batch=" + (batch.empty() ? "default" : batch) +
           (inline_when_busy.empty() ? "" : " inline_when_busy=" + inline_when_busy) +
           " scale=" + scale_text + " pairs=" + std::to_string(pairs) + " seed=" + std::to_string(seed) +
           (pin ? "" : " no-pin");
  }
};

// A run's figures that the summary keeps the highest of.
struct Highest {
  double value = 0;
  long run = -1;
  void See(double v, long r) {
    if (r >= 0 && (run < 0 || v > value)) {
      value = v;
      run = r;
    }
  }
};

struct Failure {
  long run;
  std::string program;
  std::string config;
  std::string what;
  std::string command;
  std::string log;
};

// Quotes for a POSIX shell when needed.
std::string ShellQuote(const std::string& s) {
  if (!s.empty() && s.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./=:,+") ==
                        std::string::npos) {
    return s;
  }
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// The pids of every live process in process group `pgid`.
std::vector<pid_t> GroupMembers(pid_t pgid) {
  std::vector<pid_t> pids;
  DIR* proc = opendir("/proc");
  if (proc == nullptr) return pids;
  while (dirent* entry = readdir(proc)) {
    char* end = nullptr;
    long pid = std::strtol(entry->d_name, &end, 10);
    if (*end != '\0' || pid <= 0) continue;
    // A process that exits between readdir and the read fails the read
    // with ESRCH, which libstdc++'s filebuf throws as ios_failure: it ended
    // a 7-minute soak (seed 33, 2026-12-07) after 73 good runs.
    std::string stat;
    try {
      std::ifstream stat_file(std::string("/proc/") + entry->d_name + "/stat");
      stat.assign(std::istreambuf_iterator<char>(stat_file), std::istreambuf_iterator<char>());
    } catch (const std::ios_base::failure&) {
      continue;  // gone
    }
    size_t paren = stat.rfind(')');
    if (paren == std::string::npos) continue;
    std::istringstream rest(stat.substr(paren + 1));
    std::string state;
    long ppid = 0, pgrp = 0;
    rest >> state >> ppid >> pgrp;
    if (pgrp == pgid && state != "Z") pids.push_back(static_cast<pid_t>(pid));
  }
  closedir(proc);
  std::sort(pids.begin(), pids.end());
  return pids;
}

// Every thread's backtrace of every process in group `pgid`, by gdb.
std::string Backtraces(pid_t pgid) {
  std::string text;
  for (pid_t pid : GroupMembers(pgid)) {
    text += "--- backtraces of pid " + std::to_string(pid) + "\n";
    if (!IsFile(kGdb)) {
      text += "(gdb is not installed)\n";
      continue;
    }
    ProcessResult gdb = RunProcess({kGdb, "-p", std::to_string(pid), "-batch", "-nx", "-ex",
                                    "thread apply all bt"},
                                   {"PATH=/usr/bin:/bin", "HOME=/tmp"}, 60, /*capture_stderr=*/true);
    text += gdb.out + gdb.err;
  }
  return text;
}

// The tables of FERRY_STATS=1 in `err` (a forkloop child that calls exit()
// prints one too), each counter by name; and every line that is neither.
struct FerryOutput {
  std::vector<std::map<std::string, long double>> tables;
  std::vector<std::string> other_lines;
};

FerryOutput ReadFerryStderr(const std::string& err) {
  FerryOutput output;
  std::istringstream lines(err);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("ferry ", 0) == 0 && line.size() > 11 && line.compare(line.size() - 11, 11, " statistics") == 0) {
      output.tables.emplace_back();
      continue;
    }
    std::istringstream words(line);
    std::string key;
    long double value = 0;
    if (!output.tables.empty() && line.rfind("  ", 0) == 0 && (words >> key >> value)) {
      output.tables.back()[key] = value;
      continue;
    }
    output.other_lines.push_back(line);
  }
  return output;
}

// What is wrong with one statistics table, "" when nothing.
std::string StatsProblems(const std::map<std::string, long double>& t, const Config& config) {
  static constexpr const char* kRequired[] = {
      "heaps_created", "heaps_abandoned", "heaps_reused", "segments_mapped", "segments_released",
      "segments_live", "pages_made", "pages_released", "huge_allocs", "huge_frees", "remote_frees",
      "batches_published", "batches_inline", "blocks_returned",
      "batches_pooled", "reclaimer_threads", "pool_starts"};
  std::string problems;
  auto problem = [&](const std::string& text) { problems += (problems.empty() ? "" : "; ") + text; };
  for (const char* key : kRequired) {
    if (t.count(key) == 0) problem(std::string("no ") + key);
  }
  if (!problems.empty()) return problems;
  for (const auto& [key, value] : t) {
    if (value < 0 || value > 1e18L) problem(key + " = " + std::to_string(static_cast<double>(value)) + " (absurd)");
  }
  auto at = [&](const char* key) { return t.at(key); };
  auto at_most = [&](const char* small, const char* large) {
    if (at(small) > at(large)) {
      problem(std::string(small) + " " + std::to_string(static_cast<double>(at(small))) + " > " + large + " " +
              std::to_string(static_cast<double>(at(large))));
    }
  };
  // The table is read counter by counter while the pool may still run, so
  // only orders that such a snapshot keeps are checked: what the pool may
  // add to the left-hand side at exit it adds for something counted on the
  // right before.
  at_most("segments_released", "segments_mapped");
  at_most("pages_released", "pages_made");
  at_most("heaps_reused", "heaps_abandoned");
  at_most("huge_frees", "huge_allocs");
  at_most("blocks_returned", "remote_frees");  // a block counted home twice
  if (at("reclaimer_threads") > config.reclaimers) problem("more reclaimer threads than FERRY_RECLAIMERS");
  if (config.reclaimers == 0 && (at("pool_starts") != 0 || at("batches_pooled") != 0)) {
    problem("a pool ran with FERRY_RECLAIMERS=0");
  }
  return problems;
}

class Soak {
 public:
  Soak(Flags flags, const char* argv0) : flags_(std::move(flags)), argv0_(argv0) {}

  int Main() {
    if (!Setup()) return 2;
    signal(SIGINT, OnSignal);
    signal(SIGTERM, OnSignal);
    const double start = Now();
    const double deadline = start + flags_.time_s;
    const long min_runs = flags_.min_cycles * static_cast<long>(programs_.size());
    // --every-pair: P x kConfigs runs, each program under each configuration
    // once (Draw); --time and --min-cycles do not apply.
    const long fixed_runs = flags_.every_pair ? static_cast<long>(programs_.size()) * kConfigs : -1;
    std::mt19937_64 rng(flags_.seed);
    for (long run = 0; !g_stop && (fixed_runs >= 0 ? run < fixed_runs : Now() < deadline || run < min_runs);
         ++run) {
      const std::string& program = programs_[run % programs_.size()];
      Config config = Draw(rng, run, program);
      RunOne(run, program, config);
      runs_ = run + 1;
    }
    Summary(Now() - start);
    return failures_.empty() ? 0 : 1;
  }

 private:
  bool Setup() {
    workload_bin_ = RealPath(flags_.workload_bin.empty() ? FindRunfile(argv0_, kWorkloadRunfile) : flags_.workload_bin);
    if (!IsFile(workload_bin_)) {
      std::fprintf(stderr, "soak: workload binary not found (%s); pass --workload-bin\n", workload_bin_.c_str());
      return false;
    }
    if (flags_.ferry) {
      ferry_lib_ = RealPath(flags_.ferry_lib.empty() ? FindRunfile(argv0_, kFerryRunfile) : flags_.ferry_lib);
      if (!IsFile(ferry_lib_)) {
        std::fprintf(stderr, "soak: libferry.so not found (%s); pass --ferry-lib\n", ferry_lib_.c_str());
        return false;
      }
      if (!IsFile(kTbbLibrary)) {
        std::fprintf(stderr, "soak: %s not found (Debian package libtbb12)\n", kTbbLibrary);
        return false;
      }
    }
    for (const char* list : {"--list", "--list-soak"}) {
      ProcessResult listed = RunProcess({workload_bin_, list}, BaseEnv(), 30);
      if (!listed.ok()) {
        std::fprintf(stderr, "soak: %s %s failed: %s\n", workload_bin_.c_str(), list, listed.Describe().c_str());
        return false;
      }
      std::istringstream lines(listed.out);
      for (std::string line; std::getline(lines, line);) {
        std::string name = line.substr(0, line.find('\t'));
        if (!flags_.only.empty() && std::find(flags_.only.begin(), flags_.only.end(), name) == flags_.only.end()) {
          continue;
        }
        if (Info(name) == nullptr) {
          std::fprintf(stderr, "soak: no RSS bound known for %s: add it to kPrograms in perf/soak.cc\n",
                       name.c_str());
          return false;
        }
        programs_.push_back(name);
      }
    }
    for (const std::string& name : flags_.only) {
      if (std::find(programs_.begin(), programs_.end(), name) == programs_.end()) {
        std::fprintf(stderr, "soak: --only %s: no such program (workload --list, --list-soak)\n", name.c_str());
        return false;
      }
    }
    for (const auto& [name, cap] : flags_.max_scale_of) {
      if (Info(name) == nullptr) {
        std::fprintf(stderr, "soak: --max-scale-of %s: no such program (workload --list, --list-soak)\n",
                     name.c_str());
        return false;
      }
    }
    if (programs_.empty()) {
      std::fprintf(stderr, "soak: no programs\n");
      return false;
    }
    log_dir_ = flags_.log_dir;
    if (log_dir_.empty()) {
      const char* outputs = std::getenv("TEST_UNDECLARED_OUTPUTS_DIR");
      log_dir_ = outputs != nullptr ? outputs : "";
    }
    const std::string length =
        flags_.every_pair
            ? std::to_string(programs_.size() * kConfigs) + " runs (every program under every configuration)"
            : std::to_string(static_cast<long>(flags_.time_s)) + " s" +
                  (flags_.min_cycles > 0 ? ", at least " + std::to_string(flags_.min_cycles) + " cycles" : "");
    std::fprintf(stderr, "soak: %zu programs, %s, seed %llu, %s\n  workload: %s\n", programs_.size(),
                 flags_.ferry ? ("ferry " + ferry_lib_).c_str() : "glibc",
                 static_cast<unsigned long long>(flags_.seed), length.c_str(), workload_bin_.c_str());
    return true;
  }

  static const ProgramInfo* Info(const std::string& name) {
    for (const ProgramInfo& info : kPrograms) {
      if (name == info.name) return &info;
    }
    return nullptr;
  }

  Config Draw(std::mt19937_64& rng, long run, const std::string& program) const {
    Config config;
    // --every-pair: each cycle of the programs under one configuration, so
    // that programs x kConfigs runs meet every pair once whatever the count.
    const long slot = flags_.every_pair ? run / static_cast<long>(programs_.size()) : run;
    const int combo = static_cast<int>(slot % kConfigs);
    config.reclaimers = combo % 5;
    config.tbb = combo >= 5;
    config.purge = kPurgeDelays[rng() % std::size(kPurgeDelays)];
    config.batch = kBatches[rng() % std::size(kBatches)];
    config.inline_when_busy = kInlineWhenBusy[rng() % std::size(kInlineWhenBusy)];
    config.pin = rng() % 3 != 0;
    config.pairs = 1 + static_cast<int>(rng() % 4);
    const double low = std::max(0.01, Info(program)->min_scale);
    const auto cap = flags_.max_scale_of.find(program);
    const double high =
        std::max(low, cap == flags_.max_scale_of.end() ? flags_.max_scale : std::min(flags_.max_scale, cap->second));
    const double u = static_cast<double>(rng() >> 11) / 9007199254740992.0;
    config.scale = flags_.scale ? std::max(*flags_.scale, Info(program)->min_scale)
                                : low * std::pow(high / low, u);
    config.scale = std::round(config.scale * 1000) / 1000;
    config.seed = rng() % 1000000;
    return config;
  }

  static std::vector<std::string> BaseEnv() { return EnvWithoutAllocatorSettings(); }

  // The variables a run sets, in the order the reproduce command shows them.
  std::vector<std::string> RunEnv(const Config& config) const {
    if (!flags_.ferry) return {};
    std::vector<std::string> env = {"FERRY_RECLAIMERS=" + std::to_string(config.reclaimers),
                                    std::string("FERRY_RECLAIMER_BACKEND=") + (config.tbb ? "tbb" : "threads"),
                                    "FERRY_STATS=1"};
    if (!config.purge.empty()) env.push_back("FERRY_PURGE_DELAY_MS=" + config.purge);
    if (!config.batch.empty()) env.push_back("FERRY_BATCH=" + config.batch);
    if (!config.inline_when_busy.empty()) env.push_back("FERRY_INLINE_WHEN_BUSY=" + config.inline_when_busy);
    env.push_back("LD_PRELOAD=" + ferry_lib_ + (config.tbb ? std::string(":") + kTbbLibrary : ""));
    return env;
  }

  std::vector<std::string> Args(const std::string& program, const Config& config) const {
    char scale[32];
    std::snprintf(scale, sizeof scale, "%g", config.scale);
    std::vector<std::string> args = {workload_bin_, program, "--scale", scale, "--seed", std::to_string(config.seed),
                                     "--pairs", std::to_string(config.pairs), "--check-preload",
                                     flags_.ferry ? ferry_lib_ : "glibc"};
    if (!config.pin) args.push_back("--no-pin");
    return args;
  }

  // Live data of this run (MiB), for the peak RSS bound.
  static double LiveMiB(const ProgramInfo& info, const Config& config, const Extras& extras) {
    for (const auto& [key, value] : extras) {
      if (key == "live_mib" || key == "live_mib_max") return value;
    }
    if (std::string(info.name) == "idle") return std::max(4.0, 512 * config.scale);
    return info.live_mib * (info.live_per_pair ? config.pairs : 1);
  }

  // Problems with the program's own RSS figures; records the highest ones.
  std::string RssProblems(long run, const std::string& program, const Config& config, const Extras& extras) {
    std::map<std::string, double> x(extras.begin(), extras.end());
    char text[256];
    std::string problems;
    if (program == "onefree" && x["live_mib"] >= kOnefreeMinLiveMiB) {
      onefree_median_.See(x["rss_live"], run);
      onefree_max_.See(x["rss_live_max"], run);
      if (x["rss_live"] > kOnefreeMedian || x["rss_live_max"] > kOnefreeMax) {
        std::snprintf(text, sizeof text, "onefree RSS/live median %.2f (bound %.1f), largest sample %.2f (bound %.1f)",
                      x["rss_live"], kOnefreeMedian, x["rss_live_max"], kOnefreeMax);
        problems = text;
      }
    } else if (program == "idle" && flags_.ferry && x["idle_s"] >= 3) {
      if (config.reclaimers > 0 && !config.tbb) {
        const bool long_delay = !config.purge.empty() && std::stol(config.purge) > 500;
        const double rss = long_delay ? x["rss_3s"] : x["rss_2s"];
        idle_returned_.See(rss - x["rss_base"], run);
        if (rss > x["rss_base"] + kIdleReturnedMiB) {
          std::snprintf(text, sizeof text, "idle RSS %d s after the burst %.1f MiB, %.1f over the %.1f before it "
                        "(bound %.0f; %.1f MiB right after the burst)", long_delay ? 3 : 2, rss,
                        rss - x["rss_base"], x["rss_base"], kIdleReturnedMiB, x["rss_0s"]);
          problems = text;
        }
      } else if (x["rss_3s"] > x["rss_0s"] + kIdleGrowthMiB) {
        std::snprintf(text, sizeof text, "idle RSS grew while idle: %.1f MiB after the burst, %.1f 3 s later",
                      x["rss_0s"], x["rss_3s"]);
        problems = text;
      }
    } else if (program == "threadchurn" && x["rss_early"] > 0) {
      churn_growth_.See(x["rss_late"] / x["rss_early"], run);
      if (x["rss_late"] > kChurnGrowthFactor * x["rss_early"] + kChurnGrowthMiB) {
        std::snprintf(text, sizeof text, "threadchurn RSS grew from %.1f MiB (a quarter of the threads) to %.1f "
                      "(all; bound %.1f x + %.0f)", x["rss_early"], x["rss_late"], kChurnGrowthFactor, kChurnGrowthMiB);
        problems = text;
      }
    }
    return problems;
  }

  void RunOne(long run, const std::string& program, const Config& config) {
    std::vector<std::string> env = BaseEnv();
    for (const std::string& kv : RunEnv(config)) SetEnv(env, kv);
    std::string backtraces;
    RunOptions options;
    options.timeout_s = flags_.timeout_s;
    options.capture_stderr = true;
    options.own_group = true;
    options.stop = &g_stop;
    options.on_timeout = [&](pid_t pid) { backtraces = Backtraces(pid); };
    const std::vector<std::string> args = Args(program, config);
    ProcessResult result = RunProcess(args, env, options);
    if (result.stopped) return;  // interrupted: not counted
    counts_[program][config.Column()]++;
    longest_[program] = std::max(longest_[program], result.wall_s);

    std::vector<std::string> problems;
    // Anything left in its process group (a forkloop child that hung).
    const pid_t pgid = result.pid;
    if (pgid > 0 && !GroupMembers(pgid).empty()) {
      backtraces += Backtraces(pgid);
      kill(-pgid, SIGKILL);
      problems.push_back("left processes behind in its process group (killed)");
    }
    if (!result.ok()) {
      char hung[96];
      std::snprintf(hung, sizeof hung, "hung: no exit within %g s (killed; backtraces in the log)", flags_.timeout_s);
      std::string what = result.timed_out ? hung : result.Describe();
      if (result.exited && result.status == 3) what += " (objects corrupted)";
      if (result.exited && result.status == 4) what += " (the preload did not take)";
      if (result.exited && result.status == 5) what += " (a child process failed or hung)";
      problems.push_back(what);
    }
    if (Fields(result.out, "PRELOAD")["ok"] != "1" && result.exited) problems.push_back("no PRELOAD ok=1 line");
    if (flags_.ferry) {
      FerryOutput ferry = ReadFerryStderr(result.err);
      for (const std::string& line : ferry.other_lines) problems.push_back("stderr: " + line);
      if (result.ok() && ferry.tables.empty()) problems.push_back("no FERRY_STATS table at exit");
      for (const auto& table : ferry.tables) {
        std::string stats = StatsProblems(table, config);
        if (!stats.empty()) problems.push_back("statistics: " + stats);
      }
    } else if (!result.err.empty()) {
      problems.push_back("stderr: " + result.err.substr(0, result.err.find('\n')));
    }
    const Extras extras = NumberFields(result.out, "EXTRA");
    const double peak_mib = static_cast<double>(result.max_rss_kib) / 1024;
    if (result.ok()) {
      const double bound = kPeakFactor * LiveMiB(*Info(program), config, extras) + kPeakAllowance;
      peak_ratio_[program].See(peak_mib / bound, run);
      if (peak_mib > bound) {
        char text[128];
        std::snprintf(text, sizeof text, "peak RSS %.1f MiB over its bound %.1f (%.0f x live + %.0f)", peak_mib, bound,
                      kPeakFactor, kPeakAllowance);
        problems.push_back(text);
      }
      std::string rss = RssProblems(run, program, config, extras);
      if (!rss.empty()) problems.push_back(rss);
    }

    if (!flags_.quiet || !problems.empty()) {
      std::fprintf(stderr, "soak: run %ld %-11s %-55s %s %6.2f s %6.1f MiB\n", run, program.c_str(),
                   config.Describe().c_str(), problems.empty() ? "ok  " : "FAIL", result.wall_s, peak_mib);
    }
    if (problems.empty()) return;
    Failure failure{run, program, config.Describe(), Join(problems, "; "), ReproduceCommand(args, config), ""};
    failure.log = WriteLog(failure, result, backtraces);
    for (const std::string& problem : problems) std::fprintf(stderr, "  %s\n", problem.c_str());
    std::fprintf(stderr, "  reproduce: %s\n", failure.command.c_str());
    failures_.push_back(failure);
    failed_programs_[program]++;
  }

  std::string ReproduceCommand(const std::vector<std::string>& args, const Config& config) const {
    std::string command = "env";
    for (const std::string& kv : RunEnv(config)) command += " " + ShellQuote(kv);
    for (const std::string& arg : args) command += " " + ShellQuote(arg);
    return command;
  }

  std::string WriteLog(const Failure& failure, const ProcessResult& result, const std::string& backtraces) {
    if (log_dir_.empty()) {
      char pattern[] = "/tmp/ferry-soak.XXXXXX";
      if (mkdtemp(pattern) == nullptr) return "(no log: mkdtemp failed)";
      log_dir_ = pattern;
    } else {
      mkdir(log_dir_.c_str(), 0755);  // may exist; a failure shows when the file is written
    }
    const std::string path = log_dir_ + "/run-" + std::to_string(failure.run) + "-" + failure.program + ".txt";
    std::ofstream log(path);
    log << "run " << failure.run << ": " << failure.program << " " << failure.config << "\n"
        << "failed: " << failure.what << "\n"
        << "reproduce: " << failure.command << "\n"
        << "wall " << result.wall_s << " s, peak RSS " << result.max_rss_kib << " KiB\n"
        << "--- stdout\n" << result.out << "--- stderr\n" << result.err << backtraces;
    return log ? path : "(no log: cannot write " + path + ")";
  }

  void Summary(double seconds) const {
    std::vector<std::string> columns;
    for (int combo = 0; combo < kConfigs; ++combo) {
      columns.push_back("r" + std::to_string(combo % 5) + (combo >= 5 ? "b" : "t"));
    }
    std::printf("\nsoak summary: %ld runs (%ld full cycles of %zu programs) in %.0f s, %zu failed; seed %llu; %s%s\n",
                runs_, runs_ / static_cast<long>(programs_.size()), programs_.size(), seconds, failures_.size(),
                static_cast<unsigned long long>(flags_.seed), flags_.ferry ? ferry_lib_.c_str() : "glibc",
                g_stop ? " (interrupted)" : "");
    std::printf("runs per program and configuration (rN = FERRY_RECLAIMERS=N; t = threads backend, b = tbb):\n");
    std::printf("%-12s", "program");
    for (const std::string& column : columns) std::printf(" %4s", column.c_str());
    std::printf(" %6s %6s %8s %12s\n", "total", "failed", "longest", "peak/bound");
    std::map<std::string, int> column_totals;
    for (const std::string& program : programs_) {
      std::printf("%-12s", program.c_str());
      int total = 0;
      auto counts = counts_.find(program);
      for (const std::string& column : columns) {
        int n = counts == counts_.end() || counts->second.count(column) == 0 ? 0 : counts->second.at(column);
        total += n;
        column_totals[column] += n;
        std::printf(" %4d", n);
      }
      auto failed = failed_programs_.find(program);
      auto longest = longest_.find(program);
      auto peak = peak_ratio_.find(program);
      std::printf(" %6d %6d %7.1fs", total, failed == failed_programs_.end() ? 0 : failed->second,
                  longest == longest_.end() ? 0.0 : longest->second);
      if (peak != peak_ratio_.end()) {
        std::printf(" %5.2f (#%ld)\n", peak->second.value, peak->second.run);
      } else {
        std::printf(" %12s\n", "-");
      }
    }
    std::printf("%-12s", "all");
    for (const std::string& column : columns) std::printf(" %4d", column_totals[column]);
    std::printf("\n");
    std::printf("highest figures (run): peak RSS / bound above; onefree RSS/live median %.2f (#%ld, bound %.1f), "
                "largest sample %.2f (#%ld, bound %.1f); idle RSS 2 s (3 s with a 1 s purge delay) after the "
                "burst, over the base, with a threads pool %.1f MiB (#%ld, bound %.0f); threadchurn RSS late/early %.2f (#%ld)\n",
                onefree_median_.value, onefree_median_.run, kOnefreeMedian, onefree_max_.value, onefree_max_.run,
                kOnefreeMax, idle_returned_.value, idle_returned_.run, kIdleReturnedMiB, churn_growth_.value,
                churn_growth_.run);
    if (failures_.empty()) {
      std::printf("no failures\n");
      return;
    }
    std::printf("failures:\n");
    for (const Failure& failure : failures_) {
      std::printf("  run %ld %s %s:\n    %s\n    reproduce: %s\n    log: %s\n", failure.run, failure.program.c_str(),
                  failure.config.c_str(), failure.what.c_str(), failure.command.c_str(), failure.log.c_str());
    }
  }

  Flags flags_;
  const char* argv0_;
  std::string workload_bin_, ferry_lib_, log_dir_;
  std::vector<std::string> programs_;
  long runs_ = 0;
  std::map<std::string, std::map<std::string, int>> counts_;
  std::map<std::string, int> failed_programs_;
  std::map<std::string, double> longest_;
  std::map<std::string, Highest> peak_ratio_;
  Highest onefree_median_, onefree_max_, idle_returned_, churn_growth_;
  std::vector<Failure> failures_;
};

}  // namespace

int main(int argc, char** argv) {
  Flags flags = ParseFlags(argc, argv);
  return Soak(std::move(flags), argv[0]).Main();
}

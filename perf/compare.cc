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
// Output: a Markdown table per workload on stdout (medians, wall min-max,
// ratios to mimalloc) and progress on stderr. Under `bazel run` the report
// and every raw run are also written to perf/results/ in the source tree:
// latest.md and latest.csv at full scale, quick.md and quick.csv otherwise.
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

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

extern char** environ;

namespace {

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
constexpr const char* kWorkspaceNames[] = {"ferry", "__main__"};

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

// ---------------------------------------------------------------------------
// Flags.

constexpr char kUsage[] =
    "usage: compare [flags]\n"
    "  --runs N          timed runs per allocator and workload (default 5; 3 with --quick)\n"
    "  --quick           smaller workloads (--scale quick) and 3 runs\n"
    "  --scale S         tiny | quick | full (default) | a factor such as 0.5\n"
    "  --workload NAME   run only this workload (repeatable; default all)\n"
    "  --alloc NAME      run only this allocator (repeatable; default all)\n"
    "  --pairs N         producer/consumer pairs for multi-threaded workloads (default 1)\n"
    "  --no-pin          let the scheduler place workload threads (default: pinned)\n"
    "  --env KEY=VAL     set in ferry's runs only, e.g. --env FERRY_BATCH=64 (repeatable)\n"
    "  --timeout S       kill a run after S seconds (default 300)\n"
    "  --out DIR         write the report and raw runs to DIR (default: perf/results/\n"
    "                    in the source tree under `bazel run`, nowhere otherwise)\n"
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
  int pairs = 1;
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
      if (!KnownAllocator(flags.allocators.back())) {
        UsageError("unknown allocator " + flags.allocators.back() + " (see --list)");
      }
    } else if (arg == "--pairs") {
      std::optional<double> n = ParseNumber(value());
      if (!n || *n < 1 || *n > 256 || *n != static_cast<int>(*n)) UsageError("--pairs wants 1..256");
      flags.pairs = static_cast<int>(*n);
    } else if (arg == "--no-pin") {
      flags.pin = false;
    } else if (arg == "--env") {
      std::string kv = value();
      if (kv.find('=') == std::string::npos || kv[0] == '=') UsageError("--env wants KEY=VALUE");
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
  return flags;
}

// ---------------------------------------------------------------------------
// Small helpers.

double Now() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

double Seconds(const timeval& tv) {
  return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) * 1e-6;
}

bool IsFile(const std::string& path) {
  struct stat st;
  return !path.empty() && stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string RealPath(const std::string& path) {
  char* resolved = realpath(path.c_str(), nullptr);
  if (resolved == nullptr) return path;
  std::string result = resolved;
  std::free(resolved);
  return result;
}

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

// Finds `relative` (a path inside the workspace) in the runfiles tree of this
// binary: $RUNFILES_DIR or $TEST_SRCDIR (bazel test), else <argv0>.runfiles
// or <executable>.runfiles (bazel run, or run by hand from bazel-bin).
std::string FindRunfile(const char* argv0, const std::string& relative) {
  std::vector<std::string> roots;
  for (const char* var : {"RUNFILES_DIR", "TEST_SRCDIR"}) {
    if (const char* dir = std::getenv(var); dir != nullptr && *dir != '\0') roots.push_back(dir);
  }
  roots.push_back(std::string(argv0) + ".runfiles");
  roots.push_back(RealPath("/proc/self/exe") + ".runfiles");
  for (const std::string& root : roots) {
    for (const char* workspace : kWorkspaceNames) {
      std::string path = root + "/" + workspace + "/" + relative;
      if (IsFile(path)) return path;
    }
  }
  return "";
}

// ---------------------------------------------------------------------------
// Running one child process.

struct ProcessResult {
  bool exited = false;      // exited normally (else killed by a signal)
  int status = -1;          // exit status, or the signal number
  bool timed_out = false;
  double wall_s = 0;
  double user_s = 0;
  double sys_s = 0;
  long max_rss_kib = 0;
  std::string out;          // what it wrote to stdout

  bool ok() const { return exited && status == 0 && !timed_out; }
  std::string Describe() const {
    if (timed_out) return "timed out";
    if (!exited) return std::string("killed by signal ") + strsignal(status);
    if (status == 127) return "could not be started (exit status 127)";
    return "exit status " + std::to_string(status);
  }
};

// Runs argv with exactly `env` as its environment; its stdout is captured,
// its stderr passes through. Kills it after `timeout_s`.
ProcessResult RunProcess(const std::vector<std::string>& argv,
                         const std::vector<std::string>& env, double timeout_s) {
  // Everything the child needs is built before fork.
  std::vector<char*> child_argv, child_env;
  for (const std::string& s : argv) child_argv.push_back(const_cast<char*>(s.c_str()));
  for (const std::string& s : env) child_env.push_back(const_cast<char*>(s.c_str()));
  child_argv.push_back(nullptr);
  child_env.push_back(nullptr);
  int out_fd = memfd_create("workload-stdout", MFD_CLOEXEC);
  if (out_fd < 0) {
    std::perror("compare: memfd_create");
    std::exit(1);
  }
  std::fflush(nullptr);

  ProcessResult result;
  double start = Now();
  pid_t pid = fork();
  if (pid < 0) {
    std::perror("compare: fork");
    std::exit(1);
  }
  if (pid == 0) {
    dup2(out_fd, STDOUT_FILENO);
    execve(child_argv[0], child_argv.data(), child_env.data());
    _exit(127);
  }

  // Wait with a deadline through a pidfd; without one (old kernels), wait.
  int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (pidfd >= 0) {
    pollfd pfd = {pidfd, POLLIN, 0};
    double deadline = start + timeout_s;
    for (;;) {
      int left_ms = static_cast<int>((deadline - Now()) * 1000);
      int ready = poll(&pfd, 1, std::max(left_ms, 0));
      if (ready > 0) break;
      if (ready == 0) {
        result.timed_out = true;
        kill(pid, SIGKILL);
        break;
      }
      if (errno != EINTR) break;
    }
    close(pidfd);
  }
  int status = 0;
  rusage usage{};
  while (wait4(pid, &status, 0, &usage) < 0 && errno == EINTR) {
  }
  result.wall_s = Now() - start;
  result.exited = WIFEXITED(status);
  result.status = result.exited ? WEXITSTATUS(status) : WTERMSIG(status);
  result.user_s = Seconds(usage.ru_utime);
  result.sys_s = Seconds(usage.ru_stime);
  result.max_rss_kib = usage.ru_maxrss;

  lseek(out_fd, 0, SEEK_SET);
  char buffer[4096];
  for (ssize_t n; (n = read(out_fd, buffer, sizeof buffer)) > 0;) result.out.append(buffer, n);
  close(out_fd);
  return result;
}

// The `key=value` fields of the first stdout line that starts with `tag`.
std::map<std::string, std::string> Fields(const std::string& out, const std::string& tag) {
  std::map<std::string, std::string> fields;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind(tag + " ", 0) != 0) continue;
    std::istringstream words(line.substr(tag.size() + 1));
    for (std::string word; words >> word;) {
      size_t eq = word.find('=');
      if (eq != std::string::npos) fields[word.substr(0, eq)] = word.substr(eq + 1);
    }
    break;
  }
  return fields;
}

// ---------------------------------------------------------------------------
// The experiment.

struct WorkloadInfo {
  std::string name;
  std::string summary;
};

struct Candidate {
  std::string name;
  std::string library;  // resolved LD_PRELOAD path; empty for glibc
  std::string shown;    // the same, shortened for the report
  std::string note;     // why it is not reported, if it is not
  bool usable = true;
};

struct RunRecord {
  std::string workload;
  std::string allocator;
  int run = 0;          // 1-based
  int position = 0;     // 1-based place in its round
  ProcessResult process;
  double rate = 0;      // the workload's own ops per second
  std::string unit;
  std::string failure;  // empty when the run counts
};

class Compare {
 public:
  Compare(Flags flags, const char* argv0) : flags_(std::move(flags)), argv0_(argv0) {}

  int Main(int argc, char** argv) {
    command_ = "compare";
    for (int i = 1; i < argc; ++i) command_ += " " + std::string(argv[i]);
    if (!FindWorkloadBinary() || !LoadWorkloads()) return 1;
    SelectAllocators();
    if (flags_.list) return List();
    if (workloads_.empty()) UsageError("no workload selected");
    if (BuildMode() != "opt") {
      std::fprintf(stderr, "compare: warning: the workloads were built in %s mode, not opt; "
                           "use `bazel run -c opt` for figures worth reading\n", BuildMode().c_str());
    }
    CheckAllocators();
    load_before_ = LoadAverage();
    Measure();
    load_after_ = LoadAverage();
    std::string report = Report();
    std::fputs(report.c_str(), stdout);
    std::fflush(stdout);
    Save(report);
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
      size_t tab = line.find('\t');
      if (tab != std::string::npos) all.push_back({line.substr(0, tab), line.substr(tab + 1)});
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

  void SelectAllocators() {
    for (const Allocator& a : kAllocators) {
      if (!flags_.allocators.empty() &&
          std::find(flags_.allocators.begin(), flags_.allocators.end(), a.name) == flags_.allocators.end()) {
        continue;
      }
      Candidate c;
      c.name = a.name;
      c.library = a.library;
      if (c.library == kFromRunfiles) {
        c.library = flags_.ferry_lib.empty() ? FindRunfile(argv0_, kFerryRunfile) : flags_.ferry_lib;
        if (!IsFile(c.library)) {
          c.usable = false;
          c.note = std::string("not found (") + kFerryRunfile + " is not in runfiles; pass --ferry-lib)";
          failed_ = true;  // ferry itself missing is an error, not a skip
        }
      } else if (!c.library.empty() && !IsFile(c.library)) {
        c.usable = false;
        c.note = "skipped: " + c.library + " is not installed";
      }
      if (c.usable && !c.library.empty()) c.library = RealPath(c.library);
      c.shown = c.library;
      if (size_t at = c.shown.find("/bazel-out/"); at != std::string::npos) {
        c.shown = c.shown.substr(at + 1);  // drop the output base
      }
      allocators_.push_back(c);
    }
  }

  int List() {
    std::printf("workloads:\n");
    for (const WorkloadInfo& w : all_workloads_) std::printf("  %-10s %s\n", w.name.c_str(), w.summary.c_str());
    std::printf("allocators:\n");
    for (const Candidate& c : allocators_) {
      std::printf("  %-10s %s\n", c.name.c_str(),
                  c.usable ? (c.library.empty() ? "(no preload)" : c.library.c_str()) : c.note.c_str());
    }
    return 0;
  }

  // The environment of every child: ours without LD_PRELOAD.
  static std::vector<std::string> BaseEnv() {
    std::vector<std::string> env;
    for (char** e = environ; *e != nullptr; ++e) {
      if (std::strncmp(*e, "LD_PRELOAD=", 11) != 0) env.push_back(*e);
    }
    return env;
  }

  std::vector<std::string> EnvFor(const Candidate& c) const {
    std::vector<std::string> env = BaseEnv();
    if (!c.library.empty()) env.push_back("LD_PRELOAD=" + c.library);
    if (c.name == "ferry") {
      for (const std::string& kv : flags_.ferry_env) env.push_back(kv);
    }
    return env;
  }

  std::vector<std::string> ArgsFor(const std::string& workload, const std::string& scale) const {
    std::vector<std::string> args = {workload_bin_, workload, "--scale", scale,
                                      "--pairs", std::to_string(flags_.pairs)};
    if (!flags_.pin) args.push_back("--no-pin");
    return args;
  }

  // One tiny run of every workload per allocator with --check-preload.
  void CheckAllocators() {
    for (Candidate& c : allocators_) {
      if (!c.usable) {
        std::fprintf(stderr, "compare: %s %s\n", c.name.c_str(), c.note.c_str());
        continue;
      }
      for (const WorkloadInfo& w : workloads_) {
        std::vector<std::string> args = ArgsFor(w.name, "tiny");
        args.push_back("--check-preload");
        args.push_back(c.library.empty() ? "glibc" : c.library);
        ProcessResult check = RunProcess(args, EnvFor(c), flags_.timeout_s);
        std::map<std::string, std::string> preload = Fields(check.out, "PRELOAD");
        if (preload["ok"] != "1") {
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
      if (c.usable) std::fprintf(stderr, "compare: %-9s checked: %s\n", c.name.c_str(),
                                 c.library.empty() ? "glibc malloc (no preload)" : c.shown.c_str());
    }
  }

  void Measure() {
    std::vector<Candidate*> active;
    for (Candidate& c : allocators_) {
      if (c.usable) active.push_back(&c);
    }
    if (active.empty()) return;
    for (const WorkloadInfo& w : workloads_) {
      std::map<std::string, bool> broken;  // allocator -> failed a run
      for (int run = 1; run <= flags_.runs; ++run) {
        for (size_t k = 0; k < active.size(); ++k) {
          // Each round starts one allocator further on.
          const Candidate& c = *active[(k + run - 1) % active.size()];
          if (broken[c.name]) continue;
          RunRecord record;
          record.workload = w.name;
          record.allocator = c.name;
          record.run = run;
          record.position = static_cast<int>(k + 1);
          record.process = RunProcess(ArgsFor(w.name, flags_.scale), EnvFor(c), flags_.timeout_s);
          std::map<std::string, std::string> result = Fields(record.process.out, "RESULT");
          if (!record.process.ok()) {
            record.failure = record.process.Describe();
          } else if (!result.count("rate") || !result.count("unit")) {
            record.failure = "no RESULT line";
          } else {
            record.rate = std::atof(result["rate"].c_str());
            record.unit = result["unit"];
          }
          std::fprintf(stderr, "[%s %d/%d] %-9s ", w.name.c_str(), run, flags_.runs, c.name.c_str());
          if (record.failure.empty()) {
            std::fprintf(stderr, "wall %7.3f s  user+sys %7.3f s  peak RSS %8.1f MiB  %7.2f M %s/s\n",
                         record.process.wall_s, record.process.user_s + record.process.sys_s,
                         record.process.max_rss_kib / 1024.0, record.rate / 1e6, record.unit.c_str());
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

  struct Summary {
    std::string allocator;
    bool ok = false;
    std::string failure;
    int runs = 0;
    double wall = 0, wall_min = 0, wall_max = 0, cpu = 0, rss_mib = 0, rate = 0;
    std::string unit;
  };

  std::vector<Summary> Summarise(const std::string& workload) const {
    std::vector<Summary> summaries;
    for (const Candidate& c : allocators_) {
      if (!c.usable) continue;
      Summary s;
      s.allocator = c.name;
      std::vector<double> wall, cpu, rss, rate;
      for (const RunRecord& r : records_) {
        if (r.workload != workload || r.allocator != c.name) continue;
        if (!r.failure.empty()) {
          s.failure = "FAILED in run " + std::to_string(r.run) + ": " + r.failure;
          continue;
        }
        wall.push_back(r.process.wall_s);
        cpu.push_back(r.process.user_s + r.process.sys_s);
        rss.push_back(r.process.max_rss_kib / 1024.0);
        rate.push_back(r.rate);
        s.unit = r.unit;
      }
      s.ok = s.failure.empty() && !wall.empty();
      if (s.ok) {
        s.runs = static_cast<int>(wall.size());
        s.wall = Median(wall);
        s.wall_min = *std::min_element(wall.begin(), wall.end());
        s.wall_max = *std::max_element(wall.begin(), wall.end());
        s.cpu = Median(cpu);
        s.rss_mib = Median(rss);
        s.rate = Median(rate);
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

  std::string WorkloadTable(const WorkloadInfo& w) const {
    std::vector<Summary> summaries = Summarise(w.name);
    const Summary* ref = nullptr;
    for (const Summary& s : summaries) {
      if (s.ok && s.allocator == kReference) ref = &s;
    }
    for (const Summary& s : summaries) {
      if (ref == nullptr && s.ok) ref = &s;
    }
    std::string ref_name = ref ? ref->allocator : kReference;
    std::string unit = "ops";
    for (const Summary& s : summaries) {
      if (s.ok) unit = s.unit;
    }
    auto ratio = [&](double value, double reference) {
      return reference > 0 ? Format("%.2f", value / reference) : std::string("-");
    };
    std::vector<std::vector<std::string>> rows = {
        {"allocator", "wall s", "× " + ref_name, "wall min–max", "user+sys s", "× " + ref_name,
         "peak RSS MiB", "× " + ref_name, "M " + unit + "/s"}};
    for (const Summary& s : summaries) {
      if (!s.ok) {
        rows.push_back({s.allocator, s.failure.empty() ? "no runs" : s.failure, "", "", "", "", "", "", ""});
        continue;
      }
      rows.push_back({s.allocator, Format("%.3f", s.wall), ratio(s.wall, ref->wall),
                      Format("%.3f", s.wall_min) + "–" + Format("%.3f", s.wall_max), Format("%.3f", s.cpu),
                      ratio(s.cpu, ref->cpu), Format("%.1f", s.rss_mib), ratio(s.rss_mib, ref->rss_mib),
                      Format("%.2f", s.rate / 1e6)});
    }
    std::string out = "## " + w.name + "\n\n" + w.summary + ".\n\n";
    out += Table(rows, {false, true, true, true, true, true, true, true, true});
    return out;
  }

  // The compilation mode of the workload binary, read off its bazel-out
  // path (k8-opt, k8-fastbuild, ...); timings only mean something with opt.
  std::string BuildMode() const {
    std::string path = RealPath(workload_bin_);
    for (const char* mode : {"opt", "fastbuild", "dbg"}) {
      if (path.find(std::string("-") + mode + "/bin/") != std::string::npos) return mode;
    }
    return "unknown";
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

  std::string Report() const {
    std::string out = "# ferry: allocator comparison\n\n";
    out += "- date: " + Date() + "\n";
    out += "- machine: " + Machine() + "\n";
    out += "- load average (1 5 15 min): " + load_before_ + " before, " + load_after_ + " after\n";
    out += "- command: `" + command_ + "`\n";
    out += "- build: " + BuildMode() + "; scale " + flags_.scale + "; runs: " +
           std::to_string(flags_.runs) + " per allocator and workload, alternating; pairs " +
           std::to_string(flags_.pairs) + "; threads " + (flags_.pin ? "pinned" : "not pinned");
    if (!flags_.ferry_env.empty()) {
      out += "; ferry runs with";
      for (const std::string& kv : flags_.ferry_env) out += " `" + kv + "`";
    }
    out += "\n";
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
      }
      out += "\n";
    }
    for (const WorkloadInfo& w : workloads_) out += "\n" + WorkloadTable(w);
    return out;
  }

  std::string Csv() const {
    std::string out =
        "workload,allocator,run,position,wall_s,user_s,sys_s,max_rss_kib,rate,unit,status\n";
    for (const RunRecord& r : records_) {
      const ProcessResult& p = r.process;
      char line[512];
      std::snprintf(line, sizeof line, "%s,%s,%d,%d,%.6f,%.6f,%.6f,%ld,%.1f,%s,%s\n",
                    r.workload.c_str(), r.allocator.c_str(), r.run, r.position, p.wall_s, p.user_s,
                    p.sys_s, p.max_rss_kib, r.rate, r.unit.c_str(),
                    r.failure.empty() ? "ok" : r.failure.c_str());
      out += line;
    }
    return out;
  }

  void Save(const std::string& report) const {
    if (flags_.no_save) return;
    std::string dir = flags_.out_dir;
    if (dir.empty()) {
      const char* workspace = std::getenv("BUILD_WORKSPACE_DIRECTORY");
      if (workspace == nullptr || *workspace == '\0') return;
      dir = std::string(workspace) + "/perf/results";
    }
    mkdir(dir.c_str(), 0755);  // its parent must exist
    std::string stem = dir + "/" + (flags_.scale == "full" ? "latest" : "quick");
    for (const auto& [path, text] : {std::pair{stem + ".md", report}, std::pair{stem + ".csv", Csv()}}) {
      std::ofstream file(path, std::ios::trunc);
      file << text;
      file.close();
      if (!file) {
        std::fprintf(stderr, "compare: could not write %s\n", path.c_str());
      } else {
        std::fprintf(stderr, "compare: wrote %s\n", path.c_str());
      }
    }
  }

  Flags flags_;
  const char* argv0_;
  std::string command_;
  std::string workload_bin_;
  std::vector<WorkloadInfo> all_workloads_;
  std::vector<WorkloadInfo> workloads_;
  std::vector<Candidate> allocators_;
  std::vector<RunRecord> records_;
  std::string load_before_, load_after_;
  bool failed_ = false;
};

}  // namespace

int main(int argc, char** argv) {
  Compare compare(ParseFlags(argc, argv), argv[0]);
  return compare.Main(argc, argv);
}

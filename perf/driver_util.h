// perf/driver_util.h — what the drivers of the workload binary (compare.cc,
// soak.cc) share: finding files in runfiles, running one child process with a
// deadline (wall time, user+sys and peak RSS from wait4), and reading the
// `TAG key=value ...` lines the workloads print.
#ifndef FERRY_PERF_DRIVER_UTIL_H_
#define FERRY_PERF_DRIVER_UTIL_H_

#include <signal.h>
#include <sys/time.h>
#include <sys/types.h>

#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace ferry::perf_driver {

// Seconds on the monotonic clock.
double Now();
double Seconds(const timeval& tv);
bool IsFile(const std::string& path);
// realpath(3), or `path` itself when it cannot be resolved.
std::string RealPath(const std::string& path);
std::vector<std::string> Split(const std::string& text, char separator);
std::string Join(const std::vector<std::string>& parts, const std::string& separator);
// This process's environment without LD_PRELOAD and FERRY_* (a run sets the
// ones it wants).
std::vector<std::string> EnvWithoutAllocatorSettings();
// Sets KEY=VALUE in `env`, replacing an earlier KEY.
void SetEnv(std::vector<std::string>& env, const std::string& kv);

// Finds `relative` (a path inside the workspace) in the runfiles tree of this
// binary: $RUNFILES_DIR or $TEST_SRCDIR (bazel test), else <argv0>.runfiles
// or <executable>.runfiles (bazel run, or run by hand from bazel-bin).
// Returns "" when it is not there.
std::string FindRunfile(const char* argv0, const std::string& relative);

struct ProcessResult {
  pid_t pid = -1;           // the child's (and, with own_group, its group's) id
  bool exited = false;      // exited normally (else killed by a signal)
  int status = -1;          // exit status, or the signal number
  bool timed_out = false;
  bool stopped = false;     // killed because RunOptions::stop was set
  double wall_s = 0;
  double user_s = 0;
  double sys_s = 0;
  long max_rss_kib = 0;     // of the process or any child it waited for
  std::string out;          // what it wrote to stdout
  std::string err;          // what it wrote to stderr, when captured

  bool ok() const { return exited && status == 0 && !timed_out && !stopped; }
  std::string Describe() const;
};

struct RunOptions {
  double timeout_s = 300;
  bool capture_stderr = false;  // else stderr passes through
  // Runs the child in a process group of its own (pgid = its pid), and a
  // timeout or a stop kills the whole group, grandchildren included.
  bool own_group = false;
  // Called at the timeout, before the kill, with the child's pid (e.g. to
  // take backtraces).
  std::function<void(pid_t)> on_timeout;
  // When set (e.g. by a signal handler), the child is killed at once.
  const volatile sig_atomic_t* stop = nullptr;
};

// Runs argv with exactly `env` as its environment; its stdout is captured.
ProcessResult RunProcess(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                         const RunOptions& options);
// The same with a timeout and nothing else.
ProcessResult RunProcess(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                         double timeout_s, bool capture_stderr = false);

// The `key=value` fields of the first stdout line that starts with `tag`.
std::map<std::string, std::string> Fields(const std::string& out, const std::string& tag);

// The same in order, values as numbers.
using Extras = std::vector<std::pair<std::string, double>>;
Extras NumberFields(const std::string& out, const std::string& tag);

}  // namespace ferry::perf_driver

#endif  // FERRY_PERF_DRIVER_UTIL_H_

// perf/driver_util.cc — see driver_util.h.
#include "perf/driver_util.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>

extern char** environ;

namespace ferry::perf_driver {
namespace {

constexpr const char* kWorkspaceNames[] = {"ferry", "__main__"};

std::string ReadBack(int fd) {
  std::string text;
  lseek(fd, 0, SEEK_SET);
  char buffer[4096];
  for (ssize_t n; (n = read(fd, buffer, sizeof buffer)) > 0;) text.append(buffer, n);
  close(fd);
  return text;
}

// The `key=value` words of the first line of `out` that starts with `tag`, in
// order.
std::vector<std::pair<std::string, std::string>> Words(const std::string& out, const std::string& tag) {
  std::vector<std::pair<std::string, std::string>> fields;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind(tag + " ", 0) != 0) continue;
    std::istringstream words(line.substr(tag.size() + 1));
    for (std::string word; words >> word;) {
      size_t eq = word.find('=');
      if (eq != std::string::npos) fields.push_back({word.substr(0, eq), word.substr(eq + 1)});
    }
    break;
  }
  return fields;
}

}  // namespace

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

std::vector<std::string> Split(const std::string& text, char separator) {
  std::vector<std::string> parts;
  std::string part;
  std::istringstream in(text);
  while (std::getline(in, part, separator)) parts.push_back(part);
  if (!text.empty() && text.back() == separator) parts.push_back("");
  return parts;
}

std::string Join(const std::vector<std::string>& parts, const std::string& separator) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) out += (i ? separator : "") + parts[i];
  return out;
}

std::vector<std::string> EnvWithoutAllocatorSettings() {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, "LD_PRELOAD=", 11) != 0 && std::strncmp(*e, "FERRY_", 6) != 0) env.push_back(*e);
  }
  return env;
}

void SetEnv(std::vector<std::string>& env, const std::string& kv) {
  std::string key = kv.substr(0, kv.find('=') + 1);
  env.erase(std::remove_if(env.begin(), env.end(), [&](const std::string& e) { return e.rfind(key, 0) == 0; }),
            env.end());
  env.push_back(kv);
}

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

std::string ProcessResult::Describe() const {
  if (stopped) return "stopped (the driver was interrupted)";
  if (timed_out) return "timed out";
  if (!exited) return std::string("killed by signal ") + strsignal(status);
  if (status == 127) return "could not be started (exit status 127)";
  return "exit status " + std::to_string(status);
}

ProcessResult RunProcess(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                         double timeout_s, bool capture_stderr) {
  RunOptions options;
  options.timeout_s = timeout_s;
  options.capture_stderr = capture_stderr;
  return RunProcess(argv, env, options);
}

ProcessResult RunProcess(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                         const RunOptions& options) {
  // Everything the child needs is built before fork.
  std::vector<char*> child_argv, child_env;
  for (const std::string& s : argv) child_argv.push_back(const_cast<char*>(s.c_str()));
  for (const std::string& s : env) child_env.push_back(const_cast<char*>(s.c_str()));
  child_argv.push_back(nullptr);
  child_env.push_back(nullptr);
  int out_fd = memfd_create("workload-stdout", MFD_CLOEXEC);
  int err_fd = options.capture_stderr ? memfd_create("workload-stderr", MFD_CLOEXEC) : -2;
  if (out_fd < 0 || err_fd == -1) {
    std::perror("memfd_create");
    std::exit(1);
  }
  std::fflush(nullptr);

  ProcessResult result;
  double start = Now();
  pid_t pid = fork();
  if (pid < 0) {
    std::perror("fork");
    std::exit(1);
  }
  if (pid == 0) {
    if (options.own_group) setpgid(0, 0);
    dup2(out_fd, STDOUT_FILENO);
    if (err_fd >= 0) dup2(err_fd, STDERR_FILENO);
    execve(child_argv[0], child_argv.data(), child_env.data());
    _exit(127);
  }
  result.pid = pid;
  if (options.own_group) setpgid(pid, pid);  // also here: no race with the kill below
  auto kill_it = [&] { kill(options.own_group ? -pid : pid, SIGKILL); };

  // Wait with a deadline through a pidfd; without one (old kernels), wait.
  int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (pidfd >= 0) {
    pollfd pfd = {pidfd, POLLIN, 0};
    double deadline = start + options.timeout_s;
    for (;;) {
      if (options.stop != nullptr && *options.stop) {
        result.stopped = true;
        kill_it();
        break;
      }
      int left_ms = static_cast<int>((deadline - Now()) * 1000);
      if (options.stop != nullptr) left_ms = std::min(left_ms, 100);  // look at *stop now and then
      int ready = poll(&pfd, 1, std::max(left_ms, 0));
      if (ready > 0) break;
      if (ready == 0 && Now() >= deadline) {
        result.timed_out = true;
        if (options.on_timeout) options.on_timeout(pid);
        kill_it();
        break;
      }
      if (ready < 0 && errno != EINTR) break;
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

  result.out = ReadBack(out_fd);
  if (err_fd >= 0) result.err = ReadBack(err_fd);
  return result;
}

std::map<std::string, std::string> Fields(const std::string& out, const std::string& tag) {
  std::map<std::string, std::string> fields;
  for (const auto& [key, value] : Words(out, tag)) fields[key] = value;
  return fields;
}

Extras NumberFields(const std::string& out, const std::string& tag) {
  Extras fields;
  for (const auto& [key, value] : Words(out, tag)) fields.push_back({key, std::atof(value.c_str())});
  return fields;
}

}  // namespace ferry::perf_driver

// diag.h — diagnostics that never allocate: a fixed-buffer line writer for
// stderr, and the fatal reports for corrupting frees.
#ifndef FERRY_COMMON_DIAG_H_
#define FERRY_COMMON_DIAG_H_

#include <cstddef>
#include <cstdint>

#include "common/base.h"

namespace ferry {

// Builds one line in a fixed buffer (longer text is cut) and writes it to
// stderr in a single write, so lines from threads do not interleave.
class DiagLine {
 public:
  DiagLine& Str(const char* s);
  DiagLine& Dec(uint64_t v);
  DiagLine& Int(int64_t v) {
    if (v < 0) Str("-");
    return Dec(v < 0 ? 0 - static_cast<uint64_t>(v) : static_cast<uint64_t>(v));
  }
  DiagLine& Hex(uintptr_t v);  // "0x" and lowercase hex
  DiagLine& Ptr(const void* p) { return Hex(reinterpret_cast<uintptr_t>(p)); }
  const char* data() const { return buf_; }
  size_t size() const { return len_; }
  void WriteToStderr();

 private:
  char buf_[512];
  size_t len_ = 0;
};

// "ferry: <call>(0x…): <reason>", then abort(). The call names the entry point
// that found the bad pointer (free, realloc, usable_size, ...).
[[noreturn]] FERRY_COLD void FatalBadPointer(const char* call, const void* ptr,
                                             const char* reason);

// FERRY_VERBOSE, set once at start-up: 1 reports heap and segment events,
// 2 also every page.
extern int g_verbose_level;
inline bool Verbose(int level) { return FERRY_UNLIKELY(g_verbose_level >= level); }

// "ferry: warning: <text>" — used for bad options and other recoverable news.
FERRY_COLD void Warn(const char* text, const char* detail = nullptr);

}  // namespace ferry

#endif  // FERRY_COMMON_DIAG_H_

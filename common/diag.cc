// diag.cc — see diag.h.
#include "common/diag.h"

#include <cstdlib>

#include "common/os.h"

namespace ferry {

constinit int g_verbose_level = 0;

DiagLine& DiagLine::Str(const char* s) {
  while (*s != '\0' && len_ < sizeof(buf_) - 1) buf_[len_++] = *s++;
  return *this;
}

DiagLine& DiagLine::Dec(uint64_t v) {
  char digits[24];
  int n = 0;
  do {
    digits[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0);
  while (n > 0 && len_ < sizeof(buf_) - 1) buf_[len_++] = digits[--n];
  return *this;
}

DiagLine& DiagLine::Hex(uintptr_t v) {
  Str("0x");
  char digits[20];
  int n = 0;
  do {
    digits[n++] = "0123456789abcdef"[v & 15];
    v >>= 4;
  } while (v != 0);
  while (n > 0 && len_ < sizeof(buf_) - 1) buf_[len_++] = digits[--n];
  return *this;
}

void DiagLine::WriteToStderr() {
  if (len_ == 0 || buf_[len_ - 1] != '\n') buf_[len_++] = '\n';
  OsWriteStderr(buf_, len_);
}

void FatalBadPointer(const char* call, const void* ptr, const char* reason) {
  DiagLine line;
  line.Str("ferry: ").Str(call).Str("(").Ptr(ptr).Str("): ").Str(reason).WriteToStderr();
  abort();
}

void CheckFailed(const char* what, const char* file, int line_number) {
  DiagLine line;
  line.Str("ferry: internal check failed: ").Str(what).Str(" (").Str(file).Str(":")
      .Dec(static_cast<uint64_t>(line_number)).Str(")").WriteToStderr();
  abort();
}

void Warn(const char* text, const char* detail) {
  DiagLine line;
  line.Str("ferry: warning: ").Str(text);
  if (detail != nullptr) line.Str(detail);
  line.WriteToStderr();
}

}  // namespace ferry

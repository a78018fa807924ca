// options.cc — see options.h.
#include "common/options.h"

#include <cstdlib>

#include "common/diag.h"

namespace ferry {
namespace {

constexpr OptionInfo kTable[] = {
#define FERRY_OPTION_INFO(field, name, def, lo, hi, choices, help) {name, def, lo, hi, choices, help},
    FERRY_OPTIONS(FERRY_OPTION_INFO)
#undef FERRY_OPTION_INFO
};

void ReadOne(const char* name, int64_t def, int64_t lo, int64_t hi, const char* choices,
             int64_t* field) {
  *field = def;
  const char* text = getenv(name);
  if (text == nullptr) return;
  int64_t value;
  if (choices != nullptr) {
    value = ParseOptionChoice(text, choices);
    if (value >= 0) {
      *field = value;
      return;
    }
    DiagLine().Str("ferry: warning: ignoring ").Str(name).Str("=").Str(text)
        .Str(" (expected one of ").Str(choices).Str("); using the default").WriteToStderr();
    return;
  }
  if (ParseOptionValue(text, lo, hi, &value)) {
    *field = value;
    return;
  }
  DiagLine line;
  line.Str("ferry: warning: ignoring ").Str(name).Str("=").Str(text).Str(" (expected ")
      .Int(lo).Str("..").Int(hi).Str("); using the default ").Int(def);
  line.WriteToStderr();
}

}  // namespace

const OptionInfo* OptionTable(size_t* count) {
  *count = sizeof(kTable) / sizeof(kTable[0]);
  return kTable;
}

bool ParseOptionValue(const char* text, int64_t lo, int64_t hi, int64_t* out) {
  const char* p = text;
  while (*p == ' ') ++p;
  const bool negative = *p == '-';
  if (negative) ++p;
  if (*p < '0' || *p > '9') return false;
  uint64_t value = 0;
  for (; *p >= '0' && *p <= '9'; ++p) {
    // Checked before the step: up to 2^62 times 10 wraps around 2^64, and
    // 2^64 + 1 read as 1 (found by a review).
    const uint64_t digit = static_cast<uint64_t>(*p - '0');
    if (value > ((uint64_t{1} << 62) - digit) / 10) return false;
    value = value * 10 + digit;
  }
  int shift = 0;
  switch (*p) {
    case 'k': case 'K': shift = 10; ++p; break;
    case 'm': case 'M': shift = 20; ++p; break;
    case 'g': case 'G': shift = 30; ++p; break;
    default: break;
  }
  while (*p == ' ') ++p;
  if (*p != '\0') return false;
  if (shift != 0 && value > (uint64_t{1} << (62 - shift))) return false;
  value <<= shift;
  const int64_t signed_value = negative ? -static_cast<int64_t>(value) : static_cast<int64_t>(value);
  if (signed_value < lo || signed_value > hi) return false;
  *out = signed_value;
  return true;
}

int64_t ParseOptionChoice(const char* text, const char* choices) {
  int64_t index = 0;
  const char* choice = choices;
  while (*choice != '\0') {
    const char* end = choice;
    while (*end != '\0' && *end != '|') ++end;
    size_t i = 0;
    while (choice + i < end && text[i] == choice[i]) ++i;
    if (choice + i == end && text[i] == '\0') return index;
    ++index;
    choice = *end == '|' ? end + 1 : end;
  }
  return -1;
}

void ReadOptionsFromEnvironment(Options* out) {
#define FERRY_OPTION_READ(field, name, def, lo, hi, choices, help) \
  ReadOne(name, def, lo, hi, choices, &out->field);
  FERRY_OPTIONS(FERRY_OPTION_READ)
#undef FERRY_OPTION_READ
}

}  // namespace ferry

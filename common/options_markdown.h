// options_markdown.h — the README's table of FERRY_* variables, made from
// the options table (for //common:options_table, which prints it, and for
// the test that holds the README to it). Tools and tests only: it uses
// std::string, which the allocator itself never does.
#ifndef FERRY_COMMON_OPTIONS_MARKDOWN_H_
#define FERRY_COMMON_OPTIONS_MARKDOWN_H_

#include <string>

#include "common/options.h"

namespace ferry {

// One row: | `FERRY_NAME` | default | range or choices | meaning |
inline std::string OptionMarkdownRow(const OptionInfo& option) {
  std::string row = std::string("| `") + option.name + "` | ";
  if (option.choices != nullptr) {
    const std::string choices = option.choices;
    std::string words, first;
    size_t start = 0;
    for (int64_t k = 0;; ++k) {
      const size_t bar = choices.find('|', start);
      const std::string word = choices.substr(start, bar - start);
      if (k == option.default_value) first = word;
      words += (words.empty() ? "" : ", ") + word;
      if (bar == std::string::npos) break;
      start = bar + 1;
    }
    row += first + " | " + words;
  } else {
    row += std::to_string(option.default_value) + " | " + std::to_string(option.min_value) + "–" +
           std::to_string(option.max_value);
  }
  return row + " | " + option.help + " |";
}

// The whole table, header included, one row per line.
inline std::string OptionsMarkdownTable() {
  std::string table = "| variable | default | range | meaning |\n|---|---|---|---|\n";
  size_t count = 0;
  const OptionInfo* options = OptionTable(&count);
  for (size_t i = 0; i < count; ++i) table += OptionMarkdownRow(options[i]) + "\n";
  return table;
}

}  // namespace ferry

#endif  // FERRY_COMMON_OPTIONS_MARKDOWN_H_

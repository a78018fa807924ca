// Prints the README's table of FERRY_* variables from the options table:
//   tools/bazel run //common:options_table
// (paste it over the table under "## Environment variables"; options_test
// fails until the README holds exactly this table).
#include <cstdio>

#include "common/options_markdown.h"

int main() {
  std::fputs(ferry::OptionsMarkdownTable().c_str(), stdout);
  return 0;
}

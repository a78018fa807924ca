// Tests of the options table: parsing, bounds, and that the README lists
// every FERRY_* variable with its default and range.
#include "common/options.h"
#include "common/options_markdown.h"

#include <gtest/gtest.h>
#include <stdint.h>
#include <stdlib.h>

#include <fstream>
#include <sstream>
#include <string>

namespace ferry {
namespace {

TEST(Options, ParsesDecimalsAndBinarySuffixes) {
  int64_t v = 0;
  EXPECT_TRUE(ParseOptionValue("256", 1, 4096, &v));
  EXPECT_EQ(v, 256);
  EXPECT_TRUE(ParseOptionValue("4k", 1, 1 << 20, &v));
  EXPECT_EQ(v, 4096);
  EXPECT_TRUE(ParseOptionValue(" 2M ", 1, 1 << 30, &v));
  EXPECT_EQ(v, 2 << 20);
  EXPECT_TRUE(ParseOptionValue("0", 0, 1, &v));
  EXPECT_EQ(v, 0);
}

TEST(Options, ParsesNegativeValuesAndChoices) {
  int64_t v = 0;
  EXPECT_TRUE(ParseOptionValue("-1", -1, 64, &v));
  EXPECT_EQ(v, -1);
  EXPECT_FALSE(ParseOptionValue("-2", -1, 64, &v));
  EXPECT_EQ(ParseOptionChoice("threads", "threads|tbb"), 0);
  EXPECT_EQ(ParseOptionChoice("tbb", "threads|tbb"), 1);
  EXPECT_EQ(ParseOptionChoice("tb", "threads|tbb"), -1);
  EXPECT_EQ(ParseOptionChoice("tbbx", "threads|tbb"), -1);
  EXPECT_EQ(ParseOptionChoice("", "threads|tbb"), -1);
}

TEST(Options, RejectsGarbageAndOutOfBoundsValues) {
  int64_t v = 7;
  for (const char* bad : {"", "x", "-1", "12x", "1.5", "5000", "99999999999999999999", "1t"}) {
    EXPECT_FALSE(ParseOptionValue(bad, 1, 4096, &v)) << bad;
  }
  // 2^64 + 1, 2^64 and 2^65 + 1: the digits' product wrapped to 1, 0 and 1.
  for (const char* bad : {"18446744073709551617", "18446744073709551616", "36893488147419103233",
                          "-18446744073709551617"}) {
    EXPECT_FALSE(ParseOptionValue(bad, -4096, 4096, &v)) << bad;
  }
  EXPECT_EQ(v, 7);
  // The largest accepted magnitude, 2^62, still parses.
  EXPECT_TRUE(ParseOptionValue("4611686018427387904", 0, INT64_MAX, &v));
  EXPECT_EQ(v, int64_t{1} << 62);
}

TEST(Options, BadEnvironmentValuesFallBackToTheDefault) {
  setenv("FERRY_BATCH", "not-a-number", 1);
  setenv("FERRY_STATS", "1", 1);
  Options options;
  ReadOptionsFromEnvironment(&options);
  EXPECT_EQ(options.batch, 256);
  EXPECT_EQ(options.stats, 1);
  unsetenv("FERRY_BATCH");
  unsetenv("FERRY_STATS");
}

TEST(Options, EveryDefaultLiesWithinItsBounds) {
  size_t count = 0;
  const OptionInfo* table = OptionTable(&count);
  ASSERT_GT(count, 0u);
  for (size_t i = 0; i < count; ++i) {
    EXPECT_LE(table[i].min_value, table[i].default_value) << table[i].name;
    EXPECT_LE(table[i].default_value, table[i].max_value) << table[i].name;
  }
}

// The README's table of variables is exactly the one //common:options_table
// prints from the options table (name, default, range or choices, meaning).
TEST(Options, ReadmeHoldsTheGeneratedTableOfVariables) {
  const char* srcdir = getenv("TEST_SRCDIR");
  ASSERT_NE(srcdir, nullptr);
  std::ifstream in(std::string(srcdir) + "/ferry/README.md");
  ASSERT_TRUE(in.good());
  std::stringstream text;
  text << in.rdbuf();
  const std::string readme = text.str();
  const std::string table = OptionsMarkdownTable();
  EXPECT_NE(readme.find(table), std::string::npos)
      << "README.md does not hold the table of variables as generated; run\n"
         "  tools/bazel run //common:options_table\nand paste its output:\n"
      << table;
  size_t count = 0;
  const OptionInfo* options = OptionTable(&count);
  for (size_t i = 0; i < count; ++i) {
    EXPECT_NE(readme.find(OptionMarkdownRow(options[i])), std::string::npos)
        << "README lacks the row: " << OptionMarkdownRow(options[i]);
  }
}

}  // namespace
}  // namespace ferry

// Tests of the options table: parsing, bounds, and that the README lists
// every FERRY_* variable with its default and range.
#include "common/options.h"

#include <gtest/gtest.h>
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
  EXPECT_EQ(v, 7);
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

// The README's table of variables has one row per option:
// | `FERRY_NAME` | default | min..max | help |
TEST(Options, ReadmeListsEveryVariableWithItsDefaultAndRange) {
  const char* srcdir = getenv("TEST_SRCDIR");
  ASSERT_NE(srcdir, nullptr);
  std::ifstream in(std::string(srcdir) + "/ferry/README.md");
  ASSERT_TRUE(in.good());
  std::stringstream text;
  text << in.rdbuf();
  const std::string readme = text.str();
  size_t count = 0;
  const OptionInfo* table = OptionTable(&count);
  for (size_t i = 0; i < count; ++i) {
    std::string row;
    if (table[i].choices != nullptr) {
      // | `FERRY_NAME` | default-word | word, word |
      std::string choices = table[i].choices;
      std::string words, first;
      size_t start = 0;
      for (int64_t k = 0;; ++k) {
        const size_t bar = choices.find('|', start);
        const std::string word = choices.substr(start, bar - start);
        if (k == table[i].default_value) first = word;
        words += (words.empty() ? "" : ", ") + word;
        if (bar == std::string::npos) break;
        start = bar + 1;
      }
      row = std::string("| `") + table[i].name + "` | " + first + " | " + words + " |";
    } else {
      row = std::string("| `") + table[i].name + "` | " + std::to_string(table[i].default_value) +
            " | " + std::to_string(table[i].min_value) + "–" + std::to_string(table[i].max_value) +
            " |";
    }
    EXPECT_NE(readme.find(row), std::string::npos) << "README lacks the row: " << row;
  }
}

}  // namespace
}  // namespace ferry

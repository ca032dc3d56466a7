#include "coordinator/stop_strings.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace moe {
namespace {

// Feeds `pieces` one by one; returns everything sent and whether a stop was seen.
std::pair<std::string, bool> Stream(std::vector<std::string> stops, std::vector<std::string> pieces) {
  StopStrings s(std::move(stops));
  std::string out;
  for (const std::string& p : pieces) {
    out += s.Feed(p);
    if (s.stopped()) return {out, true};
  }
  return {out + s.Flush(), false};
}

TEST(StopStringsTest, FoundAcrossPiecesAndLeftOut) {
  EXPECT_EQ(Stream({"STOP"}, {"hello S", "TO", "P world"}), std::make_pair(std::string("hello "), true));
  EXPECT_EQ(Stream({"\n\n"}, {"a\n", "\nb"}), std::make_pair(std::string("a"), true));
  EXPECT_EQ(Stream({"世界"}, {"你好", "世", "界!"}), std::make_pair(std::string("你好"), true));
  // The earliest of several stop strings wins.
  EXPECT_EQ(Stream({"cd", "b"}, {"abcd"}), std::make_pair(std::string("a"), true));
}

TEST(StopStringsTest, HeldBackTextIsSentWhenItTurnsOutNotToStop) {
  StopStrings s({"STOP"});
  EXPECT_EQ(s.Feed("abc ST"), "abc ");  // "ST" might begin "STOP"
  EXPECT_EQ(s.Feed("X"), "STX");
  EXPECT_EQ(s.Feed("S"), "");
  EXPECT_EQ(s.Flush(), "S");
  EXPECT_FALSE(s.stopped());
  EXPECT_EQ(Stream({}, {"a", "b"}), std::make_pair(std::string("ab"), false));
  EXPECT_EQ(Stream({""}, {"a", "b"}), std::make_pair(std::string("ab"), false));  // empty: ignored
}

TEST(StopStringsTest, NothingAfterTheStop) {
  StopStrings s({"x"});
  EXPECT_EQ(s.Feed("axb"), "a");
  EXPECT_TRUE(s.stopped());
  EXPECT_EQ(s.Feed("more"), "");
  EXPECT_EQ(s.Flush(), "");
}

}  // namespace
}  // namespace moe

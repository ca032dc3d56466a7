#include "common/cli.h"

#include "gtest/gtest.h"

namespace moe {
namespace {

absl::Status ParseArgs(FlagParser& p, std::vector<std::string> args) {
  std::vector<char*> argv;
  static std::string prog = "prog";
  argv.push_back(prog.data());
  for (auto& a : args) argv.push_back(a.data());
  return p.Parse(static_cast<int>(argv.size()), argv.data());
}

TEST(FlagParserTest, ParsesForms) {
  std::string s;
  int64_t n = 3;
  double d = 0.5;
  bool b = false;
  FlagParser p("prog", "test");
  p.AddString("name", &s, "a name", true);
  p.AddInt("count", &n, "a count");
  p.AddDouble("ratio", &d, "a ratio");
  p.AddBool("verbose", &b, "chatty");
  ASSERT_TRUE(ParseArgs(p, {"--name", "x", "--count=7", "--ratio", "0.25", "--verbose"}).ok());
  EXPECT_EQ(s, "x");
  EXPECT_EQ(n, 7);
  EXPECT_EQ(d, 0.25);
  EXPECT_TRUE(b);
  EXPECT_TRUE(p.WasSet("count"));
}

TEST(FlagParserTest, ErrorsNameTheFlag) {
  std::string s;
  int64_t n = 0;
  FlagParser p("prog", "test");
  p.AddString("name", &s, "a name", true);
  p.AddInt("count", &n, "a count");
  EXPECT_NE(ParseArgs(p, {"--name", "x", "--count", "abc"}).message().find("--count"),
            std::string::npos);
  FlagParser q("prog", "test");
  q.AddString("name", &s, "a name", true);
  EXPECT_NE(ParseArgs(q, {}).message().find("--name"), std::string::npos);
  FlagParser r("prog", "test");
  EXPECT_NE(ParseArgs(r, {"--bogus"}).message().find("--bogus"), std::string::npos);
}

TEST(FlagParserTest, HelpListsFlags) {
  int64_t n = 5;
  FlagParser p("prog", "does things");
  p.AddInt("count", &n, "how many");
  ASSERT_TRUE(ParseArgs(p, {"--help"}).ok());
  EXPECT_TRUE(p.help_requested());
  EXPECT_NE(p.Usage().find("--count INT"), std::string::npos);
  EXPECT_NE(p.Usage().find("default: 5"), std::string::npos);
}

}  // namespace
}  // namespace moe

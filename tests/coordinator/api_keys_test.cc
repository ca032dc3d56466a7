#include "coordinator/api_keys.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace moe {
namespace {

using ::moe::testing::ScratchDir;
using ::moe::testing::WriteFile;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(ApiKeysTest, ConstantTimeEqualsIsEquality) {
  EXPECT_TRUE(ConstantTimeEquals("", ""));
  EXPECT_TRUE(ConstantTimeEquals("sk-abc", "sk-abc"));
  EXPECT_FALSE(ConstantTimeEquals("sk-abc", "sk-abd"));
  EXPECT_FALSE(ConstantTimeEquals("sk-ab", "sk-abc"));  // a prefix
  EXPECT_FALSE(ConstantTimeEquals("sk-abc", "sk-ab"));
  EXPECT_FALSE(ConstantTimeEquals("", "x"));
  EXPECT_FALSE(ConstantTimeEquals(absl::string_view("a\0", 2), "a"));  // a NUL is a byte too
}

TEST(ApiKeysTest, KeyFilesSkipBlankLinesAndComments) {
  auto keys = ParseApiKeyFile("# team A\n  key-1  \n\nkey-2\r\n# key-3\n");
  ASSERT_TRUE(keys.ok()) << keys.status();
  EXPECT_THAT(*keys, ElementsAre("key-1", "key-2"));
  auto bad = ParseApiKeyFile("key-1\nkey 2\n");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("line 2"));
  EXPECT_THAT(bad.status().message(), ::testing::Not(HasSubstr("key 2"))) << "a key in a message";
}

TEST(ApiKeysTest, NoKeysMeansOpen) {
  auto keys = ApiKeys::Create({"", ""}, "");
  ASSERT_TRUE(keys.ok());
  EXPECT_FALSE((*keys)->enabled());
  EXPECT_TRUE((*keys)->Allows(""));
}

TEST(ApiKeysTest, BearerSchemeAndExactKey) {
  auto keys = ApiKeys::Create({"sk-123"}, "");
  ASSERT_TRUE(keys.ok());
  const ApiKeys& k = **keys;
  EXPECT_TRUE(k.enabled());
  EXPECT_TRUE(k.Allows("Bearer sk-123"));
  EXPECT_TRUE(k.Allows("bearer sk-123"));   // the scheme is case-insensitive
  EXPECT_FALSE(k.Allows("Bearer SK-123"));  // the key is not
  EXPECT_FALSE(k.Allows("sk-123"));
  EXPECT_FALSE(k.Allows("Bearer sk-12"));
  EXPECT_FALSE(k.Allows("Bearer sk-1234"));
  EXPECT_FALSE(k.Allows("Bearer "));
  EXPECT_FALSE(k.Allows(""));
  EXPECT_FALSE(k.Allows("Basic sk-123"));
}

TEST(ApiKeysTest, FileKeysReloadAndABrokenFileKeepsTheOldOnes) {
  ScratchDir dir;
  const std::string path = dir.file("keys");
  WriteFile(path, "a-1\nb-2\n");
  auto created = ApiKeys::Create({"fixed"}, path);
  ASSERT_TRUE(created.ok()) << created.status();
  ApiKeys& k = **created;
  EXPECT_TRUE(k.Allows("Bearer a-1"));
  EXPECT_TRUE(k.Allows("Bearer b-2"));
  WriteFile(path, "b-2\nc-3\n");  // revoke a-1, add c-3
  ASSERT_EQ(*k.Reload(), 3u);     // fixed + two from the file
  EXPECT_FALSE(k.Allows("Bearer a-1"));
  EXPECT_TRUE(k.Allows("Bearer c-3"));
  EXPECT_TRUE(k.Allows("Bearer fixed"));
  WriteFile(path, "c-3\nbad key\n");
  EXPECT_FALSE(k.Reload().ok());
  EXPECT_TRUE(k.Allows("Bearer b-2")) << "a failed reload dropped the keys in use";
  WriteFile(path, "# nobody\n");  // a file with no key refuses everyone but the fixed keys
  ASSERT_EQ(*k.Reload(), 1u);
  EXPECT_FALSE(k.Allows("Bearer c-3"));
  EXPECT_TRUE(k.Allows("Bearer fixed"));
}

TEST(ApiKeysTest, AConfiguredFileThatCannotBeReadIsAnError) {
  auto keys = ApiKeys::Create({}, "/nonexistent/keys");
  EXPECT_EQ(keys.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(keys.status().message(), HasSubstr("/nonexistent/keys"));
}

TEST(ApiKeysTest, AnEmptyKeyFileStillRequiresAKey) {
  ScratchDir dir;
  const std::string path = dir.file("keys");
  WriteFile(path, "");
  auto keys = ApiKeys::Create({}, path);
  ASSERT_TRUE(keys.ok());
  EXPECT_TRUE((*keys)->enabled());
  EXPECT_FALSE((*keys)->Allows("Bearer anything"));
}

}  // namespace
}  // namespace moe

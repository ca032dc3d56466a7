#include "coordinator/validation.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"
#include "tools/model_maker.h"

namespace moe {
namespace {

using ::testing::HasSubstr;

moe::v1::GenerateRequest Good() {
  moe::v1::GenerateRequest r;
  r.add_prompt_ids(1);
  r.add_prompt_ids(2);
  r.set_max_tokens(8);
  return r;
}

absl::Status Check(const moe::v1::GenerateRequest& r) {
  return ValidateRequest(r, *PresetConfig("tiny-dsv3"), RequestLimits{400}, 5).status();
}

TEST(ValidationTest, AcceptsAndFillsDefaults) {
  auto p = ValidateRequest(Good(), *PresetConfig("tiny-dsv3"), RequestLimits{400}, 5);
  ASSERT_TRUE(p.ok());
  EXPECT_FLOAT_EQ(p->sampling.temperature(), 1.0f);  // unset: 1.0
  EXPECT_FLOAT_EQ(p->sampling.top_p(), 1.0f);
  EXPECT_EQ(p->sampling.seed(), 5u);  // the server's random seed when unset
}

TEST(ValidationTest, ServerLimitsNameTheirFlag) {
  const RequestLimits limits{400, 3, 10};
  auto check = [&](const moe::v1::GenerateRequest& r) {
    return ValidateRequest(r, *PresetConfig("tiny-dsv3"), limits, 5).status();
  };
  moe::v1::GenerateRequest r = Good();
  r.add_prompt_ids(3);
  EXPECT_TRUE(check(r).ok());  // 3 tokens: at the limit
  r.add_prompt_ids(4);
  EXPECT_EQ(check(r).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(check(r).message(),
              HasSubstr("prompt_ids: 4 tokens exceed this server's limit of 3 (--max-prompt-tokens)"));
  moe::v1::GenerateRequest t = Good();
  t.set_max_tokens(10);
  EXPECT_TRUE(check(t).ok());
  t.set_max_tokens(11);
  EXPECT_THAT(check(t).message(),
              HasSubstr("max_tokens: 11 exceeds this server's limit of 10 (--max-new-tokens)"));
}

TEST(ValidationTest, EachBadFieldIsNamed) {
  struct Case {
    std::function<void(moe::v1::GenerateRequest&)> edit;
    std::string message;
  };
  for (const Case& c : std::vector<Case>{
           {[](auto& r) { r.clear_prompt_ids(); }, "prompt: the prompt is empty"},
           {[](auto& r) { r.add_prompt_ids(512); }, "prompt_ids[2]: token id 512"},
           {[](auto& r) { r.set_prompt_ids(0, -3); }, "prompt_ids[0]: token id -3"},
           {[](auto& r) { r.set_max_tokens(0); }, "max_tokens: must be > 0"},
           {[](auto& r) { r.set_max_tokens(-5); }, "max_tokens: must be > 0"},
           {[](auto& r) { r.set_max_tokens(511); }, "exceeds the context of 512"},
           {[](auto& r) { r.set_max_tokens(450); }, "exceeds the 400 tokens one sequence"},
           {[](auto& r) { r.mutable_sampling()->set_temperature(-0.5f); },
            "sampling.temperature: must be >= 0"},
           {[](auto& r) { r.mutable_sampling()->set_top_p(0.0f); },
            "sampling.top_p: must be in (0, 1]"},
           {[](auto& r) { r.mutable_sampling()->set_top_p(1.5f); }, "sampling.top_p"},
           {[](auto& r) { r.mutable_sampling()->set_top_k(-1); }, "sampling.top_k: must be >= 0"},
           {[](auto& r) { r.add_stop_token_ids(9999); }, "stop_token_ids[0]"},
       }) {
    moe::v1::GenerateRequest r = Good();
    c.edit(r);
    const absl::Status s = Check(r);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.message));
  }
}

}  // namespace
}  // namespace moe

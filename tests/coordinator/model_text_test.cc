#include "coordinator/model_text.h"

#include <fstream>

#include "gtest/gtest.h"
#include "tests/test_util.h"
#include "tools/model_maker.h"
#include "tools/tokenizer_maker.h"

namespace moe {
namespace {

std::vector<int32_t> Ids(const moe::v1::GenerateRequest& r) {
  return std::vector<int32_t>(r.prompt_ids().begin(), r.prompt_ids().end());
}

TEST(ModelTextTest, TextPromptsAreEncodedOrRefused) {
  moe::testing::ScratchDir dir;
  const ModelConfig config = *PresetConfig("tiny-dsv3");
  ASSERT_TRUE(WriteTokenizer(config, dir.path()).ok());
  const ModelText text = ModelText::Load(config, dir.path());
  ASSERT_NE(text.tokenizer, nullptr) << text.tokenizer_status;
  moe::v1::GenerateRequest r;
  r.set_prompt("Hello");
  ASSERT_TRUE(text.Encode(&r).ok());
  EXPECT_EQ(Ids(r), text.tokenizer->Encode("Hello"));
  EXPECT_EQ(r.prompt_ids(0), *text.tokenizer->bos_id());
  EXPECT_EQ(text.Encode(&r).code(), absl::StatusCode::kInvalidArgument);  // prompt and ids

  const ModelText none = ModelText::Load(config, "");
  moe::v1::GenerateRequest t;
  t.set_prompt("Hello");
  EXPECT_EQ(none.Encode(&t).code(), absl::StatusCode::kFailedPrecondition);
  moe::v1::GenerateRequest ids;
  ids.add_prompt_ids(1);
  EXPECT_TRUE(none.Encode(&ids).ok());  // ids need no tokenizer
  EXPECT_EQ(ids.prompt_ids_size(), 1);
}

TEST(ModelTextTest, ConversationsAreRenderedWithTheTemplateAndEncodedWithoutAddingBos) {
  moe::testing::ScratchDir dir;
  const ModelConfig config = *PresetConfig("tiny-dsv3");
  ASSERT_TRUE(WriteTokenizer(config, dir.path()).ok());
  const ModelText text = ModelText::Load(config, dir.path());
  ASSERT_TRUE(text.chat_template.has_value()) << text.chat_template_status;
  moe::v1::GenerateRequest r;
  auto* m = r.add_messages();
  m->set_role("system");
  m->set_content("Be brief.");
  m = r.add_messages();
  m->set_role("user");
  m->set_content("Hi");
  ASSERT_TRUE(text.Encode(&r).ok());
  // DeepSeek-V3.1's template writes BOS itself, and the generation prompt in non-thinking mode.
  const std::string want = "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi<｜Assistant｜></think>";
  EXPECT_EQ(Ids(r), text.tokenizer->Encode(want, /*add_special_tokens=*/false));
  EXPECT_EQ(text.tokenizer->Decode(Ids(r)).value_or(""), want);

  moe::v1::GenerateRequest both = r;  // now holds ids as well
  EXPECT_EQ(text.Encode(&both).code(), absl::StatusCode::kInvalidArgument);
  moe::v1::GenerateRequest no_role;
  no_role.add_messages()->set_content("x");
  EXPECT_EQ(text.Encode(&no_role).code(), absl::StatusCode::kInvalidArgument);
}

TEST(ModelTextTest, AMissingOrBrokenTemplateRefusesChatsOnly) {
  moe::testing::ScratchDir dir;
  const ModelConfig config = *PresetConfig("tiny-dsv3");
  ASSERT_TRUE(WriteTokenizer(config, dir.path()).ok());
  std::ofstream(dir.path() + "/chat_template.jinja") << "{% for %}";
  const ModelText text = ModelText::Load(config, dir.path());
  ASSERT_NE(text.tokenizer, nullptr);
  EXPECT_FALSE(text.chat_template.has_value());
  EXPECT_NE(text.chat_template_status.find("chat_template.jinja"), std::string::npos) << text.chat_template_status;
  moe::v1::GenerateRequest chat;
  auto* m = chat.add_messages();
  m->set_role("user");
  m->set_content("Hi");
  const absl::Status s = text.Encode(&chat);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  moe::v1::GenerateRequest plain;
  plain.set_prompt("Hi");
  EXPECT_TRUE(text.Encode(&plain).ok());
}

}  // namespace
}  // namespace moe

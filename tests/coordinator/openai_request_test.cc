#include "coordinator/openai_request.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moe {
namespace {

using ::testing::HasSubstr;

std::string Error(const std::string& body) {
  auto r = ParseCompletionRequest(body);
  EXPECT_FALSE(r.ok()) << body;
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << body;
  return std::string(r.status().message());
}

TEST(OpenAiRequestTest, FieldsMapToTheGenerateRequest) {
  auto r = ParseCompletionRequest(R"({"model": "m", "prompt": "Hi", "max_tokens": 7,
      "temperature": 0.5, "top_p": 0.9, "top_k": 20, "seed": 3, "stop": ["\n\n", "END"],
      "stop_token_ids": [4], "ignore_eos": true, "skip_special_tokens": false, "n": 2,
      "stream": true, "stream_options": {"include_usage": true}, "user": "ignored"})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->model, "m");
  EXPECT_EQ(r->n, 2);
  EXPECT_TRUE(r->stream);
  EXPECT_TRUE(r->include_usage);
  ASSERT_EQ(r->prompts.size(), 1u);
  const moe::v1::GenerateRequest& g = r->prompts[0];
  EXPECT_EQ(g.prompt(), "Hi");
  EXPECT_EQ(g.max_tokens(), 7);
  EXPECT_FLOAT_EQ(g.sampling().temperature(), 0.5f);
  EXPECT_FLOAT_EQ(g.sampling().top_p(), 0.9f);
  EXPECT_EQ(g.sampling().top_k(), 20);
  EXPECT_EQ(g.sampling().seed(), 3u);
  EXPECT_THAT(g.stop(), ::testing::ElementsAre("\n\n", "END"));
  EXPECT_THAT(g.stop_token_ids(), ::testing::ElementsAre(4));
  EXPECT_TRUE(g.ignore_eos());
  EXPECT_FALSE(g.skip_special_tokens());
}

TEST(OpenAiRequestTest, PromptForms) {
  auto defaults = ParseCompletionRequest(R"({"prompt": [1, 2, 3]})");
  ASSERT_TRUE(defaults.ok());
  EXPECT_THAT(defaults->prompts[0].prompt_ids(), ::testing::ElementsAre(1, 2, 3));
  EXPECT_EQ(defaults->prompts[0].max_tokens(), 16);  // OpenAI's default
  EXPECT_FALSE(defaults->prompts[0].sampling().has_temperature());  // the server's default (1)
  auto batch = ParseCompletionRequest(R"({"prompt": ["a", [5, 6], "b"], "max_tokens": 2})");
  ASSERT_TRUE(batch.ok());
  ASSERT_EQ(batch->prompts.size(), 3u);
  EXPECT_EQ(batch->prompts[0].prompt(), "a");
  EXPECT_THAT(batch->prompts[1].prompt_ids(), ::testing::ElementsAre(5, 6));
  EXPECT_EQ(batch->prompts[2].max_tokens(), 2);
  EXPECT_FALSE(ParseCompletionRequest(R"({"prompt": "x", "stream_options": {"include_usage": true}})")
                   ->include_usage);  // only with stream
}

TEST(OpenAiRequestTest, BadBodiesNameTheField) {
  EXPECT_THAT(Error("not json"), HasSubstr("not a JSON object"));
  EXPECT_THAT(Error("[1]"), HasSubstr("not a JSON object"));
  EXPECT_THAT(Error(R"({"max_tokens": 3})"), HasSubstr("prompt: required"));
  EXPECT_THAT(Error(R"({"prompt": {}})"), HasSubstr("prompt"));
  EXPECT_THAT(Error(R"({"prompt": [1, "a"]})"), HasSubstr("non-integer"));
  EXPECT_THAT(Error(R"({"prompt": "x", "max_tokens": "9"})"), HasSubstr("max_tokens: expected an integer"));
  EXPECT_THAT(Error(R"({"prompt": "x", "max_tokens": 0})"), HasSubstr("max_tokens"));
  EXPECT_THAT(Error(R"({"prompt": "x", "temperature": "hot"})"), HasSubstr("temperature"));
  EXPECT_THAT(Error(R"({"prompt": "x", "stop": 5})"), HasSubstr("stop"));
  EXPECT_THAT(Error(R"({"prompt": "x", "n": 0})"), HasSubstr("n: expected"));
  EXPECT_THAT(Error(R"({"prompt": "x", "stream": "yes"})"), HasSubstr("stream: expected"));
  EXPECT_THAT(Error(R"({"prompt": "x", "model": 3})"), HasSubstr("model: expected"));
  for (const char* unsupported :
       {R"("echo": true)", R"("suffix": "s")", R"("presence_penalty": 0.5)",
        R"("logit_bias": {"5": 1})", R"("best_of": 3)"}) {
    EXPECT_THAT(Error(std::string(R"({"prompt": "x", )") + unsupported + "}"),
                ::testing::AnyOf(HasSubstr("not supported"), HasSubstr("only")))
        << unsupported;
  }
  // Their neutral values are accepted.
  EXPECT_TRUE(ParseCompletionRequest(R"({"prompt": "x", "logprobs": null, "echo": false,
      "presence_penalty": 0, "frequency_penalty": 0, "best_of": 1, "logit_bias": {}})").ok());
}

}  // namespace
}  // namespace moe

namespace moe {
namespace {

TEST(OpenAiChatRequestTest, ConversationAndFields) {
  auto r = ParseChatCompletionRequest(R"({"model": "m", "messages": [
      {"role": "system", "content": "S"}, {"role": "user", "content": [{"type": "text", "text": "U"}]}],
      "tools": [{"type": "function", "function": {"name": "f", "parameters": {"z": 1, "a": 2}}}],
      "chat_template_kwargs": {"enable_thinking": false}, "add_generation_prompt": true,
      "temperature": 0, "stream": true, "n": 2})");
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(r->conversation.has_value());
  EXPECT_EQ(r->conversation->messages.size(), 2u);
  // Key order is kept: a template's `tools | tojson` prints them as they came.
  EXPECT_EQ(r->conversation->tools.dump(), R"([{"type":"function","function":{"name":"f","parameters":{"z":1,"a":2}}}])");
  EXPECT_EQ(r->conversation->variables.dump(), R"({"enable_thinking":false})");
  EXPECT_TRUE(r->conversation->add_generation_prompt);
  ASSERT_EQ(r->prompts.size(), 1u);
  EXPECT_EQ(r->prompts[0].max_tokens(), 0);  // filled in from the context once encoded
  EXPECT_TRUE(r->stream);
  EXPECT_EQ(r->n, 2);
  EXPECT_EQ(ParseChatCompletionRequest(R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 5})")
                ->prompts[0].max_tokens(), 5);
}

TEST(OpenAiChatRequestTest, BadConversationsNameTheField) {
  for (const auto& [body, field] : std::vector<std::pair<std::string, std::string>>{
           {R"({"prompt": "x"})", "messages"},
           {R"({"messages": []})", "messages"},
           {R"({"messages": ["hi"]})", "messages[0]"},
           {R"({"messages": [{"content": "hi"}]})", "role"},
           {R"({"messages": [{"role": "user", "content": 5}]})", "messages[0].content"},
           {R"({"messages": [{"role": "user", "content": "x"}], "tools": {}})", "tools"},
           {R"({"messages": [{"role": "user", "content": "x"}], "chat_template_kwargs": []})", "chat_template_kwargs"},
           {R"({"messages": [{"role": "user", "content": "x"}], "add_generation_prompt": "yes"})", "add_generation_prompt"},
           {R"({"messages": [{"role": "user", "content": "x"}], "continue_final_message": true})", "continue_final_message"},
           {R"({"messages": [{"role": "user", "content": "x"}], "logprobs": 3})", "logprobs"},
           {R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})", "top_logprobs"},
           {R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 21})", "top_logprobs"},
           {R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0})", "max_tokens"}}) {
    auto r = ParseChatCompletionRequest(body);
    ASSERT_FALSE(r.ok()) << body;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << body;
    EXPECT_THAT(std::string(r.status().message()), ::testing::HasSubstr(field)) << body;
  }
}

}  // namespace
}  // namespace moe

namespace moe {
namespace {

TEST(OpenAiLogprobsRequestTest, CompletionCountAndChatBooleanMapToOneField) {
  EXPECT_FALSE(ParseCompletionRequest(R"({"prompt": "x"})")->prompts[0].has_logprobs());
  EXPECT_FALSE(ParseCompletionRequest(R"({"prompt": "x", "logprobs": null})")->prompts[0].has_logprobs());
  EXPECT_EQ(ParseCompletionRequest(R"({"prompt": "x", "logprobs": 0})")->prompts[0].logprobs(), 0);
  EXPECT_EQ(ParseCompletionRequest(R"({"prompt": "x", "logprobs": 5})")->prompts[0].logprobs(), 5);
  EXPECT_FALSE(ParseCompletionRequest(R"({"prompt": "x", "logprobs": 21})").ok());
  EXPECT_FALSE(ParseCompletionRequest(R"({"prompt": "x", "logprobs": true})").ok());
  EXPECT_FALSE(ParseCompletionRequest(R"({"prompt": "x", "top_logprobs": 2})").ok());
  const std::string chat = R"({"messages": [{"role": "user", "content": "x"}])";
  EXPECT_FALSE(ParseChatCompletionRequest(chat + "}")->prompts[0].has_logprobs());
  EXPECT_FALSE(ParseChatCompletionRequest(chat + R"(, "logprobs": false})")->prompts[0].has_logprobs());
  EXPECT_EQ(ParseChatCompletionRequest(chat + R"(, "logprobs": true})")->prompts[0].logprobs(), 0);
  EXPECT_EQ(ParseChatCompletionRequest(chat + R"(, "logprobs": true, "top_logprobs": 20})")->prompts[0].logprobs(), 20);
}

}  // namespace
}  // namespace moe

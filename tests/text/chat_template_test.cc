// The chat-template renderer against transformers: every case of tests/text/chat_template_goldens.json
// (made by make_chat_template_goldens.py with transformers' apply_chat_template and its Jinja
// environment) must render to the identical string, or fail where transformers failed.
#include <filesystem>
#include <fstream>
#include <sstream>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "text/chat_template.h"
#include "text/jinja/template.h"

namespace moe::text {
namespace {

using json = nlohmann::ordered_json;

const std::filesystem::path kDir = std::filesystem::path(MOE_SOURCE_DIR) / "tests" / "text";

std::string Read(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

const json& Goldens() {
  static const json goldens = json::parse(Read(kDir / "chat_template_goldens.json"));
  return goldens;
}

// The rendered string, or the error.
absl::StatusOr<std::string> Render(const json& c) {
  if (c.contains("source")) {
    auto t = jinja::Template::Parse(c.at("source").get<std::string>());
    if (!t.ok()) return t.status();
    return t->Render(jinja::Value::FromJson(c.at("variables")).as_dict());
  }
  const std::string source = Read(std::filesystem::path(MOE_SOURCE_DIR) / "tools" / "data" / "chat_templates" / c.at("template").get<std::string>());
  auto t = ChatTemplate::FromSource(source, c.at("special_tokens"), c.at("template").get<std::string>());
  if (!t.ok()) return t.status();
  Conversation conversation;
  conversation.messages = c.at("messages");
  conversation.tools = c.at("tools");
  conversation.add_generation_prompt = c.at("add_generation_prompt").get<bool>();
  conversation.variables = c.at("kwargs");
  return t->Render(conversation);
}

TEST(ChatTemplateTest, EveryGoldenCaseMatchesTransformers) {
  const json& cases = Goldens().at("cases");
  ASSERT_GT(cases.size(), 100u);
  int mismatches = 0, conversations = 0;
  for (const json& c : cases) {
    SCOPED_TRACE(c.at("name").get<std::string>());
    conversations += c.contains("template") ? 1 : 0;
    absl::StatusOr<std::string> got = Render(c);
    if (c.at("error").get<bool>()) {
      EXPECT_FALSE(got.ok()) << "transformers failed (" << c.value("oracle_error", "")
                             << ") but this rendered:\n" << got.value_or("");
      mismatches += got.ok();
      continue;
    }
    if (!got.ok()) {
      ADD_FAILURE() << got.status();
      ++mismatches;
      continue;
    }
    EXPECT_EQ(*got, c.at("expected").get<std::string>());
    mismatches += *got != c.at("expected").get<std::string>();
  }
  EXPECT_EQ(mismatches, 0);
  EXPECT_GE(conversations, 90);  // five published templates × the conversation set
}

TEST(ChatTemplateTest, ErrorsNameTheLine) {
  auto t = jinja::Template::Parse("line one\n{% if x %}\n{{ missing.attr }}\n{% endif %}");
  ASSERT_TRUE(t.ok()) << t.status();
  jinja::Dict vars;
  vars.Set("x", jinja::Value(true));
  auto r = t->Render(vars);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("line 3"), std::string::npos) << r.status();
  EXPECT_NE(r.status().message().find("'missing' is undefined"), std::string::npos) << r.status();

  auto bad = jinja::Template::Parse("{% for x in xs %}never closed");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("endfor"), std::string::npos) << bad.status();
  EXPECT_FALSE(jinja::Template::Parse("{% include 'other.jinja' %}").ok());
  EXPECT_FALSE(jinja::Template::Parse("{{ 'unterminated }}").ok());
}

TEST(ChatTemplateTest, RunawayTemplatesStop) {
  auto loop = jinja::Template::Parse("{% for i in range(1000000) %}{{ 'x' * 100 }}{% endfor %}");
  ASSERT_TRUE(loop.ok());
  auto r = loop->Render(jinja::Dict());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << r.status();

  auto silent = jinja::Template::Parse(
      "{% for i in range(1000000) %}{% for j in range(1000000) %}{% endfor %}{% endfor %}");
  ASSERT_TRUE(silent.ok());
  r = silent->Render(jinja::Dict());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << r.status();

  auto recursion = jinja::Template::Parse("{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}");
  ASSERT_TRUE(recursion.ok());
  EXPECT_FALSE(recursion->Render(jinja::Dict()).ok());
}

std::string Repeat(const std::string& s, int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out += s;
  return out;
}

// Nesting that would recurse without bound is an error, not a stack overflow: deep blocks,
// parentheses and unary operators when parsing; long operator and filter chains (a tree as deep
// as the chain is long) when rendering.
TEST(ChatTemplateTest, DeepNestingIsAnError) {
  for (const std::string& source : {"{{ " + Repeat("-", 5000) + "1 }}",
                                    "{{ " + Repeat("(", 5000) + "1" + Repeat(")", 5000) + " }}",
                                    "{{ " + Repeat("not ", 5000) + "true }}",
                                    "{{ " + Repeat("[", 5000) + Repeat("]", 5000) + " }}",
                                    Repeat("{% if true %}", 5000) + Repeat("{% endif %}", 5000)}) {
    auto t = jinja::Template::Parse(source);
    ASSERT_FALSE(t.ok()) << source.substr(0, 20);
    EXPECT_NE(t.status().message().find("nested more than"), std::string::npos) << t.status();
  }
  for (const std::string& source :
       {"{{ 1" + Repeat(" + 1", 5000) + " }}", "{{ 'x'" + Repeat(" | upper", 5000) + " }}",
        "{% macro m(n) %}{{ m(n + 1) if n < 60 else ('x'" + Repeat(" ~ 'x'", 300) +
            ") }}{% endmacro %}{{ m(0) }}"}) {
    auto t = jinja::Template::Parse(source);
    ASSERT_TRUE(t.ok()) << t.status();
    auto r = t->Render(jinja::Dict());
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << r.status();
  }
  // Well within the limits, the same forms render.
  auto t =
      jinja::Template::Parse("{{ " + Repeat("-", 20) + "1 }}{{ 1" + Repeat(" + 1", 100) + " }}");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->Render(jinja::Dict()).value_or("error"), "1101");
}

// Python's integers are unbounded, these are int64_t: a result past that range is an error naming
// the overflow (Python would print the big number), never a wrapped value or undefined behaviour.
TEST(ChatTemplateTest, IntegersPastSixtyFourBitsAreErrors) {
  for (const char* source :
       {"{{ (-9223372036854775807 - 1) // -1 }}", "{{ -(-9223372036854775807 - 1) }}",
        "{{ (-9223372036854775807 - 1) | abs }}", "{{ 2 ** 63 }}", "{{ 3 ** 40 }}",
        "{{ 9223372036854775807 + 1 }}", "{{ '1e300' | int }}", "{{ 1e300 | int }}",
        "{{ -1e19 | int }}", "{{ '%d' | format(1e300) }}"}) {
    auto t = jinja::Template::Parse(source);
    ASSERT_TRUE(t.ok()) << source << ": " << t.status();
    auto r = t->Render(jinja::Dict());
    ASSERT_FALSE(r.ok()) << source << " rendered " << *r;
    EXPECT_NE(r.status().message().find("integer overflow"), std::string::npos)
        << source << ": " << r.status();
  }
}

TEST(ChatTemplateTest, LoadsFromTokenizerConfigOrJinjaFile) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "moe_chat_template_test";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  auto load = [&] { return ChatTemplate::Load(dir.string()); };

  auto none = load();  // no files: no template, no error
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_FALSE(none->has_value());

  std::ofstream(dir / "tokenizer_config.json")
      << R"({"bos_token": {"content": "<s>"}, "chat_template": "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"})";
  auto from_config = load();
  ASSERT_TRUE(from_config.ok()) << from_config.status();
  ASSERT_TRUE(from_config->has_value());
  Conversation c;
  c.messages = json::parse(R"([{"role": "user", "content": "hi"}])");
  EXPECT_EQ((*from_config)->Render(c).value_or("error"), "<s>[user]hi");

  std::ofstream(dir / "chat_template.jinja") << "jinja file wins: {{ messages | length }}\n";
  auto from_file = load();
  ASSERT_TRUE(from_file.ok()) << from_file.status();
  EXPECT_EQ((*from_file)->Render(c).value_or("error"), "jinja file wins: 1");

  std::ofstream(dir / "chat_template.jinja") << "{% if %}";
  auto broken = load();
  ASSERT_FALSE(broken.ok());
  EXPECT_NE(broken.status().message().find("chat_template.jinja"), std::string::npos) << broken.status();

  std::filesystem::remove(dir / "chat_template.jinja");
  std::ofstream(dir / "tokenizer_config.json") << R"({"chat_template": [{"name": "tool_use", "template": "t"}, {"name": "default", "template": "d"}]})";
  auto named = load();
  ASSERT_TRUE(named.ok()) << named.status();
  EXPECT_EQ((*named)->Render(c).value_or("error"), "d");
  std::filesystem::remove_all(dir);
}

TEST(ChatTemplateTest, BadConversationsAreErrors) {
  auto t = ChatTemplate::FromSource("{{ messages[0].content }}", json::object());
  ASSERT_TRUE(t.ok());
  Conversation c;
  EXPECT_FALSE(t->Render(c).ok());  // empty, as transformers refuses it
  c.messages = json::parse(R"(["not an object"])");
  auto r = t->Render(c);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("messages[0]"), std::string::npos) << r.status();
}

}  // namespace
}  // namespace moe::text

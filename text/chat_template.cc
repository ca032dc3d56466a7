#include "text/chat_template.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace moe::text {
namespace {

using json = nlohmann::ordered_json;

// The named special tokens transformers passes to every template (its SPECIAL_TOKENS_ATTRIBUTES).
constexpr const char* kSpecialTokenNames[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                              "pad_token", "cls_token", "mask_token"};

// Reasoning fields, in the order transformers looks them up.
constexpr const char* kReasoningFields[] = {"reasoning_content", "thinking", "reasoning"};

absl::StatusOr<std::string> ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path.string(), ": cannot be read"));
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// A message as the template sees it (transformers' _normalize_chat_messages and
// _alias_reasoning_fields).
jinja::Value TemplateMessage(const json& message) {
  json m = json::object();
  for (const auto& [k, v] : message.items()) {
    if (!v.is_null()) m[k] = v;
  }
  const json* reasoning = nullptr;
  for (const char* field : kReasoningFields) {
    if (m.contains(field)) {
      reasoning = &m.at(field);
      break;
    }
  }
  if (reasoning != nullptr) {
    const json r = *reasoning;
    json aliased = json::object();
    aliased["thinking"] = r;
    for (const auto& [k, v] : m.items()) aliased[k] = v;
    aliased["reasoning_content"] = r;
    m = std::move(aliased);
  }
  return jinja::Value::FromJson(m);
}

}  // namespace

absl::StatusOr<Conversation> Conversation::FromRequest(const json& body) {
  auto given = [&](const char* key) { return body.contains(key) && !body.at(key).is_null(); };
  if (!body.is_object()) return absl::InvalidArgumentError("the body is not a JSON object");
  if (!given("messages") || !body.at("messages").is_array() || body.at("messages").empty()) {
    return absl::InvalidArgumentError("messages: expected a non-empty list of messages");
  }
  Conversation c;
  c.messages = body.at("messages");
  for (size_t i = 0; i < c.messages.size(); ++i) {
    const json& m = c.messages[i];
    if (!m.is_object() || !m.contains("role") || !m.at("role").is_string()) {
      return absl::InvalidArgumentError(absl::StrCat("messages[", i, "]: expected an object with a string \"role\""));
    }
    if (m.contains("content") && !m.at("content").is_null() && !m.at("content").is_string() &&
        !m.at("content").is_array()) {
      return absl::InvalidArgumentError(absl::StrCat("messages[", i, "].content: expected a string or a list of parts"));
    }
  }
  if (given("tools")) {
    if (!body.at("tools").is_array()) return absl::InvalidArgumentError("tools: expected a list");
    if (!body.at("tools").empty()) c.tools = body.at("tools");
  }
  if (given("add_generation_prompt")) {
    if (!body.at("add_generation_prompt").is_boolean()) {
      return absl::InvalidArgumentError("add_generation_prompt: expected a boolean");
    }
    c.add_generation_prompt = body.at("add_generation_prompt").get<bool>();
  }
  if (given("chat_template_kwargs")) {
    if (!body.at("chat_template_kwargs").is_object()) {
      return absl::InvalidArgumentError("chat_template_kwargs: expected an object");
    }
    c.variables = body.at("chat_template_kwargs");
  }
  if (given("continue_final_message") && body.at("continue_final_message") != false) {
    return absl::InvalidArgumentError("continue_final_message: not supported");
  }
  return c;
}

absl::StatusOr<ChatTemplate> ChatTemplate::FromSource(const std::string& source, const json& special_tokens,
                                                      std::string origin) {
  auto parsed = jinja::Template::Parse(source);
  if (!parsed.ok()) return absl::InvalidArgumentError(absl::StrCat(origin, ": ", parsed.status().message()));
  jinja::Dict special;
  for (const char* name : kSpecialTokenNames) {
    if (!special_tokens.is_object() || !special_tokens.contains(name)) continue;
    const json& t = special_tokens.at(name);
    if (t.is_string()) {
      special.Set(name, jinja::Value(t.get<std::string>()));
    } else if (t.is_object() && t.contains("content") && t.at("content").is_string()) {
      special.Set(name, jinja::Value(t.at("content").get<std::string>()));
    }
  }
  return ChatTemplate(*std::move(parsed), std::move(special), std::move(origin));
}

absl::StatusOr<std::optional<ChatTemplate>> ChatTemplate::Load(const std::string& dir) {
  const std::filesystem::path config_path = std::filesystem::path(dir) / "tokenizer_config.json";
  const std::filesystem::path jinja_path = std::filesystem::path(dir) / "chat_template.jinja";
  json config = json::object();
  if (std::filesystem::exists(config_path)) {
    MOE_ASSIGN_OR_RETURN(std::string text, ReadFile(config_path));
    config = json::parse(text, nullptr, false);
    if (config.is_discarded() || !config.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(config_path.string(), ": not a JSON object"));
    }
  }
  if (std::filesystem::exists(jinja_path)) {
    MOE_ASSIGN_OR_RETURN(std::string source, ReadFile(jinja_path));
    MOE_ASSIGN_OR_RETURN(ChatTemplate t, FromSource(source, config, jinja_path.string()));
    return std::optional<ChatTemplate>(std::move(t));
  }
  if (!config.contains("chat_template") || config.at("chat_template").is_null()) return std::nullopt;
  const json& ct = config.at("chat_template");
  const std::string origin = absl::StrCat(config_path.string(), ": chat_template");
  if (ct.is_string()) {
    MOE_ASSIGN_OR_RETURN(ChatTemplate t, FromSource(ct.get<std::string>(), config, origin));
    return std::optional<ChatTemplate>(std::move(t));
  }
  if (ct.is_array()) {
    for (const json& entry : ct) {
      if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") &&
          entry.at("template").is_string()) {
        MOE_ASSIGN_OR_RETURN(ChatTemplate t, FromSource(entry.at("template").get<std::string>(), config,
                                                        origin + "[default]"));
        return std::optional<ChatTemplate>(std::move(t));
      }
    }
    return absl::InvalidArgumentError(absl::StrCat(origin, ": a list of templates without one named \"default\""));
  }
  return absl::InvalidArgumentError(absl::StrCat(origin, ": expected a string or a list of named templates"));
}

absl::StatusOr<std::string> ChatTemplate::Render(const Conversation& c) const {
  if (!c.messages.is_array()) return absl::InvalidArgumentError("messages: expected a list");
  if (c.messages.empty()) return absl::InvalidArgumentError("messages: the conversation is empty");
  jinja::List messages;
  for (size_t i = 0; i < c.messages.size(); ++i) {
    if (!c.messages[i].is_object()) {
      return absl::InvalidArgumentError(absl::StrCat("messages[", i, "]: expected an object"));
    }
    messages.push_back(TemplateMessage(c.messages[i]));
  }
  jinja::Dict variables = special_;
  if (c.variables.is_object()) {
    for (const auto& [k, v] : c.variables.items()) variables.Set(k, jinja::Value::FromJson(v));
  }
  variables.Set("messages", jinja::Value(std::move(messages)));
  variables.Set("tools", c.tools.is_null() ? jinja::Value::None() : jinja::Value::FromJson(c.tools));
  variables.Set("documents", jinja::Value::None());
  variables.Set("add_generation_prompt", jinja::Value(c.add_generation_prompt));
  auto rendered = template_.Render(variables);
  if (!rendered.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(origin_, ": ", rendered.status().message()));
  }
  return rendered;
}

}  // namespace moe::text

#include "coordinator/openai_request.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "coordinator/validation.h"
#include "nlohmann/json.hpp"

namespace moe {
namespace {

// Ordered: the messages and tools of a chat request reach its template in the order they came.
using json = nlohmann::ordered_json;

// A field of the body, type-checked: INVALID_ARGUMENT naming it otherwise.
absl::Status Expect(const json& body, const char* key, bool ok, const char* what) {
  if (!body.contains(key) || body.at(key).is_null() || ok) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(key, ": expected ", what));
}

bool Has(const json& body, const char* key) { return body.contains(key) && !body.at(key).is_null(); }

// The prompts of a completion request: a string, a list of strings, a list of token ids, or a
// list of lists of token ids.
absl::StatusOr<std::vector<moe::v1::GenerateRequest>> Prompts(const json& body) {
  if (!Has(body, "prompt")) return absl::InvalidArgumentError("prompt: required");
  const json& p = body.at("prompt");
  std::vector<moe::v1::GenerateRequest> out;
  auto ids = [](const json& list, moe::v1::GenerateRequest* r) {
    for (const json& id : list) {
      if (!id.is_number_integer()) return false;
      r->add_prompt_ids(id.get<int32_t>());
    }
    return true;
  };
  if (p.is_string()) {
    out.emplace_back().set_prompt(p.get<std::string>());
  } else if (p.is_array() && !p.empty() && p[0].is_number_integer()) {
    if (!ids(p, &out.emplace_back())) {
      return absl::InvalidArgumentError("prompt: a list of token ids holds a non-integer");
    }
  } else if (p.is_array() && !p.empty()) {
    for (const json& item : p) {
      if (item.is_string()) {
        out.emplace_back().set_prompt(item.get<std::string>());
      } else if (item.is_array() && ids(item, &out.emplace_back())) {
      } else {
        return absl::InvalidArgumentError(
            "prompt: expected a string, a list of strings or a list of token-id lists");
      }
    }
  } else {
    return absl::InvalidArgumentError("prompt: expected a non-empty string or list");
  }
  if (out.size() > 64) return absl::InvalidArgumentError("prompt: at most 64 prompts at once");
  return out;
}

// The sampling and stopping fields every choice shares; max_tokens is `default_max_tokens` when
// the body does not set it.
absl::Status Common(const json& body, bool chat, int64_t default_max_tokens,
                    moe::v1::GenerateRequest* r) {
  // What this server cannot do yet is refused, not ignored.
  auto set = [&](const char* key) {
    if (!Has(body, key)) return false;
    const json& v = body.at(key);
    return !(v == false || v == 0 || (v.is_string() && v.get<std::string>().empty()));
  };
  for (const char* key : {"suffix", "echo"}) {
    if (set(key)) return absl::InvalidArgumentError(absl::StrCat(key, ": not supported yet"));
  }
  // Log-probabilities: a completion's `logprobs` is the number of alternatives; a chat's is a
  // boolean with the number in `top_logprobs`.
  const std::string range = absl::StrCat("an integer in [0, ", kMaxTopLogprobs, "]");
  auto count = [&](const char* key) -> absl::StatusOr<int32_t> {
    const json& v = body.at(key);
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > kMaxTopLogprobs) {
      return absl::InvalidArgumentError(absl::StrCat(key, ": expected ", range));
    }
    return v.get<int32_t>();
  };
  if (!chat && Has(body, "logprobs")) {
    auto k = count("logprobs");
    if (!k.ok()) return k.status();
    r->set_logprobs(*k);
  }
  if (!chat && Has(body, "top_logprobs")) {
    return absl::InvalidArgumentError("top_logprobs: a chat field; completions take logprobs: N");
  }
  if (chat && Has(body, "logprobs")) {
    if (!body.at("logprobs").is_boolean()) return absl::InvalidArgumentError("logprobs: expected a boolean");
    if (body.at("logprobs").get<bool>()) r->set_logprobs(0);
  }
  if (chat && Has(body, "top_logprobs")) {
    auto k = count("top_logprobs");
    if (!k.ok()) return k.status();
    if (!r->has_logprobs() && *k > 0) {
      return absl::InvalidArgumentError("top_logprobs: needs \"logprobs\": true");
    }
    if (r->has_logprobs()) r->set_logprobs(*k);
  }
  if (Has(body, "best_of") && body.at("best_of") != 1) {
    return absl::InvalidArgumentError("best_of: only 1 is supported");
  }
  for (const char* penalty : {"presence_penalty", "frequency_penalty"}) {
    if (Has(body, penalty) && (!body.at(penalty).is_number() || body.at(penalty).get<double>() != 0)) {
      return absl::InvalidArgumentError(absl::StrCat(penalty, ": only 0 is supported"));
    }
  }
  if (Has(body, "logit_bias") && !body.at("logit_bias").empty()) {
    return absl::InvalidArgumentError("logit_bias: not supported");
  }
  const json& b = body;
  for (auto s : {Expect(b, "max_tokens", b.value("max_tokens", json()).is_number_integer(), "an integer"),
                 Expect(b, "max_completion_tokens",
                        b.value("max_completion_tokens", json()).is_number_integer(), "an integer"),
                 Expect(b, "temperature", b.value("temperature", json()).is_number(), "a number"),
                 Expect(b, "top_p", b.value("top_p", json()).is_number(), "a number"),
                 Expect(b, "top_k", b.value("top_k", json()).is_number_integer(), "an integer"),
                 Expect(b, "seed", b.value("seed", json()).is_number_integer(), "an integer"),
                 Expect(b, "ignore_eos", b.value("ignore_eos", json()).is_boolean(), "a boolean"),
                 Expect(b, "skip_special_tokens", b.value("skip_special_tokens", json()).is_boolean(),
                        "a boolean")}) {
    if (!s.ok()) return s;
  }
  int64_t max_tokens = default_max_tokens;
  const bool given = Has(b, "max_tokens") || Has(b, "max_completion_tokens");
  if (Has(b, "max_tokens")) max_tokens = b.at("max_tokens").get<int64_t>();
  if (Has(b, "max_completion_tokens")) max_tokens = b.at("max_completion_tokens").get<int64_t>();
  if (given && (max_tokens < 1 || max_tokens > (1 << 30))) {
    return absl::InvalidArgumentError("max_tokens: must be at least 1");
  }
  r->set_max_tokens(static_cast<int32_t>(max_tokens));
  moe::v1::SamplingParams* sp = r->mutable_sampling();
  if (Has(b, "temperature")) sp->set_temperature(b.at("temperature").get<float>());
  if (Has(b, "top_p")) sp->set_top_p(b.at("top_p").get<float>());
  if (Has(b, "top_k")) sp->set_top_k(std::max<int32_t>(0, b.at("top_k").get<int32_t>()));
  if (Has(b, "seed")) sp->set_seed(b.at("seed").get<uint64_t>());
  if (Has(b, "ignore_eos")) r->set_ignore_eos(b.at("ignore_eos").get<bool>());
  if (Has(b, "skip_special_tokens")) r->set_skip_special_tokens(b.at("skip_special_tokens").get<bool>());
  if (Has(b, "stop")) {
    const json& stop = b.at("stop");
    if (stop.is_string()) {
      r->add_stop(stop.get<std::string>());
    } else if (stop.is_array()) {
      for (const json& s : stop) {
        if (!s.is_string()) return absl::InvalidArgumentError("stop: expected strings");
        r->add_stop(s.get<std::string>());
      }
    } else {
      return absl::InvalidArgumentError("stop: expected a string or a list of strings");
    }
  }
  if (Has(b, "stop_token_ids")) {
    for (const json& id : b.at("stop_token_ids")) {
      if (!id.is_number_integer()) return absl::InvalidArgumentError("stop_token_ids: expected integers");
      r->add_stop_token_ids(id.get<int32_t>());
    }
  }
  return absl::OkStatus();
}

// The fields /v1/completions and /v1/chat/completions share: model, n, stream, stream_options.
absl::Status Envelope(const json& body, CompletionRequest* out) {
  if (Has(body, "model")) {
    if (!body.at("model").is_string()) return absl::InvalidArgumentError("model: expected a string");
    out->model = body.at("model").get<std::string>();
  }
  if (Has(body, "n")) {
    if (!body.at("n").is_number_integer()) return absl::InvalidArgumentError("n: expected an integer in [1, 16]");
    out->n = body.at("n").get<int64_t>();
  }
  if (out->n < 1 || out->n > 16) return absl::InvalidArgumentError("n: expected an integer in [1, 16]");
  if (Has(body, "stream")) {
    if (!body.at("stream").is_boolean()) return absl::InvalidArgumentError("stream: expected a boolean");
    out->stream = body.at("stream").get<bool>();
  }
  if (Has(body, "stream_options")) {
    const json& o = body.at("stream_options");
    if (!o.is_object() || (o.contains("include_usage") && !o.at("include_usage").is_boolean())) {
      return absl::InvalidArgumentError("stream_options: expected {\"include_usage\": bool}");
    }
    out->include_usage = out->stream && o.value("include_usage", false);
  }
  return absl::OkStatus();
}

absl::StatusOr<json> Body(std::string_view text) {
  json body = json::parse(text, nullptr, false);
  if (body.is_discarded() || !body.is_object()) {
    return absl::InvalidArgumentError("the body is not a JSON object");
  }
  return body;
}

}  // namespace

absl::StatusOr<CompletionRequest> ParseCompletionRequest(std::string_view text) {
  auto body = Body(text);
  if (!body.ok()) return body.status();
  CompletionRequest out;
  auto prompts = Prompts(*body);
  if (!prompts.ok()) return prompts.status();
  moe::v1::GenerateRequest common;
  // 16 is OpenAI's default max_tokens for completions.
  if (absl::Status s = Common(*body, /*chat=*/false, /*default_max_tokens=*/16, &common); !s.ok()) return s;
  for (const moe::v1::GenerateRequest& p : *prompts) {
    moe::v1::GenerateRequest r = common;
    r.set_prompt(p.prompt());
    r.mutable_prompt_ids()->CopyFrom(p.prompt_ids());
    out.prompts.push_back(std::move(r));
  }
  if (absl::Status s = Envelope(*body, &out); !s.ok()) return s;
  return out;
}

absl::StatusOr<CompletionRequest> ParseChatCompletionRequest(std::string_view text) {
  auto body = Body(text);
  if (!body.ok()) return body.status();
  CompletionRequest out;
  auto conversation = text::Conversation::FromRequest(*body);
  if (!conversation.ok()) return conversation.status();
  out.conversation = *std::move(conversation);
  moe::v1::GenerateRequest common;
  if (absl::Status s = Common(*body, /*chat=*/true, /*default_max_tokens=*/0, &common); !s.ok()) return s;
  out.prompts.push_back(std::move(common));
  if (absl::Status s = Envelope(*body, &out); !s.ok()) return s;
  return out;
}

}  // namespace moe

#include "coordinator/openai_api.h"

#include <httplib.h>

#include <algorithm>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "coordinator/generation.h"
#include "coordinator/openai_request.h"
#include "text/utf8.h"
#include "nlohmann/json.hpp"

namespace moe {
namespace {

using nlohmann::json;

// How often a waiting handler checks whether its client is still there.
constexpr absl::Duration kPoll = absl::Milliseconds(50);

int HttpStatus(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      return 400;
    case absl::StatusCode::kUnauthenticated: return 401;
    case absl::StatusCode::kPermissionDenied: return 403;
    case absl::StatusCode::kNotFound: return 404;
    case absl::StatusCode::kResourceExhausted: return 429;
    case absl::StatusCode::kUnimplemented: return 501;
    case absl::StatusCode::kUnavailable: return 503;
    case absl::StatusCode::kCancelled: return 499;
    default: return 500;
  }
}

json ErrorJson(int status, const std::string& message, const std::string& param = "",
               const std::string& code = "") {
  json e = {{"message", message},
            {"type", status >= 500 ? "server_error" : "invalid_request_error"},
            {"param", param.empty() ? json() : json(param)},
            {"code", code.empty() ? json() : json(code)}};
  return {{"error", e}};
}

void SendError(httplib::Response& res, int status, const std::string& message,
               const std::string& param = "", const std::string& code = "") {
  res.status = status;
  res.set_content(ErrorJson(status, message, param, code).dump(), "application/json");
}

void SendStatus(httplib::Response& res, const absl::Status& s) {
  SendError(res, HttpStatus(s.code()), std::string(s.message()));
}

std::string FinishReasonName(moe::v1::FinishReason r) {
  return r == moe::v1::FINISH_REASON_STOP ? "stop" : "length";
}

std::string RandomId(const char* prefix) {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  std::lock_guard<std::mutex> lock(mu);
  return absl::StrFormat("%s-%016x%08x", prefix, rng(), static_cast<uint32_t>(rng()));
}

// The running choices of one completion or chat completion request.
struct Choices {
  std::string id, model;
  int64_t created = 0;
  int64_t n = 1;  // choices per prompt (gens[p * n + j])
  bool chat = false;
  bool stream = false;
  std::vector<std::unique_ptr<Generation>> gens;
  // Per choice, for the non-streaming answer: its text, tokens and their log-probabilities.
  std::vector<std::string> text;
  std::vector<std::vector<int32_t>> tokens;
  std::vector<std::vector<moe::v1::TokenLogprobs>> logprobs;
  bool want_logprobs = false;
  const text::Tokenizer* tokenizer = nullptr;  // spells the logprobs' tokens (null: "token_id:N")
  std::vector<int64_t> text_offset;            // per choice: where its next token's text starts

  // A token as the logprobs spell it: its text (U+FFFD for bytes that are not whole characters,
  // as vLLM shows them) and its bytes.
  std::string TokenText(int32_t id, std::string* bytes = nullptr) const {
    if (tokenizer != nullptr) {
      if (auto b = tokenizer->TokenBytes(id); b.ok()) {
        if (bytes != nullptr) bytes->assign(b->data(), b->size());
        return text::LossyUtf8(*b);
      }
    }
    const std::string s = absl::StrCat("token_id:", id);
    if (bytes != nullptr) *bytes = s;
    return s;
  }
  json ChatEntry(int32_t id, float logprob) const {
    std::string bytes;
    const std::string token = TokenText(id, &bytes);
    std::vector<int> values;
    for (char c : bytes) values.push_back(static_cast<unsigned char>(c));
    return {{"token", token}, {"logprob", logprob}, {"bytes", values}};
  }
  // The `logprobs` of choice i for these tokens: OpenAI's chat form ({"content": [...]}) or its
  // completions form (tokens, token_logprobs, top_logprobs, text_offset); null when not asked.
  json Logprobs(size_t i, const std::vector<int32_t>& ids, const std::vector<moe::v1::TokenLogprobs>& lps) {
    if (!want_logprobs) return nullptr;
    const size_t n_tokens = std::min(ids.size(), lps.size());
    if (chat) {
      json content = json::array();
      for (size_t k = 0; k < n_tokens; ++k) {
        json e = ChatEntry(ids[k], lps[k].logprob());
        e["top_logprobs"] = json::array();
        for (int j = 0; j < lps[k].top_ids_size(); ++j) {
          e["top_logprobs"].push_back(ChatEntry(lps[k].top_ids(j), lps[k].top_logprobs(j)));
        }
        content.push_back(std::move(e));
      }
      return {{"content", content}};
    }
    json out = {{"tokens", json::array()}, {"token_logprobs", json::array()},
                {"top_logprobs", json::array()}, {"text_offset", json::array()}};
    for (size_t k = 0; k < n_tokens; ++k) {
      const std::string token = TokenText(ids[k]);
      out["tokens"].push_back(token);
      out["token_logprobs"].push_back(lps[k].logprob());
      json top = json::object();  // the alternatives and, as vLLM adds it, the chosen token
      for (int j = 0; j < lps[k].top_ids_size(); ++j) top[TokenText(lps[k].top_ids(j))] = lps[k].top_logprobs(j);
      if (!top.contains(token)) top[token] = lps[k].logprob();
      out["top_logprobs"].push_back(std::move(top));
      out["text_offset"].push_back(text_offset[i]);
      text_offset[i] += static_cast<int64_t>(std::count_if(token.begin(), token.end(), [](char c) {
        return (static_cast<unsigned char>(c) & 0xC0) != 0x80;  // characters, not bytes
      }));
    }
    return out;
  }

  // The fields every answer and every streamed event share.
  json Envelope() const {
    const char* object = !chat ? "text_completion" : stream ? "chat.completion.chunk" : "chat.completion";
    return {{"id", id}, {"object", object}, {"created", created}, {"model", model}};
  }
  // One choice of an answer or event: `text` is the whole answer, or what is new in an event
  // (a chat stream's first event per choice carries the role; `role_only` makes that one).
  json Choice(size_t i, const std::string& text, const json& finish_reason, bool role_only = false,
              json logprobs = nullptr) const {
    json c = {{"index", i}};
    if (!chat) {
      c["text"] = text;
    } else if (!stream) {
      c["message"] = {{"role", "assistant"}, {"content", text}};
    } else if (role_only) {
      c["delta"] = {{"role", "assistant"}, {"content", ""}};
    } else {
      c["delta"] = text.empty() ? json::object() : json({{"content", text}});
    }
    c["logprobs"] = std::move(logprobs);
    c["finish_reason"] = finish_reason;
    return c;
  }

  json Usage() const {
    int64_t prompt = 0, completion = 0;
    for (size_t i = 0; i < gens.size(); ++i) {
      if (i % n == 0) prompt += gens[i]->prompt_tokens();  // once per prompt, as OpenAI counts
      completion += gens[i]->completion_tokens();
    }
    return {{"prompt_tokens", prompt}, {"completion_tokens", completion},
            {"total_tokens", prompt + completion}};
  }
  void CancelAll() {
    for (auto& g : gens) g->Cancel();
  }
  // Polls every unfinished choice once; calls on_chunk(choice, chunk, ended). False when all ended.
  template <typename Fn>
  bool Poll(Fn on_chunk) {
    bool any_running = false;
    const absl::Duration wait = gens.size() == 1 ? kPoll : absl::Milliseconds(5);
    for (size_t i = 0; i < gens.size(); ++i) {
      if (gens[i]->ended()) continue;
      Generation::Chunk chunk;
      const bool ended = gens[i]->Next(wait, &chunk);
      on_chunk(i, chunk, ended);
      any_running = any_running || !ended;
    }
    return any_running;
  }
};

}  // namespace

OpenAiApi::OpenAiApi(const ServingContext& ctx, std::string model_name)
    : ctx_(ctx), model_name_(std::move(model_name)) {}

void OpenAiApi::Register(httplib::Server* server) {
  // Routes and bodies gRPC would have refused, in OpenAI's error form.
  server->set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    if (res.status == 413) {
      SendError(res, 413, "the request body is larger than this server accepts (--max-request-bytes)");
    } else if (res.status == 404) {
      SendError(res, 404, absl::StrCat("no route ", req.method, " ", req.path));
    } else {
      SendError(res, res.status, absl::StrCat("HTTP ", res.status));
    }
  });
  // API keys (as gRPC's): Authorization: Bearer KEY, except for /health.
  server->set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (req.path == "/health" || !ctx_.api_keys->enabled()) return httplib::Server::HandlerResponse::Unhandled;
    const std::string header = req.get_header_value("Authorization");
    if (ctx_.api_keys->Allows(absl::string_view(header.data(), header.size()))) {
      return httplib::Server::HandlerResponse::Unhandled;
    }
    SendError(res, 401,
              header.empty() ? "this server needs an API key: send Authorization: Bearer KEY"
                             : "the API key is not valid",
              "", "invalid_api_key");
    return httplib::Server::HandlerResponse::Handled;
  });

  server->Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    if (std::string why; !Serving(ctx_, &why)) {
      SendError(res, 503, absl::StrCat("not serving: ", why));
      return;
    }
    res.status = 200;
  });

  server->Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    json model = {{"id", model_name_},
                  {"object", "model"},
                  {"created", absl::ToUnixSeconds(absl::Now())},
                  {"owned_by", "moe-serve"},
                  {"max_model_len", ctx_.config->max_position_embeddings}};
    res.set_content(json({{"object", "list"}, {"data", json::array({model})}}).dump(),
                    "application/json");
  });

  server->Post("/tokenize", [this](const httplib::Request& req, httplib::Response& res) {
    json body = json::parse(req.body, nullptr, false);
    if (body.is_discarded() || !body.is_object()) return SendError(res, 400, "the body is not a JSON object");
    if (!body.contains("prompt") || !body.at("prompt").is_string()) {
      return SendError(res, 400, "prompt: expected a string", "prompt");
    }
    if (ctx_.text->tokenizer == nullptr) return SendError(res, 400, ctx_.text->tokenizer_status);
    const bool add_special = body.value("add_special_tokens", true);
    const std::vector<int32_t> ids =
        ctx_.text->tokenizer->Encode(body.at("prompt").get<std::string>(), add_special);
    res.set_content(json({{"count", ids.size()},
                          {"max_model_len", ctx_.config->max_position_embeddings},
                          {"tokens", ids}})
                        .dump(),
                    "application/json");
  });

  server->Post("/detokenize", [this](const httplib::Request& req, httplib::Response& res) {
    json body = json::parse(req.body, nullptr, false);
    if (body.is_discarded() || !body.is_object()) return SendError(res, 400, "the body is not a JSON object");
    if (ctx_.text->tokenizer == nullptr) return SendError(res, 400, ctx_.text->tokenizer_status);
    std::vector<int32_t> ids;
    if (!body.contains("tokens") || !body.at("tokens").is_array()) {
      return SendError(res, 400, "tokens: expected a list of token ids", "tokens");
    }
    for (const json& id : body.at("tokens")) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 ||
          id.get<int64_t>() >= ctx_.config->vocab_size) {
        return SendError(res, 400,
                         absl::StrCat("tokens: ", id.dump(), " is not a token id of the model"),
                         "tokens");
      }
      ids.push_back(id.get<int32_t>());
    }
    auto text = ctx_.text->tokenizer->Decode(ids, body.value("skip_special_tokens", false));
    if (!text.ok()) return SendStatus(res, text.status());
    res.set_content(json({{"prompt", *text}}).dump(-1, ' ', false, json::error_handler_t::replace),
                    "application/json");
  });

  server->Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    Complete(ParseCompletionRequest(req.body), res);
  });
  server->Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
    Complete(ParseChatCompletionRequest(req.body), res);
  });
}

void OpenAiApi::Complete(absl::StatusOr<CompletionRequest> parsed, httplib::Response& res) const {
  if (!parsed.ok()) return SendStatus(res, parsed.status());
  if (parsed->model && *parsed->model != model_name_) {
    return SendError(res, 404,
                     absl::StrCat("The model `", *parsed->model,
                                  "` does not exist; this server serves `", model_name_, "`"),
                     "model", "model_not_found");
  }
  const int64_t n = parsed->n;
  const bool stream = parsed->stream, include_usage = parsed->include_usage;
  auto choices = std::make_shared<Choices>();
  choices->id = RandomId(parsed->conversation ? "chatcmpl" : "cmpl");
  choices->model = model_name_;
  choices->created = absl::ToUnixSeconds(absl::Now());
  choices->n = n;
  choices->chat = parsed->conversation.has_value();
  choices->stream = stream;
  choices->want_logprobs = !parsed->prompts.empty() && parsed->prompts[0].has_logprobs();
  choices->tokenizer = ctx_.text->tokenizer.get();
  for (moe::v1::GenerateRequest& prompt : parsed->prompts) {
    if (parsed->conversation) {
      if (absl::Status s = ctx_.text->EncodeConversation(*parsed->conversation, &prompt); !s.ok()) {
        return SendStatus(res, s);
      }
      if (prompt.max_tokens() == 0) prompt.set_max_tokens(DefaultMaxTokens(prompt.prompt_ids_size()));
    }
    for (int64_t j = 0; j < n; ++j) {
      moe::v1::GenerateRequest r = prompt;
      // Each choice samples differently; a seeded request stays reproducible.
      if (r.sampling().has_seed()) r.mutable_sampling()->set_seed(prompt.sampling().seed() + j);
      auto gen = Generation::Start(ctx_, r);
      if (!gen.ok()) {
        choices->CancelAll();
        return SendStatus(res, gen.status());
      }
      choices->gens.push_back(std::move(*gen));
    }
  }
  choices->text.assign(choices->gens.size(), "");
  choices->tokens.resize(choices->gens.size());
  choices->logprobs.resize(choices->gens.size());
  choices->text_offset.assign(choices->gens.size(), 0);

  if (!stream) {
    absl::Status failure;
    while (choices->Poll([&](size_t i, const Generation::Chunk& chunk, bool ended) {
      choices->text[i] += chunk.text;
      choices->tokens[i].insert(choices->tokens[i].end(), chunk.tokens.begin(), chunk.tokens.end());
      choices->logprobs[i].insert(choices->logprobs[i].end(), chunk.logprobs.begin(), chunk.logprobs.end());
      if (ended && !choices->gens[i]->status().ok() && failure.ok()) {
        failure = choices->gens[i]->status();
      }
    })) {
    }
    if (!failure.ok()) return SendStatus(res, failure);
    json out = choices->Envelope();
    out["choices"] = json::array();
    for (size_t i = 0; i < choices->gens.size(); ++i) {
      out["choices"].push_back(choices->Choice(
          i, choices->text[i], FinishReasonName(choices->gens[i]->finish_reason()), false,
          choices->Logprobs(i, choices->tokens[i], choices->logprobs[i])));
    }
    out["usage"] = choices->Usage();
    res.set_content(out.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
    return;
  }

  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [choices, include_usage](size_t, httplib::DataSink& sink) {
        auto send = [&](const json& j) {
          const std::string event =
              "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
          return sink.write(event.data(), event.size());
        };
        bool client_gone = false;
        for (size_t i = 0; choices->chat && i < choices->gens.size() && !client_gone; ++i) {
          json c = choices->Envelope();
          c["choices"] = json::array({choices->Choice(i, "", json(), /*role_only=*/true)});
          if (include_usage) c["usage"] = nullptr;
          client_gone = !send(c);
        }
        while (!client_gone && choices->Poll([&](size_t i, const Generation::Chunk& chunk, bool ended) {
          if (client_gone) return;
          const Generation& g = *choices->gens[i];
          if (ended && !g.status().ok()) {
            const int status = HttpStatus(g.status().code());
            client_gone = !send(ErrorJson(status, std::string(g.status().message())));
            return;
          }
          if (!chunk.text.empty() || ended || !chunk.logprobs.empty()) {
            json c = choices->Envelope();
            c["choices"] = json::array({choices->Choice(
                i, chunk.text, ended ? json(FinishReasonName(g.finish_reason())) : json(), false,
                choices->Logprobs(i, chunk.tokens, chunk.logprobs))});
            if (include_usage) c["usage"] = nullptr;
            client_gone = !send(c);
          }
        })) {
          if (!client_gone && sink.is_writable && !sink.is_writable()) client_gone = true;
        }
        if (client_gone) {
          choices->CancelAll();
          return false;
        }
        if (include_usage) {
          json u = choices->Envelope();
          u["choices"] = json::array();
          u["usage"] = choices->Usage();
          send(u);
        }
        const std::string done = "data: [DONE]\n\n";
        sink.write(done.data(), done.size());
        sink.done();
        return true;
      },
      [choices](bool) { choices->CancelAll(); });
}

int32_t OpenAiApi::DefaultMaxTokens(int prompt_tokens) const {
  // What is left of the context (and of a DP group's KV cache), as vLLM defaults a chat's max_tokens.
  int64_t room = std::min<int64_t>(ctx_.config->max_position_embeddings, ctx_.limits.max_sequence_tokens) -
                 prompt_tokens;
  if (ctx_.limits.max_new_tokens > 0) room = std::min(room, ctx_.limits.max_new_tokens);
  return static_cast<int32_t>(std::clamp<int64_t>(room, 1, 1 << 30));
}

}  // namespace moe

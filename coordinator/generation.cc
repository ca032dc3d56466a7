#include "coordinator/generation.h"

#include <mutex>
#include <random>

#include "absl/strings/str_cat.h"
#include "coordinator/validation.h"

namespace moe {
namespace {

// A fresh seed for a request that sets none.
uint64_t RandomSeed() {
  static std::mutex mu;
  static std::mt19937_64 seeds{std::random_device{}()};
  std::lock_guard<std::mutex> lock(mu);
  return seeds();
}

}  // namespace

std::string OutcomeOf(const absl::Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kOk:
      return "finished";
    case absl::StatusCode::kCancelled:
    case absl::StatusCode::kDeadlineExceeded:
      return "cancelled";
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kResourceExhausted:
      return "rejected";
    case absl::StatusCode::kUnavailable:
      return "unavailable";
    default:
      return "failed";
  }
}

absl::StatusOr<std::unique_ptr<Generation>> Generation::Start(
    const ServingContext& ctx, const moe::v1::GenerateRequest& request) {
  auto reject = [&](const absl::Status& s) {
    ctx.metrics->RequestEnded(OutcomeOf(s));
    return s;
  };
  if (std::string why; !Serving(ctx, &why)) {
    return reject(absl::UnavailableError(absl::StrCat("not serving: ", why)));
  }
  moe::v1::GenerateRequest encoded;
  const moe::v1::GenerateRequest* r = &request;
  if (!request.prompt().empty() || request.messages_size() > 0) {
    encoded = request;
    if (absl::Status s = ctx.text->Encode(&encoded); !s.ok()) return reject(s);
    r = &encoded;
  }
  if (request.stop_size() > 0 && ctx.text->tokenizer == nullptr) {
    return reject(absl::FailedPreconditionError(
        absl::StrCat("stop: stop strings need the model's tokenizer; ", ctx.text->tokenizer_status)));
  }
  auto params = ValidateRequest(*r, *ctx.config, ctx.limits, RandomSeed());
  if (!params.ok()) return reject(params.status());
  const int64_t prompt_tokens = static_cast<int64_t>(params->prompt.size());
  auto submitted = ctx.scheduler->Submit(std::move(*params));
  if (!submitted.ok()) return reject(submitted.status());
  ctx.metrics->AddPromptTokens(prompt_tokens);
  return std::unique_ptr<Generation>(new Generation(
      ctx, std::move(*submitted), prompt_tokens,
      !request.has_skip_special_tokens() || request.skip_special_tokens(),
      std::vector<std::string>(request.stop().begin(), request.stop().end())));
}

Generation::Generation(const ServingContext& ctx, std::shared_ptr<Request> request,
                       int64_t prompt_tokens, bool skip_special_tokens,
                       std::vector<std::string> stops)
    : ctx_(ctx),
      request_(std::move(request)),
      stops_(std::move(stops)),
      last_token_(request_->arrival()),
      prompt_tokens_(prompt_tokens) {
  if (ctx_.text->tokenizer != nullptr) decoder_.emplace(*ctx_.text->tokenizer, skip_special_tokens);
}

Generation::~Generation() {
  if (!ended_) Cancel();
}

void Generation::End(const absl::Status& status, const std::string& outcome) {
  ended_ = true;
  status_ = status;
  ctx_.metrics->RequestEnded(outcome);
}

void Generation::Release() {
  request_->Cancel();
  ctx_.scheduler->Wake();
}

void Generation::Cancel() {
  if (ended_) return;
  Release();
  End(absl::CancelledError("the client went away (cancelled, deadline or disconnect)"),
      "cancelled");
}

bool Generation::Next(absl::Duration timeout, Chunk* chunk) {
  if (ended_) return true;
  std::vector<int32_t> tokens;
  std::vector<moe::v1::TokenLogprobs> logprobs;
  const bool ended = request_->Wait(timeout, &tokens, &logprobs);
  const absl::Time now = absl::Now();
  if (!tokens.empty()) {
    // Tokens that arrived together share the interval since the previous delivery.
    const double gap = absl::ToDoubleSeconds(now - last_token_) / static_cast<double>(tokens.size());
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (first_token_) {
        ctx_.metrics->ObserveTimeToFirstToken(absl::ToDoubleSeconds(now - request_->arrival()));
        first_token_ = false;
      } else {
        ctx_.metrics->ObserveInterTokenLatency(gap);
      }
    }
    ctx_.metrics->AddGenerationTokens(static_cast<int64_t>(tokens.size()));
    last_token_ = now;
  }
  // Tokens and their text, up to the token that completes a stop string.
  std::string text;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int32_t id = tokens[i];
    chunk->tokens.push_back(id);
    if (i < logprobs.size()) chunk->logprobs.push_back(std::move(logprobs[i]));
    ++completion_tokens_;
    if (!decoder_) continue;
    if (auto piece = decoder_->Push(id); piece.ok()) text += stops_.Feed(*piece);
    if (stops_.stopped()) break;
  }
  if (ended && decoder_ && !stops_.stopped()) {
    text += stops_.Feed(decoder_->Finish());
    text += stops_.Flush();
  }
  chunk->text += text;
  if (stops_.stopped()) {
    Release();  // nothing more is wanted
    reason_ = moe::v1::FINISH_REASON_STOP;
    End(absl::OkStatus(), "finished");
    return true;
  }
  if (!ended) return false;
  reason_ = request_->finish_reason();
  const absl::Status status = request_->status();
  End(status, status.ok() ? "finished" : OutcomeOf(status));
  return true;
}

}  // namespace moe

// One request from admission to its last token, as both front ends (gRPC and the OpenAI HTTP API)
// run it: a text prompt is encoded, the request validated and queued, and its tokens handed out
// with their text — whole characters, stop strings found across token boundaries and left out —
// while the request's metrics are counted. Owned by one handler thread.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "coordinator/services.h"
#include "coordinator/stop_strings.h"

namespace moe {

class Generation {
 public:
  struct Chunk {
    std::vector<int32_t> tokens;
    std::string text;  // empty without a tokenizer
    std::vector<moe::v1::TokenLogprobs> logprobs;  // one per token, when the request asked
  };

  // Errors as the request deserves: UNAVAILABLE (not serving), INVALID_ARGUMENT (naming the
  // field), FAILED_PRECONDITION (text without a tokenizer), RESOURCE_EXHAUSTED (queue full).
  static absl::StatusOr<std::unique_ptr<Generation>> Start(const ServingContext& ctx,
                                                           const moe::v1::GenerateRequest& request);
  ~Generation();  // cancels the request if it is still running

  // Waits up to `timeout` for news; the tokens and text since the previous call go to `chunk`.
  // True once the request has ended (then status() and the rest are final).
  bool Next(absl::Duration timeout, Chunk* chunk);
  // The client went away: the request stops and its KV blocks are freed.
  void Cancel();

  bool ended() const { return ended_; }
  absl::Status status() const { return status_; }
  moe::v1::FinishReason finish_reason() const { return reason_; }
  int64_t prompt_tokens() const { return prompt_tokens_; }
  int64_t completion_tokens() const { return completion_tokens_; }

 private:
  Generation(const ServingContext& ctx, std::shared_ptr<Request> request, int64_t prompt_tokens,
             bool skip_special_tokens, std::vector<std::string> stops);
  void End(const absl::Status& status, const std::string& outcome);
  // Tells the scheduler the request is no longer wanted (its KV blocks are freed).
  void Release();

  ServingContext ctx_;
  std::shared_ptr<Request> request_;
  std::optional<text::StreamDecoder> decoder_;
  StopStrings stops_;  // with no stop strings it passes the text through
  absl::Time last_token_;
  bool first_token_ = true;
  bool ended_ = false;
  absl::Status status_;
  moe::v1::FinishReason reason_ = moe::v1::FINISH_REASON_UNSPECIFIED;
  int64_t prompt_tokens_ = 0;
  int64_t completion_tokens_ = 0;
};

// The outcome label of /metrics' moe_requests_total for a request that ended with `status`.
std::string OutcomeOf(const absl::Status& status);

}  // namespace moe

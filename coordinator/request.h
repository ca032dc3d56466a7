// One generation request as the coordinator tracks it. The scheduler produces (tokens, the end);
// the gRPC handler that owns the client's stream consumes. Thread-safe.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "moe/v1/cluster.pb.h"
#include "moe/v1/inference.pb.h"

namespace moe {

struct RequestParams {
  std::vector<int32_t> prompt;
  int64_t max_tokens = 0;
  moe::v1::SamplingSpec sampling;  // temperature 0: greedy
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
};

class Request {
 public:
  Request(int64_t id, RequestParams params, absl::Time arrival)
      : id_(id), params_(std::move(params)), arrival_(arrival) {}

  int64_t id() const { return id_; }
  const RequestParams& params() const { return params_; }
  absl::Time arrival() const { return arrival_; }

  // Producer side (the scheduler). `logprobs` goes with the token when the request asked for them.
  void Emit(int32_t token, const moe::v1::TokenLogprobs* logprobs = nullptr);
  void Finish(moe::v1::FinishReason reason);
  void Fail(const absl::Status& status);

  // Consumer side. Waits up to `timeout` for news; moves the tokens produced since the last call
  // into `tokens` (and their log-probabilities, when asked for, into `logprobs`); returns true
  // once the request has ended.
  bool Wait(absl::Duration timeout, std::vector<int32_t>* tokens,
            std::vector<moe::v1::TokenLogprobs>* logprobs = nullptr);
  absl::Status status() const;
  moe::v1::FinishReason finish_reason() const;
  int64_t produced() const;

  // Either side: the client went away (cancel or deadline).
  void Cancel();
  bool cancelled() const;

 private:
  const int64_t id_;
  const RequestParams params_;
  const absl::Time arrival_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<int32_t> pending_;
  std::vector<moe::v1::TokenLogprobs> pending_logprobs_;
  int64_t produced_ = 0;
  bool ended_ = false;
  bool cancelled_ = false;
  absl::Status status_;
  moe::v1::FinishReason reason_ = moe::v1::FINISH_REASON_UNSPECIFIED;
};

}  // namespace moe

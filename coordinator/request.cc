#include "coordinator/request.h"

#include <chrono>

namespace moe {

void Request::Emit(int32_t token, const moe::v1::TokenLogprobs* logprobs) {
  std::lock_guard<std::mutex> lock(mu_);
  if (ended_) return;
  pending_.push_back(token);
  if (params_.sampling.logprobs()) {
    pending_logprobs_.push_back(logprobs != nullptr ? *logprobs : moe::v1::TokenLogprobs());
  }
  ++produced_;
  cv_.notify_all();
}

void Request::Finish(moe::v1::FinishReason reason) {
  std::lock_guard<std::mutex> lock(mu_);
  if (ended_) return;
  ended_ = true;
  reason_ = reason;
  cv_.notify_all();
}

void Request::Fail(const absl::Status& status) {
  std::lock_guard<std::mutex> lock(mu_);
  if (ended_) return;
  ended_ = true;
  status_ = status;
  cv_.notify_all();
}

bool Request::Wait(absl::Duration timeout, std::vector<int32_t>* tokens,
                   std::vector<moe::v1::TokenLogprobs>* logprobs) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout),
               [&] { return ended_ || !pending_.empty(); });
  tokens->insert(tokens->end(), pending_.begin(), pending_.end());
  pending_.clear();
  if (logprobs != nullptr) logprobs->insert(logprobs->end(), pending_logprobs_.begin(), pending_logprobs_.end());
  pending_logprobs_.clear();
  return ended_;
}

absl::Status Request::status() const {
  std::lock_guard<std::mutex> lock(mu_);
  return status_;
}

moe::v1::FinishReason Request::finish_reason() const {
  std::lock_guard<std::mutex> lock(mu_);
  return reason_;
}

int64_t Request::produced() const {
  std::lock_guard<std::mutex> lock(mu_);
  return produced_;
}

void Request::Cancel() {
  std::lock_guard<std::mutex> lock(mu_);
  cancelled_ = true;
  cv_.notify_all();
}

bool Request::cancelled() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cancelled_;
}

}  // namespace moe

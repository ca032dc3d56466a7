#include "parallel/moe_dispatch.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace moe {

MoeDispatcher::MoeDispatcher(Communicator* comm, const ExpertPlacement* placement, int64_t hidden,
                             int64_t top_k)
    : comm_(comm), placement_(placement), hidden_(hidden), top_k_(top_k) {
  MOE_CHECK(placement->world() == comm->size());
}

absl::StatusOr<Dispatched> MoeDispatcher::Dispatch(const float* x, int64_t num_tokens,
                                                   const int32_t* topk_ids,
                                                   const float* topk_weights) {
  const int world = comm_->size();
  // A packed row: hidden floats, then top_k local ids (int32 bits), then top_k weights.
  const int64_t row_floats = hidden_ + 2 * top_k_;
  const size_t row_bytes = static_cast<size_t>(row_floats) * sizeof(float);

  // Which ranks each token visits, and the rows for each rank.
  std::vector<std::vector<int64_t>> tokens_for(world);
  std::vector<int> dest(static_cast<size_t>(top_k_));
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int64_t j = 0; j < top_k_; ++j) {
      const int32_t e = topk_ids[t * top_k_ + j];
      if (e < 0 || e >= placement_->num_experts()) {
        return absl::InvalidArgumentError(absl::StrCat("dispatch: token ", t, " routed to expert ",
                                                       e, " outside [0, ", placement_->num_experts(),
                                                       ")"));
      }
      dest[j] = placement_->RankFor(e, t);
      bool seen = false;
      for (int64_t i = 0; i < j; ++i) seen |= dest[i] == dest[j];
      if (!seen) tokens_for[dest[j]].push_back(t);
    }
  }
  Dispatched out;
  DispatchHandle& h = out.handle;
  h.num_tokens = num_tokens;
  h.send_rows.resize(world);
  for (int r = 0; r < world; ++r) h.send_rows[r] = tokens_for[r].size();
  std::vector<int64_t> send_counts(h.send_rows.begin(), h.send_rows.end()), recv_counts(world);
  MOE_RETURN_IF_ERROR(comm_->AllToAll(send_counts.data(), sizeof(int64_t), recv_counts.data()));
  h.recv_rows.assign(recv_counts.begin(), recv_counts.end());

  size_t total_send = 0, total_recv = 0;
  for (int r = 0; r < world; ++r) {
    total_send += h.send_rows[r];
    total_recv += h.recv_rows[r];
  }
  FloatVector send(total_send * row_floats);
  h.sent_token.reserve(total_send);
  size_t row = 0;
  for (int r = 0; r < world; ++r) {
    for (int64_t t : tokens_for[r]) {
      float* dst = send.data() + row * row_floats;
      std::memcpy(dst, x + t * hidden_, static_cast<size_t>(hidden_) * sizeof(float));
      auto* ids = reinterpret_cast<int32_t*>(dst + hidden_);
      float* w = dst + hidden_ + top_k_;
      for (int64_t j = 0; j < top_k_; ++j) {
        const int32_t e = topk_ids[t * top_k_ + j];
        const bool here = placement_->RankFor(e, t) == r;
        ids[j] = here ? static_cast<int32_t>(placement_->LocalIndex(r, e)) : -1;
        w[j] = here ? topk_weights[t * top_k_ + j] : 0.0f;
      }
      h.sent_token.push_back(t);
      ++row;
    }
  }
  FloatVector recv(total_recv * row_floats);
  std::vector<size_t> send_bytes(world), recv_bytes(world);
  for (int r = 0; r < world; ++r) {
    send_bytes[r] = h.send_rows[r] * row_bytes;
    recv_bytes[r] = h.recv_rows[r] * row_bytes;
  }
  MOE_RETURN_IF_ERROR(comm_->AllToAllV(send.data(), send_bytes, recv.data(), recv_bytes));
  payload_bytes_ += (total_send + total_recv) * static_cast<uint64_t>(hidden_) * sizeof(float);

  const int64_t rows = static_cast<int64_t>(total_recv);
  out.x = Tensor({rows, hidden_});
  out.local_expert.resize(static_cast<size_t>(rows * top_k_));
  out.weight.resize(static_cast<size_t>(rows * top_k_));
  for (int64_t i = 0; i < rows; ++i) {
    const float* src = recv.data() + i * row_floats;
    std::memcpy(out.x.row(i), src, static_cast<size_t>(hidden_) * sizeof(float));
    std::memcpy(&out.local_expert[i * top_k_], src + hidden_, top_k_ * sizeof(int32_t));
    std::memcpy(&out.weight[i * top_k_], src + hidden_ + top_k_, top_k_ * sizeof(float));
  }
  return out;
}

absl::StatusOr<Tensor> MoeDispatcher::Combine(const Tensor& y, const DispatchHandle& h) {
  const int world = comm_->size();
  const size_t row_bytes = static_cast<size_t>(hidden_) * sizeof(float);
  size_t total_recv = 0, total_back = 0;
  std::vector<size_t> send_bytes(world), recv_bytes(world);
  for (int r = 0; r < world; ++r) {
    send_bytes[r] = h.recv_rows[r] * row_bytes;  // rows go back where they came from
    recv_bytes[r] = h.send_rows[r] * row_bytes;
    total_recv += h.recv_rows[r];
    total_back += h.send_rows[r];
  }
  if (static_cast<size_t>(y.empty() ? 0 : y.dim(0)) != total_recv) {
    return absl::InternalError(absl::StrCat("combine: got ", y.empty() ? 0 : y.dim(0),
                                            " rows, dispatch delivered ", total_recv));
  }
  FloatVector back(total_back * hidden_);
  MOE_RETURN_IF_ERROR(comm_->AllToAllV(y.data(), send_bytes, back.data(), recv_bytes));
  payload_bytes_ += (total_recv + total_back) * row_bytes;
  Tensor out({h.num_tokens, hidden_});
  for (size_t i = 0; i < total_back; ++i) {
    float* dst = out.row(h.sent_token[i]);
    const float* src = back.data() + i * hidden_;
    for (int64_t d = 0; d < hidden_; ++d) dst[d] += src[d];
  }
  return out;
}

}  // namespace moe

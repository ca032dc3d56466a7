#include "parallel/moe_dispatch.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace moe {
namespace {

template <typename V>
void Reserve(V& v, size_t n) {  // grow only: keep the pages
  if (v.size() < n) v.resize(n);
}

void AddRow(float* dst, const float* src, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
}

}  // namespace

MoeDispatcher::MoeDispatcher(Communicator* comm, const ExpertPlacement* placement, int64_t hidden,
                             int64_t top_k, Transport transport)
    : comm_(comm), placement_(placement), hidden_(hidden), top_k_(top_k), transport_(transport) {
  MOE_CHECK(placement->world() == comm->size());
  if (transport_ == Transport::kAuto) {
    const char* env = std::getenv("MOE_DISPATCH");
    const bool forced = env != nullptr && std::string(env) == "alltoallv";
    transport_ = comm->on_one_host() && !forced ? Transport::kSharedMemory : Transport::kAllToAllV;
  }
}

absl::Status MoeDispatcher::EnsureWindow(int64_t rows) {
  if (window_ && rows <= capacity_) return absl::OkStatus();
  // Every rank computes the same `rows` from the gathered counts, so all grow together.
  const int64_t capacity = std::max<int64_t>({rows, 2 * capacity_, 64});
  const size_t bytes =
      static_cast<size_t>(capacity) * (2 * hidden_ * sizeof(float) + 2 * top_k_ * sizeof(int32_t));
  window_.reset();
  MOE_ASSIGN_OR_RETURN(window_, comm_->AllocateShared(bytes));
  capacity_ = capacity;
  return absl::OkStatus();
}

int64_t MoeDispatcher::Count(const DispatchHandle& h, int from, int to) const {
  return h.counts[static_cast<size_t>(from) * comm_->size() + to];
}

absl::Status MoeDispatcher::PlanRows(int64_t num_tokens, const int32_t* topk_ids,
                                     DispatchHandle* h) {
  const int world = comm_->size();
  h->num_tokens = num_tokens;
  h->token_begin.assign(static_cast<size_t>(num_tokens + 1), 0);
  std::vector<int64_t> mine(world, 0);
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int64_t j = 0; j < top_k_; ++j) {
      const int32_t e = topk_ids[t * top_k_ + j];
      if (e < 0 || e >= placement_->num_experts()) {
        return absl::InvalidArgumentError(absl::StrCat("dispatch: token ", t, " routed to expert ",
                                                       e, " outside [0, ",
                                                       placement_->num_experts(), ")"));
      }
      const int r = placement_->RankFor(e, t);
      bool seen = false;
      for (int64_t i = h->token_begin[t]; i < static_cast<int64_t>(h->row_rank.size()); ++i) {
        seen |= h->row_rank[i] == r;
      }
      if (!seen) {
        h->row_rank.push_back(r);
        h->row_index.push_back(mine[r]++);
      }
    }
    h->token_begin[t + 1] = static_cast<int64_t>(h->row_rank.size());
  }
  h->counts.resize(static_cast<size_t>(world) * world);
  return comm_->AllGather(mine.data(), world * sizeof(int64_t), h->counts.data());
}

std::vector<int64_t> MoeDispatcher::RowBase(const DispatchHandle& h) const {
  std::vector<int64_t> base(comm_->size(), 0);
  for (int r = 0; r < comm_->size(); ++r) {
    for (int s = 0; s < comm_->rank(); ++s) base[r] += Count(h, s, r);
  }
  return base;
}

void MoeDispatcher::WriteMeta(int64_t t, int r, const int32_t* topk_ids, const float* topk_weights,
                              int32_t* meta) const {
  for (int64_t j = 0; j < top_k_; ++j) {
    const int32_t e = topk_ids[t * top_k_ + j];
    const bool here = placement_->RankFor(e, t) == r;
    meta[j] = here ? static_cast<int32_t>(placement_->LocalIndex(r, e)) : -1;
    const float w = here ? topk_weights[t * top_k_ + j] : 0.0f;
    std::memcpy(&meta[top_k_ + j], &w, sizeof(float));
  }
}

absl::StatusOr<Dispatched> MoeDispatcher::Dispatch(const float* x, int64_t num_tokens,
                                                   const int32_t* topk_ids,
                                                   const float* topk_weights) {
  Dispatched out;
  MOE_RETURN_IF_ERROR(PlanRows(num_tokens, topk_ids, &out.handle));
  const int world = comm_->size(), me = comm_->rank();
  out.rows = 0;
  for (int s = 0; s < world; ++s) out.rows += Count(out.handle, s, me);
  const int32_t* meta = nullptr;
  if (transport_ == Transport::kSharedMemory) {
    MOE_ASSIGN_OR_RETURN(meta, SendShared(x, topk_ids, topk_weights, &out));
  } else {
    MOE_ASSIGN_OR_RETURN(meta, SendAllToAll(x, topk_ids, topk_weights, &out));
  }
  // Unpack the routing entries: local expert ids, then weight bits, per row.
  const int64_t meta_ints = 2 * top_k_;
  Reserve(recv_ids_, static_cast<size_t>(out.rows * top_k_));
  Reserve(recv_weights_, static_cast<size_t>(out.rows * top_k_));
  for (int64_t i = 0; i < out.rows; ++i) {
    std::memcpy(&recv_ids_[i * top_k_], meta + i * meta_ints, top_k_ * sizeof(int32_t));
    std::memcpy(&recv_weights_[i * top_k_], meta + i * meta_ints + top_k_, top_k_ * sizeof(float));
  }
  out.local_expert = recv_ids_.data();
  out.weight = recv_weights_.data();
  return out;
}

absl::StatusOr<const int32_t*> MoeDispatcher::SendShared(const float* x, const int32_t* topk_ids,
                                                         const float* topk_weights,
                                                         Dispatched* out) {
  const DispatchHandle& h = out->handle;
  const int world = comm_->size(), me = comm_->rank();
  int64_t max_recv = 0;
  for (int r = 0; r < world; ++r) {
    int64_t total = 0;
    for (int s = 0; s < world; ++s) total += Count(h, s, r);
    max_recv = std::max(max_recv, total);
  }
  MOE_RETURN_IF_ERROR(EnsureWindow(max_recv));  // after the gather: no one reads the old window
  // My rows go after lower ranks' rows in each destination's segment.
  const std::vector<int64_t> base = RowBase(h);
  const size_t row_bytes = static_cast<size_t>(hidden_) * sizeof(float);
  const int64_t sent = static_cast<int64_t>(h.row_rank.size()), meta_ints = 2 * top_k_;
#pragma omp parallel for schedule(static) if (sent * hidden_ > (1 << 18))
  for (int64_t t = 0; t < h.num_tokens; ++t) {
    for (int64_t i = h.token_begin[t]; i < h.token_begin[t + 1]; ++i) {
      const int r = h.row_rank[i];
      const int64_t row = base[r] + h.row_index[i];
      std::memcpy(SegmentX(r) + row * hidden_, x + t * hidden_, row_bytes);
      WriteMeta(t, r, topk_ids, topk_weights, SegmentMeta(r) + row * meta_ints);
    }
  }
  window_->Sync();
  MOE_RETURN_IF_ERROR(comm_->Barrier());
  window_->Sync();
  out->x = SegmentX(me);
  out->y = SegmentY(me);
  return SegmentMeta(me);
}

absl::StatusOr<const int32_t*> MoeDispatcher::SendAllToAll(const float* x, const int32_t* topk_ids,
                                                           const float* topk_weights,
                                                           Dispatched* out) {
  const DispatchHandle& h = out->handle;
  const int world = comm_->size(), me = comm_->rank();
  const size_t row_bytes = static_cast<size_t>(hidden_) * sizeof(float);
  const int64_t sent = static_cast<int64_t>(h.row_rank.size()), meta_ints = 2 * top_k_;
  // Pack by destination rank.
  std::vector<int64_t> offset(world, 0);
  for (int r = 1; r < world; ++r) offset[r] = offset[r - 1] + Count(h, me, r - 1);
  Reserve(send_, static_cast<size_t>(sent * hidden_));
  Reserve(meta_send_, static_cast<size_t>(sent * meta_ints));
  for (int64_t t = 0; t < h.num_tokens; ++t) {
    for (int64_t i = h.token_begin[t]; i < h.token_begin[t + 1]; ++i) {
      const int r = h.row_rank[i];
      const int64_t row = offset[r] + h.row_index[i];
      std::memcpy(send_.data() + row * hidden_, x + t * hidden_, row_bytes);
      WriteMeta(t, r, topk_ids, topk_weights, meta_send_.data() + row * meta_ints);
    }
  }
  std::vector<size_t> send_bytes(world), recv_bytes(world), send_meta(world), recv_meta(world);
  for (int r = 0; r < world; ++r) {
    send_bytes[r] = static_cast<size_t>(Count(h, me, r)) * row_bytes;
    recv_bytes[r] = static_cast<size_t>(Count(h, r, me)) * row_bytes;
    send_meta[r] = static_cast<size_t>(Count(h, me, r) * meta_ints) * sizeof(int32_t);
    recv_meta[r] = static_cast<size_t>(Count(h, r, me) * meta_ints) * sizeof(int32_t);
  }
  Reserve(recv_, static_cast<size_t>(out->rows * hidden_));
  Reserve(meta_recv_, static_cast<size_t>(out->rows * meta_ints));
  Reserve(y_, static_cast<size_t>(out->rows * hidden_));
  MOE_RETURN_IF_ERROR(comm_->AllToAllV(meta_send_.data(), send_meta, meta_recv_.data(), recv_meta));
  MOE_RETURN_IF_ERROR(comm_->AllToAllV(send_.data(), send_bytes, recv_.data(), recv_bytes));
  out->x = recv_.data();
  out->y = y_.data();
  return meta_recv_.data();
}

absl::Status MoeDispatcher::Combine(const DispatchHandle& h, float* out) {
  // Where each of my rows' outputs can be read: a pointer per row.
  std::vector<const float*> src(h.row_rank.size());
  if (transport_ == Transport::kSharedMemory) {
    MOE_RETURN_IF_ERROR(ReturnShared(h, &src));
  } else {
    MOE_RETURN_IF_ERROR(ReturnAllToAll(h, &src));
  }
  const size_t row_bytes = static_cast<size_t>(hidden_) * sizeof(float);
  const int64_t n = h.num_tokens;
#pragma omp parallel for schedule(static) if (n * hidden_ > (1 << 18))
  for (int64_t t = 0; t < n; ++t) {
    float* dst = out + t * hidden_;
    const int64_t b = h.token_begin[t], e = h.token_begin[t + 1];
    if (b == e) {
      std::memset(dst, 0, row_bytes);
      continue;
    }
    std::memcpy(dst, src[b], row_bytes);
    for (int64_t i = b + 1; i < e; ++i) AddRow(dst, src[i], hidden_);
  }
  return absl::OkStatus();
}

absl::Status MoeDispatcher::ReturnShared(const DispatchHandle& h, std::vector<const float*>* src) {
  window_->Sync();
  MOE_RETURN_IF_ERROR(comm_->Barrier());  // every rank's outputs are written
  window_->Sync();
  const std::vector<int64_t> base = RowBase(h);
  for (size_t i = 0; i < src->size(); ++i) {
    const int r = h.row_rank[i];
    (*src)[i] = SegmentY(r) + (base[r] + h.row_index[i]) * hidden_;
  }
  return absl::OkStatus();
}

absl::Status MoeDispatcher::ReturnAllToAll(const DispatchHandle& h,
                                           std::vector<const float*>* src) {
  const int world = comm_->size(), me = comm_->rank();
  const size_t row_bytes = static_cast<size_t>(hidden_) * sizeof(float);
  std::vector<size_t> send_bytes(world), recv_bytes(world);
  std::vector<int64_t> offset(world, 0);
  for (int r = 0; r < world; ++r) {
    send_bytes[r] = static_cast<size_t>(Count(h, r, me)) * row_bytes;  // back where they came from
    recv_bytes[r] = static_cast<size_t>(Count(h, me, r)) * row_bytes;
    if (r > 0) offset[r] = offset[r - 1] + Count(h, me, r - 1);
  }
  Reserve(back_, h.row_rank.size() * hidden_);
  MOE_RETURN_IF_ERROR(comm_->AllToAllV(y_.data(), send_bytes, back_.data(), recv_bytes));
  for (size_t i = 0; i < src->size(); ++i) {
    (*src)[i] = back_.data() + (offset[h.row_rank[i]] + h.row_index[i]) * hidden_;
  }
  return absl::OkStatus();
}

}  // namespace moe

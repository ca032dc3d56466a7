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

absl::StatusOr<Dispatched> MoeDispatcher::Dispatch(const float* x, int64_t num_tokens,
                                                   const int32_t* topk_ids,
                                                   const float* topk_weights) {
  const int world = comm_->size(), me = comm_->rank();
  const size_t row_bytes = static_cast<size_t>(hidden_) * sizeof(float);
  const int64_t meta_ints = 2 * top_k_;

  // The ranks each token visits, in order; rows are numbered per destination.
  Dispatched out;
  DispatchHandle& h = out.handle;
  h.num_tokens = num_tokens;
  h.token_begin.assign(static_cast<size_t>(num_tokens + 1), 0);
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
      for (int64_t i = h.token_begin[t]; i < static_cast<int64_t>(h.row_rank.size()); ++i) {
        seen |= h.row_rank[i] == r;
      }
      if (!seen) {
        h.row_rank.push_back(r);
        h.row_index.push_back(mine[r]++);
      }
    }
    h.token_begin[t + 1] = static_cast<int64_t>(h.row_rank.size());
  }
  h.counts.resize(static_cast<size_t>(world) * world);
  MOE_RETURN_IF_ERROR(comm_->AllGather(mine.data(), world * sizeof(int64_t), h.counts.data()));
  auto count = [&](int s, int r) { return h.counts[static_cast<size_t>(s) * world + r]; };
  int64_t recv_rows = 0, max_recv = 0;
  for (int r = 0; r < world; ++r) {
    int64_t total = 0;
    for (int s = 0; s < world; ++s) total += count(s, r);
    max_recv = std::max(max_recv, total);
    if (r == me) recv_rows = total;
  }
  // Where my rows start in each destination's received rows: after lower ranks' rows.
  std::vector<int64_t> base(world, 0);
  for (int r = 0; r < world; ++r) {
    for (int s = 0; s < me; ++s) base[r] += count(s, r);
  }
  const int64_t sent = static_cast<int64_t>(h.row_rank.size());
  // One row's routing entries for its destination: local expert ids, then weight bits.
  auto write_meta = [&](int64_t t, int r, int32_t* meta) {
    for (int64_t j = 0; j < top_k_; ++j) {
      const int32_t e = topk_ids[t * top_k_ + j];
      const bool here = placement_->RankFor(e, t) == r;
      meta[j] = here ? static_cast<int32_t>(placement_->LocalIndex(r, e)) : -1;
      const float w = here ? topk_weights[t * top_k_ + j] : 0.0f;
      std::memcpy(&meta[top_k_ + j], &w, sizeof(float));
    }
  };

  const int32_t* meta_in = nullptr;
  if (transport_ == Transport::kSharedMemory) {
    MOE_RETURN_IF_ERROR(EnsureWindow(max_recv));  // after the gather: no one reads the old window
#pragma omp parallel for schedule(static) if (sent * hidden_ > (1 << 18))
    for (int64_t t = 0; t < num_tokens; ++t) {
      for (int64_t i = h.token_begin[t]; i < h.token_begin[t + 1]; ++i) {
        const int r = h.row_rank[i];
        const int64_t row = base[r] + h.row_index[i];
        std::memcpy(SegmentX(r) + row * hidden_, x + t * hidden_, row_bytes);
        write_meta(t, r, SegmentMeta(r) + row * meta_ints);
      }
    }
    window_->Sync();
    MOE_RETURN_IF_ERROR(comm_->Barrier());
    window_->Sync();
    out.x = SegmentX(me);
    out.y = SegmentY(me);
    meta_in = SegmentMeta(me);
  } else {
    // Pack by destination rank, exchange.
    std::vector<int64_t> offset(world, 0);
    for (int r = 1; r < world; ++r) offset[r] = offset[r - 1] + count(me, r - 1);
    Reserve(send_, static_cast<size_t>(sent * hidden_));
    Reserve(meta_send_, static_cast<size_t>(sent * meta_ints));
    for (int64_t t = 0; t < num_tokens; ++t) {
      for (int64_t i = h.token_begin[t]; i < h.token_begin[t + 1]; ++i) {
        const int r = h.row_rank[i];
        const int64_t row = offset[r] + h.row_index[i];
        std::memcpy(send_.data() + row * hidden_, x + t * hidden_, row_bytes);
        write_meta(t, r, meta_send_.data() + row * meta_ints);
      }
    }
    std::vector<size_t> send_bytes(world), recv_bytes(world), send_meta(world), recv_meta(world);
    for (int r = 0; r < world; ++r) {
      send_bytes[r] = static_cast<size_t>(count(me, r)) * row_bytes;
      recv_bytes[r] = static_cast<size_t>(count(r, me)) * row_bytes;
      send_meta[r] = static_cast<size_t>(count(me, r) * meta_ints) * sizeof(int32_t);
      recv_meta[r] = static_cast<size_t>(count(r, me) * meta_ints) * sizeof(int32_t);
    }
    Reserve(recv_, static_cast<size_t>(recv_rows * hidden_));
    Reserve(meta_recv_, static_cast<size_t>(recv_rows * meta_ints));
    Reserve(y_, static_cast<size_t>(recv_rows * hidden_));
    MOE_RETURN_IF_ERROR(
        comm_->AllToAllV(meta_send_.data(), send_meta, meta_recv_.data(), recv_meta));
    MOE_RETURN_IF_ERROR(comm_->AllToAllV(send_.data(), send_bytes, recv_.data(), recv_bytes));
    out.x = recv_.data();
    out.y = y_.data();
    meta_in = meta_recv_.data();
  }

  Reserve(recv_ids_, static_cast<size_t>(recv_rows * top_k_));
  Reserve(recv_weights_, static_cast<size_t>(recv_rows * top_k_));
  for (int64_t i = 0; i < recv_rows; ++i) {
    const int32_t* meta = meta_in + i * meta_ints;
    std::memcpy(&recv_ids_[i * top_k_], meta, top_k_ * sizeof(int32_t));
    std::memcpy(&recv_weights_[i * top_k_], meta + top_k_, top_k_ * sizeof(float));
  }
  out.rows = recv_rows;
  out.local_expert = recv_ids_.data();
  out.weight = recv_weights_.data();
  return out;
}

absl::Status MoeDispatcher::Combine(const DispatchHandle& h, float* out) {
  const int world = comm_->size(), me = comm_->rank();
  const size_t row_bytes = static_cast<size_t>(hidden_) * sizeof(float);
  auto count = [&](int s, int r) { return h.counts[static_cast<size_t>(s) * world + r]; };
  // Where each of my rows' outputs can be read: a pointer per row.
  std::vector<const float*> src(h.row_rank.size());
  int64_t received = 0;
  for (int s = 0; s < world; ++s) received += count(s, me);
  if (transport_ == Transport::kSharedMemory) {
    window_->Sync();
    MOE_RETURN_IF_ERROR(comm_->Barrier());  // every rank's outputs are written
    window_->Sync();
    std::vector<int64_t> base(world, 0);
    for (int r = 0; r < world; ++r) {
      for (int s = 0; s < me; ++s) base[r] += count(s, r);
    }
    for (size_t i = 0; i < src.size(); ++i) {
      const int r = h.row_rank[i];
      src[i] = SegmentY(r) + (base[r] + h.row_index[i]) * hidden_;
    }
  } else {
    std::vector<size_t> send_bytes(world), recv_bytes(world);
    std::vector<int64_t> offset(world, 0);
    for (int r = 0; r < world; ++r) {
      send_bytes[r] = static_cast<size_t>(count(r, me)) * row_bytes;  // back where they came from
      recv_bytes[r] = static_cast<size_t>(count(me, r)) * row_bytes;
      if (r > 0) offset[r] = offset[r - 1] + count(me, r - 1);
    }
    Reserve(back_, h.row_rank.size() * hidden_);
    MOE_RETURN_IF_ERROR(comm_->AllToAllV(y_.data(), send_bytes, back_.data(), recv_bytes));
    for (size_t i = 0; i < src.size(); ++i) {
      src[i] = back_.data() + (offset[h.row_rank[i]] + h.row_index[i]) * hidden_;
    }
  }
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

}  // namespace moe

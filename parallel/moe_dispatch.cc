#include "parallel/moe_dispatch.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace moe {

MoeDispatcher::MoeDispatcher(Communicator* comm, const ExpertPlacement* placement, int64_t hidden,
                             int64_t top_k, Transport transport, RowMemory* memory)
    : comm_(comm),
      placement_(placement),
      hidden_(hidden),
      top_k_(top_k),
      transport_(transport),
      memory_(memory != nullptr ? memory : DefaultHostRowMemory()) {
  MOE_CHECK(placement->world() == comm->size());
  if (transport_ == Transport::kAuto) {
    const char* env = std::getenv("MOE_DISPATCH");
    const bool forced = env != nullptr && std::string(env) == "alltoallv";
    transport_ = comm->on_one_host() && memory_->host() && !forced ? Transport::kSharedMemory
                                                                   : Transport::kAllToAllV;
  }
  MOE_CHECK(transport_ == Transport::kAllToAllV || memory_->host());
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
  // Every rank's counts, through the memory the communicator reads.
  const size_t bytes = world * sizeof(int64_t);
  MOE_RETURN_IF_ERROR(memory_->Reserve(&counts_send_, bytes));
  MOE_RETURN_IF_ERROR(memory_->Reserve(&counts_recv_, world * bytes));
  MOE_RETURN_IF_ERROR(memory_->CopyFromHost(mine.data(), bytes, counts_send_.data));
  MOE_RETURN_IF_ERROR(comm_->AllGather(counts_send_.data, bytes, counts_recv_.data));
  h->counts.resize(static_cast<size_t>(world) * world);
  return memory_->CopyToHost(counts_recv_.data, world * bytes, h->counts.data());
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
  // The routing is planned on the host: copy it there unless it is there already.
  if (!memory_->host()) {
    const size_t entries = static_cast<size_t>(num_tokens * top_k_);
    ids_host_.resize(entries);
    weights_host_.resize(entries);
    MOE_RETURN_IF_ERROR(memory_->CopyToHost(topk_ids, entries * sizeof(int32_t), ids_host_.data()));
    MOE_RETURN_IF_ERROR(
        memory_->CopyToHost(topk_weights, entries * sizeof(float), weights_host_.data()));
    topk_ids = ids_host_.data();
    topk_weights = weights_host_.data();
  }
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
  // Unpack the routing entries: local expert ids, then weights, per row.
  MOE_RETURN_IF_ERROR(Reserve(&ids_, out.rows * top_k_));
  MOE_RETURN_IF_ERROR(Reserve(&weights_, out.rows * top_k_));
  MOE_RETURN_IF_ERROR(memory_->SplitMeta(meta, out.rows, top_k_, ids_.ints(), weights_.floats()));
  out.local_expert = ids_.ints();
  out.weight = weights_.floats();
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
  // Pack by destination rank: packed row p is token pack_token_[p]; its routing entries go with it.
  std::vector<int64_t> offset(world, 0);
  for (int r = 1; r < world; ++r) offset[r] = offset[r - 1] + Count(h, me, r - 1);
  pack_token_.resize(static_cast<size_t>(sent));
  meta_host_.resize(static_cast<size_t>(sent * meta_ints));
  for (int64_t t = 0; t < h.num_tokens; ++t) {
    for (int64_t i = h.token_begin[t]; i < h.token_begin[t + 1]; ++i) {
      const int r = h.row_rank[i];
      const int64_t row = offset[r] + h.row_index[i];
      pack_token_[row] = static_cast<int32_t>(t);
      WriteMeta(t, r, topk_ids, topk_weights, meta_host_.data() + row * meta_ints);
    }
  }
  MOE_RETURN_IF_ERROR(Reserve(&send_, sent * hidden_));
  MOE_RETURN_IF_ERROR(Reserve(&meta_send_, sent * meta_ints));
  MOE_RETURN_IF_ERROR(memory_->GatherRows(x, pack_token_.data(), sent, hidden_, send_.floats()));
  MOE_RETURN_IF_ERROR(memory_->CopyFromHost(meta_host_.data(), meta_host_.size() * sizeof(int32_t),
                                            meta_send_.data));
  std::vector<size_t> send_bytes(world), recv_bytes(world), send_meta(world), recv_meta(world);
  for (int r = 0; r < world; ++r) {
    send_bytes[r] = static_cast<size_t>(Count(h, me, r)) * row_bytes;
    recv_bytes[r] = static_cast<size_t>(Count(h, r, me)) * row_bytes;
    send_meta[r] = static_cast<size_t>(Count(h, me, r) * meta_ints) * sizeof(int32_t);
    recv_meta[r] = static_cast<size_t>(Count(h, r, me) * meta_ints) * sizeof(int32_t);
  }
  MOE_RETURN_IF_ERROR(Reserve(&recv_, out->rows * hidden_));
  MOE_RETURN_IF_ERROR(Reserve(&meta_recv_, out->rows * meta_ints));
  MOE_RETURN_IF_ERROR(Reserve(&y_, out->rows * hidden_));
  MOE_RETURN_IF_ERROR(comm_->AllToAllV(meta_send_.data, send_meta, meta_recv_.data, recv_meta));
  MOE_RETURN_IF_ERROR(comm_->AllToAllV(send_.data, send_bytes, recv_.data, recv_bytes));
  out->x = recv_.floats();
  out->y = y_.floats();
  return meta_recv_.ints();
}

absl::Status MoeDispatcher::Combine(const DispatchHandle& h, float* out) {
  if (transport_ == Transport::kSharedMemory) return CombineShared(h, out);
  return CombineAllToAll(h, out);
}

absl::Status MoeDispatcher::CombineShared(const DispatchHandle& h, float* out) {
  window_->Sync();
  MOE_RETURN_IF_ERROR(comm_->Barrier());  // every rank's outputs are written
  window_->Sync();
  // Each of my rows' outputs, read in place from its rank's segment.
  const std::vector<int64_t> base = RowBase(h);
  std::vector<const float*> src(h.row_rank.size());
  for (size_t i = 0; i < src.size(); ++i) {
    const int r = h.row_rank[i];
    src[i] = SegmentY(r) + (base[r] + h.row_index[i]) * hidden_;
  }
  HostRowMemory::SumRowPointers(src.data(), h.token_begin.data(), h.num_tokens, hidden_, out);
  return absl::OkStatus();
}

absl::Status MoeDispatcher::CombineAllToAll(const DispatchHandle& h, float* out) {
  const int world = comm_->size(), me = comm_->rank();
  const size_t row_bytes = static_cast<size_t>(hidden_) * sizeof(float);
  std::vector<size_t> send_bytes(world), recv_bytes(world);
  std::vector<int64_t> offset(world, 0);
  for (int r = 0; r < world; ++r) {
    send_bytes[r] = static_cast<size_t>(Count(h, r, me)) * row_bytes;  // back where they came from
    recv_bytes[r] = static_cast<size_t>(Count(h, me, r)) * row_bytes;
    if (r > 0) offset[r] = offset[r - 1] + Count(h, me, r - 1);
  }
  MOE_RETURN_IF_ERROR(Reserve(&back_, static_cast<int64_t>(h.row_rank.size()) * hidden_));
  MOE_RETURN_IF_ERROR(comm_->AllToAllV(y_.data, send_bytes, back_.data, recv_bytes));
  // Row i of this rank came back at its destination's offset plus its index there.
  src_rows_.resize(h.row_rank.size());
  for (size_t i = 0; i < src_rows_.size(); ++i) {
    src_rows_[i] = offset[h.row_rank[i]] + h.row_index[i];
  }
  return memory_->SumRows(back_.floats(), src_rows_.data(), h.token_begin.data(), h.num_tokens,
                          hidden_, out);
}

}  // namespace moe

// MoE dispatch and combine, shaped like DeepEP's Buffer:
//   dispatch(x, topk_ids, topk_weights) -> (rows for my local experts, handle)
//   the caller writes each row's expert output into the dispatcher's y rows
//   combine(handle)                     -> outputs in the original token order
// A token travels once to each rank hosting at least one of its experts (several of its experts
// on one rank share the row); the row carries the token's top-k entries filtered to that rank,
// as local expert indices (-1 elsewhere) and routing weights. The receiver writes
// y_row = sum_j weight_j * expert_j(x_row) over its entries; combine sums the rows of each token.
// Callers never see counts, offsets or permutations.
//
// Two transports, same results:
//   shared memory (every rank on one host, host memory): senders write rows straight into the
//     receiver's segment of an MPI shared-memory window, and combine reads the experts' outputs
//     straight from the peers' segments — one pass over the bytes each way, like DeepEP's
//     intranode path;
//   all-to-all-v (any layout, e.g. across hosts): pack by destination, exchange, return, sum. Its
//     buffers live in a RowMemory (parallel/row_memory.h) — host memory with MPI or TCP, device
//     memory with NCCL — and the dispatcher moves rows only through it and the communicator, so
//     the same code runs on either; x, the routing, the Dispatched rows and Combine's output are
//     then in that memory too.
// The dispatcher owns its buffers and reuses them (no fresh pages per call): a Dispatched's
// pointers stay valid until the next Dispatch on the same dispatcher.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tensor.h"
#include "parallel/communicator.h"
#include "parallel/row_memory.h"
#include "parallel/shard_plan.h"

namespace moe {

struct DispatchHandle {
  int64_t num_tokens = 0;
  std::vector<int64_t> counts;       // [world x world]: rows sent from rank s to rank r
  std::vector<int64_t> token_begin;  // [num_tokens + 1]: this rank's rows of each token ...
  std::vector<int32_t> row_rank;     // ... the rank each row went to
  std::vector<int64_t> row_index;    // ... and its index in that rank's received rows
};

struct Dispatched {
  int64_t rows = 0;
  const float* x = nullptr;               // [rows, hidden]
  const int32_t* local_expert = nullptr;  // [rows, top_k]: local expert index, -1 for none
  const float* weight = nullptr;          // [rows, top_k]
  float* y = nullptr;                     // [rows, hidden]: the caller writes the outputs here
  DispatchHandle handle;
};

class MoeDispatcher {
 public:
  enum class Transport { kAuto, kSharedMemory, kAllToAllV };

  // kAuto picks shared memory when every rank is on one host and the memory is the host's, unless
  // the environment variable MOE_DISPATCH=alltoallv asks for the portable path. `memory` (not
  // owned; null: host memory) is where the buffers live; shared memory needs the host's.
  MoeDispatcher(Communicator* comm, const ExpertPlacement* placement, int64_t hidden, int64_t top_k,
                Transport transport = Transport::kAuto, RowMemory* memory = nullptr);

  // x [num_tokens, hidden]; topk_ids / topk_weights [num_tokens, top_k] (global expert ids).
  absl::StatusOr<Dispatched> Dispatch(const float* x, int64_t num_tokens, const int32_t* topk_ids,
                                      const float* topk_weights);
  // Sums each token's rows of y (written by the caller since Dispatch) into out [num_tokens,
  // hidden].
  absl::Status Combine(const DispatchHandle& handle, float* out);

  Transport transport() const { return transport_; }

 private:
  // Routes each token's rows to their ranks (the handle) and gathers every rank's row counts.
  absl::Status PlanRows(int64_t num_tokens, const int32_t* topk_ids, DispatchHandle* h);
  int64_t Count(const DispatchHandle& h, int from, int to) const;  // rows sent from -> to
  // Per destination rank: where this rank's rows start among its received rows.
  std::vector<int64_t> RowBase(const DispatchHandle& h) const;
  // One row's routing entries for rank r: local expert ids (-1: not on r), then weight bits.
  void WriteMeta(int64_t t, int r, const int32_t* topk_ids, const float* topk_weights,
                 int32_t* meta) const;
  // The transports: send rows (setting out->x, out->y; returning the received routing entries),
  // and return the outputs.
  absl::StatusOr<const int32_t*> SendShared(const float* x, const int32_t* topk_ids,
                                            const float* topk_weights, Dispatched* out);
  absl::StatusOr<const int32_t*> SendAllToAll(const float* x, const int32_t* topk_ids,
                                              const float* topk_weights, Dispatched* out);
  absl::Status CombineShared(const DispatchHandle& h, float* out);
  absl::Status CombineAllToAll(const DispatchHandle& h, float* out);
  absl::Status EnsureWindow(int64_t rows);
  absl::Status Reserve(RowMemory::Buffer* b, int64_t elements) {
    return memory_->Reserve(b, static_cast<size_t>(elements) * sizeof(float));
  }
  char* Segment(int rank) { return window_->segment(rank); }
  float* SegmentX(int rank) { return reinterpret_cast<float*>(Segment(rank)); }
  float* SegmentY(int rank) { return SegmentX(rank) + capacity_ * hidden_; }
  int32_t* SegmentMeta(int rank) {
    return reinterpret_cast<int32_t*>(SegmentY(rank) + capacity_ * hidden_);
  }

  Communicator* comm_;
  const ExpertPlacement* placement_;
  int64_t hidden_, top_k_;
  Transport transport_;
  RowMemory* memory_;
  // Shared-memory transport: per rank [x rows | y rows | meta rows] of capacity_ rows each.
  std::unique_ptr<SharedWindow> window_;
  int64_t capacity_ = 0;
  // In `memory_`: the counts' exchange, the all-to-all-v transport's rows, the received routing.
  RowMemory::Buffer counts_send_, counts_recv_, send_, meta_send_, recv_, meta_recv_, y_, back_;
  RowMemory::Buffer ids_, weights_;
  // Host: the routing when the memory is not the host's, and the packing plan.
  std::vector<int32_t> ids_host_, pack_token_, meta_host_;
  std::vector<float> weights_host_;
  std::vector<int64_t> src_rows_;
};

}  // namespace moe

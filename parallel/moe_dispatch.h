// MoE dispatch and combine over all-to-all-v, shaped like DeepEP's Buffer:
//   dispatch(x, topk_ids, topk_weights) -> (rows for my local experts, handle)
//   combine(y, handle)                  -> outputs in the original token order
// A token travels once to each rank hosting at least one of its experts (several of its experts
// on one rank share the row); the row carries the token's top-k entries filtered to that rank,
// as local expert indices (-1 elsewhere) and routing weights. The receiver computes
// y_row = sum_j weight_j * expert_j(x_row) over its entries; combine returns each row to its
// origin and sums the rows of each token. Callers never see counts, offsets or permutations.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tensor.h"
#include "parallel/communicator.h"
#include "parallel/shard_plan.h"

namespace moe {

struct DispatchHandle {
  int64_t num_tokens = 0;
  std::vector<size_t> send_rows;      // rows sent to each rank
  std::vector<size_t> recv_rows;      // rows received from each rank
  std::vector<int64_t> sent_token;    // the source token of each sent row, packed by rank
};

struct Dispatched {
  Tensor x;                           // [rows, hidden]
  std::vector<int32_t> local_expert;  // [rows, top_k]: local expert index, -1 for none
  std::vector<float> weight;          // [rows, top_k]
  DispatchHandle handle;
  int64_t rows() const { return x.empty() ? 0 : x.dim(0); }
};

class MoeDispatcher {
 public:
  MoeDispatcher(Communicator* comm, const ExpertPlacement* placement, int64_t hidden,
                int64_t top_k);

  // x [num_tokens, hidden]; topk_ids / topk_weights [num_tokens, top_k] (global expert ids).
  absl::StatusOr<Dispatched> Dispatch(const float* x, int64_t num_tokens, const int32_t* topk_ids,
                                      const float* topk_weights);
  // y [rows, hidden] as received; returns [num_tokens, hidden].
  absl::StatusOr<Tensor> Combine(const Tensor& y, const DispatchHandle& handle);

  // Hidden-state bytes this rank sent and received (both directions), for benchmarks.
  uint64_t payload_bytes() const { return payload_bytes_; }

 private:
  Communicator* comm_;
  const ExpertPlacement* placement_;
  int64_t hidden_, top_k_;
  uint64_t payload_bytes_ = 0;
};

}  // namespace moe

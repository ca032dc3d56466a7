// The engine's basic layers, on any device: each holds its weights where its Ops (kernels/ops.h)
// computes and runs only those ops. A Linear holds its shard of a weight: a range of output rows
// (column parallel) or of input columns (row parallel). A row-parallel product is a partial sum;
// the block that owns it (attention, the MLP, the MoE layer) adds its partial terms and sums them
// over the TP group with one all-reduce per block.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "checkpoint/checkpoint.h"
#include "checkpoint/weight_names.h"
#include "common/tensor.h"
#include "common/weight_matrix.h"
#include "kernels/ops.h"
#include "parallel/communicator.h"
#include "parallel/shard_plan.h"

namespace moe {

// y = x W^T for a weight stored [out, in], kept in the checkpoint's format (see WeightMatrix). `rows` selects output rows (column parallel),
// `cols` input columns (row parallel); at most one is not the full range.
class Linear {
 public:
  Linear() = default;
  static absl::StatusOr<Linear> Load(Ops& ops, Checkpoint& ck, const WeightSpec& spec, Range rows,
                                     Range cols);
  static absl::StatusOr<Linear> LoadFull(Ops& ops, Checkpoint& ck, const WeightSpec& spec) {
    return Load(ops, ck, spec, {0, spec.shape[0]}, {0, spec.shape[1]});
  }
  // The float32 weight `w` [out, in], owned by the Linear.
  static absl::StatusOr<Linear> FromTensor(Ops& ops, Tensor w);
  // A weight placed by the caller.
  static Linear FromPlaced(Ops& ops, PlacedMatrix w);
  // Adds `spec`'s bias (rows `rows` of it) to every output; a row-parallel projection loads it on
  // one rank of the group only, so the summed partials hold it once.
  absl::Status LoadBias(Checkpoint& ck, const WeightSpec& spec, Range rows);
  // x [n, in] -> y [n, out] (+ bias), rows of y `ldy` floats apart (default: out).
  void Forward(const float* x, int64_t n, float* y, int64_t ldy = -1) const;
  int64_t out_features() const { return weight_.rows(); }
  int64_t in_features() const { return weight_.cols(); }
  const PlacedMatrix& weight() const { return weight_; }

 private:
  Ops* ops_ = nullptr;
  PlacedMatrix weight_;      // [out_local, in_local], as the checkpoint stores it
  DeviceArray<float> bias_;  // [out_local] or empty
};

class RmsNorm {
 public:
  RmsNorm() = default;
  // With `unit_offset` (Gemma) the scale is 1 + weight.
  static absl::StatusOr<RmsNorm> Load(Ops& ops, Checkpoint& ck, const WeightSpec& spec, double eps,
                                      bool unit_offset = false);
  // The norm over `weight` (host memory), for weights sliced or built by the caller.
  static RmsNorm FromTensor(Ops& ops, Tensor weight, double eps);
  // y and x may alias; rows are `ld` apart.
  void Forward(const float* x, int64_t n, float* y, int64_t ld = -1) const;
  int64_t dim() const { return weight_.size(); }
  const float* weight() const { return weight_.data(); }
  float eps() const { return eps_; }

 private:
  Ops* ops_ = nullptr;
  DeviceArray<float> weight_;
  float eps_ = 1e-6f;
};

// The embedding, split over the TP group by vocabulary rows; partial lookups are summed.
class VocabParallelEmbedding {
 public:
  VocabParallelEmbedding() = default;
  static absl::StatusOr<VocabParallelEmbedding> Load(Ops& ops, Checkpoint& ck,
                                                     const WeightSpec& spec, Range rows,
                                                     Communicator* tp);
  // [n, hidden] for the tokens (device memory).
  absl::StatusOr<DeviceArray<float>> Forward(const int32_t* tokens, int64_t n) const;

 private:
  Ops* ops_ = nullptr;
  PlacedMatrix weight_;  // rows dequantized as tokens look them up
  Range rows_;
  Communicator* tp_ = nullptr;
};

// lm_head, split over the TP group by vocabulary rows; the full logits are gathered.
class ParallelLmHead {
 public:
  ParallelLmHead() = default;
  static absl::StatusOr<ParallelLmHead> Load(Ops& ops, Checkpoint& ck, const WeightSpec& spec,
                                             int tp_size, Communicator* tp);
  absl::StatusOr<DeviceArray<float>> Forward(const float* x, int64_t n) const;  // [n, vocab]
  int64_t vocab() const { return vocab_; }

 private:
  Ops* ops_ = nullptr;
  Linear local_;
  int64_t vocab_ = 0;
  int tp_size_ = 1;
  Communicator* tp_ = nullptr;
};

}  // namespace moe

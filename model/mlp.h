// The SiLU-gated MLP: down_proj(silu(gate_proj(x)) * up_proj(x)). Used for the dense layers, the
// shared experts (both split over the TP group by intermediate rows) and each routed expert.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "checkpoint/checkpoint.h"
#include "model/layers.h"
#include "parallel/shard_plan.h"

namespace moe {

class GatedMlp {
 public:
  GatedMlp() = default;
  // `prefix` like "model.layers.0.mlp."; `inter` the full intermediate size, of which this rank
  // holds the rows in `part`.
  static absl::StatusOr<GatedMlp> Load(Checkpoint& ck, const std::string& prefix, int64_t hidden,
                                       int64_t inter, Range part);
  // y [n, hidden] = this rank's partial sum (complete when part covers all rows).
  void Forward(const float* x, int64_t n, float* y) const;
  int64_t intermediate() const { return down_.in_features(); }

 private:
  Linear gate_up_;  // [2 * inter_local, hidden]: gate rows, then up rows
  Linear down_;     // [hidden, inter_local]
};

}  // namespace moe

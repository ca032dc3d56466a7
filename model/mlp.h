// The gated MLP: down_proj(act(gate_proj(x)) * up_proj(x)), act SiLU (or Gemma's GELU-tanh).
// Used for the dense layers, the shared experts (both split over the TP group by intermediate
// rows) and each routed expert.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "checkpoint/checkpoint.h"
#include "checkpoint/weight_names.h"
#include "common/model_config.h"
#include "model/layers.h"
#include "parallel/shard_plan.h"

namespace moe {

class GatedMlp {
 public:
  GatedMlp() = default;
  // This rank holds the intermediate rows `part` of the full weights `w`.
  static absl::StatusOr<GatedMlp> Load(Ops& ops, Checkpoint& ck, const MlpWeights& w, Range part,
                                       Activation act = Activation::kSilu);
  // Llama 4's fused expert `expert`: gate_up [E, hidden, 2 I] and down [E, I, hidden] hold
  // x -> x W layouts; transposed here into float32 [out, in] projections.
  static absl::StatusOr<GatedMlp> LoadStacked(Ops& ops, Checkpoint& ck, const WeightSpec& gate_up,
                                              const WeightSpec& down, int64_t expert,
                                              Activation act);
  // y [n, hidden] = this rank's partial sum (complete when part covers all rows).
  void Forward(const float* x, int64_t n, float* y) const;
  int64_t intermediate() const { return down_.in_features(); }
  // Its projections, for a MoE layer's grouped experts (Ops::RoutedExperts).
  Ops::Expert weights() const { return {&gate_.weight(), &up_.weight(), &down_.weight()}; }

 private:
  Ops* ops_ = nullptr;
  Linear gate_;  // [inter_local, hidden]
  Linear up_;    // [inter_local, hidden]
  Linear down_;  // [hidden, inter_local]
  Activation act_ = Activation::kSilu;
};

}  // namespace moe

// EPLB while serving: the coordinator keeps the tokens each MoE layer routed to each expert over a
// sliding window of recent steps (the workers report them with every step), and every
// `interval_steps` steps computes each layer's balanced placement (parallel/eplb.h) from that
// window. When the new placements would lower the load of the most loaded rank, the next step
// plan carries them, and every rank moves its experts before running that step — a step boundary,
// so no request sees a half-moved layer.
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

#include "moe/v1/cluster.pb.h"
#include "parallel/eplb.h"

namespace moe {

struct ExpertBalancerOptions {
  int64_t experts = 0;         // routed experts per MoE layer
  int64_t moe_layers = 0;      // decoder MoE layers
  EplbOptions eplb;            // world, redundant, groups
  int64_t interval_steps = 0;  // 0: never rebalance
  // The counts considered, in steps (rounded up to whole intervals; 0: one interval).
  int64_t window_steps = 0;
  double min_gain = 0.02;  // move only when the max rank load drops by this fraction
};

class ExpertBalancer {
 public:
  // `initial`: the placement the workers start from (ShardPlan's).
  ExpertBalancer(ExpertBalancerOptions options, ExpertPlacement initial);

  // A step's counts, as StepResult.expert_tokens carries them.
  void Observe(const google::protobuf::RepeatedField<int64_t>& counts);
  // When a rebalance is due and worth it, adds the new placements to `plan` and adopts them.
  bool MaybeRebalance(moe::v1::StepPlan* plan);
  // The workers were relaunched from the initial placement: forget what was moved and counted.
  void Reset();

  int64_t rebalances() const { return rebalances_; }
  // max / mean rank load over the window under the current placements, averaged over the layers
  // (1: even).
  double imbalance() const;

 private:
  std::vector<double> WindowLoad(int64_t layer) const;
  // A new, empty newest interval; the oldest leave the window.
  void StartInterval();

  ExpertBalancerOptions o_;
  ExpertPlacement initial_;
  std::vector<ExpertPlacement> current_;        // per layer
  std::deque<std::vector<int64_t>> intervals_;  // the window: per interval [layers x experts]
  int64_t steps_ = 0;                           // in the newest interval
  int64_t rebalances_ = 0;
};

}  // namespace moe

#include "coordinator/expert_balancer.h"

#include <algorithm>

#include "common/logging.h"

namespace moe {

ExpertBalancer::ExpertBalancer(ExpertBalancerOptions options, ExpertPlacement initial)
    : o_(std::move(options)), initial_(std::move(initial)) {
  Reset();
}

void ExpertBalancer::Reset() {
  current_.assign(static_cast<size_t>(o_.moe_layers), initial_);
  intervals_.clear();
  steps_ = 0;
}

void ExpertBalancer::Observe(const google::protobuf::RepeatedField<int64_t>& counts) {
  const size_t per_layer = static_cast<size_t>(o_.experts),
               layers = static_cast<size_t>(o_.moe_layers);
  if (per_layer == 0 || layers == 0) return;
  if (intervals_.empty() || (o_.interval_steps > 0 && steps_ >= o_.interval_steps)) {
    StartInterval();
  }
  std::vector<int64_t>& sum = intervals_.back();
  const size_t n = static_cast<size_t>(counts.size());
  if (n >= layers * per_layer) {  // per layer (the MTP layer's row after them is not balanced)
    for (size_t i = 0; i < layers * per_layer; ++i) sum[i] += counts[static_cast<int>(i)];
  } else if (n == per_layer) {  // all layers together: the same load for every layer
    for (size_t l = 0; l < layers; ++l) {
      for (size_t e = 0; e < per_layer; ++e) sum[l * per_layer + e] += counts[static_cast<int>(e)];
    }
  }
  ++steps_;
}

void ExpertBalancer::StartInterval() {
  intervals_.emplace_back(static_cast<size_t>(o_.moe_layers * o_.experts), 0);
  steps_ = 0;
  const int64_t keep = std::max<int64_t>(
      1, o_.interval_steps > 0 ? (o_.window_steps + o_.interval_steps - 1) / o_.interval_steps : 1);
  while (static_cast<int64_t>(intervals_.size()) > keep) intervals_.pop_front();
}

std::vector<double> ExpertBalancer::WindowLoad(int64_t layer) const {
  std::vector<double> load(static_cast<size_t>(o_.experts), 0.0);
  for (const std::vector<int64_t>& interval : intervals_) {
    for (int64_t e = 0; e < o_.experts; ++e) {
      load[static_cast<size_t>(e)] +=
          static_cast<double>(interval[static_cast<size_t>(layer * o_.experts + e)]);
    }
  }
  return load;
}

bool ExpertBalancer::MaybeRebalance(moe::v1::StepPlan* plan) {
  if (o_.interval_steps <= 0 || intervals_.empty() || steps_ < o_.interval_steps) return false;
  std::vector<ExpertPlacement> next;
  double before = 0, after = 0;
  for (int64_t l = 0; l < o_.moe_layers; ++l) {
    const std::vector<double> load = WindowLoad(l);
    auto placed = BalanceExperts(load, o_.eplb);
    if (!placed.ok()) {
      MOE_LOG(WARNING) << "EPLB: " << placed.status();
      return false;
    }
    const std::vector<double> old_ranks = RankLoads(current_[static_cast<size_t>(l)], load);
    const std::vector<double> new_ranks = RankLoads(*placed, load);
    before += *std::max_element(old_ranks.begin(), old_ranks.end());
    after += *std::max_element(new_ranks.begin(), new_ranks.end());
    next.push_back(std::move(*placed));
  }
  StartInterval();  // the next interval is counted from here
  if (before <= 0 || after > before * (1.0 - o_.min_gain)) return false;
  for (const ExpertPlacement& p : next) {
    moe::v1::LayerExperts* layer = plan->add_expert_placements();
    for (int r = 0; r < p.world(); ++r) {
      layer->add_ranks()->mutable_experts()->Add(p.LocalExperts(r).begin(),
                                                 p.LocalExperts(r).end());
    }
  }
  current_ = std::move(next);
  ++rebalances_;
  MOE_LOG(INFO) << "EPLB: step " << plan->step() << " moves the experts: the most loaded rank's "
                << "tokens over the window, summed over " << o_.moe_layers << " layers, " << before
                << " -> " << after;
  return true;
}

double ExpertBalancer::imbalance() const {
  if (o_.moe_layers == 0 || intervals_.empty()) return 1.0;
  double sum = 0;
  for (int64_t l = 0; l < o_.moe_layers; ++l) {
    sum += Imbalance(current_[static_cast<size_t>(l)], WindowLoad(l));
  }
  return sum / static_cast<double>(o_.moe_layers);
}

}  // namespace moe

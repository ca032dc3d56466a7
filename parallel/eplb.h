// Expert-parallel load balancing (EPLB, after DeepSeek-V3's inference system): given each routed
// expert's observed load in one MoE layer, choose which experts get the `redundant` extra replicas
// and which rank hosts each of the E + R physical experts, so that the most loaded rank carries as
// little as possible. Every rank hosts (E + R) / W physical experts (never two copies of one); a
// replicated expert's tokens are split evenly over its replicas (ExpertPlacement::RankFor).
//
// Hierarchical, when the ranks span several nodes and the experts' routing groups (n_group) divide
// evenly over them: whole groups are first packed onto nodes by load (group-limited routing then
// keeps a token's traffic mostly inside a few nodes), replicas are chosen per node, and each
// node's physical experts are packed onto its ranks. Otherwise the same two steps run over all
// ranks at once. Replication is greedy on load per replica; packing is longest-processing-time
// first with a cap of (E + R) / W per rank.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/shard_plan.h"

namespace moe {

struct EplbOptions {
  int world = 1;
  int64_t redundant = 0;      // extra physical experts beyond one per logical expert
  int ranks_per_node = 0;     // 0: every rank on one node
  int64_t expert_groups = 1;  // the router's n_group
};

// `load[e]` >= 0 for every logical expert. Errors name what cannot be placed.
absl::StatusOr<ExpertPlacement> BalanceExperts(const std::vector<double>& load,
                                               const EplbOptions& options);

// What a placement does to a load: each rank's share (a replicated expert's load split evenly).
std::vector<double> RankLoads(const ExpertPlacement& placement, const std::vector<double>& load);
// max / mean of RankLoads (1 is perfect balance).
double Imbalance(const ExpertPlacement& placement, const std::vector<double>& load);

}  // namespace moe

#include "parallel/eplb.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"

namespace moe {
namespace {

// Adds replicas to the experts `members` (loads `load`) until they have `slots` physical experts
// in all, each time to the expert whose load per replica is highest (lower id first on ties), at
// most `cap` replicas each. Returns the replica count per member.
std::vector<int64_t> Replicate(const std::vector<int64_t>& members, const std::vector<double>& load,
                               int64_t slots, int64_t cap) {
  std::vector<int64_t> count(members.size(), 1);
  for (int64_t extra = slots - static_cast<int64_t>(members.size()); extra > 0; --extra) {
    size_t best = members.size();
    for (size_t i = 0; i < members.size(); ++i) {
      if (count[i] >= cap) continue;
      const double per = load[members[i]] / count[i];
      if (best == members.size() || per > load[members[best]] / count[best]) best = i;
    }
    if (best == members.size()) break;  // every expert at the cap (the caller checked it fits)
    ++count[best];
  }
  return count;
}

// Packs the physical experts (expert, load per replica) onto `ranks`, `per_rank` each: heaviest
// first, each to the least loaded rank that has room and does not hold that expert yet.
void Pack(const std::vector<std::pair<int64_t, double>>& physical, const std::vector<int>& ranks,
          int64_t per_rank, std::vector<std::vector<int64_t>>* local) {
  std::vector<size_t> order(physical.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return physical[a].second > physical[b].second; });
  std::vector<double> sum(ranks.size(), 0.0);
  for (size_t i : order) {
    const auto [expert, weight] = physical[i];
    size_t best = ranks.size();
    for (size_t r = 0; r < ranks.size(); ++r) {
      const std::vector<int64_t>& held = (*local)[static_cast<size_t>(ranks[r])];
      if (static_cast<int64_t>(held.size()) >= per_rank) continue;
      if (std::find(held.begin(), held.end(), expert) != held.end()) continue;
      if (best == ranks.size() || sum[r] < sum[best]) best = r;
    }
    // Every rank with room may already hold this expert (rare: its replicas are placed one by
    // one among others of equal weight); it then goes to the first with room, where it is a
    // second copy that takes no tokens (FromRanks keeps one).
    if (best == ranks.size()) {
      for (size_t r = 0; r < ranks.size() && best == ranks.size(); ++r) {
        if (static_cast<int64_t>((*local)[static_cast<size_t>(ranks[r])].size()) < per_rank)
          best = r;
      }
    }
    (*local)[static_cast<size_t>(ranks[best])].push_back(expert);
    sum[best] += weight;
  }
}

// Replicates `members` to `slots` physical experts and packs them onto `ranks`.
void PlaceOn(const std::vector<int64_t>& members, const std::vector<double>& load,
             const std::vector<int>& ranks, int64_t per_rank,
             std::vector<std::vector<int64_t>>* local) {
  const int64_t slots = per_rank * static_cast<int64_t>(ranks.size());
  const std::vector<int64_t> count =
      Replicate(members, load, slots, static_cast<int64_t>(ranks.size()));
  std::vector<std::pair<int64_t, double>> physical;
  for (size_t i = 0; i < members.size(); ++i) {
    for (int64_t c = 0; c < count[i]; ++c)
      physical.push_back({members[i], load[members[i]] / count[i]});
  }
  Pack(physical, ranks, per_rank, local);
}

}  // namespace

absl::StatusOr<ExpertPlacement> BalanceExperts(const std::vector<double>& load,
                                               const EplbOptions& o) {
  const int64_t experts = static_cast<int64_t>(load.size());
  const int world = o.world;
  if (world < 1 || experts < 1) {
    return absl::InvalidArgumentError("EPLB: needs at least one rank and one expert");
  }
  if (o.redundant < 0 || (experts + o.redundant) % world != 0) {
    return absl::InvalidArgumentError(absl::StrCat("--redundant-experts ", o.redundant, ": the ",
                                                   experts, " routed experts plus the redundant ",
                                                   "ones must divide evenly over the ", world,
                                                   " ranks"));
  }
  if (experts < world) {
    return absl::InvalidArgumentError(absl::StrCat(
        "EPLB: ", experts, " routed experts cannot give each of ", world, " ranks a distinct one"));
  }
  if (o.redundant > experts * (world - 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--redundant-experts ", o.redundant, ": at most ", experts * (world - 1),
                     " (one copy of each expert per rank) over ", world, " ranks"));
  }
  for (double l : load) {
    if (!(l >= 0)) return absl::InvalidArgumentError("EPLB: expert loads must be >= 0");
  }
  const int64_t per_rank = (experts + o.redundant) / world;
  std::vector<std::vector<int64_t>> local(static_cast<size_t>(world));
  const int per_node = o.ranks_per_node > 0 ? o.ranks_per_node : world;
  const int nodes = world / per_node;
  const int64_t groups = std::max<int64_t>(1, o.expert_groups);
  const bool hierarchical = nodes > 1 && world % per_node == 0 && groups % nodes == 0 &&
                            experts % groups == 0 && (experts + o.redundant) % nodes == 0;
  if (hierarchical) {
    // 1. Whole groups onto nodes, groups / nodes each, by their total load.
    const int64_t group_size = experts / groups;
    std::vector<std::pair<int64_t, double>> group_load;
    for (int64_t g = 0; g < groups; ++g) {
      double sum = 0;
      for (int64_t e = g * group_size; e < (g + 1) * group_size; ++e) sum += load[e];
      group_load.push_back({g, sum});
    }
    std::vector<std::vector<int64_t>> node_groups(static_cast<size_t>(nodes));
    std::vector<int> node_ids(static_cast<size_t>(nodes));
    std::iota(node_ids.begin(), node_ids.end(), 0);
    Pack(group_load, node_ids, groups / nodes, &node_groups);
    // 2. Each node replicates its experts to its share of the slots and packs them on its ranks.
    for (int n = 0; n < nodes; ++n) {
      std::vector<int64_t> members;
      for (int64_t g : node_groups[static_cast<size_t>(n)]) {
        for (int64_t e = g * group_size; e < (g + 1) * group_size; ++e) members.push_back(e);
      }
      std::vector<int> ranks(static_cast<size_t>(per_node));
      std::iota(ranks.begin(), ranks.end(), n * per_node);
      PlaceOn(members, load, ranks, per_rank, &local);
    }
  } else {
    std::vector<int64_t> members(static_cast<size_t>(experts));
    std::iota(members.begin(), members.end(), 0);
    std::vector<int> ranks(static_cast<size_t>(world));
    std::iota(ranks.begin(), ranks.end(), 0);
    PlaceOn(members, load, ranks, per_rank, &local);
  }
  return ExpertPlacement::FromRanks(experts, std::move(local));
}

std::vector<double> RankLoads(const ExpertPlacement& p, const std::vector<double>& load) {
  std::vector<double> out(static_cast<size_t>(p.world()), 0.0);
  for (int r = 0; r < p.world(); ++r) {
    for (int64_t e : p.LocalExperts(r)) out[static_cast<size_t>(r)] += load[e] / p.Replicas(e);
  }
  return out;
}

double Imbalance(const ExpertPlacement& p, const std::vector<double>& load) {
  const std::vector<double> ranks = RankLoads(p, load);
  const double sum = std::accumulate(ranks.begin(), ranks.end(), 0.0);
  if (sum <= 0) return 1.0;
  return *std::max_element(ranks.begin(), ranks.end()) / (sum / static_cast<double>(ranks.size()));
}

}  // namespace moe

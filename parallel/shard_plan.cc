#include "parallel/shard_plan.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "parallel/eplb.h"

namespace moe {

Range EvenSplit(int64_t n, int parts, int i) {
  const int64_t base = n / parts, extra = n % parts;
  const int64_t begin = i * base + std::min<int64_t>(i, extra);
  return {begin, begin + base + (i < extra ? 1 : 0)};
}

ExpertPlacement ExpertPlacement::Contiguous(int64_t num_experts, int world) {
  ExpertPlacement p;
  p.replicas_.resize(static_cast<size_t>(num_experts));
  p.local_.resize(static_cast<size_t>(world));
  for (int r = 0; r < world; ++r) {
    const Range block = EvenSplit(num_experts, world, r);
    for (int64_t e = block.begin; e < block.end; ++e) {
      p.replicas_[e].push_back(r);
      p.local_[r].push_back(e);
    }
  }
  return p;
}

absl::StatusOr<ExpertPlacement> ExpertPlacement::FromRanks(
    int64_t num_experts, std::vector<std::vector<int64_t>> local) {
  ExpertPlacement p;
  p.replicas_.resize(static_cast<size_t>(num_experts));
  for (size_t r = 0; r < local.size(); ++r) {
    std::vector<int64_t>& l = local[r];
    std::sort(l.begin(), l.end());
    l.erase(std::unique(l.begin(), l.end()), l.end());
    for (int64_t e : l) {
      if (e < 0 || e >= num_experts) {
        return absl::InvalidArgumentError(absl::StrCat(
            "expert placement: rank ", r, " hosts expert ", e, " outside [0, ", num_experts, ")"));
      }
      p.replicas_[static_cast<size_t>(e)].push_back(static_cast<int>(r));
    }
  }
  for (int64_t e = 0; e < num_experts; ++e) {
    if (p.replicas_[static_cast<size_t>(e)].empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("expert placement: expert ", e, " is hosted on no rank"));
    }
  }
  p.local_ = std::move(local);
  return p;
}

int64_t ExpertPlacement::LocalIndex(int rank, int64_t expert) const {
  const auto& l = local_[rank];
  auto it = std::lower_bound(l.begin(), l.end(), expert);
  return it != l.end() && *it == expert ? it - l.begin() : -1;
}

absl::StatusOr<ShardPlan> ShardPlan::Create(const ModelConfig& config, int world_size, int tp_size,
                                            int64_t redundant_experts) {
  if (world_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("world size must be >= 1, got ", world_size));
  }
  if (tp_size < 1 || world_size % tp_size != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tp ", tp_size, " must be >= 1 and divide the world size ", world_size));
  }
  if (config.num_attention_heads % tp_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat("--tp ", tp_size,
                                                   " does not divide num_attention_heads ",
                                                   config.num_attention_heads, " of config.json"));
  }
  const int64_t kv = config.num_key_value_heads;
  if (!config.is_mla() && kv % tp_size != 0 && tp_size % kv != 0) {
    return absl::InvalidArgumentError(absl::StrCat("--tp ", tp_size,
                                                   " must divide num_key_value_heads ", kv,
                                                   " of config.json or be a multiple of it"));
  }
  ShardPlan p;
  p.config_ = config;
  p.world_ = world_size;
  p.tp_ = tp_size;
  if (redundant_experts == 0 || config.n_routed_experts == 0) {
    if (redundant_experts != 0) {
      return absl::InvalidArgumentError("--redundant-experts: the model has no routed experts");
    }
    p.experts_ = ExpertPlacement::Contiguous(config.n_routed_experts, world_size);
    return p;
  }
  EplbOptions eplb;
  eplb.world = world_size;
  eplb.redundant = redundant_experts;
  eplb.expert_groups = config.n_group;
  MOE_ASSIGN_OR_RETURN(
      p.experts_,
      BalanceExperts(std::vector<double>(static_cast<size_t>(config.n_routed_experts), 1.0), eplb));
  return p;
}

RankShard ShardPlan::Shard(int rank) const {
  RankShard s;
  s.rank = rank;
  s.tp_rank = TpRank(rank);
  s.dp_rank = DpRank(rank);
  s.heads = EvenSplit(config_.num_attention_heads, tp_, s.tp_rank);
  // GQA: the KV heads this rank's query heads read (shared by neighbouring ranks when the TP
  // group is larger than num_key_value_heads).
  const int64_t group =
      config_.num_attention_heads / std::max<int64_t>(1, config_.num_key_value_heads);
  s.kv_heads = {s.heads.begin / group, (s.heads.end - 1) / group + 1};
  s.vocab = EvenSplit(config_.vocab_size, tp_, s.tp_rank);
  s.dense_inter = EvenSplit(config_.intermediate_size, tp_, s.tp_rank);
  s.shared_inter = EvenSplit(config_.shared_intermediate_size(), tp_, s.tp_rank);
  s.experts = experts_.LocalExperts(rank);
  return s;
}

std::string ShardPlan::Describe() const {
  std::string out = absl::StrFormat("world %d = %d attention-DP groups x TP %d; EP %d\n", world_,
                                    dp_size(), tp_, world_);
  for (int r = 0; r < world_; ++r) {
    const RankShard s = Shard(r);
    absl::StrAppendFormat(
        &out, "  rank %d: dp %d tp %d heads [%d,%d) vocab [%d,%d) experts [%d..%d] (%d)\n", r,
        s.dp_rank, s.tp_rank, s.heads.begin, s.heads.end, s.vocab.begin, s.vocab.end,
        s.experts.empty() ? -1 : s.experts.front(), s.experts.empty() ? -1 : s.experts.back(),
        s.experts.size());
  }
  return out;
}

}  // namespace moe

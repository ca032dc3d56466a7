// ShardPlan: how one model is split over an engine of W ranks.
//   - Attention (MLA or GQA) is tensor parallel over groups of T ranks (query heads split, GQA's
//     KV heads with them; o_proj row-parallel),
//     and data parallel across the D = W / T groups (each owns different sequences and their
//     latent KV cache). Rank r is TP rank r % T of DP group r / T.
//   - Embedding and lm_head are vocab-parallel over the TP group; the dense MLP layers and the
//     shared experts are split over the TP group by intermediate rows.
//   - Routed experts are expert parallel over all W ranks, placed by an ExpertPlacement: contiguous
//     blocks, or with R redundant experts (EPLB, parallel/eplb.h) (E + R) / W per rank. The MoE
//     layers start from it and may each move to a placement of their own while serving.
// The coordinator, the workers and the planner all use this code.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"

namespace moe {

struct Range {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end - begin; }
  bool contains(int64_t x) const { return x >= begin && x < end; }
  bool operator==(const Range&) const = default;
};

// Part i of n items split into `parts` nearly equal ranges (the first n % parts get one more).
Range EvenSplit(int64_t n, int parts, int i);

// Which ranks compute which routed experts: each expert has one or more replica ranks (redundant
// copies of hot experts, EPLB), and a token's rows for it go to one of them.
class ExpertPlacement {
 public:
  static ExpertPlacement Contiguous(int64_t num_experts, int world);
  // Rank r hosts the experts `local[r]` (any order, a repeat counts once); every expert must be
  // hosted somewhere.
  static absl::StatusOr<ExpertPlacement> FromRanks(int64_t num_experts,
                                                   std::vector<std::vector<int64_t>> local);

  int64_t num_experts() const { return static_cast<int64_t>(replicas_.size()); }
  int world() const { return static_cast<int>(local_.size()); }
  // The rank that computes `expert` for the token with index `token` (spreads over replicas).
  int RankFor(int64_t expert, int64_t token) const {
    const auto& r = replicas_[expert];
    return r[static_cast<size_t>(token) % r.size()];
  }
  int Replicas(int64_t expert) const { return static_cast<int>(replicas_[expert].size()); }
  // The ranks hosting `expert`, ascending.
  const std::vector<int>& ReplicaRanks(int64_t expert) const { return replicas_[expert]; }
  // Experts hosted on `rank`, ascending; the position in this list is the local expert index.
  const std::vector<int64_t>& LocalExperts(int rank) const { return local_[rank]; }
  int64_t LocalIndex(int rank, int64_t expert) const;

 private:
  std::vector<std::vector<int>> replicas_;   // expert -> ranks
  std::vector<std::vector<int64_t>> local_;  // rank -> experts
};

struct RankShard {
  int rank = 0;
  int tp_rank = 0;
  int dp_rank = 0;
  Range heads;                   // attention heads of this TP rank
  Range kv_heads;                // GQA: the key/value heads those query heads read
  Range vocab;                   // embedding / lm_head rows
  Range dense_inter;             // intermediate rows of the dense MLP layers
  Range shared_inter;            // intermediate rows of the shared experts
  std::vector<int64_t> experts;  // routed experts computed here
};

class ShardPlan {
 public:
  // Errors name the flag or config field that makes the layout impossible.
  // With `redundant_experts` R > 0 every rank hosts (E + R) / W experts, the R extra replicas
  // placed by EPLB for an even load until observed loads say otherwise.
  static absl::StatusOr<ShardPlan> Create(const ModelConfig& config, int world_size, int tp_size,
                                          int64_t redundant_experts = 0);

  int world_size() const { return world_; }
  int tp_size() const { return tp_; }
  int dp_size() const { return world_ / tp_; }
  int TpRank(int rank) const { return rank % tp_; }
  int DpRank(int rank) const { return rank / tp_; }
  RankShard Shard(int rank) const;
  const ExpertPlacement& experts() const { return experts_; }
  std::string Describe() const;  // one line per rank

 private:
  ModelConfig config_;
  int world_ = 1;
  int tp_ = 1;
  ExpertPlacement experts_;
};

}  // namespace moe

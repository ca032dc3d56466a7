// ParallelContext: one rank's view of the engine — its shard of the plan, the world group (expert
// parallel all-to-all) and its tensor-parallel group (attention heads, vocab, dense layers).
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "parallel/communicator.h"
#include "parallel/row_memory.h"
#include "parallel/shard_plan.h"

namespace moe {

class ParallelContext {
 public:
  // Splits `world` into TP groups of `tp_size` consecutive ranks (ShardPlan::Create says what
  // `redundant_experts` does).
  static absl::StatusOr<std::unique_ptr<ParallelContext>> Create(
      const ModelConfig& config, std::unique_ptr<Communicator> world, int tp_size,
      int64_t redundant_experts = 0);
  // World size 1, no MPI.
  static std::unique_ptr<ParallelContext> Single(const ModelConfig& config);
  // The plan of `like` over other groups of the same ranks, whose collectives read and write
  // `memory` — a GPU engine's NCCL groups over device memory, for the layers' collectives.
  static std::unique_ptr<ParallelContext> Over(const ParallelContext& like,
                                               std::unique_ptr<Communicator> world,
                                               std::unique_ptr<Communicator> tp,
                                               std::unique_ptr<RowMemory> memory);

  const ShardPlan& plan() const { return plan_; }
  const RankShard& shard() const { return shard_; }
  int rank() const { return shard_.rank; }
  Communicator& world() const { return *world_; }
  Communicator& tp() const { return *tp_; }
  // Where the collectives' buffers live (a MoE dispatcher's, parallel/row_memory.h): null for host
  // memory.
  RowMemory* memory() const { return memory_.get(); }

 private:
  ParallelContext(ShardPlan plan, std::unique_ptr<Communicator> world,
                  std::unique_ptr<Communicator> tp);
  ShardPlan plan_;
  RankShard shard_;
  std::unique_ptr<Communicator> world_;
  std::unique_ptr<Communicator> tp_;
  std::unique_ptr<RowMemory> memory_;
};

}  // namespace moe

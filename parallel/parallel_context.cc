#include "parallel/parallel_context.h"

#include "common/status_macros.h"

namespace moe {

ParallelContext::ParallelContext(ShardPlan plan, std::unique_ptr<Communicator> world,
                                 std::unique_ptr<Communicator> tp)
    : plan_(std::move(plan)),
      shard_(plan_.Shard(world->rank())),
      world_(std::move(world)),
      tp_(std::move(tp)) {}

absl::StatusOr<std::unique_ptr<ParallelContext>> ParallelContext::Create(
    const ModelConfig& config, std::unique_ptr<Communicator> world, int tp_size,
    int64_t redundant_experts) {
  MOE_ASSIGN_OR_RETURN(ShardPlan plan,
                       ShardPlan::Create(config, world->size(), tp_size, redundant_experts));
  const int rank = world->rank();
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> tp,
                       world->Split(plan.DpRank(rank), plan.TpRank(rank)));
  return std::unique_ptr<ParallelContext>(
      new ParallelContext(std::move(plan), std::move(world), std::move(tp)));
}

std::unique_ptr<ParallelContext> ParallelContext::Single(const ModelConfig& config) {
  auto ctx = Create(config, MakeSelfCommunicator(), 1);
  MOE_CHECK_OK(ctx.status());
  return std::move(*ctx);
}

std::unique_ptr<ParallelContext> ParallelContext::Over(const ParallelContext& like,
                                                       std::unique_ptr<Communicator> world,
                                                       std::unique_ptr<Communicator> tp,
                                                       std::unique_ptr<RowMemory> memory) {
  MOE_CHECK(world->rank() == like.rank() && world->size() == like.world().size());
  std::unique_ptr<ParallelContext> ctx(
      new ParallelContext(like.plan_, std::move(world), std::move(tp)));
  ctx->memory_ = std::move(memory);
  return ctx;
}

}  // namespace moe

#include "worker/step_runner.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace moe {

StepRunner::StepRunner(Engine& engine)
    : engine_(engine), last_expert_counts_(engine.model().ExpertTokenCounts()) {}

absl::Status StepRunner::SharePlan(moe::v1::StepPlan* plan) {
  Communicator& world = engine_.parallel().world();
  if (world.size() == 1) return absl::OkStatus();
  std::string bytes;
  if (world.rank() == 0 && !plan->SerializeToString(&bytes)) {
    return absl::InternalError("cannot serialise the step plan");
  }
  uint64_t size = bytes.size();
  MOE_RETURN_IF_ERROR(world.WaitBroadcast(&size, sizeof(size), 0));
  bytes.resize(size);
  MOE_RETURN_IF_ERROR(world.Broadcast(bytes.data(), size, 0));
  if (world.rank() != 0 && !plan->ParseFromString(bytes)) {
    return absl::DataLossError("cannot parse the broadcast step plan");
  }
  return absl::OkStatus();
}

absl::StatusOr<StepOutput> StepRunner::Run(const moe::v1::StepPlan& plan) {
  const int n = plan.sequences_size();
  std::vector<SequenceStep> steps(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    const moe::v1::SequencePlan& p = plan.sequences(i);
    SequenceStep& s = steps[i];
    s.seq_id = p.seq_id();
    s.tokens.assign(p.tokens().begin(), p.tokens().end());
    s.start_pos = p.start_pos();
    s.block_table.assign(p.block_table().begin(), p.block_table().end());
    s.want_logits = p.sample();
    s.dp_group = p.dp_group();
    const moe::v1::SamplingSpec& sp = p.sampling();
    s.sampling = SamplingSpec{sp.temperature(), sp.top_k(), sp.top_p(), sp.seed()};
    s.sample_index = static_cast<uint64_t>(p.sample_index());
  }
  MOE_ASSIGN_OR_RETURN(StepResult result, engine_.Step(steps, /*return_logits=*/false));

  // decision[i] = sampled token + 1 for plan entry i (0: did not sample), then the expert
  // counts; only the TP-rank 0 of each DP group contributes its sequences' tokens.
  const std::vector<int64_t> counts = engine_.model().ExpertTokenCounts();
  std::vector<int64_t> sums(static_cast<size_t>(n) + counts.size(), 0);
  if (engine_.parallel().shard().tp_rank == 0) {
    for (size_t j = 0; j < result.seq_ids.size(); ++j) {
      const int64_t id = result.seq_ids[j];
      const auto it = std::find_if(steps.begin(), steps.end(),
                                   [id](const SequenceStep& s) { return s.seq_id == id; });
      sums[it - steps.begin()] = result.tokens[j] + 1;
    }
  }
  for (size_t e = 0; e < counts.size(); ++e) sums[n + e] = counts[e] - last_expert_counts_[e];
  last_expert_counts_ = counts;
  Communicator& world = engine_.parallel().world();
  if (world.size() > 1) MOE_RETURN_IF_ERROR(world.AllReduceSum(sums.data(), sums.size()));

  StepOutput out;
  for (int i = 0; i < n; ++i) {
    if (sums[i] == 0) continue;
    out.seq_ids.push_back(plan.sequences(i).seq_id());
    out.tokens.push_back(static_cast<int32_t>(sums[i] - 1));
  }
  out.expert_tokens.assign(sums.begin() + n, sums.end());
  return out;
}

}  // namespace moe

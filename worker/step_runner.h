// One iteration of the serving loop on every rank of an engine. The leader (world rank 0) holds
// the coordinator's plan; it is broadcast to every rank, every rank runs the engine, the TP-rank 0
// of each attention-DP group samples its sequences, and one sum over the world gives every rank
// the sampled tokens and the step's per-expert token counts.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "moe/v1/cluster.pb.h"
#include "worker/engine.h"

namespace moe {

struct StepOutput {
  std::vector<int64_t> seq_ids;        // sequences that sampled, in plan order
  std::vector<int32_t> tokens;         // their tokens
  std::vector<int64_t> expert_tokens;  // tokens routed to each expert this step, all ranks
};

class StepRunner {
 public:
  explicit StepRunner(Engine& engine);

  // Collective. On the leader `plan` is the coordinator's and is sent; on the others it is
  // replaced by what the leader sent. Idle ranks sleep while they wait.
  absl::Status SharePlan(moe::v1::StepPlan* plan);
  // Collective: runs a shared plan.
  absl::StatusOr<StepOutput> Run(const moe::v1::StepPlan& plan);

 private:
  Engine& engine_;
  std::vector<int64_t> last_expert_counts_;
};

}  // namespace moe

// One iteration of the serving loop on every rank of an engine. The leader (world rank 0) holds
// the coordinator's plan; it is broadcast to every rank, and every rank runs the engine step (which
// gives every rank the sampled tokens and the per-expert counts); the leader returns the result.
#pragma once

#include "absl/status/statusor.h"
#include "moe/v1/cluster.pb.h"
#include "worker/engine.h"

namespace moe {

class StepRunner {
 public:
  explicit StepRunner(Engine& engine) : engine_(engine) {}

  // Collective. On the leader `plan` is the coordinator's and is sent; on the others it is
  // replaced by what the leader sent. Idle ranks sleep while they wait.
  absl::Status SharePlan(moe::v1::StepPlan* plan);
  // Collective: runs a shared plan; the result for the coordinator (the same on every rank).
  absl::StatusOr<moe::v1::StepResult> Run(const moe::v1::StepPlan& plan);

 private:
  Engine& engine_;
};

}  // namespace moe

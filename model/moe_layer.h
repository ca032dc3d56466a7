// The DeepSeek-V3 MoE block: router -> dispatch to the ranks hosting the chosen experts -> local
// expert MLPs -> combine -> + shared experts. Within a TP group the tokens are replicated, so each
// TP rank routes and dispatches its 1/T slice; the shared expert is split by intermediate rows;
// one all-reduce over the TP group sums both.
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "checkpoint/checkpoint.h"
#include "checkpoint/weight_bytes.h"
#include "common/model_config.h"
#include "model/mlp.h"
#include "parallel/moe_dispatch.h"
#include "parallel/parallel_context.h"
#include "parallel/two_batch_overlap.h"

namespace moe {

class MoeLayer {
 public:
  static absl::StatusOr<std::unique_ptr<MoeLayer>> Load(Ops& ops, const ModelConfig& config,
                                                        Checkpoint& ck,
                                                        const DecoderLayerWeights& w,
                                                        const ParallelContext& ctx,
                                                        WeightBytes* bytes);
  // out [n, hidden] = routed + shared output for x [n, hidden] (complete on every TP rank). The
  // dispatch and combine run through `mb` (on its own dispatcher: two micro-batches' exchanges
  // may be in flight at once).
  absl::Status Forward(const float* x, int64_t n, float* out, const MicroBatchContext& mb = {});
  // Tokens this rank routed to each expert so far (global expert ids).
  std::vector<int64_t> expert_tokens() const;
  // Whether Forward only enqueues device work, reading nothing back (it can be recorded): one rank
  // holding each expert once, in order (replicas map the choices on the host, and the dispatch
  // between ranks runs there).
  bool runs_on_device() const { return ctx_.world().size() == 1 && identity_placement_; }
  // Moves to `placement` (EPLB; of this layer's experts over the world's ranks — the model checks):
  // loads the experts it gives this rank that it does not hold yet (memory-mapped, so only their
  // pages are read), drops the others. Between steps, on every rank.
  absl::Status SetPlacement(const ExpertPlacement& placement, Checkpoint& ck);

 private:
  MoeLayer(Ops& ops, const ModelConfig& config, const ParallelContext& ctx,
           const DecoderLayerWeights& w);
  absl::StatusOr<GatedMlp> LoadExpert(Checkpoint& ck, int64_t expert) const;
  // Places experts_ for Ops::RoutedExperts (after loading and after each move).
  absl::Status PlaceExperts();

  Ops& ops_;
  const ModelConfig& config_;
  const ParallelContext& ctx_;
  DeviceArray<float> gate_;        // [n_routed_experts, hidden]
  DeviceArray<float> bias_;        // [n_routed_experts] or empty
  std::vector<GatedMlp> experts_;  // this rank's routed experts, in LocalExperts order
  std::unique_ptr<Ops::ExpertSet> expert_set_;  // experts_ as RoutedExperts runs them
  bool identity_placement_ = false;             // one rank: local expert e is expert e
  std::unique_ptr<GatedMlp> shared_;
  DecoderLayerWeights weights_;  // the tensor names, for loading other experts later
  ExpertPlacement placement_;    // this layer's (the plan's until SetPlacement)
  MoeDispatcher dispatchers_[2];  // one per micro-batch (two-batch overlap)
  DeviceArray<int64_t> expert_tokens_;  // [n_routed_experts], counted where the routing is
};

}  // namespace moe

// What the engine needs from a backend: a model that runs one step's tokens through the decoder
// into its own latent KV cache, then hands back logits or sampled tokens: `DecoderModel`, over the
// CPU's op set (any parallel layout) or one GPU's.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "checkpoint/weight_bytes.h"
#include "common/tensor.h"
#include "kernels/cpu/sampler.h"
#include "model/forward_batch.h"
#include "model/kv_cache.h"
#include "parallel/shard_plan.h"

namespace moe {

// The latent KV cache a backend allocates: `blocks` blocks of `block_size` positions per layer.
struct KvCacheShape {
  int64_t blocks = 0;
  int64_t block_size = 64;
};

class ForwardModel {
 public:
  virtual ~ForwardModel() = default;

  // Runs the decoder over the batch's tokens, writing their latent KV into the cache, and
  // computes the logits of the token rows listed in `logit_rows`, kept until the next Forward.
  virtual absl::Status Forward(const std::vector<int32_t>& tokens, const ForwardBatch& batch,
                               const std::vector<int64_t>& logit_rows) = 0;
  // The last Forward's logits, [logit_rows.size(), vocab].
  virtual absl::StatusOr<Tensor> Logits() = 0;
  // One token per logit row of the last Forward (requests.size() == logit_rows.size()).
  virtual absl::StatusOr<std::vector<int32_t>> Sample(
      const std::vector<SampleRequest>& requests) = 0;

  // The MTP layer (speculative decoding), for backends that loaded it: runs it over `batch` — the
  // positions whose next token is known, rows `main_rows` of the last Forward, `next_tokens` one
  // per row — writing its cache rows, and returns the draft logits of `logit_rows` of `batch`.
  // With `from_last_draft` the rows are of the MTP layer's own last output instead (drafting
  // further tokens by applying it again).
  virtual bool has_mtp() const { return false; }
  virtual absl::StatusOr<Tensor> ForwardMtp(const std::vector<int64_t>& main_rows,
                                            const std::vector<int32_t>& next_tokens,
                                            const ForwardBatch& batch,
                                            const std::vector<int64_t>& logit_rows,
                                            bool from_last_draft = false) {
    return absl::UnimplementedError("this backend has no MTP layer");
  }

  // Tokens this rank routed to each expert so far: per MoE layer (the decoder's, then the MTP
  // layer's when loaded), [layers x n_routed_experts] layer-major; or [n_routed_experts] summed
  // over the layers by a backend that counts them together.
  virtual std::vector<int64_t> ExpertTokenCounts() const = 0;
  // Seconds the forward passes so far waited for the layers' collectives (the MoE dispatch and
  // combine): all of their time without two-batch overlap, the part not hidden with it.
  virtual double CollectiveWaitSeconds() const { return 0; }
  // EPLB: moves the decoder's MoE layers to their placements (one per MoE layer, in order), between
  // steps.
  virtual absl::Status SetExpertPlacement(const std::vector<ExpertPlacement>& layers) {
    return absl::UnimplementedError("this backend cannot move its experts");
  }
  // The latent KV cache when it is in host memory (the CPU backend), for moving a sequence's KV
  // between worker groups (prefill/decode disaggregation); null otherwise.
  virtual KvCache* host_kv_cache() { return nullptr; }
  // What this rank read from the checkpoint, by part.
  virtual const WeightBytes& weight_bytes() const = 0;
};

}  // namespace moe

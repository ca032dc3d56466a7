// DeepSeek-V3's multi-token prediction (MTP) module, one depth, as the checkpoints ship it
// (model.layers.<num_hidden_layers>.*): for row i of a step — the main model's final hidden state
// h_i (after model.norm, what lm_head reads) and the token that follows position i, t_{i+1} —
//   x      = eh_proj([enorm(embed_tokens(t_{i+1})) ; hnorm(h_i)])
//   x      = the layer's decoder block (MLA over its own cache rows, at position i; then its MoE)
//   logits = shared_head.head(shared_head.norm(x))
// are the draft logits of t_{i+2}. The module's embedding and head are its own tensors (the
// checkpoints store them in the layer). Sharded like a decoder layer: heads over TP, experts over
// EP, embedding and head by vocabulary rows; eh_proj is replicated.
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "checkpoint/checkpoint.h"
#include "checkpoint/weight_bytes.h"
#include "common/model_config.h"
#include "common/tensor.h"
#include "model/forward_batch.h"
#include "model/kv_cache.h"
#include "model/layers.h"
#include "parallel/parallel_context.h"

namespace moe {

class DecoderLayer;

class MtpLayer {
 public:
  static absl::StatusOr<std::unique_ptr<MtpLayer>> Load(Ops& ops, const ModelConfig& config,
                                                        Checkpoint& ck, const ParallelContext& ctx,
                                                        float softmax_scale, WeightBytes* bytes);
  ~MtpLayer();

  // `hidden` [batch.num_tokens(), hidden] (device memory; normed final hidden states of the main
  // model at the batch's positions, or this layer's own last_hidden() rows when drafting further
  // tokens), `next_tokens` one per row. Writes the module's cache rows of the batch's positions;
  // returns the logits of `logit_rows`, [logit_rows.size(), vocab].
  absl::StatusOr<Tensor> Forward(const float* hidden, const std::vector<int32_t>& next_tokens,
                                 const ForwardBatch& batch, KvCache& cache,
                                 const std::vector<int64_t>& logit_rows);
  const DecoderLayer& block() const { return *block_; }
  // The block's output of the last Forward, every row (before the shared head's norm): the
  // hidden input of a further draft (-1 rows: no Forward yet).
  const DeviceArray<float>& last_hidden() const { return last_hidden_; }
  int64_t last_hidden_rows() const { return last_hidden_rows_; }

 private:
  MtpLayer() = default;
  Ops* ops_ = nullptr;
  int64_t hidden_ = 0;
  VocabParallelEmbedding embed_tokens_;
  RmsNorm enorm_, hnorm_, head_norm_;
  Linear eh_proj_;
  std::unique_ptr<DecoderLayer> block_;
  ParallelLmHead head_;
  DeviceArray<float> last_hidden_;
  int64_t last_hidden_rows_ = -1;
};

}  // namespace moe

// A decoder-only causal LM on one rank: embed_tokens -> num_hidden_layers x DecoderLayer
// (model/decoder_layer.h) -> norm -> lm_head (or the embedding, tied).
// Loads only this rank's shard of the checkpoint; the MTP layer (model.layers.<L>.* for
// L = num_hidden_layers) only when asked for (speculative decoding), with a cache layer of its own.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "checkpoint/checkpoint.h"
#include "checkpoint/weight_bytes.h"
#include "common/model_config.h"
#include "kernels/ops.h"
#include "model/decoder_layer.h"
#include "model/forward_batch.h"
#include "model/forward_model.h"
#include "model/gqa_attention.h"
#include "model/kv_cache.h"
#include "model/layers.h"
#include "model/mla_attention.h"
#include "model/mlp.h"
#include "model/moe_layer.h"
#include "model/mtp_layer.h"
#include "model/step_inputs.h"
#include "parallel/parallel_context.h"

namespace moe {

struct DecoderModelOptions {
  WeightsAtLoad weights = WeightsAtLoad::kAsStored;  // what loading does with the weights
  bool load_mtp = false;                             // the MTP layer (speculative decoding)
  Activations activations = Activations::kF32;       // what products do with x
  // Runs each step's decoder layers as two micro-batches whose MoE dispatch and combine overlap
  // the other's compute (TwoBatchOverlap). Every rank must agree; needs a TP size of 1 (DP
  // attention with expert parallelism: the MoE all-to-all is the only collective in the layers).
  bool two_batch_overlap = false;
  // The op set it runs over: the CPU's, or (CUDA builds) one GPU per rank — MLA models, float32
  // activations, no two-batch overlap. A rank's GPU is `cuda_device` plus its index among the
  // ranks of its host (mpirun's local rank).
  Device device = Device::kCpu;
  int cuda_device = 0;
  // On a device that records (Ops::can_record: CUDA graphs), each decode-only step (every chunk a
  // decode token or a few drafts, logits of every row) is recorded the first time its shape
  // (tokens, block-table width rounded up to a power of two) is seen, and replayed after.
  bool record_decode_steps = true;
};

// The model over an op set (kernels/ops.h): on the CPU, weights in the checkpoint's format
// (memory-mapped), float32 activations and cache in host memory, any parallel layout; on a GPU
// (DecoderModelOptions::device), the same layers over CudaOps, one GPU per rank — the layers'
// collectives over NCCL, the MoE dispatch's buffers in device memory — and on one GPU its decode
// steps replayed from CUDA graphs.
class DecoderModel : public ForwardModel {
 public:
  // Maps this rank's shard of the weights in `dir` and allocates its KV cache.
  static absl::StatusOr<std::unique_ptr<DecoderModel>> Load(
      const std::string& dir, const ModelConfig& config, const ParallelContext& ctx,
      const KvCacheShape& cache, const DecoderModelOptions& options = {});
  // The same over `ops` instead of the op set options.device names.
  static absl::StatusOr<std::unique_ptr<DecoderModel>> LoadOver(
      std::unique_ptr<Ops> ops, const std::string& dir, const ModelConfig& config,
      const ParallelContext& ctx, const KvCacheShape& cache, const DecoderModelOptions& options);

  absl::Status Forward(const std::vector<int32_t>& tokens, const ForwardBatch& batch,
                       const std::vector<int64_t>& logit_rows) override;
  absl::StatusOr<Tensor> Logits() override;
  absl::StatusOr<std::vector<int32_t>> Sample(const std::vector<SampleRequest>& requests) override;
  bool has_mtp() const override { return mtp_ != nullptr; }
  absl::StatusOr<Tensor> ForwardMtp(const std::vector<int64_t>& main_rows,
                                    const std::vector<int32_t>& next_tokens,
                                    const ForwardBatch& batch,
                                    const std::vector<int64_t>& logit_rows,
                                    bool from_last_draft = false) override;
  std::vector<int64_t> ExpertTokenCounts() const override;
  double CollectiveWaitSeconds() const override;
  absl::Status SetExpertPlacement(const std::vector<ExpertPlacement>& layers) override;
  const WeightBytes& weight_bytes() const override { return weight_bytes_; }
  KvCache* host_kv_cache() override { return ops_->device() == Device::kCpu ? &cache_ : nullptr; }

  // Decode steps recorded, and replays of recorded steps (a step just recorded included), so far.
  int64_t steps_recorded() const { return steps_recorded_; }
  int64_t steps_replayed() const { return steps_replayed_; }

 private:
  // A recorded decode step: the arrays its inputs are written into, its outputs, the recording.
  struct RecordedStep {
    DeviceArray<int32_t> tokens, logit_ids;
    std::vector<StepInputs> steps;  // one
    DeviceArray<float> hidden, logits;
    std::unique_ptr<Ops::Recording> recording;
  };

  DecoderModel(const ModelConfig& config, std::unique_ptr<Ops> ops, const KvCacheShape& cache,
               bool mtp, int64_t cache_dim)
      : config_(config),
        ops_(std::move(ops)),
        cache_(*ops_, KvLayout::For(config, mtp ? 1 : 0), cache.blocks, cache.block_size,
               cache_dim) {}
  static absl::StatusOr<std::unique_ptr<DecoderModel>> LoadWith(
      std::unique_ptr<Ops> ops, std::unique_ptr<ParallelContext> groups, const std::string& dir,
      const ModelConfig& config, const ParallelContext& ctx, const KvCacheShape& cache,
      const DecoderModelOptions& options);

  ModelConfig config_;
  std::unique_ptr<Ops> ops_;  // before the layers, which hold arrays of it
  // The layers' groups where they are not the engine's (several GPUs: NCCL over device memory).
  std::unique_ptr<ParallelContext> groups_;
  std::unique_ptr<Checkpoint> ck_;  // kept open: EPLB loads other experts later
  int world_ = 1;                   // ranks the experts are placed over
  KvCache cache_;
  VocabParallelEmbedding embed_tokens_;
  std::vector<std::unique_ptr<DecoderLayer>> layers_;
  RmsNorm norm_;
  ParallelLmHead lm_head_;
  std::unique_ptr<MtpLayer> mtp_;
  WeightBytes weight_bytes_;
  std::unique_ptr<TwoBatchOverlap> overlap_;  // with DecoderModelOptions::two_batch_overlap
  double collective_seconds_ = 0;             // in the layers' collectives, without overlap
  // The last Forward's final hidden states (before model.norm), every row (-1 rows: none yet),
  // and its logits.
  DeviceArray<float> hidden_, logits_;
  int64_t hidden_rows_ = -1, logit_rows_ = 0;
  // Recorded decode steps by (tokens, table width); whether this model records them (where its
  // MoE layers run on the device).
  std::map<std::pair<int64_t, int64_t>, RecordedStep> recorded_;
  bool record_ = false;
  int64_t steps_recorded_ = 0, steps_replayed_ = 0;

  // Whether every MoE layer runs on the device alone (MoeLayer::runs_on_device).
  bool MoeRunsOnDevice() const;
  // Whether a step of `batch` asking for `logit_rows` replays a recording.
  bool Replays(const ForwardBatch& batch, const std::vector<int64_t>& logit_rows) const;
  absl::Status ForwardRecorded(const std::vector<int32_t>& tokens, const ForwardBatch& batch);
  // The layers over a step's placed inputs (two micro-batches with `parts`): the final hidden
  // states before model.norm (every row) and the logits of the rows `logit_ids` names.
  absl::Status Run(const DeviceArray<int32_t>& tokens, const DeviceArray<int32_t>& logit_ids,
                   const std::vector<StepInputs>& steps, const MicroBatches* parts,
                   DeviceArray<float>* hidden, DeviceArray<float>* logits);
};

}  // namespace moe

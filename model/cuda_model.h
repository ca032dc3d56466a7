// The CUDA backend: DeepseekV3ForCausalLM on one GPU (world size 1).
//   - weight matrices in device memory in the checkpoint's format: fp8 blocks and int4 groups as
//     they ship (dequantized in registers by the products), bf16 as it is, f32/f16 rounded to
//     bf16; MLA's kv_b_proj and the embedding table bf16; norms, the router gate and its bias
//     float32;
//   - the paged latent KV cache float32 on the device, the same layout as the CPU cache;
//   - activations float32; bf16 weights' GEMMs take bf16 operands (cuBLAS), fp8/int4 ones float32
//     activations, all accumulating in float32; the router gate is a float32 GEMM, so expert
//     choice does not move with activation rounding;
//   - MLA prefill expands K/V from the cache, decode uses the absorbed form (W_UK folded into the
//     query, W_UV applied to the latent output) — the same split as the CPU model;
//   - MoE: route, sort (token, slot) pairs by expert, one grouped product per projection over
//     every expert with the row ranges kept on the device, weighted combine, plus the shared
//     expert;
//   - a step with only decode tokens is captured into a CUDA graph the first time its shape
//     (batch size, block-table width bucket) is seen and replayed afterwards.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "model/forward_model.h"
#include "parallel/parallel_context.h"

namespace moe {

struct CudaModelOptions {
  int device = 0;      // CUDA device ordinal
  bool graphs = true;  // capture decode-only steps
};

class CudaModel : public ForwardModel {
 public:
  // Fails with a clear error without a visible GPU, or on more than one rank.
  static absl::StatusOr<std::unique_ptr<CudaModel>> Load(const std::string& dir,
                                                         const ModelConfig& config,
                                                         const ParallelContext& ctx,
                                                         const KvCacheShape& cache,
                                                         const CudaModelOptions& options);
  ~CudaModel() override;

  absl::Status Forward(const std::vector<int32_t>& tokens, const ForwardBatch& batch,
                       const std::vector<int64_t>& logit_rows) override;
  absl::StatusOr<Tensor> Logits() override;
  absl::StatusOr<std::vector<int32_t>> Sample(const std::vector<SampleRequest>& requests) override;
  std::vector<int64_t> ExpertTokenCounts() const override;
  const WeightBytes& weight_bytes() const override;

  // Decode steps served by replaying a captured graph, and graphs captured, so far.
  int64_t graph_replays() const;
  int64_t graphs_captured() const;

  struct Impl;

 private:
  explicit CudaModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace moe

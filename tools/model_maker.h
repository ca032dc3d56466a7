// Synthetic DeepSeek-V3-architecture checkpoints: a config (e.g. a preset of common/presets.h),
// filled with deterministic random weights, written as HF-style folders
// (config.json + safetensors with the official tensor names; fp8 with weight_scale_inv blocks)
// and the family's tokenizer files (tools/tokenizer_maker.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "checkpoint/weight_names.h"
#include "common/model_config.h"
#include "common/presets.h"

namespace moe {

// kInt4: Kimi K2 Thinking's layout — routed experts' Linears in compressed-tensors pack-quantized
// int4 (groups of 32, bf16 scales), everything else in bf16.
enum class WeightDType { kF32, kBF16, kFP8, kInt4 };
absl::StatusOr<WeightDType> ParseWeightDType(const std::string& s);  // f32 | bf16 | fp8 | int4

struct MakeModelOptions {
  std::string out_dir;
  uint64_t seed = 0;
  WeightDType dtype = WeightDType::kBF16;
  uint64_t max_shard_bytes = 4ull << 30;  // split into model-0000i-of-0000n files beyond this
  bool progress = false;                  // print a line per file to stderr
  // A benchmark variant whose MTP layer agrees with the model (to measure speculative decoding's
  // gain, which random MTP weights never show): every decoder layer's output projections
  // (o_proj, down_proj) are zero, so the model predicts from the token alone; the MTP layer has
  // the model's embedding, final norm and head, eh_proj passes the token's embedding through and
  // its block adds nothing — it drafts what the model will say next. Not a realistic model.
  bool mtp_agrees = false;
  // A benchmark variant with skewed routing (EPLB): expert e's e_score_correction_bias gains
  // router_skew * 0.7^e, so the first experts are chosen far more often (0: the generated bias).
  double router_skew = 0;
};

// Writes config.json and the weights of `config` to options.out_dir (created if needed).
absl::Status WriteCheckpoint(const ModelConfig& config, const MakeModelOptions& options);

// The value the generator assigns to element `i` of a tensor before any dtype rounding.
// Deterministic in (seed, spec.name, i); exposed so tests can check what was written.
float GeneratedValue(const WeightSpec& spec, uint64_t seed, uint64_t i);

}  // namespace moe

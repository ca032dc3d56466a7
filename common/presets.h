// Named model configurations, built into every binary from common/presets/*.json (HF config.json
// form): the published DeepSeek-V3 and Kimi K2 configs, and the small presets the tests,
// benchmarks and demo write checkpoints of.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"

namespace moe {

// deepseek-v3, kimi-k2 (published); small-dsv3 (~0.8B, benchmarks); tiny-dsv3 (grouped routing,
// an MTP layer in the files), tiny-kimi-k2 (one group, more experts, fewer heads), tiny-v2lite
// (no q-LoRA, plain RoPE); the GQA families' tiny-qwen3 (tied embeddings, head_dim 16 of a
// 64-wide model), tiny-qwen3-moe (16 experts, layer 1 dense), tiny-mistral, tiny-smollm3 (NoPE
// on layer 3), tiny-olmo2 (post-norm, whole-projection QK-norm) and tiny-gemma3 (5 sliding layers
// of window 8 to 1 global, soft-capped logits) and tiny-llama4 (MoE every 2nd layer, chunks of 8,
// NoPE on layer 3 with temperature tuning from position 7, llama3 RoPE scaling).
std::vector<std::string> PresetNames();
// The preset's config.json text; NOT_FOUND naming the known presets.
absl::StatusOr<std::string> PresetJson(const std::string& name);
absl::StatusOr<ModelConfig> PresetConfig(const std::string& name);

}  // namespace moe

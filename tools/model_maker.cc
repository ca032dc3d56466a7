#include "tools/model_maker.h"
#include "tools/tokenizer_maker.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "checkpoint/quantize.h"
#include "checkpoint/safetensors_writer.h"
#include "checkpoint/weight_names.h"
#include "common/dtype.h"
#include "common/splitmix.h"
#include "common/status_macros.h"
#include "common/tensor.h"
#include "nlohmann/json.hpp"

namespace moe {
namespace fs = std::filesystem;

namespace {

uint64_t HashName(uint64_t seed, const std::string& name) {
  uint64_t h = 1469598103934665603ull ^ SplitMix64(seed);
  for (unsigned char ch : name) h = (h ^ ch) * 1099511628211ull;
  return SplitMix64(h);
}

// Standard normal from a counter (Box-Muller over two hashed uniforms).
float NormalAt(uint64_t key, uint64_t i) {
  const uint64_t a = SplitMix64(key ^ (2 * i)), b = SplitMix64(key ^ (2 * i + 1));
  const double u1 = (static_cast<double>(a >> 11) + 0.5) * 0x1.0p-53;
  const double u2 = static_cast<double>(b >> 11) * 0x1.0p-53;
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2));
}

float UniformAt(uint64_t key, uint64_t i) {
  return static_cast<float>((SplitMix64(key ^ (2 * i)) >> 11) * 0x1.0p-53);
}

// Scales that keep activations well conditioned: projections preserve the RMS of their input,
// norms sit near 1, router logits are O(1), and the correction bias is positive (so biased scores
// stay positive and group masking is unambiguous).
float ValueFor(const WeightSpec& spec, uint64_t key, uint64_t i) {
  switch (spec.kind) {
    case WeightSpec::Kind::kEmbedding: {
      const bool head = spec.name.find("embed_tokens") == std::string::npos;
      return NormalAt(key, i) * (head ? 2.0f / std::sqrt(static_cast<float>(spec.shape[1])) : 1.0f);
    }
    case WeightSpec::Kind::kNorm:
      return 1.0f + 0.2f * (UniformAt(key, i) - 0.5f);
    case WeightSpec::Kind::kRouterBias:
      return 0.01f + 0.2f * UniformAt(key, i);
    case WeightSpec::Kind::kBias:
      return 0.1f * NormalAt(key, i);
    case WeightSpec::Kind::kRouter:
    case WeightSpec::Kind::kLinear:
    case WeightSpec::Kind::kFusedExperts:  // [experts, in, out]: shape[1] is the input width too
      return NormalAt(key, i) / std::sqrt(static_cast<float>(spec.shape[1]));
  }
  return 0.0f;
}

struct Planned {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const WeightSpec* spec;  // null for a scale tensor (made with the weight before it)
  uint64_t bytes() const { return static_cast<uint64_t>(NumElements(shape)) * DTypeSize(dtype); }
};

}  // namespace

absl::StatusOr<WeightDType> ParseWeightDType(const std::string& s) {
  if (s == "f32") return WeightDType::kF32;
  if (s == "bf16") return WeightDType::kBF16;
  if (s == "fp8") return WeightDType::kFP8;
  if (s == "int4") return WeightDType::kInt4;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown dtype \"", s, "\" (f32, bf16, fp8 or int4)"));
}

float GeneratedValue(const WeightSpec& spec, uint64_t seed, uint64_t i) {
  return ValueFor(spec, HashName(seed, spec.name), i);
}

namespace {

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// MakeModelOptions::mtp_agrees: element i of `spec`, or nullopt for the generated value.
std::optional<float> AgreeingValue(const ModelConfig& c, const WeightSpec& spec, uint64_t seed,
                                   uint64_t i) {
  if (EndsWith(spec.name, "self_attn.o_proj.weight") || EndsWith(spec.name, "down_proj.weight")) {
    return 0.0f;
  }
  if (c.num_nextn_predict_layers < 1) return std::nullopt;
  const MtpWeights m = MtpLayerWeights(c, 0);
  const ModelWeights top = TopLevelWeights(c);
  const std::pair<const WeightSpec*, const WeightSpec*> copies[] = {
      {&m.embed_tokens, &top.embed_tokens}, {&m.head, &top.lm_head}, {&m.head_norm, &top.norm}};
  for (const auto& [mtp, model] : copies) {
    if (spec.name == mtp->name) return GeneratedValue(*model, seed, i);
  }
  if (spec.name == m.enorm.name) return 1.0f;
  if (spec.name == m.eh_proj.name) {  // [I | 0]: the token's embedding, nothing of h
    const uint64_t cols = static_cast<uint64_t>(spec.shape[1]);
    return i / cols == i % cols ? 1.0f : 0.0f;
  }
  return std::nullopt;
}

}  // namespace

namespace {

// config.json as written: the weights' dtype and, for fp8, the quantization_config.
ModelConfig WrittenConfig(ModelConfig config, WeightDType dtype) {
  config.torch_dtype = dtype == WeightDType::kF32 ? "float32" : "bfloat16";
  config.quantization_config.reset();
  if (dtype == WeightDType::kFP8) config.quantization_config = QuantizationConfig{};
  if (dtype == WeightDType::kInt4) {
    QuantizationConfig q;
    q.quant_method = "compressed-tensors";
    // Kimi K2 Thinking's list: only the routed experts are int4.
    q.ignore = {"lm_head", "re:.*self_attn.*", "re:.*shared_experts.*",
                "re:.*mlp\\.(gate|up|gate_up|down)_proj.*"};
    config.quantization_config = q;
  }
  return config;
}

// Every tensor of the checkpoint with its stored dtype; an fp8 weight is followed by its scales, an
// int4 module's weight_packed by its weight_scale and weight_shape.
std::vector<Planned> PlanTensors(const ModelConfig& config, const std::vector<WeightSpec>& specs,
                                 WeightDType dtype) {
  const DType float_dtype = dtype == WeightDType::kF32 ? DType::kF32 : DType::kBF16;
  std::vector<Planned> plan;
  for (const WeightSpec& s : specs) {
    if (dtype == WeightDType::kFP8 && s.quantizable()) {
      plan.push_back({s.name, DType::kF8E4M3, s.shape, &s});
      const auto& q = *config.quantization_config;
      plan.push_back({s.name + "_scale_inv",
                      DType::kF32,
                      {(s.shape[0] + q.block_rows - 1) / q.block_rows,
                       (s.shape[1] + q.block_cols - 1) / q.block_cols},
                      nullptr});
    } else if (dtype == WeightDType::kInt4 && s.quantizable() &&
               !config.quantization_config->Ignores(ModuleOf(s.name))) {
      const Int4TensorNames names = Int4Names(s.name);
      const int64_t g = config.quantization_config->group_size;
      plan.push_back({names.packed, DType::kI32, {s.shape[0], s.shape[1] / 8}, &s});
      plan.push_back({names.scale, DType::kBF16, {s.shape[0], s.shape[1] / g}, nullptr});
      plan.push_back({names.shape, DType::kI32, {2}, nullptr});
    } else {
      const DType d = s.kind == WeightSpec::Kind::kRouterBias ? DType::kF32 : float_dtype;
      plan.push_back({s.name, d, s.shape, &s});
    }
  }
  return plan;
}

// Indices into `plan` per file, each file at most max_bytes unless one weight is larger; a weight
// and its scales stay together.
std::vector<std::vector<size_t>> GroupIntoShards(const std::vector<Planned>& plan,
                                                 uint64_t max_bytes) {
  std::vector<std::vector<size_t>> shards(1);
  uint64_t shard_bytes = 0;
  for (size_t i = 0; i < plan.size(); ++i) {
    uint64_t b = plan[i].bytes();
    for (size_t j = i + 1; j < plan.size() && !plan[j].spec; ++j) b += plan[j].bytes();
    if (plan[i].spec && shard_bytes > 0 && shard_bytes + b > max_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(i);
    shard_bytes += plan[i].bytes();
  }
  return shards;
}

// Generates and writes the tensors plan[shard...] into one safetensors file; returns its data
// bytes.
absl::StatusOr<uint64_t> WriteShard(const std::string& path, const std::vector<Planned>& plan,
                                    const std::vector<size_t>& shard, const ModelConfig& config,
                                    const MakeModelOptions& opt) {
  const uint64_t seed = opt.seed;
  const bool mtp_agrees = opt.mtp_agrees;
  SafetensorsWriter w;
  for (size_t i : shard) w.Declare(plan[i].name, plan[i].dtype, plan[i].shape);
  MOE_RETURN_IF_ERROR(w.Begin(path, {{"format", "pt"}}));
  std::vector<float> values, scale;
  std::vector<uint8_t> bytes;
  std::vector<int32_t> packed;
  std::vector<uint16_t> group_scales;
  for (size_t i : shard) {
    const Planned& p = plan[i];
    if (!p.spec) continue;  // written with its weight
    const WeightSpec& spec = *p.spec;
    const uint64_t count = static_cast<uint64_t>(NumElements(spec.shape));
    const uint64_t key = HashName(seed, spec.name);
    values.resize(count);
#pragma omp parallel for schedule(static)
    for (int64_t k = 0; k < static_cast<int64_t>(count); ++k) {
      const std::optional<float> agree =
          mtp_agrees ? AgreeingValue(config, spec, seed, static_cast<uint64_t>(k)) : std::nullopt;
      values[k] = agree ? *agree : ValueFor(spec, key, k);
    }
    if (spec.kind == WeightSpec::Kind::kRouterBias && opt.router_skew > 0) {
      for (uint64_t e = 0; e < count; ++e) {
        values[e] += static_cast<float>(opt.router_skew * std::pow(0.7, static_cast<double>(e)));
      }
    }
    if (p.dtype == DType::kF8E4M3) {
      const auto& q = *config.quantization_config;
      QuantizeFp8(values.data(), spec.shape[0], spec.shape[1], q.block_rows, q.block_cols, &bytes, &scale);
      MOE_RETURN_IF_ERROR(w.Write(p.name, bytes.data(), bytes.size()));
      MOE_RETURN_IF_ERROR(w.Write(p.name + "_scale_inv", scale.data(), scale.size() * 4));
    } else if (p.dtype == DType::kI32) {
      const Int4TensorNames names = Int4Names(spec.name);
      QuantizeInt4(values.data(), spec.shape[0], spec.shape[1], config.quantization_config->group_size,
                   &packed, &group_scales);
      const int32_t shape[2] = {static_cast<int32_t>(spec.shape[0]),
                                static_cast<int32_t>(spec.shape[1])};
      MOE_RETURN_IF_ERROR(w.Write(p.name, packed.data(), packed.size() * 4));
      MOE_RETURN_IF_ERROR(w.Write(names.scale, group_scales.data(), group_scales.size() * 2));
      MOE_RETURN_IF_ERROR(w.Write(names.shape, shape, sizeof(shape)));
    } else if (p.dtype == DType::kBF16) {
      bytes.resize(count * 2);
      auto* out = reinterpret_cast<uint16_t*>(bytes.data());
      for (uint64_t k = 0; k < count; ++k) out[k] = F32ToBF16(values[k]);
      MOE_RETURN_IF_ERROR(w.Write(p.name, bytes.data(), bytes.size()));
    } else {
      MOE_RETURN_IF_ERROR(w.Write(p.name, values.data(), count * 4));
    }
  }
  MOE_RETURN_IF_ERROR(w.Finish());
  return w.data_bytes();
}

}  // namespace

absl::Status WriteCheckpoint(const ModelConfig& config_in, const MakeModelOptions& opt) {
  const ModelConfig config = WrittenConfig(config_in, opt.dtype);
  std::error_code ec;
  fs::create_directories(opt.out_dir, ec);
  if (ec) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot create ", opt.out_dir, ": ", ec.message()));
  }
  {
    std::ofstream cfg(fs::path(opt.out_dir) / "config.json");
    cfg << config.ToJson();
    if (!cfg)
      return absl::DataLossError(absl::StrCat("cannot write ", opt.out_dir, "/config.json"));
  }
  MOE_RETURN_IF_ERROR(WriteTokenizer(config, opt.out_dir));
  const std::vector<WeightSpec> specs = CheckpointWeightSpecs(config, /*include_mtp=*/true);
  const std::vector<Planned> plan = PlanTensors(config, specs, opt.dtype);
  const std::vector<std::vector<size_t>> shards = GroupIntoShards(plan, opt.max_shard_bytes);
  const size_t n = shards.size();
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  uint64_t total = 0;
  for (size_t s = 0; s < n; ++s) {
    const std::string file =
        n == 1 ? "model.safetensors" : absl::StrFormat("model-%05d-of-%05d.safetensors", s + 1, n);
    for (size_t i : shards[s]) weight_map[plan[i].name] = file;
    MOE_ASSIGN_OR_RETURN(const uint64_t bytes, WriteShard((fs::path(opt.out_dir) / file).string(),
                                                          plan, shards[s], config, opt));
    total += bytes;
    if (opt.progress) {
      std::fprintf(stderr, "moe-make-model: wrote %s (%zu tensors, %.1f MB) [%zu/%zu]\n",
                   file.c_str(), shards[s].size(), bytes / 1e6, s + 1, n);
    }
  }
  if (n > 1) {
    nlohmann::ordered_json index;
    index["metadata"] = {{"total_size", total}};
    index["weight_map"] = weight_map;
    std::ofstream out(fs::path(opt.out_dir) / "model.safetensors.index.json");
    out << index.dump(2) << "\n";
    if (!out) return absl::DataLossError("cannot write model.safetensors.index.json");
  }
  return absl::OkStatus();
}

}  // namespace moe

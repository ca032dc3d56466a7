// moe-make-model: writes a synthetic HF-style checkpoint of a named preset.
#include <cstdio>
#include <filesystem>

#include "common/cli.h"
#include "common/status_macros.h"
#include "tools/model_maker.h"
#include "tools/tokenizer_maker.h"

int main(int argc, char** argv) {
  std::string preset, out, dtype = "bf16";
  int64_t seed = 0, shard_mb = 4096;
  bool tokenizer_only = false;
  moe::FlagParser flags(
      "moe-make-model",
      "Writes a complete HF-style checkpoint of the preset's architecture (config.json, "
      "safetensors with\n"
      "the official tensor names, fp8 weight_scale_inv blocks) filled with deterministic random\n"
      "weights, and tokenizer files (Kimi K2: tiktoken.model; the others: tokenizer.json)\n"
      "holding a small trained byte-level BPE, with the published chat template of Kimi K2 or\n"
      "DeepSeek-V3 (also for the GQA families). Presets (common/presets/):\n"
      "tiny-dsv3, tiny-kimi-k2, tiny-v2lite, small-dsv3, the full-size deepseek-v3 and kimi-k2, "
      "and\n"
      "the GQA families' tiny-qwen3, tiny-qwen3-moe, tiny-mistral, tiny-smollm3, tiny-olmo2,\n"
      "tiny-gemma3, tiny-llama4.");
  flags.AddString("preset", &preset, "Preset architecture to write.", /*required=*/true);
  flags.AddString("out", &out, "Output folder (created if missing).", /*required=*/true);
  flags.AddInt("seed", &seed, "Seed of the random weights.");
  flags.AddString("dtype", &dtype, "Weight dtype: f32, bf16, fp8 (e4m3, 128x128 block scales) or int4 (routed experts in "
                  "compressed-tensors pack-quantized int4, groups of 32, bf16 scales; the rest bf16).");
  flags.AddInt("shard-mb", &shard_mb,
               "Largest safetensors file in MB before splitting into shards.");
  flags.AddBool("tokenizer-only", &tokenizer_only,
                "Write only the tokenizer files (e.g. into a folder made before they were written).");
  bool mtp_agrees = false;
  flags.AddBool("mtp-agrees", &mtp_agrees,
                "Benchmarks of speculative decoding: decoder layers' output projections zero and "
                "an MTP layer that drafts what the model will say next (not a realistic model).");
  double router_skew = 0;
  flags.AddDouble(
      "router-skew", &router_skew,
      "Benchmarks of expert load balancing: expert e's e_score_correction_bias gains "
      "S * 0.7^e, so routing favours the first experts (DeepSeek / Kimi presets; 0: off).");
  flags.ParseOrExit(argc, argv);

  auto config = moe::PresetConfig(preset);
  auto wdtype = moe::ParseWeightDType(dtype);
  for (const absl::Status& s : {config.status(), wdtype.status()}) {
    if (!s.ok()) {
      std::fprintf(stderr, "moe-make-model: %s\n", std::string(s.message()).c_str());
      return 2;
    }
  }
  if (router_skew < 0 || (router_skew > 0 && config->topk_method != "noaux_tc")) {
    std::fprintf(stderr,
                 "moe-make-model: --router-skew needs a value >= 0 and a preset whose "
                 "router has e_score_correction_bias (topk_method noaux_tc)\n");
    return 2;
  }
  if (seed < 0 || shard_mb <= 0) {
    std::fprintf(stderr, "moe-make-model: --seed must be >= 0 and --shard-mb > 0\n");
    return 2;
  }
  if (tokenizer_only) {
    std::error_code ec;
    std::filesystem::create_directories(out, ec);
    if (absl::Status s = moe::WriteTokenizer(*config, out); !s.ok()) {
      std::fprintf(stderr, "moe-make-model: %s\n", std::string(s.message()).c_str());
      return 1;
    }
    std::fprintf(stderr, "moe-make-model: wrote the %s tokenizer files to %s\n", preset.c_str(),
                 out.c_str());
    return 0;
  }
  moe::MakeModelOptions opt;
  opt.out_dir = out;
  opt.seed = static_cast<uint64_t>(seed);
  opt.dtype = *wdtype;
  opt.max_shard_bytes = static_cast<uint64_t>(shard_mb) << 20;
  opt.mtp_agrees = mtp_agrees;
  opt.router_skew = router_skew;
  opt.progress = true;
  const moe::ParamCounts p = config->CountParameters();
  std::fprintf(stderr, "moe-make-model: %s, %.3fB parameters (%.3fB active), %s -> %s\n",
               preset.c_str(), p.total / 1e9, p.active / 1e9, dtype.c_str(), out.c_str());
  if (absl::Status s = moe::WriteCheckpoint(*config, opt); !s.ok()) {
    std::fprintf(stderr, "moe-make-model: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  std::fprintf(stderr, "moe-make-model: done\n");
  return 0;
}

// moe-plan: how a model fits and runs on a GPU cluster in a given layout.
#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "common/cli.h"
#include "common/presets.h"
#include "tools/planner.h"

int main(int argc, char** argv) {
  std::string model = "deepseek-v3", gpu = "h800", dtype = "fp8";
  int64_t nodes = 1, gpus_per_node = 8, tp = 1, dp = 0, redundant = 0;
  int64_t batch = 64, input_len = 2000, output_len = 1000, prefill_tokens = 16384;
  double hbm_gib = 0, hbm_tbps = 0, bf16 = 0, fp8 = 0, nvlink = 0, nic = 0, reserve = 8;
  bool json = false;
  moe::FlagParser flags(
      "moe-plan",
      "Plans a model on a GPU cluster: parameters, memory per GPU by part, KV capacity, whether "
      "it\n"
      "fits, all-to-all bytes, and step-time / throughput estimates for prefill and decode from a\n"
      "roofline of compute, HBM and network (with and without two-batch overlap).\n"
      "Models: a preset (deepseek-v3, kimi-k2, qwen3-235b-a22b, llama4-maverick, ...) or a\n"
      "config.json path. GPUs: h800, h100, h200.");
  flags.AddString("model", &model, "Preset name or path to a config.json / checkpoint folder.");
  flags.AddString("gpu", &gpu, "GPU preset (data sheet figures; override below).");
  flags.AddInt("nodes", &nodes, "Nodes.");
  flags.AddInt("gpus-per-node", &gpus_per_node, "GPUs per node.");
  flags.AddInt("attn-tp", &tp, "Attention tensor-parallel size.");
  flags.AddInt("attn-dp", &dp, "Attention data-parallel groups (0: GPUs / attn-tp).");
  flags.AddInt("redundant-experts", &redundant, "Redundant expert replicas (EPLB).");
  flags.AddString("dtype", &dtype, "Weight dtype: fp8 or bf16.");
  flags.AddInt("decode-batch", &batch, "Decode: sequences per GPU.");
  flags.AddInt("input-len", &input_len, "Prompt tokens.");
  flags.AddInt("output-len", &output_len, "Output tokens.");
  flags.AddInt("prefill-tokens", &prefill_tokens, "Prefill: tokens per GPU per step.");
  double imbalance = 1.0;
  flags.AddDouble("expert-imbalance", &imbalance,
                  "The most loaded GPU's routed-expert tokens over the mean (1: balanced; the "
                  "coordinator's moe_expert_rank_imbalance, which EPLB lowers).");
  flags.AddDouble("hbm-gib", &hbm_gib, "Override: HBM capacity (GiB).");
  flags.AddDouble("hbm-tbps", &hbm_tbps, "Override: HBM bandwidth (TB/s).");
  flags.AddDouble("bf16-tflops", &bf16, "Override: dense bf16 TFLOP/s.");
  flags.AddDouble("fp8-tflops", &fp8, "Override: dense fp8 TFLOP/s.");
  flags.AddDouble("nvlink-gbps", &nvlink, "Override: NVLink GB/s per GPU per direction.");
  flags.AddDouble("nic-gbps", &nic, "Override: network GB/s per GPU per direction.");
  flags.AddDouble("reserve-gib", &reserve, "Memory per GPU kept for activations and buffers.");
  flags.AddBool("json", &json, "Print JSON instead of a table.");
  flags.ParseOrExit(argc, argv);

  auto fail = [](const absl::Status& s) {
    std::fprintf(stderr, "moe-plan: %s\n", std::string(s.message()).c_str());
    return 1;
  };
  const std::vector<std::string> presets = moe::PresetNames();
  const bool preset = std::find(presets.begin(), presets.end(), model) != presets.end();
  auto config = preset ? moe::PresetConfig(model) : moe::LoadModelConfig(model);
  if (!config.ok()) return fail(config.status());
  auto spec = moe::GpuPreset(gpu);
  if (!spec.ok()) return fail(spec.status());
  if (hbm_gib > 0) spec->hbm_gib = hbm_gib;
  if (hbm_tbps > 0) spec->hbm_tbps = hbm_tbps;
  if (bf16 > 0) spec->bf16_tflops = bf16;
  if (fp8 > 0) spec->fp8_tflops = fp8;
  if (nvlink > 0) spec->nvlink_gbps = nvlink;
  if (nic > 0) spec->nic_gbps = nic;
  if (dtype != "fp8" && dtype != "bf16") {
    return fail(absl::InvalidArgumentError("--dtype must be fp8 or bf16"));
  }
  moe::ClusterSpec cluster{static_cast<int>(nodes), static_cast<int>(gpus_per_node), *spec};
  moe::Layout layout{static_cast<int>(tp),
                     static_cast<int>(dp > 0 ? dp : cluster.world() / std::max<int64_t>(tp, 1)),
                     static_cast<int>(redundant)};
  moe::Workload w{batch, input_len, output_len, prefill_tokens, imbalance};
  moe::Efficiency eff;
  eff.reserve_gib = reserve;
  const auto d = dtype == "fp8" ? moe::PlanDType::kFP8 : moe::PlanDType::kBF16;
  auto report = moe::Plan(*config, cluster, layout, d, w, eff);
  if (!report.ok()) return fail(report.status());
  const std::string out = json ? moe::ReportJson(*report, cluster, layout, d, w)
                               : moe::FormatReport(*report, cluster, layout, d, w);
  std::fputs(out.c_str(), stdout);
  return report->fits ? 0 : 3;
}

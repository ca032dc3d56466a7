// Engine throughput on the CPU backend, each figure against a bound measured in the same run:
//   decode tokens/s at batch 1, 8, 32 — weight bytes read per second (in the checkpoint's own
//   format) over the machine's memory read bandwidth;
//   prefill tokens/s of a 512-token prompt — FLOP/s over the BLAS GEMM rate at a similar shape;
//   time from process start to the engine loaded and to the first token, and peak RSS against the
//   weight bytes plus the KV cache.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <thread>

#include "absl/strings/str_format.h"
#include "bench/bandwidth.h"
#include "bench/bench_util.h"
#include "common/cli.h"
#include "common/machine_info.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/weight_matmul.h"
#include "tools/model_maker.h"
#include "worker/engine.h"

namespace moe {
namespace {

// Bytes of weights one decode step reads, as stored: everything this rank holds but the routed
// experts and the embedding matrix (one row per token), plus the experts the step was routed to.
double DecodeWeightBytes(const ModelConfig& c, const WeightBytes& wb, double distinct_experts) {
  const double per_expert =
      static_cast<double>(wb.routed_experts) / (c.n_routed_experts * c.num_moe_layers());
  return static_cast<double>(wb.total() - wb.routed_experts) - wb.embedding / 2.0 +
         per_expert * distinct_experts;
}

// A memory figure of this process from /proc/self/status ("VmHWM:" peak resident, "VmRSS:"
// resident now), bytes.
double StatusBytes(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field, 0) == 0) return std::stod(line.substr(field.size())) * 1024;
  }
  return 0;
}

struct DecodeResult {
  double tokens_per_s;
  double experts_per_step;  // distinct (layer, expert) pairs read per step
};

// Tokens per step while prefilling, the default of moe-coordinator --max-batch-tokens.
constexpr int kStepTokens = 512;

DecodeResult RunDecode(Engine& engine, int batch, int prompt_len, int steps) {
  const ModelConfig& c = engine.config();
  BlockAllocator alloc(engine.num_blocks());
  std::vector<SequenceStep> seqs(static_cast<size_t>(batch));
  for (int b = 0; b < batch; ++b) {
    SequenceStep& s = seqs[b];
    s.seq_id = b;
    for (int i = 0; i < prompt_len; ++i) s.tokens.push_back((b * 131 + i * 17 + 5) % c.vocab_size);
    (void)alloc.EnsureCapacity(&s.block_table, prompt_len + 3 * steps + 2, engine.block_size());
  }
  auto must = [](const absl::StatusOr<StepOutput>& r) {
    if (!r.ok()) {
      std::fprintf(stderr, "engine_bench: %s\n", std::string(r.status().message()).c_str());
      std::exit(1);
    }
  };
  // The prompts, at most kStepTokens tokens a step, as the server's scheduler prefills them.
  const size_t per_step = static_cast<size_t>(std::max(1, kStepTokens / prompt_len));
  for (size_t b0 = 0; b0 < seqs.size(); b0 += per_step) {
    must(engine.Step(std::vector<SequenceStep>(
        seqs.begin() + b0, seqs.begin() + std::min(seqs.size(), b0 + per_step))));
  }
  for (auto& s : seqs) {
    s.start_pos = prompt_len;
    s.tokens = {static_cast<int32_t>(s.seq_id % c.vocab_size)};
  }
  must(engine.Step(seqs));  // warm-up decode
  const auto before = engine.model().ExpertTokenCounts();
  // Best of three runs of `steps` decode steps (the machine is shared; take the least disturbed).
  double dt = 1e30;
  for (int rep = 0; rep < 3; ++rep) {
    const double t0 = Now();
    for (int i = 0; i < steps; ++i) {
      for (auto& s : seqs) ++s.start_pos;
      must(engine.Step(seqs));
    }
    dt = std::min(dt, Now() - t0);
  }
  steps *= 3;  // for the routing counts below, which cover all three runs
  const auto after = engine.model().ExpertTokenCounts();
  double assignments = 0;
  for (size_t e = 0; e < after.size(); ++e) assignments += after[e] - before[e];
  // Distinct experts per layer per step: at batch 1 exactly top-k; at larger batches estimated
  // from the assignments (an upper bound when tokens share experts is all of them).
  const double per_layer =
      std::min<double>(c.n_routed_experts, assignments / steps / c.num_moe_layers());
  for (auto& s : seqs) alloc.Free(&s.block_table);
  return {batch * (steps / 3) / dt, per_layer * c.num_moe_layers()};
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  const double process_start = moe::Now();
  std::string model, dtype = "fp8";
  int64_t threads = 0, steps = 32;
  std::string weights_dtype = "stored", activations = "f32", batches_flag = "1,8,32";
  bool prefill = true;
  moe::FlagParser flags("engine_bench",
                        "Decode and prefill throughput of the CPU engine on small-dsv3, with the "
                        "machine bounds\nmeasured in the same run.");
  flags.AddString("model", &model,
                  "Checkpoint folder; written from the small-dsv3 preset in --dtype if missing.");
  flags.AddString("dtype", &dtype, "Weight dtype of a checkpoint written here: f32, bf16, fp8, int4.");
  flags.AddString("weights-dtype", &weights_dtype,
                  "Weights at load: stored, f32 (the reference path) or fp8.");
  flags.AddString("activations", &activations, moe::kActivationsFlagHelp);
  flags.AddInt("threads", &threads, "Threads (0: all cores).");
  flags.AddInt("decode-steps", &steps, "Timed decode steps per batch size.");
  flags.AddString("batches", &batches_flag, "Decode batch sizes, comma-separated (empty: none).");
  flags.AddBool("prefill", &prefill, "Time the 512-token prefill.");
  flags.ParseOrExit(argc, argv);
  const std::vector<int> batches =
      moe::PositiveIntsOrExit<int>(batches_flag, "engine_bench", "batches", "batch size");
  if (model.empty()) model = "models/small-dsv3";
  auto wdtype = moe::ParseWeightDType(dtype);
  if (!wdtype.ok()) {
    std::fprintf(stderr, "engine_bench: --dtype: %s\n", std::string(wdtype.status().message()).c_str());
    return 1;
  }
  const int nthreads = threads > 0 ? static_cast<int>(threads)
                                   : static_cast<int>(std::thread::hardware_concurrency());
  moe::cpu::SetNumThreads(nthreads);
  if (!std::filesystem::exists(model + "/config.json")) {
    moe::MakeModelOptions opt;
    opt.out_dir = model;
    opt.dtype = *wdtype;
    opt.progress = true;
    std::fprintf(stderr, "engine_bench: writing small-dsv3 to %s\n", model.c_str());
    if (auto s = moe::WriteCheckpoint(*moe::PresetConfig("small-dsv3"), opt); !s.ok()) {
      std::fprintf(stderr, "engine_bench: %s\n", std::string(s.message()).c_str());
      return 1;
    }
  }
  auto config = moe::LoadModelConfig(model);
  if (!config.ok()) {
    std::fprintf(stderr, "engine_bench: %s\n", std::string(config.status().message()).c_str());
    return 1;
  }
  moe::EngineOptions eo;
  auto weights = moe::ParseWeightsAtLoad(weights_dtype);
  if (!weights.ok()) {
    std::fprintf(stderr, "engine_bench: %s\n", std::string(weights.status().message()).c_str());
    return 1;
  }
  eo.weights = *weights;
  auto rounding = moe::ParseActivations(activations);
  if (!rounding.ok()) {
    std::fprintf(stderr, "engine_bench: %s\n", std::string(rounding.status().message()).c_str());
    return 1;
  }
  eo.activations = *rounding;
  const uint64_t kv_budget = 256ull << 20;
  eo.kv_blocks = *moe::KvCache::BlocksForBudget(*config, eo.block_size, kv_budget);
  std::fprintf(stderr, "engine_bench: loading %s with %d threads\n", model.c_str(), nthreads);
  const double rss_before_load = moe::StatusBytes("VmRSS:");  // the binary and its libraries
  const double load_start = moe::Now();
  auto engine = moe::Engine::Load(model, moe::ParallelContext::Single(*config), eo);
  if (!engine.ok()) {
    std::fprintf(stderr, "engine_bench: %s\n", std::string(engine.status().message()).c_str());
    return 1;
  }
  const double loaded = moe::Now();
  const moe::ModelConfig& c = *config;
  const moe::WeightBytes wb = (*engine)->model().weight_bytes();
  // First token: a 16-token prompt, prefilled and sampled.
  double first_token = 0;
  {
    moe::BlockAllocator alloc((*engine)->num_blocks());
    moe::SequenceStep s;
    for (int i = 0; i < 16; ++i) s.tokens.push_back((i * 7 + 1) % c.vocab_size);
    (void)alloc.EnsureCapacity(&s.block_table, 16, (*engine)->block_size());
    if (!(*engine)->Step({s}, /*return_logits=*/false).ok()) return 1;
    first_token = moe::Now();
    alloc.Free(&s.block_table);
  }
  const double hwm_after_load = moe::StatusBytes("VmHWM:");

  std::fprintf(stderr, "engine_bench: measuring bounds\n");
  const double copy_bw = moe::bench::MemoryCopyBandwidth(1ull << 30, 5);
  const double read_bw = moe::bench::MemoryReadBandwidth(1ull << 30, 5);
  const double gemm = moe::bench::GemmFlops(512, 2 * c.moe_intermediate_size * 2, c.hidden_size, 5);

  // The bounds' buffers are not the engine's: the peak reported at the end starts here.
  std::ofstream("/proc/self/clear_refs") << "5";
  std::printf("machine: %s\n", moe::Describe(moe::ReadMachineInfo()).c_str());
  std::string converted =
      *weights == moe::WeightsAtLoad::kAsStored ? "" : " converted at load to " + weights_dtype;
  if (*rounding != moe::Activations::kF32) converted += ", --activations " + activations;
  std::printf("engine_bench: small-dsv3 (%.2fB params, %.2fB active), %s%s, weights %s (%s), "
              "%d threads\n",
              c.CountParameters().total / 1e9, c.CountParameters().active / 1e9, model.c_str(),
              converted.c_str(), moe::cpu::WeightKernelTarget(),
              wb.Describe().c_str(), nthreads);
  std::printf("load: engine loaded %.2f s after process start (Load %.2f s), first token %.2f s "
              "after start\n",
              loaded - process_start, loaded - load_start, first_token - process_start);
  std::printf(
      "bounds: memory copy %.1f GB/s (read+write), memory read %.1f GB/s, "
      "sgemm 512x%lldx%lld %.1f GFLOP/s\n\n",
      copy_bw / 1e9, read_bw / 1e9, static_cast<long long>(2 * c.moe_intermediate_size * 2),
      static_cast<long long>(c.hidden_size), gemm / 1e9);
  std::printf("%-22s %14s %22s %22s %8s\n", "case", "tokens/s", "figure", "bound", "ratio");
  for (int batch : batches) {
    std::fprintf(stderr, "engine_bench: decode batch %d\n", batch);
    const auto r = moe::RunDecode(**engine, batch, 64, static_cast<int>(steps));
    const double bytes_per_step = moe::DecodeWeightBytes(c, wb, r.experts_per_step);
    const double bw = bytes_per_step * r.tokens_per_s / batch;
    std::printf("%-22s %14.1f %17.1f GB/s %17.1f GB/s %8.2f\n",
                absl::StrFormat("decode batch %d", batch).c_str(), r.tokens_per_s, bw / 1e9,
                read_bw / 1e9, bw / read_bw);
  }
  // Prefill: one 512-token prompt.
  if (prefill) {
    std::fprintf(stderr, "engine_bench: prefill 512\n");
    moe::BlockAllocator alloc((*engine)->num_blocks());
    moe::SequenceStep s;
    for (int i = 0; i < 512; ++i) s.tokens.push_back((i * 29 + 3) % c.vocab_size);
    (void)alloc.EnsureCapacity(&s.block_table, 512, (*engine)->block_size());
    (void)(*engine)->Step({s});  // warm-up
    double best = 1e30;
    for (int r = 0; r < 3; ++r) {
      const double t0 = moe::Now();
      auto out = (*engine)->Step({s});
      if (!out.ok()) return 1;
      best = std::min(best, moe::Now() - t0);
    }
    // FLOPs: 2 x active parameters per token (lm_head only for the last token) + attention.
    const moe::ParamCounts p = c.CountParameters();
    const double per_token = 2.0 * (p.active - 2.0 * c.vocab_size * c.hidden_size);
    const double attn = 2.0 * c.num_hidden_layers * c.num_attention_heads *
                        (c.qk_head_dim() + c.v_head_dim) * (512.0 * 513.0 / 2.0);
    const double flops = 512.0 * per_token + attn + 2.0 * c.vocab_size * c.hidden_size;
    std::printf("%-22s %14.1f %16.1f GFLOP/s %16.1f GFLOP/s %8.2f\n", "prefill 512 tokens",
                512.0 / best, flops / best / 1e9, gemm / 1e9, flops / best / gemm);
  }
  const double hwm = moe::StatusBytes("VmHWM:");
  const double weights_kv = static_cast<double>(wb.total()) + static_cast<double>(kv_budget);
  std::printf("memory: %.0f MB resident before loading (binary and libraries); peak above that "
              "%.0f MB after load and first token, %.0f MB in the runs; weights %.0f MB + KV cache "
              "%.0f MB = %.0f MB (peak above start / that %.2f)\n",
              rss_before_load / 1e6, (hwm_after_load - rss_before_load) / 1e6,
              (hwm - rss_before_load) / 1e6, wb.total() / 1e6, kv_budget / 1e6, weights_kv / 1e6,
              (hwm - rss_before_load) / weights_kv);
  return 0;
}

// Speculative decoding with the MTP layer, measured: decode tokens/s with and without it at batch
// 1 and 32, tokens per step and draft acceptance, on a preset (given an MTP layer when its config
// has none) twice — with a random MTP layer
// (drafts almost never agree: the cost of speculating) and with MakeModelOptions::mtp_agrees (an
// MTP layer that drafts what the model will say: the mechanism's gain). The bound printed beside
// each speed-up is tokens per step (what a free draft and verification would give).
//   build/bench/speculative_bench [--preset tiny-dsv3] [--dtype f32] [--new-tokens 64] [--threads 0]
#include <stdlib.h>

#include <chrono>
#include <cstdio>
#include <filesystem>

#include "absl/strings/str_format.h"
#include "common/cli.h"
#include "common/machine_info.h"
#include "kernels/cpu/ops.h"
#include "tools/model_maker.h"
#include "worker/engine.h"
#include "worker/generator.h"

namespace moe {
namespace {

std::unique_ptr<Engine> Load(const std::string& dir, bool mtp, int draft_tokens = 1) {
  auto config = LoadModelConfig(dir);
  EngineOptions opt;
  opt.block_size = 16;
  opt.mtp = mtp;
  opt.mtp_draft_tokens = draft_tokens;
  opt.kv_blocks = *KvCache::BlocksForBudget(*config, opt.block_size, 64 << 20, mtp ? 1 : 0);
  auto e = Engine::Load(dir, ParallelContext::Single(*config), opt);
  if (!e.ok()) {
    std::fprintf(stderr, "speculative_bench: %s\n", std::string(e.status().message()).c_str());
    std::exit(1);
  }
  return std::move(*e);
}

struct Run {
  double tokens_per_s = 0, tokens_per_step = 0, acceptance = 0;
  std::vector<std::vector<int32_t>> tokens;
};

Run Decode(Engine& engine, int batch, int64_t new_tokens, bool speculative) {
  std::vector<std::vector<int32_t>> prompts;
  for (int b = 0; b < batch; ++b) {
    prompts.push_back({});
    for (int j = 0; j < 16; ++j) prompts.back().push_back((b * 31 + j * 7 + 5) % 500);
  }
  GenerateOptions g;
  g.max_new_tokens = new_tokens;
  g.keep_logits = false;
  g.speculative = speculative;
  BlockAllocator alloc(engine.num_blocks());
  const auto start = std::chrono::steady_clock::now();
  auto out = GenerateGreedyBatch(engine, alloc, prompts, g);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!out.ok()) {
    std::fprintf(stderr, "speculative_bench: %s\n", std::string(out.status().message()).c_str());
    std::exit(1);
  }
  Run r;
  int64_t steps = 0, drafts = 0, accepted = 0, tokens = 0;
  for (const Generation& gen : *out) {
    steps = std::max(steps, gen.steps - 1);  // the prefill step made the first token
    drafts += gen.drafts;
    accepted += gen.accepted;
    tokens += static_cast<int64_t>(gen.tokens.size());
    r.tokens.push_back(gen.tokens);
  }
  r.tokens_per_s = static_cast<double>(tokens) / s;
  r.tokens_per_step = static_cast<double>(new_tokens - 1) / static_cast<double>(std::max<int64_t>(1, steps));
  r.acceptance = drafts ? static_cast<double>(accepted) / static_cast<double>(drafts) : 0;
  return r;
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  int64_t new_tokens = 64, threads = 0;
  std::string preset = "tiny-dsv3", dtype = "f32";
  moe::FlagParser flags("speculative_bench",
                        "Decode tokens/s with and without MTP speculative decoding.");
  flags.AddString("preset", &preset, "Preset written here (an MTP layer added if it has none).");
  flags.AddString("dtype", &dtype, "Weight dtype: f32, bf16, fp8.");
  flags.AddInt("new-tokens", &new_tokens, "Tokens generated per sequence.");
  flags.AddInt("threads", &threads, "CPU threads (0: all cores).");
  int64_t draft_tokens = 1;
  flags.AddInt("mtp-draft-tokens", &draft_tokens, "Tokens the MTP layer drafts per step.");
  flags.ParseOrExit(argc, argv);
  if (threads > 0) moe::cpu::SetNumThreads(static_cast<int>(threads));
  auto config = moe::PresetConfig(preset);
  auto wdtype = moe::ParseWeightDType(dtype);
  if (!config.ok() || !wdtype.ok()) {
    std::fprintf(stderr, "speculative_bench: bad --preset or --dtype\n");
    return 2;
  }
  config->num_nextn_predict_layers = std::max<int64_t>(1, config->num_nextn_predict_layers);
  std::printf("machine: %s\n", moe::Describe(moe::ReadMachineInfo()).c_str());
  for (const bool agrees : {false, true}) {
    char tmpl[] = "/tmp/moe_speculative_bench_XXXXXX";
    if (mkdtemp(tmpl) == nullptr) return 1;
    const std::string dir = tmpl;
    moe::MakeModelOptions opt;
    opt.out_dir = dir;
    opt.seed = 3;
    opt.dtype = *wdtype;
    opt.mtp_agrees = agrees;
    if (!moe::WriteCheckpoint(*config, opt).ok()) return 1;
    auto plain = moe::Load(dir, false), spec = moe::Load(dir, true, static_cast<int>(draft_tokens));
    for (const int batch : {1, 32}) {
      moe::Decode(*plain, batch, new_tokens, false);  // warm-up: pages, threads
      moe::Decode(*spec, batch, new_tokens, true);
      const moe::Run a = moe::Decode(*plain, batch, new_tokens, false);
      const moe::Run b = moe::Decode(*spec, batch, new_tokens, true);
      std::printf(
          "%s%s batch %2d, %lld draft(s): plain %7.1f tok/s | MTP %7.1f tok/s, %.2f tokens/step, "
          "acceptance %5.1f%% | speed-up %.2fx of a bound of %.2fx | outputs %s\n",
          preset.c_str(), agrees ? " (MTP agrees)" : " (random MTP)", batch,
          static_cast<long long>(draft_tokens), a.tokens_per_s, b.tokens_per_s, b.tokens_per_step,
          100 * b.acceptance, b.tokens_per_s / a.tokens_per_s, b.tokens_per_step,
          a.tokens == b.tokens ? "equal" : "DIFFER");
    }
    std::filesystem::remove_all(dir);
  }
  return 0;
}

// moe-generate: greedy generation with the engine, on one rank or under mpirun.
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/cli.h"
#include "common/logging.h"
#include "common/npy.h"
#include "kernels/cpu/ops.h"
#include "parallel/mpi_communicator.h"
#include "parallel/parallel_context.h"
#include "worker/engine.h"
#include "worker/generator.h"

namespace {

absl::StatusOr<std::vector<int32_t>> ParseIds(const std::string& text) {
  std::vector<int32_t> ids;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    int32_t id;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &id)) {
      return absl::InvalidArgumentError("--prompt-ids: \"" + std::string(part) +
                                        "\" is not an integer token id");
    }
    ids.push_back(id);
  }
  if (ids.empty()) return absl::InvalidArgumentError("--prompt-ids: the prompt is empty");
  return ids;
}

int g_rank = 0, g_world = 1;

int Fail(const absl::Status& s) {
  if (g_world > 1) {
    std::fprintf(stderr, "moe-generate: rank %d: %s\n", g_rank, std::string(s.message()).c_str());
  } else {
    std::fprintf(stderr, "moe-generate: %s\n", std::string(s.message()).c_str());
  }
  return 1;
}

// Threads per rank: the machine's cores shared among the ranks on this host.
int DefaultThreads() {
  int local = 1;
  if (const char* v = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE")) local = std::max(1, std::atoi(v));
  return std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / local);
}

}  // namespace

int main(int argc, char** argv) {
  std::string model, prompt_ids, logits_out, device = "cpu";
  int64_t max_new = 16, threads = 0, block_size = 64, kv_mb = 256, prefill_chunk = 0, tp = 0;
  bool ignore_eos = false, no_cuda_graphs = false;
  std::string weights_dtype = "stored", activations = "f32";
  moe::FlagParser flags(
      "moe-generate",
      "Greedy generation from a prompt of token ids; prints the new token ids\n"
      "(space-separated) on stdout. Under mpirun (`mpirun -np W moe-generate --tp T ...`) the\n"
      "model is split over the W ranks: attention heads over groups of T ranks, routed experts "
      "over\n"
      "all W; each rank reads only its shard.");
  flags.AddString("model", &model, "Checkpoint folder (config.json + safetensors).", true);
  flags.AddString("prompt-ids", &prompt_ids, "Comma-separated prompt token ids, e.g. \"1,2,3\".",
                  true);
  flags.AddInt("max-new-tokens", &max_new, "Tokens to generate.");
  flags.AddString("logits-out", &logits_out,
                  "Write float32 logits [1+N, vocab] to this .npy: the prompt's last position, "
                  "then the step after each new token.");
  flags.AddBool("ignore-eos", &ignore_eos, "Keep generating after an EOS token.");
  flags.AddInt("tp", &tp,
               "Attention tensor-parallel size T (divides the world size; 0: all ranks).");
  flags.AddString("device", &device,
                  "Backend: cpu or cuda (one GPU per rank, the host's i-th rank under mpirun on "
                  "GPU i; the checkpoint's weight format; MLA models).");
  flags.AddBool("no-cuda-graphs", &no_cuda_graphs,
                "With --device cuda: run decode steps eagerly instead of replaying CUDA graphs.");
  flags.AddString("weights-dtype", &weights_dtype,
                  "CPU weights: stored (the checkpoint's format), f32 (converted at load: the "
                  "reference path), fp8 (float projections converted to 128x128-block fp8).");
  flags.AddString("activations", &activations, moe::kActivationsFlagHelp);
  flags.AddInt("threads", &threads, "CPU threads per rank (0: the host's cores / ranks on it).");
  flags.AddInt("block-size", &block_size, "Tokens per KV cache block.");
  flags.AddInt("kv-cache-mb", &kv_mb, "KV cache size per rank in MB.");
  flags.AddInt("prefill-chunk", &prefill_chunk,
               "Prefill the prompt in chunks of this many tokens "
               "(0: all at once).");
  bool mtp = false;
  flags.AddBool("mtp", &mtp,
                "Speculative decoding with the checkpoint's MTP layer: each step also verifies "
                "the layer's draft of the next token (CPU backend; the output is the same).");
  int64_t mtp_draft_tokens = 1;
  flags.AddInt("mtp-draft-tokens", &mtp_draft_tokens,
               "With --mtp: tokens drafted per step (1 to 8), the MTP layer applied again to its "
               "own output for each after the first.");
  bool two_batch_overlap = false;
  flags.AddBool("two-batch-overlap", &two_batch_overlap,
                "Run each step as two micro-batches whose MoE all-to-all overlaps the other's "
                "compute (CPU backend, with --tp 1 under mpirun: DP attention + EP).");
  flags.ParseOrExit(argc, argv);
  if (mtp_draft_tokens < 1 || mtp_draft_tokens > 8) {
    std::fprintf(stderr, "moe-generate: --mtp-draft-tokens must be in [1, 8], got %lld\n",
                 static_cast<long long>(mtp_draft_tokens));
    return 2;
  }

  std::unique_ptr<moe::Communicator> world = moe::MakeSelfCommunicator();
  if (moe::MpiRuntime::LaunchedByMpi()) {
    if (absl::Status s = moe::MpiRuntime::Init(&argc, &argv); !s.ok()) return Fail(s);
    auto w = moe::MakeMpiWorldCommunicator();
    if (!w.ok()) return Fail(w.status());
    world = std::move(*w);
  }
  g_rank = world->rank();
  g_world = world->size();

  const auto backend = moe::ParseDevice(device);
  if (!backend.ok()) return Fail(backend.status());
  auto prompt = ParseIds(prompt_ids);
  if (!prompt.ok()) return Fail(prompt.status());
  if (max_new < 1) return Fail(absl::InvalidArgumentError("--max-new-tokens must be >= 1"));
  auto weights = moe::ParseWeightsAtLoad(weights_dtype);
  if (!weights.ok()) return Fail(weights.status());
  auto rounding = moe::ParseActivations(activations);
  if (!rounding.ok()) return Fail(rounding.status());
  if (kv_mb < 1 || block_size < 1) {
    return Fail(absl::InvalidArgumentError("--kv-cache-mb and --block-size must be >= 1"));
  }
  moe::cpu::SetNumThreads(threads > 0 ? static_cast<int>(threads) : DefaultThreads());

  auto config = moe::LoadModelConfig(model);
  if (!config.ok()) return Fail(config.status());
  auto ctx = moe::ParallelContext::Create(*config, std::move(world),
                                          tp > 0 ? static_cast<int>(tp) : g_world);
  if (!ctx.ok()) return Fail(ctx.status());
  moe::EngineOptions opt;
  opt.block_size = block_size;
  auto blocks =
      moe::KvCache::BlocksForBudget(*config, block_size, static_cast<uint64_t>(kv_mb) << 20,
                                    mtp ? 1 : 0);
  if (!blocks.ok()) return Fail(blocks.status());
  opt.kv_blocks = *blocks;
  opt.device = *backend;
  opt.cuda_graphs = !no_cuda_graphs;
  opt.weights = *weights;
  opt.activations = *rounding;
  opt.mtp = mtp;
  opt.mtp_draft_tokens = static_cast<int>(mtp_draft_tokens);
  opt.two_batch_overlap = two_batch_overlap;
  const moe::RankShard shard = (*ctx)->shard();
  auto engine = moe::Engine::Load(model, std::move(*ctx), opt);
  if (!engine.ok()) return Fail(engine.status());
  const moe::WeightBytes& wb = (*engine)->model().weight_bytes();
  std::fprintf(stderr, "moe-generate: rank %d/%d (dp %d, tp %d, %zu experts/layer): read %s\n",
               g_rank, g_world, shard.dp_rank, shard.tp_rank, shard.experts.size(),
               wb.Describe().c_str());

  moe::BlockAllocator allocator((*engine)->num_blocks());
  moe::GenerateOptions gen;
  gen.max_new_tokens = max_new;
  gen.stop_at_eos = !ignore_eos;
  gen.prefill_chunk = prefill_chunk;
  gen.speculative = mtp;
  auto out = moe::GenerateGreedy(**engine, allocator, *prompt, gen);
  if (!out.ok()) return Fail(out.status());
  if (g_rank != 0) return 0;
  if (mtp) {
    std::fprintf(stderr,
                 "moe-generate: MTP drafts accepted %lld of %lld (%.1f%%); %zu tokens in %lld "
                 "steps\n",
                 static_cast<long long>(out->accepted), static_cast<long long>(out->drafts),
                 out->drafts ? 100.0 * static_cast<double>(out->accepted) /
                                   static_cast<double>(out->drafts)
                             : 0.0,
                 out->tokens.size(), static_cast<long long>(out->steps));
  }
  for (size_t i = 0; i < out->tokens.size(); ++i) {
    std::printf("%s%d", i ? " " : "", out->tokens[i]);
  }
  std::printf("\n");
  if (!logits_out.empty()) {
    if (absl::Status s = moe::WriteNpy(logits_out, out->logits); !s.ok()) return Fail(s);
  }
  return 0;
}

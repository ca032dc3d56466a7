// EPLB measured on skewed routing, under mpirun (each rank one process, EP over all of them):
// decode steps of a batch with the experts (1) in contiguous blocks, (2) moved by EPLB without
// redundant replicas, (3) moved by EPLB with --redundant-experts replicas — the placements
// computed from the routing counts of run (1). For each: step time, and the tokens the ranks'
// routed experts computed per step (from the counts and the placement), max / mean over the
// ranks. The predicted gain beside the measured one is EPLB's own: the drop of the most loaded
// rank's expert tokens, the whole gain if routed experts were all of a step.
//   mpirun -np 2 build/bench/eplb_bench --model DIR [--batch 32] [--steps 24] [--redundant 2]
// DIR: a checkpoint with skewed routing, e.g. moe-make-model --preset small-dsv3 --router-skew 1.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>

#include "absl/strings/str_format.h"
#include "bench/bench_util.h"
#include "common/cli.h"
#include "common/machine_info.h"
#include "kernels/cpu/ops.h"
#include "parallel/eplb.h"
#include "parallel/mpi_communicator.h"
#include "worker/engine.h"

namespace moe {
namespace {

void Must(const absl::Status& s, const char* what) { MustSucceed(s, "eplb_bench", what); }

struct Measured {
  double step_s = 0;
  std::vector<std::vector<double>> load;  // per MoE layer, per expert: tokens over the run
};

// A prefill of `batch` 32-token prompts, then `steps` decode steps (best of three runs, the
// counts from all of them).
Measured Decode(Engine& engine, int batch, int steps) {
  const ModelConfig& c = engine.config();
  BlockAllocator alloc(engine.num_blocks());
  std::vector<SequenceStep> seqs(static_cast<size_t>(batch));
  for (int b = 0; b < batch; ++b) {
    SequenceStep& s = seqs[static_cast<size_t>(b)];
    s.seq_id = b;
    s.dp_group = b % engine.parallel().plan().dp_size();
    for (int i = 0; i < 32; ++i) s.tokens.push_back((b * 131 + i * 17 + 5) % c.vocab_size);
    Must(alloc.EnsureCapacity(&s.block_table, 32 + 3 * steps + 2, engine.block_size()), "blocks");
  }
  Must(engine.Step(seqs).status(), "prefill");
  for (auto& s : seqs) {
    s.start_pos = 32;
    s.tokens = {static_cast<int32_t>(s.seq_id % c.vocab_size)};
  }
  std::vector<int64_t> sums;
  Measured m;
  m.step_s = 1e30;
  for (int rep = 0; rep < 3; ++rep) {
    const double t0 = Now();
    for (int i = 0; i < steps; ++i) {
      auto out = engine.Step(seqs, /*return_logits=*/false);
      Must(out.status(), "decode");
      if (sums.empty()) sums.assign(out->expert_tokens.size(), 0);
      for (size_t k = 0; k < sums.size(); ++k) sums[k] += out->expert_tokens[k];
      for (auto& s : seqs) ++s.start_pos;
    }
    m.step_s = std::min(m.step_s, (Now() - t0) / steps);
  }
  const int64_t e = c.n_routed_experts;
  for (int64_t l = 0; l < c.num_moe_layers(); ++l) {
    m.load.emplace_back(sums.begin() + l * e, sums.begin() + (l + 1) * e);
  }
  return m;
}

// Expert tokens per rank per step, summed over the layers: max / mean.
double RankImbalance(const std::vector<ExpertPlacement>& layers,
                     const std::vector<std::vector<double>>& load) {
  std::vector<double> ranks(static_cast<size_t>(layers[0].world()), 0.0);
  for (size_t l = 0; l < layers.size(); ++l) {
    const std::vector<double> r = RankLoads(layers[l], load[l]);
    for (size_t i = 0; i < r.size(); ++i) ranks[i] += r[i];
  }
  const double mean = std::accumulate(ranks.begin(), ranks.end(), 0.0) / ranks.size();
  return *std::max_element(ranks.begin(), ranks.end()) / mean;
}

std::unique_ptr<Engine> Load(const std::string& dir, int64_t redundant) {
  auto config = LoadModelConfig(dir);
  Must(config.status(), "config");
  auto world = MakeMpiWorldCommunicator();
  Must(world.status(), "MPI");
  auto ctx = ParallelContext::Create(*config, std::move(*world), 1, redundant);
  Must(ctx.status(), "layout");
  EngineOptions eo;
  eo.block_size = 16;
  eo.kv_blocks = *KvCache::BlocksForBudget(*config, eo.block_size, 256ull << 20);
  auto e = Engine::Load(dir, std::move(*ctx), eo);
  Must(e.status(), "load");
  return std::move(*e);
}

std::vector<ExpertPlacement> Balanced(const Engine& engine, const Measured& from,
                                      int64_t redundant) {
  std::vector<ExpertPlacement> out;
  for (const std::vector<double>& load : from.load) {
    EplbOptions o;
    o.world = engine.parallel().plan().world_size();
    o.redundant = redundant;
    o.expert_groups = engine.config().n_group;
    auto p = BalanceExperts(load, o);
    Must(p.status(), "EPLB");
    out.push_back(std::move(*p));
  }
  return out;
}

int Main(int argc, char** argv) {
  Must(MpiRuntime::Init(&argc, &argv), "MPI");
  std::string model;
  int64_t batch = 32, steps = 24, redundant = 2, threads = 1;
  FlagParser flags("eplb_bench",
                   "EPLB on skewed routing: step time and rank load, before and after.");
  flags.AddString("model", &model,
                  "Checkpoint folder (skewed routing: moe-make-model --router-skew).",
                  /*required=*/true);
  flags.AddInt("batch", &batch, "Sequences decoding together.");
  flags.AddInt("steps", &steps, "Decode steps per run (best of three runs).");
  flags.AddInt("redundant", &redundant, "Redundant experts of the third run.");
  flags.AddInt("threads", &threads, "CPU threads per rank.");
  flags.ParseOrExit(argc, argv);
  cpu::SetNumThreads(static_cast<int>(threads));

  auto plain = Load(model, 0);
  const int world = plain->parallel().plan().world_size();
  const bool leader = plain->parallel().rank() == 0;
  const int64_t layers = plain->config().num_moe_layers();
  const Measured contiguous = Decode(*plain, static_cast<int>(batch), static_cast<int>(steps));
  const std::vector<ExpertPlacement> blocks(static_cast<size_t>(layers),
                                            plain->parallel().plan().experts());
  const std::vector<ExpertPlacement> moved = Balanced(*plain, contiguous, 0);
  Must(plain->SetExpertPlacement(moved), "move");
  const Measured balanced = Decode(*plain, static_cast<int>(batch), static_cast<int>(steps));
  plain.reset();

  auto replicated = Load(model, redundant);
  const std::vector<ExpertPlacement> with_replicas = Balanced(*replicated, contiguous, redundant);
  Must(replicated->SetExpertPlacement(with_replicas), "move");
  const Measured redundant_run =
      Decode(*replicated, static_cast<int>(batch), static_cast<int>(steps));
  if (!leader) return 0;

  std::printf("machine: %s\n", Describe(ReadMachineInfo()).c_str());
  std::printf(
      "eplb_bench: %s, W = %d ranks (EP %d, %lld thread(s) each), batch %lld, %lld decode "
      "steps, best of 3\n\n",
      model.c_str(), world, world, static_cast<long long>(threads), static_cast<long long>(batch),
      static_cast<long long>(steps));
  std::printf("%-34s %10s %16s %16s %18s\n", "placement", "step ms", "rank max/mean",
              "predicted gain", "measured gain");
  const double base_imb = RankImbalance(blocks, contiguous.load);
  auto row = [&](const char* name, const Measured& m, const std::vector<ExpertPlacement>& p) {
    const double imb = RankImbalance(p, m.load);
    std::printf("%-34s %10.2f %16.3f %15.2fx %17.2fx\n", name, m.step_s * 1e3, imb, base_imb / imb,
                contiguous.step_s / m.step_s);
  };
  row("contiguous blocks", contiguous, blocks);
  row("EPLB, no replicas", balanced, moved);
  row(absl::StrFormat("EPLB, %lld redundant experts", static_cast<long long>(redundant)).c_str(),
      redundant_run, with_replicas);
  return 0;
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) { return moe::Main(argc, argv); }

// Two-batch overlap measured under mpirun (one process a rank; DP attention with EP over all of
// them): the same steps with and without it, alternating, best of the rounds. Without overlap the
// step is compute + communication (the time in the MoE dispatch and combine, measured); with it,
// ideally max(compute, communication), so at most min(compute, communication) can be hidden.
// Prints, per phase (decode of `batch` sequences a rank; prefill of `prompt`-token prompts):
// step ms without and with, the communication per step, the time hidden and its share of the
// ideal. Meant for ranks on different hosts (bench/scaling/run_netns_tbo.sh shapes the links);
// ranks sharing a host's cores leave little to overlap.
//   mpirun -np 3 build/bench/tbo_bench --model DIR [--batch 16] [--steps 16] [--prompt 256]
#include <algorithm>
#include <chrono>
#include <cstdio>

#include "absl/strings/str_format.h"
#include "bench/bench_util.h"
#include "common/cli.h"
#include "common/machine_info.h"
#include "kernels/cpu/ops.h"
#include "parallel/mpi_communicator.h"
#include "worker/engine.h"

namespace moe {
namespace {

void Must(const absl::Status& s, const char* what) { MustSucceed(s, "tbo_bench", what); }

std::unique_ptr<Engine> Load(const std::string& dir, bool overlap) {
  auto config = LoadModelConfig(dir);
  Must(config.status(), "config");
  auto world = MakeMpiWorldCommunicator();
  Must(world.status(), "MPI");
  auto ctx = ParallelContext::Create(*config, std::move(*world), 1);
  Must(ctx.status(), "layout");
  EngineOptions eo;
  eo.block_size = 16;
  eo.kv_blocks = *KvCache::BlocksForBudget(*config, eo.block_size, 256ull << 20);
  eo.two_batch_overlap = overlap;
  auto e = Engine::Load(dir, std::move(*ctx), eo);
  Must(e.status(), "load");
  return std::move(*e);
}

struct Timing {
  double step_s = 1e30;  // best of the rounds
  double wait_s = 0;     // collective wait per step, in that round
};

// `per_rank` sequences on each rank (its own DP group) of `prompt` tokens: one prefill step, then
// `steps` decode steps. Each round starts over on fresh blocks.
struct Phases {
  Timing prefill, decode;
};

Phases Measure(Engine& engine, int per_rank, int prompt, int steps) {
  const ModelConfig& c = engine.config();
  const int world = engine.parallel().plan().world_size();
  BlockAllocator alloc(engine.num_blocks());
  std::vector<SequenceStep> seqs(static_cast<size_t>(per_rank * world));
  for (size_t b = 0; b < seqs.size(); ++b) {
    SequenceStep& s = seqs[b];
    s.seq_id = static_cast<int64_t>(b);
    s.dp_group = static_cast<int>(b) % world;
    for (int i = 0; i < prompt; ++i) {
      s.tokens.push_back(static_cast<int32_t>((b * 131 + i * 17 + 5) % c.vocab_size));
    }
    Must(alloc.EnsureCapacity(&s.block_table, prompt + steps + 1, engine.block_size()), "blocks");
  }
  // `count` steps of `seqs` (each advancing its sequences), per step.
  auto timed = [&](int count) {
    const double w0 = engine.model().CollectiveWaitSeconds(), t0 = Now();
    for (int i = 0; i < count; ++i) {
      Must(engine.Step(seqs, /*return_logits=*/false).status(), "step");
      for (auto& s : seqs) {
        s.start_pos += static_cast<int64_t>(s.tokens.size());
        s.tokens = {static_cast<int32_t>(s.seq_id % c.vocab_size)};
      }
    }
    return Timing{(Now() - t0) / count, (engine.model().CollectiveWaitSeconds() - w0) / count};
  };
  Phases p;
  p.prefill = timed(1);
  p.decode = timed(steps);
  return p;
}

void Keep(const Phases& round, Phases* best) {
  for (auto [r, b] : {std::pair{&round.prefill, &best->prefill}, {&round.decode, &best->decode}}) {
    if (r->step_s < b->step_s) *b = *r;
  }
}

int Main(int argc, char** argv) {
  Must(MpiRuntime::Init(&argc, &argv), "MPI");
  std::string model;
  int64_t batch = 16, steps = 16, prompt = 256, rounds = 3, threads = 1;
  FlagParser flags("tbo_bench", "Two-batch overlap: step time with and without it.");
  flags.AddString("model", &model, "Checkpoint folder.", /*required=*/true);
  flags.AddInt("batch", &batch, "Sequences decoding together on each rank.");
  flags.AddInt("steps", &steps, "Decode steps per round.");
  flags.AddInt("prompt", &prompt, "Prompt tokens of each sequence (the prefill step).");
  flags.AddInt("rounds", &rounds, "Rounds of each mode, alternating (the best is kept).");
  flags.AddInt("threads", &threads, "CPU threads per rank.");
  flags.ParseOrExit(argc, argv);
  cpu::SetNumThreads(static_cast<int>(threads));

  auto off = Load(model, false);
  auto on = Load(model, true);
  const int world = off->parallel().plan().world_size();
  Phases best_off, best_on;  // Timing starts at 1e30: any round is better
  for (int r = 0; r < rounds; ++r) {
    Keep(Measure(*off, static_cast<int>(batch), static_cast<int>(prompt), static_cast<int>(steps)),
         &best_off);
    Keep(Measure(*on, static_cast<int>(batch), static_cast<int>(prompt), static_cast<int>(steps)),
         &best_on);
  }
  if (off->parallel().rank() != 0) return 0;
  std::printf("machine: %s\n", Describe(ReadMachineInfo()).c_str());
  std::printf(
      "tbo_bench: %s, W = %d ranks (DP attention + EP %d, %lld thread(s) each), %lld sequences a "
      "rank, prompts of %lld, %lld decode steps, best of %lld rounds (rank 0's view)\n\n",
      model.c_str(), world, world, static_cast<long long>(threads), static_cast<long long>(batch),
      static_cast<long long>(prompt), static_cast<long long>(steps),
      static_cast<long long>(rounds));
  std::printf("%-8s %12s %12s %10s %10s %12s %10s %10s %12s\n", "phase", "no TBO ms", "comm ms",
              "compute", "TBO ms", "exposed ms", "speed-up", "hidden ms", "of ideal");
  auto row = [](const char* name, const Timing& a, const Timing& b) {
    const double compute = a.step_s - a.wait_s;
    const double hidden = a.step_s - b.step_s, ideal = std::min(compute, a.wait_s);
    std::printf("%-8s %12.2f %12.2f %10.2f %10.2f %12.2f %9.2fx %10.2f %11.0f%%\n", name,
                a.step_s * 1e3, a.wait_s * 1e3, compute * 1e3, b.step_s * 1e3, b.wait_s * 1e3,
                a.step_s / b.step_s, hidden * 1e3, ideal > 0 ? 100 * hidden / ideal : 0.0);
  };
  row("prefill", best_off.prefill, best_on.prefill);
  row("decode", best_off.decode, best_on.decode);
  return 0;
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) { return moe::Main(argc, argv); }

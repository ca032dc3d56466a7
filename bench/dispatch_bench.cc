// MoE dispatch + combine over Open MPI against a raw MPI_Alltoallv of the same bytes.
// Run under mpirun: `mpirun -np W bench/dispatch_bench [--tokens 1,16,256,4096]`.
// Routing: each token picks top_k distinct experts uniformly at random (seeded per rank); the
// experts are the identity, so the figure is the exchange alone. Times are the slowest rank's,
// best of --iters. Effective bytes: hidden-state bytes each rank sends, both directions.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/cli.h"
#include "common/machine_info.h"
#include "kernels/cpu/ops.h"
#include "parallel/moe_dispatch.h"
#include "parallel/mpi_communicator.h"
#include "tools/planner.h"

namespace {

double Now() { return MPI_Wtime(); }

double MaxOverRanks(double t) {
  double m = 0;
  MPI_Allreduce(&t, &m, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  std::string tokens_list = "1,4,16,64,256,1024,4096";
  int64_t hidden = 7168, experts = 256, top_k = 8, iters = 5, ranks_per_node = 0;
  double model_gbps = 0, model_latency_us = 0, model_intra_gbps = 1000;
  bool csv = false;
  moe::FlagParser flags("dispatch_bench",
                        "MoE dispatch + combine time against a raw MPI_Alltoallv of the same "
                        "bytes (run under mpirun).");
  flags.AddString("tokens", &tokens_list, "Tokens per rank to measure, comma-separated.");
  flags.AddInt("hidden", &hidden, "Hidden size (DeepSeek-V3: 7168).");
  flags.AddInt("experts", &experts, "Routed experts.");
  flags.AddInt("top-k", &top_k, "Experts per token.");
  flags.AddInt("iters", &iters, "Timed repetitions (best is kept).");
  flags.AddDouble("model-gbps", &model_gbps,
                  "Also print the planner's communication model for links of this many GB/s "
                  "between nodes (0: no model).");
  flags.AddDouble("model-intra-gbps", &model_intra_gbps, "Model: GB/s between ranks of a node.");
  flags.AddDouble("model-latency-us", &model_latency_us, "Model: latency per collective, us.");
  flags.AddInt("ranks-per-node", &ranks_per_node, "Model: ranks sharing a node (0: all).");
  flags.AddBool("csv", &csv, "Print CSV rows instead of the table.");
  flags.ParseOrExit(argc, argv);
  if (!moe::MpiRuntime::Init(&argc, &argv).ok()) return 1;
  auto world = moe::MakeMpiWorldCommunicator();
  if (!world.ok()) return 1;
  moe::Communicator& comm = **world;
  const int W = comm.size(), me = comm.rank();
  moe::cpu::SetNumThreads(1);
  const moe::ExpertPlacement placement = moe::ExpertPlacement::Contiguous(experts, W);
  moe::MoeDispatcher dispatcher(&comm, &placement, hidden, top_k);

  if (me == 0) {
    // CSV goes to stdout for plots: the machine line then goes to stderr.
    std::fprintf(csv ? stderr : stdout, "machine: %s\n",
                 moe::Describe(moe::ReadMachineInfo()).c_str());
  }
  if (me == 0 && csv) {
    std::printf("world,tokens,send_bytes_per_rank,ours_us,raw_us,model_us\n");
  } else if (me == 0) {
    std::printf(
        "dispatch_bench: W=%d, hidden %lld, top-%lld of %lld experts, float32 payload, "
        "%s transport\n",
        W, static_cast<long long>(hidden), static_cast<long long>(top_k),
        static_cast<long long>(experts),
        dispatcher.transport() == moe::MoeDispatcher::Transport::kSharedMemory ? "shared-memory"
                                                                               : "all-to-all-v");
    std::printf("%8s %12s %12s %12s %12s %12s %7s %12s %7s\n", "tokens", "MB/rank", "ours us",
                "raw us", "ours GB/s", "raw GB/s", "ratio", "model us", "ours/model");
  }
  for (absl::string_view part : absl::StrSplit(tokens_list, ',')) {
    int64_t n = 0;
    if (!absl::SimpleAtoi(part, &n) || n < 1) continue;
    std::mt19937 rng(1234 + me);
    std::vector<int32_t> ids(static_cast<size_t>(n * top_k));
    std::vector<float> weights(ids.size(), 1.0f / top_k);
    std::vector<int32_t> all(static_cast<size_t>(experts));
    std::iota(all.begin(), all.end(), 0);
    for (int64_t t = 0; t < n; ++t) {
      std::shuffle(all.begin(), all.end(), rng);
      std::copy(all.begin(), all.begin() + top_k, ids.begin() + t * top_k);
    }
    moe::FloatVector x(static_cast<size_t>(n * hidden), 0.5f);

    moe::FloatVector out(static_cast<size_t>(n * hidden));
    // Ours: dispatch, identity experts, combine.
    double best = 1e30;
    std::vector<size_t> send_bytes(W), recv_bytes(W);
    for (int64_t it = 0; it < iters + 1; ++it) {
      MPI_Barrier(MPI_COMM_WORLD);
      const double t0 = Now();
      auto d = dispatcher.Dispatch(x.data(), n, ids.data(), weights.data());
      if (!d.ok()) return 1;
      const double t1 = Now();
      std::memcpy(d->y, d->x, static_cast<size_t>(d->rows * hidden) * sizeof(float));  // identity
      const double t2 = Now();
      if (!dispatcher.Combine(d->handle, out.data()).ok()) return 1;
      const double dt = MaxOverRanks((t1 - t0) + (Now() - t2));  // the experts are not timed
      if (it > 0) best = std::min(best, dt);                     // the first run warms up
      for (int r = 0; r < W; ++r) {
        send_bytes[r] = d->handle.counts[me * W + r] * hidden * sizeof(float);
        recv_bytes[r] = d->handle.counts[r * W + me] * hidden * sizeof(float);
      }
    }
    // Raw: the same per-peer bytes, one MPI_Alltoallv each way, contiguous buffers.
    const size_t total_send = std::accumulate(send_bytes.begin(), send_bytes.end(), size_t{0});
    const size_t total_recv = std::accumulate(recv_bytes.begin(), recv_bytes.end(), size_t{0});
    std::vector<char> a(total_send, 1), b(total_recv, 2);
    double raw = 1e30;
    for (int64_t it = 0; it < iters + 1; ++it) {
      MPI_Barrier(MPI_COMM_WORLD);
      const double t0 = Now();
      if (!comm.AllToAllV(a.data(), send_bytes, b.data(), recv_bytes).ok()) return 1;
      if (!comm.AllToAllV(b.data(), recv_bytes, a.data(), send_bytes).ok()) return 1;
      const double dt = MaxOverRanks(Now() - t0);
      if (it > 0) raw = std::min(raw, dt);
    }
    double bytes = 2.0 * static_cast<double>(total_send);  // there and back, this rank
    double mean_bytes = 0;
    MPI_Allreduce(&bytes, &mean_bytes, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    mean_bytes /= W;
    // The planner's model of what ran: the slowest rank's payload each way, plus the latency of
    // each collective (dispatch: counts, routing entries, rows; combine: rows).
    // Bytes to other ranks (rows a rank keeps never reach the network).
    double max_sent = 0, sent = static_cast<double>(total_send - send_bytes[me]);
    MPI_Allreduce(&sent, &max_sent, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    const int rpn = ranks_per_node > 0 ? static_cast<int>(ranks_per_node) : W;
    const double model = model_gbps > 0
                             ? 2 * moe::AllToAllSeconds(max_sent, W, rpn, model_intra_gbps,
                                                        model_gbps, model_latency_us) +
                                   2 * model_latency_us * 1e-6
                             : 0;
    if (me == 0 && csv) {
      std::printf("%d,%lld,%.0f,%.1f,%.1f,%.1f\n", W, static_cast<long long>(n), max_sent,
                  best * 1e6, raw * 1e6, model * 1e6);
    } else if (me == 0) {
      std::printf("%8lld %12.2f %12.1f %12.1f %12.2f %12.2f %7.2f", static_cast<long long>(n),
                  mean_bytes / 1e6, best * 1e6, raw * 1e6, mean_bytes / best / 1e9,
                  mean_bytes / raw / 1e9, raw / best);
      if (model > 0) std::printf(" %12.1f %7.2f", model * 1e6, best / model);
      std::printf("\n");
    }
    std::fflush(stdout);
  }
  return 0;
}

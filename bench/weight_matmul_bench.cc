// The compact-weight products on their own (kernels/cpu/weight_matmul.h), per format: few-row
// products as weight bytes read per second against the machine's read bandwidth, many-row
// products as FLOP/s against float32 sgemm at the same shape. Both bounds measured in this run.
#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench/bandwidth.h"
#include "bench/bench_util.h"
#include "common/cli.h"
#include "common/dtype.h"
#include "common/machine_info.h"
#include "common/tensor.h"
#include "kernels/cpu/bf16_product.h"
#include "kernels/cpu/int4_int8_product.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/weight_matmul.h"

namespace moe {
namespace {

struct Stored {
  std::vector<uint8_t> data;
  std::vector<float> block_scales;
  std::vector<uint16_t> group_scales;
  WeightMatrix w;
};

// A random [n, k] weight in format f (values do not matter for timing, only layout).
Stored Make(WeightFormat f, int64_t n, int64_t k) {
  Stored s;
  std::mt19937 rng(1);
  WeightMatrix& w = s.w;
  w.format = f;
  w.rows = n;
  w.cols = k;
  switch (f) {
    case WeightFormat::kF32:
      w.row_stride = k * 4;
      break;
    case WeightFormat::kBF16:
    case WeightFormat::kF16:
      w.row_stride = k * 2;
      break;
    case WeightFormat::kF8Block:
      w.row_stride = k;
      w.scale_stride = (k + 127) / 128;
      s.block_scales.assign(static_cast<size_t>((n + 127) / 128 * w.scale_stride), 1e-3f);
      break;
    case WeightFormat::kInt4Group:
      w.row_stride = k / 2;
      w.scale_stride = k / 32;
      s.group_scales.assign(static_cast<size_t>(n * w.scale_stride), F32ToBF16(0.01f));
      break;
  }
  s.data.resize(static_cast<size_t>(n * w.row_stride));
  for (auto& b : s.data) b = static_cast<uint8_t>(rng() & 0x77);  // small finite values
  w.data = s.data.data();
  w.block_scales = s.block_scales.data();
  w.group_scales = s.group_scales.data();
  return s;
}

double TimeBest(int repeats, const std::function<void()>& f) {
  f();
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    const double t0 = Now();
    f();
    best = std::min(best, Now() - t0);
  }
  return best;
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  int64_t threads = 0, n = 8192, k = 4096;
  moe::FlagParser flags("weight_matmul_bench",
                        "Throughput of y = x W^T with W in each checkpoint format (f32, bf16, f16, "
                        "fp8 blocks, int4 groups).");
  flags.AddInt("threads", &threads, "Threads (0: all cores).");
  flags.AddInt("n", &n, "Output features (rows of W).");
  flags.AddInt("k", &k, "Input features (columns of W; a multiple of 128).");
  flags.ParseOrExit(argc, argv);
  if (n < 1 || k < 128 || k % 128 != 0) {
    std::fprintf(stderr, "weight_matmul_bench: --n must be >= 1 and --k a positive multiple of 128\n");
    return 1;
  }
  const int nthreads = threads > 0 ? static_cast<int>(threads)
                                   : static_cast<int>(std::thread::hardware_concurrency());
  moe::cpu::SetNumThreads(nthreads);
  const double read_bw = moe::bench::MemoryReadBandwidth(1ull << 30, 5);
  const double gemm = moe::bench::GemmFlops(512, n, k, 3);
  std::printf("machine: %s\n", moe::Describe(moe::ReadMachineInfo()).c_str());
  std::printf("weight_matmul_bench: W [%lld, %lld], %d threads, kernels %s\n",
              static_cast<long long>(n), static_cast<long long>(k), nthreads,
              moe::cpu::WeightKernelTarget());
  std::printf("bounds: memory read %.1f GB/s, sgemm 512x%lldx%lld %.1f GFLOP/s\n\n",
              read_bw / 1e9, static_cast<long long>(n), static_cast<long long>(k), gemm / 1e9);
  std::printf("%-10s %5s %12s %22s %8s\n", "format", "rows", "time", "figure", "ratio");
  // Each format with x in float32, then the formats the CPU has rounded products for with x
  // rounded (--activations: bf16 for bf16 and fp8 weights, int8 for int4).
  struct Pass {
    moe::WeightFormat format;
    moe::Activations x;
  };
  std::vector<Pass> passes;
  for (moe::WeightFormat f :
       {moe::WeightFormat::kF32, moe::WeightFormat::kBF16, moe::WeightFormat::kF16,
        moe::WeightFormat::kF8Block, moe::WeightFormat::kInt4Group}) {
    passes.push_back({f, moe::Activations::kF32});
    const bool bf16 = f == moe::WeightFormat::kBF16 || f == moe::WeightFormat::kF8Block;
    if (bf16 && moe::cpu::HasBf16DotProducts()) passes.push_back({f, moe::Activations::kBf16});
    if (f == moe::WeightFormat::kInt4Group && moe::cpu::HasInt8DotProducts()) {
      passes.push_back({f, moe::Activations::kInt8});
    }
  }
  for (const Pass& pass : passes) {
    moe::Stored s = moe::Make(pass.format, n, k);
    s.w.x_rounding = pass.x;
    for (int64_t m : {1, 4, 8, 16, 32, 64, 512}) {
      moe::FloatVector x(static_cast<size_t>(m * k), 0.5f), y(static_cast<size_t>(m * n));
      const double t = moe::TimeBest(m <= 8 ? 10 : 3, [&] {
        moe::cpu::MatMulNT(m, x.data(), k, s.w, y.data(), n);
      });
      const char* suffix = pass.x == moe::Activations::kBf16   ? "/xb16"
                           : pass.x == moe::Activations::kInt8 ? "/x8"
                                                               : "";
      const std::string name = std::string(moe::WeightFormatName(pass.format)) + suffix;
      if (m <= moe::cpu::kFusedMaxRows) {
        const double bw = static_cast<double>(s.w.bytes()) / t;
        std::printf("%-10s %5lld %9.3f ms %17.1f GB/s %8.2f\n", name.c_str(),
                    static_cast<long long>(m), t * 1e3, bw / 1e9, bw / read_bw);
      } else {
        const double flops = 2.0 * m * n * k / t;
        std::printf("%-10s %5lld %9.3f ms %14.1f GFLOP/s %8.2f\n", name.c_str(),
                    static_cast<long long>(m), t * 1e3, flops / 1e9, flops / gemm);
      }
    }
  }
  return 0;
}

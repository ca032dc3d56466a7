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

#include "absl/strings/str_split.h"
#include "bench/bandwidth.h"
#include "bench/bench_util.h"
#include "checkpoint/quantize.h"
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

// A [n, k] weight in format f holding Gaussian values (σ 0.02, as initialised checkpoints hold)
// stored as the checkpoint would store them: fp8 and int4 through the project's quantizers, so
// the codes occur as often as in a real weight (e4m3's subnormal codes among them, which some
// CPUs multiply far slower than normal floats).
Stored Make(WeightFormat f, int64_t n, int64_t k) {
  Stored s;
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<float> values(static_cast<size_t>(n * k));
  for (float& v : values) v = normal(rng);
  WeightMatrix& w = s.w;
  w.format = f;
  w.rows = n;
  w.cols = k;
  auto to_bytes = [&](const void* p, size_t bytes) {
    s.data.resize(bytes);
    std::memcpy(s.data.data(), p, bytes);
  };
  switch (f) {
    case WeightFormat::kF32:
      w.row_stride = k * 4;
      to_bytes(values.data(), values.size() * 4);
      break;
    case WeightFormat::kBF16:
    case WeightFormat::kF16: {
      w.row_stride = k * 2;
      std::vector<uint16_t> half(values.size());
      for (size_t i = 0; i < values.size(); ++i) {
        half[i] = f == WeightFormat::kBF16 ? F32ToBF16(values[i]) : F32ToF16(values[i]);
      }
      to_bytes(half.data(), half.size() * 2);
      break;
    }
    case WeightFormat::kF8Block: {
      w.row_stride = k;
      w.scale_stride = (k + 127) / 128;
      QuantizeFp8(values.data(), n, k, 128, 128, &s.data, &s.block_scales);
      break;
    }
    case WeightFormat::kInt4Group: {
      w.row_stride = k / 2;
      w.scale_stride = k / 32;
      std::vector<int32_t> packed;
      QuantizeInt4(values.data(), n, k, 32, &packed, &s.group_scales);
      to_bytes(packed.data(), packed.size() * 4);
      break;
    }
  }
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
  std::string formats_flag = "f32,bf16,f16,fp8,int4", rows_flag = "1,4,8,16,32,64,512";
  moe::FlagParser flags("weight_matmul_bench",
                        "Throughput of y = x W^T with W in each checkpoint format (f32, bf16, f16, "
                        "fp8 blocks, int4 groups).");
  flags.AddInt("threads", &threads, "Threads (0: all cores).");
  flags.AddInt("n", &n, "Output features (rows of W).");
  flags.AddInt("k", &k, "Input features (columns of W; a multiple of 128).");
  flags.AddString("formats", &formats_flag,
                  "Weight formats, comma-separated: f32, bf16, f16, fp8, int4.");
  flags.AddString("rows", &rows_flag, "Rows of x, comma-separated.");
  flags.ParseOrExit(argc, argv);
  std::vector<moe::WeightFormat> formats;
  for (absl::string_view name : absl::StrSplit(formats_flag, ',', absl::SkipEmpty())) {
    bool known = false;
    for (moe::WeightFormat f :
         {moe::WeightFormat::kF32, moe::WeightFormat::kBF16, moe::WeightFormat::kF16,
          moe::WeightFormat::kF8Block, moe::WeightFormat::kInt4Group}) {
      if (moe::WeightFormatName(f) == name) {
        formats.push_back(f);
        known = true;
      }
    }
    if (!known) {
      std::fprintf(stderr, "weight_matmul_bench: --formats: unknown format '%s'\n",
                   std::string(name).c_str());
      return 1;
    }
  }
  const std::vector<int64_t> rows =
      moe::PositiveIntsOrExit<int64_t>(rows_flag, "weight_matmul_bench", "rows", "row count");
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
  for (moe::WeightFormat f : formats) {
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
    for (int64_t m : rows) {
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

// The CUDA backend's figures on the GPU it runs on, each against a bound measured in the same run
// (device events around the region, warm-up first, median of repeats, random data):
//   bounds: device-to-device copy bandwidth (bytes read + written), cuBLAS bf16 GEMM rate;
//   MLA decode attention (DeepSeek-V3 shape: 128 heads, 512 + 64 latent, float32 cache): the
//     fewest bytes it must move per second, over the copy bandwidth (FlashMLA, the reference
//     kernel, reports about 3000 GB/s on H800 with a bf16 cache);
//   grouped expert GEMM (gate_up of DeepSeek-V3: 256 experts, 4096 x 7168; bf16 and fp8 blocks):
//     TFLOP/s over a cuBLAS bf16 dense GEMM of the same total shape;
//   end-to-end decode tokens/s of small-dsv3 at batch 1 and 64 (graphs on, greedy on the device,
//     only token ids copied back), against a roofline of weight bytes and FLOPs.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numeric>
#include <random>
#include <type_traits>
#include <vector>

#include "absl/strings/str_format.h"
#include "bench/bench_util.h"
#include "common/cli.h"
#include "common/dtype.h"
#include "common/machine_info.h"
#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/ops.h"
#include "tools/model_maker.h"
#include "worker/engine.h"

namespace moe::cuda {
namespace {

void Check(const absl::Status& s, const char* what) {
  if (!s.ok()) {
    std::fprintf(stderr, "cuda_bench: %s: %s\n", what, std::string(s.message()).c_str());
    std::exit(1);
  }
}
void Check(cudaError_t e, const char* what) { Check(CudaStatus(e, what), what); }

// Fills device memory with random values of type T (a 16 MiB random block, repeated).
template <typename T>
void FillRandom(T* dst, size_t n, float scale, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<T> block(std::min<size_t>(n, (16u << 20) / sizeof(T)));
  for (T& v : block) {
    if constexpr (std::is_same_v<T, bf16>) {
      __nv_bfloat16_raw raw;
      raw.x = F32ToBF16(d(rng));
      v = bf16(raw);
    } else if constexpr (std::is_same_v<T, uint8_t>) {  // fp8 e4m3 codes, none of them NaN
      v = static_cast<uint8_t>(static_cast<int>(d(rng)) & 0xf7);
    } else {
      v = static_cast<T>(d(rng));
    }
  }
  for (size_t off = 0; off < n; off += block.size()) {
    const size_t count = std::min(block.size(), n - off);
    Check(cudaMemcpy(dst + off, block.data(), count * sizeof(T), cudaMemcpyHostToDevice), "fill");
  }
}

template <typename T>
DeviceBuffer<T> Random(size_t n, float scale, uint64_t seed) {
  DeviceBuffer<T> b;
  Check(b.Allocate(n), "allocate");
  FillRandom(b.data(), n, scale, seed);
  return b;
}

// Median seconds of `launch` (enqueues work on `stream`) over `reps` runs, after `warmup`.
template <typename F>
double MedianSeconds(cudaStream_t stream, int warmup, int reps, F&& launch) {
  cudaEvent_t a, b;
  Check(cudaEventCreate(&a), "event");
  Check(cudaEventCreate(&b), "event");
  for (int i = 0; i < warmup; ++i) launch();
  Check(cudaStreamSynchronize(stream), "warm-up");
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    Check(cudaEventRecord(a, stream), "record");
    launch();
    Check(cudaEventRecord(b, stream), "record");
    Check(cudaEventSynchronize(b), "sync");
    float ms = 0;
    Check(cudaEventElapsedTime(&ms, a, b), "elapsed");
    t.push_back(ms * 1e-3);
  }
  Check(cudaGetLastError(), "launch");
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

void Row(const std::string& name, const std::string& figure, const std::string& bound,
         double ratio) {
  std::printf("%-44s %20s %20s %7.2f\n", name.c_str(), figure.c_str(), bound.c_str(), ratio);
}

struct Bounds {
  double copy_bw;     // bytes/s, read + written
  double gemm_flops;  // bf16 operands, float32 result
};

Bounds MeasureBounds(cudaStream_t s, cublasHandle_t blas) {
  Bounds b;
  const size_t n = 1ull << 28;  // 1 GiB of floats each way
  auto src = Random<float>(n, 1.0f, 1), dst = Random<float>(n, 1.0f, 2);
  const double t = MedianSeconds(s, 2, 10, [&] {
    Check(cudaMemcpyAsync(dst.data(), src.data(), n * 4, cudaMemcpyDeviceToDevice, s), "copy");
  });
  b.copy_bw = 2.0 * n * 4 / t;
  const int64_t m = 8192;
  auto x = Random<bf16>(m * m, 1.0f, 3), w = Random<bf16>(m * m, 0.02f, 4);
  auto y = Random<float>(m * m, 1.0f, 5);
  const double tg = MedianSeconds(s, 2, 10, [&] {
    Check(BatchedMatMul(blas, 1, m, m, m, {x.data(), m, 0}, {w.data(), m, 0}, true, y.data(), m, 0,
                        s),
          "gemm");
  });
  b.gemm_flops = 2.0 * m * m * m / tg;
  return b;
}

void MlaDecode(cudaStream_t s, const Bounds& bounds) {
  const int64_t heads = 128, lora = 512, rope = 64, row = lora + rope, bs = 64, ctx = 4096;
  for (int64_t b : {8, 64}) {
    const int64_t blocks_per_seq = ctx / bs, blocks = b * blocks_per_seq;
    auto cache = Random<float>(blocks * bs * row, 1.0f, 10);
    auto q = Random<float>(b * heads * row, 1.0f, 11);
    DeviceBuffer<float> out;
    Check(out.Allocate(b * heads * lora), "allocate");
    // Each sequence's blocks scattered over the pool.
    std::vector<int32_t> table(blocks), lens(b, static_cast<int32_t>(ctx));
    for (int64_t i = 0; i < blocks; ++i) table[i] = static_cast<int32_t>(i);
    std::shuffle(table.begin(), table.end(), std::mt19937(7));
    DeviceBuffer<int32_t> dt, dl;
    Check(dt.Upload(table), "upload");
    Check(dl.Upload(lens), "upload");
    const double t = MedianSeconds(s, 3, 20, [&] {
      MlaDecodeAttention(q.data(), b, heads, lora, rope, cache.data(), dt.data(), blocks_per_seq,
                         dl.data(), bs, 0.1f, out.data(), s);
    });
    const double bytes = 4.0 * (b * ctx * row + b * heads * row + b * heads * lora);
    Row(absl::StrFormat("MLA decode b=%d ctx=%d (fp32 cache)", b, ctx),
        absl::StrFormat("%.0f GB/s", bytes / t / 1e9),
        absl::StrFormat("%.0f GB/s copy", bounds.copy_bw / 1e9), bytes / t / bounds.copy_bw);
  }
}

void GroupedGemm(cudaStream_t s, cublasHandle_t blas, const Bounds& bounds) {
  const int64_t E = 256, top_k = 8, n = 4096, k = 7168;
  auto weights = Random<bf16>(static_cast<size_t>(E * n * k), 0.02f, 20);
  // The same experts as DeepSeek-V3 ships them: fp8 bytes and 128x128 block scales.
  auto fp8 = Random<uint8_t>(static_cast<size_t>(E * n * k), 40.0f, 23);
  const int64_t blocks = (n / 128) * (k / 128);
  auto scales = Random<float>(static_cast<size_t>(E * blocks), 0.001f, 24);
  std::vector<WeightView> bf16_views, fp8_views;
  for (int64_t e = 0; e < E; ++e) {
    WeightView v;
    v.rows = n;
    v.cols = k;
    v.data = reinterpret_cast<const uint8_t*>(weights.data() + e * n * k);
    v.row_stride = k * 2;
    bf16_views.push_back(v);
    v.format = WeightFormat::kF8Block;
    v.data = fp8.data() + e * n * k;
    v.row_stride = k;
    v.block_scales = scales.data() + e * blocks;
    v.scale_stride = k / 128;
    fp8_views.push_back(v);
  }
  DeviceBuffer<WeightView> dbf16, dfp8;
  Check(dbf16.Upload(bf16_views), "upload");
  Check(dfp8.Upload(fp8_views), "upload");
  for (int64_t tokens : {64, 4096}) {
    // Uniform random routing: each token's top_k distinct experts.
    std::mt19937 rng(static_cast<unsigned>(tokens));
    std::vector<int32_t> count(E, 0), all(E);
    for (int64_t t = 0; t < tokens; ++t) {
      std::iota(all.begin(), all.end(), 0);
      std::shuffle(all.begin(), all.end(), rng);
      for (int64_t j = 0; j < top_k; ++j) ++count[all[j]];
    }
    std::vector<int32_t> offsets(E + 1, 0);
    for (int64_t e = 0; e < E; ++e) offsets[e + 1] = offsets[e] + count[e];
    const int64_t rows = tokens * top_k;
    DeviceBuffer<int32_t> doff;
    Check(doff.Upload(offsets), "upload");
    auto x = Random<float>(rows * k, 1.0f, 21);
    DeviceBuffer<float> y;
    Check(y.Allocate(rows * n), "allocate");
    // The dense product of the same total shape [rows, k] x [n, k]^T through cuBLAS.
    auto xb = Random<bf16>(rows * k, 1.0f, 22);
    const double td = MedianSeconds(s, 2, 10, [&] {
      Check(BatchedMatMul(blas, 1, rows, n, k, {xb.data(), k, 0}, {weights.data(), k, 0}, true,
                          y.data(), n, 0, s),
            "dense gemm");
    });
    int64_t active = 0;  // every expert with rows reads its whole weight once
    for (int32_t c : count) active += c > 0;
    for (WeightFormat f : {WeightFormat::kBF16, WeightFormat::kF8Block}) {
      const WeightView* views = f == WeightFormat::kBF16 ? dbf16.data() : dfp8.data();
      const double t = MedianSeconds(s, 2, 10, [&] {
        GroupedWeightLinear(x.data(), doff.data(), E, f, views, n, k, y.data(), n, s);
      });
      const double flops = 2.0 * rows * n * k;
      const std::string name(WeightFormatName(f));
      Row(absl::StrFormat("grouped %s GEMM %d tokens x top-%d, %dx%d", name, tokens, top_k, n, k),
          absl::StrFormat("%.1f TFLOP/s", flops / t / 1e12),
          absl::StrFormat("%.1f TFLOP/s dense", flops / td / 1e12), td / t);
      const double per_weight = f == WeightFormat::kBF16 ? 2.0 : 1.0 + 4.0 / (128 * 128);
      const double bytes = per_weight * active * n * k + 4.0 * rows * (k + n);
      Row("  (same, bytes moved)", absl::StrFormat("%.0f GB/s", bytes / t / 1e9),
          absl::StrFormat("%.0f GB/s copy", bounds.copy_bw / 1e9), bytes / t / bounds.copy_bw);
    }
  }
}

void EndToEnd(const std::string& model, const Bounds& bounds, int steps) {
  auto config = LoadModelConfig(model);
  Check(config.status(), "config");
  EngineOptions eo;
  eo.device = Device::kCuda;
  eo.kv_blocks = *KvCache::BlocksForBudget(*config, eo.block_size, 4ull << 30);
  std::fprintf(stderr, "cuda_bench: loading %s onto the GPU\n", model.c_str());
  auto engine = Engine::Load(model, ParallelContext::Single(*config), eo);
  Check(engine.status(), "load");
  Engine& e = **engine;
  const ModelConfig& c = *config;
  const ParamCounts p = c.CountParameters();
  for (int batch : {1, 64}) {
    BlockAllocator alloc(e.num_blocks());
    std::vector<SequenceStep> seqs(static_cast<size_t>(batch));
    for (int b = 0; b < batch; ++b) {
      SequenceStep& s = seqs[b];
      s.seq_id = b;
      for (int i = 0; i < 64; ++i) s.tokens.push_back((b * 131 + i * 17 + 5) % c.vocab_size);
      Check(alloc.EnsureCapacity(&s.block_table, 64 + steps + 8, e.block_size()), "blocks");
      s.sample = SampleRequest{};  // greedy on the device: only token ids come back
    }
    Check(e.Step(seqs, false).status(), "prefill");
    for (auto& s : seqs) {
      s.start_pos = 64;
      s.tokens = {static_cast<int32_t>(s.seq_id % c.vocab_size)};
    }
    for (int w = 0; w < 3; ++w) {  // capture, then warm replays
      Check(e.Step(seqs, false).status(), "warm-up");
      for (auto& s : seqs) ++s.start_pos;
    }
    const double t0 = Now();
    for (int i = 0; i < steps; ++i) {
      auto r = e.Step(seqs, false);
      Check(r.status(), "decode");
      for (size_t j = 0; j < seqs.size(); ++j) {
        seqs[j].tokens = {r->tokens[j]};
        ++seqs[j].start_pos;
      }
    }
    const double dt = Now() - t0;
    // Roofline bound of one step: bf16 weight bytes read (batch 1: everything but the unrouted
    // experts and all but one embedding row; larger batches: distinct experts estimated as if
    // routing were uniform) over the copy bandwidth, against 2 x active FLOPs per token over the
    // GEMM rate; the slower of the two.
    const double expert = 3.0 * c.hidden_size * c.moe_intermediate_size;
    const double touched =
        c.n_routed_experts *
        (1.0 -
         std::pow(1.0 - static_cast<double>(c.num_experts_per_tok) / c.n_routed_experts, batch));
    const double bytes = 2.0 * (p.total - p.routed_experts - (c.vocab_size - 1) * c.hidden_size +
                                expert * touched * c.num_moe_layers());
    const double step_bound =
        std::max(bytes / bounds.copy_bw, 2.0 * p.active * batch / bounds.gemm_flops);
    const double tps = batch * steps / dt, bound = batch / step_bound;
    Row(absl::StrFormat("small-dsv3 decode b=%d", batch), absl::StrFormat("%.0f tok/s", tps),
        absl::StrFormat("%.0f tok/s roofline", bound), tps / bound);
    for (auto& s : seqs) alloc.Free(&s.block_table);
  }
}

}  // namespace
}  // namespace moe::cuda

int main(int argc, char** argv) {
  std::string model = "models/small-dsv3";
  int64_t steps = 64;
  bool skip_model = false;
  moe::FlagParser flags(
      "cuda_bench",
      "The CUDA backend's figures (MLA decode, grouped GEMM, end-to-end decode)\n"
      "against the GPU's copy bandwidth and cuBLAS GEMM rate, measured in the same "
      "run.");
  flags.AddString("model", &model, "small-dsv3 checkpoint folder; written (fp8) if missing.");
  flags.AddInt("decode-steps", &steps, "Timed decode steps per batch size.");
  flags.AddBool("kernels-only", &skip_model, "Skip the end-to-end decode.");
  flags.ParseOrExit(argc, argv);
  if (moe::cuda::DeviceCount() == 0) {
    std::fprintf(stderr, "cuda_bench: no CUDA device is visible\n");
    return 1;
  }
  cudaDeviceProp prop;
  moe::cuda::Check(cudaGetDeviceProperties(&prop, 0), "device properties");
  cudaStream_t stream;
  moe::cuda::Check(cudaStreamCreate(&stream), "stream");
  cublasHandle_t blas;
  moe::cuda::Check(moe::cuda::CublasStatus(cublasCreate(&blas), "cublasCreate"), "cublas");

  std::fprintf(stderr, "cuda_bench: measuring bounds on %s\n", prop.name);
  const auto bounds = moe::cuda::MeasureBounds(stream, blas);
  std::printf("host: %s\n", moe::Describe(moe::ReadMachineInfo()).c_str());
  std::printf("cuda_bench on %s: copy %.0f GB/s (read + write), cuBLAS bf16 GEMM %.1f TFLOP/s\n\n",
              prop.name, bounds.copy_bw / 1e9, bounds.gemm_flops / 1e12);
  std::printf("%-44s %20s %20s %7s\n", "case", "figure", "bound", "ratio");
  moe::cuda::MlaDecode(stream, bounds);
  moe::cuda::GroupedGemm(stream, blas, bounds);
  if (!skip_model) {
    if (!std::filesystem::exists(model + "/config.json")) {
      moe::MakeModelOptions opt;
      opt.out_dir = model;
      opt.dtype = moe::WeightDType::kFP8;
      std::fprintf(stderr, "cuda_bench: writing small-dsv3 to %s\n", model.c_str());
      moe::cuda::Check(moe::WriteCheckpoint(*moe::PresetConfig("small-dsv3"), opt), "write model");
    }
    moe::cuda::EndToEnd(model, bounds, static_cast<int>(steps));
  }
  cublasDestroy(blas);
  cudaStreamDestroy(stream);
  return 0;
}

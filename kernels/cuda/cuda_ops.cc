#include "kernels/cuda/cuda_ops.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/device_weight.h"
#include "kernels/cuda/ops.h"

namespace moe {
namespace {

constexpr size_t kCublasWorkspaceBytes = 32u << 20;
constexpr size_t kAlignment = 256;

const cuda::DeviceWeight& OnDevice(const PlacedMatrix& w) {
  return *static_cast<const cuda::DeviceWeight*>(w.device.get());
}

// ExpertSet with the experts' views on the device.
struct DeviceExperts : Ops::ExpertSet {
  WeightFormat format = WeightFormat::kBF16;
  int64_t inter = 0, hidden = 0;
  cuda::DeviceBuffer<cuda::WeightView> gate, up, down;
};

}  // namespace

absl::StatusOr<std::unique_ptr<CudaOps>> CudaOps::Create(int device) {
  if (cuda::DeviceCount() == 0) {
    return absl::FailedPreconditionError("device cuda: no CUDA device is visible");
  }
  MOE_CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
  std::unique_ptr<CudaOps> ops(new CudaOps());
  MOE_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&ops->stream_, cudaStreamNonBlocking));
  MOE_CUBLAS_RETURN_IF_ERROR(cublasCreate(&ops->blas_));
  MOE_CUBLAS_RETURN_IF_ERROR(cublasSetStream(ops->blas_, ops->stream_));
  // A fixed workspace: cuBLAS then allocates nothing while a graph is being captured.
  MOE_CUDA_RETURN_IF_ERROR(cudaMalloc(&ops->blas_workspace_, kCublasWorkspaceBytes));
  MOE_CUBLAS_RETURN_IF_ERROR(
      cublasSetWorkspace(ops->blas_, ops->blas_workspace_, kCublasWorkspaceBytes));
  return ops;
}

CudaOps::~CudaOps() {
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  for (const auto& [bytes, p] : free_) cudaFree(p);
  for (const auto& [bytes, p] : recording_free_) cudaFree(p);
  if (blas_ != nullptr) cublasDestroy(blas_);
  if (blas_workspace_ != nullptr) cudaFree(blas_workspace_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

void CudaOps::Fail(absl::Status s) {
  if (s.ok()) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (error_.ok()) error_ = std::move(s);
}

absl::Status CudaOps::TakeError() {
  Fail(cuda::CudaStatus(cudaGetLastError(), "kernel launch"));
  std::lock_guard<std::mutex> lock(mu_);
  return std::exchange(error_, absl::OkStatus());
}

std::shared_ptr<void> CudaOps::AllocateBytes(size_t bytes) {
  const size_t size = (std::max<size_t>(bytes, 1) + kAlignment - 1) / kAlignment * kAlignment;
  std::multimap<size_t, void*>& list = recording_ ? recording_free_ : free_;
  void* p = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = list.find(size); it != list.end()) {
      p = it->second;
      list.erase(it);
    }
  }
  // Out of memory with blocks cached: give them back and try once more (not while recording,
  // which cannot wait for the stream).
  if (p == nullptr && cudaMalloc(&p, size) != cudaSuccess && !recording_) {
    cudaGetLastError();
    std::multimap<size_t, void*> cached;
    {
      std::lock_guard<std::mutex> lock(mu_);
      cached.swap(free_);
    }
    cudaStreamSynchronize(stream_);
    for (const auto& [b, q] : cached) cudaFree(q);
    if (cudaMalloc(&p, size) != cudaSuccess) p = nullptr;
  }
  if (p == nullptr) {
    cudaGetLastError();
    Fail(absl::ResourceExhaustedError(
        absl::StrCat("device cuda: out of memory allocating ", size, " bytes")));
    return nullptr;
  }
  return std::shared_ptr<void>(p, [this, size, &list](void* q) {
    std::lock_guard<std::mutex> lock(mu_);
    list.emplace(size, q);
  });
}

DeviceArray<float> CudaOps::Allocate(int64_t n) {
  std::shared_ptr<void> h = AllocateBytes(static_cast<size_t>(n) * sizeof(float));
  float* data = static_cast<float*>(h.get());
  return DeviceArray<float>(Device::kCuda, data, data == nullptr ? 0 : n, std::move(h));
}

DeviceArray<int32_t> CudaOps::AllocateInts(int64_t n) {
  std::shared_ptr<void> h = AllocateBytes(static_cast<size_t>(n) * sizeof(int32_t));
  int32_t* data = static_cast<int32_t*>(h.get());
  return DeviceArray<int32_t>(Device::kCuda, data, data == nullptr ? 0 : n, std::move(h));
}

DeviceArray<int64_t> CudaOps::AllocateCounts(int64_t n) {
  std::shared_ptr<void> h = AllocateBytes(static_cast<size_t>(n) * sizeof(int64_t));
  auto* data = static_cast<int64_t*>(h.get());
  if (data != nullptr) {
    Fail(cuda::CudaStatus(cudaMemsetAsync(data, 0, n * sizeof(int64_t), stream_), "memset"));
  }
  return DeviceArray<int64_t>(Device::kCuda, data, data == nullptr ? 0 : n, std::move(h));
}

bool CudaOps::NotRecording(const char* what) {
  if (!recording_) return true;
  Fail(absl::FailedPreconditionError(
      absl::StrCat("device cuda: ", what, " while recording a step (a CUDA graph)")));
  return false;
}

void CudaOps::Upload(const void* host, size_t bytes, void* device) {
  if (bytes == 0 || device == nullptr || !NotRecording("placing host data")) return;
  // The host memory may go as soon as this returns: wait for the copy.
  Fail(cuda::CudaStatus(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, stream_),
                        "upload"));
  Fail(cuda::CudaStatus(cudaStreamSynchronize(stream_), "upload"));
}

DeviceArray<float> CudaOps::Place(Tensor t) {
  DeviceArray<float> a = Allocate(t.numel());
  Upload(t.data(), t.bytes(), a.data());
  return a;
}

DeviceArray<int32_t> CudaOps::Place(std::vector<int32_t> v) {
  DeviceArray<int32_t> a = AllocateInts(static_cast<int64_t>(v.size()));
  Upload(v.data(), v.size() * sizeof(int32_t), a.data());
  return a;
}

namespace {

absl::StatusOr<PlacedMatrix> PlaceWeight(WeightMatrix w, bool as_bf16) {
  auto d = cuda::DeviceWeight::Upload(w, as_bf16);
  if (!d.ok()) return d.status();
  auto device = std::make_shared<cuda::DeviceWeight>(std::move(*d));
  return PlacedMatrix{std::move(w), std::move(device)};
}

}  // namespace

absl::StatusOr<PlacedMatrix> CudaOps::Place(WeightMatrix w) {
  return PlaceWeight(std::move(w), false);
}

absl::StatusOr<PlacedMatrix> CudaOps::PlaceKvBProj(WeightMatrix w) {
  return PlaceWeight(std::move(w), true);
}

void CudaOps::CopyFromHost(const void* src, size_t bytes, void* dst) { Upload(src, bytes, dst); }

void CudaOps::CopyToHost(const void* src, size_t bytes, void* dst) {
  if (bytes == 0 || !NotRecording("reading device memory")) return;
  Fail(cuda::CudaStatus(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_),
                        "download"));
  Fail(cuda::CudaStatus(cudaStreamSynchronize(stream_), "download"));
}

namespace {

struct Graph : Ops::Recording {
  cudaGraphExec_t exec = nullptr;
  ~Graph() override {
    if (exec != nullptr) cudaGraphExecDestroy(exec);
  }
};

}  // namespace

absl::Status CudaOps::BeginRecording() {
  if (recording_) return absl::FailedPreconditionError("device cuda: already recording");
  MOE_RETURN_IF_ERROR(TakeError());
  // Relaxed: arrays first allocated while recording come from the driver (cudaMalloc).
  MOE_CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed));
  recording_ = true;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Ops::Recording>> CudaOps::EndRecording() {
  if (!recording_) return absl::FailedPreconditionError("device cuda: not recording");
  recording_ = false;
  cudaGraph_t graph = nullptr;
  const cudaError_t end = cudaStreamEndCapture(stream_, &graph);
  auto g = std::make_unique<Graph>();
  const absl::Status ops = TakeError();
  cudaError_t made = cudaSuccess;
  if (ops.ok() && end == cudaSuccess) made = cudaGraphInstantiate(&g->exec, graph, 0);
  if (graph != nullptr) cudaGraphDestroy(graph);
  MOE_RETURN_IF_ERROR(ops);
  MOE_CUDA_RETURN_IF_ERROR(end);
  MOE_CUDA_RETURN_IF_ERROR(made);
  return std::unique_ptr<Recording>(std::move(g));
}

absl::Status CudaOps::Replay(const Recording& recording) {
  const auto& g = static_cast<const Graph&>(recording);
  return cuda::CudaStatus(cudaGraphLaunch(g.exec, stream_), "graph launch");
}

void CudaOps::Fill(float* y, int64_t n, float value) { cuda::Fill(y, n, value, stream_); }

void CudaOps::CopyRows(const float* src, int64_t lds, int64_t rows, int64_t cols, float* dst,
                       int64_t ldd) {
  if (rows == 0 || cols == 0) return;
  Fail(cuda::CudaStatus(
      cudaMemcpy2DAsync(dst, ldd * sizeof(float), src, lds * sizeof(float), cols * sizeof(float),
                        rows, cudaMemcpyDeviceToDevice, stream_),
      "copy rows"));
}

void CudaOps::GatherRows(const float* x, const int32_t* index, int64_t n, int64_t dim, float* out) {
  cuda::GatherRows(x, index, n, dim, out, stream_);
}
void CudaOps::ScatterRows(const float* x, const int32_t* index, int64_t n, int64_t dim,
                          float* out) {
  cuda::ScatterRows(x, index, n, dim, out, stream_);
}
void CudaOps::AddScaledRows(const float* x, const float* scales, const int32_t* index, int64_t n,
                            int64_t dim, float* y) {
  cuda::AddScaledRows(x, scales, index, n, dim, y, stream_);
}
void CudaOps::ScaleRows(float* x, const float* scales, int64_t n, int64_t dim) {
  cuda::ScaleRows(x, scales, n, dim, stream_);
}
void CudaOps::Add(float* y, const float* x, int64_t n) { cuda::Add(y, x, n, stream_); }
void CudaOps::Scale(float* y, float a, int64_t n) { cuda::Scale(y, a, n, stream_); }
void CudaOps::AddToRows(float* y, int64_t rows, int64_t dim, int64_t ld, const float* bias) {
  cuda::AddToRows(y, rows, dim, ld, bias, stream_);
}
void CudaOps::SoftCap(float* x, int64_t n, float cap) { cuda::SoftCap(x, n, cap, stream_); }
void CudaOps::RmsNorm(const float* x, int64_t rows, int64_t dim, int64_t ld, const float* weight,
                      float eps, float* y) {
  cuda::RmsNorm(x, rows, dim, ld, weight, eps, y, stream_);
}
void CudaOps::RowSumSquares(const float* x, int64_t rows, int64_t dim, int64_t ld, float* out) {
  cuda::RowSumSquares(x, rows, dim, ld, out, stream_);
}
void CudaOps::NormalizeRows(float* x, int64_t rows, int64_t dim, int64_t ld, const float* sumsq,
                            float replication, float width, float eps, const float* weight) {
  cuda::NormalizeRows(x, rows, dim, ld, sumsq, replication, width, eps, weight, stream_);
}
void CudaOps::GatedActivation(const float* gate_up, int64_t rows, int64_t inter, Activation act,
                              float* out) {
  if (act == Activation::kGeluTanh) {
    cuda::GeluTanhAndMul(gate_up, rows, inter, out, stream_);
  } else {
    cuda::SiluAndMul(gate_up, rows, inter, out, stream_);
  }
}
void CudaOps::Rope(float* x, int64_t rows, int64_t heads, int64_t row_stride, int64_t head_stride,
                   int64_t dim, const float* cos, const float* sin, bool interleaved) {
  cuda::Rope(x, rows, heads, row_stride, head_stride, dim, cos, sin, interleaved, stream_);
}

void CudaOps::Linear(const PlacedMatrix& w, const float* x, int64_t n, int64_t ldx, float* y,
                     int64_t ldy) {
  if (n == 0) return;
  std::shared_ptr<void> x_bf16 = AllocateBytes(static_cast<size_t>(n * w.cols()) * 2);
  Fail(cuda::Linear(blas_, x, n, OnDevice(w).view(), y, static_cast<cuda::bf16*>(x_bf16.get()),
                    stream_, ldx, ldy));
}

void CudaOps::MatMulNT(int64_t m, int64_t n, int64_t k, const float* x, int64_t ldx, const float* w,
                       int64_t ldw, float* y, int64_t ldy) {
  Fail(cuda::LinearF32(blas_, x, m, k, w, n, y, stream_, ldx, ldw, ldy));
}

void CudaOps::Embedding(const PlacedMatrix& table, int64_t first_row, const int32_t* tokens,
                        int64_t n, float* out) {
  const cuda::DeviceWeight& d = OnDevice(table);
  if (d.format() != WeightFormat::kBF16) {
    Fail(absl::UnimplementedError(absl::StrCat("device cuda: an embedding table in ",
                                               WeightFormatName(d.format()),
                                               " (the device looks up bf16 rows)")));
    return;
  }
  cuda::EmbeddingLookup(d.bf16_data(), first_row, table.rows(), tokens, n, table.cols(), out,
                        stream_);
}

void CudaOps::CausalAttention(const float* q, const float* k, const float* v, int64_t q_len,
                              int64_t ctx, int64_t heads, int64_t kv_heads, int64_t dqk, int64_t dv,
                              int64_t start, float scale, float* out, int64_t window,
                              int64_t chunk) {
  if (kv_heads != heads || window > 0 || chunk > 0) {
    Fail(absl::UnimplementedError(
        "device cuda: grouped-query, sliding-window and chunked attention are not implemented "
        "(the CUDA backend runs MLA models)"));
    return;
  }
  cuda::CausalAttention(q, k, v, q_len, ctx, heads, dqk, dv, start, scale, out, stream_);
}

void CudaOps::SplitMlaKv(const float* kv, const float* latent, int64_t ctx, int64_t heads,
                         int64_t nope, int64_t v_dim, int64_t kv_lora, int64_t rope, float* k,
                         float* v) {
  cuda::SplitMlaKv(kv, latent, ctx, heads, nope, v_dim, kv_lora, rope, k, v, stream_);
}

void CudaOps::MlaDecode(const MlaDecodeShape& s, const float* q, int64_t b,
                        const PlacedMatrix& kv_b_proj, const float* cache,
                        const int32_t* block_tables, const int32_t* context, float* out) {
  if (b == 0) return;
  const cuda::DeviceWeight& w = OnDevice(kv_b_proj);
  if (w.format() != WeightFormat::kBF16) {
    Fail(absl::InternalError("device cuda: MLA decode needs kv_b_proj in bf16"));
    return;
  }
  const int64_t H = s.heads, qk = s.nope + s.rope, dim = s.kv_lora + s.rope;
  const int64_t kvh = s.nope + s.v_dim;
  const cuda::bf16* wb = w.bf16_data();
  std::shared_ptr<void> x_bf16 =
      AllocateBytes(static_cast<size_t>(b * H * std::max(qk, s.kv_lora)) * 2);
  auto* xb = static_cast<cuda::bf16*>(x_bf16.get());
  DeviceArray<float> q_cat = Allocate(b * H * dim), o_lat = Allocate(b * H * s.kv_lora);
  // q_cat = [W_UK^T q_nope | q_pe] per token and head.
  cuda::F32ToBf16(q, xb, b * H * qk, stream_);
  Fail(cuda::BatchedMatMul(blas_, H, b, s.kv_lora, s.nope, {xb, H * qk, qk},
                           {wb, s.kv_lora, kvh * s.kv_lora}, /*transpose_b=*/false, q_cat.data(),
                           H * dim, dim, stream_));
  Fail(cuda::CudaStatus(cudaMemcpy2DAsync(q_cat.data() + s.kv_lora, dim * sizeof(float), q + s.nope,
                                          qk * sizeof(float), s.rope * sizeof(float), b * H,
                                          cudaMemcpyDeviceToDevice, stream_),
                        "MLA decode"));
  cuda::MlaDecodeAttention(q_cat.data(), b, H, s.kv_lora, s.rope, cache, block_tables,
                           s.table_width, context, s.block_size, s.scale, o_lat.data(), stream_);
  // out_h = W_UV_h o_lat_h.
  cuda::F32ToBf16(o_lat.data(), xb, b * H * s.kv_lora, stream_);
  Fail(cuda::BatchedMatMul(blas_, H, b, s.v_dim, s.kv_lora, {xb, H * s.kv_lora, s.kv_lora},
                           {wb + s.nope * s.kv_lora, s.kv_lora, kvh * s.kv_lora},
                           /*transpose_b=*/true, out, H * s.v_dim, s.v_dim, stream_));
}

void CudaOps::GqaDecode(const GqaDecodeShape& s, const float* q, int64_t ldq, int64_t b,
                        const float* cache, const int32_t* block_tables, const int32_t* context,
                        float* out) {
  Fail(absl::UnimplementedError(
      "device cuda: grouped-query attention is not implemented (the CUDA backend runs MLA "
      "models)"));
}

void CudaOps::RouteTokens(const ModelConfig& config, const float* logits, const float* bias,
                          int64_t n, int32_t* ids, float* weights) {
  cuda::RouteTokens(logits, bias, n, cuda::RouterParamsFor(config), ids, weights, stream_);
}

void CudaOps::Sample(const float* logits, int64_t rows, int64_t vocab,
                     const std::vector<SampleRequest>& requests, int32_t* out) {
  if (rows == 0) return;
  std::shared_ptr<void> req = AllocateBytes(requests.size() * sizeof(SampleRequest));
  Upload(requests.data(), requests.size() * sizeof(SampleRequest), req.get());
  DeviceArray<int32_t> tokens = AllocateInts(rows);
  cuda::Sample(logits, rows, vocab, static_cast<const SampleRequest*>(req.get()), tokens.data(),
               stream_);
  CopyToHost(tokens.data(), static_cast<size_t>(rows) * sizeof(int32_t), out);
}

absl::StatusOr<std::unique_ptr<Ops::ExpertSet>> CudaOps::PlaceExperts(std::vector<Expert> experts) {
  auto set = std::make_unique<DeviceExperts>();
  std::vector<cuda::WeightView> gate, up, down;
  for (const Expert& e : experts) {
    gate.push_back(OnDevice(*e.gate).view());
    up.push_back(OnDevice(*e.up).view());
    down.push_back(OnDevice(*e.down).view());
    for (const cuda::WeightView* v : {&gate.back(), &up.back(), &down.back()}) {
      if (v->format != gate.front().format) {
        return absl::UnimplementedError(
            "device cuda: a MoE layer's experts in more than one weight format");
      }
    }
  }
  if (!experts.empty()) {
    set->format = gate.front().format;
    set->inter = gate.front().rows;
    set->hidden = gate.front().cols;
  }
  MOE_RETURN_IF_ERROR(set->gate.Upload(gate, stream_));
  MOE_RETURN_IF_ERROR(set->up.Upload(up, stream_));
  MOE_RETURN_IF_ERROR(set->down.Upload(down, stream_));
  MOE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));  // the host views go
  set->experts = std::move(experts);
  return std::unique_ptr<ExpertSet>(std::move(set));
}

void CudaOps::RoutedExperts(const ExpertSet& set, const float* x, int64_t rows,
                            const int32_t* local, const float* weight, int64_t k, Activation act,
                            bool weight_on_input, float* y) {
  if (rows == 0 || set.experts.empty()) return;
  if (weight_on_input) {
    Fail(absl::UnimplementedError("device cuda: routing weights on the experts' input"));
    return;
  }
  const auto& d = static_cast<const DeviceExperts&>(set);
  const auto experts = static_cast<int64_t>(set.experts.size());
  const int64_t pairs = rows * k, h = d.hidden, inter = d.inter;
  DeviceArray<int32_t> offsets = AllocateInts(experts + 1), sorted_token = AllocateInts(pairs);
  DeviceArray<int32_t> row_of = AllocateInts(pairs);
  DeviceArray<float> xs = Allocate(pairs * h), gate_up = Allocate(pairs * 2 * inter);
  DeviceArray<float> a = Allocate(pairs * inter), out = Allocate(pairs * h);
  cuda::PermuteByExpert(local, rows, k, experts, offsets.data(), sorted_token.data(), row_of.data(),
                        stream_);
  cuda::GatherRows(x, sorted_token.data(), pairs, h, xs.data(), stream_);
  cuda::GroupedWeightLinear(xs.data(), offsets.data(), experts, d.format, d.gate.data(), inter, h,
                            gate_up.data(), 2 * inter, stream_);
  cuda::GroupedWeightLinear(xs.data(), offsets.data(), experts, d.format, d.up.data(), inter, h,
                            gate_up.data() + inter, 2 * inter, stream_);
  GatedActivation(gate_up.data(), pairs, inter, act, a.data());
  cuda::GroupedWeightLinear(a.data(), offsets.data(), experts, d.format, d.down.data(), h, inter,
                            out.data(), h, stream_);
  cuda::CombineRows(out.data(), row_of.data(), weight, rows, k, h, y, /*accumulate=*/false,
                    stream_);
}

void CudaOps::CountChoices(const int32_t* ids, int64_t n, int64_t* counts) {
  cuda::CountChoices(ids, n, counts, stream_);
}

void CudaOps::ForEachExpert(int64_t count, const std::vector<bool>& active, float* y, int64_t rows,
                            int64_t dim, const std::function<void(int64_t, float*)>& work) {
  cuda::Fill(y, rows * dim, 0.0f, stream_);
  for (int64_t e = 0; e < count; ++e) {
    if (active[static_cast<size_t>(e)]) work(e, y);
  }
}

}  // namespace moe

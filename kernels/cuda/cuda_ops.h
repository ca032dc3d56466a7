// The op set (kernels/ops.h) on one GPU: the kernels of kernels/cuda/ops.h on one stream, cuBLAS
// for the bf16 and float32 products. Arrays live in device memory from a caching allocator (a
// released array's memory goes back to a free list of its size, so once a step's shapes have run
// it allocates nothing from the driver); weights are placed in their checkpoint format
// (cuda::DeviceWeight: fp8 blocks and int4 groups as they are, the float formats as bf16). Ops
// enqueue and return; the first error one meets is kept for TakeError. Recordings are CUDA graphs
// (the stream captured in relaxed mode), their arrays from a second free list that only
// recordings draw from. Grouped-query and windowed
// attention are not implemented here yet (an error naming them).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <map>
#include <memory>
#include <mutex>

#include "absl/status/statusor.h"
#include "kernels/ops.h"

namespace moe {

class CudaOps final : public Ops {
 public:
  // On GPU `device` (an error when none is visible).
  static absl::StatusOr<std::unique_ptr<CudaOps>> Create(int device);
  ~CudaOps() override;
  Device device() const override { return Device::kCuda; }
  cudaStream_t stream() const { return stream_; }

  DeviceArray<float> Allocate(int64_t n) override;
  DeviceArray<int32_t> AllocateInts(int64_t n) override;
  DeviceArray<int64_t> AllocateCounts(int64_t n) override;
  DeviceArray<float> Place(Tensor t) override;
  DeviceArray<int32_t> Place(std::vector<int32_t> v) override;
  absl::StatusOr<PlacedMatrix> Place(WeightMatrix w) override;
  absl::StatusOr<PlacedMatrix> PlaceKvBProj(WeightMatrix w) override;  // as bf16
  void CopyToHost(const void* src, size_t bytes, void* dst) override;
  void CopyFromHost(const void* src, size_t bytes, void* dst) override;
  absl::Status TakeError() override;

  bool can_record() const override { return true; }
  absl::Status BeginRecording() override;
  absl::StatusOr<std::unique_ptr<Recording>> EndRecording() override;
  absl::Status Replay(const Recording& recording) override;

  void Fill(float* y, int64_t n, float value) override;
  void CopyRows(const float* src, int64_t lds, int64_t rows, int64_t cols, float* dst,
                int64_t ldd) override;
  void GatherRows(const float* x, const int32_t* index, int64_t n, int64_t dim,
                  float* out) override;
  void ScatterRows(const float* x, const int32_t* index, int64_t n, int64_t dim,
                   float* out) override;
  void AddScaledRows(const float* x, const float* scales, const int32_t* index, int64_t n,
                     int64_t dim, float* y) override;
  void ScaleRows(float* x, const float* scales, int64_t n, int64_t dim) override;
  void Add(float* y, const float* x, int64_t n) override;
  void Scale(float* y, float a, int64_t n) override;
  void AddToRows(float* y, int64_t rows, int64_t dim, int64_t ld, const float* bias) override;
  void SoftCap(float* x, int64_t n, float cap) override;
  void RmsNorm(const float* x, int64_t rows, int64_t dim, int64_t ld, const float* weight,
               float eps, float* y) override;
  void RowSumSquares(const float* x, int64_t rows, int64_t dim, int64_t ld, float* out) override;
  void NormalizeRows(float* x, int64_t rows, int64_t dim, int64_t ld, const float* sumsq,
                     float replication, float width, float eps, const float* weight) override;
  void GatedActivation(const float* gate_up, int64_t rows, int64_t inter, Activation act,
                       float* out) override;
  void Rope(float* x, int64_t rows, int64_t heads, int64_t row_stride, int64_t head_stride,
            int64_t dim, const float* cos, const float* sin, bool interleaved) override;

  void Linear(const PlacedMatrix& w, const float* x, int64_t n, int64_t ldx, float* y,
              int64_t ldy) override;
  void MatMulNT(int64_t m, int64_t n, int64_t k, const float* x, int64_t ldx, const float* w,
                int64_t ldw, float* y, int64_t ldy) override;
  void Embedding(const PlacedMatrix& table, int64_t first_row, const int32_t* tokens, int64_t n,
                 float* out) override;

  void CausalAttention(const float* q, const float* k, const float* v, int64_t q_len, int64_t ctx,
                       int64_t heads, int64_t kv_heads, int64_t dqk, int64_t dv, int64_t start,
                       float scale, float* out, int64_t window, int64_t chunk) override;
  void SplitMlaKv(const float* kv, const float* latent, int64_t ctx, int64_t heads, int64_t nope,
                  int64_t v_dim, int64_t kv_lora, int64_t rope, float* k, float* v) override;
  void MlaDecode(const MlaDecodeShape& s, const float* q, int64_t b, const PlacedMatrix& kv_b_proj,
                 const float* cache, const int32_t* block_tables, const int32_t* context,
                 float* out) override;
  void GqaDecode(const GqaDecodeShape& s, const float* q, int64_t ldq, int64_t b,
                 const float* cache, const int32_t* block_tables, const int32_t* context,
                 float* out) override;

  void RouteTokens(const ModelConfig& config, const float* logits, const float* bias, int64_t n,
                   int32_t* ids, float* weights) override;
  void Sample(const float* logits, int64_t rows, int64_t vocab,
              const std::vector<SampleRequest>& requests, int32_t* out) override;
  // The experts' weight views in device memory, one array per projection (all of one format).
  absl::StatusOr<std::unique_ptr<ExpertSet>> PlaceExperts(std::vector<Expert> experts) override;
  // Grouped on the device, nothing read back: the (row, choice) pairs sorted by expert, one
  // grouped product per projection, the outputs combined with the routing weights (choices of -1,
  // another rank's experts, skipped; the routing weight on the output).
  void RoutedExperts(const ExpertSet& set, const float* x, int64_t rows, const int32_t* local,
                     const float* weight, int64_t k, Activation act, bool weight_on_input,
                     float* y) override;
  void CountChoices(const int32_t* ids, int64_t n, int64_t* counts) override;
  void ForEachExpert(int64_t count, const std::vector<bool>& active, float* y, int64_t rows,
                     int64_t dim, const std::function<void(int64_t, float*)>& work) override;

 private:
  CudaOps() = default;
  // `bytes` of device memory (rounded up to 256), from the free list of its size (the
  // recordings' while recording) or the driver; back to that list when the last holder goes.
  std::shared_ptr<void> AllocateBytes(size_t bytes);
  void Fail(absl::Status s);  // keeps the first error
  // Fails (and returns false) while recording: `what` moves data between host and device.
  bool NotRecording(const char* what);
  void Upload(const void* host, size_t bytes, void* device);

  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  void* blas_workspace_ = nullptr;
  std::mutex mu_;  // the free lists and the error
  std::multimap<size_t, void*> free_, recording_free_;
  absl::Status error_;
  bool recording_ = false;
};

}  // namespace moe

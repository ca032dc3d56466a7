// The CPU implementation of the op set (kernels/ops.h): float32 arrays in host memory, the
// kernels of this folder, multithreaded over the cores (OpenMP; GEMMs through OpenBLAS). It is
// the oracle every other device's ops are tested against.
#pragma once

#include "kernels/ops.h"

namespace moe {

class CpuOps final : public Ops {
 public:
  Device device() const override { return Device::kCpu; }

  DeviceArray<float> Allocate(int64_t n) override;
  DeviceArray<int32_t> AllocateInts(int64_t n) override;
  DeviceArray<int64_t> AllocateCounts(int64_t n) override;
  DeviceArray<float> Place(Tensor t) override;
  DeviceArray<int32_t> Place(std::vector<int32_t> v) override;
  absl::StatusOr<PlacedMatrix> Place(WeightMatrix w) override;
  void CopyToHost(const void* src, size_t bytes, void* dst) override;
  void CopyFromHost(const void* src, size_t bytes, void* dst) override;

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
  void CountChoices(const int32_t* ids, int64_t n, int64_t* counts) override;
  // With fewer active experts than twice the threads and at most kFusedMaxRows rows each, every
  // expert's products split over all threads in one parallel region; else Ops::RoutedExperts.
  void RoutedExperts(const ExpertSet& set, const float* x, int64_t rows, const int32_t* local,
                     const float* weight, int64_t k, Activation act, bool weight_on_input,
                     float* y) override;
  void ForEachExpert(int64_t count, const std::vector<bool>& active, float* y, int64_t rows,
                     int64_t dim, const std::function<void(int64_t, float*)>& work) override;
};

}  // namespace moe

// A test double of a device that records (kernels/ops.h, "recording"): CpuOps whose ops, between
// BeginRecording and EndRecording, are kept as closures instead of run, and run again by Replay.
// Arrays allocated while recording come from blocks that only recordings use, reused by size and
// never cleared, as CudaOps serves a CUDA graph's memory; placing or copying host data while
// recording fails the recording, as it does on a GPU. So a model replaying recorded steps on it
// reads and writes memory as it would on a GPU, where the steps cannot be watched.
#pragma once

#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <new>
#include <utility>
#include <vector>

#include "kernels/cpu/cpu_ops.h"

namespace moe::testing {

class RecordingCpuOps final : public Ops {
 public:
  ~RecordingCpuOps() override {
    for (void* p : blocks_) ::operator delete (p, std::align_val_t{64});
  }
  Device device() const override { return Device::kCpu; }
  int64_t recorded_ops() const { return recorded_ops_; }

  // ---- recording ----
  bool can_record() const override { return true; }
  absl::Status BeginRecording() override {
    if (recording_) return absl::FailedPreconditionError("already recording");
    recording_ = std::make_unique<Steps>();
    return absl::OkStatus();
  }
  absl::StatusOr<std::unique_ptr<Recording>> EndRecording() override {
    if (!recording_) return absl::FailedPreconditionError("not recording");
    std::unique_ptr<Steps> steps = std::move(recording_);
    if (!error_.ok()) return std::exchange(error_, absl::OkStatus());
    recorded_ops_ += static_cast<int64_t>(steps->ops.size());
    return std::unique_ptr<Recording>(std::move(steps));
  }
  absl::Status Replay(const Recording& recording) override {
    if (recording_) return absl::FailedPreconditionError("replaying while recording");
    for (const auto& op : static_cast<const Steps&>(recording).ops) op();
    return absl::OkStatus();
  }
  absl::Status TakeError() override { return std::exchange(error_, absl::OkStatus()); }

  // ---- memory ----
  DeviceArray<float> Allocate(int64_t n) override {
    return recording_ ? FromPool<float>(n) : cpu_.Allocate(n);
  }
  DeviceArray<int32_t> AllocateInts(int64_t n) override {
    return recording_ ? FromPool<int32_t>(n) : cpu_.AllocateInts(n);
  }
  DeviceArray<int64_t> AllocateCounts(int64_t n) override {
    if (!recording_) return cpu_.AllocateCounts(n);
    DeviceArray<int64_t> a = FromPool<int64_t>(n);
    Do([=, this] { std::memset(a.data(), 0, static_cast<size_t>(n) * sizeof(int64_t)); });
    return a;
  }
  DeviceArray<float> Place(Tensor t) override {
    Host("placing host data");
    return cpu_.Place(std::move(t));
  }
  DeviceArray<int32_t> Place(std::vector<int32_t> v) override {
    Host("placing host data");
    return cpu_.Place(std::move(v));
  }
  absl::StatusOr<PlacedMatrix> Place(WeightMatrix w) override {
    Host("placing a weight");
    return cpu_.Place(std::move(w));
  }
  void CopyToHost(const void* src, size_t bytes, void* dst) override {
    if (Host("reading device memory")) cpu_.CopyToHost(src, bytes, dst);
  }
  void CopyFromHost(const void* src, size_t bytes, void* dst) override {
    if (Host("writing host data")) cpu_.CopyFromHost(src, bytes, dst);
  }

  // ---- the ops, recorded or run ----
  void Fill(float* y, int64_t n, float value) override {
    Do([=, this] { cpu_.Fill(y, n, value); });
  }
  void CopyRows(const float* src, int64_t lds, int64_t rows, int64_t cols, float* dst,
                int64_t ldd) override {
    Do([=, this] { cpu_.CopyRows(src, lds, rows, cols, dst, ldd); });
  }
  void GatherRows(const float* x, const int32_t* index, int64_t n, int64_t dim,
                  float* out) override {
    Do([=, this] { cpu_.GatherRows(x, index, n, dim, out); });
  }
  void ScatterRows(const float* x, const int32_t* index, int64_t n, int64_t dim,
                   float* out) override {
    Do([=, this] { cpu_.ScatterRows(x, index, n, dim, out); });
  }
  void AddScaledRows(const float* x, const float* scales, const int32_t* index, int64_t n,
                     int64_t dim, float* y) override {
    Do([=, this] { cpu_.AddScaledRows(x, scales, index, n, dim, y); });
  }
  void ScaleRows(float* x, const float* scales, int64_t n, int64_t dim) override {
    Do([=, this] { cpu_.ScaleRows(x, scales, n, dim); });
  }
  void Add(float* y, const float* x, int64_t n) override {
    Do([=, this] { cpu_.Add(y, x, n); });
  }
  void Scale(float* y, float a, int64_t n) override {
    Do([=, this] { cpu_.Scale(y, a, n); });
  }
  void AddToRows(float* y, int64_t rows, int64_t dim, int64_t ld, const float* bias) override {
    Do([=, this] { cpu_.AddToRows(y, rows, dim, ld, bias); });
  }
  void SoftCap(float* x, int64_t n, float cap) override {
    Do([=, this] { cpu_.SoftCap(x, n, cap); });
  }
  void RmsNorm(const float* x, int64_t rows, int64_t dim, int64_t ld, const float* weight,
               float eps, float* y) override {
    Do([=, this] { cpu_.RmsNorm(x, rows, dim, ld, weight, eps, y); });
  }
  void RowSumSquares(const float* x, int64_t rows, int64_t dim, int64_t ld, float* out) override {
    Do([=, this] { cpu_.RowSumSquares(x, rows, dim, ld, out); });
  }
  void NormalizeRows(float* x, int64_t rows, int64_t dim, int64_t ld, const float* sumsq,
                     float replication, float width, float eps, const float* weight) override {
    Do([=, this] { cpu_.NormalizeRows(x, rows, dim, ld, sumsq, replication, width, eps, weight); });
  }
  void GatedActivation(const float* gate_up, int64_t rows, int64_t inter, Activation act,
                       float* out) override {
    Do([=, this] { cpu_.GatedActivation(gate_up, rows, inter, act, out); });
  }
  void Rope(float* x, int64_t rows, int64_t heads, int64_t row_stride, int64_t head_stride,
            int64_t dim, const float* cos, const float* sin, bool interleaved) override {
    Do([=, this] {
      cpu_.Rope(x, rows, heads, row_stride, head_stride, dim, cos, sin, interleaved);
    });
  }
  void Linear(const PlacedMatrix& w, const float* x, int64_t n, int64_t ldx, float* y,
              int64_t ldy) override {
    Do([=, this, &w] { cpu_.Linear(w, x, n, ldx, y, ldy); });
  }
  void MatMulNT(int64_t m, int64_t n, int64_t k, const float* x, int64_t ldx, const float* w,
                int64_t ldw, float* y, int64_t ldy) override {
    Do([=, this] { cpu_.MatMulNT(m, n, k, x, ldx, w, ldw, y, ldy); });
  }
  void Embedding(const PlacedMatrix& table, int64_t first_row, const int32_t* tokens, int64_t n,
                 float* out) override {
    Do([=, this, &table] { cpu_.Embedding(table, first_row, tokens, n, out); });
  }
  void CausalAttention(const float* q, const float* k, const float* v, int64_t q_len, int64_t ctx,
                       int64_t heads, int64_t kv_heads, int64_t dqk, int64_t dv, int64_t start,
                       float scale, float* out, int64_t window, int64_t chunk) override {
    Do([=, this] {
      cpu_.CausalAttention(q, k, v, q_len, ctx, heads, kv_heads, dqk, dv, start, scale, out, window,
                           chunk);
    });
  }
  void SplitMlaKv(const float* kv, const float* latent, int64_t ctx, int64_t heads, int64_t nope,
                  int64_t v_dim, int64_t kv_lora, int64_t rope, float* k, float* v) override {
    Do([=, this] { cpu_.SplitMlaKv(kv, latent, ctx, heads, nope, v_dim, kv_lora, rope, k, v); });
  }
  void MlaDecode(const MlaDecodeShape& s, const float* q, int64_t b, const PlacedMatrix& kv_b_proj,
                 const float* cache, const int32_t* block_tables, const int32_t* context,
                 float* out) override {
    Do([=, this, &kv_b_proj] {
      cpu_.MlaDecode(s, q, b, kv_b_proj, cache, block_tables, context, out);
    });
  }
  void GqaDecode(const GqaDecodeShape& s, const float* q, int64_t ldq, int64_t b,
                 const float* cache, const int32_t* block_tables, const int32_t* context,
                 float* out) override {
    Do([=, this] { cpu_.GqaDecode(s, q, ldq, b, cache, block_tables, context, out); });
  }
  void RouteTokens(const ModelConfig& config, const float* logits, const float* bias, int64_t n,
                   int32_t* ids, float* weights) override {
    Do([=, this, &config] { cpu_.RouteTokens(config, logits, bias, n, ids, weights); });
  }
  void Sample(const float* logits, int64_t rows, int64_t vocab,
              const std::vector<SampleRequest>& requests, int32_t* out) override {
    if (Host("sampling")) cpu_.Sample(logits, rows, vocab, requests, out);
  }
  void CountChoices(const int32_t* ids, int64_t n, int64_t* counts) override {
    Do([=, this] { cpu_.CountChoices(ids, n, counts); });
  }
  // Recorded whole; its own ops (Ops::RoutedExperts, which reads the choices on the host) run
  // when it is replayed.
  void RoutedExperts(const ExpertSet& set, const float* x, int64_t rows, const int32_t* local,
                     const float* weight, int64_t k, Activation act, bool weight_on_input,
                     float* y) override {
    Do([=, this, &set] {
      Ops::RoutedExperts(set, x, rows, local, weight, k, act, weight_on_input, y);
    });
  }
  void ForEachExpert(int64_t count, const std::vector<bool>& active, float* y, int64_t rows,
                     int64_t dim, const std::function<void(int64_t, float*)>& work) override {
    if (Host("scheduling experts on the host"))
      cpu_.ForEachExpert(count, active, y, rows, dim, work);
  }

 private:
  struct Steps : Recording {
    std::vector<std::function<void()>> ops;
  };
  template <typename F>
  void Do(F op) {
    if (recording_) {
      recording_->ops.emplace_back(std::move(op));
    } else {
      op();
    }
  }
  // False (and the recording failed) while recording.
  bool Host(const char* what) {
    if (!recording_) return true;
    if (error_.ok()) error_ = absl::FailedPreconditionError(std::string(what) + " while recording");
    return false;
  }
  template <typename T>
  DeviceArray<T> FromPool(int64_t n) {
    const size_t bytes = static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(T);
    void* p = nullptr;
    if (auto it = free_.find(bytes); it != free_.end()) {
      p = it->second;
      free_.erase(it);
    } else {
      p = ::operator new (bytes, std::align_val_t{64});
      std::memset(p, 0xff, bytes);  // NaN as floats: a read before a write shows
      blocks_.push_back(p);
    }
    return DeviceArray<T>(
        Device::kCpu, static_cast<T*>(p), n,
        std::shared_ptr<void>(p, [this, bytes](void* q) { free_.emplace(bytes, q); }));
  }

  CpuOps cpu_;
  std::unique_ptr<Steps> recording_;
  absl::Status error_;
  std::multimap<size_t, void*> free_;  // recordings' blocks not held now
  std::vector<void*> blocks_;
  int64_t recorded_ops_ = 0;
};

}  // namespace moe::testing

// The op set the model's layer types run over: one interface, one implementation per device
// (`CpuOps`, kernels/cpu/cpu_ops.h: float32 math in host memory over the cores; the CUDA kernels of
// kernels/cuda/ops.h are its twins, each tested against the CPU one). The layers hold their
// weights and scratch arrays through it and call only these ops on them, so a layer is written
// once for every device.
//
// Activations are float32 arrays in the device's memory (`DeviceArray`), weight matrices
// `PlacedMatrix` (the checkpoint's format, where the device multiplies it). Index arrays
// (rows to gather, cache slots, block tables) are int32 arrays in the same memory. An op enqueues
// its work and returns; none allocates except the Allocate/Place calls.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "common/tensor.h"
#include "common/weight_matrix.h"
#include "kernels/cpu/sampler.h"  // SampleRequest

namespace moe {

enum class Device { kCpu, kCuda };
const char* DeviceName(Device device);

// An array of T in one device's memory, knowing its device; shares ownership of its storage
// (copies are views of the same memory). Empty by default.
template <typename T>
class DeviceArray {
 public:
  DeviceArray() = default;
  DeviceArray(Device device, T* data, int64_t size, std::shared_ptr<void> holder)
      : device_(device), data_(data), size_(size), holder_(std::move(holder)) {}
  Device device() const { return device_; }
  T* data() const { return data_; }
  int64_t size() const { return size_; }
  bool empty() const { return size_ == 0; }

 private:
  Device device_ = Device::kCpu;
  T* data_ = nullptr;
  int64_t size_ = 0;
  std::shared_ptr<void> holder_;
};

// A weight matrix [rows, cols] where an Ops multiplies it: the checkpoint's view (host memory,
// memory-mapped) and, on a device with memory of its own, the device's copy in its form.
struct PlacedMatrix {
  WeightMatrix host;
  std::shared_ptr<const void> device;  // null on the CPU
  int64_t rows() const { return host.rows; }
  int64_t cols() const { return host.cols; }
};

// The rows routed to each of `experts` local experts, in row order, with their routing weights:
// row r goes to local[r * k + j] (skipped where negative) with weight[r * k + j]. Host arrays.
struct RowsPerExpert {
  std::vector<std::vector<int32_t>> rows;
  std::vector<std::vector<float>> weights;
};
RowsPerExpert GroupRowsByExpert(const int32_t* local, const float* weight, int64_t rows, int64_t k,
                                size_t experts);

class Ops {
 public:
  virtual ~Ops() = default;
  virtual Device device() const = 0;

  // ---- memory ----------------------------------------------------------------------------------
  // n floats, contents unset (or zero).
  virtual DeviceArray<float> Allocate(int64_t n) = 0;
  virtual DeviceArray<int32_t> AllocateInts(int64_t n) = 0;
  virtual DeviceArray<int64_t> AllocateCounts(int64_t n) = 0;  // zeroed
  DeviceArray<float> AllocateZeroed(int64_t n) {
    DeviceArray<float> a = Allocate(n);
    Fill(a.data(), n, 0.0f);
    return a;
  }
  // Host data in this device's memory: copied, or on the CPU taken over without a copy.
  virtual DeviceArray<float> Place(Tensor t) = 0;
  virtual DeviceArray<int32_t> Place(std::vector<int32_t> v) = 0;
  virtual absl::StatusOr<PlacedMatrix> Place(WeightMatrix w) = 0;
  // MLA's kv_b_proj, which MlaDecode multiplies besides Linear: the CPU reads it as stored (and
  // decodes each head's rows in MlaDecode); a device may hold it in another format its decode
  // needs (the CUDA backend: bf16, for cuBLAS).
  virtual absl::StatusOr<PlacedMatrix> PlaceKvBProj(WeightMatrix w) { return Place(std::move(w)); }
  // `bytes` of `src` (this device's memory) into host memory, once the ops before have run.
  virtual void CopyToHost(const void* src, size_t bytes, void* dst) = 0;
  // `bytes` of host memory into `dst` (this device's memory), after the ops before: new contents
  // for an array that a recorded step reads.
  virtual void CopyFromHost(const void* src, size_t bytes, void* dst) = 0;
  // The first error an op met since the last call (a device's ops run after they return; the
  // CPU's never fail), or OK.
  virtual absl::Status TakeError() { return absl::OkStatus(); }

  // ---- recording -------------------------------------------------------------------------------
  // A device that can replay work (CUDA graphs) records the ops called between BeginRecording and
  // EndRecording instead of running them; Replay runs them again, on the same arrays, so a step's
  // inputs are written into the arrays it was recorded with (CopyFromHost) before each replay.
  // While recording nothing may be placed or copied between host and device (the recording fails
  // with an error naming it). Arrays allocated while recording come from memory that only
  // recordings use, shared by all of them: what a replay writes lasts until the next replay of any
  // recording. The CPU does not record.
  class Recording {
   public:
    virtual ~Recording() = default;
  };
  virtual bool can_record() const { return false; }
  virtual absl::Status BeginRecording();
  // The recording, or the first error an op met while recording.
  virtual absl::StatusOr<std::unique_ptr<Recording>> EndRecording();
  virtual absl::Status Replay(const Recording& recording);

  // ---- copies and elementwise ------------------------------------------------------------------
  virtual void Fill(float* y, int64_t n, float value) = 0;
  // rows x cols floats: row r of src at src + r * lds to dst + r * ldd.
  virtual void CopyRows(const float* src, int64_t lds, int64_t rows, int64_t cols, float* dst,
                        int64_t ldd) = 0;
  // out[i] = x[index[i]] for i < n (rows of dim floats); a negative index gives a zero row.
  virtual void GatherRows(const float* x, const int32_t* index, int64_t n, int64_t dim,
                          float* out) = 0;
  // out[index[i]] = x[i] for i < n (rows of dim floats).
  virtual void ScatterRows(const float* x, const int32_t* index, int64_t n, int64_t dim,
                           float* out) = 0;
  // y[index[i]] += scales[i] * x[i] for i < n (rows of dim floats; indices distinct; null scales:
  // 1).
  virtual void AddScaledRows(const float* x, const float* scales, const int32_t* index, int64_t n,
                             int64_t dim, float* y) = 0;
  // x[i] *= scales[i] for i < n (rows of dim floats).
  virtual void ScaleRows(float* x, const float* scales, int64_t n, int64_t dim) = 0;
  virtual void Add(float* y, const float* x, int64_t n) = 0;  // y += x
  virtual void Scale(float* y, float a, int64_t n) = 0;       // y *= a
  // y[r] += bias for each of `rows` rows of `dim` floats, `ld` apart.
  virtual void AddToRows(float* y, int64_t rows, int64_t dim, int64_t ld, const float* bias) = 0;
  // x = tanh(x / cap) * cap (Gemma's soft-capped logits).
  virtual void SoftCap(float* x, int64_t n, float cap) = 0;
  // y = x / sqrt(mean(x^2) + eps) * weight per row of `dim` (rows `ld` apart; a null weight
  // scales by 1).
  virtual void RmsNorm(const float* x, int64_t rows, int64_t dim, int64_t ld, const float* weight,
                       float eps, float* y) = 0;
  // out[r] = the sum of squares of row r's `dim` values (rows `ld` apart).
  virtual void RowSumSquares(const float* x, int64_t rows, int64_t dim, int64_t ld, float* out) = 0;
  // Row r (dim values, rows `ld` apart) times weight / sqrt(sumsq[r] / replication / width + eps):
  // an RMSNorm whose sums of squares were taken elsewhere (over a TP group, each value held by
  // `replication` ranks, `width` values in all).
  virtual void NormalizeRows(float* x, int64_t rows, int64_t dim, int64_t ld, const float* sumsq,
                             float replication, float width, float eps, const float* weight) = 0;
  // out[r, i] = act(gate_up[r, i]) * gate_up[r, inter + i]: SiLU, or Gemma's GELU-tanh.
  virtual void GatedActivation(const float* gate_up, int64_t rows, int64_t inter, Activation act,
                               float* out) = 0;
  // RoPE on `heads` vectors of `dim` per row: vector h of row r at x + r * row_stride + h *
  // head_stride; cos/sin [rows, dim / 2]. Interleaved pairs (DeepSeek's layout) or halves (the
  // rotate-half layout of the GQA families).
  virtual void Rope(float* x, int64_t rows, int64_t heads, int64_t row_stride, int64_t head_stride,
                    int64_t dim, const float* cos, const float* sin, bool interleaved) = 0;

  // ---- products --------------------------------------------------------------------------------
  // y[n, w.rows] = x[n, w.cols] · W^T, in the weight's format; rows of x `ldx` apart, of y `ldy`.
  virtual void Linear(const PlacedMatrix& w, const float* x, int64_t n, int64_t ldx, float* y,
                      int64_t ldy) = 0;
  // y[m, n] = x[m, k] · w[n, k]^T in float32 (the router gate; MLA's kv_b_proj).
  virtual void MatMulNT(int64_t m, int64_t n, int64_t k, const float* x, int64_t ldx,
                        const float* w, int64_t ldw, float* y, int64_t ldy) = 0;
  // out[i] = row `tokens[i] - first_row` of the embedding table for i < n (zero for tokens
  // outside [first_row, first_row + table.rows)).
  virtual void Embedding(const PlacedMatrix& table, int64_t first_row, const int32_t* tokens,
                         int64_t n, float* out) = 0;

  // ---- attention -------------------------------------------------------------------------------
  // Causal attention of one chunk over expanded K/V with kv_heads K/V heads shared by groups of
  // heads: q [q_len, heads, dqk], k [ctx, kv_heads, dqk], v [ctx, kv_heads, dv],
  // out [q_len, heads, dv]; query i at position start + i; `window` > 0 (sliding) and `chunk` > 0
  // (chunked) limit the keys it sees (cpu::GroupedCausalAttention).
  virtual void CausalAttention(const float* q, const float* k, const float* v, int64_t q_len,
                               int64_t ctx, int64_t heads, int64_t kv_heads, int64_t dqk,
                               int64_t dv, int64_t start, float scale, float* out,
                               int64_t window = 0, int64_t chunk = 0) = 0;
  // MLA prefill's K/V from the expanded latent: kv [ctx, heads, nope + v_dim] (kv_b_proj of c_kv),
  // latent [ctx, kv_lora + rope] -> k [ctx, heads, nope + rope] = [nope part | the row's k_pe],
  // v [ctx, heads, v_dim].
  virtual void SplitMlaKv(const float* kv, const float* latent, int64_t ctx, int64_t heads,
                          int64_t nope, int64_t v_dim, int64_t kv_lora, int64_t rope, float* k,
                          float* v) = 0;
  // Absorbed MLA decode of b query tokens over the paged latent cache:
  //   q [b, heads, nope + rope]; kv_b_proj [heads * (nope + v_dim), kv_lora] as PlaceKvBProj
  //   placed it (per head W_UK rows then W_UV rows); block_tables [b, table_width]; context [b]
  //   (positions each token sees); out [b, heads, v_dim] = W_UV_h sum_t softmax_t(scale *
  //   q_lat·row_t) c_kv_t with q_lat = [W_UK_h^T q_nope | q_pe].
  struct MlaDecodeShape {
    int64_t heads, nope, rope, v_dim, kv_lora, block_size, table_width;
    float scale;
  };
  virtual void MlaDecode(const MlaDecodeShape& s, const float* q, int64_t b,
                         const PlacedMatrix& kv_b_proj, const float* cache,
                         const int32_t* block_tables, const int32_t* context, float* out) = 0;
  // Grouped-query decode of b query tokens over the paged K/V cache (rows [k | v] of
  // kv_heads * head_dim each): q [b, heads, head_dim] (rows `ldq` apart), out likewise;
  // block_tables [b, table_width], context [b]; window, chunk as CausalAttention's.
  struct GqaDecodeShape {
    int64_t heads, kv_heads, head_dim, block_size, table_width;
    float scale;
    int64_t window, chunk;
  };
  virtual void GqaDecode(const GqaDecodeShape& s, const float* q, int64_t ldq, int64_t b,
                         const float* cache, const int32_t* block_tables, const int32_t* context,
                         float* out) = 0;

  // ---- MoE -------------------------------------------------------------------------------------
  // The config's router on logits [n, n_routed_experts] (bias may be null): ids and weights
  // [n, num_experts_per_tok], ids by descending choice score (kernels/cpu/router.h).
  virtual void RouteTokens(const ModelConfig& config, const float* logits, const float* bias,
                           int64_t n, int32_t* ids, float* weights) = 0;
  // ---- sampling --------------------------------------------------------------------------------
  // One token per row of logits [rows, vocab] (this device's memory) into out (host memory), as
  // SampleToken (kernels/cpu/sampler.h) draws it for requests[row].
  virtual void Sample(const float* logits, int64_t rows, int64_t vocab,
                      const std::vector<SampleRequest>& requests, int32_t* out) = 0;

  // counts[ids[i]] += 1 for i < n with ids[i] >= 0 (tokens per expert, summed over steps).
  virtual void CountChoices(const int32_t* ids, int64_t n, int64_t* counts) = 0;
  // One MoE layer's routed experts on this rank, expert e's gate_proj and up_proj [inter, hidden]
  // and down_proj [hidden, inter] (placed by this Ops), in the form RoutedExperts runs them.
  struct Expert {
    const PlacedMatrix* gate;
    const PlacedMatrix* up;
    const PlacedMatrix* down;
  };
  struct ExpertSet {
    virtual ~ExpertSet() = default;
    std::vector<Expert> experts;
  };
  virtual absl::StatusOr<std::unique_ptr<ExpertSet>> PlaceExperts(std::vector<Expert> experts);
  // y [rows, dim] (zeroed first) = per row r the sum over j < k with local[r, j] >= 0 of
  // weight[r, j] * expert_local[r, j](x_r), or expert(weight[r, j] * x_r) with `weight_on_input`
  // (Llama 4); an expert is down(act(gate(x)) * up(x)). x, local and weight [rows, k] in this
  // device's memory. Here: each expert's rows gathered and multiplied on their own, scheduled by
  // ForEachExpert; a device may group the products instead (the CPU does for few active experts
  // with few rows).
  virtual void RoutedExperts(const ExpertSet& set, const float* x, int64_t rows,
                             const int32_t* local, const float* weight, int64_t k, Activation act,
                             bool weight_on_input, float* y);

  // Runs work(e, acc) for each e < count whose `active[e]` is set, every call adding its output
  // into a [rows, dim] accumulator that is summed into y (zeroed first). The device picks the
  // schedule: the CPU runs many experts in parallel on private accumulators, few one after
  // another with every thread in each product.
  virtual void ForEachExpert(int64_t count, const std::vector<bool>& active, float* y, int64_t rows,
                             int64_t dim, const std::function<void(int64_t, float*)>& work) = 0;

 protected:
  // RoutedExperts' schedule by ForEachExpert, for rows already grouped by expert (host memory).
  void RoutedExpertsByExpert(const ExpertSet& set, const float* x, int64_t rows,
                             const RowsPerExpert& grouped, Activation act, bool weight_on_input,
                             float* y);
};

// y [n, down.rows] = down(act(gate(x)) * up(x)) for x [n, gate.cols]: the gated MLP.
void GatedMlpForward(Ops& ops, const PlacedMatrix& gate, const PlacedMatrix& up,
                     const PlacedMatrix& down, Activation act, const float* x, int64_t n, float* y);

// Rows `rows` of x [.., dim] (this device's memory), in that order: [rows.size(), dim].
DeviceArray<float> GatherRows(Ops& ops, const float* x, const std::vector<int64_t>& rows,
                              int64_t dim);
// `a` as a host tensor of `shape` (numel(shape) <= a.size()).
Tensor ToHost(Ops& ops, const DeviceArray<float>& a, std::vector<int64_t> shape);

}  // namespace moe

#include "model/cuda_model.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "checkpoint/checkpoint.h"
#include "checkpoint/weight_names.h"
#include "common/dtype.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/device_weight.h"
#include "kernels/cuda/ops.h"
#include "model/rope.h"

namespace moe {
namespace {

using cuda::bf16;
using cuda::DeviceBuffer;

constexpr size_t kCublasWorkspaceBytes = 32u << 20;

// Reads checkpoint tensors into device memory, counting the bytes read by model part: weight
// matrices in their stored format (cuda::DeviceWeight), or bf16 where only bf16 is read; norms,
// router and bias float32.
class WeightLoader {
 public:
  WeightLoader(Checkpoint& ck, WeightBytes* bytes) : ck_(ck), bytes_(bytes) {}
  WeightBytes& bytes() { return *bytes_; }

  absl::StatusOr<cuda::DeviceWeight> Matrix(const WeightSpec& spec, uint64_t* part,
                                            bool as_bf16 = false) {
    MOE_ASSIGN_OR_RETURN(WeightMatrix m, Metered(ck_, part, [&] {
                           return ck_.LoadMatrix(spec.name, spec.shape, SliceSpec::All(),
                                                 spec.quantizable());
                         }));
    auto d = cuda::DeviceWeight::Upload(m, as_bf16);
    if (!d.ok()) return Annotate(spec.name, d.status());
    return d;
  }
  absl::StatusOr<DeviceBuffer<float>> F32(const WeightSpec& spec, uint64_t* part) {
    MOE_ASSIGN_OR_RETURN(Tensor t,
                         Metered(ck_, part, [&] { return ck_.Load(spec.name, spec.shape); }));
    DeviceBuffer<float> b;
    MOE_RETURN_IF_ERROR(Annotate(spec.name, b.Upload(t.data(), static_cast<size_t>(t.numel()))));
    return b;
  }

 private:
  static absl::Status Annotate(const std::string& name, absl::Status s) {
    if (s.ok()) return s;
    return absl::Status(s.code(), absl::StrCat("loading ", name, " onto the GPU: ", s.message()));
  }
  Checkpoint& ck_;
  WeightBytes* bytes_;
};

struct DeviceMlp {
  int64_t inter = 0;
  cuda::DeviceWeight gate, up;  // [inter, hidden]
  cuda::DeviceWeight down;      // [hidden, inter]

  absl::Status Load(WeightLoader& w, const MlpWeights& spec, uint64_t* part) {
    inter = spec.intermediate();
    MOE_ASSIGN_OR_RETURN(gate, w.Matrix(spec.gate_proj, part));
    MOE_ASSIGN_OR_RETURN(up, w.Matrix(spec.up_proj, part));
    MOE_ASSIGN_OR_RETURN(down, w.Matrix(spec.down_proj, part));
    return absl::OkStatus();
  }
};

struct DeviceLayer {
  DeviceBuffer<float> input_layernorm, post_attention_layernorm;
  // MLA; kv_b_proj bf16 (the absorbed decode multiplies by it through cuBLAS)
  cuda::DeviceWeight q_a_proj, q_b_proj, q_proj, kv_a_proj_with_mqa, kv_b_proj, o_proj;
  DeviceBuffer<float> q_a_layernorm, kv_a_layernorm;
  // MLP: dense, or routed experts + shared experts
  bool is_moe = false;
  DeviceMlp dense, shared;
  DeviceBuffer<float> gate, bias;  // router [experts, hidden], [experts]
  std::vector<DeviceMlp> experts;
  WeightFormat experts_format = WeightFormat::kBF16;
  DeviceBuffer<cuda::WeightView> gate_views, up_views, down_views;  // per expert
};

// One step's shape, as the launches see it.
struct PrefillChunk {
  int64_t first_token, num_tokens, start_pos, context, slot_offset;
};
struct StepShape {
  int64_t tokens = 0, logit_rows = 0, decode = 0, table_width = 0;
  std::vector<PrefillChunk> prefill;
};

int64_t RoundUpPow2(int64_t v, int64_t floor) {
  int64_t p = floor;
  while (p < v) p *= 2;
  return p;
}

}  // namespace

struct CudaModel::Impl {
  ModelConfig c;
  KvCacheShape cache_shape;
  CudaModelOptions options;
  WeightBytes bytes;
  float eps = 1e-6f, softmax_scale = 1.0f;
  int64_t h = 0, heads = 0, nope = 0, rope = 0, v_dim = 0, kv_lora = 0, qk = 0, dim = 0, kvh = 0;
  int64_t experts = 0, top_k = 0;

  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  DeviceBuffer<uint8_t> blas_workspace;

  cuda::DeviceWeight embed_tokens, lm_head;  // the table bf16 (looked up, not multiplied)
  DeviceBuffer<float> norm;
  std::vector<DeviceLayer> layers;
  DeviceBuffer<float> cache;  // [layers][blocks * block_size][dim]
  DeviceBuffer<int64_t> expert_counts;
  DeviceBuffer<int32_t> offsets;

  // Step buffers, grown on demand (a growth drops the captured graphs, which hold pointers).
  struct Capacity {
    int64_t tokens = 0, logit_rows = 0, table = 0, context = 0;
  } cap;
  DeviceBuffer<int32_t> token_ids, slots, decode_rows, ctx_lens, logit_row_ids, block_tables,
      ctx_slots, topk_ids, sorted_token, row_of, sampled;
  DeviceBuffer<float> cos, sin, x, normed, delta, q, qa, kv, attn, q_dec, q_cat, o_lat, o_dec,
      router_logits, topk_weights, moe_x, moe_gate_up, moe_act, moe_y, mlp_gate_up, mlp_act, last,
      logits, latent, kv_expanded, k, v;
  DeviceBuffer<bf16> x_bf16;
  DeviceBuffer<SampleRequest> sample_requests;
  int64_t last_logit_rows = 0;

  std::map<std::pair<int64_t, int64_t>, cudaGraphExec_t> graphs;  // (batch, table width)
  int64_t replays = 0, captured = 0;

  ~Impl() {
    DropGraphs();
    if (blas != nullptr) cublasDestroy(blas);
    if (stream != nullptr) cudaStreamDestroy(stream);
  }

  void DropGraphs() {
    for (auto& [key, exec] : graphs) cudaGraphExecDestroy(exec);
    graphs.clear();
  }

  absl::Status LoadWeights(Checkpoint& ck) {
    WeightLoader w(ck, &bytes);
    const ModelWeights top = TopLevelWeights(c);
    MOE_ASSIGN_OR_RETURN(embed_tokens,
                         w.Matrix(top.embed_tokens, &bytes.embedding, /*as_bf16=*/true));
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      MOE_LOG(DEBUG) << "loading layer " << l << " onto the GPU (" << ck.bytes_read() / 1e6
                     << " MB read so far)";
      DeviceLayer& L = layers.emplace_back();
      const DecoderLayerWeights layer_weights = LayerWeights(c, l, c.IsMoeLayer(l));
      const DecoderLayerWeights& s = layer_weights;
      const MlaWeights& a = *s.mla;
      MOE_ASSIGN_OR_RETURN(L.input_layernorm, w.F32(*s.input_layernorm, &bytes.norms));
      MOE_ASSIGN_OR_RETURN(L.post_attention_layernorm,
                           w.F32(s.post_attention_layernorm, &bytes.norms));
      uint64_t* split = &bytes.attention_head_split;
      uint64_t* replicated = &bytes.attention_replicated;
      if (a.q_a_proj) {
        MOE_ASSIGN_OR_RETURN(L.q_a_proj, w.Matrix(*a.q_a_proj, replicated));
        MOE_ASSIGN_OR_RETURN(L.q_a_layernorm, w.F32(*a.q_a_layernorm, replicated));
        MOE_ASSIGN_OR_RETURN(L.q_b_proj, w.Matrix(*a.q_b_proj, split));
      } else {
        MOE_ASSIGN_OR_RETURN(L.q_proj, w.Matrix(*a.q_proj, split));
      }
      MOE_ASSIGN_OR_RETURN(L.kv_a_proj_with_mqa, w.Matrix(a.kv_a_proj_with_mqa, replicated));
      MOE_ASSIGN_OR_RETURN(L.kv_a_layernorm, w.F32(a.kv_a_layernorm, replicated));
      MOE_ASSIGN_OR_RETURN(L.kv_b_proj, w.Matrix(a.kv_b_proj, split, /*as_bf16=*/true));
      MOE_ASSIGN_OR_RETURN(L.o_proj, w.Matrix(a.o_proj, split));
      L.is_moe = s.gate.has_value();
      if (!L.is_moe) {
        MOE_RETURN_IF_ERROR(L.dense.Load(w, *s.mlp, &bytes.dense_mlp));
        continue;
      }
      MOE_ASSIGN_OR_RETURN(L.gate, w.F32(*s.gate, &bytes.router));
      if (s.e_score_correction_bias) {
        MOE_ASSIGN_OR_RETURN(L.bias, w.F32(*s.e_score_correction_bias, &bytes.router));
      }
      std::vector<cuda::WeightView> gate_views, up_views, down_views;
      for (int64_t e = 0; e < experts; ++e) {
        DeviceMlp& m = L.experts.emplace_back();
        MOE_RETURN_IF_ERROR(m.Load(w, s.experts[e], &bytes.routed_experts));
        for (const cuda::DeviceWeight* p : {&m.gate, &m.up, &m.down}) {
          if (p->format() != L.experts.front().gate.format()) {
            return absl::InvalidArgumentError(
                absl::StrCat("layer ", l, ": routed experts stored in different formats (",
                             WeightFormatName(p->format()), " and ",
                             WeightFormatName(L.experts.front().gate.format()),
                             "); the grouped expert product takes one"));
          }
        }
        gate_views.push_back(m.gate.view());
        up_views.push_back(m.up.view());
        down_views.push_back(m.down.view());
      }
      L.experts_format = L.experts.front().gate.format();
      MOE_RETURN_IF_ERROR(L.gate_views.Upload(gate_views));
      MOE_RETURN_IF_ERROR(L.up_views.Upload(up_views));
      MOE_RETURN_IF_ERROR(L.down_views.Upload(down_views));
      if (s.shared_experts) {
        MOE_RETURN_IF_ERROR(L.shared.Load(w, *s.shared_experts, &bytes.shared_experts));
      }
    }
    MOE_ASSIGN_OR_RETURN(norm, w.F32(top.norm, &bytes.norms));
    MOE_ASSIGN_OR_RETURN(lm_head, w.Matrix(top.lm_head, &bytes.embedding));
    return absl::OkStatus();
  }

  // Grows the step buffers to hold `need`; every field at least doubles when it grows.
  absl::Status Reserve(const Capacity& need) {
    const int64_t E = experts, mi = c.moe_intermediate_size;
    const int64_t inter = std::max({c.intermediate_size, c.shared_intermediate_size(), int64_t{1}});
    const int64_t q_lora = c.q_lora_rank.value_or(0);
    const int64_t max_in = std::max({h, q_lora, heads * v_dim, inter, heads * qk, heads * kv_lora});
    bool grew = false;
    if (need.tokens > cap.tokens) {
      const int64_t T = RoundUpPow2(need.tokens, 16);
      auto f = [&](DeviceBuffer<float>& b, int64_t per) { return b.Allocate(T * per); };
      auto i = [&](DeviceBuffer<int32_t>& b, int64_t per) { return b.Allocate(T * per); };
      for (auto* b : {&token_ids, &slots, &decode_rows, &ctx_lens, &logit_row_ids}) {
        MOE_RETURN_IF_ERROR(i(*b, 1));
      }
      for (auto* b : {&topk_ids, &sorted_token, &row_of}) MOE_RETURN_IF_ERROR(i(*b, top_k));
      for (auto* b : {&cos, &sin}) MOE_RETURN_IF_ERROR(f(*b, rope / 2));
      for (auto* b : {&x, &normed, &delta, &last}) MOE_RETURN_IF_ERROR(f(*b, h));
      MOE_RETURN_IF_ERROR(f(q, heads * qk));
      MOE_RETURN_IF_ERROR(f(qa, std::max<int64_t>(q_lora, 1)));
      MOE_RETURN_IF_ERROR(f(kv, dim));
      MOE_RETURN_IF_ERROR(f(attn, heads * v_dim));
      MOE_RETURN_IF_ERROR(f(q_dec, heads * qk));
      MOE_RETURN_IF_ERROR(f(q_cat, heads * dim));
      MOE_RETURN_IF_ERROR(f(o_lat, heads * kv_lora));
      MOE_RETURN_IF_ERROR(f(o_dec, heads * v_dim));
      MOE_RETURN_IF_ERROR(f(router_logits, std::max<int64_t>(E, 1)));
      MOE_RETURN_IF_ERROR(f(topk_weights, top_k));
      MOE_RETURN_IF_ERROR(f(moe_x, top_k * h));
      MOE_RETURN_IF_ERROR(f(moe_gate_up, top_k * 2 * mi));
      MOE_RETURN_IF_ERROR(f(moe_act, top_k * mi));
      MOE_RETURN_IF_ERROR(f(moe_y, top_k * h));
      MOE_RETURN_IF_ERROR(f(mlp_gate_up, 2 * inter));
      MOE_RETURN_IF_ERROR(f(mlp_act, inter));
      cap.tokens = T;
      grew = true;
    }
    if (need.context > cap.context) {
      const int64_t C = RoundUpPow2(need.context, 64);
      MOE_RETURN_IF_ERROR(ctx_slots.Allocate(C));
      MOE_RETURN_IF_ERROR(latent.Allocate(C * dim));
      MOE_RETURN_IF_ERROR(kv_expanded.Allocate(C * heads * kvh));
      MOE_RETURN_IF_ERROR(k.Allocate(C * heads * qk));
      MOE_RETURN_IF_ERROR(v.Allocate(C * heads * v_dim));
      cap.context = C;
      grew = true;
    }
    if (grew) {
      MOE_RETURN_IF_ERROR(x_bf16.Allocate(std::max(cap.tokens * max_in, cap.context * kv_lora)));
    }
    if (need.logit_rows > cap.logit_rows) {
      const int64_t L = RoundUpPow2(need.logit_rows, 16);
      MOE_RETURN_IF_ERROR(logits.Allocate(L * c.vocab_size));
      MOE_RETURN_IF_ERROR(sample_requests.Allocate(L));
      MOE_RETURN_IF_ERROR(sampled.Allocate(L));
      cap.logit_rows = L;
      grew = true;
    }
    if (need.table > cap.table) {
      const int64_t B = RoundUpPow2(need.table, 256);
      MOE_RETURN_IF_ERROR(block_tables.Allocate(B));
      cap.table = B;
      grew = true;
    }
    if (grew) DropGraphs();
    return absl::OkStatus();
  }

  // y = x · W^T through the format's product; rows of y `ldy` apart (0: dense).
  absl::Status Linear(const cuda::DeviceWeight& w, const float* in, int64_t n, float* out,
                      int64_t ldx = 0, int64_t ldy = 0) {
    return cuda::Linear(blas, in, n, w.view(), out, x_bf16.data(), stream, ldx, ldy);
  }

  absl::Status Mlp(const DeviceMlp& m, const float* in, int64_t n, float* out) {
    MOE_RETURN_IF_ERROR(Linear(m.gate, in, n, mlp_gate_up.data(), 0, 2 * m.inter));
    MOE_RETURN_IF_ERROR(Linear(m.up, in, n, mlp_gate_up.data() + m.inter, 0, 2 * m.inter));
    cuda::SiluAndMul(mlp_gate_up.data(), n, m.inter, mlp_act.data(), stream);
    return Linear(m.down, mlp_act.data(), n, out);
  }

  absl::Status Moe(const DeviceLayer& L, int64_t n) {
    const int64_t k = top_k, mi = c.moe_intermediate_size;
    MOE_RETURN_IF_ERROR(cuda::LinearF32(blas, normed.data(), n, h, L.gate.data(), experts,
                                        router_logits.data(), stream));
    cuda::RouteTokens(router_logits.data(), L.bias.size() > 0 ? L.bias.data() : nullptr, n,
                      cuda::RouterParamsFor(c), topk_ids.data(), topk_weights.data(), stream);
    cuda::PermuteByExpert(topk_ids.data(), n, k, experts, offsets.data(), sorted_token.data(),
                          row_of.data(), stream);
    cuda::AddExpertCounts(offsets.data(), experts, expert_counts.data(), stream);
    cuda::GatherRows(normed.data(), sorted_token.data(), n * k, h, moe_x.data(), stream);
    const WeightFormat f = L.experts_format;
    cuda::GroupedWeightLinear(moe_x.data(), offsets.data(), experts, f, L.gate_views.data(), mi, h,
                              moe_gate_up.data(), 2 * mi, stream);
    cuda::GroupedWeightLinear(moe_x.data(), offsets.data(), experts, f, L.up_views.data(), mi, h,
                              moe_gate_up.data() + mi, 2 * mi, stream);
    cuda::SiluAndMul(moe_gate_up.data(), n * k, mi, moe_act.data(), stream);
    cuda::GroupedWeightLinear(moe_act.data(), offsets.data(), experts, f, L.down_views.data(), h,
                              mi, moe_y.data(), h, stream);
    const bool shared = L.shared.inter > 0;
    if (shared) MOE_RETURN_IF_ERROR(Mlp(L.shared, normed.data(), n, delta.data()));
    cuda::CombineRows(moe_y.data(), row_of.data(), topk_weights.data(), n, k, h, delta.data(),
                      /*accumulate=*/shared, stream);
    return absl::OkStatus();
  }

  absl::Status Attention(const DeviceLayer& L, int64_t layer, const StepShape& s) {
    const int64_t n = s.tokens, H = heads;
    float* layer_cache = cache.data() + layer * cache_shape.blocks * cache_shape.block_size * dim;
    if (!L.q_proj.empty()) {
      MOE_RETURN_IF_ERROR(Linear(L.q_proj, normed.data(), n, q.data()));
    } else {
      const int64_t r = *c.q_lora_rank;
      MOE_RETURN_IF_ERROR(Linear(L.q_a_proj, normed.data(), n, qa.data()));
      cuda::RmsNorm(qa.data(), n, r, r, L.q_a_layernorm.data(), eps, qa.data(), stream);
      MOE_RETURN_IF_ERROR(Linear(L.q_b_proj, qa.data(), n, q.data()));
    }
    // Latent KV [c_kv | k_pe]: normalise c_kv, rotate k_pe and the queries' rope parts, store.
    MOE_RETURN_IF_ERROR(Linear(L.kv_a_proj_with_mqa, normed.data(), n, kv.data()));
    cuda::RmsNorm(kv.data(), n, kv_lora, dim, L.kv_a_layernorm.data(), eps, kv.data(), stream);
    cuda::RopeInterleaved(kv.data() + kv_lora, n, 1, dim, 0, rope, cos.data(), sin.data(), stream);
    cuda::RopeInterleaved(q.data() + nope, n, H, H * qk, qk, rope, cos.data(), sin.data(), stream);
    cuda::ScatterRows(kv.data(), slots.data(), n, dim, layer_cache, stream);

    // Prefill chunks: expand K/V for the chunk's whole context from the cache.
    for (const PrefillChunk& p : s.prefill) {
      cuda::GatherRows(layer_cache, ctx_slots.data() + p.slot_offset, p.context, dim, latent.data(),
                       stream);
      MOE_RETURN_IF_ERROR(
          Linear(L.kv_b_proj, latent.data(), p.context, kv_expanded.data(), /*ldx=*/dim));
      cuda::SplitMlaKv(kv_expanded.data(), latent.data(), p.context, H, nope, v_dim, kv_lora, rope,
                       k.data(), v.data(), stream);
      cuda::CausalAttention(q.data() + p.first_token * H * qk, k.data(), v.data(), p.num_tokens,
                            p.context, H, qk, v_dim, p.start_pos, softmax_scale,
                            attn.data() + p.first_token * H * v_dim, stream);
    }

    // Decode tokens, absorbed: q_cat = [W_UK^T q_nope | q_pe] per head, attention over the
    // latent rows, then W_UV on the weighted latent sum.
    if (s.decode > 0) {
      const int64_t b = s.decode;
      cuda::GatherRows(q.data(), decode_rows.data(), b, H * qk, q_dec.data(), stream);
      cuda::F32ToBf16(q_dec.data(), x_bf16.data(), b * H * qk, stream);
      MOE_RETURN_IF_ERROR(
          cuda::BatchedMatMul(blas, H, b, kv_lora, nope, {x_bf16.data(), H * qk, qk},
                              {L.kv_b_proj.bf16_data(), kv_lora, kvh * kv_lora},
                              /*transpose_b=*/false, q_cat.data(), H * dim, dim, stream));
      MOE_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(
          q_cat.data() + kv_lora, dim * sizeof(float), q_dec.data() + nope, qk * sizeof(float),
          rope * sizeof(float), b * H, cudaMemcpyDeviceToDevice, stream));
      cuda::MlaDecodeAttention(q_cat.data(), b, H, kv_lora, rope, layer_cache, block_tables.data(),
                               s.table_width, ctx_lens.data(), cache_shape.block_size,
                               softmax_scale, o_lat.data(), stream);
      cuda::F32ToBf16(o_lat.data(), x_bf16.data(), b * H * kv_lora, stream);
      MOE_RETURN_IF_ERROR(
          cuda::BatchedMatMul(blas, H, b, v_dim, kv_lora, {x_bf16.data(), H * kv_lora, kv_lora},
                              {L.kv_b_proj.bf16_data() + nope * kv_lora, kv_lora, kvh * kv_lora},
                              /*transpose_b=*/true, o_dec.data(), H * v_dim, v_dim, stream));
      cuda::ScatterRows(o_dec.data(), decode_rows.data(), b, H * v_dim, attn.data(), stream);
    }
    return Linear(L.o_proj, attn.data(), n, delta.data());
  }

  // The whole step on `stream`: nothing here waits for the device or allocates.
  absl::Status Run(const StepShape& s) {
    const int64_t n = s.tokens, m = s.logit_rows;
    cuda::EmbeddingLookup(embed_tokens.bf16_data(), 0, c.vocab_size, token_ids.data(), n, h,
                          x.data(), stream);
    for (size_t l = 0; l < layers.size(); ++l) {
      const DeviceLayer& L = layers[l];
      cuda::RmsNorm(x.data(), n, h, h, L.input_layernorm.data(), eps, normed.data(), stream);
      MOE_RETURN_IF_ERROR(Attention(L, static_cast<int64_t>(l), s));
      cuda::Add(x.data(), delta.data(), n * h, stream);
      cuda::RmsNorm(x.data(), n, h, h, L.post_attention_layernorm.data(), eps, normed.data(),
                    stream);
      if (L.is_moe) {
        MOE_RETURN_IF_ERROR(Moe(L, n));
      } else {
        MOE_RETURN_IF_ERROR(Mlp(L.dense, normed.data(), n, delta.data()));
      }
      cuda::Add(x.data(), delta.data(), n * h, stream);
    }
    cuda::GatherRows(x.data(), logit_row_ids.data(), m, h, last.data(), stream);
    cuda::RmsNorm(last.data(), m, h, h, norm.data(), eps, last.data(), stream);
    return Linear(lm_head, last.data(), m, logits.data());
  }

  // Replays the graph of this decode shape, capturing it the first time.
  absl::Status RunGraph(const StepShape& s) {
    const auto key = std::make_pair(s.decode, s.table_width);
    auto it = graphs.find(key);
    if (it == graphs.end()) {
      MOE_CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
      const absl::Status run = Run(s);
      cudaGraph_t graph = nullptr;
      const cudaError_t end = cudaStreamEndCapture(stream, &graph);
      cudaGraphExec_t exec = nullptr;
      const cudaError_t inst =
          run.ok() && end == cudaSuccess ? cudaGraphInstantiate(&exec, graph, 0) : cudaSuccess;
      if (graph != nullptr) cudaGraphDestroy(graph);
      MOE_RETURN_IF_ERROR(run);
      MOE_CUDA_RETURN_IF_ERROR(end);
      MOE_CUDA_RETURN_IF_ERROR(inst);
      it = graphs.emplace(key, exec).first;
      ++captured;
    } else {
      ++replays;
    }
    return cuda::CudaStatus(cudaGraphLaunch(it->second, stream), "graph launch");
  }

  absl::Status Forward(const std::vector<int32_t>& tokens, const ForwardBatch& batch,
                       const std::vector<int64_t>& logit_rows) {
    const int64_t n = static_cast<int64_t>(tokens.size()), bs = cache_shape.block_size;
    StepShape s;
    s.tokens = n;
    s.logit_rows = static_cast<int64_t>(logit_rows.size());
    last_logit_rows = 0;
    if (n == 0) return absl::OkStatus();
    // Host-side indices: each token's cache slot; decode tokens' rows, context lengths and
    // block tables (padded to a power-of-two width, so few graph shapes exist); prefill chunks'
    // context slots.
    std::vector<int32_t> slot(static_cast<size_t>(n)), drows, dlens, cslots;
    for (const ForwardChunk& ch : batch.chunks) {
      for (int64_t i = 0; i < ch.num_tokens; ++i) {
        const int64_t pos = ch.start_pos + i;
        slot[ch.first_token + i] =
            static_cast<int32_t>((*ch.block_table)[pos / bs] * bs + pos % bs);
      }
      if (ch.num_tokens == 1) {
        drows.push_back(static_cast<int32_t>(ch.first_token));
        dlens.push_back(static_cast<int32_t>(ch.context()));
        s.table_width = std::max(s.table_width, (ch.context() + bs - 1) / bs);
      } else {
        s.prefill.push_back({ch.first_token, ch.num_tokens, ch.start_pos, ch.context(),
                             static_cast<int64_t>(cslots.size())});
        for (int64_t t = 0; t < ch.context(); ++t) {
          cslots.push_back(static_cast<int32_t>((*ch.block_table)[t / bs] * bs + t % bs));
        }
      }
    }
    s.decode = static_cast<int64_t>(drows.size());
    s.table_width = s.decode > 0 ? RoundUpPow2(s.table_width, 8) : 0;
    std::vector<int32_t> tables(static_cast<size_t>(s.decode * s.table_width), 0);
    for (int64_t i = 0, d = 0; i < static_cast<int64_t>(batch.chunks.size()); ++i) {
      const ForwardChunk& ch = batch.chunks[i];
      if (ch.num_tokens != 1) continue;
      const int64_t used = (ch.context() + bs - 1) / bs;
      std::copy_n(ch.block_table->begin(), used, tables.begin() + d * s.table_width);
      ++d;
    }
    std::vector<int32_t> rows(logit_rows.begin(), logit_rows.end());
    MOE_RETURN_IF_ERROR(Reserve({n, s.logit_rows, static_cast<int64_t>(tables.size()),
                                 static_cast<int64_t>(cslots.size())}));
    MOE_RETURN_IF_ERROR(token_ids.Upload(tokens, stream));
    MOE_RETURN_IF_ERROR(slots.Upload(slot, stream));
    MOE_RETURN_IF_ERROR(decode_rows.Upload(drows, stream));
    MOE_RETURN_IF_ERROR(ctx_lens.Upload(dlens, stream));
    MOE_RETURN_IF_ERROR(block_tables.Upload(tables, stream));
    MOE_RETURN_IF_ERROR(ctx_slots.Upload(cslots, stream));
    MOE_RETURN_IF_ERROR(logit_row_ids.Upload(rows, stream));
    const size_t angles = static_cast<size_t>(n * (rope / 2));
    MOE_RETURN_IF_ERROR(cos.Upload(batch.rope_cos.data(), angles, stream));
    MOE_RETURN_IF_ERROR(sin.Upload(batch.rope_sin.data(), angles, stream));

    bool decode_only = s.prefill.empty() && s.logit_rows == n;
    for (int64_t i = 0; decode_only && i < n; ++i) decode_only = logit_rows[i] == i;
    MOE_RETURN_IF_ERROR(options.graphs && decode_only ? RunGraph(s) : Run(s));
    MOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    last_logit_rows = s.logit_rows;
    return absl::OkStatus();
  }
};

CudaModel::CudaModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CudaModel::~CudaModel() = default;

absl::StatusOr<std::unique_ptr<CudaModel>> CudaModel::Load(const std::string& dir,
                                                           const ModelConfig& config,
                                                           const ParallelContext& ctx,
                                                           const KvCacheShape& cache,
                                                           const CudaModelOptions& options) {
  if (!config.is_mla()) {
    return absl::UnimplementedError(
        absl::StrCat("the CUDA backend runs MLA models (DeepseekV3ForCausalLM) only; ",
                     config.architectures[0], " runs on the CPU backend (--device cpu)"));
  }
  if (ctx.world().size() != 1) {
    return absl::UnimplementedError(absl::StrCat(
        "the CUDA backend runs on one GPU (world size 1), not ", ctx.world().size(),
        " ranks: multi-GPU layouts need the MoE dispatch over NCCL, which the engine does not "
        "use yet"));
  }
  if (cuda::DeviceCount() == 0) {
    return absl::FailedPreconditionError("device cuda: no CUDA device is visible");
  }
  MOE_RETURN_IF_ERROR(cuda::CudaStatus(cudaSetDevice(options.device), "cudaSetDevice"));
  auto m = std::make_unique<Impl>();
  Impl& d = *m;
  d.c = config;
  d.cache_shape = cache;
  d.options = options;
  d.eps = static_cast<float>(config.rms_norm_eps);
  d.softmax_scale = RotaryEmbedding(config).softmax_scale();
  d.h = config.hidden_size;
  d.heads = config.num_attention_heads;
  d.nope = config.qk_nope_head_dim;
  d.rope = config.qk_rope_head_dim;
  d.v_dim = config.v_head_dim;
  d.kv_lora = config.kv_lora_rank;
  d.qk = config.qk_head_dim();
  d.dim = config.kv_cache_dim();
  d.kvh = d.nope + d.v_dim;
  d.experts = config.n_routed_experts;
  d.top_k = config.num_experts_per_tok;
  if (d.kv_lora > 1024 || d.qk > 256 || d.v_dim > 256) {
    return absl::UnimplementedError(absl::StrCat(
        "the CUDA attention kernels take kv_lora_rank <= 1024 and head dims <= 256; this config "
        "has ",
        d.kv_lora, ", ", d.qk, " and ", d.v_dim));
  }
  if (d.experts > 1024 || d.top_k > 64 || config.n_group > 64) {
    return absl::UnimplementedError(
        "the CUDA router takes <= 1024 experts, top-k <= 64 and <= 64 groups");
  }
  MOE_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&d.stream, cudaStreamNonBlocking));
  MOE_CUBLAS_RETURN_IF_ERROR(cublasCreate(&d.blas));
  MOE_CUBLAS_RETURN_IF_ERROR(cublasSetStream(d.blas, d.stream));
  // A fixed workspace: cuBLAS then allocates nothing while a graph is being captured.
  MOE_RETURN_IF_ERROR(d.blas_workspace.Allocate(kCublasWorkspaceBytes));
  MOE_CUBLAS_RETURN_IF_ERROR(
      cublasSetWorkspace(d.blas, d.blas_workspace.data(), kCublasWorkspaceBytes));

  MOE_ASSIGN_OR_RETURN(auto ck, Checkpoint::Open(dir, config.quantization_config));
  MOE_RETURN_IF_ERROR(d.LoadWeights(*ck));
  MOE_CHECK(d.bytes.total() == ck->bytes_read());  // every read is attributed to a part

  const size_t cache_floats =
      static_cast<size_t>(config.num_hidden_layers * cache.blocks * cache.block_size * d.dim);
  if (absl::Status s = d.cache.Allocate(cache_floats); !s.ok()) {
    return absl::ResourceExhaustedError(absl::StrCat("allocating the KV cache (",
                                                     cache_floats * sizeof(float) / (1 << 20),
                                                     " MiB) on the GPU: ", s.message()));
  }
  MOE_CUDA_RETURN_IF_ERROR(cudaMemset(d.cache.data(), 0, cache_floats * sizeof(float)));
  MOE_RETURN_IF_ERROR(
      d.expert_counts.Allocate(static_cast<size_t>(std::max<int64_t>(d.experts, 1))));
  MOE_CUDA_RETURN_IF_ERROR(cudaMemset(d.expert_counts.data(), 0, d.expert_counts.size() * 8));
  MOE_RETURN_IF_ERROR(d.offsets.Allocate(static_cast<size_t>(d.experts + 1)));
  MOE_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
  return std::unique_ptr<CudaModel>(new CudaModel(std::move(m)));
}

absl::Status CudaModel::Forward(const std::vector<int32_t>& tokens, const ForwardBatch& batch,
                                const std::vector<int64_t>& logit_rows) {
  return impl_->Forward(tokens, batch, logit_rows);
}

absl::StatusOr<Tensor> CudaModel::Logits() {
  Impl& d = *impl_;
  Tensor out({d.last_logit_rows, d.c.vocab_size});
  if (d.last_logit_rows > 0) {
    MOE_RETURN_IF_ERROR(d.logits.Download(out.data(), static_cast<size_t>(out.numel()), d.stream));
  }
  MOE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(d.stream));
  return out;
}

absl::StatusOr<std::vector<int32_t>> CudaModel::Sample(const std::vector<SampleRequest>& requests) {
  Impl& d = *impl_;
  if (static_cast<int64_t>(requests.size()) != d.last_logit_rows) {
    return absl::InvalidArgumentError(absl::StrCat(requests.size(), " sampling requests for ",
                                                   d.last_logit_rows, " rows of logits"));
  }
  std::vector<int32_t> tokens(requests.size());
  if (!tokens.empty()) {
    MOE_RETURN_IF_ERROR(d.sample_requests.Upload(requests, d.stream));
    cuda::Sample(d.logits.data(), d.last_logit_rows, d.c.vocab_size, d.sample_requests.data(),
                 d.sampled.data(), d.stream);
    MOE_RETURN_IF_ERROR(d.sampled.Download(tokens.data(), tokens.size(), d.stream));
  }
  MOE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(d.stream));
  MOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return tokens;
}

std::vector<int64_t> CudaModel::ExpertTokenCounts() const {
  const Impl& d = *impl_;
  std::vector<int64_t> counts(static_cast<size_t>(d.experts), 0);
  if (d.experts > 0 && d.expert_counts.Download(counts.data(), counts.size(), d.stream).ok()) {
    cudaStreamSynchronize(d.stream);
  }
  return counts;
}

const WeightBytes& CudaModel::weight_bytes() const { return impl_->bytes; }
int64_t CudaModel::graph_replays() const { return impl_->replays; }
int64_t CudaModel::graphs_captured() const { return impl_->captured; }

}  // namespace moe

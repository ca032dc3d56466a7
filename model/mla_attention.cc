#include "model/mla_attention.h"

#include <cstring>

#include "checkpoint/weight_names.h"
#include "common/status_macros.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/ops.h"

namespace moe {

absl::StatusOr<MlaAttention> MlaAttention::Load(const ModelConfig& c, Checkpoint& ck, int64_t layer,
                                                const DecoderLayerWeights& layer_w,
                                                const ParallelContext& ctx, float softmax_scale,
                                                WeightBytes* bytes) {
  MlaAttention a;
  const MlaWeights& w = *layer_w.mla;
  const Range heads = ctx.shard().heads;
  a.layer_ = layer;
  a.heads_ = heads.size();
  a.nope_ = c.qk_nope_head_dim;
  a.rope_ = c.qk_rope_head_dim;
  a.v_ = c.v_head_dim;
  a.kv_lora_ = c.kv_lora_rank;
  a.hidden_ = c.hidden_size;
  a.scale_ = softmax_scale;
  a.tp_ = &ctx.tp();
  const int64_t h = c.hidden_size, qk = c.qk_head_dim();
  const Range q_rows{heads.begin * qk, heads.end * qk};
  const int64_t kvh = c.qk_nope_head_dim + c.v_head_dim;
  uint64_t* split = &bytes->attention_head_split;
  uint64_t* replicated = &bytes->attention_replicated;
  if (c.q_lora_rank) {
    const int64_t r = *c.q_lora_rank;
    MOE_ASSIGN_OR_RETURN(
        a.q_a_proj_, Metered(ck, replicated, [&] { return Linear::LoadFull(ck, *w.q_a_proj); }));
    MOE_ASSIGN_OR_RETURN(a.q_a_layernorm_, Metered(ck, replicated, [&] {
                           return RmsNorm::Load(ck, *w.q_a_layernorm, c.rms_norm_eps);
                         }));
    MOE_ASSIGN_OR_RETURN(a.q_b_proj_, Metered(ck, split, [&] {
                           return Linear::Load(ck, *w.q_b_proj, q_rows, {0, r});
                         }));
  } else {
    MOE_ASSIGN_OR_RETURN(a.q_proj_, Metered(ck, split, [&] {
                           return Linear::Load(ck, *w.q_proj, q_rows, {0, h});
                         }));
  }
  MOE_ASSIGN_OR_RETURN(a.kv_a_proj_with_mqa_, Metered(ck, replicated, [&] {
                         return Linear::LoadFull(ck, w.kv_a_proj_with_mqa);
                       }));
  MOE_ASSIGN_OR_RETURN(a.kv_a_layernorm_, Metered(ck, replicated, [&] {
                         return RmsNorm::Load(ck, w.kv_a_layernorm, c.rms_norm_eps);
                       }));
  MOE_ASSIGN_OR_RETURN(a.kv_b_proj_, Metered(ck, split, [&] {
                         return ck.Load(w.kv_b_proj.name, w.kv_b_proj.shape,
                                        SliceSpec::Rows(heads.begin * kvh, heads.end * kvh));
                       }));
  MOE_ASSIGN_OR_RETURN(a.o_proj_, Metered(ck, split, [&] {
                         return Linear::Load(
                             ck, w.o_proj, {0, h},
                             {heads.begin * c.v_head_dim, heads.end * c.v_head_dim});
                       }));
  return a;
}

absl::Status MlaAttention::Forward(const float* x, const ForwardBatch& batch, KvCache& cache,
                                   float* out) const {
  const int64_t n = batch.num_tokens();
  const int64_t qk = nope_ + rope_, dim = kv_lora_ + rope_;
  // Queries: [n, heads_local, nope + rope].
  FloatVector q(static_cast<size_t>(n * heads_ * qk));
  if (q_proj_) {
    q_proj_->Forward(x, n, q.data());
  } else {
    FloatVector qa(static_cast<size_t>(n * q_a_proj_->out_features()));
    q_a_proj_->Forward(x, n, qa.data());
    q_a_layernorm_->Forward(qa.data(), n, qa.data());
    q_b_proj_->Forward(qa.data(), n, q.data());
  }
  // Latent KV: [n, kv_lora + rope] -> normalised c_kv, rotated k_pe, into the cache.
  FloatVector kv(static_cast<size_t>(n * dim));
  kv_a_proj_with_mqa_.Forward(x, n, kv.data());
  kv_a_layernorm_.Forward(kv.data(), n, kv.data(), dim);
  for (int64_t t = 0; t < n; ++t) {
    const float* cos = batch.rope_cos.row(t);
    const float* sin = batch.rope_sin.row(t);
    cpu::RopeInterleaved(kv.data() + t * dim + kv_lora_, rope_, cos, sin);
    for (int64_t hd = 0; hd < heads_; ++hd) {
      cpu::RopeInterleaved(q.data() + (t * heads_ + hd) * qk + nope_, rope_, cos, sin);
    }
  }
  for (const ForwardChunk& c : batch.chunks) {
    for (int64_t i = 0; i < c.num_tokens; ++i) {
      const int64_t pos = c.start_pos + i;
      const int32_t block = (*c.block_table)[pos / cache.block_size()];
      std::memcpy(cache.Row(layer_, block, pos % cache.block_size()),
                  kv.data() + (c.first_token + i) * dim, static_cast<size_t>(dim) * sizeof(float));
    }
  }
  // Attention output per token: [n, heads_local * v].
  FloatVector attn(static_cast<size_t>(n * heads_ * v_), 0.0f);
  // Chunks of a few tokens attend in the latent space (each token over the positions up to its
  // own; all of the chunk's rows are in the cache already); longer ones expand K and V once.
  std::vector<LatentQuery> decode;
  for (const ForwardChunk& c : batch.chunks) {
    if (c.num_tokens <= kFewTokenChunk) {
      for (int64_t i = 0; i < c.num_tokens; ++i) {
        decode.push_back({c.first_token + i, c.start_pos + i + 1, c.block_table});
      }
    } else {
      Prefill(c, q.data(), cache, attn.data());
    }
  }
  if (!decode.empty()) Decode(decode, q.data(), cache, attn.data());
  o_proj_.Forward(attn.data(), n, out);
  if (tp_->size() > 1)
    MOE_RETURN_IF_ERROR(tp_->AllReduceSum(out, static_cast<size_t>(n * hidden_)));
  return absl::OkStatus();
}

void MlaAttention::Prefill(const ForwardChunk& c, const float* q, const KvCache& cache,
                           float* attn) const {
  const int64_t qk = nope_ + rope_, dim = kv_lora_ + rope_, ctx = c.context();
  const int64_t kvh = nope_ + v_, bs = cache.block_size();
  // Gather the chunk's latent rows [ctx, dim] and expand: [ctx, heads * (nope + v)].
  FloatVector latent(static_cast<size_t>(ctx * dim));
  const float* base = cache.Layer(layer_);
  for (int64_t t = 0; t < ctx; ++t) {
    const float* row = base + (static_cast<int64_t>((*c.block_table)[t / bs]) * bs + t % bs) * dim;
    std::memcpy(latent.data() + t * dim, row, static_cast<size_t>(dim) * sizeof(float));
  }
  FloatVector kv(static_cast<size_t>(ctx * heads_ * kvh));
  cpu::MatMulNT(ctx, heads_ * kvh, kv_lora_, latent.data(), dim, kv_b_proj_.data(),
                kv_lora_, kv.data(), heads_ * kvh);
  FloatVector k(static_cast<size_t>(ctx * heads_ * qk)), v(static_cast<size_t>(ctx * heads_ * v_));
  for (int64_t t = 0; t < ctx; ++t) {
    for (int64_t hd = 0; hd < heads_; ++hd) {
      const float* src = kv.data() + (t * heads_ + hd) * kvh;
      float* kd = k.data() + (t * heads_ + hd) * qk;
      std::memcpy(kd, src, static_cast<size_t>(nope_) * sizeof(float));
      std::memcpy(kd + nope_, latent.data() + t * dim + kv_lora_,
                  static_cast<size_t>(rope_) * sizeof(float));
      std::memcpy(v.data() + (t * heads_ + hd) * v_, src + nope_,
                  static_cast<size_t>(v_) * sizeof(float));
    }
  }
  cpu::CausalAttention(q + c.first_token * heads_ * qk, k.data(), v.data(), c.num_tokens, ctx,
                       heads_, qk, v_, c.start_pos, scale_, attn + c.first_token * heads_ * v_);
}

void MlaAttention::Decode(const std::vector<LatentQuery>& queries, const float* q,
                          const KvCache& cache, float* attn) const {
  const int64_t qk = nope_ + rope_, dim = kv_lora_ + rope_, kvh = nope_ + v_;
  const int64_t b = static_cast<int64_t>(queries.size());
  const float* w = kv_b_proj_.data();
  // Absorb W_UK into the queries: q_cat[token, head] = [W_UK_h^T q_nope | q_pe]. One parallel
  // region over heads; the per-head products inside it run single-threaded.
  FloatVector q_cat(static_cast<size_t>(b * heads_ * dim));
  FloatVector o_lat(static_cast<size_t>(b * heads_ * kv_lora_));
#pragma omp parallel
  {
    FloatVector q_nope(static_cast<size_t>(b * nope_));
#pragma omp for schedule(static)
    for (int64_t hd = 0; hd < heads_; ++hd) {
      for (int64_t i = 0; i < b; ++i) {
        const float* qi = q + (queries[i].row * heads_ + hd) * qk;
        std::memcpy(q_nope.data() + i * nope_, qi, static_cast<size_t>(nope_) * sizeof(float));
        std::memcpy(q_cat.data() + (i * heads_ + hd) * dim + kv_lora_, qi + nope_,
                    static_cast<size_t>(rope_) * sizeof(float));
      }
      // [b, nope] x W_UK_h [nope, kv_lora] -> rows of q_cat (stride heads * dim).
      cpu::MatMulNN(b, kv_lora_, nope_, q_nope.data(), nope_, w + hd * kvh * kv_lora_, kv_lora_,
                    q_cat.data() + hd * dim, heads_ * dim);
    }
  }
  // Attention over the latent cache: for one token the kernel parallelises over heads; for
  // several, tokens run in parallel (each kernel call then single-threaded). Not an `if`-clause
  // region: even inactive, it would make the kernel's own region nested and serial.
  auto attend = [&](int64_t i) {
    cpu::MlaDecodeAttention(q_cat.data() + i * heads_ * dim, heads_, kv_lora_, rope_,
                            cache.Layer(layer_), queries[i].block_table->data(), cache.block_size(),
                            queries[i].context, scale_, o_lat.data() + i * heads_ * kv_lora_);
  };
  if (b == 1) {
    attend(0);
  } else {
#pragma omp parallel for schedule(dynamic)
    for (int64_t i = 0; i < b; ++i) attend(i);
  }
  // out_h = W_UV_h o_lat_h: [b, kv_lora] x W_UV_h^T -> [b, v], written into attn rows.
#pragma omp parallel
  {
    FloatVector o_h(static_cast<size_t>(b * v_));
#pragma omp for schedule(static)
    for (int64_t hd = 0; hd < heads_; ++hd) {
      cpu::MatMulNT(b, v_, kv_lora_, o_lat.data() + hd * kv_lora_, heads_ * kv_lora_,
                    w + (hd * kvh + nope_) * kv_lora_, kv_lora_, o_h.data(), v_);
      for (int64_t i = 0; i < b; ++i) {
        std::memcpy(attn + (queries[i].row * heads_ + hd) * v_, o_h.data() + i * v_,
                    static_cast<size_t>(v_) * sizeof(float));
      }
    }
  }
}

}  // namespace moe

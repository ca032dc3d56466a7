#include "model/gqa_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/ops.h"

namespace moe {

absl::StatusOr<GqaAttention> GqaAttention::Load(const ModelConfig& c, Checkpoint& ck, int64_t layer,
                                                const DecoderLayerWeights& layer_w,
                                                const ParallelContext& ctx, float softmax_scale,
                                                WeightBytes* bytes) {
  const GqaWeights& w = *layer_w.gqa;
  GqaAttention a;
  const Range heads = ctx.shard().heads, kv = ctx.shard().kv_heads;
  const int64_t d = c.head_dim, h = c.hidden_size, tp = ctx.plan().tp_size();
  a.layer_ = layer;
  a.heads_ = heads.size();
  a.kv_heads_ = kv.size();
  a.head_dim_ = d;
  a.hidden_ = h;
  a.full_q_ = c.num_attention_heads * d;
  a.full_kv_ = c.num_key_value_heads * d;
  a.kv_replication_ = tp * kv.size() / c.num_key_value_heads;
  a.rope_ = c.UsesRope(layer);
  a.window_ = c.IsSliding(layer) ? c.sliding_window : 0;
  a.local_rope_ = c.IsSliding(layer) && c.rope_local_theta > 0;
  a.interleaved_ = c.rope_interleaved;
  a.temperature_ = c.attn_temperature_tuning && !a.rope_;
  a.floor_scale_ = c.floor_scale;
  a.attn_scale_ = static_cast<float>(c.attn_scale);
  a.chunk_ = c.IsChunked(layer) ? c.attention_chunk_size : 0;
  a.scale_ = softmax_scale;
  a.eps_ = static_cast<float>(c.rms_norm_eps);
  a.qk_norm_ = c.qk_norm;
  a.tp_ = &ctx.tp();
  uint64_t* split = &bytes->attention_head_split;
  MOE_ASSIGN_OR_RETURN(
      a.q_proj_, Metered(ck, split, [&] {
        return Linear::Load(ck, w.q_proj, {heads.begin * d, heads.end * d}, {0, h});
      }));
  MOE_ASSIGN_OR_RETURN(a.k_proj_, Metered(ck, split, [&] {
                         return Linear::Load(ck, w.k_proj, {kv.begin * d, kv.end * d}, {0, h});
                       }));
  MOE_ASSIGN_OR_RETURN(a.v_proj_, Metered(ck, split, [&] {
                         return Linear::Load(ck, w.v_proj, {kv.begin * d, kv.end * d}, {0, h});
                       }));
  MOE_ASSIGN_OR_RETURN(
      a.o_proj_, Metered(ck, split, [&] {
        return Linear::Load(ck, w.o_proj, {0, h}, {heads.begin * d, heads.end * d});
      }));
  if (w.q_bias) {
    MOE_RETURN_IF_ERROR(Metered(ck, split, [&] {
      return a.q_proj_.LoadBias(ck, *w.q_bias, {heads.begin * d, heads.end * d});
    }));
    MOE_RETURN_IF_ERROR(Metered(ck, split, [&] {
      return a.k_proj_.LoadBias(ck, *w.k_bias, {kv.begin * d, kv.end * d});
    }));
    MOE_RETURN_IF_ERROR(Metered(ck, split, [&] {
      return a.v_proj_.LoadBias(ck, *w.v_bias, {kv.begin * d, kv.end * d});
    }));
    if (ctx.tp().rank() == 0) {  // o_proj is row-parallel: the bias once per TP group
      MOE_RETURN_IF_ERROR(Metered(ck, split, [&] {
        return a.o_proj_.LoadBias(ck, *w.o_bias, {0, h});
      }));
    }
  }
  uint64_t* replicated = &bytes->attention_replicated;
  if (c.qk_norm == QkNorm::kPerHead) {
    MOE_ASSIGN_OR_RETURN(a.q_norm_, Metered(ck, replicated, [&] {
                           return RmsNorm::Load(ck, *w.q_norm, c.rms_norm_eps, c.norm_unit_offset);
                         }));
    MOE_ASSIGN_OR_RETURN(a.k_norm_, Metered(ck, replicated, [&] {
                           return RmsNorm::Load(ck, *w.k_norm, c.rms_norm_eps, c.norm_unit_offset);
                         }));
  } else if (c.qk_norm == QkNorm::kWhole) {
    auto slice = [&](const WeightSpec& spec, Range r) -> absl::StatusOr<Tensor> {
      MOE_ASSIGN_OR_RETURN(Tensor full, ck.Load(spec.name, spec.shape));
      Tensor local({r.size() * d});
      std::memcpy(local.data(), full.data() + r.begin * d,
                  static_cast<size_t>(r.size() * d) * sizeof(float));
      return local;
    };
    MOE_ASSIGN_OR_RETURN(a.q_norm_whole_,
                         Metered(ck, replicated, [&] { return slice(*w.q_norm, heads); }));
    MOE_ASSIGN_OR_RETURN(a.k_norm_whole_,
                         Metered(ck, replicated, [&] { return slice(*w.k_norm, kv); }));
  }
  return a;
}

absl::Status GqaAttention::WholeNorm(float* x, int64_t n, int64_t width, const Tensor& weight,
                                     int64_t replication) const {
  const int64_t local = weight.numel();
  std::vector<float> sumsq(static_cast<size_t>(n), 0.0f);
  for (int64_t t = 0; t < n; ++t) {
    const float* r = x + t * local;
    float s = 0.0f;
    for (int64_t i = 0; i < local; ++i) s += r[i] * r[i];
    sumsq[t] = s;
  }
  if (tp_->size() > 1) {
    MOE_RETURN_IF_ERROR(tp_->AllReduceSum(sumsq.data(), sumsq.size()));
    for (float& s : sumsq) s /= static_cast<float>(replication);
  }
  for (int64_t t = 0; t < n; ++t) {
    float* r = x + t * local;
    const float inv = 1.0f / std::sqrt(sumsq[t] / static_cast<float>(width) + eps_);
    for (int64_t i = 0; i < local; ++i) r[i] = r[i] * inv * weight.data()[i];
  }
  return absl::OkStatus();
}

absl::Status GqaAttention::Forward(const float* x, const ForwardBatch& batch, KvCache& cache,
                                   float* out) const {
  const int64_t n = batch.num_tokens(), d = head_dim_;
  const int64_t qw = heads_ * d, kvw = kv_heads_ * d, row = 2 * kvw;
  FloatVector q(static_cast<size_t>(n * qw)), kv(static_cast<size_t>(n * row));
  q_proj_.Forward(x, n, q.data());
  k_proj_.Forward(x, n, kv.data(), row);
  v_proj_.Forward(x, n, kv.data() + kvw, row);
  if (qk_norm_ == QkNorm::kPerHead) {
    q_norm_->Forward(q.data(), n * heads_, q.data());
    for (int64_t t = 0; t < n; ++t)
      k_norm_->Forward(kv.data() + t * row, kv_heads_, kv.data() + t * row);
  } else if (qk_norm_ == QkNorm::kWhole) {
    MOE_RETURN_IF_ERROR(WholeNorm(q.data(), n, full_q_, q_norm_whole_, 1));
    FloatVector k(static_cast<size_t>(n * kvw));
    for (int64_t t = 0; t < n; ++t) {
      std::memcpy(k.data() + t * kvw, kv.data() + t * row,
                  static_cast<size_t>(kvw) * sizeof(float));
    }
    MOE_RETURN_IF_ERROR(WholeNorm(k.data(), n, full_kv_, k_norm_whole_, kv_replication_));
    for (int64_t t = 0; t < n; ++t) {
      std::memcpy(kv.data() + t * row, k.data() + t * kvw,
                  static_cast<size_t>(kvw) * sizeof(float));
    }
  }
  if (rope_) {
    const Tensor& cos_all = local_rope_ ? batch.local_rope_cos : batch.rope_cos;
    const Tensor& sin_all = local_rope_ ? batch.local_rope_sin : batch.rope_sin;
    for (int64_t t = 0; t < n; ++t) {
      const float* cos = cos_all.row(t);
      const float* sin = sin_all.row(t);
      const auto rotate = interleaved_ ? cpu::RopeInterleaved : cpu::RopeHalves;
      for (int64_t hd = 0; hd < heads_; ++hd) rotate(q.data() + t * qw + hd * d, d, cos, sin);
      for (int64_t hd = 0; hd < kv_heads_; ++hd) rotate(kv.data() + t * row + hd * d, d, cos, sin);
    }
    if (qk_norm_ == QkNorm::kL2) {  // Llama 4: weightless RMSNorm of each rotated head
      cpu::RmsNorm(q.data(), n * heads_, d, d, nullptr, eps_, q.data());
      for (int64_t t = 0; t < n; ++t) {
        cpu::RmsNorm(kv.data() + t * row, kv_heads_, d, d, nullptr, eps_, kv.data() + t * row);
      }
    }
  } else if (temperature_) {
    for (int64_t t = 0; t < n; ++t) {
      const float pos = static_cast<float>(batch.positions[t]);
      const float s =
          std::log1p(std::floor((pos + 1.0f) / static_cast<float>(floor_scale_))) * attn_scale_ +
          1.0f;
      cpu::Scale(q.data() + t * qw, s, qw);
    }
  }
  const int group = cache.group(layer_);
  for (const ForwardChunk& c : batch.chunks) {
    const std::vector<int32_t>& table = c.table(group);
    for (int64_t i = 0; i < c.num_tokens; ++i) {
      const int64_t pos = c.start_pos + i;
      const int32_t block = table[static_cast<size_t>(pos / cache.block_size())];
      std::memcpy(cache.Row(layer_, block, pos % cache.block_size()),
                  kv.data() + (c.first_token + i) * row, static_cast<size_t>(row) * sizeof(float));
    }
  }
  // Attention output per token: [n, heads_local * head_dim]. Chunks of a few tokens (decode,
  // draft verification) read the paged cache per token; longer ones gather K and V once.
  FloatVector attn(static_cast<size_t>(n * qw), 0.0f);
  const float* layer_cache = cache.Layer(layer_);
  const int64_t bs = cache.block_size();
  for (const ForwardChunk& c : batch.chunks) {
    const std::vector<int32_t>& table = c.table(group);
    if (c.num_tokens <= kFewTokenChunk) {
      for (int64_t i = 0; i < c.num_tokens; ++i) {
        const int64_t r = c.first_token + i;
        cpu::GqaDecodeAttention(q.data() + r * qw, heads_, kv_heads_, d, layer_cache, table.data(),
                                bs, c.start_pos + i + 1, scale_, attn.data() + r * qw, window_,
                                chunk_);
      }
      continue;
    }
    // K and V of the positions the chunk's queries see (the blocks before them may be freed);
    // the rows before stay zero, masked out.
    const int64_t ctx = c.context();
    FloatVector k(static_cast<size_t>(ctx * kvw)), v(static_cast<size_t>(ctx * kvw));
    const int64_t first = FirstVisibleKey(c.start_pos, window_, chunk_);
    std::fill(k.begin(), k.begin() + first * kvw, 0.0f);
    std::fill(v.begin(), v.begin() + first * kvw, 0.0f);
    for (int64_t t = first; t < ctx; ++t) {
      const float* src =
          layer_cache +
          (static_cast<int64_t>(table[static_cast<size_t>(t / bs)]) * bs + t % bs) * row;
      std::memcpy(k.data() + t * kvw, src, static_cast<size_t>(kvw) * sizeof(float));
      std::memcpy(v.data() + t * kvw, src + kvw, static_cast<size_t>(kvw) * sizeof(float));
    }
    cpu::GroupedCausalAttention(q.data() + c.first_token * qw, k.data(), v.data(), c.num_tokens,
                                ctx, heads_, kv_heads_, d, d, c.start_pos, scale_,
                                attn.data() + c.first_token * qw, window_, chunk_);
  }
  o_proj_.Forward(attn.data(), n, out);
  if (tp_->size() > 1) {
    MOE_RETURN_IF_ERROR(tp_->AllReduceSum(out, static_cast<size_t>(n * hidden_)));
  }
  return absl::OkStatus();
}

}  // namespace moe

#include "model/gqa_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/kv_layout.h"
#include "common/status_macros.h"

namespace moe {

absl::StatusOr<GqaAttention> GqaAttention::Load(Ops& ops, const ModelConfig& c, Checkpoint& ck,
                                                int64_t layer, const DecoderLayerWeights& layer_w,
                                                const ParallelContext& ctx, float softmax_scale,
                                                WeightBytes* bytes) {
  const GqaWeights& w = *layer_w.gqa;
  GqaAttention a;
  a.ops_ = &ops;
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
        return Linear::Load(ops, ck, w.q_proj, {heads.begin * d, heads.end * d}, {0, h});
      }));
  MOE_ASSIGN_OR_RETURN(a.k_proj_, Metered(ck, split, [&] {
                         return Linear::Load(ops, ck, w.k_proj, {kv.begin * d, kv.end * d}, {0, h});
                       }));
  MOE_ASSIGN_OR_RETURN(a.v_proj_, Metered(ck, split, [&] {
                         return Linear::Load(ops, ck, w.v_proj, {kv.begin * d, kv.end * d}, {0, h});
                       }));
  MOE_ASSIGN_OR_RETURN(
      a.o_proj_, Metered(ck, split, [&] {
        return Linear::Load(ops, ck, w.o_proj, {0, h}, {heads.begin * d, heads.end * d});
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
                           return RmsNorm::Load(ops, ck, *w.q_norm, c.rms_norm_eps,
                                                c.norm_unit_offset);
                         }));
    MOE_ASSIGN_OR_RETURN(a.k_norm_, Metered(ck, replicated, [&] {
                           return RmsNorm::Load(ops, ck, *w.k_norm, c.rms_norm_eps,
                                                c.norm_unit_offset);
                         }));
  } else if (c.qk_norm == QkNorm::kWhole) {
    auto slice = [&](const WeightSpec& spec, Range r) -> absl::StatusOr<Tensor> {
      MOE_ASSIGN_OR_RETURN(Tensor full, ck.Load(spec.name, spec.shape));
      Tensor local({r.size() * d});
      std::memcpy(local.data(), full.data() + r.begin * d,
                  static_cast<size_t>(r.size() * d) * sizeof(float));
      return local;
    };
    MOE_ASSIGN_OR_RETURN(Tensor q_norm,
                         Metered(ck, replicated, [&] { return slice(*w.q_norm, heads); }));
    MOE_ASSIGN_OR_RETURN(Tensor k_norm,
                         Metered(ck, replicated, [&] { return slice(*w.k_norm, kv); }));
    a.q_norm_ = RmsNorm::FromTensor(ops, std::move(q_norm), c.rms_norm_eps);
    a.k_norm_ = RmsNorm::FromTensor(ops, std::move(k_norm), c.rms_norm_eps);
  }
  return a;
}

absl::Status GqaAttention::WholeNorm(float* x, int64_t n, int64_t ld, int64_t width,
                                     const RmsNorm& norm, int64_t replication) const {
  DeviceArray<float> sumsq = ops_->Allocate(n);
  ops_->RowSumSquares(x, n, norm.dim(), ld, sumsq.data());
  if (tp_->size() > 1) {
    MOE_RETURN_IF_ERROR(tp_->AllReduceSum(sumsq.data(), static_cast<size_t>(n)));
  } else {
    replication = 1;
  }
  ops_->NormalizeRows(x, n, norm.dim(), ld, sumsq.data(), static_cast<float>(replication),
                      static_cast<float>(width), norm.eps(), norm.weight());
  return absl::OkStatus();
}

absl::Status GqaAttention::Forward(const float* x, const StepInputs& step, KvCache& cache,
                                   float* out) const {
  Ops& ops = *ops_;
  const ForwardBatch& batch = *step.batch;
  const int64_t n = step.num_tokens(), d = head_dim_;
  const int64_t qw = heads_ * d, kvw = kv_heads_ * d, row = 2 * kvw;
  DeviceArray<float> q = ops.Allocate(n * qw), kv = ops.Allocate(n * row);
  q_proj_.Forward(x, n, q.data());
  k_proj_.Forward(x, n, kv.data(), row);
  v_proj_.Forward(x, n, kv.data() + kvw, row);
  if (qk_norm_ == QkNorm::kPerHead) {
    q_norm_->Forward(q.data(), n * heads_, q.data());
    for (int64_t t = 0; t < n; ++t)
      k_norm_->Forward(kv.data() + t * row, kv_heads_, kv.data() + t * row);
  } else if (qk_norm_ == QkNorm::kWhole) {
    MOE_RETURN_IF_ERROR(WholeNorm(q.data(), n, qw, full_q_, *q_norm_, 1));
    MOE_RETURN_IF_ERROR(WholeNorm(kv.data(), n, row, full_kv_, *k_norm_, kv_replication_));
  }
  if (rope_) {
    const DeviceArray<float>& cos = local_rope_ ? step.local_rope_cos : step.rope_cos;
    const DeviceArray<float>& sin = local_rope_ ? step.local_rope_sin : step.rope_sin;
    ops.Rope(q.data(), n, heads_, qw, d, d, cos.data(), sin.data(), interleaved_);
    ops.Rope(kv.data(), n, kv_heads_, row, d, d, cos.data(), sin.data(), interleaved_);
    if (qk_norm_ == QkNorm::kL2) {  // Llama 4: weightless RMSNorm of each rotated head
      ops.RmsNorm(q.data(), n * heads_, d, d, nullptr, eps_, q.data());
      for (int64_t t = 0; t < n; ++t) {
        ops.RmsNorm(kv.data() + t * row, kv_heads_, d, d, nullptr, eps_, kv.data() + t * row);
      }
    }
  } else if (temperature_) {
    for (int64_t t = 0; t < n; ++t) {
      const float pos = static_cast<float>(batch.positions[t]);
      const float s =
          std::log1p(std::floor((pos + 1.0f) / static_cast<float>(floor_scale_))) * attn_scale_ +
          1.0f;
      ops.Scale(q.data() + t * qw, s, qw);
    }
  }
  const StepInputs::Group& g = step.groups[static_cast<size_t>(cache.group(layer_))];
  float* layer_cache = cache.Layer(layer_);
  ops.ScatterRows(kv.data(), g.slots.data(), n, row, layer_cache);
  // Attention output per token: [n, heads_local * head_dim]. Chunks of a few tokens (decode,
  // draft verification) read the paged cache per token; longer ones gather K and V once.
  DeviceArray<float> attn = ops.AllocateZeroed(n * qw);
  if (step.decode > 0) {
    const int64_t b = step.decode;
    DeviceArray<float> q_dec = ops.Allocate(b * qw), o_dec = ops.Allocate(b * qw);
    ops.GatherRows(q.data(), step.decode_rows.data(), b, qw, q_dec.data());
    const Ops::GqaDecodeShape shape{heads_,           kv_heads_, d,       cache.block_size(),
                                    step.table_width, scale_,    window_, chunk_};
    ops.GqaDecode(shape, q_dec.data(), qw, b, layer_cache, g.decode_tables.data(),
                  step.decode_context.data(), o_dec.data());
    ops.ScatterRows(o_dec.data(), step.decode_rows.data(), b, qw, attn.data());
  }
  for (const StepInputs::Prefill& c : step.prefill) {
    // K and V of the positions the chunk's queries see (the blocks before them may be freed);
    // the rows before stay zero, masked out.
    const int64_t ctx = c.context;
    const int64_t first = FirstVisibleKey(c.start_pos, window_, chunk_);
    DeviceArray<float> rows = ops.Allocate(ctx * row);
    ops.GatherRows(layer_cache, g.prefill_slots.data() + c.slot_offset, ctx, row, rows.data());
    ops.Fill(rows.data(), first * row, 0.0f);
    DeviceArray<float> k = ops.Allocate(ctx * kvw), v = ops.Allocate(ctx * kvw);
    ops.CopyRows(rows.data(), row, ctx, kvw, k.data(), kvw);
    ops.CopyRows(rows.data() + kvw, row, ctx, kvw, v.data(), kvw);
    ops.CausalAttention(q.data() + c.first_token * qw, k.data(), v.data(), c.num_tokens, ctx,
                        heads_, kv_heads_, d, d, c.start_pos, scale_,
                        attn.data() + c.first_token * qw, window_, chunk_);
  }
  o_proj_.Forward(attn.data(), n, out);
  if (tp_->size() > 1) {
    MOE_RETURN_IF_ERROR(tp_->AllReduceSum(out, static_cast<size_t>(n * hidden_)));
  }
  return absl::OkStatus();
}

}  // namespace moe

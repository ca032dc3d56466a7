#include "model/mla_attention.h"

#include <utility>

#include "checkpoint/weight_names.h"
#include "common/status_macros.h"

namespace moe {

absl::StatusOr<MlaAttention> MlaAttention::Load(Ops& ops, const ModelConfig& c, Checkpoint& ck,
                                                int64_t layer, const DecoderLayerWeights& layer_w,
                                                const ParallelContext& ctx, float softmax_scale,
                                                WeightBytes* bytes) {
  MlaAttention a;
  a.ops_ = &ops;
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
    MOE_ASSIGN_OR_RETURN(a.q_a_proj_, Metered(ck, replicated, [&] {
                           return Linear::LoadFull(ops, ck, *w.q_a_proj);
                         }));
    MOE_ASSIGN_OR_RETURN(a.q_a_layernorm_, Metered(ck, replicated, [&] {
                           return RmsNorm::Load(ops, ck, *w.q_a_layernorm, c.rms_norm_eps);
                         }));
    MOE_ASSIGN_OR_RETURN(a.q_b_proj_, Metered(ck, split, [&] {
                           return Linear::Load(ops, ck, *w.q_b_proj, q_rows, {0, r});
                         }));
  } else {
    MOE_ASSIGN_OR_RETURN(a.q_proj_, Metered(ck, split, [&] {
                           return Linear::Load(ops, ck, *w.q_proj, q_rows, {0, h});
                         }));
  }
  MOE_ASSIGN_OR_RETURN(a.kv_a_proj_with_mqa_, Metered(ck, replicated, [&] {
                         return Linear::LoadFull(ops, ck, w.kv_a_proj_with_mqa);
                       }));
  MOE_ASSIGN_OR_RETURN(a.kv_a_layernorm_, Metered(ck, replicated, [&] {
                         return RmsNorm::Load(ops, ck, w.kv_a_layernorm, c.rms_norm_eps);
                       }));
  // kv_b_proj as stored (not converted by --weights-dtype fp8), and multiplied with x in float32
  // under any --activations: decode and prefill then see the same keys and values.
  MOE_ASSIGN_OR_RETURN(WeightMatrix kv_b_proj, Metered(ck, split, [&] {
                         return ck.LoadMatrix(w.kv_b_proj.name, w.kv_b_proj.shape,
                                              SliceSpec::Rows(heads.begin * kvh, heads.end * kvh));
                       }));
  kv_b_proj.x_rounding = Activations::kF32;
  MOE_ASSIGN_OR_RETURN(PlacedMatrix placed, ops.PlaceKvBProj(std::move(kv_b_proj)));
  a.kv_b_proj_ = Linear::FromPlaced(ops, std::move(placed));
  MOE_ASSIGN_OR_RETURN(a.o_proj_, Metered(ck, split, [&] {
                         return Linear::Load(
                             ops, ck, w.o_proj, {0, h},
                             {heads.begin * c.v_head_dim, heads.end * c.v_head_dim});
                       }));
  return a;
}

absl::Status MlaAttention::Forward(const float* x, const StepInputs& step, KvCache& cache,
                                   float* out) const {
  Ops& ops = *ops_;
  const int64_t n = step.num_tokens();
  const int64_t qk = nope_ + rope_, dim = kv_lora_ + rope_;
  // Queries: [n, heads_local, nope + rope].
  DeviceArray<float> q = ops.Allocate(n * heads_ * qk);
  if (q_proj_) {
    q_proj_->Forward(x, n, q.data());
  } else {
    DeviceArray<float> qa = ops.Allocate(n * q_a_proj_->out_features());
    q_a_proj_->Forward(x, n, qa.data());
    q_a_layernorm_->Forward(qa.data(), n, qa.data());
    q_b_proj_->Forward(qa.data(), n, q.data());
  }
  // Latent KV: [n, kv_lora + rope] -> normalised c_kv, rotated k_pe, into the cache.
  DeviceArray<float> kv = ops.Allocate(n * dim);
  kv_a_proj_with_mqa_.Forward(x, n, kv.data());
  kv_a_layernorm_.Forward(kv.data(), n, kv.data(), dim);
  const float* cos = step.rope_cos.data();
  const float* sin = step.rope_sin.data();
  ops.Rope(kv.data() + kv_lora_, n, 1, dim, 0, rope_, cos, sin, /*interleaved=*/true);
  ops.Rope(q.data() + nope_, n, heads_, heads_ * qk, qk, rope_, cos, sin, /*interleaved=*/true);
  const StepInputs::Group& g = step.groups[static_cast<size_t>(cache.group(layer_))];
  ops.ScatterRows(kv.data(), g.slots.data(), n, dim, cache.Layer(layer_));
  // Attention output per token: [n, heads_local * v]. Chunks of a few tokens attend in the latent
  // space (each token over the positions up to its own; all of the chunk's rows are in the cache
  // already); longer ones expand K and V once.
  DeviceArray<float> attn = ops.AllocateZeroed(n * heads_ * v_);
  for (const StepInputs::Prefill& p : step.prefill) Prefill(step, p, q.data(), cache, attn.data());
  if (step.decode > 0) {
    const int64_t b = step.decode;
    DeviceArray<float> q_dec = ops.Allocate(b * heads_ * qk), o_dec = ops.Allocate(b * heads_ * v_);
    ops.GatherRows(q.data(), step.decode_rows.data(), b, heads_ * qk, q_dec.data());
    const Ops::MlaDecodeShape shape{
        heads_, nope_, rope_, v_, kv_lora_, cache.block_size(), step.table_width, scale_};
    ops.MlaDecode(shape, q_dec.data(), b, kv_b_proj_.weight(), cache.Layer(layer_),
                  g.decode_tables.data(), step.decode_context.data(), o_dec.data());
    ops.ScatterRows(o_dec.data(), step.decode_rows.data(), b, heads_ * v_, attn.data());
  }
  o_proj_.Forward(attn.data(), n, out);
  if (tp_->size() > 1)
    MOE_RETURN_IF_ERROR(tp_->AllReduceSum(out, static_cast<size_t>(n * hidden_)));
  return absl::OkStatus();
}

void MlaAttention::Prefill(const StepInputs& step, const StepInputs::Prefill& c, const float* q,
                           const KvCache& cache, float* attn) const {
  Ops& ops = *ops_;
  const int64_t qk = nope_ + rope_, dim = kv_lora_ + rope_, ctx = c.context;
  const int64_t kvh = nope_ + v_;
  // Gather the chunk's latent rows [ctx, dim] and expand: [ctx, heads * (nope + v)].
  const StepInputs::Group& g = step.groups[static_cast<size_t>(cache.group(layer_))];
  DeviceArray<float> latent = ops.Allocate(ctx * dim);
  ops.GatherRows(cache.Layer(layer_), g.prefill_slots.data() + c.slot_offset, ctx, dim,
                 latent.data());
  DeviceArray<float> kv = ops.Allocate(ctx * heads_ * kvh);
  ops.Linear(kv_b_proj_.weight(), latent.data(), ctx, dim, kv.data(), heads_ * kvh);
  DeviceArray<float> k = ops.Allocate(ctx * heads_ * qk), v = ops.Allocate(ctx * heads_ * v_);
  ops.SplitMlaKv(kv.data(), latent.data(), ctx, heads_, nope_, v_, kv_lora_, rope_, k.data(),
                 v.data());
  ops.CausalAttention(q + c.first_token * heads_ * qk, k.data(), v.data(), c.num_tokens, ctx,
                      heads_, heads_, qk, v_, c.start_pos, scale_,
                      attn + c.first_token * heads_ * v_);
}

}  // namespace moe

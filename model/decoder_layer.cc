#include "model/decoder_layer.h"

#include "checkpoint/weight_names.h"
#include "common/status_macros.h"

namespace moe {

absl::StatusOr<std::unique_ptr<DecoderLayer>> DecoderLayer::Load(Ops& ops, const ModelConfig& c,
                                                                 Checkpoint& ck, int64_t layer,
                                                                 const ParallelContext& ctx,
                                                                 float softmax_scale,
                                                                 WeightBytes* bytes) {
  auto d = std::make_unique<DecoderLayer>();
  const DecoderLayerWeights w = LayerWeights(c, layer, c.IsMoeLayer(layer));
  d->ops_ = &ops;
  d->hidden_ = c.hidden_size;
  d->placement_ = c.norm_placement;
  d->tp_ = &ctx.tp();
  auto norm = [&](const std::optional<WeightSpec>& spec, RmsNorm* out) -> absl::Status {
    if (!spec) return absl::OkStatus();
    MOE_ASSIGN_OR_RETURN(*out, Metered(ck, &bytes->norms, [&] {
      return RmsNorm::Load(ops, ck, *spec, c.rms_norm_eps, c.norm_unit_offset);
    }));
    return absl::OkStatus();
  };
  MOE_RETURN_IF_ERROR(norm(w.input_layernorm, &d->input_layernorm_));
  MOE_RETURN_IF_ERROR(norm(w.post_attention_layernorm, &d->post_attention_layernorm_));
  MOE_RETURN_IF_ERROR(norm(w.pre_feedforward_layernorm, &d->pre_feedforward_layernorm_));
  MOE_RETURN_IF_ERROR(norm(w.post_feedforward_layernorm, &d->post_feedforward_layernorm_));
  if (w.mla) {
    MOE_ASSIGN_OR_RETURN(d->mla_,
                         MlaAttention::Load(ops, c, ck, layer, w, ctx, softmax_scale, bytes));
  } else {
    MOE_ASSIGN_OR_RETURN(d->gqa_,
                         GqaAttention::Load(ops, c, ck, layer, w, ctx, softmax_scale, bytes));
  }
  if (w.gate) {
    MOE_ASSIGN_OR_RETURN(d->moe_, MoeLayer::Load(ops, c, ck, w, ctx, bytes));
  } else {
    MOE_ASSIGN_OR_RETURN(d->dense_, Metered(ck, &bytes->dense_mlp, [&] {
                           return GatedMlp::Load(ops, ck, *w.mlp, ctx.shard().dense_inter,
                                                 c.activation());
                         }));
  }
  return d;
}

absl::Status DecoderLayer::Forward(float* x, const StepInputs& step, KvCache& cache,
                                   const MicroBatchContext& mb) {
  const int64_t n = step.num_tokens();
  const size_t count = static_cast<size_t>(n * hidden_);
  // Norms before a block (pre, sandwich) and after it, inside the residual (post, sandwich).
  const bool norm_in = placement_ != NormPlacement::kPost;
  const bool norm_out = placement_ != NormPlacement::kPre;
  DeviceArray<float> normed = ops_->Allocate(n * hidden_), delta = ops_->Allocate(n * hidden_);
  // Attention block: x += [post_attention_layernorm](attn([input_layernorm](x))).
  const float* in = x;
  if (norm_in) {
    input_layernorm_.Forward(x, n, normed.data());
    in = normed.data();
  }
  if (mla_) {
    MOE_RETURN_IF_ERROR(mla_->Forward(in, step, cache, delta.data()));
  } else {
    MOE_RETURN_IF_ERROR(gqa_->Forward(in, step, cache, delta.data()));
  }
  if (norm_out) post_attention_layernorm_.Forward(delta.data(), n, delta.data());
  ops_->Add(x, delta.data(), static_cast<int64_t>(count));
  // MLP block: x += [post_feedforward_layernorm](mlp([pre-MLP norm](x))), the pre-MLP norm being
  // post_attention_layernorm (pre) or pre_feedforward_layernorm (sandwich).
  in = x;
  if (norm_in) {
    const RmsNorm& pre_mlp = placement_ == NormPlacement::kSandwich ? pre_feedforward_layernorm_
                                                                    : post_attention_layernorm_;
    pre_mlp.Forward(x, n, normed.data());
    in = normed.data();
  }
  if (moe_) {
    MOE_RETURN_IF_ERROR(moe_->Forward(in, n, delta.data(), mb));
  } else {
    dense_->Forward(in, n, delta.data());
    if (tp_->size() > 1) MOE_RETURN_IF_ERROR(tp_->AllReduceSum(delta.data(), count));
  }
  if (norm_out) post_feedforward_layernorm_.Forward(delta.data(), n, delta.data());
  ops_->Add(x, delta.data(), static_cast<int64_t>(count));
  return absl::OkStatus();
}

}  // namespace moe

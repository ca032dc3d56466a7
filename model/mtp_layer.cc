#include "model/mtp_layer.h"

#include <utility>

#include "checkpoint/weight_names.h"
#include "common/status_macros.h"
#include "model/decoder_layer.h"
#include "model/step_inputs.h"

namespace moe {

MtpLayer::~MtpLayer() = default;

absl::StatusOr<std::unique_ptr<MtpLayer>> MtpLayer::Load(Ops& ops, const ModelConfig& c,
                                                         Checkpoint& ck, const ParallelContext& ctx,
                                                         float softmax_scale, WeightBytes* bytes) {
  if (c.num_nextn_predict_layers < 1) {
    return absl::FailedPreconditionError(
        "the model has no MTP layer (config.json: num_nextn_predict_layers is 0)");
  }
  const MtpWeights w = MtpLayerWeights(c, 0);
  std::unique_ptr<MtpLayer> m(new MtpLayer());
  m->ops_ = &ops;
  m->hidden_ = c.hidden_size;
  MOE_ASSIGN_OR_RETURN(m->embed_tokens_, Metered(ck, &bytes->mtp, [&] {
                         return VocabParallelEmbedding::Load(ops, ck, w.embed_tokens,
                                                             ctx.shard().vocab, &ctx.tp());
                       }));
  MOE_ASSIGN_OR_RETURN(m->enorm_, Metered(ck, &bytes->mtp, [&] {
                         return RmsNorm::Load(ops, ck, w.enorm, c.rms_norm_eps);
                       }));
  MOE_ASSIGN_OR_RETURN(m->hnorm_, Metered(ck, &bytes->mtp, [&] {
                         return RmsNorm::Load(ops, ck, w.hnorm, c.rms_norm_eps);
                       }));
  MOE_ASSIGN_OR_RETURN(
      m->eh_proj_, Metered(ck, &bytes->mtp, [&] { return Linear::LoadFull(ops, ck, w.eh_proj); }));
  MOE_ASSIGN_OR_RETURN(m->block_,
                       DecoderLayer::Load(ops, c, ck, w.layer, ctx, softmax_scale, bytes));
  MOE_ASSIGN_OR_RETURN(m->head_norm_, Metered(ck, &bytes->mtp, [&] {
                         return RmsNorm::Load(ops, ck, w.head_norm, c.rms_norm_eps);
                       }));
  MOE_ASSIGN_OR_RETURN(m->head_, Metered(ck, &bytes->mtp, [&] {
                         return ParallelLmHead::Load(ops, ck, w.head, ctx.plan().tp_size(),
                                                     &ctx.tp());
                       }));
  return m;
}

absl::StatusOr<Tensor> MtpLayer::Forward(const float* hidden,
                                         const std::vector<int32_t>& next_tokens,
                                         const ForwardBatch& batch, KvCache& cache,
                                         const std::vector<int64_t>& logit_rows) {
  Ops& ops = *ops_;
  const int64_t n = batch.num_tokens(), h = hidden_;
  const DeviceArray<int32_t> token_ids = ops.Place(next_tokens);
  const DeviceArray<int32_t> logit_ids =
      ops.Place(std::vector<int32_t>(logit_rows.begin(), logit_rows.end()));
  const StepInputs step = StepInputs::Build(ops, batch, cache);
  MOE_ASSIGN_OR_RETURN(DeviceArray<float> e, embed_tokens_.Forward(token_ids.data(), n));
  // [enorm(embedding) | hnorm(h)], normalised in place.
  DeviceArray<float> both = ops.Allocate(n * 2 * h);
  ops.CopyRows(e.data(), h, n, h, both.data(), 2 * h);
  ops.CopyRows(hidden, h, n, h, both.data() + h, 2 * h);
  enorm_.Forward(both.data(), n, both.data(), 2 * h);
  hnorm_.Forward(both.data() + h, n, both.data() + h, 2 * h);
  DeviceArray<float> x = ops.Allocate(n * h);
  eh_proj_.Forward(both.data(), n, x.data());
  MOE_RETURN_IF_ERROR(block_->Forward(x.data(), step, cache));
  const int64_t m = static_cast<int64_t>(logit_rows.size());
  DeviceArray<float> last = ops.Allocate(m * h);
  ops.GatherRows(x.data(), logit_ids.data(), m, h, last.data());
  last_hidden_ = std::move(x);
  last_hidden_rows_ = n;
  head_norm_.Forward(last.data(), m, last.data());
  MOE_ASSIGN_OR_RETURN(DeviceArray<float> logits, head_.Forward(last.data(), m));
  return ToHost(ops, logits, {m, head_.vocab()});
}

}  // namespace moe

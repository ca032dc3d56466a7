#include "model/mtp_layer.h"

#include <cstring>

#include "checkpoint/weight_names.h"
#include "common/status_macros.h"
#include "model/model.h"

namespace moe {

MtpLayer::~MtpLayer() = default;

absl::StatusOr<std::unique_ptr<MtpLayer>> MtpLayer::Load(const ModelConfig& c, Checkpoint& ck,
                                                         const ParallelContext& ctx,
                                                         float softmax_scale, WeightBytes* bytes) {
  if (c.num_nextn_predict_layers < 1) {
    return absl::FailedPreconditionError(
        "the model has no MTP layer (config.json: num_nextn_predict_layers is 0)");
  }
  const MtpWeights w = MtpLayerWeights(c, 0);
  std::unique_ptr<MtpLayer> m(new MtpLayer());
  m->hidden_ = c.hidden_size;
  MOE_ASSIGN_OR_RETURN(m->embed_tokens_, Metered(ck, &bytes->mtp, [&] {
                         return VocabParallelEmbedding::Load(ck, w.embed_tokens, ctx.shard().vocab,
                                                             &ctx.tp());
                       }));
  MOE_ASSIGN_OR_RETURN(m->enorm_, Metered(ck, &bytes->mtp, [&] {
                         return RmsNorm::Load(ck, w.enorm, c.rms_norm_eps);
                       }));
  MOE_ASSIGN_OR_RETURN(m->hnorm_, Metered(ck, &bytes->mtp, [&] {
                         return RmsNorm::Load(ck, w.hnorm, c.rms_norm_eps);
                       }));
  MOE_ASSIGN_OR_RETURN(m->eh_proj_,
                       Metered(ck, &bytes->mtp, [&] { return Linear::LoadFull(ck, w.eh_proj); }));
  MOE_ASSIGN_OR_RETURN(m->block_, DecoderLayer::Load(c, ck, w.layer, ctx, softmax_scale, bytes));
  MOE_ASSIGN_OR_RETURN(m->head_norm_, Metered(ck, &bytes->mtp, [&] {
                         return RmsNorm::Load(ck, w.head_norm, c.rms_norm_eps);
                       }));
  MOE_ASSIGN_OR_RETURN(m->head_, Metered(ck, &bytes->mtp, [&] {
                         return ParallelLmHead::Load(ck, w.head, ctx.plan().tp_size(), &ctx.tp());
                       }));
  return m;
}

absl::StatusOr<Tensor> MtpLayer::Forward(const float* hidden,
                                         const std::vector<int32_t>& next_tokens,
                                         const ForwardBatch& batch, KvCache& cache,
                                         const std::vector<int64_t>& logit_rows) {
  const int64_t n = batch.num_tokens(), h = hidden_;
  MOE_ASSIGN_OR_RETURN(Tensor e, embed_tokens_.Forward(next_tokens));
  Tensor both({n, 2 * h});  // [enorm(embedding) | hnorm(h)], normalised in place
  for (int64_t i = 0; i < n; ++i) {
    std::memcpy(both.row(i), e.row(i), static_cast<size_t>(h) * sizeof(float));
    std::memcpy(both.row(i) + h, hidden + i * h, static_cast<size_t>(h) * sizeof(float));
  }
  enorm_.Forward(both.data(), n, both.data(), 2 * h);
  hnorm_.Forward(both.data() + h, n, both.data() + h, 2 * h);
  Tensor x({n, h});
  eh_proj_.Forward(both.data(), n, x.data());
  MOE_RETURN_IF_ERROR(block_->Forward(x.data(), batch, cache));
  const int64_t m = static_cast<int64_t>(logit_rows.size());
  Tensor last = GatherRows(x, logit_rows);
  last_hidden_ = std::move(x);
  head_norm_.Forward(last.data(), m, last.data());
  return head_.Forward(last.data(), m);
}

}  // namespace moe

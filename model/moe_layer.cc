#include "model/moe_layer.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <optional>

#include "checkpoint/weight_names.h"
#include "common/status_macros.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/router.h"

namespace moe {

MoeLayer::MoeLayer(const ModelConfig& config, const ParallelContext& ctx,
                   const DecoderLayerWeights& w)
    : config_(config),
      ctx_(ctx),
      weights_(w),
      placement_(ctx.plan().experts()),
      dispatchers_{
          MoeDispatcher(&ctx.world(), &placement_, config.hidden_size, config.num_experts_per_tok),
          MoeDispatcher(&ctx.world(), &placement_, config.hidden_size, config.num_experts_per_tok)},
      expert_tokens_(static_cast<size_t>(config.n_routed_experts), 0) {}

absl::StatusOr<std::unique_ptr<MoeLayer>> MoeLayer::Load(const ModelConfig& c, Checkpoint& ck,
                                                         const DecoderLayerWeights& w,
                                                         const ParallelContext& ctx,
                                                         WeightBytes* bytes) {
  std::unique_ptr<MoeLayer> m(new MoeLayer(c, ctx, w));
  MOE_ASSIGN_OR_RETURN(
      m->gate_, Metered(ck, &bytes->router, [&] { return ck.Load(w.gate->name, w.gate->shape); }));
  if (w.e_score_correction_bias) {
    MOE_ASSIGN_OR_RETURN(m->bias_, Metered(ck, &bytes->router, [&] {
                           return ck.Load(w.e_score_correction_bias->name,
                                          w.e_score_correction_bias->shape);
                         }));
  }
  for (int64_t e : m->placement_.LocalExperts(ctx.rank())) {
    MOE_ASSIGN_OR_RETURN(GatedMlp expert,
                         Metered(ck, &bytes->routed_experts, [&] { return m->LoadExpert(ck, e); }));
    m->experts_.push_back(std::move(expert));
  }
  if (w.shared_experts) {
    MOE_ASSIGN_OR_RETURN(GatedMlp shared, Metered(ck, &bytes->shared_experts, [&] {
                           return GatedMlp::Load(ck, *w.shared_experts, ctx.shard().shared_inter,
                                                 c.activation());
                         }));
    m->shared_ = std::make_unique<GatedMlp>(std::move(shared));
  }
  return m;
}

absl::StatusOr<GatedMlp> MoeLayer::LoadExpert(Checkpoint& ck, int64_t e) const {
  const DecoderLayerWeights& w = weights_;
  return w.fused_gate_up_proj ? GatedMlp::LoadStacked(ck, *w.fused_gate_up_proj, *w.fused_down_proj,
                                                      e, config_.activation())
                              : GatedMlp::Load(ck, w.experts[e], {0, config_.moe_intermediate_size},
                                               config_.activation());
}

absl::Status MoeLayer::SetPlacement(const ExpertPlacement& placement, Checkpoint& ck) {
  // The new experts first: a failure leaves the layer as it was.
  const int rank = ctx_.rank();
  const std::vector<int64_t>& local = placement.LocalExperts(rank);
  std::vector<std::optional<GatedMlp>> loaded(local.size());
  for (size_t i = 0; i < local.size(); ++i) {
    if (placement_.LocalIndex(rank, local[i]) >= 0) continue;
    MOE_ASSIGN_OR_RETURN(loaded[i], LoadExpert(ck, local[i]));
  }
  std::vector<GatedMlp> experts;
  for (size_t i = 0; i < local.size(); ++i) {
    const int64_t held = placement_.LocalIndex(rank, local[i]);
    experts.push_back(held >= 0 ? std::move(experts_[static_cast<size_t>(held)])
                                : std::move(*loaded[i]));
  }
  experts_ = std::move(experts);
  placement_ = placement;
  return absl::OkStatus();
}

void MoeLayer::ComputeLocalExperts(const Dispatched& d) const {
  const int64_t h = config_.hidden_size, k = config_.num_experts_per_tok;
  const int64_t rows = d.rows;
  float* y = d.y;
  std::fill(y, y + rows * h, 0.0f);
  // Rows (and routing weights) per local expert.
  std::vector<std::vector<std::pair<int64_t, float>>> work(experts_.size());
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = d.local_expert[i * k + j];
      if (e >= 0) work[e].push_back({i, d.weight[i * k + j]});
    }
  }
  size_t active = 0;
  for (const auto& w : work) active += w.empty() ? 0 : 1;
  auto run = [&](size_t e, float* acc_y) {
    const auto& w = work[e];
    const int64_t n = static_cast<int64_t>(w.size());
    FloatVector in(static_cast<size_t>(n * h)), out(static_cast<size_t>(n * h));
    // The routing weight scales the expert's output, or (Llama 4) its input.
    const bool on_input = config_.router_weight_on_input;
    for (int64_t r = 0; r < n; ++r) {
      std::memcpy(in.data() + r * h, d.x + w[r].first * h, static_cast<size_t>(h) * sizeof(float));
      if (on_input) cpu::Scale(in.data() + r * h, w[r].second, h);
    }
    experts_[e].Forward(in.data(), n, out.data());
    for (int64_t r = 0; r < n; ++r) {
      float* dst = acc_y + w[r].first * h;
      const float* src = out.data() + r * h;
      const float wt = on_input ? 1.0f : w[r].second;
      for (int64_t c = 0; c < h; ++c) dst[c] += wt * src[c];
    }
  };
  const int threads = cpu::NumThreads();
  if (static_cast<int>(active) < 2 * threads) {
    // Few active experts: one after another, each product using all threads.
    for (size_t e = 0; e < experts_.size(); ++e) {
      if (!work[e].empty()) run(e, y);
    }
  } else {
    // Many active experts: experts in parallel, each product single-threaded; each thread
    // accumulates privately, then the partial outputs are summed.
    std::vector<FloatVector> partial(static_cast<size_t>(threads));
#pragma omp parallel num_threads(threads)
    {
      const int t = omp_get_thread_num();
      partial[t].assign(static_cast<size_t>(rows * h), 0.0f);
#pragma omp for schedule(dynamic)
      for (int64_t e = 0; e < static_cast<int64_t>(experts_.size()); ++e) {
        if (!work[e].empty()) run(static_cast<size_t>(e), partial[t].data());
      }
    }
    for (const FloatVector& p : partial) cpu::Add(y, p.data(), rows * h);
  }
}

absl::Status MoeLayer::Forward(const float* x, int64_t n, float* out, const MicroBatchContext& mb) {
  const int64_t h = config_.hidden_size, k = config_.num_experts_per_tok;
  const int tp = ctx_.tp().size();
  const Range slice = EvenSplit(n, tp, ctx_.tp().rank());
  const int64_t s = slice.size();
  const float* xs = x + slice.begin * h;

  FloatVector logits(static_cast<size_t>(s * config_.n_routed_experts));
  cpu::MatMulNT(s, config_.n_routed_experts, h, xs, h, gate_.data(), h, logits.data(),
                config_.n_routed_experts);
  std::vector<int32_t> ids(static_cast<size_t>(s * k));
  std::vector<float> weights(static_cast<size_t>(s * k));
  RouteTokens(config_, logits.data(), bias_.empty() ? nullptr : bias_.data(), s, ids.data(),
              weights.data());
  for (int32_t e : ids) ++expert_tokens_[e];

  MoeDispatcher& dispatcher = dispatchers_[mb.index];
  Dispatched d;
  MOE_RETURN_IF_ERROR(mb.Communicate([&]() -> absl::Status {
    MOE_ASSIGN_OR_RETURN(d, dispatcher.Dispatch(xs, s, ids.data(), weights.data()));
    return absl::OkStatus();
  }));
  ComputeLocalExperts(d);
  FloatVector routed(static_cast<size_t>(s * h));
  MOE_RETURN_IF_ERROR(mb.Communicate([&] { return dispatcher.Combine(d.handle, routed.data()); }));

  if (shared_) {
    shared_->Forward(x, n, out);
  } else {
    std::fill(out, out + n * h, 0.0f);
  }
  if (s > 0) cpu::Add(out + slice.begin * h, routed.data(), s * h);
  if (tp > 1) MOE_RETURN_IF_ERROR(ctx_.tp().AllReduceSum(out, static_cast<size_t>(n * h)));
  return absl::OkStatus();
}

}  // namespace moe

#include "model/moe_layer.h"

#include <algorithm>
#include <cstring>
#include <optional>

#include "checkpoint/weight_names.h"
#include "common/status_macros.h"

namespace moe {

MoeLayer::MoeLayer(Ops& ops, const ModelConfig& config, const ParallelContext& ctx,
                   const DecoderLayerWeights& w)
    : ops_(ops),
      config_(config),
      ctx_(ctx),
      weights_(w),
      placement_(ctx.plan().experts()),
      dispatchers_{
          MoeDispatcher(&ctx.world(), &placement_, config.hidden_size, config.num_experts_per_tok,
                        MoeDispatcher::Transport::kAuto, ctx.memory()),
          MoeDispatcher(&ctx.world(), &placement_, config.hidden_size, config.num_experts_per_tok,
                        MoeDispatcher::Transport::kAuto, ctx.memory())},
      expert_tokens_(ops.AllocateCounts(config.n_routed_experts)) {}

std::vector<int64_t> MoeLayer::expert_tokens() const {
  std::vector<int64_t> counts(static_cast<size_t>(expert_tokens_.size()));
  ops_.CopyToHost(expert_tokens_.data(), counts.size() * sizeof(int64_t), counts.data());
  return counts;
}

absl::StatusOr<std::unique_ptr<MoeLayer>> MoeLayer::Load(Ops& ops, const ModelConfig& c,
                                                         Checkpoint& ck,
                                                         const DecoderLayerWeights& w,
                                                         const ParallelContext& ctx,
                                                         WeightBytes* bytes) {
  std::unique_ptr<MoeLayer> m(new MoeLayer(ops, c, ctx, w));
  MOE_ASSIGN_OR_RETURN(Tensor gate, Metered(ck, &bytes->router,
                                            [&] { return ck.Load(w.gate->name, w.gate->shape); }));
  m->gate_ = ops.Place(std::move(gate));
  if (w.e_score_correction_bias) {
    MOE_ASSIGN_OR_RETURN(Tensor bias, Metered(ck, &bytes->router, [&] {
                           return ck.Load(w.e_score_correction_bias->name,
                                          w.e_score_correction_bias->shape);
                         }));
    m->bias_ = ops.Place(std::move(bias));
  }
  for (int64_t e : m->placement_.LocalExperts(ctx.rank())) {
    MOE_ASSIGN_OR_RETURN(GatedMlp expert,
                         Metered(ck, &bytes->routed_experts, [&] { return m->LoadExpert(ck, e); }));
    m->experts_.push_back(std::move(expert));
  }
  if (w.shared_experts) {
    MOE_ASSIGN_OR_RETURN(GatedMlp shared, Metered(ck, &bytes->shared_experts, [&] {
                           return GatedMlp::Load(ops, ck, *w.shared_experts,
                                                 ctx.shard().shared_inter, c.activation());
                         }));
    m->shared_ = std::make_unique<GatedMlp>(std::move(shared));
  }
  MOE_RETURN_IF_ERROR(m->PlaceExperts());
  return m;
}

absl::StatusOr<GatedMlp> MoeLayer::LoadExpert(Checkpoint& ck, int64_t e) const {
  const DecoderLayerWeights& w = weights_;
  return w.fused_gate_up_proj
             ? GatedMlp::LoadStacked(ops_, ck, *w.fused_gate_up_proj, *w.fused_down_proj, e,
                                     config_.activation())
             : GatedMlp::Load(ops_, ck, w.experts[e], {0, config_.moe_intermediate_size},
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
  return PlaceExperts();
}

absl::Status MoeLayer::PlaceExperts() {
  std::vector<Ops::Expert> experts;
  for (const GatedMlp& e : experts_) experts.push_back(e.weights());
  MOE_ASSIGN_OR_RETURN(expert_set_, ops_.PlaceExperts(std::move(experts)));
  const std::vector<int64_t>& local = placement_.LocalExperts(0);
  identity_placement_ =
      ctx_.world().size() == 1 && static_cast<int64_t>(local.size()) == config_.n_routed_experts;
  for (size_t i = 0; identity_placement_ && i < local.size(); ++i) {
    identity_placement_ = local[i] == static_cast<int64_t>(i);
  }
  return absl::OkStatus();
}

absl::Status MoeLayer::Forward(const float* x, int64_t n, float* out, const MicroBatchContext& mb) {
  const int64_t h = config_.hidden_size, k = config_.num_experts_per_tok;
  const int64_t experts = config_.n_routed_experts;
  const int tp = ctx_.tp().size();
  const Range slice = EvenSplit(n, tp, ctx_.tp().rank());
  const int64_t s = slice.size();
  const float* xs = x + slice.begin * h;

  DeviceArray<float> logits = ops_.Allocate(s * experts);
  ops_.MatMulNT(s, experts, h, xs, h, gate_.data(), h, logits.data(), experts);
  DeviceArray<int32_t> ids = ops_.AllocateInts(s * k);
  DeviceArray<float> weights = ops_.Allocate(s * k);
  ops_.RouteTokens(config_, logits.data(), bias_.empty() ? nullptr : bias_.data(), s, ids.data(),
                   weights.data());
  ops_.CountChoices(ids.data(), s * k, expert_tokens_.data());

  DeviceArray<float> routed = ops_.Allocate(s * h);
  const Activation act = config_.activation();
  const bool on_input = config_.router_weight_on_input;
  if (ctx_.world().size() == 1) {
    // One rank holds every expert: the rows stay where they are, the experts write their
    // weighted outputs straight into `routed`.
    DeviceArray<int32_t> local = ids;
    if (!identity_placement_) {  // replicas: the experts' local indices, mapped on the host
      std::vector<int32_t> mapped(static_cast<size_t>(s * k));
      ops_.CopyToHost(ids.data(), mapped.size() * sizeof(int32_t), mapped.data());
      for (int32_t& e : mapped) e = static_cast<int32_t>(placement_.LocalIndex(0, e));
      local = ops_.Place(std::move(mapped));
    }
    ops_.RoutedExperts(*expert_set_, xs, s, local.data(), weights.data(), k, act, on_input,
                       routed.data());
  } else {
    MoeDispatcher& dispatcher = dispatchers_[mb.index];
    Dispatched d;
    MOE_RETURN_IF_ERROR(mb.Communicate([&]() -> absl::Status {
      MOE_ASSIGN_OR_RETURN(d, dispatcher.Dispatch(xs, s, ids.data(), weights.data()));
      return absl::OkStatus();
    }));
    ops_.RoutedExperts(*expert_set_, d.x, d.rows, d.local_expert, d.weight, k, act, on_input, d.y);
    MOE_RETURN_IF_ERROR(
        mb.Communicate([&] { return dispatcher.Combine(d.handle, routed.data()); }));
  }

  if (shared_) {
    shared_->Forward(x, n, out);
  } else {
    ops_.Fill(out, n * h, 0.0f);
  }
  if (s > 0) ops_.Add(out + slice.begin * h, routed.data(), s * h);
  if (tp > 1) MOE_RETURN_IF_ERROR(ctx_.tp().AllReduceSum(out, static_cast<size_t>(n * h)));
  return absl::OkStatus();
}

}  // namespace moe

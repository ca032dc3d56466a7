#include "worker/step_runner.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace moe {

absl::Status StepRunner::SharePlan(moe::v1::StepPlan* plan) {
  Communicator& world = engine_.parallel().world();
  if (world.size() == 1) return absl::OkStatus();
  std::string bytes;
  if (world.rank() == 0 && !plan->SerializeToString(&bytes)) {
    return absl::InternalError("cannot serialise the step plan");
  }
  uint64_t size = bytes.size();
  MOE_RETURN_IF_ERROR(world.WaitBroadcast(&size, sizeof(size), 0));
  bytes.resize(size);
  MOE_RETURN_IF_ERROR(world.Broadcast(bytes.data(), size, 0));
  if (world.rank() != 0 && !plan->ParseFromString(bytes)) {
    return absl::DataLossError("cannot parse the broadcast step plan");
  }
  return absl::OkStatus();
}

absl::StatusOr<moe::v1::StepResult> StepRunner::Run(const moe::v1::StepPlan& plan) {
  progress_.current_since_ms = absl::ToUnixMillis(absl::Now());
  progress_.current_step = plan.step();
  auto result = RunStep(plan);
  progress_.last_step = plan.step();
  progress_.current_step = 0;
  return result;
}

absl::StatusOr<moe::v1::StepResult> StepRunner::RunStep(const moe::v1::StepPlan& plan) {
  if (plan.expert_placements_size() > 0) {  // EPLB: move the experts first
    std::vector<ExpertPlacement> layers;
    for (const moe::v1::LayerExperts& l : plan.expert_placements()) {
      std::vector<std::vector<int64_t>> ranks;
      for (const moe::v1::RankExperts& r : l.ranks())
        ranks.emplace_back(r.experts().begin(), r.experts().end());
      MOE_ASSIGN_OR_RETURN(
          ExpertPlacement p,
          ExpertPlacement::FromRanks(engine_.config().n_routed_experts, std::move(ranks)));
      layers.push_back(std::move(p));
    }
    MOE_RETURN_IF_ERROR(engine_.SetExpertPlacement(layers));
  }
  if (kv_server_ != nullptr) kv_server_->Fence();
  std::vector<SequenceStep> steps(static_cast<size_t>(plan.sequences_size()));
  for (int i = 0; i < plan.sequences_size(); ++i) {
    const moe::v1::SequencePlan& p = plan.sequences(i);
    SequenceStep& s = steps[i];
    s.seq_id = p.seq_id();
    s.tokens.assign(p.tokens().begin(), p.tokens().end());
    s.start_pos = p.start_pos();
    s.block_table.assign(p.block_table().begin(), p.block_table().end());
    for (const moe::v1::BlockTable& t : p.window_block_tables()) {
      s.window_block_tables.emplace_back(t.blocks().begin(), t.blocks().end());
    }
    s.want_logits = p.sample();
    s.dp_group = p.dp_group();
    const moe::v1::SamplingSpec& sp = p.sampling();
    if (p.sample()) {
      s.sample = SampleRequest{{sp.temperature(), sp.top_k(), sp.top_p(), sp.seed()},
                               static_cast<uint64_t>(p.sample_index()), sp.logprobs(),
                               std::max(sp.top_logprobs(), 0)};
    }
    s.num_draft = p.num_draft();
    s.mtp = p.mtp();
    s.lookahead = p.lookahead();
  }
  // A step may only move KV (every rank sees the same plan, so all skip the forward pass alike).
  StepOutput out;
  if (!steps.empty()) {
    MOE_ASSIGN_OR_RETURN(out, engine_.Step(steps, /*return_logits=*/false));
  }
  moe::v1::StepResult result;
  result.set_step(plan.step());
  for (size_t i = 0; i < steps.size(); ++i) {
    if (out.tokens[i] < 0) continue;
    result.add_seq_ids(steps[i].seq_id);
    result.add_tokens(out.tokens[i]);
    result.add_next_tokens()->mutable_ids()->Add(out.next_tokens[i].begin(),
                                                 out.next_tokens[i].end());
    result.add_drafts()->mutable_ids()->Add(out.drafts[i].begin(), out.drafts[i].end());
    moe::v1::TokenLogprobs* lp = result.add_logprobs();
    if (steps[i].sample->logprobs) {
      lp->set_logprob(out.logprobs[i].logprob);
      lp->mutable_top_ids()->Add(out.logprobs[i].top_ids.begin(), out.logprobs[i].top_ids.end());
      lp->mutable_top_logprobs()->Add(out.logprobs[i].top_logprobs.begin(),
                                      out.logprobs[i].top_logprobs.end());
    }
  }
  result.mutable_expert_tokens()->Add(out.expert_tokens.begin(), out.expert_tokens.end());
  if (plan.kv_transfers_size() > 0) MOE_RETURN_IF_ERROR(TransferKv(plan, &result));
  return result;
}

absl::Status StepRunner::TransferKv(const moe::v1::StepPlan& plan, moe::v1::StepResult* result) {
  const RankShard& shard = engine_.parallel().shard();
  const KvCache* cache = engine_.host_kv_cache();
  // Per transfer: [failed pushes, bytes written], summed over the world.
  std::vector<int64_t> outcome(2 * static_cast<size_t>(plan.kv_transfers_size()), 0);
  for (int i = 0; i < plan.kv_transfers_size(); ++i) {
    const moe::v1::KvTransferPlan& t = plan.kv_transfers(i);
    if (t.dp_group() != shard.dp_rank) continue;
    const std::vector<int32_t> blocks(t.blocks().begin(), t.blocks().end());
    for (const moe::v1::KvPeer& peer : t.peers()) {
      if (peer.source_tp_rank() != shard.tp_rank) continue;
      absl::StatusOr<int64_t> bytes = absl::UnimplementedError(
          "KV transfer between worker groups needs the CPU backend (its cache in host memory)");
      if (cache != nullptr) {
        moe::v1::KvPushHeader header;
        header.set_session(t.session());
        header.set_seq_id(t.seq_id());
        header.set_tokens(t.tokens());
        header.mutable_blocks()->Add(t.decode_blocks().begin(), t.decode_blocks().end());
        bytes = pusher_.Push(peer.address(), *cache, std::move(header), blocks);
      }
      if (bytes.ok()) {
        outcome[2 * i + 1] += *bytes;
      } else {
        MOE_LOG(WARNING) << "sequence " << t.seq_id() << ": " << bytes.status().message();
        outcome[2 * i] += 1;
      }
    }
  }
  MOE_RETURN_IF_ERROR(engine_.parallel().world().AllReduceSum(outcome.data(), outcome.size()));
  for (int i = 0; i < plan.kv_transfers_size(); ++i) {
    moe::v1::KvTransferDone* done = result->add_kv_transfers();
    done->set_seq_id(plan.kv_transfers(i).seq_id());
    done->set_ok(outcome[2 * i] == 0);
    done->set_bytes(outcome[2 * i + 1]);
  }
  return absl::OkStatus();
}

}  // namespace moe

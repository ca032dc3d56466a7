#include "model/model.h"

#include <cmath>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "checkpoint/weight_names.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "model/op_set.h"
#include "model/rope.h"

namespace moe {

absl::StatusOr<std::unique_ptr<DecoderModel>> DecoderModel::Load(
    const std::string& dir, const ModelConfig& c, const ParallelContext& ctx,
    const KvCacheShape& cache, const DecoderModelOptions& options) {
  MOE_ASSIGN_OR_RETURN(OpSet set, MakeOpSet(c, ctx,
                                            {.device = options.device,
                                             .cuda_device = options.cuda_device,
                                             .two_batch_overlap = options.two_batch_overlap,
                                             .activations = options.activations}));
  return LoadWith(std::move(set.ops), std::move(set.groups), dir, c, ctx, cache, options);
}

absl::StatusOr<std::unique_ptr<DecoderModel>> DecoderModel::LoadOver(
    std::unique_ptr<Ops> ops, const std::string& dir, const ModelConfig& c,
    const ParallelContext& ctx, const KvCacheShape& cache, const DecoderModelOptions& options) {
  return LoadWith(std::move(ops), nullptr, dir, c, ctx, cache, options);
}

absl::StatusOr<std::unique_ptr<DecoderModel>> DecoderModel::LoadWith(
    std::unique_ptr<Ops> made, std::unique_ptr<ParallelContext> groups, const std::string& dir,
    const ModelConfig& c, const ParallelContext& host_ctx, const KvCacheShape& cache,
    const DecoderModelOptions& options) {
  const ParallelContext& ctx = groups ? *groups : host_ctx;
  const bool load_mtp = options.load_mtp;
  if (options.two_batch_overlap && ctx.plan().tp_size() > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "two-batch overlap needs a TP size of 1 (DP attention with expert parallelism), not ",
        ctx.plan().tp_size()));
  }
  MOE_ASSIGN_OR_RETURN(auto ck, Checkpoint::Open(dir, c.quantization_config));
  ck->set_weights_at_load(options.weights);
  ck->set_activations(options.activations);
  const float softmax_scale = RotaryEmbedding(c).softmax_scale();
  const int64_t cache_dim = c.is_mla() ? c.kv_cache_dim() : GqaAttention::CacheDim(c, ctx.shard());
  std::unique_ptr<DecoderModel> m(new DecoderModel(c, std::move(made), cache, load_mtp, cache_dim));
  m->groups_ = std::move(groups);
  Ops& ops = *m->ops_;
  WeightBytes* bytes = &m->weight_bytes_;
  const ModelWeights top = TopLevelWeights(c);
  MOE_ASSIGN_OR_RETURN(m->embed_tokens_, Metered(*ck, &bytes->embedding, [&] {
                         return VocabParallelEmbedding::Load(ops, *ck, top.embed_tokens,
                                                             ctx.shard().vocab, &ctx.tp());
                       }));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    // Layers keep a reference to the config: give them the model's own copy.
    MOE_ASSIGN_OR_RETURN(auto layer,
                         DecoderLayer::Load(ops, m->config_, *ck, l, ctx, softmax_scale, bytes));
    m->layers_.push_back(std::move(layer));
    MOE_LOG(DEBUG) << "loaded layer " << l << " (" << ck->bytes_read() / 1e6 << " MB so far)";
  }
  MOE_ASSIGN_OR_RETURN(m->norm_, Metered(*ck, &bytes->norms, [&] {
                         return RmsNorm::Load(ops, *ck, top.norm, c.rms_norm_eps,
                                              c.norm_unit_offset);
                       }));
  MOE_ASSIGN_OR_RETURN(m->lm_head_, Metered(*ck, &bytes->embedding, [&] {
                         return ParallelLmHead::Load(ops, *ck, top.lm_head, ctx.plan().tp_size(),
                                                     &ctx.tp());
                       }));
  if (load_mtp) {
    MOE_ASSIGN_OR_RETURN(m->mtp_, MtpLayer::Load(ops, m->config_, *ck, ctx, softmax_scale, bytes));
  }
  MOE_CHECK(bytes->total() == ck->bytes_read());  // every read is attributed to a part
  m->ck_ = std::move(ck);
  m->world_ = ctx.world().size();
  if (options.two_batch_overlap) m->overlap_ = std::make_unique<TwoBatchOverlap>();
  // GQA layers read the step's positions on the host (Llama 4's attention temperature): only MLA
  // models record; the collectives between ranks wait on the host.
  m->record_ = options.record_decode_steps && ops.can_record() && c.is_mla() && !m->overlap_ &&
               ctx.world().size() == 1;
  return m;
}

absl::Status DecoderModel::Run(const DeviceArray<int32_t>& tokens,
                               const DeviceArray<int32_t>& logit_ids,
                               const std::vector<StepInputs>& steps, const MicroBatches* parts,
                               DeviceArray<float>* hidden, DeviceArray<float>* logits) {
  Ops& ops = *ops_;
  const int64_t h = config_.hidden_size, n = tokens.size(), m = logit_ids.size();
  MOE_ASSIGN_OR_RETURN(DeviceArray<float> x, embed_tokens_.Forward(tokens.data(), n));
  if (config_.scale_embeddings) {
    ops.Scale(x.data(), static_cast<float>(std::sqrt(static_cast<double>(h))), x.size());
  }
  if (parts != nullptr) {
    MOE_RETURN_IF_ERROR(overlap_->Run([&](int i) -> absl::Status {
      float* rows = x.data() + (i == 0 ? 0 : parts->first_row_of_second * h);
      for (auto& layer : layers_) {
        MOE_RETURN_IF_ERROR(layer->Forward(rows, steps[i], cache_, {i, overlap_.get()}));
      }
      return absl::OkStatus();
    }));
  } else {
    const MicroBatchContext whole{0, nullptr, &collective_seconds_};
    for (auto& layer : layers_) {
      MOE_RETURN_IF_ERROR(layer->Forward(x.data(), steps[0], cache_, whole));
    }
  }
  DeviceArray<float> last = ops.Allocate(m * h);
  ops.GatherRows(x.data(), logit_ids.data(), m, h, last.data());
  norm_.Forward(last.data(), m, last.data());
  MOE_ASSIGN_OR_RETURN(*logits, lm_head_.Forward(last.data(), m));
  if (const float cap = static_cast<float>(config_.final_logit_softcapping); cap > 0) {
    ops.SoftCap(logits->data(), logits->size(), cap);
  }
  *hidden = std::move(x);
  return absl::OkStatus();
}

bool DecoderModel::Replays(const ForwardBatch& batch,
                           const std::vector<int64_t>& logit_rows) const {
  if (!record_ || !MoeRunsOnDevice() || batch.num_tokens() == 0 ||
      static_cast<int64_t>(logit_rows.size()) != batch.num_tokens()) {
    return false;
  }
  for (size_t i = 0; i < logit_rows.size(); ++i) {
    if (logit_rows[i] != static_cast<int64_t>(i)) return false;
  }
  for (const ForwardChunk& c : batch.chunks) {
    if (c.num_tokens > kFewTokenChunk) return false;
  }
  return true;
}

bool DecoderModel::MoeRunsOnDevice() const {
  for (const auto& l : layers_) {
    if (l->moe() != nullptr && !l->moe()->runs_on_device()) return false;
  }
  return mtp_ == nullptr || mtp_->block().moe() == nullptr || mtp_->block().moe()->runs_on_device();
}

absl::Status DecoderModel::Forward(const std::vector<int32_t>& tokens, const ForwardBatch& batch,
                                   const std::vector<int64_t>& logit_rows) {
  Ops& ops = *ops_;
  logits_ = {};
  logit_rows_ = 0;
  if (Replays(batch, logit_rows)) return ForwardRecorded(tokens, batch);
  // What the step reads from the host goes to the device before anything runs.
  const DeviceArray<int32_t> token_ids = ops.Place(tokens);
  const DeviceArray<int32_t> logit_ids =
      ops.Place(std::vector<int32_t>(logit_rows.begin(), logit_rows.end()));
  std::optional<MicroBatches> parts;
  std::vector<StepInputs> steps;
  if (overlap_) {
    parts = SplitInTwo(batch);
    for (const ForwardBatch& part : parts->batch) {
      steps.push_back(StepInputs::Build(ops, part, cache_));
    }
  } else {
    steps.push_back(StepInputs::Build(ops, batch, cache_));
  }
  DeviceArray<float> x;
  MOE_RETURN_IF_ERROR(Run(token_ids, logit_ids, steps, parts ? &*parts : nullptr, &x, &logits_));
  if (mtp_) {  // the MTP layer reads rows of it after this step's sampling
    hidden_ = std::move(x);
    hidden_rows_ = token_ids.size();
  }
  logit_rows_ = logit_ids.size();
  return ops.TakeError();
}

absl::Status DecoderModel::ForwardRecorded(const std::vector<int32_t>& tokens,
                                           const ForwardBatch& batch) {
  Ops& ops = *ops_;
  const auto n = static_cast<int64_t>(tokens.size());
  const auto key = std::make_pair(n, StepInputs::TableWidth(batch, cache_.block_size(), true));
  auto it = recorded_.find(key);
  if (it == recorded_.end()) {
    RecordedStep r;
    r.tokens = ops.Place(tokens);
    std::vector<int32_t> rows(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) rows[i] = static_cast<int32_t>(i);
    r.logit_ids = ops.Place(std::move(rows));
    r.steps.push_back(StepInputs::Build(ops, batch, cache_, /*rounded_width=*/true));
    MOE_RETURN_IF_ERROR(ops.TakeError());
    MOE_RETURN_IF_ERROR(ops.BeginRecording());
    const absl::Status run = Run(r.tokens, r.logit_ids, r.steps, nullptr, &r.hidden, &r.logits);
    auto recording = ops.EndRecording();
    MOE_RETURN_IF_ERROR(run);
    MOE_ASSIGN_OR_RETURN(r.recording, std::move(recording));
    MOE_LOG(DEBUG) << "recorded the decode step of " << n << " tokens, tables " << key.second
                   << " blocks wide";
    it = recorded_.emplace(key, std::move(r)).first;
    ++steps_recorded_;
  } else {
    RecordedStep& r = it->second;
    ops.CopyFromHost(tokens.data(), tokens.size() * sizeof(int32_t), r.tokens.data());
    MOE_RETURN_IF_ERROR(r.steps[0].Rewrite(ops, batch, cache_));
  }
  const RecordedStep& r = it->second;
  MOE_RETURN_IF_ERROR(ops.Replay(*r.recording));
  ++steps_replayed_;
  logits_ = r.logits;
  logit_rows_ = n;
  if (mtp_) {
    hidden_ = r.hidden;
    hidden_rows_ = n;
  }
  return ops.TakeError();
}

absl::StatusOr<Tensor> DecoderModel::Logits() {
  Tensor logits = ToHost(*ops_, logits_, {logit_rows_, config_.vocab_size});
  MOE_RETURN_IF_ERROR(ops_->TakeError());
  return logits;
}

absl::StatusOr<std::vector<int32_t>> DecoderModel::Sample(
    const std::vector<SampleRequest>& requests) {
  const int64_t rows = logit_rows_;
  if (static_cast<int64_t>(requests.size()) != rows) {
    return absl::InvalidArgumentError(
        absl::StrCat(requests.size(), " sampling requests for ", rows, " rows of logits"));
  }
  std::vector<int32_t> tokens(requests.size());
  ops_->Sample(logits_.data(), rows, config_.vocab_size, requests, tokens.data());
  MOE_RETURN_IF_ERROR(ops_->TakeError());
  return tokens;
}

absl::StatusOr<Tensor> DecoderModel::ForwardMtp(const std::vector<int64_t>& main_rows,
                                                const std::vector<int32_t>& next_tokens,
                                                const ForwardBatch& batch,
                                                const std::vector<int64_t>& logit_rows,
                                                bool from_last_draft) {
  if (!mtp_) return absl::FailedPreconditionError("the MTP layer was not loaded");
  const int64_t n = static_cast<int64_t>(main_rows.size());
  if (n != batch.num_tokens() || next_tokens.size() != main_rows.size()) {
    return absl::InvalidArgumentError("MTP rows, next tokens and batch differ in length");
  }
  // The main model's final hidden states (through its final norm), or the MTP layer's own last
  // output (its hnorm normalises it).
  const DeviceArray<float>& source = from_last_draft ? mtp_->last_hidden() : hidden_;
  const int64_t source_rows = from_last_draft ? mtp_->last_hidden_rows() : hidden_rows_;
  if (source_rows < 0) {
    return absl::FailedPreconditionError(from_last_draft
                                             ? "the MTP layer drafts again after a first pass"
                                             : "the MTP layer runs after a Forward step");
  }
  for (int64_t r : main_rows) {
    if (r < 0 || r >= source_rows) {
      return absl::InvalidArgumentError("MTP row outside the last pass's rows");
    }
  }
  DeviceArray<float> input = GatherRows(*ops_, source.data(), main_rows, config_.hidden_size);
  if (!from_last_draft) norm_.Forward(input.data(), n, input.data());
  MOE_ASSIGN_OR_RETURN(Tensor draft_logits,
                       mtp_->Forward(input.data(), next_tokens, batch, cache_, logit_rows));
  MOE_RETURN_IF_ERROR(ops_->TakeError());
  return draft_logits;
}

double DecoderModel::CollectiveWaitSeconds() const {
  return collective_seconds_ + (overlap_ ? overlap_->exposed_seconds() : 0.0);
}

std::vector<int64_t> DecoderModel::ExpertTokenCounts() const {
  std::vector<int64_t> counts;
  auto add = [&](const DecoderLayer& l) {
    if (l.moe() == nullptr) return;
    const std::vector<int64_t> layer = l.moe()->expert_tokens();
    counts.insert(counts.end(), layer.begin(), layer.end());
  };
  for (const auto& l : layers_) add(*l);
  if (mtp_) add(mtp_->block());
  return counts;
}

absl::Status DecoderModel::SetExpertPlacement(const std::vector<ExpertPlacement>& placements) {
  // Every placement checked before any layer moves.
  if (static_cast<int64_t>(placements.size()) != config_.num_moe_layers()) {
    return absl::InvalidArgumentError(absl::StrCat(placements.size(),
                                                   " expert placements for a model with ",
                                                   config_.num_moe_layers(), " MoE layers"));
  }
  for (const ExpertPlacement& p : placements) {
    if (p.world() != world_ || p.num_experts() != config_.n_routed_experts) {
      return absl::InvalidArgumentError(absl::StrCat(
          "expert placement of ", p.num_experts(), " experts over ", p.world(),
          " ranks for a model of ", config_.n_routed_experts, " experts over ", world_));
    }
  }
  // The recordings read the experts where they were.
  recorded_.clear();
  size_t i = 0;
  for (auto& l : layers_) {
    if (l->moe() == nullptr) continue;
    MOE_RETURN_IF_ERROR(l->moe()->SetPlacement(placements[i++], *ck_));
  }
  return absl::OkStatus();
}

}  // namespace moe

#include "worker/engine.h"

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "kernels/cpu/ops.h"
#include "model/model.h"

namespace moe {
namespace {

absl::StatusOr<std::unique_ptr<ForwardModel>> LoadBackend(const std::string& dir,
                                                          const ModelConfig& config,
                                                          const ParallelContext& ctx,
                                                          const EngineOptions& options) {
  if (options.block_size <= 0 || options.kv_blocks <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache needs a positive block size and ",
                                                   "block count, got ", options.block_size, " and ",
                                                   options.kv_blocks));
  }
  const KvCacheShape cache{options.kv_blocks, options.block_size};
  MOE_ASSIGN_OR_RETURN(auto model,
                       DecoderModel::Load(dir, config, ctx, cache,
                                          {.weights = options.weights,
                                           .load_mtp = options.mtp,
                                           .activations = options.activations,
                                           .two_batch_overlap = options.two_batch_overlap,
                                           .device = options.device,
                                           .cuda_device = options.cuda_device,
                                           .record_decode_steps = options.cuda_graphs}));
  return std::unique_ptr<ForwardModel>(std::move(model));
}

}  // namespace

absl::StatusOr<Device> ParseDevice(const std::string& name) {
  if (name == "cpu") return Device::kCpu;
  if (name == "cuda") return Device::kCuda;
  return absl::InvalidArgumentError(
      absl::StrCat("device \"", name, "\" is not one of \"cpu\", \"cuda\""));
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Load(const std::string& model_dir,
                                                     std::unique_ptr<ParallelContext> ctx,
                                                     const EngineOptions& options) {
  MOE_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(model_dir));
  auto model = LoadBackend(model_dir, config, *ctx, options);
  // Every rank learns whether every rank loaded its shard: one rank's failure must not leave the
  // others waiting in the first collective.
  int64_t failed = model.ok() ? 0 : 1;
  MOE_RETURN_IF_ERROR(ctx->world().AllReduceSum(&failed, 1));
  if (!model.ok()) return model.status();
  if (failed > 0) {
    return absl::AbortedError(absl::StrCat(failed, " other rank(s) failed to load their shard"));
  }
  return std::unique_ptr<Engine>(new Engine(config, std::move(ctx), std::move(*model), options));
}

absl::Status Engine::SetExpertPlacement(const std::vector<ExpertPlacement>& layers) {
  const absl::Time start = absl::Now();
  const absl::Status s = model_->SetExpertPlacement(layers);
  int64_t failed = s.ok() ? 0 : 1;
  MOE_RETURN_IF_ERROR(ctx_->world().AllReduceSum(&failed, 1));
  if (!s.ok()) return s;
  if (failed > 0) {
    return absl::AbortedError(absl::StrCat(failed, " other rank(s) failed to move their experts"));
  }
  MOE_LOG(INFO) << "EPLB: " << layers.size() << " MoE layers' experts moved in "
                << absl::ToDoubleMilliseconds(absl::Now() - start) << " ms";
  return absl::OkStatus();
}

absl::Status Engine::Validate(const std::vector<SequenceStep>& step) const {
  const ModelConfig& c = config();
  std::set<int64_t> seen;
  for (const SequenceStep& s : step) {
    auto bad = [&](const std::string& what) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", s.seq_id, ": ", what));
    };
    if (!seen.insert(s.seq_id).second) return bad("appears twice in one step");
    if (s.tokens.empty()) return bad("no tokens to process");
    for (int32_t t : s.tokens) {
      if (t < 0 || t >= c.vocab_size) {
        return bad(absl::StrCat("token id ", t, " outside the vocabulary [0, ", c.vocab_size, ")"));
      }
    }
    const int64_t end = s.start_pos + static_cast<int64_t>(s.tokens.size());
    if (s.start_pos < 0 || end > c.max_position_embeddings) {
      return bad(absl::StrCat("positions [", s.start_pos, ", ", end,
                              ") exceed max_position_embeddings ", c.max_position_embeddings));
    }
    // Drafting k > 1 tokens writes the MTP layer's cache k - 1 positions past the step's.
    const int64_t covered = end + (s.mtp && s.want_logits && s.sample
                                       ? std::min<int64_t>(options_.mtp_draft_tokens - 1,
                                                           c.max_position_embeddings - end)
                                       : 0);
    if (static_cast<int64_t>(s.window_block_tables.size()) != kv_layout_.window_groups()) {
      return bad(absl::StrCat(s.window_block_tables.size(),
                              " window block tables for a model with ", kv_layout_.window_groups(),
                              " window layer groups"));
    }
    for (int64_t g = 0; g <= kv_layout_.window_groups(); ++g) {
      const std::vector<int32_t>& table =
          g == 0 ? s.block_table : s.window_block_tables[static_cast<size_t>(g - 1)];
      if (static_cast<int64_t>(table.size()) * block_size() < covered) {
        return bad(absl::StrCat(table.size(), " KV blocks of ", block_size(),
                                " tokens cannot hold ", covered, " positions (layer group ", g,
                                ")"));
      }
      // The blocks the step reads or writes must be the cache's; earlier ones may be freed.
      const int64_t live = kv_layout_.FirstLiveBlock(g, s.start_pos, block_size());
      for (size_t i = 0; i < table.size(); ++i) {
        const int32_t b = table[i];
        if ((b < 0 && static_cast<int64_t>(i) >= live) || b >= num_blocks()) {
          return bad(absl::StrCat("KV block ", b, " outside the cache's ", num_blocks(),
                                  " blocks (layer group ", g, ", entry ", i, ")"));
        }
      }
    }
    if (s.num_draft < 0 || s.num_draft >= static_cast<int>(s.tokens.size())) {
      return bad(absl::StrCat(s.num_draft, " drafts among ", s.tokens.size(),
                              " tokens (the first token is never a draft)"));
    }
    if (s.num_draft > 0 && !(s.want_logits && s.sample)) {
      return bad("drafts to verify need want_logits and a sample request");
    }
    if (s.num_draft > 0 && s.sample->logprobs) {
      return bad("log-probabilities of speculated tokens are not supported");
    }
    if (s.mtp && !model_->has_mtp()) {
      return bad("asks for the MTP layer, which the engine did not load (EngineOptions::mtp)");
    }
    if (s.mtp && !(s.want_logits && s.sample) &&
        (s.lookahead < 0 || s.lookahead >= c.vocab_size)) {
      return bad("an MTP chunk that samples nothing needs the prompt's next token (lookahead)");
    }
    if (s.dp_group < 0 || s.dp_group >= ctx_->plan().dp_size()) {
      return bad(
          absl::StrCat("DP group ", s.dp_group, " outside [0, ", ctx_->plan().dp_size(), ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<StepOutput> Engine::Step(const std::vector<SequenceStep>& step, bool return_logits) {
  MOE_RETURN_IF_ERROR(Validate(step));
  const int my_group = ctx_->shard().dp_rank;
  ForwardBatch batch;
  std::vector<int32_t> tokens;
  std::vector<int64_t> logit_rows;
  std::vector<SampleRequest> samples;  // per logits row
  std::vector<int64_t> logit_entry;    // the step entry of each logits row
  std::vector<int> logit_offset;       // which of its entry's sampled positions the row is
  StepOutput result;
  for (size_t i = 0; i < step.size(); ++i) {
    const SequenceStep& s = step[i];
    if (s.dp_group != my_group) continue;
    ForwardChunk c;
    c.first_token = static_cast<int64_t>(tokens.size());
    c.num_tokens = static_cast<int64_t>(s.tokens.size());
    c.start_pos = s.start_pos;
    c.block_table = &s.block_table;
    c.window_block_tables = &s.window_block_tables;
    batch.chunks.push_back(c);
    tokens.insert(tokens.end(), s.tokens.begin(), s.tokens.end());
    for (int64_t i = 0; i < c.num_tokens; ++i) batch.positions.push_back(s.start_pos + i);
    if (!s.want_logits) continue;
    // The last token's row, or with drafts the rows of the last num_draft + 1 tokens.
    for (int j = 0; j <= s.num_draft; ++j) {
      logit_rows.push_back(c.first_token + c.num_tokens - 1 - s.num_draft + j);
      result.seq_ids.push_back(s.seq_id);
      logit_entry.push_back(static_cast<int64_t>(i));
      logit_offset.push_back(j);
      SampleRequest r = s.sample.value_or(SampleRequest{});
      r.index += static_cast<uint64_t>(j);
      samples.push_back(r);
    }
  }
  rope_.SetAngles(batch);
  MOE_RETURN_IF_ERROR(model_->Forward(tokens, batch, logit_rows));
  if (return_logits) {
    MOE_ASSIGN_OR_RETURN(result.logits, model_->Logits());
  }
  const bool any_sample = std::any_of(step.begin(), step.end(), [&](const SequenceStep& s) {
    return s.dp_group == my_group && s.want_logits && s.sample.has_value();
  });
  std::vector<std::vector<int32_t>> sampled(step.size());  // by step entry
  std::vector<std::pair<int64_t, TokenLogprobs>> logprobs;  // by step entry
  if (any_sample && ctx_->shard().tp_rank == 0) {
    MOE_ASSIGN_OR_RETURN(std::vector<int32_t> drawn, model_->Sample(samples));
    // Host logits for log-probabilities and for checking sampled drafts: the ones the step
    // already returned, else fetched from the backend only when needed.
    bool need_logits = false;
    for (size_t k = 0; k < samples.size(); ++k) {
      const SequenceStep& s = step[static_cast<size_t>(logit_entry[k])];
      need_logits |= s.sample && (samples[k].logprobs ||
                                  (s.num_draft > 0 && !IsGreedy(s.sample->spec)));
    }
    Tensor fetched;
    if (need_logits && !return_logits) {
      MOE_ASSIGN_OR_RETURN(fetched, model_->Logits());
    }
    const Tensor& logits = return_logits ? result.logits : fetched;
    std::vector<bool> rejected(step.size(), false);  // a draft of the entry was: it ends there
    for (size_t k = 0; k < drawn.size(); ++k) {
      const size_t entry = static_cast<size_t>(logit_entry[k]);
      const SequenceStep& s = step[entry];
      if (!s.sample) continue;
      const int j = logit_offset[k];
      std::vector<int32_t>& made = sampled[entry];
      if (rejected[entry]) continue;
      if (j == s.num_draft) {  // no draft left to check: the token after them
        made.push_back(drawn[k]);
        if (samples[k].logprobs) {
          logprobs.emplace_back(entry, LogprobsOf(logits.row(static_cast<int64_t>(k)),
                                                  config().vocab_size, drawn[k],
                                                  samples[k].top_logprobs));
        }
        continue;
      }
      const int32_t draft = s.tokens[s.tokens.size() - static_cast<size_t>(s.num_draft - j)];
      // Greedy: the backend's draw is the argmax (no host logits needed).
      const DraftVerdict v =
          IsGreedy(s.sample->spec)
              ? DraftVerdict{drawn[k] == draft, drawn[k]}
              : VerifyDraft(logits.row(static_cast<int64_t>(k)), config().vocab_size,
                            samples[k].spec, samples[k].index, draft);
      made.push_back(v.token);
      rejected[entry] = !v.accepted;
    }
  }
  result.tokens.assign(step.size(), -1);
  MOE_RETURN_IF_ERROR(ShareSampledTokens(step, sampled, &result));
  MOE_RETURN_IF_ERROR(ShareLogprobs(step, logprobs, &result));
  result.drafts.assign(step.size(), {});
  if (std::any_of(step.begin(), step.end(), [](const SequenceStep& s) { return s.mtp; })) {
    MOE_RETURN_IF_ERROR(RunMtp(step, batch, &result));
  }
  return result;
}

absl::Status Engine::RunMtp(const std::vector<SequenceStep>& step, const ForwardBatch& batch,
                            StepOutput* out) {
  const int my_group = ctx_->shard().dp_rank;
  ForwardBatch mtp;
  std::vector<int64_t> main_rows, logit_rows, logit_entry;
  std::vector<int32_t> next;
  size_t chunk = 0;
  for (size_t i = 0; i < step.size(); ++i) {
    const SequenceStep& s = step[i];
    if (s.dp_group != my_group) continue;
    const ForwardChunk& c = batch.chunks[chunk++];
    if (!s.mtp) continue;
    // Position start_pos + r has its next token known: the chunk's own tokens up to the last one
    // that is not a draft, then the tokens sampled in this step (or the lookahead).
    std::vector<int32_t> known(s.tokens.begin() + 1,
                               s.tokens.end() - static_cast<std::ptrdiff_t>(s.num_draft));
    if (out->tokens[i] >= 0) {
      known.push_back(out->tokens[i]);
      known.insert(known.end(), out->next_tokens[i].begin(), out->next_tokens[i].end());
    } else {
      known.push_back(s.lookahead);
    }
    ForwardChunk m;
    m.first_token = mtp.num_tokens();
    m.num_tokens = static_cast<int64_t>(known.size());
    m.start_pos = s.start_pos;
    m.block_table = &s.block_table;
    m.window_block_tables = &s.window_block_tables;
    mtp.chunks.push_back(m);
    for (int64_t r = 0; r < m.num_tokens; ++r) {
      main_rows.push_back(c.first_token + r);
      mtp.positions.push_back(s.start_pos + r);
    }
    next.insert(next.end(), known.begin(), known.end());
    if (out->tokens[i] >= 0) {
      logit_rows.push_back(m.first_token + m.num_tokens - 1);
      logit_entry.push_back(static_cast<int64_t>(i));
    }
  }
  // Each pass drafts one token per drafting entry: the first from the main model's hidden states,
  // each further one from the layer's own output at the previous draft's position. Every rank
  // runs every pass (the block's MoE exchange is collective), with or without rows.
  std::vector<int64_t> positions;  // per drafting entry: the position of its last logit row
  for (int64_t r : logit_rows) positions.push_back(mtp.positions[static_cast<size_t>(r)]);
  bool from_last_draft = false;
  for (int pass = 0; pass < options_.mtp_draft_tokens; ++pass) {
    rope_.SetAngles(mtp);
    MOE_ASSIGN_OR_RETURN(Tensor logits,
                         model_->ForwardMtp(main_rows, next, mtp, logit_rows, from_last_draft));
    std::vector<int64_t> sums(step.size(), 0);  // draft + 1 per entry; from TP-rank 0 of a group
    if (ctx_->shard().tp_rank == 0) {
      for (size_t k = 0; k < logit_entry.size(); ++k) {
        sums[static_cast<size_t>(logit_entry[k])] =
            cpu::ArgMax(logits.row(static_cast<int64_t>(k)), config().vocab_size) + 1;
      }
    }
    if (ctx_->world().size() > 1) {
      MOE_RETURN_IF_ERROR(ctx_->world().AllReduceSum(sums.data(), sums.size()));
    }
    for (size_t i = 0; i < step.size(); ++i) {
      if (sums[i] > 0) out->drafts[i].push_back(static_cast<int32_t>(sums[i] - 1));
    }
    if (pass + 1 == options_.mtp_draft_tokens) break;
    // The next pass: one row per drafting entry, the draft at the position after its last row,
    // reading the block output of that row. Entries at the end of the context stop drafting.
    ForwardBatch again;
    std::vector<int64_t> rows, entries, at;
    std::vector<int32_t> tokens;
    for (size_t k = 0; k < logit_entry.size(); ++k) {
      const int64_t pos = positions[k] + 1;
      if (pos >= config().max_position_embeddings) continue;
      const SequenceStep& s = step[static_cast<size_t>(logit_entry[k])];
      ForwardChunk c;
      c.first_token = again.num_tokens();
      c.num_tokens = 1;
      c.start_pos = pos;
      c.block_table = &s.block_table;
      c.window_block_tables = &s.window_block_tables;
      again.chunks.push_back(c);
      again.positions.push_back(pos);
      rows.push_back(logit_rows[k]);
      tokens.push_back(out->drafts[static_cast<size_t>(logit_entry[k])].back());
      entries.push_back(logit_entry[k]);
      at.push_back(pos);
    }
    mtp = std::move(again);
    main_rows = std::move(rows);
    next = std::move(tokens);
    logit_entry = std::move(entries);
    positions = std::move(at);
    logit_rows.resize(main_rows.size());
    for (size_t k = 0; k < logit_rows.size(); ++k) logit_rows[k] = static_cast<int64_t>(k);
    from_last_draft = true;
  }
  return absl::OkStatus();
}

absl::Status Engine::ShareLogprobs(const std::vector<SequenceStep>& step,
                                   const std::vector<std::pair<int64_t, TokenLogprobs>>& mine,
                                   StepOutput* out) {
  out->logprobs.assign(step.size(), TokenLogprobs());
  // The layout every rank derives from the step alone: per asking entry, one value and `top` (id,
  // value) pairs.
  std::vector<size_t> offset(step.size(), 0);
  size_t slots = 0;
  auto asks = [&](const SequenceStep& s) { return s.want_logits && s.sample && s.sample->logprobs; };
  for (size_t i = 0; i < step.size(); ++i) {
    offset[i] = slots;
    if (asks(step[i])) slots += 1 + static_cast<size_t>(std::max(0, step[i].sample->top_logprobs));
  }
  if (slots == 0) return absl::OkStatus();
  std::vector<float> values(slots, 0.0f);
  std::vector<int64_t> ids(slots, 0);
  for (const auto& [entry, lp] : mine) {
    const size_t at = offset[static_cast<size_t>(entry)];
    values[at] = lp.logprob;
    for (size_t k = 0; k < lp.top_ids.size(); ++k) {
      ids[at + 1 + k] = lp.top_ids[k];
      values[at + 1 + k] = lp.top_logprobs[k];
    }
  }
  if (ctx_->world().size() > 1) {  // one rank contributes each slot: the sums are exact
    MOE_RETURN_IF_ERROR(ctx_->world().AllReduceSum(values.data(), values.size()));
    MOE_RETURN_IF_ERROR(ctx_->world().AllReduceSum(ids.data(), ids.size()));
  }
  for (size_t i = 0; i < step.size(); ++i) {
    if (!asks(step[i])) continue;
    TokenLogprobs& lp = out->logprobs[i];
    lp.logprob = values[offset[i]];
    const int top = std::max(0, step[i].sample->top_logprobs);
    for (int k = 0; k < top; ++k) {
      lp.top_ids.push_back(static_cast<int32_t>(ids[offset[i] + 1 + static_cast<size_t>(k)]));
      lp.top_logprobs.push_back(values[offset[i] + 1 + static_cast<size_t>(k)]);
    }
  }
  return absl::OkStatus();
}

absl::Status Engine::ShareSampledTokens(const std::vector<SequenceStep>& step,
                                        const std::vector<std::vector<int32_t>>& sampled,
                                        StepOutput* out) {
  // sums = [token + 1 per sampled slot (0: not sampled) | this step's count per expert]; every
  // rank derives the slots from the step: 1 + num_draft per entry that samples.
  std::vector<size_t> offset(step.size() + 1, 0);
  for (size_t i = 0; i < step.size(); ++i) {
    const bool samples = step[i].want_logits && step[i].sample.has_value();
    offset[i + 1] = offset[i] + (samples ? 1 + static_cast<size_t>(step[i].num_draft) : 0);
  }
  const size_t n = offset.back();
  const std::vector<int64_t> counts = model_->ExpertTokenCounts();
  std::vector<int64_t> sums(n + counts.size(), 0);
  for (size_t i = 0; i < step.size(); ++i) {
    for (size_t j = 0; j < sampled[i].size(); ++j) sums[offset[i] + j] = sampled[i][j] + 1;
  }
  for (size_t e = 0; e < counts.size(); ++e) sums[n + e] = counts[e] - expert_counts_[e];
  expert_counts_ = counts;
  if (ctx_->world().size() > 1 && (options_.tokens_on_every_rank || options_.mtp)) {
    MOE_RETURN_IF_ERROR(ctx_->world().AllReduceSum(sums.data(), sums.size()));
  } else if (ctx_->world().size() > 1) {
    MOE_RETURN_IF_ERROR(ctx_->world().ReduceSum(sums.data(), sums.size(), /*root=*/0));
  }
  out->next_tokens.assign(step.size(), {});
  for (size_t i = 0; i < step.size(); ++i) {
    for (size_t at = offset[i]; at < offset[i + 1] && sums[at] > 0; ++at) {
      const int32_t token = static_cast<int32_t>(sums[at] - 1);
      if (at == offset[i]) {
        out->tokens[i] = token;
      } else {
        out->next_tokens[i].push_back(token);
      }
    }
  }
  out->expert_tokens.assign(sums.begin() + static_cast<std::ptrdiff_t>(n), sums.end());
  return absl::OkStatus();
}

}  // namespace moe

// Engine: one rank's executor of steps. A step is a batch of sequences of different lengths —
// prefill chunks and single decode tokens mixed — each with the cache blocks that hold its
// positions (the scheduler owns block assignment). Every rank of the engine runs every step:
// ranks of one attention-DP group process that group's sequences; all ranks meet in the MoE
// all-to-all. The model behind it is a backend (`ForwardModel`): CPU, or CUDA on one GPU.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/kv_layout.h"
#include "common/model_config.h"
#include "kernels/cpu/sampler.h"
#include "kernels/ops.h"
#include "model/forward_model.h"
#include "model/kv_cache.h"
#include "model/rope.h"
#include "parallel/parallel_context.h"

namespace moe {

struct SequenceStep {
  int64_t seq_id = 0;
  std::vector<int32_t> tokens;       // the tokens to process in this step
  int64_t start_pos = 0;             // position of tokens[0]
  std::vector<int32_t> block_table;  // blocks covering positions [0, start_pos + tokens.size())
  // One table per window group of the model's KvLayout (none for most models), as long as
  // block_table; its blocks before KvLayout::FirstLiveBlock(g, start_pos) may be -1 (freed).
  std::vector<std::vector<int32_t>> window_block_tables;
  bool want_logits = true;           // logits of its last token
  int dp_group = 0;                  // the attention-DP group that owns the sequence
  // With want_logits: sample the next token on the backend (the TP-rank 0 of the group does, and
  // the step tells every rank).
  std::optional<SampleRequest> sample;
  // Speculative decoding. The last `num_draft` of `tokens` are drafts to verify (needs `sample`):
  // a token is sampled after each of the last num_draft + 1 positions (draw indices
  // sample->index, +1, ...), and drafts are kept up to the first the target disagrees with
  // (VerifyDraft); StepOutput::next_tokens has the tokens after the first.
  int num_draft = 0;
  // Runs the MTP layer (EngineOptions::mtp) over this entry's positions whose next token is known
  // by the end of the step, keeping its cache complete, and with `sample` drafts the
  // EngineOptions::mtp_draft_tokens tokens after the last sampled one (StepOutput::drafts; the
  // layer applied again to its own output for each further token, writing its cache at the
  // drafts' positions: the block table must cover mtp_draft_tokens - 1 positions past the step's).
  // A chunk that samples nothing (a prefill chunk before the prompt's end) gives `lookahead`, the
  // prompt's token after the chunk.
  bool mtp = false;
  int32_t lookahead = -1;
};

// What one step produced. The engine's own type; the coordinator's protocol has
// moe::v1::StepResult.
struct StepOutput {
  // Per logits row: the sequences of this rank's DP group that wanted logits (one row each, or
  // 1 + num_draft rows with drafts: those positions' logits, whether accepted or not).
  std::vector<int64_t> seq_ids;
  Tensor logits;  // [seq_ids.size(), vocab], unless the step asked for none
  // On every rank (world rank 0 only, the others holding their own part, without
  // EngineOptions::tokens_on_every_rank; so too expert_tokens and next_tokens), per entry of the
  // step (every DP group's): the sampled token, or -1.
  std::vector<int32_t> tokens;
  // On every rank: the tokens routed to each routed expert in this step, summed over the ranks.
  std::vector<int64_t> expert_tokens;
  // On every rank, per entry of the step: the log-probabilities its sample asked for (else empty).
  std::vector<TokenLogprobs> logprobs;
  // On every rank, per entry: the tokens sampled after `tokens[i]` in this step — its accepted
  // drafts, then the token after the last of them (empty without drafts) — and the MTP layer's
  // drafts of the tokens after all of them (empty when the entry did not ask).
  std::vector<std::vector<int32_t>> next_tokens;
  std::vector<std::vector<int32_t>> drafts;
};

absl::StatusOr<Device> ParseDevice(const std::string& name);  // "cpu" | "cuda"

struct EngineOptions {
  int64_t block_size = 64;  // tokens per KV block
  int64_t kv_blocks = 0;    // blocks in this rank's cache (see KvCache::BlocksForBudget)
  Device device = Device::kCpu;
  int cuda_device = 0;      // the GPU ordinal (of those CUDA_VISIBLE_DEVICES shows)
  bool cuda_graphs = true;  // replay decode-only steps from CUDA graphs
  // CPU: what loading does with the weights (as stored; float32, the reference path; fp8).
  WeightsAtLoad weights = WeightsAtLoad::kAsStored;
  // CPU: what products do with x (float32; bf16 or int8 rounded, see Activations).
  Activations activations = Activations::kF32;
  // Load the MTP layer (and its cache layer) for speculative decoding (CPU backend), drafting
  // this many tokens per step (DeepSeek deploys 1).
  bool mtp = false;
  int mtp_draft_tokens = 1;
  // CPU: two micro-batches per step, one's MoE all-to-all overlapping the other's compute (every
  // rank alike; TP size 1). See DecoderModelOptions.
  bool two_batch_overlap = false;
  // Whether every rank needs the step's sampled tokens and expert counts (StepOutput::tokens,
  // next_tokens, expert_tokens): the offline generator does; a served worker only reports them
  // from world rank 0, so with false they are summed onto that rank alone (the MTP layer's
  // inputs need them everywhere, so with mtp they still go to every rank).
  bool tokens_on_every_rank = true;
};

class Engine {
 public:
  // Collective over the context's world: returns an error on every rank if any rank failed.
  static absl::StatusOr<std::unique_ptr<Engine>> Load(const std::string& model_dir,
                                                      std::unique_ptr<ParallelContext> ctx,
                                                      const EngineOptions& options);
  // An engine over a model already loaded (one rank; a test's model over an op set of its own).
  static std::unique_ptr<Engine> Over(const ModelConfig& config,
                                      std::unique_ptr<ParallelContext> ctx,
                                      std::unique_ptr<ForwardModel> model,
                                      const EngineOptions& options) {
    return std::unique_ptr<Engine>(new Engine(config, std::move(ctx), std::move(model), options));
  }

  // Checks the whole step (every group's sequences, so all ranks agree) before any collective:
  // token ids inside the vocabulary, positions inside max_position_embeddings, block tables
  // covering each sequence and inside the cache. Errors name the sequence.
  absl::Status Validate(const std::vector<SequenceStep>& step) const;
  // EPLB: moves the MoE layers' experts (one placement per decoder MoE layer). Collective: an
  // error on every rank if any rank failed.
  absl::Status SetExpertPlacement(const std::vector<ExpertPlacement>& layers);
  // Collective over the world. Without `return_logits` the output carries only the sampled
  // tokens (a GPU backend then copies no logits to the host).
  absl::StatusOr<StepOutput> Step(const std::vector<SequenceStep>& step, bool return_logits = true);

  const ModelConfig& config() const { return config_; }
  const ParallelContext& parallel() const { return *ctx_; }
  ForwardModel& model() { return *model_; }
  KvCache* host_kv_cache() { return model_->host_kv_cache(); }
  int64_t block_size() const { return options_.block_size; }
  int64_t num_blocks() const { return options_.kv_blocks; }
  int mtp_draft_tokens() const { return options_.mtp_draft_tokens; }
  const KvLayout& kv_layout() const { return kv_layout_; }

 private:
  Engine(const ModelConfig& config, std::unique_ptr<ParallelContext> ctx,
         std::unique_ptr<ForwardModel> model, const EngineOptions& options)
      : config_(config),
        rope_(config),
        ctx_(std::move(ctx)),
        model_(std::move(model)),
        options_(options),
        kv_layout_(KvLayout::For(config, options.mtp ? 1 : 0)),
        expert_counts_(model_->ExpertTokenCounts()) {}
  // One sum over the world: every entry's sampled tokens (from its group's TP-rank 0: `sampled`,
  // by step entry, 1 + num_draft slots each) and the step's per-expert token counts, on every rank.
  absl::Status ShareSampledTokens(const std::vector<SequenceStep>& step,
                                  const std::vector<std::vector<int32_t>>& sampled,
                                  StepOutput* out);
  // The MTP layer over every entry that asked (a collective: every rank runs it, with or without
  // rows), then one sum over the world of the drafts.
  absl::Status RunMtp(const std::vector<SequenceStep>& step, const ForwardBatch& batch,
                      StepOutput* out);
  // Two sums over the world (values, ids) when any entry of the step asked for log-probabilities:
  // `mine` (this rank's, by step entry) reaches every rank in out->logprobs.
  absl::Status ShareLogprobs(const std::vector<SequenceStep>& step,
                             const std::vector<std::pair<int64_t, TokenLogprobs>>& mine,
                             StepOutput* out);
  ModelConfig config_;
  RotaryEmbedding rope_;
  std::unique_ptr<ParallelContext> ctx_;
  std::unique_ptr<ForwardModel> model_;
  EngineOptions options_;
  KvLayout kv_layout_;
  std::vector<int64_t> expert_counts_;  // the backend's running counts after the last step
};

}  // namespace moe

// Engine: one rank's executor of steps. A step is a batch of sequences of different lengths —
// prefill chunks and single decode tokens mixed — each with the cache blocks that hold its
// positions (the scheduler owns block assignment). Every rank of the engine runs every step:
// ranks of one attention-DP group process that group's sequences; all ranks meet in the MoE
// all-to-all.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "parallel/parallel_context.h"
#include "worker/kv_cache.h"
#include "worker/model.h"

namespace moe {

struct SequenceStep {
  int64_t seq_id = 0;
  std::vector<int32_t> tokens;       // the tokens to process in this step
  int64_t start_pos = 0;             // position of tokens[0]
  std::vector<int32_t> block_table;  // blocks covering positions [0, start_pos + tokens.size())
  bool want_logits = true;           // logits of its last token
  int dp_group = 0;                  // the attention-DP group that owns the sequence
};

struct StepResult {
  std::vector<int64_t> seq_ids;  // sequences of this rank's DP group that wanted logits
  Tensor logits;                 // [seq_ids.size(), vocab]
};

struct EngineOptions {
  int64_t block_size = 64;  // tokens per KV block
  int64_t kv_blocks = 0;    // blocks in this rank's cache (see KvCache::BlocksForBudget)
};

class Engine {
 public:
  // Collective over the context's world: returns an error on every rank if any rank failed.
  static absl::StatusOr<std::unique_ptr<Engine>> Load(const std::string& model_dir,
                                                      std::unique_ptr<ParallelContext> ctx,
                                                      const EngineOptions& options);

  // Checks the whole step (every group's sequences, so all ranks agree) before any collective:
  // token ids inside the vocabulary, positions inside max_position_embeddings, block tables
  // covering each sequence and inside the cache. Errors name the sequence.
  absl::Status Validate(const std::vector<SequenceStep>& step) const;
  absl::StatusOr<StepResult> Step(const std::vector<SequenceStep>& step);

  const ModelConfig& config() const { return model_->config(); }
  const ParallelContext& parallel() const { return *ctx_; }
  DeepseekV3Model& model() { return *model_; }
  int64_t block_size() const { return cache_.block_size(); }
  int64_t num_blocks() const { return cache_.num_blocks(); }

 private:
  Engine(std::unique_ptr<ParallelContext> ctx, std::unique_ptr<DeepseekV3Model> model,
         KvCache cache)
      : ctx_(std::move(ctx)), model_(std::move(model)), cache_(std::move(cache)) {}
  std::unique_ptr<ParallelContext> ctx_;
  std::unique_ptr<DeepseekV3Model> model_;
  KvCache cache_;
};

}  // namespace moe

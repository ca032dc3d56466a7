// Offline greedy generation on an Engine: prefill the prompt (in chunks), then decode one token
// per step (or, speculating with the MTP layer, one or two), keeping each position's logits. The reference path for tests and `moe-generate`. On a
// multi-rank engine every rank calls it with the same arguments.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tensor.h"
#include "worker/engine.h"

namespace moe {

struct GenerateOptions {
  int64_t max_new_tokens = 16;
  int64_t prefill_chunk = 0;  // tokens per prefill step; 0: the whole prompt at once
  bool stop_at_eos = false;
  bool use_cache = true;  // false: recompute every step from the full sequence (a check)
  // false: the backend picks each greedy token and no logits are kept (Generation::logits is
  // empty) — a GPU backend then copies only token ids to the host.
  bool keep_logits = true;
  // Speculative decoding with the MTP layer (an engine loaded with EngineOptions::mtp): every
  // decode step verifies the MTP layer's draft of the next token besides sampling one. The
  // tokens and logits equal those without it.
  bool speculative = false;
  // Called before every step after the first with the step's index (1, 2, ...), on every rank —
  // e.g. to move the experts (Engine::SetExpertPlacement); an error ends the generation.
  std::function<absl::Status(int64_t step)> between_steps;
};

struct Generation {
  std::vector<int32_t> tokens;  // the new tokens
  // [1 + tokens.size(), vocab]: the prompt's last position, then the step after each new token.
  Tensor logits;
  // Speculative decoding: drafts verified, and accepted.
  int64_t drafts = 0, accepted = 0;
  int64_t steps = 0;  // engine steps the sequence took part in
};

// Runs one sequence alone. Uses (and returns) blocks of `allocator`.
absl::StatusOr<Generation> GenerateGreedy(Engine& engine, BlockAllocator& allocator,
                                          const std::vector<int32_t>& prompt,
                                          const GenerateOptions& options);

// Several sequences at once: all prompts prefilled in one step, then decoded together. On a
// multi-rank engine sequence i belongs to attention-DP group i % D; every rank returns every
// sequence's tokens, and logits for the sequences of its own DP group (others: no rows).
absl::StatusOr<std::vector<Generation>> GenerateGreedyBatch(
    Engine& engine, BlockAllocator& allocator, const std::vector<std::vector<int32_t>>& prompts,
    const GenerateOptions& options);

}  // namespace moe

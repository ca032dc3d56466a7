#include "worker/generator.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cpu/ops.h"

namespace moe {
namespace {

struct Running {
  std::vector<int32_t> all;  // prompt + generated
  std::vector<int32_t> blocks;
  int64_t cached = 0;  // positions already in the cache
  Generation gen;
  bool done = false;
};

}  // namespace

absl::StatusOr<std::vector<Generation>> GenerateGreedyBatch(
    Engine& engine, BlockAllocator& allocator, const std::vector<std::vector<int32_t>>& prompts,
    const GenerateOptions& opt) {
  const ModelConfig& c = engine.config();
  const int64_t vocab = c.vocab_size, bs = engine.block_size();
  std::vector<Running> seqs(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (prompts[i].empty()) return absl::InvalidArgumentError("empty prompt");
    const int64_t total = static_cast<int64_t>(prompts[i].size()) + opt.max_new_tokens;
    if (total > c.max_position_embeddings) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt of ", prompts[i].size(), " tokens + ", opt.max_new_tokens,
                       " new tokens exceeds max_position_embeddings ", c.max_position_embeddings));
    }
    seqs[i].all = prompts[i];
  }
  auto release = [&]() {
    for (Running& r : seqs) allocator.Free(&r.blocks);
  };
  std::vector<std::vector<float>> rows(prompts.size());
  bool any = true;
  while (any) {
    std::vector<SequenceStep> step;
    for (size_t i = 0; i < seqs.size(); ++i) {
      Running& r = seqs[i];
      if (r.done) continue;
      SequenceStep s;
      s.seq_id = static_cast<int64_t>(i);
      s.dp_group = static_cast<int>(i % static_cast<size_t>(engine.parallel().plan().dp_size()));
      const int64_t len = static_cast<int64_t>(r.all.size());
      s.start_pos = opt.use_cache ? r.cached : 0;
      int64_t end = len;
      if (opt.use_cache && opt.prefill_chunk > 0) end = std::min(len, r.cached + opt.prefill_chunk);
      s.tokens.assign(r.all.begin() + s.start_pos, r.all.begin() + end);
      s.want_logits = end == len;
      if (!opt.keep_logits) s.sampling = SamplingSpec{};  // greedy, on the backend
      if (absl::Status st = allocator.EnsureCapacity(&r.blocks, end, bs); !st.ok()) {
        release();
        return st;
      }
      s.block_table = r.blocks;
      r.cached = end;
      step.push_back(std::move(s));
    }
    auto result = engine.Step(step, opt.keep_logits);
    if (!result.ok()) {
      release();
      return result.status();
    }
    // Each sequence belongs to one attention-DP group (round-robin); that group's TP-rank 0
    // decides for it, and a sum over the world tells every rank, so all ranks run the same steps.
    // decision: 0 nothing (a prefill chunk that is not the last), 1 done, token + 2.
    const bool decides = engine.parallel().shard().tp_rank == 0;
    std::vector<int64_t> decision(seqs.size(), 0);
    for (size_t j = 0; j < result->seq_ids.size(); ++j) {
      const size_t i = static_cast<size_t>(result->seq_ids[j]);
      Running& r = seqs[i];
      int32_t next = result->tokens[j];
      if (opt.keep_logits) {
        const float* row = result->logits.row(static_cast<int64_t>(j));
        rows[i].insert(rows[i].end(), row, row + vocab);
        next = static_cast<int32_t>(cpu::ArgMax(row, vocab));
      }
      const int64_t produced = static_cast<int64_t>(r.gen.tokens.size());
      const bool after_eos =
          opt.stop_at_eos && produced > 0 &&
          std::count(c.eos_token_ids.begin(), c.eos_token_ids.end(), r.gen.tokens.back()) > 0;
      // The step after the last new token only supplies its logits.
      if (decides) decision[i] = produced == opt.max_new_tokens || after_eos ? 1 : next + 2;
    }
    Communicator& world = engine.parallel().world();
    if (world.size() > 1) {
      if (absl::Status st = world.AllReduceSum(decision.data(), decision.size()); !st.ok()) {
        release();
        return st;
      }
    }
    for (size_t i = 0; i < seqs.size(); ++i) {
      if (decision[i] == 1) {
        seqs[i].done = true;
      } else if (decision[i] >= 2) {
        seqs[i].gen.tokens.push_back(static_cast<int32_t>(decision[i] - 2));
        seqs[i].all.push_back(static_cast<int32_t>(decision[i] - 2));
      }
    }
    any = false;
    for (const Running& r : seqs) any |= !r.done;
  }
  release();
  std::vector<Generation> out;
  for (size_t i = 0; i < seqs.size(); ++i) {
    Generation g = std::move(seqs[i].gen);
    if (opt.keep_logits) {
      const int64_t n = static_cast<int64_t>(rows[i].size()) / vocab;
      FloatVector data(rows[i].begin(), rows[i].end());
      g.logits = Tensor({n, vocab}, std::move(data));
    }
    out.push_back(std::move(g));
  }
  return out;
}

absl::StatusOr<Generation> GenerateGreedy(Engine& engine, BlockAllocator& allocator,
                                          const std::vector<int32_t>& prompt,
                                          const GenerateOptions& options) {
  MOE_ASSIGN_OR_RETURN(auto gens, GenerateGreedyBatch(engine, allocator, {prompt}, options));
  return std::move(gens[0]);
}

}  // namespace moe

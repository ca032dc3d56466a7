#include "worker/generator.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace moe {
namespace {

struct Running {
  std::vector<int32_t> all;  // prompt + generated
  std::vector<int32_t> blocks;
  std::vector<std::vector<int32_t>> window_blocks;  // per window group of the KvLayout
  int64_t cached = 0;  // positions already in the cache
  std::vector<int32_t> drafts;  // the MTP layer's drafts of the tokens after `all`
  Generation gen;
  std::vector<float> logits;  // rows of gen.logits, while running
  bool done = false;
};

absl::StatusOr<std::vector<Running>> Start(const ModelConfig& c,
                                           const std::vector<std::vector<int32_t>>& prompts,
                                           const GenerateOptions& opt) {
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
  return seqs;
}

// The next step: every unfinished sequence's uncached tokens (the prompt, a chunk of it, or the
// last new token), in attention-DP group i % D, greedy-sampled when its last position is in.
absl::StatusOr<std::vector<SequenceStep>> NextStep(const Engine& engine, BlockAllocator& allocator,
                                                   std::vector<Running>& seqs,
                                                   const GenerateOptions& opt) {
  const size_t groups = static_cast<size_t>(engine.parallel().plan().dp_size());
  std::vector<SequenceStep> step;
  for (size_t i = 0; i < seqs.size(); ++i) {
    Running& r = seqs[i];
    if (r.done) continue;
    SequenceStep s;
    s.seq_id = static_cast<int64_t>(i);
    s.dp_group = static_cast<int>(i % groups);
    const int64_t len = static_cast<int64_t>(r.all.size());
    s.start_pos = opt.use_cache ? r.cached : 0;
    int64_t end = len;
    if (opt.use_cache && opt.prefill_chunk > 0) end = std::min(len, r.cached + opt.prefill_chunk);
    s.tokens.assign(r.all.begin() + s.start_pos, r.all.begin() + end);
    s.want_logits = end == len;
    if (s.want_logits) s.sample = SampleRequest{};  // greedy
    if (opt.speculative) {
      s.mtp = true;
      if (!s.want_logits) s.lookahead = r.all[static_cast<size_t>(end)];
      // Drafts are worth verifying only while more tokens than they are still to come.
      const int64_t left = opt.max_new_tokens - static_cast<int64_t>(r.gen.tokens.size());
      const int64_t room = engine.config().max_position_embeddings - end;
      if (s.want_logits) {
        const int64_t n =
            std::min<int64_t>({static_cast<int64_t>(r.drafts.size()), left - 1, room});
        for (int64_t j = 0; j < n; ++j) s.tokens.push_back(r.drafts[static_cast<size_t>(j)]);
        s.num_draft = static_cast<int>(std::max<int64_t>(0, n));
      }
    }
    // Drafting k tokens writes the MTP layer's cache k - 1 positions past the step's.
    int64_t ahead = 0;
    if (opt.speculative && s.want_logits) {
      ahead = std::min<int64_t>(engine.mtp_draft_tokens() - 1,
                                engine.config().max_position_embeddings - end - s.num_draft);
    }
    // Window groups first give back the blocks no query from here on sees.
    const KvLayout& layout = engine.kv_layout();
    const int64_t covered = end + s.num_draft + ahead, bs = engine.block_size();
    r.window_blocks.resize(static_cast<size_t>(layout.window_groups()));
    layout.ReleasePassedBlocks(r.window_blocks, s.start_pos, bs,
                               [&](int32_t block) { allocator.Free(block); });
    MOE_RETURN_IF_ERROR(allocator.EnsureCapacity(&r.blocks, covered, bs));
    for (std::vector<int32_t>& table : r.window_blocks) {
      MOE_RETURN_IF_ERROR(allocator.EnsureCapacity(&table, covered, bs));
    }
    s.block_table = r.blocks;
    s.window_block_tables = r.window_blocks;
    step.push_back(std::move(s));
  }
  return step;
}

// Every rank has every sampled token, so every rank makes the same decisions and runs the same
// next step. The step after the last new token (or after an end-of-sequence token) only supplies
// its logits.
void Advance(const ModelConfig& c, const std::vector<SequenceStep>& step, const StepOutput& out,
             const GenerateOptions& opt, std::vector<Running>& seqs) {
  // Per entry: the new tokens of this step, in order.
  std::vector<std::vector<int32_t>> made(step.size());
  for (size_t k = 0; k < step.size(); ++k) {
    if (out.tokens[k] < 0) continue;
    made[k].push_back(out.tokens[k]);
    made[k].insert(made[k].end(), out.next_tokens[k].begin(), out.next_tokens[k].end());
  }
  if (opt.keep_logits) {
    // Logits rows come per entry of this rank's group in step order; an entry with drafts has
    // one row per verified position, of which those of its new tokens count.
    size_t row = 0;
    for (size_t k = 0; k < step.size() && row < out.seq_ids.size(); ++k) {
      if (!step[k].want_logits || out.seq_ids[row] != step[k].seq_id) continue;
      std::vector<float>& rows = seqs[static_cast<size_t>(step[k].seq_id)].logits;
      for (int j = 0; j <= step[k].num_draft; ++j, ++row) {
        if (j > 0 && static_cast<size_t>(j) >= made[k].size()) continue;
        const float* r = out.logits.row(static_cast<int64_t>(row));
        rows.insert(rows.end(), r, r + c.vocab_size);
      }
    }
  }
  for (size_t k = 0; k < step.size(); ++k) {
    Running& r = seqs[static_cast<size_t>(step[k].seq_id)];
    ++r.gen.steps;
    // Cached now: the positions before this step's last non-draft token, that token's, and
    // those of the drafts the target accepted.
    const int64_t accepted =
        std::min<int64_t>(step[k].num_draft, std::max<int64_t>(0, static_cast<int64_t>(made[k].size()) - 1));
    r.cached = step[k].start_pos + static_cast<int64_t>(step[k].tokens.size()) -
               step[k].num_draft + accepted;
    if (!step[k].want_logits) continue;
    r.gen.drafts += step[k].num_draft;
    r.gen.accepted += accepted;
    r.drafts = out.drafts.empty() ? std::vector<int32_t>() : out.drafts[k];
    for (int32_t token : made[k]) {
      const std::vector<int32_t>& so_far = r.gen.tokens;
      const bool after_eos = opt.stop_at_eos && !so_far.empty() &&
                             std::count(c.eos_token_ids.begin(), c.eos_token_ids.end(),
                                        so_far.back());
      if (static_cast<int64_t>(so_far.size()) == opt.max_new_tokens || after_eos) {
        r.done = true;
        break;
      }
      r.gen.tokens.push_back(token);
      r.all.push_back(token);
    }
  }
}

}  // namespace

absl::StatusOr<std::vector<Generation>> GenerateGreedyBatch(
    Engine& engine, BlockAllocator& allocator, const std::vector<std::vector<int32_t>>& prompts,
    const GenerateOptions& opt) {
  const ModelConfig& c = engine.config();
  MOE_ASSIGN_OR_RETURN(std::vector<Running> seqs, Start(c, prompts, opt));
  absl::Status status;
  for (int64_t index = 0;
       std::any_of(seqs.begin(), seqs.end(), [](const Running& r) { return !r.done; }); ++index) {
    if (index > 0 && opt.between_steps) {
      status = opt.between_steps(index);
      if (!status.ok()) break;
    }
    auto step = NextStep(engine, allocator, seqs, opt);
    if (!step.ok()) {
      status = step.status();
      break;
    }
    auto out = engine.Step(*step, opt.keep_logits);
    if (!out.ok()) {
      status = out.status();
      break;
    }
    Advance(c, *step, *out, opt, seqs);
  }
  for (Running& r : seqs) {
    allocator.Free(&r.blocks);
    for (std::vector<int32_t>& table : r.window_blocks) allocator.Free(&table);
  }
  MOE_RETURN_IF_ERROR(status);
  std::vector<Generation> gens;
  for (Running& r : seqs) {
    if (opt.keep_logits) {
      const int64_t rows = static_cast<int64_t>(r.logits.size()) / c.vocab_size;
      r.gen.logits = Tensor({rows, c.vocab_size}, FloatVector(r.logits.begin(), r.logits.end()));
    }
    gens.push_back(std::move(r.gen));
  }
  return gens;
}

absl::StatusOr<Generation> GenerateGreedy(Engine& engine, BlockAllocator& allocator,
                                          const std::vector<int32_t>& prompt,
                                          const GenerateOptions& options) {
  MOE_ASSIGN_OR_RETURN(auto gens, GenerateGreedyBatch(engine, allocator, {prompt}, options));
  return std::move(gens[0]);
}

}  // namespace moe

// Iteration-level continuous batching (the serving loop's state machine):
//   - requests wait in arrival order; each step first continues the running sequences (a decode
//     token, or the next chunk of a prompt), then admits waiting ones first come first served,
//     within a token budget per step (prefill is chunked to it);
//   - each attention-DP group has its own KV cache (a PrefixCache): a sequence is placed in the
//     group holding the longest cached prefix of its prompt (then: the most blocks to be had),
//     starts after that prefix, and its full computed blocks are cached for later sequences;
//   - a model with window layers (KvLayout) keeps a table per layer group: a sequence gives back
//     the blocks of a window group that no later query sees, before each step;
//   - when blocks run out, the newest running sequence is preempted — its blocks return and it
//     waits again, to be recomputed (prompt + tokens so far) when it is readmitted;
//   - cancelled requests leave at the next step and their blocks return;
//   - speculative decoding (the workers' MTP layer): a decoding sequence's step also carries the
//     MTP layer's last draft; the result can then bring two tokens. A drafted position costs a
//     token of the step's budget and a KV slot; a rejected draft's slot is overwritten next step.
// One step is in flight at a time: NextStep() plans it, Complete() applies its result.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/kv_layout.h"
#include "coordinator/prefix_cache.h"
#include "coordinator/request.h"
#include "moe/v1/cluster.pb.h"

namespace moe {

struct SchedulerOptions {
  int dp_groups = 1;
  int64_t blocks_per_group = 0;
  int64_t block_size = 64;
  int64_t max_step_tokens = 512;  // tokens per step (prefill chunks and decode tokens)
  int64_t max_running = 256;      // sequences in the batch, all groups together
  int64_t max_waiting = 1024;     // queued requests beyond this are refused
  std::vector<int32_t> eos_token_ids;
  bool prefix_cache = true;  // reuse the KV blocks of cached prompt prefixes
  bool speculative = false;  // the workers run the MTP layer: plan drafts, take several tokens
  int mtp_draft_tokens = 1;  // tokens the MTP layer drafts per step
  // How the layers share the blocks: with window layer groups (Gemma 3, Llama 4) a sequence holds
  // a table per group and the blocks a window no longer covers go back; prefix caching is then
  // off (a cached prefix would need the window groups' blocks too). Empty: one table.
  KvLayout kv_layout;
};

struct SchedulerStats {
  int64_t waiting = 0;
  int64_t running = 0;
  int64_t blocks_used = 0;
  int64_t blocks_free = 0;
  int64_t preemptions = 0;  // since start
  PrefixCacheStats prefix_cache;  // all DP groups together
  int64_t drafts = 0, drafts_accepted = 0;  // speculative decoding, since start
};

class Scheduler {
 public:
  explicit Scheduler(SchedulerOptions options);

  // RESOURCE_EXHAUSTED when the queue is full.
  absl::StatusOr<std::shared_ptr<Request>> Submit(RequestParams params);
  // Plans the next step, waiting up to `wait` for work; nullopt when there is none.
  std::optional<moe::v1::StepPlan> NextStep(absl::Duration wait);
  // Applies the result of the step NextStep returned last: appends tokens, finishes requests.
  void Complete(const moe::v1::StepResult& result);
  // Ends every request with `status`, returns every block and forgets every cached prefix (the
  // cluster failed: the workers that held the KV cache are gone).
  void FailAll(const absl::Status& status);
  // Makes a waiting NextStep return (a request was cancelled, the cluster changed).
  void Wake();
  bool idle() const;
  SchedulerStats Stats() const;

 private:
  struct Sequence {
    std::shared_ptr<Request> request;
    std::vector<int32_t> tokens;  // prompt + generated so far
    int64_t computed = 0;         // tokens whose KV is in the cache
    int64_t generated = 0;
    int group = -1;
    std::vector<int32_t> blocks;
    std::vector<std::vector<int32_t>> window_blocks;  // per window group of the KvLayout
    int64_t scheduled = 0;  // tokens in the step in flight (not counting a draft)
    std::vector<int32_t> draft;  // the MTP layer's drafts of the tokens after `tokens`
    int drafted = 0;        // drafts in the step in flight
  };
  using SeqPtr = std::shared_ptr<Sequence>;

  void Release(Sequence& s);
  // Blocks in every one of its tables for `tokens` positions (some tables may have grown when it
  // fails: a retry after preempting continues from there, and Release returns them).
  absl::Status EnsureCapacity(Sequence& s, int64_t tokens);
  void Preempt(const SeqPtr& s);
  void PurgeCancelled();
  bool Schedule(const SeqPtr& s, int64_t* budget);
  // Whether the sequence's next step verifies its draft: it decodes, has one, more than one token
  // is still to come, and it wants no log-probabilities.
  bool WillDraft(const Sequence& s, int64_t n) const;
  void EndSequence(const SeqPtr& s);

  const SchedulerOptions options_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool woken_ = false;
  int64_t next_id_ = 0;
  int64_t next_step_ = 0;
  int64_t preemptions_ = 0;
  int64_t drafts_ = 0, drafts_accepted_ = 0;
  std::list<SeqPtr> waiting_;               // arrival order (request id)
  std::list<SeqPtr> running_;               // admission order
  std::vector<PrefixCache> caches_;  // per DP group
  std::vector<SeqPtr> in_flight_;
};

}  // namespace moe

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
//   - prefill/decode disaggregation (a decode worker group beside the main one): the main group
//     only prefills. When a prompt's last chunk is planned, blocks for its positions are reserved
//     in a decode DP group (the one with the most to be had) and the step that computes the chunk
//     also pushes the KV there (StepPlan.kv_transfers); when none can be had yet the prefilled
//     sequence keeps its blocks and its transfer goes with a later main-group step. Once the
//     transfer is done the sequence decodes in the decode group; its main-group blocks go back
//     (the full ones stay cached for later prompts). A decode-group sequence that is preempted
//     waits again and is prefilled again by the main group. A failed transfer fails its request
//     (UNAVAILABLE); a cancelled one frees its blocks in both groups.
// One step per worker group is in flight at a time: NextStep() plans it, Complete() applies its
// result.
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

// The worker groups steps are planned for: the main group receives the requests (it prefills, and
// decodes too unless there is a decode group).
enum class WorkerGroup { kMain = 0, kDecode = 1 };

struct SchedulerOptions {
  int dp_groups = 1;  // the main group's (blocks_per_group each)
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
  // Prefill/decode disaggregation: the decode group's DP groups and blocks per DP group (0 DP
  // groups: none; the main group decodes).
  int decode_dp_groups = 0;
  int64_t decode_blocks_per_group = 0;
  // How long a push may still write into the decode blocks of a transfer that was in flight when
  // the main group failed (KvPusher's deadline, worker/kv_transfer.h, with a margin): they are
  // handed out again only after it.
  absl::Duration kv_push_deadline = absl::Seconds(130);
};

struct SchedulerStats {
  int64_t waiting = 0;
  int64_t running = 0;
  int64_t blocks_used = 0;
  int64_t blocks_free = 0;
  int64_t preemptions = 0;  // since start
  PrefixCacheStats prefix_cache;  // all DP groups together
  int64_t drafts = 0, drafts_accepted = 0;  // speculative decoding, since start
  // Disaggregation: sequences decoding in the decode group (counted in `running` too), and the
  // KV transfers since start (done, failed) with the bytes the decode group wrote.
  int64_t decode_running = 0;
  int64_t kv_transfers = 0, kv_transfer_failures = 0, kv_transfer_bytes = 0;
};

class Scheduler {
 public:
  explicit Scheduler(SchedulerOptions options);

  // RESOURCE_EXHAUSTED when the queue is full.
  absl::StatusOr<std::shared_ptr<Request>> Submit(RequestParams params);
  // Plans the next step of `group`, waiting up to `wait` for work; nullopt when there is none.
  // A main-group step's kv_transfers name the decode DP group (decode_dp_group) but not its
  // ranks' addresses or session, which the caller adds.
  std::optional<moe::v1::StepPlan> NextStep(absl::Duration wait,
                                            WorkerGroup group = WorkerGroup::kMain);
  // Applies the result of the step NextStep returned last for `group`: appends tokens, finishes
  // requests, moves transferred sequences to the decode group.
  void Complete(const moe::v1::StepResult& result, WorkerGroup group = WorkerGroup::kMain);
  // Ends every request with `status`, returns every block and forgets every cached prefix (the
  // cluster failed: the workers that held the KV cache are gone).
  void FailAll(const absl::Status& status);
  // The main group of a disaggregated deployment failed: ends the requests not yet decoding in
  // the decode group (their reserved decode blocks go back) and forgets the main group's cached
  // prefixes; the decoding ones go on. (The decode group failing is FailAll: no request can end
  // without it.)
  void FailMainGroup(const absl::Status& status);
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
    WorkerGroup where = WorkerGroup::kMain;  // the worker group holding its KV
    int group = -1;                          // its DP group there
    std::vector<int32_t> blocks;
    std::vector<std::vector<int32_t>> window_blocks;  // per window group of the KvLayout
    int64_t scheduled = 0;  // tokens in the step in flight (not counting a draft)
    std::vector<int32_t> draft;  // the MTP layer's drafts of the tokens after `tokens`
    int drafted = 0;        // drafts in the step in flight
    // Disaggregation, in the main group: the prompt is computed (a token was sampled after it),
    // the blocks reserved for its KV in decode DP group `decode_group`, and whether the step in
    // flight transfers it there.
    bool prefilled = false;
    int decode_group = -1;
    std::vector<int32_t> decode_blocks;
    bool transferring = false;
  };
  using SeqPtr = std::shared_ptr<Sequence>;
  // One worker group's side: its DP groups' blocks, its running sequences, its step in flight.
  struct Pool {
    std::vector<PrefixCache> caches;  // per DP group
    std::list<SeqPtr> running;        // admission order
    std::vector<SeqPtr> in_flight;    // computed in the step in flight
    std::vector<SeqPtr> transfers;    // transferred by the step in flight (main group)
    bool woken = false;
  };

  bool disaggregated() const { return options_.decode_dp_groups > 0; }
  Pool& pool(WorkerGroup g) { return pools_[static_cast<int>(g)]; }
  std::optional<moe::v1::StepPlan> Plan(WorkerGroup group);
  // Reserves decode-group blocks for the sequence's `tokens` positions (in the DP group with the
  // most blocks to be had) and adds its transfer to the main group's step; nothing when no DP
  // group can hold them now (it waits, prefilled).
  void PlanTransfer(const SeqPtr& s, int64_t tokens);
  // The sequences of `group` a purge or a failure goes through: its running ones, and for the
  // main group the waiting ones.
  std::vector<std::list<SeqPtr>*> Queues(WorkerGroup group);
  // Applies the main group's transfers: moves the sequences whose KV arrived to the decode group.
  void CompleteTransfers(const moe::v1::StepResult& result);
  // Gives back the quarantined decode blocks whose pushes can no longer arrive.
  void ReleaseQuarantined();
  // Ends every request in `pool` (and, for the main group, the waiting ones) with `status`.
  void FailPool(WorkerGroup group, const absl::Status& status);

  void Release(Sequence& s);
  // Blocks in every one of its tables for `tokens` positions (some tables may have grown when it
  // fails: a retry after preempting continues from there, and Release returns them).
  absl::Status EnsureCapacity(Sequence& s, int64_t tokens);
  void Preempt(const SeqPtr& s);
  void PurgeCancelled(WorkerGroup group);
  bool Schedule(const SeqPtr& s, int64_t* budget);
  // Whether the sequence's next step verifies its draft: it decodes, has one, more than one token
  // is still to come, and it wants no log-probabilities.
  bool WillDraft(const Sequence& s, int64_t n) const;
  void EndSequence(const SeqPtr& s);

  const SchedulerOptions options_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  int64_t next_id_ = 0;
  int64_t next_step_ = 0;
  int64_t preemptions_ = 0;
  int64_t drafts_ = 0, drafts_accepted_ = 0;
  int64_t kv_transfers_ = 0, kv_transfer_failures_ = 0, kv_transfer_bytes_ = 0;
  // Decode blocks a push may still be writing: reserved for a transfer in flight when the main
  // group failed (a wedged rank could still send). They go back once no push can (its deadline).
  struct Quarantined {
    int group;
    std::vector<int32_t> blocks;
    absl::Time until;
  };
  std::vector<Quarantined> quarantined_;
  std::list<SeqPtr> waiting_;  // arrival order (request id)
  Pool pools_[2];              // by WorkerGroup
};

}  // namespace moe

#include "coordinator/scheduler.h"

#include <algorithm>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace moe {

Scheduler::Scheduler(SchedulerOptions options) : options_(std::move(options)) {
  const bool prefix_cache = options_.prefix_cache && options_.kv_layout.window_groups() == 0;
  for (int g = 0; g < options_.dp_groups; ++g) {
    pool(WorkerGroup::kMain)
        .caches.emplace_back(options_.blocks_per_group, options_.block_size, prefix_cache);
  }
  // The decode group admits no prompt: its blocks are a plain free list.
  for (int g = 0; g < options_.decode_dp_groups; ++g) {
    pool(WorkerGroup::kDecode)
        .caches.emplace_back(options_.decode_blocks_per_group, options_.block_size, false);
  }
}

absl::StatusOr<std::shared_ptr<Request>> Scheduler::Submit(RequestParams params) {
  std::lock_guard<std::mutex> lock(mu_);
  if (static_cast<int64_t>(waiting_.size()) >= options_.max_waiting) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the request queue is full (", options_.max_waiting,
                     " waiting: --max-queue; at most --max-running run at once)"));
  }
  auto s = std::make_shared<Sequence>();
  s->tokens = params.prompt;
  s->window_blocks.resize(static_cast<size_t>(options_.kv_layout.window_groups()));
  s->request = std::make_shared<Request>(next_id_++, std::move(params), absl::Now());
  waiting_.push_back(s);
  cv_.notify_all();
  return s->request;
}

void Scheduler::Wake() {
  std::lock_guard<std::mutex> lock(mu_);
  for (Pool& p : pools_) p.woken = true;
  cv_.notify_all();
}

bool Scheduler::idle() const {
  std::lock_guard<std::mutex> lock(mu_);
  return waiting_.empty() && pools_[0].running.empty() && pools_[1].running.empty();
}

void Scheduler::Release(Sequence& s) {
  if (s.decode_group >= 0) {
    pool(WorkerGroup::kDecode).caches[s.decode_group].Release(&s.decode_blocks);
    s.decode_group = -1;
  }
  if (s.group < 0) return;
  PrefixCache& cache = pool(s.where).caches[s.group];
  cache.Release(&s.blocks);
  for (std::vector<int32_t>& table : s.window_blocks) cache.Release(&table);
}

absl::Status Scheduler::EnsureCapacity(Sequence& s, int64_t tokens) {
  PrefixCache& cache = pool(s.where).caches[s.group];
  MOE_RETURN_IF_ERROR(cache.EnsureCapacity(&s.blocks, tokens));
  for (std::vector<int32_t>& table : s.window_blocks) {
    MOE_RETURN_IF_ERROR(cache.EnsureCapacity(&table, tokens));
  }
  return absl::OkStatus();
}

void Scheduler::Preempt(const SeqPtr& s) {
  Release(*s);
  pool(s->where).running.remove(s);
  s->computed = 0;
  s->draft.clear();
  s->group = -1;
  s->where = WorkerGroup::kMain;
  s->prefilled = false;
  // Back among the waiting, in arrival order: it resumes before later arrivals.
  auto it = std::find_if(waiting_.begin(), waiting_.end(),
                         [&](const SeqPtr& w) { return w->request->id() > s->request->id(); });
  waiting_.insert(it, s);
  ++preemptions_;
}

void Scheduler::PurgeCancelled(WorkerGroup group) {
  for (std::list<SeqPtr>* list : Queues(group)) {
    for (auto it = list->begin(); it != list->end();) {
      if ((*it)->request->cancelled()) {
        Release(**it);
        (*it)->request->Fail(absl::CancelledError("cancelled by the client"));
        it = list->erase(it);
      } else {
        ++it;
      }
    }
  }
}

bool Scheduler::WillDraft(const Sequence& s, int64_t n) const {
  const RequestParams& p = s.request->params();
  return options_.speculative && !s.draft.empty() &&
         s.computed + n == static_cast<int64_t>(s.tokens.size()) &&
         s.generated + 1 < p.max_tokens && !p.sampling.logprobs();
}

// Reserves blocks for the sequence's next chunk (and its draft) and adds it to the step. Returns
// false (nothing scheduled) when its group cannot hold the chunk even after preempting newer
// sequences.
bool Scheduler::Schedule(const SeqPtr& s, int64_t* budget) {
  const int64_t remaining = static_cast<int64_t>(s->tokens.size()) - s->computed;
  const int64_t n = std::min(remaining, *budget);
  if (n <= 0) return false;
  const RequestParams& params = s->request->params();
  // Drafts to verify: as many as the MTP layer made, the budget holds, and tokens are still to
  // come after them.
  const int drafted =
      WillDraft(*s, n)
          ? static_cast<int>(std::max<int64_t>(
                0, std::min<int64_t>({static_cast<int64_t>(s->draft.size()), *budget - n,
                                      params.max_tokens - s->generated - 1})))
          : 0;
  // A chunk that samples drafts the next tokens: drafting k of them writes the MTP layer's cache
  // k - 1 positions past the step's.
  const bool samples = s->computed + n == static_cast<int64_t>(s->tokens.size());
  const int64_t ahead = options_.speculative && samples ? options_.mtp_draft_tokens - 1 : 0;
  // The window groups' blocks that no query from this chunk on sees go back first.
  Pool& p = pool(s->where);
  PrefixCache& cache = p.caches[s->group];
  options_.kv_layout.ReleasePassedBlocks(s->window_blocks, s->computed, options_.block_size,
                                         [&](int32_t block) { cache.Release(block); });
  while (!EnsureCapacity(*s, s->computed + n + drafted + ahead).ok()) {
    // Preempt the newest running sequence of this group that is not in this step.
    SeqPtr victim;
    for (const SeqPtr& r : p.running) {
      if (r->group == s->group && r != s && r->scheduled == 0 && !r->transferring &&
          (!victim || r->request->id() > victim->request->id())) {
        victim = r;
      }
    }
    if (!victim || victim->request->id() < s->request->id()) return false;
    Preempt(victim);
  }
  s->scheduled = n;
  s->drafted = drafted;
  *budget -= n + drafted;
  p.in_flight.push_back(s);
  // Disaggregated, the step that computes a prompt's end also sends its KV to the decode group,
  // when blocks can be had there now.
  if (samples && disaggregated() && s->where == WorkerGroup::kMain &&
      s->generated + 1 < params.max_tokens) {
    PlanTransfer(s, s->computed + n);
  }
  return true;
}

void Scheduler::PlanTransfer(const SeqPtr& s, int64_t tokens) {
  std::vector<PrefixCache>& caches = pool(WorkerGroup::kDecode).caches;
  int best = 0;
  for (int g = 1; g < static_cast<int>(caches.size()); ++g) {
    if (caches[g].available_blocks() > caches[best].available_blocks()) best = g;
  }
  if (!caches[best].EnsureCapacity(&s->decode_blocks, tokens).ok()) return;
  s->decode_group = best;
  s->transferring = true;
  pool(WorkerGroup::kMain).transfers.push_back(s);
}

std::vector<std::list<Scheduler::SeqPtr>*> Scheduler::Queues(WorkerGroup group) {
  std::vector<std::list<SeqPtr>*> lists = {&pool(group).running};
  if (group == WorkerGroup::kMain) lists.push_back(&waiting_);
  return lists;
}

std::optional<moe::v1::StepPlan> Scheduler::NextStep(absl::Duration wait, WorkerGroup group) {
  std::unique_lock<std::mutex> lock(mu_);
  const auto deadline = std::chrono::steady_clock::now() + absl::ToChronoNanoseconds(wait);
  while (true) {
    std::optional<moe::v1::StepPlan> plan = Plan(group);
    if (plan || pool(group).woken) {
      pool(group).woken = false;
      return plan;
    }
    // Anything that can make work (a request, a cancellation, the other group's step) notifies.
    if (cv_.wait_until(lock, deadline) == std::cv_status::timeout) return Plan(group);
  }
}

std::optional<moe::v1::StepPlan> Scheduler::Plan(WorkerGroup group) {
  if (group == WorkerGroup::kDecode && !disaggregated()) return std::nullopt;
  if (!quarantined_.empty()) ReleaseQuarantined();
  PurgeCancelled(group);
  Pool& pl = pool(group);
  pl.in_flight.clear();
  pl.transfers.clear();
  int64_t budget = options_.max_step_tokens;
  // 1. Running sequences, oldest first. One that cannot get blocks is preempted itself. A
  //    prefilled one (main group, disaggregated) only waits for decode blocks for its transfer.
  const std::vector<SeqPtr> running(pl.running.begin(), pl.running.end());
  for (const SeqPtr& s : running) {
    if (s->group < 0) continue;  // preempted earlier in this loop
    if (s->prefilled) {
      PlanTransfer(s, s->computed);
      continue;
    }
    if (budget <= 0) continue;
    if (!Schedule(s, &budget)) Preempt(s);
  }
  // 2. Waiting sequences, first come first served: stop at the first that does not fit. (The
  //    decode group of a disaggregated deployment admits none: its sequences come transferred.)
  std::vector<PrefixCache>& caches = pl.caches;
  while (group == WorkerGroup::kMain && !waiting_.empty() && budget > 0 &&
         static_cast<int64_t>(pl.running.size()) < options_.max_running) {
    const SeqPtr s = waiting_.front();
    // The group with the longest cached prefix of the sequence, then the most blocks to be had.
    int best = 0;
    int64_t best_hit = caches[0].Peek(s->tokens);
    for (int g = 1; g < options_.dp_groups; ++g) {
      const int64_t hit = caches[g].Peek(s->tokens);
      if (hit > best_hit ||
          (hit == best_hit && caches[g].available_blocks() > caches[best].available_blocks())) {
        best = g;
        best_hit = hit;
      }
    }
    s->group = best;
    s->computed = caches[best].Match(s->tokens, &s->blocks);
    if (!Schedule(s, &budget)) {
      Release(*s);
      s->computed = 0;
      s->group = -1;
      break;
    }
    caches[best].RecordLookup(static_cast<int64_t>(s->tokens.size()), s->computed);
    waiting_.pop_front();
    pl.running.push_back(s);
  }
  if (pl.in_flight.empty() && pl.transfers.empty()) return std::nullopt;
  moe::v1::StepPlan plan;
  plan.set_step(next_step_++);
  for (const SeqPtr& s : pl.in_flight) {
    moe::v1::SequencePlan* p = plan.add_sequences();
    p->set_seq_id(s->request->id());
    p->mutable_tokens()->Add(s->tokens.begin() + s->computed,
                             s->tokens.begin() + s->computed + s->scheduled);
    p->set_start_pos(s->computed);
    p->mutable_block_table()->Add(s->blocks.begin(), s->blocks.end());
    for (const std::vector<int32_t>& table : s->window_blocks) {
      p->add_window_block_tables()->mutable_blocks()->Add(table.begin(), table.end());
    }
    p->set_dp_group(s->group);
    const bool last_chunk = s->computed + s->scheduled == static_cast<int64_t>(s->tokens.size());
    p->set_sample(last_chunk);
    if (last_chunk) {
      *p->mutable_sampling() = s->request->params().sampling;
      p->set_sample_index(s->generated);
    }
    if (options_.speculative) {
      p->set_mtp(true);
      if (!last_chunk) p->set_lookahead(s->tokens[static_cast<size_t>(s->computed + s->scheduled)]);
      if (s->drafted > 0) {
        p->mutable_tokens()->Add(s->draft.begin(), s->draft.begin() + s->drafted);
        p->set_num_draft(s->drafted);
      }
    }
  }
  for (const SeqPtr& s : pl.transfers) {
    moe::v1::KvTransferPlan* t = plan.add_kv_transfers();
    // The positions computed by the end of this step: the prompt (and, after a preemption, the
    // tokens generated before it); the sampled token's are the decode group's to compute.
    const int64_t tokens = s->computed + s->scheduled;
    const int64_t blocks = (tokens + options_.block_size - 1) / options_.block_size;
    t->set_seq_id(s->request->id());
    t->set_dp_group(s->group);
    t->mutable_blocks()->Add(s->blocks.begin(), s->blocks.begin() + blocks);
    t->set_tokens(tokens);
    t->mutable_decode_blocks()->Add(s->decode_blocks.begin(), s->decode_blocks.end());
    t->set_decode_dp_group(s->decode_group);
  }
  return plan;
}

void Scheduler::EndSequence(const SeqPtr& s) {
  Release(*s);
  pool(s->where).running.remove(s);
}

void Scheduler::Complete(const moe::v1::StepResult& result, WorkerGroup group) {
  std::lock_guard<std::mutex> lock(mu_);
  cv_.notify_all();  // blocks came back, or sequences reached the decode group
  Pool& pl = pool(group);
  for (const SeqPtr& s : pl.in_flight) {
    s->computed += s->scheduled;
    s->scheduled = 0;
  }
  absl::flat_hash_map<int64_t, SeqPtr> by_id;
  for (const SeqPtr& s : pl.in_flight) by_id.emplace(s->request->id(), s);
  std::vector<SeqPtr> ended;
  for (int i = 0; i < result.seq_ids_size(); ++i) {
    auto it = by_id.find(result.seq_ids(i));
    if (it == by_id.end()) continue;
    const SeqPtr s = it->second;
    if (s->request->cancelled() || s->group < 0) continue;  // leaves at the next step
    if (disaggregated() && group == WorkerGroup::kMain) s->prefilled = true;
    // This step's tokens: the first sampled one, then (speculating) those after it.
    std::vector<int32_t> made = {result.tokens(i)};
    if (i < result.next_tokens_size()) {
      made.insert(made.end(), result.next_tokens(i).ids().begin(), result.next_tokens(i).ids().end());
    }
    // An accepted draft's position is computed: its KV holds the token that was emitted there.
    const int accepted = std::min<int>(s->drafted, static_cast<int>(made.size()) - 1);
    drafts_ += s->drafted;
    drafts_accepted_ += accepted;
    s->computed += accepted;
    s->draft.clear();
    if (i < result.drafts_size()) {
      s->draft.assign(result.drafts(i).ids().begin(), result.drafts(i).ids().end());
    }
    const RequestParams& p = s->request->params();
    for (size_t k = 0; k < made.size(); ++k) {
      const int32_t token = made[k];
      s->tokens.push_back(token);
      ++s->generated;
      s->request->Emit(token, k == 0 && i < result.logprobs_size() ? &result.logprobs(i) : nullptr);
      const bool stop = std::count(p.stop_token_ids.begin(), p.stop_token_ids.end(), token) > 0 ||
                        (!p.ignore_eos && std::count(options_.eos_token_ids.begin(),
                                                     options_.eos_token_ids.end(), token) > 0);
      if (stop || s->generated >= p.max_tokens) {
        s->request->Finish(stop ? moe::v1::FINISH_REASON_STOP : moe::v1::FINISH_REASON_LENGTH);
        s->computed = std::min<int64_t>(s->computed, static_cast<int64_t>(s->tokens.size()));
        ended.push_back(s);
        break;
      }
    }
  }
  for (const SeqPtr& s : pl.in_flight) {
    s->drafted = 0;
    // Its blocks that are now full and computed can serve later sequences.
    if (s->group >= 0) pl.caches[s->group].Commit(s->tokens, s->computed, s->blocks);
  }
  for (const SeqPtr& s : ended) EndSequence(s);
  pl.in_flight.clear();
  if (group == WorkerGroup::kMain) CompleteTransfers(result);
}

void Scheduler::CompleteTransfers(const moe::v1::StepResult& result) {
  Pool& main = pool(WorkerGroup::kMain);
  absl::flat_hash_map<int64_t, const moe::v1::KvTransferDone*> done;
  for (const moe::v1::KvTransferDone& d : result.kv_transfers()) done.emplace(d.seq_id(), &d);
  for (const SeqPtr& s : main.transfers) {
    s->transferring = false;
    // Ended by its first token, or cancelled (it leaves at the next step, its blocks with it).
    if (s->decode_group < 0 || s->request->cancelled()) continue;
    const auto it = done.find(s->request->id());
    const bool ok = it != done.end() && it->second->ok();
    if (it != done.end()) {
      ++(ok ? kv_transfers_ : kv_transfer_failures_);
      kv_transfer_bytes_ += it->second->bytes();
    }
    if (!ok) {
      s->request->Fail(absl::UnavailableError(absl::StrCat(
          "the KV transfer of request ", s->request->id(), " to the decode group failed",
          it == done.end() ? " (no result)" : " (the main group's worker logs say why)")));
      EndSequence(s);
      continue;
    }
    // Decoding goes on in the decode group, from the blocks the KV went to.
    PrefixCache& cache = main.caches[s->group];
    cache.Release(&s->blocks);
    main.running.remove(s);
    s->where = WorkerGroup::kDecode;
    s->group = s->decode_group;
    s->blocks = std::move(s->decode_blocks);
    s->decode_blocks.clear();
    s->decode_group = -1;
    s->prefilled = false;
    pool(WorkerGroup::kDecode).running.push_back(s);
  }
  main.transfers.clear();
}

void Scheduler::ReleaseQuarantined() {
  const absl::Time now = absl::Now();
  for (auto it = quarantined_.begin(); it != quarantined_.end();) {
    if (it->until > now) {
      ++it;
      continue;
    }
    pool(WorkerGroup::kDecode).caches[it->group].Release(&it->blocks);
    it = quarantined_.erase(it);
  }
}

void Scheduler::FailPool(WorkerGroup group, const absl::Status& status) {
  Pool& pl = pool(group);
  for (std::list<SeqPtr>* list : Queues(group)) {
    for (const SeqPtr& s : *list) {
      if (s->transferring && s->decode_group >= 0 && group == WorkerGroup::kMain) {
        quarantined_.push_back({s->decode_group, std::move(s->decode_blocks),
                                absl::Now() + options_.kv_push_deadline});
        s->decode_blocks.clear();
        s->decode_group = -1;
      }
      Release(*s);
      s->transferring = false;
      s->request->Fail(status);
    }
    list->clear();
  }
  pl.in_flight.clear();
  pl.transfers.clear();
  for (PrefixCache& c : pl.caches) c.Clear();
  cv_.notify_all();
}

void Scheduler::FailAll(const absl::Status& status) {
  std::lock_guard<std::mutex> lock(mu_);
  FailPool(WorkerGroup::kMain, status);
  // The decode group's caches are gone with it: nothing quarantined there matters any more.
  for (Quarantined& q : quarantined_) {
    pool(WorkerGroup::kDecode).caches[q.group].Release(&q.blocks);
  }
  quarantined_.clear();
  FailPool(WorkerGroup::kDecode, status);
}

void Scheduler::FailMainGroup(const absl::Status& status) {
  std::lock_guard<std::mutex> lock(mu_);
  FailPool(WorkerGroup::kMain, status);
}

SchedulerStats Scheduler::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  SchedulerStats st;
  st.waiting = static_cast<int64_t>(waiting_.size());
  st.decode_running = static_cast<int64_t>(pools_[1].running.size());
  st.running = static_cast<int64_t>(pools_[0].running.size()) + st.decode_running;
  st.kv_transfers = kv_transfers_;
  st.kv_transfer_failures = kv_transfer_failures_;
  st.kv_transfer_bytes = kv_transfer_bytes_;
  std::vector<const PrefixCache*> caches;
  for (const Pool& p : pools_) {
    for (const PrefixCache& c : p.caches) caches.push_back(&c);
  }
  for (const PrefixCache* cp : caches) {
    const PrefixCache& c = *cp;
    st.blocks_free += c.available_blocks();
    st.blocks_used += c.total_blocks() - c.available_blocks();  // held by sequences
    const PrefixCacheStats p = c.stats();
    st.prefix_cache.query_tokens += p.query_tokens;
    st.prefix_cache.hit_tokens += p.hit_tokens;
    st.prefix_cache.cached_blocks += p.cached_blocks;
    st.prefix_cache.evictions += p.evictions;
  }
  st.preemptions = preemptions_;
  st.drafts = drafts_;
  st.drafts_accepted = drafts_accepted_;
  return st;
}

}  // namespace moe

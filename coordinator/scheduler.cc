#include "coordinator/scheduler.h"

#include <algorithm>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace moe {

Scheduler::Scheduler(SchedulerOptions options) : options_(std::move(options)) {
  const bool prefix_cache = options_.prefix_cache && options_.kv_layout.window_groups() == 0;
  for (int g = 0; g < options_.dp_groups; ++g) {
    caches_.emplace_back(options_.blocks_per_group, options_.block_size, prefix_cache);
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
  woken_ = true;
  cv_.notify_all();
}

bool Scheduler::idle() const {
  std::lock_guard<std::mutex> lock(mu_);
  return waiting_.empty() && running_.empty();
}

void Scheduler::Release(Sequence& s) {
  if (s.group < 0) return;
  caches_[s.group].Release(&s.blocks);
  for (std::vector<int32_t>& table : s.window_blocks) caches_[s.group].Release(&table);
}

absl::Status Scheduler::EnsureCapacity(Sequence& s, int64_t tokens) {
  PrefixCache& cache = caches_[s.group];
  MOE_RETURN_IF_ERROR(cache.EnsureCapacity(&s.blocks, tokens));
  for (std::vector<int32_t>& table : s.window_blocks) {
    MOE_RETURN_IF_ERROR(cache.EnsureCapacity(&table, tokens));
  }
  return absl::OkStatus();
}

void Scheduler::Preempt(const SeqPtr& s) {
  Release(*s);
  s->computed = 0;
  s->draft.clear();
  s->group = -1;
  running_.remove(s);
  // Back among the waiting, in arrival order: it resumes before later arrivals.
  auto it = std::find_if(waiting_.begin(), waiting_.end(),
                         [&](const SeqPtr& w) { return w->request->id() > s->request->id(); });
  waiting_.insert(it, s);
  ++preemptions_;
}

void Scheduler::PurgeCancelled() {
  for (std::list<SeqPtr>* list : {&running_, &waiting_}) {
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
  PrefixCache& cache = caches_[s->group];
  options_.kv_layout.ReleasePassedBlocks(s->window_blocks, s->computed, options_.block_size,
                                         [&](int32_t block) { cache.Release(block); });
  while (!EnsureCapacity(*s, s->computed + n + drafted + ahead).ok()) {
    // Preempt the newest running sequence of this group that is not in this step.
    SeqPtr victim;
    for (const SeqPtr& r : running_) {
      if (r->group == s->group && r != s && r->scheduled == 0 &&
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
  in_flight_.push_back(s);
  return true;
}

std::optional<moe::v1::StepPlan> Scheduler::NextStep(absl::Duration wait) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, absl::ToChronoNanoseconds(wait),
               [&] { return woken_ || !waiting_.empty() || !running_.empty(); });
  woken_ = false;
  PurgeCancelled();
  in_flight_.clear();
  int64_t budget = options_.max_step_tokens;
  // 1. Running sequences, oldest first. One that cannot get blocks is preempted itself.
  const std::vector<SeqPtr> running(running_.begin(), running_.end());
  for (const SeqPtr& s : running) {
    if (s->group < 0) continue;  // preempted earlier in this loop
    if (budget <= 0) break;
    if (!Schedule(s, &budget)) Preempt(s);
  }
  // 2. Waiting sequences, first come first served: stop at the first that does not fit.
  while (!waiting_.empty() && budget > 0 &&
         static_cast<int64_t>(running_.size()) < options_.max_running) {
    const SeqPtr s = waiting_.front();
    // The group with the longest cached prefix of the sequence, then the most blocks to be had.
    int best = 0;
    int64_t best_hit = caches_[0].Peek(s->tokens);
    for (int g = 1; g < options_.dp_groups; ++g) {
      const int64_t hit = caches_[g].Peek(s->tokens);
      if (hit > best_hit || (hit == best_hit && caches_[g].available_blocks() > caches_[best].available_blocks())) {
        best = g;
        best_hit = hit;
      }
    }
    s->group = best;
    s->computed = caches_[best].Match(s->tokens, &s->blocks);
    if (!Schedule(s, &budget)) {
      Release(*s);
      s->computed = 0;
      s->group = -1;
      break;
    }
    caches_[best].RecordLookup(static_cast<int64_t>(s->tokens.size()), s->computed);
    waiting_.pop_front();
    running_.push_back(s);
  }
  if (in_flight_.empty()) return std::nullopt;
  moe::v1::StepPlan plan;
  plan.set_step(next_step_++);
  for (const SeqPtr& s : in_flight_) {
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
  return plan;
}

void Scheduler::EndSequence(const SeqPtr& s) {
  Release(*s);
  running_.remove(s);
}

void Scheduler::Complete(const moe::v1::StepResult& result) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const SeqPtr& s : in_flight_) {
    s->computed += s->scheduled;
    s->scheduled = 0;
  }
  absl::flat_hash_map<int64_t, SeqPtr> by_id;
  for (const SeqPtr& s : in_flight_) by_id.emplace(s->request->id(), s);
  std::vector<SeqPtr> ended;
  for (int i = 0; i < result.seq_ids_size(); ++i) {
    auto it = by_id.find(result.seq_ids(i));
    if (it == by_id.end()) continue;
    const SeqPtr s = it->second;
    if (s->request->cancelled() || s->group < 0) continue;  // leaves at the next step
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
  for (const SeqPtr& s : in_flight_) {
    s->drafted = 0;
    // Its blocks that are now full and computed can serve later sequences.
    if (s->group >= 0) caches_[s->group].Commit(s->tokens, s->computed, s->blocks);
  }
  for (const SeqPtr& s : ended) EndSequence(s);
  in_flight_.clear();
}

void Scheduler::FailAll(const absl::Status& status) {
  std::lock_guard<std::mutex> lock(mu_);
  for (std::list<SeqPtr>* list : {&running_, &waiting_}) {
    for (const SeqPtr& s : *list) {
      Release(*s);
      s->request->Fail(status);
    }
    list->clear();
  }
  in_flight_.clear();
  for (PrefixCache& c : caches_) c.Clear();
  cv_.notify_all();
}

SchedulerStats Scheduler::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  SchedulerStats st;
  st.waiting = static_cast<int64_t>(waiting_.size());
  st.running = static_cast<int64_t>(running_.size());
  for (const PrefixCache& c : caches_) {
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

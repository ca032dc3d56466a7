#include "coordinator/metrics.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace moe {

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::Observe(double v) {
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += v;
  ++count_;
}

std::string Histogram::Render(const std::string& name, const std::string& help) const {
  std::string out = absl::StrCat("# HELP ", name, " ", help, "\n# TYPE ", name, " histogram\n");
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    absl::StrAppendFormat(&out, "%s_bucket{le=\"%g\"} %d\n", name, bounds_[i], cumulative);
  }
  cumulative += counts_.back();
  absl::StrAppendFormat(&out, "%s_bucket{le=\"+Inf\"} %d\n%s_sum %.6f\n%s_count %d\n", name,
                        cumulative, name, sum_, name, count_);
  return out;
}

Metrics::Metrics()
    : ttft_({0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}),
      itl_({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10}) {
  for (const char* o : {"finished", "cancelled", "rejected", "unavailable", "failed"}) {
    requests_[o] = 0;
  }
}

void Metrics::RequestEnded(const std::string& outcome) {
  std::lock_guard<std::mutex> lock(mu_);
  ++requests_[outcome];
}
void Metrics::AddPromptTokens(int64_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  prompt_tokens_ += static_cast<uint64_t>(n);
}
void Metrics::AddGenerationTokens(int64_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  generation_tokens_ += static_cast<uint64_t>(n);
}
void Metrics::ObserveTimeToFirstToken(double s) {
  std::lock_guard<std::mutex> lock(mu_);
  ttft_.Observe(s);
}
void Metrics::ObserveInterTokenLatency(double s) {
  std::lock_guard<std::mutex> lock(mu_);
  itl_.Observe(s);
}
void Metrics::AddExpertTokens(const std::vector<int64_t>& counts, int64_t experts) {
  std::lock_guard<std::mutex> lock(mu_);
  const size_t n = experts > 0 ? static_cast<size_t>(experts) : counts.size();
  if (expert_tokens_.size() < n) expert_tokens_.resize(n, 0);
  for (size_t i = 0; i < counts.size(); ++i) expert_tokens_[i % n] += counts[i];
}
void Metrics::AddRebalance() {
  std::lock_guard<std::mutex> lock(mu_);
  ++rebalances_;
}
void Metrics::SetExpertImbalance(double max_over_mean) {
  std::lock_guard<std::mutex> lock(mu_);
  expert_imbalance_ = max_over_mean;
}
void Metrics::AddStep(int64_t tokens) {
  std::lock_guard<std::mutex> lock(mu_);
  ++steps_;
  step_tokens_ += static_cast<uint64_t>(tokens);
}

std::string Metrics::Render(const Gauges& g) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out;
  auto counter = [&](const std::string& name, const std::string& help, uint64_t v) {
    absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " counter\n", name, " ", v,
                    "\n");
  };
  auto gauge = [&](const std::string& name, const std::string& help, int64_t v) {
    absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " gauge\n", name, " ", v,
                    "\n");
  };
  absl::StrAppend(&out,
                  "# HELP moe_requests_total Generate requests by outcome.\n"
                  "# TYPE moe_requests_total counter\n");
  for (const auto& [outcome, n] : requests_) {
    absl::StrAppend(&out, "moe_requests_total{outcome=\"", outcome, "\"} ", n, "\n");
  }
  counter("moe_prompt_tokens_total", "Prompt tokens of admitted requests.", prompt_tokens_);
  counter("moe_generation_tokens_total", "Tokens generated.", generation_tokens_);
  counter("moe_steps_total", "Engine steps run.", steps_);
  counter("moe_step_tokens_total", "Tokens processed by engine steps.", step_tokens_);
  absl::StrAppend(&out, ttft_.Render("moe_time_to_first_token_seconds",
                                     "Time from arrival to the first token."));
  absl::StrAppend(&out, itl_.Render("moe_inter_token_latency_seconds",
                                    "Time between consecutive tokens of a request."));
  gauge("moe_queue_depth", "Requests waiting to be admitted.", g.waiting);
  gauge("moe_running_sequences", "Sequences in the running batch.", g.running);
  gauge("moe_kv_blocks_used",
        "KV cache blocks holding sequences (all DP groups, all worker groups).", g.blocks_used);
  gauge("moe_kv_blocks_free", "KV cache blocks free (all DP groups, all worker groups).",
        g.blocks_free);
  counter("moe_preemptions_total", "Sequences preempted for lack of KV blocks.",
          static_cast<uint64_t>(g.preemptions));
  gauge("moe_serving", "1 when every worker is ready.", g.serving ? 1 : 0);
  counter("moe_prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.",
          static_cast<uint64_t>(g.prefix_query_tokens));
  counter("moe_prefix_cache_hits_total", "Prompt tokens found in the prefix cache (not computed again).",
          static_cast<uint64_t>(g.prefix_hit_tokens));
  gauge("moe_prefix_cache_blocks", "KV cache blocks holding a cached prefix (all DP groups).",
        g.prefix_cached_blocks);
  counter("moe_prefix_cache_evictions_total", "Cached prefix blocks evicted for space.",
          static_cast<uint64_t>(g.prefix_evictions));
  counter("moe_spec_decode_draft_tokens_total",
          "Draft tokens of the MTP layer verified by the model (--mtp).",
          static_cast<uint64_t>(g.spec_drafts));
  counter("moe_spec_decode_accepted_tokens_total", "Draft tokens the model accepted (--mtp).",
          static_cast<uint64_t>(g.spec_accepted));
  counter("moe_kv_transfers_total",
          "Sequences whose KV went from the main group to the decode group (--decode-world-size).",
          static_cast<uint64_t>(g.kv_transfers));
  counter("moe_kv_transfer_failures_total", "KV transfers that failed (their requests with them).",
          static_cast<uint64_t>(g.kv_transfer_failures));
  counter("moe_kv_transfer_bytes_total",
          "Bytes of KV the decode group's ranks received, all of them together.",
          static_cast<uint64_t>(g.kv_transfer_bytes));
  counter("moe_eplb_rebalances_total", "Times EPLB moved the experts (--eplb-interval-steps).",
          rebalances_);
  absl::StrAppend(&out,
                  "# HELP moe_expert_rank_imbalance The most loaded rank's routed tokens over the "
                  "mean, over EPLB's window, averaged over the MoE layers (1: even).\n"
                  "# TYPE moe_expert_rank_imbalance gauge\nmoe_expert_rank_imbalance ",
                  expert_imbalance_, "\n");
  absl::StrAppend(&out,
                  "# HELP moe_expert_tokens_total Tokens routed to each expert, over all MoE "
                  "layers.\n# TYPE moe_expert_tokens_total counter\n");
  for (size_t e = 0; e < expert_tokens_.size(); ++e) {
    absl::StrAppend(&out, "moe_expert_tokens_total{expert=\"", e, "\"} ", expert_tokens_[e], "\n");
  }
  return out;
}

}  // namespace moe

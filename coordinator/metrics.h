// The coordinator's Prometheus metrics, rendered in the text exposition format on /metrics.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace moe {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void Observe(double v);
  // Lines of a histogram named `name` (with its _bucket, _sum and _count series).
  std::string Render(const std::string& name, const std::string& help) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket (not cumulative), the last one is +Inf
  double sum_ = 0;
  uint64_t count_ = 0;
};

class Metrics {
 public:
  Metrics();
  // outcome: finished, cancelled, rejected (invalid or queue full), unavailable, failed.
  void RequestEnded(const std::string& outcome);
  void AddPromptTokens(int64_t n);
  void AddGenerationTokens(int64_t n);
  void ObserveTimeToFirstToken(double seconds);
  void ObserveInterTokenLatency(double seconds);
  // A step's tokens per (MoE layer, expert), layer-major over `experts` experts: summed over the
  // layers (experts 0: one entry per expert).
  void AddExpertTokens(const std::vector<int64_t>& counts, int64_t experts = 0);
  // EPLB: a rebalance moved the experts; the window's max / mean rank load now.
  void AddRebalance();
  void SetExpertImbalance(double max_over_mean);
  void AddStep(int64_t tokens);
  struct Gauges {
    int64_t waiting = 0, running = 0, blocks_used = 0, blocks_free = 0, preemptions = 0;
    bool serving = false;
    // Prefix caching: prompt tokens looked up and found (counters), cached blocks, evictions.
    int64_t prefix_query_tokens = 0, prefix_hit_tokens = 0, prefix_cached_blocks = 0, prefix_evictions = 0;
    // Speculative decoding (--mtp): draft tokens verified and accepted (counters).
    int64_t spec_drafts = 0, spec_accepted = 0;
    // Prefill/decode disaggregation: KV transfers done and failed, bytes written (counters).
    int64_t kv_transfers = 0, kv_transfer_failures = 0, kv_transfer_bytes = 0;
  };
  std::string Render(const Gauges& gauges) const;

 private:
  mutable std::mutex mu_;
  std::map<std::string, uint64_t> requests_;
  uint64_t prompt_tokens_ = 0, generation_tokens_ = 0, steps_ = 0, step_tokens_ = 0;
  Histogram ttft_, itl_;
  std::vector<int64_t> expert_tokens_;
  uint64_t rebalances_ = 0;
  double expert_imbalance_ = 1.0;
};

}  // namespace moe

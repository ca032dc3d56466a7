// The sharding planner: for a model config, a GPU cluster and a layout, what each GPU holds, what
// it exchanges, and how fast a step can be — a roofline of compute, HBM and network with the MoE
// all-to-all modelled, with and without two-batch overlap. Used by `moe-plan` and to compare
// measured exchanges with the communication model (bench/scaling).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"

namespace moe {

struct GpuSpec {
  std::string name;
  double hbm_gib = 0;      // capacity
  double hbm_tbps = 0;     // bandwidth, TB/s
  double bf16_tflops = 0;  // dense
  double fp8_tflops = 0;   // dense
  double nvlink_gbps = 0;  // per GPU, one direction, GB/s
  double nic_gbps = 0;     // scale-out per GPU, one direction, GB/s
};

// Data-sheet presets: "h800", "h100", "h200" (SXM, with 400 Gb/s of InfiniBand per GPU).
absl::StatusOr<GpuSpec> GpuPreset(const std::string& name);

struct ClusterSpec {
  int nodes = 1;
  int gpus_per_node = 8;
  GpuSpec gpu;
  int world() const { return nodes * gpus_per_node; }
};

struct Layout {
  int attn_tp = 1;            // attention tensor parallel (heads split)
  int attn_dp = 1;            // attention data parallel groups; attn_tp * attn_dp = world
  int redundant_experts = 0;  // extra replicas of hot experts (EPLB), spread over all GPUs
};

struct Workload {
  int64_t decode_batch = 64;  // sequences per GPU in a decode step
  int64_t input_len = 2000;
  int64_t output_len = 1000;
  int64_t prefill_tokens = 16384;  // tokens per GPU in a prefill step
  // The most loaded GPU's routed-expert tokens over the mean (1: perfectly balanced): the slowest
  // GPU computes that much more, receives and returns that many more rows, and sets the step.
  // Measured by the coordinator as moe_expert_rank_imbalance (EPLB lowers it).
  double expert_imbalance = 1.0;
};

// The fractions of peak a well-tuned system sustains, from published kernel figures: FP8 grouped
// GEMMs at ~70% of peak (DeepGEMM), MLA decode at ~85-90% of HBM bandwidth (FlashMLA), all-to-all
// at ~80% of link bandwidth (DeepEP). Stated once, not fitted to any end-to-end figure.
struct Efficiency {
  double compute = 0.70;
  double hbm = 0.85;
  double network = 0.80;
  double collective_latency_us = 10.0;  // per all-to-all or all-reduce
  double reserve_gib = 8.0;             // activations, workspace, communication buffers
};

enum class PlanDType { kFP8, kBF16 };

struct MemoryPerGpu {  // bytes
  double attention = 0;
  double routed_experts = 0;
  double shared_and_dense = 0;
  double embeddings = 0;  // embed_tokens + lm_head (vocab-parallel over the TP group)
  double other = 0;       // router, norms
  double reserve = 0;
  double weights() const {
    return attention + routed_experts + shared_and_dense + embeddings + other;
  }
  double total() const { return weights() + reserve; }
};

struct PhaseEstimate {
  double compute_s = 0, hbm_s = 0, network_s = 0;  // per step, summed over layers
  double step_s = 0;                               // no overlap
  double step_tbo_s = 0;                           // two-batch overlap
  double tokens_per_s_per_node = 0;                // with the better of the two
  double tokens_per_s_per_node_no_tbo = 0;
  bool tbo_better = false;
};

struct PlanReport {
  ParamCounts params;
  int world = 0;
  int experts_per_gpu = 0;  // routed, incl. redundant replicas
  MemoryPerGpu memory;
  double kv_bytes_per_token = 0;   // one GPU's copy, all layers
  bool latent_kv = true;           // MLA's latent cache; else GQA's K/V of the GPU's KV heads
  int64_t kv_capacity_tokens = 0;  // per GPU (= per attention-DP group)
  int64_t kv_needed_tokens = 0;    // decode batch of the group x (input + output)
  bool fits = false;
  std::string why_not;
  double dispatch_bytes_per_layer = 0;  // per GPU, sent, decode step
  double combine_bytes_per_layer = 0;
  double inter_node_fraction = 0;  // of the all-to-all bytes
  PhaseEstimate decode, prefill;
  // Prefill/decode disaggregation (a prefill layout and a decode layout, each planned alone): a
  // request's prompt KV that goes to each decode GPU of its DP group (input_len x
  // kv_bytes_per_token), its time over one GPU's NIC, and that time over the prompt's share of a
  // prefill GPU's time.
  double kv_transfer_bytes = 0;
  double kv_transfer_s = 0;
  double kv_transfer_over_prefill = 0;
};

absl::StatusOr<PlanReport> Plan(const ModelConfig& config, const ClusterSpec& cluster,
                                const Layout& layout, PlanDType dtype, const Workload& workload,
                                const Efficiency& eff = {});

// The communication model alone: seconds for one all-to-all in which each rank sends `bytes` in
// total, spread uniformly over the other ranks, `ranks_per_node` of which share its node (intra
// at `intra_gbps`, the rest over `inter_gbps`), plus `latency_us`.
double AllToAllSeconds(double bytes, int world, int ranks_per_node, double intra_gbps,
                       double inter_gbps, double latency_us);

// Expected number of distinct ranks a token's top-k experts land on (uniform routing over
// `world` ranks).
double DistinctRanks(int top_k, int world);

std::string FormatReport(const PlanReport& r, const ClusterSpec& c, const Layout& l,
                         PlanDType dtype, const Workload& w);
std::string ReportJson(const PlanReport& r, const ClusterSpec& c, const Layout& l, PlanDType dtype,
                       const Workload& w);

}  // namespace moe

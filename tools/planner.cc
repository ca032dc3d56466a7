#include "tools/planner.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"

namespace moe {
namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// One step of `n` tokens per GPU (decode: one token per sequence), per layer kind.
struct StepCost {
  double flops_fp = 0;    // GEMM FLOPs at the weight dtype's rate
  double flops_bf16 = 0;  // attention core FLOPs at the bf16 rate
  double hbm_bytes = 0;
  double net_seconds = 0;  // all-to-all and all-reduce time (bandwidth + latency)
};

}  // namespace

absl::StatusOr<GpuSpec> GpuPreset(const std::string& name) {
  // SXM data sheets; nic = one 400 Gb/s InfiniBand adapter per GPU.
  if (name == "h800") return GpuSpec{"H800", 80, 3.35, 989, 1979, 200, 50};
  if (name == "h100") return GpuSpec{"H100", 80, 3.35, 989, 1979, 450, 50};
  if (name == "h200") return GpuSpec{"H200", 141, 4.8, 989, 1979, 450, 50};
  return absl::InvalidArgumentError(
      absl::StrCat("unknown GPU preset \"", name, "\" (known: h800, h100, h200)"));
}

double DistinctRanks(int top_k, int world) {
  if (world <= 1) return 1.0;
  return world * (1.0 - std::pow(1.0 - 1.0 / world, top_k));
}

double AllToAllSeconds(double bytes, int world, int ranks_per_node, double intra_gbps,
                       double inter_gbps, double latency_us) {
  if (world <= 1) return 0.0;
  const double peers = world - 1.0;
  const double intra = bytes * (std::min(ranks_per_node, world) - 1) / peers;
  const double inter = bytes - intra;
  double t = 0;
  if (intra > 0) t = std::max(t, intra / (intra_gbps * 1e9));
  if (inter > 0) t = std::max(t, inter / (inter_gbps * 1e9));
  return t + latency_us * 1e-6;
}

absl::StatusOr<PlanReport> Plan(const ModelConfig& c, const ClusterSpec& cl, const Layout& l,
                                PlanDType dtype, const Workload& w, const Efficiency& eff) {
  const int W = cl.world(), G = cl.gpus_per_node, T = l.attn_tp;
  if (W < 1 || G < 1) return absl::InvalidArgumentError("--nodes and --gpus-per-node must be >= 1");
  if (T < 1 || l.attn_dp < 1 || T * l.attn_dp != W) {
    return absl::InvalidArgumentError(
        absl::StrCat("attention TP ", T, " x DP ", l.attn_dp, " must equal the ", W, " GPUs"));
  }
  if (c.num_attention_heads % T != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("attention TP ", T, " does not divide the ", c.num_attention_heads, " heads"));
  }
  if (w.decode_batch < 1 || w.input_len < 1 || w.output_len < 1 || w.prefill_tokens < 1) {
    return absl::InvalidArgumentError("workload sizes must be >= 1");
  }
  PlanReport r;
  r.params = c.CountParameters();
  r.world = W;
  const double b = dtype == PlanDType::kFP8 ? 1.0 + 4.0 / (128 * 128) : 2.0;  // + block scales
  const double h = static_cast<double>(c.hidden_size),
               H = static_cast<double>(c.num_attention_heads);
  const double V = static_cast<double>(c.vocab_size),
               I = static_cast<double>(c.moe_intermediate_size);
  const double E = static_cast<double>(c.n_routed_experts), k = c.num_experts_per_tok;
  const double nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim, vd = c.v_head_dim;
  const double lora = c.kv_lora_rank, qk = c.qk_head_dim();
  const double q_lora = c.q_lora_rank ? static_cast<double>(*c.q_lora_rank) : 0.0;
  const int64_t L = c.num_hidden_layers, moe_layers = c.num_moe_layers();

  // --- Memory per GPU ---------------------------------------------------------------------
  // Attention per layer: replicated (q_a, kv_a) and head-split (q_b or q_proj, kv_b, o_proj).
  const double attn_repl = q_lora > 0 ? h * q_lora + h * (lora + rope) : h * (lora + rope);
  const double attn_split =
      (q_lora > 0 ? q_lora : h) * H * qk + lora * H * (nope + vd) + H * vd * h;
  const double expert = 3.0 * h * I;
  r.experts_per_gpu = static_cast<int>(std::ceil((E + l.redundant_experts) / W));
  r.memory.attention = L * (attn_repl + attn_split / T) * b;
  r.memory.routed_experts = moe_layers * r.experts_per_gpu * expert * b;
  r.memory.shared_and_dense =
      (r.params.shared_experts + r.params.dense_mlp) / static_cast<double>(T) * b;
  r.memory.embeddings = 2.0 * V * h / T * 2.0;  // bf16
  r.memory.other = (r.params.router + r.params.norms + L * (q_lora + lora)) * 2.0;
  r.memory.reserve = eff.reserve_gib * kGiB;
  r.kv_bytes_per_token = static_cast<double>(L) * (lora + rope) * 2.0;  // bf16 latent cache
  const double free_bytes = cl.gpu.hbm_gib * kGiB - r.memory.total();
  r.kv_capacity_tokens =
      free_bytes > 0 ? static_cast<int64_t>(free_bytes / r.kv_bytes_per_token) : 0;
  r.kv_needed_tokens = w.decode_batch * T * (w.input_len + w.output_len);
  if (free_bytes <= 0) {
    r.why_not = absl::StrFormat("weights and reserve need %.1f GiB per GPU, the GPU has %.0f GiB",
                                r.memory.total() / kGiB, cl.gpu.hbm_gib);
  } else if (r.kv_capacity_tokens < r.kv_needed_tokens) {
    r.why_not = absl::StrFormat(
        "the KV cache holds %d tokens per GPU, the decode batch needs %d (%d sequences x %d)",
        r.kv_capacity_tokens, r.kv_needed_tokens, w.decode_batch * T, w.input_len + w.output_len);
  }
  r.fits = r.why_not.empty();

  // --- One step -------------------------------------------------------------------------
  const double ctx_decode = w.input_len + w.output_len / 2.0;  // mean context during decode
  const double dispatch_b = h * (1.0 + 4.0 / 128), combine_b = h * 2.0;  // fp8 + scales / bf16
  // A token's destinations: decode sends one row per destination rank (DeepEP's low-latency
  // kernels, over RDMA even within a node is avoided: same-node ranks go over NVLink); prefill
  // sends one row per destination node over RDMA and fans it out over NVLink (DeepEP's normal
  // kernels). Uniform routing; DeepSeek's node-limited routing would only lower the traffic.
  const double distinct = DistinctRanks(static_cast<int>(k), W);
  const double remote = W > 1 ? distinct * (W - 1.0) / W : 0.0;  // other ranks per token
  const int nodes = (W + G - 1) / G;
  const double remote_nodes =
      nodes > 1 ? DistinctRanks(static_cast<int>(k), nodes) * (nodes - 1.0) / nodes : 0.0;
  r.inter_node_fraction = W > 1 ? (W - std::min(G, W)) / (W - 1.0) : 0.0;
  const double nvlink = cl.gpu.nvlink_gbps * eff.network, nic = cl.gpu.nic_gbps * eff.network;
  // Seconds of one exchange of `n` token rows of `row` bytes each.
  auto exchange = [&](double n, double row, bool per_node) {
    if (W <= 1) return 0.0;
    const double intra_rows = n * remote * (std::min(G, W) - 1.0) / (W - 1.0);
    const double inter_rows = per_node ? n * remote_nodes : n * remote - intra_rows;
    const double fanout_rows = per_node ? n * remote : intra_rows;
    return std::max(inter_rows * row / (nic * 1e9), fanout_rows * row / (nvlink * 1e9)) +
           eff.collective_latency_us * 1e-6;
  };
  auto all_reduce = [&](double bytes) {  // ring over the TP group
    if (T <= 1) return 0.0;
    const double bw = (T <= G ? nvlink : nic) * 1e9;
    return 2.0 * (T - 1.0) / T * bytes / bw + eff.collective_latency_us * 1e-6;
  };
  // Per GPU, `n` tokens routed by this GPU (its share of its DP group's tokens), `ctx` keys seen.
  auto cost = [&](double n, double ctx, bool decode) {
    StepCost s;
    const double n_g = n * T;  // tokens of the DP group: attention runs on all on every TP rank
    double attn_flops = 2.0 * n_g * (attn_repl + attn_split / T);
    double core = decode ? 2.0 * n_g * (H / T) * ctx * ((lora + rope) + lora)  // absorbed MLA
                         : 2.0 * n_g * (H / T) * ctx * (qk + vd);              // expanded, causal
    double expert_flops = 2.0 * n * k * expert;
    double shared_flops = 2.0 * n_g * 3.0 * h * c.shared_intermediate_size() / T;
    double dense_flops = 2.0 * n_g * 3.0 * h * c.intermediate_size / T;
    // Local experts touched this step: each of the E experts sees ~N k / E tokens.
    const double tokens_total = n * W;
    const double touched = 1.0 - std::pow(1.0 - k / E, tokens_total);
    for (int64_t layer = 0; layer < L; ++layer) {
      const bool moe = c.IsMoeLayer(layer);
      s.flops_fp += attn_flops + (moe ? expert_flops + shared_flops : dense_flops);
      s.flops_bf16 += core;
      s.hbm_bytes += (attn_repl + attn_split / T) * b;
      if (moe) {
        s.hbm_bytes += r.experts_per_gpu * touched * expert * b +
                       c.shared_intermediate_size() * 3.0 * h / T * b + E * h * 2.0;
        s.net_seconds += exchange(n, dispatch_b, !decode) + exchange(n, combine_b, !decode);
      } else {
        s.hbm_bytes += 3.0 * h * c.intermediate_size / T * b;
      }
      s.net_seconds += 2.0 * all_reduce(n_g * h * 2.0);  // after attention and after the MLP
      // Every TP rank reads its DP group's latent cache (decode) or writes it (prefill).
      s.hbm_bytes += (decode ? n_g * ctx : n_g) * (lora + rope) * 2.0;
    }
    s.flops_fp += 2.0 * n_g * h * V / T;  // lm_head (vocab-parallel)
    s.hbm_bytes += V * h / T * 2.0;
    return s;
  };
  auto time_of = [&](const StepCost& s) {
    const double fp_peak = (dtype == PlanDType::kFP8 ? cl.gpu.fp8_tflops : cl.gpu.bf16_tflops);
    const double compute = s.flops_fp / (fp_peak * 1e12 * eff.compute) +
                           s.flops_bf16 / (cl.gpu.bf16_tflops * 1e12 * eff.compute);
    const double hbm = s.hbm_bytes / (cl.gpu.hbm_tbps * 1e12 * eff.hbm);
    return std::make_pair(compute, hbm);
  };
  auto estimate = [&](double n, double ctx, bool decode, double tokens_per_gpu) {
    PhaseEstimate p;
    const StepCost full = cost(n, ctx, decode);
    const auto [compute, hbm] = time_of(full);
    p.compute_s = compute;
    p.hbm_s = hbm;
    p.network_s = full.net_seconds;
    p.step_s = std::max(compute, hbm) + full.net_seconds;
    // Two-batch overlap: two micro-batches of n/2; one's communication runs under the other's
    // computation, but each micro-batch reads the weights again.
    const StepCost half = cost(n / 2.0, ctx, decode);
    const auto [c2, h2] = time_of(half);
    p.step_tbo_s = std::max(2.0 * std::max(c2, h2), 2.0 * half.net_seconds) +
                   half.net_seconds / static_cast<double>(L);  // pipeline fill
    p.tokens_per_s_per_node_no_tbo = G * tokens_per_gpu / p.step_s;
    p.tbo_better = p.step_tbo_s < p.step_s;
    p.tokens_per_s_per_node = G * tokens_per_gpu / std::min(p.step_s, p.step_tbo_s);
    return p;
  };
  const double n_decode = static_cast<double>(w.decode_batch);
  r.dispatch_bytes_per_layer = n_decode * remote * dispatch_b;
  r.combine_bytes_per_layer = n_decode * remote * combine_b;
  r.decode = estimate(n_decode, ctx_decode, true, n_decode);
  const double n_prefill = static_cast<double>(w.prefill_tokens);
  // Causal prefill: a token at position p attends to p + 1 keys; mean (input_len + 1) / 2.
  r.prefill = estimate(n_prefill, (w.input_len + 1) / 2.0, false, n_prefill);
  return r;
}

std::string FormatReport(const PlanReport& r, const ClusterSpec& c, const Layout& l,
                         PlanDType dtype, const Workload& w) {
  auto gib = [](double b) { return b / kGiB; };
  std::string s;
  absl::StrAppendFormat(&s, "model: %.1fB parameters, %.1fB active per token\n",
                        r.params.total / 1e9, r.params.active / 1e9);
  absl::StrAppendFormat(&s,
                        "cluster: %d nodes x %d %s (%.0f GiB, %.2f TB/s, %.0f/%.0f TFLOP/s "
                        "bf16/fp8, NVLink %.0f GB/s, NIC %.0f GB/s per GPU)\n",
                        c.nodes, c.gpus_per_node, c.gpu.name, c.gpu.hbm_gib, c.gpu.hbm_tbps,
                        c.gpu.bf16_tflops, c.gpu.fp8_tflops, c.gpu.nvlink_gbps, c.gpu.nic_gbps);
  absl::StrAppendFormat(&s,
                        "layout: attention TP %d x DP %d, EP %d (%d routed experts per GPU, %d "
                        "redundant), %s weights\n\n",
                        l.attn_tp, l.attn_dp, r.world, r.experts_per_gpu, l.redundant_experts,
                        dtype == PlanDType::kFP8 ? "fp8" : "bf16");
  absl::StrAppendFormat(&s, "memory per GPU          GiB\n");
  absl::StrAppendFormat(&s, "  attention        %8.2f\n", gib(r.memory.attention));
  absl::StrAppendFormat(&s, "  routed experts   %8.2f\n", gib(r.memory.routed_experts));
  absl::StrAppendFormat(&s, "  shared + dense   %8.2f\n", gib(r.memory.shared_and_dense));
  absl::StrAppendFormat(&s, "  embeddings       %8.2f\n", gib(r.memory.embeddings));
  absl::StrAppendFormat(&s, "  router + norms   %8.2f\n", gib(r.memory.other));
  absl::StrAppendFormat(&s, "  reserve          %8.2f\n", gib(r.memory.reserve));
  absl::StrAppendFormat(&s, "  total            %8.2f of %.0f\n", gib(r.memory.total()),
                        c.gpu.hbm_gib);
  absl::StrAppendFormat(&s,
                        "KV cache: %.1f KiB per token (bf16 latent), room for %d tokens per GPU; "
                        "the decode batch needs %d\n",
                        r.kv_bytes_per_token / 1024, r.kv_capacity_tokens, r.kv_needed_tokens);
  absl::StrAppendFormat(&s, "fits: %s%s\n\n", r.fits ? "yes" : "NO — ", r.why_not);
  absl::StrAppendFormat(&s,
                        "all-to-all per GPU per MoE layer (decode batch %d): dispatch %.2f MB, "
                        "combine %.2f MB, %.0f%% to other nodes\n\n",
                        w.decode_batch, r.dispatch_bytes_per_layer / 1e6,
                        r.combine_bytes_per_layer / 1e6, 100 * r.inter_node_fraction);
  auto phase = [&](const char* name, const PhaseEstimate& p, const std::string& what) {
    absl::StrAppendFormat(&s,
                          "%-8s %s: compute %.2f ms, HBM %.2f ms, network %.2f ms -> step %.2f ms "
                          "(two-batch overlap %.2f ms): %.0f tokens/s per node%s\n",
                          name, what, 1e3 * p.compute_s, 1e3 * p.hbm_s, 1e3 * p.network_s,
                          1e3 * p.step_s, 1e3 * p.step_tbo_s, p.tokens_per_s_per_node,
                          p.tbo_better ? " (with overlap)" : "");
  };
  phase(
      "decode", r.decode,
      absl::StrFormat("%d seqs/GPU, context ~%d", w.decode_batch, w.input_len + w.output_len / 2));
  phase("prefill", r.prefill,
        absl::StrFormat("%d tokens/GPU, prompts of %d", w.prefill_tokens, w.input_len));
  return s;
}

std::string ReportJson(const PlanReport& r, const ClusterSpec& c, const Layout& l, PlanDType dtype,
                       const Workload& w) {
  nlohmann::ordered_json j;
  j["parameters"] = {{"total", r.params.total}, {"active", r.params.active}};
  j["cluster"] = {{"gpu", c.gpu.name}, {"nodes", c.nodes}, {"gpus_per_node", c.gpus_per_node}};
  j["layout"] = {{"attn_tp", l.attn_tp},
                 {"attn_dp", l.attn_dp},
                 {"ep", r.world},
                 {"experts_per_gpu", r.experts_per_gpu},
                 {"redundant_experts", l.redundant_experts},
                 {"dtype", dtype == PlanDType::kFP8 ? "fp8" : "bf16"}};
  j["memory_gib"] = {{"attention", r.memory.attention / kGiB},
                     {"routed_experts", r.memory.routed_experts / kGiB},
                     {"shared_and_dense", r.memory.shared_and_dense / kGiB},
                     {"embeddings", r.memory.embeddings / kGiB},
                     {"other", r.memory.other / kGiB},
                     {"reserve", r.memory.reserve / kGiB},
                     {"total", r.memory.total() / kGiB}};
  j["kv"] = {{"bytes_per_token", r.kv_bytes_per_token},
             {"capacity_tokens", r.kv_capacity_tokens},
             {"needed_tokens", r.kv_needed_tokens}};
  j["fits"] = r.fits;
  if (!r.fits) j["why_not"] = r.why_not;
  j["all_to_all"] = {{"dispatch_bytes_per_layer", r.dispatch_bytes_per_layer},
                     {"combine_bytes_per_layer", r.combine_bytes_per_layer},
                     {"inter_node_fraction", r.inter_node_fraction}};
  auto phase = [](const PhaseEstimate& p) {
    return nlohmann::ordered_json{
        {"compute_s", p.compute_s},
        {"hbm_s", p.hbm_s},
        {"network_s", p.network_s},
        {"step_s", p.step_s},
        {"step_two_batch_overlap_s", p.step_tbo_s},
        {"tokens_per_s_per_node", p.tokens_per_s_per_node},
        {"tokens_per_s_per_node_no_overlap", p.tokens_per_s_per_node_no_tbo}};
  };
  j["workload"] = {{"decode_batch", w.decode_batch},
                   {"input_len", w.input_len},
                   {"output_len", w.output_len},
                   {"prefill_tokens", w.prefill_tokens}};
  j["decode"] = phase(r.decode);
  j["prefill"] = phase(r.prefill);
  return j.dump(2) + "\n";
}

}  // namespace moe

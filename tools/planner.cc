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

namespace {

// The sizes the estimates use, as doubles, and the layout's traffic pattern.
struct Dims {
  Dims(const ModelConfig& c, const ClusterSpec& cl, const Layout& l, PlanDType dtype,
       const Efficiency& eff)
      : W(cl.world()), G(cl.gpus_per_node), T(l.attn_tp), L(c.num_hidden_layers) {
    b = dtype == PlanDType::kFP8 ? 1.0 + 4.0 / (128 * 128) : 2.0;  // + block scales
    h = static_cast<double>(c.hidden_size);
    H = static_cast<double>(c.num_attention_heads);
    V = static_cast<double>(c.vocab_size);
    E = static_cast<double>(c.n_routed_experts);
    k = c.num_experts_per_tok;
    nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim, vd = c.v_head_dim;
    lora = c.kv_lora_rank, qk = c.qk_head_dim();
    q_lora = c.q_lora_rank ? static_cast<double>(*c.q_lora_rank) : 0.0;
    mla = c.is_mla();
    if (mla) {
      // Attention per layer: replicated (q_a, kv_a) and head-split (q_b or q_proj, kv_b, o_proj).
      attn_repl = q_lora > 0 ? h * q_lora + h * (lora + rope) : h * (lora + rope);
      attn_split = (q_lora > 0 ? q_lora : h) * H * qk + lora * H * (nope + vd) + H * vd * h;
      cache_row = (lora + rope) * 2.0;  // the bf16 latent, on every TP rank
    } else {
      // GQA: q_proj and o_proj split by query heads; k_proj and v_proj by KV heads, each rank
      // keeping at least one (replicated when T exceeds the KV heads).
      const double kv_per_rank = std::max(1.0, static_cast<double>(c.num_key_value_heads) / T),
                   d = c.head_dim;
      attn_repl = 2.0 * h * kv_per_rank * d;
      attn_split = 2.0 * h * H * d;
      cache_row = 2.0 * kv_per_rank * d * 2.0;  // bf16 K and V of this rank's KV heads
    }
    expert = 3.0 * h * static_cast<double>(c.moe_intermediate_size);
    // A token's destinations: decode sends one row per destination rank (DeepEP's low-latency
    // kernels, over RDMA even within a node is avoided: same-node ranks go over NVLink); prefill
    // sends one row per destination node over RDMA and fans it out over NVLink (DeepEP's normal
    // kernels). Uniform routing; DeepSeek's node-limited routing would only lower the traffic.
    const double distinct = DistinctRanks(static_cast<int>(k), W);
    remote = W > 1 ? distinct * (W - 1.0) / W : 0.0;  // other ranks per token
    const int nodes = (W + G - 1) / G;
    remote_nodes =
        nodes > 1 ? DistinctRanks(static_cast<int>(k), nodes) * (nodes - 1.0) / nodes : 0.0;
    nvlink = cl.gpu.nvlink_gbps * eff.network;
    nic = cl.gpu.nic_gbps * eff.network;
  }
  int W, G, T;
  int64_t L;
  bool mla = true;
  double b, h, H, V, E, k, nope, rope, vd, lora, qk, q_lora, attn_repl, attn_split, expert;
  double cache_row;  // KV cache bytes per token and layer on one GPU
  double remote, remote_nodes, nvlink, nic;
  static constexpr double dispatch_row = 1.0 + 4.0 / 128,
                          combine_row = 2.0;  // x h: fp8+scales, bf16
};

absl::Status CheckLayout(const ModelConfig& c, const ClusterSpec& cl, const Layout& l,
                         const Workload& w) {
  const int W = cl.world(), T = l.attn_tp;
  if (W < 1 || cl.gpus_per_node < 1) {
    return absl::InvalidArgumentError("--nodes and --gpus-per-node must be >= 1");
  }
  if (T < 1 || l.attn_dp < 1 || T * l.attn_dp != W) {
    return absl::InvalidArgumentError(
        absl::StrCat("attention TP ", T, " x DP ", l.attn_dp, " must equal the ", W, " GPUs"));
  }
  if (c.num_attention_heads % T != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("attention TP ", T, " does not divide the ", c.num_attention_heads, " heads"));
  }
  if (!c.is_mla() && c.num_key_value_heads % T != 0 && T % c.num_key_value_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("attention TP ", T, " must divide the ",
                                                   c.num_key_value_heads,
                                                   " KV heads or be a multiple of them"));
  }
  if (!(w.expert_imbalance >= 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("--expert-imbalance ", w.expert_imbalance,
                                                   " must be >= 1 (max over mean rank load)"));
  }
  if (w.decode_batch < 1 || w.input_len < 1 || w.output_len < 1 || w.prefill_tokens < 1) {
    return absl::InvalidArgumentError("workload sizes must be >= 1");
  }
  return absl::OkStatus();
}

// Memory per GPU, KV capacity, and whether the decode batch fits.
void PlanMemory(const ModelConfig& c, const ClusterSpec& cl, const Layout& l, const Workload& w,
                const Efficiency& eff, const Dims& d, PlanReport* r) {
  r->experts_per_gpu = static_cast<int>(std::ceil((d.E + l.redundant_experts) / d.W));
  r->memory.attention = d.L * (d.attn_repl + d.attn_split / d.T) * d.b;
  r->memory.routed_experts = c.num_moe_layers() * r->experts_per_gpu * d.expert * d.b;
  r->memory.shared_and_dense =
      (r->params.shared_experts + r->params.dense_mlp) / static_cast<double>(d.T) * d.b;
  r->memory.embeddings = 2.0 * d.V * d.h / d.T * 2.0;  // bf16
  r->memory.other = (r->params.router + r->params.norms + d.L * (d.q_lora + d.lora)) * 2.0;
  r->memory.reserve = eff.reserve_gib * kGiB;
  r->kv_bytes_per_token = static_cast<double>(d.L) * d.cache_row;
  r->latent_kv = d.mla;
  const double free_bytes = cl.gpu.hbm_gib * kGiB - r->memory.total();
  r->kv_capacity_tokens =
      free_bytes > 0 ? static_cast<int64_t>(free_bytes / r->kv_bytes_per_token) : 0;
  r->kv_needed_tokens = w.decode_batch * d.T * (w.input_len + w.output_len);
  if (free_bytes <= 0) {
    r->why_not = absl::StrFormat("weights and reserve need %.1f GiB per GPU, the GPU has %.0f GiB",
                                 r->memory.total() / kGiB, cl.gpu.hbm_gib);
  } else if (r->kv_capacity_tokens < r->kv_needed_tokens) {
    r->why_not = absl::StrFormat(
        "the KV cache holds %d tokens per GPU, the decode batch needs %d (%d sequences x %d)",
        r->kv_capacity_tokens, r->kv_needed_tokens, w.decode_batch * d.T,
        w.input_len + w.output_len);
  }
  r->fits = r->why_not.empty();
}

// The roofline of one step on one GPU.
class StepModel {
 public:
  StepModel(const ModelConfig& c, const ClusterSpec& cl, PlanDType dtype, const Efficiency& eff,
            const Dims& d, int experts_per_gpu, double expert_imbalance)
      : c_(c),
        cl_(cl),
        dtype_(dtype),
        eff_(eff),
        d_(d),
        experts_per_gpu_(experts_per_gpu),
        imbalance_(expert_imbalance) {}

  // `n` tokens routed by this GPU (its share of its DP group's tokens), `ctx` keys seen.
  PhaseEstimate Estimate(double n, double ctx, bool decode, double tokens_per_gpu) const {
    PhaseEstimate p;
    const StepCost full = Cost(n, ctx, decode);
    const auto [compute, hbm] = Time(full);
    p.compute_s = compute;
    p.hbm_s = hbm;
    p.network_s = full.net_seconds;
    p.step_s = std::max(compute, hbm) + full.net_seconds;
    // Two-batch overlap: two micro-batches of n/2; one's communication runs under the other's
    // computation, but each micro-batch reads the weights again.
    const StepCost half = Cost(n / 2.0, ctx, decode);
    const auto [c2, h2] = Time(half);
    p.step_tbo_s = std::max(2.0 * std::max(c2, h2), 2.0 * half.net_seconds) +
                   half.net_seconds / static_cast<double>(d_.L);  // pipeline fill
    p.tokens_per_s_per_node_no_tbo = d_.G * tokens_per_gpu / p.step_s;
    p.tbo_better = p.step_tbo_s < p.step_s;
    p.tokens_per_s_per_node = d_.G * tokens_per_gpu / std::min(p.step_s, p.step_tbo_s);
    return p;
  }

 private:
  // Seconds of one exchange of `n` token rows of `row` bytes each.
  double Exchange(double n, double row, bool per_node) const {
    const int W = d_.W, G = d_.G;
    if (W <= 1) return 0.0;
    const double intra_rows = n * d_.remote * (std::min(G, W) - 1.0) / (W - 1.0);
    const double inter_rows = per_node ? n * d_.remote_nodes : n * d_.remote - intra_rows;
    const double fanout_rows = per_node ? n * d_.remote : intra_rows;
    return std::max(inter_rows * row / (d_.nic * 1e9), fanout_rows * row / (d_.nvlink * 1e9)) +
           eff_.collective_latency_us * 1e-6;
  }
  double AllReduce(double bytes) const {  // ring over the TP group
    const int T = d_.T;
    if (T <= 1) return 0.0;
    const double bw = (T <= d_.G ? d_.nvlink : d_.nic) * 1e9;
    return 2.0 * (T - 1.0) / T * bytes / bw + eff_.collective_latency_us * 1e-6;
  }
  StepCost Cost(double n, double ctx, bool decode) const {
    const Dims& d = d_;
    StepCost s;
    const double n_g = n * d.T;  // tokens of the DP group: attention runs on all on every TP rank
    const double attn_flops = 2.0 * n_g * (d.attn_repl + d.attn_split / d.T);
    const double core =
        decode && d.mla ? 2.0 * n_g * (d.H / d.T) * ctx * ((d.lora + d.rope) + d.lora)  // absorbed
                        : 2.0 * n_g * (d.H / d.T) * ctx * (d.qk + d.vd);  // expanded MLA, or GQA
    const double expert_flops = 2.0 * n * d.k * d.expert * imbalance_;
    const double shared_flops = 2.0 * n_g * 3.0 * d.h * c_.shared_intermediate_size() / d.T;
    const double dense_flops = 2.0 * n_g * 3.0 * d.h * c_.intermediate_size / d.T;
    // Local experts touched this step: each of the E experts sees ~N k / E tokens.
    const double tokens_total = n * d.W;
    const double touched = 1.0 - std::pow(1.0 - d.k / d.E, tokens_total);
    for (int64_t layer = 0; layer < d.L; ++layer) {
      const bool moe = c_.IsMoeLayer(layer);
      s.flops_fp += attn_flops + (moe ? expert_flops + shared_flops : dense_flops);
      s.flops_bf16 += core;
      s.hbm_bytes += (d.attn_repl + d.attn_split / d.T) * d.b;
      if (moe) {
        s.hbm_bytes += experts_per_gpu_ * touched * d.expert * d.b +
                       c_.shared_intermediate_size() * 3.0 * d.h / d.T * d.b + d.E * d.h * 2.0;
        s.net_seconds += Exchange(n * imbalance_, d.h * Dims::dispatch_row, !decode) +
                         Exchange(n * imbalance_, d.h * Dims::combine_row, !decode);
      } else {
        s.hbm_bytes += 3.0 * d.h * c_.intermediate_size / d.T * d.b;
      }
      s.net_seconds += 2.0 * AllReduce(n_g * d.h * 2.0);  // after attention and after the MLP
      // Every TP rank reads its share of its DP group's cache (decode) or writes it (prefill): the
      // whole latent (MLA), its KV heads (GQA). Sliding and chunked layers are counted whole.
      s.hbm_bytes += (decode ? n_g * ctx : n_g) * d.cache_row;
    }
    s.flops_fp += 2.0 * n_g * d.h * d.V / d.T;  // lm_head (vocab-parallel)
    s.hbm_bytes += d.V * d.h / d.T * 2.0;
    return s;
  }
  std::pair<double, double> Time(const StepCost& s) const {  // compute, HBM seconds
    const double fp_peak = dtype_ == PlanDType::kFP8 ? cl_.gpu.fp8_tflops : cl_.gpu.bf16_tflops;
    const double compute = s.flops_fp / (fp_peak * 1e12 * eff_.compute) +
                           s.flops_bf16 / (cl_.gpu.bf16_tflops * 1e12 * eff_.compute);
    const double hbm = s.hbm_bytes / (cl_.gpu.hbm_tbps * 1e12 * eff_.hbm);
    return {compute, hbm};
  }

  const ModelConfig& c_;
  const ClusterSpec& cl_;
  PlanDType dtype_;
  const Efficiency& eff_;
  const Dims& d_;
  int experts_per_gpu_;
  double imbalance_;
};

}  // namespace

absl::StatusOr<PlanReport> Plan(const ModelConfig& c, const ClusterSpec& cl, const Layout& l,
                                PlanDType dtype, const Workload& w, const Efficiency& eff) {
  if (absl::Status s = CheckLayout(c, cl, l, w); !s.ok()) return s;
  const Dims d(c, cl, l, dtype, eff);
  PlanReport r;
  r.params = c.CountParameters();
  r.world = d.W;
  PlanMemory(c, cl, l, w, eff, d, &r);
  r.inter_node_fraction = d.W > 1 ? (d.W - std::min(d.G, d.W)) / (d.W - 1.0) : 0.0;
  const StepModel model(c, cl, dtype, eff, d, r.experts_per_gpu, w.expert_imbalance);
  const double n_decode = static_cast<double>(w.decode_batch);
  r.dispatch_bytes_per_layer = n_decode * d.remote * d.h * Dims::dispatch_row;
  r.combine_bytes_per_layer = n_decode * d.remote * d.h * Dims::combine_row;
  const double ctx_decode = w.input_len + w.output_len / 2.0;  // mean context during decode
  r.decode = model.Estimate(n_decode, ctx_decode, true, n_decode);
  const double n_prefill = static_cast<double>(w.prefill_tokens);
  // Causal prefill: a token at position p attends to p + 1 keys; mean (input_len + 1) / 2.
  r.prefill = model.Estimate(n_prefill, (w.input_len + 1) / 2.0, false, n_prefill);
  r.kv_transfer_bytes = static_cast<double>(w.input_len) * r.kv_bytes_per_token;
  r.kv_transfer_s = r.kv_transfer_bytes / (cl.gpu.nic_gbps * 1e9);
  const double prefill_per_gpu = r.prefill.tokens_per_s_per_node / cl.gpus_per_node;
  if (prefill_per_gpu > 0) {
    r.kv_transfer_over_prefill = r.kv_transfer_s / (w.input_len / prefill_per_gpu);
  }
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
                        "KV cache: %.1f KiB per token (%s), room for %d tokens per GPU; "
                        "the decode batch needs %d\n",
                        r.kv_bytes_per_token / 1024, r.latent_kv ? "bf16 latent" : "bf16 K/V",
                        r.kv_capacity_tokens, r.kv_needed_tokens);
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
  absl::StrAppendFormat(&s,
                        "disaggregated (prefill and decode layouts planned alone): a prompt's KV "
                        "is %.1f MB for each decode GPU of its DP group, %.2f ms over one NIC "
                        "(%.0f GB/s), %.1f%% of its prefill time on one GPU\n",
                        r.kv_transfer_bytes / 1e6, 1e3 * r.kv_transfer_s, c.gpu.nic_gbps,
                        100 * r.kv_transfer_over_prefill);
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
  j["kv_transfer"] = {{"bytes_per_request", r.kv_transfer_bytes},
                      {"seconds", r.kv_transfer_s},
                      {"over_prefill_time", r.kv_transfer_over_prefill}};
  return j.dump(2) + "\n";
}

}  // namespace moe

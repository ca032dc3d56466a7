// Token sampling, one block per row — the twin of worker/sampler.cc:
//   greedy: argmax, ties to the lower id;
//   else: the top_k most likely (radix select on the logits' order-preserving bit patterns, ties
//   to the lower ids), then the smallest most-likely prefix reaching top_p of their mass (a bitwise
//   binary search on the same keys, ties again by id), then the seeded draw u * (kept mass)
//   walking the kept tokens in id order. Probabilities and masses in double, as on the CPU.
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "common/splitmix.h"
#include "kernels/cuda/ops.h"

namespace moe::cuda {
namespace {

constexpr int kThreads = 256;
using Reduce = cub::BlockReduce<double, kThreads>;
using Scan = cub::BlockScan<double, kThreads>;

// Larger float -> larger key.
__device__ uint32_t Key(float f) {
  const uint32_t b = __float_as_uint(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

struct Shared {
  Reduce::TempStorage reduce;
  Scan::TempStorage scan;
  double value;
  int64_t index;
};

__device__ double BlockSum(double v, Shared& sh) {
  const double s = Reduce(sh.reduce).Sum(v);
  if (threadIdx.x == 0) sh.value = s;
  __syncthreads();
  const double r = sh.value;
  __syncthreads();
  return r;
}

// The id of the `need`-th (1-based) token, in id order, among those with weight(i) > 0, counting
// with weights: the first id at which the running sum of weight reaches `need`.
template <typename F>
__device__ int64_t FirstReaching(int64_t vocab, double need, F weight, Shared& sh) {
  double base = 0;
  for (int64_t c = 0; c < vocab; c += kThreads) {
    const int64_t i = c + threadIdx.x;
    const double w = i < vocab ? weight(i) : 0.0;
    double incl;
    Scan(sh.scan).InclusiveSum(w, incl);
    if (threadIdx.x == 0) sh.index = -1;
    __syncthreads();
    if (w > 0 && base + incl >= need && base + incl - w < need) sh.index = i;
    __syncthreads();
    const int64_t found = sh.index;
    const double chunk = BlockSum(w, sh);
    if (found >= 0) return found;
    base += chunk;
  }
  return vocab - 1;
}

__global__ void SampleKernel(const float* logits, int64_t vocab, const SampleRequest* requests,
                             int32_t* out) {
  __shared__ Shared sh;
  const float* l = logits + blockIdx.x * vocab;
  const SampleRequest request = requests[blockIdx.x];
  const SamplingSpec& spec = request.spec;
  // The best (key, lowest id) is both the greedy answer and the softmax's maximum.
  uint32_t best_key = 0;
  int64_t best_id = vocab;
  for (int64_t i = threadIdx.x; i < vocab; i += kThreads) {
    const uint32_t k = Key(l[i]);
    if (k > best_key || (k == best_key && i < best_id)) {
      best_key = k;
      best_id = i;
    }
  }
  __shared__ uint32_t keys[kThreads];
  __shared__ int64_t idx[kThreads];
  keys[threadIdx.x] = best_key;
  idx[threadIdx.x] = best_id;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
      const uint32_t k2 = keys[threadIdx.x + s];
      const int64_t i2 = idx[threadIdx.x + s];
      if (k2 > keys[threadIdx.x] || (k2 == keys[threadIdx.x] && i2 < idx[threadIdx.x])) {
        keys[threadIdx.x] = k2;
        idx[threadIdx.x] = i2;
      }
    }
    __syncthreads();
  }
  const int64_t argmax = idx[0];
  if (spec.temperature <= 0.0f || spec.top_k == 1) {
    if (threadIdx.x == 0) out[blockIdx.x] = static_cast<int32_t>(argmax);
    return;
  }
  const float top_logit = l[argmax];
  const double inv_t = 1.0 / spec.temperature;
  auto prob = [&](int64_t i) { return exp((static_cast<double>(l[i]) - top_logit) * inv_t); };

  // Top-k: the k-th largest key by radix select, then the id cut among ties.
  const int64_t k = spec.top_k > 0 ? min(static_cast<int64_t>(spec.top_k), vocab) : vocab;
  uint32_t kth = 0;
  int64_t tie_cut_k = vocab;  // keys equal to kth are kept up to this id
  if (k < vocab) {
    uint32_t prefix = 0, mask = 0;
    double remaining = static_cast<double>(k);
    for (int bit = 31; bit >= 0; --bit) {
      const uint32_t b = 1u << bit, want = prefix | b, m = mask | b;
      double c = 0;
      for (int64_t i = threadIdx.x; i < vocab; i += kThreads) c += (Key(l[i]) & m) == want;
      c = BlockSum(c, sh);
      if (c >= remaining) {
        prefix = want;
      } else {
        remaining -= c;
      }
      mask = m;
    }
    kth = prefix;
    double greater = 0;
    for (int64_t i = threadIdx.x; i < vocab; i += kThreads) greater += Key(l[i]) > kth;
    greater = BlockSum(greater, sh);
    tie_cut_k = FirstReaching(
        vocab, static_cast<double>(k) - greater,
        [&](int64_t i) { return Key(l[i]) == kth ? 1.0 : 0.0; }, sh);
  }
  auto candidate = [&](int64_t i) {
    const uint32_t key = Key(l[i]);
    return k == vocab || key > kth || (key == kth && i <= tie_cut_k);
  };

  // Top-p: the largest key threshold whose candidates still hold top_p of the mass, then the id
  // cut among ties at it.
  double z = 0;
  for (int64_t i = threadIdx.x; i < vocab; i += kThreads) z += candidate(i) ? prob(i) : 0.0;
  z = BlockSum(z, sh);
  uint32_t cut_key = 0;
  int64_t tie_cut_p = vocab;
  if (spec.top_p < 1.0f) {
    const double target = static_cast<double>(spec.top_p) * z;
    uint32_t v = 0;
    for (int bit = 31; bit >= 0; --bit) {
      const uint32_t t = v | (1u << bit);
      double mass = 0;
      for (int64_t i = threadIdx.x; i < vocab; i += kThreads) {
        mass += (candidate(i) && Key(l[i]) >= t) ? prob(i) : 0.0;
      }
      mass = BlockSum(mass, sh);
      if (mass >= target) v = t;
    }
    cut_key = v;
    double above = 0;
    for (int64_t i = threadIdx.x; i < vocab; i += kThreads) {
      above += (candidate(i) && Key(l[i]) > cut_key) ? prob(i) : 0.0;
    }
    above = BlockSum(above, sh);
    tie_cut_p = FirstReaching(
        vocab, target - above,
        [&](int64_t i) { return candidate(i) && Key(l[i]) == cut_key ? prob(i) : 0.0; }, sh);
  }
  auto kept = [&](int64_t i) {
    if (!candidate(i)) return false;
    const uint32_t key = Key(l[i]);
    return spec.top_p >= 1.0f || key > cut_key || (key == cut_key && i <= tie_cut_p);
  };
  double mass = 0;
  int64_t last = -1;  // the largest kept id: where a draw rounded past the end lands
  for (int64_t i = threadIdx.x; i < vocab; i += kThreads) {
    if (kept(i)) {
      mass += prob(i);
      last = i;
    }
  }
  mass = BlockSum(mass, sh);
  idx[threadIdx.x] = last;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) idx[threadIdx.x] = max(idx[threadIdx.x], idx[threadIdx.x + s]);
    __syncthreads();
  }
  const int64_t last_kept = idx[0];
  // The draw: the first kept id (in id order) whose running mass exceeds u * mass.
  const double u = UniformDraw(spec.seed, request.index) * mass;
  double base = 0;
  for (int64_t c = 0; c < vocab; c += kThreads) {
    const int64_t i = c + threadIdx.x;
    const double w = i < vocab && kept(i) ? prob(i) : 0.0;
    double incl;
    Scan(sh.scan).InclusiveSum(w, incl);
    if (threadIdx.x == 0) sh.index = -1;
    __syncthreads();
    if (w > 0 && u < base + incl && u >= base + incl - w) sh.index = i;
    __syncthreads();
    const int64_t found = sh.index;
    if (found >= 0) {
      if (threadIdx.x == 0) out[blockIdx.x] = static_cast<int32_t>(found);
      return;
    }
    base += BlockSum(w, sh);
  }
  if (threadIdx.x == 0) out[blockIdx.x] = static_cast<int32_t>(last_kept);
}

}  // namespace

void Sample(const float* logits, int64_t rows, int64_t vocab, const SampleRequest* requests,
            int32_t* out, cudaStream_t stream) {
  if (rows > 0)
    SampleKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(logits, vocab, requests,
                                                                       out);
}

}  // namespace moe::cuda

// SplitMix64, the counter-based hash behind every reproducible draw in the project: the samplers'
// uniform draw (the same function on the CPU and on the GPU, so both pick the same token) and the
// synthetic checkpoints' weights.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define MOE_HOST_DEVICE __host__ __device__
#else
#define MOE_HOST_DEVICE
#endif

namespace moe {

MOE_HOST_DEVICE constexpr uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Uniform in [0, 1), a pure function of (seed, index): the draw for output token `index` of a
// request seeded with `seed`.
MOE_HOST_DEVICE inline double UniformDraw(uint64_t seed, uint64_t index) {
  return static_cast<double>(SplitMix64(SplitMix64(seed) ^ SplitMix64(~index)) >> 11) * 0x1.0p-53;
}

}  // namespace moe

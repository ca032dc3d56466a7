#include "bench/bandwidth.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

#include "common/tensor.h"
#include "kernels/cpu/ops.h"

namespace moe::bench {
namespace {

double Seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

double MemoryCopyBandwidth(uint64_t bytes, int repeats) {
  const size_t n = bytes / sizeof(float);
  FloatVector a(n, 1.0f), b(n, 0.0f);
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    const double t0 = Seconds();
#pragma omp parallel
    {
      const int threads = omp_get_num_threads(), t = omp_get_thread_num();
      const size_t chunk = (n + threads - 1) / threads, begin = std::min(n, t * chunk);
      const size_t end = std::min(n, begin + chunk);
      std::memcpy(b.data() + begin, a.data() + begin, (end - begin) * sizeof(float));
    }
    best = std::min(best, Seconds() - t0);
  }
  return 2.0 * static_cast<double>(n * sizeof(float)) / best;
}

double MemoryReadBandwidth(uint64_t bytes, int repeats) {
  const size_t n = bytes / sizeof(float) / 16 * 16;
  FloatVector a(n, 1.0f);
  double best = 1e30;
  volatile float sink = 0;
  for (int r = 0; r < repeats; ++r) {
    const double t0 = Seconds();
    float total = 0;
#pragma omp parallel reduction(+ : total)
    {
      float acc[16] = {};  // 16 independent sums: one vector register, no dependency chain
#pragma omp for schedule(static)
      for (size_t i = 0; i < n; i += 16) {
        for (int j = 0; j < 16; ++j) acc[j] += a[i + j];
      }
      for (float v : acc) total += v;
    }
    best = std::min(best, Seconds() - t0);
    sink = sink + total;
  }
  return static_cast<double>(n * sizeof(float)) / best;
}

double GemmFlops(int64_t m, int64_t n, int64_t k, int repeats) {
  FloatVector x(static_cast<size_t>(m * k), 0.5f), w(static_cast<size_t>(n * k), 0.25f),
      y(static_cast<size_t>(m * n));
  cpu::MatMulNT(m, n, k, x.data(), k, w.data(), k, y.data(), n);  // warm up
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    const double t0 = Seconds();
    cpu::MatMulNT(m, n, k, x.data(), k, w.data(), k, y.data(), n);
    best = std::min(best, Seconds() - t0);
  }
  return 2.0 * static_cast<double>(m) * n * k / best;
}

}  // namespace moe::bench

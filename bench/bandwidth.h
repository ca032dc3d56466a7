// Machine bounds measured in the benchmark's own run: memory bandwidth and BLAS GEMM rate.
#pragma once

#include <cstdint>

namespace moe::bench {

// Memory-copy bandwidth in bytes/s counting bytes read plus bytes written (STREAM "copy"),
// over buffers of `bytes`, with all threads.
double MemoryCopyBandwidth(uint64_t bytes, int repeats);
// Read-only bandwidth (bytes read / s), all threads.
double MemoryReadBandwidth(uint64_t bytes, int repeats);
// float32 GEMM rate (FLOP/s) of y[m,n] = x[m,k] W[n,k]^T through the engine's MatMulNT.
double GemmFlops(int64_t m, int64_t n, int64_t k, int repeats);

}  // namespace moe::bench

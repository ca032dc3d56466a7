#include "parallel/row_memory.h"

#include <algorithm>
#include <cstring>
#include <new>
#include <vector>

namespace moe {
namespace {

constexpr std::align_val_t kAlign{64};

void AddRow(float* dst, const float* src, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
}

}  // namespace

absl::Status HostRowMemory::Reserve(Buffer* b, size_t bytes) {
  if (bytes <= b->bytes) return absl::OkStatus();
  const size_t size = std::max(bytes, 2 * b->bytes);
  b->owner = std::shared_ptr<void>(::operator new(size, kAlign),
                                   [](void* p) { ::operator delete(p, kAlign); });
  b->data = b->owner.get();
  b->bytes = size;
  return absl::OkStatus();
}

absl::Status HostRowMemory::CopyToHost(const void* src, size_t bytes, void* host) {
  if (bytes > 0) std::memcpy(host, src, bytes);
  return absl::OkStatus();
}

absl::Status HostRowMemory::CopyFromHost(const void* host, size_t bytes, void* dst) {
  if (bytes > 0) std::memcpy(dst, host, bytes);
  return absl::OkStatus();
}

absl::Status HostRowMemory::GatherRows(const float* src, const int32_t* index, int64_t n,
                                       int64_t dim, float* dst) {
  const size_t row_bytes = static_cast<size_t>(dim) * sizeof(float);
#pragma omp parallel for schedule(static) if (n * dim > (1 << 18))
  for (int64_t i = 0; i < n; ++i) std::memcpy(dst + i * dim, src + index[i] * dim, row_bytes);
  return absl::OkStatus();
}

void HostRowMemory::SumRowPointers(const float* const* src, const int64_t* begin, int64_t n,
                                   int64_t dim, float* out) {
  const size_t row_bytes = static_cast<size_t>(dim) * sizeof(float);
#pragma omp parallel for schedule(static) if (n * dim > (1 << 18))
  for (int64_t t = 0; t < n; ++t) {
    float* dst = out + t * dim;
    const int64_t b = begin[t], e = begin[t + 1];
    if (b == e) {
      std::memset(dst, 0, row_bytes);
      continue;
    }
    std::memcpy(dst, src[b], row_bytes);
    for (int64_t i = b + 1; i < e; ++i) AddRow(dst, src[i], dim);
  }
}

absl::Status HostRowMemory::SumRows(const float* src, const int64_t* rows, const int64_t* begin,
                                    int64_t n, int64_t dim, float* out) {
  std::vector<const float*> ptrs(static_cast<size_t>(n > 0 ? begin[n] : 0));
  for (size_t i = 0; i < ptrs.size(); ++i) ptrs[i] = src + rows[i] * dim;
  SumRowPointers(ptrs.data(), begin, n, dim, out);
  return absl::OkStatus();
}

absl::Status HostRowMemory::SplitMeta(const int32_t* meta, int64_t n, int64_t k, int32_t* ids,
                                      float* weights) {
  for (int64_t i = 0; i < n; ++i) {
    std::memcpy(ids + i * k, meta + i * 2 * k, static_cast<size_t>(k) * sizeof(int32_t));
    std::memcpy(weights + i * k, meta + i * 2 * k + k, static_cast<size_t>(k) * sizeof(float));
  }
  return absl::OkStatus();
}

HostRowMemory* DefaultHostRowMemory() {
  static HostRowMemory memory;
  return &memory;
}

}  // namespace moe

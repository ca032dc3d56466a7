// Tensor: a row-major float32 array in host memory, 64-byte aligned, owning its data.
// The CPU backend computes in float32; checkpoint dtypes are converted on load.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
#include <string>
#include <utility>
#include <vector>

namespace moe {

template <typename T, size_t kAlign = 64>
struct AlignedAllocator {
  using value_type = T;
  AlignedAllocator() = default;
  template <typename U>
  AlignedAllocator(const AlignedAllocator<U, kAlign>&) {}
  template <typename U>
  struct rebind {
    using other = AlignedAllocator<U, kAlign>;
  };
  T* allocate(size_t n) {
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(kAlign)));
  }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(kAlign)); }
  // Default-initialise: `FloatVector v(n)` leaves the floats unset (it is filled next anyway);
  // `FloatVector v(n, 0.0f)` still zeroes.
  template <typename U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
  bool operator==(const AlignedAllocator&) const { return true; }
  bool operator!=(const AlignedAllocator&) const { return false; }
};

using FloatVector = std::vector<float, AlignedAllocator<float>>;

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::vector<int64_t> shape);  // zero-filled
  // Contents unset: for tensors about to be overwritten entirely.
  static Tensor Uninitialized(std::vector<int64_t> shape);
  Tensor(std::vector<int64_t> shape, FloatVector data);

  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t dim(size_t i) const { return shape_[i]; }
  size_t rank() const { return shape_.size(); }
  int64_t numel() const { return static_cast<int64_t>(data_.size()); }
  bool empty() const { return data_.empty(); }
  size_t bytes() const { return data_.size() * sizeof(float); }

  float* data() { return data_.data(); }
  const float* data() const { return data_.data(); }
  float* row(int64_t r) { return data_.data() + r * shape_.back(); }
  const float* row(int64_t r) const { return data_.data() + r * shape_.back(); }
  float& operator[](int64_t i) { return data_[i]; }
  float operator[](int64_t i) const { return data_[i]; }

  std::string ShapeString() const;

 private:
  std::vector<int64_t> shape_;
  FloatVector data_;
};

std::string ShapeString(const std::vector<int64_t>& shape);
int64_t NumElements(const std::vector<int64_t>& shape);

// Rows `rows` of the 2-D tensor `x`, in that order: [rows.size(), x.dim(1)].
Tensor GatherRows(const Tensor& x, const std::vector<int64_t>& rows);

}  // namespace moe

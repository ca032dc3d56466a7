// GEMMs through cuBLAS. Row-major products are issued as their column-major transposes:
// row-major c[m, n] = a[m, k] · b is column-major c^T[n, m] = b^T · a^T, and a row-major matrix
// with leading dimension ld is, to cuBLAS, its transpose with the same ld.
#include "common/status_macros.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/ops.h"

namespace moe::cuda {

absl::Status BatchedMatMul(cublasHandle_t blas, int64_t batch, int64_t m, int64_t n, int64_t k,
                           Strided a, Strided b, bool transpose_b, float* c, int64_t ldc,
                           int64_t stride_c, cudaStream_t stream) {
  if (batch == 0 || m == 0 || n == 0) return absl::OkStatus();
  MOE_CUBLAS_RETURN_IF_ERROR(cublasSetStream(blas, stream));
  const float alpha = 1.0f, beta = 0.0f;
  MOE_CUBLAS_RETURN_IF_ERROR(cublasGemmStridedBatchedEx(
      blas, transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(n),
      static_cast<int>(m), static_cast<int>(k), &alpha, b.data, CUDA_R_16BF, static_cast<int>(b.ld),
      b.stride, a.data, CUDA_R_16BF, static_cast<int>(a.ld), a.stride, &beta, c, CUDA_R_32F,
      static_cast<int>(ldc), stride_c, static_cast<int>(batch), CUBLAS_COMPUTE_32F,
      CUBLAS_GEMM_DEFAULT));
  return absl::OkStatus();
}

absl::Status Linear(cublasHandle_t blas, const float* x, int64_t m, const WeightView& w, float* y,
                    bf16* x_bf16, cudaStream_t stream, int64_t ldx, int64_t ldy) {
  const int64_t n = w.rows, k = w.cols;
  if (ldx <= 0) ldx = k;
  if (ldy <= 0) ldy = n;
  if (m == 0 || n == 0) return absl::OkStatus();
  if (w.format != WeightFormat::kBF16) {
    WeightLinear(x, m, ldx, w, y, ldy, stream);
    return absl::OkStatus();
  }
  F32ToBf16Rows(x, m, k, ldx, x_bf16, stream);
  const Strided weight{reinterpret_cast<const bf16*>(w.data), w.row_stride / 2, 0};
  return BatchedMatMul(blas, 1, m, n, k, {x_bf16, k, 0}, weight, /*transpose_b=*/true, y, ldy, 0,
                       stream);
}

absl::Status Linear(cublasHandle_t blas, const float* x, int64_t m, int64_t k, const bf16* w,
                    int64_t n, float* y, bf16* x_bf16, cudaStream_t stream, int64_t ldx) {
  WeightView view;
  view.rows = n;
  view.cols = k;
  view.data = reinterpret_cast<const uint8_t*>(w);
  view.row_stride = k * 2;
  return Linear(blas, x, m, view, y, x_bf16, stream, ldx);
}

absl::Status LinearF32(cublasHandle_t blas, const float* x, int64_t m, int64_t k, const float* w,
                       int64_t n, float* y, cudaStream_t stream, int64_t ldx, int64_t ldw,
                       int64_t ldy) {
  if (m == 0 || n == 0) return absl::OkStatus();
  ldx = ldx == 0 ? k : ldx;
  ldw = ldw == 0 ? k : ldw;
  ldy = ldy == 0 ? n : ldy;
  MOE_CUBLAS_RETURN_IF_ERROR(cublasSetStream(blas, stream));
  const float alpha = 1.0f, beta = 0.0f;
  // CUBLAS_COMPUTE_32F_PEDANTIC: true float32, whatever math mode the handle was given.
  MOE_CUBLAS_RETURN_IF_ERROR(cublasGemmEx(
      blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m), static_cast<int>(k),
      &alpha, w, CUDA_R_32F, static_cast<int>(ldw), x, CUDA_R_32F, static_cast<int>(ldx), &beta, y,
      CUDA_R_32F, static_cast<int>(ldy), CUBLAS_COMPUTE_32F_PEDANTIC, CUBLAS_GEMM_DEFAULT));
  return absl::OkStatus();
}

}  // namespace moe::cuda

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

absl::Status Linear(cublasHandle_t blas, const float* x, int64_t m, int64_t k, const bf16* w,
                    int64_t n, float* y, bf16* x_bf16, cudaStream_t stream, int64_t ldx) {
  if (m == 0 || n == 0) return absl::OkStatus();
  F32ToBf16Rows(x, m, k, ldx > 0 ? ldx : k, x_bf16, stream);
  return BatchedMatMul(blas, 1, m, n, k, {x_bf16, k, 0}, {w, k, 0}, /*transpose_b=*/true, y, n, 0,
                       stream);
}

absl::Status LinearF32(cublasHandle_t blas, const float* x, int64_t m, int64_t k, const float* w,
                       int64_t n, float* y, cudaStream_t stream) {
  if (m == 0 || n == 0) return absl::OkStatus();
  MOE_CUBLAS_RETURN_IF_ERROR(cublasSetStream(blas, stream));
  const float alpha = 1.0f, beta = 0.0f;
  // CUBLAS_COMPUTE_32F_PEDANTIC: true float32, whatever math mode the handle was given.
  MOE_CUBLAS_RETURN_IF_ERROR(cublasGemmEx(
      blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m), static_cast<int>(k),
      &alpha, w, CUDA_R_32F, static_cast<int>(k), x, CUDA_R_32F, static_cast<int>(k), &beta, y,
      CUDA_R_32F, static_cast<int>(n), CUBLAS_COMPUTE_32F_PEDANTIC, CUBLAS_GEMM_DEFAULT));
  return absl::OkStatus();
}

}  // namespace moe::cuda

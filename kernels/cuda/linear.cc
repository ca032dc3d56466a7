#include "common/status_macros.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/ops.h"

namespace moe::cuda {

absl::Status Linear(cublasHandle_t blas, const float* x, int64_t m, int64_t k, const bf16* w,
                    int64_t n, float* y, bf16* x_bf16, cudaStream_t stream, float beta) {
  if (m == 0 || n == 0) return absl::OkStatus();
  F32ToBf16(x, x_bf16, m * k, stream);
  MOE_CUBLAS_RETURN_IF_ERROR(cublasSetStream(blas, stream));
  // Row-major y[m, n] = x[m, k] w[n, k]^T is column-major y^T[n, m] = w^T[k, n]^T x^T[k, m].
  const float alpha = 1.0f;
  MOE_CUBLAS_RETURN_IF_ERROR(cublasGemmEx(
      blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m), static_cast<int>(k),
      &alpha, w, CUDA_R_16BF, static_cast<int>(k), x_bf16, CUDA_R_16BF, static_cast<int>(k), &beta,
      y, CUDA_R_32F, static_cast<int>(n), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return absl::OkStatus();
}

}  // namespace moe::cuda

// CUDA and cuBLAS errors as absl::Status.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace moe::cuda {

inline absl::Status CudaStatus(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("CUDA ", what, ": ", cudaGetErrorString(e)));
}

inline absl::Status CublasStatus(cublasStatus_t e, const char* what) {
  if (e == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("cuBLAS ", what, ": status ", static_cast<int>(e)));
}

}  // namespace moe::cuda

#define MOE_CUDA_RETURN_IF_ERROR(expr) MOE_RETURN_IF_ERROR(::moe::cuda::CudaStatus((expr), #expr))
#define MOE_CUBLAS_RETURN_IF_ERROR(expr) \
  MOE_RETURN_IF_ERROR(::moe::cuda::CublasStatus((expr), #expr))

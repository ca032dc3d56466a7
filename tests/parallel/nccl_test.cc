// The NCCL backend on device memory, bootstrapped over MPI; skipped where no GPU is visible.
#include <cuda_runtime.h>

#include <numeric>

#include "gtest/gtest.h"
#include "parallel/mpi_communicator.h"
#include "parallel/nccl_communicator.h"

namespace moe {
namespace {

class NcclTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (CudaDeviceCount() == 0)
      GTEST_SKIP() << "no CUDA device visible: the NCCL backend is not run";
    auto mpi = MakeMpiWorldCommunicator();
    ASSERT_TRUE(mpi.ok());
    mpi_ = std::move(*mpi);
    auto nccl = MakeNcclCommunicator(*mpi_, mpi_->rank() % CudaDeviceCount());
    ASSERT_TRUE(nccl.ok()) << nccl.status();
    nccl_ = std::move(*nccl);
  }
  std::unique_ptr<Communicator> mpi_, nccl_;
};

TEST_F(NcclTest, AllReduceSum) {
  const int w = nccl_->size(), me = nccl_->rank();
  std::vector<float> host(1000);
  for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<float>(i * (me + 1));
  float* dev;
  ASSERT_EQ(cudaMalloc(&dev, host.size() * 4), cudaSuccess);
  cudaMemcpy(dev, host.data(), host.size() * 4, cudaMemcpyHostToDevice);
  ASSERT_TRUE(nccl_->AllReduceSum(dev, host.size()).ok());
  cudaMemcpy(host.data(), dev, host.size() * 4, cudaMemcpyDeviceToHost);
  const float ranks = static_cast<float>(w * (w + 1) / 2);
  for (size_t i = 0; i < host.size(); ++i) ASSERT_EQ(host[i], i * ranks);
  cudaFree(dev);
}

TEST_F(NcclTest, AllToAllVMovesEachRanksPart) {
  // Rank s sends (r + 1) ints with value 100 s + r to rank r.
  const int w = nccl_->size(), me = nccl_->rank();
  std::vector<int32_t> send;
  std::vector<size_t> send_bytes(w), recv_bytes(w);
  for (int r = 0; r < w; ++r) {
    for (int i = 0; i <= r; ++i) send.push_back(100 * me + r);
    send_bytes[r] = (r + 1) * 4;
    recv_bytes[r] = (me + 1) * 4;
  }
  int32_t *ds, *dr;
  const size_t recv_n = static_cast<size_t>(w * (me + 1));
  cudaMalloc(&ds, send.size() * 4);
  cudaMalloc(&dr, recv_n * 4);
  cudaMemcpy(ds, send.data(), send.size() * 4, cudaMemcpyHostToDevice);
  ASSERT_TRUE(nccl_->AllToAllV(ds, send_bytes, dr, recv_bytes).ok());
  std::vector<int32_t> recv(recv_n);
  cudaMemcpy(recv.data(), dr, recv_n * 4, cudaMemcpyDeviceToHost);
  for (int s = 0; s < w; ++s) {
    for (int i = 0; i <= me; ++i) EXPECT_EQ(recv[s * (me + 1) + i], 100 * s + me);
  }
  cudaFree(ds);
  cudaFree(dr);
}

}  // namespace
}  // namespace moe

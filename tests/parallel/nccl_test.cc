// The NCCL backend on device memory, bootstrapped over MPI; skipped where no GPU is visible.
#include <cuda_runtime.h>

#include <numeric>
#include <random>

#include "gtest/gtest.h"
#include "parallel/cuda_row_memory.h"
#include "parallel/moe_dispatch.h"
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
    if (CudaDeviceCount() < mpi_->size()) {
      GTEST_SKIP() << mpi_->size() << " ranks, " << CudaDeviceCount()
                   << " GPUs: NCCL takes one GPU per rank";
    }
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

// The MoE dispatch over NCCL with its buffers in GPU memory (CudaRowMemory) — the path the
// all-to-all-v tests of mpi_dispatch_test run on opaque host memory — against the direct MoE
// output: affine experts y = a_e x + b_e applied on the host to the rows each rank received.
TEST_F(NcclTest, MoeDispatchAndCombineOnDeviceMemory) {
  const int me = nccl_->rank();
  const int64_t experts = 16, top_k = 4, hidden = 24, tokens = 3 * me + 5;
  const ExpertPlacement placement = ExpertPlacement::Contiguous(experts, nccl_->size());
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  CudaRowMemory memory(stream);
  MoeDispatcher dispatcher(nccl_.get(), &placement, hidden, top_k,
                           MoeDispatcher::Transport::kAllToAllV, &memory);
  std::mt19937 rng(77 + me);
  std::normal_distribution<float> normal;
  std::vector<float> x(tokens * hidden), weights;
  std::vector<int32_t> ids, all(experts);
  for (float& v : x) v = normal(rng);
  std::iota(all.begin(), all.end(), 0);
  for (int64_t t = 0; t < tokens; ++t) {
    std::shuffle(all.begin(), all.end(), rng);
    for (int64_t j = 0; j < top_k; ++j) {
      ids.push_back(all[j]);
      weights.push_back(0.1f + 0.2f * static_cast<float>(j));
    }
  }
  auto a = [](int64_t e) { return 1.0f + 0.01f * static_cast<float>(e); };
  auto b = [](int64_t e) { return 0.001f * static_cast<float>(e); };
  RowMemory::Buffer dx, dids, dweights, dout;
  ASSERT_TRUE(memory.Reserve(&dx, x.size() * 4).ok() &&
              memory.Reserve(&dids, ids.size() * 4).ok() &&
              memory.Reserve(&dweights, weights.size() * 4).ok() &&
              memory.Reserve(&dout, x.size() * 4).ok());
  ASSERT_TRUE(memory.CopyFromHost(x.data(), x.size() * 4, dx.data).ok());
  ASSERT_TRUE(memory.CopyFromHost(ids.data(), ids.size() * 4, dids.data).ok());
  ASSERT_TRUE(memory.CopyFromHost(weights.data(), weights.size() * 4, dweights.data).ok());
  auto d = dispatcher.Dispatch(dx.floats(), tokens, dids.ints(), dweights.floats());
  ASSERT_TRUE(d.ok()) << d.status();
  const size_t rows = static_cast<size_t>(d->rows);
  std::vector<float> rx(rows * hidden), rw(rows * top_k), ry(rows * hidden, 0.0f);
  std::vector<int32_t> rl(rows * top_k);
  ASSERT_TRUE(memory.CopyToHost(d->x, rx.size() * 4, rx.data()).ok());
  ASSERT_TRUE(memory.CopyToHost(d->local_expert, rl.size() * 4, rl.data()).ok());
  ASSERT_TRUE(memory.CopyToHost(d->weight, rw.size() * 4, rw.data()).ok());
  const auto& local = placement.LocalExperts(me);
  for (size_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < top_k; ++j) {
      if (rl[i * top_k + j] < 0) continue;
      const int64_t e = local[rl[i * top_k + j]];
      for (int64_t c = 0; c < hidden; ++c) {
        ry[i * hidden + c] += rw[i * top_k + j] * (a(e) * rx[i * hidden + c] + b(e));
      }
    }
  }
  ASSERT_TRUE(memory.CopyFromHost(ry.data(), ry.size() * 4, d->y).ok());
  ASSERT_TRUE(dispatcher.Combine(d->handle, dout.floats()).ok());
  std::vector<float> out(x.size());
  ASSERT_TRUE(memory.CopyToHost(dout.data, out.size() * 4, out.data()).ok());
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t c = 0; c < hidden; ++c) {
      double want = 0;
      for (int64_t j = 0; j < top_k; ++j) {
        const int32_t e = ids[t * top_k + j];
        want += weights[t * top_k + j] * (a(e) * x[t * hidden + c] + b(e));
      }
      ASSERT_NEAR(out[t * hidden + c], want, 1e-5) << "token " << t << " dim " << c;
    }
  }
  cudaStreamDestroy(stream);
}

}  // namespace
}  // namespace moe

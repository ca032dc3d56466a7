// The engine on several GPUs (one per rank, the layers' collectives over NCCL, the MoE dispatch's
// buffers in device memory) against the engine on one GPU, under every TP size the world allows.
// The GPUs split the products and sum the partial results in another order, and bf16 operands
// round what differs, so the generations agree up to near ties (tests/worker/near_tie_compare.h,
// tolerance 1e-2). Skipped unless each rank has a GPU of its own.
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "parallel/mpi_communicator.h"
#include "parallel/nccl_communicator.h"
#include "tests/worker/near_tie_compare.h"
#include "tools/model_maker.h"
#include "worker/engine.h"
#include "worker/generator.h"

namespace moe {
namespace {

constexpr double kTolerance = 1e-2;

std::unique_ptr<Engine> LoadEngine(const std::string& dir, std::unique_ptr<Communicator> world,
                                   int tp) {
  auto config = LoadModelConfig(dir);
  EXPECT_TRUE(config.ok());
  auto ctx = ParallelContext::Create(*config, std::move(world), tp);
  EXPECT_TRUE(ctx.ok()) << ctx.status();
  EngineOptions opt;
  opt.block_size = 16;
  opt.device = Device::kCuda;
  opt.kv_blocks = *KvCache::BlocksForBudget(*config, opt.block_size, 16 << 20);
  auto e = Engine::Load(dir, std::move(*ctx), opt);
  EXPECT_TRUE(e.ok()) << e.status();
  return e.ok() ? std::move(*e) : nullptr;
}

TEST(NcclEngineTest, EveryTpSizeOnGpusMatchesOneGpu) {
  auto mpi = MakeMpiWorldCommunicator();
  ASSERT_TRUE(mpi.ok());
  const int world = (*mpi)->size(), rank = (*mpi)->rank();
  if (CudaDeviceCount() < world) {
    GTEST_SKIP() << world << " ranks, " << CudaDeviceCount() << " GPUs: one GPU per rank needed";
  }
  // Rank 0 writes the checkpoint; the ranks share its folder.
  int job = rank == 0 ? static_cast<int>(::getpid()) : 0;
  ASSERT_TRUE((*mpi)->Broadcast(&job, sizeof(job), 0).ok());
  const std::string dir = absl::StrCat(::testing::TempDir(), "/moe_nccl_", job);
  if (rank == 0) {
    MakeModelOptions opt;
    opt.out_dir = dir;
    opt.seed = 23;
    opt.dtype = WeightDType::kFP8;
    ASSERT_TRUE(WriteCheckpoint(*PresetConfig("tiny-dsv3"), opt).ok());
  }
  ASSERT_TRUE((*mpi)->Barrier().ok());

  // Every rank's own one-GPU engine is the reference.
  auto single = LoadEngine(dir, MakeSelfCommunicator(), 1);
  ASSERT_NE(single, nullptr);
  const std::vector<std::vector<int32_t>> prompts = {
      {5, 6, 7}, {100}, std::vector<int32_t>(21, 9), {300, 301, 302, 303, 304}, {42, 7}};
  GenerateOptions gen;
  gen.max_new_tokens = 10;
  gen.prefill_chunk = 8;
  BlockAllocator single_alloc(single->num_blocks());
  auto want = GenerateGreedyBatch(*single, single_alloc, prompts, gen);
  ASSERT_TRUE(want.ok()) << want.status();
  const int64_t vocab = single->config().vocab_size;
  for (int tp = 1; tp <= world; tp *= 2) {
    if (world % tp != 0 || single->config().num_attention_heads % tp != 0) continue;
    SCOPED_TRACE(absl::StrCat("W=", world, " T=", tp));
    auto comm = MakeMpiWorldCommunicator();
    ASSERT_TRUE(comm.ok());
    auto engine = LoadEngine(dir, std::move(*comm), tp);
    ASSERT_NE(engine, nullptr);
    BlockAllocator alloc(engine->num_blocks());
    auto got = GenerateGreedyBatch(*engine, alloc, prompts, gen);
    ASSERT_TRUE(got.ok()) << got.status();
    const int dp = world / tp, my_group = rank / tp;
    for (size_t i = 0; i < prompts.size(); ++i) {
      if (static_cast<int>(i) % dp != my_group) continue;  // another DP group's sequence
      ::moe::testing::ExpectSameUpToNearTies((*got)[i], (*want)[i], vocab, kTolerance,
                                             absl::StrCat("sequence ", i));
    }
  }
}

}  // namespace
}  // namespace moe

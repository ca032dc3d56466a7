// `mpirun -np W moe-generate --tp T` against one rank, as users launch it: real processes,
// oversubscribed on this machine. Same greedy tokens; logits within 1e-5 relative.
#include <cmath>
#include <cstdlib>
#include <map>

#include "absl/strings/str_cat.h"
#include "common/npy.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"
#include "tools/model_maker.h"

namespace moe {
namespace {

using ::moe::testing::BinaryPath;
using ::moe::testing::RunCommand;
using ::moe::testing::ScratchDir;

constexpr char kPrompt[] = "3,14,15,92,65,35,89,79,32,38,46,26,43,38,32,79,50,28,84,19";

// A case: the preset, the checkpoint's dtype and moe-generate's extra flags. The int4 case rounds
// x to int8 in its expert products (--activations int8): each rank rounds its own columns, in the
// same 32-column groups as one rank. The fp8 case rounds x to bf16 in its projections
// (--activations bf16), element by element, whatever a rank's window of an fp8 block. A layout
// sums in another order (experts, TP shards), and where x is rounded a float32 difference of one
// ulp in it can move its rounding by a whole step (2^-8 relative in bf16), so the rounding cases'
// logits are held to 2^-9 of the largest instead of 1e-5 (their tokens, as every case's, must be
// the same).
struct LayoutCase {
  const char* preset;
  WeightDType dtype;
  const char* flags;
  double logits_tolerance = 1e-5;  // relative to the largest logit
};
const std::map<std::string, LayoutCase>& Cases() {
  static const auto* cases = new std::map<std::string, LayoutCase>{
      {"tiny-dsv3", {"tiny-dsv3", WeightDType::kF32, ""}},
      {"tiny-kimi-k2", {"tiny-kimi-k2", WeightDType::kF32, ""}},
      {"tiny-kimi-k2-int4-x8", {"tiny-kimi-k2", WeightDType::kInt4, " --activations int8", 0x1p-9}},
      {"tiny-dsv3-fp8-xb16", {"tiny-dsv3", WeightDType::kFP8, " --activations bf16", 0x1p-9}},
  };
  return *cases;
}

class LayoutTest : public ::testing::TestWithParam<std::tuple<std::string, std::tuple<int, int>>> {
 protected:
  static void SetUpTestSuite() {
    // mpirun refuses root without these (CI runs as root); more ranks than cores is intended.
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 0);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 0);
    dir_ = new ScratchDir();
    for (const auto& [name, c] : Cases()) {
      MakeModelOptions opt;
      opt.out_dir = dir_->file(name);
      opt.seed = 31;
      opt.dtype = c.dtype;
      ASSERT_TRUE(WriteCheckpoint(*PresetConfig(c.preset), opt).ok());
      auto r = RunCommand(Generate(name, dir_->file(name + "_ref.npy")));
      ASSERT_EQ(r.exit_code, 0) << r.err;
      reference_[name] = r.out;
    }
  }
  static void TearDownTestSuite() { delete dir_; }

  static std::string Generate(const std::string& name, const std::string& npy) {
    return absl::StrCat(BinaryPath("tools/moe-generate"), " --model ", dir_->file(name),
                        " --prompt-ids ", kPrompt,
                        " --max-new-tokens 16 --ignore-eos --prefill-chunk 7 --block-size 16",
                        Cases().at(name).flags, " --logits-out ", npy);
  }

  static ScratchDir* dir_;
  static std::map<std::string, std::string> reference_;
};
ScratchDir* LayoutTest::dir_ = nullptr;
std::map<std::string, std::string> LayoutTest::reference_;

TEST_P(LayoutTest, MatchesOneRank) {
  const std::string preset = std::get<0>(GetParam());
  const auto [world, tp] = std::get<1>(GetParam());
  const std::string npy = dir_->file(absl::StrCat(preset, "_", world, "_", tp, ".npy"));
  auto r = RunCommand(
      absl::StrCat("mpirun --oversubscribe -np ", world, " ", Generate(preset, npy), " --tp ", tp));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, reference_[preset]);
  auto got = ReadNpy(npy);
  auto want = ReadNpy(dir_->file(preset + "_ref.npy"));
  ASSERT_TRUE(got.ok() && want.ok());
  ASSERT_EQ(got->shape(), want->shape());
  double diff = 0, scale = 0;
  for (int64_t i = 0; i < want->numel(); ++i) {
    diff = std::max(diff, static_cast<double>(std::fabs((*got)[i] - (*want)[i])));
    scale = std::max(scale, static_cast<double>(std::fabs((*want)[i])));
  }
  EXPECT_LE(diff / scale, Cases().at(preset).logits_tolerance);
  // Every rank reported what it read.
  for (int rank = 0; rank < world; ++rank) {
    EXPECT_NE(r.err.find(absl::StrCat("rank ", rank, "/", world)), std::string::npos) << r.err;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, LayoutTest,
    ::testing::Combine(::testing::Values("tiny-dsv3", "tiny-kimi-k2", "tiny-kimi-k2-int4-x8",
                                         "tiny-dsv3-fp8-xb16"),
                       ::testing::Values(std::make_tuple(1, 1), std::make_tuple(2, 1),
                                         std::make_tuple(2, 2), std::make_tuple(4, 1),
                                         std::make_tuple(4, 2), std::make_tuple(4, 4),
                                         std::make_tuple(8, 2))),
    [](const auto& info) {
      std::string s = std::get<0>(info.param);
      for (char& c : s) c = std::isalnum(c) ? c : '_';
      return absl::StrCat(s, "_W", std::get<0>(std::get<1>(info.param)), "_T",
                          std::get<1>(std::get<1>(info.param)));
    });

}  // namespace
}  // namespace moe

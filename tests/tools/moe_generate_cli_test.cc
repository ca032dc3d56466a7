// moe-generate as a user runs it: real processes, exit codes and messages.
#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/npy.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu/bf16_product.h"
#include "kernels/cpu/int4_int8_product.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"
#include "tools/model_maker.h"

namespace moe {
namespace {

using ::moe::testing::BinaryPath;
using ::moe::testing::RunCommand;
using ::moe::testing::ScratchDir;
using ::testing::HasSubstr;

class MoeGenerateCliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new ScratchDir();
    MakeModelOptions opt;
    opt.out_dir = dir_->file("tiny");
    opt.seed = 11;
    opt.dtype = WeightDType::kF32;
    ASSERT_TRUE(WriteCheckpoint(*PresetConfig("tiny-dsv3"), opt).ok());
  }
  static void TearDownTestSuite() { delete dir_; }
  static std::string Gen(const std::string& args) {
    return BinaryPath("tools/moe-generate") + " --threads 2 --model " + dir_->file("tiny") + " " +
           args;
  }
  static ScratchDir* dir_;
};
ScratchDir* MoeGenerateCliTest::dir_ = nullptr;

TEST_F(MoeGenerateCliTest, HelpExplainsEveryFlag) {
  auto r = RunCommand(BinaryPath("tools/moe-generate") + " --help");
  EXPECT_EQ(r.exit_code, 0);
  for (const char* flag :
       {"--model", "--prompt-ids", "--max-new-tokens", "--logits-out", "--threads", "--block-size",
        "--kv-cache-mb", "--ignore-eos", "--device", "--no-cuda-graphs", "--two-batch-overlap",
        "--weights-dtype", "--activations"}) {
    EXPECT_THAT(r.out, HasSubstr(flag));
  }
}

TEST_F(MoeGenerateCliTest, MatchesTransformersEndToEnd) {
  // The golden case tiny-dsv3-f32 (seed 11): the first prompt and HF's greedy tokens.
  std::ifstream in(std::string(MOE_SOURCE_DIR) + "/tests/golden/data/manifest.json");
  const auto spec = nlohmann::json::parse(in)["cases"]["tiny-dsv3-f32"];
  const std::vector<int> prompt = spec["prompts"][1], want = spec["tokens"][1];
  const std::string npy = dir_->file("logits.npy");
  auto r = RunCommand(Gen("--ignore-eos --max-new-tokens 16 --logits-out " + npy +
                          " --prompt-ids " + absl::StrJoin(prompt, ",")));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, absl::StrJoin(want, " ") + "\n");
  auto logits = ReadNpy(npy);
  ASSERT_TRUE(logits.ok());
  EXPECT_EQ(logits->shape(), (std::vector<int64_t>{17, 512}));
}

// --two-batch-overlap: transformers' greedy tokens (the prompt's prefill cut in two micro-batches).
TEST_F(MoeGenerateCliTest, TwoBatchOverlapMatchesTransformers) {
  std::ifstream in(std::string(MOE_SOURCE_DIR) + "/tests/golden/data/manifest.json");
  const auto spec = nlohmann::json::parse(in)["cases"]["tiny-dsv3-f32"];
  const std::vector<int> prompt = spec["prompts"][1], want = spec["tokens"][1];
  auto r = RunCommand(Gen("--two-batch-overlap --ignore-eos --max-new-tokens 16 --prompt-ids " +
                          absl::StrJoin(prompt, ",")));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, absl::StrJoin(want, " ") + "\n");
}

// --activations on golden cases: int8 on the int4 one (Kimi K2 Thinking's layout: experts int4,
// x rounded to 1/254 of each group's largest value; the rest bf16 products), bf16 on the fp8 one
// (DeepSeek-V3's layout) and on a bf16 one (x rounded to 8 significant bits). The prefill logits
// stay within 2% of the largest of transformers' (measured in docs/performance.md), and where the
// CPU has the dot products they are not f32's (the option reaches the products).
TEST_F(MoeGenerateCliTest, RoundedActivationsStayCloseToTransformers) {
  std::ifstream in(std::string(MOE_SOURCE_DIR) + "/tests/golden/data/manifest.json");
  const auto cases = nlohmann::json::parse(in)["cases"];
  struct Run {
    std::string golden, activations;
    bool has_products;
  };
  for (const Run& run : {Run{"tiny-kimi-k2-int4", "int8", cpu::HasInt8DotProducts()},
                         Run{"tiny-dsv3-fp8", "bf16", cpu::HasBf16DotProducts()},
                         Run{"tiny-qwen3-moe-bf16", "bf16", cpu::HasBf16DotProducts()}}) {
    SCOPED_TRACE(run.golden + " --activations " + run.activations);
    const auto& spec = cases[run.golden];
    MakeModelOptions opt;
    opt.out_dir = dir_->file(run.golden);
    opt.seed = spec["seed"];
    auto dtype = ParseWeightDType(spec["dtype"].get<std::string>());
    ASSERT_TRUE(dtype.ok()) << dtype.status();
    opt.dtype = *dtype;
    ASSERT_TRUE(WriteCheckpoint(*PresetConfig(spec["preset"].get<std::string>()), opt).ok());
    auto golden = ReadNpy(std::string(MOE_SOURCE_DIR) + "/tests/golden/data/" +
                          spec["logits"][0].get<std::string>());
    ASSERT_TRUE(golden.ok()) << golden.status();
    const std::vector<int> prompt = spec["prompts"][0];
    auto prefill_logits = [&](const std::string& activations) {
      const std::string npy = dir_->file(run.golden + "-" + activations + ".npy");
      auto r = RunCommand(BinaryPath("tools/moe-generate") + " --threads 2 --model " + opt.out_dir +
                          " --max-new-tokens 1 --activations " + activations + " --logits-out " +
                          npy + " --prompt-ids " + absl::StrJoin(prompt, ","));
      EXPECT_EQ(r.exit_code, 0) << r.err;
      auto t = ReadNpy(npy);
      EXPECT_TRUE(t.ok()) << t.status();
      return t.ok() ? *t : Tensor();
    };
    const Tensor exact = prefill_logits("f32"), rounded = prefill_logits(run.activations);
    const int64_t vocab = golden->dim(1);
    ASSERT_EQ(rounded.numel() % vocab, 0);
    ASSERT_EQ(exact.numel(), rounded.numel());
    double largest = 0, err = 0, from_exact = 0;
    for (int64_t v = 0; v < vocab; ++v) {
      largest = std::max(largest, std::abs(double{(*golden)[v]}));
      err = std::max(err, std::abs(double{rounded[v]} - (*golden)[v]));
      from_exact = std::max(from_exact, std::abs(double{rounded[v]} - exact[v]));
    }
    EXPECT_LE(err, 0.02 * largest);
    if (run.has_products) {
      EXPECT_GT(from_exact, 1e-5 * largest);
    }
  }
}

TEST_F(MoeGenerateCliTest, BadInputIsAClearErrorNotACrash) {
  struct Case {
    std::string args, message;
  };
  for (const Case& c : std::vector<Case>{
           {"--prompt-ids 1,2,512", "token id 512 outside the vocabulary"},
           {"--prompt-ids -4", "token id -4 outside the vocabulary"},
           {"--prompt-ids ''", "the prompt is empty"},
           {"--prompt-ids 1,x", "\"x\" is not an integer"},
           {"--prompt-ids 1 --max-new-tokens 600", "max_position_embeddings 512"},
           {"--prompt-ids 1 --max-new-tokens 0", "--max-new-tokens must be >= 1"},
           {"--prompt-ids 1 --bogus", "unknown flag --bogus"},
           {"--prompt-ids 1 --kv-cache-mb 1 --block-size 100000", "KV cache"},
           {"--prompt-ids 1 --device tpu", "device \"tpu\" is not one of"},
           {"--prompt-ids 1 --activations fp16",
            "unknown activations \"fp16\" (f32, bf16 or int8)"},
           {"--prompt-ids 1 --device cuda --activations int8", "run on the CPU backend only"},
       }) {
    auto r = RunCommand(Gen(c.args));
    EXPECT_NE(r.exit_code, 0) << c.args;
    EXPECT_LT(r.exit_code, 128) << c.args << ": killed by a signal";
    EXPECT_THAT(r.err, HasSubstr(c.message)) << c.args;
  }
}

TEST_F(MoeGenerateCliTest, MissingTensorIsNamed) {
  // A config asking for q-LoRA over a checkpoint without it (tiny-v2lite has a plain q_proj).
  ScratchDir dir;
  MakeModelOptions opt;
  opt.out_dir = dir.path();
  ASSERT_TRUE(WriteCheckpoint(*PresetConfig("tiny-v2lite"), opt).ok());
  std::ifstream in(dir.file("config.json"));
  auto cfg = nlohmann::json::parse(in);
  cfg["q_lora_rank"] = 16;
  std::ofstream(dir.file("config.json")) << cfg.dump();
  auto r =
      RunCommand(BinaryPath("tools/moe-generate") + " --model " + dir.path() + " --prompt-ids 1,2");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("missing tensor \"model.layers.0.self_attn.q_a_proj.weight\""));
}

// --mtp: the same tokens as transformers' greedy run, and the acceptance reported; asked of a
// checkpoint without an MTP layer, a clear error at start-up (moe-generate and moe-coordinator).
TEST_F(MoeGenerateCliTest, MtpSpeculatesOnlyWhereTheCheckpointHasTheLayer) {
  std::ifstream in(std::string(MOE_SOURCE_DIR) + "/tests/golden/data/manifest.json");
  const auto spec = nlohmann::json::parse(in)["cases"]["tiny-dsv3-f32"];
  const std::vector<int> prompt = spec["prompts"][1], want = spec["tokens"][1];
  auto r = RunCommand(Gen("--mtp --ignore-eos --max-new-tokens 16 --prompt-ids " +
                          absl::StrJoin(prompt, ",")));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, absl::StrJoin(want, " ") + "\n");
  EXPECT_THAT(r.err, HasSubstr("MTP drafts accepted"));
  ScratchDir dir;
  MakeModelOptions opt;
  opt.out_dir = dir.path();
  ASSERT_TRUE(WriteCheckpoint(*PresetConfig("tiny-kimi-k2"), opt).ok());
  auto gen = RunCommand(BinaryPath("tools/moe-generate") + " --mtp --model " + dir.path() +
                        " --prompt-ids 1,2");
  EXPECT_EQ(gen.exit_code, 1);
  EXPECT_THAT(gen.err, HasSubstr("no MTP layer (config.json: num_nextn_predict_layers is 0)"));
  auto coordinator = RunCommand(BinaryPath("coordinator/moe-coordinator") + " --mtp --model " +
                                dir.path() + " --listen 127.0.0.1:0 --cluster-listen 127.0.0.1:0");
  EXPECT_NE(coordinator.exit_code, 0);
  EXPECT_THAT(coordinator.err + coordinator.out, HasSubstr("--mtp: the model has no MTP layer"));
}

// EPLB's flags: a replica count that does not divide over the ranks stops moe-coordinator at
// start-up naming the flag; --router-skew needs a router with a correction bias.
TEST_F(MoeGenerateCliTest, EplbFlagsThatCannotWorkAreClearErrors) {
  ScratchDir dir;
  MakeModelOptions opt;
  opt.out_dir = dir.path();
  ASSERT_TRUE(WriteCheckpoint(*PresetConfig("tiny-dsv3"), opt).ok());  // 16 routed experts
  auto coordinator = RunCommand(BinaryPath("coordinator/moe-coordinator") +
                                " --redundant-experts 3 --world-size 2 --model " + dir.path() +
                                " --listen 127.0.0.1:0 --cluster-listen 127.0.0.1:0");
  EXPECT_NE(coordinator.exit_code, 0);
  EXPECT_THAT(coordinator.err + coordinator.out,
              HasSubstr("--redundant-experts 3: the 16 routed experts plus the redundant ones must "
                        "divide evenly over the 2 ranks"));
  auto tbo = RunCommand(BinaryPath("coordinator/moe-coordinator") +
                        " --two-batch-overlap --world-size 2 --tp 2 --model " + dir.path() +
                        " --listen 127.0.0.1:0 --cluster-listen 127.0.0.1:0");
  EXPECT_NE(tbo.exit_code, 0);
  EXPECT_THAT(tbo.err + tbo.out, HasSubstr("--two-batch-overlap needs --tp 1"));
  auto make = RunCommand(BinaryPath("tools/moe-make-model") + " --preset tiny-qwen3-moe --out " +
                         dir.file("q") + " --router-skew 1");
  EXPECT_EQ(make.exit_code, 2);
  EXPECT_THAT(make.err, HasSubstr("--router-skew needs"));
}

// Disaggregation's layouts that the KV transfer cannot serve stop moe-coordinator at start-up,
// naming the flag: GQA KV heads split differently over the two groups' TP ranks, window layer
// groups, EPLB moving one group's experts.
TEST_F(MoeGenerateCliTest, DisaggregatedLayoutsThatCannotWorkAreClearErrors) {
  ScratchDir dir;
  for (const char* preset : {"tiny-qwen3-moe", "tiny-gemma3", "tiny-dsv3"}) {
    MakeModelOptions opt;
    opt.out_dir = dir.file(preset);
    ASSERT_TRUE(WriteCheckpoint(*PresetConfig(preset), opt).ok());
  }
  auto start = [&](const std::string& preset, const std::string& flags) {
    return RunCommand(BinaryPath("coordinator/moe-coordinator") + " " + flags + " --model " +
                      dir.file(preset) + " --listen 127.0.0.1:0 --cluster-listen 127.0.0.1:0");
  };
  auto gqa = start("tiny-qwen3-moe", "--world-size 2 --tp 2 --decode-world-size 2 --decode-tp 1");
  EXPECT_NE(gqa.exit_code, 0);
  EXPECT_THAT(gqa.err + gqa.out, HasSubstr("--decode-tp 1 must equal --tp 2 for this model"));
  auto window = start("tiny-gemma3", "--decode-world-size 1");
  EXPECT_NE(window.exit_code, 0);
  EXPECT_THAT(window.err + window.out, HasSubstr("--decode-world-size: this model's window layer"));
  auto eplb = start("tiny-dsv3", "--decode-world-size 1 --eplb-interval-steps 8");
  EXPECT_NE(eplb.exit_code, 0);
  EXPECT_THAT(eplb.err + eplb.out, HasSubstr("--eplb-interval-steps with --decode-world-size"));
  auto help = RunCommand(BinaryPath("coordinator/moe-coordinator") + " --help");
  EXPECT_THAT(help.out, HasSubstr("--decode-world-size"));
  auto worker = RunCommand(BinaryPath("worker/moe-worker") +
                           " --coordinator 127.0.0.1:1 --model x --group prefill --rank 0 "
                           "--world-size 1");
  EXPECT_EQ(worker.exit_code, 1);
  EXPECT_THAT(worker.err, HasSubstr("--group prefill: expected main or decode"));
}

TEST_F(MoeGenerateCliTest, MissingModelFolder) {
  auto r = RunCommand(BinaryPath("tools/moe-generate") + " --model /nonexistent --prompt-ids 1");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("/nonexistent"));
}

}  // namespace
}  // namespace moe

namespace moe {
namespace {

TEST(MoePlanCliTest, TableJsonAndExitCodes) {
  using ::moe::testing::BinaryPath;
  using ::moe::testing::RunCommand;
  const std::string plan = BinaryPath("tools/moe-plan");
  auto help = RunCommand(plan + " --help");
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_THAT(help.out, ::testing::HasSubstr("--attn-tp"));
  auto ok = RunCommand(plan + " --model deepseek-v3 --gpu h800 --nodes 18 --redundant-experts 32");
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_THAT(ok.out, ::testing::HasSubstr("671.0B parameters"));
  EXPECT_THAT(ok.out, ::testing::HasSubstr("fits: yes"));
  auto json = RunCommand(plan + " --model kimi-k2 --gpu h200 --nodes 4 --json");
  ASSERT_EQ(json.exit_code, 0) << json.err;
  EXPECT_EQ(nlohmann::json::parse(json.out)["layout"]["ep"], 32);
  // Does not fit: exit code 3 and the reason.
  auto no = RunCommand(plan + " --model deepseek-v3 --gpu h100 --nodes 1 --attn-tp 8 --dtype bf16");
  EXPECT_EQ(no.exit_code, 3);
  EXPECT_THAT(no.out, ::testing::HasSubstr("fits: NO"));
  auto bad = RunCommand(plan + " --gpu b200");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_THAT(bad.err, ::testing::HasSubstr("unknown GPU preset"));
}

// moe-tokenize on the tokenizer moe-make-model wrote: ids and text both ways, clear errors.
TEST_F(MoeGenerateCliTest, MoeTokenizeEncodesDecodesAndNamesBadInput) {
  const std::string tok = BinaryPath("tools/moe-tokenize") + " --model " + dir_->file("tiny");
  auto help = RunCommand(BinaryPath("tools/moe-tokenize") + " --help");
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_THAT(help.out + help.err, HasSubstr("--jsonl"));
  auto enc = RunCommand(tok + " --text 'Hello, 世界'");
  ASSERT_EQ(enc.exit_code, 0) << enc.err;
  EXPECT_THAT(enc.out, ::testing::StartsWith("0,"));  // BOS first
  auto dec = RunCommand(tok + " --skip-special --decode " + std::string(absl::StripAsciiWhitespace(enc.out)));
  ASSERT_EQ(dec.exit_code, 0) << dec.err;
  EXPECT_EQ(dec.out, "Hello, 世界\n");
  auto bad = RunCommand(tok + " --decode 1,x");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_THAT(bad.err, HasSubstr("\"x\" is not an id"));
  ScratchDir empty;
  auto none = RunCommand(BinaryPath("tools/moe-tokenize") + " --model " + empty.path() + " --text a");
  EXPECT_NE(none.exit_code, 0);
  EXPECT_THAT(none.err, HasSubstr("expected tokenizer.json or tiktoken.model"));
}

}  // namespace
}  // namespace moe

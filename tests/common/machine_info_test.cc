#include "common/machine_info.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_format.h"

namespace moe {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr char kCpuinfo[] =
    "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C\n"
    "flags\t\t: fpu sse4_2 avx f16c fma avx2 avx512f avx512bw avx512vl avx512_vnni avx512_bf16 "
    "amx_tile amx_bf16\n\n"
    "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C\nflags\t\t: fpu avx2\n";
constexpr char kMeminfo[] = "MemTotal:       24576000 kB\nMemFree:         1000 kB\n";

TEST(MachineInfoTest, ParsesModelExtensionsCpusAndMemory) {
  const MachineInfo m = ParseMachineInfo(kCpuinfo, kMeminfo);
  EXPECT_EQ(m.cpu_model, "Intel(R) Xeon(R) Platinum 8481C");
  // In the reported order, not the file's; "avx" is matched as a whole word, not inside "avx2".
  EXPECT_THAT(m.simd, ElementsAre("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw",
                                  "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16"));
  EXPECT_EQ(m.logical_cpus, 2);
  EXPECT_NEAR(m.memory_gib, 24576000.0 / 1048576.0, 1e-9);
}

TEST(MachineInfoTest, Avx2OnlyMachineReportsNoAvx512) {
  const MachineInfo m = ParseMachineInfo(
      "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: avx avx2 fma f16c\n", "");
  EXPECT_THAT(m.simd, ElementsAre("avx", "avx2", "fma", "f16c"));
  EXPECT_EQ(m.memory_gib, 0);
}

TEST(MachineInfoTest, ThisMachineIsDescribed) {
  const MachineInfo m = ReadMachineInfo();
  EXPECT_GT(m.logical_cpus, 0);
  EXPECT_GT(m.usable_cpus, 0);
  EXPECT_LE(m.usable_cpus, m.logical_cpus);
  EXPECT_GT(m.memory_gib, 0);
  EXPECT_THAT(Describe(m), HasSubstr(absl::StrFormat("%d of %d CPUs", m.usable_cpus, m.logical_cpus)));
}

}  // namespace
}  // namespace moe

// Malformed safetensors files give errors that name the file and tensor — never a crash.
#include "checkpoint/safetensors.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace moe {
namespace {

using ::moe::testing::FloatBytes;
using ::moe::testing::SafetensorsBytes;
using ::moe::testing::ScratchDir;
using ::moe::testing::WriteFile;
using ::testing::HasSubstr;

absl::Status OpenBytes(const std::string& bytes) {
  ScratchDir dir;
  const std::string path = dir.file("m.safetensors");
  WriteFile(path, bytes);
  auto f = SafetensorsFile::Open(path);
  if (!f.ok()) return f.status();
  return absl::OkStatus();
}

const std::string kGoodHeader =
    R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
    R"("b":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]},"__metadata__":{"format":"pt"}})";

TEST(SafetensorsTest, OpensWellFormedFile) {
  ScratchDir dir;
  const std::string path = dir.file("m.safetensors");
  WriteFile(path, SafetensorsBytes(kGoodHeader, std::string(22, '\0')));
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_NE((*f)->Find("a"), nullptr);
  EXPECT_EQ((*f)->Find("a")->shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ((*f)->Find("b")->dtype, DType::kBF16);
  EXPECT_EQ((*f)->Find("c"), nullptr);
  EXPECT_EQ((*f)->header().metadata.at("format"), "pt");
}

TEST(SafetensorsTest, TruncatedFile) {
  const absl::Status s = OpenBytes("abc");
  EXPECT_THAT(std::string(s.message()), HasSubstr("truncated"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("m.safetensors"));
}

TEST(SafetensorsTest, HeaderLengthBeyondFile) {
  std::string bytes = SafetensorsBytes(kGoodHeader, std::string(22, '\0'));
  bytes[0] = static_cast<char>(0xff);
  bytes[1] = static_cast<char>(0xff);
  EXPECT_THAT(std::string(OpenBytes(bytes).message()), HasSubstr("beyond the file"));
  std::string huge = bytes;
  huge[7] = static_cast<char>(0x7f);  // ~2^63
  EXPECT_THAT(std::string(OpenBytes(huge).message()), HasSubstr("exceeds"));
}

TEST(SafetensorsTest, DataSectionTruncated) {
  // Header promises 22 data bytes, the file holds 10.
  const absl::Status s = OpenBytes(SafetensorsBytes(kGoodHeader, std::string(10, '\0')));
  EXPECT_THAT(std::string(s.message()), HasSubstr("out of range"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("tensor \""));
}

TEST(SafetensorsTest, BadJson) {
  EXPECT_THAT(std::string(OpenBytes(SafetensorsBytes("{\"a\": [", "")).message()),
              HasSubstr("not valid JSON"));
  EXPECT_THAT(std::string(OpenBytes(SafetensorsBytes("[1, 2]", "")).message()),
              HasSubstr("not a JSON object"));
}

struct BadEntry {
  std::string label, header, expected;
};

class SafetensorsEntryTest : public ::testing::TestWithParam<BadEntry> {};

TEST_P(SafetensorsEntryTest, NamesTensorAndProblem) {
  auto h = ParseSafetensorsHeader(GetParam().header, 64, "f.safetensors");
  ASSERT_FALSE(h.ok());
  EXPECT_THAT(std::string(h.status().message()), HasSubstr(GetParam().expected));
  EXPECT_THAT(std::string(h.status().message()), HasSubstr("f.safetensors"));
}

INSTANTIATE_TEST_SUITE_P(
    Malformed, SafetensorsEntryTest,
    ::testing::Values(
        BadEntry{"out_of_range", R"({"w":{"dtype":"F32","shape":[20],"data_offsets":[0,80]}})",
                 "out of range"},
        BadEntry{"begin_after_end", R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})",
                 "begin > end"},
        BadEntry{"overlap",
                 R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                 R"("v":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
                 "overlap"},
        BadEntry{"size_mismatch", R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})",
                 "need 12"},
        BadEntry{"unknown_dtype", R"({"w":{"dtype":"Q4","shape":[3],"data_offsets":[0,3]}})",
                 "unsupported dtype"},
        BadEntry{"negative_dim", R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}})",
                 "non-negative"},
        BadEntry{
            "shape_overflow",
            R"({"w":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,0]}})",
            "too large"},
        BadEntry{"missing_offsets", R"({"w":{"dtype":"F32","shape":[1]}})", "data_offsets"},
        BadEntry{"offsets_not_numbers",
                 R"({"w":{"dtype":"F32","shape":[1],"data_offsets":["0","4"]}})", "data_offsets"},
        BadEntry{"entry_not_object", R"({"w":7})", "expected an object"},
        BadEntry{"metadata_not_strings", R"({"__metadata__":{"a":1}})", "__metadata__"}),
    [](const auto& info) { return info.param.label; });

TEST(SafetensorsTest, MissingFileIsNotFound) {
  auto f = SafetensorsFile::Open("/nonexistent/x.safetensors");
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
}

TEST(SafetensorsTest, DataIsReadable) {
  ScratchDir dir;
  const std::string path = dir.file("m.safetensors");
  WriteFile(path, SafetensorsBytes(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                                   FloatBytes({1.5f, -2.0f})));
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok());
  const float* p = reinterpret_cast<const float*>((*f)->Data(*(*f)->Find("x")));
  EXPECT_EQ(p[0], 1.5f);
  EXPECT_EQ(p[1], -2.0f);
}

}  // namespace
}  // namespace moe

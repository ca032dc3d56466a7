#include "common/npy.h"

#include <cstdio>
#include <fstream>

#include "gtest/gtest.h"

namespace moe {
namespace {

TEST(NpyTest, RoundTrips) {
  Tensor t({2, 3});
  for (int i = 0; i < 6; ++i) t[i] = 0.5f * i - 1.0f;
  const std::string path = ::testing::TempDir() + "/t.npy";
  ASSERT_TRUE(WriteNpy(path, t).ok());
  auto back = ReadNpy(path);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->shape(), t.shape());
  for (int i = 0; i < 6; ++i) EXPECT_EQ((*back)[i], t[i]);
}

TEST(NpyTest, HeaderIsNumpyCompatible) {
  // numpy requires the preamble + header to be a multiple of 64 bytes, ending in a newline.
  Tensor t({17, 5});
  const std::string path = ::testing::TempDir() + "/h.npy";
  ASSERT_TRUE(WriteNpy(path, t).ok());
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const uint16_t len = static_cast<uint8_t>(bytes[8]) | (static_cast<uint8_t>(bytes[9]) << 8);
  EXPECT_EQ((10 + len) % 64, 0);
  EXPECT_EQ(bytes[10 + len - 1], '\n');
  EXPECT_NE(bytes.find("'shape': (17, 5)"), std::string::npos);
  EXPECT_EQ(bytes.size(), 10u + len + 17 * 5 * 4);
}

TEST(NpyTest, RejectsOtherDtypes) {
  const std::string path = ::testing::TempDir() + "/bad.npy";
  std::ofstream out(path, std::ios::binary);
  std::string header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }";
  header.append(128 - 10 - header.size() - 1, ' ');
  header += '\n';
  out.write("\x93NUMPY\x01\x00", 8);
  const uint16_t len = static_cast<uint16_t>(header.size());
  out.write(reinterpret_cast<const char*>(&len), 2);
  out << header << std::string(8, '\0');
  out.close();
  EXPECT_FALSE(ReadNpy(path).ok());
}

}  // namespace
}  // namespace moe

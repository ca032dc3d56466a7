#include "common/npy.h"

#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"

namespace moe {

absl::Status WriteNpy(const std::string& path, const Tensor& t) {
  std::string shape = "(";
  for (size_t i = 0; i < t.rank(); ++i) absl::StrAppend(&shape, i > 0 ? ", " : "", t.dim(i));
  if (t.rank() == 1) shape += ",";
  shape += ")";
  std::string header =
      absl::StrCat("{'descr': '<f4', 'fortran_order': False, 'shape': ", shape, ", }");
  // Magic (6) + version (2) + length (2) + header must be a multiple of 64, ending in '\n'.
  const size_t total = ((10 + header.size() + 1 + 63) / 64) * 64;
  header.append(total - 10 - header.size() - 1, ' ');
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write ", path));
  const uint16_t len = static_cast<uint16_t>(header.size());
  out.write("\x93NUMPY\x01\x00", 8);
  out.write(reinterpret_cast<const char*>(&len), 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(reinterpret_cast<const char*>(t.data()), static_cast<std::streamsize>(t.bytes()));
  if (!out) return absl::DataLossError(absl::StrCat("short write to ", path));
  return absl::OkStatus();
}

absl::StatusOr<Tensor> ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string bytes = ss.str();
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a float32 .npy file: ", why));
  };
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0) return bad("bad magic");
  size_t header_len, offset;
  if (bytes[6] == 1) {
    uint16_t l;
    std::memcpy(&l, bytes.data() + 8, 2);
    header_len = l;
    offset = 10;
  } else {
    if (bytes.size() < 12) return bad("truncated");
    uint32_t l;
    std::memcpy(&l, bytes.data() + 8, 4);
    header_len = l;
    offset = 12;
  }
  if (offset + header_len > bytes.size()) return bad("truncated header");
  const std::string header = bytes.substr(offset, header_len);
  if (header.find("'<f4'") == std::string::npos) return bad("dtype is not '<f4'");
  if (header.find("'fortran_order': False") == std::string::npos) return bad("fortran order");
  const size_t open = header.find("'shape': (");
  const size_t close = header.find(')', open);
  if (open == std::string::npos || close == std::string::npos) return bad("no shape");
  std::vector<int64_t> shape;
  for (absl::string_view part :
       absl::StrSplit(header.substr(open + 10, close - open - 10), ',', absl::SkipWhitespace())) {
    int64_t d;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &d) || d < 0) return bad("bad shape");
    shape.push_back(d);
  }
  const size_t n = static_cast<size_t>(NumElements(shape));
  const size_t data_offset = offset + header_len;
  if (bytes.size() - data_offset != n * 4) return bad("data size disagrees with shape");
  FloatVector data(n);
  std::memcpy(data.data(), bytes.data() + data_offset, n * 4);
  return Tensor(std::move(shape), std::move(data));
}

}  // namespace moe

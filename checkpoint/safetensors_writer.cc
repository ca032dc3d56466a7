#include "checkpoint/safetensors_writer.h"

#include "absl/strings/str_cat.h"
#include "common/tensor.h"
#include "nlohmann/json.hpp"

namespace moe {

void SafetensorsWriter::Declare(const std::string& name, DType dtype, std::vector<int64_t> shape) {
  const uint64_t bytes = static_cast<uint64_t>(NumElements(shape)) * DTypeSize(dtype);
  tensors_.push_back({name, dtype, std::move(shape), bytes});
}

absl::Status SafetensorsWriter::Begin(const std::string& path,
                                      const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header;
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const Declared& t : tensors_) {
    header[t.name] = {{"dtype", std::string(DTypeName(t.dtype))},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.bytes}}};
    offset += t.bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keep the data section 8-byte aligned
  path_ = path;
  out_.open(path, std::ios::binary | std::ios::trunc);
  if (!out_) return absl::PermissionDeniedError(absl::StrCat("cannot write ", path));
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(text.size() >> (8 * i));
  out_.write(reinterpret_cast<const char*>(len), 8);
  out_.write(text.data(), static_cast<std::streamsize>(text.size()));
  return out_ ? absl::OkStatus() : absl::DataLossError(absl::StrCat("short write to ", path));
}

absl::Status SafetensorsWriter::Write(const std::string& name, const void* data, uint64_t bytes) {
  if (next_ >= tensors_.size() || tensors_[next_].name != name) {
    return absl::FailedPreconditionError(
        absl::StrCat(path_, ": tensor \"", name, "\" written out of declaration order"));
  }
  if (tensors_[next_].bytes != bytes) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": tensor \"", name, "\" declared ",
                                                   tensors_[next_].bytes, " bytes, got ", bytes));
  }
  out_.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
  offset_ += bytes;
  ++next_;
  return out_ ? absl::OkStatus() : absl::DataLossError(absl::StrCat("short write to ", path_));
}

absl::Status SafetensorsWriter::Finish() {
  if (next_ != tensors_.size()) {
    return absl::FailedPreconditionError(
        absl::StrCat(path_, ": ", tensors_.size() - next_, " declared tensors were never written"));
  }
  out_.close();
  return out_ ? absl::OkStatus() : absl::DataLossError(absl::StrCat("cannot close ", path_));
}

}  // namespace moe

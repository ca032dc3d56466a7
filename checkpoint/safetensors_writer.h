// Writes safetensors files. Tensors are declared first (so the header can be written up front),
// then their bytes are streamed in declaration order — a multi-GB checkpoint never sits in memory.
#pragma once

#include <cstdint>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/dtype.h"

namespace moe {

class SafetensorsWriter {
 public:
  void Declare(const std::string& name, DType dtype, std::vector<int64_t> shape);
  // Writes the header of every declared tensor to `path`.
  absl::Status Begin(const std::string& path, const std::map<std::string, std::string>& metadata);
  // Appends the bytes of the next declared tensor; `bytes` must equal its declared size.
  absl::Status Write(const std::string& name, const void* data, uint64_t bytes);
  absl::Status Finish();
  uint64_t data_bytes() const { return offset_; }

 private:
  struct Declared {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    uint64_t bytes;
  };
  std::vector<Declared> tensors_;
  size_t next_ = 0;
  uint64_t offset_ = 0;
  std::string path_;
  std::ofstream out_;
};

}  // namespace moe

// The safetensors format: an 8-byte little-endian header length N, N bytes of JSON describing each
// tensor ({"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}), then
// the data section. SafetensorsFile mmaps one file and validates its header completely before any
// tensor byte is touched, so a malformed file is an error, never an out-of-bounds read.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/dtype.h"

namespace moe {

struct TensorEntry {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets within the data section
  uint64_t end = 0;
};

struct SafetensorsHeader {
  std::vector<TensorEntry> tensors;  // sorted by begin offset
  std::map<std::string, std::string> metadata;
};

// Largest JSON header accepted (the format's own limit).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100ull << 20;

// Parses and validates the JSON header of a file whose data section holds `data_size` bytes:
// types, shapes, offsets inside the data section, sizes matching dtype x shape, no overlaps.
// `file_name` only labels errors.
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(absl::string_view json, uint64_t data_size,
                                                         absl::string_view file_name);

// Validates a whole file image: the 8-byte length, the header within the file, then the header
// itself against the data section that follows. On success `*data_offset` is where data begins.
absl::StatusOr<SafetensorsHeader> ParseSafetensorsBuffer(const uint8_t* bytes, uint64_t size,
                                                         absl::string_view file_name,
                                                         uint64_t* data_offset);

class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const SafetensorsHeader& header() const { return header_; }
  const TensorEntry* Find(absl::string_view name) const;
  // Start of the entry's bytes; valid for entry.end - entry.begin bytes.
  const uint8_t* Data(const TensorEntry& entry) const { return data_ + entry.begin; }
  // Drops the entry's pages from this process's resident memory (they stay in the page cache
  // and come back if read again): for a tensor converted into memory of its own.
  void Release(const TensorEntry& entry) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  const uint8_t* data_ = nullptr;
  SafetensorsHeader header_;
  std::map<std::string, size_t, std::less<>> index_;
};

}  // namespace moe

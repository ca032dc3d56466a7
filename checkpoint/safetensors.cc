#include "checkpoint/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace moe {
namespace {

using Json = nlohmann::json;

absl::Status Malformed(absl::string_view file, absl::string_view tensor, absl::string_view what) {
  if (tensor.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": malformed safetensors header: ", what));
  }
  return absl::InvalidArgumentError(
      absl::StrCat(file, ": tensor \"", tensor, "\": malformed safetensors entry: ", what));
}

absl::StatusOr<TensorEntry> ParseEntry(const std::string& name, const Json& v, uint64_t data_size,
                                       absl::string_view file) {
  if (!v.is_object()) return Malformed(file, name, "expected an object");
  TensorEntry e;
  e.name = name;
  auto dtype_it = v.find("dtype");
  if (dtype_it == v.end() || !dtype_it->is_string()) {
    return Malformed(file, name, "\"dtype\" missing or not a string");
  }
  auto dtype = ParseDType(dtype_it->get_ref<const std::string&>());
  if (!dtype.ok()) return Malformed(file, name, dtype.status().message());
  e.dtype = *dtype;

  auto shape_it = v.find("shape");
  if (shape_it == v.end() || !shape_it->is_array()) {
    return Malformed(file, name, "\"shape\" missing or not an array");
  }
  if (shape_it->size() > 8) return Malformed(file, name, "more than 8 dimensions");
  uint64_t numel = 1;
  for (const Json& d : *shape_it) {
    if (!d.is_number_unsigned() && !(d.is_number_integer() && d.get<int64_t>() >= 0)) {
      return Malformed(file, name, "shape entries must be non-negative integers");
    }
    const uint64_t dim = d.get<uint64_t>();
    if (dim > (1ull << 40) || __builtin_mul_overflow(numel, dim, &numel)) {
      return Malformed(file, name, "shape too large");
    }
    e.shape.push_back(static_cast<int64_t>(dim));
  }
  uint64_t nbytes;
  if (__builtin_mul_overflow(numel, static_cast<uint64_t>(DTypeSize(e.dtype)), &nbytes)) {
    return Malformed(file, name, "shape too large");
  }

  auto off_it = v.find("data_offsets");
  if (off_it == v.end() || !off_it->is_array() || off_it->size() != 2 ||
      !(*off_it)[0].is_number_unsigned() || !(*off_it)[1].is_number_unsigned()) {
    return Malformed(file, name, "\"data_offsets\" must be two non-negative integers");
  }
  e.begin = (*off_it)[0].get<uint64_t>();
  e.end = (*off_it)[1].get<uint64_t>();
  if (e.begin > e.end) return Malformed(file, name, "data_offsets begin > end");
  if (e.end > data_size) {
    return Malformed(file, name,
                     absl::StrCat("data_offsets [", e.begin, ", ", e.end,
                                  "] out of range: the data section holds ", data_size, " bytes"));
  }
  if (e.end - e.begin != nbytes) {
    return Malformed(file, name,
                     absl::StrCat("data_offsets span ", e.end - e.begin, " bytes but ",
                                  DTypeName(e.dtype), " x ", numel, " elements need ", nbytes));
  }
  return e;
}

}  // namespace

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(absl::string_view json, uint64_t data_size,
                                                         absl::string_view file) {
  Json j = Json::parse(json.begin(), json.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Malformed(file, "", "header is not valid JSON");
  if (!j.is_object()) return Malformed(file, "", "header is not a JSON object");
  SafetensorsHeader h;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it->is_object()) return Malformed(file, "", "__metadata__ is not an object");
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string()) return Malformed(file, "", "__metadata__ values must be strings");
        h.metadata[m.key()] = m->get<std::string>();
      }
      continue;
    }
    MOE_ASSIGN_OR_RETURN(TensorEntry e, ParseEntry(it.key(), *it, data_size, file));
    h.tensors.push_back(std::move(e));
  }
  std::sort(h.tensors.begin(), h.tensors.end(), [](const TensorEntry& a, const TensorEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (size_t i = 1; i < h.tensors.size(); ++i) {
    const TensorEntry& prev = h.tensors[i - 1];
    const TensorEntry& cur = h.tensors[i];
    if (cur.begin < prev.end) {
      return Malformed(file, cur.name,
                       absl::StrCat("data_offsets overlap those of \"", prev.name, "\""));
    }
  }
  return h;
}

absl::StatusOr<SafetensorsHeader> ParseSafetensorsBuffer(const uint8_t* bytes, uint64_t size,
                                                         absl::string_view path,
                                                         uint64_t* data_offset) {
  if (size < 8) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": truncated safetensors file (", size, " bytes, need >= 8)"));
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len > kMaxSafetensorsHeaderBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": header length ", header_len, " exceeds the 100 MiB limit"));
  }
  if (header_len > size - 8) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": truncated safetensors file: header ",
                                                   "length ", header_len, " beyond the file's ",
                                                   size, " bytes"));
  }
  const absl::string_view json(reinterpret_cast<const char*>(bytes + 8), header_len);
  *data_offset = 8 + header_len;
  return ParseSafetensorsHeader(json, size - 8 - header_len, path);
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size == 0) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": truncated safetensors file (empty)"));
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) {
    return absl::InternalError(absl::StrCat(path, ": mmap failed: ", std::strerror(errno)));
  }
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  f->map_ = map;
  f->map_size_ = size;
  const auto* bytes = static_cast<const uint8_t*>(map);
  uint64_t data_offset = 0;
  MOE_ASSIGN_OR_RETURN(f->header_, ParseSafetensorsBuffer(bytes, size, path, &data_offset));
  f->data_ = bytes + data_offset;
  for (size_t i = 0; i < f->header_.tensors.size(); ++i) {
    f->index_.emplace(f->header_.tensors[i].name, i);
  }
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

void SafetensorsFile::Release(const TensorEntry& entry) const {
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data_ + entry.begin);
  const uintptr_t end = reinterpret_cast<uintptr_t>(data_ + entry.end);
  const uintptr_t first = (begin + page - 1) / page * page, last = end / page * page;
  if (last > first) {
    ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);  // only advice
  }
}

const TensorEntry* SafetensorsFile::Find(absl::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

}  // namespace moe

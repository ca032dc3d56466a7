#include "checkpoint/checkpoint.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace moe {
namespace fs = std::filesystem;

namespace {

absl::Status TensorError(const std::string& file, const std::string& name, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(file, ": tensor \"", name, "\": ", what));
}

// "a.b.weight" -> "a.b.weight_scale_inv"
std::string ScaleName(const std::string& weight_name) { return weight_name + "_scale_inv"; }

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(
    const std::string& dir, std::optional<QuantizationConfig> quant) {
  std::unique_ptr<Checkpoint> ck(new Checkpoint());
  ck->dir_ = dir;
  ck->quant_ = quant;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat(dir, ": not a checkpoint folder"));
  }
  const fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
  std::vector<std::string> shard_names;
  std::map<std::string, std::string> weight_map;  // tensor -> file, from the index
  if (fs::exists(index_path, ec)) {
    std::ifstream in(index_path);
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string text = ss.str();
    auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object() || !j.contains("weight_map") ||
        !j["weight_map"].is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path.string(), ": expected a JSON object with a \"weight_map\""));
    }
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it->is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(index_path.string(), ": weight_map[\"",
                                                       it.key(), "\"] is not a file name"));
      }
      const std::string file = it->get<std::string>();
      if (file.find('/') != std::string::npos || file == "..") {
        return absl::InvalidArgumentError(absl::StrCat(index_path.string(), ": weight_map[\"",
                                                       it.key(),
                                                       "\"] names a path outside the folder"));
      }
      weight_map[it.key()] = file;
      if (std::find(shard_names.begin(), shard_names.end(), file) == shard_names.end()) {
        shard_names.push_back(file);
      }
    }
  } else {
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      if (e.path().extension() == ".safetensors") shard_names.push_back(e.path().filename());
    }
    std::sort(shard_names.begin(), shard_names.end());
    if (shard_names.empty()) {
      return absl::NotFoundError(absl::StrCat(dir, ": no *.safetensors files"));
    }
  }
  for (const std::string& shard : shard_names) {
    MOE_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open((fs::path(dir) / shard).string()));
    for (const TensorEntry& e : file->header().tensors) {
      auto [it, inserted] = ck->where_.emplace(e.name, Location{file.get(), &e});
      if (!inserted) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor \"", e.name, "\" is stored twice: in ", it->second.file->path(),
                         " and ", file->path()));
      }
    }
    ck->files_.push_back(std::move(file));
  }
  for (const auto& [name, file] : weight_map) {
    auto it = ck->where_.find(name);
    if (it == ck->where_.end() || fs::path(it->second.file->path()).filename() != file) {
      return absl::InvalidArgumentError(absl::StrCat(index_path.string(), ": tensor \"", name,
                                                     "\" is listed in ", file,
                                                     " but not stored there"));
    }
  }
  return ck;
}

std::vector<std::string> Checkpoint::TensorNames() const {
  std::vector<std::string> names;
  for (const auto& [name, loc] : where_) names.push_back(name);
  return names;
}

uint64_t Checkpoint::total_bytes() const {
  uint64_t n = 0;
  for (const auto& [name, loc] : where_) n += loc.entry->end - loc.entry->begin;
  return n;
}

absl::StatusOr<Checkpoint::Location> Checkpoint::Find(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) {
    return absl::NotFoundError(absl::StrCat(dir_, ": missing tensor \"", name, "\""));
  }
  return it->second;
}

absl::StatusOr<TensorEntry> Checkpoint::Describe(const std::string& name) const {
  MOE_ASSIGN_OR_RETURN(Location loc, Find(name));
  return *loc.entry;
}

absl::StatusOr<Tensor> Checkpoint::Load(const std::string& name,
                                        const std::vector<int64_t>& expected_shape,
                                        SliceSpec slice) {
  MOE_ASSIGN_OR_RETURN(Location loc, Find(name));
  const TensorEntry& e = *loc.entry;
  const std::string& file = loc.file->path();
  if (e.shape != expected_shape) {
    return TensorError(file, name,
                       absl::StrCat("shape ", ShapeString(e.shape), " disagrees with the ",
                                    ShapeString(expected_shape), " that config.json implies"));
  }
  // View the tensor as rows x cols (1-D tensors are one row).
  const int64_t rows = e.shape.size() == 2 ? e.shape[0] : 1;
  const int64_t cols = e.shape.size() == 2 ? e.shape[1] : NumElements(e.shape);
  int64_t r0 = 0, r1 = rows, c0 = 0, c1 = cols;
  if (slice.dim != SliceSpec::Dim::kNone) {
    if (e.shape.size() != 2) return TensorError(file, name, "only 2-D tensors can be sliced");
    const int64_t limit = slice.dim == SliceSpec::Dim::kRows ? rows : cols;
    if (slice.begin < 0 || slice.begin > slice.end || slice.end > limit) {
      return TensorError(
          file, name,
          absl::StrCat("slice [", slice.begin, ", ", slice.end, ") outside [0, ", limit, ")"));
    }
    if (slice.dim == SliceSpec::Dim::kRows) {
      r0 = slice.begin;
      r1 = slice.end;
    } else {
      c0 = slice.begin;
      c1 = slice.end;
    }
  }
  const int64_t out_rows = r1 - r0, out_cols = c1 - c0;
  std::vector<int64_t> out_shape = e.shape;
  if (e.shape.size() == 2) out_shape = {out_rows, out_cols};
  Tensor out = Tensor::Uninitialized(out_shape);
  const size_t esize = DTypeSize(e.dtype);
  const uint8_t* base = loc.file->Data(e);
  uint64_t read = static_cast<uint64_t>(out_rows * out_cols) * esize;
  const float* scales = nullptr;
  int64_t br = 1, bc = 1, scale_cols = 0;
  if (e.dtype == DType::kF8E4M3) {
    if (!quant_) {
      return TensorError(file, name, "is F8_E4M3 but config.json has no quantization_config");
    }
    if (e.shape.size() != 2) return TensorError(file, name, "F8_E4M3 tensor must be 2-D");
    br = quant_->block_rows;
    bc = quant_->block_cols;
    const std::string scale_name = ScaleName(name);
    auto scale_loc = Find(scale_name);
    if (!scale_loc.ok()) {
      return TensorError(
          file, name, absl::StrCat("F8_E4M3 weight without its block scales \"", scale_name, "\""));
    }
    const TensorEntry& s = *scale_loc->entry;
    const std::vector<int64_t> scale_shape = {CeilDiv(rows, br), CeilDiv(cols, bc)};
    if (s.dtype != DType::kF32 || s.shape != scale_shape) {
      return TensorError(
          scale_loc->file->path(), scale_name,
          absl::StrCat("block scales must be F32 ", ShapeString(scale_shape), " for a ",
                       ShapeString(e.shape), " weight in ", br, "x", bc, " blocks; got ",
                       DTypeName(s.dtype), " ", ShapeString(s.shape)));
    }
    scales = reinterpret_cast<const float*>(scale_loc->file->Data(s));  // 8-byte aligned data
    scale_cols = scale_shape[1];
    read += static_cast<uint64_t>((CeilDiv(r1, br) - r0 / br) * (CeilDiv(c1, bc) - c0 / bc)) * 4;
  }
#pragma omp parallel for schedule(static) if (out_rows * out_cols > (1 << 16))
  for (int64_t r = r0; r < r1; ++r) {
    float* dst = out.data() + (r - r0) * out_cols;
    ConvertToF32(e.dtype, base + (r * cols + c0) * esize, dst, static_cast<size_t>(out_cols));
    if (scales == nullptr) continue;
    // Multiply each run of columns inside one scale block by that block's scale.
    for (int64_t c = c0; c < c1;) {
      const int64_t run_end = std::min(c1, (c / bc + 1) * bc);
      float scale;
      std::memcpy(&scale, scales + (r / br) * scale_cols + c / bc, sizeof(float));
      for (int64_t i = c; i < run_end; ++i) dst[i - c0] *= scale;
      c = run_end;
    }
  }
  bytes_read_ += read;
  return out;
}

}  // namespace moe

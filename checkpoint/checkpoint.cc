#include "checkpoint/checkpoint.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "checkpoint/quantize.h"
#include "checkpoint/weight_names.h"
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

// The part [r0, r1) x [c0, c1) of a tensor viewed as rows x cols that `slice` selects.
struct Window {
  int64_t r0, r1, c0, c1;
  int64_t rows() const { return r1 - r0; }
  int64_t cols() const { return c1 - c0; }
};

absl::StatusOr<Window> SliceWindow(const std::string& file, const std::string& name,
                                   const std::vector<int64_t>& shape, SliceSpec slice) {
  // 1-D tensors are one row.
  const int64_t rows = shape.size() == 2 ? shape[0] : 1;
  const int64_t cols = shape.size() == 2 ? shape[1] : NumElements(shape);
  Window w{0, rows, 0, cols};
  if (slice.dim == SliceSpec::Dim::kNone) return w;
  if (shape.size() != 2) return TensorError(file, name, "only 2-D tensors can be sliced");
  const int64_t limit = slice.dim == SliceSpec::Dim::kRows ? rows : cols;
  if (slice.begin < 0 || slice.begin > slice.end || slice.end > limit) {
    return TensorError(
        file, name,
        absl::StrCat("slice [", slice.begin, ", ", slice.end, ") outside [0, ", limit, ")"));
  }
  if (slice.dim == SliceSpec::Dim::kRows) {
    w.r0 = slice.begin;
    w.r1 = slice.end;
  } else {
    w.c0 = slice.begin;
    w.c1 = slice.end;
  }
  return w;
}

absl::Status CheckShape(const std::string& file, const std::string& name,
                        const std::vector<int64_t>& stored, const std::vector<int64_t>& expected) {
  if (stored == expected) return absl::OkStatus();
  return TensorError(file, name,
                     absl::StrCat("shape ", ShapeString(stored), " disagrees with the ",
                                  ShapeString(expected), " that config.json implies"));
}

// The int4 dequantization, element by element (the reference the SIMD kernels are checked against
// through the widened path): value i of word w is column 8w + i, stored as q + 8.
float Int4Element(const uint8_t* packed_row, const uint8_t* scale_row, int64_t c,
                  int64_t group_size) {
  uint32_t word;
  std::memcpy(&word, packed_row + (c / 8) * 4, 4);
  const int q = static_cast<int>((word >> (4 * (c % 8))) & 0xfu) - 8;
  uint16_t s;
  std::memcpy(&s, scale_row + (c / group_size) * 2, 2);
  return static_cast<float>(q) * BF16ToF32(s);
}

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
    ck->files_.push_back(std::shared_ptr<SafetensorsFile>(std::move(file)));
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

bool Checkpoint::StoredAsInt4(const std::string& name) const {
  return !Has(name) && Has(Int4Names(name).packed);
}

bool Checkpoint::HasWeight(const std::string& name) const {
  return Has(name) || StoredAsInt4(name);
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

absl::StatusOr<const float*> Checkpoint::BlockScales(const Location& loc,
                                                    const std::string& name) const {
  const TensorEntry& e = *loc.entry;
  const std::string& file = loc.file->path();
  if (!quant_ || !quant_->is_fp8()) {
    return TensorError(file, name,
                       "is F8_E4M3 but config.json has no fp8 quantization_config");
  }
  if (e.shape.size() != 2) return TensorError(file, name, "F8_E4M3 tensor must be 2-D");
  const int64_t br = quant_->block_rows, bc = quant_->block_cols;
  const std::string scale_name = ScaleName(name);
  auto scale_loc = Find(scale_name);
  if (!scale_loc.ok()) {
    return TensorError(
        file, name, absl::StrCat("F8_E4M3 weight without its block scales \"", scale_name, "\""));
  }
  const TensorEntry& s = *scale_loc->entry;
  const std::vector<int64_t> scale_shape = {CeilDiv(e.shape[0], br), CeilDiv(e.shape[1], bc)};
  if (s.dtype != DType::kF32 || s.shape != scale_shape) {
    return TensorError(
        scale_loc->file->path(), scale_name,
        absl::StrCat("block scales must be F32 ", ShapeString(scale_shape), " for a ",
                     ShapeString(e.shape), " weight in ", br, "x", bc, " blocks; got ",
                     DTypeName(s.dtype), " ", ShapeString(s.shape)));
  }
  const auto* scales = reinterpret_cast<const float*>(scale_loc->file->Data(s));
  // The kernels fold 2^120 into each scale (see kernels/cpu/weight_matmul.cc): scales of real
  // weights are far below 2^7, and a NaN, infinite or negative one is a broken file.
  for (int64_t i = 0; i < scale_shape[0] * scale_shape[1]; ++i) {
    float v;
    std::memcpy(&v, scales + i, 4);
    if (!(v >= 0.0f && v < 128.0f)) {
      return TensorError(scale_loc->file->path(), scale_name,
                         absl::StrCat("block scale ", v, " at index ", i,
                                      " is outside [0, 128)"));
    }
  }
  return scales;
}

absl::StatusOr<Tensor> Checkpoint::Load(const std::string& name,
                                        const std::vector<int64_t>& expected_shape,
                                        SliceSpec slice) {
  if (StoredAsInt4(name)) return LoadInt4(name, expected_shape, slice);
  MOE_ASSIGN_OR_RETURN(Location loc, Find(name));
  const TensorEntry& e = *loc.entry;
  const std::string& file = loc.file->path();
  MOE_RETURN_IF_ERROR(CheckShape(file, name, e.shape, expected_shape));
  if (e.dtype == DType::kI32) return TensorError(file, name, "I32 is not a weight dtype");
  MOE_ASSIGN_OR_RETURN(const Window win, SliceWindow(file, name, e.shape, slice));
  const int64_t r0 = win.r0, r1 = win.r1, c0 = win.c0, c1 = win.c1;
  const int64_t cols = e.shape.size() == 2 ? e.shape[1] : NumElements(e.shape);
  const int64_t out_rows = win.rows(), out_cols = win.cols();
  std::vector<int64_t> out_shape = e.shape;
  if (e.shape.size() == 2) out_shape = {out_rows, out_cols};
  Tensor out = Tensor::Uninitialized(out_shape);
  const size_t esize = DTypeSize(e.dtype);
  const uint8_t* base = loc.file->Data(e);
  uint64_t read = static_cast<uint64_t>(out_rows * out_cols) * esize;
  const float* scales = nullptr;
  int64_t br = 1, bc = 1, scale_cols = 0;
  if (e.dtype == DType::kF8E4M3) {
    MOE_ASSIGN_OR_RETURN(scales, BlockScales(loc, name));
    br = quant_->block_rows;
    bc = quant_->block_cols;
    scale_cols = CeilDiv(cols, bc);
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

// The window read as float32, then kept as float32 or quantized to fp8 blocks of its own (the
// window's first row and column start a block): owned memory, not a view of the file.
absl::StatusOr<WeightMatrix> Checkpoint::LoadConverted(const std::string& name,
                                                       const std::vector<int64_t>& shape,
                                                       SliceSpec slice, WeightFormat to) {
  const uint64_t before = bytes_read_.load();
  struct Fp8 {
    std::vector<uint8_t> q;
    std::vector<float> scales;
  };
  std::shared_ptr<Fp8> fp8;
  WeightMatrix w;  // the block size: WeightMatrix's default, 128 x 128
  if (to == WeightFormat::kF8Block) {
    // Reserved before the float32 copy is made, so that freeing the copy leaves a hole the next
    // weight's copy fits in (otherwise the heap grows by about the float32 model).
    MOE_ASSIGN_OR_RETURN(const Window win, SliceWindow(dir_, name, shape, slice));
    fp8 = std::make_shared<Fp8>();
    fp8->q.reserve(static_cast<size_t>(win.rows() * win.cols()));
    fp8->scales.reserve(static_cast<size_t>(CeilDiv(win.rows(), w.block_rows) *
                                            CeilDiv(win.cols(), w.block_cols)));
  }
  MOE_ASSIGN_OR_RETURN(Tensor t, Load(name, shape, slice));
  if (auto loc = Find(name); loc.ok()) loc->file->Release(*loc->entry);  // not read again
  w.rows = t.dim(0);
  w.cols = t.dim(1);
  if (to == WeightFormat::kF32) {
    w = F32WeightMatrix(std::move(t));
  } else {
    auto owned = std::move(fp8);
    QuantizeFp8(t.data(), w.rows, w.cols, w.block_rows, w.block_cols, &owned->q, &owned->scales);
    w.format = WeightFormat::kF8Block;
    w.data = owned->q.data();
    w.row_stride = w.cols;
    w.block_scales = owned->scales.data();
    w.scale_stride = CeilDiv(w.cols, w.block_cols);
    w.owner = std::move(owned);
  }
  bytes_read_ = before + w.bytes();  // what the kernels will read
  return w;
}

std::shared_ptr<const void> Checkpoint::Keeper(const SafetensorsFile* file) const {
  for (const auto& f : files_) {
    if (f.get() == file) return f;
  }
  return nullptr;
}

absl::StatusOr<WeightMatrix> Checkpoint::LoadMatrix(const std::string& name,
                                                    const std::vector<int64_t>& expected_shape,
                                                    SliceSpec slice, bool quantizable) {
  MOE_ASSIGN_OR_RETURN(WeightMatrix w,
                       LoadMatrixInFormat(name, expected_shape, slice, quantizable));
  const bool bf16_or_fp8 = w.format == WeightFormat::kBF16 || w.format == WeightFormat::kF8Block;
  if (activations_ != Activations::kF32 && bf16_or_fp8) w.x_rounding = Activations::kBf16;
  if (activations_ == Activations::kInt8 && w.format == WeightFormat::kInt4Group) {
    w.x_rounding = Activations::kInt8;
  }
  return w;
}

absl::StatusOr<WeightMatrix> Checkpoint::LoadMatrixInFormat(
    const std::string& name, const std::vector<int64_t>& expected_shape, SliceSpec slice,
    bool quantizable) {
  if (expected_shape.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(dir_, ": tensor \"", name, "\": a weight matrix must be 2-D"));
  }
  if (weights_at_load_ == WeightsAtLoad::kF32) {
    return LoadConverted(name, expected_shape, slice, WeightFormat::kF32);
  }
  if (weights_at_load_ == WeightsAtLoad::kFp8 && quantizable && Has(name)) {
    MOE_ASSIGN_OR_RETURN(Location loc, Find(name));
    const DType d = loc.entry->dtype;
    if (d == DType::kF32 || d == DType::kBF16 || d == DType::kF16) {
      return LoadConverted(name, expected_shape, slice, WeightFormat::kF8Block);
    }
  }
  if (StoredAsInt4(name)) return LoadInt4Matrix(name, expected_shape, slice);
  MOE_ASSIGN_OR_RETURN(Location loc, Find(name));
  const TensorEntry& e = *loc.entry;
  const std::string& file = loc.file->path();
  MOE_RETURN_IF_ERROR(CheckShape(file, name, e.shape, expected_shape));
  MOE_ASSIGN_OR_RETURN(const Window win, SliceWindow(file, name, e.shape, slice));
  WeightMatrix w;
  w.rows = win.rows();
  w.cols = win.cols();
  w.row0 = win.r0;
  w.col0 = win.c0;
  switch (e.dtype) {
    case DType::kF32:
      w.format = WeightFormat::kF32;
      break;
    case DType::kBF16:
      w.format = WeightFormat::kBF16;
      break;
    case DType::kF16:
      w.format = WeightFormat::kF16;
      break;
    case DType::kF8E4M3: {
      w.format = WeightFormat::kF8Block;
      MOE_ASSIGN_OR_RETURN(w.block_scales, BlockScales(loc, name));
      w.block_rows = quant_->block_rows;
      w.block_cols = quant_->block_cols;
      w.scale_stride = CeilDiv(e.shape[1], w.block_cols);
      break;
    }
    case DType::kI32:
      return TensorError(file, name, "I32 is not a weight dtype");
  }
  const int64_t esize = static_cast<int64_t>(DTypeSize(e.dtype));
  w.row_stride = e.shape[1] * esize;
  w.data = loc.file->Data(e) + win.r0 * w.row_stride + win.c0 * esize;
  w.owner = Keeper(loc.file);
  bytes_read_ += w.bytes();
  return w;
}

absl::StatusOr<WeightMatrix> Checkpoint::LoadInt4Matrix(const std::string& name,
                                                        const std::vector<int64_t>& shape,
                                                        SliceSpec slice) {
  const std::string module = ModuleOf(name);
  const Int4TensorNames names = Int4Names(name);
  const std::string& packed_name = names.packed;
  const std::string& scale_name = names.scale;
  const std::string& shape_name = names.shape;
  MOE_ASSIGN_OR_RETURN(Location packed, Find(packed_name));
  const std::string& file = packed.file->path();
  if (shape.size() != 2) return TensorError(file, name, "int4 weights are 2-D");
  MOE_ASSIGN_OR_RETURN(const Window win, SliceWindow(file, name, shape, slice));
  const int64_t r0 = win.r0, r1 = win.r1, c0 = win.c0, c1 = win.c1;
  if (!quant_ || !quant_->is_int4()) {
    return TensorError(file, packed_name,
                       "int4 weights need config.json's quantization_config to be "
                       "compressed-tensors pack-quantized");
  }
  if (quant_->Ignores(module)) {
    return TensorError(file, packed_name,
                       absl::StrCat("module \"", module,
                                    "\" is in quantization_config.ignore but stored as int4"));
  }
  const int64_t out = shape[0], in = shape[1], gs = quant_->group_size;
  // weight_shape: the unpacked [out, in].
  auto shape_loc = Find(shape_name);
  if (!shape_loc.ok()) {
    return TensorError(file, packed_name, absl::StrCat("int4 weight without \"", shape_name, "\""));
  }
  {
    const TensorEntry& e = *shape_loc->entry;
    if (e.dtype != DType::kI32 || e.shape != std::vector<int64_t>{2}) {
      return TensorError(shape_loc->file->path(), shape_name,
                         absl::StrCat("must be I32 [2], got ", DTypeName(e.dtype), " ",
                                      ShapeString(e.shape)));
    }
    int32_t dims[2];
    std::memcpy(dims, shape_loc->file->Data(e), sizeof(dims));
    MOE_RETURN_IF_ERROR(
        CheckShape(shape_loc->file->path(), shape_name, {dims[0], dims[1]}, shape));
  }
  if (in % gs != 0) {
    return TensorError(file, packed_name,
                       absl::StrCat("group size ", gs, " does not divide the row of ", in,
                                    " columns"));
  }
  const TensorEntry& p = *packed.entry;
  if (p.dtype != DType::kI32 || p.shape != std::vector<int64_t>{out, in / 8}) {
    return TensorError(file, packed_name,
                       absl::StrCat("must be I32 ", ShapeString({out, in / 8}), " for a ",
                                    ShapeString(shape), " weight; got ", DTypeName(p.dtype), " ",
                                    ShapeString(p.shape)));
  }
  auto scale_loc = Find(scale_name);
  if (!scale_loc.ok()) {
    return TensorError(file, packed_name, absl::StrCat("int4 weight without \"", scale_name, "\""));
  }
  const TensorEntry& s = *scale_loc->entry;
  if (s.dtype != DType::kBF16 || s.shape != std::vector<int64_t>{out, in / gs}) {
    return TensorError(scale_loc->file->path(), scale_name,
                       absl::StrCat("group scales must be BF16 ", ShapeString({out, in / gs}),
                                    " (groups of ", gs, "); got ", DTypeName(s.dtype), " ",
                                    ShapeString(s.shape)));
  }
  if (c0 % gs != 0 || (c1 - c0) % gs != 0) {
    return TensorError(file, packed_name,
                       absl::StrCat("column shard [", c0, ", ", c1, ") is not made of whole ", gs,
                                    "-column groups"));
  }
  WeightMatrix w;
  w.format = WeightFormat::kInt4Group;
  w.rows = r1 - r0;
  w.cols = c1 - c0;
  w.row0 = r0;
  w.col0 = c0;
  w.row_stride = in / 2;
  w.data = packed.file->Data(p) + r0 * w.row_stride + c0 / 2;
  w.group_size = gs;
  w.scale_stride = in / gs;
  w.group_scales = reinterpret_cast<const uint16_t*>(scale_loc->file->Data(s)) +
                   r0 * w.scale_stride + c0 / gs;
  if (scale_loc->file != packed.file) {
    // Both files must stay mapped: the matrix owns the pair.
    auto pair = std::make_shared<std::pair<std::shared_ptr<const void>, std::shared_ptr<const void>>>(
        Keeper(packed.file), Keeper(scale_loc->file));
    w.owner = pair;
  } else {
    w.owner = Keeper(packed.file);
  }
  bytes_read_ += w.bytes();
  return w;
}

absl::StatusOr<Tensor> Checkpoint::LoadStackedPart(const std::string& name,
                                                   const std::vector<int64_t>& expected_shape,
                                                   int64_t index) {
  MOE_ASSIGN_OR_RETURN(Location loc, Find(name));
  const TensorEntry& e = *loc.entry;
  const std::string& file = loc.file->path();
  MOE_RETURN_IF_ERROR(CheckShape(file, name, e.shape, expected_shape));
  if (e.shape.size() != 3) return TensorError(file, name, "expected a 3-D stacked tensor");
  if (e.dtype != DType::kF32 && e.dtype != DType::kBF16 && e.dtype != DType::kF16) {
    return TensorError(file, name, "stacked tensors must be f32, bf16 or f16");
  }
  if (index < 0 || index >= e.shape[0]) {
    return TensorError(file, name, absl::StrCat("part ", index, " outside [0, ", e.shape[0], ")"));
  }
  const int64_t count = e.shape[1] * e.shape[2];
  const size_t esize = DTypeSize(e.dtype);
  Tensor out = Tensor::Uninitialized({e.shape[1], e.shape[2]});
  ConvertToF32(e.dtype, loc.file->Data(e) + index * count * esize, out.data(),
               static_cast<size_t>(count));
  bytes_read_ += static_cast<uint64_t>(count) * esize;
  return out;
}

absl::StatusOr<Tensor> Checkpoint::LoadInt4(const std::string& name,
                                            const std::vector<int64_t>& shape, SliceSpec slice) {
  MOE_ASSIGN_OR_RETURN(WeightMatrix w, LoadInt4Matrix(name, shape, slice));
  Tensor out = Tensor::Uninitialized({w.rows, w.cols});
  // The window's packed rows start at column col0 of the stored row; Int4Element counts from
  // the window's first column, which starts a group and a word.
#pragma omp parallel for schedule(static) if (w.rows * w.cols > (1 << 16))
  for (int64_t r = 0; r < w.rows; ++r) {
    const uint8_t* row = w.data + r * w.row_stride;
    const auto* scales = reinterpret_cast<const uint8_t*>(w.group_scales + r * w.scale_stride);
    for (int64_t c = 0; c < w.cols; ++c) out.row(r)[c] = Int4Element(row, scales, c, w.group_size);
  }
  return out;
}

}  // namespace moe

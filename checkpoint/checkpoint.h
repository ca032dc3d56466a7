// Checkpoint: an HF-style folder of safetensors files (one `model.safetensors`, or shards listed
// by `model.safetensors.index.json`). Loads tensors by name as float32 — whole, or a row or column
// range so a rank reads only its shard — checking each against the shape the model expects.
// F8_E4M3 weights are dequantized with their `<name>_scale_inv` block scales (DeepSeek-V3 layout:
// float32 [ceil(rows/block_rows), ceil(cols/block_cols)]); int4 modules (compressed-tensors
// pack-quantized: `<module>.weight_packed`, `.weight_scale`, `.weight_shape`) with their group
// scales. LoadMatrix instead gives a weight in its stored format, a view into the mapped file.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "checkpoint/safetensors.h"
#include "common/model_config.h"
#include "common/tensor.h"
#include "common/weight_matrix.h"

namespace moe {

// A half-open range [begin, end) along one dimension of a 2-D weight.
struct SliceSpec {
  enum class Dim { kNone, kRows, kCols };
  Dim dim = Dim::kNone;
  int64_t begin = 0;
  int64_t end = 0;
  static SliceSpec All() { return {}; }
  static SliceSpec Rows(int64_t b, int64_t e) { return {Dim::kRows, b, e}; }
  static SliceSpec Cols(int64_t b, int64_t e) { return {Dim::kCols, b, e}; }
};

class Checkpoint {
 public:
  // `quant` is the config's quantization_config: it gives the fp8 block size, and F8_E4M3 tensors
  // are refused without it.
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir,
                                                          std::optional<QuantizationConfig> quant);

  bool Has(const std::string& name) const { return where_.count(name) > 0; }
  // Whether the weight "<module>.weight" is stored, plain or as int4.
  bool HasWeight(const std::string& name) const;
  std::vector<std::string> TensorNames() const;
  // The stored dtype and shape, or NotFound.
  absl::StatusOr<TensorEntry> Describe(const std::string& name) const;

  // Loads `name` as float32. `expected_shape` is the full stored shape the model requires; a
  // mismatch is an error naming file and tensor. With a slice, only that part is read.
  absl::StatusOr<Tensor> Load(const std::string& name, const std::vector<int64_t>& expected_shape,
                              SliceSpec slice = SliceSpec::All());

  // Part `index` of a stacked 3-D tensor [n, a, b] (Llama 4's fused experts) as float32 [a, b];
  // only that part is read.
  absl::StatusOr<Tensor> LoadStackedPart(const std::string& name,
                                         const std::vector<int64_t>& expected_shape, int64_t index);

  // The 2-D weight `name` ("<module>.weight", [out, in] = `expected_shape`) in its stored format,
  // or its window `slice`: a view into the memory-mapped file, kept mapped while the matrix
  // lives. A module stored as int4 has no "<module>.weight"; its packed tensors are used. Column
  // windows of int4 weights must be whole groups. set_weights_at_load() may convert the weight
  // instead (see WeightsAtLoad); kFp8 converts only a `quantizable` one (a projection).
  absl::StatusOr<WeightMatrix> LoadMatrix(const std::string& name,
                                          const std::vector<int64_t>& expected_shape,
                                          SliceSpec slice = SliceSpec::All(),
                                          bool quantizable = false);
  void set_weights_at_load(WeightsAtLoad w) { weights_at_load_ = w; }
  // Marks the matrices LoadMatrix returns for products that round x (WeightMatrix::x_rounding):
  // kBf16 and kInt8 the bf16 and fp8 ones (projections and lm_head) for bf16, kInt8 the int4 ones
  // for int8.
  void set_activations(Activations a) { activations_ = a; }

  // Bytes copied out of the files so far (data and scales), across threads.
  uint64_t bytes_read() const { return bytes_read_.load(); }
  uint64_t total_bytes() const;  // all tensor bytes in the checkpoint
  const std::string& dir() const { return dir_; }

 private:
  Checkpoint() = default;
  struct Location {
    const SafetensorsFile* file;
    const TensorEntry* entry;
  };
  absl::StatusOr<Location> Find(const std::string& name) const;
  absl::StatusOr<const float*> BlockScales(const Location& loc, const std::string& name) const;
  absl::StatusOr<Tensor> LoadInt4(const std::string& name, const std::vector<int64_t>& shape,
                                  SliceSpec slice);
  // Whether `name` ("<module>.weight") is stored as compressed-tensors int4 (see Int4Names).
  bool StoredAsInt4(const std::string& name) const;
  absl::StatusOr<WeightMatrix> LoadInt4Matrix(const std::string& name,
                                              const std::vector<int64_t>& shape, SliceSpec slice);
  std::shared_ptr<const void> Keeper(const SafetensorsFile* file) const;
  absl::StatusOr<WeightMatrix> LoadMatrixInFormat(const std::string& name,
                                                  const std::vector<int64_t>& expected_shape,
                                                  SliceSpec slice, bool quantizable);
  absl::StatusOr<WeightMatrix> LoadConverted(const std::string& name,
                                             const std::vector<int64_t>& shape, SliceSpec slice,
                                             WeightFormat to);

  std::string dir_;
  std::optional<QuantizationConfig> quant_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  WeightsAtLoad weights_at_load_ = WeightsAtLoad::kAsStored;
  Activations activations_ = Activations::kF32;
  std::map<std::string, Location> where_;
  std::atomic<uint64_t> bytes_read_{0};
};

}  // namespace moe

// libFuzzer target: any byte string as a checkpoint's model.safetensors, opened under no
// quantization_config, DeepSeek's fp8 one and Kimi K2 Thinking's int4 one. Every 2-D tensor is
// then loaded as a weight matrix (a view in the stored format) and as float32, whole and as row
// and column shards. Loading must return a status — never crash, overflow or read outside the
// mapped file (ASan/UBSan watch); an accepted matrix's first and last bytes are touched.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "checkpoint/checkpoint.h"

namespace {

std::string ScratchDir() {
  static const std::string dir = [] {
    char tmpl[] = "/tmp/checkpoint_fuzz.XXXXXX";
    return std::string(mkdtemp(tmpl));
  }();
  return dir;
}

void Touch(const moe::WeightMatrix& w) {
  if (w.empty()) return;
  volatile uint8_t sink = w.data[0];
  const int64_t last_col_byte =
      w.format == moe::WeightFormat::kInt4Group ? (w.cols - 1) / 2
      : w.format == moe::WeightFormat::kF8Block ? w.cols - 1
      : w.format == moe::WeightFormat::kF32     ? 4 * w.cols - 1
                                                : 2 * w.cols - 1;
  sink = sink ^ w.data[(w.rows - 1) * w.row_stride + last_col_byte];
  if (w.group_scales != nullptr) {
    sink = sink ^ static_cast<uint8_t>(w.group_scales[(w.rows - 1) * w.scale_stride +
                                                      w.cols / w.group_size - 1]);
  }
  (void)sink;
}

void LoadEverything(moe::Checkpoint& ck) {
  for (const std::string& name : ck.TensorNames()) {
    std::string weight = name;
    std::vector<int64_t> shape;
    const std::string packed = ".weight_packed";
    if (name.size() > packed.size() &&
        name.compare(name.size() - packed.size(), packed.size(), packed) == 0) {
      // An int4 module: the weight's shape is what weight_shape claims (checked by the loader).
      weight = name.substr(0, name.size() - packed.size()) + ".weight";
      auto e = ck.Describe(name);
      if (!e.ok() || e->shape.size() != 2) continue;
      shape = {e->shape[0], e->shape[1] * 8};
    } else {
      auto e = ck.Describe(name);
      if (!e.ok() || e->shape.size() != 2) continue;
      shape = e->shape;
    }
    for (const moe::SliceSpec& slice :
         {moe::SliceSpec::All(), moe::SliceSpec::Rows(1, shape[0]),
          moe::SliceSpec::Cols(32, shape[1])}) {
      auto m = ck.LoadMatrix(weight, shape, slice);
      if (m.ok()) Touch(*m);
      auto t = ck.Load(weight, shape, slice);
      (void)t;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string dir = ScratchDir();
  const std::string path = dir + "/model.safetensors";
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return 0;
  std::fwrite(data, 1, size, f);
  std::fclose(f);
  moe::QuantizationConfig int4;
  int4.quant_method = "compressed-tensors";
  int4.ignore = {"re:.*self_attn.*"};
  for (const std::optional<moe::QuantizationConfig>& q :
       {std::optional<moe::QuantizationConfig>(), std::optional(moe::QuantizationConfig{}),
        std::optional(int4)}) {
    auto ck = moe::Checkpoint::Open(dir, q);
    if (ck.ok()) LoadEverything(**ck);
  }
  return 0;
}

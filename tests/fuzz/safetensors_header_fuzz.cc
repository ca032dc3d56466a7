// libFuzzer target: any byte string as a whole safetensors file image. The parser must return a
// status — never crash, overflow, or read outside the buffer (ASan/UBSan watch).
#include <cstddef>
#include <cstdint>

#include "checkpoint/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  uint64_t data_offset = 0;
  auto header = moe::ParseSafetensorsBuffer(data, size, "fuzz.safetensors", &data_offset);
  if (header.ok()) {
    // Every accepted entry must lie inside the buffer: touch its first and last byte.
    volatile uint8_t sink = 0;
    for (const moe::TensorEntry& e : header->tensors) {
      if (e.end > e.begin) {
        sink = sink ^ data[data_offset + e.begin];
        sink = sink ^ data[data_offset + e.end - 1];
      }
    }
    (void)sink;
  }
  return 0;
}

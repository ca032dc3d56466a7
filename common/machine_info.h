// What a benchmark runs on, read from the machine itself (never written down by hand): the CPU
// model, the SIMD extensions the kernels can use, the CPUs this process may run on, and memory.
#pragma once

#include <string>
#include "absl/strings/string_view.h"
#include <vector>

namespace moe {

struct MachineInfo {
  std::string cpu_model;                // /proc/cpuinfo "model name"
  std::vector<std::string> simd;        // the extensions below that the CPU reports, in that order
  int logical_cpus = 0;                 // CPUs the machine has online
  int usable_cpus = 0;                  // CPUs this process's affinity mask allows
  double memory_gib = 0;                // MemTotal
};

// The SIMD extensions reported, when present, in this order.
inline constexpr absl::string_view kReportedSimd[] = {
    "sse4_2",      "avx",         "avx2",        "fma",        "f16c",      "avx512f",
    "avx512bw",    "avx512vl",    "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
    "amx_bf16",    "amx_int8",    "asimd",       "sve"};

// Reads /proc/cpuinfo and /proc/meminfo (Linux); fields it cannot read stay empty or zero.
MachineInfo ReadMachineInfo();
// Parses the text of /proc/cpuinfo and /proc/meminfo (for tests).
MachineInfo ParseMachineInfo(absl::string_view cpuinfo, absl::string_view meminfo);

// One line: "AMD EPYC 9R14, 2 of 2 CPUs, 23.4 GiB, SIMD avx2 fma f16c avx512f ...".
std::string Describe(const MachineInfo& m);

}  // namespace moe
